"""Lark front end: text → AST, with located syntax errors."""
from __future__ import annotations

import functools
import hashlib
import json
import re
import unicodedata
from pathlib import Path

import lark
from lark import Token, Transformer

from . import ast as A
from .source import ArchError, Diagnostic, Span, suggest

GRAMMAR = Path(__file__).with_name("arch.lark")
# The LALR table Lark computes from GRAMMAR, shipped as JSON: computing it costs 0.15-0.3 s of
# every process's first parse, loading it 0.03 s. Plain JSON data (never pickle, which Lark's
# own cache uses); ignored unless made from this grammar text by this Lark minor version.
PARSE_TABLE = Path(__file__).with_name("arch_table.json")

# Bracket depth decides whether a line break separates statements: inside (...), [...] and
# <...> it is plain whitespace; inside {...} (a block body) it separates statements again.
_OPEN = {"LPAR": "(", "LSQB": "[", "LESSTHAN": "<", "LBRACE": "{"}
_CLOSE = {"RPAR": "(", "RSQB": "[", "RBRACE": "{"}

MAX_NESTING = 200


class _BracketPostLex:
    always_accept = ("_NL",)

    open_tokens: list = []  # the brackets still open when the parser stopped (for diagnostics)

    def process(self, stream):
        stack: list[str] = []
        opened: list = []
        _BracketPostLex.open_tokens = opened
        for tok in stream:
            kind = tok.type
            if kind == "_NL":
                if stack and stack[-1] != "{":
                    continue
                yield tok
                continue
            if kind in _OPEN:
                stack.append(_OPEN[kind])
                opened.append(tok)
                if len(stack) > MAX_NESTING:
                    raise _TooDeep(tok)
            elif kind in _CLOSE:
                if stack and stack[-1] == _CLOSE[kind]:
                    stack.pop()
                    opened.pop()
            elif kind == "MORETHAN" and stack and stack[-1] == "<":
                stack.pop()
                opened.pop()
            yield tok


class _TooDeep(Exception):
    def __init__(self, tok):
        self.tok = tok


def _span(file: str, tok) -> Span:
    return Span(file, tok.line, tok.column, tok.end_line, tok.end_column)


_SKIP = frozenset(("LPAR", "RPAR", "LSQB", "RSQB", "LESSTHAN", "MORETHAN"))


def _pos(x):
    """(line, col, end_line, end_col) of a token, an AST node, or a list/Arg of them."""
    span = getattr(x, "span", None)
    if span is not None:
        return span.line, span.col, span.end_line, span.end_col
    if isinstance(x, Token):
        return x.line, x.column, x.end_line, x.end_column
    if isinstance(x, (list, tuple)) and x:
        a, b = _pos(x[0]), _pos(x[-1])
        if a and b:
            return a[0], a[1], b[2], b[3]
    return None


def _strip(items):
    return [i for i in items if not (isinstance(i, Token) and i.type in _SKIP)]


class _ToAst(Transformer):
    """Builds the AST inside the LALR parser (no intermediate tree, no per-reduction position
    bookkeeping). Spans come from the first and last token or node of each rule."""

    file = "<input>"

    def __init__(self):
        super().__init__(visit_tokens=False)

    def _s(self, items) -> Span:
        first = last = None
        for it in items:
            first = _pos(it)
            if first is not None:
                break
        for it in reversed(items):
            last = _pos(it)
            if last is not None:
                break
        if first is None:
            return Span(self.file, 1, 1, 1, 1)
        return Span(self.file, first[0], first[1], last[2], last[3])

    # ---- statements ----
    def start(self, items):
        return [i for i in items if not isinstance(i, Token)]

    body = start

    def param_stmt(self, items):
        rng = items[3] if len(items) > 3 else None
        return A.Param(self._s([i for i in items if i is not None]), str(items[0]), items[1], rng)

    def param_range(self, items):
        return (items[1], items[2])

    def preset_stmt(self, items):
        name, values = items[0], tuple(items[1:])
        return A.Preset(self._s([name, *values]), str(name), values)

    def preset_name(self, items):
        tok = items[0]
        return Token("NAME", "/".join(str(t) for t in items), line=tok.line, column=tok.column,
                     end_line=items[-1].end_line, end_column=items[-1].end_column)

    def block_def(self, items):
        items = _strip(items)
        name = str(items[0])
        params, rest = (), items[1:]
        if rest and isinstance(rest[0], tuple):
            params, rest = rest[0], rest[1:]
        body = rest[0] if rest else []
        if isinstance(body, A.Seq):
            body = [A.SeqStmt(body.span, body)]
        return A.BlockDef(self._s(items), name, params, tuple(body))

    def params(self, items):
        return tuple(items)

    def param(self, items):
        return A.ParamDecl(str(items[0]), items[1] if len(items) > 1 else None, self._s(items[:1]))

    def let_stmt(self, items):
        if len(items) == 3:
            return A.Let(self._s(items), str(items[0]), items[1], items[2])
        return A.Let(self._s(items), str(items[0]), None, items[1])

    def let_params(self, items):
        items = _strip(items)
        return items[0] if items else ()

    def import_stmt(self, items):
        return A.Import(self._s(items), str(items[0])[1:-1], None)

    def from_stmt(self, items):
        return A.Import(self._s(items), str(items[0])[1:-1], tuple(str(t) for t in items[1:]))

    def input_stmt(self, items):
        items = [i for i in _strip(items) if not (isinstance(i, Token) and i.type == "INPUT_CALL")]
        if len(items) == 1 and isinstance(items[0], Token):
            return A.Input(self._s(items), (A.Const(self._s(items), _shape(items[0])),))
        return A.Input(self._s(items), tuple(items[0]) if items else ())

    def output_stmt(self, items):
        names = [t for t in items if isinstance(t, Token)]
        when = items[-1] if not isinstance(items[-1], Token) else None
        return A.Output(self._s(items), tuple(str(t) for t in names), tuple(self._s([t]) for t in names), when)

    def branch_stmt(self, items):
        return A.Labelled(self._s(items), str(items[0]), items[1], side=True)

    def labelled(self, items):
        return A.Labelled(self._s(items), str(items[0]), items[1])

    def seq_stmt(self, items):
        return A.SeqStmt(items[0].span, items[0])

    # ---- sequences ----
    def seq(self, items):
        layers = tuple(i for i in items if not isinstance(i, Token))
        reps = tuple(int(str(t)[1:]) for t in items if isinstance(t, Token) and t.type == "REPEAT")
        return A.Seq(self._s(items), layers, reps)

    def aseq(self, items):
        # A single value in an argument needs no Seq around it.
        if len(items) == 1 and not isinstance(items[0], Token):
            return items[0]
        return self.seq(items)

    def lbody(self, items):
        return _strip(items)[0]

    # ---- expressions ----
    def chain(self, items):
        items = [i for i in items if not isinstance(i, Token)]
        return A.Chain(self._s(items), tuple(items))

    def ternary(self, items):
        then, cond, other = items
        return A.Ternary(self._s(items), cond, then, other)

    def test(self, items):
        return _climb(self, items)

    arith = test

    def not_(self, items):
        return A.Unary(self._s(items), "not", items[1])

    def neg(self, items):
        op, operand = items
        return operand if str(op) == "+" else A.Unary(self._s(items), "-", operand)

    def power(self, items):
        items = [i for i in items if not isinstance(i, Token)]
        return A.BinOp(self._s(items), "**", items[0], items[1])

    def index(self, items):
        obj, idx = _strip(items)
        return A.Index(self._s(items), obj, idx)

    def name(self, items):
        return A.Name(self._s(items), str(items[0]))

    def ref(self, items):
        # @trunk.layer2, @body.blocks.12: a stage of a network used as a part, a unit of one
        return A.Ref(self._s(items), ".".join(str(t) for t in items if t.type in ("NAME", "INT")))

    def int_(self, items):
        return A.Const(self._s(items), int(items[0]))

    def float_(self, items):
        return A.Const(self._s(items), float(items[0]))

    def string(self, items):
        return A.Const(self._s(items), str(items[0])[1:-1])

    def shape(self, items):
        return A.Const(self._s(items), _shape(items[0]))

    def const(self, items):
        return A.Const(self._s(items), {"true": True, "false": False, "none": None}[str(items[0])])

    def group(self, items):
        return _strip(items)[0]

    def list_(self, items):
        return A.ListLit(self._s(items), tuple(i for i in items if not isinstance(i, Token)))

    def call(self, items):
        name_tok = items[0]
        args, body = (), None
        for it in items[1:]:
            if isinstance(it, A.Seq):  # args arrive as a list; a bare Seq child is the <body>
                body = it
            elif isinstance(it, list):
                args = tuple(it)
        func = str(name_tok)[1:-1] if name_tok.type == "PATH_CALL" else str(name_tok)
        return A.Call(self._s(items), func, self._s([name_tok]), args, body)

    def args(self, items):
        return [it if isinstance(it, A.Arg) else A.Arg(None, it, it.span) for it in items]

    def kwarg(self, items):
        return A.Arg(str(items[0]), items[1], self._s(items))


# Binding power of the flattened operators (higher binds tighter).
_BP = {"or": 1, "and": 2, "==": 3, "!=": 3, "<=": 3, ">=": 3, "+": 4, "-": 4, "*": 5, "/": 5, "//": 5, "%": 5}


def _climb(t: _ToAst, items):
    """Precedence climbing over [operand, op, operand, …]; operators are left-associative and
    comparisons chain (a <= b <= c) as in Python."""
    operands, ops = items[0::2], [str(o) for o in items[1::2]]
    pos = 0

    def parse(min_bp):
        nonlocal pos
        left = operands[pos]
        while pos < len(ops) and _BP[ops[pos]] >= min_bp:
            op = ops[pos]
            bp = _BP[op]
            if bp == 3:
                cmp_ops, cmp_operands = [], [left]
                while pos < len(ops) and _BP[ops[pos]] == 3:
                    cmp_ops.append(ops[pos])
                    pos += 1
                    cmp_operands.append(parse(4))
                left = A.Compare(t._s(cmp_operands), tuple(cmp_ops), tuple(cmp_operands))
                continue
            pos += 1
            right = parse(bp + 1)
            if op in ("and", "or"):
                left = A.BoolOp(t._s([left, right]), op, (left, right))
            else:
                left = A.BinOp(t._s([left, right]), op, left, right)
        return left

    return parse(0)


_TRANSFORMER = _ToAst()


def _table_key(grammar: str) -> dict:
    lark_minor = ".".join(lark.__version__.split(".")[:2])      # table format is per minor release
    return {"grammar_sha256": hashlib.sha256(grammar.encode()).hexdigest(), "lark": lark_minor}


def _int_keys(pairs):
    # JSON object keys are strings; Lark's table keys states and memo entries by int
    return {int(k) if k.isdigit() else k: v for k, v in pairs}


def _build_lark(grammar: str) -> lark.Lark:
    return lark.Lark(grammar, parser="lalr", maybe_placeholders=False,
                     postlex=_BracketPostLex(), transformer=_TRANSFORMER)


@functools.lru_cache(maxsize=1)
def _lark() -> lark.Lark:
    grammar = GRAMMAR.read_text()
    try:
        table = json.loads(PARSE_TABLE.read_text(), object_pairs_hook=_int_keys)
    except (OSError, ValueError):
        table = None
    if table is None or table.get("key") != _table_key(grammar):
        return _build_lark(grammar)
    return lark.Lark._load_from_dict(table["data"], table["memo"], postlex=_BracketPostLex(),
                                     transformer=_TRANSFORMER)


def write_parse_table(path: Path = PARSE_TABLE) -> None:
    """Compute the LALR table from GRAMMAR and store it (``python -m archc.spec.parser``)."""
    grammar = GRAMMAR.read_text()
    data, memo = _build_lark(grammar).memo_serialize([lark.lexer.TerminalDef, lark.grammar.Rule])
    data["options"].update(postlex=None, transformer=None)     # objects; given again at load
    path.write_text(json.dumps({"key": _table_key(grammar), "data": data, "memo": memo},
                               sort_keys=True, separators=(",", ":")) + "\n")


def _shape(tok) -> tuple:
    return tuple(int(p) for p in str(tok).split("x"))


def parse(text: str, file: str = "<input>") -> list:
    """Parse .arch text into a list of AST statements, or raise ArchError with the location."""
    _TRANSFORMER.file = file
    try:
        return _lark().parse(text)
    except _TooDeep as e:
        raise ArchError([Diagnostic(f"brackets nested deeper than {MAX_NESTING} levels", _span(file, e.tok),
                                    "split the expression into named blocks")], {file: text}) from None
    except lark.exceptions.UnexpectedInput as e:
        raise ArchError([_syntax_diagnostic(e, text, file)], {file: text}) from None
    except RecursionError:
        raise ArchError([Diagnostic("expression nested too deeply", Span(file, 1, 1, 1, 1),
                                    "split it into named blocks")], {file: text}) from None
    except ValueError as e:  # e.g. an integer literal too long to convert
        raise ArchError([Diagnostic(f"bad literal: {e}", Span(file, 1, 1, 1, 1))], {file: text}) from None


_TOKEN_NAMES = {
    "RPAR": "')'", "LPAR": "'('", "RSQB": "']'", "LSQB": "'['", "LBRACE": "'{'", "RBRACE": "'}'",
    "MORETHAN": "'>'", "LESSTHAN": "'<'", "COMMA": "','", "COLON": "':'", "EQUAL": "'='", "SEMICOLON": "';'",
    "_NL": "a line break", "NAME": "a name", "INT": "an integer", "FLOAT": "a number", "STRING": "a string",
    "SHAPE": "a shape such as 224x224x3", "REPEAT": "a repetition such as x2", "AT": "'@'", "SLASH": "'/'",
    "COMP_OP": "a comparison", "ADD_OP": "'+' or '-'", "MUL_OP": "'*', '/', '//' or '%'", "MINUS": "'-'",
    "__ANON_0": "'**'", "$END": "the end of the file", "IF": "'if'", "ELSE": "'else'", "FNAME": "a name", "INPUT_CALL": "'input'",
    "DOT": "'.'", "PATH_CALL": "a file name in quotes",
}


def _describe(tok_type: str) -> str:
    if tok_type in _TOKEN_NAMES:
        return _TOKEN_NAMES[tok_type]
    return f"'{tok_type.lower()}'" if tok_type.isupper() else tok_type


@functools.lru_cache(maxsize=1)
def statement_keywords() -> frozenset:
    """The words that begin a statement (block, param, let, …), read from the grammar."""
    return frozenset(re.findall(r'^\w+(?:_stmt|_def)\s*:\s*"([a-z]+)"', GRAMMAR.read_text(), re.MULTILINE))


def _misspelt_keyword(text: str, line: int, file: str) -> Diagnostic | None:
    """`blok basic(c) = …`: a line that fails to parse and begins with a word close to a
    statement keyword, followed by a name, most likely misspells that keyword."""
    lines = text.splitlines()
    # the shapes of the statements: `word NAME(…) =`, `word NAME =`, `word NAME:`, `word "file"`, `word 32x32x3`
    m = (re.match(r'(\s*)([A-Za-z_]\w*)\s+(?:[A-Za-z_]\w*\s*(?:\(.*?\))?\s*[=:]|"|\d+x)', lines[line - 1])
         if 0 < line <= len(lines) else None)
    if m is None or m.group(2) in statement_keywords():
        return None
    hint = suggest(m.group(2), statement_keywords())
    if hint is None:
        return None
    col = len(m.group(1)) + 1
    return Diagnostic(f"unknown statement {m.group(2)!r}", Span(file, line, col, line, col + len(m.group(2))), hint)


def _syntax_diagnostic(e: lark.exceptions.UnexpectedInput, text: str, file: str) -> Diagnostic:
    line = getattr(e, "line", 1) or 1
    col = getattr(e, "column", 1) or 1
    if isinstance(e, lark.exceptions.UnexpectedCharacters):
        ch = text[e.pos_in_stream] if 0 <= e.pos_in_stream < len(text) else "?"
        hint = None
        if ch == "<":
            hint = "'<' opens a layer body only right after a name or ')', e.g. residual<conv3 bn>; compare with <=, >= or =="
        elif ch.isdigit():
            hint = f"numbers are written with the digits 0-9: {ch!r} is {unicodedata.name(ch, 'a digit').lower()}"
        return Diagnostic(f"unexpected character {ch!r}", Span(file, line, col, line, col + 1), hint)
    if isinstance(e, lark.exceptions.UnexpectedToken):
        misspelt = _misspelt_keyword(text, line, file)
        if misspelt is not None:
            return misspelt
        tok = e.token
        expected = sorted({_describe(t) for t in e.expected if not t.startswith("__")} )
        what = "end of file" if tok.type == "$END" else f"{str(tok)!r}" if tok.type != "_NL" else "a line break"
        if tok.type == "$END" and _BracketPostLex.open_tokens:
            o = _BracketPostLex.open_tokens[-1]
            return Diagnostic(f"this {str(o)!r} is never closed", Span(file, o.line, o.column, o.line, o.column + 1),
                              f"close it with {dict(zip('([<{', ')]>}'))[str(o)]!r}; inside brackets a line break does not end the statement")
        if tok.type == "$END":
            lines = text.splitlines() or [""]
            line, col = max(1, len(lines)), len(lines[-1]) + 1 if lines else 1
        width = max(1, len(str(tok))) if tok.type not in ("_NL", "$END") else 1
        hint = None
        if expected:
            hint = "expected " + (", ".join(expected[:8]) + (" …" if len(expected) > 8 else ""))
        return Diagnostic(f"unexpected {what}", Span(file, line, col, line, col + width), hint)
    return Diagnostic("syntax error", Span(file, line, col, line, col + 1))


if __name__ == "__main__":
    write_parse_table()
    print(f"wrote {PARSE_TABLE}")
