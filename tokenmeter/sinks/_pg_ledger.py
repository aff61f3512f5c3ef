"""The budget ledger over PostgreSQL: budgets shared by every process on every machine.

The guardrails reserve an estimate before a call leaves the process and settle its real cost
after. Each of those is ONE statement, so one transaction: the reservation is an
``INSERT ... ON CONFLICT DO UPDATE ... WHERE settled + reserved + amount <= limit RETURNING``,
which PostgreSQL runs on the row it has locked, so N machines racing for the last dollars of a
budget cannot all pass the check. The overshoot is bounded by what the calls in flight spend
beyond their reservations.

Called on the application's threads: one connection per ledger, used under a lock, made again
after a server restart or a killed connection (a failure raises; the guardrails let the call
through, "fail open").
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

if TYPE_CHECKING:
    import psycopg

    from tokenmeter.sinks.postgres import PostgresSink

__all__ = ["PostgresLedger"]

T = TypeVar("T")
#: (scope_key, period_start, limit_usd, amount_usd) and (scope_key, period_start, reserved_usd,
#: actual_usd), as the guardrails pass them.
Reserve = tuple[str, str, float, float]
Settle = tuple[str, str, float, float]

_RESERVE = (
    "INSERT INTO budget_ledger AS b (scope_key, period_start, reserved_usd) "
    "VALUES (%(key)s, %(period)s, %(amount)s) "
    "ON CONFLICT (scope_key, period_start) DO UPDATE "
    "SET reserved_usd = b.reserved_usd + %(amount)s, updated_at = now() "
    "WHERE b.settled_usd + b.reserved_usd + %(amount)s <= %(limit)s "
    "RETURNING b.settled_usd + b.reserved_usd - %(amount)s"
)
_SETTLE = (
    "INSERT INTO budget_ledger AS b (scope_key, period_start, settled_usd) "
    "VALUES (%(key)s, %(period)s, %(actual)s) "
    "ON CONFLICT (scope_key, period_start) DO UPDATE "
    "SET reserved_usd = GREATEST(b.reserved_usd - %(reserved)s, 0), "
    "settled_usd = b.settled_usd + %(actual)s, updated_at = now() "
    "RETURNING b.settled_usd + b.reserved_usd"
)
_SPENT = (
    "SELECT settled_usd + reserved_usd FROM budget_ledger "
    "WHERE scope_key = %(key)s AND period_start = %(period)s"
)


def _amount(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"{name} must be a non-negative number of USD, got {value!r}")
    return float(value)


class PostgresLedger:
    """``BudgetLedger`` (reserve / settle / spent / close) in the sink's database."""

    def __init__(self, sink: PostgresSink) -> None:
        self._sink = sink
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._pid = 0

    def reserve(
        self, scope_key: str, period_start: str, limit_usd: float, amount_usd: float
    ) -> tuple[bool, float]:
        """Reserve ``amount_usd`` unless that would take the spent + reserved total past
        ``limit_usd``: (True, total before) or (False, total), in one statement."""
        [result] = self.reserve_many([(scope_key, period_start, limit_usd, amount_usd)])
        return result

    def reserve_many(self, items: Sequence[Reserve]) -> list[tuple[bool, float]]:
        """Reserve every item or none, in one transaction: the (ok, spent) of each item, up to
        the first refusal (then nothing is reserved)."""
        checked = [
            (key, start, _amount("limit_usd", limit), _amount("amount_usd", amount))
            for key, start, limit, amount in items
        ]

        def work(conn: psycopg.Connection[Any]) -> list[tuple[bool, float]]:
            results: list[tuple[bool, float]] = []
            with conn.transaction() as transaction:
                for key, start, limit, amount in checked:
                    params = {"key": key, "period": start, "amount": amount, "limit": limit}
                    row = None
                    if amount <= limit:  # else it never fits, not even an empty budget
                        row = conn.execute(_RESERVE.encode(), params).fetchone()
                    if row is None:
                        spent = conn.execute(_SPENT.encode(), params).fetchone()
                        results.append((False, 0.0 if spent is None else float(spent[0])))
                        _rollback(transaction)
                    results.append((True, max(0.0, float(row[0]))))
            return results

        return self._run(work)

    def settle(
        self, scope_key: str, period_start: str, reserved_usd: float, actual_usd: float
    ) -> float:
        """Release the reservation and add what the call really cost, in one statement; the
        spent + reserved total after it."""
        [after] = self.settle_many([(scope_key, period_start, reserved_usd, actual_usd)])
        return after

    def settle_many(self, items: Sequence[Settle]) -> list[float]:
        """Settle every item in one transaction; the total after each."""
        checked = [
            {
                "key": key,
                "period": start,
                "reserved": _amount("reserved_usd", reserved),
                "actual": _amount("actual_usd", actual),
            }
            for key, start, reserved, actual in items
        ]

        def work(conn: psycopg.Connection[Any]) -> list[float]:
            with conn.transaction():
                return [
                    float(conn.execute(_SETTLE.encode(), params).fetchone()[0])  # type: ignore[index]
                    for params in checked
                ]

        return self._run(work)

    def spent(self, scope_key: str, period_start: str) -> float:
        params = {"key": scope_key, "period": period_start}

        def work(conn: psycopg.Connection[Any]) -> float:
            row = conn.execute(_SPENT.encode(), params).fetchone()
            return 0.0 if row is None else float(row[0])

        return self._run(work)

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None and self._pid == os.getpid():
                conn.close()

    def _run(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        with self._lock:
            for attempt in (1, 2):
                fresh = self._conn is None or self._pid != os.getpid()
                if fresh:
                    self._conn, self._pid = self._sink.connect(), os.getpid()
                conn = self._conn
                assert conn is not None
                try:
                    return work(conn)
                except BaseException:
                    if not (conn.broken or conn.closed):
                        raise
                    self._conn = None  # dead: the next statement gets a new connection
                    if fresh or attempt == 2:
                        raise
            raise AssertionError("unreachable")  # pragma: no cover


def _rollback(transaction: Any) -> NoReturn:
    """Leave ``with conn.transaction()`` undoing it, without an error (psycopg's Rollback)."""
    import psycopg

    raise psycopg.Rollback(transaction)
