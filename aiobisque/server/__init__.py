"""An embedded, BisQue-compatible table server with fault injection.

It serves the HDF5 files of a folder the way BisQue's table service does (service
discovery, Basic and Mex auth, ``info``, ranges, ``format:hdf|json|csv|xml``) and takes
uploads as BisQue's import service does (``server.imports``), so aiobisque,
``bqapi`` and benchmarks can run without a real BisQue, and it misbehaves on demand
(:class:`FaultPlan`).

>>> from aiobisque.server import run_server, FaultPlan, samples   # doctest: +SKIP
>>> async with run_server(folder, faults=FaultPlan(latency=0.05)) as srv:   # doctest: +SKIP
...     print(srv.root, srv.stats.requests)
"""

from aiobisque.server import samples
from aiobisque.server.app import (
    DEMO_MEX_TOKENS as DEMO_MEX_TOKENS,  # the demo logins: importable, not documented API
)
from aiobisque.server.app import (
    DEMO_USERS as DEMO_USERS,
)
from aiobisque.server.app import (
    TableServer,
    run_server,
    serve_in_thread,
)
from aiobisque.server.faults import FaultDecision, FaultPlan, parse_size
from aiobisque.server.stats import DataRecord, ServerStats

__all__ = [
    "DataRecord",
    "FaultDecision",
    "FaultPlan",
    "ServerStats",
    "TableServer",
    "parse_size",
    "run_server",
    "samples",
    "serve_in_thread",
]
