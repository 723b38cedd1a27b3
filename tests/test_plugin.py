"""The pytest fixtures aiobisque ships (aiobisque.server.pytest_plugin), used as a user would."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import numpy as np

from aiobisque import BisqueSession, Session
from aiobisque.server import TableServer, samples
from aiobisque.server.pytest_plugin import BISQUE_PASSWORD, BISQUE_USER, basic_auth


async def test_bisque_server_serves_the_seed(bisque_server: TableServer,
                                             bisque_folder: Path) -> None:
    want = samples.expected(samples.resource_file(bisque_folder, samples.SEED_UNIQ),
                            samples.SEED_PATH)
    async with BisqueSession(bisque_server.root, auth=(BISQUE_USER, BISQUE_PASSWORD)) as bq:
        got = await bq.table.load_array(samples.SEED_UNIQ, samples.SEED_PATH)
    np.testing.assert_array_equal(got, want)
    assert got.shape == (5, 5, 5, 1)


async def test_basic_auth_header_logs_in(bisque_server: TableServer) -> None:
    url = bisque_server.service_url("auth_service") + "session"
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers=basic_auth()) as resp:
            text = await resp.text()
        async with http.get(url, headers=basic_auth(password="wrong")) as resp:
            rejected = await resp.text()
    assert f'value="{BISQUE_USER}"' in text
    assert BISQUE_USER not in rejected


def test_bisque_thread_server_for_sync_clients(bisque_thread_server: TableServer) -> None:
    with Session(bisque_thread_server.root, auth=(BISQUE_USER, BISQUE_PASSWORD)) as bq:
        info = bq.info(samples.SEED_UNIQ, samples.SEED_PATH)
    assert info.shape == (5, 5, 5, 1)
