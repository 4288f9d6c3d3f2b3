"""Faster R-CNN's detections from its box head (torchvision ``RoIHeads.postprocess_detections``),
one image, static shapes."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from . import boxes as B
from .postprocess import class_nms, pad_invalid


def postprocess_detections(decl, logits, codes, proposals, valid, size):
    """Class logits (R, C) and box codes (R, 4C) on ``proposals`` (R, 4) (``valid`` (R,)) of an
    image of ``size`` (h, w), with ``decl`` the network's detect(...) -> its padded detections."""
    c = logits.shape[-1]
    boxes = B.decode(codes, proposals, decl.box_weights, decl.box_clamp).reshape(-1, c, 4)[:, 1:]   # (R, C-1, 4)
    boxes = B.clip(boxes, size[0], size[1])
    scores = jax.nn.softmax(logits, -1)[:, 1:]
    keep = valid[:, None] & (scores > scores.dtype.type(decl.score_thresh))
    keep = B.remove_small(boxes, keep, decl.min_size)
    labels = jnp.broadcast_to(jnp.arange(1, c, dtype=jnp.int32)[None], keep.shape)
    # torchvision's batched_nms never crosses classes: one NMS per class, on the boxes it
    # compares (offset by the coordinate trick when it takes that path); the best detections
    # proposal-major, as torchvision's
    return pad_invalid(*class_nms(boxes, scores, keep, labels, decl.nms_thresh, decl.detections_per_img,
                                  class_axis=1))
