"""Resolution, the front end's first phase: find the file a spec names, then parse it and its
whole import closure before anything is elaborated.

An import that names no module (a missing file, a cycle) is not an error here but an
`Unresolved` in its importer's table: the elaborator reports it at the import statement, in
statement order, with the rest of that file's errors. Unreadable and unparsable files raise.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..spec import ast as A
from ..spec.parser import parse
from ..spec.source import ArchError, Diagnostic, suggest
from . import library

PRELUDE = library.LIBRARY / "prelude.arch"


@dataclass(frozen=True)
class Unresolved:
    """Why an import path names no module."""
    message: str
    hint: str


@dataclass(eq=False)      # one object per resolved file: the elaborator caches by identity
class Module:
    """A parsed .arch file with its imports resolved."""
    display: str              # its name in diagnostics and spans
    text: str
    directory: Path           # where its relative imports start
    stmts: list
    name: str                 # the network's name: the preset asked for, else the file's stem
    preset: str | None = None
    imports: dict = field(default_factory=dict)   # import path as written -> Module | Unresolved
    # networks it may use as parts: a built-in's name or "file.arch" -> Part | Unresolved
    parts: dict = field(default_factory=dict)
    prelude: Module | None = None                 # implicitly imported by every other module

    def closure(self) -> list:
        """This module and every module it reaches, each once."""
        seen, todo = {}, [self]
        while todo:
            m = todo.pop()
            if id(m) not in seen:
                seen[id(m)] = m
                todo += [x for x in m.imports.values() if isinstance(x, Module)]
                todo += [x.module for x in m.parts.values() if isinstance(x, Part)]
                todo += [m.prelude] if m.prelude is not None else []
        return list(seen.values())

    def sources(self) -> dict:
        """display name -> text of every file in the closure, for rendering diagnostics."""
        return {m.display: m.text for m in self.closure()}


@dataclass(frozen=True)
class Part:
    """A network a file may use like a block: its file's module and the preset that names it."""
    module: Module
    preset: str | None

    @property
    def name(self) -> str:
        """Its name as a model: the preset ('resnet18') or the file's stem."""
        return self.preset or self.module.name


def locate(spec: str) -> tuple[Path, str | None]:
    """A path to an .arch file, a built-in name ('densenet121'), or a built-in name with '.arch'.
    An existing file wins over a built-in of the same name."""
    p = Path(spec)
    if p.is_file():
        return p, None
    name = spec[:-5] if spec.endswith(".arch") else spec
    entry = library.lookup(name)
    if entry is not None:
        return entry
    hint = suggest(name, library.names()) or "run 'archc list' for the built-in architectures"
    raise ArchError([Diagnostic(f"no file or built-in architecture named '{spec}'", None, hint)])


def resolve(spec: str | None = None, *, text: str | None = None, filename: str = "<expr>") -> Module:
    """The root module, from a spec (see `locate`) or from text (imports relative to the cwd)."""
    resolver = Resolver()
    if text is not None:
        return resolver.load(text, filename, Path.cwd(), filename)
    path, preset = locate(spec)
    return resolver.load_file(path, preset)


def read_source(path: Path, display: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ArchError([Diagnostic(f"{display} is not UTF-8 text")]) from None
    except OSError as e:
        raise ArchError([Diagnostic(f"cannot read {display}: {e.strerror}")]) from None


class Resolver:
    """One resolution: each imported file becomes one Module, whoever imports it."""

    def __init__(self):
        self.modules: dict[str, Module] = {}   # resolved path -> module
        self.loading: list[str] = []           # imported files being resolved, outermost first
        self.prelude: Module | None = None

    def load_file(self, path: Path, preset: str | None = None) -> Module:
        display = library.display(path)
        return self.load(read_source(path, display), display, path.parent, preset or path.stem, preset)

    def load(self, text: str, display: str, directory: Path, name: str, preset: str | None = None) -> Module:
        module = Module(display, text, directory, parse(text, display), name, preset)
        module.prelude = self._prelude()
        self._resolve_imports(module)
        self._resolve_parts(module)
        return module

    def _prelude(self) -> Module:
        if self.prelude is None:
            display = library.display(PRELUDE)
            text = read_source(PRELUDE, display)
            self.prelude = Module(display, text, PRELUDE.parent, parse(text, display), PRELUDE.stem)
            self._resolve_imports(self.prelude)
        return self.prelude

    def _resolve_imports(self, module: Module) -> None:
        for st in module.stmts:
            if isinstance(st, A.Import) and st.path not in module.imports:
                module.imports[st.path] = self._import(st.path, module.directory)

    def _resolve_parts(self, module: Module) -> None:
        """The networks the file may use as parts: each "file.arch" it calls or writes in a
        sequence, and each built-in's name it uses that the file does not define itself (the
        elaborator decides, by scope, which uses are parts)."""
        defined = _top_level_names(module.stmts)
        for name, is_path in _mentioned(module.stmts):
            if name in module.parts or name in defined:
                continue
            if is_path:
                found = self._import(name, module.directory)
                module.parts[name] = Part(found, None) if isinstance(found, Module) else found
            elif (entry := library.lookup(name)) is not None:
                path, preset = entry
                found = self._import(path.relative_to(library.LIBRARY).as_posix(), library.LIBRARY)
                module.parts[name] = Part(found, preset) if isinstance(found, Module) else found

    def _import(self, path: str, directory: Path) -> Module | Unresolved:
        found = next((c for c in (directory / path, library.LIBRARY / path) if c.is_file()), None)
        if found is None:
            return Unresolved(f"cannot find '{path}' to import",
                              "paths are relative to the importing file, then to the built-in library")
        key = str(found.resolve())
        if key in self.loading:
            return Unresolved(f"import cycle: {' -> '.join(Path(p).name for p in self.loading + [key])}",
                              "move the shared blocks into a third file")
        if key not in self.modules:
            self.loading.append(key)
            try:
                self.modules[key] = self.load_file(found)
            finally:
                self.loading.pop()
        return self.modules[key]


def _top_level_names(stmts) -> set:
    """What a file defines at its top level (its definitions shadow built-in networks)."""
    out = set()
    for st in stmts:
        if isinstance(st, (A.Let, A.BlockDef, A.Param)):
            out.add(st.name)
        elif isinstance(st, A.Import) and st.names:
            out.update(st.names)
    return out


def _mentioned(node) -> list:
    """(name, is_path) for every name a file uses and every "….arch" string it calls or writes,
    in order: the candidates for parts."""
    out = []

    def walk(x):
        if isinstance(x, (list, tuple)):
            for y in x:
                walk(y)
        elif isinstance(x, A.Name):
            out.append((x.id, False))
        elif isinstance(x, A.Call):
            out.append((x.func, x.func.endswith(".arch")))
            walk(x.args)
            walk(x.body)
        elif isinstance(x, A.Const):
            if isinstance(x.value, str) and x.value.endswith(".arch"):
                out.append((x.value, True))
        elif isinstance(x, (A.Import, A.Preset)) or x is None or not hasattr(x, "__dataclass_fields__"):
            return
        else:
            for f in x.__dataclass_fields__:
                walk(getattr(x, f))
    walk(node)
    return out
