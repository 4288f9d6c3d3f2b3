"""The input sizes a network accepts, derived from its IR (``archc check --sizes``).

Each op states, per spatial axis, how an input extent n maps to its output extent (``@size_rule``
beside the op's other passes; tests/test_registry.py holds the table to OPS). The rules re-resolve
what the front end resolved for one size -- TF 'same' padding, ceil-mode pooling, a projection's
inferred stride, a merge's centre crop -- with the very functions the ops' binds use, from the
intent the IR keeps in the attributes (``padding_rule``, ``ceil``, ``stride_fit``, ``fit``,
``crop``). Two consumers share them:

* ``follow``: integer extents pushed through the IR for one size (pure Python, no elaboration):
  the brute-force checker, and where warnings and "imposed by" come from;
* ``derive``: the symbolic answer. The sizes are split into arithmetic progressions n = a + P·k on
  which every node's extent is affine in k; a window of stride s splits a piece by the residue of
  its extent mod s (its floor then divides), merges intersect their inputs' progressions (CRT) and
  are evaluated between the points where their inputs' extents cross. An op is exact when a
  stride s > 1 maps n to exactly n / s (its grid tiles the input), an adaptive pool's windows
  tile the input, and a centre crop is symmetric.

An axis is analysed with the other one held at the declared size. What a spec chose from the
input size outside the nodes (`hin`/`win` in an expression; a residual whose shortcut is the
identity because its body kept the size) cannot be re-propagated: the analysis says so and falls
back to a bounded search that elaborates the spec at each size.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Callable

from . import ops
from .ir import Graph
from .ops.conv import inferred_stride
from .ops.window import Affine, Window

SIZE_RULES, size_rule = ops.pass_rules("size rule", covers=ops.all_ops)
AXES = ("height", "width")
# An extent on an axis is an int: n >= 1, the axis's size; VEC, the axis is gone and the
# vector's length does not depend on it (a global pool); vector(L), a vector of L values whose
# length depends on the axis (after a flatten). vector(L) is stored as -L, so that the affine
# arithmetic of extents over a piece (e + Q·k, its slope negated as well) carries it unchanged;
# read it only through is_vector and vector_length.
VEC = 0


def vector(length: int) -> int:
    """The extent of a vector of `length` values (or the slope of such a length)."""
    return -length


def is_vector(e: int) -> bool:
    return e <= 0


def vector_length(e: int) -> int:
    return -e


class CannotDerive(Exception):
    """The analysis has no closed form here; the message says which node and why. `elaborate`:
    the IR cannot even be followed size by size (a choice the nodes do not keep)."""

    def __init__(self, message: str, elaborate: bool = False):
        super().__init__(message)
        self.elaborate = elaborate


# ---------------------------------------------------------------------------------------------
# Per-axis rules: apply(e) -> (output extent or None when invalid, exact); period() -> (m, q, lo):
# for every e >= lo the op is valid, out(e + m) = out(e) + q and exact(e + m) = exact(e); below
# lo it is invalid. tests/test_sizes.py checks each period claim against apply.
# ---------------------------------------------------------------------------------------------
class Keep:
    """Extent unchanged (elementwise ops, normalisations, 1x1 or size-keeping windows)."""
    keep = True


KEEP = Keep()


# Window and Affine (ops/window.py): an op's own spatial description (OpDef.geometry), read at
# every size.


@dataclass(frozen=True)
class Fixed:
    """Adaptive pooling to `out`: valid for n >= out; exact (no row is left out)."""
    out: int
    keep = False

    def apply(self, e):
        # its windows cover every row (overlapping where out does not divide e): nothing dropped
        return (self.out, True) if e >= self.out else (None, False)

    def period(self):
        return 1, 0, self.out



@dataclass(frozen=True)
class Flatten:
    """The axis leaves the shape: a vector of n·`per` values (per: the other axes times channels)."""
    per: int
    keep = False


@dataclass(frozen=True)
class Vanish:
    """The axis leaves the shape and the result does not depend on it (global pool; a dense
    layer after a flatten)."""
    keep = False


@dataclass(frozen=True)
class Reshape:
    values: int               # the values the target shape holds
    per: int                  # the input's values per unit of this axis (spatial input)
    out: int                  # the target's extent on this axis (VEC for a vector)
    keep = False


@dataclass(frozen=True)
class Merge:
    """add/mul ('broadcast': equal or 1), concat ('equal'; 'smallest': crop=true)."""
    kind: str
    keep = False
    identity_choice: bool = False   # a residual add whose shortcut the size made the identity


@dataclass(frozen=True)
class CropTo:
    """A merge's centre crop: to the smallest of the branches (inputs 1..); exact when symmetric."""
    fit: tuple
    keep = False


@dataclass(frozen=True)
class ResizeTo:
    """upsample(size=@t): the extent of input 1 (t); exact when it is a whole multiple of the
    input's (each source row repeated equally often)."""
    keep = False


@dataclass(frozen=True)
class StrideTo:
    """A projection conv whose stride was inferred from the body's output (input 1)."""
    target: str
    eff: int
    pad: tuple
    other: tuple              # (this conv's input, the target) on the other axis, as declared
    keep = False


def _geometry_rule(node, axis, graph):
    """An op with a spatial description (``OpDef.geometry``: conv, pools, conv_transpose, pad,
    crop, upsample): its own Window or Affine map on this axis."""
    g = ops.OPS[node.op].geometry(node.attrs)[axis]
    if isinstance(g, Window):
        if g.stride_fit is not None:
            return StrideTo(g.stride_fit, g.eff, g.pad, ())
        return KEEP if g.keeps_size() else g
    return g


@size_rule("crop")
def _(node, axis, graph):
    if node.attrs.fit is not None:
        return CropTo(tuple(node.attrs.fit))
    return _geometry_rule(node, axis, graph)


@size_rule("upsample")
def _(node, axis, graph):
    return _geometry_rule(node, axis, graph) if node.attrs.factor is not None else ResizeTo()


@size_rule("adaptive_pool")
def _(node, axis, graph):
    return Fixed(node.attrs.out[axis])


@size_rule("global_pool")
def _(node, axis, graph):
    return Fixed(1) if node.attrs.keepdims else Vanish()


@size_rule("flatten")
def _(node, axis, graph):
    s = graph.nodes[node.inputs[0]].shape
    return Flatten(math.prod(s) // s[axis]) if len(s) == 3 else KEEP


@size_rule("dense")
def _(node, axis, graph):
    return KEEP if len(graph.nodes[node.inputs[0]].shape) == 3 else Vanish()


@size_rule("reshape")
def _(node, axis, graph):
    s = graph.nodes[node.inputs[0]].shape
    t = node.attrs.shape
    return Reshape(math.prod(t), math.prod(s) // s[axis] if len(s) == 3 else 0, t[axis] if len(t) == 3 else VEC)


@size_rule("concat")
def _(node, axis, graph):
    return Merge("smallest" if node.attrs.crop else "equal")


for _op in ops.OPS.values():
    if _op.geometry is not None and _op.name not in SIZE_RULES:
        size_rule(_op.name)(_geometry_rule)

for _op in ("roi_align", "roi_pool"):
    # R x PH x PW x C whatever the image's size (the RoIs are in image pixels)
    size_rule(_op)(lambda node, axis, graph: Vanish())

for _op in ("add", "mul"):
    @size_rule(_op)
    def _(node, axis, graph):
        return Merge("broadcast", identity_choice=node.name in graph.size_choices)

for _op in ("input", "act", "scale", "dropout", "drop_path", "layer_scale", "rescale", "identity", "bn", "lrn",
            "l2norm", "normalize", "layernorm", "groupnorm", "shuffle", "slice"):
    size_rule(_op)(lambda node, axis, graph: KEEP)


# ---------------------------------------------------------------------------------------------
# The compiled form of a graph for one axis: the nodes whose rule is not Keep, with inputs
# resolved through the Keep nodes (most of a network).
# ---------------------------------------------------------------------------------------------
@dataclass
class Step:
    name: str
    rule: object
    inputs: tuple             # representative node names
    node: object


@dataclass
class Plan:
    graph: Graph
    axis: int
    steps: list
    alias: dict               # node -> the node whose extent it has
    sinks: tuple              # representatives of the nodes no one reads, the primary output first
    declared: int


def plan(graph: Graph, axis: int) -> Plan:
    if len(graph.input_shape) != 3:
        raise CannotDerive("the input has no spatial axes")
    for extra in graph.inputs[1:]:
        # a further input (a two-stage detector's proposals, R x 4) is given as it is, whatever
        # the image's size: a constant of the analysis, as long as it has no spatial axes
        if len(graph.nodes[extra].shape) == 3:
            raise CannotDerive(f"the network has a second image-like input ({extra}); the analysis follows "
                               "the sizes of the first input only")
    alias, steps, read, pads, ones = {}, [], set(), {}, set()
    for node in graph:
        rule = SIZE_RULES[node.op](node, axis, graph)
        ins = tuple(alias[i] for i in node.inputs)
        read.update(node.inputs)
        if node.op == "input":
            alias[node.name] = node.name
            continue
        if isinstance(rule, Merge) and rule.kind == "broadcast":
            # an input that is 1 at every size (a kept global pool: squeeze-and-excitation) broadcasts
            ins = tuple(i for i in ins if i not in ones) or ins[:1]
        if getattr(rule, "keep", False) or (isinstance(rule, Merge) and len(set(ins)) == 1 and rule.kind != "smallest"):
            alias[node.name] = ins[0]
            continue
        if isinstance(rule, Fixed) and rule.out == 1:
            ones.add(node.name)
        if isinstance(rule, StrideTo):
            other = 1 - axis
            rule = StrideTo(rule.target, rule.eff, rule.pad,
                            (graph.nodes[node.inputs[0]].shape[other], graph.nodes[rule.target].shape[other]))
            ins = ins + (alias[rule.target],)
        elif isinstance(rule, CropTo):
            ins = ins + tuple(alias[f] for f in rule.fit)
        elif isinstance(rule, Window) and ins[0] in pads:
            rule = dataclasses.replace(rule, padded=pads[ins[0]])
        if node.op == "pad":
            pads[node.name] = rule.add
        alias[node.name] = node.name
        steps.append(Step(node.name, rule, ins, node))
    sinks = [alias[graph.outputs[0]]] + [alias[n] for n in graph.nodes if n not in read and n != graph.outputs[0]]
    return Plan(graph, axis, steps, alias, tuple(dict.fromkeys(sinks)), graph.input_shape[axis])


# ---------------------------------------------------------------------------------------------
# Following one size
# ---------------------------------------------------------------------------------------------
@dataclass
class Followed:
    n: int
    valid: bool
    exact: bool
    out: int | None = None           # the primary output's extent on this axis (VEC, vector(L), or a size)
    failed: str | None = None        # the first node that rejects the size
    inexact: list = field(default_factory=list)   # (node, input extent, output extent)
    unknown: str | None = None       # a node at which the IR cannot say (a choice it does not keep)
    extents: dict | None = None      # with keep=True: every step's extent


def _apply_merge(rule: Merge, ins):
    if rule.kind == "broadcast":
        if all(is_vector(e) for e in ins):
            return (ins[0] if len(set(ins)) == 1 else None), True
        sizes = {e for e in ins if e != 1}
        if len(sizes) > 1 or any(is_vector(e) for e in ins):
            return None, False
        return (sizes.pop() if sizes else 1), True
    if all(is_vector(e) for e in ins):        # concatenated vectors: the lengths add
        return (VEC if all(e == VEC for e in ins) else vector(sum(map(vector_length, ins)))), True
    if rule.kind == "smallest":
        t = min(ins)
        return t, all((e - t) % 2 == 0 for e in ins)
    return (ins[0], True) if len(set(ins)) == 1 else (None, False)


def apply_step(step: Step, ins):
    """(output extent or None, exact) of one step for its inputs' extents."""
    rule = step.rule
    if isinstance(rule, Merge):
        return _apply_merge(rule, ins)
    e = ins[0]
    if isinstance(rule, Vanish):
        return VEC, True
    if isinstance(rule, Flatten):
        return vector(e * rule.per), True
    if isinstance(rule, Reshape):
        values = vector_length(e) if is_vector(e) else e * rule.per
        return (rule.out, True) if e == VEC or values == rule.values else (None, False)
    if isinstance(rule, ResizeTo):
        t = ins[1]
        return (t, t % e == 0) if e >= 1 and t >= 1 else (None, False)
    if isinstance(rule, CropTo):
        t = min(ins[1:])
        return (t, (e - t) % 2 == 0) if 1 <= t <= e else (None, False)
    if isinstance(rule, StrideTo):
        t = ins[1]
        hw, tgt = [e, rule.other[0]], [t, rule.other[1]]
        st = inferred_stride(tuple(hw), tuple(tgt))
        if st is None:
            return None, False
        return Window(rule.eff, st, rule.pad).apply(e)
    if is_vector(e):
        return None, False
    return rule.apply(e)


def follow(p: Plan, n: int, keep: bool = False) -> Followed:
    """Size n on the plan's axis pushed through the IR (the other axis as declared)."""
    ext = {p.graph.inputs[0]: n, **{i: VEC for i in p.graph.inputs[1:]}}
    res = Followed(n, True, True)
    for step in p.steps:
        ins = [ext[i] for i in step.inputs]
        if isinstance(step.rule, Merge) and step.rule.identity_choice and len(set(ins)) > 1:
            res.unknown = step.name
            res.valid = res.exact = False
            return res
        out, ex = apply_step(step, ins)
        if out is None:
            res.valid = res.exact = False
            res.failed = step.name
            return res
        if not ex:
            res.exact = False
            res.inexact.append((step.name, ins[0], out))
        ext[step.name] = out
    res.out = ext[p.sinks[0]]
    if keep:
        res.extents = ext
    return res


# ---------------------------------------------------------------------------------------------
# The symbolic derivation
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Piece:
    """Sizes n = a + P·k (k >= 0, n <= stop) on which a node's extent is e + Q·k."""
    a: int
    P: int
    stop: int | None
    e: int
    Q: int
    exact: bool

    def contains(self, n: int) -> bool:
        return n >= self.a and (n - self.a) % self.P == 0 and (self.stop is None or n <= self.stop)


def _single(step: Step, pieces, inexact: set):
    rule = step.rule
    out = []
    if isinstance(rule, (Vanish, Flatten, Reshape)):
        for pc in pieces:
            if isinstance(rule, Flatten):
                out.append(Piece(pc.a, pc.P, pc.stop, vector(pc.e * rule.per), vector(pc.Q * rule.per), pc.exact))
            elif isinstance(rule, Vanish):
                out.append(Piece(pc.a, pc.P, pc.stop, VEC, 0, pc.exact))
            elif pc.e == VEC:
                out.append(Piece(pc.a, pc.P, pc.stop, rule.out, 0, pc.exact))
            else:
                raise CannotDerive(f"{step.name} reshapes a tensor whose size depends on the input")
        return out
    m, q, lo = rule.period()
    for pc in pieces:
        if pc.Q == 0:
            o, ex = rule.apply(pc.e)
            if o is not None:
                out.append(Piece(pc.a, pc.P, pc.stop, o, 0, pc.exact and ex))
                if pc.exact and not ex:
                    inexact.add(step.name)
            continue
        k0 = max(0, -((pc.e - lo) // pc.Q)) if pc.e < lo else 0
        a, e = pc.a + pc.P * k0, pc.e + pc.Q * k0
        if pc.stop is not None and a > pc.stop:
            continue
        t = m // math.gcd(pc.Q, m)
        for r in range(t):
            ar = a + pc.P * r
            if pc.stop is not None and ar > pc.stop:
                break
            o, ex = rule.apply(e + pc.Q * r)
            if o is None:
                raise CannotDerive(f"{step.name}: its size rule is not periodic from {lo}")
            out.append(Piece(ar, pc.P * t, pc.stop, o, q * (pc.Q * t // m), pc.exact and ex))
            if pc.exact and not ex:
                inexact.add(step.name)
    return out


def _crt(a1, p1, a2, p2):
    """The smallest n >= max(a1, a2) with n = a1 mod p1 and n = a2 mod p2, and lcm(p1, p2); None if none."""
    g = math.gcd(p1, p2)
    if (a2 - a1) % g:
        return None
    lcm = p1 // g * p2
    # n = a1 + p1·x with p1·x = a2 - a1 (mod p2)
    x = ((a2 - a1) // g * pow(p1 // g, -1, p2 // g)) % (p2 // g) if p2 // g > 1 else 0
    n = a1 + p1 * x
    lo = max(a1, a2)
    if n < lo:
        n += -((n - lo) // lcm) * lcm
    return n, lcm


@dataclass
class Combo:
    """A progression shared by several inputs, with each input's extent c + d·j on it."""
    a: int
    L: int
    stop: int | None
    fs: list                  # [(c, d)]
    exact: bool


def _intersect(combos, pieces):
    by_step: dict = {}
    for pc in pieces:
        by_step.setdefault(pc.P, {}).setdefault(pc.a % pc.P, []).append(pc)
    out = []
    for cb in combos:
        for P, residues in by_step.items():
            cands = residues.get(cb.a % P, ()) if cb.L % P == 0 else [x for xs in residues.values() for x in xs]
            for pc in cands:
                hit = _crt(cb.a, cb.L, pc.a, pc.P)
                if hit is None:
                    continue
                a, L = hit
                stop = min((s for s in (cb.stop, pc.stop) if s is not None), default=None)
                if stop is not None and a > stop:
                    continue
                jo, ko = (a - cb.a) // cb.L, (a - pc.a) // pc.P
                fs = [(c + d * jo, d * (L // cb.L)) for c, d in cb.fs]
                fs.append((pc.e + pc.Q * ko, pc.Q * (L // pc.P)))
                out.append(Combo(a, L, stop, fs, cb.exact and pc.exact))
    return out


def _combos(input_pieces):
    combos = [Combo(pc.a, pc.P, pc.stop, [(pc.e, pc.Q)], pc.exact) for pc in input_pieces[0]]
    for pieces in input_pieces[1:]:
        combos = _intersect(combos, pieces)
    return combos


def _breakpoints(step: Step, fs, jmax):
    """The j at which the step's behaviour may change (evaluated one by one); beyond the last,
    between two, it is affine with period `period` in j."""
    pts = set()
    rule = step.rule
    values = [1] if isinstance(rule, Merge) and rule.kind == "broadcast" else []
    lines = [(c, d) for c, d in fs]
    for i, (c1, d1) in enumerate(lines):
        for v in values:
            if d1 and (v - c1) % d1 == 0 and (v - c1) // d1 >= 0:
                pts.add((v - c1) // d1)
        for c2, d2 in lines[i + 1:]:
            if d1 != d2:
                x = (c2 - c1) / (d1 - d2)
                if x >= -1:
                    pts.update(range(max(0, math.floor(x) - 1), math.ceil(x) + 2))
    if isinstance(rule, StrideTo):
        (c0, d0), (c1, d1) = fs
        if (d1 == 0 and d0 == 0) or (jmax is not None and jmax <= 64):
            pts.update(range(0, 1 + (jmax or 0)))
        elif d1 > 0 and d0 % d1 == 0:
            S = d0 // d1
            threshold = abs(S * c1 - c0) + S + 2
            jt = max(0, -((c1 - threshold) // d1))
            pts.update(range(0, jt + 1))
        else:
            raise CannotDerive(f"{step.name}: its inferred stride follows no fixed ratio of sizes")
    if isinstance(rule, ResizeTo):
        (c0, d0), (c1, d1) = fs
        if jmax is not None and jmax <= 64:
            pts.update(range(0, jmax + 1))          # a short piece: each point on its own
        elif d0 > 0 and d1 % d0 == 0:
            # t - m·e = k is constant: t % e == k % e, zero at every j (k = 0) or only while e <= |k|
            k = abs(c1 - d1 // d0 * c0)
            pts.update(range(0, max(0, -((c0 - k - 1) // d0)) + 1))
        elif d0 or (c0 > 0 and d1 % c0):
            # (a constant input whose multiple the target steps over is periodic, not handled)
            raise CannotDerive(f"{step.name} resizes to a size that is no fixed multiple of its input's")
    if jmax is not None:
        pts = {p for p in pts if p <= jmax}
    return sorted(pts)


def _joint(step: Step, input_pieces, inexact: set):
    rule = step.rule
    out = []
    crops = isinstance(rule, CropTo) or (isinstance(rule, Merge) and rule.kind == "smallest")
    for cb in _combos(input_pieces):
        # a crop's symmetry is the parity of a difference of extents: constant unless slopes differ by an odd number
        period = 2 if crops and len({d % 2 for c, d in cb.fs}) > 1 else 1
        if any((is_vector(c) and c != VEC) or d < 0 for c, d in cb.fs) and not all(d == 0 for c, d in cb.fs):
            raise CannotDerive(f"{step.name} merges vectors whose length depends on the input")
        if isinstance(rule, Merge) and rule.identity_choice and len(set(cb.fs)) > 1:
            raise CannotDerive(f"the residual at {step.node.span} has an identity shortcut because its body keeps "
                               "the declared size, which it does not at every size", elaborate=True)
        jmax = None if cb.stop is None else (cb.stop - cb.a) // cb.L
        pts = _breakpoints(step, cb.fs, jmax)
        segments, cur = [], 0
        for bp in pts:
            if bp > cur:
                segments.append((cur, bp - 1))
            segments.append((bp, bp))
            cur = bp + 1
        if jmax is None or cur <= jmax:
            segments.append((cur, jmax))
        for j0, j1 in segments:
            for r in range(period if j1 is None or j1 > j0 else 1):
                js = j0 + r
                if j1 is not None and js > j1:
                    continue
                o0, ex = apply_step(step, [c + d * js for c, d in cb.fs])
                if o0 is None:
                    continue
                slope = 0
                if j1 is None or js + period <= j1:
                    o1, ex1 = apply_step(step, [c + d * (js + period) for c, d in cb.fs])
                    if o1 is None or ex1 != ex:
                        raise CannotDerive(f"{step.name}: no periodic form between its breakpoints")
                    slope = o1 - o0
                a = cb.a + cb.L * js
                stop = None if j1 is None else cb.a + cb.L * j1
                if j1 is not None and js + period > j1:
                    stop = a
                out.append(Piece(a, cb.L * period, stop, o0, slope, cb.exact and ex))
                if cb.exact and not ex:
                    inexact.add(step.name)
    return out


@dataclass
class Derived:
    """One axis's answer: pieces of the sizes accepted, with the primary output's extent."""
    plan: Plan
    pieces: list
    inexact: set              # nodes that make some size inexact
    bounded: int | None = None   # set when found by a bounded search instead (the largest size searched)
    why: str | None = None       # why there is no closed form

    def __post_init__(self):
        self.valid = Membership(self.pieces)
        self.exact = Membership([p for p in self.pieces if p.exact])


class Membership:
    """n in a union of pieces, answered by residue: {step: {residue: smallest start}} for the
    unbounded pieces, the bounded ones as a set."""

    def __init__(self, pieces):
        self.tails: dict = {}
        self.points: set = set()
        for p in pieces:
            if p.stop is None:
                r = self.tails.setdefault(p.P, {})
                r[p.a % p.P] = min(r.get(p.a % p.P, p.a), p.a)
            else:
                self.points.update(range(p.a, p.stop + 1, p.P))

    def __call__(self, n: int) -> bool:
        if n in self.points:
            return True
        for P, r in self.tails.items():
            a = r.get(n % P)
            if a is not None and n >= a:
                return True
        return False


def derive(p: Plan) -> Derived:
    pieces = {p.graph.inputs[0]: [Piece(1, 1, None, 1, 1, True)],
              **{i: [Piece(1, 1, None, VEC, 0, True)] for i in p.graph.inputs[1:]}}
    inexact: set = set()
    for step in p.steps:
        ins = [pieces[i] for i in step.inputs]
        if isinstance(step.rule, Vanish) and len(ins) > 1:
            # an op whose output no longer depends on the axis (a RoI op on its feature maps):
            # defined wherever all its inputs are
            pieces[step.name] = [Piece(cb.a, cb.L, cb.stop, VEC, 0, cb.exact) for cb in _combos(ins)]
        elif len(ins) == 1 and not isinstance(step.rule, (Merge, CropTo, StrideTo, ResizeTo)):
            pieces[step.name] = _single(step, ins[0], inexact)
        else:
            pieces[step.name] = _joint(step, ins, inexact)
    sinks = [pieces[s] for s in p.sinks]
    if len(sinks) > 1:
        final = [Piece(cb.a, cb.L, cb.stop, cb.fs[0][0], cb.fs[0][1], cb.exact) for cb in _combos(sinks)]
    else:
        final = sinks[0]
    return Derived(p, final, inexact)


def bounded(p: Plan, sizes, why: str, elaborate: Callable | None = None) -> Derived:
    """The answer for the given sizes only, by trying each: through `follow`, or by elaborating
    the spec at each size (`elaborate(n) -> Graph or None`) where the IR cannot be re-propagated."""
    pieces, inexact = [], set()
    for n in sizes:
        if elaborate is not None:
            g = elaborate(n)
            if g is None:
                continue
            r = follow(plan(g, p.axis), n)        # g's own nodes, resolved at n
        else:
            r = follow(p, n)
        if not r.valid:
            continue
        inexact.update(name for name, _, _ in r.inexact)
        pieces.append(Piece(n, 1, n, r.out, 0, r.exact))
    return Derived(p, pieces, inexact, bounded=list(sizes), why=why)


# ---------------------------------------------------------------------------------------------
# Presenting sets of sizes
# ---------------------------------------------------------------------------------------------
def progressions(member: Callable, pieces: list, cap: int = 1 << 16) -> list:
    """The set {n : member(n)} (a union of `pieces`' progressions) as [{start, step, stop}]:
    infinite progressions of the smallest period first, then what is left, in runs."""
    infinite = [p for p in pieces if p.stop is None]
    ends = [p.a for p in infinite] + [p.stop for p in pieces if p.stop is not None] + [1]
    L = 1
    for p in infinite:
        L = math.lcm(L, p.P)
    if L > cap:
        raise CannotDerive(f"the sizes repeat only every {L}")
    T = max(ends) + 1
    out = []
    covered: set = set()
    if infinite:
        tail = [member(T + i) for i in range(L)]
        d = next(d for d in range(1, L + 1) if L % d == 0 and all(tail[i] == tail[i % d] for i in range(L)))
        for r in range(d):
            if not tail[r]:
                continue
            s = T + r
            while s - d >= 1 and member(s - d):
                s -= d
            out.append({"start": s, "step": d, "stop": None})
            covered.update(range(s, T + L, d))
    rest = [n for n in range(1, T + L) if n not in covered and member(n)]
    i = 0
    while i < len(rest):
        j = i
        while j + 1 < len(rest) and rest[j + 1] == rest[j] + 1:
            j += 1
        out.append({"start": rest[i], "step": 1, "stop": rest[j]})
        i = j + 1
    return sorted(out, key=lambda g: (g["start"], g["step"]))


def _in(g, n):
    return n >= g["start"] and (n - g["start"]) % g["step"] == 0 and (g["stop"] is None or n <= g["stop"])


def nearest(member: Callable, n: int, limit: int) -> list:
    """The closest sizes to n (below and above, n itself when it is one) that are members."""
    if member(n):
        return [n]
    found = []
    for d in range(1, limit):
        for m in (n - d, n + d):
            if m >= 1 and member(m):
                found.append(m)
        if found:
            below = [m for m in range(n - 1, 0, -1) if member(m)][:1] if not any(m < n for m in found) else []
            above = [] if any(m > n for m in found) else [m for m in range(n + d + 1, n + limit) if member(m)][:1]
            return sorted(set(found + below + above))
    return found


def _expr(slope_num, slope_den, offset_num, offset_den, var):
    """slope·var + offset as text, fractions reduced: 'H − 184', 'H/32', '3·H + 1'."""
    from fractions import Fraction
    s, o = Fraction(slope_num, slope_den), Fraction(offset_num, offset_den)
    if s == 0:
        return str(o)
    term = var if s == 1 else (f"{s.numerator}·{var}" if s.denominator == 1 else
                               (f"{var}/{s.denominator}" if s.numerator == 1 else f"{s.numerator}·{var}/{s.denominator}"))
    if o == 0:
        return term
    return f"{term} {'+' if o > 0 else '−'} {abs(o)}"


def output_expr(pc: Piece, var: str) -> str:
    """The output extent on a piece as a function of the input size."""
    if pc.e == VEC:
        return "vector"
    sign = -1 if is_vector(pc.e) else 1
    # extent = e + Q·(n − a)/P
    from fractions import Fraction
    slope = Fraction(sign * pc.Q, pc.P)
    offset = sign * pc.e - slope * pc.a
    text = _expr(slope.numerator, slope.denominator, offset.numerator, offset.denominator, var)
    return f"{text} values" if sign < 0 else text


def _at(node) -> str | None:
    return str(node.span) if node is not None and node.span is not None else None


def describe_progression(g, var, declared: int | None = None) -> str:
    """'H = 16k + 188 (k ≥ 0; 188, 204, 220, …, 572, …)', 'H ≥ 63', '1 ≤ H ≤ 9', 'H = 7'."""
    a, s, b = g["start"], g["step"], g["stop"]
    if b is not None and a == b:
        return f"{var} = {a}"
    if s == 1:
        return f"{var} ≥ {a}" if b is None else f"{a} ≤ {var} ≤ {b}"
    first = [a + s * i for i in range(3) if b is None or a + s * i <= b]
    listed = ", ".join(map(str, first))
    if declared is not None and declared > first[-1] and _in(g, declared):
        listed += f", …, {declared}"
    cond = "k ≥ 0" if b is None else f"0 ≤ k ≤ {(b - a) // s}"
    return f"{var} = {s}k + {a} ({cond}; {listed}, …)"


# ---------------------------------------------------------------------------------------------
# The report (archc check --sizes)
# ---------------------------------------------------------------------------------------------
SEARCH_LIMIT = 1024         # the bounded search's range when there is no closed form
ELABORATE_AROUND = 32       # … when each size must be elaborated: 1..this and the declared ± this


def analyse(graph: Graph, axis: int, elaborate: Callable | None = None) -> Derived:
    """One axis: the symbolic derivation, or a bounded search where it has no closed form
    (`elaborate(n) -> Graph | None` builds the spec at size n on this axis)."""
    p = plan(graph, axis)
    n = p.declared
    around = sorted(set(range(1, ELABORATE_AROUND + 1)) | set(range(max(1, n - ELABORATE_AROUND), n + ELABORATE_AROUND + 1)))
    if graph.size_reads:
        why = f"the layers depend on the input size through hin/win (at {graph.size_reads[0]})"
        if elaborate is None:
            raise CannotDerive(why, elaborate=True)
        return bounded(p, around, why, elaborate)
    try:
        return derive(p)
    except CannotDerive as e:
        if not e.elaborate:
            return bounded(p, range(1, SEARCH_LIMIT + 1), str(e))
        if elaborate is None:
            raise
        return bounded(p, around, str(e), elaborate)


def _symmetric(graph: Graph) -> bool:
    """Height and width behave alike: a square input and every rule the same on both axes."""
    if len(graph.input_shape) != 3 or graph.input_shape[0] != graph.input_shape[1]:
        return False
    try:
        a, b = plan(graph, 0), plan(graph, 1)
    except CannotDerive:
        return False
    return [(s.name, s.rule, s.inputs) for s in a.steps] == [(s.name, s.rule, s.inputs) for s in b.steps]


def report(graph: Graph, elaborate_at: Callable | None = None, at: tuple | None = None) -> dict:
    """What `archc check --sizes --json` prints: per axis (height, width) `valid`, `exact`
    (progressions {start, step, stop}), `min`, `constraints` (node, source position, what),
    `output` (the output's extent on each exact progression, as an expression of the input)
    and `nearest` (valid and exact sizes closest to the declared input); `cannot_derive` says
    why an axis fell back to a bounded search and which sizes it searched.
    ``elaborate_at(shape) -> Graph | None`` elaborates the spec at another input shape (used
    only by that fallback). `at`: the input shape the nearest sizes are measured from (one the
    spec may reject, kept as `at`), instead of the declared one."""
    out: dict = {k: {} for k in ("valid", "exact", "min", "constraints", "output", "nearest")}
    notes = {}
    same = _symmetric(graph)
    for axis, name in enumerate(AXES):
        if axis == 1 and same:      # the width's answer is the height's, written in W
            for k in out:
                out[k]["width"] = copy.deepcopy(out[k]["height"])
            for row in out["output"]["width"]:
                outs = row["out"] if isinstance(row["out"], list) else [row["out"]]
                outs = [re.sub(r"\bH\b", "W", o) for o in outs]
                row["out"] = outs if isinstance(row["out"], list) else outs[0]
            if "height" in notes:
                notes["width"] = notes["height"]
            break
        elaborate = None
        if elaborate_at is not None:
            def elaborate(n, axis=axis):
                shape = list(graph.input_shape)
                shape[axis] = n
                return elaborate_at(tuple(shape))
        d = analyse(graph, axis, elaborate)
        var = name[0].upper()
        valid, exact = progressions(d.valid, d.pieces), progressions(d.exact, [p for p in d.pieces if p.exact])
        if d.bounded is not None:
            notes[name] = {"reason": d.why, "searched": progressions(set(d.bounded).__contains__,
                                                                     [Piece(n, 1, n, 0, 0, True) for n in d.bounded])}
        declared = (at or graph.input_shape)[axis]
        out["valid"][name], out["exact"][name] = valid, exact
        out["min"][name] = valid[0]["start"] if valid else None
        out["constraints"][name] = constraints(d, valid)
        out["output"][name] = outputs(d, exact, var)
        limit = 4 * max(64, declared)
        out["nearest"][name] = {"valid": nearest(d.valid, declared, limit), "exact": nearest(d.exact, declared, limit)}
    if notes:
        out["cannot_derive"] = notes
    if at is not None:
        out["at"] = list(at)
    return out


def constraints(d: Derived, valid: list) -> list:
    """For each constraint: the node and source position that imposes it."""
    p, g = d.plan, d.plan.graph
    rows = []
    if valid and valid[0]["start"] > 1 and (d.bounded is None or valid[0]["start"] - 1 in d.bounded):
        r = follow(p, valid[0]["start"] - 1)
        if r.failed:
            node = g.nodes[r.failed]
            rows.append({"kind": "min", "node": r.failed, "at": _at(node),
                         "text": f"needs {AXES[p.axis]} ≥ {valid[0]['start']} (at {valid[0]['start'] - 1} its input is too small)"})
    order = {s.name: i for i, s in enumerate(p.steps)}
    for name in sorted(d.inexact, key=lambda n: order.get(n, 0)):
        step = p.steps[order[name]] if name in order else None
        rule = step.rule if step else None
        if isinstance(rule, Window):
            text = f"stride {rule.stride}: exact when its input is a multiple of {rule.stride}"
        elif isinstance(rule, Fixed):
            text = f"adaptive pool to {rule.out}: exact when its input is a multiple of {rule.out}"
        elif isinstance(rule, (CropTo, Merge)):
            text = "centre crop: symmetric when the sizes differ by an even number"
        elif isinstance(rule, StrideTo):
            text = "inferred projection stride: exact when it divides its input"
        else:
            text = "inexact at some sizes"
        rows.append({"kind": "exact", "node": name, "at": _at(g.nodes.get(name)), "text": text})
    return rows


def outputs(d: Derived, groups: list, var: str) -> list:
    """The primary output's extent as a function of the input on each progression (a list of
    the functions met where it is not one)."""
    shape = d.plan.graph.output_shape
    rows = []
    for grp in groups:
        members = [grp["start"] + grp["step"] * i for i in range(4)]
        exprs = []
        for n in members:
            if grp["stop"] is not None and n > grp["stop"]:
                break
            pc = next(pc for pc in sorted(d.pieces, key=lambda q: not q.exact) if pc.contains(n))
            text = ops.fmt(shape) if pc.e == VEC else output_expr(pc, var)
            if d.bounded is not None and pc.e > 0:
                text = str(pc.e)
            exprs.append(text)
        exprs = list(dict.fromkeys(exprs))
        rows.append({**grp, "out": exprs[0] if len(exprs) == 1 else exprs})
    return rows


def render(graph: Graph, rep: dict) -> str:
    """The human text of a report, one paragraph per axis."""
    lines = []
    for axis, name in enumerate(AXES):
        var = name[0].upper()
        exact, valid = rep["exact"][name], rep["valid"][name]
        cons = rep["constraints"][name]
        imposed = next((c for c in reversed(cons) if c["kind"] == "exact"), None)
        note = rep.get("cannot_derive", {}).get(name)
        if note:
            searched = ", ".join(f"{g['start']}..{g['stop']}" for g in note["searched"])
            lines.append(f"{name}: cannot derive a closed form: {note['reason']}; searched {var} = {searched} only")
        if exact:
            outs = {json_key(o): o["out"] for o in rep["output"][name]}
            for grp in exact[:3]:
                o = outs.get(json_key(grp))
                tail = f", out = {o}" if isinstance(o, str) else ""
                by = f"; imposed by {imposed['node']} at {imposed['at']}" if imposed else ""
                lines.append(f"{name}: exact for {describe_progression(grp, var, graph.input_shape[axis])}{tail}{by}")
            if len(exact) > 3:
                lines.append(f"{name}: … and {len(exact) - 3} more exact progressions (--json lists them)")
        else:
            lines.append(f"{name}: exact for no size" + (f" (first inexact: {imposed['node']} at {imposed['at']})"
                                                          if imposed else ""))
        if valid:
            mins = next((c for c in cons if c["kind"] == "min"), None)
            by = f", imposed by {mins['node']} at {mins['at']}" if mins else ""
            shown = ", ".join(describe_progression(g, var) for g in valid[:3]) + (", …" if len(valid) > 3 else "")
            lines.append(f"{name}: valid for {shown} (smallest {rep['min'][name]}{by})")
        else:
            lines.append(f"{name}: no size checks")
        near = rep["nearest"][name]
        given = rep.get("at", graph.input_shape)[axis]
        said = f"declared {given}" if "at" not in rep else (f"given {given}" if given in near["valid"] else
                                                            f"given {given} is not valid")
        lines.append(f"{name}: {said}: nearest valid {_list(near['valid'])}, nearest exact {_list(near['exact'])}")
    return "\n".join(lines)


def advice(graph: Graph, shape: tuple, elaborate_at: Callable | None = None) -> str | None:
    """For an input shape the spec rejects, from the analysis of `graph` (the spec at its own
    input): the nearest valid (and exact) input shapes, and the smallest valid one.
    None where the shape's height and width are valid (the error is not the size's) or the
    analysis cannot say."""
    if len(graph.input_shape) != 3 or len(shape) != 3:
        return None
    valid, exact, smallest = [], [], []
    try:
        for axis in range(2):
            elaborate = None
            if elaborate_at is not None:
                def elaborate(n, axis=axis):
                    return elaborate_at(tuple(n if a == axis else d for a, d in enumerate(graph.input_shape)))
            d = analyse(graph, axis, elaborate)
            n, limit = shape[axis], 4 * max(64, shape[axis])
            valid.append(nearest(d.valid, n, limit))
            exact.append(nearest(d.exact, n, limit))
            smallest.append(next((m for m in range(1, limit) if d.valid(m)), None))
    except CannotDerive:
        return None
    if all(shape[a] in valid[a] for a in range(2)):
        return None

    def shapes(per_axis):
        hs, ws = per_axis
        pairs = list(zip(hs, ws)) if hs == ws and shape[0] == shape[1] else [(h, w) for h in hs for w in ws]
        return ", ".join(f"{h}x{w}x{shape[2]}" for h, w in pairs) if hs and ws else "none"
    least = f"{smallest[0]}x{smallest[1]}x{shape[2]}" if None not in smallest else "none"
    near = shapes(valid) + (" (exact)" if valid == exact else f" (the nearest exact: {shapes(exact)})")
    return f"{graph.name} does not take {ops.fmt(shape)}; the nearest inputs it takes: {near}; the smallest: {least}"


def json_key(g):
    return (g["start"], g["step"], g["stop"])


def _list(xs):
    return ", ".join(map(str, xs)) if xs else "none"


# ---------------------------------------------------------------------------------------------
# Warnings for archc check/build: the declared input is valid but not exact
# ---------------------------------------------------------------------------------------------
def inexact_warnings(graph: Graph) -> list:
    """One line per axis on which the declared input is valid but not exact: which nodes drop
    or unevenly crop which rows, and the nearest exact sizes. Empty when exact, and where the
    IR cannot say (the spec chose layers from hin/win)."""
    if len(graph.input_shape) != 3 or graph.size_reads:
        return []
    out = []
    for axis, name in enumerate(AXES):
        try:
            p = plan(graph, axis)
        except CannotDerive:
            return []
        n = graph.input_shape[axis]
        r = follow(p, n)
        if not r.valid or r.exact:
            continue
        rules = {s.name: s.rule for s in p.steps}
        what = "rows" if axis == 0 else "columns"
        parts = [f"{node} ({_at(graph.nodes[node])}) {_loss(rules[node], e, o, what)}" for node, e, o in r.inexact[:3]]
        more = f" and {len(r.inexact) - 3} more" if len(r.inexact) > 3 else ""
        exact = nearest(lambda m: follow(p, m).exact, n, 4 * max(64, n))
        hint = f"nearest exact {name}: {_list(exact)}" if exact else f"no {name} near it is exact"
        out.append(f"{name} {n} is not exact: {'; '.join(parts)}{more}; {hint}")
    return out


def _loss(rule, e, o, what) -> str:
    if isinstance(rule, (CropTo, Merge)):
        return f"crops {e} to {o} unevenly"
    if isinstance(rule, Window):
        data, lost = e - rule.padded, rule.left_out(e, o)
        tail = f", leaving out the last {lost} {what if lost > 1 else what[:-1]}" if lost else ""
        return f"maps {data} to {o}, not {data}/{rule.stride}{tail}"
    return f"maps {e} to {o}"


# ---------------------------------------------------------------------------------------------
# Symbolic shapes: archc check --input HxWx3, Model.symbolic_shape()
# ---------------------------------------------------------------------------------------------
def _single_tail(groups: list):
    """The one unbounded progression of a set, when the set is one ({start, step}), else None."""
    return groups[0] if len(groups) == 1 and groups[0]["stop"] is None else None


def symbolic_text(graph: Graph, letters: dict, rep: dict) -> str:
    """'resnet50: HxWx3 -> 1000 for H = 32k + 32, W = 32k + 32 (k ≥ 0, exact); checks for H ≥ 1, W ≥ 1'.
    `letters`: axis -> the letter the user gave it."""
    dims = [letters.get(a, str(d)) for a, d in enumerate(graph.input_shape)]
    out_dims, conds, valid = [], [], []
    out = graph.output_shape
    for axis, name in enumerate(AXES):
        if axis not in letters:
            continue
        var = letters[axis]
        exact, ok = rep["exact"][name], rep["valid"][name]
        grp = _single_tail(exact)
        if grp is not None:
            conds.append(f"{var} = {grp['step']}k + {grp['start']}" if grp["step"] > 1 else f"{var} ≥ {grp['start']}")
        valid.append(", ".join(describe_progression(g, var) for g in ok[:2]) + (", …" if len(ok) > 2 else "") or f"no {var}")
    for axis, d in enumerate(out):
        if len(out) == 3 and axis < 2 and axis in letters:
            o = next((r["out"] for r in rep["output"][AXES[axis]]), None)
            out_dims.append(f"({o.replace(AXES[axis][0].upper(), letters[axis])})" if isinstance(o, str) and " " in o
                            else o.replace(AXES[axis][0].upper(), letters[axis]) if isinstance(o, str) else "?")
        else:
            out_dims.append(str(d))
    where = f" for {', '.join(conds)} (k ≥ 0, exact)" if conds else " (exact for no size)"
    return f"{graph.name}: {'x'.join(dims)} -> {'x'.join(out_dims)}{where}; checks for {'; '.join(valid)}"


def symbolic_shape(graph: Graph, batch: str = "b") -> tuple:
    """The input's ``jax.export.symbolic_shape`` specification and its constraints: a symbolic
    batch, and each spatial axis symbolic where its exact sizes are one progression (the sizes
    on which the network's shapes follow one formula), else as declared: e.g. ResNet-50's
    ('b, 32*h, 32*w, 3', ()). Raises CannotDerive where the analysis has no closed form."""
    if len(graph.input_shape) != 3:
        return f"{batch}, {graph.input_shape[0]}", ()
    rep = report(graph)
    if "cannot_derive" in rep:
        raise CannotDerive("; ".join(f"{k}: {v['reason']}" for k, v in rep["cannot_derive"].items()))
    dims, constraints = [batch], []
    for axis, name in enumerate(AXES):
        grp = _single_tail(rep["exact"][name])
        sym = name[0]
        if grp is None:
            dims.append(str(graph.input_shape[axis]))
            continue
        s, a = grp["step"], grp["start"]
        # n = s·k + a (k >= 0) written with a symbol >= 1: s·sym + (a - s)
        off = a - s
        dims.append(f"{s}*{sym}" + (f" + {off}" if off > 0 else f" - {-off}" if off < 0 else "") if s > 1
                    else (sym if a <= 1 else f"{sym} + {a - 1}"))
    dims.append(str(graph.input_shape[2]))
    return ", ".join(dims), tuple(constraints)
