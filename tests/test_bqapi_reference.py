"""The official bqapi client against the embedded server: same arrays as h5py reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bqapi
import h5py
import numpy as np
import pytest

from aiobisque.server import TableServer, samples

# every numeric dtype, both byte orders where they exist
DTYPES = [
    "|i1", "|u1", "<i2", ">i2", "<u2", "<i4", ">i4", "<u4", "<i8", ">u8",
    "<f2", "<f4", ">f4", "<f8", ">f8", "<c8", ">c16",
]  # fmt: skip
BYTE_ORDER = {"|": "na", "<": "le", ">": "be"}
NUMBERS = np.array([(1, 0.5), (2, 1.5), (3, 2.5)], dtype=[("id", "<i4"), ("x", "<f8")])


def SAMPLES(folder: Path) -> None:
    samples.write_seed(folder)
    samples.write_array(folder, "vol", "volumes/big endian", (6, 7, 8), dtype=">f8", seed=2)
    for dtype in DTYPES:
        samples.write_array(
            folder,
            "types",
            f"a_{np.dtype(dtype).str[1:]}_{BYTE_ORDER[dtype[0]]}",
            (3, 4),
            dtype=dtype,
            seed=5,
        )
    samples.write_array(folder, "types", "one_d", np.arange(7, dtype=np.uint16))
    samples.write_array(folder, "types", "flags", np.array([[True, False], [False, True]]))
    with h5py.File(folder / "tab.h5", "w") as h5:
        h5["numbers"] = NUMBERS


SERVER_OPTIONS = {"users": {"alice": "wonderland"}}


@pytest.fixture(scope="module")
def session(thread_server: TableServer) -> Any:
    bq = bqapi.BQSession().init_local("alice", "wonderland", bisque_root=thread_server.root)
    assert bq is not None
    yield bq
    bq.c.close()  # the underlying requests session


def test_seed_example(session: Any, folder: Path) -> None:
    ms = session.service("table").load_array(samples.SEED_UNIQ, samples.SEED_PATH)
    assert ms.shape == (5, 5, 5, 1)
    expected = samples.expected(folder / f"{samples.SEED_UNIQ}.dream3d", samples.SEED_PATH)
    np.testing.assert_array_equal(ms, expected)
    assert set(np.unique(ms)) == {1, 2}


@pytest.mark.parametrize(
    ("slices", "index"),
    [
        ([1], np.s_[1:2]),  # an int keeps a length-1 dimension
        ([slice(1, 4), 2], np.s_[1:4, 2:3]),
        ([slice(None, 2), slice(3, None), 0], np.s_[:2, 3:, 0:1]),
    ],
)
def test_slices(session: Any, folder: Path, slices: list[Any], index: Any) -> None:
    ms = session.service("table").load_array(samples.SEED_UNIQ, samples.SEED_PATH, slices=slices)
    expected = samples.expected(folder / f"{samples.SEED_UNIQ}.dream3d", samples.SEED_PATH)
    np.testing.assert_array_equal(ms, expected[index])
    assert ms.shape == expected[index].shape


def test_big_endian_array_and_spaces_in_path(session: Any, folder: Path) -> None:
    table = session.service("table")
    # bqapi does not quote path components itself; a space is sent as %20 by requests
    ms = table.load_array(
        f"{session.bisque_root}/data_service/vol", "volumes/big endian", slices=[slice(2, 5)]
    )
    np.testing.assert_array_equal(
        ms, samples.expected(folder / "vol.h5", "volumes/big endian")[2:5]
    )


def test_wrong_password_returns_none(thread_server: TableServer) -> None:
    bq = bqapi.BQSession()
    try:
        assert bq.init_local("alice", "not-the-password", bisque_root=thread_server.root) is None
    finally:
        bq.c.close()


def test_requests_seen_by_the_server(thread_server: TableServer, session: Any) -> None:
    thread_server.stats.reset()
    session.service("table").load_array(samples.SEED_UNIQ, samples.SEED_PATH, slices=[0])
    # bqapi asks info for the rank, then fetches everything in one request
    assert thread_server.stats.requests == {"info": 1, "data": 1}
    assert [r.range for r in thread_server.stats.data_log] == ["0;0,;,;,;"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_dtype_reads_back_equal_in_native_order(
    session: Any, folder: Path, dtype: str
) -> None:
    name = f"a_{np.dtype(dtype).str[1:]}_{BYTE_ORDER[dtype[0]]}"
    got = session.service("table").load_array("types", name)
    expected = samples.expected(folder / "types.h5", name)
    assert got.dtype == expected.dtype.newbyteorder("=")  # PyTables writes native order
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("name", ["one_d", "flags"])
def test_one_d_and_bool_arrays(session: Any, folder: Path, name: str) -> None:
    got = session.service("table").load_array("types", name)
    np.testing.assert_array_equal(got, samples.expected(folder / "types.h5", name))


def test_a_numeric_table_reads_as_a_2d_array(session: Any) -> None:
    # as from a real server: DataFrame.values, the common type of the columns
    got = session.service("table").load_array("tab", "numbers")
    assert got.dtype == np.float64 and got.shape == (3, 2)
    np.testing.assert_array_equal(got, np.array([[1, 0.5], [2, 1.5], [3, 2.5]]))
