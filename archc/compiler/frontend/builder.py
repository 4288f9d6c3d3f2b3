"""The graph under construction: nodes named by their place in the spec (scopes for stages,
block instances and branches, counters for repeated names), each shape-checked by its op's rule
as it is added; and the frames of named tensors visible in a block body or the program."""
from __future__ import annotations

from dataclasses import dataclass, field

from ...spec.source import Span
from .. import ops
from ..ir import Graph, Node
from ..ops import ShapeError
from .combinators import COMBINATORS
from .values import fail

MAX_NODES = 100_000   # the largest built-in has ~3,000; generous for generated networks


def counted(prefix: str, n: int) -> str:
    """The n-th node or block instance named after ``prefix``: relu3, but relu6_1 (a prefix
    that ends in a digit takes a separator, so that the counter reads as one)."""
    return f"{prefix}_{n}" if prefix[-1:].isdigit() else f"{prefix}{n}"


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

    def join(self, part: str) -> str:
        return f"{self.scope.path}.{part}" if self.scope.path else part

    def fresh(self, prefix: str) -> str:
        counters = self.scope.counters
        while True:
            counters[prefix] = counters.get(prefix, 0) + 1
            name = self.join(counted(prefix, counters[prefix]))
            if name not in self.g.nodes and name not in self.used_scopes:
                return name

    def push(self, part: str, span: Span | None, stage: bool = False, exact: bool = True) -> None:
        path = self.join(part)
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
