"""Peak memory of ``aiobisque download`` writing a 256 MiB array to disk (issue 7's bar: ~192 MiB).

Serves a (256, 512, 512) float32 volume (256 MiB) from the embedded server in this process,
runs the real command line in a child process (default options) for each output format,
and reports the child's peak resident set size (``ru_maxrss`` of the waited-for child) and
whether the file matches the source bit for bit.

    python benchmarks/cli_memory.py            # prints a table
    python benchmarks/cli_memory.py --write    # also updates benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiobisque.server import samples, serve_in_thread
from benchmarks.report import markdown_table, update_section

UNIQ, PATH, SHAPE = "00-cliMemory", "volume", (256, 512, 512)
USER, PASSWORD = "bench", "bench-password"


def run_one(root: str, out: Path) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of one ``aiobisque download`` in a fresh child process."""
    # a fresh interpreter per run, so RUSAGE_CHILDREN's maximum is this child's own
    probe = (
        "import resource, subprocess, sys, time;"
        "t = time.perf_counter();"
        "rc = subprocess.call(sys.argv[1:]);"
        "dt = time.perf_counter() - t;"
        "print(rc, dt, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    cmd = [sys.executable, "-m", "aiobisque", "download", root, UNIQ, PATH, "-o", str(out),
           "--user", USER, "--no-progress"]
    env = {**os.environ, "BISQUE_PASSWORD": PASSWORD,
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    line = subprocess.run([sys.executable, "-c", probe, *cmd], env=env, check=True,
                          capture_output=True, text=True).stdout.strip().splitlines()[-1].split()
    rc, seconds, maxrss_kib = int(line[0]), float(line[1]), int(line[2])
    if rc != 0:
        raise SystemExit(f"aiobisque download exited {rc}")
    return seconds, maxrss_kib / 1024


def digest_of(out: Path) -> str:
    if out.suffix == ".npy":
        data = np.load(out, mmap_mode="r")
    else:
        with h5py.File(out, "r") as f:
            data = f[PATH][()]
    return hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        samples.write_array(folder, UNIQ, PATH, SHAPE, dtype="float32", seed=3)
        with h5py.File(samples.resource_file(folder, UNIQ), "r") as f:
            want = hashlib.sha256(f[PATH][()].tobytes()).hexdigest()
        with serve_in_thread(folder, users={USER: PASSWORD}) as srv:
            for suffix in (".npy", ".h5"):
                runs = []
                for i in range(args.repeat):
                    out = folder / f"out{i}{suffix}"
                    seconds, peak = run_one(srv.root, out)
                    exact = digest_of(out) == want
                    out.unlink()
                    runs.append((seconds, peak, exact))
                    print(f"{suffix:5} run {i}: {seconds:.2f} s, peak RSS {peak:.0f} MiB, "
                          f"exact={exact}", flush=True)
                peaks = sorted(r[1] for r in runs)
                secs = sorted(r[0] for r in runs)
                rows.append([suffix, f"{secs[len(secs) // 2]:.2f}",
                             f"{peaks[len(peaks) // 2]:.0f}", f"{peaks[-1]:.0f}",
                             "yes" if all(r[2] for r in runs) else "NO"])
    lines = [
        "## Command-line download memory",
        "",
        f"`python benchmarks/cli_memory.py{' --write' if args.write else ''}` on "
        f"{platform.machine()} with {os.cpu_count()} cores, Python {platform.python_version()}"
        f", {time.strftime('%Y-%m-%d')}: `aiobisque download` (default options) of a "
        f"{SHAPE} float32 array (256 MiB) from the embedded server on loopback, in a child "
        f"process; peak RSS of that process, median and worst of {args.repeat} runs. "
        "Issue 7's bar: about 192 MiB.",
        "",
        *markdown_table(("output", "seconds (median)", "peak RSS MiB (median)",
                         "peak RSS MiB (worst)", "bit-exact"), rows),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        update_section(Path(__file__).with_name("RESULTS.md"), "cli-memory", text)
    return 0 if all(r[-1] == "yes" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
