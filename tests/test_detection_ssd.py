"""SSD300-VGG16 end to end against torchvision's ssd300_vgg16 (random weights imported through
the shipped mapping, 5 classes so that detections survive the default thresholds): the same
detections from the same images (square, and non-square so that the resize runs), and the
post-processing alone on torchvision's own head outputs.

Well posed on any CPU: every comparison that crosses a discrete step (the score threshold, the
per-class top-k, NMS, the final top-k) runs both libraries in float64, where float noise
(~1e-16 relative) is far below any margin that decides them; in float32 the kernels XLA and
PyTorch pick for the CPU's instruction set (AVX-512, AVX2, FMA or not) round differently, and
random heads give scores that tie to float32 precision. Detections are still paired one to one
by label, box and score (torchvision's order among exactly equal scores is its sort's, not a
rule), and the count, every label, box and score must agree; scores in descending order."""
import copy

import jax
import numpy as np
import pytest
import torch
import torchvision

import archc
from archc.detection import api
from archc.detection.ssd import flatten_head
from archc.detection.transform import rescale_boxes, transform
from archc.runtime.weights import import_weights

CLASSES = 5
# float64 on both sides: measured differences are ~1e-13 px and ~1e-16; the bounds keep a margin
BOX_TOL, SCORE_TOL = 1e-9, 1e-11


@pytest.fixture(scope="module")
def ssd(tmp_path_factory):
    torch.manual_seed(0)
    tm = torchvision.models.detection.ssd300_vgg16(weights=None, weights_backbone=None, num_classes=CLASSES).eval()
    path = tmp_path_factory.mktemp("ssd") / "ssd.pth"
    torch.save(tm.state_dict(), path)
    model = archc.load("ssd300_vgg16", classes=CLASSES)
    variables, report = import_weights(model, path, source="torchvision")
    assert report.ok and not report.unexpected and not report.missing
    rng = np.random.default_rng(0)
    images = [rng.uniform(0, 1, (300, 300, 3)), rng.uniform(0, 1, (240, 400, 3))]     # float64
    t64 = copy.deepcopy(tm).double()
    seen = {}
    staged = t64.postprocess_detections

    def capture(head_outputs, image_anchors, image_shapes):      # torchvision's own intermediates
        seen.update(heads=head_outputs, sizes=image_shapes)
        out = staged(head_outputs, image_anchors, image_shapes)
        seen["raw"] = [dict(d) for d in out]        # transform.postprocess rescales the dicts in place
        return out
    t64.postprocess_detections = capture
    try:
        with torch.no_grad():
            end_to_end = t64([torch.from_numpy(im.transpose(2, 0, 1)) for im in images])
    finally:
        del t64.postprocess_detections
    v64 = jax.tree.map(lambda a: np.asarray(a, np.float64), variables)
    with torch.no_grad():
        ref32 = tm([torch.from_numpy(im.astype(np.float32).transpose(2, 0, 1)) for im in images])
    return dict(tm=tm, t64=t64, model=model, variables=variables, v64=v64, images=images, ref=end_to_end,
                ref32=ref32, path=path, **seen)


def assert_same_detections(ours: dict, theirs: dict):
    tb, ts, tl = (theirs[k].numpy() for k in ("boxes", "scores", "labels"))
    ob, os_, ol = ours["boxes"], ours["scores"], ours["labels"]
    assert len(ob) == len(tb), (len(ob), len(tb))
    assert np.all(np.diff(os_) <= 0), "scores must be in descending order"
    free = np.ones(len(ob), bool)
    worst_box = worst_score = 0.0
    for i in range(len(tb)):
        d_box = np.abs(ob - tb[i]).max(1)
        d_score = np.abs(os_ - ts[i])
        cand = np.nonzero(free & (ol == tl[i]) & (d_box <= BOX_TOL) & (d_score <= SCORE_TOL))[0]
        assert len(cand), f"torchvision's detection {i} (label {tl[i]}, score {ts[i]}, box {tb[i]}) has no match"
        j = cand[np.argmin(d_box[cand])]
        free[j] = False
        worst_box, worst_score = max(worst_box, d_box[j]), max(worst_score, d_score[j])
    return worst_box, worst_score


def test_heads_match(ssd, highest_precision):
    det = api.detector_for(ssd["model"])
    batch, _ = transform(ssd["images"], det.transform_spec)
    outs = ssd["model"].apply(ssd["variables"], batch, outputs=det.heads)
    logits = np.concatenate([flatten_head(np.asarray(outs[n]), CLASSES) for n in det.decl.scores], 1)
    codes = np.concatenate([flatten_head(np.asarray(outs[n]), 4) for n in det.decl.boxes], 1)
    theirs_l, theirs_c = ssd["heads"]["cls_logits"].numpy(), ssd["heads"]["bbox_regression"].numpy()
    assert logits.shape == theirs_l.shape == (2, 8732, CLASSES)
    for a, b in ((logits, theirs_l), (codes, theirs_c)):
        assert np.abs(a - b).max() <= 1e-4 * max(1.0, np.abs(b).max())


def _torch_heads_as_outputs(det, heads):
    """torchvision's flattened (B, N, K) head outputs back as archc's per-level NHWC tensors."""
    outs, start = {}, 0
    for level, (n_cls, n_box) in enumerate(zip(det.decl.scores, det.decl.boxes)):
        b = heads["cls_logits"].shape[0]
        h, w = det.graph.nodes[n_cls].shape[:2]
        a = det.per_location[level]
        stop = start + h * w * a
        outs[n_cls] = heads["cls_logits"][:, start:stop].reshape(b, h, w, a * CLASSES).numpy()
        outs[n_box] = heads["bbox_regression"][:, start:stop].reshape(b, h, w, a * 4).numpy()
        start = stop
    assert start == heads["cls_logits"].shape[1]
    return outs


@pytest.mark.isa
def test_postprocess_on_torchvisions_head_outputs(ssd):
    """The post-processing alone, in float64, on torchvision's own float64 head outputs."""
    det = api.detector_for(ssd["model"])
    with jax.enable_x64(True):
        outs = _torch_heads_as_outputs(det, ssd["heads"])
        assert all(v.dtype == np.float64 for v in outs.values())
        sizes = np.asarray(ssd["sizes"], np.int32)
        d = jax.jit(det.postprocess, static_argnums=2)(outs, sizes, (300, 300))
        assert d.boxes.dtype == np.float64
        for i, theirs in enumerate(ssd["raw"]):
            n = int(d.count[i])
            ours = {"boxes": np.asarray(d.boxes[i, :n]), "scores": np.asarray(d.scores[i, :n]),
                    "labels": np.asarray(d.labels[i, :n])}
            assert_same_detections(ours, theirs)
            assert (np.asarray(d.labels[i, n:]) == -1).all()


def _detect64(ssd, images, **overrides):
    with jax.enable_x64(True):
        return archc.detect(ssd["model"], ssd["v64"], images, **overrides)


@pytest.mark.isa
def test_end_to_end_square_and_non_square(ssd, highest_precision):
    ours = _detect64(ssd, ssd["images"])
    assert [len(o["boxes"]) for o in ours] == [len(r["boxes"]) for r in ssd["ref"]] == [200, 200]
    for o, r in zip(ours, ssd["ref"]):
        assert_same_detections(o, r)
        assert o["boxes"].dtype == np.float64 and o["names"][0].startswith("class ")


@pytest.mark.isa
def test_end_to_end_in_float32(ssd, highest_precision):
    """The float32 pipeline (what a user runs) agrees with torchvision's in float32 where float32
    cannot decide a discrete step: each image's best detection (no box above it to suppress it)
    is one of torchvision's detections scoring within float32's score tolerance of the best,
    the group of near-ties that float32 may order either way (saturated softmax scores: 6 within
    1e-5 of the best in the first image)."""
    ours = archc.detect(ssd["model"], ssd["variables"], [im.astype(np.float32) for im in ssd["images"]])
    for o, r in zip(ours, ssd["ref32"]):
        assert o["boxes"].dtype == np.float32 and len(o["boxes"]) == 200
        assert np.all(np.diff(o["scores"]) <= 0)
        ts = r["scores"].numpy()
        tied = np.nonzero(ts >= ts[0] - 1e-5)[0]
        d_box = np.abs(r["boxes"].numpy()[tied] - o["boxes"][0]).max(1)
        match = tied[(d_box <= 1e-3) & (np.abs(ts[tied] - o["scores"][0]) <= 1e-5)
                     & (r["labels"].numpy()[tied] == o["labels"][0])]
        assert len(match) == 1, (o["boxes"][0], o["scores"][0], r["boxes"][:3], ts[:3])


@pytest.mark.isa
def test_overrides_and_rescaling(ssd, highest_precision):
    """A threshold given to detect() acts as torchvision's attribute of the same name."""
    tm = ssd["t64"]
    tm.score_thresh, tm.detections_per_img = 0.5, 50
    try:
        with torch.no_grad():
            ref = tm([torch.from_numpy(ssd["images"][1].transpose(2, 0, 1))])[0]
    finally:
        tm.score_thresh, tm.detections_per_img = 0.01, 200
    ours = _detect64(ssd, ssd["images"][1], score_thresh=0.5, detections_per_img=50)[0]
    assert len(ref["boxes"]) == 50
    assert_same_detections(ours, ref)
    assert float(np.asarray(rescale_boxes(np.ones((1, 4), np.float32), (300, 300), (240, 400)))[0, 0]) == np.float32(400) / np.float32(300)


def test_import_names_the_class_count(ssd):
    """A 5-class checkpoint into the 91-class default: the heads' A·classes channels point at
    classes=5, which the error says (the CLI takes it: tests/test_faster_rcnn.py)."""
    from archc.runtime.weights import WeightsError
    with pytest.raises(WeightsError) as e:
        import_weights(archc.load("ssd300_vgg16"), ssd["path"], source="torchvision")
    assert "shape mismatch" in str(e.value)
    assert "the checkpoint has 5 classes: load the network with archc.load('ssd300_vgg16', classes=5)" in str(e.value)
