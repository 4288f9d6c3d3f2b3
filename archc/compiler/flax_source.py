"""``archc export --format flax``: an IR Graph -> the source of one self-contained Flax module.

One rule per op, registered with ``@flax_rule("op")``: ``fn(node, xs, e) -> expression``, where
``xs`` are the Python names of its inputs, ``e.ins`` their IR shapes, ``v`` names the node's
variables (declared on the line before) and ``e.use(fn)`` copies a function of ``kernels`` into
the module. Each IR node becomes one assignment named after it, so the module reads as the
network's layer list. The module takes archc's variables ({'params': {node: {leaf}},
'batch_stats': ...}) and computes inference (dropout off, BN on its running statistics).
"""
from __future__ import annotations

import builtins
import inspect
import keyword
import re
from typing import NamedTuple

from . import kernels
from .ir import Graph, Node
from .ops import ACTIVATIONS, node_variables, pass_rules

# IR op -> fn(node, xs, e) -> a Python expression; filled by @flax_rule.
FLAX_RULES, flax_rule = pass_rules("flax rule")


class SourceEmitter:
    def __init__(self):
        self.used: dict[str, None] = {}        # kernels functions the module needs, in first-use order
        self.ins: list = []

    def use(self, fn: str) -> str:
        for name in _helpers_called(fn):       # what it calls, first
            self.use(name)
        self.used.setdefault(fn)
        return fn


def _helpers_called(fn: str) -> list:
    source = inspect.getsource(getattr(kernels, fn))
    return [h for h in _HELPERS if h != fn and re.search(rf"\b{h}\(", source)]


_HELPERS = [name for name, f in vars(kernels).items()
            if inspect.isfunction(f) and not name.startswith("_") and f.__module__ in (kernels.__name__, "archc.compiler.ops.pool")]


def _tuple(t) -> str:
    return repr(tuple(tuple(x) if isinstance(x, (list, tuple)) else x for x in t))


# ---------------------------------------------------------------------------------------------
# The rules
# ---------------------------------------------------------------------------------------------
@flax_rule("conv")
def _conv(node: Node, xs, e):
    a = node.attrs
    return (f"{e.use('conv')}({xs[0]}, v, strides={_tuple(a.strides)}, padding={_tuple(a.padding)}, "
            f"dilation={_tuple(a.dilation)}, groups={a.groups})")


@flax_rule("conv_transpose")
def _conv_transpose(node: Node, xs, e):
    a = node.attrs
    return (f"{e.use('conv_transpose')}({xs[0]}, v, strides={_tuple(a.strides)}, padding={_tuple(a.padding)}, "
            f"output_padding={_tuple(a.output_padding)})")


@flax_rule("dense")
def _dense(node: Node, xs, e):
    return f"{e.use('dense')}({xs[0]}, v)"


@flax_rule("pool")
def _pool(node: Node, xs, e):
    a = node.attrs
    if a.kind == "max":
        return (f"{e.use('max_pool')}({xs[0]}, {_tuple(a.kernel)}, {_tuple(a.strides)}, padding={_tuple(a.padding)}, "
                f"extra={_tuple(a.extra)})")
    return (f"{e.use('avg_pool')}({xs[0]}, {_tuple(a.kernel)}, {_tuple(a.strides)}, padding={_tuple(a.padding)}, "
            f"extra={_tuple(a.extra)}, count_include_pad={a.count_include_pad})")


@flax_rule("global_pool")
def _global_pool(node: Node, xs, e):
    fn = "jnp.mean" if node.attrs.kind == "avg" else "jnp.max"
    return f"{fn}({xs[0]}, axis=(1, 2), keepdims={node.attrs.keepdims})"


@flax_rule("adaptive_pool")
def _adaptive_pool(node: Node, xs, e):
    fn = "jnp.mean" if node.attrs.kind == "avg" else "jnp.max"
    return f"{e.use('adaptive_pool')}({xs[0]}, {_tuple(node.attrs.out)}, {fn})"


@flax_rule("bn")
def _bn(node: Node, xs, e):
    return f"{e.use('batch_norm')}({xs[0]}, v['mean'], v['var'], v, eps={node.attrs.eps!r})"


@flax_rule("layernorm")
def _layernorm(node: Node, xs, e):
    return f"{e.use('layer_norm')}({xs[0]}, v, eps={node.attrs.eps!r})"


@flax_rule("groupnorm")
def _groupnorm(node: Node, xs, e):
    return f"{e.use('group_norm')}({xs[0]}, v, groups={node.attrs.groups}, eps={node.attrs.eps!r})"


@flax_rule("layer_scale")
def _layer_scale(node: Node, xs, e):
    return f"{e.use('layer_scale')}({xs[0]}, v)"


@flax_rule("lrn")
def _lrn(node: Node, xs, e):
    a = node.attrs
    return f"{e.use('lrn')}({xs[0]}, size={a.size}, alpha={a.alpha!r}, beta={a.beta!r}, k={a.k!r})"


@flax_rule("l2norm")
def _l2norm(node: Node, xs, e):
    return f"{e.use('l2_norm')}({xs[0]}, v, eps={node.attrs.eps!r})"


@flax_rule("normalize")
def _normalize(node: Node, xs, e):
    return f"{e.use('normalize')}({xs[0]}, v, eps={node.attrs.eps!r})"


@flax_rule("act")
def _act(node: Node, xs, e):
    act = ACTIVATIONS[node.attrs.fn]          # its source is part of its record
    for helper in act.uses:
        e.use(helper)
    return act.flax_source.format(x=xs[0], alpha=node.attrs.alpha)


@flax_rule("scale")
def _scale(node: Node, xs, e):
    return f"{xs[0]} * {node.attrs.value!r}"


@flax_rule("dropout")
def _dropout(node: Node, xs, e):
    return xs[0]                               # inference


@flax_rule("drop_path")
def _drop_path(node: Node, xs, e):
    return xs[0]                               # inference


@flax_rule("identity")
def _identity(node: Node, xs, e):
    return xs[0]


@flax_rule("rescale")
def _rescale(node: Node, xs, e):
    return f"{e.use('rescale')}({xs[0]}, scale={_tuple(node.attrs.scale)}, offset={_tuple(node.attrs.offset)})"


@flax_rule("flatten")
def _flatten(node: Node, xs, e):
    return f"{e.use('flatten')}({xs[0]}, {node.attrs.order!r})"


@flax_rule("roi_align")
def _roi_align(node: Node, xs, e):
    a = node.attrs
    return (f"{e.use('roi_align')}({xs[0]}, [{', '.join(xs[1:])}], {_tuple(a.out)}, {_tuple(a.scales)}, "
            f"{a.sampling}, {a.aligned})")


@flax_rule("roi_pool")
def _roi_pool(node: Node, xs, e):
    return f"{e.use('roi_pool')}({xs[0]}, {xs[1]}, {_tuple(node.attrs.out)}, {node.attrs.scale!r})"


@flax_rule("reshape")
def _reshape(node: Node, xs, e):
    return f"{xs[0]}.reshape(({xs[0]}.shape[0],) + {_tuple(node.attrs.shape)})"


@flax_rule("shuffle")
def _shuffle(node: Node, xs, e):
    return f"{e.use('channel_shuffle')}({xs[0]}, groups={node.attrs.groups})"


@flax_rule("slice")
def _slice(node: Node, xs, e):
    return f"{xs[0]}[..., {node.attrs.start}:{node.attrs.stop}]"


@flax_rule("pad")
def _pad(node: Node, xs, e):
    (t, b), (l, r) = node.attrs.padding
    return f"jnp.pad({xs[0]}, ((0, 0), ({t}, {b}), ({l}, {r}), (0, 0)), constant_values={node.attrs.value!r})"


@flax_rule("crop")
def _crop(node: Node, xs, e):
    (t, b), (l, r) = node.attrs.crop
    h, w, _ = e.ins[0]
    return f"{xs[0]}[:, {t}:{h - b}, {l}:{w - r}, :]"


@flax_rule("upsample")
def _upsample(node: Node, xs, e):
    if node.attrs.factor is None:
        return f"{e.use('upsample_to')}({xs[0]}, {xs[1]}, {node.attrs.method!r})"
    return f"{e.use('upsample_' + node.attrs.method)}({xs[0]}, {_tuple(node.attrs.factor)})"


@flax_rule("concat")
def _concat(node: Node, xs, e):
    return xs[0] if len(xs) == 1 else f"jnp.concatenate([{', '.join(xs)}], axis=-1)"


@flax_rule("add")
def _add(node: Node, xs, e):
    return " + ".join(xs)


@flax_rule("mul")
def _mul(node: Node, xs, e):
    return " * ".join(xs)


# ---------------------------------------------------------------------------------------------
# The module
# ---------------------------------------------------------------------------------------------
_HEADER = '''"""{name}: generated by `archc export --format flax`{origin}.

A Flax Linen module that needs only JAX and Flax. It takes archc's variables --
{{'params': {{node: {{leaf: array}}}}, 'batch_stats': {{node: {{leaf: array}}}}}}, node names as in
the .arch file -- and computes inference (dropout off, batch norm on its running statistics):

    variables = ...                            # e.g. safetensors.flax.load_file + unflatten on '/'
    y = {cls}().apply(variables, x)    # x: float32, NHWC {shape}
"""
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax import lax
'''

_DECLARE = '''
    def declare(self, node, params=(), batch_stats=()):
        """The variables of ``node``, created at init: ``params``/``batch_stats`` are (leaf,
        shape, initialiser) with Flax's initialisers, or a number for a constant."""
        def init(leaves):
            def make(key=None):
                keys = jax.random.split(key, len(leaves)) if key is not None else [None] * len(leaves)
                return {{leaf: INITIALISERS[how](k, shape, jnp.float32) if isinstance(how, str)
                        else jnp.full(shape, how, jnp.float32) for (leaf, shape, how), k in zip(leaves, keys)}}
            return make
        v = dict(self.param(node, init(params))) if params else {{}}
        if batch_stats:
            v.update(self.variable("batch_stats", node, init(batch_stats)).value)
        return v
'''

_INITIALISERS = '''
INITIALISERS = {"lecun_normal": jax.nn.initializers.lecun_normal(), "zeros": jax.nn.initializers.zeros,
                "ones": jax.nn.initializers.ones}
'''


def identifiers(graph: Graph) -> dict[str, str]:
    taken = set(_HELPERS) | set(dir(builtins)) | {"jax", "jnp", "np", "nn", "lax", "v", "x", "self", "INITIALISERS", "nnx", "rngs"}
    names = {graph.inputs[0]: "x"} if len(graph.inputs) == 1 else {}
    for node in graph:
        if node.name in names:
            continue
        base = re.sub(r"\W", "_", node.name)
        base = "_" + base if base[0].isdigit() or keyword.iskeyword(base) else base
        name, k = base, 1
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name)
        names[node.name] = name
    return names


def class_name(graph: Graph) -> str:
    return "".join(p[:1].upper() + p[1:] for p in re.split(r"\W|_", graph.name) if p) or "Network"


def _declaration(node: Node, in_shapes) -> str | None:
    """``params=[(leaf, shape, initialiser)...], batch_stats=[...]`` for a node with variables."""
    specs = node_variables(node, in_shapes)
    if not specs:
        return None
    groups = {}
    for s in specs:
        how = s.init if s.init != "constant" else s.value
        groups.setdefault(s.collection, []).append(f"({s.leaf!r}, {tuple(s.shape)!r}, {how!r})")
    return ", ".join(f"{col}=[{', '.join(items)}]" for col, items in groups.items())


def check_convertible(graph: Graph) -> None:
    from .onnx import ExportError
    missing = [n for n in graph if n.op != "input" and n.op not in FLAX_RULES]
    if missing:
        raise ExportError(f"op {missing[0].op!r} has no Flax source rule (node {missing[0].name!r})")


class NodeLine(NamedTuple):
    """One IR node of the generated module: its comment, its variables (``_declaration``),
    the node whose variables it uses (itself, the node it shares them with, or None), and the
    assignment computing it."""
    node: Node
    comment: str
    declaration: str | None
    owner: str | None
    assignment: str


def node_lines(graph: Graph, ids: dict, e: SourceEmitter) -> list:
    """The network as one ``NodeLine`` per non-input node, in graph order."""
    check_convertible(graph)
    lines, declared = [], set()
    for node in graph:
        if node.op == "input":
            continue
        e.ins = [graph.nodes[i].shape for i in node.inputs]
        where = f"  ({node.span.file.rsplit('/', 1)[-1]}:{node.span.line})" if node.span else ""
        declaration = _declaration(node, e.ins)
        if declaration:
            declared.add(node.name)
        owner = node.shares if node.shares in declared else (node.name if declaration else None)
        lines.append(NodeLine(node, f"# {node.name}: {node.op} -> {'x'.join(map(str, node.shape))}{where}", declaration,
                              owner, f"{ids[node.name]} = {FLAX_RULES[node.op](node, [ids[i] for i in node.inputs], e)}"))
    return lines


def return_line(graph: Graph, ids: dict) -> str:
    if len(graph.outputs) == 1:
        return f"return {ids[graph.outputs[0]]}"
    return "return {" + ", ".join(f"{o!r}: {ids[o]}" for o in graph.outputs) + "}"


def module_parts(graph: Graph, header: str, e: SourceEmitter) -> list:
    """The header (formatted with name, origin, cls, shape), the initialisers and the copied
    ``kernels`` functions: what both the Linen and the NNX module start with."""
    origin = next((f" from {n.span.file.rsplit('/', 1)[-1]}" for n in graph if n.span), "")
    shape = ", ".join(f"(N, {', '.join(map(str, graph.nodes[n].shape))})" for n in graph.inputs)
    parts = [header.format(name=graph.name, origin=origin, cls=class_name(graph), shape=shape), _INITIALISERS]
    return parts + ["\n\n" + inspect.getsource(getattr(kernels, fn)) for fn in e.used]


def to_flax_source(graph: Graph) -> str:
    """The source of a module defining ``class <Name>(nn.Module)`` for the graph."""
    ids, e = identifiers(graph), SourceEmitter()
    body = []
    lines = node_lines(graph, ids, e)
    owners = {n.shares for n in graph if n.shares}
    for line in lines:
        name = line.node.name
        body.append(f"        {line.comment}")
        if line.declaration:
            body.append(f"        v = self.declare({name!r}, {line.declaration})")
        if name in owners:
            body.append(f"        {ids[name]}_v = v")
        elif line.node.shares:                 # the same variables as an earlier node
            body.append(f"        v = {ids[line.node.shares]}_v")
        body.append(f"        {line.assignment}")
    body.append(f"        {return_line(graph, ids)}")
    args = ", ".join(ids[n] for n in graph.inputs)
    parts = module_parts(graph, _HEADER, e)
    parts.append(f"\n\nclass {class_name(graph)}(nn.Module):\n"
                 f'    """{graph.name}: {len(graph.nodes)} nodes, one assignment each."""\n\n'
                 f"    @nn.compact\n    def __call__(self, {args}):\n" + "\n".join(body) + "\n")
    parts.append(_DECLARE.format())
    return "".join(parts)
