"""Options as frozen, validated values.

A :class:`Config` is given to a session and can be overridden for one call::

    BisqueSession(root, config=Config(concurrency=4))
    await table.load_array(uniq, path, request_bytes=8 << 20)  # replace() for this call only

Invalid values raise :class:`~aiobisque.UsageError` when the object is made, not half way
through a download.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from aiobisque.errors import UsageError, require
from aiobisque.retry import RetryPolicy

__all__ = ["MiB", "Config", "RetryPolicy"]  # RetryPolicy lives in aiobisque.retry

MiB = 1024 * 1024


#: options that shape a session (its limiter, its trust), not a single call
_SESSION_ONLY = frozenset({"adaptive", "min_concurrency", "allow_insecure", "trusted_origins"})


@dataclass(frozen=True)
class Config:
    """Options of a session, each overridable per call.

    - ``concurrency``: most requests in flight, shared by every call on the session: the
      ceiling of the adaptive window, which starts at 16 and grows while throughput does
      (see :mod:`aiobisque.window`); with ``adaptive=False``, the window itself.
    - ``request_bytes``: target payload of one range request.
    - ``inflight_bytes``: most payload bytes held in memory by requests in flight: bodies
      that have to be buffered whole, and the blocks of file downloads. A body streamed
      straight into an in-memory result holds no memory of its own and is not counted.
    - ``max_bytes``: largest array or selection accepted; guards against absurd sizes from a
      server before anything is allocated.
    - ``connect_timeout`` / ``read_timeout``: seconds to connect, and the longest silence
      while reading a response (per read, so big downloads are never cut by a total limit).
    - ``attempt_timeout`` / ``min_rate``: the total deadline of one attempt (headers and
      the whole body) is ``max(attempt_timeout, expected bytes / min_rate)`` seconds, so a
      server that trickles a byte now and then (never silent for ``read_timeout``) is cut
      off, while a large body arriving at ``min_rate`` bytes/s or faster never is.
    - ``adaptive``: grow the window while delivered throughput grows; shrink it on
      429/503/timeouts, bursts of 5xx and rising latency (``min_concurrency`` is its floor).
    - ``allow_insecure``: permit credentials over plain http to a non-loopback host.
    - ``trusted_origins``: other origins (``"https://host:port"``) that may receive the
      credentials; by default only the root's origin does, even when ``/services`` places
      a service elsewhere (a proxy setup has to name it here).
    - ``verify_checksum``: check ``Content-MD5`` / ``x-content-md5`` when the server sends it.
    """

    concurrency: int = 256
    request_bytes: int = 4 * MiB
    inflight_bytes: int = 64 * MiB
    max_bytes: int = 64 * 1024 * MiB
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    attempt_timeout: float = 120.0
    min_rate: float = 64 * 1024
    adaptive: bool = True
    min_concurrency: int = 2
    allow_insecure: bool = False
    verify_checksum: bool = True
    max_redirects: int = 5
    trusted_origins: tuple[str, ...] = ()
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        require(self.concurrency >= 1, f"concurrency must be >= 1, got {self.concurrency}")
        require(
            1 <= self.min_concurrency <= self.concurrency or self.concurrency < 2,
            "min_concurrency must be between 1 and concurrency",
        )
        require(self.request_bytes >= 1, f"request_bytes must be >= 1, got {self.request_bytes}")
        require(self.inflight_bytes >= 1, "inflight_bytes must be >= 1")
        require(self.max_bytes >= 0, "max_bytes must be >= 0")
        require(self.connect_timeout > 0, "connect_timeout must be > 0")
        require(self.read_timeout > 0, "read_timeout must be > 0")
        require(self.attempt_timeout > 0, "attempt_timeout must be > 0")
        require(self.min_rate > 0, "min_rate must be > 0 bytes/s")
        require(self.max_redirects >= 0, "max_redirects must be >= 0")
        require(isinstance(self.retry, RetryPolicy), "retry must be a RetryPolicy")
        origins = (self.trusted_origins,) if isinstance(self.trusted_origins, str) \
            else tuple(self.trusted_origins)
        for o in origins:
            require(isinstance(o, str) and o.startswith(("http://", "https://")),
                   f"trusted_origins must be http(s) URLs, got {o!r}")
        object.__setattr__(self, "trusted_origins", origins)

    def for_call(self, **changes: Any) -> Config:
        """A copy with options changed for one call on a session configured as ``self``.

        The limits a session shares between its calls can only be lowered per call
        (``concurrency``, ``inflight_bytes``); options that shape the session itself are
        refused rather than silently ignored.
        """
        fixed = sorted(set(changes) & _SESSION_ONLY)
        if fixed:
            raise UsageError(
                f"{', '.join(fixed)} can only be set for the whole session "
                "(BisqueSession(..., option=value))"
            )
        cfg = self.replace(**changes)
        for name in ("concurrency", "inflight_bytes"):  # limits every call shares
            if getattr(cfg, name) > getattr(self, name):
                raise UsageError(
                    f"{name}={getattr(cfg, name)} for one call exceeds the session's "
                    f"{getattr(self, name)}, which every call shares; raise it on the session"
                )
        return cfg

    def attempt_deadline(self, expected_bytes: int) -> float:
        """Seconds one attempt expecting ``expected_bytes`` may take, all in all."""
        return max(self.attempt_timeout, expected_bytes / self.min_rate)

    def replace(self, **changes: Any) -> Config:
        """A copy with some options changed (unknown names raise ``UsageError``)."""
        if not changes:
            return self
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise UsageError(
                f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
            )
        return dataclasses.replace(self, **changes)
