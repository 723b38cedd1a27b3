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
  client-side floor. Its result is a byte count, not an array.
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
        return _outcome(spec, m, array, stats.retries)


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


async def _raw_sink(spec: Spec) -> Outcome:
    import aiohttp

    from aiobisque import BisqueSession, Config
    from aiobisque.plan import make_plan
    from aiobisque.selection import normalize_selection

    cfg = Config().replace(**spec.options)
    async with BisqueSession(spec.root, auth=(spec.user, spec.password)) as bq:
        remote = await bq.table.open(spec.uniq, spec.path)
        plan = make_plan(normalize_selection(..., remote.shape), remote.dtype.itemsize,
                         cfg.request_bytes)
        urls = [remote.url_for(request) for request in plan]
    headers = {"Accept-Encoding": "identity"}
    pending = iter(urls)
    received = 0
    retries = 0

    async def fetch(http: aiohttp.ClientSession, url: str) -> None:
        nonlocal received, retries
        for _ in range(_SINK_ATTEMPTS):
            delay = 0.1
            got = 0
            try:
                async with http.get(url, headers=headers) as resp:
                    if resp.status == 200:
                        async for piece in resp.content.iter_any():
                            got += len(piece)
                        if got == resp.content_length:
                            received += got
                            return
                    elif resp.headers.get("Retry-After", "").isdigit():
                        delay = float(resp.headers["Retry-After"])
            except (aiohttp.ClientError, OSError):
                pass
            retries += 1
            await asyncio.sleep(delay)
        raise RuntimeError(f"raw sink: {url} failed {_SINK_ATTEMPTS} times")

    async def worker(http: aiohttp.ClientSession) -> None:
        for url in pending:  # shared iterator, like aiobisque's workers
            await fetch(http, url)

    connector = aiohttp.TCPConnector(limit=0)
    auth = aiohttp.BasicAuth(spec.user, spec.password)
    async with aiohttp.ClientSession(connector=connector, auth=auth) as http:
        with measure() as m:
            await asyncio.gather(*(worker(http) for _ in range(min(cfg.concurrency, len(urls)))))
    return Outcome(spec.contender, m, received, None, client_retries=retries)


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
