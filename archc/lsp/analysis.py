"""What the language server knows about a document, without JAX and without pygls.

`analyze` resolves a document and its imports (open documents take the client's text; a file
that is not open is read from disk, relative to the importing file, as `archc check` reads it),
elaborates it while recording what each written layer produced, and indexes every definition
and use of a name. Hover, definition, references, rename, completion and inlay hints are
queries on that result. Nothing is ever executed: .arch files have no code to run.

Positions are the language's (1-based lines and columns); the server converts them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any

from ..compiler import declarations, library, ops
from ..compiler.build import bind_family_params
from ..compiler.elaborate import FUNCTIONS, SPELLINGS, signature
from ..compiler.ir import Graph
from ..compiler.trace import Applied, TracingElaborator
from ..compiler.resolve import PRELUDE, Module, read_source, Resolver
from ..spec import ast as A
from ..spec.source import ArchError, Diagnostic, Span


# ---------------------------------------------------------------------------------------------
# Names: definitions and uses, with the blocks that enclose them
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Definition:
    kind: str                 # 'block', 'let', 'function', 'param', 'stage', 'branch', 'block parameter', 'input'
    name: str
    span: Span                # the name where it is defined
    stmt: Any                 # the statement (a ParamDecl for a block parameter)
    scope: Any                # the BlockDef whose body holds it, None at the top of the file


@dataclass(frozen=True)
class Use:
    name: str
    span: Span                # the name as written (with the '@' of a tensor reference)
    tensor: bool              # @name
    scopes: tuple             # enclosing BlockDefs, outermost first


@dataclass
class FileIndex:
    module: Module
    path: Path | None
    defs: list = field(default_factory=list)
    uses: list = field(default_factory=list)

    def top(self, name: str, tensor: bool) -> Definition | None:
        return next((d for d in self.defs if d.scope is None and d.name == name
                     and _is_tensor(d) == tensor), None)


def _is_tensor(d: Definition) -> bool:
    return d.kind in ("stage", "branch", "input")


def _name_span(span: Span, name: str) -> Span:
    return Span(span.file, span.line, span.col, span.line, span.col + len(name))


def index_module(module: Module, path: Path | None) -> FileIndex:
    ix = FileIndex(module, path)
    for st in module.stmts:
        _index_stmt(st, (), ix)
    return ix


def _index_stmt(st, scopes: tuple, ix: FileIndex) -> None:
    scope = scopes[-1] if scopes else None
    add = ix.defs.append
    if isinstance(st, A.BlockDef):
        add(Definition("block", st.name, _name_span(st.span, st.name), st, scope))
        inner = scopes + (st,)
        for p in st.params:
            add(Definition("block parameter", p.name, _name_span(p.span, p.name), p, st))
            _index_expr(p.default, scopes, ix)
        for s in st.body:
            _index_stmt(s, inner, ix)
        return
    if isinstance(st, A.Let):
        add(Definition("let" if st.params is None else "function", st.name, _name_span(st.span, st.name), st, scope))
        inner = scopes
        if st.params is not None:
            for p in st.params:
                add(Definition("block parameter", p.name, _name_span(p.span, p.name), p, st))
            inner = scopes + (st,)
        _index_expr(st.value, inner, ix)
        return
    if isinstance(st, A.Param):
        add(Definition("param", st.name, _name_span(st.span, st.name), st, scope))
    elif isinstance(st, A.Labelled):
        add(Definition("branch" if st.side else "stage", st.name, _name_span(st.span, st.name), st, scope))
    elif isinstance(st, A.Input):
        add(Definition("input", "input", st.span, st, scope))
    elif isinstance(st, A.Output):
        for n, sp in zip(st.names, st.spans):
            ix.uses.append(Use(n, sp, True, scopes))
    elif isinstance(st, A.Preset):
        for arg in st.values:
            if arg.name is not None:
                ix.uses.append(Use(arg.name, _name_span(arg.span, arg.name), False, scopes))
    for f in dataclasses.fields(st):
        if f.name not in ("span", "name"):
            _index_expr(getattr(st, f.name), scopes, ix)


def _index_expr(e, scopes: tuple, ix: FileIndex) -> None:
    if isinstance(e, (tuple, list)):
        for x in e:
            _index_expr(x, scopes, ix)
        return
    if isinstance(e, A.Name):
        ix.uses.append(Use(e.id, e.span, False, scopes))
    elif isinstance(e, A.Ref):
        ix.uses.append(Use(e.id, e.span, True, scopes))
    elif isinstance(e, A.Call):
        ix.uses.append(Use(e.func, e.func_span, False, scopes))
    if isinstance(e, (A.Node, A.Arg)):
        for f in dataclasses.fields(e):
            if f.name not in ("span", "func_span"):
                _index_expr(getattr(e, f.name), scopes, ix)


# ---------------------------------------------------------------------------------------------
# Resolution against the client's documents
# ---------------------------------------------------------------------------------------------
class _Workspace(Resolver):
    """A resolution that reads open documents from the client and the rest from disk."""

    def __init__(self, overlay: dict):
        super().__init__()
        self.overlay = overlay            # resolved path -> text the client sent
        self.paths: dict[str, Path] = {}  # display name -> file

    def load_file(self, path: Path, preset: str | None = None) -> Module:
        display = library.display(path)
        self.paths[display] = path.resolve()
        text = self.overlay.get(path.resolve())
        if text is None:
            text = read_source(path, display)
        return self.load(text, display, path.parent, preset or path.stem, preset)

    def _prelude(self) -> Module:
        self.paths[library.display(PRELUDE)] = PRELUDE.resolve()
        return super()._prelude()


@dataclass
class Analysis:
    display: str                      # the document's name in spans
    diagnostics: list                 # Diagnostic, every error found
    files: dict                       # display -> FileIndex, the document and its import closure
    paths: dict                       # display -> Path
    graph: Graph | None = None
    applied: dict = field(default_factory=dict)
    sources: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)     # Diagnostic, what `archc check` warns of

    @property
    def root(self) -> FileIndex | None:
        return self.files.get(self.display)

    # ---- names ----
    def at(self, display: str, line: int, col: int):
        """The definition or use whose name covers the position, or None."""
        ix = self.files.get(display)
        if ix is None:
            return None
        for item in ix.defs + ix.uses:
            if _covers(item.span, line, col):
                return item
        return None

    def resolve(self, display: str, use: Use) -> Definition | None:
        """The definition a use names: enclosing blocks innermost first, then the file, then
        its imports and the prelude."""
        ix = self.files[display]
        for scope in reversed(use.scopes):
            for d in ix.defs:
                if d.scope is scope and d.name == use.name and (use.tensor == _is_tensor(d) or d.kind == "block parameter"):
                    return d
        return self._module_level(ix.module, use.name, use.tensor, set())

    def _module_level(self, module: Module, name: str, tensor: bool, seen: set) -> Definition | None:
        ix = self.files.get(module.display)
        if ix is None or module.display in seen:
            return None
        seen.add(module.display)
        d = ix.top(name, tensor)
        if d is not None or tensor:
            return d
        for st in module.stmts:
            if isinstance(st, A.Import) and (st.names is None or name in st.names):
                target = module.imports.get(st.path)
                if isinstance(target, Module):
                    d = self._module_level(target, name, False, seen)
                    if d is not None:
                        return d
        return self._module_level(module.prelude, name, False, seen) if module.prelude else None

    def definition_at(self, display: str, line: int, col: int) -> Definition | None:
        item = self.at(display, line, col)
        if isinstance(item, Use):
            return self.resolve(display, item)
        return item

    def references(self, target: Definition) -> list:
        """Every span that names `target`: its definition, then its uses in the indexed files."""
        out = [target.span]
        for display, ix in self.files.items():
            for u in ix.uses:
                if u.name == target.name and self.resolve(display, u) == target:
                    out.append(u.span)
        return out

    # ---- what the elaboration made ----
    def applications(self, line: int, col: int) -> tuple[Span, list] | None:
        """The innermost written layer at the position and its applications."""
        best = None
        for span, apps in self.applied.items():
            if span.file == self.display and _covers(span, line, col):
                if best is None or _size(span) < _size(best[0]):
                    best = (span, apps)
        return best

    def counts(self, app: Applied) -> tuple[int, int]:
        """Parameters and MACs of the nodes one application made."""
        names = list(self.graph.nodes)[app.first:app.last]
        params = macs = 0
        for n in names:
            t, nt, m = ops.count(self.graph.nodes[n], self.graph)
            params, macs = params + t + nt, macs + m
        return params, macs

    def stage_shapes(self) -> list:
        """(statement, output shape) of each top-level stage of the document."""
        out = []
        if self.graph is None or self.root is None:
            return out
        for st in self.root.module.stmts:
            if isinstance(st, A.Labelled):
                node = self.graph.aliases.get(st.name)
                if node in self.graph.nodes:
                    out.append((st, self.graph.nodes[node].shape))
        return out

    # ---- completion ----
    def tensors_in_scope(self, line: int) -> list:
        """The @names a reference on this line may use."""
        ix = self.root
        if ix is None:
            return []
        block = _enclosing_block(ix.module.stmts, line)
        names = [d.name for d in ix.defs if _is_tensor(d) and d.scope is block and d.span.line < line]
        if block is None:
            return (["input"] if "input" not in names else []) + names
        return ["in", "prev"] + [p.name for p in block.params] + names

    def names_in_scope(self, line: int) -> list:
        """(name, kind, detail) of every name a layer or value on this line may use."""
        ix = self.root
        out: dict = {}
        if ix is not None:
            block = _enclosing_block(ix.module.stmts, line)
            if block is not None:
                for p in block.params:
                    out[p.name] = ("block parameter", f"parameter of {block.name}")
            self._visible(ix.module, out, set())
        for name, (kind, _, _, _) in SPELLINGS.items():
            out.setdefault(name, ("op", signature_text(name, kind)))
        for name in FUNCTIONS:
            out.setdefault(name, ("function", f"{name}(…)"))
        for name in declarations.DECLARATIONS:
            out.setdefault(name, ("declaration", declaration_signature(name)))
        return [(n, k, d) for n, (k, d) in out.items()]

    def _visible(self, module: Module, out: dict, seen: set) -> None:
        ix = self.files.get(module.display)
        if ix is None or module.display in seen:
            return
        seen.add(module.display)
        for d in ix.defs:
            if d.scope is None and not _is_tensor(d):
                out.setdefault(d.name, (d.kind, f"{d.kind} in {d.span.file}:{d.span.line}"))
        for target in module.imports.values():
            if isinstance(target, Module):
                self._visible(target, out, seen)
        if module.prelude is not None:
            self._visible(module.prelude, out, seen)


def _covers(span: Span, line: int, col: int) -> bool:
    return (span.line, span.col) <= (line, col) <= (span.end_line, span.end_col)


def _size(span: Span) -> tuple:
    return (span.end_line - span.line, span.end_col - span.col if span.end_line == span.line else 0)


def _enclosing_block(stmts, line: int):
    for st in stmts:
        if isinstance(st, A.BlockDef) and st.span.line <= line <= st.span.end_line:
            return _enclosing_block(st.body, line) or st
    return None


def signature_text(spelling: str, kind: str) -> str:
    """An op's call signature as the language writes it, e.g. conv3(c, s, p='auto', …)."""
    sig = signature(kind)
    preset = SPELLINGS[spelling][1]
    parts = [k if v is ops.REQUIRED or v is None else f"{k}={v!r}" for k, v in sig.items() if k not in preset]
    return f"{spelling}({', '.join(parts)})"


def declaration_signature(kind: str) -> str:
    """A declaration's keywords with their defaults, e.g. preprocess(mode='torch', …)."""
    sig = declarations.DECLARATIONS[kind].signature
    return f"{kind}({', '.join(k if v is MISSING else f'{k}={v!r}' for k, v in sig.items())})"


def op_doc(spelling: str) -> str | None:
    """Markdown: an op spelling's (or a declaration's) signature and documentation, or None for a
    name that is neither."""
    if spelling in declarations.DECLARATIONS and spelling not in SPELLINGS:
        d = declarations.DECLARATIONS[spelling]
        return f"```\n{declaration_signature(spelling)}\n```\n\n{d.doc}\n\ndeclaration (a top-level statement)"
    entry = SPELLINGS.get(spelling)
    if entry is None:
        return None
    kind = entry[0]
    lines = [f"```\n{signature_text(spelling, kind)}\n```"]
    if kind in ops.SURFACES:
        surface, op = ops.SURFACES[kind]
        lines += [x for x in (surface.doc, surface.params_doc) if x]
        lines.append(f"IR op `{op.name}`")
    return "\n\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The analysis of one document
# ---------------------------------------------------------------------------------------------
def analyze(text: str, path: Path | None, overlay: dict | None = None) -> Analysis:
    """Resolve, elaborate and index a document (`path` None: an unsaved buffer, whose imports
    resolve against the working directory). `overlay`: resolved path -> text of the other open
    documents."""
    ws = _Workspace(dict(overlay or {}))
    if path is not None:
        ws.overlay[path.resolve()] = text
    display = library.display(path) if path is not None else "<untitled>"
    try:
        module = ws.load_file(path) if path is not None else ws.load(text, display, Path.cwd(), "untitled")
    except ArchError as e:     # a file of the closure does not parse
        return Analysis(display, e.diagnostics, {}, ws.paths, sources=e.sources)
    files = {m.display: index_module(m, ws.paths.get(m.display)) for m in module.closure()}
    result = Analysis(display, [], files, ws.paths, sources=module.sources())
    el = TracingElaborator(Graph(module.name))
    try:
        if _has_network(module):
            chosen, diags = bind_family_params(module, None, {})
            el.run_program(module, chosen, None, diags)
        else:                  # a file of blocks for others to import: check its definitions
            el.module_env(module)
    except ArchError as e:
        result.diagnostics = e.diagnostics
    except RecursionError:
        result.diagnostics = [Diagnostic("the spec nests too deeply to elaborate", None)]
    result.graph, result.applied = el.b.g, el.applied
    if not result.diagnostics and _has_network(module):
        result.warnings = size_warnings(result.graph)
    return result


def size_warnings(graph: Graph) -> list:
    """`archc check`'s warnings (a declared input on which a floor drops rows), at the input."""
    from ..compiler.sizes import inexact_warnings
    lines = inexact_warnings(graph) if graph.inputs else []
    at = graph.nodes[graph.inputs[0]].span if lines else None
    return [Diagnostic(line, at) for line in lines]


def _has_network(module: Module) -> bool:
    return any(isinstance(st, (A.Input, A.SeqStmt, A.Labelled)) for st in module.stmts)

