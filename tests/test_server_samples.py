"""Sample resources, the curated exports and the threaded server."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import h5py
import numpy as np
import pytest

import aiobisque.server
from aiobisque.server import samples, serve_in_thread
from aiobisque.server.pytest_plugin import basic_auth


def test_exports_are_sorted_and_real() -> None:
    names = aiobisque.server.__all__
    assert names == sorted(names)
    for name in names:
        assert getattr(aiobisque.server, name).__doc__, name


def test_seed(tmp_path: Path) -> None:
    path = samples.write_seed(tmp_path)
    assert path == tmp_path / f"{samples.SEED_UNIQ}.dream3d"
    phases = samples.expected(path, samples.SEED_PATH)
    assert phases.shape == (5, 5, 5, 1) and phases.dtype == np.int32
    assert set(np.unique(phases)) == {1, 2}
    np.testing.assert_array_equal(
        phases, samples.expected(samples.write_seed(tmp_path), samples.SEED_PATH)
    )
    with h5py.File(path, "r") as h5:
        attrs = h5[samples.SEED_PATH].attrs
        assert list(attrs["TupleDimensions"]) == [5, 5, 5]
        assert list(attrs["ComponentDimensions"]) == [1]
        assert "FeatureIds" in h5[samples.SEED_PATH].parent


@pytest.mark.parametrize(
    "dtype", ["<f4", ">f8", "<i2", ">u4", "?", "<c8", [("a", "<i4"), ("b", "S3")]]
)
def test_write_array_is_deterministic(tmp_path: Path, dtype: object) -> None:
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
    one = samples.write_array(tmp_path / "one", "u", "g/x", (9, 4, 3), dtype=dtype, seed=4)
    two = samples.write_array(tmp_path / "two", "u", "g/x", (9, 4, 3), dtype=dtype, seed=4)
    a, b = samples.expected(one, "g/x"), samples.expected(two, "g/x")
    assert a.dtype == np.dtype(dtype) and a.shape == (9, 4, 3)
    assert a.tobytes() == b.tobytes()
    other = samples.write_array(tmp_path / "two", "u", "g/y", (9, 4, 3), dtype=dtype, seed=5)
    assert samples.expected(other, "g/y").tobytes() != a.tobytes()
    assert samples.expected(other, "g/x").tobytes() == a.tobytes()  # the file was extended


def test_write_array_options(tmp_path: Path) -> None:
    path = samples.write_array(tmp_path, "c", "x", (64, 64), chunks=(16, 16), compression="gzip")
    with h5py.File(path, "r") as h5:
        assert h5["x"].chunks == (16, 16) and h5["x"].compression == "gzip"
    data = np.arange(5, dtype=np.int16)
    path = samples.write_array(tmp_path, "c", "x", data, dtype=">i4")  # replaces the node
    out = samples.expected(path, "x")
    assert out.dtype == np.dtype(">i4")
    np.testing.assert_array_equal(out, data)
    assert samples.resource_file(tmp_path, "c") == path


def test_big_volumes_are_made_quickly(tmp_path: Path) -> None:
    started = time.monotonic()
    path = samples.write_array(tmp_path, "big", "v", (64, 512, 512))  # 64 MiB float32
    assert time.monotonic() - started < 3
    with h5py.File(path, "r") as h5:
        first, last = h5["v"][0], h5["v"][-1]
    assert first.std() > 0.2 and not np.array_equal(first, last)


def test_write_table(tmp_path: Path) -> None:
    path = samples.write_table(tmp_path, "t", "tables/rows", nrows=4)
    rows = samples.expected(path, "tables/rows")
    assert rows.dtype.names == ("id", "x", "label")
    assert list(rows["id"]) == [0, 1, 2, 3] and rows["label"][2] == b"row2"
    with h5py.File(path, "r") as h5:
        assert h5["tables/rows"].attrs["CLASS"] == b"TABLE"
        assert h5["tables/rows"].attrs["FIELD_1_NAME"] == b"x"


def test_serve_in_thread(tmp_path: Path) -> None:
    samples.write_seed(tmp_path)
    with serve_in_thread(tmp_path) as srv:
        assert srv.root.startswith("http://127.0.0.1:")
        request = urllib.request.Request(srv.root + "/auth_service/session", headers=basic_auth())
        with urllib.request.urlopen(request, timeout=10) as response:
            assert b'value="alice"' in response.read()
        assert srv.stats.requests["session"] == 1
    with pytest.raises(OSError):
        urllib.request.urlopen(srv.root + "/services", timeout=2)


def test_serve_in_thread_reports_start_errors(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError), serve_in_thread(tmp_path / "missing"):
        pass
    with pytest.raises(ValueError), serve_in_thread(tmp_path, hdf_layout="sideways"):
        pass
