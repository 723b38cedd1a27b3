"""The journal of a download to a file: what is being downloaded and which blocks are safe.

``FILE.part.journal`` sits beside ``FILE.part``. It is JSON lines: the first line describes
the download (remote root, uniq, path, selection, shapes, dtype, block grid), each later
line names one block whose data is already durable in ``FILE.part`` (or, for a block in
flight, how many rows of each of its requests are). Every line is fsync'd
before the next block is counted, so after a crash, Ctrl-C or ``kill -9`` the journal never
claims more than the file holds. A last line cut short by the crash is ignored.

The journal file is also the download's lock: a second process writing the same output is
refused instead of interleaving blocks.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from aiobisque.errors import BisqueError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, the journal still works
    fcntl = None  # type: ignore[assignment]

__all__ = ["Journal", "JournalError", "LockedError"]

_VERSION = 1
_MAGIC = "aiobisque_journal"


class JournalError(BisqueError):
    """A journal that cannot be read back (not ours, or damaged beyond its last line)."""


class LockedError(BisqueError):
    """Another process is downloading to the same output right now."""


class Journal:
    """An open, locked journal file. Use :meth:`open`, then :meth:`start` or :meth:`load`."""

    def __init__(self, path: Path, fd: int):
        self.path = path
        self._fd = fd
        self.header: dict[str, Any] | None = None
        self.done: set[int] = set()
        #: checksums recorded with some blocks (block -> text), to re-check on resume
        self.digests: dict[int, str] = {}
        #: blocks not done but partly in the output: block -> (request_bytes of the plan,
        #: {request index: rows of it in the output})
        self.partial: dict[int, tuple[int, dict[int, int]]] = {}

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, create: bool = True) -> Journal:
        """Open and lock ``path``, creating it empty if needed.

        With ``create=False`` a missing journal raises :class:`FileNotFoundError`, so that
        a download can look at an earlier run's journal without leaving a file behind.
        """
        path = Path(path)
        fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise LockedError(
                    f"another process is downloading to {path.name.removesuffix('.part.journal')}"
                    f" (its journal {path} is locked)"
                ) from None
            # the lock is only worth something on the file now at that path: another
            # process may have removed (and a third recreated) it between open and flock
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                raise LockedError(
                    f"another process is working on {path.name.removesuffix('.part.journal')}"
                    f" (its journal {path} was replaced while this one opened it)"
                )
        return cls(path, fd)

    @property
    def empty(self) -> bool:
        return os.fstat(self._fd).st_size == 0

    def load(self) -> dict[str, Any]:
        """Read the header and completed blocks; drop a last line cut short by a crash."""
        size = os.fstat(self._fd).st_size
        raw = os.pread(self._fd, size, 0)
        complete = raw.rfind(b"\n") + 1
        if complete < size:
            os.ftruncate(self._fd, complete)  # the next append must start on a fresh line
        lines = raw[:complete].decode("utf-8", "replace").splitlines()
        if not lines:
            raise JournalError(f"{self.path} holds no complete header")
        try:
            header = json.loads(lines[0])
            if not isinstance(header, dict) or header.get(_MAGIC) != _VERSION:
                raise ValueError("not an aiobisque journal")
            done = set()
            digests: dict[int, str] = {}
            partial: dict[int, tuple[int, dict[int, int]]] = {}
            for line in lines[1:]:
                entry = json.loads(line)
                if "part" in entry:  # a block's progress, finer than whole requests
                    rows = {int(k): int(v) for k, v in dict(entry["rows"]).items()}
                    partial[int(entry["part"])] = (int(entry["rb"]), rows)
                    continue
                block = entry["block"]
                if not isinstance(block, int) or not 0 <= block < header["blocks"]:
                    raise ValueError(f"block {block!r} out of range")
                done.add(block)
                if isinstance(entry.get("crc"), str):
                    digests[block] = entry["crc"]
        except (ValueError, KeyError, TypeError) as exc:
            raise JournalError(f"{self.path} is damaged: {exc}") from None
        self.header = header
        self.done = done
        self.digests = digests
        self.partial = {b: p for b, p in partial.items() if b not in done}
        return header

    def start(self, header: dict[str, Any]) -> None:
        """Begin a fresh journal (any old content is dropped)."""
        os.ftruncate(self._fd, 0)
        self.header = dict(header)
        self.done = set()
        self.digests = {}
        self.partial = {}
        self._append({_MAGIC: _VERSION, **header})

    def mark(self, block: int, digest: str | None = None) -> None:
        """Record that ``block`` is durable in the output (call after syncing the output).

        ``digest``, when given, is a checksum of the block's data, kept so that a resume
        can fetch the block again and tell whether the remote still holds the same values.
        """
        entry: dict[str, Any] = {"block": block}
        if digest is not None:
            entry["crc"] = digest
        self._append(entry)
        self.done.add(block)
        self.partial.pop(block, None)
        if digest is not None:
            self.digests[block] = digest

    def note_rows(self, request_bytes: int, blocks: dict[int, dict[int, int]]) -> None:
        """Record, for each ``block``, that the first ``rows[i]`` rows of request ``i`` of
        its plan (made with ``request_bytes``) are durable in the output (call after
        syncing them). One write and one fsync for all of them."""
        entries = [{"part": block, "rb": request_bytes,
                    "rows": {str(i): n for i, n in sorted(rows.items())}}
                   for block, rows in sorted(blocks.items())]
        self._append_all(entries)
        for block, rows in blocks.items():
            self.partial[block] = (request_bytes, dict(rows))

    def _append(self, entry: dict[str, Any]) -> None:
        self._append_all([entry])

    def _append_all(self, entries: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in entries)
        end = os.fstat(self._fd).st_size
        os.pwrite(self._fd, text.encode(), end)
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # closing also releases the lock
            self._fd = -1

    def remove(self) -> None:
        """Delete the journal (the lock is held until the file is closed)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.close()
