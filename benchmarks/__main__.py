"""``python -m benchmarks [sweep|matrix] [--quick] [--scenario NAME ...] [--repeat N] ...``.

Without a command it runs the scenarios and contenders of :mod:`benchmarks.scenarios` and
writes the ``results`` section of ``benchmarks/RESULTS.md``; ``sweep`` runs the
``request_bytes`` x ``concurrency`` grid and writes the ``sweep`` section; ``matrix`` runs
issue #15's benchmarks (:mod:`benchmarks.matrix`: sizes x latencies, many small arrays, CPU
against a raw copy, uvloop) and writes their sections only with ``--write`` (or
``--output``). ``--quick`` runs tiny arrays once (seconds) and writes nothing unless
``--output`` is given. The exit status is 1 when any download failed or was not bit-exact.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks import matrix, report
from benchmarks.harness import Entrant, Row, run_scenarios
from benchmarks.scenarios import QUICK_SCENARIOS, SCENARIOS, Scenario, default_cache
from benchmarks.sweep import CONCURRENCY, REQUEST_MIB, grid

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", choices=("run", "sweep", "matrix"), default="run")
    parser.add_argument("--quick", action="store_true",
                        help="tiny arrays, one repeat, two contenders: seconds in total")
    parser.add_argument("--scenario", action="append", default=[], metavar="NAME",
                        help="run only scenarios whose name starts with NAME (repeatable, "
                             "case-insensitive: WAN, 'Faulty WAN', Loopback, Scale)")
    parser.add_argument("--contender", action="append", default=[], metavar="NAME",
                        help="run only these contenders (repeatable)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="runs of each download (default 3, 1 with --quick)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help=f"sample data folder (default {default_cache()})")
    parser.add_argument("--output", type=Path, default=None,
                        help=f"Markdown file to update (default {RESULTS}; none with --quick)")
    parser.add_argument("--request-mib", default=",".join(f"{m:g}" for m in REQUEST_MIB),
                        help="sweep: request sizes in MiB, comma-separated")
    parser.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)),
                        help="sweep: concurrency values, comma-separated")
    full = matrix.full_plan()
    group = parser.add_argument_group("matrix (issue #15)")
    group.add_argument("--part", action="append", choices=matrix.PARTS, default=[],
                       help="run only this part (repeatable; default all: matrix, small, "
                            "cpu; uvloop ratios come from matrix and cpu)")
    group.add_argument("--sizes", default=None, metavar="MIB,...",
                       help="array sizes in MiB (default "
                            f"{','.join(f'{m:g}' for m in full.sizes_mib)})")
    group.add_argument("--latencies", default=None, metavar="MS,...",
                       help="link latencies in ms (default "
                            f"{','.join(f'{m:g}' for m in full.latencies_ms)})")
    group.add_argument("--small-count", type=int, default=None, metavar="N",
                       help=f"many small arrays: how many (default {full.small_count})")
    group.add_argument("--small-latencies", default=None, metavar="MS,...",
                       help="many small arrays: latencies in ms (default "
                            f"{','.join(f'{m:g}' for m in full.small_latencies_ms)})")
    group.add_argument("--cpu-sizes", default=None, metavar="MIB,...",
                       help="CPU versus raw copy: sizes in MiB (default "
                            f"{','.join(f'{m:g}' for m in full.cpu_sizes_mib)})")
    group.add_argument("--cpu-repeat", type=int, default=None, metavar="N",
                       help="CPU part: runs of each download (default: --repeat, at least 3; "
                            "1 with --quick)")
    group.add_argument("--write", action="store_true",
                       help=f"matrix: update the sections of {RESULTS} (or --output)")
    return parser


def _select(scenarios: Sequence[Scenario], names: Sequence[str]) -> list[Scenario]:
    if not names:
        return list(scenarios)
    wanted = [n.lower() for n in names]
    chosen = [s for s in scenarios if any(s.name.lower().startswith(w) for w in wanted)]
    if not chosen:
        known = ", ".join(s.name for s in scenarios)
        raise SystemExit(f"no scenario matches {', '.join(names)}; known: {known}")
    return chosen


def _numbers(text: str, kind: type[float] | type[int], what: str) -> list[float] | list[int]:
    try:
        values = [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(f"{what} must be comma-separated numbers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise SystemExit(f"{what} must be positive numbers, got {text!r}")
    return values


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    if repeat < 1:
        raise SystemExit("--repeat must be at least 1")
    cache = args.cache_dir or default_cache()
    output = args.output if args.output is not None or args.quick else RESULTS
    command = shlex.join(["python", "-m", "benchmarks", *(sys.argv[1:] if argv is None
                                                          else argv)])
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    all_scenarios = QUICK_SCENARIOS if args.quick else SCENARIOS

    if args.command == "matrix":
        return _matrix(args, repeat, cache, command, load_before)

    if args.command == "sweep":
        names = args.scenario or ["WAN", "Loopback"]
        scenarios = [s for s in _select(all_scenarios, names) if s.name in ("WAN", "Loopback")]
        request_mib = _numbers(args.request_mib, float, "--request-mib")
        concurrency = [int(c) for c in _numbers(args.concurrency, int, "--concurrency")]
        if args.quick:
            request_mib, concurrency = request_mib[:2], concurrency[:2]
        combinations = grid(request_mib, concurrency)
        rows = run_scenarios(scenarios, lambda s: combinations, repeat=repeat, cache=cache)
        text = report.sweep_section(rows, repeat=repeat,
                                    conditions_lines=report.conditions(command, load_before),
                                    request_mib=request_mib, concurrency=concurrency)
        section = "sweep"
    else:
        scenarios = _select(all_scenarios, args.scenario)
        unknown = set(args.contender) - {c for s in SCENARIOS for c in s.contenders}
        if unknown:
            raise SystemExit(f"unknown contender(s) {', '.join(sorted(unknown))}")

        def entrants(s: Scenario) -> list[Entrant]:
            return [Entrant(c) for c in s.contenders
                    if not args.contender or c in args.contender]

        rows = run_scenarios(scenarios, entrants, repeat=repeat, cache=cache)
        text = report.results_section(
            rows, repeat=repeat, conditions_lines=report.conditions(command, load_before))
        section = "results"
    print()
    print(text)
    if output is not None:
        report.update_section(output, section, text)
        print(f"wrote the {section} section of {output}")
    return 1 if _any_failed(rows) else 0


def _matrix(args: argparse.Namespace, repeat: int, cache: Path, command: str,
            load_before: str) -> int:
    import dataclasses

    plan = matrix.quick_plan() if args.quick else matrix.full_plan()
    changes: dict[str, object] = {}
    for option, name, kind in (("sizes", "sizes_mib", float), ("latencies", "latencies_ms", float),
                               ("small_latencies", "small_latencies_ms", float),
                               ("cpu_sizes", "cpu_sizes_mib", float)):
        text = getattr(args, option)
        if text is not None:
            changes[name] = tuple(_numbers(text, kind, "--" + option.replace("_", "-")))
    if args.small_count is not None:
        if args.small_count < 1:
            raise SystemExit("--small-count must be at least 1")
        changes["small_count"] = args.small_count
    if args.part:
        changes["parts"] = tuple(p for p in matrix.PARTS if p in args.part)
    plan = dataclasses.replace(plan, **changes)  # type: ignore[arg-type]
    cpu_repeat = args.cpu_repeat if args.cpu_repeat is not None else (
        1 if args.quick else max(3, repeat))
    if cpu_repeat < 1:
        raise SystemExit("--cpu-repeat must be at least 1")
    output = args.output if args.output is not None else (RESULTS if args.write else None)
    known = set(plan.matrix_contenders + plan.small_contenders + plan.cpu_contenders)
    unknown = set(args.contender) - known
    if unknown:
        raise SystemExit(f"unknown contender(s) {', '.join(sorted(unknown))}; "
                         f"known here: {', '.join(sorted(known))}")
    parts = matrix.run_plan(plan, repeat=repeat, cpu_repeat=cpu_repeat, cache=cache,
                            contenders=args.contender)
    conditions = report.conditions(command, load_before)
    texts = matrix.sections(parts, repeat=repeat, cpu_repeat=cpu_repeat, command=command,
                            conditions_lines=conditions)
    if "issue15-targets" not in texts:  # a partial run: print (not write) what it can judge
        print()
        print("\n".join(report.markdown_table(("goal", "measured", "verdict"),
                                              matrix.targets(parts))))
    if "uvloop" not in texts and ("matrix" in parts or "cpu" in parts):
        print()
        print(matrix.uvloop_section(parts, conditions_lines=conditions))
    for name, text in texts.items():
        print()
        print(text)
        if output is not None:
            report.update_section(output, name, text)
    if output is not None:
        print(f"wrote the {', '.join(texts)} sections of {output}")
    return 1 if any(_any_failed(rows) for rows in parts.values()) else 0


def _any_failed(rows: Sequence[Row]) -> bool:
    return any(row.failed for row in rows)


if __name__ == "__main__":
    sys.exit(main())
