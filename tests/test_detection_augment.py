"""Augmentation that moves boxes: each transform's deterministic part equals
torchvision.transforms.v2's on the same parameters (flip, zoom-out and crop exactly; the colour
operations to float32 rounding), and the random crops keep their box invariants."""
import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from archc.detection import augment as A


def _sample(seed=0, h=40, w=56, n=5):
    rng = np.random.default_rng(seed)
    image = rng.random((h, w, 3), dtype=np.float32)
    x1 = rng.uniform(0, w - 10, n)
    y1 = rng.uniform(0, h - 10, n)
    boxes = np.stack([x1, y1, x1 + rng.uniform(2, 10, n), y1 + rng.uniform(2, 10, n)], -1).astype(np.float32)
    return {"image": image, "boxes": boxes, "labels": rng.integers(1, 4, n).astype(np.int32)}


def _tv(sample):
    h, w = sample["image"].shape[:2]
    return (tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(sample["image"].transpose(2, 0, 1)))),
            tv_tensors.BoundingBoxes(torch.from_numpy(sample["boxes"]), format="XYXY", canvas_size=(h, w)))


def _np(image):
    return image.numpy().transpose(1, 2, 0)


def test_flip_exact():
    s = _sample()
    out = A.HorizontalFlip().apply(s, {})
    im, bx = v2.RandomHorizontalFlip(p=1.0)(*_tv(s))
    np.testing.assert_array_equal(out["image"], _np(im))
    np.testing.assert_array_equal(out["boxes"], bx.numpy())
    np.testing.assert_array_equal(out["labels"], s["labels"])
    assert A.HorizontalFlip().apply(s, None) is s


def test_zoom_out_exact():
    s = _sample(1)
    t = A.ZoomOut()
    params = t.params(np.random.default_rng(3), s)
    while params is None:
        params = t.params(np.random.default_rng(int(np.random.default_rng().integers(1 << 30))), s)
    out = t.apply(s, params)
    ref = v2.RandomZoomOut(fill={tv_tensors.Image: list(A.SSD_FILL), "others": 0})
    im, bx = ref.transform(_tv(s)[0], params), ref.transform(_tv(s)[1], params)
    np.testing.assert_array_equal(out["image"], _np(im))
    np.testing.assert_array_equal(out["boxes"], bx.numpy())


@pytest.mark.parametrize("seed", range(6))
def test_iou_crop_matches_v2_and_keeps_box_invariants(seed):
    s = _sample(seed, n=6)
    t = A.IoUCrop()
    rng = np.random.default_rng(seed)
    for _ in range(20):                  # draw until a crop (not the "no crop" option)
        params = t.params(rng, s)
        if params is not None:
            break
    out = t.apply(s, params)
    l, top, w, h = params["left"], params["top"], params["width"], params["height"]
    # invariants: the crop's pixels; boxes inside it; their centres were inside; labels follow
    np.testing.assert_array_equal(out["image"], s["image"][top:top + h, l:l + w])
    b = out["boxes"]
    assert len(b) >= 1 and (b[:, 0] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 1] >= 0).all() and (b[:, 3] <= h).all()
    assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
    centres = (s["boxes"][:, :2] + s["boxes"][:, 2:]) / 2
    inside = (centres[:, 0] > l) & (centres[:, 0] < l + w) & (centres[:, 1] > top) & (centres[:, 1] < top + h)
    np.testing.assert_array_equal(params["inside"], inside)
    np.testing.assert_array_equal(out["labels"], s["labels"][inside])
    # torchvision v2 on the same crop: the same pixels and boxes (it zeroes dropped ones instead)
    ref = v2.RandomIoUCrop()
    tp = {"top": top, "left": l, "height": h, "width": w, "is_within_crop_area": torch.from_numpy(inside)}
    im, bx = ref.transform(_tv(s)[0], tp), ref.transform(_tv(s)[1], tp)
    np.testing.assert_array_equal(out["image"], _np(im))
    np.testing.assert_array_equal(out["boxes"], bx.numpy()[inside])


def test_iou_crop_without_boxes_keeps_the_image():
    s = {**_sample(), "boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int32)}
    assert A.IoUCrop()(s, np.random.default_rng(0)) is s


@pytest.mark.parametrize("name,fn,factor", [("brightness", v2.functional.adjust_brightness, 1.1),
                                            ("contrast", v2.functional.adjust_contrast, 0.6),
                                            ("saturation", v2.functional.adjust_saturation, 1.4),
                                            ("hue", v2.functional.adjust_hue, 0.04),
                                            ("hue", v2.functional.adjust_hue, -0.05)])
def test_colour_ops_match_v2(name, fn, factor):
    s = _sample(2, h=24, w=32)
    ours = getattr(A, f"adjust_{name}")(s["image"], factor)
    theirs = _np(fn(_tv(s)[0], factor))
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-6)


def test_photometric_distort_matches_v2_on_the_same_parameters():
    s = _sample(4, h=24, w=32)
    t = A.PhotometricDistort(p=1.0)
    for seed in range(4):
        params = t.params(np.random.default_rng(seed), s)
        out = t.apply(s, params)
        tp = {**params, "channel_permutation": torch.as_tensor(params["channel_permutation"])}
        ref = _np(v2.RandomPhotometricDistort(p=1.0).transform(_tv(s)[0], tp))
        np.testing.assert_allclose(out["image"], ref, rtol=0, atol=2e-6)
        np.testing.assert_array_equal(out["boxes"], s["boxes"])


def test_ssd_recipe_keeps_boxes_valid():
    aug = A.recipe("ssd")
    assert aug.describe() == "PhotometricDistort, ZoomOut, IoUCrop, HorizontalFlip"
    for seed in range(30):
        s = _sample(seed)
        out = aug(s, np.random.default_rng(seed))
        h, w = out["image"].shape[:2]
        b = out["boxes"]
        assert out["image"].dtype == np.float32 and len(b) == len(out["labels"]) >= 1
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
    with pytest.raises(ValueError, match="hflip, ssd"):
        A.recipe("autoaugment")
