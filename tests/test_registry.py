"""Every op is whole: a definition, a rule in every pass's rule table (ops.RULE_TABLES: the
lowering, the ONNX and Flax export rules, the size rule, the saved tensors of the memory
estimate, the NumPy reference test, and the tables keyed by activation), a place in the all-ops
graph and a row in the generated docs table. These tests fail when any piece of an op is missing."""
from __future__ import annotations

import importlib
import pkgutil

import pytest

import archc
from archc.compiler import ops
from archc.compiler.ir import Node, verify
from archc.compiler.ops.base import FUSIONS
from archc.tools import ops_doc

from test_lowering import every_op_graph, roi_op_graph


def _import_every_module() -> dict:
    """Every module of archc imported, so that every pass has filled its rule tables (a table
    is registered by ``ops.pass_rules`` when its module is imported: a new one cannot be left
    out of this test)."""
    import hypothesis  # noqa: F401  (archc.testing.strategies is its plugin: hypothesis first)
    for module in pkgutil.walk_packages(archc.__path__, "archc."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    import test_lowering  # noqa: F401  (the NumPy reference tests' table)
    return ops.RULE_TABLES


RULE_TABLES = _import_every_module()


def test_the_rule_tables_are_found():
    """The passes this project has today: a table's name changing should be seen here."""
    assert {"lowering", "onnx rule", "flax rule", "size rule", "saved tensors (memory)", "numpy reference test",
            "activation lowering", "activation onnx rule"} <= set(RULE_TABLES)


@pytest.mark.parametrize("what", sorted(RULE_TABLES))
def test_every_rule_table_covers_every_op(what):
    """Each table holds a rule for every op (or activation) it must cover, and none for a name
    that does not exist."""
    table = RULE_TABLES[what]
    assert not table.missing() and not table.unknown(), (
        f"{what}: no rule for {sorted(table.missing())}; rules for unknown names {sorted(table.unknown())}")


def test_every_op_with_a_geometry_derives_its_size_rule_from_it():
    """The spatial arithmetic is written once, in the op's geometry (ops/window.py): the size
    rule of such an op is compiler/sizes.py's reading of it (crop and upsample first take
    their merge-crop and size=@t cases, which follow other nodes)."""
    from archc.compiler import sizes
    derived = {name for name, op in ops.OPS.items()
               if op.geometry is not None and sizes.SIZE_RULES[name] is sizes._geometry_rule}
    assert {"conv", "pool", "conv_transpose", "pad"} <= derived
    g = every_op_graph().output()
    read = [node for node in g if node.op in derived]
    assert {node.op for node in read} == derived
    for node in read:
        for axis in (0, 1):
            rule = sizes.SIZE_RULES[node.op](node, axis, g)
            assert rule in (ops.OPS[node.op].geometry(node.attrs)[axis], sizes.KEEP), node.name


def test_every_op_states_its_facts():
    """macs are stated by every op (no_macs where there are none), the fusion is one of the
    kinds the memory estimate knows, and the profile's ranks name one op each."""
    for op in ops.OPS.values():
        assert callable(op.macs), op.name
        assert op.fusion in FUSIONS, op.name
    ranks = [op.profile_rank for op in ops.OPS.values() if op.profile_rank is not None]
    assert len(ranks) == len(set(ranks))


def test_every_activation_record_is_whole():
    for name, act in ops.ACTIVATIONS.items():
        assert act.name == name and callable(act.numpy_ref) and "{x}" in act.flax_source
        assert act.grad_from in ("input", "output"), name
        assert not set(act.aliases) & set(ops.ACTIVATIONS), name


def test_the_all_ops_graph_uses_every_op():
    used = {n.op for n in every_op_graph().output()} | {n.op for n in roi_op_graph().output()}
    assert used == set(ops.OPS), f"missing from every_op_graph and roi_op_graph: {sorted(set(ops.OPS) - used)}"


def test_every_surface_op_has_a_row_in_the_generated_docs_table():
    text = ops_doc.DOC.read_text(encoding="utf-8")
    assert ops_doc.render(text) == text, "docs/language.md's ops table is stale: run python -m archc.tools.ops_doc"
    assert ops_doc.surface_kinds_in(text) == set(ops.SURFACES)


@pytest.mark.parametrize("name", sorted(ops.OPS))
def test_definition_is_consistent(name):
    op = ops.OPS[name]
    assert op.name == name and issubclass(op.attrs, ops.Attrs)
    for surface in op.surfaces:
        # what a spelling presets, the tensor arguments and the naming argument are parameters
        params = set(surface.signature)
        assert all(set(preset) <= params for preset in surface.names.values()), surface.kind
        assert set(surface.tensors) <= params and surface.label_from in params | {None}, surface.kind
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
