"""The IR ops: one table of shape rules, parameter counts and multiply-accumulates.

Each rule takes the node's attributes and its input shapes. Shape rules raise ShapeError with a
message that names the shapes involved; the elaborator attaches the source location.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Callable


class ShapeError(Exception):
    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


def fmt(shape) -> str:
    return "x".join(str(d) for d in shape)


def _spatial(op: str, s) -> tuple:
    if len(s) != 3:
        raise ShapeError(f"{op} needs a feature map HxWxC, got {fmt(s)}",
                         "it follows a flatten or global pool; move it before them")
    return s


def conv_out(size: int, k: int, s: int, pad: tuple, d: int = 1) -> int:
    return (size + pad[0] + pad[1] - d * (k - 1) - 1) // s + 1


def _window_check(op, s, kernel, padding, dilation=(1, 1)):
    for axis, (n, k, p, d) in enumerate(zip(s[:2], kernel, padding, dilation)):
        eff = d * (k - 1) + 1
        if eff > n + p[0] + p[1]:
            raise ShapeError(f"{op} kernel {fmt(kernel)} is larger than its padded input "
                             f"{fmt(s)} ({'height' if axis == 0 else 'width'} {n} + padding {p[0]}+{p[1]})",
                             "use a smaller kernel, add padding, or remove a downsampling step before it")


# ---- shape rules ----
def _conv(a, ins):
    h, w, c = _spatial("conv", ins[0])
    g = a["groups"]
    if c % g:
        raise ShapeError(f"groups={g} does not divide the {c} input channels of {fmt(ins[0])}",
                         f"choose groups among the divisors of {c}")
    if a["features"] % g:
        raise ShapeError(f"groups={g} does not divide the {a['features']} output channels",
                         f"make the output channels a multiple of {g}")
    _window_check("conv", ins[0], a["kernel"], a["padding"], a["dilation"])
    return (conv_out(h, a["kernel"][0], a["strides"][0], a["padding"][0], a["dilation"][0]),
            conv_out(w, a["kernel"][1], a["strides"][1], a["padding"][1], a["dilation"][1]),
            a["features"])


def _conv_transpose(a, ins):
    h, w, c = _spatial("deconv", ins[0])
    out = []
    for n, k, s, p, op in zip((h, w), a["kernel"], a["strides"], a["padding"], a["output_padding"]):
        out.append((n - 1) * s - p[0] - p[1] + (k - 1) + 1 + op)
    return (out[0], out[1], a["features"])


def _pool(a, ins):
    h, w, c = _spatial(a["kind"] + "pool", ins[0])
    pads = [(p[0] + e[0], p[1] + e[1]) for p, e in zip(a["padding"], a["extra"])]
    for p, k in zip(a["padding"], a["kernel"]):
        if max(p) * 2 > k:
            raise ShapeError(f"pool padding {max(p)} is more than half the kernel {fmt(a['kernel'])}",
                             "PyTorch rejects this too; use padding <= kernel // 2")
    _window_check(a["kind"] + "pool", ins[0], a["kernel"], pads)
    return (conv_out(h, a["kernel"][0], a["strides"][0], pads[0]),
            conv_out(w, a["kernel"][1], a["strides"][1], pads[1]), c)


def _global_pool(a, ins):
    h, w, c = _spatial("global pool", ins[0])
    return (1, 1, c) if a["keepdims"] else (c,)


def _flatten(a, ins):
    return (prod(ins[0]),)


def _dense(a, ins):
    return tuple(ins[0][:-1]) + (a["features"],)


def _same(a, ins):
    return ins[0]


def _concat(a, ins):
    first = ins[0]
    for s in ins[1:]:
        if len(s) != len(first) or tuple(s[:-1]) != tuple(first[:-1]):
            raise ShapeError(f"cannot concatenate {fmt(first)} and {fmt(s)}: sizes other than channels differ",
                             "give every branch the same stride and padding, or crop with concat(crop=true)")
    return tuple(first[:-1]) + (sum(s[-1] for s in ins),)


def _broadcast(opname):
    def rule(a, ins):
        out = ins[0]
        for s in ins[1:]:
            if len(s) != len(out):
                raise ShapeError(f"cannot {opname} {fmt(out)} and {fmt(s)}")
            merged = []
            for x, y in zip(out, s):
                if x != y and 1 not in (x, y):
                    raise ShapeError(f"cannot {opname} {fmt(out)} and {fmt(s)}",
                                     "residual branches must end with the input's size and channels; "
                                     "a projection shortcut (conv1 bn) can match them")
                merged.append(max(x, y))
            out = tuple(merged)
        return out
    return rule


def _shuffle(a, ins):
    c = ins[0][-1]
    if c % a["groups"]:
        raise ShapeError(f"channel shuffle groups={a['groups']} does not divide {c} channels")
    return ins[0]


def _slice(a, ins):
    c = ins[0][-1]
    if not 0 <= a["start"] < a["stop"] <= c:
        raise ShapeError(f"channel slice {a['start']}:{a['stop']} is outside the {c} channels of {fmt(ins[0])}")
    return tuple(ins[0][:-1]) + (a["stop"] - a["start"],)


def _pad(a, ins):
    h, w, c = _spatial("pad", ins[0])
    (t, b), (l, r) = a["padding"]
    return (h + t + b, w + l + r, c)


def _crop(a, ins):
    h, w, c = _spatial("crop", ins[0])
    (t, b), (l, r) = a["crop"]
    if h - t - b < 1 or w - l - r < 1:
        raise ShapeError(f"cropping {t}+{b}, {l}+{r} leaves nothing of {fmt(ins[0])}")
    return (h - t - b, w - l - r, c)


def _upsample(a, ins):
    h, w, c = _spatial("upsample", ins[0])
    return (h * a["factor"][0], w * a["factor"][1], c)


def _reshape(a, ins):
    if prod(ins[0]) != prod(a["shape"]):
        raise ShapeError(f"cannot reshape {fmt(ins[0])} ({prod(ins[0])} values) to {fmt(a['shape'])} ({prod(a['shape'])} values)")
    return tuple(a["shape"])


def _adaptive_pool(a, ins):
    h, w, c = _spatial("adaptive pool", ins[0])
    oh, ow = a["out"]
    if oh > h or ow > w:
        raise ShapeError(f"adaptive pooling cannot enlarge {fmt(ins[0])} to {oh}x{ow}")
    return (oh, ow, c)


# ---- parameter counts: (trainable, non-trainable) ----
def _conv_params(a, ins, out):
    cin = ins[0][-1]
    return (a["kernel"][0] * a["kernel"][1] * cin // a["groups"] * a["features"] + (a["features"] if a["bias"] else 0), 0)


def _deconv_params(a, ins, out):
    cin = ins[0][-1]
    return (a["kernel"][0] * a["kernel"][1] * cin * a["features"] + (a["features"] if a["bias"] else 0), 0)


def _dense_params(a, ins, out):
    return (ins[0][-1] * a["features"] + (a["features"] if a["bias"] else 0), 0)


def _bn_params(a, ins, out):
    c = ins[0][-1]
    return ((int(a["scale"]) + int(a["center"])) * c, 2 * c)


def _no_params(a, ins, out):
    return (0, 0)


def _l2norm_params(a, ins, out):
    return (ins[0][-1], 0)          # a learned scale per channel (SSD's conv4_3 L2Norm)


def _normalize_params(a, ins, out):
    return (0, 2 * ins[0][-1] + 1)  # Keras Normalization: mean, variance and the sample count


# ---- multiply-accumulates ----
def _conv_macs(a, ins, out):
    return prod(out) * a["kernel"][0] * a["kernel"][1] * ins[0][-1] // a["groups"]


def _deconv_macs(a, ins, out):
    return prod(ins[0]) * a["kernel"][0] * a["kernel"][1] * a["features"]


def _dense_macs(a, ins, out):
    return prod(out) * ins[0][-1]


def _no_macs(a, ins, out):
    return 0


@dataclass(frozen=True)
class OpRule:
    shape: Callable
    params: Callable = _no_params
    macs: Callable = _no_macs
    min_inputs: int = 1
    max_inputs: int = 1


OPS: dict[str, OpRule] = {
    "input": OpRule(lambda a, ins: tuple(a["shape"]), min_inputs=0, max_inputs=0),
    "conv": OpRule(_conv, _conv_params, _conv_macs),
    "conv_transpose": OpRule(_conv_transpose, _deconv_params, _deconv_macs),
    "pool": OpRule(_pool),
    "global_pool": OpRule(_global_pool),
    "flatten": OpRule(_flatten),
    "dense": OpRule(_dense, _dense_params, _dense_macs),
    "dropout": OpRule(_same),
    "bn": OpRule(_same, _bn_params),
    "lrn": OpRule(_same),
    "act": OpRule(_same),
    "scale": OpRule(_same),
    "concat": OpRule(_concat, min_inputs=1, max_inputs=10**6),
    "add": OpRule(_broadcast("add"), min_inputs=1, max_inputs=10**6),
    "mul": OpRule(_broadcast("multiply"), min_inputs=1, max_inputs=10**6),
    "shuffle": OpRule(_shuffle),
    "slice": OpRule(_slice),
    "pad": OpRule(_pad),
    "crop": OpRule(_crop),
    "upsample": OpRule(_upsample),
    "identity": OpRule(_same),
    "reshape": OpRule(_reshape),
    "adaptive_pool": OpRule(_adaptive_pool),
    "l2norm": OpRule(_same, _l2norm_params),
    "normalize": OpRule(_same, _normalize_params),
    "rescale": OpRule(_same),
}

ACTIVATIONS = ("relu", "relu6", "leaky_relu", "elu", "sigmoid", "tanh", "swish", "hard_swish",
               "hard_sigmoid", "gelu", "gelu_tanh", "softmax", "softplus", "mish")


def infer_shape(op: str, attrs: dict, in_shapes: list) -> tuple:
    shape = OPS[op].shape(attrs, in_shapes)
    if any(d < 1 for d in shape):
        raise ShapeError(f"{op} would produce the non-positive size {fmt(shape)} from {', '.join(fmt(s) for s in in_shapes)}",
                         "the input is too small for the downsampling before it; use a larger input or fewer strides")
    return shape


def count(node, graph) -> tuple:
    """(trainable, non_trainable, macs) of one node."""
    rule = OPS[node.op]
    ins = [graph.nodes[i].shape for i in node.inputs]
    t, n = rule.params(node.attrs, ins, node.shape)
    return t, n, rule.macs(node.attrs, ins, node.shape)
