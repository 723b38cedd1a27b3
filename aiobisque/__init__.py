"""aiobisque: fast, dependable downloads of N-D arrays from BisQue's table service.

An array, a table or any numpy-style selection of them on a BisQue (or ViQi) server is
split into range requests, fetched concurrently under one shared limit with retries,
checked, and assembled into a preallocated numpy array (or a file); results go back up
with ``store_array``. Three ways in:

* async: ``async with BisqueSession(root, auth=(user, pw)) as bq:
  await bq.table.load_array(uniq, path)`` (:class:`BisqueSession`, :class:`TableService`,
  :class:`RemoteArray`);
* sync, for scripts and notebooks: :class:`Session` and :func:`load_array`, the same API
  run on a private event loop; :mod:`aiobisque.compat` for scripts written for ``bqapi``;
* the ``aiobisque`` command (``aiobisque --help``): ``info``, resumable out-of-core
  ``download`` to ``.npy``/``.h5``/``.csv``, ``upload``, and ``serve``/``demo`` with the
  embedded server.

Also: :mod:`aiobisque.dask` (dask arrays read by the workers), :mod:`aiobisque.server` (a
BisQue-compatible server for tests). Errors form one tree under :class:`BisqueError`
(:mod:`aiobisque.errors`). The README and the documentation site (``mkdocs build`` in
the repository) say more.
"""

from aiobisque.config import Config
from aiobisque.errors import (
    AuthenticationError,
    BadRequestError,
    BisqueError,
    BodyIncompleteError,
    DownloadError,
    DownloadTimeoutError,
    IncompleteDownloadError,
    InsecureTransportError,
    NotFoundError,
    OutputExistsError,
    PermissionDeniedError,
    ProtocolError,
    ResponseTooLargeError,
    ResumeError,
    SelectionError,
    ServerError,
    TransportError,
    UnsupportedError,
    UploadError,
    UploadNotTakenError,
    UploadUncertainError,
    UsageError,
)
from aiobisque.progress import DownloadStats, Progress
from aiobisque.protocol import ArrayInfo
from aiobisque.retry import RetryPolicy
from aiobisque.session import BisqueSession, MexToken
from aiobisque.sync import Session, SyncRemoteArray, SyncTableService, load_array
from aiobisque.table import RemoteArray, TableService
from aiobisque.upload import UploadResult

__version__ = "0.1.0"

__all__ = [
    "ArrayInfo",
    "AuthenticationError",
    "BadRequestError",
    "BisqueError",
    "BisqueSession",
    "BodyIncompleteError",
    "Config",
    "DownloadError",
    "DownloadStats",
    "DownloadTimeoutError",
    "IncompleteDownloadError",
    "InsecureTransportError",
    "MexToken",
    "NotFoundError",
    "OutputExistsError",
    "PermissionDeniedError",
    "Progress",
    "ProtocolError",
    "RemoteArray",
    "ResponseTooLargeError",
    "ResumeError",
    "RetryPolicy",
    "SelectionError",
    "ServerError",
    "Session",
    "SyncRemoteArray",
    "SyncTableService",
    "TableService",
    "TransportError",
    "UnsupportedError",
    "UploadError",
    "UploadNotTakenError",
    "UploadResult",
    "UploadUncertainError",
    "UsageError",
    "__version__",
    "load_array",
]
