"""aiobisque: fast, dependable asyncio downloads of N-D arrays from BisQue's table service."""

from aiobisque.config import Config, RetryPolicy
from aiobisque.download import DownloadStats, Progress
from aiobisque.errors import (
    AuthenticationError,
    BadRequestError,
    BisqueError,
    DownloadError,
    DownloadTimeoutError,
    IncompleteDownloadError,
    InsecureTransportError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    ResponseTooLargeError,
    SelectionError,
    ServerError,
    TransportError,
    UploadError,
    UploadUncertainError,
    UsageError,
)
from aiobisque.protocol import ArrayInfo
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
    "Config",
    "DownloadError",
    "DownloadStats",
    "DownloadTimeoutError",
    "IncompleteDownloadError",
    "InsecureTransportError",
    "MexToken",
    "NotFoundError",
    "PermissionDeniedError",
    "Progress",
    "ProtocolError",
    "RemoteArray",
    "ResponseTooLargeError",
    "RetryPolicy",
    "SelectionError",
    "ServerError",
    "Session",
    "SyncRemoteArray",
    "SyncTableService",
    "TableService",
    "TransportError",
    "UploadError",
    "UploadResult",
    "UploadUncertainError",
    "UsageError",
    "__version__",
    "load_array",
]
