"""Range grammar, quoted path components and path safety of the embedded server."""

from __future__ import annotations

import asyncio
import io
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import pytest_asyncio
import tables

from aiobisque.server import TableServer, run_server, samples
from aiobisque.server.pytest_plugin import basic_auth
from aiobisque.server.ranges import RangeError, parse_range

SHAPE = (6, 5, 4)
ALICE = basic_auth("alice", "wonderland")

# (range on the wire, the numpy index it must equal)
GRAMMAR = [
    ("", np.s_[:, :, :]),
    (";", np.s_[:, :, :]),
    ("2", np.s_[2:3]),  # a single index keeps its dimension
    ("5", np.s_[5:6]),
    ("1;3", np.s_[1:4]),  # inclusive stop
    ("1:3", np.s_[1:4]),  # ":" means the same as ";"
    ("2;", np.s_[2:]),
    (";2", np.s_[:3]),
    ("2:", np.s_[2:]),
    ("3;3", np.s_[3:4]),
    ("1,2;3", np.s_[1:2, 2:4]),  # missing trailing entries are whole dimensions
    ("1,,2", np.s_[1:2, :, 2:3]),  # an empty entry is the whole dimension
    (";,;,;", np.s_[:, :, :]),
    ("0;100", np.s_[0:]),  # a stop beyond the end is clamped
    ("4;9,4;9,3;9", np.s_[4:, 4:, 3:]),
    ("0,0,0", np.s_[0:1, 0:1, 0:1]),
]
BAD = ["6", "0;,6", "0,0,0,0", ",,,", "-1", "1;-2", "1;2;3", "3;1", "1.5", "1;2,x", "+1"]


@pytest.mark.parametrize(("text", "index"), GRAMMAR)
def test_parse_range_matches_numpy(text: str, index: Any) -> None:
    data = np.arange(np.prod(SHAPE)).reshape(SHAPE)
    np.testing.assert_array_equal(data[parse_range(text, SHAPE)], data[index])


@pytest.mark.parametrize("text", BAD)
def test_parse_range_rejects(text: str) -> None:
    with pytest.raises(RangeError):
        parse_range(text, SHAPE)


def test_parse_range_on_scalars_and_empty_dimensions() -> None:
    assert parse_range("", ()) == ()
    assert parse_range(";", (0,)) == (slice(0, 0),)
    with pytest.raises(RangeError):
        parse_range("0", ())


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    served = tmp_path / "served"
    served.mkdir()
    samples.write_array(served, "vol", "grid", SHAPE, dtype="<i4", seed=3)
    with h5py.File(served / "odd.h5", "w") as h5:
        h5["odd name: x/data"] = np.arange(4, dtype=np.int16)
        h5["0:10/data"] = np.arange(5, dtype=np.int16)
        h5["plain"] = np.arange(7, dtype=np.int16)
        h5["link"] = h5py.ExternalLink(str(tmp_path / "outside.h5"), "/data")
    with h5py.File(tmp_path / "outside.h5", "w") as h5:
        h5["data"] = np.arange(3, dtype=np.int64)
    (served / "sneaky.h5").symlink_to(tmp_path / "outside.h5")
    return served


@pytest_asyncio.fixture
async def server(folder: Path) -> AsyncIterator[TableServer]:
    async with run_server(folder) as srv:
        yield srv


async def raw_get(server: TableServer, target: str) -> tuple[int, bytes]:
    """Send ``target`` byte for byte (no client-side URL normalisation)."""
    host, port = server.root.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        request = (
            f"GET {target} HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: {ALICE['Authorization']}\r\nConnection: close\r\n\r\n"
        )
        writer.write(request.encode("latin-1"))
        response = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def table_path(server: TableServer) -> str:
    return urllib.parse.urlsplit(server.table_url).path


@pytest.mark.parametrize(("text", "index"), GRAMMAR)
async def test_ranges_over_http_match_h5py(
    server: TableServer, folder: Path, text: str, index: Any
) -> None:
    status, body = await raw_get(server, table_path(server) + f"vol/grid/{text}/format:hdf")
    assert status == 200, body
    with h5py.File(folder / "vol.h5", "r") as h5:
        expected = h5["grid"][index]
    with h5py.File(io.BytesIO(body), "r") as h5:
        np.testing.assert_array_equal(h5["array"][()], expected)
        assert h5["array"].shape == expected.shape


@pytest.mark.parametrize("text", BAD)
async def test_bad_ranges_over_http_are_400(server: TableServer, text: str) -> None:
    status, body = await raw_get(server, table_path(server) + f"vol/grid/{text}/format:hdf")
    assert status == 400, body
    assert 0 < len(body) < 200


async def test_missing_range_is_the_whole_array(server: TableServer, folder: Path) -> None:
    status, body = await raw_get(server, table_path(server) + "vol/grid/format:hdf")
    assert status == 200
    with h5py.File(io.BytesIO(body), "r") as h5:
        np.testing.assert_array_equal(h5["array"][()], samples.expected(folder / "vol.h5", "grid"))


def quote(component: str) -> str:
    return urllib.parse.quote(component, safe="")


@pytest.mark.parametrize(
    ("components", "expected"),
    [
        (["odd name: x", "data"], np.arange(4)),
        (['"0:10"', "data"], np.arange(5)),  # quoted: a name, even though it looks like a range
        (["0:10", "data"], np.arange(5)),  # unquoted but naming a node: consumed as a path
        (["plain", "2;3"], np.arange(2, 4)),
        (["plain", '"2;3"'], None),  # quoted: a (missing) name, never a range
        (["odd%20name", "data"], None),
    ],
)
async def test_quoted_path_components(
    server: TableServer, components: list[str], expected: Any
) -> None:
    path = "/".join(quote(c) for c in components)
    status, body = await raw_get(server, table_path(server) + f"odd/{path}/format:hdf")
    if expected is None:
        assert status == 404, body
        return
    assert status == 200, body
    with h5py.File(io.BytesIO(body), "r") as h5:
        np.testing.assert_array_equal(h5["array"][()], expected)


@pytest.mark.parametrize(
    "tail",
    [
        "../outside/data/format:hdf",
        "%2e%2e/outside/data/format:hdf",
        "%2E%2E%2Foutside/data/format:hdf",
        "vol%2F..%2F..%2Foutside/data/format:hdf",
        "..%2Foutside.h5/data/format:hdf",
        "{abs}/data/format:hdf",
        "{abs_enc}/data/format:hdf",
        "sneaky/data/format:hdf",  # a symlink leading out of the folder
        "odd/link/format:hdf",  # an HDF5 external link to another file
        "odd/link/info/format:json",
        "outside%00/data/format:hdf",
        "./vol/grid/format:hdf",
        "%2e/vol/grid/format:hdf",
    ],
)
async def test_paths_never_leave_the_folder(server: TableServer, folder: Path, tail: str) -> None:
    outside = str(folder.parent / "outside")
    tail = tail.format(abs=outside, abs_enc=quote(outside))
    status, body = await raw_get(server, table_path(server) + tail)
    assert status in (400, 404), (status, body)
    assert b"HDF" not in body


async def test_body_parses_with_pytables(server: TableServer, folder: Path) -> None:
    data = np.arange(60, dtype=">i8").reshape(3, 4, 5)
    samples.write_array(folder, "be", "m", data)
    status, body = await raw_get(server, table_path(server) + "be/m/1;2,0,;/format:hdf")
    assert status == 200
    with tables.open_file(
        "array.h5", driver="H5FD_CORE", driver_core_image=body, driver_core_backing_store=0
    ) as h5:
        array = h5.root.array
        assert array.attrs.CLASS == "ARRAY" and array.attrs.FLAVOR == "numpy"
        assert array.byteorder == "big"
        np.testing.assert_array_equal(array.read(), data[1:3, 0:1, :])
