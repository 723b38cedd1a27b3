"""The server's route table: which handler answers which service path, and how it is counted.

Every URL is taken from the raw (still percent-encoded) path and split on ``/`` before any
unquoting, so ``%2F`` inside a name never becomes a separator. ``/services`` sits at the
root; every other service sits under the configured prefix, as ``/services`` lists it.

A :class:`Route` names its service, how it matches the rest of the path, the kind it is
counted as in :class:`~aiobisque.server.stats.ServerStats`, and whether it reads the
caller's credentials (wrong ones are answered 401 before the handler runs). Adding a
service is adding routes: :meth:`Router.add`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from aiohttp import web

from aiobisque.server.auth import Authenticator, AuthFailed
from aiobisque.server.stats import ServerStats

__all__ = ["LOGGED_IN", "STATUS_COUNTED", "Call", "Route", "Router", "any_segment", "exact", "single"]

# set on a request whose status its handler counted itself (before its last byte)
STATUS_COUNTED = web.RequestKey("aiobisque_status_counted", bool)
# the user whose credentials (not a cookie) a request carried and the server accepted
LOGGED_IN = web.RequestKey("aiobisque_logged_in", str)


@dataclass
class Call:
    """One request as a handler sees it: the path after the service, and the caller."""

    request: web.Request
    rest: list[str]
    user: str | None = None


Handler = Callable[[Call], Awaitable[web.StreamResponse]]
Matcher = Callable[[list[str]], bool]


def exact(*segments: str) -> Matcher:
    """Match exactly ``segments``, with or without a trailing slash."""
    want = list(segments)
    return lambda rest: rest in (want, [*want, ""])


def any_segment(rest: list[str]) -> bool:
    """Match any path with a non-empty segment (BisQue drops empty ones: ``//x`` is ``x``)."""
    return any(rest)


def single(rest: list[str]) -> bool:
    """Match one non-empty segment (``{uniq}``)."""
    return len(rest) == 1 and bool(rest[0])


@dataclass(frozen=True)
class Route:
    """``service`` is ``None`` for root paths (``/services``)."""

    service: str | None
    match: Matcher
    kind: str | Callable[[list[str]], str]
    handler: Handler
    login: bool = True  # read the credentials; wrong ones answer 401

    def kind_of(self, rest: list[str]) -> str:
        return self.kind if isinstance(self.kind, str) else self.kind(rest)


@dataclass
class Router:
    """Dispatches on the raw path and counts every request and status in one place."""

    prefix: Sequence[str]
    stats: ServerStats
    auth: Authenticator
    # services that exist on a real BisQue but that this server only lists (501)
    listed: Sequence[str] = ()
    # seconds every request waits before it is answered (a WAN's round trip)
    latency: Callable[[], float] = lambda: 0.0
    routes: list[Route] = field(default_factory=list)

    def add(self, *routes: Route) -> None:
        """Append routes (the first match wins)."""
        self.routes.extend(routes)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The one aiohttp handler."""
        delay = self.latency()
        if delay:
            # every request pays the link's latency, as on a real WAN (service discovery,
            # the session check and info too, not only data)
            self.stats.fault("latency")
            await asyncio.sleep(delay)
        response = await self._dispatch(request)
        if not request.get(STATUS_COUNTED):
            # aiohttp writes a plain response after this returns, so it is counted in time
            self.stats.sent(response.status)
        return response

    def _find(self, segments: list[str]) -> tuple[Route | None, str | None, list[str]]:
        for route in self.routes:
            if route.service is None and route.match(segments):
                return route, None, segments
        n = len(self.prefix)
        if segments[:n] != list(self.prefix) or len(segments) <= n:
            return None, None, segments
        service, rest = segments[n], segments[n + 1 :]
        for route in self.routes:
            if route.service == service and route.match(rest):
                return route, service, rest
        return None, service, rest

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        segments = request.rel_url.raw_path.split("/")[1:]
        route, service, rest = self._find(segments)
        if route is None:
            self.stats.count("other")
            if service is None:
                return text_response(404, "no such service")
            # a service's other paths still check credentials, as BisQue's do
            try:
                self._identify(request)
            except AuthFailed:
                return bad_credentials()
            status = 501 if service in self.listed else 404
            return text_response(status, "not provided by this server")
        self.stats.count(route.kind_of(rest))
        call = Call(request, rest)
        if route.login:
            try:
                call.user = self._identify(request)
            except AuthFailed:
                return bad_credentials()
        return await route.handler(call)

    def _identify(self, request: web.Request) -> str | None:
        user = self.auth.identify(request.headers, request.cookies)
        if user is not None and request.headers.get("Authorization"):
            request[LOGGED_IN] = user
        return user


def text_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """A short plain-text answer."""
    return web.Response(status=status, text=message + "\n", headers=headers)


def bad_credentials() -> web.Response:
    """Credentials were sent and are wrong."""
    return text_response(401, "bad credentials", {"WWW-Authenticate": 'Basic realm="bisque"'})
