"""Cutting a result array into C-contiguous blocks (pure geometry, no I/O).

The bulk downloader writes, syncs and journals a download block by block, and the dask
adapter makes one dask chunk per block: both cut the array the same way, here. A block
takes one index along the slow axes, a run of rows along one axis and whole faster axes,
so each block is one contiguous run of the C-ordered array: one range request for the
server, one sequential write for a file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["BlockGrid"]


@dataclass(frozen=True)
class BlockGrid:
    """A result array of ``shape`` cut into C-contiguous blocks.

    Along axes before ``axis`` each block takes one index; along ``axis`` it takes
    ``rows`` indices (fewer in the last block); later axes are whole. So every block is one
    contiguous run of the C-ordered result, at element offset :meth:`offset`.
    """

    shape: tuple[int, ...]
    axis: int
    rows: int

    @classmethod
    def fit(
        cls,
        shape: tuple[int, ...],
        itemsize: int,
        block_bytes: int,
        align: BlockGrid | None = None,
    ) -> BlockGrid:
        """The grid of the largest blocks of at most ``block_bytes`` (at least one element).

        With ``align`` (an HDF5 chunk grid), blocks cover whole chunks wherever possible,
        so no chunk is written (and compressed) twice.
        """
        if not shape:
            return cls((), 0, 1)
        ndim = len(shape)
        budget = max(1, block_bytes // max(1, itemsize))  # elements per block
        axis = ndim - 1
        for k in range(ndim):
            if math.prod(shape[k + 1:]) <= budget:
                axis = k
                break
        inner = math.prod(shape[axis + 1:])
        rows = max(1, min(shape[axis], budget // max(1, inner)))
        if align is not None and align.axis == axis and align.rows < rows:
            rows = rows // align.rows * align.rows
        return cls(tuple(shape), axis, rows)

    @property
    def _per_axis(self) -> int:
        return -(-self.shape[self.axis] // self.rows) if self.shape else 1

    def __len__(self) -> int:
        if math.prod(self.shape) == 0:
            return 0
        if not self.shape:
            return 1
        return math.prod(self.shape[: self.axis]) * self._per_axis

    def _locate(self, block: int) -> tuple[tuple[int, ...], int, int]:
        if not 0 <= block < len(self):
            raise IndexError(f"block {block} is not in a grid of {len(self)}")
        if not self.shape:
            return (), 0, 1
        outer, j = divmod(block, self._per_axis)
        lead = tuple(int(i) for i in np.unravel_index(outer, self.shape[: self.axis])) \
            if self.axis else ()
        start = j * self.rows
        stop = min(self.shape[self.axis], start + self.rows)
        return lead, start, stop

    def shape_counts(self) -> dict[tuple[int, ...], int]:
        """How many blocks have each block shape (at most two shapes), without listing them.

        Every block is full but the last one along ``axis`` of each run, which may be
        shorter; so totals over a grid of millions of blocks cost nothing.
        """
        if len(self) == 0:
            return {}
        if not self.shape:
            return {(): 1}
        outer = math.prod(self.shape[: self.axis])
        last = self.shape[self.axis] - (self._per_axis - 1) * self.rows
        counts: dict[tuple[int, ...], int] = {}
        for rows, n in ((self.rows, self._per_axis - 1), (last, 1)):
            if n:
                shape = (1,) * self.axis + (rows,) + self.shape[self.axis + 1:]
                counts[shape] = counts.get(shape, 0) + n * outer
        return counts

    def region(self, block: int) -> tuple[slice, ...]:
        """The block's place in the result: one slice per axis (length 1 before ``axis``)."""
        lead, start, stop = self._locate(block)
        if not self.shape:
            return ()
        rest = (slice(None),) * (len(self.shape) - self.axis - 1)
        return (*(slice(i, i + 1) for i in lead), slice(start, stop), *rest)

    def block_shape(self, block: int) -> tuple[int, ...]:
        _, start, stop = self._locate(block)
        if not self.shape:
            return ()
        return (1,) * self.axis + (stop - start,) + self.shape[self.axis + 1:]

    def offset(self, block: int) -> int:
        """Element offset of the block's first element in the C-ordered result."""
        lead, start, _ = self._locate(block)
        if not self.shape:
            return 0
        outer = int(np.ravel_multi_index(lead, self.shape[: self.axis])) if self.axis else 0
        return (outer * self.shape[self.axis] + start) * math.prod(self.shape[self.axis + 1:])
