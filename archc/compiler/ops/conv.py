"""Convolutions and dense layers: conv (and dwconv), conv_transpose (deconv), dense (fc)."""
from __future__ import annotations

from math import prod

import numpy as np

from .base import REQUIRED, Attrs, OpDef, ShapeError, Surface, Var, attrs_class, fmt, no_macs, register, spatial
from .window import Affine, Window, conv_out, same_padding, window_shape


def inferred_stride(hw: tuple, target: tuple) -> int | None:
    """The stride with which a 1x1 projection maps the spatial size hw onto target (the body's
    output), the smallest that fits both axes; None when none does."""
    if tuple(hw) == tuple(target):
        return 1
    for st in range(1, max(hw) + 1):
        if all((n - 1) // st + 1 == t for n, t in zip(hw, target)):
            return st
    return None


def projection_fix(hw: tuple, target: tuple) -> str | None:
    """A shortcut that maps the spatial size hw onto target where no inferred stride does, as
    residual's proj=: a padded strided 1x1 conv, else an average pool before it; None if
    neither of these small ones fits. Checked with the ops' own size rule (conv_out)."""
    def fits(k, s, p):
        return all(conv_out(n, k, s, (p, p)) == t for n, t in zip(hw, target))
    for s in range(1, 5):
        for p in range(1, 4):
            if fits(1, s, p):
                return f"conv1(s={s}, p={p}) bn"
    for k in range(2, 8):
        for s in range(1, k + 1):
            if fits(k, s, 0):
                return f"avgpool({k}, s={s}) conv1 bn"
    return None


def resolve_padding(p, hw, k, s, d, ctx):
    """Padding spec -> explicit ((t, b), (l, r)). 'auto': PyTorch-symmetric (k-1)//2·d (keeps the
    size at stride 1); 'same': TensorFlow's, the extra pixel at the bottom/right; 'valid': none."""
    if p == "auto":
        ph, pw = (k[0] - 1) * d[0] // 2, (k[1] - 1) * d[1] // 2
        return ((ph, ph), (pw, pw))
    if p == "valid":
        return ((0, 0), (0, 0))
    if p == "same":
        return tuple(same_padding(n, (kk - 1) * dd + 1, ss) for n, kk, ss, dd in zip(hw, k, s, d))
    if isinstance(p, str):
        ctx.fail(f"unknown padding {p!r}", "use a number, [h, w], [t, b, l, r], \"same\" (TensorFlow) or \"valid\"")
    return ctx.explicit4(p, "padding")


def auto_bias(value, ctx) -> bool:
    """bias=auto: a bias unless the next layer of the sequence is a BN (which has its own shift)."""
    return (not ctx.next_is_bn) if value == "auto" else bool(value)


def _bias_var(a):
    return (Var("params", "bias", (a.features,), "zeros"),) if a.bias else ()


# ---- conv -----------------------------------------------------------------------------------
@attrs_class
class ConvAttrs(Attrs):
    features: int
    kernel: tuple
    strides: tuple
    padding: tuple
    dilation: tuple
    groups: int
    bias: bool
    # Size-dependent intent (compiler/sizes.py re-resolves these at other input sizes):
    padding_rule: str | None = None     # 'same': TensorFlow's, resolved for this input size
    stride_fit: str | None = None       # the node whose HxW an inferred (projection) stride reaches


def useful_taps(hw, kernel, strides, dilation, padding) -> list:
    """The kernel taps (i, j) that read at least one input cell, not only padding: a map
    smaller than the window leaves some taps on padding for every output (a 3x3 at 1x1 keeps
    its centre only); the im2col path (compiler/lower.py) drops the others."""
    axes = []
    for n, k, s, d, (lo, hi) in zip(hw, kernel, strides, dilation, padding):
        out = (n + lo + hi - d * (k - 1) - 1) // s + 1
        axes.append([i for i in range(k) if any(0 <= o * s + i * d - lo < n for o in range(out))] or list(range(k)))
    return [(i, j) for i in axes[0] for j in axes[1]]


def xla_swaps_operands(kernel, in_hw, strides, padding, dilation, base=(1, 1)) -> bool:
    """Whether XLA's algebraic simplifier (SwapConvOperands, in the installed jaxlib 0.10)
    swaps a non-grouped convolution's input and kernel: when the window has more taps than the
    input has cells, as a 3x3 over a 2x2 map. XLA:CPU has no fast kernel for the swapped form
    (dim_labels 01fb_o01i->f01b, a reversed window): neither YNNPACK's fusion nor Eigen's
    convolution takes it, and its generic loop runs at ~0.3 GFLOP/s (BENCHMARKS.md, small maps).
    Mirrors XLA's condition: an axis the window covers exactly (unpadded, undilated, stride 1)
    stays, a 1-cell axis padded k-1 on both sides counts as k cells. ``base`` is the input's
    dilation (a stride-s conv's input gradient dilates the output gradient by s)."""
    taps = cells = 1
    for k, n, s, (lo, hi), d, b in zip(kernel, in_hw, strides, padding, dilation, base):
        plain = lo == hi == 0 and d == 1
        if plain and ((b == k and s == k - 1) or (b == 1 and s == 1 and k == n)):
            continue
        taps *= k
        cells *= k if (n == 1 and s == 1 and d == 1 and lo == hi == k - 1) else n
    return taps > cells


def gradient_swaps(a: "ConvAttrs", hw) -> bool:
    """Whether one of the two convolutions of a conv's gradient, as JAX transposes it, gets its
    operands swapped: the input gradient (the output gradient, dilated by the stride, against
    the reversed kernel) when the output is smaller than the window -- a strided conv onto a
    small map, ResNet's 3x3/2 from 4x4 to 2x2 -- or the kernel gradient (the input against the
    output gradient as the window) when the output is larger than the input (padding > k//2)."""
    out = [(n + lo + hi - d * (k - 1) - 1) // s + 1
           for n, k, s, (lo, hi), d in zip(hw, a.kernel, a.strides, a.padding, a.dilation)]
    data_pads, kernel_pads = [], []
    for n, k, s, (lo, _), d, o in zip(hw, a.kernel, a.strides, a.padding, a.dilation, out):
        span, reach = d * (k - 1) + 1, (o - 1) * s + 1
        data_pads.append((span - 1 - lo, n + span - 1 - reach - (span - 1 - lo)))
        kernel_pads.append((lo, reach - n + span - lo - 1))
    return (xla_swaps_operands(a.kernel, out, (1, 1), data_pads, a.dilation, base=a.strides)
            or xla_swaps_operands(out, hw, a.dilation, kernel_pads, a.strides))


def cpu_conv_path(a: ConvAttrs, in_shape) -> str | None:
    """Which XLA:CPU path the lowering takes for a conv (compiler/lower.py explains the
    measurements): 'depthwise' (k*k shifted slices), 'pointwise' (a 1x1 as a dot), 'pad_crop'
    (an unpadded kxk with a row/column of zeros added), 'im2col' (a kxk over a map smaller
    than its window, as one product of patches), 'im2col_grad' (lax's convolution forward,
    im2col's gradients: a strided conv whose input gradient would be swapped), or None (lax's
    convolution). Pure, so that the memory estimate (compiler/memory.py) sees the same choice
    as the lowering."""
    if len(in_shape) != 4:
        return None
    g, kernel = a.groups, tuple(a.kernel)
    if g > 1:
        return "depthwise" if g == a.features == in_shape[-1] else None
    hw = tuple(in_shape[1:3])
    # a symbolic size (jax.export's shape polymorphism): the swap cannot be decided; lax's path
    sized = all(isinstance(d, (int, np.integer)) for d in hw)
    if sized and xla_swaps_operands(kernel, hw, a.strides, a.padding, a.dilation):
        return "im2col"
    unpadded = all(p == 0 for side in a.padding for p in side)
    if tuple(a.dilation) == (1, 1) and unpadded:
        if kernel == (1, 1):
            return "pointwise"
        # pad_crop's convolution has a row and a column of zeros more (and so a larger output)
        crop = a.replace(padding=((0, int(kernel[0] > 1)), (0, int(kernel[1] > 1))))
        return "im2col_grad" if sized and gradient_swaps(crop, hw) else "pad_crop"
    return "im2col_grad" if sized and gradient_swaps(a, hw) else None


def _conv_shape(a: ConvAttrs, ins):
    c = spatial("conv", ins[0])[2]
    g = a.groups
    if c % g:
        raise ShapeError(f"groups={g} does not divide the {c} input channels of {fmt(ins[0])}",
                         f"choose groups among the divisors of {c}")
    if a.features % g:
        raise ShapeError(f"groups={g} does not divide the {a.features} output channels",
                         f"make the output channels a multiple of {g}")
    return window_shape("conv", ins[0], _conv_window(a)) + (a.features,)


def _conv_window(a: ConvAttrs) -> tuple:
    return tuple(Window(k, s, p, a.padding_rule, dilation=d, stride_fit=a.stride_fit)
                 for k, s, p, d in zip(a.kernel, a.strides, a.padding, a.dilation))


def _conv_variables(a: ConvAttrs, ins):
    kh, kw = a.kernel
    cin = ins[0][-1] // a.groups
    return (Var("params", "kernel", (kh, kw, cin, a.features), "lecun_normal", kh * kw * cin),) + _bias_var(a)


def _conv_macs(a: ConvAttrs, ins, out):
    return prod(out) * a.kernel[0] * a.kernel[1] * ins[0][-1] // a.groups


def _bind_conv(a, ctx, depthwise: bool):
    h, w, c = ctx.spatial()
    k = ctx.pair(a["k"], "kernel")
    d = ctx.pair(a["d"], "dilation")
    if depthwise:
        mult = ctx.posint(a["m"], "depth multiplier")
        features, groups = c * mult, c
    else:
        features = a["c"]
        if features is None:        # a projection shortcut's conv1 takes the body's channels
            features = ctx.target[-1] if ctx.target else c
        features = ctx.posint(features, "output channels")
        groups = ctx.posint(a["g"], "groups")
    strides = a["s"] if a["s"] is not None else ctx.inferred_stride()
    stride_fit = ctx.target_node if a["s"] is None and ctx.target else None
    strides = ctx.pair(strides, "stride")
    padding = resolve_padding(a["p"], (h, w), k, strides, d, ctx)
    return ConvAttrs(features, k, strides, padding, d, groups, auto_bias(a["bias"], ctx),
                     "same" if a["p"] == "same" else None, stride_fit)


def _kernel_aliases(base: str, sizes=(1, 2, 3, 4, 5, 7, 9, 11)) -> dict:
    return {base: {}, **{f"{base}{k}": {"k": k} for k in sizes}}


def _kernel_from_torch(linear_as_1x1: bool):
    def convert(leaf, arr, a):
        if leaf == "weight":
            if arr.ndim == 4:
                return "kernel", np.transpose(arr, (2, 3, 1, 0))
            if arr.ndim == 2 and linear_as_1x1:          # a Linear as a 1x1 conv
                return "kernel", arr.T.reshape((1, 1) + arr.T.shape)
            return "kernel", arr
        if leaf == "bias":
            return "bias", arr
        return None
    return convert


def _conv_from_keras(leaf, arr, a):
    if leaf in ("kernel", "depthwise_kernel", "pointwise_kernel"):
        if arr.ndim == 4 and a.groups > 1 and arr.shape[2] == a.groups:
            # Keras depthwise (kh, kw, C, m) -> grouped conv (kh, kw, 1, C*m)
            return "kernel", arr.reshape(arr.shape[0], arr.shape[1], 1, -1)
        if arr.ndim == 2:
            return "kernel", arr.reshape((1, 1) + arr.shape)
        return "kernel", arr
    if leaf == "bias":
        return "bias", arr
    return None


CONV = register(OpDef(
    "conv", ConvAttrs, _conv_shape, variables=_conv_variables, macs=_conv_macs, geometry=_conv_window,
    fusion="library", profile_rank=0,
    weights={"torch": _kernel_from_torch(linear_as_1x1=True), "keras": _conv_from_keras},
    checkpoint_kind="conv", folds_bn=True,
    surfaces=(
        Surface("conv", {"c": None, "k": 3, "s": None, "p": "auto", "d": 1, "g": 1, "bias": "auto"},
                lambda a, ctx: _bind_conv(a, ctx, depthwise=False), _kernel_aliases("conv"),
                params_doc="`c`: out channels (default: the target of a projection, else `cin`); `k`: int or `1x7`; "
                           "`s`: stride (default 1, or what a projection shortcut needs); `d`: dilation; `g`: groups",
                doc="H×W×C → H'×W'×c; `g` must divide both channel counts"),
        Surface("dwconv", {"k": 3, "s": 1, "p": "auto", "d": 1, "m": 1, "bias": "auto"},
                lambda a, ctx: _bind_conv(a, ctx, depthwise=True), _kernel_aliases("dwconv"),
                params_doc="`m`: depth multiplier",
                doc="H×W×C → H'×W'×(C·m), groups = C"),
    )))


# ---- conv_transpose -------------------------------------------------------------------------
@attrs_class
class ConvTransposeAttrs(Attrs):
    features: int
    kernel: tuple
    strides: tuple
    padding: tuple
    output_padding: tuple
    bias: bool


def _deconv_geometry(a: ConvTransposeAttrs) -> tuple:
    # out = (in − 1)·s − p0 − p1 + k + op
    return tuple(Affine(s, k + op - s - p[0] - p[1])
                 for k, s, p, op in zip(a.kernel, a.strides, a.padding, a.output_padding))


def _deconv_shape(a: ConvTransposeAttrs, ins):
    h, w, c = spatial("deconv", ins[0])
    return tuple(g.out(n) for g, n in zip(_deconv_geometry(a), (h, w))) + (a.features,)


def _deconv_variables(a: ConvTransposeAttrs, ins):
    kh, kw = a.kernel
    # transpose_kernel layout (kh, kw, out, in); Flax's fan_in is kh*kw*shape[-2]
    return (Var("params", "kernel", (kh, kw, a.features, ins[0][-1]), "lecun_normal", kh * kw * a.features),) + _bias_var(a)


def _bind_deconv(a, ctx):
    ctx.spatial()
    k = ctx.pair(a["k"], "kernel")
    strides = ctx.pair(a["s"] if a["s"] is not None else a["k"], "stride")
    p = ctx.pair(a["p"], "padding", allow_zero=True)
    output_padding = ctx.pair(a["op"], "output padding", allow_zero=True)
    bias = auto_bias(a["bias"], ctx)
    return ConvTransposeAttrs(ctx.posint(a["c"], "output channels"), k, strides,
                              ((p[0], p[0]), (p[1], p[1])), output_padding, bias)


def _deconv_from_keras(leaf, arr, a):
    if leaf in ("kernel", "depthwise_kernel", "pointwise_kernel"):
        return "kernel", arr
    return ("bias", arr) if leaf == "bias" else None


register(OpDef(
    "conv_transpose", ConvTransposeAttrs, _deconv_shape, variables=_deconv_variables, geometry=_deconv_geometry,
    macs=lambda a, ins, out: prod(ins[0]) * a.kernel[0] * a.kernel[1] * a.features, fusion="library", profile_rank=1,
    weights={"torch": _kernel_from_torch(linear_as_1x1=False), "keras": _deconv_from_keras},
    checkpoint_kind="conv",
    surfaces=(Surface("deconv", {"c": REQUIRED, "k": 2, "s": None, "p": 0, "op": 0, "bias": "auto"}, _bind_deconv,
                      params_doc="`s`: stride (default `k`); `op`: output padding",
                      doc="out = (in−1)·s − 2p + k + op (PyTorch ConvTranspose2d)"),)))


# ---- dense ----------------------------------------------------------------------------------
@attrs_class
class DenseAttrs(Attrs):
    features: int
    bias: bool


def _dense_from_torch(leaf, arr, a):
    if leaf == "weight":
        if arr.ndim == 4:                                # a 1x1 conv as a Linear
            arr = arr.reshape(arr.shape[0], -1)
        return "kernel", arr.T if arr.ndim == 2 else arr
    return ("bias", arr) if leaf == "bias" else None


def _dense_from_keras(leaf, arr, a):
    if leaf == "kernel":
        return "kernel", arr.reshape(-1, arr.shape[-1]) if arr.ndim == 4 else arr
    return ("bias", arr) if leaf == "bias" else None


register(OpDef(
    "dense", DenseAttrs, lambda a, ins: tuple(ins[0][:-1]) + (a.features,),
    variables=lambda a, ins: (Var("params", "kernel", (ins[0][-1], a.features), "lecun_normal", ins[0][-1]),) + _bias_var(a),
    macs=lambda a, ins, out: prod(out) * ins[0][-1], fusion="library", profile_rank=2,
    weights={"torch": _dense_from_torch, "keras": _dense_from_keras},
    checkpoint_kind="dense", folds_bn=True,
    surfaces=(Surface("fc", {"n": REQUIRED, "bias": "auto"},
                      lambda a, ctx: DenseAttrs(ctx.posint(a["n"], "units"), auto_bias(a["bias"], ctx)),
                      {"fc": {}, "linear": {}}, doc="acts on the last axis"),)))
