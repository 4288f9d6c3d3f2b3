"""Every op is whole: a definition, a lowering, a NumPy reference, a place in the all-ops graph
and a row in the generated docs table. These tests fail when any piece of an op is missing."""
from __future__ import annotations

import pytest

from archc.compiler import ops
from archc.compiler.ir import Node, verify
from archc.tools import ops_doc

from test_lowering import ACT_REFS, NUMPY_REFERENCES, every_op_graph

COMPUTING_OPS = set(ops.OPS) - {"input"}      # the input is bound from the arguments, not lowered


def test_every_op_has_a_lowering():
    from archc.compiler.lower import LOWERINGS
    assert set(LOWERINGS) == COMPUTING_OPS, (
        f"ops without a lowering: {sorted(COMPUTING_OPS - set(LOWERINGS))}; "
        f"lowerings without an op: {sorted(set(LOWERINGS) - COMPUTING_OPS)}")


def test_every_op_has_export_rules():
    """ONNX emission and Flax source: an op added without its rules fails here (onnx itself is
    imported only when a model is built, so this runs without it)."""
    from archc.compiler.flax_source import ACTIVATION_SOURCES, FLAX_RULES
    from archc.compiler.onnx import ACTIVATION_RULES, ONNX_RULES
    assert set(ONNX_RULES) == COMPUTING_OPS, f"ops without an ONNX rule: {sorted(COMPUTING_OPS - set(ONNX_RULES))}"
    assert set(FLAX_RULES) == COMPUTING_OPS, f"ops without a Flax source rule: {sorted(COMPUTING_OPS - set(FLAX_RULES))}"
    assert set(ACTIVATION_RULES) == set(ACTIVATION_SOURCES) == set(ops.ACTIVATIONS)


def test_every_op_has_a_size_rule():
    """compiler/sizes.py: how each op maps an input extent to its output extent, per axis."""
    from archc.compiler.sizes import SIZE_RULES
    assert set(SIZE_RULES) == set(ops.OPS), f"ops without a size rule: {sorted(set(ops.OPS) - set(SIZE_RULES))}"


def test_every_op_has_a_numpy_reference():
    assert set(NUMPY_REFERENCES) == COMPUTING_OPS, f"ops without a NumPy reference test: {sorted(COMPUTING_OPS - set(NUMPY_REFERENCES))}"


def test_every_activation_has_a_lowering_and_a_reference():
    from archc.compiler.lower import ACTIVATION_FNS
    assert set(ACT_REFS) == set(ops.ACTIVATIONS) == set(ACTIVATION_FNS)


def test_the_all_ops_graph_uses_every_op():
    graph = every_op_graph().output()
    assert {n.op for n in graph} == set(ops.OPS), f"missing from every_op_graph: {sorted(set(ops.OPS) - {n.op for n in graph})}"


def test_every_surface_op_has_a_row_in_the_generated_docs_table():
    text = ops_doc.DOC.read_text(encoding="utf-8")
    assert ops_doc.render(text) == text, "docs/language.md's ops table is stale: run python -m archc.tools.ops_doc"
    assert ops_doc.surface_kinds_in(text) == set(ops.SURFACES)


@pytest.mark.parametrize("name", sorted(ops.OPS))
def test_definition_is_consistent(name):
    op = ops.OPS[name]
    assert op.name == name and issubclass(op.attrs, ops.Attrs)
    for surface in op.surfaces:
        assert list(surface.signature) == list(dict.fromkeys(surface.signature))
        if not surface.merge:
            assert callable(surface.bind), f"surface {surface.kind!r} has no bind"
    # checkpoint renames point at variables the op really has (with every option on)
    for layout, rule in op.weights.items():
        if isinstance(rule, dict):
            leaves = {v.leaf for v in op.variables(_all_options(op), [(4, 4, 8)])}
            assert set(rule.values()) <= leaves, (layout, set(rule.values()) - leaves)


def _all_options(op):
    """Attributes of ``op`` with its optional variables switched on (for the leaf check)."""
    import dataclasses
    values = {"scale": True, "center": True, "bias": True, "eps": 1e-5, "momentum": 0.9, "init": 1.0,
              "groups": 2, "affine": True}
    return op.attrs(**{f.name: values[f.name] for f in dataclasses.fields(op.attrs)})


def test_every_builtin_verifies():
    from archc.compiler import library
    from archc.compiler.build import build_graph
    for name in library.names():
        verify(build_graph(name))


def test_verify_rejects_broken_graphs():
    g = every_op_graph().output()
    verify(g)
    conv = g.nodes["conv"]
    g.nodes["conv"] = Node("conv", "conv", conv.inputs, conv.attrs, (1, 2, 3))
    with pytest.raises(ValueError, match="records shape 1x2x3"):
        verify(g)
    g.nodes["conv"] = Node("conv", "conv", conv.inputs, {"features": 8}, conv.shape)
    with pytest.raises(ValueError, match="takes ConvAttrs, not dict"):
        verify(g)
    g.nodes["conv"] = Node("conv", "conv", ("bn",), conv.attrs, conv.shape)
    with pytest.raises(ValueError, match="reads 'bn', which is not an earlier node"):
        verify(g)
    g.nodes["conv"] = Node("conv", "conv", (), conv.attrs, conv.shape)
    with pytest.raises(ValueError, match="conv takes 1 input, got 0"):
        verify(g)
