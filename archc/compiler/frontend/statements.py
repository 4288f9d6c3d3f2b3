"""Statements in a block body or at the top of a file: `let`, `block`, a sequence of layers
(labelled: a named stage or tensor), `output`. A labelled stage at the top level numbers its
block instances (layer1.0, layer1.1) unless it holds just one."""
from __future__ import annotations

from ...spec import ast as A
from ..resolve import Part
from .combinators import COMBINATORS
from .values import (Block, BlockLayer, Env, Fail, Function, OpLayer, PartLayer, Repeat, SizeInt, Thunk, fail,
                     hwc)

DEFINITIONS = (A.Import, A.Param, A.Let, A.BlockDef)   # what a file gives its importers


class Statements:
    """Statements (a part of the Elaborator: frontend/__init__.py)."""

    def run_statements(self, stmts, t: str | None, env: Env, in_block: bool) -> str | None:
        frame = self.frames[-1]
        for st in stmts:
            if isinstance(st, A.Let):
                if st.params is not None:
                    env.vars[st.name] = Function(st.name, st.params, st.value, env, st.span)
                else:
                    env.vars[st.name] = self.value(st.value, env)
            elif isinstance(st, A.BlockDef):
                env.vars[st.name] = Block(st.name, st.params, st.body, env, st.span)
            elif isinstance(st, (A.SeqStmt, A.Labelled)):
                seq = st.seq
                if t is None:
                    fail("the network has no input yet", st.span, "start the file with e.g. 'input 224x224x3'")
                h, w, c = hwc(self.b.shape(t))
                senv = env.child(cin=c, hin=SizeInt(h), win=SizeInt(w)) if not in_block else env
                if isinstance(st, A.Labelled):
                    self.b.push(st.name, st.span, stage=not in_block)
                    if not in_block:
                        self.b.scope.inline_single = self._count_units(seq, senv) == 1
                    mark = len(self.exports)
                    path = self.b.scope.path
                    try:
                        out = self.apply_seq(seq, t, senv)
                        exported = {f"{st.name}.{k}": v for ex in self.exports[mark:] for k, v in ex.items()}
                        if path in self.b.g.parts:
                            frame.parts[st.name] = path
                    finally:
                        self.b.pop()
                        del self.exports[mark:]
                    if st.name in frame.tensors:
                        fail(f"tensor '{st.name}' is defined twice", st.span)
                    frame.tensors[st.name] = out
                    frame.tensors.update(exported)
                    if not in_block:
                        self.b.g.aliases[self.b.join(st.name)] = out
                    if not st.side:
                        t = out
                else:
                    t = self.apply_seq(seq, t, senv)
            elif isinstance(st, A.Output):
                if in_block:
                    fail("'output' belongs at the top level of a file, not in a block", st.span)
                if st.when is not None and not self.truth(self.value(st.when, env), st.when.span):
                    continue
                outs = []
                for n, sp in zip(st.names, st.spans):
                    outs.append(self.lookup_tensor(n, sp))
                self.b.g.outputs = outs
            elif isinstance(st, (A.Param, A.Preset, A.Import, A.Input)):
                fail(f"'{type(st).__name__.lower()}' belongs at the top level of a file", st.span)
            else:
                raise AssertionError(type(st).__name__)
        return t

    def _count_units(self, seq: A.Seq, env: Env) -> int:
        """Block and combinator instances a stage will hold (decides 0,1,2… naming vs inlining)."""
        n = 0
        for it in seq.items:
            try:
                v = self.as_layer(self.value(it, env.child(i=0)), it, env)
            except Fail:
                return 0
            n += units_of(v)
        for r in seq.repeats:
            n *= r
        return n


def units_of(v) -> int:
    if isinstance(v, (BlockLayer, Block, PartLayer, Part)):
        return 1
    if isinstance(v, OpLayer) and v.kind in COMBINATORS:
        return 1
    if isinstance(v, Repeat):
        return v.count
    if isinstance(v, Thunk):
        return 2  # a nested sequence may hold several units: number them
    return 0
