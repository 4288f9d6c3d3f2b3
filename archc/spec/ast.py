"""AST of the .arch language. Every node carries its source span."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .source import Span


@dataclass(frozen=True, slots=True)
class Node:
    span: Span


# ---- expressions (layers are expressions too) ----
@dataclass(frozen=True, slots=True)
class Const(Node):
    value: Any            # int, float, bool, str, None, or a tuple of ints for SHAPE


@dataclass(frozen=True, slots=True)
class Name(Node):
    id: str


@dataclass(frozen=True, slots=True)
class Ref(Node):
    id: str               # @name: the tensor of that name


@dataclass(frozen=True, slots=True)
class ListLit(Node):
    items: tuple


@dataclass(frozen=True, slots=True)
class Chain(Node):
    items: tuple          # a>b>c


@dataclass(frozen=True, slots=True)
class Arg:
    name: str | None
    value: Any
    span: Span


@dataclass(frozen=True, slots=True)
class Call(Node):
    func: str
    func_span: Span
    args: tuple           # of Arg
    body: Any = None      # Seq from name(...)<body>


@dataclass(frozen=True, slots=True)
class Seq(Node):
    items: tuple
    repeats: tuple = ()   # ' xN' suffixes, applied to the whole sequence


@dataclass(frozen=True, slots=True)
class BinOp(Node):
    op: str
    left: Any
    right: Any


@dataclass(frozen=True, slots=True)
class Unary(Node):
    op: str               # '-' or 'not'
    operand: Any


@dataclass(frozen=True, slots=True)
class Compare(Node):
    ops: tuple
    operands: tuple


@dataclass(frozen=True, slots=True)
class BoolOp(Node):
    op: str               # 'and' / 'or'
    operands: tuple


@dataclass(frozen=True, slots=True)
class Ternary(Node):
    cond: Any
    then: Any
    other: Any


@dataclass(frozen=True, slots=True)
class Index(Node):
    obj: Any
    index: Any


# ---- statements ----
@dataclass(frozen=True, slots=True)
class Param(Node):
    name: str
    default: Any
    range: tuple | None = None    # (low, high) expressions: `param width = 1.0 in [0.25, 2.0]`


@dataclass(frozen=True, slots=True)
class Preset(Node):
    name: str
    values: tuple         # of Arg (all named)


@dataclass(frozen=True, slots=True)
class ParamDecl:
    name: str
    default: Any          # expression or None
    span: Span


@dataclass(frozen=True, slots=True)
class BlockDef(Node):
    name: str
    params: tuple         # of ParamDecl
    body: tuple           # statements (a one-line body is a single SeqStmt)


@dataclass(frozen=True, slots=True)
class Let(Node):
    name: str
    params: tuple | None  # a function when not None
    value: Any


@dataclass(frozen=True, slots=True)
class Import(Node):
    path: str
    names: tuple | None   # None: import everything


@dataclass(frozen=True, slots=True)
class Input(Node):
    args: tuple           # of Arg, or a single Const shape


@dataclass(frozen=True, slots=True)
class Output(Node):
    names: tuple
    spans: tuple
    when: Any = None      # output a, b if aux


@dataclass(frozen=True, slots=True)
class Labelled(Node):
    name: str
    seq: Seq
    side: bool = False    # 'branch name: ...' does not advance the main flow


@dataclass(frozen=True, slots=True)
class SeqStmt(Node):
    seq: Seq
