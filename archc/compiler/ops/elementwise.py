"""Elementwise ops: activations, constant scale, dropout and drop path, per-channel rescale and
layer scale, identity."""
from __future__ import annotations

from .base import REQUIRED, Attrs, NoAttrs, OpDef, Surface, Var, attrs_class, register


def _same(a, ins):
    return ins[0]


# Activation functions by name, with the default of their one parameter where they have one.
ACTIVATIONS: dict[str, float | None] = {
    "relu": None, "relu6": None, "leaky_relu": 0.01, "elu": 1.0, "sigmoid": None, "tanh": None,
    "swish": None, "hard_swish": None, "hard_sigmoid": None, "gelu": None, "gelu_tanh": None,
    "softmax": None, "softplus": None, "mish": None,
}
_ACTIVATION_ALIASES = {"silu": "swish", "hswish": "hard_swish", "hsigmoid": "hard_sigmoid"}


@attrs_class
class ActAttrs(Attrs):
    fn: str
    alpha: float | None = None    # leaky_relu's slope, elu's scale; None for the others


def _bind_act(a, ctx):
    fn, default = a["fn"], ACTIVATIONS[a["fn"]]
    if default is not None:
        return ActAttrs(fn, float(ctx.number(a["alpha"] if a["alpha"] is not None else default, "alpha")))
    if a["alpha"] is not None:
        ctx.fail(f"{fn} takes no argument")
    return ActAttrs(fn)


register(OpDef(
    "act", ActAttrs, _same,
    surfaces=(Surface("act", {"alpha": None, "fn": REQUIRED}, _bind_act,
                      {**{fn: {"fn": fn} for fn in ACTIVATIONS},
                       **{alias: {"fn": fn} for alias, fn in _ACTIVATION_ALIASES.items()}},
                      params_doc="`alpha` for " + ", ".join(f"{fn} (default {d:g})" for fn, d in ACTIVATIONS.items() if d is not None)
                      + "; aliases: " + ", ".join(f"`{a}` = `{fn}`" for a, fn in _ACTIVATION_ALIASES.items()),
                      doc="same", label_from="fn"),)))


@attrs_class
class ScaleAttrs(Attrs):
    value: float


register(OpDef(
    "scale", ScaleAttrs, _same,
    surfaces=(Surface("scale", {"v": REQUIRED}, lambda a, ctx: ScaleAttrs(float(ctx.number(a["v"], "scale"))),
                      doc="multiply by a constant"),)))


@attrs_class
class DropoutAttrs(Attrs):
    rate: float


def _rate(a, ctx, what):
    p = ctx.number(a["p"], what)
    if not 0 <= p < 1:
        ctx.fail(f"{what} {p:g} is not in [0, 1)")
    return float(p)


register(OpDef(
    "dropout", DropoutAttrs, _same, stochastic=True,
    surfaces=(Surface("dropout", {"p": 0.5}, lambda a, ctx: DropoutAttrs(_rate(a, ctx, "dropout rate")),
                      doc="same; active in training only"),)))


@attrs_class
class DropPathAttrs(Attrs):
    rate: float


register(OpDef(
    "drop_path", DropPathAttrs, _same, stochastic=True,
    surfaces=(Surface("drop_path", {"p": REQUIRED}, lambda a, ctx: DropPathAttrs(_rate(a, ctx, "drop-path rate")),
                      params_doc="`p`: the probability of dropping a sample's whole branch; a linear schedule over "
                                 "depth: `drop_path(rate * i / (n - 1))` in a repeat",
                      doc="same; stochastic depth (Huang et al. 2016): in training each sample is zeroed with "
                          "probability p, else scaled by 1/(1−p); the identity in inference"),)))


@attrs_class
class LayerScaleAttrs(Attrs):
    init: float


register(OpDef(
    "layer_scale", LayerScaleAttrs, _same,
    variables=lambda a, ins: (Var("params", "scale", (ins[0][-1],), "constant", value=a.init),),
    # torchvision's CNBlock.layer_scale is (C, 1, 1), timm's gamma (C,): both fit the (C,) scale
    weights={"torch": {"layer_scale": "scale", "gamma": "scale", "weight": "scale"}},
    surfaces=(Surface("layer_scale", {"init": 1e-6},
                      lambda a, ctx: LayerScaleAttrs(float(ctx.number(a["init"], "init"))),
                      doc="same; a learned per-channel scale, initialised to `init` (CaiT, ConvNeXt)"),)))


@attrs_class
class RescaleAttrs(Attrs):
    scale: tuple              # per channel
    offset: tuple


def _bind_rescale(a, ctx):
    c = ctx.shape[-1]
    vals = []
    for key in ("scale", "offset"):
        v = a[key]
        v = list(v) if isinstance(v, (list, tuple)) else [v] * c
        if len(v) != c:
            ctx.fail(f"rescale {key} has {len(v)} values for {c} channels")
        vals.append(tuple(float(ctx.number(x, key)) for x in v))
    return RescaleAttrs(*vals)


register(OpDef(
    "rescale", RescaleAttrs, _same,
    surfaces=(Surface("rescale", {"scale": 1.0, "offset": 0.0}, _bind_rescale,
                      params_doc="numbers or per-channel lists", doc="same; x·scale + offset (Keras `Rescaling`)"),)))


register(OpDef(
    "identity", NoAttrs, _same,
    # the surface op adds no node; hand-built graphs (and stage outputs) may hold identity nodes
    surfaces=(Surface("identity", {}, lambda a, ctx: None, doc="same"),)))
