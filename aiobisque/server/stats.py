"""Live counters of the embedded server, read by tests and benchmarks.

Everything is counted here and only here: the dispatcher calls :meth:`ServerStats.count`
once per request (its kind) and :meth:`ServerStats.sent` once per status; data requests go
through a :class:`DataOutcome`, which logs them exactly once.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["DataOutcome", "DataRecord", "ServerStats"]

_LOG_LIMIT = 100_000
_SEEN_LIMIT = 1_000_000


@dataclass
class DataRecord:
    """One data request: the range as received, HDF path, format, outcome and timing.

    ``start`` and ``end`` are ``time.monotonic()`` values; ``fault`` the injected fault
    kind or ``None``; ``status`` the status sent (200 even when the body was then cut).
    """

    range: str | None
    path: str
    format: str
    status: int
    fault: str | None
    start: float
    end: float


@dataclass
class ServerStats:
    """Counters updated as requests are served.

    - ``requests``: by kind (``services``, ``session``, ``login_providers``,
      ``data_service``, ``info``, ``data``, ``import``, ``other``);
    - ``statuses``: by status code sent;
    - ``in_flight`` / ``peak_in_flight``: data requests being served now / at most;
    - ``bytes_sent``: data body bytes written;
    - ``retries``: data requests repeating an earlier one (same resource, path, range and
      format), i.e. the retries clients made;
    - ``faults``: by injected fault kind (``error``, ``throttle``, ``reset``, ``truncate``,
      ``stall``, ``hdf_clash``; ``latency`` counts every delayed request);
    - ``data_log``: a list of :class:`DataRecord`, the last 100,000 or a few more.
    """

    requests: collections.Counter[str] = field(default_factory=collections.Counter)
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    in_flight: int = 0
    peak_in_flight: int = 0
    bytes_sent: int = 0
    retries: int = 0
    faults: collections.Counter[str] = field(default_factory=collections.Counter)
    data_log: list[DataRecord] = field(default_factory=list, repr=False)
    _seen: set[tuple[str, ...]] = field(default_factory=set, repr=False, compare=False)

    def reset(self) -> None:
        """Zero every counter and clear the log (``in_flight`` keeps counting live requests)."""
        self.requests.clear()
        self.statuses.clear()
        self.peak_in_flight = self.in_flight
        self.bytes_sent = 0
        self.retries = 0
        self._seen.clear()
        self.faults.clear()
        self.data_log.clear()

    def count(self, kind: str) -> None:
        """One request of ``kind`` arrived."""
        self.requests[kind] += 1

    def sent(self, status: int) -> None:
        """A response with ``status`` was handed to the transport."""
        self.statuses[status] += 1

    def fault(self, kind: str) -> None:
        """A fault of ``kind`` was injected."""
        self.faults[kind] += 1

    def enter(self, key: tuple[str, ...]) -> None:
        """A data request for ``key`` (uniq and path components) starts."""
        if key in self._seen:
            self.retries += 1
        elif len(self._seen) < _SEEN_LIMIT:  # bounded: past it, new keys are not remembered
            self._seen.add(key)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def leave(self, record: DataRecord) -> None:
        """A data request ends: count its status and keep its record."""
        self.in_flight -= 1
        self.data_log.append(record)
        # trim in batches so appending stays O(1) amortised
        if len(self.data_log) > _LOG_LIMIT + _LOG_LIMIT // 10:
            del self.data_log[: len(self.data_log) - _LOG_LIMIT]


class _Described(Protocol):
    """What a data request asked for, as far as it is known when it is logged."""

    range: str | None
    path: str
    format: str


class DataOutcome:
    """How one data request ended, kept in the stats exactly once.

    Kept *before* the response's last byte (or the cut that ends a faulty one) is handed
    to the transport: a client that has the whole response must find it in the stats,
    even when it runs on another thread than the server.
    """

    def __init__(self, stats: ServerStats, key: tuple[str, ...], query: _Described) -> None:
        self.stats = stats
        self.query = query
        self.started = time.monotonic()
        self.status = 500
        self.fault: str | None = None
        self.kept = False
        stats.enter(key)

    def keep(self, *, sent: bool = True) -> None:
        """Log the request (and count its status when ``sent``); later calls do nothing."""
        if self.kept:
            return
        self.kept = True
        if sent:
            self.stats.sent(self.status)
        query = self.query
        record = DataRecord(
            query.range,
            query.path,
            query.format,
            self.status,
            self.fault,
            self.started,
            time.monotonic(),
        )
        self.stats.leave(record)
