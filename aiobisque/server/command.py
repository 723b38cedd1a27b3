"""``aiobisque serve DIR``: run the embedded table server from the command line.

It prints one line on stdout, ``serving http://HOST:PORT`` (scripts parse it), then on
stderr what it serves (uniq = file stem, public or login required) and which logins it
accepts, and serves until SIGINT or SIGTERM and exits 0. Fault options take the
:class:`~aiobisque.server.FaultPlan` field names; sizes accept ``16MB``, ``16MiB`` or plain
bytes.

    aiobisque serve ./data --user alice:wonderland --latency 0.1 --bandwidth 16MB
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from aiobisque.server.app import DEMO_MEX_TOKENS, DEMO_USERS, TableServer, run_server
from aiobisque.server.faults import TRUNCATE_FRAMINGS, FaultPlan, parse_size
from aiobisque.server.generations import GENERATIONS
from aiobisque.server.store import SUFFIXES, Limits

__all__ = ["add_arguments", "describe", "main", "plan_from_args", "run"]

_EPILOG = """\
example: emulate a WAN link (100 ms latency, 16 MB/s per connection, 160 MB/s in all,
1% of data requests answered 503), reproducibly:

  aiobisque serve ./data --latency 0.1 --bandwidth 16MB --total-bandwidth 160MB \\
      --error-rate 0.01 --seed 1
"""
DESCRIPTION = """\
Serve a folder of HDF5 files as a BisQue table service: a faithful stand-in that answers
as BisQue's own table-service code does (its query language, statuses, quirks and
layouts), so clients tested against it work against real servers.

Intentional differences: memory is bounded (413/503, see "memory bounds"); a %00 path
component and an index of more than 4,300 digits answer 400 (BisQue: 500 or a wrong
node); stuck connections are closed (--header-timeout); non-ASCII logins work."""
_LISTED = 40  # resources named in the banner; a large folder gets a count for the rest


def _pair(text: str) -> tuple[str, str]:
    left, sep, right = text.partition(":")
    if not sep or not left or not right:
        raise argparse.ArgumentTypeError(f"expected A:B, got {text!r}")
    return left, right


def _size(text: str) -> float:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``serve`` command's arguments, and its example epilog, to ``parser``."""
    parser.add_argument("folder", type=Path, metavar="DIR", help="folder of HDF5 files")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument("--port", type=int, default=0, help="port (0: any free port)")
    parser.add_argument(
        "--user",
        dest="users",
        action="append",
        type=_pair,
        default=[],
        metavar="NAME:PASSWORD",
        help="a Basic-auth user (repeatable; default alice:wonderland)",
    )
    parser.add_argument(
        "--mex-token",
        dest="mex_tokens",
        action="append",
        type=_pair,
        default=[],
        metavar="TOKEN:USER",
        help="a Mex token and its user (repeatable)",
    )
    parser.add_argument(
        "--public", action="append", default=[], metavar="UNIQ", help="a uniq readable anonymously"
    )
    parser.add_argument(
        "--generation",
        choices=tuple(GENERATIONS),
        default="bisque",
        help="answer as BisQue 0.5/0.6 (bisque), its Python 3 port (py3) or ViQi (viqi) "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--table-service",
        default=None,
        metavar="NAME",
        help="table service name (default: the generation's, table or ViQi's tables)",
    )
    parser.add_argument(
        "--service-prefix", default="", metavar="PATH", help="path prefix for every service"
    )
    parser.add_argument(
        "--hdf-layout",
        choices=("contiguous", "chunked"),
        default="contiguous",
        help="format:hdf bodies as BisQue makes them (contiguous) or gzip-chunked "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--keepalive-timeout",
        type=float,
        default=75.0,
        metavar="SECONDS",
        help="idle time before a kept-alive connection is closed (default %(default)s)",
    )
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="close a connection that has not sent its request headers within this time "
        "(default %(default)s)",
    )
    bounds = parser.add_argument_group(
        "memory bounds",
        "Real BisQue holds whatever is asked; this server bounds it. Beyond a bound a\n"
        "request answers 413 with a message; one that fits but finds the memory taken\n"
        "waits, then answers 503 with Retry-After.",
    )
    bounds.add_argument(
        "--text-limit",
        type=_size,
        default=float(16 << 20),
        metavar="BYTES",
        help="most array data one json/extjs/csv/xml answer may render (default 16MiB)",
    )
    bounds.add_argument(
        "--memory-limit",
        type=_size,
        default=float(1 << 30),
        metavar="BYTES",
        help="most array data all data requests together may hold until sent; also "
        "the most one request may read (default 1GiB)",
    )
    bounds.add_argument(
        "--memory-wait",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long a request waits for memory before it answers 503 (default %(default)s)",
    )
    faults = parser.add_argument_group(
        "faults",
        "Applied to data requests (--latency to every request, as a WAN's round trip);\n"
        "each rate P is a probability 0-1, drawn per request.",
    )
    faults.add_argument(
        "--seed",
        type=int,
        default=0,
        help="the n-th data request gets the same faults on every run with the same seed "
        "(default %(default)s)",
    )
    faults.add_argument(
        "--latency",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="delay before each response's headers, 0-600 (default %(default)s)",
    )
    faults.add_argument(
        "--bandwidth",
        type=_size,
        default=None,
        metavar="BYTES/S",
        help="cap per response: 16MB (10**6 bytes), 16MiB (2**20) or plain bytes "
        "(default unlimited)",
    )
    faults.add_argument(
        "--total-bandwidth",
        type=_size,
        default=None,
        metavar="BYTES/S",
        help="cap shared by all responses together, same units (default unlimited)",
    )
    faults.add_argument(
        "--error-rate",
        type=float,
        default=0.0,
        metavar="P",
        help="answer an --error-status instead of data (default %(default)s)",
    )
    faults.add_argument(
        "--error-status",
        dest="error_statuses",
        type=int,
        action="append",
        default=[],
        metavar="CODE",
        help="status for --error-rate, 400-599, repeatable: one is drawn per error; the "
        "first also serves --fail-first (default 503)",
    )
    faults.add_argument(
        "--fail-first",
        type=int,
        default=0,
        metavar="N",
        help="the first N data requests get the first --error-status (default %(default)s)",
    )
    faults.add_argument(
        "--throttle-rate",
        type=float,
        default=0.0,
        metavar="P",
        help="answer 429 Too Many Requests with Retry-After (default %(default)s)",
    )
    faults.add_argument(
        "--retry-after",
        default="1",
        metavar="SECONDS",
        help="the Retry-After header sent with 429 (default %(default)s)",
    )
    faults.add_argument(
        "--reset-rate",
        type=float,
        default=0.0,
        metavar="P",
        help="drop the connection with a TCP reset part-way through the body (default %(default)s)",
    )
    faults.add_argument(
        "--truncate-rate",
        type=float,
        default=0.0,
        metavar="P",
        help="send only part of the body, then close the connection (default %(default)s)",
    )
    faults.add_argument(
        "--truncate-framing",
        choices=(*TRUNCATE_FRAMINGS, "mixed"),
        default="length",
        help="how a truncated body is framed: length (Content-Length declared), chunked "
        "(no final chunk), close (no length: the client sees only a short body) or mixed "
        "(one drawn per request) (default %(default)s)",
    )
    faults.add_argument(
        "--stall-rate",
        type=float,
        default=0.0,
        metavar="P",
        help="send part of the body, then nothing for --stall-seconds, then drop the "
        "connection (default %(default)s)",
    )
    faults.add_argument(
        "--stall-seconds",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long a stall lasts, 0-3600 (default %(default)s)",
    )
    faults.add_argument(
        "--hdf-name-clash",
        action="store_true",
        help="answer 500 to a format:hdf request made while another is exported, as a "
        "real multi-threaded BisQue does (its exporter reuses one in-memory file name)",
    )
    parser.epilog = _EPILOG
    # the serve command's help must say what the server is and how it differs from BisQue
    parser.description = DESCRIPTION
    if parser.formatter_class is argparse.HelpFormatter:
        # keep the example's line as written (a caller's own formatter is left alone)
        parser.formatter_class = argparse.RawDescriptionHelpFormatter


def plan_from_args(args: argparse.Namespace) -> FaultPlan:
    """The :class:`FaultPlan` the parsed options describe (raises ``ValueError``)."""
    return FaultPlan(
        seed=args.seed,
        latency=args.latency,
        bandwidth=args.bandwidth,
        total_bandwidth=args.total_bandwidth,
        error_rate=args.error_rate,
        error_statuses=tuple(args.error_statuses) or (503,),
        fail_first=args.fail_first,
        throttle_rate=args.throttle_rate,
        retry_after=args.retry_after,
        reset_rate=args.reset_rate,
        truncate_rate=args.truncate_rate,
        truncate_framing=args.truncate_framing,
        stall_rate=args.stall_rate,
        stall_seconds=args.stall_seconds,
        hdf_name_clash=args.hdf_name_clash,
    )


async def _serve(args: argparse.Namespace, plan: FaultPlan) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows
            loop.add_signal_handler(signum, stop.set)
    async with run_server(
        args.folder,
        users=dict(args.users) if args.users else None,
        mex_tokens={token: user for token, user in args.mex_tokens} or None,
        public=args.public,
        faults=plan,
        host=args.host,
        port=args.port,
        table_service=args.table_service,
        generation=args.generation,
        service_prefix=args.service_prefix,
        hdf_layout=args.hdf_layout,
        keepalive_timeout=args.keepalive_timeout,
        header_timeout=args.header_timeout,
        limits=Limits(
            text_bytes=int(args.text_limit),
            total_bytes=int(args.memory_limit),
            wait_seconds=args.memory_wait,
        ),
    ) as server:
        print(f"serving {server.root}", flush=True)
        # stderr: scripts read stdout's first line and some never drain the pipe after it
        demo_token = not args.mex_tokens and not args.users
        print(describe(server, demo_login=not args.users, demo_token=demo_token),
              file=sys.stderr, flush=True)  # fmt: skip
        await stop.wait()


def describe(server: TableServer, *, demo_login: bool, demo_token: bool) -> str:
    """What a new user needs after ``serving ...``: the uniqs and the logins, no passwords.

    Only the built-in demo account's password is shown (``demo_login``), because it is a
    public default the user did not choose.
    """
    uniqs = server.store.uniqs()
    lines = [f"resources in {server.folder} (uniq = file stem):"]
    for uniq in uniqs[:_LISTED]:
        access = "public" if uniq in server.public else "login required"
        lines.append(f"  {uniq}  ({access})")
    if len(uniqs) > _LISTED:
        lines.append(f"  ... and {len(uniqs) - _LISTED} more")
    if not uniqs:
        lines.append(f"  none yet: files {'/'.join(SUFFIXES)} added later are served too")
    lines.extend(
        f"  warning: --public {uniq}: no such file" for uniq in sorted(server.public - set(uniqs))
    )
    users = ", ".join(sorted(server.users)) or "none"
    lines.append(f"users: {users}")
    if demo_login:
        demo = ", ".join(f"{name} / {password}" for name, password in DEMO_USERS.items())
        lines.append(
            f"  (the built-in demo account: {demo}; choose your own with --user NAME:PASSWORD)"
        )
    if demo_token:
        demo = ", ".join(f"{token} (user {owner})" for token, owner in DEMO_MEX_TOKENS.items())
        lines.append(f"mex token: the built-in demo token {demo}")
    elif server.mex_tokens:
        owners = ", ".join(sorted(set(server.mex_tokens.values())))
        lines.append(f"mex tokens for: {owners}")
    lines.append(f"table service: {server.table_url}")
    if server.generation.name != "bisque":
        lines.append(f"answering as: {server.generation.name} (see aiobisque.server.generations)")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """Run the server until interrupted; 0 on a clean stop, 2 on bad options."""
    try:
        plan = plan_from_args(args)
    except ValueError as exc:
        print(f"aiobisque serve: {exc}", file=sys.stderr)
        return 2
    if not args.folder.is_dir():
        print(f"aiobisque serve: not a folder: {args.folder}", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args, plan))
    return 0


def run(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run (what ``python -m aiobisque.server`` does)."""
    parser = argparse.ArgumentParser(
        prog="aiobisque serve",
        description=DESCRIPTION,
    )
    add_arguments(parser)
    return main(parser.parse_args(argv))
