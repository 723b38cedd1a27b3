"""Attacks on the adaptive window (#15): the limiter, the file gate, the byte budget."""

from __future__ import annotations

import asyncio

from aiobisque.bulk import _Gate


async def test_gate_waiter_cancelled_after_its_future_was_skipped() -> None:
    # Ctrl-C of download_all cancels every file at once: a holder leaving the gate pops the
    # (already cancelled) futures of the waiters before those run their except clause
    gate = _Gate(lambda: 1)
    entered = asyncio.Event()
    leave = asyncio.Event()

    async def holder() -> None:
        async with gate:
            entered.set()
            await leave.wait()

    async def waiter() -> None:
        async with gate:
            pass  # pragma: no cover - never gets in

    h = asyncio.create_task(holder())
    await entered.wait()
    w = asyncio.create_task(waiter())
    await asyncio.sleep(0)  # the waiter queues
    assert len(gate._waiters) == 1
    h.cancel()  # gather's children are cancelled in order: the holder runs first...
    w.cancel()  # ...the waiter's future is cancelled now, its except clause runs later
    results = await asyncio.gather(h, w, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results), results
    assert gate.active == 0 and not gate._waiters
