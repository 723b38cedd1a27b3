"""The journal at a finer grain than whole requests: rows that landed are kept.

A block of a ``.npy`` download whose requests are all still in flight at an interruption
used to leave nothing in the journal; now the rows of each request that have landed (a
prefix: a contiguous body arrives row by row) are synced and journaled every
``CHECKPOINT_SECONDS``, and a resume asks only for the rows still missing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from aiobisque import BisqueSession, Config
from aiobisque import bulk as bulk_module
from aiobisque.bulk import BulkDownloader, Target
from aiobisque.config import MiB
from aiobisque.server import FaultPlan, TableServer, samples
from tests.conftest import FAST_RETRY, USER

SHAPE = (256, 64, 64)  # float32: 4 MiB = 2 blocks of 2 requests of 1 MiB (64 rows each)


def SAMPLES(folder: Path) -> None:
    samples.write_array(folder, "big", "a", SHAPE, dtype="float32", seed=5)


@pytest.fixture
async def session(server: TableServer) -> AsyncIterator[BisqueSession]:
    config = Config(retry=FAST_RETRY, request_bytes=MiB, concurrency=4)
    async with BisqueSession(server.root, auth=USER, config=config) as bq:
        yield bq


def journal_lines(out: Path) -> list[dict]:
    raw = out.with_name(out.name + ".part.journal").read_bytes()
    return [json.loads(line) for line in raw.splitlines()[1:]]


async def test_interrupted_with_every_request_in_flight_keeps_the_rows_that_landed(
        session: BisqueSession, server: TableServer, folder: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bulk_module, "CHECKPOINT_SECONDS", 0.1)
    out = tmp_path / "a.npy"
    target = Target("big", "a", out)
    server.faults = FaultPlan(bandwidth=1_000_000)  # each 1 MiB request takes ~1 s
    task = asyncio.ensure_future(BulkDownloader(session.table, block_bytes=2 * MiB)
                                 .download(target))
    await asyncio.sleep(0.7)
    task.cancel()  # like kill -9 for the journal: only what was synced is recorded
    with pytest.raises(asyncio.CancelledError):
        await task
    lines = journal_lines(out)
    assert not [e for e in lines if "block" in e]  # no request, so no block, finished
    parts = [e for e in lines if "part" in e]
    assert parts and all(e["rb"] == MiB for e in parts)
    latest: dict[int, dict[str, int]] = {}
    for e in parts:
        latest[e["part"]] = e["rows"]
    saved_rows = sum(sum(rows.values()) for rows in latest.values())
    assert saved_rows > 0

    server.faults = FaultPlan()
    server.stats.reset()
    result = await BulkDownloader(session.table, block_bytes=2 * MiB).download(target)
    want = samples.expected(samples.resource_file(folder, "big"), "a")
    assert np.load(out).tobytes() == want.tobytes()
    row = 64 * 64 * 4
    # only the missing rows were asked for (plus each image's small metadata)
    missing = 4 * MiB - saved_rows * row
    assert result.stats.bytes <= missing + 4 * 16 * 1024
    firsts = [int(r.range.split(",")[0].split(";")[0]) % 64 for r in server.stats.data_log]
    assert any(f > 0 for f in firsts)  # narrowed ranges: they start inside a request
