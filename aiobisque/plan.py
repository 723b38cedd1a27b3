"""Planning a download: a normalised selection becomes BisQue range requests (pure, no I/O).

Each :class:`Request` is one BisQue hyperslab (an inclusive range per dimension), the shape
of the array the server will send for it, the local stride/flip that turns that array into
the selected elements, and the place those elements take in the output. The fetch loop does
nothing but ``out[req.out_sel] = chunk[req.chunk_sel]``.

How requests are sized:

* The budget is in bytes (``request_bytes``). Boxes are grown from the fastest (last)
  dimension outwards, so a request covers whole rows first and then whole planes; the first
  dimension that does not fit whole is cut, and every slower dimension gets one index per
  request. Each request therefore lands in a contiguous run of the output.
* A strided dimension (``::k``) is fetched either as a covering range, strided locally, or
  one selected index per request. The choice minimises a simple cost: bytes fetched plus a
  fixed per-request overhead (``request_overhead``), so ``::2`` is usually covered while
  ``::50`` on a slow dimension is split rather than downloading fifty times too much.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from aiobisque.selection import DimSelection, Selection
from aiobisque.window import START

__all__ = ["DimTile", "Plan", "Request", "ResumedPlan", "format_range", "make_plan",
           "request_size"]

#: Cost, in bytes, charged per request when choosing how to fetch strided dimensions.
DEFAULT_REQUEST_OVERHEAD = 256 * 1024
#: Exhaustive search over cover/split choices up to this many strided dimensions.
_MAX_EXHAUSTIVE = 10


@dataclass(frozen=True)
class DimTile:
    """One request's extent along one dimension."""

    lo: int  # first source index fetched (inclusive)
    hi: int  # last source index fetched (inclusive)
    chunk_sel: slice  # applied to the fetched chunk along this dimension
    out_sel: slice  # where the selected elements land in the core output

    @property
    def length(self) -> int:
        return self.hi - self.lo + 1


def format_range(box: Sequence[tuple[int, int]]) -> str:
    """BisQue's range text for inclusive boxes: ``"0;9,3,0;4"`` (``i`` when ``lo == hi``)."""
    return ",".join(str(lo) if lo == hi else f"{lo};{hi}" for lo, hi in box)


@dataclass(frozen=True)
class Request:
    """One range request of a plan."""

    index: int
    tiles: tuple[DimTile, ...]
    itemsize: int

    @property
    def box(self) -> tuple[tuple[int, int], ...]:
        return tuple((t.lo, t.hi) for t in self.tiles)

    @property
    def range_text(self) -> str:
        return format_range(self.box)

    @property
    def chunk_shape(self) -> tuple[int, ...]:
        return tuple(t.length for t in self.tiles)

    @property
    def chunk_sel(self) -> tuple[slice, ...]:
        return tuple(t.chunk_sel for t in self.tiles)

    @property
    def out_sel(self) -> tuple[slice, ...]:
        return tuple(t.out_sel for t in self.tiles)

    @property
    def nbytes(self) -> int:
        """Payload bytes the server sends for this request."""
        return math.prod(self.chunk_shape) * self.itemsize

    def __str__(self) -> str:
        return f"request #{self.index} [{self.range_text}]"

    @property
    def row_axis(self) -> int | None:
        """The slowest axis longer than one: a body's data arrives as whole rows of it.

        ``None`` for a single element, or when that axis is strided or flipped (its rows
        do not land as a prefix of the output).
        """
        for axis, tile in enumerate(self.tiles):
            if tile.length > 1:
                return axis if tile.chunk_sel == slice(None) else None
        return None

    def row_bytes(self) -> int:
        """Payload bytes of one row along :attr:`row_axis`."""
        axis = self.row_axis
        assert axis is not None
        return math.prod(self.chunk_shape[axis + 1:]) * self.itemsize

    def skip_rows(self, rows: int) -> Request:
        """This request without its first ``rows`` rows along :attr:`row_axis` (those have
        arrived): a smaller range, landing further into the output."""
        axis = self.row_axis
        assert axis is not None and 0 < rows < self.tiles[axis].length
        tile = self.tiles[axis]
        out = tile.out_sel
        start = (out.start or 0) + rows
        narrowed = DimTile(tile.lo + rows, tile.hi, tile.chunk_sel, slice(start, out.stop))
        return Request(self.index, (*self.tiles[:axis], narrowed, *self.tiles[axis + 1:]),
                       self.itemsize)


def _dim_tiles(d: DimSelection, box: int) -> tuple[DimTile, ...]:
    """Cut one dimension's selection into tiles of ``box`` selected elements."""
    sa = d.stride
    lo = d.lo
    tiles = []
    for k0 in range(0, d.count, box):
        k1 = min(k0 + box, d.count)
        length = (k1 - k0 - 1) * sa + 1
        if d.flipped:
            chunk_sel = slice(length - 1, None, -sa)
            out_sel = slice(d.count - k1, d.count - k0)
        else:
            chunk_sel = slice(None, None, sa) if sa != 1 else slice(None)
            out_sel = slice(k0, k1)
        tiles.append(DimTile(lo + k0 * sa, lo + (k1 - 1) * sa, chunk_sel, out_sel))
    return tuple(tiles)


def _fetched(count: int, stride: int, box: int) -> int:
    """Elements fetched along one dimension when its selection is cut into ``box`` tiles."""
    full, rest = divmod(count, box)
    total = full * ((box - 1) * stride + 1)
    if rest:
        total += (rest - 1) * stride + 1
    return total


def _boxes(
    dims: Sequence[DimSelection], split: Sequence[bool], budget_items: int
) -> list[int]:
    """Selected elements per request along each dimension, fastest dimension first to fit."""
    boxes = [1] * len(dims)
    inner = 1  # elements fetched per request by the dimensions already sized
    whole = True  # every faster dimension was taken whole (or one index per request)
    for axis in reversed(range(len(dims))):
        d = dims[axis]
        if split[axis] or not whole:
            continue  # one index per request
        full = (d.count - 1) * d.stride + 1
        if inner * full <= budget_items:
            boxes[axis] = max(1, d.count)
            inner *= full
            continue
        fit = budget_items // inner
        boxes[axis] = max(1, min(d.count, (fit - 1) // d.stride + 1 if fit >= 1 else 1))
        whole = False
    return boxes


@dataclass(frozen=True)
class Plan:
    """The requests that together fill a selection, generated lazily."""

    selection: Selection
    itemsize: int
    tiles: tuple[tuple[DimTile, ...], ...]

    def __len__(self) -> int:
        if self.selection.size == 0:
            return 0
        return math.prod(len(t) for t in self.tiles)

    def __iter__(self) -> Iterator[Request]:
        if self.selection.size == 0:
            return
        for index, combo in enumerate(itertools.product(*self.tiles)):
            yield Request(index, combo, self.itemsize)

    @property
    def nbytes(self) -> int:
        """Payload bytes fetched by all requests (more than the result when striding)."""
        if self.selection.size == 0:
            return 0
        return math.prod(sum(t.length for t in ts) for ts in self.tiles) * self.itemsize

    @property
    def out_nbytes(self) -> int:
        return self.selection.size * self.itemsize


@dataclass(frozen=True)
class ResumedPlan(Plan):
    """A plan of which the first rows of some requests are in the output already.

    ``landed`` maps a request's index to the rows (along its :attr:`Request.row_axis`;
    1 for a single element) that need not be fetched again: a request with all of them
    is left out, one with some is narrowed to the rest (:meth:`Request.skip_rows`).
    """

    landed: Mapping[int, int] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Request]:
        for req in super().__iter__():
            rows = self.landed.get(req.index, 0)
            axis = req.row_axis
            full = req.tiles[axis].length if axis is not None else 1
            if rows >= full:
                continue
            yield req.skip_rows(rows) if rows > 0 and axis is not None else req

    def __len__(self) -> int:
        return sum(1 for _ in self)

    @property
    def nbytes(self) -> int:
        return sum(r.nbytes for r in self)


#: smallest request :func:`request_size` makes to spread a small selection
MIN_SPLIT_BYTES = 256 * 1024


def request_size(nbytes: int, request_bytes: int, concurrency: int) -> int:
    """Bytes per request for a download of ``nbytes``: ``request_bytes``, or less so that
    a small download is shared by as many requests as may run at once from the start (the
    window's :data:`~aiobisque.window.START`, or ``concurrency`` when lower: one request
    is capped by one connection's bandwidth), but never below :data:`MIN_SPLIT_BYTES`
    (each request costs a round trip and a server export).

    >>> MiB = 2**20
    >>> request_size(16 * MiB, 4 * MiB, 256) // MiB, request_size(2**30, 4 * MiB, 256) // MiB
    (1, 4)
    """
    spread = min(START, concurrency)
    return min(request_bytes, max(MIN_SPLIT_BYTES, -(-nbytes // spread)))


def make_plan(
    selection: Selection,
    itemsize: int,
    request_bytes: int,
    *,
    request_overhead: int = DEFAULT_REQUEST_OVERHEAD,
) -> Plan:
    """Plan the requests for ``selection`` with about ``request_bytes`` per request.

    >>> from aiobisque.selection import normalize_selection
    >>> p = make_plan(normalize_selection(..., (100, 1000)), 4, 40_000)
    >>> len(p), next(iter(p)).range_text
    (10, '0;9,0;999')
    """
    if itemsize <= 0 or request_bytes <= 0:
        raise ValueError("itemsize and request_bytes must be positive")
    dims = selection.dims
    budget = max(1, request_bytes // itemsize)
    strided = [i for i, d in enumerate(dims) if d.stride > 1 and d.count > 1]

    def cost(split: Sequence[bool]) -> tuple[int, list[int]]:
        boxes = _boxes(dims, split, budget)
        n_req = math.prod(-(-d.count // b) for d, b in zip(dims, boxes, strict=True))
        fetched = math.prod(
            _fetched(d.count, d.stride, b) for d, b in zip(dims, boxes, strict=True)
        )
        return fetched * itemsize + n_req * request_overhead, boxes

    no_split = [False] * len(dims)
    best_cost, best_boxes = cost(no_split)
    if strided and selection.size:
        if len(strided) <= _MAX_EXHAUSTIVE:
            choices: Iterator[Sequence[int]] = itertools.chain.from_iterable(
                itertools.combinations(strided, r) for r in range(1, len(strided) + 1)
            )
        else:  # too many to enumerate: try splitting the most wasteful ones
            by_waste = sorted(strided, key=lambda i: -dims[i].stride)
            choices = (by_waste[:r] for r in range(1, len(by_waste) + 1))
        for chosen in choices:
            split = list(no_split)
            for i in chosen:
                split[i] = True
            c, boxes = cost(split)
            if c < best_cost:
                best_cost, best_boxes = c, boxes
    tiles = tuple(_dim_tiles(d, b) for d, b in zip(dims, best_boxes, strict=True))
    return Plan(selection, itemsize, tiles)
