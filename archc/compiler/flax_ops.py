"""The functions a generated Flax module (``archc export --format flax``) is made of.

``flax_source`` copies the ones a network uses, by their source text, into the module it writes,
so the module needs nothing of archc. They are the plain form of the lowering's arithmetic
(compiler/lower.py): NHWC, the variables of one node as a dict, inference only, and none of the
XLA:CPU fast paths (those compute the same function). Keep them self-contained: each may use
only ``jax``, ``jnp``, ``lax``, ``np`` and the other functions here.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .ops.pool import axis_counts  # noqa: F401  (copied into generated modules with avg_pool)


def with_bias(y, v):
    return y + v["bias"] if "bias" in v else y


def conv(x, v, strides, padding, dilation, groups):
    y = lax.conv_general_dilated(x, v["kernel"], strides, padding, rhs_dilation=dilation,
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)
    return with_bias(y, v)


def conv_transpose(x, v, strides, padding, output_padding):
    """PyTorch's ConvTranspose2d; the kernel is (kh, kw, out, in), Flax's transpose_kernel layout.
    PyTorch crops ``padding`` from the full output, lax pads the stride-dilated input."""
    kernel = v["kernel"].shape[:2]
    pads = [(k - 1 - p[0], k - 1 - p[1] + op) for k, p, op in zip(kernel, padding, output_padding)]
    y = lax.conv_transpose(x, v["kernel"], strides, pads, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                           transpose_kernel=True)
    return with_bias(y, v)


def dense(x, v):
    return with_bias(lax.dot_general(x, v["kernel"], (((x.ndim - 1,), (0,)), ((), ()))), v)


def max_pool(x, window, strides, padding):
    """``padding`` includes ceil mode's extra bottom/right cells."""
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, *window, 1), (1, *strides, 1), ((0, 0), *padding, (0, 0)))


def avg_pool(x, window, strides, padding, extra, count_include_pad):
    """PyTorch's average pool: ceil mode's ``extra`` cells never count in the divisor, the
    explicit padding counts when ``count_include_pad``."""
    full = [(p[0] + e[0], p[1] + e[1]) for p, e in zip(padding, extra)]
    total = lax.reduce_window(x, 0.0, lax.add, (1, *window, 1), (1, *strides, 1), ((0, 0), *full, (0, 0)))
    rows = axis_counts(x.shape[1], window[0], strides[0], padding[0], extra[0], count_include_pad)
    cols = axis_counts(x.shape[2], window[1], strides[1], padding[1], extra[1], count_include_pad)
    return total / jnp.asarray((rows[:, None] * cols[None, :])[:, :, None], x.dtype)


def adaptive_pool(x, out, reduce):
    """PyTorch's adaptive pooling: along each axis, window i is [floor(i*n/o), ceil((i+1)*n/o))."""
    for axis, o in ((1, out[0]), (2, out[1])):
        n = x.shape[axis]
        x = jnp.concatenate([reduce(lax.slice_in_dim(x, (i * n) // o, -(-((i + 1) * n) // o), axis=axis),
                                    axis=axis, keepdims=True) for i in range(o)], axis=axis)
    return x


def batch_norm(x, v, eps):
    mul = lax.rsqrt(v["var"] + eps) * v["scale"] if "scale" in v else lax.rsqrt(v["var"] + eps)
    return with_bias((x - v["mean"]) * mul, v)


def layer_norm(x, v, eps):
    """Over the channels, biased variance (two-pass)."""
    centred = x - jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(centred * centred, axis=-1, keepdims=True)
    return centred * lax.rsqrt(var + eps) * v["scale"] + v["bias"]


def lrn(x, size, alpha, beta, k):
    """PyTorch's LocalResponseNorm: the window spans channels c - size//2 .. c + (size-1)//2."""
    pad = [(0, 0)] * (x.ndim - 1) + [(size // 2, (size - 1) // 2)]
    sq_sum = lax.reduce_window(x * x, 0.0, lax.add, (1,) * (x.ndim - 1) + (size,), (1,) * x.ndim, pad)
    return x / jnp.power(k + (alpha / size) * sq_sum, beta)


def l2_norm(x, v, eps):
    """SSD's L2Norm: x / max(||x|| over channels, eps), times a learned per-channel scale."""
    norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
    return x / jnp.maximum(norm, eps) * v["scale"]


def flatten_nchw(x):
    """PyTorch's flatten order (channels first), which its Linear weights expect."""
    return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


def channel_shuffle(x, groups):
    y = x.reshape(x.shape[:-1] + (groups, x.shape[-1] // groups))
    return jnp.swapaxes(y, -1, -2).reshape(x.shape)


def upsample_nearest(x, factor):
    n, h, w, c = x.shape
    y = jnp.broadcast_to(x[:, :, None, :, None, :], (n, h, factor[0], w, factor[1], c))
    return y.reshape(n, h * factor[0], w * factor[1], c)


def upsample_bilinear(x, factor):
    """Half-pixel centres, edges clamped: PyTorch's bilinear with align_corners=False."""
    n, h, w, c = x.shape
    return jax.image.resize(x, (n, h * factor[0], w * factor[1], c), method="bilinear", antialias=False)


def relu6(x):
    return jnp.minimum(jnp.maximum(x, 0.0), 6.0)
