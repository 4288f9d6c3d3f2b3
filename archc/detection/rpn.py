"""Faster R-CNN's region proposals (torchvision ``RegionProposalNetwork.filter_proposals``,
eval mode unless given the training top-n), static shapes: per level the best
``pre_nms_top_n`` logits, decoded against the grid anchors, clipped, the small and the
improbable dropped, NMS per level, the best ``post_nms_top_n`` kept (padded, with a validity
mask)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from . import anchors as anchor_lib
from . import boxes as B


def propose(rpn, anchors_decl, outputs, image_sizes, input_size, pre_nms_top_n: int, post_nms_top_n: int):
    """RPN head outputs (by node name; ``rpn`` the network's rpn(...) declaration,
    ``anchors_decl`` its anchors(...)) -> proposals (B, post_nms_top_n, 4) in input pixels, valid
    (B, post_nms_top_n)."""
    logits = [o.reshape(o.shape[0], -1) for o in (outputs[n] for n in rpn.scores)]     # (B, H·W·A)
    codes = [o.reshape(o.shape[0], -1, 4) for o in (outputs[n] for n in rpn.boxes)]
    grids = [tuple(outputs[n].shape[1:3]) for n in rpn.scores]
    anchors = anchor_lib.grid_anchors(grids, input_size, anchors_decl.sizes, anchors_decl.aspect_ratios)
    starts = np.cumsum([0] + [lg.shape[1] for lg in logits])
    levels, top_logits, top_boxes = [], [], []
    for k, (lg, cd) in enumerate(zip(logits, codes)):
        n = lg.shape[1]
        kk = min(pre_nms_top_n, n)
        best, idx = jax.lax.top_k(lg, kk)                       # on the raw logits, per level
        boxes = B.decode(jnp.take_along_axis(cd, idx[..., None], 1),
                         jnp.asarray(anchors[starts[k]:starts[k + 1]])[idx], rpn.box_weights)
        top_logits.append(best)
        top_boxes.append(boxes)
        levels.append(np.full(kk, k, np.int32))
    scores = jax.nn.sigmoid(jnp.concatenate(top_logits, 1))
    boxes = jnp.concatenate(top_boxes, 1)
    levels = jnp.asarray(np.concatenate(levels))
    return jax.vmap(functools.partial(_filter, rpn, levels, post_nms_top_n))(boxes, scores, image_sizes)


def _filter(rpn, levels, post_nms_top_n, boxes, scores, size):
    boxes = B.clip(boxes, size[0], size[1])
    valid = B.remove_small(boxes, jnp.ones(scores.shape, bool), rpn.min_size) & (scores >= scores.dtype.type(rpn.score_thresh))
    idx, count = B.batched_nms(boxes, scores, levels, valid, rpn.nms_thresh, post_nms_top_n)
    ok = jnp.arange(post_nms_top_n) < count
    return jnp.where(ok[:, None], boxes[idx], 0.0), ok
