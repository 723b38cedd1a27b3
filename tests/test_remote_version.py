"""A remote that changed with the same shape and type is never mixed into a resumed file.

Two guards: the resource's ``ts`` from the data service (recorded in the journal), and,
when the server gives no ``ts``, a checksum of a saved block, fetched again on resume.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import numpy as np
import pytest

from aiobisque import BisqueSession, ResumeError
from aiobisque.bulk import BulkDownloader, Target
from aiobisque.server import FaultPlan, TableServer, run_server, samples
from tests.conftest import USER, USERS, without_remote_version
from tests.test_bulk import SMALL, expected, interrupted, journal_header, read_output

SHAPE = (64, 24, 20)


async def rewrite(server: TableServer, remote: Path) -> None:
    """New values, same shape and type, once the server has let go of the file (requests
    cancelled by the interruption may still be reading it for a moment)."""
    for _ in range(100):
        if server.stats.in_flight == 0:
            try:
                samples.write_array(remote, "vol", "volume", SHAPE, dtype="float32", seed=2)
                return
            except OSError:  # still open in a server thread: HDF5 refuses to write it
                pass
        await asyncio.sleep(0.05)
    raise AssertionError("the server kept the file open")


@pytest.mark.parametrize("suffix", [".npy", ".h5"])
@pytest.mark.parametrize("ts", ["moved", "none"])
async def test_changed_values_with_the_same_shape_are_refused(
        tmp_path: Path, suffix: str, ts: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``moved``: the data service's ts changed; ``none``: a server that gives no ts (so
    only the saved block's checksum can tell)."""
    if ts == "none":
        without_remote_version(monkeypatch)
    remote = tmp_path / "remote"
    remote.mkdir()
    samples.write_array(remote, "vol", "volume", SHAPE, dtype="float32", seed=1)
    file = samples.resource_file(remote, "vol")
    out = tmp_path / f"v{suffix}"
    target = Target("vol", "volume", out)
    async with run_server(remote, users=USERS, faults=FaultPlan(latency=0.02)) as server:
        async with BisqueSession(server.root, auth=USER, config=SMALL) as bq:
            await interrupted(bq, target)
            if ts == "moved":
                assert journal_header(out)["remote_version"]["ts"]
            before = file.stat()
            await rewrite(server, remote)
            if ts == "moved":
                os.utime(file, (before.st_atime + 100, before.st_mtime + 100))
            else:  # even the modification time restored: only the values tell
                os.utime(file, ns=(before.st_atime_ns, before.st_mtime_ns))
            server.faults = FaultPlan()
            with pytest.raises(ResumeError) as info:
                await BulkDownloader(bq.table).download(target)
            message = str(info.value)
            assert "changed since" in message and "--restart" in message
            assert ("modified" in message) if ts == "moved" else ("other values" in message)
            assert not getattr(info.value, "__notes__", [])  # no "rerun to resume"
            assert out.with_name(out.name + ".part").exists()  # kept until the user decides
            await BulkDownloader(bq.table, restart=True).download(target)
    assert np.array_equal(read_output(out), expected(remote, "vol", "volume"))


async def test_unchanged_remote_resumes_after_the_check(tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    remote.mkdir()
    samples.write_array(remote, "vol", "volume", SHAPE, dtype="float32", seed=1)
    out = tmp_path / "v.h5"
    target = Target("vol", "volume", out)
    async with run_server(remote, users=USERS, faults=FaultPlan(latency=0.02)) as server:
        async with BisqueSession(server.root, auth=USER, config=SMALL) as bq:
            await interrupted(bq, target)
            server.faults = FaultPlan()
            result = await BulkDownloader(bq.table).download(target)
    assert result.resumed_blocks >= 2
    assert np.array_equal(read_output(out), expected(remote, "vol", "volume"))
