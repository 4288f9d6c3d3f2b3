"""YOLO v1's post-processing (Redmon et al. 2016, Sec. 2): class-specific confidence, a
threshold, NMS per class."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from . import boxes as B
from .detector import DetectError, Detector
from .postprocess import pad_invalid, per_class_nms


class YoloV1Detector(Detector):
    """Cell (row r, col c) box b: centre ((x + c) / S · W, (y + r) / S · H), size
    (w² · W, h² · H) (w, h when sqrt is false); its score for class k is Pr(k | object) ·
    confidence. (box, class) pairs scoring above ``score_thresh`` (the best ``topk_candidates``
    of each class) go through NMS per class (IoU above ``nms_thresh`` suppresses, on the
    unclipped boxes), then boxes are clipped to the image. Labels are 1-based (0 is the
    background, as torchvision's)."""

    def __init__(self, model, decl):
        super().__init__(model, decl)
        self.grid = self.need("yolo_grid")
        g = self.grid
        shape = tuple(self.graph.nodes[decl.scores[0]].shape)
        if shape != (g.side, g.side, 5 * g.boxes + g.classes):
            raise DetectError(f"{model.name}: yolo_grid(side={g.side}, boxes={g.boxes}, classes={g.classes}) "
                              f"needs an output of {g.side}x{g.side}x{5 * g.boxes + g.classes}, "
                              f"{decl.scores[0]} is {'x'.join(map(str, shape))}")
        self.heads = tuple(decl.scores)

    def decode(self, y, input_size):
        """(B, S, S, 5B + C) -> boxes (B, S·S·B, 4) xyxy in pixels, scores (B, S·S·B, C)."""
        g = self.grid
        s, nb = g.side, g.boxes
        h, w = input_size
        bx = y[..., :5 * nb].reshape(y.shape[0], s, s, nb, 5)
        probs = y[..., 5 * nb:]
        col = jnp.arange(s, dtype=y.dtype)[None, None, :, None]
        row = jnp.arange(s, dtype=y.dtype)[None, :, None, None]
        cx = (bx[..., 0] + col) / s * w
        cy = (bx[..., 1] + row) / s * h
        bw, bh = (bx[..., 2] ** 2, bx[..., 3] ** 2) if g.sqrt else (bx[..., 2], bx[..., 3])
        bw, bh = bw * w, bh * h
        boxes = jnp.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1)
        scores = probs[:, :, :, None, :] * bx[..., 4:5]                  # (B, S, S, nb, C)
        n = s * s * nb
        return boxes.reshape(-1, n, 4), scores.reshape(-1, n, g.classes)

    def postprocess(self, outputs, image_sizes, input_size):
        boxes, scores = self.decode(outputs[self.decl.scores[0]], input_size)
        return jax.vmap(self._one_image)(boxes, scores, image_sizes)

    def _one_image(self, boxes, scores, size):
        d = self.decl
        n, c = scores.shape
        cls = scores.T                                                   # (C, n)
        keep = cls > cls.dtype.type(d.score_thresh)
        box, score, label, ok = per_class_nms(boxes, cls, keep, min(d.topk_candidates, n), d.nms_thresh,
                                              d.detections_per_img)
        return pad_invalid(B.clip(box, size[0], size[1]), score, label, ok)
