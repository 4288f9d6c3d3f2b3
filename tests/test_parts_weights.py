"""Classifier weights into a part: a torchvision ResNet-18 checkpoint imported under --prefix
trunk into a user's network with `trunk: resnet18(until=layer4)` and an FPN-like head of its own
gives torchvision's create_feature_extractor outputs for layer2..layer4; the part is strict, the
rest of the network is new; training freezes the trunk by its prefix."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
pytestmark = pytest.mark.usefixtures("highest_precision")

from test_weights_parity import _randomise_torch_bn, limit  # noqa: E402  (the parity suite's reference setup)
from train_helpers import run_cli, write_random  # noqa: E402

SIZE = 64
FPN = f"""input {SIZE}x{SIZE}x3
trunk: resnet18(until=layer4)
lat4:  @trunk.layer4 conv1(32)
lat3:  @trunk.layer3 conv1(32)
top3:  add(@lat3, @lat4 upsample(size=@lat3))
lat2:  @trunk.layer2 conv1(32)
top2:  add(@lat2, @top3 upsample(size=@lat2))
p2:    conv3(32)
head:  @lat4 gap fc(3)
output head, p2
"""


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(torchvision ResNet-18 with random weights and BN statistics, seed 0; its .pth)."""
    tmp = tmp_path_factory.mktemp("r18")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    _randomise_torch_bn(model, 1, SIZE)
    model.eval()
    path = tmp / "resnet18.pth"
    torch.save(model.state_dict(), path)
    return model, path


def test_prefix_import_gives_torchvisions_features(reference, tmp_path):
    from torchvision.models.feature_extraction import create_feature_extractor

    import archc
    from archc.runtime.variables_io import load_variables
    model, ckpt = reference
    spec = tmp_path / "net.arch"
    spec.write_text(FPN)
    out = tmp_path / "w.safetensors"
    r = run_cli(["import", spec, ckpt, "--from", "torchvision", "--prefix", "trunk", "--out", out])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "part trunk (resnet18 until layer4)" in r.stdout
    assert "2 cut off by until= (stage head)" in r.stdout          # fc.weight, fc.bias
    assert "variables outside the part are new" in r.stdout and "params/lat4.conv1/kernel" in r.stdout
    r = run_cli(["import", spec, ckpt, "--prefix", "trnk"])
    assert r.returncode == 2 and "net has no part 'trnk'; did you mean 'trunk'?" in r.stderr
    assert "Traceback" not in r.stderr

    net = archc.load(str(spec))
    variables = load_variables(str(out))
    x = np.random.default_rng(0).standard_normal((2, SIZE, SIZE, 3)).astype(np.float32)
    stages = ["layer2", "layer3", "layer4"]
    got = net.apply(variables, x, outputs=[f"trunk.{s}" for s in stages])
    extractor = create_feature_extractor(model, {s: s for s in stages})
    with torch.no_grad():
        want = extractor(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    diffs = {}
    for s in stages:
        w = want[s].numpy().transpose(0, 2, 3, 1)
        diffs[s] = float(np.abs(np.asarray(got[f"trunk.{s}"]) - w).max())
        assert diffs[s] <= limit(float(np.abs(w).max())), diffs
    print("layer2..4 max |Δ|:", diffs)


def test_the_python_api_and_a_strict_part(reference, tmp_path):
    import archc
    from archc.runtime.weights import WeightsError
    _, ckpt = reference
    net = archc.load(fpn_file(tmp_path))
    variables, report = archc.import_weights(net, str(ckpt), source="torchvision", prefix="trunk")
    assert report.ok and report.part.startswith("trunk") and len(report.loaded) == 100
    assert {v for v, _ in report.new} == {f"params/{n}/{leaf}" for n in ("lat4.conv1", "lat3.conv1", "lat2.conv1", "p2.conv1", "head.fc1")
                                          for leaf in ("kernel", "bias")}
    assert set(variables["params"]) >= {"trunk.stem.conv1", "lat4.conv1"}
    with pytest.raises(WeightsError, match="no part 'trnk'; did you mean 'trunk'"):
        archc.import_weights(net, str(ckpt), source="torchvision", prefix="trnk")
    # strict for the part: a ResNet-34 checkpoint does not fit resnet18's layers
    torch.manual_seed(0)
    other = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), other)
    with pytest.raises(WeightsError) as e:
        archc.import_weights(net, str(other), source="torchvision", prefix="trunk")
    assert any(k.startswith("layer1.2.") for k, _, _ in e.value.report.unexpected)


def fpn_file(tmp_path):
    spec = tmp_path / "net.arch"
    spec.write_text(FPN)
    return str(spec)


def test_train_with_the_imported_trunk_frozen(reference, tmp_path):
    _, ckpt = reference
    spec = fpn_file(tmp_path)
    w = tmp_path / "w.safetensors"
    assert run_cli(["import", spec, ckpt, "--prefix", "trunk", "--out", w]).returncode == 0
    data = write_random(tmp_path / "data", classes=3, per_class=4, size=(SIZE, SIZE), mode="RGB", layout="split")
    run = tmp_path / "run"
    r = run_cli(["train", spec, "--data", data, "--out", run, "--epochs", "1", "--batch", "4",
                 "--weights", w, "--freeze", "trunk.*", "--no-augment", "--quiet"])
    assert r.returncode == 0, r.stdout + r.stderr
    from archc.runtime.variables_io import load_variables
    before, after = load_variables(str(w), as_numpy=True), None
    finals = sorted(run.glob("*.safetensors"))
    assert finals, list(run.iterdir())
    after = load_variables(str(finals[-1]), as_numpy=True)
    np.testing.assert_array_equal(after["params"]["trunk.layer4.1.conv2"]["kernel"],
                                  before["params"]["trunk.layer4.1.conv2"]["kernel"])      # frozen
    assert not np.array_equal(after["params"]["lat4.conv1"]["kernel"], before["params"]["lat4.conv1"]["kernel"])
    json.loads((run / "metrics.json").read_text())


def test_train_from_a_torchvision_checkpoint_into_a_part(reference, tmp_path):
    """`archc train --weights CKPT --from torchvision --prefix trunk`: the trunk starts from the
    same variables as `archc import --prefix trunk` gives (kept by --freeze); bad input is one line."""
    import archc
    from archc.runtime.variables_io import load_variables
    _, ckpt = reference
    spec = fpn_file(tmp_path)
    data = write_random(tmp_path / "data", classes=3, per_class=4, size=(SIZE, SIZE), mode="RGB", layout="split")
    run = tmp_path / "run"
    r = run_cli(["train", spec, "--data", data, "--out", run, "--epochs", "1", "--batch", "4", "--weights", ckpt,
                 "--from", "torchvision", "--prefix", "trunk", "--freeze", "trunk.*", "--no-augment"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "weights: 100 tensors loaded" in r.stdout + r.stderr
    imported, _ = archc.import_weights(archc.load(spec), str(ckpt), source="torchvision", prefix="trunk")
    after = load_variables(str(sorted(run.glob("*.safetensors"))[-1]), as_numpy=True)
    trunk = [(c, n) for c in ("params", "batch_stats") for n in imported[c] if n.startswith("trunk.")]
    assert len(trunk) == 60                             # 20 convs, 20 BNs with their statistics
    for c, n in trunk:
        for leaf, v in imported[c][n].items():
            np.testing.assert_array_equal(after[c][n][leaf], np.asarray(v), err_msg=f"{c}/{n}/{leaf}")
    for args, message in ((["--prefix", "trunk"], "--prefix maps a torchvision, timm or Keras checkpoint into a part"),
                          (["--from", "torchvision", "--prefix", "trnk"], "has no part 'trnk'; did you mean 'trunk'?")):
        r = run_cli(["train", spec, "--data", data, "--out", tmp_path / "bad", "--epochs", "1", "--weights", ckpt, *args])
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_weights_backbone_is_prefix_body(tmp_path):
    """torchvision's weights_backbone: an ImageNet MobileNetV3-Large checkpoint into the FPN
    detector's part `body`, with the classifier's mapping (the same tensors in the same order)."""
    import archc
    torch.manual_seed(0)
    backbone = torchvision.models.mobilenet_v3_large(weights=None)
    path = tmp_path / "mv3.pth"
    torch.save(backbone.state_dict(), path)
    det = archc.load("fasterrcnn_mobilenet_v3_large_320_fpn")
    variables, report = archc.import_weights(det, str(path), source="torchvision", prefix="body")
    assert report.ok and len(report.loaded) == 262
    assert sorted({why for _, why in report.ignored}) == ["cut off by until= (stage classifier)", "num_batches_tracked"]
    assert all(not v.split("/")[1].startswith("body.") for v, _ in report.new) and report.new
    np.testing.assert_array_equal(np.asarray(variables["params"]["body.stem.conv1"]["kernel"]),
                                  backbone.features[0][0].weight.detach().numpy().transpose(2, 3, 1, 0))


def test_ssd_weights_backbone_is_prefix_body(tmp_path):
    """torchvision's ssd300_vgg16(weights_backbone=…) from the CLI: ImageNet VGG-16 classifier
    weights (random here) imported under --prefix body land where torchvision's _vgg_extractor
    puts them: each backbone variable equals the one a torchvision SSD300 whose backbone is
    _vgg_extractor(that vgg16) gives through the whole-model mapping (itself checked end to end
    by tests/test_detection_ssd.py), and conv4_3 / conv5_1 equal the extractor's own layers."""
    import copy

    import archc
    from archc.runtime.variables_io import load_variables
    from torchvision.models.detection import ssd as tv_ssd
    torch.manual_seed(0)
    vgg = torchvision.models.vgg16(weights=None)
    ckpt = tmp_path / "vgg16.pth"
    torch.save(vgg.state_dict(), ckpt)
    out = tmp_path / "w.safetensors"
    r = run_cli(["import", "ssd300_vgg16", ckpt, "--from", "torchvision", "--prefix", "body",
                 "--param", "classes=5", "--out", out])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "part body (vgg16 until features)" in r.stdout and "6 cut off by until= (stage classifier)" in r.stdout
    ours = load_variables(str(out), as_numpy=True)["params"]

    tm = torchvision.models.detection.ssd300_vgg16(weights=None, weights_backbone=None, num_classes=5)
    tm.backbone = tv_ssd._vgg_extractor(copy.deepcopy(vgg), False, 5)      # what weights_backbone builds
    whole = tmp_path / "ssd.pth"
    torch.save(tm.state_dict(), whole)
    placed, report = archc.import_weights(archc.load("ssd300_vgg16", classes=5), str(whole), source="torchvision")
    assert report.ok
    body = sorted(n for n in ours if n.startswith("body."))
    assert len(body) == 13 and body == sorted(n for n in placed["params"] if n.startswith("body."))
    for n in body:
        for leaf in ("kernel", "bias"):
            np.testing.assert_array_equal(ours[n][leaf], np.asarray(placed["params"][n][leaf]), err_msg=n)
    as_hwio = lambda conv: conv.weight.detach().numpy().transpose(2, 3, 1, 0)  # noqa: E731
    np.testing.assert_array_equal(ours["body.features.3.conv3"]["kernel"], as_hwio(tm.backbone.features[-2]))  # conv4_3
    np.testing.assert_array_equal(ours["body.features.4.conv1"]["kernel"], as_hwio(tm.backbone.extra[0][1]))   # conv5_1
    assert not np.array_equal(ours["fc7.conv1"]["kernel"], np.asarray(placed["params"]["fc7.conv1"]["kernel"]))  # new, not VGG's
