"""The served folder: which file a uniq names, and what a table-service path asks of it.

Everything here is synchronous HDF5 work, run by the app in a thread executor.

Safety: a uniq is looked up in a listing of the folder (never joined onto a path), so no
URL can name a file outside it; symlinks leading out of the folder are not listed; HDF5
external links, external raw storage and virtual datasets are refused, because h5py would
follow them to other files.
"""

from __future__ import annotations

import functools
import html
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py

from aiobisque.server.engine import (
    Internal,
    QueryError,
    TooLarge,
    node_kind,
    node_result,
    run_query,
    whole_node,
)
from aiobisque.server.export import Body
from aiobisque.server.formats import FORMATS, BadRequest, export_data, export_info
from aiobisque.server.query import ParseError, parse_aggregates, parse_filter

__all__ = [
    "SUFFIXES",
    "TEXT_FORMATS",
    "Answer",
    "Busy",
    "Limits",
    "MemoryBudget",
    "Store",
    "TableQuery",
]

SUFFIXES = (".h5", ".hdf5", ".dream3d", ".h5ebsd")
_UNIQ = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}")
TEXT_FORMATS = ("json", "extjs", "csv", "xml")
# PyTables' own bookkeeping attributes are not user metadata
_HIDDEN_ATTRS = {"CLASS", "VERSION", "TITLE", "FLAVOR", "PYTABLES_FORMAT_VERSION"}
_TABLE_ATTR = re.compile(r"FIELD_[0-9]+_(NAME|FILL)|NROWS|AUTO_INDEX|FILTERS")
_REASONS = {
    400: "Bad Request",
    404: "Not Found",
    413: "Payload Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
}


def error_page(status: int, message: str) -> Body:
    """An HTML error page, as BisQue's framework answers its aborts."""
    title = f"{status} {_REASONS.get(status, 'Error')}"
    page = (
        f"<html>\n <head>\n  <title>{title}</title>\n </head>\n <body>\n  <h1>{title}</h1>\n"
        f"  {html.escape(message)}<br /><br />\n </body>\n</html>"
    )
    return Body((page.encode("utf-8"),), "text/html; charset=utf-8")


@dataclass(frozen=True)
class Answer:
    """A status and a body; ``data`` says whether it carries array data (not info)."""

    status: int
    body: Body
    data: bool = False
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def error(cls, status: int, message: str, **headers: str) -> Answer:
        """An HTML error page (``Retry_After="5"`` becomes a ``Retry-After`` header)."""
        pairs = tuple((k.replace("_", "-"), v) for k, v in headers.items())
        return cls(status, error_page(status, message), headers=pairs)


@dataclass(frozen=True)
class Limits:
    """What requests may make this server hold (a real BisQue has no such bound).

    ``text_bytes``: the most array data one text format (json, extjs, csv, xml) answer may
    render, since text and its Python objects cost 10-30 times the binary size;
    ``total_bytes``: the most array data all data requests together may hold until their
    bodies are sent (also the most one request may read). A request beyond either answers
    413 with a message saying so; one that fits but finds the budget taken waits up to
    ``wait_seconds``, then answers 503 with ``Retry-After``.
    """

    text_bytes: int = 16 << 20
    total_bytes: int = 1 << 30
    wait_seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.text_bytes <= 0 or self.total_bytes <= 0 or self.wait_seconds < 0:
            raise ValueError("limits must be positive")


class Busy(Exception):
    """The memory budget stayed taken for the whole wait (answered 503)."""


class MemoryBudget:
    """Bytes of array data held by data requests, shared by the worker threads."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self.peak = 0
        self._cond = threading.Condition()

    def acquire(self, nbytes: int, wait: float) -> None:
        """Hold ``nbytes`` (blocks up to ``wait`` seconds; raises :class:`Busy`)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.used + nbytes <= self.total, wait):
                raise Busy(f"{self.used} of {self.total} bytes are held by other requests")
            self.used += nbytes
            self.peak = max(self.peak, self.used)

    def release(self, nbytes: int) -> None:
        """Give back what :meth:`acquire` took."""
        if nbytes:
            with self._cond:
                self.used -= nbytes
                self._cond.notify_all()


@dataclass
class TableQuery:
    """A table-service path after the uniq: its components (URL-unquoted, empty ones dropped).

    Which component is an HDF path and which is an op is only known once the file is open
    (:meth:`Store.answer`), which fills in ``path``, ``range`` and ``format`` for the log.
    """

    components: list[str]
    url: str = ""
    layout: str = "contiguous"
    limits: Limits = field(default_factory=Limits)
    budget: MemoryBudget | None = None
    reserved: int = 0  # bytes taken from ``budget``: the caller gives them back
    path: str = "/"
    range: str | None = None
    format: str = ""

    def release(self) -> None:
        """Give back the bytes this request holds (idempotent)."""
        if self.budget is not None:
            self.budget.release(self.reserved)
        self.reserved = 0

    @property
    def wants_info(self) -> bool:
        """True when this names the ``info`` op (decided before the file is open).

        BisQue itself looks for ``info`` inside any element left after the HDF path, which
        only the open file can tell; :meth:`Store.answer` follows that rule. This early
        guess (for stats, faults and budgets) only counts an element that is the op.
        """
        return any(c.partition(":")[0] == "info" for c in self.components)

    @property
    def requested_format(self) -> str | None:
        """The format a ``format:`` element names, if any (BisQue takes the first)."""
        for component in self.components:
            if "format:" in component:
                return component.replace("format:", "")
        return None


class _Reply(Exception):
    def __init__(self, answer: Answer) -> None:
        super().__init__(answer.status)
        self.answer = answer


def _fail(status: int, message: str) -> _Reply:
    return _Reply(Answer.error(status, message))


def _meta(node: h5py.HLObject, kind: str) -> dict[str, Any]:
    meta = {}
    for name in node.attrs:
        if name in _HIDDEN_ATTRS or (kind == "table" and _TABLE_ATTR.fullmatch(name)):
            continue
        try:
            meta[name] = node.attrs[name]
        except (OSError, TypeError, ValueError):  # an attribute h5py cannot decode
            continue
    return meta


class Store:
    """The HDF5 files of one folder, by uniq (the file stem).

    The listing is refreshed when a uniq is not found, so files added after start are served.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder).resolve()
        if not self.folder.is_dir():
            raise NotADirectoryError(f"not a folder: {self.folder}")
        self._index: dict[str, Path] = {}
        self._lock = threading.Lock()

    def _rescan(self) -> None:
        index: dict[str, Path] = {}
        for entry in os.scandir(self.folder):
            stem, suffix = os.path.splitext(entry.name)
            if suffix.lower() not in SUFFIXES or not _UNIQ.fullmatch(stem):
                continue
            path = Path(entry.path).resolve()
            # a symlink that leads out of the folder is not ours to serve
            if path.parent != self.folder or not path.is_file():
                continue
            index.setdefault(stem, path)
        with self._lock:
            self._index = index

    def locate(self, uniq: str) -> Path | None:
        """The file for ``uniq``, or ``None`` (also for anything that is not a plain uniq)."""
        if not _UNIQ.fullmatch(uniq) or ".." in uniq:
            return None
        path = self._index.get(uniq)
        if path is None or not path.exists():
            self._rescan()
            path = self._index.get(uniq)
        return path

    def uniqs(self) -> list[str]:
        """Every uniq currently in the folder."""
        self._rescan()
        return sorted(self._index)

    # -- table service ---------------------------------------------------------------

    def answer(self, file: Path, query: TableQuery) -> Answer:
        """Answer a table-service request for ``file`` (blocking: run it in a thread)."""
        try:
            if any("\x00" in c for c in query.components):
                # HDF5 would end the name at the NUL and find another node: refuse it
                raise _fail(400, "Illegal character in path: NUL")
            try:
                h5 = h5py.File(file, "r")
            except OSError:
                raise _fail(501, "Table cannot be read. Format not recognized") from None
            with h5:
                return self._answer(h5, query)
        except _Reply as reply:
            return reply.answer
        except ParseError as exc:
            return Answer.error(400, str(exc))
        except QueryError as exc:
            return Answer.error(400, f"Error in query: {exc}")
        except BadRequest as exc:
            return Answer.error(400, str(exc))
        except TooLarge as exc:
            return Answer.error(413, str(exc))
        except Busy as exc:
            return Answer.error(503, f"Server busy: {exc}; retry later", Retry_After="5")
        except (Internal, KeyError) as exc:
            return Answer.error(500, f"Internal error: {exc}")
        except (IndexError, TypeError, ValueError, OSError) as exc:
            # BisQue's exporters fail the same way on the same selections (e.g. the type
            # of a nested JSON answer with no columns): an internal error, not a crash
            return Answer.error(500, f"Internal error: {type(exc).__name__}: {exc}")

    def _answer(self, h5: h5py.File, query: TableQuery) -> Answer:
        node: Any = h5["/"]
        components = query.components
        end = 0
        for component in components:
            child = self._child(node, component.strip('"'))
            if child is None:
                break
            node, end = child, end + 1
        query.path = node.name or "/"
        kind = node_kind(node)
        listing = self._listing(node, kind)
        result = node_result(node, query.path, listing, _meta(node, kind))
        external = isinstance(node, h5py.Dataset) and (node.external or node.is_virtual)
        if external and not any("info" in e for e in components[end:]):
            raise _fail(501, f"{query.path} stores its data in other files; not served")
        wanted = query.requested_format
        query.format = wanted or ""
        limit = functools.partial(_check_size, query, wanted)
        ops = list(components[end:])
        # BisQue's op loop, index quirk included: special ops (info, format) are stepped
        # over, every other element is applied and then the *first* element is dropped
        i = 0
        while i < len(ops):
            element = ops[i]
            op, colon, arg = element.partition(":")
            if op in ("format", "info"):
                i += 1
                continue
            ops.pop(0)
            if op == "agg" and colon:
                sels = parse_aggregates(arg, result.headers)
                result = run_query(result, sels, None, limit)
            else:
                text = arg if op == "filter" and colon else element
                if query.range is None:
                    query.range = text
                sels_f, cond = parse_filter(text, result.headers)
                result = run_query(result, sels_f, cond, limit)
        formats = [e for e in ops if "format:" in e]
        if not formats:
            # BisQue looks the format up with a helper that returns nothing when absent,
            # then fails on it: no default format, no Accept negotiation
            raise _fail(500, "no format: requested")
        fmt = formats[0].replace("format:", "")
        query.format = fmt
        if fmt not in FORMATS:
            raise _fail(400, f"Requested export format ({fmt}) is not supported")
        if any("info" in e for e in ops):
            return Answer(200, export_info(result, fmt, query.url))
        whole = None
        untouched = result.node is not None and result.array is None and result.frame is None
        if fmt in ("csv", "xml") and untouched:
            whole = whole_node(result, limit)
        return Answer(200, export_data(result, fmt, query.url, query.layout, whole), data=True)

    def _listing(self, node: Any, kind: str) -> list[dict[str, str]]:
        """BisQue's ``group`` entry: a group's children, or the node itself."""
        if kind != "group":
            return [{"path": node.name, "type": kind}]
        children = []
        base = node.name.rstrip("/")
        for name in node:
            child = self._child(node, name)
            children.append(
                {
                    "path": f"{base}/{name}",
                    "type": node_kind(child) if child is not None else "(unknown)",
                }
            )
        if not children:
            raise _fail(404, f"Object '{node.name}' not found")
        return children

    @staticmethod
    def _child(group: Any, name: str) -> Any:
        if not isinstance(group, h5py.Group):
            return None
        # "/" would make h5py walk several levels (or jump to the root), "." and ".."
        # would not name a child
        if not name or "/" in name or name in (".", "..") or "\x00" in name:
            return None
        try:
            link = group.get(name, getlink=True)
        except (KeyError, OSError, ValueError):
            return None
        if link is None or isinstance(link, h5py.ExternalLink):
            return None
        try:
            return group[name]
        except (KeyError, OSError):  # a dangling soft link
            return None


def _check_size(query: TableQuery, fmt: str | None, nbytes: int) -> None:
    """Refuse (413) or hold (maybe waiting) ``nbytes`` about to be read for ``query``."""
    limits = query.limits
    if fmt in TEXT_FORMATS and query.reserved + nbytes > limits.text_bytes:
        raise TooLarge(
            f"the selection holds {query.reserved + nbytes} bytes; format:{fmt} is served "
            f"up to {limits.text_bytes} bytes here (ask format:hdf, or a smaller range)"
        )
    if query.reserved + nbytes > limits.total_bytes:
        raise TooLarge(
            f"the selection holds {query.reserved + nbytes} bytes; one request may read up "
            f"to {limits.total_bytes} bytes here (ask a smaller range)"
        )
    if query.budget is not None:
        query.budget.acquire(nbytes, limits.wait_seconds)
    query.reserved += nbytes
