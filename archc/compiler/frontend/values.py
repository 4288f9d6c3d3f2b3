"""The values of the language and their checks: the layers a name or call evaluates to (an op
with its arguments, a block call, a sequence kept as syntax, a repetition, a tensor reference, a
network used as a part), functions, the environments that bind names, the built-in value
functions, sizes that remember they came from the input (SizeInt), how a value is described in an
error, and the located failure (`fail`) that every part of the front end raises."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ...spec import ast as A
from ...spec.source import Diagnostic, Span
from ..resolve import Part


class Fail(Exception):
    """A user error at a place; carries its diagnostic up to the statement that reports it. A
    failure without a diagnostic is the echo of one already reported (a use of a name whose
    definition failed): it stops its statement silently."""

    def __init__(self, diag: Diagnostic | None, cascades: bool = False):
        self.diag = diag
        # a shape error cascades: every later layer's shape is unknown, so the statements after
        # it are not elaborated; other errors are independent of shapes
        self.cascades = cascades


class FailedValue:
    """The value of a top-level name whose definition failed (and was reported): using it
    stops the statement without a second error, so one mistake gives one error."""


def fail(message: str, span: Span | None, hint: str | None = None, cascades: bool = False):
    raise Fail(Diagnostic(message, span, hint), cascades)


# ---------------------------------------------------------------------------------------------
# Layers, functions and environments
# ---------------------------------------------------------------------------------------------
class Layer:
    """A value that maps a tensor to a tensor."""
    span: Span


@dataclass
class OpLayer(Layer):
    kind: str                 # surface op name after alias resolution, e.g. 'conv', 'maxpool'
    args: tuple               # positional values
    kwargs: dict
    span: Span
    label: str                # naming prefix, e.g. 'conv', 'dwconv', 'maxpool'
    env: Any = None           # where it was written: residual's default projection resolves there


@dataclass
class BlockLayer(Layer):
    block: "Block"
    args: tuple
    kwargs: dict
    body: Any                 # a Layer from name(...)<body>, or None
    span: Span
    env: Any = None           # its parameters, bound once at the call


@dataclass
class Thunk(Layer):
    """A sequence kept as syntax: evaluated when applied, so `i` and `cin` bind at each use."""
    seq: A.Seq
    env: "Env"
    span: Span


@dataclass
class Repeat(Layer):
    item: Any                 # AST of the repeated item
    env: "Env"
    count: int
    span: Span


@dataclass
class RefLayer(Layer):
    """@name. Tensor names are lexically scoped: a reference resolves in the frame where it was
    written, so a tensor passed to a block (cell(@prev, 44)) is the caller's."""
    name: str
    span: Span
    frame: Any = None


@dataclass
class Block(Layer):
    name: str
    params: tuple             # ParamDecl
    body: tuple               # statements
    env: "Env"                # lexical environment (its module)
    span: Span


@dataclass
class PartLayer(Layer):
    """A network used like a block: `trunk: resnet18(until=layer4)`. Its family parameters are
    bound where it is applied, its stages up to `until` (all, head included, when None) kept."""
    part: Part
    kwargs: dict              # family parameter -> value
    until: str | None
    span: Span


@dataclass
class Function:
    name: str
    params: tuple
    body: Any
    env: "Env"
    span: Span


class Env:
    __slots__ = ("vars", "parent")

    def __init__(self, parent: "Env | None" = None, vars: dict | None = None):
        self.vars = vars if vars is not None else {}
        self.parent = parent

    def lookup(self, name: str):
        env = self
        while env is not None:
            if name in env.vars:
                return True, env.vars[name]
            env = env.parent
        return False, None

    def names(self):
        out, env = set(), self
        while env is not None:
            out.update(env.vars)
            env = env.parent
        return out

    def child(self, **vars) -> "Env":
        return Env(self, dict(vars))


# ---------------------------------------------------------------------------------------------
# Built-in value functions. Each is total over its documented inputs; type errors are reported.
# ---------------------------------------------------------------------------------------------
def _make_divisible(v, divisor=8, min_value=None):
    # The rounding shared by the TF MobileNet/EfficientNet code, torchvision and timm.
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class SizeInt(int):
    """hin / win and what arithmetic makes of them: an int that remembers it came from the
    input size, so that the elaborator can note where such a value decides a layer."""

    def __repr__(self):
        return int.__repr__(self)


def _sized_op(name):
    base = getattr(int, name)

    def op(self, *other):
        v = base(self, *other)
        return SizeInt(v) if type(v) is int else v
    return op


for _name in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__floordiv__",
              "__rfloordiv__", "__mod__", "__rmod__", "__neg__", "__pos__", "__abs__", "__pow__"):
    setattr(SizeInt, _name, _sized_op(_name))


def is_sized(v) -> bool:
    if isinstance(v, (list, tuple)):
        return any(is_sized(x) for x in v)
    return isinstance(v, SizeInt)


def taint(result, args):
    return SizeInt(result) if type(result) is int and any(is_sized(a) for a in args) else result


def _list(xs) -> list:
    if not isinstance(xs, list):
        raise TypeError(f"expects a list, not {describe(xs)}")
    return xs


def _log(x, base=math.e):
    for v in (x, base):
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v <= 0:
            raise ValueError(f"the logarithm is defined for positive numbers, not {v:g}")
    if base == 1:
        raise ValueError("a logarithm's base cannot be 1")
    return math.log(x, base)


def _unique(xs):
    # first occurrences in order (RegNet's stage widths); by equality, so lists of lists work too
    out = []
    for x in _list(xs):
        if x not in out:
            out.append(x)
    return out


FUNCTIONS = {
    "min": min, "max": max, "abs": abs, "len": len, "int": int, "float": float,
    "round": round, "ceil": lambda x: int(math.ceil(x)), "floor": lambda x: int(math.floor(x)),
    "sqrt": math.sqrt, "log": _log, "sum": sum, "make_divisible": _make_divisible,
    "range": lambda *a: list(range(*a)),
    "unique": _unique, "count": lambda xs, v: _list(xs).count(v),
}


# ---------------------------------------------------------------------------------------------
# Describing and checking values
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Override:
    """A family parameter's value given by the caller (--param, Python): a value used as it is,
    or an expression (`expr`, read from a string) evaluated where the parameter is declared.
    `flag` and `text` are how the caller wrote it, for its errors."""
    value: Any
    name: str = ""
    text: str = ""
    flag: str = ""            # '--param ' from the command line, '' from Python
    expr: Any = None

    def label(self, value=None) -> str:
        """'--param classes=ten' or "classes='ten'" (with `value` instead of what was given)."""
        shown = self.text if value is None else str(plain(value))
        return f"{self.flag}{self.name}={shown}"

    @property
    def shown(self) -> str:
        """The given text, described: the name 'ten' (command line), the string 'ten' (Python)."""
        return f"the name '{self.expr.id}'" if self.flag else describe(self.value)


def plain(v):
    """A parameter value as JSON-able data (graph.params): layers and functions by their kind."""
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    if isinstance(v, list):
        return [plain(x) for x in v]
    return describe(v)


def describe(v) -> str:
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return f"the number {v}"
    if isinstance(v, float):
        return f"the number {v:g}"
    if isinstance(v, str):
        return f"the string {v!r}"
    if v is None:
        return "none"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, tuple):
        return f"the size {'x'.join(map(str, v))}"
    if isinstance(v, (Layer, Block)):
        return "a layer"
    if isinstance(v, Function):
        return "a function"
    return type(v).__name__


def hwc(shape):
    if len(shape) == 3:
        return shape
    return (1, 1, shape[-1])


def as_int(v, what, span):
    if isinstance(v, bool) or not isinstance(v, int):
        fail(f"{what} must be an integer, not {describe(v)}", span)
    return v


def as_posint(v, what, span):
    as_int(v, what, span)
    if v < 1:
        fail(f"{what} must be positive, got {v}", span)
    if v > 1 << 24:
        fail(f"{what} {v} is implausibly large", span)
    return v


def as_number(v, what, span):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        fail(f"{what} must be a number, not {describe(v)}", span)
    if v != v or v in (float("inf"), float("-inf")):
        fail(f"{what} must be finite", span)
    return v


def as_pair(v, what, span, allow_zero=False):
    if isinstance(v, (list, tuple)):
        if len(v) != 2:
            fail(f"{what} needs 1 or 2 values, got {len(v)}", span)
        vals = tuple(v)
    else:
        vals = (v, v)
    for x in vals:
        as_int(x, what, span)
        if x < (0 if allow_zero else 1) or x > 1 << 16:
            fail(f"{what} {x} is out of range", span)
    return vals


def as_explicit4(p, what, span):
    """int, [ph, pw], [t, b, l, r] or [[t, b], [l, r]] → ((t, b), (l, r))."""
    if isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(x, (list, tuple)) for x in p):
        vals = (p[0][0], p[0][1], p[1][0], p[1][1]) if all(len(x) == 2 for x in p) else None
    elif isinstance(p, (list, tuple)) and len(p) == 4:
        vals = tuple(p)
    elif isinstance(p, (list, tuple)) and len(p) == 2:
        vals = (p[0], p[0], p[1], p[1])
    elif isinstance(p, (list, tuple)):
        vals = None
    else:
        vals = (p, p, p, p)
    if vals is None:
        fail(f"{what} must be n, [h, w], [top, bottom, left, right] or [[t, b], [l, r]]", span)
    for x in vals:
        as_int(x, what, span)
        if x < 0 or x > 1 << 16:
            fail(f"{what} {x} is out of range", span)
    return ((vals[0], vals[1]), (vals[2], vals[3]))
