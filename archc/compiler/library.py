"""The built-in architecture library: names → (.arch file, preset)."""
from __future__ import annotations

import functools
import re
from pathlib import Path

LIBRARY = Path(__file__).resolve().parent.parent / "architectures"
_PRESET = re.compile(r"^preset\s+([A-Za-z0-9_/]+)\s*:", re.M)


@functools.lru_cache(maxsize=1)
def index() -> dict:
    """name -> (path, preset or None). A file is a name of its own unless it is only presets."""
    out: dict = {}
    for path in sorted(LIBRARY.rglob("*.arch")):
        if path.name == "prelude.arch" or path.parent.name == "blocks":
            continue
        text = path.read_text(encoding="utf-8")
        presets = _PRESET.findall(text)
        for name in presets:
            out[name] = (path, name)
        if not presets:
            rel = path.relative_to(LIBRARY).with_suffix("")
            out[rel.as_posix()] = (path, None)
    return out


def lookup(name: str):
    return index().get(name)


def names() -> list:
    return sorted(index())


def display(path: Path) -> str:
    try:
        return "archc/architectures/" + path.resolve().relative_to(LIBRARY).as_posix()
    except ValueError:
        return str(path)
