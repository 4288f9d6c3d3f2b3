"""Source positions and located errors (rustc/Elm style: place, line, caret, hint)."""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Span:
    file: str
    line: int
    col: int
    end_line: int
    end_col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass
class Diagnostic:
    message: str
    span: Span | None = None
    hint: str | None = None
    notes: list[tuple[str, Span | None]] = field(default_factory=list)

    def render(self, sources: dict[str, str]) -> str:
        head = f"{self.span}: error: {self.message}" if self.span else f"error: {self.message}"
        lines = [head]
        if self.span is not None:
            lines += _excerpt(self.span, sources.get(self.span.file))
        for text, span in self.notes:
            lines.append(f"{span}: note: {text}" if span else f"note: {text}")
            if span is not None:
                lines += _excerpt(span, sources.get(span.file))
        if self.hint:
            lines.append(f"  = help: {self.hint}")
        return "\n".join(lines)


def _excerpt(span: Span, text: str | None) -> list[str]:
    if text is None:
        return []
    all_lines = text.splitlines()
    if not 1 <= span.line <= len(all_lines):
        return []
    line = all_lines[span.line - 1].expandtabs(1)
    gutter = str(span.line)
    width = 1
    if span.end_line == span.line and span.end_col > span.col:
        width = span.end_col - span.col
    width = max(1, min(width, len(line) - span.col + 1))
    pad = " " * len(gutter)
    return [f"{pad} |", f"{gutter} | {line}", f"{pad} | " + " " * (span.col - 1) + "^" * width]


class ArchError(Exception):
    """One or more user errors in a spec. Rendered by the CLI; exit status 2."""

    def __init__(self, diagnostics: list[Diagnostic], sources: dict[str, str] | None = None):
        self.diagnostics = diagnostics
        self.sources = sources or {}
        super().__init__(self.render())

    def render(self) -> str:
        return "\n\n".join(d.render(self.sources) for d in self.diagnostics)


def error(message: str, span: Span | None = None, hint: str | None = None) -> ArchError:
    return ArchError([Diagnostic(message, span, hint)])


def suggest(name: str, candidates) -> str | None:
    """A 'did you mean' hint naming up to three close candidates, or None."""
    close = difflib.get_close_matches(name, sorted(candidates), n=3, cutoff=0.6)
    return f"did you mean {' or '.join(repr(c) for c in close)}?" if close else None
