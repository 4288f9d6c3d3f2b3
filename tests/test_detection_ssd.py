"""SSD300-VGG16 end to end against torchvision's ssd300_vgg16 (random weights imported through
the shipped mapping, 5 classes so that detections survive the default thresholds): the same
detections from the same images (square, and non-square so that the resize runs), and the
post-processing alone on torchvision's own head outputs.

Robust without loosening: torchvision's order among detections whose float32 scores are equal
is its sort's, not a rule (random weights saturate the softmax: 0.99951947 twice happens), so
detections are paired one to one by label, box and score, and the count, every label, box
(<= 1e-3 px) and score (<= 1e-5) must agree; the scores must come out in descending order."""
import jax
import numpy as np
import pytest
import torch
import torchvision

import archc
from archc.detection import api
from archc.detection.transforms import rescale_boxes, transform
from archc.runtime.weights import import_weights

CLASSES = 5
BOX_TOL, SCORE_TOL = 1e-3, 1e-5


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
    images = [rng.uniform(0, 1, (300, 300, 3)).astype(np.float32),
              rng.uniform(0, 1, (240, 400, 3)).astype(np.float32)]
    seen = {}
    staged = tm.postprocess_detections

    def capture(head_outputs, image_anchors, image_shapes):      # torchvision's own intermediates
        seen.update(heads=head_outputs, sizes=image_shapes)
        out = staged(head_outputs, image_anchors, image_shapes)
        seen["raw"] = [dict(d) for d in out]        # transform.postprocess rescales the dicts in place
        return out
    tm.postprocess_detections = capture
    try:
        with torch.no_grad():
            end_to_end = tm([torch.from_numpy(im.transpose(2, 0, 1)) for im in images])
    finally:
        del tm.postprocess_detections
    return dict(tm=tm, model=model, variables=variables, images=images, ref=end_to_end, path=path, **seen)


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
    logits = np.concatenate([api._flatten_head(np.asarray(outs[n]), CLASSES) for n in det.decl.scores], 1)
    codes = np.concatenate([api._flatten_head(np.asarray(outs[n]), 4) for n in det.decl.boxes], 1)
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


def test_postprocess_on_torchvisions_head_outputs(ssd):
    det = api.detector_for(ssd["model"])
    outs = _torch_heads_as_outputs(det, ssd["heads"])
    sizes = np.asarray(ssd["sizes"], np.int32)
    d = jax.jit(det.postprocess, static_argnums=2)(outs, sizes, (300, 300))
    for i, theirs in enumerate(ssd["raw"]):
        n = int(d.count[i])
        ours = {"boxes": np.asarray(d.boxes[i, :n]), "scores": np.asarray(d.scores[i, :n]),
                "labels": np.asarray(d.labels[i, :n])}
        box, score = assert_same_detections(ours, theirs)
        assert box <= 1e-4 and score <= 1e-6, (box, score)
        assert (np.asarray(d.labels[i, n:]) == -1).all()


def test_end_to_end_square_and_non_square(ssd, highest_precision):
    ours = archc.detect(ssd["model"], ssd["variables"], ssd["images"])
    assert [len(o["boxes"]) for o in ours] == [len(r["boxes"]) for r in ssd["ref"]] == [200, 200]
    for o, r in zip(ours, ssd["ref"]):
        assert_same_detections(o, r)
        assert o["boxes"].dtype == np.float32 and o["names"][0].startswith("class ")


def test_overrides_and_rescaling(ssd, highest_precision):
    """A threshold given to detect() acts as torchvision's attribute of the same name."""
    tm = ssd["tm"]
    tm.score_thresh, tm.detections_per_img = 0.5, 50
    try:
        with torch.no_grad():
            ref = tm([torch.from_numpy(ssd["images"][1].transpose(2, 0, 1))])[0]
    finally:
        tm.score_thresh, tm.detections_per_img = 0.01, 200
    ours = archc.detect(ssd["model"], ssd["variables"], ssd["images"][1], score_thresh=0.5, detections_per_img=50)[0]
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
