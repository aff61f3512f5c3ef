"""The budget ledger over PostgreSQL: budgets shared by every process on every machine.

The guardrails reserve an estimate before a call leaves the process and settle its real cost
after. Each of those is ONE statement, so one transaction: the reservation is an
``INSERT ... ON CONFLICT DO UPDATE ... WHERE settled + reserved + amount <= limit RETURNING``,
which PostgreSQL runs on the row it has locked, so N machines racing for the last dollars of a
budget cannot all pass the check. The overshoot is bounded by what the calls in flight spend
beyond their reservations.

Called on the application's threads: one connection per ledger, used under a lock, made again
after a server restart, a killed connection or a dropped table (a failure raises; the
guardrails let the call through, "fail open"). A transaction is run again only when it did not
commit: one whose COMMIT was sent but not answered is looked up first (``txid_status``), as
running a settlement twice would count its spend twice. ``statement_timeout`` is the server's, so a
server that stops answering would hold the call for ever: a transaction is given up a second
past it (a watchdog thread shuts the connection's socket down), a connection is waited for no
longer, and a ledger that failed slowly, or could not connect, is not asked again for a while
(``tokenmeter.guardrails._ledger.Pause``).

A transaction of several budgets locks their rows in one order, the rows' own (``_in_order``),
whatever order the caller listed the budgets in: two services listing the same two budgets in
opposite orders otherwise locked them in opposite orders and deadlocked each other. A
transaction the server rolled back for a deadlock or a serialization failure (one another
client's locks caused) is run again at once, and never pauses the ledger: it says nothing of
the server's health.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, cast

if TYPE_CHECKING:
    import psycopg

    from tokenmeter.sinks.postgres import PostgresSink

__all__ = ["MAX_KNOWN_ROWS", "PostgresLedger"]

T = TypeVar("T")
#: (scope_key, period_start, limit_usd, amount_usd) and (scope_key, period_start, reserved_usd,
#: actual_usd), as the guardrails pass them.
Reserve = tuple[str, str, float, float]
Settle = tuple[str, str, float, float]
#: (scope_key, period_start, limit_usd, held_usd, used_usd, keep_usd, need_usd, unit_usd) and
#: (ok, granted_usd, settled_usd, others_usd): see ``tokenmeter.guardrails._ledger``.
Lease = tuple[str, str, float, float, float, float, float, float]
LeaseResult = tuple[bool, float, float, float]

_RESERVE = (
    "INSERT INTO budget_ledger AS b (scope_key, period_start, reserved_usd) "
    "VALUES (%(key)s, %(period)s, %(amount)s) "
    "ON CONFLICT (scope_key, period_start) DO UPDATE "
    "SET reserved_usd = b.reserved_usd + %(amount)s, updated_at = now() "
    "WHERE b.settled_usd + b.reserved_usd + %(amount)s <= %(limit)s "
    "RETURNING b.settled_usd + b.reserved_usd - %(amount)s, txid_current()"
)
_SETTLE = (
    "INSERT INTO budget_ledger AS b (scope_key, period_start, settled_usd) "
    "VALUES (%(key)s, %(period)s, %(actual)s) "
    "ON CONFLICT (scope_key, period_start) DO UPDATE "
    "SET reserved_usd = GREATEST(b.reserved_usd - %(reserved)s, 0), "
    "settled_usd = b.settled_usd + %(actual)s, updated_at = now() "
    "RETURNING b.settled_usd + b.reserved_usd, txid_current()"
)
#: A lease (see ``tokenmeter.guardrails._ledger``: ``lease_many``), in one statement on the row
#: it locks: the holder's used USD moves to settled, its held USD is released, and it gets back
#: its calls in flight (keep), the new call (need) if it fits, and a slice for calls to come: at
#: most LEASE_CAP calls of ``unit`` and at most 1/LEASE_SHARE of the room left. The locked
#: sub-select gives the row as it is once the lock is held (a concurrent lease waits for it).
_LEASE = (
    "UPDATE budget_ledger AS b SET settled_usd = x.settled, "
    "reserved_usd = x.others + x.granted, updated_at = now() "
    "FROM (SELECT s.settled, s.others, s.room >= %(need)s AS ok, "
    "  CASE WHEN %(need)s < 0 OR s.room < %(need)s THEN %(keep)s "
    "  ELSE %(keep)s + %(need)s + CASE WHEN %(unit)s > 0 THEN %(unit)s * "
    "    LEAST(%(cap)s, GREATEST(0, floor((s.room - %(need)s) / (%(share)s * %(unit)s)))) "
    "    ELSE 0 END END AS granted "
    " FROM (SELECT o.settled_usd + %(used)s AS settled, "
    "   GREATEST(o.reserved_usd - %(held)s, 0) AS others, "
    "   %(limit)s - o.settled_usd - %(used)s - GREATEST(o.reserved_usd - %(held)s, 0) "
    "   - %(keep)s AS room "
    "  FROM budget_ledger AS o WHERE o.scope_key = %(key)s AND o.period_start = %(period)s "
    "  FOR UPDATE) AS s) AS x "
    "WHERE b.scope_key = %(key)s AND b.period_start = %(period)s "
    "RETURNING x.ok, x.granted, x.settled, x.others, txid_current()"
)
_ROW = (
    "INSERT INTO budget_ledger (scope_key, period_start) VALUES (%(key)s, %(period)s) "
    "ON CONFLICT (scope_key, period_start) DO NOTHING"
)
#: What became of a transaction whose COMMIT was sent but not answered: 'committed', 'aborted',
#: 'in progress', or NULL (never written, or too old to tell).
_STATUS = "SELECT txid_status(%s)"
_SPENT = (
    "SELECT settled_usd + reserved_usd FROM budget_ledger "
    "WHERE scope_key = %(key)s AND period_start = %(period)s"
)


#: How many times a transaction the server rolled back for a deadlock or a serialization
#: failure is run in all before the ledger fails (open).
ROLLED_BACK_TRIES = 3


def _in_order(keys: Sequence[tuple[str, str]]) -> list[int]:
    """The positions of ``keys`` (scope_key, period_start) in the order their rows are locked:
    the same for every process, so no two transactions wait on each other's rows. Equal keys
    keep their order (a row listed twice is updated as listed)."""
    return sorted(range(len(keys)), key=keys.__getitem__)


def _rolled_back(exc: BaseException) -> bool:
    """Whether the server rolled the transaction back because of other clients' transactions
    (a deadlock, a serialization failure): running it again is safe and likely to succeed."""
    import psycopg

    return isinstance(exc, psycopg.Error) and exc.sqlstate in _ROLLED_BACK


#: SQLSTATE of a serialization failure and of a deadlock (psycopg's DeadlockDetected is no
#: TransactionRollback); never 40003, whose statement may have completed.
_ROLLED_BACK = frozenset({"40001", "40P01"})


#: Rows a ledger remembers as made; beyond this it starts over (a budget of period "session"
#: has a row per session: a long-running server would remember every session it served).
MAX_KNOWN_ROWS = 4096


def _text(value: str) -> str:
    """A scope key or period start as PostgreSQL text stores it: a NUL (a session id may hold
    one; the SQLite ledger keeps it) is replaced, as the PostgreSQL sink does, rather than
    failing the ledger and with it the budget."""
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


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
        #: Rows known to exist (a lease updates its row; the first one makes it).
        self._rows: set[tuple[str, str]] = set()
        #: How long a transaction may wait for the server: past the server's own timeout.
        self._deadline_s: float = sink._deadline_s
        self._watch = _Watchdog()
        #: The id and result of the transaction whose COMMIT is being sent (see ``_attempt``).
        self._sent: tuple[int, Any] | None = None
        from tokenmeter.guardrails._ledger import Pause

        self._pause = Pause("the PostgreSQL budget ledger", harmless=_rolled_back)
        _LEDGERS.add(self)

    def reserve(
        self, scope_key: str, period_start: str, limit_usd: float, amount_usd: float
    ) -> tuple[bool, float]:
        """Reserve ``amount_usd`` unless that would take the spent + reserved total past
        ``limit_usd``: (True, total before) or (False, total), in one statement."""
        [result] = self.reserve_many([(scope_key, period_start, limit_usd, amount_usd)])
        return result

    def reserve_many(self, items: Sequence[Reserve]) -> list[tuple[bool, float]]:
        """Reserve every item or none, in one transaction: the (ok, spent) of each item, up to
        the first refusal (then nothing is reserved). The rows are locked in ``_in_order``."""
        checked = [
            (_text(key), _text(start), _amount("limit_usd", limit), _amount("amount_usd", amount))
            for key, start, limit, amount in items
        ]
        order = _in_order([(key, start) for key, start, _, _ in checked])

        def work(conn: psycopg.Connection[Any]) -> list[tuple[bool, float]]:
            found: dict[int, tuple[bool, float]] = {}
            rows = []
            with conn.transaction() as transaction:
                for index in order:
                    key, start, limit, amount = checked[index]
                    params = {"key": key, "period": start, "amount": amount, "limit": limit}
                    row = None
                    if amount <= limit:  # else it never fits, not even an empty budget
                        row = conn.execute(_RESERVE.encode(), params).fetchone()
                    if row is None:
                        spent = conn.execute(_SPENT.encode(), params).fetchone()
                        found[index] = (False, 0.0 if spent is None else float(spent[0]))
                        continue  # the others are still asked: the caller's first refusal counts
                    rows.append(row)
                    found[index] = (True, max(0.0, float(row[0])))
                results = []
                for index in range(len(checked)):
                    results.append(found[index])
                    if not found[index][0]:
                        _rollback(transaction)
                self._committing(rows, results)
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
        """Settle every item in one transaction; the total after each. The rows are locked in
        ``_in_order``."""
        checked: list[dict[str, Any]] = [
            {
                "key": _text(key),
                "period": _text(start),
                "reserved": _amount("reserved_usd", reserved),
                "actual": _amount("actual_usd", actual),
            }
            for key, start, reserved, actual in items
        ]

        order = _in_order([(params["key"], params["period"]) for params in checked])

        def work(conn: psycopg.Connection[Any]) -> list[float]:
            with conn.transaction():
                found: dict[int, Any] = {}
                for index in order:  # rows locked in one order (see ``_in_order``)
                    found[index] = conn.execute(_SETTLE.encode(), checked[index]).fetchone()
                rows = [found[index] for index in range(len(checked))]
                return self._committing(rows, [float(row[0]) for row in rows])

        return self._run(work)

    def lease_many(self, items: Sequence[Lease]) -> list[LeaseResult]:
        """Leases of several budgets in one transaction (``tokenmeter.guardrails._ledger``
        ``lease_many``): if one refuses the call, none admits it and all are only synced."""
        from tokenmeter.guardrails._ledger import LEASE_CAP, LEASE_SHARE

        checked: list[dict[str, Any]] = [
            {
                "key": _text(key),
                "period": _text(start),
                "limit": _amount("limit_usd", limit),
                "held": _amount("held_usd", held),
                "used": _amount("used_usd", used),
                "keep": _amount("keep_usd", keep),
                "need": float(need),
                "unit": _amount("unit_usd", unit),
                "cap": float(LEASE_CAP),
                "share": float(LEASE_SHARE),
            }
            for key, start, limit, held, used, keep, need, unit in items
        ]
        known = self._rows
        order = _in_order([(params["key"], params["period"]) for params in checked])

        def run(
            conn: psycopg.Connection[Any], admit: bool, refused: int = -1
        ) -> tuple[list[LeaseResult], int]:
            """Every item's lease, in the caller's order (the ``refused`` one's said not ok),
            and -1; or, when admitting and an item's call does not fit, no lease and that
            item's position: the transaction is then rolled back. The rows are locked in
            ``_in_order``."""
            found: dict[int, LeaseResult] = {}
            rows = []
            results: list[LeaseResult] = []
            refusal = -1
            with conn.transaction() as transaction:
                for index in order:
                    params = checked[index]
                    lease = params if admit else {**params, "need": -1.0}
                    row = None
                    if (params["key"], params["period"]) in known:
                        row = conn.execute(_LEASE.encode(), lease).fetchone()
                    if row is None:  # a new row, or one deleted since (a budget reset by hand)
                        conn.execute(_ROW.encode(), params)
                        row = conn.execute(_LEASE.encode(), lease).fetchone()
                    assert row is not None
                    if admit and not row[0] and params["need"] >= 0:
                        refusal = index
                        _rollback(transaction)
                    rows.append(row)
                    found[index] = (index != refused, float(row[1]), float(row[2]), float(row[3]))
                results = [found[index] for index in range(len(checked))]
                self._committing(rows, results)
            return results, refusal

        def work(conn: psycopg.Connection[Any]) -> list[LeaseResult]:
            if len(known) >= MAX_KNOWN_ROWS:
                known.clear()  # a forgotten row is made (if missing) and leased, one more statement
            found, refused = run(conn, True)
            if refused < 0:
                known.update((p["key"], p["period"]) for p in checked)
                return found
            synced, _ = run(conn, False, refused)
            known.update((p["key"], p["period"]) for p in checked)
            return synced

        return self._run(work)

    def spent(self, scope_key: str, period_start: str) -> float:
        params = {"key": _text(scope_key), "period": _text(period_start)}

        def work(conn: psycopg.Connection[Any]) -> float:
            row = conn.execute(_SPENT.encode(), params).fetchone()
            return 0.0 if row is None else float(row[0])

        return self._run(work)

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None and self._pid == os.getpid():
                conn.close()
        self._watch.stop()

    def _run(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        from tokenmeter.guardrails._ledger import brief_wait

        wait = brief_wait()  # ``briefly``: not behind another thread's transaction either
        if not self._lock.acquire(timeout=-1 if wait is None else wait):
            raise TimeoutError(f"the PostgreSQL budget ledger was busy for {wait:g} s")
        try:
            with self._pause:
                return self._attempt(work, wait)
        finally:
            self._lock.release()

    def _committing(self, rows: Sequence[Any], result: T) -> T:
        """Note, before its COMMIT is sent, the id of the transaction that wrote ``rows``
        (their last column is ``txid_current()``) and what ``work`` returns when it commits."""
        if rows:
            self._sent = (int(rows[-1][-1]), result)
        return result

    def _committed(self, conn: psycopg.Connection[Any], xid: int, deadline: float) -> bool:
        """Whether transaction ``xid``, whose COMMIT was sent but never answered, committed.
        One the server is still finishing is waited for, a while: past that the ledger fails
        (open) rather than risk applying it twice."""
        give_up = time.monotonic() + deadline / 2
        while True:
            row = conn.execute(_STATUS.encode(), (xid,)).fetchone()
            status = None if row is None else row[0]
            if status != "in progress":
                return status == "committed"
            if time.monotonic() > give_up:
                raise TimeoutError(
                    "the PostgreSQL budget ledger could not tell whether its transaction "
                    f"committed (still in progress after {deadline / 2:g} s)"
                )
            time.sleep(0.05)

    def _again_if_rolled_back(
        self, conn: psycopg.Connection[Any], work: Callable[[psycopg.Connection[Any]], T]
    ) -> T:
        """``work``, run again at once (up to ``ROLLED_BACK_TRIES`` in all) when the server
        rolled it back for a deadlock or a serialization failure: nothing of it was applied
        (not even at a COMMIT that failed so), and the other transaction has gone on."""
        for _ in range(ROLLED_BACK_TRIES - 1):
            self._sent = None
            try:
                return work(conn)
            except Exception as exc:
                if not _rolled_back(exc) or conn.broken or conn.closed:
                    raise
        self._sent = None
        return work(conn)

    def _attempt(self, work: Callable[[psycopg.Connection[Any]], T], wait: float | None) -> T:
        deadline = self._deadline_s if wait is None else min(self._deadline_s, wait)
        sent: tuple[int, Any] | None = None
        for attempt in (1, 2):
            fresh = self._conn is None or self._pid != os.getpid()
            if fresh:
                try:  # waits no longer than a transaction may (the sink's default: 10 s)
                    self._conn = self._sink.connect(deadline)
                except Exception:
                    # Not asked again for a while, however fast it failed: a server refusing
                    # connections cost every call a connect (two, with its settlement).
                    self._pause.trip()
                    raise
                self._pid = os.getpid()
            conn = self._conn
            assert conn is not None
            cut = self._watch.start(conn, deadline)
            try:
                if sent is not None and self._committed(conn, sent[0], deadline):
                    return cast(T, sent[1])  # the first attempt's, not applied a second time
                return self._again_if_rolled_back(conn, work)
            except BaseException as exc:
                import psycopg

                if cut.is_set():  # the server did not answer: no second attempt
                    self._conn = None
                    conn.close()
                    raise TimeoutError(
                        f"the PostgreSQL budget ledger did not answer within {deadline:g} s"
                        + ("" if deadline < self._deadline_s else " (statement_timeout_s + 1)")
                    ) from exc
                # A table dropped while in use: a new connection makes it again (migrating).
                dropped = isinstance(exc, psycopg.errors.UndefinedTable)
                if not (dropped or conn.broken or conn.closed):
                    raise
                self._conn = None  # dead: the next statement gets a new connection
                if dropped:
                    conn.close()
                # A transaction whose COMMIT was sent may have committed though its answer was
                # lost: the next attempt asks the server, on a new connection, before running it
                # again (a settlement applied twice counts the spend twice).
                sent = self._sent
                if attempt == 2 or (fresh and sent is None):
                    raise
            finally:
                self._watch.done()
        raise AssertionError("unreachable")  # pragma: no cover


class _Watchdog:
    """Shuts down the socket of a connection whose transaction is past its deadline: the thread
    waiting on it gets an error at once, and the server, when it answers again, finds the
    connection gone and rolls the transaction back. One thread, started when a transaction
    begins and none is running, ended after ``_IDLE_S`` with nothing to watch: a transaction
    costs two short locked sections, no thread of its own."""

    _IDLE_S = 10.0

    def __init__(self, name: str = "tokenmeter-pg-ledger-watchdog") -> None:
        self._name = name
        self._cond = threading.Condition()
        self._pid = os.getpid()
        self._conn: Any = None
        self._deadline = 0.0
        self._cut = threading.Event()
        self._running = False
        self._idle = False  # the thread waits with no deadline: a start must wake it
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self, conn: Any, seconds: float) -> threading.Event:
        """Watch ``conn`` for ``seconds``; the event is set if it was cut off."""
        if self._pid != os.getpid():  # a forked child: the parent's thread and lock are not ours
            self._cond, self._pid, self._running, self._idle = (
                threading.Condition(),
                os.getpid(),
                False,
                False,
            )
        cut = threading.Event()
        with self._cond:
            self._conn, self._deadline, self._cut = conn, time.monotonic() + seconds, cut
            if not self._running:
                from tokenmeter._pipeline import start_thread

                self._running, self._stopping = True, False
                try:
                    self._thread = start_thread(self._watch, self._name)
                except RuntimeError:  # a pids limit: this transaction runs unwatched (failed,
                    self._running = False  # the sink's writes and the budgets would stop for
                    self._conn = None  # as long as the limit lasts); the next one tries again
            elif self._idle:
                self._cond.notify()
        return cut

    def done(self) -> None:
        with self._cond:
            self._conn = None

    def stop(self) -> None:
        """End the thread now, not ``_IDLE_S`` later: its owner is closed (a process that then
        forks a child, or counts its threads, finds none of ours left)."""
        with self._cond:
            self._conn = None
            thread = self._thread if self._running and self._pid == os.getpid() else None
            if thread is not None:
                self._stopping = True
                self._cond.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join(1.0)

    def _watch(self) -> None:
        cond = self._cond
        with cond:
            while cond is self._cond:
                if self._conn is None:
                    if self._stopping:
                        self._running = self._stopping = False
                        return
                    self._idle = True
                    woken = cond.wait(self._IDLE_S)
                    self._idle = False
                    if not woken and self._conn is None:
                        self._running = False
                        return
                    continue
                left = self._deadline - time.monotonic()
                if left > 0:
                    cond.wait(left)
                    continue
                self._cut.set()
                with (
                    contextlib.suppress(Exception),  # closed meanwhile: nothing to cut
                    socket.socket(fileno=os.dup(self._conn.fileno())) as sock,
                ):
                    sock.shutdown(socket.SHUT_RDWR)
                self._conn = None


#: Every ledger of the process: a forked child gives each a lock of its own (see below).
_LEDGERS: weakref.WeakSet[PostgresLedger] = weakref.WeakSet()


def _unlock_in_child() -> None:
    """A child forked while another thread was in a transaction would find the lock held for
    ever (that thread is not in the child): its first call needing the ledger would hang."""
    for ledger in list(_LEDGERS):
        ledger._lock = threading.Lock()


os.register_at_fork(after_in_child=_unlock_in_child)


def _rollback(transaction: Any) -> NoReturn:
    """Leave ``with conn.transaction()`` undoing it, without an error (psycopg's Rollback)."""
    import psycopg

    raise psycopg.Rollback(transaction)
