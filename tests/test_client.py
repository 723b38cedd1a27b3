"""The async client against the embedded server over real HTTP."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aiobisque
from aiobisque import (
    AuthenticationError,
    BisqueSession,
    Config,
    DownloadStats,
    MexToken,
    NotFoundError,
    PermissionDeniedError,
    Progress,
    SelectionError,
    UsageError,
)
from aiobisque.server import FaultPlan, TableServer, run_server, samples
from tests.conftest import DTYPES, USER, expected, served_dtype


async def test_seed_example(bq: BisqueSession, data_dir: Path) -> None:
    table = bq.service("table")
    assert table is bq.table
    ms = await table.load_array(samples.SEED_UNIQ, samples.SEED_PATH)
    assert ms.shape == (5, 5, 5, 1)
    np.testing.assert_array_equal(ms, expected(data_dir, samples.SEED_UNIQ, samples.SEED_PATH))
    assert set(np.unique(ms)) == {1, 2}


async def test_info_matrix_group_table(bq: BisqueSession) -> None:
    info = await bq.table.info(samples.SEED_UNIQ, samples.SEED_PATH)
    assert (info.kind, info.shape, info.dtype) == ("matrix", (5, 5, 5, 1), np.dtype("int32"))
    assert "TupleDimensions" in info.meta
    group = await bq.table.info(samples.SEED_UNIQ, "DataContainers/ImageDataContainer/CellData")
    assert group.kind == "group" and group.shape is None
    assert any(p.endswith("/Phases") for p in group.arrays())
    table = await bq.table.info("tab", "rows")
    assert table.kind == "table" and table.shape == (25,)
    assert table.dtype is not None and table.dtype.names == ("id", "x", "label")


async def test_downloading_a_group_lists_its_arrays(bq: BisqueSession) -> None:
    with pytest.raises(NotFoundError, match=r"is a group.*Phases"):
        await bq.table.load_array(samples.SEED_UNIQ, "DataContainers/ImageDataContainer/CellData")


async def test_bqapi_style_slices(bq: BisqueSession, data_dir: Path) -> None:
    full = expected(data_dir, "vol", "volume")
    part = await bq.table.load_array("vol", "volume", slices=[slice(0, 10), 3])
    assert part.shape == (10, 1, 20)
    np.testing.assert_array_equal(part, full[0:10, 3:4])
    part = await bq.table.load_array("vol", "volume", slices=[slice(-5, None, 2), -1, 7])
    np.testing.assert_array_equal(part, full[-5::2, -1:, 7:8])
    with pytest.raises(SelectionError):
        await bq.table.load_array("vol", "volume", slices=[40])


async def test_remote_array_numpy_semantics(bq: BisqueSession, data_dir: Path) -> None:
    full = expected(data_dir, "vol", "volume")
    arr = await bq.table.open("vol", "volume")
    assert (arr.shape, arr.dtype, arr.ndim, arr.size, arr.nbytes) == (
        full.shape, full.dtype, 3, full.size, full.nbytes)
    for index in (np.s_[..., -1], np.s_[::-7, None, 3, 2:-2:3], np.s_[5], np.s_[()],
                  np.s_[-1, -1, -1], np.s_[:, ::-1]):
        got = await arr.read(index, request_bytes=1000)
        assert got.shape == full[index].shape
        np.testing.assert_array_equal(got, full[index])


async def test_zero_dimensional_array(bq: BisqueSession) -> None:
    arr = await bq.table.open("vol", "scalar")
    assert arr.shape == () and arr.ndim == 0 and arr.dtype == np.float64
    # real BisQue answers 500 to every data request for a scalar: refused, never an
    # empty or wrong-shaped result
    with pytest.raises(aiobisque.UnsupportedError, match=r"0-d \(scalar\)"):
        await arr.read()
    out = np.zeros((), np.float64)
    with pytest.raises(aiobisque.UnsupportedError):
        await arr.read(out=out)


async def test_empty_selection_sends_no_request(bq: BisqueSession, server: TableServer) -> None:
    arr = await bq.table.open("vol", "volume")
    before = server.stats.requests["data"]
    got = await arr.read(np.s_[3:3, ::-1])
    assert got.shape == (0, 30, 20) and got.dtype == np.float32
    assert server.stats.requests["data"] == before


async def test_out_buffer_ndarray_memmap_view(bq: BisqueSession, data_dir: Path,
                                              tmp_path: Path) -> None:
    full = expected(data_dir, "vol", "volume")
    arr = await bq.table.open("vol", "volume")
    buf = np.zeros((10, 30, 20), dtype=np.float64)  # a wider type is fine
    assert await arr.read(np.s_[100 - 100:10], out=buf) is buf
    np.testing.assert_array_equal(buf, full[:10])
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype="float32",
                                   shape=full.shape)
    await arr.read(out=mm, request_bytes=4096)
    mm.flush()
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), full)
    big = np.zeros((40, 40, 20), dtype=np.float32)
    await arr.read(np.s_[:, ::-1], out=big[:, 5:35])
    np.testing.assert_array_equal(big[:, 5:35], full[:, ::-1])
    with pytest.raises(UsageError, match="shape"):
        await arr.read(np.s_[0], out=np.zeros((3, 3), np.float32))
    with pytest.raises(UsageError, match="cannot store"):
        await arr.read(np.s_[0], out=np.zeros((30, 20), np.int16))


async def test_uniq_url_forms(bq: BisqueSession, server: TableServer, data_dir: Path) -> None:
    want = expected(data_dir, samples.SEED_UNIQ, samples.SEED_PATH)
    data_url = f"{server.root}/data_service/{samples.SEED_UNIQ}"
    for form in (samples.SEED_UNIQ, data_url,
                 f"{server.root}/client_service/view?resource={data_url}"):
        np.testing.assert_array_equal(await bq.table.load_array(form, samples.SEED_PATH), want)


async def test_paths_with_spaces_colons_and_range_like_names(bq: BisqueSession,
                                                             data_dir: Path) -> None:
    path = "grp with space/0:10/data: x"
    got = await bq.table.load_array("odd", path, slices=[slice(1, 3)])
    np.testing.assert_array_equal(got, expected(data_dir, "odd", path)[1:3])
    got = await bq.table.load_array("odd", ["grp with space", "0:10", "data: x"])
    np.testing.assert_array_equal(got, expected(data_dir, "odd", path))


async def test_compound_table_and_chunked_compressed_bodies(bq: BisqueSession,
                                                            data_dir: Path) -> None:
    rows = await bq.table.load_table("tab", "rows", slice(3, 20, 4))
    want = expected(data_dir, "tab", "rows")[3:20:4]
    np.testing.assert_array_equal(rows["id"], want["id"])
    np.testing.assert_array_equal(rows["x"], want["x"])
    assert list(rows["label"]) == [b.decode() for b in want["label"]]
    want = expected(data_dir, "chunked", "c")
    assert want.dtype.byteorder == ">"
    got = await bq.table.load_array("chunked", "c")
    assert got.dtype.isnative
    np.testing.assert_array_equal(got, want)


async def test_chunked_gzip_images_from_other_exporters(data_dir: Path) -> None:
    async with run_server(data_dir, users={"alice": "wonderland"}, hdf_layout="chunked") as srv:
        async with BisqueSession(srv.root, auth=USER) as bq:
            got = await bq.table.load_array("vol", "volume", request_bytes=10_000)
    np.testing.assert_array_equal(got, expected(data_dir, "vol", "volume"))


@pytest.mark.parametrize("index", range(len(DTYPES)))
async def test_every_dtype_bit_exact(bq: BisqueSession, data_dir: Path, index: int) -> None:
    want = expected(data_dir, "dtypes", f"d{index}")
    arr = await bq.table.open("dtypes", f"d{index}")
    assert arr.dtype == served_dtype(want.dtype)
    got = await arr.read(request_bytes=17)
    assert got.dtype.isnative and got.shape == want.shape
    assert got.tobytes() == want.astype(got.dtype).tobytes()


@st.composite
def selections(draw: st.DrawFn, shape: tuple[int, ...]) -> tuple[Any, ...]:
    index: list[Any] = []
    for n in shape[: draw(st.integers(0, len(shape)))]:
        if draw(st.integers(0, 3)) == 0:
            index.append(draw(st.integers(-n, n - 1)))
        else:
            bound = st.one_of(st.none(), st.integers(-n - 2, n + 2))
            step = st.one_of(st.none(), st.integers(-4, 4).filter(bool))
            index.append(slice(draw(bound), draw(bound), draw(step)))
    if draw(st.booleans()):
        index.insert(draw(st.integers(0, len(index))), None)
    return tuple(index)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_numpy_indexing_property(thread_server: TableServer, data_dir: Path,
                                 data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(DTYPES) - 1), label="dtype")
    want = expected(data_dir, "dtypes", f"d{i}")
    index = data.draw(selections(want.shape), label="index")
    request_bytes = data.draw(st.sampled_from([1, 40, 1 << 20]), label="request_bytes")

    async def read() -> np.ndarray:
        async with BisqueSession(thread_server.root, auth=USER) as bq:
            arr = await bq.table.open("dtypes", f"d{i}")
            return await arr.read(index, request_bytes=request_bytes)

    got = asyncio.run(read())
    assert got.shape == want[index].shape
    assert got.tobytes() == want[index].astype(got.dtype).tobytes()


async def test_progress_and_stats(bq: BisqueSession) -> None:
    seen: list[Progress] = []
    stats = DownloadStats()
    arr = await bq.table.open("vol", "volume")
    await arr.read(progress=seen.append, stats=stats, request_bytes=4800, concurrency=3)
    assert stats.requests == 20 and stats.attempts == 20 and stats.retries == 0
    assert stats.out_bytes == arr.nbytes and stats.seconds > 0 and stats.throughput > 0
    last = seen[-1]
    assert (last.done_bytes, last.total_bytes) == (arr.nbytes, arr.nbytes)
    assert (last.done_requests, last.total_requests) == (20, 20)
    assert all(a.done_bytes <= b.done_bytes for a, b in itertools.pairwise(seen))


async def test_limiter_bounds_requests_across_concurrent_calls(server: TableServer) -> None:
    async with BisqueSession(server.root, auth=USER, concurrency=3) as bq:
        arr = await bq.table.open("vol", "volume")
        server.stats.reset()
        results = await asyncio.gather(*(arr.read(request_bytes=2400) for _ in range(4)))
        assert bq.transport.limiter.peak <= 3
    assert server.stats.peak_in_flight <= 3
    assert server.stats.requests["data"] == 4 * 40
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


async def test_caller_owned_aiohttp_session_is_left_open(server: TableServer) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with BisqueSession(server.root, auth=USER, session=http) as bq:
            await bq.table.info("vol", "volume")
        assert not http.closed


# --- errors ------------------------------------------------------------------------------

async def test_wrong_password_raises_at_once(server: TableServer) -> None:
    with pytest.raises(AuthenticationError, match="rejected the credentials of user 'alice'") \
            as info:
        async with BisqueSession(server.root, auth=("alice", "WRONG-pw-123")):
            pass
    assert "WRONG-pw-123" not in str(info.value) and "WRONG-pw-123" not in repr(info.value)
    assert isinstance(info.value, PermissionError)


async def test_mex_token(server: TableServer, data_dir: Path) -> None:
    async with BisqueSession(server.root, auth=MexToken("TOKEN123")) as bq:
        assert bq.user == "alice"
        got = await bq.table.load_array("private", "a")
    np.testing.assert_array_equal(got, expected(data_dir, "private", "a"))
    with pytest.raises(AuthenticationError):
        async with BisqueSession(server.root, auth=MexToken("nope")):
            pass


async def test_anonymous_public_and_login_required(server: TableServer) -> None:
    async with BisqueSession(server.root) as bq:
        assert (await bq.table.load_array("public", "a")).shape == (3, 3)
        with pytest.raises(AuthenticationError, match="401"):
            await bq.table.info("vol", "volume")


async def test_forbidden(server: TableServer) -> None:
    async with BisqueSession(server.root, auth=("bob", "builder")) as bq:
        with pytest.raises(PermissionDeniedError, match="403") as info:
            await bq.table.load_array("private", "a")
    assert isinstance(info.value, PermissionError)


async def test_not_found_resource_and_node(bq: BisqueSession) -> None:
    with pytest.raises(NotFoundError, match="404") as info:
        await bq.table.info("00-doesNotExist", "a")
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(NotFoundError, match="Phasesz"):
        await bq.table.load_array(samples.SEED_UNIQ, samples.SEED_PATH + "z")


async def test_bad_request(bq: BisqueSession) -> None:
    url = bq.table.base_url + "vol/volume/1;x/format:hdf"
    with pytest.raises(aiobisque.BadRequestError, match="400") as info:
        await bq.get_document(url, "a malformed range")
    assert isinstance(info.value, ValueError)


async def test_root_that_is_not_bisque(server: TableServer) -> None:
    with pytest.raises(NotFoundError, match="services"):
        async with BisqueSession(server.root + "/nothing-here", auth=USER):
            pass
    with pytest.raises(UsageError, match="http"):
        BisqueSession("bisque.example.org")
    with pytest.raises(aiobisque.InsecureTransportError):
        BisqueSession("http://bisque.example.org", auth=USER)


async def test_unknown_option_and_bad_values() -> None:
    with pytest.raises(UsageError, match="unknown option"):
        Config().replace(concurency=3)
    with pytest.raises(UsageError, match="concurrency"):
        Config(concurrency=0)


async def test_services_are_used_not_root_paths(data_dir: Path) -> None:
    async with run_server(data_dir, users={"alice": "wonderland"}, service_prefix="/proxy/x",
                          table_service="tables") as srv:
        async with BisqueSession(srv.root, auth=USER) as bq:
            assert bq.table.base_url == f"{srv.root}/proxy/x/tables/"
            got = await bq.service("table").load_array("vol", "stack/labels")
    np.testing.assert_array_equal(got, expected(data_dir, "vol", "stack/labels"))


@pytest.mark.parametrize(
    ("root", "message"),
    [
        ("http://alice:s3cr3t-Pa55@127.0.0.1:1", "must not contain credentials"),
        ("http://", "names no host"),
        ("127.0.0.1:8080", "http"),
        ("https://h.org/x?token=abc", "query"),
    ],
)
def test_malformed_roots_are_refused_early(root: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as info:
        BisqueSession(root)
    assert "s3cr3t" not in str(info.value) and "abc" not in str(info.value)


async def test_rejected_mex_token_message(server: TableServer) -> None:
    with pytest.raises(AuthenticationError, match="Mex token") as info:
        async with BisqueSession(server.root, auth=MexToken("nope")):
            pass
    assert "password" not in str(info.value)


async def test_info_repr_is_short(bq: BisqueSession) -> None:
    info = await bq.table.info("dtypes", "d4")
    assert info.kind == "matrix" and info.children == ()
    assert len(repr(info)) < 200 and "shape=" in repr(info)


async def test_out_buffer_must_hold_every_value(bq: BisqueSession) -> None:
    arr = await bq.table.open("vol", "volume")
    for narrow in (np.float16, np.int32, np.int64):
        with pytest.raises(UsageError, match="without losing values"):
            await arr.read(np.s_[0], out=np.zeros((30, 20), narrow))


async def test_per_call_options_lower_session_limits_or_are_refused(
        bq: BisqueSession, server: TableServer) -> None:
    arr = await bq.table.open("vol", "volume")
    with pytest.raises(UsageError, match="whole session"):
        await arr.read(adaptive=False)
    with pytest.raises(UsageError, match=f"concurrency={bq.config.concurrency + 1} for one "
                       "call exceeds the session"):
        await arr.read(concurrency=bq.config.concurrency + 1)
    # the same rule for the byte budget (it used to be accepted and ignored)
    with pytest.raises(UsageError, match=r"inflight_bytes=.* exceeds the session's"):
        await arr.read(inflight_bytes=bq.config.inflight_bytes + 1)
    server.faults = FaultPlan(latency=0.02)
    server.stats.reset()
    # bodies held whole (a flipped selection is buffered, then reordered), one request's
    # bytes at a time for this call: one request in flight
    got = await arr.read(np.s_[::-1], request_bytes=2400, inflight_bytes=2400, concurrency=8)
    assert server.stats.peak_in_flight == 1
    assert got.shape == arr.shape
    # bodies streamed into the result hold no memory: the byte budget does not bind them,
    # the call's concurrency does
    server.stats.reset()
    await arr.read(request_bytes=2400, inflight_bytes=2400, concurrency=3)
    assert server.stats.peak_in_flight == 3


async def test_retry_policy_statuses_decide(bq: BisqueSession, server: TableServer) -> None:
    from aiobisque import DownloadError, RetryPolicy

    server.faults = FaultPlan(error_rate=1.0, error_statuses=(500,))
    only_503 = RetryPolicy(statuses=frozenset({503}), backoff_initial=0.001, backoff_max=0.002)
    with pytest.raises(DownloadError, match="500"):
        await bq.table.load_array("vol", "stack/labels", retry=only_503, concurrency=1)
    assert server.stats.requests["data"] == 1  # 500 is not in the policy: no retry
    server.faults = FaultPlan(fail_first=2, error_statuses=(409,))
    with_409 = RetryPolicy(statuses=frozenset({409, 503}), backoff_initial=0.001,
                           backoff_max=0.002)
    stats = DownloadStats()
    await bq.table.load_array("vol", "stack/labels", retry=with_409, stats=stats)
    assert stats.retries == 2


async def test_login_providers(bq: BisqueSession) -> None:
    assert await bq.login_providers() == ["local"]


async def test_progress_moves_before_any_request_is_done(bq: BisqueSession,
                                                         server: TableServer) -> None:
    # a slow link: every request is in flight long before the first one finishes
    server.faults = FaultPlan(latency=0.1, bandwidth=400_000)
    seen: list[Progress] = []
    await bq.table.load_array("vol", "volume", request_bytes=24_000, progress=seen.append)
    assert any(p.active_requests > 1 and p.done_requests == 0 for p in seen)
    partial = [p for p in seen if p.done_requests == 0 and p.done_bytes > 0]
    assert partial, "bytes must move while requests are in flight"
    assert seen[-1].active_requests == 0 and seen[-1].done_requests == seen[-1].total_requests


def test_progress_line_names_requests_in_flight_and_done() -> None:
    from aiobisque.cli.display import requests_text

    assert requests_text(Progress(5, 10, 1, 4, 1, 3)) == "3 in flight, 1/4 requests done, 1 retry"


async def test_identical_info_questions_in_flight_share_one_request(
        server: TableServer, bq: BisqueSession) -> None:
    server.faults = FaultPlan(latency=0.05)
    server.stats.reset()
    arrays = await asyncio.gather(*(bq.table.load_array("vol", "volume", [slice(i, i + 1)])
                                    for i in range(8)))
    assert server.stats.requests["info"] == 1  # one answer for the eight callers
    assert all(a.shape[0] == 1 for a in arrays)
    info = await bq.table.info("vol", "volume")  # nothing is kept once it has arrived
    assert server.stats.requests["info"] == 2
    # one caller giving up does not take the answer from the others; the last one does
    first = asyncio.create_task(bq.table.info("vol", "volume"))
    second = asyncio.create_task(bq.table.info("vol", "volume"))
    await asyncio.sleep(0.01)
    first.cancel()
    assert (await second).shape == info.shape
    assert first.cancelled() and server.stats.requests["info"] == 3
    alone = asyncio.create_task(bq.table.info("vol", "volume"))
    await asyncio.sleep(0.01)
    alone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await alone
    await asyncio.sleep(0)
    assert bq.table._asking == {}


async def test_a_caller_arriving_as_the_last_one_gives_up_still_gets_the_answer(
        server: TableServer, bq: BisqueSession) -> None:
    server.faults = FaultPlan(latency=0.05)
    alone = asyncio.create_task(bq.table.info("vol", "volume"))
    await asyncio.sleep(0.01)
    alone.cancel()  # the shared request is cancelled once alone has gone...
    late = asyncio.create_task(bq.table.info("vol", "volume"))  # ...as late asks
    info = await late  # its own request, not the cancelled one's CancelledError
    assert info.kind == "matrix"
    assert alone.cancelled()
    await asyncio.sleep(0)
    assert bq.table._asking == {}
