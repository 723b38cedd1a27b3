"""Downloads to files: block grid, journal, outputs, resume and verification (in-process)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiobisque import (
    BisqueError,
    BisqueSession,
    Config,
    DownloadError,
    NotFoundError,
    PermissionDeniedError,
    SelectionError,
    UnsupportedError,
    UsageError,
    outputs,
    window,
)
from aiobisque.blocks import BlockGrid
from aiobisque.bulk import (
    BulkDownloader,
    FileResult,
    OutputExistsError,
    ResumeError,
    Target,
    default_block_bytes,
    default_blocks_in_flight,
)
from aiobisque.journal import Journal, JournalError, LockedError
from aiobisque.outputs import output_format
from aiobisque.plan import make_plan
from aiobisque.progress import DownloadStats, Meter, Progress
from aiobisque.selection import normalize_selection
from aiobisque.server import FaultPlan, TableServer, run_server, samples
from aiobisque.slices import format_slices, parse_slices
from tests.conftest import FAST_RETRY, USER, USERS, served_dtype, without_remote_version
from tests.test_slices import indices

KiB = 1024
#: small requests and blocks so that small arrays still make many blocks
SMALL = Config(retry=FAST_RETRY, request_bytes=4 * KiB, concurrency=4)
DTYPES = ["uint8", ">i2", "float32", "float64", "complex64", "bool", "S6"]


def write_folder(folder: Path) -> None:
    samples.write_array(folder, "vol", "volume", (64, 24, 20), dtype="float32", seed=1)
    samples.write_array(folder, "vol", "twin", (64, 24, 20), dtype="float32", seed=3)
    samples.write_array(folder, "vol", "grp/labels", (7, 11), dtype="uint16", seed=2)
    samples.write_array(folder, "vol", "scalar", np.array(3.5))
    for i, dt in enumerate(DTYPES):
        samples.write_array(folder, "types", f"t{i}", (9, 7, 5), dtype=dt, seed=i)
    samples.write_table(folder, "tab", "rows", nrows=40)
    # h5py's booleans in a table: PyTables (so BisQue) types the column 'enum'
    with h5py.File(folder / "types.h5", "a") as h5:
        flags = h5.create_dataset("flags", data=np.array([(1, True)],
                                                         dtype=[("n", "<i4"), ("b", "?")]))
        flags.attrs["CLASS"] = np.bytes_("TABLE")


SAMPLES = write_folder
SERVER_OPTIONS = {"users": USERS}


@pytest.fixture
async def session(server: TableServer) -> AsyncIterator[BisqueSession]:
    async with BisqueSession(server.root, auth=USER, config=SMALL) as bq:
        yield bq


def expected(folder: Path, uniq: str, path: str) -> np.ndarray:
    return samples.expected(samples.resource_file(folder, uniq), path)


def read_output(path: Path, dataset: str | None = None) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path)
    with h5py.File(path, "r") as f:
        return f[dataset or next(iter(f))][()]


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def journal_blocks(path: Path) -> int:
    journal = path.with_name(path.name + ".part.journal")
    if not journal.exists():
        return 0
    return journal.read_bytes().count(b'{"block"')


# -- the block grid ---------------------------------------------------------------------

shapes = st.lists(st.integers(0, 6), min_size=0, max_size=4).map(tuple)


@settings(max_examples=200, deadline=None)
@given(shapes, st.sampled_from([1, 2, 8]), st.integers(1, 300))
def test_blocks_tile_the_result_contiguously(shape: tuple, itemsize: int, block_bytes: int) -> None:
    grid = BlockGrid.fit(shape, itemsize, block_bytes)
    covered = np.zeros(shape, dtype=int)
    flat = np.arange(math.prod(shape)).reshape(shape)
    for block in range(len(grid)):
        region = grid.region(block)
        covered[region] += 1
        assert flat[region].shape == grid.block_shape(block)
        run = flat[region].ravel()
        start = grid.offset(block)
        assert np.array_equal(run, np.arange(start, start + run.size))  # one contiguous run
        assert run.size * itemsize <= max(block_bytes, itemsize)
    assert (covered == 1).all()
    assert len(grid) == (0 if math.prod(shape) == 0 else len(grid))


def test_blocks_align_with_chunks() -> None:
    chunks = BlockGrid.fit((1000, 30), 4, 30 * 4 * 7)  # 7 rows per chunk
    grid = BlockGrid.fit((1000, 30), 4, 30 * 4 * 50, align=chunks)
    assert chunks.rows == 7 and grid.rows == 49


def test_block_outside_grid() -> None:
    with pytest.raises(IndexError, match="block 4 is not in a grid of 4"):
        BlockGrid.fit((4, 3), 1, 3).region(4)


@settings(max_examples=200, deadline=None)
@given(indices(), st.integers(1, 40))
def test_narrowed_selection_reads_the_block_of_the_selection(index: tuple,
                                                             block_elems: int) -> None:
    source = np.arange(4 * 5 * 6).reshape(4, 5, 6)
    try:
        want = source[index]
    except IndexError:
        return
    sel = normalize_selection(index, source.shape)
    grid = BlockGrid.fit(want.shape, 1, block_elems)
    for block in range(len(grid)):
        region = grid.region(block)
        sub = sel.narrow(region)
        assert sub.shape == want[region].shape
        # planning the narrowed selection and filling its core reproduces the block
        got = np.empty(sub.shape, dtype=source.dtype)
        core = got[(*sub.result_to_core(), Ellipsis)]
        for req in make_plan(sub, source.itemsize, 7):
            box = tuple(slice(lo, hi + 1) for lo, hi in req.box)
            core[req.out_sel] = source[box][req.chunk_sel]
        assert np.array_equal(got, want[region])


def test_default_blocks_fill_the_memory_bound() -> None:
    cfg = Config()
    block = default_block_bytes(cfg)
    assert block == 2 * cfg.request_bytes
    # file downloads stay within the memory bound, and that bound keeps the window's
    # starting size of requests busy
    held = default_blocks_in_flight(cfg, block) * block
    assert held == cfg.inflight_bytes
    assert held >= window.START * cfg.request_bytes
    assert default_block_bytes(Config(request_bytes=1000)) == 1024 * 1024


def test_output_format() -> None:
    assert output_format("a/b.NPY") == "npy"
    assert output_format("x.hdf5") == "hdf5"
    with pytest.raises(UsageError, match=r"'x\.zarr'.* must end with one of \.npy, \.h5, \.hdf5, \.csv"):
        output_format("x.zarr")


def test_target_validates_up_front(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no HDF path"):
        Target("vol", "", tmp_path / "a.npy")
    with pytest.raises(UsageError, match="not a BisQue resource"):
        Target("bad uniq", "x", tmp_path / "a.npy")
    with pytest.raises(UsageError, match="compression"):
        Target("vol", "x", tmp_path / "a.h5", compression="zstd")
    with pytest.raises(UsageError, match=r"compression applies to \.h5/\.hdf5 outputs, not"):
        Target("vol", "x", tmp_path / "a.npy", compression="gzip")
    with pytest.raises(UsageError, match=r"dataset applies to \.h5/\.hdf5 outputs, not"):
        Target("vol", "x", tmp_path / "a.npy", dataset="d")


# -- the journal --------------------------------------------------------------------------


def test_journal_round_trip_and_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "x.part.journal"
    j = Journal.open(path)
    assert j.empty
    j.start({"blocks": 5, "uniq": "vol"})
    j.mark(3)
    j.mark(0)
    j.close()
    with open(path, "ab") as f:
        f.write(b'{"block":4')  # a crash in the middle of a write
    j = Journal.open(path)
    assert j.load()["uniq"] == "vol"
    assert j.done == {0, 3}
    j.mark(1)  # appended on a fresh line: the torn line is gone
    j.close()
    j = Journal.open(path)
    j.load()
    assert j.done == {0, 1, 3}
    j.remove()
    assert not path.exists()


@pytest.mark.parametrize(
    "content",
    [b"not json\n", b'{"other": 1}\n', b'{"aiobisque_journal":1,"blocks":2}\n{"block":7}\n', b"x"],
)
def test_damaged_journal(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.part.journal"
    path.write_bytes(content)
    j = Journal.open(path)
    with pytest.raises(JournalError):
        j.load()
    j.close()


def test_journal_is_a_lock(tmp_path: Path) -> None:
    path = tmp_path / "out.npy.part.journal"
    first = Journal.open(path)
    try:
        with pytest.raises(LockedError, match=r"another process is downloading to out\.npy"):
            Journal.open(path)
    finally:
        first.close()
    Journal.open(path).close()  # released on close


# -- downloads ----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".npy", ".h5"])
@pytest.mark.parametrize("index", [2, 5])
async def test_download_is_exact(session: BisqueSession, folder: Path, tmp_path: Path,
                                 suffix: str, index: int) -> None:
    out = tmp_path / f"t{suffix}"
    result = await BulkDownloader(session.table, block_bytes=100).download(
        Target("types", f"t{index}", out))
    want = expected(folder, "types", f"t{index}")
    got = read_output(out)
    assert got.dtype == served_dtype(want.dtype)
    assert got.tobytes() == want.astype(served_dtype(want.dtype)).tobytes()
    assert result.blocks > 1 and result.shape == want.shape and not result.skipped
    assert not out.with_name(out.name + ".part").exists()
    assert not out.with_name(out.name + ".part.journal").exists()


@pytest.mark.parametrize("dtype_index", range(len(DTYPES)))
async def test_every_dtype_to_hdf5(session: BisqueSession, folder: Path, tmp_path: Path,
                                   dtype_index: int) -> None:
    out = tmp_path / "t.h5"
    await BulkDownloader(session.table, block_bytes=300).download(
        Target("types", f"t{dtype_index}", out, "::-1, 1:, ::2"))
    want = expected(folder, "types", f"t{dtype_index}")[::-1, 1:, ::2]
    assert read_output(out).tobytes() == want.astype(want.dtype.newbyteorder("=")).tobytes()


@pytest.mark.parametrize(
    "slices", ["", "10:50, ::-3, -1", "..., None, 3", "-1, 2, 3", "5:5", "None, ::7, 4:, :"]
)
@pytest.mark.parametrize("suffix", [".npy", ".h5"])
async def test_selections(session: BisqueSession, folder: Path, tmp_path: Path,
                          slices: str, suffix: str) -> None:
    out = tmp_path / f"v{suffix}"
    await BulkDownloader(session.table, block_bytes=2000).download(
        Target("vol", "volume", out, slices))
    want = expected(folder, "vol", "volume")[parse_slices(slices)]
    got = read_output(out)
    assert got.shape == want.shape
    assert np.array_equal(got, want)


async def test_hdf5_layout_and_attributes(session: BisqueSession, server: TableServer,
                                          tmp_path: Path) -> None:
    out = tmp_path / "labels.hdf5"
    await BulkDownloader(session.table).download(
        Target("vol", "grp/labels", out, "1:, :", compression="gzip"))
    with h5py.File(out, "r") as f:
        ds = f["labels"]
        assert ds.compression == "gzip" and ds.chunks is not None
        assert ds.attrs["root"] == server.root
        assert ds.attrs["uniq"] == "vol" and ds.attrs["path"] == "grp/labels"
        assert ds.attrs["selection"] == "1:, :"
        assert list(ds.attrs["source_shape"]) == [7, 11]
        assert isinstance(json.loads(ds.attrs["meta"]), dict)
    out2 = tmp_path / "named.h5"
    await BulkDownloader(session.table).download(
        Target("vol", "grp/labels", out2, dataset="a/b", compression="lzf"))
    with h5py.File(out2, "r") as f:
        assert f["a/b"].compression == "lzf"


@pytest.mark.parametrize("suffix", [".h5", ".npy", ".csv"])
async def test_table(session: BisqueSession, folder: Path, tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"rows{suffix}"
    result = await BulkDownloader(session.table).download(Target("tab", "rows", out, "::3"))
    want = expected(folder, "tab", "rows")[::3]
    assert result.shape == want.shape and not (tmp_path / f"rows{suffix}.part").exists()
    if suffix == ".csv":
        lines = out.read_text(encoding="utf-8").splitlines()
        assert lines[0] == "id,x,label"
        assert lines[1:] == [f"{r['id']},{float(r['x'])!r},{r['label'].decode()}" for r in want]
        return
    got = read_output(out)
    np.testing.assert_array_equal(got["id"], want["id"])
    assert got["id"].dtype == want["id"].dtype
    np.testing.assert_array_equal(got["x"], want["x"])
    text = got["label"] if suffix == ".npy" else np.char.decode(got["label"], "utf-8")
    assert list(text) == [b.decode() for b in want["label"]]
    # the same download again is skipped; another one never overwrites it silently
    again = await BulkDownloader(session.table).download(Target("tab", "rows", out, "::3"))
    assert again.skipped
    with pytest.raises(OutputExistsError, match="--restart"):
        await BulkDownloader(session.table).download(Target("tab", "rows", out, "::2"))


@pytest.mark.parametrize("suffix", [".h5", ".npy", ".csv"])
async def test_table_download_resumes_by_row_blocks(session: BisqueSession, server: TableServer,
                                                    folder: Path, tmp_path: Path,
                                                    suffix: str) -> None:
    out = tmp_path / f"rows{suffix}"
    target = Target("tab", "rows", out, "::-1")
    want = expected(folder, "tab", "rows")[::-1]
    blocks = out.with_name(out.name + ".part.d")
    kept = await interrupted_table_download(session, server, target, 200)
    assert len(kept) >= 2 and not out.exists()  # interrupted: complete blocks kept
    before = server.stats.requests["data"]
    result = await BulkDownloader(session.table, block_bytes=200).download(target)
    assert result.resumed_blocks == len(kept) and result.blocks > len(kept)
    # only the missing blocks were fetched: three columns a block
    assert server.stats.requests["data"] - before == 3 * (result.blocks - len(kept))
    assert not blocks.exists()
    if suffix == ".csv":
        rows = out.read_text(encoding="utf-8").splitlines()[1:]
        assert [int(r.split(",")[0]) for r in rows] == list(want["id"])
        return
    got = read_output(out)
    np.testing.assert_array_equal(got["id"], want["id"])
    np.testing.assert_array_equal(got["x"], want["x"])


def list_blocks(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.endswith(".npy")) if folder.exists() \
        else []


async def test_arrays_are_not_written_as_csv(session: BisqueSession, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="csv outputs are for tables"):
        await BulkDownloader(session.table).download(Target("vol", "volume", tmp_path / "v.csv"))
    assert os.listdir(tmp_path) == []


async def test_all_integer_selection(session: BisqueSession, folder: Path, tmp_path: Path) -> None:
    await BulkDownloader(session.table).download(Target("vol", "volume", tmp_path / "s.npy",
                                                        "3, -2, 7"))
    assert np.load(tmp_path / "s.npy") == expected(folder, "vol", "volume")[3, -2, 7]


async def test_scalar_source(session: BisqueSession, tmp_path: Path) -> None:
    # BisQue cannot serve a scalar's data: refused before any file is made
    with pytest.raises(UnsupportedError, match="0-d"):
        await BulkDownloader(session.table).download(Target("vol", "scalar", tmp_path / "s.npy"))
    assert os.listdir(tmp_path) == []


async def test_rerun_of_a_finished_download_is_skipped(session: BisqueSession,
                                                       tmp_path: Path) -> None:
    out = tmp_path / "v.h5"
    target = Target("vol", "volume", out, ":3")
    await BulkDownloader(session.table).download(target)
    again = await BulkDownloader(session.table).download(target)
    assert again.skipped and "already downloaded" in str(again)
    # another selection with another shape: refused, not overwritten
    with pytest.raises(OutputExistsError, match=r"already exists and is not this download"):
        await BulkDownloader(session.table).download(Target("vol", "volume", out, ":4"))
    # same shape, other selection: the HDF5 attributes tell them apart
    with pytest.raises(OutputExistsError, match="downloaded with selection ':3', not '3:6'"):
        await BulkDownloader(session.table).download(Target("vol", "volume", out, "3:6"))
    replaced = await BulkDownloader(session.table, restart=True).download(
        Target("vol", "volume", out, ":4"))
    assert replaced.shape == (4, 24, 20) and read_output(out).shape == (4, 24, 20)


async def test_npy_rerun_is_skipped_only_for_the_same_download(
    session: BisqueSession, folder: Path, tmp_path: Path
) -> None:
    """Same shape and dtype is not enough: root, uniq, path and selection must match."""
    out = tmp_path / "v.npy"
    volume = expected(folder, "vol", "volume")
    await BulkDownloader(session.table).download(Target("vol", "volume", out, "0"))
    again = await BulkDownloader(session.table).download(Target("vol", "volume", out, "0"))
    assert again.skipped
    for target, why in [
        (Target("vol", "volume", out, "1"), "selection '0', not '1'"),
        (Target("vol", "twin", out, "0"), "path 'volume', not 'twin'"),
    ]:
        with pytest.raises(OutputExistsError, match=f"it was downloaded with {why}"):
            await BulkDownloader(session.table).download(target)
    assert np.array_equal(np.load(out), volume[0])
    # a file replaced after the download is no longer vouched for by its record
    np.save(out, volume[5])
    with pytest.raises(OutputExistsError, match=r"modified after v\.npy\.source\.json"):
        await BulkDownloader(session.table).download(Target("vol", "volume", out, "0"))
    # nor is a .npy file without a record (written by anything else)
    out.with_name("v.npy.source.json").unlink()
    with pytest.raises(OutputExistsError, match=r"no v\.npy\.source\.json beside it"):
        await BulkDownloader(session.table).download(Target("vol", "volume", out, "0"))
    await BulkDownloader(session.table, restart=True).download(Target("vol", "volume", out, "0"))
    assert np.array_equal(np.load(out), volume[0])
    assert (await BulkDownloader(session.table).download(
        Target("vol", "volume", out, "0"))).skipped
    assert files_in(tmp_path) == ["v.npy", "v.npy.source.json"]


async def test_killed_before_the_source_record_the_journal_proves_the_file(
    session: BisqueSession, server: TableServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "v.npy"
    target = Target("vol", "volume", out, "::2")

    def crash(path: Path, source: dict) -> None:
        raise OSError("killed right after the rename")

    monkeypatch.setattr(outputs, "write_source_record", crash)
    with pytest.raises(OSError, match="killed"):
        await BulkDownloader(session.table).download(target)
    monkeypatch.undo()
    assert files_in(tmp_path) == ["v.npy", "v.npy.part.journal"]
    server.stats.reset()
    assert (await BulkDownloader(session.table).download(target)).skipped
    assert data_requests(server) == 0
    assert files_in(tmp_path) == ["v.npy", "v.npy.source.json"]


@pytest.mark.parametrize(
    ("target", "error"),
    [
        (Target("vol", "volume", Path("x.npy"), "64"), SelectionError),
        (Target("vol", "volume", Path("x.npy"), "1, 2, 3, 4"), SelectionError),
        (Target("vol", "volume", Path("x.h5"), "::0"), SelectionError),
        (Target("vol", "volume", Path("mine.npy")), OutputExistsError),
        (Target("vol", "volume", Path("mine.h5")), OutputExistsError),
    ],
)
async def test_nothing_is_created_before_the_checks_pass(
    session: BisqueSession, tmp_path: Path, target: Target, error: type[Exception]
) -> None:
    np.save(tmp_path / "mine.npy", np.zeros(3))
    with h5py.File(tmp_path / "mine.h5", "w") as f:
        f["volume"] = np.zeros(3)
    before = files_in(tmp_path)
    target = Target(target.uniq, target.path, tmp_path / target.output, target.slices)
    with pytest.raises(error):
        await BulkDownloader(session.table).download(target)
    assert files_in(tmp_path) == before


@pytest.mark.parametrize("status", [400, 403, 404])
async def test_permanent_failure_leaves_nothing_and_no_resume_hint(
    session: BisqueSession, server: TableServer, tmp_path: Path, status: int
) -> None:
    server.faults = FaultPlan(fail_first=10**6, error_statuses=(status,))
    with pytest.raises(BisqueError) as info:
        await BulkDownloader(session.table).download(Target("vol", "volume", tmp_path / "v.npy"))
    assert info.value.status == status
    assert not getattr(info.value, "__notes__", [])  # no "rerun to resume": it cannot help
    # refused at once: the requests already in flight, none retried
    assert 1 <= data_requests(server) <= SMALL.concurrency
    assert files_in(tmp_path) == []  # the preallocated .part and its journal are gone


async def test_permanent_failure_after_saved_blocks_keeps_them(
    session: BisqueSession, server: TableServer, tmp_path: Path
) -> None:
    out = tmp_path / "v.npy"
    target = Target("vol", "volume", out)
    server.faults = FaultPlan(latency=0.02)
    await interrupted(session, target)
    saved = journal_blocks(out)
    server.faults = FaultPlan(fail_first=10**6, error_statuses=(403,))
    with pytest.raises(PermissionDeniedError) as info:
        await BulkDownloader(session.table, block_bytes=8 * KiB).download(target)
    notes = info.value.__notes__
    assert notes == [f"{saved} of {journal_header(out)['blocks']} blocks are kept in "
                     f"{out}.part"]
    assert files_in(tmp_path) == ["v.npy.part", "v.npy.part.journal"]


async def test_missing_folder_and_node(session: BisqueSession, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"folder .* does not exist"):
        await BulkDownloader(session.table).download(
            Target("vol", "volume", tmp_path / "nope" / "v.npy"))
    with pytest.raises(NotFoundError, match="no node 'volum'"):
        await BulkDownloader(session.table).download(Target("vol", "volum", tmp_path / "v.npy"))
    assert files_in(tmp_path) == []  # nothing written: both fail before any file is made


async def interrupted(session: BisqueSession, target: Target, blocks: int = 2) -> None:
    """Start ``target`` and cancel it once ``blocks`` blocks are journaled (like Ctrl-C)."""
    task = asyncio.ensure_future(BulkDownloader(session.table, block_bytes=8 * KiB)
                                 .download(target))
    for _ in range(500):
        if journal_blocks(target.output) >= blocks or task.done():
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not target.output.exists()
    assert target.output.with_name(target.output.name + ".part").exists()


def data_requests(server: TableServer) -> int:
    return server.stats.requests["data"]


def journal_header(path: Path) -> dict:
    journal = path.with_name(path.name + ".part.journal")
    return json.loads(journal.read_bytes().splitlines()[0])


@pytest.mark.parametrize("suffix", [".npy", ".h5"])
async def test_resume_after_cancel_fetches_only_the_rest(
    session: BisqueSession, server: TableServer, folder: Path, tmp_path: Path, suffix: str
) -> None:
    out = tmp_path / f"v{suffix}"
    target = Target("vol", "volume", out, "::-1")
    server.faults = FaultPlan(latency=0.02)
    await interrupted(session, target)
    server.faults = FaultPlan()
    server.stats.reset()
    meter = Meter()
    result = await BulkDownloader(session.table, block_bytes=1, meter=meter).download(target)
    resumed_requests = data_requests(server)

    assert result.resumed_blocks >= 2
    assert np.array_equal(read_output(out), expected(folder, "vol", "volume")[::-1])
    full = await BulkDownloader(session.table, restart=True).download(target)
    assert 0 < resumed_requests < full.stats.requests
    snap = meter.snapshot()
    assert snap.done_bytes == snap.total_bytes and snap.done_requests == snap.total_requests


async def test_changed_remote_is_detected(tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    remote.mkdir()
    samples.write_array(remote, "vol", "volume", (64, 24, 20), dtype="float32", seed=1)
    out = tmp_path / "v.npy"
    target = Target("vol", "volume", out)
    async with run_server(remote, users=USERS, faults=FaultPlan(latency=0.02)) as server:
        async with BisqueSession(server.root, auth=USER, config=SMALL) as bq:
            await interrupted(bq, target)
            samples.write_array(remote, "vol", "volume", (50, 24, 20), dtype="float64", seed=9)
            server.faults = FaultPlan()
            with pytest.raises(ResumeError) as info:
                await BulkDownloader(bq.table).download(target)
            message = str(info.value)
            assert "changed" in message and "(64, 24, 20) float32" in message
            assert "(50, 24, 20) float64" in message and "--restart" in message
            assert out.with_name("v.npy.part").exists()  # kept until the user decides
            await BulkDownloader(bq.table, restart=True).download(target)
    assert np.array_equal(np.load(out), expected(remote, "vol", "volume"))


async def test_other_request_on_the_same_part_is_refused(session: BisqueSession,
                                                         server: TableServer,
                                                         tmp_path: Path) -> None:
    out = tmp_path / "v.npy"
    server.faults = FaultPlan(latency=0.02)
    await interrupted(session, Target("vol", "volume", out, "::2"))
    server.faults = FaultPlan()
    with pytest.raises(ResumeError, match=r"holds another download \(selection '::2' there, "
                                          r"'1::2' now\)"):
        await BulkDownloader(session.table).download(Target("vol", "volume", out, "1::2"))


async def test_part_of_another_path_is_refused_as_another_download(
    session: BisqueSession, server: TableServer, tmp_path: Path
) -> None:
    """Another array has another shape too: the diagnosis is "another download", not "changed"."""
    out = tmp_path / "v.npy"
    server.faults = FaultPlan(latency=0.02)
    await interrupted(session, Target("vol", "volume", out))
    server.faults = FaultPlan()
    with pytest.raises(ResumeError, match=r"v\.npy\.part holds another download \(path "
                                          r"'volume' there, 'grp/labels' now\); rerun with "
                                          r"--restart"):
        await BulkDownloader(session.table).download(Target("vol", "grp/labels", out))


async def test_damaged_journal_starts_over(session: BisqueSession, folder: Path,
                                           tmp_path: Path, caplog: pytest.LogCaptureFixture
                                           ) -> None:
    out = tmp_path / "v.npy"
    out.with_name("v.npy.part").write_bytes(b"junk")
    out.with_name("v.npy.part.journal").write_bytes(b"garbage\n")
    await BulkDownloader(session.table).download(Target("vol", "volume", out))
    assert np.array_equal(np.load(out), expected(folder, "vol", "volume"))
    assert "damaged" in caplog.text and "starting" in caplog.text


async def test_unusable_part_file_starts_over(session: BisqueSession, server: TableServer,
                                              folder: Path, tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "v.h5"
    server.faults = FaultPlan(latency=0.02)
    await interrupted(session, Target("vol", "volume", out))
    server.faults = FaultPlan()
    out.with_name("v.h5.part").write_bytes(b"not hdf5 any more")
    await BulkDownloader(session.table).download(Target("vol", "volume", out))
    assert np.array_equal(read_output(out), expected(folder, "vol", "volume"))
    assert "cannot continue" in caplog.text


async def test_failure_keeps_the_part_and_says_how_to_resume(
    session: BisqueSession, server: TableServer, folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "v.npy"
    target = Target("vol", "volume", out)
    server.faults = FaultPlan(fail_first=1000, error_statuses=(503,))
    with pytest.raises(DownloadError) as info:
        await BulkDownloader(session.table).download(target)
    assert any("rerun the same command to resume" in n for n in info.value.__notes__)
    assert out.with_name("v.npy.part").exists() and not out.exists()
    server.faults = FaultPlan()
    await BulkDownloader(session.table).download(target)
    assert np.array_equal(np.load(out), expected(folder, "vol", "volume"))


async def test_many_files_one_bad(session: BisqueSession, folder: Path,
                                  tmp_path: Path) -> None:
    targets = [
        Target("vol", "volume", tmp_path / "a.npy", "::4"),
        Target("vol", "nowhere", tmp_path / "b.npy"),
        Target("vol", "grp/labels", tmp_path / "c.h5"),
        Target("types", "t3", tmp_path / "d.h5", "0"),
    ]
    meter = Meter()
    results = await BulkDownloader(session.table, meter=meter).download_all(targets, jobs=2)
    assert isinstance(results[1], NotFoundError)
    done = [r for r in results if isinstance(r, FileResult)]
    assert len(done) == 3 and meter.files_done == 3
    assert np.array_equal(read_output(tmp_path / "c.h5"), expected(folder, "vol", "grp/labels"))
    assert not (tmp_path / "b.npy").exists()
    with pytest.raises(UsageError, match="downloads 1 and 2 both write"):
        await BulkDownloader(session.table).download_all([targets[0], targets[0]])


def test_selection_text_is_canonical() -> None:
    assert format_slices(Target("vol", "v", Path("a.npy"), "1:2 ,::1").index) == "1:2, ::1"


@settings(max_examples=200, deadline=None)
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=4).map(tuple),
       block_bytes=st.integers(1, 600), chunk_limit=st.integers(1, 600))
def test_no_hdf5_chunk_is_shared_by_two_blocks(shape: tuple[int, ...], block_bytes: int,
                                               chunk_limit: int) -> None:
    # a compressed chunk rewritten by a second block moves in the file: a kill before the
    # flush would leave a journaled chunk that no longer decodes (found in review)
    from aiobisque.outputs import chunk_grid

    chunks = chunk_grid(shape, 1, min(chunk_limit, block_bytes))
    assert chunks is not None
    grid = BlockGrid.fit(shape, 1, block_bytes, align=chunks)
    owner = np.full(shape, -1)
    for b in range(len(grid)):
        owner[grid.region(b)] = b
    assert (owner >= 0).all()
    for c in range(len(chunks)):
        assert len(np.unique(owner[chunks.region(c)])) == 1


@pytest.mark.parametrize("name", ["last.npy", "last.h5"])
async def test_finished_file_of_a_grown_remote_is_not_taken_as_done(
        tmp_path: Path, name: str) -> None:
    # "-1" picks another row once the array has grown, with the same result shape
    remote = tmp_path / "remote"
    remote.mkdir()
    samples.write_array(remote, "grow", "rows", (10, 4), dtype="int32", seed=1)
    out = tmp_path / name
    async with run_server(remote, users={"alice": "wonderland"}) as server:
        async with BisqueSession(server.root, auth=("alice", "wonderland")) as bq:
            await BulkDownloader(bq.table).download(Target("grow", "rows", out, "-1"))
            samples.write_array(remote, "grow", "rows", (20, 4), dtype="int32", seed=2)
            with pytest.raises(OutputExistsError, match=r"source_shape \[10, 4\], not \[20, 4\]"):
                await BulkDownloader(bq.table).download(Target("grow", "rows", out, "-1"))
            result = await BulkDownloader(bq.table, restart=True).download(
                Target("grow", "rows", out, "-1"))
            assert not result.skipped
    got = read_output(out, "rows" if name.endswith(".h5") else None)
    want = samples.expected(samples.resource_file(remote, "grow"), "rows")[-1]
    assert np.array_equal(got, want)


def test_journal_replaced_between_open_and_lock_is_refused(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import fcntl
    import os

    path = tmp_path / "x.npy.part.journal"
    path.write_text("")
    real_flock = fcntl.flock

    def racing_flock(fd: int, op: int) -> None:
        # another process removes the journal and a third creates a new one meanwhile
        (tmp_path / "new").write_text("")
        os.replace(tmp_path / "new", path)
        real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", racing_flock)
    with pytest.raises(LockedError, match="replaced"):
        Journal.open(path)


async def test_table_download_progress_and_row_only_selections(session: BisqueSession,
                                                               tmp_path: Path) -> None:
    snapshots: list[Progress] = []
    meter = Meter(lambda m: snapshots.append(m.snapshot()))
    await BulkDownloader(session.table, meter=meter, block_bytes=200).download(
        Target("tab", "rows", tmp_path / "t.npy"))
    assert snapshots[-1].total_bytes > 0
    assert snapshots[-1].done_bytes == snapshots[-1].total_bytes
    assert snapshots[-1].done_requests == snapshots[-1].total_requests > 1
    for bad in ("None", "1, 2"):
        with pytest.raises(SelectionError, match="select rows only"):
            await BulkDownloader(session.table).download(
                Target("tab", "rows", tmp_path / "u.npy", bad))


def test_summaries_count_right_and_rate_only_what_was_fetched() -> None:
    from aiobisque.bulk import FileResult

    stats = DownloadStats(requests=1, retries=1, seconds=2.0)
    result = FileResult(Target("vol", "volume", Path("v.npy")), (1024, 1024), np.dtype("f4"),
                        blocks=4, resumed_blocks=3, resumed_bytes=3 << 20, stats=stats)
    text = str(result)
    assert "fetched 1.0 MiB in 2.0 s (512.0 KiB/s), 1 request, 1 retry" in text
    assert "resumed: 3.0 MiB were already saved (3/4 blocks)" in text
    assert "2 requests, 0 retries" in str(DownloadStats(requests=2))


async def test_an_unwritable_output_folder_is_named(session: BisqueSession, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import aiobisque.resume

    def refuse(path: Path, **_: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    # the suite runs as root, which no folder mode stops: refuse where the journal is made
    monkeypatch.setattr(aiobisque.resume.Journal, "open", staticmethod(refuse))
    out = tmp_path / "x.npy"
    with pytest.raises(UsageError, match=r"cannot write .*x\.npy: Permission denied in .* "
                                         r"\(for x\.npy\.part\.journal\); choose another"):
        await BulkDownloader(session.table).download(Target("vol", "volume", out))


@settings(max_examples=200, deadline=None)
@given(shape=st.lists(st.integers(0, 7), min_size=0, max_size=4).map(tuple),
       block_bytes=st.integers(1, 300))
def test_block_shape_counts_without_listing(shape: tuple, block_bytes: int) -> None:
    grid = BlockGrid.fit(shape, 4, block_bytes)
    brute: dict[tuple[int, ...], int] = {}
    for b in range(len(grid)):
        brute[grid.block_shape(b)] = brute.get(grid.block_shape(b), 0) + 1
    assert grid.shape_counts() == brute


async def interrupted_table_download(session: BisqueSession, server: TableServer,
                                     target: Target, block_bytes: int) -> list[str]:
    """Start a table download over a slow link and stop it once two blocks are saved."""
    server.faults = FaultPlan(latency=0.05)
    task = asyncio.create_task(
        BulkDownloader(session.table, block_bytes=block_bytes).download(target))
    blocks = target.output.with_name(target.output.name + ".part.d")
    deadline = time.monotonic() + 20
    # polls the folder: no event tells when a block file appears
    while len(list_blocks(blocks)) < 2 and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    server.faults = FaultPlan()
    return list_blocks(blocks)


async def test_table_resume_keeps_the_first_runs_blocks_whatever_the_block_size_now(
        session: BisqueSession, server: TableServer, folder: Path, tmp_path: Path) -> None:
    target = Target("tab", "rows", tmp_path / "t.npy")
    assert len(await interrupted_table_download(session, server, target, 200)) >= 2
    result = await BulkDownloader(session.table, block_bytes=1 << 20).download(target)
    got = np.load(target.output)
    assert len(got) == 40 and result.resumed_blocks >= 2
    np.testing.assert_array_equal(got["id"], expected(folder, "tab", "rows")["id"])


@pytest.mark.parametrize("ts", ["moved", "none"])
async def test_a_changed_remote_table_is_not_mixed_in(tmp_path: Path, ts: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """``moved``: the data service's ts changed; ``none``: no ts (so a saved block is read
    again and compared)."""
    if ts == "none":
        without_remote_version(monkeypatch)
    remote = tmp_path / "remote"
    remote.mkdir()
    samples.write_table(remote, "tab", "rows", nrows=40)
    target = Target("tab", "rows", tmp_path / "t.npy")
    async with run_server(remote, users=USERS) as srv:
        async with BisqueSession(srv.root, auth=USER, config=SMALL) as s:
            assert len(await interrupted_table_download(s, srv, target, 200)) >= 2
            # same rows and columns, other values; written whole to a new file, renamed in
            samples.write_table(tmp_path, "changed", "rows", nrows=40, seed=9)
            if ts == "moved":
                later = time.time() + 10  # the data service's ts has a resolution of seconds
                os.utime(tmp_path / "changed.h5", (later, later))
            os.replace(tmp_path / "changed.h5", remote / "tab.h5")
            why = "changed since" if ts == "moved" else r"rows \d+:\d+ of the selection hold other"
            with pytest.raises(ResumeError, match=why):
                await BulkDownloader(s.table, block_bytes=200).download(target)
    assert not target.output.exists()


async def test_a_table_no_download_can_read_leaves_no_files(session: BisqueSession,
                                                            tmp_path: Path) -> None:
    with pytest.raises(UnsupportedError, match="enum"):
        await BulkDownloader(session.table).download(Target("types", "flags", tmp_path / "f.npy"))
    assert os.listdir(tmp_path) == []


def test_one_process_at_a_time_fills_a_table_download(tmp_path: Path) -> None:
    from aiobisque.journal import LockedError
    from aiobisque.table_download import _lock

    first = _lock(tmp_path, tmp_path / "t.npy")
    try:
        with pytest.raises(LockedError, match="another process is downloading"):
            _lock(tmp_path, tmp_path / "t.npy")
    finally:
        os.close(first)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() only")
def test_file_work_runs_in_a_forked_child_too() -> None:
    import multiprocessing

    from aiobisque.bulk import _in_thread

    assert asyncio.run(_in_thread(lambda: "parent")) == "parent"  # the pool has threads now
    ctx = multiprocessing.get_context("fork")
    answers = ctx.Queue()
    child = ctx.Process(target=lambda: answers.put(asyncio.run(_in_thread(lambda: "child"))))
    child.start()
    child.join(10)
    hung = child.is_alive()
    if hung:
        child.kill()
        child.join()
    assert not hung, "the child waited for the parent's file threads"
    assert answers.get(timeout=1) == "child"


@pytest.mark.parametrize(("concurrency", "requests"), [(256, 16), (4, 4)])
async def test_a_small_file_is_spread_over_the_window_start(tmp_path: Path, concurrency: int,
                                                            requests: int) -> None:
    # 4 MiB, one request of the default size: split as load_array splits it, so as many
    # connections as may run carry it (and a rerun plans the same requests)
    remote = tmp_path / "remote"
    remote.mkdir()
    samples.write_array(remote, "big", "volume", (64, 128, 128), dtype="float32", seed=4)
    out = tmp_path / "big.npy"
    async with run_server(remote, users=USERS) as server:
        async with BisqueSession(server.root, auth=USER, concurrency=concurrency) as bq:
            result = await BulkDownloader(bq.table).download(Target("big", "volume", out))
        assert server.stats.requests["data"] == requests
    assert result.stats.requests == requests
    assert np.array_equal(np.load(out), expected(remote, "big", "volume"))
