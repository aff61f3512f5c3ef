from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

import pytest
from helpers import (  # type: ignore[import-not-found, unused-ignore]
    one_line_value_error,
    run_python,
    unusable_paths,
    wait_for,
)
from sink_helpers import (  # type: ignore[import-not-found, unused-ignore]
    build_record,
    disk_faults,
    resume_after_a_crash,
    run_disk_full_writer,
    skip_without_tmpfs,
    write_reference,
)

from tokenmeter._models import SessionInfo, UsageRecord, _iso
from tokenmeter.sinks import SessionAwareSink, SQLiteSink
from tokenmeter.sinks import sqlite as sqlite_module

RecordFactory = Callable[..., UsageRecord]
Reader = Callable[[Path], list[UsageRecord]]

RECORD_COLUMNS = [
    "id",
    "timestamp",
    "model_provider",
    "model_name",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "estimated_cost_usd",
    "cost_pusd",
    "request_model",
    "operation",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_breakdown",
    "price_source",
    "session_id",
    "session_name",
    "tags",
    "latency_ms",
    "streamed",
    "status",
    "error",
    "request_id",
    "estimated",
    "modalities",
    "tool_requests",
]
SESSION_COLUMNS = [
    "id",
    "name",
    "parent_id",
    "tags",
    "status",
    "started_at",
    "ended_at",
    "notes",
    "budget_usd",
    "calls",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "unpriced_calls",
]


def query(path: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def varied_records(make_record: RecordFactory) -> list[UsageRecord]:
    return [
        make_record(0),
        make_record(1, estimated_cost_usd=None, cost_breakdown=None, price_source=None),
        make_record(
            2,
            model_provider="anthropic",
            model_name="claude-sonnet-4-5",
            request_model="claude-sonnet-4-5-latest",
            input_tokens=5000,
            cache_read_tokens=4000,
            cache_write_tokens=500,
            output_tokens=800,
            reasoning_tokens=300,
            total_tokens=5800,
            estimated_cost_usd=Decimal("0.0000001"),
            cost_breakdown={"input": Decimal("1E-7"), "output": Decimal(0)},
            tags={"user": "émilie|ops", "multi": "line\nbreak"},
            streamed=True,
            estimated=True,
        ),
        make_record(
            3,
            status="error",
            error="RateLimitError",
            request_id="req_123",
            session_id=None,
            session_name=None,
            tags={},
            latency_ms=None,
            estimated_cost_usd=Decimal("123456.123456789012345"),
        ),
    ]


def test_records_round_trip_exactly(
    tmp_path: Path, make_record: RecordFactory, read_sqlite: Reader
) -> None:
    records = varied_records(make_record)
    sink = SQLiteSink(tmp_path / "usage.db")
    sink.write(records)
    sink.close()

    assert [r.model_dump() for r in read_sqlite(tmp_path / "usage.db")] == [
        r.model_dump() for r in records
    ]


def test_costs_are_exact_decimal_text_and_pico_usd(
    tmp_path: Path, make_record: RecordFactory
) -> None:
    sink = SQLiteSink(tmp_path / "usage.db")
    sink.write(varied_records(make_record))
    sink.close()

    rows = query(
        tmp_path / "usage.db", "SELECT id, estimated_cost_usd, cost_pusd FROM records ORDER BY id"
    )
    assert rows == [
        ("rec-000000", "0.0060000", 6_000_000_000),
        ("rec-000001", None, None),
        ("rec-000002", "0.0000001", 100_000),
        ("rec-000003", "123456.123456789012345", 123_456_123_456_789_012),
    ]
    [(total,)] = query(tmp_path / "usage.db", "SELECT SUM(cost_pusd) FROM records")
    assert Decimal(str(total)) / 10**12 == Decimal("123456.129456889012")


def test_schema_is_the_agreed_one(tmp_path: Path, make_record: RecordFactory) -> None:
    path = tmp_path / "usage.db"
    SQLiteSink(path).write([make_record(0)])

    assert [row[1] for row in query(path, "PRAGMA table_info(records)")] == RECORD_COLUMNS
    assert [row[1] for row in query(path, "PRAGMA table_info(sessions)")] == SESSION_COLUMNS
    assert [row[1] for row in query(path, "PRAGMA table_info(session_parts)")] == [
        "session_id",
        "part",
        "calls",
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "unpriced_calls",
    ]
    indexes = {row[0] for row in query(path, "SELECT name FROM sqlite_master WHERE type='index'")}
    assert {
        "ix_records_timestamp",
        "ix_records_session",
        "ix_records_model",
        "ix_records_unsound",
    } <= indexes
    assert query(path, "PRAGMA user_version") == [(6,)]
    assert query(path, "PRAGMA journal_mode") == [("wal",)]


@pytest.mark.parametrize("table", ["records", "sessions"])
def test_a_table_dropped_while_in_use_is_made_again(
    tmp_path: Path, make_record: RecordFactory, table: str
) -> None:
    """``user_version`` still said "current" when a table was dropped (a database emptied by
    hand), so neither the sink nor a new process made it again: every later batch failed with
    "no such table" until the records were dropped at ``max_queue``."""
    path = tmp_path / "usage.db"
    sink = SQLiteSink(path)
    sink.write([make_record(0)])
    query(path, f"DROP TABLE {table}")
    session = SessionInfo(id="s1", name="demo", started_at=datetime(2026, 1, 1, tzinfo=UTC))
    for write in (lambda: sink.write([make_record(1)]), lambda: sink.write_sessions([session])):
        try:
            write()
        except sqlite3.OperationalError:  # on the old connection: the writer retries
            write()
    assert query(path, "SELECT count(*) FROM sessions") == [(1,)]
    assert query(path, "SELECT id FROM records ORDER BY id")[-1] == ("rec-000001",)
    other = tmp_path / "fresh.db"
    SQLiteSink(other).write([make_record(0)])
    schema = "SELECT type, name, sql FROM sqlite_master ORDER BY name"
    assert query(path, schema) == query(other, schema)


def test_a_database_emptied_by_another_process_is_made_again(
    tmp_path: Path, make_record: RecordFactory
) -> None:
    """A database file truncated to nothing in place (``: > usage.db``, a copytruncate rotation)
    after a checkpoint made every later batch of the running sink fail with "file is not a
    database" for ever, while a new process made it again and wrote: the running process's
    records were dropped at ``max_queue``."""
    path = tmp_path / "usage.db"
    sink = SQLiteSink(path)
    sink.write([make_record(0)])
    query(path, "PRAGMA wal_checkpoint(TRUNCATE)")
    os.truncate(path, 0)
    try:
        sink.write([make_record(1)])
    except sqlite3.DatabaseError:  # on the old connection: the writer retries
        sink.write([make_record(1)])
    sink.close()
    assert query(path, "SELECT id FROM records") == [("rec-000001",)]


def test_retried_batch_does_not_duplicate(
    tmp_path: Path, make_record: RecordFactory, read_sqlite: Reader
) -> None:
    sink = SQLiteSink(tmp_path / "usage.db")
    batch = [make_record(i) for i in range(10)]
    sink.write(batch)
    sink.write(batch)
    sink.write([*batch[5:], make_record(10)])

    assert [r.id for r in read_sqlite(tmp_path / "usage.db")] == [f"rec-{i:06d}" for i in range(11)]


def test_a_batch_larger_than_one_statement_takes_is_written_whole(
    tmp_path: Path, make_record: RecordFactory, read_sqlite: Reader
) -> None:
    sink = SQLiteSink(tmp_path / "usage.db")
    sink.write([make_record(0)])
    # Rows go in as one multi-row INSERT per run of rows that fits SQLite's limit of parameters.
    sink._connection().setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 100)  # 3 rows a statement
    sink.write([make_record(i) for i in range(1, 11)])
    started = datetime(2026, 11, 22, 10, tzinfo=UTC)
    first = SessionInfo(id="s1", started_at=started)
    sink.write_sessions([first, first.model_copy(update={"status": "completed", "calls": 4})])

    assert [r.id for r in read_sqlite(tmp_path / "usage.db")] == [f"rec-{i:06d}" for i in range(11)]
    assert query(tmp_path / "usage.db", "SELECT status, calls FROM sessions") == [("completed", 4)]


def test_no_statement_binds_more_than_a_short_run_of_rows(
    tmp_path: Path, make_record: RecordFactory, read_sqlite: Reader
) -> None:
    """Binding parameters holds the GIL: a caller thread waiting for it waits for the whole
    bind, so a batch of 256 goes in as several short statements, not one of 6,912 parameters."""
    sink = SQLiteSink(tmp_path / "usage.db")
    sink.write([make_record(0)])
    statements: list[str] = []
    sink._connection().set_trace_callback(statements.append)
    sink.write([make_record(i) for i in range(1, 257)])

    inserts = [sql for sql in statements if sql.lstrip().upper().startswith("INSERT")]
    assert len(inserts) == 256 // 32  # runs of 32 rows
    assert len(read_sqlite(tmp_path / "usage.db")) == 257


def test_failed_batch_stores_nothing_and_retry_stores_all(
    tmp_path: Path, make_record: RecordFactory
) -> None:
    path = tmp_path / "usage.db"
    sink = SQLiteSink(path)
    sink.write([make_record(0)])
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON records WHEN NEW.id = 'rec-000002' "
        "BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )
    conn.commit()
    batch = [make_record(i) for i in (1, 2, 3)]

    with pytest.raises(sqlite3.IntegrityError, match="refused"):
        sink.write(batch)
    assert query(path, "SELECT COUNT(*) FROM records") == [(1,)]

    conn.execute("DROP TRIGGER refuse")
    conn.commit()
    conn.close()
    sink.write(batch)
    assert query(path, "SELECT COUNT(*) FROM records") == [(4,)]


@pytest.mark.parametrize(
    "added",
    ["project TEXT NOT NULL DEFAULT NULL", "CHECK (input_tokens < 500)"],
    ids=["not-null-column", "check"],
)
def test_a_row_breaking_a_constraint_someone_added_fails_the_batch(
    tmp_path: Path, make_record: RecordFactory, added: str
) -> None:
    """With INSERT OR IGNORE a row breaking a NOT NULL or CHECK constraint an admin added to the
    table was skipped like a duplicate id: the write succeeded, flush() said True and the
    record was gone. Only a duplicate id is ignored now; this raises, so the pipeline retries,
    reports and sets the record aside."""
    path = tmp_path / "usage.db"
    sink = SQLiteSink(path)
    sink.write([make_record(0, input_tokens=1)])
    conn = sqlite3.connect(path)
    (ddl,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'records'").fetchone()
    conn.execute("ALTER TABLE records RENAME TO old_records")
    conn.execute(ddl.rstrip().removesuffix(")") + f", {added})")
    conn.execute(
        "INSERT INTO records SELECT *"
        + (", 'p'" if "project" in added else "")
        + " FROM old_records"
    )
    conn.execute("DROP TABLE old_records")
    conn.commit()
    conn.close()

    with pytest.raises(sqlite3.IntegrityError, match="constraint failed"):
        sink.write([make_record(1, input_tokens=1000)])
    sink.close()
    assert query(path, "SELECT id FROM records") == [("rec-000000",)]


def test_existing_database_is_reused_not_recreated(
    tmp_path: Path, make_record: RecordFactory
) -> None:
    path = tmp_path / "usage.db"
    first = SQLiteSink(path)
    first.write([make_record(0), make_record(1)])
    first.close()

    second = SQLiteSink(path)
    second.write([make_record(2)])
    second.close()

    assert query(path, "SELECT COUNT(*) FROM records") == [(3,)]
    assert query(path, "PRAGMA user_version") == [(sqlite_module.SCHEMA_VERSION,)]


def test_a_newer_code_version_migrates_an_existing_database(
    tmp_path: Path, make_record: RecordFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "usage.db"
    SQLiteSink(path).write([make_record(0)])

    def add_budgets_table(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE budgets (id TEXT PRIMARY KEY)")

    monkeypatch.setattr(
        sqlite_module, "_MIGRATIONS", [*sqlite_module._MIGRATIONS, add_budgets_table]
    )
    newer = sqlite_module.SCHEMA_VERSION + 1
    monkeypatch.setattr(sqlite_module, "SCHEMA_VERSION", newer)
    SQLiteSink(path).write([make_record(1)])

    assert query(path, "PRAGMA user_version") == [(newer,)]
    assert query(path, "SELECT COUNT(*) FROM records") == [(2,)]
    assert query(path, "SELECT name FROM sqlite_master WHERE name = 'budgets'") == [("budgets",)]


def test_a_database_from_a_newer_version_is_refused_untouched(
    tmp_path: Path, make_record: RecordFactory
) -> None:
    path = tmp_path / "usage.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 7")
    conn.close()

    with pytest.raises(ValueError, match=r"usage\.db.*schema version 7.*newer"):
        SQLiteSink(path).write([make_record(0)])
    assert query(path, "PRAGMA user_version") == [(7,)]
    assert query(path, "SELECT name FROM sqlite_master") == []


def test_another_programs_database_is_refused_untouched(
    tmp_path: Path, make_record: RecordFactory
) -> None:
    """An application's own database (schema version 0, as before its first migration) given
    to the sink: tokenmeter's tables were added to it and its ``user_version`` set to 4, so the
    application's own migrations then took it for a database at their version 4."""
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.commit()
    conn.close()

    with pytest.raises(ValueError, match=r"app\.db.*not a tokenmeter database.*users"):
        SQLiteSink(path).write([make_record(0)])
    assert query(path, "PRAGMA user_version") == [(0,)]
    assert query(path, "SELECT name FROM sqlite_master") == [("users",)]


@pytest.mark.parametrize("version", [1, 5, 6])
def test_another_programs_database_with_a_schema_number_of_its_own_is_refused_untouched(
    tmp_path: Path, make_record: RecordFactory, version: int
) -> None:
    """An application that keeps its own schema number in ``user_version``: at 6 (tokenmeter's)
    the sink took its database for one whose tables were dropped and added its 3 tables and
    their indexes to it; at 1 to 5 the migrations failed with "no such table"."""
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {version}")
    conn.execute("CREATE TABLE usage (day TEXT, minutes INTEGER)")
    conn.commit()
    conn.close()

    with pytest.raises(ValueError, match=r"app\.db.*not a tokenmeter database.*usage"):
        SQLiteSink(path).write([make_record(0)])
    assert query(path, "PRAGMA user_version") == [(version,)]
    assert query(path, "SELECT name FROM sqlite_master") == [("usage",)]


def test_sessions_are_upserted_by_id(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    sink = SQLiteSink(path)
    assert isinstance(sink, SessionAwareSink)
    started = datetime(2026, 11, 22, 10, tzinfo=UTC)
    ended = datetime(2026, 11, 22, 11, 30, tzinfo=UTC)
    start = SessionInfo(
        id="s1", name="demo", tags={"team": "search"}, started_at=started, budget_usd=Decimal("5")
    )
    sink.write_sessions([start, SessionInfo(id="s2", parent_id="s1", started_at=started)])
    done = {"status": "completed", "ended_at": ended, "notes": "done", "calls": 2}
    done |= {"input_tokens": 30, "output_tokens": 20, "cost_usd": Decimal("0.5")}
    sink.write_sessions([start.model_copy(update=done)])

    assert query(path, "SELECT * FROM sessions ORDER BY id") == [
        (
            "s1",
            "demo",
            None,
            '{"team":"search"}',
            "completed",
            "2026-11-22T10:00:00.000Z",
            "2026-11-22T11:30:00.000Z",
            "done",
            "5",
            2,
            30,
            20,
            "0.5",
            0,
        ),
        (
            *("s2", None, "s1", "{}", "active", "2026-11-22T10:00:00.000Z", None, None, None),
            *(0, 0, 0, "0", 0),  # the totals when it was sent (started: none yet)
        ),
    ]


@pytest.mark.parametrize("bad", [float("nan"), -1, "5", True, None])
def test_a_busy_timeout_that_is_not_a_number_of_seconds_is_a_value_error(
    tmp_path: Path, bad: object
) -> None:
    """It was taken as it came: "5" became 5000 fives (every write then raised OverflowError),
    NaN raised from int(), and -1 gave no wait at all."""
    with pytest.raises(ValueError, match="busy_timeout_s"):
        SQLiteSink(tmp_path / "usage.db", busy_timeout_s=bad)  # type: ignore[arg-type]


def test_a_bad_busy_timeout_is_named_shortly() -> None:
    """The value was quoted whole: a 10 MB string made a 10 MB message."""
    with pytest.raises(ValueError, match="busy_timeout_s") as raised:
        SQLiteSink("usage.db", busy_timeout_s="x" * 10_000_000)  # type: ignore[arg-type]
    assert len(str(raised.value)) < 200


def test_a_device_is_no_sqlite_file(tmp_path: Path, make_record: RecordFactory) -> None:
    """SQLite opened /dev/null as a database and made its journal beside it, with the device's
    mode (/dev/null-journal, 0o666). A device there since the sink was made fails its write."""
    for kind, path in unusable_paths(tmp_path, "file").items():  # the JSONL sink's rule too
        with pytest.raises(ValueError) as excinfo:
            SQLiteSink(path)
        message = one_line_value_error(excinfo)
        assert message.startswith("path must ") and (kind in message or path == "")
    sink = SQLiteSink(tmp_path / "usage.db")
    (tmp_path / "usage.db").symlink_to("/dev/null")
    with pytest.raises(OSError, match="is not a regular file"):
        sink.write([make_record(0)])
    assert not Path("/dev/null-journal").exists()


def test_a_busy_timeout_longer_than_sqlite_takes_waits_as_long_as_it_can(
    tmp_path: Path, make_record: RecordFactory
) -> None:
    """SQLite holds the timeout in a 32-bit count of milliseconds and reads a larger one (25 days
    and more: "wait for ever") as 0, no wait at all: writers of several processes failed at once
    with "database is locked"; infinity raised OverflowError, and so did a whole number past a
    float's range (10**400), at the call. SQLite waits in slices (the sink repeats them for as
    long as it was asked), and as long as it takes for a moved database's last checkpoint."""
    for number, (given, seconds) in enumerate(
        [(1e9, 1e9), (float("inf"), float("inf")), (10**400, float("inf"))]
    ):
        sink = SQLiteSink(tmp_path / f"usage{number}.db", busy_timeout_s=given)
        sink.write([make_record(number)])
        assert sink._conn is not None
        slice_ms = round(sqlite_module._BUSY_SLICE_S * 1000)
        assert sink._conn.execute("PRAGMA busy_timeout").fetchone() == (slice_ms,)
        assert (sink._busy_timeout_s, sink._busy_timeout_ms) == (seconds, 2**31 - 1)
        sink.close()


def test_files_and_created_directories_are_owner_only(
    tmp_path: Path, make_record: RecordFactory
) -> None:
    path = tmp_path / "a" / "b" / "usage.db"
    sink = SQLiteSink(path)
    sink.write([make_record(0)])

    for directory in (tmp_path / "a", tmp_path / "a" / "b"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for file in (path, path.with_name("usage.db-wal")):
        assert stat.S_IMODE(file.stat().st_mode) == 0o600
    sink.close()


def test_a_forked_child_writes_through_its_own_connection(
    tmp_path: Path, make_record: RecordFactory
) -> None:
    path = tmp_path / "usage.db"
    sink = SQLiteSink(path)
    sink.write([make_record(0)])

    pid = os.fork()
    if pid == 0:  # child: must not reuse the parent's connection
        code = 0
        try:
            sink.write([make_record(1)])
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    sink.write([make_record(2)])  # the parent's connection still works

    assert os.waitstatus_to_exitcode(status) == 0
    assert query(path, "SELECT COUNT(*) FROM records") == [(3,)]
    assert query(path, "PRAGMA integrity_check") == [("ok",)]
    sink.close()


#: Another program's transaction on the database (a DB browser with an edit pending, the sqlite3
#: shell inside BEGIN): it holds the write lock until its stdin closes.
HOLDING_THE_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.read()
conn.execute("ROLLBACK")
"""

RECORDING_TEN = """
import tokenmeter
for number in range(10):
    tokenmeter.record("openai", "gpt-4o", input_tokens=100 + number, output_tokens=10)
"""


def test_records_waiting_for_a_lock_held_past_the_exit_are_set_aside(tmp_path: Path) -> None:
    """The write waited for the lock inside SQLite for the whole busy timeout (30 s), past
    exit_timeout (10 s): the writer was cut off at exit and its records were lost ("12 records
    and sessions still held by SQLiteSink are lost"), neither in usage.db nor set aside in
    quarantine.jsonl. They are set aside now, once, as what a stopping sink refuses is."""
    directory = tmp_path / "m"
    env = {
        **os.environ,
        "TOKENMETER_DIR": str(directory),
        "TOKENMETER_SINKS": "sqlite",
        "TOKENMETER_EXIT_TIMEOUT": "1",
    }
    first = "import tokenmeter; tokenmeter.record('openai', 'gpt-4o', 1, 1)"
    run_python("-c", first, env=env, cwd=tmp_path)  # the database exists (an earlier run)
    locker = subprocess.Popen(
        [sys.executable, "-c", HOLDING_THE_LOCK, str(directory / "usage.db")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert locker.stdout is not None and locker.stdout.readline() == "locked\n"
        done = run_python("-c", RECORDING_TEN, env=env, cwd=tmp_path)
    finally:
        assert locker.stdin is not None
        locker.stdin.close()
        locker.wait(60)

    assert "lost" not in done.stderr
    lines = (directory / "quarantine.jsonl").read_text().splitlines()
    set_aside = [json.loads(line)["record"] for line in lines]
    records = sorted(r["input_tokens"] for r in set_aside if "model_provider" in r)
    assert records == list(range(100, 110))
    assert query(directory / "usage.db", "SELECT input_tokens FROM records") == [(1,)]


def test_a_fork_does_not_wait_for_a_write_waiting_for_another_programs_lock(
    tmp_path: Path, make_record: RecordFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fork() waits for the sink's SQLite calls under way; a write waiting for another program's
    lock was one for its whole busy timeout, so every fork waited up to 3 s for it (a pre-fork
    server, 3 s a worker) while a DB browser held the lock. The fork now goes on while the
    write still waits (here, however long the fork would wait for it)."""
    path = tmp_path / "usage.db"
    sink = SQLiteSink(path, busy_timeout_s=20)
    sink.write([make_record(0)])
    assert sink._conn is not None
    begun = threading.Event()
    sink._conn.set_trace_callback(lambda sql: sql == "BEGIN IMMEDIATE" and begun.set())
    monkeypatch.setattr(sqlite_module, "_FORK_WAIT_S", 600.0)
    locker = subprocess.Popen(
        [sys.executable, "-c", HOLDING_THE_LOCK, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    errors: list[BaseException] = []

    def write() -> None:
        try:
            sink.write([make_record(1)])
        except BaseException as exc:
            errors.append(exc)

    writer = threading.Thread(target=write)
    try:
        assert locker.stdout is not None and locker.stdout.readline() == "locked\n"
        writer.start()
        wait_for(begun.is_set, "the write asks for the lock")
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        still_waiting = writer.is_alive()
        os.waitpid(pid, 0)
    finally:
        assert locker.stdin is not None
        locker.stdin.close()
        locker.wait(60)
    writer.join(60)

    assert still_waiting
    assert errors == []
    assert query(path, "SELECT COUNT(*) FROM records") == [(2,)]
    sink.close()


FORK_WHILE_WRITING = Path(__file__).resolve().parent / "fork_while_writing.py"


def test_children_forked_while_threads_write_can_write_their_records(tmp_path: Path) -> None:
    """A child forked while a writer thread was inside a transaction used to inherit SQLite's
    in-memory record of that thread's lock, and every write of the child failed as locked."""
    path = tmp_path / "usage.db"
    children = 20

    result = subprocess.run(
        [sys.executable, str(FORK_WHILE_WRITING), str(path), str(children)],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    stored = query(path, "SELECT id FROM records WHERE id GLOB 'child-*' ORDER BY id")
    assert stored == [(f"child-{n:02d}",) for n in range(children)]
    assert query(path, "PRAGMA integrity_check") == [("ok",)]


@pytest.mark.parametrize("rotation", ["delete", "rename"])
def test_records_after_the_database_is_deleted_or_renamed_go_to_its_path(
    tmp_path: Path, make_record: RecordFactory, read_sqlite: Reader, rotation: str
) -> None:
    path = tmp_path / "usage.db"
    rotated = tmp_path / "usage.db.1"
    sink = SQLiteSink(path)
    before = [make_record(i) for i in range(3)]
    sink.write(before)
    sink.write_sessions([SessionInfo(id="s1", name="demo", started_at=before[0].timestamp)])

    if rotation == "delete":  # what `rm usage.db*` does
        for name in ("usage.db", "usage.db-wal", "usage.db-shm"):
            (tmp_path / name).unlink(missing_ok=True)
    else:  # log rotation moves the database file alone
        path.rename(rotated)
    after = [make_record(i) for i in range(3, 7)]
    sink.write(after[:2])
    sink.write(after[2:])
    sink.close()

    assert [r.id for r in read_sqlite(path)] == [r.id for r in after]
    assert query(path, "PRAGMA user_version") == [(sqlite_module.SCHEMA_VERSION,)]
    assert query(path, "PRAGMA integrity_check") == [("ok",)]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    if rotation == "rename":
        assert [r.id for r in read_sqlite(rotated)] == [r.id for r in before]
        assert query(rotated, "SELECT id FROM sessions") == [("s1",)]
        assert query(rotated, "PRAGMA integrity_check") == [("ok",)]


def test_empty_batches_create_nothing(tmp_path: Path) -> None:
    sink = SQLiteSink(tmp_path / "usage.db")
    sink.write([])
    sink.write_sessions([])
    sink.flush()
    sink.close()
    assert not (tmp_path / "usage.db").exists()


@pytest.mark.parametrize(("fault", "start", "step"), disk_faults(fsize_step=8192, enospc_step=8192))
def test_a_full_disk_loses_and_duplicates_nothing(
    tmp_path: Path,
    fault: str,
    start: int,
    step: int,
    read_sqlite: Callable[[Path], list[UsageRecord]],
) -> None:
    """Transactions fail whole on a full disk (SQLITE_FULL), and their retries store each record
    and session once."""
    skip_without_tmpfs(fault)
    out, report = run_disk_full_writer("sqlite", tmp_path, fault, start=start, step=step)

    assert report["failures"] > 10
    assert report["problems"] == []
    assert query(out / "usage.db", "PRAGMA integrity_check") == [("ok",)]
    write_reference("sqlite", tmp_path / "reference")
    assert read_sqlite(out / "usage.db") == read_sqlite(tmp_path / "reference" / "usage.db")
    sessions = "SELECT * FROM sessions ORDER BY id"
    assert query(out / "usage.db", sessions) == query(tmp_path / "reference" / "usage.db", sessions)


def test_version_1_database_gains_the_modality_columns(
    tmp_path: Path, make_record: RecordFactory, read_sqlite: Reader
) -> None:
    """A database written before per-modality counts were kept is upgraded in place, its rows
    reading back with no modalities, and new rows keep theirs."""
    path = tmp_path / "usage.db"
    conn = sqlite3.connect(path)
    sqlite_module._create_v1(conn)
    conn.execute("PRAGMA user_version = 1")
    conn.execute(
        "INSERT INTO records (id, timestamp, model_provider, model_name, input_tokens, "
        "output_tokens, total_tokens) VALUES ('old', '2026-01-01T00:00:00.000Z', 'openai', "
        "'gpt-4o', 1, 2, 3)"
    )
    conn.commit()
    conn.close()
    new = make_record(1).model_copy(
        update={"modalities": {"output_image": 1290}, "tool_requests": {"web_search": 2}}
    )
    SQLiteSink(path).write([new])

    assert query(path, "PRAGMA user_version") == [(sqlite_module.SCHEMA_VERSION,)]
    back = {r.id: r for r in read_sqlite(path)}
    assert back["old"].modalities == {} and back["old"].tool_requests == {}
    assert back[new.id].modalities == {"output_image": 1290}
    assert back[new.id].tool_requests == {"web_search": 2}


def test_a_database_of_the_previous_version_gains_the_session_totals(
    tmp_path: Path, make_record: RecordFactory, read_sqlite: Reader
) -> None:
    """usage.db as the previous tokenmeter left it (schema 2): opened by this one, it is upgraded
    in place; its sessions and records are all there, its sessions' totals unknown (NULL: a
    reader adds their records up), and sessions stored from now on carry their totals."""
    path = tmp_path / "usage.db"
    conn = sqlite3.connect(path)
    sqlite_module._create_v1(conn)
    sqlite_module._add_modalities_v2(conn)
    conn.execute("PRAGMA user_version = 2")
    conn.execute(
        "INSERT INTO records (id, timestamp, model_provider, model_name, input_tokens, "
        "output_tokens, total_tokens, session_id) VALUES ('old', '2026-01-01T00:00:00.000Z', "
        "'openai', 'gpt-4o', 1, 2, 3, 'old-session')"
    )
    conn.execute(
        "INSERT INTO sessions (id, name, parent_id, tags, status, started_at, ended_at, notes, "
        "budget_usd) VALUES ('old-session', 'nightly', NULL, '{\"team\": \"a\"}', "
        "'completed', '2026-01-01T00:00:00.000Z', '2026-01-01T00:01:00.000Z', 'n', '5')"
    )
    conn.commit()
    before = query(path, "SELECT * FROM sessions")
    conn.close()

    sink = SQLiteSink(path)
    ended = SessionInfo(
        id="new-session",
        name="nightly",
        status="completed",
        started_at=datetime(2026, 12, 1, tzinfo=UTC),
        ended_at=datetime(2026, 12, 1, 0, 5, tzinfo=UTC),
        calls=3,
        input_tokens=3000,
        output_tokens=1500,
        cost_usd=Decimal("0.0225"),
        unpriced_calls=1,
    )
    sink.write_sessions([ended])
    sink.write([make_record(1)])
    sink.close()

    assert query(path, "PRAGMA user_version") == [(sqlite_module.SCHEMA_VERSION,)]
    assert {r.id for r in read_sqlite(path)} == {"old", make_record(1).id}
    old = query(path, "SELECT * FROM sessions WHERE id = 'old-session'")
    assert old == [(*before[0], None, None, None, None, None)]  # kept whole, totals unknown
    totals = "SELECT calls, input_tokens, output_tokens, cost_usd, unpriced_calls FROM sessions"
    assert query(path, totals + " WHERE id = 'new-session'") == [(3, 3000, 1500, "0.0225", 1)]


def test_a_finished_session_is_stored_with_its_rolled_up_totals(tmp_path: Path) -> None:
    """Through the real pipeline: a parent whose calls were all made in a nested session is
    stored with their totals (its row said nothing of them before)."""
    import tokenmeter

    tokenmeter.configure(directory=tmp_path, sinks=["sqlite"])
    with tokenmeter.session("parent") as parent, tokenmeter.session("child") as child:
        tokenmeter.record("openai", "gpt-4o", 1000, 500)
        tokenmeter.record("openai", "gpt-4o", 2000, 0)
        tokenmeter.record("openai", "no-such-model-priced", 10, 10)
    assert tokenmeter.flush(10)
    totals = (
        "SELECT calls, input_tokens, output_tokens, cost_usd, unpriced_calls FROM sessions "
        "WHERE id = ?"
    )
    expected = (3, 3010, 510, str(parent.summary.cost_usd), 1)
    assert query(tmp_path / "usage.db", totals, (parent.id,)) == [expected]
    assert query(tmp_path / "usage.db", totals, (child.id,)) == [expected]
    assert parent.summary.cost_usd == Decimal("0.0125")


def test_a_late_call_of_an_earlier_run_of_an_id_leaves_the_row_to_the_latest(
    tmp_path: Path,
) -> None:
    """A job resumed after a crash under its id completed; a thread of the crashed run then made
    a call: the row said "failed", with the crashed run's times, although the job completed."""
    import tokenmeter

    tokenmeter.configure(directory=tmp_path, sinks=["sqlite"])
    assert resume_after_a_crash("import-1") == "completed"
    row = "SELECT status, ended_at IS NOT NULL, calls, input_tokens FROM sessions"
    assert query(tmp_path / "usage.db", row) == [("completed", 1, 3, 300)]
    runs = "SELECT count(*) FROM session_parts WHERE session_id = 'import-1'"
    assert query(tmp_path / "usage.db", runs) == [(2,)]


class _CountingSink(SQLiteSink):
    """An SQLiteSink that counts the steps of SQLite's virtual machine on its connection (a
    progress handler called at each): the work a store does, which no clock measures surely."""

    steps = 0

    def _connection(self) -> sqlite3.Connection:
        conn = super()._connection()
        conn.set_progress_handler(self._step, 1)
        return conn

    def _step(self) -> int:
        self.steps += 1
        return 0  # go on


def test_storing_a_run_of_an_id_entered_again_costs_the_same_however_many_runs_it_had(
    tmp_path: Path,
) -> None:
    """Every store of a session re-read and re-summed every stored run (part) of its id: an id
    entered again per request (``@session(id=...)``) made the writer slower with each run, 190 ms
    a run after 20,000, until records backed up and were set aside at exit."""
    path = tmp_path / "usage.db"
    sink = _CountingSink(path)
    started = datetime(2026, 12, 7, 10, tzinfo=UTC)
    run = {"status": "completed", "ended_at": started, "calls": 1, "input_tokens": 100}
    run |= {"output_tokens": 10, "cost_usd": Decimal("0.00035")}

    def store_a_run(part: str) -> int:
        """Store a run of the id, started then ended: the steps SQLite took."""
        sink.steps = 0
        begun = SessionInfo(id="chat", part=part, started_at=started)
        sink.write_sessions([begun])
        sink.write_sessions([begun.model_copy(update=run)])
        return sink.steps

    store_a_run("first")
    second = store_a_run("second")
    conn = sqlite3.connect(path)  # 2,000 more runs of it, as earlier processes left them
    conn.executemany(
        "INSERT INTO session_parts VALUES ('chat', ?, 1, 100, 10, '0.00035', 0)",
        [(f"run{n}",) for n in range(2_000)],
    )
    totals = "calls = 2002, input_tokens = 200200, output_tokens = 20020, cost_usd = '0.70070'"
    conn.execute(f"UPDATE sessions SET {totals} WHERE id = 'chat'")
    conn.commit()
    conn.close()
    assert store_a_run("latest") < 2 * second  # it read all 2,002 other runs: 120 times more
    row = "SELECT calls, input_tokens, output_tokens, cost_usd, unpriced_calls FROM sessions"
    assert query(path, row) == [(2003, 200300, 20030, "0.70105", 0)]


#: A run of a session id that made one call, as stored at its end.
ONE_CALL = {"status": "completed", "calls": 1, "input_tokens": 100, "output_tokens": 10}
ONE_CALL |= {"cost_usd": Decimal("0.00035")}
ROW_TOTALS = "SELECT calls, input_tokens, output_tokens, cost_usd, unpriced_calls FROM sessions"


def test_a_session_row_edited_by_hand_is_mended_by_the_next_store(tmp_path: Path) -> None:
    """A row moved by its part's change from what it held: zeroed by hand, it stayed off its
    parts for ever (2 runs of one call each: 1 call, 100 in, '0.00035')."""
    path = tmp_path / "usage.db"
    sink = SQLiteSink(path)
    started = datetime(2026, 12, 7, 10, tzinfo=UTC)
    sink.write_sessions([SessionInfo(id="chat", part="first", started_at=started, **ONE_CALL)])
    conn = sqlite3.connect(path)
    conn.execute("UPDATE sessions SET calls = 0, input_tokens = 0, output_tokens = 0")
    conn.execute("UPDATE sessions SET cost_usd = '0'")
    conn.commit()
    conn.close()
    sink.write_sessions([SessionInfo(id="chat", part="second", started_at=started, **ONE_CALL)])
    sink.close()
    assert query(path, ROW_TOTALS) == [(2, 200, 20, "0.00070", 0)]


def test_a_session_row_restored_without_its_parts_keeps_its_totals(tmp_path: Path) -> None:
    """A row whose id has no parts (restored without them) is its totals plus the next run's:
    summed from the parts stored, 2 runs restored then 1 more left the row at that one run."""
    path = tmp_path / "usage.db"
    sink = SQLiteSink(path)
    started = datetime(2026, 12, 7, 10, tzinfo=UTC)
    for part in ("first", "second"):
        sink.write_sessions([SessionInfo(id="chat", part=part, started_at=started, **ONE_CALL)])
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM session_parts")
    conn.commit()
    conn.close()
    sink.write_sessions([SessionInfo(id="chat", part="third", started_at=started, **ONE_CALL)])
    sink.write_sessions([SessionInfo(id="chat", part="fourth", started_at=started, **ONE_CALL)])
    sink.close()
    assert query(path, ROW_TOTALS) == [(4, 400, 40, "0.00140", 0)]
    assert query(path, "SELECT part, calls FROM session_parts WHERE part = ''") == [("", 2)]


def test_a_row_of_many_parts_left_below_its_parts_is_summed_again(tmp_path: Path) -> None:
    """An id with many parts is moved by their change (its other parts not read), unless the
    move would leave its row below the part stored: the row was off its parts."""
    path = tmp_path / "usage.db"
    sink = SQLiteSink(path)
    started = datetime(2026, 12, 7, 10, tzinfo=UTC)
    late = SessionInfo(id="chat", part="late", started_at=started, **ONE_CALL)
    sink.write_sessions([late])
    conn = sqlite3.connect(path)
    conn.executemany(
        "INSERT INTO session_parts VALUES ('chat', ?, 1, 100, 10, '0.00035', 0)",
        [(f"run{n}",) for n in range(sqlite_module.FEW_PARTS)],
    )
    conn.execute("UPDATE sessions SET calls = 0, input_tokens = 0, output_tokens = 0")
    conn.commit()
    conn.close()
    sink.write_sessions([late.model_copy(update={"calls": 2, "input_tokens": 200})])
    sink.close()
    parts = sqlite_module.FEW_PARTS + 2
    cost = str(Decimal("0.00035") * (parts - 1))
    assert query(path, ROW_TOTALS) == [(parts, 100 * parts, 10 * (parts - 1), cost, 0)]


def _database_at(path: Path, version: int) -> None:
    """A database as an older tokenmeter left it, at schema ``version``."""
    conn = sqlite3.connect(path)
    for migrate in sqlite_module._MIGRATIONS[:version]:
        migrate(conn)
    conn.execute(f"PRAGMA user_version = {version}")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("version", range(1, sqlite_module.SCHEMA_VERSION + 1))
def test_a_database_restored_from_an_sql_dump_is_taken_at_its_version(
    tmp_path: Path, make_record: RecordFactory, version: int
) -> None:
    """An SQL dump (``sqlite3 .dump``, ``iterdump()``) keeps no ``user_version``: the restored
    ``usage.db`` was refused as another program's and every later record set aside. Its tables
    and indexes say which version made it; the migrations go on from there."""
    _database_at(tmp_path / "old.db", version)
    if version == sqlite_module.SCHEMA_VERSION:
        SQLiteSink(tmp_path / "old.db").write([make_record(0)])
    old = sqlite3.connect(tmp_path / "old.db")
    restored = sqlite3.connect(tmp_path / "usage.db")
    restored.executescript("\n".join(old.iterdump()))
    old.close()
    restored.close()
    assert query(tmp_path / "usage.db", "PRAGMA user_version") == [(0,)]

    SQLiteSink(tmp_path / "usage.db").write([make_record(1)])

    assert query(tmp_path / "usage.db", "PRAGMA user_version") == [(sqlite_module.SCHEMA_VERSION,)]
    fresh = tmp_path / "fresh.db"
    SQLiteSink(fresh).write([make_record(1)])
    assert sqlite_module._schema(sqlite3.connect(tmp_path / "usage.db")) == sqlite_module._schema(
        sqlite3.connect(fresh)
    )
    expected = 2 if version == sqlite_module.SCHEMA_VERSION else 1
    assert query(tmp_path / "usage.db", "SELECT count(*) FROM records") == [(expected,)]


def test_a_restored_dump_keeps_the_users_own_column_index_and_trigger(
    tmp_path: Path, make_record: RecordFactory
) -> None:
    """A user's index, trigger or column added at the end of ``records`` is theirs: the restored
    copy is still known by tokenmeter's own tables and indexes (it was refused, 6 of 9 rows)."""
    old_path = tmp_path / "old.db"
    SQLiteSink(old_path).write([make_record(0)])
    old = sqlite3.connect(old_path)
    old.executescript(
        "ALTER TABLE records ADD COLUMN team TEXT;"
        "CREATE INDEX my_requests ON records(request_id);"
        "CREATE TRIGGER my_trigger AFTER INSERT ON records BEGIN SELECT 1; END;"
    )
    restored = sqlite3.connect(tmp_path / "usage.db")
    restored.executescript("\n".join(old.iterdump()))
    old.close()
    restored.close()

    SQLiteSink(tmp_path / "usage.db").write([make_record(1)])

    assert query(tmp_path / "usage.db", "PRAGMA user_version") == [(sqlite_module.SCHEMA_VERSION,)]
    assert query(tmp_path / "usage.db", "SELECT count(*) FROM records") == [(2,)]
    mine = "SELECT name FROM sqlite_master WHERE name LIKE 'my!_%' ESCAPE '!' ORDER BY name"
    assert query(tmp_path / "usage.db", mine) == [("my_requests",), ("my_trigger",)]


def test_tokenmeters_tables_of_no_known_shape_without_a_version_are_refused_untouched(
    tmp_path: Path, make_record: RecordFactory
) -> None:
    """A table named as one of tokenmeter's but of no version's shape, without a version: refused,
    saying what it is rather than "another program's"."""
    path = tmp_path / "usage.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE records (id TEXT PRIMARY KEY, day TEXT)")
    conn.commit()
    conn.close()

    with pytest.raises(ValueError, match=r"usage\.db: tokenmeter's tables without their schema"):
        SQLiteSink(path).write([make_record(0)])
    assert query(path, "PRAGMA user_version") == [(0,)]
    assert query(path, "SELECT name FROM sqlite_master") == [
        ("records",),
        ("sqlite_autoindex_records_1",),
    ]


def _unsound_ids(path: Path) -> set[object]:
    """The ids SQLite keeps in the index of unsound rows (read through that index alone)."""
    sql = "SELECT id FROM records INDEXED BY ix_records_unsound WHERE NOT " + (
        sqlite_module._SOUND_ROW_V5
    )
    return {row[0] for row in query(path, sql)}


def test_a_version_3_database_keeps_every_row_and_indexes_the_unsound_ones(
    tmp_path: Path, make_record: RecordFactory
) -> None:
    """Rows another program stored with wrong types survive the upgrade untouched, and SQLite
    from then on keeps the index of unsound rows right through inserts, updates and deletes."""
    path = tmp_path / "usage.db"
    _database_at(path, 3)
    sink = SQLiteSink(path)
    conn = sqlite3.connect(path)  # written as another program would, before the upgrade
    columns = "id, timestamp, model_provider, model_name, input_tokens, output_tokens, total_tokens"
    insert = f"INSERT INTO records ({columns}) VALUES (?, ?, 'openai', 'gpt-4o', ?, 2, 3)"
    conn.execute(insert, ("good", "2026-01-01T00:00:00.000Z", 1))
    conn.execute(insert, ("text-count", "2026-01-01T00:00:00.000Z", "many"))
    conn.execute(insert, ("bad-time", "2026-01-01 00:00:00", 1))
    conn.execute(insert, ("bad-tags", "2026-01-01T00:00:00.000Z", 1))
    conn.execute("UPDATE records SET tags = '[1]' WHERE id = 'bad-tags'")
    conn.commit()
    before = query(path, "SELECT rowid, * FROM records ORDER BY rowid")

    sink.write([make_record(0)])
    assert query(path, "PRAGMA user_version") == [(sqlite_module.SCHEMA_VERSION,)]
    after = query(path, "SELECT rowid, * FROM records ORDER BY rowid")
    assert after[: len(before)] == before and len(after) == len(before) + 1
    assert _unsound_ids(path) == {"text-count", "bad-time", "bad-tags"}

    conn.execute("UPDATE records SET input_tokens = -1 WHERE id = 'good'")
    conn.execute("UPDATE records SET input_tokens = 5 WHERE id = 'text-count'")
    conn.execute("DELETE FROM records WHERE id = 'bad-time'")
    conn.execute(insert, ("blob-count", "2026-01-01T00:00:00.000Z", b"\x01"))
    conn.commit()
    conn.close()
    assert _unsound_ids(path) == {"good", "bad-tags", "blob-count"}
    sink.write([make_record(1)])  # the sink's own rows are sound
    sink.close()
    assert _unsound_ids(path) == {"good", "bad-tags", "blob-count"}


#: Tags as another program might store them: the index's condition of version 5 must judge each
#: as version 4's did (sound: a JSON object), and never fail on any.
_TAGS_VALUES: list[object] = [
    "{}",
    '{"feature":"chat"}',
    ' \t\r\n{"a": "b"}',
    "{} ",
    "{",
    "{}x",
    "{'a': 1}",
    "[1]",
    " [ ]",
    '"feature=chat"',
    "null",
    "5",
    "",
    " ",
    "not json",
    "[" * 3000 + "]" * 3000,
    "{" + '"a":{' * 3000 + "}" * 3001,
    "\u00a0{}",
    5,
    2.5,
    b"{}",
    b'{"a":"b"}',
]


def test_a_version_4_database_gets_the_cheaper_index_of_unsound_rows(
    tmp_path: Path, make_record: RecordFactory
) -> None:
    """Version 5 checks tags with one JSON parse (none for ``{}``) where version 4 took two: the
    upgrade keeps every row, and the same rows are unsound, whatever another program stored."""
    path = tmp_path / "usage.db"
    _database_at(path, 4)
    conn = sqlite3.connect(path)
    columns = (
        "id, timestamp, model_provider, model_name, input_tokens, output_tokens, total_tokens, tags"
    )
    insert = f"INSERT INTO records ({columns}) VALUES (?, '2026-01-01T00:00:00.000Z', 'openai',"
    insert += " 'gpt-4o', 1, 2, 3, ?)"
    for n, tags in enumerate(_TAGS_VALUES):
        conn.execute(insert, (f"t{n}", tags))
    conn.commit()
    conn.close()
    unsound_before = {
        row[0]
        for row in query(
            path,
            "SELECT id FROM records INDEXED BY ix_records_unsound WHERE NOT "
            + sqlite_module._SOUND_ROW_V4,
        )
    }
    assert "t0" not in unsound_before and "t1" not in unsound_before and "t7" in unsound_before

    sink = SQLiteSink(path)
    sink.write([make_record(0)])
    sink.close()
    assert query(path, "PRAGMA user_version") == [(sqlite_module.SCHEMA_VERSION,)]
    index_sql = query(path, "SELECT sql FROM sqlite_master WHERE name = 'ix_records_unsound'")
    condition = sqlite_module._SOUND_ROW_V5
    expected = f"CREATE INDEX ix_records_unsound ON records(timestamp) WHERE NOT {condition}"
    assert index_sql == [(expected,)]
    assert _unsound_ids(path) == unsound_before


def _plain_row(r: UsageRecord) -> tuple[object, ...]:
    """The record's row for RECORD_COLUMNS, made the obvious way (json.dumps, Decimal
    arithmetic): what the sink's faster row building must store, byte for byte."""

    def text(value: Decimal) -> str:
        return format(value, "f") if "E" in str(value) else str(value)

    def dumps(value: object) -> str:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)

    cost, breakdown = r.estimated_cost_usd, r.cost_breakdown
    values = {
        **r.model_dump(),
        "timestamp": _iso(r.timestamp),
        "estimated_cost_usd": None if cost is None else text(cost),
        "cost_pusd": None
        if cost is None
        else int((cost * 10**12).to_integral_value(rounding=ROUND_HALF_EVEN)),
        "cost_breakdown": None
        if breakdown is None
        else dumps({k: text(v) for k, v in breakdown.items()}),
        "tags": dumps(r.tags),
        "modalities": dumps(r.modalities),
        "tool_requests": dumps(r.tool_requests),
        "streamed": int(r.streamed),
        "estimated": int(r.estimated),
    }
    return tuple(values[column] for column in RECORD_COLUMNS)


def test_stored_rows_are_the_plain_encoding_of_every_field(
    tmp_path: Path, make_record: RecordFactory
) -> None:
    """None in every optional column, text that a stand-in for None could be mistaken for
    ('0', ''), costs in exponent form and past a pico-USD, keys that need escaping, a timestamp
    in another zone, memoised shapes met twice: each column holds the same value of the same
    SQLite type as the plain row inserted as it is, whether the record came as it is or packed
    (queued behind a backlog), and the PostgreSQL sink's rows are that row."""
    records = [
        *varied_records(make_record),
        make_record(
            10,
            request_model=None,
            operation=None,
            price_source=None,
            session_id=None,
            session_name=None,
            error=None,
            request_id=None,
            latency_ms=None,
            estimated_cost_usd=None,
            cost_breakdown=None,
        ),
        make_record(
            11,
            request_model="0",
            operation="",
            price_source="0",
            session_id="",
            session_name="0",
            error="",
            request_id="0",
            latency_ms=0.0,
            estimated_cost_usd=Decimal("0"),
            cost_breakdown={"input": Decimal("0"), 'E%s"q': Decimal("2.5E-10")},
            tags={"team": "x", 'q"%s': "é\u2028%d"},
            timestamp=datetime(
                2026, 3, 1, 5, 29, 59, 999999, tzinfo=timezone(timedelta(hours=5, minutes=30))
            ),
        ),
        make_record(
            12,
            estimated_cost_usd=Decimal("0.0000000000015"),  # 1.5 pico-USD: rounds to even
            cost_breakdown={"input": Decimal("0.0000000000015"), 'E%s"q': Decimal("3")},
            tags={"team": "x", 'q"%s': "é\u2028%d"},
            modalities={"input_audio": 3},
            tool_requests={"web_search": 1},
        ),
        make_record(13, estimated_cost_usd=Decimal("0.0000000000025"), tags={"team": "x"}),
    ]
    sink = SQLiteSink(tmp_path / "usage.db")
    sink.write(records)
    sink.close()
    rows = SQLiteSink(tmp_path / "rows.db")  # the pipeline's road: rows made on the caller's thread
    rows._write_rows([SQLiteSink._row(r) for r in records])
    rows.close()
    plain = [_plain_row(r) for r in records]
    assert [sqlite_module._record_row(r) for r in records] == plain
    reference = tmp_path / "reference.db"
    SQLiteSink(reference)._connection().close()
    conn = sqlite3.connect(reference)
    with conn:
        conn.executemany(
            f"INSERT INTO records ({', '.join(RECORD_COLUMNS)}) "
            f"VALUES ({', '.join('?' * len(RECORD_COLUMNS))})",
            plain,
        )
    conn.close()
    typed = ", ".join(f"typeof({c}), quote({c})" for c in RECORD_COLUMNS)
    sql = f"SELECT {typed} FROM records ORDER BY id"
    stored = query(tmp_path / "usage.db", sql)
    assert stored == query(reference, sql)
    assert query(tmp_path / "rows.db", sql) == stored
    assert len(stored) == len(records)
    assert ("null", "NULL") in {
        row[2 * RECORD_COLUMNS.index("session_name") :][:2] for row in stored
    }


def test_a_record_without_a_dict_gives_the_same_values(make_record: RecordFactory) -> None:
    """A record type with slots (no ``__dict__``) is read field by field, to the same values."""
    record = make_record(0, tags={"team": "x"})
    fields = sqlite_module._FIELDS

    class Slotted:
        __slots__ = fields

    slotted = Slotted()
    for name in fields:
        setattr(slotted, name, getattr(record, name))
    from_model = sqlite_module._sqlite_row(record)
    from_slots = sqlite_module._sqlite_row(slotted)  # type: ignore[arg-type]
    assert from_slots == from_model
    assert len(from_model) == len(sqlite_module._SQLITE_COLUMNS)


def test_sinks_opening_a_new_database_together_all_write(tmp_path: Path) -> None:
    """Switching a new database to WAL is refused at once while another connection holds a lock,
    whatever the busy timeout: of three sinks writing a new database at once, one in about 20
    failed with "database is locked" (workers of one job starting together)."""
    import threading

    failures: list[BaseException] = []
    for attempt in range(60):
        path = tmp_path / f"usage-{attempt}.db"
        together = threading.Barrier(3)

        def write(name: str, path: Path = path, together: threading.Barrier = together) -> None:
            sink = SQLiteSink(path)
            together.wait()
            try:
                sink.write([build_record(i, id=f"{name}-{i}") for i in range(5)])
            except BaseException as exc:
                failures.append(exc)
            finally:
                sink.close()

        threads = [threading.Thread(target=write, args=(f"t{n}",)) for n in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []


def test_a_relative_path_stays_where_it_was_when_the_process_changes_directory(
    tmp_path: Path, make_record: RecordFactory, read_sqlite: Reader, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A daemon changes to "/" after start-up: a sink given a relative path looked it up again
    from the new working directory, and went on in new files there (or failed for ever where it
    may not write), its records split over two places."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    sink = SQLiteSink("usage.db")
    sink.write([make_record(0)])
    monkeypatch.chdir(tmp_path / "b")
    sink.write([make_record(1)])
    sink.close()

    assert sink.path == tmp_path / "a" / "usage.db"
    assert [r.id for r in read_sqlite(sink.path)] == ["rec-000000", "rec-000001"]
    assert list((tmp_path / "b").iterdir()) == []


#: Another process writing one row to the database, then closing its connection.
WRITING_ONE = """
import sys
sys.path.insert(0, sys.argv[3])
from sink_helpers import build_record
from tokenmeter.sinks import SQLiteSink
sink = SQLiteSink(sys.argv[1])
sink.write([build_record(int(sys.argv[2]))])
sink.close()
"""


def test_a_second_sink_on_the_database_keeps_the_first_sinks_locks(tmp_path: Path) -> None:
    """A sink's connecting opened and closed a descriptor on usage.db, which drops every POSIX
    lock the process holds on the file, another sink's on the same file included (a configure()
    that swaps sinks while the old one still writes). Another process closing its connection then
    took the database for unused and deleted the WAL under the first sink: its next write failed
    with "disk I/O error"."""
    path = tmp_path / "usage.db"
    first = SQLiteSink(path)
    first.write([build_record(0)])
    for i in range(1, 4):
        second = SQLiteSink(path)
        second.write([build_record(100 + i)])
        here = str(Path(__file__).parent)
        run_python(
            "-c", WRITING_ONE, str(path), str(200 + i), here, env=dict(os.environ), cwd=tmp_path
        )
        first.write([build_record(i)])
        second.close()
    first.close()
    assert query(path, "SELECT COUNT(*) FROM records") == [(10,)]
    assert query(path, "PRAGMA integrity_check") == [("ok",)]


#: A sink's and a ledger's database not writable for a moment (a restore's chmod, another
#: user's file), then writable again; as nobody when run as root, whom no mode stops.
NOT_WRITABLE_FOR_A_MOMENT = """
import os, sqlite3, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from sink_helpers import build_record
from tokenmeter.guardrails._ledger import SQLiteLedger
from tokenmeter.sinks import SQLiteSink
if os.geteuid() == 0:  # everything imported: nobody may not read root's interpreter
    os.setgid(65534)
    os.setuid(65534)
directory = Path(sys.argv[1])
sink = SQLiteSink(directory / "usage.db")
sink.write([build_record(0)])
sink.close()
SQLiteLedger(directory / "budgets.db").close()
for name in ("usage.db", "budgets.db"):
    os.chmod(directory / name, 0o400)
sink = SQLiteSink(directory / "usage.db")
try:
    sink.write([build_record(1)])
except PermissionError:
    print("refused")
try:
    SQLiteLedger(directory / "budgets.db")
except PermissionError:
    print("refused")
for name in ("usage.db", "budgets.db"):
    os.chmod(directory / name, 0o600)
sink.write([build_record(2)])
sink.close()
ledger = SQLiteLedger(directory / "budgets.db")
ledger.reserve("k", "2026-12-01T00:00:00+00:00", 10.0, 1.0)
ledger.close()
conn = sqlite3.connect(directory / "usage.db")
print(conn.execute("SELECT COUNT(*) FROM records").fetchone()[0])
"""


def test_a_database_not_writable_when_connecting_is_refused_and_written_once_it_is() -> None:
    """Refused (PermissionError) while it may not be written, as opening it for writing did,
    rather than opened read-only by SQLite and kept so: once writable again, every write failed
    with "attempt to write a readonly database" until the process ended."""
    with tempfile.TemporaryDirectory() as name:  # under /tmp: nobody may reach it
        if os.geteuid() == 0:
            os.chown(name, 65534, 65534)
        here = str(Path(__file__).parent)
        done = run_python(
            "-c", NOT_WRITABLE_FOR_A_MOMENT, name, here, env=dict(os.environ), cwd=Path(name)
        )
    assert done.stdout.split() == ["refused", "refused", "2"]


#: A process whose real user differs from its effective one (a setuid wrapper, a daemon after
#: seteuid): real 65534, effective 1000, the databases its own (1000's, 0o600).
AS_ANOTHER_EFFECTIVE_USER = """
import os, sqlite3, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from sink_helpers import build_record
from tokenmeter.guardrails._ledger import SQLiteLedger
from tokenmeter.sinks import SQLiteSink
directory = Path(sys.argv[1])
os.setresgid(65534, 1000, 0)
os.setresuid(65534, 1000, 0)
sink = SQLiteSink(directory / "usage.db")
sink.write([build_record(0)])
sink.close()
ledger = SQLiteLedger(directory / "budgets.db")
ledger.reserve("k", "2026-12-01T00:00:00+00:00", 10.0, 1.0)
ledger.close()
print(sqlite3.connect(directory / "usage.db").execute("SELECT COUNT(*) FROM records").fetchone()[0])
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="sets its real and effective users apart")
def test_a_database_is_judged_writable_by_the_effective_user() -> None:
    """Whether the database may be written was asked of the real user (``os.access``), where
    opening it is decided by the effective one: a process whose own files they were had every
    record set aside and every budget check fail open."""
    with tempfile.TemporaryDirectory() as name:
        os.chown(name, 1000, 1000)
        here = str(Path(__file__).parent)
        done = run_python(
            "-c", AS_ANOTHER_EFFECTIVE_USER, name, here, env=dict(os.environ), cwd=Path(name)
        )
    assert done.stdout.split() == ["1"]
