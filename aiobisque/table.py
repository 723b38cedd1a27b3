"""The table service: ``info``, ``load_array`` and lazily-read :class:`RemoteArray` objects."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from aiobisque.config import Config
from aiobisque.download import Ledger, run_plan
from aiobisque.errors import (
    AuthenticationError,
    BadRequestError,
    BisqueError,
    IncompleteDownloadError,
    NotFoundError,
    PermissionDeniedError,
    UnsupportedError,
    UsageError,
)
from aiobisque.plan import Plan, Request, make_plan, request_size
from aiobisque.progress import DownloadStats, ProgressCallback
from aiobisque.protocol import (
    ArrayInfo,
    below_node,
    node_url,
    not_an_array,
    parse_info,
    parse_uniq,
    redact_url,
    split_path,
    table_url,
)
from aiobisque.selection import Selection, bqapi_selection, normalize_selection

if TYPE_CHECKING:
    from aiobisque.session import BisqueSession
    from aiobisque.upload import UploadResult

__all__ = ["RemoteArray", "TableService"]


class _Asking:
    """An info request in flight and how many callers wait for it."""

    def __init__(self, answer: asyncio.Future[ArrayInfo]):
        self.answer = answer
        self.callers = 0


class TableService:
    """BisQue's table service on one session (``bq.service("table")`` or ``bq.table``)."""

    # ``self, /`` in the public methods: the sync facade and the session's shortcuts are
    # typed from these signatures (ParamSpec), which needs ``self`` positional-only

    def __init__(self, session: BisqueSession, base_url: str):
        self.session = session
        self.base_url = base_url
        # info answers being fetched: identical questions asked meanwhile share the answer
        self._asking: dict[tuple[Any, ...], _Asking] = {}

    def __repr__(self) -> str:
        return f"<TableService of {self.session!r}>"

    async def info(
        self, /, uniq: str, path: str | Sequence[str] = "", **options: Any
    ) -> ArrayInfo:
        """Metadata of a node: shape, dtype, kind, headers, types, meta, children.

        Real BisQue servers answer a mistyped path with 400 ("Unexpected symbol"), an
        unknown resource with 401/403 and an empty group with 404; this asks the parent
        (or the data service) what is really there and raises
        :class:`~aiobisque.NotFoundError` naming the missing node and what exists instead,
        or :class:`~aiobisque.PermissionDeniedError` saying who may not read what.
        """
        cfg = self.session.config.for_call(**options)
        uniq = parse_uniq(uniq)
        parts = split_path(path)
        # many calls asking at once about one node (a gather of reads of one array, dask's
        # tasks) send one request: an answer still in flight cannot have changed since it
        # was asked for. Nothing is kept once it arrives.
        key = (uniq, parts, cfg)
        try:
            asking = self._asking.get(key)
        except TypeError:  # an option value that cannot be hashed: asked on its own
            return await self._info(uniq, parts, cfg, options)
        if asking is None:
            asking = _Asking(asyncio.ensure_future(self._info(uniq, parts, cfg, options)))
            self._asking[key] = asking
            asking.answer.add_done_callback(lambda _: self._answered(key, asking))
        asking.callers += 1
        try:
            return await asyncio.shield(asking.answer)
        except asyncio.CancelledError:
            if not asking.answer.done():
                asking.callers -= 1
                if asking.callers == 0:
                    # nobody waits for it any more; forgotten at once, so a caller arriving
                    # before the cancellation lands asks anew instead of joining it
                    self._forget(key, asking)
                    asking.answer.cancel()
            raise

    def _forget(self, key: tuple[Any, ...], asking: _Asking) -> None:
        if self._asking.get(key) is asking:
            del self._asking[key]

    def _answered(self, key: tuple[Any, ...], asking: _Asking) -> None:
        self._forget(key, asking)
        if not asking.answer.cancelled():
            asking.answer.exception()  # retrieved: each caller raises it for itself

    def _cancel_pending(self) -> None:
        """Cancel the info requests still in flight: the session is closing, so its
        connections go and no answer could arrive."""
        for asking in list(self._asking.values()):
            asking.answer.cancel()

    async def _info(self, uniq: str, parts: tuple[str, ...], cfg: Config,
                    options: dict[str, Any]) -> ArrayInfo:
        url = table_url(self.base_url, uniq, parts, None, ["info", "format:json"])
        shown = "/".join(parts)
        try:
            body = await self.session.get_document(url, f"info of {uniq}/{shown}", cfg)
        except BadRequestError as exc:
            if not parts:
                raise
            raise await self._missing_node(uniq, parts, exc, options) from exc
        except NotFoundError:
            if not parts:
                raise
            empty = await self._empty_group(uniq, parts, options)
            if empty is None:
                raise
            return empty
        except (AuthenticationError, PermissionDeniedError) as exc:
            raise await self._refused(uniq, exc, cfg) from exc
        return parse_info(bytes(body), uniq=uniq, path=shown, url=url, max_bytes=cfg.max_bytes)

    async def _missing_node(self, uniq: str, parts: tuple[str, ...], exc: BisqueError,
                            options: dict[str, Any]) -> BisqueError:
        """The error for a 400 on ``parts``: BisQue parses a node it cannot find as a query."""
        parent, name = parts[:-1], parts[-1]
        where = "/" + "/".join(parent)
        info = await self.info(uniq, parent, **options)  # a typo higher up raises there
        if info.kind != "group":
            return NotFoundError(
                f"{uniq}: no node {name!r} under {where}, which is a {info.kind}, not a group",
                url=exc.url, status=exc.status)
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p, _ in info.children]
        if name in names:
            return exc  # the node exists: the 400 is about something else
        listing = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "") or "none"
        return NotFoundError(f"{uniq}: no node {name!r} under {where} (children: {listing})",
                             url=exc.url, status=exc.status)

    async def _empty_group(self, uniq: str, parts: tuple[str, ...],
                           options: dict[str, Any]) -> ArrayInfo | None:
        """The info of an empty group (BisQue answers 404 for one), or ``None``."""
        try:
            parent = await self.info(uniq, parts[:-1], **options)
        except BisqueError:
            return None
        own = "/" + "/".join(parts)
        if any(p.rstrip("/") == own and k == "group" for p, k in parent.children):
            return ArrayInfo(uniq, "/".join(parts), "group", None, None)
        return None

    async def _refused(self, uniq: str, exc: BisqueError, cfg: Config) -> BisqueError:
        """A 401/403 on a resource said plainly: BisQue answers them for unknown uniqs too,
        so the data service is asked whether the resource exists."""
        session = self.session
        who = f"user {session.user!r}" if session.user else "anonymous users"
        data = session.services.get("data_service")
        exists: bool | None = None
        if data is not None:
            try:
                await session.get_document(data + uniq, f"resource {uniq}", cfg)
                exists = True
            except NotFoundError:
                exists = False
            except BisqueError:
                exists = None  # refused there too: cannot tell
        root = redact_url(session.root)
        if exists is False:
            return NotFoundError(f"resource {uniq} not found on {root} (HTTP 404 from its data "
                                 "service)",
                                 url=exc.url, status=404)
        cls = type(exc)
        if isinstance(exc, AuthenticationError):
            text = (f"{uniq} needs a login" if exists else
                    f"{uniq}: no such resource, or it needs a login") + f" (HTTP {exc.status})"
        else:
            text = (f"{uniq}: {who} may not read it" if exists else
                    f"{uniq}: no such resource, or no access for {who}") + \
                f" (HTTP {exc.status})"
        return cls(text, url=exc.url, status=exc.status)

    async def open(
        self, /, uniq: str, path: str | Sequence[str] = "", **options: Any
    ) -> RemoteArray:
        """A :class:`RemoteArray` for an array node (one ``info`` request, no data yet)."""
        info = await self.info(uniq, path, **options)
        if info.kind != "matrix":
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

    async def load_table(
        self, /,
        uniq: str,
        path: str | Sequence[str],
        rows: int | slice | None = None,
        columns: str | Sequence[str] | None = None,
        *,
        as_dataframe: bool = False,
        progress: ProgressCallback | None = None,
        stats: DownloadStats | None = None,
        **options: Any,
    ) -> Any:
        """Download a table (a PyTables ``Table``: per-feature data, EBSD points...).

        Returns a numpy structured array with the table's exact column types (ints stay
        ints, bools bools, text columns ``str``), or a pandas DataFrame with
        ``as_dataframe=True`` (``pip install 'aiobisque[pandas]'``). ``rows`` follows
        numpy (``slice(-10, None)``, ``slice(None, None, 2)``; an int gives one record);
        ``columns`` names the columns wanted, in order (default: all).

        Each column is fetched on its own, chunked by rows and concurrently under the
        session's limits, so no value passes through the lossy common type BisQue's
        multi-column answers use (see :mod:`aiobisque.columns`).

        >>> feats = await bq.table.load_table(uniq, "DataContainers/Grains/FeatureData",
        ...                                   columns=["Volumes", "Phases"])  # doctest: +SKIP
        """
        from aiobisque.columns import as_dataframe as to_frame
        from aiobisque.columns import read_table

        cfg = self.session.config.for_call(**options)
        info = await self.info(uniq, path, **options)
        if info.kind != "table":
            where = f"{info.uniq}/{info.path}"
            if info.kind == "matrix":
                raise UsageError(f"{where} is an array, not a table: read it with load_array")
            raise not_an_array(info)
        records = await read_table(self, info, rows, columns, config=cfg, progress=progress,
                                   stats=stats)
        return to_frame(records) if as_dataframe else records

    async def store_array(
        self,
        /,
        array: Any,
        name: str,
        *,
        tags: Mapping[str, Any] | None = None,
        progress: ProgressCallback | None = None,
        **options: Any,
    ) -> UploadResult:
        """Upload ``array`` as a new resource ``NAME.h5`` holding it as node ``/NAME``.

        The file is the one ``bqapi``'s ``store_array`` writes (PyTables, read back with
        ``load_array(result.uniq, name)``), written block by block to a temporary file and
        streamed from it. ``tags`` (name -> value) are attached to the resource, with an
        ``upload_id`` tag identifying this upload. Bool, (u)int, float16-64, complex and
        fixed-size bytes (``S``) dtypes are stored; byte order becomes native. A login is
        required. Returns an :class:`~aiobisque.upload.UploadResult` (``.uniq``, ``.uri``).

        Uploads are not idempotent: they are retried only when the server provably did not
        take the file. :class:`~aiobisque.UploadUncertainError` means the resource may
        exist (look for its ``upload_id`` before uploading again);
        :class:`~aiobisque.UploadError` means nothing was stored. Bad input raises
        :class:`~aiobisque.UsageError` before anything is sent.
        """
        from aiobisque import upload

        cfg = self.session.config.for_call(**options)
        return await upload.store_array(self.session, array, name, tags=tags,
                                        progress=progress, config=cfg)

    async def store_table(
        self,
        /,
        table: Any,
        name: str,
        *,
        tags: Mapping[str, Any] | None = None,
        progress: ProgressCallback | None = None,
        **options: Any,
    ) -> UploadResult:
        """Upload a table (numpy structured array or pandas DataFrame) as ``NAME.h5``.

        Stored as a PyTables ``Table`` at node ``/NAME`` (compound rows, compressed), which
        the table service serves as a table. ``str`` columns are stored UTF-8 encoded as
        fixed-size bytes; a DataFrame's index is not stored (``reset_index()`` keeps it).
        Otherwise as :meth:`store_array`.
        """
        from aiobisque import upload

        cfg = self.session.config.for_call(**options)
        return await upload.store_table(self.session, table, name, tags=tags,
                                        progress=progress, config=cfg)


class RemoteArray:
    """An array on the server, read with numpy indexing: ``await arr.read(np.s_[..., -1])``."""

    def __init__(self, table: TableService, info: ArrayInfo):
        assert info.shape is not None and info.dtype is not None
        self.table = table
        self.info = info
        self.shape: tuple[int, ...] = info.shape
        self.dtype: np.dtype[Any] = info.dtype
        self._path = split_path(info.path)
        self._node_url = node_url(table.base_url, info.uniq, self._path)  # quoted once

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
        return below_node(self._node_url, range_text, ("format:hdf",))

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
        self.check_readable()  # before out= is touched
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
        self.check_readable()
        if plan is None:
            size = request_size(sel.size * self.dtype.itemsize, config.request_bytes,
                                config.concurrency)
            plan = make_plan(sel, self.dtype.itemsize, size)
        session = self.table.session
        # the trailing Ellipsis keeps this a view even for 0-d results (not a scalar copy)
        core = dest[(*sel.result_to_core(), Ellipsis)]
        return await run_plan(
            session.transport, plan, self.url_for, core, self.dtype,
            config=config, executor=session.executor, where=self._where,
            progress=progress, stats=stats, ledger=ledger,
        )

    def check_readable(self) -> None:
        """Raise :class:`~aiobisque.UnsupportedError` when the server cannot serve this
        array's data (a 0-d scalar), before anything is sent or created."""
        if not self.shape:
            # BisQue slices every answer with a range; a PyTables scalar cannot be sliced,
            # so every data request for one answers 500: refuse rather than retry that
            raise UnsupportedError(
                f"{self._where} is a 0-d (scalar) dataset, which BisQue's table service "
                f"cannot serve (its data requests answer 500); its info says {self.dtype} "
                "and nothing more: download the file itself to read it")

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
