"""aiobisque: fast, dependable asyncio downloads of N-D arrays from BisQue's table service."""

from aiobisque.config import Config, RetryPolicy
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
    UsageError,
)
from aiobisque.progress import DownloadStats, Progress
from aiobisque.protocol import ArrayInfo
from aiobisque.session import BisqueSession, MexToken
from aiobisque.sync import Session, SyncRemoteArray, SyncTableService, load_array
from aiobisque.table import RemoteArray, TableService

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
    "UsageError",
    "__version__",
    "load_array",
]
