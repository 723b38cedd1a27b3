"""Running a plan: requests fetched concurrently, decoded off the loop, copied into the output.

:func:`run_plan` starts at most ``concurrency`` workers that pull requests from the plan.
Each request holds a share of the session's byte budget from before it is sent until its
data is in the output, and a limiter slot while it talks to the server. When one request
fails for good, the other workers are cancelled at once (no new request is sent), their
in-flight requests are closed, and the first error is raised.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

import numpy as np

from aiobisque.config import Config
from aiobisque.decode import StreamDecoder
from aiobisque.errors import BisqueError, DownloadError
from aiobisque.fetch import ByteBudget, Transport
from aiobisque.plan import Plan, Request
from aiobisque.progress import DownloadStats, Progress, ProgressCallback
from aiobisque.retry import RetryBudget, is_permanent, retrying, why_stopped

__all__ = ["Ledger", "run_all", "run_plan"]

#: Room allowed for an HDF5 image's metadata around the payload it carries.
_HEADER_ALLOWANCE = 1024 * 1024


class Ledger:
    """Which rows of each request of a plan are in the output already (event loop only).

    A request's data lands as a prefix of its rows (see :attr:`Request.row_axis
    <aiobisque.plan.Request.row_axis>`): whole for a finished request, in part for one
    whose body is still arriving or was cut. The bulk downloader reads this to journal a
    block's progress at a finer grain than whole requests.
    """

    def __init__(self) -> None:
        self.done: set[int] = set()
        self._live: dict[int, Callable[[], int]] = {}

    def rows(self, req: Request) -> int:
        """Rows of ``req`` (along its row axis; 1 for a single element) in the output."""
        axis = req.row_axis
        full = req.tiles[axis].length if axis is not None else 1
        if req.index in self.done:
            return full
        live = self._live.get(req.index)
        if live is None or axis is None:
            return 0
        return min(full, live() // req.row_bytes())


class _Tracker:
    """Progress and stats of one download (single-threaded: event loop only)."""

    def __init__(self, plan: Plan, stats: DownloadStats, callback: ProgressCallback | None):
        self.stats = stats
        self.callback = callback
        self.total_bytes = plan.nbytes
        self.total_requests = len(plan)
        self.done_bytes = 0
        self.done_requests = 0
        self.active_requests = 0  # sent, not answered yet
        self._last_report = 0
        self._last_time = 0.0

    def report(self, force: bool = False) -> None:
        if self.callback is None:
            return
        now = time.monotonic()
        # at most every MiB, or every 0.1 s on a slow link, so the figures keep moving
        if not force and self.done_bytes - self._last_report < 1024 * 1024 \
                and now - self._last_time < 0.1:
            return
        self._last_report = self.done_bytes
        self._last_time = now
        self.callback(
            Progress(self.done_bytes, self.total_bytes, self.done_requests,
                     self.total_requests, self.stats.retries, self.active_requests)
        )


async def run_plan(
    transport: Transport,
    plan: Plan,
    url_for: Callable[[Request], str],
    out_core: np.ndarray[Any, Any],
    dtype: np.dtype[Any],
    *,
    config: Config,
    executor: Executor | None,
    where: str,
    progress: ProgressCallback | None = None,
    stats: DownloadStats | None = None,
    ledger: Ledger | None = None,
) -> DownloadStats:
    """Fill ``out_core`` (shaped like the selection's core) with every request of ``plan``.

    ``ledger``, when given, is kept up to date with the rows of each request in the output.
    """
    stats = stats if stats is not None else DownloadStats()
    stats.requests = len(plan)
    stats.complete = False
    stats.out_bytes = plan.out_nbytes
    tracker = _Tracker(plan, stats, progress)
    budget = RetryBudget(config.retry.download_budget(len(plan)))
    loop = asyncio.get_running_loop()
    requests = iter(plan)
    started = time.perf_counter()
    call_bytes = (ByteBudget(config.inflight_bytes)
                  if config.inflight_bytes < transport.bytes.capacity else None)
    # what this plan's bodies did: [one streamed into the output, one had to be held whole]
    seen = [False, False]

    async def fetch(req: Request) -> None:
        what = f"{where} {req}"
        received = 0  # progress credited to this request: payload bytes, header excluded
        kept = 0  # payload bytes of req already in the output, from bodies cut short
        current = req  # what the next attempt asks for: req without the rows that arrived
        decoder: StreamDecoder | None = None
        if ledger is not None:
            # bytes of req in the output: what cut bodies left, plus the body arriving
            ledger._live[req.index] = lambda: kept + (decoder.landed if decoder else 0)

        payload = req.nbytes  # a property (a product over the tiles): once, not per piece
        report = tracker.report if tracker.callback is not None else None

        def on_bytes(n: int) -> None:
            nonlocal received
            stats.bytes += n
            credit = min(n, payload - received)
            received += credit
            tracker.done_bytes += credit
            if report is not None:
                report()

        def on_retry(exc: BisqueError, attempt: int, delay: float) -> None:
            nonlocal received, kept, current
            # a body cut short streamed a prefix of its rows into the output: the retry
            # asks only for the rows still missing (a smaller range)
            rows = 0
            axis = current.row_axis
            if decoder is not None and axis is not None and decoder.length is not None \
                    and decoder.received < decoder.length:
                rows = decoder.landed // current.row_bytes()
                if rows >= current.tiles[axis].length:
                    rows = 0  # all data there, the body's tail missing: ask again
            if rows:
                kept += rows * current.row_bytes()
                stats.kept_bytes += rows * current.row_bytes()
                current = current.skip_rows(rows)
            tracker.done_bytes -= received - kept  # roll back all but what was kept
            received = kept
            stats.retries += 1
            stats.errors.append(f"{req}: {exc}")
            tracker.report(force=True)

        attempts = 0

        async def attempt() -> None:
            nonlocal attempts, decoder
            attempts += 1
            stats.attempts += 1  # a retried attempt's progress was rolled back in on_retry
            sent = current
            nbytes = sent.nbytes  # a product over the tiles: once
            view_index: tuple[Any, ...] = (*sent.out_sel, Ellipsis)  # a view, even 0-d
            decoder = StreamDecoder(shape=sent.chunk_shape, dtype=dtype,
                                    dest=out_core[view_index], chunk_sel=sent.chunk_sel,
                                    where=what, verify_checksum=config.verify_checksum)
            # the byte budget bounds the memory of bodies held whole; a body streamed into
            # the output holds none, so those are bounded by the window alone. Whether the
            # server's bodies stream is known only once one has: until then every body
            # counts (a server whose bodies are all held whole would otherwise have a whole
            # window of them in memory, uncounted), and once one was held whole, all do.
            # (a body waiting for the budget stops waiting once one has streamed)
            counted = not seen[0] or seen[1] or not decoder.streams
            unless = (lambda: seen[0] and not seen[1]) if decoder.streams else None
            held_call = held = 0
            try:
                if counted:
                    # a call may hold fewer bytes than the session allows all calls together
                    if call_bytes:
                        held_call = await call_bytes.acquire(nbytes, unless)
                    if held_call or not call_bytes:
                        held = await transport.bytes.acquire(nbytes, unless)
                active = False

                def on_sent() -> None:
                    nonlocal active
                    active = True
                    tracker.active_requests += 1
                    tracker.report(force=True)  # "in flight" moves at once, before any byte

                try:
                    await transport.get(
                        url_for(sent),
                        what=what,
                        max_body=nbytes + _HEADER_ALLOWANCE,
                        sink=decoder,
                        on_bytes=on_bytes,
                        config=config,
                        expected_bytes=nbytes,
                        on_sent=on_sent,
                    )
                finally:
                    if active:
                        tracker.active_requests -= 1
                if not decoder.heavy:
                    decoder.finish()  # streamed, metadata known: nothing left worth a thread
                else:
                    fut = loop.run_in_executor(executor, decoder.finish)
                    try:
                        await asyncio.shield(fut)
                    except asyncio.CancelledError:
                        # never return while a worker thread still writes into the output
                        await asyncio.wait([fut])
                        raise
            finally:
                verdict = not seen[0]
                if decoder.mode == "buffer":
                    seen[1] = True
                elif decoder.mode == "direct":
                    seen[0] = True
                if verdict and seen[0]:  # bodies stream: those waiting for bytes need none
                    await transport.bytes.wake()
                    if call_bytes:
                        await call_bytes.wake()
                if held:
                    await transport.bytes.release(held)
                if call_bytes and held_call:
                    await call_bytes.release(held_call)

        try:
            await retrying(attempt, config.retry, budget=budget, on_retry=on_retry)
        except BisqueError as exc:
            if is_permanent(exc, config.retry):
                raise  # the request itself is wrong: that error, as it is
            why = why_stopped(exc, config.retry, budget)
            why = f" ({why})" if why else ""
            last = exc.message.removeprefix(what).lstrip(": ")  # not the request twice
            raise DownloadError(
                f"{what} failed after {attempts} attempt(s){why}; last error: {last}",
                url=exc.url, status=exc.status, request=req.range_text, attempts=attempts,
            ) from exc
        decoder = None
        if ledger is not None:
            ledger.done.add(req.index)
            ledger._live.pop(req.index, None)
        tracker.done_requests += 1
        tracker.report()

    async def worker() -> None:
        for req in requests:  # shared iterator: each request is taken by one worker
            await fetch(req)

    n_workers = min(config.concurrency, len(plan))
    try:
        await run_all([worker for _ in range(n_workers)])
    finally:
        stats.seconds = time.perf_counter() - started
        stats.peak_in_flight = max(stats.peak_in_flight, transport.limiter.peak)
    stats.complete = True
    tracker.report(force=True)
    return stats


async def run_all(workers: list[Callable[[], Any]]) -> None:
    """Run coroutines concurrently; on the first failure cancel the rest and raise it.

    Whatever happens (failure, cancellation of the caller) every task has finished when
    this returns, so no request outlives the download.
    """
    tasks = [asyncio.ensure_future(w()) for w in workers]
    if not tasks:
        return
    cancelled_again = False
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for t in tasks:
            t.cancel()
        while True:  # even if cancelled again meanwhile: no worker may outlive this call
            try:
                await asyncio.wait(tasks)
                break
            except asyncio.CancelledError:
                cancelled_again = True
        # retrieve every task's exception (two workers may fail together, or fail while the
        # caller is being cancelled), so none is reported as "never retrieved"
        errors = [t.exception() for t in tasks if not t.cancelled()]
    if cancelled_again:
        raise asyncio.CancelledError
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise first
