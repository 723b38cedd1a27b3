"""``aiobisque demo``: the main job end to end on the embedded server, no network needed.

It prepares a sample folder in a cache directory (the seed's DREAM3D-like file and a 3-D
float32 volume), serves it with an emulated WAN link, downloads both with aiobisque and the
volume once more the way ``bqapi`` does (a single request), checks every result bit-exact
against the files and prints a table. The exit status is non-zero if anything differs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from aiobisque.cli.display import size_text
from aiobisque.config import MiB
from aiobisque.progress import DownloadStats
from aiobisque.session import BisqueSession

__all__ = ["add_arguments", "main"]

VOLUME_UNIQ = "00-demoVolumeFloat32"
VOLUME_PATH = "volume"
_USER = ("demo", "demo-password")


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "aiobisque" / "demo"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size-mb", type=int, default=256,
                        help="size of the sample volume in MiB (default 256)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help=f"where the sample files live (default {default_cache()})")
    parser.add_argument("--latency", type=float, default=0.05,
                        help="emulated latency per request, seconds (default 0.05)")
    parser.add_argument("--bandwidth-mb", type=float, default=16.0,
                        help="emulated bandwidth per connection, MB/s (default 16)")
    parser.add_argument("--total-bandwidth-mb", type=float, default=160.0,
                        help="emulated bandwidth shared by all connections, MB/s (default 160)")
    parser.add_argument("--error-rate", type=float, default=0.0,
                        help="fraction of data requests answered 503 (default 0)")
    parser.add_argument("--skip-single", action="store_true",
                        help="skip the slow single-request (bqapi-style) download")


def _volume_shape(size_mb: int) -> tuple[int, int, int]:
    plane = 256 * 256 * 4
    return (max(1, size_mb * MiB // plane), 256, 256)


def prepare(folder: Path, size_mb: int) -> None:
    """Write the sample files unless an identical set is already cached."""
    from aiobisque.server import samples

    folder.mkdir(parents=True, exist_ok=True)
    seed = samples.resource_file(folder, samples.SEED_UNIQ, ".dream3d")
    if not seed.exists():
        samples.write_seed(folder)
    shape = _volume_shape(size_mb)
    volume = samples.resource_file(folder, VOLUME_UNIQ)
    if volume.exists():
        try:
            with h5py.File(volume, "r") as f:
                node = f.get(VOLUME_PATH)
                if isinstance(node, h5py.Dataset) and node.shape == shape:
                    return
        except OSError:
            pass
        volume.unlink()
    print(f"writing a {size_mb} MiB sample volume to {volume} ...", flush=True)
    samples.write_array(folder, VOLUME_UNIQ, VOLUME_PATH, shape, dtype="float32", seed=7)


@dataclass
class _Row:
    name: str
    stats: DownloadStats
    exact: bool


def _expected(file: Path, path: str) -> np.ndarray[Any, Any]:
    with h5py.File(file, "r") as f:
        data: np.ndarray[Any, Any] = f[path][()]
    return data


async def _run(args: argparse.Namespace, folder: Path) -> list[_Row]:
    from aiobisque.server import FaultPlan, run_server, samples

    faults = FaultPlan(
        latency=args.latency,
        bandwidth=args.bandwidth_mb * 1e6 if args.bandwidth_mb > 0 else None,
        total_bandwidth=args.total_bandwidth_mb * 1e6 if args.total_bandwidth_mb > 0 else None,
        error_rate=args.error_rate,
        seed=1,
    )
    rows: list[_Row] = []
    async with run_server(folder, users=dict([_USER]), faults=faults) as srv:
        print(f"embedded BisQue server at {srv.root} (the link's limits are under the "
              "table)", flush=True)
        async with BisqueSession(srv.root, auth=_USER) as bq:
            table = bq.service("table")
            seed_file = samples.resource_file(folder, samples.SEED_UNIQ, ".dream3d")
            stats = DownloadStats()
            ms = await table.load_array(samples.SEED_UNIQ, samples.SEED_PATH, stats=stats)
            exact = ms.shape == (5, 5, 5, 1) and np.array_equal(
                ms, _expected(seed_file, samples.SEED_PATH))
            rows.append(_Row(f"seed Phases {ms.shape}", stats, exact))

            volume_file = samples.resource_file(folder, VOLUME_UNIQ)
            want = _expected(volume_file, VOLUME_PATH)
            stats = DownloadStats()
            got = await table.load_array(VOLUME_UNIQ, VOLUME_PATH, stats=stats)
            rows.append(_Row("volume, aiobisque", stats, got.tobytes() == want.tobytes()))
            del got
            if not args.skip_single:
                stats = DownloadStats()
                # what bqapi does: the whole selection in one request, no concurrency
                got = await table.load_array(
                    VOLUME_UNIQ, VOLUME_PATH, stats=stats, concurrency=1,
                    request_bytes=max(1, want.nbytes))
                rows.append(_Row("volume, one request (bqapi-style)", stats,
                                 got.tobytes() == want.tobytes()))
    return rows


def _print_table(rows: list[_Row], args: argparse.Namespace) -> None:
    """The results, in one set of units (binary: KiB, MiB), with the link's limits beside
    them, so that what caps each row can be read off the table."""
    single = next((r for r in rows if "one request" in r.name), None)
    ours = next((r for r in rows if r.name == "volume, aiobisque"), None)
    header = f"{'download':36} {'size':>10} {'seconds':>8} {'rate':>12} {'requests':>8} " \
             f"{'retries':>7} {'exact':>5}"
    print(header)
    print("-" * len(header))
    for r in rows:
        s = r.stats
        print(f"{r.name:36} {size_text(s.out_bytes):>10} {s.seconds:8.2f} "
              f"{size_text(s.throughput) + '/s':>12} {s.requests:8d} {s.retries:7d} "
              f"{'yes' if r.exact else 'NO':>5}")
    per, shared = args.bandwidth_mb * 1e6, args.total_bandwidth_mb * 1e6
    limits = []
    if per > 0:
        limits.append(f"one connection at most {size_text(per)}/s")
    if shared > 0:
        limits.append(f"all together at most {size_text(shared)}/s")
    if limits:
        print(f"emulated link: {args.latency * 1000:.0f} ms per request, "
              f"{', '.join(limits)}")
        print("  a single request (bqapi's way) is capped by the per-connection rate; "
              "aiobisque's concurrent requests share the whole link")
    if single and ours and ours.stats.seconds > 0:
        print(f"speedup of aiobisque over one request: "
              f"{single.stats.seconds / ours.stats.seconds:.1f}x")


def main(args: argparse.Namespace) -> int:
    """Run the demo; 0 when every download was bit-exact."""
    folder = args.cache_dir or default_cache()
    if args.size_mb < 1:
        print("aiobisque demo: --size-mb must be at least 1", file=sys.stderr)
        return 2
    prepare(folder, args.size_mb)
    started = time.perf_counter()
    rows = asyncio.run(_run(args, folder))
    _print_table(rows, args)
    ok = all(r.exact for r in rows)
    print(f"{'all results bit-exact' if ok else 'MISMATCH: some results differ'} "
          f"({time.perf_counter() - started:.1f} s)")
    return 0 if ok else 1
