"""The BisQue wire protocol, client side: names, URLs and the documents the server sends.

Pure functions only (no I/O), so every rule of BisQue's protocol (services list, login
check, resource names, the table service's URL and range grammar, info documents) that
the client relies on is tested here directly:

* :func:`parse_uniq` accepts a bare uniq, a ``data_service`` URL or a viewer URL;
* :func:`table_url` quotes each HDF path component on its own (and wraps range-like ones in
  double quotes), so no user string can change the URL's structure;
* :func:`parse_services`, :func:`parse_session_user` and :func:`parse_info` read the XML and
  JSON documents, rejecting anything the protocol does not allow with :class:`ProtocolError`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs, quote, urljoin, urlsplit, urlunsplit
from xml.etree import ElementTree

import numpy as np

from aiobisque.errors import (
    BisqueError,
    NotFoundError,
    ProtocolError,
    ResponseTooLargeError,
    UnsupportedError,
    UsageError,
)

__all__ = [
    "VIQI_SERVICE_NAMES",
    "ArrayInfo",
    "below_node",
    "node_url",
    "parse_info",
    "parse_login_providers",
    "parse_resource_ts",
    "parse_services",
    "parse_session_user",
    "parse_uniq",
    "quote_component",
    "redact_url",
    "split_path",
    "table_url",
]

# Uniqs are BisQue's resource ids ("00-orJQLiXgqh8K955C6qzhyC"); anything outside this
# alphabet could change a URL's meaning, so it is refused rather than escaped.
_UNIQ_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}")
_RANGE_LIKE_RE = re.compile(r"[0-9:;,]+")


def redact_url(url: str) -> str:
    """``url`` without userinfo, query or fragment: safe for messages and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def parse_uniq(resource: str) -> str:
    """The uniq named by a bare uniq, a ``data_service`` URL or a viewer URL.

    >>> parse_uniq("https://h/client_service/view?resource=https://h/data_service/00-abc")
    '00-abc'
    """
    if not isinstance(resource, str):
        raise UsageError(f"a resource must be given as a string, not {type(resource).__name__}")
    text = resource.strip()
    if "://" in text:
        parts = urlsplit(text)
        query = parse_qs(parts.query)
        if query.get("resource"):
            return parse_uniq(query["resource"][0])
        segments = [s for s in parts.path.split("/") if s]
        if not segments:
            raise UsageError(f"no resource uniq in URL {redact_url(text)!r}")
        text = segments[-1]
    if not _UNIQ_RE.fullmatch(text) or text.strip(".") == "":
        shown = redact_url(resource) if "://" in resource else resource
        raise UsageError(
            f"{shown!r} is not a BisQue resource: expected a uniq such as "
            "'00-orJQLiXgqh8K955C6qzhyC', a data_service URL or a viewer URL"
        )
    return text


def split_path(path: str | Sequence[str] | None) -> tuple[str, ...]:
    """HDF path components: ``"/a/b"`` or ``["a", "b"]``; empty components are dropped."""
    if path is None:
        return ()
    if isinstance(path, str):
        parts: Sequence[str] = path.split("/")
    else:
        parts = list(path)
    out = []
    for p in parts:
        if not isinstance(p, str):
            raise UsageError(f"HDF path components must be strings, got {p!r}")
        if "\x00" in p:
            raise UsageError(f"HDF path component {p!r} contains a NUL character")
        if p:
            out.append(p)
    return tuple(out)


def quote_component(component: str) -> str:
    """One HDF path component as a single URL path segment.

    Range-like names (only digits, ``:``, ``;``, ``,``) are wrapped in double quotes first,
    as BisQue expects, so the server never mistakes them for a range. Dot segments are
    quoted too so no URL normaliser collapses them.
    """
    if _RANGE_LIKE_RE.fullmatch(component):
        component = f'"{component}"'
    quoted = quote(component, safe="")
    if quoted in (".", ".."):
        quoted = quoted.replace(".", "%2E")
    return quoted


def table_url(
    table_base: str,
    uniq: str,
    path: Sequence[str],
    range_text: str | None = None,
    ops: Sequence[str] = (),
) -> str:
    """``{table}/{uniq}/{path...}/{range}/{ops...}`` with every component quoted."""
    return below_node(node_url(table_base, uniq, path), range_text, ops)


def node_url(table_base: str, uniq: str, path: Sequence[str]) -> str:
    """``{table}/{uniq}/{path...}``, quoted: the part every URL about one node shares
    (quoting it is most of the work of :func:`table_url`, so a caller making many URLs of
    one node makes it once and adds the rest with :func:`below_node`)."""
    base = table_base if table_base.endswith("/") else table_base + "/"
    return base + "/".join([quote(parse_uniq(uniq), safe=""),
                            *(quote_component(c) for c in path)])


def below_node(node: str, range_text: str | None = None, ops: Sequence[str] = ()) -> str:
    """``{node}/{range}/{ops...}``: :func:`table_url` from a :func:`node_url`."""
    return "/".join([node, *([] if range_text is None else [range_text]), *ops])


def _xml(text: str | bytes, what: str, url: str) -> ElementTree.Element:
    try:
        return ElementTree.fromstring(text)
    except ElementTree.ParseError as exc:
        head = text[:80] if isinstance(text, str) else text[:80].decode("utf-8", "replace")
        raise ProtocolError(
            f"{what} at {redact_url(url)} is not XML ({exc}); it starts with {head!r}", url=url
        ) from None


#: ViQi's names of BisQue's services (vqapi's ``ServiceFactory.RENAMED_SERVICES``, inverted)
VIQI_SERVICE_NAMES: Mapping[str, str] = {
    "tables": "table",
    "auths": "auth_service",
    "meta": "data_service",
    "blobs": "blob_service",
    "pixels": "image_service",
    "datasets": "dataset_service",
    "mexes": "mex_service",
    "pipelines": "pipeline",
    "preferences": "preference",
}


def _listed_services(doc: ElementTree.Element) -> list[tuple[str | None, str | None]]:
    """(name, URL) pairs: BisQue's ``<tag name="service" type= value=>`` elements and
    ViQi's ``<service type="NAME">URL</service>`` ones."""
    found: list[tuple[str | None, str | None]] = []
    for element in doc.iter():
        if element.tag == "tag" and element.get("name") == "service":
            found.append((element.get("type"), element.get("value")))
        elif element.tag == "service" and element.get("type"):
            found.append((element.get("type"), (element.text or "").strip() or None))
    return found


def parse_services(text: str | bytes, root: str) -> dict[str, str]:
    """Service name -> absolute base URL (ending in ``/``) from ``{root}/services``.

    Both BisQue's ``tag`` elements and ViQi's ``service`` elements are read. A ViQi name
    (``tables``, ``auths``, ``meta``...) is also listed under BisQue's (``table``,
    ``auth_service``, ``data_service``...) unless the server lists that name itself, so the
    client asks for one name whatever the server's generation.
    """
    url = root.rstrip("/") + "/services"
    doc = _xml(text, "the services list", url)
    services: dict[str, str] = {}
    for name, value in _listed_services(doc):
        if not name or not value:
            continue
        absolute = urljoin(root.rstrip("/") + "/", value)
        if urlsplit(absolute).scheme not in ("http", "https"):
            raise ProtocolError(f"service {name!r} has a non-HTTP URL {value!r}", url=url)
        services[name] = absolute if absolute.endswith("/") else absolute + "/"
    if not services:
        raise ProtocolError(
            f"{redact_url(url)} lists no services: is {redact_url(root)!r} a BisQue server?",
            url=url,
        )
    for viqi, bisque in VIQI_SERVICE_NAMES.items():
        if viqi in services and bisque not in services:
            services[bisque] = services[viqi]
    return services


def parse_session_user(text: str | bytes, url: str) -> str | None:
    """The user named by an ``auth_service/session`` document, or None when anonymous.

    BisQue: ``<session><tag name="user" value="NAME"/>...``; ViQi (natural XML):
    ``<session><user>UNIQ</user><username>NAME</username>...``.
    """
    doc = _xml(text, "the auth session", url)
    for tag in doc.iter("tag"):
        if tag.get("name") == "user" and tag.get("value"):
            return tag.get("value")
    for name in ("username", "user"):
        child = doc.find(name)
        if child is not None and (child.text or "").strip():
            return (child.text or "").strip()
    return None


def parse_login_providers(text: str | bytes, url: str) -> list[str]:
    """The login types an ``auth_service/login_providers`` document offers (``"cas"``...)."""
    doc = _xml(text, "the login providers", url)
    return [str(child.get("type")) for child in doc if child.get("type")]


#: ``matrix``: an N-D array (0-d for a scalar); ``table``: a PyTables table of named
#: columns; ``group``; ``unsupported``: a node BisQue lists but cannot serve (a
#: variable-length string dataset, BisQue's ``(unknown)`` type)
Kind = Literal["matrix", "table", "group", "unsupported"]

#: PyTables column types that have no fixed numpy type: text cells, nested columns
TEXT_COLUMN = "string"
NESTED_COLUMN = "(compound)"


@dataclass(frozen=True)
class ArrayInfo:
    """What ``info`` says about a node of an HDF file on the server.

    ``kind`` is ``"matrix"`` (an N-D array; a scalar has shape ``()``), ``"table"`` (a
    PyTables table), ``"group"`` or ``"unsupported"`` (see :data:`Kind`). For groups and
    unsupported nodes ``shape`` and ``dtype`` are ``None``; ``children`` lists a group's
    nodes. For tables ``shape`` is ``(rows,)``, ``headers`` the column names, ``types``
    their PyTables types and ``dtype`` a structured type whose text columns (PyTables
    ``string``, width unknown until read) and nested columns are ``object``.
    """

    uniq: str
    path: str
    kind: Kind
    shape: tuple[int, ...] | None
    dtype: np.dtype[Any] | None
    headers: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)
    children: tuple[tuple[str, str], ...] = ()  # (path, kind) pairs, for groups

    @property
    def ndim(self) -> int:
        return 0 if self.shape is None else len(self.shape)

    @property
    def size(self) -> int:
        return 0 if self.shape is None else math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return 0 if self.dtype is None else self.size * self.dtype.itemsize

    @property
    def columns(self) -> dict[str, str]:
        """A table's column names and their PyTables types (empty for other nodes)."""
        return dict(zip(self.headers, self.types, strict=True)) if self.kind == "table" else {}

    def __repr__(self) -> str:
        if self.kind == "unsupported":
            return f"ArrayInfo({self.uniq}/{self.path}, kind='unsupported')"
        if self.kind == "group":
            body = f"children={len(self.children)}"
        else:
            body = f"shape={self.shape}, dtype={self.dtype}"
            if self.kind == "table":
                body += f", columns={list(self.headers)}"
        meta = f", meta={sorted(self.meta)[:8]}" if self.meta else ""
        return f"ArrayInfo({self.uniq}/{self.path}, kind={self.kind!r}, {body}{meta})"

    def arrays(self) -> list[str]:
        """Paths of the arrays and tables directly inside a group."""
        return [p for p, k in self.children if k in ("matrix", "table")]


# numpy names flexible types by their size in bits: bytes64 is S8, str256 is U8, void32 V4
_FLEXIBLE_RE = re.compile(r"(bytes|str|void)(\d+)")
#: Largest element accepted (a record of many columns, a long string; never gigabytes).
_MAX_ITEMSIZE = 1 << 24
#: Largest element count of any array, even an empty one: numpy's own limit is 2**63 bytes.
_MAX_ELEMENTS = 1 << 56


#: PyTables column types with a fixed numpy type of another name
_PYTABLES_TYPES = {"time32": "int32", "time64": "float64"}


def _column_dtype(name: Any, where: str, url: str) -> np.dtype[Any]:
    """A table column's numpy type from its PyTables type.

    Text and nested columns, and types numpy has no name for (``enum``...), are
    ``object``: the table is still described, and only those columns are refused when
    read (see :func:`aiobisque.columns.select_columns`).
    """
    if name in (TEXT_COLUMN, NESTED_COLUMN):
        return np.dtype(object)
    try:
        return _dtype(_PYTABLES_TYPES.get(str(name), name), where, url)
    except ProtocolError:
        return np.dtype(object)


def _dtype(name: Any, where: str, url: str) -> np.dtype[Any]:
    text = str(name)
    flexible = _FLEXIBLE_RE.fullmatch(text)
    if flexible:
        kind, bits = flexible.groups()
        per_char = {"bytes": 8, "str": 32, "void": 8}[kind]
        text = f"{ {'bytes': 'S', 'str': 'U', 'void': 'V'}[kind]}{int(bits) // per_char}"
    try:
        dt = np.dtype(text)
    except Exception:  # TypeError, ValueError, SyntaxError ("(2,3"), MemoryError...
        raise ProtocolError(f"unknown element type {name!r} in {where}", url=url) from None
    if dt.hasobject:
        raise ProtocolError(f"object element type {name!r} in {where}", url=url)
    if not 0 < dt.itemsize <= _MAX_ITEMSIZE:
        raise ProtocolError(f"element type {name!r} in {where} has an impossible size of "
                            f"{dt.itemsize:,} bytes", url=url)
    return dt.newbyteorder("=") if dt.byteorder not in ("|", "=") else dt


def parse_info(
    body: str | bytes, *, uniq: str, path: str, url: str, max_bytes: int
) -> ArrayInfo:
    """Read ``info/format:json``, refusing absurd sizes before anything is allocated."""
    where = f"info of {uniq}/{path}"
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: JSON nested absurdly deep
        head = body[:80] if isinstance(body, str) else body[:80].decode("utf-8", "replace")
        raise ProtocolError(
            f"{where} is not JSON; it starts with {head!r} (a login page or proxy error?)",
            url=url,
        ) from None
    if not isinstance(doc, dict):
        raise ProtocolError(f"{where} is not a JSON object", url=url)
    children: list[tuple[str, str]] = []
    groups = doc.get("group")
    for g in groups if isinstance(groups, list) else []:
        if isinstance(g, dict) and isinstance(g.get("path"), str):
            children.append((g["path"], str(g.get("type", ""))))
    meta = doc.get("meta") or {}
    if not isinstance(meta, dict):
        meta = {}
    if "sizes" not in doc:
        # no sizes: a group (its "group" list holds its children) or a node BisQue cannot
        # describe, which it lists as itself with the type "(unknown)"
        own = "/" + path.strip("/")
        if any(p.rstrip("/") == own and k == "(unknown)" for p, k in children):
            return ArrayInfo(uniq, path, "unsupported", None, None, meta=meta)
        return ArrayInfo(uniq, path, "group", None, None, meta=meta, children=tuple(children))

    sizes = doc["sizes"]
    if not isinstance(sizes, list) or not all(
        isinstance(s, int) and not isinstance(s, bool) for s in sizes
    ):
        raise ProtocolError(f"{where} has malformed sizes {sizes!r}", url=url)
    if any(s < 0 for s in sizes) or len(sizes) > 64:
        raise ProtocolError(f"{where} has impossible sizes {sizes!r}", url=url)
    headers = doc.get("headers") or []
    types = doc.get("types") or []
    if not isinstance(headers, list) or not isinstance(types, list):
        raise ProtocolError(f"{where} has malformed headers/types", url=url)
    headers = [str(h) for h in headers]
    if not types and math.prod(sizes) == 0:
        # an empty array with no columns (shape (n, 0)) names no type at all; there is no
        # element to hold one, so float64 stands in
        types = ["float64"]
    if not types:
        raise ProtocolError(f"{where} gives no element type", url=url)
    # matrix headers are the column indices ("0", "1", ...; [""] for a scalar)
    is_table = bool(headers) and not all(h.isdigit() or h == "" for h in headers)
    if is_table and len(headers) != len(types):
        raise ProtocolError(f"{where} has {len(headers)} columns but {len(types)} types", url=url)
    if is_table:
        try:
            dtype = np.dtype(
                [(h, _column_dtype(t, where, url)) for h, t in zip(headers, types, strict=True)]
            )
        except (ValueError, TypeError) as exc:
            raise ProtocolError(f"{where} has unusable table columns: {exc}", url=url) from None
        # PyTables tables are 1-D arrays of records; sizes is [rows, columns]
        shape: tuple[int, ...] = (sizes[0],) if sizes else (0,)
        kind: Kind = "table"
    else:
        if len(set(map(str, types))) != 1:
            raise ProtocolError(f"{where} mixes element types {types!r}", url=url)
        dtype = _dtype(types[0], where, url)
        shape = tuple(sizes)
        kind = "matrix"
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > max_bytes:
        raise ResponseTooLargeError(
            f"{where} declares shape {shape} of {dtype} ({nbytes:,} bytes), more than "
            f"max_bytes={max_bytes:,}; raise max_bytes if this is really intended",
            url=url,
        )
    if math.prod(max(1, s) for s in shape) > _MAX_ELEMENTS:
        # an empty array can still not have dimensions that numpy cannot even index
        raise ProtocolError(f"{where} has impossible sizes {sizes!r}", url=url)
    # the "group" list of an array's info names the array itself: children are for groups
    return ArrayInfo(
        uniq,
        path,
        kind,
        shape,
        dtype,
        headers=tuple(headers),
        types=tuple(str(t) for t in types),
        meta=meta,
    )


def not_an_array(info: ArrayInfo) -> BisqueError:
    """The error for reading a node that is not an array as one (a group, a table...)."""
    where = f"{info.uniq}/{info.path}"
    if info.kind == "table":
        columns = ", ".join(f"{n} {t}" for n, t in list(info.columns.items())[:20])
        return UsageError(f"{where} is a table ({info.shape[0] if info.shape else 0} rows; "
                          f"columns {columns}): read it with load_table(uniq, path)")
    if info.kind == "unsupported":
        return UnsupportedError(
            f"{where} cannot be read through BisQue's table service: it lists the node with "
            "type (unknown) (a variable-length string dataset, or another type PyTables "
            "cannot read); download the file itself to read it")
    inside = info.arrays()
    listing = ", ".join(inside[:20]) + (" ..." if len(inside) > 20 else "")
    hint = f"; arrays inside: {listing}" if inside else "; it holds no arrays"
    return NotFoundError(f"{info.uniq}/{info.path} is a group, not an array{hint}")


def parse_resource_ts(text: str | bytes, url: str) -> str | None:
    """The modification time (``ts``) of a ``data_service/{uniq}`` resource document.

    BisQue answers the resource as the document's root element (``<image ts="...">``,
    ``<table ts="...">``), or inside a ``<resource>`` wrapper. ``None`` when it names none.
    """
    doc = _xml(text, "the resource document", url)
    for element in (doc, *list(doc)[:1]):
        ts = element.get("ts")
        if ts:
            return ts[:100]
    return None
