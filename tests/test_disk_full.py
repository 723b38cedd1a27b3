"""A full disk while writing: a clear "no space left" error, nothing unwritten journaled or
finalised, a resumable ``.part``, and a bit-exact resume once space is freed.

Runs on a small tmpfs of its own (the suite runs as root in CI); skipped where mounting
is not allowed. The tmpfs is a few MiB and unmounted afterwards.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest

from aiobisque import BisqueSession, Config
from aiobisque.bulk import BulkDownloader, Target
from aiobisque.journal import Journal
from aiobisque.server import TableServer, samples
from tests.conftest import FAST_RETRY, USER

SHAPE = (64, 128, 128)  # float32: 4 MiB, four 1 MiB blocks


def SAMPLES(folder: Path) -> None:
    samples.write_array(folder, "big", "a", SHAPE, dtype="float32", seed=3)


class SmallDisk:
    def __init__(self, path: Path):
        self.path = path

    def resize(self, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True,
                       capture_output=True, timeout=30)


@pytest.fixture
def small_disk() -> Iterator[SmallDisk]:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path = Path(tempfile.mkdtemp(prefix="aiobisque-full-"))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(path)],
                          capture_output=True, timeout=30)
    if done.returncode != 0:
        path.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield SmallDisk(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)
        with contextlib.suppress(OSError):
            path.rmdir()


@pytest.fixture
async def session(server: TableServer) -> AsyncIterator[BisqueSession]:
    async with BisqueSession(server.root, auth=USER, config=Config(retry=FAST_RETRY)) as bq:
        yield bq


@pytest.mark.parametrize("name", ["a.h5", "a.npy"])
async def test_disk_full_fails_clearly_and_resumes_bit_exact(
        session: BisqueSession, folder: Path, small_disk: SmallDisk, name: str) -> None:
    out = small_disk.path / name
    target = Target("big", "a", out)
    with pytest.raises(OSError) as info:
        await BulkDownloader(session.table, block_bytes=1 << 20).download(target)
    assert info.value.errno == errno.ENOSPC
    assert re.search("no space left|not enough disk space", str(info.value))
    assert not out.exists()  # never finalised
    part, journal_path = out.with_name(name + ".part"), out.with_name(name + ".part.journal")
    saved: set[int] = set()
    if name.endswith(".npy"):
        # the .npy file is preallocated: refused before a byte is fetched, nothing left
        assert not part.exists() and not journal_path.exists()
    else:
        assert part.exists() and journal_path.exists()
        journal = Journal.open(journal_path, create=False)
        try:
            journal.load()
            saved = set(journal.done)
        finally:
            journal.close()
        assert len(saved) < 4  # not every block claimed
    small_disk.resize("16m")
    result = await BulkDownloader(session.table, block_bytes=1 << 20).download(target)
    assert not result.skipped and result.resumed_blocks == len(saved)
    want = samples.expected(samples.resource_file(folder, "big"), "a")
    if name.endswith(".h5"):
        with h5py.File(out, "r") as f:
            got = f["a"][()]
    else:
        got = np.load(out)
    assert got.tobytes() == want.tobytes()
