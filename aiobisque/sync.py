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
The twins are made from the async methods themselves (:func:`_twin`), so their signatures
and docstrings cannot drift; ``tests/test_surface.py`` checks both surfaces match.
Each call runs the async method on aiobisque's private loop thread (asyncio's loop, or
uvloop's with ``AIOBISQUE_LOOP=uvloop``), which is why it also works inside a running event
loop such as Jupyter's, and from any thread. Progress callbacks are called on that private thread. Calling the synchronous API
from the private loop itself (e.g. inside a progress callback) raises ``RuntimeError``.
Ctrl-C cancels the download, waits for its requests to stop and raises
``KeyboardInterrupt``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import weakref
from collections.abc import Callable, Coroutine, Sequence
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

import aiohttp
import numpy as np

from aiobisque._loop import run_sync, shared_loop
from aiobisque.config import Config
from aiobisque.progress import DownloadStats, ProgressCallback
from aiobisque.protocol import ArrayInfo
from aiobisque.session import Auth, BisqueSession
from aiobisque.table import RemoteArray, TableService

__all__ = ["Session", "SyncRemoteArray", "SyncTableService", "load_array"]

#: How long a forgotten session's clean-up may hold up garbage collection or exit.
_FINALIZE_WAIT = 2.0

P = ParamSpec("P")
R = TypeVar("R")
W = TypeVar("W")


def _twin(
    method: Callable[Concatenate[Any, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[Any, P], R]:
    """The synchronous twin of an async method: runs it on ``self._aio`` and waits.

    The twin carries the async method's signature and docstring (``inspect.signature``
    follows ``__wrapped__``), so there is one definition of each argument list.
    """

    def twin(self: Any, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return run_sync(method(self._aio, *args, **kwargs))

    functools.update_wrapper(twin, method)
    return twin


def _wrapping_twin(
    method: Callable[Concatenate[Any, P], Coroutine[Any, Any, R]], wrap: Callable[[R], W],
) -> Callable[Concatenate[Any, P], W]:
    """Like :func:`_twin`, for a method whose result gets a synchronous twin too."""
    run = _twin(method)

    def twin(self: Any, /, *args: P.args, **kwargs: P.kwargs) -> W:
        return wrap(run(self, *args, **kwargs))

    functools.update_wrapper(twin, method)
    return twin


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

    read = _twin(RemoteArray.read)

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

    info = _twin(TableService.info)
    open = _wrapping_twin(TableService.open, SyncRemoteArray)
    load_array = _twin(TableService.load_array)

    load_table = _twin(TableService.load_table)
    store_array = _twin(TableService.store_array)
    store_table = _twin(TableService.store_table)


class Session:
    """Synchronous twin of :class:`~aiobisque.BisqueSession`, connected on creation.

    >>> with Session("https://bisque.example.org", auth=("me", "pw")) as bq:   # doctest: +SKIP
    ...     ms = bq.load_array(uniq, "DataContainers/ImageDataContainer/CellData/Phases")

    Creating it runs :meth:`BisqueSession.open <aiobisque.BisqueSession.open>` (services
    list, credential check: rejected credentials raise
    :class:`~aiobisque.AuthenticationError`). Use it in a ``with`` block or call
    :meth:`close`; a session that is garbage-collected unclosed is closed then.
    ``options`` are :class:`~aiobisque.Config` fields (or ``config=``), overridable per call.
    Because it is connected on creation, its :meth:`open` opens an *array*
    (``session.table.open``), where the async session's ``open()`` connects.
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

    def service(self, name: str) -> SyncTableService:
        """Twin of :meth:`BisqueSession.service`: only ``"table"`` is provided."""
        return SyncTableService(self._aio.service(name))

    login_providers = _twin(BisqueSession.login_providers)
    info = _twin(BisqueSession.info)
    load_array = _twin(BisqueSession.load_array)
    load_table = _twin(BisqueSession.load_table)

    def open(self, uniq: str, path: str | Sequence[str] = "", **options: Any) -> SyncRemoteArray:
        """``session.table.open(...)``: runs :meth:`TableService.open`."""
        return self.table.open(uniq, path, **options)


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

    Arguments are those of :meth:`TableService.load_array <aiobisque.TableService.load_array>`
    plus the server's ``root`` and ``auth``; ``options`` are :class:`~aiobisque.Config`
    fields. To download several arrays, open a :class:`Session` once instead (one login,
    shared connections).
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
