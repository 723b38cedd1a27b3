"""The ``aiobisque`` command: ``info``, ``download``, ``upload``, ``serve`` and ``demo``.

    aiobisque info https://bisque.example.org 00-orJQLiXgqh8K955C6qzhyC
    aiobisque download https://bisque.example.org 00-orJQ... Data/Phases -o phases.h5 \\
        --slices "10:20, :, -1" --user alice
    BISQUE_ROOT=https://bisque.example.org aiobisque download --from-list wanted.txt

Passwords never come from the command line (it leaks into shell history and process
lists): they come from ``BISQUE_PASSWORD``, ``~/.netrc`` (or the file named by ``NETRC``),
or a prompt. Downloads are out-of-core and resumable (see :mod:`aiobisque.bulk`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import logging
import netrc
import os
import re
import shlex
import sys
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import urlsplit

from aiobisque.bulk import (
    BulkDownloader,
    FileResult,
    Target,
    default_block_bytes,
)
from aiobisque.config import Config, MiB
from aiobisque.errors import (
    AuthenticationError,
    BisqueError,
    InsecureTransportError,
    PermissionDeniedError,
    SelectionError,
    UsageError,
)
from aiobisque.outputs import output_format
from aiobisque.progress import Meter
from aiobisque.protocol import ArrayInfo, redact_url, split_path
from aiobisque.session import Auth, BisqueSession, MexToken

__all__ = [
    "EXIT_AUTH",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "build_parser",
    "main",
    "read_list",
    "resolve_auth",
]

log = logging.getLogger("aiobisque")
T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILED = 1  # a download (or info) failed
EXIT_USAGE = 2  # bad arguments (argparse uses 2 too)
EXIT_AUTH = 3  # credentials missing or rejected, or access denied
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)

#: Errors reported as an authentication failure (EXIT_AUTH).
AUTH_ERRORS = (AuthenticationError, PermissionDeniedError)
#: Errors reported as bad arguments (EXIT_USAGE).
ARGUMENT_ERRORS = (UsageError, SelectionError)

PASSWORD_ENV = "BISQUE_PASSWORD"
ROOT_ENV = "BISQUE_ROOT"
#: Out-of-core downloads never hold the array, so the size guard only stops absurd sizes.
_MAX_BYTES = 1 << 50
#: glibc's mallopt parameter number for the mmap threshold.
_M_MMAP_THRESHOLD = -3
#: Most nodes listed by ``info`` on a group (each costs one request).
_TREE_LIMIT = 500

_EPILOG = f"""\
exit status:
  {EXIT_OK}  success
  {EXIT_FAILED}  a download or request failed (partial downloads that a rerun can resume are
     kept; the message says so)
  {EXIT_USAGE}  bad arguments
  {EXIT_AUTH}  authentication failed (credentials missing or rejected, or access denied)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)

environment:
  {ROOT_ENV}      server root URL, when ROOT is not given
  {PASSWORD_ENV}  password for --user (else ~/.netrc, then a prompt)
  NETRC            netrc file to read instead of ~/.netrc
"""


class CommandError(Exception):
    """A problem the command line reports in one line, with an exit status."""

    def __init__(self, message: str, status: int = EXIT_USAGE):
        super().__init__(message)
        self.status = status


# -- arguments ----------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _mib(n: int) -> str:
    """Bytes as MiB for help texts: ``4``, ``0.5``."""
    return f"{n / MiB:g}"


def _connection_options() -> argparse.ArgumentParser:
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
    tuning.add_argument("--concurrency", type=_positive_int, metavar="N",
                        help=f"most requests in flight (default {defaults.concurrency})")
    tuning.add_argument("--request-mb", type=_positive_float, metavar="M",
                        help="payload per range request in MiB "
                             f"(default {_mib(defaults.request_bytes)})")
    tuning.add_argument("--inflight-mb", type=_positive_float, metavar="M",
                        help="most MiB held by requests in flight, bounds memory "
                             f"(default {_mib(defaults.inflight_bytes)})")
    common.add_argument("-v", "--verbose", action="count", default=0,
                        help="log what happens (-vv: debug)")
    return common


def _add_download_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("root", nargs="?", metavar="ROOT",
                   help=f"server root URL (default ${ROOT_ENV})")
    p.add_argument("uniq", nargs="?", metavar="UNIQ",
                   help="resource uniq, data_service URL or viewer URL")
    p.add_argument("path", nargs="?", metavar="PATH", help="HDF path of the array")
    p.add_argument("-o", "--output", type=Path, metavar="FILE",
                   help="output file: .npy, .h5 or .hdf5")
    p.add_argument("--slices", default="", metavar="SPEC",
                   help="numpy selection as text, e.g. '10:20, :, -1' or '..., ::2'")
    p.add_argument("--dataset", metavar="NAME",
                   help="HDF5 dataset name (default: the path's last component)")
    p.add_argument("--compression", choices=("gzip", "lzf", "none"), default="none",
                   help="HDF5 compression (default none; .h5/.hdf5 outputs only)")
    p.add_argument("--restart", action="store_true",
                   help="discard a partial download (or an existing output) and start over")
    p.add_argument("--from-list", type=Path, metavar="FILE",
                   help="download every line 'UNIQ PATH OUTPUT [SLICES]' of FILE "
                        "(shell quoting, # comments)")
    p.add_argument("--jobs", type=_positive_int, default=4, metavar="N",
                   help="files downloaded at once with --from-list (default %(default)s)")
    p.add_argument("--block-mb", type=_positive_float, metavar="M",
                   help="MiB per block, the unit that is synced, journaled and resumed "
                        f"(default {_mib(default_block_bytes(Config()))}: two requests, "
                        "at least 1 MiB)")
    p.add_argument("--no-progress", action="store_true", help="no progress output")
    p.add_argument("--progress-interval", type=_positive_float, default=10.0, metavar="S",
                   help="seconds between progress lines when stderr is not a terminal "
                        "(default %(default)g)")


def build_parser() -> argparse.ArgumentParser:
    """The ``aiobisque`` argument parser with every subcommand."""
    from aiobisque import __version__
    from aiobisque.server import command as serve_command

    parser = argparse.ArgumentParser(
        prog="aiobisque",
        description="Fast, dependable downloads of N-D arrays from BisQue's table service.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"aiobisque {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = _connection_options()

    info = commands.add_parser(
        "info", parents=[common], epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="shape, dtype and size of an array; the tree of arrays in a group",
        description="Show an array's shape, dtype and size, or the arrays inside a group.\n"
                    f"ROOT may be left out when ${ROOT_ENV} is set.",
    )
    info.add_argument("root", nargs="?", metavar="ROOT",
                      help=f"server root URL (default ${ROOT_ENV})")
    info.add_argument("uniq", nargs="?", metavar="UNIQ",
                      help="resource uniq, data_service URL or viewer URL")
    info.add_argument("path", nargs="?", metavar="PATH", help="HDF path (default: the root)")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(handler=_info_command)

    download = commands.add_parser(
        "download", parents=[common], epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="download an array (or a selection) to a .npy or HDF5 file, resumably",
        description="Download an array, or a numpy selection of it, to FILE without holding\n"
                    "it in memory. Data goes to FILE.part with a journal beside it; rerun the\n"
                    "same command after a failure, Ctrl-C or kill to continue where it stopped.\n"
                    f"ROOT may be left out when ${ROOT_ENV} is set.",
    )
    _add_download_arguments(download)
    download.set_defaults(handler=_download_command)

    from aiobisque import upload_command

    upload = commands.add_parser(
        "upload", parents=[common], epilog=upload_command.EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="store a .npy or HDF5 file's array as a new resource; prints its uniq",
        description=upload_command.DESCRIPTION,
    )
    upload_command.add_arguments(upload)
    upload.set_defaults(handler=upload_command.main)

    serve = commands.add_parser(
        "serve", help="serve a folder of HDF5 files as a BisQue table service (for testing)",
        description="Serve a folder of HDF5 files as a BisQue table service.",
    )
    serve_command.add_arguments(serve)
    serve.set_defaults(handler=serve_command.main)

    demo = commands.add_parser(
        "demo", help="download sample data from an embedded server over an emulated WAN",
        description="Serve sample data with the embedded server behind an emulated WAN link "
                    "and download it with aiobisque and with one request, bit-exact checked.",
    )
    try:
        from aiobisque import demo as demo_command
    except ImportError:  # pragma: no cover - the demo is optional
        demo.set_defaults(handler=lambda args: _unavailable("demo"))
    else:
        demo_command.add_arguments(demo)
        demo.set_defaults(handler=demo_command.main)
    return parser


def _unavailable(name: str) -> int:
    print(f"aiobisque: the {name} command is not available in this installation",
          file=sys.stderr)
    return EXIT_FAILED


def _is_root_url(text: str) -> bool:
    """An http(s) URL naming a server, not a resource (those name a uniq)."""
    if not text.startswith(("http://", "https://")):
        return False
    parts = urlsplit(text)
    return "resource=" not in parts.query and "/data_service/" not in parts.path + "/"


#: ``host:port`` (optionally with a path): a server named without its scheme.
_HOST_PORT = re.compile(r"[\w.-]+:\d+(/.*)?")


def _meant_as_root(text: str, given: int, most: int) -> bool:
    """Whether a first positional that is no http(s) root was meant as ROOT anyway.

    It was when there is one positional too many for UNIQ [PATH], or when it is clearly a
    server: another scheme (``ftp://host``) or ``host:port``.
    """
    if text.startswith(("http://", "https://")):
        return given > most  # a resource URL in ROOT's place
    return given > most or "://" in text or bool(_HOST_PORT.fullmatch(text))


def _bad_root(text: str, where: str = "ROOT") -> CommandError:
    if text.startswith(("http://", "https://")):
        return CommandError(f"{where} must be a server's root URL such as https://host, "
                            f"got {redact_url(text)!r}")
    shown = text.rpartition("@")[2]  # never echo userinfo: it may hold a password
    return CommandError(f"{where} must start with http:// or https://, got {shown!r}")


def _split_positionals(args: argparse.Namespace, wanted: str,
                       most: int = 2) -> tuple[str, list[str]]:
    """(root, the other positionals): ROOT is optional when ``$BISQUE_ROOT`` is set.

    ``most`` is how many positionals the command takes after ROOT.
    """
    given = [x for x in (args.root, args.uniq, args.path) if x is not None]
    where = "ROOT"
    if given and _is_root_url(given[0]):
        root = given.pop(0)
    elif given and _meant_as_root(given[0], len(given), most):
        raise _bad_root(given[0])
    elif os.environ.get(ROOT_ENV):
        root = os.environ[ROOT_ENV]
        where = f"${ROOT_ENV}"
    elif given and "/data_service/" in urlsplit(given[0]).path:
        # a data_service URL names its server too
        url = given[0]
        root = url[: url.index("/data_service/")]
    else:
        raise CommandError(f"no server given: pass ROOT (https://host) or set ${ROOT_ENV}"
                           f" (usage: {wanted})")
    parts = urlsplit(root)
    if parts.username or parts.password:
        raise CommandError(
            "ROOT must not contain credentials; use --user with $BISQUE_PASSWORD or ~/.netrc")
    if not root.startswith(("http://", "https://")) or not parts.hostname:
        raise _bad_root(root, where)
    return root, given


# -- credentials --------------------------------------------------------------------------


def _netrc_file() -> tuple[str, str]:
    """(the netrc file in use, how to name it in messages): ``$NETRC`` or ``~/.netrc``."""
    path = os.environ.get("NETRC")
    if path:
        return path, f"$NETRC ({path})"
    return os.path.join(os.path.expanduser("~"), ".netrc"), "~/.netrc"


def _netrc_entry(host: str) -> tuple[str, str] | None:
    """(login, password) for ``host`` from ``$NETRC`` or ``~/.netrc``, if there is one."""
    path, _ = _netrc_file()
    if not os.path.isfile(path):
        return None
    try:
        entry = netrc.netrc(path).authenticators(host)
    except netrc.NetrcParseError as exc:
        # the parser's message may quote a token of the file, which can be a password
        raise CommandError(f"cannot read {exc.filename or path} (line {exc.lineno}): "
                           "it is not valid netrc syntax", EXIT_AUTH) from None
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror}", EXIT_AUTH) from None
    if entry is None or not entry[0] or entry[2] is None:
        return None
    return entry[0], entry[2]


def _session(args: argparse.Namespace, root: str, auth: Auth) -> BisqueSession:
    """The command's session (nothing is sent before it is entered).

    The session refuses credentials over plain http to another host; here that refusal
    names the option that lifts it.
    """
    try:
        return BisqueSession(root, auth=auth, config=_config(args))
    except InsecureTransportError:
        raise CommandError(
            f"refusing to send credentials unencrypted to {redact_url(root)} (plain http); "
            "use https, or pass --allow-insecure if you accept the risk") from None


def resolve_auth(args: argparse.Namespace, root: str) -> Auth:
    """Credentials from the options, environment, netrc or a prompt; ``None``: anonymous."""
    host = urlsplit(root).hostname or ""
    if args.mex_token_env or args.user:
        # refuse before asking for a password that could not be sent: the session's own
        # rule decides, on a stand-in credential (a session does no I/O until entered)
        _session(args, root, MexToken("-"))
    if args.mex_token_env:
        token = os.environ.get(args.mex_token_env)
        if not token:
            raise CommandError(f"--mex-token-env: environment variable {args.mex_token_env} "
                               "is not set or empty")
        return MexToken(token, user=args.user)
    if args.user:
        password = os.environ.get(PASSWORD_ENV)
        if password is None:
            entry = _netrc_entry(host)
            if entry is not None and entry[0] == args.user:
                password = entry[1]
        if password is None:
            if not sys.stdin.isatty():
                raise CommandError(
                    f"no password for user {args.user!r}: set ${PASSWORD_ENV}, add {host} "
                    f"to {_netrc_file()[1]}, or run in a terminal to be asked", EXIT_AUTH)
            password = getpass.getpass(f"password for {args.user} at {host}: ")
        return (args.user, password)
    entry = _netrc_entry(host)
    if entry is not None:
        log.info("logging in as %s (from netrc)", entry[0])
        return entry
    return None


def _config(args: argparse.Namespace) -> Config:
    changes: dict[str, Any] = {"max_bytes": _MAX_BYTES, "allow_insecure": args.allow_insecure}
    if args.concurrency:
        changes["concurrency"] = args.concurrency
        changes["min_concurrency"] = min(Config.min_concurrency, args.concurrency)
    if args.request_mb:
        changes["request_bytes"] = max(1, int(args.request_mb * MiB))
    if args.inflight_mb:
        changes["inflight_bytes"] = max(1, int(args.inflight_mb * MiB))
    return Config(**changes)


# -- progress -----------------------------------------------------------------------------


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


class _Display:
    """Shows a :class:`Meter`: nothing (``--no-progress``)."""

    def update(self, meter: Meter) -> None:
        pass

    def close(self) -> None:
        pass


class _BarDisplay(_Display):
    """A tqdm bar: bytes, rate and ETA, plus requests and retries."""

    def __init__(self, stream: IO[str]):
        from tqdm import tqdm

        self.bar = tqdm(total=0, unit="iB", unit_scale=True, unit_divisor=1024,
                        file=stream, dynamic_ncols=True, desc="download", leave=True)
        self._shown = ""

    def update(self, meter: Meter) -> None:
        p = meter.snapshot()
        if self.bar.total != p.total_bytes:
            self.bar.total = p.total_bytes
        if p.done_bytes != self.bar.n:
            self.bar.update(p.done_bytes - self.bar.n)
        postfix = f"{p.done_requests}/{p.total_requests} requests, {p.retries} retries"
        if meter.files > 1:
            postfix = f"{meter.files_done}/{meter.files} files, " + postfix
        if postfix != self._shown:
            self._shown = postfix
            self.bar.set_postfix_str(postfix, refresh=False)

    def close(self) -> None:
        self.bar.close()


class _LogDisplay(_Display):
    """One plain line every ``interval`` seconds, for logs and pipes."""

    def __init__(self, stream: IO[str], interval: float):
        self.stream = stream
        self.interval = interval
        self._last = time.monotonic()
        self._start = self._last
        self._first_bytes: int | None = None

    def update(self, meter: Meter) -> None:
        now = time.monotonic()
        p = meter.snapshot()
        if self._first_bytes is None:
            self._first_bytes = p.done_bytes  # what was resumed is not part of the rate
        if now - self._last < self.interval:
            return
        self._last = now
        rate = (p.done_bytes - self._first_bytes) / max(now - self._start, 1e-9)
        left = p.total_bytes - p.done_bytes
        eta = f"{left / rate:.0f} s" if rate > 0 else "?"
        files = f"{meter.files_done}/{meter.files} files, " if meter.files > 1 else ""
        print(f"aiobisque: {p.fraction:6.1%} {_size(p.done_bytes)} of {_size(p.total_bytes)}, "
              f"{files}{p.done_requests}/{p.total_requests} requests, {_size(rate)}/s, "
              f"ETA {eta}, {p.retries} retries", file=self.stream, flush=True)


def _display(args: argparse.Namespace, stream: IO[str]) -> _Display:
    if args.no_progress:
        return _Display()
    if stream.isatty():
        return _BarDisplay(stream)
    return _LogDisplay(stream, args.progress_interval)


# -- commands -----------------------------------------------------------------------------


def _targets(args: argparse.Namespace, rest: list[str]) -> list[Target]:
    compression = None if args.compression == "none" else args.compression
    if args.from_list is not None:
        if rest:
            raise CommandError("with --from-list give only ROOT (or set $BISQUE_ROOT), "
                               f"not {' '.join(rest)}")
        if args.output is not None or args.slices:
            raise CommandError("-o/--slices do not go with --from-list (each line has its own)")
        return read_list(args.from_list, dataset=args.dataset, compression=compression)
    if len(rest) != 2:
        raise CommandError("download needs UNIQ and PATH (or --from-list FILE)")
    if args.output is None:
        raise CommandError("download needs -o FILE (.npy, .h5 or .hdf5)")
    try:
        if output_format(args.output) != "hdf5":
            for option, value in (("--compression", compression), ("--dataset", args.dataset)):
                if value is not None:
                    raise CommandError(f"{option} applies to .h5/.hdf5 outputs, "
                                       f"not {args.output}")
        return [Target(rest[0], rest[1], args.output, args.slices, dataset=args.dataset,
                       compression=compression)]
    except ARGUMENT_ERRORS as exc:
        raise CommandError(str(exc)) from None


def read_list(path: Path, *, dataset: str | None = None,
              compression: str | None = None) -> list[Target]:
    """The targets of a ``--from-list`` file: ``UNIQ PATH OUTPUT [SLICES]`` per line.

    Fields follow shell quoting; ``#`` starts a comment; words after OUTPUT form the
    selection (``0:10, :, 5`` needs no quotes). A bad line stops everything before any
    download starts, naming the file and line.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"cannot read the list {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise CommandError(f"the list {path} is not UTF-8 text") from None
    targets = []
    for lineno, line in enumerate(text.splitlines(), 1):
        where = f"{path}:{lineno}"
        try:
            fields = shlex.split(line, comments=True)
        except ValueError as exc:
            raise CommandError(f"{where}: {exc}") from None
        if not fields:
            continue
        if len(fields) < 3:
            raise CommandError(f"{where}: expected UNIQ PATH OUTPUT [SLICES], "
                               f"got {len(fields)} field(s)")
        try:
            targets.append(Target(fields[0], fields[1], Path(fields[2]), " ".join(fields[3:]),
                                  dataset=dataset, compression=compression))
        except ARGUMENT_ERRORS as exc:
            raise CommandError(f"{where}: {exc}") from None
    if not targets:
        raise CommandError(f"the list {path} names no download")
    return targets


async def _download(args: argparse.Namespace, session: BisqueSession,
                    targets: list[Target]) -> int:
    display = _display(args, sys.stderr)
    try:
        async with session as bq:
            downloader = BulkDownloader(
                bq.table, meter=Meter(display.update), restart=args.restart,
                block_bytes=int(args.block_mb * MiB) if args.block_mb else None,
            )
            if args.from_list is None:
                result = await downloader.download(targets[0])
                display.close()
                print(result)
                return EXIT_OK
            results = await downloader.download_all(targets, jobs=args.jobs)
    finally:
        display.close()
    return _summary(targets, results)


def _summary(targets: list[Target], results: list[FileResult | BaseException]) -> int:
    failed = 0
    for target, result in zip(targets, results, strict=True):
        if isinstance(result, FileResult):
            print(f"done    {result}")
        else:
            failed += 1
            print(f"FAILED  {target.output} ({target.where}): {_message(result)}")
    print(f"{len(targets)} downloads: {len(targets) - failed} done, {failed} failed")
    return EXIT_FAILED if failed else EXIT_OK


async def _info(args: argparse.Namespace, session: BisqueSession, uniq: str, path: str) -> int:
    async with session as bq:
        info = await bq.table.info(uniq, path)
        if info.kind == "group":
            tree = await _tree(bq, info)
            if args.json:
                print(json.dumps(tree, indent=2, default=str))
            else:
                print(f"{info.uniq}/{info.path} (group)")
                for line in _tree_lines(tree["children"], ""):
                    print(line)
                if tree.get("truncated"):
                    print(f"(only the first {_TREE_LIMIT} nodes are shown)")
        elif args.json:
            print(json.dumps(_node(info), indent=2, default=str))
        else:
            for line in _describe(info):
                print(line)
    return EXIT_OK


def _node(info: ArrayInfo) -> dict[str, Any]:
    node: dict[str, Any] = {"path": "/" + "/".join(split_path(info.path)), "kind": info.kind}
    if info.shape is not None and info.dtype is not None:
        node.update(shape=list(info.shape), dtype=str(info.dtype), size=info.size,
                    nbytes=info.nbytes)
        if info.kind == "table":
            node["columns"] = {name: str(info.dtype[name]) for name in info.dtype.names or ()}
    if info.meta:
        node["meta"] = dict(info.meta)
    return node


def _describe(info: ArrayInfo) -> list[str]:
    lines = [f"{info.uniq}/{info.path}", f"  kind:  {info.kind}", f"  shape: {info.shape}"]
    assert info.dtype is not None
    if info.kind == "table":
        columns = ", ".join(f"{n} {info.dtype[n]}" for n in info.dtype.names or ())
        lines.append(f"  columns: {columns}")
    else:
        lines.append(f"  dtype: {info.dtype}")
    lines.append(f"  size:  {info.size:,} elements, {_size(info.nbytes)}")
    for key, value in sorted(info.meta.items()):
        lines.append(f"  meta {key}: {value}")
    return lines


async def _tree(bq: BisqueSession, root: ArrayInfo) -> dict[str, Any]:
    """The group's nodes, recursively, at most ``_TREE_LIMIT`` of them (one info each)."""
    budget = [_TREE_LIMIT]
    truncated = [False]

    async def expand(info: ArrayInfo) -> list[dict[str, Any]]:
        children = list(info.children)
        if len(children) > budget[0]:
            children = children[: budget[0]]
            truncated[0] = True
        budget[0] -= len(children)
        infos = await asyncio.gather(*(bq.table.info(info.uniq, p) for p, _ in children))
        nodes = []
        for child in infos:
            node = _node(child)
            if child.kind == "group":
                node["children"] = await expand(child)
            nodes.append(node)
        return nodes

    return {**_node(root), "children": await expand(root), "truncated": truncated[0]}


def _tree_lines(nodes: list[dict[str, Any]], indent: str) -> list[str]:
    lines = []
    for i, node in enumerate(nodes):
        last = i == len(nodes) - 1
        name = node["path"].rsplit("/", 1)[-1]
        if node["kind"] == "group":
            lines.append(f"{indent}{'└── ' if last else '├── '}{name}/")
            lines += _tree_lines(node.get("children", []), indent + ("    " if last else "│   "))
        else:
            kind = " table" if node["kind"] == "table" else ""
            lines.append(f"{indent}{'└── ' if last else '├── '}{name}  {tuple(node['shape'])} "
                         f"{node['dtype']}{kind}, {_size(node['nbytes'])}")
    return lines


def _info_command(args: argparse.Namespace) -> int:
    root, rest = _split_positionals(args, "aiobisque info [ROOT] UNIQ [PATH]")
    if not 1 <= len(rest) <= 2:
        raise CommandError("info needs UNIQ and optionally PATH")
    session = _session(args, root, resolve_auth(args, root))
    return _run(_info(args, session, rest[0], rest[1] if len(rest) > 1 else ""))


def _download_command(args: argparse.Namespace) -> int:
    root, rest = _split_positionals(args, "aiobisque download [ROOT] UNIQ PATH -o FILE",
                                    most=0 if args.from_list is not None else 2)
    targets = _targets(args, rest)
    session = _session(args, root, resolve_auth(args, root))
    _return_big_buffers_to_os()
    return _run(_download(args, session, targets))


def _return_big_buffers_to_os() -> None:
    """Have glibc map every buffer of 1 MiB or more on its own (Linux only).

    By default glibc raises its mmap threshold after the first large buffer is freed, so
    later response bodies come from the heap and their memory is kept after use; a long
    download then holds far more than its in-flight budget. A fixed threshold gives each
    body back to the OS when it is freed.
    """
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 1024 * 1024)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when installed; on the private loop thread if a loop already runs here."""
    from aiobisque._loop import _new_loop, run_sync

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        with asyncio.Runner(loop_factory=_new_loop) as runner:
            return runner.run(coro)
    return run_sync(coro)


# -- entry point --------------------------------------------------------------------------


def _message(exc: BaseException) -> str:
    """One line: the error and the notes added on the way (e.g. how to resume)."""
    text = str(exc) or type(exc).__name__
    notes = getattr(exc, "__notes__", None) or []
    return "; ".join([text, *notes]).replace("\n", " ")


def _status(exc: BaseException) -> int:
    if isinstance(exc, AUTH_ERRORS):
        return EXIT_AUTH
    if isinstance(exc, ARGUMENT_ERRORS):
        return EXIT_USAGE
    return EXIT_FAILED


@contextlib.contextmanager
def _logging(verbosity: int) -> Any:
    """Log to stderr for this command only (tests call :func:`main` many times)."""
    logger = logging.getLogger("aiobisque")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("aiobisque: %(levelname)s: %(message)s"))
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
    parser = build_parser()
    args = parser.parse_args(argv)
    name = f"aiobisque {args.command}"
    with _logging(getattr(args, "verbose", 0)):
        try:
            status: int = args.handler(args)
            return status
        except CommandError as exc:
            print(f"{name}: error: {exc}", file=sys.stderr)
            return exc.status
        except (BisqueError, OSError) as exc:
            print(f"{name}: error: {_message(exc)}", file=sys.stderr)
            return _status(exc)
        except KeyboardInterrupt:
            print(f"{name}: interrupted; partial downloads are kept, rerun the same command "
                  "to resume", file=sys.stderr)
            return EXIT_INTERRUPTED

