"""`archc fmt`: the one canonical layout of .arch text.

The grammar ignores comments and most whitespace, so the formatter works on Lark's token stream
(whitespace, `\\` continuations and comments kept as tokens), never on the AST. Line breaks are
the author's: only extra blank lines are dropped and over-long calls broken inside their
brackets. Within a line the spacing is canonical; across lines, the library's tables survive:
labels of consecutive stages are aligned, so are the cells of consecutive calls of one name with
three or more arguments (`inception(64,  96>128, …)` rows), and trailing comments of consecutive
lines. The result must parse to the same AST as the input (spans aside); that is checked on
every call, so a formatter bug can never change a network.
"""
from __future__ import annotations

import dataclasses
import functools

import lark

from . import parser as P
from .source import ArchError, Diagnostic, Span

LINE_LIMIT = 100        # a longer line with a call or list in it is broken inside its brackets
BODY_INDENT = 2         # per enclosing { … } block body
COMMENT_SPREAD = 60     # code widths of comments sharing a column differ by at most this
HANG_INDENT = 4         # per line whose brackets are still open

_OPENERS = {"LPAR": ")", "LSQB": "]", "LESSTHAN": ">", "LBRACE": "}"}
_CLOSERS = {"RPAR", "RSQB", "RBRACE"}
_KEYWORDS_BEFORE_OPERAND = {"if", "else", "and", "or", "not"}
# Tokens that can end an operand: after them '[' is an index and '-' is binary.
_OPERAND_END = {"NAME", "INT", "FLOAT", "STRING", "SHAPE", "TRUE", "FALSE", "NONE", "RPAR", "RSQB", "REPEAT"}


@functools.lru_cache(maxsize=1)
def _lexer() -> lark.Lark:
    # A basic (context-free) lexer of the same grammar: it keeps the ignored tokens when asked.
    return lark.Lark(P.GRAMMAR.read_text(), parser="lalr", lexer="basic")


@dataclasses.dataclass
class _Tok:
    type: str
    text: str
    role: str = ""              # for '<', '>', '-', '=', '/', '[': how the context reads it


@dataclasses.dataclass
class _Line:
    toks: list                  # code tokens of this physical line
    indent: int = 0
    comment: str = ""           # a trailing comment, or the whole line's
    cont: bool = False          # ends with a '\' continuation
    blank_before: bool = False
    label: int = 0              # tokens of a stage label ("name :", "branch name :") at its start
    hang: int | None = None     # a '\' continuation of the labelled line at this index
    stmt_start: bool = False    # begins a statement at the top or in a block body
    depth0: bool = True         # no bracket of an earlier line is open at its start
    text: str = ""


def format_source(text: str, filename: str = "<text>") -> str:
    """The canonical layout of `text`; raises ArchError (located) when it does not parse."""
    before = P.parse(text, filename)
    lines = _lines(_tokens(text))
    while _break_long(lines):
        pass
    out = _render(lines)
    try:
        after = P.parse(out, filename)
    except ArchError:
        after = None
    if after is None or _strip_spans(after) != _strip_spans(before):
        raise ArchError([Diagnostic("internal error: formatting would change the meaning of this file; "
                                    "it was left as is", Span(filename, 1, 1, 1, 1),
                                    "please report this file")], {filename: text})
    return out


# ---- tokens → physical lines ----------------------------------------------------------------

def _tokens(text: str) -> list[_Tok]:
    out = []
    for t in _lexer().lex(text.replace("\r\n", "\n"), dont_ignore=True):
        s = str(t)
        if t.type == "_NL":
            out.append(_Tok("NL", s))
        elif s.startswith("\\"):
            out.append(_Tok("CONT", s))
        elif not s.strip():
            continue                                    # spacing is recomputed
        elif t.type == "FLOAT" and s.endswith(".") and out and out[-1].type == "DOT":
            # @body.blocks.12.conv1: the parser's contextual lexer reads "12" "." inside a reference
            out += [_Tok("INT", s[:-1]), _Tok("DOT", ".")]
        else:
            out.append(_Tok(t.type, s))
    _assign_roles(out)
    return out


def _assign_roles(toks: list[_Tok]) -> None:
    """Read each ambiguous token in its context, as the parser does."""
    stack: list[str] = []
    prev = None
    in_preset = False
    for t in toks:
        if t.type in ("NL", "CONT", "COMMENT"):
            if t.type == "NL" and (not stack or stack[-1] == "LBRACE"):
                in_preset, prev = False, None
            continue
        if prev is None and t.type == "PRESET":
            in_preset = True
        if t.type == "SEMICOLON" and (not stack or stack[-1] == "LBRACE"):
            in_preset = False
        tight_eq = in_preset or (stack and stack[-1] != "LBRACE")
        if t.type == "LESSTHAN":
            t.role = "body"
        elif t.type == "MORETHAN":
            t.role = "close" if stack and stack[-1] == "LESSTHAN" else "chain"
        elif t.type == "ADD_OP":
            binary = prev is not None and (prev.type in _OPERAND_END or prev.role == "close")
            t.role = "binary" if binary else "unary"
        elif t.type == "EQUAL":
            t.role = "tight" if tight_eq else "spaced"
        elif t.type in ("SLASH",) or (t.type == "MUL_OP" and t.text == "/" and in_preset and not stack):
            t.role = "tight" if in_preset else ""
        elif t.type == "LSQB":
            t.role = "index" if prev is not None and (prev.type in _OPERAND_END or prev.role == "close") else "list"
        if t.type in _OPENERS:
            stack.append(t.type)
        elif t.type in _CLOSERS or (t.type == "MORETHAN" and t.role == "close"):
            if stack:
                stack.pop()
        prev = t


def _lines(toks: list[_Tok]) -> list[_Line]:
    lines: list[_Line] = []
    stack: list[tuple[str, int]] = []           # open brackets and the line each opened on
    cur = _Line([])
    started = False                             # any code or comment seen yet (drops leading blanks)
    pending_blank = False
    cont_of: int | None = None                  # the statement line a '\' chain continues

    def at_line_start():
        nonlocal cur
        cur.blank_before = pending_blank and started
        cur.depth0 = not any(k != "LBRACE" for k, _ in stack)

    def finish(cont=False):
        nonlocal cur, started
        cur.cont = cont
        if cur.toks or cur.comment or cont or lines and lines[-1].cont:
            lines.append(cur)
            started = True
        cur = _Line([])

    def place(closing):
        """The indentation of the line starting here, from the brackets open (closers first)."""
        open_ = stack[:len(stack) - 1] if closing else stack
        braces = sum(1 for k, _ in open_ if k == "LBRACE")
        hangs = len({ln for k, ln in open_ if k != "LBRACE"})
        cur.indent = BODY_INDENT * braces + HANG_INDENT * hangs
        continuing = bool(lines) and lines[-1].cont
        cur.stmt_start = not continuing and not hangs and not closing
        if continuing and not hangs:
            cur.hang = cont_of
            cur.indent = BODY_INDENT * braces + (HANG_INDENT if cont_of is None else 0)

    at_line_start()
    for t in toks:
        if t.type == "NL":
            finish()
            pending_blank = t.text.count("\n") > 1
            at_line_start()
            if not lines or not lines[-1].cont:
                cont_of = None
            continue
        if t.type == "CONT":
            finish(cont=True)
            pending_blank = False
            at_line_start()
            continue
        if t.type == "COMMENT":
            if not cur.toks:
                place(closing=False)
            cur.comment = t.text.rstrip()
            continue
        idx = len(lines)
        if not cur.toks:
            place(closing=t.type in _CLOSERS or t.role == "close")
        cur.toks.append(t)
        if cur.stmt_start and t.type == "COLON" and [x.type for x in cur.toks[:-1]] in (["NAME"], ["BRANCH", "NAME"]):
            cur.label = len(cur.toks)
            cont_of = idx
        elif cur.stmt_start and len(cur.toks) == 1:
            cont_of = None
        if t.type in _OPENERS:
            stack.append((t.type, idx))
        elif (t.type in _CLOSERS or t.role == "close") and stack:
            stack.pop()
    finish()
    return lines


# ---- long lines -----------------------------------------------------------------------------

def _groups(toks: list[_Tok]):
    """(open index, close index, top-level comma indices) of each bracket pair within one line."""
    stack, commas = [], []
    for i, t in enumerate(toks):
        if t.type in _OPENERS:
            stack.append(i)
            commas.append([])
        elif (t.type in _CLOSERS or t.role == "close") and stack:
            yield stack.pop(), i, commas.pop()
        elif t.type == "COMMA" and commas:
            commas[-1].append(i)


def _break_long(lines: list[_Line]) -> bool:
    """Break the first over-long line inside its widest long call or list (at least half the
    line limit wide): one argument per line. A preset's values are not in brackets: not broken."""
    for n, line in enumerate(lines):
        if line.indent + len(_code(line.toks)) <= LINE_LIMIT or line.toks[0].type == "PRESET":
            continue
        candidates = [(len(_code(line.toks[o:c + 1])), o, c, cs) for o, c, cs in _groups(line.toks)
                      if cs and line.toks[o].type in ("LPAR", "LSQB") and line.toks[o].role != "index"]
        candidates = [g for g in candidates if g[0] >= LINE_LIMIT // 2]
        if not candidates:
            continue
        _, o, c, commas = max(candidates)
        toks = line.toks
        args, start = [], o + 1
        for i in commas + [c]:
            if start < i:
                args.append(toks[start:i])
            start = i + 1
        inner = line.indent + HANG_INDENT
        head = _Line(toks[:o + 1], line.indent, "", False, line.blank_before, line.label, line.hang,
                     line.stmt_start, line.depth0)
        body = [_Line(a + [_Tok("COMMA", ",")], inner, depth0=False) for a in args]
        tail = _Line(toks[c:], line.indent, line.comment, line.cont, depth0=False)
        lines[n:n + 1] = [head, *body, tail]
        return True
    return False


# ---- rendering ------------------------------------------------------------------------------

def _space(a: _Tok, b: _Tok) -> str:
    if b.type in ("COMMA", "SEMICOLON", "COLON", "RPAR", "RSQB") or b.role == "close":
        return ""
    if a.type in ("LPAR", "LSQB", "AT", "DOT") or b.type == "DOT" or a.role in ("body", "unary", "chain"):
        return ""
    if b.role in ("body", "chain", "index"):
        return ""
    if b.type == "LPAR" and a.type in ("FNAME", "INPUT_CALL", "PATH_CALL"):
        return ""
    if "tight" in (a.role, b.role):
        return ""
    return " "


def _code(toks: list[_Tok], label: int = 0) -> str:
    out = []
    for i, t in enumerate(toks):
        if i:
            out.append(_space(toks[i - 1], t))
        out.append(t.text)
    return "".join(out)


def _cells(toks: list[_Tok]):
    """The table key of a line (name, commas, opener index) and the token indices of its cells'
    commas: the first bracket pair with three or more arguments, e.g. `inception(`."""
    if toks and toks[0].type == "PRESET":
        # a preset's name and values are the cells: `preset regnet_x_8gf:   depth=23, w0=80,  …`
        depth, cuts = 0, []
        for i, t in enumerate(toks):
            depth += t.type in _OPENERS
            depth -= t.type in _CLOSERS or t.role == "close"
            if depth == 0 and (t.type == "COMMA" or t.type == "COLON" and not cuts):
                cuts.append(i)
        if len(cuts) >= 3:                              # the same parameters, in the same order
            names = tuple(toks[i + 1].text if i + 1 < len(toks) else "" for i in cuts)
            return ("preset", names, 0), cuts
    for o, c, commas in sorted(_groups(toks)):
        if len(commas) >= 2:
            name = toks[o - 1].text if o and toks[o - 1].type == "FNAME" else toks[o].text
            return (name, len(commas), o), commas
    return None, []


def _paragraphs(lines: list[_Line]):
    """Index ranges of consecutive code lines (a blank or comment-only line ends one)."""
    n = 0
    while n < len(lines):
        m = n
        while m < len(lines) and lines[m].toks and (m == n or not lines[m].blank_before):
            m += 1
        yield n, max(m, n + 1)
        n = max(m, n + 1)


def _label_widths(lines: list[_Line]) -> list[int]:
    """Stage and branch labels of one paragraph and indentation share a width; a line that
    continues a statement does not interrupt them, any other statement does."""
    widths = [0] * len(lines)
    for n, m in _paragraphs(lines):
        runs: dict[int, list[int]] = {}
        for k in range(n, m):
            line = lines[k]
            if not line.stmt_start or not line.toks:
                continue
            if line.label:
                runs.setdefault(line.indent, []).append(k)
            else:
                _set_width(lines, widths, runs.pop(line.indent, []))
        for run in runs.values():
            _set_width(lines, widths, run)
    return widths


def _label(line: _Line) -> str:
    return " ".join(t.text for t in line.toks[:line.label - 1]) + ":"


def _set_width(lines, widths, run):
    width = max((len(_label(lines[k])) for k in run), default=0) + 1
    for k in run:
        widths[k] = width


def _render(lines: list[_Line]) -> str:
    label_w = _label_widths(lines)
    texts = []
    for k, line in enumerate(lines):
        toks = line.toks
        if line.label:
            texts.append(_label(line).ljust(label_w[k]) + _code(toks[line.label:]))
        else:
            texts.append(_code(toks))
    # '\' continuations of a stage hang under its first layer
    for k, line in enumerate(lines):
        if line.hang is not None:
            line.indent = lines[line.hang].indent + label_w[line.hang]
    full = [" " * l.indent + t if t else "" for l, t in zip(lines, texts)]
    _align_cells(lines, full)
    for k, line in enumerate(lines):
        if line.cont:
            full[k] = full[k] + " \\" if full[k].strip() else " " * line.indent + "\\"
    _align_comments(lines, full)
    out = []
    for line, text in zip(lines, full):
        if line.blank_before:
            out.append("")
        out.append(text.rstrip())
    return "\n".join(out) + "\n" if out else ""


def _align_cells(lines: list[_Line], full: list[str]) -> None:
    """Consecutive calls of one name, at one column, with three or more arguments are a table:
    their argument columns are aligned; so are presets with three or more values."""
    for n, m in _paragraphs(lines):
        tables: dict[tuple, list[tuple[int, list[int]]]] = {}
        for k in range(n, m):
            line = lines[k]
            key, commas = _cells(line.toks)
            if key is None:
                continue
            toks, shift = line.toks[line.label:], line.label
            start = len(full[k]) - len(_code(toks))
            offsets = [start + len(_code(toks[:c - shift + 1])) for c in commas]
            opener = start + len(_code(toks[:key[2] - shift + 1]))
            tables.setdefault((key[:2], opener), []).append((k, offsets))
        for rows in tables.values():
            if len(rows) < 2:
                continue
            cells = []
            for k, offsets in rows:
                cuts = [0, *offsets, len(full[k])]
                cells.append([full[k][a:b] if i == 0 else full[k][a:b].strip()
                              for i, (a, b) in enumerate(zip(cuts, cuts[1:]))])
            widths = [max(len(r[j]) for r in cells) for j in range(len(cells[0]))]
            for (k, _), row in zip(rows, cells):
                full[k] = " ".join(c.ljust(w) for c, w in zip(row[:-1], widths)) + " " + row[-1]


def _align_comments(lines: list[_Line], full: list[str]) -> None:
    """Trailing comments of consecutive code lines start in one column, two spaces after the
    longest code; a line far longer than its neighbours starts a new column."""
    n = 0
    while n < len(lines):
        m = n
        while m < len(lines) and lines[m].toks and (m == n or not lines[m].blank_before):
            m += 1
        if m == n:                                      # a blank or comment-only line
            line = lines[n]
            if line.comment:
                full[n] = (full[n].rstrip() + " " + line.comment).strip() if full[n].strip() else \
                    " " * line.indent + line.comment
            n += 1
            continue
        group: list[int] = []
        for k in [k for k in range(n, m) if lines[k].comment] + [None]:
            widths = [len(full[j].rstrip()) for j in group]
            if k is not None and (not group or max(widths + [len(full[k])]) - min(widths + [len(full[k])])
                                  <= COMMENT_SPREAD):
                group.append(k)
                continue
            for j in group:
                full[j] = full[j].rstrip().ljust(max(widths) + 2) + lines[j].comment
            group = [k]
        n = m


def _strip_spans(x):
    if isinstance(x, Span):
        return None
    if isinstance(x, (list, tuple)):
        return tuple(_strip_spans(i) for i in x)
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return (type(x).__name__,) + tuple(_strip_spans(getattr(x, f.name)) for f in dataclasses.fields(x))
    return x
