"""The budget ledger over PostgreSQL (the guardrails' reserve-then-settle protocol), against a
real server: semantics, processes racing one budget, and a killed connection."""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("psycopg", reason="psycopg is not installed (tokenmeter[postgres])")

from helpers import (
    another_runs_connection,
    check_lease_protocol,
    fan_out,
    held_by_another_thread,
    hold_budget,
    ledger_rows_locked,
    refuse_threads,
    returns,
    wait_for_a_ledger_waiting_on_a_row,
)
from pg_server import PgServer
from sink_helpers import CommitAnswerLost

import tokenmeter
from tokenmeter.sinks import InMemorySink
from tokenmeter.sinks.postgres import PostgresSink
from tokenmeter.testing import FakeProvider

HERE = Path(__file__).resolve().parent
DAY = "2026-12-01T00:00:00+00:00"


def test_reserve_settle_and_spent_follow_the_protocol(pg_dsn: str) -> None:
    ledger = PostgresSink(pg_dsn).budget_ledger()
    assert ledger.spent("k", DAY) == 0.0
    assert ledger.reserve("k", DAY, 10.0, 4.0) == (True, 0.0)
    assert ledger.reserve("k", DAY, 10.0, 4.0) == (True, 4.0)
    assert ledger.reserve("k", DAY, 10.0, 4.0) == (False, 8.0)  # would make 12
    assert ledger.spent("k", DAY) == 8.0
    assert ledger.settle("k", DAY, 4.0, 1.5) == 5.5  # cost less than reserved
    assert ledger.spent("k", DAY) == 5.5
    assert ledger.settle("k", DAY, 4.0, 0.0) == 1.5  # failed call: released
    assert ledger.spent("k", DAY) == 1.5
    assert ledger.reserve("k", DAY, 1.0, 2.0) == (False, 1.5)  # larger than the whole limit
    assert ledger.reserve("k", "", 1.0, 2.0) == (False, 0.0)  # never fits: no row made
    ledger.settle("other", DAY, 0.0, 3.0)  # settles without a reservation make the row
    assert ledger.spent("other", DAY) == 3.0
    assert ledger.spent("k", "2026-12-02T00:00:00+00:00") == 0.0  # another period
    # Several budgets at once: all reserved or none.
    both = [("k", DAY, 10.0, 1.0), ("other", DAY, 3.5, 1.0)]
    assert ledger.reserve_many(both) == [(True, 1.5), (False, 3.0)]
    assert (ledger.spent("k", DAY), ledger.spent("other", DAY)) == (1.5, 3.0)
    assert ledger.reserve_many([("k", DAY, 10.0, 1.0), ("other", DAY, 5.0, 1.0)]) == [
        (True, 1.5),
        (True, 3.0),
    ]
    assert ledger.settle_many([("k", DAY, 1.0, 0.5), ("other", DAY, 1.0, 2.0)]) == [2.0, 5.0]
    with pytest.raises(ValueError, match="amount_usd"):
        ledger.reserve("k", DAY, 10.0, -1.0)
    ledger.close()


def test_leases_follow_the_protocol(pg_dsn: str) -> None:
    ledger = PostgresSink(pg_dsn).budget_ledger()
    check_lease_protocol(ledger)
    ledger.close()


def test_processes_racing_one_budget_never_overshoot_it(pg_dsn: str) -> None:
    PostgresSink(pg_dsn).budget_ledger().spent("warm-up", DAY)  # schema made (raced elsewhere)
    workers = [
        subprocess.Popen(
            [sys.executable, str(HERE / "pg_ledger_process.py"), pg_dsn, "30", "0.25"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    granted = []
    for worker in workers:
        out, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err
        granted.append(int(out.strip()))
    assert sum(granted) == 120  # exactly the budget: 30 / 0.25
    assert PostgresSink(pg_dsn).budget_ledger().spent("budget:team", DAY) == 30.0


def test_threads_sharing_one_ledger_never_overshoot(pg_dsn: str) -> None:
    ledger = PostgresSink(pg_dsn).budget_ledger()
    granted: list[int] = []

    def spend() -> None:
        count = 0
        while ledger.reserve("t", DAY, 5.0, 0.5)[0]:
            count += 1
        granted.append(count)

    threads = [threading.Thread(target=spend) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(granted) == 10
    assert ledger.spent("t", DAY) == 5.0


def test_a_fan_out_makes_every_call_that_fits(pg_dsn: str, tmp_path: Path) -> None:
    """60 calls at once (asyncio.gather) under a budget kept in PostgreSQL with room for 50,
    each billed its estimate: the ceilings on their estimates that the calls admitted far from
    the limit held filled the room near it, and 42 of the 50 were made. They come down to the
    estimates before a call is refused: all 50 made, 10 refused."""
    messages = [{"role": "user", "content": "Summarise this ticket."}]
    tokens = tokenmeter.estimate("gpt-4o", messages=messages).input_tokens
    each = tokens * 2.5e-6  # gpt-4o input: $2.50 per million tokens
    memory = InMemorySink()
    tokenmeter.configure(
        sinks=[PostgresSink(pg_dsn), memory],
        directory=tmp_path,
        budgets=[{"name": "batch", "limit_usd": repr(50.5 * each), "period": "total"}],
    )
    tokenmeter.instrument(["openai"])
    try:
        sent, refused = fan_out(messages, 60)
    finally:
        tokenmeter.uninstrument()
    assert (sent, len(refused)) == (50, 10)
    assert tokenmeter.flush(5)
    assert sum(1 for record in memory.records if record.status == "ok") == 50


def _race_four_ledgers(pg_dsn: str, setting: str) -> None:
    """Four ledgers racing one budget of 100 calls in a database set so (ALTER DATABASE ...
    SET): every call is checked (none fails, which would let it through) and exactly 100 fit."""
    import psycopg

    name = pg_dsn.rsplit("dbname=", 1)[1]
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE {name} SET {setting}".encode())
    ledgers = [PostgresSink(pg_dsn).budget_ledger() for _ in range(4)]
    granted: list[int] = []
    errors: list[BaseException] = []

    def spend(ledger: Any) -> None:
        count = 0
        try:
            while ledger.reserve("t", DAY, 5.0, 0.05)[0]:
                ledger.settle("t", DAY, 0.05, 0.05)
                count += 1
        except Exception as exc:
            errors.append(exc)
        granted.append(count)

    threads = [threading.Thread(target=spend, args=(ledger,)) for ledger in ledgers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sum(granted) == 100
    assert ledgers[0].spent("t", DAY) == pytest.approx(5.0)
    for ledger in ledgers:
        ledger.close()


@pytest.mark.parametrize("isolation", ["repeatable read", "serializable"])
def test_a_database_whose_transactions_default_to_a_stricter_isolation_never_fails_a_call(
    pg_dsn: str, isolation: str
) -> None:
    """The ledger's statements re-check the row they lock, as READ COMMITTED does: a database
    set to a stricter default (ALTER DATABASE ... SET default_transaction_isolation) refused
    concurrent updates of a budget's row ("could not serialize access"), each such call was let
    through unreserved, and processes racing a budget made 120 calls where 100 fit."""
    _race_four_ledgers(pg_dsn, f"default_transaction_isolation = '{isolation}'")


def test_a_database_with_a_short_lock_timeout_never_fails_a_call(pg_dsn: str) -> None:
    """Racing ledgers wait on a budget's row lock for the moment another holds it: an admin's
    lock_timeout (ALTER DATABASE ... SET lock_timeout, a guard against DDL queues) shorter than
    that failed the check (LockNotAvailable) and let the call through unreserved.
    statement_timeout_s bounds every wait instead."""
    _race_four_ledgers(pg_dsn, "lock_timeout = '1ms'")


#: Each multi-row transaction of the ledger, its budgets listed as one service lists them
#: ("org-total" then "org-month"): the reverse of the rows' own order.
_LISTED_TOTAL_FIRST: dict[str, tuple[str, list[Any]]] = {
    "reserve_many": (
        "reserve_many",
        [("org-total", DAY, 10.0, 1.0), ("org-month", DAY, 10.0, 1.0)],
    ),
    "settle_many": (
        "settle_many",
        [("org-total", DAY, 0.0, 1.0), ("org-month", DAY, 0.0, 1.0)],
    ),
    "lease_many": (
        "lease_many",
        [
            ("org-total", DAY, 10.0, 0.0, 0.0, 0.0, 1.0, 1.0),
            ("org-month", DAY, 10.0, 0.0, 0.0, 0.0, 1.0, 1.0),
        ],
    ),
}


@pytest.mark.parametrize("method", sorted(_LISTED_TOTAL_FIRST))
def test_budgets_listed_in_another_order_lock_their_rows_in_one_order(
    pg_dsn: str, method: str
) -> None:
    """Two services listing the same two budgets in opposite orders (org-total, org-month and
    org-month, org-total) locked their rows in opposite orders and deadlocked: one process's
    ledger was paused for 60 s and let its calls through, 1,675-2,689 calls granted where 444
    fit under $0.20. Here another client holds org-month (as a process listing it first
    does); a ledger listing org-total first must wait for it holding nothing, so the other
    client can still take org-total (it had it locked, and NOWAIT failed)."""
    import psycopg

    ledger = PostgresSink(pg_dsn).budget_ledger()
    ledger.settle_many([("org-total", DAY, 0.0, 0.0), ("org-month", DAY, 0.0, 0.0)])  # rows
    name, items = _LISTED_TOTAL_FIRST[method]
    results: list[Any] = []
    with ledger_rows_locked(pg_dsn, ["org-month"], DAY) as other:
        worker = threading.Thread(target=lambda: results.append(getattr(ledger, name)(items)))
        worker.start()
        wait_for_a_ledger_waiting_on_a_row(pg_dsn)
        try:
            other.execute(
                "SELECT 1 FROM budget_ledger WHERE scope_key = 'org-total' FOR UPDATE NOWAIT"
            )
        except psycopg.errors.LockNotAvailable:
            other.rollback()  # the ledger goes on: the assertion below says what went wrong
            worker.join(30)
            pytest.fail("the ledger locked org-total, then waited for org-month")
    worker.join(30)
    assert len(results) == 1 and len(results[0]) == 2
    assert ledger.spent("org-total", DAY) == ledger.spent("org-month", DAY) >= 1.0  # + a slice
    ledger.close()


def test_a_transaction_lost_to_a_deadlock_is_run_again_and_never_pauses_the_ledger(
    pg_dsn: str,
) -> None:
    """A deadlock with another client (its transaction holding org-total, then wanting
    org-month, which the ledger holds): PostgreSQL rolled the ledger's transaction back, the
    error (DeadlockDetected, found after deadlock_timeout, 1 s) counted as a ledger failing
    slowly, the call was let through and the ledger paused for 60 s. It is run again at once."""
    ledger = PostgresSink(pg_dsn).budget_ledger()
    ledger.settle_many([("org-month", DAY, 0.0, 0.0), ("org-total", DAY, 0.0, 0.0)])  # rows
    both = [("org-month", DAY, 10.0, 1.0), ("org-total", DAY, 10.0, 1.0)]
    results: list[Any] = []
    with ledger_rows_locked(pg_dsn, ["org-total"], DAY) as other:
        other.execute("SET deadlock_timeout = '60s'")  # the ledger's backend finds the deadlock
        raised = []

        def reserve() -> None:
            try:
                results.append(ledger.reserve_many(both))
            except Exception as exc:
                raised.append(exc)

        worker = threading.Thread(target=reserve)
        worker.start()
        wait_for_a_ledger_waiting_on_a_row(pg_dsn)  # holding org-month, waiting for org-total
        other.execute(
            "SELECT 1 FROM budget_ledger WHERE scope_key = 'org-month' FOR UPDATE"
        )  # returns once the server rolled the ledger's transaction back
    worker.join(30)
    assert raised == []
    assert results == [[(True, 0.0), (True, 0.0)]]
    assert ledger.reserve("org-total", DAY, 10.0, 1.0) == (True, 1.0)  # not paused
    ledger.close()


def test_a_watchdog_that_cannot_start_is_started_again_at_the_next_transaction(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The thread that cuts off a hung transaction could not start (a pids limit): the
    reservation failed (the call let through unreserved), and the watchdog was left marked
    running with no thread, never started again. That transaction runs unwatched (a failure
    would stop the budgets and the sink's writes for as long as the limit lasts)."""
    ledger = PostgresSink(pg_dsn).budget_ledger()
    refuse_threads(monkeypatch, "tokenmeter-pg-ledger", 1)
    assert ledger.reserve("k", DAY, 10.0, 1.0) == (True, 0.0)
    assert ledger.reserve("k", DAY, 10.0, 1.0) == (True, 1.0)
    assert any(t.name.startswith("tokenmeter-pg-ledger") for t in threading.enumerate())
    ledger.close()


def test_a_killed_connection_is_replaced(pg_server: PgServer, pg_dsn: str) -> None:
    """Only this test's database's tokenmeter connection, the ledger's, is killed: the server
    lists every database's backends, and killing each one named 'tokenmeter' killed (6,) where
    (1,) was expected under ``pytest -n 3``, and other workers' tests failed mid-way with
    "server closed the connection unexpectedly"."""
    import psycopg

    ledger = PostgresSink(pg_dsn).budget_ledger()
    assert ledger.reserve("k", DAY, 10.0, 1.0)[0]
    with (
        another_runs_connection(pg_server) as other,
        psycopg.connect(pg_dsn, autocommit=True) as admin,
    ):
        killed = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'tokenmeter' AND datname = current_database()"
        ).fetchone()
        assert other.execute("SELECT 1").fetchone() == (1,)  # another run's: still there
    assert killed == (1,)
    assert ledger.reserve("k", DAY, 10.0, 1.0) == (True, 1.0)


def test_a_transaction_whose_commit_answer_is_lost_is_not_applied_twice(
    pg_dsn: str, commit_answer_lost: CommitAnswerLost
) -> None:
    """The server committed a settlement or a lease, but its answer never came back (the
    connection died at that moment): the ledger ran it again on a new connection, so a call that
    cost $1.00 left settled_usd = 2.0, and a give-back of $1.50 used left 3.0."""
    ledger = PostgresSink(commit_answer_lost.dsn).budget_ledger()
    assert ledger.spent("k", DAY) == 0.0  # connected: the next failure is retried
    commit_answer_lost.armed = 1
    assert ledger.settle("k", DAY, 0.0, 1.0) == 1.0
    assert ledger.spent("k", DAY) == 1.0
    [(ok, held, _, _)] = ledger.lease_many([("k", DAY, 10.0, 0.0, 0.0, 0.0, 1.0, 0.5)])
    assert ok and held >= 1.0
    commit_answer_lost.armed = 1
    given_back = ledger.lease_many([("k", DAY, 10.0, held, 1.5, 0.0, -1.0, 0.5)])
    assert given_back == [(True, 0.0, 2.5, 0.0)]
    assert commit_answer_lost.cut == 2
    assert PostgresSink(pg_dsn).budget_ledger().spent("k", DAY) == 2.5
    commit_answer_lost.armed = 1  # a reservation too
    assert ledger.reserve("k", DAY, 10.0, 1.0) == (True, 2.5)
    assert ledger.spent("k", DAY) == 3.5
    ledger.close()


def test_a_nul_in_a_session_id_is_kept_apart_not_refused(pg_dsn: str) -> None:
    """A session budget's period is the session id, which may hold a NUL (SQLite keeps it):
    PostgreSQL text cannot, so the ledger failed and the budget let every call through."""
    ledger = PostgresSink(pg_dsn).budget_ledger()
    session = "chat\x00one"
    assert ledger.reserve("k", session, 10.0, 4.0) == (True, 0.0)
    assert ledger.settle("k", session, 4.0, 3.0) == 3.0
    assert ledger.spent("k", session) == 3.0
    assert ledger.lease_many([("k", session, 10.0, 0.0, 0.0, 0.0, 1.0, 1.0)])[0][0]
    assert ledger.spent("k\x00", session) == 0.0  # NUL in the budget's own key too
    ledger.close()


def test_a_budget_row_deleted_by_hand_is_made_again(pg_dsn: str) -> None:
    """The ledger remembers which rows exist, so a lease only updates them: a row deleted since
    (a budget reset by hand) made every later lease fail, and the budget let every call through."""
    import psycopg

    ledger = PostgresSink(pg_dsn).budget_ledger()
    lease = ("k", DAY, 10.0, 0.0, 0.0, 0.0, 1.0, 1.0)
    assert ledger.lease_many([lease])[0][0]
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute("DELETE FROM tokenmeter.budget_ledger")
    ok, granted, settled, others = ledger.lease_many([lease])[0]
    assert (ok, settled, others) == (True, 0.0, 0.0)
    assert ledger.spent("k", DAY) == granted
    ledger.close()


def test_the_rows_a_ledger_remembers_are_bounded(pg_dsn: str) -> None:
    """The ledger remembered every row it had leased, for the life of the process: a budget of
    ``period="session"`` has a row per session, so a server opening a session per request grew
    by a row's keys at every request (about 250 bytes; 2,000 sessions, 2,000 rows kept)."""
    from tokenmeter.sinks import _pg_ledger

    ledger = PostgresSink(pg_dsn).budget_ledger()
    many = _pg_ledger.MAX_KNOWN_ROWS + 1_000
    for first in range(0, many, 500):
        leases = [
            (f"per|session|s{i}", f"s{i}", 1.0, 0.0, 0.0, 0.0, 0.25, 0.25)
            for i in range(first, first + 500)
        ]
        assert all(ok for ok, *_ in ledger.lease_many(leases))
    assert len(ledger._rows) <= _pg_ledger.MAX_KNOWN_ROWS
    # A row forgotten is leased as before: its call settled at 0.25, the next one granted.
    again = ledger.lease_many([("per|session|s0", "s0", 1.0, 0.25, 0.25, 0.0, 0.25, 0.25)])
    assert again == [(True, 0.25, 0.25, 0.0)]
    assert ledger.spent("per|session|s0", "s0") == 0.5
    ledger.close()


@pytest.mark.parametrize(
    "drop", ["DROP TABLE tokenmeter.budget_ledger", "DROP SCHEMA tokenmeter CASCADE"]
)
def test_a_ledger_table_dropped_while_in_use_is_made_again(pg_dsn: str, drop: str) -> None:
    """The statement failed on a live connection, which was kept: every later one failed too
    (``relation "budget_ledger" does not exist``), and the budget let every call through."""
    import psycopg

    ledger = PostgresSink(pg_dsn).budget_ledger()
    assert ledger.reserve("k", DAY, 10.0, 1.0) == (True, 0.0)
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(drop.encode())
    assert ledger.reserve("k", DAY, 10.0, 1.0) == (True, 0.0)
    assert ledger.lease_many([("k", DAY, 10.0, 0.0, 0.0, 0.0, 1.0, 1.0)])[0][0]
    ledger.close()


def test_a_stalled_server_fails_the_ledger_in_time_and_pauses_it(pg_dsn: str) -> None:
    """The ledger runs on the application's thread: a server that stops answering (its backend
    stopped: statement_timeout is the server's, so it never fires) made the LLM call wait for
    ever. The transaction is now given up a second past ``statement_timeout_s`` (rolled back),
    and the ledger is not asked again for a while, so calls go through without waiting."""
    import psycopg

    ledger = PostgresSink(pg_dsn, statement_timeout_s=1).budget_ledger()
    assert ledger.reserve("k", DAY, 10.0, 1.0) == (True, 0.0)
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        [(backend,)] = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'tokenmeter' "
            "AND datname = current_database()"
        ).fetchall()
    failed: list[Exception] = []
    reserve = functools.partial(ledger.reserve, "k", DAY, 10.0, 1.0)
    os.kill(backend, signal.SIGSTOP)
    try:
        for _ in range(2):  # the second is not sent at all: the ledger is paused
            failed += returns(reserve, "the ledger waits for a server that does not answer", 30)
    finally:
        os.kill(backend, signal.SIGCONT)
    assert [type(exc) for exc in failed] == [TimeoutError, TimeoutError]
    assert "did not answer" in str(failed[0]) and "not asked again" in str(failed[1])
    # The transaction cut off was rolled back: only the first reservation is there.
    assert PostgresSink(pg_dsn).budget_ledger().spent("k", DAY) == 1.0
    ledger.close()


def test_a_server_that_never_answers_a_connection_holds_a_call_no_longer_than_a_statement() -> None:
    """Connecting was outside the transaction's deadline: a server whose port takes the
    connection and never answers (a frozen host, a full backlog) held the call for the sink's
    whole ``connect_timeout_s`` (10 s by default, whatever ``statement_timeout_s`` said). The
    ledger now connects within the deadline, then is not asked again for a while."""
    with socket.create_server(("127.0.0.1", 0), backlog=8) as silent:
        port = silent.getsockname()[1]
        sink = PostgresSink(
            f"postgresql://nobody@127.0.0.1:{port}/db",
            connect_timeout_s=3600,
            statement_timeout_s=1,
        )
        ledger = sink.budget_ledger()
        reserve = functools.partial(ledger.reserve, "k", DAY, 10.0, 1.0)
        failed = returns(reserve, "the ledger waits the sink's connect_timeout_s")
    assert len(failed) == 1
    with pytest.raises(TimeoutError, match="not asked again"):
        ledger.reserve("k", DAY, 10.0, 1.0)


def test_a_brief_transaction_does_not_wait_behind_another_threads() -> None:
    """The keeper's give-back (``briefly``) holds the leases' lock: behind another thread's
    transaction with a server that stopped answering, it waited that one's whole deadline, and
    every budgeted call with it."""
    from tokenmeter.guardrails._ledger import briefly

    ledger = PostgresSink("postgresql://nobody@127.0.0.1:9/db").budget_ledger()

    def reserve_briefly() -> None:
        with briefly(0.05):
            ledger.reserve("k", DAY, 10.0, 1.0)

    with held_by_another_thread(ledger._lock):  # type: ignore[attr-defined]
        failed = returns(reserve_briefly, "it waits for the lock", 20)
    assert [type(exc) for exc in failed] == [TimeoutError] and "busy" in str(failed[0])


def test_a_server_refusing_connections_is_not_asked_again_at_every_call() -> None:
    """A refused connection fails fast, so the ledger was never paused: every budgeted call
    made a connection attempt (two, with its settlement), for as long as the server was down."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]  # closed, never listened: refused
    ledger = PostgresSink(f"postgresql://nobody@127.0.0.1:{port}/db").budget_ledger()
    with pytest.raises(Exception) as refused:
        ledger.reserve("k", DAY, 10.0, 1.0)
    assert not isinstance(refused.value, TimeoutError)
    with pytest.raises(TimeoutError, match="could not be reached: not asked again"):
        ledger.lease_many([("k", DAY, 10.0, 0.0, 0.0, 0.0, 1.0, 1.0)])


def test_spend_made_while_the_server_was_down_reaches_the_ledger_at_exit(
    tmp_path: Path, pg_dsn: str, commit_answer_lost: CommitAnswerLost
) -> None:
    """Calls made while the server could not be reached go through (fail open) and their spend
    is settled later. The ledger, paused for a minute after the failed connection, refused the
    exit's settlement too ("failed slowly" after a connection closed at once): a job that ended
    within the minute never added its spend to the shared budget, though the server was back
    (settled $0 of 3 calls). The exit now asks the server whatever the pause says."""
    import psycopg

    commit_answer_lost.down = True
    with FakeProvider() as fake:
        holder = hold_budget(fake, tmp_path / "tm", "100", 3, "failing", commit_answer_lost.dsn)
        commit_answer_lost.down = False
        holder.communicate("\n", timeout=60)
    assert holder.returncode == 0
    with psycopg.connect(pg_dsn) as conn:
        [(calls, cost)] = conn.execute(
            "SELECT count(*), sum(cost_pusd) / 1e12 FROM tokenmeter.records"
        ).fetchall()
        [(settled, reserved)] = conn.execute(
            "SELECT coalesce(sum(settled_usd), 0), coalesce(sum(reserved_usd), 0) "
            "FROM tokenmeter.budget_ledger"
        ).fetchall()
    assert calls == 3 and cost > 0
    assert settled == pytest.approx(float(cost)) and reserved == pytest.approx(0)


def test_a_child_forked_while_another_thread_is_in_the_ledger_can_use_it(pg_dsn: str) -> None:
    """The ledger's lock is held for a whole transaction: a process forked meanwhile (by another
    thread: multiprocessing, a pre-fork server) got it locked for ever, and its first call that
    needed the ledger hung. The child now has a lock of its own (and a connection of its own)."""
    import psycopg

    ledger = PostgresSink(pg_dsn).budget_ledger()
    assert ledger.reserve("k", DAY, 10.0, 1.0) == (True, 0.0)
    with psycopg.connect(pg_dsn) as admin:  # holds the row's lock: the reservation waits for it
        admin.execute("SELECT * FROM tokenmeter.budget_ledger FOR UPDATE").fetchall()
        waiting = threading.Thread(target=ledger.reserve, args=("k", DAY, 10.0, 1.0))
        waiting.start()
        with psycopg.connect(pg_dsn, autocommit=True) as watcher:
            while not watcher.execute(
                "SELECT 1 FROM pg_stat_activity WHERE application_name = 'tokenmeter' "
                "AND datname = current_database() AND wait_event_type = 'Lock'"
            ).fetchall():
                time.sleep(0.01)
        child = os.fork()
        if child == 0:  # pragma: no cover (the child's)
            code = 1
            try:
                signal.alarm(10)  # hung: killed
                code = 0 if ledger.spent("k", "another day") == 0.0 else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(child, 0)
        admin.rollback()
    waiting.join(timeout=30)
    assert os.waitstatus_to_exitcode(status) == 0
    assert ledger.spent("k", DAY) == 2.0
    ledger.close()
