"""Elementwise ops: activations, constant scale, dropout, per-channel rescale, identity."""
from __future__ import annotations

from .base import REQUIRED, Attrs, NoAttrs, OpDef, Surface, attrs_class, register


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


def _bind_dropout(a, ctx):
    p = ctx.number(a["p"], "dropout rate")
    if not 0 <= p < 1:
        ctx.fail(f"dropout rate {p} is not in [0, 1)")
    return DropoutAttrs(float(p))


register(OpDef(
    "dropout", DropoutAttrs, _same,
    surfaces=(Surface("dropout", {"p": 0.5}, _bind_dropout, doc="same; active in training only"),)))


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
