"""The body decoder on its own: every split of a body into pieces gives the same array."""

from __future__ import annotations

import io
from typing import Any

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiobisque.decode import BodyIncompleteError, StreamDecoder
from aiobisque.errors import ProtocolError
from aiobisque.server.export import hdf_image  # the embedded server's exporter

DATA = np.arange(6 * 50 * 40, dtype="<f4").reshape(6, 50, 40)


def server_image(data: np.ndarray) -> bytes:
    return hdf_image(data)


def h5py_image(data: np.ndarray, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.create_dataset("array", data=data, **kwargs)
    return buf.getvalue()


def feed(body: bytes, cuts: list[int], *, dest: np.ndarray | None = None,
         chunk_sel: tuple[slice, ...] | None = None, length: int | None = -1,
         headers: dict[str, str] | None = None, dtype: Any = "<f4",
         shape: tuple[int, ...] = DATA.shape) -> tuple[StreamDecoder, np.ndarray]:
    dest = np.zeros(shape, dtype) if dest is None else dest
    sel = chunk_sel or (slice(None),) * len(shape)
    dec = StreamDecoder(shape=shape, dtype=np.dtype(dtype).newbyteorder("="), dest=dest,
                        chunk_sel=sel, where="test")
    dec.start(len(body) if length == -1 else length, headers or {})
    at = 0
    for cut in [*sorted(set(cuts)), len(body)]:
        if cut > at:
            dec.feed(body[at:cut])
            at = cut
    dec.finish()
    return dec, dest


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 60_000), max_size=12))
def test_any_split_streams_straight_into_the_output(cuts: list[int]) -> None:
    body = server_image(DATA)
    dec, dest = feed(body, cuts)
    assert dec.mode == "direct"
    assert dest.tobytes() == DATA.tobytes()


def pytables_image(data: np.ndarray) -> bytes:
    """What a real BisQue sends: PyTables' create_array in a core-driver file."""
    import tables
    with tables.open_file("x.h5", "w", driver="H5FD_CORE",
                          driver_core_backing_store=0) as f:
        f.create_array(f.root, "array", data)
        return bytes(f.get_file_image())


@pytest.mark.parametrize("make", [server_image, h5py_image, pytables_image])
def test_data_streams_before_the_body_is_complete(make: Any) -> None:
    body = make(DATA)
    dest = np.zeros_like(DATA)
    dec = StreamDecoder(shape=DATA.shape, dtype=np.dtype("f4"), dest=dest,
                        chunk_sel=(slice(None),) * 3, where="test")
    dec.start(len(body), {})
    dec.feed(body[:20_000])
    assert dec.mode == "direct"  # the metadata was read from the first 20 kB
    assert dest.reshape(-1).view(np.uint8)[: 20_000 - dec.offset].any()
    dec.feed(body[20_000:])
    dec.finish()
    assert len(dec.head) == dec.offset and len(dec.tail) == 0  # no body-sized buffer
    assert np.array_equal(dest, DATA)


def test_other_byte_order_is_converted_through_a_buffer() -> None:
    dec, dest = feed(server_image(DATA.astype(">f4")), [3000])
    assert dec.mode == "buffer" and np.array_equal(dest, DATA)


def test_strided_and_flipped_selections_use_the_buffer() -> None:
    dest = np.zeros((6, 25, 40), "<f4")
    dec, _ = feed(server_image(DATA), [7], dest=dest,
                  chunk_sel=(slice(None), slice(None, None, -2), slice(None)))
    assert dec.mode == "buffer" and np.array_equal(dest, DATA[:, ::-2])


def test_chunked_compressed_image_and_unknown_length() -> None:
    dec, dest = feed(h5py_image(DATA, chunks=(2, 10, 40), compression="gzip"), [999])
    assert dec.mode == "buffer" and np.array_equal(dest, DATA)
    dec, dest = feed(server_image(DATA), [999], length=None)
    assert dec.mode == "buffer" and np.array_equal(dest, DATA)


def test_cut_short_is_incomplete() -> None:
    body = server_image(DATA)
    dec = StreamDecoder(shape=DATA.shape, dtype=np.dtype("f4"), dest=np.zeros_like(DATA),
                        chunk_sel=(slice(None),) * 3, where="test")
    dec.start(len(body), {})
    dec.feed(body[: len(body) // 2])
    with pytest.raises(BodyIncompleteError, match="cut short"):
        dec.finish()


def test_wrong_shape_is_refused_before_any_byte_is_written() -> None:
    dest = np.full(DATA.shape, 7, "<f4")
    body = server_image(np.zeros((6, 50, 41), "<f4"))
    dec = StreamDecoder(shape=DATA.shape, dtype=np.dtype("f4"), dest=dest,
                        chunk_sel=(slice(None),) * 3, where="test")
    dec.start(len(body), {})
    for at in range(0, len(body), 4096):
        dec.feed(body[at : at + 4096])
    with pytest.raises(ProtocolError, match="shape"):
        dec.finish()
    assert (dest == 7).all()


def test_md5_is_checked_while_streaming() -> None:
    body = server_image(DATA)
    with pytest.raises(BodyIncompleteError, match="MD5"):
        feed(body, [1234], headers={"x-content-md5": "0" * 32})


def test_metadata_checked_once_is_reused_only_for_the_same_question() -> None:
    body = server_image(DATA)
    feed(body, [30_000])
    again, dest = feed(body, [30_000])
    assert again.mode == "direct" and np.array_equal(dest, DATA)
    # the same bytes asked for as int32 (cast into a float32 out=) must still be refused
    dec = StreamDecoder(shape=DATA.shape, dtype=np.dtype("i4"), dest=np.zeros_like(DATA),
                        chunk_sel=(slice(None),) * 3, where="test")
    dec.start(len(body), {})
    dec.feed(body)
    with pytest.raises(ProtocolError, match="type"):
        dec.finish()


@pytest.mark.parametrize("seen", [False, True], ids=["first body", "known metadata"])
def test_a_big_first_piece_is_not_kept_in_the_head(seen: bool) -> None:
    # a first network read holds the metadata and far more: only the metadata stays in the
    # head, the data goes straight to the output (copied once), checked or not before
    data = np.arange(64 * 1024, dtype="<f4").reshape(64, 1024)
    body = server_image(data)
    if seen:
        feed(body, [], shape=data.shape)  # checked in full: its metadata is now known
    dest = np.zeros(data.shape, "<f4")
    dec = StreamDecoder(shape=data.shape, dtype=np.dtype("<f4"), dest=dest,
                        chunk_sel=(slice(None), slice(None)), where="test")
    dec.start(len(body), {})
    dec.feed(body[: 200_000])
    assert dec.mode == "direct"
    assert len(dec.head) == dec.offset
    assert dec.landed == 200_000 - dec.offset
    dec.feed(body[200_000:])
    dec.finish()
    assert dest.tobytes() == data.tobytes()


def test_a_cut_body_with_known_metadata_is_still_refused() -> None:
    body = server_image(DATA)
    feed(body, [])  # checked in full: later bodies skip the metadata check
    dest = np.zeros(DATA.shape, "<f4")
    dec = StreamDecoder(shape=DATA.shape, dtype=np.dtype("<f4"), dest=dest,
                        chunk_sel=(slice(None),) * 3, where="test")
    dec.start(len(body), {})
    dec.feed(body[: len(body) - 100])
    assert not dec.heavy  # finish runs on the loop: the fast path
    with pytest.raises(BodyIncompleteError, match="cut short"):
        dec.finish()
