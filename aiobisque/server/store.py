"""The served folder: which file a uniq names, and what a table-service path asks of it.

Everything here is synchronous HDF5 work, run by the app in a thread executor.

Safety: a uniq is looked up in a listing of the folder (never joined onto a path), so no
URL can name a file outside it; symlinks leading out of the folder are not listed; HDF5
external links, external raw storage and virtual datasets are refused, because h5py would
follow them to other files.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from aiobisque.server import export
from aiobisque.server.export import Body
from aiobisque.server.ranges import RangeError, is_range_like, parse_range

__all__ = ["SUFFIXES", "Answer", "Store", "TableQuery"]

SUFFIXES = (".h5", ".hdf5", ".dream3d", ".h5ebsd")
_UNIQ = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}")
FORMATS = ("hdf", "json", "extjs", "csv", "xml")
# PyTables' own bookkeeping attributes are not user metadata
_HIDDEN_ATTRS = {"CLASS", "VERSION", "TITLE", "FLAVOR"}
_TABLE_ATTR = re.compile(r"FIELD_[0-9]+_(NAME|FILL)|NROWS|AUTO_INDEX|FILTERS")
_ACCEPT = {
    "application/x-hdf5": "hdf",
    "application/x-hdf": "hdf",
    "application/json": "json",
    "text/csv": "csv",
}


@dataclass(frozen=True)
class Answer:
    """A status and a body; ``data`` says whether it carries array data (not info)."""

    status: int
    body: Body
    data: bool = False

    @classmethod
    def error(cls, status: int, message: str) -> Answer:
        """A short text error."""
        return cls(status, Body.text(message + "\n", "text/plain"))


@dataclass
class TableQuery:
    """A table-service path split into its parts (all URL-unquoted).

    ``components`` are what follows the uniq: HDF path components, then an optional range,
    then ops (``info``, ``format:F``). Which component is which is only known once the
    file is open (:meth:`Store.answer`).
    """

    components: list[str]
    accept: str = ""
    layout: str = "contiguous"
    # filled in by Store.answer for the request log
    path: str = "/"
    range: str | None = None
    format: str = "xml"
    info: bool = field(default=False)

    @property
    def wants_info(self) -> bool:
        """True when this asks for metadata (so it is not a data request)."""
        return "info" in self.components


class _Reply(Exception):
    def __init__(self, answer: Answer) -> None:
        super().__init__(answer.status)
        self.answer = answer


def _fail(status: int, message: str) -> _Reply:
    return _Reply(Answer.error(status, message))


def _node_name(component: str) -> str:
    """The node name a path component means: without the quotes that escape range-like names."""
    if len(component) >= 2 and component[0] == component[-1] == '"':
        return component[1:-1]
    return component


def _is_op(component: str) -> bool:
    return component == "info" or component.startswith("format:")


def _node_kind(node: Any) -> str | None:
    if isinstance(node, h5py.Group):
        return "group"
    if isinstance(node, h5py.Dataset):
        return "table" if node.dtype.names and node.ndim == 1 else "matrix"
    return None


def _meta(node: h5py.HLObject, kind: str) -> dict[str, Any]:
    meta = {}
    for name in node.attrs:
        if name in _HIDDEN_ATTRS or (kind == "table" and _TABLE_ATTR.fullmatch(name)):
            continue
        try:
            meta[name] = export.jsonable(node.attrs[name])
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
            try:
                h5 = h5py.File(file, "r")
            except OSError:
                raise _fail(501, "resource is not readable as a table") from None
            with h5:
                return self._answer(h5, query)
        except _Reply as reply:
            return reply.answer

    def _answer(self, h5: h5py.File, query: TableQuery) -> Answer:
        node: Any = h5["/"]
        rest = list(query.components)
        while rest and isinstance(node, h5py.Group):
            child = self._child(node, rest[0])
            if child is None:
                break
            node = child
            rest.pop(0)
        query.path = node.name
        self._split_range(rest, query)
        kind = _node_kind(node)
        if kind is None:
            raise _fail(404, f"no table node at {node.name}")
        if kind == "group" and query.range is not None:
            raise _fail(400, f"range {query.range!r} given for {node.name}, a group, not an array")
        if query.info:
            return self._info(node, kind, query)
        if kind == "group":
            raise _fail(400, f"{node.name} is a group, not an array")
        return self._data(node, kind, query)

    @staticmethod
    def _child(group: h5py.Group, component: str) -> Any:
        name = _node_name(component)
        # "/" would make h5py walk several levels (or jump to the root), "." and ".."
        # would not name a child
        if not name or "/" in name or name in (".", ".."):
            return None
        link = group.get(name, getlink=True)
        if link is None or isinstance(link, h5py.ExternalLink):
            return None
        try:
            return group[name]
        except (KeyError, OSError):  # a dangling soft link
            return None

    @staticmethod
    def _split_range(rest: list[str], query: TableQuery) -> None:
        """Take the range and ops from what follows the HDF path (into ``query``).

        The HDF path ends at the first component that names no existing node; what follows
        must be an optional range, then ops. So a leftover component that is neither an op
        nor range-like names a missing node (404), after a group and after a dataset alike;
        a range-like one is the range, checked against the node's shape later (400). One
        that mixes range separators with other characters (``1;x``) is most likely a
        mistyped range, so it gets a 400 naming both readings.
        """
        ops = []
        first = rest[0] if rest else "info"
        if not _is_op(first) and is_range_like(first):
            query.range = rest.pop(0)
        elif _node_name(first) == first and (";" in first or "," in first):
            raise _fail(
                400,
                f"no node {first!r} under {query.path}, and {first!r} is not a range"
                " (digits and ';', ':', ',' only)",
            )
        for component in rest:
            if component == "":
                continue
            if component == "info":
                query.info = True
            elif component.startswith("format:"):
                query.format = component[len("format:") :].lower()
                if query.format not in FORMATS:
                    raise _fail(400, f"unknown format {query.format!r}")
            elif is_range_like(component):  # the range, if any, was taken above
                raise _fail(400, f"unexpected range {component!r} after the range or ops")
            else:
                raise _fail(404, f"no node {_node_name(component)!r} under {query.path}")
            ops.append(component)
        if not any(op.startswith("format:") for op in ops):
            query.format = _negotiate(query.accept)

    def _info(self, node: Any, kind: str, query: TableQuery) -> Answer:
        doc: dict[str, Any]
        if kind == "group":
            children = []
            for name in node:
                child = self._child(node, name)
                child_kind = _node_kind(child)
                if child_kind is not None:
                    children.append({"path": child.name, "type": child_kind})
            doc = {"group": children}
        else:
            # like BisQue, which applies a range before answering info: describe the
            # selection (the whole node when no range is given)
            sel, columns = self._selection(node, kind, query)
            if columns is not None:
                headers = columns
                bools = _bitfield_bools(node)[1]
                types = ["bool" if name in bools else node.dtype[name].name for name in headers]
                sizes = [_length(sel[0]), len(headers)]
            else:
                sizes = [_length(s) for s in sel]
                dim1 = sel[1] if node.ndim >= 2 else slice(0, 1)
                headers = [str(i) for i in range(dim1.start, dim1.stop)]
                types = ["bool" if _bitfield_bools(node)[0] else node.dtype.name] * len(headers)
            doc = {
                "headers": headers,
                "types": types,
                "sizes": sizes,
                "group": [{"path": node.name, "type": kind}],
            }
            meta = _meta(node, kind)
            if meta:
                doc["meta"] = meta
        if query.format in ("json", "extjs"):
            import json

            return Answer(200, Body.text(json.dumps(doc), "application/json"))
        return Answer(200, Body.text(_info_xml(node.name, doc), "text/xml"))

    def _data(self, node: h5py.Dataset, kind: str, query: TableQuery) -> Answer:
        if node.external or node.is_virtual:
            raise _fail(501, f"{node.name} stores its data in other files; not served")
        sel, columns = self._selection(node, kind, query)
        array = _as_bool(node, self._read(node, sel, columns))
        offset = [s.start for s in sel]
        if query.format == "hdf":
            body = export.hdf_body(array, query.layout)
        elif query.format in ("json", "extjs"):
            body = export.json_body(array, offset)
        elif query.format == "csv":
            body = export.csv_body(array)
        else:
            body = export.xml_body(array, node.name)
        return Answer(200, body, data=True)

    @classmethod
    def _selection(
        cls, node: h5py.Dataset, kind: str, query: TableQuery
    ) -> tuple[tuple[slice, ...], list[str] | None]:
        """The hyperslab ``query.range`` selects, and for a table the selected columns."""
        if kind != "table":
            return cls._parse(query, node.shape), None
        names = list(node.dtype.names)
        rows, cols = cls._parse(query, (node.shape[0], len(names)))
        return (rows,), names[cols]

    @staticmethod
    def _parse(query: TableQuery, shape: tuple[int, ...]) -> tuple[slice, ...]:
        try:
            return parse_range(query.range or "", shape)
        except RangeError as exc:
            raise _fail(400, str(exc)) from None

    @staticmethod
    def _read(
        node: h5py.Dataset, sel: tuple[slice, ...], columns: list[str] | None
    ) -> np.ndarray[Any, Any]:
        source = (
            node.fields(columns)
            if columns is not None and len(columns) < len(node.dtype.names or ())
            else node
        )
        if node.ndim == 0:
            return np.asarray(node[()])
        array = source[sel]
        if columns is not None and not isinstance(array, np.ndarray):
            array = np.asarray(array)
        return np.asarray(array)


def _bitfield_bools(node: h5py.Dataset) -> tuple[bool, frozenset[str]]:
    """Whether ``node`` (or which of its fields) holds PyTables booleans.

    PyTables stores ``bool`` as an 8-bit HDF5 bitfield, which h5py reads as ``uint8``;
    BisQue reads these files with PyTables, so it answers ``bool`` (uploaded files and
    ``bqapi``'s ``store_array`` write them that way).
    """
    kind = node.id.get_type()

    def is_bool(t: Any) -> bool:
        return bool(t.get_class() == h5py.h5t.BITFIELD and t.get_size() == 1)

    if is_bool(kind):
        return True, frozenset()
    if kind.get_class() == h5py.h5t.COMPOUND:
        return False, frozenset(
            kind.get_member_name(i).decode("utf-8", "replace")
            for i in range(kind.get_nmembers()) if is_bool(kind.get_member_type(i)))
    return False, frozenset()


def _as_bool(node: h5py.Dataset, array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """``array`` read from ``node`` with PyTables booleans as ``bool``."""
    whole, fields = _bitfield_bools(node)
    if whole:
        return array.view(np.bool_)
    if fields and array.dtype.names:
        names = array.dtype.names
        return array.astype([(n, np.bool_ if n in fields else array.dtype[n]) for n in names])
    return array


def _length(selected: slice) -> int:
    return int(selected.stop - selected.start)


def _negotiate(accept: str) -> str:
    for item in accept.split(","):
        media = item.split(";")[0].strip().lower()
        if media in _ACCEPT:
            return _ACCEPT[media]
    return "xml"


def _info_xml(path: str, doc: dict[str, Any]) -> str:
    import xml.etree.ElementTree as ET

    root = ET.Element("resource", name=path)
    for key in ("headers", "types", "sizes"):
        if key in doc:
            ET.SubElement(root, "tag", name=key, value=",".join(str(v) for v in doc[key]))
    for entry in doc.get("group", []):
        ET.SubElement(root, "tag", name="group", type=entry["type"], value=entry["path"])
    return ET.tostring(root, encoding="unicode")
