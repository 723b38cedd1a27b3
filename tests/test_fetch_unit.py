"""Exact status sequences and request headers, against a scripted local server.

(aioresponses 0.7.9, the newest release, cannot build responses for aiohttp 3.14 — its
ClientResponse now needs a ``stream_writer`` — so a scripted real server stands in for it.)
"""

from __future__ import annotations

import json

import pytest
from aiohttp import web

import aiobisque
from aiobisque import (
    BadRequestError,
    BisqueSession,
    NotFoundError,
    RetryPolicy,
    ServerError,
)
from aiobisque.decode import BodyIncompleteError
from aiobisque.errors import AuthenticationError, DownloadTimeoutError, TransportError
from aiobisque.fetch import _retry_after, status_error
from aiobisque.retry import RetryBudget, is_congestion, is_permanent, is_transient, why_stopped
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
                # the resource's root: a node path would make the client ask its parent
                await bq.table.info("00-x")
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
    assert is_transient(status_error(503, root, "x", retry_after="4"))
    assert status_error(503, root, "x", retry_after="4").retry_after == 4.0
    assert not is_transient(status_error(404, root, "x"))
    assert isinstance(status_error(418, root, "x"), BadRequestError)
    assert not is_transient(status_error(418, root, "x"))
    assert is_transient(status_error(408, root, "x"))


def test_one_place_classifies_failures() -> None:
    root = "https://bisque.example.org/x"
    cut = TransportError("x: connection lost")
    assert is_transient(cut) and not is_permanent(cut)
    assert is_transient(BodyIncompleteError("x: body cut short"))
    assert not is_permanent(BodyIncompleteError("x: body cut short"))
    assert not is_transient(ValueError("a bug"))  # only aiobisque's own errors
    # a status the policy does not list is not retried, and rerunning cannot cure a 4xx
    narrow = RetryPolicy(statuses=frozenset({503}))
    assert not is_transient(status_error(500, root, "x"), narrow)
    assert is_permanent(status_error(409, root, "x"), narrow)
    assert not is_permanent(status_error(429, root, "x"))
    assert is_permanent(AuthenticationError("x: rejected"))
    # a permanent cause makes the wrapper permanent
    wrapper = ServerError("x failed")
    wrapper.__cause__ = status_error(404, root, "x")
    assert is_permanent(wrapper)
    assert is_congestion(status_error(429, root, "x"))
    assert is_congestion(DownloadTimeoutError("x: timed out"))
    assert not is_congestion(status_error(500, root, "x"))


def test_long_retry_after_stops_retrying_and_says_why() -> None:
    root = "https://bisque.example.org/x"
    policy = RetryPolicy(retry_after_max=5)
    slow = status_error(429, root, "x", retry_after="600")
    assert not is_transient(slow, policy)
    assert "asked to wait 600 s" in why_stopped(slow, policy, None)
    assert why_stopped(status_error(404, root, "x"), policy, None) == ""
    spent = RetryBudget(0)
    assert "budget is spent" in why_stopped(status_error(503, root, "x"), policy, spent)
    # the message is built for the caller; the error itself is left as it was
    assert "asked" not in str(slow)


async def test_a_failure_after_a_redirect_names_the_url_that_failed() -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/elsewhere/array"

    async def moved(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(dead)

    async with hostile() as h:
        h.info = INFO
        h.data = moved
        async with BisqueSession(h.root, auth=("alice", "pw"), retry=QUICK) as bq:
            with pytest.raises(aiobisque.BisqueError) as caught:
                await bq.table.load_array("00-x", "a")
    text = str(caught.value)
    assert f"cannot connect to {dead}" in text
    assert f"redirected from {h.root}/table/00-x/a/" in text


async def test_retrying_runs_a_first_success_once_and_replays_a_first_failure() -> None:
    import asyncio

    from aiobisque.retry import retrying

    calls: list[int] = []
    retried: list[int] = []

    async def ok() -> str:
        calls.append(1)
        return "done"

    assert await retrying(ok, QUICK) == ("done", 1)
    assert calls == [1]

    async def flaky() -> str:
        calls.append(2)
        if len(calls) < 4:
            raise TransportError("cut")
        return "late"

    result = await retrying(flaky, QUICK, on_retry=lambda exc, n, delay: retried.append(n))
    assert result == ("late", 3) and retried == [1, 2]  # tenacity numbers the first, too

    async def slow_failure() -> str:
        calls.append(3)
        await asyncio.sleep(0.3)
        raise TransportError("slow")

    # the first attempt's time counts against max_delay, as if tenacity had run it
    policy = RetryPolicy(max_attempts=5, max_delay=0.2, backoff_initial=0.001,
                         backoff_max=0.002)
    with pytest.raises(TransportError, match="slow"):
        await retrying(slow_failure, policy)
    assert calls.count(3) == 1
