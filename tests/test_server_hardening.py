"""The embedded server survives abuse: odd logins, hostile paths, memory and socket pressure.

Each case was found by trying to break the server (issue #12, "Hardening"); each is
bounded in count and time.
"""

from __future__ import annotations

import asyncio
import base64
import os
import resource
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import pytest_asyncio

from aiobisque.server import FaultPlan, run_server, samples
from aiobisque.server.pytest_plugin import basic_auth
from aiobisque.server.store import Limits

ALICE = basic_auth("alice", "wonderland")
SHAPE = (256, 1024)  # float32: 1 MiB
FULL = "vol/v/;,;/format:hdf"


FRESH_FOLDER = True  # tests add and break files: a fresh folder for each


def SAMPLES(tmp_path: Path) -> Path:
    samples.write_array(tmp_path, "vol", "v", SHAPE)
    samples.write_array(tmp_path, "vol", "a", np.arange(4, dtype=np.int8))
    return tmp_path


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def status_of(http: aiohttp.ClientSession, url: str, **kwargs: object) -> int:
    async with http.get(url, **kwargs) as response:  # type: ignore[arg-type]
        await response.read()
        return response.status


# -- logins ------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1"])
async def test_non_ascii_logins_work(
    folder: Path, http: aiohttp.ClientSession, encoding: str
) -> None:
    users = {"zoë": "pässwörd"}
    async with run_server(folder, users=users, mex_tokens={"TÖKEN": "zoë"}) as srv:
        token = base64.b64encode("zoë:pässwörd".encode(encoding)).decode("ascii")
        basic = {"Authorization": f"Basic {token}"}
        async with http.get(srv.service_url("auth_service") + "session", headers=basic) as r:
            assert r.status == 200 and 'value="zoë"' in await r.text()
        assert await status_of(http, srv.table_url + FULL, headers=basic) == 200
        wrong = base64.b64encode("zoë:passwörd".encode(encoding)).decode("ascii")
        headers = {"Authorization": f"Basic {wrong}"}
        assert await status_of(http, srv.table_url + FULL, headers=headers) == 401
    # a Mex user with a non-ASCII name
    async with run_server(folder, users=users, mex_tokens={"TOKEN": "zoë"}) as srv:
        mex = {"Authorization": "Mex zoë:TOKEN"}  # sent as UTF-8
        assert await status_of(http, srv.table_url + FULL, headers=mex) == 200
        assert (
            await status_of(http, srv.table_url + FULL, headers={"Authorization": "Mex TOKEN"})
            == 200
        )


# -- hostile paths -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "tail",
    ["vol/a%00x/;/format:hdf", "vol/a%00/;/format:hdf", "vol/%00/info/format:json"],
)
async def test_a_nul_in_a_path_component_is_400_and_never_another_node(
    folder: Path, http: aiohttp.ClientSession, tail: str
) -> None:
    # HDF5 would end the name at the NUL: "a%00x" must not read node "a"
    async with run_server(folder) as srv:
        assert await status_of(http, srv.table_url + tail, headers=ALICE) == 400


async def test_a_huge_index_is_400(folder: Path, http: aiohttp.ClientSession) -> None:
    async with run_server(folder) as srv:
        url = srv.table_url + "vol/v/" + "9" * 4301 + ",;/format:hdf"
        assert await status_of(http, url, headers=ALICE) == 400


# -- memory ------------------------------------------------------------------------------


async def test_text_formats_beyond_the_limit_are_413(
    folder: Path, http: aiohttp.ClientSession
) -> None:
    async with run_server(folder, limits=Limits(text_bytes=64 << 10)) as srv:
        async with http.get(srv.table_url + "vol/v/;,;/format:json", headers=ALICE) as r:
            assert r.status == 413
            assert "format:json is served up to 65536 bytes" in await r.text()
        # the same selection as hdf, and a small one as json, are served
        assert await status_of(http, srv.table_url + FULL, headers=ALICE) == 200
        url = srv.table_url + "vol/v/0;3,;/format:json"
        assert await status_of(http, url, headers=ALICE) == 200
        assert srv.budget.used == 0


async def test_one_request_beyond_the_memory_limit_is_413(
    folder: Path, http: aiohttp.ClientSession
) -> None:
    async with run_server(folder, limits=Limits(total_bytes=512 << 10)) as srv:
        async with http.get(srv.table_url + FULL, headers=ALICE) as r:
            assert r.status == 413 and "one request may read up to 524288" in await r.text()


async def test_requests_together_are_bounded_and_wait_then_503(
    folder: Path, http: aiohttp.ClientSession
) -> None:
    # room for one whole array: a second one waits while the first is slowly sent
    limits = Limits(total_bytes=(1 << 20) + 1024, wait_seconds=0.3)
    async with run_server(folder, limits=limits) as srv:
        srv.faults = FaultPlan(bandwidth=2e6)  # 1 MiB: about 0.5 s
        async with http.get(srv.table_url + FULL, headers=ALICE) as slow:
            assert slow.status == 200
            started = time.monotonic()
            async with http.get(srv.table_url + FULL, headers=ALICE) as second:
                assert second.status == 503 and second.headers["Retry-After"]
                await second.read()
            assert 0.25 < time.monotonic() - started < 2
            assert srv.budget.used == 1 << 20  # the first body's bytes are held
            await slow.read()
        srv.faults = FaultPlan()
        assert await status_of(http, srv.table_url + FULL, headers=ALICE) == 200
        assert srv.budget.used == 0 and srv.budget.peak <= limits.total_bytes


async def test_a_client_that_never_reads_releases_its_memory_when_it_leaves(
    folder: Path,
) -> None:
    limits = Limits(total_bytes=8 << 20)
    async with run_server(folder, limits=limits) as srv:
        srv.faults = FaultPlan(bandwidth=1e6)
        host, port = srv.root.removeprefix("http://").split(":")
        writers = []
        for _ in range(4):
            _, writer = await asyncio.open_connection(host, int(port))
            path = srv.table_url.removeprefix(srv.root) + FULL
            request = (
                f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {ALICE['Authorization']}\r\n\r\n"
            )
            writer.write(request.encode())
            writers.append(writer)
        deadline = time.monotonic() + 5
        while srv.budget.used < 4 << 20 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        assert srv.budget.used == 4 << 20  # four bodies held, none read
        for writer in writers:
            writer.close()
        deadline = time.monotonic() + 5
        while srv.budget.used and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        assert srv.budget.used == 0


# -- sockets -----------------------------------------------------------------------------


async def test_unfinished_headers_are_cut_by_the_header_timeout(folder: Path) -> None:
    async with run_server(folder, header_timeout=0.3) as srv:
        host, port = srv.root.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /services HTTP/1.1\r\nHost: x\r\n")  # never finished
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 3) == b""  # closed by the server
        assert time.monotonic() - started < 2
        writer.close()
        # a complete request on a fresh connection is answered
        async with aiohttp.ClientSession() as http:
            assert await status_of(http, srv.root + "/services") == 200


_SERVE_WITH_FEW_FDS = """
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (96, 96))
from aiobisque.server.command import run
sys.exit(run([sys.argv[1], "--header-timeout", "1"]))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file-descriptor limits")
async def test_the_server_recovers_from_fd_exhaustion(folder: Path) -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 400:
        pytest.skip("needs a few hundred descriptors in the test process")
    process = subprocess.Popen(  # noqa: ASYNC220 (started once, read in a thread)
        [sys.executable, "-c", _SERVE_WITH_FEW_FDS, str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 30)
        root = line.decode().split()[-1]
        host, port = root.removeprefix("http://").split(":")
        stuck = []
        for _ in range(150):  # more than the server's 96 descriptors
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 1)
            except (OSError, TimeoutError):
                continue
            writer.write(b"GET /services HTTP/1.1\r\n")  # unfinished headers
            stuck.append(writer)
        # once the header timeout frees the descriptors, new clients are served again
        deadline = time.monotonic() + 15
        status = None
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while time.monotonic() < deadline:
                try:
                    status = await status_of(http, root + "/services")
                    break
                except (aiohttp.ClientError, TimeoutError):
                    await asyncio.sleep(0.2)
        assert status == 200
        for writer in stuck:
            writer.close()
    finally:
        process.terminate()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


# -- the concurrent-hdf fault of real servers ---------------------------------------------


async def test_hdf_name_clash_fault(folder: Path, http: aiohttp.ClientSession) -> None:
    async with run_server(folder) as srv:
        srv.faults = FaultPlan(bandwidth=4e6)  # off by default: concurrent exports both work
        statuses = await asyncio.gather(
            *(status_of(http, srv.table_url + FULL, headers=ALICE) for _ in range(2))
        )
        assert statuses == [200, 200]
        srv.faults = FaultPlan(bandwidth=4e6, hdf_name_clash=True)
        async with http.get(srv.table_url + FULL, headers=ALICE) as first:
            async with http.get(srv.table_url + FULL, headers=ALICE) as second:
                assert second.status == 500
                assert "array.h5" in await second.text()
            # other formats never clash
            url = srv.table_url + "vol/v/0,0;3/format:json"
            assert await status_of(http, url, headers=ALICE) == 200
            await first.read()
            assert first.status == 200
        assert await status_of(http, srv.table_url + FULL, headers=ALICE) == 200
        assert srv.stats.faults["hdf_clash"] == 1
