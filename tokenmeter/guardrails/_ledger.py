"""Where budgets keep what has been spent: a protocol, and its SQLite implementation.

A ledger row per (scope key, period start) holds the USD settled by finished calls and the USD
reserved by calls in flight. ``reserve`` refuses when settled + reserved + the new amount would
pass the limit, in one transaction: that is what bounds the overshoot of a budget raced by many
threads and processes to the difference between the calls' estimates and their real costs.
The protocol is written down in docs/budgets-and-alerts.md; a sink whose ``budget_ledger()``
returns an object with these methods (e.g. a PostgreSQL store) makes budgets hold across machines.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import sqlite3
import stat
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from tokenmeter import _pipeline
from tokenmeter.sinks._files import ensure_private_dir, file_id, make_private, still_names
from tokenmeter.sinks.sqlite import _use_wal, held_from_fork

__all__ = [
    "LEASE_CAP",
    "LEASE_SHARE",
    "PAUSE_S",
    "BudgetLedger",
    "MemoryLedger",
    "Pause",
    "SQLiteLedger",
    "grant_of",
    "lease_all",
    "reserve_all",
    "settle_all",
]


@runtime_checkable
class BudgetLedger(Protocol):
    """Spent-and-reserved USD per (scope_key, period_start); safe to call from many threads."""

    def reserve(
        self, scope_key: str, period_start: str, limit_usd: float, amount_usd: float
    ) -> tuple[bool, float]:
        """Atomically: if settled + reserved + amount > limit, change nothing and return
        (False, settled + reserved); else add amount to reserved and return (True, the spent
        before this reservation)."""
        ...

    def settle(
        self, scope_key: str, period_start: str, reserved_usd: float, actual_usd: float
    ) -> float:
        """Atomically release ``reserved_usd`` and add ``actual_usd``; the spent after it."""
        ...

    def spent(self, scope_key: str, period_start: str) -> float:
        """settled + reserved (0.0 for a key never seen)."""
        ...

    def close(self) -> None: ...


#: Optional, for speed: a ledger may also offer ``reserve_many(items)`` (items of (scope_key,
#: period_start, limit_usd, amount_usd); all reserved or none, in one transaction; returns the
#: (ok, spent) of each item, stopping at the first refusal) and ``settle_many(items)`` (items of
#: (scope_key, period_start, reserved_usd, actual_usd); one transaction; the spent after each).
Reserve = tuple[str, str, float, float]
Settle = tuple[str, str, float, float]

#: Optional, and what makes a check cheap: ``lease_many(items)``, items of (scope_key,
#: period_start, limit_usd, held_usd, used_usd, keep_usd, need_usd, unit_usd), one transaction.
#: A process holds a *lease* per row: ``held_usd`` of the row's reserved USD is its own. For each
#: item: the process's ``used_usd`` (real costs of calls it settled locally) moves to settled, its
#: ``held_usd`` is released, and it takes back ``grant_of(...)``: ``keep_usd`` (its calls still
#: in flight), plus ``need_usd`` for a new call when that fits under the limit, plus a slice for
#: calls to come (``need_usd < 0``: no new call, give back everything but ``keep_usd``). If any
#: item's call does not fit, no item admits it (every item is then synced with need_usd = -1).
#: Returns, per item, (ok, granted_usd, settled_usd after, reserved_usd of everyone else).
Lease = tuple[str, str, float, float, float, float, float, float]
LeaseResult = tuple[bool, float, float, float]

#: A slice is at most this many calls ...
LEASE_CAP = 64
#: ... and at most this share of the room left after the call: a budget with room for fewer than
#: LEASE_SHARE more calls is never sliced (each call reserves exactly its estimate), so a small
#: budget is never refused while a slice of it sits unused in another process.
LEASE_SHARE = 8


def grant_of(
    limit: float, settled: float, others: float, keep: float, need: float, unit: float
) -> tuple[bool, float]:
    """The lease a holder gets back (see ``lease_many``): ``settled`` and ``others`` as they are
    after its used USD moved to settled and its held USD was released."""
    if need < 0:
        return True, keep
    room = limit - settled - others - keep
    if room < need:
        return False, keep
    extra = 0.0
    if unit > 0:
        share = (room - need) / (LEASE_SHARE * unit)  # inf for a tiny unit: capped first
        calls = LEASE_CAP if share >= LEASE_CAP else math.floor(share)
        if calls >= 1:
            extra = calls * unit
    return True, keep + need + extra


def reserve_all(ledger: Any, items: list[Reserve]) -> list[tuple[bool, float]]:
    """Reserve every item or none: through ``reserve_many`` when the ledger has it."""
    many = getattr(ledger, "reserve_many", None)
    if many is not None:
        found: list[tuple[bool, float]] = many(items)
        return found
    results: list[tuple[bool, float]] = []
    for index, (key, start, limit, amount) in enumerate(items):
        ok, spent = ledger.reserve(key, start, limit, amount)
        results.append((ok, spent))
        if not ok:
            for key2, start2, _, amount2 in items[:index]:
                ledger.settle(key2, start2, amount2, 0.0)
            break
    return results


def lease_all(ledger: Any, items: list[Lease]) -> list[LeaseResult]:
    """``lease_many`` when the ledger has it. A ledger with only the four protocol methods is
    driven call by call, with no slices (every call reserved and settled on its own)."""
    many = getattr(ledger, "lease_many", None)
    if many is not None:
        found: list[LeaseResult] = many(items)
        return found
    out: list[LeaseResult] = []
    for key, start, _, held, used, keep, _, _ in items:  # release, settle, keep in-flight calls
        after = float(ledger.settle(key, start, held, used))
        if keep > 0:
            ledger.reserve(key, start, math.inf, keep)
        out.append((True, keep, after, max(0.0, after - keep)))
    admit = [item for item in items if item[6] >= 0]
    if not admit:
        return out
    results = reserve_all(ledger, [(k, s, lim, need) for k, s, lim, _, _, _, need, _ in admit])
    if len(results) < len(admit) or not results[-1][0]:
        index = len(results) - 1
        key, start = admit[index][0], admit[index][1]
        for position, item in enumerate(items):
            if (item[0], item[1]) == (key, start):
                _, granted, after, _ = out[position]
                out[position] = (False, granted, after, max(0.0, results[-1][1] - after))
        return out
    for position, item in enumerate(items):
        if item[6] >= 0:
            _, granted, after, others = out[position]
            out[position] = (True, granted + item[6], after, others)
    return out


def settle_all(ledger: Any, items: list[Settle]) -> list[float]:
    many = getattr(ledger, "settle_many", None)
    if many is not None:
        found: list[float] = many(items)
        return found
    return [ledger.settle(*item) for item in items]


class MemoryLedger:
    """One process only (a lock around a dict): for tests, and for budgets that need not hold
    across processes. A forked child gets a copy of it (``_renew_memory_ledgers``)."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], list[float]] = {}
        self._lock = threading.Lock()
        _memory_ledgers.add(self)
        #: The periods that ended (``period_ended``: sessions' ids), the latest ended or used
        #: last. Their rows are kept, as budgets.db keeps them, up to ``MAX_ENDED_PERIODS``.
        self._ended: OrderedDict[str, None] = OrderedDict()

    def _used(self, period_start: str) -> None:
        """A period that ended is spent in again (a thread's work outliving its session, the
        id entered again): the last its rows are dropped."""
        if self._ended and period_start in self._ended:
            self._ended.move_to_end(period_start)

    def reserve(
        self, scope_key: str, period_start: str, limit_usd: float, amount_usd: float
    ) -> tuple[bool, float]:
        with self._lock:
            self._used(period_start)
            row = self._rows.setdefault((scope_key, period_start), [0.0, 0.0])
            spent = row[0] + row[1]
            if spent + amount_usd > limit_usd:
                return False, spent
            row[1] += amount_usd
            return True, spent

    def settle(
        self, scope_key: str, period_start: str, reserved_usd: float, actual_usd: float
    ) -> float:
        with self._lock:
            self._used(period_start)
            row = self._rows.setdefault((scope_key, period_start), [0.0, 0.0])
            row[1] = max(0.0, row[1] - reserved_usd)
            row[0] += actual_usd
            return row[0] + row[1]

    def reserve_many(self, items: list[Reserve]) -> list[tuple[bool, float]]:
        with self._lock:
            results: list[tuple[bool, float]] = []
            for key, start, limit, amount in items:
                row = self._rows.get((key, start))
                spent = 0.0 if row is None else row[0] + row[1]
                if spent + amount > limit:
                    return [*results, (False, spent)]
                results.append((True, spent))
            for key, start, _, amount in items:
                self._used(start)
                self._rows.setdefault((key, start), [0.0, 0.0])[1] += amount
            return results

    def settle_many(self, items: list[Settle]) -> list[float]:
        with self._lock:
            out = []
            for key, start, reserved, actual in items:
                self._used(start)
                row = self._rows.setdefault((key, start), [0.0, 0.0])
                row[1] = max(0.0, row[1] - reserved)
                row[0] += actual
                out.append(row[0] + row[1])
            return out

    def lease_many(self, items: list[Lease]) -> list[LeaseResult]:
        with self._lock:
            for item in items:
                self._used(item[1])
            rows = [self._rows.setdefault((item[0], item[1]), [0.0, 0.0]) for item in items]
            return _lease(items, [(row[0], row[1]) for row in rows], rows)

    def spent(self, scope_key: str, period_start: str) -> float:
        with self._lock:
            row = self._rows.get((scope_key, period_start))
            return 0.0 if row is None else row[0] + row[1]

    def period_ended(self, period_start: str, open_periods: Collection[str] = ()) -> None:
        """A period ended (a session's, ``period="session"``, when no block of its id is open).
        Its rows are kept, as budgets.db keeps them: dropped at once, a thread's work that
        outlived the block, or the id entered again (a job resumed under its id), got the whole
        limit again ($0.0675 let through under a $0.02 limit, where budgets.db refused past
        $0.0225). Only the rows of the ``MAX_ENDED_PERIODS`` latest ended (or used since) are
        kept: a server opening a session per request would keep a row of each for ever. Never
        those of ``open_periods``: an id entered again and open (5 calls let through under a
        limit of 3 once 10,000 other sessions had ended meanwhile)."""
        with self._lock:
            ended = self._ended
            ended[period_start] = None
            ended.move_to_end(period_start)
            if len(ended) <= MAX_ENDED_PERIODS:
                return
            dropped = set()
            kept = []
            while len(ended) > MAX_ENDED_PERIODS // 2:  # in batches: a drop walks every row
                oldest = ended.popitem(last=False)[0]
                if oldest in open_periods:
                    kept.append(oldest)
                else:
                    dropped.add(oldest)
            for period in kept:  # open again: ended (and dropped) once it ends anew
                ended[period] = None
            self._rows = {key: row for key, row in self._rows.items() if key[1] not in dropped}

    def close(self) -> None:
        pass


#: Every memory ledger of the process, for ``_renew_memory_ledgers``.
_memory_ledgers: weakref.WeakSet[MemoryLedger] = weakref.WeakSet()


def _renew_memory_ledgers() -> None:
    """In a forked child: each memory ledger's lock is new. ``fork()`` copies a lock in the
    state it had, and another thread of the parent inside the ledger at that instant (settling
    a record, taking a slice) held it: the child's first budgeted record or call waited for
    it for ever. Only the forking thread lives on in the child, so nothing else uses them."""
    for ledger in list(_memory_ledgers):
        ledger._lock = threading.Lock()


os.register_at_fork(after_in_child=_renew_memory_ledgers)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS budget_ledger (
  scope_key TEXT NOT NULL,
  period_start TEXT NOT NULL,
  settled_usd REAL NOT NULL DEFAULT 0,
  reserved_usd REAL NOT NULL DEFAULT 0,
  updated_at TEXT NOT NULL,
  PRIMARY KEY (scope_key, period_start)
)
"""
_READ = "SELECT settled_usd + reserved_usd FROM budget_ledger WHERE scope_key=? AND period_start=?"
_READ_ROW = (
    "SELECT settled_usd, reserved_usd FROM budget_ledger WHERE scope_key=? AND period_start=?"
)
_WRITE = (
    "INSERT INTO budget_ledger (scope_key, period_start, settled_usd, reserved_usd, updated_at) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (scope_key, period_start) DO UPDATE SET "
    "settled_usd = excluded.settled_usd, reserved_usd = excluded.reserved_usd, "
    "updated_at = excluded.updated_at"
)
_RESERVE = (
    "INSERT INTO budget_ledger (scope_key, period_start, reserved_usd, updated_at) "
    "VALUES (?, ?, ?, ?) ON CONFLICT (scope_key, period_start) DO UPDATE SET "
    "reserved_usd = reserved_usd + excluded.reserved_usd, updated_at = excluded.updated_at"
)
_SETTLE = (
    "INSERT INTO budget_ledger (scope_key, period_start, settled_usd, updated_at) "
    "VALUES (?, ?, ?, ?) ON CONFLICT (scope_key, period_start) DO UPDATE SET "
    "reserved_usd = max(0, reserved_usd - ?), settled_usd = settled_usd + excluded.settled_usd, "
    "updated_at = excluded.updated_at RETURNING settled_usd + reserved_usd"
)


#: The ended periods (sessions' ids) whose rows the memory ledger keeps: past this many, the
#: rows of the half ended (or used) longest ago are dropped.
MAX_ENDED_PERIODS = 10_000
#: How long a SQLite transaction waits for another process's write lock.
BUSY_TIMEOUT_S = 30.0
#: A ledger whose transaction failed after waiting this long ...
_SLOW_S = 1.0
#: ... is not asked again for this long: calls go through at once meanwhile, not after a wait.
PAUSE_S = 60.0


class Pause:
    """Around each transaction of a ledger on the application's thread: one that failed after
    waiting ``_SLOW_S`` or more (a database locked by someone else, a server not answering)
    pauses the ledger for ``PAUSE_S``, during which a transaction raises ``TimeoutError`` at
    once; the budgets let the calls through, as for any failure of the ledger, but without each
    of them waiting as long.

    A pause from before the exit does not hold at exit: what is settled and given back then is
    the process's last chance to add its spend to the ledger (a job that saw the ledger fail and
    ended within ``PAUSE_S`` lost all of it), and it waits no longer than ``exit_timeout``
    allows (``brief_wait``). A failure at exit pauses the ledger for the rest of it."""

    __slots__ = ("at_exit", "began", "harmless", "until", "what", "why")

    def __init__(
        self, what: str, harmless: Callable[[BaseException], bool] = lambda exc: False
    ) -> None:
        self.what = what
        #: Failures that never pause the ledger, however long they took: a PostgreSQL deadlock
        #: (found after the server's deadlock_timeout, a second) is another client's
        #: transaction, not a ledger that is slow to answer.
        self.harmless = harmless
        self.until = 0.0
        self.why = ""
        self.at_exit = False  # whether the pause began during this process's exit
        self.began = threading.local()

    def __enter__(self) -> None:
        now = time.monotonic()
        if now < self.until and (self.at_exit or not _pipeline.exiting()):
            raise TimeoutError(
                f"{self.what} {self.why}: not asked again for {PAUSE_S:g} s after that"
            )
        self.began.at = now

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, *_: Any
    ) -> None:
        if kind is not None and issubclass(kind, Exception):
            now = time.monotonic()
            if now - self.began.at >= _SLOW_S and not (exc is not None and self.harmless(exc)):
                self._pause(now, "failed slowly (locked, or not answering)")

    def trip(self) -> None:
        """Pause now, however fast the failure was (a server that cannot be reached)."""
        self._pause(time.monotonic(), "could not be reached")

    def _pause(self, now: float, why: str) -> None:
        self.until, self.why, self.at_exit = now + PAUSE_S, why, _pipeline.exiting()


class SQLiteLedger:
    """The default ledger: a SQLite file shared by every process of the machine that uses the
    same directory. Each reserve and settle is one ``BEGIN IMMEDIATE`` transaction (the write
    lock is taken before the read, so two processes cannot both see room for one more call)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._pid = os.getpid()
        self._all: set[sqlite3.Connection] = set()
        #: Connections inside a transaction (``_connection``), and those among them that
        #: ``close()`` left to their thread, to close once the transaction ends.
        self._busy: set[sqlite3.Connection] = set()
        self._orphans: set[sqlite3.Connection] = set()
        self._lock = threading.Lock()
        self._pause = Pause("the SQLite budget ledger")
        with held_from_fork():
            self._conn()  # the table is made there

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection to the file ``path`` names now: one deleted under us (a
        clean-up of the directory) would keep this process's spending from every other."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._pid == os.getpid():
            if still_names(self.path, self._local.file):
                return conn
            with self._lock:
                self._all.discard(conn)
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        if self._pid != os.getpid():  # a forked child: the parent's connections are not ours
            self._pid, self._all, self._local = os.getpid(), set(), threading.local()
            self._busy, self._orphans = set(), set()
        ensure_private_dir(self.path.parent)
        # Created 0o600 (its -wal and -shm copy the mode): sqlite3 would make it 0o644.
        if not stat.S_ISREG(make_private(self.path).st_mode):  # SQLite made /dev/null-journal
            raise OSError(errno.EINVAL, f"{self.path} is not a regular file")
        conn = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        try:
            _use_wal(conn, BUSY_TIMEOUT_S)  # waits for processes making the same new file
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(_SCHEMA)  # the file may be new
            self._local.file = file_id(os.stat(self.path))
        except BaseException:
            conn.close()
            raise
        self._local.conn = conn
        with self._lock:
            self._all.add(conn)
        return conn

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection, in use for the block: a ``close()`` on another thread (a
        configure() while calls are made) closes it once the block ends, never under it. Closed
        under a running statement, SQLite crashed the process (3 of 8 runs of 16 threads' calls
        beside 30 configure()s), or the call's check failed and the call went unchecked."""
        while True:
            conn = self._conn()
            with self._lock:
                if conn in self._all:  # else closed since: this thread opens another
                    self._busy.add(conn)
                    break
        try:
            yield conn
        finally:
            with self._lock:
                self._busy.discard(conn)
                orphaned = conn in self._orphans
                self._orphans.discard(conn)
            if orphaned:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()

    def reserve(
        self, scope_key: str, period_start: str, limit_usd: float, amount_usd: float
    ) -> tuple[bool, float]:
        with self._pause, held_from_fork(), self._connection() as used, _immediate(used) as conn:
            row = conn.execute(_READ, (scope_key, period_start)).fetchone()
            spent = float(row[0]) if row else 0.0
            if spent + amount_usd > limit_usd:
                return False, spent
            conn.execute(_RESERVE, (scope_key, period_start, amount_usd, _now()))
            return True, spent

    def settle(
        self, scope_key: str, period_start: str, reserved_usd: float, actual_usd: float
    ) -> float:
        with self._pause, held_from_fork(), self._connection() as used, _immediate(used) as conn:
            row = conn.execute(
                _SETTLE, (scope_key, period_start, actual_usd, _now(), reserved_usd)
            ).fetchone()
        return float(row[0]) if row else actual_usd

    def reserve_many(self, items: list[Reserve]) -> list[tuple[bool, float]]:
        results: list[tuple[bool, float]] = []
        now = _now()
        with self._pause, held_from_fork(), self._connection() as used, _immediate(used) as conn:
            for key, start, limit, amount in items:
                row = conn.execute(_READ, (key, start)).fetchone()
                spent = float(row[0]) if row else 0.0
                if spent + amount > limit:
                    conn.execute("ROLLBACK")  # all or none
                    return [*results, (False, spent)]
                conn.execute(_RESERVE, (key, start, amount, now))
                results.append((True, spent))
        return results

    def settle_many(self, items: list[Settle]) -> list[float]:
        now = _now()
        spent: list[float] = []
        with self._pause, held_from_fork(), self._connection() as used, _immediate(used) as conn:
            for key, start, reserved, actual in items:
                row = conn.execute(_SETTLE, (key, start, actual, now, reserved)).fetchone()
                spent.append(float(row[0]) if row else actual)
        return spent

    def lease_many(self, items: list[Lease]) -> list[LeaseResult]:
        now = _now()
        with self._pause, held_from_fork(), self._connection() as used, _immediate(used) as conn:
            rows = []
            for item in items:
                row = conn.execute(_READ_ROW, (item[0], item[1])).fetchone()
                rows.append((float(row[0]), float(row[1])) if row else (0.0, 0.0))
            after = [[0.0, 0.0] for _ in items]
            results = _lease(items, rows, after)
            conn.executemany(
                _WRITE,
                [
                    (item[0], item[1], settled, reserved, now)
                    for item, (settled, reserved) in zip(items, after, strict=True)
                ],
            )
        return results

    def spent(self, scope_key: str, period_start: str) -> float:
        with self._pause, held_from_fork(), self._connection() as conn:
            row = conn.execute(_READ, (scope_key, period_start)).fetchone()
        return float(row[0]) if row else 0.0

    def close(self) -> None:
        """Close the connections no thread is using; each of the others is closed by its
        thread when its transaction ends. A thread that uses the ledger after this opens a
        connection again (a call that began before a configure() ends with this ledger)."""
        with held_from_fork():
            with self._lock:
                conns, self._all = self._all, set()
                idle = conns - self._busy
                self._orphans |= conns & self._busy
                self._local = threading.local()
            for conn in idle:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()


#: How long a transaction made ``briefly`` waits for the ledger (SQLite's lock, a PostgreSQL
#: server's answer) by default: past it, it fails, and is tried again later.
BRIEF_S = 0.25
_brief = threading.local()


@contextlib.contextmanager
def briefly(seconds: float = BRIEF_S) -> Iterator[None]:
    """The ledger's transactions on this thread wait at most ``seconds`` (then fail) instead
    of the busy timeout or ``statement_timeout_s`` + 1: for what can be done later (returning
    idle slices, while the leases wait for it), or must end in time (at exit, within
    ``exit_timeout``)."""
    _brief.seconds = max(0.0, seconds)
    try:
        yield
    finally:
        _brief.seconds = None


def brief_wait() -> float | None:
    """The bound ``briefly`` set on this thread, or None. At exit, half of what is left of
    ``exit_timeout``: a ledger that kept the exit's give-back (or a settlement) waiting held
    the exit for its own timeout, before ``exit_timeout`` began; the sinks get the rest."""
    found: float | None = getattr(_brief, "seconds", None)
    if found is None and _pipeline.exiting():
        return _pipeline.exit_time_left() / 2
    return found


@contextlib.contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction (``BEGIN IMMEDIATE``): committed when the block ends, unless the
    block rolled it back itself; rolled back when the block raises. ``briefly``: it waits for
    another process's lock no longer than it says."""
    wait = brief_wait()
    if wait is not None:
        conn.execute(f"PRAGMA busy_timeout = {round(min(wait, BUSY_TIMEOUT_S) * 1000)}")
        try:
            conn.execute("BEGIN IMMEDIATE")
        finally:
            conn.execute(f"PRAGMA busy_timeout = {round(BUSY_TIMEOUT_S * 1000)}")
    else:
        conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    if conn.in_transaction:
        conn.execute("COMMIT")


def _lease(
    items: list[Lease], rows: list[tuple[float, float]], out: list[list[float]]
) -> list[LeaseResult]:
    """``lease_many`` over rows read inside the transaction: (settled, reserved) of each item;
    the new (settled, reserved) are written to ``out``."""
    synced = []
    admitted = True
    for (_, _, limit, held, used, keep, need, unit), (settled, reserved) in zip(
        items, rows, strict=True
    ):
        settled += used
        others = max(0.0, reserved - held)
        ok, granted = grant_of(limit, settled, others, keep, need, unit)
        admitted = admitted and ok
        synced.append((ok, granted, settled, others))
    results: list[LeaseResult] = []
    for index, (ok, granted, settled, others) in enumerate(synced):
        if not admitted:  # one budget refuses the call: none admits it, all are synced
            granted = items[index][5]
        out[index][0], out[index][1] = settled, others + granted
        results.append((ok, granted, settled, others))
    return results


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
