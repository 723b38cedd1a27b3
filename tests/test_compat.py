"""aiobisque.compat: bqapi's table workflow, compared with the real bqapi on the same server."""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bqapi
import h5py
import numpy as np
import pytest

import aiobisque
from aiobisque.compat import BQApiError, BQCommError, BQSession
from aiobisque.server import TableServer, samples

USER, PASSWORD = "alice", "wonderland"
REPO = Path(__file__).resolve().parents[1]

#: the seed's example, unchanged apart from its import line
SEED_SCRIPT = textwrap.dedent("""
    import os
    import sys

    from aiobisque.compat import BQSession


    def get_table(user, pwd, root, uniq, path):
        bq = BQSession().init_local(user, pwd, bisque_root=root)
        table_service = bq.service('table')
        ms = table_service.load_array(uniq, path)
        print('Shape of table:', ms.shape)
        bq.close()


    if __name__ == '__main__':
        # credentials come from the environment, never from argv
        get_table(os.environ['BQ_USER'], os.environ['BQ_PASSWORD'], *sys.argv[1:])
""")


def SAMPLES(folder: Path) -> None:
    samples.write_seed(folder)
    samples.write_array(folder, "vol", "volumes/big endian", (6, 7, 8), dtype=">f8", seed=2)
    samples.write_array(folder, "vol", "flat", (13,), dtype="uint16", seed=3)
    numbers = np.array([(1, 0.5), (2, 1.5), (3, 2.5), (4, 3.5)], dtype=[("n", "<i4"), ("v", "<f8")])
    with h5py.File(folder / "tab.h5", "w") as h5:
        h5["numbers"] = numbers
    samples.write_table(folder, "tab", "labelled", nrows=4)


SERVER_OPTIONS = {"users": {USER: PASSWORD}, "mex_tokens": {"TOKEN123": USER}}


@pytest.fixture(scope="module")
def compat(thread_server: TableServer) -> Iterator[BQSession]:
    bq = BQSession().init_local(USER, PASSWORD, bisque_root=thread_server.root)
    assert bq is not None
    yield bq
    bq.close()


@pytest.fixture(scope="module")
def official(thread_server: TableServer) -> Iterator[Any]:
    bq = bqapi.BQSession().init_local(USER, PASSWORD, bisque_root=thread_server.root,
                                      create_mex=False)
    assert bq is not None
    yield bq
    bq.c.close()  # the underlying requests session


def test_seed_example_runs_unchanged(thread_server: TableServer, tmp_path: Path) -> None:
    script = tmp_path / "get_table.py"
    script.write_text(SEED_SCRIPT)
    env = {**os.environ, "BQ_USER": USER, "BQ_PASSWORD": PASSWORD,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                       os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, str(script), thread_server.root, samples.SEED_UNIQ, samples.SEED_PATH],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "Shape of table: (5, 5, 5, 1)\n"
    assert done.stderr == ""


CASES = [
    (samples.SEED_UNIQ, samples.SEED_PATH, []),
    (samples.SEED_UNIQ, samples.SEED_PATH, [1]),  # an int keeps a length-1 dimension
    (samples.SEED_UNIQ, samples.SEED_PATH, [0, 4, 2, 0]),
    (samples.SEED_UNIQ, samples.SEED_PATH, [slice(1, 4), 2]),
    (samples.SEED_UNIQ, samples.SEED_PATH, [slice(None, 2), slice(3, None), 0]),
    ("vol", "volumes/big endian", [slice(2, 5)]),
    ("vol", "volumes/big endian", [5, slice(0, 7), slice(7, 8)]),
    ("vol", "/flat/", [slice(3, 9)]),
    ("vol", "flat", [12]),
]


@pytest.mark.parametrize(("uniq", "path", "slices"), CASES)
def test_same_result_as_bqapi(compat: BQSession, official: Any, uniq: str, path: str,
                              slices: list[Any]) -> None:
    ours = compat.service("table").load_array(uniq, path, slices)  # type: ignore[union-attr]
    theirs = official.service("table").load_array(uniq, path, slices=slices)
    assert ours.shape == theirs.shape
    assert ours.dtype == theirs.dtype
    np.testing.assert_array_equal(ours, theirs)


def test_resource_url_and_keyword_slices(compat: BQSession, official: Any,
                                         thread_server: TableServer) -> None:
    url = f"{thread_server.root}/data_service/{samples.SEED_UNIQ}"
    ours = compat.service("table").load_array(  # type: ignore[union-attr]
        url, samples.SEED_PATH, slices=[3])
    theirs = official.service("table").load_array(url, samples.SEED_PATH, slices=[3])
    assert ours.shape == theirs.shape == (1, 5, 5, 1)
    np.testing.assert_array_equal(ours, theirs)


def test_session_attributes_like_bqapi(compat: BQSession, official: Any,
                                       thread_server: TableServer) -> None:
    assert compat.bisque_root == official.bisque_root == thread_server.root
    assert set(compat.service_map) == set(official.service_map)
    assert compat.mex is None
    # bqapi answers None for a service the server does not list
    assert compat.service("no_such_service") is None
    assert official.service("no_such_service") is None
    with pytest.raises(BQApiError, match="only the table service"):
        compat.service("data_service")


def test_wrong_password_returns_none_like_bqapi(thread_server: TableServer,
                                                caplog: pytest.LogCaptureFixture) -> None:
    theirs = bqapi.BQSession()
    try:
        assert theirs.init_local(USER, "not-the-password", bisque_root=thread_server.root,
                                 create_mex=False) is None
    finally:
        theirs.c.close()
    with caplog.at_level(logging.ERROR, logger="aiobisque.compat"):
        assert BQSession().init_local(USER, "not-the-password",
                                      bisque_root=thread_server.root) is None
    assert "rejected" in caplog.text
    assert "not-the-password" not in caplog.text


def test_wrong_password_can_raise(thread_server: TableServer) -> None:
    bq = BQSession(raise_on_login_failure=True)
    with pytest.raises(BQCommError) as info:
        bq.init_local(USER, "not-the-password", bisque_root=thread_server.root)
    assert isinstance(info.value, aiobisque.AuthenticationError)
    assert isinstance(info.value.__cause__, aiobisque.AuthenticationError)
    assert "not-the-password" not in str(info.value)
    assert info.value.response.status_code is None  # rejected by an empty session document
    bq.close()


def test_errors_are_bqcommerror_and_aiobisque_errors(compat: BQSession) -> None:
    table = compat.service("table")
    assert table is not None
    with pytest.raises(BQCommError) as info:
        table.load_array("no-such-uniq", samples.SEED_PATH)
    err = info.value
    assert isinstance(err, aiobisque.NotFoundError)
    assert isinstance(err, FileNotFoundError)
    assert isinstance(err.__cause__, aiobisque.NotFoundError)
    assert not isinstance(err.__cause__, BQCommError)
    assert err.response.status_code == 404
    assert "no-such-uniq" in str(err)
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is type(err)
    assert str(copy) == str(err)
    with pytest.raises(BQCommError) as bad_slice:
        table.load_array(samples.SEED_UNIQ, samples.SEED_PATH, [7])
    assert isinstance(bad_slice.value, IndexError)


def test_extensions_beyond_bqapi(compat: BQSession, folder: Path) -> None:
    table = compat.service("table")
    assert table is not None
    expected = samples.expected(folder / "vol.h5", "volumes/big endian")
    # negative indices and steps (bqapi cannot) and per-call aiobisque options
    got = table.load_array("vol", "volumes/big endian", [-1, slice(None, None, 2)],
                           request_bytes=64)
    np.testing.assert_array_equal(got, expected[-1:, ::2])


def test_init_mex(thread_server: TableServer) -> None:
    mex_url = f"{thread_server.root}/module_service/mex/TOKEN123"
    bq = BQSession().init_mex(mex_url, "TOKEN123")
    try:
        assert bq.bisque_root == thread_server.root
        ms = bq.service("table").load_array(  # type: ignore[union-attr]
            samples.SEED_UNIQ, samples.SEED_PATH, [0])
        assert ms.shape == (1, 5, 5, 1)
    finally:
        bq.close()
    with pytest.raises(BQCommError) as info:
        BQSession().init_mex(mex_url, "WRONG-TOKEN")
    assert "WRONG-TOKEN" not in str(info.value)


def test_init_anonymous_and_with_credentials(thread_server: TableServer) -> None:
    bq = BQSession().init(thread_server.root, credentials=(USER, PASSWORD))
    assert bq is not None
    bq.close()
    anonymous = BQSession().init(thread_server.root)
    assert anonymous is not None
    with pytest.raises(aiobisque.AuthenticationError):
        anonymous.service("table").load_array(  # type: ignore[union-attr]
            samples.SEED_UNIQ, samples.SEED_PATH)
    anonymous.close()


def test_closed_or_uninitialised_session(thread_server: TableServer) -> None:
    bq = BQSession().init_local(USER, PASSWORD, bisque_root=thread_server.root)
    assert bq is not None
    table = bq.service("table")
    assert table is not None
    bq.close()
    bq.close()  # idempotent
    with pytest.raises(BQApiError, match="init_local"):
        table.load_array(samples.SEED_UNIQ, samples.SEED_PATH)
    with pytest.raises(BQApiError, match="bisque_root"):
        BQSession().init_local(USER, PASSWORD)


def test_bad_options_fail_early() -> None:
    with pytest.raises(aiobisque.UsageError, match="concurrency"):
        BQSession(concurrency=0)
    with pytest.raises(aiobisque.UsageError, match="unknown option"):
        BQSession(no_such_option=1)


def test_init_session_picks_the_servers_login_and_refuses_cas(thread_server: TableServer) -> None:
    bq = BQSession().init_session(USER, PASSWORD, bisque_root=thread_server.root)
    assert bq is not None and bq.service("table") is not None
    bq.close()
    from aiobisque.compat import BQApiError

    with pytest.raises(BQApiError, match="CAS logins are not supported"):
        BQSession().init_cas(USER, PASSWORD, bisque_root=thread_server.root)


@pytest.mark.parametrize("slices", [[], [slice(1, 3)], [2], [slice(0, 4), 1]])
def test_numeric_table_reads_as_bqapi_reads_it(compat: BQSession, official: Any,
                                               slices: list[Any]) -> None:
    want = official.service("table").load_array("tab", "numbers", slices=slices)
    got = compat.service("table").load_array("tab", "numbers", slices)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_table_with_text_is_an_error_as_in_bqapi(compat: BQSession) -> None:
    with pytest.raises(BQCommError, match="load_table"):
        compat.service("table").load_array("tab", "labelled")

