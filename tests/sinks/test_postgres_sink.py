"""PostgresSink against a real server on loopback: round trip, idempotence, migrations raced by
processes, and the faults a shared server brings (restart, killed connection, statement timeout).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from helpers import SilencingProxy, another_runs_connection, returns, wait_for
from pg_server import PgServer
from sink_helpers import START, build_record, record_from_row

import tokenmeter
from tokenmeter._models import SessionInfo, UsageRecord

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (tokenmeter[postgres])")

from tokenmeter.sinks.postgres import SCHEMA_VERSION, PostgresSink, check_dsn  # noqa: E402

HERE = Path(__file__).resolve().parent


def query(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET search_path = tokenmeter")
        cur = conn.execute(sql.encode(), params)
        return cur.fetchall() if cur.description is not None else []


def read_records(dsn: str) -> list[UsageRecord]:
    """Every stored record, rebuilt the way a reader of the schema would (as for SQLite)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute("SELECT * FROM tokenmeter.records ORDER BY timestamp, id")
        names = [d.name for d in cur.description or ()]
        return [record_from_row(dict(zip(names, row, strict=True))) for row in cur.fetchall()]


def count(dsn: str) -> int:
    return int(query(dsn, "SELECT count(*) FROM records")[0][0])


@pytest.fixture
def pg_sink(pg_dsn: str) -> Iterator[PostgresSink]:
    sink = PostgresSink(pg_dsn)
    yield sink
    sink.close()


def test_records_and_sessions_round_trip_exactly(pg_sink: PostgresSink, pg_dsn: str) -> None:
    records = [
        build_record(0),
        build_record(1, estimated_cost_usd=None, cost_breakdown=None, price_source=None),
        build_record(
            2,
            model_name="claude-é\u2603",
            tags={"ключ": "值", "quote": 'it\'s "x"\t\\n'},
            status="error",
            error="RateLimitError",
            streamed=True,
            estimated=True,
            latency_ms=None,
            session_id=None,
            session_name=None,
            estimated_cost_usd=Decimal("0.0000001"),
            cost_breakdown={"input": Decimal("0.0000001")},
        ),
    ]
    pg_sink.write(records)
    assert read_records(pg_dsn) == records
    assert query(pg_dsn, "SELECT cost_pusd FROM records WHERE id = 'rec-000002'") == [(100_000,)]

    started = SessionInfo(id="s1", name="demo", started_at=START, tags={"team": "search"})
    pg_sink.write_sessions([started])
    done = {"status": "completed", "ended_at": START, "notes": "n", "calls": 2}
    done |= {"input_tokens": 2400, "output_tokens": 7, "cost_usd": Decimal("0.0000001")}
    pg_sink.write_sessions([started.model_copy(update=done)])
    rows = query(pg_dsn, "SELECT id, status, ended_at, notes FROM sessions")
    assert rows == [("s1", "completed", "2026-11-22T10:00:00.123Z", "n")]
    stored = "SELECT calls, input_tokens, output_tokens, cost_usd, unpriced_calls FROM sessions"
    assert query(pg_dsn, stored) == [(2, 2400, 7, "0.0000001", 0)]  # the totals it was sent with
    totals = query(pg_dsn, "SELECT calls, input_tokens FROM session_totals WHERE id = 's1'")
    assert totals == [(2, 2400)]


def test_a_retried_batch_creates_no_duplicates(pg_sink: PostgresSink, pg_dsn: str) -> None:
    batch = [build_record(i) for i in range(300)]
    pg_sink.write(batch)
    pg_sink.write([*batch[100:], build_record(300)])
    assert count(pg_dsn) == 301


def test_tables_live_in_their_own_schema_at_the_current_version(
    pg_sink: PostgresSink, pg_dsn: str
) -> None:
    pg_sink.write([build_record(0)])
    assert query(pg_dsn, "SELECT max(version) FROM tokenmeter_schema") == [(SCHEMA_VERSION,)]
    public = query(pg_dsn, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
    assert public == [(0,)]


def test_a_schema_written_by_a_newer_tokenmeter_is_refused(
    pg_sink: PostgresSink, pg_dsn: str
) -> None:
    pg_sink.write([build_record(0)])
    query(pg_dsn, "INSERT INTO tokenmeter_schema (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
    newer = PostgresSink(pg_dsn)
    with pytest.raises(ValueError, match="newer than this tokenmeter supports"):
        newer.write([build_record(1)])
    assert count(pg_dsn) == 1


@pytest.mark.parametrize(
    "drop",
    [
        "DROP TABLE records CASCADE",
        "DROP TABLE sessions CASCADE",
        "DROP SCHEMA tokenmeter CASCADE",
    ],
)
def test_tables_dropped_while_running_are_made_again(
    pg_sink: PostgresSink, pg_dsn: str, drop: str
) -> None:
    """The version table still said "current" when only ``records`` was dropped, so nothing
    made it again and every later batch failed (``relation "records" does not exist``)."""
    pg_sink.write([build_record(0)])
    query(pg_dsn, drop)
    for write in (
        lambda: pg_sink.write([build_record(1)]),
        lambda: pg_sink.write_sessions([SessionInfo(id="s1", name="demo", started_at=START)]),
    ):
        try:
            write()
        except psycopg.errors.UndefinedTable:  # on the old connection: the writer retries
            write()
    assert [r.id for r in read_records(pg_dsn)][-1] == "rec-000001"
    assert query(pg_dsn, "SELECT calls FROM session_totals") == [(count(pg_dsn),)]
    tables = "SELECT count(*) FROM pg_tables WHERE schemaname = 'tokenmeter'"
    assert query(pg_dsn, tables) == [(5,)]
    assert query(pg_dsn, "SELECT max(version) FROM tokenmeter_schema") == [(SCHEMA_VERSION,)]


def test_bad_arguments_are_value_errors_and_the_dsn_is_never_shown() -> None:
    with pytest.raises(ValueError, match="schema"):
        PostgresSink("", schema="x; DROP TABLE records")
    for reserved in ("pg_usage", "PG_temp", "pg_catalog"):  # PostgreSQL refuses them to us
        with pytest.raises(ValueError, match="schema must not start with pg_"):
            PostgresSink("", schema=reserved)
    # PostgreSQL cuts a name at 63 bytes: two names alike that far were one store, two
    # services' records, sessions and budget rows mixed. Refused wherever a schema is named.
    assert PostgresSink("", schema="S" * 63).schema == "s" * 63
    for long_name in ("s" * 63 + "_api", "s" * 63 + "_web"):
        url = f"postgresql://u@127.0.0.1:1/db?schema={long_name}"
        for make, kwargs in (
            (PostgresSink, {"dsn": "", "schema": long_name}),
            (PostgresSink, {"dsn": url}),
            (tokenmeter.configure, {"pg_dsn": url}),  # TOKENMETER_PG_DSN's check, the ledger's
        ):
            with pytest.raises(ValueError, match="schema must be at most 63 bytes") as refused:
                make(**kwargs)
            assert f"got 67: {long_name!r}" in str(refused.value)
    with pytest.raises(ValueError, match="statement_timeout_s"):
        PostgresSink("", statement_timeout_s=0)
    assert "hunter2" not in repr(PostgresSink("postgresql://u:hunter2@127.0.0.1/db"))
    # libpq reads a connection string up to a NUL: "host=db\x00..." connected to the local
    # socket's server, and the rest of the string (its password too) was dropped without a
    # word; a lone surrogate failed every write (UnicodeEncodeError), every record set aside.
    for dsn in ("host=db\x00 password=hunter2", "host=db password=hunter2\ud800"):
        with pytest.raises(ValueError, match="dsn cannot hold") as refused:
            PostgresSink(dsn)
        assert "hunter2" not in str(refused.value)
    # A schema named with an escape that is no UTF-8: a bare codec error that named nothing.
    with pytest.raises(ValueError, match="schema in the URL") as refused:
        PostgresSink("postgresql://u:hunter2@127.0.0.1:1/db?schema=%ff")
    assert "hunter2" not in str(refused.value)
    # ... or anywhere else in the URL: every write failed with that codec error.
    for dsn in (
        "postgresql://u:hunter2%ff@127.0.0.1:1/db",
        "postgresql://u:hunter2@127.0.0.1:1/d%ffb",
        "postgresql://u:hunter2@127.0.0.1:1/db?application_name=%ff",
    ):
        with pytest.raises(ValueError, match="dsn has a %-escape") as refused:
            PostgresSink(dsn)
        assert "hunter2" not in str(refused.value)


def test_a_dbname_that_is_a_connection_string_is_refused_without_showing_it() -> None:
    """``PostgresSink("dbname='postgresql://tm:S3cretPW42@db/llm'")``, as libpq documents a
    dbname may be written: psycopg does not expand it, so the whole URL was the database's
    name; the server's "database ... does not exist" was logged with the password (2 lines)
    and kept in quarantine.jsonl (3 times), and no record was ever stored."""
    for dsn in (
        "dbname='postgresql://tm:S3cretPW42@127.0.0.1:1/llm'",
        "host=127.0.0.1 dbname='postgres://tm:S3cretPW42@db/llm'",
        "host=127.0.0.1 port=1 dbname='user=tm password=S3cretPW42'",
        "postgresql://tm@127.0.0.1:1/?dbname=postgresql%3A%2F%2Ftm%3AS3cretPW42%40db%2Fllm",
        "postgresql://tm@127.0.0.1:1/user%3Dtm%20password%3DS3cretPW42?schema=team",
    ):
        with pytest.raises(ValueError, match="dbname is itself a connection string") as refused:
            PostgresSink(dsn)
        assert "S3cretPW42" not in str(refused.value)


def test_a_database_named_with_an_equals_sign_in_a_urls_path_is_taken() -> None:
    """A URL's path names the database as it is (psycopg and psql connect to "team=a"): it was
    refused as a connection string (review3 item 4); a keyword DSN's dbname still is."""
    assert check_dsn("postgresql://tm@127.0.0.1:1/team%3Da")[0].endswith("/team%3Da")
    assert check_dsn("postgresql://tm@127.0.0.1:1/team%3Da?schema=s")[1] == "s"
    with pytest.raises(ValueError, match="dbname is itself a connection string"):
        check_dsn("host=127.0.0.1 dbname='team=a'")
    assert PostgresSink("host=127.0.0.1 dbname=llm_usage").schema == "tokenmeter"  # a name


def test_timeouts_longer_than_postgresql_takes_wait_as_long_as_they_can(pg_dsn: str) -> None:
    """PostgreSQL holds ``statement_timeout`` in 32-bit milliseconds: one of 25 days or more
    ("never time out") was refused by the server on every connection ("Value exceeds integer
    range"), so no record was ever written; infinity raised OverflowError in the constructor."""
    for number, seconds in enumerate([1e7, float("inf")]):
        sink = PostgresSink(pg_dsn, statement_timeout_s=seconds, connect_timeout_s=seconds)
        sink.write([build_record(number)])
        sink.close()
    assert count(pg_dsn) == 2


@pytest.mark.parametrize("where", ["dsn", "PGCONNECT_TIMEOUT"])
def test_a_connect_timeout_the_dsn_or_the_environment_sets_is_the_one_waited(
    where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libpq's ``connect_timeout`` is the only knob of users who configure the DSN by setting:
    the sink's own 10 s overrode it (a DSN saying 2 s held the first budgeted call 10 s)."""
    with socket.create_server(("127.0.0.1", 0), backlog=8) as silent:  # takes, never answers
        dsn = f"host=127.0.0.1 port={silent.getsockname()[1]} user=nobody dbname=db"
        if where == "dsn":
            dsn += " connect_timeout=2"
        else:
            monkeypatch.setenv("PGCONNECT_TIMEOUT", "2")
        failed = returns(PostgresSink(dsn).connect, "the sink's 10 s were waited", limit=8)
    assert [type(exc) for exc in failed] == [psycopg.errors.ConnectionTimeout]


def test_configured_by_name_with_the_environment(
    pg_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TOKENMETER_SINKS", "postgres")
    monkeypatch.setenv("TOKENMETER_PG_DSN", pg_dsn)
    made = tokenmeter.record("anthropic", "claude-sonnet-4-5", 1000, 200)
    assert tokenmeter.flush(timeout=60)
    assert [r.id for r in read_records(pg_dsn)] == [made.id]
    assert query(pg_dsn, "SELECT count(*) FROM sessions") == [(1,)]


def test_a_url_in_the_settings_names_the_schema_as_the_clis_source_does(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``?schema=llm_usage`` reads a sink's schema in ``--source``; in TOKENMETER_PG_DSN libpq
    refused it ('invalid URI query parameter: "…"', the name hidden) and every record was set
    aside in quarantine.jsonl."""
    params = dict(part.split("=", 1) for part in pg_dsn.split())
    url = f"postgresql://{params['user']}@{params['host']}:{params['port']}/{params['dbname']}"
    monkeypatch.setenv("TOKENMETER_SINKS", "postgres")
    monkeypatch.setenv("TOKENMETER_PG_DSN", url + "?application_name=app&schema=LLM_usage")
    tokenmeter.configure(directory=tmp_path)
    made = tokenmeter.record("openai", "gpt-4o", 1000, 200)
    assert tokenmeter.flush(timeout=60)
    assert query(pg_dsn, "SELECT id FROM llm_usage.records") == [(made.id,)]
    assert PostgresSink(url + "?schema=llm_usage", schema="LLM_USAGE").schema == "llm_usage"
    with pytest.raises(ValueError, match="differ"):
        PostgresSink(url + "?schema=llm_usage", schema="other")
    # A parameter libpq does not know is named (never a value, which may be the password).
    sink = PostgresSink("postgresql://tm:hunter2@127.0.0.1:1/x?colour=red", connect_timeout_s=1)
    with pytest.raises(psycopg.Error, match='invalid URI query parameter: "colour"') as refused:
        sink.write([build_record(0)])
    assert "hunter2" not in str(refused.value)


def test_a_database_that_may_be_a_slashed_password_is_not_in_the_sinks_errors(
    pg_dsn: str,
) -> None:
    """``postgresql://tm:2024/Pw:S3cretTAIL@db`` (a password with a '/') is taken, as the
    database ``team:eu@prod`` after a port is: the server's "database "Pw:S3cretTAIL@db" does
    not exist" put the password's tail in the writer's log and quarantine.jsonl."""
    params = dict(part.split("=", 1) for part in pg_dsn.split())
    url = f"postgresql://127.0.0.1:{params['port']}/Pw:S3cretTAIL@db?user={params['user']}"
    sink = PostgresSink(url, connect_timeout_s=5)
    with pytest.raises(psycopg.Error, match='database "\\*\\*\\*" does not exist') as refused:
        sink.write([build_record(0)])
    assert "S3cretTAIL" not in str(refused.value)


def test_budgets_keep_their_spend_in_the_postgres_sink_named_in_the_settings(
    pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Configured by name, the sink's database is the budgets' ledger too: every machine writing
    # there shares the budget (not a budgets.db on one machine).
    from tokenmeter.testing import FakeProvider

    monkeypatch.setenv("TOKENMETER_SINKS", "postgres")
    monkeypatch.setenv("TOKENMETER_PG_DSN", pg_dsn)
    tokenmeter.configure(
        directory=tmp_path, budgets=[{"name": "team", "limit_usd": 1, "period": "total"}]
    )
    tokenmeter.instrument(["openai"])
    with FakeProvider() as fake:
        fake.openai_client().chat.completions.create(model="gpt-4o", messages=[])
    assert tokenmeter.flush(timeout=60)
    from tokenmeter.guardrails import _budgets

    _budgets.give_back()  # the process's unused slice of the budget: what it spent is settled
    rows = query(pg_dsn, "SELECT scope_key, settled_usd FROM budget_ledger")
    assert [(key.split("|")[0], spent > 0) for key, spent in rows] == [("team", True)]
    assert not (tmp_path / "budgets.db").exists()


def test_the_standard_pg_variables_are_enough(
    pg_server: PgServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dsn = pg_server.create_database()
    params = dict(part.split("=", 1) for part in dsn.split())
    for key, env in (
        ("host", "PGHOST"),
        ("port", "PGPORT"),
        ("user", "PGUSER"),
        ("dbname", "PGDATABASE"),
    ):
        monkeypatch.setenv(env, params[key])
    monkeypatch.setenv("TOKENMETER_SINKS", "postgres")
    tokenmeter.record("openai", "gpt-4o", 10, 2)
    assert tokenmeter.flush(timeout=60)
    assert count(dsn) == 1


# --- faults against the real server -----------------------------------------------------------


def _stream(n: int, every: int, fault: Callable[[], None]) -> list[str]:
    """Record ``n`` calls through the pipeline, calling ``fault()`` after every ``every``."""
    ids = []
    for i in range(n):
        ids.append(tokenmeter.record("openai", "gpt-4o", 100, 10).id)
        if i % every == every - 1:
            fault()
        time.sleep(0.0005)
    return ids


def _flush_until_written(deadline_s: float = 120) -> None:
    end = time.monotonic() + deadline_s
    while not tokenmeter.flush(timeout=30):
        assert time.monotonic() < end, "the sink never recovered"


def _terminate_tokenmeter_backends(dsn: str) -> int:
    rows = query(
        dsn,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = 'tokenmeter' AND datname = current_database() "
        "AND pid <> pg_backend_pid()",
    )
    return int(rows[0][0])


def test_connections_killed_mid_stream_lose_and_duplicate_nothing(
    pg_server: PgServer, pg_dsn: str
) -> None:
    tokenmeter.configure(sinks=[PostgresSink(pg_dsn)])
    killed = []
    with another_runs_connection(pg_server) as other:
        ids = _stream(600, 100, lambda: killed.append(_terminate_tokenmeter_backends(pg_dsn)))
        assert other.execute("SELECT 1").fetchone() == (1,)  # another run's: left alone
    _flush_until_written()
    assert sum(killed) >= 1  # the writer's connection was there to be killed
    assert sorted(r.id for r in read_records(pg_dsn)) == sorted(ids)


def test_a_server_restart_mid_stream_loses_and_duplicates_nothing(
    pg_server: PgServer,
) -> None:
    pg_server.require_restart()  # here: the restarts are made on other threads
    dsn = pg_server.create_database()
    tokenmeter.configure(sinks=[PostgresSink(dsn, connect_timeout_s=2)])
    restarts: list[threading.Thread] = []
    done: list[bool] = []
    booted = query(dsn, "SELECT pg_postmaster_start_time()")[0][0]

    def restart() -> None:
        pg_server.restart()
        done.append(True)

    def restart_in_background() -> None:
        for thread in restarts:
            thread.join()  # one restart at a time
        thread = threading.Thread(target=restart)
        thread.start()
        restarts.append(thread)

    ids = _stream(400, 150, restart_in_background)  # two restarts while calls go on
    for thread in restarts:
        thread.join()
    assert done == [True, True]
    assert query(dsn, "SELECT pg_postmaster_start_time()")[0][0] > booted
    _flush_until_written()
    assert sorted(r.id for r in read_records(dsn)) == sorted(ids)


def test_a_statement_timeout_fails_the_batch_which_is_retried(
    pg_dsn: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = PostgresSink(pg_dsn, statement_timeout_s=0.2)
    sink.write([build_record(0)])  # migrated, connected
    tokenmeter.configure(sinks=[sink])
    with psycopg.connect(pg_dsn) as locker:
        locker.execute("LOCK TABLE tokenmeter.records IN EXCLUSIVE MODE")
        made = [tokenmeter.record("openai", "gpt-4o", 100, 10).id for _ in range(50)]
        assert not tokenmeter.flush(timeout=60)  # every attempt times out: nothing written
        assert count(pg_dsn) == 1
        locker.rollback()
    _flush_until_written()
    assert "QueryCanceled" in caplog.text
    assert {r.id for r in read_records(pg_dsn)} == {"rec-000000", *made}


@pytest.mark.parametrize(
    "alter",
    [
        "ALTER TABLE records ALTER COLUMN tags DROP DEFAULT, "
        "ALTER COLUMN tags TYPE jsonb USING tags::jsonb",
        'ALTER TABLE records ALTER COLUMN "timestamp" TYPE timestamptz '
        'USING "timestamp"::timestamptz',
        "ALTER TABLE records ALTER COLUMN estimated_cost_usd TYPE numeric "
        "USING estimated_cost_usd::numeric",
        "ALTER TABLE records ALTER COLUMN model_name TYPE varchar(200)",
    ],
    ids=["tags jsonb", "timestamp timestamptz", "cost numeric", "model varchar"],
)
def test_a_column_whose_type_an_admin_changed_gets_the_records_values(
    pg_sink: PostgresSink, pg_dsn: str, alter: str
) -> None:
    """The binary COPY sends each value as its column's type: tags in a column made jsonb were
    stored as one JSON string ('"{\\"team\\":\\"search\\"}"', every tag query broken), and a
    timestamp made timestamptz, a cost made numeric or a name made varchar failed every batch
    for ever (the records set aside). The server now reads such columns from text, as an
    INSERT would."""
    pg_sink.write([build_record(0)])
    query(pg_dsn, alter)
    batch = [build_record(1, tags={"team": "search", "tab": "a\tb\\n"}), build_record(2)]
    try:
        pg_sink.write(batch)
    except psycopg.Error:  # the old connection's types: the writer retries on a new one
        pg_sink.write(batch)
    pg_sink.write([build_record(2), build_record(3)])  # one stored already: through the stage
    rows = query(
        pg_dsn,
        "SELECT id, tags::jsonb, estimated_cost_usd::numeric, model_name::text, "
        "timestamp::timestamptz FROM records ORDER BY id",
    )
    assert [row[0] for row in rows] == [f"rec-{i:06d}" for i in range(4)]
    assert [row[1] for row in rows] == [
        {"team": "search"},
        {"team": "search", "tab": "a\tb\\n"},
        {"team": "search"},
        {"team": "search"},
    ]
    assert {row[2] for row in rows} == {Decimal("0.006")} and {row[3] for row in rows} == {"gpt-4o"}
    assert [row[4] for row in rows] == [START + timedelta(milliseconds=i) for i in range(4)]


def test_eight_processes_racing_the_migration_store_exactly_16000(
    pg_dsn: str,
) -> None:
    workers = [
        subprocess.Popen(
            [sys.executable, str(HERE / "pg_writer_process.py"), pg_dsn, "2000"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    for worker in workers:
        _, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err
        assert "Traceback" not in err, err
    assert count(pg_dsn) == 16_000
    assert query(pg_dsn, "SELECT count(DISTINCT id) FROM records") == [(16_000,)]
    assert query(pg_dsn, "SELECT count(*) FROM tokenmeter_schema") == [(SCHEMA_VERSION,)]
    assert query(pg_dsn, "SELECT count(DISTINCT tags) FROM records") == [(8,)]


def test_the_dsn_setting_comes_from_every_layer_and_is_never_echoed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tokenmeter._config import load_settings

    (tmp_path / "pyproject.toml").write_text('[tool.tokenmeter]\npg_dsn = "dbname=from_toml"\n')
    assert load_settings(cwd=tmp_path, env={}).pg_dsn == "dbname=from_toml"
    env = {"TOKENMETER_PG_DSN": "dbname=from_env", "TOKENMETER_SINKS": "postgres,otel"}
    settings = load_settings(cwd=tmp_path, env=env)
    assert (settings.pg_dsn, settings.sinks) == ("dbname=from_env", ("postgres", "otel"))
    assert load_settings({"pg_dsn": "dbname=x"}, cwd=tmp_path, env=env).pg_dsn == "dbname=x"
    with pytest.raises(
        ValueError, match="'pg_dsn' from configure\\(\\): must be a connection"
    ) as e:
        tokenmeter.configure(pg_dsn=b"password=hunter2")  # type: ignore[arg-type]
    assert "hunter2" not in str(e.value)


def test_a_nul_character_is_kept_as_a_replacement_not_refused(
    pg_sink: PostgresSink, pg_dsn: str
) -> None:
    """PostgreSQL text (and jsonb) cannot hold NUL, which a hostile server can put in a model
    name; SQLite stores it. The record is stored with U+FFFD instead of being refused."""
    odd = build_record(
        0, model_name="gpt\x00x", tags={"k\x00": "v\x00", "path": "C:\\u0000"}, error="E\x00"
    )
    pg_sink.write([odd, build_record(1)])
    assert count(pg_dsn) == 2
    row = query(
        pg_dsn,
        "SELECT model_name, tags::jsonb ->> 'k\ufffd', tags::jsonb ->> 'path', error "
        "FROM records WHERE id = 'rec-000000'",
    )
    assert row == [("gpt\ufffdx", "v\ufffd", "C:\\u0000", "E\ufffd")]


def test_text_that_spells_a_json_nul_escape_is_kept_outside_the_json_columns(
    pg_sink: PostgresSink, pg_dsn: str
) -> None:
    """The six characters ``\\u0000`` are text in a model or session name: only in the JSON
    columns (tags, breakdown) are they the escape of a NUL, which jsonb refuses. Any text that
    began with ``{`` was rewritten (a session's name always, a record's model when its tags held
    them): ``{\\u0000}`` became ``{\ufffd}``, and PostgreSQL's reports differed from SQLite's."""
    odd = "{\\u0000}"
    record = build_record(0, model_name=odd, tags={"path": "C:\\u0000"})
    pg_sink.write([record])
    pg_sink.write_sessions([SessionInfo(id="s1", name=f"{odd} nightly", started_at=START)])
    assert query(pg_dsn, "SELECT model_name, tags::jsonb ->> 'path' FROM records") == [
        (odd, "C:\\u0000")
    ]
    assert query(pg_dsn, "SELECT name FROM sessions") == [(f"{odd} nightly",)]


def test_a_role_given_the_documented_privileges_writes_and_keeps_budgets(pg_dsn: str) -> None:
    """docs/team.md names the privileges a writing role needs once the schema is made; with
    only INSERT/SELECT (what they said) every batch failed on the seq column's sequence, every
    session on its upsert and every budget check on its ledger row."""
    role = f"tm_writer_{uuid.uuid4().hex[:8]}"
    admin = PostgresSink(pg_dsn)
    admin.write([build_record(0)])  # the schema, made by a role that may
    admin.close()
    database = pg_dsn.rsplit("dbname=", 1)[1]
    query(pg_dsn, f"CREATE ROLE {role} LOGIN")
    try:
        query(pg_dsn, f"REVOKE CREATE ON DATABASE {database} FROM PUBLIC")
        query(pg_dsn, f"GRANT USAGE ON SCHEMA tokenmeter TO {role}")
        query(pg_dsn, f"GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA tokenmeter TO {role}")
        query(pg_dsn, f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA tokenmeter TO {role}")
        sink = PostgresSink(pg_dsn.replace("user=tm", f"user={role}"))
        sink.write([build_record(1)])
        sink.write([build_record(1), build_record(2)])  # a retried batch: through the stage
        started = SessionInfo(id="s1", name="demo", started_at=START)
        sink.write_sessions([started])
        sink.write_sessions([started.model_copy(update={"status": "completed"})])
        ledger = sink.budget_ledger()
        assert ledger.reserve("k", "2026-11-22", 1.0, 0.25) == (True, 0.0)
        assert ledger.lease_many([("k2", "2026-11-22", 1.0, 0, 0, 0, 0.1, 0.01)])[0][0]
        ledger.close()
        sink.close()
    finally:
        query(pg_dsn, f"DROP OWNED BY {role}")
        query(pg_dsn, f"DROP ROLE {role}")
    assert count(pg_dsn) == 3
    assert query(pg_dsn, "SELECT status FROM sessions") == [("completed",)]


def _schema_of_an_earlier_version(dsn: str, version: int) -> None:
    """The tokenmeter schema as the release at ``version`` made it (its first migrations)."""
    from tokenmeter.sinks.postgres import _MIGRATIONS

    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE SCHEMA tokenmeter")
        conn.execute("SET search_path = tokenmeter")
        conn.execute(
            "CREATE TABLE tokenmeter_schema "
            "(version INTEGER NOT NULL, migrated_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        for number, migrate in enumerate(_MIGRATIONS[:version], start=1):
            migrate(conn)
            conn.execute("INSERT INTO tokenmeter_schema (version) VALUES (%s)", (number,))


def test_a_writer_role_through_an_upgrade_as_documented(pg_dsn: str) -> None:
    """docs/team.md's writing role after a tokenmeter upgrade that adds a table: when its process
    ran the new version first, every write failed with "permission denied for database
    postgres" (all set aside at exit), naming neither the migration nor the schema's owner; when
    the owner migrated first, the documented grants did not cover session_parts. The error now
    says what to do, and the documented ALTER DEFAULT PRIVILEGES covers the new table."""
    role = f"tm_writer_{uuid.uuid4().hex[:8]}"
    database = pg_dsn.rsplit("dbname=", 1)[1]
    _schema_of_an_earlier_version(pg_dsn, SCHEMA_VERSION - 1)
    query(pg_dsn, f"CREATE ROLE {role} LOGIN")
    try:
        query(pg_dsn, f"REVOKE CREATE ON DATABASE {database} FROM PUBLIC")
        query(pg_dsn, f"GRANT USAGE ON SCHEMA tokenmeter TO {role}")
        query(pg_dsn, f"GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA tokenmeter TO {role}")
        query(pg_dsn, f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA tokenmeter TO {role}")
        for kind, privileges in (("TABLES", "SELECT, INSERT, UPDATE"), ("SEQUENCES", "USAGE")):
            query(
                pg_dsn,
                f"ALTER DEFAULT PRIVILEGES IN SCHEMA tokenmeter GRANT {privileges} "
                f"ON {kind} TO {role}",
            )
        writer = PostgresSink(pg_dsn.replace("user=tm", f"user={role}"))
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
            writer.write([build_record(0)])  # the writer's process first: it cannot migrate
        assert str(refused.value).startswith(
            f"schema 'tokenmeter' is at version {SCHEMA_VERSION - 1}, this tokenmeter needs "
            f"{SCHEMA_VERSION}: run it once as the schema's owner to migrate"
        )
        admin = PostgresSink(pg_dsn)
        admin.write([build_record(1)])  # the owner's process migrates
        admin.close()
        writer.write([build_record(0)])
        started = SessionInfo(id="s1", name="demo", started_at=START, calls=1)
        writer.write_sessions([started.model_copy(update={"status": "completed"})])
        writer.close()
    finally:
        query(pg_dsn, f"DROP OWNED BY {role}")
        query(pg_dsn, f"DROP ROLE {role}")
    assert count(pg_dsn) == 2
    assert query(pg_dsn, "SELECT status, calls FROM sessions") == [("completed", 1)]


def test_a_client_encoding_set_for_the_application_stores_any_text(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PGCLIENTENCODING (libpq's, set for an application's own database use) made psycopg encode
    every value in it: a model or tag outside LATIN1 failed the batch (UnicodeEncodeError) and
    the ledger (the budget let the call through). The sink's connections ask for UTF-8."""
    monkeypatch.setenv("PGCLIENTENCODING", "LATIN1")
    sink = PostgresSink(pg_dsn)
    odd = build_record(0, model_name="模型", tags={"k": "\u2603"})
    sink.write([odd])
    ledger = sink.budget_ledger()
    try:
        assert ledger.reserve("session:\u2603", "2026-11-22", 1.0, 0.25) == (True, 0.0)
        assert ledger.spent("session:\u2603", "2026-11-22") == 0.25
    finally:
        ledger.close()
        sink.close()
    monkeypatch.delenv("PGCLIENTENCODING")  # for the test's own reader
    assert read_records(pg_dsn) == [odd]


@pytest.mark.parametrize(
    "dsn",
    [
        "host=127.0.0.1 port=1 user=tm password=hunter2 secret2 dbname=x",  # an unquoted space
        "postgresql://tm:hunter2%zz@127.0.0.1:1/x",  # a % that is not percent-encoding
        "host=127.0.0.1 port=1 user=tm password='hunter2 secret2",  # an unclosed quote
    ],
)
def test_a_malformed_dsn_never_shows_its_password(
    dsn: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """libpq quotes the part of a connection string it cannot parse, which may be the password
    (or the half of it after a space): neither the error nor the log nor the quarantine file
    may show it."""
    sink = PostgresSink(dsn, connect_timeout_s=1)
    with pytest.raises(psycopg.Error) as e:
        sink.write([build_record(0)])
    assert "connection" in str(e.value) and "hunter2" not in str(e.value)
    assert "secret2" not in str(e.value)
    quarantine = tmp_path / "quarantine.jsonl"
    tokenmeter.configure(sinks=[sink], directory=str(tmp_path))
    tokenmeter.record("openai", "gpt-4o", 100, 10)
    assert not tokenmeter.flush(timeout=60)
    tokenmeter.configure(sinks=[])  # the record still refused goes to the quarantine file
    assert "PostgresSink failed" in caplog.text
    assert "hunter2" not in caplog.text and "secret2" not in caplog.text
    assert "hunter2" not in quarantine.read_text() and "secret2" not in quarantine.read_text()


def test_a_password_with_an_unencoded_at_is_refused_without_showing_it() -> None:
    """``postgresql://tm:p@ss-Tail9@db/llm``: libpq ends the password at the first ``@`` and
    tried the host ``ss-Tail9@db``, whose "failed to resolve host" error put the password's
    tail in the writer's log and ``quarantine.jsonl`` at every write. The sink, and the
    ``pg_dsn`` setting, now refuse such a URL at once, quoting nothing of it."""
    dsn = "postgresql://tm:p@ss-Tail9@127.0.0.1:1/llm"
    with pytest.raises(ValueError, match="%40") as e:
        PostgresSink(dsn)
    assert "Tail9" not in str(e.value)
    with pytest.raises(ValueError, match="pg_dsn") as e:
        tokenmeter.configure(pg_dsn=dsn)
    assert "Tail9" not in str(e.value)
    # One '@' is the user's; a '@' after the host (in an option) is not the password's.
    PostgresSink("postgresql://tm:p%40ss@127.0.0.1:1/llm?options=-c%20x=a@b").close()


def test_a_server_that_stops_answering_mid_write_fails_the_write_in_time(pg_dsn: str) -> None:
    """statement_timeout is the server's: a server that stopped answering during a write (its
    backend frozen; a failover behind a proxy that keeps the socket open) held the sink's writer,
    and every record after, for ever. The write is now given up a second past
    ``statement_timeout_s`` (the connection cut, the server rolls the batch back), and the next
    write, on a new connection, stores it."""
    import os
    import signal

    sink = PostgresSink(pg_dsn, statement_timeout_s=1)
    sink.write([build_record(0)])
    [(backend,)] = query(
        pg_dsn,
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'tokenmeter' "
        "AND datname = current_database()",
    )
    os.kill(backend, signal.SIGSTOP)
    try:
        failed = returns(
            lambda: sink.write([build_record(1)]), "the writer waits for a server not answering", 30
        )
    finally:
        os.kill(backend, signal.SIGCONT)
    assert [type(exc) for exc in failed] == [TimeoutError]
    sink.write([build_record(1)])  # retried, as the writer does: stored once
    assert [r.id for r in read_records(pg_dsn)] == [build_record(0).id, build_record(1).id]
    sink.close()


_EXIT_WITH_A_SILENT_SERVER = """
import pathlib, sys, time
import tokenmeter
from tokenmeter.sinks import PostgresSink

dsn, directory = sys.argv[1], pathlib.Path(sys.argv[2])
sink = PostgresSink(dsn, schema="exit_silent", statement_timeout_s=1)
tokenmeter.configure(directory=str(directory), sinks=[sink], exit_timeout=5)
for _ in range(5):
    tokenmeter.record("openai", "gpt-4o", 1000, 100)
assert tokenmeter.flush(timeout=60)
(directory / "stored").touch()
while not (directory / "silenced").exists():
    time.sleep(0.01)
for _ in range(10):
    tokenmeter.record("openai", "gpt-4o", 1000, 100)
"""


def test_records_a_silent_server_never_got_are_set_aside_at_exit(
    pg_dsn: str, tmp_path: Path
) -> None:
    """A server that stops answering just before the application exits (frozen, or its address
    black-holed): the write on the old connection is given up a second past
    ``statement_timeout_s``, and its retry waited for a new connection for the full connect
    timeout (10 s), past ``exit_timeout``. The exit then set none of that write's records aside
    ("may be lost"), though nothing of them had been sent to be committed: 10 of 15 were neither
    stored nor in quarantine.jsonl. Now all 10 are set aside."""
    params = dict(part.split("=", 1) for part in pg_dsn.split())
    proxy = SilencingProxy(params["host"], int(params["port"]))
    through = pg_dsn.replace(f"port={params['port']}", f"port={proxy.port}")
    child = subprocess.Popen(
        [sys.executable, "-c", _EXIT_WITH_A_SILENT_SERVER, through, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        deadline = time.monotonic() + 60  # only turns a hang into a failure
        while not (tmp_path / "stored").exists() and child.poll() is None:
            assert time.monotonic() < deadline, "the first records were never stored"
            time.sleep(0.01)
        proxy.silence(new_too=True)
        (tmp_path / "silenced").touch()
        _, err = child.communicate(timeout=60)
    finally:
        child.kill()
        proxy.close()
    backends = (
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name = 'tokenmeter'"
    )
    wait_for(lambda: not query(pg_dsn, backends), "the cut backends end")  # for the next tests
    assert child.returncode == 0, err
    [(stored,)] = query(pg_dsn, "SELECT count(*) FROM exit_silent.records")
    quarantine = tmp_path / "quarantine.jsonl"
    lines = quarantine.read_text().splitlines() if quarantine.exists() else []
    set_aside = sum(1 for line in lines if "model_name" in line)
    assert (stored, set_aside) == (5, 10), err
    assert "may be lost" not in err


def test_a_session_row_adds_up_the_parts_of_every_process(
    pg_sink: PostgresSink, pg_dsn: str
) -> None:
    """Every process of ``tokenmeter run`` (and every worker forked inside a session) stores the
    session's row: the row kept the totals of the last one, 3 calls of the run's 6."""
    ended = START + timedelta(minutes=1)
    parts = [
        SessionInfo(id="run", started_at=START, part="p0", calls=3, cost_usd=Decimal("0.0225")),
        SessionInfo(id="run", started_at=START, part="p1", calls=1, input_tokens=5, inherited=True),
        SessionInfo(
            id="run",
            started_at=START,
            ended_at=ended,
            status="completed",
            part="p0",
            calls=3,
            cost_usd=Decimal("0.0225"),
        ),
    ]
    pg_sink.write_sessions(parts[:2])
    pg_sink.write_sessions(parts[2:])
    pg_sink.write_sessions([parts[1].model_copy(update={"calls": 2, "output_tokens": 7})])
    row = "SELECT status, calls, input_tokens, output_tokens, cost_usd FROM sessions"
    assert query(pg_dsn, row) == [("completed", 5, 5, 7, "0.0225")]


class _CountingCursor(psycopg.Cursor[Any]):
    """A cursor that counts the rows its ``fetchall`` brings from the server."""

    fetched = 0

    def fetchall(self) -> list[Any]:
        rows = super().fetchall()
        _CountingCursor.fetched += len(rows)
        return rows


class _CountingSink(PostgresSink):
    """A PostgresSink whose session stores count the rows they read (``_CountingCursor``)."""

    def _upsert_sessions(self, conn: Any, sessions: Any) -> None:
        conn.cursor_factory = _CountingCursor
        super()._upsert_sessions(conn, sessions)


def test_storing_a_run_of_an_id_entered_again_reads_none_of_its_other_runs(pg_dsn: str) -> None:
    """Every store of a session read and re-summed every stored run (part) of its id: an id
    entered again per request (``@session(id=...)``) made the writer slower with each run, until
    records backed up and were set aside at exit."""
    sink = _CountingSink(pg_dsn)
    run = {"status": "completed", "ended_at": START, "calls": 1, "input_tokens": 100}
    run |= {"output_tokens": 10, "cost_usd": Decimal("0.00035")}
    for id_ in ("busy", "quiet"):  # each id's first run
        sink.write_sessions([SessionInfo(id=id_, part="first", started_at=START, **run)])
    query(  # 500 more runs of "busy", as earlier processes left them
        pg_dsn,
        "INSERT INTO session_parts SELECT 'busy', 'run' || n, 1, 100, 10, '0.00035', 0 "
        "FROM generate_series(1, 500) AS n",
    )
    busy = "calls = 501, input_tokens = 50100, output_tokens = 5010, cost_usd = '0.17535'"
    query(pg_dsn, f"UPDATE sessions SET {busy} WHERE id = 'busy'")

    read = {}
    for id_ in ("busy", "quiet"):
        again = SessionInfo(id=id_, part="again", started_at=START)  # a new run
        _CountingCursor.fetched = 0
        sink.write_sessions([again])
        sink.write_sessions([again.model_copy(update=run)])
        read[id_] = _CountingCursor.fetched
    sink.close()
    assert read["busy"] <= read["quiet"] < 10  # it read all 501 other runs of "busy" twice
    totals = "SELECT id, calls, input_tokens, output_tokens, cost_usd, unpriced_calls FROM sessions"
    assert query(pg_dsn, totals + " ORDER BY id") == [
        ("busy", 502, 50200, 5020, "0.17570", 0),
        ("quiet", 2, 200, 20, "0.00070", 0),
    ]


ROW_TOTALS = "SELECT calls, input_tokens, output_tokens, cost_usd, unpriced_calls FROM sessions"


def test_a_session_row_edited_by_hand_is_mended_by_the_next_store(pg_dsn: str) -> None:
    """A row moved by its part's change from what it held: zeroed by hand, it stayed off its
    parts for ever (2 runs of one call each: 1 call, 100 in); so does a row of many parts the
    move would leave below the part stored."""
    sink = PostgresSink(pg_dsn)
    run = {"status": "completed", "ended_at": START, "calls": 1, "input_tokens": 100}
    run |= {"output_tokens": 10, "cost_usd": Decimal("0.00035")}
    zeroed = "UPDATE sessions SET calls = 0, input_tokens = 0, output_tokens = 0, cost_usd = '0'"
    sink.write_sessions([SessionInfo(id="chat", part="first", started_at=START, **run)])
    query(pg_dsn, zeroed)
    sink.write_sessions([SessionInfo(id="chat", part="second", started_at=START, **run)])
    assert query(pg_dsn, ROW_TOTALS) == [(2, 200, 20, "0.00070", 0)]

    query(  # 100 more runs, as earlier processes left them, and the row zeroed again
        pg_dsn,
        "INSERT INTO session_parts SELECT 'chat', 'run' || n, 1, 100, 10, '0.00035', 0 "
        "FROM generate_series(1, 100) AS n",
    )
    query(pg_dsn, zeroed)
    again = {"calls": 2, "input_tokens": 200, "output_tokens": 20, "cost_usd": Decimal("0.0007")}
    sink.write_sessions([SessionInfo(id="chat", part="second", started_at=START, **run | again)])
    sink.close()
    assert query(pg_dsn, ROW_TOTALS) == [(103, 10300, 1030, "0.03605", 0)]


def test_a_session_row_restored_without_its_parts_keeps_its_totals(pg_dsn: str) -> None:
    """A row whose id has no parts (restored without them) is its totals plus the next run's:
    summed from the parts stored, 2 runs restored then 1 more left the row at that one run."""
    sink = PostgresSink(pg_dsn)
    run = {"status": "completed", "ended_at": START, "calls": 1, "input_tokens": 100}
    run |= {"output_tokens": 10, "cost_usd": Decimal("0.00035")}
    for part in ("first", "second"):
        sink.write_sessions([SessionInfo(id="chat", part=part, started_at=START, **run)])
    query(pg_dsn, "DELETE FROM session_parts")
    for part in ("third", "fourth"):
        sink.write_sessions([SessionInfo(id="chat", part=part, started_at=START, **run)])
    sink.close()
    assert query(pg_dsn, ROW_TOTALS) == [(4, 400, 40, "0.00140", 0)]
    assert query(pg_dsn, "SELECT part, calls FROM session_parts WHERE part = ''") == [("", 2)]


def test_a_late_call_of_an_earlier_run_of_an_id_leaves_the_row_to_the_latest(
    pg_sink: PostgresSink, pg_dsn: str
) -> None:
    """A job resumed after a crash under its id completed; a thread of the crashed run then made
    a call, which stores that run's state again: the row said "failed", with the crashed run's
    times. Runs at once (processes of one ``tokenmeter run``) still set it by the last stored."""
    minute = timedelta(minutes=1)
    crashed = SessionInfo(
        id="job", started_at=START, ended_at=START + minute, status="failed", part="r1", calls=1
    )
    resumed = SessionInfo(id="job", started_at=START + 2 * minute, part="r2", calls=0)
    done = {"status": "completed", "ended_at": START + 3 * minute, "calls": 1}
    pg_sink.write_sessions([crashed, resumed])
    pg_sink.write_sessions([resumed.model_copy(update=done)])
    pg_sink.write_sessions([crashed.model_copy(update={"calls": 2})])  # its late call
    row = "SELECT status, started_at, ended_at, calls FROM sessions"
    times = "2026-11-22T10:02:00.123Z", "2026-11-22T10:03:00.123Z"
    assert query(pg_dsn, row) == [("completed", *times, 3)]

    # Another process's run, started before the resumed one and ending after it started.
    overlapping = {"started_at": START + minute / 2, "ended_at": START + 4 * minute}
    pg_sink.write_sessions([crashed.model_copy(update={**overlapping, "part": "r3", "calls": 0})])
    times = "2026-11-22T10:00:30.123Z", "2026-11-22T10:04:00.123Z"
    assert query(pg_dsn, row) == [("failed", *times, 3)]


@pytest.mark.parametrize(
    "columns", [("started_at", "ended_at"), ("started_at",)], ids=["both", "started_at only"]
)
def test_session_times_an_admin_made_timestamptz_get_the_rows(
    pg_dsn: str, columns: tuple[str, ...]
) -> None:
    """``sessions.started_at``/``ended_at`` made ``timestamptz`` (as team.md allows for
    ``records.timestamp``): the upsert compared them ``COLLATE "C"``, which such a column
    refuses, so every session row was set aside (0 rows, the CLI's "Status: unknown"). They are
    compared as instants now, by the same rule as text: the latest run of an id sets the row."""
    made = PostgresSink(pg_dsn)
    made.write([build_record(0)])  # the tables, as the sink makes them
    made.close()
    query(pg_dsn, "DROP VIEW session_totals")
    for column in columns:
        query(
            pg_dsn,
            f"ALTER TABLE sessions ALTER COLUMN {column} TYPE timestamptz "
            f"USING {column}::timestamptz",
        )
    sink = PostgresSink(pg_dsn)
    minute = timedelta(minutes=1)
    crashed = SessionInfo(
        id="job", started_at=START, ended_at=START + minute, status="failed", part="r1", calls=1
    )
    resumed = SessionInfo(id="job", started_at=START + 2 * minute, part="r2", calls=0)
    sink.write_sessions([crashed, resumed])
    sink.write_sessions([resumed.model_copy(update={"status": "completed", "calls": 1})])
    sink.write_sessions([crashed.model_copy(update={"calls": 2})])  # a late call of the first
    sink.close()
    row = "SELECT status, started_at::timestamptz, calls FROM sessions"
    assert query(pg_dsn, row) == [("completed", START + 2 * minute, 3)]


_FORKED_WHILE_MARKING = """
import os, sys, threading, time
import tokenmeter
from tokenmeter.sinks import PostgresSink

sink = PostgresSink(sys.argv[1], schema="forked_marking")
tokenmeter.configure(directory=sys.argv[2], sinks=[sink], exit_timeout=2)
tokenmeter.record("openai", "gpt-4o", 1000, 100)
assert tokenmeter.flush(timeout=30)
held, release = threading.Event(), threading.Event()

def marking():  # the writer, for the few instructions it marks its write in
    with sink._sending:
        held.set()
        release.wait()

threading.Thread(target=marking).start()
held.wait()
child = os.fork()
release.set()
if child == 0:
    for _ in range(3):
        tokenmeter.record("openai", "gpt-4o", 1000, 100)
    os._exit(0 if tokenmeter.flush(timeout=20) else 3)
_, status = os.waitpid(child, 0)
print(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_child_forked_while_the_writer_marks_its_write_writes_its_records(
    pg_dsn: str, tmp_path: Path
) -> None:
    """The sink's lock around what its write may have sent, forked while the writer held it,
    stayed held in the child: its writer and its exit waited for it for ever (0 of 3 stored)."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", _FORKED_WHILE_MARKING, pg_dsn, str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=90,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the forked child hung on the sink's lock")
    assert done.stdout.split() == ["0"], done.stderr
    [(stored,)] = query(pg_dsn, "SELECT count(*) FROM forked_marking.records")
    assert stored == 4
