"""The synchronous API: the async core, run for you on a private event loop.

For scripts and notebooks that do not use asyncio::

    import aiobisque

    arr = aiobisque.load_array("https://bisque.example.org", uniq, "path/to/array",
                               auth=("me", "pw"))

    with aiobisque.Session("https://bisque.example.org", auth=("me", "pw")) as bq:
        print(bq.info(uniq, "path/to/array").shape)
        volume = bq.open(uniq, "path/to/array")
        plane = volume[10]                     # numpy basic indexing, downloaded now

Every class here is a thin twin of an async one (:class:`Session` of
:class:`~aiobisque.BisqueSession`, :class:`SyncTableService` of
:class:`~aiobisque.TableService`, :class:`SyncRemoteArray` of
:class:`~aiobisque.RemoteArray`): same arguments, options and errors, no logic of its own.
Each call runs the async method on aiobisque's private loop thread (uvloop when installed),
which is why it also works inside a running event loop such as Jupyter's, and from any
thread. Progress callbacks are called on that private thread. Calling the synchronous API
from the private loop itself (e.g. inside a progress callback) raises ``RuntimeError``.
Ctrl-C cancels the download, waits for its requests to stop and raises
``KeyboardInterrupt``.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import aiohttp
import numpy as np

from aiobisque._loop import run_sync, shared_loop
from aiobisque.config import Config
from aiobisque.download import DownloadStats, ProgressCallback
from aiobisque.protocol import ArrayInfo
from aiobisque.session import Auth, BisqueSession
from aiobisque.table import RemoteArray, TableService
from aiobisque.upload import UploadResult

__all__ = ["Session", "SyncRemoteArray", "SyncTableService", "load_array"]

#: How long a forgotten session's clean-up may hold up garbage collection or exit.
_FINALIZE_WAIT = 2.0


class SyncRemoteArray:
    """Synchronous twin of :class:`~aiobisque.RemoteArray` (from :meth:`Session.open`).

    ``arr[selection]`` and ``arr.read(selection)`` download with numpy basic indexing;
    ``np.asarray(arr)`` downloads the whole array.
    """

    def __init__(self, array: RemoteArray):
        self._aio = array

    @property
    def info(self) -> ArrayInfo:
        """The node's metadata (:class:`~aiobisque.ArrayInfo`)."""
        return self._aio.info

    @property
    def shape(self) -> tuple[int, ...]:
        return self._aio.shape

    @property
    def dtype(self) -> np.dtype[Any]:
        return self._aio.dtype

    @property
    def ndim(self) -> int:
        return self._aio.ndim

    @property
    def size(self) -> int:
        return self._aio.size

    @property
    def nbytes(self) -> int:
        return self._aio.nbytes

    def __len__(self) -> int:
        return len(self._aio)

    def __repr__(self) -> str:
        return repr(self._aio).replace("<RemoteArray", "<SyncRemoteArray", 1)

    def read(
        self,
        selection: Any = Ellipsis,
        *,
        out: np.ndarray[Any, Any] | None = None,
        progress: ProgressCallback | None = None,
        stats: DownloadStats | None = None,
        **options: Any,
    ) -> np.ndarray[Any, Any]:
        """Runs :meth:`RemoteArray.read <aiobisque.RemoteArray.read>` and waits for it."""
        return run_sync(self._aio.read(selection, out=out, progress=progress, stats=stats,
                                       **options))

    def __getitem__(self, selection: Any) -> np.ndarray[Any, Any]:
        """``arr[sel]`` is ``arr.read(sel)``."""
        return self.read(selection)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray[Any, Any]:
        # numpy protocol: np.asarray(arr) downloads the whole array (bounded by max_bytes)
        data = self.read()
        return data if dtype is None else data.astype(dtype, copy=False)


class SyncTableService:
    """Synchronous twin of :class:`~aiobisque.TableService` (``session.table``)."""

    def __init__(self, table: TableService):
        self._aio = table

    def __repr__(self) -> str:
        return f"<SyncTableService of {self._aio.session!r}>"

    def info(self, uniq: str, path: str | Sequence[str] = "", **options: Any) -> ArrayInfo:
        """Runs :meth:`TableService.info <aiobisque.TableService.info>` and waits for it."""
        return run_sync(self._aio.info(uniq, path, **options))

    def open(self, uniq: str, path: str | Sequence[str] = "", **options: Any) -> SyncRemoteArray:
        """Runs :meth:`TableService.open <aiobisque.TableService.open>`; wraps the array."""
        return SyncRemoteArray(run_sync(self._aio.open(uniq, path, **options)))

    def load_array(
        self,
        uniq: str,
        path: str | Sequence[str],
        slices: Sequence[slice | int] | None = None,
        *,
        out: np.ndarray[Any, Any] | None = None,
        progress: ProgressCallback | None = None,
        stats: DownloadStats | None = None,
        **options: Any,
    ) -> np.ndarray[Any, Any]:
        """Runs :meth:`TableService.load_array <aiobisque.TableService.load_array>`.

        ``slices`` follows ``bqapi``: a ``slice`` per leading dimension, an ``int`` keeps a
        length-1 dimension, missing dimensions are whole.
        """
        return run_sync(self._aio.load_array(uniq, path, slices, out=out, progress=progress,
                                             stats=stats, **options))

    def store_array(self, array: Any, name: str, *, tags: Mapping[str, Any] | None = None,
                    progress: ProgressCallback | None = None, **options: Any) -> UploadResult:
        """Runs :meth:`TableService.store_array <aiobisque.TableService.store_array>`."""
        return run_sync(self._aio.store_array(array, name, tags=tags, progress=progress,
                                              **options))

    def store_table(self, table: Any, name: str, *, tags: Mapping[str, Any] | None = None,
                    progress: ProgressCallback | None = None, **options: Any) -> UploadResult:
        """Runs :meth:`TableService.store_table <aiobisque.TableService.store_table>`."""
        return run_sync(self._aio.store_table(table, name, tags=tags, progress=progress,
                                              **options))


class Session:
    """Synchronous twin of :class:`~aiobisque.BisqueSession`, connected on creation.

    >>> with Session("https://bisque.example.org", auth=("me", "pw")) as bq:   # doctest: +SKIP
    ...     ms = bq.load_array(uniq, "DataContainers/ImageDataContainer/CellData/Phases")

    Creating it runs :meth:`BisqueSession.open <aiobisque.BisqueSession.open>` (services
    list, credential check: rejected credentials raise
    :class:`~aiobisque.AuthenticationError`). Use it in a ``with`` block or call
    :meth:`close`; a session that is garbage-collected unclosed is closed then.
    ``options`` are :class:`~aiobisque.Config` fields (or ``config=``), overridable per call.
    """

    def __init__(
        self,
        root: str,
        auth: Auth | aiohttp.BasicAuth = None,
        *,
        config: Config | None = None,
        **options: Any,
    ):
        self._aio = BisqueSession(root, auth, config=config, **options)
        run_sync(self._aio.open())
        # a notebook user may never call close(): close the connections when collected
        self._finalizer = weakref.finalize(self, _close_forgotten, self._aio)

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Runs :meth:`BisqueSession.close <aiobisque.BisqueSession.close>` (idempotent)."""
        self._finalizer.detach()
        run_sync(self._aio.close())

    def __repr__(self) -> str:
        return repr(self._aio).replace("<BisqueSession", "<Session", 1)

    @property
    def root(self) -> str:
        return self._aio.root

    @property
    def user(self) -> str | None:
        """The logged-in user name (``None`` when anonymous)."""
        return self._aio.user

    @property
    def services(self) -> dict[str, str]:
        """Service name -> base URL, as listed by the server."""
        return self._aio.services

    @property
    def config(self) -> Config:
        return self._aio.config

    @property
    def table(self) -> SyncTableService:
        """The table service (twin of :attr:`BisqueSession.table`)."""
        return SyncTableService(self._aio.table)

    def login_providers(self) -> list[str]:
        """Runs :meth:`BisqueSession.login_providers <aiobisque.BisqueSession.login_providers>`."""
        return run_sync(self._aio.login_providers())

    def service(self, name: str) -> SyncTableService:
        """Twin of :meth:`BisqueSession.service`: only ``"table"`` is provided."""
        return SyncTableService(self._aio.service(name))

    def info(self, uniq: str, path: str | Sequence[str] = "", **options: Any) -> ArrayInfo:
        """``session.table.info(...)``: runs :meth:`TableService.info`."""
        return self.table.info(uniq, path, **options)

    def open(self, uniq: str, path: str | Sequence[str] = "", **options: Any) -> SyncRemoteArray:
        """``session.table.open(...)``: runs :meth:`TableService.open`."""
        return self.table.open(uniq, path, **options)

    def load_array(
        self,
        uniq: str,
        path: str | Sequence[str],
        slices: Sequence[slice | int] | None = None,
        *,
        out: np.ndarray[Any, Any] | None = None,
        progress: ProgressCallback | None = None,
        stats: DownloadStats | None = None,
        **options: Any,
    ) -> np.ndarray[Any, Any]:
        """``session.table.load_array(...)``: runs :meth:`TableService.load_array`."""
        return self.table.load_array(uniq, path, slices, out=out, progress=progress,
                                     stats=stats, **options)

    def store_array(self, array: Any, name: str, *, tags: Mapping[str, Any] | None = None,
                    progress: ProgressCallback | None = None, **options: Any) -> UploadResult:
        """``session.table.store_array(...)``: runs :meth:`TableService.store_array`."""
        return self.table.store_array(array, name, tags=tags, progress=progress, **options)

    def store_table(self, table: Any, name: str, *, tags: Mapping[str, Any] | None = None,
                    progress: ProgressCallback | None = None, **options: Any) -> UploadResult:
        """``session.table.store_table(...)``: runs :meth:`TableService.store_table`."""
        return self.table.store_table(table, name, tags=tags, progress=progress, **options)


def load_array(
    root: str,
    uniq: str,
    path: str | Sequence[str],
    slices: Sequence[slice | int] | None = None,
    *,
    auth: Auth | aiohttp.BasicAuth = None,
    out: np.ndarray[Any, Any] | None = None,
    progress: ProgressCallback | None = None,
    stats: DownloadStats | None = None,
    **options: Any,
) -> np.ndarray[Any, Any]:
    """Download one array (or part of it) in one call: a :class:`Session` opened and closed.

    >>> ms = load_array("https://bisque.example.org", "00-orJQLiXgqh8K955C6qzhyC",
    ...                 "DataContainers/ImageDataContainer/CellData/Phases",
    ...                 auth=("me", "pw"))                                   # doctest: +SKIP

    Arguments are those of :meth:`TableService.load_array <aiobisque.TableService.load_array>`;
    ``options`` are :class:`~aiobisque.Config` fields. To download several arrays, open a
    :class:`Session` once instead (one login, shared connections).
    """
    with Session(root, auth, **options) as session:
        return session.load_array(uniq, path, slices, out=out, progress=progress, stats=stats)


def _close_forgotten(session: BisqueSession) -> None:
    """Close an unclosed session's connections from a finalizer (GC or interpreter exit)."""
    with contextlib.suppress(Exception):
        future = asyncio.run_coroutine_threadsafe(session.close(), shared_loop.loop)
        # a finalizer may run on the loop thread itself: waiting there would deadlock
        if not shared_loop.is_current():
            future.result(timeout=_FINALIZE_WAIT)
