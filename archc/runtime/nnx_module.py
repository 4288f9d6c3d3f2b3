"""An archc network as a Flax NNX module: ``model.to_nnx(variables, rngs=nnx.Rngs(0))``.

    net = archc.load("resnet18", classes=10).to_nnx(rngs=nnx.Rngs(0))   # archc's initialiser
    net.eval(); y = net(x)                       # == model.apply(variables, x)
    net.train(); y = net(x)                      # batch statistics; BN's running stats updated

It holds no computation of its own: its ``__call__`` gathers the variables and calls the lowering's
``run_graph``, the one function ``Model.apply`` and the Linen ``GraphModule`` call too. Each
parameterised node is an attribute named after its IR node, a dict of its leaves as
``nnx.Param`` (kernel, bias, BN's scale) and ``nnx.BatchStat`` (BN's mean, var), so that
``nnx.to_pure_dict(nnx.state(net, nnx.Param))`` is archc's ``variables['params']`` and
``bridge.to_linen`` gives the Linen wrapper's variables. As ``nnx.BatchNorm`` and
``nnx.Dropout``, the module starts in training mode: ``.eval()`` / ``.train()`` (or
``nnx.view(net, use_running_average=..., deterministic=...)``) switch BN and dropout together.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from ..compiler.lower import compute_dtype, run_graph

_KIND = {"params": nnx.Param, "batch_stats": nnx.BatchStat}
_OWN = ("model", "dtype", "rngs", "use_running_average", "deterministic")


class GraphNNX(nnx.Module):
    """An archc ``Model`` as an NNX module; see ``Model.to_nnx``."""

    def __init__(self, model, variables: Mapping | None = None, *, rngs: nnx.Rngs | None = None,
                 dtype=None, partition: Callable | None = None, mesh: jax.sharding.Mesh | None = None):
        rngs = nnx.Rngs(0) if rngs is None else rngs
        specs = model.variable_specs
        _check_names(model, {s.node for s in specs})
        if variables is None:
            variables = model.init(_stream(rngs, "params", model)())
        else:
            check_variables(model, variables)
        self.model = nnx.static(model)
        dtype = compute_dtype(dtype)
        self.dtype = None if dtype is None else jnp.dtype(dtype).name
        self.use_running_average = False
        self.deterministic = False
        self.rngs = _stream(rngs, "dropout", model).fork() if model.program.has_dropout else nnx.data(None)
        nodes: dict = {}
        eager = mesh is not None or _mesh_active()
        for s in specs:
            axes = tuple(partition(s)) if partition is not None else (None,) * len(s.shape)
            metadata = {"out_sharding": axes, "eager_sharding": eager, **({"mesh": mesh} if mesh is not None else {})}
            value = jnp.asarray(variables[s.collection][s.node][s.leaf], jnp.float32)
            nodes.setdefault(s.node, {})[s.leaf] = _KIND[s.collection](value, **metadata)
        for node, leaves in nodes.items():
            setattr(self, node, nnx.data(leaves))

    def set_view(self, use_running_average: bool | None = None, deterministic: bool | None = None):
        """``nnx.view``'s hook (BatchNorm's and Dropout's flags)."""
        if use_running_average is not None:
            self.use_running_average = use_running_average
        if deterministic is not None:
            self.deterministic = deterministic

    def _leaves(self, node: str) -> dict:
        return getattr(self, node)

    def __call__(self, x, *, outputs=None, rngs=None):
        """The network on ``x`` (NHWC; several graph inputs: a dict or sequence, as
        ``model.apply``). Returns the primary output, or a dict name -> array for ``outputs``
        (nodes or blocks). In training mode BN normalises with the batch's statistics and
        updates its running ones in place, and dropout draws from ``rngs`` (a key, an
        ``nnx.Rngs`` or ``RngStream``) or else the stream the module was made with."""
        if self.use_running_average != self.deterministic:
            raise ValueError("an archc network switches batch norm and dropout together: set "
                             "use_running_average and deterministic alike (net.train() / net.eval())")
        train = not self.use_running_average
        variables: dict = {}
        for s in self.model.variable_specs:
            variables.setdefault(s.collection, {}).setdefault(s.node, {})[s.leaf] = self._leaves(s.node)[s.leaf][...]
        key = _dropout_key(rngs if rngs is not None else self.rngs) if train and self.model.program.has_dropout else None
        y, updates = run_graph(self.model.program, variables, x, train=train, outputs=outputs, rng=key,
                               dtype=self.dtype)
        for node, new in updates.items():
            for leaf, value in new.items():
                self._leaves(node)[leaf][...] = value
        return y


def _dropout_key(rngs):
    if isinstance(rngs, nnx.Rngs):
        return rngs.dropout()
    if isinstance(rngs, nnx.RngStream):
        return rngs()
    if isinstance(rngs, jax.Array):
        return rngs
    raise TypeError(f"dropout needs a key, an nnx.Rngs or an nnx.RngStream, not {type(rngs).__name__}")


def _stream(rngs: nnx.Rngs, name: str, model) -> nnx.RngStream:
    try:
        return rngs[name]
    except KeyError:
        why = "its initialiser" if name == "params" else "its dropout layers"
        raise ValueError(f"{model.name}: {why} need a random stream: give rngs a {name!r} or 'default' "
                         f"stream (nnx.Rngs(0))") from None


def _mesh_active() -> bool:
    return not jax.sharding.get_abstract_mesh().empty


def _check_names(model, nodes) -> None:
    taken = set(_OWN) | set(dir(GraphNNX))
    clash = sorted(nodes & taken)
    if clash:
        raise ValueError(f"{model.name}: node {clash[0]!r} has the name of a GraphNNX attribute; rename it "
                         "in the .arch file to use the network as an NNX module")


def check_variables(model, variables: Mapping) -> None:
    """Every variable ``model`` reads is in ``variables`` with its shape (ValueError otherwise)."""
    from ..compiler.onnx import ExportError
    from .export import check_variables as check
    try:
        check(model, variables)
    except ExportError as e:
        raise ValueError(str(e)) from None


# ---------------------------------------------------------------------------------------------
# archc's variables dict <-> NNX state
# ---------------------------------------------------------------------------------------------
def nnx_variables(net_or_state) -> dict:
    """NNX -> archc: ``{'params': {node: {leaf: array}}, 'batch_stats': ...}`` from a
    ``GraphNNX`` (or its ``nnx.state``, e.g. one orbax restored), ready for
    ``archc.save_variables``, ``model.apply``, ``archc predict`` and ``archc export``."""
    state = net_or_state if isinstance(net_or_state, nnx.State) else nnx.state(net_or_state)
    out = {}
    for collection, kind in _KIND.items():
        part = nnx.to_pure_dict(nnx.filter_state(state, kind))
        if part:
            out[collection] = part
    return out


def load_nnx_variables(net: GraphNNX, variables: Mapping) -> None:
    """archc -> NNX: write archc's variables (``model.init``, ``archc.load_variables``,
    ``archc.import_weights``) into ``net``'s ``nnx.Param``/``nnx.BatchStat``, in place; every
    name and shape is checked first."""
    model = net.model
    check_variables(model, variables)
    for s in model.variable_specs:
        net._leaves(s.node)[s.leaf][...] = jnp.asarray(variables[s.collection][s.node][s.leaf], jnp.float32)
