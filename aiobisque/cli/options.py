"""Options shared by the commands that talk to a server, and the Config they make."""

from __future__ import annotations

import argparse
from typing import Any

from aiobisque import window
from aiobisque.cli.exits import (
    EXIT_AUTH,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNCERTAIN,
    EXIT_USAGE,
)
from aiobisque.config import Config, MiB

__all__ = [
    "EPILOG",
    "MAX_BYTES",
    "PASSWORD_ENV",
    "ROOT_ENV",
    "config_from",
    "connection_options",
    "mib",
    "positive_float",
    "positive_int",
]

PASSWORD_ENV = "BISQUE_PASSWORD"

ROOT_ENV = "BISQUE_ROOT"

#: Out-of-core downloads never hold the array, so the size guard only stops absurd sizes.
MAX_BYTES = 1 << 50

EPILOG = f"""\
exit status:
  {EXIT_OK}  success
  {EXIT_FAILED}  a download or request failed (partial downloads that a rerun can resume are
     kept; the message says so)
  {EXIT_USAGE}  bad arguments
  {EXIT_AUTH}  authentication failed (credentials missing or rejected, or access denied)
  {EXIT_UNCERTAIN}  an upload failed after the server may have received the file: look for the
     resource (the message says how) before uploading again
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)

environment:
  {ROOT_ENV}      server root URL, when ROOT is not given
  {PASSWORD_ENV}  password for --user (else ~/.netrc, then a prompt)
  NETRC            netrc file to read instead of ~/.netrc
  AIOBISQUE_LOOP   uvloop: run on uvloop (pip install 'aiobisque[uvloop]'); default asyncio
"""


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def mib(n: int) -> str:
    """Bytes as MiB for help texts: ``4``, ``0.5``."""
    return f"{n / MiB:g}"


def connection_options() -> argparse.ArgumentParser:
    defaults = Config()  # help texts quote the real defaults, so they cannot drift
    common = argparse.ArgumentParser(add_help=False)
    auth = common.add_argument_group("credentials (the password is never an argument)")
    auth.add_argument("--user", metavar="NAME",
                      help=f"log in as NAME; the password comes from ${PASSWORD_ENV}, "
                           "~/.netrc (or $NETRC), or a prompt")
    auth.add_argument("--mex-token-env", metavar="VAR",
                      help="read a BisQue Mex token from environment variable VAR")
    auth.add_argument("--allow-insecure", action="store_true",
                      help="allow credentials over plain http to a non-local host")
    tuning = common.add_argument_group("transfer")
    tuning.add_argument("--concurrency", type=positive_int, metavar="N",
                        help="most requests in flight: the ceiling of the adaptive window, "
                             f"which starts at {window.START} (default {defaults.concurrency})")
    tuning.add_argument("--request-mb", type=positive_float, metavar="M",
                        help="payload per range request in MiB "
                             f"(default {mib(defaults.request_bytes)})")
    tuning.add_argument("--inflight-mb", type=positive_float, metavar="M",
                        help="most MiB held in memory by requests in flight (file blocks, "
                             "bodies held whole), bounds memory "
                             f"(default {mib(defaults.inflight_bytes)})")
    common.add_argument("-v", "--verbose", action="count", default=0,
                        help="log what happens (-vv: debug)")
    return common


def config_from(args: argparse.Namespace) -> Config:
    changes: dict[str, Any] = {"max_bytes": MAX_BYTES, "allow_insecure": args.allow_insecure}
    if args.concurrency:
        changes["concurrency"] = args.concurrency
        changes["min_concurrency"] = min(Config.min_concurrency, args.concurrency)
    if args.request_mb:
        changes["request_bytes"] = max(1, int(args.request_mb * MiB))
    if args.inflight_mb:
        changes["inflight_bytes"] = max(1, int(args.inflight_mb * MiB))
    return Config(**changes)
