"""Elementwise ops: activations, constant scale, dropout and drop path, per-channel rescale and
layer scale, identity."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .base import REQUIRED, Attrs, NoAttrs, OpDef, Surface, Var, attrs_class, no_macs, register


def _same(a, ins):
    return ins[0]


@dataclass(frozen=True)
class Activation:
    """An activation function of the ``act`` op, everything the JAX-free passes know of it.

    ``alpha``: the default of its one parameter (None: it takes none); ``aliases``: other names
    of it in the language; ``grad_from``: what its derivative is computed from, 'input' or
    'output' (sigmoid's s·(1−s)): the tensor its backward pass reads (compiler/memory.py);
    ``transcendental``: XLA duplicates cheap elementwise ops into each reader but not
    transcendental ones, so their inner value (swish's sigmoid, GELU's erf) is written once in
    the forward pass and kept for the backward; ``flax_source``: the expression the Flax
    exporter writes (``{x}``, ``{alpha}``), with the helpers it ``uses``; ``numpy_ref(x, alpha)``:
    the float64 reference tests/test_lowering.py checks the lowering against. The lowering
    (compiler/lower.py ``ACTIVATION_FNS``) and the ONNX rules (compiler/onnx.py
    ``ACTIVATION_RULES``) need JAX and the ONNX emitter: they stay in their passes, in rule
    tables keyed by activation name that tests/test_registry.py holds to ``ACTIVATIONS``."""
    name: str
    numpy_ref: Callable
    flax_source: str
    alpha: float | None = None
    aliases: tuple = ()
    grad_from: str = "input"
    transcendental: bool = False
    uses: tuple = ()


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _softmax(x):
    z = np.exp(x - x.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


_erf = np.vectorize(math.erf)

ACTIVATIONS: dict[str, Activation] = {a.name: a for a in (
    Activation("relu", lambda x, _: np.maximum(x, 0), "jax.nn.relu({x})"),
    Activation("relu6", lambda x, _: np.clip(x, 0, 6), "relu6({x})", uses=("relu6",)),
    Activation("leaky_relu", lambda x, alpha: np.where(x > 0, x, alpha * x), "jax.nn.leaky_relu({x}, {alpha!r})",
               alpha=0.01),
    Activation("elu", lambda x, alpha: np.where(x > 0, x, alpha * (np.exp(x) - 1)), "jax.nn.elu({x}, {alpha!r})",
               alpha=1.0, transcendental=True),
    Activation("sigmoid", lambda x, _: _sigmoid(x), "jax.nn.sigmoid({x})", grad_from="output"),
    Activation("tanh", lambda x, _: np.tanh(x), "jnp.tanh({x})", grad_from="output"),
    Activation("swish", lambda x, _: x * _sigmoid(x), "jax.nn.silu({x})", aliases=("silu",), transcendental=True),
    Activation("hard_swish", lambda x, _: x * np.clip(x + 3, 0, 6) / 6, "jax.nn.hard_swish({x})",
               aliases=("hswish",)),
    Activation("hard_sigmoid", lambda x, _: np.clip(x + 3, 0, 6) / 6, "jax.nn.hard_sigmoid({x})",
               aliases=("hsigmoid",)),
    Activation("gelu", lambda x, _: 0.5 * x * (1 + _erf(x / np.sqrt(2))), "jax.nn.gelu({x}, approximate=False)",
               transcendental=True),
    Activation("gelu_tanh", lambda x, _: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3))),
               "jax.nn.gelu({x}, approximate=True)", transcendental=True),
    Activation("softmax", lambda x, _: _softmax(x), "jax.nn.softmax({x}, axis=-1)", grad_from="output"),
    Activation("softplus", lambda x, _: np.log1p(np.exp(x)), "jax.nn.softplus({x})", transcendental=True),
    Activation("mish", lambda x, _: x * np.tanh(np.log1p(np.exp(x))), "jax.nn.mish({x})", transcendental=True),
)}


def activation_names() -> set:
    """What a pass's table of activation rules must cover (``pass_rules(..., covers=activation_names)``)."""
    return set(ACTIVATIONS)


@attrs_class
class ActAttrs(Attrs):
    fn: str
    alpha: float | None = None    # leaky_relu's slope, elu's scale; None for the others


def _bind_act(a, ctx):
    fn, default = a["fn"], ACTIVATIONS[a["fn"]].alpha
    if default is not None:
        return ActAttrs(fn, float(ctx.number(a["alpha"] if a["alpha"] is not None else default, "alpha")))
    if a["alpha"] is not None:
        ctx.fail(f"{fn} takes no argument")
    return ActAttrs(fn)


register(OpDef(
    "act", ActAttrs, _same, macs=no_macs, fusion="recomputed", profile_rank=13,
    surfaces=(Surface("act", {"alpha": None, "fn": REQUIRED}, _bind_act,
                      {**{fn: {"fn": fn} for fn in ACTIVATIONS},
                       **{alias: {"fn": a.name} for a in ACTIVATIONS.values() for alias in a.aliases}},
                      params_doc="`alpha` for " + ", ".join(f"{a.name} (default {a.alpha:g})" for a in ACTIVATIONS.values()
                                                            if a.alpha is not None)
                      + "; aliases: " + ", ".join(f"`{alias}` = `{a.name}`" for a in ACTIVATIONS.values()
                                                  for alias in a.aliases),
                      doc="same", label_from="fn"),)))


@attrs_class
class ScaleAttrs(Attrs):
    value: float


register(OpDef(
    "scale", ScaleAttrs, _same, macs=no_macs, fusion="recomputed",
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
    "dropout", DropoutAttrs, _same, stochastic=True, macs=no_macs, fusion="elementwise",
    surfaces=(Surface("dropout", {"p": 0.5}, lambda a, ctx: DropoutAttrs(_rate(a, ctx, "dropout rate")),
                      doc="same; active in training only"),)))


@attrs_class
class DropPathAttrs(Attrs):
    rate: float


register(OpDef(
    "drop_path", DropPathAttrs, _same, stochastic=True, macs=no_macs, fusion="elementwise",
    surfaces=(Surface("drop_path", {"p": REQUIRED}, lambda a, ctx: DropPathAttrs(_rate(a, ctx, "drop-path rate")),
                      params_doc="`p`: the probability of dropping a sample's whole branch; a linear schedule over "
                                 "depth: `drop_path(rate * i / (n - 1))` in a repeat",
                      doc="same; stochastic depth (Huang et al. 2016): in training each sample is zeroed with "
                          "probability p, else scaled by 1/(1−p); the identity in inference"),)))


@attrs_class
class LayerScaleAttrs(Attrs):
    init: float


register(OpDef(
    "layer_scale", LayerScaleAttrs, _same, macs=no_macs, fusion="recomputed",
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
    "rescale", RescaleAttrs, _same, macs=no_macs, fusion="recomputed",
    surfaces=(Surface("rescale", {"scale": 1.0, "offset": 0.0}, _bind_rescale,
                      params_doc="numbers or per-channel lists", doc="same; x·scale + offset (Keras `Rescaling`)"),)))


register(OpDef(
    "identity", NoAttrs, _same, macs=no_macs, fusion="recomputed",
    # the surface op adds no node; hand-built graphs (and stage outputs) may hold identity nodes
    surfaces=(Surface("identity", {}, lambda a, ctx: None, doc="same"),)))
