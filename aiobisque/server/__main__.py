"""``python -m aiobisque.server DIR ...``: the same as ``aiobisque serve DIR ...``."""

from aiobisque.server.command import run

raise SystemExit(run())
