"""The clients compared, each downloading one whole array in a process of its own.

``python -m benchmarks.contenders`` reads one :class:`Spec` as JSON on stdin (credentials
travel there, never in argv), sets the client up (imports, login, service discovery: the
array-independent part), measures the download alone with :func:`benchmarks.measure.measure`,
then hashes the result and prints one JSON line: a :class:`Outcome`.

Contenders (:data:`CONTENDERS`):

* ``aiobisque-asyncio`` / ``aiobisque-uvloop``: ``table.load_array`` with default settings
  (``Spec.options`` only in the sweep), on each event loop;
* ``bqapi``: the official client as users run it (``init_local`` +
  ``service('table').load_array``, PyTables decoding);
* ``single-hdf``: what bqapi does without its overhead: one ``format:hdf`` request for the
  whole array with plain aiohttp, decoded by aiobisque's own decoder;
* ``raw-sink``: the requests aiobisque plans (``make_plan`` + ``RemoteArray.url_for``) fetched
  with plain aiohttp at the same concurrency, bodies counted and thrown away: the
  client-side floor. Its result is a byte count, not an array;
* ``raw-copy`` / ``raw-copy-uvloop``: the same requests at the same concurrency, each body
  piece copied into one preallocated numpy ``uint8`` buffer of the array's size (fresh,
  allocated inside the measurement, as a result array is): a raw aiohttp client that copies
  into numpy, without parsing HDF5. Each request's piece goes to its own payload-sized
  region (the few header bytes a body carries beyond its payload are dropped), so it copies
  exactly the array's bytes. Its result is a byte count too;
* ``gather-api``: many arrays (``Spec.uniqs``) at once,
  ``asyncio.gather(*(bq.table.load_array(u, path) ...))`` on one session, default settings;
* ``raw-gather``: the same arrays with plain aiohttp and no limit on requests in flight:
  for every array an ``info`` request, then one ``format:hdf`` request for the whole array
  (bodies read, not decoded), all gathered at once: what this server allows a client that
  makes the same two round trips per array. A byte count, not arrays;
* ``cli-from-list``: the same arrays with ``aiobisque download ROOT --from-list FILE``
  (default options, ``.npy`` outputs) in a process of its own; the password travels in
  ``$BISQUE_PASSWORD``. Its seconds are the command's from start to exit (interpreter start,
  imports and login included: what a user waits for) and its CPU the command's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from benchmarks.measure import Measured, measure

__all__ = ["CONTENDERS", "Outcome", "Spec", "digest", "run"]

#: contender name -> what it is, for reports
CONTENDERS: dict[str, str] = {
    "aiobisque-asyncio": "aiobisque, default settings, asyncio loop",
    "aiobisque-uvloop": "aiobisque, default settings, uvloop",
    "bqapi": "official bqapi client (BQSession + PyTables)",
    "single-hdf": "one format:hdf request with plain aiohttp",
    "raw-sink": "aiobisque's planned requests, plain aiohttp, bodies discarded",
    "raw-copy": "aiobisque's planned requests, plain aiohttp, bodies copied into numpy",
    "raw-copy-uvloop": "raw-copy on uvloop",
    "gather-api": "many arrays: asyncio.gather of table.load_array on one session",
    "gather-api-uvloop": "gather-api on uvloop",
    "cli-from-list": "many arrays: aiobisque download --from-list, default options",
    "raw-gather": "many arrays: plain aiohttp, info + one data request each, all at once",
}

#: attempts per request of the raw sink before it gives up (it has no retry policy of its own)
_SINK_ATTEMPTS = 12


@dataclass
class Spec:
    """One download to run: where, what, which contender and which option overrides."""

    contender: str
    root: str
    user: str
    password: str
    uniq: str
    path: str
    options: dict[str, Any] = field(default_factory=dict)
    uniqs: list[str] = field(default_factory=list)  # many arrays: every resource, in order

    def __repr__(self) -> str:  # never show the password
        return f"Spec({self.contender!r}, {self.root!r}, {self.uniq!r}, {self.path!r})"


@dataclass
class Outcome:
    """What one contender's download cost, and a digest of what it produced."""

    contender: str
    measured: Measured
    nbytes: int  # bytes of the result (the raw sink: payload bytes received)
    digest: str | None  # sha1 of the result's bytes, C order; None for the raw sink
    shape: list[int] | None = None
    dtype: str | None = None
    client_retries: int | None = None
    #: allocating and filling a fresh array of ``nbytes`` in this process, right after the
    #: download: the page-fault cost any client returning a new array pays (not the sink)
    alloc_floor: Measured | None = None
    #: from ``DownloadStats`` when the client fills it (``None`` when it has no such field)
    peak_in_flight: int | None = None
    attempts: int | None = None
    #: the command line only: seconds of ``aiobisque download --help`` (interpreter start
    #: and imports, no network), measured just before, to tell start-up from transfer
    startup_seconds: float | None = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Outcome:
        doc = json.loads(text)
        doc["measured"] = Measured(**doc["measured"])
        if doc.get("alloc_floor"):
            doc["alloc_floor"] = Measured(**doc["alloc_floor"])
        return cls(**doc)


def digest(array: np.ndarray[Any, Any]) -> str:
    """sha1 of an array's bytes in C order (integrity, not security)."""
    data = np.ascontiguousarray(array)
    return hashlib.sha1(data.data, usedforsecurity=False).hexdigest()


def _outcome(spec: Spec, m: Measured, array: np.ndarray[Any, Any],
             retries: int | None = None) -> Outcome:
    return Outcome(spec.contender, m, array.nbytes, digest(array), list(array.shape),
                   array.dtype.str, retries)


async def _aiobisque(spec: Spec) -> Outcome:
    from aiobisque import BisqueSession, DownloadStats

    async with BisqueSession(spec.root, auth=(spec.user, spec.password)) as bq:
        table = bq.service("table")
        stats = DownloadStats()
        with measure() as m:
            array = await table.load_array(spec.uniq, spec.path, stats=stats, **spec.options)
        outcome = _outcome(spec, m, array, stats.retries)
        outcome.peak_in_flight = getattr(stats, "peak_in_flight", None)
        outcome.attempts = getattr(stats, "attempts", None)
        return outcome


def _many_outcome(spec: Spec, m: Measured, arrays: list[np.ndarray[Any, Any]],
                  retries: int | None = None) -> Outcome:
    from benchmarks.scenarios import combined_sha1

    shapes = {a.shape for a in arrays}
    dtypes = {a.dtype.str for a in arrays}
    return Outcome(spec.contender, m, sum(a.nbytes for a in arrays),
                   combined_sha1([digest(a) for a in arrays]),
                   list(arrays[0].shape) if len(shapes) == 1 else None,
                   dtypes.pop() if len(dtypes) == 1 else None, retries)


async def _gather_api(spec: Spec) -> Outcome:
    from aiobisque import BisqueSession, DownloadStats

    async with BisqueSession(spec.root, auth=(spec.user, spec.password)) as bq:
        stats = [DownloadStats() for _ in spec.uniqs]
        with measure() as m:
            arrays = await asyncio.gather(*(
                bq.table.load_array(u, spec.path, stats=s, **spec.options)
                for u, s in zip(spec.uniqs, stats, strict=True)))
        outcome = _many_outcome(spec, m, list(arrays), sum(s.retries for s in stats))
        outcome.attempts = sum(getattr(s, "attempts", 0) for s in stats)
        return outcome


async def _raw_gather(spec: Spec) -> Outcome:
    import aiohttp

    from aiobisque import BisqueSession
    from aiobisque.protocol import split_path, table_url

    async with BisqueSession(spec.root, auth=(spec.user, spec.password)) as bq:
        base = bq.table.base_url
        info = await bq.table.info(spec.uniqs[0], spec.path)  # every array has this shape
        assert info.shape is not None
        whole = ",".join(";" for _ in info.shape)
    parts = split_path(spec.path)
    headers = {"Accept-Encoding": "identity"}
    received = 0

    async def one(http: aiohttp.ClientSession, uniq: str) -> None:
        nonlocal received
        async with http.get(table_url(base, uniq, parts, None, ["info", "format:json"]),
                            headers=headers) as resp:
            resp.raise_for_status()
            await resp.read()
        async with http.get(table_url(base, uniq, parts, whole, ["format:hdf"]),
                            headers=headers) as resp:
            resp.raise_for_status()
            body = await resp.read()  # before the sum: += would read it before the await
        received += len(body)

    connector = aiohttp.TCPConnector(limit=0)
    auth = aiohttp.BasicAuth(spec.user, spec.password)
    async with aiohttp.ClientSession(connector=connector, auth=auth) as http:
        with measure() as m:
            await asyncio.gather(*(one(http, u) for u in spec.uniqs))
    return Outcome(spec.contender, m, received, None)


def _cli_from_list(spec: Spec) -> Outcome:
    import os
    import resource
    import shlex
    import subprocess
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        folder = Path(tmp)
        listing = folder / "arrays.txt"
        outputs = [folder / "out" / f"{u}.npy" for u in spec.uniqs]
        outputs[0].parent.mkdir()  # the command does not create output folders
        listing.write_text("".join(f"{shlex.quote(u)} {shlex.quote(spec.path)} "
                                   f"{shlex.quote(str(o))}\n"
                                   for u, o in zip(spec.uniqs, outputs, strict=True)))
        env = {**os.environ, "BISQUE_PASSWORD": spec.password}
        env.pop("BISQUE_ROOT", None)
        cmd = [sys.executable, "-m", "aiobisque", "download", spec.root,
               "--from-list", str(listing), "--user", spec.user,
               *(f"--{k.replace('_', '-')}={v}" for k, v in spec.options.items())]
        with measure() as startup:
            subprocess.run([sys.executable, "-m", "aiobisque", "download", "--help"],
                           env=env, cwd=tmp, capture_output=True, check=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        with measure() as m:
            proc = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True,
                                  check=False)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            tail = (proc.stdout.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"aiobisque download --from-list exited {proc.returncode}: {tail}")
        m.cpu_seconds += (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        m.rss_growth = after.ru_maxrss * 1024  # the command's peak RSS, not a growth
        m.exact_peak = False
        arrays = [np.load(o) for o in outputs]
        outcome = _many_outcome(spec, m, arrays)
        outcome.startup_seconds = startup.seconds
        return outcome


async def _single_hdf(spec: Spec) -> Outcome:
    import aiohttp

    from aiobisque import BisqueSession
    from aiobisque.decode import decode_into
    from aiobisque.protocol import split_path, table_url

    async with BisqueSession(spec.root, auth=(spec.user, spec.password)) as bq:
        info = await bq.table.info(spec.uniq, spec.path)
        assert info.shape is not None and info.dtype is not None
        whole = ",".join(";" for _ in info.shape)  # the range bqapi sends
        url = table_url(bq.table.base_url, spec.uniq, split_path(spec.path), whole,
                        ["format:hdf"])
    auth = aiohttp.BasicAuth(spec.user, spec.password)
    async with aiohttp.ClientSession(auth=auth) as http:
        with measure() as m:
            async with http.get(url, headers={"Accept-Encoding": "identity"}) as resp:
                resp.raise_for_status()
                body = await resp.read()
            array = np.empty(info.shape, dtype=info.dtype)
            decode_into(body, shape=info.shape, dtype=info.dtype, dest=array,
                        chunk_sel=tuple(slice(None) for _ in info.shape), where=url)
            del body
    return _outcome(spec, m, array)


async def _raw_sink(spec: Spec, copy: bool = False) -> Outcome:
    import aiohttp

    from aiobisque import BisqueSession, Config
    from aiobisque.plan import make_plan
    from aiobisque.selection import normalize_selection

    cfg = Config().replace(**spec.options)
    async with BisqueSession(spec.root, auth=(spec.user, spec.password)) as bq:
        remote = await bq.table.open(spec.uniq, spec.path)
        try:
            plan = make_plan(normalize_selection(..., remote.shape), remote.dtype.itemsize,
                             cfg.request_bytes)
            requests = [(remote.url_for(request), request.nbytes) for request in plan]
        except (TypeError, AttributeError):  # a later client's planner: plan rows here
            requests = _row_requests(bq.table.base_url, spec, tuple(remote.shape),
                                     remote.dtype.itemsize,
                                     getattr(cfg, "request_bytes", 4 << 20))
        urls = [url for url, _ in requests]
        concurrency = getattr(cfg, "concurrency", 16)
        # raw-copy: where each request's payload goes in the buffer (plan order)
        regions, start = [], 0
        for _, nbytes in requests:
            regions.append((start, start + nbytes))
            start += nbytes
        total = start
    headers = {"Accept-Encoding": "identity"}
    pending = iter(zip(urls, regions, strict=True))
    received = copied = 0
    retries = 0
    buffer = np.empty(0, dtype=np.uint8)

    async def fetch(http: aiohttp.ClientSession, url: str, region: tuple[int, int]) -> None:
        nonlocal received, copied, retries
        for _ in range(_SINK_ATTEMPTS):
            delay = 0.1
            got = 0
            pos, end = region
            try:
                async with http.get(url, headers=headers) as resp:
                    if resp.status == 200:
                        async for piece in resp.content.iter_any():
                            got += len(piece)
                            if copy and pos < end:
                                n = min(len(piece), end - pos)
                                buffer[pos:pos + n] = np.frombuffer(piece, np.uint8, n)
                                pos += n
                        if got == resp.content_length:
                            received += got
                            copied += pos - region[0]
                            return
                    elif resp.headers.get("Retry-After", "").isdigit():
                        delay = float(resp.headers["Retry-After"])
            except (aiohttp.ClientError, OSError):
                pass
            retries += 1
            await asyncio.sleep(delay)
        raise RuntimeError(f"raw sink: {url} failed {_SINK_ATTEMPTS} times")

    async def worker(http: aiohttp.ClientSession) -> None:
        for url, region in pending:  # shared iterator, like aiobisque's workers
            await fetch(http, url, region)

    connector = aiohttp.TCPConnector(limit=0)
    auth = aiohttp.BasicAuth(spec.user, spec.password)
    async with aiohttp.ClientSession(connector=connector, auth=auth) as http:
        with measure() as m:
            if copy:  # fresh, like a result array: its page faults are paid while copying
                buffer = np.empty(total, dtype=np.uint8)
            await asyncio.gather(*(worker(http) for _ in range(min(concurrency, len(urls)))))
    if copy:
        return Outcome(spec.contender, m, copied, None, client_retries=retries)
    return Outcome(spec.contender, m, received, None, client_retries=retries)


def _row_requests(base: str, spec: Spec, shape: tuple[int, ...], itemsize: int,
                  request_bytes: int) -> list[tuple[str, int]]:
    """Whole-array requests of about ``request_bytes``, split along the first axis: the
    raw contenders' own plan when ``aiobisque.plan.make_plan`` has another signature."""
    from aiobisque.protocol import split_path, table_url

    row = itemsize
    for n in shape[1:]:
        row *= n
    rows = max(1, request_bytes // max(1, row))
    rest = [f"0;{n - 1}" if n > 1 else "0" for n in shape[1:]]
    out = []
    for lo in range(0, shape[0], rows):
        hi = min(shape[0], lo + rows) - 1
        text = ",".join([str(lo) if lo == hi else f"{lo};{hi}", *rest])
        out.append((table_url(base, spec.uniq, split_path(spec.path), text, ["format:hdf"]),
                    (hi - lo + 1) * row))
    return out


async def _raw_copy(spec: Spec) -> Outcome:
    return await _raw_sink(spec, copy=True)


def _bqapi(spec: Spec) -> Outcome:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyTables' import-time deprecation noise
        from bqapi import BQSession

    bq = BQSession().init_local(spec.user, spec.password, bisque_root=spec.root)
    if bq is None:
        raise RuntimeError("bqapi: the server rejected the login")
    try:
        table = bq.service("table")
        with measure() as m:
            array = table.load_array(spec.uniq, spec.path)
        return _outcome(spec, m, array)
    finally:
        bq.c.close()


def _on_loop(main: Callable[[Spec], Coroutine[Any, Any, Outcome]], loop: str) -> Callable[[Spec], Outcome]:
    def run_it(spec: Spec) -> Outcome:
        if loop == "uvloop":
            import uvloop

            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(main(spec))
        return asyncio.run(main(spec))

    return run_it


_RUNNERS: dict[str, Callable[[Spec], Outcome]] = {
    "aiobisque-asyncio": _on_loop(_aiobisque, "asyncio"),
    "aiobisque-uvloop": _on_loop(_aiobisque, "uvloop"),
    "bqapi": _bqapi,
    "single-hdf": _on_loop(_single_hdf, "asyncio"),
    "raw-sink": _on_loop(_raw_sink, "asyncio"),
    "raw-copy": _on_loop(_raw_copy, "asyncio"),
    "raw-copy-uvloop": _on_loop(_raw_copy, "uvloop"),
    "gather-api": _on_loop(_gather_api, "asyncio"),
    "gather-api-uvloop": _on_loop(_gather_api, "uvloop"),
    "cli-from-list": _cli_from_list,
    "raw-gather": _on_loop(_raw_gather, "asyncio"),
}


def run(spec: Spec) -> Outcome:
    """Run one contender's download in this process."""
    try:
        runner = _RUNNERS[spec.contender]
    except KeyError:
        raise ValueError(
            f"unknown contender {spec.contender!r}; known: {', '.join(CONTENDERS)}"
        ) from None
    outcome = runner(spec)
    with measure() as floor:
        fresh = np.empty(outcome.nbytes, dtype=np.uint8)
        fresh.fill(1)
    del fresh
    outcome.alloc_floor = floor
    return outcome


def main() -> int:
    """Read a :class:`Spec` from stdin, run it, print its :class:`Outcome` as one JSON line."""
    spec = Spec(**json.loads(sys.stdin.read()))
    print(run(spec).to_json(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
