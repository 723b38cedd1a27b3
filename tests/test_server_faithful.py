"""The embedded server answers as a real BisQue table service does: one row per behaviour.

Every expected answer below (status, content type, body layout) is taken from
``shared/bisque-protocol.md`` section 4 and BisQue's own table-service sources
(``bq/table/controllers/``: ``service.py``, ``table_base.py``, ``importers/from_hdf5.py``,
``exporters/to_json.py``, ``to_csv.py``, ``to_xml.py``, ``to_hdf5.py``), not from this
server's output. The row's comment names the rule it pins.
"""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import h5py
import numpy as np
import pytest
import pytest_asyncio

from aiobisque.server import TableServer, samples
from aiobisque.server.pytest_plugin import basic_auth

ALICE = basic_auth("alice", "wonderland")
M2 = np.arange(24, dtype=np.int16).reshape(4, 6)
M7 = np.arange(21, dtype=np.int16).reshape(3, 7)
BE = np.arange(6, dtype=">f8").reshape(2, 3) / 4
NUM = np.array([(1, 0.5), (2, 1.5), (3, 2.5)], dtype=[("id", "<i4"), ("x", "<f8")])


FRESH_FOLDER = True  # tests add and break files: a fresh folder for each


def SAMPLES(tmp_path: Path) -> Path:
    samples.write_array(tmp_path, "vol", "data/volume", (6, 4, 3), dtype="<f4")
    samples.write_array(tmp_path, "m", "m2", M2)
    samples.write_array(tmp_path, "m", "m7", M7)
    samples.write_array(tmp_path, "m", "v1", np.arange(10, dtype=np.int16))
    samples.write_array(tmp_path, "m", "be", BE)
    samples.write_array(tmp_path, "m", "scalar", np.array(2.5))
    samples.write_array(tmp_path, "m", "flags", np.array([[True, False], [False, True]]))
    samples.write_table(tmp_path, "tab", "t", nrows=7)
    with h5py.File(tmp_path / "odd.h5", "w") as h5:
        h5["num"] = NUM
        h5.create_dataset("names", data=["a", "bc"], dtype=h5py.string_dtype())
        group = h5.create_group("grp")
        group.attrs["note"] = "hello"
        group["a"] = np.arange(3, dtype=np.int8)
        h5.create_group("hollow")
    return tmp_path


SERVER_OPTIONS = {"users": None, "mex_tokens": None, "access": None, "public": ["m"]}


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def image(body: bytes) -> np.ndarray[Any, Any]:
    with h5py.File(io.BytesIO(body), "r") as h5:
        assert list(h5) == ["array"]
        return np.asarray(h5["array"][()])


def doc(body: bytes) -> Any:
    return json.loads(body)


def hdf_equals(expected: np.ndarray[Any, Any]) -> Callable[[bytes], bool]:
    def check(body: bytes) -> bool:
        got = image(body)
        return (
            got.dtype == expected.dtype
            and got.shape == expected.shape
            and bool(np.array_equal(got, expected))
        )

    return check


def json_equals(expected: Any) -> Callable[[bytes], bool]:
    return lambda body: doc(body) == expected


def says(text: str) -> Callable[[bytes], bool]:
    return lambda body: text.encode() in body


JSON, HTML, HDF = "application/json", "text/html", "application/octet-stream"

# (rule, URL tail after the table service, status, content type, body check)
ROWS: list[tuple[str, str, int, str, Callable[[bytes], bool]]] = [
    # -- format:json layouts
    (
        "json 1-D: a list of per-column objects, offset an int",
        "m/v1/2;4/format:json",
        200,
        JSON,
        json_equals([{"offset": 2, "header": "0", "type": "int16", "data": [2, 3, 4], "size": 3}]),
    ),
    (
        "json 2-D with <= 5 columns: per-column objects",
        "m/m2/1;2,0;1/format:json",
        200,
        JSON,
        json_equals(
            [
                {"offset": 1, "header": "0", "type": "int16", "data": [6, 12], "size": 2},
                {"offset": 1, "header": "1", "type": "int16", "data": [7, 13], "size": 2},
            ]
        ),
    ),
    (
        "json 2-D with > 5 numeric columns from 0: one nested object",
        "m/m7/0;1,;/format:json",
        200,
        JSON,
        json_equals({"offset": 0, "type": "int16", "data": M7[0:2].tolist(), "size": [2, 7]}),
    ),
    (
        "json > 5 columns whose headers do not start 0,1,2: per-column objects again",
        "m/m7/0,1;6/format:json",
        200,
        JSON,
        lambda b: [c["header"] for c in doc(b)] == ["1", "2", "3", "4", "5", "6"],
    ),
    (
        "json rank >= 3: one object, size the shape, offset the first dimension",
        "vol/data/volume/1;2,;,;/format:json",
        200,
        JSON,
        lambda b: doc(b)["offset"] == 1 and doc(b)["size"] == [2, 4, 3] and len(doc(b)) == 4,
    ),
    (
        "extjs: its own layout, rows plus headers/types/sizes",
        "m/m2/0;1,0;1/format:extjs",
        200,
        JSON,
        json_equals(
            {
                "offset": 0,
                "data": [[0, 1], [6, 7]],
                "headers": ["0", "1"],
                "types": ["int16", "int16"],
                "sizes": [2, 2],
            }
        ),
    ),
    # -- tables
    (
        "table info: PyTables column types (string, not bytes64)",
        "tab/t/info/format:json",
        200,
        JSON,
        lambda b: doc(b)["types"] == ["int32", "float64", "string"] and doc(b)["sizes"] == [7, 3],
    ),
    (
        "table hdf, all numeric: DataFrame.values, a 2-D common type (ints become floats)",
        "odd/num/;,;/format:hdf",
        200,
        HDF,
        hdf_equals(np.array([[1, 0.5], [2, 1.5], [3, 2.5]])),
    ),
    ("table hdf with a string column: 500", "tab/t/;,;/format:hdf", 500, HTML, says("500")),
    (
        "table row range without a column part: no columns",
        "tab/t/0;3/format:extjs",
        200,
        JSON,
        lambda b: doc(b)["headers"] == [] and doc(b)["sizes"] == [4, 0],
    ),
    (
        "table json: per-column objects with text cells",
        "tab/t/0;1,;/format:json",
        200,
        JSON,
        lambda b: (
            [c["data"] for c in doc(b)][2] == ["row0", "row1"]
            and [c["type"] for c in doc(b)] == ["int32", "float64", "string"]
        ),
    ),
    (
        "table extjs: rows with text cells",
        "tab/t/1;2,0;2/format:extjs",
        200,
        JSON,
        lambda b: (
            [row[0] for row in doc(b)["data"]] == [1, 2]
            and doc(b)["data"][0][2] == "row1"
            and doc(b)["offset"] == 1
        ),
    ),
    # -- ranges
    (
        "missing trailing dimensions mean index 0",
        "vol/data/volume/0;1/format:hdf",
        200,
        HDF,
        lambda b: image(b).shape == (2, 1, 1),
    ),
    (
        "entries beyond the rank are ignored",
        "m/m2/0,0,5,7/format:hdf",
        200,
        HDF,
        hdf_equals(M2[0:1, 0:1]),
    ),
    (
        "out-of-range is clipped to empty, 200",
        "m/m2/999;1000,;/format:hdf",
        200,
        HDF,
        lambda b: image(b).shape == (0, 6),
    ),
    (
        "a reversed range is empty, 200",
        "m/m2/3;1,;/format:hdf",
        200,
        HDF,
        lambda b: image(b).shape == (0, 6),
    ),
    (
        "negatives are 400 Unexpected symbol",
        "m/m2/-1,;/format:hdf",
        400,
        HTML,
        says("Unexpected symbol: &#x27;-&#x27;"),
    ),
    (
        "junk is 400 Unexpected symbol",
        "m/m2/0.5;2/format:hdf",
        400,
        HTML,
        says("Unexpected symbol: &#x27;0.5&#x27;"),
    ),
    # -- what a data request needs
    ("a data request without a range: 500", "m/m2/format:hdf", 500, HTML, says("500")),
    (
        "... also in json (the exporter gets the PyTables node)",
        "m/v1/format:json",
        500,
        HTML,
        says("500"),
    ),
    (
        "... but xml reads the node row by row: 200",
        "m/v1/format:xml",
        200,
        "text/xml",
        lambda b: (
            ET.fromstring(b).find("tag[@name='table']").get("value")  # type: ignore[union-attr]
            == "0;1;2;3;4;5;6;7;8;9"
        ),
    ),
    (
        "... and csv of a 1-D node: 200",
        "m/v1/format:csv",
        200,
        "text/csv",
        lambda b: b == b"0\n" + b"".join(b"%d\n" % i for i in range(10)),
    ),
    (
        "csv of a table node: pandas sees rows but no columns",
        "tab/t/format:csv",
        200,
        "text/csv",
        lambda b: b == b"id,x,label\n" + b"\n" * 7,
    ),
    ("a request without format: 500 (no XML default)", "m/m2/;,;", 500, HTML, says("500")),
    ("bare info: 500", "m/m2/info", 500, HTML, says("500")),
    (
        "a query string breaks the format op: 400",
        "m/m2/;,;/format:hdf?x=1",
        400,
        HTML,
        says("hdf?x=1"),
    ),
    # -- statuses
    ("unknown uniq, anonymous: 401", "nope/info/format:json", 401, HTML, says("401")),
    (
        "mistyped path component: 400, parsed as a filter",
        "odd/grpp/info/format:json",
        400,
        HTML,
        says("Unexpected symbol: &#x27;grpp&#x27;"),
    ),
    (
        "a group asked for data: 200, an empty (0,0) float64 body",
        "odd/grp/format:hdf",
        200,
        HDF,
        hdf_equals(np.empty((0, 0))),
    ),
    (
        "an empty group: 404 Object not found",
        "odd/hollow/info/format:json",
        404,
        HTML,
        says("Object &#x27;/hollow&#x27; not found"),
    ),
    # -- hdf bodies and info details
    (
        "hdf bodies in native byte order: big-endian comes back little-endian",
        "m/be/;,;/format:hdf",
        200,
        HDF,
        hdf_equals(BE.astype("<f8")),
    ),
    (
        "scalar info: headers [''] and sizes []",
        "m/scalar/info/format:json",
        200,
        JSON,
        lambda b: doc(b)["headers"] == [""] and doc(b)["sizes"] == [],
    ),
    (
        "a vlen string dataset is (unknown), with no sizes",
        "odd/names/info/format:json",
        200,
        JSON,
        json_equals({"group": [{"path": "/names", "type": "(unknown)"}]}),
    ),
    (
        "group info carries the group's meta",
        "odd/grp/info/format:json",
        200,
        JSON,
        json_equals({"group": [{"path": "/grp/a", "type": "matrix"}], "meta": {"note": "hello"}}),
    ),
    (
        "info/format:hdf is an empty body",
        "m/m2/info/format:hdf",
        200,
        "text/html",
        lambda b: b == b"",
    ),
    (
        "h5py booleans are an int8 enum to PyTables: typed and served as int8",
        "m/flags/;,;/format:hdf",
        200,
        HDF,
        hdf_equals(np.array([[1, 0], [0, 1]], dtype=np.int8)),
    ),
    (
        "xml info of a table node says matrix (only DataFrames are tables there)",
        "tab/t/info/format:xml",
        200,
        "text/xml",
        lambda b: ET.fromstring(b).find("tag[@name='type']").get("value") == "matrix",  # type: ignore[union-attr]
    ),
    (
        "xml as lxml writes it: empty elements without a space",
        "m/v1/0/format:xml",
        200,
        "text/xml",
        lambda b: b'<tag name="offset" value="0"/>' in b,
    ),
    # -- csv and xml
    ("csv of a 1-D array", "m/v1/2;4/format:csv", 200, "text/csv", lambda b: b == b"0\n2\n3\n4\n"),
    (
        "csv of a table: header line, then rows",
        "tab/t/0;1,0;2/format:csv",
        200,
        "text/csv",
        lambda b: (
            b.decode().splitlines()[0] == "id,x,label"
            and b.decode().splitlines()[1].startswith("0,")
            and b.decode().splitlines()[2].endswith(",row1")
        ),
    ),
    (
        "csv of a 2-D array: 400",
        "m/m2/;,;/format:csv",
        400,
        HTML,
        says("Data cannot be converted to CSV"),
    ),
    (
        "xml: <resource><tag name='table' value='rows;...'> with offset/headers/types/sizes",
        "m/m2/1;2,0;1/format:xml",
        200,
        "text/xml",
        lambda b: (
            (t := ET.fromstring(b).find("tag[@name='table']")) is not None
            and t.get("value") == "6,7;12,13"
            and [(c.get("name"), c.get("value")) for c in t]
            == [("offset", "1"), ("headers", "0,1"), ("types", "int16,int16"), ("sizes", "2,2")]
        ),
    ),
    # -- the query language: filters, projections, aggregations
    (
        "filter on a table keeps the matching rows",
        'tab/t/{[:,"id"] >= 5}/format:extjs',
        200,
        JSON,
        lambda b: [row[0] for row in doc(b)["data"]] == [5, 6] and doc(b)["sizes"] == [2, 3],
    ),
    (
        "filter on a matrix: non-matching cells become NaN (null)",
        "m/m2/{[:,:] > 20}/format:extjs",
        200,
        JSON,
        lambda b: (
            doc(b)["data"][3] == [None, None, None, 21.0, 22.0, 23.0]
            and doc(b)["types"][0] == "int16"
        ),
    ),
    (
        "a filter comparing a string column with a number: 400 from PyTables' compiler",
        'tab/t/{[:,"label"] > 1}/format:json',
        400,
        HTML,
        says("Error in query: unsupported operand types for *gt*: str, double"),
    ),
    (
        "projection picks and orders columns",
        'tab/t/[:,"x"],[:,"id"]/format:extjs',
        200,
        JSON,
        lambda b: doc(b)["headers"] == ["x", "id"] and doc(b)["types"] == ["float64", "int32"],
    ),
    (
        "agg: one float64 row, named after the column (or AS alias)",
        'odd/num/agg:mean(:,"x") AS "mx",max(:,"id")/format:json',
        200,
        JSON,
        json_equals(
            [
                {"offset": 0, "header": "mx", "type": "float64", "data": [1.5], "size": 1},
                {"offset": 0, "header": "id", "type": "float64", "data": [3.0], "size": 1},
            ]
        ),
    ),
    (
        "agg on a matrix: agg0",
        "m/m2/agg:max(;,;)/format:json",
        200,
        JSON,
        lambda b: doc(b)[0]["header"] == "agg0" and doc(b)[0]["data"] == [23.0],
    ),
    (
        "an unknown column as a range start: 400 Error in query",
        'tab/t/;,"nope":"x"/format:json',
        400,
        HTML,
        says("Error in query: column nope not found"),
    ),
    (
        "an unknown column as a range end: 500 (BisQue's list lookup fails)",
        'tab/t/;,"id":"nope"/format:json',
        500,
        HTML,
        says("500"),
    ),
    (
        "an unknown aggregate is 400",
        "m/m2/agg:sum(;,;)/format:json",
        400,
        HTML,
        says("Unknown aggregation function: &#x27;sum&#x27;"),
    ),
]


@pytest.mark.parametrize(
    ("rule", "tail", "status", "content_type", "check"), ROWS, ids=[r[0] for r in ROWS]
)
async def test_answers_like_bisque(
    server: TableServer,
    http: aiohttp.ClientSession,
    rule: str,
    tail: str,
    status: int,
    content_type: str,
    check: Callable[[bytes], bool],
) -> None:
    headers = ALICE if not tail.startswith("nope/") else {}
    async with http.get(server.table_url + tail, headers=headers) as response:
        body = await response.read()
        assert response.status == status, (rule, body[:300])
        assert response.headers["Content-Type"].startswith(content_type), rule
    assert check(body), (rule, body[:300])


async def test_unknown_uniq_is_403_when_logged_in(
    server: TableServer, http: aiohttp.ClientSession
) -> None:
    async with http.get(server.table_url + "nope/info/format:json", headers=ALICE) as r:
        assert r.status == 403


async def test_accept_header_is_not_negotiated(
    server: TableServer, http: aiohttp.ClientSession
) -> None:
    headers = {**ALICE, "Accept": "application/json"}
    async with http.get(server.table_url + "m/m2/0;1,;", headers=headers) as r:
        assert r.status == 500
