"""Reliability under fault mixes: the exact array every time, at what cost in time and retries.

Runs aiobisque (default options, except a 1 s read timeout so stalls cost seconds, not the
default 30) against the embedded server with one fault mix per run, on a 24 MiB float32
array fetched in 1,500 requests of 16 KiB, and prints a table: chunk requests, HTTP
attempts, retries, faults the server injected, wall time against the fault-free run, and
whether the result's SHA-256 matches the file's.

Then the cases of issue #14, in a second table with the bytes fetched again:

* outages: every data request answered 503 for the first 2, 5 and 10 s, default options;
* a compressed-chunk bomb: a ~1 MB body whose gzip chunk inflates 1000x, refused (in a
  child process, so its peak RSS is its own);
* cut bodies: 20% of 1 MiB bodies cut mid-way, retried with only the missing rows;
* kill -9: ``aiobisque download`` to ``.npy`` killed at random points, then resumed.

    python benchmarks/reliability.py            # 7 mixes x 1,500 requests = 10,500 requests
    python benchmarks/reliability.py --write    # also update the table in benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import h5py

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiobisque import BisqueSession, DownloadStats
from aiobisque.server import FaultPlan, run_server, samples
from benchmarks.report import markdown_table, update_section

UNIQ, PATH = "00-reliability", "volume"
SHAPE = (1500, 64, 64)  # one 16 KiB plane per request
REQUEST_BYTES = 64 * 64 * 4
USER = ("bench", "bench-password")

MIXES: list[tuple[str, FaultPlan]] = [
    ("none (baseline)", FaultPlan()),
    ("20% bodies cut (length/chunked/close)",
     FaultPlan(seed=1, truncate_rate=0.2, truncate_framing="mixed")),
    ("10% connection resets mid-body", FaultPlan(seed=2, reset_rate=0.1)),
    ("30% 500/502/503/504", FaultPlan(seed=3, error_rate=0.3,
                                      error_statuses=(500, 502, 503, 504))),
    ("10% 429 with Retry-After: 0", FaultPlan(seed=4, throttle_rate=0.1, retry_after="0")),
    ("1% stalls (1 s read timeout)", FaultPlan(seed=5, stall_rate=0.01, stall_seconds=30)),
    ("all of the above, halved",
     FaultPlan(seed=6, truncate_rate=0.1, truncate_framing="mixed", reset_rate=0.05,
               error_rate=0.15, error_statuses=(500, 502, 503, 504), throttle_rate=0.05,
               retry_after="0", stall_rate=0.005, stall_seconds=30)),
]


def sha256_of_file(folder: Path) -> str:
    with h5py.File(samples.resource_file(folder, UNIQ), "r") as f:
        return hashlib.sha256(f[PATH][()].tobytes()).hexdigest()


async def run(folder: Path) -> list[list[str]]:
    want = sha256_of_file(folder)
    rows: list[list[str]] = []
    baseline = 0.0
    async with run_server(folder, users=dict([USER])) as srv:
        # warm-up (not recorded): file cache and first-touch costs would otherwise all land
        # on the baseline, the first row
        async with BisqueSession(srv.root, auth=USER) as bq:
            await bq.table.load_array(UNIQ, PATH, request_bytes=REQUEST_BYTES)
        for name, plan in MIXES:
            srv.faults = plan
            srv.stats.reset()
            stats = DownloadStats()
            started = time.perf_counter()
            async with BisqueSession(srv.root, auth=USER, read_timeout=1.0) as bq:
                got = await bq.table.load_array(UNIQ, PATH, request_bytes=REQUEST_BYTES,
                                                stats=stats)
            seconds = time.perf_counter() - started
            baseline = baseline or seconds
            match = hashlib.sha256(got.tobytes()).hexdigest() == want
            faults = sum(srv.stats.faults[k] for k in
                         ("error", "throttle", "reset", "truncate", "stall"))
            rows.append([name, f"{stats.requests:,}", f"{stats.attempts:,}",
                         f"{stats.retries:,}", f"{faults:,}", f"{seconds:.2f}",
                         f"{seconds / baseline:.2f}x", "yes" if match else "NO"])
            print(" | ".join(rows[-1]), flush=True)
    return rows


MiB_ = 1024 * 1024
KILL_SHAPE = (1024, 128, 128)  # float32: 64 MiB, in 1 MiB requests (64 requests)
KILL_UNIQ = "00-killed"


def _payload(range_text: str | None, shape: tuple[int, ...], itemsize: int = 4) -> int:
    """Payload bytes of a BisQue range (inclusive ``lo;hi`` per dimension)."""
    if not range_text:
        return 0
    n = 1
    parts = range_text.split(",")
    for part in parts:
        lo, _, hi = part.partition(";")
        n *= int(hi or lo) - int(lo) + 1
    for extent in shape[len(parts):]:
        n *= extent
    return n * itemsize


async def outage(folder: Path, want: str, seconds: float) -> list[str]:
    async with run_server(folder, users=dict([USER])) as srv:
        srv.faults = FaultPlan(error_rate=1.0, error_statuses=(503,))

        async def end() -> None:
            await asyncio.sleep(seconds)
            srv.faults = FaultPlan()

        ender = asyncio.ensure_future(end())
        stats = DownloadStats()
        started = time.perf_counter()
        async with BisqueSession(srv.root, auth=USER) as bq:  # default options
            try:
                got = await bq.table.load_array(UNIQ, PATH, request_bytes=MiB_, stats=stats)
                ok = hashlib.sha256(got.tobytes()).hexdigest() == want
                outcome = "bit-exact" if ok else "WRONG"
            except Exception as exc:  # reported in the table
                outcome = f"failed: {type(exc).__name__}"
        await ender
        wall = time.perf_counter() - started
        refetched = stats.bytes - stats.out_bytes
    return [f"{seconds:.0f} s of 503 at the start", f"{stats.attempts:,}", f"{stats.retries:,}",
            f"{srv.stats.statuses[503]:,}", f"{refetched / MiB_:.1f} MiB", f"{wall:.1f}",
            outcome]


BOMB_INFLATES = 1024 * MiB_  # the chunk inflates to 1 GiB


def _bomb_payload() -> bytes:
    """A (1024, 256) float32 image whose one gzip chunk inflates to 1 GiB (~1 MB body)."""
    import zlib

    import numpy as np

    from tests.hostile import hdf_image

    deflater = zlib.compressobj(9)
    zero = bytes(64 * MiB_)
    stream = b"".join(deflater.compress(zero) for _ in range(BOMB_INFLATES // len(zero)))
    stream += deflater.flush()

    def build(f: h5py.File) -> None:
        ds = f.create_dataset("array", shape=(1024, 256), dtype=np.float32, chunks=(1024, 256),
                              compression="gzip")
        ds.id.write_direct_chunk((0, 0), stream)

    return hdf_image(build=build)


def _bomb_child(path: Path) -> None:
    """Run in a child process: download the bomb in ``path``, print JSON (time, RSS)."""
    import json
    import resource

    from tests.hostile import body, hostile, info_json

    payload = path.read_bytes()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    async def go() -> tuple[float, str]:
        async with hostile() as h:
            h.info = info_json((1024, 256))
            h.data = body(payload)
            started = time.perf_counter()
            async with BisqueSession(h.root, auth=("alice", "x")) as bq:
                try:
                    await bq.table.load_array("00-bomb", "array")
                    outcome = "ACCEPTED"
                except Exception as exc:  # reported
                    outcome = f"refused: {type(exc).__name__}"
            return time.perf_counter() - started, outcome

    seconds, outcome = asyncio.run(go())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"body": len(payload), "inflates": BOMB_INFLATES, "seconds": seconds,
                      "rss_growth_kib": peak - base, "outcome": outcome}))


def bomb(folder: Path) -> list[str]:
    import json
    import subprocess

    path = folder / "bomb.h5"
    path.write_bytes(_bomb_payload())  # built here: the child's memory is the decode's own
    done = subprocess.run([sys.executable, __file__, "--bomb-child", str(path)],
                          capture_output=True, text=True, timeout=600, check=True,
                          cwd=Path(__file__).resolve().parents[1])
    r = json.loads(done.stdout.strip().splitlines()[-1])
    return [f"gzip bomb: {r['body'] / 1e6:.1f} MB body inflating to "
            f"{r['inflates'] / 2**30:.0f} GiB", "1", "0", "-",
            f"peak RSS +{r['rss_growth_kib'] / 1024:.0f} MiB", f"{r['seconds']:.2f}",
            r["outcome"]]


async def cut_bodies(folder: Path, want: str) -> list[str]:
    async with run_server(folder, users=dict([USER])) as srv:
        srv.faults = FaultPlan(seed=7, truncate_rate=0.2, truncate_framing="length")
        stats = DownloadStats()
        started = time.perf_counter()
        async with BisqueSession(srv.root, auth=USER, read_timeout=1.0) as bq:
            got = await bq.table.load_array(UNIQ, PATH, request_bytes=MiB_, stats=stats)
        wall = time.perf_counter() - started
        ok = hashlib.sha256(got.tobytes()).hexdigest() == want
        cuts = srv.stats.faults["truncate"]
        # a whole-request retry would have sent each cut request's full range again
        whole = sum(_payload(r.range, SHAPE) for r in srv.stats.data_log if r.fault)
    refetched = stats.bytes - stats.out_bytes
    return [f"20% of 1 MiB bodies cut ({cuts} cuts)", f"{stats.attempts:,}",
            f"{stats.retries:,}", f"{cuts}",
            f"{refetched / MiB_:.1f} MiB (whole-request retries: {whole / MiB_:.1f} MiB)",
            f"{wall:.1f}", "bit-exact" if ok else "WRONG"]


async def kill9(folder: Path, kills: int, seed: int) -> list[str]:
    import random
    import signal

    import numpy as np

    rng = random.Random(seed)
    out = folder / "killed.npy"
    env = {**os.environ, "BISQUE_PASSWORD": USER[1]}
    async with run_server(folder, users=dict([USER])) as srv:
        srv.faults = FaultPlan(total_bandwidth=32e6)  # 64 MiB in ~2 s: kills land mid-way
        argv = [sys.executable, "-m", "aiobisque", "download", srv.root, KILL_UNIQ, PATH,
                "-o", str(out), "--user", USER[0], "--no-progress"]
        started = time.perf_counter()
        per_kill = []
        for _ in range(kills):
            proc = await asyncio.create_subprocess_exec(*argv, env=env,
                                                        stdout=asyncio.subprocess.DEVNULL,
                                                        stderr=asyncio.subprocess.DEVNULL)
            before = srv.stats.bytes_sent
            for _ in range(3000):  # until data flows: the kill lands in the transfer
                if srv.stats.bytes_sent != before or proc.returncode is not None:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(rng.uniform(0.1, 1.0))
            if proc.returncode is None:
                proc.send_signal(signal.SIGKILL)
            await proc.wait()
            per_kill.append(srv.stats.bytes_sent - before)
        proc = await asyncio.create_subprocess_exec(*argv, env=env,
                                                    stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.DEVNULL)
        status = await proc.wait()
        wall = time.perf_counter() - started
        sent = srv.stats.bytes_sent  # body bytes the server wrote, metadata included
    total = math.prod(KILL_SHAPE) * 4
    requested = sent
    with h5py.File(samples.resource_file(folder, KILL_UNIQ), "r") as f:
        ok = status == 0 and np.load(out).tobytes() == f[PATH][()].tobytes()
    sent_before_kills = sum(per_kill)
    return [f"kill -9 x{kills} at random points in the transfer (sent before each: "
            f"{', '.join(f'{b / MiB_:.0f}' for b in per_kill)} MiB), then resume "
            f"(64 MiB .npy; {sent_before_kills / MiB_:.0f} MiB sent before the kills)",
            f"{len(srv.stats.data_log):,}", "-", f"{kills} kills",
            f"{(requested - total) / MiB_:.1f} MiB = {(requested - total) / total:.0%} "
            "of the array", f"{wall:.1f}", "bit-exact" if ok else "WRONG"]


async def issue_cases(folder: Path) -> list[list[str]]:
    want = sha256_of_file(folder)
    rows = []
    for seconds in (2.0, 5.0, 10.0):
        rows.append(await outage(folder, want, seconds))
        print(" | ".join(rows[-1]), flush=True)
    rows.append(bomb(folder))
    print(" | ".join(rows[-1]), flush=True)
    rows.append(await cut_bodies(folder, want))
    print(" | ".join(rows[-1]), flush=True)
    rows.append(await kill9(folder, kills=5, seed=14))
    print(" | ".join(rows[-1]), flush=True)
    return rows


def issue_table(rows: list[list[str]]) -> str:
    head = ["case", "HTTP attempts", "retries", "faults", "bytes fetched again", "wall s",
            "outcome"]
    return "\n".join([
        "### Issue #14 cases: outages, a decompression bomb, cut bodies, kill -9",
        "",
        "Default options (outages; kill -9 through the command line with `--request-mb 1`)",
        "on the same machine. *Bytes fetched again*: bytes received beyond the result's",
        "(HDF5 metadata included); for kill -9, body bytes the server sent across all runs",
        "beyond the array's.",
        "",
        *markdown_table(head, rows),
        "",
    ])


def table(rows: list[list[str]], command: str) -> str:
    total = sum(int(r[1].replace(",", "")) for r in rows)
    head = ["fault mix", "chunk requests", "HTTP attempts", "retries", "faults injected",
            "wall s", "vs fault-free", "checksum match"]
    lines = [
        "## Reliability under fault mixes",
        "",
        f"`{command}` on {platform.machine()} with {os.cpu_count()} cores "
        f"(client and server share them), Python {platform.python_version()}, loopback "
        f"(no emulated latency): a {SHAPE} float32 array (24 MiB) in 16 KiB requests, "
        f"default options except `read_timeout=1.0`; {total:,} chunk requests in all "
        "(after one unrecorded warm-up download).",
        "",
        *markdown_table(head, rows),
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true",
                        help="update the reliability table in benchmarks/RESULTS.md")
    parser.add_argument("--bomb-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--only-issue", action="store_true",
                        help="run only the issue #14 cases (not the fault mixes)")
    args = parser.parse_args()
    if args.bomb_child:
        _bomb_child(args.bomb_child)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        samples.write_array(folder, UNIQ, PATH, SHAPE, dtype="float32", seed=11)
        samples.write_array(folder, KILL_UNIQ, PATH, KILL_SHAPE, dtype="float32", seed=12)
        rows = [] if args.only_issue else asyncio.run(run(folder))
        cases = asyncio.run(issue_cases(folder))
    command = "python benchmarks/reliability.py" + (" --write" if args.write else "")
    text = (table(rows, command) if rows else "") + "\n" + issue_table(cases)
    print(text)
    if args.write:
        update_section(Path(__file__).with_name("RESULTS.md"), "reliability", text)
    good = all(r[-1] == "yes" for r in rows) and all(
        r[-1] in ("bit-exact",) or r[-1].startswith("refused") for r in cases)
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
