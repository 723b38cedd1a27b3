"""Selection normalising and planning, checked against numpy itself (no I/O)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiobisque.errors import SelectionError
from aiobisque.plan import format_range, make_plan
from aiobisque.selection import bqapi_selection, normalize_selection


def simulate(a: np.ndarray, sel: Any, request_bytes: int, *, bqapi: bool = False) -> np.ndarray:
    """Run a plan against an in-memory 'server' exactly as the fetch loop does."""
    s = bqapi_selection(sel, a.shape) if bqapi else normalize_selection(sel, a.shape)
    plan = make_plan(s, a.itemsize, request_bytes)
    core = np.full(s.core_shape, -1, dtype=a.dtype)
    seen = 0
    for req in plan:
        for (lo, hi), n in zip(req.box, a.shape, strict=True):
            assert 0 <= lo <= hi < n  # every range is valid for the server
        chunk = a[tuple(slice(lo, hi + 1) for lo, hi in req.box)]
        assert chunk.shape == req.chunk_shape
        core[req.out_sel] = chunk[req.chunk_sel]
        seen += 1
    assert seen == len(plan)
    return core[s.core_to_result()]


@st.composite
def array_and_index(draw: st.DrawFn) -> tuple[np.ndarray, tuple[Any, ...]]:
    shape = tuple(draw(st.lists(st.integers(0, 7), min_size=1, max_size=5)))
    a = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    index: list[Any] = []
    for n in shape:
        if n and draw(st.booleans()) and draw(st.booleans()):
            index.append(draw(st.integers(-n, n - 1)))
        else:
            bound = st.one_of(st.none(), st.integers(-n - 3, n + 3))
            step = st.one_of(st.none(), st.integers(-9, 9).filter(lambda x: x != 0))
            index.append(slice(draw(bound), draw(bound), draw(step)))
    # trim trailing entries (numpy fills them), add new axes and an ellipsis at random
    index = index[: draw(st.integers(0, len(index)))]
    for _ in range(draw(st.integers(0, 2))):
        index.insert(draw(st.integers(0, len(index))), None)
    if draw(st.booleans()):
        pos = draw(st.integers(0, len(index)))
        index.insert(pos, Ellipsis)
    return a, tuple(index)


@settings(max_examples=400, deadline=None)
@given(array_and_index(), st.sampled_from([8, 24, 64, 200, 1 << 20]))
def test_plan_matches_numpy(case: tuple[np.ndarray, tuple[Any, ...]], request_bytes: int) -> None:
    a, index = case
    try:
        expected = a[index]
    except IndexError:
        with pytest.raises(SelectionError):  # numpy refuses it: so do we, the same way
            simulate(a, index, request_bytes)
        return
    got = simulate(a, index, request_bytes)
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


@settings(max_examples=150, deadline=None)
@given(array_and_index())
def test_requests_respect_budget(case: tuple[np.ndarray, tuple[Any, ...]]) -> None:
    a, index = case
    try:
        s = normalize_selection(index, a.shape)
    except SelectionError:
        return
    budget = 5 * a.itemsize
    for req in make_plan(s, a.itemsize, budget):
        # one element per dimension is the floor; otherwise the budget holds
        assert req.nbytes <= budget or all(lo == hi for lo, hi in req.box)


def test_whole_rows_first_then_slowest_dims() -> None:
    s = normalize_selection(..., (100, 50, 40))
    plan = make_plan(s, 4, 50 * 40 * 4 * 10)  # ten planes per request
    reqs = list(plan)
    assert len(reqs) == 10
    assert reqs[0].range_text == "0;9,0;49,0;39"
    assert reqs[-1].range_text == "90;99,0;49,0;39"
    assert plan.nbytes == plan.out_nbytes == 100 * 50 * 40 * 4


def test_small_step_is_covered_large_step_on_slow_dim_is_split() -> None:
    covered = make_plan(normalize_selection(np.s_[:, ::2], (64, 1024)), 4, 1 << 20)
    assert len(covered) == 1 and covered.nbytes < 2 * covered.out_nbytes + 1024 * 4
    split = make_plan(normalize_selection(np.s_[::50], (1000, 1000)), 8, 4 << 20)
    # twenty rows wanted: fetch them one by one rather than 50x the bytes
    assert split.nbytes == split.out_nbytes
    assert len(split) == 20


def test_empty_selection_plans_no_request() -> None:
    for index in (np.s_[3:3], np.s_[:, 5:0], np.s_[::-1, 10:]):
        s = normalize_selection(index, (10, 10))
        assert len(make_plan(s, 4, 1024)) == 0


def test_format_range_uses_inclusive_grammar() -> None:
    assert format_range([(0, 9), (3, 3), (0, 4)]) == "0;9,3,0;4"


def test_bqapi_ints_keep_dimension_and_missing_dims_are_whole() -> None:
    a = np.arange(5 * 5 * 5 * 1).reshape(5, 5, 5, 1)
    got = simulate(a, [slice(0, 2), 3], 1 << 20, bqapi=True)
    assert got.shape == (2, 1, 5, 1)
    np.testing.assert_array_equal(got, a[0:2, 3:4])
    got = simulate(a, [-1, slice(None, None, -2)], 1 << 20, bqapi=True)
    np.testing.assert_array_equal(got, a[4:5, ::-2])


@pytest.mark.parametrize(
    ("index", "message"),
    [
        (np.s_[5], "out of bounds"),
        (np.s_[-6], "out of bounds"),
        (np.s_[0, 0, 0], "too many indices"),
        (np.s_[..., ...], "single ellipsis"),
        (np.s_[::0], "zero"),
        (np.s_[1.5], "only integers"),
        (np.s_[[1, 2]], "only integers"),
        (np.s_[True], "booleans"),
    ],
)
def test_bad_indices_raise_index_errors(index: Any, message: str) -> None:
    with pytest.raises(SelectionError, match=message) as info:
        normalize_selection(index, (5, 4))
    assert isinstance(info.value, IndexError)


def test_bqapi_selection_rejects_too_many_and_bad_types() -> None:
    with pytest.raises(IndexError, match="too many slices"):
        bqapi_selection([0, 0, 0], (5, 5))
    with pytest.raises(IndexError):
        bqapi_selection(["a"], (5, 5))
    with pytest.raises(IndexError, match="out of bounds"):
        bqapi_selection([5], (5, 5))


def test_request_size_spreads_small_downloads_over_the_window_start() -> None:
    from aiobisque.plan import MIN_SPLIT_BYTES, request_size

    MiB = 1024 * 1024
    assert request_size(16 * MiB, 4 * MiB, 256) == MiB  # 16 requests, not 4
    assert request_size(1024 * MiB, 4 * MiB, 256) == 4 * MiB  # large: request_bytes
    assert request_size(16 * MiB, 4 * MiB, 4) == 4 * MiB  # a window of 4
    assert request_size(64 * 1024, 4 * MiB, 256) == MIN_SPLIT_BYTES  # one request, at least

