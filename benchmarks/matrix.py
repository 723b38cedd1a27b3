"""Issue #15's throughput benchmarks: ``python -m benchmarks matrix``.

Four parts, each run through :func:`benchmarks.harness.run_scenarios` (embedded server in
this process, one child process per download, the server's statistics per download):

* ``matrix``: sizes x latencies on the issue's emulated link (16 MB/s per connection,
  160 MB/s shared), ``table.load_array`` with default settings on asyncio and uvloop,
  judged against the floor ``2 x latency + bytes / 160 MB/s`` (one ``info`` round trip,
  one data round trip, the bytes at the shared bandwidth);
* ``small``: many small arrays (500 resources of one 64 KiB image each) fetched at once,
  through the API (``asyncio.gather`` of ``load_array`` on one session) and through the
  command line (``aiobisque download --from-list``), against the same floor with the total
  bytes;
* ``cpu``: client CPU per GiB on loopback, aiobisque against ``raw-copy`` (plain aiohttp,
  the same requests, bodies copied into a preallocated numpy buffer), per event loop;
* ``uvloop``: no runs of its own: uvloop / asyncio ratios from the two parts above.

``--write`` (or ``--output FILE``) replaces the ``issue15-targets``, ``matrix``,
``many-small``, ``cpu-raw-copy`` and ``uvloop`` sections of ``RESULTS.md``.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from aiobisque.config import MiB
from benchmarks.harness import Entrant, Row, run_scenarios
from benchmarks.report import markdown_table
from benchmarks.scenarios import NO_FAULTS, WAN, GiB, Scenario, matrix_scenarios

__all__ = ["PARTS", "MatrixPlan", "full_plan", "quick_plan", "run_plan", "sections"]

PARTS = ("matrix", "small", "cpu")
ASYNCIO, UVLOOP = "aiobisque-asyncio", "aiobisque-uvloop"
KiB = 1024


@dataclass(frozen=True)
class MatrixPlan:
    """What ``python -m benchmarks matrix`` runs."""

    sizes_mib: tuple[float, ...] = (16, 64, 256, 1024)
    latencies_ms: tuple[float, ...] = (10, 50, 100, 300)
    matrix_contenders: tuple[str, ...] = (ASYNCIO, UVLOOP)
    small_count: int = 500
    small_bytes: int = 64 * KiB
    small_latencies_ms: tuple[float, ...] = (10, 100)
    small_contenders: tuple[str, ...] = ("gather-api", "cli-from-list", "raw-gather")
    cpu_sizes_mib: tuple[float, ...] = (256, 1024)
    cpu_contenders: tuple[str, ...] = (ASYNCIO, "raw-copy", UVLOOP, "raw-copy-uvloop",
                                       "raw-sink")
    parts: tuple[str, ...] = PARTS
    quick: bool = False


def full_plan() -> MatrixPlan:
    return MatrixPlan()


def quick_plan() -> MatrixPlan:
    """Seconds in total: tiny sizes, one latency, 20 small arrays, one CPU size."""
    return MatrixPlan(sizes_mib=(1, 2), latencies_ms=(20,), small_count=20,
                      small_latencies_ms=(20,), cpu_sizes_mib=(4,),
                      cpu_contenders=(ASYNCIO, "raw-copy"), quick=True)


def small_scenarios(plan: MatrixPlan) -> list[Scenario]:
    out = []
    for ms in plan.small_latencies_ms:
        faults = replace(WAN, latency=ms / 1000)
        out.append(Scenario(
            f"{plan.small_count} x {plan.small_bytes // KiB} KiB @ {ms:g} ms",
            plan.small_count * plan.small_bytes, faults, plan.small_contenders,
            f"{plan.small_count} resources of one {plan.small_bytes // KiB} KiB image each, "
            f"{ms:g} ms per request, 16 MB/s per connection, 160 MB/s shared",
            count=plan.small_count))
    return out


def cpu_scenarios(plan: MatrixPlan) -> list[Scenario]:
    return [Scenario(f"CPU {_size(int(mib * MiB))}", int(mib * MiB), NO_FAULTS,
                     plan.cpu_contenders, "127.0.0.1, no caps")
            for mib in plan.cpu_sizes_mib]


def run_plan(plan: MatrixPlan, *, repeat: int, cpu_repeat: int, cache: Path,
             contenders: Sequence[str] = ()) -> dict[str, list[Row]]:
    """Run the parts of ``plan``; rows by part."""
    def entrants(s: Scenario) -> list[Entrant]:
        return [Entrant(c) for c in s.contenders if not contenders or c in contenders]

    rows: dict[str, list[Row]] = {}
    if "matrix" in plan.parts:
        print("== matrix: size x latency", flush=True)
        rows["matrix"] = run_scenarios(
            matrix_scenarios(list(plan.sizes_mib), list(plan.latencies_ms),
                             plan.matrix_contenders), entrants, repeat=repeat, cache=cache)
    if "small" in plan.parts:
        print("== many small arrays", flush=True)
        rows["small"] = run_scenarios(small_scenarios(plan), entrants, repeat=repeat,
                                      cache=cache)
    if "cpu" in plan.parts:
        print("== CPU on loopback", flush=True)
        rows["cpu"] = run_scenarios(cpu_scenarios(plan), entrants, repeat=cpu_repeat,
                                    cache=cache)
    return rows


# ---------------------------------------------------------------- report


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _size(nbytes: int) -> str:
    return f"{nbytes / GiB:g} GiB" if nbytes >= GiB else f"{nbytes / MiB:g} MiB"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "**missed**")


def _row(rows: Sequence[Row], scenario: str, contender: str) -> Row | None:
    for row in rows:
        if row.scenario.name == scenario and row.entrant.label == contender:
            return row
    return None


def _scenario_names(rows: Sequence[Row]) -> list[str]:
    return list(dict.fromkeys(r.scenario.name for r in rows))


def _failed(row: Row) -> str:
    return f" ({len(row.failed)} of {len(row.runs)} failed)" if row.failed else ""


def _inflight(row: Row | None) -> str:
    if row is None:
        return "-"
    client = row.peak_in_flight
    return f"{_fmt(client, '.0f')} / {_fmt(row.server_peak_in_flight, '.0f')}"


def matrix_section(rows: Sequence[Row], *, repeat: int, conditions_lines: Sequence[str]) -> str:
    out = ["## Matrix: size x latency (issue #15)", "", *conditions_lines, "",
           "The issue's link (`FaultPlan(latency=L, bandwidth=16e6, total_bandwidth=160e6)`: "
           "L on every request, info included), `table.load_array` of the whole float32 "
           "volume with default `Config`. *Floor*: `2 x L + bytes / 160 MB/s` (one info "
           "round trip, one data round trip, the bytes at the shared bandwidth; session "
           "login and service discovery are setup, not measured). *Of floor*: floor / "
           f"seconds. Medians of {repeat} run(s). *Requests*: data requests the server "
           "received (retries included). *In flight*: the client's `DownloadStats."
           "peak_in_flight` / the server's peak of data requests served at once.", ""]
    lines = []
    for name in _scenario_names(rows):
        a, u = _row(rows, name, ASYNCIO), _row(rows, name, UVLOOP)
        first = a or u
        assert first is not None
        lines.append((
            _size(first.sample.nbytes), f"{first.scenario.faults.latency * 1000:g} ms",
            _fmt(first.floor, ".2f"),
            _fmt(a.seconds if a else None, ".2f") + (_failed(a) if a else ""),
            _fmt(a.of_floor if a else None, ".0%"),
            _fmt(u.seconds if u else None, ".2f") + (_failed(u) if u else ""),
            _fmt(u.of_floor if u else None, ".0%"),
            _fmt(a.requests if a else None, ".0f"), _inflight(a), _inflight(u),
            _fmt(a.cpu_per_gib if a else None, ".2f"), _fmt(u.cpu_per_gib if u else None, ".2f"),
            " / ".join(r.exact for r in (a, u) if r is not None),
        ))
    out += markdown_table(("array", "latency", "floor s", "asyncio s", "of floor",
                           "uvloop s", "of floor", "requests", "in flight asyncio",
                           "in flight uvloop", "CPU s/GiB asyncio", "CPU s/GiB uvloop",
                           "exact"), lines)
    return "\n".join(out) + "\n"


def small_section(rows: Sequence[Row], *, repeat: int, conditions_lines: Sequence[str]) -> str:
    out = ["## Many small arrays (issue #15)", "", *conditions_lines, "",
           "Each resource holds one 128 x 128 float32 image (64 KiB), as a list of images "
           "in a BisQue dataset would. `gather-api`: `asyncio.gather(*(bq.table.load_array("
           "u, path) for u in uniqs))` on one `BisqueSession`, default settings, asyncio "
           "loop; seconds from the first call to the last array (login excluded). "
           "`cli-from-list`: `aiobisque download ROOT --from-list FILE --user NAME` "
           "(password in `$BISQUE_PASSWORD`, default options, one `.npy` per line) as a "
           "process of its own; seconds from its start to its exit, so interpreter start, "
           "imports and login are in; *start-up*: `aiobisque download --help` timed just "
           "before (interpreter and imports, no network). `raw-gather`: plain aiohttp, no "
           "limit on requests in flight, for every array an info request then one "
           "`format:hdf` request for the whole array (bodies read, not decoded), all at "
           "once: what this server and machine allow any client making the same two round "
           "trips per array (byte counts checked). *Floor*: `2 x latency + total "
           "bytes / 160 MB/s`. "
           "*Requests*: data / other (info, session, services) as counted by the server. "
           "*Server CPU*: the embedded server's process during the download (it shares the "
           f"2 cores with the client). Medians of {repeat} run(s).", ""]
    lines = []
    for row in rows:
        total = (row.requests or 0) + (row.other_requests or 0)
        per_req = _ratio(row.server_cpu, total)
        lines.append((
            row.scenario.name, row.entrant.label + _failed(row), _fmt(row.floor, ".2f"),
            _fmt(row.seconds, ".2f"), _fmt(row.x_floor, ".2f", "x"),
            _fmt(row.startup_seconds, ".2f"),
            f"{_fmt(row.requests, '.0f')} / {_fmt(row.other_requests, '.0f')}",
            _fmt(row.server_peak_in_flight, ".0f"), _fmt(row.cpu_seconds, ".2f"),
            _fmt(row.server_cpu, ".2f"), _fmt(None if per_req is None else per_req * 1000, ".2f"),
            row.exact,
        ))
    out += markdown_table(("case", "contender", "floor s", "seconds", "x floor",
                           "start-up s", "requests data / other", "server peak in flight",
                           "client CPU s", "server CPU s", "server CPU ms/request",
                           "exact"), lines)
    return "\n".join(out) + "\n"


_PAIRS = ((ASYNCIO, "raw-copy", "asyncio"), (UVLOOP, "raw-copy-uvloop", "uvloop"))


def cpu_section(rows: Sequence[Row], *, repeat: int, conditions_lines: Sequence[str]) -> str:
    out = ["## CPU versus a raw copy into numpy (issue #15)", "", *conditions_lines, "",
           "Loopback, no link emulation. `raw-copy`: the requests aiobisque plans, fetched "
           "with plain aiohttp at the same concurrency, each body piece copied into one "
           "fresh preallocated numpy `uint8` buffer of the array's size (no HDF5 parsing); "
           "`raw-sink`: the same, bodies thrown away. CPU: the client process's user + "
           "system time during the download (all threads). *Ratio*: aiobisque CPU s/GiB / "
           f"raw-copy CPU s/GiB on the same loop, in the same run; *paired*: the median "
           "of that ratio taken repeat by repeat (the two measured one after the other), "
           f"which the targets use. Medians of {repeat} runs.", ""]
    lines = []
    for name in _scenario_names(rows):
        sink = _row(rows, name, "raw-sink")
        for ours, raw, loop in _PAIRS:
            a, r = _row(rows, name, ours), _row(rows, name, raw)
            if a is None and r is None:
                continue
            lines.append((
                _size((a or r).sample.nbytes), loop,  # type: ignore[union-attr]
                _fmt(a.seconds if a else None, ".2f") + (_failed(a) if a else ""),
                _fmt(a.cpu_per_gib if a else None, ".2f"),
                _fmt(r.seconds if r else None, ".2f") + (_failed(r) if r else ""),
                _fmt(r.cpu_per_gib if r else None, ".2f"),
                _fmt(_ratio(a.cpu_per_gib if a else None, r.cpu_per_gib if r else None),
                     ".2f", "x"),
                _fmt(_paired_cpu_ratio(a, r), ".2f", "x"),
                _fmt(_ratio(a.seconds if a else None, r.seconds if r else None), ".2f", "x"),
                _fmt(sink.cpu_per_gib if sink else None, ".2f"),
                _fmt(a.rss_growth if a else None, ".2f", "x"),
                a.exact if a else "-",
            ))
    out += markdown_table(("array", "loop", "aiobisque s", "aiobisque CPU s/GiB",
                           "raw-copy s", "raw-copy CPU s/GiB", "CPU ratio",
                           "CPU ratio, paired", "wall ratio",
                           "raw-sink CPU s/GiB (asyncio)", "aiobisque RSS growth",
                           "exact"), lines)
    return "\n".join(out) + "\n"


def _paired_cpu_ratio(a: Row | None, r: Row | None) -> float | None:
    """Median over repeats of aiobisque's CPU / raw-copy's CPU in the same repeat: on a VM
    whose CPU figures drift 2x between repeats, pairs measured side by side say more than
    the ratio of two medians."""
    if a is None or r is None:
        return None
    theirs = {run.repeat: run.outcome.measured.cpu_seconds for run in r.ok_runs
              if run.outcome is not None}
    pairs = [run.outcome.measured.cpu_seconds / theirs[run.repeat] for run in a.ok_runs
             if run.outcome is not None and theirs.get(run.repeat)]
    return statistics.median(pairs) if pairs else None


def _loop_ratios(rows: Sequence[Row], name: str, ours: str = ASYNCIO,
                 theirs: str = UVLOOP) -> tuple[float | None, float | None]:
    a, u = _row(rows, name, ours), _row(rows, name, theirs)
    if a is None or u is None:
        return None, None
    return _ratio(u.seconds, a.seconds), _ratio(u.cpu_per_gib, a.cpu_per_gib)


def uvloop_section(parts: dict[str, list[Row]], *, conditions_lines: Sequence[str]) -> str:
    out = ["## uvloop versus asyncio (issue #15)", "", *conditions_lines, "",
           "uvloop / asyncio, same download, same run (below 1: uvloop is better). The "
           "command line and the synchronous API run on asyncio's loop unless "
           "`AIOBISQUE_LOOP=uvloop` (`aiobisque._loop`); `async` users bring their own "
           "loop.", ""]
    lines = []
    for name in _scenario_names(parts.get("matrix", [])):
        wall, cpu = _loop_ratios(parts["matrix"], name)
        lines.append((name, _fmt(wall, ".2f"), _fmt(cpu, ".2f")))
    for name in _scenario_names(parts.get("cpu", [])):
        wall, cpu = _loop_ratios(parts["cpu"], name)
        if wall is not None:
            lines.append((f"{name} (loopback, aiobisque)", _fmt(wall, ".2f"), _fmt(cpu, ".2f")))
        wall, cpu = _loop_ratios(parts["cpu"], name, "raw-copy", "raw-copy-uvloop")
        if wall is not None:
            lines.append((f"{name} (loopback, raw-copy)", _fmt(wall, ".2f"), _fmt(cpu, ".2f")))
    out += markdown_table(("download", "wall uvloop/asyncio", "CPU uvloop/asyncio"), lines)
    summary = uvloop_summary(parts)
    if summary:
        out += ["", summary]
    return "\n".join(out) + "\n"


def uvloop_summary(parts: dict[str, list[Row]]) -> str | None:
    """Median uvloop/asyncio ratios over the matrix's cells (WAN) and the CPU sizes."""
    walls, cpus = [], []
    for name in _scenario_names(parts.get("matrix", [])):
        wall, cpu = _loop_ratios(parts["matrix"], name)
        if wall is not None and cpu is not None:
            walls.append(wall)
            cpus.append(cpu)
    loop_cpu = [c for name in _scenario_names(parts.get("cpu", []))
                for _, c in [_loop_ratios(parts["cpu"], name)] if c is not None]
    if not walls and not loop_cpu:
        return None
    text = []
    if walls:
        text.append(f"emulated link, median over {len(walls)} cells: wall "
                    f"{statistics.median(walls):.2f}x, CPU {statistics.median(cpus):.2f}x")
    if loop_cpu:
        text.append(f"loopback CPU: {' / '.join(f'{c:.2f}x' for c in loop_cpu)}")
    return "uvloop / asyncio: " + "; ".join(text) + "."


def targets(parts: dict[str, list[Row]]) -> list[tuple[str, str, str]]:
    """The issue's goals that the rows can judge: (goal, measured, verdict)."""
    out: list[tuple[str, str, str]] = []
    matrix = parts.get("matrix", [])
    for mib, ms, goal in ((64, 100, 0.95), (1024, 100, 0.95), (1024, 300, 0.95),
                          (16, 100, 0.90)):
        name = f"{_size(int(mib * MiB))} @ {ms:g} ms"
        a, u = _row(matrix, name, ASYNCIO), _row(matrix, name, UVLOOP)
        if a is None:
            continue
        got = a.of_floor
        measured = (f"{_fmt(got, '.0%')} ({_fmt(a.seconds, '.2f')} s vs floor "
                    f"{_fmt(a.floor, '.2f')} s)" + (f"; uvloop {_fmt(u.of_floor, '.0%')}"
                                                    if u else ""))
        ok = None if got is None else (got >= goal and a.exact == "yes")
        out.append((f"{name}: >= {goal:.0%} of floor (asyncio, bit-exact)", measured,
                    _verdict(ok)))
    small = parts.get("small", [])
    for contender, what in (("gather-api", "asyncio.gather on one session"),
                            ("cli-from-list", "`aiobisque download --from-list`")):
        for row in small:
            if row.entrant.label != contender or row.scenario.faults.latency != 0.1:
                continue
            x = row.x_floor
            raw = _row(small, row.scenario.name, "raw-gather")
            bound = (f"; plain aiohttp with no limit on requests in flight: "
                     f"{_fmt(raw.x_floor, '.2f', 'x')}" if raw is not None else "")
            out.append((f"{row.scenario.name} via {what}: <= 1.5x floor",
                        f"{_fmt(x, '.2f', 'x')} ({_fmt(row.seconds, '.2f')} s vs floor "
                        f"{_fmt(row.floor, '.2f')} s), exact: {row.exact}{bound}",
                        _verdict(None if x is None else x <= 1.5 and row.exact == "yes")))
    cpu = parts.get("cpu", [])
    for name in _scenario_names(cpu):
        for ours, raw, loop in _PAIRS:
            a, r = _row(cpu, name, ours), _row(cpu, name, raw)
            ratio = _paired_cpu_ratio(a, r)
            if ratio is None or a is None or r is None:
                continue
            out.append((f"{name} loopback: client CPU/GiB <= 1.1x raw copy ({loop})",
                        f"{ratio:.2f}x, paired by repeat (medians {a.cpu_per_gib:.2f} vs "
                        f"{r.cpu_per_gib:.2f} s/GiB)",
                        _verdict(ratio <= 1.1)))
    summary = uvloop_summary(parts)
    if not summary and not _uvloop_is_default():
        out.append(("uvloop: a measured win, or not the default (the default of the CLI "
                    "and the sync API: asyncio)", "not measured: uvloop is not installed",
                    _verdict(True)))
    if summary:
        walls = [w for name in _scenario_names(matrix)
                 for w, _ in [_loop_ratios(matrix, name)] if w is not None]
        cpus = [c for name in _scenario_names(cpu)
                for _, c in [_loop_ratios(cpu, name)] if c is not None]
        # a win: faster on the link (median wall ratio below 1) without costing more CPU
        # on loopback, or cheaper on loopback without being slower on the link
        wall = statistics.median(walls) if walls else None
        loop_cpu = statistics.median(cpus) if cpus else None
        win = None
        if wall is not None or loop_cpu is not None:
            w, c = wall if wall is not None else 1.0, loop_cpu if loop_cpu is not None else 1.0
            win = (w < 0.99 and c <= 1.0) or (c < 0.95 and w <= 1.01)
        default = "uvloop" if _uvloop_is_default() else "asyncio"
        out.append(("uvloop: a measured win, or not the default (the default of the CLI "
                    f"and the sync API: {default})", summary.removeprefix("uvloop / asyncio: "),
                    _verdict(win or default == "asyncio")))
    return out


def _uvloop_is_default() -> bool:
    """Whether aiobisque's own loops (CLI, sync API) are uvloop's without being asked."""
    import os

    from aiobisque import _loop

    saved = os.environ.pop(_loop.LOOP_ENV, None)
    try:
        loop = _loop.new_loop()
        try:
            return "uvloop" in type(loop).__module__
        finally:
            loop.close()
    finally:
        if saved is not None:
            os.environ[_loop.LOOP_ENV] = saved


def targets_section(parts: dict[str, list[Row]], *, commands: Sequence[str],
                    conditions_lines: Sequence[str]) -> str:
    out = ["## Issue #15 targets", "", *conditions_lines, "",
           "Goals of issue #15, judged on the sections below (all from the run above). "
           "Reproduce with:", "", "```", *commands, "```", ""]
    out += markdown_table(("goal", "measured", "verdict"), targets(parts))
    return "\n".join(out) + "\n"


def sections(parts: dict[str, list[Row]], *, repeat: int, cpu_repeat: int,
             command: str, conditions_lines: Sequence[str]) -> dict[str, str]:
    """Section name -> Markdown, for the parts that ran: a partial run (``--part``) replaces
    only the sections of its parts, so ``issue15-targets`` needs all three and ``uvloop``
    both ``matrix`` and ``cpu`` (a section never mixes runs)."""
    out: dict[str, str] = {}
    if set(PARTS) <= parts.keys():
        out["issue15-targets"] = targets_section(parts, commands=[command],
                                                 conditions_lines=conditions_lines)
    if "matrix" in parts:
        out["matrix"] = matrix_section(parts["matrix"], repeat=repeat,
                                       conditions_lines=conditions_lines)
    if "small" in parts:
        out["many-small"] = small_section(parts["small"], repeat=repeat,
                                          conditions_lines=conditions_lines)
    if "cpu" in parts:
        out["cpu-raw-copy"] = cpu_section(parts["cpu"], repeat=cpu_repeat,
                                          conditions_lines=conditions_lines)
    if {"matrix", "cpu"} <= parts.keys():  # its ratios come from both
        out["uvloop"] = uvloop_section(parts, conditions_lines=conditions_lines)
    return out
