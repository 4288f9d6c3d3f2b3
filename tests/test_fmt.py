"""`archc fmt`: one canonical layout that keeps the IR, the comments and the library's tables."""
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from archc.compiler.build import build_graph
from archc.compiler.library import LIBRARY
from archc.spec.fmt import format_source
from archc.spec.source import ArchError
from test_fuzz import SEEDS, mutate

LIBRARY_FILES = sorted(LIBRARY.rglob("*.arch"))


def ir(text: str, filename: str):
    """The graph's names, ops, attributes and shapes (spans move), or the error messages."""
    try:
        g = build_graph(text=text, filename=filename)
    except ArchError as e:
        return ("error", tuple(d.message for d in e.diagnostics))
    nodes = [{k: v for k, v in n.to_json().items() if k != "span"} for n in g]
    return (g.inputs, g.outputs, g.aliases, nodes)


def comments(text: str) -> list[str]:
    from archc.spec.fmt import _tokens
    return [t.text for t in _tokens(text) if t.type == "COMMENT"]


@pytest.mark.parametrize("path", LIBRARY_FILES, ids=lambda p: p.name)
def test_library_is_formatted_and_keeps_its_ir(path):
    text = path.read_text()
    out = format_source(text, str(path))
    assert out == text, f"run `archc fmt {path}`"
    assert format_source(out, str(path)) == out


def fuzz_corpus(n=400):
    """Mutants of the fuzz seeds that parse (the others are rejected before formatting)."""
    from archc.spec.parser import parse
    rng = random.Random(15)
    found = []
    for i in range(n):
        text = SEEDS[i % len(SEEDS)]
        for _ in range(rng.randrange(1, 4)):
            text = mutate(text, rng)
        try:
            parse(text, "fuzz.arch")
        except ArchError:
            continue
        found.append(text)
    return found


def test_fuzz_corpus_keeps_ir_and_comments_and_is_idempotent():
    corpus = fuzz_corpus()
    assert len(corpus) > 100
    for text in corpus:
        out = format_source(text, "fuzz.arch")
        assert format_source(out, "fuzz.arch") == out, text
        assert comments(out) == [c.rstrip() for c in comments(text)], text
        assert ir(out, "fuzz.arch") == ir(text, "fuzz.arch"), text


def test_library_files_reformatted_from_scratch_keep_their_ir():
    """Every library file with its spacing mangled formats back to itself, with the same IR."""
    for path in LIBRARY_FILES:
        text = path.read_text()
        mangled = "\n".join(" " + re.sub(r"(?<![=!<>])=(?!=)", " = ", line.replace(", ", " ,  "))
                             if "#" not in line else line for line in text.splitlines())
        out = format_source(mangled, str(path))
        assert format_source(out, str(path)) == out, path.name
        assert len(comments(out)) == len(comments(text)), path.name
        if "input" in text:
            assert ir(out, str(path)) == ir(text, str(path)), path.name


def test_canonical_spacing_and_alignment():
    src = """\
param   layers=[3,4,6,3]  # per stage
param width = 64 # the stem

block  unit( c , s = 1 )=residual< conv3( c,s=s ) bn relu conv3(c) bn >relu
input 56x56x64
stem:conv3( width ) bn   relu # 56x56x64
layer1 : unit(64)*layers[ 0 ]
branch aux: gap fc(10)
layer2: unit( 128,s=2 )unit(128)*( layers[1]-1 )   # 28x28x128
preset keras/small : layers=[1, 1, 1, 1] , width = 32
"""
    assert format_source(src) == """\
param layers = [3, 4, 6, 3]  # per stage
param width = 64             # the stem

block unit(c, s=1) = residual<conv3(c, s=s) bn relu conv3(c) bn> relu
input 56x56x64
stem:       conv3(width) bn relu                        # 56x56x64
layer1:     unit(64) * layers[0]
branch aux: gap fc(10)
layer2:     unit(128, s=2) unit(128) * (layers[1] - 1)  # 28x28x128
preset keras/small: layers=[1, 1, 1, 1], width=32
"""


def test_a_reference_through_a_numbered_unit_stays_one_token():
    """`12.` lexes as a float out of context; inside a reference it is a unit's number."""
    src = "input 64x64x3\nbody: mobilenet_v3_large(until=lastconv)\nc4: @body.blocks.12.hard_swish1 conv1(8)\n"
    assert format_source(src) == src.replace("c4: ", "c4:   ")


def test_tables_blocks_continuations_and_long_calls():
    src = """\
block b(c) {
      let w = c*2 # width
  x: conv1( w )
  yy: add(@x, -1 * identity)
}
a: inception(64, 96>128, 16>32, pool>32)
bb: inception(128, 128>192, 32>96, pool>64)
features: conv3(8) \\
   relu
block se(r, act=relu, gate=sigmoid) = mul(identity, gap(keep=true) conv1(r, bias=true) act conv1(cin, bias=true) gate)
"""
    assert format_source(src) == """\
block b(c) {
  let w = c * 2  # width
  x:  conv1(w)
  yy: add(@x, -1 * identity)
}
a:        inception(64,  96>128,  16>32, pool>32)
bb:       inception(128, 128>192, 32>96, pool>64)
features: conv3(8) \\
          relu
block se(r, act=relu, gate=sigmoid) = mul(
    identity,
    gap(keep=true) conv1(r, bias=true) act conv1(cin, bias=true) gate,
)
"""


def run_cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "archc.cli", "fmt", *args], capture_output=True, text=True,
                          input=stdin, cwd=Path(__file__).parent.parent)


def test_cli_check_diff_and_rewrite(tmp_path):
    ugly, tidy = tmp_path / "ugly.arch", tmp_path / "tidy.arch"
    ugly.write_text("input 8x8x3\nconv3( 8 )  relu\n")
    tidy.write_text("input 8x8x3\nconv3(8) relu\n")
    r = run_cli("--check", str(ugly), str(tidy))
    assert (r.returncode, r.stdout) == (1, f"{ugly}\n")
    assert run_cli("--check", str(tidy)).returncode == 0
    r = run_cli("--diff", str(ugly))
    assert r.returncode == 0
    assert "-conv3( 8 )  relu\n+conv3(8) relu\n" in r.stdout and r.stdout.startswith(f"--- {ugly} (original)")
    assert ugly.read_text() == "input 8x8x3\nconv3( 8 )  relu\n"        # --check and --diff write nothing
    r = run_cli(str(ugly), str(tidy))
    assert (r.returncode, r.stdout) == (0, f"formatted {ugly}\n")
    assert ugly.read_text() == tidy.read_text()
    assert run_cli("-", stdin="input 8x8x3\nconv3( 8 )\n").stdout == "input 8x8x3\nconv3(8)\n"


def test_cli_file_that_does_not_parse_is_left_untouched(tmp_path):
    bad = tmp_path / "bad.arch"
    bad.write_text("input 8x8x3\nconv3(8,, 2)\n")
    r = run_cli(str(bad))
    assert r.returncode == 2
    assert r.stderr.startswith(f"{bad}:2:9: error: unexpected ','\n  |\n2 | conv3(8,, 2)\n  |         ^\n")
    assert "Traceback" not in r.stderr
    assert bad.read_text() == "input 8x8x3\nconv3(8,, 2)\n"
    r = run_cli(str(tmp_path / "missing.arch"))
    assert r.returncode == 2 and r.stderr.startswith("error: cannot read") and "Traceback" not in r.stderr
