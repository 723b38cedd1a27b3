"""The official bqapi client against the embedded server: same arrays as h5py reads."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aiobisque.server import TableServer, samples, serve_in_thread

bqapi = pytest.importorskip("bqapi")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bqapi")
    samples.write_seed(folder)
    samples.write_array(folder, "vol", "volumes/big endian", (6, 7, 8), dtype=">f8", seed=2)
    return folder


@pytest.fixture(scope="module")
def server(folder: Path) -> Iterator[TableServer]:
    with serve_in_thread(folder, users={"alice": "wonderland"}) as srv:
        yield srv


@pytest.fixture(scope="module")
def session(server: TableServer) -> Any:
    bq = bqapi.BQSession().init_local("alice", "wonderland", bisque_root=server.root)
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


def test_wrong_password_returns_none(server: TableServer) -> None:
    bq = bqapi.BQSession()
    try:
        assert bq.init_local("alice", "not-the-password", bisque_root=server.root) is None
    finally:
        bq.c.close()


def test_requests_seen_by_the_server(server: TableServer, session: Any) -> None:
    server.stats.reset()
    session.service("table").load_array(samples.SEED_UNIQ, samples.SEED_PATH, slices=[0])
    # bqapi asks info for the rank, then fetches everything in one request
    assert server.stats.requests == {"info": 1, "data": 1}
    assert [r.range for r in server.stats.data_log] == ["0;0,;,;,;"]
