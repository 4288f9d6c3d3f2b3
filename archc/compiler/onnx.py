"""ONNX emission: an IR Graph and its variables -> an ``onnx.ModelProto``, one rule per op.

Each op's rule is registered with ``@onnx_rule("op")`` (``fn(node, xs, v, e) -> value name``:
``xs`` the names of its input values, ``v`` its variables as NumPy arrays, ``e`` the Emitter
that adds ONNX nodes and constants). The network inside the model is NCHW -- ONNX's Conv layout,
where ONNX Runtime is fastest -- with the kernels transposed once at export, not the
activations: a feature map of IR shape (H, W, C) is an (N, C, H, W) value, every other IR shape
(C,) or (A, B) keeps its order behind the batch axis. ``layout="nhwc"`` keeps archc's NHWC
interface, with one transpose at each feature-map input and output.

Ceil-mode pooling is already explicit padding in the IR (``extra``), so MaxPool/AveragePool get
explicit pads, never ``ceil_mode``; an average pool whose divisor excludes ceil-mode cells is a
zero Pad, an AveragePool and a constant correction. ``onnx`` is imported only when a model is
built, so importing this module (and ``archc check``) stays light.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from .ir import Graph, Node
from .ops import activation_names, pass_rules, variable_specs
from .ops.pool import axis_counts

# IR op -> fn(node, xs, v, e) -> name of the value it produces; filled by @onnx_rule.
ONNX_RULES, onnx_rule = pass_rules("onnx rule")

MIN_OPSET = 13          # single-axis Softmax, Slice/Pad/Resize/Clip with tensor inputs
DEFAULT_OPSET = 17      # LayerNormalization; torch.onnx.export's default
LAYOUTS = ("nchw", "nhwc")
INLINE_LIMIT = 2**31    # bytes: a protobuf message, weights inline, must stay below 2 GiB


class ExportError(Exception):
    """An export that cannot be made (an op without a rule, an opset too old, a bad path)."""




def channel_axis(shape: tuple) -> int:
    """The channel axis of the ONNX value of an IR shape: 1 for NCHW feature maps and (N, C),
    the last for the rest."""
    return 1 if len(shape) in (1, 3) else len(shape)


class Emitter:
    """Collects the ONNX nodes and constants of one graph. ``op`` adds a node with one output;
    values made while emitting IR node ``n`` are named ``n/1``, ``n/2``..., and the value a rule
    returns is renamed to the IR node's name."""

    def __init__(self, opset: int):
        from onnx import helper
        self.helper, self.opset = helper, opset
        self.nodes: list = []
        self.initializers: list = []
        self.scope, self.ins = "", []          # the IR node being emitted and its input shapes
        self._count = self._first = 0

    def fresh(self) -> str:
        self._count += 1
        return f"{self.scope}/{self._count}"

    def op(self, op_type: str, inputs, **attrs) -> str:
        out = self.fresh()
        node = self.helper.make_node(op_type, list(inputs), [out], name=out, **attrs)
        self.nodes.append(node)
        return out

    def const(self, array, dtype=np.float32) -> str:
        from onnx import numpy_helper
        name = self.fresh()
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(np.asarray(array, dtype)), name))
        return name

    def ints(self, values) -> str:
        return self.const(np.asarray(values, np.int64), np.int64)

    def channel_const(self, values, shape: tuple) -> str:
        """A per-channel vector that broadcasts against a value of IR shape ``shape``."""
        values = np.asarray(values, np.float32)
        return self.const(values.reshape(values.shape + (1, 1)) if len(shape) == 3 else values)

    def require(self, opset: int, what: str) -> None:
        if self.opset < opset:
            raise ExportError(f"node {self.scope!r} ({what}) needs ONNX opset {opset} or newer; "
                              f"this export is opset {self.opset}: use --opset {opset}")

    def reduce(self, op_type: str, x: str, axes, keepdims: int = 1) -> str:
        # opset 18 moved the axes of ReduceMean/Max/L2 from an attribute to an input
        if self.opset >= 18:
            return self.op(op_type, [x, self.ints(axes)], keepdims=keepdims)
        return self.op(op_type, [x], axes=list(axes), keepdims=keepdims)

    def begin(self, scope: str, in_shapes=()) -> None:
        self.scope, self.ins, self._first = scope, list(in_shapes), len(self.nodes)

    def name_result(self, value: str, name: str) -> str:
        """Give the value a rule returned the IR node's name, if this node made it."""
        if not value.startswith(self.scope + "/"):
            return value                        # passed through (identity, dropout)
        for n in self.nodes[self._first:]:
            n.output[:] = [name if o == value else o for o in n.output]
            n.input[:] = [name if i == value else i for i in n.input]
        return name


def _pads(padding) -> list:
    """((t, b), (l, r)) -> ONNX's [t, l, b, r]."""
    (t, b), (l, r) = padding
    return [t, l, b, r]


# ---------------------------------------------------------------------------------------------
# The rules
# ---------------------------------------------------------------------------------------------
@onnx_rule("conv")
def _conv(node: Node, xs, v, e: Emitter):
    a = node.attrs
    inputs = [xs[0], e.const(v["kernel"].transpose(3, 2, 0, 1))]      # HWIO -> OIHW
    if "bias" in v:
        inputs.append(e.const(v["bias"]))
    return e.op("Conv", inputs, kernel_shape=list(a.kernel), strides=list(a.strides), pads=_pads(a.padding),
                dilations=list(a.dilation), group=a.groups)


@onnx_rule("conv_transpose")
def _conv_transpose(node: Node, xs, v, e: Emitter):
    a = node.attrs
    inputs = [xs[0], e.const(v["kernel"].transpose(3, 2, 0, 1))]      # (kh, kw, out, in) -> (in, out, kh, kw)
    if "bias" in v:
        inputs.append(e.const(v["bias"]))
    return e.op("ConvTranspose", inputs, kernel_shape=list(a.kernel), strides=list(a.strides),
                pads=_pads(a.padding), output_padding=list(a.output_padding))


@onnx_rule("dense")
def _dense(node: Node, xs, v, e: Emitter):
    kernel, shape = v["kernel"], e.ins[0]
    if len(shape) == 1:
        inputs = [xs[0], e.const(kernel)] + ([e.const(v["bias"])] if "bias" in v else [])
        return e.op("Gemm", inputs)
    if len(shape) == 3:                        # on a feature map's channels: a 1x1 conv in NCHW
        inputs = [xs[0], e.const(kernel.T[:, :, None, None])] + ([e.const(v["bias"])] if "bias" in v else [])
        return e.op("Conv", inputs, kernel_shape=[1, 1])
    y = e.op("MatMul", [xs[0], e.const(kernel)])
    return e.op("Add", [y, e.const(v["bias"])]) if "bias" in v else y


@onnx_rule("pool")
def _pool(node: Node, xs, v, e: Emitter):
    a = node.attrs
    window = dict(kernel_shape=list(a.kernel), strides=list(a.strides))
    full = tuple((p[0] + x[0], p[1] + x[1]) for p, x in zip(a.padding, a.extra))
    if a.kind == "max":                        # ONNX MaxPool ignores padded cells, as -inf padding does
        return e.op("MaxPool", [xs[0]], pads=_pads(full), **window)
    if not any(any(side) for side in a.extra):
        return e.op("AveragePool", [xs[0]], pads=_pads(full), count_include_pad=int(a.count_include_pad), **window)
    # ceil-mode cells never count: the sum over the zero-padded input, times k*k / PyTorch's divisor
    h, w, _ = e.ins[0]
    ch = axis_counts(h, a.kernel[0], a.strides[0], a.padding[0], a.extra[0], a.count_include_pad)
    cw = axis_counts(w, a.kernel[1], a.strides[1], a.padding[1], a.extra[1], a.count_include_pad)
    (t, b), (l, r) = full
    padded = e.op("Pad", [xs[0], e.ints([0, 0, t, l, 0, 0, b, r])], mode="constant")
    y = e.op("AveragePool", [padded], count_include_pad=1, **window)
    correction = a.kernel[0] * a.kernel[1] / (ch[:, None] * cw[None, :]).astype(np.float32)
    return e.op("Mul", [y, e.const(correction)])


@onnx_rule("global_pool")
def _global_pool(node: Node, xs, v, e: Emitter):
    y = e.op("GlobalAveragePool" if node.attrs.kind == "avg" else "GlobalMaxPool", [xs[0]])
    return y if node.attrs.keepdims else e.op("Flatten", [y], axis=1)


@onnx_rule("adaptive_pool")
def _adaptive_pool(node: Node, xs, v, e: Emitter):
    # PyTorch's windows [floor(i*n/o), ceil((i+1)*n/o)) per axis; separable, as in the lowering
    (h, w, _), (oh, ow) = e.ins[0], node.attrs.out
    pool, reduce = ("AveragePool", "ReduceMean") if node.attrs.kind == "avg" else ("MaxPool", "ReduceMax")
    if h % oh == 0 and w % ow == 0:
        k = [h // oh, w // ow]
        return e.op(pool, [xs[0]], kernel_shape=k, strides=k)
    y = xs[0]
    for axis, n, out in ((2, h, oh), (3, w, ow)):
        if n == out:
            continue
        parts = [e.reduce(reduce, e.op("Slice", [y, e.ints([(i * n) // out]), e.ints([-(-((i + 1) * n) // out)]),
                                                 e.ints([axis])]), [axis])
                 for i in range(out)]
        y = e.op("Concat", parts, axis=axis) if len(parts) > 1 else parts[0]
    return y


def _scale_shift(v, c: int, eps: float):
    """BN as y = x * mul + add, in float32 as the lowering computes mul."""
    mul = (1.0 / np.sqrt(v["var"].astype(np.float32) + np.float32(eps))) * v.get("scale", np.ones(c, np.float32))
    return mul, v.get("bias", np.zeros(c, np.float32)) - v["mean"] * mul


@onnx_rule("bn")
def _bn(node: Node, xs, v, e: Emitter):
    shape, c = e.ins[0], e.ins[0][-1]
    if channel_axis(shape) == 1:
        scale, bias = v.get("scale", np.ones(c, np.float32)), v.get("bias", np.zeros(c, np.float32))
        return e.op("BatchNormalization", [xs[0]] + [e.const(a) for a in (scale, bias, v["mean"], v["var"])],
                    epsilon=node.attrs.eps)
    mul, add = _scale_shift(v, c, node.attrs.eps)
    return e.op("Add", [e.op("Mul", [xs[0], e.const(mul)]), e.const(add)])


@onnx_rule("layernorm")
def _layernorm(node: Node, xs, v, e: Emitter):
    shape, eps = e.ins[0], node.attrs.eps
    if e.opset >= 17:
        if len(shape) == 3:                    # over the channels: LayerNormalization's last axis
            x = e.op("Transpose", [xs[0]], perm=[0, 2, 3, 1])
            y = e.op("LayerNormalization", [x, e.const(v["scale"]), e.const(v["bias"])], axis=-1, epsilon=eps)
            return e.op("Transpose", [y], perm=[0, 3, 1, 2])
        return e.op("LayerNormalization", [xs[0], e.const(v["scale"]), e.const(v["bias"])], axis=-1, epsilon=eps)
    axis = channel_axis(shape)                 # decomposed, two-pass as the lowering
    centred = e.op("Sub", [xs[0], e.reduce("ReduceMean", xs[0], [axis])])
    var = e.reduce("ReduceMean", e.op("Mul", [centred, centred]), [axis])
    y = e.op("Div", [centred, e.op("Sqrt", [e.op("Add", [var, e.const(eps)])])])
    return e.op("Add", [e.op("Mul", [y, e.channel_const(v["scale"], shape)]), e.channel_const(v["bias"], shape)])


@onnx_rule("groupnorm")
def _groupnorm(node: Node, xs, v, e: Emitter):
    # NCHW keeps a group's channels contiguous: (N, C, H, W) -> (N, g, C/g·H·W), normalised over
    # the last axis two-pass as the lowering, then back to the input's shape
    x, shape, eps = xs[0], e.ins[0], node.attrs.eps
    grouped = e.op("Reshape", [x, e.ints([0, node.attrs.groups, -1])])
    centred = e.op("Sub", [grouped, e.reduce("ReduceMean", grouped, [2])])
    var = e.reduce("ReduceMean", e.op("Mul", [centred, centred]), [2])
    y = e.op("Div", [centred, e.op("Sqrt", [e.op("Add", [var, e.const(eps)])])])
    y = e.op("Reshape", [y, e.op("Shape", [x])])
    if "scale" not in v:
        return y
    return e.op("Add", [e.op("Mul", [y, e.channel_const(v["scale"], shape)]), e.channel_const(v["bias"], shape)])


@onnx_rule("layer_scale")
def _layer_scale(node: Node, xs, v, e: Emitter):
    return e.op("Mul", [xs[0], e.channel_const(v["scale"], e.ins[0])])


@onnx_rule("lrn")
def _lrn(node: Node, xs, v, e: Emitter):
    a, shape = node.attrs, e.ins[0]
    # PyTorch's window is [c - size//2, c + (size-1)//2]; ONNX LRN's [c - (size-1)//2, c + size//2]:
    # the same for odd sizes. Otherwise the windowed sum of squares is a band-matrix product.
    if a.size % 2 and len(shape) == 3:
        return e.op("LRN", [xs[0]], size=a.size, alpha=a.alpha, beta=a.beta, bias=a.k)
    c = shape[-1]
    i, j = np.arange(c)[:, None], np.arange(c)[None, :]
    band = ((j >= i - a.size // 2) & (j <= i + (a.size - 1) // 2)).astype(np.float32)   # [out, in]
    sq = e.op("Mul", [xs[0], xs[0]])
    if len(shape) == 3:
        total = e.op("Conv", [sq, e.const(band[:, :, None, None])], kernel_shape=[1, 1])
    else:
        total = e.op("MatMul", [sq, e.const(band.T)])
    base = e.op("Add", [e.op("Mul", [total, e.const(a.alpha / a.size)]), e.const(a.k)])
    return e.op("Div", [xs[0], e.op("Pow", [base, e.const(a.beta)])])


def _gelu(x, e: Emitter, approximate: bool):
    if e.opset >= 20:
        return e.op("Gelu", [x], approximate="tanh" if approximate else "none")
    if approximate:      # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        cube = e.op("Mul", [e.op("Mul", [x, x]), x])
        inner = e.op("Mul", [e.op("Add", [x, e.op("Mul", [cube, e.const(0.044715)])]), e.const(math.sqrt(2 / math.pi))])
        gate = e.op("Tanh", [inner])
    else:                # 0.5 x (1 + erf(x / sqrt 2))
        gate = e.op("Erf", [e.op("Mul", [x, e.const(1 / math.sqrt(2))])])
    return e.op("Mul", [e.op("Mul", [x, e.const(0.5)]), e.op("Add", [gate, e.const(1.0)])])


def _mish(x, e: Emitter):
    if e.opset >= 18:
        return e.op("Mish", [x])
    return e.op("Mul", [x, e.op("Tanh", [e.op("Softplus", [x])])])


def _hard_swish(x, e: Emitter):
    e.require(14, "hard_swish: ONNX HardSwish")
    return e.op("HardSwish", [x])


# activation -> fn(x, attrs, e, shape); PyTorch's constants where ONNX's defaults differ
ACTIVATION_RULES, _ = pass_rules("activation onnx rule", covers=activation_names, rules={
    "relu": lambda x, a, e, s: e.op("Relu", [x]),
    "relu6": lambda x, a, e, s: e.op("Clip", [x, e.const(0.0), e.const(6.0)]),
    "leaky_relu": lambda x, a, e, s: e.op("LeakyRelu", [x], alpha=a.alpha),
    "elu": lambda x, a, e, s: e.op("Elu", [x], alpha=a.alpha),
    "sigmoid": lambda x, a, e, s: e.op("Sigmoid", [x]),
    "tanh": lambda x, a, e, s: e.op("Tanh", [x]),
    "swish": lambda x, a, e, s: e.op("Mul", [x, e.op("Sigmoid", [x])]),
    "hard_swish": lambda x, a, e, s: _hard_swish(x, e),
    "hard_sigmoid": lambda x, a, e, s: e.op("HardSigmoid", [x], alpha=1 / 6, beta=0.5),   # ONNX default 0.2
    "gelu": lambda x, a, e, s: _gelu(x, e, approximate=False),
    "gelu_tanh": lambda x, a, e, s: _gelu(x, e, approximate=True),
    "softmax": lambda x, a, e, s: e.op("Softmax", [x], axis=channel_axis(s)),
    "softplus": lambda x, a, e, s: e.op("Softplus", [x]),
    "mish": lambda x, a, e, s: _mish(x, e),
})


@onnx_rule("act")
def _act(node: Node, xs, v, e: Emitter):
    return ACTIVATION_RULES[node.attrs.fn](xs[0], node.attrs, e, e.ins[0])


@onnx_rule("scale")
def _scale(node: Node, xs, v, e: Emitter):
    return e.op("Mul", [xs[0], e.const(node.attrs.value)])


@onnx_rule("dropout")
def _dropout(node: Node, xs, v, e: Emitter):
    return xs[0]                               # inference


@onnx_rule("drop_path")
def _drop_path(node: Node, xs, v, e: Emitter):
    return xs[0]                               # inference


@onnx_rule("identity")
def _identity(node: Node, xs, v, e: Emitter):
    return xs[0]


@onnx_rule("rescale")
def _rescale(node: Node, xs, v, e: Emitter):
    x, shape = xs[0], e.ins[0]
    if any(s != 1.0 for s in node.attrs.scale):
        x = e.op("Mul", [x, e.channel_const(node.attrs.scale, shape)])
    if any(o != 0.0 for o in node.attrs.offset):
        x = e.op("Add", [x, e.channel_const(node.attrs.offset, shape)])
    return x


@onnx_rule("normalize")
def _normalize(node: Node, xs, v, e: Emitter):
    shape = e.ins[0]
    std = np.maximum(np.sqrt(v["var"].astype(np.float32)), np.float32(node.attrs.eps))
    return e.op("Div", [e.op("Sub", [xs[0], e.channel_const(v["mean"], shape)]), e.channel_const(std, shape)])


@onnx_rule("l2norm")
def _l2norm(node: Node, xs, v, e: Emitter):
    shape = e.ins[0]
    norm = e.op("Max", [e.reduce("ReduceL2", xs[0], [channel_axis(shape)]), e.const(node.attrs.eps)])
    return e.op("Mul", [e.op("Div", [xs[0], norm]), e.channel_const(v["scale"], shape)])


def _to_nhwc(x, e: Emitter):
    return e.op("Transpose", [x], perm=[0, 2, 3, 1])


@onnx_rule("flatten")
def _flatten(node: Node, xs, v, e: Emitter):
    shape = e.ins[0]
    x = xs[0]
    if len(shape) == 4:                        # per RoI: (N, R, H, W, C) -> (N, R, H·W·C)
        if node.attrs.order == "nchw" and shape[1] * shape[2] > 1:
            x = e.op("Transpose", [x], perm=[0, 1, 4, 2, 3])
        return e.op("Reshape", [x, e.ints([0, 0, -1])])
    if len(shape) == 3 and node.attrs.order == "nhwc" and shape[0] * shape[1] > 1:
        x = _to_nhwc(x, e)                     # archc's row-major HWC order
    return e.op("Flatten", [x], axis=1)


def _onnx_rois(rois: str, count: int, e: Emitter, with_index: bool):
    """(N, R, 4) RoIs -> ONNX's flat (N·R, 4) boxes and each one's image index (N·R,) int64,
    or (N·R, 5) [index, x1, y1, x2, y2] (MaxRoiPool)."""
    flat = e.op("Reshape", [rois, e.ints([-1, 4])])
    total = e.op("Gather", [e.op("Shape", [flat]), e.ints(0)], axis=0)
    index = e.op("Div", [e.op("Range", [e.ints(0), total, e.ints(1)]), e.ints(count)])
    if not with_index:
        return flat, index
    column = e.op("Unsqueeze", [e.op("Cast", [index], to=1), e.ints([1])])
    return e.op("Concat", [column, flat], axis=1), None


def _per_roi(pooled: str, out_shape: tuple, e: Emitter) -> str:
    """ONNX's pooled (N·R, C, PH, PW) -> archc's per-RoI value (N, R, PH, PW, C)."""
    y = e.op("Transpose", [pooled], perm=[0, 2, 3, 1])
    return e.op("Reshape", [y, e.ints([-1] + list(out_shape))])


@onnx_rule("roi_align")
def _roi_align(node: Node, xs, v, e: Emitter):
    """ONNX RoiAlign (avg mode) is torchvision's aligned=False kernel with
    coordinate_transformation_mode output_half_pixel (RoIs at least 1 cell, samples outside
    [-1, size] adding 0), and aligned=True with half_pixel (opset 16). The multi-level mapping
    has no ONNX operator: such a graph is not exported."""
    a = node.attrs
    if len(a.scales) > 1:
        raise ExportError(f"node {node.name!r} pools from {len(a.scales)} maps by RoI size (MultiScaleRoIAlign), "
                          "which ONNX has no operator for; export it to StableHLO instead")
    if a.aligned:
        e.require(16, "roi_align with aligned=true, ONNX's half_pixel RoiAlign")
    boxes, index = _onnx_rois(xs[0], e.ins[0][0], e, with_index=False)
    extra = {"coordinate_transformation_mode": "half_pixel" if a.aligned else "output_half_pixel"} if e.opset >= 16 else {}
    pooled = e.op("RoiAlign", [xs[1], boxes, index], mode="avg", output_height=a.out[0], output_width=a.out[1],
                  sampling_ratio=max(a.sampling, 0), spatial_scale=a.scales[0], **extra)
    return _per_roi(pooled, node.shape, e)


@onnx_rule("roi_pool")
def _roi_pool(node: Node, xs, v, e: Emitter):
    """ONNX MaxRoiPool: Caffe's RoI pooling, as torchvision's (corners rounded half away from
    zero, bins [floor(p·bin), ceil((p+1)·bin)))."""
    a = node.attrs
    rois, _ = _onnx_rois(xs[0], e.ins[0][0], e, with_index=True)
    pooled = e.op("MaxRoiPool", [xs[1], rois], pooled_shape=list(a.out), spatial_scale=a.scale)
    return _per_roi(pooled, node.shape, e)


@onnx_rule("reshape")
def _reshape(node: Node, xs, v, e: Emitter):
    x = _to_nhwc(xs[0], e) if len(e.ins[0]) == 3 else xs[0]
    y = e.op("Reshape", [x, e.ints([-1] + list(node.attrs.shape))])
    return e.op("Transpose", [y], perm=[0, 3, 1, 2]) if len(node.attrs.shape) == 3 else y


@onnx_rule("shuffle")
def _shuffle(node: Node, xs, v, e: Emitter):
    shape, g = e.ins[0], node.attrs.groups
    c = shape[-1]
    if channel_axis(shape) != 1:
        raise ExportError(f"channel shuffle of a {'x'.join(map(str, shape))} value (node {node.name!r}) "
                          "has no ONNX rule; it is exported on feature maps and vectors")
    y = e.op("Reshape", [xs[0], e.ints([0, g, c // g, -1])])
    y = e.op("Transpose", [y], perm=[0, 2, 1, 3])
    return e.op("Reshape", [y, e.ints([0, c] + list(shape[:-1]))])


@onnx_rule("slice")
def _slice(node: Node, xs, v, e: Emitter):
    a = node.attrs
    return e.op("Slice", [xs[0], e.ints([a.start]), e.ints([a.stop]), e.ints([channel_axis(e.ins[0])])])


@onnx_rule("pad")
def _pad(node: Node, xs, v, e: Emitter):
    (t, b), (l, r) = node.attrs.padding
    return e.op("Pad", [xs[0], e.ints([0, 0, t, l, 0, 0, b, r]), e.const(node.attrs.value)], mode="constant")


@onnx_rule("crop")
def _crop(node: Node, xs, v, e: Emitter):
    (t, b), (l, r) = node.attrs.crop
    h, w, _ = e.ins[0]
    return e.op("Slice", [xs[0], e.ints([t, l]), e.ints([h - b, w - r]), e.ints([2, 3])])


@onnx_rule("upsample")
def _upsample(node: Node, xs, v, e: Emitter):
    if node.attrs.factor is None:              # upsample(size=@t): N, C of x and H, W of t, at run time
        sizes = e.op("Concat", [e.op("Slice", [e.op("Shape", [xs[0]]), e.ints([0]), e.ints([2])]),
                                e.op("Slice", [e.op("Shape", [xs[1]]), e.ints([2]), e.ints([4])])], axis=0)
        if node.attrs.method == "nearest":     # output i reads input floor(i · in / out)
            return e.op("Resize", [xs[0], "", "", sizes], mode="nearest",
                        coordinate_transformation_mode="asymmetric", nearest_mode="floor")
        return e.op("Resize", [xs[0], "", "", sizes], mode="linear", coordinate_transformation_mode="half_pixel")
    fh, fw = node.attrs.factor
    scales = e.const([1.0, 1.0, fh, fw])
    if node.attrs.method == "nearest":         # output i reads input floor(i / f)
        return e.op("Resize", [xs[0], "", scales], mode="nearest", coordinate_transformation_mode="asymmetric",
                    nearest_mode="floor")
    # half-pixel centres, edges clamped: PyTorch's bilinear with align_corners=False
    return e.op("Resize", [xs[0], "", scales], mode="linear", coordinate_transformation_mode="half_pixel")


@onnx_rule("concat")
def _concat(node: Node, xs, v, e: Emitter):
    return xs[0] if len(xs) == 1 else e.op("Concat", list(xs), axis=channel_axis(node.shape))


def _fold(op_type: str):
    def rule(node: Node, xs, v, e: Emitter):
        y = xs[0]
        for x in xs[1:]:
            y = e.op(op_type, [y, x])
        return y
    return rule


onnx_rule("add")(_fold("Add"))
onnx_rule("mul")(_fold("Mul"))


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------
def _node_variables(variables, node: str) -> dict:
    own = {}
    for collection in ("params", "batch_stats"):
        own.update({k: np.asarray(a, np.float32) for k, a in variables.get(collection, {}).get(node, {}).items()})
    return own


def _value_shape(shape: tuple, batch, layout: str) -> list:
    if len(shape) == 3 and layout == "nchw":
        shape = (shape[2], shape[0], shape[1])
    return [batch] + list(shape)


def check_exportable(graph: Graph, opset: int) -> None:
    """Fail before anything is built or written: an op without a rule, an unsupported opset."""
    if opset < MIN_OPSET:
        raise ExportError(f"archc exports ONNX opset {MIN_OPSET} or newer, not {opset}")
    weights = 4 * sum(math.prod(v.shape) for v in variable_specs(graph))
    if weights >= INLINE_LIMIT:
        raise ExportError(f"{graph.name}'s weights are {weights / 2**30:.1f} GiB: archc writes ONNX weights inline, "
                          f"which protobuf limits to 2 GiB; export it to StableHLO instead")
    missing = [n for n in graph if n.op != "input" and n.op not in ONNX_RULES]
    if missing:
        n = missing[0]
        where = f" ({n.span.file}:{n.span.line}:{n.span.col})" if n.span else ""
        raise ExportError(f"op {n.op!r} has no ONNX rule (node {n.name!r}{where}); "
                          f"{len(missing)} node(s) in {graph.name!r} cannot be exported to ONNX")


def to_onnx(graph: Graph, variables, *, opset: int = DEFAULT_OPSET, batch="dynamic", layout: str = "nchw"):
    """The graph with these variables as an ONNX model (checked with ``onnx.checker``, full
    check). ``batch``: 'dynamic' (a symbolic dimension ``N``) or an int; ``layout``: the
    interface of feature-map inputs and outputs, 'nchw' or 'nhwc' (the network is NCHW)."""
    import onnx
    from onnx import helper

    if layout not in LAYOUTS:
        raise ExportError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    check_exportable(graph, opset)
    dim = "N" if batch == "dynamic" else int(batch)
    e = Emitter(opset)
    env, inputs = {}, []
    for name in graph.inputs:
        shape = graph.nodes[name].shape
        inputs.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, _value_shape(shape, dim, layout)))
        env[name] = name
        if layout == "nhwc" and len(shape) == 3:
            e.begin(name)
            env[name] = e.op("Transpose", [name], perm=[0, 3, 1, 2])
    wanted = set(graph.outputs)
    for node in graph:
        if node.op == "input":
            continue
        e.begin(node.name, [graph.nodes[i].shape for i in node.inputs])
        value = ONNX_RULES[node.op](node, [env[i] for i in node.inputs],
                                    _node_variables(variables, node.shares or node.name), e)
        plain = node.name not in wanted or layout == "nchw" or len(node.shape) != 3
        env[node.name] = e.name_result(value, node.name if plain else node.name + "/nchw")
    outputs = []
    for name in graph.outputs:
        shape = graph.nodes[name].shape
        value = env[name]
        e.begin(name)
        if layout == "nhwc" and len(shape) == 3:
            value = e.op("Transpose", [value], perm=[0, 2, 3, 1])
        if value != name:
            e.nodes.append(helper.make_node("Identity", [value], [name], name=f"{name}/output"))
        outputs.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, _value_shape(shape, dim, layout)))
    g = helper.make_graph(e.nodes, graph.name, inputs, outputs, initializer=e.initializers)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(g, opset_imports=opsets, producer_name="archc",
                              ir_version=helper.find_min_ir_version_for(opsets))
    size = model.ByteSize()
    if size >= INLINE_LIMIT:
        raise ExportError(f"{graph.name}'s ONNX model is {size / 2**30:.1f} GiB: protobuf's limit is 2 GiB")
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as err:
        raise ExportError(f"internal error: the ONNX model of {graph.name!r} does not check: {err}") from None
    return model
