"""The ``format:hdf`` body: an HDF5 file image with one ``/array`` (text formats: :mod:`formats`).

The HDF5 image is what BisQue's exporter produces with PyTables ``create_array(root,
"array", data)``: one dataset ``/array``, contiguous and uncompressed, in the dtype it is
given (the table service hands it native-order data, as PyTables reads it), with
PyTables' ``CLASS``/``VERSION``/``TITLE``/``FLAVOR`` attributes.

Building it with h5py for every request would copy the slice twice (into HDF5's in-memory
file, then out as ``bytes``). Instead the file *around* the data is made once per
``(shape, dtype)`` and cached: h5py writes it through :class:`_SparseFile`, with the dataset's
storage allocated early but never written, so the template holds only the metadata bytes
before and after the raw-data region (a 1 GiB template costs a few KiB). A body is then
``prefix + raw slice bytes + suffix``, sent without joining them.
"""

from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

__all__ = ["Body", "hdf_body", "hdf_image"]

HDF_CONTENT_TYPE = "application/x-hdf5"
_PYTABLES_ARRAY_ATTRS = {"CLASS": b"ARRAY", "VERSION": b"2.4", "FLAVOR": b"numpy"}
_PYTABLES_ROOT_ATTRS = {"CLASS": b"GROUP", "PYTABLES_FORMAT_VERSION": b"2.1", "VERSION": b"1.0"}


@dataclass(frozen=True)
class Body:
    """A response body as a sequence of buffers (sent in order, never joined)."""

    parts: tuple[bytes | memoryview, ...]
    content_type: str

    @property
    def length(self) -> int:
        """Total size in bytes."""
        return sum(memoryview(part).nbytes for part in self.parts)


class _SparseFile:
    """A write-mostly file object for h5py's ``fileobj`` driver that keeps only what is written.

    Regions never written (the raw-data area of an early-allocated dataset whose fill time
    is "never") cost no memory and read back as zeros.
    """

    def __init__(self) -> None:
        self._pos = 0
        self.size = 0
        self.segments: dict[int, bytes] = {}

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            self._pos = offset
        elif whence == io.SEEK_CUR:
            self._pos += offset
        else:
            self._pos = self.size + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        # HDF5 rewrites metadata in place: drop segments the new one fully covers
        end = self._pos + len(chunk)
        for start in [
            s for s, seg in self.segments.items() if self._pos <= s and s + len(seg) <= end
        ]:
            del self.segments[start]
        self.segments.pop(self._pos, None)  # re-insert: iteration order is write order
        self.segments[self._pos] = chunk
        self._pos = end
        self.size = max(self.size, end)
        return len(chunk)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        end = min(self._pos + len(view), self.size)
        count = max(0, end - self._pos)
        view[:count] = bytes(count)
        # apply in write order so a later, overlapping write wins over an earlier one
        for start, seg in self.segments.items():
            lo, hi = max(start, self._pos), min(start + len(seg), end)
            if lo < hi:
                view[lo - self._pos : hi - self._pos] = seg[lo - start : hi - start]
        self._pos += count
        return count

    def read(self, size: int = -1) -> bytes:
        size = self.size - self._pos if size < 0 else size
        buf = bytearray(size)
        got = self.readinto(buf)
        return bytes(buf[:got])

    def truncate(self, size: int | None = None) -> int:
        self.size = self._pos if size is None else size
        return self.size

    def flush(self) -> None:
        pass

    def image(self, start: int, stop: int) -> bytes:
        """The bytes in ``[start, stop)``."""
        buf = bytearray(stop - start)
        self.seek(start)
        self.readinto(buf)
        return bytes(buf)


def _set_pytables_attrs(root: h5py.Group, dataset: h5py.Dataset) -> None:
    # PyTables stores these as fixed-length byte strings and an empty TITLE as a null
    # dataspace; copying that keeps tables.open_file() from warning or guessing
    for name, value in _PYTABLES_ROOT_ATTRS.items():
        root.attrs[name] = np.bytes_(value)
    root.attrs["TITLE"] = h5py.Empty("S1")
    for name, value in _PYTABLES_ARRAY_ATTRS.items():
        dataset.attrs[name] = np.bytes_(value)
    dataset.attrs["TITLE"] = h5py.Empty("S1")


@functools.lru_cache(maxsize=256)
def _contiguous_template(shape: tuple[int, ...], dtype: np.dtype[Any]) -> tuple[bytes, bytes]:
    """``(prefix, suffix)`` of an image whose ``/array`` has this shape and dtype."""
    sparse = _SparseFile()
    with h5py.File(sparse, "w", libver="earliest") as h5:
        space = h5py.h5s.create_simple(shape) if shape else h5py.h5s.create(h5py.h5s.SCALAR)
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_layout(h5py.h5d.CONTIGUOUS)
        # like PyTables' images, every byte of metadata comes before the raw data (clients
        # may then stream the data as it arrives): attributes first, storage allocated last,
        # and never filled (so the sparse file never holds it)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_LATE)
        dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
        dsid = h5py.h5d.create(h5.id, b"array", h5py.h5t.py_create(dtype), space, dcpl=dcpl)
        dataset = h5py.Dataset(dsid)
        _set_pytables_attrs(h5, dataset)
        if math.prod(shape):
            # one element written allocates the whole contiguous storage, after the metadata
            dataset[(0,) * len(shape)] = np.zeros((), dtype)
        offset = dataset.id.get_offset()
    nbytes = math.prod(shape) * dtype.itemsize
    if offset is None:  # nothing allocated: an empty array
        return sparse.image(0, sparse.size), b""
    return sparse.image(0, offset), sparse.image(offset + nbytes, sparse.size)


def _raw_bytes(array: np.ndarray[Any, Any]) -> memoryview:
    contiguous = np.ascontiguousarray(array)
    if not contiguous.size:
        return memoryview(b"")
    # a flat byte view of the array's own buffer: no copy
    return memoryview(contiguous.reshape(-1).view(np.uint8).data)


def _chunked_image(array: np.ndarray[Any, Any]) -> bytes:
    """A chunked, gzip-compressed image (what other exporters may send)."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        if array.size:
            dataset = h5.create_dataset(
                "array", data=array, chunks=True, compression="gzip", compression_opts=1
            )
        else:
            dataset = h5.create_dataset("array", data=array)
        _set_pytables_attrs(h5, dataset)
    return buffer.getvalue()


def hdf_body(array: np.ndarray[Any, Any], layout: str = "contiguous") -> Body:
    """The ``format:hdf`` body for ``array``: an HDF5 image with one ``/array``.

    ``layout="chunked"`` makes a chunked, gzip-compressed dataset instead, for testing a
    client's slow path. Object dtypes (variable-length strings) always take that general
    route, since their bytes are not the array's buffer.
    """
    array = np.asarray(array)
    if layout == "chunked" or array.dtype.hasobject:
        if layout == "chunked":
            return Body((_chunked_image(array),), HDF_CONTENT_TYPE)
        buffer = io.BytesIO()
        with h5py.File(buffer, "w") as h5:
            _set_pytables_attrs(h5, h5.create_dataset("array", data=array))
        return Body((buffer.getvalue(),), HDF_CONTENT_TYPE)
    if layout != "contiguous":
        raise ValueError(f"unknown HDF5 layout {layout!r}")
    prefix, suffix = _contiguous_template(tuple(array.shape), array.dtype)
    parts: tuple[bytes | memoryview, ...] = (prefix, _raw_bytes(array), suffix)
    return Body(tuple(p for p in parts if memoryview(p).nbytes), HDF_CONTENT_TYPE)


def hdf_image(array: np.ndarray[Any, Any], layout: str = "contiguous") -> bytes:
    """:func:`hdf_body` joined into one ``bytes`` (convenient in tests)."""
    return b"".join(bytes(part) for part in hdf_body(array, layout).parts)
