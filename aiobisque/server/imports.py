"""The embedded server's import service: ``{import}/transfer*`` uploads, as BisQue answers them.

What BisQue's ``import_service`` does, and so what this does:

- Any path starting with ``transfer`` (``transfer_X7Q2ZK``: clients add a random suffix for
  load balancers) is the upload entry point; it needs a login (**401** anonymously).
- The body is ``multipart/form-data``: each file field ``x`` may come with a field
  ``x_resource`` holding resource XML (``<resource name="N.h5"><tag name= value=/>...``), in
  either order. A missing or unreadable resource document is ignored (the file's own name
  is used), as BisQue does. The resource's ``name`` wins over the file name; both are
  unquoted and stripped of any directory part. ``<tag name="ingest"><tag name="permission"
  value="published"/></tag>`` publishes the new resource.
- The answer is ``<resource type="uploaded">`` holding one element per file: its tag is the
  resource type (``table`` for HDF5 files) with ``name``, ``resource_uniq`` (a fresh
  ``00-...`` uniq), ``uri`` (its data-service URL), ``ts``, ``created``, ``permission`` and
  the tags. A request without any file answers an empty ``<resource type="uploaded"/>``.
  Parse failures answer **500** ``Internal error during upload``.

What is particular to this server (it serves a folder of HDF5 files):

- Files are streamed to a temporary file in the served folder (bounded memory: one piece
  at a time) and renamed to ``{uniq}.h5`` only once complete, so a cut upload leaves
  nothing. The new resource is private to the uploader (readable by the owner only) unless
  published, and the table and data services serve it at once.
- Only HDF5 files (``.h5``, ``.hdf5``, ``.dream3d``, ``.h5ebsd``) can be stored: another
  file gets an ``error`` tag in the answer instead of a resource (real BisQue would store
  it as a blob). XML-only resources (a ``_resource`` field without a file) likewise.
- Bodies larger than :attr:`ImportService.max_bytes` answer **413** (checked against
  ``Content-Length`` before reading, and while streaming), as a front-end proxy would.
- :class:`ImportFaults` injects the failures a client must survive (tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import secrets
import urllib.parse
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import BodyPartReader, web

from aiobisque.server.sending import abort_transport
from aiobisque.server.store import SUFFIXES

if TYPE_CHECKING:
    from aiobisque.server.app import TableServer

__all__ = ["DEFAULT_MAX_UPLOAD", "ImportFaults", "ImportService", "Uploaded", "new_uniq"]

log = logging.getLogger("aiobisque.server")

#: the default upload size limit (bytes of request body)
DEFAULT_MAX_UPLOAD = 8 << 30
_PIECE = 1 << 20  # bytes read from the request and written to disk at a time
_FIELD_LIMIT = 1 << 20  # a form field (resource XML) larger than this is refused
# BisQue's uniqs are "00-" and a 22-character shortuuid (its alphabet has no 0, 1, I, O, l)
_UNIQ_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def new_uniq() -> str:
    """A fresh BisQue-style uniq, e.g. ``00-orJQLiXgqh8K955C6qzhyC``."""
    return "00-" + "".join(secrets.choice(_UNIQ_ALPHABET) for _ in range(22))


def _sanitize(filename: str) -> str:
    # BisQue: unquote, then keep what follows the last / or \
    return urllib.parse.unquote(filename).split("\\")[-1].split("/")[-1]


@dataclass
class ImportFaults:
    """Failures the import service injects into the next uploads (for tests).

    Attributes:
        unavailable: answer **503** to this many uploads at once, without reading the body.
        cut_after: drop the connection (TCP reset) of the next upload after reading this
            many body bytes; nothing is stored.
        drop_answer: store this many uploads, then drop the connection instead of answering.
        fail_after_store: store this many uploads, then answer **500**
            ``Internal error during upload``.
    """

    unavailable: int = 0
    cut_after: int | None = None
    drop_answer: int = 0
    fail_after_store: int = 0


@dataclass(frozen=True)
class Uploaded:
    """A resource created by an upload."""

    uniq: str
    name: str
    owner: str
    file: str
    size: int
    created: str
    published: bool = False
    tags: tuple[tuple[str, str], ...] = ()


class _Refuse(Exception):
    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


@dataclass
class _Part:
    """A file field streamed to a temporary file."""

    field: str
    filename: str
    temp: str
    size: int = 0


def _text(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=message + "\n", headers=headers)


def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        abort_transport(transport)


class ImportService:
    """BisQue's import service on a :class:`~aiobisque.server.TableServer` (``server.imports``).

    Attributes:
        max_bytes: the largest request body accepted (default 8 GiB); larger answers 413.
        faults: the :class:`ImportFaults` for the next uploads; assign a new one at any time.
        uploads: every resource created so far, by uniq.
        requests: upload requests received (refused ones included).
    """

    def __init__(self, server: TableServer) -> None:
        self.server = server
        self.max_bytes = DEFAULT_MAX_UPLOAD
        self.faults = ImportFaults()
        self.uploads: dict[str, Uploaded] = {}
        self.requests = 0

    # -- the data service's view of uploaded resources ------------------------------------

    def describe(self, uniq: str, element: ET.Element) -> None:
        """Give a data-service element of an uploaded resource its name and tags."""
        record = self.uploads.get(uniq)
        if record is None:
            return
        element.set("name", record.name)
        for key, value in record.tags:
            ET.SubElement(element, "tag", name=key, value=value)

    # -- transfer -------------------------------------------------------------------------

    async def handle(self, request: web.Request, user: str | None, rest: list[str]) -> web.StreamResponse:
        """Answer a request to the import service (``rest``: the path after ``import/``)."""
        self.requests += 1
        entry = urllib.parse.unquote(rest[0]) if rest else ""
        if not entry.startswith("transfer"):
            return _text(404, "not provided by this server")
        if user is None:
            return _text(401, "login required", {"WWW-Authenticate": 'Basic realm="bisque"'})
        faults = self.faults
        if faults.unavailable > 0:
            faults.unavailable -= 1
            return _text(503, "Service Unavailable")
        length = request.content_length
        if length is not None and length > self.max_bytes:
            return self._too_large(length)
        if not request.content_type.startswith("multipart/"):
            return self._answer([])
        parts: list[_Part] = []
        try:
            try:
                fields = await self._receive(request, parts)
            except _Refuse as refusal:
                return refusal.response
            except (asyncio.CancelledError, ConnectionError):
                raise  # the client went away: nobody to answer
            except Exception as exc:  # as BisQue's transfer: any failure is a 500
                log.info("upload: cannot read the body: %s: %s", type(exc).__name__, exc)
                return _text(500, "Internal error during upload")
            return await self._ingest(request, user, parts, fields)
        finally:
            for part in parts:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(part.temp)

    def _too_large(self, size: int) -> web.Response:
        return _text(413, f"Request Entity Too Large: the upload ({size:,} bytes or more) "
                          f"exceeds this server's limit of {self.max_bytes:,} bytes")

    async def _receive(self, request: web.Request, parts: list[_Part]) -> dict[str, str]:
        """Stream the body: files to temporary files, small fields into memory."""
        reader = await request.multipart()
        fields: dict[str, str] = {}
        received = 0
        loop = asyncio.get_running_loop()
        cut = self.faults.cut_after
        if cut is not None:
            self.faults.cut_after = None
        while True:
            part = await reader.next()
            if part is None:
                break
            if not isinstance(part, BodyPartReader):
                raise ValueError("nested multipart bodies are not supported")
            name = part.name or ""
            if part.filename is None:
                data = bytearray()
                while piece := await part.read_chunk(_PIECE):
                    data += piece
                    received += len(piece)
                    if len(data) > _FIELD_LIMIT:
                        raise _Refuse(_text(413, f"form field {name!r} is larger than "
                                                 f"{_FIELD_LIMIT:,} bytes"))
                fields[name] = data.decode(part.get_charset("utf-8"))
                continue
            temp = os.path.join(self.server.folder, f".upload-{secrets.token_hex(8)}.part")
            upload = _Part(name, part.filename, temp)
            parts.append(upload)
            with open(temp, "wb") as out:  # noqa: ASYNC230 - writes go to a thread below
                while piece := await part.read_chunk(_PIECE):
                    received += len(piece)
                    if received > self.max_bytes:
                        raise _Refuse(self._too_large(received))
                    if cut is not None and received >= cut:
                        _abort(request)
                        raise _Refuse(_text(500, "connection cut (injected)"))
                    await loop.run_in_executor(None, out.write, piece)
                    upload.size += len(piece)
        return fields

    async def _ingest(self, request: web.Request, user: str, parts: list[_Part],
                      fields: dict[str, str]) -> web.StreamResponse:
        created: list[ET.Element] = []
        for part in parts:
            created.append(self._store(part, user, fields.pop(part.field + "_resource", None)))
        for name in list(fields):
            if name.endswith("_resource"):
                error = ET.Element("resource")
                ET.SubElement(error, "tag", name="error",
                              value="resources without a file are not supported by this server")
                created.append(error)
        faults = self.faults
        stored = any(e.get("resource_uniq") for e in created)
        if stored and faults.drop_answer > 0:
            faults.drop_answer -= 1
            _abort(request)
            return _text(500, "connection dropped (injected)")
        if stored and faults.fail_after_store > 0:
            faults.fail_after_store -= 1
            return _text(500, "Internal error during upload")
        return self._answer(created)

    def _store(self, part: _Part, user: str, xml: str | None) -> ET.Element:
        """Make the resource for one received file; an element with an error tag if not."""
        resource: ET.Element | None = None
        if xml is not None:
            try:
                resource = ET.fromstring(xml)
            except ET.ParseError:
                log.info("upload: ignoring an unreadable resource document")  # as BisQue does
        name = _sanitize((resource.get("name") if resource is not None else None)
                         or part.filename)
        tags: list[tuple[str, str]] = []
        published = resource is not None and resource.get("permission") == "published"
        for tag in (list(resource) if resource is not None else []):
            if tag.tag != "tag" or tag.get("name") is None:
                continue
            if tag.get("name") == "ingest":
                published = published or any(
                    t.get("name") == "permission" and t.get("value") == "published"
                    for t in tag)
                continue
            tags.append((tag.get("name", ""), tag.get("value", "")))
        suffix = os.path.splitext(name)[1]
        if not name or suffix.lower() not in SUFFIXES:
            error = ET.Element("file", name=name)
            ET.SubElement(error, "tag", name="error", value=(
                "Error ingesting file: this server stores HDF5 files only ("
                + ", ".join(SUFFIXES) + ")"))
            return error
        uniq = new_uniq()
        final = os.path.join(self.server.folder, uniq + suffix)
        os.replace(part.temp, final)
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        record = Uploaded(uniq, name, user, final, part.size, now, published, tuple(tags))
        self.uploads[uniq] = record
        self.server.rules.grant(uniq, user, public=published)
        log.info("upload: stored %s (%d bytes) as %s for %s", name, part.size, uniq, user)
        return self._element(record)

    def _element(self, record: Uploaded) -> ET.Element:
        element = ET.Element(
            "table",
            name=record.name,
            resource_uniq=record.uniq,
            uri=self.server.service_url("data_service") + record.uniq,
            ts=record.created,
            created=record.created,
            permission="published" if record.published else "private",
        )
        for key, value in record.tags:
            ET.SubElement(element, "tag", name=key, value=value)
        return element

    @staticmethod
    def _answer(created: list[ET.Element]) -> web.Response:
        root = ET.Element("resource", type="uploaded")
        root.extend(created)
        return web.Response(text=ET.tostring(root, encoding="unicode"), content_type="text/xml")
