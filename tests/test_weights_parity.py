"""Parity of imported checkpoints with the reference implementations.

Each reference model is built with random weights (fixed seed) and randomised BatchNorm
statistics (not 0/1), saved to a temporary checkpoint in its native format (torchvision: .pth,
timm: .safetensors, Keras: save_weights .weights.h5), imported with the built-in rules, and run
in inference mode on the same random batch as the archc model. Logits and a named intermediate
feature map must agree to 1e-4 (float32, matmul precision "highest"), relative to the tensor's
largest value where that exceeds 1; where the logits still differ by more (the deepest networks),
archc must be as close to the reference run in float64 as the float32 reference is (see
``within``).

The sweep covers every built-in that a torchvision or timm mapping lists (test_sweep_covers_every_twin),
at 64x64 (the smallest input at which every stage is at least 2x2: at 1x1 the BatchNorm
calibration batch gives degenerate statistics) unless the network needs more; the largest are in
the slow tier (``pytest --slow``: CI runs the default tier only; the slow tier's 89 cases take
~55 min on 2 busy cores, and docs/weights.md's table records its last run).

Each case writes its largest differences to build/weights-parity/<case>.json; docs/weights.md's
table is generated from those files by ``python tests/test_weights_parity.py --table`` (which
runs the cases that have no result yet).

Keras references run on Keras's JAX backend by default, as the issue asks (each model build costs
~25 s of XLA compiles); ARCHC_TEST_KERAS_BACKEND=torch selects the torch backend.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ["KERAS_BACKEND"] = os.environ.get("ARCHC_TEST_KERAS_BACKEND", "jax")

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytestmark = pytest.mark.usefixtures("highest_precision")

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "build" / "weights-parity"
TOL = 1e-4
F32_MARGIN = 2.0     # archc's distance to float64 vs the float32 reference's: same order, not equal


def limit(scale: float) -> float:
    """The tolerance on a tensor whose largest reference value is ``scale``: 1e-4 absolute, or
    1e-4 relative where random weights make the values larger than 1 (deep features, and logits
    at a small input, reach ~10: float32 rounding grows with them)."""
    return TOL * max(1.0, scale)


def within(result: dict) -> dict:
    """{tensor: "abs" | "rel" | "f64"} when every tensor is within its tolerance, else
    {"bad": {tensor: Δ}} of those that are not. "f64": the logits are above 1e-4 (relative) from
    the float32 reference but no further from the float64 reference than the float32 reference
    itself is (times F32_MARGIN): float32's own limit at that depth, not a mapping error."""
    d, scale = result["max_delta"], result["max_abs_ref"]
    verdict = {k: "abs" if d[k] <= TOL else "rel" for k in d if d[k] <= limit(scale[k])}
    f64 = result.get("float64")
    if "logits" not in verdict and f64 and f64["archc"] <= F32_MARGIN * f64["reference_float32"]:
        verdict["logits"] = "f64"
    bad = {k: v for k, v in d.items() if k not in verdict}
    return {"bad": bad} if bad else verdict


@dataclass
class Case:
    id: str
    source: str                  # torchvision | timm | keras
    ref: str                     # the reference's constructor name
    arch: str                    # archc built-in
    size: int                    # input H = W
    feats: dict                  # archc stage/node -> reference module (torch) or layer (Keras)
    batch: int = 2
    params: dict = field(default_factory=dict)
    ref_kwargs: dict = field(default_factory=dict)
    heavy: bool = False          # default tier, in its own test (the longest of the tier)
    slow: bool = False           # the slow tier (--slow): the sweep's largest networks
    xfail: str | None = None     # a known bug outside weight import that breaks parity


CASES = [
    # torchvision (.pth)
    Case("tv-alexnet", "torchvision", "alexnet", "alexnet", 224, {"features": "features"}, batch=1),
    Case("tv-vgg16", "torchvision", "vgg16", "vgg16", 224, {"features": "features"}, batch=1, heavy=True),
    Case("tv-vgg16_bn", "torchvision", "vgg16_bn", "vgg16_bn", 224, {"features": "features"}, batch=1, heavy=True),
    Case("tv-googlenet", "torchvision", "googlenet", "googlenet", 96, {"inception4a": "inception4a"},
         ref_kwargs={"aux_logits": True, "init_weights": True}),
    Case("tv-inception_v3", "torchvision", "inception_v3", "inception_v3", 299, {"Mixed_5d": "Mixed_5d"},
         batch=1, ref_kwargs={"aux_logits": True, "init_weights": True}, heavy=True),
    Case("tv-resnet18", "torchvision", "resnet18", "resnet18", 64, {"layer2": "layer2"}),
    Case("tv-resnet50", "torchvision", "resnet50", "resnet50", 64, {"layer2": "layer2"}),
    Case("tv-resnext50_32x4d", "torchvision", "resnext50_32x4d", "resnext50_32x4d", 96, {"layer2": "layer2"}),
    Case("tv-wide_resnet50_2", "torchvision", "wide_resnet50_2", "wide_resnet50_2", 64, {"layer2": "layer2"}, heavy=True),
    Case("tv-densenet121", "torchvision", "densenet121", "densenet121", 64, {"denseblock2": "features.denseblock2"}),
    Case("tv-mobilenet_v2", "torchvision", "mobilenet_v2", "mobilenet_v2", 64, {"features": "features"}),
    Case("tv-mobilenet_v3_large", "torchvision", "mobilenet_v3_large", "mobilenet_v3_large", 64, {"blocks": "features.15"}),
    Case("tv-squeezenet1_1", "torchvision", "squeezenet1_1", "squeezenet1_1", 64, {"features": "features"}),
    Case("tv-shufflenet_v2_x1_0", "torchvision", "shufflenet_v2_x1_0", "shufflenet_v2_x1_0", 64, {"stage3": "stage3"}),
    Case("tv-mnasnet1_0", "torchvision", "mnasnet1_0", "mnasnet1_0", 64, {"layers": "layers.13"}),
    Case("tv-efficientnet_b0", "torchvision", "efficientnet_b0", "efficientnet_b0", 64, {"stage4": "features.4"}),
    Case("tv-regnet_y_400mf", "torchvision", "regnet_y_400mf", "regnet_y_400mf", 64, {"stage3": "trunk_output.block3"}),
    Case("tv-regnet_x_400mf", "torchvision", "regnet_x_400mf", "regnet_x_400mf", 64, {"stage3": "trunk_output.block3"}),
    Case("tv-efficientnet_v2_s", "torchvision", "efficientnet_v2_s", "efficientnet_v2_s", 64, {"blocks": "features.6"}),
    Case("tv-convnext_tiny", "torchvision", "convnext_tiny", "convnext_tiny", 64, {"stage3": "features.5"}),
]
# The sweep: every other built-in with a torchvision twin, at the smallest input it accepts (32:
# five stride-2 stages down to 1x1); the largest in the slow tier.
_TV_FEATS = {"resnet": {"layer2": "layer2"}, "resnext": {"layer2": "layer2"}, "wide_resnet": {"layer2": "layer2"},
             "densenet": {"denseblock2": "features.denseblock2"}, "vgg": {"features": "features"},
             "squeezenet": {"features": "features"}, "shufflenet": {"stage3": "stage3"},
             "mnasnet": {"layers": "layers.13"}, "efficientnet_b": {"stage4": "features.4"},
             "efficientnet_v2": {"blocks": "features.7"}, "regnet": {"stage3": "trunk_output.block3"},
             "convnext": {"stage3": "features.5"}, "mobilenet_v3_small": {"blocks": "features.11"}}


def _family_feats(ref: str, table: dict) -> dict:
    """The feature compared for a family: the entry of the longest family name in ref."""
    return table[max((f for f in table if f in ref), key=len)]


def _tv(ref: str, **kw) -> Case:
    return Case(f"tv-{ref}", "torchvision", ref, ref, 64, _family_feats(ref, _TV_FEATS), **kw)


CASES += [_tv(r) for r in ["resnet34", "resnet101", "densenet169", "mobilenet_v3_small", "squeezenet1_0",
                           "shufflenet_v2_x0_5", "mnasnet0_5", "efficientnet_b1", "regnet_x_800mf",
                           "regnet_y_800mf"]]
# VGG's classifier takes 7x7x512 (archc has no adaptive pool): 224
CASES += [Case(f"tv-{r}", "torchvision", r, r, 224, {"features": "features"}, batch=1, slow=True)
          for r in ["vgg11", "vgg13", "vgg19", "vgg11_bn", "vgg13_bn", "vgg19_bn"]]
CASES += [_tv(r, slow=True) for r in [
    "resnet152", "resnext101_32x8d", "wide_resnet101_2", "densenet161", "densenet201",
    "shufflenet_v2_x1_5", "shufflenet_v2_x2_0", "mnasnet0_75", "mnasnet1_3",
    "efficientnet_b2", "efficientnet_b3", "efficientnet_b4", "efficientnet_b5", "efficientnet_b6", "efficientnet_b7",
    "efficientnet_v2_m", "efficientnet_v2_l", "convnext_small", "convnext_base", "convnext_large",
    "regnet_x_1_6gf", "regnet_x_3_2gf", "regnet_x_8gf", "regnet_x_16gf", "regnet_x_32gf",
    "regnet_y_1_6gf", "regnet_y_3_2gf", "regnet_y_8gf", "regnet_y_16gf", "regnet_y_32gf", "regnet_y_128gf"]]

CASES += [
    # timm (.safetensors)
    Case("timm-inception_v4", "timm", "inception_v4", "inception_v4", 299, {"reduction_a": "features.10"},
         batch=1, heavy=True),
    Case("timm-inception_resnet_v2", "timm", "inception_resnet_v2", "inception_resnet_v2", 75,
         {"block17": "repeat_1"}, batch=1, heavy=True),
    Case("timm-legacy_xception", "timm", "legacy_xception", "legacy_xception", 71, {"middle": "block11"}),
    Case("timm-seresnet50", "timm", "seresnet50", "seresnet50", 64, {"layer2": "layer2"}),
    Case("timm-legacy_senet154", "timm", "legacy_senet154", "legacy_senet154", 64, {"layer2": "layer2"},
         heavy=True),
    Case("timm-nasnetalarge", "timm", "nasnetalarge", "nasnetalarge", 64, {"reduce_1": "reduction_cell_0"},
         heavy=True),
    Case("timm-efficientnet_lite0", "timm", "efficientnet_lite0", "efficientnet_lite0", 64, {"stage4": "blocks.3"}),
    Case("timm-tf_efficientnet_lite0", "timm", "tf_efficientnet_lite0", "tf_efficientnet_lite0", 64, {"stage4": "blocks.3"}),
    Case("timm-tf_efficientnet_b0", "timm", "tf_efficientnet_b0", "tf_efficientnet_b0", 64, {"stage4": "blocks.3"}),
    Case("timm-regnety_004", "timm", "regnety_004", "regnet_y_400mf", 64, {"stage3": "s3"}),
    Case("timm-regnetx_004_tv", "timm", "regnetx_004_tv", "regnet_x_400mf", 64, {"stage3": "s3"}),
    Case("timm-regnetx_002", "timm", "regnetx_002", "regnetx_002", 64, {"stage3": "s3"}),
    Case("timm-tf_efficientnetv2_b0", "timm", "tf_efficientnetv2_b0", "tf_efficientnetv2_b0", 64, {"blocks": "blocks"}),
    Case("timm-convnext_tiny", "timm", "convnext_tiny", "convnext_tiny", 64, {"stage3": "stages.2"}),
    Case("timm-efficientnet_b1", "timm", "efficientnet_b1", "efficientnet_b1", 64, {"stage4": "blocks.3"}),
    Case("timm-tf_efficientnet_b1", "timm", "tf_efficientnet_b1", "tf_efficientnet_b1", 64, {"stage4": "blocks.3"}),
]
# the sweep's timm rest, in the slow tier: timm's name and the built-in it imports into
_TIMM_FEATS = {"efficientnet": {"stage4": "blocks.3"}, "tf_efficientnetv2": {"blocks": "blocks"},
               "convnext": {"stage3": "stages.2"}, "regnet": {"stage3": "s3"}}
_TIMM_SLOW = {
    **{f"efficientnet_b{i}": f"efficientnet_b{i}" for i in (0, 2, 3, 4)},
    **{f"tf_efficientnet_b{i}": f"tf_efficientnet_b{i}" for i in range(2, 8)},
    **{f"tf_efficientnetv2_{v}": f"tf_efficientnetv2_{v}" for v in "sml"},
    **{f"convnext_{v}": f"convnext_{v}" for v in ("small", "base", "large")},
    # torchvision's RegNets under timm's names (references/regnet.toml's `timm`), then pycls's
    "regnetx_008": "regnet_x_800mf", "regnetx_016": "regnet_x_1_6gf", "regnetx_032": "regnet_x_3_2gf",
    "regnetx_080": "regnet_x_8gf", "regnetx_160": "regnet_x_16gf", "regnetx_320": "regnet_x_32gf",
    "regnety_008_tv": "regnet_y_800mf", "regnety_016": "regnet_y_1_6gf", "regnety_032": "regnet_y_3_2gf",
    "regnety_080_tv": "regnet_y_8gf", "regnety_160": "regnet_y_16gf", "regnety_320": "regnet_y_32gf",
    "regnety_1280": "regnet_y_128gf",
    **{n: n for n in ["regnetx_004", "regnetx_006", "regnetx_040", "regnetx_064", "regnetx_120",
                      "regnety_002", "regnety_006", "regnety_008", "regnety_040", "regnety_064",
                      "regnety_080", "regnety_120"]},
}
CASES += [Case(f"timm-{ref}", "timm", ref, arch, 64, _family_feats(ref, _TIMM_FEATS), slow=True)
          for ref, arch in _TIMM_SLOW.items()]
CASES += [
    # Keras (save_weights .weights.h5)
    Case("keras-resnet50", "keras", "ResNet50", "keras/resnet50", 128, {"conv3": "conv3_block4_out"}),
    Case("keras-resnet50_v2", "keras", "ResNet50V2", "keras/resnet50_v2", 64, {"conv3": "conv3_block4_out"}),
    Case("keras-densenet121", "keras", "DenseNet121", "keras/densenet121", 64, {"transition2": "pool3_pool"}),
    Case("keras-mobilenet_v2", "keras", "MobileNetV2", "keras/mobilenet_v2", 64, {"features": "out_relu"}),
    Case("keras-inception_v3", "keras", "InceptionV3", "keras/inception_v3", 139, {"Mixed_6a": "mixed3"}),
    Case("keras-xception", "keras", "Xception", "keras/xception", 71, {"conv3": "block14_sepconv1_act"}),
    Case("keras-efficientnet_b0", "keras", "EfficientNetB0", "keras/efficientnet_b0", 64, {"stage4": "block4c_add"}),
    Case("keras-mobilenet", "keras", "MobileNet", "keras/mobilenet", 64, {"blocks": "conv_pw_13_relu"}),
    Case("keras-mobilenet_0.5", "keras", "MobileNet", "keras/mobilenet", 64, {"blocks": "conv_pw_13_relu"},
         params={"alpha": 0.5}, ref_kwargs={"alpha": 0.5}, heavy=True),
    # 64x64: fc1 sees a 2x2x512 map, so the flatten order (NHWC, as Keras) matters
    Case("keras-vgg16", "keras", "VGG16", "keras/vgg16", 64, {"features": "block5_pool"}, batch=1),
    Case("keras-vgg19", "keras", "VGG19", "keras/vgg19", 64, {"features": "block5_pool"}, batch=1, heavy=True),
    # slow tier (the default tier's time): keras-densenet121 above covers the family's importer
    *[Case(f"keras-densenet{n}", "keras", f"DenseNet{n}", f"keras/densenet{n}", 32, {"transition2": "pool3_pool"},
           slow=True) for n in (169, 201)],
    # 64x64, not 32: at 32 the last stage is 1x1 and the BN statistics calibrated on that batch are
    # degenerate (variance ~0), which amplifies float32 noise past any tolerance (measured: Δ up to
    # 6.6 at 32 for EfficientNetB6)
    *[Case(f"keras-resnet{n}{v}", "keras", f"ResNet{n}{v.upper().replace('_', '')}", f"keras/resnet{n}{v}", 64,
           {"conv3": f"conv3_block{4 if n == 101 else 8}_out"}, slow=True)
      for v in ("", "_v2") for n in (101, 152)],
    # stage 4 has ceil(3 * depth) blocks: its output is block4<last letter>_add
    *[Case(f"keras-efficientnet_b{b}", "keras", f"EfficientNetB{b}", f"keras/efficientnet_b{b}", 64,
           {"stage4": f"block4{'abcdefghij'[math.ceil(3 * d) - 1]}_add"}, slow=True)
      for b, d in ((1, 1.1), (2, 1.2), (3, 1.4), (4, 1.8), (5, 2.2), (6, 2.6), (7, 3.1))],
    Case("keras-inception_resnet_v2", "keras", "InceptionResNetV2", "keras/inception_resnet_v2", 75,
         {"block17": "block17_20_ac"}, batch=1, heavy=True),
    Case("keras-nasnet_mobile", "keras", "NASNetMobile", "keras/nasnet_mobile", 32, {"reduce_1": "reduction_concat_reduce_4"},
         batch=1, heavy=True),
    Case("keras-nasnet_large", "keras", "NASNetLarge", "keras/nasnet_large", 32, {"reduce_1": "reduction_concat_reduce_6"},
         batch=1, slow=True),                     # NASNet-Mobile covers the family in the default tier
    Case("keras-mobilenet_v3_small", "keras", "MobileNetV3Small", "keras/mobilenet_v3_small", 64,
         {"blocks": "expanded_conv_10_add"}),
    Case("keras-mobilenet_v3_large", "keras", "MobileNetV3Large", "keras/mobilenet_v3_large", 64,
         {"blocks": "expanded_conv_14_add"}, slow=True),      # MobileNetV3Small covers the family by default
]
BY_ID = {c.id: c for c in CASES}


# --------------------------------------------------------------------------------------------
# references
# --------------------------------------------------------------------------------------------
def _torch():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    return torch


def _randomise_torch_bn(model, seed: int, size: int):
    """BatchNorm statistics of a "trained" network, randomised: the running statistics are first
    calibrated on a random batch (so activations stay of order 1 through the depth, as in a trained
    model, and a 1e-4 tolerance means something), then perturbed per channel, with a floor of a
    tenth of the layer's mean variance (a near-dead channel would otherwise amplify float32
    rounding ~30x, past what float32 PyTorch itself agrees with float64); scales and shifts are
    random too. Where the logits' standard deviation exceeds 1, the last Linear layer is scaled
    down to make it 1: a 1e-4 tolerance on logits of order 100 would be below float32's own
    agreement with float64 for these depths (PyTorch float32 vs float64 differs by ~3e-3 there)."""
    torch = _torch()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in bns:
            if m.weight is not None:
                m.weight.copy_(torch.rand(m.num_features, generator=g) * 0.4 + 0.8)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.momentum = None                       # cumulative: running stats = batch stats
            m.reset_running_stats()
        for m in model.modules():             # BN in training mode; dropout, drop-path off
            m.train(isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
        xcal = torch.randn(4, 3, size, size, generator=g)
        model(xcal)
        model.eval()
        for m in bns:
            c = m.num_features
            m.running_var.mul_(torch.rand(c, generator=g) * 0.6 + 0.7).add_(0.1 * m.running_var.mean())
            m.running_mean.add_(torch.randn(c, generator=g) * 0.1 * m.running_var.sqrt())
            m.momentum = 0.1
        _randomise_torch_affine(model, seed)
        # logits of order 1, as the 1e-4 tolerance assumes: the classifier scaled down if needed
        std = float(model(xcal).std())
        linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        if std > 1 and linears:
            linears[-1].weight.div_(std)
            linears[-1].bias.div_(std)


def _randomise_torch_affine(model, seed: int):
    """LayerNorm/GroupNorm scales and shifts random like BN's, and layer scales (torchvision's
    CNBlock.layer_scale, timm's gamma: initialised to 1e-6, which would hide every residual
    branch from the comparison) of order 1."""
    torch = _torch()
    g = torch.Generator().manual_seed(seed + 1)       # its own stream: BN-only models are unchanged
    for m in model.modules():
        if isinstance(m, (torch.nn.LayerNorm, torch.nn.GroupNorm)) and m.weight is not None:
            m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.4 + 0.8)
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        for name, p in m.named_parameters(recurse=False):
            if name in ("layer_scale", "gamma"):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)


def build_torch_reference(case: Case, tmp: Path):
    """(model in eval mode, checkpoint path) for a torchvision or timm case."""
    torch = _torch()
    torch.manual_seed(0)
    if case.source == "torchvision":
        tv = pytest.importorskip("torchvision")
        model = getattr(tv.models, case.ref)(weights=None, **case.ref_kwargs)
    else:
        timm = pytest.importorskip("timm")
        model = timm.create_model(case.ref, pretrained=False, **case.ref_kwargs)
    _randomise_torch_bn(model, 1, case.size)
    model.eval()
    if case.source == "torchvision":
        path = tmp / f"{case.ref}.pth"
        torch.save(model.state_dict(), path)
    else:
        from safetensors.torch import save_file
        path = tmp / f"{case.ref}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, path


def run_torch_reference(model, x_nhwc: np.ndarray, feats: dict) -> dict:
    torch = _torch()
    modules = dict(model.named_modules())
    got: dict = {}
    hooks = [modules[name].register_forward_hook(
        lambda m, i, o, name=name: got.__setitem__(name, o.detach().numpy().copy())) for name in feats.values()]
    try:
        with torch.no_grad():
            out = model(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))))
    finally:
        for h in hooks:
            h.remove()
    result = {"logits": out.numpy()}
    for a, name in feats.items():
        v = got[name]
        result[a] = v.transpose(0, 2, 3, 1) if v.ndim == 4 else v
    return result


def _takes_pixels(case: Case) -> bool:
    """Keras networks that rescale inside the model (EfficientNet, MobileNetV3): 0-255 inputs."""
    return case.source == "keras" and ("efficientnet" in case.arch or "mobilenet_v3" in case.arch)


def build_keras_reference(case: Case, tmp: Path):
    keras = pytest.importorskip("keras")
    pytest.importorskip("h5py")
    keras.utils.set_random_seed(0)
    # Keras numbers automatic layer names per session (normalization, normalization_1, …): a
    # throwaway layer first makes the names those of a session that built something before
    keras.layers.Normalization(), keras.layers.Conv2D(1, 1), keras.layers.BatchNormalization()
    model = getattr(keras.applications, case.ref)(weights=None, input_shape=(case.size, case.size, 3),
                                                  **case.ref_kwargs)
    rng = np.random.default_rng(1)
    # as for PyTorch: statistics calibrated on a random batch (momentum 0: moving = batch
    # statistics), then perturbed per channel, with random scales and shifts
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    _randomise_keras_kernels(keras, model, np.random.default_rng(2), he=not bns)   # its own stream
    for layer in model.layers:
        if isinstance(layer, keras.layers.Normalization):
            mean, var, count = layer.get_weights()
            layer.set_weights([rng.normal(0.45, 0.05, mean.shape).astype("float32"),
                               rng.uniform(0.04, 0.08, var.shape).astype("float32"), count])
            # Normalization computes with a mean/variance cached from its variables when built
            # (finalize_state), which set_weights does not refresh: on the JAX backend the cache
            # is a snapshot (mean 0, variance 1), so the live reference would ignore the statistics
            # it saves (on torch the cache happens to be a view of the variables). Loading a
            # .weights.h5 calls finalize_state, as here.
            layer.finalize_state()
    for layer in bns:
        w = {v.path.split("/")[-1]: v for v in layer.weights}
        c = w["moving_mean"].shape[0]
        if "gamma" in w:
            w["gamma"].assign(rng.uniform(0.8, 1.2, c).astype("float32"))
        if "beta" in w:
            w["beta"].assign(rng.normal(0, 0.1, c).astype("float32"))
        layer._saved_momentum, layer.momentum = layer.momentum, 0.0
    dropouts = [l for l in model.layers if isinstance(l, keras.layers.Dropout)]
    rates = [l.rate for l in dropouts]
    for l in dropouts:                      # no dropout / drop-connect while calibrating
        l.rate = 0.0
    xcal = rng.standard_normal((4, case.size, case.size, 3)).astype("float32")
    if _takes_pixels(case):
        xcal = xcal * 40 + 120
    model(xcal, training=True)
    for l, r in zip(dropouts, rates):
        l.rate = r
    for layer in bns:
        layer.momentum = layer._saved_momentum
        w = {v.path.split("/")[-1]: v for v in layer.weights}
        c = w["moving_mean"].shape[0]
        var = np.asarray(keras.ops.convert_to_numpy(w["moving_variance"]))
        var = var * rng.uniform(0.7, 1.3, c) + 0.1 * var.mean()
        mean = np.asarray(keras.ops.convert_to_numpy(w["moving_mean"])) + rng.normal(0, 0.1, c) * np.sqrt(var)
        w["moving_variance"].assign(var.astype("float32"))
        w["moving_mean"].assign(mean.astype("float32"))
    # logits of order 1, as for PyTorch: the classifier (the last layer with weights: a Dense, or
    # MobileNet's 1x1 conv_preds) scaled down if needed
    head = [l for l in model.layers if l.weights][-1]
    std = float(_keras_logits(model, xcal)[0].std())
    if std > 1:
        head.set_weights([np.asarray(keras.ops.convert_to_numpy(w)) / std for w in head.weights])
    path = tmp / f"{case.ref}.weights.h5"
    model.save_weights(str(path))
    return model, path


def _keras_logits(model, x: np.ndarray, feats: tuple = (), dtype=np.float32) -> tuple:
    """(logits, [feature maps of the layers ``feats``]): the logits before Keras's built-in
    softmax, a final Dense(activation="softmax") applied without it, in float64, or the input of
    a final Activation("softmax") (MobileNet v1/v3)."""
    keras = pytest.importorskip("keras")
    head = model.layers[-1]
    sub = keras.Model(model.inputs, [model.get_layer(n).output for n in feats] + [head.input])
    outs = sub(x, training=False)
    outs = [np.asarray(keras.ops.convert_to_numpy(o)) for o in (outs if isinstance(outs, (list, tuple)) else [outs])]
    if isinstance(head, keras.layers.Dense):
        kernel, bias = [np.asarray(keras.ops.convert_to_numpy(w)) for w in head.weights]
        outs[-1] = (outs[-1].astype(np.float64) @ kernel.astype(np.float64) + bias).astype(dtype)
    return outs[-1], outs[:-1]


def _randomise_keras_kernels(keras, model, rng, he: bool):
    """Biases random (Keras initialises them to 0, which would hide a misplaced bias); without
    BatchNorm (VGG) the kernels He-normal too: Keras's Glorot init lets activations decay through
    a deep ReLU stack (VGG16's logits would be ~1e-2, below what a 1e-4 tolerance can judge)."""
    for layer in model.layers:
        if not isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)) or isinstance(
                layer, (keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)):
            continue
        w = {v.path.split("/")[-1]: v for v in layer.weights}
        if he and "kernel" in w:
            shape = tuple(w["kernel"].shape)
            w["kernel"].assign(rng.normal(0, np.sqrt(2.0 / np.prod(shape[:-1])), shape).astype("float32"))
        if "bias" in w:
            w["bias"].assign(rng.normal(0, 0.1, tuple(w["bias"].shape)).astype("float32"))


def run_keras_reference(model, x: np.ndarray, feats: dict) -> dict:
    logits, outs = _keras_logits(model, x, tuple(feats.values()))
    return {"logits": logits, **{a: o for a, o in zip(feats, outs)}}


# --------------------------------------------------------------------------------------------
# the check
# --------------------------------------------------------------------------------------------
def float64_check(case: Case, model, x: np.ndarray, archc_logits: np.ndarray, ref_logits: np.ndarray) -> dict:
    """Where archc and the float32 reference differ by more than 1e-4, the deepest networks
    (ResNet-152: PyTorch float32 is 3.6e-4 from float64 on its logits) may be at float32's own
    limit: both compared with the reference run in float64."""
    exact = (_keras_float64_logits(case, model, x) if case.source == "keras"
             else _torch_float64_logits(model, x))
    return {"archc": float(np.max(np.abs(archc_logits - exact))),
            "reference_float32": float(np.max(np.abs(ref_logits - exact)))}


def _torch_float64_logits(model, x: np.ndarray) -> np.ndarray:
    import copy
    torch = _torch()
    with torch.no_grad():
        return copy.deepcopy(model).double()(
            torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).double()).numpy()


def _keras_float64_logits(case: Case, model, x: np.ndarray) -> np.ndarray:
    """The same Keras application built in float64 (JAX with x64 for the duration), its weights
    copied layer by layer from the float32 reference."""
    keras = pytest.importorskip("keras")
    floatx, policy = keras.config.floatx(), keras.config.dtype_policy()
    with jax.enable_x64(True):
        keras.config.set_floatx("float64")
        keras.config.set_dtype_policy("float64")
        try:
            exact = getattr(keras.applications, case.ref)(weights=None, input_shape=(case.size, case.size, 3),
                                                          **case.ref_kwargs)
            assert len(exact.layers) == len(model.layers)
            for mine, theirs in zip(exact.layers, model.layers):
                if theirs.weights:
                    mine.set_weights([np.asarray(keras.ops.convert_to_numpy(w)).astype(np.float64)
                                      for w in theirs.weights])
                    if isinstance(theirs, keras.layers.Normalization):
                        mine.finalize_state()
            logits, _ = _keras_logits(exact, x.astype(np.float64), dtype=np.float64)
        finally:
            keras.config.set_floatx(floatx)
            keras.config.set_dtype_policy(policy)
    return np.asarray(logits, dtype=np.float64)


def run_case(case: Case, tmp: Path) -> dict:
    import archc
    from archc.runtime.logits import logits_node

    t0 = time.perf_counter()
    if case.source == "keras":
        ref, path = build_keras_reference(case, tmp)
    else:
        ref, path = build_torch_reference(case, tmp)
    model = archc.load(case.arch, input_shape=(case.size, case.size, 3), **case.params)
    variables, report = archc.import_weights(model, path, source=case.source)
    assert report.ok, report.render()

    x = np.random.default_rng(42).standard_normal((case.batch, case.size, case.size, 3)).astype(np.float32)
    if case.source == "keras":
        x = (x * 40 + 120).astype(np.float32) if _takes_pixels(case) else x
        want = run_keras_reference(ref, x, case.feats)
    else:
        want = run_torch_reference(ref, x, case.feats)

    logits = logits_node(model.graph)
    nodes = {a: model.graph.aliases.get(a, a) for a in case.feats}
    got = model.apply(variables, x, outputs=[logits, *nodes.values()])
    deltas = {"logits": float(np.max(np.abs(np.asarray(got[logits]) - want["logits"])))}
    scale = {"logits": float(np.max(np.abs(want["logits"])))}
    for a, n in nodes.items():
        g, w = np.asarray(got[n]), want[a]
        assert g.shape == w.shape, f"{a}: archc {g.shape} vs reference {w.shape}"
        deltas[a] = float(np.max(np.abs(g - w)))
        scale[a] = float(np.max(np.abs(w)))
    result = {"case": case.id, "source": case.source, "reference": case.ref, "arch": case.arch,
              "input": f"{case.batch}x{case.size}x{case.size}x3", "max_delta": deltas, "max_abs_ref": scale,
              "tensors": len(report.loaded), "values": report.n_values,
              "seconds": round(time.perf_counter() - t0, 1)}
    if deltas["logits"] > limit(scale["logits"]):
        result["float64"] = float64_check(case, ref, x, np.asarray(got[logits]), want["logits"])
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{case.id}.json").write_text(json.dumps(result, indent=1))
    return result


def _check(case: Case, tmp_path: Path):
    if case.xfail:
        pytest.xfail(case.xfail)
    r = run_case(case, tmp_path)
    bad = within(r).get("bad")
    assert not bad, f"{case.id}: max |Δ| above {TOL} (relative where > 1): {bad} (reference magnitudes {r['max_abs_ref']})"


LIGHT = [c for c in CASES if not (c.heavy or c.slow)]
HEAVY = [c for c in CASES if c.heavy and not c.slow]
SLOW = [c for c in CASES if c.slow]


@pytest.mark.parametrize("case", LIGHT, ids=[c.id for c in LIGHT])
def test_parity(case, tmp_path):
    _check(case, tmp_path)


@pytest.mark.parametrize("case", HEAVY, ids=[c.id for c in HEAVY])
def test_parity_heavy(case, tmp_path):
    """The largest references (VGG-16, Inception, Wide ResNet): the longest runs of the suite."""
    _check(case, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW, ids=[c.id for c in SLOW])
def test_parity_slow(case, tmp_path):
    """The rest of the sweep (`pytest --slow`): the larger members of each family."""
    _check(case, tmp_path)


SWEPT_SOURCES = ("torchvision", "timm")    # Keras's twins: the Keras Cases (issue 19, part A)


def reference_twins() -> set:
    """(source, built-in) for every built-in that references/*.toml counts against a torchvision or
    timm constructor (its `reference`, or `timm` key), and every torchvision classification
    network that is a built-in."""
    import re
    import tomllib
    from archc.compiler import library
    constructor = re.compile(r"(torchvision\.models\.|timm )\w+")
    twins = set()
    for path in sorted((library.LIBRARY / "references").glob("*.toml")):
        for name, entry in tomllib.loads(path.read_text(encoding="utf-8")).items():
            for ref in (entry.get("reference", ""), entry.get("timm") and f"timm {entry['timm']}"):
                if ref and constructor.fullmatch(ref):
                    twins.add(("timm" if ref.startswith("timm ") else "torchvision", name))
    tv = pytest.importorskip("torchvision")
    twins |= {("torchvision", n) for n in set(tv.models.list_models(module=tv.models)) & set(library.names())}
    return twins


def test_sweep_covers_every_twin():
    """None missing: every built-in with a torchvision or timm twin has that source's mapping, and
    every classifier a torchvision or timm mapping lists has a Case of that source in the sweep
    (detectors are compared end to end in tests/test_detection_*.py and test_faster_rcnn.py, the
    segmenters, whose output is a map, in tests/test_segmenters.py)."""
    from archc.compiler.build import build_graph
    from archc.runtime.weights import sources_by_model

    def classifier(name):
        graph = build_graph(name)
        return "detect" not in graph.declarations and len(graph.output_shape) == 1

    mapped = {(s, name) for name, sources in sources_by_model().items() for s in sources if s in SWEPT_SOURCES
              and classifier(name)}
    assert reference_twins() - mapped == set(), "twins without a built-in mapping"
    assert mapped - {(c.source, c.arch) for c in CASES} == set(), "mapped built-ins without a parity Case"


# --------------------------------------------------------------------------------------------
# docs/weights.md's table
# --------------------------------------------------------------------------------------------
BEGIN, END = "<!-- parity-table:begin -->", "<!-- parity-table:end -->"


def render_table() -> str:
    rows = ["| reference | archc | tier | input | max \\|Δ logits\\| (max \\|logit\\|) | feature: max \\|Δ\\| | tolerance 1e-4 | tensors |",
            "|---|---|---|---|---|---|---|---|"]
    for c in CASES:
        tier = "slow" if c.slow else "default"
        f = RESULTS / f"{c.id}.json"
        if not f.exists():
            rows.append(f"| {c.source} {c.ref} | {c.arch} | {tier} | — | not run | | | |")
            continue
        r = json.loads(f.read_text())
        d = r["max_delta"]
        feats = ", ".join(f"{k}: {v:.1e}" for k, v in d.items() if k != "logits")
        verdict = within(r)
        if "bad" in verdict:
            tol = f"**fails**{': ' + c.xfail if c.xfail else ''}"
        else:
            rel = [k for k, v in verdict.items() if v == "rel"]
            tol = f"relative ({', '.join(rel)})" if rel else "absolute"
            if verdict.get("logits") == "f64":
                f64 = r["float64"]
                tol = (f"float32's limit: vs float64 archc {f64['archc']:.1e}, "
                       f"{c.source} float32 {f64['reference_float32']:.1e}")
        rows.append(f"| {c.source} {c.ref} | {c.arch} | {tier} | {r['input']} | {d['logits']:.1e} "
                    f"({r['max_abs_ref']['logits']:.2g}) | {feats} | {tol} | {r['tensors']} |")
    return "\n".join(rows)


def write_table(doc: Path = ROOT / "docs" / "weights.md") -> None:
    text = doc.read_text(encoding="utf-8")
    i, j = text.index(BEGIN) + len(BEGIN), text.index(END)
    doc.write_text(text[:i] + "\n" + render_table() + "\n" + text[j:], encoding="utf-8")


if __name__ == "__main__":       # python tests/test_weights_parity.py --table [--rerun] [CASE…]
    import tempfile
    jax.config.update("jax_default_matmul_precision", "highest")     # as the tests' fixture
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    rerun = "--rerun" in sys.argv
    for c in [BY_ID[a] for a in args] if args else CASES:      # the cases named, in that order
        if not rerun and not args and (RESULTS / f"{c.id}.json").exists():
            continue
        with tempfile.TemporaryDirectory() as d:
            try:
                r = run_case(c, Path(d))
                print(c.id, r["max_delta"], f"{r['seconds']} s", flush=True)
            except BaseException as e:      # noqa: BLE001 - a skipped or failing case stays 'not run'
                print(c.id, "FAILED:", type(e).__name__, str(e)[:2000], flush=True)
    if "--table" in sys.argv:
        write_table()
        print(render_table())
