"""Questions about a Graph's structure, answered without JAX: which nodes some outputs depend
on, which node stands for a block ('layer3' -> its output node), and whether a name is either.
The lowering caches these per Program (compiler/lower.py); tools that only need the graph (the
language server, `archc graph`, sizes) can ask them without importing JAX."""
from __future__ import annotations

import difflib
from collections.abc import Iterable

from .ir import Graph


def needed(graph: Graph, outputs: Iterable[str], given: frozenset = frozenset()) -> frozenset:
    """The nodes that the given outputs depend on (themselves included), not looking past
    the ``given`` nodes (values computed before: a network run in two phases)."""
    nodes = graph.nodes
    seen, stack = set(), list(outputs)
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            if n not in given:
                stack.extend(nodes[n].inputs)
    return frozenset(seen)


def scopes(graph: Graph) -> dict[str, str]:
    """Block name -> the node that is the block's output: for every dotted prefix ('layer3',
    'layer3.1'), the one node inside it that is used outside it (or is a graph output); the last
    inside it if that is not a single node."""
    members: dict[str, list] = {}
    for node in graph:
        parts = node.name.split(".")
        for k in range(1, len(parts)):
            members.setdefault(".".join(parts[:k]), []).append(node.name)
    used_outside: dict[str, set] = {}
    for node in graph:
        for i in node.inputs:
            parts = i.split(".")
            for k in range(1, len(parts)):
                scope = ".".join(parts[:k])
                if not node.name.startswith(scope + "."):
                    used_outside.setdefault(scope, set()).add(i)
    outs = set(graph.outputs)
    found = {}
    for scope, names in members.items():
        if scope in graph.nodes:
            continue
        exits = used_outside.get(scope, set()) | (outs & set(names))
        found[scope] = next(iter(exits)) if len(exits) == 1 else names[-1]
    return found


def check_outputs(graph: Graph, block_outputs: dict[str, str], outputs) -> tuple[str, ...] | None:
    """Normalise ``outputs`` to a tuple of names (nodes, or blocks such as 'layer3', the keys of
    ``block_outputs``: what `scopes` returns), or raise a ValueError naming close matches for
    unknown ones."""
    if outputs is None:
        return None
    if isinstance(outputs, str):
        outputs = (outputs,)
    outputs = tuple(outputs)
    nodes = graph.nodes
    for name in outputs:
        if name not in nodes and name not in block_outputs:
            close = difflib.get_close_matches(name, list(block_outputs) + list(nodes), n=5, cutoff=0.6)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(f"model {graph.name!r} has no node or block named {name!r}{hint}")
    return outputs
