"""`archc detect` and archc.detect on a small SSD-shaped network (the description in the .arch
file): pictures and JSON written, and bad inputs (an image that does not decode, weights of
another size, a network that is no detector, a bad threshold) reported without a traceback;
zero detections is an answer, not an error. Declaration errors are located in the file."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import archc
from archc.detection import api
from archc.runtime.variables_io import save_variables
from archc.spec.source import ArchError

ROOT = Path(__file__).resolve().parent.parent

TINY = """\
param classes = 3
param score_thresh = 0.01
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
    score_thresh=score_thresh, nms_thresh=0.45, topk_candidates=50, detections_per_img=20, names="voc")
"""


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "archc", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("det")
    spec = d / "tiny.arch"
    spec.write_text(TINY)
    model = archc.load(str(spec))
    weights = d / "tiny.safetensors"
    save_variables(model.init(seed=1), weights)
    other = d / "other.safetensors"
    save_variables(archc.load(str(spec), classes=5).init(seed=1), other)
    from PIL import Image
    rng = np.random.default_rng(0)
    photo = d / "photo.png"
    Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(photo)
    broken = d / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return dict(dir=d, spec=spec, model=model, weights=weights, other=other, photo=photo, broken=broken)


def test_detect_api_shapes_and_names(tiny):
    rng = np.random.default_rng(1)
    ims = [rng.uniform(0, 1, (64, 64, 3)).astype(np.float32), rng.integers(0, 255, (50, 80, 3), dtype=np.uint8)]
    out = archc.detect(tiny["model"], str(tiny["weights"]), ims)
    assert len(out) == 2
    for o, im in zip(out, ims):
        n = len(o["boxes"])
        assert 0 < n <= 20 and o["boxes"].shape == (n, 4) and o["scores"].shape == (n,) and o["labels"].shape == (n,)
        assert set(o["labels"]) <= {1, 2} and set(o["names"]) <= {"aeroplane", "bicycle"}
        h, w = im.shape[:2]
        assert (o["boxes"] >= 0).all() and (o["boxes"][:, 0::2] <= w).all() and (o["boxes"][:, 1::2] <= h).all()
    assert len(archc.detect(tiny["model"], str(tiny["weights"]), ims[0], detections_per_img=3)[0]["boxes"]) == 3


@pytest.mark.parametrize("kwargs,message", [
    (dict(score_thresh=2.0), "score_thresh must be in [0, 1]"),
    (dict(topk_candidates=0), "topk_candidates must be a positive integer"),
    (dict(iou=0.5), "unknown detection setting(s) iou"),
])
def test_bad_settings(tiny, kwargs, message):
    with pytest.raises(api.DetectError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        archc.detect(tiny["model"], str(tiny["weights"]), np.zeros((8, 8, 3), np.float32), **kwargs)


def test_not_a_detector_and_bad_images(tiny, tmp_path):
    (tmp_path / "plain.arch").write_text("input 8x8x3\nconv3(4)\n")
    plain = archc.load(str(tmp_path / "plain.arch"))
    with pytest.raises(api.DetectError, match="declares no detect"):
        archc.detect(plain, plain.init(0), np.zeros((8, 8, 3), np.float32))
    with pytest.raises(api.DetectError, match="expected \\(height, width, 3\\)"):
        archc.detect(tiny["model"], str(tiny["weights"]), np.zeros((8, 8, 5), np.float32))
    with pytest.raises(api.DetectError, match="not a readable image"):
        archc.detect(tiny["model"], str(tiny["weights"]), str(tiny["broken"]))


def test_cli_draws_and_writes_json(tiny):
    out = tiny["dir"] / "out"
    r = run_cli("detect", tiny["spec"], "--weights", tiny["weights"], tiny["photo"], "--out", out, "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report[0]["size"] == [90, 120] and 0 < len(report[0]["detections"]) <= 20
    d = report[0]["detections"][0]
    assert set(d) == {"label", "name", "score", "box"} and d["name"] in ("aeroplane", "bicycle")
    assert json.loads((out / "photo.json").read_text())["detections"] == report[0]["detections"]
    from PIL import Image
    with Image.open(out / "photo.png") as im:
        drawn = np.asarray(im.convert("RGB"))
    with Image.open(tiny["photo"]) as im:
        assert drawn.shape == np.asarray(im).shape and (drawn != np.asarray(im)).any()
    # nothing above the threshold: said plainly, exit 0, the picture still written
    r = run_cli("detect", tiny["spec"], "--weights", tiny["weights"], tiny["photo"], "--score-thresh", "1", "--out", out)
    assert r.returncode == 0 and "0 detections" in r.stdout and "nothing scores above" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("case,expect", [
    ("broken", "not a readable image"),
    ("other", "the weights do not fit"),
    ("absent", "no such file"),
])
def test_cli_bad_inputs(tiny, case, expect):
    args = {"broken": (tiny["weights"], tiny["broken"]), "other": (tiny["other"], tiny["photo"]),
            "absent": (tiny["weights"], tiny["dir"] / "absent.png")}[case]
    r = run_cli("detect", tiny["spec"], "--weights", *args)
    assert r.returncode == 2 and r.stderr.startswith("error:") and expect in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("line,message", [
    ('default_boxes(aspect_ratios=[[2], [2]], scales=[0.1, 0.2])', "2 levels need 3 scales, got 2"),
    ('default_boxes(aspect_ratios=[2, 3])', "'aspect_ratios' must be a list of numbers"),
    ('detect(kind="rcnn", scores=@a)', "'kind' is one of 'ssd', 'yolo_v1', 'faster_rcnn', not 'rcnn'"),
    ('detect(kind="ssd", scores=[@a], boxes=[@a, @a])', "1 score tensors but 2 box tensors"),
    ('detect(kind="ssd", scores=[@a], nms_thresh=1.5)', "'nms_thresh' must be in [0, 1], not 1.5"),
    ('anchors(sizes=[[32], [64]], aspect_ratios=[[1]])', "'aspect_ratios' needs 2 levels, got 1"),
    ('detect_input(fixed_size=[300])', "'fixed_size' needs 2 numbers, got 1"),
])
def test_declaration_errors_are_located(tmp_path, line, message):
    p = tmp_path / "net.arch"
    p.write_text(f"input 8x8x3\na: conv3(4)\n{line}\n")
    with pytest.raises(ArchError) as e:
        archc.load(str(p))
    assert "net.arch:3:" in str(e.value) and message in str(e.value), str(e.value)


def test_heads_that_do_not_fit_the_default_boxes(tmp_path):
    p = tmp_path / "bad.arch"
    p.write_text(TINY.replace("branch cls2: @f2 conv3(6 * classes)", "branch cls2: @f2 conv3(4 * classes)"))
    with pytest.raises(api.DetectError, match="6 default boxes per location × 3 classes need 18"):
        api.detector_for(archc.load(str(p)))


def test_drawing_boxes_outside_the_image():
    from archc.detection.draw import draw_detections
    im = np.full((40, 60, 3), 255, np.uint8)
    dets = {"boxes": np.array([[-30, -10, 200, 25], [50, 30, 10, 5], [70, 50, 90, 80]], np.float32),
            "scores": np.array([0.9, 0.5, 0.3], np.float32), "labels": np.array([1, 2, 3]),
            "names": ["person", "bicycle", "car"]}
    drawn = np.asarray(draw_detections(im, dets))
    assert drawn.shape == im.shape
    assert (drawn[:, 0] != 255).any() and (drawn[:, -1] != 255).any()       # clamped to the left/right edges
    empty = draw_detections(im, {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, int), "names": []})
    assert (np.asarray(empty) == im).all()


def test_tags_of_a_crowded_image_do_not_overlap():
    """Ten detections on one spot (a crowd): every "name score" tag gets a place of its own,
    and the drawn image shows each tag's colour where it was placed (issue 27)."""
    from archc.detection.draw import _colour, draw_detections, place_tags
    rng = np.random.default_rng(0)
    n = 10
    x = rng.uniform(90, 110, n)
    y = rng.uniform(90, 110, n)
    boxes = np.stack([x, y, x + rng.uniform(40, 80, n), y + rng.uniform(40, 80, n)], 1).astype(np.float32)
    dets = {"boxes": boxes, "scores": np.linspace(0.95, 0.5, n).astype(np.float32), "labels": np.arange(n) % 12,
            "names": [f"class{k}" for k in range(n)]}
    sizes = [(70, 16)] * n
    tags = place_tags([tuple(b) for b in boxes], sizes, 320, 320)
    for i, a in enumerate(tags):
        assert 0 <= a[0] and a[2] <= 320 and 0 <= a[1] and a[3] <= 320
        for b in tags[i + 1:]:
            assert min(a[2], b[2]) <= max(a[0], b[0]) or min(a[3], b[3]) <= max(a[1], b[1]), (a, b)
    assert tags[0] == (boxes[0][0], boxes[0][1] - 16, boxes[0][0] + 70, boxes[0][1])     # the best: above its box
    drawn = np.asarray(draw_detections(np.full((320, 320, 3), 255, np.uint8), dets))
    from PIL import Image, ImageDraw, ImageFont
    font = ImageFont.load_default(size=12)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    sizes = []
    for k in range(n):
        l, t, r, b = measure.textbbox((0, 0), f"class{k} {dets['scores'][k]:.2f}", font=font)
        sizes.append((r - l + 4, b - t + 2))
    for k, (tx, ty, _, _) in enumerate(place_tags([tuple(np.clip(b, 0, 319)) for b in boxes], sizes, 320, 320)):
        assert tuple(drawn[int(ty), int(tx)]) == _colour(int(dets["labels"][k]))
