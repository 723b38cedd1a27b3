"""Exact status sequences and request headers, against a scripted local server.

(aioresponses 0.7.9, the newest release, cannot build responses for aiohttp 3.14 — its
ClientResponse now needs a ``stream_writer`` — so a scripted real server stands in for it.)
"""

from __future__ import annotations

import json

import pytest
from aiohttp import web

from aiobisque import (
    BadRequestError,
    BisqueSession,
    NotFoundError,
    RetryPolicy,
    ServerError,
)
from aiobisque.fetch import _retry_after, status_error
from tests.hostile import Hostile, hostile

QUICK = RetryPolicy(max_attempts=4, backoff_initial=0.001, backoff_max=0.002)
INFO = {"headers": ["0"], "types": ["int8"], "sizes": [3]}


def script(h: Hostile, *answers: tuple[int, str, dict[str, str]]) -> list[int]:
    """Answer successive info requests with ``answers`` (the last one repeats)."""
    calls: list[int] = []

    async def scripted(request: web.Request) -> web.StreamResponse:
        status, text, headers = answers[min(len(calls), len(answers) - 1)]
        calls.append(status)
        return web.Response(status=status, text=text, headers=headers)

    h.info = scripted
    return calls


async def test_transient_statuses_are_retried_then_succeed() -> None:
    async with hostile() as h:
        calls = script(h, (503, "", {}), (502, "", {}), (429, "", {"Retry-After": "0"}),
                       (200, json.dumps(INFO), {}))
        async with BisqueSession(h.root, auth=("alice", "pw"), retry=QUICK) as bq:
            info = await bq.table.info("00-x", "a")
    assert info.shape == (3,)
    assert calls == [503, 502, 429, 200]


async def test_5xx_after_retries_is_server_error() -> None:
    async with hostile() as h:
        calls = script(h, (500, "Traceback (most recent call last)", {}))
        async with BisqueSession(h.root, auth=("alice", "pw"), retry=QUICK) as bq:
            with pytest.raises(ServerError, match="HTTP 500: Traceback"):
                await bq.table.info("00-x", "a")
    assert calls == [500] * QUICK.max_attempts


@pytest.mark.parametrize(("status", "error"), [(400, BadRequestError), (404, NotFoundError)])
async def test_client_errors_are_never_retried(status: int, error: type[Exception]) -> None:
    async with hostile() as h:
        calls = script(h, (status, "no", {}))
        async with BisqueSession(h.root, auth=("alice", "pw"), retry=QUICK) as bq:
            with pytest.raises(error):
                await bq.table.info("00-x", "a")
    assert calls == [status]


async def test_request_headers() -> None:
    async with hostile() as h:
        h.info = INFO
        async with BisqueSession(h.root, auth=("alice", "pw")) as bq:
            await bq.table.info("00-x", "a")
    assert all(hs["Authorization"].startswith("Basic ") for hs in h.seen)
    assert all(hs["Accept-Encoding"] == "identity" for hs in h.seen)


def test_retry_after_forms() -> None:
    assert _retry_after("2") == 2.0
    assert _retry_after("-3") == 0.0
    assert _retry_after(None) is None
    assert _retry_after("soon") is None
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past


def test_status_mapping() -> None:
    root = "https://bisque.example.org/x"
    assert status_error(503, root, "x", retry_after="4").transient
    assert status_error(503, root, "x", retry_after="4").retry_after == 4.0
    assert not status_error(404, root, "x").transient
    assert isinstance(status_error(418, root, "x"), BadRequestError)
    assert status_error(408, root, "x").transient
