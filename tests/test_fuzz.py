"""Mutation fuzzing: every mutated spec ends in a located user error or a graph, never a traceback."""
import random

import pytest

from archc.compiler.build import build_graph
from archc.compiler.library import LIBRARY
from archc.spec.source import ArchError

SEEDS = [
    "input 28x28x192\ninception(64,96>128,16>32,pool>32)\n",
    "input 56x56x64\nresidual<bn relu conv3 x2>\n",
    """param width = 16
block unit(c, s=1) = residual<conv3(c, s=s) bn relu conv3(c) bn> relu
input 32x32x3
stem: conv3(width) bn relu
layer1: unit(width) * 2
layer2: unit(2 * width, s=2) unit(2 * width)
branch aux: gap fc(4)
head: gap fc(10) softmax
output head, aux
""",
    """input 64x64x1
enc1: conv3(8, p=0) relu
enc2: maxpool(2) conv3(16, p=0) relu
up: deconv(8) concat(@enc1, identity, crop=true) conv3(8) relu
out: conv1(2)
""",
    """let f(x) = make_divisible(x * 1.25)
block se2(r) = mul(identity, gap(keep=true) conv1(r) relu conv1(cin) sigmoid)
input 32x32x8
dense<bn relu conv1(16) bn relu conv3(8)> * 3
conv1(f(24)) se2(4) slice(0, cin // 2) shuffle(2) pad([1, 1, 0, 0]) avgpool(2, ceil=true)
""",
]
TOKENS = ["(", ")", "<", ">", "[", "]", ",", "=", "@", "*", "x2", "x99999", "-1", "0", "99999999999999999999",
          "1e308", "conv3", "residual", "concat", "dense", "input", "block", "let", "param", ":", "\n", "#", "é",
          "\u202e", "((((((((((", "<<<<", "in", "cin", "i", "1x7", "none", "true", "\"s\"", "//", "**", "if",
          "else", "output", "branch", "{", "}", ";", "\\\n", "fc(0)", "maxpool(0)", "conv(3, g=0)"]


def mutate(text: str, rng: random.Random) -> str:
    toks = text.split(" ")
    op = rng.randrange(6)
    if op == 0 and len(toks) > 1:  # delete a token
        del toks[rng.randrange(len(toks))]
    elif op == 1:  # duplicate a token
        i = rng.randrange(len(toks))
        toks.insert(i, toks[i])
    elif op == 2:  # insert a hostile token
        toks.insert(rng.randrange(len(toks) + 1), rng.choice(TOKENS))
    elif op == 3:  # change a number
        out = []
        for t in toks:
            if any(ch.isdigit() for ch in t) and rng.random() < 0.3:
                t = "".join(rng.choice(["0", "-1", "7", "100000", "3"]) if ch.isdigit() else ch for ch in t)
            out.append(t)
        toks = out
    elif op == 4:  # delete or duplicate a character
        s = " ".join(toks)
        if s:
            i = rng.randrange(len(s))
            s = s[:i] + s[i + 1:] if rng.random() < 0.5 else s[:i] + s[i] + s[i:]
        return s
    else:  # truncate
        s = " ".join(toks)
        return s[: rng.randrange(len(s) + 1)]
    return " ".join(toks)


def check_one(text: str) -> str:
    try:
        build_graph(text=text, filename="fuzz.arch")
        return "ok"
    except ArchError as e:
        rendered = e.render()
        assert "error:" in rendered
        assert_names_the_users_file(e, "fuzz.arch")
        return "error"


def assert_names_the_users_file(e: ArchError, file: str) -> None:
    """Every error is placed in the user's file, never inside a prelude or library block it
    expanded (their lines are notes), and never nowhere."""
    for d in e.diagnostics:
        assert d.span is not None and d.span.file == file, e.render()


@pytest.mark.parametrize("seed", range(10))
def test_mutations_never_crash(seed):
    rng = random.Random(seed)
    outcomes = {"ok": 0, "error": 0}
    for _ in range(220):  # 10 x 220 = 2,200 cases
        text = rng.choice(SEEDS)
        for _ in range(rng.randrange(1, 4)):
            text = mutate(text, rng)
        try:
            outcomes[check_one(text)] += 1
        except ArchError:
            raise
        except Exception as exc:  # a traceback on user input is a bug: show the input
            raise AssertionError(f"{type(exc).__name__}: {exc}\n--- input ---\n{text}") from exc
    assert outcomes["error"] > 0 and outcomes["ok"] > 0


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment", "input 0x0x0", "input 8x8x3\n" + "(" * 500 + "relu" + ")" * 500,
                                  "input 8x8x3\n" + "relu " * 5000, "input 8x8x3\nconv3(8) * 100000000",
                                  "input 8x8x3\nlet a = [1] * 100000000", "input 8x8x3\nlet x = 10 ** 100000",
                                  "\x00\x01", "input 8x8x3\nresidual<" * 300, "input 99999999x99999999x99999999\nconv3(8)"])
def test_hostile_inputs(text):
    try:
        check_one(text)
    except ArchError:
        pass


def test_library_files_mutated():
    rng = random.Random(1)
    files = sorted(p for p in LIBRARY.rglob("*.arch") if p.name != "prelude.arch")[:6]
    for path in files:
        base = path.read_text()
        for _ in range(15):
            text = mutate(base, rng)
            try:
                check_one(text)
            except Exception as exc:
                raise AssertionError(f"{path.name}: {type(exc).__name__}: {exc}\n--- input ---\n{text[:2000]}") from exc
