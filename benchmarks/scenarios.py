"""Scenarios (a link, an array size, the contenders) and their cached sample data.

Every array is a float32 volume of 256 x 256 planes written by
:func:`aiobisque.server.samples.write_array` into a cache folder and reused across runs,
with the sha1 of its bytes cached beside it so each download is checked bit-exact without
reading the file again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from aiobisque.config import MiB
from aiobisque.server import FaultPlan, samples

__all__ = [
    "ALL_CONTENDERS",
    "QUICK_SCENARIOS",
    "SCENARIOS",
    "SampleArray",
    "Scenario",
    "combined_sha1",
    "default_cache",
    "matrix_scenarios",
    "prepare",
    "prepare_many",
    "sample_for",
]

GiB = 1024 * MiB
PATH = "volume"
_PLANE = (256, 256)
_DTYPE = np.dtype("float32")
_SEED = 5

ALL_CONTENDERS = ("aiobisque-asyncio", "aiobisque-uvloop", "bqapi", "single-hdf", "raw-sink")
_LOOPBACK_CONTENDERS = ("aiobisque-asyncio", "aiobisque-uvloop", "bqapi", "raw-sink")

#: the WAN link of the issue: 100 ms per request, 16 MB/s per connection, 160 MB/s shared
WAN = FaultPlan(latency=0.1, bandwidth=16e6, total_bandwidth=160e6)
#: the WAN link, and a misbehaving server: 10% 503, 5% 429 (Retry-After: 1 s), 5% resets
FAULTY_WAN = dataclasses.replace(
    WAN, error_rate=0.10, error_statuses=(503,), throttle_rate=0.05, retry_after="1",
    reset_rate=0.05,
)
NO_FAULTS = FaultPlan()


@dataclass(frozen=True)
class Scenario:
    """One link and array size, and who is compared on it."""

    name: str
    nbytes: int
    faults: FaultPlan
    contenders: tuple[str, ...]
    about: str
    #: arrays in the scenario: 1, or that many resources of ``nbytes / count`` each (the
    #: many-small-arrays case); ``nbytes`` is always the total
    count: int = 1

    def link_limit(self) -> float | None:
        """Fastest possible download in seconds, ``latency + bytes / shared bandwidth``.

        ``None`` when the link has no shared cap (loopback: the machine is the limit).
        """
        if not self.faults.total_bandwidth:
            return None
        return self.faults.latency + self.nbytes / self.faults.total_bandwidth

    def floor(self) -> float | None:
        """Issue #15's floor in seconds: one ``info`` round trip, one data round trip, and
        the bytes at the shared bandwidth, ``2 x latency + bytes / shared bandwidth``.

        The link puts its latency on every request, and a download cannot send its data
        requests before the ``info`` answer gives it the shape. For many arrays fetched at
        once the same two round trips overlap, so the floor is the same formula with the
        total bytes. ``None`` without a shared cap (loopback).
        """
        if not self.faults.total_bandwidth:
            return None
        return 2 * self.faults.latency + self.nbytes / self.faults.total_bandwidth

    def faults_for(self, repeat: int) -> FaultPlan:
        """The plan for one repeat: a different seed each time, so repeats sample the
        faults' distribution instead of replaying one draw."""
        return dataclasses.replace(self.faults, seed=repeat)


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("WAN", 64 * MiB, WAN, ALL_CONTENDERS,
             "100 ms per request, 16 MB/s per connection, 160 MB/s shared"),
    Scenario("Faulty WAN", 64 * MiB, FAULTY_WAN, ALL_CONTENDERS,
             "WAN + 10% 503, 5% 429 (Retry-After: 1), 5% connection resets"),
    Scenario("Loopback", 256 * MiB, NO_FAULTS, _LOOPBACK_CONTENDERS, "127.0.0.1, no caps"),
    Scenario("Scale 64 MiB", 64 * MiB, NO_FAULTS, _LOOPBACK_CONTENDERS, "127.0.0.1, no caps"),
    Scenario("Scale 1 GiB", GiB, NO_FAULTS, _LOOPBACK_CONTENDERS, "127.0.0.1, no caps"),
)

_QUICK_WAN = FaultPlan(latency=0.02, bandwidth=16e6, total_bandwidth=160e6)
_QUICK_CONTENDERS = ("aiobisque-asyncio", "raw-sink")

#: seconds in total: tiny arrays, two contenders (``--quick``, exercised by the tests)
QUICK_SCENARIOS: tuple[Scenario, ...] = (
    Scenario("WAN", 2 * MiB, _QUICK_WAN, _QUICK_CONTENDERS,
             "20 ms per request, 16 MB/s per connection, 160 MB/s shared (quick)"),
    Scenario("Loopback", 4 * MiB, NO_FAULTS, _QUICK_CONTENDERS, "127.0.0.1, no caps (quick)"),
)


def default_cache() -> Path:
    """``$XDG_CACHE_HOME/aiobisque/benchmarks`` (or ``~/.cache/...``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "aiobisque" / "benchmarks"


@dataclass(frozen=True)
class SampleArray:
    """A sample volume on disk: its resource, shape and the sha1 of its bytes."""

    uniq: str
    path: str
    shape: tuple[int, ...]
    dtype: str
    sha1: str
    #: many arrays (:func:`prepare_many`): every resource, each holding ``path`` of
    #: ``shape``; ``sha1`` is then :func:`combined_sha1` of their digests in this order
    uniqs: tuple[str, ...] = ()

    @property
    def nbytes(self) -> int:
        """Bytes of the array (of all arrays, for a set of many)."""
        n = np.dtype(self.dtype).itemsize
        for d in self.shape:
            n *= d
        return n * max(1, len(self.uniqs))


def combined_sha1(digests: list[str]) -> str:
    """One digest for many arrays: sha1 of their sha1s (hex, in order, newline-separated)."""
    return hashlib.sha1("\n".join(digests).encode(), usedforsecurity=False).hexdigest()


def _shape(nbytes: int) -> tuple[int, int, int]:
    plane = _PLANE[0] * _PLANE[1] * _DTYPE.itemsize
    if nbytes % plane:
        raise ValueError(f"sample sizes are whole 256x256 float32 planes, not {nbytes} bytes")
    return (nbytes // plane, *_PLANE)


def _file_sha1(file: Path, shape: tuple[int, ...]) -> str:
    digest = hashlib.sha1(usedforsecurity=False)
    with h5py.File(file, "r") as h5:
        ds = h5[PATH]
        if tuple(ds.shape) != shape or ds.dtype != _DTYPE:
            raise ValueError(f"{file}: unexpected {ds.shape} {ds.dtype}")
        step = max(1, (16 * MiB) // (shape[1] * shape[2] * _DTYPE.itemsize))
        for start in range(0, shape[0], step):
            block = np.ascontiguousarray(ds[start : start + step])
            digest.update(block.data)
    return digest.hexdigest()


def prepare(folder: Path, nbytes: int) -> SampleArray:
    """The sample volume of ``nbytes`` in ``folder``: written (and hashed) on first use."""
    folder.mkdir(parents=True, exist_ok=True)
    shape = _shape(nbytes)
    uniq = f"00-bench{nbytes // 1024}k"
    file = samples.resource_file(folder, uniq)
    sidecar = file.with_suffix(".sha1.json")
    if file.exists() and sidecar.exists():
        try:
            doc = json.loads(sidecar.read_text())
            stat = file.stat()
            if doc["size"] == stat.st_size and doc["mtime_ns"] == stat.st_mtime_ns and \
                    tuple(doc["shape"]) == shape:
                return SampleArray(uniq, PATH, shape, _DTYPE.str, doc["sha1"])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # stale or damaged cache: rewrite below
    if file.exists():
        file.unlink()
    print(f"writing a {nbytes / MiB:g} MiB sample volume to {file} ...", flush=True)
    samples.write_array(folder, uniq, PATH, shape, dtype=_DTYPE, seed=_SEED)
    sha1 = _file_sha1(file, shape)
    stat = file.stat()
    sidecar.write_text(json.dumps({"size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                                   "shape": list(shape), "sha1": sha1}))
    return SampleArray(uniq, PATH, shape, _DTYPE.str, sha1)


def prepare_many(folder: Path, count: int, nbytes_each: int) -> SampleArray:
    """``count`` resources of one ``nbytes_each`` float32 image each, as a user's list of
    arrays (one image per resource, the common case of a BisQue dataset), written once.

    The resources are ``01-small{KiB}k-{i:05d}`` in ``folder`` (beside the volumes, so one
    server serves both); their digests are cached in one sidecar file.
    """
    folder.mkdir(parents=True, exist_ok=True)
    items = nbytes_each // _DTYPE.itemsize
    side = math.isqrt(items)
    shape = (side, side) if side * side == items else (items,)
    if items * _DTYPE.itemsize != nbytes_each or items == 0:
        raise ValueError(f"small arrays are whole float32 items, not {nbytes_each} bytes")
    stem = f"01-small{nbytes_each // 1024}k"
    uniqs = tuple(f"{stem}-{i:05d}" for i in range(count))
    sidecar = folder / f"{stem}.sha1.json"
    try:
        doc = json.loads(sidecar.read_text())
        if tuple(doc["shape"]) == shape and len(doc["sha1"]) >= count and all(
                samples.resource_file(folder, u).exists() for u in uniqs):
            digests = list(doc["sha1"][:count])
            return SampleArray(uniqs[0], PATH, shape, _DTYPE.str, combined_sha1(digests), uniqs)
    except (OSError, ValueError, KeyError, TypeError):
        pass  # missing, stale or damaged cache: (re)write below
    print(f"writing {count} sample arrays of {nbytes_each / 1024:g} KiB to {folder} ...",
          flush=True)
    digests = []
    for i, uniq in enumerate(uniqs):
        file = samples.resource_file(folder, uniq)
        if file.exists():
            file.unlink()
        samples.write_array(folder, uniq, PATH, shape, dtype=_DTYPE, seed=1000 + i)
        with h5py.File(file, "r") as h5:
            data = np.ascontiguousarray(h5[PATH][()])
        digests.append(hashlib.sha1(data.data, usedforsecurity=False).hexdigest())
    sidecar.write_text(json.dumps({"shape": list(shape), "sha1": digests}))
    return SampleArray(uniqs[0], PATH, shape, _DTYPE.str, combined_sha1(digests), uniqs)


def sample_for(scenario: Scenario, folder: Path) -> SampleArray:
    """The cached sample data of ``scenario``: one volume, or ``count`` small arrays."""
    if scenario.count > 1:
        return prepare_many(folder, scenario.count, scenario.nbytes // scenario.count)
    return prepare(folder, scenario.nbytes)


def matrix_scenarios(sizes_mib: list[float], latencies_ms: list[float],
                     contenders: tuple[str, ...]) -> list[Scenario]:
    """One scenario per size x latency on the issue's emulated link (16 MB/s per
    connection, 160 MB/s shared), sizes first."""
    out = []
    for mib in sizes_mib:
        for ms in latencies_ms:
            plan = dataclasses.replace(WAN, latency=ms / 1000)
            out.append(Scenario(f"{_mib_name(mib)} @ {ms:g} ms", int(mib * MiB), plan,
                                contenders, f"{ms:g} ms per request, 16 MB/s per connection, "
                                "160 MB/s shared"))
    return out


def _mib_name(mib: float) -> str:
    return f"{mib / 1024:g} GiB" if mib >= 1024 else f"{mib:g} MiB"
