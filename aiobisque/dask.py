"""Dask arrays whose blocks are downloaded by the dask workers themselves.

>>> from aiobisque.dask import from_bisque                                # doctest: +SKIP
>>> x = from_bisque(root, uniq, "path/to/array", auth=("me", "pw"), chunks="128 MiB")
>>> x[:, 100:200].mean().compute()     # each block fetched by the worker that needs it

How it works:

- ``from_bisque`` asks the server for the array's ``info`` once, in the calling process, and
  builds the graph with :func:`dask.array.from_array` over a :class:`BlockReader`: a small
  picklable object naming the server, the resource and the credentials. Indexing a
  ``BlockReader`` downloads that hyperslab with aiobisque in whichever process runs the task.
- Every process keeps one :class:`~aiobisque.BisqueSession` per (root, credentials, options),
  opened lazily on aiobisque's private event loop, reused by all tasks and threads of that
  process and closed at interpreter exit (or by :func:`close_sessions`). Its concurrency
  limit is therefore shared by every dask thread of the process: 4 threads reading blocks
  still hold at most ``concurrency`` requests in flight, not ``4 x concurrency``.
- Reads go through dask's own ``getter``, so dask's graph optimisation fuses a slice of a
  block into the read: ``x[5]`` downloads one row, not the block holding it. Integer-array
  (fancy) indices that dask fuses in are served by downloading the smallest box holding
  them, within one block, and indexing it locally.
- Credentials travel inside the graph as a :class:`Credentials` object (or a
  :class:`~aiobisque.MexToken`) whose ``repr`` hides the secret, so graph reprs, task keys,
  dashboards and the "Compute Failed" lines of worker logs never show it. The secret is in
  the pickled graph sent to the scheduler and workers: use TLS between them on a shared
  network.

This module needs the ``dask`` extra: ``pip install 'aiobisque[dask]'``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import operator
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from aiobisque._loop import run_sync
from aiobisque.blocks import BlockGrid
from aiobisque.config import Config
from aiobisque.errors import SelectionError, UsageError
from aiobisque.protocol import ArrayInfo, not_an_array, redact_url
from aiobisque.selection import expand_index
from aiobisque.session import BisqueSession, MexToken
from aiobisque.table import RemoteArray, TableService

try:
    import dask
    import dask.array as da
    from dask.array.core import normalize_chunks
    from dask.base import tokenize
    from dask.utils import parse_bytes
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "aiobisque.dask needs dask: pip install 'aiobisque[dask]'"
    ) from exc

__all__ = ["BlockReader", "Credentials", "close_sessions", "from_bisque"]

#: Seconds the interpreter may wait at exit for this process's sessions to close.
_CLOSE_WAIT = 5.0


class Credentials:
    """A user name and password (HTTP Basic) that can travel in a dask graph without showing.

    ``repr``/``str`` hide the password, and dask tokens are computed from the user name
    only, so task keys carry no hash of the secret either.

    >>> Credentials("alice", "wonderland")
    Credentials(user='alice', password=***)
    """

    __slots__ = ("_password", "user")

    def __init__(self, user: str, password: str):
        if not isinstance(user, str) or not isinstance(password, str):
            raise UsageError("Credentials need a user name and a password, both str")
        self.user = user
        self._password = password

    def as_auth(self) -> tuple[str, str]:
        """The ``(user, password)`` pair :class:`~aiobisque.BisqueSession` takes."""
        return self.user, self._password

    def __repr__(self) -> str:
        return f"Credentials(user={self.user!r}, password=***)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Credentials):
            return NotImplemented
        return self.as_auth() == other.as_auth()

    def __hash__(self) -> int:
        return hash((Credentials, *self.as_auth()))

    def __reduce__(self) -> tuple[Any, ...]:
        return Credentials, self.as_auth()

    def __dask_tokenize__(self) -> tuple[str, str]:
        return "Credentials", self.user


GraphAuth = Credentials | MexToken | None


def _graph_auth(auth: Any) -> GraphAuth:
    """``auth=`` of :func:`from_bisque` as an object safe to put in a graph."""
    if auth is None or isinstance(auth, Credentials | MexToken):
        return auth
    if isinstance(auth, tuple) and len(auth) == 2 and all(isinstance(a, str) for a in auth):
        return Credentials(*auth)
    raise UsageError(
        "auth must be None, a (user, password) tuple, a Credentials or a MexToken; "
        f"got a {type(auth).__name__}"
    )


def _session_auth(auth: GraphAuth) -> tuple[str, str] | MexToken | None:
    return auth.as_auth() if isinstance(auth, Credentials) else auth


def _auth_token(auth: GraphAuth) -> tuple[str, str | None]:
    """What of the credentials may go into a dask token: the kind and the user, no secret."""
    if auth is None:
        return "anonymous", None
    return type(auth).__name__, auth.user


# --- one session per process and key ----------------------------------------------------

SessionKey = tuple[str, GraphAuth, Config]

#: Sessions of this process, each an opening or open task on the private loop. Only touched
#: from coroutines on that loop, so it needs no lock.
_sessions: dict[SessionKey, asyncio.Task[BisqueSession]] = {}
_atexit_registered = False


async def _open_session(key: SessionKey) -> BisqueSession:
    root, auth, config = key
    session = BisqueSession(root, auth=_session_auth(auth), config=config)
    await session.open()
    return session


async def _session(key: SessionKey) -> BisqueSession:
    """This process's session for ``key``, opened on first use and shared afterwards."""
    global _atexit_registered
    task = _sessions.get(key)
    if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
        # a failed opening is retried by the next block rather than remembered forever
        task = asyncio.get_running_loop().create_task(_open_session(key))
        _sessions[key] = task
        if not _atexit_registered:
            atexit.register(_close_at_exit)
            _atexit_registered = True
    # shielded: one cancelled block read must not cancel the opening the others wait for
    return await asyncio.shield(task)


async def _close_all() -> None:
    tasks = list(_sessions.values())
    _sessions.clear()
    for task in tasks:
        if not task.done():
            task.cancel()
        with contextlib.suppress(BaseException):
            await (await task).close()


def close_sessions() -> None:
    """Close the sessions this process opened for dask blocks (reopened on next use).

    Called automatically at interpreter exit; call it yourself to release connections early,
    e.g. on workers with ``client.run(close_sessions)``.
    """
    if _sessions:
        run_sync(_close_all())


def _close_at_exit() -> None:
    if not _sessions:
        return

    async def bounded() -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_close_all(), _CLOSE_WAIT)

    # exit must go on even if the private loop is already gone
    with contextlib.suppress(Exception):
        run_sync(bounded())


def _forget_sessions() -> None:
    # after fork() the child has no private loop thread: its sessions belong to the parent
    _sessions.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_sessions)


# --- reading blocks ----------------------------------------------------------------------


def _fancy_box(index: Any, shape: tuple[int, ...]) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """Split an index holding integer or boolean arrays into (box, local).

    ``box`` is a basic index of the smallest hyperslab holding every selected element and
    ``local`` indexes the downloaded box so that ``remote[box][local]`` equals
    ``array[index]`` (integers stay integers, so numpy places the advanced dimensions the
    same way).
    """
    box: list[Any] = []
    local: list[Any] = []
    axis = 0
    for item in expand_index(index, len(shape)):
        if item is None:
            local.append(None)
            continue
        if isinstance(item, slice):
            box.append(item)
            local.append(slice(None))
        else:
            picks = _picks(item, shape[axis], axis)
            lo = int(picks.min()) if picks.size else 0
            hi = int(picks.max()) + 1 if picks.size else 0
            box.append(slice(lo, hi))
            local.append(picks - lo if isinstance(item, list | np.ndarray) else 0)
        axis += 1
    return tuple(box), tuple(local)


def _picks(item: Any, size: int, axis: int) -> np.ndarray[Any, Any]:
    """The non-negative source indices an integer, integer array or boolean mask selects."""
    if isinstance(item, bool | np.bool_):
        raise SelectionError(f"a scalar boolean is not an index (axis {axis})")
    if isinstance(item, list | np.ndarray):
        picks = np.asarray(item)
        if picks.dtype == bool:
            if picks.shape != (size,):
                raise SelectionError(
                    f"boolean index of shape {picks.shape} does not match axis {axis} "
                    f"of size {size}"
                )
            picks = np.flatnonzero(picks)
        elif picks.size == 0:
            picks = picks.astype(np.intp)
    else:
        picks = np.asarray([operator.index(item)])
    if picks.dtype.kind not in "iu":
        raise SelectionError(f"index arrays must hold integers (axis {axis})")
    if picks.size and (picks.min() < -size or picks.max() >= size):
        raise SelectionError(f"index out of bounds for axis {axis} with size {size}")
    return np.where(picks < 0, picks + size, picks)


def _is_fancy(index: Any) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, list | np.ndarray) for i in items)


class BlockReader:
    """The array-like behind :func:`from_bisque`: indexing it downloads that hyperslab.

    It holds only what a worker needs (root, credentials, options, the ``info`` of the
    array) and pickles small. Its ``repr`` shows no secret. ``reader[index]`` takes numpy
    basic indexing, plus integer and boolean arrays as dask's optimiser produces them, and
    downloads in the calling process through that process's shared session.
    """

    def __init__(self, root: str, auth: GraphAuth, config: Config, info: ArrayInfo):
        if info.shape is None or info.dtype is None:
            raise not_an_array(info)
        self.root = root
        self.auth = auth
        self.config = config
        self.info = info
        self.shape: tuple[int, ...] = info.shape
        self.dtype: np.dtype[Any] = info.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __repr__(self) -> str:
        return (
            f"BlockReader({redact_url(self.root)}, {self.info.uniq!r}, {self.info.path!r}, "
            f"shape={self.shape}, dtype={self.dtype}, auth={self.auth!r})"
        )

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return (
            "aiobisque.BlockReader", redact_url(self.root), _auth_token(self.auth),
            self.config, self.info.uniq, self.info.path, self.shape, str(self.dtype),
        )

    def __getitem__(self, index: Any) -> np.ndarray[Any, Any]:
        return run_sync(self.read(index))

    async def read(self, index: Any) -> np.ndarray[Any, Any]:
        """Download ``self[index]`` on the current event loop (the process's private one)."""
        session = await _session((self.root, self.auth, self.config))
        if not _is_fancy(index):
            return await self._fetch(session, index)
        box, local = _fancy_box(index, self.shape)
        block = await self._fetch(session, box)
        picked: np.ndarray[Any, Any] = block[local]
        return picked

    async def _fetch(self, session: BisqueSession, index: Any) -> np.ndarray[Any, Any]:
        """A basic-indexing hyperslab: an array's through ``read``, a table's rows through
        ``load_table`` (text columns as ``object`` cells, the dask array's type)."""
        if self.info.kind != "table":
            return await RemoteArray(session.table, self.info).read(index)
        items = list(expand_index(index, 1))
        if len(items) != 1 or not isinstance(items[0], int | slice):
            raise SelectionError(f"a table's rows take one int or slice, got {index!r}")
        records = await session.table.load_table(self.info.uniq, self.info.path, items[0])
        return np.asarray(records).astype(self.dtype)


# --- building the dask array -------------------------------------------------------------


def _block_chunks(chunks: Any, shape: tuple[int, ...], dtype: np.dtype[Any]) -> Any:
    limit: int | None = None
    if isinstance(chunks, str):
        text = dask.config.get("array.chunk-size") if chunks == "auto" else chunks
        try:
            limit = int(parse_bytes(text))
        except (ValueError, TypeError):
            raise UsageError(
                f"chunks={chunks!r} is not a byte size (such as '128 MiB') nor 'auto'"
            ) from None
        if limit < max(dtype.itemsize, 1):
            raise UsageError(
                f"chunks={chunks!r} is smaller than one element of {dtype} "
                f"({dtype.itemsize} bytes)"
            )
        # the bulk downloader's blocks: each one contiguous range on the server
        spec: Any = -1
        if shape and all(shape):
            grid = BlockGrid.fit(shape, dtype.itemsize, limit)
            spec = (1,) * grid.axis + (grid.rows,) + (-1,) * (len(shape) - grid.axis - 1)
    else:
        spec = chunks
    try:
        return normalize_chunks(  # type: ignore[no-untyped-call]
            spec, shape, limit=limit, dtype=dtype
        )
    except (ValueError, TypeError, ZeroDivisionError) as exc:
        raise UsageError(
            f"chunks={chunks!r} does not fit an array of shape {shape} and dtype {dtype}: {exc}"
        ) from None


async def _info(key: SessionKey, uniq: str, path: str | Sequence[str]) -> ArrayInfo:
    session = await _session(key)
    table: TableService = session.table
    return await table.info(uniq, path)


def _check_kind(info: ArrayInfo) -> None:
    if info.kind not in ("matrix", "table"):
        raise not_an_array(info)


def from_bisque(
    root: str,
    uniq: str,
    path: str | Sequence[str],
    *,
    auth: tuple[str, str] | Credentials | MexToken | None = None,
    chunks: Any = "auto",
    name: str | bool | None = None,
    **options: Any,
) -> Any:
    """A :class:`dask.array.Array` of a BisQue array, read block by block where it is needed.

    A table (see :meth:`~aiobisque.TableService.load_table`) becomes a 1-D array of records
    whose blocks are row ranges, each read with ``load_table`` (exact column types; text
    columns are ``object`` cells holding ``str``, since their width is unknown).

    Args:
        root: the BisQue server, e.g. ``"https://bisque.example.org"``.
        uniq: the resource (a uniq, data-service URL or viewer URL).
        path: the array's path inside the resource's HDF file.
        auth: ``(user, password)``, a :class:`Credentials`, a :class:`~aiobisque.MexToken`
            or ``None`` (anonymous).
        chunks: ``"auto"`` (dask's ``array.chunk-size``, 128 MiB by default) or a byte size
            such as ``"64 MiB"``: blocks of whole trailing dimensions split along the slowest
            ones, so each block is one contiguous range on the server. Any other dask form
            (an int, a tuple per dimension, a dict) is used as dask would.
        name: the dask key prefix; by default a deterministic token (of everything but the
            secret); ``False`` for a random one.
        **options: :class:`~aiobisque.Config` options of the sessions that read blocks
            (``concurrency``, ``request_bytes``, ``retry``, ...), one session per process.

    Shape and dtype come from one ``info`` request made now, in this process; the data is
    read when the graph is computed, in the processes that run its tasks. Errors raised by
    reads (``NotFoundError``, ``ServerError`` after retries, ...) reach ``compute()``.

    >>> x = from_bisque(root, uniq, "volume", auth=("me", "pw"), chunks="64 MiB")  # doctest: +SKIP
    >>> x[10:20].mean().compute()                                                   # doctest: +SKIP
    """
    graph_auth = _graph_auth(auth)
    config = Config().replace(**options)
    # validate the root now rather than in every worker
    BisqueSession(root, auth=_session_auth(graph_auth), config=config)
    key: SessionKey = (root.rstrip("/"), graph_auth, config)
    info = run_sync(_info(key, uniq, path))
    _check_kind(info)
    reader = BlockReader(key[0], graph_auth, config, info)
    block_chunks = _block_chunks(chunks, reader.shape, reader.dtype)
    if name is None or name is True:
        name = "bisque-" + tokenize(reader, block_chunks)
    return da.from_array(  # type: ignore[no-untyped-call]
        reader,
        chunks=block_chunks,
        name=name,
        # one reader object per task (it is tiny) keeps blocks independent of each other,
        # so the scheduler need not gather them around one "original array" key
        inline_array=True,
        # dask's fancy getter fuses any later slice into the read (see module docstring)
        fancy=True,
        meta=np.empty((0,) * reader.ndim, dtype=reader.dtype),
    )
