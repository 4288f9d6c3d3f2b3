"""Augmentation that moves boxes, as torchvision's detection references do it
(references/detection/transforms.py; the same rules as torchvision.transforms.v2's
RandomHorizontalFlip, RandomPhotometricDistort, RandomZoomOut and RandomIoUCrop):

    hflip  HorizontalFlip()                                     (torchvision's default recipe)
    ssd    PhotometricDistort(), ZoomOut(fill=mean), IoUCrop(), HorizontalFlip()   (--augment ssd)

A sample is ``{"image": (H, W, 3) float32 in [0, 1], "boxes": (N, 4) float32 xyxy in its
pixels, "labels": (N,) int32}``. Each transform draws its parameters from a NumPy Generator
(``params``; archc's loader seeds it from (seed, epoch, index), so a run is reproducible) and
applies them (``apply``, deterministic: tested against torchvision.transforms.v2 on the same
parameters). The references distort PIL images (uint8); here the image is already float, as
v2's float tensors are."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# the references' SSD zoom-out fill: the ImageNet mean of 0-255 pixels (123, 117, 104)
SSD_FILL = (123 / 255, 117 / 255, 104 / 255)


def _sample(image, boxes, labels) -> dict:
    return {"image": image, "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
            "labels": np.asarray(labels, np.int32).reshape(-1)}


class Transform:
    def params(self, rng: np.random.Generator, sample: dict) -> dict | None:
        raise NotImplementedError

    def apply(self, sample: dict, params: dict | None) -> dict:
        raise NotImplementedError

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        return self.apply(sample, self.params(rng, sample))


@dataclass(frozen=True)
class HorizontalFlip(Transform):
    p: float = 0.5

    def params(self, rng, sample):
        return {} if rng.random() < self.p else None

    def apply(self, sample, params):
        if params is None:
            return sample
        image, boxes = sample["image"], sample["boxes"]
        w = image.shape[1]
        flipped = boxes.copy()
        flipped[:, 0], flipped[:, 2] = w - boxes[:, 2], w - boxes[:, 0]
        return _sample(image[:, ::-1], flipped, sample["labels"])


# -- photometric ------------------------------------------------------------------------------
def grayscale(image):
    """torchvision's rgb_to_grayscale: 0.2989 R + 0.587 G + 0.114 B, (H, W, 1)."""
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    return (r * np.float32(0.2989) + g * np.float32(0.587) + b * np.float32(0.114))[..., None]


def _blend(a, b, ratio: float):
    return np.clip(a * np.float32(ratio) + b * np.float32(1.0 - ratio), 0, 1).astype(np.float32)


def adjust_brightness(image, factor: float):
    return np.clip(image * np.float32(factor), 0, 1).astype(np.float32)


def adjust_contrast(image, factor: float):
    return _blend(image, grayscale(image).mean(dtype=np.float32), factor)


def adjust_saturation(image, factor: float):
    return _blend(image, grayscale(image), factor)


def rgb_to_hsv(image):
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    maxc, minc = image.max(-1), image.min(-1)
    eqc = maxc == minc
    rng = maxc - minc
    s = rng / np.where(eqc, 1, maxc)
    div = np.where(eqc, 1, rng)
    rc, gc, bc = ((maxc[..., None] - image) / div[..., None]).transpose(2, 0, 1)
    neq_r, eq_g = maxc != r, maxc == g
    h = (bc - gc) * ~neq_r + (rc + 2 - bc) * (eq_g & neq_r) + (gc + 4 - rc) * (neq_r & ~eq_g)
    h = np.fmod(h * np.float32(1 / 6) + 1, 1)
    return np.stack([h, s, maxc], -1).astype(np.float32)


def hsv_to_rgb(hsv):
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    h6 = h * 6
    i = np.floor(h6)
    f = h6 - i
    i = i.astype(np.int32) % 6
    q = np.clip((1 - s * f) * v, 0, 1)
    t = np.clip((s * f + (1 - s)) * v, 0, 1)
    p = np.clip((1 - s) * v, 0, 1)
    vpqt = np.stack([v, p, q, t], -1)
    select = np.array([[0, 2, 1, 1, 3, 0], [3, 0, 0, 2, 1, 1], [1, 1, 3, 0, 0, 2]])[:, i]    # (3, H, W)
    return np.take_along_axis(vpqt, select.transpose(1, 2, 0), -1).astype(np.float32)


def adjust_hue(image, factor: float):
    hsv = rgb_to_hsv(image)
    hsv[..., 0] = np.remainder(hsv[..., 0] + np.float32(factor), 1)
    return hsv_to_rgb(hsv)


@dataclass(frozen=True)
class PhotometricDistort(Transform):
    """Brightness, contrast (before or after the colour changes), saturation, hue, each with
    probability ``p``, then a channel permutation with probability ``p``."""
    brightness: tuple = (0.875, 1.125)
    contrast: tuple = (0.5, 1.5)
    saturation: tuple = (0.5, 1.5)
    hue: tuple = (-0.05, 0.05)
    p: float = 0.5

    def params(self, rng, sample):
        out = {f"{k}_factor": (float(rng.uniform(*r)) if rng.random() < self.p else None)
               for k, r in (("brightness", self.brightness), ("contrast", self.contrast),
                            ("saturation", self.saturation), ("hue", self.hue))}
        out["contrast_before"] = bool(rng.random() < 0.5)
        out["channel_permutation"] = rng.permutation(3) if rng.random() < self.p else None
        return out

    def apply(self, sample, params):
        im = sample["image"]
        if params["brightness_factor"] is not None:
            im = adjust_brightness(im, params["brightness_factor"])
        if params["contrast_factor"] is not None and params["contrast_before"]:
            im = adjust_contrast(im, params["contrast_factor"])
        if params["saturation_factor"] is not None:
            im = adjust_saturation(im, params["saturation_factor"])
        if params["hue_factor"] is not None:
            im = adjust_hue(im, params["hue_factor"])
        if params["contrast_factor"] is not None and not params["contrast_before"]:
            im = adjust_contrast(im, params["contrast_factor"])
        if params["channel_permutation"] is not None:
            im = im[..., np.asarray(params["channel_permutation"])]
        return {**sample, "image": im}


# -- geometric --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ZoomOut(Transform):
    """With probability ``p``: the image placed at a random spot of a canvas ``side_range``
    times its size, filled with ``fill`` (SSD's "expand")."""
    fill: tuple = SSD_FILL
    side_range: tuple = (1.0, 4.0)
    p: float = 0.5

    def params(self, rng, sample):
        if rng.random() >= self.p:
            return None
        h, w = sample["image"].shape[:2]
        r = self.side_range[0] + rng.random() * (self.side_range[1] - self.side_range[0])
        cw, ch = int(w * r), int(h * r)
        a, b = rng.random(2)
        left, top = int((cw - w) * a), int((ch - h) * b)
        return {"padding": [left, top, cw - (left + w), ch - (top + h)]}

    def apply(self, sample, params):
        if params is None:
            return sample
        left, top, right, bottom = params["padding"]
        im = sample["image"]
        h, w = im.shape[:2]
        canvas = np.empty((h + top + bottom, w + left + right, 3), np.float32)
        canvas[:] = np.asarray(self.fill, np.float32)
        canvas[top:top + h, left:left + w] = im
        return _sample(canvas, sample["boxes"] + np.float32([left, top, left, top]), sample["labels"])


def _iou_with(boxes, crop):
    x1 = np.maximum(boxes[:, 0], crop[0])
    y1 = np.maximum(boxes[:, 1], crop[1])
    x2 = np.minimum(boxes[:, 2], crop[2])
    y2 = np.minimum(boxes[:, 3], crop[3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area + (crop[2] - crop[0]) * (crop[3] - crop[1]) - inter)


@dataclass(frozen=True)
class IoUCrop(Transform):
    """SSD's crop: pick a minimum IoU from ``options`` (1.0: no crop); up to ``trials`` crops of
    ``min_scale``-``max_scale`` of each side with an aspect ratio in range, kept when some box
    centre lies inside it and one of those boxes overlaps it by the IoU. Boxes whose centre is
    outside are dropped, the rest clipped to the crop. An image without boxes is never cropped
    (the references' loop only ever ends there with the "no crop" option)."""
    min_scale: float = 0.3
    max_scale: float = 1.0
    min_aspect_ratio: float = 0.5
    max_aspect_ratio: float = 2.0
    options: tuple = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)
    trials: int = 40

    def params(self, rng, sample):
        boxes = sample["boxes"]
        if not len(boxes):
            return None
        h, w = sample["image"].shape[:2]
        while True:
            min_iou = self.options[int(rng.integers(len(self.options)))]
            if min_iou >= 1.0:
                return None
            for _ in range(self.trials):
                r = self.min_scale + (self.max_scale - self.min_scale) * rng.random(2)
                nw, nh = int(w * r[0]), int(h * r[1])
                if nh == 0 or not self.min_aspect_ratio <= nw / nh <= self.max_aspect_ratio:
                    continue
                a, b = rng.random(2)
                left, top = int((w - nw) * a), int((h - nh) * b)
                right, bottom = left + nw, top + nh
                if left == right or top == bottom:
                    continue
                cx = 0.5 * (boxes[:, 0] + boxes[:, 2])
                cy = 0.5 * (boxes[:, 1] + boxes[:, 3])
                inside = (left < cx) & (cx < right) & (top < cy) & (cy < bottom)
                if not inside.any():
                    continue
                if _iou_with(boxes[inside], (left, top, right, bottom)).max() < min_iou:
                    continue
                return {"top": top, "left": left, "height": nh, "width": nw, "inside": inside}

    def apply(self, sample, params):
        if params is None:
            return sample
        t, l, h, w = params["top"], params["left"], params["height"], params["width"]
        keep = params["inside"]
        boxes = sample["boxes"][keep] - np.float32([l, t, l, t])
        boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, w)
        boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, h)
        return _sample(sample["image"][t:t + h, l:l + w], boxes, sample["labels"][keep])


@dataclass(frozen=True)
class Compose(Transform):
    transforms: tuple = ()

    def __call__(self, sample, rng):
        for t in self.transforms:
            sample = t(sample, rng)
        return sample

    def describe(self) -> str:
        return ", ".join(type(t).__name__ for t in self.transforms) or "none"


RECIPES = {
    "none": lambda: Compose(()),
    "hflip": lambda: Compose((HorizontalFlip(),)),
    "ssd": lambda: Compose((PhotometricDistort(), ZoomOut(), IoUCrop(), HorizontalFlip())),
}


def recipe(name: str) -> Compose:
    """torchvision's ``--data-augmentation`` recipes for detection: hflip (its default), ssd, none."""
    if name not in RECIPES:
        raise ValueError(f"detection augmentation is one of {', '.join(RECIPES)}, not {name!r}")
    return RECIPES[name]()


__all__ = ["HorizontalFlip", "PhotometricDistort", "ZoomOut", "IoUCrop", "Compose", "recipe", "RECIPES",
           "adjust_brightness", "adjust_contrast", "adjust_saturation", "adjust_hue"]
