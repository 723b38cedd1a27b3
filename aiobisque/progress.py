"""What a download reports while it runs and when it ends: progress and statistics.

* :class:`Progress`: a snapshot handed to ``progress=`` callbacks.
* :class:`DownloadStats`: what one download cost; pass one as ``stats=`` to have it filled.
* :class:`Meter`: the progress of many downloads together (the bulk downloader, the CLI).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DownloadStats", "Meter", "Progress", "ProgressCallback", "counted"]


def counted(n: int, one: str, many: str | None = None) -> str:
    """``"1 request"``, ``"3 requests"``: a count with its noun in the right number."""
    return f"{n} {one if n == 1 else (many or one + 's')}"


@dataclass(frozen=True)
class Progress:
    """A snapshot passed to progress callbacks.

    ``done_bytes`` counts payload bytes received; it goes back down when a request that had
    received part of its body is retried. ``active_requests`` are sent and not answered
    yet (on a slow link all of them may be in flight long before the first is done).
    """

    done_bytes: int
    total_bytes: int
    done_requests: int
    total_requests: int
    retries: int
    active_requests: int = 0

    @property
    def fraction(self) -> float:
        return self.done_bytes / self.total_bytes if self.total_bytes else 1.0


ProgressCallback = Callable[[Progress], Any]


@dataclass
class DownloadStats:
    """What one download cost. Pass one as ``stats=`` to have it filled in."""

    requests: int = 0  # requests planned
    attempts: int = 0  # HTTP requests sent, retries included
    retries: int = 0
    bytes: int = 0  # bytes received (HDF5 images), including those of retried attempts
    out_bytes: int = 0  # bytes of the result
    seconds: float = 0.0
    peak_in_flight: int = 0
    kept_bytes: int = 0  # payload of bodies cut short that was kept, not fetched again
    complete: bool = False  # every request landed in the output
    errors: list[str] = field(default_factory=list)  # one line per retried error

    def add(self, part: DownloadStats) -> None:
        """Count ``part`` (one block or column of a larger download) into these stats."""
        self.requests += part.requests
        self.attempts += part.attempts
        self.retries += part.retries
        self.bytes += part.bytes
        self.kept_bytes += part.kept_bytes
        self.peak_in_flight = max(self.peak_in_flight, part.peak_in_flight)
        self.errors.extend(part.errors[-10:])

    @property
    def throughput(self) -> float:
        """Result bytes per second."""
        return self.out_bytes / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        return (
            f"{self.out_bytes / 1e6:.1f} MB in {self.seconds:.2f} s "
            f"({self.throughput / 1e6:.1f} MB/s), {counted(self.requests, 'request')}, "
            f"{counted(self.retries, 'retry', 'retries')}"
        )


class Meter:
    """Progress of every file of a run together (bytes, requests, retries).

    Blocks in flight report partial progress; a failed block's partial progress is
    dropped. ``on_change(meter)`` is called after every update (displays throttle it).
    """

    def __init__(self, on_change: Callable[[Meter], Any] | None = None):
        self.on_change = on_change
        self.total_bytes = 0
        self.total_requests = 0
        self.files = 0
        self.files_done = 0
        self.started = time.monotonic()
        self._done_bytes = 0
        self._done_requests = 0
        self._retries = 0
        self._partial: dict[Any, Progress] = {}

    def add(self, total_bytes: int, total_requests: int, done_bytes: int = 0,
            done_requests: int = 0) -> None:
        """A file joins the run (resumed blocks count as done)."""
        self.files += 1
        self.total_bytes += total_bytes
        self.total_requests += total_requests
        self._done_bytes += done_bytes
        self._done_requests += done_requests
        self._changed()

    def partial(self, key: Any, progress: Progress) -> None:
        self._partial[key] = progress
        self._changed()

    def block_done(self, key: Any, nbytes: int, requests: int, retries: int) -> None:
        self._partial.pop(key, None)
        self._done_bytes += nbytes
        self._done_requests += requests
        self._retries += retries
        self._changed()

    def block_dropped(self, key: Any) -> None:
        p = self._partial.pop(key, None)
        if p is not None:
            self._retries += p.retries
            self._changed()

    def file_done(self) -> None:
        self.files_done += 1
        self._changed()

    def snapshot(self) -> Progress:
        parts = self._partial.values()
        return Progress(
            done_bytes=self._done_bytes + sum(p.done_bytes for p in parts),
            total_bytes=self.total_bytes,
            done_requests=self._done_requests + sum(p.done_requests for p in parts),
            total_requests=self.total_requests,
            retries=self._retries + sum(p.retries for p in parts),
            active_requests=sum(p.active_requests for p in parts),
        )

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self)
