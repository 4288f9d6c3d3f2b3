"""Model statistics from the IR alone (no JAX): parameter counts and multiply-accumulates.

`summarize(graph)` is what `archc build --json` prints and what `Model.summary()` returns.
"""
from __future__ import annotations

from . import ops
from .ir import Graph


def summarize(graph: Graph) -> dict:
    """Parameters (trainable / non-trainable, e.g. BatchNorm running statistics), MACs per
    example, and a per-node table. Shapes exclude the batch axis."""
    layers = []
    trainable = non_trainable = macs = 0
    for node in graph:
        t, n, m = ops.count(node, graph)
        trainable, non_trainable, macs = trainable + t, non_trainable + n, macs + m
        layers.append({"name": node.name, "op": node.op, "output_shape": list(node.shape),
                       "params": t + n, "macs": m})
    return {
        "name": graph.name,
        "input_shape": list(graph.input_shape),
        "output_shape": list(graph.output_shape),
        "total_params": trainable + non_trainable,
        "trainable_params": trainable,
        "non_trainable_params": non_trainable,
        "macs": macs,
        "layers": layers,
    }
