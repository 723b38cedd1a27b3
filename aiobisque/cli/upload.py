"""``aiobisque upload ROOT FILE --name NAME``: store an array as a new BisQue resource.

    aiobisque upload https://bisque.example.org result.npy --name result --tags stage=final
    aiobisque upload https://bisque.example.org out.h5 --name out --dataset volumes/mask

It prints the new resource's uniq (``--json``: the whole result). What is stored:

- ``FILE.npy``: the array (memory-mapped, not read into memory) as ``NAME.h5`` with the
  node ``/NAME``, as :meth:`~aiobisque.TableService.store_array` writes it; a structured
  array is stored as a table (:meth:`~aiobisque.TableService.store_table`).
- ``FILE.h5`` (``.hdf5``, ``.dream3d``, ``.h5ebsd``): the file itself, unchanged (every
  group and dataset), as ``NAME.h5``; with ``--dataset PATH`` only that dataset, as for a
  ``.npy`` file.

A login is required (``--user`` or ``--mex-token-env``, as for ``download``). Uploads are not
idempotent: they are retried only when the server provably did not take the file. Exit
status 4 means the upload failed after the server may have received it: the message says
how to look for the resource before uploading again.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from pathlib import Path
from typing import Any

import numpy as np

from aiobisque.cli.credentials import make_session, resolve_auth
from aiobisque.cli.exits import EXIT_OK, EXIT_UNCERTAIN, CommandError
from aiobisque.cli.options import ROOT_ENV
from aiobisque.cli.roots import split_positionals
from aiobisque.cli.running import run
from aiobisque.errors import UploadUncertainError, UsageError
from aiobisque.session import BisqueSession
from aiobisque.upload import UploadResult, check_name, upload_file

__all__ = ["add_arguments", "main", "parse_tags"]

_HDF5_SUFFIXES = (".h5", ".hdf5", ".dream3d", ".h5ebsd")


def parse_tags(items: list[str] | None) -> dict[str, str]:
    """``["k=v", ...]`` as a dict; a UsageError for an item without ``=`` or name."""
    tags: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--tags takes NAME=VALUE items, got {item!r}")
        tags[key.strip()] = value
    return tags


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``upload`` command's own arguments to ``parser``."""
    parser.add_argument("root", nargs="?", metavar="ROOT",
                        help=f"server root URL, e.g. https://host (default ${ROOT_ENV})")
    parser.add_argument("file", nargs="?", metavar="FILE", help="a .npy or HDF5 file")
    parser.add_argument("--name", required=True, metavar="NAME",
                        help="the new resource is NAME.h5 (and the array its node /NAME)")
    parser.add_argument("--tags", nargs="+", action="extend", metavar="K=V",
                        help="tags of the new resource (repeatable)")
    parser.add_argument("--dataset", metavar="PATH",
                        help="of an HDF5 FILE, store only this dataset (as for a .npy)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def _load_npy(path: Path) -> np.ndarray[Any, Any]:
    try:
        data: np.ndarray[Any, Any] = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise UsageError(f"cannot store {path}: {exc} (object arrays cannot be stored)") from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    return data


def _load_dataset(path: Path, dataset: str) -> np.ndarray[Any, Any]:
    """The dataset as PyTables reads it (so as BisQue will): PyTables' booleans are
    bitfields, which h5py would read as uint8."""
    import warnings

    import h5py
    import tables

    with h5py.File(path, "r") as h5:
        if not isinstance(h5.get(dataset), h5py.Dataset):
            raise UsageError(f"{path} has no dataset {dataset!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tables.NaturalNameWarning)
        with tables.open_file(str(path), "r") as f:
            try:
                return np.asarray(f.get_node("/" + dataset.strip("/")).read())
            except (tables.NoSuchNodeError, TypeError, ValueError, NotImplementedError):
                pass
    with h5py.File(path, "r") as h5:  # a type PyTables does not read: as h5py reads it
        return np.asarray(h5[dataset][()])


def _what(args: argparse.Namespace) -> tuple[str, Any]:
    """("file", path) to send an HDF5 file as is, or ("array"|"table", data)."""
    path = Path(args.file)
    if not path.is_file():
        raise UsageError(f"no such file: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        if args.dataset:
            raise UsageError("--dataset is for HDF5 files, not .npy")
        data = _load_npy(path)
    elif suffix in _HDF5_SUFFIXES:
        import h5py

        if not h5py.is_hdf5(path):
            raise UsageError(f"{path} is not an HDF5 file")
        if not args.dataset:
            return "file", path
        data = _load_dataset(path, args.dataset)
    else:
        raise UsageError(f"{path}: upload takes .npy or HDF5 ({', '.join(_HDF5_SUFFIXES)}) "
                         "files")
    return ("table" if data.dtype.names else "array"), data


async def _upload(session: BisqueSession, kind: str, data: Any, name: str,
                  tags: dict[str, str]) -> UploadResult:
    async with session:
        if kind == "file":
            return await upload_file(session, data, name + ".h5", tags=tags)
        if kind == "table":
            return await session.table.store_table(data, name, tags=tags)
        return await session.table.store_array(data, name, tags=tags)


def main(args: argparse.Namespace) -> int:
    """Run ``aiobisque upload`` with parsed ``args``; returns the exit status."""
    # ROOT as for info and download: optional with $BISQUE_ROOT, checked the same way
    root, rest = split_positionals(
        argparse.Namespace(root=args.root, uniq=args.file, path=None),
        "aiobisque upload [ROOT] FILE --name NAME", most=1)
    if len(rest) != 1:
        raise CommandError("upload needs FILE (a .npy or HDF5 file)")
    args.file = rest[0]
    name = check_name(args.name)
    tags = parse_tags(args.tags)
    # chosen here, so that an interrupted upload can still be looked for
    tags.setdefault("upload_id", secrets.token_hex(10))
    kind, data = _what(args)  # every check before anything is sent
    auth = resolve_auth(args, root)
    session = make_session(args, root, auth)
    try:
        result = run(_upload(session, kind, data, name, tags))
    except UploadUncertainError as exc:
        print(f"aiobisque upload: error: {exc}", file=sys.stderr)
        return EXIT_UNCERTAIN
    except KeyboardInterrupt:
        print(f"aiobisque upload: interrupted; {name}.h5 may or may not have been stored: "
              f"look for a resource with the tag upload_id={tags['upload_id']} before "
              f"uploading again (--tags upload_id={tags['upload_id']} keeps the same id)",
              file=sys.stderr)
        return EXIT_UNCERTAIN
    if args.json:
        print(json.dumps({
            "uniq": result.uniq, "uri": result.uri, "name": result.name,
            "type": result.resource_type, "upload_id": result.upload_id,
            "attempts": result.attempts, "bytes": result.bytes,
        }))
    else:
        print(result.uniq)
    return EXIT_OK
