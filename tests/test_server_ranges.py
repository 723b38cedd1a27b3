"""Range grammar, quoted path components and path safety of the embedded server."""

from __future__ import annotations

import asyncio
import html
import io
import urllib.parse
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import tables

from aiobisque.server import TableServer, samples
from aiobisque.server.pytest_plugin import basic_auth
from aiobisque.server.query import ParseError, parse_filter

SHAPE = (6, 5, 4)
ALICE = basic_auth("alice", "wonderland")

# (range on the wire, the numpy index it must equal), as bisque-protocol.md section 4 and
# BisQue's table_base.py define them: inclusive stops, ":" same as ";", a dimension without
# an entry pinned to index 0, entries beyond the rank ignored, out-of-range clipped
GRAMMAR = [
    (";", np.s_[:, 0:1, 0:1]),  # missing trailing entries mean index 0, not ":"
    ("2", np.s_[2:3, 0:1, 0:1]),  # a single index keeps its dimension
    ("5", np.s_[5:6, 0:1, 0:1]),
    ("1;3", np.s_[1:4, 0:1, 0:1]),  # inclusive stop
    ("1:3", np.s_[1:4, 0:1, 0:1]),  # ":" means the same as ";"
    ("2;", np.s_[2:, 0:1, 0:1]),
    (";2", np.s_[:3, 0:1, 0:1]),
    ("2:", np.s_[2:, 0:1, 0:1]),
    ("3;3", np.s_[3:4, 0:1, 0:1]),
    ("1,2;3", np.s_[1:2, 2:4, 0:1]),
    (";,;,;", np.s_[:, :, :]),
    ("0;100,;,;", np.s_[0:, :, :]),  # a stop beyond the end is clipped
    ("4;9,4;9,3;9", np.s_[4:, 4:, 3:]),
    ("0,0,0", np.s_[0:1, 0:1, 0:1]),
    ("0,0,0,0", np.s_[0:1, 0:1, 0:1]),  # entries beyond the rank are ignored
    ("6,;,;", np.s_[6:7, :, :]),  # beyond the end: empty, not refused
    ("999;1000,;,;", np.s_[999:1001, :, :]),
    ("3;1,;,;", np.s_[3:2, :, :]),  # reversed: empty
    ("0;,6", np.s_[0:, 6:7, 0:1]),
]
# (range, BisQue's message): malformed ranges are 400 "Unexpected symbol"
BAD = [
    ("-1", "Unexpected symbol: '-'"),
    ("1;-2", "Unexpected symbol: '-'"),
    ("1;2;3", "Unexpected symbol: ';'"),
    ("1.5", "Unexpected symbol: '1.5'"),
    ("0.5;2", "Unexpected symbol: '0.5'"),
    ("a;b", "Unexpected symbol: 'a'"),
    ("1;2,x", "Unexpected symbol: 'x'"),
    ("+1", "Unexpected symbol: '+'"),
    (",,,", "Unexpected symbol: ','"),
    ("1,,2", "Unexpected symbol: ','"),
    ("01", "Unexpected symbol: '1'"),  # integers have no leading zeros
    ("0;", None),  # fine: the whole first dimension
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_range_grammar_errors(text: str, message: str | None) -> None:
    if message is None:
        assert parse_filter(text, [])[0]
        return
    with pytest.raises(ParseError) as caught:
        parse_filter(text, [])
    assert str(caught.value) == message


def test_grammar_errors_come_in_reading_order() -> None:
    # BisQue's lexer runs on demand: the first bad symbol wins, not the first bad character
    with pytest.raises(ParseError, match="Unexpected symbol: 'odd'"):
        parse_filter("odd%20name", [])
    with pytest.raises(ParseError, match="Illegal character '%'"):
        parse_filter("1;%", [])
    with pytest.raises(ParseError, match="Unexpected end of query"):
        parse_filter("[0;1", [])


FRESH_FOLDER = True  # tests add and break files: a fresh folder for each


def SAMPLES(tmp_path: Path) -> Path:
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


SERVER_OPTIONS = {"users": None, "mex_tokens": None, "access": None, "public": ()}  # run_server's own defaults


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


@pytest.mark.parametrize(("text", "message"), [b for b in BAD if b[1]])
async def test_bad_ranges_over_http_are_400(server: TableServer, text: str, message: str) -> None:
    status, body = await raw_get(server, table_path(server) + f"vol/grid/{text}/format:hdf")
    assert status == 400, body
    assert html.escape(message).encode() in body


async def test_a_huge_index_is_400_not_500(server: TableServer) -> None:
    # Python refuses to read a 4,301-digit int; BisQue then fails with 500, we say 400
    status, _ = await raw_get(server, table_path(server) + "vol/grid/" + "1" * 4301 + "/format:hdf")
    assert status == 400


async def test_missing_range_is_500_like_bisque(server: TableServer) -> None:
    # without a range BisQue hands its exporter the PyTables node itself, which fails
    status, body = await raw_get(server, table_path(server) + "vol/grid/format:hdf")
    assert status == 500 and b"<html>" in body


def quote(component: str) -> str:
    return urllib.parse.quote(component, safe="")


@pytest.mark.parametrize(
    ("components", "expected"),
    [
        (["odd name: x", "data", ";"], np.arange(4)),
        (['"0:10"', "data", ";"], np.arange(5)),  # quoted: a name that looks like a range
        (["0:10", "data", ";"], np.arange(5)),  # unquoted but naming a node: a path
        (["plain", "2;3"], np.arange(2, 4)),
        (["plain", '"2;3"'], None),  # quoted: a (missing) name, never a range: 400
        (["odd%20name", "data", ";"], None),  # not a node: parsed as a query, 400
    ],
)
async def test_quoted_path_components(
    server: TableServer, components: list[str], expected: Any
) -> None:
    path = "/".join(quote(c) for c in components)
    status, body = await raw_get(server, table_path(server) + f"odd/{path}/format:hdf")
    if expected is None:
        assert status == 400, body
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
    # a uniq that is no file is 403 to a logged-in user (BisQue cannot tell it from a
    # private one); a path that names no node is a query, 400
    assert status in (400, 403), (status, body)
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
        assert array.byteorder == "little"  # PyTables writes native order
        np.testing.assert_array_equal(array.read(), data[1:3, 0:1, :])
