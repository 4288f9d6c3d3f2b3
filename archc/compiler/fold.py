"""Inference-time folding of batch norm into the conv or dense layer before it.

    y = gamma * (W*x + b - mean) / sqrt(var + eps) + beta
      = (W * s) * x + ((b - mean) * s + beta),   s = gamma / sqrt(var + eps)

A pure pass: (graph, variables) in, (graph, variables) out. A BN folds when its input is a conv
(not transposed) or dense node whose only consumer is that BN and which is not itself an output;
consumers, outputs and stage aliases of the BN then point at the folded layer, which keeps its name.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from .declarations import redirect_tensors
from .ir import Graph, readers, verify
from .ops import OPS


def foldable_pairs(graph: Graph) -> list[tuple[str, str]]:
    """(layer, bn) pairs that fold."""
    uses = readers(graph)
    pairs = []
    for node in graph:
        if node.op != "bn" or len(node.inputs) != 1:
            continue
        src = graph.nodes[node.inputs[0]]
        shared = src.shares or node.shares or any(n.shares == src.name for n in graph)   # one kernel, several uses
        if OPS[src.op].folds_bn and uses[src.name] == [node.name] and src.name not in graph.outputs and not shared:
            pairs.append((src.name, node.name))
    return pairs


def _redirect_intent(attrs, redirect: dict):
    """The size intent that names nodes (compiler/sizes.py) follows a folded BN into its layer."""
    if getattr(attrs, "stride_fit", None) in redirect:
        attrs = attrs.replace(stride_fit=redirect[attrs.stride_fit])
    if getattr(attrs, "fit", None):
        attrs = attrs.replace(fit=tuple(redirect.get(f, f) for f in attrs.fit))
    return attrs


def fold_batchnorm(graph: Graph, variables: dict) -> tuple[Graph, dict]:
    pairs = foldable_pairs(graph)
    if not pairs:
        return graph, variables
    params = {k: dict(v) for k, v in variables.get("params", {}).items()}
    stats = {k: dict(v) for k, v in variables.get("batch_stats", {}).items()}
    redirect = {}
    new_attrs = {}
    for layer, bn in pairs:
        a = graph.nodes[bn].attrs
        p, st = params.get(bn, {}), stats[bn]
        mean = np.asarray(st["mean"], np.float64)
        var = np.asarray(st["var"], np.float64)
        gamma = np.asarray(p["scale"], np.float64) if a.scale else np.ones_like(mean)
        beta = np.asarray(p["bias"], np.float64) if a.center else np.zeros_like(mean)
        s = gamma / np.sqrt(var + a.eps)
        lp = params[layer]
        kernel = np.asarray(lp["kernel"], np.float64)
        bias = np.asarray(lp["bias"], np.float64) if "bias" in lp else np.zeros_like(mean)
        dtype = np.asarray(lp["kernel"]).dtype
        params[layer] = {"kernel": (kernel * s).astype(dtype), "bias": ((bias - mean) * s + beta).astype(dtype)}
        params.pop(bn, None)
        stats.pop(bn)
        redirect[bn] = layer
        new_attrs[layer] = graph.nodes[layer].attrs.replace(bias=True)

    nodes = {}
    for node in graph:
        if node.name in redirect:
            continue
        nodes[node.name] = replace(node, inputs=tuple(redirect.get(i, i) for i in node.inputs),
                                   attrs=_redirect_intent(new_attrs.get(node.name, node.attrs), redirect))
    folded = Graph(graph.name, nodes, list(graph.inputs), [redirect.get(o, o) for o in graph.outputs],
                   dict(graph.params), {k: redirect.get(v, v) for k, v in graph.aliases.items()}, graph.sources,
                   {k: redirect_tensors(d, redirect) for k, d in graph.declarations.items()},
                   list(graph.size_reads), dict(graph.size_choices), dict(graph.parts))
    verify(folded)
    out = dict(variables)
    out["params"] = params
    if stats:
        out["batch_stats"] = stats
    else:
        out.pop("batch_stats", None)
    return folded, out
