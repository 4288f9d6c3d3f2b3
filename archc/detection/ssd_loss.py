"""SSD's training loss (torchvision ``SSD.compute_loss``), batched with static shapes.

Each default box is matched by ``SSDMatcher`` (IoU ≥ ``fg_iou_thresh``, each ground-truth box
forced onto its best default box); the foreground boxes' codes against the encoded matched box
(box coder weights ``box_weights``) give a smooth-L1 (β 1) sum; per default box the
cross-entropy against the matched label (0: background), of which all foreground terms and the
``(1 - positive_fraction) / positive_fraction`` × foreground-count largest background terms of
each image are kept (hard negative mining). Both sums are divided by the batch's foreground
count (at least 1): keys ``bbox_regression`` and ``classification``."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from . import boxes as B
from .loss_terms import cross_entropy, smooth_l1
from .matcher import ssd_match
from .ssd import flatten_head

KEYS = ("bbox_regression", "classification")


class SSDLoss:
    def __init__(self, detector):
        self.det, self.decl = detector, detector.decl
        self.outputs = tuple(self.decl.scores) + tuple(self.decl.boxes)

    def head_outputs(self, outputs, input_size):
        """(class logits (B, A, C), box codes (B, A, 4), default boxes (A, 4)) in torchvision's order."""
        d, det = self.decl, self.det
        logits = jnp.concatenate([flatten_head(outputs[n], det.classes) for n in d.scores], 1)
        codes = jnp.concatenate([flatten_head(outputs[n], 4) for n in d.boxes], 1)
        grids = [tuple(outputs[n].shape[1:3]) for n in d.scores]
        return logits, codes, jnp.asarray(det.anchors(grids, input_size, np.dtype(codes.dtype).type))

    def losses(self, outputs, batch, rng=None) -> dict:
        logits, codes, anchors = self.head_outputs(outputs, tuple(batch["image"].shape[1:3]))
        d = self.decl
        gt = jnp.asarray(batch["boxes"], codes.dtype)
        valid = jnp.arange(gt.shape[1])[None, :] < jnp.asarray(batch["count"])[:, None]
        box_loss, cls_target, foreground = jax.vmap(functools.partial(self._one_image, anchors))(
            codes, gt, jnp.asarray(batch["labels"]), valid)
        ce = cross_entropy(logits, cls_target)                                   # (B, A)
        positive = cls_target > 0
        ratio = (1.0 - d.positive_fraction) / d.positive_fraction
        num_negative = ratio * positive.sum(1, keepdims=True)
        negative_loss = jnp.where(positive, -jnp.inf, ce)
        rank = jnp.argsort(jnp.argsort(-negative_loss, axis=1, stable=True), axis=1)
        hard_negative = rank < num_negative
        n = jnp.maximum(1, foreground.sum()).astype(codes.dtype)
        return {"bbox_regression": box_loss.sum() / n,
                "classification": (jnp.sum(ce * positive) + jnp.sum(ce * hard_negative)) / n}

    def _one_image(self, anchors, codes, gt, labels, valid):
        d = self.decl
        matches = ssd_match(B.iou(gt, anchors), valid, d.fg_iou_thresh, d.bg_iou_thresh)
        fg = matches >= 0
        idx = jnp.maximum(matches, 0)
        matched = jnp.where(fg[:, None], gt[idx], anchors)          # background: a zero code, no NaN
        target = B.encode(matched, anchors, d.box_weights)
        box_loss = jnp.sum(smooth_l1(codes, target) * fg[:, None])
        return box_loss, jnp.where(fg, labels[idx], 0).astype(jnp.int32), fg.sum()
