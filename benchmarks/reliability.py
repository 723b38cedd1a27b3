"""Reliability under fault mixes: the exact array every time, at what cost in time and retries.

Runs aiobisque (default options, except a 1 s read timeout so stalls cost seconds, not the
default 30) against the embedded server with one fault mix per run, on a 24 MiB float32
array fetched in 1,500 requests of 16 KiB, and prints a table: chunk requests, HTTP
attempts, retries, faults the server injected, wall time against the fault-free run, and
whether the result's SHA-256 matches the file's.

    python benchmarks/reliability.py            # 7 mixes x 1,500 requests = 10,500 requests
    python benchmarks/reliability.py --write    # also update the table in benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
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

UNIQ, PATH = "00-reliability", "volume"
SHAPE = (1500, 64, 64)  # one 16 KiB plane per request
REQUEST_BYTES = 64 * 64 * 4
USER = ("bench", "bench-password")
START, END = "<!-- reliability:start -->", "<!-- reliability:end -->"

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
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
    ]
    return "\n".join(lines)


def write_section(text: str, results: Path, start: str = START, end: str = END) -> None:
    """Replace the ``start``..``end`` section of ``results`` (append it when absent)."""
    old = results.read_text() if results.exists() else "# Benchmark results\n"
    section = f"{start}\n{text}\n{end}"
    if start in old and end in old:
        new = old.split(start)[0] + section + old.split(end, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + section + "\n"
    results.write_text(new)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true",
                        help="update the reliability table in benchmarks/RESULTS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        samples.write_array(folder, UNIQ, PATH, SHAPE, dtype="float32", seed=11)
        rows = asyncio.run(run(folder))
    text = table(rows, "python benchmarks/reliability.py" + (" --write" if args.write else ""))
    print(text)
    if args.write:
        write_section(text, Path(__file__).with_name("RESULTS.md"))
    return 0 if all(r[-1] == "yes" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
