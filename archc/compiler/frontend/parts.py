"""Networks used as parts (`trunk: resnet18(until=layer4)`): the call that names one, its
statements run in place of a block from the tensor that flows in, its stages up to `until`, and
the record of where it was used (graph.parts)."""
from __future__ import annotations

from dataclasses import dataclass

from ...spec import ast as A
from ..ops import fmt
from ..resolve import Module, Part
from ...spec.source import suggest as _suggest
from .builder import Frame
from .statements import DEFINITIONS
from .values import Env, Fail, Override, PartLayer, fail, plain


class Parts:
    """Networks as parts (a part of the Elaborator: frontend/__init__.py)."""

    def part_call(self, part: Part, e: A.Call, env: Env) -> PartLayer:
        """`resnet18(until=layer4, classes=10)`: keyword arguments only, each a family parameter
        of the network, and `until=` one of its stages (a name, not evaluated)."""
        declared = [st.name for st in part.module.stmts if isinstance(st, A.Param)]
        stages = stages_of(part.module)
        if e.body is not None:
            fail(f"network '{e.func}' takes no <body>", e.body.span)
        kwargs, until = {}, None
        for a in e.args:
            if a.name is None:
                fail(f"network '{e.func}' takes keyword arguments only", a.span,
                     f"its parameters: until, {', '.join(declared)}" if declared else "e.g. until=STAGE")
            if a.name in kwargs or (a.name == "until" and until is not None):
                fail(f"argument '{a.name}' given twice", a.span)
            if a.name == "until":
                until = a.value.id if isinstance(a.value, A.Name) else self.value(a.value, env)
                if until not in stages:
                    fail(f"network '{e.func}' has no stage {until!r}", a.value.span,
                         f"its stages: {', '.join(stages)}")
            elif a.name not in declared:
                hint = _suggest(a.name, declared + ["until"])
                fail(f"network '{e.func}' has no parameter '{a.name}'", a.span,
                     hint or f"its parameters: until, {', '.join(declared)}")
            else:
                kwargs[a.name] = self.value(a.value, env)
        return PartLayer(part, kwargs, until, e.span)

    def apply_part(self, layer: PartLayer, t: str) -> str:
        """Elaborate a network in place of a block: its nodes under the current scope (the
        stage's label), its input the tensor `t`, its stages up to `until`; its named tensors
        are exported for `@label.stage` and its declarations (preprocess) come along."""
        part, module = layer.part, layer.part.module
        if len(self.b.call_stack) > 100:
            fail(f"network '{part.name}' contains itself too deeply", layer.span)
        params = {**{a.name: a.value for a in _preset(module, part.preset)},
                  **{k: Override(v, k, repr(plain(v))) for k, v in layer.kwargs.items()}}
        frame = Frame({}, t)
        with self.entered(_unit_name(part.name), part.name, layer.span, frame) as result:
            try:
                result[0] = self.run_part(module, params, t, layer)
                path = self.b.scope.path
                self.b.g.parts[path] = PartInfo(part.name, layer.until, _stages_after(module, layer.until))
                # its stages' numbered units too: @body.blocks.12 (a detector's FPN reads mid-stage)
                lead = path + "." if path else ""
                frame.tensors.update({p[len(lead):]: n for p, n in self.b.unit_outputs.items()
                                      if p.startswith(lead) and p[len(lead):].split(".")[0] in frame.tensors})
            except Fail as f:
                self.at_call_site(f.diag, layer.span, f"network '{part.name}'")
                raise
        self.exports.append(frame.tensors)
        return result[0]

    def run_part(self, module: Module, params: dict, t: str, layer: PartLayer) -> str:
        """A part's statements, as run_program runs a file's, from the tensor `t`."""
        env = Env(self.base_env(module), {})
        frame, out, done = self.frames[-1], None, False
        for st in module.stmts:
            if isinstance(st, DEFINITIONS):
                self.define(st, module, env, params)
            elif isinstance(st, A.Input):
                if self.input_name(st, env) is not None:
                    fail(f"network '{layer.part.name}' has a further input ({st.span.file}:{st.span.line}); "
                         "a network with several inputs cannot be a part", layer.span)
                self.check_part_input(self.input_shape(st, env), t, layer, env)
                frame.tensors["input"] = t
            elif (decl := self.declaration_call(st, env)) is not None:
                if layer.until is None or decl.func == "preprocess":   # the others may name cut-off tensors
                    self.declare(decl, env, inherited=True)
            elif isinstance(st, (A.SeqStmt, A.Labelled)) and not done:
                t = self.run_statements([st], t, env, in_block=False)
                if isinstance(st, A.Labelled) and st.name == layer.until:
                    out, done = frame.tensors[st.name], True
            elif isinstance(st, A.Output) and not done:
                if st.when is None or self.truth(self.value(st.when, env), st.when.span):
                    out = self.lookup_tensor(st.names[0], st.spans[0])
        return out if out is not None else t

    def check_part_input(self, declared: tuple, t: str, layer: PartLayer, env: Env) -> None:
        """A part takes any size its layers accept, but the channels its first layer was made
        for: a mismatch is the user's to fix with in_chans=."""
        have = self.b.shape(t)
        if len(declared) != len(have) or (len(have) == 3 and declared[-1] != have[-1]):
            name = layer.part.name
            chans = "in_chans" in {st.name for st in layer.part.module.stmts if isinstance(st, A.Param)}
            fail(f"network '{name}' takes {fmt(declared) if len(declared) != 3 else f'{declared[-1]} channels'}, "
                 f"the tensor here is {fmt(have)}", layer.span,
                 f"give it in_chans={have[-1]}" if chans and len(have) == 3 and len(declared) == 3 else None)


@dataclass(frozen=True)
class PartInfo:
    """Where a network was used as a part (graph.parts, by its scope's path): its model name
    (for its weight mapping), `until` and the stages cut off after it."""
    network: str
    until: str | None = None
    dropped: tuple = ()


def _unit_name(network: str) -> str:
    """The scope of a part outside a labelled stage: 'resnet18_1', 'keras_resnet50_1' (node names
    hold no '/', and a counter after a digit would read as one number)."""
    name = "".join(c if c.isalnum() or c == "_" else "_" for c in network)
    return name + "_" if name[-1:].isdigit() else name


def stages_of(module: Module) -> list:
    """A network's named stages, in order."""
    return [st.name for st in module.stmts if isinstance(st, A.Labelled)]


def _stages_after(module: Module, until: str | None) -> tuple:
    stages = stages_of(module)
    return () if until is None else tuple(stages[stages.index(until) + 1:])


def _preset(module: Module, preset: str | None) -> tuple:
    """The (named) arguments of a file's preset; () for none."""
    return next((st.values for st in module.stmts if isinstance(st, A.Preset) and st.name == preset), ())
