"""Faults as data: what the embedded server does wrong, per data request, reproducibly.

A :class:`FaultPlan` describes a link and a misbehaving server (latency, bandwidth caps,
error statuses, 429 throttling, resets, truncated bodies, stalls). Every random choice for
the ``n``-th data request comes from ``random.Random(f"{seed}:{n}")``, so a run against the
same sequence of requests sees the same faults whatever the timing.

>>> plan = FaultPlan(seed=1, error_rate=0.1, latency=0.05, bandwidth=parse_size("16MB"))
>>> plan.decide(0).kind in (None, "error")
True
"""

from __future__ import annotations

import asyncio
import math
import random
import re
from dataclasses import dataclass, field

__all__ = [
    "FAULT_KINDS",
    "TRUNCATE_FRAMINGS",
    "FaultDecision",
    "FaultPlan",
    "Link",
    "parse_size",
]

FAULT_KINDS = ("error", "throttle", "reset", "truncate", "stall", "latency", "hdf_clash")
TRUNCATE_FRAMINGS = ("length", "chunked", "close")
_MAX_STALL = 3600.0
_MAX_LATENCY = 600.0

_SIZE = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?)b?\s*(?:/s)?\s*", re.IGNORECASE)


def parse_size(text: str | int | float) -> float:
    """Bytes from ``"16MB"`` (10**6 multiples), ``"16MiB"`` (2**20) or a plain number.

    >>> parse_size("16MB"), parse_size("1KiB"), parse_size("512")
    (16000000.0, 1024.0, 512.0)
    """
    if isinstance(text, int | float):
        return float(text)
    match = _SIZE.fullmatch(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (use e.g. 16MB, 16MiB or 1000000)")
    number, prefix, binary = match.groups()
    power = " kmgt".index(prefix.lower() or " ")
    return float(number) * float((1024 if binary else 1000) ** power)


@dataclass(frozen=True)
class FaultDecision:
    """What happens to one data request.

    ``kind`` is ``None`` (served normally, maybe slowly), ``"error"``, ``"throttle"``,
    ``"reset"``, ``"truncate"`` or ``"stall"``. ``cut`` is the fraction of the body sent
    before a reset, truncation or stall; ``framing`` how a truncated body is framed.
    """

    kind: str | None
    status: int = 200
    cut: float = 1.0
    framing: str = "length"


@dataclass(frozen=True)
class FaultPlan:
    """Faults injected into *data* requests (table requests answering array bodies, not ``info``).

    Args:
        seed: makes every decision reproducible (see module docstring).
        latency: seconds before the response headers.
        bandwidth: bytes/s per response (``None``: unlimited).
        total_bandwidth: bytes/s shared by all responses (one token bucket).
        error_rate: probability of answering one of ``error_statuses`` (picked at random).
        error_statuses: statuses for ``error_rate``; the first also serves ``fail_first``.
        fail_first: the first N data requests get ``error_statuses[0]``.
        throttle_rate: probability of 429 with ``Retry-After: retry_after``.
        reset_rate: probability of aborting the connection (TCP RST) mid-body.
        truncate_rate: probability of cutting the body mid-way and closing the connection.
        truncate_framing: ``"length"`` (Content-Length declared), ``"chunked"`` (no final
            chunk), ``"close"`` (no length, ``Connection: close``: aiohttp clients see a
            short body and no error) or ``"mixed"`` (one of the three per request).
        stall_rate: probability of sending part of the body, then nothing for
            ``stall_seconds`` (then the connection is dropped).
        hdf_name_clash: answer 500 to a ``format:hdf`` request that arrives while another
            one is being exported, as a real multi-threaded BisQue does: its exporter
            builds every image in one in-memory file named ``array.h5``, and PyTables
            refuses to open a name that is already open. The window here is from the
            start of the export until its body is sent.
        latency: also delays every other request (service discovery, session, info):
            it is the link's round trip, not a property of data requests.
    """

    seed: int = 0
    latency: float = 0.0
    bandwidth: float | None = None
    total_bandwidth: float | None = None
    error_rate: float = 0.0
    error_statuses: tuple[int, ...] = (503,)
    fail_first: int = 0
    throttle_rate: float = 0.0
    retry_after: str = "1"
    reset_rate: float = 0.0
    truncate_rate: float = 0.0
    truncate_framing: str = "length"
    stall_rate: float = 0.0
    stall_seconds: float = 30.0
    hdf_name_clash: bool = False
    _rates: tuple[str, ...] = field(
        default=("error_rate", "throttle_rate", "reset_rate", "truncate_rate", "stall_rate"),
        init=False,
        repr=False,
        compare=False,
    )

    def __post_init__(self) -> None:
        for name in self._rates:
            rate = getattr(self, name)
            if not (isinstance(rate, int | float) and 0.0 <= rate <= 1.0):
                raise ValueError(f"{name} must be between 0 and 1, got {rate!r}")
        if not (0.0 <= self.latency <= _MAX_LATENCY):
            raise ValueError(
                f"latency must be between 0 and {_MAX_LATENCY} s, got {self.latency!r}"
            )
        if not (0.0 <= self.stall_seconds <= _MAX_STALL):
            raise ValueError(f"stall_seconds must be between 0 and {_MAX_STALL} s")
        for name in ("bandwidth", "total_bandwidth"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number of bytes/s or None")
        statuses = tuple(int(s) for s in self.error_statuses)
        if not statuses or any(not 400 <= s <= 599 for s in statuses):
            raise ValueError(f"error_statuses must be 4xx/5xx codes, got {self.error_statuses!r}")
        object.__setattr__(self, "error_statuses", statuses)
        if self.fail_first < 0:
            raise ValueError("fail_first must be >= 0")
        object.__setattr__(self, "retry_after", str(self.retry_after))
        if self.truncate_framing not in (*TRUNCATE_FRAMINGS, "mixed"):
            raise ValueError(
                f"truncate_framing must be one of {(*TRUNCATE_FRAMINGS, 'mixed')}, "
                f"got {self.truncate_framing!r}"
            )

    def decide(self, n: int) -> FaultDecision:
        """The fault for the ``n``-th data request (counting from 0)."""
        rng = random.Random(f"{self.seed}:{n}")
        # draw everything, always in the same order, so changing one rate does not
        # reshuffle the other decisions
        draws = [rng.random() for _ in self._rates]
        status = rng.choice(self.error_statuses)
        cut = rng.uniform(0.1, 0.9)
        framing = rng.choice(TRUNCATE_FRAMINGS)
        if self.truncate_framing != "mixed":
            framing = self.truncate_framing
        if n < self.fail_first:
            return FaultDecision("error", self.error_statuses[0])
        error, throttle, reset, truncate, stall = (
            d < getattr(self, name) for d, name in zip(draws, self._rates, strict=True)
        )
        if error:
            return FaultDecision("error", status)
        if throttle:
            return FaultDecision("throttle", 429)
        if reset:
            return FaultDecision("reset", cut=cut)
        if truncate:
            return FaultDecision("truncate", cut=cut, framing=framing)
        if stall:
            return FaultDecision("stall", cut=cut)
        return FaultDecision(None)


class Link:
    """A shared bandwidth cap: a virtual clock handing out transmission slots in FIFO order.

    Each ``await reserve(n)`` books ``n / rate`` seconds after the previous booking and
    waits for its slot's start, so the long-run rate of all callers together is ``rate``.
    """

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._next = 0.0

    async def reserve(self, nbytes: int) -> None:
        """Wait until ``nbytes`` may be sent."""
        now = asyncio.get_running_loop().time()
        start = max(now, self._next)
        self._next = start + nbytes / self.rate
        if start > now:
            await asyncio.sleep(start - now)
