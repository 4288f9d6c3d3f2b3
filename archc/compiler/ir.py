"""The IR: a typed DAG of ops with stable hierarchical names and source spans.

Shapes exclude the batch axis: (H, W, C) for feature maps, (C,) after flatten or global pooling.
Attributes are normalised: every padding is explicit ((top, bottom), (left, right)), so TF-style
'same' and ceil-mode pooling are resolved here, once, and lowering never guesses.
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
    attrs: dict
    shape: Shape
    span: Span | None = None

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "op": self.op,
            "inputs": list(self.inputs),
            "attrs": _jsonable(self.attrs),
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
            "nodes": [n.to_json() for n in self.nodes.values()],
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1)


def _jsonable(v: Any):
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v
