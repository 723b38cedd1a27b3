"""The ``request_bytes`` x ``concurrency`` sweep that chose the defaults in ``aiobisque.config``.

``python -m benchmarks sweep`` runs ``aiobisque-asyncio`` with every combination on the WAN
and Loopback scenarios (repeats interleaved, like the main run) and writes the ``sweep``
section of ``RESULTS.md``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from aiobisque.config import MiB
from benchmarks.harness import Entrant

__all__ = ["CONCURRENCY", "REQUEST_MIB", "grid"]

REQUEST_MIB: tuple[float, ...] = (1, 2, 4, 8)
CONCURRENCY: tuple[int, ...] = (4, 8, 16, 32)


def grid(request_mib: Sequence[float], concurrency: Sequence[int],
         contender: str = "aiobisque-asyncio") -> list[Entrant]:
    """One entrant per combination, request size first."""
    return [
        Entrant(contender, (("request_bytes", int(mib * MiB)), ("concurrency", c)))
        for mib, c in itertools.product(request_mib, concurrency)
    ]
