"""Elaboration: AST → IR.

One walk over the statements evaluates the value language (integers, lists, block calls, family
parameters), expands repetition, blocks and combinators, names every node by its place in the spec,
binds each surface op to its IR op's attributes (compiler/ops: one definition per op), and infers each
node's shape with the op's rule as the node is created. The walk's parts live in compiler/frontend/
(its __init__ lists them); the Elaborator is their union over one state: the graph being built,
the frames of named tensors, the modules elaborated so far.
"""
from __future__ import annotations

from .frontend.apply import Application
from .frontend.builder import MAX_NODES, Builder, Frame, Scope, counted
from .frontend.combinators import COMBINATORS, Combinator, combinator
from .frontend.declare import Declarations
from .frontend.evaluate import MAX_REPEAT, SPELLINGS, Evaluator, bind_arguments, signature
from .frontend.parts import PartInfo, Parts
from .frontend.program import Program
from .frontend.statements import Statements
from .frontend.values import (FUNCTIONS, Block, BlockLayer, Env, Fail, Function, Layer, OpLayer,
                              Override, PartLayer, RefLayer, Repeat, SizeInt, Thunk, fail)
from .ir import Graph
from .resolve import Module


__all__ = ["Elaborator", "MAX_NODES", "Builder", "Frame", "Scope", "counted", "COMBINATORS", "Combinator",
           "combinator", "MAX_REPEAT", "SPELLINGS", "bind_arguments", "signature", "PartInfo", "FUNCTIONS", "Block",
           "BlockLayer", "Env", "Fail", "Function", "Layer", "OpLayer", "Override", "PartLayer", "RefLayer", "Repeat",
           "SizeInt", "Thunk", "fail"]


class Elaborator(Program, Declarations, Statements, Parts, Application, Evaluator):
    """AST → Graph: `run_program(module, params, input_shape)` (compiler/build.py calls it)."""

    def __init__(self, graph: Graph):
        self.b = Builder(graph)
        self.frames: list[Frame] = []
        self.module_envs: dict[Module, Env] = {}   # what each imported module defines
        self.home: set | None = None   # the user's files (run_program): errors are reported there
        self.exports: list = []        # the named tensors of each part applied, for @label.stage
        self.inherited: set = set()    # declarations a part brought, which the user's file may replace
