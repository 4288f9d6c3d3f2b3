"""The lowered graph as a Flax Linen module, for composing archc graphs into Linen models.

It holds no computation of its own: it declares each node's variables (Linen's initialisers,
one draw per leaf) and calls the pure ``run_graph``. ``archc.runtime.model.Model`` calls
``run_graph`` directly; kept apart so that the spec tools never import Flax.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from .lower import Program, run_graph, variables_tree

_LINEN_INIT = {
    "lecun_normal": lambda spec: nn.initializers.lecun_normal(),
    "zeros": lambda spec: nn.initializers.zeros_init(),
    "ones": lambda spec: nn.initializers.ones_init(),
    "constant": lambda spec: nn.initializers.constant(spec.value),
}


def _linen_initialiser(specs: list):
    def init(key=None):
        keys = jax.random.split(key, len(specs)) if key is not None else [None] * len(specs)
        return {s.leaf: _LINEN_INIT[s.init](s)(k, tuple(s.shape), jnp.float32) for s, k in zip(specs, keys)}
    return init


class GraphModule(nn.Module):
    """Runs an archc graph (see ``run_graph`` for ``x`` and ``outputs``). Variables: each
    parameterised node's leaves under its IR name in 'params' and 'batch_stats'; training
    mode updates 'batch_stats' (apply with ``mutable=['batch_stats']``) and draws dropout
    masks from the 'dropout' rng. ``dtype``: the mixed-precision policy's compute dtype
    (``model.module.clone(dtype="bfloat16")``); None computes in float32."""

    program: Program
    dtype: Any = None

    @nn.compact
    def __call__(self, x, train: bool = False, outputs: tuple[str, ...] | None = None):
        specs = variables_tree(self.program.variable_specs, lambda spec: spec)
        params = {node: self.param(node, _linen_initialiser(list(leaves.values())))
                  for node, leaves in specs.get("params", {}).items()}
        stats = {node: self.variable("batch_stats", node, _linen_initialiser(list(leaves.values())))  # not random
                 for node, leaves in specs.get("batch_stats", {}).items()}
        variables = {"params": params, "batch_stats": {node: s.value for node, s in stats.items()}}
        rng = self.make_rng("dropout") if train and self.program.has_dropout else None
        y, updates = run_graph(self.program, variables, x, train=train, outputs=outputs, rng=rng,
                               every_node=self.is_initializing(), dtype=self.dtype)
        if not self.is_initializing():
            for node, new in updates.items():
                stats[node].value = {**stats[node].value, **new}
        return y
