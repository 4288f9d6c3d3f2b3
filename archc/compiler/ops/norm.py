"""Normalisation layers: bn, lrn, l2norm (SSD), normalize (Keras Normalization), layernorm,
groupnorm (and instancenorm)."""
from __future__ import annotations

from .base import REQUIRED, Attrs, OpDef, ShapeError, Surface, Var, attrs_class, fmt, no_macs, register


def _same(a, ins):
    return ins[0]


@attrs_class
class BatchNormAttrs(Attrs):
    eps: float
    momentum: float           # the running-average decay (Flax/Keras); PyTorch's 0.1 is 0.9
    scale: bool
    center: bool


def _bind_bn(a, ctx):
    eps = ctx.number(a["eps"], "eps")
    mom = ctx.number(a["momentum"], "momentum")
    # eps 0 is allowed: torchvision's COCO Faster R-CNN ResNet-50 FPN ran its FrozenBatchNorm2d so
    if eps < 0 or not 0 <= mom < 1:
        ctx.fail("bn needs eps >= 0 and 0 <= momentum < 1 (the running-average decay: PyTorch momentum 0.1 is 0.9 here)")
    return BatchNormAttrs(float(eps), float(mom), bool(a["scale"]), bool(a["center"]))


def _bn_variables(a: BatchNormAttrs, ins):
    c = ins[0][-1]
    return ((Var("params", "scale", (c,), "ones"),) * a.scale + (Var("params", "bias", (c,), "zeros"),) * a.center
            + (Var("batch_stats", "mean", (c,), "zeros"), Var("batch_stats", "var", (c,), "ones")))


register(OpDef(
    "bn", BatchNormAttrs, _same, variables=_bn_variables, macs=no_macs, fusion="elementwise", profile_rank=7,
    weights={"torch": {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"},
             "keras": {"gamma": "scale", "beta": "bias", "moving_mean": "mean", "moving_variance": "var"}},
    checkpoint_kind="bn",
    surfaces=(Surface("bn", {"eps": 1e-5, "momentum": 0.9, "scale": True, "center": True}, _bind_bn,
                      params_doc="`momentum` is the running-average decay (Keras/Flax): PyTorch's momentum 0.1 is 0.9 here",
                      doc="same"),)))


@attrs_class
class LRNAttrs(Attrs):
    size: int
    alpha: float
    beta: float
    k: float


register(OpDef(
    "lrn", LRNAttrs, _same, macs=no_macs, profile_rank=6,
    surfaces=(Surface("lrn", {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 1.0},
                      lambda a, ctx: LRNAttrs(ctx.posint(a["size"], "size"), float(ctx.number(a["alpha"], "alpha")),
                                              float(ctx.number(a["beta"], "beta")), float(ctx.number(a["k"], "k"))),
                      doc="same; PyTorch's LocalResponseNorm formula"),)))


@attrs_class
class L2NormAttrs(Attrs):
    init: float
    eps: float


register(OpDef(
    "l2norm", L2NormAttrs, _same, macs=no_macs,
    variables=lambda a, ins: (Var("params", "scale", (ins[0][-1],), "constant", value=a.init),),
    # torchvision's SSD keeps the scale as its VGG backbone's parameter ``scale_weight``
    weights={"torch": {"weight": "scale", "scale_weight": "scale"}},
    surfaces=(Surface("l2norm", {"init": 20.0, "eps": 1e-12},
                      lambda a, ctx: L2NormAttrs(float(ctx.number(a["init"], "init")), float(ctx.number(a["eps"], "eps"))),
                      doc="same; x / ‖x‖₂ over channels times a learned per-channel scale (SSD)"),)))


@attrs_class
class NormalizeAttrs(Attrs):
    eps: float


def _normalize_variables(a, ins):
    c = ins[0][-1]
    return (Var("batch_stats", "mean", (c,), "zeros"), Var("batch_stats", "var", (c,), "ones"),
            Var("batch_stats", "count", (), "zeros"))


register(OpDef(
    "normalize", NormalizeAttrs, _same, variables=_normalize_variables, macs=no_macs, fusion="elementwise",
    profile_rank=8,
    weights={"keras": {"mean": "mean", "variance": "var", "count": "count"}},
    surfaces=(Surface("normalize", {"eps": 1e-7}, lambda a, ctx: NormalizeAttrs(float(ctx.number(a["eps"], "eps"))),
                      doc="same; Keras `Normalization`: (x − mean) / max(√var, eps) with non-trainable mean, variance and count"),)))


@attrs_class
class LayerNormAttrs(Attrs):
    eps: float


register(OpDef(
    "layernorm", LayerNormAttrs, _same, macs=no_macs,
    variables=lambda a, ins: (Var("params", "scale", (ins[0][-1],), "ones"), Var("params", "bias", (ins[0][-1],), "zeros")),
    weights={"torch": {"weight": "scale", "bias": "bias"}, "keras": {"gamma": "scale", "beta": "bias"}},
    surfaces=(Surface("layernorm", {"eps": 1e-6}, lambda a, ctx: LayerNormAttrs(_positive(ctx, a["eps"], "eps")),
                      doc="same; normalises over the channels at every position (ConvNeXt's LayerNorm2d; after a "
                          "flatten or global pool, over the features), biased variance, learned scale and bias"),)))


@attrs_class
class GroupNormAttrs(Attrs):
    groups: int
    eps: float
    affine: bool


def _groupnorm_shape(a: GroupNormAttrs, ins):
    c = ins[0][-1]
    if c % a.groups:
        raise ShapeError(f"groupnorm's {a.groups} groups do not divide the {c} channels of {fmt(ins[0])}",
                         f"choose a number of groups among the divisors of {c}")
    return ins[0]


def _groupnorm_variables(a: GroupNormAttrs, ins):
    c = ins[0][-1]
    return (Var("params", "scale", (c,), "ones"), Var("params", "bias", (c,), "zeros")) if a.affine else ()


def _bind_groupnorm(a, ctx, instance: bool):
    if instance:
        groups = ctx.spatial()[-1]
    else:
        groups = ctx.posint(a["g"], "groups")
    return GroupNormAttrs(groups, _positive(ctx, a["eps"], "eps"), bool(a["affine"]))


register(OpDef(
    "groupnorm", GroupNormAttrs, _groupnorm_shape, variables=_groupnorm_variables, macs=no_macs,
    weights={"torch": {"weight": "scale", "bias": "bias"}, "keras": {"gamma": "scale", "beta": "bias"}},
    surfaces=(Surface("groupnorm", {"g": REQUIRED, "eps": 1e-5, "affine": True},
                      lambda a, ctx: _bind_groupnorm(a, ctx, instance=False),
                      params_doc="`g`: groups, dividing the channels; `affine`: learned per-channel scale and bias",
                      doc="same; PyTorch `GroupNorm`: the channels in `g` groups, each normalised over its "
                          "channels and all positions, biased variance"),
              Surface("instancenorm", {"eps": 1e-5, "affine": False},
                      lambda a, ctx: _bind_groupnorm(a, ctx, instance=True),
                      params_doc="`affine` off by default, as PyTorch's `InstanceNorm2d`",
                      doc="same; groupnorm with one channel per group: each channel over its positions"),)))


def _positive(ctx, v, what) -> float:
    v = float(ctx.number(v, what))
    if v <= 0:
        ctx.fail(f"{what} must be positive, got {v:g}")
    return v
