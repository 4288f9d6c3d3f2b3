"""Declarations (compiler/declarations.py): top-level ``kind(key=value)`` statements that state
typed facts about a network; their values come from the value language, so parameters and
presets set them, and bad ones get located errors."""
from dataclasses import dataclass
from pathlib import Path

import pytest

import archc
from archc.compiler import declarations
from archc.compiler.build import build_graph
from archc.compiler.fold import fold_batchnorm
from archc.lsp import analysis
from archc.runtime.model import Model
from archc.spec.source import ArchError

NET = """\
param mode = "caffe"
input 32x32x3
feat: conv3(8) bn relu
gap fc(10)
preprocess(mode=mode, resize="exact")
preset tfnet: mode="tf"
"""


def _graph(tmp_path, text, name="net", **params):
    p = tmp_path / f"{name}.arch"
    p.write_text(text)
    return build_graph(str(p), params or None)


def _error(tmp_path, text) -> str:
    with pytest.raises(ArchError) as e:
        _graph(tmp_path, text)
    return str(e.value)


def test_values_come_from_parameters_and_presets(tmp_path):
    (tmp_path / "net.arch").write_text(NET)
    g = build_graph(str(tmp_path / "net.arch"))
    assert g.declarations["preprocess"] == declarations.Preprocess(mode="caffe", resize="exact")
    assert archc.load(str(tmp_path / "net.arch"), mode='"none"').graph.declarations["preprocess"].mode == "none"
    assert g.to_json()["declarations"] == {"preprocess": {"mode": "caffe", "resize": "exact", "crop": 224,
                                                          "interpolation": "bilinear", "mean": None,
                                                          "std": None}}


def test_a_network_without_declarations_has_none(tmp_path):
    assert _graph(tmp_path, "input 8x8x3\nconv3(4)\n").declarations == {}


@pytest.mark.parametrize("line,message,col", [
    ('preprocess(mode="caffee")', "'mode' is one of 'torch', 'inception', 'tf', 'caffe', 'none', 'unit', not 'caffee'", 12),
    ('preprocess(resize=2.5)', "'resize' must be an integer, not 2.5", 12),
    ('preprocess(size=3)', "preprocess() has no argument 'size'", 12),
    ('preprocess("tf")', "preprocess() takes keyword arguments only", 12),
    ('preprocess(crop=1, crop=2)', "argument 'crop' given twice", 20),
])
def test_bad_values_are_located(tmp_path, line, message, col):
    err = _error(tmp_path, f"input 8x8x3\nconv3(4)\n{line}\n")
    assert f"net.arch:3:{col}: error: {message}" in err.replace("preprocess(): ", "")


def test_declared_twice_and_inside_a_sequence(tmp_path):
    err = _error(tmp_path, 'input 8x8x3\npreprocess(mode="tf")\npreprocess(mode="tf")\n')
    assert "net.arch:3:1: error: 'preprocess(…)' is declared twice" in err
    err = _error(tmp_path, 'input 8x8x3\nconv3(4) preprocess(mode="tf")\n')
    assert "net.arch:2:10: error: 'preprocess(…)' is a declaration, not a layer" in err


def test_a_file_may_define_the_name_itself(tmp_path):
    g = _graph(tmp_path, "block preprocess(c=4) = conv3(c)\ninput 8x8x3\npreprocess(c=6)\n")
    assert g.declarations == {} and g.output_shape == (8, 8, 6)


@pytest.fixture
def tensor_kind():
    """A declaration kind that names tensors, registered for one test."""
    @declarations.declaration("probe_heads")
    @dataclass(frozen=True)
    class ProbeHeads:
        heads: tuple
        weight: float = 1.0

        @classmethod
        def bind(cls, v, ctx):
            heads = v["heads"] if isinstance(v["heads"], list) else [v["heads"]]
            return cls(tuple(ctx.tensor("heads", h) for h in heads), ctx.number("weight", v["weight"], low=0))

        def tensors(self):
            return self.heads

        def renamed(self, redirect):
            return ProbeHeads(tuple(redirect.get(h, h) for h in self.heads), self.weight)

    yield ProbeHeads
    del declarations.DECLARATIONS["probe_heads"]


def test_tensor_arguments_and_passes_that_rename_nodes(tmp_path, tensor_kind):
    g = _graph(tmp_path, "input 8x8x3\na: conv3(4) bn\nb: relu conv3(2)\nprobe_heads(heads=[@a, @b])\n")
    a = g.aliases["a"]
    assert g.nodes[a].op == "bn" and g.declarations["probe_heads"].heads == (a, g.aliases["b"])
    model = Model(g)
    folded, _ = fold_batchnorm(g, model.init(seed=0))
    heads = folded.declarations["probe_heads"].heads
    assert heads[0] != a and folded.nodes[heads[0]].op == "conv" and heads[1] == g.aliases["b"]


def test_tensor_argument_errors(tmp_path, tensor_kind):
    err = _error(tmp_path, "input 8x8x3\na: conv3(4)\nprobe_heads(heads=[@c])\n")
    assert "unknown tensor '@c'" in err and "net.arch:3:" in err
    err = _error(tmp_path, "input 8x8x3\na: conv3(4)\nprobe_heads(heads=3)\n")
    assert "'heads' must be a tensor such as @features, not 3" in err
    err = _error(tmp_path, "input 8x8x3\na: conv3(4)\nprobe_heads(weight=1)\n")
    assert "net.arch:3:1: error: probe_heads() needs 'heads'" in err


def test_the_language_server_knows_declarations():
    doc = analysis.op_doc("preprocess")
    assert "preprocess(mode='torch', resize=256, crop=224, interpolation='bilinear', mean=None, std=None)" in doc
    a = analysis.analyze('input 8x8x3\nconv3(4)\npreprocess(mode="tf")\n', None)
    assert not a.diagnostics
    names = {n: k for n, k, _ in a.names_in_scope(3)}
    assert names["preprocess"] == "declaration"


def test_a_users_preprocess_goes_through_the_declarations_check():
    """predict's preprocess= (a mode name or a dict) is bound as the declaration is: the same
    defaults, the same checks, a readable error naming the argument."""
    from archc.runtime.predict import PredictError, preprocess_spec
    assert preprocess_spec("caffe") == {"mode": "caffe", "resize": "exact", "crop": 224, "interpolation": "bilinear",
                                        "mean": None, "std": None}
    assert preprocess_spec({"mode": "tf"})["resize"] == 256
    for bad, says in [("foo", "'mode' is one of"), ({"crop": 0}, "'crop' must be at least 1"),
                      ({"mdoe": "tf"}, "no argument 'mdoe'"), ({"interpolation": "lanczos"}, "'interpolation'"),
                      (3, "a mode name")]:
        with pytest.raises(PredictError, match=says):
            preprocess_spec(bad)


def _detection_imports(path) -> list:
    """The imports of archc.detection in a module: import statements (relative ones resolved
    against archc/compiler/…) and module names in strings (importlib.import_module's)."""
    import ast
    import re
    parts = path.parent.parts
    package = list(parts[len(parts) - 1 - parts[::-1].index("archc"):])       # archc, compiler, …
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found += [module] + [f"{module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found += re.findall(r"^archc\.detection\b[\w.]*$", node.value)
    return [m for m in found if m == "archc.detection" or m.startswith("archc.detection.")]


def test_the_compiler_does_not_import_detection():
    """Layering: no module of the compiler imports archc.detection (a runtime package); the
    detection description's kinds register as archc loads (archc/__init__.py), so a detector's
    spec still elaborates with them, importing only the JAX-free declaration modules."""
    import subprocess
    import sys
    compiler = Path(declarations.__file__).parent
    found = {f"{f.relative_to(compiler)}": m for f in sorted(compiler.rglob("*.py")) if (m := _detection_imports(f))}
    assert found == {}, found
    code = ("import sys; from archc.compiler.build import build_graph; g = build_graph('ssd300_vgg16'); "
            "assert g.declarations['detect'].kind == 'ssd'; "
            "print(sorted(m for m in sys.modules if m.startswith('archc.detection')), 'jax' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["['archc.detection',", "'archc.detection.declare',", "'archc.detection.finetune',",
                                "'archc.detection.registry']", "False"], r.stdout
