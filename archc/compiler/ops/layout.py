"""Ops that move values rather than compute them: input, flatten, reshape, channel shuffle and
slice, pad, crop, upsample, and the merges concat, add, mul."""
from __future__ import annotations

from math import prod

from .base import REQUIRED, Attrs, NoAttrs, OpDef, ShapeError, Surface, attrs_class, fmt, no_macs, register, spatial
from .window import Affine

MANY = 10**6


@attrs_class
class InputAttrs(Attrs):
    shape: tuple


register(OpDef("input", InputAttrs, lambda a, ins: tuple(a.shape), arity=(0, 0), macs=no_macs,
               doc="a graph input; its shape excludes the batch axis"))


@attrs_class
class FlattenAttrs(Attrs):
    order: str                # 'nhwc' | 'nchw' (PyTorch's order, for its Linear weights)


def _bind_flatten(a, ctx):
    if a["order"] not in ("nhwc", "nchw"):
        ctx.fail(f"flatten order must be \"nhwc\" or \"nchw\", not {a['order']!r}")
    return FlattenAttrs(a["order"])


def _flatten_shape(a, ins):
    s = ins[0]
    return (s[0], prod(s[1:])) if len(s) == 4 else (prod(s),)    # R×H×W×C (per RoI, ops/roi.py) keeps R


register(OpDef(
    "flatten", FlattenAttrs, _flatten_shape, macs=no_macs,
    surfaces=(Surface("flatten", {"order": "nhwc"}, _bind_flatten,
                      params_doc="`\"nchw\"`: PyTorch's order, for its Linear weights",
                      doc="→ H·W·C (per RoI: R×H×W×C → R×H·W·C)"),)))


@attrs_class
class ReshapeAttrs(Attrs):
    shape: tuple


def _reshape_shape(a, ins):
    if prod(ins[0]) != prod(a.shape):
        raise ShapeError(f"cannot reshape {fmt(ins[0])} ({prod(ins[0])} values) to {fmt(a.shape)} ({prod(a.shape)} values)")
    return tuple(a.shape)


def _bind_reshape(a, ctx):
    shp = a["shape"]
    if not isinstance(shp, (list, tuple)) or not 1 <= len(shp) <= 3:
        ctx.fail("reshape needs a shape such as 7x7x30 or [7, 7, 30]")
    return ReshapeAttrs(tuple(ctx.posint(d, "size") for d in shp))


register(OpDef(
    "reshape", ReshapeAttrs, _reshape_shape, macs=no_macs,
    surfaces=(Surface("reshape", {"shape": REQUIRED}, _bind_reshape, params_doc="`7x7x30` or a list",
                      doc="same number of values, row-major (HWC)"),)))


@attrs_class
class ShuffleAttrs(Attrs):
    groups: int


def _shuffle_shape(a, ins):
    c = ins[0][-1]
    if c % a.groups:
        raise ShapeError(f"channel shuffle groups={a.groups} does not divide {c} channels")
    return ins[0]


register(OpDef(
    "shuffle", ShuffleAttrs, _shuffle_shape, macs=no_macs,
    surfaces=(Surface("shuffle", {"g": REQUIRED}, lambda a, ctx: ShuffleAttrs(ctx.posint(a["g"], "groups")),
                      doc="channel shuffle (ShuffleNet)"),)))


@attrs_class
class SliceAttrs(Attrs):
    start: int
    stop: int


def _slice_shape(a, ins):
    c = ins[0][-1]
    if not 0 <= a.start < a.stop <= c:
        raise ShapeError(f"channel slice {a.start}:{a.stop} is outside the {c} channels of {fmt(ins[0])}")
    return tuple(ins[0][:-1]) + (a.stop - a.start,)


def _bind_slice(a, ctx):
    start, stop = a["start"], a["stop"] if a["stop"] is not None else ctx.shape[-1]
    for x in (start, stop):
        ctx.int(x, "channel index")
    return SliceAttrs(start, stop)


register(OpDef(
    "slice", SliceAttrs, _slice_shape, macs=no_macs,
    surfaces=(Surface("slice", {"start": REQUIRED, "stop": None}, _bind_slice, params_doc="`stop` defaults to `cin`",
                      doc="channels `start:stop` (ShuffleNet v2's channel split)"),)))


@attrs_class
class PadAttrs(Attrs):
    padding: tuple            # ((top, bottom), (left, right))
    value: float


def _pad_geometry(a) -> tuple:
    return tuple(Affine(1, before + after) for before, after in a.padding)


def _pad_shape(a, ins):
    h, w, c = spatial("pad", ins[0])
    return tuple(g.out(n) for g, n in zip(_pad_geometry(a), (h, w))) + (c,)


def _bind_pad(a, ctx):
    ctx.spatial()
    return PadAttrs(ctx.explicit4(a["p"], "padding"), float(ctx.number(a["value"], "value")))


register(OpDef(
    "pad", PadAttrs, _pad_shape, macs=no_macs, geometry=_pad_geometry,
    surfaces=(Surface("pad", {"p": REQUIRED, "value": 0.0}, _bind_pad, params_doc="`p`: `n`, `[h, w]`, `[t, b, l, r]`",
                      doc="constant padding (Keras ZeroPadding2D)"),)))


@attrs_class
class CropAttrs(Attrs):
    crop: tuple               # ((top, bottom), (left, right))
    fit: tuple | None = None  # a merge's centre crop: the branches it crops to the smallest of


def _crop_geometry(a) -> tuple:
    # as resolved at the declared size; a merge's centre crop (fit) follows its branches instead
    return tuple(Affine(1, -(before + after)) for before, after in a.crop)


def _crop_shape(a, ins):
    h, w, c = spatial("crop", ins[0])
    out = tuple(g.out(n) for g, n in zip(_crop_geometry(a), (h, w)))
    if min(out) < 1:
        (t, b), (l, r) = a.crop
        raise ShapeError(f"cropping {t}+{b}, {l}+{r} leaves nothing of {fmt(ins[0])}")
    return out + (c,)


def _bind_crop(a, ctx):
    ctx.spatial()
    return CropAttrs(ctx.explicit4(a["p"], "crop"))


register(OpDef(
    "crop", CropAttrs, _crop_shape, macs=no_macs, geometry=_crop_geometry,
    surfaces=(Surface("crop", {"p": REQUIRED}, _bind_crop, params_doc="`p` as for pad", doc="cropping"),)))


@attrs_class
class UpsampleAttrs(Attrs):
    factor: tuple | None      # (fh, fw); None: to the size of the second input (upsample(size=@t))
    method: str               # 'nearest' | 'bilinear' (PyTorch's, align_corners=False)


def _upsample_geometry(a) -> tuple | None:
    # None: to the size of its second input (upsample(size=@t)), which compiler/sizes.py follows
    return None if a.factor is None else tuple(Affine(f, 0) for f in a.factor)


def _upsample_shape(a, ins):
    h, w, c = spatial("upsample", ins[0])
    if a.factor is None:
        th, tw, _ = spatial("upsample(size=…)'s target", ins[1])
        return (th, tw, c)
    return tuple(g.out(n) for g, n in zip(_upsample_geometry(a), (h, w))) + (c,)


def _bind_upsample(a, ctx):
    if a["mode"] not in ("nearest", "bilinear"):
        ctx.fail(f"upsample mode must be \"nearest\" or \"bilinear\", not {a['mode']!r}")
    if a["size"] is not None:
        # F.interpolate(x, size=other.shape[-2:]): the target's size at run time, not the declared one
        if a["f"] is not None:
            ctx.fail("upsample takes a factor f or a size=@tensor, not both")
        if len(a["size"]) != 1 or len(a["size"][0]) != 3:
            ctx.fail("upsample(size=…) takes one feature map HxWxC (@name), whose height and width it resizes to")
        return UpsampleAttrs(None, a["mode"])
    return UpsampleAttrs(ctx.pair(2 if a["f"] is None else a["f"], "factor"), a["mode"])


register(OpDef(
    "upsample", UpsampleAttrs, _upsample_shape, arity=(1, 2), macs=no_macs, profile_rank=9,
    geometry=_upsample_geometry,
    surfaces=(Surface("upsample", {"f": None, "mode": "nearest", "size": None}, _bind_upsample, tensors=("size",),
                      params_doc="`f`: factor (2); `size=@t`: to `t`'s height and width (F.interpolate(size=…): "
                                 "PyTorch's nearest index floor(dst · in / out)); `mode`: or `\"bilinear\"`",
                      doc="H·f × W·f, or t's H × W"),)))


# ---- merges: their positional arguments are branches, applied to the input ------------------
def _concat_shape(a, ins):
    first = ins[0]
    for s in ins[1:]:
        if len(s) != len(first) or tuple(s[:-1]) != tuple(first[:-1]):
            raise ShapeError(f"cannot concatenate {fmt(first)} and {fmt(s)}: sizes other than channels differ",
                             "give every branch the same stride and padding, or crop with concat(crop=true)")
    return tuple(first[:-1]) + (sum(s[-1] for s in ins),)


def _broadcast(opname):
    def rule(a, ins):
        out = ins[0]
        for s in ins[1:]:
            if len(s) != len(out):
                raise ShapeError(f"cannot {opname} {fmt(out)} and {fmt(s)}")
            merged = []
            for x, y in zip(out, s):
                if x != y and 1 not in (x, y):
                    raise ShapeError(f"cannot {opname} {fmt(out)} and {fmt(s)}",
                                     "residual branches must end with the input's size and channels; "
                                     "a projection shortcut (conv1 bn) can match them")
                merged.append(max(x, y))
            out = tuple(merged)
        return out
    return rule


@attrs_class
class ConcatAttrs(Attrs):
    crop: bool | None = None  # concat(crop=true): branches centre-cropped to the smallest (crop nodes)


def _bind_concat(a, ctx):
    # the crop nodes themselves are the front end's: they precede the concat in the graph
    return ConcatAttrs(True if a["crop"] else None)


def _bind_merge(a, ctx):
    return NoAttrs()


register(OpDef("concat", ConcatAttrs, _concat_shape, arity=(1, MANY), macs=no_macs, profile_rank=10,
               surfaces=(Surface("concat", {"crop": False}, _bind_concat, merge=True,
                                 params_doc="branches; `crop=true` centre-crops them to the smallest (U-Net)",
                                 doc="channels concatenated; other sizes must agree"),)))
register(OpDef("add", NoAttrs, _broadcast("add"), arity=(1, MANY), macs=no_macs, fusion="recomputed",
               profile_rank=11,
               surfaces=(Surface("add", {}, _bind_merge, merge=True, params_doc="branches", doc="elementwise sum, broadcasting size 1"),)))
register(OpDef("mul", NoAttrs, _broadcast("multiply"), arity=(1, MANY), macs=no_macs, fusion="elementwise",
               profile_rank=12,
               surfaces=(Surface("mul", {}, _bind_merge, merge=True, params_doc="branches",
                                 doc="elementwise product, broadcasting size 1 (squeeze-and-excitation)"),)))
