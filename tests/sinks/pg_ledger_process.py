"""A separate process racing others for one budget in PostgreSQL.

Used by test_pg_ledger.py: ``python pg_ledger_process.py DSN LIMIT AMOUNT`` reserves AMOUNT
against LIMIT until refused, settling each call at its reserved amount, and prints how many
reservations it got.
"""

from __future__ import annotations

import sys

from tokenmeter.sinks.postgres import PostgresSink


def main() -> None:
    dsn, limit, amount = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    ledger = PostgresSink(dsn).budget_ledger()
    granted = 0
    while True:
        ok, _ = ledger.reserve("budget:team", "2026-12-01T00:00:00+00:00", limit, amount)
        if not ok:
            break
        granted += 1
        ledger.settle("budget:team", "2026-12-01T00:00:00+00:00", amount, amount)
    ledger.close()
    print(granted)


if __name__ == "__main__":
    main()
