"""The images ``archc.detect`` takes: paths, PIL images, or arrays (uint8 0-255 or floats in
[0, 1]), one or a list, as (H, W, 3) float arrays in [0, 1] for the input transform."""
from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from .detector import DetectError


def as_image(im, i: int) -> np.ndarray:
    """An (H, W, 3) float32 image in [0, 1] from a path, PIL image or array (uint8 0-255 or
    float 0-1)."""
    if isinstance(im, (str, Path)):
        from ..runtime.predict import PredictError, load_image
        try:
            im = load_image(im)
        except PredictError as e:
            raise DetectError(str(e)) from None
    if hasattr(im, "convert") and hasattr(im, "size"):
        im = np.asarray(im.convert("RGB"))
    a = np.asarray(im)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, -1)
    if a.ndim != 3 or a.shape[-1] not in (1, 3) or 0 in a.shape:
        raise DetectError(f"image {i}: expected (height, width, 3), got shape {a.shape}")
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, -1)
    if a.dtype == np.uint8:
        return a.astype(np.float32) / np.float32(255)
    if not np.issubdtype(a.dtype, np.floating):
        raise DetectError(f"image {i}: uint8 (0-255) or float (0-1) pixels, not {a.dtype}")
    # float64 images stay float64 where JAX computes in it (jax.enable_x64): the whole pipeline
    # then runs in double, as torchvision's model.double() does
    a = a.astype(np.float64 if a.dtype == np.float64 and jax.config.jax_enable_x64 else np.float32)
    if not np.isfinite(a).all():
        raise DetectError(f"image {i}: has NaN or infinite pixels")
    return a


def as_images(images) -> list:
    """One image or a list of them (``as_image``'s kinds; an (N, H, W, 3) array is N images) as
    a list of (H, W, 3) float arrays in [0, 1]."""
    if isinstance(images, (str, Path)) or hasattr(images, "convert"):
        images = [images]
    elif isinstance(images, np.ndarray) or isinstance(images, jax.Array):
        images = [images] if images.ndim in (2, 3) else list(images)
    images = list(images)
    if not images:
        raise DetectError("no images given")
    return [as_image(im, i) for i, im in enumerate(images)]
