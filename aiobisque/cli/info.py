"""``aiobisque info``: an array's shape, dtype and size, or the tree of a group."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from aiobisque.cli.credentials import make_session, resolve_auth
from aiobisque.cli.display import size_text
from aiobisque.cli.exits import EXIT_OK, CommandError
from aiobisque.cli.options import ROOT_ENV
from aiobisque.cli.roots import split_positionals
from aiobisque.cli.running import run
from aiobisque.errors import clean_text
from aiobisque.protocol import ArrayInfo, split_path
from aiobisque.session import BisqueSession

__all__ = ["add_arguments", "main"]

#: Most nodes listed by ``info`` on a group (each costs one request).
_TREE_LIMIT = 500


def add_arguments(info: argparse.ArgumentParser) -> None:
    """The arguments of ``aiobisque info`` (besides the shared connection options)."""
    info.add_argument("root", nargs="?", metavar="ROOT",
                      help=f"server root URL (default ${ROOT_ENV})")
    info.add_argument("uniq", nargs="?", metavar="UNIQ",
                      help="resource uniq, data_service URL or viewer URL")
    info.add_argument("path", nargs="?", metavar="PATH", help="HDF path (default: the root)")
    info.add_argument("--json", action="store_true", help="print JSON")


def _print(text: str) -> None:
    """Print what a server described: names and meta may carry terminal escapes."""
    print(clean_text(text))


async def _info(args: argparse.Namespace, session: BisqueSession, uniq: str, path: str) -> int:
    async with session as bq:
        info = await bq.table.info(uniq, path)
        if info.kind == "group":
            tree = await _tree(bq, info)
            if args.json:
                print(json.dumps(tree, indent=2, default=str))  # ASCII: controls as \u escapes
            else:
                _print(f"{info.uniq}/{info.path} (group)")
                for line in _tree_lines(tree["children"], ""):
                    _print(line)
                if tree.get("truncated"):
                    _print(f"(only the first {_TREE_LIMIT} nodes are shown)")
        elif args.json:
            print(json.dumps(_node(info), indent=2, default=str))
        else:
            for line in _describe(info):
                _print(line)
    return EXIT_OK


#: what the listing says of nodes whose data BisQue's table service cannot serve
_UNSERVABLE = "BisQue's table service cannot serve its data"


def _node(info: ArrayInfo) -> dict[str, Any]:
    node: dict[str, Any] = {"path": "/" + "/".join(split_path(info.path)), "kind": info.kind}
    if info.kind == "table" and info.shape is not None:
        # text columns have no width until read: no byte size, the PyTables types instead
        node.update(shape=list(info.shape), rows=info.shape[0], columns=dict(info.columns))
    elif info.shape is not None and info.dtype is not None:
        node.update(shape=list(info.shape), dtype=str(info.dtype), size=info.size,
                    nbytes=info.nbytes)
        if not info.shape:
            node["note"] = f"a 0-d scalar: {_UNSERVABLE}"
    elif info.kind == "unsupported":
        node["note"] = f"type (unknown), e.g. variable-length strings: {_UNSERVABLE}"
    if info.meta:
        node["meta"] = dict(info.meta)
    return node


def _describe(info: ArrayInfo) -> list[str]:
    lines = [f"{info.uniq}/{info.path}", f"  kind:  {info.kind}"]
    if info.kind == "unsupported":
        lines.append(f"  note:  type (unknown), e.g. variable-length strings: {_UNSERVABLE}")
    elif info.kind == "table":
        columns = ", ".join(f"{n} {t}" for n, t in info.columns.items())
        lines += [f"  rows:  {info.size:,}", f"  columns: {columns}"]
    else:
        lines += [f"  shape: {info.shape}", f"  dtype: {info.dtype}",
                  f"  size:  {info.size:,} elements, {size_text(info.nbytes)}"]
        if not info.shape:
            lines.append(f"  note:  a 0-d scalar: {_UNSERVABLE}")
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
            branch = f"{indent}{'└── ' if last else '├── '}{name}  "
            if node["kind"] == "table":
                columns = ", ".join(f"{n} {t}" for n, t in node["columns"].items())
                lines.append(f"{branch}table of {node['rows']:,} rows: {columns}")
            elif node["kind"] == "unsupported":
                lines.append(f"{branch}(unknown type: {_UNSERVABLE})")
            else:
                note = " (a scalar: not servable)" if not node["shape"] else ""
                lines.append(f"{branch}{tuple(node['shape'])} {node['dtype']}, "
                             f"{size_text(node['nbytes'])}{note}")
    return lines


def main(args: argparse.Namespace) -> int:
    root, rest = split_positionals(args, "aiobisque info [ROOT] UNIQ [PATH]")
    if not 1 <= len(rest) <= 2:
        raise CommandError("info needs UNIQ and optionally PATH")
    session = make_session(args, root, resolve_auth(args, root))
    return run(_info(args, session, rest[0], rest[1] if len(rest) > 1 else ""))
