"""Files: the program (the root file: its family parameters, imports, input, definitions, stages
and outputs, every located error collected) and the modules it imports (what each defines,
elaborated once), with their parameters' values and ranges."""
from __future__ import annotations

from ...spec import ast as A
from ...spec.source import ArchError, Diagnostic, Span
from ...spec.source import suggest as _suggest
from .. import declarations, library
from ..ir import Graph
from ..resolve import Module, Unresolved
from .builder import Frame
from .evaluate import SPELLINGS
from .statements import DEFINITIONS
from .values import FUNCTIONS, Env, Fail, FailedValue, Override, describe, fail, plain


class Program:
    """The root file and the modules it imports (a part of the Elaborator: frontend/__init__.py)."""

    def run_program(self, module: Module, params: dict, input_shape: tuple | None,
                    diagnostics: tuple | list = ()) -> Graph:
        """Elaborate the root file into the Graph: its family parameters (`params`: name -> an
        expression or an Override; absent ones take their default), imports, input, definitions,
        stages and outputs. `input_shape` replaces the file's `input`. Every located error is
        collected, after `diagnostics` (those found before elaborating), and raised together."""
        g = self.b.g
        self.home = {m.display for m in module.closure() if m is module or not library.contains(m.directory)}
        env = Env(self.base_env(module), {})
        self.frames.append(Frame({}, None))
        diags = list(diagnostics)
        t = None
        shape_failed = False
        for st in module.stmts:
            try:
                if isinstance(st, DEFINITIONS):
                    self.define(st, module, env, params)
                    if isinstance(st, A.Param):
                        g.params[st.name] = plain(env.vars[st.name])
                elif isinstance(st, A.Input) and self.input_name(st, env) is not None:
                    self.add_named_input(self.input_name(st, env), self.input_shape(st, env), st.span)
                elif isinstance(st, A.Input):
                    if t is not None:
                        fail("the input is declared twice", st.span)
                    t = self.add_input(tuple(input_shape) if input_shape is not None else self.input_shape(st, env),
                                       st.span)
                elif (decl := self.declaration_call(st, env)) is not None:
                    if not shape_failed:        # its @tensors may be the failed stage's
                        self.declare(decl, env)
                elif not isinstance(st, A.Preset):     # presets were bound before elaborating
                    if shape_failed and isinstance(st, (A.SeqStmt, A.Labelled, A.Output)):
                        # Later layers would only repeat the first shape error; still check their names.
                        continue
                    if t is None and isinstance(st, (A.SeqStmt, A.Labelled)):
                        if input_shape is None:
                            fail("the network has no input shape", st.span,
                                 "start the file with e.g. 'input 224x224x3', or pass --input HxWxC")
                        t = self.add_input(tuple(input_shape), None)
                    t = self.run_statements([st], t, env, in_block=False)
            except Fail as f:
                if isinstance(st, (A.Let, A.Param)):
                    env.vars[st.name] = FailedValue()     # its uses are not errors of their own
                if isinstance(st, A.Input):
                    shape_failed = True               # nor is the missing input of every layer
                if f.cascades:
                    if shape_failed:
                        continue
                    shape_failed = True
                if f.diag is not None:
                    _report_once(diags, f.diag)
            except RecursionError:      # also from an imported module: reported at its import
                diags.append(Diagnostic("the spec nests too deeply to elaborate", st.span, "split it into smaller blocks"))
        if t is None and not diags:
            try:
                if input_shape is None:
                    fail("the spec defines no network", Span(module.display, 1, 1, 1, 1),
                         "add an 'input 224x224x3' line and some layers")
                t = self.add_input(tuple(input_shape), None)
            except Fail as f:
                diags.append(f.diag)
        if diags:
            raise ArchError(diags)
        if not g.outputs:
            g.outputs = [t]
        if "detect_input" in g.declarations and "preprocess" in self.inherited:
            del g.declarations["preprocess"]    # a detector's input pipeline is its own, not its backbone's
        return g

    def module_env(self, module: Module) -> Env:
        """What an imported module defines (its blocks, lets, imports, and params at their
        defaults), elaborated once per file; its own network, if any, is not the importer's."""
        if module in self.module_envs:
            return self.module_envs[module]
        env = Env(self.base_env(module), {})
        self.frames.append(Frame({}, None))
        diags = []
        try:
            for st in module.stmts:
                if isinstance(st, DEFINITIONS):
                    try:
                        self.define(st, module, env, {})
                    except Fail as f:
                        if isinstance(st, (A.Let, A.Param)):
                            env.vars[st.name] = FailedValue()
                        if f.diag is not None:
                            diags.append(f.diag)
        finally:
            self.frames.pop()
        if diags:
            raise ArchError(diags)
        self.module_envs[module] = env
        return env

    def base_env(self, module: Module) -> Env | None:
        """What a file sees before its own definitions: the prelude's, and under them the
        networks it uses as parts. Scope decides clashes: the file's own definitions and
        imports, then ops and prelude blocks, win over a built-in network of the same name."""
        prelude = self.module_env(module.prelude) if module.prelude is not None else None
        parts = {k: v for k, v in module.parts.items()
                 if k not in SPELLINGS and k not in FUNCTIONS and not declarations.is_declaration(k)}
        if not parts:
            return prelude
        return Env(Env(None, parts), prelude.vars if prelude is not None else {})

    def define(self, st, module: Module, env: Env, params: dict) -> None:
        """Bind one top-level definition of `module` in env: an import, a param, a let or a block."""
        if isinstance(st, A.Import):
            self.bind_import(st, module, env)
        elif isinstance(st, A.Param):
            chosen = params.get(st.name, st.default)
            env.vars[st.name] = self.override(st, chosen, env) if isinstance(chosen, Override) else self.value(chosen, env)
            if st.range is not None:
                self.check_range(st, env.vars[st.name], env)
        else:
            self.run_statements([st], None, env, in_block=False)

    def override(self, st: A.Param, given: "Override", env: Env):
        """The value a caller (--param, Python) gives a parameter. Its errors name what the caller
        wrote, not a place in a file; a parameter whose default is a number takes only numbers."""
        try:
            default = self.value(st.default, env)
        except Fail:
            default = None
        expects_number = isinstance(default, (int, float)) and not isinstance(default, bool)
        expects_string = isinstance(default, str)
        declared = [(f"'{st.name}' is declared here", st.span)]
        example = f"give a number, such as the default: {given.label(default)}" if expects_number else None
        try:
            v = given.value if given.expr is None else self.value(given.expr, env)
        except Fail as f:
            if f.diag is None:
                raise
            if expects_string and isinstance(given.expr, A.Name):
                return given.expr.id          # a bare word for a string parameter: --param padding=same
            if expects_number and isinstance(given.expr, A.Name):
                raise Fail(Diagnostic(f"{given.label()}: expected a number, got {given.shown}", None, example, declared))
            raise Fail(Diagnostic(f"{given.label()}: {f.diag.message}", None, f.diag.hint, declared))
        if expects_number and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise Fail(Diagnostic(f"{given.label()}: expected a number, got {describe(v)}", None, example, declared))
        return v

    def param_range(self, st: A.Param, env: Env) -> tuple:
        """The declared (low, high) of a family parameter: numbers, low <= high."""
        lo, hi = (self.value(e, env) for e in st.range)
        for v, e in ((lo, st.range[0]), (hi, st.range[1])):
            self.check_number(v, e.span, "use as a bound")
        if lo > hi:
            fail(f"the range of '{st.name}' is empty: {lo} > {hi}", st.range[0].span)
        return lo, hi

    def check_range(self, st: A.Param, value, env: Env) -> None:
        lo, hi = self.param_range(st, env)
        for v in (value if isinstance(value, list) else [value]):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
                fail(f"param '{st.name}' = {plain(value)} is outside its declared range [{lo}, {hi}]", st.span,
                     f"choose {'each element ' if isinstance(value, list) else ''}between {lo} and {hi}, "
                     "or widen the range")

    def bind_import(self, st: A.Import, module: Module, env: Env) -> None:
        target = module.imports[st.path]
        if isinstance(target, Unresolved):
            fail(target.message, st.span, target.hint)
        defined = self.module_env(target).vars
        if st.names is None:
            env.vars.update(defined)
            return
        for n in st.names:
            if n not in defined:
                fail(f"'{st.path}' defines no '{n}'", st.span, _suggest(n, defined))
            env.vars[n] = defined[n]


def _report_once(diags: list, diag: Diagnostic) -> None:
    """Add ``diag``, or, when the same error (an unknown name inside a block, say) was already
    reported from another call of the block, add this call's sites to that first report."""
    first = next((d for d in diags if (d.message, d.span, d.hint) == (diag.message, diag.span, diag.hint)), None)
    if first is None:
        diags.append(diag)
        return
    first.notes.extend(note for note in diag.notes if note not in first.notes)
