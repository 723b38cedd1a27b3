"""The benchmark harness runs end to end (``--quick``), so it cannot rot unnoticed.

No timing is asserted: only that every contender ran, was checked bit-exact, and that the
report was written where asked without touching other sections.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.measure import measure
from benchmarks.report import update_section
from benchmarks.scenarios import prepare

REPO = Path(__file__).resolve().parent.parent


def quick_report(tmp_path: Path, *command: str) -> str:
    """``python -m benchmarks COMMAND --quick`` into a RESULTS.md with hand-written notes:
    the report's text, once it has checked the run passed and kept the notes."""
    output = tmp_path / "RESULTS.md"
    output.write_text("# Kept\n\nhand-written notes\n", encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", *command, "--quick", "--cache-dir",
         str(tmp_path / "data"), "--output", str(output)],
        capture_output=True, text=True, timeout=90, cwd=REPO, env=env, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    text = output.read_text(encoding="utf-8")
    assert text.startswith("# Kept\n\nhand-written notes\n")
    return text


def test_quick_run_writes_a_checked_report(tmp_path: Path) -> None:
    text = quick_report(tmp_path)
    assert "<!-- results:start -->" in text and "<!-- results:end -->" in text
    rows = [line for line in text.splitlines() if line.startswith(("| WAN |", "| Loopback |"))]
    assert len(rows) == 4  # two scenarios x two contenders
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        contender, exact = cells[2], cells[-1]
        assert exact == ("bytes" if contender == "raw-sink" else "yes"), row
    assert "WAN >= 85% of link limit" in text  # the targets table is judged


def test_update_section_replaces_only_its_own(tmp_path: Path) -> None:
    path = tmp_path / "R.md"
    update_section(path, "results", "first")
    update_section(path, "sweep", "grid")
    update_section(path, "results", "second")
    text = path.read_text(encoding="utf-8")
    assert "second" in text and "first" not in text and "grid" in text
    assert text.index("results:start") < text.index("sweep:start")


def test_measure_sees_memory_growth_and_time() -> None:
    with measure() as m:
        block = bytearray(32 << 20)
        block[::4096] = b"\x01" * len(block[::4096])  # touch every page
        deadline = time.perf_counter() + 0.05
        while time.perf_counter() < deadline:  # busy: wall and CPU time both pass
            pass
    assert m.rss_growth >= 24 << 20
    assert m.seconds >= 0.05 and m.cpu_seconds >= 0.02
    del block


def test_prepare_refuses_partial_planes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="256x256 float32 planes"):
        prepare(tmp_path, 1000)


def test_quick_matrix_writes_its_sections(tmp_path: Path) -> None:
    text = quick_report(tmp_path, "matrix")
    for name in ("issue15-targets", "matrix", "many-small", "cpu-raw-copy", "uvloop"):
        assert f"<!-- {name}:start -->" in text and f"<!-- {name}:end -->" in text, name
    lines = text.splitlines()
    matrix = [line for line in lines if line.startswith(("| 1 MiB | 20 ms", "| 2 MiB | 20 ms"))]
    # uvloop is an optional extra: without it its column is "-" (and its runs left out)
    both = "yes / yes" if importlib.util.find_spec("uvloop") else "- | yes"
    assert len(matrix) == 2 and all(line.rstrip(" |").endswith(both) for line in matrix)
    small = [line for line in lines if line.startswith("| 20 x 64 KiB @ 20 ms |")]
    verdicts = {line.split("|")[2].strip(): line.rstrip(" |").rsplit("|", 1)[1].strip()
                for line in small}
    assert verdicts == {"gather-api": "yes", "cli-from-list": "yes", "raw-gather": "bytes"}
    cpu = [line for line in lines if line.startswith("| 4 MiB | asyncio |")]
    assert len(cpu) == 1 and cpu[0].rstrip(" |").endswith("yes"), cpu
    assert "x raw copy (asyncio)" in text
    assert "uvloop: a measured win" in text  # the targets table is judged
