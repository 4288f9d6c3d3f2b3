"""`archc lsp`: the language server, over stdio (pygls).

Each change re-analyses the document (archc.lsp.analysis: resolve, elaborate without JAX,
index; DenseNet-121 in about 50 ms) and publishes its diagnostics; every other request is a
query on the latest analysis of its document. The server reads the documents its client opens
and, for imports of files that are not open, those files from disk (relative to the importing
file, then the built-in library, as `archc check` does); it writes nothing and runs nothing.
"""
from __future__ import annotations

from pathlib import Path

from lsprotocol import types as T
from pygls.lsp.server import LanguageServer
from pygls.uris import from_fs_path, to_fs_path

from ..spec.source import ArchError, Span
from . import analysis as an

server = LanguageServer("archc", "1", text_document_sync_kind=T.TextDocumentSyncKind.Full)
# uri -> the analysis of its latest text that parsed: while a line is half-typed (`add(@`), hover,
# completion and the rest answer from the last version that had names to offer
_analyses: dict[str, an.Analysis] = {}


# ---- positions ----
def _range(span: Span) -> T.Range:
    return T.Range(T.Position(span.line - 1, span.col - 1), T.Position(span.end_line - 1, span.end_col - 1))


def _here(pos: T.Position) -> tuple[int, int]:
    return pos.line + 1, pos.character + 1


def _path(uri: str) -> Path | None:
    p = to_fs_path(uri) if uri.startswith("file:") else None
    return Path(p) if p else None


def _uri(a: an.Analysis, display: str, doc_uri: str) -> str | None:
    if display == a.display:
        return doc_uri
    p = a.paths.get(display)
    return from_fs_path(str(p)) if p is not None else None


def _location(a: an.Analysis, span: Span, doc_uri: str) -> T.Location | None:
    uri = _uri(a, span.file, doc_uri)
    return T.Location(uri, _range(span)) if uri else None


# ---- analysis and diagnostics ----
def _analyze(ls: LanguageServer, uri: str) -> an.Analysis:
    doc = ls.workspace.get_text_document(uri)
    overlay = {}
    for other_uri, other in ls.workspace.text_documents.items():
        p = _path(other_uri)
        if other_uri != uri and p is not None:
            overlay[p.resolve()] = other.source
    a = an.analyze(doc.source, _path(uri), overlay)
    if a.files or uri not in _analyses:
        _analyses[uri] = a
    ls.text_document_publish_diagnostics(T.PublishDiagnosticsParams(uri, _diagnostics(a, uri), doc.version))
    return a


def _diagnostics(a: an.Analysis, uri: str) -> list:
    """What the editor shows for a document: its errors, then its warnings."""
    return ([_diagnostic(a, d, uri) for d in a.diagnostics]
            + [_diagnostic(a, d, uri, T.DiagnosticSeverity.Warning) for d in a.warnings])


def check_file(path: str) -> list:
    """`archc lsp --check FILE`: the diagnostics the server would publish for FILE opened in an
    editor, one `FILE:LINE:COL: severity: message` line each (positions 1-based)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        return [f"{path}: error: cannot read it: {getattr(e, 'strerror', None) or e}"]
    uri = from_fs_path(str(p.resolve()))
    out = []
    for d in _diagnostics(an.analyze(text, p, {}), uri):
        severity = "error" if d.severity == T.DiagnosticSeverity.Error else "warning"
        start = d.range.start
        lines = d.message.splitlines()
        out.append(f"{path}:{start.line + 1}:{start.character + 1}: {severity}: {lines[0]}")
        out += [f"  {line}" for line in lines[1:]]
        for r in d.related_information or ():
            out.append(f"  related: {to_fs_path(r.location.uri)}:{r.location.range.start.line + 1}:"
                       f"{r.location.range.start.character + 1}: {r.message}")
    return out


def _diagnostic(a: an.Analysis, d, uri: str, severity=T.DiagnosticSeverity.Error) -> T.Diagnostic:
    message = d.message + (f"\nhelp: {d.hint}" if d.hint else "")
    related = []
    for text, span in d.notes:
        loc = _location(a, span, uri) if span is not None else None
        if loc is None:
            message += f"\nnote: {text}"
        else:
            related.append(T.DiagnosticRelatedInformation(loc, text))
    if d.span is not None and d.span.file == a.display:
        rng = _range(d.span)
    else:                      # in an imported file, or nowhere: the top of the document, pointing there
        rng = T.Range(T.Position(0, 0), T.Position(0, 0))
        if d.span is not None:
            message = f"{d.span}: {message}"
            loc = _location(a, d.span, uri)
            if loc is not None:
                related.insert(0, T.DiagnosticRelatedInformation(loc, "the error"))
    return T.Diagnostic(rng, message, severity, source="archc", related_information=related or None)


def _latest(ls: LanguageServer, uri: str) -> an.Analysis:
    return _analyses[uri] if uri in _analyses else _analyze(ls, uri)


@server.feature(T.TEXT_DOCUMENT_DID_OPEN)
def _did_open(ls: LanguageServer, params: T.DidOpenTextDocumentParams):
    _analyze(ls, params.text_document.uri)


@server.feature(T.TEXT_DOCUMENT_DID_CHANGE)
def _did_change(ls: LanguageServer, params: T.DidChangeTextDocumentParams):
    _analyze(ls, params.text_document.uri)


@server.feature(T.TEXT_DOCUMENT_DID_CLOSE)
def _did_close(ls: LanguageServer, params: T.DidCloseTextDocumentParams):
    _analyses.pop(params.text_document.uri, None)
    ls.text_document_publish_diagnostics(T.PublishDiagnosticsParams(params.text_document.uri, []))


# ---- hover ----
def _source_line(a: an.Analysis, span: Span) -> str:
    lines = a.sources.get(span.file, "").splitlines()
    return lines[span.line - 1].strip() if 0 < span.line <= len(lines) else ""


def _describe(a: an.Analysis, d: an.Definition) -> str:
    where = f"{d.span.file}:{d.span.line}"
    if d.kind in ("stage", "branch", "input") and a.graph is not None:
        node = a.graph.aliases.get(d.name, d.name if d.kind == "input" else None)
        if node in a.graph.nodes:
            return f"{d.kind} `{d.name}` → `{an.ops.fmt(a.graph.nodes[node].shape)}`"
    return f"{d.kind} `{d.name}` ({where})\n```\n{_source_line(a, d.span)}\n```"


@server.feature(T.TEXT_DOCUMENT_HOVER)
def _hover(ls: LanguageServer, params: T.HoverParams):
    a = _latest(ls, params.text_document.uri)
    line, col = _here(params.position)
    parts = []
    item = a.at(a.display, line, col)
    if item is not None:
        d = a.resolve(a.display, item) if isinstance(item, an.Use) else item
        if d is not None:
            parts.append(_describe(a, d))
        elif an.op_doc(item.name):
            parts.append(an.op_doc(item.name))
    found = a.applications(line, col)
    if found is not None and a.graph is not None:
        parts.insert(0, _applied_text(a, found[1]))
    if not parts:
        return None
    return T.Hover(T.MarkupContent(T.MarkupKind.Markdown, "\n\n---\n\n".join(parts)))


def _applied_text(a: an.Analysis, apps: list) -> str:
    """Output shape, params and MACs of a written layer; one line per distinct application."""
    rows = []
    for app in apps:
        shape_in, shape_out = (an.ops.fmt(a.graph.nodes[t].shape) for t in (app.input, app.output))
        params, macs = a.counts(app)
        rows.append(f"`{shape_in}` → **`{shape_out}`** · {params:,} params · {macs:,} MACs")
    distinct = list(dict.fromkeys(rows))
    head = f"{len(apps)} applications:\n\n" if len(distinct) > 1 else ""
    return head + "\n\n".join(distinct[:8]) + ("\n\n…" if len(distinct) > 8 else "")


# ---- names ----
@server.feature(T.TEXT_DOCUMENT_DEFINITION)
def _definition(ls: LanguageServer, params: T.DefinitionParams):
    a = _latest(ls, params.text_document.uri)
    d = a.definition_at(a.display, *_here(params.position))
    return _location(a, d.span, params.text_document.uri) if d is not None else None


@server.feature(T.TEXT_DOCUMENT_REFERENCES)
def _references(ls: LanguageServer, params: T.ReferenceParams):
    a = _latest(ls, params.text_document.uri)
    d = a.definition_at(a.display, *_here(params.position))
    if d is None:
        return None
    spans = a.references(d)
    if not params.context.include_declaration:
        spans = spans[1:]
    return [loc for s in spans if (loc := _location(a, s, params.text_document.uri)) is not None]


@server.feature(T.TEXT_DOCUMENT_RENAME)
def _rename(ls: LanguageServer, params: T.RenameParams):
    a = _latest(ls, params.text_document.uri)
    d = a.definition_at(a.display, *_here(params.position))
    if d is None or d.kind == "input":
        return None
    changes: dict = {}
    for s in a.references(d):
        uri = _uri(a, s.file, params.text_document.uri)
        if uri is None:
            continue
        prefix = "@" if s.end_col - s.col == len(d.name) + 1 else ""     # a tensor reference keeps its '@'
        changes.setdefault(uri, []).append(T.TextEdit(_range(s), prefix + params.new_name))
    return T.WorkspaceEdit(changes=changes)


# ---- completion and inlay hints ----
_KINDS = {"block": T.CompletionItemKind.Class, "op": T.CompletionItemKind.Function,
          "function": T.CompletionItemKind.Function, "let": T.CompletionItemKind.Variable,
          "param": T.CompletionItemKind.Constant, "block parameter": T.CompletionItemKind.Variable}


@server.feature(T.TEXT_DOCUMENT_COMPLETION, T.CompletionOptions(trigger_characters=["@"]))
def _completion(ls: LanguageServer, params: T.CompletionParams):
    a = _latest(ls, params.text_document.uri)
    line = ls.workspace.get_text_document(params.text_document.uri).lines
    text = line[params.position.line][:params.position.character] if params.position.line < len(line) else ""
    word = text[len(text.rstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")):]
    lnum = params.position.line + 1
    if text[:len(text) - len(word)].endswith("@"):
        items = [T.CompletionItem(n, kind=T.CompletionItemKind.Reference, detail="tensor")
                 for n in a.tensors_in_scope(lnum)]
    else:
        items = [T.CompletionItem(n, kind=_KINDS.get(k, T.CompletionItemKind.Text), detail=detail)
                 for n, k, detail in a.names_in_scope(lnum)]
    return T.CompletionList(is_incomplete=False, items=items)


@server.feature(T.TEXT_DOCUMENT_INLAY_HINT)
def _inlay_hints(ls: LanguageServer, params: T.InlayHintParams):
    a = _latest(ls, params.text_document.uri)
    first, last = params.range.start.line + 1, params.range.end.line + 1
    return [T.InlayHint(T.Position(st.span.end_line - 1, st.span.end_col - 1), f"  {an.ops.fmt(shape)}",
                        kind=T.InlayHintKind.Type)
            for st, shape in a.stage_shapes() if first <= st.span.end_line <= last]


# ---- formatting: archc fmt's formatter ----
@server.feature(T.TEXT_DOCUMENT_FORMATTING)
def _formatting(ls: LanguageServer, params: T.DocumentFormattingParams):
    from ..spec.fmt import format_source
    doc = ls.workspace.get_text_document(params.text_document.uri)
    try:
        new = format_source(doc.source, to_fs_path(doc.uri) or doc.uri)
    except ArchError:
        return None        # the diagnostics already say why it does not parse
    if new == doc.source:
        return []
    end = T.Position(len(doc.lines), 0)
    return [T.TextEdit(T.Range(T.Position(0, 0), end), new)]


def main() -> None:
    server.start_io()
