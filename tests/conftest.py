"""Shared fixtures: sample data on disk and the embedded BisQue server over real HTTP."""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import hypothesis  # noqa: F401 - see below
import numpy as np
import pytest

from aiobisque import BisqueError, BisqueSession, Config, RetryPolicy
from aiobisque.server import TableServer, run_server, samples, serve_in_thread

# hypothesis is imported here, at collection, on purpose: imported lazily later (its pytest
# plugin does so at the terminal summary) CPython 3.11.7 can fail with "SystemError: AST
# constructor recursion depth mismatch" while pytest rewrites it (CPython gh-106905).

USER = ("alice", "wonderland")
USERS = {"alice": "wonderland", "bob": "builder"}
MEX_TOKENS = {"TOKEN123": "alice"}
ACCESS = {"private": {"alice"}}
PUBLIC = ("public",)

#: dtypes the server can hold, native and big-endian
DTYPES = [
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "complex64", "complex128", "bool",
    ">i2", ">i8", ">u4", ">f4", ">f8", "S6",
]

#: retries fast enough for tests (the defaults back off for seconds)
FAST_RETRY = RetryPolicy(backoff_initial=0.01, backoff_max=0.05, max_delay=20)


def write_samples(folder: Path) -> None:
    samples.write_seed(folder)
    samples.write_array(folder, "vol", "volume", (40, 30, 20), dtype="float32", seed=1)
    samples.write_array(folder, "vol", "stack/labels", (7, 11), dtype="uint16", seed=2)
    samples.write_array(folder, "vol", "scalar", np.array(2.5, dtype=">f8"))
    for i, dt in enumerate(DTYPES):
        ndim = 1 + i % 5
        shape = (6, 5, 4, 3, 2)[:ndim]
        samples.write_array(folder, "dtypes", f"d{i}", shape, dtype=dt, seed=i)
    samples.write_array(folder, "odd", "grp with space/0:10/data: x", (4, 3), dtype="int32")
    samples.write_array(folder, "private", "a", (3, 3), dtype="int32")
    samples.write_array(folder, "public", "a", (3, 3), dtype="int32")
    samples.write_table(folder, "tab", "rows", nrows=25)
    samples.write_array(folder, "chunked", "c", (50, 40), dtype=">f8", chunks=(7, 9),
                        compression="gzip")


#: every credential the suite uses, with their Basic-auth encodings
SUITE_SECRETS = ["wonderland", "builder", "TOKEN123", "s3cr3t-Pa55", "WRONG-pw-123"] + [
    base64.b64encode(f"{u}:{p}".encode()).decode() for u, p in USERS.items()
]


class _Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture(autouse=True)
def no_secret_leaks(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Scan everything each test logs (all loggers, DEBUG included) and every aiobisque
    error it creates: no password, token or its base64 form may appear."""
    recorder = _Recorder()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(recorder)
    root.setLevel(logging.DEBUG)
    raised: list[str] = []
    original = BisqueError.__init__

    def recording_init(self: BisqueError, message: str, **kwargs: object) -> None:
        original(self, message, **kwargs)  # type: ignore[arg-type]
        raised.append(f"{self!s} {self!r} {self.url}")

    monkeypatch.setattr(BisqueError, "__init__", recording_init)
    try:
        yield
    finally:
        root.removeHandler(recorder)
        root.setLevel(old_level)
    leaks = [t for t in recorder.lines + raised for s in SUITE_SECRETS if s in t]
    assert not leaks, f"credentials leaked into logs or errors: {leaks[:3]}"


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bisque")
    write_samples(folder)
    return folder


def expected(folder: Path, uniq: str, path: str) -> np.ndarray:
    files = sorted(folder.glob(f"{uniq}.*"))
    return samples.expected(files[0], path)


@pytest.fixture
async def server(data_dir: Path) -> AsyncIterator[TableServer]:
    async with run_server(data_dir, users=USERS, mex_tokens=MEX_TOKENS, access=ACCESS,
                          public=PUBLIC) as srv:
        yield srv


@pytest.fixture
async def bq(server: TableServer) -> AsyncIterator[BisqueSession]:
    config = Config(retry=FAST_RETRY)
    async with BisqueSession(server.root, auth=USER, config=config) as session:
        yield session


@pytest.fixture(scope="module")
def thread_server(data_dir: Path) -> Iterator[TableServer]:
    """The server on its own thread, for synchronous clients and per-example sessions."""
    with serve_in_thread(data_dir, users=USERS, mex_tokens=MEX_TOKENS, access=ACCESS,
                         public=PUBLIC) as srv:
        yield srv
