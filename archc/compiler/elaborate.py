"""Elaboration: AST → IR.

One walk over the statements evaluates the value language (integers, lists, block calls, family
parameters), expands repetition, blocks and combinators, names every node by its place in the spec,
binds each surface op to its IR op's attributes (compiler/ops: one definition per op), and infers each
node's shape with the op's rule as the node is created. Shape-dependent
defaults (`cin`, inferred channels of a projection shortcut, TF-'same' padding) need the shapes
while expanding, which is why expansion and shape inference share this walk; later passes
(stats, folding, lowering) are separate pure functions of the finished Graph.
"""
from __future__ import annotations

import contextlib

import math
from dataclasses import dataclass, field
from typing import Any

from ..spec import ast as A
from ..spec.source import ArchError, Diagnostic, Span
from ..spec.source import suggest as _suggest
from . import declarations, library, ops
from .ir import Graph, Node
from .ops import NoAttrs, ShapeError, fmt
from .ops.elementwise import ScaleAttrs
from .ops.conv import inferred_stride, projection_fix
from .ops.layout import ConcatAttrs, CropAttrs, InputAttrs
from .resolve import Module, Part, Unresolved

MAX_NODES = 100_000   # the largest built-in has ~3,000; generous for generated networks
MAX_REPEAT = 100_000


class _Fail(Exception):
    """A user error at a place; carries its diagnostic up to the statement that reports it. A
    failure without a diagnostic is the echo of one already reported (a use of a name whose
    definition failed): it stops its statement silently."""

    def __init__(self, diag: Diagnostic | None, cascades: bool = False):
        self.diag = diag
        # a shape error cascades: every later layer's shape is unknown, so the statements after
        # it are not elaborated; other errors are independent of shapes
        self.cascades = cascades


class _Failed:
    """The value of a top-level name whose definition failed (and was reported): using it
    stops the statement without a second error, so one mistake gives one error."""


def fail(message: str, span: Span | None, hint: str | None = None, cascades: bool = False):
    raise _Fail(Diagnostic(message, span, hint), cascades)


# ---------------------------------------------------------------------------------------------
# Values
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


# Built-in value functions. Each is total over its documented inputs; type errors are reported.
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


def _is_sized(v) -> bool:
    if isinstance(v, (list, tuple)):
        return any(_is_sized(x) for x in v)
    return isinstance(v, SizeInt)


def _taint(result, args):
    return SizeInt(result) if type(result) is int and any(_is_sized(a) for a in args) else result


def _list(xs) -> list:
    if not isinstance(xs, list):
        raise TypeError(f"expects a list, not {_kind(xs)}")
    return xs


def _log(x, base=math.e):
    for v in (x, base):
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v <= 0:
            raise ValueError(f"the logarithm is defined for positive numbers, not {v:g}")
    if base == 1:
        raise ValueError("a logarithm's base cannot be 1")
    return math.log(x, base)


def counted(prefix: str, n: int) -> str:
    """The n-th node or block instance named after ``prefix``: relu3, but relu6_1 (a prefix
    that ends in a digit takes a separator, so that the counter reads as one)."""
    return f"{prefix}_{n}" if prefix[-1:].isdigit() else f"{prefix}{n}"


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

# The language's structural combinators (not IR ops): their signatures. Every other surface op,
# its spellings and signature, comes from the op registry (compiler/ops).
COMBINATORS: dict[str, dict[str, Any]] = {"residual": {"proj": None, "shortcut": None, "scale": 1.0}, "dense": {},
                                          "like": {"stage": ...}}


def signature(kind: str) -> dict:
    return COMBINATORS[kind] if kind in COMBINATORS else ops.SURFACES[kind][0].signature


def _is_merge(kind: str) -> bool:
    return kind in ops.SURFACES and ops.SURFACES[kind][0].merge


# Every spelling -> (surface kind, preset arguments, naming label, whether it is a kernel-size
# alias that follows a rebinding of its base op).
SPELLINGS = {name: (kind, preset, ops.SURFACES[kind][0].label(preset), ops.SURFACES[kind][0].rebinds(preset))
              for name, (kind, preset) in ops.SPELLINGS.items()}
SPELLINGS.update({name: (name, {}, name, False) for name in COMBINATORS})


# ---------------------------------------------------------------------------------------------
# Builder state
# ---------------------------------------------------------------------------------------------
@dataclass
class Frame:
    """Named tensors visible in a block body or the program."""
    tensors: dict
    input: str | None
    prev: str | None = None   # @prev: the input of the last block instance applied in this frame
    parts: dict = field(default_factory=dict)   # a stage's label -> the path of the part it holds


@dataclass
class Scope:
    path: str
    counters: dict = field(default_factory=dict)
    stage: bool = False       # number block instances 0, 1, 2 … (a named stage of the program)
    inline_single: bool = False
    unit: bool = False        # one numbered instance of a stage (its output is kept: @part.stage.N)


class Builder:
    def __init__(self, graph: Graph):
        self.g = graph
        self.scopes: list[Scope] = [Scope("")]
        self.used_scopes: set = set()
        self.target: tuple | None = None  # shape a projection shortcut must produce
        self.target_node: str | None = None   # the node that has it (the residual body's output)
        self.call_stack: list[tuple[str, Span]] = []
        self.unit_outputs: dict = {}      # path of a stage's numbered unit -> its output

    # ---- naming ----
    @property
    def scope(self) -> Scope:
        return self.scopes[-1]

    def _join(self, part: str) -> str:
        return f"{self.scope.path}.{part}" if self.scope.path else part

    def fresh(self, prefix: str) -> str:
        counters = self.scope.counters
        while True:
            counters[prefix] = counters.get(prefix, 0) + 1
            name = self._join(counted(prefix, counters[prefix]))
            if name not in self.g.nodes and name not in self.used_scopes:
                return name

    def push(self, part: str, span: Span | None, stage: bool = False, exact: bool = True) -> None:
        path = self._join(part)
        if exact and (path in self.used_scopes or path in self.g.nodes):
            fail(f"the name '{path}' is used twice", span, "give this statement another name")
        self.used_scopes.add(path)
        self.scopes.append(Scope(path, stage=stage))

    def push_unit(self, blockname: str, span: Span) -> bool:
        """Open the scope of one block/combinator instance; False when it shares its parent's."""
        sc = self.scope
        if sc.inline_single:
            # The stage's only block takes the stage's name; blocks inside it are named as in
            # any block body (se1, inner1), so continue with a non-stage scope on the same path.
            sc.inline_single = False
            self.scopes.append(Scope(sc.path, sc.counters))
            return True
        if sc.stage:
            idx = sc.counters.get("#", 0)
            sc.counters["#"] = idx + 1
            self.push(str(idx), span)
            self.scope.unit = True
            return True
        if blockname in COMBINATORS:
            return False
        name = self.fresh(blockname)
        self.used_scopes.add(name)
        self.scopes.append(Scope(name))
        return True

    def pop(self, out: str | None = None) -> None:
        """Close a scope; `out`: the output of the unit it held, when it succeeded."""
        sc = self.scopes.pop()
        if sc.unit and out is not None:
            self.unit_outputs[sc.path] = out

    # ---- nodes ----
    def add(self, op: str, inputs: list, attrs: dict, span: Span, prefix: str | None = None,
            name: str | None = None) -> str:
        """A new node, shape-checked; named `name`, else numbered after `prefix` (default: op)."""
        in_shapes = [self.g.nodes[i].shape for i in inputs]
        try:
            shape = ops.infer_shape(op, attrs, in_shapes)
        except ShapeError as e:
            fail(str(e), span, e.hint, cascades=True)
        if len(self.g.nodes) >= MAX_NODES:
            fail(f"the network has more than {MAX_NODES} nodes", span, "reduce the repetition counts")
        name = name or self.fresh(prefix or op)
        self.g.nodes[name] = Node(name, op, tuple(inputs), attrs, shape, span)
        return name

    def shape(self, t: str) -> tuple:
        return self.g.nodes[t].shape


# ---------------------------------------------------------------------------------------------
# The evaluator
# ---------------------------------------------------------------------------------------------
class Elaborator:
    def __init__(self, graph: Graph):
        self.b = Builder(graph)
        self.frames: list[Frame] = []
        self.module_envs: dict[Module, Env] = {}   # what each imported module defines
        self.home: set | None = None   # the user's files (run_program): errors are reported there
        self.exports: list = []        # the named tensors of each part applied, for @label.stage
        self.inherited: set = set()    # declarations a part brought, which the user's file may replace

    # ---- value evaluation ----
    def value(self, e, env: Env):
        kind = type(e)
        if kind is A.Const:
            return e.value
        if kind is A.Name:
            return self.resolve(e.id, e.span, env)
        if kind is A.Call:
            return self.call(e, env)
        if kind is A.Seq:
            if len(e.items) == 1 and not e.repeats:
                return self.value(e.items[0], env)
            return Thunk(e, env, e.span)
        if isinstance(e, A.Ref):
            found, v = env.lookup(e.id)
            if found and isinstance(v, RefLayer):  # a block parameter bound to a tensor
                return v
            return RefLayer(e.id, e.span, self.frames[-1])
        if isinstance(e, (A.ListLit, A.Chain)):
            return [self.value(x, env) for x in e.items]
        if isinstance(e, A.BinOp):
            return self.binop(e, env)
        if isinstance(e, A.Unary):
            v = self.value(e.operand, env)
            if e.op == "not":
                return not self._truth(v, e.operand.span)
            self._num(v, e.operand.span, "negate")
            return -v
        if isinstance(e, A.Compare):
            vals = [self.value(x, env) for x in e.operands]
            self._sized(vals, e.span)
            for op, (a, b) in zip(e.ops, zip(vals, vals[1:])):
                ok = {"==": lambda: a == b, "!=": lambda: a != b,
                      "<=": lambda: self._cmp(a, b, e) <= 0, ">=": lambda: self._cmp(a, b, e) >= 0}[op]()
                if not ok:
                    return False
            return True
        if isinstance(e, A.BoolOp):
            if e.op == "and":
                v = True
                for x in e.operands:
                    v = self.value(x, env)
                    if not self._truth(v, x.span):
                        return v
                return v
            v = False
            for x in e.operands:
                v = self.value(x, env)
                if self._truth(v, x.span):
                    return v
            return v
        if isinstance(e, A.Ternary):
            return self.value(e.then if self._truth(self.value(e.cond, env), e.cond.span) else e.other, env)
        if isinstance(e, A.Index):
            obj, idx = self.value(e.obj, env), self.value(e.index, env)
            if not isinstance(obj, (list, tuple)):
                fail(f"cannot index {_kind(obj)}", e.obj.span, "only lists (such as 96>128 or [6, 12]) can be indexed")
            if not isinstance(idx, int) or isinstance(idx, bool):
                fail(f"a list index must be an integer, not {_kind(idx)}", e.index.span)
            if not -len(obj) <= idx < len(obj):
                fail(f"index {idx} is out of range for a list of {len(obj)}", e.index.span)
            return obj[idx]
        raise AssertionError(f"unknown AST node {type(e).__name__}")

    def _sized(self, values, span) -> None:
        """Note where a value derived from hin/win decides a layer (an op's argument, a
        comparison): the nodes do not keep that choice (compiler/sizes.py)."""
        if any(_is_sized(v) for v in values):
            self.b.g.size_reads.append(span)

    def _cmp(self, a, b, e):
        for v in (a, b):
            self._num(v, e.span, "compare")
        return (a > b) - (a < b)

    @staticmethod
    def _truth(v, span):
        if isinstance(v, Layer):
            fail("a layer is not a condition", span)
        return bool(v)

    @staticmethod
    def _num(v, span, what):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            fail(f"cannot {what} {_kind(v)}", span, "arithmetic works on numbers")

    def binop(self, e: A.BinOp, env: Env):
        right = self.value(e.right, env)
        if e.op == "*" and isinstance(right, int) and not isinstance(right, bool):
            probe = self.value(e.left, env.child(i=0))
            if isinstance(probe, Layer):
                if not 0 <= right <= MAX_REPEAT:
                    fail(f"repetition count {right} is outside 0..{MAX_REPEAT}", e.right.span)
                return Repeat(e.left, env, right, e.span)
        left = self.value(e.left, env)
        for v, side in ((left, e.left), (right, e.right)):
            if isinstance(v, list) and e.op in "+*":
                continue
            self._num(v, side.span, {"+": "add", "-": "subtract", "*": "multiply", "/": "divide",
                                     "//": "divide", "%": "take the remainder of", "**": "raise"}[e.op])
        try:
            if e.op == "+":
                return left + right
            if e.op == "-":
                return left - right
            if e.op == "*":
                if isinstance(left, list) and isinstance(right, list):
                    fail("cannot multiply two lists", e.span)
                result = left * right
                if isinstance(result, list) and len(result) > MAX_REPEAT:
                    fail("list too long", e.span)
                return result
            if e.op == "/":
                return left / right
            if e.op == "//":
                return left // right
            if e.op == "%":
                return left % right
            if e.op == "**":
                if isinstance(right, (int, float)) and abs(right) > 64:
                    fail(f"exponent {right} is too large", e.right.span)
                return left ** right
        except ZeroDivisionError:
            fail("division by zero", e.right.span)
        except TypeError:
            fail(f"cannot apply '{e.op}' to {_kind(left)} and {_kind(right)}", e.span)
        except OverflowError:
            fail("number too large", e.span)
        raise AssertionError(e.op)

    def resolve(self, name: str, span: Span, env: Env):
        found, v = env.lookup(name)
        if isinstance(v, _Failed):
            raise _Fail(None, cascades=True)    # already reported; later layers' shapes are unknown
        if isinstance(v, Unresolved):
            fail(v.message, span, v.hint)
        if found:
            return v
        entry = SPELLINGS.get(name)
        if entry is not None:
            kind, preset, label, rebinds = entry
            if rebinds:
                # conv3, maxpool2 …: kernel-size aliases of whatever conv/maxpool means here, so
                # 'let conv = conv(bias=false)' also applies to conv1 and conv3.
                found, v = env.lookup(kind)
                if found and isinstance(v, OpLayer) and v.kind == kind:
                    return OpLayer(kind, v.args, {**v.kwargs, **preset}, span, v.label, env)
            return OpLayer(kind, (), dict(preset), span, label, env)
        if name in FUNCTIONS:
            fail(f"'{name}' is a function; call it as {name}(…)", span)
        if declarations.is_declaration(name):
            fail(f"'{name}(…)' is a declaration, not a layer", span,
                 f"write it on a line of its own at the top level of the file, e.g. {name}(…)")
        candidates = env.names() | set(SPELLINGS) | set(FUNCTIONS)
        fail(f"unknown name '{name}'", span, _suggest(name, candidates) or "define it with let, param or block, or import it")

    def call(self, e: A.Call, env: Env):
        if e.func in FUNCTIONS and not env.lookup(e.func)[0]:
            args = [self.value(a.value, env) for a in e.args]
            if any(a.name for a in e.args) or e.body is not None:
                fail(f"'{e.func}' takes positional arguments only", e.span)
            try:
                return _taint(FUNCTIONS[e.func](*args), args)
            except (TypeError, ValueError, OverflowError) as ex:
                fail(f"{e.func}(): {ex}", e.span)
        target = self.resolve(e.func, e.func_span, env)
        if isinstance(target, Part):
            return self.part_call(target, e, env)
        args, kwargs = [], {}
        for a in e.args:
            if a.name is None:
                if kwargs:
                    fail("a positional argument follows a keyword argument", a.span)
                args.append(self.value(a.value, env))
            else:
                if a.name in kwargs:
                    fail(f"argument '{a.name}' given twice", a.span)
                kwargs[a.name] = self.value(a.value, env)
        args = tuple(args)
        body = Thunk(e.body, env, e.body.span) if e.body is not None else None
        if isinstance(target, Function):
            if body is not None:
                fail(f"function '{e.func}' takes no <body>", e.body.span)
            return self.apply_function(target, args, kwargs, e.span)
        if isinstance(target, OpLayer):
            merged_args = target.args + args
            merged_kwargs = {**target.kwargs, **kwargs}
            if body is not None:
                if target.kind not in COMBINATORS:
                    fail(f"'{e.func}' takes no <body>", e.body.span, "only residual<…>, dense<…> and blocks with a 'body' parameter do")
                merged_kwargs["body"] = body
            self.check_signature(target.kind, e.func, merged_args, merged_kwargs, e.span)
            return OpLayer(target.kind, merged_args, merged_kwargs, e.span, target.label, env)
        if isinstance(target, BlockLayer):
            merged = {**target.kwargs, **kwargs}
            layer = BlockLayer(target.block, target.args + args, merged, body or target.body, e.span)
            layer.env = self.bind_block(layer)  # arity errors at the call site
            return layer
        if isinstance(target, Block):
            layer = BlockLayer(target, args, kwargs, body, e.span)
            layer.env = self.bind_block(layer)
            return layer
        fail(f"'{e.func}' is {_kind(target)}, not something to call", e.func_span)

    def part_call(self, part: Part, e: A.Call, env: Env) -> PartLayer:
        """`resnet18(until=layer4, classes=10)`: keyword arguments only, each a family parameter
        of the network, and `until=` one of its stages (a name, not evaluated)."""
        declared = [st.name for st in part.module.stmts if isinstance(st, A.Param)]
        stages = _stages(part.module)
        if e.body is not None:
            fail(f"network '{e.func}' takes no <body>", e.body.span)
        kwargs, until = {}, None
        for a in e.args:
            if a.name is None:
                fail(f"network '{e.func}' takes keyword arguments only", a.span,
                     f"its parameters: until, {', '.join(declared)}" if declared else "e.g. until=STAGE")
            if a.name in kwargs or (a.name == "until" and until is not None):
                fail(f"argument '{a.name}' given twice", a.span)
            if a.name == "until":
                until = a.value.id if isinstance(a.value, A.Name) else self.value(a.value, env)
                if until not in stages:
                    fail(f"network '{e.func}' has no stage {until!r}", a.value.span,
                         f"its stages: {', '.join(stages)}")
            elif a.name not in declared:
                hint = _suggest(a.name, declared + ["until"])
                fail(f"network '{e.func}' has no parameter '{a.name}'", a.span,
                     hint or f"its parameters: until, {', '.join(declared)}")
            else:
                kwargs[a.name] = self.value(a.value, env)
        return PartLayer(part, kwargs, until, e.span)

    def apply_function(self, f: Function, args, kwargs, span):
        env = self.bind_params(f.name, f.params, f.env, args, kwargs, span, "function")
        if len(self.b.call_stack) > 200:
            fail(f"function '{f.name}' recurses too deeply", span)
        self.b.call_stack.append((f.name, span))
        try:
            return self.value(f.body, env)
        except _Fail as e:
            self.at_call_site(e.diag, span, f"function '{f.name}'")
            raise
        finally:
            self.b.call_stack.pop()

    def bind_params(self, name, params, outer: Env, args, kwargs, span, what):
        if len(args) > len(params):
            fail(f"{what} '{name}' takes {len(params)} argument{'s' * (len(params) != 1)}, got {len(args)}", span)
        env = outer.child()
        names = [p.name for p in params]
        for k in kwargs:
            if k not in names:
                fail(f"{what} '{name}' has no parameter '{k}'", span, _suggest(k, names) or f"its parameters: {', '.join(names) or 'none'}")
        for i, p in enumerate(params):
            if i < len(args):
                if p.name in kwargs:
                    fail(f"argument '{p.name}' of '{name}' given twice", span)
                env.vars[p.name] = args[i]
            elif p.name in kwargs:
                env.vars[p.name] = kwargs[p.name]
            elif p.default is not None:
                env.vars[p.name] = self.value(p.default, env)
            else:
                fail(f"{what} '{name}' needs the argument '{p.name}'", span)
        return env

    def bind_block(self, layer: BlockLayer) -> Env:
        kwargs = dict(layer.kwargs)
        if layer.body is not None:
            if "body" in kwargs:
                fail("the body is given both as <…> and as body=", layer.span)
            kwargs["body"] = layer.body
        return self.bind_params(layer.block.name, layer.block.params, layer.block.env, layer.args, kwargs,
                                layer.span, "block")

    def check_signature(self, kind, surface, args, kwargs, span):
        sig = signature(kind)
        if _is_merge(kind):
            for k in kwargs:
                if k not in sig:
                    fail(f"'{surface}' has no option '{k}'", span, _suggest(k, sig) or f"its options: {', '.join(sig) or 'none'}")
            return
        names = list(sig)
        allowed = set(names) | ({"body"} if kind in COMBINATORS else set())
        if len(args) > len(names):
            fail(f"'{surface}' takes at most {len(names)} positional argument{'s' * (len(names) != 1)}, got {len(args)}", span,
                 f"its parameters in order: {', '.join(names) or 'none'}")
        for k in kwargs:
            if k not in allowed:
                fail(f"'{surface}' has no parameter '{k}'", span, _suggest(k, allowed) or f"its parameters: {', '.join(names)}")
        for i, n in enumerate(names[:len(args)]):
            if n in kwargs:
                fail(f"'{surface}' got '{n}' twice", span)

    # ---- applying layers to tensors ----
    def apply_seq(self, seq: A.Seq, t: str, env: Env) -> str:
        total = 1
        for r in seq.repeats:
            total *= r
        if total > MAX_REPEAT:
            fail(f"repetition count {total} is too large", seq.span)
        if seq.repeats:
            for i in range(total):
                t = self._apply_items(seq.items, t, env.child(i=i))
            return t
        return self._apply_items(seq.items, t, env)

    def _apply_items(self, items, t: str, env: Env) -> str:
        values = [(self._as_layer(self.value(it, env), it, env), it) for it in items]
        for k, (v, it) in enumerate(values):
            nxt = values[k + 1][0] if k + 1 < len(values) else None
            t = self.apply(v, t, it.span, next_is_bn=isinstance(nxt, OpLayer) and nxt.kind == "bn")
        return t

    def _as_layer(self, v, item, env: Env):
        """A "file.arch" written in a sequence is that network, whole."""
        if isinstance(v, str) and v.endswith(".arch"):
            return self.resolve(v, item.span, env)
        return v

    def apply(self, v, t: str, span: Span, next_is_bn: bool = False) -> str:
        if isinstance(v, OpLayer):
            return self.apply_op(v, t, next_is_bn)
        if isinstance(v, BlockLayer):
            return self.apply_block(v, t)
        if isinstance(v, Thunk):
            return self.apply_seq(v.seq, t, v.env)
        if isinstance(v, Repeat):
            for i in range(v.count):
                t = self.apply(self.value(v.item, v.env.child(i=i)), t, v.span)
            return t
        if isinstance(v, RefLayer):
            return self.lookup_tensor(v.name, v.span, v.frame)
        if isinstance(v, Block):
            return self.apply_block(BlockLayer(v, (), {}, None, span), t)
        if isinstance(v, PartLayer):
            return self.apply_part(v, t)
        if isinstance(v, Part):
            return self.apply_part(PartLayer(v, {}, None, span), t)
        if isinstance(v, list):
            # A chain a>b>c applied as layers: each element in turn.
            for x in v:
                t = self.apply(x, t, span)
            return t
        fail(f"expected a layer here, found {_kind(v)}", span,
             "numbers go inside an op's parentheses, e.g. conv3(64)" if isinstance(v, (int, float)) else None)

    def lookup_tensor(self, name: str, span: Span, frame: Frame | None = None) -> str:
        frame = frame or self.frames[-1]
        if name in frame.tensors:
            return frame.tensors[name]
        if name == "in" and frame.input is not None:
            return frame.input
        if name == "prev" and frame.prev is not None:
            return frame.prev
        # any node of a part by its name under the label, as torchvision's create_feature_extractor
        # takes any node: @body.blocks.12.hard_swish1 (SSDlite reads inside a MobileNetV3 block)
        label, _, rest = name.partition(".")
        if label in frame.parts and f"{frame.parts[label]}.{rest}" in self.b.g.nodes:
            return f"{frame.parts[label]}.{rest}"
        fail(f"unknown tensor '@{name}'", span,
             _suggest(name, frame.tensors) or (f"named tensors here: {', '.join('@' + n for n in frame.tensors)}"
                                               if frame.tensors else "label a statement first, e.g. 'enc1: conv3(64)'"))

    def apply_block(self, layer: BlockLayer, t: str) -> str:
        blk = layer.block
        if len(self.b.call_stack) > 100:
            fail(f"block '{blk.name}' calls itself too deeply", layer.span, "blocks cannot be recursive")
        h, w, c = _hwc(self.b.shape(t))
        env = (layer.env or self.bind_block(layer)).child(cin=c, hin=SizeInt(h), win=SizeInt(w))
        caller = self.frames[-1]
        with self._entered(blk.name, blk.name, layer.span, Frame({}, t)) as result:
            try:
                result[0] = self.run_statements(blk.body, t, env, in_block=True)
                caller.prev = t
            except _Fail as f:
                if (not self.at_call_site(f.diag, layer.span, f"block '{blk.name}'")
                        and f.diag is not None and len(f.diag.notes) < 4):
                    f.diag.notes.append((f"in block '{blk.name}' called here", layer.span))
                raise
        return result[0]

    @contextlib.contextmanager
    def _entered(self, unit: str, call: str, span, frame: "Frame"):
        """A block or network part being elaborated: its unit (the nodes' name scope), its
        call-stack entry and frame, the builder's target cleared inside and restored after.
        The body sets ``result[0]`` to the unit's output."""
        opened = self.b.push_unit(unit, span)
        self.b.call_stack.append((call, span))
        saved_target = self.b.target, self.b.target_node
        self.b.target = self.b.target_node = None
        self.frames.append(frame)
        result = [None]
        try:
            yield result
        finally:
            self.frames.pop()
            self.b.target, self.b.target_node = saved_target
            self.b.call_stack.pop()
            if opened:
                self.b.pop(result[0])

    def apply_part(self, layer: PartLayer, t: str) -> str:
        """Elaborate a network in place of a block: its nodes under the current scope (the
        stage's label), its input the tensor `t`, its stages up to `until`; its named tensors
        are exported for `@label.stage` and its declarations (preprocess) come along."""
        part, module = layer.part, layer.part.module
        if len(self.b.call_stack) > 100:
            fail(f"network '{part.name}' contains itself too deeply", layer.span)
        params = {**{a.name: a.value for a in _preset(module, part.preset)},
                  **{k: Override(v, k, repr(_plain(v))) for k, v in layer.kwargs.items()}}
        frame = Frame({}, t)
        with self._entered(_unit_name(part.name), part.name, layer.span, frame) as result:
            try:
                result[0] = self.run_part(module, params, t, layer)
                path = self.b.scope.path
                self.b.g.parts[path] = PartInfo(part.name, layer.until, _stages_after(module, layer.until))
                # its stages' numbered units too: @body.blocks.12 (a detector's FPN reads mid-stage)
                lead = path + "." if path else ""
                frame.tensors.update({p[len(lead):]: n for p, n in self.b.unit_outputs.items()
                                      if p.startswith(lead) and p[len(lead):].split(".")[0] in frame.tensors})
            except _Fail as f:
                self.at_call_site(f.diag, layer.span, f"network '{part.name}'")
                raise
        self.exports.append(frame.tensors)
        return result[0]

    def run_part(self, module: Module, params: dict, t: str, layer: PartLayer) -> str:
        """A part's statements, as run_program runs a file's, from the tensor `t`."""
        env = Env(self.base_env(module), {})
        frame, out, done = self.frames[-1], None, False
        for st in module.stmts:
            if isinstance(st, _DEFINITIONS):
                self.define(st, module, env, params)
            elif isinstance(st, A.Input):
                if self.input_name(st, env) is not None:
                    fail(f"network '{layer.part.name}' has a further input ({st.span.file}:{st.span.line}); "
                         "a network with several inputs cannot be a part", layer.span)
                self.check_part_input(self.input_shape(st, env), t, layer, env)
                frame.tensors["input"] = t
            elif (decl := self._declaration_call(st, env)) is not None:
                if layer.until is None or decl.func == "preprocess":   # the others may name cut-off tensors
                    self.declare(decl, env, inherited=True)
            elif isinstance(st, (A.SeqStmt, A.Labelled)) and not done:
                t = self.run_statements([st], t, env, in_block=False)
                if isinstance(st, A.Labelled) and st.name == layer.until:
                    out, done = frame.tensors[st.name], True
            elif isinstance(st, A.Output) and not done:
                if st.when is None or self._truth(self.value(st.when, env), st.when.span):
                    out = self.lookup_tensor(st.names[0], st.spans[0])
        return out if out is not None else t

    def check_part_input(self, declared: tuple, t: str, layer: PartLayer, env: Env) -> None:
        """A part takes any size its layers accept, but the channels its first layer was made
        for: a mismatch is the user's to fix with in_chans=."""
        have = self.b.shape(t)
        if len(declared) != len(have) or (len(have) == 3 and declared[-1] != have[-1]):
            name = layer.part.name
            chans = "in_chans" in {st.name for st in layer.part.module.stmts if isinstance(st, A.Param)}
            fail(f"network '{name}' takes {fmt(declared) if len(declared) != 3 else f'{declared[-1]} channels'}, "
                 f"the tensor here is {fmt(have)}", layer.span,
                 f"give it in_chans={have[-1]}" if chans and len(have) == 3 and len(declared) == 3 else None)

    def at_call_site(self, diag: Diagnostic | None, site: Span, what: str) -> bool:
        """Move an error raised inside a library or prelude definition to the user's call of
        it, the definition's line becoming a note: the user's file is where the fix goes."""
        if diag is None or self.home is None or site is None or site.file not in self.home:
            return False
        if diag.span is not None and diag.span.file in self.home:
            return False
        if diag.span is not None:
            diag.notes.insert(0, (f"raised inside {what}, here", diag.span))
        diag.span = site
        return True

    # ---- leaf ops ----
    def apply_op(self, v: OpLayer, t: str, next_is_bn: bool) -> str:
        if v.kind == "like":
            return self.apply_like(v, t)
        if v.kind in COMBINATORS:
            return self.apply_combinator(v, t)
        surface, op = ops.SURFACES[v.kind]
        if surface.merge:
            return self.apply_merge(v, t)
        args = _bind_op(v)
        self._sized(args.values(), v.span)
        extra = []
        for k in surface.tensors:           # tensor arguments (roi_align(@p3, …)): more inputs
            if args[k] is None and surface.signature[k] is None:
                continue                    # an optional one left out (upsample's size)
            refs = args[k] if isinstance(args[k], list) else [args[k]]
            if not refs or not all(isinstance(r, RefLayer) for r in refs):
                fail(f"'{v.label}' takes tensors as '{k}': @name or a list of them", v.span,
                     f"e.g. {v.label}(@features, …)")
            names = [self.lookup_tensor(r.name, r.span, r.frame) for r in refs]
            extra.extend(names)
            args[k] = [self.b.shape(n) for n in names]
        attrs = surface.bind(args, _BindContext(self, t, v, next_is_bn))
        if attrs is None:           # identity: no node
            return t
        return self.b.add(op.name, [t] + extra, attrs, v.span, v.label)

    def _inferred_stride(self, s, span):
        """The stride that takes this input to the projection's target size (1 without a target)."""
        tgt = self.b.target
        if not tgt or len(tgt) != 3 or len(s) != 3:
            return 1
        st = inferred_stride(s[:2], tgt[:2])
        if st is not None:
            return st
        fail(f"no strided 1x1 projection maps {fmt(s)} to the body's {fmt(tgt)}", span,
             _projection_hint(s, tgt), cascades=True)

    def apply_merge(self, v: OpLayer, t: str) -> str:
        branches = list(v.args)
        if not branches:
            fail(f"{v.kind} needs at least one branch", v.span, f"e.g. {v.kind}(identity, conv3(64))")
        opts = {**{"crop": False}, **v.kwargs} if v.kind == "concat" else dict(v.kwargs)
        scoped = sum(1 for br in branches if _builds_nodes(br)) >= 2
        outs = []
        base = self.b.scope.counters.get("branch", 0)
        for pos, br in enumerate(branches, 1):
            if not isinstance(br, Layer) and not isinstance(br, (Block, list)):
                fail(f"a branch of {v.kind} must be a layer, not {_kind(br)}", v.span)
            if scoped and _builds_nodes(br):
                self.b.push(f"branch{base + pos}", v.span, exact=False)
                try:
                    outs.append(self.apply(br, t, v.span))
                finally:
                    self.b.pop()
            else:
                outs.append(self.apply(br, t, v.span))
        if scoped:
            self.b.scope.counters["branch"] = base + len(branches)
        if len(outs) == 1 and v.kind != "concat":
            return outs[0]
        crop = v.kind == "concat" and bool(opts.get("crop"))
        if crop:
            outs = self._center_crop(outs, v.span)
        attrs = ConcatAttrs(True if crop else None) if v.kind == "concat" else NoAttrs()
        try:
            return self.b.add(v.kind, outs, attrs, v.span, v.kind)
        except _Fail as f:
            if v.kind != "concat" and t not in outs:
                self._explain_branches(f.diag, v, branches, outs)
            raise

    def _explain_branches(self, diag: Diagnostic, v: OpLayer, branches, outs) -> None:
        """An add or mul of branches none of which is the input is not a residual: say what each
        branch ends with, where it is written, instead of the residual hint."""
        for pos, (br, out) in enumerate(zip(branches, outs), 1):
            diag.notes.append((f"branch {pos} ends with {fmt(self.b.shape(out))}", getattr(br, "span", v.span)))
        diag.hint = (f"every branch of {v.kind} must end with the same height, width and channels (a size of 1 "
                     "broadcasts): resize one with upsample, a strided conv or a pool, or match channels with conv1")

    def _center_crop(self, outs, span):
        shapes = [self.b.shape(o) for o in outs]
        if any(len(s) != 3 for s in shapes):
            return outs
        th, tw = min(s[0] for s in shapes), min(s[1] for s in shapes)
        res = []
        for o, (h, w, _) in zip(outs, shapes):
            if (h, w) != (th, tw):
                dh, dw = h - th, w - tw
                o = self.b.add("crop", [o], CropAttrs(((dh // 2, dh - dh // 2), (dw // 2, dw - dw // 2)), tuple(outs)),
                               span, "crop")
            res.append(o)
        return res

    def apply_like(self, v: OpLayer, t: str) -> str:
        """``like(@stage)``: the layers of an earlier stage again, on this input, with that
        stage's variables (weight sharing: torchvision's RPN head runs on every FPN level). The
        stage must read one tensor from outside itself."""
        ref = _bind_op(v)["stage"]
        if not isinstance(ref, RefLayer):
            fail("like() takes a stage, as @name", v.span, "e.g. rpn1: @p1 like(@rpn0)")
        out = self.lookup_tensor(ref.name, ref.span, ref.frame)
        g = self.b.g
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
            name = self.b.add(n.op, [mapped[i] for i in n.inputs], n.attrs, v.span, prefix)
            g.nodes[name].shares = n.shares or n.name
            mapped[n.name] = name
        return mapped[out]

    def apply_combinator(self, v: OpLayer, t: str) -> str:
        a = _bind_op(v)
        body = a.get("body")
        if body is None:
            fail(f"{v.kind} needs a body: {v.kind}<layers>", v.span)
        opened = self.b.push_unit(v.kind, v.span)
        out = None
        try:
            out = self._combine(v, a, body, t)
            return out
        finally:
            if opened:
                self.b.pop(out)

    def _combine(self, v: OpLayer, a: dict, body, t: str) -> str:
        """The nodes of residual<…> / dense<…> on `t`, in the combinator's scope."""
        y = self.apply(body, t, v.span)
        if v.kind == "dense":
            return self.b.add("concat", [t, y], ConcatAttrs(), v.span, "concat")
        sx, sy = self.b.shape(t), self.b.shape(y)
        shortcut = a["shortcut"]
        if shortcut is None and sx != sy:
            # the default 'conv1 bn' means what conv and bn mean where residual was written
            shortcut = a["proj"] if a["proj"] is not None else _default_projection(v.env or Env(), v.span)
        if shortcut is not None:
            self.b.push("shortcut", v.span, exact=False)
            saved = self.b.target, self.b.target_node
            self.b.target, self.b.target_node = sy, y
            try:
                s = self.apply(shortcut, t, v.span)
            finally:
                self.b.target, self.b.target_node = saved
                self.b.pop()
        else:
            s = t
        factor = _number(a["scale"], "scale", v.span)
        if factor != 1:
            y = self.b.add("scale", [y], ScaleAttrs(float(factor)), v.span, "scale")
        out = self.b.add("add", [s, y], NoAttrs(), v.span, "add")
        if a["shortcut"] is None and s == t:
            # an identity shortcut because the body kept the size here: at another input
            # size the body may not, and a projection would appear (compiler/sizes.py)
            self.b.g.size_choices[out] = v.span
        return out

    # ---- statements ----
    def run_statements(self, stmts, t: str | None, env: Env, in_block: bool) -> str | None:
        frame = self.frames[-1]
        for st in stmts:
            if isinstance(st, A.Let):
                if st.params is not None:
                    env.vars[st.name] = Function(st.name, st.params, st.value, env, st.span)
                else:
                    env.vars[st.name] = self.value(st.value, env)
            elif isinstance(st, A.BlockDef):
                env.vars[st.name] = Block(st.name, st.params, st.body, env, st.span)
            elif isinstance(st, (A.SeqStmt, A.Labelled)):
                seq = st.seq
                if t is None:
                    fail("the network has no input yet", st.span, "start the file with e.g. 'input 224x224x3'")
                h, w, c = _hwc(self.b.shape(t))
                senv = env.child(cin=c, hin=SizeInt(h), win=SizeInt(w)) if not in_block else env
                if isinstance(st, A.Labelled):
                    self.b.push(st.name, st.span, stage=not in_block)
                    if not in_block:
                        self.b.scope.inline_single = self._count_units(seq, senv) == 1
                    mark = len(self.exports)
                    path = self.b.scope.path
                    try:
                        out = self.apply_seq(seq, t, senv)
                        exported = {f"{st.name}.{k}": v for ex in self.exports[mark:] for k, v in ex.items()}
                        if path in self.b.g.parts:
                            frame.parts[st.name] = path
                    finally:
                        self.b.pop()
                        del self.exports[mark:]
                    if st.name in frame.tensors:
                        fail(f"tensor '{st.name}' is defined twice", st.span)
                    frame.tensors[st.name] = out
                    frame.tensors.update(exported)
                    if not in_block:
                        self.b.g.aliases[self.b._join(st.name)] = out
                    if not st.side:
                        t = out
                else:
                    t = self.apply_seq(seq, t, senv)
            elif isinstance(st, A.Output):
                if in_block:
                    fail("'output' belongs at the top level of a file, not in a block", st.span)
                if st.when is not None and not self._truth(self.value(st.when, env), st.when.span):
                    continue
                outs = []
                for n, sp in zip(st.names, st.spans):
                    outs.append(self.lookup_tensor(n, sp))
                self.b.g.outputs = outs
            elif isinstance(st, (A.Param, A.Preset, A.Import, A.Input)):
                fail(f"'{type(st).__name__.lower()}' belongs at the top level of a file", st.span)
            else:
                raise AssertionError(type(st).__name__)
        return t

    def _count_units(self, seq: A.Seq, env: Env) -> int:
        """Block and combinator instances a stage will hold (decides 0,1,2… naming vs inlining)."""
        n = 0
        for it in seq.items:
            try:
                v = self._as_layer(self.value(it, env.child(i=0)), it, env)
            except _Fail:
                return 0
            n += _units(v)
        for r in seq.repeats:
            n *= r
        return n

    # ---- files: the program and the modules it imports ----
    def run_program(self, module: Module, params: dict, input_shape: tuple | None,
                    diagnostics: tuple | list = ()) -> Graph:
        """Elaborate the root file into the Graph: its family parameters (`params`: name -> an
        expression or an Override; absent ones take their default), imports, input, definitions,
        stages and outputs. `input_shape` replaces the file's `input`. Every located error is
        collected, after `diagnostics` (those found before elaborating), and raised together."""
        g = self.b.g
        self.home = {m.display for m in module.closure() if m is module or not library.contains(m.directory)}
        env = Env(self.base_env(module), {})
        self.frames.append(Frame({}, None))
        diags = list(diagnostics)
        t = None
        shape_failed = False
        for st in module.stmts:
            try:
                if isinstance(st, _DEFINITIONS):
                    self.define(st, module, env, params)
                    if isinstance(st, A.Param):
                        g.params[st.name] = _plain(env.vars[st.name])
                elif isinstance(st, A.Input) and self.input_name(st, env) is not None:
                    self.add_named_input(self.input_name(st, env), self.input_shape(st, env), st.span)
                elif isinstance(st, A.Input):
                    if t is not None:
                        fail("the input is declared twice", st.span)
                    t = self.add_input(tuple(input_shape) if input_shape is not None else self.input_shape(st, env),
                                       st.span)
                elif (decl := self._declaration_call(st, env)) is not None:
                    if not shape_failed:        # its @tensors may be the failed stage's
                        self.declare(decl, env)
                elif not isinstance(st, A.Preset):     # presets were bound before elaborating
                    if shape_failed and isinstance(st, (A.SeqStmt, A.Labelled, A.Output)):
                        # Later layers would only repeat the first shape error; still check their names.
                        continue
                    if t is None and isinstance(st, (A.SeqStmt, A.Labelled)):
                        if input_shape is None:
                            fail("the network has no input shape", st.span,
                                 "start the file with e.g. 'input 224x224x3', or pass --input HxWxC")
                        t = self.add_input(tuple(input_shape), None)
                    t = self.run_statements([st], t, env, in_block=False)
            except _Fail as f:
                if isinstance(st, (A.Let, A.Param)):
                    env.vars[st.name] = _Failed()     # its uses are not errors of their own
                if isinstance(st, A.Input):
                    shape_failed = True               # nor is the missing input of every layer
                if f.cascades:
                    if shape_failed:
                        continue
                    shape_failed = True
                if f.diag is not None:
                    _report_once(diags, f.diag)
            except RecursionError:      # also from an imported module: reported at its import
                diags.append(Diagnostic("the spec nests too deeply to elaborate", st.span, "split it into smaller blocks"))
        if t is None and not diags:
            try:
                if input_shape is None:
                    fail("the spec defines no network", Span(module.display, 1, 1, 1, 1),
                         "add an 'input 224x224x3' line and some layers")
                t = self.add_input(tuple(input_shape), None)
            except _Fail as f:
                diags.append(f.diag)
        if diags:
            raise ArchError(diags)
        if not g.outputs:
            g.outputs = [t]
        if "detect_input" in g.declarations and "preprocess" in self.inherited:
            del g.declarations["preprocess"]    # a detector's input pipeline is its own, not its backbone's
        return g

    @staticmethod
    def _declaration_call(st, env: Env) -> A.Call | None:
        """The call of a declaration statement (``preprocess(mode="caffe")`` on its own line),
        unless the file defines that name itself."""
        if (isinstance(st, A.SeqStmt) and len(st.seq.items) == 1 and not st.seq.repeats
                and isinstance(call := st.seq.items[0], A.Call) and call.body is None
                and declarations.is_declaration(call.func) and not env.lookup(call.func)[0]):
            return call
        return None

    def declare(self, call: A.Call, env: Env, inherited: bool = False) -> None:
        """Evaluate a declaration's keyword arguments and store the bound, validated result in
        ``graph.declarations`` (compiler/declarations). One a part brings (`inherited`) gives way
        to any other: the first part's, and the user's file's own wherever it is written."""
        kind, g = call.func, self.b.g
        if kind in g.declarations and (inherited or kind in self.inherited):
            if inherited:
                return
            self.inherited.discard(kind)
        elif kind in g.declarations:
            fail(f"'{kind}(…)' is declared twice", call.span, "keep one; presets and parameters choose its values")
        elif inherited:
            self.inherited.add(kind)
        sig = declarations.DECLARATIONS[kind].signature
        values, spans = {}, {}
        for a in call.args:
            if a.name is None:
                fail(f"{kind}() takes keyword arguments only", a.span, f"its keywords: {', '.join(sig)}")
            if a.name not in sig:
                fail(f"{kind}() has no argument '{a.name}'", a.span, _suggest(a.name, sig) or f"its keywords: {', '.join(sig)}")
            if a.name in values:
                fail(f"argument '{a.name}' given twice", a.span)
            values[a.name], spans[a.name] = self.value(a.value, env), a.span

        def tensor(name, v):
            if isinstance(v, RefLayer):
                return self.lookup_tensor(v.name, spans.get(name, call.span), v.frame)
            return None

        ctx = declarations.DeclarationContext(kind, fail, spans, call.span, tensor)
        g.declarations[kind] = declarations.bind(kind, values, ctx)

    def module_env(self, module: Module) -> Env:
        """What an imported module defines (its blocks, lets, imports, and params at their
        defaults), elaborated once per file; its own network, if any, is not the importer's."""
        if module in self.module_envs:
            return self.module_envs[module]
        env = Env(self.base_env(module), {})
        self.frames.append(Frame({}, None))
        diags = []
        try:
            for st in module.stmts:
                if isinstance(st, _DEFINITIONS):
                    try:
                        self.define(st, module, env, {})
                    except _Fail as f:
                        if isinstance(st, (A.Let, A.Param)):
                            env.vars[st.name] = _Failed()
                        if f.diag is not None:
                            diags.append(f.diag)
        finally:
            self.frames.pop()
        if diags:
            raise ArchError(diags)
        self.module_envs[module] = env
        return env

    def base_env(self, module: Module) -> Env | None:
        """What a file sees before its own definitions: the prelude's, and under them the
        networks it uses as parts. Scope decides clashes: the file's own definitions and
        imports, then ops and prelude blocks, win over a built-in network of the same name."""
        prelude = self.module_env(module.prelude) if module.prelude is not None else None
        parts = {k: v for k, v in module.parts.items()
                 if k not in SPELLINGS and k not in FUNCTIONS and not declarations.is_declaration(k)}
        if not parts:
            return prelude
        return Env(Env(None, parts), prelude.vars if prelude is not None else {})

    def define(self, st, module: Module, env: Env, params: dict) -> None:
        """Bind one top-level definition of `module` in env: an import, a param, a let or a block."""
        if isinstance(st, A.Import):
            self.bind_import(st, module, env)
        elif isinstance(st, A.Param):
            chosen = params.get(st.name, st.default)
            env.vars[st.name] = self.override(st, chosen, env) if isinstance(chosen, Override) else self.value(chosen, env)
            if st.range is not None:
                self.check_range(st, env.vars[st.name], env)
        else:
            self.run_statements([st], None, env, in_block=False)

    def override(self, st: A.Param, given: "Override", env: Env):
        """The value a caller (--param, Python) gives a parameter. Its errors name what the caller
        wrote, not a place in a file; a parameter whose default is a number takes only numbers."""
        try:
            default = self.value(st.default, env)
        except _Fail:
            default = None
        expects_number = isinstance(default, (int, float)) and not isinstance(default, bool)
        expects_string = isinstance(default, str)
        declared = [(f"'{st.name}' is declared here", st.span)]
        example = f"give a number, such as the default: {given.label(default)}" if expects_number else None
        try:
            v = given.value if given.expr is None else self.value(given.expr, env)
        except _Fail as f:
            if f.diag is None:
                raise
            if expects_string and isinstance(given.expr, A.Name):
                return given.expr.id          # a bare word for a string parameter: --param padding=same
            if expects_number and isinstance(given.expr, A.Name):
                raise _Fail(Diagnostic(f"{given.label()}: expected a number, got {given.shown}", None, example, declared))
            raise _Fail(Diagnostic(f"{given.label()}: {f.diag.message}", None, f.diag.hint, declared))
        if expects_number and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise _Fail(Diagnostic(f"{given.label()}: expected a number, got {_kind(v)}", None, example, declared))
        return v

    def param_range(self, st: A.Param, env: Env) -> tuple:
        """The declared (low, high) of a family parameter: numbers, low <= high."""
        lo, hi = (self.value(e, env) for e in st.range)
        for v, e in ((lo, st.range[0]), (hi, st.range[1])):
            self._num(v, e.span, "use as a bound")
        if lo > hi:
            fail(f"the range of '{st.name}' is empty: {lo} > {hi}", st.range[0].span)
        return lo, hi

    def check_range(self, st: A.Param, value, env: Env) -> None:
        lo, hi = self.param_range(st, env)
        for v in (value if isinstance(value, list) else [value]):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
                fail(f"param '{st.name}' = {_plain(value)} is outside its declared range [{lo}, {hi}]", st.span,
                     f"choose {'each element ' if isinstance(value, list) else ''}between {lo} and {hi}, "
                     "or widen the range")

    def bind_import(self, st: A.Import, module: Module, env: Env) -> None:
        target = module.imports[st.path]
        if isinstance(target, Unresolved):
            fail(target.message, st.span, target.hint)
        defined = self.module_env(target).vars
        if st.names is None:
            env.vars.update(defined)
            return
        for n in st.names:
            if n not in defined:
                fail(f"'{st.path}' defines no '{n}'", st.span, _suggest(n, defined))
            env.vars[n] = defined[n]

    def add_input(self, shape: tuple, span: Span | None) -> str:
        """The network's input node, named 'input' (and the tensor @input)."""
        if len(shape) not in (1, 3):
            fail(f"an input shape is HxWxC (or C), not {len(shape)} numbers", span)
        for d in shape:
            _posint(d, "input size", span)
        t = self.b.add("input", [], InputAttrs(tuple(shape)), span, name="input")
        self.b.g.inputs.insert(0, t)
        self.frames[-1].tensors["input"] = t
        return t

    def add_named_input(self, name: str, shape: tuple, span: Span) -> str:
        """A further graph input, the tensor @name (the proposals of an R-CNN head: input(R, 4,
        name="rois")); the chain of layers goes on from where it was."""
        if not 1 <= len(shape) <= 3:
            fail(f"an input shape has 1 to 3 sizes, not {len(shape)}", span)
        for d in shape:
            _posint(d, "input size", span)
        if name in self.b.g.nodes or name in self.frames[-1].tensors:
            fail(f"the input name '{name}' is already taken", span)
        t = self.b.add("input", [], InputAttrs(tuple(shape)), span, name=name)
        self.b.g.inputs.append(t)
        self.frames[-1].tensors[name] = t
        return t

    def input_name(self, st: A.Input, env: Env) -> str | None:
        named = [a for a in st.args if getattr(a, "name", None) is not None]
        for a in named:
            if a.name != "name":
                fail(f"input has no option '{a.name}'", a.span, "its only option is name=\"…\" (a further input)")
            v = self.value(a.value, env)
            if not isinstance(v, str) or not v.isidentifier():
                fail(f"an input's name must be a name in quotes, not {_kind(v)}", a.span, 'e.g. name="rois"')
            return v
        return None

    def input_shape(self, st: A.Input, env: Env) -> tuple:
        if len(st.args) == 1 and isinstance(st.args[0], A.Const):
            return st.args[0].value
        vals = []
        for a in st.args:
            if a.name is not None:
                continue                    # name="…" (input_name)
            v = self.value(a.value, env)
            if isinstance(v, bool) or not isinstance(v, int):
                fail(f"an input size must be an integer, not {_kind(v)}", a.span)
            vals.append(v)
        return tuple(vals)


_DEFINITIONS = (A.Import, A.Param, A.Let, A.BlockDef)   # what a file gives its importers


def _report_once(diags: list, diag: Diagnostic) -> None:
    """Add ``diag``, or, when the same error (an unknown name inside a block, say) was already
    reported from another call of the block, add this call's sites to that first report."""
    first = next((d for d in diags if (d.message, d.span, d.hint) == (diag.message, diag.span, diag.hint)), None)
    if first is None:
        diags.append(diag)
        return
    first.notes.extend(note for note in diag.notes if note not in first.notes)


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
        shown = self.text if value is None else str(_plain(value))
        return f"{self.flag}{self.name}={shown}"

    @property
    def shown(self) -> str:
        """The given text, described: the name 'ten' (command line), the string 'ten' (Python)."""
        return f"the name '{self.expr.id}'" if self.flag else _kind(self.value)


def _plain(v):
    """A parameter value as JSON-able data (graph.params): layers and functions by their kind."""
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return _kind(v)


def _units(v) -> int:
    if isinstance(v, (BlockLayer, Block, PartLayer, Part)):
        return 1
    if isinstance(v, OpLayer) and v.kind in COMBINATORS:
        return 1
    if isinstance(v, Repeat):
        return v.count
    if isinstance(v, Thunk):
        return 2  # a nested sequence may hold several units: number them
    return 0


def _builds_nodes(v) -> bool:
    if isinstance(v, RefLayer):
        return False
    if isinstance(v, OpLayer) and v.kind == "identity":
        return False
    return True


def _bind_op(v: OpLayer) -> dict:
    sig = signature(v.kind)
    out = dict(sig)
    if v.args:
        out.update(zip(sig, v.args))
    out.update(v.kwargs)
    if ... in out.values():
        missing = [k for k, d in out.items() if d is ...]
        fail(f"'{v.label}' needs the argument '{missing[0]}'", v.span,
             f"e.g. {v.label}({', '.join(n for n, x in sig.items() if x is ...)})")
    return out


class _BindContext:
    """What an op's ``bind`` sees of the elaborator (ops.BindContext): the input's shape, the
    call's place for errors, whether a BN follows, the projection target, and value checks."""

    __slots__ = ("el", "shape", "span", "label", "next_is_bn", "target", "target_node")

    def __init__(self, el: "Elaborator", t: str, v: OpLayer, next_is_bn: bool):
        self.el, self.shape, self.span, self.label = el, el.b.shape(t), v.span, v.label
        self.next_is_bn, self.target, self.target_node = next_is_bn, el.b.target, el.b.target_node

    def fail(self, message, hint=None, cascades=False):
        fail(message, self.span, hint, cascades)

    def spatial(self):
        try:
            return ops.spatial(self.label, self.shape)
        except ShapeError as e:
            fail(str(e), self.span, e.hint, cascades=True)

    def int(self, v, what):
        return _int(v, what, self.span)

    def posint(self, v, what):
        return _posint(v, what, self.span)

    def number(self, v, what):
        return _number(v, what, self.span)

    def pair(self, v, what, allow_zero=False):
        return _pair(v, what, self.span, allow_zero)

    def explicit4(self, p, what):
        return _explicit4(p, what, self.span)

    def inferred_stride(self):
        return self.el._inferred_stride(self.shape, self.span)


def _kind(v) -> str:
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


def _hwc(shape):
    if len(shape) == 3:
        return shape
    return (1, 1, shape[-1])


def _int(v, what, span):
    if isinstance(v, bool) or not isinstance(v, int):
        fail(f"{what} must be an integer, not {_kind(v)}", span)
    return v


def _posint(v, what, span):
    _int(v, what, span)
    if v < 1:
        fail(f"{what} must be positive, got {v}", span)
    if v > 1 << 24:
        fail(f"{what} {v} is implausibly large", span)
    return v


def _number(v, what, span):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        fail(f"{what} must be a number, not {_kind(v)}", span)
    if v != v or v in (float("inf"), float("-inf")):
        fail(f"{what} must be finite", span)
    return v


def _pair(v, what, span, allow_zero=False):
    if isinstance(v, (list, tuple)):
        if len(v) != 2:
            fail(f"{what} needs 1 or 2 values, got {len(v)}", span)
        vals = tuple(v)
    else:
        vals = (v, v)
    for x in vals:
        _int(x, what, span)
        if x < (0 if allow_zero else 1) or x > 1 << 16:
            fail(f"{what} {x} is out of range", span)
    return vals


def _explicit4(p, what, span):
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
        _int(x, what, span)
        if x < 0 or x > 1 << 16:
            fail(f"{what} {x} is out of range", span)
    return ((vals[0], vals[1]), (vals[2], vals[3]))


def _projection_hint(s: tuple, tgt: tuple) -> str:
    """What would make a residual's shortcut meet its body, for this pair of sizes."""
    size, body = fmt(s[:2]), fmt(tgt[:2])
    keep = (f"the body grows {size} to {body}: make it keep the size (check its layers' padding)"
            if any(t > n for n, t in zip(s, tgt)) else f"the body maps {size} to {body}, not a whole stride")
    fix = projection_fix(s[:2], tgt[:2])
    return f"{keep}, or give the shortcut explicitly: residual(proj={fix})<…>" if fix else keep


def _default_projection(env: Env, span: Span) -> Thunk:
    """The default projection shortcut, 'conv1 bn' (torchvision's downsample), resolved in the
    environment where residual was written, and written (for its nodes and errors) where the
    residual is."""
    return Thunk(A.Seq(span, (A.Name(span, "conv1"), A.Name(span, "bn"))), env, span)


@dataclass(frozen=True)
class PartInfo:
    """Where a network was used as a part (graph.parts, by its scope's path): its model name
    (for its weight mapping), `until` and the stages cut off after it."""
    network: str
    until: str | None = None
    dropped: tuple = ()


def _unit_name(network: str) -> str:
    """The scope of a part outside a labelled stage: 'resnet18_1', 'keras_resnet50_1' (node names
    hold no '/', and a counter after a digit would read as one number)."""
    name = "".join(c if c.isalnum() or c == "_" else "_" for c in network)
    return name + "_" if name[-1:].isdigit() else name


def _stages(module: Module) -> list:
    """A network's named stages, in order."""
    return [st.name for st in module.stmts if isinstance(st, A.Labelled)]


def _stages_after(module: Module, until: str | None) -> tuple:
    stages = _stages(module)
    return () if until is None else tuple(stages[stages.index(until) + 1:])


def _preset(module: Module, preset: str | None) -> tuple:
    """The (named) arguments of a file's preset; () for none."""
    return next((st.values for st in module.stmts if isinstance(st, A.Preset) and st.name == preset), ())
