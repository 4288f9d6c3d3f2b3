"""The kernel library: each op's arithmetic, written once.

The lowering (compiler/lower.py) computes with these functions, and so do detection (its
resize) and the Flax/NNX exporters: ``flax_source`` copies the ones a network uses, by their
source text, into the module it writes, so that the module needs nothing of archc and computes
what archc computes, op for op. NHWC, the variables of one node as a dict. Separate code in the
lowering: the measured XLA:CPU fast paths (conv, depthwise, separable pooling windows), which
compute the same function; conv and dense's mixed-precision product; and one-expression ops
(concat, add, pad, crop, slice, global pool). Keep the functions self-contained: each may use only
``jax``, ``jnp``, ``lax``, ``np`` and the other public functions here (a private helper would not
be copied).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .ops.pool import axis_counts  # noqa: F401  (copied into generated modules with avg_pool)


# Elementwise arithmetic in lax rather than jnp operators: the same HLO, but a jnp operator
# costs ~0.5 ms of dispatch per call while tracing, a lax primitive ~0.02 ms, and tracing
# speed is what `archc build`'s shape check and every compile pay for.
def cast(a, dtype):
    return a if a.dtype == dtype else lax.convert_element_type(a, dtype)


def at_least_f32(x):
    return cast(x, jnp.promote_types(x.dtype, jnp.float32))


def promote(*xs):
    dtype = jnp.result_type(*xs)
    return [cast(x, dtype) for x in xs]


def channelwise(op, x, c):
    """``op(x, c)`` for a per-channel vector ``c`` of shape (C,) against x (..., C)."""
    x, c = promote(x, jnp.asarray(c))
    return op(x, lax.broadcast_in_dim(c, x.shape, (x.ndim - 1,)))


def add_bias(y, v):
    return channelwise(lax.add, y, v["bias"]) if "bias" in v else y


def conv(x, v, strides, padding, dilation, groups):
    y = lax.conv_general_dilated(x, v["kernel"], strides, padding, rhs_dilation=dilation,
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)
    return add_bias(y, v)


def conv_transpose_padding(kernel, padding, output_padding):
    """lax.conv_transpose's padding of the stride-dilated input for PyTorch's ConvTranspose2d,
    which crops ``padding`` from the full output (n-1)*s + k (+ ``output_padding`` at the end)."""
    return [(k - 1 - p[0], k - 1 - p[1] + op) for k, p, op in zip(kernel, padding, output_padding)]


def conv_transpose(x, v, strides, padding, output_padding):
    """PyTorch's ConvTranspose2d; the kernel is (kh, kw, out, in), Flax's transpose_kernel layout."""
    pads = conv_transpose_padding(v["kernel"].shape[:2], padding, output_padding)
    y = lax.conv_transpose(x, v["kernel"], strides, pads, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                           transpose_kernel=True)
    return add_bias(y, v)


def dense(x, v):
    return add_bias(lax.dot_general(x, v["kernel"], (((x.ndim - 1,), (0,)), ((), ()))), v)


def pool_padding(padding, extra):
    """NHWC padding of a pooling window: the explicit padding plus ceil mode's ``extra``
    bottom/right cells."""
    return ((0, 0), (padding[0][0] + extra[0][0], padding[0][1] + extra[0][1]),
            (padding[1][0] + extra[1][0], padding[1][1] + extra[1][1]), (0, 0))


def max_pool(x, window, strides, padding, extra):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, *window, 1), (1, *strides, 1), pool_padding(padding, extra))


def window_mean(total, in_hw, window, strides, padding, extra, count_include_pad):
    """PyTorch's average pool from its window sums ``total``: ceil mode's ``extra`` cells never
    count in the divisor, the explicit padding counts when ``count_include_pad``."""
    rows = axis_counts(in_hw[0], window[0], strides[0], padding[0], extra[0], count_include_pad)
    cols = axis_counts(in_hw[1], window[1], strides[1], padding[1], extra[1], count_include_pad)
    if rows.min() == rows.max() and cols.min() == cols.max():          # a constant divisor
        return total / float(rows[0] * cols[0])
    return total / jnp.asarray((rows[:, None] * cols[None, :]).astype(np.float32)[:, :, None], dtype=total.dtype)


def avg_pool(x, window, strides, padding, extra, count_include_pad):
    total = lax.reduce_window(x, 0.0, lax.add, (1, *window, 1), (1, *strides, 1), pool_padding(padding, extra))
    return window_mean(total, x.shape[1:3], window, strides, padding, extra, count_include_pad)


def adaptive_along(x, axis, out, reduce):
    """PyTorch's adaptive pooling along one axis: window i is [floor(i*n/o), ceil((i+1)*n/o))."""
    n = x.shape[axis]
    if n % out == 0:                                           # equal windows: one reshape
        return reduce(x.reshape(x.shape[:axis] + (out, n // out) + x.shape[axis + 1:]), axis=axis + 1)
    parts = [reduce(lax.slice_in_dim(x, (i * n) // out, -(-((i + 1) * n) // out), axis=axis),
                    axis=axis, keepdims=True) for i in range(out)]
    return jnp.concatenate(parts, axis=axis)


def adaptive_pool(x, out, reduce):
    """PyTorch's adaptive pooling to ``out`` (height, width), ``reduce`` jnp.mean or jnp.max.
    Separable: a mean (max) over a rectangle is the mean (max) over its rows of the mean (max)
    over its columns, and PyTorch's windows are a product of per-axis windows."""
    return adaptive_along(adaptive_along(x, 1, out[0], reduce), 2, out[1], reduce)


def batch_norm(x, mean, var, v, eps):
    """(x - mean) · rsqrt(var + eps) · scale + bias: Flax BatchNorm's arithmetic, op for op
    (use_fast_variance=False), so that checkpoints trained either way give the same numbers.
    ``mean``/``var``: the running statistics (inference) or the batch's (training). Like Flax,
    in at least float32 under a bf16/f16 policy; the result in x's dtype."""
    y = at_least_f32(x)
    mul = lax.rsqrt(lax.add(var, np.asarray(eps, var.dtype)))
    if "scale" in v:
        mul = lax.mul(*promote(mul, v["scale"]))
    y = add_bias(channelwise(lax.mul, channelwise(lax.sub, y, mean), mul), v)
    return cast(y, x.dtype)


def layer_norm(x, v, eps):
    """Over the channels: two-pass statistics in at least float32 (as BN's under the bf16
    policy): E[x^2] - E[x]^2 loses digits where the mean is large against the spread."""
    y = at_least_f32(x)
    mean = jnp.mean(y, axis=-1, keepdims=True)
    centred = lax.sub(y, mean)
    var = jnp.mean(lax.square(centred), axis=-1, keepdims=True)
    y = lax.mul(centred, lax.rsqrt(lax.add(var, np.asarray(eps, var.dtype))))
    y = add_bias(channelwise(lax.mul, y, v["scale"]), v)
    return cast(y, x.dtype)


def group_norm(x, v, groups, eps):
    """PyTorch's GroupNorm: each sample's channels in ``groups`` groups, each group normalised
    over its channels and every position; two-pass statistics in at least float32, as
    layer_norm's. Without affine variables (instancenorm's default) no scale and bias."""
    y = at_least_f32(x)
    grouped = y.reshape(y.shape[:-1] + (groups, y.shape[-1] // groups))
    axes = tuple(range(1, y.ndim - 1)) + (y.ndim,)             # positions and the channels of a group
    centred = lax.sub(grouped, jnp.mean(grouped, axis=axes, keepdims=True))
    var = jnp.mean(lax.square(centred), axis=axes, keepdims=True)
    y = lax.mul(centred, lax.rsqrt(lax.add(var, np.asarray(eps, var.dtype)))).reshape(y.shape)
    if "scale" in v:
        y = add_bias(channelwise(lax.mul, y, v["scale"]), v)
    return cast(y, x.dtype)


def layer_scale(x, v):
    """A learned per-channel scale (ConvNeXt's gamma)."""
    return cast(channelwise(lax.mul, x, v["scale"]), x.dtype)


def lrn(x, size, alpha, beta, k):
    """PyTorch's LocalResponseNorm: the window spans channels c - size//2 .. c + (size-1)//2."""
    pad = [(0, 0)] * (x.ndim - 1) + [(size // 2, (size - 1) // 2)]
    sq_sum = lax.reduce_window(x * x, 0.0, lax.add, (1,) * (x.ndim - 1) + (size,), (1,) * x.ndim, pad)
    return x / jnp.power(k + (alpha / size) * sq_sum, beta)


def l2_norm(x, v, eps):
    """SSD's L2Norm: x / max(||x|| over channels, eps), times a learned per-channel scale."""
    norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
    return x / jnp.maximum(norm, eps) * v["scale"]


def normalize(x, v, eps):
    """Keras Normalization: (x - mean) / max(sqrt(var), eps), its statistics as variables."""
    return (x - v["mean"]) / jnp.maximum(jnp.sqrt(v["var"]), eps)


def rescale(x, scale, offset):
    """x · scale + offset, one value or one per channel; a factor of 1 or an offset of 0 is
    left out."""
    if any(s != 1.0 for s in scale):
        x = x * (float(scale[0]) if len(set(scale)) == 1 else np.asarray(scale, np.float32))
    if any(o != 0.0 for o in offset):
        x = x + (float(offset[0]) if len(set(offset)) == 1 else np.asarray(offset, np.float32))
    return x


def flatten(x, order):
    """(N, H, W, C) -> (N, H·W·C), or per RoI (N, R, H, W, C) -> (N, R, H·W·C); ``order`` "nchw"
    is PyTorch's (channels first), which its Linear weights expect."""
    lead = x.ndim - 3 if x.ndim >= 4 else 1
    if order == "nchw" and x.ndim >= 4 and x.shape[-3] * x.shape[-2] > 1:
        x = jnp.moveaxis(x, -1, -3)
    return x.reshape(x.shape[:lead] + (-1,))


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


def nearest_index(n_in: int, n_out: int):
    """Source rows of PyTorch's legacy nearest resize to a size (F.interpolate(size=…,
    mode="nearest")): the same size copies, twice the size halves the index, otherwise
    min(floor(dst · scale), in − 1) with scale = in / out, both in float32, as its kernel."""
    dst = np.arange(n_out)
    if n_out == n_in:
        return dst
    if n_out == 2 * n_in:
        return dst >> 1
    scale = np.float32(n_in) / np.float32(n_out)
    return np.minimum(np.floor(dst.astype(np.float32) * scale).astype(np.int64), n_in - 1)


def linear_taps(n_in: int, n_out: int, dtype=np.float32):
    """Source indices and weights of torch's bilinear resize (align_corners=False, no
    antialias) along one axis, as its kernel computes them in the image's dtype: scale = in /
    out, the source index ``scale · (dst + 0.5) - 0.5`` (float32: rounded once, as torch's
    compiled kernel fuses the multiply-add: probed bit-exact against F.interpolate), clamped
    at 0."""
    dt = np.dtype(np.float64 if np.dtype(dtype) == np.float64 else np.float32)
    scale = np.float64(dt.type(n_in) / dt.type(n_out))
    src = np.maximum((scale * (np.arange(n_out) + 0.5) - 0.5).astype(dt), dt.type(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    lam = np.clip(src - i0.astype(dt), 0, 1).astype(dt)
    i1 = np.where(i0 < n_in - 1, i0 + 1, i0)
    return i0, i1, (dt.type(1) - lam), lam


def resize_to(x, size, method, axes=(1, 2)):
    """``x`` resized on ``axes`` (height, width) to ``size`` as F.interpolate(size=…,
    align_corners=False) does: "nearest" (legacy, floor) or "bilinear" (along the width, then
    the height, as torch's separable CPU kernel). The indices are computed from the static
    shapes, so the result is a gather (nearest) or two weighted gathers (bilinear). A NumPy
    ``x`` is resized in NumPy (the detection data loader's threads: no XLA compile per image size)."""
    take = np.take if isinstance(x, np.ndarray) else jnp.take
    for axis, n_out in reversed(tuple(zip(axes, size))):
        n_in = x.shape[axis]
        if n_in == n_out:
            continue            # src == dst: torch's kernels copy
        if method == "nearest":
            x = take(x, nearest_index(n_in, n_out), axis=axis)
            continue
        i0, i1, w0, w1 = linear_taps(n_in, n_out, x.dtype)
        shape = [1] * x.ndim
        shape[axis] = n_out
        x = take(x, i0, axis=axis) * w0.reshape(shape) + take(x, i1, axis=axis) * w1.reshape(shape)
    return x


def upsample_to(x, like, method):
    """NHWC ``x`` resized to ``like``'s height and width (upsample(size=@like))."""
    return resize_to(x, like.shape[1:3], method)


def relu6(x):
    return jnp.minimum(jnp.maximum(x, 0.0), 6.0)


def exact_div(x, d):
    """x / d rounded as one IEEE division: XLA rewrites a division by a constant (even one
    behind an optimization barrier, once broadcast) into a product with its rounded reciprocal
    (6 / 7 becomes 0.8571429, not 0.85714287), which moves bin edges; a divisor that depends on
    x (d + 0·x: not foldable, as 0·x may be NaN) keeps the division."""
    return x / (d + 0 * x)


def roi_levels(rois, scales, canonical_size=224.0, canonical_level=4.0, eps=1e-6):
    """MultiScaleRoIAlign's LevelMapper (torchvision/ops/poolers.py): each RoI's map,
    floor(canonical_level + log2(sqrt(area) / canonical_size) + eps) clamped to the maps' levels
    (-log2 of their scales), counted from the finest."""
    if len(scales) == 1:
        return jnp.zeros(rois.shape[:-1], jnp.int32)
    k_min, k_max = round(-np.log2(scales[0])), round(-np.log2(scales[-1]))
    area = (rois[..., 2] - rois[..., 0]) * (rois[..., 3] - rois[..., 1])
    target = jnp.floor(canonical_level + jnp.log2(exact_div(jnp.sqrt(area), canonical_size))
                       + jnp.asarray(eps, area.dtype))
    return (jnp.clip(target, k_min, k_max) - k_min).astype(jnp.int32)


def roi_align(rois, maps, out, scales, sampling, aligned, chunk=64):
    """torchvision.ops.roi_align (its CPU kernel's rules) of (N, R, 4) RoIs in image pixels on
    (N, H, W, C) maps -> (N, R, PH, PW, C); with several maps, each RoI is pooled from the one
    ``roi_levels`` picks. A sample outside [-1, H] x [-1, W] adds 0 but counts; without
    ``aligned`` a RoI is at least 1x1 map cells. Adaptive sampling (``sampling <= 0``, a grid of
    ceil(roi / out) per bin) is bounded by the map size, as torchvision's own Python kernel."""
    ph_n, pw_n = out
    c = maps[0].shape[-1]
    hs = np.array([m.shape[1] for m in maps], np.int32)
    ws = np.array([m.shape[2] for m in maps], np.int32)
    base = np.concatenate([[0], np.cumsum(hs * ws)[:-1]]).astype(np.int32)
    gh = sampling if sampling > 0 else int(hs.max())
    gw = sampling if sampling > 0 else int(ws.max())
    dt = jnp.promote_types(maps[0].dtype, jnp.float32)   # float64 maps: torchvision's double kernel
    offset = jnp.asarray(0.5 if aligned else 0.0, dt)

    def axis(start, size, n_bins, grid_max, cells):
        """Per bin and sample along one axis: the two taps, their weights and validity."""
        extent = cells.astype(dt)
        bin_size = exact_div(size, n_bins)
        grid = jnp.asarray(sampling, dt) if sampling > 0 else jnp.ceil(bin_size)
        p = jnp.arange(n_bins, dtype=dt)[:, None]
        i = jnp.arange(grid_max, dtype=dt)[None, :]
        t = start + p * bin_size + exact_div((i + 0.5) * bin_size, grid)
        valid = (t >= -1.0) & (t <= extent) & (i < grid)
        t = jnp.maximum(t, 0.0)
        low = jnp.floor(t).astype(jnp.int32)
        last = low >= cells - 1
        high = jnp.where(last, cells - 1, low + 1)
        low = jnp.where(last, cells - 1, low)
        t = jnp.where(last, low.astype(t.dtype), t)
        frac = t - low
        return low, high, 1.0 - frac, frac, valid, grid

    def one(flat, roi, level):
        scale = jnp.asarray(np.asarray(scales), dt)[level]
        h, w = jnp.asarray(hs)[level], jnp.asarray(ws)[level]
        x1, y1, x2, y2 = roi[0] * scale - offset, roi[1] * scale - offset, roi[2] * scale - offset, roi[3] * scale - offset
        rw, rh = x2 - x1, y2 - y1
        if not aligned:
            rw, rh = jnp.maximum(rw, 1.0), jnp.maximum(rh, 1.0)
        yl, yh, wyl, wyh, vy, grid_h = axis(y1, rh, ph_n, gh, h)
        xl, xh, wxl, wxh, vx, grid_w = axis(x1, rw, pw_n, gw, w)
        yl, yh = yl * w + jnp.asarray(base)[level], yh * w + jnp.asarray(base)[level]
        valid = vy[:, :, None, None] & vx[None, None]                    # (PH, GH, PW, GW)

        def tap(rows, cols, wr, wc):
            idx = jnp.where(valid, rows[:, :, None, None] + cols[None, None], 0)
            weight = jnp.where(valid, wr[:, :, None, None] * wc[None, None], 0.0)
            return weight[..., None] * flat[idx]
        total = (tap(yl, xl, wyl, wxl) + tap(yl, xh, wyl, wxh)) + (tap(yh, xl, wyh, wxl) + tap(yh, xh, wyh, wxh))
        count = jnp.maximum(grid_h * grid_w, 1.0)
        return exact_div(jnp.sum(total, axis=(1, 3)), count).astype(flat.dtype)

    def image(rois_i, *maps_i):
        flat = jnp.concatenate([m.reshape(-1, c) for m in maps_i], axis=0)
        level = roi_levels(rois_i, scales)
        return lax.map(lambda a: one(flat, *a), (rois_i, level), batch_size=chunk)

    return jax.vmap(image)(rois.astype(dt), *maps)


def roi_pool(rois, fmap, out, scale, chunk=8):
    """torchvision.ops.roi_pool: (N, R, 4) RoIs on an (N, H, W, C) map -> (N, R, PH, PW, C), the
    max over each bin [floor(p·bin), ceil((p+1)·bin)) of the RoI's cells (corners rounded half
    away from zero, as C's round; the RoI at least 1 cell), 0 for an empty bin."""
    ph_n, pw_n = out
    h, w = fmap.shape[1], fmap.shape[2]
    dt = jnp.promote_types(fmap.dtype, jnp.float32)
    scale = jnp.asarray(scale, dt)

    def rnd(v):                                   # C round(): half away from zero
        return (jnp.sign(v) * jnp.floor(jnp.abs(v) + 0.5)).astype(jnp.int32)

    def bins(start, end, n_bins, extent):
        size = jnp.maximum(end - start + 1, 1).astype(dt)
        bin_size = exact_div(size, n_bins)
        p = jnp.arange(n_bins, dtype=dt)
        lo = jnp.clip(jnp.floor(p * bin_size).astype(jnp.int32) + start, 0, extent)
        hi = jnp.clip(jnp.ceil((p + 1) * bin_size).astype(jnp.int32) + start, 0, extent)
        cells = jnp.arange(extent)
        return (cells[None] >= lo[:, None]) & (cells[None] < hi[:, None]), hi <= lo

    def one(fm, roi):
        x1, y1, x2, y2 = rnd(roi[0] * scale), rnd(roi[1] * scale), rnd(roi[2] * scale), rnd(roi[3] * scale)
        rows, empty_h = bins(y1, y2, ph_n, h)                 # (PH, H)
        cols, empty_w = bins(x1, x2, pw_n, w)                 # (PW, W)
        low = jnp.array(-jnp.inf, fm.dtype)
        by_col = jnp.max(jnp.where(cols[:, None, :, None], fm[None], low), axis=2)          # (PW, H, C)
        best = jnp.max(jnp.where(rows[:, None, :, None], by_col[None], low), axis=2)        # (PH, PW, C)
        empty = empty_h[:, None] | empty_w[None, :]
        return jnp.where(empty[..., None], jnp.zeros((), fm.dtype), best)

    def image(rois_i, fm):
        return lax.map(lambda r: one(fm, r), rois_i, batch_size=chunk)

    return jax.vmap(image)(rois.astype(dt), fmap)
