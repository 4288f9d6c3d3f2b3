"""The IR's ops, each defined once (see base.py for what a definition holds).

Importing this package registers every op; ``OPS`` (IR op name -> OpDef) and ``SURFACES``
(surface op of the language -> its Surface and OpDef) are the tables everything else derives
from. JAX-free, so that ``archc check`` never imports JAX.
"""
from . import conv, pool, norm, elementwise, layout, roi  # noqa: F401  (registration, in the docs' order)
from .base import (OPS, REQUIRED, RULE_TABLES, SPELLINGS, SURFACES, Attrs, BindContext, NoAttrs, OpDef, RuleTable,
                   ShapeError, Surface, Var, VarSpec, all_ops, computing_ops, count, fmt, infer_shape, no_macs,
                   node_variables, pass_rules, spatial, variable_specs, variables_tree)
from .elementwise import ACTIVATIONS, Activation, activation_names
from .window import Window

__all__ = ["OPS", "SURFACES", "SPELLINGS", "REQUIRED", "RULE_TABLES", "Attrs", "NoAttrs", "BindContext", "OpDef",
           "RuleTable", "Surface", "ShapeError", "Var", "VarSpec", "ACTIVATIONS", "Activation", "Window",
           "activation_names", "all_ops", "computing_ops", "count", "fmt", "infer_shape", "no_macs", "node_variables",
           "pass_rules", "spatial", "variable_specs", "variables_tree", "attrs_of"]


def attrs_of(op: str, **values) -> Attrs:
    """The typed attributes of ``op`` from keyword values (for graphs built by hand)."""
    return OPS[op].attrs(**values)
