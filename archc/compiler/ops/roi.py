"""Region-of-interest ops (Fast/Faster R-CNN): roi_align (one map, or several with
MultiScaleRoIAlign's level mapping) and roi_pool.

Their primary input is the RoIs, a graph input of shape (R, 4): R boxes (x1, y1, x2, y2) per
image in input-image pixels; the feature maps are tensor arguments (``@rois roi_align(@p3,
scale=1/16)``), so a node's inputs are (rois, map0, map1, ...). The output keeps the RoI axis in
front of each pooled map, (R, PH, PW, C): the *per-RoI axis*. ``flatten`` keeps a leading RoI
axis (R, PH, PW, C) -> (R, PH·PW·C), and dense and activations act on the last axis, so the
R-CNN heads (TwoMLPHead, the box predictor) are ordinary layers after a RoI op. Their arithmetic
(and MultiScaleRoIAlign's level mapper): compiler/kernels.py's roi_align, roi_levels, roi_pool.
"""
from __future__ import annotations

import math

from .base import REQUIRED, Attrs, OpDef, ShapeError, Surface, attrs_class, fmt, no_macs, register


@attrs_class
class RoiAlignAttrs(Attrs):
    out: tuple                # (PH, PW)
    scales: tuple             # one spatial scale per feature map (map pixels per image pixel)
    sampling: int             # samples per bin side; <= 0: adaptive ceil(roi / out) (torchvision -1)
    aligned: bool             # half-pixel offset (Detectron2's ROIAlignV2); false: torchvision's default


@attrs_class
class RoiPoolAttrs(Attrs):
    out: tuple
    scale: float


def _roi_shape(op: str, a, ins):
    rois, maps = ins[0], ins[1:]
    if len(rois) != 2 or rois[1] != 4:
        raise ShapeError(f"{op} reads RoIs of shape Rx4 (x1, y1, x2, y2), not {fmt(rois)}",
                         "apply it to the proposals input: input(R, 4, name=\"rois\") ... @rois " + op + "(@features, …)")
    for m in maps:
        if len(m) != 3:
            raise ShapeError(f"{op} pools from feature maps HxWxC, not {fmt(m)}")
    if len({m[2] for m in maps}) > 1:
        raise ShapeError(f"{op}'s feature maps differ in channels: {', '.join(fmt(m) for m in maps)}",
                         "give every level the same width (an FPN's out_channels)")
    return (rois[0], *a.out, maps[0][2])


def _maps(a, ctx, many: bool) -> list:
    maps = a["maps"]
    if not many and len(maps) != 1:
        ctx.fail(f"{ctx.label} pools from one feature map, got {len(maps)}")
    return maps


def _scales(a, ctx, n: int) -> tuple:
    s = a["scale"]
    s = list(s) if isinstance(s, (list, tuple)) else [s] * (1 if n == 1 else 0)
    if len(s) != n:
        ctx.fail(f"{ctx.label} needs one scale per feature map: {n} map(s), {len(s)} scale(s)",
                 "e.g. scale=[1/4, 1/8, 1/16, 1/32]")
    out = tuple(float(ctx.number(v, "scale")) for v in s)
    if any(v <= 0 for v in out):
        ctx.fail(f"a RoI scale must be positive, got {out}")
    if n > 1:
        if any(abs(math.log2(v) - round(math.log2(v))) > 1e-9 for v in out):
            ctx.fail(f"multi-level RoI pooling maps each RoI to a level by log2 of its size: the scales must be powers "
                     f"of 2, got {out}")
        if list(out) != sorted(out, reverse=True):
            ctx.fail(f"multi-level RoI pooling takes its maps finest first (decreasing scales), got {out}")
    return out


def _bind_roi_align(a, ctx):
    maps = _maps(a, ctx, True)
    sampling = ctx.int(a["sampling"], "sampling ratio")
    return RoiAlignAttrs(ctx.pair(a["out"], "output size"), _scales(a, ctx, len(maps)), sampling,
                         bool(a["aligned"]))


def _bind_roi_pool(a, ctx):
    _maps(a, ctx, False)
    return RoiPoolAttrs(ctx.pair(a["out"], "output size"), _scales(a, ctx, 1)[0])


def _roi_align_macs(a, ins, out):
    grid = a.sampling if a.sampling > 0 else 2
    return math.prod(out) * grid * grid * 4          # four taps per sample


register(OpDef(
    "roi_align", RoiAlignAttrs, lambda a, ins: _roi_shape("roi_align", a, ins), arity=(2, 64),
    macs=_roi_align_macs,
    surfaces=(Surface("roi_align", {"maps": REQUIRED, "scale": REQUIRED, "out": 7, "sampling": -1, "aligned": False},
                      _bind_roi_align, tensors=("maps",),
                      params_doc="`maps`: `@f` or `[@p2, @p3, …]` (finest first); `scale`: one per map (`1/16`); "
                                 "`sampling`: samples per bin side (≤ 0: adaptive); `aligned`: half-pixel offset",
                      doc="applied to RoIs Rx4 → R×out×C: torchvision.ops.roi_align; several maps: "
                          "MultiScaleRoIAlign's level mapping"),)))

register(OpDef(
    "roi_pool", RoiPoolAttrs, lambda a, ins: _roi_shape("roi_pool", a, ins), arity=(2, 2),
    macs=no_macs,           # a max over each bin, as maxpool: comparisons, no multiply-accumulates
    surfaces=(Surface("roi_pool", {"maps": REQUIRED, "scale": REQUIRED, "out": 7}, _bind_roi_pool, tensors=("maps",),
                      params_doc="`maps`: `@f`; `scale`: `1/16`",
                      doc="applied to RoIs Rx4 → R×out×C: max over each bin (Fast R-CNN; torchvision.ops.roi_pool)"),)))
