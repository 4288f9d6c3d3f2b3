"""Lark front end: text → AST, with located syntax errors."""
from __future__ import annotations

import functools
from pathlib import Path

import lark
from lark import Token, Transformer, v_args

from . import ast as A
from .source import ArchError, Diagnostic, Span

GRAMMAR = Path(__file__).with_name("arch.lark")

# Bracket depth decides whether a line break separates statements: inside (...), [...] and
# <...> it is plain whitespace; inside {...} (a block body) it separates statements again.
_OPEN = {"LPAR": "(", "LSQB": "[", "LESSTHAN": "<", "LBRACE": "{"}
_CLOSE = {"RPAR": "(", "RSQB": "[", "RBRACE": "{"}

MAX_NESTING = 200


class _BracketPostLex:
    always_accept = ("_NL",)

    def process(self, stream):
        stack: list[str] = []
        for tok in stream:
            kind = tok.type
            if kind == "_NL":
                if stack and stack[-1] != "{":
                    continue
                yield tok
                continue
            if kind in _OPEN:
                stack.append(_OPEN[kind])
                if len(stack) > MAX_NESTING:
                    raise _TooDeep(tok)
            elif kind in _CLOSE:
                if stack and stack[-1] == _CLOSE[kind]:
                    stack.pop()
            elif kind == "MORETHAN" and stack and stack[-1] == "<":
                stack.pop()
            yield tok


class _TooDeep(Exception):
    def __init__(self, tok):
        self.tok = tok


@functools.lru_cache(maxsize=1)
def _lark() -> lark.Lark:
    return lark.Lark(
        GRAMMAR.read_text(),
        parser="lalr",
        propagate_positions=True,
        maybe_placeholders=False,
        postlex=_BracketPostLex(),
        cache=False,
    )


def _span(file: str, meta_or_tok) -> Span:
    m = meta_or_tok
    return Span(file, m.line, m.column, m.end_line, m.end_column)


class _ToAst(Transformer):
    def __init__(self, file: str):
        super().__init__(visit_tokens=False)
        self.file = file

    def _s(self, meta):
        return _span(self.file, meta)

    # ---- statements ----
    @v_args(meta=True)
    def start(self, meta, items):
        return [i for i in items if not isinstance(i, Token)]

    body = start

    @v_args(meta=True)
    def param_stmt(self, meta, items):
        return A.Param(self._s(meta), str(items[0]), items[1])

    @v_args(meta=True)
    def preset_stmt(self, meta, items):
        return A.Preset(self._s(meta), items[0], tuple(items[1:]))

    def preset_name(self, items):
        return "/".join(str(t) for t in items)

    @v_args(meta=True)
    def block_def(self, meta, items):
        name = str(items[0])
        params = ()
        rest = items[1:]
        if rest and isinstance(rest[0], tuple):
            params, rest = rest[0], rest[1:]
        body = rest[0]
        if isinstance(body, A.Seq):
            body = [A.SeqStmt(body.span, body)]
        return A.BlockDef(self._s(meta), name, params, tuple(body))

    def params(self, items):
        return tuple(items)

    @v_args(meta=True)
    def param(self, meta, items):
        return A.ParamDecl(str(items[0]), items[1] if len(items) > 1 else None, _span(self.file, items[0]))

    @v_args(meta=True)
    def let_stmt(self, meta, items):
        if len(items) == 3:
            return A.Let(self._s(meta), str(items[0]), items[1], items[2])
        return A.Let(self._s(meta), str(items[0]), None, items[1])

    def let_params(self, items):
        return items[0] if items else ()

    @v_args(meta=True)
    def import_stmt(self, meta, items):
        return A.Import(self._s(meta), str(items[0])[1:-1], None)

    @v_args(meta=True)
    def from_stmt(self, meta, items):
        return A.Import(self._s(meta), str(items[0])[1:-1], tuple(str(t) for t in items[1:]))

    @v_args(meta=True)
    def input_stmt(self, meta, items):
        if len(items) == 1 and isinstance(items[0], Token):
            return A.Input(self._s(meta), (A.Const(_span(self.file, items[0]), _shape(items[0])),))
        return A.Input(self._s(meta), tuple(items[0]) if items else ())

    @v_args(meta=True)
    def output_stmt(self, meta, items):
        return A.Output(self._s(meta), tuple(str(t) for t in items), tuple(_span(self.file, t) for t in items))

    @v_args(meta=True)
    def branch_stmt(self, meta, items):
        return A.Labelled(self._s(meta), str(items[0]), items[1], side=True)

    @v_args(meta=True)
    def labelled(self, meta, items):
        return A.Labelled(self._s(meta), str(items[0]), items[1])

    @v_args(meta=True)
    def seq_stmt(self, meta, items):
        return A.SeqStmt(self._s(meta), items[0])

    # ---- sequences ----
    @v_args(meta=True)
    def seq(self, meta, items):
        layers = [i for i in items if not (isinstance(i, Token) and i.type == "REPEAT")]
        reps = tuple(int(str(t)[1:]) for t in items if isinstance(t, Token) and t.type == "REPEAT")
        return A.Seq(self._s(meta), tuple(layers), reps)

    aseq = seq

    def lbody(self, items):
        return items[0]

    # ---- expressions ----
    @v_args(meta=True)
    def chain_or_single(self, meta, items):
        return items[0] if len(items) == 1 else A.Chain(self._s(meta), tuple(items))

    @v_args(meta=True)
    def ternary(self, meta, items):
        then, cond, other = items
        return A.Ternary(self._s(meta), cond, then, other)

    @v_args(meta=True)
    def or_or_single(self, meta, items):
        return items[0] if len(items) == 1 else A.BoolOp(self._s(meta), "or", tuple(items))

    @v_args(meta=True)
    def and_or_single(self, meta, items):
        return items[0] if len(items) == 1 else A.BoolOp(self._s(meta), "and", tuple(items))

    @v_args(meta=True)
    def not_(self, meta, items):
        return A.Unary(self._s(meta), "not", items[0])

    @v_args(meta=True)
    def compare_or_single(self, meta, items):
        if len(items) == 1:
            return items[0]
        return A.Compare(self._s(meta), tuple(str(t) for t in items[1::2]), tuple(items[0::2]))

    @v_args(meta=True)
    def binop_or_single(self, meta, items):
        node = items[0]
        for op, right in zip(items[1::2], items[2::2]):
            node = A.BinOp(Span(self.file, node.span.line, node.span.col, right.span.end_line, right.span.end_col),
                           str(op), node, right)
        return node

    @v_args(meta=True)
    def power_or_single(self, meta, items):
        return items[0] if len(items) == 1 else A.BinOp(self._s(meta), "**", items[0], items[1])

    @v_args(meta=True)
    def neg(self, meta, items):
        op, operand = items
        return operand if str(op) == "+" else A.Unary(self._s(meta), "-", operand)

    @v_args(meta=True)
    def index(self, meta, items):
        return A.Index(self._s(meta), items[0], items[1])

    @v_args(meta=True)
    def name(self, meta, items):
        return A.Name(self._s(meta), str(items[0]))

    @v_args(meta=True)
    def ref(self, meta, items):
        return A.Ref(self._s(meta), str(items[0]))

    @v_args(meta=True)
    def int_(self, meta, items):
        return A.Const(self._s(meta), int(items[0]))

    @v_args(meta=True)
    def float_(self, meta, items):
        return A.Const(self._s(meta), float(items[0]))

    @v_args(meta=True)
    def string(self, meta, items):
        return A.Const(self._s(meta), str(items[0])[1:-1])

    @v_args(meta=True)
    def shape(self, meta, items):
        return A.Const(self._s(meta), _shape(items[0]))

    @v_args(meta=True)
    def true_(self, meta, items):
        return A.Const(self._s(meta), True)

    @v_args(meta=True)
    def false_(self, meta, items):
        return A.Const(self._s(meta), False)

    @v_args(meta=True)
    def none_(self, meta, items):
        return A.Const(self._s(meta), None)

    @v_args(meta=True)
    def group(self, meta, items):
        return items[0]

    @v_args(meta=True)
    def list_(self, meta, items):
        return A.ListLit(self._s(meta), tuple(items))

    @v_args(meta=True)
    def call(self, meta, items):
        name_tok = items[0]
        args, body = (), None
        for it in items[1:]:
            if isinstance(it, A.Seq):  # args arrive as a list; a bare Seq child is the <body>
                body = it
            elif isinstance(it, list):
                args = tuple(it)
        return A.Call(self._s(meta), str(name_tok), _span(self.file, name_tok), args, body)

    def args(self, items):
        out = []
        for it in items:
            if isinstance(it, A.Arg):
                out.append(it)
            else:
                out.append(A.Arg(None, it, it.span))
        return out

    @v_args(meta=True)
    def kwarg(self, meta, items):
        return A.Arg(str(items[0]), items[1], self._s(meta))


def _shape(tok) -> tuple:
    return tuple(int(p) for p in str(tok).split("x"))


def parse(text: str, file: str = "<input>") -> list:
    """Parse .arch text into a list of AST statements, or raise ArchError with the location."""
    try:
        tree = _lark().parse(text)
    except _TooDeep as e:
        raise ArchError([Diagnostic(f"brackets nested deeper than {MAX_NESTING} levels", _span(file, e.tok),
                                    "split the expression into named blocks")], {file: text})
    except lark.exceptions.UnexpectedInput as e:
        raise ArchError([_syntax_diagnostic(e, text, file)], {file: text}) from None
    except RecursionError:
        raise ArchError([Diagnostic("expression nested too deeply", Span(file, 1, 1, 1, 1),
                                    "split it into named blocks")], {file: text}) from None
    try:
        return _ToAst(file).transform(tree)
    except lark.exceptions.VisitError as e:
        if isinstance(e.orig_exc, RecursionError):
            raise ArchError([Diagnostic("expression nested too deeply", Span(file, 1, 1, 1, 1),
                                        "split it into named blocks")], {file: text}) from None
        if isinstance(e.orig_exc, ValueError):  # e.g. an integer literal too long to convert
            raise ArchError([Diagnostic(f"bad literal: {e.orig_exc}", Span(file, 1, 1, 1, 1))], {file: text}) from None
        raise


_TOKEN_NAMES = {
    "RPAR": "')'", "LPAR": "'('", "RSQB": "']'", "LSQB": "'['", "LBRACE": "'{'", "RBRACE": "'}'",
    "MORETHAN": "'>'", "LESSTHAN": "'<'", "COMMA": "','", "COLON": "':'", "EQUAL": "'='", "SEMICOLON": "';'",
    "_NL": "a line break", "NAME": "a name", "INT": "an integer", "FLOAT": "a number", "STRING": "a string",
    "SHAPE": "a shape such as 224x224x3", "REPEAT": "a repetition such as x2", "AT": "'@'", "SLASH": "'/'",
    "COMP_OP": "a comparison", "ADD_OP": "'+' or '-'", "MUL_OP": "'*', '/', '//' or '%'", "MINUS": "'-'",
    "__ANON_0": "'**'", "$END": "the end of the file", "IF": "'if'", "ELSE": "'else'",
}


def _describe(tok_type: str) -> str:
    if tok_type in _TOKEN_NAMES:
        return _TOKEN_NAMES[tok_type]
    return f"'{tok_type.lower()}'" if tok_type.isupper() else tok_type


def _syntax_diagnostic(e: lark.exceptions.UnexpectedInput, text: str, file: str) -> Diagnostic:
    line = getattr(e, "line", 1) or 1
    col = getattr(e, "column", 1) or 1
    if isinstance(e, lark.exceptions.UnexpectedCharacters):
        ch = text[e.pos_in_stream] if 0 <= e.pos_in_stream < len(text) else "?"
        hint = None
        if ch == "<":
            hint = "'<' opens a layer body only right after a name or ')', e.g. residual<conv3 bn>; compare with <=, >= or =="
        return Diagnostic(f"unexpected character {ch!r}", Span(file, line, col, line, col + 1), hint)
    if isinstance(e, lark.exceptions.UnexpectedToken):
        tok = e.token
        expected = sorted({_describe(t) for t in e.expected if not t.startswith("__")} )
        what = "the end of the file" if tok.type == "$END" else f"{str(tok)!r}" if tok.type != "_NL" else "a line break"
        if tok.type == "$END":
            lines = text.splitlines() or [""]
            line, col = max(1, len(lines)), len(lines[-1]) + 1 if lines else 1
        width = max(1, len(str(tok))) if tok.type not in ("_NL", "$END") else 1
        hint = None
        if expected:
            hint = "expected " + (", ".join(expected[:8]) + (" …" if len(expected) > 8 else ""))
        return Diagnostic(f"unexpected {what}", Span(file, line, col, line, col + width), hint)
    return Diagnostic("syntax error", Span(file, line, col, line, col + 1))
