"""Output files written block by block: ``.npy`` in place and HDF5 datasets.

A download's result is cut into a :class:`~aiobisque.blocks.BlockGrid` of C-contiguous
blocks. An output
hands out a writable buffer per block (for ``.npy`` a memory map of exactly that block's
bytes in ``FILE.part``; for HDF5 a small numpy array), then *commits* it: the block is
made durable (msync / HDF5 flush + fsync) before the journal may count it. Only a few
blocks exist in memory at once, whatever the array's size.

A finished output records its *source* (server root, uniq, path, selection) so that a rerun
can prove it already holds that download: HDF5 in the dataset's attributes, ``.npy`` (which
has no room for attributes) in ``FILE.source.json`` beside it, together with the file's size
and modification time so that a file replaced or edited later is not vouched for.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from aiobisque.blocks import BlockGrid
from aiobisque.errors import UsageError

__all__ = [
    "FORMATS",
    "Hdf5Output",
    "NpyOutput",
    "Output",
    "existing_output_mismatch",
    "output_format",
    "source_record",
]

#: Output formats by file suffix.
FORMATS = {".npy": "npy", ".h5": "hdf5", ".hdf5": "hdf5", ".csv": "csv"}
#: formats only tables can be written to
TABLE_ONLY_FORMATS = frozenset({"csv"})
#: Target size of one HDF5 chunk: big enough for fast I/O, small enough for partial reads.
CHUNK_BYTES = 1024 * 1024
COMPRESSIONS = ("gzip", "lzf")
#: Suffix of the record kept beside a finished ``.npy`` file.
SOURCE_SUFFIX = ".source.json"
_SOURCE_MAGIC = "aiobisque_source"


def output_format(path: str | os.PathLike[str]) -> str:
    """``"npy"``, ``"hdf5"`` or ``"csv"`` (tables only) from the file name;
    :class:`~aiobisque.UsageError` otherwise."""
    suffix = Path(path).suffix.lower()
    try:
        return FORMATS[suffix]
    except KeyError:
        known = ", ".join(FORMATS)
        raise UsageError(
            f"cannot tell the output format of {os.fspath(path)!r}: its name must end "
            f"with one of {known}"
        ) from None


class Output:
    """A ``.part`` file being filled block by block (base class of the formats)."""

    def __init__(self, part: Path, shape: tuple[int, ...], dtype: np.dtype[Any]):
        self.part = part
        self.shape = shape
        self.dtype = dtype

    def buffer(self, grid: BlockGrid, block: int) -> np.ndarray[Any, Any]:
        """A writable array of ``grid.block_shape(block)`` to download the block into."""
        raise NotImplementedError

    def commit(self, grid: BlockGrid, block: int, buf: np.ndarray[Any, Any]) -> None:
        """Make the block durable in the ``.part`` file (blocking: run it in a thread)."""
        raise NotImplementedError

    def verify(self) -> None:
        """Check the ``.part`` file's shape and dtype (raises :class:`OSError`)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the file (the ``.part`` stays for a resume)."""

    def finish(self, final: Path) -> None:
        """Verify, sync and atomically rename the ``.part`` file to ``final``."""
        self.verify()
        self.close()
        _fsync_path(self.part)
        os.replace(self.part, final)
        _fsync_dir(final.parent)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    # makes the rename itself durable; not possible on every platform
    with contextlib.suppress(OSError):
        _fsync_path(folder)


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype[Any], bool, int]:
    """(shape, dtype, fortran_order, data offset) of a ``.npy`` file."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise OSError(f"{path}: unsupported .npy version {version}")
        return tuple(shape), np.dtype(dtype), bool(fortran), f.tell()


class NpyOutput(Output):
    """A ``.npy`` file written in place: each block is a memory map of its own bytes.

    Mapping one block at a time (and unmapping it once synced) keeps the resident memory
    to a few blocks even though the file is as large as the array.
    """

    def __init__(self, part: Path, shape: tuple[int, ...], dtype: np.dtype[Any], offset: int,
                 source: dict[str, Any] | None = None):
        super().__init__(part, shape, dtype)
        self.offset = offset
        self.source = source

    @classmethod
    def create(cls, part: Path, shape: tuple[int, ...], dtype: np.dtype[Any], *,
               source: dict[str, Any] | None = None) -> NpyOutput:
        """Write the header and reserve the file's full size on disk.

        ``source`` (root, uniq, path, selection) goes to the source record when the file
        is finished.
        """
        # numpy picks the header version and sizes the file; mapping it touches no page
        mm = np.lib.format.open_memmap(part, mode="w+", dtype=dtype, shape=shape)
        offset = int(mm.offset)
        _unmap(mm)
        del mm
        with open(part, "r+b") as f:
            _reserve(f.fileno(), offset + math.prod(shape) * dtype.itemsize, part)
        return cls(part, shape, dtype, offset, source)

    @classmethod
    def reopen(cls, part: Path, shape: tuple[int, ...], dtype: np.dtype[Any], *,
               source: dict[str, Any] | None = None) -> NpyOutput:
        """Continue a ``.part`` file (raises :class:`OSError` if it does not fit)."""
        out = cls(part, shape, dtype, 0, source)
        out.offset = out._check()
        return out

    def _check(self) -> int:
        shape, dtype, fortran, offset = _npy_header(self.part)
        if shape != self.shape or dtype != self.dtype or fortran:
            raise OSError(
                f"{self.part} holds {shape} {dtype}, expected {self.shape} {self.dtype}"
            )
        size = self.part.stat().st_size
        want = offset + math.prod(shape) * dtype.itemsize
        if size != want:
            raise OSError(f"{self.part} is {size:,} bytes, expected {want:,}")
        return offset

    def buffer(self, grid: BlockGrid, block: int) -> np.ndarray[Any, Any]:
        start = self.offset + grid.offset(block) * self.dtype.itemsize
        return np.memmap(self.part, dtype=self.dtype, mode="r+", offset=start,
                         shape=grid.block_shape(block))

    def commit(self, grid: BlockGrid, block: int, buf: np.ndarray[Any, Any]) -> None:
        if isinstance(buf, np.memmap):
            buf.flush()  # msync: the block is on disk before the journal says so
            _unmap(buf)

    def verify(self) -> None:
        self._check()

    def finish(self, final: Path) -> None:
        """Rename to ``final``, then record its source beside it.

        The old record goes first: a crash before the new one is written leaves the file
        unproven (refused, or adopted from the journal), never vouched for by a stale record.
        """
        record = source_record(final)
        with contextlib.suppress(FileNotFoundError):
            record.unlink()
        super().finish(final)
        if self.source is not None:
            write_source_record(final, self.source)


def source_record(path: Path) -> Path:
    """Where the source record of the finished ``.npy`` file ``path`` is kept."""
    return path.with_name(path.name + SOURCE_SUFFIX)


def write_source_record(path: Path, source: dict[str, Any]) -> None:
    """Record beside the finished ``.npy`` file ``path`` which download it holds (atomically)."""
    shape, dtype, _, _ = _npy_header(path)
    st = path.stat()
    doc = {_SOURCE_MAGIC: 1, **source, "shape": list(shape), "dtype": dtype.str,
           "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    record = source_record(path)
    tmp = record.with_name(record.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, record)
    _fsync_dir(path.parent)


def _npy_source(path: Path, shape: tuple[int, ...], dtype: np.dtype[Any]
                ) -> tuple[dict[str, Any] | None, str]:
    """(the recorded source of ``path``, or ``None`` and why it cannot be trusted)."""
    record = source_record(path)
    try:
        doc = json.loads(record.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, f"no {record.name} beside it records which download it holds"
    except (OSError, ValueError) as exc:
        return None, f"its record {record.name} cannot be read ({exc})"
    if not isinstance(doc, dict) or doc.get(_SOURCE_MAGIC) != 1:
        return None, f"{record.name} is not an aiobisque source record"
    st = path.stat()
    if (doc.get("size"), doc.get("mtime_ns")) != (st.st_size, st.st_mtime_ns):
        return None, f"it was modified after {record.name} was written"
    if (doc.get("shape"), doc.get("dtype")) != (list(shape), dtype.str):
        return None, f"{record.name} describes {doc.get('shape')} {doc.get('dtype')}, not the file"
    return doc, ""


def _unmap(mm: np.ndarray[Any, Any]) -> None:
    """Unmap a memmap now rather than when garbage collected, so resident memory stays low.

    If views of it still exist the map stays until they go (``BufferError``).
    """
    raw = getattr(mm, "_mmap", None)
    if raw is not None:
        with contextlib.suppress(BufferError, ValueError):
            raw.close()


def _reserve(fd: int, size: int, path: Path) -> None:
    """Give the file its full size, allocating the blocks where the platform can.

    Allocating up front turns "disk full" into a clear error now, instead of a SIGBUS
    when a memory-mapped write finds no space later.
    """
    os.ftruncate(fd, size)
    if size and hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise OSError(errno.ENOSPC, f"not enough disk space for {size:,} bytes",
                              str(path)) from None
            # EOPNOTSUPP/EINVAL: the file system cannot preallocate; the sparse file works


def chunk_grid(shape: tuple[int, ...], itemsize: int,
               chunk_bytes: int = CHUNK_BYTES) -> BlockGrid | None:
    """The HDF5 chunk layout for ``shape``: about ``chunk_bytes`` per chunk, C-contiguous.

    Downloads pass ``min(CHUNK_BYTES, block_bytes)``: a chunk must never be shared by two
    blocks, since rewriting a compressed chunk moves it in the file, and a kill between
    that write and the flush would leave a chunk that the journal counts as saved but
    that no longer decodes.
    """
    if not shape or math.prod(shape) == 0:
        return None
    return BlockGrid.fit(shape, itemsize, chunk_bytes)


def _write_error(exc: BaseException, part: Path) -> OSError:
    """What HDF5 raised while writing ``part``, as a clear ``OSError`` ("no space left").

    HDF5 reports a failed ``write(2)`` as a ``RuntimeError``/``OSError`` whose text holds
    the errno; a full disk must read as one, with what to do about it.
    """
    text = str(exc)
    if getattr(exc, "errno", None) == errno.ENOSPC or "errno = 28" in text \
            or "No space left" in text:
        return OSError(errno.ENOSPC, "no space left on the device while writing "
                       f"{part}; free some space and rerun the same command to resume",
                       str(part))
    if getattr(exc, "errno", None) == errno.EDQUOT or "errno = 122" in text:
        return OSError(errno.EDQUOT, f"disk quota exceeded while writing {part}", str(part))
    first = text.splitlines()[0] if text else type(exc).__name__
    return OSError(errno.EIO, f"cannot write {part}: {first}", str(part))


class Hdf5Output(Output):
    """One dataset of an HDF5 file; each block is written into it as it completes.

    The file is opened without a chunk cache, so a block's chunks are written to the file
    by the write call itself and a failed ``write(2)`` (a full disk) is raised there, not
    later when HDF5 evicts or closes something and can only print the error. Every
    commit flushes and fsyncs before the journal may count the block, and :meth:`finish`
    closes the file (raising) before it renames it.
    """

    def __init__(self, part: Path, dataset: str, shape: tuple[int, ...], dtype: np.dtype[Any],
                 file: h5py.File):
        super().__init__(part, shape, dtype)
        self.dataset = dataset
        self._file: h5py.File | None = file
        self._node: h5py.Dataset | None = None  # kept open: see commit

    @classmethod
    def create(
        cls,
        part: Path,
        dataset: str,
        shape: tuple[int, ...],
        dtype: np.dtype[Any],
        *,
        compression: str | None = None,
        attrs: dict[str, Any] | None = None,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> Hdf5Output:
        if compression is not None and compression not in COMPRESSIONS:
            raise UsageError(f"compression must be one of {COMPRESSIONS} or none, "
                             f"got {compression!r}")
        grid = chunk_grid(shape, dtype.itemsize, chunk_bytes)
        chunks = grid.block_shape(0) if grid is not None else None
        file = h5py.File(part, "w", rdcc_nbytes=0)
        try:
            ds = file.create_dataset(
                dataset, shape=shape, dtype=dtype, chunks=chunks,
                compression=compression if chunks else None,
            )
            for key, value in (attrs or {}).items():
                ds.attrs[key] = value
            file.flush()
        except BaseException as exc:
            with contextlib.suppress(Exception):
                file.close()
            if isinstance(exc, Exception) and not isinstance(exc, UsageError):
                raise _write_error(exc, part) from None
            raise
        return cls(part, dataset, shape, dtype, file)

    @classmethod
    def reopen(cls, part: Path, dataset: str, shape: tuple[int, ...],
               dtype: np.dtype[Any]) -> Hdf5Output:
        """Continue a ``.part`` file (raises :class:`OSError` if it cannot be used)."""
        file = h5py.File(part, "r+", rdcc_nbytes=0)
        out = cls(part, dataset, shape, dtype, file)
        try:
            out.verify()
        except BaseException:
            out.close()
            raise
        return out

    @property
    def file(self) -> h5py.File:
        if self._file is None:
            raise OSError(f"{self.part} is closed")
        return self._file

    def buffer(self, grid: BlockGrid, block: int) -> np.ndarray[Any, Any]:
        return np.empty(grid.block_shape(block), dtype=self.dtype)

    def commit(self, grid: BlockGrid, block: int, buf: np.ndarray[Any, Any]) -> None:
        # one Dataset object for the file's lifetime: a temporary one would be closed by
        # its garbage collection, where h5py can only print an error of HDF5's, not raise it
        try:
            if self._node is None:
                self._node = self.file[self.dataset]
            self._node[grid.region(block)] = buf
            self.file.flush()
            handle = self.file.id.get_vfd_handle()
            if isinstance(handle, int):
                os.fsync(handle)
        except Exception as exc:
            raise _write_error(exc, self.part) from None

    def finish(self, final: Path) -> None:
        """Close the file, raising what a last write failed with, then rename it."""
        self.verify()
        file, self._file, self._node = self._file, None, None
        try:
            if file is not None:
                file.flush()
                file.close()
        except Exception as exc:
            raise _write_error(exc, self.part) from None
        _fsync_path(self.part)
        os.replace(self.part, final)
        _fsync_dir(final.parent)

    def verify(self) -> None:
        node = self.file.get(self.dataset)
        if not isinstance(node, h5py.Dataset):
            raise OSError(f"{self.part} has no dataset {self.dataset!r}")
        if node.shape != self.shape or node.dtype != self.dtype:
            raise OSError(f"{self.part}:{self.dataset} holds {node.shape} {node.dtype}, "
                          f"expected {self.shape} {self.dtype}")

    def close(self) -> None:
        self._node = None
        if self._file is not None:
            with contextlib.suppress(Exception):
                self._file.close()
            self._file = None


def existing_output_mismatch(
    path: Path,
    fmt: str,
    shape: tuple[int, ...],
    dtype: np.dtype[Any],
    *,
    dataset: str | None = None,
    source: dict[str, Any] | None = None,
) -> str | None:
    """Why the finished file ``path`` is not this download (``None``: it is).

    ``source`` (root, uniq, path, selection, source shape and dtype) must match what the
    file recorded when it was written: an HDF5 dataset's attributes, a ``.npy`` file's
    source record. A ``.npy`` file
    without a trustworthy record is never taken for this download. Shape and dtype must
    match too.
    """
    recorded: dict[str, Any] = {}
    try:
        if fmt == "npy":
            got_shape, got_dtype, fortran, _ = _npy_header(path)
            if fortran:
                return "it is in Fortran order"
            if source is not None:
                doc, why = _npy_source(path, got_shape, got_dtype)
                if doc is None:
                    return why
                recorded = doc
        else:
            with h5py.File(path, "r") as f:
                node = f.get(dataset or "")
                if not isinstance(node, h5py.Dataset):
                    return f"it has no dataset {dataset!r}"
                got_shape, got_dtype = node.shape, node.dtype
                for key in source or {}:
                    have = node.attrs.get(key)
                    if isinstance(have, bytes):
                        have = have.decode("utf-8", "replace")
                    elif isinstance(have, np.ndarray | np.generic):
                        have = have.tolist()  # e.g. source_shape, stored as an array
                    recorded[key] = have
    except (OSError, ValueError) as exc:
        return f"it cannot be read ({exc})"
    # who it came from first: "selection '0' there, '1' now" says more than shapes do
    for key, want in (source or {}).items():
        have = recorded.get(key)
        if have != want:
            return f"it was downloaded with {key} {have!r}, not {want!r}"
    if tuple(got_shape) != shape or got_dtype != dtype:
        return f"it holds {tuple(got_shape)} {got_dtype}, this download is {shape} {dtype}"
    return None


def json_attr(value: Any) -> str:
    """A JSON text for an HDF5 attribute (``meta`` may nest lists and objects)."""
    return json.dumps(value, sort_keys=True, default=str)
