"""What a range, projection, filter or aggregation selects from one HDF5 node, as BisQue does.

BisQue's table service opens the file with PyTables and sees each node as a *matrix*
(``Array``), a *table* (``Table``: a 1-D compound dataset), a *group*, or ``(unknown)``
(anything else, e.g. variable-length strings). A query op turns it into a :class:`Result`:
an array (matrices) or a :class:`Frame` (a pandas-like table), with the ``headers``,
``types``, ``sizes`` and ``offset`` the exporters print. The rules here follow BisQue's
``table_base.py`` (``run_query`` and the ``ArrayLike``/``TableLike`` selection code); the
notes in ``bisque-protocol.md`` section 4 list the visible consequences:

- on a matrix, dimensions without a selector are pinned to index 0 (not the whole
  dimension), entries beyond the rank are ignored, and ranges are clipped (``999;1000`` and
  reversed ranges select nothing) rather than refused;
- on a table, only the first entry selects rows, the second selects columns: a row range
  alone selects no columns;
- a filter keeps the matching rows of a table, and replaces the non-matching cells of a
  matrix by NaN;
- aggregations (``mean``, ``min``... ignoring NaN) answer one float64 row.

Errors a real server answers 500 (an internal exception) raise :class:`Internal`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

from aiobisque.server.query import CellSelection, Condition, Filter, Logical, Selector

__all__ = [
    "Frame",
    "Internal",
    "QueryError",
    "Result",
    "TooLarge",
    "node_kind",
    "node_result",
    "run_query",
]

_AGG: dict[str, Callable[..., Any]] = {
    "mean": np.nanmean,
    "min": np.nanmin,
    "max": np.nanmax,
    "median": np.nanmedian,
    "std": np.nanstd,
    "var": np.nanvar,
}
_DIM = re.compile(r"__dim([0-9]+)__")
_PYTABLES_OP = {"=": "eq", "!=": "ne", "<": "lt", "<=": "le", ">": "gt", ">=": "ge"}
_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "=": lambda x, y: x == y,
    "!=": lambda x, y: x != y,
    "<": lambda x, y: x < y,
    "<=": lambda x, y: x <= y,
    ">": lambda x, y: x > y,
    ">=": lambda x, y: x >= y,
}


class Internal(Exception):
    """What a real server fails on with an internal error (answered 500)."""


class QueryError(Exception):
    """What BisQue reports as ``Error in query: ...`` (400), e.g. an unknown column name."""


class TooLarge(Exception):
    """A selection beyond this server's memory bounds (answered 413)."""


@dataclass
class Frame:
    """A table result: named columns of equal length, typed as PyTables types."""

    names: list[str]
    columns: list[np.ndarray[Any, Any]]
    nrows: int

    def values(self) -> np.ndarray[Any, Any]:
        """The 2-D matrix pandas' ``DataFrame.values`` gives: one common type, or object."""
        if not self.columns:
            return np.empty((self.nrows, 0), dtype=np.float64)
        dtypes = [c.dtype for c in self.columns]
        if all(d.kind == "b" for d in dtypes):
            common: np.dtype[Any] = np.dtype(bool)
        elif all(d.kind in "iufc" for d in dtypes):
            common = np.result_type(*dtypes)
        else:
            common = np.dtype(object)
        out = np.empty((self.nrows, len(self.columns)), dtype=common)
        for i, column in enumerate(self.columns):
            out[:, i] = column if common.kind != "O" else _cells(column)
        return out


def _cells(column: np.ndarray[Any, Any]) -> list[Any]:
    """Column cells as Python values, byte strings as text."""
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in column.tolist()]


@dataclass
class Result:
    """What the exporters print. ``array``/``frame`` are ``None`` until an op selected data."""

    kind: str  # "matrix", "table", "group" or "(unknown)" (of the node)
    headers: list[str]
    types: list[str]
    sizes: list[int]
    tables: list[dict[str, str]]
    meta: dict[str, Any]
    node: h5py.Dataset | None = None
    array: np.ndarray[Any, Any] | None = None
    frame: Frame | None = None
    offset: int = 0
    columns: list[str] = field(default_factory=list)  # a node table's column names

    @property
    def is_frame(self) -> bool:
        """True when the exporters see a DataFrame (tables, groups, aggregations)."""
        return self.frame is not None or self.kind in ("table", "group", "(unknown)")


# -- nodes -----------------------------------------------------------------------------


def node_kind(node: Any) -> str:
    """BisQue's type of a node: ``group``, ``matrix``, ``table`` or ``(unknown)``."""
    if isinstance(node, h5py.Group):
        return "group"
    if not isinstance(node, h5py.Dataset):
        return "(unknown)"
    dtype = node.dtype
    if dtype.names:
        return "table" if node.ndim == 1 else "(unknown)"
    if dtype.kind in "OV" or h5py.check_vlen_dtype(dtype) is not None:
        return "(unknown)"
    if node.shape is None:  # a null dataspace
        return "(unknown)"
    return "matrix"


def column_type(dtype: np.dtype[Any]) -> str:
    """A compound field's PyTables column type (``string``, ``int32``... ``(compound)``).

    h5py stores booleans as an HDF5 enum, which PyTables calls ``enum``.
    """
    if dtype.names:
        return "(compound)"
    if dtype.kind == "S":
        return "string"
    if dtype.kind == "b":
        return "enum"
    return str(dtype.base.name)


def bitfield_bools(node: Any) -> tuple[bool, frozenset[str]]:
    """Whether a dataset (or which of its fields) holds PyTables booleans.

    PyTables stores ``bool`` as an 8-bit HDF5 bitfield, which h5py reads as ``uint8``;
    BisQue reads files with PyTables, so it answers ``bool`` for them (``bqapi``'s
    ``store_array`` and uploads write booleans that way).
    """
    if not isinstance(node, h5py.Dataset):
        return False, frozenset()
    kind = node.id.get_type()

    def is_bool(t: Any) -> bool:
        return bool(t.get_class() == h5py.h5t.BITFIELD and t.get_size() == 1)

    if is_bool(kind):
        return True, frozenset()
    if kind.get_class() == h5py.h5t.COMPOUND:
        return False, frozenset(
            kind.get_member_name(i).decode("utf-8", "replace")
            for i in range(kind.get_nmembers()) if is_bool(kind.get_member_type(i)))
    return False, frozenset()


def node_result(
    node: Any, path: str, listing: list[dict[str, str]], meta: dict[str, Any]
) -> Result:
    """The node as BisQue describes it before any op (what ``info`` prints)."""
    kind = node_kind(node)
    if kind == "matrix":
        shape = list(node.shape)
        name = "bool" if bitfield_bools(node)[0] else as_read(node.dtype).name
        if len(shape) > 1:
            headers = [str(i) for i in range(shape[1])]
        elif len(shape) == 1:
            headers = ["0"]
        else:
            headers = [""]
        return Result(kind, headers, [name] * len(headers), shape, listing, meta, node=node)
    if kind == "table":
        names = list(node.dtype.names)
        bools = bitfield_bools(node)[1]
        types = ["bool" if n in bools else column_type(node.dtype[n]) for n in names]
        return Result(
            kind, names, types, [node.shape[0], len(names)], listing, meta, node=node,
            columns=names,
        )  # fmt: skip
    # groups and unknown nodes: an empty DataFrame, no sizes
    empty = Frame([], [], 0)
    return Result(kind, [], [], [], listing, meta, frame=empty)


def as_read(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """The dtype PyTables reads a dataset of ``dtype`` as: native byte order, and h5py's
    booleans (an HDF5 enum of int8) as ``int8``."""
    if dtype.names:
        return np.dtype([(n, as_read(dtype[n])) for n in dtype.names])
    if dtype.kind == "b":
        return np.dtype(np.int8)
    return dtype.newbyteorder("=")


def native(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """``array`` as PyTables reads it (see :func:`as_read`)."""
    return array.astype(as_read(array.dtype), copy=False)


# -- selections ------------------------------------------------------------------------


def _dim_of(name: str, table: bool) -> int | None:
    if name in ("row", "__dim1__"):
        return 0
    if name in ("field", "__dim2__"):
        return 1
    if table:
        return None
    match = _DIM.fullmatch(name)
    return int(match.group(1)) - 1 if match else None


def _selectors_to_slices(
    selectors: tuple[Selector, ...], sizes: list[int], table: bool
) -> list[slice]:
    res = [slice(0, n) for n in sizes]
    for sel in selectors:
        dim = _dim_of(sel.dim, table)
        if dim is None or not 0 <= dim < len(sizes):
            continue
        if table and dim == 1:
            continue  # a PyTables table's columns are chosen by name, not sliced
        values = sel.values
        if any(isinstance(v, str) for v in values):
            raise Internal(f"column names {list(values)!r} used to slice a matrix")
        if len(values) > 1:
            start = values[0] or res[dim].start
            stop = values[1] or res[dim].stop
        elif values[0] is not None:
            start, stop = values[0], values[0] + 1
        else:
            start, stop = res[dim].start, res[dim].stop
        res[dim] = slice(max(start, res[dim].start), min(stop, res[dim].stop))
    return res


def _or_slices(a: list[slice], b: list[slice]) -> list[slice]:
    return [slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b, strict=True)]


def _and_slices(a: list[slice], b: list[slice]) -> list[slice]:
    out = []
    for dim, (x, y) in enumerate(zip(a, b, strict=True)):
        if dim == 1:
            out.append(slice(min(x.start, y.start), max(x.stop, y.stop)))
        else:
            out.append(slice(max(x.start, y.start), min(x.stop, y.stop)))
    return out


def _cond_slices(cond: Filter, sizes: list[int], table: bool) -> list[slice]:
    if isinstance(cond, Logical):
        return _or_slices(
            _cond_slices(cond.left, sizes, table), _cond_slices(cond.right, sizes, table)
        )
    return _selectors_to_slices(cond.left.selectors, sizes, table)


def _slices(
    sels: list[CellSelection] | None, cond: Filter | None, sizes: list[int], table: bool
) -> list[slice]:
    slices: list[slice] | None = None
    for sel in sels or ():
        add = _selectors_to_slices(sel.selectors, sizes, table)
        slices = add if slices is None else _or_slices(slices, add)
    if cond is not None:
        add = _cond_slices(cond, sizes, table)
        slices = add if slices is None else _or_slices(slices, add)
    assert slices is not None
    return slices


def _length(s: slice) -> int:
    return max(0, int(s.stop) - int(s.start))


def _columns(selectors: tuple[Selector, ...], headers: list[str]) -> list[str]:
    """The columns a cell selection names (its ``field``/second entry), in order."""
    res: list[str] = []

    def colnum(value: Any) -> int | None:
        if value is None or isinstance(value, int):
            return value
        if value not in headers:
            raise QueryError(f"column {value} not found")
        return headers.index(value)

    def header(ix: int) -> str:
        if not 0 <= ix < len(headers):
            raise Internal(f"column index {ix} out of range")
        return headers[ix]

    for sel in selectors:
        if _dim_of(sel.dim, True) != 1:
            continue
        values = sel.values
        if all(v is None for v in values):
            names = list(headers)
        elif len(values) == 1:
            value = values[0]
            names = [header(value) if isinstance(value, int) else value]
        else:
            start = colnum(values[0]) or 0
            stop = colnum(values[1]) or len(headers)
            names = [header(ix) for ix in range(start, stop)]
        res.extend(n for n in names if n not in res)
    return res


# -- running a query -------------------------------------------------------------------


def run_query(
    result: Result,
    sels: list[CellSelection] | None,
    cond: Filter | None,
    limit: Callable[[int], None],
) -> Result:
    """Apply one filter or agg op to ``result`` (a node or an earlier op's result).

    ``limit(nbytes)`` is called with the size of the data about to be read; it raises
    :class:`TooLarge` to refuse it.
    """
    if sels is None and cond is None:
        return result
    if result.is_frame:
        return _table_query(result, sels, cond, limit)
    return _array_query(result, sels, cond, limit)


def _pin_dims(sels: list[CellSelection], rank: int) -> list[CellSelection]:
    """Pin the dimensions a selection leaves out to index 0 (BisQue's ``keep_dims=2``)."""
    out = []
    for sel in sels:
        named = {s.dim for s in sel.selectors}
        extra = tuple(
            Selector(f"__dim{d}__", (0,)) for d in range(2, rank + 1) if f"__dim{d}__" not in named
        )
        out.append(CellSelection(sel.selectors + extra, sel.agg, sel.alias))
    return out


def _read_array(result: Result, slices: list[slice], limit: Callable[[int], None]) -> Any:
    shape = tuple(_length(s) for s in slices)
    source = result.array if result.array is not None else result.node
    assert source is not None
    limit(math.prod(shape) * source.dtype.itemsize)
    if source.ndim == 0:
        raise Internal("a scalar cannot be sliced")
    as_bool = bitfield_bools(source)[0]
    if 0 in shape:
        return np.empty(shape, dtype=bool if as_bool else as_read(source.dtype))
    array = native(np.asarray(source[tuple(slices)]))
    return array.view(np.bool_) if as_bool else array


def _array_query(
    result: Result,
    sels: list[CellSelection] | None,
    cond: Filter | None,
    limit: Callable[[int], None],
) -> Result:
    sizes = result.sizes
    if sels is not None:
        sels = _pin_dims(sels, len(sizes))
    slices = _slices(sels, cond, sizes, table=False)
    data = _read_array(result, slices, limit)
    if cond is not None:
        keep = _array_filter(data, slices, cond, sizes)
        data = np.where(keep, data, np.full(data.shape, np.nan))
    row_type = result.types[0] if result.types else data.dtype.name
    if sels is not None and sels[0].agg is not None:
        names, values = [], []
        for ix, sel in enumerate(sels):
            names.append(sel.alias or f"agg{ix}")
            values.append(np.asarray([_aggregate(sel.agg, [data])], dtype=np.float64))
        frame = Frame(names, values, 1)
        return Result(
            "table", names, ["float64"] * len(names), [1, len(names)], result.tables,
            result.meta, frame=frame,
        )  # fmt: skip
    if len(slices) > 1:
        all_names = result.headers
        headers = [all_names[i] for i in range(slices[1].start, slices[1].stop)]
    else:
        headers = ["0"]
    types = [row_type] * (data.shape[1] if data.ndim > 1 else 1)
    return Result(
        "matrix", headers, types, list(data.shape), result.tables, result.meta,
        array=data, offset=slices[0].start if slices else 0,
    )  # fmt: skip


def _array_filter(
    data: np.ndarray[Any, Any], outer: list[slice], cond: Filter, sizes: list[int]
) -> np.ndarray[Any, Any]:
    if isinstance(cond, Logical):
        left = _array_filter(data, outer, cond.left, sizes)
        right = _array_filter(data, outer, cond.right, sizes)
        return np.asarray(left | right if cond.op == "or" else left & right)
    inner = _selectors_to_slices(cond.left.selectors, sizes, table=False)
    # cells outside the condition's own selection always pass
    mask = np.ones(data.shape, dtype=bool)
    both = _and_slices(outer, inner)
    mask[
        tuple(slice(b.start - o.start, b.stop - o.start) for b, o in zip(both, outer, strict=True))
    ] = False
    return np.asarray(_COMPARE[cond.comp](data, _number(cond.right)) | mask)


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise Internal(f"cannot compare with {value!r}") from None


def _aggregate(name: str | None, values: list[Any]) -> float:
    try:
        return float(_AGG[name or ""](np.asarray(values, dtype=np.float64)))
    except (TypeError, ValueError, KeyError) as exc:
        raise Internal(f"cannot aggregate: {exc}") from None


def _table_rows(result: Result, rows: slice, limit: Callable[[int], None]) -> Frame:
    """Rows ``rows`` of a node table or an earlier frame, as a :class:`Frame`."""
    if result.frame is not None:
        frame = result.frame
        return Frame(list(frame.names), [c[rows] for c in frame.columns], _length(rows))
    node = result.node
    if node is None:  # a group or unknown node: an empty frame
        return Frame([], [], 0)
    limit(_length(rows) * node.dtype.itemsize)
    data = native(np.asarray(node[rows.start : max(rows.start, rows.stop)]))
    names = list(node.dtype.names or ())
    bools = bitfield_bools(node)[1]
    columns = [np.asarray(data[n]).astype(bool) if n in bools else np.asarray(data[n])
               for n in names]
    return Frame(names, columns, len(data))


def _table_filter(frame: Frame, cond: Filter, on_node: bool) -> np.ndarray[Any, Any] | None:
    """Which rows pass ``cond`` (``None``: the condition names no column, so all pass).

    ``on_node``: the rows come from a PyTables table (BisQue compiles the condition for
    PyTables), not from an earlier op's DataFrame (BisQue compares with pandas).
    """
    if isinstance(cond, Logical):
        left = _table_filter(frame, cond.left, on_node)
        right = _table_filter(frame, cond.right, on_node)
        if left is None or right is None:
            return left if left is not None else right
        return np.asarray(left | right if cond.op == "or" else left & right)
    assert isinstance(cond, Condition)
    names = _columns(cond.left.selectors, frame.names)
    if not names:
        return None
    keep = np.zeros(frame.nrows, dtype=bool)
    value = _number(cond.right)
    for name in names:
        if name not in frame.names:
            raise Internal(f"no column {name!r}")
        column = frame.columns[frame.names.index(name)]
        if column.dtype.kind not in "iuf":
            if on_node and column.dtype.kind == "S":
                # PyTables' condition compiler refuses it, an error BisQue reports as 400
                op = _PYTABLES_OP[cond.comp]
                raise QueryError(f"unsupported operand types for *{op}*: str, double")
            raise Internal(f"column {name!r} cannot be compared with a number")
        keep |= np.asarray(_COMPARE[cond.comp](column, value))
    return keep


def _table_query(
    result: Result,
    sels: list[CellSelection] | None,
    cond: Filter | None,
    limit: Callable[[int], None],
) -> Result:
    sizes = result.sizes or [0, 0]
    slices = _slices(sels, cond, sizes, table=True)
    rows = slices[0] if slices else slice(0, 0)
    frame = _table_rows(result, rows, limit)
    if cond is not None:
        keep = _table_filter(frame, cond, on_node=result.frame is None)
        if keep is not None:
            frame = Frame(frame.names, [c[keep] for c in frame.columns], int(keep.sum()))
    all_types = dict(zip(result.headers, result.types, strict=False))
    agg = sels is not None and sels[0].agg is not None
    if sels is None:
        names, columns = frame.names, frame.columns
        types = list(result.types)
    else:
        names, columns, types = [], [], []
        for ix, sel in enumerate(sels):
            for col in _columns(sel.selectors, result.headers):
                if col not in frame.names:
                    raise QueryError(f"column {col} not found")
                alias = sel.alias or col
                if alias in names:
                    alias = f"{alias}_{ix}"
                names.append(alias)
                column = frame.columns[frame.names.index(col)]
                if agg:
                    column = np.asarray([_aggregate(sel.agg, list(column))], dtype=np.float64)
                columns.append(column)
                types.append("float64" if agg else all_types.get(col, column.dtype.name))
    nrows = 1 if agg else frame.nrows
    offset = rows.start if not agg else 0
    if nrows == 0 or (not agg and sels is not None and not names and frame.nrows == 0):
        # BisQue builds an empty DataFrame: no columns, but the types it meant to have
        return Result(
            "table", [], types, [0, 0], result.tables, result.meta,
            frame=Frame([], [], 0), offset=offset,
        )  # fmt: skip
    out = Frame(names, columns, nrows)
    return Result(
        "table", list(names), types, [nrows, len(names)], result.tables, result.meta,
        frame=out, offset=offset,
    )  # fmt: skip


def whole_node(result: Result, limit: Callable[[int], None]) -> Any:
    """All of a node nothing was selected from, as BisQue's XML and CSV exporters see it.

    BisQue hands those exporters the PyTables node itself; they index it row by row, so
    they work where the binary and JSON exporters fail.
    """
    node = result.node
    assert node is not None
    limit(node.size * node.dtype.itemsize)
    return native(np.asarray(node[()]))
