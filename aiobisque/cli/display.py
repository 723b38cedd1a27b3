"""Showing a download's progress: a tqdm bar on a terminal, plain lines in logs."""

from __future__ import annotations

import argparse
import time
from typing import IO

from aiobisque.progress import Meter, Progress, counted

__all__ = ["BarDisplay", "Display", "LogDisplay", "make_display", "requests_text", "size_text"]


def size_text(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


class Display:
    """Shows a :class:`Meter`: nothing (``--no-progress``)."""

    def update(self, meter: Meter) -> None:
        pass

    def close(self) -> None:
        pass


def requests_text(p: Progress) -> str:
    """``"3 in flight, 5/16 requests done, 1 retry"``: every figure moves as requests do."""
    return (f"{p.active_requests} in flight, {p.done_requests}/{p.total_requests} "
            f"requests done, {counted(p.retries, 'retry', 'retries')}")


class BarDisplay(Display):
    """A tqdm bar: bytes, rate and ETA, plus requests and retries."""

    def __init__(self, stream: IO[str]):
        from tqdm import tqdm

        self.bar = tqdm(total=0, unit="iB", unit_scale=True, unit_divisor=1024,
                        file=stream, dynamic_ncols=True, desc="download", leave=True)
        self._shown = ""

    def update(self, meter: Meter) -> None:
        p = meter.snapshot()
        if self.bar.total != p.total_bytes:
            self.bar.total = p.total_bytes
        if p.done_bytes != self.bar.n:
            self.bar.update(p.done_bytes - self.bar.n)
        postfix = requests_text(p)
        if meter.files > 1:
            postfix = f"{meter.files_done}/{meter.files} files, " + postfix
        if postfix != self._shown:
            self._shown = postfix
            self.bar.set_postfix_str(postfix, refresh=False)

    def close(self) -> None:
        self.bar.close()


class LogDisplay(Display):
    """One plain line every ``interval`` seconds, for logs and pipes."""

    def __init__(self, stream: IO[str], interval: float):
        self.stream = stream
        self.interval = interval
        self._last = time.monotonic()
        self._start = self._last
        self._first_bytes: int | None = None

    def update(self, meter: Meter) -> None:
        now = time.monotonic()
        p = meter.snapshot()
        if self._first_bytes is None:
            self._first_bytes = p.done_bytes  # what was resumed is not part of the rate
        if now - self._last < self.interval:
            return
        self._last = now
        rate = (p.done_bytes - self._first_bytes) / max(now - self._start, 1e-9)
        left = p.total_bytes - p.done_bytes
        eta = f"{left / rate:.0f} s" if rate > 0 else "?"
        files = f"{meter.files_done}/{meter.files} files, " if meter.files > 1 else ""
        print(f"aiobisque: {p.fraction:6.1%} {size_text(p.done_bytes)} of {size_text(p.total_bytes)}, "
              f"{files}{size_text(rate)}/s, ETA {eta}, {requests_text(p)}", file=self.stream,
              flush=True)


def make_display(args: argparse.Namespace, stream: IO[str]) -> Display:
    if args.no_progress:
        return Display()
    if stream.isatty():
        return BarDisplay(stream)
    return LogDisplay(stream, args.progress_interval)
