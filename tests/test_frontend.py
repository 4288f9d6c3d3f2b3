"""The front end's phases one by one: resolve (files, imports, the library index), binding the
family parameters, and elaboration of the program and its imported modules."""
import json
from pathlib import Path

import pytest

from archc.compiler import library
from archc.compiler.build import bind_family_params, build_graph
from archc.compiler.elaborate import Elaborator
from archc.compiler.ir import Graph
from archc.compiler.resolve import Module, Unresolved, locate, resolve
from archc.spec import ast as A
from archc.spec.source import ArchError

FAMILY = """param width = 16
param classes = 10
param depth = 2
input 32x32x3
conv3(width) * depth gap fc(classes)
preset fam_wide: width=32, classes=5
preset fam_bad: widht=8
"""


def family() -> Module:
    return resolve(text=FAMILY, filename="fam.arch")


# --- binding family parameters -----------------------------------------------------------------
def test_bind_precedence_default_then_preset_then_override():
    chosen, diags = bind_family_params(family(), "fam_wide", {"classes": 7})
    assert diags == []
    assert "depth" not in chosen                                  # default: left to the param
    assert isinstance(chosen["width"], A.Const) and chosen["width"].value == 32   # preset
    assert chosen["classes"].value == 7 and chosen["classes"].expr is None   # override beats the preset
    g = build_graph(text=FAMILY, filename="fam.arch", params={"classes": 7})
    assert g.params == {"width": 16, "classes": 7, "depth": 2}


def test_bind_overrides_read_strings_as_expressions():
    chosen, _ = bind_family_params(family(), None, {"width": "8 * 3", "depth": (1, 2), "classes": "1 +"})
    assert isinstance(chosen["width"].expr, A.BinOp)
    assert chosen["depth"].value == [1, 2]
    assert chosen["classes"].value == "1 +" and chosen["classes"].expr is None   # not an expression: kept as text


def test_bind_unknown_preset_or_param_raises():
    with pytest.raises(ArchError, match="fam.arch has no preset 'fam_wid'") as e:
        bind_family_params(family(), "fam_wid", {})
    assert "did you mean 'fam_wide'" in e.value.render()
    with pytest.raises(ArchError, match="fam.arch has no parameter 'clases'") as e:
        bind_family_params(family(), None, {"clases": 3})
    assert "did you mean 'classes'?" in e.value.render()


def test_bind_preset_setting_a_non_param_is_a_located_diagnostic():
    chosen, diags = bind_family_params(family(), "fam_bad", {})
    assert chosen == {}
    [d] = diags
    assert d.message == "preset 'fam_bad' sets 'widht', which is not a param of this file"
    assert (d.span.file, d.span.line) == ("fam.arch", 7) and d.hint == "did you mean 'width'?"


# --- resolve -----------------------------------------------------------------------------------
def test_locate_prefers_a_local_file_over_a_builtin(tmp_path, monkeypatch):
    builtin = library.lookup("densenet121")
    assert locate("densenet121") == builtin == locate("densenet121.arch")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "densenet121.arch").write_text("input 8x8x3\nrelu\n")
    assert locate("densenet121.arch") == (Path("densenet121.arch"), None)
    assert locate("densenet121") == builtin                        # no such file: the built-in
    (tmp_path / "densenet121").write_text("input 8x8x3\nrelu\n")
    assert locate("densenet121") == (Path("densenet121"), None)
    with pytest.raises(ArchError, match="no file or built-in architecture named 'densenet12'"):
        locate("densenet12")


def test_resolve_parses_the_import_closure_once_per_file(tmp_path):
    (tmp_path / "lib.arch").write_text("block pair(c) = conv3(c) conv3(c)\n")
    (tmp_path / "a.arch").write_text('from "lib.arch" import pair\n')
    (tmp_path / "b.arch").write_text('import "lib.arch"\n')
    (tmp_path / "net.arch").write_text('import "a.arch"\nimport "b.arch"\ninput 8x8x3\npair(4)\n')
    root = resolve(str(tmp_path / "net.arch"))
    a, b = root.imports["a.arch"], root.imports["b.arch"]
    assert a.imports["lib.arch"] is b.imports["lib.arch"]
    assert root.prelude is a.prelude is b.prelude and root.prelude.display == "archc/architectures/prelude.arch"
    assert {Path(d).name for d in root.sources()} == {"net.arch", "a.arch", "b.arch", "lib.arch", "prelude.arch"}


def test_import_cycle_is_found_by_resolve(tmp_path):
    (tmp_path / "cyc1.arch").write_text('import "cyc2.arch"\n')
    (tmp_path / "cyc2.arch").write_text('let k = 1\nimport "cyc1.arch"\n')
    (tmp_path / "top.arch").write_text('import "cyc1.arch"\ninput 8x8x3\nrelu\n')
    root = resolve(str(tmp_path / "top.arch"))
    cycle = root.imports["cyc1.arch"].imports["cyc2.arch"].imports["cyc1.arch"]
    assert cycle == Unresolved("import cycle: cyc1.arch -> cyc2.arch -> cyc1.arch",
                               "move the shared blocks into a third file")
    with pytest.raises(ArchError) as e:
        build_graph(str(tmp_path / "top.arch"))
    [d] = e.value.diagnostics
    assert (Path(d.span.file).name, d.span.line, d.span.col) == ("cyc2.arch", 2, 8)


def test_missing_import_is_reported_at_the_import(tmp_path):
    (tmp_path / "net.arch").write_text('input 8x8x3\nfrom "nope.arch" import pair\npair(4)\n')
    assert isinstance(resolve(str(tmp_path / "net.arch")).imports["nope.arch"], Unresolved)
    with pytest.raises(ArchError) as e:
        build_graph(str(tmp_path / "net.arch"))
    first, second = e.value.diagnostics                           # later statements still checked
    assert (first.message, first.span.line) == ("cannot find 'nope.arch' to import", 2)
    assert (second.message, second.span.line) == ("unknown name 'pair'", 3)


def test_syntax_error_in_an_import_is_raised_by_resolve(tmp_path):
    (tmp_path / "lib.arch").write_text("block pair(c) = conv3(c\n")
    (tmp_path / "net.arch").write_text('import "lib.arch"\ninput 8x8x3\nunknown_layer\n')
    with pytest.raises(ArchError) as e:
        resolve(str(tmp_path / "net.arch"))
    [d] = e.value.diagnostics
    assert Path(d.span.file).name == "lib.arch" and "is never closed" in d.message
    assert "1 | block pair(c) = conv3(c" in e.value.render()


def test_imported_module_error_is_reported_once_with_its_location(tmp_path):
    (tmp_path / "lib.arch").write_text("let k = 3\nlet bad = nosuch + 1\n")
    (tmp_path / "a.arch").write_text('import "lib.arch"\n')
    (tmp_path / "net.arch").write_text('import "lib.arch"\nimport "a.arch"\nimport "lib.arch"\ninput 8x8x3\nrelu\n')
    with pytest.raises(ArchError) as e:
        build_graph(str(tmp_path / "net.arch"))
    [d] = e.value.diagnostics
    assert d.message == "unknown name 'nosuch'"
    assert (Path(d.span.file).name, d.span.line, d.span.col) == ("lib.arch", 2, 11)
    assert "2 | let bad = nosuch + 1" in e.value.render()          # the imported file's text


# --- the library index -------------------------------------------------------------------------
def test_library_index_is_what_the_parser_reads():
    parsed = library.file_presets(library.LIBRARY, {})            # every file parsed
    assert library.index() == library.names_of(library.LIBRARY, parsed)
    assert json.loads(library.INDEX.read_text()) == parsed, \
        "regenerate the shipped index: python -m archc.compiler.library"


def test_library_index_sees_presets_only_the_parser_finds(tmp_path):
    (tmp_path / "fam.arch").write_text(
        "param w = 1\n"
        "let x = 2; preset after_semicolon: w=2\n"
        "preset \\\n  after_continuation: w=3\n"
        "preset  odd / spacing :w=4\n"
        "block b() {\npreset in_a_block: w=5\nrelu\n}\n")      # not a top-level preset
    (tmp_path / "solo.arch").write_text("# preset in_a_comment: w=1\ninput 8x8x3\nrelu\n")
    (tmp_path / "prelude.arch").write_text("preset never: w=1\n")
    files = library.file_presets(tmp_path, {})
    assert files["fam.arch"]["presets"] == ["after_semicolon", "after_continuation", "odd/spacing"]
    assert library.names_of(tmp_path, files) == {
        "after_semicolon": (tmp_path / "fam.arch", "after_semicolon"),
        "after_continuation": (tmp_path / "fam.arch", "after_continuation"),
        "odd/spacing": (tmp_path / "fam.arch", "odd/spacing"),
        "solo": (tmp_path / "solo.arch", None),
    }
    stale = {"fam.arch": {"sha256": "0" * 64, "presets": ["gone"]}}
    assert library.file_presets(tmp_path, stale) == files         # a stale entry is re-parsed
    current = {"solo.arch": {**files["solo.arch"], "presets": ["cached"]}}
    assert library.file_presets(tmp_path, current)["solo.arch"]["presets"] == ["cached"]


# --- elaborating the program -------------------------------------------------------------------
def test_input_node_is_named_input_and_comes_first():
    g = build_graph(text="input 8x8x3\nrelu\n")
    first = next(iter(g))
    assert (first.name, first.op, first.attrs.shape, first.shape, g.inputs) == ("input", "input", (8, 8, 3),
                                                                           (8, 8, 3), ["input"])
    assert first.span.line == 1
    g = build_graph(text="relu\n", input_shape=(4, 4, 2))
    assert g.inputs == ["input"] and g["input"].span is None and g.output_shape == (4, 4, 2)


def test_bad_input_shapes_are_diagnostics():
    for text, shape, messages in [
            ("", (0, 3, 3), ["input size must be positive, got 0"]),
            ("relu\n", (4, 4), ["an input shape is HxWxC (or C), not 2 numbers"]),
            ("input 0x4x3\nrelu\n", None, ["input size must be positive, got 0"])]:   # one cause, one error
        with pytest.raises(ArchError) as e:
            build_graph(text=text, input_shape=shape)
        assert [d.message for d in e.value.diagnostics] == messages


def test_binding_errors_come_first_and_elaboration_continues():
    module = resolve(text=FAMILY.replace("input 32x32x3\n", "input 32x32x3\nrleu\n"), filename="fam.arch")
    chosen, diags = bind_family_params(module, "fam_bad", {})
    with pytest.raises(ArchError) as e:
        Elaborator(Graph(module.name)).run_program(module, chosen, None, diags)
    assert [d.message for d in e.value.diagnostics] == [
        "preset 'fam_bad' sets 'widht', which is not a param of this file", "unknown name 'rleu'"]
