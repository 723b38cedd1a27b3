"""The adaptive window: how many requests a session keeps in flight (pure, no I/O).

A :class:`Window` is told what each request's end looked like (bytes delivered, time to its
first byte, success or which kind of failure) and the time, and answers with
:attr:`Window.limit`. The :class:`~aiobisque.fetch.Limiter` holds one per session and does
the waiting; this module only decides, so every rule below is unit-tested with a fake clock.

The rules, in order of precedence:

* **Congestion** (429, 503, timeouts; see :func:`aiobisque.retry.is_congestion`) halves the
  window, once per burst: failures within :data:`CUT_GAP` seconds of a cut are one signal.
* **A burst of other 5xx** (:data:`ERROR_BURST` within :data:`ERROR_SPAN` seconds) halves
  a window grown beyond its start, not below it: real BisQue servers answer 500 when
  concurrent ``format:hdf`` exports clash, so a run of them after growing means this
  session added too many. A lone 500 does not count, and neither does a run at the start
  size: a server whose exports clash at any concurrency (one exporter) is served fastest
  by retried requests that keep its exporter busy (measured: a window halved down to its
  floor took 3x as long), and a server with random 500s is no busier for fewer requests.
* **Rising latency**: when the requests of a round waited, on average, more than
  :data:`LATENCY_RISE` times the least time to first byte seen (plus :data:`LATENCY_SLACK`
  seconds) while the window is beyond its start, the server is queueing what this session
  added; the window shrinks by a quarter, not below its start.
* **Growth**, only while requests are queued for a slot (more demand than window): in the
  start phase by one per success (the window doubles every round trip) for as long as
  each round delivers clearly more than the one before (:data:`GAIN`); once a round brings
  no gain, the window falls back to the last size that paid (with a quarter of headroom)
  and from then on grows by one per round only.

A *round* is as many completions as the window allows requests at its start: about one
round trip's worth.
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["CUT_GAP", "ERROR_BURST", "ERROR_SPAN", "GAIN", "START", "Window"]

#: requests in flight when a session starts (and no more than its ceiling)
START = 16
#: a round's delivery must exceed the previous round's by this factor to keep doubling
GAIN = 1.15
#: seconds after a cut during which further congestion is the same signal
CUT_GAP = 1.0
#: this many 5xx answers within ERROR_SPAN seconds are a congestion signal
ERROR_BURST = 3
ERROR_SPAN = 1.0
#: a round whose mean time to first byte exceeds LATENCY_RISE x the least seen (+ slack)
LATENCY_RISE = 2.0
LATENCY_SLACK = 0.05


class Window:
    """Requests allowed in flight, between ``floor`` and ``ceiling``.

    With ``adaptive=False`` the window is the ceiling and never moves.

    >>> w = Window(ceiling=64, floor=2)
    >>> w.limit
    16
    >>> w.on_congestion(now=10.0); w.limit
    8
    """

    def __init__(self, ceiling: int, floor: int = 1, *, adaptive: bool = True,
                 start: int = START):
        self.ceiling = max(1, ceiling)
        self.floor = max(1, min(floor, self.ceiling))
        self.adaptive = adaptive
        self.size = float(self.ceiling if not adaptive
                          else min(self.ceiling, max(self.floor, start)))
        self._start = self.size
        self.starting = adaptive  # the doubling phase, until a round brings no gain
        self._cut_at = -math.inf
        self._errors: deque[float] = deque()
        self._least_wait = math.inf
        # the current round
        self._round_start: float | None = None
        self._round_size = self.size
        self._round_done = 0
        self._round_bytes = 0
        self._round_wait = 0.0
        self._round_full = True  # every completion of the round had requests queued
        # the previous full round: (its window, what it delivered per second)
        self._last: tuple[float, float] | None = None

    @property
    def limit(self) -> int:
        return max(self.floor, min(self.ceiling, int(self.size)))

    # signals -----------------------------------------------------------------------

    def on_success(self, *, nbytes: int, wait: float, now: float, queued: bool) -> None:
        """A request ended well: ``nbytes`` delivered, its first byte after ``wait`` s;
        ``queued``: other requests were waiting for a slot when it ended."""
        if not self.adaptive:
            return
        self._least_wait = min(self._least_wait, wait)
        if self._round_start is None:
            self._begin_round(now)
        self._round_done += 1
        self._round_bytes += nbytes
        self._round_wait += wait
        self._round_full = self._round_full and queued
        if queued:
            self.size = min(float(self.ceiling),
                            self.size + (1.0 if self.starting else 1.0 / self.size))
        if self._round_done >= max(1, int(self._round_size)):
            self._end_round(now)

    def on_congestion(self, now: float) -> None:
        """The server said it is overloaded (429, 503) or a request timed out."""
        if not self.adaptive:
            return
        self.starting = False
        if now - self._cut_at > CUT_GAP:
            self._shrink(0.5, now, least=self.floor)

    def on_server_error(self, now: float) -> None:
        """A 5xx that is not a congestion status by itself (500, 502, 504...)."""
        if not self.adaptive:
            return
        self._errors.append(now)
        while self._errors and now - self._errors[0] > ERROR_SPAN:
            self._errors.popleft()
        if len(self._errors) >= ERROR_BURST:
            self._errors.clear()
            if self.size > self._start and now - self._cut_at > CUT_GAP:
                self.starting = False
                self._shrink(0.5, now, least=self._start)

    # rounds ------------------------------------------------------------------------

    def _begin_round(self, now: float) -> None:
        self._round_start = now
        self._round_size = self.size
        self._round_done = 0
        self._round_bytes = 0
        self._round_wait = 0.0
        self._round_full = True

    def _end_round(self, now: float) -> None:
        assert self._round_start is not None
        elapsed = max(now - self._round_start, 1e-6)
        # what a round delivered: bytes and requests both count (info answers are tiny)
        rate = (self._round_bytes + 64 * 1024 * self._round_done) / elapsed
        mean_wait = self._round_wait / max(1, self._round_done)
        if mean_wait > LATENCY_RISE * self._least_wait + LATENCY_SLACK \
                and self.size > self._start and now - self._cut_at > CUT_GAP:
            # only a window grown beyond its start is to blame: a server slow to begin
            # its answers at the start size is slow, not overloaded by this session
            self.starting = False
            self._shrink(0.75, now, least=self._start)
            return  # the next round starts afresh at the new size, with its next answer
        if self._round_full and self.starting and self._last is not None:
            last_size, last_rate = self._last
            if self._round_size > last_size * 1.1 and rate < last_rate * GAIN:
                # a bigger window delivered no more: the link (or server) is full
                self.starting = False
                self.size = max(float(self.floor), min(self.size, last_size * 1.25))
        self._last = (self._round_size, rate) if self._round_full else None
        self._begin_round(now)

    def _shrink(self, factor: float, now: float, *, least: float) -> None:
        self.size = max(float(least), self.size * factor)
        self._cut_at = now
        self._last = None
        self._round_start = None  # the next round starts afresh at the new size
