"""A private event loop on a daemon thread, for synchronous callers.

The async API is the real one; synchronous code (scripts, notebooks, the ``bqapi`` layer,
dask workers) runs coroutines here with :func:`run_sync`. Because the loop lives on its own
thread it works from inside a running event loop (Jupyter) without ``nest_asyncio``. Calling
it from that private loop itself would deadlock, so that raises instead. Ctrl-C while waiting
cancels the coroutine and waits (briefly) for it to clean up before re-raising.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["LoopThread", "run_sync", "shared_loop"]

T = TypeVar("T")

#: How long a cancelled coroutine may take to clean up after Ctrl-C.
_CANCEL_GRACE = 5.0


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


class LoopThread:
    """An event loop running forever on a daemon thread, started on first use."""

    def __init__(self, name: str = "aiobisque-loop"):
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._thread is None or not self._thread.is_alive():
                loop = _new_loop()
                ready = threading.Event()

                def main() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                thread = threading.Thread(target=main, name=self._name, daemon=True)
                thread.start()
                ready.wait()
                self._loop, self._thread = loop, thread
            return self._loop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the private loop and wait for its result."""
        loop = self.loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            coro.close()
            raise RuntimeError(
                "aiobisque's synchronous API was called from its own event loop thread; "
                "use the async API (await ...) there instead"
            )
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result()
        except KeyboardInterrupt:
            future.cancel()
            try:
                future.result(timeout=_CANCEL_GRACE)
            except (concurrent.futures.CancelledError, concurrent.futures.TimeoutError,
                    Exception):
                pass
            raise

    def _forget(self) -> None:
        # after fork() the thread does not exist in the child: start a fresh one on demand
        self._lock = threading.Lock()
        self._loop = None
        self._thread = None


shared_loop = LoopThread()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=shared_loop._forget)


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the process-wide private loop (see the module docstring)."""
    return shared_loop.run(coro)
