"""The adaptive window's rules, on a fake clock (aiobisque.window is pure)."""

from __future__ import annotations

import pytest

from aiobisque.window import CUT_GAP, ERROR_BURST, ERROR_SPAN, START, Window

MiB = 1024 * 1024


def rounds(w: Window, n: int, *, rate: float, now: float, wait: float = 0.1,
           queued: bool = True, nbytes: int = MiB) -> float:
    """``n`` rounds of successes, each delivering ``rate`` bytes/s; returns the clock."""
    step = nbytes / rate  # seconds between answers at that rate
    for _ in range(n):
        for _ in range(w.limit):  # one round: as many answers as the window at its start
            now += step
            w.on_success(nbytes=nbytes, wait=wait, now=now, queued=queued)
    return now


def test_starts_small_and_fixed_when_not_adaptive() -> None:
    assert Window(256).limit == START
    assert Window(4).limit == 4
    assert Window(256, floor=32).limit == 32
    fixed = Window(64, adaptive=False)
    fixed.on_congestion(1.0)
    fixed.on_success(nbytes=MiB, wait=0.1, now=2.0, queued=True)
    assert fixed.limit == 64


def test_doubles_while_each_round_delivers_more() -> None:
    w = Window(1024)
    now, rate = 0.0, 10 * MiB
    sizes = [w.limit]
    for _ in range(4):
        now = rounds(w, 1, rate=rate, now=now)
        rate *= 2  # a bigger window delivers proportionally more: the link is not full
        sizes.append(w.limit)
    assert sizes == [16, 32, 64, 128, 256]
    assert w.starting


def test_stops_doubling_when_a_round_brings_no_gain() -> None:
    w = Window(1024)
    now = rounds(w, 1, rate=50 * MiB, now=0.0)  # 16 -> 32
    now = rounds(w, 1, rate=100 * MiB, now=now)  # 32 -> 64, twice the rate
    assert w.limit == 64
    now = rounds(w, 1, rate=101 * MiB, now=now)  # 64 -> 128 meanwhile, but no more delivered
    assert not w.starting
    assert w.limit == 40  # the last size that paid (32), with a quarter of headroom
    before = w.limit
    rounds(w, 3, rate=101 * MiB, now=now)
    assert before < w.limit <= before + 3  # one request per round from now on


def test_no_growth_without_queued_demand() -> None:
    w = Window(1024)
    rounds(w, 5, rate=10 * MiB, now=0.0, queued=False)
    assert w.limit == START


def test_never_beyond_the_ceiling() -> None:
    w = Window(40)
    now, rate = 0.0, 1.0 * MiB
    for _ in range(6):
        now = rounds(w, 1, rate=rate, now=now)
        rate *= 2
    assert w.limit == 40


def test_congestion_halves_once_per_burst_down_to_the_floor() -> None:
    w = Window(256, floor=3)
    w.on_congestion(10.0)
    assert w.limit == 8 and not w.starting
    w.on_congestion(10.0 + CUT_GAP / 2)  # the same burst
    assert w.limit == 8
    w.on_congestion(10.0 + 2 * CUT_GAP)
    w.on_congestion(10.0 + 4 * CUT_GAP)
    w.on_congestion(10.0 + 6 * CUT_GAP)
    assert w.limit == 3


@pytest.mark.parametrize(("gap", "cut"), [(0.1, True), (ERROR_SPAN * 0.6, False)])
def test_a_burst_of_500s_halves_a_grown_window_a_lone_one_does_not(gap: float,
                                                                  cut: bool) -> None:
    w = Window(256)
    now = rounds(w, 1, rate=20 * MiB, now=0.0)
    now = rounds(w, 1, rate=40 * MiB, now=now)
    assert w.limit == 64
    for i in range(ERROR_BURST):
        w.on_server_error(now + 2 + i * gap)
    assert w.limit == (32 if cut else 64)


def test_a_burst_of_500s_at_the_start_size_keeps_it() -> None:
    # one exporter that clashes at any concurrency: fewer requests only leave it idle
    w = Window(256)
    for i in range(4 * ERROR_BURST):
        w.on_server_error(1.0 + i * 0.05)
    assert w.limit == START
    w = Window(256)
    now = rounds(w, 2, rate=20 * MiB, now=0.0)
    for burst in range(4):
        for i in range(ERROR_BURST):
            w.on_server_error(now + 2 * (burst + 1) + i * 0.05)
    assert w.limit == START  # halved to the start, and no further


def test_rising_latency_shrinks_the_window() -> None:
    steady, queueing = Window(256), Window(256)
    for w, wait in ((steady, 0.1), (queueing, 0.5)):
        now = rounds(w, 1, rate=20 * MiB, now=0.0, wait=0.1)  # the least wait seen: 0.1 s
        rounds(w, 1, rate=40 * MiB, now=now, wait=wait)  # 0.5 s: the server queues requests
    assert steady.limit == 64 and steady.starting
    assert queueing.limit == 48 and not queueing.starting


def test_latency_never_shrinks_the_window_below_its_start() -> None:
    w = Window(256)
    now = rounds(w, 1, rate=20 * MiB, now=0.0, wait=0.1)
    now = rounds(w, 1, rate=40 * MiB, now=now, wait=0.1)
    assert w.limit == 64
    for _ in range(6):  # the server queues more and more: cut a quarter at a time...
        now = rounds(w, 1, rate=40 * MiB, now=now + 2, wait=1.0, queued=False)
    assert w.limit == START  # ...down to the start, which a slow server is not blamed for
    w.on_congestion(now + 2)
    assert w.limit == START // 2  # an explicit overload signal goes below it
