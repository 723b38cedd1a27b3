"""Peak memory of an upload: ``store_array`` of a 256 MiB array (issue 16's bar: growth <= 1.2x).

Conditions: the embedded server runs in this process (on a thread, loopback, streaming the
upload to a temporary folder); each upload runs in a fresh child process, which

1. imports everything and opens its session (baseline: ``VmRSS`` then),
2. builds a (256, 512, 512) float32 array (256 MiB) plane by plane (no whole-size
   temporaries),
3. uploads it, and reports its peak RSS (``VmHWM``) minus the baseline, over the array's
   size: 1.0 is the array itself, the rest is what the upload held.

Contenders: aiobisque's ``Session.table.store_array`` and the official ``bqapi``
``TableProxy.store_array`` (when installed), each checked bit-exact against the stored file.

    python benchmarks/upload_memory.py            # prints a table (3 runs each)
    python benchmarks/upload_memory.py --write    # also updates benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiobisque.server import serve_in_thread
from benchmarks.report import markdown_table, update_section

SHAPE = (256, 512, 512)
USER, PASSWORD = "bench", "bench-password"

# the child: baseline after imports and login, then build the array, upload, report
CHILD = r"""
import hashlib, json, sys, time, warnings
import numpy as np

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise SystemExit(f"no {key} in /proc/self/status")

which, root, user, password = sys.argv[1:5]
shape = tuple(json.loads(sys.argv[5]))
if which == "aiobisque":
    from aiobisque import Session
    session = Session(root, auth=(user, password))
    store = lambda a: session.table.store_array(a, "bench").uniq
else:
    warnings.simplefilter("ignore")
    from bqapi import BQSession
    bq = BQSession().init_local(user, password, bisque_root=root)
    store = lambda a: bq.service("table").store_array(a, "bench").get("resource_uniq")
baseline = status("VmRSS:")
array = np.empty(shape, dtype=np.float32)
rng = np.random.default_rng(7)
for i in range(shape[0]):
    array[i] = rng.standard_normal(shape[1:], dtype=np.float32)
digest = hashlib.sha256(array.data).hexdigest()
t = time.perf_counter()
uniq = store(array)
seconds = time.perf_counter() - t
print(json.dumps({"uniq": uniq, "seconds": seconds, "growth": status("VmHWM:") - baseline,
                  "nbytes": array.nbytes, "digest": digest}))
"""


def run_one(which: str, root: str) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, which, root, USER, PASSWORD, json.dumps(SHAPE)],
        env=env, check=True, capture_output=True, text=True, timeout=600,
    ).stdout.strip().splitlines()[-1]
    result: dict[str, object] = json.loads(out)
    return result


def stored_digest(folder: Path, uniq: str) -> str:
    [file] = folder.glob(f"{uniq}.*")
    with h5py.File(file, "r") as h5:
        return hashlib.sha256(h5["bench"][()].tobytes()).hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    contenders = ["aiobisque"]
    try:
        import bqapi  # noqa: F401
    except ImportError:
        print("bqapi is not installed: measuring aiobisque only")
    else:
        contenders.append("bqapi")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with serve_in_thread(folder, users={USER: PASSWORD}) as srv:
            for which in contenders:
                runs = []
                for i in range(args.repeat):
                    r = run_one(which, srv.root)
                    ratio = float(r["growth"]) / float(r["nbytes"])  # type: ignore[arg-type]
                    exact = stored_digest(folder, str(r["uniq"])) == r["digest"]
                    for file in folder.glob(f"{r['uniq']}.*"):
                        file.unlink()
                    runs.append((float(r["seconds"]), ratio, exact))  # type: ignore[arg-type]
                    print(f"{which:9} run {i}: {r['seconds']:.2f} s, peak RSS growth "
                          f"{ratio:.3f}x the array, exact={exact}", flush=True)
                secs = sorted(x[0] for x in runs)
                ratios = sorted(x[1] for x in runs)
                rows.append([which, f"{secs[len(secs) // 2]:.2f}",
                             f"{ratios[len(ratios) // 2]:.3f}", f"{ratios[-1]:.3f}",
                             "yes" if all(x[2] for x in runs) else "NO"])
    lines = [
        "## Upload memory",
        "",
        f"`python benchmarks/upload_memory.py{' --write' if args.write else ''}` on "
        f"{platform.machine()} with {os.cpu_count()} cores, Python {platform.python_version()}"
        f", {time.strftime('%Y-%m-%d')}: `store_array` of a {SHAPE} float32 array (256 MiB) "
        "to the embedded server on loopback, in a fresh child process; peak RSS growth over "
        "the process's RSS after imports and login, divided by the array's size (1.0 is the "
        f"array itself), median and worst of {args.repeat} runs. Issue 16's bar: 1.2.",
        "",
        *markdown_table(("client", "seconds (median)", "peak growth / array (median)",
                         "(worst)", "bit-exact"), rows),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        update_section(Path(__file__).with_name("RESULTS.md"), "upload-memory", text)
    return 0 if all(r[-1] == "yes" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
