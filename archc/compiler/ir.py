"""The IR: a typed DAG of ops with stable hierarchical names and source spans.

Shapes exclude the batch axis: (H, W, C) for feature maps, (C,) after flatten or global pooling.
Each node's attributes are its op's frozen dataclass (compiler/ops), normalised by the op's
``bind``: every padding explicit ((top, bottom), (left, right)) -- TF-style 'same' and ceil-mode
pooling are resolved there, once -- and every default filled in, so no pass guesses or restates
one. ``verify`` holds any graph (elaborated, built by hand, or rewritten by a pass) to that.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..spec.source import Span

Shape = tuple


@dataclass(slots=True)
class Node:
    name: str
    op: str
    inputs: tuple            # names of input nodes
    attrs: Any               # the op's Attrs dataclass (compiler/ops)
    shape: Shape
    span: Span | None = None
    shares: str | None = None    # reuses this earlier node's variables (one RPN head on every FPN level)

    def to_json(self) -> dict:
        return ({"shares": self.shares} if self.shares else {}) | {
            "name": self.name,
            "op": self.op,
            "inputs": list(self.inputs),
            "attrs": self.attrs.to_json(),
            "shape": list(self.shape),
            "span": None if self.span is None else
            {"file": self.span.file, "line": self.span.line, "col": self.span.col},
        }


@dataclass
class Graph:
    name: str
    nodes: dict = field(default_factory=dict)      # name -> Node, in topological order
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)    # node names; the first is the primary output
    params: dict = field(default_factory=dict)     # family parameters it was built with
    aliases: dict = field(default_factory=dict)    # stage label -> the node that is its output
    sources: dict = field(default_factory=dict)    # file -> text, for diagnostics
    declarations: dict = field(default_factory=dict)  # kind -> frozen dataclass (compiler/declarations)
    # Choices the front end made from the input size that the nodes do not keep (compiler/sizes.py):
    size_reads: list = field(default_factory=list)    # spans where a value from hin/win decided a layer
    size_choices: dict = field(default_factory=dict)  # residual add -> span: identity shortcut (sizes kept)
    parts: dict = field(default_factory=dict)   # scope path -> PartInfo: networks used as parts

    def __iter__(self):
        return iter(self.nodes.values())

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]

    @property
    def input_shape(self) -> Shape:
        return self.nodes[self.inputs[0]].shape

    @property
    def output_shape(self) -> Shape:
        return self.nodes[self.outputs[0]].shape

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "params": _jsonable(self.params),
            "inputs": self.inputs,
            "outputs": self.outputs,
            "aliases": self.aliases,
            "declarations": {k: _declaration_json(d) for k, d in self.declarations.items()},
            "nodes": [n.to_json() for n in self.nodes.values()],
        } | ({"parts": {k: _jsonable(vars(p)) for k, p in self.parts.items()}} if self.parts else {})

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1)


def _declaration_json(d) -> dict:
    from .declarations import to_json
    return to_json(d)


def _jsonable(v: Any):
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def readers(graph: Graph) -> dict:
    """node -> the names of the nodes that read it, in graph order."""
    out: dict = {n: [] for n in graph.nodes}
    for node in graph:
        for i in node.inputs:
            out[i].append(node.name)
    return out


def verify(graph: Graph) -> Graph:
    """Check the IR's invariants; raise ValueError naming the first node that breaks one.

    Names are unique and match their keys, inputs come earlier (topological order), each
    node's attributes are its op's type, the arity fits, the shape rule reproduces the recorded
    shape, and the graph's inputs, outputs and stage aliases name nodes.
    """
    from . import ops
    seen: set = set()
    for key, node in graph.nodes.items():
        where = f"node {key!r} ({node.op})"
        if node.name != key:
            raise ValueError(f"{where} is stored under another name, {node.name!r}")
        if node.op not in ops.OPS:
            raise ValueError(f"{where}: unknown op")
        for i in node.inputs:
            if i not in seen:
                raise ValueError(f"{where} reads {i!r}, which is not an earlier node")
        try:
            shape = ops.infer_shape(node.op, node.attrs, [graph.nodes[i].shape for i in node.inputs])
        except (ops.ShapeError, TypeError) as e:
            raise ValueError(f"{where}: {e}") from None
        if tuple(shape) != tuple(node.shape):
            raise ValueError(f"{where} records shape {ops.fmt(node.shape)}, its rule gives {ops.fmt(shape)}")
        if node.shares is not None:
            owner = graph.nodes.get(node.shares)
            if owner is None or node.shares not in seen or owner.shares is not None:
                raise ValueError(f"{where} shares the variables of {node.shares!r}, which is not an earlier node with its own")
            if (owner.op, owner.attrs) != (node.op, node.attrs) or \
                    [graph.nodes[i].shape[-1] for i in owner.inputs] != [graph.nodes[i].shape[-1] for i in node.inputs]:
                raise ValueError(f"{where} shares the variables of {node.shares!r}, a different layer")
        seen.add(key)
    for what, names in (("input", graph.inputs), ("output", graph.outputs), ("alias", graph.aliases.values())):
        for n in names:
            if n not in graph.nodes:
                raise ValueError(f"the graph's {what} {n!r} is not a node")
    for n in graph.inputs:
        if graph.nodes[n].op != "input":
            raise ValueError(f"the graph's input {n!r} is a {graph.nodes[n].op} node")
    for kind, d in graph.declarations.items():
        for n in getattr(d, "tensors", lambda: ())():
            if n not in graph.nodes:
                raise ValueError(f"the {kind} declaration names {n!r}, which is not a node")
    return graph
