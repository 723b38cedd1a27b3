"""The errors aiobisque raises.

Every error derives from :class:`BisqueError`; several also derive from the builtin that a
plain ``except`` clause would use, so callers who do not know aiobisque still catch them::

    BisqueError
    ├── UsageError (ValueError)                  a bad argument or option value
    ├── SelectionError (IndexError)              an index out of range or malformed
    ├── AuthenticationError (PermissionError)    401, or credentials rejected at login
    ├── PermissionDeniedError (PermissionError)  403
    ├── NotFoundError (FileNotFoundError)        404, missing resource, node, or not an array
    ├── UnsupportedError                         a node BisQue's table service cannot serve
    ├── BadRequestError (ValueError)             400, the server refused the query
    ├── ServerError                              5xx that retries did not cure
    ├── ProtocolError                            a response that breaks the protocol
    │   ├── ResponseTooLargeError                a size beyond ``max_bytes``
    │   └── BodyIncompleteError                  a body cut short or damaged (retried)
    ├── TransportError (ConnectionError)         connection failures that retries did not cure
    │   └── DownloadTimeoutError (TimeoutError)
    ├── InsecureTransportError                   credentials over plain http to another host
    ├── ResumeError                              a ``.part`` file of another request or remote
    ├── OutputExistsError (FileExistsError)      an output file holding something else
    ├── DownloadError                            one request failed for good; the download stopped
    │   └── IncompleteDownloadError              ... after writing part of a caller's ``out=``
    └── UploadError                              an upload failed and stored nothing
        ├── UploadNotTakenError                  ... provably never reached it (retried)
        └── UploadUncertainError                 ... or may have stored it: check before retrying

Which of these are worth retrying is decided in one place, :mod:`aiobisque.retry`.

Messages name the resource, path and range involved. They never contain credentials: URLs
are always rendered without userinfo and no header is ever included.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "BisqueError",
    "BodyIncompleteError",
    "DownloadError",
    "DownloadTimeoutError",
    "IncompleteDownloadError",
    "InsecureTransportError",
    "NotFoundError",
    "OutputExistsError",
    "PermissionDeniedError",
    "ProtocolError",
    "ResponseTooLargeError",
    "ResumeError",
    "SelectionError",
    "ServerError",
    "TransportError",
    "UploadError",
    "UploadNotTakenError",
    "UploadUncertainError",
    "UnsupportedError",
    "UsageError",
]  # clean_text is a helper, importable but not an error of the tree

# C0 and C1 control characters, DEL, and the Unicode bidi overrides/isolates (which can make
# a terminal show text in another order than it is)
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def clean_text(text: object) -> str:
    """``text`` safe to print on a terminal: control characters shown as escapes.

    Anything a server sent (an error body, ``meta``, a group's names) goes through here
    before it reaches a message or the command line, so an ANSI escape sequence in it is
    shown as ``\\x1b[...`` instead of being obeyed by the terminal.

    >>> clean_text("red \\x1b[31mtext\\nnext")
    'red \\\\x1b[31mtext\\\\x0anext'
    """
    return _CONTROL_RE.sub(_escape, str(text))


class BisqueError(Exception):
    """Base class of every aiobisque error.

    ``url`` is the failing request's URL without credentials (or ``None``); ``status`` the
    HTTP status when one was received.
    """

    #: Seconds the server asked to wait (``Retry-After``), when it did.
    retry_after: float | None = None

    def __init__(
        self,
        message: str,
        *,
        url: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.url = url
        self.status = status
        if retry_after is not None:
            self.retry_after = retry_after

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # keep errors picklable across processes (dask workers) despite keyword-only args
        return (_rebuild, (type(self), self.message, dict(self.__dict__)))


def _rebuild(cls: type[BisqueError], message: str, state: dict[str, Any]) -> BisqueError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


class UsageError(BisqueError, ValueError):
    """An argument or option has an invalid value (a malformed uniq, a negative concurrency)."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`UsageError` with ``message`` unless ``condition`` holds (option checks)."""
    if not condition:
        raise UsageError(message)


class SelectionError(BisqueError, IndexError):
    """A selection does not fit the array: an index out of range, too many indices."""


class AuthenticationError(BisqueError, PermissionError):
    """Credentials are missing or were rejected (HTTP 401, or an empty auth session)."""


class PermissionDeniedError(BisqueError, PermissionError):
    """The logged-in user may not read this resource (HTTP 403)."""


class NotFoundError(BisqueError, FileNotFoundError):
    """The resource or HDF node does not exist, or is not an array (HTTP 404)."""


class UnsupportedError(BisqueError):
    """The node exists, but BisQue's table service cannot serve it: a 0-d (scalar)
    dataset, a variable-length string dataset, a nested table column. The message says
    why and what to do instead."""


class BadRequestError(BisqueError, ValueError):
    """The server refused the query as malformed (HTTP 400)."""


class ServerError(BisqueError):
    """The server kept failing (5xx) after the retry policy gave up."""


class ProtocolError(BisqueError):
    """The server answered something the BisQue protocol does not allow."""


class ResponseTooLargeError(ProtocolError):
    """A declared or received size exceeds the configured ``max_bytes``."""


class BodyIncompleteError(ProtocolError):
    """A body ended before the data it describes, or arrived damaged (MD5): cut in transit,
    so the same request is worth retrying."""


class TransportError(BisqueError, ConnectionError):
    """The connection failed (refused, reset, cut) and retries did not cure it."""


class DownloadTimeoutError(TransportError, TimeoutError):
    """A request or the whole download exceeded its time limit."""


class InsecureTransportError(BisqueError):
    """Credentials would be sent unencrypted to a non-loopback host."""


class ResumeError(BisqueError):
    """A ``.part`` file cannot be continued: the remote array or the request changed."""


class OutputExistsError(BisqueError, FileExistsError):
    """The output file exists and holds something other than this download."""


class DownloadError(BisqueError):
    """One request of a download failed for good, so the download was stopped.

    ``request`` describes the failing request (its BisQue range), ``attempts`` how many
    times it was tried and ``__cause__`` the last error.
    """

    def __init__(
        self,
        message: str,
        *,
        url: str | None = None,
        status: int | None = None,
        request: str | None = None,
        attempts: int = 0,
    ):
        super().__init__(message, url=url, status=status)
        self.request = request
        self.attempts = attempts


class IncompleteDownloadError(DownloadError):
    """A download into a caller's ``out=`` buffer stopped part way.

    The buffer holds a mix of new and old data and must not be used as the result.
    ``done_bytes``/``total_bytes`` tell how far it got.
    """

    def __init__(self, message: str, *, done_bytes: int = 0, total_bytes: int = 0):
        super().__init__(message)
        self.done_bytes = done_bytes
        self.total_bytes = total_bytes


class UploadError(BisqueError):
    """An upload failed, and the server did not store the file.

    ``name`` is the file name the upload gave the resource (``NAME.h5``), ``upload_id`` the
    value of the ``upload_id`` tag it carried (see :meth:`~aiobisque.TableService.store_array`),
    ``attempts`` how many times it was sent. ``stored`` is ``False``: nothing was created.
    """

    #: Whether the server may hold the file: ``False`` here, ``None`` (unknown) in
    #: :class:`UploadUncertainError`.
    stored: bool | None = False

    def __init__(
        self,
        message: str,
        *,
        url: str | None = None,
        status: int | None = None,
        name: str | None = None,
        upload_id: str | None = None,
        attempts: int = 0,
        retry_after: float | None = None,
    ):
        super().__init__(message, url=url, status=status, retry_after=retry_after)
        self.name = name
        self.upload_id = upload_id
        self.attempts = attempts


class UploadNotTakenError(UploadError):
    """The server provably did not take the file: it could not be reached, or it answered
    503 before the whole body was sent. The only upload failure that is retried (see
    :func:`aiobisque.retry.upload_may_retry`); raised once the retries are spent."""


class UploadUncertainError(UploadError):
    """An upload failed after the server may have received the whole file.

    The resource may or may not exist: uploads are not idempotent, so aiobisque does not
    send it again. Before uploading again, look for a resource named :attr:`name` tagged
    ``upload_id`` = :attr:`upload_id` (the message says how).
    """

    stored: bool | None = None
