"""Faster R-CNN's post-processing in JAX with static shapes (torchvision's eval mode): the
proposals (rpn.py), then the detections (roi_heads.py), and the network run in two phases under
one jit: the backbone, FPN and RPN head first; the proposals computed from them; then only the
box head, on those proposals, reading the features phase one computed.

Fixed sizes stand in for torchvision's variable-length lists: R = ``post_nms_top_n`` proposals
per image with a validity mask (padding boxes are 0 and their detections never count), and
``detections_per_img`` detections plus a count."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ..compiler.lower import run_graph
from .detector import DetectError, Detector
from .postprocess import Detections
from .roi_heads import postprocess_detections
from .rpn import propose


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
        return propose(self.rpn, self.anchor_decl, outputs, image_sizes, input_size,
                       pre_nms_top_n or self.rpn.pre_nms_top_n, post_nms_top_n or self.R)

    # ---- phase two: detections ---------------------------------------------------------------
    def postprocess(self, outputs, image_sizes, input_size, proposals=None, valid=None):
        """Box head outputs (class logits (B, R, C), box codes (B, R, 4C)) on ``proposals`` (B,
        R, 4) (default: ``outputs[<the proposals input>]``, all valid) -> Detections."""
        proposals = outputs[self.rpn.proposals] if proposals is None else proposals
        if valid is None:
            valid = jnp.ones(proposals.shape[:2], bool)
        logits, codes = outputs[self.decl.scores[0]], outputs[self.decl.boxes[0]]
        return jax.vmap(functools.partial(postprocess_detections, self.decl))(logits, codes, proposals, valid, image_sizes)

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
