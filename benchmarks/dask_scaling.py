"""Dask throughput with 1, 2 and 4 worker processes reading one array from BisQue.

``python -m benchmarks.dask_scaling`` starts the embedded server as its own process
(``python -m aiobisque.server``) once per link, then for each worker count a
``dask.distributed.LocalCluster`` of worker processes (2 threads each) computes the sha1 of
every block of ``from_bisque(...)``: each block is downloaded by the worker that runs its
task, hashed there, and only the digests travel back. The digests are checked against the
file, so every run is bit-exact or reported as failed. A row "threads" runs the same graph
on dask's threaded scheduler in this process, without a cluster, for reference.

Timings are medians of ``--repeat`` runs after one warm-up run (which opens the workers'
sessions). Results are printed and written to ``benchmarks/DASK_RESULTS.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from aiobisque.config import MiB
from aiobisque.server import FaultPlan, samples
from benchmarks.scenarios import WAN, SampleArray, default_cache, prepare

RESULTS = Path(__file__).resolve().parent / "DASK_RESULTS.md"
#: the embedded server's default account (``python -m aiobisque.server`` without ``--user``),
#: so no credential is passed in argv
_AUTH = ("alice", "wonderland")
_THREADS_PER_WORKER = 2
_SERVER_START = 60.0
#: no dashboard; the scheduler's and workers' HTTP servers on loopback, any free port
#: (``dashboard_address=None`` still binds 0.0.0.0:8787, clashing with other clusters)
CLUSTER_HTTP: dict[str, Any] = {
    "dashboard_address": "127.0.0.1:0",
    "scheduler_kwargs": {"dashboard": False},
    "worker_dashboard_address": "127.0.0.1:0",
}


@dataclass(frozen=True)
class Link:
    """A link to the server: its name, size of the array read over it, its fault plan."""

    name: str
    mib: int
    faults: FaultPlan
    about: str


LINKS = (
    Link("WAN", 128, WAN, "100 ms per request, 16 MB/s per connection, 160 MB/s shared"),
    Link("Loopback", 256, FaultPlan(), "127.0.0.1, no caps"),
)


@dataclass
class Result:
    link: Link
    workers: str  # "1", "2", "4" or "threads"
    seconds: list[float]
    exact: bool

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def mb_per_s(self) -> float:
        return self.link.mib * MiB / self.median / 1e6


def _server_args(folder: Path, faults: FaultPlan) -> list[str]:
    args = [sys.executable, "-m", "aiobisque.server", str(folder), "--port", "0"]
    if faults.latency:
        args += ["--latency", str(faults.latency)]
    if faults.bandwidth:
        args += ["--bandwidth", str(faults.bandwidth)]
    if faults.total_bandwidth:
        args += ["--total-bandwidth", str(faults.total_bandwidth)]
    return args


@contextlib.contextmanager
def serve(folder: Path, faults: FaultPlan) -> Iterator[str]:
    """The embedded server in a process of its own (its own GIL); yields its root URL.

    After the line naming the URL, the server's output is drained by a thread, never left
    to fill the pipe and block the server.
    """
    with subprocess.Popen(_server_args(folder, faults), stdout=subprocess.PIPE,
                          text=True) as proc:
        assert proc.stdout is not None
        drain = threading.Thread(target=proc.stdout.read, name="server-stdout", daemon=True)
        try:
            root = _root_from(proc)
            drain.start()
            yield root
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if drain.is_alive():
                drain.join(timeout=10)  # EOF once the server is gone


def _root_from(proc: subprocess.Popen[str]) -> str:
    """The root URL in the server's ``serving http://HOST:PORT`` line."""
    assert proc.stdout is not None
    deadline = time.monotonic() + _SERVER_START
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the server exited with status {proc.wait()}")
        if match := re.search(r"serving (http://\S+)", line):
            return match.group(1).rstrip("/")
    raise RuntimeError("the server did not start in time")


def _sha1(block: np.ndarray[Any, Any]) -> str:
    return hashlib.sha1(np.ascontiguousarray(block).data, usedforsecurity=False).hexdigest()


def block_digests(x: Any) -> Any:
    """A dask graph computing the sha1 of every block of ``x`` where it is read."""
    import dask

    # impure: fresh keys every run, so no run reuses a result still held by the cluster
    return [dask.delayed(_sha1, pure=False)(b) for b in x.to_delayed().ravel()]


def expected_digests(folder: Path, sample: SampleArray, chunks: Sequence[Sequence[int]]) -> list[str]:
    """The sha1 of each block, read from the sample file."""
    if any(len(c) != 1 for c in chunks[1:]):
        raise SystemExit(f"--chunks must give blocks of whole planes here, got {chunks}")
    file = samples.resource_file(folder, sample.uniq)
    out = []
    with h5py.File(file, "r") as h5:
        ds = h5[sample.path]
        start = 0
        for rows in chunks[0]:
            out.append(_sha1(ds[start:start + rows].astype(ds.dtype.newbyteorder("="))))
            start += rows
    return out


def measure(workers: str, root: str, sample: SampleArray, want: list[str], chunks: str,
            repeat: int) -> tuple[list[float], bool]:
    import dask
    from distributed import Client, LocalCluster

    from aiobisque.dask import close_sessions, from_bisque

    seconds: list[float] = []
    exact = True
    with contextlib.ExitStack() as stack:
        if workers == "threads":
            stack.enter_context(dask.config.set(scheduler="threads",
                                                num_workers=_THREADS_PER_WORKER))
            client = None
        else:
            cluster = stack.enter_context(LocalCluster(
                n_workers=int(workers), threads_per_worker=_THREADS_PER_WORKER,
                processes=True, **CLUSTER_HTTP))
            client = stack.enter_context(Client(cluster))
        for run in range(repeat + 1):
            # a new array name each run (name=False): no block is served from memory
            x = from_bisque(root, sample.uniq, sample.path, auth=_AUTH, chunks=chunks,
                            name=False)
            graph = block_digests(x)
            start = time.perf_counter()
            got = dask.compute(*graph) if client is None else client.gather(client.compute(graph))
            elapsed = time.perf_counter() - start
            exact = exact and list(got) == want
            if run:  # the first run opens the sessions: a warm-up
                seconds.append(elapsed)
    close_sessions()
    return seconds, exact


def _machine() -> str:
    cpus = os.cpu_count()
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{cpus} CPUs ({model}), Python {platform.python_version()}, {platform.system()}"


def report(results: list[Result], command: str, chunks: str, repeat: int,
           load: tuple[tuple[float, ...], tuple[float, ...]]) -> str:
    import dask
    import distributed

    before, after = (" / ".join(f"{v:.1f}" for v in avg) for avg in load)

    lines = [
        "# Dask scaling: worker processes reading one array",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {_machine()}; dask {dask.__version__}, distributed "
        f"{distributed.__version__}. The server (`python -m aiobisque.server`, its own "
        "process), the scheduler and client (this process) and the workers share these CPUs, "
        "and so do other users of the machine: load average (1/5/15 min) "
        f"{before} at the start, {after} at the end.",
        "",
        f"Each run computes the sha1 of every block of `from_bisque(..., chunks={chunks!r})` "
        f"(float32 volumes of 256 x 256 planes; blocks of whole planes), on a "
        f"`LocalCluster` of N worker processes with {_THREADS_PER_WORKER} threads each, "
        "aiobisque's default options (16 requests in flight per worker process, 4 MiB "
        "requests). Only digests travel back; they are checked against the file. "
        f"Median of {repeat} runs after one warm-up run (which opens the workers' sessions). "
        f"\"threads\" is dask's threaded scheduler in one process ({_THREADS_PER_WORKER} "
        "threads), no cluster.",
        "",
        "| link | array | workers | seconds (median) | MB/s | runs | bit-exact |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        runs = ", ".join(f"{s:.2f}" for s in r.seconds)
        lines.append(f"| {r.link.name} ({r.link.about}) | {r.link.mib} MiB | {r.workers} | "
                     f"{r.median:.2f} | {r.mb_per_s:.0f} | {runs} | "
                     f"{'yes' if r.exact else 'NO'} |")
    lines += [
        "",
        "What bounds it:",
        "",
        "- WAN: a worker process keeps at most `threads x requests per block` requests in "
        "flight (here 2 x 4, below its session's limit of 16), each capped at 16 MB/s and "
        "paying 100 ms first, so one process cannot fill the link; more processes add "
        "requests in flight until the link's shared 160 MB/s cap. More threads per worker "
        "or bigger blocks would do the same inside one process: the session's limiter still "
        "keeps each process at 16 requests at most.",
        "- Loopback: the CPUs. Two cores run the server (building HDF5 images, sending), the "
        "scheduler and client, and the workers (receiving, decoding, hashing); extra worker "
        "processes only share them, and the cluster rows also pay for the scheduler and each "
        "worker's own event loop. The numbers move with the machine's load.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dask_scaling",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2,4",
                        help="worker process counts, comma-separated (default 1,2,4)")
    parser.add_argument("--chunks", default="16 MiB", help="dask block size (default 16 MiB)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per row (default 3)")
    parser.add_argument("--link", action="append", default=[], choices=[k.name for k in LINKS],
                        help="only this link (repeatable)")
    parser.add_argument("--mib", type=int, default=None,
                        help="array size in MiB for every link (default: 128 WAN, 256 loopback)")
    parser.add_argument("--no-threads", action="store_true",
                        help="skip the threaded-scheduler reference row")
    parser.add_argument("--cache-dir", type=Path, default=default_cache())
    parser.add_argument("--output", type=Path, default=RESULTS,
                        help=f"Markdown file to write (default {RESULTS}); '-' for none")
    args = parser.parse_args(argv)
    counts = ["threads"] * (not args.no_threads) + args.workers.split(",")
    links = [k for k in LINKS if not args.link or k.name in args.link]
    results: list[Result] = []
    load_before = os.getloadavg()
    for link in links:
        if args.mib:
            link = Link(link.name, args.mib, link.faults, link.about)
        sample = prepare(args.cache_dir, link.mib * MiB)
        with serve(args.cache_dir, link.faults) as root:
            from aiobisque.dask import close_sessions, from_bisque

            chunks = from_bisque(root, sample.uniq, sample.path, auth=_AUTH,
                                 chunks=args.chunks).chunks
            close_sessions()
            want = expected_digests(args.cache_dir, sample, chunks)
            for workers in counts:
                seconds, exact = measure(workers, root, sample, want, args.chunks, args.repeat)
                result = Result(link, workers, seconds, exact)
                results.append(result)
                print(f"{link.name:9} {link.mib:5} MiB  workers={workers:8} "
                      f"{result.median:6.2f} s  {result.mb_per_s:7.0f} MB/s  "
                      f"exact={exact}", flush=True)
    command = "python -m benchmarks.dask_scaling " + shlex.join(argv or sys.argv[1:])
    text = report(results, command.strip(), args.chunks, args.repeat,
                  (load_before, os.getloadavg()))
    if str(args.output) != "-":
        args.output.write_text(text)
        print(f"wrote {args.output}")
    return 0 if all(r.exact for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
