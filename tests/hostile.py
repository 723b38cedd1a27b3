"""A deliberately hostile BisQue look-alike: tests script exactly what each request gets."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np
from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def hdf_image(data: np.ndarray | None = None, build: Callable[[h5py.File], None] | None = None
              ) -> bytes:
    """An HDF5 file image holding ``/array`` = data (or whatever ``build`` writes)."""
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        if data is not None:
            f.create_dataset("array", data=data)
        if build is not None:
            build(f)
    return buf.getvalue()


def info_json(shape: tuple[int, ...], dtype: str = "float32") -> dict[str, Any]:
    cols = shape[1] if len(shape) > 1 else 1
    return {"headers": [str(i) for i in range(cols)], "types": [dtype] * cols,
            "sizes": list(shape), "group": [{"path": "/array", "type": "matrix"}]}


@dataclass
class Hostile:
    """What the server answers; tests replace ``info`` (a document or a handler) and ``data``."""

    info: Any = field(default_factory=lambda: info_json((4, 3)))
    data: Handler | None = None
    root: str = ""
    seen: list[dict[str, str]] = field(default_factory=list)  # headers of every request
    paths: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(dict(request.headers))
        self.paths.append(request.path)
        path = request.path
        if path == "/services":
            body = "".join(
                f'<tag name="service" type="{n}" value="{self.root}/{n}/"/>'
                for n in ("table", "auth_service", "data_service"))
            return web.Response(text=f"<resource>{body}</resource>", content_type="text/xml")
        if path == "/auth_service/session":
            user = '<tag name="user" value="alice"/>' if "Authorization" in request.headers \
                else ""
            return web.Response(text=f"<session>{user}</session>", content_type="text/xml")
        if path.endswith("/info/format:json"):
            if callable(self.info):
                response: web.StreamResponse = await self.info(request)
                return response
            text = self.info if isinstance(self.info, str) else json.dumps(self.info)
            return web.Response(text=text, content_type="application/json")
        if path.endswith("/format:hdf") and self.data is not None:
            return await self.data(request)
        return web.Response(status=404, text="not here")


@contextlib.asynccontextmanager
async def serve(handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                host: str = "127.0.0.1") -> AsyncIterator[str]:
    """Serve ``handler`` for every path on a free loopback port; yields the root URL."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, 0)
        await site.start()
        yield f"http://{host}:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def hostile() -> AsyncIterator[Hostile]:
    h = Hostile()
    async with serve(h.handle) as root:
        h.root = root
        yield h


def body(payload: bytes, **headers: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=payload, headers=headers,
                            content_type="application/x-hdf5")
    return handler


@contextlib.asynccontextmanager
async def raw_server(data: Callable[[str], bytes], info: dict[str, Any] | None = None
                     ) -> AsyncIterator[str]:
    """A hand-written HTTP/1.1 server on loopback: ``data(path)`` is the raw response
    (status line, headers and body, malformed as a test likes) to every ``format:hdf``
    request; services, the login check and ``info`` get well-formed answers."""
    import asyncio

    root = ""

    def ok(text: str, kind: str) -> bytes:
        payload = text.encode()
        return (f"HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {len(payload)}"
                "\r\n\r\n").encode() + payload

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                path = head.split(b" ", 2)[1].decode()
                if path == "/services":
                    tags = "".join(f'<tag name="service" type="{n}" value="{root}/{n}/"/>'
                                   for n in ("table", "auth_service", "data_service"))
                    out = ok(f"<resource>{tags}</resource>", "text/xml")
                elif path == "/auth_service/session":
                    out = ok('<session><tag name="user" value="alice"/></session>', "text/xml")
                elif path.endswith("/info/format:json"):
                    out = ok(json.dumps(info or info_json((4, 3))), "application/json")
                else:
                    out = data(path)
                writer.write(out)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(client, "127.0.0.1", 0)
    try:
        root = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        yield root
    finally:
        server.close()
        await server.wait_closed()


@contextlib.contextmanager
def hostile_in_thread() -> Iterator[Hostile]:
    """:func:`hostile` on its own thread and loop, for the command line (which runs its own
    loop). Handlers set on the yielded :class:`Hostile` run on that thread."""
    import asyncio
    import threading

    ready = threading.Event()
    stop: list[asyncio.Event] = []
    box: list[Hostile] = []
    loop = asyncio.new_event_loop()

    async def main() -> None:
        async with hostile() as h:
            box.append(h)
            stop.append(asyncio.Event())
            ready.set()
            await stop[0].wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    try:
        if not ready.wait(10):
            raise RuntimeError("the hostile server did not start")
        yield box[0]
    finally:
        if stop:
            loop.call_soon_threadsafe(stop[0].set)
        thread.join(10)
        loop.close()
