"""Decoding one ``format:hdf`` body and copying it into the output.

The body is an HDF5 file image holding one dataset ``/array`` (see the protocol notes). It is
checked before anything is written: signature, a single hard-linked dataset, no external
storage or virtual layout (either would make HDF5 open local files), the planned shape, and
an element type compatible with the array's. Then:

* contiguous layout (what BisQue sends): the raw bytes sit at one offset of the image; they
  are viewed in place with ``np.frombuffer`` and copied once into the output, converting the
  byte order on the way;
* chunked, compressed or compact layout (other exporters): a normal h5py read of the
  (already size-checked) dataset.

These functions are synchronous and run in a worker thread, off the event loop.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import math
from typing import Any

import h5py
import numpy as np

from aiobisque.errors import ProtocolError

__all__ = ["HDF5_SIGNATURE", "BodyIncompleteError", "check_md5", "decode_into"]

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


class BodyIncompleteError(ProtocolError):
    """The body ends before the data it describes: cut in transit, worth retrying."""

    transient = True


class _MemoryFile(io.RawIOBase):
    """A read-only file over a buffer, without copying it (for h5py's fileobj driver)."""

    def __init__(self, buffer: bytes | bytearray | memoryview):
        self._view = memoryview(buffer).cast("B")
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, b: Any) -> int:
        target = memoryview(b).cast("B")
        piece = self._view[self._pos : self._pos + len(target)]
        n = len(piece)
        target[:n] = piece
        self._pos += n
        return n


def _same_type(got: np.dtype[Any], want: np.dtype[Any]) -> bool:
    """Equal element types, ignoring byte order (info JSON does not state it)."""
    if want.names is not None or got.names is not None:
        if got.names is None or want.names is None or got.names != want.names:
            return False
        return all(
            _same_type(got.fields[n][0], want.fields[n][0])  # type: ignore[index]
            for n in want.names
        )
    if got.subdtype is not None or want.subdtype is not None:
        if got.subdtype is None or want.subdtype is None:
            return False
        return got.subdtype[1] == want.subdtype[1] and _same_type(
            got.subdtype[0], want.subdtype[0]
        )
    return got.kind == want.kind and got.itemsize == want.itemsize


def check_md5(body: bytes | bytearray | memoryview, header: str, where: str) -> None:
    """Verify a ``Content-MD5`` (base64) or ``x-content-md5`` (hex) header."""
    digest = hashlib.md5(body, usedforsecurity=False).digest()
    value = header.strip()
    try:
        expected = (
            bytes.fromhex(value) if len(value) == 32 else base64.b64decode(value, validate=True)
        )
    except (ValueError, binascii.Error):
        raise ProtocolError(f"{where}: malformed MD5 header {value!r}") from None
    if digest != expected:
        raise BodyIncompleteError(f"{where}: body does not match its MD5 checksum")


def decode_into(
    body: bytes | bytearray | memoryview,
    *,
    shape: tuple[int, ...],
    dtype: np.dtype[Any],
    dest: np.ndarray[Any, Any],
    chunk_sel: tuple[slice, ...],
    where: str,
) -> None:
    """Check ``body`` against the planned ``shape``/``dtype`` and copy its selection to ``dest``.

    ``dest`` must have the shape of ``chunk[chunk_sel]``. Raises :class:`ProtocolError` for a
    body the protocol does not allow and :class:`BodyIncompleteError` for one cut short.
    """
    view = memoryview(body).cast("B")
    if bytes(view[:8]) != HDF5_SIGNATURE:
        head = bytes(view[:60]).decode("utf-8", "replace")
        if not view:
            raise BodyIncompleteError(f"{where}: empty body")
        raise ProtocolError(
            f"{where}: the body is not an HDF5 image (starts with {head!r}); "
            "a login page or a proxy error page?"
        )
    try:
        f = h5py.File(_MemoryFile(view), "r")
    except (OSError, ValueError, RuntimeError) as exc:
        raise BodyIncompleteError(f"{where}: unreadable HDF5 image ({exc})") from None
    with f:
        names = list(f.keys())
        if names != ["array"]:
            raise ProtocolError(
                f"{where}: expected exactly one dataset '/array' in the body, found {names}"
            )
        link = f.get("array", getlink=True)
        if not isinstance(link, h5py.HardLink):
            raise ProtocolError(f"{where}: '/array' is a {type(link).__name__}, not a dataset")
        ds = f["array"]
        if not isinstance(ds, h5py.Dataset):
            raise ProtocolError(f"{where}: '/array' is not a dataset")
        dcpl = ds.id.get_create_plist()
        layout = dcpl.get_layout()
        if layout == h5py.h5d.VIRTUAL:
            raise ProtocolError(f"{where}: virtual datasets are refused (they read local files)")
        if dcpl.get_external_count() > 0:
            raise ProtocolError(f"{where}: external storage is refused (it reads local files)")
        if tuple(ds.shape) != tuple(shape):
            raise ProtocolError(
                f"{where}: the server sent shape {tuple(ds.shape)}, planned {tuple(shape)}"
            )
        file_dtype = ds.dtype
        if not _same_type(file_dtype, dtype):
            raise ProtocolError(f"{where}: the server sent type {file_dtype}, expected {dtype}")
        nbytes = math.prod(shape) * file_dtype.itemsize
        offset = ds.id.get_offset() if layout == h5py.h5d.CONTIGUOUS else None
        if offset is not None:
            if ds.id.get_storage_size() != nbytes:
                raise ProtocolError(f"{where}: dataset storage size does not match its shape")
            if offset + nbytes > len(view):
                raise BodyIncompleteError(
                    f"{where}: body cut short ({len(view):,} bytes, data ends at "
                    f"{offset + nbytes:,})"
                )
            chunk = np.frombuffer(view, dtype=file_dtype, count=math.prod(shape), offset=offset)
            chunk = chunk.reshape(shape)
        else:
            try:
                chunk = ds[()] if shape else np.asarray(ds[()])
            except (OSError, ValueError, RuntimeError) as exc:
                raise BodyIncompleteError(f"{where}: cannot read the HDF5 data ({exc})") from None
            chunk = np.asarray(chunk, dtype=file_dtype).reshape(shape)
    np.copyto(dest, chunk[chunk_sel], casting="same_kind")
