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


def shape_text(shape) -> str:
    return "x".join(str(d) for d in shape)


def render_table(s: dict, graph) -> str:
    """The layer table and totals of `archc build` (and `Model.summary()`), as Keras prints it."""
    rows = [(l["name"], l["op"], shape_text(l["output_shape"]), f"{l['params']:,}") for l in s["layers"]]
    heads = ("Layer", "Op", "Output shape", "Param #")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
    line = "  ".join
    out = [f'Model: "{s["name"]}"', "─" * (sum(widths) + 6),
           line(h.ljust(w) for h, w in zip(heads, widths)), "─" * (sum(widths) + 6)]
    for r in rows:
        out.append(line([r[0].ljust(widths[0]), r[1].ljust(widths[1]), r[2].ljust(widths[2]), r[3].rjust(widths[3])]))
    out.append("─" * (sum(widths) + 6))
    out += [f"Total params: {s['total_params']:,}", f"Trainable params: {s['trainable_params']:,}",
            f"Non-trainable params: {s['non_trainable_params']:,}",
            f"MACs: {s['macs']:,} ({s['macs'] / 1e9:.3f} G)",
            f"Input: {shape_text(s['input_shape'])}   Output: {shape_text(s['output_shape'])}"]
    if len(graph.outputs) > 1:
        out.append("Outputs: " + ", ".join(f"{o} ({shape_text(graph.nodes[o].shape)})" for o in graph.outputs))
    return "\n".join(out)
