"""Hand-built IR graphs for tests and benchmarks (independent of the .arch front end)."""
from __future__ import annotations

from archc.compiler import ops
from archc.compiler.ir import Graph, Node

P0 = ((0, 0), (0, 0))


class GraphBuilder:
    def __init__(self, name: str, input_shape: tuple, input_name: str = "input"):
        self.graph = Graph(name)
        self.last = self.add("input", [], name=input_name, shape=tuple(input_shape))
        self.graph.inputs.append(input_name)
        self._n = 0

    def add(self, op: str, inputs, name: str | None = None, **attrs) -> str:
        if isinstance(inputs, str):
            inputs = [inputs]
        if name is None:
            self._n += 1
            name = f"{op}{self._n}"
        assert name not in self.graph.nodes, name
        attrs = ops.attrs_of(op, **attrs)
        shape = ops.infer_shape(op, attrs, [self.graph.nodes[i].shape for i in inputs])
        self.graph.nodes[name] = Node(name, op, tuple(inputs), attrs, tuple(shape))
        self.last = name
        return name

    # conveniences with the front end's defaults
    def conv(self, x, features, kernel=(3, 3), strides=(1, 1), padding=None, dilation=(1, 1),
             groups=1, bias=True, name=None):
        kernel, strides, dilation = _pair(kernel), _pair(strides), _pair(dilation)
        if padding is None:
            padding = tuple((d * (k - 1) // 2,) * 2 for k, d in zip(kernel, dilation))
        return self.add("conv", x, name, features=features, kernel=kernel, strides=strides,
                        padding=padding, dilation=dilation, groups=groups, bias=bias)

    def bn(self, x, name=None, eps=1e-5, momentum=0.9):
        return self.add("bn", x, name, eps=eps, momentum=momentum, scale=True, center=True)

    def act(self, x, fn="relu", name=None, **kw):
        return self.add("act", x, name, fn=fn, **kw)

    def pool(self, x, kind, kernel, strides, padding=P0, extra=P0, count_include_pad=True, name=None):
        return self.add("pool", x, name, kind=kind, kernel=_pair(kernel), strides=_pair(strides),
                        padding=padding, extra=extra, count_include_pad=count_include_pad)

    def output(self, *names):
        self.graph.outputs = list(names) if names else [self.last]
        return self.graph


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def resnet50_graph(classes: int = 1000, input_shape=(224, 224, 3)) -> Graph:
    """torchvision ResNet-50 (v1.5: stride on the 3x3), torchvision-style node names."""
    g = GraphBuilder("resnet50", input_shape)
    x = g.conv("input", 64, 7, 2, padding=((3, 3), (3, 3)), bias=False, name="conv1")
    x = g.bn(x, "bn1")
    x = g.act(x, name="relu")
    x = g.pool(x, "max", 3, 2, padding=((1, 1), (1, 1)), name="maxpool")
    for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), start=1):
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            stride = 2 if stage > 1 and b == 0 else 1
            shortcut = x
            y = g.conv(x, width, 1, bias=False, name=f"{p}.conv1")
            y = g.act(g.bn(y, f"{p}.bn1"), name=f"{p}.relu1")
            y = g.conv(y, width, 3, stride, bias=False, name=f"{p}.conv2")
            y = g.act(g.bn(y, f"{p}.bn2"), name=f"{p}.relu2")
            y = g.conv(y, width * 4, 1, bias=False, name=f"{p}.conv3")
            y = g.bn(y, f"{p}.bn3")
            if b == 0:
                shortcut = g.conv(x, width * 4, 1, stride, bias=False, name=f"{p}.downsample.0")
                shortcut = g.bn(shortcut, f"{p}.downsample.1")
            y = g.add("add", [y, shortcut], name=f"{p}.add")
            x = g.act(y, name=p)
        x = g.add("identity", x, name=f"layer{stage}")
    x = g.add("global_pool", x, name="avgpool", kind="avg", keepdims=False)
    g.add("dense", x, name="fc", features=classes, bias=True)
    return g.output()
