"""Elaboration that also records where each part of the graph came from, for the tools that
show the graph to people (the language server's hover, `archc graph`): what each written layer
produced, and which block each named instance (`layer3.2`, `inception3a`) is."""
from __future__ import annotations

from dataclasses import dataclass

from ..spec.source import Span
from .elaborate import Elaborator
from .ir import Graph


@dataclass
class Applied:
    """One application of a written layer: its input and output tensors, and the nodes it made
    (positions in the graph's insertion order)."""
    input: str
    output: str
    first: int
    last: int


class TracingElaborator(Elaborator):
    def __init__(self, graph: Graph):
        super().__init__(graph)
        self.applied: dict[Span, list] = {}      # a written layer's span -> its applications
        self.units: dict[str, tuple] = {}        # a block instance's name -> (block name, call span)
        opened = self.b.push_unit

        def push_unit(blockname: str, span: Span) -> bool:
            if opened(blockname, span):
                self.units.setdefault(self.b.scope.path, (blockname, span))
                return True
            return False
        self.b.push_unit = push_unit

    def apply(self, v, t, span, next_is_bn=False):
        first = len(self.b.g.nodes)
        out = super().apply(v, t, span, next_is_bn)
        where = getattr(v, "span", None) or span
        self.applied.setdefault(where, []).append(Applied(t, out, first, len(self.b.g.nodes)))
        return out
