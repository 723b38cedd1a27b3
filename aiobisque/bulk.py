"""Downloads to files: out-of-core, resumable, verified, with progress across many files.

A selection of a remote array is written to ``FILE`` through ``FILE.part``:

1. the result is cut into C-contiguous blocks (:class:`~aiobisque.blocks.BlockGrid`) of
   a few times the request size, so memory stays bounded whatever the array's size;
2. each block is the selection narrowed to it (:meth:`Selection.narrow
   <aiobisque.selection.Selection.narrow>`), downloaded by :meth:`RemoteArray.fill
   <aiobisque.RemoteArray.fill>` (the read path every caller uses) straight into the
   output's buffer (a memory map of the ``.npy`` file, or a block-sized array for HDF5),
   made durable, and recorded in the journal (:mod:`aiobisque.journal`);
3. when every block is in, the file's shape and dtype are checked and it is renamed to
   ``FILE`` atomically.

Whether a target is skipped, resumed or started afresh is decided by
:mod:`aiobisque.resume`. Running the same download again after a crash continues from the
journal, fetching only
the missing blocks, once it has checked that the journal is for the same request (root,
uniq, path, selection, format) and that the remote array still has the recorded shape and
dtype. A finished output is skipped only when it provably holds the same download (see
:func:`~aiobisque.outputs.existing_output_mismatch`). Arguments are checked before any file
is created, and a download that fails for good before saving a block leaves nothing behind
(see :func:`aiobisque.retry.is_permanent`). :class:`BulkDownloader` runs one or many
downloads on one session: they share the session's request limit and byte budget, plus a
budget of block buffers.

>>> async with BisqueSession(root, auth=auth) as bq:                       # doctest: +SKIP
...     result = await BulkDownloader(bq.table).download(Target(uniq, path, "vol.npy"))
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import errno
import functools
import logging
import math
import os
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from aiobisque.config import Config
from aiobisque.download import Ledger, run_all
from aiobisque.errors import (
    BisqueError,
    IncompleteDownloadError,
    OutputExistsError,
    ResumeError,
    UsageError,
)
from aiobisque.fetch import ByteBudget
from aiobisque.outputs import (
    CHUNK_BYTES,
    TABLE_ONLY_FORMATS,
    NpyOutput,
    output_format,
)
from aiobisque.plan import Plan, ResumedPlan, make_plan, request_size
from aiobisque.progress import DownloadStats, Meter, counted
from aiobisque.protocol import ArrayInfo, not_an_array, parse_resource_ts, parse_uniq, split_path
from aiobisque.resume import Course, Courses, sibling
from aiobisque.retry import is_permanent
from aiobisque.selection import Selection
from aiobisque.slices import parse_slices
from aiobisque.table import RemoteArray, TableService

__all__ = [
    "MIN_BLOCK_BYTES",
    "BulkDownloader",
    "FileResult",
    "OutputExistsError",
    "ResumeError",
    "Target",
    "default_block_bytes",
    "default_blocks_in_flight",
]

log = logging.getLogger("aiobisque")

T = TypeVar("T")

#: Smallest block: below this, syncing and journaling each block would cost more than it saves.
MIN_BLOCK_BYTES = 1024 * 1024

#: Seconds between journal entries of the rows that landed in blocks in flight (``.npy``):
#: after a kill, at most this long a download's worth of arrived rows is fetched again.
CHECKPOINT_SECONDS = 0.1

#: One block in this many is saved with a checksum (see :func:`block_digest`).
DIGEST_EVERY = 16

#: Errors that fail one file of a bulk run without stopping the others.
FILE_ERRORS: tuple[type[BaseException], ...] = (BisqueError, OSError)
def _pipeline_bytes(config: Config) -> int:
    """Payload bytes the session can have in flight."""
    return min(config.concurrency * config.request_bytes, config.inflight_bytes)


def default_block_bytes(config: Config) -> int:
    """Bytes per block: two requests' worth (at least :data:`MIN_BLOCK_BYTES`).

    Small blocks are synced and unmapped soon after their data arrives, which is what
    keeps the resident memory near the session's in-flight budget.
    """
    return max(MIN_BLOCK_BYTES, 2 * config.request_bytes)


def default_blocks_in_flight(config: Config, block_bytes: int) -> int:
    """Blocks fetched at once: enough to keep every allowed request busy (at least two)."""
    return max(2, -(-_pipeline_bytes(config) // block_bytes))


@dataclass(frozen=True)
class Target:
    """One download to a file.

    ``slices`` is numpy index text (``"10:20, :, -1"``; empty: everything). ``dataset`` and
    ``compression`` apply to HDF5 outputs (default dataset name: the path's last component).
    ``columns`` names the columns of a table to keep (default: all); arrays have none.
    """

    uniq: str
    path: str
    output: Path
    slices: str = ""
    dataset: str | None = None
    compression: str | None = None
    columns: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.columns is not None:
            object.__setattr__(self, "columns", tuple(self.columns))
        object.__setattr__(self, "output", Path(self.output))
        object.__setattr__(self, "uniq", parse_uniq(self.uniq))
        if not split_path(self.path):
            raise UsageError(f"no HDF path given for {self.uniq} (which array to download?)")
        output_format(self.output)
        parse_slices(self.slices)
        if self.compression not in (None, "gzip", "lzf"):
            raise UsageError(f"compression must be gzip, lzf or none, got {self.compression!r}")
        if output_format(self.output) != "hdf5":
            # silently writing an uncompressed .npy would hide the mistake
            for name in ("compression", "dataset"):
                if getattr(self, name) is not None:
                    raise UsageError(f"{name} applies to .h5/.hdf5 outputs, not {self.output}")

    @property
    def index(self) -> tuple[Any, ...]:
        return parse_slices(self.slices)

    @property
    def where(self) -> str:
        return f"{self.uniq}/{'/'.join(split_path(self.path))}"


@dataclass
class FileResult:
    """What one download to a file did."""

    target: Target
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    blocks: int
    resumed_blocks: int = 0
    #: bytes an earlier run had saved (resumed blocks): not fetched, not in the rate
    resumed_bytes: int = 0
    skipped: bool = False  # the output already held this download
    stats: DownloadStats = field(default_factory=DownloadStats)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def __str__(self) -> str:
        what = f"{self.target.output}: {self.shape} {self.dtype}, {_size(self.nbytes)}"
        if self.skipped:
            return f"{what}, already downloaded"
        s = self.stats
        fetched = max(0, self.nbytes - self.resumed_bytes)
        rate = _size(int(fetched / s.seconds)) + "/s" if s.seconds > 0 else "-"
        resumed = (f"; resumed: {_size(self.resumed_bytes)} were already saved "
                   f"({self.resumed_blocks}/{self.blocks} blocks)") if self.resumed_blocks \
            else ""
        return (f"{what}: fetched {_size(fetched)} in {s.seconds:.1f} s ({rate}), "
                f"{counted(s.requests, 'request')}, {counted(s.retries, 'retry', 'retries')}"
                f"{resumed}")


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


#: threads for file work: mostly waiting for fsync (which releases the GIL), so many more
#: than cores pay when many small files are saved at once
FILE_THREADS = 32
_FILE_POOL: list[ThreadPoolExecutor] = []


def _file_threads() -> ThreadPoolExecutor:
    if not _FILE_POOL:
        _FILE_POOL.append(ThreadPoolExecutor(FILE_THREADS, thread_name_prefix="aiobisque-file"))
    return _FILE_POOL[0]


if hasattr(os, "register_at_fork"):
    # a forked child has none of the pool's threads: work queued to them would never run
    os.register_at_fork(after_in_child=_FILE_POOL.clear)


async def _in_thread(fn: Callable[[], T]) -> T:
    """Run blocking file work in a thread; never return while that thread still runs.

    A cancelled caller waits for the thread to finish, so the output is never closed
    under a write.
    """
    fut = asyncio.get_running_loop().run_in_executor(_file_threads(), fn)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        await asyncio.wait([fut])
        if not fut.cancelled():
            fut.exception()  # retrieved: the cancellation is what the caller hears about
        raise




class BulkDownloader:
    """Downloads remote arrays to files on one session's table service.

    ``block_bytes`` sets the block size (default :func:`default_block_bytes`); at most
    ``blocks_in_flight`` blocks (default :func:`default_blocks_in_flight`) are fetched at
    once, and their buffers are shared by all downloads of this downloader, so memory
    stays near the session's in-flight budget however many files run. ``restart=True``
    discards partial downloads and replaces existing outputs instead of resuming or
    skipping them.
    """

    def __init__(
        self,
        table: TableService,
        *,
        block_bytes: int | None = None,
        blocks_in_flight: int | None = None,
        meter: Meter | None = None,
        restart: bool = False,
    ):
        config = table.session.config
        self.table = table
        self.block_bytes = block_bytes or default_block_bytes(config)
        self.blocks_in_flight = blocks_in_flight or default_blocks_in_flight(
            config, self.block_bytes)
        if self.block_bytes < 1 or self.blocks_in_flight < 1:
            raise UsageError("block_bytes and blocks_in_flight must be positive")
        self.meter = meter or Meter()
        self.restart = restart
        self._buffers = ByteBudget(self.block_bytes * self.blocks_in_flight)
        self._courses = Courses(
            root=table.session.root, restart=restart, block_bytes=self.block_bytes,
            # HDF5 chunks no larger than a block, so no chunk is ever shared by two blocks
            chunk_bytes=min(CHUNK_BYTES, self.block_bytes))

    # -- one file -------------------------------------------------------------------

    async def download(self, target: Target) -> FileResult:
        """Download ``target`` to its file, resuming a ``.part`` file left by an earlier run.

        Everything that can be checked without data (the array's info, the selection, an
        existing output or ``.part`` file) is checked before any file is created. Raises
        :class:`ResumeError` when the ``.part`` file belongs to another request or its
        remote array changed, :class:`OutputExistsError` when the output exists and is not
        provably this download, and the usual :class:`~aiobisque.BisqueError` subclasses.
        After a failure a rerun could get past (see :func:`aiobisque.retry.is_permanent`) the ``.part`` file
        and journal stay for the next run; after a permanent one before any block was saved
        both are deleted.
        """
        started = time.perf_counter()
        out = target.output
        if not out.parent.is_dir():
            raise UsageError(f"cannot write {out}: folder {out.parent} does not exist")
        # the version is asked for alongside the info: one round trip for both
        asking = asyncio.ensure_future(self.remote_version(target.uniq))
        try:
            info = await self.table.info(target.uniq, target.path)
        except BaseException:
            asking.cancel()
            await asyncio.wait([asking])
            raise
        version = await asking
        if info.kind == "table":
            return await self._download_table(target, info, started, version)
        if info.kind != "matrix":
            raise not_an_array(info)
        if target.columns is not None:
            raise UsageError(f"{target.where} is an array: columns apply to tables only")
        if output_format(out) in TABLE_ONLY_FORMATS:
            raise UsageError(f"{out}: {output_format(out)} outputs are for tables, and "
                             f"{target.where} is an array; write it to .npy or .h5")
        arr = RemoteArray(self.table, info)
        arr.check_readable()  # before any file is made
        prepared: list[Course] = []

        def prepare() -> Course:
            prepared.append(self._courses.prepare(target, arr, version))
            return prepared[-1]

        try:
            state = await _in_thread(prepare)
        except asyncio.CancelledError:
            for s in prepared:  # the thread finished, but its result never reached us
                s.close()
            raise
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            raise _not_writable(out, exc) from None
        try:
            shape, dtype = state.sel.shape, arr.dtype
            if state.skipped:
                log.info("%s already holds %s; skipped", out, target.where)
                self.meter.add(0, 0)
                self.meter.file_done()
                return FileResult(target, shape, dtype, len(state.grid), skipped=True)
            journal, output = state.journal, state.output
            assert journal is not None and output is not None
            resumed_bytes = sum(math.prod(state.grid.block_shape(b)) for b in journal.done) \
                * dtype.itemsize
            # the data service's ts vouched for the version (a changed one was refused in
            # prepare); without it, one saved block is fetched again and compared
            known = version is not None and bool((journal.header or {}).get("remote_version"))
            result = FileResult(target, shape, dtype, len(state.grid),
                                resumed_blocks=len(journal.done), resumed_bytes=resumed_bytes)
            try:
                if journal.done and not known:
                    await self._check_saved_block(arr, state)
                await self._fill(arr, state, result.stats)
                if len(journal.done) != len(state.grid):  # pragma: no cover - defensive
                    raise IncompleteDownloadError(f"{target.where}: only {len(journal.done)} "
                                                  f"of {len(state.grid)} blocks done")
                await _in_thread(lambda: output.finish(out))
            except ResumeError:
                raise  # the saved blocks are of another version: resuming cannot help
            except FILE_ERRORS as exc:
                await _in_thread(functools.partial(self._failed, exc, state, out))
                raise
            await _in_thread(journal.remove)
            result.stats.seconds = time.perf_counter() - started
            result.stats.complete = True
            self.meter.file_done()
            log.info("saved %s", result)
            return result
        finally:
            state.close()

    async def _download_table(self, target: Target, info: ArrayInfo, started: float,
                              version: dict[str, Any] | None) -> FileResult:
        """A table, in row blocks resumed like an array's (see :mod:`aiobisque.table_download`)."""
        from aiobisque.table_download import download_table

        return await download_table(self, target, info, started, version)

    def _request_bytes(self, state: Course, itemsize: int) -> int:
        """Bytes per request for a file: ``request_bytes``, or less for a small file, so
        that as many requests as the window starts with share it (as for in-memory
        reads). Depends on the selection and the session's options only, so a rerun plans
        the same requests and the rows journaled for them still apply."""
        config = self.table.session.config
        return request_size(state.sel.size * itemsize, config.request_bytes,
                            config.concurrency)

    async def remote_version(self, uniq: str) -> dict[str, Any] | None:
        """What identifies a resource's version: its ``ts`` from the data service.

        ``None`` when the server has no data service or does not answer it (a re-read
        saved block still guards a resume then).
        """
        session = self.table.session
        base = session.services.get("data_service")
        if base is None:
            return None
        url = (base if base.endswith("/") else base + "/") + uniq
        config = session.config.replace(
            retry=dataclasses.replace(session.config.retry, max_attempts=3))
        try:
            body = await session.get_document(url, f"the resource document of {uniq}", config)
            ts = parse_resource_ts(bytes(body), url)
        except BisqueError as exc:
            log.info("no version of %s from the data service (%s)", uniq, exc)
            return None
        return {"ts": ts} if ts else None

    async def _check_saved_block(self, arr: RemoteArray, state: Course) -> None:
        """Before resuming, fetch one saved block again: its values must be unchanged.

        Used when the data service gave no ``ts`` (then or now) to vouch for the version.
        The last block saved with a checksum is downloaded once more (one block, a few
        MiB) and compared; other values mean the remote changed with the same shape and
        type, and resuming would mix two versions.
        """
        journal, grid, output = state.journal, state.grid, state.output
        assert journal is not None and output is not None
        saved = [b for b in journal.digests if b in journal.done]
        if not saved:
            return
        block = max(saved)
        config = self.table.session.config
        sub = state.sel.narrow(grid.region(block))
        buf = np.empty(grid.block_shape(block), dtype=output.dtype)
        held = await self._buffers.acquire(buf.nbytes)
        try:
            await arr.fill(sub, buf, config=config,
                           plan=make_plan(sub, arr.dtype.itemsize,
                                          self._request_bytes(state, arr.dtype.itemsize)))
            now = await _in_thread(lambda: block_digest(buf))
        finally:
            await self._buffers.release(held)
        if now != journal.digests[block]:
            part = output.part
            raise ResumeError(
                f"the remote array {arr.info.uniq}/{arr.info.path} changed since {part} was "
                f"started: block {block} of the selection (at {_region_text(grid, block)}) "
                "holds other values now, with the same shape and type; resuming would mix "
                "two versions, so rerun with --restart to download it again from scratch")
        log.info("resume check: block %d of %s still holds the same values", block,
                 output.part)

    def _failed(self, exc: BaseException, state: Course, out: Path) -> None:
        """Say what a failed download left behind, or remove it when it is useless."""
        assert state.journal is not None
        part = sibling(out, ".part")
        done, total = len(state.journal.done), len(state.grid)
        if not is_permanent(exc, self.table.session.config.retry):
            exc.add_note(f"{done} of {total} blocks are saved in {part}; "
                         "rerun the same command to resume")
        elif done:
            # e.g. credentials revoked half way: the blocks are good once the cause is fixed
            exc.add_note(f"{done} of {total} blocks are kept in {part}")
        else:
            # rerunning cannot get further and nothing was saved: the preallocated
            # .part file (as large as the selection) would only be litter
            state.close()
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
            state.journal.remove()
            log.info("removed %s: the download failed for good before any block was saved",
                     part)


    async def _fill(self, arr: RemoteArray, state: Course, stats: DownloadStats) -> None:
        """Download every block the journal does not have yet."""
        grid, journal, output = state.grid, state.journal, state.output
        assert journal is not None and output is not None
        config = self.table.session.config
        itemsize = arr.dtype.itemsize
        rb = self._request_bytes(state, itemsize)

        def plan_of(block: int) -> tuple[Selection, Plan]:
            sub = state.sel.narrow(grid.region(block))
            return sub, make_plan(sub, itemsize, rb)

        # Planned lazily, one block as it is taken: a server declaring terabytes costs
        # no memory or time before the first request. A plan's size depends only on the
        # block's shape (the selection's strides are the same everywhere), and a grid has
        # at most two block shapes, so the totals come from one plan of each.
        sizes: dict[tuple[int, ...], tuple[int, int]] = {}
        counts = grid.shape_counts()
        for shape in counts:
            block = next(b for b in (0, len(grid) - 1) if grid.block_shape(b) == shape)
            plan = plan_of(block)[1]
            sizes[shape] = (plan.nbytes, len(plan))
        total_bytes = sum(sizes[k][0] * n for k, n in counts.items())
        total_requests = sum(sizes[k][1] * n for k, n in counts.items())
        done_bytes = sum(sizes[grid.block_shape(b)][0] for b in journal.done)
        done_requests = sum(sizes[grid.block_shape(b)][1] for b in journal.done)
        self.meter.add(total_bytes, total_requests, done_bytes, done_requests)
        stats.out_bytes = math.prod(grid.shape) * itemsize
        todo = len(grid) - len(journal.done)
        pending = (b for b in range(len(grid)) if b not in journal.done)
        commits = asyncio.Lock()  # HDF5 writes to one file are serialised anyway
        committed = 0
        # A .npy block's buffer maps the file itself, so the rows that have landed are on
        # disk once synced: blocks in flight are journaled row by row (every
        # CHECKPOINT_SECONDS), and a resume asks only for the rows still missing.
        finer = isinstance(output, NpyOutput)
        inflight: dict[int, _InFlight] = {}

        async def fetch(block: int) -> None:
            sub, full_plan = plan_of(block)
            plan: Plan = full_plan
            base: dict[int, int] = {}
            noted = journal.partial.get(block)
            if finer and noted is not None and noted[0] == rb:
                base = noted[1]  # rows of this block's requests saved by an earlier run
                plan = ResumedPlan(full_plan.selection, full_plan.itemsize, full_plan.tiles,
                                   landed=base)
            out_bytes = math.prod(grid.block_shape(block)) * itemsize
            key = (id(state), block)
            held = await self._buffers.acquire(out_bytes)
            try:
                buf = output.buffer(grid, block)
                block_stats = DownloadStats()
                ledger = Ledger() if finer else None
                if ledger is not None:
                    inflight[block] = _InFlight(full_plan, base, ledger, buf)
                try:
                    # the block's buffer is ours: a failed block is simply fetched again
                    # next time, so the request's own error is what the caller hears
                    await arr.fill(sub, buf, config=config, plan=plan,
                                   progress=lambda p: self.meter.partial(key, p),
                                   stats=block_stats, ledger=ledger)
                finally:
                    inflight.pop(block, None)
                    stats.add(block_stats)

                def commit() -> None:
                    nonlocal committed
                    # a checksum for one block in DIGEST_EVERY (the first included): what
                    # a resume fetches again to tell whether the remote changed
                    digest = block_digest(buf) if committed % DIGEST_EVERY == 0 else None
                    output.commit(grid, block, buf)
                    journal.mark(block, digest)
                    committed += 1

                async with commits:
                    await _in_thread(commit)
                self.meter.block_done(key, full_plan.nbytes, block_stats.requests,
                                      block_stats.retries)
            finally:
                self.meter.block_dropped(key)
                await self._buffers.release(held)

        async def worker() -> None:
            for block in pending:  # shared iterator: each block is taken by one worker
                await fetch(block)

        async def checkpoints() -> None:
            noted: dict[int, dict[int, int]] = {}
            while True:
                await asyncio.sleep(CHECKPOINT_SECONDS)
                async with commits:  # never beside a commit (it unmaps the buffer)
                    # counted before the sync: all of it is synced
                    changed = {block: (flight, rows) for block, flight in inflight.items()
                               if (rows := flight.rows())
                               and rows != noted.get(block, flight.base)}
                    if not changed:
                        continue

                    def note(changed: dict[int, tuple[_InFlight, dict[int, int]]] = changed
                             ) -> None:
                        for flight, _ in changed.values():
                            if isinstance(flight.buf, np.memmap):
                                flight.buf.flush()  # msync: the rows are on disk first
                        journal.note_rows(rb,
                                          {b: rows for b, (_, rows) in changed.items()})

                    await _in_thread(note)
                for block, (_, rows) in changed.items():
                    noted[block] = rows

        n_workers = min(self.blocks_in_flight, todo)
        checkpointer = asyncio.ensure_future(checkpoints()) if finer and todo else None
        try:
            await run_all([worker for _ in range(n_workers)])
        finally:
            if checkpointer is not None:
                checkpointer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await checkpointer

    # -- many files -------------------------------------------------------------------

    async def download_all(
        self, targets: Iterable[Target], *, jobs: int | None = None
    ) -> list[FileResult | BaseException]:
        """Download several targets concurrently.

        ``jobs`` files at a time, or by default as many as keep the session's adaptive
        window busy (twice its current size: a file spends part of its time on its own
        disk work, and the window grows only while requests queue for it). One file
        failing (any :class:`~aiobisque.BisqueError` or ``OSError``) does not stop the
        others: its exception takes its place in the returned list. Cancellation stops
        everything, leaving ``.part`` files to resume.
        """
        targets = list(targets)
        if jobs is not None and jobs < 1:
            raise UsageError(f"jobs must be >= 1, got {jobs}")
        _check_distinct(targets)
        limiter = self.table.session.transport.limiter
        gate = _Gate((lambda: jobs) if jobs is not None else (lambda: 2 * limiter.limit))

        async def one(target: Target) -> FileResult | BaseException:
            async with gate:
                try:
                    return await self.download(target)
                except FILE_ERRORS as exc:
                    log.info("%s failed: %s", target.output, exc)
                    return exc

        return list(await asyncio.gather(*(one(t) for t in targets)))


class _Gate:
    """At most ``limit()`` holders at once, first come first served; the limit may change
    between calls (it is asked again whenever a holder leaves)."""

    def __init__(self, limit: Callable[[], int]):
        self.limit = limit
        self.active = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def __aenter__(self) -> None:
        if self.active >= max(1, self.limit()) or self._waiters:
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut  # the slot is handed over by __aexit__, already counted
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    await self.__aexit__()  # woken and cancelled at once: pass it on
                elif fut in self._waiters:  # a leaving holder may have skipped it already
                    self._waiters.remove(fut)
                raise
            return
        self.active += 1

    async def __aexit__(self, *exc: object) -> None:
        self.active -= 1
        while self._waiters and self.active < max(1, self.limit()):
            fut = self._waiters.popleft()
            if not fut.done():
                self.active += 1
                fut.set_result(None)


def _not_writable(out: Path, exc: OSError) -> UsageError:
    """The error for an output folder the user may not write (named as the user named it)."""
    return UsageError(
        f"cannot write {out}: {exc.strerror or 'permission denied'} in {out.parent} (for "
        f"{Path(exc.filename).name if exc.filename else 'its working files'}); choose "
        "another output (-o) or make the folder writable")


def _check_distinct(targets: Sequence[Target]) -> None:
    seen: dict[str, int] = {}
    for i, t in enumerate(targets):
        key = os.path.realpath(t.output)  # through symlinks: the same file is the same
        if key in seen:
            raise UsageError(f"downloads {seen[key] + 1} and {i + 1} both write {t.output}")
        seen[key] = i




@dataclass
class _InFlight:
    """A block being fetched into a ``.npy`` map: which rows of it are in the file."""

    plan: Plan
    base: dict[int, int]  # rows each request had from an earlier run
    ledger: Ledger
    buf: np.ndarray[Any, Any]

    def rows(self) -> dict[int, int]:
        """Request index -> rows of it (along its row axis) in the output now."""
        out: dict[int, int] = {}
        for req in self.plan:
            axis = req.row_axis
            full = req.tiles[axis].length if axis is not None else 1
            before = self.base.get(req.index, 0)
            if before >= full:
                out[req.index] = full
                continue
            sent = req.skip_rows(before) if before > 0 and axis is not None else req
            rows = min(full, before + self.ledger.rows(sent))
            if rows:
                out[req.index] = rows
        return out


def block_digest(buf: np.ndarray[Any, Any]) -> str:
    """A checksum of a block's values (CRC-32 of its bytes: fast, and enough to tell a
    changed remote from the same one)."""
    data = np.ascontiguousarray(buf).reshape(-1).view(np.uint8)
    return f"crc32:{zlib.crc32(data.data):08x}"


def _region_text(grid: Any, block: int) -> str:
    return "[" + ", ".join(f"{s.start}:{s.stop}" for s in grid.region(block)) + "]"
