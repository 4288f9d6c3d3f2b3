"""Layer application: a layer value applied to a tensor adds its nodes to the graph. Ops bind
their arguments through their own `Surface.bind` (compiler/ops) and become one node; merges
apply each branch to the input; combinators (frontend/combinators.py) build their own nodes;
blocks run their statements in a frame of their own; sequences and repetitions apply in turn."""
from __future__ import annotations

import contextlib

from ...spec import ast as A
from ...spec.source import Diagnostic, Span
from ...spec.source import suggest as _suggest
from .. import ops
from ..ops import ShapeError, fmt
from ..ops.conv import inferred_stride, projection_fix
from ..ops.layout import CropAttrs
from ..resolve import Part
from .builder import Frame
from .combinators import COMBINATORS
from .evaluate import MAX_REPEAT, bind_arguments
from .values import (Block, BlockLayer, Env, Fail, Layer, OpLayer, PartLayer, RefLayer, Repeat, SizeInt, Thunk,
                     as_explicit4, as_int, as_number, as_pair, as_posint, describe, fail, hwc)


class Application:
    """Layers applied to tensors (a part of the Elaborator: frontend/__init__.py)."""

    def apply_seq(self, seq: A.Seq, t: str, env: Env) -> str:
        total = 1
        for r in seq.repeats:
            total *= r
        if total > MAX_REPEAT:
            fail(f"repetition count {total} is too large", seq.span)
        if seq.repeats:
            for i in range(total):
                t = self._apply_items(seq.items, t, env.child(i=i))
            return t
        return self._apply_items(seq.items, t, env)

    def _apply_items(self, items, t: str, env: Env) -> str:
        values = [(self.as_layer(self.value(it, env), it, env), it) for it in items]
        for k, (v, it) in enumerate(values):
            nxt = values[k + 1][0] if k + 1 < len(values) else None
            t = self.apply(v, t, it.span, next_is_bn=isinstance(nxt, OpLayer) and nxt.kind == "bn")
        return t

    def as_layer(self, v, item, env: Env):
        """A "file.arch" written in a sequence is that network, whole."""
        if isinstance(v, str) and v.endswith(".arch"):
            return self.resolve(v, item.span, env)
        return v

    def apply(self, v, t: str, span: Span, next_is_bn: bool = False) -> str:
        if isinstance(v, OpLayer):
            return self.apply_op(v, t, next_is_bn)
        if isinstance(v, BlockLayer):
            return self.apply_block(v, t)
        if isinstance(v, Thunk):
            return self.apply_seq(v.seq, t, v.env)
        if isinstance(v, Repeat):
            for i in range(v.count):
                t = self.apply(self.value(v.item, v.env.child(i=i)), t, v.span)
            return t
        if isinstance(v, RefLayer):
            return self.lookup_tensor(v.name, v.span, v.frame)
        if isinstance(v, Block):
            return self.apply_block(BlockLayer(v, (), {}, None, span), t)
        if isinstance(v, PartLayer):
            return self.apply_part(v, t)
        if isinstance(v, Part):
            return self.apply_part(PartLayer(v, {}, None, span), t)
        if isinstance(v, list):
            # A chain a>b>c applied as layers: each element in turn.
            for x in v:
                t = self.apply(x, t, span)
            return t
        fail(f"expected a layer here, found {describe(v)}", span,
             "numbers go inside an op's parentheses, e.g. conv3(64)" if isinstance(v, (int, float)) else None)

    def lookup_tensor(self, name: str, span: Span, frame: Frame | None = None) -> str:
        frame = frame or self.frames[-1]
        if name in frame.tensors:
            return frame.tensors[name]
        if name == "in" and frame.input is not None:
            return frame.input
        if name == "prev" and frame.prev is not None:
            return frame.prev
        # any node of a part by its name under the label, as torchvision's create_feature_extractor
        # takes any node: @body.blocks.12.hard_swish1 (SSDlite reads inside a MobileNetV3 block)
        label, _, rest = name.partition(".")
        if label in frame.parts and f"{frame.parts[label]}.{rest}" in self.b.g.nodes:
            return f"{frame.parts[label]}.{rest}"
        fail(f"unknown tensor '@{name}'", span,
             _suggest(name, frame.tensors) or (f"named tensors here: {', '.join('@' + n for n in frame.tensors)}"
                                               if frame.tensors else "label a statement first, e.g. 'enc1: conv3(64)'"))

    def apply_block(self, layer: BlockLayer, t: str) -> str:
        blk = layer.block
        if len(self.b.call_stack) > 100:
            fail(f"block '{blk.name}' calls itself too deeply", layer.span, "blocks cannot be recursive")
        h, w, c = hwc(self.b.shape(t))
        env = (layer.env or self.bind_block(layer)).child(cin=c, hin=SizeInt(h), win=SizeInt(w))
        caller = self.frames[-1]
        with self.entered(blk.name, blk.name, layer.span, Frame({}, t)) as result:
            try:
                result[0] = self.run_statements(blk.body, t, env, in_block=True)
                caller.prev = t
            except Fail as f:
                if (not self.at_call_site(f.diag, layer.span, f"block '{blk.name}'")
                        and f.diag is not None and len(f.diag.notes) < 4):
                    f.diag.notes.append((f"in block '{blk.name}' called here", layer.span))
                raise
        return result[0]

    @contextlib.contextmanager
    def entered(self, unit: str, call: str, span, frame: "Frame"):
        """A block or network part being elaborated: its unit (the nodes' name scope), its
        call-stack entry and frame, the builder's target cleared inside and restored after.
        The body sets ``result[0]`` to the unit's output."""
        opened = self.b.push_unit(unit, span)
        self.b.call_stack.append((call, span))
        saved_target = self.b.target, self.b.target_node
        self.b.target = self.b.target_node = None
        self.frames.append(frame)
        result = [None]
        try:
            yield result
        finally:
            self.frames.pop()
            self.b.target, self.b.target_node = saved_target
            self.b.call_stack.pop()
            if opened:
                self.b.pop(result[0])

    def at_call_site(self, diag: Diagnostic | None, site: Span, what: str) -> bool:
        """Move an error raised inside a library or prelude definition to the user's call of
        it, the definition's line becoming a note: the user's file is where the fix goes."""
        if diag is None or self.home is None or site is None or site.file not in self.home:
            return False
        if diag.span is not None and diag.span.file in self.home:
            return False
        if diag.span is not None:
            diag.notes.insert(0, (f"raised inside {what}, here", diag.span))
        diag.span = site
        return True

    def apply_op(self, v: OpLayer, t: str, next_is_bn: bool) -> str:
        if v.kind in COMBINATORS:
            return COMBINATORS[v.kind].apply(self, v, bind_arguments(v), t)
        surface, op = ops.SURFACES[v.kind]
        if surface.merge:
            return self.apply_merge(v, t)
        args = bind_arguments(v)
        self.note_size_read(args.values(), v.span)
        extra = []
        for k in surface.tensors:           # tensor arguments (roi_align(@p3, …)): more inputs
            if args[k] is None and surface.signature[k] is None:
                continue                    # an optional one left out (upsample's size)
            refs = args[k] if isinstance(args[k], list) else [args[k]]
            if not refs or not all(isinstance(r, RefLayer) for r in refs):
                fail(f"'{v.label}' takes tensors as '{k}': @name or a list of them", v.span,
                     f"e.g. {v.label}(@features, …)")
            names = [self.lookup_tensor(r.name, r.span, r.frame) for r in refs]
            extra.extend(names)
            args[k] = [self.b.shape(n) for n in names]
        attrs = surface.bind(args, OpContext(self, t, v, next_is_bn))
        if attrs is None:           # identity: no node
            return t
        return self.b.add(op.name, [t] + extra, attrs, v.span, v.label)

    def _inferred_stride(self, s, span):
        """The stride that takes this input to the projection's target size (1 without a target)."""
        tgt = self.b.target
        if not tgt or len(tgt) != 3 or len(s) != 3:
            return 1
        st = inferred_stride(s[:2], tgt[:2])
        if st is not None:
            return st
        fail(f"no strided 1x1 projection maps {fmt(s)} to the body's {fmt(tgt)}", span,
             _projection_hint(s, tgt), cascades=True)

    def apply_merge(self, v: OpLayer, t: str) -> str:
        branches = list(v.args)
        if not branches:
            fail(f"{v.kind} needs at least one branch", v.span, f"e.g. {v.kind}(identity, conv3(64))")
        scoped = sum(1 for br in branches if _builds_nodes(br)) >= 2
        outs = []
        base = self.b.scope.counters.get("branch", 0)
        for pos, br in enumerate(branches, 1):
            if not isinstance(br, Layer) and not isinstance(br, (Block, list)):
                fail(f"a branch of {v.kind} must be a layer, not {describe(br)}", v.span)
            if scoped and _builds_nodes(br):
                self.b.push(f"branch{base + pos}", v.span, exact=False)
                try:
                    outs.append(self.apply(br, t, v.span))
                finally:
                    self.b.pop()
            else:
                outs.append(self.apply(br, t, v.span))
        if scoped:
            self.b.scope.counters["branch"] = base + len(branches)
        if len(outs) == 1 and v.kind != "concat":
            return outs[0]
        surface, op = ops.SURFACES[v.kind]
        attrs = surface.bind({**surface.signature, **v.kwargs}, OpContext(self, t, v, False))
        if getattr(attrs, "crop", None):    # concat(crop=true): the branches centre-cropped first
            outs = self._center_crop(outs, v.span)
        try:
            return self.b.add(op.name, outs, attrs, v.span, v.kind)
        except Fail as f:
            if v.kind != "concat" and t not in outs:
                self._explain_branches(f.diag, v, branches, outs)
            raise

    def _explain_branches(self, diag: Diagnostic, v: OpLayer, branches, outs) -> None:
        """An add or mul of branches none of which is the input is not a residual: say what each
        branch ends with, where it is written, instead of the residual hint."""
        for pos, (br, out) in enumerate(zip(branches, outs), 1):
            diag.notes.append((f"branch {pos} ends with {fmt(self.b.shape(out))}", getattr(br, "span", v.span)))
        diag.hint = (f"every branch of {v.kind} must end with the same height, width and channels (a size of 1 "
                     "broadcasts): resize one with upsample, a strided conv or a pool, or match channels with conv1")

    def _center_crop(self, outs, span):
        shapes = [self.b.shape(o) for o in outs]
        if any(len(s) != 3 for s in shapes):
            return outs
        th, tw = min(s[0] for s in shapes), min(s[1] for s in shapes)
        res = []
        for o, (h, w, _) in zip(outs, shapes):
            if (h, w) != (th, tw):
                dh, dw = h - th, w - tw
                o = self.b.add("crop", [o], CropAttrs(((dh // 2, dh - dh // 2), (dw // 2, dw - dw // 2)), tuple(outs)),
                               span, "crop")
            res.append(o)
        return res


def _builds_nodes(v) -> bool:
    if isinstance(v, RefLayer):
        return False
    if isinstance(v, OpLayer) and v.kind == "identity":
        return False
    return True


class OpContext:
    """What an op's ``bind`` sees of the elaborator (ops.BindContext): the input's shape, the
    call's place for errors, whether a BN follows, the projection target, and value checks."""

    __slots__ = ("el", "shape", "span", "label", "next_is_bn", "target", "target_node")

    def __init__(self, el: "Application", t: str, v: OpLayer, next_is_bn: bool):
        self.el, self.shape, self.span, self.label = el, el.b.shape(t), v.span, v.label
        self.next_is_bn, self.target, self.target_node = next_is_bn, el.b.target, el.b.target_node

    def fail(self, message, hint=None, cascades=False):
        fail(message, self.span, hint, cascades)

    def spatial(self):
        try:
            return ops.spatial(self.label, self.shape)
        except ShapeError as e:
            fail(str(e), self.span, e.hint, cascades=True)

    def int(self, v, what):
        return as_int(v, what, self.span)

    def posint(self, v, what):
        return as_posint(v, what, self.span)

    def number(self, v, what):
        return as_number(v, what, self.span)

    def pair(self, v, what, allow_zero=False):
        return as_pair(v, what, self.span, allow_zero)

    def explicit4(self, p, what):
        return as_explicit4(p, what, self.span)

    def inferred_stride(self):
        return self.el._inferred_stride(self.shape, self.span)


def _projection_hint(s: tuple, tgt: tuple) -> str:
    """What would make a residual's shortcut meet its body, for this pair of sizes."""
    size, body = fmt(s[:2]), fmt(tgt[:2])
    keep = (f"the body grows {size} to {body}: make it keep the size (check its layers' padding)"
            if any(t > n for n, t in zip(s, tgt)) else f"the body maps {size} to {body}, not a whole stride")
    fix = projection_fix(s[:2], tgt[:2])
    return f"{keep}, or give the shortcut explicitly: residual(proj={fix})<…>" if fix else keep
