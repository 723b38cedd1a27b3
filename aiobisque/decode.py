"""Decoding one ``format:hdf`` body and copying it into the output.

The body is an HDF5 file image holding one dataset ``/array`` (see the protocol notes). It is
checked before anything is written: signature, a single hard-linked dataset, no external
storage or virtual layout (either would make HDF5 open local files), the planned shape, and
an element type compatible with the array's. Then:

* contiguous layout (what BisQue sends): the raw bytes sit at one offset of the image; they
  are viewed in place with ``np.frombuffer`` and copied once into the output, converting the
  byte order on the way;
* chunked, compressed or compact layout (other exporters): a normal h5py read of the
  (already size-checked) dataset, once only the built-in deflate/shuffle/fletcher32
  filters are found (any other would make HDF5 load a plugin library) and every chunk is
  known to inflate to no more than its own, bounded, size (:func:`_check_chunks`).

These functions are synchronous and run in a worker thread, off the event loop.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import io
import math
import threading
import zlib
from typing import Any

import h5py
import numpy as np

from aiobisque.errors import BisqueError, BodyIncompleteError, ProtocolError, clean_text

__all__ = [
    "HDF5_SIGNATURE",
    "BodyIncompleteError",
    "StreamDecoder",
    "decode_into",
]

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


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


@contextlib.contextmanager
def _server_data(where: str) -> Any:
    """Whatever HDF5 raises about an image the server sent becomes a :class:`ProtocolError`.

    h5py reports damaged metadata as ``KeyError``, ``RuntimeError``, ``ValueError``,
    ``OSError``, ``TypeError``... never as one of ours; a caller must only ever see the
    error tree, naming the request (``where``).
    """
    try:
        yield
    except BisqueError:
        raise
    except Exception as exc:
        detail = clean_text(str(exc).splitlines()[0] if str(exc) else "")[:200]
        raise ProtocolError(
            f"{where}: malformed HDF5 image ({type(exc).__name__}: {detail})") from None


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


def _compare_md5(digest: bytes, header: str, where: str) -> None:
    """Verify a ``Content-MD5`` (base64) or ``x-content-md5`` (hex) header."""
    value = header.strip()
    try:
        expected = (
            bytes.fromhex(value) if len(value) == 32 else base64.b64decode(value, validate=True)
        )
    except (ValueError, binascii.Error):
        raise ProtocolError(f"{where}: malformed MD5 header {value!r}") from None
    if digest != expected:
        raise BodyIncompleteError(f"{where}: body does not match its MD5 checksum")


def _signature(view: memoryview, where: str) -> None:
    if bytes(view[:8]) != HDF5_SIGNATURE:
        head = bytes(view[:60]).decode("utf-8", "replace")
        if not view:
            raise BodyIncompleteError(f"{where}: empty body")
        raise ProtocolError(
            f"{where}: the body is not an HDF5 image (starts with {head!r}); "
            "a login page or a proxy error page?"
        )


def _inspect(
    f: h5py.File, shape: tuple[int, ...], dtype: np.dtype[Any], where: str
) -> tuple[h5py.Dataset, np.dtype[Any], int | None]:
    """Structure checks of an opened image: ``(dataset, file dtype, raw data offset)``.

    The offset is ``None`` unless the layout is contiguous with storage allocated.
    """
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
    if layout != h5py.h5d.CONTIGUOUS:
        _check_filters(dcpl, where)
        return ds, file_dtype, None
    offset = ds.id.get_offset()
    if offset is not None and ds.id.get_storage_size() != math.prod(shape) * file_dtype.itemsize:
        raise ProtocolError(f"{where}: dataset storage size does not match its shape")
    return ds, file_dtype, offset


#: Filters a server's image may use: HDF5's built-in deflate, shuffle and fletcher32.
SAFE_FILTERS = {h5py.h5z.FILTER_DEFLATE: "deflate", h5py.h5z.FILTER_SHUFFLE: "shuffle",
                h5py.h5z.FILTER_FLETCHER32: "fletcher32"}


def _check_filters(dcpl: Any, where: str) -> None:
    """Refuse any filter but :data:`SAFE_FILTERS`, before a single chunk is read.

    HDF5 looks for a filter it does not know in its plugin path (``HDF5_PLUGIN_PATH``)
    and runs the code of the shared library it finds there; that lookup happens when the
    first chunk is decoded, not when the image is opened, so this check comes in time.
    """
    for i in range(dcpl.get_nfilters()):
        code, _, _, name = dcpl.get_filter(i)
        if code not in SAFE_FILTERS:
            shown = clean_text(name.decode("utf-8", "replace") if isinstance(name, bytes)
                               else name)[:60]
            raise ProtocolError(
                f"{where}: the image uses HDF5 filter {code} ({shown!r}); only "
                f"{', '.join(SAFE_FILTERS.values())} are accepted from a server (HDF5 "
                "would load a plugin library for any other)")


#: A chunk may hold this much even when the planned data is smaller (edge chunks).
_MIN_CHUNK_ALLOWANCE = 64 * 1024


def _check_chunks(ds: h5py.Dataset, view: memoryview, nbytes: int, where: str) -> None:
    """Bound what a chunked image may decompress to, before HDF5 decompresses anything.

    HDF5's deflate filter grows its output buffer until the stream ends, so a chunk of a
    few megabytes that inflates a thousandfold would take gigabytes. Here every chunk's
    shape must be no larger than the planned data (plus a small allowance), the chunks
    must lie inside the body and cover the dataset at most once, and each deflate stream
    is inflated, piece by piece into a buffer of one chunk at most, to check that it ends
    within its chunk's size. Only then does HDF5 read the data, which is then bounded by
    the chunk sizes.
    """
    dsid = ds.id
    dcpl = dsid.get_create_plist()
    chunk_shape = dcpl.get_chunk()
    itemsize = ds.dtype.itemsize
    chunk_bytes = math.prod(chunk_shape) * itemsize
    limit = max(nbytes, _MIN_CHUNK_ALLOWANCE)
    if not chunk_shape or min(chunk_shape) < 1 or chunk_bytes > limit:
        raise ProtocolError(
            f"{where}: the image's chunks of shape {tuple(chunk_shape)} ({chunk_bytes:,} "
            f"bytes) are larger than the {nbytes:,} bytes planned")
    covering = math.prod(-(-n // c) for n, c in zip(ds.shape, chunk_shape, strict=True))
    count = dsid.get_num_chunks()
    if count > covering:
        raise ProtocolError(f"{where}: the image has {count:,} chunks, at most {covering:,} "
                            "fit its shape")
    pipeline = [dcpl.get_filter(i)[0] for i in range(dcpl.get_nfilters())]
    for index in range(count):
        info = dsid.get_chunk_info(index)
        start, size = info.byte_offset, info.size
        if start is None or start < 0 or size < 0 or start + size > len(view):
            raise BodyIncompleteError(f"{where}: chunk {index} lies beyond the body's end")
        data: bytes | memoryview = view[start : start + size]
        # undo the filters last to first, skipping those the chunk's mask says were skipped
        for position in reversed(range(len(pipeline))):
            if info.filter_mask & (1 << position):
                continue
            code = pipeline[position]
            if code == h5py.h5z.FILTER_FLETCHER32:
                data = data[:-4]  # its checksum; HDF5 verifies it
            elif code == h5py.h5z.FILTER_DEFLATE:
                data = _bounded_inflate(data, chunk_bytes, f"{where}: chunk {index}")
    # shuffle keeps the size; every other filter was refused by _check_filters


def _bounded_inflate(data: bytes | memoryview, limit: int, where: str) -> bytes:
    """``data`` inflated (zlib), refusing a stream that inflates beyond ``limit`` bytes."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise ProtocolError(f"{where}: damaged deflate stream ({exc})") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise ProtocolError(
            f"{where}: a compressed chunk inflates beyond its {limit:,} bytes "
            "(a decompression bomb?)")
    return out


def _open(source: io.RawIOBase, where: str) -> h5py.File:
    try:
        return h5py.File(source, "r")
    except (OSError, ValueError, RuntimeError) as exc:
        raise BodyIncompleteError(f"{where}: unreadable HDF5 image ({exc})") from None


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
    with _server_data(where):
        _decode_into(body, shape=shape, dtype=dtype, dest=dest, chunk_sel=chunk_sel,
                     where=where)


def _decode_into(
    body: bytes | bytearray | memoryview,
    *,
    shape: tuple[int, ...],
    dtype: np.dtype[Any],
    dest: np.ndarray[Any, Any],
    chunk_sel: tuple[slice, ...],
    where: str,
) -> None:
    view = memoryview(body).cast("B")
    _signature(view, where)
    with _open(_MemoryFile(view), where) as f:
        ds, file_dtype, offset = _inspect(f, shape, dtype, where)
        nbytes = math.prod(shape) * file_dtype.itemsize
        if offset is not None:
            if offset + nbytes > len(view):
                raise BodyIncompleteError(
                    f"{where}: body cut short ({len(view):,} bytes, data ends at "
                    f"{offset + nbytes:,})"
                )
            chunk = np.frombuffer(view, dtype=file_dtype, count=math.prod(shape), offset=offset)
            chunk = chunk.reshape(shape)
        else:
            if ds.id.get_create_plist().get_layout() == h5py.h5d.CHUNKED:
                _check_chunks(ds, view, nbytes, where)
            try:
                chunk = np.asarray(ds[()], dtype=file_dtype).reshape(shape)
            except (OSError, ValueError, RuntimeError) as exc:
                raise BodyIncompleteError(f"{where}: cannot read the HDF5 data ({exc})") from None
    np.copyto(dest, chunk[chunk_sel], casting="same_kind")


class _SparseFile(_MemoryFile):
    """An image of which only a head (at 0) and a tail (at ``tail_at``) are known.

    Everything else reads as zeros. Used to read an image's metadata without its data.
    """

    def __init__(self, head: bytes | bytearray, tail: bytes | bytearray, tail_at: int,
                 total: int):
        super().__init__(b"")
        self._head = memoryview(head).cast("B")
        self._tail = memoryview(tail).cast("B")
        self._tail_at = tail_at
        self._total = total

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._total}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, b: Any) -> int:
        target = memoryview(b).cast("B")
        n = max(0, min(len(target), self._total - self._pos))
        target[:n] = bytes(n)
        for part, at in ((self._head, 0), (self._tail, self._tail_at)):
            lo, hi = max(self._pos, at), min(self._pos + n, at + len(part))
            if lo < hi:
                target[lo - self._pos : hi - self._pos] = part[lo - at : hi - at]
        self._pos += n
        return n


class _Validated:
    """Metadata blocks already checked in full, keyed by what they were checked for.

    Every request of a download for one chunk shape gets a byte-identical metadata block
    from a given server (BisQue's exporter is deterministic), so after the first one the
    same bytes need not be parsed again. Identical bytes give an identical parse: nothing
    is trusted that was not checked.
    """

    def __init__(self, size: int = 64):
        self._size = size
        self._blocks: dict[tuple[Any, ...], bytes] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...]) -> bytes | None:
        with self._lock:
            return self._blocks.get(key)

    def add(self, key: tuple[Any, ...], head: bytes) -> None:
        with self._lock:
            if len(self._blocks) >= self._size:
                self._blocks.pop(next(iter(self._blocks)))
            self._blocks[key] = head


_VALIDATED = _Validated()


class StreamDecoder:
    """Decodes one ``format:hdf`` body while it arrives, copying the data straight to ``dest``.

    BisQue's images are contiguous, so once the metadata at the start of the body has been
    read (and checked: one dataset, planned shape and type, no external storage), every
    later byte of the data region is copied once, from the network buffer into the output.
    No body-sized buffer is allocated. When the bytes cannot land as they are (a strided or
    flipped selection, another byte order or type, a chunked image, no ``Content-Length``)
    it falls back to buffering the body and :func:`decode_into`.

    Protocol for the transport: :meth:`start` with the announced length and headers,
    :meth:`feed` for each piece, then :meth:`finish` (may run in a worker thread).
    """

    _PROBES = (16 * 1024, 64 * 1024, 256 * 1024, 1024 * 1024)

    def __init__(self, *, shape: tuple[int, ...], dtype: np.dtype[Any],
                 dest: np.ndarray[Any, Any], chunk_sel: tuple[slice, ...], where: str,
                 verify_checksum: bool = True):
        self.shape, self.dtype, self.dest, self.chunk_sel = shape, dtype, dest, chunk_sel
        self.where = where
        self.nbytes = math.prod(shape) * dtype.itemsize
        self._verify = verify_checksum
        whole = all(s == slice(None) for s in chunk_sel)
        self._target: memoryview | None = None
        if whole and dest.shape == shape and dest.flags.c_contiguous and dest.size:
            self._target = dest.reshape(-1).view(np.uint8).data.cast("B")
        self.mode = "probe"
        self.head = bytearray()  # the body before the data region (the whole body if buffering)
        self.tail = bytearray()  # the body after the data region
        self.offset = 0
        self.received = 0
        self.length: int | None = None
        self._probe_at = 0
        self._candidate: bytes | None = None  # see start
        self._matched = False  # the head is the candidate's metadata, byte for byte
        self._known: bool | None = None  # see _metadata_known
        self._md5: Any = None
        self._md5_header = ""

    def start(self, length: int | None, headers: Any) -> None:
        self.length = length
        self._md5_header = headers.get("Content-MD5") or headers.get("x-content-md5") or ""
        if self._md5_header and self._verify:
            self._md5 = hashlib.md5(usedforsecurity=False)
        if length is None or self._target is None:
            self.mode = "buffer"
            if length is not None:
                self.head = bytearray(length)
        else:
            # the metadata of a body already checked in full, if any: the first probe
            self._candidate = _VALIDATED.get(self._key())

    def feed(self, piece: bytes) -> None:
        at = self.received
        self.received += len(piece)
        if self._md5 is not None:
            self._md5.update(piece)
        if self.mode == "direct":
            self._place(piece, at)
        elif self.mode == "buffer":
            self._buffer(piece, at)
        else:
            self._feed_probe(piece, at)

    def _buffer(self, piece: bytes | memoryview, at: int) -> None:
        if self.length is not None:
            self.head[at : at + len(piece)] = piece
        else:
            self.head += piece

    def _feed_probe(self, piece: bytes, at: int) -> None:
        """Collect the head only as far as the next probe needs it.

        The rest of the piece (most of a first network read, hundreds of KiB) then goes
        where the probe's verdict sends it, copied once: not through the head first.
        """
        view = memoryview(piece)
        while self.mode == "probe":
            goal = self._PROBES[self._probe_at] if self._candidate is None \
                else len(self._candidate)
            take = min(len(view), max(0, goal - len(self.head)))
            if take:
                self.head += view[:take]
                view = view[take:]
                at += take
            if len(self.head) < goal and at != self.length:
                return  # wait for more of the body
            self._probe()
        if view:
            if self.mode == "direct":
                self._place(view, at)
            else:
                self._buffer(view, at)

    def _probe(self) -> None:
        """Try to read the metadata from what has arrived; switch modes accordingly."""
        assert self.length is not None and self._target is not None
        complete = len(self.head) == self.length  # probing, the head is all that arrived
        known, self._candidate = self._candidate, None
        if known is not None:
            if self.head[: len(known)] != known:
                return  # not the metadata checked before: read this one (next probe)
            offset: int | None = len(known)  # the same metadata as a body checked in full
            self._matched = True
        elif bytes(self.head[:8]) == HDF5_SIGNATURE:
            try:
                with h5py.File(_SparseFile(self.head, b"", 0, self.length), "r") as f:
                    _, file_dtype, offset = _inspect(f, self.shape, self.dtype, self.where)
            except Exception:  # metadata not all here yet (or a bad image: judged in full)
                offset = None
            else:
                if file_dtype != self.dest.dtype or (
                    offset is not None and offset + self.nbytes > self.length
                ):
                    offset = None  # needs conversion, or inconsistent: the careful path
                    self._probe_at = len(self._PROBES)
        else:
            offset = None
        if offset is None:
            self._probe_at += 1
            if self._probe_at >= len(self._PROBES) or complete:
                self._to_buffer()
            return
        self.mode, self.offset = "direct", offset
        early = bytes(self.head[offset:])
        del self.head[offset:]
        if early:
            self._place(early, offset)

    def _key(self) -> tuple[Any, ...]:
        # everything the full check depended on, besides the bytes themselves
        return (self.shape, self.dtype, self.dest.dtype, self.length)

    def _to_buffer(self) -> None:
        assert self.length is not None
        buf = bytearray(self.length)
        buf[: len(self.head)] = self.head
        self.head = buf
        self.mode = "buffer"

    def _place(self, piece: bytes | memoryview, at: int) -> None:
        """Route a piece received at body offset ``at`` to head, output or tail."""
        assert self._target is not None
        end = at + len(piece)
        lo = self.offset
        hi = lo + self.nbytes
        if lo <= at and end <= hi:  # the common case: all of it is data
            self._target[at - lo : end - lo] = piece
            return
        view = memoryview(piece)
        if at < lo:
            self.head += view[: min(end, lo) - at]
        a, b = max(at, lo), min(end, hi)
        if a < b:
            self._target[a - lo : b - lo] = view[a - at : b - at]
        if end > hi:
            self.tail += view[max(at, hi) - at :]

    @property
    def streams(self) -> bool:
        """Whether the body can go straight into the output (decided before it is sent;
        the server's metadata may still make it fall back to buffering)."""
        return self._target is not None

    @property
    def landed(self) -> int:
        """Payload bytes already copied into the output, as one prefix of the data.

        Only a body streamed straight into the output (direct mode) lands as a prefix, and
        only one without a checksum header counts (a prefix cannot be checked against an
        MD5 of the whole body): otherwise 0.
        """
        if self.mode != "direct" or self._md5_header:
            return 0
        return max(0, min(self.received - self.offset, self.nbytes))

    @property
    def heavy(self) -> bool:
        """Whether :meth:`finish` has real work to do (worth a worker thread)."""
        return self.mode != "direct" or not self._metadata_known()

    def _metadata_known(self) -> bool:
        """Byte for byte the metadata of a body already checked in full (asked once)."""
        if self._known is None:
            self._known = not self.tail and (
                self._matched or _VALIDATED.get(self._key()) == bytes(self.head))
        return self._known

    def finish(self) -> None:
        """Check the whole body and complete the output (may run in a worker thread)."""
        if self._known and self._md5 is None and self.mode == "direct":
            self._check_complete()  # metadata known byte for byte, no checksum: all else done
            return
        with _server_data(self.where):
            self._finish()

    def _check_complete(self) -> None:
        if self.received < self.offset + self.nbytes:
            raise BodyIncompleteError(
                f"{self.where}: body cut short ({self.received:,} bytes, data ends at "
                f"{self.offset + self.nbytes:,})")

    def _finish(self) -> None:
        if self._md5 is not None:
            _compare_md5(self._md5.digest(), self._md5_header, self.where)
        if self.mode == "probe" and self.length is not None:
            self._to_buffer()
        if self.mode != "direct":
            body = self.head if self.length is None else memoryview(self.head)[: self.received]
            decode_into(body, shape=self.shape, dtype=self.dtype, dest=self.dest,
                        chunk_sel=self.chunk_sel, where=self.where)
            return
        assert self.length is not None
        self._check_complete()
        if self._metadata_known():
            return
        # the same checks again, now with every byte of metadata (the data region as zeros)
        sparse = _SparseFile(self.head, self.tail, self.offset + self.nbytes, self.length)
        with _open(sparse, self.where) as f:
            _, file_dtype, offset = _inspect(f, self.shape, self.dtype, self.where)
        if offset != self.offset or file_dtype != self.dest.dtype:
            raise ProtocolError(f"{self.where}: the image's metadata contradicts itself")
        if not self.tail:
            _VALIDATED.add(self._key(), bytes(self.head))
