"""Matching priors (anchors, default boxes, proposals) to ground-truth boxes, as torchvision's
``models/detection/_utils.py`` ``Matcher`` and ``SSDMatcher``, with static shapes: the
ground truth is padded to G boxes with a validity mask (padding matches nothing), and an image
without boxes gives every prior ``BELOW`` (background), as torchvision's losses treat one."""
from __future__ import annotations

import jax.numpy as jnp

BELOW = -1      # Matcher.BELOW_LOW_THRESHOLD: background
BETWEEN = -2    # Matcher.BETWEEN_THRESHOLDS: ignored


def match(quality, gt_valid, high: float, low: float, allow_low_quality_matches: bool = False):
    """Matcher(high, low, allow_low_quality_matches): ``quality`` (G, N) IoUs of G ground-truth
    boxes (``gt_valid`` (G,)) with N priors -> (N,) int32: the matched box (IoU ≥ ``high``; ties:
    the first box), ``BETWEEN`` for IoU in [low, high), ``BELOW`` under ``low``. With low-quality
    matches each box also claims the priors of its highest IoU (ties included), which then take
    their own best box."""
    q = jnp.where(gt_valid[:, None], quality, -1.0)
    vals, best = q.max(0), jnp.argmax(q, 0).astype(jnp.int32)
    matches = jnp.where(vals < low, BELOW, jnp.where(vals < high, BETWEEN, best))
    if allow_low_quality_matches:
        highest = q.max(1)
        claimed = (gt_valid[:, None] & (q == highest[:, None])).any(0)
        matches = jnp.where(claimed, best, matches)
    return matches


def ssd_match(quality, gt_valid, high: float, low: float | None = None):
    """SSDMatcher(threshold): ``match(high, low)`` (both the threshold), then each box forced onto its
    best prior (the first of ties); where two boxes share a best prior the later box keeps it
    (torchvision's in-order index assignment)."""
    matches = match(quality, gt_valid, high, high if low is None else low)
    q = jnp.where(gt_valid[:, None], quality, -1.0)
    best_prior = jnp.argmax(q, 1)                                           # (G,)
    g = jnp.arange(q.shape[0], dtype=jnp.int32)
    hit = gt_valid[:, None] & (best_prior[:, None] == jnp.arange(q.shape[1])[None, :])
    forced = jnp.max(jnp.where(hit, g[:, None], -1), 0)
    return jnp.where(forced >= 0, forced, matches)
