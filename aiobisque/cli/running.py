"""Running a command's coroutine (on asyncio's loop, or uvloop with ``AIOBISQUE_LOOP=uvloop``),
with glibc told to give memory back."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

from aiobisque._loop import new_loop, run_sync

__all__ = ["return_big_buffers_to_os", "run"]

T = TypeVar("T")

#: glibc's mallopt parameter number for the mmap threshold.
_M_MMAP_THRESHOLD = -3


def return_big_buffers_to_os() -> None:
    """Have glibc map every buffer of 1 MiB or more on its own (Linux only).

    By default glibc raises its mmap threshold after the first large buffer is freed, so
    later response bodies come from the heap and their memory is kept after use; a long
    download then holds far more than its in-flight budget. A fixed threshold gives each
    body back to the OS when it is freed.
    """
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 1024 * 1024)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run on a new loop (:func:`~aiobisque._loop.new_loop`); on the private loop thread if a
    loop already runs here."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        try:
            loop = new_loop()  # raises UsageError for a bad AIOBISQUE_LOOP
        except BaseException:
            coro.close()  # never started: no "coroutine was never awaited" warning
            raise
        with asyncio.Runner(loop_factory=lambda: loop) as runner:
            return runner.run(coro)
    return run_sync(coro)
