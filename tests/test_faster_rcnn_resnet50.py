"""Faster R-CNN ResNet-50 FPN against torchvision with random weights (seed 0, randomised BN
statistics and affine, 5 classes, box_score_thresh 0), at min_size 320 / max_size 400 so that CI
can afford it: parameter counts (nn.BatchNorm2d and the COCO checkpoint's FrozenBatchNorm2d
layout), the strict import of both layouts, the FPN and RPN head (also on unpadded inputs, where
the top-down upsampling is not an exact doubling), the box head on torchvision's proposals, and
the discrete stages on torchvision's own inputs. The stages themselves are test_faster_rcnn.py's
(imported: its `stages` fixture runs on this module's `pair`)."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import archc
from archc.compiler.lower import run_graph

import test_faster_rcnn as mobilenet_tests
from test_detection_ssd import assert_same_detections

torch = pytest.importorskip("torch")
D = pytest.importorskip("torchvision.models.detection")

pytestmark = pytest.mark.usefixtures("highest_precision")
NAME = "fasterrcnn_resnet50_fpn"
SIZES = dict(min_size=320, max_size=400)
stages = mobilenet_tests.stages     # the same stages (a 320x320 and a 240x400 image), on this `pair`


def _randomise_bn(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.normal_(0, 0.1, generator=g)
            mod.running_var.uniform_(0.5, 2.0, generator=g)
            mod.weight.data.uniform_(0.5, 1.5, generator=g)
            mod.bias.data.normal_(0, 0.1, generator=g)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    torch.manual_seed(0)
    tm = D.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=5, box_score_thresh=0.0,
                                   **SIZES).eval()
    _randomise_bn(tm)
    path = tmp_path_factory.mktemp("r50") / "model.pth"
    torch.save(tm.state_dict(), path)
    model = archc.load(NAME, classes=5, score_thresh=0.0, res=320, **SIZES)
    variables, report = archc.import_weights(model, path, source="torchvision")
    return tm, model, variables, report


def _frozen_bn_twin(classes=91):
    """fasterrcnn_resnet50_fpn as its COCO weights build it (FrozenBatchNorm2d, trainable layers 3),
    without downloading them."""
    from torchvision.models import resnet50
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.misc import FrozenBatchNorm2d
    return D.FasterRCNN(_resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), 3), classes)


def test_counts_match_torchvision():
    s = archc.load(NAME).summary()
    tm = D.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    running = sum(v.numel() for k, v in tm.state_dict().items() if "running" in k)
    assert s["trainable_params"] == sum(p.numel() for p in tm.parameters()) == 41_808_406
    assert s["non_trainable_params"] == running == 53_120
    # with FrozenBatchNorm2d the scales and shifts are buffers: the count the COCO model reports
    frozen = _frozen_bn_twin()
    affine = sum(v.numel() for k, v in frozen.state_dict().items() if k.endswith(("bn1.weight", "bn2.weight",
                 "bn3.weight", "downsample.1.weight", "bn1.bias", "bn2.bias", "bn3.bias", "downsample.1.bias")))
    assert sum(p.numel() for p in frozen.parameters()) == s["trainable_params"] - affine == 41_755_286


def test_import_is_strict_and_complete(pair, tmp_path):
    tm, model, variables, report = pair
    n = sum(1 for k in tm.state_dict() if not k.endswith("num_batches_tracked"))
    assert f"{n} tensors -> {n} variables" in str(report)
    # the COCO checkpoint's layout: FrozenBatchNorm2d buffers, no num_batches_tracked
    torch.manual_seed(0)
    path = tmp_path / "frozen.pth"
    torch.save(_frozen_bn_twin(5).state_dict(), path)
    _, report = archc.import_weights(model, path, source="torchvision")
    assert f"{n} tensors -> {n} variables" in str(report)


def _nhwc(t):
    return t.permute(0, 2, 3, 1).numpy()


def test_fpn_and_rpn_head_match(stages):
    s = stages
    det = s["det"]
    np.testing.assert_allclose(np.asarray(s["batch"]), _nhwc(s["il"].tensors), atol=1e-6)
    names = ("p0", "p1", "p2", "p3", "pool") + det.rpn.scores + det.rpn.boxes
    out, _ = run_graph(s["model"].program, s["variables"], {"input": s["batch"]}, outputs=names)
    for mine, theirs in zip(names[:5], ("0", "1", "2", "3", "pool")):
        want = _nhwc(s["feats"][theirs])
        np.testing.assert_allclose(np.asarray(out[mine]), want, rtol=0, atol=1e-4 * max(1, np.abs(want).max()))
    for k, name in enumerate(det.rpn.scores):
        np.testing.assert_allclose(np.asarray(out[name]), _nhwc(s["objectness"][k]), rtol=0, atol=1e-4)
    for k, name in enumerate(det.rpn.boxes):
        np.testing.assert_allclose(np.asarray(out[name]), _nhwc(s["deltas"][k]), rtol=0, atol=1e-4)


@pytest.mark.slow     # ~25 s on 2 shared cores; the op itself at odd sizes: tests/test_upsample_size.py
def test_fpn_on_unpadded_inputs(pair):
    """Inputs not padded to 32 (a user running the network on a raw 250x250 or 203x317 tensor):
    layer1 is 63 and layer2 32 on a side, so the top-down path resizes 32 -> 63, where only
    torchvision's floor rule gives its result."""
    tm, model, variables, _ = pair
    rng = np.random.default_rng(2)
    for h, w in ((250, 250), (203, 317)):
        x = rng.standard_normal((1, h, w, 3)).astype(np.float32)
        with torch.no_grad():
            feats = tm.backbone(torch.from_numpy(x).permute(0, 3, 1, 2))
        assert feats["0"].shape[-2] != 2 * feats["1"].shape[-2]
        out, _ = run_graph(model.program, variables, {"input": x}, outputs=("p0", "p1", "p2", "p3", "pool"))
        for mine, theirs in zip(("p0", "p1", "p2", "p3", "pool"), ("0", "1", "2", "3", "pool")):
            want = _nhwc(feats[theirs])
            np.testing.assert_allclose(np.asarray(out[mine]), want, rtol=0, atol=1e-4 * max(1, np.abs(want).max()))


def test_box_head_on_torchvision_proposals(stages):
    """Class logits and box codes on torchvision's proposals (MultiScaleRoIAlign over four levels,
    TwoMLPHead, the predictor): ≤ 1e-4 (measured 3.4e-5 on logits up to 14: 50 layers of float32
    before fc6's sum over 12,544 pooled values, where the MobileNet test holds 1e-5)."""
    mobilenet_tests.check_box_head_on_torchvision_proposals(stages, atol=1e-4, rtol=0)


@pytest.mark.isa
def test_rpn_filter_proposals_on_torchvision_head_outputs(stages):
    mobilenet_tests.test_rpn_filter_proposals_on_torchvision_head_outputs(stages)


@pytest.mark.isa
def test_postprocess_detections_on_torchvision_head_outputs(stages):
    """RoIHeads.postprocess_detections on torchvision's own box-head outputs and proposals, both
    in float64: the same count, and detections paired one to one by label, box and score.
    Paired, not compared row by row: random weights give exactly equal scores (two detections of
    one class at 0.9999858 in the first image, rows 11 and 12), whose order is torch's sort's, not a rule."""
    got, (boxes, scores, labels) = mobilenet_tests.postprocess_torchvision_head_outputs(stages)
    det = stages["det"]
    for i in range(2):
        n = int(got.count[i])
        assert n == len(boxes[i]) == det.decl.detections_per_img
        ours = {k: np.asarray(getattr(got, k)[i, :n]) for k in ("boxes", "scores", "labels")}
        assert_same_detections(ours, {"boxes": boxes[i], "scores": scores[i], "labels": labels[i]})


@pytest.mark.slow     # another compile of the backbone (~20 s)
def test_coco_layout_with_eps_zero(tmp_path):
    """The COCO checkpoint's model: FrozenBatchNorm2d with eps 0 (torchvision's overwrite_eps
    when it loads those weights). Small running variances make eps 1e-5 visible; with
    bn_eps=0 the FPN outputs agree."""
    from torchvision.models.detection._utils import overwrite_eps
    torch.manual_seed(0)
    tm = _frozen_bn_twin(5).eval()
    overwrite_eps(tm, 0.0)
    g = torch.Generator().manual_seed(3)
    for mod in tm.modules():
        if type(mod).__name__ == "FrozenBatchNorm2d":
            mod.running_mean.normal_(0, 0.1, generator=g)
            mod.running_var.uniform_(1e-4, 1e-2, generator=g)     # eps 1e-5 would move these by 0.05–5 %
            mod.weight.uniform_(0.02, 0.1, generator=g)           # keeps 53 such layers from blowing up
    path = tmp_path / "coco_layout.pth"
    torch.save(tm.state_dict(), path)
    model = archc.load(NAME, classes=5, res=256, bn_eps=0.0)
    variables, _ = archc.import_weights(model, path, source="torchvision")
    x = np.random.default_rng(4).standard_normal((1, 256, 256, 3)).astype(np.float32)
    with torch.no_grad():
        feats = tm.backbone(torch.from_numpy(x).permute(0, 3, 1, 2))
    out, _ = run_graph(model.program, variables, {"input": x}, outputs=("p0", "pool"))
    for mine, theirs in (("p0", "0"), ("pool", "pool")):
        want = _nhwc(feats[theirs])
        np.testing.assert_allclose(np.asarray(out[mine]), want, rtol=0, atol=1e-4 * max(1, np.abs(want).max()))


@pytest.mark.isa
def test_detect_end_to_end_in_float64(pair):
    """archc.detect against torchvision's forward, both in float64 (test_faster_rcnn.py's
    comparison: float noise cannot reach the top-k, threshold and NMS decisions): every detection
    the same, in the same order (measured: 100 per image, boxes 1.0e-11 px, scores 4.4e-16)."""
    tm, model, variables, _ = pair
    got, want = mobilenet_tests._end_to_end_float64(tm, model, variables)
    assert got[0]["boxes"].dtype == np.float64
    mobilenet_tests._assert_same_detections(got, want, box_tol=1e-9, score_tol=1e-11)
