"""Putting a data body on the wire: pacing, shared bandwidth, and the injected cuts.

A :class:`BodySender` writes a :class:`~aiobisque.server.export.Body` the way the
:class:`~aiobisque.server.faults.FaultPlan` says: at a per-response and/or shared bandwidth,
whole, or cut by a TCP reset, a truncation (three framings) or a stall. It keeps the
request's :class:`~aiobisque.server.stats.DataOutcome` *before* the last byte (or the cut)
leaves, so a client holding the whole answer always finds it in the stats.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from aiobisque.server.export import Body
from aiobisque.server.faults import FaultDecision, FaultPlan, Link
from aiobisque.server.stats import DataOutcome, ServerStats

__all__ = ["BodySender", "abort_transport"]

_SLICE = 1 << 20  # body write size when no bandwidth cap applies


class BodySender:
    """Writes data bodies for one server; owns the shared link of ``total_bandwidth``."""

    def __init__(self, stats: ServerStats, closing: asyncio.Event) -> None:
        self.stats = stats
        self._closing = closing
        self._link: Link | None = None

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

    async def send(
        self,
        request: web.Request,
        body: Body,
        plan: FaultPlan,
        outcome: DataOutcome,
        status: int = 200,
    ) -> web.StreamResponse:
        """Send all of ``body`` at ``plan``'s pace."""
        response = web.StreamResponse(status=status, headers={"Content-Type": body.content_type})
        response.content_length = body.length
        outcome.status = response.status
        await response.prepare(request)
        await self._pump(response.write, body, plan, body.length, outcome.keep)
        await response.write_eof()
        return response

    async def send_faulty(
        self,
        request: web.Request,
        body: Body,
        plan: FaultPlan,
        decision: FaultDecision,
        outcome: DataOutcome,
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
        await _flush(transport)
        if decision.kind == "stall":
            await self._stall(plan.stall_seconds)
        outcome.keep()
        if decision.kind in ("stall", "reset"):
            abort_transport(transport)
        else:
            transport.close()
        return response

    async def _stall(self, seconds: float) -> None:
        # ends early when the server stops; a client that hangs up cancels the handler
        # (handler_cancellation), which ends it too
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)


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


def abort_transport(transport: asyncio.Transport) -> None:
    """Drop the connection with a TCP reset (linger 0), not a clean close."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
