"""Benchmarks of aiobisque against the official client and the link's limits.

``python -m benchmarks`` runs every scenario (WAN, Faulty WAN, Loopback, Scale) against the
embedded server, each contender in its own process, and writes ``benchmarks/RESULTS.md``;
``python -m benchmarks sweep`` sweeps ``request_bytes`` x ``concurrency``. See
``benchmarks/README.md``.

Modules:

* :mod:`benchmarks.measure`: time, CPU and peak-memory growth of one block of code;
* :mod:`benchmarks.contenders`: the clients compared, run as ``python -m benchmarks.contenders``
  (one download per process, the spec on stdin, one JSON line on stdout);
* :mod:`benchmarks.scenarios`: links, array sizes and cached sample data;
* :mod:`benchmarks.harness`: the server, the child processes, medians of repeats;
* :mod:`benchmarks.report`: the Markdown written to ``RESULTS.md``;
* :mod:`benchmarks.sweep`: the ``request_bytes`` x ``concurrency`` sweep.
"""
