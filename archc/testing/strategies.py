"""Hypothesis strategies for .arch networks (docs/testing.md). Needs hypothesis
(``pip install archc[testing]``).

* ``input_shapes(spec)``: input shapes the spec accepts (``exact=True``: where no floor drops
  a row), from the derived sizes (archc.compiler.sizes), not by trial;
* ``invalid_input_shapes(spec)``: near misses, sizes next to accepted ones that fail;
* ``programs()`` / ``blocks()``: random well-formed .arch source of configurable size and op
  mix, as a structured ``Program`` (``.text``) that a test can interpret independently;
* ``family_params(spec)``: settings of a family's parameters within their declared ranges
  (``param width = 1.0 in [0.25, 2.0]``; a list parameter's range is each element's).
"""
from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

from ..compiler import sizes as _sizes
from ..compiler.ir import Graph
from ..spec.source import ArchError

__all__ = ["Item", "Program", "Block", "programs", "blocks", "input_shapes", "invalid_input_shapes",
           "family_params", "OPS"]

OPS = ("conv", "pool", "act", "concat", "residual")
ACTIVATIONS = ("relu", "bn", "sigmoid", "relu6", "swish", "identity", "dropout(0.1)")


# ---------------------------------------------------------------------------------------------
# Random programs
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Item:
    """One generated layer: ('conv', c, k, s, p|None), ('pool', kind, k), ('act', text),
    ('concat', branches) or ('residual', body); branches and bodies are Programs."""
    kind: str
    args: tuple

    @property
    def text(self) -> str:
        a = self.args
        if self.kind == "conv":
            c, k, s, p = a
            return f"conv({c}, {k}, s={s}" + (f", p={p})" if p is not None else ")")
        if self.kind == "pool":
            return f"{a[0]}({a[1]})"
        if self.kind == "act":
            return a[0]
        if self.kind == "concat":
            return "concat(" + ", ".join(b.text for b in a[0]) + ")"
        return f"residual<{a[0].text}>"


@dataclass(frozen=True)
class Program:
    """A sequence of generated layers; ``text`` is its .arch source (one sequence)."""
    items: tuple

    @property
    def text(self) -> str:
        return " ".join(i.text for i in self.items)


@dataclass(frozen=True)
class Block:
    """A generated block definition: ``text`` defines it, ``name`` applies it."""
    name: str
    body: Program

    @property
    def text(self) -> str:
        return f"block {self.name} = {self.body.text}"


def _item(depth: int, max_depth: int, max_items: int, ops: tuple, channels: tuple):
    kinds = [k for k in ops if depth < max_depth or k not in ("concat", "residual")] or ["act"]

    def build(kind):
        if kind == "conv":
            return st.tuples(st.integers(*channels), st.sampled_from([1, 3, 5]), st.sampled_from([1, 2]),
                             st.sampled_from([None, 0, 1])).map(lambda a: Item("conv", a))
        if kind == "pool":
            return st.tuples(st.sampled_from(["maxpool", "avgpool"]), st.sampled_from([2, 3])).map(lambda a: Item("pool", a))
        if kind == "act":
            return st.sampled_from(ACTIVATIONS).map(lambda a: Item("act", (a,)))
        sub = programs(max_depth=max_depth, max_items=max_items, ops=ops, channels=channels, _depth=depth + 1)
        if kind == "concat":
            return st.lists(sub, min_size=2, max_size=3).map(lambda bs: Item("concat", (tuple(bs),)))
        return sub.map(lambda b: Item("residual", (b,)))
    return st.sampled_from(kinds).flatmap(build)


def programs(max_depth: int = 2, max_items: int = 4, ops: tuple = OPS, channels: tuple = (1, 24), *,
             _depth: int = 0) -> st.SearchStrategy:
    """Random well-formed layer sequences: up to `max_items` layers drawn from `ops` (conv, pool,
    act, concat, residual), concat branches and residual bodies nested up to `max_depth`. A
    program may still reject some input sizes (a kernel larger than a small input)."""
    unknown = set(ops) - set(OPS)
    if unknown:
        raise ValueError(f"programs() knows the ops {', '.join(OPS)}, not {', '.join(sorted(unknown))}")
    return st.lists(_item(_depth, max_depth, max_items, tuple(ops), channels), min_size=1,
                    max_size=max_items).map(lambda items: Program(tuple(items)))


def blocks(name: str = "generated", **kw) -> st.SearchStrategy:
    """Random block definitions `block NAME = <program>` (keyword arguments as for programs)."""
    return programs(**kw).map(lambda p: Block(name, p))


# ---------------------------------------------------------------------------------------------
# Input sizes
# ---------------------------------------------------------------------------------------------
def _graph_and_builder(spec, params):
    from ..compiler.build import build_graph
    if isinstance(spec, Graph):
        return spec, None
    if hasattr(spec, "graph"):                       # an archc Model
        return spec.graph, None

    def at(shape):
        try:
            return build_graph(spec, params, shape, advise=False)
        except ArchError:
            return None
    return build_graph(spec, params), at


def _members(spec, params, exact: bool, max_size: int | None):
    graph, at = _graph_and_builder(spec, params)
    rep = _sizes.report(graph, at)
    key = "exact" if exact else "valid"
    out = []
    for axis, name in enumerate(_sizes.AXES):
        limit = max_size or 2 * max(64, graph.input_shape[axis])
        sizes = sorted({n for g in rep[key][name]
                        for n in range(g["start"], min(limit, g["stop"] or limit) + 1, g["step"])})
        out.append((sizes, rep["valid"][name]))
    return graph, rep, out


def input_shapes(spec, exact: bool = False, max_size: int | None = None, params: dict | None = None):
    """Input shapes (H, W, C) the spec accepts (a built-in name, a path, a Graph or a Model;
    `params` for a name or path), sizes up to `max_size` (default: twice the declared size).
    With ``exact=True`` only sizes on which the network is exact. A square input stays square."""
    graph, rep, ((hs, _), (ws, _)) = _members(spec, params, exact, max_size)
    c = graph.input_shape[2]
    what = "exact" if exact else "valid"
    if not hs or not ws:
        raise ValueError(f"{graph.name} has no {what} input size up to the bound: "
                         f"{rep[what]['height'] or 'none'} / {rep[what]['width'] or 'none'}")
    if graph.input_shape[0] == graph.input_shape[1]:
        common = sorted(set(hs) & set(ws))
        if common:
            return st.sampled_from(common).map(lambda n: (n, n, c))
    return st.tuples(st.sampled_from(hs), st.sampled_from(ws)).map(lambda hw: (hw[0], hw[1], c))


def invalid_input_shapes(spec, params: dict | None = None, distance: int = 4):
    """Input shapes the spec rejects that are near accepted ones (within `distance` of a valid
    size on one axis, the other as declared): for negative tests."""
    graph, rep, axes = _members(spec, params, False, None)
    shapes = []
    for axis, (members, valid) in enumerate(axes):
        ok = set(members)
        top = max(members, default=0)
        for n in range(1, top + 1):
            if n not in ok and any(m in ok for m in range(n - distance, n + distance + 1)):
                shape = list(graph.input_shape)
                shape[axis] = n
                shapes.append(tuple(shape))
    if not shapes:
        raise ValueError(f"{graph.name} accepts every size near its valid ones: no invalid input shape to draw")
    return st.sampled_from(shapes)


# ---------------------------------------------------------------------------------------------
# Family parameters
# ---------------------------------------------------------------------------------------------
def family_params(spec) -> st.SearchStrategy:
    """Dicts {parameter: value} within the ranges the spec declares (`param x = d in [lo, hi]`);
    parameters without a range are left out (they keep their defaults). Integers stay integers,
    a list parameter keeps its length and draws each element in the range."""
    from ..compiler.elaborate import Elaborator, Env
    from ..compiler.resolve import resolve
    from ..spec import ast as A
    module = resolve(spec)
    el = Elaborator(Graph(module.name))
    env = Env()
    fields = {}
    for stmt in module.stmts:
        if not isinstance(stmt, A.Param) or stmt.range is None:
            continue
        lo, hi = el.param_range(stmt, env)
        default = el.value(stmt.default, env)

        def draw_number(like):
            if isinstance(like, int) and isinstance(lo, int) and isinstance(hi, int):
                return st.integers(lo, hi)
            return st.floats(float(lo), float(hi), allow_nan=False, allow_infinity=False)
        if isinstance(default, list):
            fields[stmt.name] = st.tuples(*(draw_number(x) for x in default)).map(list)
        else:
            fields[stmt.name] = draw_number(default)
    if not fields:
        raise ValueError(f"{module.display} declares no parameter range (e.g. 'param width = 1.0 in [0.25, 2.0]')")
    return st.fixed_dictionaries(fields)


def _hypothesis_setup_hook():
    """Registered through hypothesis's entry point: st.from_type(Program) draws programs()."""
    st.register_type_strategy(Program, programs())
    st.register_type_strategy(Block, blocks())
