"""The table service: ``info``, ``load_array`` and lazily-read :class:`RemoteArray` objects."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from aiobisque.config import Config
from aiobisque.download import Ledger, run_plan
from aiobisque.errors import IncompleteDownloadError, UsageError
from aiobisque.plan import Plan, Request, make_plan
from aiobisque.progress import DownloadStats, ProgressCallback
from aiobisque.protocol import (
    ArrayInfo,
    not_an_array,
    parse_info,
    parse_uniq,
    split_path,
    table_url,
)
from aiobisque.selection import Selection, bqapi_selection, normalize_selection

if TYPE_CHECKING:
    from aiobisque.session import BisqueSession

__all__ = ["RemoteArray", "TableService"]


class TableService:
    """BisQue's table service on one session (``bq.service("table")`` or ``bq.table``)."""

    # ``self, /`` in the public methods: the sync facade and the session's shortcuts are
    # typed from these signatures (ParamSpec), which needs ``self`` positional-only

    def __init__(self, session: BisqueSession, base_url: str):
        self.session = session
        self.base_url = base_url

    def __repr__(self) -> str:
        return f"<TableService of {self.session!r}>"

    async def info(
        self, /, uniq: str, path: str | Sequence[str] = "", **options: Any
    ) -> ArrayInfo:
        """Metadata of a node: shape, dtype, kind, headers, types, meta, children."""
        cfg = self.session.config.for_call(**options)
        uniq = parse_uniq(uniq)
        parts = split_path(path)
        url = table_url(self.base_url, uniq, parts, None, ["info", "format:json"])
        shown = "/".join(parts)
        body = await self.session.get_document(url, f"info of {uniq}/{shown}", cfg)
        return parse_info(bytes(body), uniq=uniq, path=shown, url=url, max_bytes=cfg.max_bytes)

    async def open(
        self, /, uniq: str, path: str | Sequence[str] = "", **options: Any
    ) -> RemoteArray:
        """A :class:`RemoteArray` for an array node (one ``info`` request, no data yet)."""
        info = await self.info(uniq, path, **options)
        if info.kind == "group":
            raise not_an_array(info)
        return RemoteArray(self, info)

    async def load_array(
        self, /,
        uniq: str,
        path: str | Sequence[str],
        slices: Sequence[slice | int] | None = None,
        *,
        out: np.ndarray[Any, Any] | None = None,
        progress: ProgressCallback | None = None,
        stats: DownloadStats | None = None,
        **options: Any,
    ) -> np.ndarray[Any, Any]:
        """Download an array or part of it, with ``bqapi``'s argument and result shapes.

        ``slices`` is a list with one entry per leading dimension: a ``slice`` selects a
        range, an ``int`` keeps a length-1 dimension, missing dimensions are whole. Negative
        indices and steps work too (``bqapi`` rejects them or silently drops steps).
        """
        arr = await self.open(uniq, path, **options)
        sel = bqapi_selection(slices, arr.shape)
        return await arr._read(sel, out=out, progress=progress, stats=stats, options=options)


class RemoteArray:
    """An array on the server, read with numpy indexing: ``await arr.read(np.s_[..., -1])``."""

    def __init__(self, table: TableService, info: ArrayInfo):
        assert info.shape is not None and info.dtype is not None
        self.table = table
        self.info = info
        self.shape: tuple[int, ...] = info.shape
        self.dtype: np.dtype[Any] = info.dtype
        self._path = split_path(info.path)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return self.info.size

    @property
    def nbytes(self) -> int:
        return self.info.nbytes

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d array")
        return self.shape[0]

    def __repr__(self) -> str:
        return (f"<RemoteArray {self.info.uniq}/{self.info.path} shape={self.shape} "
                f"dtype={self.dtype}>")

    def url_for(self, request: Request) -> str:
        range_text = request.range_text if self.shape else None
        return table_url(self.table.base_url, self.info.uniq, self._path, range_text,
                         ["format:hdf"])

    async def read(
        self, /,
        selection: Any = Ellipsis,
        *,
        out: np.ndarray[Any, Any] | None = None,
        progress: ProgressCallback | None = None,
        stats: DownloadStats | None = None,
        **options: Any,
    ) -> np.ndarray[Any, Any]:
        """Download ``selection`` (numpy basic indexing) and return it as an ndarray.

        ``out=`` takes any writable array of the result's shape (ndarray, ``np.memmap``, a
        view) whose dtype holds every value of the array's (numpy's "safe" casting: float32
        into float64, not int32 into int16); it is filled and returned. If the download fails or is cancelled after writing into ``out``, an
        :class:`~aiobisque.IncompleteDownloadError` (or the cancellation, with a note) says
        the buffer is incomplete.
        """
        sel = normalize_selection(selection, self.shape)
        return await self._read(sel, out=out, progress=progress, stats=stats, options=options)

    async def _read(
        self,
        sel: Selection,
        *,
        out: np.ndarray[Any, Any] | None,
        progress: ProgressCallback | None,
        stats: DownloadStats | None,
        options: dict[str, Any],
    ) -> np.ndarray[Any, Any]:
        """What :meth:`read` and ``load_array`` share: the result buffer, then :meth:`fill`."""
        cfg: Config = self.table.session.config.for_call(**options)
        nbytes = sel.size * self.dtype.itemsize
        if nbytes > cfg.max_bytes:
            raise UsageError(
                f"the selection is {nbytes:,} bytes, more than max_bytes={cfg.max_bytes:,}; "
                "pass a larger max_bytes (or write to a file with out=np.memmap)"
            )
        result = np.empty(sel.shape, dtype=self.dtype) if out is None \
            else _check_out(out, sel.shape, self.dtype)
        try:
            await self.fill(sel, result, config=cfg, progress=progress, stats=stats)
        except asyncio.CancelledError as exc:
            if out is not None:
                exc.add_note("aiobisque: the out= buffer is incomplete (download cancelled)")
            raise
        except Exception as exc:
            if out is not None and sel.size:
                raise IncompleteDownloadError(
                    f"download of {self._where} into out= stopped; the buffer is incomplete: "
                    f"{exc}"
                ) from exc
            raise
        return result

    async def fill(
        self,
        sel: Selection,
        dest: np.ndarray[Any, Any],
        *,
        config: Config,
        plan: Plan | None = None,
        progress: ProgressCallback | None = None,
        stats: DownloadStats | None = None,
        ledger: Ledger | None = None,
    ) -> DownloadStats:
        """Download the normalised selection ``sel`` into ``dest``: the one read path.

        Every download goes through here: :meth:`read`, ``load_array``, the bulk
        downloader's blocks (``sel`` narrowed with :meth:`Selection.narrow
        <aiobisque.selection.Selection.narrow>`) and dask's tasks. ``dest`` is a writable
        array of ``sel.shape`` and of this array's dtype (or one it casts to safely);
        ``plan`` is the selection's plan when the caller already made one. Errors are
        raised as they are: whether a half-filled ``dest`` matters is the caller's call.
        """
        plan = plan if plan is not None else make_plan(sel, self.dtype.itemsize,
                                                        config.request_bytes)
        session = self.table.session
        # the trailing Ellipsis keeps this a view even for 0-d results (not a scalar copy)
        core = dest[(*sel.result_to_core(), Ellipsis)]
        return await run_plan(
            session.transport, plan, self.url_for, core, self.dtype,
            config=config, executor=session.executor, where=self._where,
            progress=progress, stats=stats, ledger=ledger,
        )

    @property
    def _where(self) -> str:
        return f"{self.info.uniq}/{self.info.path}"


def _check_out(out: Any, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray[Any, Any]:
    if not isinstance(out, np.ndarray):
        raise UsageError(f"out= must be a numpy array (or memmap), got {type(out).__name__}")
    if out.shape != shape:
        raise UsageError(f"out= has shape {out.shape}, the selection has shape {shape}")
    if not out.flags.writeable:
        raise UsageError("out= is read-only")
    if not np.can_cast(dtype, out.dtype, casting="safe"):
        # a narrower type would wrap or round values silently
        raise UsageError(
            f"cannot store {dtype} data in an out= array of {out.dtype} without losing values"
        )
    return out
