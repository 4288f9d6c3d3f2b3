"""Property-based shape testing for .arch families (docs/testing.md).

``archc.testing.strategies`` (hypothesis, ``pip install archc[testing]``): ``input_shapes``,
``invalid_input_shapes``, ``programs``, ``blocks``, ``family_params``. ``check_shapes`` asserts
that every node's predicted shape is what the JAX lowering computes.
"""
from __future__ import annotations


def check_shapes(spec, input_shape: tuple | None = None, params: dict | None = None):
    """Build `spec` (a built-in name, an .arch path, a Graph or an archc Model) at `input_shape`
    and assert that every node's shape from the shape checker equals ``jax.eval_shape`` of its
    lowering. Returns the Graph. An invalid size raises the front end's ArchError."""
    from ..compiler.build import build_graph
    from ..compiler.ir import Graph
    from ..runtime.model import Model
    graph = spec.graph if isinstance(spec, Model) else spec
    if isinstance(graph, Graph):
        if input_shape is not None and tuple(input_shape) != tuple(graph.input_shape):
            raise ValueError(f"{graph.name} is built for {graph.input_shape}: pass the spec (a name or a path) "
                             "to check another input size")
    else:
        graph = build_graph(graph, params, tuple(input_shape) if input_shape is not None else None)
    lowered = Model(graph).eval_shapes(batch=1)
    wrong = {n: (tuple(s[1:]), tuple(graph.nodes[n].shape)) for n, s in lowered.items()
             if n in graph.nodes and tuple(s[1:]) != tuple(graph.nodes[n].shape)}
    missing = set(graph.nodes) - set(lowered) - set(graph.inputs)
    assert not wrong, f"{graph.name}: lowered shapes differ from the checker's (node: (lowered, checked)): " + \
        ", ".join(f"{n}: {v}" for n, v in list(wrong.items())[:5])
    assert not missing, f"{graph.name}: nodes the lowering did not compute: {sorted(missing)[:5]}"
    return graph


__all__ = ["check_shapes"]
