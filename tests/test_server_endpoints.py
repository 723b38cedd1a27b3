"""The embedded server's endpoints, statuses and auth, driven by a raw aiohttp client."""

from __future__ import annotations

import asyncio
import base64
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


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    samples.write_seed(tmp_path)
    samples.write_array(tmp_path, "vol", "data/volume", (6, 4, 3), dtype="<f4")
    samples.write_array(tmp_path, "pub", "x", np.arange(10, dtype=np.int16))
    samples.write_array(tmp_path, "secret", "x", np.arange(3, dtype=np.int8))
    samples.write_table(tmp_path, "tab", "tables/rows", nrows=7)
    (tmp_path / "broken.h5").write_bytes(b"this is not an HDF5 file")
    return tmp_path


@pytest_asyncio.fixture
async def server(folder: Path) -> AsyncIterator[TableServer]:
    async with run_server(
        folder,
        users={"alice": "wonderland", "bob": "builder"},
        mex_tokens={"TOKEN123": "alice"},
        public=("pub",),
        access={"secret": {"bob"}},
        service_prefix="/proxy/x",
    ) as srv:
        yield srv


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
        ("missing", ALICE, 404),
        ("broken", ALICE, 501),
    ],
)
async def test_access_statuses(
    server: TableServer, http: Any, uniq: str, headers: Any, status: int
) -> None:
    node = "data/volume" if uniq == "vol" else "x"
    got, body, response_headers = await get(
        http, server.table_url + f"{uniq}/{node}/format:hdf", headers
    )
    assert got == status, body
    if status != 200:
        assert response_headers["Content-Type"].startswith("text/plain")
        assert 0 < len(body) < 200  # short text bodies


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
    assert set(info) == {"group"}
    assert {"path": "/" + samples.SEED_PATH, "type": "matrix"} in info["group"]

    _, body, _ = await get(http, url + f"{samples.SEED_UNIQ}/info/format:json", ALICE)
    assert {"path": "/DataContainers", "type": "group"} in json.loads(body)["group"]

    _, body, _ = await get(http, url + "tab/tables/rows/info/format:json", ALICE)
    info = json.loads(body)
    assert info["headers"] == ["id", "x", "label"]
    assert info["types"] == ["int32", "float64", "bytes64"]
    assert info["sizes"] == [7, 3]
    assert info["group"] == [{"path": "/tables/rows", "type": "table"}]
    assert info["meta"] == {"units": "mm"}  # PyTables bookkeeping is not metadata

    _, body, _ = await get(http, url + "vol/data/volume/info/format:json", ALICE)
    assert "meta" not in json.loads(body)  # absent when the node has no attributes

    status, body, _ = await get(http, url + f"{SEED}/info", ALICE)
    assert status == 200 and ET.fromstring(body).tag == "resource"


@pytest.mark.parametrize(
    ("tail", "status"),
    [
        ("vol/nope/format:hdf", 404),
        ("vol/data/nope/info/format:json", 404),
        ("vol/data/volume/0/extra/format:hdf", 404),
        ("vol/data/0;1/format:hdf", 400),  # a range on a group
        ("vol/data/format:hdf", 400),  # a group is not an array
        ("vol/data/volume/format:bogus", 400),
        ("vol/data/volume/0,0,0,0/format:hdf", 400),
        ("vol/data/volume/-1/format:hdf", 400),
        ("vol/data/volume/1;2;3/format:hdf", 400),
        ("vol/data/volume/a;b/format:hdf", 400),  # a mistyped range, or a missing node
        ("vol/data/a;b/format:hdf", 400),
        ("vol/data/%22a%3Bb%22/format:hdf", 404),  # quoted: only a name
        ("vol/data/volume/0;1/0;1/format:hdf", 400),
    ],
)
async def test_bad_requests(server: TableServer, http: Any, tail: str, status: int) -> None:
    got, body, headers = await get(http, server.table_url + tail, ALICE)
    assert got == status, body
    assert headers["Content-Type"].startswith("text/plain") and len(body) < 200


@pytest.mark.parametrize("ops", ["info/format:json", "format:hdf", "format:json", ""])
@pytest.mark.parametrize(
    ("leftover", "status", "message"),
    [
        ("x", 404, "no node 'x' under /data/volume"),
        ("x/0", 404, "no node 'x' under /data/volume"),
        ("agg:x", 404, "no node 'agg:x' under /data/volume"),
        ("%220%22", 404, "no node '0' under /data/volume"),  # a quoted name, unwrapped
        ("1;2;3", 400, "steps are not supported"),  # range-like but malformed
        ("0,0,0,0", 400, "4 entries for 3 dimensions"),
        ("9", 400, "starts beyond dimension 0"),
        ("1;x", 400, "no node '1;x' under /data/volume, and '1;x' is not a range"),
    ],
)
async def test_leftover_after_a_dataset_is_a_range_or_a_missing_node(
    server: TableServer, http: Any, ops: str, leftover: str, status: int, message: str
) -> None:
    # the HDF path ends at the first component naming no node: what follows must be a
    # range and/or ops, for info and data alike (never silently the dataset itself)
    got, body, _ = await get(http, server.table_url + f"vol/data/volume/{leftover}/{ops}", ALICE)
    assert (got, message in body.decode()) == (status, True), body


@pytest.mark.parametrize(
    ("tail", "message"),
    [
        ("vol/%220%22/info/format:json", b"no node '0' under /\n"),
        ("vol/data/%220%3B1%22/format:hdf", b"no node '0;1' under /data\n"),
        ("vol/data/%220%3B1%22/info/format:json", b"no node '0;1' under /data\n"),
    ],
)
async def test_missing_node_is_named_as_meant_not_as_quoted(
    server: TableServer, http: Any, tail: str, message: bytes
) -> None:
    # range-like names travel wrapped in double quotes; the user meant the bare name
    assert (await get(http, server.table_url + tail, ALICE))[:2] == (404, message)


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
    assert info["types"] == ["float64", "bytes64"]
    status, body, _ = await get(http, url + "vol/data/0/info/format:json", ALICE)
    assert status == 400 and b"/data, a group" in body


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
    status, body, headers = await get(http, server.table_url + f"{SEED}/1;3,,2/format:hdf", ALICE)
    assert status == 200
    assert headers["Content-Type"] == "application/x-hdf5"
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


async def test_hdf_body_keeps_big_endian(server: TableServer, http: Any, folder: Path) -> None:
    data = np.arange(24, dtype=">f8").reshape(4, 6)
    samples.write_array(folder, "be", "m", data)  # added after start: found by a rescan
    status, body, _ = await get(http, server.table_url + "be/m/1;2/format:hdf", ALICE)
    assert status == 200
    with h5py.File(io.BytesIO(body), "r") as h5:
        assert h5["array"].dtype == np.dtype(">f8")
        np.testing.assert_array_equal(h5["array"][()], data[1:3])


async def test_hdf_body_of_a_compound_table(server: TableServer, http: Any, folder: Path) -> None:
    expected = samples.expected(folder / "tab.h5", "tables/rows")
    status, body, _ = await get(http, server.table_url + "tab/tables/rows/2;4/format:hdf", ALICE)
    assert status == 200
    with h5py.File(io.BytesIO(body), "r") as h5:
        np.testing.assert_array_equal(h5["array"][()], expected[2:5])
    # a second entry selects columns
    _, body, _ = await get(http, server.table_url + "tab/tables/rows/;,1;2/format:hdf", ALICE)
    with h5py.File(io.BytesIO(body), "r") as h5:
        assert h5["array"].dtype.names == ("x", "label")
        np.testing.assert_array_equal(h5["array"]["x"], expected["x"])


async def test_chunked_layout_option(folder: Path, http: Any) -> None:
    async with run_server(folder, hdf_layout="chunked") as srv:
        status, body, _ = await get(http, srv.table_url + "vol/data/volume/format:hdf", ALICE)
    assert status == 200
    with h5py.File(io.BytesIO(body), "r") as h5:
        assert h5["array"].chunks is not None and h5["array"].compression == "gzip"
        np.testing.assert_array_equal(
            h5["array"][()], samples.expected(folder / "vol.h5", "data/volume")
        )


async def test_json_csv_and_xml_formats(server: TableServer, http: Any, folder: Path) -> None:
    seed = samples.expected(folder / f"{samples.SEED_UNIQ}.dream3d", samples.SEED_PATH)
    status, body, headers = await get(http, server.table_url + f"{SEED}/0;1,2/format:json", ALICE)
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    doc = json.loads(body)
    assert doc["size"] == [2, 1, 5, 1] and doc["offset"] == [0, 2, 0, 0]
    assert doc["type"] == "int32"
    np.testing.assert_array_equal(np.array(doc["data"]), seed[0:2, 2:3])

    nan = np.array([[1.5, np.nan], [np.inf, 2.0]])
    samples.write_array(folder, "nan", "m", nan)
    _, body, _ = await get(http, server.table_url + "nan/m/format:json", ALICE)
    assert json.loads(body) == [{"0": 1.5, "1": None}, {"0": None, "1": 2.0}]

    _, body, _ = await get(http, server.table_url + "tab/tables/rows/0;1/format:json", ALICE)
    rows = json.loads(body)
    assert [row["id"] for row in rows] == [0, 1] and rows[1]["label"] == "row1"

    status, body, headers = await get(http, server.table_url + "pub/x/2;4/format:csv")
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    assert body.decode().split() == ["0", "2", "3", "4"]

    status, body, headers = await get(http, server.table_url + "pub/x/2;4")
    assert status == 200 and headers["Content-Type"].startswith("text/xml")
    assert ET.fromstring(body).find("values").text == "2 3 4"  # type: ignore[union-attr]

    # content negotiation when no format op is given
    status, body, headers = await get(
        http, server.table_url + "pub/x/2;4", {"Accept": "application/x-hdf5"}
    )
    assert headers["Content-Type"] == "application/x-hdf5"


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
    await get(http, server.table_url + f"{SEED}/7;9/format:hdf", ALICE)
    stats = server.stats
    assert stats.requests == {"services": 1, "session": 1, "info": 1, "data": 2}
    assert stats.statuses == {200: 4, 400: 1}
    assert stats.bytes_sent > 25 * 4
    assert [(r.range, r.status, r.format, r.fault) for r in stats.data_log] == [
        ("0", 200, "hdf", None),
        ("7;9", 400, "hdf", None),
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
    async with run_server(tmp_path, users={"bob": "b0b-pw"}) as srv, \
            aiohttp.ClientSession() as http:
        url = f"{srv.root}/auth_service/session"
        async with http.get(url, headers={"Authorization": "Mex TOKEN123"}) as resp:
            assert "alice" not in await resp.text()
    async with run_server(tmp_path) as srv, aiohttp.ClientSession() as http:
        url = f"{srv.root}/auth_service/session"
        async with http.get(url, headers={"Authorization": "Mex TOKEN123"}) as resp:
            assert "alice" in await resp.text()
