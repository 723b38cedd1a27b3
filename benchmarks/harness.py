"""Running scenarios: the embedded server in this process, each download in a child process.

For each scenario the server is started once (in a thread, so its statistics can be read
here) and every repeat runs each entrant in a fresh ``python -m benchmarks.contenders``
process. Before each download the server's fault plan is reinstalled (numbering data
requests from 0, with the repeat's seed) and its statistics are zeroed, so the requests and
retries it counts belong to that download alone. The order of entrants rotates from one
repeat to the next, so none always runs first (cold caches) or last (a busier machine).
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aiobisque.server import serve_in_thread
from benchmarks.contenders import Outcome, Spec
from benchmarks.scenarios import GiB, SampleArray, Scenario, sample_for

__all__ = ["Entrant", "Row", "Run", "run_scenarios"]

_REPO = Path(__file__).resolve().parent.parent
# a throwaway account of the embedded server, handed to children on stdin
_USER, _PASSWORD = "bench", "bench-password"
_CHILD_TIMEOUT = 900.0
_PRIME_BLOCK = 256 * 2**20


def prime_memory(nbytes: int) -> None:
    """Touch ``nbytes`` of fresh memory once, then free it.

    On a virtual machine the first touch of guest memory the host has not backed yet costs
    far more than an ordinary page fault (measured here: ~2 s/GiB the first time, ~0.1 s/GiB
    after). Touching the memory the downloads will use beforehand makes every contender pay
    an ordinary machine's price, whichever runs first.
    """
    blocks = []
    for _ in range(max(1, -(-nbytes // _PRIME_BLOCK))):
        block = np.empty(_PRIME_BLOCK, dtype=np.uint8)
        block.fill(1)
        blocks.append(block)
    del blocks


@dataclass(frozen=True)
class Entrant:
    """A contender with option overrides (empty: the defaults), as named in reports."""

    contender: str
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        if not self.options:
            return self.contender
        return self.contender + " " + " ".join(f"{k}={v}" for k, v in self.options)


@dataclass
class Run:
    """One download: the child's outcome (or its error) and what the server saw."""

    entrant: Entrant
    repeat: int
    outcome: Outcome | None
    error: str | None
    requests: int  # data requests the server received, retries included
    retries: int  # data requests that repeated an earlier one
    faults: dict[str, int]
    exact: bool | None  # None: the contender does not produce an array (raw sink)
    #: CPU seconds of this (the server's) process while the child ran: the embedded server's
    #: cost of serving the download (this process's main thread only waits meanwhile)
    server_cpu: float = 0.0
    server_peak_in_flight: int = 0  # data requests being served at once, at most
    other_requests: int = 0  # requests that were not data requests (info, session, ...)


@dataclass
class Row:
    """The repeats of one entrant on one scenario, summarised by medians."""

    scenario: Scenario
    sample: SampleArray
    entrant: Entrant
    runs: list[Run] = field(default_factory=list)

    @property
    def ok_runs(self) -> list[Run]:
        return [r for r in self.runs if r.outcome is not None and r.exact is not False]

    @property
    def failed(self) -> list[Run]:
        return [r for r in self.runs if r.outcome is None or r.exact is False]

    def _median(self, value: Callable[[Run], float]) -> float | None:
        values = [value(r) for r in self.ok_runs]
        return statistics.median(values) if values else None

    @property
    def seconds(self) -> float | None:
        return self._median(lambda r: _measured(r).seconds)

    @property
    def mb_per_s(self) -> float | None:
        s = self.seconds
        return self.sample.nbytes / 1e6 / s if s else None

    @property
    def of_link_limit(self) -> float | None:
        limit, s = self.scenario.link_limit(), self.seconds
        return limit / s if limit and s else None

    @property
    def floor(self) -> float | None:
        return self.scenario.floor()

    @property
    def of_floor(self) -> float | None:
        """Issue #15's measure: floor / seconds (1.0 = the floor itself)."""
        floor, s = self.scenario.floor(), self.seconds
        return floor / s if floor and s else None

    @property
    def x_floor(self) -> float | None:
        """seconds / floor (how many times the floor)."""
        floor, s = self.scenario.floor(), self.seconds
        return s / floor if floor and s else None

    @property
    def cpu_seconds(self) -> float | None:
        return self._median(lambda r: _measured(r).cpu_seconds)

    @property
    def server_cpu(self) -> float | None:
        return self._median(lambda r: r.server_cpu)

    @property
    def startup_seconds(self) -> float | None:
        values = [r.outcome.startup_seconds for r in self.ok_runs
                  if r.outcome is not None and r.outcome.startup_seconds is not None]
        return statistics.median(values) if values else None

    @property
    def server_peak_in_flight(self) -> float | None:
        return self._median(lambda r: float(r.server_peak_in_flight))

    @property
    def other_requests(self) -> float | None:
        return self._median(lambda r: float(r.other_requests))

    @property
    def peak_in_flight(self) -> float | None:
        values = [r.outcome.peak_in_flight for r in self.ok_runs
                  if r.outcome is not None and r.outcome.peak_in_flight is not None]
        return statistics.median(values) if values else None

    @property
    def cpu_per_gib(self) -> float | None:
        return self._median(lambda r: _measured(r).cpu_seconds / (self.sample.nbytes / GiB))

    @property
    def faults_per_gib(self) -> float | None:
        """Minor page faults per GiB during the download (fresh memory touched)."""
        return self._median(lambda r: _measured(r).page_faults / (self.sample.nbytes / GiB))

    @property
    def alloc_cpu_per_gib(self) -> float | None:
        """CPU s/GiB to allocate and fill a fresh array of this size in the child."""
        return self._median(lambda r: _floor(r).cpu_seconds / (self.sample.nbytes / GiB))

    @property
    def rss_growth(self) -> float | None:
        """Peak RSS growth during the download, as a multiple of the array's size."""
        return self._median(lambda r: _measured(r).rss_growth / self.sample.nbytes)

    @property
    def rss_growth_bytes(self) -> float | None:
        return self._median(lambda r: float(_measured(r).rss_growth))

    @property
    def requests(self) -> float | None:
        return self._median(lambda r: float(r.requests))

    @property
    def retries(self) -> float | None:
        return self._median(lambda r: float(r.retries))

    @property
    def exact(self) -> str:
        """``"yes"`` (every result bit-exact), ``"bytes"`` (raw sink: every byte
        arrived), or ``"NO"``."""
        if not self.runs or self.failed:
            return "NO"
        return "bytes" if all(r.exact is None for r in self.runs) else "yes"


def _measured(run: Run) -> Any:
    assert run.outcome is not None
    return run.outcome.measured


def _floor(run: Run) -> Any:
    assert run.outcome is not None and run.outcome.alloc_floor is not None
    return run.outcome.alloc_floor


def _child(spec: Spec) -> Outcome:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.contenders"],
        input=json.dumps(asdict(spec)),  # credentials on stdin, never in argv
        capture_output=True,
        text=True,
        timeout=_CHILD_TIMEOUT,
        cwd=_REPO,
        env=env,
        check=False,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{spec.contender} exited with {proc.returncode}: {tail}")
    return Outcome.from_json(lines[-1])


def _check(outcome: Outcome, sample: SampleArray) -> bool | None:
    if outcome.digest is None:  # the raw sink: every payload byte (plus HDF5 headers) arrived
        return None if outcome.nbytes >= sample.nbytes else False
    return (
        outcome.digest == sample.sha1
        and tuple(outcome.shape or ()) == sample.shape
        and outcome.dtype == sample.dtype
    )


def run_scenarios(
    scenarios: Sequence[Scenario],
    entrants: Callable[[Scenario], Sequence[Entrant]],
    *,
    repeat: int,
    cache: Path,
    log: Callable[[str], None] = print,
) -> list[Row]:
    """Run every entrant of every scenario ``repeat`` times; one :class:`Row` per pair.

    Entrants on uvloop are left out (said once) when uvloop is not installed: it is an
    optional extra, and the reports show a missing row as ``-``.
    """
    rows: list[Row] = []
    no_uvloop = importlib.util.find_spec("uvloop") is None
    said = False
    for scenario in scenarios:
        sample = sample_for(scenario, cache)
        prime_memory(4 * scenario.nbytes + 64 * 2**20)  # bqapi needs ~3x the array
        chosen = list(entrants(scenario))
        if no_uvloop and any(e.contender.endswith("uvloop") for e in chosen):
            chosen = [e for e in chosen if not e.contender.endswith("uvloop")]
            if not said:
                log("uvloop is not installed (pip install 'aiobisque[uvloop]'): "
                    "its contenders are left out")
                said = True
        mine = {e: Row(scenario, sample, e) for e in chosen}
        rows.extend(mine.values())
        with serve_in_thread(cache, users={_USER: _PASSWORD},
                             faults=scenario.faults_for(0)) as server:
            for r in range(repeat):
                shift = r % max(1, len(chosen))
                for entrant in chosen[shift:] + chosen[:shift]:
                    server.faults = scenario.faults_for(r)
                    server.stats.reset()
                    spec = Spec(entrant.contender, server.root, _USER, _PASSWORD, sample.uniq,
                                sample.path, dict(entrant.options), list(sample.uniqs))
                    outcome: Outcome | None = None
                    error = None
                    cpu0 = time.process_time()
                    try:
                        outcome = _child(spec)
                    except (RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
                        error = str(exc)
                    server_cpu = time.process_time() - cpu0
                    stats = server.stats
                    run = Run(entrant, r, outcome, error, stats.requests["data"], stats.retries,
                              dict(stats.faults),
                              _check(outcome, sample) if outcome else False, server_cpu,
                              stats.peak_in_flight,
                              sum(n for k, n in stats.requests.items() if k != "data"))
                    mine[entrant].runs.append(run)
                    log(_describe(scenario, run))
    return rows


def _describe(scenario: Scenario, run: Run) -> str:
    head = f"  {scenario.name:14} #{run.repeat} {run.entrant.label:34}"
    if run.outcome is None:
        return f"{head} FAILED: {run.error}"
    m = run.outcome.measured
    verdict = {True: "exact", None: "bytes ok", False: "MISMATCH"}[run.exact]
    return (f"{head} {m.seconds:7.2f} s  cpu {m.cpu_seconds:6.2f} s  "
            f"faults {m.page_faults:6d}  rss +{m.rss_growth / 2**20:7.1f} MiB  {run.requests:4d} req  "
            f"{run.retries:3d} retries  {verdict}"
            + (f"  peak in flight {run.outcome.peak_in_flight}"
               if run.outcome.peak_in_flight is not None else "")
            + f"  server: peak {run.server_peak_in_flight} in flight, "
              f"{run.other_requests} other req, cpu {run.server_cpu:.2f} s")
