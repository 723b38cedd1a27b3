"""Normalising numpy basic indexing into per-dimension selections (pure code, no I/O).

A selection such as ``np.s_[..., 3:-1:2, None, -1]`` on an array of a given shape becomes one
:class:`DimSelection` per source dimension plus the layout of the result (which dimensions are
dropped by an integer index, where ``None`` inserts a new axis). The planner works only with
the normalised form, so every numpy subtlety (negative indices, negative steps, clamping of
slice bounds, ``Ellipsis``) is handled here, once, and tested against numpy itself.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiobisque.errors import SelectionError

__all__ = ["DimSelection", "Selection", "bqapi_selection", "expand_index", "normalize_selection"]


@dataclass(frozen=True)
class DimSelection:
    """The elements selected along one source dimension, in output order.

    Output position ``k`` (``0 <= k < count``) reads source index ``first + k * step``.
    ``drop`` is true when an integer index removed this dimension from the result.
    """

    first: int
    step: int
    count: int
    drop: bool = False

    @property
    def lo(self) -> int:
        """Smallest source index selected (meaningless when ``count == 0``)."""
        return self.first if self.step > 0 else self.first + (self.count - 1) * self.step

    @property
    def stride(self) -> int:
        """Distance between selected source indices, always positive."""
        return abs(self.step)

    @property
    def flipped(self) -> bool:
        """True when the output runs against the source order (a negative step)."""
        return self.step < 0 and self.count > 1


@dataclass(frozen=True)
class Selection:
    """A normalised selection: one entry per source dimension plus the result layout.

    ``layout`` follows the index as written: each entry is a source dimension number, or
    ``None`` for a new axis. A dimension dropped by an integer stays in ``layout`` (so the
    interleaving with new axes is known) and is skipped in ``shape``. ``core_shape`` is the
    selection with dropped dimensions kept as length 1 and no new axes: the shape the
    planner fills.
    """

    dims: tuple[DimSelection, ...]
    layout: tuple[int | None, ...]

    @property
    def core_shape(self) -> tuple[int, ...]:
        return tuple(d.count for d in self.dims)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(
            1 if src is None else self.dims[src].count
            for src in self.layout
            if src is None or not self.dims[src].drop
        )

    @property
    def size(self) -> int:
        n = 1
        for d in self.dims:
            n *= d.count
        return n

    def core_to_result(self) -> tuple[Any, ...]:
        """Index turning a ``core_shape`` array into the result's shape (a view)."""
        return tuple(
            None if src is None else (0 if self.dims[src].drop else slice(None))
            for src in self.layout
        )

    def narrow(self, region: Sequence[slice]) -> Selection:
        """The part of this selection that fills ``result[region]``.

        ``region`` has one step-1 slice per result axis (a block of the result, as
        :meth:`aiobisque.blocks.BlockGrid.region` gives). The narrowed selection keeps the
        layout (dropped dimensions, new axes), so its result has the region's shape; no
        numpy index is built and normalised again.

        >>> sel = normalize_selection((slice(None, None, -1), 2), (10, 5))
        >>> sub = sel.narrow((slice(0, 3),))
        >>> sub.shape, sub.dims[0].first, sub.dims[0].step
        ((3,), 9, -1)
        """
        shape = self.shape
        if len(region) != len(shape):
            raise ValueError(f"region has {len(region)} slices for a {len(shape)}-d result")
        dims = list(self.dims)
        axis = 0  # result axis
        for src in self.layout:
            if src is not None and self.dims[src].drop:
                continue
            lo, hi, step = region[axis].indices(shape[axis])
            if step != 1:
                raise ValueError(f"region slices must have step 1, got {region[axis]}")
            if src is not None:
                d = self.dims[src]
                count = max(0, hi - lo)
                dims[src] = DimSelection(d.first + lo * d.step if count else 0, d.step, count)
            elif hi - lo != 1:
                raise ValueError("a new axis has length 1: its region must be one index")
            axis += 1
        return Selection(tuple(dims), self.layout)

    def result_to_core(self) -> tuple[Any, ...]:
        """Index turning a result-shaped array into a ``core_shape`` view (for ``out=``)."""
        return tuple(
            0 if src is None else (None if self.dims[src].drop else slice(None))
            for src in self.layout
        )


def _as_index(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise SelectionError(f"{what}: booleans are not indices (got {value!r})")
    try:
        return operator.index(value)
    except TypeError:
        shown = (f"an array of shape {value.shape}" if hasattr(value, "shape")
                 else f"{type(value).__name__} {_short(value)}")
        raise SelectionError(
            f"{what}: only integers, slices, Ellipsis and None are supported "
            f"(numpy basic indexing); got {shown}"
        ) from None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _dim_from_slice(s: slice, size: int, axis: int) -> DimSelection:
    start = None if s.start is None else _as_index(s.start, f"slice start on axis {axis}")
    stop = None if s.stop is None else _as_index(s.stop, f"slice stop on axis {axis}")
    step = 1 if s.step is None else _as_index(s.step, f"slice step on axis {axis}")
    if step == 0:
        raise SelectionError(f"slice step cannot be zero (axis {axis})")
    first, stop_, step_ = slice(start, stop, step).indices(size)
    count = len(range(first, stop_, step_))
    return DimSelection(first if count else 0, step_, count)


def _dim_from_int(value: Any, size: int, axis: int) -> DimSelection:
    i = _as_index(value, f"index on axis {axis}")
    if not -size <= i < size:
        raise SelectionError(f"index {i} is out of bounds for axis {axis} with size {size}")
    return DimSelection(i % size, 1, 1, drop=True)


def expand_index(selection: Any, ndim: int) -> list[Any]:
    """The index as a list with ``...`` replaced and missing trailing dimensions filled.

    Every entry but ``None`` (new axes) then stands for one of the ``ndim`` dimensions.

    >>> expand_index((Ellipsis, 0), 3)
    [slice(None, None, None), slice(None, None, None), 0]
    """
    if not isinstance(selection, tuple):
        selection = (selection,)
    n_ellipsis = sum(1 for s in selection if s is Ellipsis)
    if n_ellipsis > 1:
        raise SelectionError("an index can only have a single ellipsis ('...')")
    n_real = sum(1 for s in selection if s is not None and s is not Ellipsis)
    if n_real > ndim:
        raise SelectionError(
            f"too many indices for array: array is {ndim}-dimensional, "
            f"but {n_real} were indexed"
        )
    expanded: list[Any] = []
    for s in selection:
        if s is Ellipsis:
            expanded.extend([slice(None)] * (ndim - n_real))
        else:
            expanded.append(s)
    if n_ellipsis == 0:
        expanded.extend([slice(None)] * (ndim - n_real))
    return expanded


def normalize_selection(selection: Any, shape: Sequence[int]) -> Selection:
    """Normalise a numpy basic index for an array of ``shape``.

    >>> normalize_selection((slice(None, None, -2), 1), (5, 3)).shape
    (3,)
    """
    expanded = expand_index(selection, len(shape))
    dims: list[DimSelection] = []
    layout: list[int | None] = []
    for s in expanded:
        if s is None:
            layout.append(None)
            continue
        axis = len(dims)
        size = int(shape[axis])
        if isinstance(s, slice):
            dims.append(_dim_from_slice(s, size, axis))
            layout.append(axis)
        else:
            dims.append(_dim_from_int(s, size, axis))
            layout.append(axis)
    return Selection(tuple(dims), tuple(layout))


def bqapi_selection(slices: Sequence[Any] | None, shape: Sequence[int]) -> Selection:
    """Normalise ``bqapi``'s ``load_array(..., slices=[...])`` argument.

    As in ``bqapi``, a ``slice`` selects a range, an ``int`` keeps a length-1 dimension and
    missing trailing dimensions are whole. Unlike ``bqapi``, negative indices and steps work.
    """
    if slices is None:
        slices = []
    if isinstance(slices, (slice, int)) or not isinstance(slices, Sequence):
        raise SelectionError(
            f"slices must be a list of slice or int, one per leading dimension; got {slices!r}"
        )
    converted: list[Any] = []
    for axis, s in enumerate(slices):
        if axis >= len(shape):
            raise SelectionError(
                f"too many slices: array is {len(shape)}-dimensional, got {len(slices)}"
            )
        if isinstance(s, slice):
            converted.append(s)
        else:
            i = _dim_from_int(s, int(shape[axis]), axis).first
            converted.append(slice(i, i + 1))
    return normalize_selection(tuple(converted), shape)
