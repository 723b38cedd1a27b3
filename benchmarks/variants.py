"""Where aiobisque's client CPU goes: the same download with parts of the core swapped out.

``python -m benchmarks.variants [--size-mib 256] [--wan] [--repeat 9]`` serves a cached
sample with ``python -m aiobisque.server`` (another process, so only the client is measured
here) and downloads it in this process, interleaving these variants:

* ``as-is``: ``table.load_array`` unchanged;
* ``out= reused``: the same into one preallocated, already-touched ``out=`` array (what is
  left when the result's page faults are taken away);
* ``pooled bodies``: response bodies read into buffers reused across requests instead of a
  fresh ``bytearray`` per response (the change recommended in ``RESULTS.md``), with and
  without ``out=``;
* ``no decode``: bodies read but never decoded (no copy into the result);
* ``no body copy, no decode``: pieces counted and dropped, like the raw sink.

It replaces private functions of ``aiobisque.fetch`` and ``aiobisque.download`` for the
duration of each variant: an experiment to price a change before making it, not an API.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import numpy as np

import aiobisque.download as download
import aiobisque.fetch as fetch
from aiobisque import BisqueSession
from aiobisque.config import MiB
from aiobisque.decode import decode_into as _REAL_DECODE
from benchmarks.measure import Measured, measure
from benchmarks.scenarios import default_cache, prepare

_REAL_READ = fetch._read_body
_USER = ("bench", "bench-password")


class _BodyPool:
    """Body buffers by length, reused across requests (thread-safe enough: list ops are
    atomic under the GIL, and a buffer is only ever held by one request)."""

    def __init__(self) -> None:
        self.free: dict[int, list[bytearray]] = {}

    async def read(self, resp: Any, max_body: int, on_bytes: Any, what: str, url: str) -> Any:
        length = resp.content_length
        if on_bytes is None or length is None:  # documents: the real reader
            return await _REAL_READ(resp, max_body, on_bytes, what, url)
        spare = self.free.setdefault(length, [])
        buf = spare.pop() if spare else bytearray(length)
        view, pos = memoryview(buf), 0
        while pos < length:
            piece = await resp.content.readany()
            if not piece:
                break
            view[pos : pos + len(piece)] = piece
            pos += len(piece)
            on_bytes(len(piece))
        return buf

    def decode(self, body: Any, **kwargs: Any) -> None:
        _REAL_DECODE(body, **kwargs)
        self.free.setdefault(len(body), []).append(body)


async def _count_and_drop(resp: Any, max_body: int, on_bytes: Any, what: str, url: str) -> Any:
    if on_bytes is None:
        return await _REAL_READ(resp, max_body, on_bytes, what, url)
    async for piece in resp.content.iter_any():
        on_bytes(len(piece))
    return bytearray()


def _no_decode(body: Any, **kwargs: Any) -> None:
    return None


@contextlib.contextmanager
def _swapped(read: Callable[..., Any], decode: Callable[..., None]) -> Iterator[None]:
    with mock.patch.object(fetch, "_read_body", read), \
            mock.patch.object(download, "decode_into", decode):
        yield


async def _run(root: str, uniq: str, path: str, shape: tuple[int, ...], repeat: int
               ) -> dict[str, list[Measured]]:
    pool = _BodyPool()
    variants: dict[str, tuple[Callable[..., Any], Callable[..., None], bool]] = {
        "as-is": (_REAL_READ, _REAL_DECODE, False),
        "out= reused": (_REAL_READ, _REAL_DECODE, True),
        "pooled bodies": (pool.read, pool.decode, False),
        "pooled bodies, out= reused": (pool.read, pool.decode, True),
        "no decode": (_REAL_READ, _no_decode, False),
        "no body copy, no decode": (_count_and_drop, _no_decode, False),
    }
    results: dict[str, list[Measured]] = {name: [] for name in variants}
    async with BisqueSession(root, auth=_USER) as bq:
        table = bq.service("table")
        out = np.ones(shape, dtype=np.float32)
        for _ in range(repeat):
            for name, (read, decode, reuse) in variants.items():
                with _swapped(read, decode), measure() as m:
                    result = await table.load_array(uniq, path, out=out if reuse else None)
                del result
                results[name].append(m)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.variants", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--wan", action="store_true",
                        help="100 ms, 16 MB/s per connection, 160 MB/s shared")
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args(argv)
    sample = prepare(default_cache(), args.size_mib * MiB)
    link = ["--latency", "0.1", "--bandwidth", "16MB", "--total-bandwidth", "160MB"]
    server = subprocess.Popen(
        [sys.executable, "-m", "aiobisque.server", str(default_cache()), "--port", "0",
         "--user", ":".join(_USER), *(link if args.wan else [])],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ),
    )
    try:
        assert server.stdout is not None
        root = server.stdout.readline().split()[-1]
        results = asyncio.run(_run(root, sample.uniq, sample.path, sample.shape, args.repeat))
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"{args.size_mib} MiB, {'WAN' if args.wan else 'loopback'}, medians of {args.repeat}:")
    for name, runs in results.items():
        seconds = statistics.median(m.seconds for m in runs)
        cpu = statistics.median(m.cpu_seconds for m in runs)
        faults = statistics.median(m.page_faults for m in runs)
        print(f"  {name:28} {seconds:6.3f} s  cpu {cpu:6.3f} s  "
              f"({cpu / (args.size_mib / 1024):5.2f} s/GiB)  {faults:8.0f} page faults")
    return 0


if __name__ == "__main__":
    sys.exit(main())
