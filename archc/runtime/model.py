"""``archc.load(...)`` -> ``Model``: a compiled archc graph with init/apply.

    model = archc.load("resnet50", classes=10)
    variables = model.init(seed=0)
    y = model.apply(variables, x)                                   # jit-compiled inference
    y, variables = model.apply(variables, x, train=True, rng=key)   # new batch_stats, dropout on
    feats = model.apply(variables, x, outputs=["layer3", "layer4"])  # dict name -> array

``model.apply_fn`` is the same computation without the internal ``jax.jit``, for composing
with ``jax.jit``/``jax.grad``/``jax.vmap`` yourself (``model.apply`` works inside them too).
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from functools import partial
from math import prod

import jax
import jax.numpy as jnp
import numpy as np

from ..compiler.declarations import Init
from ..compiler.ir import Graph
from ..compiler.lower import Program, compute_dtype, run_graph, variables_tree
from ..compiler.stats import summarize


def load(spec: str, *, input_shape: tuple | None = None, **params) -> "Model":
    """Compile a built-in architecture name (``"resnet50"``) or an ``.arch`` file path.

    Keyword arguments override the family's parameters (``classes=10``, ``width=0.5``...);
    ``input_shape=(H, W, C)`` overrides the input size.
    """
    from ..compiler.build import build_graph

    graph = build_graph(spec, params or None, tuple(input_shape) if input_shape else None)
    return Model(graph)


class Summary(dict):
    """``Model.summary()``'s data: a dict, shown in one line (the table is already printed, and a
    notebook would otherwise echo every layer again)."""

    def __repr__(self) -> str:
        return (f"<summary of {self['name']}: {self['total_params']:,} params, {self['macs']:,} MACs, "
                f"{len(self['layers'])} layers; a dict: {', '.join(self)}>")


class Model:
    """A compiled graph. Stateless: variables are passed in and returned, never kept."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.program = Program(graph)
        self._apply_jit = jax.jit(self._apply_pure, static_argnames=("train", "outputs", "dtype"))

    @property
    def variable_specs(self) -> tuple:
        """Every variable the model has, in graph order (archc.compiler.ops.VarSpec)."""
        return self.program.variable_specs

    # ---- description ----
    @property
    def name(self) -> str:
        return self.graph.name

    @property
    def input_shape(self) -> tuple:
        return tuple(self.graph.input_shape)

    @property
    def output_shape(self) -> tuple:
        return tuple(self.graph.output_shape)

    def symbolic_shape(self, batch: str = "b") -> tuple:
        """``(spec, constraints)`` for ``jax.export.symbolic_shape``: a symbolic batch, and the
        spatial axes symbolic where the network is exact on one progression of sizes (ResNet-50:
        ``'b, 32*h, 32*w, 3'``), as derived by ``archc check --sizes``. Export once, call at
        every such size: ``jax.export.export(jax.jit(model.apply_fn))(variables,
        jax.ShapeDtypeStruct(jax.export.symbolic_shape(spec, constraints=constraints), jnp.float32))``."""
        from ..compiler.sizes import symbolic_shape
        return symbolic_shape(self.graph, batch)

    def summary(self, batch: int = 1, optimizer: str = "momentum", names=None, print_fn=print) -> "Summary":
        """Print the layer table, totals and memory estimate (as ``archc build`` and Keras's
        ``model.summary()`` do) through ``print_fn`` (``None``: print nothing), and return the
        data: parameter and MAC counts, overall and per node (see ``archc.compiler.stats``), and
        ``memory``: the estimate for ``batch`` (``archc.compiler.memory.estimate``).
        ``names``: the report of ``archc.import_weights`` (or a dict node -> name): each layer
        that the checkpoint filled gets its name there as ``source_name`` (Keras's ``conv_dw_1``
        beside archc's ``blocks.0.dwconv1``)."""
        from ..compiler.memory import estimate, render_memory
        from ..compiler.stats import render_table
        s = Summary({**summarize(self.graph), "memory": estimate(self.graph, batch, optimizer)})
        if names is not None:
            names = names.source_names() if hasattr(names, "source_names") else dict(names)
            for layer in s["layers"]:
                if layer["name"] in names:
                    layer["source_name"] = names[layer["name"]]
        if print_fn is not None:
            print_fn(render_table(s, self.graph) + "\n" + render_memory(s["memory"]))
        return s

    def __repr__(self) -> str:
        s = summarize(self.graph)
        fmt = "x".join
        return (f"Model({self.name!r}, {fmt(map(str, self.input_shape))} -> "
                f"{fmt(map(str, self.output_shape))}, {s['trainable_params']:,} params)")

    @property
    def module(self):
        """The same network as a Flax Linen module (archc.compiler.linen.GraphModule)."""
        from ..compiler.linen import GraphModule
        return GraphModule(self.program)

    def to_nnx(self, variables=None, *, rngs=None, dtype=None, partition=None, mesh=None):
        """The same network as a Flax NNX module (archc.runtime.nnx_module.GraphNNX), computing
        through the same lowering. ``variables``: archc's (``init``, ``load_variables``,
        ``import_weights``); None: ``init`` with a key from ``rngs.params`` (``rngs`` default
        ``nnx.Rngs(0)``, whose ``dropout`` stream also drives dropout). Each node's leaves are
        ``nnx.Param`` / ``nnx.BatchStat`` under its IR name; as ``nnx.BatchNorm`` it starts in
        training mode (``.eval()`` for inference). ``dtype='bfloat16'``: the mixed-precision
        policy of ``apply``. ``partition(spec) -> axis names`` annotates each variable's sharding
        (default: replicated, the data-parallel layout); with ``mesh`` (or under
        ``jax.set_mesh``) the variables are placed on it. See docs/flax.md."""
        from .nnx_module import GraphNNX
        return GraphNNX(self, variables, rngs=rngs, dtype=dtype, partition=partition, mesh=mesh)

    # ---- variables ----
    def init(self, seed: int | jax.Array = 0, **how) -> dict:
        """Fresh variables ``{'params': {node: {...}}, 'batch_stats': {node: {...}}}``.

        Kernels as the network's ``init(conv=…, dense=…, zero_init_residual=…)`` declaration
        says (docs/language.md; without it, Flax's default: LeCun-normal, a normal truncated to
        ±2σ with variance 1/fan_in), biases and BatchNorm shifts/means 0, scales/variances 1;
        keyword arguments override the declaration (``model.init(0, conv="he_normal_fan_out",
        zero_init_residual=True)``: torchvision's ResNet init). The same seed (an int, or a PRNG
        key) gives bit-identical variables.

        All kernels come from one jitted draw, split and scaled per kernel: XLA:CPU compiles a
        threefry call in ~0.5 s, so Linen's one-draw-per-parameter init (``model.module.init``,
        equally valid, different numbers) takes ~20 s to compile for ResNet-50 where this takes
        ~1 s. The splitting happens on the host, except under a JAX transformation
        (``jax.eval_shape(model.init)``, ``jax.jit``), where it is traced.
        """
        key = seed if isinstance(seed, jax.Array) else jax.random.PRNGKey(int(seed))
        how = self._init_declaration(how)
        kinds = {n.name: how.dense if n.op == "dense" else how.conv for n in self.graph}
        drawn = [v for v in self.variable_specs if v.init == "lecun_normal"]
        # one draw per base distribution the network's kernels use (one, unless conv and dense differ)
        flats, offsets = {}, {}
        for base in dict.fromkeys(_KERNEL_DRAW[kinds[v.node]][0] for v in drawn):
            n = sum(prod(v.shape) for v in drawn if _KERNEL_DRAW[kinds[v.node]][0] == base)
            key, sub = jax.random.split(key) if len(flats) else (key, key)
            flat = _draw(sub, _bucket(n), base)
            flats[base], offsets[base] = flat if isinstance(flat, jax.core.Tracer) else np.asarray(flat), 0
        zeroed = _residual_branch_ends(self.graph) if how.zero_init_residual else set()

        def value(v):
            if v.init == "lecun_normal":
                base, scale = _KERNEL_DRAW[kinds[v.node]]
                n = prod(v.shape)
                offsets[base] += n
                receptive = prod(v.shape[:-2])
                fan_out = receptive * n // v.fan_in
                flat = flats[base][offsets[base] - n:offsets[base]]
                return jnp.asarray(flat.reshape(v.shape) * np.float32(scale(v.fan_in, fan_out)))
            if v.leaf == "scale" and v.node in zeroed:
                return jnp.zeros(v.shape, jnp.float32)
            fill = {"zeros": 0.0, "ones": 1.0}.get(v.init, v.value)
            return jnp.asarray(np.full(v.shape, fill, np.float32))

        return variables_tree(self.variable_specs, value)

    def _init_declaration(self, overrides: dict) -> Init:
        from dataclasses import asdict

        from ..compiler.declarations import bind_values
        declared = self.graph.declarations.get("init") or Init()
        return bind_values("init", {**asdict(declared), **overrides}) if overrides else declared

    # ---- running ----
    def _rngs(self, rngs, train: bool):
        if rngs is None:
            if train and self.program.has_dropout:
                raise ValueError(f"{self.name}: train=True runs its dropout layers, which need a "
                                 "random key: pass rng=jax.random.PRNGKey(step)")
            return {}
        if isinstance(rngs, Mapping):
            return dict(rngs)
        return {"dropout": rngs}

    def apply_fn(self, variables, x, train: bool = False, rng=None,
                 outputs: Sequence[str] | str | None = None, dtype=None, **deprecated):
        """The pure forward function (no internal jit).

        Returns the primary output, or a dict name -> array when ``outputs`` names nodes.
        With ``train=True`` returns ``(y, variables)`` where ``variables`` holds the updated
        ``batch_stats`` (and dropout is active: ``rng`` is a key or ``{'dropout': key}``; the
        old name ``rngs=`` still works, with a DeprecationWarning).
        ``dtype='bfloat16'``: mixed precision -- convs and dense layers compute in bf16, BN
        statistics, variables and outputs stay float32 (archc.compiler.lower.COMPUTE_DTYPES).
        """
        rngs = self._rngs(_renamed_rng(rng, deprecated), train)
        y, updates = run_graph(self.program, variables, x, train=train, outputs=outputs,
                               rng=rngs.get("dropout"), dtype=dtype)
        if not train:
            return y
        return y, {**variables, "batch_stats": {**variables.get("batch_stats", {}), **updates}}

    def _apply_pure(self, variables, x, rng, train, outputs, dtype):
        return self.apply_fn(variables, x, train=train, rng=rng, outputs=outputs, dtype=dtype)

    def apply(self, variables, x, train: bool = False, rng=None,
              outputs: Sequence[str] | str | None = None, dtype=None, **deprecated):
        """``apply_fn`` compiled with ``jax.jit``, cached per (input shapes, train, outputs,
        dtype). ``rng``: a PRNG key (or dict of keys) for dropout when ``train=True``.

        ``x``: float32, NHWC, of the size the model was built for (``model.input_shape``) or
        another the network runs on with the same variables (a fully convolutional network
        with a global pool takes any size its layers accept: ``archc check --sizes``); any
        other size, a channels-first array or integer pixels raise a ValueError that says what
        the model was built for."""
        rng = _renamed_rng(rng, deprecated)
        outputs = self.program.check_outputs(outputs)
        self._rngs(rng, train)                         # fail early, outside the trace
        dtype = compute_dtype(dtype)
        return self._apply_jit(variables, x, rng, train=bool(train), outputs=outputs,
                               dtype=None if dtype is None else jnp.dtype(dtype).name)

    def fold_batchnorm(self, variables) -> tuple["Model", dict]:
        """An inference model with each BN folded into the conv/dense before it, and its variables
        (archc.compiler.fold). The folded model computes the same function in fewer ops."""
        from ..compiler.fold import fold_batchnorm
        graph, folded = fold_batchnorm(self.graph, jax.tree_util.tree_map(np.asarray, variables))
        return Model(graph), jax.tree_util.tree_map(jnp.asarray, folded)

    def eval_shapes(self, batch: int = 1) -> dict[str, tuple]:
        """Shape of every node's output for a batch of ``batch``, traced by ``jax.eval_shape``
        (nothing is computed or allocated): name -> (batch, *node shape)."""
        names = tuple(self.graph.nodes)
        xs = tuple(jax.ShapeDtypeStruct((batch,) + tuple(self.graph[n].shape), jnp.float32)
                   for n in self.graph.inputs)
        x = xs[0] if len(xs) == 1 else xs

        # Abstract variables from the specs: tracing apply skips the initialisers entirely.
        variables = variables_tree(self.variable_specs,
                                   lambda v: jax.ShapeDtypeStruct(tuple(v.shape), jnp.float32))

        def run(variables, x):
            return run_graph(self.program, variables, x, outputs=names)[0]

        return {k: tuple(v.shape) for k, v in jax.eval_shape(run, variables, x).items()}


def _renamed_rng(rng, deprecated: dict):
    """``rngs=``, apply_fn's old name for ``rng=``: still taken, with a DeprecationWarning."""
    unknown = set(deprecated) - {"rngs"}
    if unknown:
        raise TypeError(f"unexpected keyword argument {sorted(unknown)[0]!r}")
    if "rngs" not in deprecated:
        return rng
    warnings.warn("rngs= is now rng= (the same name as Model.apply's)", DeprecationWarning, stacklevel=3)
    if rng is not None:
        raise TypeError("give rng= only (rngs= is its old name)")
    return deprecated["rngs"]


_TRUNC_STD = 0.87962566103423978   # stddev of a standard normal truncated to [-2, 2] (as Flax)

# declarations.KERNEL_INITS name -> (base draw, the factor on it for (fan_in, fan_out))
_KERNEL_DRAW = {
    "lecun_normal": ("truncated_normal", lambda fi, fo: np.float32(np.sqrt(1.0 / fi)) / np.float32(_TRUNC_STD)),
    "he_normal": ("truncated_normal", lambda fi, fo: np.float32(np.sqrt(2.0 / fi)) / np.float32(_TRUNC_STD)),
    "he_normal_fan_out": ("normal", lambda fi, fo: np.sqrt(2.0 / fo)),
    "glorot_uniform": ("uniform", lambda fi, fo: np.sqrt(6.0 / (fi + fo))),
    "torch_default": ("uniform", lambda fi, fo: np.sqrt(1.0 / fi)),
}


def _residual_branch_ends(graph: Graph) -> set:
    """The batch norms that end a residual branch: the last operand of a two-operand add (the
    body of residual<…>, which adds it to the shortcut), through a residual scale."""
    out = set()
    for node in graph:
        if node.op == "add" and len(node.inputs) == 2:
            end = graph.nodes[node.inputs[-1]]
            if end.op == "scale":
                end = graph.nodes[end.inputs[0]]
            if end.op == "bn" and end.name != graph.nodes[node.inputs[0]].name:
                out.add(end.name)
    return out


def _bucket(n: int) -> int:
    """Round the draw size up (by < 12.5%) so that models of similar size share one compiled
    draw: compiling threefry is what an init of a small model mostly costs."""
    step = 1 << max(n.bit_length() - 4, 12)
    return -(-n // step) * step


@partial(jax.jit, static_argnums=(1, 2))
def _draw(key, n: int, base: str):
    if base == "truncated_normal":
        return jax.random.truncated_normal(key, -2.0, 2.0, (n,), jnp.float32)
    if base == "normal":
        return jax.random.normal(key, (n,), jnp.float32)
    return jax.random.uniform(key, (n,), jnp.float32, -1.0, 1.0)
