"""The server side of BisQue's range grammar: ``"0;4,2,;"`` -> a tuple of slices.

One comma-separated entry per dimension, first dimension first:

=========  ============================================
``i``      one index (the dimension is kept, length 1)
``i;j``    ``i`` to ``j`` *inclusive* (``i:j`` is the same)
``i;``     ``i`` to the end
``;j``     0 to ``j`` inclusive
``;``      the whole dimension (so is an empty entry)
=========  ============================================

Missing trailing entries mean whole dimensions. Negative indices, steps, more entries than
dimensions, a start beyond the end or a stop before the start are errors
(:class:`RangeError`, answered with 400). A stop beyond the end is clamped, as numpy and
PyTables clamp slices.

>>> parse_range("1;2,3", (5, 5, 5))
(slice(1, 3, None), slice(3, 4, None), slice(0, 5, None))
"""

from __future__ import annotations

import re

__all__ = ["RangeError", "is_range_like", "parse_range"]

# Characters a range component may contain. Anything made only of these (and also "-", "+",
# "." and blanks, so that "-1" or "1.5" get a 400 rather than "no such node") is treated as
# a range attempt once the HDF path has been consumed.
_RANGE_LIKE = re.compile(r"[0-9:;,+\-. ]*")
_INDEX = re.compile(r"[0-9]+")


class RangeError(ValueError):
    """A range string that does not fit the grammar or the node's shape (HTTP 400)."""


def is_range_like(component: str) -> bool:
    """True when an (unquoted) path component should be parsed as a range."""
    return _RANGE_LIKE.fullmatch(component) is not None


def _index(text: str, entry: str) -> int:
    text = text.strip()
    if not _INDEX.fullmatch(text):
        raise RangeError(f"bad index {text!r} in range entry {entry!r}")
    return int(text)


def _entry(entry: str, size: int, dim: int) -> slice:
    parts = re.split(r"[;:]", entry)
    if len(parts) == 1:
        if not parts[0].strip():
            return slice(0, size)
        start = _index(parts[0], entry)
        stop = start + 1
    elif len(parts) == 2:
        start = _index(parts[0], entry) if parts[0].strip() else 0
        # the stop is inclusive on the wire
        stop = _index(parts[1], entry) + 1 if parts[1].strip() else size
    else:
        raise RangeError(f"bad range entry {entry!r}: steps are not supported")
    if start >= size and not (start == 0 and size == 0):
        raise RangeError(f"range entry {entry!r} starts beyond dimension {dim} of size {size}")
    if stop <= start and size > 0:
        raise RangeError(f"range entry {entry!r} ends before it starts")
    return slice(start, min(stop, size))


def parse_range(text: str, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """Parse a range component against ``shape``; one slice per dimension of ``shape``."""
    text = text.strip()
    entries = text.split(",") if text else []
    if len(entries) > len(shape):
        raise RangeError(f"range {text!r} has {len(entries)} entries for {len(shape)} dimensions")
    slices = [_entry(entry, shape[dim], dim) for dim, entry in enumerate(entries)]
    slices.extend(slice(0, size) for size in shape[len(entries) :])
    return tuple(slices)
