"""Fetching: HTTP requests under one shared limiter, and error translation.

Everything that touches aiohttp lives here, so aiohttp exceptions and HTTP statuses become
aiobisque errors in exactly one place (:func:`_translate` and :func:`status_error`).

* :class:`Limiter` bounds requests in flight for a whole session (all concurrent calls), by
  the adaptive window of :mod:`aiobisque.window` (grown while throughput grows, cut on
  congestion). A slot is taken *before* the request starts, so time spent queueing never
  counts against a timeout.
* :class:`ByteBudget` bounds the payload bytes held by requests in flight.
* What is worth retrying, and the retry loop itself, live in :mod:`aiobisque.retry`.
* :class:`Transport` sends GETs (and upload POSTs, :meth:`Transport.post`): credentials are
  attached per request and only to trusted origins, redirects are followed by hand (credentials dropped when the origin changes),
  bodies are read into one buffer sized from ``Content-Length`` and capped.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import deque
from collections.abc import AsyncIterable, Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Protocol
from urllib.parse import urljoin, urlsplit

import aiohttp
from yarl import URL

from aiobisque.config import Config
from aiobisque.errors import (
    AuthenticationError,
    BadRequestError,
    BisqueError,
    DownloadTimeoutError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    ResponseTooLargeError,
    ServerError,
    TransportError,
    UsageError,
    clean_text,
)
from aiobisque.protocol import redact_url
from aiobisque.retry import load_signal
from aiobisque.window import Window

__all__ = [
    "BodySink",
    "BufferSink",
    "ByteBudget",
    "Limiter",
    "Response",
    "Transport",
    "status_error",
]

log = logging.getLogger("aiobisque")

_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return (parts.scheme, (parts.hostname or "").lower(), port)


def is_loopback(url: str) -> bool:
    """Whether ``url``'s host is this machine (an IP literal, or ``localhost``)."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name such as 127.example.org can point anywhere


class Limiter:
    """Requests in flight for a session, within an adaptive :class:`~aiobisque.window.Window`.

    The window decides how many (see :mod:`aiobisque.window`); the limiter does the
    waiting, and tells the window how each request ended. ``maximum`` is the ceiling,
    ``minimum`` the floor; with ``adaptive=False`` the window stays at ``maximum``.
    """

    def __init__(self, maximum: int, minimum: int = 1, adaptive: bool = True):
        self.window = Window(maximum, minimum, adaptive=adaptive)
        self.in_flight = 0  # requests sent and not ended: never more than the ceiling
        self.counted = 0  # of those, the ones not handed over (see hand_over)
        self.peak = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def limit(self) -> int:
        return self.window.limit

    def _full(self) -> bool:
        return self.counted >= self.limit or self.in_flight >= self.window.ceiling

    async def acquire(self) -> None:
        while self._full():
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self._wake()  # pass the wake-up on to someone else
                raise
            finally:
                if fut in self._waiters:
                    self._waiters.remove(fut)
        self.in_flight += 1
        self.counted += 1
        self.peak = max(self.peak, self.in_flight)

    def hand_over(self) -> None:
        """The request will end within about one round trip: let the next one start now,
        so its first byte arrives as this one's last does (no idle link between waves).
        The ceiling still bounds requests in flight, handed over or not."""
        self.counted -= 1
        self._wake()

    def release(self, outcome: str = "ok", *, nbytes: int = 0, wait: float = 0.0,
                handed_over: bool = False) -> None:
        """Give a slot back, saying how the request ended: ``"ok"`` (``nbytes`` delivered,
        the first byte after ``wait`` s), ``"congested"``, ``"server_error"`` (a 5xx that
        is no congestion status by itself) or ``"error"`` (says nothing about load)."""
        self.in_flight -= 1
        if not handed_over:
            self.counted -= 1
        now = time.monotonic()
        if outcome == "ok":
            self.window.on_success(nbytes=nbytes, wait=wait, now=now,
                                   queued=bool(self._waiters))
        elif outcome == "congested":
            self.window.on_congestion(now)
        elif outcome == "server_error":
            self.window.on_server_error(now)
        self._wake()

    def _wake(self) -> None:
        free = min(self.limit - self.counted, self.window.ceiling - self.in_flight)
        while free > 0 and self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                free -= 1


class ByteBudget:
    """Payload bytes held by requests in flight (a request larger than the budget takes it all)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.used = 0
        self._cond = asyncio.Condition()

    async def acquire(self, n: int, unless: Callable[[], bool] | None = None) -> int:
        """Take ``n`` bytes (or all, if more), waiting for them; returns what was taken.

        ``unless``: stop waiting and take nothing (return 0) once it is true; whoever makes
        it true calls :meth:`wake`."""
        n = min(n, self.capacity)
        async with self._cond:
            await self._cond.wait_for(lambda: (unless is not None and unless())
                                      or self.used + n <= self.capacity)
            if unless is not None and unless():
                return 0
            self.used += n
        return n

    async def wake(self) -> None:
        """Have every waiter look at its ``unless`` again."""
        async with self._cond:
            self._cond.notify_all()

    async def release(self, n: int) -> None:
        async with self._cond:
            self.used -= n
            self._cond.notify_all()


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def status_error(status: int, url: str, what: str, detail: str = "", retry_after: str | None = None
                 ) -> BisqueError:
    """The aiobisque error for an HTTP error status (the one place statuses are mapped)."""
    safe = redact_url(url)
    tail = f": {detail}" if detail else ""
    if status == 400:
        return BadRequestError(f"{what} was refused as malformed (HTTP 400){tail}", url=safe,
                               status=status)
    if status == 401:
        return AuthenticationError(
            f"{what} needs a login, or the credentials were rejected (HTTP 401)", url=safe,
            status=status)
    if status == 403:
        return PermissionDeniedError(f"{what}: access denied for this user (HTTP 403)",
                                     url=safe, status=status)
    if status == 404:
        return NotFoundError(f"{what} was not found (HTTP 404){tail}", url=safe, status=status)
    if status == 501:
        return ServerError(f"{what}: the server cannot read this file as a table (HTTP 501)"
                           f"{tail}", url=safe, status=status)
    # whether it is worth another try is for aiobisque.retry to say
    err: BisqueError
    if status >= 500 or status in (408, 429):
        err = ServerError(f"{what} failed with HTTP {status}{tail}", url=safe, status=status)
    else:
        err = BadRequestError(f"{what} failed with HTTP {status}{tail}", url=safe, status=status)
    err.retry_after = _retry_after(retry_after)
    return err


def _translate(exc: BaseException, url: str, what: str) -> BisqueError:
    """An aiohttp/OS exception as an aiobisque error."""
    safe = redact_url(url)
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return DownloadTimeoutError(f"{what}: timed out waiting for the server", url=safe)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return TransportError(f"{what}: cannot connect to {safe} ({exc.os_error})", url=safe)
    if isinstance(exc, aiohttp.InvalidURL):
        return UsageError(f"{what}: invalid URL {safe}")
    if isinstance(exc, aiohttp.TooManyRedirects):
        return ProtocolError(f"{what}: too many redirects", url=safe)
    if isinstance(exc, aiohttp.ClientResponseError):
        # aiohttp's parser refused the response head (its str() names the URL unredacted,
        # its request_info the request's headers): only the parser's first line is kept
        detail = clean_text(str(exc.message).splitlines()[0] if exc.message else "")[:200]
        return ProtocolError(f"{what}: malformed HTTP response from the server ({detail})",
                             url=safe)
    if isinstance(exc, (aiohttp.ClientError, OSError)):
        detail = clean_text(str(exc).splitlines()[0] if str(exc) else "")[:200]
        return TransportError(f"{what}: connection lost ({type(exc).__name__}: {detail})",
                              url=safe)
    return TransportError(f"{what}: {type(exc).__name__}", url=safe)


class BodySink(Protocol):
    """Receives a response body as it arrives (see :class:`~aiobisque.decode.StreamDecoder`)."""

    def start(self, length: int | None, headers: Any) -> None: ...

    def feed(self, piece: bytes) -> None: ...


class BufferSink:
    """Collects a body into one buffer, sized from ``Content-Length`` when announced."""

    def __init__(self) -> None:
        self.body = bytearray()
        self._at = 0
        self._sized = False

    def start(self, length: int | None, headers: Any) -> None:
        self._sized = length is not None
        self.body = bytearray(length or 0)

    def feed(self, piece: bytes) -> None:
        if self._sized:
            self.body[self._at : self._at + len(piece)] = piece
            self._at += len(piece)
        else:
            self.body += piece


@dataclass
class Response:
    """A completed response: status 200, its final URL and headers (the body went to a sink)."""

    url: str
    headers: Any


class Transport:
    """GET requests to one BisQue server through a shared limiter."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        config: Config,
        authorization: str | None = None,
    ):
        self.http = http
        self.config = config
        self._authorization = authorization
        self.trusted: set[tuple[str, str, int | None]] = set()
        self.limiter = Limiter(config.concurrency, config.min_concurrency, config.adaptive)
        self.bytes = ByteBudget(config.inflight_bytes)

    def trust(self, url: str) -> None:
        """Allow credentials to be sent to ``url``'s origin."""
        self.trusted.add(origin(url))

    def _headers(self, url: str) -> dict[str, str]:
        headers = {"Accept-Encoding": "identity"}
        if self._authorization and origin(url) in self.trusted:
            headers["Authorization"] = self._authorization
        return headers

    async def get(
        self,
        url: str,
        *,
        what: str,
        max_body: int,
        sink: BodySink,
        on_bytes: Callable[[int], None] | None = None,
        config: Config | None = None,
        expected_bytes: int = 0,
        on_sent: Callable[[], None] | None = None,
    ) -> Response:
        """One attempt: GET ``url`` under a limiter slot, the whole body into ``sink``.

        The attempt (from sending the request to the body's last byte, not counting the
        wait for a slot) has :meth:`Config.attempt_deadline` seconds for the
        ``expected_bytes`` it should bring. ``on_sent`` is called once the slot is taken.
        """
        cfg = config or self.config
        await self.limiter.acquire()
        if on_sent is not None:
            on_sent()
        outcome = "error"
        failure: BisqueError
        deadline = cfg.attempt_deadline(expected_bytes)
        clock = asyncio.timeout(deadline)
        trail = [url]  # the URLs this attempt went to: a failure names the last one
        sent = time.monotonic()
        wait = 0.0  # seconds to the response's head: the window watches it rise
        delivered = 0
        tail = _Tail(self.limiter)
        try:
            async with clock:
                resp = await self._get_following_redirects(url, what, cfg, trail)
                wait = time.monotonic() - sent
                tail.wait = wait
                try:
                    if resp.status != 200:
                        detail = await _short_text(resp)
                        raise status_error(resp.status, url, what, detail,
                                           resp.headers.get("Retry-After"))
                    delivered = await _read_body(resp, max_body, sink, on_bytes, what, url,
                                                 tail)
                    result = Response(str(resp.url), resp.headers)
                finally:
                    resp.release()
            outcome = "ok"
            return result
        except BisqueError as exc:
            outcome = load_signal(exc)
            raise
        except asyncio.CancelledError:
            raise
        except TimeoutError as exc:  # the attempt's deadline, or a read or connect timeout
            outcome = "congested"
            if not clock.expired():
                failure = _translate(exc, trail[-1], _redirected(what, url, trail))
            else:
                failure = DownloadTimeoutError(
                    f"{what}: no complete response within the {deadline:.0f} s deadline of "
                    f"one attempt ({cfg.min_rate / 1024:.0f} KiB/s at least, for "
                    f"{expected_bytes:,} bytes; see attempt_timeout and min_rate)",
                    url=redact_url(url))
        except (aiohttp.ClientError, OSError) as exc:
            failure = _translate(exc, trail[-1], _redirected(what, url, trail))
            outcome = load_signal(failure)
        finally:
            self.limiter.release(outcome, nbytes=delivered, wait=wait,
                                 handed_over=tail.handed_over)
        # raised outside the handler, so neither __cause__ nor __context__ keeps the aiohttp
        # exception: its request_info holds the request's headers, Authorization included
        raise failure

    async def _get_following_redirects(
        self, url: str, what: str, cfg: Config, trail: list[str]
    ) -> aiohttp.ClientResponse:
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=cfg.connect_timeout, sock_read=cfg.read_timeout
        )
        start = origin(url)
        current = url
        for _ in range(cfg.max_redirects + 1):
            headers = self._headers(current)
            if origin(current) != start:
                headers.pop("Authorization", None)  # never carry credentials to another origin
            log.debug("GET %s", redact_url(current))
            resp = await self.http.get(
                URL(current, encoded=True),
                headers=headers,
                allow_redirects=False,
                timeout=timeout,
            )
            if resp.status in _REDIRECTS and "Location" in resp.headers:
                location = resp.headers["Location"]
                resp.release()
                current = _redirect_target(current, location, what, url)
                trail.append(current)
                continue
            return resp
        raise ProtocolError(f"{what}: more than {cfg.max_redirects} redirects",
                            url=redact_url(url))

    async def post(
        self,
        url: str,
        *,
        data: AsyncIterable[bytes],
        headers: Mapping[str, str],
        what: str,
        max_body: int,
        config: Config | None = None,
        on_answer: Callable[[], object] | None = None,
    ) -> tuple[int, Any, bytes]:
        """One POST attempt of a streamed body (uploads); never retried here.

        Credentials go only to a trusted origin, as for GETs; redirects are not followed
        (the body cannot be sent twice). Any answer is returned as (status, headers, body),
        the body read up to ``max_body`` bytes; a connection failure raises the translated
        error with the aiohttp exception as its ``__cause__``. ``on_answer`` is called as
        soon as the status line and headers arrive (maybe before the body is all sent).
        """
        cfg = config or self.config
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=cfg.connect_timeout, sock_read=cfg.read_timeout
        )
        sent = {**self._headers(url), **headers}
        log.debug("POST %s", redact_url(url))
        try:
            async with self.http.post(
                URL(url, encoded=True), data=data, headers=sent, allow_redirects=False,
                timeout=timeout,
            ) as resp:
                if on_answer is not None:
                    on_answer()
                body = bytearray()
                while True:
                    piece = await resp.content.read(1 << 16)
                    if not piece:
                        break
                    body += piece
                    if len(body) > max_body:
                        raise ResponseTooLargeError(
                            f"{what}: answer longer than the {max_body:,} bytes expected",
                            url=redact_url(url))
                if resp.status >= 300:
                    resp.close()  # stop sending a body the server refused, drop the connection
                return resp.status, resp.headers, bytes(body)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise _translate(exc, url, what) from exc


def _redirected(what: str, url: str, trail: list[str]) -> str:
    """``what``, saying which URL redirected there when the failure was elsewhere."""
    if len(trail) < 2:
        return what
    return f"{what} (redirected from {redact_url(url)})"


def _redirect_target(current: str, location: str, what: str, url: str) -> str:
    """Where a redirect's ``Location`` points; :class:`ProtocolError` for anything but a
    well-formed http(s) URL (a backslash, a bad port or host would otherwise surface as a
    raw ``ValueError`` from the URL parsers)."""
    shown = clean_text(location[:100])
    try:
        if any(c in location for c in "\\ ") or clean_text(location) != location:
            raise ValueError("backslash, space or control character")
        target = urljoin(current, location)
        parts = urlsplit(target)
        _ = parts.port  # raises ValueError for a port that is not a number in range
        URL(target, encoded=True)
    except ValueError as exc:
        raise ProtocolError(f"{what}: redirect to a malformed URL {shown!r} ({exc})",
                            url=redact_url(url)) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ProtocolError(f"{what}: redirect to a non-HTTP URL {shown!r}",
                            url=redact_url(url))
    return target


async def _short_text(resp: aiohttp.ClientResponse) -> str:
    """The first line of an error body, for messages (bounded read, never a credential)."""
    try:
        raw = await asyncio.wait_for(resp.content.read(512), timeout=5)
    except (TimeoutError, aiohttp.ClientError, OSError):
        return ""
    text = raw.decode("utf-8", "replace").strip()
    if text.lstrip().startswith("<"):
        return ""  # an HTML page says nothing useful in a one-line message
    return clean_text(text.splitlines()[0][:200]) if text else ""  # never a terminal escape


class _Tail:
    """When a body's rest will arrive within its request's round trip, hands its limiter
    slot over (:meth:`Limiter.hand_over`). Checked at a few points of the body only: the
    read loop compares one integer per piece (:attr:`next`)."""

    CHECKS = 8  # estimates of the time left per body

    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter
        self.wait = 0.0
        self.handed_over = False
        self.next = 1 << 62  # bytes received at the next check (none until start)
        self._length = 0
        self._step = 0
        self._t0 = 0.0
        self._at0 = 0

    def start(self, length: int | None) -> None:
        if length is None or length <= 0 or not self.limiter.window.adaptive:
            return  # no length: no estimate of the time left
        self._length = length
        self._step = max(1, length // self.CHECKS)
        self.next = 0

    def check(self, received: int) -> None:
        now = time.monotonic()
        if self._t0 == 0.0:  # the first check, as the body starts: the clock starts
            self._t0, self._at0 = now, received
            self.next = received + self._step
            return
        self.next = received + self._step
        elapsed = now - self._t0
        if elapsed <= 0:
            return
        rate = (received - self._at0) / elapsed
        if rate > 0 and (self._length - received) / rate <= self.wait:
            self.handed_over = True
            self.next = 1 << 62
            self.limiter.hand_over()


async def _read_body(
    resp: aiohttp.ClientResponse,
    max_body: int,
    sink: BodySink,
    on_bytes: Callable[[int], None] | None,
    what: str,
    url: str,
    tail: _Tail,
) -> int:
    """Read the body into ``sink``; returns its length."""
    encoded = resp.headers.get("Content-Encoding", "identity").lower() not in ("identity", "")
    length = None if encoded else resp.content_length
    if length is not None and length > max_body:
        raise ResponseTooLargeError(
            f"{what}: the server announced {length:,} bytes, more than the "
            f"{max_body:,} expected", url=redact_url(url))
    sink.start(length, resp.headers)
    # one bound per piece: the announced length when there is one (never above max_body),
    # else max_body, which also bounds what a compressed body may inflate to
    limit = max_body if length is None else length
    feed = sink.feed
    read = resp.content.readany
    received = 0
    tail.start(length)
    while piece := await read():
        if received >= tail.next:
            tail.check(received)
        received += len(piece)
        if received > limit:
            if length is not None:
                raise ProtocolError(f"{what}: body longer than its Content-Length",
                                    url=redact_url(url))
            raise ResponseTooLargeError(
                f"{what}: body grew beyond the {max_body:,} bytes expected", url=redact_url(url))
        feed(piece)
        if on_bytes:
            on_bytes(len(piece))
    if length is not None and received < length:
        raise TransportError(f"{what}: body cut short ({received:,} of {length:,} bytes)",
                             url=redact_url(url))
    return received
