"""The language's meaning: the brief's examples, combinators, naming, families, imports."""
import json
import subprocess
import sys

import pytest

from archc.compiler.build import build_graph
from archc.compiler.stats import summarize
from archc.spec.source import ArchError


def shape(text, inp, **params):
    return build_graph(text=text, input_shape=inp, params=params).output_shape


def names(text, inp):
    return [n.name for n in build_graph(text=text, input_shape=inp)]


def test_brief_inception_example():
    g = build_graph(text="inception(64,96>128,16>32,pool>32)", input_shape=(28, 28, 192))
    assert g.output_shape == (28, 28, 256)
    convs = [(n.attrs.kernel, n.attrs.features) for n in g if n.op == "conv"]
    assert convs == [((1, 1), 64), ((1, 1), 96), ((3, 3), 128), ((1, 1), 16), ((5, 5), 32), ((1, 1), 32)]
    pool = next(n for n in g if n.op == "pool")
    assert pool.attrs.kind == "max" and pool.attrs.kernel == (3, 3) and pool.attrs.strides == (1, 1)
    # GoogLeNet's table gives 128M ops for inception (3a); ours counts the same convolutions.
    assert abs(summarize(g)["macs"] - 128e6) / 128e6 < 0.02


def test_brief_residual_example():
    g = build_graph(text="residual<bn relu conv3 x2>", input_shape=(56, 56, 64))
    assert g.output_shape == (56, 56, 64)
    assert [n.op for n in g] == ["input", "bn", "act", "conv", "bn", "act", "conv", "add"]
    add = g.nodes["add1"]
    assert "input" in add.inputs  # identity shortcut


@pytest.mark.parametrize("expr,inp,out", [
    ("inception(64,96>128,16>32,pool>32)", "28x28x192", "28x28x256"),
    ("residual<bn relu conv3 x2>", "56x56x64", "56x56x64"),
])
def test_cli_check_expr(expr, inp, out):
    r = subprocess.run([sys.executable, "-m", "archc", "check", "--expr", expr, "--input", inp],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == out


def test_cli_build_densenet121_json():
    r = subprocess.run([sys.executable, "-m", "archc", "build", "densenet121", "--json", "--no-lower"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert (d["total_params"], d["trainable_params"], d["non_trainable_params"]) == (8_062_504, 7_978_856, 83_648)
    assert d["output_shape"] == [1000]
    assert {"name", "op", "output_shape", "params", "macs"} <= set(d["layers"][1])
    # .arch suffix resolves to the library from any directory
    r2 = subprocess.run([sys.executable, "-m", "archc", "build", "densenet121.arch", "--json", "--no-lower"],
                        capture_output=True, text=True, timeout=120, cwd="/")
    assert json.loads(r2.stdout)["total_params"] == 8_062_504


def test_cli_build_runs_the_lowering_check():
    """The full command: front end, table, the eval_shape check of every node; its output
    arrives whole although the command exits without interpreter teardown."""
    r = subprocess.run([sys.executable, "-m", "archc", "build", "densenet121"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Total params: 8,062,504" in r.stdout
    nodes = len(build_graph("densenet121", None, None).nodes)
    assert f"JAX lowering: {nodes} node shapes verified with jax.eval_shape" in r.stdout.splitlines()[-1]


def test_cli_user_error_exit_2(tmp_path):
    f = tmp_path / "bad.arch"
    f.write_text("input 28x28x3\nconv3(16)\nadd(identity, conv3(8))\n")
    r = subprocess.run([sys.executable, "-m", "archc", "check", str(f)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "bad.arch:3:1: error: cannot add 28x28x16 and 28x28x8" in r.stderr
    assert "Traceback" not in r.stderr


def test_repetition_precedence():
    # ' xN' repeats the whole chain; '*N' one item.
    assert [n.op for n in build_graph(text="bn relu x2", input_shape=(8, 8, 4))][1:] == ["bn", "act", "bn", "act"]
    assert [n.op for n in build_graph(text="bn relu*2", input_shape=(8, 8, 4))][1:] == ["bn", "act", "act"]
    assert shape("conv3(8, s=2)*2 conv1(3)", (32, 32, 3)) == (8, 8, 3)
    # the repetition index i
    g = build_graph(text="conv3(4, s=2 if i == 0 else 1) * 3", input_shape=(16, 16, 3))
    assert [n.attrs.strides for n in g if n.op == "conv"] == [(2, 2), (1, 1), (1, 1)]


def test_residual_projection_inferred():
    g = build_graph(text="residual<conv3(32, s=2) bn relu conv3(32) bn>", input_shape=(16, 16, 8))
    assert g.output_shape == (8, 8, 32)
    proj = g.nodes["shortcut.conv1"]
    assert proj.attrs.strides == (2, 2) and proj.attrs.features == 32 and proj.attrs.bias is False
    assert g.nodes["shortcut.bn1"].shape == (8, 8, 32)
    # an explicit projection (the seed's res_block_v1 uses a plain 1x1 conv with bias)
    g = build_graph(text="residual(proj=conv1)<conv3(32) bn>", input_shape=(8, 8, 8))
    assert g.nodes["shortcut.conv1"].attrs.bias is True and "shortcut.bn1" not in g.nodes


def test_dense_connectivity():
    g = build_graph(text="dense<bn relu conv3(12)> * 4", input_shape=(8, 8, 16))
    assert g.output_shape == (8, 8, 16 + 4 * 12)


def test_refs_branches_outputs_and_crop():
    text = """input 64x64x3
enc: conv3(8) relu
down: maxpool(2) conv3(16, p=0)
branch aux: gap fc(5)
up: deconv(8) concat(@enc, identity, crop=true)
output up, aux
"""
    g = build_graph(text=text)
    assert [g.nodes[o].shape for o in g.outputs] == [(60, 60, 16), (5,)]  # enc 64 cropped to 60
    assert any(n.op == "crop" for n in g)
    assert g.aliases["enc"] == "enc.relu1"


def test_blocks_defaults_arithmetic_and_cin():
    text = """block b(c, e=4 * c, s=1) = conv1(c) conv3(c, s=s) conv1(e)
block half() = conv1(cin // 2)
input 16x16x64
b(8) b(8, s=2) half
"""
    assert build_graph(text=text).output_shape == (8, 8, 16)


def test_families_presets_and_overrides(tmp_path):
    f = tmp_path / "fam.arch"
    f.write_text("""param width = 16
param classes = 10
let w(c) = make_divisible(c * width / 16)
input 32x32x3
conv3(w(16)) gap fc(classes)
preset fam_wide: width=32
""")
    assert build_graph(str(f)).output_shape == (10,)
    assert build_graph(str(f), params={"classes": 7}).output_shape == (7,)
    g = build_graph(str(f), params={"width": 32})
    assert g.nodes["conv1"].shape == (32, 32, 32)
    with pytest.raises(ArchError, match="has no parameter 'clases'"):
        build_graph(str(f), params={"clases": 3})


def test_imports(tmp_path):
    (tmp_path / "lib.arch").write_text("block pair(c) = conv3(c) conv3(c)\nlet k = 3\n")
    (tmp_path / "net.arch").write_text('from "lib.arch" import pair\ninput 8x8x3\npair(4)\n')
    assert build_graph(str(tmp_path / "net.arch")).output_shape == (8, 8, 4)
    (tmp_path / "cyc1.arch").write_text('import "cyc2.arch"\n')
    (tmp_path / "cyc2.arch").write_text('import "cyc1.arch"\n')
    (tmp_path / "top.arch").write_text('import "cyc1.arch"\ninput 8x8x3\nrelu\n')
    with pytest.raises(ArchError, match="import cycle"):
        build_graph(str(tmp_path / "top.arch"))


def test_naming_is_hierarchical_and_deterministic():
    text = """block unit(c, s=1) = residual<conv3(c, s=s) bn relu conv3(c) bn> relu
input 32x32x3
stem: conv3(16) bn relu
layer1: unit(16) * 2
layer2: unit(32, s=2) unit(32)
head: gap fc(10)
"""
    n1 = names(text, None)
    assert n1 == names(text, None)
    for expected in ("stem.conv1", "stem.bn1", "layer1.0.conv1", "layer1.1.bn2", "layer2.0.shortcut.conv1",
                     "layer2.1.add1", "head.fc1"):
        assert expected in n1


def test_padding_modes():
    g = build_graph(text='conv(8, 3, s=2, p="same") conv(8, 3, s=2) maxpool(3, s=2, ceil=true)', input_shape=(224, 224, 3))
    same, auto = g.nodes["conv1"], g.nodes["conv2"]
    assert same.attrs.padding == ((0, 1), (0, 1)) and same.shape == (112, 112, 8)  # TF: extra pixel bottom/right
    assert auto.attrs.padding == ((1, 1), (1, 1)) and auto.shape == (56, 56, 8)
    pool = g.nodes["maxpool1"]
    assert pool.shape == (28, 28, 8)  # ceil((56-3)/2)+1 = 28 (floor would give 27)
    assert shape("conv(4, 1x7)", (17, 17, 8)) == (17, 17, 4)


def test_bias_auto_and_rebinding():
    g = build_graph(text="let conv = conv(bias=false)\nconv3(8) conv1(4) fc(3) bn", input_shape=(8, 8, 3))
    assert [n.attrs.bias for n in g if n.op in ("conv", "dense")] == [False, False, False]
    g = build_graph(text="conv3(8) relu conv3(8) bn", input_shape=(8, 8, 3))
    assert [n.attrs.bias for n in g if n.op == "conv"] == [True, False]


def test_comments_and_line_continuation():
    text = "# a comment\ninput 8x8x3  # trailing\nconcat(conv1(2),\n       conv1(3))\nconv1(4) \\\n  relu\n"
    assert build_graph(text=text).output_shape == (8, 8, 4)


def test_emit_ir_json():
    r = subprocess.run([sys.executable, "-m", "archc", "build", "--emit", "ir", "resnet18"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    ir = json.loads(r.stdout)
    conv = next(n for n in ir["nodes"] if n["name"] == "layer2.0.conv1")
    assert conv["op"] == "conv" and conv["shape"] == [28, 28, 128] and conv["span"]["line"] > 0


def _list_rows(*args) -> dict:
    r = subprocess.run([sys.executable, "-m", "archc", "list", *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    head, *rows = r.stdout.splitlines()
    assert head.split()[:4] == ["architecture", "task", "input", "params"]
    return {line.split()[0]: line.split(None, 4)[1:] for line in rows}


def test_list_command():
    """`archc list`: task, input, parameters (all variables, as `archc build`'s Total params) and
    the checkpoint sources of every built-in."""
    lines = _list_rows()
    assert "densenet121" in lines and "resnet50" in lines
    assert lines["convnext_tiny"][3] == "torchvision, timm" and lines["legacy_senet154"][3] == "timm"
    assert lines["lenet5"] == ["classification", "32x32x1", "61,706", "-"]      # LeCun et al. 1998's count
    assert lines["ssd300_vgg16"][:2] == ["detection", "300x300x3"]
    assert lines["unet"][:2] == ["dense", "572x572x1"]


def test_list_filters_by_name_and_task():
    """`archc list resnet` (a substring), `archc list 'efficientnet_b?'` (a glob) and `--task`."""
    assert all("resnet" in name for name in _list_rows("resnet")) and "resnet50" in _list_rows("resnet")
    assert set(_list_rows("efficientnet_b?")) == {f"efficientnet_b{i}" for i in range(8)}
    detectors = _list_rows("--task", "detection")
    assert {"ssd300_vgg16", "yolo_v1", "fasterrcnn_resnet50_fpn"} <= set(detectors)
    assert all(row[0] == "detection" for row in detectors.values())
    r = subprocess.run([sys.executable, "-m", "archc", "list", "nosuchnet"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no built-in architecture matches 'nosuchnet'" in r.stderr


def test_list_json_sources_are_the_mappings():
    """`archc list --json`'s sources: for each built-in, the sources whose mapping file lists it
    (asked of each source's rules one by one); and every name a mapping lists is a built-in."""
    from archc.compiler import library
    from archc.runtime.weights import SOURCES, builtin_rules, sources_by_model
    r = subprocess.run([sys.executable, "-m", "archc", "list", "--json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    listed = {e["name"]: e["sources"] for e in json.loads(r.stdout)}
    assert sorted(listed) == library.names()
    for name, sources in listed.items():
        assert sources == [s for s in SOURCES if builtin_rules(name, s) is not None], name
    assert set(sources_by_model()) <= set(listed), set(sources_by_model()) - set(listed)


def test_check_does_not_import_jax():
    code = "import sys; from archc.cli import main; main(['check', 'resnet50']); assert 'jax' not in sys.modules"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_activation_parameter_binds_positionally():
    # leaky_relu(0.1) used to bind 0.1 to the activation's name and keep the default slope 0.01
    # (YOLO v1's layers had the wrong slope); alpha is now the first parameter.
    g = build_graph(text="input 4x4x3\nleaky_relu(0.2) elu(0.5) leaky_relu relu", filename="act.arch")
    assert [n.attrs.alpha for n in g if n.op == "act"] == [0.2, 0.5, 0.01, None]
    yolo = build_graph("yolo_v1")
    assert {n.attrs.alpha for n in yolo if n.op == "act" and n.attrs.fn == "leaky_relu"} == {0.1}
    with pytest.raises(ArchError, match="relu takes no argument"):
        build_graph(text="input 4x4x3\nrelu(0.5)", filename="act.arch")


@pytest.mark.parametrize("expr,channels", [
    ("round(log(8) / log(2))", 3),
    ("round(log(1000, 10))", 3),
    ("len(unique([8, 8, 16, 16, 16, 32]))", 3),
    ("unique([32, 8, 32, 16])[2]", 16),
    ("unique([[1, 2], [1, 2], [3]])[1][0]", 3),
    ("count([8, 8, 16, 16, 16, 32], 16)", 3),
    ("count([], 1) + 1", 1),
    ("round(2.5) + round(3.5)", 6),       # halves to even, as torch.round
])
def test_value_functions_log_unique_count(expr, channels):
    assert shape(f"input 4x4x3\nconv1({expr})", None) == (4, 4, channels)


def test_recursive_function_builds_a_list():
    text = """let ramp(j=0) = [] if j == 4 else [8 * (j + 1)] + ramp(j + 1)
input 4x4x3
conv1(sum(ramp()))"""
    assert shape(text, None) == (4, 4, 80)


def test_a_function_returning_layers_numbers_the_stage_blocks():
    text = """block unit(c) = conv1(c) relu
let stage(c, n) = unit(c) * n
input 4x4x3
s1: stage(8, 3)"""
    assert [n for n in names(text, None) if n.startswith("s1.")] == [
        "s1.0.conv1", "s1.0.relu1", "s1.1.conv1", "s1.1.relu1", "s1.2.conv1", "s1.2.relu1"]
