"""The ``aiobisque`` command: ``info``, ``download``, ``upload``, ``serve`` and ``demo``.

    aiobisque info https://bisque.example.org 00-orJQLiXgqh8K955C6qzhyC
    aiobisque download https://bisque.example.org 00-orJQ... Data/Phases -o phases.h5 \\
        --slices "10:20, :, -1" --user alice
    BISQUE_ROOT=https://bisque.example.org aiobisque download --from-list wanted.txt

Passwords never come from the command line (it leaks into shell history and process
lists): they come from ``BISQUE_PASSWORD``, ``~/.netrc`` (or the file named by ``NETRC``),
or a prompt. Downloads are out-of-core and resumable (see :mod:`aiobisque.bulk`).

One module per command (``info``, ``download``, ``upload``, ``demo``; ``serve`` is the server's own
:mod:`aiobisque.server.command`), each with ``add_arguments(parser)`` and ``main(args)``.
Only the module of the command being run is imported, so ``aiobisque info`` never loads
the embedded server. Shared pieces: :mod:`~aiobisque.cli.options` (connection options,
Config), :mod:`~aiobisque.cli.roots` (which argument is ROOT),
:mod:`~aiobisque.cli.credentials`, :mod:`~aiobisque.cli.display` (progress),
:mod:`~aiobisque.cli.exits` (exit statuses), :mod:`~aiobisque.cli.running` (the loop).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from aiobisque.cli.credentials import resolve_auth
from aiobisque.cli.download import read_list
from aiobisque.cli.exits import (
    EXIT_AUTH,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNCERTAIN,
    EXIT_USAGE,
    CommandError,
    exit_status,
    message,
)
from aiobisque.cli.options import EPILOG, ROOT_ENV, connection_options
from aiobisque.errors import BisqueError, clean_text

__all__ = [
    "EXIT_AUTH",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_UNCERTAIN",
    "EXIT_USAGE",
    "build_parser",
    "main",
    "read_list",
    "resolve_auth",
]


@dataclass(frozen=True)
class Command:
    """A subcommand: its module has ``add_arguments(parser)`` and ``main(args) -> int``."""

    name: str
    module: str
    help: str
    description: str
    connects: bool = False  # takes the connection options and the exit-status epilog


COMMANDS = (
    Command(
        "info", "aiobisque.cli.info", connects=True,
        help="shape, dtype and size of an array; the tree of arrays in a group",
        description="Show an array's shape, dtype and size, or the arrays inside a group.\n"
                    f"ROOT may be left out when ${ROOT_ENV} is set.",
    ),
    Command(
        "download", "aiobisque.cli.download", connects=True,
        help="download an array (or a selection) to a .npy or HDF5 file, resumably",
        description="Download an array, or a numpy selection of it, to FILE without holding\n"
                    "it in memory. Data goes to FILE.part with a journal beside it; rerun the\n"
                    "same command after a failure, Ctrl-C or kill to continue where it stopped.\n"
                    f"ROOT may be left out when ${ROOT_ENV} is set.",
    ),
    Command(
        "upload", "aiobisque.cli.upload", connects=True,
        help="store a .npy or HDF5 file's array as a new BisQue resource",
        description="Store the array of a .npy file, or an HDF5 file (or one of its "
                    "datasets), as a new\nBisQue resource NAME.h5, and print its uniq. "
                    "A login is required.",
    ),
    Command(
        "serve", "aiobisque.server.command",
        help="serve a folder of HDF5 files as a BisQue table service (for testing)",
        description="Serve a folder of HDF5 files as a BisQue table service.",
    ),
    Command(
        "demo", "aiobisque.cli.demo",
        help="download sample data from an embedded server over an emulated WAN",
        description="Serve sample data with the embedded server behind an emulated WAN link "
                    "and download it with aiobisque and with one request, bit-exact checked.",
    ),
)


def build_parser(command: str | None = None) -> _Parser:
    """The ``aiobisque`` argument parser.

    Every subcommand is listed, but only the arguments of ``command`` (the one about to
    run) are loaded, with its module; ``None`` loads them all.
    """
    from aiobisque import __version__

    parser = _Parser(
        prog="aiobisque",
        description="Fast, dependable downloads of N-D arrays from BisQue's table service.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"aiobisque {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                     parser_class=argparse.ArgumentParser)
    common = connection_options()
    for cmd in COMMANDS:
        sub = commands.add_parser(
            cmd.name, parents=[common] if cmd.connects else [],
            epilog=EPILOG if cmd.connects else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            help=cmd.help, description=cmd.description,
        )
        if command is None or command == cmd.name:
            module = importlib.import_module(cmd.module)
            module.add_arguments(sub)
            sub.set_defaults(handler=module.main)
            parser.commands[cmd.name] = sub
    return parser


class _Parser(argparse.ArgumentParser):
    """The top-level parser, which knows the parsers of the commands it loaded."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.commands: dict[str, argparse.ArgumentParser] = {}


def _parse(parser: _Parser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``, allowing a command's options between its positionals
    (``download ROOT --user me UNIQ PATH``), which argparse alone refuses as
    "unrecognized arguments"."""
    args, extra = parser.parse_known_args(argv)
    sub = parser.commands.get(args.command)
    if not extra or sub is None:
        return parser.parse_args(argv)  # all parsed, or the usual error for what is left
    at = argv.index(args.command)
    try:
        return sub.parse_intermixed_args(argv[at + 1:],
                                         namespace=argparse.Namespace(command=args.command))
    except TypeError:  # a command whose arguments cannot be intermixed
        return parser.parse_args(argv)


def _requested(argv: Sequence[str]) -> str:
    """The subcommand named in ``argv`` ('' when none is: only the top level's help)."""
    names = {cmd.name for cmd in COMMANDS}
    first = next((a for a in argv if not a.startswith("-")), "")
    return first if first in names else ""


class _CleanFormatter(logging.Formatter):
    """Log lines with control characters escaped: messages quote what servers sent."""

    def format(self, record: logging.LogRecord) -> str:
        return clean_text(super().format(record))


@contextlib.contextmanager
def _logging(verbosity: int) -> Iterator[None]:
    """Log to stderr for this command only (tests call :func:`main` many times)."""
    logger = logging.getLogger("aiobisque")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_CleanFormatter("aiobisque: %(levelname)s: %(message)s"))
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 \
        else logging.DEBUG
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``aiobisque`` command line; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_requested(argv))
    args = _parse(parser, argv)
    name = f"aiobisque {args.command}"
    with _logging(getattr(args, "verbose", 0)):
        try:
            status: int = args.handler(args)
            return status
        except CommandError as exc:
            print(f"{name}: error: {clean_text(exc)}", file=sys.stderr)
            return exc.status
        except (BisqueError, OSError) as exc:
            print(f"{name}: error: {message(exc)}", file=sys.stderr)
            return exit_status(exc)
        except KeyboardInterrupt:
            if args.command == "upload":
                # uploads are not idempotent: rerunning could store the file twice
                print(f"{name}: interrupted; the file may or may not have been stored: look "
                      "for the new resource (its upload_id tag is in the log with -v) before "
                      "uploading again", file=sys.stderr)
                return EXIT_UNCERTAIN
            print(f"{name}: interrupted; partial downloads are kept, rerun the same command "
                  "to resume", file=sys.stderr)
            return EXIT_INTERRUPTED
