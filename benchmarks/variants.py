"""The client's CPU per GiB: aiobisque against plain aiohttp doing the same work, per loop.

``python -m benchmarks.variants [--size-mib 256,1024] [--loop asyncio,uvloop] [--wan]
[--repeat 5] [--entrant NAME] [--profile FILE]`` serves cached sample volumes with ``python
-m aiobisque.server`` (another process, so only the client is measured here) and downloads
each in this process, interleaving the entrants and loops within every repeat:

* ``aiobisque``: ``table.load_array(out=...)`` into one preallocated, already-touched
  float32 array (no page faults in the figure), default ``Config``;
* ``aiobisque-fresh``: ``table.load_array`` as users call it, a new result each time;
* ``raw-copy``: the requests aiobisque plans (``make_plan`` + ``RemoteArray.url_for``)
  fetched with plain aiohttp at the same concurrency, every body piece (``iter_any``)
  copied into a preallocated, already-touched uint8 buffer: the same network reads and
  the same single copy aiobisque does, with nothing else;
* ``raw-copy-timeouts``: ``raw-copy`` with aiobisque's ``sock_read`` timeout, which makes
  aiohttp reschedule a timer on every network read (what of aiobisque's cost is that);
* ``raw-sink``: the same requests, bodies counted and dropped.

CPU is ``time.process_time()`` (user + system, every thread of this process) over the
download alone; sessions, logins, plans and buffers are made before the clock starts.
``--profile FILE`` runs the first entrant once more under cProfile and writes the stats.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import cProfile
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aiobisque import BisqueSession, Config
from aiobisque.config import MiB
from aiobisque.plan import make_plan
from aiobisque.selection import normalize_selection
from benchmarks.measure import Measured, measure
from benchmarks.scenarios import SampleArray, default_cache, prepare

_USER = ("bench", "bench-password")
_HEADROOM = 64 * 1024  # room for an HDF5 image's metadata around its payload, per request
ENTRANTS = ("aiobisque", "aiobisque-fresh", "raw-copy-timeouts", "raw-copy", "raw-sink")


@dataclass
class Run:
    """One download: :class:`~benchmarks.measure.Measured` plus user/system CPU apart."""

    measured: Measured = field(default_factory=Measured)
    user: float = 0.0
    system: float = 0.0
    main_thread: float = 0.0  # CPU of the event loop's thread alone

    @property
    def cpu(self) -> float:
        return self.measured.cpu_seconds


@contextlib.contextmanager
def _measure() -> Iterator[Run]:
    run = Run()
    with measure() as m:
        before = resource.getrusage(resource.RUSAGE_SELF)
        thread0 = time.thread_time()
        yield run
        run.main_thread = time.thread_time() - thread0
        after = resource.getrusage(resource.RUSAGE_SELF)
    run.measured = m
    run.user = after.ru_utime - before.ru_utime
    run.system = after.ru_stime - before.ru_stime


def _loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


class _Bench:
    """Buffers kept across runs (touched once), and the server's address."""

    def __init__(self, root: str, options: dict[str, Any] | None = None):
        self.root = root
        self.options = options or {}  # Config overrides, for both aiobisque and raw-*
        self.outs: dict[str, np.ndarray[Any, Any]] = {}
        self.raw_bufs: dict[str, np.ndarray[Any, Any]] = {}

    def out_for(self, sample: SampleArray) -> np.ndarray[Any, Any]:
        if sample.uniq not in self.outs:
            self.outs[sample.uniq] = np.ones(sample.shape, dtype=sample.dtype)
        return self.outs[sample.uniq]

    async def aiobisque(self, sample: SampleArray, fresh: bool) -> Run:
        out = None if fresh else self.out_for(sample)
        async with BisqueSession(self.root, auth=_USER) as bq:
            with _measure() as m:
                result = await bq.table.load_array(sample.uniq, sample.path, out=out,
                                                   **self.options)
            assert result.shape == sample.shape
            del result
        return m

    async def raw(self, sample: SampleArray, copy: bool, timeouts: bool = False) -> Run:
        import aiohttp

        cfg = Config().replace(**self.options)
        async with BisqueSession(self.root, auth=_USER) as bq:
            remote = await bq.table.open(sample.uniq, sample.path)
            plan = make_plan(normalize_selection(..., remote.shape), remote.dtype.itemsize,
                             cfg.request_bytes)
            urls = [remote.url_for(request) for request in plan]
            sizes = [request.nbytes + _HEADROOM for request in plan]
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        if sample.uniq not in self.raw_bufs:
            self.raw_bufs[sample.uniq] = np.ones(sum(sizes), dtype=np.uint8)
        view = memoryview(self.raw_bufs[sample.uniq]).cast("B")
        pending = iter(zip(urls, starts, strict=True))
        token = base64.b64encode(":".join(_USER).encode()).decode()
        headers = {"Accept-Encoding": "identity", "Authorization": f"Basic {token}"}
        # aiobisque's per-read timeout: aiohttp reschedules a timer on every network read
        options: dict[str, Any] = {"timeout": aiohttp.ClientTimeout(
            total=None, sock_connect=cfg.connect_timeout, sock_read=cfg.read_timeout,
        )} if timeouts else {}
        received = 0

        async def worker(http: aiohttp.ClientSession) -> None:
            nonlocal received
            for url, at in pending:  # shared iterator, like aiobisque's workers
                async with http.get(url, headers=headers, **options) as resp:
                    resp.raise_for_status()
                    pos = at
                    async for piece in resp.content.iter_any():
                        if copy:
                            view[pos : pos + len(piece)] = piece
                        pos += len(piece)
                    if pos - at != resp.content_length:
                        raise RuntimeError(f"{url}: body cut short")
                    received += pos - at

        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            with _measure() as m:
                await asyncio.gather(*(worker(http) for _ in range(min(cfg.concurrency,
                                                                       len(urls)))))
        assert received >= sample.nbytes
        return m

    def entrant(self, name: str, sample: SampleArray) -> Awaitable[Run]:
        if name == "aiobisque":
            return self.aiobisque(sample, fresh=False)
        if name == "aiobisque-fresh":
            return self.aiobisque(sample, fresh=True)
        if name == "raw-copy":
            return self.raw(sample, copy=True)
        if name == "raw-copy-timeouts":
            return self.raw(sample, copy=True, timeouts=True)
        if name == "raw-sink":
            return self.raw(sample, copy=False)
        raise ValueError(f"unknown entrant {name!r}; known: {', '.join(ENTRANTS)}")


def _run_one(bench: _Bench, name: str, sample: SampleArray, loop: str) -> Run:
    with asyncio.Runner(loop_factory=_loop_factory(loop)) as runner:
        return runner.run(bench.entrant(name, sample))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.variants", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", default="256,1024",
                        help="comma-separated sizes (default 256,1024)")
    parser.add_argument("--loop", default="asyncio,uvloop",
                        help="comma-separated event loops (default asyncio,uvloop)")
    parser.add_argument("--entrant", action="append", choices=ENTRANTS,
                        help="repeatable (default aiobisque, raw-copy)")
    parser.add_argument("--wan", action="store_true",
                        help="100 ms, 16 MB/s per connection, 160 MB/s shared")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--request-mib", type=float,
                        help="request_bytes for both (default Config's): prices per-request work")
    parser.add_argument("--profile", metavar="FILE",
                        help="then profile the first entrant (first size and loop) once")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.size_mib.split(",")]
    loops = args.loop.split(",")
    entrants = args.entrant or ["aiobisque", "raw-copy"]
    samples = [prepare(default_cache(), size * MiB) for size in sizes]
    link = ["--latency", "0.1", "--bandwidth", "16MB", "--total-bandwidth", "160MB"]
    server = subprocess.Popen(
        [sys.executable, "-m", "aiobisque.server", str(default_cache()), "--port", "0",
         "--user", ":".join(_USER), *(link if args.wan else [])],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ),
    )
    results: dict[tuple[int, str, str], list[Run]] = {}
    try:
        assert server.stdout is not None
        options = {"request_bytes": int(args.request_mib * MiB)} if args.request_mib else {}
        bench = _Bench(server.stdout.readline().split()[-1], options)
        for r in range(args.repeat):
            for size, sample in zip(sizes, samples, strict=True):
                order = [(loop, name) for loop in loops for name in entrants]
                shift = r % len(order)  # rotate who goes first from one repeat to the next
                for loop, name in order[shift:] + order[:shift]:
                    m = _run_one(bench, name, sample, loop)
                    results.setdefault((size, loop, name), []).append(m)
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            _run_one(bench, entrants[0], samples[0], loops[0])
            profiler.disable()
            profiler.dump_stats(args.profile)
    finally:
        server.terminate()
        server.wait(timeout=30)
    link_name = "WAN" if args.wan else "loopback"
    print(f"{link_name}, medians of {args.repeat} (CPU = user+sys of this process, "
          "download only):")
    for size in sizes:
        for loop in loops:
            ref = results[(size, loop, entrants[-1])]
            for name in entrants:
                runs = results[(size, loop, name)]
                gib = size / 1024
                seconds = statistics.median(m.measured.seconds for m in runs)
                cpu = statistics.median(m.cpu / gib for m in runs)
                user = statistics.median(m.user / gib for m in runs)
                system = statistics.median(m.system / gib for m in runs)
                faults = statistics.median(m.measured.page_faults / gib for m in runs)
                main = statistics.median(m.main_thread / gib for m in runs)
                spread = ", ".join(f"{m.cpu / gib:.2f}" for m in runs)
                # paired within each repeat (neighbours in time share the machine's load)
                ratio = statistics.median(m.cpu / b.cpu for m, b in zip(runs, ref, strict=True))
                print(f"  {size:5} MiB {loop:8} {name:16} wall {seconds:6.3f} s  "
                      f"cpu {cpu:5.2f} s/GiB (user {user:4.2f} sys {system:4.2f}, loop thread "
                      f"{main:4.2f}, "
                      f"{faults:6.0f} faults/GiB)  {ratio:4.2f}x {entrants[-1]}  [{spread}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
