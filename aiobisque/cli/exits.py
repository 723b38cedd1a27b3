"""Exit statuses of the command line, and how an error maps to one."""

from __future__ import annotations

from aiobisque.errors import (
    AuthenticationError,
    PermissionDeniedError,
    SelectionError,
    UsageError,
    clean_text,
)

__all__ = [
    "ARGUMENT_ERRORS",
    "AUTH_ERRORS",
    "EXIT_AUTH",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_UNCERTAIN",
    "EXIT_USAGE",
    "CommandError",
    "exit_status",
    "message",
]

EXIT_OK = 0
EXIT_FAILED = 1  # a download (or info) failed
EXIT_USAGE = 2  # bad arguments (argparse uses 2 too)
EXIT_AUTH = 3  # credentials missing or rejected, or access denied
EXIT_UNCERTAIN = 4  # an upload failed after the server may have stored it
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)

#: Errors reported as an authentication failure (EXIT_AUTH).
AUTH_ERRORS = (AuthenticationError, PermissionDeniedError)


#: Errors reported as bad arguments (EXIT_USAGE).
ARGUMENT_ERRORS = (UsageError, SelectionError)


class CommandError(Exception):
    """A problem the command line reports in one line, with an exit status."""

    def __init__(self, message: str, status: int = EXIT_USAGE):
        super().__init__(message)
        self.status = status


def message(exc: BaseException) -> str:
    """One line: the error and the notes added on the way (e.g. how to resume).

    Control characters (a server's text may carry terminal escapes) are shown escaped.
    """
    text = str(exc) or type(exc).__name__
    notes = getattr(exc, "__notes__", None) or []
    return clean_text("; ".join([text, *map(str, notes)]).replace("\n", " "))


def exit_status(exc: BaseException) -> int:
    if isinstance(exc, AUTH_ERRORS):
        return EXIT_AUTH
    if isinstance(exc, ARGUMENT_ERRORS):
        return EXIT_USAGE
    return EXIT_FAILED
