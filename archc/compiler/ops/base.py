"""What every op definition is made of, and the registry that holds them.

An IR op is defined once (``OpDef``): its typed attributes, its shape rule, the variables it
reads (from which parameter counts, freezing, checkpoint pairing and the bf16 casts derive), its
multiply-accumulates, how checkpoint leaves map onto its variables, and the surface ops of the
language that bind to it (``Surface``: names, signature with defaults, ``bind``). Passes that
need JAX (the lowering) keep their own tables, filled next to their rules by decorator, and a
coverage test holds every table to this registry. Nothing here imports JAX.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from math import prod
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Protocol

Shape = tuple


class ShapeError(Exception):
    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


def fmt(shape) -> str:
    return "x".join(str(d) for d in shape)


def spatial(op: str, s) -> tuple:
    """The (H, W, C) of a feature-map input (shape rules and binds share this check)."""
    if len(s) != 3:
        raise ShapeError(f"{op} needs a feature map HxWxC, but its input is {fmt(s)}",
                         "it comes after a flatten or global pool; move it before them")
    return s


# ---------------------------------------------------------------------------------------------
# Typed attributes
# ---------------------------------------------------------------------------------------------
class Attrs:
    """Base of every op's frozen attribute dataclass. Values are normalised by ``bind`` (every
    padding explicit, every default filled in), so no pass restates a default."""

    def to_json(self) -> dict:
        # Optional fields that are None (an activation without alpha) are left out.
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)
                if getattr(self, f.name) is not None}

    def replace(self, **changes) -> "Attrs":
        return dataclasses.replace(self, **changes)


def attrs_class(cls):
    """``@attrs_class``: a frozen, slotted dataclass that is an Attrs."""
    return dataclass(frozen=True, slots=True)(cls)


@attrs_class
class NoAttrs(Attrs):
    pass


def _jsonable(v: Any):
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


# ---------------------------------------------------------------------------------------------
# Variables
# ---------------------------------------------------------------------------------------------
class Var(NamedTuple):
    """One variable an op reads, before it is placed under a node's name."""
    collection: str     # 'params' (trainable) | 'batch_stats' (state, not trained)
    leaf: str           # 'kernel', 'bias', 'scale', 'mean', 'var', 'count'
    shape: tuple
    init: str           # 'lecun_normal' | 'zeros' | 'ones' | 'constant'
    fan_in: int = 0     # for lecun_normal
    value: float = 0.0  # for constant


class VarSpec(NamedTuple):
    collection: str
    node: str
    leaf: str
    shape: tuple
    init: str
    fan_in: int = 0
    value: float = 0.0


# ---------------------------------------------------------------------------------------------
# Binding surface syntax to attributes
# ---------------------------------------------------------------------------------------------
class BindContext(Protocol):
    """What ``Surface.bind`` may ask of the front end (implemented by the elaborator): the input
    shape, located failure, and the value checks every op shares."""
    shape: tuple
    label: str
    next_is_bn: bool
    target: tuple | None     # the shape a projection shortcut must produce, or None
    target_node: str | None  # the node that has that shape (the residual body's output)

    def fail(self, message: str, hint: str | None = None, cascades: bool = False): ...
    def spatial(self) -> tuple: ...
    def int(self, v, what: str) -> int: ...
    def posint(self, v, what: str) -> int: ...
    def number(self, v, what: str) -> float: ...
    def pair(self, v, what: str, allow_zero: bool = False) -> tuple: ...
    def explicit4(self, p, what: str) -> tuple: ...
    def inferred_stride(self) -> int: ...


REQUIRED = ...          # a signature default meaning "must be given"


@dataclass(frozen=True)
class Surface:
    """A surface op of the language and how it binds to its IR op.

    ``names``: every spelling -> the arguments it presets (``conv3`` -> ``{'k': 3}``);
    ``signature``: parameters in positional order with defaults (REQUIRED: must be given);
    ``bind(args, ctx)`` -> the IR op's Attrs, or None for an op that adds no node (identity);
    ``label``: the naming prefix of its nodes (default: the surface kind; activations name
    their nodes by function). ``merge``: its positional arguments are branches (concat, add).
    ``tensors``: arguments that name tensors (``roi_align(@p3, …)``): the elaborator appends
    them to the node's inputs, after the chain's input, and ``bind`` sees their shapes.
    """
    kind: str
    signature: Mapping[str, Any]
    bind: Callable | None
    names: Mapping[str, Mapping] = field(default_factory=dict)
    params_doc: str = ""
    doc: str = ""
    label_from: str | None = None
    merge: bool = False
    tensors: tuple = ()       # arguments that are tensors (@name or a list of them): extra node inputs

    def label(self, preset: Mapping) -> str:
        return preset[self.label_from] if self.label_from else self.kind

    def rebinds(self, preset: Mapping) -> bool:
        """Kernel-size aliases (conv3) follow a rebinding of their base op ('let conv = …')."""
        return "k" in preset


def _no_variables(a, ins):
    return ()


def no_macs(a, ins, out):
    """The multiply-accumulates of an op that does none (a max, a copy, a sum, an elementwise
    op): stated by each such op, so that no op counts 0 by omission."""
    return 0


# How XLA runs an op's lowering, for the memory estimate (compiler/memory.py): 'library', a
# library call that reads its input from memory (conv, dense); 'elementwise', fused into its
# reader; 'recomputed', fused, and in the backward pass recomputed from its inputs rather than
# kept; 'buffer', written to memory (reductions, windows, copies).
FUSIONS = ("library", "elementwise", "recomputed", "buffer")


@dataclass(frozen=True)
class OpDef:
    """One IR op. ``shape(attrs, in_shapes) -> shape`` raises ShapeError; ``variables(attrs,
    in_shapes) -> [Var]``; ``macs(attrs, in_shapes, out_shape)``, required (``no_macs`` for an
    op without); ``geometry(attrs) -> (height's, width's)``: the spatial description of an op
    whose output extents follow from its input's, a Window or an Affine map per axis
    (ops/window.py), from which its shape rule and its size rule (compiler/sizes.py) derive;
    ``weights``: per checkpoint layout ('torch', 'keras'), a leaf rename {checkpoint leaf:
    variable leaf} or a function ``(leaf, array, attrs) -> (variable leaf, array) | None``;
    ``checkpoint_kind``: the kind of checkpoint module it pairs with in a [[sequence]] ('conv',
    'dense', 'bn'); ``folds_bn``: a following BN can be folded into its kernel (output channels
    on the kernel's last axis); ``fusion``: how XLA runs it (FUSIONS); ``profile_rank``: a
    profiled kernel that fuses several ops is named by its op of the lowest rank, the most
    expensive kind (runtime/profile.py); None: only when no ranked op is in it."""
    name: str
    attrs: type
    shape: Callable
    surfaces: tuple = ()
    variables: Callable = _no_variables
    macs: Callable | None = None
    geometry: Callable | None = None
    arity: tuple = (1, 1)
    weights: Mapping[str, Any] = field(default_factory=dict)
    checkpoint_kind: str | None = None
    folds_bn: bool = False
    stochastic: bool = False
    fusion: str = "buffer"
    profile_rank: int | None = None
    doc: str = ""


OPS: dict[str, OpDef] = {}
SURFACES: dict[str, tuple[Surface, OpDef]] = {}     # surface kind -> (surface, its op)
SPELLINGS: dict[str, tuple[str, dict]] = {}         # every name -> (surface kind, preset args)


def register(op: OpDef) -> OpDef:
    assert op.name not in OPS, op.name
    assert op.macs is not None, f"{op.name} states no macs (no_macs for an op without multiply-accumulates)"
    assert op.fusion in FUSIONS, (op.name, op.fusion)
    OPS[op.name] = op
    for s in op.surfaces:
        assert s.kind not in SURFACES, s.kind
        SURFACES[s.kind] = (s, op)
        for name, preset in (s.names or {s.kind: {}}).items():
            assert name not in SPELLINGS, name
            SPELLINGS[name] = (s.kind, dict(preset))
    return op


# ---------------------------------------------------------------------------------------------
# Rule tables: a pass's rules, registered beside their code and held to what they must cover
# ---------------------------------------------------------------------------------------------
def computing_ops() -> set:
    """The ops a pass computes (the input is bound from the arguments)."""
    return set(OPS) - {"input"}


def all_ops() -> set:
    return set(OPS)


class RuleTable(dict):
    """A pass's rules keyed by IR op (or activation) name; ``covers()`` is the set of names it
    must hold a rule for."""

    def __init__(self, what: str, covers: Callable[[], set]):
        super().__init__()
        self.what, self.covers = what, covers

    def missing(self) -> set:
        return self.covers() - set(self)

    def unknown(self) -> set:
        return set(self) - self.covers()


# Every rule table of every pass, filled by pass_rules itself: tests/test_registry.py holds each
# to what it covers, so a new table cannot be forgotten by the test.
RULE_TABLES: dict[str, RuleTable] = {}


def pass_rules(what: str, covers: Callable[[], set] = computing_ops, rules: Mapping | None = None
               ) -> tuple[RuleTable, Callable]:
    """A pass's table (IR op -> its rule for that op) and the decorator that fills it, so each
    rule is registered right beside its code: ``LOWERINGS, lowering = pass_rules("lowering")``,
    then ``@lowering("conv")`` (``@lowering("bn", "layernorm")``: one rule for several ops).
    ``covers``: the names it must cover (computing_ops, all_ops, or the activations' names);
    ``rules``: entries written as one literal table (small lambdas) instead of by decorator."""
    assert what not in RULE_TABLES, f"two rule tables named {what!r}"
    table = RULE_TABLES[what] = RuleTable(what, covers)

    def rule(*names: str):
        for name in names:
            assert name in covers() and name not in table, f"{what} for {name!r}: unknown or written twice"

        def register(fn):
            for name in names:
                table[name] = fn
            return fn
        return register
    for name, fn in (rules or {}).items():
        rule(name)(fn)
    return table, rule


def infer_shape(op: str, attrs: Attrs, in_shapes: list) -> tuple:
    definition = OPS[op]
    lo, hi = definition.arity
    if not lo <= len(in_shapes) <= hi:
        raise ShapeError(f"{op} takes {lo}{'' if hi == lo else ' or more'} input{'s' * (lo != 1)}, got {len(in_shapes)}")
    if not isinstance(attrs, definition.attrs):
        raise TypeError(f"{op} takes {definition.attrs.__name__}, not {type(attrs).__name__}")
    shape = definition.shape(attrs, in_shapes)
    if any(d < 1 for d in shape):
        raise ShapeError(f"{op} would produce the non-positive size {fmt(shape)} from {', '.join(fmt(s) for s in in_shapes)}",
                         "the input is too small for the downsampling before it; use a larger input or fewer strides")
    return shape


def node_variables(node, in_shapes) -> list[VarSpec]:
    """The variables a node owns (none when it shares another node's: ``Node.shares``)."""
    if getattr(node, "shares", None):
        return []
    return [VarSpec(v.collection, node.name, *v[1:]) for v in OPS[node.op].variables(node.attrs, in_shapes)]


def variable_specs(graph) -> list[VarSpec]:
    """Every variable the lowered graph has, in graph order."""
    specs = []
    for node in graph:
        specs.extend(node_variables(node, [tuple(graph.nodes[i].shape) for i in node.inputs]))
    return specs


def variables_tree(specs: Iterable[VarSpec], leaf: Callable) -> dict:
    """``{collection: {node: {leaf name: leaf(spec)}}}`` for variable specs, in their order."""
    tree: dict = {}
    for v in specs:
        tree.setdefault(v.collection, {}).setdefault(v.node, {})[v.leaf] = leaf(v)
    return tree


def count(node, graph) -> tuple:
    """(trainable, non_trainable, macs) of one node; parameter counts are its variables' sizes."""
    ins = [graph.nodes[i].shape for i in node.inputs]
    trainable = non_trainable = 0
    for v in ([] if getattr(node, "shares", None) else OPS[node.op].variables(node.attrs, ins)):
        if v.collection == "params":
            trainable += prod(v.shape)
        else:
            non_trainable += prod(v.shape)
    return trainable, non_trainable, OPS[node.op].macs(node.attrs, ins, node.shape)
