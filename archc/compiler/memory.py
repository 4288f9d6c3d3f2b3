"""Memory estimates from the IR alone (no JAX), as torchinfo users expect: parameter bytes,
activation bytes per image in inference (the peak of what is live at once) and in training
(what the backward pass keeps), optimizer state, and the largest batch that fits a budget.

The model of what XLA materialises: ops that XLA runs as library calls or reductions (conv,
dense, pools, concat, normalisations with statistics) write a buffer; elementwise ops (bn in
inference, activations, add, mul, scale, dropout) fuse into their consumer unless a consumer
is a library call (a convolution reads its input from memory), or the tensor is read twice.
A buffer lives from the node that writes it to the last node that reads it (through fused
ones). Training keeps, for the backward pass, every tensor a node's gradient reads: its
input for convs and dense layers, the input and output of pools, normalisations and
activations; plus one gradient buffer per parameter. tests/test_memory.py checks the totals
against ``compiled.memory_analysis()`` of XLA itself.
"""
from __future__ import annotations

import re
from math import prod

from . import ops
from .ir import Graph
from .ir import readers as graph_readers

LIBRARY_CALLS = {"conv", "conv_transpose", "dense"}
ELEMENTWISE = {"act", "bn", "scale", "dropout", "drop_path", "layer_scale", "rescale", "identity", "add", "mul",
               "normalize"}
# optimizer -> state floats per trainable parameter (optax: sgd with momentum keeps one trace,
# adam/adamw two moments, rmsprop one average, or two with momentum)
OPTIMIZER_STATE = {"sgd": 0, "momentum": 1, "nesterov": 1, "rmsprop": 1, "adam": 2, "adamw": 2, "lamb": 2}

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str) -> int:
    """'16GiB', '512MB', '2e9' -> bytes; ValueError with the accepted forms otherwise."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*", str(text).lower())
    if not m or m.group(2) not in _UNITS:
        raise ValueError(f"cannot read {text!r} as a memory size: write e.g. 16GiB, 512MB or 2e9")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def _bytes(shape, itemsize=4) -> int:
    return prod(shape) * itemsize


def materialised(graph: Graph, readers: dict | None = None, train: bool = False) -> set:
    """The nodes whose output XLA writes to memory (the rest fuse into their readers)."""
    readers = readers or graph_readers(graph)
    out = set()
    for node in graph:
        if node.op == "input":
            continue
        rs = readers[node.name]
        fused = node.op in ELEMENTWISE and not (train and node.op == "bn")
        if not fused or len(rs) != 1 or any(graph.nodes[r].op in LIBRARY_CALLS for r in rs) \
                or node.name in graph.outputs:
            out.add(node.name)
    return out


def inference_peak(graph: Graph, itemsize: int = 4) -> int:
    """Bytes per image live at once in inference: the largest sum of materialised buffers alive
    at any node (the input and the outputs are the program's arguments and results)."""
    readers = graph_readers(graph)
    kept = materialised(graph, readers)
    order = {n: i for i, n in enumerate(graph.nodes)}
    # a buffer ends at the last materialised node that reads it, directly or through fused ones
    end: dict = {}

    def last_use(name: str) -> int:
        if name in end:
            return end[name]
        last = order[name]
        for r in readers[name]:
            last = max(last, order[r] if r in kept else last_use(r))
        end[name] = last
        return last
    delta = [0] * (len(order) + 1)
    for name in graph.nodes:         # in order, so that last_use recurses forward only a little
        if name in kept and name not in graph.outputs:
            b = _bytes(graph.nodes[name].shape, itemsize)
            delta[order[name]] += b
            delta[last_use(name) + 1] -= b
    peak = live = 0
    for d in delta:
        live += d
        peak = max(peak, live)
    return peak


def training_kept(graph: Graph, itemsize: int = 4) -> int:
    """Bytes per image the backward pass keeps: what each node's gradient reads."""
    keep: set = set()
    for node in graph:
        if node.op in LIBRARY_CALLS:
            keep.update(node.inputs)
        elif node.op in ("pool", "adaptive_pool", "upsample", "act", "bn", "layernorm", "groupnorm", "lrn", "l2norm",
                         "normalize", "mul"):
            # XLA keeps both sides here (measured: keeping only what the math needs, relu's
            # output or bn's input, undercounts ResNet-18's training temporaries by a third)
            keep.update(node.inputs)
            keep.add(node.name)
        elif node.op in ("dropout", "drop_path"):
            keep.add(node.name)          # its mask, as large as its output
    return sum(_bytes(graph.nodes[n].shape, itemsize) for n in keep if graph.nodes[n].op != "input")


def estimate(graph: Graph, batch: int = 1, optimizer: str = "momentum", itemsize: int = 4) -> dict:
    """The memory figures of `graph` (bytes): parameters, non-trainable state, activations per
    image (inference peak, training kept), optimizer state, and the totals for `batch`."""
    trainable = state = 0
    for spec in ops.variable_specs(graph):
        size = prod(spec.shape) * itemsize
        if spec.collection == "params":
            trainable += size
        else:
            state += size
    if optimizer not in OPTIMIZER_STATE:
        raise ValueError(f"unknown optimizer {optimizer!r}: one of {', '.join(OPTIMIZER_STATE)}")
    io = _bytes(graph.input_shape, itemsize) + sum(_bytes(graph.nodes[o].shape, itemsize) for o in graph.outputs)
    infer, kept = inference_peak(graph, itemsize), training_kept(graph, itemsize)
    opt = {name: k * trainable for name, k in OPTIMIZER_STATE.items()}
    return {
        "param_bytes": trainable,
        "state_bytes": state,
        "io_bytes_per_image": io,
        "inference_activation_bytes_per_image": infer,
        "training_activation_bytes_per_image": kept,
        "optimizer_state_bytes": opt,
        "optimizer": optimizer,
        "batch": batch,
        "inference_bytes": trainable + state + batch * (io + infer),
        # parameters, their gradients, the optimizer's state, and the batch's kept activations
        "training_bytes": 2 * trainable + state + opt[optimizer] + batch * (io + kept),
    }


def largest_batch(graph: Graph, budget: int, optimizer: str = "momentum", itemsize: int = 4) -> dict:
    """The largest batch whose estimate fits `budget` bytes, in inference and in training (0: none)."""
    e = estimate(graph, 1, optimizer, itemsize)
    fixed_infer = e["param_bytes"] + e["state_bytes"]
    fixed_train = 2 * e["param_bytes"] + e["state_bytes"] + e["optimizer_state_bytes"][optimizer]
    per_infer = e["io_bytes_per_image"] + e["inference_activation_bytes_per_image"]
    per_train = e["io_bytes_per_image"] + e["training_activation_bytes_per_image"]
    return {"inference": max(0, (budget - fixed_infer) // max(1, per_infer)),
            "training": max(0, (budget - fixed_train) // max(1, per_train))}


def human(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"
