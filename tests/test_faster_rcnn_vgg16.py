"""The paper's Faster R-CNN on VGG-16 (fasterrcnn_vgg16.arch). torchvision ships no such model,
so its twin is assembled here from torchvision's own parts: vgg16().features[:30] (to conv5_3)
as the backbone, AnchorGenerator((128, 256, 512), (0.5, 1, 2)) on one level, RPNHead(512, 9),
torchvision.ops.roi_pool 7x7 at 1/16 in the box_roi_pool slot, TwoMLPHead(7·7·512, 4096) and
FastRCNNPredictor(4096, 21), with the paper's test-time settings (6000 RPN boxes before NMS,
300 proposals, NMS 0.3). Its parameter count is the reference; its weights (random, seed 0)
import into archc strictly; each stage is compared as for the torchvision built-ins, and
archc.detect runs end to end on a photo."""
from __future__ import annotations

from collections import OrderedDict

import jax.numpy as jnp
import numpy as np
import pytest

import archc
from archc.compiler.lower import run_graph
from archc.detection import anchors as anchor_lib
from archc.detection.api import class_names, detect_padded, detector_for

import test_faster_rcnn as mobilenet_tests
from test_detection_ssd import assert_same_detections

torch = pytest.importorskip("torch")
tv = pytest.importorskip("torchvision")
from torchvision.models.detection import FasterRCNN  # noqa: E402
from torchvision.models.detection.anchor_utils import AnchorGenerator  # noqa: E402
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead  # noqa: E402

pytestmark = pytest.mark.usefixtures("highest_precision")
NAME = "fasterrcnn_vgg16"
SIZES = dict(min_size=320, max_size=480)     # the parity tests' transform (the photo: the paper's 600/1000)

# the twin's state-dict names -> archc's nodes: the 13 convs of the backbone in order, the rest by name
RULES = {
    "source": "torchvision", "layout": "torch",
    "rename": {"rpn.head.conv.0.0": "rpn.conv1", "rpn.head.cls_logits": "rpn_cls.conv1",
               "rpn.head.bbox_pred": "rpn_box.conv1", "roi_heads.box_head.fc6": "fc6.fc1",
               "roi_heads.box_head.fc7": "fc7.fc1", "roi_heads.box_predictor.cls_score": "cls_score.fc1",
               "roi_heads.box_predictor.bbox_pred": "bbox_pred.fc1"},
    "sequence": [{"from": "backbone.*", "to": "**"}],
}


class RoIPool(tv.ops.MultiScaleRoIAlign):
    """Fast R-CNN's RoI max pooling in MultiScaleRoIAlign's place (FasterRCNN checks the type)."""

    def __init__(self):
        super().__init__(["0"], 7, 2)

    def forward(self, features, proposals, image_shapes):
        return tv.ops.roi_pool(features["0"], proposals, (7, 7), 1 / 16)


def twin(classes=21, **kw):
    backbone = tv.models.vgg16().features[:30]          # conv1_1 .. conv5_3 + ReLU; pool5 dropped
    backbone.out_channels = 512
    return FasterRCNN(backbone, num_classes=None, rpn_anchor_generator=AnchorGenerator(((128, 256, 512),),
                                                                                        ((0.5, 1.0, 2.0),)),
                      box_roi_pool=RoIPool(), box_head=TwoMLPHead(512 * 7 * 7, 4096),
                      box_predictor=FastRCNNPredictor(4096, classes), rpn_pre_nms_top_n_test=6000,
                      rpn_post_nms_top_n_test=300, box_nms_thresh=0.3, size_divisible=16, **kw)


def test_count_is_the_twins():
    tm = twin()
    s = archc.load(NAME).summary()
    assert s["trainable_params"] == sum(p.numel() for p in tm.parameters()) == 137_073_622
    assert s["non_trainable_params"] == 0
    # the paper's 2k softmax objectness would add 512·9 + 9 weights to the RPN's cls layer
    paper_rpn = 3 * 3 * 512 * 512 + 512 + (512 + 1) * (2 + 4) * 9
    assert sum(p.numel() for p in tm.rpn.head.parameters()) == paper_rpn - 512 * 9 - 9


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    tm = twin(box_score_thresh=0.0, **SIZES).eval()
    model = archc.load(NAME, score_thresh=0.0, res=320, **SIZES)
    variables, report = archc.import_weights(model, {k: v.numpy() for k, v in tm.state_dict().items()},
                                             rules=RULES)
    return tm, model, variables, report


def test_import_is_strict_and_complete(pair):
    tm, _, _, report = pair
    n = len(tm.state_dict())
    assert f"{n} tensors -> {n} variables" in str(report)


@pytest.fixture(scope="module")
def stages(pair):
    tm, model, variables, _ = pair
    rng = np.random.default_rng(0)
    images = [rng.uniform(0, 1, (320, 320, 3)).astype(np.float32), rng.uniform(0, 1, (250, 410, 3)).astype(np.float32)]
    # the twin's backbone is one map (conv5_3), which FasterRCNN names "0"
    return mobilenet_tests.torchvision_stages(tm, model, variables, images,
                                              features=lambda t: OrderedDict([("0", tm.backbone(t))]))


def _nhwc(t):
    return t.permute(0, 2, 3, 1).numpy()


def test_anchors_are_torchvisions(stages):
    """The paper's 9 anchors at stride 16 on the padded batch (320x320 and 250x410 -> 292x480:
    the batch is 320x480, a 20x30 conv5_3 grid), bit for bit."""
    s = stages
    grid = tuple(s["feats"]["0"].shape[-2:])
    assert s["batch"].shape[1:3] == tuple(s["il"].tensors.shape[-2:]) == (320, 480) and grid == (20, 30)
    d = s["det"].anchor_decl
    mine = anchor_lib.grid_anchors([grid], tuple(s["batch"].shape[1:3]), d.sizes, d.aspect_ratios)
    assert mine.shape == (20 * 30 * 9, 4)
    for theirs in s["anchors"]:
        np.testing.assert_array_equal(np.asarray(mine), theirs.numpy())


def test_backbone_and_rpn_head_match(stages):
    s = stages
    np.testing.assert_allclose(np.asarray(s["batch"]), _nhwc(s["il"].tensors), atol=1e-6)
    det = s["det"]
    out, _ = run_graph(s["model"].program, s["variables"], {"input": s["batch"]},
                       outputs=("conv5_3",) + det.rpn.scores + det.rpn.boxes)
    # random weights without BN shrink the signal (conv5_3 up to ~1.3, RPN outputs ~0.07): the
    # tolerances are relative to that (measured 2.0e-6 and 1.6e-7)
    want = _nhwc(s["feats"]["0"])
    np.testing.assert_allclose(np.asarray(out["conv5_3"]), want, rtol=0, atol=1e-5 * max(1, np.abs(want).max()))
    np.testing.assert_allclose(np.asarray(out[det.rpn.scores[0]]), _nhwc(s["objectness"][0]), rtol=0, atol=2e-6)
    np.testing.assert_allclose(np.asarray(out[det.rpn.boxes[0]]), _nhwc(s["deltas"][0]), rtol=0, atol=2e-6)


@pytest.mark.isa
def test_filter_proposals_on_torchvision_head_outputs(stages):
    """One level, 6000 boxes before NMS (all of them here: 20·30·9 = 5,400), 300 after; both
    libraries in float64 (test_faster_rcnn.rpn_proposals_in_float64)."""
    got, want = mobilenet_tests.rpn_proposals_in_float64(stages)
    for g, w in zip(got, want):
        assert g.shape == w.shape == (300, 4)
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-9)


def test_box_head_on_torchvision_proposals(stages):
    s = stages
    det = s["det"]
    rois = np.stack([p.numpy() for p in s["proposals"]])
    out, _ = run_graph(s["model"].program, s["variables"], {"input": s["batch"], "rois": rois},
                       outputs=("cls_score", "bbox_pred"))
    # logits and codes of ~0.1 (random weights): measured 1.4e-7
    np.testing.assert_allclose(np.asarray(out["cls_score"]).reshape(-1, det.classes), s["logits"].numpy(), rtol=0,
                               atol=2e-6)
    np.testing.assert_allclose(np.asarray(out["bbox_pred"]).reshape(-1, 4 * det.classes), s["codes"].numpy(), rtol=0,
                               atol=2e-6)


@pytest.mark.isa
def test_postprocess_detections_on_torchvision_head_outputs(stages):
    """In float64 on torchvision's own box-head outputs and proposals; detections paired one to
    one (exactly equal scores are ordered by torch's sort)."""
    got, (boxes, scores, labels) = mobilenet_tests.postprocess_torchvision_head_outputs(stages)
    for i in range(2):
        n = int(got.count[i])
        assert n == len(boxes[i]) == 100
        ours = {k: np.asarray(getattr(got, k)[i, :n]) for k in ("boxes", "scores", "labels")}
        assert_same_detections(ours, {"boxes": boxes[i], "scores": scores[i], "labels": labels[i]})


def test_detect_on_a_photo():
    """archc.detect with the paper's settings (600 / 1000, 6000 → 300 proposals) on
    scikit-image's astronaut, random weights: padded outputs with a count, boxes inside the
    photo, VOC names. (~35 s on 2 shared cores, mostly compiling; at 320 it costs as much.)"""
    data = pytest.importorskip("skimage.data")
    photo = data.astronaut()                                    # 512x512x3 uint8
    model = archc.load(NAME, score_thresh=0.0)
    variables = model.init(0)
    det = detector_for(model)
    padded = detect_padded(det, variables, [photo.astype(np.float32) / 255])
    assert padded.boxes.shape == (1, 100, 4) and padded.scores.shape == padded.labels.shape == (1, 100)
    n = int(padded.count[0])
    assert 0 < n <= 100
    assert (np.asarray(padded.labels[0, n:]) == -1).all() and (np.asarray(padded.scores[0, n:]) == 0).all()
    out = archc.detect(model, variables, photo, score_thresh=0.0)[0]
    assert len(out["boxes"]) == n
    b = out["boxes"]
    assert (b[:, 0] >= 0).all() and (b[:, 2] <= 512 + 1e-3).all() and (b[:, 1] >= 0).all() and (b[:, 3] <= 512 + 1e-3).all()
    assert np.all(np.diff(out["scores"]) <= 0)
    assert out["names"] == [class_names("voc")[k] for k in out["labels"]] and (out["labels"] >= 1).all()
