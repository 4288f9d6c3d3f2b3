"""Box arithmetic in JAX with torchvision's exact rules (``torchvision.ops.boxes``,
``models/detection/_utils.py``): static shapes, jit-able, float32 (or float64 throughout), boxes as ``(x1, y1, x2, y2)``.

Everything that torchvision does with a variable number of boxes takes here a fixed-size array
plus a boolean ``valid`` mask, and returns fixed-size results plus a count."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .declare import BOX_CLAMP
# torchvision.ops.batched_nms on CPU runs one NMS per group ("vanilla") above this many boxes and
# one NMS on offset boxes (the coordinate trick) at or below it; the two differ by float noise.
VANILLA_ABOVE = 1000


def decode(rel_codes, anchors, weights=(1.0, 1.0, 1.0, 1.0), clamp=BOX_CLAMP):
    """BoxCoder.decode_single: ``rel_codes`` (..., N, 4·K) against ``anchors`` (N, 4) (or
    broadcastable) -> (..., N, K·4) boxes, in torchvision's operation order."""
    anchors = anchors.astype(rel_codes.dtype)
    widths = anchors[..., 2] - anchors[..., 0]
    heights = anchors[..., 3] - anchors[..., 1]
    ctr_x = anchors[..., 0] + 0.5 * widths
    ctr_y = anchors[..., 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx = rel_codes[..., 0::4] / wx
    dy = rel_codes[..., 1::4] / wy
    dw = jnp.minimum(rel_codes[..., 2::4] / ww, clamp)
    dh = jnp.minimum(rel_codes[..., 3::4] / wh, clamp)
    pred_ctr_x = dx * widths[..., None] + ctr_x[..., None]
    pred_ctr_y = dy * heights[..., None] + ctr_y[..., None]
    pred_w = jnp.exp(dw) * widths[..., None]
    pred_h = jnp.exp(dh) * heights[..., None]
    half_w, half_h = 0.5 * pred_w, 0.5 * pred_h
    out = jnp.stack((pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h), axis=-1)
    return out.reshape(*out.shape[:-2], -1)


def encode(boxes, anchors, weights=(1.0, 1.0, 1.0, 1.0)):
    """BoxCoder.encode_single (torchvision's encode_boxes): the codes that ``decode`` turns
    ``anchors`` (N, 4) back into ``boxes`` (N, 4)."""
    wx, wy, ww, wh = weights
    ex_w = anchors[..., 2] - anchors[..., 0]
    ex_h = anchors[..., 3] - anchors[..., 1]
    ex_cx = anchors[..., 0] + 0.5 * ex_w
    ex_cy = anchors[..., 1] + 0.5 * ex_h
    gt_w = boxes[..., 2] - boxes[..., 0]
    gt_h = boxes[..., 3] - boxes[..., 1]
    gt_cx = boxes[..., 0] + 0.5 * gt_w
    gt_cy = boxes[..., 1] + 0.5 * gt_h
    return jnp.stack((wx * (gt_cx - ex_cx) / ex_w, wy * (gt_cy - ex_cy) / ex_h,
                      ww * jnp.log(gt_w / ex_w), wh * jnp.log(gt_h / ex_h)), axis=-1)


def clip(boxes, height, width):
    """clip_boxes_to_image: x into [0, width], y into [0, height] (not width - 1). ``height`` and
    ``width`` may be traced scalars (one image's size inside a batch)."""
    x = jnp.clip(boxes[..., 0::2], 0, width)
    y = jnp.clip(boxes[..., 1::2], 0, height)
    return jnp.stack((x, y), axis=-1).reshape(boxes.shape)


def area(boxes):
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def iou(a, b):
    """box_iou: (N, 4) x (M, 4) -> (N, M), ``inter / (area_a + area_b - inter)`` with no epsilon
    (0/0 gives NaN, which suppresses nothing, as in torchvision)."""
    lt = jnp.maximum(a[:, None, :2], b[None, :, :2])
    rb = jnp.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = jnp.maximum(rb - lt, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def remove_small(boxes, valid, min_size):
    """remove_small_boxes as a mask: ``valid`` and both sides >= ``min_size``."""
    ws = boxes[..., 2] - boxes[..., 0]
    hs = boxes[..., 3] - boxes[..., 1]
    return valid & (ws >= min_size) & (hs >= min_size)


def score_order(scores, valid):
    """Stable descending order of the valid scores, the invalid ones last (by index)."""
    return jnp.lexsort((-scores, ~valid)).astype(jnp.int32)


def iou_threshold(t, dtype=jnp.float32):
    """The threshold ``c`` in the IoUs' ``dtype`` with ``iou > c`` exactly when ``iou > t`` in
    double, as torchvision's NMS kernel compares (a float IoU against the double argument;
    float32(0.49) rounds up, so IoU = float32(0.49) suppresses there; float64 IoUs compare
    with ``t`` itself). A traced ``t`` is in the IoUs' dtype already."""
    if isinstance(t, (int, float)):
        if jnp.dtype(dtype) == jnp.float64:
            return np.float64(t)
        c = np.float32(t)
        return np.nextafter(c, np.float32(-np.inf)) if float(c) > t else c
    return t


def _greedy(overlap, valid):
    """Greedy suppression in sorted order: entry i, when still alive, suppresses every later
    entry j with ``overlap[i, j]`` true. Returns the kept mask."""
    n = valid.shape[0]
    later = jnp.arange(n)[None, :] > jnp.arange(n)[:, None]
    overlap = overlap & later

    def body(i, suppressed):
        alive = valid[i] & ~suppressed[i]
        return suppressed | (alive & overlap[i])
    suppressed = jax.lax.fori_loop(0, n, body, jnp.zeros((n,), bool))
    return valid & ~suppressed


def _compact(order, keep, max_out):
    """The kept entries' original indices in order, padded with 0 to ``max_out``, and their count."""
    n = keep.shape[0]
    pos = jnp.lexsort((jnp.arange(n), ~keep))           # kept first, in sorted order
    idx = order[pos]
    count = jnp.minimum(keep.sum(), max_out).astype(jnp.int32)
    if max_out > n:
        idx = jnp.concatenate([idx, jnp.zeros((max_out - n,), idx.dtype)])
    idx = idx[:max_out]
    return jnp.where(jnp.arange(max_out) < count, idx, 0).astype(jnp.int32), count


def nms_keep(boxes, scores, valid, iou_thresh):
    """The kept mask of ``nms`` (N,) in the boxes' own order."""
    boxes, scores, valid = jnp.asarray(boxes), jnp.asarray(scores), jnp.asarray(valid)
    order = score_order(scores, valid)
    b = boxes[order]
    keep = _greedy(iou(b, b) > iou_threshold(iou_thresh, b.dtype), valid[order])
    return jnp.zeros_like(keep).at[order].set(keep)


def nms(boxes, scores, valid, iou_thresh, max_out):
    """torchvision.ops.nms on the valid boxes: in stable descending score order, a kept box
    suppresses every later box whose IoU with it is strictly greater than ``iou_thresh``.
    Returns (indices int32 (max_out,), count): the kept boxes' indices by descending score, the
    entries from ``count`` on are 0."""
    boxes, scores, valid = jnp.asarray(boxes), jnp.asarray(scores), jnp.asarray(valid)
    order = score_order(scores, valid)
    b = boxes[order]
    keep = _greedy(iou(b, b) > iou_threshold(iou_thresh, b.dtype), valid[order])
    return _compact(order, keep, max_out)


def batched_nms(boxes, scores, groups, valid, iou_thresh, max_out, vanilla_above=VANILLA_ABOVE):
    """torchvision.ops.batched_nms (CPU): NMS within each group (class or level) only. As in
    torchvision, with at most ``vanilla_above`` valid boxes the IoUs are those of the boxes offset
    by ``group · (max coordinate + 1)`` (the coordinate trick, whose float rounding can flip an IoU
    that sits on the threshold), above it those of the boxes themselves (one NMS per group)."""
    boxes, scores, groups, valid = map(jnp.asarray, (boxes, scores, groups, valid))
    order = score_order(scores, valid)
    b, g, v = boxes[order], groups[order], valid[order]
    count = v.sum()
    overlap = iou(b, b)
    max_coord = jnp.max(jnp.where(v[:, None], b, -jnp.inf))
    shifted = b + (g.astype(b.dtype) * (max_coord + 1.0))[:, None]
    overlap = jnp.where(count > vanilla_above, overlap, iou(shifted, shifted))
    same = g[:, None] == g[None, :]
    keep = _greedy(same & (overlap > iou_threshold(iou_thresh, b.dtype)), v)
    return _compact(order, keep, max_out)


def coordinate_offsets(boxes, groups, valid, total_valid, vanilla_above=VANILLA_ABOVE):
    """The offsets that ``batched_nms``'s coordinate trick adds to ``boxes`` (…, 4) of ``groups``
    (…) (0 where torchvision takes the vanilla path); for callers that run the per-group NMS
    themselves (SSD's per-class candidate grid) and must see torchvision's IoUs."""
    max_coord = jnp.max(jnp.where(valid[..., None], boxes, -jnp.inf))
    off = groups.astype(boxes.dtype) * (max_coord + 1.0)
    return jnp.where(total_valid > vanilla_above, 0.0, off)[..., None]
