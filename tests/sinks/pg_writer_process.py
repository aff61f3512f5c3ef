"""A separate process that meters COUNT calls into PostgreSQL through the whole pipeline.

Used by test_postgres_sink.py: ``python pg_writer_process.py DSN COUNT`` configures
``TOKENMETER_SINKS=postgres`` through the environment (DSN in ``TOKENMETER_PG_DSN``), records
COUNT calls with ``tokenmeter.record`` and exits normally: the exit flush delivers them.
"""

from __future__ import annotations

import os
import sys

import tokenmeter


def main() -> None:
    dsn, count = sys.argv[1], int(sys.argv[2])
    os.environ["TOKENMETER_SINKS"] = "postgres"
    os.environ["TOKENMETER_PG_DSN"] = dsn
    for i in range(count):
        tokenmeter.record("openai", "gpt-4o", 100 + i % 7, 20, tags={"worker": str(os.getpid())})
    if not tokenmeter.flush(timeout=120):
        sys.exit("flush timed out")


if __name__ == "__main__":
    main()
