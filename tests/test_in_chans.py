"""Other channel counts: every built-in classifier takes `in_chans`; a 3-channel checkpoint
imported into in_chans=1 or 4 has its first convolution adapted as timm's adapt_input_conv does
(summed for 1; repeated and scaled by 3/C for more), and the report says so. References: timm's
in_chans model given the checkpoint through adapt_input_conv; a Keras model of the other channel
count given the same adapted kernel."""
from __future__ import annotations

import json

import numpy as np
import pytest

from archc.compiler import library
from archc.compiler.build import build_graph

pytestmark = pytest.mark.usefixtures("highest_precision")

SIZE = 64
DETECTORS = ("fasterrcnn_", "ssd", "yolo_v1", "rpn", "unet")


def classifiers() -> list:
    return sorted({path.name for name, (path, _) in library.index().items()
                   if not path.name.startswith(DETECTORS)})


@pytest.mark.parametrize("file", classifiers())
def test_every_classifier_takes_in_chans(file):
    name = next(n for n, (p, _) in sorted(library.index().items()) if p.name == file)
    g = build_graph(name, {"in_chans": 4})
    assert g.input_shape[-1] == 4 and g.params["in_chans"] == 4


@pytest.fixture(scope="module")
def torch_checkpoint(tmp_path_factory):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    from test_weights_parity import _randomise_torch_bn
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    _randomise_torch_bn(model, 1, SIZE)
    path = tmp_path_factory.mktemp("r18") / "resnet18.pth"
    torch.save(model.state_dict(), path)
    return model.state_dict(), path


@pytest.mark.parametrize("cin", [1, 4])
def test_adapted_like_timm(torch_checkpoint, cin):
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    from timm.models import adapt_input_conv

    import archc
    from test_weights_parity import limit
    state, path = torch_checkpoint
    ref = timm.create_model("resnet18", pretrained=False, in_chans=cin)
    adapted = dict(state)
    adapted["conv1.weight"] = adapt_input_conv(cin, state["conv1.weight"].clone())
    ref.load_state_dict(adapted)
    ref.eval()

    net = archc.load("resnet18", in_chans=cin, input_shape=(SIZE, SIZE, cin))
    variables, report = archc.import_weights(net, str(path), source="torchvision")
    assert [(k, v) for k, _, v, _, _ in report.adapted] == [("conv1.weight", "params/stem.conv1/kernel")]
    assert ("summed over its 3" if cin == 1 else f"scaled by 3/{cin}") in report.render()
    x = np.random.default_rng(0).standard_normal((2, SIZE, SIZE, cin)).astype(np.float32)
    got = np.asarray(net.apply(variables, x))
    with torch.no_grad():
        want = ref(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    delta = float(np.abs(got - want).max())
    assert delta <= limit(float(np.abs(want).max())), delta
    print(f"in_chans={cin}: max |Δ| {delta:.2e}")


def test_the_cli_says_so(torch_checkpoint, tmp_path):
    from train_helpers import run_cli
    _, path = torch_checkpoint
    r = run_cli(["import", "resnet18", path, "--param", "in_chans=4", "--input", f"{SIZE}x{SIZE}x4", "--json"])
    assert r.returncode == 0, r.stdout + r.stderr
    adapted = json.loads(r.stdout)["adapted"]
    assert adapted[0]["key"] == "conv1.weight" and adapted[0]["shape"] == [64, 3, 7, 7]
    assert adapted[0]["expected"] == [7, 7, 4, 64] and "repeated to 4" in adapted[0]["how"]
    # any other misfit of the first convolution stays an error
    r = run_cli(["import", "resnet18", path, "--input", f"{SIZE}x{SIZE}x3", "--param", "in_chans=3",
                 "--param", "layers=[2,2,2,3]"])
    assert r.returncode == 2 and "Traceback" not in r.stderr


@pytest.mark.slow     # ~65 s on 2 busy cores (Keras builds MobileNet twice)
def test_keras_source_adapted_the_same_way(tmp_path):
    keras = pytest.importorskip("keras")
    import archc
    from archc.runtime.logits import logits_node
    from test_weights_parity import CASES, _keras_logits, build_keras_reference, limit
    case = next(c for c in CASES if c.id == "keras-mobilenet")
    ref3, path = build_keras_reference(case, tmp_path)
    keras.utils.set_random_seed(0)
    ref1 = keras.applications.MobileNet(weights=None, input_shape=(case.size, case.size, 1))
    for l3, l1 in zip(ref3.layers, ref1.layers):
        w = [np.asarray(keras.ops.convert_to_numpy(v)) for v in l3.weights]
        if l3.name == "conv1":
            w[0] = w[0].sum(axis=2, keepdims=True)         # timm's rule for one channel, on HWIO
        l1.set_weights(w)
    net = archc.load(case.arch, in_chans=1, input_shape=(case.size, case.size, 1))
    variables, report = archc.import_weights(net, str(path), source="keras")
    assert len(report.adapted) == 1 and report.adapted[0][0].startswith("conv1")
    x = np.random.default_rng(0).standard_normal((2, case.size, case.size, 1)).astype(np.float32)
    want = _keras_logits(ref1, x)[0]
    logits = logits_node(net.graph)
    got = np.asarray(net.apply(variables, x, outputs=[logits])[logits])
    delta = float(np.abs(got - want).max())
    assert delta <= limit(float(np.abs(want).max())), delta
    print(f"keras in_chans=1: max |Δ| {delta:.2e}")
