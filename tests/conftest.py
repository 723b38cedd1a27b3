"""Shared fixtures: sample data on disk and the embedded BisQue server over real HTTP.

Every test module gets its server from here. A module that needs its own sample files or
logins says so as data, not with fixtures of its own:

- ``SAMPLES = write(folder)``: the files of the module's ``folder`` (written once per
  module; with ``FRESH_FOLDER = True`` once per test, for tests that add or break files;
  ``write`` may return another folder to serve); without it, ``folder`` is the shared
  :func:`write_samples` folder;
- ``SERVER_OPTIONS = {...}``: keyword arguments of :func:`run_server` for ``server``
  (async, per test) and ``thread_server`` (its own thread, per module); the defaults are
  :data:`SERVER_DEFAULTS`.

Every password and token named in a module's ``SERVER_OPTIONS`` is added to the secrets
the leak guard looks for, so a new test login cannot be forgotten there.
"""

from __future__ import annotations

import base64
import io
import logging
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import hypothesis  # noqa: F401 - see below
import numpy as np
import pytest

from aiobisque import BisqueError, BisqueSession, Config, RetryPolicy
from aiobisque.server import TableServer, run_server, samples, serve_in_thread

# hypothesis is imported here, at collection, on purpose: imported lazily later (its pytest
# plugin does so at the terminal summary) CPython 3.11.7 can fail with "SystemError: AST
# constructor recursion depth mismatch" while pytest rewrites it (CPython gh-106905).

#: the fixtures aiobisque ships for its users' tests are used here too (tests/test_plugin.py)
pytest_plugins = ["aiobisque.server.pytest_plugin"]

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


#: run_server's arguments unless a module's SERVER_OPTIONS says otherwise
SERVER_DEFAULTS: dict[str, Any] = {
    "users": USERS, "mex_tokens": MEX_TOKENS, "access": ACCESS, "public": PUBLIC,
}

#: credentials some tests use outside any server's options
SUITE_SECRETS = ["wonderland", "builder", "TOKEN123", "s3cr3t-Pa55", "WRONG-pw-123"]


def server_options(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The test module's ``SERVER_OPTIONS`` over :data:`SERVER_DEFAULTS`."""
    return {**SERVER_DEFAULTS, **getattr(request.module, "SERVER_OPTIONS", {})}


def secrets_of(options: dict[str, Any]) -> list[str]:
    """Passwords and tokens of a server's options, with their Basic-auth encodings."""
    users = options.get("users") or {}
    found = [*SUITE_SECRETS, *users.values(), *(options.get("mex_tokens") or {})]
    found += [base64.b64encode(f"{u}:{p}".encode()).decode() for u, p in users.items()]
    return found


class _Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def _safe_repr(value: object) -> str:
    try:
        return repr(value)
    except Exception as exc:  # a broken __repr__ hides nothing from us, but says so
        return f"<repr failed: {type(exc).__name__}>"


def exception_texts(err: BaseException) -> list[str]:
    """Everything an error could show: str, repr and notes of it and of every exception in
    its ``__cause__``/``__context__`` chain, plus the repr of their attributes (and of
    those attributes' own attributes, such as an aiohttp ``request_info.headers``)."""
    texts: list[str] = []
    seen: set[int] = set()
    stack: list[BaseException | None] = [err]
    while stack and len(seen) < 100:
        exc = stack.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        texts += [str(exc), _safe_repr(exc), *getattr(exc, "__notes__", [])]
        texts += [_safe_repr(a) for a in exc.args]
        values = list(getattr(exc, "__dict__", {}).values())
        for name in ("request_info", "headers", "history"):
            if hasattr(exc, name):
                values.append(getattr(exc, name))
        for value in values:
            texts.append(_safe_repr(value))
            for name in ("headers", "url", "real_url"):
                inner = getattr(value, name, None)
                if inner is not None:
                    texts.append(_safe_repr(inner))
        stack += [exc.__cause__, exc.__context__]
    return texts


@pytest.fixture(autouse=True)
def no_secret_leaks(monkeypatch: pytest.MonkeyPatch,
                    request: pytest.FixtureRequest) -> Iterator[None]:
    """Scan everything each test logs (all loggers, DEBUG included) and every aiobisque
    error it creates, with its whole cause/context chain and their attributes: no
    password, token or its base64 form may appear."""
    recorder = _Recorder()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(recorder)
    root.setLevel(logging.DEBUG)
    raised: list[BisqueError] = []
    original = BisqueError.__init__

    def recording_init(self: BisqueError, message: str, **kwargs: object) -> None:
        original(self, message, **kwargs)  # type: ignore[arg-type]
        raised.append(self)  # rendered at the end, with the causes it got when raised

    monkeypatch.setattr(BisqueError, "__init__", recording_init)
    try:
        yield
    finally:
        root.removeHandler(recorder)
        root.setLevel(old_level)
    secrets = secrets_of(server_options(request))
    texts = [t for err in raised for t in exception_texts(err)]
    leaks = [t for t in recorder.lines + texts for s in secrets if s in t]
    assert not leaks, f"credentials leaked into logs or errors: {leaks[:3]}"


@pytest.fixture
def clean_cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """For command-line tests: no credentials or root from the developer's environment, no
    netrc, and a stdin that is not a terminal (so nothing prompts)."""
    for name in ("BISQUE_ROOT", "BISQUE_PASSWORD", "MEX"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bisque")
    write_samples(folder)
    return folder


def without_remote_version(monkeypatch: pytest.MonkeyPatch) -> None:
    """Downloads learn no resource version (as from a server without a data service's
    ``ts``), so only a saved block's checksum can tell a changed remote."""
    from aiobisque.bulk import BulkDownloader

    async def no_version(self: BulkDownloader, uniq: str) -> None:
        return None

    monkeypatch.setattr(BulkDownloader, "remote_version", no_version)


def served_dtype(dtype: np.dtype) -> np.dtype:
    """The type a real BisQue server serves a dataset of ``dtype`` as: what PyTables reads
    (native byte order; h5py's booleans, an HDF5 enum of int8, as int8)."""
    return np.dtype(np.int8) if dtype.kind == "b" else dtype.newbyteorder("=")


def expected(folder: Path, uniq: str, path: str) -> np.ndarray:
    files = sorted(folder.glob(f"{uniq}.*"))
    return samples.expected(files[0], path)


def _write_samples(request: pytest.FixtureRequest, path: Path) -> Path:
    """The module's ``SAMPLES`` written into ``path``; it may name another folder to serve."""
    served: Path | None = request.module.SAMPLES(path)
    return served or path


@pytest.fixture(scope="module")
def module_folder(request: pytest.FixtureRequest,
                  tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The module's sample folder, written once: its ``SAMPLES``, else the shared one."""
    if getattr(request.module, "SAMPLES", None) is None:
        shared: Path = request.getfixturevalue("data_dir")
        return shared
    return _write_samples(request, tmp_path_factory.mktemp(
        request.module.__name__.rpartition(".")[2]))


@pytest.fixture
def folder(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """The folder this test's server serves: the module's, or with ``FRESH_FOLDER = True``
    (tests that add or break files) ``SAMPLES`` written afresh for each test."""
    if getattr(request.module, "FRESH_FOLDER", False):
        return _write_samples(request, tmp_path)
    shared: Path = request.getfixturevalue("module_folder")
    return shared


@pytest.fixture
async def server(folder: Path, request: pytest.FixtureRequest) -> AsyncIterator[TableServer]:
    """The embedded server on ``folder``, on the test's own event loop."""
    async with run_server(folder, **server_options(request)) as srv:
        yield srv


@pytest.fixture
async def bq(server: TableServer) -> AsyncIterator[BisqueSession]:
    config = Config(retry=FAST_RETRY)
    async with BisqueSession(server.root, auth=USER, config=config) as session:
        yield session


@pytest.fixture(scope="module")
def thread_server(module_folder: Path,
                  request: pytest.FixtureRequest) -> Iterator[TableServer]:
    """The server on the module's folder on its own thread, for synchronous clients."""
    with serve_in_thread(module_folder, **server_options(request)) as srv:
        yield srv
