"""The ledgers tokenmeter ships follow the lease protocol (PostgreSQL's: tests/sinks)."""

from __future__ import annotations

import os
import random
import sqlite3
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
from helpers import check_lease_protocol, held_by_another_thread, returns, run_python

from tokenmeter.guardrails import _leases
from tokenmeter.guardrails._ledger import LEASE_CAP, MemoryLedger, SQLiteLedger, grant_of


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_leases_follow_the_protocol(tmp_path: Path, kind: str) -> None:
    ledger = MemoryLedger() if kind == "memory" else SQLiteLedger(tmp_path / "budgets.db")
    check_lease_protocol(ledger)
    ledger.close()


def test_a_sqlite_ledgers_files_are_owner_only(tmp_path: Path) -> None:
    """budgets.db and its -wal and -shm were made 0o644 (world-readable budget names and
    spend), though files tokenmeter creates are its owner's only."""
    old = os.umask(0o022)  # the usual one: sqlite3 alone makes files 0o644
    ledger = SQLiteLedger(tmp_path / "budgets.db")
    try:
        ledger.reserve("k", "2026-12-01T00:00:00+00:00", 10.0, 1.0)
        for name in ("budgets.db", "budgets.db-wal", "budgets.db-shm"):
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    finally:
        ledger.close()
        os.umask(old)


def test_a_sqlite_ledger_removed_while_in_use_is_made_again(tmp_path: Path) -> None:
    """The ledger's file deleted under a running process (a clean-up of .tokenmeter/): its
    connections went on writing to the deleted file, so what it spent from then on reached no
    other process (and a thread that connected later used a new file: two ledgers in one
    process). A connection now follows the file its path names, as the SQLite sink does."""
    path = tmp_path / "budgets.db"
    ledger = SQLiteLedger(path)
    day = "2026-12-01T00:00:00+00:00"
    assert ledger.reserve("k", day, 10.0, 1.0) == (True, 0.0)
    for name in ("budgets.db", "budgets.db-wal", "budgets.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    assert ledger.reserve("k", day, 10.0, 2.0) == (True, 0.0)  # a new ledger: nothing spent
    other = SQLiteLedger(path)  # another process's view
    assert other.spent("k", day) == 2.0
    other.close()
    ledger.close()


#: Another process's use of a ledger: one reservation, then its connection closed.
RESERVE_ONCE = """
import sys
from tokenmeter.guardrails._ledger import SQLiteLedger
ledger = SQLiteLedger(sys.argv[1])
ledger.reserve("k", "2026-12-01T00:00:00+00:00", 1e9, 1.0)
ledger.close()
"""


def test_a_thread_connecting_keeps_the_other_threads_locks_on_the_ledger(tmp_path: Path) -> None:
    """A thread's first use of the ledger opened and closed a descriptor on budgets.db, which
    drops every POSIX lock the process holds on the file, its other connections' included.
    Another process closing its connection then took the file for unused and deleted the WAL
    under them: 22 of 61 reservations kept, and each new thread's reserve raised "disk I/O
    error" (the budget race's process that failed open and let 30 calls through where 10 fit)."""
    path = tmp_path / "budgets.db"
    day = "2026-12-01T00:00:00+00:00"
    ledger = SQLiteLedger(path)
    errors: list[BaseException] = []

    def reserve() -> None:
        try:
            ledger.reserve("k", day, 1e9, 1.0)
        except BaseException as exc:
            errors.append(exc)

    reserve()
    for _ in range(5):
        thread = threading.Thread(target=reserve)  # its first use: it connects
        thread.start()
        thread.join()
        run_python("-c", RESERVE_ONCE, str(path), env=dict(os.environ), cwd=tmp_path)
        reserve()
    ledger.close()
    assert errors == []
    other = SQLiteLedger(path)
    assert other.spent("k", day) == 1 + 5 * 3
    other.close()


def test_a_sqlite_ledger_closed_while_other_threads_use_it_fails_none_of_them(
    tmp_path: Path,
) -> None:
    """configure() closes the old ledger while calls on other threads are inside its
    transactions: closing their connections under them crashed the process (SIGSEGV in 1 of 4
    runs of 16 threads' budgeted calls beside 30 configure()s) or failed their checks, which
    let the calls through an exhausted budget. In a child: a crash must fail this test only."""
    script = f"""
import sqlite3, threading
from tokenmeter.guardrails._ledger import SQLiteLedger
ledger = SQLiteLedger({str(tmp_path / "budgets.db")!r})
day = "2026-12-01T00:00:00+00:00"
stop, errors, counts = threading.Event(), [], [0] * 8
def use(index):
    try:
        while not stop.is_set():
            ledger.reserve("k", day, 1e9, 1.0)
            ledger.spent("k", day)
            counts[index] += 1  # each thread its own count
    except Exception as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=use, args=(index,)) for index in range(8)]
for thread in threads:
    thread.start()
closes = 0
while (sum(counts) < 200 or closes < 50) and not errors and all(t.is_alive() for t in threads):
    ledger.close()  # all the while they work
    closes += 1
stop.set()
for thread in threads:
    thread.join()
assert not errors, errors[:3]
conn = sqlite3.connect({str(tmp_path / "budgets.db")!r})
(reserved,) = conn.execute("SELECT SUM(reserved_usd) FROM budget_ledger").fetchone()
assert reserved == sum(counts), (reserved, sum(counts))
"""
    run_python("-c", script, env=dict(os.environ), cwd=tmp_path)


def test_a_sqlite_ledger_locked_by_someone_else_is_not_waited_for_at_every_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """budgets.db write-locked by someone else (a sqlite3 shell left in a transaction while a
    budget is reset by hand, a process stopped in one) made every LLM call of every process wait
    the busy timeout twice (a minute) before it went through. A ledger that failed after waiting
    a second or more is now not asked again for a while: calls go through at once meanwhile."""
    import sqlite3

    from tokenmeter.guardrails import _ledger

    monkeypatch.setattr(_ledger, "BUSY_TIMEOUT_S", 1.0)  # 30 s in use
    path = tmp_path / "budgets.db"
    ledger = SQLiteLedger(path)
    day = "2026-12-01T00:00:00+00:00"
    assert ledger.reserve("k", day, 10.0, 1.0) == (True, 0.0)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        ledger.reserve("k", day, 10.0, 1.0)  # waited for the lock, in vain
    with pytest.raises(TimeoutError, match="not asked again"):
        ledger.reserve("k", day, 10.0, 1.0)  # not sent: not waited for
    holder.execute("ROLLBACK")
    holder.close()
    assert SQLiteLedger(path).spent("k", day) == 1.0
    ledger.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_child_forked_during_another_threads_ledger_transaction_keeps_its_ledger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fork() while another thread (the lease keeper giving a slice back, an application's
    thread reserving a call) was inside a ledger transaction: SQLite keeps the process's locks in
    memory, so the child inherited a write lock held by a thread it does not have, and its every
    ledger transaction failed "database is locked" after the busy timeout (30 s of an LLM call
    held, then let through unchecked), or hung. fork() now waits for them, as for the SQLite
    sink's."""
    import signal
    import threading

    from tokenmeter.guardrails import _ledger

    monkeypatch.setattr(_ledger, "BUSY_TIMEOUT_S", 2.0)  # 30 s in use
    ledger = SQLiteLedger(tmp_path / "budgets.db")
    inside, release = threading.Event(), threading.Event()

    def held_up(statement: str) -> None:
        if statement.startswith("INSERT"):  # after BEGIN IMMEDIATE and the read
            inside.set()
            release.wait(10)

    def reserve_slowly() -> None:
        conn = ledger._conn()  # this thread's connection: held up inside the transaction
        conn.set_trace_callback(held_up)
        ledger.reserve("k", "", 10.0, 1.0)
        conn.set_trace_callback(None)

    worker = threading.Thread(target=reserve_slowly)
    worker.start()
    assert inside.wait(10)
    threading.Timer(0.3, release.set).start()  # the transaction ends while fork() waits for it
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        signal.alarm(20)  # a hang fails the test instead of holding it
        try:
            code = 0 if ledger.reserve("k", "", 10.0, 2.0) == (True, 1.0) else 2
        except BaseException:
            code = 1
        os._exit(code)
    release.set()
    worker.join()
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert ledger.spent("k", "") == 3.0
    ledger.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_child_forked_while_another_thread_is_inside_the_memory_ledger_records(
    tmp_path: Path,
) -> None:
    """``budget_ledger = "memory"``: fork() while another thread was inside the memory ledger
    (settling a record, taking a slice) copied its lock held into the child, where no thread
    ever let it go: the child's first budgeted ``record()`` hung for ever (1 child in 100-150
    forks beside 4 recording threads). The child's copy of the ledger has a new lock."""
    import signal

    import tokenmeter
    from tokenmeter.guardrails import _budgets

    tokenmeter.configure(
        directory=tmp_path,
        budget_ledger="memory",
        sinks=[],
        budgets=[{"name": "daily", "limit_usd": 1000, "period": "day"}],
    )
    tokenmeter.record("openai", "gpt-4o", 100, 10)  # the ledger in use
    with held_by_another_thread(_budgets._memory_ledger._lock):  # as settle_many holds it
        pid = os.fork()
        if pid == 0:  # pragma: no cover (the child)
            signal.alarm(20)  # a hang fails the test instead of holding it
            tokenmeter.record("openai", "gpt-4o", 100, 10)
            os._exit(0)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def test_a_new_sqlite_ledger_waits_for_another_connection_to_it(tmp_path: Path) -> None:
    """Switching a new database to WAL is refused at once while another connection holds a lock
    on it, whatever the busy timeout: of 8 processes opening a new budgets.db together (workers
    of one job starting), about one in 240 failed "database is locked", and its first budgeted
    call went through unchecked with an error logged. It waits now, as the SQLite sink does."""
    import sqlite3
    import threading

    path = tmp_path / "budgets.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another process making the same new file
    threading.Timer(0.3, holder.execute, ("ROLLBACK",)).start()
    ledger = SQLiteLedger(path)
    assert ledger.reserve("k", "", 10.0, 1.0) == (True, 0.0)
    ledger.close()
    holder.close()


def test_a_slice_is_capped_and_a_budget_near_its_limit_is_not_sliced() -> None:
    assert grant_of(1e9, 0.0, 0.0, 0.0, 1.0, 1.0) == (True, 1.0 + LEASE_CAP * 1.0)
    assert grant_of(9.0, 0.0, 0.0, 0.0, 1.0, 1.0) == (True, 2.0)  # 8 more fit: one slice call
    assert grant_of(8.9, 0.0, 0.0, 0.0, 1.0, 1.0) == (True, 1.0)  # fewer: exactly the call
    assert grant_of(8.9, 0.0, 0.0, 2.0, 1.0, 1.0) == (True, 3.0)  # and the calls in flight
    assert grant_of(1.0, 0.5, 0.0, 0.0, 1.0, 1.0) == (False, 0.0)
    assert grant_of(1.0, 0.0, 0.0, 0.0, 0.0, 0.0) == (True, 0.0)  # an unpriced call fits
    assert grant_of(1.0, 2.0, 0.0, 0.0, 0.0, 0.0) == (False, 0.0)  # unless the budget is over
    # Room for more calls than a float holds (a tiny per-call cost): still one capped slice,
    # not an OverflowError that made the ledger "fail" and let every call through.
    assert grant_of(1e9, 0.0, 0.0, 0.0, 0.0, 1e-320) == (True, LEASE_CAP * 1e-320)


class _Holder:
    group: Any = None


A = ("a|day|everything", "2026-12-01T00:00:00+00:00", 10.0)
B = ("b|total|everything", "", 10.0)
C = ("c|month|provider=openai", "2026-12-01T00:00:00+00:00", 10.0)


def test_a_lease_group_admits_and_settles_in_all_its_leases_until_one_is_dropped() -> None:
    ledger = MemoryLedger()
    rows = [A, B]
    holder = _Holder()
    try:
        leases, refused, _ = _leases.admit(ledger, rows, 0.1, holder)
        group = holder.group
        assert refused == -1 and group is not None and group.leases == leases
        assert _leases.settle_group(group, leases, 0.1, 0.1, [0.15, 0.15]) == []
        # the slices have room: the group keeps the call (below the floors of its rows)
        assert _leases.take(group, rows, 0.1, [0.25, 0.15]) is leases
        assert group.active and [lease.inflight for lease in leases] == [0.0, 0.0]
        # the second row's floor is crossed (index 1, spent 0.2), the first's is not: the
        # group is folded into its leases
        crossed = _leases.settle_group(group, leases, 0.1, 0.1, [0.25, 0.15])
        assert crossed == [(1, pytest.approx(0.2))]
        assert not group.active
        assert [lease.used for lease in leases] == [pytest.approx(0.2)] * 2
        assert [lease.inflight for lease in leases] == [0.0, 0.0]
        assert _leases.take(group, list(rows), 0.1, [9.0, 9.0]) is None  # not the group's rows
        assert _leases.take(group, rows, 5.0, [9.0, 9.0]) is None  # no slice has that room
        assert [lease.inflight for lease in leases] == [0.0, 0.0]  # nothing was reserved
        _leases.give_back()  # unused slices back to the ledger: the leases are dropped
        assert ledger.spent(B[0], B[1]) == pytest.approx(0.2)
        assert _leases.take(group, rows, 0.1, [9.0, 9.0]) is None
        leases, refused, _ = _leases.admit(ledger, rows, 0.1, holder)  # a new group
        group = holder.group
        _leases.settle_group(group, leases, 0.1, 0.1, [9.0, 9.0])
        assert _leases.take(group, rows, 0.1, [9.0, 9.0]) is leases
        _leases.forget()  # (a new ledger) the leases are forgotten, slices and all
        assert _leases.take(group, rows, 0.1, [9.0, 9.0]) is None
    finally:
        _leases.give_back()
        _leases.forget()
        ledger.close()


class _Stalling(MemoryLedger):
    """A ledger that keeps a lease transaction waiting once ``stall`` is set (a database locked
    by another program, a server that stopped answering), until ``go``."""

    def __init__(self) -> None:
        super().__init__()
        self.stall = False
        self.entered = threading.Event()
        self.go = threading.Event()

    def lease_many(self, items: Any) -> Any:
        if self.stall:
            self.entered.set()
            self.go.wait(60)
        return super().lease_many(items)


def test_a_give_back_the_ledger_keeps_waiting_holds_up_no_call() -> None:
    """The keeper (and a session's end) gave slices back holding the leases' lock: a ledger
    that kept it waiting held up every budgeted call of the process, those whose slice had room
    too (8.5 s on a locked SQLite file, 30 s on a frozen PostgreSQL server). A call now goes on
    (without the slice going back, it asks the ledger itself), and the ledger ends exact."""
    ledger = _Stalling()
    rows = [A]
    holder = _Holder()
    giving: threading.Thread | None = None
    try:
        leases, refused, _ = _leases.admit(ledger, rows, 0.1, holder)
        group = holder.group
        assert _leases.settle_group(group, leases, 0.1, 0.1, [9.0]) == []
        assert leases[0].room > 0.1  # a slice: the next call needs no ledger
        ledger.stall = True
        giving = threading.Thread(target=_leases.give_back, daemon=True)
        giving.start()
        assert ledger.entered.wait(30)
        took: list[Any] = []
        caller = threading.Thread(target=lambda: took.append(_leases.take(group, rows, 0.1, [9.0])))
        caller.start()
        caller.join(timeout=10)
        assert not caller.is_alive(), "a call waits for the ledger's give-back"
        assert took == [None]  # its slice is on its way back: admit asks the ledger
    finally:
        ledger.go.set()
        if giving is not None:
            giving.join(timeout=30)
    assert ledger.spent(*A[:2]) == pytest.approx(0.1)
    assert _leases._leases == {}  # nothing held: forgotten
    leases, refused, _ = _leases.admit(ledger, rows, 0.1, holder)
    assert refused == -1
    _leases.give_back()
    _leases.forget()


def test_the_keepers_give_back_waits_briefly_for_a_locked_ledger_and_keeps_the_slice(
    tmp_path: Path,
) -> None:
    """The keeper returns idle slices: with ``budgets.db`` write-locked by another program it
    waited SQLite's busy timeout (30 s), and the process's next call with room in that slice
    waited with it (8.5 s measured). It now gives up after ``BRIEF_S``, keeps the slice, and
    the call takes it."""
    ledger = SQLiteLedger(tmp_path / "budgets.db")
    holder = _Holder()
    rows = [A]
    other = sqlite3.connect(tmp_path / "budgets.db", isolation_level=None)
    try:
        leases, _, _ = _leases.admit(ledger, rows, 0.1, holder)
        _leases.settle_group(holder.group, leases, 0.1, 0.1, [9.0])
        room = leases[0].room
        assert room > 0.1
        other.execute("BEGIN EXCLUSIVE")
        failed = returns(
            lambda: _leases.give_back(brief=True), "the keeper waits SQLite's busy timeout", 20
        )
        assert [type(exc) for exc in failed] == [sqlite3.OperationalError]
        assert leases[0].room == room  # nothing went back: the slice is the lease's still
        assert _leases.take(holder.group, rows, 0.1, [9.0]) is leases
        other.execute("ROLLBACK")
        _leases.settle_group(holder.group, leases, 0.1, 0.1, [9.0])
        _leases.give_back(brief=True)
        assert ledger.spent(*A[:2]) == pytest.approx(0.2)
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()
        _leases.forget()
        ledger.close()


def test_a_give_back_that_fails_leaves_the_slices_with_their_leases() -> None:
    """The ledger still holds what a failed give-back sent: so do the leases, used USD too."""

    class Failing(MemoryLedger):
        fail = False

        def lease_many(self, items: Any) -> Any:
            if self.fail:
                raise OSError("the ledger is down")
            return super().lease_many(items)

    ledger = Failing()
    holder = _Holder()
    try:
        leases, _, _ = _leases.admit(ledger, [A], 0.1, holder)
        _leases.settle_group(holder.group, leases, 0.1, 0.1, [9.0])
        before = (leases[0].held, leases[0].used, leases[0].inflight)
        ledger.fail = True
        with pytest.raises(OSError):
            _leases.give_back()
        assert (leases[0].held, leases[0].used, leases[0].inflight) == before
        ledger.fail = False
        _leases.give_back()
        assert ledger.spent(*A[:2]) == pytest.approx(0.1)
        assert _leases._leases == {}
    finally:
        _leases.forget()


def test_two_lease_groups_sharing_a_row_settle_every_call_exactly_once() -> None:
    """An active group keeps its calls' sums; a group or a sync that needs one of its leases
    folds them in first: the ledger ends with exactly what the calls cost."""
    ledger = MemoryLedger()
    first, second = _Holder(), _Holder()
    floors = [9.0, 9.0]
    taken = 0

    def reserve(holder: _Holder, rows: list[tuple[str, str, float]]) -> list[Any]:
        nonlocal taken
        if holder.group is not None:
            leases = _leases.take(holder.group, holder.group.rows, 0.1, floors)
            if leases is not None:
                taken += 1
                return leases
        leases, refused, _ = _leases.admit(ledger, rows, 0.1, holder)  # the slow path
        assert refused == -1
        return leases

    try:
        calls = {id(first): 0, id(second): 0}
        held = []
        for turn in range(60):  # alternating, and now and then calls in flight at once
            holder, rows = (first, [A, B]) if turn % 3 else (second, [A, C])
            leases = reserve(holder, rows)
            calls[id(holder)] += 1
            if turn % 7 == 0:
                held.append((holder, leases))
                continue
            assert _leases.settle_group(holder.group, leases, 0.1, 0.05, floors) == []
        for holder, leases in held:
            assert _leases.settle_group(holder.group, leases, 0.1, 0.05, floors) == []
        assert taken > 30  # most calls were admitted by their group
        assert _leases.take(first.group, first.group.rows, 99.0, floors) is None
        _leases.give_back()
        assert ledger.spent(*A[:2]) == pytest.approx(0.05 * 60)
        assert ledger.spent(*B[:2]) == pytest.approx(0.05 * calls[id(first)])
        assert ledger.spent(*C[:2]) == pytest.approx(0.05 * calls[id(second)])
        assert [lease.inflight for lease in _leases._leases.values()] == [
            pytest.approx(0.0, abs=1e-12)
        ] * len(_leases._leases)
    finally:
        _leases.give_back()
        _leases.forget()
        ledger.close()


@pytest.mark.parametrize("limit", [100.0, 6.0])  # wide slices; slices a few calls wide
def test_lease_groups_keep_every_lease_exact_through_any_sequence_of_calls(limit: float) -> None:
    """Three groups sharing rows, calls reserved (in a group or through the ledger), settled,
    released, records made by hand, slices given back, in a random order: after each step every
    lease (with what its active group keeps for it) holds exactly the calls in flight and
    what was spent, the ledger reserves what the leases hold, and nothing is overdrawn."""
    rng = random.Random(7)
    ledger = MemoryLedger()
    rows = {"a": ("a", "", 3 * limit), "b": ("b", "", limit), "c": ("c", "", limit)}
    holders = [(_Holder(), [rows["a"], rows["b"]]), (_Holder(), [rows["a"], rows["c"]])]
    holders.append((_Holder(), [rows["b"], rows["c"]]))
    floors = [90.0, 90.0]
    inflight: list[tuple[_Holder, list[Any], list[str]]] = []
    spent = dict.fromkeys(rows, 0.0)
    reserved = dict.fromkeys(rows, 0.0)

    def check() -> None:
        for (name, start), lease in _leases._leases.items():
            owner = lease.owner if lease.owner is not None and lease.owner.active else None
            pending = owner.pending if owner is not None else 0.0
            used = lease.used + (owner.spent if owner is not None else 0.0)
            assert lease.inflight + pending == pytest.approx(reserved[name], abs=1e-9)
            assert lease.settled + used == pytest.approx(spent[name], abs=1e-9)
            assert lease.held + 1e-9 >= reserved[name] + used
            settled_row, reserved_row = ledger._rows[(name, start)]
            assert reserved_row == pytest.approx(lease.held, abs=1e-9)
            assert settled_row + used == pytest.approx(spent[name], abs=1e-9)

    try:
        for _ in range(800):
            step = rng.random()
            if step < 0.45 or not inflight:
                holder, wanted = rng.choice(holders)
                leases = None
                if holder.group is not None and rng.random() < 0.9:
                    leases = _leases.take(holder.group, holder.group.rows, 0.1, floors)
                if leases is None:
                    leases, refused, _ = _leases.admit(ledger, wanted, 0.1, holder)
                    if refused >= 0:  # the budget is spent: nothing was reserved
                        check()
                        continue
                names = [row[0] for row in holder.group.rows]
                inflight.append((holder, leases, names))
                for name in names:
                    reserved[name] += 0.1
            elif step < 0.85:
                holder, leases, names = inflight.pop(rng.randrange(len(inflight)))
                actual = rng.choice([0.0, 0.02, 0.05, 0.1])
                assert _leases.settle_group(holder.group, leases, 0.1, actual, floors) == []
                for name in names:
                    reserved[name] -= 0.1
                    spent[name] += actual
            elif step < 0.93:
                holder, leases, names = inflight.pop(rng.randrange(len(inflight)))
                _leases.release(leases, 0.1)
                for name in names:
                    reserved[name] -= 0.1
            elif step < 0.98:  # a record made by hand, in rows this process holds leases on
                name = rng.choice(sorted(rows))
                _, taken = _leases.settle((), 0.0, 0.03, [(name, "")])
                if taken[0]:
                    spent[name] += 0.03
            else:
                _leases.give_back()
            check()
    finally:
        _leases.give_back()
        _leases.forget()
        ledger.close()


def test_a_device_in_place_of_the_ledger_is_refused(tmp_path: Path) -> None:
    """budgets.db linked to /dev/null: SQLite opened the device as the ledger and made its
    journal beside it (/dev/null-journal, 0o666, for every later user of /dev)."""
    path = tmp_path / "budgets.db"
    path.symlink_to("/dev/null")
    before = os.path.exists("/dev/null-journal")
    with pytest.raises(OSError, match="is not a regular file"):
        SQLiteLedger(path)
    assert os.path.exists("/dev/null-journal") == before
