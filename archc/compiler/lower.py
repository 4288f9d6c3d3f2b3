"""Lowering: IR Graph -> a pure JAX function (and a Flax Linen module around it).

``run_graph(program, variables, x)`` is the network as a pure function of a functional
variables pytree, which *is* archc's public API: ``init`` returns ``{'params': ...,
'batch_stats': ...}``, ``apply`` is a pure function of (variables, x) that composes directly
with ``jax.jit``, ``jax.grad`` and ``jax.vmap``, and checkpoints are flat dicts of arrays.
``archc.compiler.linen.GraphModule`` wraps the same function as a Linen module, with the same
variables, for users who compose Linen models.

Layout is NHWC; every parameterised node's variables live flat under its IR name, named as
Flax's own layers name them: ``variables['params']['layer2.0.conv1']['kernel']`` (HWIO),
``['bias']``; BatchNorm has params ``scale``/``bias`` and batch_stats ``mean``/``var``; l2norm a
param ``scale``; normalize batch_stats ``mean``/``var``/``count``. A transposed convolution's
kernel is (kh, kw, out, in): Flax's ``transpose_kernel=True`` layout, which makes it the exact
gradient of a convolution, i.e. PyTorch's ConvTranspose2d (torch weight ``w.permute(2, 3, 1, 0)``).

Each op's arithmetic is a function of the kernel library (kernels.py, which the Flax export
copies); what stays here is the dispatch, the mixed-precision policy, training's batch statistics
and dropout, and the measured XLA:CPU fast paths (conv, depthwise, separable pooling windows).
Per-node work is a table lookup (``LOWERINGS[op]``), executed once while tracing; under ``jit``
nothing of this Python remains. Shapes used by the lowering (pool divisors, flatten order) come
from the traced arrays, so a model also runs on a different input size where its ops allow it.
"""
from __future__ import annotations

import functools
import zlib
from collections.abc import Mapping
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import graph_queries, kernels
from .ir import Graph, Node
from .ops import OPS, VarSpec, activation_names, pass_rules, variable_specs, variables_tree  # noqa: F401  (VarSpec, variables_tree: re-exported)
from .ops.conv import cpu_conv_path, useful_taps
from .ops.pool import cpu_pool_separable

Array = jax.Array

# IR op -> fn(node, inputs, variables, run) -> array; filled by @lowering next to each rule.
LOWERINGS, lowering = pass_rules("lowering")


# --------------------------------------------------------------------------------------------
# The graph, prepared once and kept out of Linen's dataclass hashing/comparison
# --------------------------------------------------------------------------------------------
class Program:
    """An immutable, identity-hashed view of a Graph, prepared for lowering.

    Linen modules are dataclasses that hash and compare their fields; a ``Graph`` holds dicts
    and lists (unhashable) and comparing two graphs node by node would be slow and pointless.
    This wrapper hashes and compares by identity, which is what a compiled program should do.
    """

    __slots__ = ("graph", "order", "inputs", "primary", "has_dropout", "variable_specs", "_with_variables",
                 "_needed", "_scopes", "_sizes")

    def __init__(self, graph: Graph):
        for node in graph:
            if node.op != "input" and node.op not in LOWERINGS:
                raise NotImplementedError(f"no lowering for op {node.op!r} (node {node.name!r})")
        self.graph = graph
        self.order = tuple(graph.nodes.values())
        self.inputs = tuple(graph.inputs)
        self.primary = graph.outputs[0]
        self.has_dropout = any(OPS[n.op].stochastic and n.attrs.rate > 0 for n in graph)
        self.variable_specs = tuple(variable_specs(graph))
        self._with_variables = frozenset(v.node for v in self.variable_specs)
        self._needed: dict = {}
        self._scopes: dict | None = None
        self._sizes: dict = {}

    @property
    def scopes(self) -> dict[str, str]:
        """Block name -> the node that is the block's output (graph_queries.scopes), computed once."""
        if self._scopes is None:
            self._scopes = graph_queries.scopes(self.graph)
        return self._scopes

    def has_variables(self, node: str) -> bool:
        return node in self._with_variables

    def resolve(self, name: str) -> str:
        """A node name, or a block name standing for the block's output node."""
        return name if name in self.graph.nodes else self.scopes[name]

    def check_outputs(self, outputs) -> tuple[str, ...] | None:
        """Normalise ``outputs`` to a tuple of node or block names (graph_queries.check_outputs)."""
        return graph_queries.check_outputs(self.graph, self.scopes, outputs)

    def needed(self, outputs: tuple[str, ...], given: frozenset = frozenset()) -> frozenset:
        """The nodes the given outputs depend on, not past ``given`` (graph_queries.needed), cached."""
        key = (outputs, given)
        if key not in self._needed:
            self._needed[key] = graph_queries.needed(self.graph, outputs, given)
        return self._needed[key]

    def __repr__(self) -> str:
        return f"Program({self.graph.name!r}, {len(self.order)} nodes)"


# --------------------------------------------------------------------------------------------
# One small pure function per op: fn(node, inputs, variables, run) -> array, where
# ``variables`` are the node's own leaves ({'kernel', 'bias'}, BN's {'scale', 'bias', 'mean',
# 'var'}) and ``run`` carries the train flag, the dropout key and the batch-stat updates. No
# Linen module per node: tracing a layer object costs ~2.6 ms, a jnp op some microseconds.
# --------------------------------------------------------------------------------------------
# XLA:CPU convolution paths, measured on this machine (jax 0.10, batch 8; see BENCHMARKS.md):
# - grouped convs with groups == channels run through a slow generic loop: a depthwise 3x3 at
#   56x56x144 takes 957 ms, the same op as 9 shifted slices x per-channel weights 78 ms;
# - a kxk conv (k > 1) with no padding at all misses the fast kernel: Inception's 3x3 80->192
#   at 73x73 takes 337 ms unpadded, 140 ms with one row/column of zeros added at the end (and
#   the extra output cropped) -- the same values, since the added row only reaches outputs that
#   are cut away;
# - a 1x1 conv is a matrix product, and XLA runs it ~25% faster as a dot than as a convolution;
# - a kxk over a map with fewer cells than the window has taps (a 3x3 at 2x2) has its operands
#   swapped by XLA, and the swapped conv runs in a generic loop: ResNet's 3x3 512->512 at 2x2,
#   batch 32, 857 ms, as im2col (one product of the patches) 6 ms (ops/conv.py has the rule).
# Every path takes the same variables (kernel HWIO, bias) and computes the same function, so
# checkpoints, BN folding and parity do not see which path ran.
def _cpu_conv_path(a, x) -> str | None:
    if jax.default_backend() != "cpu":
        return None
    return cpu_conv_path(a, x.shape)


# Elementwise arithmetic in lax (see kernels.cast); the kernel library's helpers under the
# names the conv paths below use.
_cast, _at_least_f32, _promote, _channelwise = kernels.cast, kernels.at_least_f32, kernels.promote, kernels.channelwise


def _elementwise(op, xs):
    """``op`` folded over arrays of one rank, broadcasting size-1 axes as jnp would."""
    xs = _promote(*xs)
    shape = tuple(max(d) for d in zip(*(x.shape for x in xs)))
    xs = [x if x.shape == shape else lax.broadcast_in_dim(x, shape, tuple(range(x.ndim))) for x in xs]
    return functools.reduce(op, xs)


def _product(op, x, *args, **kwargs):
    """A lax product (dot_general, conv_general_dilated, conv_transpose) of x with a kernel,
    in x's dtype. bf16/f16 operands accumulate in float32 and round once: XLA:CPU runs them
    on its fast path that way (ResNet-50 batch 32 in bf16: 11.3 -> 14.8 img/s; a bf16 result
    type made it 5% slower than float32)."""
    wide = jnp.float32 if x.dtype in (jnp.bfloat16, jnp.float16) else None
    return _cast(op(x, *args, preferred_element_type=wide, **kwargs), x.dtype)


# A 1x1 conv's weight gradient is x^T g, contracted over N*H*W, the major axis of both
# operands; XLA:CPU's products want the lhs's contracted axis minor, so autodiff made it
# transpose the incoming gradient, recomputing BN's backward into a transposed copy (21 % of
# ResNet-50's training step). This VJP keeps x transposed, (C, N*H*W), from the forward pass
# instead: dW = x^T g is then an ordinary (C, M) x (M, F) product. Inference never runs it.
@jax.custom_vjp
def _pointwise(x, w):
    return _product(lax.dot_general, x, w, (((3,), (0,)), ((), ())))


def _pointwise_fwd(x, w):
    xt = lax.transpose(lax.reshape(x, (x.size // x.shape[-1], x.shape[-1])), (1, 0))
    return _pointwise(x, w), (xt, w)


def _pointwise_bwd(res, g):
    xt, w = res
    dx = _product(lax.dot_general, g, w, (((3,), (1,)), ((), ())))
    dw = _product(lax.dot_general, xt, lax.reshape(g, (g.size // g.shape[-1], g.shape[-1])),
                  (((1,), (0,)), ((), ())))
    return _cast(dx, xt.dtype), _cast(dw, w.dtype)


_pointwise.defvjp(_pointwise_fwd, _pointwise_bwd)


def _cpu_conv(path: str, a: dict, x, kernel):
    (kh, kw), (sh, sw), (dh, dw) = tuple(a.kernel), tuple(a.strides), tuple(a.dilation)
    if path == "pointwise":
        if (sh, sw) != (1, 1):
            x = lax.slice(x, (0, 0, 0, 0), x.shape, (1, sh, sw, 1))
        return _pointwise(x, lax.squeeze(kernel, (0, 1)))
    if path == "pad_crop":
        ho, wo = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
        pad = [(0, int(kh > 1)), (0, int(kw > 1))]
        y = _product(lax.conv_general_dilated, x, kernel, (sh, sw), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return lax.slice(y, (0, 0, 0, 0), (y.shape[0], ho, wo, y.shape[3]))
    geometry = (tuple(map(tuple, a.padding)), (sh, sw), (dh, dw))
    if path == "im2col":
        return _im2col(x, kernel, *geometry)
    if path == "im2col_grad":
        return _conv_im2col_grad(x, kernel, geometry)
    # depthwise as shifted slices; the barrier makes XLA compute the input once: fused into the
    # k*k slices, a producer such as BN + swish ran k*k times (EfficientNet-B0: 19 -> 44 img/s).
    # The taps sum in float32 (as _product accumulates), rounded once at the end.
    out_dtype = x.dtype
    x, kernel = _at_least_f32(lax.optimization_barrier(x)), _at_least_f32(kernel)
    return _cast(_depthwise(x, kernel, geometry), out_dtype)


def _im2col(x, kernel, padding, strides, dilation):
    """A conv as one product of its patches: the useful taps' shifted, strided slices of the
    zero-padded input, concatenated along channels (tap-major, as HWIO's kernel flattens),
    times the kernel as a (taps*C, F) matrix -- through _pointwise, whose VJP keeps the
    patches transposed for the weight gradient."""
    (kh, kw), (sh, sw), (dh, dw) = kernel.shape[:2], strides, dilation
    xp = _depthwise_pad(x, padding)
    ho, wo = _depthwise_out_hw(xp.shape[1:3], (kh, kw), strides, dilation)
    n, h, w, c = x.shape
    f = kernel.shape[3]
    taps = useful_taps((h, w), (kh, kw), strides, dilation, padding)
    patches = [lax.slice(xp, (0, i * dh, j * dw, 0), (n, i * dh + (ho - 1) * sh + 1, j * dw + (wo - 1) * sw + 1, c),
                         (1, sh, sw, 1)) for i, j in taps]
    if len(taps) == kh * kw:       # every tap: HWIO flattened is the matrix (a bitcast, no copy)
        return _pointwise(lax.concatenate(patches, 3) if len(taps) > 1 else patches[0],
                          lax.reshape(kernel, (kh * kw * c, f)))
    weights = [lax.reshape(lax.slice(kernel, (i, j, 0, 0), (i + 1, j + 1, c, f)), (c, f)) for i, j in taps]
    if len(taps) == 1:
        return _pointwise(patches[0], weights[0])
    return _pointwise(lax.concatenate(patches, 3), lax.concatenate(weights, 0))


# A strided conv onto a map smaller than its window (ResNet's 3x3/2 from 4x4 to 2x2) runs fast
# forward, but its input gradient, a conv of the stride-dilated output gradient, is one XLA
# swaps (ops/conv.py, gradient_swaps): lax's convolution forward, im2col's gradients.
@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_im2col_grad(x, kernel, geometry):
    padding, strides, dilation = geometry
    return _product(lax.conv_general_dilated, x, kernel, strides, padding, rhs_dilation=dilation,
                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _conv_im2col_grad_fwd(x, kernel, geometry):
    return _conv_im2col_grad(x, kernel, geometry), (x, kernel)


def _conv_im2col_grad_bwd(geometry, res, g):
    return jax.vjp(lambda x, kernel: _im2col(x, kernel, *geometry), *res)[1](g)


_conv_im2col_grad.defvjp(_conv_im2col_grad_fwd, _conv_im2col_grad_bwd)


def _depthwise_taps(xp, kernel, out_hw, strides, dilation):
    """sum over (i, j) of xp shifted by (i*dh, j*dw), strided, times kernel[i, j]: a depthwise
    correlation of an already padded input as k*k shifted slices."""
    (kh, kw), (ho, wo), (sh, sw), (dh, dw) = kernel.shape[:2], out_hw, strides, dilation
    n, c = xp.shape[0], xp.shape[3]
    taps = [_channelwise(lax.mul,
                         lax.slice(xp, (0, i * dh, j * dw, 0), (n, i * dh + (ho - 1) * sh + 1, j * dw + (wo - 1) * sw + 1, c),
                                   (1, sh, sw, 1)),
                         lax.squeeze(lax.slice(kernel, (i, j, 0, 0), (i + 1, j + 1, 1, c)), (0, 1, 2)))
            for i in range(kh) for j in range(kw)]
    return functools.reduce(lax.add, taps)


def _depthwise_pad(x, padding):
    (pt, pb), (pl, pr) = padding
    return lax.pad(x, lax.full((), 0, x.dtype), ((0, 0, 0), (pt, pb, 0), (pl, pr, 0), (0, 0, 0)))


def _depthwise_out_hw(xp_hw, kernel_hw, strides, dilation):
    return tuple((n - d * (k - 1) - 1) // s + 1 for n, k, s, d in zip(xp_hw, kernel_hw, strides, dilation))


# Autodiff of the shifted slices makes the weight gradient read k*k shifted slices of the input;
# XLA:CPU's reductions do not fuse a slice, so it writes each one out, and as they depend on
# forward values only, it schedules them in the forward pass and holds them to the backward:
# k*k - 1 copies of the output per depthwise conv (MobileNetV2, batch 16: 2.2 GiB of temporaries).
# This VJP keeps only the input and takes both gradients from shifted slices of the *gradient*
# (stride-dilated and padded), which exist only in the backward pass:
#   dx       = sum over taps of slice_t(gd) * flipped kernel[t]  (a correlation, as the forward)
#   dW[i, j] = sum over n, h, w of x * slice_(kh-1-i, kw-1-j)(gd)
# Derivation: y[o] = sum_i xp[o*s + i*d] w[i]; with gd the gradient dilated by s, padded by
# d*(k-1) - pt in front (so that index u of gd is xp's row u + pt shifted by d*(k-1)),
# dxp[p] = sum_t gd[p - pt + t*d] w[k-1-t], and dW[i] = sum_o g[o] xp[o*s + i*d]
# = sum_q x[q] gd[q + (k-1-i)*d] (xp is zero outside x).
@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _depthwise(x, kernel, geometry):
    padding, strides, dilation = geometry
    xp = _depthwise_pad(x, padding)
    return _depthwise_taps(xp, kernel, _depthwise_out_hw(xp.shape[1:3], kernel.shape[:2], strides, dilation),
                           strides, dilation)


def _depthwise_fwd(x, kernel, geometry):
    return _depthwise(x, kernel, geometry), (x, kernel)


def _depthwise_bwd(geometry, res, g):
    (padding, (sh, sw), (dh, dw)), (x, kernel) = geometry, res
    (kh, kw), (ho, wo) = kernel.shape[:2], g.shape[1:3]
    (pt, pb), (pl, pr) = padding
    n, h, w, c = x.shape
    # gd covers x's rows and columns plus d*(k-1) more: (h + dh*(kh-1), w + dw*(kw-1))
    hi = (h + pt + pb - (ho - 1) * sh - 1 - pb, w + pl + pr - (wo - 1) * sw - 1 - pr)
    gd = lax.pad(g, lax.full((), 0, g.dtype),
                 ((0, 0, 0), ((kh - 1) * dh - pt, hi[0], sh - 1), ((kw - 1) * dw - pl, hi[1], sw - 1), (0, 0, 0)))
    dk = jnp.stack([jnp.sum(lax.mul(x, lax.slice(gd, (0, (kh - 1 - i) * dh, (kw - 1 - j) * dw, 0),
                                                 (n, (kh - 1 - i) * dh + h, (kw - 1 - j) * dw + w, c))),
                            axis=(0, 1, 2))
                    for i in range(kh) for j in range(kw)]).reshape(kh, kw, 1, c)
    dx = _depthwise_taps(gd, lax.rev(kernel, (0, 1)), (h, w), (1, 1), (dh, dw))
    return dx, dk


_depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)


def _operands(run, x, kernel):
    """A conv's or dense's input and kernel in the compute dtype: ``run.dtype`` when a policy
    is set (the kernel is already cast, see _node_variables), else their common type."""
    if run.dtype is None:
        return _promote(x, kernel)
    return _cast(x, run.dtype), kernel


@lowering("conv")
def _conv(node: Node, xs, v, run):
    a = node.attrs
    x, kernel = _operands(run, xs[0], v["kernel"])
    path = _cpu_conv_path(a, x)
    if path is not None:
        return kernels.add_bias(_cpu_conv(path, a, x, kernel), v)
    y = _product(lax.conv_general_dilated, x, kernel, tuple(a.strides), [tuple(p) for p in a.padding],
                 rhs_dilation=tuple(a.dilation), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                 feature_group_count=a.groups)
    return kernels.add_bias(y, v)


@lowering("conv_transpose")
def _conv_transpose(node: Node, xs, v, run):
    a = node.attrs
    pads = kernels.conv_transpose_padding(a.kernel, a.padding, a.output_padding)
    x, kernel = _operands(run, xs[0], v["kernel"])
    y = _product(lax.conv_transpose, x, kernel, tuple(a.strides), pads,
                 dimension_numbers=("NHWC", "HWIO", "NHWC"), transpose_kernel=True)
    return kernels.add_bias(y, v)


def _separable_window(x, kernel, strides, combine):
    """An unpadded pooling window as shifted, strided slices, rows then columns: on XLA:CPU 4-6x
    faster than reduce_window (Inception's 3x3/2 max pool at 71x71x192, batch 32: 89 -> 14 ms).
    A window op over a rectangle is that op over the row-reductions of its columns. Padded avg
    pools (zero-padded first) gain too (Inception-v3 batch 8: 1.08x overall); padded max pools
    stay on reduce_window, which beats -inf padding + slices there (ResNet's stem: 55 vs 92 ms)."""
    for axis, k, s in ((1, kernel[0], strides[0]), (2, kernel[1], strides[1])):
        n = (x.shape[axis] - k) // s + 1
        parts = [lax.slice_in_dim(x, i, i + (n - 1) * s + 1, s, axis) for i in range(k)]
        x = functools.reduce(combine, parts)
    return x


@lowering("pool")
def _pool(node: Node, xs, v, run):
    a, x = node.attrs, xs[0]
    window = (tuple(a.kernel), tuple(a.strides), tuple(a.padding), tuple(a.extra))
    if not (jax.default_backend() == "cpu" and cpu_pool_separable(a)):
        return kernels.max_pool(x, *window) if a.kind == "max" else kernels.avg_pool(x, *window, a.count_include_pad)
    # zero padding adds nothing to a sum; window_mean's divisor counts the cells
    full = kernels.pool_padding(a.padding, a.extra)
    padded = any(any(side) for side in full)
    total = _separable_window(jnp.pad(x, full) if padded else x, a.kernel, a.strides,
                              lax.max if a.kind == "max" else lax.add)
    return total if a.kind == "max" else kernels.window_mean(total, x.shape[1:3], *window, a.count_include_pad)


@lowering("global_pool")
def _global_pool(node: Node, xs, v, run):
    reduce = jnp.mean if node.attrs.kind == "avg" else jnp.max
    return reduce(xs[0], axis=(1, 2), keepdims=node.attrs.keepdims)


@lowering("flatten")
def _flatten(node: Node, xs, v, run):
    return kernels.flatten(xs[0], node.attrs.order)


@lowering("dense")
def _dense(node: Node, xs, v, run):
    x, kernel = _operands(run, xs[0], v["kernel"])
    return kernels.add_bias(_product(lax.dot_general, x, kernel, (((x.ndim - 1,), (0,)), ((), ()))), v)


def _drop(node: Node, x, run, mask_shape):
    """Inverted dropout in training: zeros where a Bernoulli(rate) mask of ``mask_shape``
    (broadcast over x) hits, x / (1 - rate) elsewhere; the identity in inference."""
    rate = node.attrs.rate
    if rate == 0.0 or not run.train:
        return x
    if rate == 1.0:
        return jnp.zeros_like(x)
    keep = jax.random.bernoulli(run.key(node.name), 1.0 - rate, mask_shape)
    keep = lax.broadcast_in_dim(keep, x.shape, tuple(range(x.ndim)))
    return lax.select(keep, x / (1.0 - rate), jnp.zeros_like(x))


@lowering("dropout")
def _dropout(node: Node, xs, v, run):
    return _drop(node, xs[0], run, xs[0].shape)


@lowering("drop_path")
def _drop_path(node: Node, xs, v, run):
    # stochastic depth: one draw per sample drops (or keeps) its whole branch (torchvision's
    # StochasticDepth "row" mode, timm's DropPath)
    x = xs[0]
    return _drop(node, x, run, (x.shape[0],) + (1,) * (x.ndim - 1))


@lowering("bn")
def _bn(node: Node, xs, v, run):
    # statistics and normalisation in at least float32 under a bf16/f16 policy, as Flax's; the
    # result goes back to the input's dtype
    a = node.attrs
    x = _at_least_f32(xs[0])
    axes = tuple(range(x.ndim - 1))
    if run.train:
        mean = x.mean(axes)
        var = lax.square(x - jnp.expand_dims(mean, axes)).mean(axes)
        m = a.momentum
        run.updates[node.name] = {"mean": m * v["mean"] + (1 - m) * mean, "var": m * v["var"] + (1 - m) * var}
    else:
        mean, var = v["mean"], v["var"]
    return _cast(kernels.batch_norm(x, mean, var, v, a.eps), xs[0].dtype)


@lowering("layernorm")
def _layernorm(node: Node, xs, v, run):
    return kernels.layer_norm(xs[0], v, node.attrs.eps)


@lowering("groupnorm")
def _groupnorm(node: Node, xs, v, run):
    return kernels.group_norm(xs[0], v, node.attrs.groups, node.attrs.eps)


@lowering("layer_scale")
def _layer_scale(node: Node, xs, v, run):
    return kernels.layer_scale(xs[0], v)


@lowering("lrn")
def _lrn(node: Node, xs, v, run):
    a = node.attrs
    return kernels.lrn(xs[0], a.size, a.alpha, a.beta, a.k)


def _zero(x):
    return np.zeros((), x.dtype)         # a rank-0 operand of x's dtype: lax broadcasts it


@jax.custom_jvp
def _relu(x):
    """jax.nn.relu's function and gradient (0 at 0), without its jit wrapper: 0.1 ms to trace
    instead of 1.7."""
    return lax.max(x, _zero(x))


_relu.defjvps(lambda g, y, x: lax.select(lax.gt(x, _zero(x)), g, lax.full_like(g, 0)))


def _relu6(x):
    return jnp.minimum(jnp.maximum(x, 0.0), 6.0)


# activation -> fn(x, attrs): the rest of what is known of an activation is its record (ops.ACTIVATIONS)
ACTIVATION_FNS, _ = pass_rules("activation lowering", covers=activation_names, rules={
    "relu": lambda x, a: _relu(x),
    "relu6": lambda x, a: _relu6(x),
    "leaky_relu": lambda x, a: jax.nn.leaky_relu(x, a.alpha),
    "elu": lambda x, a: jax.nn.elu(x, a.alpha),
    "sigmoid": lambda x, a: lax.logistic(x),
    "tanh": lambda x, a: jnp.tanh(x),
    "swish": lambda x, a: lax.mul(x, lax.logistic(x)),
    "hard_swish": lambda x, a: x * _relu6(x + 3.0) / 6.0,
    "hard_sigmoid": lambda x, a: _relu6(x + 3.0) / 6.0,
    "gelu": lambda x, a: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x, a: jax.nn.gelu(x, approximate=True),
    "softmax": lambda x, a: jax.nn.softmax(_at_least_f32(x), axis=-1),   # f32 under bf16
    "softplus": lambda x, a: jax.nn.softplus(x),
    "mish": lambda x, a: x * jnp.tanh(jax.nn.softplus(x)),
})


@lowering("act")
def _act(node: Node, xs, v, run):
    return ACTIVATION_FNS[node.attrs.fn](xs[0], node.attrs)


@lowering("scale")
def _scale(node: Node, xs, v, run):
    return xs[0] * node.attrs.value


@lowering("concat")
def _concat(node: Node, xs, v, run):
    return xs[0] if len(xs) == 1 else lax.concatenate(_promote(*xs), xs[0].ndim - 1)


@lowering("add")
def _add(node: Node, xs, v, run):
    return _elementwise(lax.add, xs)


@lowering("mul")
def _mul(node: Node, xs, v, run):
    return _elementwise(lax.mul, xs)


@lowering("shuffle")
def _shuffle(node: Node, xs, v, run):
    return kernels.channel_shuffle(xs[0], node.attrs.groups)


@lowering("slice")
def _slice(node: Node, xs, v, run):
    return xs[0][..., node.attrs.start:node.attrs.stop]


@lowering("pad")
def _pad(node: Node, xs, v, run):
    (t, b), (l, r) = node.attrs.padding
    return jnp.pad(xs[0], ((0, 0), (t, b), (l, r), (0, 0)),
                   constant_values=node.attrs.value)


@lowering("crop")
def _crop(node: Node, xs, v, run):
    x = xs[0]
    (t, b), (l, r) = node.attrs.crop
    return x[:, t:x.shape[1] - b, l:x.shape[2] - r, :]


@lowering("upsample")
def _upsample(node: Node, xs, v, run):
    a = node.attrs
    if a.factor is None:                          # upsample(size=@t): t's size in this run
        return kernels.upsample_to(xs[0], xs[1], a.method)
    upsample = kernels.upsample_nearest if a.method == "nearest" else kernels.upsample_bilinear
    return upsample(xs[0], a.factor)


@lowering("identity")
def _identity(node: Node, xs, v, run):
    return xs[0]


@lowering("reshape")
def _reshape(node: Node, xs, v, run):
    x = xs[0]
    return x.reshape((x.shape[0],) + tuple(node.attrs.shape))


@lowering("adaptive_pool")
def _adaptive_pool(node: Node, xs, v, run):
    return kernels.adaptive_pool(xs[0], node.attrs.out, jnp.mean if node.attrs.kind == "avg" else jnp.max)


@lowering("roi_align")
def _roi_align(node: Node, xs, v, run):
    a = node.attrs
    return kernels.roi_align(xs[0], xs[1:], a.out, a.scales, a.sampling, a.aligned)


@lowering("roi_pool")
def _roi_pool(node: Node, xs, v, run):
    return kernels.roi_pool(xs[0], xs[1], node.attrs.out, node.attrs.scale)


@lowering("l2norm")
def _l2norm(node: Node, xs, v, run):
    return kernels.l2_norm(xs[0], v, node.attrs.eps)


@lowering("normalize")
def _normalize(node: Node, xs, v, run):
    # mean, var and the sample count are non-trainable state (in 'batch_stats'; training
    # leaves them unchanged)
    return kernels.normalize(xs[0], v, node.attrs.eps)


@lowering("rescale")
def _rescale(node: Node, xs, v, run):
    return kernels.rescale(xs[0], node.attrs.scale, node.attrs.offset)


# --------------------------------------------------------------------------------------------
# Running the graph
# --------------------------------------------------------------------------------------------
class _Run:
    """The per-call state the op functions share: mode, dropout key, batch-stat updates."""

    __slots__ = ("train", "rng", "updates", "dtype")

    def __init__(self, train: bool, rng, dtype=None):
        self.train, self.rng, self.updates, self.dtype = train, rng, {}, dtype

    def key(self, node: str):
        if self.rng is None:
            raise ValueError(f"dropout node {node!r} runs in training mode and needs a random key")
        return jax.random.fold_in(self.rng, zlib.crc32(node.encode()) & 0x7FFFFFFF)


# The mixed-precision policy: convs and dense layers (their inputs, kernels and biases) compute
# in the policy's dtype, BN's statistics in float32; parameters and optimizer state stay
# float32 (the casts are inside the graph, so gradients arrive in float32), and the outputs
# come back as float32. On this CPU (AMX-BF16) a bf16 matrix product runs ~2.7x float32's.
COMPUTE_DTYPES = {"float32": None, "f32": None, "bfloat16": jnp.bfloat16, "bf16": jnp.bfloat16,
                  "float16": jnp.float16, "f16": jnp.float16}


def compute_dtype(dtype):
    """None (float32 throughout) or the jnp dtype of a policy given by name or dtype."""
    if dtype is None:
        return None
    name = dtype if isinstance(dtype, str) else jnp.dtype(dtype).name
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"unknown compute dtype {dtype!r}: use one of bfloat16, float16, float32")
    return COMPUTE_DTYPES[name]


def _check_input(prog: Program, name: str, value) -> None:
    """An input the model can take: floating point, batched, channels last, and (an image) of a
    height and width the network runs on with the variables it was built with. The error says
    what the model was built for."""
    graph, shape = prog.graph, tuple(prog.graph.nodes[name].shape)
    built = (f"{graph.name} was built for float32 inputs of shape (batch, {', '.join(map(str, shape))})"
             + (" (NHWC)" if len(shape) == 3 else "") + (f" at {name!r}" if len(prog.inputs) > 1 else ""))
    if not jnp.issubdtype(value.dtype, jnp.floating):
        raise ValueError(f"{built}; got {value.dtype} values. Pixels need the network's preprocessing "
                         f"first: archc.predict(model, variables, images) applies its preprocess(...) "
                         f"to uint8 images, or convert yourself (x.astype('float32') / 255, then "
                         f"normalise as the weights expect)")
    if value.ndim != len(shape) + 1 or value.shape[-1] != shape[-1]:
        nchw = len(shape) == 3 and value.ndim == 4 and value.shape[1] == shape[-1]
        raise ValueError(f"{built}; got an array of shape {tuple(value.shape)}"
                         + ("; it looks like NCHW: x.transpose(0, 2, 3, 1)" if nchw else ""))
    if len(shape) == 3 and name == prog.inputs[0]:
        for axis, what in enumerate(("height", "width")):
            n = value.shape[1 + axis]
            if not isinstance(n, int):     # symbolic (jax.export at every size Model.symbolic_shape allows)
                continue
            if n != shape[axis] and (axis, n) not in prog._sizes:
                prog._sizes[(axis, n)] = _other_size(graph, prog, axis, n)
            refused = prog._sizes.get((axis, n)) if n != shape[axis] else None
            if refused:
                raise ValueError(f"{built}; got {tuple(value.shape)}: {what} {n} {refused}")


def _other_size(graph, prog: Program, axis: int, n: int) -> str | None:
    """None where the network, with the variables it was built with, runs on extent ``n`` of a
    spatial axis (the size analysis of ``archc check --sizes``: every layer accepts it, and no
    layer's variables change with it, as a dense layer after a flatten would); else why not."""
    from . import sizes
    hint = f" (archc check {graph.name} --sizes; or build it there: archc.load(..., input_shape=(H, W, C)))"
    try:
        p = sizes.plan(graph, axis)
        at, declared = sizes.follow(p, n, keep=True), sizes.follow(p, p.declared, keep=True)
    except sizes.CannotDerive as e:
        return f"is not the one it was built for, and the size analysis cannot say whether it runs there ({e})"
    if not at.valid:
        near = sizes.nearest(lambda m: sizes.follow(p, m).valid, n, 4 * max(64, n))
        return (f"does not go through {at.failed or at.unknown}"
                + (f"; the nearest it accepts: {', '.join(map(str, near))}" if near else "") + hint)
    for step in p.steps:
        if step.name in prog._with_variables and any(
                at.extents[i] != declared.extents[i] and at.extents[i] <= 0 for i in step.inputs):
            return f"changes the input of {step.name}, whose variables were made for {p.declared}" + hint
    return None


def _bind_inputs(prog: Program, x, needed=None) -> tuple[dict, bool]:
    nodes = prog.graph.nodes
    if len(prog.inputs) == 1 and not isinstance(x, (dict, list, tuple)):
        x = (x,)
    if isinstance(x, dict):
        if needed is not None:              # an input nothing wanted reads may be left out
            x = {n: x[n] if n in x else jnp.zeros((1,) + tuple(nodes[n].shape)) for n in prog.inputs
                 if n in x or n not in needed}
        missing = [n for n in prog.inputs if n not in x]
        if missing:
            raise ValueError(f"missing graph inputs {missing}")
        x = tuple(x[n] for n in prog.inputs)
    if len(x) != len(prog.inputs):
        raise ValueError(f"graph has {len(prog.inputs)} inputs {list(prog.inputs)}, got {len(x)}")
    env: dict[str, Array] = {}
    unbatched = False
    for name, value in zip(prog.inputs, x):
        value = jnp.asarray(value)
        shape = tuple(nodes[name].shape)
        if value.ndim == len(shape):
            value, unbatched = value[None], True
        _check_input(prog, name, value)
        env[name] = value
    return env, unbatched


def _node_variables(prog: "Program", variables: Mapping, node: Node, dtype=None) -> dict:
    owner = node.shares or node.name
    own = {}
    for collection in ("params", "batch_stats"):
        own.update(variables.get(collection, {}).get(owner, {}))
    if not own and prog.has_variables(owner):
        raise ValueError(f"the variables have no entry for node {node.name!r} ({node.op}): "
                         "were they made for another model?")
    if dtype is not None and "kernel" in own:      # a product's operands (conv, dense) take the policy
        own = {k: _cast(a, dtype) for k, a in own.items()}
    return own


def run_graph(prog: Program, variables: Mapping, x, *, train: bool = False,
              outputs: tuple[str, ...] | None = None, rng=None, every_node: bool = False,
              dtype=None, given: Mapping | None = None):
    """The graph as a pure function: ``(result, batch_stat_updates)``.

    ``x``: (N, H, W, C), or one unbatched example (H, W, C), whose outputs then come back
    unbatched too (handy under ``jax.vmap``); several graph inputs: a dict name -> array or a
    sequence in ``graph.inputs`` order. ``result`` is the primary output, or a dict name ->
    array for ``outputs`` (nodes, or blocks such as 'layer3'). Only the ancestors of what is
    wanted are traced, unless ``every_node``. ``batch_stat_updates``: node -> new
    {'mean', 'var'} for each BN that ran in training mode. ``rng``: the dropout key.
    ``dtype``: the compute dtype of the mixed-precision policy ('bfloat16'; see COMPUTE_DTYPES).
    ``given``: node name -> its value, computed by an earlier call (phase one of a two-phase
    network: Faster R-CNN's features, before its proposals exist); neither they nor what they
    depend on are computed again, and inputs that only they depend on may be left out of ``x``.
    """
    wanted = prog.check_outputs(outputs)
    dtype = compute_dtype(dtype)
    targets = tuple(map(prog.resolve, wanted)) if wanted is not None else (prog.primary,)
    given = dict(given or {})
    needed = None if every_node else prog.needed(targets, frozenset(given))
    env, unbatched = _bind_inputs(prog, x, needed)
    env.update(given)
    run = _Run(train, rng, dtype)
    for node in prog.order:
        if node.op == "input" or node.name in given or (needed is not None and node.name not in needed):
            continue
        with jax.named_scope(node.name):         # HLO metadata names the IR node (profiles)
            env[node.name] = LOWERINGS[node.op](node, [env[i] for i in node.inputs],
                                                _node_variables(prog, variables, node, dtype), run)

    def fix(a):
        if dtype is not None and jnp.issubdtype(a.dtype, jnp.floating):
            a = _at_least_f32(a)                               # the policy's outputs: float32
        return a[0] if unbatched else a

    if wanted is None:
        return fix(env[prog.primary]), run.updates
    return {name: fix(env[node]) for name, node in zip(wanted, targets)}, run.updates

