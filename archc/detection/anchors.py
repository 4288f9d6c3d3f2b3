"""Anchors (default boxes) as torchvision makes them, in NumPy float32: they depend on shapes
only, so they are constants of the traced program, computed once per input size.

``default_boxes`` is SSD's DefaultBoxGenerator, ``grid_anchors`` torchvision's AnchorGenerator
(Faster R-CNN / RetinaNet); both return (N, 4) float32 xyxy in pixels of the (padded) input, in
torchvision's order (levels, then rows, columns, then the boxes of one location)."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

F32 = np.float32


def ssd_scales(num_levels: int, min_ratio: float = 0.15, max_ratio: float = 0.9) -> list[float]:
    """DefaultBoxGenerator's scales when none are given: evenly spaced, then 1.0."""
    if num_levels == 1:
        return [min_ratio, max_ratio]
    step = max_ratio - min_ratio
    return [min_ratio + step * k / (num_levels - 1.0) for k in range(num_levels)] + [1.0]


def ssd_wh_pairs(scales: Sequence[float], aspect_ratios: Sequence[Sequence[float]]) -> list[np.ndarray]:
    """Per level: (s, s), (sqrt(s·s'), same), then (s·√ar, s/√ar) and its transpose per ratio,
    in Python double, stored as float32."""
    out = []
    for k, ratios in enumerate(aspect_ratios):
        s_k = scales[k]
        s_prime = math.sqrt(scales[k] * scales[k + 1])
        pairs = [[s_k, s_k], [s_prime, s_prime]]
        for ar in ratios:
            sq = math.sqrt(ar)
            pairs.extend([[s_k * sq, s_k / sq], [s_k / sq, s_k * sq]])
        out.append(np.asarray(pairs, F32))
    return out


def ssd_boxes_per_location(aspect_ratios) -> list[int]:
    return [2 + 2 * len(r) for r in aspect_ratios]


def default_boxes(grid_sizes: Sequence[tuple[int, int]], image_size: tuple[int, int],
                  aspect_ratios: Sequence[Sequence[float]], scales: Sequence[float] | None = None,
                  steps: Sequence[int] | None = None, clip: bool = True,
                  min_ratio: float = 0.15, max_ratio: float = 0.9, dtype=F32) -> np.ndarray:
    """SSD's default boxes for feature maps of ``grid_sizes`` (h, w) on an input of
    ``image_size`` (h, w): centres ((i + 0.5) / f_k with f_k = size / step), sizes clamped to
    [0, 1] when ``clip`` (the centres and corners are not), scaled to pixels. ``dtype``: that
    of the feature maps, in which torchvision computes the corners (its centres and sizes are
    float32 whatever the dtype)."""
    if len(grid_sizes) != len(aspect_ratios) or steps is not None and len(steps) != len(aspect_ratios):
        raise ValueError("default_boxes: grid_sizes, aspect_ratios and steps need one entry per level")
    scales = list(scales) if scales is not None else ssd_scales(len(aspect_ratios), min_ratio, max_ratio)
    if len(scales) != len(aspect_ratios) + 1:
        raise ValueError(f"default_boxes: {len(aspect_ratios)} levels need {len(aspect_ratios) + 1} scales")
    wh = ssd_wh_pairs(scales, aspect_ratios)
    levels = []
    for k, (fh, fw) in enumerate(grid_sizes):
        if steps is not None:
            x_f, y_f = image_size[1] / steps[k], image_size[0] / steps[k]
        else:
            y_f, x_f = fh, fw
        # torch: (arange(int64) + 0.5) is float32, then divided by the Python float in float32
        xs = (np.arange(fw).astype(F32) + F32(0.5)) / F32(x_f)
        ys = (np.arange(fh).astype(F32) + F32(0.5)) / F32(y_f)
        sy, sx = np.meshgrid(ys, xs, indexing="ij")
        centres = np.stack([sx.reshape(-1), sy.reshape(-1)], -1)            # (h·w, 2)
        pairs = np.clip(wh[k], 0, 1) if clip else wh[k]
        n = len(pairs)
        c = np.repeat(centres, n, axis=0)
        s = np.tile(pairs, (fh * fw, 1))
        levels.append(np.concatenate([c, s], 1))
    boxes = np.concatenate(levels, 0).astype(F32).astype(dtype)
    xy_size = np.asarray([image_size[1], image_size[0]], dtype)
    half = dtype(0.5) * boxes[:, 2:]
    return np.concatenate([(boxes[:, :2] - half) * xy_size, (boxes[:, :2] + half) * xy_size], 1).astype(dtype)


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> np.ndarray:
    """AnchorGenerator.generate_anchors: zero-centred (A, 4), ratio-major then size, with
    aspect = h / w, rounded half to even, in float32."""
    scales = np.asarray(sizes, F32)
    ratios = np.asarray(aspect_ratios, F32)
    h_ratios = np.sqrt(ratios)
    w_ratios = F32(1) / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    return np.round(np.stack([-ws, -hs, ws, hs], 1) / F32(2)).astype(F32)


def anchors_per_location(sizes, aspect_ratios) -> list[int]:
    return [len(s) * len(a) for s, a in zip(sizes, aspect_ratios)]


def grid_anchors(grid_sizes: Sequence[tuple[int, int]], image_size: tuple[int, int],
                 sizes: Sequence[Sequence[float]], aspect_ratios: Sequence[Sequence[float]]) -> np.ndarray:
    """AnchorGenerator.forward: per level, the cell anchors shifted to ``i · stride`` (the cell's
    top-left corner) with the integer stride ``image_size // grid_size`` of the padded input
    (800 // 13 = 61 on the extra pooled level, not 64)."""
    if not len(grid_sizes) == len(sizes) == len(aspect_ratios):
        raise ValueError("grid_anchors: grid_sizes, sizes and aspect_ratios need one entry per level")
    out = []
    for (gh, gw), s, a in zip(grid_sizes, sizes, aspect_ratios):
        base = cell_anchors(s, a)
        sh, sw = image_size[0] // gh, image_size[1] // gw
        sy, sx = np.meshgrid(np.arange(gh, dtype=np.int64) * sh, np.arange(gw, dtype=np.int64) * sw, indexing="ij")
        shifts = np.stack([sx.reshape(-1), sy.reshape(-1)] * 2, 1).astype(F32)
        out.append((shifts[:, None, :] + base[None, :, :]).reshape(-1, 4))
    return np.concatenate(out, 0).astype(F32)
