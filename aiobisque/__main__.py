"""``python -m aiobisque``: the ``aiobisque`` command line (see :mod:`aiobisque.cli`)."""

from aiobisque.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
