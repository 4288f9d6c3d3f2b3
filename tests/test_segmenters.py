"""torchvision's segmenters (fcn.arch, deeplabv3.arch, lraspp.arch) against torchvision itself.

Each network is torchvision's with random weights (weights=None, weights_backbone=None, seed 0) and
randomised BN statistics and affine parameters, in eval mode; its state_dict is imported by the
built-in mapping as a user does (`archc.import_weights(..., source="torchvision")`, and once by
`archc import` on the command line: the documented path), and the outputs `out` (and `aux`) on a non-square input
whose sides are not multiples of the output stride (so every bilinear resize has a non-integer
factor, as in torchvision's forward) must equal torchvision's within 1e-4 of their largest
magnitude. The counts (with and without the aux head) and the MACs of torchvision's table are
torchvision's own, computed here. The ResNet-101 pair is the slow tier."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import archc
from archc.compiler.build import build_graph
from archc.compiler.stats import summarize

torch = pytest.importorskip("torch")
S = pytest.importorskip("torchvision.models.segmentation")

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("fcn_resnet50", "fcn_resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101",
         "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large")
HAS_AUX = {n: not n.startswith("lraspp") for n in NAMES}
H, W = 197, 263     # neither a multiple of 8 nor of 16: torchvision's resizes at non-integer factors


def _randomised_bn(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.normal_(0, 0.1, generator=g)
            mod.running_var.uniform_(0.5, 2.0, generator=g)
            mod.weight.data.uniform_(0.5, 1.5, generator=g)
            mod.bias.data.normal_(0, 0.1, generator=g)
    return model


def _torchvision(name: str, aux: bool):
    torch.manual_seed(0)
    model = getattr(S, name)(weights=None, weights_backbone=None, **({"aux_loss": True} if aux else {}))
    return _randomised_bn(model).eval()


def _counts(model) -> tuple[int, int]:
    return (sum(p.numel() for p in model.parameters()),
            sum(b.numel() for k, b in model.named_buffers() if k.endswith(("running_mean", "running_var"))))


def _load(name: str, aux: bool):
    return archc.load(name, aux=aux) if HAS_AUX[name] else archc.load(name)


@pytest.mark.parametrize("name", NAMES)
def test_counts_are_torchvisions(name):
    for aux in (False, True) if HAS_AUX[name] else (False,):
        with torch.device("meta"):
            tm = getattr(S, name)(weights=None, weights_backbone=None, **({"aux_loss": True} if aux else {}))
        graph = build_graph(name, params={"aux": aux} if HAS_AUX[name] else None)
        s = summarize(graph)
        assert (s["trainable_params"], s["non_trainable_params"]) == _counts(tm), (name, aux)
        want = ["out", "aux"] if aux else ["out"]
        assert graph.outputs == [graph.aliases[k] for k in want]
        assert s["input_shape"] == [520, 520, 3] and s["output_shape"] == [520, 520, 21]


@pytest.mark.parametrize("name", NAMES)
def test_macs_are_torchvisions_table(name):
    """torchvision's `_ops` (GMACs of the COCO-with-VOC-labels model, aux head included, at 520x520)."""
    from torchvision.models import get_model_weights
    (weights,) = list(get_model_weights(name))      # COCO_WITH_VOC_LABELS_V1 (DEFAULT is its alias)
    s = summarize(build_graph(name, params={"aux": True} if HAS_AUX[name] else None))
    assert s["macs"] / 1e9 == pytest.approx(weights.meta["_ops"], abs=5e-4)   # the table's 3 decimals


# (name, aux, imported by the CLI)
PARITY = [
    pytest.param("lraspp_mobilenet_v3_large", False, False, id="lraspp_mobilenet_v3_large"),
    pytest.param("deeplabv3_mobilenet_v3_large", True, True, id="deeplabv3_mobilenet_v3_large-aux-cli"),
    pytest.param("fcn_resnet50", True, False, id="fcn_resnet50-aux"),
    pytest.param("deeplabv3_resnet50", False, False, id="deeplabv3_resnet50"),
    pytest.param("fcn_resnet101", False, False, id="fcn_resnet101", marks=pytest.mark.slow),
    pytest.param("deeplabv3_resnet101", True, False, id="deeplabv3_resnet101-aux", marks=pytest.mark.slow),
]


def _relative_error(got, want) -> float:
    return float(np.abs(np.asarray(got) - want).max() / np.abs(want).max())


def _import_cli(name: str, aux: bool, ckpt: Path, out: Path) -> str:
    """`archc import NAME ckpt.pth --from torchvision --out W`: its report. A checkpoint with the
    aux head (as torchvision's COCO ones) goes into the network with aux=true, and says so."""
    r = subprocess.run([sys.executable, "-m", "archc", "import", name, str(ckpt), "--from", "torchvision",
                        "--out", str(out)], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stdout + r.stderr
    assert ("note: aux=true: the checkpoint has the aux head" in r.stdout) == aux, r.stdout
    return r.stdout


@pytest.mark.usefixtures("highest_precision")
@pytest.mark.parametrize("name,aux,cli", PARITY)
def test_outputs_match_torchvision(name, aux, cli, tmp_path):
    from archc.runtime.variables_io import load_variables
    tm = _torchvision(name, aux)
    ckpt = tmp_path / "model.pth"
    torch.save(tm.state_dict(), ckpt)
    model = _load(name, aux)
    if cli:
        report = _import_cli(name, aux, ckpt, tmp_path / "w.safetensors")
        variables = load_variables(tmp_path / "w.safetensors")
    else:
        variables, report = archc.import_weights(model, ckpt, source="torchvision")
    n = sum(1 for k in tm.state_dict() if not k.endswith("num_batches_tracked"))
    assert f"{n} tensors -> {n} variables" in str(report)

    x = np.random.default_rng(2).standard_normal((1, H, W, 3)).astype(np.float32)
    with torch.no_grad():
        ref = tm(torch.from_numpy(x).permute(0, 3, 1, 2))
    names = ("out", "aux") if aux else ("out",)
    assert set(ref) == set(names)
    got = model.apply(variables, x, outputs=names)
    for k in names:
        want = ref[k].permute(0, 2, 3, 1).numpy()
        assert got[k].shape == want.shape == (1, H, W, 21)
        err = _relative_error(got[k], want)
        print(f"{name} {k}: max relative error {err:.2e}")
        assert err <= 1e-4, f"{name} {k}: {err:.2e}"


def test_aux_checkpoint_into_network_without_aux_says_so(tmp_path):
    """A checkpoint with the aux head (torchvision's COCO layout) into archc.load(name) (aux off):
    a WeightsError naming the aux tensors and the fix, nothing loaded; with the hint followed it fits."""
    from archc.runtime.weights import WeightsError
    name = "deeplabv3_mobilenet_v3_large"
    ckpt = tmp_path / "model.pth"
    torch.save(_torchvision(name, aux=True).state_dict(), ckpt)
    with pytest.raises(WeightsError) as e:
        archc.import_weights(archc.load(name), ckpt, source="torchvision")
    assert "aux_classifier.4.weight" in str(e.value)
    assert f"archc.load({name!r}, aux=True)" in str(e.value)
    _, report = archc.import_weights(archc.load(name, aux=True), ckpt, source="torchvision")
    assert report.ok


@pytest.mark.usefixtures("highest_precision")
def test_classifier_checkpoint_into_the_backbone_part(tmp_path):
    """torchvision's weights_backbone is --prefix body: MobileNetV3-Large's ImageNet-layout
    checkpoint imported into lraspp's part `body` (dilated) gives the features torchvision's
    backbone computes from the same checkpoint (its IntermediateLayerGetter's low and high)."""
    from torchvision.models import mobilenet_v3_large
    torch.manual_seed(0)
    classifier = _randomised_bn(mobilenet_v3_large(weights=None))
    ckpt = tmp_path / "mobilenet_v3_large.pth"
    torch.save(classifier.state_dict(), ckpt)
    tm = S.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None)
    tm.backbone.load_state_dict({k.removeprefix("features."): v for k, v in classifier.state_dict().items()
                                 if k.startswith("features.")})
    tm.eval()
    model = archc.load("lraspp_mobilenet_v3_large")
    variables, report = archc.import_weights(model, ckpt, source="torchvision", prefix="body")
    assert "cut off by until= (stage classifier)" in str(report)
    x = np.random.default_rng(4).standard_normal((1, 150, 190, 3)).astype(np.float32)
    with torch.no_grad():
        ref = tm.backbone(torch.from_numpy(x).permute(0, 3, 1, 2))
    got = model.apply(variables, x, outputs=("body", "body.blocks.3"))
    for mine, theirs in (("body", "high"), ("body.blocks.3", "low")):
        assert _relative_error(got[mine], ref[theirs].permute(0, 2, 3, 1).numpy()) <= 1e-4, mine
