"""YOLO v1's training loss (Redmon et al., "You Only Look Once", CVPR 2016, Sec. 2.2, Eq. 3), the
paper's sum-squared error over the S×S×(5B + C) output, batched with static shapes.

The cell that holds a ground-truth box's centre is responsible for it (when several centres fall
in one cell the last box is that cell's, as darknet's label grid is written); of its B
predictors the one whose decoded box has the highest IoU with the box (the first of ties) is
responsible. Per image::

    λcoord Σ_obj [(x - x̂)² + (y - ŷ)² + (√w - √ŵ)² + (√h - √ĥ)²]      "coordinates"
    + Σ_obj (C - IoU)²                                                  "objectness"
    + λnoobj Σ_noobj C²                                                 "no_object"
    + Σ_cells with an object Σ_c (p(c) - 1[c = class])²                 "classification"

x, y the centre's offset in its cell, w, h relative to the image (the network predicts √w, √h
when ``yolo_grid(sqrt=true)``); the confidence target is the responsible predictor's IoU with
the box, a constant (no gradient). Each key is the batch's sum divided by the batch size (the
mean per image); ``yolo_grid(lambda_coord, lambda_noobj)`` set the weights (5 and 0.5)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from . import boxes as B

KEYS = ("coordinates", "objectness", "no_object", "classification")


class YoloV1Loss:
    def __init__(self, detector):
        self.det, self.grid = detector, detector.grid
        self.outputs = tuple(detector.decl.scores)

    def losses(self, outputs, batch, rng=None) -> dict:
        y = outputs[self.outputs[0]]
        h, w = batch["image"].shape[1:3]
        gt = jnp.asarray(batch["boxes"], y.dtype)
        valid = jnp.arange(gt.shape[1])[None, :] < jnp.asarray(batch["count"])[:, None]
        parts = jax.vmap(lambda yi, g, lab, v: self._one_image(yi, g, lab, v, h, w))(
            y, gt, jnp.asarray(batch["labels"], jnp.int32), valid)
        return {k: p.sum() / y.shape[0] for k, p in zip(KEYS, parts)}

    def _one_image(self, y, gt, labels, valid, h, w):
        g = self.grid
        s, nb = g.side, g.boxes
        pred = y[..., :5 * nb].reshape(s, s, nb, 5)
        probs = y[..., 5 * nb:]
        # the cell of each box's centre; the last box of a cell wins
        cx, cy = (gt[:, 0] + gt[:, 2]) / 2 / w, (gt[:, 1] + gt[:, 3]) / 2 / h
        col = jnp.clip(jnp.floor(cx * s), 0, s - 1).astype(jnp.int32)
        row = jnp.clip(jnp.floor(cy * s), 0, s - 1).astype(jnp.int32)
        cell = jnp.where(valid, row * s + col, -1)
        n = gt.shape[0]
        owner = jnp.max(jnp.where(cell[None, :] == jnp.arange(s * s)[:, None], jnp.arange(n)[None, :], -1), 1)
        has = (owner >= 0).reshape(s, s)
        k = jnp.maximum(owner, 0).reshape(s, s)
        box = gt[k]                                                           # (s, s, 4) pixels
        rows = jnp.arange(s, dtype=y.dtype)[:, None]
        cols = jnp.arange(s, dtype=y.dtype)[None, :]
        tx = (box[..., 0] + box[..., 2]) / 2 / w * s - cols
        ty = (box[..., 1] + box[..., 3]) / 2 / h * s - rows
        tw = jnp.sqrt(jnp.where(has, (box[..., 2] - box[..., 0]) / w, 1.0))
        th = jnp.sqrt(jnp.where(has, (box[..., 3] - box[..., 1]) / h, 1.0))
        # the responsible predictor: the highest IoU of its decoded box with the cell's box
        decoded = self.det.decode(jax.lax.stop_gradient(y)[None], (h, w))[0][0].reshape(s, s, nb, 4)
        ious = jax.vmap(jax.vmap(lambda d, b: B.iou(d, b[None])[:, 0]))(decoded, jnp.where(has[..., None], box, 0.0))
        ious = jnp.nan_to_num(ious)
        best = jnp.argmax(ious, -1)
        resp = has[..., None] & (jnp.arange(nb)[None, None, :] == best[..., None])     # (s, s, nb)
        sw, sh = (pred[..., 2], pred[..., 3]) if g.sqrt else (jnp.sqrt(jnp.maximum(pred[..., 2], 1e-12)),
                                                            jnp.sqrt(jnp.maximum(pred[..., 3], 1e-12)))
        coord = ((pred[..., 0] - tx[..., None]) ** 2 + (pred[..., 1] - ty[..., None]) ** 2
                 + (sw - tw[..., None]) ** 2 + (sh - th[..., None]) ** 2)
        conf = pred[..., 4]
        target_conf = jax.lax.stop_gradient(ious)
        classes = jax.nn.one_hot(jnp.where(has, labels[k] - 1, 0), g.classes, dtype=y.dtype)
        return (g.lambda_coord * jnp.sum(jnp.where(resp, coord, 0.0)),
                jnp.sum(jnp.where(resp, (conf - target_conf) ** 2, 0.0)),
                g.lambda_noobj * jnp.sum(jnp.where(resp, 0.0, conf ** 2)),
                jnp.sum(jnp.where(has[..., None], (probs - classes) ** 2, 0.0)))
