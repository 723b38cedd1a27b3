"""A download's course, decided from what is on disk: skip, resume, or start afresh.

Before any data moves, the bulk downloader asks :class:`Courses` what to do with a target:

* its output exists and provably holds this very download: skip it;
* a ``.part`` file and journal of this same request (root, uniq, path, selection, format)
  exist and the remote array still has the recorded shape and dtype: resume it;
* otherwise start a fresh ``.part`` file and journal, once every check has passed (a bad
  selection or an output holding something else leaves the folder as it was).

Everything here is blocking file work: the downloader runs it in a thread.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from aiobisque.blocks import BlockGrid
from aiobisque.errors import OutputExistsError, ResumeError
from aiobisque.journal import Journal, JournalError
from aiobisque.outputs import (
    Hdf5Output,
    NpyOutput,
    Output,
    chunk_grid,
    existing_output_mismatch,
    json_attr,
    output_format,
    write_source_record,
)
from aiobisque.protocol import redact_url, split_path
from aiobisque.selection import Selection, normalize_selection
from aiobisque.slices import format_slices
from aiobisque.table import RemoteArray

if TYPE_CHECKING:
    from aiobisque.bulk import Target

__all__ = ["Course", "Courses", "sibling"]

log = logging.getLogger("aiobisque")


@dataclass
class Course:
    """A download's decided course: skip a finished output, or fill a ``.part`` file."""

    sel: Selection
    grid: BlockGrid
    journal: Journal | None = None
    output: Output | None = None
    skipped: bool = False

    def close(self) -> None:
        if self.output is not None:
            self.output.close()
        if self.journal is not None:
            self.journal.close()


@dataclass(frozen=True)
class Courses:
    """Decides each target's :class:`Course` for a downloader on server ``root``.

    ``restart`` discards partial downloads and replaces existing outputs; ``block_bytes``
    sizes new block grids, ``chunk_bytes`` the HDF5 chunks of new ``.h5`` outputs.
    """

    root: str
    restart: bool
    block_bytes: int
    chunk_bytes: int

    def _identity(self, target: Target, arr: RemoteArray) -> dict[str, Any]:
        fmt = output_format(target.output)
        return {
            "root": redact_url(self.root),
            "uniq": arr.info.uniq,
            "path": "/".join(split_path(arr.info.path)),
            "selection": format_slices(target.index),
            "format": fmt,
            "dataset": self._dataset(target, arr) if fmt == "hdf5" else None,
            "compression": target.compression if fmt == "hdf5" else None,
        }

    @staticmethod
    def _source(identity: dict[str, Any], arr: RemoteArray) -> dict[str, Any]:
        """What a finished output records about where its data came from.

        The remote array's shape and type belong to it: a selection counting from the end
        (``-1``) picks other rows once the array has grown, with the same result shape.
        """
        source = {key: identity[key] for key in ("root", "uniq", "path", "selection")}
        return {**source, "source_shape": list(arr.shape), "source_dtype": str(arr.dtype)}

    @staticmethod
    def _dataset(target: Target, arr: RemoteArray) -> str:
        return target.dataset or split_path(arr.info.path)[-1]

    def prepare(self, target: Target, arr: RemoteArray,
                version: dict[str, Any] | None = None) -> Course:
        """Decide between skip, resume and a fresh start (blocking).

        Files are only created once every check has passed: a bad selection or an output
        that holds something else leaves the folder as it was. ``version`` identifies the
        remote's current version (``{"ts": ...}`` from the data service, when known): it
        is recorded in a new journal, and a ``.part`` file of another version is refused.
        """
        out = target.output
        part = sibling(out, ".part")
        sel = normalize_selection(target.index, arr.shape)
        identity = self._identity(target, arr)
        journal = _existing_journal(out)
        try:
            previous = None if journal is None or self.restart else _load(journal, out)
            if not self.restart and out.exists() and not part.exists():
                return self._finished(target, arr, sel, identity, journal, previous)
            if journal is not None and previous is not None:
                self._check_resumable(target, arr, identity, previous, version)
                resumed = self._resume(target, arr, sel, identity, journal, previous)
                if resumed is not None:
                    return resumed
        except BaseException:
            if journal is not None:
                journal.close()
            raise
        return self._start(target, arr, sel, identity, journal, version)

    def _finished(self, target: Target, arr: RemoteArray, sel: Selection,
                  identity: dict[str, Any], journal: Journal | None,
                  previous: dict[str, Any] | None) -> Course:
        """Skip an output that provably holds this download; refuse any other file."""
        out = target.output
        fmt = identity["format"]
        source = self._source(identity, arr)
        if (journal is not None and previous is not None and fmt == "npy"
                and all(previous.get(k) == v for k, v in identity.items())
                and previous.get("source_shape") == source["source_shape"]
                and previous.get("source_dtype") == source["source_dtype"]
                and len(journal.done) == previous.get("blocks")):
            # killed between the rename and the source record: the complete journal of this
            # very download proves what the file holds
            with contextlib.suppress(OSError):
                write_source_record(out, source)
        why = existing_output_mismatch(out, fmt, sel.shape, arr.dtype,
                                       dataset=identity["dataset"], source=source)
        if why is not None:
            raise OutputExistsError(
                f"{out} already exists and is not this download ({why}); rerun with "
                "--restart to replace it"
            )
        if journal is not None:
            journal.remove()
        return Course(sel, BlockGrid(sel.shape, 0, 1), skipped=True)

    @staticmethod
    def _check_resumable(target: Target, arr: RemoteArray, identity: dict[str, Any],
                         previous: dict[str, Any],
                         version: dict[str, Any] | None = None) -> None:
        """Refuse a ``.part`` file of another request, then one whose remote changed."""
        part = sibling(target.output, ".part")
        # which request first: another path's array has another shape too, and "changed"
        # would be the wrong diagnosis
        for key, value in identity.items():
            if previous.get(key) != value:
                raise ResumeError(
                    f"{part} holds another download ({key} {previous.get(key)!r} there, "
                    f"{value!r} now); rerun with --restart to discard it"
                )
        was = (tuple(previous.get("source_shape", ())), previous.get("source_dtype"))
        now = (arr.shape, str(arr.dtype))
        if was != now:
            raise ResumeError(
                f"the remote array {target.where} changed since {part} was started: it was "
                f"{was[0]} {was[1]}, it is now {now[0]} {now[1]}; rerun with --restart "
                "to download it again from scratch"
            )
        then = (previous.get("remote_version") or {}).get("ts")
        current = (version or {}).get("ts")
        if then and current and then != current:
            # same shape and type, other values: resuming would mix two versions
            raise ResumeError(
                f"the remote array {target.where} changed since {part} was started: its "
                f"resource was modified (ts {then!r} then, {current!r} now), so the saved "
                "blocks hold the older version; rerun with --restart to download it again "
                "from scratch"
            )

    def _resume(self, target: Target, arr: RemoteArray, sel: Selection,
                identity: dict[str, Any], journal: Journal,
                previous: dict[str, Any]) -> Course | None:
        """The ``.part`` file reopened where the journal left it (``None``: start over)."""
        out = target.output
        part = sibling(out, ".part")
        try:
            grid = BlockGrid(sel.shape, int(previous["block_axis"]),
                             int(previous["block_rows"]))
        except (KeyError, TypeError, ValueError):
            log.warning("%s has no usable block grid; starting over", journal.path)
            return None
        if len(grid) != previous.get("blocks") or not part.exists():
            log.warning("%s does not match its journal; starting over", part)
            return None
        try:
            output = self._output(part, identity, arr, sel.shape, arr.dtype, reopen=True)
        except (OSError, ValueError) as exc:
            log.warning("cannot continue %s (%s); starting over", part, exc)
            return None
        log.info("resuming %s: %d of %d blocks already saved", out, len(journal.done),
                 len(grid))
        return Course(sel, grid, journal, output)

    def _start(self, target: Target, arr: RemoteArray, sel: Selection,
               identity: dict[str, Any], journal: Journal | None,
               version: dict[str, Any] | None = None) -> Course:
        """A fresh ``.part`` file and journal (any earlier ones are discarded)."""
        out = target.output
        part = sibling(out, ".part")
        if journal is None:
            journal = Journal.open(sibling(out, ".part.journal"))  # also takes the lock
        shape, dtype = sel.shape, arr.dtype
        try:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
            align = (chunk_grid(shape, dtype.itemsize, self.chunk_bytes)
                     if identity["format"] == "hdf5" else None)
            grid = BlockGrid.fit(shape, dtype.itemsize, self.block_bytes, align=align)
            output = self._output(part, identity, arr, shape, dtype,
                                  extra_attrs={"source_shape": list(arr.shape),
                                               "meta": json_attr(arr.info.meta)})
            try:
                journal.start({
                    **identity,
                    "source_shape": list(arr.shape),
                    "source_dtype": str(arr.dtype),
                    "shape": list(shape),
                    "block_axis": grid.axis,
                    "block_rows": grid.rows,
                    "blocks": len(grid),
                    "remote_version": version,
                })
            except BaseException:
                output.close()
                raise
        except BaseException:
            # nothing of value was written (e.g. no disk space): leave no litter behind
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
            journal.remove()
            raise
        return Course(sel, grid, journal, output)

    def _output(self, part: Path, identity: dict[str, Any], arr: RemoteArray,
                shape: tuple[int, ...], dtype: np.dtype[Any], *, reopen: bool = False,
                extra_attrs: dict[str, Any] | None = None) -> Output:
        """Create (or with ``reopen``, continue) the ``.part`` file in the target's format."""
        source = self._source(identity, arr)
        if identity["format"] == "npy":
            if reopen:
                return NpyOutput.reopen(part, shape, dtype, source=source)
            return NpyOutput.create(part, shape, dtype, source=source)
        if reopen:
            return Hdf5Output.reopen(part, identity["dataset"], shape, dtype)
        return Hdf5Output.create(part, identity["dataset"], shape, dtype,
                                 compression=identity["compression"],
                                 attrs={**source, **(extra_attrs or {})},
                                 chunk_bytes=self.chunk_bytes)


def sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _existing_journal(out: Path) -> Journal | None:
    """The journal an earlier run left for ``out``, locked; ``None`` when there is none."""
    try:
        return Journal.open(sibling(out, ".part.journal"), create=False)
    except FileNotFoundError:
        return None


def _load(journal: Journal, out: Path) -> dict[str, Any] | None:
    """The journal's header, or ``None`` when it holds none worth resuming from."""
    if journal.empty:
        return None
    try:
        return journal.load()
    except JournalError as exc:
        log.warning("%s; starting %s over", exc, out)
        return None
