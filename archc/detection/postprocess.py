"""What every detector kind's post-processing shares: the padded ``Detections`` of a batch and
per-class NMS (torchvision's ``batched_nms`` with the classes as groups), static shapes."""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from . import boxes as B


@dataclass(frozen=True)
class Detections:
    """Padded detections of a batch: boxes (B, D, 4) xyxy, scores (B, D), labels (B, D)
    int32, count (B,); entries from ``count`` on are padding (boxes and scores 0, labels -1)."""
    boxes: jax.Array
    scores: jax.Array
    labels: jax.Array
    count: jax.Array


jax.tree_util.register_dataclass(Detections, data_fields=["boxes", "scores", "labels", "count"], meta_fields=[])


def pad_invalid(boxes, scores, labels, valid):
    """One image's detections (D, …) with the invalid entries made padding, and their count."""
    count = valid.sum(-1).astype(jnp.int32)
    return Detections(jnp.where(valid[..., None], boxes, 0.0), jnp.where(valid, scores, 0.0),
                      jnp.where(valid, labels, -1).astype(jnp.int32), count)


def class_nms(boxes, scores, valid, labels, nms_thresh: float, max_det: int, class_axis: int = 0,
              trick: bool = True):
    """NMS within each class, then the best ``max_det`` kept entries of all classes. ``scores``,
    ``valid`` and ``labels`` are grids with the classes along ``class_axis`` (boxes the same grid
    × 4); the best entries are taken in the grid's row-major order (ties: the earlier entry).
    ``trick``: the IoUs are those of the boxes offset by their label as torchvision's
    batched_nms offsets them on its coordinate-trick path (``boxes.coordinate_offsets``).
    Returns boxes (max_det, 4), scores, labels and a valid mask, by descending score."""
    seen = boxes + B.coordinate_offsets(boxes, labels, valid, valid.sum()) if trick else boxes
    kept = jax.vmap(lambda b, s, v: B.nms_keep(b, s, v, nms_thresh), in_axes=class_axis,
                    out_axes=class_axis)(seen, scores, valid)
    flat = jnp.where(kept, scores, -jnp.inf).reshape(-1)
    best, pos = jax.lax.top_k(flat, min(max_det, flat.shape[0]))
    return boxes.reshape(-1, 4)[pos], best, labels.reshape(-1)[pos], best > -jnp.inf


def per_class_nms(boxes, scores, keep, k: int, nms_thresh: float, max_det: int, trick: bool = False):
    """Per class (row of ``scores`` (C, N) over ``boxes`` (N, 4), ``keep`` the candidates): the
    best ``k`` candidates, then ``class_nms`` among them (class-major: ties go to the lower
    class, then the lower index). Returns boxes (max_det, 4), scores, 1-based labels (row + 1,
    int32) and a valid mask."""
    top, idx = jax.lax.top_k(jnp.where(keep, scores, -jnp.inf), k)
    valid = jnp.take_along_axis(keep, idx, 1)
    labels = jnp.broadcast_to(jnp.arange(1, scores.shape[0] + 1, dtype=jnp.int32)[:, None], valid.shape)
    return class_nms(boxes[idx], top, valid, labels, nms_thresh, max_det, trick=trick)
