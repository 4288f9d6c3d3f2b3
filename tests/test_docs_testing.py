"""docs/testing.md's example family and its property-test file run as written."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "testing.md"


def _blocks(lang: str) -> list:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)


def test_the_example_family_and_its_tests_run(tmp_path):
    (family,), (tests,) = _blocks("arch"), _blocks("python")
    (tmp_path / "tiny.arch").write_text(family, encoding="utf-8")
    path = tmp_path / "test_tiny.py"
    path.write_text(tests, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("test_tiny", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ran = [name for name in dir(module) if name.startswith("test_")]
    assert len(ran) == 2
    for name in ran:
        getattr(module, name)()          # hypothesis runs each over its examples


def test_the_example_family_is_formatted():
    from archc.spec.fmt import format_source
    (family,) = _blocks("arch")
    assert format_source(family, "tiny.arch") == family
