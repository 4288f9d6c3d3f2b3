"""Spec → Graph: resolve a name or path, load modules and imports, bind family parameters,
elaborate, and collect every located error of the run."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..spec import ast as A
from ..spec.parser import parse
from ..spec.source import ArchError, Diagnostic, Span
from . import library
from .elaborate import Block, Elaborator, Env, Frame, Function, _Fail, _kind, _suggest, fail
from .ir import Graph

PRELUDE = library.LIBRARY / "prelude.arch"


@dataclass
class Source:
    path: str          # display name in diagnostics
    text: str
    directory: Path | None


class Loader:
    """Parses files once and keeps their text for diagnostics."""

    def __init__(self):
        self.sources: dict[str, str] = {}
        self.parsed: dict[str, list] = {}
        self.module_envs: dict[str, Env] = {}
        self.loading: list[str] = []

    def parse(self, src: Source) -> list:
        self.sources[src.path] = src.text
        if src.path not in self.parsed:
            self.parsed[src.path] = parse(src.text, src.path)
        return self.parsed[src.path]

    def read(self, path: Path, display: str | None = None) -> Source:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ArchError([Diagnostic(f"{display or path} is not UTF-8 text")]) from None
        except OSError as e:
            raise ArchError([Diagnostic(f"cannot read {display or path}: {e.strerror}")]) from None
        return Source(display or str(path), text, path.parent)


def _display(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)


def resolve(spec: str) -> tuple[Path, str | None]:
    """A path to an .arch file, a built-in name ('densenet121'), or a built-in name with '.arch'."""
    p = Path(spec)
    if p.suffix == ".arch" and p.is_file():
        return p, None
    if p.is_file():
        return p, None
    name = spec[:-5] if spec.endswith(".arch") else spec
    entry = library.lookup(name)
    if entry is not None:
        return entry
    hint = _suggest(name, library.names()) or "run 'archc list' for the built-in architectures"
    raise ArchError([Diagnostic(f"no file or built-in architecture named '{spec}'", None, hint)])


def build_graph(spec: str | None = None, params: dict | None = None, input_shape: tuple | None = None,
                *, text: str | None = None, filename: str = "<expr>") -> Graph:
    """Elaborate a spec into a shape-checked Graph, or raise ArchError with every error found."""
    loader = Loader()
    if text is not None:
        src, preset = Source(filename, text, Path.cwd()), None
        name = filename
    else:
        path, preset = resolve(spec)
        src = loader.read(path, _display(path) if preset is None else library.display(path))
        name = preset or path.stem
    try:
        return _build(loader, src, name, preset, dict(params or {}), input_shape)
    except ArchError as e:
        e.sources = {**loader.sources, **e.sources}
        raise ArchError(e.diagnostics, e.sources) from None


def _prelude_env(loader: Loader) -> Env:
    if "<prelude>" not in loader.module_envs:
        src = loader.read(PRELUDE, library.display(PRELUDE))
        env = Env(None, {})
        loader.module_envs["<prelude>"] = env
        _define_module(loader, src, env, Graph("prelude"))
    return loader.module_envs["<prelude>"]


def _module_env(loader: Loader, path: Path, span: Span) -> Env:
    key = str(path.resolve())
    if key in loader.loading:
        fail(f"import cycle: {' -> '.join(Path(p).name for p in loader.loading + [key])}", span,
             "move the shared blocks into a third file")
    if key not in loader.module_envs:
        src = loader.read(path, _display(path) if not str(path).startswith(str(library.LIBRARY)) else library.display(path))
        env = Env(_prelude_env(loader), {})
        loader.loading.append(key)
        try:
            _define_module(loader, src, env, Graph(path.stem))
        finally:
            loader.loading.pop()
        loader.module_envs[key] = env
    return loader.module_envs[key]


def _define_module(loader: Loader, src: Source, env: Env, graph: Graph) -> None:
    """Bind an imported module's definitions (blocks, lets, its own imports, parameter defaults)."""
    el = Elaborator(loader, graph)
    el.frames.append(Frame({}, None))
    diags = []
    for st in loader.parse(src):
        try:
            if isinstance(st, A.Import):
                _import(loader, st, src, env)
            elif isinstance(st, A.Param):
                env.vars[st.name] = el.value(st.default, env)
            elif isinstance(st, (A.Let, A.BlockDef)):
                el.run_statements([st], None, env, in_block=False)
        except _Fail as f:
            diags.append(f.diag)
    if diags:
        raise ArchError(diags, loader.sources)


def _import(loader: Loader, st: A.Import, src: Source, env: Env) -> None:
    candidates = []
    if src.directory is not None:
        candidates.append(src.directory / st.path)
    candidates.append(library.LIBRARY / st.path)
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        fail(f"cannot find '{st.path}' to import", st.span,
             "paths are relative to the importing file, then to the built-in library")
    mod = _module_env(loader, path, st.span)
    if st.names is None:
        env.vars.update(mod.vars)
        return
    for n in st.names:
        if n not in mod.vars:
            fail(f"'{st.path}' defines no '{n}'", st.span, _suggest(n, mod.vars))
        env.vars[n] = mod.vars[n]


def _build(loader: Loader, src: Source, name: str, preset: str | None, overrides: dict, input_shape) -> Graph:
    stmts = loader.parse(src)
    graph = Graph(name)
    env = Env(_prelude_env(loader), {})
    el = Elaborator(loader, graph)
    el.frames.append(Frame({}, None))
    diags: list[Diagnostic] = []

    # Family parameters: defaults, then the preset, then the caller's overrides.
    declared = {st.name: st for st in stmts if isinstance(st, A.Param)}
    presets = {st.name: st for st in stmts if isinstance(st, A.Preset)}
    chosen: dict = {}
    if preset is not None:
        pst = presets.get(preset)
        if pst is None:
            raise ArchError([Diagnostic(f"{src.path} has no preset '{preset}'", None, _suggest(preset, presets))])
        for arg in pst.values:
            if arg.name is None or arg.name not in declared:
                diags.append(Diagnostic(f"preset '{preset}' sets '{arg.name}', which is not a param of this file",
                                        arg.span, _suggest(arg.name or "", declared)))
                continue
            chosen[arg.name] = ("ast", arg.value)
    for k, v in overrides.items():
        if k not in declared:
            hint = f"its parameters: {', '.join(declared)}" if declared else "this file declares no 'param'"
            raise ArchError([Diagnostic(f"{name} has no parameter '{k}'", None, _suggest(k, declared) or hint)])
        chosen[k] = ("value", v)

    t = None
    shape_failed = False
    for st in stmts:
        try:
            if isinstance(st, A.Param):
                how, v = chosen.get(st.name, ("ast", st.default))
                env.vars[st.name] = el.value(v, env) if how == "ast" else _coerce(v, st, el, env)
                graph.params[st.name] = _plain(env.vars[st.name])
            elif isinstance(st, A.Preset):
                continue
            elif isinstance(st, A.Import):
                _import(loader, st, src, env)
            elif isinstance(st, A.Input):
                if t is not None:
                    fail("the input is declared twice", st.span)
                shape = tuple(input_shape) if input_shape is not None else _input_shape(st, el, env)
                t = graph_input(graph, shape, st.span)
                el.frames[-1].tensors["input"] = t
            else:
                if t is None and isinstance(st, (A.SeqStmt, A.Labelled)):
                    if input_shape is None:
                        fail("the network has no input shape", st.span,
                             "start the file with e.g. 'input 224x224x3', or pass --input HxWxC")
                    t = graph_input(graph, tuple(input_shape), None)
                    el.frames[-1].tensors["input"] = t
                if shape_failed and isinstance(st, (A.SeqStmt, A.Labelled, A.Output)):
                    # Later layers would only repeat the first shape error; still check their names.
                    continue
                t = el.run_statements([st], t, env, in_block=False)
        except _Fail as f:
            if f.kind == "shape":
                if shape_failed:
                    continue
                shape_failed = True
            diags.append(f.diag)
        except RecursionError:
            diags.append(Diagnostic("the spec nests too deeply to elaborate", st.span, "split it into smaller blocks"))
    if t is None and not diags:
        if input_shape is not None:
            t = graph_input(graph, tuple(input_shape), None)
        else:
            diags.append(Diagnostic("the spec defines no network", Span(src.path, 1, 1, 1, 1),
                                    "add an 'input 224x224x3' line and some layers"))
    if diags:
        raise ArchError(diags, loader.sources)
    if not graph.outputs:
        graph.outputs = [t]
    graph.sources = loader.sources
    return graph


def graph_input(graph: Graph, shape: tuple, span) -> str:
    from .ir import Node
    from .ops.layout import InputAttrs
    from .elaborate import _posint
    if len(shape) not in (1, 3):
        fail(f"an input shape is HxWxC (or C), not {len(shape)} numbers", span)
    for d in shape:
        _posint(d, "input size", span)
    graph.nodes["input"] = Node("input", "input", (), InputAttrs(tuple(shape)), tuple(shape), span)
    graph.inputs = ["input"]
    return "input"


def _input_shape(st: A.Input, el: Elaborator, env: Env) -> tuple:
    if len(st.args) == 1 and isinstance(st.args[0], A.Const):
        return st.args[0].value
    vals = []
    for a in st.args:
        if a.name is not None:
            fail("input takes sizes, not named arguments", a.span, "e.g. input(res, res, 3)")
        v = el.value(a.value, env)
        if isinstance(v, bool) or not isinstance(v, int):
            fail(f"an input size must be an integer, not {_kind(v)}", a.span)
        vals.append(v)
    return tuple(vals)


def _coerce(v, st: A.Param, el: Elaborator, env: Env):
    """A --param value from the command line or Python: keep numbers, parse strings as .arch values."""
    if isinstance(v, str):
        try:
            stmts = parse(f"let __v = ({v})", "<--param>")
        except ArchError:
            return v
        return el.value(stmts[0].value, env)
    if isinstance(v, tuple):
        return list(v)
    return v


def _plain(v):
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return _kind(v)
