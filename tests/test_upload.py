"""Uploads (issue #16): aiobisque's store_array/store_table against the embedded import service."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import tables

from aiobisque import (
    AuthenticationError,
    BisqueSession,
    Config,
    NotFoundError,
    PermissionDeniedError,
    Progress,
    RetryPolicy,
    Session,
    UnsupportedError,
    UploadError,
    UploadNotTakenError,
    UploadUncertainError,
    UsageError,
)
from aiobisque.server import TableServer, run_server, samples, serve_in_thread
from aiobisque.server.imports import ImportFaults
from tests.conftest import ACCESS, DTYPES, FAST_RETRY, MEX_TOKENS, USER, USERS


@pytest.fixture
async def srv(tmp_path: Path) -> AsyncIterator[TableServer]:
    """A server on a folder of its own: uploads must not leak into the shared sample data."""
    samples.write_array(tmp_path, "public", "a", (3, 3), dtype="int32")
    async with run_server(tmp_path, users=USERS, mex_tokens=MEX_TOKENS, access=ACCESS,
                          public=["public"]) as server:
        yield server


@pytest.fixture
def srv_thread(tmp_path: Path) -> Iterator[TableServer]:
    """The same on its own thread, for synchronous clients."""
    with serve_in_thread(tmp_path, users=USERS, mex_tokens=MEX_TOKENS) as server:
        yield server


@pytest.fixture
async def uploader(srv: TableServer) -> AsyncIterator[BisqueSession]:
    async with BisqueSession(srv.root, auth=USER, config=Config(retry=FAST_RETRY)) as session:
        yield session


def leftovers(srv: TableServer) -> list[str]:
    """Temporary upload files still in the served folder."""
    return sorted(p.name for p in Path(srv.folder).glob(".upload-*"))


def stored_file(srv: TableServer, uniq: str) -> Path:
    return Path(srv.imports.uploads[uniq].file)


# -- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
async def test_store_array_round_trips_every_dtype(uploader: BisqueSession, srv: TableServer,
                                                   dtype: str) -> None:
    rng = np.random.default_rng(3)
    shape = (5, 4, 3)
    if dtype.startswith("S"):
        data = np.array([b"ab", b"", b"xyz q", b"\xff" * 6] * 15, dtype=dtype).reshape(shape)
    elif dtype == "bool":
        data = rng.integers(0, 2, shape).astype(bool)
    else:
        data = (rng.standard_normal(shape) * 100).astype(dtype)
    result = await uploader.table.store_array(data, "arr")
    assert result.uniq.startswith("00-") and len(result.uniq) == 25
    assert result.resource_type == "table" and result.name == "arr.h5"
    back = await uploader.table.load_array(result.uniq, "arr")
    assert back.dtype == data.dtype.newbyteorder("=")  # byte order becomes native
    np.testing.assert_array_equal(back, data)
    assert leftovers(srv) == []


@pytest.mark.parametrize("data", [np.array(2.5), np.arange(7, dtype=np.int64)[::2],
                                  np.asfortranarray(np.arange(12.0).reshape(3, 4)),
                                  np.zeros((0, 3), dtype=np.int16)],
                         ids=["0-d", "strided", "fortran", "empty"])
async def test_store_array_odd_layouts(uploader: BisqueSession, data: np.ndarray) -> None:
    result = await uploader.table.store_array(data, "x")
    info = await uploader.table.info(result.uniq, "x")
    assert info.shape == data.shape
    if data.ndim == 0:
        # stored exactly, but BisQue's table service cannot serve a scalar's data
        with pytest.raises(UnsupportedError, match="0-d"):
            await uploader.table.load_array(result.uniq, "x")
    elif data.size:
        np.testing.assert_array_equal(await uploader.table.load_array(result.uniq, "x"), data)


async def test_file_layout_is_what_bqapi_writes(uploader: BisqueSession, srv: TableServer,
                                                tmp_path: Path) -> None:
    data = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    result = await uploader.table.store_array(data, "layout")
    reference = tmp_path / "reference.h5"
    # what bqapi's store_array does, to compare layouts
    with tables.open_file(str(reference), "w", filters=tables.Filters(complevel=5)) as h5:
        h5.create_array(h5.root, "layout", data)
    with h5py.File(stored_file(srv, result.uniq)) as ours, h5py.File(reference) as theirs:
        assert list(ours) == list(theirs) == ["layout"]
        a, b = ours["layout"], theirs["layout"]
        assert (a.shape, a.dtype, a.chunks, a.compression) == (b.shape, b.dtype, None, None)
        assert {k: a.attrs[k] for k in a.attrs if k != "TITLE"} == {
            k: b.attrs[k] for k in b.attrs if k != "TITLE"}
        np.testing.assert_array_equal(a[...], b[...])


async def test_big_array_is_streamed_with_progress(uploader: BisqueSession, srv: TableServer) -> None:
    data = np.random.default_rng(1).standard_normal((64, 256, 256)).astype(np.float32)  # 16 MiB
    seen: list[Progress] = []
    result = await uploader.table.store_array(data, "big", progress=seen.append)
    assert result.bytes > data.nbytes
    sent = [p for p in seen if p.total_bytes == result.bytes]
    assert len(sent) > 4  # reported piece by piece, not once
    assert [p.done_bytes for p in sent] == sorted(p.done_bytes for p in sent)
    assert seen[-1].done_requests == 1 and seen[-1].done_bytes == result.bytes
    np.testing.assert_array_equal(await uploader.table.load_array(result.uniq, "big"), data)


async def test_store_table_structured_array(uploader: BisqueSession, srv: TableServer) -> None:
    rows = np.array(
        [(1, 2.5, True, b"ab", "caf\u00e9"), (-7, np.nan, False, b"", "x"), (3, -0.0, True, b"q", "")],
        dtype=[("id", "<i8"), ("x", ">f8"), ("ok", "?"), ("raw", "S3"), ("text", "U4")])
    result = await uploader.table.store_table(rows, "rows", tags={"kind": "test"})
    info = await uploader.table.info(result.uniq, "rows")
    assert info.kind == "table"
    assert list(info.headers) == ["id", "x", "ok", "raw", "text"]
    with h5py.File(stored_file(srv, result.uniq)) as h5:
        back = h5["rows"][...]
        assert h5["rows"].attrs["CLASS"] == b"TABLE"
    assert back.dtype.names == rows.dtype.names
    for name in ("id", "x", "ok", "raw"):
        np.testing.assert_array_equal(back[name], rows[name])
    assert [t.decode("utf-8") for t in back["text"]] == list(rows["text"])
    # and through aiobisque's own download path (text columns come back as str)
    ours = await uploader.table.load_table(result.uniq, "rows")
    assert ours.dtype.names == rows.dtype.names and ours["ok"].dtype == np.bool_
    assert ours["id"].dtype == np.int64
    for name in ("id", "x", "ok"):
        np.testing.assert_array_equal(ours[name], rows[name])
    assert list(ours["raw"]) == [r.decode() for r in rows["raw"]]
    assert list(ours["text"]) == list(rows["text"])


async def test_store_table_dataframe(uploader: BisqueSession, srv: TableServer) -> None:
    import pandas as pd
    frame = pd.DataFrame({
        "name": ["alpha", "\u03b2eta", ""],
        "count": np.array([1, 2, 3], dtype=np.int32),
        "value": [0.5, 1e300, -2.25],
        "flag": [True, False, True],
    })
    result = await uploader.table.store_table(frame, "frame")
    with h5py.File(stored_file(srv, result.uniq)) as h5:
        back = h5["frame"][...]
    assert back.dtype.names == ("name", "count", "value", "flag")
    assert back["count"].dtype == np.int32
    assert [b.decode("utf-8") for b in back["name"]] == list(frame["name"])
    np.testing.assert_array_equal(back["value"], frame["value"].to_numpy())
    np.testing.assert_array_equal(back["flag"], frame["flag"].to_numpy())
    ours = await uploader.table.load_table(result.uniq, "frame", as_dataframe=True)
    assert list(ours.columns) == list(frame.columns)
    for name in frame.columns:
        assert ours[name].tolist() == frame[name].tolist(), name
    assert ours["count"].dtype == np.int32 and ours["flag"].dtype == bool


async def test_big_table_is_written_in_blocks(uploader: BisqueSession, srv: TableServer) -> None:
    rows = np.zeros(600_000, dtype=[("i", "<i8"), ("f", "<f8")])  # 9.6 MB: two blocks
    rows["i"] = np.arange(len(rows))
    rows["f"] = rows["i"] * 0.5
    result = await uploader.table.store_table(rows, "many")
    with h5py.File(stored_file(srv, result.uniq)) as h5:
        np.testing.assert_array_equal(h5["many"][...], rows)


def test_sync_facade_round_trip(srv_thread: TableServer) -> None:
    data = np.arange(30, dtype=np.uint16).reshape(5, 6)
    with Session(srv_thread.root, auth=USER) as session:
        result = session.table.store_array(data, "sync")
        np.testing.assert_array_equal(session.load_array(result.uniq, "sync"), data)
        table = session.table.store_table(np.zeros(3, dtype=[("a", "i4")]), "t")
        assert session.info(table.uniq, "t").kind == "table"


# -- the resource ----------------------------------------------------------------------------


async def test_new_resource_is_private_to_its_owner(uploader: BisqueSession, srv: TableServer) -> None:
    result = await uploader.table.store_array(np.arange(4), "mine", tags={"stage": "processed"})
    async with BisqueSession(srv.root, auth=("bob", "builder"),
                             config=Config(retry=FAST_RETRY)) as bob:
        with pytest.raises(PermissionDeniedError):
            await bob.table.info(result.uniq, "mine")
    async with BisqueSession(srv.root, config=Config(retry=FAST_RETRY)) as anonymous:
        with pytest.raises(AuthenticationError):
            await anonymous.table.info(result.uniq, "mine")
    doc = (await uploader.get_document(result.uri, "the resource")).decode()
    assert 'name="mine.h5"' in doc and 'name="stage" value="processed"' in doc
    assert f'name="upload_id" value="{result.upload_id}"' in doc
    assert result.uri == uploader.services["data_service"] + result.uniq


async def test_each_upload_is_a_new_resource(uploader: BisqueSession, srv: TableServer) -> None:
    first = await uploader.table.store_array(np.arange(3), "same")
    second = await uploader.table.store_array(np.arange(3) * 2, "same")
    assert first.uniq != second.uniq and first.upload_id != second.upload_id
    np.testing.assert_array_equal(await uploader.table.load_array(first.uniq, "same"), np.arange(3))
    np.testing.assert_array_equal(await uploader.table.load_array(second.uniq, "same"),
                                  np.arange(3) * 2)


async def test_names_that_need_quoting(uploader: BisqueSession) -> None:
    for name in ("odd name: 50%", "0:10", 'quo"te', "caf\u00e9"):
        result = await uploader.table.store_array(np.arange(3), name)
        assert result.name == f"{name}.h5"
        np.testing.assert_array_equal(await uploader.table.load_array(result.uniq, name), np.arange(3))


async def test_mex_token_can_upload(srv: TableServer) -> None:
    from aiobisque import MexToken

    async with BisqueSession(srv.root, auth=MexToken("TOKEN123")) as session:
        result = await session.table.store_array(np.ones(2), "by-module")
    assert srv.imports.uploads[result.uniq].owner == "alice"


# -- refused before any byte is sent ---------------------------------------------------------


@pytest.mark.parametrize(("data", "words"), [
    (np.array([1, "a"], dtype=object), "object arrays"),
    (np.array(["text"]), "encode them"),
    (np.zeros(2, dtype=[("a", "i4")]), "store_table"),
    (np.array(["2020-01-01"], dtype="datetime64[D]"), "datetime64"),
    (np.zeros(2, dtype=np.longdouble), "supported"),
])
async def test_bad_arrays_are_refused_before_sending(uploader: BisqueSession, srv: TableServer,
                                                     data: np.ndarray, words: str) -> None:
    with pytest.raises(UsageError, match=words):
        await uploader.table.store_array(data, "bad")
    assert srv.imports.requests == 0


@pytest.mark.parametrize(("name", "words"), [
    ("", "empty"), ("   ", "empty"), ("a/b", "path separator"), ("a\\b", "path separator"),
    ("..", "directory"), (" lead", "white space"), ("tab\there", "control"),
    ("x" * 201, "longer"), ("_v_attrs", "reserves"), (7, "string"), ("a\udcff", "Unicode"),
])
async def test_bad_names_are_refused_before_sending(uploader: BisqueSession, srv: TableServer,
                                                    name: Any, words: str) -> None:
    with pytest.raises(UsageError, match=words):
        await uploader.table.store_array(np.arange(3), name)
    assert srv.imports.requests == 0


async def test_bad_tables_are_refused(uploader: BisqueSession, srv: TableServer) -> None:
    with pytest.raises(UsageError, match="structured"):
        await uploader.table.store_table(np.arange(3), "t")
    with pytest.raises(UsageError, match="sub-array"):
        await uploader.table.store_table(np.zeros(2, dtype=[("a", "i4", (3,))]), "t")
    with pytest.raises(UsageError, match="object"):
        await uploader.table.store_table(np.zeros(2, dtype=[("a", "O")]), "t")
    import pandas as pd
    with pytest.raises(UsageError, match="missing values"):
        await uploader.table.store_table(pd.DataFrame({"s": ["a", None]}), "t")
    with pytest.raises(UsageError, match="non-empty strings"):
        await uploader.table.store_table(pd.DataFrame({0: [1]}), "t")
    with pytest.raises(UsageError, match="DataFrame"):
        await uploader.table.store_table([1, 2], "t")
    with pytest.raises(UsageError, match="tag"):
        await uploader.table.store_array(np.arange(2), "t", tags={"": "x"})
    assert srv.imports.requests == 0


async def test_anonymous_session_is_refused_before_sending(srv: TableServer) -> None:
    async with BisqueSession(srv.root) as anonymous:
        with pytest.raises(AuthenticationError, match="needs a login"):
            await anonymous.table.store_array(np.arange(3), "anon")
    assert srv.imports.requests == 0


async def test_login_refused_by_the_import_service(srv: TableServer) -> None:
    from aiobisque import MexToken

    async with BisqueSession(srv.root, auth=MexToken("TOKEN123"),
                             config=Config(retry=FAST_RETRY)) as session:
        del srv.mex_tokens["TOKEN123"]  # the token expires after the login check
        with pytest.raises(AuthenticationError, match="nothing was stored"):
            await session.table.store_array(np.ones(2), "expired")
    assert srv.imports.uploads == {}


async def test_server_without_import_service(uploader: BisqueSession) -> None:
    del uploader.services["import"]
    with pytest.raises(NotFoundError, match="no import service"):
        await uploader.table.store_array(np.arange(3), "x")


# -- failures and the retry rule -------------------------------------------------------------


async def test_503_before_the_body_is_retried_once(uploader: BisqueSession, srv: TableServer) -> None:
    data = np.ones((64, 512, 256), dtype=np.float32)  # 32 MiB: more than socket buffers hold
    srv.imports.faults = ImportFaults(unavailable=1)
    result = await uploader.table.store_array(data, "retried")
    assert result.attempts == 2
    assert srv.imports.requests == 2
    assert list(srv.imports.uploads) == [result.uniq]  # one resource, no duplicate
    assert leftovers(srv) == []


async def test_503_every_time_gives_up_and_stores_nothing(srv: TableServer) -> None:
    policy = RetryPolicy(max_attempts=3, backoff_initial=0.01, backoff_max=0.02)
    data = np.ones((64, 512, 256), dtype=np.float32)
    async with BisqueSession(srv.root, auth=USER, retry=policy) as session:
        srv.imports.faults = ImportFaults(unavailable=10)
        with pytest.raises(UploadError) as caught:
            await session.table.store_array(data, "never")
    assert type(caught.value) is UploadNotTakenError and caught.value.stored is False
    assert caught.value.status == 503 and caught.value.attempts == 3
    assert "nothing was stored" in str(caught.value)
    assert srv.imports.requests == 3 and srv.imports.uploads == {}


async def test_connection_refused_is_retried_then_reported_as_not_stored(
        uploader: BisqueSession, srv: TableServer) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    dead = f"http://127.0.0.1:{port}/import/"
    uploader.services["import"] = dead
    uploader.transport.trust(dead)
    policy = RetryPolicy(max_attempts=3, backoff_initial=0.01, backoff_max=0.02)
    with pytest.raises(UploadError) as caught:
        await uploader.table.store_array(np.arange(3), "refused", retry=policy)
    assert type(caught.value) is UploadNotTakenError and caught.value.attempts == 3
    assert "cannot connect" in str(caught.value)


async def test_cut_mid_upload_is_uncertain_and_not_repeated(uploader: BisqueSession,
                                                            srv: TableServer) -> None:
    data = np.ones((16, 512, 256), dtype=np.float32)  # 8 MiB
    srv.imports.faults = ImportFaults(cut_after=1 << 20)
    with pytest.raises(UploadUncertainError) as caught:
        await uploader.table.store_array(data, "cut")
    err = caught.value
    assert err.stored is None and err.attempts == 1 and err.name == "cut.h5"
    message = str(err)
    assert "may or may not" in message and f"upload_id={err.upload_id}" in message
    assert "not sent again" in message
    assert srv.imports.requests == 1  # never sent twice
    assert srv.imports.uploads == {} and leftovers(srv) == []  # the cut left nothing


async def test_answer_lost_after_storing_is_uncertain_without_duplicate(
        uploader: BisqueSession, srv: TableServer) -> None:
    srv.imports.faults = ImportFaults(drop_answer=1)
    with pytest.raises(UploadUncertainError) as caught:
        await uploader.table.store_array(np.arange(10), "lost")
    assert srv.imports.requests == 1
    [record] = srv.imports.uploads.values()  # it was stored exactly once
    # the error says how to find it: the upload_id tag
    assert ("upload_id", caught.value.upload_id) in record.tags
    # uploading again with the same id keeps the tag, so a second search finds both
    again = await uploader.table.store_array(np.arange(10), "lost",
                                       tags={"upload_id": caught.value.upload_id})
    assert again.upload_id == caught.value.upload_id


async def test_500_after_storing_is_uncertain(uploader: BisqueSession, srv: TableServer) -> None:
    srv.imports.faults = ImportFaults(fail_after_store=1)
    with pytest.raises(UploadUncertainError, match="HTTP 500: Internal error during upload"):
        await uploader.table.store_array(np.arange(10), "fivehundred")
    assert srv.imports.requests == 1 and len(srv.imports.uploads) == 1


async def test_too_large_is_413_and_stores_nothing(uploader: BisqueSession, srv: TableServer) -> None:
    srv.imports.max_bytes = 100_000
    with pytest.raises(UploadError) as caught:
        await uploader.table.store_array(np.zeros(50_000), "huge")
    assert caught.value.status == 413 and type(caught.value) is UploadError
    assert "limit of 100,000 bytes" in str(caught.value)
    assert srv.imports.uploads == {} and leftovers(srv) == []


async def test_cancelled_upload_leaves_a_note(uploader: BisqueSession, srv: TableServer) -> None:
    data = np.ones((64, 512, 256), dtype=np.float32)
    seen = asyncio.Event()

    def progress(p: Progress) -> None:
        if p.total_bytes > data.nbytes and p.done_bytes > 0:
            seen.set()

    task = asyncio.create_task(uploader.table.store_array(data, "cancelled", progress=progress))
    await asyncio.wait_for(seen.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError) as caught:
        await task
    assert any("may or may not exist" in note for note in getattr(caught.value, "__notes__", []))
    for _ in range(100):  # the server notices the hang-up and cleans up
        if not leftovers(srv):
            break
        await asyncio.sleep(0.05)
    assert leftovers(srv) == [] and srv.imports.uploads == {}
