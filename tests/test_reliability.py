"""Surviving hostile networks: every fault of the server's plan, bounded in count and time.

Each test downloads through injected faults and demands the exact array, or one clear error.
"""

from __future__ import annotations

import asyncio
import gc
import random
import time
from pathlib import Path

import numpy as np
import pytest

from aiobisque import (
    BisqueSession,
    Config,
    DownloadError,
    DownloadStats,
    RetryPolicy,
    TransportError,
    window,
)
from aiobisque.fetch import Limiter
from aiobisque.server import FaultPlan, TableServer, run_server
from tests.conftest import FAST_RETRY, USER, USERS, expected

# 96,000 bytes in 40 requests of 2,400 bytes
SMALL = {"request_bytes": 2400}


async def download(bq: BisqueSession, **options: object) -> np.ndarray:
    return await bq.table.load_array("vol", "volume", **{**SMALL, **options})


@pytest.fixture
def want(data_dir: Path) -> np.ndarray:
    return expected(data_dir, "vol", "volume")


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
async def test_truncated_bodies_in_every_framing(server: TableServer, bq: BisqueSession,
                                                 want: np.ndarray, framing: str) -> None:
    server.faults = FaultPlan(seed=3, truncate_rate=0.2, truncate_framing=framing)
    stats = DownloadStats()
    got = await download(bq, stats=stats)
    assert got.tobytes() == want.tobytes()
    assert server.stats.faults["truncate"] > 0
    assert stats.retries >= server.stats.faults["truncate"]


async def test_resets_mid_body(server: TableServer, bq: BisqueSession, want: np.ndarray) -> None:
    server.faults = FaultPlan(seed=4, reset_rate=0.25)
    got = await download(bq)
    assert got.tobytes() == want.tobytes()
    assert server.stats.faults["reset"] > 0


async def test_mixed_faults_bit_exact(server: TableServer, bq: BisqueSession,
                                      want: np.ndarray) -> None:
    server.faults = FaultPlan(seed=5, error_rate=0.1, error_statuses=(500, 502, 503, 504),
                              throttle_rate=0.05, retry_after="0", reset_rate=0.05,
                              truncate_rate=0.1, truncate_framing="mixed")
    stats = DownloadStats()
    got = await download(bq, stats=stats, request_bytes=1200)
    assert got.tobytes() == want.tobytes()
    assert stats.retries > 0 and stats.complete


async def test_burst_of_503_then_recovery(server: TableServer, bq: BisqueSession,
                                          want: np.ndarray) -> None:
    server.faults = FaultPlan(fail_first=20, error_statuses=(503,))
    got = await download(bq)
    assert got.tobytes() == want.tobytes()
    assert server.stats.statuses[503] == 20


async def test_keepalive_timeout_closing_pooled_connections(data_dir: Path,
                                                            want: np.ndarray) -> None:
    async with run_server(data_dir, users=USERS, keepalive_timeout=0.05) as srv:
        async with BisqueSession(srv.root, auth=USER, retry=FAST_RETRY) as bq:
            for _ in range(3):
                got = await download(bq, concurrency=4)
                assert got.tobytes() == want.tobytes()
                await asyncio.sleep(0.15)  # the server closes idle pooled connections


async def test_refused_connection_is_one_clear_error(unused_tcp_port: int) -> None:
    policy = RetryPolicy(max_attempts=3, backoff_initial=0.01, backoff_max=0.02)
    started = time.monotonic()
    with pytest.raises(TransportError, match="cannot connect"):
        async with BisqueSession(f"http://127.0.0.1:{unused_tcp_port}", retry=policy):
            pass
    assert time.monotonic() - started < 5


async def test_retry_after_is_honoured(server: TableServer, bq: BisqueSession,
                                       want: np.ndarray) -> None:
    server.faults = FaultPlan(fail_first=1, error_statuses=(429,), retry_after="2")
    # fail_first answers the status without Retry-After; throttle adds it
    server.faults = FaultPlan(seed=0, throttle_rate=1.0, retry_after="2")
    task = asyncio.create_task(download(bq, request_bytes=96000))
    await asyncio.sleep(0.5)
    server.faults = FaultPlan()  # recover after the first 429
    got = await task
    assert got.tobytes() == want.tobytes()
    log = [r for r in server.stats.data_log]
    first_429 = next(r for r in log if r.status == 429)
    retry = next(r for r in log if r.status == 200)
    assert retry.start - first_429.end >= 1.9


async def test_absurd_retry_after_fails_fast(server: TableServer, bq: BisqueSession) -> None:
    server.faults = FaultPlan(throttle_rate=1.0, retry_after="100000")
    started = time.monotonic()
    with pytest.raises(DownloadError, match="asked to wait 100000 s"):
        await download(bq)
    assert time.monotonic() - started < 5


async def test_stalled_response_is_abandoned_and_retried(server: TableServer,
                                                         bq: BisqueSession,
                                                         want: np.ndarray) -> None:
    server.faults = FaultPlan(seed=2, stall_rate=0.2, stall_seconds=30)
    started = time.monotonic()
    got = await download(bq, read_timeout=0.3)
    assert got.tobytes() == want.tobytes()
    assert server.stats.faults["stall"] > 0
    assert time.monotonic() - started < 15


async def test_slow_but_steady_response_is_not_aborted(server: TableServer, bq: BisqueSession,
                                                       want: np.ndarray) -> None:
    # 96 kB at 64 kB/s takes 1.5 s, far beyond the read timeout, but bytes keep coming
    server.faults = FaultPlan(bandwidth=64_000)
    stats = DownloadStats()
    got = await download(bq, request_bytes=96000, read_timeout=0.4, stats=stats)
    assert got.tobytes() == want.tobytes()
    assert stats.retries == 0 and stats.seconds > 1.0


async def test_hard_outage_one_error_within_deadline_then_silence(server: TableServer,
                                                                  bq: BisqueSession) -> None:
    server.faults = FaultPlan(error_rate=1.0, error_statuses=(503,))
    policy = RetryPolicy(max_attempts=100, max_delay=1.5, backoff_initial=0.05, backoff_max=0.2,
                         budget_min=1000)
    started = time.monotonic()
    with pytest.raises(DownloadError, match="503") as info:
        await download(bq, retry=policy)
    assert time.monotonic() - started < 3.5
    assert info.value.request is not None and info.value.attempts >= 2
    sent = server.stats.requests["data"]
    await asyncio.sleep(0.5)
    assert server.stats.requests["data"] == sent  # nothing after the failure


async def test_retry_budget_stops_hammering(server: TableServer, bq: BisqueSession) -> None:
    server.faults = FaultPlan(error_rate=1.0, error_statuses=(500,))
    policy = RetryPolicy(max_attempts=50, backoff_initial=0.001, backoff_max=0.002,
                         budget=0.1, budget_min=5)
    with pytest.raises(DownloadError, match="retry budget"):
        await download(bq, retry=policy, concurrency=4)
    # 40 requests planned: at most the budget plus the first attempts in flight
    assert server.stats.requests["data"] <= 5 + 4 + 4


def client_tasks() -> list[asyncio.Task[object]]:
    """Pending tasks of the client (the in-process server's handlers are not counted)."""
    mine = []
    for t in asyncio.all_tasks():
        if t is asyncio.current_task():
            continue
        frames = t.get_stack(limit=1)
        where = frames[0].f_code.co_filename if frames else ""
        if "aiohttp/web" not in where and "aiobisque/server" not in where:
            mine.append(t)
    return mine


@pytest.mark.parametrize("seed", range(4))
async def test_cancellation_at_random_points_leaves_nothing(server: TableServer,
                                                            bq: BisqueSession,
                                                            seed: int) -> None:
    # 96 kB through a 150 kB/s link: about 0.65 s, cut somewhere inside
    server.faults = FaultPlan(latency=0.01, total_bandwidth=150_000)
    delay = random.Random(seed).uniform(0.01, 0.4)
    out = np.zeros((40, 30, 20), np.float32)
    stats = DownloadStats()
    arr = await bq.table.open("vol", "volume")  # the cut falls in the data transfer
    with pytest.raises(TimeoutError) as info:
        async with asyncio.timeout(delay):
            await arr.read(out=out, stats=stats, concurrency=8, **SMALL)
    assert not stats.complete
    chain = [info.value, info.value.__context__, info.value.__cause__]
    assert any("incomplete" in " ".join(getattr(e, "__notes__", [])) for e in chain if e)
    assert client_tasks() == []
    for _ in range(50):  # the server sees every connection go
        if server.stats.in_flight == 0:
            break
        await asyncio.sleep(0.02)
    assert server.stats.in_flight == 0
    assert bq.transport.limiter.in_flight == 0
    gc.collect()


async def test_task_cancel_mid_download(server: TableServer, bq: BisqueSession) -> None:
    server.faults = FaultPlan(latency=0.05)
    task = asyncio.create_task(download(bq, concurrency=4))
    await asyncio.sleep(0.12)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    sent = server.stats.requests["data"]
    await asyncio.sleep(0.2)
    assert server.stats.requests["data"] == sent
    assert bq.transport.limiter.in_flight == 0 and bq.transport.bytes.used == 0


async def test_adaptive_window_backs_off_and_grows_again(server: TableServer,
                                                          bq: BisqueSession,
                                                          want: np.ndarray) -> None:
    limiter = bq.transport.limiter
    assert limiter.limit == min(window.START, bq.config.concurrency)
    server.faults = FaultPlan(fail_first=30, error_statuses=(503,))
    await download(bq, retry=RetryPolicy(backoff_initial=0.01, backoff_max=0.05, budget_min=100))
    low = limiter.limit
    assert low < window.START
    server.faults = FaultPlan(latency=0.01)
    for _ in range(4):
        got = await download(bq, request_bytes=1200)  # 100 requests: more than the window
    assert got.tobytes() == want.tobytes()
    assert limiter.limit > low


def test_limiter_hands_slots_over_within_its_ceiling() -> None:
    lim = Limiter(4, 1, adaptive=True)
    assert lim.limit == 4
    lim.in_flight = lim.counted = 4
    assert lim._full()
    lim.hand_over()  # a request in its last round trip frees its window slot...
    assert lim.counted == 3 and lim._full()  # ...but the ceiling still counts it
    lim.release("ok", nbytes=10, wait=0.1, handed_over=True)
    assert (lim.in_flight, lim.counted) == (3, 3) and not lim._full()
    lim.release("congested")
    assert (lim.in_flight, lim.counted) == (2, 2) and lim.limit == 2
    fixed = Limiter(4, 1, adaptive=False)
    fixed.in_flight = fixed.counted = 1
    fixed.release("congested")
    assert fixed.limit == 4


async def test_concurrency_limit_holds_under_faults(server: TableServer) -> None:
    server.faults = FaultPlan(seed=9, latency=0.01, error_rate=0.2)
    cfg = Config(concurrency=3, retry=FAST_RETRY)
    async with BisqueSession(server.root, auth=USER, config=cfg) as bq:
        await asyncio.gather(download(bq), download(bq))
    assert server.stats.peak_in_flight <= 3


async def test_progress_rolls_back_on_retry_and_ends_at_the_total(server: TableServer,
                                                                  bq: BisqueSession) -> None:
    from aiobisque import Progress

    server.faults = FaultPlan(seed=3, truncate_rate=0.3, truncate_framing="mixed")
    seen: list[Progress] = []
    stats = DownloadStats()
    await download(bq, progress=seen.append, stats=stats)
    assert stats.retries > 0
    assert all(0 <= p.done_bytes <= p.total_bytes for p in seen)
    assert (seen[-1].done_bytes, seen[-1].total_bytes) == (96000, 96000)
    assert seen[-1].retries == stats.retries


async def test_trickling_body_hits_the_attempt_deadline() -> None:
    """A byte now and then is never a read timeout; the attempt's total deadline ends it."""
    from aiohttp import web

    from tests.hostile import hdf_image, hostile

    payload = hdf_image(np.zeros((4, 3), np.float32))

    async def trickle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": str(len(payload))})
        await resp.prepare(request)
        for i in range(len(payload)):
            await resp.write(payload[i : i + 1])
            await asyncio.sleep(0.1)
        return resp

    policy = RetryPolicy(max_attempts=2, backoff_initial=0.01, backoff_max=0.02)
    async with hostile() as h:
        h.data = trickle
        async with BisqueSession(h.root, auth=USER, retry=policy) as bq:
            started = time.monotonic()
            with pytest.raises(DownloadError, match="deadline of one attempt"):
                await bq.table.load_array("00-x", "array", read_timeout=1.0,
                                          attempt_timeout=0.6)
            assert time.monotonic() - started < 4


async def test_attempt_deadline_grows_with_the_bytes_expected(
        server: TableServer, bq: BisqueSession, want: np.ndarray) -> None:
    # 96 kB at 64 kB/s takes 1.5 s: beyond attempt_timeout, within 96 kB / min_rate = 3 s
    server.faults = FaultPlan(bandwidth=64_000)
    stats = DownloadStats()
    got = await download(bq, request_bytes=96000, attempt_timeout=0.5, min_rate=32_000,
                         stats=stats)
    assert got.tobytes() == want.tobytes()
    assert stats.retries == 0 and stats.seconds > 1.0


async def test_short_outage_at_start_is_ridden_out_with_default_settings(
        server: TableServer, want: np.ndarray) -> None:
    """Every request answered 503 for the first 2 s: with the default policy the backoff
    outlasts it (the retry budget used to be spent within about a second)."""
    server.faults = FaultPlan(error_rate=1.0, error_statuses=(503,))

    async def end_outage() -> None:
        await asyncio.sleep(2.0)
        server.faults = FaultPlan()

    ender = asyncio.create_task(end_outage())
    stats = DownloadStats()
    async with BisqueSession(server.root, auth=USER) as bq:  # Config() as it ships
        got = await download(bq, stats=stats)
    await ender
    assert got.tobytes() == want.tobytes()
    assert server.stats.statuses[503] > RetryPolicy().budget_min  # more than the old budget


@pytest.mark.parametrize("fault", ["truncate", "reset"])
async def test_retry_after_a_cut_body_asks_only_for_the_missing_rows(
        server: TableServer, bq: BisqueSession, want: np.ndarray, fault: str) -> None:
    # one request of the whole 96 kB array, cut on its first attempts (a body with a
    # Content-Length streams into the output; one without is buffered, and sent again)
    server.faults = FaultPlan(seed=1, **{f"{fault}_rate": 0.6})
    stats = DownloadStats()
    got = await download(bq, request_bytes=96000, stats=stats)
    assert got.tobytes() == want.tobytes()
    ranges = [r.range for r in server.stats.data_log]
    assert len(ranges) >= 2 and ranges[0] == "0;39,0;29,0;19"
    firsts = [int(r.split(",")[0].split(";")[0]) for r in ranges]
    assert firsts == sorted(firsts) and firsts[-1] > 0  # each retry starts further on
    assert stats.kept_bytes > 0
    # fetched again per cut: at most the first 16 KiB (the decoder's first look at the
    # metadata) and a partial row, never the whole body again
    assert stats.bytes < 96000 + len(ranges) * (16384 + 2400)
