"""torchvision's detection input transform (GeneralizedRCNNTransform, eval mode) in JAX:
normalise, bilinear resize without antialiasing (F.interpolate, align_corners=False), zero-pad
the batch to a multiple of ``size_divisible``; and the inverse map of boxes to the original
image sizes (transform.postprocess).

Images are (H, W, C) float arrays in [0, 1]; the batch is NHWC. The resized sizes are Python
integers (each image's size is static under jit)."""
from __future__ import annotations

import math
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from ..compiler.kernels import linear_taps, resize_to
# The settings of one transform are the network's detect_input declaration (fixed_size (h, w)
# replaces the min/max rule; SSD: (300, 300)).
from .declare import DetectInput


def resized_size(h: int, w: int, spec: DetectInput) -> tuple[int, int]:
    """The size torchvision resizes an (h, w) image to: ``fixed_size``, else
    floor(side · s) with s = min(min_size / short, max_size / long) in Python double (the
    image is resized even when it already fits)."""
    if spec.fixed_size is not None:
        return tuple(spec.fixed_size)
    s = min(spec.min_size / min(h, w), spec.max_size / max(h, w))
    return int(math.floor(h * s)), int(math.floor(w * s))


# torch's bilinear taps along one axis and the separable resize: one definition, shared with
# the language's upsample(size=@t) (compiler/kernels.py)
_linear_taps = linear_taps


def resize_bilinear(image, size: tuple[int, int]):
    """F.interpolate(mode="bilinear", align_corners=False) of an (H, W, C) image: along the
    width, then the height, as torch's separable CPU kernel does."""
    return resize_to(image, size, "bilinear", axes=(0, 1))


def normalize(image, mean, std):
    """(image - mean) / std per channel, in the image's dtype (a division, as torch does); a
    NumPy image in NumPy."""
    dt = image.dtype
    xp = np if isinstance(image, np.ndarray) else jnp
    return (image - xp.asarray(mean, dt)) / xp.asarray(std, dt)


def padded_size(sizes: Sequence[tuple[int, int]], size_divisible: int) -> tuple[int, int]:
    h = max(s[0] for s in sizes)
    w = max(s[1] for s in sizes)
    d = float(size_divisible)
    return int(math.ceil(h / d) * d), int(math.ceil(w / d) * d)


def transform(images: Sequence, spec: DetectInput):
    """GeneralizedRCNNTransform.forward in eval mode: each (H, W, C) image normalised, then
    resized, then the batch zero-padded at the bottom and right. Returns (batch NHWC,
    [(h, w) resized size of each image])."""
    out, sizes = [], []
    for im in images:
        im = jnp.asarray(im)
        if im.ndim != 3:
            raise ValueError(f"an image is (height, width, channels), got shape {tuple(im.shape)}")
        if not jnp.issubdtype(im.dtype, jnp.floating):
            raise TypeError(f"images are floats in [0, 1], got {im.dtype}")
        size = resized_size(im.shape[0], im.shape[1], spec)
        out.append(resize_bilinear(normalize(im, spec.mean, spec.std), size))
        sizes.append(size)
    ph, pw = padded_size(sizes, spec.size_divisible)
    batch = jnp.stack([jnp.pad(im, ((0, ph - im.shape[0]), (0, pw - im.shape[1]), (0, 0))) for im in out])
    return batch, sizes


def training_example(image: np.ndarray, boxes: np.ndarray, spec: DetectInput, canvas: tuple[int, int]):
    """One training image as the detector's transform sees it, in NumPy: normalised, resized
    by its rule (``resized_size``), zero-padded at the bottom and right to ``canvas`` (h, w);
    its ``boxes`` (N, 4) scaled with it (``rescale_boxes``). Returns (image (h, w, C) float32,
    boxes (N, 4) float32, the resized size (h, w))."""
    h, w = image.shape[:2]
    size = resized_size(h, w, spec)
    if size[0] > canvas[0] or size[1] > canvas[1]:
        raise ValueError(f"a {w}x{h} image resizes to {size[1]}x{size[0]}, larger than the network's "
                         f"{canvas[1]}x{canvas[0]} input: raise its res")
    x = resize_bilinear(normalize(np.asarray(image, np.float32), spec.mean, spec.std), size)
    out = np.zeros((*canvas, x.shape[-1]), np.float32)
    out[:size[0], :size[1]] = x
    b = rescale_boxes(np.asarray(boxes, np.float32).reshape(-1, 4), (h, w), size).astype(np.float32)
    return out, b, size


def rescale_boxes(boxes, from_size, to_size):
    """resize_boxes: (…, 4) boxes in an image of ``from_size`` (h, w) to ``to_size``, with the
    float32 ratios to / from (x by the width ratio, y by the height ratio). Sizes may be arrays
    (…, 2) for a batch."""
    xp = np if isinstance(boxes, np.ndarray) else jnp
    f = xp.asarray(from_size, xp.float32)
    t = xp.asarray(to_size, xp.float32)
    ratio = t / f                                     # (…, 2): (h, w)
    rh, rw = ratio[..., 0:1], ratio[..., 1:2]
    scale = xp.concatenate([rw, rh, rw, rh], -1)
    if scale.ndim == boxes.ndim - 1:
        scale = scale[..., None, :]
    return boxes * scale
