"""BisQue's table service on the wire: who may read, what is counted, faults and bounds.

:class:`TableService` answers ``{table}/{uniq}/...``: it refuses as BisQue's
``check_access`` does (401/403, also for no such resource), splits the path as BisQue
does (with its query string), lets :class:`~aiobisque.server.store.Store` answer in a worker
thread, and sends data bodies through the fault plan (:mod:`~aiobisque.server.sending`).
Data requests are counted once each (:class:`~aiobisque.server.stats.DataOutcome`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import urllib.parse
from pathlib import Path
from typing import Any

from aiohttp import web

from aiobisque.server.auth import AccessRules
from aiobisque.server.faults import FaultPlan
from aiobisque.server.routes import STATUS_COUNTED, Call, text_response
from aiobisque.server.sending import BodySender
from aiobisque.server.stats import DataOutcome, ServerStats
from aiobisque.server.store import Answer, Limits, MemoryBudget, Store, TableQuery

__all__ = ["TableService", "table_kind"]

# what a real server answers when its exporter finds array.h5 already open
_HDF_CLASH = Answer.error(
    500,
    "ValueError: The file 'array.h5' is already opened. Please close it before reopening"
    " in write mode.",
)


# what the Python 3 port's CSV exporter answers once pandas 2 refuses its arguments
_CSV_BROKEN = Answer.error(400, "Data cannot be converted to CSV")


def table_kind(rest: list[str]) -> str:
    """How a table request is counted: ``info`` or ``data``."""
    return "info" if "info" in rest else "data"


class TableService:
    """The table service of one server (see the module docstring).

    ``plan`` is the fault plan for the next data requests and ``seq`` numbers them from
    the plan's installation (so seeded decisions and ``fail_first`` start afresh).
    """

    def __init__(
        self,
        store: Store,
        rules: AccessRules,
        stats: ServerStats,
        sender: BodySender,
        *,
        plan: FaultPlan,
        layout: str,
        limits: Limits,
        csv_data_broken: bool = False,
    ) -> None:
        self.store = store
        self.rules = rules
        self.stats = stats
        self.sender = sender
        self.plan = plan
        self.seq = 0
        self.layout = layout
        self.limits = limits
        # BisQue's Python 3 port: its CSV exporter fails on pandas 2 (generations.py)
        self.csv_data_broken = csv_data_broken
        self.budget = MemoryBudget(limits.total_bytes)
        self.hdf_exports = 0  # format:hdf answers being built or sent now
        # h5py serialises HDF5 calls on one lock; a few threads still let encoding and
        # socket writes overlap with a read
        self.executor = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="bisque-table")

    def install(self, plan: FaultPlan) -> None:
        """Use ``plan`` for the next data requests, numbered from 0."""
        self.plan = plan
        self.seq = 0

    def _table_file(self, uniq: str, user: str | None) -> Path | web.Response:
        """The file for ``uniq``, or BisQue's refusal: 401/403, also for no such resource.

        (BisQue's table service asks the data service for the resource, which answers
        nothing both for a missing resource and for one the user may not read.)
        """
        file = self.store.locate(uniq)
        denied = self.rules.missing(user) if file is None else self.rules.check(uniq, user)
        if denied is not None:
            return self._plain(Answer.error(denied.status, denied.reason))
        assert file is not None
        return file

    def _query(self, call: Call) -> tuple[str, TableQuery]:
        """The uniq and the rest of a table path, split as BisQue splits it.

        BisQue reads the path *with* its query string, so ``?x=1`` sticks to the last
        element (``format:hdf?x=1`` is then an unknown format); empty elements are dropped.
        """
        raw = list(call.rest)
        query_string = call.request.rel_url.raw_query_string
        if query_string:
            raw[-1] += "?" + query_string
        components = [urllib.parse.unquote(part) for part in raw if part]
        query = TableQuery(
            components[1:],
            url=str(call.request.url),
            layout=self.layout,
            limits=self.limits,
            budget=self.budget,
        )
        return components[0], query

    async def handle(self, call: Call) -> web.StreamResponse:
        uniq, query = self._query(call)
        if query.wants_info:
            file = self._table_file(uniq, call.user)
            if isinstance(file, web.Response):
                return file
            try:
                return self._plain(await self._answer(file, query))
            finally:
                query.release()
        try:
            return await self._data(call.request, call.user, uniq, query)
        finally:
            # the body has been sent (or given up): its bytes may go
            query.release()

    async def _answer(self, file: Any, query: TableQuery) -> Answer:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.executor, self.store.answer, file, query)
        try:
            return await future
        except asyncio.CancelledError:
            # the worker thread goes on and may still take budget: give it back after
            future.add_done_callback(lambda _: query.release())
            raise

    @staticmethod
    def _plain(answer: Answer) -> web.Response:
        body = b"".join(bytes(part) for part in answer.body.parts)
        response = web.Response(status=answer.status, body=body, headers=dict(answer.headers))
        response.headers["Content-Type"] = answer.body.content_type
        return response

    async def _data(
        self, request: web.Request, user: str | None, uniq: str, query: TableQuery
    ) -> web.StreamResponse:
        n = self.seq
        self.seq += 1
        plan = self.plan
        decision = plan.decide(n)
        stats = self.stats
        outcome = DataOutcome(stats, (uniq, *query.components), query)
        request[STATUS_COUNTED] = True
        try:
            response = await self._data_response(
                request, user, uniq, query, plan, decision, outcome
            )
            if not outcome.kept:  # a plain response: aiohttp sends it after this returns
                outcome.status = response.status
                outcome.keep()
            return response
        finally:
            outcome.keep(sent=False)  # cancelled or failed: logged, no status was sent

    async def _data_response(
        self,
        request: web.Request,
        user: str | None,
        uniq: str,
        query: TableQuery,
        plan: FaultPlan,
        decision: Any,
        outcome: DataOutcome,
    ) -> web.StreamResponse:
        file = self._table_file(uniq, user)
        if isinstance(file, web.Response):
            return file
        if decision.kind in ("error", "throttle"):
            self.stats.fault(decision.kind)
            outcome.fault = decision.kind
            if decision.kind == "error":
                return text_response(decision.status, "injected error")
            return text_response(429, "slow down", {"Retry-After": plan.retry_after})
        if query.requested_format == "hdf":
            if plan.hdf_name_clash and self.hdf_exports:
                self.stats.fault("hdf_clash")
                outcome.fault = "hdf_clash"
                query.format = "hdf"
                return self._plain(_HDF_CLASH)
            self.hdf_exports += 1
            try:
                return await self._export(request, file, query, plan, decision, outcome)
            finally:
                self.hdf_exports -= 1
        return await self._export(request, file, query, plan, decision, outcome)

    async def _export(
        self,
        request: web.Request,
        file: Path,
        query: TableQuery,
        plan: FaultPlan,
        decision: Any,
        outcome: DataOutcome,
    ) -> web.StreamResponse:
        answer = await self._answer(file, query)
        if answer.data and answer.status == 200 and self.csv_data_broken and query.format == "csv":
            answer = _CSV_BROKEN
        if answer.status != 200 or not answer.data:
            return self._plain(answer)
        if decision.kind is not None:
            self.stats.fault(decision.kind)
            outcome.fault = decision.kind
            return await self.sender.send_faulty(request, answer.body, plan, decision, outcome)
        return await self.sender.send(request, answer.body, plan, outcome)

    def close(self) -> None:
        """Stop the worker threads."""
        self.executor.shutdown(wait=False, cancel_futures=True)
