"""The elementwise loss terms of torchvision's detection losses, in their operation order."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def smooth_l1(x, y, beta: float = 1.0):
    """F.smooth_l1_loss(reduction="none"): 0.5 d² / β where |d| < β, else |d| - 0.5 β."""
    n = jnp.abs(x - y)
    if beta < 1e-5:
        return n
    return jnp.where(n < beta, 0.5 * n ** 2 / beta, n - 0.5 * beta)


def cross_entropy(logits, labels):
    """F.cross_entropy(reduction="none") over the last axis; ``labels`` int."""
    logp = jax.nn.log_softmax(logits, -1)
    return -jnp.take_along_axis(logp, labels[..., None].astype(jnp.int32), -1)[..., 0]


def bce_with_logits(x, y):
    """F.binary_cross_entropy_with_logits(reduction="none"): (1 - y) x + log(1 + exp(-x)),
    computed stably."""
    return (1 - y) * x + jax.nn.softplus(-x)
