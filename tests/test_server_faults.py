"""Each fault of the plan, observed from a raw aiohttp client."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from aiobisque.server import FaultPlan, TableServer, parse_size, run_server, samples
from aiobisque.server.pytest_plugin import basic_auth

ALICE = basic_auth("alice", "wonderland")
SHAPE = (256, 1024)  # float32: 1 MiB


FRESH_FOLDER = True  # tests add and break files: a fresh folder for each


def SAMPLES(tmp_path: Path) -> Path:
    samples.write_array(tmp_path, "vol", "v", SHAPE)
    return tmp_path


SERVER_OPTIONS = {"users": None, "mex_tokens": None, "access": None, "public": ()}  # run_server's own defaults


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=ALICE) as session:
        yield session


def data_url(server: TableServer, rows: str = ";") -> str:
    # every dimension named: a real server pins missing ones to index 0
    return server.table_url + f"vol/v/{rows},;/format:hdf"


async def fetch(http: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, bytes, Any]:
    async with http.get(url, **kwargs) as response:
        return response.status, await response.read(), response.headers


FULL = 1024 * 1024  # the array's bytes; the image is a little larger


@pytest.mark.parametrize(
    "kwargs",
    [
        {"error_rate": 1.5},
        {"reset_rate": -0.1},
        {"latency": -1},
        {"bandwidth": 0},
        {"total_bandwidth": float("inf")},
        {"error_statuses": ()},
        {"error_statuses": (200,)},
        {"fail_first": -1},
        {"truncate_framing": "sideways"},
        {"stall_seconds": 1e9},
    ],
)
def test_plan_validation(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        FaultPlan(**kwargs)


def test_plan_is_frozen_and_reproducible() -> None:
    plan = FaultPlan(seed=7, error_rate=0.2, throttle_rate=0.1, reset_rate=0.1, truncate_rate=0.1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.seed = 8  # type: ignore[misc]
    first = [plan.decide(n) for n in range(500)]
    assert first == [FaultPlan(**_fields(plan)).decide(n) for n in range(500)]
    assert first != [dataclasses.replace(plan, seed=8).decide(n) for n in range(500)]
    kinds = [d.kind for d in first]
    # rates apply in order (error, throttle, reset, truncate, stall), each on what is left
    assert 0.15 < kinds.count("error") / 500 < 0.25
    assert 0.05 < kinds.count("throttle") / 500 < 0.12
    assert FaultPlan(retry_after=2).retry_after == "2"  # type: ignore[arg-type]


def _fields(plan: FaultPlan) -> dict[str, Any]:
    return {f.name: getattr(plan, f.name) for f in dataclasses.fields(plan) if f.init}


def test_parse_size() -> None:
    assert parse_size("16MB") == 16e6
    assert parse_size("16MiB") == 16 * 2**20
    assert parse_size("160 MB/s") == 160e6
    assert parse_size("1000") == 1000
    assert parse_size(5) == 5
    with pytest.raises(ValueError):
        parse_size("fast")


async def test_fail_first_then_recover(server: TableServer, http: Any) -> None:
    server.faults = FaultPlan(fail_first=2, error_statuses=(502, 503))
    statuses = [(await fetch(http, data_url(server)))[0] for _ in range(3)]
    assert statuses == [502, 502, 200]
    assert server.stats.faults["error"] == 2
    # a new plan counts from 0 again
    server.faults = FaultPlan(fail_first=1)
    assert (await fetch(http, data_url(server)))[0] == 503


async def test_error_rate_picks_among_statuses(server: TableServer, http: Any) -> None:
    server.faults = FaultPlan(seed=1, error_rate=1.0, error_statuses=(500, 502, 504))
    statuses = {(await fetch(http, data_url(server, "0")))[0] for _ in range(12)}
    assert statuses == {500, 502, 504}


async def test_faults_spare_info_and_other_requests(server: TableServer, http: Any) -> None:
    server.faults = FaultPlan(error_rate=1.0)
    status, _, _ = await fetch(http, server.table_url + "vol/v/info/format:json")
    assert status == 200
    assert (await fetch(http, server.root + "/services"))[0] == 200
    assert server.stats.faults["error"] == 0


async def test_latency_applies_to_every_request(server: TableServer, http: Any) -> None:
    # a WAN delays service discovery, the session check and info as much as data
    server.faults = FaultPlan(latency=0.2)
    for url in (
        server.root + "/services",
        server.service_url("auth_service") + "session",
        server.table_url + "vol/v/info/format:json",
    ):
        started = time.monotonic()
        assert (await fetch(http, url))[0] == 200
        assert 0.2 <= time.monotonic() - started < 0.6
    assert server.stats.faults["latency"] == 3


async def test_throttle_sends_retry_after(server: TableServer, http: Any) -> None:
    server.faults = FaultPlan(throttle_rate=1.0, retry_after="2")
    status, _, headers = await fetch(http, data_url(server))
    assert status == 429 and headers["Retry-After"] == "2"
    assert server.stats.faults["throttle"] == 1


async def test_reset_raises(server: TableServer, http: Any) -> None:
    server.faults = FaultPlan(reset_rate=1.0)
    with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ClientOSError)):
        await fetch(http, data_url(server))
    assert server.stats.faults["reset"] == 1
    server.faults = FaultPlan()
    assert (await fetch(http, data_url(server)))[0] == 200  # the pool recovers


async def test_truncate_with_content_length(server: TableServer, http: Any) -> None:
    server.faults = FaultPlan(truncate_rate=1.0, truncate_framing="length")
    with pytest.raises(aiohttp.ClientPayloadError, match=r"[Cc]ontent.length|not completed"):
        await fetch(http, data_url(server))


async def test_truncate_chunked(server: TableServer, http: Any) -> None:
    server.faults = FaultPlan(truncate_rate=1.0, truncate_framing="chunked")
    with pytest.raises(aiohttp.ClientPayloadError):
        await fetch(http, data_url(server))


async def test_truncate_close_gives_a_short_body_without_error(
    server: TableServer, http: Any
) -> None:
    server.faults = FaultPlan(truncate_rate=1.0, truncate_framing="close")
    status, body, headers = await fetch(http, data_url(server))
    assert status == 200 and "Content-Length" not in headers
    assert 0 < len(body) < FULL  # silently short: only a size check can tell
    assert server.stats.faults["truncate"] == 1


async def test_truncate_mixed_is_reproducible(server: TableServer, http: Any) -> None:
    async def outcomes() -> list[str]:
        server.faults = FaultPlan(seed=5, truncate_rate=0.5, truncate_framing="mixed")
        seen = []
        for _ in range(10):
            try:
                status, body, _ = await fetch(http, data_url(server, "0;63"))
                seen.append("short" if len(body) < FULL // 4 else str(status))
            except aiohttp.ClientPayloadError as exc:
                seen.append(type(exc.__cause__ or exc).__name__)
        return seen

    first = await outcomes()
    assert first == await outcomes()
    assert "200" in first and len(set(first)) >= 3


async def test_stall_is_cut_by_a_read_timeout(folder: Path) -> None:
    started = time.monotonic()
    async with run_server(folder, faults=FaultPlan(stall_rate=1.0, stall_seconds=30)) as srv:
        async with aiohttp.ClientSession(headers=ALICE) as http:
            t0 = time.monotonic()
            with pytest.raises(asyncio.TimeoutError):
                await fetch(http, data_url(srv), timeout=aiohttp.ClientTimeout(sock_read=0.3))
            assert 0.25 < time.monotonic() - t0 < 2
            # leave one stalled response open: shutting down must not wait for it
            request = asyncio.ensure_future(fetch(http, data_url(srv)))
            while srv.stats.faults["stall"] < 2:  # noqa: ASYNC110 (counters have no event)
                await asyncio.sleep(0.01)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
    assert time.monotonic() - started < 5


async def test_latency(server: TableServer, http: Any) -> None:
    server.faults = FaultPlan(latency=0.2)
    started = time.monotonic()
    assert (await fetch(http, data_url(server, "0")))[0] == 200
    assert 0.2 <= time.monotonic() - started < 0.5
    assert server.stats.faults["latency"] == 1


async def test_bandwidth_per_connection(server: TableServer, http: Any) -> None:
    server.faults = FaultPlan(bandwidth=8e6)
    started = time.monotonic()
    _, body, _ = await fetch(http, data_url(server))  # ~1 MiB at 8 MB/s: ~0.13 s
    elapsed = time.monotonic() - started
    assert 0.9 * len(body) / 8e6 < elapsed < 1.5 * len(body) / 8e6 + 0.05


async def test_total_bandwidth_is_shared(server: TableServer, http: Any) -> None:
    server.faults = FaultPlan(total_bandwidth=20e6)
    started = time.monotonic()
    bodies = await asyncio.gather(*(fetch(http, data_url(server)) for _ in range(4)))
    elapsed = time.monotonic() - started
    total = sum(len(body) for _, body, _ in bodies)  # ~4.2 MB at 20 MB/s: ~0.21 s
    assert 0.9 * total / 20e6 < elapsed < 1.5 * total / 20e6 + 0.05


async def test_requests_are_served_concurrently(server: TableServer, http: Any) -> None:
    server.faults = FaultPlan(latency=0.3)
    started = time.monotonic()
    results = await asyncio.gather(*(fetch(http, data_url(server, str(i))) for i in range(6)))
    assert all(status == 200 for status, _, _ in results)
    assert time.monotonic() - started < 0.9
    assert server.stats.peak_in_flight > 1


async def test_seeded_runs_repeat(server: TableServer, http: Any) -> None:
    plan = FaultPlan(seed=11, error_rate=0.2, throttle_rate=0.1, truncate_rate=0.1, reset_rate=0.1)

    async def run() -> list[tuple[int, str | None]]:
        server.stats.reset()
        server.faults = plan
        for i in range(15):
            with contextlib.suppress(aiohttp.ClientError):
                await fetch(http, data_url(server, str(i)))
        return [(r.status, r.fault) for r in server.stats.data_log]

    first = await run()
    assert first == await run()
    assert len({fault for _, fault in first}) >= 3


async def test_keepalive_timeout_closes_idle_connections(folder: Path) -> None:
    async with run_server(folder, keepalive_timeout=0.2) as srv:
        host, port = srv.root.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(f"GET /services HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(
                next(
                    h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")
                ).split(b":")[1]
            )
            await reader.readexactly(length)
            started = time.monotonic()
            assert await asyncio.wait_for(reader.read(), 3) == b""  # closed by the server
            assert time.monotonic() - started < 2
        finally:
            writer.close()
            await writer.wait_closed()
