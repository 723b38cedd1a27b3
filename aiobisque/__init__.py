"""aiobisque: fast, dependable asyncio downloads of N-D arrays from BisQue's table service."""

from aiobisque.errors import (
    AuthenticationError,
    BadRequestError,
    BisqueError,
    ConfigError,
    DownloadError,
    DownloadTimeoutError,
    IncompleteDownloadError,
    InsecureTransportError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    ResponseTooLargeError,
    ServerError,
    TransportError,
)

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "BisqueError",
    "ConfigError",
    "DownloadError",
    "DownloadTimeoutError",
    "IncompleteDownloadError",
    "InsecureTransportError",
    "NotFoundError",
    "PermissionDeniedError",
    "ProtocolError",
    "ResponseTooLargeError",
    "ServerError",
    "TransportError",
    "__version__",
]
