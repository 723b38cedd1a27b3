"""Uploads: arrays and tables stored back to BisQue through its import service.

An upload runs in four steps:

1. **Check the input** before any byte is sent: the name (a valid file name and HDF5 node
   name), the dtype (fixed-size numbers, booleans and byte strings), the session (logged
   in; the import service listed and at a trusted origin).
2. **Write** ``NAME.h5`` into a private temporary folder with PyTables, one node ``/NAME``
   (an uncompressed contiguous ``Array`` for arrays, a zlib-compressed ``Table`` for
   tables), which is the layout ``bqapi``'s ``store_array`` writes and the table service
   reads. It is written block by block, so a big-endian, strided or memory-mapped input
   is never copied whole.
3. **Send** it as ``multipart/form-data`` (field ``file_resource``: the resource XML with
   the name and tags; field ``file``: the file) to ``{import}/transfer_XXXXXX``, streamed
   from the file with a ``Content-Length``, with progress.
4. **Read** BisQue's answer, ``<resource type="uploaded"><table resource_uniq=...
   uri=.../></resource>``, into an :class:`UploadResult`.

The retry rule (uploads are not idempotent; :func:`aiobisque.retry.upload_may_retry` decides
it, as every retry decision is made in :mod:`aiobisque.retry`): an attempt is repeated only
when its failure proves the server did not take the file
(:class:`~aiobisque.UploadNotTakenError`):

- the connection could not be made (refused, unreachable, DNS, connect timeout): no byte of
  the request left;
- HTTP 503 answered before the whole body was sent: the server cannot hold a complete file.

A definite refusal (HTTP 4xx) raises at once: nothing was stored. Anything else (the
connection lost while sending or waiting for the answer, a 5xx or a redirect after the
body, an answer that names no new resource) raises :class:`~aiobisque.UploadUncertainError`:
the resource may or may not exist, and its message says how to look for it (every upload
carries an ``upload_id`` tag for that). Nothing is ever sent twice silently.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import string
import tempfile
import warnings
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
import numpy as np

from aiobisque.config import Config
from aiobisque.errors import (
    AuthenticationError,
    BisqueError,
    NotFoundError,
    UploadError,
    UploadNotTakenError,
    UploadUncertainError,
    UsageError,
)
from aiobisque.fetch import origin, status_error
from aiobisque.progress import Progress, ProgressCallback
from aiobisque.protocol import redact_url
from aiobisque.retry import retrying, upload_may_retry

if TYPE_CHECKING:
    from aiobisque.session import BisqueSession

__all__ = [
    "UploadResult",
    "check_array",
    "check_name",
    "check_table",
    "store_array",
    "store_table",
    "upload_file",
    "write_array_file",
    "write_table_file",
]

log = logging.getLogger("aiobisque")

#: bytes converted and written per block when writing the HDF5 file
_WRITE_BLOCK = 8 << 20
#: bytes read from the file per piece of the request body
_SEND_PIECE = 1 << 20
#: the answer is a short XML document
_ANSWER_LIMIT = 16 << 20
#: longest name accepted (bytes of UTF-8, before ".h5"): file systems allow 255
_NAME_LIMIT = 200
_TRANSFER_ALPHABET = string.ascii_uppercase + string.digits


@dataclass(frozen=True)
class UploadResult:
    """The resource an upload created (BisQue's answer, read).

    ``uniq`` is the new resource's uniq (pass it to ``load_array``), ``uri`` its data-service
    URL, ``name`` its file name (``NAME.h5``), ``resource_type`` the type the server gave it
    (``"table"`` for HDF5 files), ``attributes`` every attribute of BisQue's element and
    ``element`` the element itself (what ``bqapi``'s ``store_array`` returns).
    ``upload_id`` is the tag value that identifies this upload, ``attempts`` how many times
    it was sent and ``bytes`` the size of the file sent.
    """

    uniq: str
    uri: str
    name: str
    resource_type: str
    attributes: Mapping[str, str]
    element: ET.Element = field(repr=False, compare=False)
    upload_id: str = ""
    attempts: int = 1
    bytes: int = 0

    @property
    def xml(self) -> str:
        """BisQue's element for the new resource, as XML text."""
        return ET.tostring(self.element, encoding="unicode")


# -- input checks ----------------------------------------------------------------------------


def check_name(name: Any) -> str:
    """``name`` if it can name both the file ``NAME.h5`` and the HDF5 node ``/NAME``."""
    if not isinstance(name, str):
        raise UsageError(f"name must be a string, got {type(name).__name__}")
    if not name.strip():
        raise UsageError("name must not be empty: it names the new resource (NAME.h5)")
    problem = _name_problem(name)
    if problem:
        raise UsageError(f"name {name!r} is not a valid file name: {problem}")
    return name


def _name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a file and an HDF5 node, or ``None``."""
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "it is not valid Unicode text (a lone surrogate)"
    if name != name.strip():
        return "it starts or ends with white space"
    if name in (".", ".."):
        return "it is a directory name"
    if any(c in "/\\" for c in name):
        return "it contains a path separator (/ or \\)"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "it contains a control character"
    if size > _NAME_LIMIT:
        return f"it is longer than {_NAME_LIMIT} bytes"
    if name[:1] == "_" and name[2:3] == "_" and name[1:2] in "cfgv":
        return "PyTables reserves names starting with _c_, _f_, _g_ and _v_"
    return None


def _check_dtype(dtype: np.dtype[Any], what: str) -> np.dtype[Any]:
    """The native-order dtype ``dtype`` is stored as, or a UsageError saying why not."""
    kind = dtype.kind
    hint = ""
    if dtype.hasobject:
        hint = ("object arrays cannot be stored (HDF5 needs fixed-size items): convert "
                "strings with .astype('S') or numbers with .astype(float)")
    elif kind == "U":
        hint = ("unicode strings are not stored as such: encode them to fixed-size bytes, "
                "e.g. np.char.encode(a, 'utf-8')")
    elif kind == "V":
        hint = "a structured dtype is a table: use store_table"
    elif kind in "Mm":
        hint = "datetime64/timedelta64 are not supported: convert to int64 or to strings"
    elif kind == "S" and dtype.itemsize == 0:
        hint = "zero-length strings (S0) cannot be stored"
    elif kind not in "biufcS" or dtype.char in "gG" or (kind == "f" and dtype.itemsize > 8):
        hint = "supported: bool, (u)int8-64, float16-64, complex64/128 and bytes (S)"
    if hint:
        raise UsageError(f"cannot store {what} of dtype {dtype}: {hint}")
    return dtype.newbyteorder("=") if kind != "S" else dtype


def check_array(array: Any) -> np.ndarray[Any, Any]:
    """``array`` as an ndarray that :func:`store_array` can write (not copied when one)."""
    arr = array if isinstance(array, np.ndarray) else np.asarray(array)
    _check_dtype(arr.dtype, "an array")
    return arr


@dataclass(frozen=True)
class _Column:
    name: str
    dtype: np.dtype[Any]  # as stored
    text: bool  # str values, encoded to UTF-8 bytes


@dataclass(frozen=True)
class TablePlan:
    """What :func:`write_table_file` writes: rows, columns and their stored dtypes."""

    rows: int
    columns: tuple[_Column, ...]
    source: Any = field(repr=False)

    @property
    def dtype(self) -> np.dtype[Any]:
        """The compound dtype of the stored table."""
        return np.dtype([(c.name, c.dtype) for c in self.columns])


def _text_width(values: Any, column: str) -> int:
    width = 1
    for value in values:
        if not isinstance(value, str):
            raise UsageError(
                f"column {column!r} mixes strings with {type(value).__name__} values "
                "(missing values cannot be stored in a string column)")
        width = max(width, len(value.encode("utf-8")))
    return width


def check_table(table: Any) -> TablePlan:
    """Check a numpy structured array or a pandas DataFrame for :func:`store_table`.

    Columns must have plain string names and hold numbers, booleans, bytes or strings
    (``str`` values are stored UTF-8 encoded, as fixed-size bytes of the longest value).
    """
    columns: list[_Column] = []
    if isinstance(table, np.ndarray):
        names = table.dtype.names
        if not names:
            raise UsageError("store_table needs a structured array (or a pandas DataFrame); "
                             "use store_array for plain arrays")
        if table.ndim != 1:
            raise UsageError(f"a table must be 1-D (rows), got shape {table.shape}")
        for name in names:
            sub = table.dtype.fields[name][0]
            if sub.shape or sub.names:
                raise UsageError(f"column {name!r}: nested or sub-array columns are not supported")
            if not name:
                raise UsageError("column names must not be empty")
            if sub.kind == "U":
                width = max(1, max((len(s.encode("utf-8")) for s in table[name].tolist()),
                                   default=1))
                columns.append(_Column(name, np.dtype(f"S{width}"), True))
            else:
                columns.append(_Column(name, _check_dtype(sub, f"column {name!r}"), False))
        return TablePlan(len(table), tuple(columns), table)
    if type(table).__name__ != "DataFrame" or not hasattr(table, "columns"):
        raise UsageError(f"store_table takes a numpy structured array or a pandas DataFrame, "
                         f"got {type(table).__name__}")
    seen: set[str] = set()
    for name in table.columns:
        if not isinstance(name, str) or not name:
            raise UsageError(f"column names must be non-empty strings, got {name!r}")
        if name in seen:
            raise UsageError(f"column {name!r} appears twice")
        seen.add(name)
        series = table[name]
        values = series.to_numpy()
        if values.dtype.kind == "O" or str(series.dtype) in ("string", "str"):
            values = series.to_numpy(dtype=object)
            columns.append(_Column(name, np.dtype(f"S{_text_width(values, name)}"), True))
        else:
            columns.append(_Column(name, _check_dtype(values.dtype, f"column {name!r}"), False))
    if not columns:
        raise UsageError("the DataFrame has no columns")
    return TablePlan(len(table), tuple(columns), table)


# -- writing the file ------------------------------------------------------------------------


def _blocks(shape: tuple[int, ...], itemsize: int, limit: int,
            prefix: tuple[slice, ...] = ()) -> Iterator[tuple[slice, ...]]:
    """Index tuples covering an array of ``shape`` in pieces of at most ``limit`` bytes
    (or one innermost row, when a row is larger)."""
    if not shape:
        yield prefix
        return
    row = itemsize * int(np.prod(shape[1:], dtype=np.int64))
    if row <= limit or len(shape) == 1:
        step = max(1, limit // max(row, 1))
        for i in range(0, shape[0], step):
            yield (*prefix, slice(i, min(i + step, shape[0])))
    else:
        for i in range(shape[0]):
            yield from _blocks(shape[1:], itemsize, limit, (*prefix, slice(i, i + 1)))


def _tables() -> Any:
    try:
        import tables
    except ImportError:
        raise UsageError("uploads need PyTables: pip install tables") from None
    return tables


def write_array_file(path: str | os.PathLike[str], array: np.ndarray[Any, Any], name: str,
                     on_block: Callable[[int], None] | None = None) -> None:
    """Write ``array`` as node ``/name`` of a new HDF5 file, as ``bqapi`` writes it.

    A PyTables ``Array`` (contiguous, uncompressed), native byte order, written block by
    block: at most one block (8 MiB) is converted at a time.
    """
    tables = _tables()
    dtype = _check_dtype(array.dtype, "an array")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tables.NaturalNameWarning)
        with tables.open_file(os.fspath(path), "w", filters=tables.Filters(complevel=5)) as h5:
            node = h5.create_array(h5.root, name, atom=tables.Atom.from_dtype(dtype),
                                   shape=array.shape)
            for index in _blocks(array.shape, dtype.itemsize, _WRITE_BLOCK):
                block = np.ascontiguousarray(array[index], dtype=dtype)
                node[index] = block
                if on_block:
                    on_block(block.nbytes)


def _table_rows(plan: TablePlan, start: int, stop: int) -> np.ndarray[Any, Any]:
    rows = np.empty(stop - start, dtype=plan.dtype)
    source = plan.source
    for column in plan.columns:
        if isinstance(source, np.ndarray):
            values = source[column.name][start:stop]
        else:
            values = source[column.name].iloc[start:stop].to_numpy(
                dtype=object if column.text else None)
        if column.text:
            rows[column.name] = [str(v).encode("utf-8") for v in values]
        else:
            rows[column.name] = values
    return rows


def write_table_file(path: str | os.PathLike[str], plan: TablePlan, name: str,
                     on_block: Callable[[int], None] | None = None) -> None:
    """Write the table ``plan`` describes as node ``/name``: a PyTables ``Table``
    (compound rows, zlib level 5), appended block by block."""
    tables = _tables()
    row_bytes = max(1, plan.dtype.itemsize)
    step = max(1, _WRITE_BLOCK // row_bytes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tables.NaturalNameWarning)
        with tables.open_file(os.fspath(path), "w", filters=tables.Filters(complevel=5)) as h5:
            node = h5.create_table(h5.root, name, description=plan.dtype,
                                   expectedrows=max(1, plan.rows))
            for start in range(0, plan.rows, step):
                rows = _table_rows(plan, start, min(start + step, plan.rows))
                node.append(rows)
                if on_block:
                    on_block(rows.nbytes)
            node.flush()


# -- the request -----------------------------------------------------------------------------


def _disposition_name(filename: str) -> str:
    # as browsers do for form-data (and BisQue unquotes the name it receives)
    return (filename.replace("%", "%25").replace('"', "%22")
            .replace("\r", "%0D").replace("\n", "%0A"))


def resource_xml(filename: str, tags: Mapping[str, str]) -> str:
    """The ``file_resource`` document: the resource's name and its tags."""
    element = ET.Element("resource", name=filename)
    for key, value in tags.items():
        ET.SubElement(element, "tag", name=key, value=value)
    return ET.tostring(element, encoding="unicode")


class _Body:
    """A ``multipart/form-data`` body streamed from a file, one per attempt.

    ``complete`` turns true once the last byte was handed to the connection; until then
    the server cannot have the whole file.
    """

    def __init__(self, path: str, filename: str, xml: str,
                 on_sent: Callable[[int], None] | None = None) -> None:
        self.boundary = "aiobisque-" + secrets.token_hex(16)
        b = self.boundary
        self.head = (
            f"--{b}\r\nContent-Disposition: form-data; name=\"file_resource\"\r\n"
            f"Content-Type: text/xml; charset=utf-8\r\n\r\n{xml}\r\n"
            f"--{b}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"{_disposition_name(filename)}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        self.tail = f"\r\n--{b}--\r\n".encode("ascii")
        self.path = path
        self.file_size = os.path.getsize(path)
        self.length = len(self.head) + self.file_size + len(self.tail)
        self.on_sent = on_sent
        self.sent = 0
        self.complete = False
        self.answered_early = False

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def answered(self) -> None:
        """The server's answer arrived: note whether the body was still being sent."""
        self.answered_early = not self.complete

    async def chunks(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        yield self.head
        with open(self.path, "rb") as f:  # noqa: ASYNC230 - reads go to a thread below
            while True:
                piece = await loop.run_in_executor(None, f.read, _SEND_PIECE)
                if not piece:
                    break
                yield piece
                self.sent += len(piece)
                if self.on_sent:
                    self.on_sent(len(piece))
        yield self.tail
        self.complete = True


#: failures to connect: nothing of the request was sent (connect timeouts: aiohttp >= 3.10)
_CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectorError,
    getattr(aiohttp, "ConnectionTimeoutError", aiohttp.ClientConnectorError),
)
_NOT_CONNECT_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientSSLError,)


@dataclass
class _Upload:
    """One upload: what is sent where, and how to describe it in errors."""

    session: BisqueSession
    url: str
    filename: str
    upload_id: str
    config: Config
    attempts: int = 0

    def uncertain(self, reason: str, status: int | None = None) -> UploadUncertainError:
        data = self.session.services.get("data_service")
        query = (f" or GET {redact_url(data)}table?tag_query=upload_id:{self.upload_id}"
                 if data else "")
        return UploadUncertainError(
            f"upload of {self.filename!r} to {redact_url(self.url)}: {reason}. The resource "
            f"may or may not have been created, so it was not sent again. Before uploading "
            f"again, look for a resource named {self.filename!r} with the tag "
            f"upload_id={self.upload_id} (in the BisQue web client{query}); pass "
            f"tags={{'upload_id': '{self.upload_id}'}} to keep the same id",
            url=redact_url(self.url), status=status, name=self.filename,
            upload_id=self.upload_id, attempts=self.attempts)

    def not_taken(self, reason: str, status: int | None = None,
                  retry_after: float | None = None) -> UploadNotTakenError:
        return UploadNotTakenError(
            f"upload of {self.filename!r} to {redact_url(self.url)}: {reason}; nothing was "
            "stored", url=redact_url(self.url), status=status, name=self.filename,
            upload_id=self.upload_id, attempts=self.attempts, retry_after=retry_after)

    def refused(self, reason: str, status: int | None = None) -> UploadError:
        return UploadError(
            f"upload of {self.filename!r} to {redact_url(self.url)}: {reason}; nothing was "
            "stored", url=redact_url(self.url), status=status, name=self.filename,
            upload_id=self.upload_id, attempts=self.attempts)


def _answer_text(body: bytes) -> str:
    text = body[:512].decode("utf-8", "replace").strip()
    if text.startswith("<"):
        return ""
    return text.splitlines()[0][:200] if text else ""


def _classify(up: _Upload, body: _Body, status: int, headers: Any, answer: bytes) -> UploadResult:
    """The result of one answered attempt, or the error it means."""
    detail = _answer_text(answer)
    if status in (401, 403):
        err = status_error(status, up.url, f"the upload of {up.filename!r}", detail)
        err.message += "; the upload was refused, nothing was stored"
        raise err
    if 400 <= status < 500:
        tail = f": {detail}" if detail else ""
        raise up.refused(f"refused with HTTP {status}{tail}", status)
    if status == 503 and body.answered_early:
        err = status_error(status, up.url, f"the upload of {up.filename!r}", detail,
                           headers.get("Retry-After"))
        shown = f", {detail}" if detail else ""
        raise up.not_taken(f"the import service is unavailable (HTTP 503{shown}) and "
                           "answered before the file was sent", 503, err.retry_after)
    if 300 <= status < 400:
        where = headers.get("Location", "")
        raise up.uncertain(f"answered with a redirect (HTTP {status}) to "
                           f"{redact_url(where) if where else 'nowhere'}, not followed", status)
    if status >= 300 or status < 200:
        tail = f": {detail}" if detail else ""
        raise up.uncertain(f"failed with HTTP {status}{tail}", status)
    return parse_answer(up, answer, body.file_size)


def parse_answer(up: _Upload, answer: bytes, size: int) -> UploadResult:
    """Read ``<resource type="uploaded"><TYPE resource_uniq=... uri=.../></resource>``."""
    try:
        root = ET.fromstring(answer)
    except ET.ParseError:
        raise up.uncertain("the server's answer is not XML "
                           f"(it starts with {answer[:60]!r})") from None
    if root.tag != "resource" or root.get("type") != "uploaded":
        raise up.uncertain(f"the server answered <{root.tag} type={root.get('type')!r}>, "
                           "not an upload report")
    created = [child for child in root if child.tag != "tag" and child.get("resource_uniq")]
    if not created:
        errors = [t.get("value", "") for t in root.iter("tag") if t.get("name") == "error"]
        reason = "; ".join(e for e in errors if e) or "it names no new resource"
        raise up.uncertain(f"the server reported no new resource ({reason})")
    element = created[0]
    uniq = element.get("resource_uniq", "")
    return UploadResult(
        uniq=uniq,
        uri=element.get("uri", ""),
        name=element.get("name", up.filename),
        resource_type=element.tag,
        attributes=dict(element.attrib),
        element=element,
        upload_id=up.upload_id,
        attempts=up.attempts,
        bytes=size,
    )


async def _attempt(up: _Upload, path: str, xml: str, reporter: _Reporter) -> UploadResult:
    body = _Body(path, up.filename, xml, reporter.add)
    reporter.restart(body.file_size)
    headers = {
        "Content-Type": body.content_type,
        "Content-Length": str(body.length),
        "Accept": "text/xml",
    }
    try:
        status, resp_headers, answer = await up.session.transport.post(
            up.url, data=body.chunks(), headers=headers, what=f"the upload of {up.filename!r}",
            max_body=_ANSWER_LIMIT, config=up.config, on_answer=body.answered)
    except BisqueError as exc:
        cause = exc.__cause__
        if isinstance(cause, _CONNECT_ERRORS) and not isinstance(cause, _NOT_CONNECT_ERRORS):
            raise up.not_taken(f"cannot connect ({exc})") from exc
        where = ("while sending the file" if not body.complete
                 else "after the file was sent, before the answer")
        raise up.uncertain(f"{exc.message} ({where})") from exc
    return _classify(up, body, status, resp_headers, answer)


def _import_url(session: BisqueSession) -> str:
    base = session.services.get("import")
    if base is None:
        known = ", ".join(sorted(session.services)) or "none"
        raise NotFoundError(
            f"{redact_url(session.root)} offers no import service, so nothing can be uploaded "
            f"(services: {known})")
    if session._authorization is None or session.user is None:
        raise AuthenticationError(
            "uploading needs a login: open the session with auth=(user, password) or a "
            "MexToken (BisQue's import service refuses anonymous uploads)")
    if origin(base) not in session.transport.trusted:
        raise UsageError(
            f"the import service is at {redact_url(base)}, another origin than "
            f"{redact_url(session.root)}: credentials are not sent there, so the upload "
            "would be refused; add that origin to trusted_origins if you trust it")
    return base + "transfer_" + "".join(random.choices(_TRANSFER_ALPHABET, k=6))


def _tags(tags: Mapping[str, Any] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in (tags or {}).items():
        if not isinstance(key, str) or not key.strip():
            raise UsageError(f"tag names must be non-empty strings, got {key!r}")
        if value is None or isinstance(value, (bytes, Mapping, list, tuple, set)):
            raise UsageError(f"tag {key!r}: the value must be text or a number, got "
                             f"{type(value).__name__}")
        out[key] = str(value)
    out.setdefault("upload_id", secrets.token_hex(10))
    return out


class _Reporter:
    """Progress of one upload: bytes written to the file, then bytes sent."""

    def __init__(self, callback: ProgressCallback | None, total: int) -> None:
        self.callback = callback
        self.total = total
        self.done = 0
        self.retries = 0
        self.finished = 0

    def add(self, n: int) -> None:
        self.done += n
        self.report()

    def restart(self, total: int) -> None:
        self.total = total
        self.done = 0

    def report(self) -> None:
        if self.callback is not None:
            self.callback(Progress(self.done, self.total, self.finished, 1, self.retries))


async def upload_file(
    session: BisqueSession,
    path: str | os.PathLike[str],
    filename: str,
    *,
    tags: Mapping[str, Any] | None = None,
    progress: ProgressCallback | None = None,
    config: Config | None = None,
) -> UploadResult:
    """POST the file at ``path`` to the import service as ``filename``, under the retry rule
    of this module; returns the new resource.

    Raises :class:`~aiobisque.UploadError` when nothing was stored,
    :class:`~aiobisque.UploadUncertainError` when the resource may exist, and
    :class:`~aiobisque.AuthenticationError` / :class:`~aiobisque.PermissionDeniedError`
    when the server refuses the login (nothing stored).
    """
    cfg = config or session.config
    check_name(filename)
    url = _import_url(session)
    all_tags = _tags(tags)
    up = _Upload(session, url, filename, all_tags["upload_id"], cfg)
    xml = resource_xml(filename, all_tags)
    reporter = _Reporter(progress, 0)
    log.info("uploading %s to %s with the tag upload_id=%s", filename, redact_url(url),
             up.upload_id)

    async def attempt() -> UploadResult:
        up.attempts += 1
        return await _attempt(up, os.fspath(path), xml, reporter)

    def on_retry(exc: BisqueError, attempt: int, delay: float) -> None:
        reporter.retries += 1

    try:
        result, _ = await retrying(attempt, cfg.retry, on_retry=on_retry,
                                   retry_if=upload_may_retry)
    except UploadNotTakenError as exc:
        exc.attempts = up.attempts
        exc.message += f" (tried {up.attempts} times)"
        raise
    except asyncio.CancelledError as exc:
        exc.add_note(f"aiobisque: the upload of {filename!r} was cancelled; the resource "
                     f"may or may not exist (look for the tag upload_id={up.upload_id})")
        raise
    reporter.finished = 1
    reporter.report()
    log.info("uploaded %s as %s (%d attempts)", filename, result.uniq, up.attempts)
    return result


async def _store(
    session: BisqueSession,
    name: str,
    write: Callable[[str, Callable[[int], None]], None],
    nbytes: int,
    tags: Mapping[str, Any] | None,
    progress: ProgressCallback | None,
    config: Config,
) -> UploadResult:
    filename = name + ".h5"
    _import_url(session)  # refuse a server without import service or an anonymous session now
    _tags(tags)
    executor: Executor | None = session.executor
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory(prefix="aiobisque-upload-") as folder:
        path = os.path.join(folder, filename)
        writing = _Reporter(progress, nbytes)

        def on_block(n: int) -> None:
            loop.call_soon_threadsafe(writing.add, n)

        await loop.run_in_executor(executor, write, path, on_block)
        return await upload_file(session, path, filename, tags=tags, progress=progress,
                                 config=config)


async def store_array(
    session: BisqueSession,
    array: Any,
    name: str,
    *,
    tags: Mapping[str, Any] | None = None,
    progress: ProgressCallback | None = None,
    config: Config | None = None,
) -> UploadResult:
    """Store ``array`` as a new table resource ``NAME.h5`` (node ``/NAME``); see
    :meth:`TableService.store_array <aiobisque.TableService.store_array>`."""
    cfg = config or session.config
    check_name(name)
    arr = check_array(array)
    return await _store(
        session, name, lambda path, on_block: write_array_file(path, arr, name, on_block),
        arr.nbytes, tags, progress, cfg)


async def store_table(
    session: BisqueSession,
    table: Any,
    name: str,
    *,
    tags: Mapping[str, Any] | None = None,
    progress: ProgressCallback | None = None,
    config: Config | None = None,
) -> UploadResult:
    """Store a structured array or DataFrame as a new table resource ``NAME.h5``; see
    :meth:`TableService.store_table <aiobisque.TableService.store_table>`."""
    cfg = config or session.config
    check_name(name)
    plan = check_table(table)
    return await _store(
        session, name, lambda path, on_block: write_table_file(path, plan, name, on_block),
        plan.rows * plan.dtype.itemsize, tags, progress, cfg)

