"""The evaluator: expressions of the value language (numbers, lists, arithmetic, comparisons,
names, calls of functions, ops, blocks and networks) to values (frontend/values.py). A name
resolves through the environment, then the op and combinator spellings (SPELLINGS), then the
built-in functions."""
from __future__ import annotations

from ...spec import ast as A
from ...spec.source import Span
from ...spec.source import suggest as _suggest
from .. import declarations, ops
from ..resolve import Part, Unresolved
from .combinators import COMBINATORS
from .values import (FUNCTIONS, Block, BlockLayer, Env, Fail, FailedValue, Function, Layer, OpLayer, RefLayer,
                     Repeat, Thunk, describe, fail, is_sized, taint)

MAX_REPEAT = 100_000


def signature(kind: str) -> dict:
    """A surface kind's parameters in positional order with their defaults: a combinator's or an op's."""
    return COMBINATORS[kind].signature if kind in COMBINATORS else ops.SURFACES[kind][0].signature


def is_merge(kind: str) -> bool:
    return kind in ops.SURFACES and ops.SURFACES[kind][0].merge


# Every spelling -> (surface kind, preset arguments, naming label, whether it is a kernel-size
# alias that follows a rebinding of its base op).
SPELLINGS = {name: (kind, preset, ops.SURFACES[kind][0].label(preset), ops.SURFACES[kind][0].rebinds(preset))
              for name, (kind, preset) in ops.SPELLINGS.items()}
SPELLINGS.update({name: (name, {}, name, False) for name in COMBINATORS})


def bind_arguments(v: OpLayer) -> dict:
    """An op's or combinator's arguments by parameter name, defaults filled in; a missing
    required one is the user's error."""
    sig = signature(v.kind)
    out = dict(sig)
    if v.args:
        out.update(zip(sig, v.args))
    out.update(v.kwargs)
    if ... in out.values():
        missing = [k for k, d in out.items() if d is ...]
        fail(f"'{v.label}' needs the argument '{missing[0]}'", v.span,
             f"e.g. {v.label}({', '.join(n for n, x in sig.items() if x is ...)})")
    return out


class Evaluator:
    """Values of expressions (a part of the Elaborator: frontend/__init__.py)."""

    def value(self, e, env: Env):
        kind = type(e)
        if kind is A.Const:
            return e.value
        if kind is A.Name:
            return self.resolve(e.id, e.span, env)
        if kind is A.Call:
            return self.call(e, env)
        if kind is A.Seq:
            if len(e.items) == 1 and not e.repeats:
                return self.value(e.items[0], env)
            return Thunk(e, env, e.span)
        if isinstance(e, A.Ref):
            found, v = env.lookup(e.id)
            if found and isinstance(v, RefLayer):  # a block parameter bound to a tensor
                return v
            return RefLayer(e.id, e.span, self.frames[-1])
        if isinstance(e, (A.ListLit, A.Chain)):
            return [self.value(x, env) for x in e.items]
        if isinstance(e, A.BinOp):
            return self.binop(e, env)
        if isinstance(e, A.Unary):
            v = self.value(e.operand, env)
            if e.op == "not":
                return not self.truth(v, e.operand.span)
            self.check_number(v, e.operand.span, "negate")
            return -v
        if isinstance(e, A.Compare):
            vals = [self.value(x, env) for x in e.operands]
            self.note_size_read(vals, e.span)
            for op, (a, b) in zip(e.ops, zip(vals, vals[1:])):
                ok = {"==": lambda: a == b, "!=": lambda: a != b,
                      "<=": lambda: self._cmp(a, b, e) <= 0, ">=": lambda: self._cmp(a, b, e) >= 0}[op]()
                if not ok:
                    return False
            return True
        if isinstance(e, A.BoolOp):
            if e.op == "and":
                v = True
                for x in e.operands:
                    v = self.value(x, env)
                    if not self.truth(v, x.span):
                        return v
                return v
            v = False
            for x in e.operands:
                v = self.value(x, env)
                if self.truth(v, x.span):
                    return v
            return v
        if isinstance(e, A.Ternary):
            return self.value(e.then if self.truth(self.value(e.cond, env), e.cond.span) else e.other, env)
        if isinstance(e, A.Index):
            obj, idx = self.value(e.obj, env), self.value(e.index, env)
            if not isinstance(obj, (list, tuple)):
                fail(f"cannot index {describe(obj)}", e.obj.span, "only lists (such as 96>128 or [6, 12]) can be indexed")
            if not isinstance(idx, int) or isinstance(idx, bool):
                fail(f"a list index must be an integer, not {describe(idx)}", e.index.span)
            if not -len(obj) <= idx < len(obj):
                fail(f"index {idx} is out of range for a list of {len(obj)}", e.index.span)
            return obj[idx]
        raise AssertionError(f"unknown AST node {type(e).__name__}")

    def note_size_read(self, values, span) -> None:
        """Note where a value derived from hin/win decides a layer (an op's argument, a
        comparison): the nodes do not keep that choice (compiler/sizes.py)."""
        if any(is_sized(v) for v in values):
            self.b.g.size_reads.append(span)

    def _cmp(self, a, b, e):
        for v in (a, b):
            self.check_number(v, e.span, "compare")
        return (a > b) - (a < b)

    @staticmethod
    def truth(v, span):
        if isinstance(v, Layer):
            fail("a layer is not a condition", span)
        return bool(v)

    @staticmethod
    def check_number(v, span, what):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            fail(f"cannot {what} {describe(v)}", span, "arithmetic works on numbers")

    def binop(self, e: A.BinOp, env: Env):
        right = self.value(e.right, env)
        if e.op == "*" and isinstance(right, int) and not isinstance(right, bool):
            probe = self.value(e.left, env.child(i=0))
            if isinstance(probe, Layer):
                if not 0 <= right <= MAX_REPEAT:
                    fail(f"repetition count {right} is outside 0..{MAX_REPEAT}", e.right.span)
                return Repeat(e.left, env, right, e.span)
        left = self.value(e.left, env)
        for v, side in ((left, e.left), (right, e.right)):
            if isinstance(v, list) and e.op in "+*":
                continue
            self.check_number(v, side.span, {"+": "add", "-": "subtract", "*": "multiply", "/": "divide",
                                     "//": "divide", "%": "take the remainder of", "**": "raise"}[e.op])
        try:
            if e.op == "+":
                return left + right
            if e.op == "-":
                return left - right
            if e.op == "*":
                if isinstance(left, list) and isinstance(right, list):
                    fail("cannot multiply two lists", e.span)
                result = left * right
                if isinstance(result, list) and len(result) > MAX_REPEAT:
                    fail("list too long", e.span)
                return result
            if e.op == "/":
                return left / right
            if e.op == "//":
                return left // right
            if e.op == "%":
                return left % right
            if e.op == "**":
                if isinstance(right, (int, float)) and abs(right) > 64:
                    fail(f"exponent {right} is too large", e.right.span)
                return left ** right
        except ZeroDivisionError:
            fail("division by zero", e.right.span)
        except TypeError:
            fail(f"cannot apply '{e.op}' to {describe(left)} and {describe(right)}", e.span)
        except OverflowError:
            fail("number too large", e.span)
        raise AssertionError(e.op)

    def resolve(self, name: str, span: Span, env: Env):
        found, v = env.lookup(name)
        if isinstance(v, FailedValue):
            raise Fail(None, cascades=True)    # already reported; later layers' shapes are unknown
        if isinstance(v, Unresolved):
            fail(v.message, span, v.hint)
        if found:
            return v
        entry = SPELLINGS.get(name)
        if entry is not None:
            kind, preset, label, rebinds = entry
            if rebinds:
                # conv3, maxpool2 …: kernel-size aliases of whatever conv/maxpool means here, so
                # 'let conv = conv(bias=false)' also applies to conv1 and conv3.
                found, v = env.lookup(kind)
                if found and isinstance(v, OpLayer) and v.kind == kind:
                    return OpLayer(kind, v.args, {**v.kwargs, **preset}, span, v.label, env)
            return OpLayer(kind, (), dict(preset), span, label, env)
        if name in FUNCTIONS:
            fail(f"'{name}' is a function; call it as {name}(…)", span)
        if declarations.is_declaration(name):
            fail(f"'{name}(…)' is a declaration, not a layer", span,
                 f"write it on a line of its own at the top level of the file, e.g. {name}(…)")
        candidates = env.names() | set(SPELLINGS) | set(FUNCTIONS)
        fail(f"unknown name '{name}'", span, _suggest(name, candidates) or "define it with let, param or block, or import it")

    def call(self, e: A.Call, env: Env):
        if e.func in FUNCTIONS and not env.lookup(e.func)[0]:
            args = [self.value(a.value, env) for a in e.args]
            if any(a.name for a in e.args) or e.body is not None:
                fail(f"'{e.func}' takes positional arguments only", e.span)
            try:
                return taint(FUNCTIONS[e.func](*args), args)
            except (TypeError, ValueError, OverflowError) as ex:
                fail(f"{e.func}(): {ex}", e.span)
        target = self.resolve(e.func, e.func_span, env)
        if isinstance(target, Part):
            return self.part_call(target, e, env)
        args, kwargs = [], {}
        for a in e.args:
            if a.name is None:
                if kwargs:
                    fail("a positional argument follows a keyword argument", a.span)
                args.append(self.value(a.value, env))
            else:
                if a.name in kwargs:
                    fail(f"argument '{a.name}' given twice", a.span)
                kwargs[a.name] = self.value(a.value, env)
        args = tuple(args)
        body = Thunk(e.body, env, e.body.span) if e.body is not None else None
        if isinstance(target, Function):
            if body is not None:
                fail(f"function '{e.func}' takes no <body>", e.body.span)
            return self.apply_function(target, args, kwargs, e.span)
        if isinstance(target, OpLayer):
            merged_args = target.args + args
            merged_kwargs = {**target.kwargs, **kwargs}
            if body is not None:
                if target.kind not in COMBINATORS:
                    fail(f"'{e.func}' takes no <body>", e.body.span, "only residual<…>, dense<…> and blocks with a 'body' parameter do")
                merged_kwargs["body"] = body
            self.check_signature(target.kind, e.func, merged_args, merged_kwargs, e.span)
            return OpLayer(target.kind, merged_args, merged_kwargs, e.span, target.label, env)
        if isinstance(target, BlockLayer):
            merged = {**target.kwargs, **kwargs}
            layer = BlockLayer(target.block, target.args + args, merged, body or target.body, e.span)
            layer.env = self.bind_block(layer)  # arity errors at the call site
            return layer
        if isinstance(target, Block):
            layer = BlockLayer(target, args, kwargs, body, e.span)
            layer.env = self.bind_block(layer)
            return layer
        fail(f"'{e.func}' is {describe(target)}, not something to call", e.func_span)

    def apply_function(self, f: Function, args, kwargs, span):
        env = self.bind_params(f.name, f.params, f.env, args, kwargs, span, "function")
        if len(self.b.call_stack) > 200:
            fail(f"function '{f.name}' recurses too deeply", span)
        self.b.call_stack.append((f.name, span))
        try:
            return self.value(f.body, env)
        except Fail as e:
            self.at_call_site(e.diag, span, f"function '{f.name}'")
            raise
        finally:
            self.b.call_stack.pop()

    def bind_params(self, name, params, outer: Env, args, kwargs, span, what):
        if len(args) > len(params):
            fail(f"{what} '{name}' takes {len(params)} argument{'s' * (len(params) != 1)}, got {len(args)}", span)
        env = outer.child()
        names = [p.name for p in params]
        for k in kwargs:
            if k not in names:
                fail(f"{what} '{name}' has no parameter '{k}'", span, _suggest(k, names) or f"its parameters: {', '.join(names) or 'none'}")
        for i, p in enumerate(params):
            if i < len(args):
                if p.name in kwargs:
                    fail(f"argument '{p.name}' of '{name}' given twice", span)
                env.vars[p.name] = args[i]
            elif p.name in kwargs:
                env.vars[p.name] = kwargs[p.name]
            elif p.default is not None:
                env.vars[p.name] = self.value(p.default, env)
            else:
                fail(f"{what} '{name}' needs the argument '{p.name}'", span)
        return env

    def bind_block(self, layer: BlockLayer) -> Env:
        kwargs = dict(layer.kwargs)
        if layer.body is not None:
            if "body" in kwargs:
                fail("the body is given both as <…> and as body=", layer.span)
            kwargs["body"] = layer.body
        return self.bind_params(layer.block.name, layer.block.params, layer.block.env, layer.args, kwargs,
                                layer.span, "block")

    def check_signature(self, kind, surface, args, kwargs, span):
        sig = signature(kind)
        if is_merge(kind):
            for k in kwargs:
                if k not in sig:
                    fail(f"'{surface}' has no option '{k}'", span, _suggest(k, sig) or f"its options: {', '.join(sig) or 'none'}")
            return
        names = list(sig)
        allowed = set(names) | ({"body"} if kind in COMBINATORS else set())
        if len(args) > len(names):
            fail(f"'{surface}' takes at most {len(names)} positional argument{'s' * (len(names) != 1)}, got {len(args)}", span,
                 f"its parameters in order: {', '.join(names) or 'none'}")
        for k in kwargs:
            if k not in allowed:
                fail(f"'{surface}' has no parameter '{k}'", span, _suggest(k, allowed) or f"its parameters: {', '.join(names)}")
        for i, n in enumerate(names[:len(args)]):
            if n in kwargs:
                fail(f"'{surface}' got '{n}' twice", span)
