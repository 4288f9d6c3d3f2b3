"""Pooling: windowed (maxpool, avgpool), global (gap, gmp) and adaptive."""
from __future__ import annotations

import numpy as np

from .base import REQUIRED, Attrs, OpDef, ShapeError, Surface, attrs_class, fmt, no_macs, register, spatial
from .conv import _kernel_aliases, resolve_padding
from .window import Window, ceil_extra, window_shape


def axis_counts(n: int, k: int, s: int, pad: tuple, extra: tuple, include_pad: bool) -> np.ndarray:
    """PyTorch's avg-pool divisor along one axis: window cells inside the input, plus cells in
    the explicit padding when count_include_pad; the ceil-mode `extra` cells never count."""
    lo, hi = (-pad[0], n + pad[1]) if include_pad else (0, n)
    before = pad[0] + extra[0]
    out = (n + before + pad[1] + extra[1] - k) // s + 1
    start = np.arange(out) * s - before
    return np.minimum(start + k, hi) - np.maximum(start, lo)


@attrs_class
class PoolAttrs(Attrs):
    kind: str                 # 'max' | 'avg'
    kernel: tuple
    strides: tuple
    padding: tuple
    extra: tuple              # ceil mode's bottom/right cells: padded, never counted
    count_include_pad: bool
    # Size-dependent intent (compiler/sizes.py re-resolves these at other input sizes):
    padding_rule: str | None = None     # 'same': TensorFlow's, resolved for this input size
    ceil: bool | None = None            # PyTorch's ceil_mode, which `extra` resolved


def cpu_pool_separable(a: PoolAttrs) -> bool:
    """Whether the XLA:CPU lowering runs this pool as shifted slices (unpadded, or an average,
    whose zero padding adds nothing) rather than reduce_window; the memory estimate reads it too."""
    padded = any(any(side) for side in a.padding) or any(any(side) for side in a.extra)
    return not padded or a.kind == "avg"


def _pool_window(a: PoolAttrs) -> tuple:
    mode = a.padding_rule or ("ceil" if a.ceil else None)
    return tuple(Window(k, s, p, mode, pool=True, extra=e) for k, s, p, e in zip(a.kernel, a.strides, a.padding, a.extra))


def _pool_shape(a: PoolAttrs, ins):
    c = spatial(a.kind + "pool", ins[0])[2]
    return window_shape(a.kind + "pool", ins[0], _pool_window(a)) + (c,)


def _bind_pool(a, ctx, kind: str):
    h, w, c = ctx.spatial()
    k = ctx.pair(a["k"], "kernel")
    strides = ctx.pair(a["s"] if a["s"] is not None else a["k"], "stride")
    same = a["p"] == "same"
    padding = resolve_padding(a["p"], (h, w), k, strides, (1, 1), ctx)
    extra = ((0, 0), (0, 0))
    if a["ceil"]:
        extra = tuple((0, ceil_extra(n, kk, ss, pp)) for n, kk, ss, pp in zip((h, w), k, strides, padding))
    count_pad = bool(a.get("count_pad", True)) and not same    # TF's 'same' never counts padding
    return PoolAttrs(kind, k, strides, padding, extra, count_pad, "same" if same else None, True if a["ceil"] else None)


register(OpDef(
    "pool", PoolAttrs, _pool_shape, geometry=_pool_window, profile_rank=3,
    macs=no_macs,           # a max or a sum: no multiply-accumulates
    surfaces=(
        Surface("maxpool", {"k": 2, "s": None, "p": 0, "ceil": False},
                lambda a, ctx: _bind_pool(a, ctx, "max"), _kernel_aliases("maxpool"),
                params_doc="`s`: stride (default `k`); `ceil=true` is PyTorch's ceil_mode (a window must start inside the input)",
                doc="as conv"),
        Surface("avgpool", {"k": 2, "s": None, "p": 0, "ceil": False, "count_pad": True},
                lambda a, ctx: _bind_pool(a, ctx, "avg"), _kernel_aliases("avgpool"),
                params_doc="as maxpool; `count_pad`: padding cells count in the divisor (PyTorch's count_include_pad)",
                doc="as conv"),
    )))


@attrs_class
class GlobalPoolAttrs(Attrs):
    kind: str
    keepdims: bool


def _global_pool_shape(a: GlobalPoolAttrs, ins):
    h, w, c = spatial("global pool", ins[0])
    return (1, 1, c) if a.keepdims else (c,)


register(OpDef(
    "global_pool", GlobalPoolAttrs, _global_pool_shape, macs=no_macs, profile_rank=4,
    surfaces=tuple(Surface(name, {"keep": False}, lambda a, ctx, kind=kind: GlobalPoolAttrs(kind, bool(a["keep"])),
                           doc=f"global {kind} pool: H×W×C → C (or 1×1×C with `keep=true`)")
                   for name, kind in (("gap", "avg"), ("gmp", "max")))))


@attrs_class
class AdaptivePoolAttrs(Attrs):
    kind: str
    out: tuple


def _adaptive_shape(a: AdaptivePoolAttrs, ins):
    h, w, c = spatial("adaptive pool", ins[0])
    oh, ow = a.out
    if oh > h or ow > w:
        raise ShapeError(f"adaptive pooling cannot enlarge {fmt(ins[0])} to {oh}x{ow}")
    return (oh, ow, c)


def _bind_adaptive(a, ctx, kind):
    ctx.spatial()
    return AdaptivePoolAttrs(kind, ctx.pair(a["out"], "output size"))


register(OpDef(
    "adaptive_pool", AdaptivePoolAttrs, _adaptive_shape, macs=no_macs, profile_rank=5,
    surfaces=tuple(Surface(f"adaptive_{kind}pool", {"out": REQUIRED}, lambda a, ctx, kind=kind: _bind_adaptive(a, ctx, kind),
                           params_doc="`out`: e.g. `4x4`",
                           doc="H×W×C → out×C with PyTorch's windows `[floor(i·H/o), ceil((i+1)·H/o))`")
                   for kind in ("avg", "max"))))
