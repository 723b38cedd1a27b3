"""Downloading a table to a file, resumably: row blocks saved one by one, then assembled.

A table is read column by column (:mod:`aiobisque.columns`) and its text columns have no
width until they are read, so it cannot be written in place into a preallocated file as
arrays are. Instead the selected rows are cut into blocks, and each block, read with
:func:`~aiobisque.columns.read_table`, is saved whole as ``FILE.part.d/NNNNNN.npy``
(written to a temporary name, synced, then renamed: a block file exists only complete).
An interrupted download keeps its block files; the next run checks that
``FILE.part.d/source.json`` describes the same download (server, resource, path, rows,
columns and their types, the table's length) and fetches only the missing blocks. Once
every block is in, the output (``.npy`` structured, ``.h5`` compound with text as UTF-8
bytes, or ``.csv``) is assembled block by block into ``FILE.part``, synced and renamed to
``FILE``; ``FILE.source.json`` then records what it holds, so a rerun skips it.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import functools
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from aiobisque.columns import read_table, select_columns
from aiobisque.journal import LockedError

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows
    fcntl = None  # type: ignore[assignment]
from aiobisque.errors import OutputExistsError, ResumeError, SelectionError, UsageError
from aiobisque.outputs import output_format
from aiobisque.progress import DownloadStats
from aiobisque.protocol import ArrayInfo, redact_url, split_path
from aiobisque.resume import sibling
from aiobisque.selection import DimSelection, normalize_selection
from aiobisque.slices import format_slices

if TYPE_CHECKING:
    from aiobisque.bulk import BulkDownloader, FileResult, Target

__all__ = ["download_table"]

log = logging.getLogger("aiobisque")

#: bytes a text cell is counted as when sizing row blocks (its width is unknown)
_TEXT_CELL_BYTES = 32
_RECORD_SUFFIX = ".source.json"


def _rows(info: ArrayInfo, index: tuple[Any, ...], target: Target) -> DimSelection:
    picked = [i for i in index if i is not Ellipsis]
    if len(picked) > 1 or (picked and not isinstance(picked[0], int | slice)):
        raise SelectionError(f"{target.where} is a table: select rows only (one index or "
                             f"slice), got {target.slices!r}")
    assert info.shape is not None
    return normalize_selection(picked[0] if picked else slice(None), info.shape).dims[0]


def _identity(downloader: BulkDownloader, target: Target, info: ArrayInfo) -> dict[str, Any]:
    return {
        "kind": "table",
        "root": redact_url(downloader.table.session.root),
        "uniq": info.uniq,
        "path": "/".join(split_path(info.path)),
        "selection": format_slices(target.index),
        "format": output_format(target.output),
        "dataset": target.dataset or split_path(info.path)[-1],
        "rows": info.shape[0] if info.shape else 0,
        "columns": dict(info.columns),
        "wanted": list(target.columns) if target.columns is not None else None,
    }


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = sibling(path, f".{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _finished(out: Path, identity: dict[str, Any]) -> bool:
    """Whether ``out`` provably holds this download (its record matches, file unchanged)."""
    record = _read_json(sibling(out, _RECORD_SUFFIX))
    if record is None or record.get("identity") != identity:
        return False
    try:
        st = out.stat()
    except OSError:
        return False
    return record.get("size") == st.st_size and record.get("mtime_ns") == st.st_mtime_ns


def _check_resumable(blocks_dir: Path, identity: dict[str, Any], target: Target,
                     version: Any) -> dict[str, Any]:
    """The earlier run's record, once it is shown to be this download of the same table."""
    previous = _read_json(blocks_dir / "source.json")
    if previous is None:
        raise ResumeError(f"{blocks_dir} has no readable source.json, so its blocks cannot "
                          "be trusted; rerun with --restart to start over")
    for key in ("root", "uniq", "path", "selection", "format", "dataset", "wanted"):
        if previous.get(key) != identity[key]:
            raise ResumeError(f"{blocks_dir} holds another download ({key} "
                              f"{previous.get(key)!r} there, {identity[key]!r} now); rerun "
                              "with --restart to discard it")
    for key in ("rows", "columns"):
        if previous.get(key) != identity[key]:
            raise ResumeError(
                f"the remote table {target.where} changed since {blocks_dir} was started "
                f"({key} {previous.get(key)!r} then, {identity[key]!r} now); rerun with "
                "--restart to download it again from scratch")
    was = previous.get("remote_version")
    if was is not None and version is not None and was != version:
        raise ResumeError(
            f"the remote table {target.where} changed since {blocks_dir} was started (the "
            f"data service says {version}, it said {was}); rerun with --restart to "
            "download it again from scratch")
    return previous


def _row_bytes(info: ArrayInfo) -> int:
    """About how many bytes one row takes (text cells counted at a fixed size)."""
    return sum(_TEXT_CELL_BYTES if info.dtype is None or info.dtype[n].kind == "O"
               else info.dtype[n].itemsize for n in info.headers) or 1


def _block_rows(info: ArrayInfo, block_bytes: int) -> int:
    return max(1, block_bytes // _row_bytes(info))


def _save_block(path: Path, records: np.ndarray[Any, Any]) -> None:
    tmp = sibling(path, f".{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.save(f, records, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if exc.errno == errno.ENOSPC:
            raise OSError(errno.ENOSPC, f"no space left on the device for {path.parent} "
                                        "(the blocks saved so far are kept: free some space "
                                        "and rerun the same command to resume)") from None
        raise


def _final_dtype(blocks: list[np.ndarray[Any, Any]], fmt: str) -> np.dtype[Any]:
    """The output's record type: each text column as wide as its widest cell."""
    first = blocks[0].dtype
    fields = []
    for name in first.names or ():
        if first[name].kind != "U":
            fields.append((name, first[name]))
            continue
        if fmt == "hdf5":  # UTF-8 bytes, as PyTables' StringCol stores text
            width = max(np.char.encode(b[name], "utf-8").dtype.itemsize for b in blocks)
            fields.append((name, np.dtype(f"S{max(1, width)}")))
        else:
            width = max(b.dtype[name].itemsize // 4 for b in blocks)
            fields.append((name, np.dtype(f"U{max(1, width)}")))
    return np.dtype(fields)


def _converted(block: np.ndarray[Any, Any], dtype: np.dtype[Any]) -> np.ndarray[Any, Any]:
    out = np.empty(block.shape, dtype=dtype)
    for name in dtype.names or ():
        column = block[name]
        out[name] = np.char.encode(column, "utf-8") if dtype[name].kind == "S" else column
    return out


def _assemble(part: Path, files: list[Path], fmt: str, dataset: str,
              attrs: dict[str, Any]) -> tuple[np.dtype[Any], int]:
    """Write every block into ``part`` in order (one block in memory at a time)."""
    blocks = [np.load(f, mmap_mode="r", allow_pickle=False) for f in files]
    total = sum(len(b) for b in blocks)
    dtype = _final_dtype(blocks, fmt)
    if fmt == "npy":
        out = np.lib.format.open_memmap(part, mode="w+", dtype=dtype, shape=(total,))
        at = 0
        for block in blocks:
            out[at:at + len(block)] = _converted(block, dtype)
            at += len(block)
        out.flush()
        del out
    elif fmt == "hdf5":
        # a PyTables table, as BisQue's table service reads (and uploads write) them: its
        # booleans are PyTables' own, where h5py's would read back as an enum
        import tables

        where, _, leaf = dataset.strip("/").rpartition("/")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", tables.NaturalNameWarning)
            with tables.open_file(os.fspath(part), "w") as h5:
                node = h5.create_table("/" + where, leaf, description=dtype,
                                       expectedrows=max(1, total), createparents=True)
                for block in blocks:
                    node.append(_converted(block, dtype))
                for key, value in attrs.items():
                    node.attrs[key] = value
                node.flush()
    else:
        with open(part, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(list(dtype.names or ()))
            for block in blocks:
                writer.writerows(block.tolist())
    fd = os.open(part, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return dtype, total


def _block_files(blocks_dir: Path, n: int) -> Iterator[Path]:
    return (blocks_dir / f"{b:06d}.npy" for b in range(n))


async def download_table(downloader: BulkDownloader, target: Target, info: ArrayInfo,
                         started: float, version: dict[str, Any] | None) -> FileResult:
    """Download the table ``info`` to ``target.output`` (see the module docstring);
    ``version`` is the resource's, from :meth:`BulkDownloader.remote_version`."""
    from aiobisque.bulk import FileResult, _in_thread

    out = target.output
    fmt = output_format(out)
    if target.compression is not None:
        raise UsageError("compression applies to array outputs, not to tables")
    dim = _rows(info, target.index, target)
    identity = _identity(downloader, target, info)
    blocks_dir = sibling(out, ".part.d")
    part = sibling(out, ".part")
    shape = (dim.count,)
    if not downloader.restart and out.exists() and not blocks_dir.exists():
        if _finished(out, identity):
            log.info("%s already holds %s; skipped", out, target.where)
            downloader.meter.add(0, 0)
            downloader.meter.file_done()
            return FileResult(target, shape, np.dtype(info.dtype), 1, skipped=True)
        raise OutputExistsError(f"{out} already exists and is not this download; rerun "
                                "with --restart to replace it")
    # a column no download can read: refused before any file is made
    select_columns(info, target.columns)
    if downloader.restart and blocks_dir.exists():
        await _in_thread(lambda: shutil.rmtree(blocks_dir))
    fresh = not blocks_dir.exists()
    if fresh:
        await _in_thread(lambda: blocks_dir.mkdir())
    lock = _lock(blocks_dir, out)
    try:
        per_block = _block_rows(info, downloader.block_bytes)
        if not fresh:
            previous = _check_resumable(blocks_dir, identity, target, version)
            # the blocks on disk were cut by the first run's block size, whatever it is now
            per_block = int(previous.get("rows_per_block") or per_block)
            await _check_saved_block(downloader, info, dim, blocks_dir, per_block,
                                     downloader.table.session.config, previous, version)
        _write_json(blocks_dir / "source.json",
                    {**identity, "rows_per_block": per_block, "remote_version": version})
        return await _fill_and_finish(downloader, target, info, dim, identity, blocks_dir,
                                      part, fmt, per_block, started)
    finally:
        os.close(lock)


def _lock(blocks_dir: Path, out: Path) -> int:
    """Hold ``blocks_dir/lock``: one process at a time fills a table download."""
    fd = os.open(blocks_dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise LockedError(f"another process is downloading to {out} right now "
                              f"({blocks_dir} is locked)") from None
    return fd


async def _check_saved_block(downloader: BulkDownloader, info: ArrayInfo, dim: DimSelection,
                             blocks_dir: Path, per_block: int, cfg: Any,
                             previous: dict[str, Any], version: Any) -> None:
    """Without a ``ts`` to vouch for the remote's version, fetch the last saved block again
    and compare: other values mean the table changed, and resuming would mix versions."""
    if version is not None and previous.get("remote_version") is not None:
        return
    saved = sorted(n for n in os.listdir(blocks_dir) if n.endswith(".npy") and n[:-4].isdigit())
    if not saved:
        return
    b = int(saved[-1][:-4])
    k0, k1 = b * per_block, min(dim.count, (b + 1) * per_block)
    rows = DimSelection(dim.first + k0 * dim.step if k1 > k0 else 0, dim.step, k1 - k0)
    wanted = previous.get("wanted")
    now = await read_table(downloader.table, info, rows, wanted, config=cfg)
    kept = np.load(blocks_dir / saved[-1], allow_pickle=False)
    if now.tobytes() != kept.tobytes() or now.dtype != kept.dtype:
        raise ResumeError(
            f"the remote table {info.uniq}/{info.path} changed since {blocks_dir} was "
            f"started: rows {k0}:{k1} of the selection hold other values now; resuming "
            "would mix two versions, so rerun with --restart to download it again")


async def _fill_and_finish(downloader: BulkDownloader, target: Target, info: ArrayInfo,
                           dim: DimSelection, identity: dict[str, Any], blocks_dir: Path,
                           part: Path, fmt: str, per_block: int,
                           started: float) -> FileResult:
    """Fetch the missing blocks, then assemble the output."""
    from aiobisque.bulk import FileResult, _in_thread

    out = target.output
    shape = (dim.count,)
    n_blocks = max(1, -(-dim.count // per_block))
    files = list(_block_files(blocks_dir, n_blocks))
    resumed = sum(1 for f in files if f.exists())
    stats = DownloadStats()
    cfg = downloader.table.session.config
    row_bytes = _row_bytes(info)
    sizes = [(min(dim.count, (b + 1) * per_block) - b * per_block) * row_bytes
             for b in range(n_blocks)]
    done = [s for s, f in zip(sizes, files, strict=True) if f.exists()]
    # progress moves a block at a time (text cells have no size until read)
    downloader.meter.add(sum(sizes), n_blocks, sum(done), len(done))
    for b, file in enumerate(files):
        if file.exists():
            continue
        k0, k1 = b * per_block, min(dim.count, (b + 1) * per_block)
        rows = DimSelection(dim.first + k0 * dim.step if k1 > k0 else 0, dim.step, k1 - k0)
        part_stats = DownloadStats()
        try:
            records = await read_table(downloader.table, info, rows, target.columns,
                                       config=cfg, stats=part_stats)
        finally:
            stats.add(part_stats)
        await _in_thread(functools.partial(_save_block, file, records))
        downloader.meter.block_done(("table", id(target), b), sizes[b], 1, part_stats.retries)

    attrs = {k: v if isinstance(v, str | int) else json.dumps(v) for k, v in identity.items()}

    def finish() -> np.dtype[Any]:
        try:
            dtype, total = _assemble(part, files, fmt, identity["dataset"], attrs)
            if total != dim.count:  # never finalise a file with rows missing or to spare
                raise ResumeError(
                    f"{blocks_dir} holds {total:,} rows where the selection has "
                    f"{dim.count:,}; rerun with --restart to download it again")
            os.replace(part, out)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
            raise
        st = out.stat()
        _write_json(sibling(out, _RECORD_SUFFIX),
                    {"identity": identity, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
        shutil.rmtree(blocks_dir)
        return dtype

    result_dtype = await _in_thread(finish)
    stats.seconds = time.perf_counter() - started
    stats.complete = True
    downloader.meter.file_done()
    result = FileResult(target, shape, result_dtype, n_blocks, resumed_blocks=resumed,
                        resumed_bytes=sum(done) * result_dtype.itemsize // max(1, row_bytes),
                        stats=stats)
    log.info("saved %s", result)
    return result
