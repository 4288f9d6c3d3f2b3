"""Checkpoint import: reading without running code, strict verification, user rules, the CLI."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

os.environ["KERAS_BACKEND"] = os.environ.get("ARCHC_TEST_KERAS_BACKEND", "jax")

import numpy as np
import pytest

pytest.importorskip("jax")

import archc  # noqa: E402
from archc.runtime.checkpoint import CheckpointError, read_checkpoint, read_torch_zip  # noqa: E402
from archc.runtime.weights import WeightsError, compile_pattern, fill_template, match_weights  # noqa: E402

pytestmark = pytest.mark.usefixtures("highest_precision")

ROOT = Path(__file__).resolve().parent.parent
ARCHC = [sys.executable, "-m", "archc"]


def run_cli(*args, cwd=None):
    return subprocess.run(ARCHC + [str(a) for a in args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


# --------------------------------------------------------------------------------------------
# pickles that would run code are refused, and nothing runs
# --------------------------------------------------------------------------------------------
class Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_torch_zip(path: Path, marker: Path):
    """A file in torch.save's zip layout whose data.pkl calls os.system when unpickled."""
    payload = pickle.dumps(OrderedDict(w=Evil(marker)), protocol=2)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")


def test_malicious_zip_refused_by_own_reader(tmp_path):
    marker, ckpt = tmp_path / "pwned", tmp_path / "evil.pth"
    _evil_torch_zip(ckpt, marker)
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(ckpt, use_torch=False)
    assert "refused" in str(e.value) and "system" in str(e.value)
    assert not marker.exists()


def test_malicious_pickle_refused_with_torch(tmp_path):
    torch = pytest.importorskip("torch")
    marker, ckpt, bare = tmp_path / "pwned", tmp_path / "evil.pth", tmp_path / "evil.pkl"
    torch.save({"w": Evil(marker)}, ckpt)
    bare.write_bytes(pickle.dumps({"w": Evil(marker)}))
    for path in (ckpt, bare):
        with pytest.raises(CheckpointError) as e:
            read_checkpoint(path)
        assert "refused" in str(e.value) or "legacy" in str(e.value)
    with pytest.raises(CheckpointError):
        read_checkpoint(ckpt, use_torch=False)
    with pytest.raises(CheckpointError):
        read_checkpoint(bare, use_torch=False)
    assert not marker.exists()


def test_malicious_checkpoint_cli(tmp_path):
    marker, ckpt = tmp_path / "pwned", tmp_path / "evil.pth"
    _evil_torch_zip(ckpt, marker)
    r = run_cli("import", "resnet18", ckpt, "--from", "torchvision")
    assert r.returncode == 2
    assert "refused" in r.stderr and "Traceback" not in r.stderr + r.stdout
    assert not marker.exists()


def test_own_torch_reader_matches_torch(tmp_path):
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(0)
    sd = OrderedDict(a=torch.randn(3, 4, generator=g), t=torch.randn(4, 2, generator=g).t(),
                     h=torch.randn(5, generator=g).half(), b=torch.randn(3, generator=g).bfloat16(),
                     n=torch.tensor(7), i=torch.arange(6).reshape(2, 3)[:, 1:],
                     p=torch.nn.Parameter(torch.ones(2)))
    sd["view"] = sd["a"][1]                                  # shares a storage, with an offset
    path = tmp_path / "sd.pth"
    torch.save({"state_dict": sd, "epoch": 3}, path)
    own = read_checkpoint(path, use_torch=False).tensors
    ref = read_checkpoint(path, use_torch=True).tensors
    assert list(own) == list(ref) == list(sd)
    for k in sd:
        np.testing.assert_array_equal(own[k], ref[k])
        assert own[k].shape == tuple(sd[k].shape)
    assert isinstance(read_torch_zip(path), dict)


def test_unreadable_inputs(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(CheckpointError, match="unrecognised"):
        read_checkpoint(junk)
    with pytest.raises(CheckpointError, match="no such file"):
        read_checkpoint(tmp_path / "absent.pth")
    r = run_cli("import", "resnet18", junk, "--from", "torchvision")
    assert r.returncode == 2 and "unrecognised" in r.stderr and "Traceback" not in r.stderr
    bad_rules = tmp_path / "bad.toml"
    bad_rules.write_text("[rename\n")
    np.savez(tmp_path / "w.npz", x=np.zeros(3, np.float32))
    r = run_cli("import", "resnet18", tmp_path / "w.npz", "--map", bad_rules)
    assert r.returncode == 2 and "invalid TOML" in r.stderr and "Traceback" not in r.stderr


# --------------------------------------------------------------------------------------------
# strict verification
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def resnet34_pth(tmp_path_factory):
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("r34") / "resnet34.pth"
    torch.save(tv.models.resnet34(weights=None).state_dict(), path)
    return path


def test_mismatched_checkpoint_reports_and_loads_nothing(resnet34_pth):
    model = archc.load("resnet50")
    with pytest.raises(WeightsError) as e:
        archc.import_weights(model, resnet34_pth, source="torchvision")
    rep = e.value.report
    assert not rep.ok and rep.mismatched and rep.missing
    key, src, conv, var, want = rep.mismatched[0]
    assert key == "layer1.0.conv1.weight" and src == (64, 64, 3, 3) and conv == (3, 3, 64, 64)
    assert var == "params/layer1.0.conv1/kernel" and want == (1, 1, 64, 64)
    text = str(e.value)
    assert "nothing was loaded" in text
    assert "layer1.0.conv1.weight (64, 64, 3, 3)" in text and "needs (1, 1, 64, 64)" in text
    assert any(v.endswith("layer1.0.conv3/kernel") for v, _, _ in rep.missing)


def test_mismatch_cli(resnet34_pth, tmp_path):
    out = tmp_path / "r50.safetensors"
    r = run_cli("import", "resnet50", resnet34_pth, "--from", "torchvision", "--out", out)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "layer1.0.conv1.weight (64, 64, 3, 3)" in r.stdout and "(1, 1, 64, 64)" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr and not out.exists()


def test_new_head_skip_and_allow_missing(resnet34_pth):
    model = archc.load("resnet34", classes=10, input_shape=(32, 32, 3))
    report, _, _ = match_weights(model, resnet34_pth, source="torchvision")
    assert not report.ok and any(m[0] == "fc.weight" for m in report.mismatched)
    variables, report = archc.import_weights(model, resnet34_pth, source="torchvision",
                                             skip=["fc.*"], allow_missing=["head.*"])
    assert report.ok and {v for v, _ in report.allowed_missing} == {"params/head.fc1/kernel", "params/head.fc1/bias"}
    assert variables["params"]["head.fc1"]["kernel"].shape == (512, 10)
    assert "kept from init" in report.render()


def test_patterns():
    rx = compile_pattern("layer{a}.{b}.downsample.0")
    m = rx.match("layer3.12.downsample.0")
    assert m and fill_template("layer{a}.{b}.shortcut.conv1", m.groupdict()) == "layer3.12.shortcut.conv1"
    assert not rx.match("layer3.12.downsample.01x")
    m = compile_pattern("conv{s}_block{b}_{k}_bn").match("conv4_block23_1_bn")
    assert fill_template("denseblock{s-1}.{b-1}.bn{k+1}", m.groupdict()) == "denseblock3.22.bn2"
    m = compile_pattern("Mixed_7{x:w}.branch3x3_2a.{t:w}").match("Mixed_7c.branch3x3_2a.bn")
    assert fill_template("Mixed_7{x}.branch2.branch1.cbr1.{t}1", m.groupdict()) == "Mixed_7c.branch2.branch1.cbr1.bn1"
    assert compile_pattern("features.*").match("features.10") and not compile_pattern("features.*").match("features.1.0")
    assert compile_pattern("features.**").match("features.1.conv.0.0")
    m = compile_pattern("{c:p}.conv_1x1.bn").match("cells_1.0.conv_1x1.bn")
    assert fill_template("{c}.h.bn1", m.groupdict()) == "cells_1.0.h.bn1"


def test_prefix_rules(tmp_path):
    """[prefix] rewrites whole leading components (cell_1, not the cell_1 of cell_10), then
    [rename] sees the rewritten name; a prefix that leads to no node is reported as such."""
    spec = tmp_path / "cells.arch"
    spec.write_text("input 8x8x3\na: conv3(4) bn\nb: conv3(4) bn\n")
    model = archc.load(str(spec))
    rng = np.random.default_rng(0)
    ckpt = {"cell_0.conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
            "cell_1.conv.weight": rng.standard_normal((4, 4, 3, 3)).astype(np.float32)}
    for cell in ("cell_0", "cell_1"):
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            ckpt[f"{cell}.norm.{leaf}"] = rng.uniform(0.5, 1.5, 4).astype(np.float32)
    rules = {"prefix": {"cell_0": "a", "cell_1": "b"},
             "rename": {"{s:p}.conv": "{s}.conv1", "{s:p}.norm": "{s}.bn1"}}
    variables, report = archc.import_weights(model, ckpt, rules=rules)
    assert report.ok, report.render()
    np.testing.assert_array_equal(variables["params"]["b.conv1"]["kernel"],
                                  ckpt["cell_1.conv.weight"].transpose(2, 3, 1, 0))
    extra = {**ckpt, "cell_10.conv.weight": ckpt["cell_1.conv.weight"]}
    report, _, _ = match_weights(model, extra, rules=rules)
    assert not report.ok and [k for k, *_ in report.unexpected] == ["cell_10.conv.weight"]
    wrong = {"prefix": {"cell_{i}": "c{i}"}, "rename": {}}
    report, _, _ = match_weights(model, ckpt, rules=wrong)
    assert "c1.conv" in report.render()       # "(a rule maps it to 'c1.conv', which the model does not have)"


# --------------------------------------------------------------------------------------------
# user rules for another codebase: the worked example of docs/weights.md
# --------------------------------------------------------------------------------------------
TORCH_SPEC = """\
input 16x16x3
stem: conv3(8) bn relu
down: dwconv3(s=2) bn relu
mid:  conv3(12, g=4) relu
up:   deconv(6, k=2)
head: flatten(order="nchw") fc(5)
"""
TORCH_RULES = """\
# rules for my_net.py's state dict
layout = "torch"

[rename]
"stem.0" = "stem.conv1"
"stem.1" = "stem.bn1"
"dw" = "down.dwconv1"
"dw_bn" = "down.bn1"
"grouped" = "mid.conv1"
"up" = "up.deconv1"
"classifier" = "head.fc1"
"""


def _torch_net():
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
            self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False)
            self.dw_bn = nn.BatchNorm2d(8)
            self.grouped = nn.Conv2d(8, 12, 3, padding=1, groups=4)
            self.up = nn.ConvTranspose2d(12, 6, 2, stride=2)
            self.classifier = nn.Linear(6 * 16 * 16, 5)

        def forward(self, x):
            x = torch.relu(self.dw_bn(self.dw(self.stem(x))))
            x = self.up(torch.relu(self.grouped(x)))
            return self.classifier(torch.flatten(x, 1))

    torch.manual_seed(0)
    net = Net()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in (net.stem[1], net.dw_bn):
            m.running_mean.copy_(torch.randn(8, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(8, generator=g) + 0.5)
            m.weight.copy_(torch.rand(8, generator=g) + 0.5)
            m.bias.copy_(torch.randn(8, generator=g) * 0.3)
    return net.eval()


def test_user_rules_torch(tmp_path):
    torch = pytest.importorskip("torch")
    net = _torch_net()
    spec, rules, ckpt = tmp_path / "my_net.arch", tmp_path / "my_net.toml", tmp_path / "my_net.pth"
    spec.write_text(TORCH_SPEC)
    rules.write_text(TORCH_RULES)
    torch.save(net.state_dict(), ckpt)
    model = archc.load(str(spec))
    x = np.random.default_rng(0).standard_normal((2, 16, 16, 3)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    for source in (ckpt, {k: v.numpy() for k, v in net.state_dict().items()}):     # file and dict
        variables, report = archc.import_weights(model, source, rules=rules)
        assert report.ok and len(report.ignored) == 2              # the num_batches_tracked
        np.testing.assert_allclose(np.asarray(model.apply(variables, x)), want, atol=1e-5, rtol=0)
    # the same through the CLI, and predict-style metadata-free use of the written file
    out = tmp_path / "my_net.safetensors"
    r = run_cli("import", spec, ckpt, "--map", rules, "--out", out)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("ok:") and out.exists()
    loaded = archc.load_variables(out)
    np.testing.assert_allclose(np.asarray(model.apply(loaded, x)), want, atol=1e-5, rtol=0)


KERAS_SPEC = """\
let bn = bn(eps=1e-3)
input 16x16x3
a: conv3(8, p="same") bn(scale=false) relu
b: dwconv3(s=2, p="same", m=2) bn
c: sepconv(10, p="same", bias=true)
head: gap fc(4)
"""
KERAS_RULES = {
    "layout": "keras",
    "rename": {"c1": "a.conv1", "c1_bn": "a.bn1", "dw": "b.dwconv1", "dw_bn": "b.bn1",
               "sep.depthwise": "c.dwconv1", "sep.pointwise": "c.conv1", "fc": "head.fc1"},
}


def test_user_rules_keras_both_h5_layouts(tmp_path):
    keras = pytest.importorskip("keras")
    pytest.importorskip("h5py")
    L = keras.layers
    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3))
    x = L.ReLU()(L.BatchNormalization(scale=False, name="c1_bn")(L.Conv2D(8, 3, padding="same", use_bias=False, name="c1")(inp)))
    x = L.BatchNormalization(name="dw_bn")(L.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2,
                                                             use_bias=False, name="dw")(x))
    x = L.SeparableConv2D(10, 3, padding="same", name="sep")(x)
    out = L.Dense(4, name="fc")(L.GlobalAveragePooling2D()(x))
    net = keras.Model(inp, out)
    rng = np.random.default_rng(3)
    for layer in net.layers:
        if isinstance(layer, L.BatchNormalization):
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32") if "variance" in w.path
                               else rng.normal(0, 0.3, w.shape).astype("float32") for w in layer.weights])
    spec = tmp_path / "k.arch"
    spec.write_text(KERAS_SPEC)
    model = archc.load(str(spec))
    x = rng.standard_normal((2, 16, 16, 3)).astype(np.float32)
    want = np.asarray(keras.ops.convert_to_numpy(net(x, training=False)))
    net.save_weights(str(tmp_path / "k.weights.h5"))
    net.save(str(tmp_path / "k.h5"))
    for f, fmt in (("k.weights.h5", "keras"), ("k.h5", "keras-legacy")):
        assert read_checkpoint(tmp_path / f).format == fmt
        variables, report = archc.import_weights(model, tmp_path / f, rules=KERAS_RULES)
        assert report.ok, report.render()
        np.testing.assert_allclose(np.asarray(model.apply(variables, x)), want, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------
# import + predict through the CLI; preprocessing as torchvision's
# --------------------------------------------------------------------------------------------
def test_torchvision_preprocessing_matches():
    tv = pytest.importorskip("torchvision")
    from PIL import Image
    from archc.runtime.predict import preprocess_image, preprocess_spec
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    T = tv.transforms
    want = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                      T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])(img).numpy().transpose(1, 2, 0)
    got = preprocess_image(img, (224, 224), preprocess_spec({"mode": "torch", "resize": 256, "crop": 224}))
    np.testing.assert_allclose(got, want, atol=1e-5)
    caffe = preprocess_image(img, (224, 224), preprocess_spec("caffe"))
    raw = np.asarray(img.resize((224, 224), Image.BILINEAR), np.float32)
    np.testing.assert_allclose(caffe[..., 0], raw[..., 2] - 103.939, atol=1e-4)


@pytest.mark.isa
def test_import_then_predict_cli(tmp_path):
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    from PIL import Image
    torch.manual_seed(0)
    net = tv.models.squeezenet1_1(weights=None).eval()
    ckpt, out = tmp_path / "sq.pth", tmp_path / "sq.safetensors"
    torch.save(net.state_dict(), ckpt)
    r = run_cli("import", "squeezenet1_1", ckpt, "--from", "torchvision", "--out", out)
    assert r.returncode == 0 and "ok:" in r.stdout, r.stdout + r.stderr
    rng = np.random.default_rng(0)
    imgs = []
    for i, ext in enumerate(("png", "jpg")):
        p = tmp_path / f"img{i}.{ext}"
        Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(p)
        imgs.append(p)
    r = run_cli("predict", "squeezenet1_1", "--weights", out, *imgs, "--top", "3", "--json")
    assert r.returncode == 0, r.stderr
    import json
    from archc.runtime.predict import imagenet_classes
    res = json.loads(r.stdout)
    assert [x["file"] for x in res] == [str(p) for p in imgs] and all(len(x["top"]) == 3 for x in res)
    classes = imagenet_classes()
    assert res[0]["top"][0]["label"] == classes[res[0]["top"][0]["index"]]
    # same numbers as torchvision on torchvision's preprocessing
    T = tv.transforms
    prep = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                      T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    with torch.no_grad():
        p = torch.softmax(net(prep(Image.open(imgs[0]).convert("RGB"))[None]), -1)[0].numpy()
    # tie-aware: the class archc ranks first has torchvision's top probability (random weights
    # may put two classes within float32 noise of each other, ordered either way by each CPU)
    top = res[0]["top"]
    np.testing.assert_allclose([p[t["index"]] for t in top], [t["prob"] for t in top], rtol=0, atol=1e-4)
    np.testing.assert_allclose([p[t["index"]] for t in top], np.sort(p)[::-1][:3], rtol=1e-4, atol=0)
    # plain-text output, and bad inputs: readable errors, status 2
    r = run_cli("predict", "squeezenet1_1", "--weights", out, imgs[0])
    assert r.returncode == 0 and classes[res[0]["top"][0]["index"]] in r.stdout
    notimg = tmp_path / "notes.png"
    notimg.write_text("hello")
    for args in (("squeezenet1_1", "--weights", out, notimg),
                 ("squeezenet1_1", "--weights", out, tmp_path / "absent.png"),
                 ("resnet18", "--weights", out, imgs[0]),
                 ("squeezenet1_1", "--weights", tmp_path / "absent.safetensors", imgs[0])):
        r = run_cli("predict", *args)
        assert r.returncode == 2 and r.stderr.startswith("error:") and "Traceback" not in r.stderr, r.stderr


@pytest.mark.isa
def test_keras_import_then_predict_cli(tmp_path):
    """A Keras EfficientNet keeps Normalization's sample count, a 0-d variable: it must come back
    0-d from the file `archc import --out` writes, or `archc predict` refuses the weights."""
    keras = pytest.importorskip("keras")
    pytest.importorskip("h5py")
    from PIL import Image
    keras.utils.set_random_seed(0)
    net = keras.applications.EfficientNetB0(weights=None, input_shape=(64, 64, 3))
    ckpt, out, img = tmp_path / "b0.weights.h5", tmp_path / "b0.safetensors", tmp_path / "img.png"
    net.save_weights(str(ckpt))
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(img)
    size = ("--input", "64x64x3")
    r = run_cli("import", "keras/efficientnet_b0", ckpt, "--from", "keras", *size, "--out", out)
    assert r.returncode == 0 and "ok:" in r.stdout, r.stdout + r.stderr
    r = run_cli("predict", "keras/efficientnet_b0", *size, "--weights", out, img, "--top", "3", "--json")
    assert r.returncode == 0, r.stderr
    import json
    top = json.loads(r.stdout)[0]["top"]
    # the image is already 64x64 and Keras's EfficientNet rescales inside the model: no preprocessing
    want = np.asarray(keras.ops.convert_to_numpy(net(pixels[None].astype(np.float32), training=False)))[0]
    # tie-aware: archc's top 3 are Keras's three largest (in value: a near-tie within float32
    # noise may be ordered either way by each CPU's kernels), each with Keras's probability
    np.testing.assert_allclose(want[[t["index"] for t in top]], np.sort(want)[::-1][:3], rtol=1e-5)
    np.testing.assert_allclose([t["prob"] for t in top], want[[t["index"] for t in top]], rtol=1e-4)


def test_import_infers_a_classifiers_class_count(tmp_path):
    """A 10-class torchvision ResNet-18 into resnet18 (1000 by default): fc's out features are
    the class count, taken when the user sets none, named when the user set another."""
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    ckpt = tmp_path / "r10.pth"
    torch.manual_seed(0)
    torch.save(tv.models.resnet18(weights=None, num_classes=10).state_dict(), ckpt)
    r = run_cli("import", "resnet18", ckpt, "--from", "torchvision", "--out", tmp_path / "r10.safetensors")
    assert r.returncode == 0, r.stderr
    assert "note: classes=10: inferred from the checkpoint (fc.weight is 10x512)" in r.stdout
    assert (tmp_path / "r10.safetensors").exists()
    r = run_cli("import", "resnet18", ckpt, "--from", "torchvision", "--param", "classes=7")
    assert r.returncode == 2 and "hint: the checkpoint has 10 classes: --param classes=10" in r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
