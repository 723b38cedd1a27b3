"""BisQue's table query language: ranges, column projections, filters and aggregations.

Whatever follows the HDF path in a table-service URL (except the ``info`` and ``format:``
ops) is parsed by this language, so the embedded server answers exactly the 400s a real
server does: a mistyped node name is not a 404 but ``Unexpected symbol: 'name'``.

The grammar (BisQue's ``table_base.py``; tokens as its lexer defines them)::

    query      := slice_cond [ "{" filter "}" ] | "{" filter "}"
    slice_cond := cell_sel | "[" cell_sel "]" ( "," "[" cell_sel "]" )*
    cell_sel   := dim_sel ( "," dim_sel )*
    dim_sel    := [ STR "=" ] range
    range      := ":" | idx | idx ":" | ":" idx | idx ":" idx      (":" and ";" alike)
    idx        := INT | STR
    filter     := and ( OR and )*  ;  and := comp ( AND comp )*
    comp       := "(" filter ")" | "[" cell_sel "]" CMP value
    aggs       := ID "(" cell_sel ")" [ AS STR ] ( "," ... )*

A range's stop is inclusive on the wire; :class:`Selector` holds it already made exclusive
(``None`` for "to the end"). Errors raise :class:`ParseError` with BisQue's wording:
``Unexpected symbol: 'X'``, ``Unexpected end of query``, ``Illegal character 'X'``.

This module is a fresh recursive-descent implementation, not BisQue's ply tables; where
the two could report a different first error, the status (400) is the same.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = [
    "AGGREGATES",
    "CellSelection",
    "Condition",
    "Logical",
    "ParseError",
    "Selector",
    "parse_aggregates",
    "parse_filter",
]

AGGREGATES = ("mean", "min", "max", "median", "std", "var")
# Python refuses to turn longer digit strings into int (a DoS guard); BisQue then answers
# 500, we answer 400 (a malformed range is the client's fault)
_MAX_DIGITS = 4300

_FLOAT = r"((([0-9]*\.[0-9]+)|([0-9]+\.))([eE][-+]?[0-9]+)?)|([0-9]+[eE][-+]?[0-9]+)"
_TOKEN = re.compile(
    "|".join(
        [
            rf"(?P<FLOAT>{_FLOAT})",
            r"(?P<INT>0|[1-9][0-9]*)",
            r"""(?P<STR>'(?:\\'|[^'])*'|"(?:\\"|[^"])*")""",
            r"(?P<ID>[a-zA-Z_][0-9a-zA-Z_]*)",
            r"(?P<OP><=|>=|!=|[-+()\[\]{}<>=,:;])",
        ]
    )
)
_KEYWORDS = ("AND", "OR", "AS")
_OPS = {"<": "LT", "<=": "LE", ">": "GT", ">=": "GE", "=": "EQ", "!=": "NE"}


class ParseError(ValueError):
    """A query the language does not accept (answered 400 with this message)."""


@dataclass(frozen=True)
class _Token:
    type: str
    value: Any

    def shown(self) -> str:
        return str(self.value)


def tokenize(text: str) -> Iterator[_Token]:
    """The tokens of ``text`` (blanks ignored), made on demand as BisQue's lexer makes them.

    On demand matters for the first error reported: ``odd%20name`` fails on the symbol
    ``odd`` before the lexer ever sees the ``%``.
    """
    pos = 0
    while pos < len(text):
        if text[pos] in " \t\n":
            pos += 1
            continue
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ParseError(f"Illegal character '{text[pos]}'")
        kind, raw = match.lastgroup or "", match.group()
        pos = match.end()
        if kind == "FLOAT":
            yield _Token("FLOAT", float(raw))
        elif kind == "INT":
            if len(raw) > _MAX_DIGITS:
                raise ParseError(f"Index too large: {len(raw)} digits")
            yield _Token("INT", int(raw))
        elif kind == "STR":
            value = raw[1:-1].replace('\\"', '"').replace("\\'", "'")
            yield _Token("STR", value)
        elif kind == "ID":
            if raw.upper() in _KEYWORDS:
                yield _Token(raw.upper(), raw.upper())
            else:
                yield _Token("ID", raw.lower())
        elif raw in (":", ";"):
            yield _Token("COLON", raw)
        else:
            yield _Token(_OPS.get(raw, raw), raw)


@dataclass(frozen=True)
class Selector:
    """One dimension's selection: ``dim`` is ``__dim1__`` (first), ``__dim2__``... or a name.

    ``values`` is ``[None]`` (whole dimension), ``[i]`` (one index or column), or
    ``[start, stop]`` with an exclusive ``stop`` (``None``: from 0 / to the end).
    """

    dim: str
    values: tuple[Any, ...]


@dataclass(frozen=True)
class CellSelection:
    """A cell selection ``[...]``, maybe aggregated (``agg``) and renamed (``alias``)."""

    selectors: tuple[Selector, ...]
    agg: str | None = None
    alias: str | None = None


@dataclass(frozen=True)
class Condition:
    """``[cell_sel] comp value``."""

    left: CellSelection
    comp: str
    right: Any


@dataclass(frozen=True)
class Logical:
    """``left OR right`` / ``left AND right``."""

    op: str
    left: Condition | Logical
    right: Condition | Logical


Filter = Condition | Logical


class _Parser:
    def __init__(self, text: str, columns: list[str]) -> None:
        self._source = tokenize(text)
        self.tokens: list[_Token] = []
        self.pos = 0
        self.columns = columns

    # -- token helpers ---------------------------------------------------------------

    def peek(self, ahead: int = 0) -> _Token | None:
        index = self.pos + ahead
        while len(self.tokens) <= index:
            token = next(self._source, None)
            if token is None:
                return None
            self.tokens.append(token)
        return self.tokens[index]

    def at(self, *types: str) -> bool:
        token = self.peek()
        return token is not None and token.type in types

    def take(self, *types: str) -> _Token:
        token = self.peek()
        if token is None:
            raise ParseError("Unexpected end of query")
        if types and token.type not in types:
            raise ParseError(f"Unexpected symbol: '{token.shown()}'")
        self.pos += 1
        return token

    def done(self) -> None:
        token = self.peek()
        if token is not None:
            raise ParseError(f"Unexpected symbol: '{token.shown()}'")

    # -- grammar ---------------------------------------------------------------------

    def query(self) -> tuple[list[CellSelection] | None, Filter | None]:
        sels: list[CellSelection] | None = None
        if not self.at("{"):
            sels = self.slice_cond()
        cond = None
        if self.at("{"):
            self.take("{")
            cond = self.filter()
            self.take("}")
        self.done()
        return sels, cond

    def slice_cond(self) -> list[CellSelection]:
        if not self.at("["):
            return [CellSelection(self.cell_sel())]
        sels = []
        while True:
            self.take("[")
            sels.append(CellSelection(self.cell_sel()))
            self.take("]")
            if not self.at(","):
                return sels
            self.take(",")

    def _next_is(self, kind: str) -> bool:
        token = self.peek(1)
        return token is not None and token.type == kind

    def cell_sel(self) -> tuple[Selector, ...]:
        selectors: list[Selector] = []
        while True:
            name, values = self.dim_sel()
            dim = name or f"__dim{len(selectors) + 1}__"
            if dim not in ("__dim2__", "field") and any(isinstance(v, str) for v in values):
                raise ParseError(f"values {list(values)!r} not allowed for dimension '{dim}'")
            selectors.append(Selector(dim, values))
            if not self.at(","):
                return tuple(selectors)
            self.take(",")

    def dim_sel(self) -> tuple[str | None, tuple[Any, ...]]:
        name = None
        if self.at("STR") and self._next_is("EQ"):
            name = self.take("STR").value
            self.take("EQ")
        return name, self.range_sel()

    def range_sel(self) -> tuple[Any, ...]:
        if self.at("COLON"):
            self.take("COLON")
            if self.at("INT", "STR"):
                return (None, self.end(self.take().value))
            return (None,)
        start = self.take("INT", "STR").value
        if not self.at("COLON"):
            return (start,)
        self.take("COLON")
        if self.at("INT", "STR"):
            return (start, self.end(self.take().value))
        return (start, None)

    def end(self, stop: Any) -> Any:
        """An inclusive stop made exclusive (a column name becomes the next column's)."""
        if isinstance(stop, int):
            return stop + 1
        if stop not in self.columns:
            raise KeyError(f"column {stop!r} not found")  # BisQue: an internal error (500)
        index = self.columns.index(stop) + 1
        return self.columns[index] if index < len(self.columns) else None

    def filter(self) -> Filter:
        node = self.and_expr()
        while self.at("OR"):
            self.take("OR")
            node = Logical("or", node, self.and_expr())
        return node

    def and_expr(self) -> Filter:
        node = self.comp()
        while self.at("AND"):
            self.take("AND")
            node = Logical("and", node, self.comp())
        return node

    def comp(self) -> Filter:
        if self.at("("):
            self.take("(")
            node = self.filter()
            self.take(")")
            return node
        self.take("[")
        left = CellSelection(self.cell_sel())
        self.take("]")
        comp = self.take("EQ", "NE", "GT", "GE", "LT", "LE").value
        return Condition(left, comp, self.unary())

    def unary(self) -> Any:
        if self.at("-", "+"):
            sign = self.take().value
            value = self.unary()
            return value if sign == "+" or isinstance(value, str) else -value
        return self.take("INT", "FLOAT", "STR").value

    def aggregates(self) -> list[CellSelection]:
        sels = []
        while True:
            name = self.take("ID").value
            self.take("(")
            selectors = self.cell_sel()
            self.take(")")
            alias = None
            if self.at("AS"):
                self.take("AS")
                alias = self.take("STR").value
            if name not in AGGREGATES:
                raise ParseError(f"Unknown aggregation function: '{name}'")
            sels.append(CellSelection(selectors, name, alias))
            if not self.at(","):
                self.done()
                return sels
            self.take(",")


def parse_filter(text: str, columns: list[str]) -> tuple[list[CellSelection] | None, Filter | None]:
    """Parse a range/projection/filter component: ``(selections, condition)``."""
    return _Parser(text, columns).query()


def parse_aggregates(text: str, columns: list[str]) -> list[CellSelection]:
    """Parse the argument of ``agg:``."""
    return _Parser(text, columns).aggregates()
