"""The synchronous API: same results and errors as the async one, from any thread or loop."""

from __future__ import annotations

import asyncio
import gc
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import aiobisque
from aiobisque import DownloadStats, Progress, Session
from aiobisque._loop import run_sync, shared_loop
from aiobisque.server import FaultPlan, TableServer, samples

USER = ("alice", "wonderland")
SLOW = ("slow", "volume")
SLOW_SHAPE = (64, 64, 64)  # 1 MiB of float32: 64 requests of 16 KiB


def SAMPLES(folder: Path) -> None:
    samples.write_seed(folder)
    samples.write_array(folder, "vol", "volume", (40, 30, 20), dtype="float32", seed=1)
    samples.write_array(folder, *SLOW, SLOW_SHAPE, dtype="float32", seed=2)


SERVER_OPTIONS = {"users": {"alice": "wonderland"}}


@pytest.fixture
def session(thread_server: TableServer) -> Iterator[Session]:
    with Session(thread_server.root, USER, retry=aiobisque.RetryPolicy(backoff_initial=0.01,
                                                                backoff_max=0.05)) as bq:
        yield bq


def volume(folder: Path) -> np.ndarray:
    return samples.expected(folder / "vol.h5", "volume")


async def _other_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]


def test_load_array_in_one_call(thread_server: TableServer, folder: Path) -> None:
    ms = aiobisque.load_array(thread_server.root, samples.SEED_UNIQ, samples.SEED_PATH, auth=USER)
    assert ms.shape == (5, 5, 5, 1)
    np.testing.assert_array_equal(
        ms, samples.expected(folder / f"{samples.SEED_UNIQ}.dream3d", samples.SEED_PATH))
    part = aiobisque.load_array(thread_server.root, "vol", "volume", [2, slice(5, 9)], auth=USER,
                                concurrency=2)
    np.testing.assert_array_equal(part, volume(folder)[2:3, 5:9])


def test_session_twins_the_async_api(session: Session, folder: Path) -> None:
    expected = volume(folder)
    assert session.user == "alice"
    assert "table" in session.services
    assert repr(session).startswith("<Session ")
    info = session.info("vol", "volume")
    assert info.shape == (40, 30, 20)
    assert session.table.info("vol", "volume") == session.service("table").info("vol", "volume")
    np.testing.assert_array_equal(session.load_array("vol", "volume", [1]), expected[1:2])

    arr = session.open("vol", "volume")
    assert (arr.shape, arr.dtype, arr.ndim, arr.size, arr.nbytes, len(arr)) == (
        (40, 30, 20), np.dtype("float32"), 3, 24000, 96000, 40)
    assert "SyncRemoteArray" in repr(arr)
    selections: list[Any] = [np.s_[3], np.s_[-1, ::3], np.s_[..., 4], np.s_[1:30:7, None, 2:5],
                             np.s_[:]]
    for sel in selections:
        np.testing.assert_array_equal(arr[sel], expected[sel])
    np.testing.assert_array_equal(np.asarray(arr), expected)

    out = np.zeros((30, 20), dtype="float64")
    stats = DownloadStats()
    seen: list[Progress] = []
    got = arr.read(np.s_[7], out=out, stats=stats, progress=seen.append, request_bytes=512)
    assert got is out
    np.testing.assert_array_equal(out, expected[7])
    assert stats.complete and stats.requests > 1
    assert seen and seen[-1].done_bytes == seen[-1].total_bytes


def test_same_errors(thread_server: TableServer, session: Session) -> None:
    with pytest.raises(aiobisque.AuthenticationError, match="rejected"):
        Session(thread_server.root, ("alice", "not-the-password"))
    with pytest.raises(aiobisque.NotFoundError):
        session.load_array("no-such-uniq", "volume")
    with pytest.raises(aiobisque.SelectionError):
        session.open("vol", "volume")[40]
    with pytest.raises(aiobisque.UsageError, match="unknown option"):
        session.info("vol", "volume", no_such_option=1)
    with pytest.raises(aiobisque.UsageError):
        aiobisque.load_array("ftp://nowhere", "vol", "volume")


def test_close_and_reuse(thread_server: TableServer) -> None:
    bq = Session(thread_server.root, USER)  # without 'with'
    arr = bq.open("vol", "volume")
    bq.close()
    bq.close()  # idempotent
    assert repr(bq).endswith("closed>")
    with pytest.raises(aiobisque.BisqueError, match="not open"):
        arr[0]


def test_forgotten_session_is_closed_when_collected(thread_server: TableServer) -> None:
    bq = Session(thread_server.root, USER)
    inner = bq._aio
    del bq
    gc.collect()
    assert repr(inner).endswith("closed>")


async def test_inside_a_running_event_loop(thread_server: TableServer, folder: Path) -> None:
    # as in Jupyter: plain calls from a coroutine, no nest_asyncio
    running = asyncio.get_running_loop()
    assert running is not shared_loop.loop
    with Session(thread_server.root, USER) as bq:
        np.testing.assert_array_equal(bq.open("vol", "volume")[5], volume(folder)[5])
    ms = aiobisque.load_array(thread_server.root, samples.SEED_UNIQ, samples.SEED_PATH, auth=USER)
    assert ms.shape == (5, 5, 5, 1)


def test_from_several_threads(session: Session, folder: Path) -> None:
    expected = volume(folder)
    arr = session.open("vol", "volume")
    with ThreadPoolExecutor(max_workers=4) as pool:
        planes = list(pool.map(lambda i: arr[i], range(12)))
    for i, plane in enumerate(planes):
        np.testing.assert_array_equal(plane, expected[i])


def test_refuses_to_run_on_its_own_loop(session: Session) -> None:
    async def nested() -> Any:
        return session.info("vol", "volume")

    with pytest.raises(RuntimeError, match="own event loop"):
        run_sync(nested())

    errors: list[BaseException] = []

    def callback(progress: Progress) -> None:
        try:
            session.info("vol", "volume")
        except RuntimeError as exc:
            errors.append(exc)

    session.load_array("vol", "volume", [0], progress=callback)
    assert errors and "progress callback" in str(errors[0])


def test_the_loop_is_asyncio_unless_uvloop_is_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    from aiobisque._loop import LOOP_ENV, LoopThread, new_loop
    from aiobisque.errors import UsageError

    # asyncio by default: measured cheaper in CPU than uvloop (benchmarks/variants.py)
    monkeypatch.delenv(LOOP_ENV, raising=False)
    default = LoopThread("test-default")
    assert type(default.loop).__module__.startswith("asyncio")
    _shut(default)
    monkeypatch.setenv(LOOP_ENV, "bogus")
    with pytest.raises(UsageError, match="expected 'asyncio' or 'uvloop'"):
        new_loop()
    # the synchronous API refuses it too, and closes the coroutine it will not run
    never = asyncio.sleep(0)
    with pytest.raises(UsageError, match="expected 'asyncio' or 'uvloop'"):
        LoopThread("test-bogus").run(never)
    assert never.cr_frame is None  # closed: no "coroutine was never awaited" warning
    uvloop = pytest.importorskip("uvloop")
    monkeypatch.setenv(LOOP_ENV, "uvloop")
    private = LoopThread("test-uvloop")
    assert isinstance(private.loop, uvloop.Loop)
    assert private.run(asyncio.sleep(0, "ran")) == "ran"
    _shut(private)


def _shut(thread: Any) -> None:
    loop = thread.loop
    loop.call_soon_threadsafe(loop.stop)
    thread._thread.join(timeout=5)
    loop.close()


@pytest.fixture
def default_sigint() -> Iterator[None]:
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_cancels_the_download_cleanly(
    thread_server: TableServer, session: Session, folder: Path, default_sigint: None
) -> None:
    main = threading.main_thread()
    assert threading.current_thread() is main
    thread_server.faults = FaultPlan(latency=0.2)
    thread_server.stats.reset()
    requests_planned = int(np.prod(SLOW_SHAPE)) * 4 // 16384

    def press_ctrl_c() -> None:
        deadline = time.monotonic() + 10
        while thread_server.stats.requests["data"] < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert main.ident is not None
        signal.pthread_kill(main.ident, signal.SIGINT)

    presser = threading.Thread(target=press_ctrl_c)
    stats = DownloadStats()
    try:
        presser.start()
        with pytest.raises(KeyboardInterrupt):
            session.load_array(*SLOW, request_bytes=16384, concurrency=2, stats=stats)
        presser.join(10)
        # the download had finished cleaning up (its finally clause ran) before the raise
        assert stats.seconds > 0 and not stats.complete
        # nothing left on the private loop, nothing in flight on the server
        assert run_sync(_other_tasks()) == []
        deadline = time.monotonic() + 10
        while thread_server.stats.in_flight and time.monotonic() < deadline:
            time.sleep(0.02)
        assert thread_server.stats.in_flight == 0
        served = thread_server.stats.requests["data"]
        assert 3 <= served < requests_planned  # stopped part way
        time.sleep(0.5)  # longer than one request's latency
        assert thread_server.stats.requests["data"] == served  # and no request came later
    finally:
        thread_server.faults = FaultPlan()
    # the session is still usable
    np.testing.assert_array_equal(session.open("vol", "volume")[0], volume(folder)[0])
