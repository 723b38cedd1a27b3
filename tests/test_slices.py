"""``--slices`` text: parsed into the index numpy would use, never evaluated."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiobisque import SelectionError
from aiobisque.slices import format_slices, parse_slices

ARRAY = np.arange(4 * 5 * 6).reshape(4, 5, 6)


@pytest.mark.parametrize(
    ("text", "index"),
    [
        ("10:20, :, -1", np.s_[10:20, :, -1]),
        ("..., ::2", np.s_[..., ::2]),
        ("...,::2", np.s_[..., ::2]),
        ("None, 1", np.s_[None, 1]),
        ("np.newaxis, :", np.s_[None, :]),
        ("numpy.newaxis", (None,)),
        ("newaxis, Ellipsis", (None, Ellipsis)),
        ("-3", (-3,)),
        ("+2:", (slice(2, None),)),
        ("5,", (5,)),
        ("::-1", (slice(None, None, -1),)),
        ("1_000:", (slice(1000, None),)),
        ("(1, 2)", np.s_[(1, 2)]),  # numpy reads a[(1, 2)] as a[1, 2] too
        ("  :  ", (slice(None),)),
        ("", (Ellipsis,)),
        ("   ", (Ellipsis,)),
    ],
)
def test_parse_examples(text: str, index: tuple) -> None:
    got = parse_slices(text)
    assert got == (index if isinstance(index, tuple) else (index,))


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("1.5", "'1.5' is not an integer"),
        ("a:b", "'a' is not an integer"),
        ("[1, 2], :", "advanced indexing"),
        ("[0, 1]", "advanced indexing"),
        ("[1:3, 2]", "not valid index syntax"),
        ("(1, 2), 3", "nested tuples"),
        ("1:2:3:4", "not valid index syntax"),
        ("__import__('os').system('true')", "is not an integer"),
        ("0] + _[1", "single index expression"),
        ("0]#", "single index expression"),
        ("0\n1", "several lines"),
        ("True", "'True' is not an integer"),
        ("x" * 5000, "longer than"),
        ("1 if 1 else 2", "is not an integer"),
        ("np.pi", "is not an integer"),
    ],
)
def test_parse_errors_name_the_problem(text: str, named: str) -> None:
    with pytest.raises(SelectionError, match="cannot read the selection") as info:
        parse_slices(text)
    assert named in str(info.value)
    assert "numpy indexing such as" in str(info.value)


def test_parse_rejects_non_text() -> None:
    with pytest.raises(SelectionError, match="must be text"):
        parse_slices(3)  # type: ignore[arg-type]


def test_format_examples() -> None:
    assert format_slices(np.s_[10:20, :, -1]) == "10:20, :, -1"
    assert format_slices(np.s_[..., ::2, None]) == "..., ::2, None"
    assert format_slices(()) == "..."
    assert format_slices(3) == "3"


_bound = st.one_of(st.none(), st.integers(-8, 8))
_item = st.one_of(
    st.integers(-4, 3),
    st.builds(slice, _bound, _bound, st.one_of(st.none(), st.integers(-3, 3).filter(bool))),
    st.just(None),
)


@st.composite
def indices(draw: st.DrawFn) -> tuple:
    items = draw(st.lists(_item, max_size=5))
    if draw(st.booleans()):
        items.insert(draw(st.integers(0, len(items))), Ellipsis)
    return tuple(items)


def _spaced(text: str, draw_spaces: bool) -> str:
    return text.replace(", ", " ,  ") if draw_spaces else text


@settings(max_examples=300, deadline=None)
@given(indices(), st.booleans())
def test_text_selects_what_numpy_selects(index: tuple, spaces: bool) -> None:
    """Formatting an index as text and parsing it back selects exactly what numpy does."""
    text = _spaced(format_slices(index), spaces)
    parsed = parse_slices(text)
    try:
        want = ARRAY[index]
    except IndexError:
        with pytest.raises(IndexError):
            ARRAY[parsed]
        return
    got = ARRAY[parsed]
    assert got.shape == want.shape
    assert np.array_equal(got, want)
    assert format_slices(parsed) == format_slices(index)


def test_explicit_none_inside_a_slice_is_omitted_like_numpy() -> None:
    a = np.arange(10)
    for text in ("None:3", "1:None", "::None", "None:None:-2"):
        assert np.array_equal(a[parse_slices(text)], eval(f"a[{text}]"))
