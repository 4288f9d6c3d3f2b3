"""Networks used as parts of another: `trunk: resnet18(until=layer4)`, `"file.arch"(…)`: the IR
names and shapes, @label.stage, the preprocess a part brings, and the errors at the user's line."""
import subprocess
import sys

import pytest

from archc.compiler.build import build_graph
from archc.spec.fmt import format_source
from archc.spec.source import ArchError

FPN = """input 128x128x3
trunk: resnet18(until=layer4)
lat4:  @trunk.layer4 conv1(64)
lat3:  @trunk.layer3 conv1(64)
top3:  add(@lat3, @lat4 upsample(size=@lat3))
lat2:  @trunk.layer2 conv1(64)
top2:  add(@lat2, @top3 upsample(size=@lat2))
out:   conv3(64)
output out, top3, lat4
"""


def errors(text, file="net.arch"):
    with pytest.raises(ArchError) as e:
        build_graph(text=text, filename=file)
    return e.value


def test_a_trunk_is_the_network_under_its_label():
    g = build_graph(text=FPN, filename="net.arch")
    whole = build_graph("resnet18", input_shape=(128, 128, 3))
    trunk = [n for n in g.nodes if n.startswith("trunk.")]
    kept = [n for n in whole.nodes if n != "input" and not n.startswith("head.")]
    assert trunk == ["trunk." + n for n in kept]                    # same nodes, same order, prefixed
    for n in kept:
        assert (g["trunk." + n].op, g["trunk." + n].shape) == (whole[n].op, whole[n].shape)
    assert g["trunk.stem.conv1"].inputs == ("input",)
    assert g.aliases["trunk.layer2"] == "trunk.layer2.1.relu2" and g["trunk.layer2.1.relu2"].shape == (16, 16, 128)
    assert g["lat2.conv1"].inputs == ("trunk.layer2.1.relu2",)
    assert g.aliases["trunk"] == "trunk.layer4.1.relu2" and g["lat4.conv1"].shape == (4, 4, 64)
    assert g.declarations["preprocess"] == whole.declarations["preprocess"]
    assert g.parts["trunk"].network == "resnet18" and g.parts["trunk"].dropped == ("head",)


def test_without_until_the_whole_network_with_family_parameters():
    g = build_graph(text="input 96x96x3\nnet: resnet18(classes=10) softmax\n", filename="net.arch")
    assert g["net.head.fc1"].shape == (10,) and g.output_shape == (10,)
    assert g.parts["net"].until is None


def test_a_part_takes_any_size_and_any_input_tensor():
    g = build_graph(text="input 64x80x3\nstem: conv3(3)\nb: mobilenet_v2(until=features)\n", filename="net.arch")
    assert g["stem.conv1"].shape == (64, 80, 3)
    first = next(n for n in g if n.name.startswith("b."))
    assert first.inputs == ("stem.conv1",)


def test_a_file_as_a_part(tmp_path):
    (tmp_path / "small.arch").write_text("param w = 8\ninput 32x32x3\nfeat: conv3(w) relu\nhead: gap fc(3)\n"
                                         'preprocess(mode="tf")\n')
    user = tmp_path / "net.arch"
    user.write_text('input 40x40x3\na: "small.arch"(w=4, until=feat)\nb: @input "small.arch"\n'
                    'preprocess(mode="torch")\n')
    g = build_graph(str(user))
    assert g["a.feat.conv1"].shape == (40, 40, 4) and g["b.head.fc1"].shape == (3,)
    assert g.declarations["preprocess"].mode == "torch"          # the user's own wins over the parts'


def test_the_files_own_names_win_over_networks():
    g = build_graph(text="block resnet18 = conv3(5)\ninput 16x16x3\nresnet18\n", filename="net.arch")
    assert g.output_shape == (16, 16, 5) and not g.parts


def test_until_names_the_stages_it_has():
    e = errors("input 64x64x3\ntrunk: resnet18(until=layer9)\n")
    d = e.diagnostics[0]
    assert (d.span.file, d.span.line, d.span.col) == ("net.arch", 2, 23)
    assert "no stage 'layer9'" in d.message and "stem, layer1, layer2, layer3, layer4, head" in d.hint


def test_a_misspelt_parameter_is_at_the_users_argument():
    d = errors("input 64x64x3\ntrunk: resnet18(until=layer2, clases=3)\n").diagnostics[0]
    assert (d.span.line, d.span.col) == (2, 31) and "no parameter 'clases'" in d.message and "classes" in d.hint


def test_channels_the_network_was_not_made_for():
    d = errors("input 64x64x1\ntrunk: resnet18(until=layer2)\n").diagnostics[0]
    assert d.span.file == "net.arch" and d.span.line == 2
    assert "takes 3 channels" in d.message and "64x64x1" in d.message


def test_a_bad_value_inside_the_library_is_reported_at_the_call():
    d = errors('input 64x64x3\ntrunk: resnet18(until=layer2, classes="x")\n').diagnostics[0]
    assert d.span.file == "net.arch" and d.span.line == 2 and "expected a number" in d.message


def test_an_unknown_stage_reference_and_a_missing_file():
    d = errors("input 64x64x3\nt: resnet18(until=layer2)\nh: @t.layer3 conv1(8)\n").diagnostics[0]
    assert d.span.line == 3 and "@t.layer3" in d.message or "'t.layer3'" in d.message
    d = errors('input 64x64x3\nt: "nowhere.arch"\n').diagnostics[0]
    assert d.span.line == 2 and "nowhere.arch" in d.message


def test_positional_arguments_are_refused():
    d = errors("input 64x64x3\nt: resnet18(3)\n").diagnostics[0]
    assert d.span.line == 2 and "keyword arguments only" in d.message


def test_fmt_keeps_parts_and_dotted_references():
    text = 'input 64x64x3\nt: "x.arch"(until=a) @t.layer2 conv1(4)\n'
    assert format_source(text) == text


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "archc", *map(str, args)], capture_output=True, text=True)


def test_from_the_cli(tmp_path):
    f = tmp_path / "net.arch"
    f.write_text(FPN)
    r = run_cli("check", str(f))
    assert r.returncode == 0, r.stderr
    f.write_text("input 64x64x3\ntrunk: resnet18(until=layer9)\n")
    r = run_cli("check", str(f))
    assert r.returncode == 2 and "net.arch:2:23: error: network 'resnet18' has no stage 'layer9'" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_stages_numbered_units_are_tensors_of_the_caller():
    g = build_graph(text="input 64x64x3\nbody: mobilenet_v3_large(until=blocks, bn_eps=1e-5)\n"
                         "mid: @body.blocks.12 conv1(8)\n", filename="net.arch")
    assert g["mid.conv1"].inputs == ("body.blocks.12.bn3",) and g["body.blocks.12.bn3"].shape[-1] == 160
    assert g["body.stem.bn1"].attrs.eps == 1e-5


def test_any_node_of_a_part_is_a_tensor_of_the_caller():
    """As torchvision's create_feature_extractor takes any node: SSDlite reads MobileNetV3's C4
    inside a block, after its expansion; only a part's nodes, and an unknown one is an error."""
    text = ("input 64x64x3\nbody: mobilenet_v3_large(until=lastconv)\n"
            "c4: @body.blocks.12.hard_swish1 conv1(8)\n")
    g = build_graph(text=text, filename="net.arch")
    assert g["c4.conv1"].inputs == ("body.blocks.12.hard_swish1",)
    assert g["body.blocks.12.hard_swish1"].shape == (4, 4, 672)       # stride 16, before the dwconv
    e = errors(text.replace("hard_swish1", "hard_swish9"))
    assert "net.arch:3:5: error: unknown tensor '@body.blocks.12.hard_swish9'" in str(e)
    e = errors("input 64x64x3\nx: conv3(8) relu\ny: @x.relu1 conv1(8)\n")   # not a part: stages only
    assert "unknown tensor '@x.relu1'" in str(e)
    g = build_graph("ssdlite320_mobilenet_v3_large")
    assert g.parts["body"].network == "mobilenet_v3_large" and g.aliases["c4"] == "body.blocks.12.hard_swish1"


def test_the_detectors_backbones_are_parts():
    g = build_graph("fasterrcnn_resnet50_fpn", {"bn_eps": 0}, input_shape=(256, 256, 3))
    assert g.parts["body"].network == "resnet50" and g.parts["body"].dropped == ("head",)
    assert g["inner0.conv1"].inputs == (g.aliases["body.layer1"],) and g["body.layer3.5.bn3"].attrs.eps == 0
    assert "preprocess" not in g.declarations          # a detector's input pipeline is its own
    g = build_graph("fasterrcnn_mobilenet_v3_large_320_fpn")
    assert g.parts["body"].network == "mobilenet_v3_large" and g["inner0.conv1"].inputs == ("body.blocks.12.bn3",)


def test_a_part_outside_a_stage_is_named_after_its_network():
    g = build_graph(text="input 64x64x3\nresnet18(until=layer1) conv1(4)\n", filename="net.arch")
    assert "resnet18_1.layer1.1.relu2" in g.nodes and g.parts["resnet18_1"].until == "layer1"
