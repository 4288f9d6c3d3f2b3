"""Spec → Graph, the front end's driver: resolve the file and its imports, bind the family
parameters, elaborate; every located error of the run is raised together as one ArchError."""
from __future__ import annotations

from ..spec import ast as A
from ..spec.parser import parse
from ..spec.source import ArchError, Diagnostic, suggest
from .elaborate import Elaborator, Override
from .ir import Graph
from .resolve import Module, resolve


def build_graph(spec: str | None = None, params: dict | None = None, input_shape: tuple | None = None,
                *, text: str | None = None, filename: str = "<expr>", advise: bool = True) -> Graph:
    """Elaborate a spec into a shape-checked Graph, or raise ArchError with every error found.
    When an `input_shape` the spec rejects is the cause, the error says which sizes it takes
    (`advise=False`: not, for callers that try many sizes)."""
    module = resolve(spec, text=text, filename=filename)
    sources = module.sources()
    try:
        chosen, diags = bind_family_params(module, module.preset, dict(params or {}))
        graph = Elaborator(Graph(module.name)).run_program(module, chosen, input_shape, diags)
    except ArchError as e:
        note = _size_advice(spec, params, input_shape, text, filename) if advise and input_shape else None
        if note:
            e.diagnostics[0].notes.append((note, None))
        raise ArchError(e.diagnostics, {**sources, **e.sources}) from None
    graph.sources = sources
    return graph


def _size_advice(spec, params, input_shape, text, filename) -> str | None:
    """The nearest input sizes the spec takes, from the size analysis of the spec at its own
    input; None when that fails too, or the given height and width are not the cause."""
    from . import sizes

    def at(shape):
        try:
            return build_graph(spec, params, shape, text=text, filename=filename, advise=False)
        except ArchError:
            return None
    declared = at(None)
    if declared is None or tuple(input_shape) == declared.input_shape:
        return None
    return sizes.advice(declared, tuple(input_shape), at)


def bind_family_params(module: Module, preset: str | None, overrides: dict) -> tuple[dict, list]:
    """The family parameters a run sets: the preset's values, then the caller's overrides over
    them; a parameter in neither keeps its default. Returns (name -> an expression or an
    Override, the preset's errors). An unknown preset or overridden parameter raises ArchError."""
    declared = {st.name: st for st in module.stmts if isinstance(st, A.Param)}
    presets = {st.name: st for st in module.stmts if isinstance(st, A.Preset)}
    chosen: dict = {}
    diags: list = []
    if preset is not None:
        pst = presets.get(preset)
        if pst is None:
            raise ArchError([Diagnostic(f"{module.display} has no preset '{preset}'", None, suggest(preset, presets))])
        for arg in pst.values:
            if arg.name is None or arg.name not in declared:
                diags.append(Diagnostic(f"preset '{preset}' sets '{arg.name}', which is not a param of this file",
                                        arg.span, suggest(arg.name or "", declared)))
                continue
            chosen[arg.name] = arg.value
    for k, v in overrides.items():
        if k not in declared:
            hint = f"its parameters: {', '.join(declared)}" if declared else "this file declares no 'param'"
            raise ArchError([Diagnostic(f"{module.name} has no parameter '{k}'", None, suggest(k, declared) or hint)])
        chosen[k] = _override(k, v)
    return chosen, diags


class CommandLineName(str):
    """A parameter's name given with --param, with its value as typed (`typed`): its errors
    say `--param name=typed`."""
    typed: str = ""


def _override(name: str, v) -> Override:
    """A value from the command line or Python: numbers as they are, strings read as .arch
    expressions where they parse (--param blocks=[6,12,24,16]), tuples as lists."""
    flag = "--param " if isinstance(name, CommandLineName) else ""
    text = name.typed if flag else repr(v)
    if isinstance(v, str):
        try:
            return Override(v, name, text, flag, parse(f"let __v = ({v})", "<--param>")[0].value)
        except ArchError:
            pass
    return Override(list(v) if isinstance(v, tuple) else v, name, text, flag)
