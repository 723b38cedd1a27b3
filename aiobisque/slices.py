"""Numpy index syntax as text: ``"10:20, :, -1"`` becomes ``(slice(10, 20), slice(None), -1)``.

The command line takes selections the way people write them in numpy. The text is parsed
with :mod:`ast` and only a tiny grammar is accepted (integers, slices of integers, ``...``,
``None`` / ``np.newaxis``); nothing is ever evaluated, so no text can run code.

>>> parse_slices("10:20, :, -1")
(slice(10, 20, None), slice(None, None, None), -1)
>>> parse_slices("..., ::2, np.newaxis")
(Ellipsis, slice(None, None, 2), None)
>>> format_slices((slice(10, 20), Ellipsis, -1))
'10:20, ..., -1'
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from typing import Any

from aiobisque.errors import SelectionError

__all__ = ["format_slices", "parse_slices"]

#: Longer texts are refused before parsing (ast recursion and memory stay trivially small).
_MAX_TEXT = 4096
_NEWAXIS_NAMES = frozenset({"newaxis", "None"})
_NUMPY_NAMES = frozenset({"np", "numpy"})

Index = tuple[Any, ...]


def _bad(text: str, why: str) -> SelectionError:
    return SelectionError(
        f"cannot read the selection {text!r}: {why}; "
        "write numpy indexing such as '10:20, :, -1' or '..., ::2'"
    )


def _integer(node: ast.expr, text: str) -> int:
    """An integer literal, optionally signed (``-3``, ``+2``, ``1_000``)."""
    sign = 1
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        sign = -1 if isinstance(node.op, ast.USub) else 1
        node = node.operand
    if (
        isinstance(node, ast.Constant)
        and isinstance(node.value, int)
        and not isinstance(node.value, bool)
    ):
        return sign * node.value
    shown = ast.get_source_segment(f"_[{text}]", node) or type(node).__name__
    raise _bad(text, f"{shown!r} is not an integer")


def _item(node: ast.expr, text: str) -> Any:
    if isinstance(node, ast.Slice):
        # numpy accepts an explicit None in a slice (``None:3``, ``::None``) as "omitted"
        return slice(*(None if part is None or (isinstance(part, ast.Constant)
                                                and part.value is None)
                       else _integer(part, text)
                       for part in (node.lower, node.upper, node.step)))
    if isinstance(node, ast.Constant) and (node.value is Ellipsis or node.value is None):
        return node.value
    if isinstance(node, ast.Name) and node.id in _NEWAXIS_NAMES:
        return None
    if isinstance(node, ast.Name) and node.id == "Ellipsis":
        return Ellipsis
    if (
        isinstance(node, ast.Attribute)
        and node.attr == "newaxis"
        and isinstance(node.value, ast.Name)
        and node.value.id in _NUMPY_NAMES
    ):
        return None
    if isinstance(node, ast.List | ast.Tuple | ast.Set):
        raise _bad(text, "lists and arrays of indices (advanced indexing) are not supported")
    return _integer(node, text)


def parse_slices(text: str) -> Index:
    """The index tuple written as numpy text; an empty text selects everything (``...``).

    Accepts integers (negative too), ``start:stop:step`` slices with any part omitted,
    ``...``, and ``None`` / ``np.newaxis`` / ``newaxis``, separated by commas. Raises :class:`~aiobisque.SelectionError` naming
    what could not be read.
    """
    if not isinstance(text, str):
        raise SelectionError(f"a selection must be text, not {type(text).__name__}")
    body = text.strip()
    if len(body) > _MAX_TEXT:
        raise _bad(text[:40] + "...", f"longer than {_MAX_TEXT} characters")
    if "\n" in body or "\r" in body:
        raise _bad(text, "it spans several lines")
    if not body:
        return (Ellipsis,)
    source = f"_[{body}]"
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError:
        raise _bad(text, "it is not valid index syntax") from None
    node = tree.body
    # the whole text must be the inside of our one subscript: "0] + x[1" or "0]#" are refused
    if not (
        isinstance(node, ast.Subscript)
        and isinstance(node.value, ast.Name)
        and node.value.id == "_"
        and node.lineno == node.end_lineno == 1
        and node.col_offset == 0
        and node.end_col_offset == len(source.encode())
    ):
        raise _bad(text, "it is not a single index expression")
    inner = node.slice
    items = inner.elts if isinstance(inner, ast.Tuple) else [inner]
    for item in items:
        if isinstance(item, ast.Tuple):
            raise _bad(text, "nested tuples are not supported")
    return tuple(_item(item, body) for item in items)


def _format_item(item: Any) -> str:
    if item is Ellipsis:
        return "..."
    if item is None:
        return "None"
    if isinstance(item, slice):
        start = "" if item.start is None else str(item.start)
        stop = "" if item.stop is None else str(item.stop)
        return f"{start}:{stop}" + ("" if item.step is None else f":{item.step}")
    return str(int(item))


def format_slices(index: Any) -> str:
    """Numpy text for an index: the inverse of :func:`parse_slices` (``...`` for everything)."""
    if not isinstance(index, tuple):
        index = (index,)
    items: Sequence[Any] = index
    return ", ".join(_format_item(i) for i in items) if items else "..."
