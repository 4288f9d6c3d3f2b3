"""Golden tests of the error messages: place, line with caret, shapes involved, a fix."""
import json
import random

import pytest

from archc.compiler.build import build_graph
from archc.spec.source import ArchError


def render(text, inp=None, file="net.arch"):
    with pytest.raises(ArchError) as e:
        build_graph(text=text, filename=file, input_shape=inp)
    return e.value.render()


def test_add_channel_mismatch():
    assert render("input 28x28x64\nconv3(256)\nadd(identity, conv3(128))\n") == """\
net.arch:3:1: error: cannot add 28x28x256 and 28x28x128
  |
3 | add(identity, conv3(128))
  | ^^^^^^^^^^^^^^^^^^^^^^^^^
  = help: residual branches must end with the input's size and channels; a projection shortcut (conv1 bn) can match them"""


def test_unknown_name_in_a_block_is_reported_once_with_its_call_sites():
    text = "block cn(c) = residual<dwconv7 layernom fc(c)>\ninput 32x32x8\ns1: cn(8) * 2\ns2: cn(8)\ns3: cn(8) cn(8)\n"
    assert render(text) == """\
net.arch:1:32: error: unknown name 'layernom'
  |
1 | block cn(c) = residual<dwconv7 layernom fc(c)>
  |                                ^^^^^^^^
net.arch:3:5: note: in block 'cn' called here
  |
3 | s1: cn(8) * 2
  |     ^^^^^
net.arch:4:5: note: in block 'cn' called here
  |
4 | s2: cn(8)
  |     ^^^^^
net.arch:5:5: note: in block 'cn' called here
  |
5 | s3: cn(8) cn(8)
  |     ^^^^^
  = help: did you mean 'layernorm'?"""


def test_plain_add_names_each_branch_not_the_residual_hint():
    text = ("input 256x256x3\nc3: conv3(128, s=4) relu\nc4: conv3(256, s=2) relu\n"
            "p3: add(@c3 conv1(256), @c4 upsample(4))\n")
    assert render(text) == """\
net.arch:4:5: error: cannot add 64x64x256 and 128x128x256
  |
4 | p3: add(@c3 conv1(256), @c4 upsample(4))
  |     ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
net.arch:4:9: note: branch 1 ends with 64x64x256
  |
4 | p3: add(@c3 conv1(256), @c4 upsample(4))
  |         ^^^^^^^^^^^^^^
net.arch:4:25: note: branch 2 ends with 128x128x256
  |
4 | p3: add(@c3 conv1(256), @c4 upsample(4))
  |                         ^^^^^^^^^^^^^^^
  = help: every branch of add must end with the same height, width and channels (a size of 1 broadcasts): \
resize one with upsample, a strided conv or a pool, or match channels with conv1"""


def test_concat_spatial_mismatch():
    assert render("input 28x28x64\nconcat(conv3(8), conv3(8, s=2))\n") == """\
net.arch:2:1: error: cannot concatenate 28x28x8 and 14x14x8: sizes other than channels differ
  |
2 | concat(conv3(8), conv3(8, s=2))
  | ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  = help: give every branch the same stride and padding, or crop with concat(crop=true)"""


def test_unknown_name_with_suggestion():
    assert render("input 8x8x3\nconv3(8) rleu\n") == """\
net.arch:2:10: error: unknown name 'rleu'
  |
2 | conv3(8) rleu
  |          ^^^^
  = help: did you mean 'relu' or 'relu6'?"""


def test_groups_do_not_divide():
    out = render("input 8x8x30\nconv3(64, g=4)\n")
    assert out.startswith("net.arch:2:1: error: groups=4 does not divide the 30 input channels of 8x8x30")
    assert "= help: choose groups among the divisors of 30" in out


def test_kernel_larger_than_input():
    out = render("input 4x4x3\nconv(8, 7, p=0)\n")
    assert out.startswith("net.arch:2:1: error: conv kernel 7x7 is larger than its padded input 4x4x3 (height 4 + padding 0+0)")


def test_non_positive_size():
    out = render("input 4x4x3\nmaxpool(2) maxpool(2) maxpool(2)\n")
    assert "net.arch:2:23: error: maxpool kernel 2x2 is larger than its padded input 1x1x3" in out


def test_wrong_block_arity_points_at_call():
    out = render("block b(c, s=1) = conv3(c, s=s)\ninput 8x8x3\nb(1, 2, 3)\nb(8, t=2)\n")
    assert "net.arch:3:1: error: block 'b' takes 2 arguments, got 3" in out
    assert "net.arch:4:1: error: block 'b' has no parameter 't'" in out  # several errors in one run


def test_error_inside_block_notes_the_call_site():
    out = render("block b(c) = add(identity, conv3(c))\ninput 8x8x16\nb(16)\nb(8)\n")
    assert "net.arch:1:14: error: cannot add 8x8x16 and 8x8x8" in out
    assert "net.arch:4:1: note: in block 'b' called here" in out


def test_unknown_tensor_reference():
    out = render("input 8x8x3\nenc: conv3(8)\nconcat(@enk, identity)\n")
    assert "net.arch:3:8: error: unknown tensor '@enk'" in out and "did you mean 'enc'?" in out


def test_recursive_block():
    out = render("block b(c) = conv3(c) b(c)\ninput 8x8x3\nb(4)\n")
    assert "error: block 'b' calls itself too deeply" in out


def test_syntax_error_location():
    assert render("input 8x8x3\nconv3(64\nrelu\n") == """\
net.arch:2:6: error: this '(' is never closed
  |
2 | conv3(64
  |      ^
  = help: close it with ')'; inside brackets a line break does not end the statement"""
    out = render("input 8x8x3\nconv3(64)) relu\n")
    assert out.startswith("net.arch:2:10: error: unexpected ')'")


def test_missing_input():
    assert "error: the network has no input shape" in render("conv3(8)\n")


def test_duplicate_stage_name():
    assert "error: the name 'a' is used twice" in render("input 8x8x3\na: conv3(4)\na: conv3(4)\n")


# --- the shipped LALR table (archc/spec/arch_table.json) ---------------------------------------
SYNTAX_ERRORS_PER_FILE = 4


def test_shipped_parse_table_is_current():
    """Regenerate with `python -m archc.spec.parser` after editing arch.lark."""
    from archc.spec import parser as P
    table = json.loads(P.PARSE_TABLE.read_text())
    assert table["key"]["grammar_sha256"] == P._table_key(P.GRAMMAR.read_text())["grammar_sha256"]


def _rejection(parser, text):
    """(what a parser reports for a text it rejects, the LALR state it stopped in), or None when
    it accepts the text. State numbers are the parser's own: two builds may number them apart."""
    try:
        parser.parse(text)
    except Exception as err:          # (the message lists the expected set in arbitrary order)
        facts = (type(err), getattr(err, "line", None), getattr(err, "column", None),
                 repr(getattr(err, "token", None)), sorted(getattr(err, "expected", ())))
        return facts, getattr(getattr(err, "state", None), "position", None)
    return None


def test_shipped_parse_table_parses_like_the_grammar():
    from archc.spec import parser as P
    from archc.compiler.library import LIBRARY
    from test_fuzz import mutate
    key = json.loads(P.PARSE_TABLE.read_text())["key"]
    if key["lark"] != P._table_key("")["lark"]:
        pytest.skip(f"table made with lark {key['lark']}: this lark rebuilds it (correct, 0.2 s slower)")
    built = P._build_lark(P.GRAMMAR.read_text())
    loaded = P._lark.__wrapped__()                        # a fresh load; the module's cache is left alone
    assert loaded.source_path == "<deserialized>"          # the table was used, not rebuilt
    states = set()
    for f in sorted(LIBRARY.rglob("*.arch")):
        text = f.read_text()
        assert repr(loaded.parse(text)) == repr(built.parse(text)), f.name
        # Deterministic mutations the grammar rejects: errors deep inside blocks, bodies, presets
        # and imports, so the comparison covers many parser states, not only a file's first tokens.
        rng, found = random.Random(f.name), 0
        for _ in range(50):
            mutated = mutate(text, rng)
            rejected = _rejection(built, mutated)
            if rejected is not None:
                facts, state = _rejection(loaded, mutated)
                assert facts == rejected[0], f"{f.name}:\n{mutated}"
                states.add(state)
                found += 1
                if found == SYNTAX_ERRORS_PER_FILE:
                    break
    assert len(states) >= 30, f"the mutations reach only {len(states)} parser states"


@pytest.mark.parametrize("expr,message", [
    ("log(0)", "log(): the logarithm is defined for positive numbers, not 0"),
    ("log(-2.5)", "log(): the logarithm is defined for positive numbers, not -2.5"),
    ("log(8, 1)", "log(): a logarithm's base cannot be 1"),
    ("log([8])", "log(): must be real number, not list"),
    ("unique(3)", "unique(): expects a list, not the number 3"),
    ("count(8, 8)", "count(): expects a list, not the number 8"),
])
def test_value_function_errors_are_located(expr, message):
    text = f"input 4x4x3\nconv1({expr})\n"
    first = render(text).splitlines()[0]
    assert first == f"net.arch:2:7: error: {message}"


# --- messages a newcomer hits (issue 15) -------------------------------------------------------
def test_block_without_parameter_list_is_a_block_without_parameters():
    g = build_graph(text="block stem = conv3(8) relu\ninput 8x8x3\nstem\nstem\n", filename="net.arch")
    assert [n.name for n in g][1:] == ["stem1.conv1", "stem1.relu1", "stem2.conv1", "stem2.relu1"]


def test_full_width_digits_are_rejected():
    assert render("input 8x8x3\nconv3(６４)\n") == """\
net.arch:2:7: error: unexpected character '６'
  |
2 | conv3(６４)
  |       ^
  = help: numbers are written with the digits 0-9: '６' is fullwidth digit six"""


def test_empty_expr_is_an_error():
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "archc.cli", "check", "--expr", " ", "--input", "8x8x3"],
                       capture_output=True, text=True)
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == 'error: --expr is empty\n  = help: give a network, e.g. --expr "conv3(64) bn relu"\n'


# --- the first hour (issue 27): one root cause, one error, in the user's file -------------------
def archc(*args, cwd=None):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "archc", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_a_word_for_a_number_on_the_command_line_is_one_error():
    r = archc("check", "resnet18", "--param", "classes=ten")
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr.count("error:") == 1 and "unknown name 'classes'" not in r.stderr
    assert r.stderr.startswith("error: --param classes=ten: expected a number, got the name 'ten'\n")
    assert "param classes = 1000" in r.stderr                      # where the parameter is declared
    assert "= help: give a number, such as the default: --param classes=1000" in r.stderr
    r = archc("check", "resnet18", "--param", "classes=relu")
    assert r.returncode == 2 and "--param classes=relu: expected a number, got a layer" in r.stderr
    r = archc("check", "mobilenet_v3_large", "--param", "res=true", "--param", "rows=rleu")
    assert r.returncode == 2 and r.stderr.count("error:") == 2, r.stderr     # one per mistake, nothing after
    assert "error: --param res=true: expected a number, got a boolean" in r.stderr
    assert "error: --param rows=rleu: unknown name 'rleu'" in r.stderr and "did you mean 'relu'" in r.stderr


def test_a_bare_word_for_a_string_parameter_is_that_string():
    """--param padding=same, as a user types it: a string parameter takes the word (quoted or not)."""
    for value in ("same", '"same"'):
        r = archc("check", "unet", "--param", f"padding={value}", "--input", "64x64x3")
        assert r.returncode == 0 and "64x64x3 -> 64x64x2" in r.stdout, r.stderr
    import archc as api
    assert api.load("unet", padding="same", input_shape=(64, 64, 3)).graph.output_shape == (64, 64, 2)


def test_a_string_for_a_number_from_python_is_one_error():
    import archc as api
    with pytest.raises(ArchError) as e:
        api.load("resnet18", classes="ten")
    assert [d.message for d in e.value.diagnostics] == ["classes='ten': expected a number, got the string 'ten'"]


def test_a_failed_definition_is_reported_once_not_at_each_use():
    text = "input 32x32x3\nlet w = wdith\nconv3(w) relu\nconv3(w)\n"
    assert render(text) == """\
net.arch:2:9: error: unknown name 'wdith'
  |
2 | let w = wdith
  |         ^^^^^
  = help: did you mean 'swish'?"""


def test_a_residual_that_grows_is_reported_at_the_users_line_with_a_fix_that_fits(tmp_path):
    (tmp_path / "res.arch").write_text("input 64x64x3\nconv3(8)\nresidual<conv(8, 1, s=1) conv(8, 1, s=1, p=1)>\n")
    r = archc("check", "res.arch", cwd=tmp_path)
    assert r.returncode == 2 and "<builtin>" not in r.stderr and "avgpool" not in r.stderr
    assert r.stderr.startswith("res.arch:3:1: error: no strided 1x1 projection maps 64x64x8 to the body's 66x66x8\n")
    fix = r.stderr.split("residual(proj=")[1].split(")<…>")[0] + ")"
    assert fix == "conv1(s=1, p=1) bn)"[:len(fix)]
    build_graph(text=f"input 64x64x3\nconv3(8)\nresidual(proj={fix[:-1]})<conv(8, 1, s=1) conv(8, 1, s=1, p=1)>\n")


@pytest.mark.parametrize("body, size", [("conv(8, 6, s=2, p=0)", 64), ("conv(8, 1, p=2)", 16)])
def test_each_projection_hint_proposes_a_shortcut_that_builds(body, size):
    message = render(f"input {size}x{size}x3\nresidual<{body}>\n")
    fix = message.split("residual(proj=")[1].split(")<…>")[0]
    build_graph(text=f"input {size}x{size}x3\nresidual(proj={fix})<{body}>\n")


def test_an_error_inside_a_prelude_block_is_placed_at_the_users_call():
    assert render("input 28x28x192\ninception(64, 96128, 16>32, pool>32)\n") == """\
net.arch:2:1: error: cannot index the number 96128
  |
2 | inception(64, 96128, 16>32, pool>32)
  | ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
archc/architectures/prelude.arch:12:10: note: raised inside block 'inception', here
   |
12 |     unit(b2[0], 1) unit(b2[1], 3),
   |          ^^
  = help: only lists (such as 96>128 or [6, 12]) can be indexed"""


def test_an_error_inside_an_imported_library_block_is_placed_at_the_users_call():
    text = 'from "resnet.arch" import basic\ninput 8x8x3\nbasic(0)\n'
    e = pytest.raises(ArchError, build_graph, text=text, filename="net.arch").value
    assert [d.span.file for d in e.diagnostics] == ["net.arch"] and e.diagnostics[0].span.line == 3
    assert any(s.file.endswith("resnet.arch") for _, s in e.diagnostics[0].notes), e.render()


def test_a_size_literal_is_named_as_a_size():
    assert render("input 8x8x3\nconv3(-1x3)\n").splitlines()[0] == "net.arch:2:8: error: cannot negate the size 1x3"
