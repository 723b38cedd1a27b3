"""Markdown for ``RESULTS.md``: conditions, headline, targets, tables, the sweep.

``RESULTS.md`` is made of sections between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``
markers. A run replaces only its own section (``results`` or ``sweep``), so the sweep, the
main results and hand-written analysis outside the markers live side by side in one file.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import os
import platform
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

from aiobisque.config import MiB
from benchmarks.contenders import CONTENDERS
from benchmarks.harness import Row
from benchmarks.scenarios import GiB

__all__ = [
    "conditions", "markdown_table", "results_section", "sweep_section", "targets",
    "update_section",
]

_OURS = ("aiobisque-asyncio", "aiobisque-uvloop")


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _size(nbytes: int) -> str:
    return f"{nbytes / GiB:g} GiB" if nbytes >= GiB else f"{nbytes / MiB:g} MiB"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=False, cwd=Path(__file__).parent)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def _versions() -> str:
    names = ("aiohttp", "numpy", "h5py", "uvloop", "tables", "bqapi-ucsb")
    found = []
    for name in names:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} (missing)")
    return ", ".join(found)


def conditions(command: str, load_before: str | None = None) -> list[str]:
    """Bullet lines saying how and where the numbers were measured."""
    mem = ""
    with contextlib.suppress(ValueError, OSError, AttributeError):
        mem = f", {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / GiB:.0f} GiB RAM"
    return [
        f"- Command: `{command}` (commit {_commit()}, "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC)",
        f"- Machine: {_cpu_model()}, {os.cpu_count()} cores shared by the server, the client "
        f"and other work{mem}; load average {load_before or _load()} before, {_load()} after",
        f"- Python {platform.python_version()} on {platform.system()} {platform.release()}; "
        f"{_versions()}",
    ]


def _find(rows: Sequence[Row], scenario: str, contender: str) -> Row | None:
    for row in rows:
        if row.scenario.name == scenario and row.entrant.label == contender:
            return row
    return None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def targets(rows: Sequence[Row]) -> list[tuple[str, str, str]]:
    """``(target, measured, verdict)`` for each target the rows can judge."""
    out: list[tuple[str, str, str]] = []

    def verdict(ok: bool | None) -> str:
        return "-" if ok is None else ("met" if ok else "**missed**")

    for ours in _OURS:
        wan = _find(rows, "WAN", ours)
        if wan is not None and wan.of_link_limit is not None:
            frac = wan.of_link_limit
            out.append((f"WAN >= 85% of link limit ({ours})", f"{frac:.0%}",
                        verdict(frac >= 0.85)))
            bq = _find(rows, "WAN", "bqapi")
            speedup = _ratio(bq.seconds if bq else None, wan.seconds)
            if speedup is not None:
                out.append((f"WAN >= 8x faster than bqapi ({ours})", f"{speedup:.2f}x",
                            verdict(speedup >= 8)))
        faulty = _find(rows, "Faulty WAN", ours)
        if faulty is not None and faulty.of_link_limit is not None:
            frac = faulty.of_link_limit
            out.append((f"Faulty WAN >= 60% of link limit, bit-exact ({ours})",
                        f"{frac:.0%}, exact: {faulty.exact}",
                        verdict(frac >= 0.60 and faulty.exact == "yes")))
        loop = _find(rows, "Loopback", ours)
        sink = _find(rows, "Loopback", "raw-sink")
        cpu = _ratio(loop.cpu_per_gib if loop else None, sink.cpu_per_gib if sink else None)
        if cpu is not None and loop is not None and sink is not None:
            net = _ratio(_net_cpu(loop), sink.cpu_per_gib)
            out.append((f"Loopback CPU s/GiB <= 1.25x raw sink ({ours})",
                        f"{cpu:.2f}x ({_fmt(loop.cpu_per_gib, '.2f')} vs "
                        f"{_fmt(sink.cpu_per_gib, '.2f')}); without the fresh-array page "
                        f"faults: {_fmt(net, '.2f', 'x')}",
                        verdict(cpu <= 1.25)))
        if loop is not None and loop.rss_growth is not None:
            out.append((f"RSS growth at {_size(loop.sample.nbytes)} <= 1.3x array ({ours})",
                        f"{loop.rss_growth:.2f}x", verdict(loop.rss_growth <= 1.3)))
        scale = sorted((r for r in rows if r.entrant.label == ours and r.seconds
                        and not r.scenario.faults.total_bandwidth and not r.scenario.faults.latency),
                       key=lambda r: r.sample.nbytes)
        if len(scale) >= 2:
            per_gib = [r.seconds / (r.sample.nbytes / GiB) for r in scale if r.seconds]
            spread = max(per_gib) / min(per_gib)
            out.append((
                f"time per GiB roughly constant {_size(scale[0].sample.nbytes)} -> "
                f"{_size(scale[-1].sample.nbytes)} ({ours})",
                " / ".join(f"{s:.2f}" for s in per_gib) + f" s/GiB (max/min {spread:.2f})",
                verdict(spread <= 1.5)))
            extra = [_fmt(_extra_mib(r), ".0f") for r in scale]
            biggest = _extra_mib(scale[-1])
            out.append((
                f"RSS growth = array + fixed budget at {_size(scale[-1].sample.nbytes)} ({ours})",
                "growth - array: " + " / ".join(extra) + " MiB",
                verdict(None if biggest is None else biggest <= 256)))
    return out


def _net_cpu(row: Row) -> float | None:
    """CPU s/GiB less the cost of faulting in a fresh result array (which the sink skips)."""
    cpu, floor = row.cpu_per_gib, row.alloc_cpu_per_gib
    return None if cpu is None or floor is None else max(0.0, cpu - floor)


def _extra_mib(row: Row) -> float | None:
    growth = row.rss_growth_bytes
    return None if growth is None else (growth - row.sample.nbytes) / MiB


def markdown_table(header: Sequence[str], lines: Iterable[Sequence[str]]) -> list[str]:
    """The lines of a Markdown table: a header row, its rule, one row per line."""
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return out


def _headline(rows: Sequence[Row], repeat: int) -> list[str]:
    lines = []
    wan, bq = _find(rows, "WAN", "aiobisque-asyncio"), _find(rows, "WAN", "bqapi")
    if wan and wan.seconds and wan.of_link_limit is not None:
        speed = _ratio(bq.seconds if bq else None, wan.seconds)
        lines.append(
            f"- **WAN** ({wan.scenario.about}, {_size(wan.sample.nbytes)} float32): aiobisque "
            f"{wan.seconds:.2f} s = {wan.of_link_limit:.0%} of the link limit"
            + (f", {speed:.2f}x faster than bqapi ({bq.seconds:.1f} s)" if speed and bq
               and bq.seconds else "") + ".")
    faulty = _find(rows, "Faulty WAN", "aiobisque-asyncio")
    if faulty and faulty.seconds and faulty.of_link_limit is not None:
        lines.append(
            f"- **Faulty WAN** (+10% 503, 5% 429, 5% resets): {faulty.seconds:.2f} s = "
            f"{faulty.of_link_limit:.0%} of the link limit, bit-exact: {faulty.exact}, "
            f"{faulty.retries:.0f} retries.")
    loop, sink = _find(rows, "Loopback", "aiobisque-asyncio"), _find(rows, "Loopback", "raw-sink")
    if loop and loop.seconds:
        cpu = _ratio(loop.cpu_per_gib, sink.cpu_per_gib if sink else None)
        lines.append(
            f"- **Loopback** ({_size(loop.sample.nbytes)}): {loop.mb_per_s:.0f} MB/s, "
            f"{_fmt(loop.cpu_per_gib, '.2f')} CPU s/GiB"
            + (f" ({cpu:.2f}x the raw byte sink's)" if cpu else "")
            + f", peak RSS growth {_fmt(loop.rss_growth, '.2f')}x the array.")
    lines.append(f"- Medians of {repeat} runs; client and server share the machine below.")
    return lines


def results_section(rows: Sequence[Row], *, repeat: int, conditions_lines: Sequence[str]
                    ) -> str:
    """The ``results`` section of ``RESULTS.md``."""
    out = ["## Results", "", *conditions_lines, "", "### Headline", "",
           *_headline(rows, repeat), "", "### Targets", ""]
    out += markdown_table(("target", "measured", "verdict"), targets(rows))
    out += ["", f"### All measurements (medians of {repeat} runs)", "",
            "Seconds: the download alone (setup and imports excluded). *Of link limit*: "
            "`latency + bytes / shared bandwidth` divided by the seconds. Requests and retries "
            "as counted by the server. CPU: the client process's user + system time during the "
            "download, per GiB; *alloc*: the same process allocating and filling a fresh array of that size afterwards (the page faults any client returning a new array pays and the sink does not); *k faults/GiB*: thousands of minor page faults (first touches of fresh memory) per GiB during the download. RSS growth: peak resident memory above the level before the "
            "download, as a multiple of the array. *bytes*: the raw sink checks byte counts "
            "only.", ""]
    lines = []
    for row in rows:
        failed = f" ({len(row.failed)} of {len(row.runs)} failed)" if row.failed else ""
        lines.append((
            row.scenario.name, _size(row.sample.nbytes), row.entrant.label + failed,
            _fmt(row.seconds, ".2f"), _fmt(row.mb_per_s, ".0f"),
            _fmt(row.of_link_limit, ".0%"), _fmt(row.requests, ".0f"),
            _fmt(row.retries, ".0f"), _fmt(row.cpu_per_gib, ".2f"),
            _fmt(row.alloc_cpu_per_gib, ".2f"),
            _fmt(None if row.faults_per_gib is None else row.faults_per_gib / 1000, ".1f"),
            _fmt(row.rss_growth, ".2f", "x"), row.exact,
        ))
    out += markdown_table(("scenario", "array", "contender", "seconds", "MB/s", "of link limit",
                   "requests", "retries", "CPU s/GiB", "alloc CPU s/GiB", "k faults/GiB", "RSS growth",
                   "exact"), lines)
    out += ["", "Contenders: " + "; ".join(f"`{k}`: {v}" for k, v in CONTENDERS.items()) + "."]
    faulty = [row for row in rows if row.scenario.faults.error_rate or
              row.scenario.faults.throttle_rate or row.scenario.faults.reset_rate]
    if faulty:
        out += ["", "### Faulty runs one by one", "",
                "Each repeat uses another fault seed. A 429 asks the client to wait "
                "`Retry-After` seconds, which a well-behaved client must honour.", ""]
        per_run: list[tuple[str, ...]] = []
        for row in faulty:
            limit = row.scenario.link_limit()
            for r in row.runs:
                secs = r.outcome.measured.seconds if r.outcome else None
                injected = ", ".join(f"{n} {k}" for k, n in sorted(r.faults.items())
                                     if k != "latency") or "none"
                per_run.append((row.scenario.name, row.entrant.label, str(r.repeat),
                              _fmt(secs, ".2f"), _fmt(_ratio(limit, secs), ".0%"),
                              str(r.requests), injected,
                              {True: "yes", None: "bytes", False: "NO"}[r.exact]))
        out += markdown_table(("scenario", "contender", "seed", "seconds", "of link limit",
                       "requests", "faults injected", "exact"), per_run)
    errors = [f"- {row.scenario.name} / {row.entrant.label} #{r.repeat}: {r.error or 'mismatch'}"
              for row in rows for r in row.failed]
    if errors:
        out += ["", "Failures:", "", *errors]
    return "\n".join(out) + "\n"


def sweep_section(rows: Sequence[Row], *, repeat: int, conditions_lines: Sequence[str],
                  request_mib: Sequence[float], concurrency: Sequence[int]) -> str:
    """The ``sweep`` section: one grid per scenario, request size down, concurrency across."""
    out = ["## Sweep: request_bytes x concurrency (aiobisque-asyncio)", "", *conditions_lines,
           "", f"Each cell: median seconds of {repeat} runs, then the fraction of the link "
           "limit (WAN) or CPU s/GiB and peak RSS growth (loopback). Defaults: "
           "`request_bytes=4 MiB`, `concurrency=16`.", ""]
    for name in dict.fromkeys(r.scenario.name for r in rows):
        mine = [r for r in rows if r.scenario.name == name]
        out += [f"### {name} ({_size(mine[0].sample.nbytes)}, {mine[0].scenario.about})", ""]
        cells: dict[tuple[float, int], Row] = {}
        for r in mine:
            opts = dict(r.entrant.options)
            cells[(opts["request_bytes"] / MiB, opts["concurrency"])] = r
        lines = []
        for mib in request_mib:
            line = [f"{mib:g} MiB"]
            for c in concurrency:
                row = cells.get((mib, c))
                if row is None or row.seconds is None:
                    line.append("failed" if row else "-")
                elif row.of_link_limit is not None:
                    line.append(f"{row.seconds:.2f} s ({row.of_link_limit:.0%})")
                else:
                    line.append(f"{row.seconds:.2f} s, {_fmt(row.cpu_per_gib, '.2f')} CPU, "
                                f"{_fmt(row.rss_growth, '.2f')}x")
            lines.append(line)
        out += markdown_table(("request_bytes", *(f"concurrency {c}" for c in concurrency)), lines)
        best = min((r for r in mine if r.seconds), key=lambda r: r.seconds or 0.0, default=None)
        if best is not None:
            out += ["", f"Fastest: {best.entrant.label.split(' ', 1)[1]} "
                        f"({best.seconds:.2f} s)."]
        out.append("")
    return "\n".join(out)


def update_section(path: Path, name: str, text: str) -> None:
    """Replace section ``name`` of the Markdown file at ``path`` (appended when absent)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{text.rstrip()}\n{end}"
    old = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    if start in old and end in old:
        before, rest = old.split(start, 1)
        after = rest.split(end, 1)[1]
        new = before + block + after
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    path.write_text(new, encoding="utf-8")
