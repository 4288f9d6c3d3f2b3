"""Faster R-CNN's training forward and losses (torchvision ``RegionProposalNetwork`` and
``RoIHeads`` in training mode), batched with static shapes.

The network runs in the two phases of inference (detection/faster_rcnn.py): the backbone and RPN head;
then the box head on proposals. In between, the training proposals: the RPN's boxes with the
``rpn(pre_nms_top_n_train, post_nms_top_n_train)`` top-n (gradients stopped, as torchvision
detaches them), the ground-truth boxes appended, matched to the ground truth
(``detect(fg_iou_thresh, bg_iou_thresh)``) and sampled (``detect(batch_size_per_image,
positive_fraction)``); the box head then runs on the sampled RoIs only (S = min(batch size,
proposals + boxes) slots per image, with a validity mask), and is differentiated through, with
the features.

Losses (each divided over the whole batch, as torchvision concatenates its images):

* ``loss_objectness``: binary cross-entropy of the RPN logits of the sampled anchors (anchors
  matched by ``rpn(fg_iou_thresh, bg_iou_thresh)`` with low-quality matches, sampled by
  ``rpn(batch_size_per_image, positive_fraction)``), their mean;
* ``loss_rpn_box_reg``: smooth-L1 (β 1/9) of the sampled positive anchors' codes against their
  boxes' (weights ``rpn(box_weights)``), summed, ÷ the sampled anchors;
* ``loss_classifier``: cross-entropy of the sampled RoIs' class logits, their mean;
* ``loss_box_reg``: smooth-L1 (β 1/9) of the positive RoIs' codes for their own class against
  their boxes' (weights ``detect(box_weights)``), summed, ÷ the sampled RoIs."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ..compiler.lower import run_graph
from . import anchors as anchor_lib
from . import boxes as B
from .loss_terms import bce_with_logits, cross_entropy, smooth_l1
from .matcher import BELOW, match
from .sampler import batch_keys, sample, sampled_slots

KEYS = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg")
BETA = 1.0 / 9
# what the training forward adds to the network's outputs: the sampled RoIs' targets
ROI_LABELS, ROI_TARGETS, ROI_VALID = "roi_labels", "roi_targets", "roi_valid"


def image_sizes(batch):
    """Each image's size before padding: ``batch["size"]`` (B, 2) when given, else the input's."""
    x = batch["image"]
    if "size" in batch:
        return jnp.asarray(batch["size"], jnp.int32)
    return jnp.broadcast_to(jnp.asarray(x.shape[1:3], jnp.int32), (x.shape[0], 2))


def ground_truth(batch, dtype):
    boxes = jnp.asarray(batch["boxes"], dtype)
    valid = jnp.arange(boxes.shape[1])[None, :] < jnp.asarray(batch["count"])[:, None]
    return boxes, jnp.asarray(batch["labels"], jnp.int32), valid


class FasterRCNNLoss:
    def __init__(self, detector):
        self.det, self.rpn, self.decl = detector, detector.rpn, detector.decl
        self.outputs = tuple(self.rpn.scores) + tuple(self.rpn.boxes) + tuple(detector.box_heads)

    # ---- the training forward -----------------------------------------------------------------
    def apply(self, variables, batch, *, train: bool, rng=None, dtype=None):
        """Both phases with the RoIs sampled in between: (outputs: the RPN heads, the box heads on
        the sampled RoIs and those RoIs' targets; batch-statistics updates)."""
        det, r = self.det, self.rpn
        prog, image = det.model.program, batch["image"]
        dropout = jax.random.fold_in(rng, 3) if (rng is not None and train and prog.has_dropout) else None
        first, updates = run_graph(prog, variables, {det.image_input: image}, train=train, rng=dropout, dtype=dtype,
                                   outputs=tuple(r.scores) + tuple(r.boxes) + det.frontier)
        heads = {n: jax.lax.stop_gradient(first[n]) for n in tuple(r.scores) + tuple(r.boxes)}
        proposals, valid = det.propose(heads, image_sizes(batch), tuple(image.shape[1:3]),
                                       r.pre_nms_top_n_train, r.post_nms_top_n_train)
        keys = batch_keys(None if rng is None else jax.random.fold_in(rng, 1), image.shape[0])
        gt, labels, gt_valid = ground_truth(batch, proposals.dtype)
        rois, roi_labels, roi_targets, roi_valid = jax.vmap(self._sample_rois)(proposals, valid, gt, labels,
                                                                               gt_valid, keys)
        second, more = run_graph(prog, variables, {det.image_input: image, r.proposals: jax.lax.stop_gradient(rois)},
                                 train=train, rng=dropout, dtype=dtype, outputs=det.box_heads,
                                 given={n: first[n] for n in det.frontier})
        outputs = {**{n: first[n] for n in tuple(r.scores) + tuple(r.boxes)}, **second,
                   ROI_LABELS: roi_labels, ROI_TARGETS: roi_targets, ROI_VALID: roi_valid}
        return outputs, {**updates, **more}

    def _sample_rois(self, proposals, valid, gt, labels, gt_valid, key):
        """RoIHeads.select_training_samples for one image: the proposals and the ground truth
        (add_gt_proposals), matched and sampled -> RoIs (S, 4), labels (S,), box targets (S, 4),
        valid (S,)."""
        d = self.decl
        cand = jnp.concatenate([proposals, gt])
        cand_valid = jnp.concatenate([valid, gt_valid])
        matches = match(B.iou(gt, cand), gt_valid, d.fg_iou_thresh, d.bg_iou_thresh)
        idx = jnp.maximum(matches, 0)
        lab = jnp.where(matches >= 0, labels[idx], jnp.where(matches == BELOW, 0, -1))
        lab = jnp.where(cand_valid, lab, -1)
        pos, neg = sample(lab, key, d.batch_size_per_image, d.positive_fraction)
        slots, ok = sampled_slots(pos | neg, min(d.batch_size_per_image, cand.shape[0]))
        # empty slots pool a unit box: finite values whose terms the losses leave out
        rois = jnp.where(ok[:, None], cand[slots], jnp.asarray([0.0, 0.0, 1.0, 1.0], cand.dtype))
        roi_labels = jnp.where(ok, lab[slots], 0)
        positive = ok & (roi_labels > 0)
        matched = jnp.where(positive[:, None], gt[idx[slots]], rois)
        return rois, roi_labels, B.encode(matched, rois, d.box_weights), ok

    # ---- the losses ---------------------------------------------------------------------------
    def losses(self, outputs, batch, rng=None) -> dict:
        return {**self.rpn_losses(outputs, batch, rng), **self.box_losses(outputs)}

    def rpn_losses(self, outputs, batch, rng=None) -> dict:
        r = self.rpn
        logits = jnp.concatenate([outputs[n].reshape(outputs[n].shape[0], -1) for n in r.scores], 1)   # (B, A)
        codes = jnp.concatenate([outputs[n].reshape(outputs[n].shape[0], -1, 4) for n in r.boxes], 1)
        grids = [tuple(outputs[n].shape[1:3]) for n in r.scores]
        anchors = jnp.asarray(anchor_lib.grid_anchors(grids, tuple(batch["image"].shape[1:3]),
                                                      self.det.anchor_decl.sizes, self.det.anchor_decl.aspect_ratios),
                              codes.dtype)
        gt, _, gt_valid = ground_truth(batch, codes.dtype)
        labels, targets = jax.vmap(functools.partial(self._anchor_targets, anchors))(gt, gt_valid)
        keys = batch_keys(None if rng is None else jax.random.fold_in(rng, 2), logits.shape[0])
        pos, neg = jax.vmap(lambda lab, k: sample(lab, k, r.batch_size_per_image, r.positive_fraction))(labels, keys)
        sampled = pos | neg
        n = jnp.maximum(sampled.sum(), 1).astype(codes.dtype)
        objectness = jnp.sum(jnp.where(sampled, bce_with_logits(logits, (labels >= 1).astype(logits.dtype)), 0.0)) / n
        box = jnp.sum(jnp.where(pos[..., None], smooth_l1(codes, targets, BETA), 0.0)) / n
        return {"loss_objectness": objectness, "loss_rpn_box_reg": box}

    def _anchor_targets(self, anchors, gt, gt_valid):
        """RegionProposalNetwork.assign_targets_to_anchors: labels (1, 0, -1 ignored) and codes."""
        r = self.rpn
        matches = match(B.iou(gt, anchors), gt_valid, r.fg_iou_thresh, r.bg_iou_thresh,
                        allow_low_quality_matches=True)
        fg = matches >= 0
        labels = jnp.where(fg, 1, jnp.where(matches == BELOW, 0, -1))
        matched = jnp.where(fg[:, None], gt[jnp.maximum(matches, 0)], anchors)
        return labels, B.encode(matched, anchors, r.box_weights)

    def box_losses(self, outputs) -> dict:
        """fastrcnn_loss on the sampled RoIs."""
        logits, codes = outputs[self.decl.scores[0]], outputs[self.decl.boxes[0]]
        labels, targets, valid = outputs[ROI_LABELS], outputs[ROI_TARGETS], outputs[ROI_VALID]
        n = jnp.maximum(valid.sum(), 1).astype(codes.dtype)
        ce = jnp.sum(jnp.where(valid, cross_entropy(logits, labels), 0.0)) / n
        own = jnp.take_along_axis(codes.reshape(*codes.shape[:-1], -1, 4), labels[..., None, None], -2)[..., 0, :]
        positive = valid & (labels > 0)
        box = jnp.sum(jnp.where(positive[..., None], smooth_l1(own, targets, BETA), 0.0)) / n
        return {"loss_classifier": ce, "loss_box_reg": box}
