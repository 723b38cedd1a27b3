"""The embedded BisQue-compatible server: an aiohttp app, its runner and a thread wrapper.

:func:`run_server` starts it on the running loop; :func:`serve_in_thread` on a private loop
in a daemon thread (for synchronous clients such as ``bqapi``). Both yield a
:class:`TableServer` handle with the root URL, live :class:`ServerStats` and a replaceable
:class:`FaultPlan`.

Every URL is parsed from the raw (still percent-encoded) path, split on ``/`` first and
unquoted per component, so ``%2F`` inside a name never becomes a separator.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import datetime
import hmac
import os
import secrets
import socket
import struct
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from aiohttp import web

from aiobisque.server.export import Body
from aiobisque.server.faults import FaultDecision, FaultPlan, Link
from aiobisque.server.imports import ImportService
from aiobisque.server.stats import DataRecord, ServerStats
from aiobisque.server.store import Answer, Store, TableQuery

__all__ = ["DEMO_MEX_TOKENS", "DEMO_USERS", "TableServer", "run_server", "serve_in_thread"]

# the logins run_server accepts unless told otherwise: public, well-known demo values
DEMO_USERS: Mapping[str, str] = MappingProxyType({"alice": "wonderland"})
DEMO_MEX_TOKENS: Mapping[str, str] = MappingProxyType({"TOKEN123": "alice"})

SERVICES = (
    "data_service", "auth_service", "blob_service", "image_service", "module_service", "import"
)
_SLICE = 1 << 20  # body write size when no bandwidth cap applies
# set on a request whose status the data path counted itself (before its last byte)
_STATUS_COUNTED = web.RequestKey("aiobisque_status_counted", bool)


def _xml(element: ET.Element) -> web.Response:
    return web.Response(text=ET.tostring(element, encoding="unicode"), content_type="text/xml")


def _text(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=message + "\n", headers=headers)


class _AuthFailed(Exception):
    """Credentials were sent and are wrong."""


class _DataOutcome:
    """How one data request ended, kept in the stats exactly once.

    Kept *before* the response's last byte (or the cut that ends a faulty one) is handed
    to the transport: a client that has the whole response must find it in the stats,
    even when it runs on another thread than the server.
    """

    def __init__(self, stats: ServerStats, query: TableQuery) -> None:
        self.stats = stats
        self.query = query
        self.started = time.monotonic()
        self.status = 500
        self.fault: str | None = None
        self.kept = False

    def keep(self, *, sent: bool = True) -> None:
        """Log the request (and count its status when ``sent``); later calls do nothing."""
        if self.kept:
            return
        self.kept = True
        if sent:
            self.stats.statuses[self.status] += 1
        query, end = self.query, time.monotonic()
        record = DataRecord(
            query.range, query.path, query.format, self.status, self.fault, self.started, end
        )
        self.stats.leave(record)


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
        table_service: str,
        service_prefix: str,
        hdf_layout: str,
    ) -> None:
        if hdf_layout not in ("contiguous", "chunked"):
            raise ValueError(f"hdf_layout must be 'contiguous' or 'chunked', got {hdf_layout!r}")
        if not table_service or "/" in table_service:
            raise ValueError(f"bad table service name {table_service!r}")
        self.store = Store(folder)
        self.folder = self.store.folder
        self.users = dict(users)
        self.mex_tokens = dict(mex_tokens)
        self.public = frozenset(public)
        self.access = {uniq: frozenset(names) for uniq, names in access.items()}
        self.table_service = table_service
        self.prefix = [p for p in service_prefix.split("/") if p]
        self.hdf_layout = hdf_layout
        self.stats = ServerStats()
        self.root = ""
        self._faults = faults
        self._link: Link | None = None
        self._data_seq = 0
        self._closing = asyncio.Event()
        # h5py serialises HDF5 calls on one lock; a few threads still let encoding and
        # socket writes overlap with a read
        self._executor = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="bisque-table")
        self.imports = ImportService(self)  # uploads: POST {import}/transfer*

    # -- public handle ---------------------------------------------------------------

    @property
    def faults(self) -> FaultPlan:
        """The fault plan for the next data requests."""
        return self._faults

    @faults.setter
    def faults(self, plan: FaultPlan) -> None:
        if not isinstance(plan, FaultPlan):
            raise TypeError("faults must be a FaultPlan")
        self._faults = plan
        self._data_seq = 0

    def service_url(self, name: str) -> str:
        """The absolute base URL (ending in ``/``) of a service, as ``/services`` lists it."""
        return "/".join([self.root, *self.prefix, name]) + "/"

    @property
    def table_url(self) -> str:
        """The table service's base URL."""
        return self.service_url(self.table_service)

    def __repr__(self) -> str:
        return f"TableServer(root={self.root!r}, folder={str(self.folder)!r})"

    # -- auth --------------------------------------------------------------------------

    def _user(self, request: web.Request) -> str | None:
        """The authenticated user, ``None`` when anonymous; raises on wrong credentials."""
        header = request.headers.get("Authorization")
        if not header:
            return None
        scheme, _, value = header.strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "basic":
            try:
                name, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise _AuthFailed from None
            expected = self.users.get(name)
            if sep and expected is not None and hmac.compare_digest(expected, password):
                return name
            raise _AuthFailed
        if scheme.lower() == "mex":
            user, sep, token = value.rpartition(":")
            owner = self.mex_tokens.get(token)
            if owner is not None and (not sep or hmac.compare_digest(owner, user)):
                return owner
        raise _AuthFailed

    def _readable(self, uniq: str, user: str | None) -> Path | web.Response:
        """The resource's file, or the 404/401/403 response that refuses it."""
        file = self.store.locate(uniq)
        if file is None:
            return _text(404, "no such resource")
        denied = self._check_access(uniq, user)
        return file if denied is None else denied

    def _check_access(self, uniq: str, user: str | None) -> web.Response | None:
        if uniq in self.public:
            return None
        if user is None:
            return _text(401, "login required", {"WWW-Authenticate": 'Basic realm="bisque"'})
        allowed = self.access.get(uniq)
        if allowed is not None and user not in allowed:
            return _text(403, "forbidden")
        return None

    # -- dispatch ----------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The one route: dispatch on the raw path."""
        raw = request.rel_url.raw_path
        segments = raw.split("/")[1:]
        response = await self._dispatch(request, segments)
        if not request.get(_STATUS_COUNTED):
            # aiohttp writes a plain response after this returns, so it is counted in time
            self.stats.statuses[response.status] += 1
        return response

    async def _dispatch(self, request: web.Request, segments: list[str]) -> web.StreamResponse:
        if segments in (["services"], ["services", ""]):
            self.stats.requests["services"] += 1
            return self._services()
        n = len(self.prefix)
        if segments[:n] != self.prefix or len(segments) <= n:
            self.stats.requests["other"] += 1
            return _text(404, "no such service")
        service, rest = segments[n], segments[n + 1 :]
        if service == "auth_service" and rest in (["session"], ["session", ""]):
            self.stats.requests["session"] += 1
            return self._session(request)
        if service == "auth_service" and rest in (["login_providers"], ["login_providers", ""]):
            self.stats.requests["login_providers"] += 1
            return self._login_providers()
        try:
            user = self._user(request)
        except _AuthFailed:
            kind = "data_service" if service == "data_service" else "other"
            if service == self.table_service:
                kind = "info" if "info" in rest else "data"
            self.stats.requests[kind] += 1
            return _text(401, "bad credentials", {"WWW-Authenticate": 'Basic realm="bisque"'})
        if service == self.table_service and rest and rest[0]:
            return await self._table(request, user, rest)
        if service == "data_service" and len(rest) == 1 and rest[0]:
            self.stats.requests["data_service"] += 1
            return self._resource(urllib.parse.unquote(rest[0]), user)
        if service == "import":
            self.stats.requests["import"] += 1
            return await self.imports.handle(request, user, rest)
        self.stats.requests["other"] += 1
        if service == "module_service" and rest[:1] == ["mex"]:
            return await self._mex(request, user, rest[1:])
        return _text(404 if service not in SERVICES else 501, "not provided by this server")

    # -- small endpoints ---------------------------------------------------------------

    def _services(self) -> web.Response:
        root = ET.Element("resource", uri=f"{self.root}/services")
        for name in (self.table_service, *SERVICES):
            ET.SubElement(root, "tag", name="service", type=name, value=self.service_url(name))
        return _xml(root)

    def _session(self, request: web.Request) -> web.Response:
        # like BisQue: wrong credentials give an empty session, not an HTTP error
        session = ET.Element("session")
        try:
            user = self._user(request)
        except _AuthFailed:
            user = None
        if user is not None:
            expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
            ET.SubElement(session, "tag", name="user", value=user)
            ET.SubElement(session, "tag", name="group", value="")
            ET.SubElement(
                session, "tag", name="expires", value=expires.isoformat(timespec="seconds")
            )
            ET.SubElement(session, "tag", name="timeout", value="3600")
        return _xml(session)

    def _login_providers(self) -> web.Response:
        root = ET.Element("resource")
        ET.SubElement(
            root,
            "login",
            name="local",
            type="local",
            value=self.service_url("auth_service") + "login",
        )
        return _xml(root)

    def _resource(self, uniq: str, user: str | None) -> web.Response:
        file = self._readable(uniq, user)
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

    async def _mex(self, request: web.Request, user: str | None, rest: list[str]) -> web.Response:
        # bqapi's init_local creates a module execution (mex) and then authenticates with
        # its token; answer that as BisQue would so the official client works unchanged
        if user is None:
            return _text(401, "login required")
        if request.method == "POST" and rest in ([], [""]):
            await request.read()
            token = "00-" + secrets.token_urlsafe(16)
            self.mex_tokens[token] = user
            return _xml(self._mex_element(token))
        if request.method == "GET" and len(rest) == 1 and rest[0] in self.mex_tokens:
            return _xml(self._mex_element(rest[0]))
        return _text(404, "no such mex")

    def _mex_element(self, token: str) -> ET.Element:
        uri = self.service_url("module_service") + "mex/" + token
        return ET.Element("mex", name="script", value="RUNNING", resource_uniq=token, uri=uri)

    # -- table service -----------------------------------------------------------------

    async def _table(
        self, request: web.Request, user: str | None, rest: list[str]
    ) -> web.StreamResponse:
        components = [urllib.parse.unquote(part) for part in rest]
        query = TableQuery(components[1:], request.headers.get("Accept", ""), self.hdf_layout)
        if query.wants_info:
            self.stats.requests["info"] += 1
            file = self.store.locate(components[0])
            if file is None:
                return _text(404, "no such resource")
            denied = self._check_access(components[0], user)
            if denied is not None:
                return denied
            answer = await self._answer(file, query)
            return self._plain(answer)
        self.stats.requests["data"] += 1
        return await self._data(request, user, components[0], query)

    async def _answer(self, file: Any, query: TableQuery) -> Answer:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.store.answer, file, query)

    @staticmethod
    def _plain(answer: Answer) -> web.Response:
        body = b"".join(bytes(part) for part in answer.body.parts)
        response = web.Response(status=answer.status, body=body)
        response.headers["Content-Type"] = answer.body.content_type
        return response

    async def _data(
        self, request: web.Request, user: str | None, uniq: str, query: TableQuery
    ) -> web.StreamResponse:
        n = self._data_seq
        self._data_seq += 1
        plan = self._faults
        decision = plan.decide(n)
        stats = self.stats
        stats.enter((uniq, *query.components))
        outcome = _DataOutcome(stats, query)
        request[_STATUS_COUNTED] = True
        try:
            if plan.latency:
                stats.faults["latency"] += 1
                await asyncio.sleep(plan.latency)
            response = await self._data_response(
                request, user, uniq, query, plan, decision, outcome
            )
            if not outcome.kept:  # a plain response: aiohttp sends it after this returns
                outcome.status = response.status
                outcome.keep()
            return response
        finally:
            outcome.keep(sent=False)  # cancelled or failed: logged, no status was sent

    async def _data_response(
        self,
        request: web.Request,
        user: str | None,
        uniq: str,
        query: TableQuery,
        plan: FaultPlan,
        decision: FaultDecision,
        outcome: _DataOutcome,
    ) -> web.StreamResponse:
        file = self._readable(uniq, user)
        if isinstance(file, web.Response):
            return file
        if decision.kind in ("error", "throttle"):
            self.stats.faults[decision.kind] += 1
            outcome.fault = decision.kind
            if decision.kind == "error":
                return _text(decision.status, "injected error")
            return _text(429, "slow down", {"Retry-After": plan.retry_after})
        answer = await self._answer(file, query)
        if answer.status != 200 or not answer.data:
            return self._plain(answer)
        if decision.kind is not None:
            self.stats.faults[decision.kind] += 1
            outcome.fault = decision.kind
            return await self._send_faulty(request, answer.body, plan, decision, outcome)
        return await self._send(request, answer.body, plan, outcome)

    # -- body writing ------------------------------------------------------------------

    def _pacing(self, plan: FaultPlan) -> tuple[int, Link | None]:
        """Write size and shared link for ``plan``'s bandwidth caps."""
        link = None
        if plan.total_bandwidth:
            if self._link is None or self._link.rate != plan.total_bandwidth:
                self._link = Link(plan.total_bandwidth)
            link = self._link
        rates = [r for r in (plan.bandwidth, plan.total_bandwidth) if r]
        if not rates:
            return _SLICE, None
        # about 50 writes per second per response keeps the rate smooth at small cost
        return max(16 << 10, min(256 << 10, int(min(rates) / 50))), link

    async def _pump(
        self,
        write: Callable[[memoryview], Any],
        body: Body,
        plan: FaultPlan,
        limit: int,
        before_last: Callable[[], object] | None = None,
    ) -> int:
        """Write the first ``limit`` bytes of ``body`` at ``plan``'s pace; returns bytes sent.

        ``before_last`` runs just before the piece that completes ``limit`` is written.
        """
        size, link = self._pacing(plan)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        sent = 0
        for part in body.parts:
            view = memoryview(part).cast("B")
            for offset in range(0, len(view), size):
                if sent >= limit:
                    return sent
                piece = view[offset : offset + min(size, limit - sent)]
                if plan.bandwidth:
                    delay = t0 + sent / plan.bandwidth - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                if link is not None:
                    await link.reserve(len(piece))
                # counted before the write: the client may have the bytes before it returns
                sent += len(piece)
                self.stats.bytes_sent += len(piece)
                if before_last is not None and sent >= limit:
                    before_last()
                await write(piece)
        if before_last is not None:
            before_last()  # an empty body
        return sent

    async def _send(
        self, request: web.Request, body: Body, plan: FaultPlan, outcome: _DataOutcome
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": body.content_type})
        response.content_length = body.length
        outcome.status = response.status
        await response.prepare(request)
        await self._pump(response.write, body, plan, body.length, outcome.keep)
        await response.write_eof()
        return response

    async def _send_faulty(
        self,
        request: web.Request,
        body: Body,
        plan: FaultPlan,
        decision: FaultDecision,
        outcome: _DataOutcome,
    ) -> web.StreamResponse:
        """Send part of ``body``, then cut it as ``decision`` says (kept just before the cut)."""
        transport = request.transport
        assert transport is not None
        length = body.length
        outcome.status = 200
        cut = min(max(1, int(length * decision.cut)), max(length - 1, 0))
        if decision.kind == "truncate" and decision.framing == "close":
            # no length, no chunking: the client can only tell by the short body, so this
            # is written by hand (aiohttp would choose chunked encoding itself)
            head = (
                f"HTTP/1.1 200 OK\r\nContent-Type: {body.content_type}\r\nConnection: close\r\n\r\n"
            )
            await request.writer.write(head.encode("ascii"))
            await self._pump(request.writer.write, body, plan, cut)
            outcome.keep()
            transport.close()
            return web.Response(status=200)
        response = web.StreamResponse(headers={"Content-Type": body.content_type})
        if decision.kind == "truncate" and decision.framing == "chunked":
            response.enable_chunked_encoding()
        else:
            response.content_length = length
        await response.prepare(request)
        await self._pump(response.write, body, plan, cut)
        await self._flush(transport)
        if decision.kind == "stall":
            await self._stall(plan.stall_seconds)
        outcome.keep()
        if decision.kind in ("stall", "reset"):
            _abort(transport)
        else:
            transport.close()
        return response

    @staticmethod
    async def _flush(transport: asyncio.BaseTransport, limit: float = 2.0) -> None:
        """Let the bytes written so far leave, so a client sees them before the cut."""
        deadline = time.monotonic() + limit
        # a transport offers no "buffer empty" event to wait on, so poll (briefly, bounded)
        while (  # noqa: ASYNC110
            isinstance(transport, asyncio.WriteTransport)
            and not transport.is_closing()
            and transport.get_write_buffer_size()
            and time.monotonic() < deadline
        ):
            await asyncio.sleep(0.005)

    async def _stall(self, seconds: float) -> None:
        # ends early when the server stops; a client that hangs up cancels the handler
        # (handler_cancellation), which ends it too
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)

    def close(self) -> None:
        """Wake stalled responses and stop the worker threads."""
        self._closing.set()
        self._executor.shutdown(wait=False, cancel_futures=True)


def _abort(transport: asyncio.Transport) -> None:
    """Drop the connection with a TCP reset (linger 0), not a clean close."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


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
    table_service: str = "table",
    service_prefix: str = "",
    hdf_layout: str = "contiguous",
    keepalive_timeout: float = 75.0,
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
        table_service: the table service's name in ``/services`` (ViQi uses ``"tables"``).
        service_prefix: a path prefix for every service (``/services`` stays at the root).
        hdf_layout: ``"chunked"`` serves gzip-compressed chunked images instead.
        keepalive_timeout: seconds an idle connection is kept open.

    Example::

        async with run_server(tmp_path, public=["00-abc"]) as srv:
            print(srv.root, srv.stats.requests)
    """
    server = TableServer(
        folder,
        users=DEMO_USERS if users is None else users,
        # the demo token only comes with the demo login: a server given its own users
        # must not also let in whoever knows the public demo token
        mex_tokens=(DEMO_MEX_TOKENS if users is None else {}) if mex_tokens is None
        else mex_tokens,
        public=public,
        access=access or {},
        faults=faults or FaultPlan(),
        table_service=table_service,
        service_prefix=service_prefix,
        hdf_layout=hdf_layout,
    )
    app = web.Application(client_max_size=1 << 20)
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(
        app,
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
