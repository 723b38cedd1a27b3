"""The limits of a session under load and faults (#15): the limiter, the file gate, the byte budget."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from aiobisque import BisqueSession, Config, RetryPolicy, download
from aiobisque.bulk import _Gate
from aiobisque.fetch import Limiter
from aiobisque.server import FaultPlan, TableServer, run_server
from tests.conftest import FAST_RETRY, USER, USERS, expected


async def test_gate_waiter_cancelled_after_its_future_was_skipped() -> None:
    # Ctrl-C of download_all cancels every file at once: a holder leaving the gate pops the
    # (already cancelled) futures of the waiters before those run their except clause
    gate = _Gate(lambda: 1)
    entered = asyncio.Event()
    leave = asyncio.Event()

    async def holder() -> None:
        async with gate:
            entered.set()
            await leave.wait()

    async def waiter() -> None:
        async with gate:
            pass  # pragma: no cover - never gets in

    h = asyncio.create_task(holder())
    await entered.wait()
    w = asyncio.create_task(waiter())
    await asyncio.sleep(0)  # the waiter queues
    assert len(gate._waiters) == 1
    h.cancel()  # gather's children are cancelled in order: the holder runs first...
    w.cancel()  # ...the waiter's future is cancelled now, its except clause runs later
    results = await asyncio.gather(h, w, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results), results
    assert gate.active == 0 and not gate._waiters


async def test_bodies_held_whole_stay_within_inflight_bytes(
        data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a server whose images cannot stream (gzip-chunked): every body is held whole, and
    # those bodies must be bounded by inflight_bytes from the first one on, not only once
    # the first has ended (16 bodies of the first window were held uncounted)
    held = [0, 0]  # bodies held whole now, most at once

    class Tracking(download.StreamDecoder):
        whole = False

        def feed(self, piece: bytes) -> None:
            super().feed(piece)
            if self.mode == "buffer" and not self.whole:
                self.whole = True
                held[0] += 1
                held[1] = max(held[1], held[0])

        def finish(self) -> None:
            if self.whole:
                held[0] -= 1
            super().finish()

    monkeypatch.setattr(download, "StreamDecoder", Tracking)
    async with run_server(data_dir, users=USERS, hdf_layout="chunked") as srv:
        cfg = Config(retry=FAST_RETRY, inflight_bytes=2 * 2400)
        async with BisqueSession(srv.root, auth=USER, config=cfg) as bq:
            got = await bq.table.load_array("vol", "volume", request_bytes=2400)  # 40 requests
            assert got.tobytes() == expected(data_dir, "vol", "volume").tobytes()
            assert bq.transport.limiter.in_flight == 0 and bq.transport.limiter.counted == 0
            assert bq.transport.bytes.used == 0
    assert held[1] <= 2, f"{held[1]} bodies held whole at once, inflight_bytes allows 2"


@pytest.mark.parametrize("seed", range(3))
async def test_limiter_accounting_under_hand_over_and_faults(server: TableServer,
                                                             data_dir: Path,
                                                             seed: int) -> None:
    # slow bodies (hand-overs happen) cut, reset, refused and stalled: every slot comes back
    # and the ceiling holds, also for a download cancelled in the middle
    server.faults = FaultPlan(seed=seed, latency=0.02, bandwidth=200_000, error_rate=0.1,
                              error_statuses=(500, 503), reset_rate=0.1, truncate_rate=0.1,
                              truncate_framing="mixed", stall_rate=0.05, stall_seconds=0.3)
    cfg = Config(concurrency=5, retry=RetryPolicy(backoff_initial=0.01, backoff_max=0.05,
                                                 max_delay=20, budget_min=1000),
                 read_timeout=0.2)
    handed = [0]
    real = Limiter.hand_over

    def counting(self: Limiter) -> None:
        handed[0] += 1
        real(self)

    Limiter.hand_over = counting  # type: ignore[method-assign]
    try:
        async with BisqueSession(server.root, auth=USER, config=cfg) as bq:
            lim = bq.transport.limiter
            want = expected(data_dir, "vol", "volume")
            loads = [bq.table.load_array("vol", "volume", request_bytes=9600)
                     for _ in range(3)]
            doomed = asyncio.ensure_future(bq.table.load_array("vol", "volume",
                                                               request_bytes=4800))
            await asyncio.sleep(0.3)
            doomed.cancel()
            got = await asyncio.gather(*loads)
            with pytest.raises(asyncio.CancelledError):
                await doomed
            assert all(g.tobytes() == want.tobytes() for g in got)
            assert (lim.in_flight, lim.counted) == (0, 0)
            assert bq.transport.bytes.used == 0
    finally:
        Limiter.hand_over = real  # type: ignore[method-assign]
    assert handed[0] > 0
    assert server.stats.peak_in_flight <= 5


async def test_streamed_bodies_stop_waiting_for_the_budget(server: TableServer,
                                                           bq: BisqueSession) -> None:
    # the converse: bodies that stream take no budget once one has streamed, also those
    # that were already waiting for it (only the first wave is bounded by inflight_bytes)
    server.faults = FaultPlan(latency=0.05)
    await bq.table.load_array("vol", "volume", request_bytes=2400, inflight_bytes=2 * 2400)
    assert server.stats.peak_in_flight > 2
    assert bq.transport.bytes.used == 0
    assert (bq.transport.limiter.in_flight, bq.transport.limiter.counted) == (0, 0)
