"""pytest fixtures for the embedded server.

Enable with ``pytest_plugins = ["aiobisque.server.pytest_plugin"]`` in a conftest, or import
the fixtures by name into a test module.

- ``bisque_folder``: a fresh folder holding the seed example (``samples.write_seed``).
- ``bisque_server``: :func:`run_server` on that folder (async; user ``alice`` /
  ``wonderland``, Mex token ``TOKEN123``), yielding the :class:`TableServer` handle.
- ``bisque_thread_server``: the same from :func:`serve_in_thread`, for synchronous clients.
- ``bisque_generation``: which servers both answer as (``"bisque"``); parametrize it to run
  a test against others: ``@pytest.mark.parametrize("bisque_generation", ["py3", "viqi"])``.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from aiobisque.server import samples
from aiobisque.server.app import TableServer, run_server, serve_in_thread

__all__ = [
    "BISQUE_PASSWORD",
    "BISQUE_USER",
    "basic_auth",
    "bisque_folder",
    "bisque_generation",
    "bisque_server",
    "bisque_thread_server",
]

BISQUE_USER = "alice"
BISQUE_PASSWORD = "wonderland"


@pytest.fixture
def bisque_folder(tmp_path: Path) -> Path:
    """A folder with the seed example (more files may be added with ``samples``)."""
    folder = tmp_path / "bisque"
    folder.mkdir()
    samples.write_seed(folder)
    return folder


@pytest.fixture
def bisque_generation() -> str:
    """The server generation of ``bisque_server`` (see :mod:`aiobisque.server.generations`)."""
    return "bisque"


@pytest_asyncio.fixture
async def bisque_server(bisque_folder: Path, bisque_generation: str) -> AsyncIterator[TableServer]:
    """The embedded server on ``bisque_folder``, on the test's event loop."""
    async with run_server(
        bisque_folder, users={BISQUE_USER: BISQUE_PASSWORD}, generation=bisque_generation
    ) as server:
        yield server


@pytest.fixture
def bisque_thread_server(bisque_folder: Path, bisque_generation: str) -> Iterator[TableServer]:
    """The embedded server on ``bisque_folder``, on its own loop in a thread."""
    with serve_in_thread(
        bisque_folder, users={BISQUE_USER: BISQUE_PASSWORD}, generation=bisque_generation
    ) as server:
        yield server


def basic_auth(user: str = BISQUE_USER, password: str = BISQUE_PASSWORD) -> dict[str, str]:
    """An ``Authorization`` header for HTTP Basic credentials (for raw test clients)."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return {"Authorization": f"Basic {token}"}
