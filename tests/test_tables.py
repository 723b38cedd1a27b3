"""Tables, scalars, unreadable nodes and the errors real servers make mean something.

Truth comes from PyTables reading the same files the embedded (faithful) server serves.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import tables

from aiobisque import (
    BisqueSession,
    NotFoundError,
    PermissionDeniedError,
    SelectionError,
    Session,
    UnsupportedError,
    UsageError,
)
from aiobisque.columns import _column_cells
from aiobisque.errors import ProtocolError
from aiobisque.progress import DownloadStats, Progress
from aiobisque.server import TableServer, samples
from tests.conftest import USER

NROWS = 37
BIG = 2**62 + 1  # not representable as float64: a lossy common type would change it


def write_features(folder: Path) -> None:
    """A DREAM3D-like feature table: int, float, bool, text and a big int64 column."""
    desc = {
        "id": tables.Int32Col(pos=0),
        "volume": tables.Float64Col(pos=1),
        "active": tables.BoolCol(pos=2),
        "phase": tables.StringCol(12, pos=3),
        "count": tables.Int64Col(pos=4),
        "small": tables.UInt8Col(pos=5),
    }
    with tables.open_file(str(folder / "feat.h5"), "w") as f:
        group = f.create_group("/", "Grains")
        t = f.create_table(group, "FeatureData", desc)
        row = t.row
        for i in range(NROWS):
            row["id"] = i
            row["volume"] = i * 0.25 + 0.125
            row["active"] = i % 3 == 0
            row["phase"] = f"phase-{i % 4}" if i % 5 else ""
            row["count"] = BIG + i
            row["small"] = i % 256
            row.append()
        t.flush()
        numeric = f.create_table("/", "numbers", {"a": tables.Int16Col(pos=0),
                                                  "b": tables.Float32Col(pos=1)})
        r = numeric.row
        for i in range(5):
            r["a"], r["b"] = -i, i / 2
            r.append()
        numeric.flush()
        f.create_table("/", "empty", {"a": tables.Int32Col()})
        f.create_group("/", "nothing_here")
        f.create_array("/", "scalar", np.float64(2.5))
    with h5py.File(folder / "feat.h5", "a") as h5:
        h5.create_dataset("names", data=np.array(["a", "bb"], dtype=object),
                          dtype=h5py.string_dtype())
        flags = h5.create_dataset("flags", data=np.array([(1, True), (2, False)],
                                                         dtype=[("n", "<i4"), ("flag", "?")]))
        flags.attrs["CLASS"] = np.bytes_("TABLE")


def SAMPLES(folder: Path) -> None:
    write_features(folder)
    samples.write_array(folder, "mine", "a", (3, 3), dtype="int32")


SERVER_OPTIONS = {"users": {"alice": "wonderland", "bob": "builder"},
                  "access": {"mine": {"bob"}}, "public": ["feat"]}

PATH = "Grains/FeatureData"


def truth(folder: Path, path: str = "/Grains/FeatureData") -> np.ndarray[Any, Any]:
    with tables.open_file(str(folder / "feat.h5")) as f:
        data: np.ndarray[Any, Any] = f.get_node(path).read()
    return data


def same(got: np.ndarray[Any, Any], want: np.ndarray[Any, Any]) -> None:
    """Field by field, text decoded: PyTables gives bytes, aiobisque text."""
    assert got.dtype.names == want.dtype.names
    for name in want.dtype.names or ():
        w = want[name]
        if w.dtype.kind == "S":
            assert got[name].dtype.kind == "U"
            w = np.char.decode(w, "utf-8")
        else:
            assert got[name].dtype == w.dtype, name  # exact types: no common type
        np.testing.assert_array_equal(got[name], w, err_msg=name)


async def test_info_describes_a_table_with_pytables_types(bq: BisqueSession) -> None:
    info = await bq.table.info("feat", PATH)
    assert info.kind == "table" and info.shape == (NROWS,)
    assert info.columns == {"id": "int32", "volume": "float64", "active": "bool",
                            "phase": "string", "count": "int64", "small": "uint8"}


async def test_load_table_round_trips_exact_types(bq: BisqueSession, folder: Path,
                                                  server: TableServer) -> None:
    stats = DownloadStats()
    got = await bq.table.load_table("feat", PATH, stats=stats)
    same(got, truth(folder))
    assert got["count"][0] == BIG  # int64 beyond float64's precision, unchanged
    assert stats.complete and stats.requests == 6  # one request per column
    # every data request asked for one column: rows, then a single column index
    ranges = [r.range for r in server.stats.data_log]
    assert sorted(ranges) == sorted(f"0;{NROWS - 1},{k}" for k in range(6))


@pytest.mark.parametrize("rows", [slice(None), slice(5, 20), slice(-7, None), slice(None, None, 3),
                                  slice(30, 2, -4), slice(40, 50), slice(5, 5)])
async def test_rows_follow_numpy(bq: BisqueSession, folder: Path, rows: slice) -> None:
    got = await bq.table.load_table("feat", PATH, rows, ["phase", "id", "count"])
    want = truth(folder)[rows][["phase", "id", "count"]]
    assert len(got) == len(want)
    same(got, np.asarray(want))


async def test_one_row_is_one_record(bq: BisqueSession, folder: Path) -> None:
    got = await bq.table.load_table("feat", PATH, -1)
    assert got.shape == () and got["id"] == NROWS - 1
    assert got["phase"] == truth(folder)[-1]["phase"].decode()
    with pytest.raises(SelectionError, match="out of bounds"):
        await bq.table.load_table("feat", PATH, NROWS)


async def test_chunked_by_rows_under_the_session_limits(bq: BisqueSession, folder: Path,
                                                        server: TableServer) -> None:
    seen: list[Progress] = []
    got = await bq.table.load_table("feat", PATH, columns=["phase", "volume"],
                                    request_bytes=64, progress=seen.append)
    same(got, np.asarray(truth(folder)[["phase", "volume"]]))
    assert server.stats.requests["data"] > 4  # both columns in several row chunks
    assert seen and seen[-1].done_bytes == seen[-1].total_bytes


async def test_columns_and_kinds_are_checked(bq: BisqueSession) -> None:
    with pytest.raises(SelectionError, match=r"no column 'Phase' \(columns: id, volume"):
        await bq.table.load_table("feat", PATH, columns=["Phase"])
    with pytest.raises(SelectionError, match="more than once"):
        await bq.table.load_table("feat", PATH, columns=["id", "id"])
    with pytest.raises(UsageError, match=r"is a table .*load_table"):
        await bq.table.load_array("feat", PATH)
    with pytest.raises(UsageError, match="is an array, not a table"):
        await bq.table.load_table("feat", "scalar")


async def test_numeric_table_and_empty_table(bq: BisqueSession, folder: Path) -> None:
    same(await bq.table.load_table("feat", "numbers"), truth(folder, "/numbers"))
    empty = await bq.table.load_table("feat", "empty")
    assert empty.shape == (0,) and empty.dtype.names == ("a",)


async def test_as_dataframe(bq: BisqueSession, folder: Path) -> None:
    frame = await bq.table.load_table("feat", PATH, slice(0, 4), as_dataframe=True)
    assert list(frame.columns) == ["id", "volume", "active", "phase", "count", "small"]
    assert frame["count"].dtype == np.int64 and frame["active"].dtype == bool
    assert frame["phase"].tolist() == [c.decode() for c in truth(folder)["phase"][:4]]


def test_sync_twins_read_tables(thread_server: TableServer, folder: Path) -> None:
    with Session(thread_server.root, auth=USER) as s:
        same(s.load_table("feat", PATH), truth(folder))
        same(s.table.load_table("feat", PATH, slice(1, 3)), truth(folder)[1:3])


async def test_scalar_is_refused_clearly_without_a_request(bq: BisqueSession,
                                                           server: TableServer) -> None:
    info = await bq.table.info("feat", "scalar")
    assert info.kind == "matrix" and info.shape == () and info.dtype == np.float64
    before = server.stats.requests["data"]
    with pytest.raises(UnsupportedError, match=r"0-d \(scalar\) dataset.*cannot serve"):
        await bq.table.load_array("feat", "scalar")
    assert server.stats.requests["data"] == before


async def test_variable_length_strings_are_named_unsupported(bq: BisqueSession) -> None:
    info = await bq.table.info("feat", "names")
    assert info.kind == "unsupported" and info.shape is None
    with pytest.raises(UnsupportedError, match=r"type \(unknown\)"):
        await bq.table.load_array("feat", "names")
    root = await bq.table.info("feat")
    assert ("/names", "(unknown)") in root.children


async def test_empty_group_is_a_group(bq: BisqueSession) -> None:
    info = await bq.table.info("feat", "nothing_here")  # real BisQue answers 404 for it
    assert info.kind == "group" and info.children == ()


async def test_mistyped_path_names_the_missing_node(bq: BisqueSession) -> None:
    with pytest.raises(NotFoundError, match=r"no node 'Grain' under / \(children: .*Grains"):
        await bq.table.info("feat", "Grain/FeatureData")
    with pytest.raises(NotFoundError,
                       match=r"no node 'Featuredata' under /Grains \(children: FeatureData\)"
                       ) as caught:
        await bq.table.load_table("feat", "Grains/Featuredata")
    assert caught.value.status == 400  # what the server said is kept


async def test_unknown_and_forbidden_resources(bq: BisqueSession) -> None:
    with pytest.raises(NotFoundError, match="resource 00-nothing not found") as caught:
        await bq.table.info("00-nothing", "a")
    assert caught.value.status == 404
    # the data service refuses too, so it cannot be told from a missing one: say both
    with pytest.raises(PermissionDeniedError,
                       match=r"mine: no such resource, or no access for user 'alice'") as denied:
        await bq.table.info("mine", "a")
    assert denied.value.status == 403


def test_text_cells_are_checked() -> None:
    answer = b'[{"offset": 3, "header": "p", "type": "string", "data": ["a", null], "size": 2}]'
    assert _column_cells(answer, "p", 3, 2, "w") == ["a", ""]
    with pytest.raises(ProtocolError, match="expected 3 cells from row 3"):
        _column_cells(answer, "p", 3, 3, "w")
    with pytest.raises(ProtocolError, match="no column 'q'"):
        _column_cells(answer, "q", 3, 2, "w")
    with pytest.raises(ProtocolError, match="not JSON"):
        _column_cells(b"<html>", "p", 3, 2, "w")
    with pytest.raises(ProtocolError, match="holds int"):
        _column_cells(answer.replace(b'"a"', b"7"), "p", 3, 2, "w")


async def test_a_transient_error_on_a_text_column_stays_transient(bq: BisqueSession,
                                                                   server: TableServer) -> None:
    from aiobisque import RetryPolicy, ServerError
    from aiobisque.server import FaultPlan

    server.faults = FaultPlan(error_rate=1.0, error_statuses=(503,))
    quick = RetryPolicy(max_attempts=2, backoff_initial=0.001, backoff_max=0.002)
    with pytest.raises(ServerError, match="503") as caught:
        await bq.table.load_table("feat", PATH, columns=["phase"], retry=quick)
    assert not isinstance(caught.value, UnsupportedError)


async def test_wide_text_cells_are_asked_in_fewer_rows(bq: BisqueSession, folder: Path,
                                                       server: TableServer,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import aiobisque.columns

    # answers of at most 300 bytes: a chunk of rows is split until its answer fits
    monkeypatch.setattr(aiobisque.columns, "_MIN_TEXT_ANSWER", 300)
    got = await bq.table.load_table("feat", PATH, columns=["phase"], request_bytes=1)
    assert list(got["phase"]) == [c.decode() for c in truth(folder)["phase"]]


async def test_an_unmappable_column_type_is_refused_alone(bq: BisqueSession,
                                                          folder: Path) -> None:
    # h5py writes booleans as an HDF5 enum, which PyTables (so BisQue) types 'enum'
    info = await bq.table.info("feat", "flags")
    assert info.columns == {"n": "int32", "flag": "enum"}
    with pytest.raises(UnsupportedError, match=r"flag \(enum\)"):
        await bq.table.load_table("feat", "flags")
    got = await bq.table.load_table("feat", "flags", columns=["n"])
    assert list(got["n"]) == [1, 2]


def test_dask_array_of_a_table(thread_server: TableServer, folder: Path) -> None:
    import dask

    from aiobisque.dask import from_bisque

    want = truth(folder)
    x = from_bisque(thread_server.root, "feat", PATH, auth=USER, chunks="300 B")
    assert x.shape == (NROWS,) and x.numblocks[0] > 3 and x.dtype["phase"] == np.dtype(object)
    with dask.config.set(scheduler="threads"):
        got = x.compute()
        part = x[-9::2].compute()
        counts = x["count"].compute()
    same(got.astype([(n, "U12" if n == "phase" else got.dtype[n]) for n in got.dtype.names]),
         want)
    assert list(part["id"]) == list(want["id"][-9::2])
    assert counts.dtype == np.int64 and counts[0] == BIG


@pytest.mark.parametrize("suffix", [".h5", ".npy", ".csv"])
def test_cli_writes_the_table_exactly(thread_server: TableServer, folder: Path,
                                      tmp_path: Path, suffix: str,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import csv

    from aiobisque.cli import main

    monkeypatch.setenv("BISQUE_PASSWORD", USER[1])
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    out = tmp_path / f"features{suffix}"
    assert main(["download", thread_server.root, "feat", PATH, "-o", str(out), "--user",
                 USER[0], "--no-progress", "--block-mb", "0.001"]) == 0
    want = truth(folder)
    if suffix == ".npy":
        same(np.load(out), want)
    elif suffix == ".h5":
        with tables.open_file(str(out)) as f:  # a PyTables table, as BisQue reads it
            got = f.get_node("/FeatureData").read()
        assert got.dtype["active"] == np.bool_
        for name in want.dtype.names or ():
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    else:
        with open(out, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        assert rows[0] == list(want.dtype.names or ())
        for line, record in zip(rows[1:], want, strict=True):
            assert line == [str(record["id"]), repr(float(record["volume"])),
                            str(bool(record["active"])), record["phase"].decode(),
                            str(record["count"]), str(record["small"])]


def test_cli_columns_leave_out_what_cannot_be_read(thread_server: TableServer, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from aiobisque.cli import main

    monkeypatch.setenv("BISQUE_PASSWORD", USER[1])
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    login = ["--user", USER[0], "--no-progress"]
    out = tmp_path / "flags.npy"
    # h5py's booleans are an 'enum' column: the whole table cannot be read, its other columns can
    assert main(["download", thread_server.root, "feat", "flags", "-o", str(out), *login]) == 1
    err = capsys.readouterr().err
    assert "flag (enum)" in err and not out.exists()
    assert os.listdir(tmp_path) == []  # refused before any file was made
    assert main(["download", thread_server.root, "feat", "flags", "-o", str(out), "--columns",
                 "n", *login]) == 0
    got = np.load(out)
    assert got.dtype.names == ("n",) and list(got["n"]) == [1, 2]
    assert main(["download", thread_server.root, "feat", "scalar", "-o", str(tmp_path / "s.npy"),
                 "--columns", "n", *login]) == 2
    assert "columns apply to tables only" in capsys.readouterr().err
