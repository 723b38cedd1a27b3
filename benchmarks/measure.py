"""Wall time, CPU time and peak resident-memory growth of one block of code, in-process.

The block runs in a process of its own (see :mod:`benchmarks.contenders`), so everything the
process does in it is the contender's: CPU is the process's user + system time (all threads,
decode workers included), page faults are the minor faults (first touches of fresh memory,
a large share of a download's system time), and memory is the rise of the resident set's high-water mark above
the resident set at the start of the block.

On Linux the high-water mark is reset to the current RSS at the start (writing ``5`` to
``/proc/self/clear_refs``), so an earlier transient peak (imports, setup) cannot hide or
inflate the block's own; elsewhere ``ru_maxrss`` is used, which is exact only when the block
sets a new peak (it does for downloads, which allocate the whole array).
"""

from __future__ import annotations

import gc
import resource
import sys
import time
from dataclasses import dataclass
from types import TracebackType

__all__ = ["Measured", "measure"]

_STATUS = "/proc/self/status"


def _status_bytes(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in bytes, if readable."""
    try:
        with open(_STATUS, encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _maxrss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux KiB


def _reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
            clear.write("5")
    except OSError:
        return False
    return True


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


@dataclass
class Measured:
    """What :func:`measure` found: seconds, CPU seconds and bytes of RSS growth."""

    seconds: float = 0.0
    cpu_seconds: float = 0.0
    rss_base: int = 0
    rss_growth: int = 0
    exact_peak: bool = False  # the high-water mark was reset at the start
    page_faults: int = 0  # minor page faults (first touches of memory) during the block


class measure:  # lower case: used like a function, ``with measure() as m:``
    """Measure the enclosed block (sync or inside a coroutine).

    >>> with measure() as m:
    ...     block = bytearray(8 << 20)
    >>> m.seconds >= 0 and m.cpu_seconds >= 0
    True
    """

    def __init__(self) -> None:
        self.result = Measured()
        self._t0 = 0.0
        self._cpu0 = 0.0
        self._maxrss0 = 0
        self._faults0 = 0

    def __enter__(self) -> Measured:
        gc.collect()  # leftovers of setup must not be freed (or counted) during the block
        self.result.exact_peak = _reset_high_water_mark()
        self.result.rss_base = _status_bytes("VmRSS") or _maxrss_bytes()
        self._maxrss0 = _maxrss_bytes()
        self._faults0 = _minor_faults()
        self._cpu0 = time.process_time()  # all threads, user + system, ns resolution
        self._t0 = time.perf_counter()
        return self.result

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        r = self.result
        r.seconds = time.perf_counter() - self._t0
        r.cpu_seconds = time.process_time() - self._cpu0
        r.page_faults = _minor_faults() - self._faults0
        peak = _status_bytes("VmHWM") if r.exact_peak else None
        if peak is None:
            peak = max(_maxrss_bytes(), self._maxrss0)
            r.exact_peak = False
        r.rss_growth = max(0, peak - r.rss_base)
