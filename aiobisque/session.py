"""The BisQue session: services, authentication, and the shared transport."""

from __future__ import annotations

import base64
import functools
import logging
import os
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.cookies import BaseCookie, SimpleCookie
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from aiobisque.config import Config
from aiobisque.errors import (
    AuthenticationError,
    BisqueError,
    InsecureTransportError,
    NotFoundError,
    UsageError,
)
from aiobisque.fetch import BufferSink, Transport, is_loopback, origin
from aiobisque.progress import DownloadStats
from aiobisque.protocol import (
    parse_login_providers,
    parse_services,
    parse_session_user,
    redact_url,
)
from aiobisque.retry import retrying
from aiobisque.table import TableService

__all__ = ["BisqueSession", "MexToken"]

log = logging.getLogger("aiobisque")

_DOC_LIMIT = 16 * 1024 * 1024  # services/session/info documents are small

P = ParamSpec("P")
R = TypeVar("R")


def _table_shortcut(
    method: Callable[Concatenate[TableService, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[BisqueSession, P], Coroutine[Any, Any, R]]:
    """``session.NAME(...)`` as ``session.table.NAME(...)``: one signature, written once."""

    async def shortcut(self: BisqueSession, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return await method(self.table, *args, **kwargs)

    functools.update_wrapper(shortcut, method)
    shortcut.__doc__ = f"``session.table.{method.__name__}(...)``: see " \
        f":meth:`TableService.{method.__name__} <aiobisque.TableService.{method.__name__}>`."
    return shortcut


@dataclass(frozen=True)
class MexToken:
    """A BisQue module-execution token: ``Authorization: Mex TOKEN`` (or ``Mex USER:TOKEN``)."""

    token: str
    user: str | None = None

    def header(self) -> str:
        return f"Mex {self.user}:{self.token}" if self.user else f"Mex {self.token}"

    def __repr__(self) -> str:
        return f"MexToken(user={self.user!r}, token='***')"


Auth = tuple[str, str] | MexToken | None


def _authorization(auth: Any) -> tuple[str | None, str | None]:
    """(Authorization header, user name) for the accepted forms of ``auth``."""
    if auth is None:
        return None, None
    if isinstance(auth, MexToken):
        return auth.header(), auth.user
    if isinstance(auth, aiohttp.BasicAuth):
        return auth.encode(), auth.login
    if isinstance(auth, tuple) and len(auth) == 2 and all(isinstance(x, str) for x in auth):
        user, password = auth
        if ":" in user:
            raise UsageError("a user name cannot contain ':' (HTTP Basic auth)")
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        return f"Basic {token}", user
    raise UsageError("auth must be None, a (user, password) tuple or a MexToken")


class TrustedCookieJar(aiohttp.CookieJar):
    """Cookies kept from, and sent to, only the origins credentials may go to.

    A ViQi server answers a login with a session cookie (``mex_session``), which is as
    good as the password: it gets the same rule as the ``Authorization`` header. Cookie
    rules alone would send it to every port and, unless marked secure, over plain http of
    the same host, and aiohttp's default jar refuses cookies from IP-address hosts (such as
    a server on 127.0.0.1). ``unsafe=True`` lifts that refusal; the origin check, which is
    stricter than any domain rule, keeps it safe.
    """

    def __init__(self, trusted: Callable[[str], bool]) -> None:
        super().__init__(unsafe=True)
        self._trusted = trusted

    def update_cookies(self, cookies: Any, response_url: URL = URL()) -> None:  # noqa: B008
        if self._trusted(str(response_url)):
            super().update_cookies(cookies, response_url)

    def filter_cookies(self, request_url: URL = URL()) -> BaseCookie[str]:  # noqa: B008
        if not self._trusted(str(request_url)):
            return SimpleCookie()
        return super().filter_cookies(request_url)


def _origin_url(url: str) -> str:
    """``scheme://host[:port]`` of ``url`` (no path, no credentials)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def _check_root(root: Any) -> str:
    """The server's root URL, refused early when it cannot be right."""
    if not isinstance(root, str) or not root.startswith(("http://", "https://")):
        shown = redact_url(root) if isinstance(root, str) and "@" in root else root
        raise UsageError(f"root must be an http(s) URL such as 'https://host', got {shown!r}")
    parts = urlsplit(root)
    if parts.username is not None or parts.password is not None:
        raise UsageError(
            f"root {redact_url(root)!r} must not contain credentials: pass "
            "auth=(user, password) instead"
        )
    if not parts.hostname:
        raise UsageError(f"root {root!r} names no host")
    if parts.query or parts.fragment:
        raise UsageError(f"root {redact_url(root)!r} must not have a query or fragment")
    return root.rstrip("/")


class BisqueSession:
    """An async session with one BisQue server.

    >>> async with BisqueSession("https://bisque.example.org", auth=("me", "pw")) as bq:
    ...     arr = await bq.table.load_array(uniq, "path/to/array")

    On entry the session reads ``{root}/services`` and, when credentials are given, checks
    them with ``auth_service/session``: rejected credentials raise
    :class:`~aiobisque.AuthenticationError` at once. ``session=`` takes a caller's
    ``aiohttp.ClientSession``, which is then left open on exit. Options are a
    :class:`~aiobisque.Config`, or keyword overrides of the default one.
    """

    def __init__(
        self,
        root: str,
        auth: Auth | aiohttp.BasicAuth = None,
        *,
        session: aiohttp.ClientSession | None = None,
        config: Config | None = None,
        **options: Any,
    ):
        self.root = _check_root(root)
        self.config = (config or Config()).replace(**options)
        self._authorization, self.user = _authorization(auth)
        if (
            self._authorization
            and self.root.startswith("http://")
            and not is_loopback(self.root)
            and not self.config.allow_insecure
        ):
            raise InsecureTransportError(
                f"refusing to send credentials unencrypted to {redact_url(self.root)}; "
                "use https, or pass allow_insecure=True if you accept the risk"
            )
        self._own_http = session is None
        self._http = session
        self._transport: Transport | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.services: dict[str, str] = {}
        self._table: TableService | None = None

    def __repr__(self) -> str:
        state = "open" if self._transport else "closed"
        return f"<BisqueSession {redact_url(self.root)} user={self.user!r} {state}>"

    async def __aenter__(self) -> BisqueSession:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def open(self) -> None:
        """Connect: load the services and check the credentials (done by ``async with``)."""
        if self._transport is not None:
            return
        if self._http is None:
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
            self._http = aiohttp.ClientSession(
                connector=connector, auto_decompress=True,
                cookie_jar=TrustedCookieJar(self._is_trusted))
        self._transport = Transport(self._http, self.config, self._authorization)
        self._transport.trust(self.root)
        self._executor = ThreadPoolExecutor(
            max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="aiobisque-decode"
        )
        try:
            body = await self.get_document(f"{self.root}/services", "the services list")
            self.services = parse_services(bytes(body), self.root)
            self._trust_services()
            await self._check_login()
        except BaseException:
            await self.close()
            raise

    def _is_trusted(self, url: str) -> bool:
        """Whether credentials (and so session cookies) may go to ``url``."""
        return self._transport is not None and origin(url) in self._transport.trusted

    def _trust_services(self) -> None:
        """Credentials go to the root's origin and to ``trusted_origins``, nowhere else.

        ``/services`` is the server's word, and a server (or whoever controls its answer)
        could name any host there; services it places elsewhere get no credentials unless
        the user named that origin.
        """
        transport = self.transport
        for extra in self.config.trusted_origins:
            if (self._authorization and extra.startswith("http://") and not is_loopback(extra)
                    and not self.config.allow_insecure):
                raise InsecureTransportError(
                    f"refusing to send credentials unencrypted to {redact_url(extra)}; "
                    "use https, or pass allow_insecure=True if you accept the risk"
                )
            transport.trust(extra)
        warned = set()
        for name, url in self.services.items():
            if url in warned:
                continue  # a ViQi service listed under BisQue's name too
            if self._authorization and origin(url) not in transport.trusted:
                warned.add(url)
                log.warning(
                    "service %s is at %s, another origin than %s: no credentials are sent "
                    "there unless it is listed in trusted_origins", name, redact_url(url),
                    redact_url(self.root))

    async def _check_login(self) -> None:
        auth_url = self.services.get("auth_service")
        if self._authorization is None or auth_url is None:
            return
        url = auth_url + "session"
        if origin(url) not in self.transport.trusted:
            # the credentials would not be sent there, and the check would look like a
            # wrong password: say what really happened
            announced = redact_url(_origin_url(url))
            raise AuthenticationError(
                f"{redact_url(self.root)} announces its login service at {announced}, "
                f"which is not {redact_url(_origin_url(self.root))} (another name or scheme "
                "for the same server, or a proxy?); credentials are only sent to the root's "
                f"origin, so none were sent. Open the session with root={announced!r} (the "
                f"name the server uses), or trust it with trusted_origins=({announced!r},)",
                url=redact_url(url))
        try:
            body = await self.get_document(url, "the login check")
        except AuthenticationError:
            user = None
        else:
            user = parse_session_user(bytes(body), url)
        if user is None:
            if self._authorization and self._authorization.startswith("Mex "):
                what = "the Mex token (expired, or not a token of this server?)"
            else:
                what = f"the credentials of user {self.user!r} (wrong user name or password?)"
            raise AuthenticationError(
                f"{redact_url(self.root)} rejected {what}", url=redact_url(url)
            )
        self.user = user

    async def close(self) -> None:
        """Close connections (not those of a caller's ``session=``) and worker threads."""
        if self._table is not None:
            self._table._cancel_pending()
        self._transport = None
        if self._own_http and self._http is not None:
            await self._http.close()
            self._http = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    @property
    def transport(self) -> Transport:
        if self._transport is None:
            raise BisqueError("the session is not open: use 'async with BisqueSession(...)'")
        return self._transport

    @property
    def executor(self) -> ThreadPoolExecutor | None:
        return self._executor

    async def get_document(self, url: str, what: str, config: Config | None = None, *,
                           limit: int = _DOC_LIMIT,
                           stats: DownloadStats | None = None) -> bytearray:
        """GET a document (XML/JSON, at most ``limit`` bytes) with retries; returns its body.

        ``stats``, when given, counts the request, its attempts, retries and bytes.
        """
        cfg = config or self.config
        transport = self.transport

        async def attempt() -> bytearray:
            sink = BufferSink()
            await transport.get(url, what=what, max_body=limit, sink=sink, config=cfg)
            return sink.body

        def counted(exc: BisqueError, attempt_number: int, delay: float) -> None:
            if stats is not None:
                stats.retries += 1
                stats.errors.append(f"{what}: {exc}")

        try:
            body, attempts = await retrying(attempt, cfg.retry, on_retry=counted)
        finally:
            if stats is not None:
                stats.requests += 1
        if stats is not None:
            stats.attempts += attempts
            stats.bytes += len(body)
        return body

    async def login_providers(self) -> list[str]:
        """The login types the server offers, e.g. ``["local"]`` or ``["cas"]``.

        aiobisque logs in with HTTP Basic or a Mex token; a server that offers only
        ``"cas"`` (a web form login) is not supported.
        """
        auth_url = self.services.get("auth_service")
        if auth_url is None:
            return []
        url = auth_url + "login_providers"
        body = await self.get_document(url, "the login providers")
        return parse_login_providers(bytes(body), url)

    def service(self, name: str) -> TableService:
        """A service proxy by name. Only the table service (``"table"``) is provided."""
        if name in ("table", "tables"):
            return self.table
        known = ", ".join(sorted(self.services)) or "none"
        raise NotFoundError(f"aiobisque has no client for service {name!r} (server offers: {known})")

    @property
    def table(self) -> TableService:
        """The :class:`~aiobisque.TableService` of this session."""
        if self._table is None:
            base = self.services.get("table") or self.services.get("tables")
            if base is None:
                self.transport  # noqa: B018 - raises when the session is not open
                known = ", ".join(sorted(self.services))
                raise NotFoundError(
                    f"{redact_url(self.root)} offers no table service (services: {known})"
                )
            self._table = TableService(self, base)
        return self._table

    # shortcuts for the service nearly every caller wants (the sync Session has them too)
    info = _table_shortcut(TableService.info)
    load_array = _table_shortcut(TableService.load_array)
    load_table = _table_shortcut(TableService.load_table)
