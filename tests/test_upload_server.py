"""The embedded import service on the wire, and the official bqapi client's store_array."""

from __future__ import annotations

import base64
import gc
import io
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import h5py
import numpy as np
import pytest

from aiobisque import BisqueSession, Session
from aiobisque.compat import BQSession as CompatSession
from aiobisque.server import TableServer, run_server, serve_in_thread


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


ALICE = basic("alice", "wonderland")


def leftovers(srv: TableServer) -> list[Path]:
    return list(Path(srv.folder).glob(".upload-*"))


def h5_bytes(data: np.ndarray, node: str = "x") -> bytes:
    """An HDF5 file image holding ``data`` at ``/node``."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        h5[node] = data
    return buffer.getvalue()


@pytest.fixture
async def srv(tmp_path: Path) -> AsyncIterator[TableServer]:
    async with run_server(tmp_path, users={"alice": "wonderland", "bob": "builder"}) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def transfer(srv: TableServer, suffix: str = "_ABC123") -> str:
    return srv.service_url("import") + "transfer" + suffix


def form(*fields: tuple[str, Any, str | None]) -> aiohttp.FormData:
    data = aiohttp.FormData()
    for name, value, filename in fields:
        if filename is None:
            data.add_field(name, value, content_type="text/xml")
        else:
            data.add_field(name, value, filename=filename,
                           content_type="application/octet-stream")
    return data


async def post(http: aiohttp.ClientSession, url: str, data: Any,
               auth: dict[str, str] | None = ALICE) -> tuple[int, str]:
    async with http.post(url, data=data, headers=auth or {}) as resp:
        return resp.status, await resp.text()


async def test_services_lists_the_import_service(srv: TableServer,
                                                 http: aiohttp.ClientSession) -> None:
    async with http.get(srv.root + "/services") as resp:
        doc = ET.fromstring(await resp.text())
    services = {t.get("type"): t.get("value") for t in doc.iter("tag")}
    assert services["import"] == srv.root + "/import/"


async def test_upload_answer_is_bisques(srv: TableServer, http: aiohttp.ClientSession) -> None:
    # bqapi's order: the file first, its resource document after it
    data = np.arange(12, dtype=np.int32).reshape(3, 4)
    body = form(("file", h5_bytes(data), "ignored.h5"),
                ("file_resource", '<resource name="named.h5"><tag name="a" value="1"/></resource>',
                 None))
    status, text = await post(http, transfer(srv), body)
    assert status == 200
    root = ET.fromstring(text)
    assert (root.tag, root.get("type")) == ("resource", "uploaded")
    [table] = list(root)
    assert table.tag == "table" and table.get("name") == "named.h5"
    uniq = table.get("resource_uniq") or ""
    assert uniq.startswith("00-") and len(uniq) == 25
    assert table.get("uri") == srv.root + "/data_service/" + uniq
    assert table.get("permission") == "private"
    assert [(t.get("name"), t.get("value")) for t in table.iter("tag")] == [("a", "1")]
    assert (Path(srv.folder) / f"{uniq}.h5").is_file()
    async with http.get(f"{srv.root}/table/{uniq}/x/0;2,0;3/format:json", headers=ALICE) as resp:
        assert resp.status == 200
        # a 2-D array of at most 5 columns answers one object per column (BisQue's layout)
        columns = await resp.json()
    assert [c["header"] for c in columns] == ["0", "1", "2", "3"]
    assert [c["data"] for c in columns] == data.T.tolist()


async def test_every_transfer_name_is_the_entry_point(srv: TableServer,
                                                      http: aiohttp.ClientSession) -> None:
    for suffix in ("", "_Q", "_internal"):
        status, text = await post(http, transfer(srv, suffix),
                                  form(("file", h5_bytes(np.ones(2)), "f.h5")))
        assert status == 200 and "resource_uniq" in text
    status, _ = await post(http, srv.service_url("import") + "upload", form(("x", "y", None)))
    assert status == 404
    assert len(srv.imports.uploads) == 3


async def test_login_required(srv: TableServer, http: aiohttp.ClientSession) -> None:
    status, _ = await post(http, transfer(srv), form(("file", h5_bytes(np.ones(2)), "f.h5")),
                           auth=None)
    assert status == 401
    status, _ = await post(http, transfer(srv), form(("file", h5_bytes(np.ones(2)), "f.h5")),
                           auth=basic("alice", "WRONG-pw-123"))
    assert status == 401
    assert srv.imports.uploads == {}


async def test_no_file_answers_an_empty_upload(srv: TableServer,
                                               http: aiohttp.ClientSession) -> None:
    status, text = await post(http, transfer(srv), b"not a form")
    assert status == 200 and ET.fromstring(text).attrib == {"type": "uploaded"}
    assert len(ET.fromstring(text)) == 0


async def test_unreadable_resource_document_is_ignored(srv: TableServer,
                                                       http: aiohttp.ClientSession) -> None:
    body = form(("file_resource", "<resource", None),
                ("file", h5_bytes(np.ones(2)), "../../outside me.h5"))
    status, text = await post(http, transfer(srv), body)
    [table] = list(ET.fromstring(text))
    assert status == 200 and table.get("name") == "outside me.h5"  # no directories
    assert not (Path(srv.folder).parent / "outside me.h5").exists()


async def test_only_hdf5_files_are_stored(srv: TableServer, http: aiohttp.ClientSession) -> None:
    status, text = await post(http, transfer(srv), form(("file", b"hello", "notes.txt")))
    assert status == 200
    [element] = list(ET.fromstring(text))
    assert element.get("resource_uniq") is None
    assert "HDF5 files only" in (element.find("tag").get("value") or "")  # type: ignore[union-attr]
    assert srv.imports.uploads == {}


async def test_several_files_in_one_transfer(srv: TableServer,
                                             http: aiohttp.ClientSession) -> None:
    body = form(("a", h5_bytes(np.ones(2)), "a.h5"), ("b", h5_bytes(np.zeros(3)), "b.h5"),
                ("b_resource", '<resource name="bee.h5"/>', None))
    status, text = await post(http, transfer(srv), body)
    names = [e.get("name") for e in ET.fromstring(text)]
    assert status == 200 and names == ["a.h5", "bee.h5"]


async def test_published_upload_is_readable_anonymously(srv: TableServer,
                                                        http: aiohttp.ClientSession) -> None:
    xml = ('<resource><tag name="ingest"><tag name="permission" value="published"/></tag>'
           '</resource>')
    status, text = await post(http, transfer(srv), form(("file_resource", xml, None),
                                                        ("file", h5_bytes(np.ones(2)), "p.h5")))
    [table] = list(ET.fromstring(text))
    assert status == 200
    assert table.get("permission") == "published" and table.find("tag") is None
    async with http.get(f"{srv.root}/table/{table.get('resource_uniq')}/x/info/format:json"
                        ) as resp:
        assert resp.status == 200


async def test_private_upload_is_the_owners(srv: TableServer,
                                            http: aiohttp.ClientSession) -> None:
    _, text = await post(http, transfer(srv), form(("file", h5_bytes(np.ones(2)), "p.h5")))
    [element] = list(ET.fromstring(text))
    uniq = element.get("resource_uniq")
    url = f"{srv.root}/data_service/{uniq}"
    async with http.get(url, headers=basic("bob", "builder")) as resp:
        assert resp.status == 403
    async with http.get(url) as resp:
        assert resp.status == 401
    async with http.get(url, headers=ALICE) as resp:
        assert resp.status == 200 and 'name="p.h5"' in await resp.text()


async def test_size_limit(srv: TableServer, http: aiohttp.ClientSession) -> None:
    srv.imports.max_bytes = 10_000
    big = h5_bytes(np.zeros(5_000))
    status, text = await post(http, transfer(srv), form(("file", big, "big.h5")))
    assert status == 413 and "limit of 10,000 bytes" in text

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: caught while streaming
        writer = aiohttp.MultipartWriter("form-data", boundary="b0undary")
        part = writer.append(big)
        part.set_content_disposition("form-data", name="file", filename="big.h5")
        buffer = io.BytesIO()

        class Sink:
            async def write(self, data: bytes) -> None:
                buffer.write(data)

        await writer.write(Sink())  # type: ignore[arg-type]
        data = buffer.getvalue()
        for i in range(0, len(data), 4096):
            yield data[i:i + 4096]

    headers = {"Content-Type": "multipart/form-data; boundary=b0undary", **ALICE}
    async with http.post(transfer(srv), data=chunked(), headers=headers) as resp:
        assert resp.status == 413
    assert srv.imports.uploads == {}
    assert not leftovers(srv)


async def test_malformed_multipart_is_an_internal_error(srv: TableServer,
                                                        http: aiohttp.ClientSession) -> None:
    headers = {"Content-Type": "multipart/form-data; boundary=zzz", **ALICE}
    async with http.post(transfer(srv), data=b"--zzz\r\nbroken", headers=headers) as resp:
        assert resp.status == 500
        assert "Internal error during upload" in await resp.text()
    assert not leftovers(srv)


# -- the official client ---------------------------------------------------------------------

import bqapi  # noqa: E402


@pytest.fixture
def thread_srv(tmp_path: Path) -> Iterator[TableServer]:
    with serve_in_thread(tmp_path, users={"alice": "wonderland"}) as server:
        yield server


# bqapi's own: a natural-name warning for "from bqapi", and the upload file it never closes
@pytest.mark.filterwarnings("ignore::tables.NaturalNameWarning", "ignore::ResourceWarning",
                            "ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("dtype", ["float64", ">i2", "uint8", "bool", "S4"])
def test_bqapi_store_array_round_trips(thread_srv: TableServer, dtype: str) -> None:
    data = (np.arange(60) % 7).astype(dtype).reshape(3, 4, 5)
    bq = bqapi.BQSession().init_local("alice", "wonderland", bisque_root=thread_srv.root)
    try:
        element = bq.service("table").store_array(data, "from bqapi")
        gc.collect()  # collect the file bqapi left open while its warning is ignored
        uniq = element.get("resource_uniq")
        assert element.tag == "table" and element.get("name") == "from bqapi.h5"
        back = bq.service("table").load_array(uniq, "from bqapi")
        np.testing.assert_array_equal(back, data)
    finally:
        bq.c.close()
    with Session(thread_srv.root, auth=("alice", "wonderland")) as session:
        ours = session.load_array(uniq, "from bqapi")
    np.testing.assert_array_equal(ours, data)
    assert ours.dtype == data.dtype.newbyteorder("=")


def test_compat_store_array_returns_what_bqapi_returns(thread_srv: TableServer) -> None:
    data = np.linspace(0, 1, 24).reshape(4, 6)
    compat = CompatSession().init_local("alice", "wonderland", bisque_root=thread_srv.root)
    assert compat is not None
    try:
        element = compat.service("table").store_array(data, "compat")
    finally:
        compat.close()
    assert isinstance(element, ET.Element) and element.tag == "table"
    uniq = element.get("resource_uniq")
    assert element.get("uri", "").endswith("/data_service/" + uniq)
    bq = bqapi.BQSession().init_local("alice", "wonderland", bisque_root=thread_srv.root)
    try:
        np.testing.assert_array_equal(bq.service("table").load_array(uniq, "compat"), data)
    finally:
        bq.c.close()


async def test_round_trip_download_process_upload(tmp_path: Path) -> None:
    """The README's round trip: download, process, upload, download again."""
    with h5py.File(tmp_path / "source.h5", "w") as h5:
        h5["images/raw"] = np.arange(2 * 3 * 4, dtype=np.uint16).reshape(2, 3, 4)
    async with run_server(tmp_path, users={"alice": "wonderland"}) as server:
        async with BisqueSession(server.root, auth=("alice", "wonderland")) as bq:
            raw = await bq.table.load_array("source", "images/raw")
            smoothed = (raw.astype(np.float32) - raw.mean()) / raw.std()
            result = await bq.table.store_array(smoothed, "normalized",
                                                tags={"source": "source/images/raw"})
            again = await bq.table.load_array(result.uniq, "normalized")
    np.testing.assert_array_equal(again, smoothed)
