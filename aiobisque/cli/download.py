"""``aiobisque download``: out-of-core, resumable downloads to ``.npy`` and HDF5 files."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from aiobisque.bulk import BulkDownloader, FileResult, Target, default_block_bytes
from aiobisque.cli.credentials import make_session, resolve_auth
from aiobisque.cli.display import make_display
from aiobisque.cli.exits import ARGUMENT_ERRORS, EXIT_FAILED, EXIT_OK, CommandError, message
from aiobisque.cli.options import ROOT_ENV, mib, positive_float, positive_int
from aiobisque.cli.roots import split_positionals
from aiobisque.cli.running import return_big_buffers_to_os, run
from aiobisque.config import Config, MiB
from aiobisque.outputs import output_format
from aiobisque.progress import Meter
from aiobisque.session import BisqueSession

__all__ = ["add_arguments", "main", "read_list"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("root", nargs="?", metavar="ROOT",
                   help=f"server root URL (default ${ROOT_ENV})")
    p.add_argument("uniq", nargs="?", metavar="UNIQ",
                   help="resource uniq, data_service URL or viewer URL")
    p.add_argument("path", nargs="?", metavar="PATH", help="HDF path of the array")
    p.add_argument("-o", "--output", type=Path, metavar="FILE",
                   help="output file: .npy, .h5 or .hdf5 (tables also .csv)")
    p.add_argument("--slices", default="", metavar="SPEC",
                   help="numpy selection as text, e.g. '10:20, :, -1' or '..., ::2'; one "
                        "that starts with '-' is written --slices=-3:")
    p.add_argument("--columns", metavar="A,B,...",
                   help="of a table, only these columns, in this order (default: all)")
    p.add_argument("--dataset", metavar="NAME",
                   help="HDF5 dataset name (default: the path's last component)")
    p.add_argument("--compression", choices=("gzip", "lzf", "none"), default="none",
                   help="HDF5 compression (default none; .h5/.hdf5 outputs only)")
    p.add_argument("--restart", action="store_true",
                   help="discard a partial download (or an existing output) and start over")
    p.add_argument("--from-list", type=Path, metavar="FILE",
                   help="download every line 'UNIQ PATH OUTPUT [SLICES]' of FILE "
                        "(shell quoting, # comments)")
    p.add_argument("--jobs", type=positive_int, metavar="N",
                   help="files downloaded at once with --from-list (default: as many as "
                        "keep the adaptive request window busy)")
    p.add_argument("--block-mb", type=positive_float, metavar="M",
                   help="MiB per block, the unit that is synced, journaled and resumed "
                        f"(default {mib(default_block_bytes(Config()))}: two requests, "
                        "at least 1 MiB)")
    p.add_argument("--no-progress", action="store_true", help="no progress output")
    p.add_argument("--progress-interval", type=positive_float, default=10.0, metavar="S",
                   help="seconds between progress lines when stderr is not a terminal "
                        "(default %(default)g)")


def _targets(args: argparse.Namespace, rest: list[str]) -> list[Target]:
    compression = None if args.compression == "none" else args.compression
    if args.from_list is not None:
        if rest:
            raise CommandError("with --from-list give only ROOT (or set $BISQUE_ROOT), "
                               f"not {' '.join(rest)}")
        if args.output is not None or args.slices:
            raise CommandError("-o/--slices do not go with --from-list (each line has its own)")
        if args.columns:
            raise CommandError("--columns does not go with --from-list")
        return read_list(args.from_list, dataset=args.dataset, compression=compression)
    if len(rest) != 2:
        raise CommandError("download needs UNIQ and PATH (or --from-list FILE)")
    if args.output is None:
        raise CommandError("download needs -o FILE (.npy, .h5 or .hdf5; tables also .csv)")
    try:
        if output_format(args.output) != "hdf5":
            for option, value in (("--compression", compression), ("--dataset", args.dataset)):
                if value is not None:
                    raise CommandError(f"{option} applies to .h5/.hdf5 outputs, "
                                       f"not {args.output}")
        columns = tuple(c.strip() for c in args.columns.split(",")) if args.columns else None
        return [Target(rest[0], rest[1], args.output, args.slices, dataset=args.dataset,
                       compression=compression, columns=columns)]
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
    display = make_display(args, sys.stderr)
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
            print(f"FAILED  {target.output} ({target.where}): {message(result)}")
    print(f"{len(targets)} downloads: {len(targets) - failed} done, {failed} failed")
    return EXIT_FAILED if failed else EXIT_OK


def main(args: argparse.Namespace) -> int:
    root, rest = split_positionals(args, "aiobisque download [ROOT] UNIQ PATH -o FILE",
                                    most=0 if args.from_list is not None else 2)
    targets = _targets(args, rest)
    session = make_session(args, root, resolve_auth(args, root))
    return_big_buffers_to_os()
    return run(_download(args, session, targets))
