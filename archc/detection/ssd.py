"""SSD's post-processing (torchvision ``SSD.postprocess_detections``): softmax scores, box codes
decoded against the default boxes, per class the best candidates above the threshold through
NMS, the best detections of all classes kept."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from . import anchors as anchor_lib
from . import boxes as B
from .detector import DetectError, Detector
from .postprocess import pad_invalid, per_class_nms


def flatten_head(y, per_cell: int):
    """(B, H, W, A·K) -> (B, H·W·A, K): rows (y, x, anchor), as torchvision's heads
    ``view(N, A, K, H, W).permute(0, 3, 4, 1, 2)``."""
    b, h, w, c = y.shape
    return y.reshape(b, h * w * (c // per_cell), per_cell)


class SSDDetector(Detector):
    def __init__(self, model, decl):
        super().__init__(model, decl)
        self.default_boxes = self.need("default_boxes")
        if not decl.boxes:
            raise DetectError(f"{model.name}: detect(kind='ssd') needs boxes=[…] (the box-code heads)")
        if len(decl.scores) != len(self.default_boxes.aspect_ratios):
            raise DetectError(f"{model.name}: {len(decl.scores)} heads but default_boxes has "
                              f"{len(self.default_boxes.aspect_ratios)} levels")
        self.per_location = self.default_boxes.per_location()
        for n, a in zip(decl.boxes, self.per_location):
            if self.graph.nodes[n].shape[-1] != 4 * a:
                raise DetectError(f"{model.name}: head {n} has {self.graph.nodes[n].shape[-1]} channels, "
                                  f"{a} default boxes per location need {4 * a}")
        self.classes = self.graph.nodes[decl.scores[0]].shape[-1] // self.per_location[0]
        for n, a in zip(decl.scores, self.per_location):
            if self.graph.nodes[n].shape[-1] != a * self.classes:
                raise DetectError(f"{model.name}: head {n} has {self.graph.nodes[n].shape[-1]} channels, "
                                  f"{a} default boxes per location × {self.classes} classes need {a * self.classes}")

    def anchors(self, grid_sizes, input_size, dtype=np.float32):
        d = self.default_boxes
        return anchor_lib.default_boxes(grid_sizes, input_size, d.aspect_ratios, d.scales or None,
                                        d.steps or None, d.clip, d.min_ratio, d.max_ratio, dtype=dtype)

    def postprocess(self, outputs, image_sizes, input_size):
        d = self.decl
        logits = jnp.concatenate([flatten_head(outputs[n], self.classes) for n in d.scores], 1)
        codes = jnp.concatenate([flatten_head(outputs[n], 4) for n in d.boxes], 1)
        grids = [tuple(outputs[n].shape[1:3]) for n in d.scores]
        anchors = jnp.asarray(self.anchors(grids, input_size, np.dtype(codes.dtype).type))
        return jax.vmap(functools.partial(self._one_image, anchors))(logits, codes, image_sizes)

    def _one_image(self, anchors, logits, codes, size):
        d = self.decl
        scores = jax.nn.softmax(logits, axis=-1)
        boxes = B.clip(B.decode(codes, anchors, d.box_weights, d.box_clamp), size[0], size[1])
        n = boxes.shape[0]
        k = min(d.topk_candidates, n)
        fg = scores[:, 1:].T                                            # (C - 1, N), class-major
        keep = fg > fg.dtype.type(d.score_thresh)
        if d.min_size > 0:
            keep = keep & B.remove_small(boxes, jnp.ones(n, bool), d.min_size)[None]
        # torchvision's batched_nms over all candidates never crosses classes: one NMS per class,
        # on the boxes it sees (offset by the coordinate trick when it takes that path)
        return pad_invalid(*per_class_nms(boxes, fg, keep, k, d.nms_thresh, d.detections_per_img, trick=True))
