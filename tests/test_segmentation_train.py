"""Segmentation training: the losses against their references, the data layouts and their bad
input, the augmentation that moves masks with images, and `archc train`/`archc evaluate` end to
end on the synthetic shapes set (docs/segmentation.md)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from archc.runtime import segmentation_data as S
from archc.runtime import tasks as T
from archc.testing.shapes import CLASSES, write_shapes

ROOT = Path(__file__).resolve().parent.parent


def _task(cls=T.Segmentation, outputs=("logits",), **kw):
    """A task reading the logits it is given under ``outputs`` (no network is run)."""
    return type(cls.__name__, (cls,), {"outputs": property(lambda self: outputs)})(model=None, **kw)


def _logits(shape, seed):
    return np.random.default_rng(seed).normal(0, 2, shape).astype(np.float32)


def _labels(shape, n, seed):
    y = np.random.default_rng(seed).integers(0, n, shape).astype(np.int32)
    y[:, :2, :3] = 255
    return y


def _archc(*args, cwd=None, timeout=900):
    return subprocess.run([sys.executable, "-m", "archc", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=timeout)


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------
def test_cross_entropy_and_aux_as_torchvisions_references():
    """references/segmentation/train.py criterion: cross_entropy(out, ignore_index=255) +
    0.5 * cross_entropy(aux, ignore_index=255)."""
    import torch
    import torch.nn.functional as F
    n = 5
    out, aux = _logits((2, 6, 7, n), 0), _logits((2, 6, 7, n), 1)
    y = _labels((2, 6, 7), n, 2)
    task = _task(outputs=("logits", "aux"))
    got = task.losses({"logits": out, "aux": aux}, {"label": y})
    tt = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2)  # noqa: E731
    ty = torch.from_numpy(y).long()
    ce, ce_aux = F.cross_entropy(tt(out), ty, ignore_index=255), F.cross_entropy(tt(aux), ty, ignore_index=255)
    assert float(got["cross_entropy"]) == pytest.approx(float(ce), rel=1e-6)
    assert float(got["aux_cross_entropy"]) == pytest.approx(0.5 * float(ce_aux), rel=1e-6)
    assert set(got) == {"cross_entropy", "aux_cross_entropy"}


def _paper_weights(label, classes, w0=10.0, sigma=5.0):
    """The U-Net paper's Eq. 2 written out pixel by pixel: class balance n / (K n_c), plus
    w0 exp(-(d1 + d2)^2 / 2 sigma^2) with d1, d2 the distances (brute force, over every pixel of
    each object) to the nearest and second-nearest object; objects found by a flood fill."""
    h, w = label.shape
    valid = (label != 255) & (label < classes)
    present = sorted(set(label[valid].tolist()))
    n = valid.sum()
    objects, seen = [], np.zeros_like(valid)
    for y0 in range(h):
        for x0 in range(w):
            c = label[y0, x0]
            if seen[y0, x0] or not valid[y0, x0] or c == 0:
                continue
            stack, pixels = [(y0, x0)], []
            seen[y0, x0] = True
            while stack:
                y, x = stack.pop()
                pixels.append((y, x))
                for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                    yy, xx = y + dy, x + dx
                    if 0 <= yy < h and 0 <= xx < w and not seen[yy, xx] and label[yy, xx] == c:
                        seen[yy, xx] = True
                        stack.append((yy, xx))
            objects.append(np.array(pixels, float))
    out = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            if not valid[y, x]:
                continue
            c = label[y, x]
            out[y, x] = n / (len(present) * (label[valid] == c).sum())
            if len(objects) >= 2:
                d = sorted(np.sqrt(((o - (y, x)) ** 2).sum(1)).min() for o in objects)
                out[y, x] += w0 * np.exp(-(d[0] + d[1]) ** 2 / (2 * sigma ** 2))
    return out


def test_unet_weights_are_the_papers_formula():
    label = np.zeros((20, 24), np.int32)
    label[2:7, 3:9] = 1
    label[2:7, 11:15] = 1            # a second object of class 1, 2 px away
    label[12:18, 5:12] = 2
    label[15:19, 18:22] = 1
    label[0, :] = 255
    got = S.unet_weights(label, 3)
    ref = _paper_weights(label, 3)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    assert got[0].max() == 0 and got[4, 10] > 5       # ignored; the gap between two objects


def test_weighted_cross_entropy_and_dice_against_direct_implementations():
    import torch
    import torch.nn.functional as F
    n = 4
    logits = _logits((2, 6, 7, n), 3)
    y = _labels((2, 6, 7), n, 4)
    y[y == 3] = 2                   # class 3 absent from the targets: left out of Dice's mean
    pw = np.random.default_rng(5).uniform(0.5, 3, y.shape).astype(np.float32)
    t = torch.from_numpy(logits).permute(0, 3, 1, 2).double()
    ty = torch.from_numpy(y).long()
    valid = ty != 255
    per_pixel = F.cross_entropy(t, ty, ignore_index=255, reduction="none")
    ref = float((per_pixel * torch.from_numpy(pw).double()).sum() / valid.sum())
    got = _task(loss="weighted").losses({"logits": logits}, {"label": y, "pixel_weight": pw})
    assert float(got["weighted_cross_entropy"]) == pytest.approx(ref, rel=1e-5)
    # Dice: 1 - mean over the present classes of 2 sum(p g) / (sum p + sum g), pixels that count
    p = torch.softmax(t, 1).permute(0, 2, 3, 1)[valid]            # (pixels, n)
    g = F.one_hot(ty[valid], n).double()
    dice = 2 * (p * g).sum(0) / (p.sum(0) + g.sum(0))
    present = g.sum(0) > 0
    ref_dice = float(1 - dice[present].mean())
    got = _task(loss="dice").losses({"logits": logits}, {"label": y})
    assert float(got["dice"]) == pytest.approx(ref_dice, rel=1e-5)
    with pytest.raises(T.TaskError, match="--loss must be one of"):
        _task(loss="focal")


def _references_confusion(y, logits, n):
    """torchvision's references' ConfusionMatrix written out in torch: the matrix (rows: the
    target), per-class IoU and Dice (NaN for a class neither present nor predicted)."""
    import torch
    a = torch.from_numpy(y).long().flatten()
    b = torch.from_numpy(logits).argmax(-1).flatten()
    k = (a >= 0) & (a < n)
    h = torch.bincount(n * a[k] + b[k], minlength=n ** 2).reshape(n, n).double()
    return h, torch.diag(h) / (h.sum(1) + h.sum(0) - torch.diag(h)), 2 * torch.diag(h) / (h.sum(1) + h.sum(0))


def test_metrics_as_the_references_confusion_matrix():
    """mIoU, per-class IoU, pixel accuracy and Dice against torchvision's references'
    ConfusionMatrix written out in torch, on the same predictions, summed over batches (as
    the evaluation does) with a padded last batch."""
    import torch
    n = 4
    logits, y = _logits((5, 8, 9, n), 6), _labels((5, 8, 9), n, 7)
    task = _task()
    total = None
    for lo, hi in ((0, 3), (3, 5)):
        weight = np.ones(3, np.float32)
        lg, lb = logits[lo:hi], y[lo:hi]
        if hi - lo < 3:             # the padding of a last batch: weight 0, counted nowhere
            weight[hi - lo:] = 0
            lg, lb = np.concatenate([lg, logits[:1]]), np.concatenate([lb, y[:1]])
        total = T.add_sums(total, task.metric_sums({"logits": lg}, {"label": lb, "weight": weight}))
    m = task.summarize({k: np.asarray(v) for k, v in total.items()})
    h, iu, dice = _references_confusion(y, logits, n)
    assert m["confusion"] == h.long().tolist()
    assert m["pixel_accuracy"] == pytest.approx(float(torch.diag(h).sum() / h.sum()))
    assert m["per_class_iou"] == pytest.approx(iu.tolist())
    assert m["mIoU"] == pytest.approx(float(iu.mean()))
    assert m["per_class_dice"] == pytest.approx(dice.tolist())
    assert m["dice"] == pytest.approx(float(dice.mean()))


def test_a_class_neither_present_nor_predicted_is_left_out_of_the_means():
    """The references' plain mean is NaN when one class has no pixel in the targets and none
    predicted; archc leaves that class out (None in the per-class lists, valid JSON) and the
    means are the references' IoU and Dice averaged over the other classes."""
    import torch
    n = 4
    logits, y = _logits((3, 8, 9, n), 11), _labels((3, 8, 9), n, 12)
    y[y == 2] = 1
    logits[..., 2] = -1e9                   # class 2: never a target, never predicted
    task = _task()
    m = task.summarize({k: np.asarray(v) for k, v in task.metric_sums(
        {"logits": logits}, {"label": y, "weight": np.ones(3, np.float32)}).items()})
    h, iu, dice = _references_confusion(y, logits, n)
    assert bool(torch.isnan(iu.mean())) and m["per_class_iou"][2] is None and m["per_class_dice"][2] is None
    assert m["mIoU"] == pytest.approx(float(iu.nanmean())) and m["dice"] == pytest.approx(float(dice.nanmean()))
    json.loads(json.dumps(m, allow_nan=False))          # what --json prints: valid JSON


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
def test_augmentation_moves_the_mask_with_the_image():
    """Each class painted in its own colour: after the random resize, crop and flip, every
    pixel whose colour is still a pure class colour carries that class in the mask (masks
    resampled with the nearest neighbour: only class values and 255)."""
    colours = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    mask = np.zeros((40, 48), np.uint8)
    mask[5:20, 4:30], mask[22:38, 10:20], mask[8:30, 34:46] = 1, 2, 3
    example = {"image": Image.fromarray(colours[mask]), "mask": mask}
    tf = S.MaskTransform(32, 32, 3, (0.0,), (1.0,), scale=(0.5, 2.0), flip=True, classes=4)
    still = S.MaskTransform(32, 32, 3, (0.0,), (1.0,), scale=(0.5, 2.0), flip=False, classes=4)
    flips = 0
    for seed in range(12):
        out = tf(example, np.random.default_rng(seed))
        img, lab = np.rint(out["image"] * 255).astype(int), out["label"]
        assert img.shape == (32, 32, 3) and lab.shape == (32, 32) and lab.dtype == np.int32
        assert set(np.unique(lab)) <= {0, 1, 2, 3, 255}
        for c, colour in enumerate(colours):
            pure = (img == colour).all(-1) & (lab != 255)
            assert (lab[pure] == c).all()
        assert (img[lab == 255] == 0).all()            # the padding of a shrunk image
        # the same draws without the flip: the same crop, mirrored or not (image and mask alike)
        same = still(example, np.random.default_rng(seed))
        mirrored = np.array_equal(same["label"][:, ::-1], lab) and np.array_equal(same["image"][:, ::-1], out["image"])
        assert mirrored or (np.array_equal(same["label"], lab) and np.array_equal(same["image"], out["image"]))
        flips += mirrored and not np.array_equal(lab, lab[:, ::-1])
    assert 0 < flips < 12
    ev = tf(example)                                   # evaluation: both resized to the input
    assert ev["label"].shape == (32, 32) and set(np.unique(ev["label"])) == {0, 1, 2, 3}



def test_evaluation_resizes_the_image_with_the_pipelines_interpolation():
    """The evaluation transform resamples the image as `archc segment` does (the pipeline's
    interpolation), so that evaluate's numbers are the masks segment writes."""
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), np.uint8))
    example = {"image": image, "mask": np.zeros((40, 48), np.uint8)}
    for how, pil in (("bilinear", Image.BILINEAR), ("bicubic", Image.BICUBIC)):
        task = type("Two", (T.Segmentation,), {"num_classes": 2})(model=None)
        tf = task.transform((32, 32, 3), {"mode": "unit", "interpolation": how})
        want = np.asarray(image.resize((32, 32), pil), np.float32) / np.float32(255)   # "unit": [0, 1]
        np.testing.assert_array_equal(tf(example)["image"], want)

def test_layouts_and_class_names(tmp_path):
    root = write_shapes(tmp_path / "shapes", train=6, val=3, size=32)
    train, val = S.find_splits(root, 4)
    assert (len(train), len(val), train.classes) == (6, 3, list(CLASSES))
    assert S.eval_set(root, 4).root == str(root / "val")
    (root / "classes.txt").unlink()
    assert S.find_splits(root, 4)[0].classes == ["class0", "class1", "class2", "class3"]
    # one folder, split by a fraction
    one = tmp_path / "one"
    (one / "images").mkdir(parents=True)
    (one / "masks").mkdir()
    for i in range(10):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(one / "images" / f"{i}.jpg")
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(one / "masks" / f"{i}.png")
    tr, va = S.find_splits(one, 2)
    assert (len(tr), len(va)) == (8, 2)
    with pytest.raises(Exception, match="no segmentation data"):
        S.find_splits(tmp_path, 2)


def test_pascal_voc_layout_with_palette_masks(tmp_path):
    """JPEGImages + SegmentationClass palette PNGs (read as their indices, 255 borders) +
    ImageSets/Segmentation/{train,val}.txt; VOC's 21 class names."""
    voc = tmp_path / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / d).mkdir(parents=True)
    palette = np.random.default_rng(0).integers(0, 256, 768).astype(np.uint8).tolist()
    ids = [f"2007_00{i:04d}" for i in range(5)]
    for i, name in enumerate(ids):
        Image.fromarray(np.full((10, 12, 3), 40 * i, np.uint8)).save(voc / "JPEGImages" / f"{name}.jpg")
        m = np.zeros((10, 12), np.uint8)
        m[2:6, 3:8], m[1, :] = 15, 255                # person, an object border
        p = Image.fromarray(m, mode="P")
        p.putpalette(palette)
        p.save(voc / "SegmentationClass" / f"{name}.png")
    (voc / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids[:3]) + "\n")
    (voc / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids[3:]) + "\n")
    train, val = S.find_splits(voc, 21)
    assert (len(train), len(val)) == (3, 2) and train.classes[15] == "person" and len(train.classes) == 21
    ex = train.example(0)
    assert set(np.unique(ex["mask"])) == {0, 15, 255}
    assert S.check_masks(train) is train


def test_bad_masks_are_reported_by_file_and_value(tmp_path, capsys):
    """A missing mask, a mask of another size, a label that is not a class nor 255: the report
    names the file and the value (the CLI: one line, exit status 2); --on-bad-data skip leaves
    them out (reported)."""
    root = write_shapes(tmp_path / "shapes", train=40, val=4, size=32)
    masks = root / "train" / "masks"
    (masks / "0001.png").unlink()
    Image.fromarray(np.zeros((16, 32), np.uint8)).save(masks / "0002.png")
    bad = np.asarray(Image.open(masks / "0003.png")).copy()
    bad[0, 0] = 7
    Image.fromarray(bad).save(masks / "0003.png")
    data = S.find_splits(root, 4)[0]
    found = dict(S.problems(data))
    assert set(found) == {str(root / "train" / "images" / f"000{i}.png") for i in (1, 2, 3)}
    assert "no mask" in found[str(root / "train" / "images" / "0001.png")]
    assert "is 32x16, the image 32x32" in found[str(root / "train" / "images" / "0002.png")]
    assert "holds label 7, not a class (0..3) nor 255" in found[str(root / "train" / "images" / "0003.png")]
    args = ["train", "unet", "--param", 'padding="same"', "--param", "width=4", "--param", "classes=4",
            "--input", "32x32x3", "--data", str(root), "--epochs", "1", "--batch", "8", "--quiet"]
    from archc.cli import main
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "stop")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: 3 unusable image/mask pairs") and "0003.png" in err[0]
    assert "holds label 7" in err[0] and not (tmp_path / "stop" / "config.json").exists()
    # skip: the run is set up without them (what `--on-bad-data skip` trains on; no training here)
    from archc.runtime.train import Trainer, TrainConfig
    logged = []
    trainer = Trainer(TrainConfig(spec="unet", data=str(root), params={"padding": '"same"', "width": 4, "classes": 4},
                                  input_shape=[32, 32, 3], batch=8, on_bad_data="skip"), log=logged.append)
    assert len(trainer.train_data) == 37 and any("skipping 3 unusable image/mask pairs" in m for m in logged)


# --------------------------------------------------------------------------------------------
# The Done-when: archc train on the shapes set, archc evaluate on the run
# --------------------------------------------------------------------------------------------
SMALL_UNET = ["unet", "--param", 'padding="same"', "--param", "norm=true", "--param", "width=8",
              "--param", "classes=4", "--input", "32x32x3"]


def _evaluate(*args, capsys):
    """`archc evaluate ARGS` through the CLI's entry function: (exit status, stdout, stderr)."""
    from archc.cli import main
    capsys.readouterr()
    rc = main(["evaluate", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def _check_evaluate_agrees(root, run, m, val_images, capsys):
    """`archc evaluate --json` on best.safetensors: the best epoch's validation numbers."""
    best = m["best_epoch"] - 1
    rc, out, err = _evaluate("--weights", str(run / "best.safetensors"), "--data", str(root), "--json",
                             capsys=capsys)
    assert rc == 0, err
    ev = json.loads(out)
    assert ev["task"] == "segmentation" and ev["images"] == val_images and ev["classes"] == list(CLASSES)
    assert ev["mIoU"] == pytest.approx(m["val_mIoU"][best], abs=1e-9)
    assert ev["mIoU"] == m["best_val_mIoU"]
    assert ev["pixel_accuracy"] == pytest.approx(m["val_pixel_accuracy"][best], abs=1e-9)
    assert ev["dice"] == pytest.approx(m["val_dice"][best], abs=1e-9)
    assert ev["loss"] == pytest.approx(m["val_loss"][best], rel=1e-6)
    assert len(ev["per_class_iou"]) == 4 and np.mean(ev["per_class_iou"]) == pytest.approx(ev["mIoU"])
    return ev


def test_train_a_unet_from_the_cli_and_evaluate_gives_its_validation(tmp_path, capsys):
    """archc train on image/mask folders (2 short epochs): the run's files, the task's keys in
    metrics.json, the record for inference, and archc evaluate equal to the validation."""
    from archc.cli import main
    from archc.runtime.predict import read_metadata
    root = write_shapes(tmp_path / "shapes", train=48, val=16, size=32)
    run = tmp_path / "run"
    rc = main(["train", *SMALL_UNET, "--param", "width=4", "--data", str(root), "--out", str(run),
               "--epochs", "2", "--batch", "16"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "val_mIoU" in err and "random resize 0.8-1.25x" in err
    m = json.loads((run / "metrics.json").read_text())
    for key in ("train_loss", "train_mIoU", "train_pixel_accuracy", "val_loss", "val_mIoU",
                "val_pixel_accuracy", "val_dice"):
        assert len(m[key]) == 2, key
    assert "val_accuracy" not in m and m["classes"] == list(CLASSES)
    assert json.loads((run / "config.json").read_text())["optimizer"] == "adamw"
    meta = read_metadata(run / "best.safetensors")
    assert meta["archc.task"] == "segmentation" and json.loads(meta["archc.classes"]) == list(CLASSES)
    assert (run / "curves.png").is_file()
    ev = _check_evaluate_agrees(root, run, m, 16, capsys)
    rc, out, _ = _evaluate("--weights", str(run / "best.safetensors"), "--data", str(root), capsys=capsys)
    assert rc == 0 and "mIoU" in out and "triangle" in out
    _check_segment_gives_evaluates_masks(root, run, ev, tmp_path / "masks", capsys)


def _check_segment_gives_evaluates_masks(root, run, ev, out_dir, capsys):
    """`archc segment`'s masks of the val images, scored by a confusion matrix written here
    (the references' bincount(n * target + pred), 255 dropped): `archc evaluate`'s mIoU and
    pixel accuracy, to the last bit (the same pixels both ways)."""
    from archc.cli import main
    images = sorted((root / "val" / "images").glob("*.png"))
    capsys.readouterr()
    rc = main(["segment", "--weights", str(run / "best.safetensors"), *map(str, images), "--out", str(out_dir)])
    err = capsys.readouterr().err
    assert rc == 0, err
    n = len(CLASSES)
    confusion = np.zeros((n, n), np.int64)
    for image in images:
        pred = np.asarray(Image.open(out_dir / f"{image.stem}_mask.png")).astype(np.int64)
        target = np.asarray(Image.open(root / "val" / "masks" / image.name)).astype(np.int64)
        assert pred.shape == target.shape
        keep = (target >= 0) & (target < n)
        confusion += np.bincount(n * target[keep] + pred[keep], minlength=n * n).reshape(n, n)
    diag = np.diag(confusion).astype(np.float64)
    iou = diag / (confusion.sum(0) + confusion.sum(1) - diag)
    assert confusion.sum() > 0 and not np.isnan(iou).any()
    with capsys.disabled():     # the figures in the test's output (-s)
        print(f"segment's masks: mIoU {iou.mean()!r}, pixel accuracy {diag.sum() / confusion.sum()!r}; evaluate: "
              f"{ev['mIoU']!r}, {ev['pixel_accuracy']!r}", file=sys.stderr)
    assert ev["pixel_accuracy"] == pytest.approx(diag.sum() / confusion.sum(), abs=1e-12)
    assert ev["per_class_iou"] == pytest.approx(list(iou), abs=1e-12)
    assert ev["mIoU"] == pytest.approx(iou.mean(), abs=1e-12)


@pytest.mark.slow
def test_a_small_unet_learns_the_shapes_within_ten_minutes_on_two_cores(tmp_path, capsys):
    """`archc train` with default settings (only the data and the size given) reaches mIoU >=
    0.85 on the shapes set; its processes' CPU time is within 10 minutes on 2 cores (1200
    core-seconds: the test machine is shared, so its wall time says little); `archc evaluate`
    gives the best epoch's validation numbers."""
    import resource
    root = write_shapes(tmp_path / "shapes", train=4096, val=256, size=32, max_shapes=2)
    run = tmp_path / "run"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    r = _archc("train", *SMALL_UNET, "--data", str(root), "--out", str(run), timeout=3600)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert r.returncode == 0, r.stderr
    m = json.loads((run / "metrics.json").read_text())
    with capsys.disabled():     # the figures in the test's output (-s)
        print(f"shapes: val_mIoU per epoch {m['val_mIoU']}; {cpu:.0f} CPU-s, {wall:.0f} s wall", file=sys.stderr)
    assert m["best_val_mIoU"] >= 0.85
    assert cpu <= 1200
    _check_evaluate_agrees(root, run, m, 256, capsys)


AUX_NET = """
param classes = 4
input(32, 32, 3)
body: conv3(8) relu
out: conv1(classes)
branch aux: @body (conv3(4) relu conv1(classes))
output out, aux
"""


def test_a_network_with_an_aux_output_trains_with_its_loss(tmp_path):
    """An output named aux (torchvision's aux classifier) joins the objective at 0.5 x its
    cross-entropy; the metrics read the main output."""
    import archc
    import torch
    import torch.nn.functional as F
    from archc.runtime.train import train
    spec = tmp_path / "auxnet.arch"
    spec.write_text(AUX_NET)
    model = archc.load(str(spec))
    task = T.make_task(model)
    assert task.name == "segmentation" and task.outputs == ("out.conv1", "aux.conv2")
    root = write_shapes(tmp_path / "shapes", train=16, val=8, size=32)
    result = train(str(spec), str(root), str(tmp_path / "run"), epochs=1, batch=8, progress=False,
                   log=lambda msg: None)
    assert len(result.metrics["val_mIoU"]) == 1
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    y = _labels((2, 32, 32), 4, 1)
    parts = T.losses(model, result.variables, x, y, task=task)
    out = model.apply(result.variables, x, outputs=task.outputs)
    ty = torch.from_numpy(y).long()
    ce = lambda a: float(F.cross_entropy(torch.from_numpy(np.array(a)).permute(0, 3, 1, 2), ty,  # noqa: E731
                                         ignore_index=255))
    assert float(parts["cross_entropy"]) == pytest.approx(ce(out["out.conv1"]), rel=1e-5)
    assert float(parts["aux_cross_entropy"]) == pytest.approx(0.5 * ce(out["aux.conv2"]), rel=1e-5)


@pytest.mark.slow          # three runs of archc in subprocesses
def test_resume_inside_an_epoch_keeps_the_confusion_sums(tmp_path):
    """Killed after a mid-epoch checkpoint (its running sums: a confusion matrix) and resumed:
    the per-epoch metrics of a run never interrupted."""
    import os
    from archc.runtime.train import CRASH_ENV
    root = write_shapes(tmp_path / "shapes", train=24, val=8, size=32)
    args = ["train", *SMALL_UNET, "--param", "width=4", "--data", str(root), "--epochs", "2",
            "--batch", "8", "--save-every", "1", "--quiet"]
    full = _archc(*args, "--out", str(tmp_path / "full"))
    assert full.returncode == 0, full.stderr
    env = {**os.environ, CRASH_ENV: "5", "PYTHONPATH": str(ROOT)}
    crashed = subprocess.run([sys.executable, "-m", "archc", *args, "--out", str(tmp_path / "run")],
                             capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    assert crashed.returncode == 86, crashed.stderr            # os._exit after step 5 (epoch 2, batch 2)
    resumed = _archc("train", "--resume", str(tmp_path / "run"), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert "after epoch 1, batch 2" in resumed.stderr
    a = json.loads((tmp_path / "full" / "metrics.json").read_text())
    b = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in ("train_loss", "train_mIoU", "train_pixel_accuracy", "val_loss", "val_mIoU", "best_val_mIoU"):
        assert a[key] == pytest.approx(b[key], rel=1e-5), key


def test_an_unpadded_unet_is_refused_with_the_padding_to_use(tmp_path, capsys):
    """The paper's U-Net (valid convolutions: 388 out for 572 in) cannot be scored against masks
    at the input's size: one line that says --param padding=same, exit status 2, nothing written."""
    from archc.cli import main
    root = write_shapes(tmp_path / "shapes", train=4, val=2, size=32)
    capsys.readouterr()
    rc = main(["train", "unet", "--data", str(root), "--epochs", "1", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "388x388x2 is per-pixel class scores smaller than its input 572x572" in err[0]
    assert err[0].endswith("use --param padding=same (padded convolutions)")
    assert not (tmp_path / "run" / "config.json").exists()


def _torchvision_fcn_checkpoint(path):
    """torchvision's fcn_resnet50 as its COCO checkpoints are laid out (21 classes, the aux
    head), random weights and randomised batch-norm statistics, saved as a state_dict."""
    import torch
    import torchvision
    torch.manual_seed(0)
    net = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None, num_classes=21,
                                                       aux_loss=True)
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
    torch.save(net.state_dict(), path)
    return path


@pytest.mark.slow           # a ResNet-50 trained on CPU: minutes
def test_fcn_resnet50_fine_tuned_from_a_torchvision_checkpoint_onto_four_classes(tmp_path, capsys):
    """`archc train fcn_resnet50 --weights ckpt.pth --from torchvision --classes 4` (the aux head
    on, as the checkpoint has it): both heads' final convs are new, everything else is loaded,
    and the mIoU of `archc evaluate` rises from the run's starting weights to its best epoch
    (5 epochs of 96 64x64 images), above what calling every pixel background scores."""
    import archc
    from archc.cli import main
    from archc.runtime.train import Trainer, TrainConfig
    ckpt = _torchvision_fcn_checkpoint(tmp_path / "fcn_resnet50.pth")
    root = write_shapes(tmp_path / "shapes", train=96, val=16, size=64)
    run = tmp_path / "run"
    t0 = time.monotonic()
    capsys.readouterr()
    rc = main(["train", "fcn_resnet50", "--param", "aux=true", "--weights", str(ckpt), "--from", "torchvision",
               "--classes", "4", "--input", "64x64x3", "--data", str(root), "--epochs", "5", "--batch", "16",
               "--out", str(run)])
    wall = time.monotonic() - t0
    err = capsys.readouterr().err
    assert rc == 0, err
    loaded = next(line for line in err.splitlines() if line.startswith("weights:"))
    # 265 tensors of the trunk and 10 of the two heads (all but their final convs: 4 tensors)
    assert loaded == (f"weights: 275 tensors loaded from {ckpt}; new: classifier.conv2/kernel, "
                      f"classifier.conv2/bias, aux.conv2/kernel, aux.conv2/bias"), loaded
    m = json.loads((run / "metrics.json").read_text())
    # the weights the run started from: the same configuration and seed, before any step
    trainer = Trainer(TrainConfig(spec="fcn_resnet50", data=str(root), params={"aux": True}, classes=4,
                                  input_shape=[64, 64, 3], weights=str(ckpt), weights_from="torchvision", batch=16),
                      log=lambda msg: None)
    start = trainer.variables_of(trainer.init_state())
    archc.save_variables(start, tmp_path / "start.safetensors")
    net = ["fcn_resnet50", "--param", "aux=true", "--param", "classes=4", "--input", "64x64x3"]
    rc, out, err = _evaluate(*net, "--weights", str(tmp_path / "start.safetensors"), "--data", str(root), "--json",
                             capsys=capsys)
    assert rc == 0, err
    before = json.loads(out)["mIoU"]
    rc, out, err = _evaluate("--weights", str(run / "best.safetensors"), "--data", str(root), "--json",
                             capsys=capsys)
    assert rc == 0, err
    after = json.loads(out)["mIoU"]
    with capsys.disabled():
        print(f"fcn_resnet50 fine-tuned onto 4 classes: mIoU {before:.4f} -> {after:.4f} "
              f"(val_mIoU per epoch {m['val_mIoU']}); train {wall:.0f} s wall", file=sys.stderr)
    assert after == pytest.approx(m["best_val_mIoU"], abs=1e-9)
    assert after > before
    # more than the majority class alone: every pixel called background scores IoU(bg) / 4
    masks = np.concatenate([np.asarray(Image.open(f)).ravel() for f in sorted((root / "val" / "masks").glob("*.png"))])
    assert after > (masks == 0).mean() / 4
