"""Faster R-CNN's part of the detection description (JAX-free): the region proposal network.

    rpn(scores=[@rpn_cls0, …], boxes=[@rpn_box0, …], proposals=@rois, pre_nms_top_n=1000,
        post_nms_top_n=1000, nms_thresh=0.7, score_thresh=0.0, min_size=1e-3)

``scores``/``boxes``: the RPN head's objectness logits and box codes, one tensor per level (the
levels of ``anchors(...)``); ``proposals``: the graph input that the box head pools (R =
``post_nms_top_n`` boxes per image). Per level the best ``pre_nms_top_n`` logits, decoded with
weights (1, 1, 1, 1), clipped, those with a side under ``min_size`` or a probability under
``score_thresh`` dropped, NMS per level at ``nms_thresh``, the best ``post_nms_top_n`` kept
(torchvision's RegionProposalNetwork.filter_proposals in eval mode).

Training (archc/detection/rcnn_loss.py): ``pre_nms_top_n_train``/``post_nms_top_n_train`` replace
the two top-n; an anchor with IoU ≥ ``fg_iou_thresh`` with a ground-truth box is foreground (and
each box's best anchors, ties included), below ``bg_iou_thresh`` background; per image
``batch_size_per_image`` anchors are sampled, at most ``positive_fraction`` of them foreground
(torchvision's rpn_* constructor arguments)."""
from __future__ import annotations

from dataclasses import dataclass

from ..compiler.declarations import DeclarationContext, declaration


@declaration("rpn")
@dataclass(frozen=True)
class RPN:
    scores: tuple
    boxes: tuple
    proposals: str
    pre_nms_top_n: int = 1000
    post_nms_top_n: int = 1000
    nms_thresh: float = 0.7
    score_thresh: float = 0.0
    min_size: float = 1e-3
    box_weights: tuple = (1.0, 1.0, 1.0, 1.0)
    fg_iou_thresh: float = 0.7
    bg_iou_thresh: float = 0.3
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    pre_nms_top_n_train: int = 2000
    post_nms_top_n_train: int = 2000

    @classmethod
    def bind(cls, v: dict, ctx: DeclarationContext) -> "RPN":
        from .declare import training_settings      # here: declare.py loads this module as it loads
        scores = tuple(ctx.tensor("scores", t) for t in (v["scores"] if isinstance(v["scores"], list) else [v["scores"]]))
        boxes = tuple(ctx.tensor("boxes", t) for t in (v["boxes"] if isinstance(v["boxes"], list) else [v["boxes"]]))
        if len(scores) != len(boxes):
            ctx.fail("boxes", f"rpn(): {len(scores)} score tensors but {len(boxes)} box tensors")
        weights = ctx.numbers("box_weights", v["box_weights"], 4)
        return cls(scores, boxes, ctx.tensor("proposals", v["proposals"]),
                   ctx.number("pre_nms_top_n", v["pre_nms_top_n"], low=1, integer=True),
                   ctx.number("post_nms_top_n", v["post_nms_top_n"], low=1, integer=True),
                   float(ctx.number("nms_thresh", v["nms_thresh"], low=0, high=1)),
                   float(ctx.number("score_thresh", v["score_thresh"], low=0, high=1)),
                   float(ctx.number("min_size", v["min_size"], low=0)), tuple(map(float, weights)),
                   **training_settings(ctx, v),
                   pre_nms_top_n_train=ctx.number("pre_nms_top_n_train", v["pre_nms_top_n_train"], low=1, integer=True),
                   post_nms_top_n_train=ctx.number("post_nms_top_n_train", v["post_nms_top_n_train"], low=1, integer=True))

    def tensors(self) -> tuple:
        return self.scores + self.boxes + (self.proposals,)

    def renamed(self, redirect: dict) -> "RPN":
        from dataclasses import replace
        return replace(self, scores=tuple(redirect.get(t, t) for t in self.scores),
                       boxes=tuple(redirect.get(t, t) for t in self.boxes))
