"""The built-in architecture library: names → (.arch file, preset).

A file's names are its `preset` statements as the parser reads them. Parsing the whole library
costs ~0.2 s, so the names ship in INDEX (regenerate with `python -m archc.compiler.library`),
keyed by each file's SHA-256: a file whose text differs from its entry is parsed instead, so the
index is always what the parser sees, only slower when INDEX is out of date.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

LIBRARY = Path(__file__).resolve().parent.parent / "architectures"
INDEX = LIBRARY / "index.json"


def presets_of(text: str, file: str) -> list:
    """The names of a file's top-level `preset` statements."""
    from ..spec import ast as A
    from ..spec.parser import parse   # loads Lark: only for files INDEX does not cover
    return [st.name for st in parse(text, file) if isinstance(st, A.Preset)]


def contains(directory: Path) -> bool:
    """Whether a directory is in the built-in library (its files are not the user's)."""
    return Path(directory).resolve().is_relative_to(LIBRARY)


def _library_files(root: Path) -> list:
    return [p for p in sorted(root.rglob("*.arch")) if p.name != "prelude.arch"]


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def file_presets(root: Path, known: dict) -> dict:
    """relative path -> {'sha256', 'presets'} for every library file under root; entries of
    `known` (the same form) are reused where the file's digest matches."""
    out = {}
    for path in _library_files(root):
        rel, text = path.relative_to(root).as_posix(), path.read_text(encoding="utf-8")
        digest, entry = _digest(text), known.get(rel)
        if entry is None or entry["sha256"] != digest:
            entry = {"sha256": digest, "presets": presets_of(text, display(path))}
        out[rel] = entry
    return out


def names_of(root: Path, files: dict) -> dict:
    """name -> (path, preset or None). A file is a name of its own unless it has presets."""
    out: dict = {}
    for rel, entry in files.items():
        path = root / rel
        for name in entry["presets"]:
            out[name] = (path, name)
        if not entry["presets"]:
            out[Path(rel).with_suffix("").as_posix()] = (path, None)
    return out


def _shipped() -> dict:
    try:
        return json.loads(INDEX.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


@functools.lru_cache(maxsize=1)
def index() -> dict:
    """name -> (path, preset or None) for the built-in library."""
    return names_of(LIBRARY, file_presets(LIBRARY, _shipped()))


def lookup(name: str):
    return index().get(name)


def names() -> list:
    return sorted(index())


def display(path: Path) -> str:
    """A file's name in diagnostics and spans: archc/architectures/… for a library file however
    it was reached, any other file relative to the working directory."""
    try:
        return "archc/architectures/" + path.resolve().relative_to(LIBRARY).as_posix()
    except ValueError:
        pass
    try:
        return os.path.relpath(path)
    except ValueError:      # another drive (Windows)
        return str(path)


def write_index(path: Path = INDEX) -> None:
    """Parse every library file and store its presets (``python -m archc.compiler.library``)."""
    path.write_text(json.dumps(file_presets(LIBRARY, {}), indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    write_index()
    print(f"wrote {INDEX}")
