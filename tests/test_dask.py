"""The dask adapter: blocks read by aiobisque inside dask threads and worker processes."""

from __future__ import annotations

import base64
import logging
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest
from dask.base import tokenize
from distributed import Client, LocalCluster

from aiobisque import (
    AuthenticationError,
    DownloadError,
    MexToken,
    NotFoundError,
    UsageError,
)
from aiobisque.dask import BlockReader, Credentials, close_sessions, from_bisque
from aiobisque.server import FaultPlan, TableServer
from tests.conftest import FAST_RETRY, USER, expected

PASSWORD = USER[1]
BASIC_TOKEN = base64.b64encode(f"{USER[0]}:{USER[1]}".encode()).decode()
SECRETS = (PASSWORD, BASIC_TOKEN)
#: fast retries: the default backoff waits for seconds
OPTIONS: dict[str, Any] = {"retry": FAST_RETRY}


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


@pytest.fixture
def srv(thread_server: TableServer) -> Iterator[TableServer]:
    """The module's threaded server with clean counters and no faults."""
    thread_server.faults = FaultPlan()
    thread_server.stats.reset()
    yield thread_server
    thread_server.faults = FaultPlan()


@pytest.fixture(autouse=True, scope="module")
def _close_local_sessions() -> Iterator[None]:
    # the sessions of this (the test) process belong to the module's server: close them
    # with it rather than at interpreter exit
    yield
    close_sessions()


def reader_of(x: Any) -> BlockReader:
    """The BlockReader inside the first task of ``x``'s graph."""
    arg = next(iter(x.__dask_graph__().values())).args[0]
    reader = getattr(arg, "value", arg)  # dask wraps literal arguments in a DataNode
    assert isinstance(reader, BlockReader)
    return reader


def srv_folder(srv: TableServer) -> Path:
    return Path(srv.folder)


def data_ranges(srv: TableServer) -> list[str | None]:
    return sorted(r.range for r in srv.stats.data_log)


# --- credentials ------------------------------------------------------------------------


def test_credentials_hide_the_password_and_pickle() -> None:
    creds = Credentials(*USER)
    for text in (repr(creds), str(creds), f"{creds}", repr([creds])):
        assert "Credentials(user='alice', password=***)" in text
        assert_no_secret(text)
    again = pickle.loads(pickle.dumps(creds))
    assert again == creds and again.as_auth() == USER
    assert hash(again) == hash(creds)
    # dask tokens (hence task keys) are made without the secret
    assert tokenize(creds) == tokenize(Credentials(USER[0], "something else"))
    with pytest.raises(UsageError, match="both str"):
        Credentials("alice", None)  # type: ignore[arg-type]


# --- graph building and chunks ----------------------------------------------------------


def test_info_once_and_graph_reprs_hide_the_secret(srv: TableServer) -> None:
    x = from_bisque(srv.root, "vol", "volume", auth=USER, chunks="10 KiB", **OPTIONS)
    assert x.shape == (40, 30, 20) and x.dtype == np.float32
    assert srv.stats.requests["info"] == 1 and srv.stats.requests["data"] == 0
    graph = x.__dask_graph__()
    texts = [repr(x), str(x.dask), repr(x.dask), repr(dict(graph)), repr(graph.layers),
             repr(x.__dask_keys__()), repr(list(graph.values())), x.name]
    texts += [repr(task.args) for task in graph.values()]
    for text in texts:
        assert_no_secret(text)
    reader = reader_of(x)
    assert isinstance(reader, BlockReader)
    assert "Credentials(user='alice', password=***)" in repr(reader)
    # the name is deterministic and independent of the password
    y = from_bisque(srv.root, "vol", "volume", auth=USER, chunks="10 KiB", **OPTIONS)
    assert y.name == x.name and x.name.startswith("bisque-")


def test_byte_size_chunks_are_whole_rows(srv: TableServer) -> None:
    # a 30 x 20 float32 row is 2400 bytes: 10 KiB holds 4 of them
    x = from_bisque(srv.root, "vol", "volume", auth=USER, chunks="10 KiB", **OPTIONS)
    assert x.chunks == ((4,) * 10, (30,), (20,))
    # a row larger than the limit: split the next dimension, keep the last whole
    y = from_bisque(srv.root, "vol", "volume", auth=USER, chunks="1 KiB", **OPTIONS)
    assert set(y.chunks[0]) == {1} and y.chunks[2] == (20,)
    assert max(y.chunks[1]) * 20 * 4 <= 1024
    # small arrays are one block with "auto"
    z = from_bisque(srv.root, "vol", "volume", auth=USER, **OPTIONS)
    assert z.chunks == ((40,), (30,), (20,))


@pytest.mark.parametrize(
    ("chunks", "expected_chunks"),
    [
        (7, ((7,) * 7 + (1,), (7,) * 5 + (5,))),
        ((25, 40), ((25, 25), (40,))),
        ({0: 10}, ((10,) * 5, (40,))),
        (((20, 30), (40,)), ((20, 30), (40,))),
    ],
)
def test_dask_chunk_forms(srv: TableServer, chunks: Any, expected_chunks: Any) -> None:
    x = from_bisque(srv.root, "chunked", "c", auth=USER, chunks=chunks, **OPTIONS)
    assert x.chunks == expected_chunks
    want = expected(srv_folder(srv), "chunked", "c")
    assert np.array_equal(x.compute(scheduler="threads"), want)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"chunks": "lots"}, UsageError, "not a byte size"),
        ({"chunks": "2 B"}, UsageError, "smaller than one element"),
        ({"chunks": (3, 3, 3, 3)}, UsageError, "does not fit"),
        ({"auth": ["alice", "wonderland"]}, UsageError, "auth must be"),
        ({"concurency": 3}, UsageError, "unknown option"),
        ({"auth": ("alice", "wrong")}, AuthenticationError, "rejected"),
    ],
)
def test_bad_arguments_are_named(srv: TableServer, kwargs: dict[str, Any], error: type,
                                 match: str) -> None:
    kwargs = {"auth": USER, **OPTIONS, **kwargs}
    with pytest.raises(error, match=match) as info:
        from_bisque(srv.root, "vol", "volume", **kwargs)
    assert_no_secret(str(info.value))
    assert srv.stats.requests["data"] == 0


def test_groups_and_missing_paths_fail_at_build_time(srv: TableServer) -> None:
    with pytest.raises(NotFoundError, match="is a group"):
        from_bisque(srv.root, "vol", "stack", auth=USER, **OPTIONS)
    with pytest.raises(NotFoundError):
        from_bisque(srv.root, "vol", "no/such/array", auth=USER, **OPTIONS)
    with pytest.raises(UsageError, match="root must be"):
        from_bisque("bisque.example.org", "vol", "volume", auth=USER)


# --- the threaded scheduler (no cluster) ------------------------------------------------


def test_readme_store_to_zarr(srv: TableServer, tmp_path: Path) -> None:
    import zarr  # the dask (and test) extra installs it
    want = expected(srv_folder(srv), "vol", "volume")
    x = from_bisque(srv.root, "vol", "volume", auth=USER, chunks="10 KiB", **OPTIONS)
    with dask.config.set(scheduler="threads"):
        x.to_zarr(str(tmp_path / "volume.zarr"))
    stored = zarr.open(str(tmp_path / "volume.zarr"), mode="r")
    assert np.array_equal(stored[...], want)


def test_threaded_full_array_slices_and_reductions(srv: TableServer) -> None:
    want = expected(srv_folder(srv), "vol", "volume")
    x = from_bisque(srv.root, "vol", "volume", auth=USER, chunks="10 KiB", **OPTIONS)
    with dask.config.set(scheduler="threads", num_workers=4):
        srv.stats.reset()
        assert np.array_equal(x.compute(), want)
        assert srv.stats.requests["data"] == 10
        assert srv.stats.retries == 0
        # a slice inside one block is fused into the read: one request, just those rows
        srv.stats.reset()
        assert np.array_equal(x[5:7, 3].compute(), want[5:7, 3])
        assert data_ranges(srv) == ["5;6,3,0;19"]
        # a slice across blocks reads only the blocks it touches, each cut to the slice
        srv.stats.reset()
        assert np.array_equal(x[6:13].compute(), want[6:13])
        assert data_ranges(srv) == ["12,0;29,0;19", "6;7,0;29,0;19", "8;11,0;29,0;19"]
        for sel in (np.s_[::7, ::-3], np.s_[[1, 3, 30]], np.s_[:, [2, 5], 1], np.s_[..., -1],
                    np.s_[None, 39]):
            assert np.array_equal(x[sel].compute(), want[sel]), sel
        assert x.sum(axis=(1, 2)).compute() == pytest.approx(want.sum(axis=(1, 2)), rel=1e-5)
        assert float(x.mean().compute()) == pytest.approx(float(want.mean()), rel=1e-5)


def test_big_endian_bytes_and_anonymous(srv: TableServer) -> None:
    for i, (uniq, path) in enumerate([("dtypes", "d15"), ("dtypes", "d19"), ("public", "a")]):
        auth = None if uniq == "public" else USER
        x = from_bisque(srv.root, uniq, path, auth=auth, chunks=2, **OPTIONS)
        got = x.compute(scheduler="sync")
        want = expected(srv_folder(srv), uniq, path)
        # info names dtypes without byte order: blocks come back in native order
        assert got.dtype == want.dtype.newbyteorder("=") and np.array_equal(got, want), i


def test_mex_token_stays_hidden(srv: TableServer) -> None:
    token = MexToken("sekrit-token-123", user="alice")
    with pytest.raises(AuthenticationError) as info:
        from_bisque(srv.root, "vol", "volume", auth=token, **OPTIONS)
    assert "sekrit" not in str(info.value)


def test_block_reader_serves_fancy_indices_from_one_box(srv: TableServer) -> None:
    want = expected(srv_folder(srv), "vol", "volume")
    x = from_bisque(srv.root, "vol", "volume", auth=USER, **OPTIONS)
    reader = reader_of(x)
    cases = [
        np.s_[[3, 1, 7]],
        np.s_[2, [4, -1], 5:9],
        np.s_[[1, 2], :, [0, 19]],
        np.s_[None, 5:7, np.array([True] * 15 + [False] * 15)],
        np.s_[..., np.array([], dtype=int)],
        np.s_[3, 4, 5],
        np.s_[[1, 2], -1],
    ]
    for sel in cases:
        srv.stats.reset()
        got = reader[sel]
        assert got.shape == want[sel].shape and np.array_equal(got, want[sel]), sel
        assert srv.stats.requests["data"] <= 1
    srv.stats.reset()
    reader[np.s_[[2, 5]]]
    assert data_ranges(srv) == ["2;5,0;29,0;19"]
    with pytest.raises(IndexError, match="out of bounds"):
        reader[np.s_[[0, 40]]]
    with pytest.raises(IndexError, match="scalar boolean"):
        reader[np.s_[[0, 1], True]]
    with pytest.raises(IndexError, match="boolean index"):
        reader[np.s_[np.array([True, False])]]
    assert pickle.loads(pickle.dumps(reader)).shape == reader.shape


# --- a LocalCluster with worker processes -----------------------------------------------


@pytest.fixture(scope="module")
def client(thread_server: TableServer) -> Iterator[Client]:
    """Two worker processes of two threads each, reading from the module's server."""
    with LocalCluster(
        n_workers=2,
        threads_per_worker=2,
        processes=True,
        # dashboard_address=None would still bind the scheduler's HTTP server to
        # 0.0.0.0:8787 and warn (an error here) when another cluster on the machine has it
        dashboard_address="127.0.0.1:0",
        scheduler_kwargs={"dashboard": False},
        worker_dashboard_address="127.0.0.1:0",
    ) as cluster, Client(cluster) as client:
        # route aiobisque's own log lines (retries) into the worker logs the tests scan
        client.run(_log_aiobisque_into_worker_logs)
        yield client
        client.run(close_sessions)


def _log_aiobisque_into_worker_logs(dask_worker: Any) -> None:
    logger = logging.getLogger("aiobisque")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(dask_worker._deque_handler)


def worker_log_text(client: Client) -> str:
    logs = client.get_worker_logs()
    return "\n".join(msg for lines in logs.values() for _level, msg in lines)


@pytest.mark.slow
@pytest.mark.timeout(90)
class TestCluster:
    """Blocks read in worker processes; the cluster starts once, for the whole module."""

    def test_full_array_slices_reductions(self, srv: TableServer, client: Client) -> None:
        want = expected(srv_folder(srv), "vol", "volume")
        x = from_bisque(srv.root, "vol", "volume", auth=USER, chunks="10 KiB", **OPTIONS)
        srv.stats.reset()
        got = client.compute(x).result()
        assert got.dtype == want.dtype and np.array_equal(got, want)
        assert srv.stats.requests["data"] == 10 and srv.stats.retries == 0
        srv.stats.reset()
        assert np.array_equal(x[17, 2:5].compute(), want[17, 2:5])
        assert data_ranges(srv) == ["17,2;4,0;19"]
        srv.stats.reset()
        means = x.mean(axis=(1, 2)).compute()
        assert np.allclose(means, want.mean(axis=(1, 2)), rtol=1e-6)
        assert x[:, ::2].std().compute() == pytest.approx(float(want[:, ::2].std()), rel=1e-5)
        assert srv.stats.requests["data"] == 20  # each block once per computation

    def test_one_session_per_worker_process_shares_its_limit(
        self, srv: TableServer, client: Client
    ) -> None:
        # concurrency=2 with 2 threads per worker: shared, at most 2 x 2 workers in flight;
        # multiplied (a session per thread or task), up to 2 x 4
        opts = {**OPTIONS, "concurrency": 2, "min_concurrency": 1, "request_bytes": 1024}
        x = from_bisque(srv.root, "vol", "volume", auth=USER, chunks="24 KiB", **opts)
        want = expected(srv_folder(srv), "vol", "volume")
        srv.faults = FaultPlan(latency=0.01)
        srv.stats.reset()
        assert np.array_equal(client.compute(x).result(), want)
        # each worker process logged in at most once, however many blocks it read
        assert 1 <= srv.stats.requests["session"] <= 2
        assert srv.stats.peak_in_flight <= 4
        srv.stats.reset()
        client.compute(x[:5]).result()
        assert srv.stats.requests["session"] == 0  # sessions reused across computations

    def test_retry_inside_a_worker(self, srv: TableServer, client: Client) -> None:
        want = expected(srv_folder(srv), "vol", "volume")
        x = from_bisque(srv.root, "vol", "volume", auth=USER, chunks="10 KiB", **OPTIONS)
        srv.faults = FaultPlan(fail_first=2, error_statuses=(503,))
        srv.stats.reset()
        got = client.compute(x).result()
        assert np.array_equal(got, want)
        assert srv.stats.statuses[503] == 2 and srv.stats.faults["error"] == 2
        assert srv.stats.retries == 2 and srv.stats.requests["data"] == 12
        log = worker_log_text(client)
        assert "retrying in" in log  # the retries happened in the workers' sessions
        assert_no_secret(log)

    def test_failed_block_reports_without_the_secret(self, srv: TableServer, client: Client) -> None:
        opts = {**OPTIONS, "retry": FAST_RETRY.__class__(max_attempts=2, backoff_initial=0.01,
                                                         backoff_max=0.02)}
        x = from_bisque(srv.root, "vol", "volume", auth=USER, chunks="10 KiB", **opts)
        srv.faults = FaultPlan(fail_first=10_000, error_statuses=(500,))
        with pytest.raises(DownloadError, match="HTTP 500") as info:
            client.compute(x[:4]).result()
        assert_no_secret(str(info.value))
        log = worker_log_text(client)
        assert "Compute Failed" in log and "HTTP 500" in log
        assert_no_secret(log)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_scaling_benchmark_runs_bit_exact(tmp_path: Path) -> None:
    from benchmarks import dask_scaling

    output = tmp_path / "DASK_RESULTS.md"
    status = dask_scaling.main([
        "--link", "Loopback", "--mib", "2", "--chunks", "512 KiB", "--workers", "1",
        "--repeat", "1", "--cache-dir", str(tmp_path / "cache"), "--output", str(output),
    ])
    assert status == 0
    text = output.read_text()
    assert "| Loopback (127.0.0.1, no caps) | 2 MiB | 1 |" in text and "| NO |" not in text
