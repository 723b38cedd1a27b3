"""The official ViQi client (``vqapi``) reads tables and arrays from the embedded server.

``vqapi``'s ``TableProxy`` is driven directly, over a plain ``requests`` session with Basic
credentials: its full session setup needs ViQi's own services (``auths``, ``futures``...),
which a BisQue table service does not have, while its table calls are the same URL grammar.
``load_table`` reads a numeric table the way real servers serve it: one 2-D ``format:hdf``
array of the columns' common type, typed back per column from ``info``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import requests

from aiobisque.server import TableServer, samples

table_proxy = pytest.importorskip("vqapi.services.table_proxy")
# vqapi reaches for numpy.core, which numpy 2 deprecates
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

NUM = np.array(
    [(1, 0.5, 7), (2, 1.5, 8), (3, 2.5, 9)], dtype=[("id", "<i4"), ("x", "<f8"), ("n", "<i8")]
)


class _Session:
    """What ``TableProxy`` asks of a session: ``c``, a requests session with its headers."""

    def __init__(self, user: str, password: str) -> None:
        self.c = requests.Session()
        self.c.auth = (user, password)


def SAMPLES(folder: Path) -> None:
    with h5py.File(folder / "tab.h5", "w") as h5:
        h5["numbers"] = NUM
    samples.write_table(folder, "mixed", "rows", nrows=5)
    samples.write_array(folder, "vol", "v", (6, 5, 4), dtype=">f4", seed=4)


SERVER_OPTIONS = {"users": {"alice": "wonderland"}}


@pytest.fixture(scope="module")
def proxy(thread_server: TableServer) -> Iterator[Any]:
    session = _Session("alice", "wonderland")
    try:
        yield table_proxy.TableProxy(session, thread_server.table_url)
    finally:
        session.c.close()


def test_load_table_reads_a_numeric_table(proxy: Any) -> None:
    frame = proxy.load_table("tab", "numbers")
    assert list(frame.columns) == ["id", "x", "n"]
    assert [str(t) for t in frame.dtypes] == ["int32", "float64", "int64"]
    np.testing.assert_array_equal(frame["id"].to_numpy(), NUM["id"])
    np.testing.assert_array_equal(frame["x"].to_numpy(), NUM["x"])
    np.testing.assert_array_equal(frame["n"].to_numpy(), NUM["n"])


def test_load_table_rows(proxy: Any) -> None:
    frame = proxy.load_table("tab", "numbers", slices=[slice(1, 3)])
    np.testing.assert_array_equal(frame["id"].to_numpy(), NUM["id"][1:3])


def test_a_table_with_a_string_column_fails_as_on_real_servers(proxy: Any) -> None:
    # real servers answer 500 to format:hdf of a table with a string column; vqapi then
    # has no HDF5 image to open
    with pytest.raises(Exception):  # noqa: B017 - vqapi raises whatever PyTables does
        proxy.load_table("mixed", "rows")


def test_load_array(proxy: Any, folder: Path) -> None:
    expected = samples.expected(folder / "vol.h5", "v")
    got = proxy.load_array("vol", "v", [slice(1, 4), 2])
    assert got.dtype == np.dtype("<f4")  # native order
    np.testing.assert_array_equal(got, expected[1:4, 2:3])
