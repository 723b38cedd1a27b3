"""The embedded BisQue-compatible server: its services, its runner and a thread wrapper.

:func:`run_server` starts it on the running loop; :func:`serve_in_thread` on a private loop
in a daemon thread (for synchronous clients such as ``bqapi``). Both yield a
:class:`TableServer` handle with the root URL, live :class:`ServerStats` and a replaceable
:class:`FaultPlan`.

The pieces: :mod:`~aiobisque.server.routes` (the route table and the one place requests
are counted), :mod:`~aiobisque.server.auth` (logins and access rules),
:mod:`~aiobisque.server.table_service` (the table service's requests, faults and memory
bounds), :mod:`~aiobisque.server.store` with :mod:`~aiobisque.server.query`,
:mod:`~aiobisque.server.engine` and :mod:`~aiobisque.server.formats` (what a table path
answers, as BisQue's own code does), :mod:`~aiobisque.server.sending` (pacing and injected
faults on the wire) and :mod:`~aiobisque.server.connections` (the header deadline).

This module keeps the small services (discovery, session, data service, module
executions) and the runners. Another service is one more :class:`Route` in
``TableServer.__init__``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import os
import secrets
import threading
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from aiohttp import web

from aiobisque.server.auth import AccessRules, Authenticator, CookieSessions, Refusal
from aiobisque.server.connections import GuardedRunner
from aiobisque.server.faults import FaultPlan
from aiobisque.server.generations import Generation, by_name
from aiobisque.server.imports import ImportService
from aiobisque.server.routes import (
    LOGGED_IN,
    Call,
    Route,
    Router,
    any_segment,
    exact,
    single,
    text_response,
)
from aiobisque.server.sending import BodySender
from aiobisque.server.stats import ServerStats
from aiobisque.server.store import Limits, Store
from aiobisque.server.table_service import TableService, table_kind

__all__ = ["DEMO_MEX_TOKENS", "DEMO_USERS", "TableServer", "run_server", "serve_in_thread"]

# the logins run_server accepts unless told otherwise: public, well-known demo values
DEMO_USERS: Mapping[str, str] = MappingProxyType({"alice": "wonderland"})
DEMO_MEX_TOKENS: Mapping[str, str] = MappingProxyType({"TOKEN123": "alice"})

#: the services listed besides the table service, by their BisQue names
SERVICES = (
    "data_service", "auth_service", "blob_service", "image_service", "module_service", "import"
)


def _xml(element: ET.Element) -> web.Response:
    return web.Response(text=ET.tostring(element, encoding="unicode"), content_type="text/xml")


def _refused(refusal: Refusal) -> web.Response:
    headers = {"WWW-Authenticate": 'Basic realm="bisque"'} if refusal.status == 401 else None
    return text_response(refusal.status, refusal.reason, headers)


class TableServer:
    """Handle on a running server (what :func:`run_server` yields).

    Attributes:
        root: ``"http://127.0.0.1:PORT"``, no trailing slash.
        stats: live :class:`ServerStats`.
        faults: the :class:`FaultPlan` applied to the next data requests; assign a new
            plan at any time. Each plan numbers data requests from 0 from the moment it
            is installed, so ``fail_first`` and seeded decisions start afresh.
        folder: the served folder.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        users: Mapping[str, str],
        mex_tokens: Mapping[str, str],
        public: Collection[str],
        access: Mapping[str, Collection[str]],
        faults: FaultPlan,
        table_service: str | None,
        service_prefix: str,
        hdf_layout: str,
        limits: Limits | None = None,
        generation: Generation | None = None,
    ) -> None:
        limits = limits or Limits()
        self.generation = generation or Generation("bisque")
        if table_service is None:
            table_service = self.generation.service_name("table")
        if hdf_layout not in ("contiguous", "chunked"):
            raise ValueError(f"hdf_layout must be 'contiguous' or 'chunked', got {hdf_layout!r}")
        if not table_service or "/" in table_service:
            raise ValueError(f"bad table service name {table_service!r}")
        self.store = Store(folder)
        self.folder = self.store.folder
        self.mex_tokens = dict(mex_tokens)
        self.sessions = CookieSessions() if self.generation.cookie_sessions else None
        self.auth = Authenticator(users, self.mex_tokens, self.sessions)
        self.rules = AccessRules(public, access)
        self.table_service = table_service
        self.prefix = [p for p in service_prefix.split("/") if p]
        self.hdf_layout = hdf_layout
        self.stats = ServerStats()
        self.root = ""
        self._closing = asyncio.Event()
        self.sender = BodySender(self.stats, self._closing)
        self.tables = TableService(
            self.store,
            self.rules,
            self.stats,
            self.sender,
            plan=faults,
            layout=hdf_layout,
            limits=limits,
            csv_data_broken=self.generation.csv_data_broken,
        )
        self.limits = limits
        self.budget = self.tables.budget
        # what each of BisQue's services is called here (ViQi renames them)
        self.names = {name: self.generation.service_name(name) for name in SERVICES}
        auth_service = self.names["auth_service"]
        self.router = Router(
            self.prefix,
            self.stats,
            self.auth,
            listed=tuple(self.names.values()),
            latency=self._latency,
        )
        self.router.add(
            Route(None, exact("services"), "services", self._services, login=False),
            Route(auth_service, exact("session"), "session", self._session, login=False),
            Route(
                auth_service,
                exact("login_providers"),
                "login_providers",
                self._login_providers,
                login=False,
            ),
            Route(table_service, any_segment, table_kind, self.tables.handle),
            Route(self.names["data_service"], single, "data_service", self._resource),
            Route("module_service", lambda rest: rest[:1] == ["mex"], "other", self._mex),
            Route("import", lambda rest: True, "import", self._import),  # any transfer* name
        )
        if self.sessions is not None:
            logout = Route(auth_service, exact("logout_handler"), "session", self._logout,
                           login=False)
            self.router.add(logout)
        self.imports = ImportService(self)  # uploads: POST {import}/transfer*

    # -- public handle ---------------------------------------------------------------

    @property
    def faults(self) -> FaultPlan:
        """The fault plan for the next data requests."""
        return self.tables.plan

    @faults.setter
    def faults(self, plan: FaultPlan) -> None:
        if not isinstance(plan, FaultPlan):
            raise TypeError("faults must be a FaultPlan")
        self.tables.install(plan)

    def _latency(self) -> float:
        return self.tables.plan.latency

    @property
    def users(self) -> dict[str, str]:
        """Basic-auth names and passwords."""
        return self.auth.users

    @property
    def public(self) -> frozenset[str]:
        """Uniqs readable anonymously."""
        return self.rules.public

    def service_url(self, name: str) -> str:
        """The absolute base URL (ending in ``/``) of a service, as ``/services`` lists it.

        ``name`` is BisQue's name (``"data_service"``) or this generation's (``"meta"``).
        """
        return "/".join([self.root, *self.prefix, self.names.get(name, name)]) + "/"

    @property
    def table_url(self) -> str:
        """The table service's base URL."""
        return self.service_url(self.table_service)

    def __repr__(self) -> str:
        return f"TableServer(root={self.root!r}, folder={str(self.folder)!r})"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The one aiohttp handler: the route table's dispatch."""
        return await self.router.handle(request)

    async def on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """Headers every answer of this generation carries (streamed ones too).

        A ViQi request whose credentials were accepted opens a cookie session, unless it
        already carries one of that user's.
        """
        if self.generation.api_version is not None:
            response.headers["x-viqi-api-version"] = self.generation.api_version
        user = request.get(LOGGED_IN)
        if self.sessions is None or user is None:
            return
        if self.sessions.user(request.cookies.get(CookieSessions.cookie)) == user:
            return
        value = self.sessions.open(user)  # URL-safe characters: no quoting needed
        # as a header: aiohttp has already rendered response.cookies by this signal
        response.headers.add("Set-Cookie", f"{CookieSessions.cookie}={value}; HttpOnly; Path=/")

    def _readable(self, uniq: str, user: str | None) -> Path | web.Response:
        """The resource's file, or the 404/401/403 response that refuses it."""
        file = self.store.locate(uniq)
        if file is None:
            return text_response(404, "no such resource")
        denied = self.rules.check(uniq, user)
        return file if denied is None else _refused(denied)

    # -- small endpoints ---------------------------------------------------------------

    async def _services(self, call: Call) -> web.Response:
        root = ET.Element("resource", uri=f"{self.root}/services")
        for name in (self.table_service, *self.names.values()):
            if self.generation.services_as_elements:  # ViQi: <service type=NAME>URL</service>
                ET.SubElement(root, "service", type=name).text = self.service_url(name)
            else:
                ET.SubElement(root, "tag", name="service", type=name, value=self.service_url(name))
        return _xml(root)

    async def _session(self, call: Call) -> web.Response:
        # like BisQue: wrong credentials give an empty session, not an HTTP error
        session = ET.Element("session")
        request = call.request
        user = self.auth.session_user(request.headers, request.cookies)
        if user is not None and request.headers.get("Authorization"):
            request[LOGGED_IN] = user  # ViQi's clients log in here: a cookie comes back
        if user is not None and self.generation.natural_session:
            return _xml(self._natural_session(session, user))
        if user is not None:
            expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
            ET.SubElement(session, "tag", name="user", value=user)
            ET.SubElement(session, "tag", name="group", value="")
            ET.SubElement(
                session, "tag", name="expires", value=expires.isoformat(timespec="seconds")
            )
            ET.SubElement(session, "tag", name="timeout", value="3600")
        return _xml(session)

    async def _logout(self, call: Call) -> web.Response:
        # ViQi's clients end their session here (vqapi AuthProxy.logout); the cookie is
        # dropped and the caller sent on, as a login page's logout does (the exact answer
        # of a ViQi server is not published)
        if self.sessions is not None:
            self.sessions.close(call.request.cookies.get(CookieSessions.cookie))
        expired = f"{CookieSessions.cookie}=; Max-Age=0; Path=/"
        return web.Response(status=302, headers={"Location": f"{self.root}/",
                                                 "Set-Cookie": expired})

    def _natural_session(self, session: ET.Element, user: str) -> ET.Element:
        """ViQi's session document: what vqapi reads (``user``, ``username``, ``groups``)."""
        expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
        # ViQi names a user by its resource uniq; this server has none, so one is derived
        uniq = "00-" + hashlib.sha256(user.encode("utf-8")).hexdigest()[:22]
        for name, value in (
            ("user", uniq),
            ("username", user),
            ("groups", ""),
            ("expires", expires.isoformat(timespec="seconds")),
            ("timeout", "3600"),
        ):
            ET.SubElement(session, name).text = value or None
        return session

    async def _login_providers(self, call: Call) -> web.Response:
        root = ET.Element("resource")
        ET.SubElement(
            root,
            "login",
            name="local",
            type="local",
            value=self.service_url("auth_service") + "login",
        )
        return _xml(root)

    async def _resource(self, call: Call) -> web.Response:
        uniq = urllib.parse.unquote(call.rest[0])
        file = self._readable(uniq, call.user)
        if isinstance(file, web.Response):
            return file
        stat = file.stat()
        ts = datetime.datetime.fromtimestamp(stat.st_mtime, datetime.UTC)
        element = ET.Element(
            "table",
            name=file.name,
            resource_uniq=uniq,
            uri=self.service_url("data_service") + uniq,
            ts=ts.isoformat(timespec="seconds"),
            permission="published" if uniq in self.public else "private",
        )
        ET.SubElement(element, "tag", name="size", value=str(stat.st_size))
        self.imports.describe(uniq, element)
        return _xml(element)

    async def _import(self, call: Call) -> web.StreamResponse:
        return await self.imports.handle(call.request, call.user, call.rest)

    async def _mex(self, call: Call) -> web.Response:
        # bqapi's init_local creates a module execution (mex) and then authenticates with
        # its token; answer that as BisQue would so the official client works unchanged
        request, rest = call.request, call.rest[1:]
        if call.user is None:
            return text_response(401, "login required")
        if request.method == "POST" and rest in ([], [""]):
            await request.read()
            token = "00-" + secrets.token_urlsafe(16)
            self.mex_tokens[token] = call.user
            return _xml(self._mex_element(token))
        if request.method == "GET" and len(rest) == 1 and rest[0] in self.mex_tokens:
            return _xml(self._mex_element(rest[0]))
        return text_response(404, "no such mex")

    def _mex_element(self, token: str) -> ET.Element:
        uri = self.service_url("module_service") + "mex/" + token
        return ET.Element("mex", name="script", value="RUNNING", resource_uniq=token, uri=uri)

    def close(self) -> None:
        """Wake stalled responses and stop the worker threads."""
        self._closing.set()
        self.tables.close()


@contextlib.asynccontextmanager
async def run_server(
    folder: str | os.PathLike[str],
    *,
    users: Mapping[str, str] | None = None,
    mex_tokens: Mapping[str, str] | None = None,
    public: Collection[str] = (),
    access: Mapping[str, Collection[str]] | None = None,
    faults: FaultPlan | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    table_service: str | None = None,
    service_prefix: str = "",
    hdf_layout: str = "contiguous",
    keepalive_timeout: float = 75.0,
    header_timeout: float = 20.0,
    limits: Limits | None = None,
    generation: str = "bisque",
) -> AsyncIterator[TableServer]:
    """Serve ``folder`` on ``host:port`` (0: a free port) for the duration of the block.

    Args:
        folder: HDF5 files ``{uniq}.h5|.hdf5|.dream3d|.h5ebsd``; uniq = file stem.
        users: Basic-auth names and passwords (default :data:`DEMO_USERS`,
            ``{"alice": "wonderland"}``).
        mex_tokens: Mex tokens and their users (default :data:`DEMO_MEX_TOKENS`,
            ``{"TOKEN123": "alice"}``, only when ``users`` is not given either).
        public: uniqs readable anonymously; all others need a login.
        access: uniq -> users allowed (a uniq absent here: every logged-in user).
        faults: the :class:`FaultPlan` for data requests (default: none).
        table_service: the table service's name in ``/services`` (default: the
            generation's, ``"table"`` or ViQi's ``"tables"``); it overrides only that name.
        service_prefix: a path prefix for every service (``/services`` stays at the root).
        hdf_layout: ``"chunked"`` serves gzip-compressed chunked images instead.
        keepalive_timeout: seconds an idle connection is kept open.
        header_timeout: seconds a new connection may take to send its request headers
            before it is closed (stuck clients cannot hold every file descriptor).
        limits: memory bounds (:class:`~aiobisque.server.store.Limits`): the most array
            data one text-format answer may render, one request may read, and all data
            requests together may hold. Beyond them: 413, or 503 after a wait.
        generation: which servers to answer as (:mod:`~aiobisque.server.generations`):
            ``"bisque"`` (0.5/0.6, the default), ``"py3"`` (BisQue's Python 3 port: CSV
            data answers 400) or ``"viqi"`` (renamed services, ``<service>`` elements,
            cookie sessions, ``x-viqi-api-version``).

    Example::

        async with run_server(tmp_path, public=["00-abc"]) as srv:
            print(srv.root, srv.stats.requests)
    """
    server = TableServer(
        folder,
        users=DEMO_USERS if users is None else users,
        # the demo token only comes with the demo login: a server given its own users
        # must not also let in whoever knows the public demo token
        mex_tokens=(DEMO_MEX_TOKENS if users is None else {}) if mex_tokens is None else mex_tokens,
        public=public,
        access=access or {},
        faults=faults or FaultPlan(),
        table_service=table_service,
        service_prefix=service_prefix,
        hdf_layout=hdf_layout,
        limits=limits,
        generation=by_name(generation),
    )
    app = web.Application(client_max_size=1 << 20)
    app.router.add_route("*", "/{tail:.*}", server.handle)
    app.on_response_prepare.append(server.on_prepare)
    runner = GuardedRunner(
        app,
        header_timeout=header_timeout,
        handle_signals=False,
        access_log=None,
        keepalive_timeout=keepalive_timeout,
        # a client that gives up mid-body cancels the handler, so throttled and stalled
        # responses do not keep running for nobody
        handler_cancellation=True,
        shutdown_timeout=1.0,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        bound = runner.addresses[0]
        server.root = f"http://{host}:{bound[1]}"
        yield server
    finally:
        server.close()
        await runner.cleanup()


@contextlib.contextmanager
def serve_in_thread(folder: str | os.PathLike[str], **kwargs: Any) -> Iterator[TableServer]:
    """:func:`run_server` on its own event loop in a daemon thread, for synchronous clients.

    Takes the same keyword arguments and yields the same handle.
    """
    ready = threading.Event()
    stop: list[Callable[[], object]] = []
    handle: list[TableServer] = []
    failure: list[BaseException] = []

    async def main() -> None:
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        try:
            async with run_server(folder, **kwargs) as server:
                handle.append(server)
                stop.append(lambda: loop.call_soon_threadsafe(done.set))
                ready.set()
                await done.wait()
        except BaseException as exc:
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=asyncio.run, args=(main(),), name="bisque-server", daemon=True)
    thread.start()
    ready.wait()
    if failure:
        thread.join()
        raise failure[0]
    try:
        yield handle[0]
    finally:
        stop[0]()
        thread.join(timeout=30)
