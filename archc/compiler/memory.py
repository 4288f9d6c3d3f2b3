"""Memory estimates from the IR alone (no JAX), as torchinfo users expect: parameter bytes,
activation bytes per image in inference (the peak of what is live at once) and in a training
step (the peak of what it holds), optimizer state, and the largest batch that fits a budget.

The model of what XLA materialises (each op's ``OpDef.fusion``): ops that XLA runs as library
calls or reductions (conv, dense, pools, concat, normalisations with statistics) write a
buffer; elementwise ops (bn in inference, activations, add, mul, scale, dropout) fuse into
their consumer unless a consumer is a library call (a convolution reads its input from memory),
or the tensor is read twice. A buffer lives from the node that writes it to the last node that
reads it (through fused ones, and through chains of concatenations, which XLA flattens into
one). Training walks the step as XLA schedules it (training_schedule): each op's backward reads
the tensors its saved rule names (``@saved_rule``, one for every op), as XLA:CPU runs our
lowering (a lax conv's input transposed, a depthwise conv's input, BN's input and centred
input, ...); the backward pass frees them node by node while activation gradients come and go;
the peak of that walk, plus one parameter-sized set of buffers, is the step's temporary memory.
A conv whose kernel window covers more cells than its input adds a reversed copy of its kernel
(kernel_workspace).
tests/test_memory.py checks the totals against ``compiled.memory_analysis()`` of XLA itself.
"""
from __future__ import annotations

import re
from math import prod

from . import ops
from .ir import Graph
from .ir import readers as graph_readers
from .ops.conv import cpu_conv_path, useful_taps
from .ops.pool import cpu_pool_separable

# optimizer (`archc build --optimizer`) -> state floats per trainable parameter, as optax keeps
# them: sgd none, sgd with momentum (or nesterov) one trace, rmsprop one average (without
# momentum: `archc train`'s rmsprop, Inception's, adds a momentum trace), adam/adamw/lamb two moments
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


def _fusion(node) -> str:
    return ops.OPS[node.op].fusion


def materialised(graph: Graph, readers: dict | None = None, train: bool = False) -> set:
    """The nodes whose output XLA writes to memory (the rest fuse into their readers)."""
    readers = readers or graph_readers(graph)
    out = set()
    for node in graph:
        if node.op == "input":
            continue
        rs = readers[node.name]
        fused = _fusion(node) in ("elementwise", "recomputed") and not (train and node.op == "bn")
        if not fused or len(rs) != 1 or any(_fusion(graph.nodes[r]) == "library" for r in rs) \
                or node.name in graph.outputs:
            out.add(node.name)
    return out


def buffer_ends(graph: Graph, readers: dict, kept: set) -> dict:
    """Node -> the index of the last node that reads its buffer: directly, through readers fused
    into theirs, or through a chain of concatenations, which XLA flattens into one
    (concat(concat(a, b), c) -> concat(a, b, c): DenseNet's block keeps every layer's output
    until the block's last concatenation)."""
    order = {n: i for i, n in enumerate(graph.nodes)}
    end: dict = {}

    def last_use(name: str) -> int:
        if name in end:
            return end[name]
        last = order[name]
        for r in readers[name]:
            if r not in kept:
                last = max(last, last_use(r))
            elif graph.nodes[r].op == "concat":
                # the flattened concatenation reads the pieces, not the inner one
                if graph.nodes[name].op != "concat":
                    last = max(last, concat_end(r))
            else:
                last = max(last, order[r])
        end[name] = last
        return last

    def concat_end(name: str) -> int:
        return max([order[name]] + [concat_end(r) for r in readers[name] if graph.nodes[r].op == "concat"])
    for name in graph.nodes:         # in order, so that last_use recurses forward only a little
        last_use(name)
    return end


def inference_peak(graph: Graph, itemsize: int = 4) -> int:
    """Bytes per image live at once in inference: the largest sum of materialised buffers alive
    at any node (the input and the outputs are the program's arguments and results)."""
    readers = graph_readers(graph)
    kept = materialised(graph, readers)
    order = {n: i for i, n in enumerate(graph.nodes)}
    end = buffer_ends(graph, readers, kept)
    delta = [0] * (len(order) + 1)
    for name in graph.nodes:
        if name in kept and name not in graph.outputs:
            b = _bytes(graph.nodes[name].shape, itemsize)
            delta[order[name]] += b
            delta[end[name] + 1] -= b
    peak = live = 0
    for d in delta:
        live += d
        peak = max(peak, live)
    return peak


# What each op's backward pass reads, as XLA:CPU runs our lowering (compiler/lower.py), found
# in the buffer assignment of compiled training steps (XLA_FLAGS=--xla_dump_to; BENCHMARKS.md
# lists the networks): rule(node, in_shapes, graph) -> [(tensor, elements)], a tensor named
# (producer, what) so that two readers of one value count it once. Every op states its rule
# (``saves_nothing``: add, concat, flatten, avg pools, ...; tests/test_registry.py holds the
# table to OPS). Not yet checked against a dump, and written from the math: conv_transpose,
# layernorm, groupnorm, layer_scale, lrn, l2norm, normalize, global and adaptive max pools, and
# the RoI ops.
SAVED, saved_rule = ops.pass_rules("saved tensors (memory)")


def _value(name, shape):
    return ((name, "value"), prod(shape))


@saved_rule("add", "concat", "flatten", "reshape", "shuffle", "slice", "pad", "crop", "upsample", "identity",
            "scale", "rescale", "drop_path")
def saves_nothing(node, ins, graph):
    """Linear in its input (or a copy), or a per-sample constant: its gradient reads nothing
    (bilinear upsampling's weights are constants of the sizes)."""
    return []


@saved_rule("dense", "layer_scale", "normalize")
def saves_input(node, ins, graph):
    return [_value(node.inputs[0], ins[0])]


@saved_rule("lrn", "l2norm")
def saves_input_and_output(node, ins, graph):
    return [_value(node.inputs[0], ins[0]), _value(node.name, node.shape)]


@saved_rule("conv", "conv_transpose")
def _conv_saved(node, ins, graph):
    path = cpu_conv_path(node.attrs, (1,) + tuple(ins[0])) if node.op == "conv" else None
    x = node.inputs[0]
    if path == "depthwise":        # its input only (_depthwise's VJP slices the gradient instead)
        return [_value(x, ins[0])]
    if path == "pointwise":        # the input transposed (C, N*H*W), strided first (_pointwise)
        transposed = [((x, "transposed"), prod(node.shape[:-1]) * ins[0][-1])]
        # measured: a concatenation read here is kept as well (SqueezeNet's fire outputs,
        # GoogLeNet's inception outputs); an elementwise input is recomputed instead
        return transposed + ([_value(x, ins[0])] if graph.nodes[x].op == "concat" else [])
    if path == "im2col":           # the patch matrix transposed (taps*C, N*h*w), as _pointwise's
        a = node.attrs
        taps = len(useful_taps(ins[0][:2], a.kernel, a.strides, a.dilation, a.padding))
        return [((x, "patches"), prod(node.shape[:-1]) * taps * ins[0][-1])]
    if path == "im2col_grad":      # its input, from which the backward builds the patches
        return [_value(x, ins[0])]
    # lax's convolution (pad_crop too: XLA folds the added row and column into the window):
    # the weight gradient reads the input transposed (C, H, W, N), written in the forward pass
    return [((x, "transposed"), prod(ins[0]))]


@saved_rule("pool")
def _pool_saved(node, ins, graph):
    if node.attrs.kind == "avg":
        return []                  # a sum: its gradient reads nothing
    if not cpu_pool_separable(node.attrs):
        # reduce_window's gradient: the padded input, the argmax (four int32 indices an
        # output cell) and the output
        (h, w, c), ((pt, pb), (pl, pr)), ((et, eb), (el, er)) = ins[0], node.attrs.padding, node.attrs.extra
        return [((node.name, "padded"), (h + pt + pb + et + eb) * (w + pl + pr + el + er) * c),
                ((node.name, "argmax"), 4 * prod(node.shape)), ((node.name, "out"), prod(node.shape))]
    # max over shifted slices: XLA keeps the output and recomputes the comparisons from the
    # input, kept for its producer's own backward (a conv's output before its ReLU)
    return [((node.name, "out"), prod(node.shape))]


@saved_rule("global_pool", "adaptive_pool")
def _reduce_pool_saved(node, ins, graph):
    return [] if node.attrs.kind == "avg" else [_value(node.inputs[0], ins[0])]


@saved_rule("bn", "layernorm", "groupnorm")
def _norm_saved(node, ins, graph):        # the input, and the centred input x - mean
    return [_value(node.inputs[0], ins[0]), ((node.name, "centred"), prod(ins[0]))]


def _grad_from_output(node) -> bool:
    return node.op == "act" and ops.ACTIVATIONS[node.attrs.fn].grad_from == "output"


@saved_rule("act")
def _act_saved(node, ins, graph):
    act = ops.ACTIVATIONS[node.attrs.fn]
    if act.grad_from == "output":
        return [_value(node.name, node.shape)]
    # XLA duplicates cheap elementwise ops into each reader but not transcendental ones: swish's
    # sigmoid (GELU's erf, ...) is written once in the forward pass and kept for the backward
    inner = [((node.name, "inner"), prod(node.shape))] if act.transcendental else []
    return [_value(node.inputs[0], ins[0])] + inner


@saved_rule("mul")
def _mul_saved(node, ins, graph):             # each factor's gradient reads the others
    return [_value(n, s) for n, s in zip(node.inputs, ins)]


@saved_rule("dropout")
def _dropout_saved(node, ins, graph):
    # the Bernoulli mask, one byte an element (counted in float32 elements)
    return [((node.name, "mask"), -(-prod(node.shape) // 4))]


@saved_rule("roi_align")
def _roi_align_saved(node, ins, graph):
    # what the VJP of kernels.roi_align keeps (jax.ad_checkpoint.print_saved_residuals): per
    # RoI, each sample's four taps (an int32 cell index and a float weight each) and three
    # output-sized values of its scan. XLA's backward also holds the taps' gradients while it
    # runs (measured: about 2 x 4 x samples x C a RoI), not counted here
    a = node.attrs
    grid = a.sampling if a.sampling > 0 else 2
    rois, (ph, pw), c = node.shape[0], node.shape[1:3], node.shape[-1]
    return [((node.name, "taps"), rois * ph * pw * grid * grid * 4 * 2),
            ((node.name, "scan"), rois * 3 * ph * pw * c)]


@saved_rule("roi_pool")
def _roi_pool_saved(node, ins, graph):
    # what the VJP of kernels.roi_pool keeps, per RoI: its two maxima (over each bin's
    # columns, then rows) are taken over the masked map, and a max's gradient reads where its
    # input equals its output: the masked inputs (float) and their masks (bool, a quarter of a
    # float), (PW, H, W, C) and (PH, PW, H, C), the column maxima (PW, H, C) and the output
    # with its empty-bin mask. Measured: 3.94 MB a RoI on a 38x38x64 map, as counted here
    rois, (ph, pw), (h, w, c) = node.shape[0], node.shape[1:3], ins[1]
    masked = pw * h * w * c + ph * pw * h * c + ph * pw * c
    return [((node.name, "masked"), rois * (masked + masked // 4 + pw * h * c))]


def _depthwise_workspace(node, ins):
    """Elements a node's backward pass holds only while it runs: a CPU depthwise conv's VJP
    writes the padded, stride-dilated gradient and k*k - 1 shifted slices of it, each the
    input's size, as operands of the weight gradient's reductions (they do not fuse a slice)."""
    if node.op != "conv" or cpu_conv_path(node.attrs, (1,) + tuple(ins[0])) != "depthwise":
        return 0
    (h, w, c), (kh, kw), (dh, dw) = ins[0], node.attrs.kernel, node.attrs.dilation
    return (h + dh * (kh - 1)) * (w + dw * (kw - 1)) * c + (kh * kw - 1) * h * w * c


def _recomputed(graph: Graph, tensors: list) -> list:
    """XLA fuses an elementwise op into its readers in the backward pass too: rather than keep
    its output it keeps what it is computed from (an activation's input, BN's centred input)."""
    out, todo = [], list(tensors)
    while todo:
        (name, what), elems = todo.pop()
        node = graph.nodes[name]
        if what == "value" and _fusion(node) == "recomputed" and not _grad_from_output(node):
            todo.extend(_value(i, graph.nodes[i].shape) for i in node.inputs)
        elif what == "value" and node.op == "bn":
            todo.append(((name, "centred"), prod(node.shape)))
        else:
            out.append(((name, what), elems))
    return out


def trained_nodes(graph: Graph) -> list:
    """The nodes a training step on the primary output runs (auxiliary heads are cut away)."""
    need, todo = set(), [graph.outputs[0]]
    while todo:
        n = todo.pop()
        if n not in need:
            need.add(n)
            todo.extend(graph.nodes[n].inputs)
    return [n for n in graph.nodes if n in need]


def training_schedule(graph: Graph, itemsize: int = 4) -> list:
    """Walk a training step as XLA schedules it: the forward pass writes what each node's
    backward reads (its saved rule) and the buffers of the inference model; the backward pass, in reverse,
    holds one gradient buffer per materialised tensor from its first reader's backward to its
    producer's, plus what a node's backward holds while it runs (_depthwise_workspace), and frees
    what a node saved once that node's backward ran. Returns the bytes
    per image live (saved tensors, forward buffers and activation gradients) at each node of
    the forward pass, then at each node's backward. Parameter gradients are not in it: XLA
    holds about one parameter-sized set of buffers through the step (the gradients, or layout
    copies of the kernels), which estimate() adds once."""
    names = trained_nodes(graph)
    index = {n: i for i, n in enumerate(names)}
    nodes = graph.nodes
    saved: dict = {}                    # tensor -> (elements, index of its earliest reader)
    for n in names:
        node = nodes[n]
        if node.op == "input":
            continue
        for key, elems in _recomputed(graph, SAVED[node.op](node, [nodes[i].shape for i in node.inputs], graph)):
            if key[1] == "value" and nodes[key[0]].op == "input":
                continue               # the batch is an argument, not a temporary
            e, first = saved.get(key, (elems, index[n]))
            saved[key] = (e, min(first, index[n]))
    all_readers = graph_readers(graph)
    readers = {n: [index[r] for r in all_readers[n] if r in index] for n in names}
    mat = materialised(graph, all_readers, train=True)
    steps = len(names)
    # forward: a saved tensor is written by its producer (or its reader, for a copy such as a
    # transposed input) and stays; another materialised output lives to its last reader
    forward = [0] * (steps + 1)
    for (name, what), (e, first) in saved.items():
        forward[index.get(name, first)] += e
    ends = buffer_ends(graph, all_readers, mat)
    upto, last = [], -1                 # graph position -> the last trained node by then
    for n in graph.nodes:
        last = index.get(n, last)
        upto.append(last)
    for n in names:
        if n in mat and readers[n] and (n, "value") not in saved:
            forward[index[n]] += prod(nodes[n].shape)
            forward[upto[ends[n]] + 1] -= prod(nodes[n].shape)
    # backward, in reverse: a node's backward frees what it was the first to save, and the
    # gradient of a materialised output lives from its last reader's backward to its own
    freed = [0] * steps
    for e, first in saved.values():
        freed[first] += e
    grad = [0] * (steps + 1)            # indexed by backward step: steps - 1 - node index
    for n in names:
        if n in mat:
            grad[steps - 1 - max(readers[n], default=index[n])] += prod(nodes[n].shape)
            grad[steps - index[n]] -= prod(nodes[n].shape)
    points, live = [], 0
    for d in forward[:steps]:
        live += d
        points.append(live)
    work = [_depthwise_workspace(nodes[n], [nodes[i].shape for i in nodes[n].inputs]) for n in names]
    live_saved, g_live = sum(e for e, _ in saved.values()), 0
    for j in range(steps):
        g_live += grad[j]
        points.append(live_saved + g_live + work[steps - 1 - j])
        live_saved -= freed[steps - 1 - j]
    return [p * itemsize for p in points]


def training_kept(graph: Graph, itemsize: int = 4) -> int:
    """Activation bytes per image at a training step's peak: the tensors saved for the backward
    pass and the activation gradients live then (training_schedule)."""
    return max(training_schedule(graph, itemsize))


def kernel_workspace(graph: Graph, itemsize: int = 4) -> int:
    """Bytes XLA spends on kernels whose convolution it runs with the operands swapped: its
    ConvOperandSwapper makes the input the kernel when the kernel's window covers more cells
    than the input (a 3x3 conv on ResNet's 2x2 last stage at a 64x64 input) and writes a
    reversed copy of the kernel, held through the program; archc's im2col route around it
    (ops/conv.py) reads the kernel as a (taps*C, F) matrix, a copy only where it drops taps.
    None at the usual input sizes."""
    total = 0
    for node in graph:
        if node.op != "conv" or node.attrs.groups != 1 or node.name in graph.outputs:
            continue
        x = graph.nodes[node.inputs[0]].shape
        path = cpu_conv_path(node.attrs, (1,) + tuple(x))
        if path in ("pointwise", "depthwise"):
            continue
        if path == "im2col":       # archc's route around the swap: the kernel as a (taps*C, F) matrix,
            a = node.attrs         # a bitcast of the kernel when every tap is used, else a copy
            taps = len(useful_taps(x[:2], a.kernel, a.strides, a.dilation, a.padding))
            total += 0 if taps == prod(a.kernel) else taps * x[-1] * node.shape[-1] * itemsize
        elif prod(node.attrs.kernel) > prod(x[:-1]):
            total += prod(node.attrs.kernel) * x[-1] * node.shape[-1] * itemsize
    return total


def estimate(graph: Graph, batch: int = 1, optimizer: str = "momentum", itemsize: int = 4) -> dict:
    """The memory figures of `graph` (bytes): parameters, non-trainable state, activations per
    image (inference peak, training step peak), XLA's kernel workspace, optimizer state, and
    the totals for `batch`."""
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
    work = kernel_workspace(graph, itemsize)
    opt = {name: k * trainable for name, k in OPTIMIZER_STATE.items()}
    return {
        "param_bytes": trainable,
        "state_bytes": state,
        "io_bytes_per_image": io,
        "inference_activation_bytes_per_image": infer,
        "training_activation_bytes_per_image": kept,
        "workspace_bytes": work,
        "optimizer_state_bytes": opt,
        "optimizer": optimizer,
        "batch": batch,
        "inference_bytes": trainable + state + work + batch * (io + infer),
        # parameters, one parameter-sized set of temporaries (the gradients, or XLA's copies of
        # the kernels: of all of them, GoogLeNet's unused auxiliary heads included), the
        # optimizer's state, and the batch's activations at the step's peak
        "training_bytes": 2 * trainable + state + work + opt[optimizer] + batch * (io + kept),
    }


def largest_batch(graph: Graph, budget: int, optimizer: str = "momentum", itemsize: int = 4) -> dict:
    """The largest batch whose estimate fits `budget` bytes, in inference and in training (0: none)."""
    e = estimate(graph, 1, optimizer, itemsize)
    fixed_infer = e["param_bytes"] + e["state_bytes"] + e["workspace_bytes"]
    fixed_train = fixed_infer + e["param_bytes"] + e["optimizer_state_bytes"][optimizer]
    per_infer = e["io_bytes_per_image"] + e["inference_activation_bytes_per_image"]
    per_train = e["io_bytes_per_image"] + e["training_activation_bytes_per_image"]
    return {"inference": max(0, (budget - fixed_infer) // max(1, per_infer)),
            "training": max(0, (budget - fixed_train) // max(1, per_train))}


def human(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def render_memory(m: dict) -> str:
    """The memory lines of `archc build`: the estimate `estimate` (and `largest_batch`) made."""
    opt = m["optimizer"]
    lines = [f"Memory (float32, estimated): params {human(m['param_bytes'])}, state {human(m['state_bytes'])}, "
             f"{opt} state {human(m['optimizer_state_bytes'][opt])}",
             f"  activations per image: inference {human(m['inference_activation_bytes_per_image'])} (peak live), "
             f"training {human(m['training_activation_bytes_per_image'])} (at the training step's peak)"
             + (f"; XLA kernel workspace {human(m['workspace_bytes'])}" if m.get("workspace_bytes") else ""),
             f"  batch {m['batch']}: inference {human(m['inference_bytes'])}, training step {human(m['training_bytes'])}"]
    if "largest_batch" in m:
        lb = m["largest_batch"]
        lines.append(f"  in {human(m['budget_bytes'])}: largest batch {lb['inference']:,} for inference, "
                     f"{lb['training']:,} for training with {opt}")
    return "\n".join(lines)
