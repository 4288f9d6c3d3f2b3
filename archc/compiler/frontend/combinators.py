"""The language's structural combinators (not IR ops), registered like ops: each its name, its
signature and how it applies to a tensor. `residual<body>` adds a shortcut (a projection where
the body changes the shape), `dense<body>` concatenates its input with the body's output
(DenseNet's connectivity), `like(@stage)` replays an earlier stage's layers with its variables.
Every other surface op, its spellings and signature, comes from the op registry (compiler/ops)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ...spec import ast as A
from ...spec.source import Span
from ..ops import REQUIRED, NoAttrs
from ..ops.elementwise import ScaleAttrs
from ..ops.layout import ConcatAttrs
from .values import Env, OpLayer, RefLayer, Thunk, as_number, fail


@dataclass(frozen=True)
class Combinator:
    """``apply(elaborator, layer, args, t) -> output tensor``: its nodes on the tensor ``t``,
    ``args`` its arguments by name (a <body> under 'body')."""
    name: str
    signature: dict[str, Any]
    apply: Callable = field(repr=False)


COMBINATORS: dict[str, Combinator] = {}


def combinator(name: str, **signature):
    """Register the decorated function as the combinator `name` with this signature (parameters
    in positional order with their defaults; REQUIRED: must be given)."""
    def register(apply: Callable) -> Callable:
        assert name not in COMBINATORS, name
        COMBINATORS[name] = Combinator(name, signature, apply)
        return apply
    return register


def _with_body(build: Callable) -> Callable:
    """A combinator of a <body>: the body is required, and the nodes go in a unit of their own
    (a stage's numbered instance; outside a stage, the enclosing scope)."""
    def apply(el, v: OpLayer, args: dict, t: str) -> str:
        body = args.get("body")
        if body is None:
            fail(f"{v.kind} needs a body: {v.kind}<layers>", v.span)
        opened = el.b.push_unit(v.kind, v.span)
        out = None
        try:
            out = build(el, v, args, el.apply(body, t, v.span), t)
            return out
        finally:
            if opened:
                el.b.pop(out)
    return apply


@combinator("residual", proj=None, shortcut=None, scale=1.0)
@_with_body
def residual(el, v: OpLayer, a: dict, y: str, t: str) -> str:
    """The body's output `y` (scaled by `scale`) added to the input, through `shortcut` or, where
    the body changes the shape, the projection `proj` (default: conv1 bn)."""
    sx, sy = el.b.shape(t), el.b.shape(y)
    shortcut = a["shortcut"]
    if shortcut is None and sx != sy:
        # the default 'conv1 bn' means what conv and bn mean where residual was written
        shortcut = a["proj"] if a["proj"] is not None else _default_projection(v.env or Env(), v.span)
    if shortcut is not None:
        el.b.push("shortcut", v.span, exact=False)
        saved = el.b.target, el.b.target_node
        el.b.target, el.b.target_node = sy, y
        try:
            s = el.apply(shortcut, t, v.span)
        finally:
            el.b.target, el.b.target_node = saved
            el.b.pop()
    else:
        s = t
    factor = as_number(a["scale"], "scale", v.span)
    if factor != 1:
        y = el.b.add("scale", [y], ScaleAttrs(float(factor)), v.span, "scale")
    out = el.b.add("add", [s, y], NoAttrs(), v.span, "add")
    if a["shortcut"] is None and s == t:
        # an identity shortcut because the body kept the size here: at another input
        # size the body may not, and a projection would appear (compiler/sizes.py)
        el.b.g.size_choices[out] = v.span
    return out


@combinator("dense")
@_with_body
def densenet_concat(el, v: OpLayer, a: dict, y: str, t: str) -> str:
    """DenseNet's connectivity: the input and the body's output `y`, concatenated."""
    return el.b.add("concat", [t, y], ConcatAttrs(), v.span, "concat")


@combinator("like", stage=REQUIRED)
def like(el, v: OpLayer, a: dict, t: str) -> str:
    """``like(@stage)``: the layers of an earlier stage again, on this input, with that
    stage's variables (weight sharing: torchvision's RPN head runs on every FPN level). The
    stage must read one tensor from outside itself."""
    ref = a["stage"]
    if not isinstance(ref, RefLayer):
        fail("like() takes a stage, as @name", v.span, "e.g. rpn1: @p1 like(@rpn0)")
    out = el.lookup_tensor(ref.name, ref.span, ref.frame)
    g = el.b.g
    label = next((k for k, n in g.aliases.items() if n == out and k.split(".")[-1] == ref.name), None)
    if label is None:
        fail(f"'{ref.name}' is not a stage (a labelled line such as '{ref.name}: conv3(64) relu')", ref.span)
    members = [n for n in g if n.name.startswith(label + ".")]
    inside = {n.name for n in members}
    outside = {i for n in members for i in n.inputs if i not in inside}
    if len(outside) != 1 or not members:
        fail(f"like(@{ref.name}) replays a stage that reads one tensor; '{ref.name}' reads {len(outside)}",
             v.span, "split the stage so that it starts from one input")
    mapped = {outside.pop(): t}
    for n in members:
        prefix = n.name.rsplit(".", 1)[-1].rstrip("0123456789") or n.op
        name = el.b.add(n.op, [mapped[i] for i in n.inputs], n.attrs, v.span, prefix)
        g.nodes[name].shares = n.shares or n.name
        mapped[n.name] = name
    return mapped[out]


def _default_projection(env: Env, span: Span) -> Thunk:
    """The default projection shortcut, 'conv1 bn' (torchvision's downsample), resolved in the
    environment where residual was written, and written (for its nodes and errors) where the
    residual is."""
    return Thunk(A.Seq(span, (A.Name(span, "conv1"), A.Name(span, "bn"))), env, span)
