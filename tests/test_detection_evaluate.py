"""COCO AP of detectors with pycocotools: `archc evaluate`'s numbers equal pycocotools run
independently on the detections it writes (COCO's results JSON); the detections are archc.detect's
in the original images' pixels, xywh, with the data's category ids; perfect detections score 1."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import archc
from archc.detection import evaluate as E
from archc.detection.coco import read_coco
from archc.runtime.variables_io import save_variables
from archc.testing.detection_shapes import write_shapes

ROOT = Path(__file__).resolve().parent.parent

# A small SSD-shaped detector for 3 shapes (+ background), at 64x64 (the images are 96x96).
TINY = """\
param classes = 4
input 64x64x3
f1: conv3(8, s=2) relu conv3(8, s=2) relu  # 16x16
f2: conv3(8, s=2) relu                     # 8x8
branch cls1: @f1 conv3(4 * classes)
branch box1: @f1 conv3(4 * 4)
branch cls2: @f2 conv3(6 * classes)
branch box2: @f2 conv3(6 * 4)
output cls1, box1, cls2, box2
detect_input(mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], fixed_size=[64, 64], size_divisible=1)
default_boxes(aspect_ratios=[[2], [2, 3]], steps=[4, 8])
detect(kind="ssd", scores=[@cls1, @cls2], boxes=[@box1, @box2], box_weights=[10, 10, 5, 5], \\
    score_thresh=0.2, nms_thresh=0.45, topk_candidates=50, detections_per_img=20, names="none")
"""


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "archc", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("deteval")
    val = write_shapes(d, "val", images=10, seed=7, category_ids=(3, 7, 11))
    spec = d / "tiny.arch"
    spec.write_text(TINY)
    model = archc.load(str(spec))
    weights = d / "tiny.safetensors"
    save_variables(model.init(seed=1), weights)
    return dict(dir=d, val=val, spec=spec, model=model, weights=weights)


def independent(gt_json, results_json):
    """pycocotools as its README runs it."""
    gt = COCO(str(gt_json))
    dt = gt.loadRes(str(results_json))
    ev = COCOeval(gt, dt, "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev


def _ground_truth_as_detections(data, jitter=None, rng=None):
    out = []
    for i in range(len(data)):
        t = data.targets(i)
        boxes = t["boxes"].astype(np.float64)
        scores = np.ones(len(boxes))
        if jitter is not None:
            boxes = boxes + rng.normal(0, jitter, boxes.shape)
            scores = rng.random(len(boxes))
            # a false positive of each image's first label, and a missed box
            if len(boxes):
                boxes = np.concatenate([boxes[1:], [[5, 5, 30, 30]]])
                scores = np.concatenate([scores[1:], [0.5]])
                t = {"labels": np.concatenate([t["labels"][1:], t["labels"][:1]])}
        out.append({"boxes": boxes, "scores": scores, "labels": t["labels"]})
    return out


def test_perfect_detections_score_one(setup, monkeypatch):
    data = read_coco(setup["val"])
    monkeypatch.setattr(E, "detections", lambda *a, **k: _ground_truth_as_detections(data))
    m = E.evaluate_detector(setup["model"], None, data)
    assert m["AP"] == 1.0 and m["AP50"] == 1.0 and m["AR100"] == 1.0
    assert m["per_class_AP"] == [1.0, 1.0, 1.0] and m["classes"] == ["circle", "square", "triangle"]


def test_ap_equals_pycocotools_on_the_written_results(setup, monkeypatch, tmp_path):
    data = read_coco(setup["val"])
    dets = _ground_truth_as_detections(data, jitter=2.0, rng=np.random.default_rng(0))
    monkeypatch.setattr(E, "detections", lambda *a, **k: dets)
    m = E.evaluate_detector(setup["model"], None, data, results_path=tmp_path / "r.json", pr_plot=tmp_path / "pr.png")
    ev = independent(setup["val"], tmp_path / "r.json")
    assert 0.1 < m["AP"] < 0.9                                       # a result with something to get wrong
    assert [m[k] for k in E.METRICS] == [float(v) for v in ev.stats]
    # per-class AP: each category alone, as pycocotools computes it with catIds=[id]
    for cid, ap in zip(data.category_ids, m["per_class_AP"]):
        one = COCOeval(ev.cocoGt, ev.cocoDt, "bbox")
        one.params.catIds = [cid]
        one.evaluate()
        one.accumulate()
        one.summarize()
        assert ap == pytest.approx(one.stats[0], abs=1e-12)
    assert (tmp_path / "pr.png").stat().st_size > 10_000


def test_cli_evaluate_equals_pycocotools_and_maps_back(setup, tmp_path):
    """The documented command: detections of a (random) detector on 96x96 images from its 64x64
    input, written as COCO results; pycocotools on that file gives the printed numbers."""
    res, pr = tmp_path / "dets.json", tmp_path / "pr.png"
    r = run_cli("evaluate", setup["spec"], "--weights", setup["weights"], "--data", setup["val"],
                "--json", "--detections", res, "--pr", pr, "--score-thresh", "0.05")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    results = json.loads(res.read_text())
    assert m["detections"] == len(results) > 0
    ev = independent(setup["val"], res)
    assert [m[k] for k in E.METRICS] == [float(v) for v in ev.stats]
    # the results are archc.detect's boxes (original pixels), xyxy -> xywh, label k -> ids[k - 1]
    data = read_coco(setup["val"])
    dets = archc.detect(setup["model"], str(setup["weights"]), [data.read(i) for i in range(len(data))],
                        score_thresh=0.05)
    expect = [{"image_id": e["id"], "category_id": [3, 7, 11][int(l) - 1],
               "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])], "score": float(s)}
              for e, d in zip(data.examples, dets) for b, s, l in zip(d["boxes"], d["scores"], d["labels"])]
    assert len(expect) == len(results)
    for a, b in zip(expect, results):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        np.testing.assert_allclose(a["bbox"], b["bbox"], rtol=0, atol=1e-4)
        assert a["score"] == pytest.approx(b["score"], abs=1e-6)
    assert max(b["bbox"][0] + b["bbox"][2] for b in results) > 64      # in the 96-pixel images, not the input
    r = run_cli("evaluate", setup["spec"], "--weights", setup["weights"], "--data", setup["val"])
    assert r.returncode == 0, r.stderr
    assert "AP50" in r.stdout and "per-class AP" in r.stdout and "circle" in r.stdout


def test_cli_evaluate_wrong_class_count(setup, tmp_path):
    other = tmp_path / "five.arch"
    other.write_text(TINY.replace("param classes = 4", "param classes = 6"))
    w = tmp_path / "five.safetensors"
    save_variables(archc.load(str(other)).init(seed=0), w)
    r = run_cli("evaluate", other, "--weights", w, "--data", setup["val"])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "the network has 5 classes" in r.stderr and "3 categories" in r.stderr and "classes=4" in r.stderr


def test_category_map_rules(setup):
    from types import SimpleNamespace
    data = read_coco(setup["val"])                                   # ids 3, 7, 11
    ssd = lambda c, names="none": SimpleNamespace(classes=c, decl=SimpleNamespace(names=names))  # noqa: E731
    assert E.category_map(ssd(4), data) == ([3, 7, 11], "labels 1..K in the order of the data's category ids")
    assert E.category_map(ssd(4), data, [11, 3, 7])[0] == [11, 3, 7]          # as archc train recorded
    ids, how = E.category_map(ssd(91, "coco"), data)                           # torchvision's COCO labels
    assert ids == list(range(1, 91)) and "category ids" in how
    yolo = SimpleNamespace(grid=SimpleNamespace(classes=3), decl=SimpleNamespace(names="none"))
    assert E.category_map(yolo, data)[0] == [3, 7, 11]                          # no background output
    with pytest.raises(E.DetectionEvalError, match="trained on category ids \\[5\\]"):
        E.category_map(ssd(4), data, [3, 5, 7])
    with pytest.raises(E.DetectionEvalError, match="the network has 20 classes"):
        E.category_map(ssd(21, "voc"), data)
