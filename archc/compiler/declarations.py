"""Declarations: what a network file states about itself besides its layers.

A declaration is a top-level statement that is one keyword call, e.g.

    preprocess(mode="caffe", resize="exact")

Its arguments are ordinary expressions of the value language, so family parameters and presets
set them like anything else (``param mode = "torch"`` … ``preprocess(mode=mode)``; ``archc.load(
"resnet50", mode="caffe")``). Each kind is a frozen dataclass registered here with
``@declaration``: its fields are its keyword arguments (the defaults are the fields' defaults),
and its ``bind(values, ctx)`` validates them with located errors and returns the instance. The
elaborated Graph carries them in ``graph.declarations`` (kind -> instance); the runtime reads them
from there (JAX-free here, as the op registry is).

Kinds registered elsewhere (the detection description, say) import ``declaration`` from here;
the compiler imports none of them: the ``archc`` package imports those modules as it loads, so
that every front end sees every kind.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

DECLARATIONS: dict = {}   # kind -> DeclarationDef


@dataclass(frozen=True)
class DeclarationDef:
    kind: str
    cls: type
    doc: str

    @property
    def signature(self) -> dict:
        """Keyword -> default (``dataclasses.MISSING`` where the argument is required)."""
        out = {}
        for f in dataclasses.fields(self.cls):
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                out[f.name] = f.default_factory()
            else:
                out[f.name] = dataclasses.MISSING
        return out


def declaration(kind: str, doc: str = "") -> Callable[[type], type]:
    """Register a frozen dataclass as the declaration ``kind(...)``. The class may define
    ``bind(cls, values: dict, ctx) -> instance`` (a classmethod) to validate and normalise; by
    default the values are taken as they are."""
    def deco(cls: type) -> type:
        if not dataclasses.is_dataclass(cls) or not cls.__dataclass_params__.frozen:
            raise TypeError(f"declaration {kind!r}: {cls.__name__} must be a frozen dataclass")
        if kind in DECLARATIONS:
            raise ValueError(f"declaration {kind!r} is registered twice")
        DECLARATIONS[kind] = DeclarationDef(kind, cls, doc or (cls.__doc__ or "").strip())
        return cls
    return deco


def is_declaration(kind: str) -> bool:
    return kind in DECLARATIONS


class DeclarationContext:
    """What a declaration's ``bind`` sees: located failures per argument, value checks, and the
    tensors of the network so far (``tensor`` turns a ``@name`` value into its node's name)."""

    def __init__(self, kind: str, fail: Callable, spans: dict, span, lookup_tensor: Callable):
        self.kind, self._fail, self._spans, self.span = kind, fail, spans, span
        self._lookup = lookup_tensor

    def fail(self, argument: str | None, message: str, hint: str | None = None):
        """Raise a located error at ``argument``'s value (or the whole call when None)."""
        self._fail(message, self._spans.get(argument, self.span), hint)

    def number(self, name: str, v, *, low=None, high=None, integer=False):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
            self.fail(name, f"{self.kind}(): '{name}' must be {'an integer' if integer else 'a number'}, not {v!r}")
        if low is not None and v < low or high is not None and v > high:
            bounds = f"at least {low}" if high is None else f"at most {high}" if low is None else f"in [{low}, {high}]"
            self.fail(name, f"{self.kind}(): '{name}' must be {bounds}, not {v!r}")
        return v

    def choice(self, name: str, v, choices):
        if v not in choices:
            self.fail(name, f"{self.kind}(): '{name}' is one of {', '.join(map(repr, choices))}, not {v!r}")
        return v

    def numbers(self, name: str, v, length: int | None = None):
        if not isinstance(v, (list, tuple)) or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in v):
            self.fail(name, f"{self.kind}(): '{name}' must be a list of numbers, not {v!r}")
        if length is not None and len(v) != length:
            self.fail(name, f"{self.kind}(): '{name}' needs {length} numbers, got {len(v)}")
        return tuple(v)

    def tensor(self, name: str, v) -> str:
        """The node name of a ``@tensor`` argument."""
        node = self._lookup(name, v)
        if node is None:
            self.fail(name, f"{self.kind}(): '{name}' must be a tensor such as @features, not {v!r}")
        return node


def bind(kind: str, values: dict, ctx: DeclarationContext):
    """Fill defaults, check that every required keyword is there, and let the kind validate."""
    d = DECLARATIONS[kind]
    sig = d.signature
    full = {}
    for name, default in sig.items():
        if name in values:
            full[name] = values[name]
        elif default is dataclasses.MISSING:
            ctx.fail(None, f"{kind}() needs '{name}'", f"e.g. {kind}({name}=…)")
        else:
            full[name] = default
    binder = getattr(d.cls, "bind", None)
    return binder(full, ctx) if binder is not None else d.cls(**full)


class DeclarationError(ValueError):
    """Declaration values given outside a spec (a Python call, a CLI flag) that do not check."""


def bind_values(kind: str, values: dict):
    """``bind`` for values that come from Python or the command line, not from a spec: the same
    defaults and checks, failures raised as :class:`DeclarationError` (no source position).
    Tensor arguments cannot be named here."""
    unknown = sorted(set(values) - set(DECLARATIONS[kind].signature))
    if unknown:
        raise DeclarationError(f"{kind}(): no argument {', '.join(map(repr, unknown))}; "
                               f"the arguments are {', '.join(DECLARATIONS[kind].signature)}")

    def fail(message, span, hint=None):
        raise DeclarationError(message + (f" ({hint})" if hint else ""))

    return bind(kind, values, DeclarationContext(kind, fail, {}, None, lambda name, v: None))


def redirect_tensors(decl: Any, redirect: dict) -> Any:
    """The declaration with the node names it holds renamed (a pass that removes a node, such as
    BN folding, maps it to the node that now computes its value). A kind that names tensors
    lists them in a ``tensors()`` method and renames them in ``renamed(redirect)``."""
    if not any(n in redirect for n in getattr(decl, "tensors", lambda: ())()):
        return decl
    return decl.renamed(redirect)


def to_json(decl: Any) -> dict:
    return {f.name: _plain(getattr(decl, f.name)) for f in dataclasses.fields(decl)}


def _plain(v):
    if dataclasses.is_dataclass(v):
        return to_json(v)
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


# ---------------------------------------------------------------------------------------------
# preprocess: the input pipeline a network's weights expect
# ---------------------------------------------------------------------------------------------
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)     # RGB, [0, 1] units
# The normalisation modes and their statistics in [0, 1] units, x = (pixel / 255 - mean) / std
# (runtime/pipeline.py applies them).
PREPROCESS_STATISTICS: dict[str, tuple] = {
    "torch": (IMAGENET_MEAN, IMAGENET_STD),
    "inception": ((0.5,), (0.5,)),
    "tf": ((0.5,), (0.5,)),
    "caffe": ((103.939 / 255, 116.779 / 255, 123.68 / 255), (1.0 / 255.0,)),   # BGR order
    "none": ((0.0,), (1.0 / 255.0,)),
    "unit": ((0.0,), (1.0,)),
}
PREPROCESS_MODES = tuple(PREPROCESS_STATISTICS)


@declaration("preprocess")
@dataclass(frozen=True)
class Preprocess:
    """The input pipeline the network's weights expect (runtime/predict.py applies it):
    ``mode`` the normalisation (torch: /255 then ImageNet mean/std; inception: mean = std = 0.5;
    tf: [-1, 1]; caffe: RGB -> BGR minus the ImageNet BGR mean; none: 0-255 as is; unit: [0, 1]),
    ``mean``/``std`` per-channel statistics in [0, 1] units that replace the mode's (``archc train
    --normalize M1,M2,M3/S1,S2,S3`` records them), ``resize``
    the shorter side before the centre crop, scaled with the input size (or "exact": straight to
    the input size, as Keras's ``load_img(target_size=…)``), ``crop`` the size that ``resize``
    is relative to (224: resize 256 keeps 87.5 %), ``interpolation`` bilinear, bicubic or nearest."""
    mode: str = "torch"
    resize: Any = 256
    crop: int = 224
    interpolation: str = "bilinear"
    mean: Any = None
    std: Any = None

    @classmethod
    def bind(cls, v: dict, ctx: DeclarationContext) -> "Preprocess":
        ctx.choice("mode", v["mode"], PREPROCESS_MODES)
        for name in ("mean", "std"):
            if v[name] is not None:
                v[name] = ctx.numbers(name, v[name])
                if len(v[name]) not in (1, 3) or (name == "std" and min(v[name]) <= 0):
                    ctx.fail(name, f"preprocess(): '{name}' is 1 or 3 numbers"
                                   + (", each positive" if name == "std" else "") + f", not {list(v[name])}")
        if v["resize"] != "exact":
            ctx.number("resize", v["resize"], low=1, integer=True)
        ctx.number("crop", v["crop"], low=1, integer=True)
        ctx.choice("interpolation", v["interpolation"], ("bilinear", "bicubic", "nearest"))
        return cls(**v)


# ---------------------------------------------------------------------------------------------
# init: how Model.init draws the variables
# ---------------------------------------------------------------------------------------------
# name -> (base distribution, the variance it scales to) of a conv or dense kernel; fan_in and
# fan_out count as torch and Keras do (receptive field x input or output channels)
KERNEL_INITS = {
    "lecun_normal": "truncated normal, variance 1/fan_in (Flax's default; archc's without init(...))",
    "he_normal": "truncated normal, variance 2/fan_in (jax.nn.initializers.he_normal, Keras's HeNormal)",
    "he_normal_fan_out": "normal, variance 2/fan_out (torch's kaiming_normal_(mode='fan_out', "
                         "nonlinearity='relu'): torchvision's ResNet, VGG, MobileNet convs)",
    "glorot_uniform": "uniform, variance 2/(fan_in + fan_out) (Keras's default)",
    "torch_default": "uniform in ±1/sqrt(fan_in) (torch's own default for nn.Conv2d and nn.Linear)",
}


@declaration("init")
@dataclass(frozen=True)
class Init:
    """How ``Model.init`` draws a network's variables: ``conv`` the kernels of convolutions
    (transposed and depthwise included), ``dense`` those of dense layers, each one of
    KERNEL_INITS; ``zero_init_residual`` starts the scale of each batch norm that ends a
    residual branch (the last operand of an add: residual<…>'s body) at 0, so that each
    residual block begins as the identity (torchvision's ``zero_init_residual=True``).
    Biases and BN shifts start at 0, BN scales at 1."""
    conv: str = "lecun_normal"
    dense: str = "lecun_normal"
    zero_init_residual: bool = False

    @classmethod
    def bind(cls, v: dict, ctx: DeclarationContext) -> "Init":
        ctx.choice("conv", v["conv"], tuple(KERNEL_INITS))
        ctx.choice("dense", v["dense"], tuple(KERNEL_INITS))
        if not isinstance(v["zero_init_residual"], bool):
            ctx.fail("zero_init_residual", f"init(): 'zero_init_residual' is true or false, not {v['zero_init_residual']!r}")
        return cls(**v)
