"""torchvision's ``BalancedPositiveNegativeSampler`` with static shapes: per image at most
``batch_size_per_image · positive_fraction`` positives (labels ≥ 1), the rest of the batch
negatives (label 0), each chosen uniformly at random without replacement; labels < 0 are
ignored. Random keys per candidate and a rank cut stand in for ``torch.randperm``: when there
are no more candidates than places, every one is taken whatever the key (the case in which a
loss is deterministic, and equal to torchvision's)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _take_random(mask, quota, key):
    """A random subset of ``mask`` (N,) of size min(mask.sum(), quota)."""
    u = jnp.where(mask, jax.random.uniform(key, mask.shape), -1.0)
    rank = jnp.argsort(jnp.argsort(-u))
    return mask & (rank < quota)


def sample(labels, key, batch_size_per_image: int, positive_fraction: float):
    """``labels`` (N,) int (-1 ignored, 0 negative, ≥ 1 positive) -> (positive mask, negative
    mask), both (N,) bool."""
    positive, negative = labels >= 1, labels == 0
    num_pos = jnp.minimum(positive.sum(), int(batch_size_per_image * positive_fraction))
    num_neg = jnp.minimum(negative.sum(), batch_size_per_image - num_pos)
    kp, kn = jax.random.split(key)
    return _take_random(positive, num_pos, kp), _take_random(negative, num_neg, kn)


def sampled_slots(chosen, size: int):
    """The indices of the chosen entries of ``chosen`` (N,) in ``size`` slots (in index order,
    as torchvision's ``torch.where(mask)``), and which slots hold one."""
    n = chosen.shape[0]
    order = jnp.lexsort((jnp.arange(n), ~chosen))[:size]
    return order.astype(jnp.int32), chosen[order]


def batch_keys(rng, batch: int):
    """One key per image (a fixed key where none is given: evaluation)."""
    rng = jax.random.PRNGKey(0) if rng is None else rng
    return jax.random.split(rng, batch)
