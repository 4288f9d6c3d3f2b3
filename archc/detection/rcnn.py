"""Faster R-CNN's post-processing in JAX with static shapes (torchvision's eval mode):
RegionProposalNetwork.filter_proposals, then RoIHeads.postprocess_detections, and the network run
in two phases under one jit: the backbone, FPN and RPN head first; the proposals computed from
them; then only the box head, on those proposals, reading the features phase one computed.

Fixed sizes stand in for torchvision's variable-length lists: R = ``post_nms_top_n`` proposals
per image with a validity mask (padding boxes are 0 and their detections never count), and
``detections_per_img`` detections plus a count."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ..compiler.lower import run_graph
from . import anchors as anchor_lib
from . import boxes as B
from .api import Detections, DetectError, Detector, _pad_invalid, detector


@detector("faster_rcnn")
class FasterRCNNDetector(Detector):
    def __init__(self, model, decl):
        super().__init__(model, decl)
        g = self.graph
        self.rpn, self.anchor_decl = self.need("rpn"), self.need("anchors")
        if len(decl.scores) != 1 or len(decl.boxes) != 1:
            raise DetectError(f"{model.name}: detect(kind='faster_rcnn') takes scores=@class_logits, boxes=@box_codes")
        if self.rpn.proposals not in g.inputs:
            raise DetectError(f"{model.name}: rpn(proposals=@{self.rpn.proposals}) must name a graph input")
        self.R = g.nodes[self.rpn.proposals].shape[0]
        if self.R != self.rpn.post_nms_top_n:
            raise DetectError(f"{model.name}: the proposals input holds {self.R} boxes, rpn(post_nms_top_n="
                              f"{self.rpn.post_nms_top_n}) makes that many: give both the same number")
        self.per_location = self.anchor_decl.per_location()
        if len(self.rpn.scores) != len(self.per_location):
            raise DetectError(f"{model.name}: {len(self.rpn.scores)} RPN levels but anchors(...) has {len(self.per_location)}")
        for s, b, a in zip(self.rpn.scores, self.rpn.boxes, self.per_location):
            if g.nodes[s].shape[-1] != a or g.nodes[b].shape[-1] != 4 * a:
                raise DetectError(f"{model.name}: RPN heads {s}/{b} have {g.nodes[s].shape[-1]}/{g.nodes[b].shape[-1]} "
                                  f"channels; {a} anchors per location need {a}/{4 * a}")
        self.classes = g.nodes[decl.scores[0]].shape[-1]
        self.image_input = g.inputs[0]
        self.frontier, self.box_heads = self._phases()
        self.heads = tuple(self.rpn.scores) + tuple(self.rpn.boxes) + tuple(decl.scores) + tuple(decl.boxes)

    def _phases(self):
        """The nodes phase two reads from phase one (the feature maps the RoI ops pool)."""
        g = self.graph
        after = {self.rpn.proposals}
        for n in g:
            if any(i in after for i in n.inputs):
                after.add(n.name)
        needed = self.model.program.needed(tuple(self.decl.scores) + tuple(self.decl.boxes))
        frontier = sorted({i for n in g if n.name in needed and n.name in after for i in n.inputs if i not in after})
        return tuple(frontier), tuple(self.decl.scores) + tuple(self.decl.boxes)

    # ---- phase one: proposals ----------------------------------------------------------------
    def propose(self, outputs, image_sizes, input_size, pre_nms_top_n=None, post_nms_top_n=None):
        """RPN head outputs (by node name) -> proposals (B, R, 4) in input pixels, valid (B, R).
        The top-n default to the inference ones (training passes its own)."""
        r = self.rpn
        pre_nms_top_n = pre_nms_top_n or r.pre_nms_top_n
        logits = [o.reshape(o.shape[0], -1) for o in (outputs[n] for n in r.scores)]     # (B, H·W·A)
        codes = [o.reshape(o.shape[0], -1, 4) for o in (outputs[n] for n in r.boxes)]
        grids = [tuple(outputs[n].shape[1:3]) for n in r.scores]
        anchors = anchor_lib.grid_anchors(grids, input_size, self.anchor_decl.sizes, self.anchor_decl.aspect_ratios)
        starts = np.cumsum([0] + [lg.shape[1] for lg in logits])
        levels, top_logits, top_boxes = [], [], []
        for k, (lg, cd) in enumerate(zip(logits, codes)):
            n = lg.shape[1]
            kk = min(pre_nms_top_n, n)
            best, idx = jax.lax.top_k(lg, kk)                       # on the raw logits, per level
            boxes = B.decode(jnp.take_along_axis(cd, idx[..., None], 1),
                             jnp.asarray(anchors[starts[k]:starts[k + 1]])[idx], r.box_weights)
            top_logits.append(best)
            top_boxes.append(boxes)
            levels.append(np.full(kk, k, np.int32))
        scores = jax.nn.sigmoid(jnp.concatenate(top_logits, 1))
        boxes = jnp.concatenate(top_boxes, 1)
        levels = jnp.asarray(np.concatenate(levels))
        return jax.vmap(functools.partial(self._filter, levels, post_nms_top_n or self.R))(boxes, scores, image_sizes)

    def _filter(self, levels, post_nms_top_n, boxes, scores, size):
        r = self.rpn
        boxes = B.clip(boxes, size[0], size[1])
        valid = B.remove_small(boxes, jnp.ones(scores.shape, bool), r.min_size) & (scores >= scores.dtype.type(r.score_thresh))
        idx, count = B.batched_nms(boxes, scores, levels, valid, r.nms_thresh, post_nms_top_n)
        ok = jnp.arange(post_nms_top_n) < count
        return jnp.where(ok[:, None], boxes[idx], 0.0), ok

    # ---- phase two: detections ---------------------------------------------------------------
    def postprocess(self, outputs, image_sizes, input_size, proposals=None, valid=None):
        """Box head outputs (class logits (B, R, C), box codes (B, R, 4C)) on ``proposals`` (B,
        R, 4) (default: ``outputs[<the proposals input>]``, all valid) -> Detections."""
        proposals = outputs[self.rpn.proposals] if proposals is None else proposals
        if valid is None:
            valid = jnp.ones(proposals.shape[:2], bool)
        logits, codes = outputs[self.decl.scores[0]], outputs[self.decl.boxes[0]]
        return jax.vmap(self._detections)(logits, codes, proposals, valid, image_sizes)

    def _detections(self, logits, codes, proposals, valid, size):
        d, c = self.decl, self.classes
        boxes = B.decode(codes, proposals, d.box_weights, d.box_clamp).reshape(-1, c, 4)[:, 1:]   # (R, C-1, 4)
        boxes = B.clip(boxes, size[0], size[1])
        scores = jax.nn.softmax(logits, -1)[:, 1:]
        keep = valid[:, None] & (scores > scores.dtype.type(d.score_thresh))
        keep = B.remove_small(boxes, keep, d.min_size)
        labels = jnp.broadcast_to(jnp.arange(1, c, dtype=jnp.int32)[None], keep.shape)
        # torchvision's batched_nms never crosses classes: one NMS per class, on the boxes it
        # compares (offset by the coordinate trick when it takes that path)
        shifted = boxes + B.coordinate_offsets(boxes, labels, keep, keep.sum())
        kept = jax.vmap(lambda b, s, v: B.nms_keep(b, s, v, d.nms_thresh), in_axes=1, out_axes=1)(shifted, scores, keep)
        flat = jnp.where(kept, scores, -jnp.inf).reshape(-1)                     # proposal-major, as torchvision
        m = min(d.detections_per_img, flat.shape[0])
        best, pos = jax.lax.top_k(flat, m)
        return _pad_invalid(boxes.reshape(-1, 4)[pos], best, labels.reshape(-1)[pos], best > -jnp.inf)

    # ---- both, without computing the backbone twice -------------------------------------------
    def run(self, variables, batch, image_sizes) -> Detections:
        prog = self.model.program
        first, _ = run_graph(prog, variables, {self.image_input: batch},
                             outputs=tuple(self.rpn.scores) + tuple(self.rpn.boxes) + self.frontier)
        input_size = tuple(batch.shape[1:3])
        proposals, valid = self.propose(first, image_sizes, input_size)
        second, _ = run_graph(prog, variables, {self.image_input: batch, self.rpn.proposals: proposals},
                              outputs=self.box_heads, given={n: first[n] for n in self.frontier})
        return self.postprocess(second, image_sizes, input_size, proposals, valid)
