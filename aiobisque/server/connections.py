"""Connection hygiene: a deadline for request headers, so stuck clients cannot pin sockets.

aiohttp waits for request headers as long as the client likes. A few hundred clients that
open a connection and never finish their headers then hold every file descriptor, and the
server stops accepting anyone (asyncio retries ``accept()`` but nothing is ever freed).
:class:`HeaderDeadline` wraps aiohttp's protocol factory: a connection whose first request
headers are not complete within ``timeout`` seconds is closed. Once freed, asyncio's own
accept retry lets new clients in again. Later requests on a kept-alive connection are
covered by aiohttp's keep-alive timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web

__all__ = ["GuardedRunner", "HeaderDeadline"]


class _Guarded(asyncio.Protocol):
    """Delegates to aiohttp's protocol; closes the transport if headers are late."""

    def __init__(self, inner: Any, timeout: float) -> None:
        self._inner = inner
        self._timeout = timeout
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""
        self._transport: asyncio.BaseTransport | None = None

    def __getattr__(self, name: str) -> Any:  # everything else aiohttp asks of its protocol
        return getattr(self._inner, name)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._timer = asyncio.get_running_loop().call_later(self._timeout, self._expire)
        self._inner.connection_made(transport)

    def _expire(self) -> None:
        self._timer = None
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        if self._timer is not None:
            seen = self._tail + data
            if b"\r\n\r\n" in seen:
                self._timer.cancel()
                self._timer = None
            else:
                self._tail = seen[-3:]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        result: bool | None = self._inner.eof_received()
        return result

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class HeaderDeadline:
    """A protocol factory: aiohttp's, with a deadline on each connection's first headers."""

    def __init__(self, factory: Callable[[], Any], timeout: float) -> None:
        self.factory = factory
        self.timeout = timeout

    def __call__(self) -> asyncio.Protocol:
        return _Guarded(self.factory(), self.timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.factory, name)


class GuardedRunner(web.AppRunner):
    """An :class:`aiohttp.web.AppRunner` whose sites serve through :class:`HeaderDeadline`."""

    def __init__(self, app: web.Application, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.header_timeout = header_timeout

    @property
    def server(self) -> Any:
        inner = super().server
        return None if inner is None else HeaderDeadline(inner, self.header_timeout)
