"""The embedded server's endpoints, statuses and auth, driven by a raw aiohttp client."""

from __future__ import annotations

import asyncio
import base64
import html
import io
import json
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import h5py
import numpy as np
import pytest
import pytest_asyncio

from aiobisque.server import TableServer, run_server, samples, serve_in_thread
from aiobisque.server.pytest_plugin import basic_auth

SEED = f"{samples.SEED_UNIQ}/{samples.SEED_PATH}"


FRESH_FOLDER = True  # tests add and break files: a fresh folder for each


def SAMPLES(tmp_path: Path) -> Path:
    samples.write_seed(tmp_path)
    samples.write_array(tmp_path, "vol", "data/volume", (6, 4, 3), dtype="<f4")
    samples.write_array(tmp_path, "pub", "x", np.arange(10, dtype=np.int16))
    samples.write_array(tmp_path, "secret", "x", np.arange(3, dtype=np.int8))
    samples.write_table(tmp_path, "tab", "tables/rows", nrows=7)
    (tmp_path / "broken.h5").write_bytes(b"this is not an HDF5 file")
    return tmp_path


SERVER_OPTIONS = {
    "users": {"alice": "wonderland", "bob": "builder"},
    "mex_tokens": {"TOKEN123": "alice"},
    "public": ("pub",),
    "access": {"secret": {"bob"}},
    "service_prefix": "/proxy/x",
}


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def get(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes, Any]:
    async with http.get(url, headers=headers) as response:
        return response.status, await response.read(), response.headers


ALICE = basic_auth("alice", "wonderland")


async def test_services_lists_absolute_urls_under_the_prefix(
    server: TableServer, http: Any
) -> None:
    status, body, _ = await get(http, server.root + "/services")
    assert status == 200
    services = {t.get("type"): t.get("value") for t in ET.fromstring(body).iter("tag")}
    for name in ("table", "data_service", "auth_service", "blob_service", "image_service"):
        assert services[name] == f"{server.root}/proxy/x/{name}/"
    # not mounted at the root: clients must use /services
    status, _, _ = await get(http, server.root + f"/table/{SEED}/info/format:json", ALICE)
    assert status == 404


async def test_table_service_name_is_configurable(folder: Path, http: Any) -> None:
    async with run_server(folder, table_service="tables") as srv:
        _, body, _ = await get(http, srv.root + "/services")
        types = {t.get("type") for t in ET.fromstring(body).iter("tag")}
        assert "tables" in types and "table" not in types
        status, _, _ = await get(http, srv.root + f"/tables/{SEED}/info/format:json", ALICE)
        assert status == 200


@pytest.mark.parametrize(
    ("headers", "user"),
    [
        (ALICE, "alice"),
        ({"Authorization": "Mex TOKEN123"}, "alice"),
        ({"Authorization": "Mex alice:TOKEN123"}, "alice"),
        (basic_auth("alice", "wrong"), None),
        ({"Authorization": "Mex bob:TOKEN123"}, None),
        ({}, None),
    ],
)
async def test_session(server: TableServer, http: Any, headers: Any, user: str | None) -> None:
    status, body, _ = await get(http, server.service_url("auth_service") + "session", headers)
    assert status == 200  # wrong credentials are not an HTTP error here, like BisQue
    root = ET.fromstring(body)
    assert root.tag == "session"
    users = [t.get("value") for t in root.findall("./tag[@name='user']")]
    assert users == ([user] if user else [])


async def test_login_providers(server: TableServer, http: Any) -> None:
    status, body, _ = await get(http, server.service_url("auth_service") + "login_providers")
    assert status == 200
    assert ET.fromstring(body)[0].get("type") == "local"


async def test_data_service_resource(server: TableServer, http: Any) -> None:
    url = server.service_url("data_service")
    status, body, _ = await get(http, url + samples.SEED_UNIQ, ALICE)
    assert status == 200
    element = ET.fromstring(body)
    assert element.tag == "table"
    assert element.get("resource_uniq") == samples.SEED_UNIQ
    assert element.get("uri") == url + samples.SEED_UNIQ
    assert element.get("name") == f"{samples.SEED_UNIQ}.dream3d"
    assert (await get(http, url + "missing", ALICE))[0] == 404
    assert (await get(http, url + samples.SEED_UNIQ))[0] == 401
    assert (await get(http, url + "pub"))[0] == 200


@pytest.mark.parametrize(
    ("uniq", "headers", "status"),
    [
        ("pub", {}, 200),  # public: anonymous is fine
        ("pub", basic_auth("alice", "nope"), 401),  # but bad credentials never are
        ("vol", {}, 401),
        ("vol", ALICE, 200),
        ("vol", {"Authorization": "Mex TOKEN123"}, 200),
        ("vol", {"Authorization": "Mex WRONG"}, 401),
        ("vol", {"Authorization": "Bearer xyz"}, 401),
        ("vol", {"Authorization": "Basic !!notbase64"}, 401),
        ("secret", ALICE, 403),
        ("secret", basic_auth("bob", "builder"), 200),
        ("secret", {}, 401),
        # no such resource: BisQue's check_access cannot tell it from a private one
        ("missing", ALICE, 403),
        ("missing", {}, 401),
        ("broken", ALICE, 501),  # not HDF5: "Table cannot be read"
    ],
)
async def test_access_statuses(
    server: TableServer, http: Any, uniq: str, headers: Any, status: int
) -> None:
    node = "data/volume/;,;,;" if uniq == "vol" else "x/;"
    got, body, _ = await get(http, server.table_url + f"{uniq}/{node}/format:hdf", headers)
    assert got == status, body
    if status != 200:
        assert 0 < len(body) < 400  # a short error page


async def test_info_of_array_group_and_table(server: TableServer, http: Any) -> None:
    url = server.table_url
    status, body, _ = await get(http, url + f"{SEED}/info/format:json", ALICE)
    assert status == 200
    info = json.loads(body)
    assert info["sizes"] == [5, 5, 5, 1]
    assert info["headers"] == ["0", "1", "2", "3", "4"]
    assert info["types"] == ["int32"] * 5
    assert info["group"] == [{"path": "/" + samples.SEED_PATH, "type": "matrix"}]
    assert info["meta"]["TupleDimensions"] == [5, 5, 5]
    assert info["meta"]["ObjectType"] == "DataArray<int32_t>"

    _, body, _ = await get(
        http,
        url + f"{samples.SEED_UNIQ}/DataContainers/ImageDataContainer/CellData/info/format:json",
        ALICE,
    )
    info = json.loads(body)
    assert set(info) == {"group", "meta"}  # a group's attributes are its meta too
    assert info["meta"]["TupleDimensions"] == [5, 5, 5]
    assert {"path": "/" + samples.SEED_PATH, "type": "matrix"} in info["group"]

    _, body, _ = await get(http, url + f"{samples.SEED_UNIQ}/info/format:json", ALICE)
    assert {"path": "/DataContainers", "type": "group"} in json.loads(body)["group"]

    _, body, _ = await get(http, url + "tab/tables/rows/info/format:json", ALICE)
    info = json.loads(body)
    assert info["headers"] == ["id", "x", "label"]
    assert info["types"] == ["int32", "float64", "string"]  # PyTables column types
    assert info["sizes"] == [7, 3]
    assert info["group"] == [{"path": "/tables/rows", "type": "table"}]
    assert info["meta"] == {"units": "mm"}  # PyTables bookkeeping is not metadata

    _, body, _ = await get(http, url + "vol/data/volume/info/format:json", ALICE)
    assert "meta" not in json.loads(body)  # absent when the node has no attributes

    status, body, _ = await get(http, url + f"{SEED}/info", ALICE)
    assert status == 500  # no format: BisQue has no default (and no Accept negotiation)


@pytest.mark.parametrize(
    ("tail", "status", "message"),
    [
        # a name that is no node is parsed as a query: 400, never 404
        ("vol/nope/format:hdf", 400, "Unexpected symbol: 'nope'"),
        ("vol/data/nope/info/format:json", 400, "Unexpected symbol: 'nope'"),
        ("vol/data/volume/0/extra/format:hdf", 400, "Unexpected symbol: 'extra'"),
        ("vol/data/Volume/0/format:hdf", 400, "Unexpected symbol: 'volume'"),  # lowercased
        ("vol/data/volume/a;b/format:hdf", 400, "Unexpected symbol: 'a'"),
        ("vol/data/%22a%3Bb%22/format:hdf", 400, "not allowed for dimension '__dim1__'"),
        ("vol/data/volume/0/agg:x/format:hdf", 400, "Unexpected end of query"),
        ("vol/data/volume/agg:sum(;)/format:json", 400, "Unknown aggregation function: 'sum'"),
        ("vol/data/volume/0/format:bogus", 400, "Requested export format (bogus)"),
        ("vol/data/volume/0/format:JSON", 400, "Requested export format (JSON)"),
        ("vol/data/volume/0/format:hdf?x=1", 400, "Requested export format (hdf?x=1)"),
        ("vol/data/volume/-1/format:hdf", 400, "Unexpected symbol: '-'"),
        ("vol/data/volume/1;2;3/format:hdf", 400, "Unexpected symbol: ';'"),
        ("vol/data/volume/0/format:json/", 200, ""),  # empty elements are dropped
        ("vol/data/volume/0,0,0,0/format:hdf", 200, ""),  # extra entries ignored
        ("vol/data/volume/9/format:hdf", 200, ""),  # beyond the end: clipped to empty
        ("vol/data/volume/0;1/0;1/format:hdf", 200, ""),  # a second range on the result
        ("vol/data/volume/format:hdf", 500, ""),  # no range
        ("vol/data/volume/0", 500, ""),  # no format
        ("vol/data/volume/0/info", 500, ""),
    ],
)
async def test_bad_requests(
    server: TableServer, http: Any, tail: str, status: int, message: str
) -> None:
    got, body, headers = await get(http, server.table_url + tail, ALICE)
    assert got == status, body
    if status != 200:
        assert headers["Content-Type"].startswith("text/html")  # BisQue's error pages
        assert html.escape(message).encode() in body


async def test_a_group_asked_for_data_is_an_empty_float64_matrix(
    server: TableServer, http: Any
) -> None:
    for tail in ("vol/data/format:hdf", "vol/data/0;1/format:hdf"):
        status, body, _ = await get(http, server.table_url + tail, ALICE)
        assert status == 200, body
        data, _, _ = read_image(body)
        assert data.shape == (0, 0) and data.dtype == np.float64
    status, body, _ = await get(http, server.table_url + "vol/data/0/format:json", ALICE)
    assert (status, json.loads(body)) == (200, [])


async def test_an_empty_group_is_404(server: TableServer, http: Any, folder: Path) -> None:
    with h5py.File(folder / "hollow.h5", "w") as h5:
        h5.create_group("nothing")
    status, body, _ = await get(http, server.table_url + "hollow/nothing/info/format:json", ALICE)
    assert status == 404 and b"Object &#x27;/nothing&#x27; not found" in body


async def test_a_quoted_component_is_a_name_even_when_missing(
    server: TableServer, http: Any
) -> None:
    # range-like names travel wrapped in double quotes; a missing one is a string value,
    # which the first dimension refuses
    status, body, _ = await get(http, server.table_url + "vol/%220%22/info/format:json", ALICE)
    assert status == 400
    assert b"values [&#x27;0&#x27;] not allowed for dimension &#x27;__dim1__&#x27;" in body


async def test_an_op_before_a_range_follows_bisques_loop(server: TableServer, http: Any) -> None:
    # BisQue steps over "info", applies the range, then drops the *first* element: the
    # info op is lost and data comes back
    status, body, _ = await get(
        http, server.table_url + "vol/data/volume/info/0;1/format:json", ALICE
    )
    assert status == 200
    assert json.loads(body)["size"] == [2, 1, 1]


async def test_info_with_a_range_describes_the_selection(server: TableServer, http: Any) -> None:
    url = server.table_url
    status, body, _ = await get(http, url + "vol/data/volume/1;2,1;,2/info/format:json", ALICE)
    assert status == 200, body
    info = json.loads(body)
    assert info["sizes"] == [2, 3, 1]
    assert info["headers"] == ["1", "2", "3"] and info["types"] == ["float32"] * 3
    assert info["group"] == [{"path": "/data/volume", "type": "matrix"}]
    _, body, _ = await get(http, url + "tab/tables/rows/2;3,1;2/info/format:json", ALICE)
    info = json.loads(body)
    assert (info["sizes"], info["headers"]) == ([2, 2], ["x", "label"])
    assert info["types"] == ["float64", "string"]
    status, body, _ = await get(http, url + "vol/data/0/info/format:json", ALICE)
    assert status == 200  # a range on a group selects nothing; the listing stays
    assert json.loads(body) == {"group": [{"path": "/data/volume", "type": "matrix"}]}


def read_image(body: bytes) -> tuple[np.ndarray, h5py.Dataset, dict[str, Any]]:
    h5 = h5py.File(io.BytesIO(body), "r")
    with h5:
        assert list(h5) == ["array"]
        dataset = h5["array"]
        attrs = {k: dataset.attrs[k] for k in dataset.attrs}
        return dataset[()], dataset.id.get_offset(), attrs


async def test_hdf_body_is_a_contiguous_pytables_array(
    server: TableServer, http: Any, folder: Path
) -> None:
    status, body, headers = await get(
        http, server.table_url + f"{SEED}/1;3,;,2,;/format:hdf", ALICE
    )
    assert status == 200
    assert headers["Content-Type"] == "application/octet-stream"
    assert int(headers["Content-Length"]) == len(body)
    expected = samples.expected(folder / f"{samples.SEED_UNIQ}.dream3d", samples.SEED_PATH)[
        1:4, :, 2:3
    ]
    with h5py.File(io.BytesIO(body), "r") as h5:
        assert list(h5) == ["array"]
        dataset = h5["array"]
        assert dataset.chunks is None and dataset.compression is None
        offset = dataset.id.get_offset()
        np.testing.assert_array_equal(dataset[()], expected)
        assert dataset.dtype == np.dtype("<i4")
        assert dataset.attrs["CLASS"] == b"ARRAY"
        assert dataset.attrs["FLAVOR"] == b"numpy"
        assert dataset.attrs["VERSION"] == b"2.4"
        assert "TITLE" in dataset.attrs
    # the raw bytes sit at one offset: a client may copy them out directly
    raw = np.frombuffer(body, dtype="<i4", count=expected.size, offset=offset)
    np.testing.assert_array_equal(raw.reshape(expected.shape), expected)


async def test_hdf_body_is_native_little_endian(
    server: TableServer, http: Any, folder: Path
) -> None:
    data = np.arange(24, dtype=">f8").reshape(4, 6)
    samples.write_array(folder, "be", "m", data)  # added after start: found by a rescan
    status, body, _ = await get(http, server.table_url + "be/m/1;2,;/format:hdf", ALICE)
    assert status == 200
    with h5py.File(io.BytesIO(body), "r") as h5:
        assert h5["array"].dtype == np.dtype("<f8")  # PyTables writes native order
        np.testing.assert_array_equal(h5["array"][()], data[1:3])


async def test_hdf_body_of_a_table_goes_through_dataframe_values(
    server: TableServer, http: Any, folder: Path
) -> None:
    expected = samples.expected(folder / "tab.h5", "tables/rows")
    url = server.table_url + "tab/tables/rows/"
    # a row range alone selects no columns
    status, body, _ = await get(http, url + "2;4/format:hdf", ALICE)
    assert status == 200
    assert read_image(body)[0].shape == (3, 0)
    # numeric columns: one 2-D array of their common type (int32 + float64: float64)
    status, body, _ = await get(http, url + "2;4,0;1/format:hdf", ALICE)
    data, _, _ = read_image(body)
    assert data.dtype == np.float64 and data.shape == (3, 2)
    np.testing.assert_array_equal(data[:, 0], expected["id"][2:5])
    np.testing.assert_array_equal(data[:, 1], expected["x"][2:5])
    # a string column cannot be made an HDF array
    status, body, _ = await get(http, url + ";,1;2/format:hdf", ALICE)
    assert status == 500


async def test_chunked_layout_option(folder: Path, http: Any) -> None:
    async with run_server(folder, hdf_layout="chunked") as srv:
        status, body, _ = await get(http, srv.table_url + "vol/data/volume/;,;,;/format:hdf", ALICE)
    assert status == 200
    with h5py.File(io.BytesIO(body), "r") as h5:
        assert h5["array"].chunks is not None and h5["array"].compression == "gzip"
        np.testing.assert_array_equal(
            h5["array"][()], samples.expected(folder / "vol.h5", "data/volume")
        )


async def test_json_csv_and_xml_formats(server: TableServer, http: Any, folder: Path) -> None:
    seed = samples.expected(folder / f"{samples.SEED_UNIQ}.dream3d", samples.SEED_PATH)
    url = server.table_url
    # rank >= 3: one object, offset the first dimension's start
    status, body, headers = await get(http, url + f"{SEED}/1;2,2,;,;/format:json", ALICE)
    assert status == 200 and headers["Content-Type"] == "application/json"
    doc = json.loads(body)
    assert doc == {
        "offset": 1,
        "type": "int32",
        "data": seed[1:3, 2:3].tolist(),
        "size": [2, 1, 5, 1],
    }
    # 2-D with NaN: per-column objects, NaN as null
    nan = np.array([[1.5, np.nan], [np.inf, 2.0]])
    samples.write_array(folder, "nan", "m", nan)
    _, body, _ = await get(http, url + "nan/m/;,;/format:json", ALICE)
    assert json.loads(body.replace(b"Infinity", b"null")) == [
        {"offset": 0, "header": "0", "type": "float64", "data": [1.5, None], "size": 2},
        {"offset": 0, "header": "1", "type": "float64", "data": [None, 2.0], "size": 2},
    ]
    # tables: per-column objects with text cells
    _, body, _ = await get(http, url + "tab/tables/rows/0;1,;/format:json", ALICE)
    columns = json.loads(body)
    assert [c["header"] for c in columns] == ["id", "x", "label"]
    assert columns[0]["data"] == [0, 1] and columns[2]["data"] == ["row0", "row1"]
    assert columns[2]["type"] == "string"
    # csv: 1-D arrays and tables only
    status, body, headers = await get(http, url + "pub/x/2;4/format:csv")
    assert status == 200 and headers["Content-Type"] == "text/csv"
    assert body == b"0\n2\n3\n4\n"
    assert (await get(http, url + "nan/m/;,;/format:csv", ALICE))[0] == 400
    # xml: <tag name="table" value="rows;...">
    status, body, headers = await get(http, url + "pub/x/2;4/format:xml")
    assert status == 200 and headers["Content-Type"] == "text/xml"
    table = ET.fromstring(body).find("tag[@name='table']")
    assert table is not None and table.get("value") == "2;3;4"
    assert {t.get("name"): t.get("value") for t in table} == {
        "offset": "2",
        "headers": "0",
        "types": "int16",
        "sizes": "3",
    }
    # no format op: 500, whatever the Accept header says
    status, _, _ = await get(
        url=url + "pub/x/2;4", http=http, headers={"Accept": "application/x-hdf5"}
    )
    assert status == 500


@pytest.fixture
def slow_final_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hold every response's handler back after its last byte has gone out.

    That is what a busy server thread does at random (the client then has the whole
    response while the handler has not finished); here it happens every time.
    """
    write_eof = aiohttp.web.StreamResponse.write_eof

    async def held_back(self: aiohttp.web.StreamResponse, data: bytes = b"") -> None:
        await write_eof(self, data)
        await asyncio.sleep(0.3)

    monkeypatch.setattr(aiohttp.web.StreamResponse, "write_eof", held_back)


@pytest.mark.usefixtures("slow_final_flush")
async def test_stats_are_complete_once_the_client_has_the_response(
    server: TableServer, http: Any
) -> None:
    server.stats.reset()
    status, body, _ = await get(http, server.table_url + f"{SEED}/0;1/format:hdf", ALICE)
    assert status == 200
    stats = server.stats
    assert [(r.range, r.status) for r in stats.data_log] == [("0;1", 200)]
    assert stats.statuses == {200: 1} and stats.in_flight == 0
    assert stats.bytes_sent == len(body)


@pytest.mark.usefixtures("slow_final_flush")
def test_stats_are_complete_for_a_client_on_another_thread(folder: Path) -> None:
    with serve_in_thread(folder, users={"alice": "wonderland"}) as server:
        url = server.table_url + f"{SEED}/1/format:hdf"
        request = urllib.request.Request(url, headers=ALICE)
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        assert [r.range for r in server.stats.data_log] == ["1"]
        assert server.stats.bytes_sent == len(body)


async def test_stats_count_requests_by_kind(server: TableServer, http: Any) -> None:
    server.stats.reset()
    await get(http, server.root + "/services")
    await get(http, server.service_url("auth_service") + "session", ALICE)
    await get(http, server.table_url + f"{SEED}/info/format:json", ALICE)
    await get(http, server.table_url + f"{SEED}/0/format:hdf", ALICE)
    await get(http, server.table_url + f"{SEED}/7;-9/format:hdf", ALICE)
    stats = server.stats
    assert stats.requests == {"services": 1, "session": 1, "info": 1, "data": 2}
    assert stats.statuses == {200: 4, 400: 1}
    assert stats.bytes_sent > 25 * 4
    assert [(r.range, r.status, r.format, r.fault) for r in stats.data_log] == [
        ("0", 200, "hdf", None),
        ("7;-9", 400, "hdf", None),
    ]
    assert stats.data_log[0].path == "/" + samples.SEED_PATH
    assert stats.in_flight == 0 and stats.peak_in_flight == 1
    assert stats.retries == 0
    await get(http, server.table_url + f"{SEED}/0/format:hdf", ALICE)
    assert stats.retries == 1  # the same request again
    stats.reset()
    assert stats.retries == 0 and not stats.data_log and not stats.requests


def test_basic_auth_helper() -> None:
    assert basic_auth("a", "b") == {"Authorization": "Basic " + base64.b64encode(b"a:b").decode()}


async def test_demo_token_only_comes_with_the_demo_login(tmp_path: Path) -> None:
    samples.write_array(tmp_path, "vol", "a", (2, 2), dtype="int32")
    async with (
        run_server(tmp_path, users={"bob": "b0b-pw"}) as srv,
        aiohttp.ClientSession() as http,
    ):
        url = f"{srv.root}/auth_service/session"
        async with http.get(url, headers={"Authorization": "Mex TOKEN123"}) as resp:
            assert "alice" not in await resp.text()
    async with run_server(tmp_path) as srv, aiohttp.ClientSession() as http:
        url = f"{srv.root}/auth_service/session"
        async with http.get(url, headers={"Authorization": "Mex TOKEN123"}) as resp:
            assert "alice" in await resp.text()
