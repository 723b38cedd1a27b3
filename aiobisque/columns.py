"""Reading a BisQue table (a PyTables ``Table``) column by column, with exact types.

BisQue's table service answers a table in ways that lose information unless it is asked
carefully (see the protocol notes): ``format:hdf`` of several columns goes through
``DataFrame.values`` (ints become floats beside floats, and any text column fails with
500), and a row range alone answers no columns at all. So each column is asked on its own:

* numeric and bool columns as ``{rows},{k}/format:hdf``: a 2-D ``(rows, 1)`` array of the
  column's own type, downloaded through the one read path
  (:meth:`RemoteArray.fill <aiobisque.RemoteArray.fill>`: chunked by rows, concurrent
  under the session's limiter, retried, checked);
* text columns (PyTables ``string``) as ``{rows},{k}/format:json``, chunked by rows, every
  answer checked for its column, first row and length.

The columns are then put together in a numpy structured array: ints stay ints, bools
bools, text becomes ``str``. Rows follow numpy basic indexing (negative, steps; an int
selects one record).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from aiobisque.config import Config
from aiobisque.download import run_all
from aiobisque.errors import (
    BisqueError,
    ProtocolError,
    ResponseTooLargeError,
    SelectionError,
    ServerError,
    UnsupportedError,
    UsageError,
)
from aiobisque.plan import format_range
from aiobisque.progress import DownloadStats, Meter, ProgressCallback
from aiobisque.protocol import NESTED_COLUMN, TEXT_COLUMN, ArrayInfo, split_path, table_url
from aiobisque.retry import for_text_exports
from aiobisque.selection import DimSelection, Selection, normalize_selection

if TYPE_CHECKING:
    from aiobisque.table import TableService

__all__ = ["as_dataframe", "read_table", "select_columns"]

#: the least an answer of text cells may hold (more for larger ``request_bytes``)
_MIN_TEXT_ANSWER = 16 << 20
#: JSON text is several times the size of the values it carries: rows per text request
#: are sized from ``request_bytes`` with this many bytes per cell
_JSON_CELL_BYTES = 64


def select_columns(info: ArrayInfo, columns: str | Sequence[str] | None) -> list[str]:
    """The column names to read, in order; a clear error for names the table lacks."""
    known = list(info.headers)
    if columns is None:
        wanted = known
    elif isinstance(columns, str):
        wanted = [columns]
    else:
        wanted = list(columns)
    where = f"{info.uniq}/{info.path}"
    for name in wanted:
        if not isinstance(name, str):
            raise SelectionError(f"columns are named by strings, got {name!r}")
        if name not in known:
            raise SelectionError(f"{where} has no column {name!r} (columns: {', '.join(known)})")
    repeated = sorted({n for n in wanted if wanted.count(n) > 1})
    if repeated:
        raise SelectionError(f"columns {repeated} are asked for more than once")
    if not wanted:
        raise SelectionError("columns=[] selects nothing: name at least one column")
    nested = [n for n in wanted if info.columns[n] == NESTED_COLUMN]
    if nested:
        raise UnsupportedError(
            f"{where}: columns {nested} are nested compound columns, which BisQue's table "
            "service cannot serve; leave them out with columns=[...]")
    assert info.dtype is not None
    odd = [f"{n} ({info.columns[n]})" for n in wanted
           if info.columns[n] != TEXT_COLUMN and info.dtype[n].kind == "O"]
    if odd:
        raise UnsupportedError(
            f"{where}: columns {', '.join(odd)} have PyTables types aiobisque cannot map to "
            "a numpy type; leave them out with columns=[...] (--columns A,B on the command "
            "line)")
    return wanted


def _rows(info: ArrayInfo, rows: Any) -> DimSelection:
    if isinstance(rows, DimSelection):  # already normalised (a block of a file download)
        return rows
    if rows is not None and not isinstance(rows, int | slice):
        raise SelectionError(
            f"rows must be an int, a slice or None (numpy basic indexing), got {rows!r}")
    assert info.shape is not None
    sel = normalize_selection(slice(None) if rows is None else rows, info.shape)
    return sel.dims[0]


async def read_table(
    table: TableService,
    info: ArrayInfo,
    rows: int | slice | DimSelection | None,
    columns: str | Sequence[str] | None,
    *,
    config: Config,
    progress: ProgressCallback | None = None,
    stats: DownloadStats | None = None,
) -> np.ndarray[Any, Any]:
    """The selected rows and columns of a table as a structured array (see the module)."""
    names = select_columns(info, columns)
    dim = _rows(info, rows)
    stats = stats if stats is not None else DownloadStats()
    stats.complete = False
    meter = Meter((lambda m: progress(m.snapshot())) if progress else None)
    loop = asyncio.get_running_loop()
    started = loop.time()
    values: dict[str, np.ndarray[Any, Any]] = {}

    async def one(name: str) -> None:
        part = DownloadStats()
        try:
            if info.columns[name] == TEXT_COLUMN:
                values[name] = await _text_column(table, info, name, dim, config, meter, part)
            else:
                values[name] = await _numeric_column(table, info, name, dim, config, meter,
                                                     part)
        finally:
            stats.add(part)

    try:
        await run_all([lambda n=name: one(n) for name in names])  # type: ignore[misc]
    finally:
        stats.seconds = loop.time() - started
    fields = [(n, values[n].dtype) for n in names]
    result = np.empty(dim.count, dtype=fields)
    for name in names:
        result[name] = values[name]
    stats.out_bytes = result.nbytes
    stats.complete = True
    return result[0] if dim.drop else result


async def _numeric_column(
    table: TableService, info: ArrayInfo, name: str, dim: DimSelection, config: Config,
    meter: Meter, stats: DownloadStats,
) -> np.ndarray[Any, Any]:
    """A numeric column through ``format:hdf``: the table seen as a (rows, columns) matrix
    of this column's type, of which one column is read."""
    from aiobisque.table import RemoteArray

    assert info.shape is not None and info.dtype is not None
    k = info.headers.index(name)
    dtype = info.dtype[name]
    view = ArrayInfo(info.uniq, info.path, "matrix", (info.shape[0], len(info.headers)), dtype)
    rows = DimSelection(dim.first, dim.step, dim.count)  # kept as a dimension here
    sel = Selection((rows, DimSelection(k, 1, 1)), (0, 1))
    dest = np.empty(sel.shape, dtype=dtype)
    meter.add(math.prod(sel.shape) * dtype.itemsize, 0)
    if dest.size:
        try:
            await RemoteArray(table, view).fill(
                sel, dest, config=config, progress=lambda p: meter.partial(name, p),
                stats=stats)
        except BisqueError as exc:
            exc.add_note(f"reading column {name!r} ({info.columns[name]}) of {info.uniq}/"
                         f"{info.path}")
            raise
    meter.block_done(name, dest.nbytes, stats.requests, stats.retries)
    return dest[:, 0]


async def _text_column(
    table: TableService, info: ArrayInfo, name: str, dim: DimSelection, config: Config,
    meter: Meter, stats: DownloadStats,
) -> np.ndarray[Any, Any]:
    """A text column through ``format:json``, chunked by rows (text has no fixed width)."""
    k = info.headers.index(name)
    parts = split_path(info.path)
    where = f"{info.uniq}/{info.path}"
    if dim.count == 0:
        return np.empty(0, dtype="U1")
    lo, hi = dim.lo, dim.lo + (dim.count - 1) * dim.stride
    per_request = max(1, config.request_bytes // _JSON_CELL_BYTES)
    chunks = [(a, min(hi, a + per_request - 1)) for a in range(lo, hi + 1, per_request)]
    cells: list[list[str]] = [[] for _ in chunks]
    meter.add(hi - lo + 1, len(chunks))
    pending = iter(range(len(chunks)))
    limit = max(_MIN_TEXT_ANSWER, 8 * config.request_bytes)

    text_config = config.replace(retry=for_text_exports(config.retry))

    async def rows_between(a: int, b: int) -> list[str]:
        range_text = format_range([(a, b), (k, k)])
        url = table_url(table.base_url, info.uniq, parts, range_text, ["format:json"])
        what = f"{where} column {name!r} rows {a};{b}"
        try:
            body = await table.session.get_document(url, what, text_config, limit=limit,
                                                    stats=stats)
        except ResponseTooLargeError:
            if a == b:
                raise
            middle = (a + b) // 2  # wide cells: ask for fewer rows at a time
            return await rows_between(a, middle) + await rows_between(middle + 1, b)
        except ServerError as exc:
            if exc.status != 500:
                raise
            raise UnsupportedError(
                f"{what}: the server cannot export this column ({exc.message}); BisQue 0.6 "
                "servers cannot serve text cells, and multi-dimensional columns fail too: "
                "read the other columns with columns=[...]", url=exc.url,
                status=exc.status) from exc
        return _column_cells(body, name, a, b - a + 1, what)

    async def fetch(i: int) -> None:
        a, b = chunks[i]
        cells[i] = await rows_between(a, b)
        meter.block_done((name, i), b - a + 1, 1, 0)

    async def worker() -> None:
        for i in pending:
            await fetch(i)

    await run_all([worker for _ in range(min(config.concurrency, len(chunks)))])
    flat = [c for chunk in cells for c in chunk]
    picked = flat[:: dim.stride]
    if dim.step < 0:
        picked.reverse()
    width = max((len(c) for c in picked), default=1) or 1
    return np.array(picked, dtype=f"U{width}")


def _column_cells(body: bytes | bytearray, name: str, first: int, count: int,
                  what: str) -> list[str]:
    """The text cells of one JSON answer, checked against what was asked."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise ProtocolError(f"{what}: the answer is not JSON") from None
    columns = doc if isinstance(doc, list) else None
    found = next((c for c in columns or [] if isinstance(c, dict) and c.get("header") == name),
                 None)
    if found is None:
        raise ProtocolError(f"{what}: the answer holds no column {name!r}")
    data = found.get("data")
    if not isinstance(data, list) or found.get("offset") != first or len(data) != count:
        raise ProtocolError(
            f"{what}: expected {count} cells from row {first}, the answer has "
            f"{len(data) if isinstance(data, list) else 'no'} from row {found.get('offset')!r}")
    cells: list[str] = []
    for cell in data:
        if cell is None:
            cells.append("")
        elif isinstance(cell, str):
            cells.append(cell)
        else:
            raise ProtocolError(f"{what}: a text cell holds {type(cell).__name__} {cell!r}")
    return cells


def as_dataframe(records: np.ndarray[Any, Any]) -> Any:
    """A pandas DataFrame of a table read by :func:`read_table`."""
    try:
        import pandas as pd
    except ImportError:
        raise UsageError("as_dataframe=True needs pandas: pip install 'aiobisque[pandas]'") \
            from None
    if records.ndim == 0:
        records = records.reshape(1)
    return pd.DataFrame.from_records(records)
