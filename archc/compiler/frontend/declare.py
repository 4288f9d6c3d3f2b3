"""The top-level statements that describe the network rather than add layers to it: its
inputs (`input 224x224x3`, further named ones) and its declarations (`preprocess(…)` and the
others of compiler/declarations.py), bound and validated where they are written."""
from __future__ import annotations

from ...spec import ast as A
from ...spec.source import Span
from ...spec.source import suggest as _suggest
from .. import declarations
from ..ops.layout import InputAttrs
from .values import Env, RefLayer, as_posint, describe, fail


class Declarations:
    """Inputs and declarations (a part of the Elaborator: frontend/__init__.py)."""

    @staticmethod
    def declaration_call(st, env: Env) -> A.Call | None:
        """The call of a declaration statement (``preprocess(mode="caffe")`` on its own line),
        unless the file defines that name itself."""
        if (isinstance(st, A.SeqStmt) and len(st.seq.items) == 1 and not st.seq.repeats
                and isinstance(call := st.seq.items[0], A.Call) and call.body is None
                and declarations.is_declaration(call.func) and not env.lookup(call.func)[0]):
            return call
        return None

    def declare(self, call: A.Call, env: Env, inherited: bool = False) -> None:
        """Evaluate a declaration's keyword arguments and store the bound, validated result in
        ``graph.declarations`` (compiler/declarations). One a part brings (`inherited`) gives way
        to any other: the first part's, and the user's file's own wherever it is written."""
        kind, g = call.func, self.b.g
        if kind in g.declarations and (inherited or kind in self.inherited):
            if inherited:
                return
            self.inherited.discard(kind)
        elif kind in g.declarations:
            fail(f"'{kind}(…)' is declared twice", call.span, "keep one; presets and parameters choose its values")
        elif inherited:
            self.inherited.add(kind)
        sig = declarations.DECLARATIONS[kind].signature
        values, spans = {}, {}
        for a in call.args:
            if a.name is None:
                fail(f"{kind}() takes keyword arguments only", a.span, f"its keywords: {', '.join(sig)}")
            if a.name not in sig:
                fail(f"{kind}() has no argument '{a.name}'", a.span, _suggest(a.name, sig) or f"its keywords: {', '.join(sig)}")
            if a.name in values:
                fail(f"argument '{a.name}' given twice", a.span)
            values[a.name], spans[a.name] = self.value(a.value, env), a.span

        def tensor(name, v):
            if isinstance(v, RefLayer):
                return self.lookup_tensor(v.name, spans.get(name, call.span), v.frame)
            return None

        ctx = declarations.DeclarationContext(kind, fail, spans, call.span, tensor)
        g.declarations[kind] = declarations.bind(kind, values, ctx)

    def add_input(self, shape: tuple, span: Span | None) -> str:
        """The network's input node, named 'input' (and the tensor @input)."""
        if len(shape) not in (1, 3):
            fail(f"an input shape is HxWxC (or C), not {len(shape)} numbers", span)
        for d in shape:
            as_posint(d, "input size", span)
        t = self.b.add("input", [], InputAttrs(tuple(shape)), span, name="input")
        self.b.g.inputs.insert(0, t)
        self.frames[-1].tensors["input"] = t
        return t

    def add_named_input(self, name: str, shape: tuple, span: Span) -> str:
        """A further graph input, the tensor @name (the proposals of an R-CNN head: input(R, 4,
        name="rois")); the chain of layers goes on from where it was."""
        if not 1 <= len(shape) <= 3:
            fail(f"an input shape has 1 to 3 sizes, not {len(shape)}", span)
        for d in shape:
            as_posint(d, "input size", span)
        if name in self.b.g.nodes or name in self.frames[-1].tensors:
            fail(f"the input name '{name}' is already taken", span)
        t = self.b.add("input", [], InputAttrs(tuple(shape)), span, name=name)
        self.b.g.inputs.append(t)
        self.frames[-1].tensors[name] = t
        return t

    def input_name(self, st: A.Input, env: Env) -> str | None:
        named = [a for a in st.args if getattr(a, "name", None) is not None]
        for a in named:
            if a.name != "name":
                fail(f"input has no option '{a.name}'", a.span, "its only option is name=\"…\" (a further input)")
            v = self.value(a.value, env)
            if not isinstance(v, str) or not v.isidentifier():
                fail(f"an input's name must be a name in quotes, not {describe(v)}", a.span, 'e.g. name="rois"')
            return v
        return None

    def input_shape(self, st: A.Input, env: Env) -> tuple:
        if len(st.args) == 1 and isinstance(st.args[0], A.Const):
            return st.args[0].value
        vals = []
        for a in st.args:
            if a.name is not None:
                continue                    # name="…" (input_name)
            v = self.value(a.value, env)
            if isinstance(v, bool) or not isinstance(v, int):
                fail(f"an input size must be an integer, not {describe(v)}", a.span)
            vals.append(v)
        return tuple(vals)
