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
import contextlib
import os
import threading
from collections.abc import Coroutine
from typing import Any, Generic, TypeVar

from aiobisque.errors import UsageError

__all__ = ["LOOP_ENV", "LoopThread", "new_loop", "run_sync", "shared_loop"]

T = TypeVar("T")

#: How long a cancelled coroutine may take to clean up after Ctrl-C.
_CANCEL_GRACE = 5.0


#: The environment variable that picks the event loop: ``asyncio`` (default) or ``uvloop``.
LOOP_ENV = "AIOBISQUE_LOOP"


def new_loop() -> asyncio.AbstractEventLoop:
    """A new event loop: asyncio's, or uvloop's when ``AIOBISQUE_LOOP=uvloop``.

    asyncio is the default because it was measured cheaper: on this client's workload
    (a few large concurrent HTTP bodies copied into numpy) uvloop took 1.1-1.35x the CPU
    of asyncio per GiB, on loopback and on a WAN link, for no shorter download
    (``python -m benchmarks.variants``). uvloop stays available for those who measure
    otherwise on their machine (``pip install 'aiobisque[uvloop]'``).
    """
    choice = os.environ.get(LOOP_ENV, "").strip().lower()
    if choice in ("", "asyncio"):
        return asyncio.new_event_loop()
    if choice != "uvloop":
        raise UsageError(f"{LOOP_ENV}={choice!r}: expected 'asyncio' or 'uvloop'")
    try:
        import uvloop
    except ImportError:
        raise UsageError(f"{LOOP_ENV}=uvloop, but uvloop is not installed "
                         "(pip install 'aiobisque[uvloop]')") from None
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


class _Call(Generic[T]):
    """One coroutine run for a waiting thread.

    ``done`` completes only when the task has really finished, cancellation included.
    (``asyncio.run_coroutine_threadsafe``'s future reports "cancelled" as soon as it is
    asked to, while the task may still be closing connections.)
    """

    def __init__(self, coro: Coroutine[Any, Any, T]):
        self.coro = coro
        self.task: asyncio.Task[T] | None = None
        self.done: concurrent.futures.Future[T] = concurrent.futures.Future()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self.done.set_running_or_notify_cancel():
            self.coro.close()
            return
        try:
            self.task = loop.create_task(self.coro)
        except BaseException as exc:  # e.g. the loop is closing
            self.coro.close()
            self.done.set_exception(exc)
            return
        self.task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[T]) -> None:
        if task.cancelled():
            self.done.set_exception(concurrent.futures.CancelledError())
        elif (exc := task.exception()) is not None:
            self.done.set_exception(exc)
        else:
            self.done.set_result(task.result())

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()


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
                loop = new_loop()
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

    def is_current(self) -> bool:
        """Whether the caller runs on this loop's own thread."""
        return self._thread is not None and threading.current_thread() is self._thread

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the private loop and wait for its result.

        Raises ``RuntimeError`` when called on the private loop's own thread (it would wait
        for itself forever). A ``KeyboardInterrupt`` while waiting cancels the coroutine,
        waits up to ``_CANCEL_GRACE`` seconds for it to finish cleaning up (its requests
        cancelled, its connections closed) and is then re-raised.
        """
        try:
            loop = self.loop  # raises UsageError for a bad AIOBISQUE_LOOP
        except BaseException:
            coro.close()  # never started: no "coroutine was never awaited" warning
            raise
        if self.is_current():
            coro.close()
            raise RuntimeError(
                "aiobisque's synchronous API was called from its own event loop thread "
                "(for example in a progress callback); use the async API (await ...) there"
            )
        call = _Call(coro)
        loop.call_soon_threadsafe(call.start, loop)
        try:
            return call.done.result()
        except KeyboardInterrupt:
            # call_soon_threadsafe keeps FIFO order, so the task exists when this runs
            loop.call_soon_threadsafe(call.cancel)
            with contextlib.suppress(BaseException):
                call.done.result(timeout=_CANCEL_GRACE)
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
