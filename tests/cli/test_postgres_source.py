"""``--source postgresql://...``: every command reads the PostgreSQL sink's tables and says exactly
what it says of the same history in SQLite (the aggregation runs in PostgreSQL)."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pg_server import PgServer

from .conftest import (
    RECORDS,
    SESSIONS,
    RunCli,
    history,
    peak_python_memory,
    rec,
    renamed_session,
    start_module,
    subprocess_env,
    write_sqlite,
)

pytest.importorskip("psycopg", reason="psycopg is not installed (tokenmeter[postgres])")

from tokenmeter._models import UsageRecord
from tokenmeter.cli.reports import _spool
from tokenmeter.sinks.postgres import PostgresSink

COMMANDS = [
    ("report", "--by", "model", "--format", "json"),
    ("report", "--by", "provider", "--by", "day", "--format", "json"),
    ("report", "--by", "session", "--format", "json"),
    ("report", "--by", "tag:feature", "--format", "json"),
    (
        "report",
        "--by",
        "model",
        "--since",
        "2026-11-02",
        "--until",
        "2026-11-02",
        "--format",
        "json",
    ),
    ("report", "--by", "model", "--detailed", "--format", "json"),
    ("report", "--detailed", "--limit", "0", "--format", "json"),  # every call, read as streamed
    ("report", "--detailed", "--limit", "0", "--format", "csv"),
    ("report", "--by", "model", "--format", "csv"),
    ("sessions", "--format", "json"),
    ("session", "sess-chat", "--format", "json"),
    ("session", "search", "--format", "json"),
    ("tail", "-n", "3", "--format", "json"),
]


def _url(dsn: str) -> str:
    params = dict(part.split("=", 1) for part in dsn.split())
    return f"postgresql://{params['user']}@{params['host']}:{params['port']}/{params['dbname']}"


@pytest.fixture
def pg_url(pg_dsn: str) -> str:
    sink = PostgresSink(pg_dsn)
    sink.write(RECORDS)
    sink.write_sessions(SESSIONS)
    sink.close()
    return _url(pg_dsn)


def _normalised(out: str, source: str) -> str:
    return out.replace(source, "SOURCE")


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c))
def test_every_command_says_the_same_of_postgresql_as_of_sqlite(
    cli: RunCli, tmp_path: Path, pg_url: str, command: tuple[str, ...]
) -> None:
    db = write_sqlite(tmp_path / "usage.db", RECORDS, SESSIONS)
    code, from_sqlite, err = cli(command[0], "--source", str(db), *command[1:])
    assert code == 0, err
    code, from_pg, err = cli(command[0], "--source", pg_url, *command[1:])
    assert code == 0, err
    shown = (
        f"postgres:{pg_url.rsplit('/', 1)[1]}@127.0.0.1:{pg_url.rsplit(':', 1)[1].split('/')[0]}"
    )
    assert _normalised(from_pg, shown) == _normalised(from_sqlite, str(db))
    assert len(from_pg) > 200  # a real answer, not two empty ones


def test_a_session_renamed_as_it_goes_is_one_row_by_session_as_in_sqlite(
    cli: RunCli, tmp_path: Path, pg_dsn: str
) -> None:
    """``--by session`` groups by the session's id alone and names it in SQL that PostgreSQL
    reads too: one row, under its latest name (it was a row per name it had)."""
    sink = PostgresSink(pg_dsn)
    sink.write(renamed_session())
    sink.close()
    db = write_sqlite(tmp_path / "usage.db", renamed_session(), [])
    command = ("report", "--by", "session", "--latency", "--format", "json")
    code, from_pg, err = cli(command[0], "--source", _url(pg_dsn), *command[1:])
    assert code == 0, err
    rows = json.loads(from_pg)["rows"]
    assert [(row["session_id"], row["session"], row["calls"]) for row in rows] == [
        ("s-9", "final", 3)
    ]
    code, from_sqlite, err = cli(command[0], "--source", str(db), *command[1:])
    assert json.loads(from_sqlite)["rows"] == rows


def test_every_call_is_read_as_streamed_in_memory_that_does_not_grow(
    cli: RunCli, tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--detailed --limit 0`` over PostgreSQL: the rows come as the server sends them, not all
    fetched at once, and the calls wait on disk (see ``test_detailed_all``)."""
    monkeypatch.setattr(_spool, "IN_MEMORY", 100)
    out = tmp_path / "calls.csv"
    args = ("report", "--source", _url(pg_dsn), "--detailed", "--limit", "0", "-o", str(out))

    def listed(count: int) -> None:
        assert out.read_text().count("\n") == count + 1

    _held_by_2_000_more_calls(cli, PostgresSink(pg_dsn), history(2_400), args, listed)


def _held_by_2_000_more_calls(
    cli: RunCli,
    sink: PostgresSink,
    records: list[UsageRecord],
    args: tuple[str, ...],
    listed: Callable[[int], None],
) -> None:
    """The command's peak Python memory over 400 of ``records`` in the database, then over all
    2,400: less than 1 MiB apart (``listed(count)`` checks what it wrote each time)."""
    peaks = []
    for written, upto in ((0, 400), (400, 2_400)):
        sink.write(records[written:upto])
        cli(*args)  # the first read imports psycopg's modules: not what is measured
        results: list[tuple[int, str, str]] = []
        peaks.append(peak_python_memory(lambda: results.append(cli(*args))))  # noqa: B023
        assert results[0][0] == 0, results[0][2]
        listed(upto)
    sink.close()
    grown = peaks[1] - peaks[0]
    assert grown < 1 << 20, f"2,000 more calls held {grown / (1 << 20):.1f} MiB more"


@pytest.mark.parametrize("fmt", ["markdown", "json"])
def test_a_long_session_is_read_as_streamed(
    cli: RunCli, tmp_path: Path, pg_dsn: str, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``session ID`` over PostgreSQL: a session's rows as the server sends them, its calls on
    disk past ``IN_MEMORY``, the document written as it is made (see ``test_sessions``)."""
    monkeypatch.setattr(_spool, "IN_MEMORY", 100)
    records = [r.model_copy(update={"session_id": "s-long"}) for r in history(2_400)]
    out = tmp_path / f"session.{fmt}"
    args = ("session", "s-long", "--source", _url(pg_dsn), "--format", fmt, "-o", str(out))

    def listed(count: int) -> None:
        text = out.read_text()
        if fmt == "json":
            assert len(json.loads(text)["calls"]) == count
        else:  # the call table's rows: | 1 | 2026-... |
            assert len(re.findall(r"^\| \d+ \| 20", text, re.MULTILINE)) == count

    _held_by_2_000_more_calls(cli, PostgresSink(pg_dsn), records, args, listed)


def test_the_newest_calls_of_a_long_list_are_read_as_streamed(
    cli: RunCli, tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``--limit`` past what is kept in memory: the newest calls, counted, skipped to and
    streamed (``LIMIT ... OFFSET``), as SQLite answers."""
    monkeypatch.setattr(_spool, "IN_MEMORY", 2)
    db = write_sqlite(tmp_path / "usage.db", RECORDS, SESSIONS)
    command = ("report", "--detailed", "--limit", "4", "--format", "json")
    code, from_sqlite, err = cli(command[0], "--source", str(db), *command[1:])
    assert code == 0 and "listed the latest 4 of 6 calls" in err
    code, from_pg, err = cli(command[0], "--source", pg_url, *command[1:])
    assert code == 0, err
    calls = json.loads(from_pg)["calls"]
    assert calls == json.loads(from_sqlite)["calls"] and len(calls) == 4


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c))
def test_a_database_of_encoding_sql_ascii_reads_as_text(
    cli: RunCli, tmp_path: Path, pg_server: PgServer, command: tuple[str, ...]
) -> None:
    """A cluster made by initdb in the C locale makes SQL_ASCII databases: psycopg then returns
    every text column as bytes (b'gpt-4o' in reports, tracebacks) unless the CLI asks for UTF-8."""
    import psycopg

    name = f"tm_ascii_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute(
            f"CREATE DATABASE {name} ENCODING 'SQL_ASCII' TEMPLATE template0 "
            "LC_COLLATE 'C' LC_CTYPE 'C'".encode()
        )
    dsn = f"{pg_server.dsn.replace('dbname=postgres', '')} dbname={name}".strip()
    sink = PostgresSink(dsn)
    sink.write(RECORDS)
    sink.write_sessions(SESSIONS)
    sink.close()
    pg_url = _url(dsn)
    db = write_sqlite(tmp_path / "usage.db", RECORDS, SESSIONS)
    _, from_sqlite, _ = cli(command[0], "--source", str(db), *command[1:])
    code, from_pg, err = cli(command[0], "--source", pg_url, *command[1:])
    assert code == 0, err
    assert "b'" not in from_pg and not err
    shown = f"postgres:{name}@127.0.0.1:{pg_url.rsplit(':', 1)[1].split('/')[0]}"
    assert _normalised(from_pg, shown) == _normalised(from_sqlite, str(db))


def test_a_report_over_postgresql_is_aggregated_in_sql(cli: RunCli, pg_url: str) -> None:
    code, out, err = cli("report", "--source", pg_url, "--by", "model", "--format", "json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["totals"]["calls"] == len(RECORDS)


def test_a_report_the_server_plans_in_parallel_works(cli: RunCli, pg_url: str, pg_dsn: str) -> None:
    """The tags check (a PL/pgSQL function with an EXCEPTION block) was declared parallel
    safe: once the server planned a parallel scan (a big table; here the planner's costs set
    to zero), every report failed ("cannot start subtransactions during a parallel
    operation")."""
    import psycopg

    params = dict(part.split("=", 1) for part in pg_dsn.split())
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for setting in (
            "parallel_setup_cost = 0",
            "parallel_tuple_cost = 0",
            "min_parallel_table_scan_size = 0",
            "max_parallel_workers_per_gather = 2",
        ):
            conn.execute(f"ALTER DATABASE {params['dbname']} SET {setting}".encode())
        conn.execute(
            "INSERT INTO tokenmeter.records (id, timestamp, model_provider, model_name, "
            "input_tokens, output_tokens, total_tokens, tags) SELECT 'copy-' || n, "
            "'2026-11-02T10:00:00.000Z', 'openai', 'gpt-4o', 1, 1, 2, '{\"feature\": \"x\"}' "
            "FROM generate_series(1, 200) AS n"
        )
        conn.execute("ANALYZE tokenmeter.records")
    code, out, err = cli("report", "--source", pg_url, "--by", "tag:feature", "--format", "json")
    assert code == 0, err
    assert json.loads(out)["totals"]["calls"] == len(RECORDS) + 200


def test_a_wrong_url_is_one_line_without_the_password(cli: RunCli, pg_dsn: str) -> None:
    params = dict(part.split("=", 1) for part in pg_dsn.split())
    url = f"postgresql://nobody:hunter2@{params['host']}:{params['port']}/no_such_db"
    code, _, err = cli("report", "--source", url)
    assert code != 0
    assert "hunter2" not in err and "Traceback" not in err
    assert err.strip().count("\n") == 0


@pytest.mark.parametrize("command", ["report", "sessions", "tail", "alerts"])
@pytest.mark.parametrize(
    "source",
    [
        " postgresql://reader:hunter2@db.internal/llm_usage",  # pasted with a space before it
        "host=db.internal user=reader password=hunter2 dbnme=llm_usage",  # a misspelt keyword
        "host=db.internal password='hunter2 dbname=llm_usage",  # a quote left open
        "'postgresql://reader:hunter2@db.internal/llm_usage'",  # pasted with its quotes
        "DSN=postgresql://reader:hunter2@db.internal/llm_usage",  # with the variable's name
        "DATABASE_URL=postgresql+psycopg2://reader:hunter2@db.internal/llm_usage",  # SQLAlchemy's
    ],
)
def test_a_connection_string_that_does_not_parse_is_never_echoed(
    cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str, source: str
) -> None:
    """A source that names no file and that libpq would not take was read as a file path, and
    "no usage data at host=db.internal user=reader password=hunter2 ..." printed its password."""
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(command, "--source", source)
    assert (code, out) == (2, "")
    assert "hunter2" not in err and "Traceback" not in err
    assert "not a PostgreSQL connection string that parses" in err


@pytest.mark.parametrize("command", ["report", "sessions", "tail"])
def test_a_password_with_an_unencoded_at_is_refused_without_showing_it(
    cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """``postgresql://tm:p@ss-Tail9@127.0.0.1:1/llm``: libpq took ``ss-Tail9@127.0.0.1`` for
    the host, and "cannot read postgres:llm@127.0.0.1:1: failed to resolve host
    'ss-Tail9@127.0.0.1'" printed the password's tail. Now a usage error that says to write
    the '@' as %40, quoting nothing of the URL."""
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(command, "--source", "postgresql://tm:p@ss-Tail9@127.0.0.1:1/llm")
    assert (code, out) == (2, "")
    assert "Tail9" not in err and "Traceback" not in err
    assert err.strip().count("\n") == 0 and "%40" in err


#: DSNs whose dbname is itself a connection string holding the password (libpq's expansion,
#: which psycopg does not do).
DBNAME_CONNINFO = [
    "dbname='postgresql://tm:S3cretPW42@127.0.0.1:1/llm_usage'",
    "host=127.0.0.1 port=1 dbname='user=tm password=S3cretPW42'",
    "postgresql://tm@127.0.0.1:1/?dbname=postgresql%3A%2F%2Ftm%3AS3cretPW42%40db%2Fllm",
]


@pytest.mark.parametrize("source", DBNAME_CONNINFO)
@pytest.mark.parametrize("command", ["report", "sessions", "config"])
def test_a_dbname_that_is_a_connection_string_is_refused_without_showing_it(
    cli: RunCli,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    command: str,
    source: str,
) -> None:
    """``--source "dbname='postgresql://tm:S3cretPW42@db/llm_usage'"`` (or TOKENMETER_PG_DSN
    so): psycopg took the whole URL for the database's name, and "cannot read
    postgres:postgresql%3A%2F%2Ftm%3AS3cretPW42%40...@localhost" (``config``: "pg_dsn
    dbname='postgresql://tm:S3cretPW42@...'") printed the password: 6 of 6 commands. Now a
    usage error quoting nothing of the DSN."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TOKENMETER_DIR", str(tmp_path / ".tokenmeter"))
    if command == "config":
        monkeypatch.setenv("TOKENMETER_PG_DSN", source)
        code, out, err = cli("config")
    else:
        code, out, err = cli(command, "--source", source)
    assert code == 2
    assert "S3cretPW42" not in out + err and "Traceback" not in err
    assert "dbname is itself a connection string" in err


@pytest.mark.parametrize("command", ["report", "sessions", "tail"])
def test_a_password_with_a_slash_is_not_quoted_as_a_port(
    cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """``postgresql://tm:HEAD7kq/ss+TAIL9zr@127.0.0.1:1/llm``: the '/' ends the authority, so
    ``tm:HEAD7kq`` reads as host and port, and "bad PostgreSQL URL: Port could not be cast to
    integer value as 'HEAD7kq'" printed the password's head."""
    monkeypatch.chdir(tmp_path)
    for source in (
        "postgresql://tm:HEAD7kq/ss+TAIL9zr@127.0.0.1:1/llm",
        "postgresql://tm:/ss+TAIL9zr@127.0.0.1:1/llm",
        "postgresql://tm:2024/ss+TAIL9zr@127.0.0.1:1/llm",  # its tail read as the database
        "postgresql://svc/HEAD7kq:ss+TAIL9zr@127.0.0.1:1/llm",  # a '/' in the user name
        "postgresql://svc/HEAD7kq@EXAMPLE.COM:ss+TAIL9zr@127.0.0.1:1/llm",  # with a realm
    ):
        code, out, err = cli(command, "--source", source)
        assert (code, out) == (2, "")
        assert "HEAD7kq" not in err and "TAIL9zr" not in err and "Traceback" not in err
        assert err.strip().count("\n") == 0 and "%2F" in err


@pytest.mark.parametrize("command", ["report", "sessions", "tail"])
def test_a_database_that_may_be_a_slashed_password_is_never_shown(
    cli: RunCli, pg_dsn: str, command: str
) -> None:
    """``postgresql://tm:2024/Pw:S3cretTAIL@db.internal`` (password ``2024/Pw:S3cretTAIL``)
    reads, as libpq reads it, as port 2024 and the database ``Pw:S3cretTAIL@db.internal``, the
    shape of a database named ``team:eu@prod`` after a port, which is taken: "cannot read
    postgres:Pw:S3cretTAIL@db.internal@tm:2024" printed the password's tail, and so did the
    server's "database ... does not exist". Such a database is shown as ``***``."""
    params = dict(part.split("=", 1) for part in pg_dsn.split())
    refused = f"postgresql://127.0.0.1:1/Pw:S3cretTAIL@db.internal?user={params['user']}"
    unknown = refused.replace(":1/", f":{params['port']}/")
    for source, where in ((refused, "127.0.0.1:1"), (unknown, f"127.0.0.1:{params['port']}")):
        code, out, err = cli(command, "--source", source)
        assert (code, out) == (1, ""), err
        assert err.startswith(f"tokenmeter: error: cannot read postgres:***@{where}: "), err
        assert "S3cretTAIL" not in err and err.strip().count("\n") == 0


def test_a_database_named_with_an_at_after_a_port_is_still_read(cli: RunCli, pg_dsn: str) -> None:
    """The database ``team:eu@prod`` after a port is taken, written and read as before; only its
    name is not shown (it cannot be told from a password's tail)."""
    import psycopg

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute('DROP DATABASE IF EXISTS "team:eu@prod"')
        conn.execute('CREATE DATABASE "team:eu@prod"')
    params = dict(part.split("=", 1) for part in pg_dsn.split())
    url = f"postgresql://127.0.0.1:{params['port']}/team:eu@prod?user={params['user']}"
    sink = PostgresSink(url)
    sink.write(RECORDS)
    sink.close()
    code, out, err = cli("report", "--source", url, "--format", "json")
    assert code == 0, err
    assert json.loads(out)["totals"]["calls"] == len(RECORDS)
    code, out, err = cli("report", "--source", url)
    assert code == 0 and "team:eu" not in out + err and "postgres:***@127.0.0.1:" in out


@pytest.mark.parametrize("command", ["report", "sessions", "tail"])
@pytest.mark.parametrize(
    "userinfo",
    [
        "tm:Pw[SECRET9zr]x",  # a generated password with brackets, which libpq takes as written
        "tm:[SECRET9zr:1]",
        "tm:Pw]ab[SECRET9zr",
        "tm[SECRET9zr]:pw",  # in the user name
        "tm:Pw\u2100SECRET9zr",  # a character NFKC turns into "a/c"
    ],
)
def test_a_password_with_brackets_is_read_and_never_shown(
    cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str, userinfo: str
) -> None:
    """``postgresql://tm:Pw[SECRET9zr]x@db/llm``: urllib checked the bracketed part of the
    password as an IPv6 host, and "bad PostgreSQL URL: 'SECRET9zr' does not appear to be an IPv4
    or IPv6 address" printed it, exit 2. Now the URL is read as libpq reads it: the error is
    the server's (nothing listens on port 1), naming the source without its password."""
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(command, "--source", f"postgresql://{userinfo}@127.0.0.1:1/llm")
    assert (code, out) == (1, "")
    assert "SECRET9zr" not in err and "Traceback" not in err
    assert "cannot read postgres:llm@127.0.0.1:1:" in err


def test_a_torn_host_is_refused_quoting_nothing_of_the_url(
    cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """urllib's error quoted the text it could not read as a host."""
    monkeypatch.chdir(tmp_path)
    for host in ("[SECRET9zr]", "[SECRET9zr", "127.0.0.1:1,[SECRET9zr]:5"):
        code, out, err = cli("report", "--source", f"postgresql://tm:pw@{host}/llm")
        assert (code, out) == (2, "")
        assert "SECRET9zr" not in err and "Traceback" not in err
        assert "bad PostgreSQL URL: its host is not a host name" in err


@pytest.mark.parametrize("query", ["?application_name=%ff", "?password=hunter2%ff"])
def test_a_url_whose_escapes_are_not_utf8_is_one_line(cli: RunCli, pg_dsn: str, query: str) -> None:
    """libpq decodes %-escapes to bytes, which psycopg then decodes as UTF-8: %ff raised a
    UnicodeDecodeError traceback out of the command."""
    code, _, err = cli("report", "--source", _url(pg_dsn) + query)
    assert code != 0
    assert "Traceback" not in err and "hunter2" not in err
    assert err.strip().count("\n") == 0 and "not UTF-8" in err


def test_a_schema_of_the_sinks_choosing_is_read_when_the_url_names_it(
    cli: RunCli, tmp_path: Path, pg_dsn: str
) -> None:
    """``PostgresSink(dsn, schema="llm_usage")`` keeps its tables in that schema; the CLI read
    only ``tokenmeter``. ``?schema=llm_usage`` (any case, as PostgreSQL folds it) names it, is
    taken out of the URL before libpq sees it (libpq refuses parameters it does not know), and
    the URL's other parameters are kept as written."""
    sink = PostgresSink(pg_dsn, schema="llm_usage")
    sink.write(RECORDS)
    sink.write_sessions(SESSIONS)
    sink.close()
    db = write_sqlite(tmp_path / "usage.db", RECORDS, SESSIONS)
    code, from_sqlite, err = cli("report", "--by", "model", "--format", "json", "--source", str(db))
    assert code == 0, err
    for query in ("?schema=llm_usage", "?application_name=tm%20cli&schema=LLM_usage"):
        url = _url(pg_dsn) + query
        for command in (("report", "--by", "model", "--format", "json"), ("tail", "-n", "2")):
            code, out, err = cli(command[0], "--source", url, *command[1:])
            assert code == 0, err
            assert len(out) > 100
        code, from_pg, err = cli("report", "--by", "model", "--format", "json", "--source", url)
        assert json.loads(from_pg)["rows"] == json.loads(from_sqlite)["rows"]
        assert json.loads(from_pg)["source"].endswith("?schema=llm_usage")
    code, _, err = cli("report", "--source", _url(pg_dsn))  # the default schema: not there
    assert code == 1 and "no tokenmeter records in schema 'tokenmeter'" in err


@pytest.mark.parametrize(
    ("query", "said"),
    [
        ("?schema=llm;drop", "schema must be a plain SQL identifier, got 'llm;drop'"),
        ('?schema=a"b', "schema must be a plain SQL identifier"),
        ("?schema=", "schema must be a plain SQL identifier, got ''"),
        ("?schema=%ff", "schema in the URL has a %-escape that is not UTF-8"),
        ("?schema=a&schema=b", "schema is given more than once"),
        ("?schema=" + "s" * 64, "schema must be at most 63 bytes"),  # the server cut it
    ],
)
def test_a_schema_that_is_not_a_plain_name_is_refused_in_one_line(
    cli: RunCli, pg_dsn: str, query: str, said: str
) -> None:
    code, out, err = cli("report", "--source", _url(pg_dsn) + query)
    assert (code, out) == (2, "")
    assert said in err and err.strip().count("\n") == 0 and "Traceback" not in err


@contextlib.contextmanager
def _tail_following(*args: str) -> Iterator[subprocess.Popen[str]]:
    """``tail -f ARGS`` in a subprocess while the block runs, then Ctrl-C: it must end
    cleanly (status 0, no traceback). A readline in the block never waits for ever."""
    proc = start_module("tail", "-f", "--interval", "0.1", *args)
    stuck = threading.Timer(120, proc.kill)
    stuck.start()
    try:
        yield proc
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        stuck.cancel()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "Traceback" not in err


@pytest.mark.parametrize("cut", ["terminated", "restarted"])
def test_tail_follow_goes_on_when_its_connection_is_ended(
    pg_url: str, pg_dsn: str, pg_server: PgServer, cut: str
) -> None:
    """tail -f polls for hours: a server restart, a failover or pg_terminate_backend ended its
    connection, and with it the command ('terminating connection due to administrator
    command', exit 1). The follower now connects again, once the server is back, and goes on."""
    import psycopg

    sink = PostgresSink(pg_dsn)
    with _tail_following("-n", "1", "--source", pg_url) as proc, contextlib.closing(sink):
        assert proc.stdout is not None
        assert proc.stdout.readline()  # following
        if cut == "restarted":
            pg_server.restart()
        else:
            with psycopg.connect(pg_dsn, autocommit=True) as admin:
                ended = admin.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                ).fetchone()
            assert ended == (1,)
        sink.write([rec(60, "2026-11-09T00:00:00.000Z", "openai", "after-cut", 5, 5, "0.02")])
        line = proc.stdout.readline()  # '' when the command ended
        assert "openai/after-cut" in line, proc.stderr.read() if proc.poll() is not None else ""


def test_tail_follow_waits_for_the_sink_to_make_its_tables(pg_dsn: str) -> None:
    """tail -f started before the application (a terminal each), as on a SQLite or JSONL
    source: it exited 1 at once ('no tokenmeter records in schema'); it waits, says so once,
    and shows the first record."""
    sink = PostgresSink(pg_dsn)
    with _tail_following("--source", _url(pg_dsn)) as proc, contextlib.closing(sink):
        assert proc.stderr is not None and proc.stdout is not None
        assert "waiting for the first record" in proc.stderr.readline()
        sink.write([rec(61, "2026-11-09T00:00:00.000Z", "openai", "first", 5, 5, "0.02")])
        assert "openai/first" in proc.stdout.readline()


def test_a_database_without_tokenmeter_tables_is_refused_clearly(cli: RunCli, pg_dsn: str) -> None:
    code, _, err = cli("report", "--source", _url(pg_dsn))
    assert code != 0
    assert "no tokenmeter records" in err


@pytest.mark.parametrize("reader", ["owner", "role without TEMPORARY"])
def test_a_table_whose_column_types_an_admin_changed_reads_as_the_sinks_text(
    cli: RunCli, tmp_path: Path, pg_url: str, pg_dsn: str, reader: str
) -> None:
    """team.md: the sink writes the same values to ``tags`` made ``jsonb`` and ``timestamp``
    made ``timestamptz``, and every CLI command reads them. The readers got a dict and a
    datetime: ``sessions`` failed (TypeError), ``report --detailed`` and ``tail`` skipped every
    row as corrupt, ``--by day`` failed (``substr(timestamp with time zone, ...)``). They read
    through a temporary view, which a role without the TEMPORARY privilege (or a read-only
    standby, the team's replica) cannot make: there it was all of the above again."""
    import psycopg

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "ALTER TABLE tokenmeter.records ALTER tags DROP DEFAULT, "
            "ALTER timestamp TYPE timestamptz USING timestamp::timestamptz, "
            "ALTER tags TYPE jsonb USING tags::jsonb"
        )
    db = write_sqlite(tmp_path / "usage.db", RECORDS, SESSIONS)
    with _reading_role(pg_dsn, pg_url, temporary=reader == "owner") as url:
        for command in (
            ("sessions", "--format", "json"),
            ("session", "sess-chat", "--format", "json"),
            ("report", "--detailed", "--by", "day", "--format", "json"),
            ("report", "--by", "tag:feature", "--format", "json"),
            ("tail", "-n", "3", "--format", "json"),
        ):
            code, from_sqlite, err = cli(command[0], "--source", str(db), *command[1:])
            assert code == 0, err
            code, from_pg, err = cli(command[0], "--source", url, *command[1:])
            assert code == 0 and "skipped" not in err, err
            assert _without_source(from_pg) == _without_source(from_sqlite)


@contextlib.contextmanager
def _reading_role(pg_dsn: str, pg_url: str, *, temporary: bool) -> Iterator[str]:
    """``pg_url``, as is when ``temporary``, else for a new role that may only read the sink's
    tables and make no temporary object (TEMPORARY revoked from PUBLIC, as a hardened server
    does; a hot standby makes none either)."""
    import psycopg

    if temporary:
        yield pg_url
        return
    role, database = f"tm_reader_{uuid.uuid4().hex[:8]}", pg_url.rsplit("/", 1)[1]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"REVOKE TEMPORARY ON DATABASE {database} FROM PUBLIC")
        conn.execute(f"GRANT USAGE ON SCHEMA tokenmeter TO {role}")
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA tokenmeter TO {role}")
    try:
        yield re.sub(r"//[^@]*@", f"//{role}@", pg_url, count=1)
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


def _without_source(out: str) -> object:
    """A JSON answer without the ``source`` it names (or each line's, for ``tail``)."""
    found = [json.loads(line) for line in out.splitlines()] if out.startswith('{"') else []
    docs = found if len(found) > 1 else [json.loads(out)]
    for doc in docs:
        if isinstance(doc, dict):
            doc.pop("source", None)
    return docs


def test_a_row_whose_tags_are_not_json_is_skipped_and_counted_as_in_sqlite(
    cli: RunCli, tmp_path: Path, pg_url: str, pg_dsn: str
) -> None:
    """Another program's row with tags that are not JSON (or hold a ``\\u0000``, which jsonb
    refuses): ``tags::jsonb`` failed every tag report over PostgreSQL ("invalid input syntax
    for type json", exit 1); SQLite skips that row and counts it."""
    import sqlite3

    import psycopg

    db = write_sqlite(tmp_path / "usage.db", RECORDS, SESSIONS)
    insert = (
        "INSERT INTO {}records (id, timestamp, model_provider, model_name, input_tokens, "
        "output_tokens, total_tokens, tags) VALUES ({})"
    )
    bad = ("bad-1", "2026-11-02T10:00:00.000Z", "openai", "gpt-4o", 1, 1, 2, "{bad")
    with sqlite3.connect(db) as conn:
        conn.execute(insert.format("", ", ".join("?" * 8)), bad)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(insert.format("tokenmeter.", ", ".join(["%s"] * 8)), bad)
        nul = ("bad-2", *bad[1:7], '{"feature": "chat\\u0000"}')
        conn.execute(insert.format("tokenmeter.", ", ".join(["%s"] * 8)), nul)
    args = ("report", "--by", "tag:feature", "--format", "json", "--source")
    code, from_sqlite, err = cli(*args, str(db))
    assert code == 0 and "skipped 1 corrupt row" in err, err
    code, from_pg, err = cli(*args, pg_url)
    assert code == 0 and "skipped 2 corrupt rows" in err, err
    assert json.loads(from_pg)["rows"] == json.loads(from_sqlite)["rows"]
    # Filtered by a tag, they are not among the rows asked for.
    args = ("report", "--tag", "feature=chat", "--format", "json", "--source")
    code, from_sqlite, err = cli(*args, str(db))
    assert code == 0, err
    code, from_pg, err = cli(*args, pg_url)
    assert code == 0, err
    assert json.loads(from_pg)["rows"] == json.loads(from_sqlite)["rows"]


def test_rows_with_negative_counts_or_bad_timestamps_are_skipped_and_counted_as_in_sqlite(
    cli: RunCli, tmp_path: Path, pg_url: str, pg_dsn: str
) -> None:
    """Another program's rows with a negative count, or a timestamp that is not the record
    format, are skipped and counted by SQLite's reports. PostgreSQL's summed them (typed columns
    keep out text, not these): input -995,000 tokens, a ``(none)`` day, no warning."""
    import sqlite3

    import psycopg

    db = write_sqlite(tmp_path / "usage.db", RECORDS, SESSIONS)
    insert = (
        "INSERT INTO {}records (id, timestamp, model_provider, model_name, input_tokens, "
        "output_tokens, total_tokens) VALUES ({})"
    )
    bad = [
        ("bad-1", "2026-11-02T10:00:00.000Z", "openai", "gpt-4o", -1_000_000, 100, -999_900),
        ("bad-2", "yesterday", "openai", "gpt-4o", 1000, 100, 1100),
        ("bad-3", "2026-13-45T99:99:99.999Z", "openai", "gpt-4o", 1000, 100, 1100),
    ]
    with sqlite3.connect(db) as conn:
        conn.executemany(insert.format("", ", ".join("?" * 7)), bad)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.cursor().executemany(insert.format("tokenmeter.", ", ".join(["%s"] * 7)), bad)
    for command in (
        ("report", "--by", "model", "--format", "json"),
        ("report", "--by", "day", "--format", "json"),
        ("sessions", "--format", "json"),
    ):
        code, from_sqlite, err = cli(command[0], "--source", str(db), *command[1:])
        assert code == 0 and "skipped 3 corrupt rows" in err, err
        code, from_pg, err = cli(command[0], "--source", pg_url, *command[1:])
        assert code == 0 and "skipped 3 corrupt rows" in err, err
        assert _without_source(from_pg) == _without_source(from_sqlite)


@pytest.mark.parametrize("keys_kept", [100, 3])
def test_tag_charts_are_totalled_in_postgresql_as_in_sqlite(
    cli: RunCli, tmp_path: Path, pg_dsn: str, keys_kept: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tokenmeter.cli.reports import _query

    from .test_html import TAGGED, _tag_bars

    monkeypatch.setattr(_query, "_TAG_KEYS_KEPT", keys_kept)

    sink = PostgresSink(pg_dsn)
    sink.write(TAGGED)
    sink.close()
    db = write_sqlite(tmp_path / "usage.db", TAGGED, SESSIONS)
    pages = []
    for source in (str(db), _url(pg_dsn)):
        code, page, err = cli("report", "--source", source, "--format", "html")
        assert code == 0, err
        pages.append(page)
    from_sqlite, from_pg = (_tag_bars(page) for page in pages)
    assert from_pg == from_sqlite and len(from_pg) == min(8, keys_kept)
    more = "3 more tag keys without a chart: k6, k7, k8" if keys_kept == 100 else "8 more tag keys"
    assert more in pages[0] and more in pages[1]


#: RECORDS with latencies: 24 copies of a gpt-4o call take 10, 20, ... 240 ms but one reports
#: none; the other records take 55.5 ms (one of them gpt-4o). gpt-4o's 24 latencies rank 120 ms
#: 12th (p50) and 230 ms 23rd (p95, nearest rank: ceil(0.95 * 24) = 23).
TIMED = [
    *(
        RECORDS[0].model_copy(
            update={"id": f"timed-{i}", "latency_ms": 10.0 * (i + 1) if i != 7 else None}
        )
        for i in range(24)
    ),
    *(r.model_copy(update={"latency_ms": 55.5}) for r in RECORDS[1:]),
]


@pytest.mark.parametrize(
    "by", ["model", "provider,status", "family", "day", "session", "tag:feature"]
)
def test_latency_percentiles_in_postgresql_equal_sqlite_and_jsonl(
    cli: RunCli, tmp_path: Path, pg_dsn: str, by: str
) -> None:
    from .conftest import write_jsonl

    sink = PostgresSink(pg_dsn)
    sink.write(TIMED)
    sink.close()
    sources = [
        _url(pg_dsn),
        str(write_sqlite(tmp_path / "usage.db", TIMED, SESSIONS)),
        str(write_jsonl(tmp_path / "usage.jsonl", TIMED)),
    ]
    found = []
    for source in sources:
        code, out, err = cli(
            "report", "--source", source, "--by", by, "--latency", "--tz", "Asia/Kolkata",
            "--format", "json",
        )  # fmt: skip
        assert code == 0, err
        found.append(json.loads(out)["rows"])
    assert found[0] == found[1] == found[2]
    assert any("latency_p50_ms" in row for row in found[0])
    if by == "model":
        row = next(r for r in json.loads(out)["rows"] if r["model"] == "gpt-4o")
        assert (row["latency_p50_ms"], row["latency_p95_ms"]) == (120.0, 230.0)


def test_postgresql_ranks_latencies_itself(
    cli: RunCli, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """By a stored column the server computes the percentiles: none are streamed to Python."""
    from tokenmeter.cli.reports import _query

    def streamed(*args: object) -> None:
        raise AssertionError("latencies were streamed to Python")

    sink = PostgresSink(pg_dsn)
    sink.write(TIMED)
    sink.close()
    monkeypatch.setattr(_query, "_latencies", streamed)
    code, out, err = cli(
        "report", "--source", _url(pg_dsn), "--by", "model", "--latency", "--format", "json"
    )
    assert code == 0, err
    rows = {row["model"]: row for row in json.loads(out)["rows"]}
    assert (rows["gpt-4o"]["latency_p50_ms"], rows["gpt-4o"]["latency_p95_ms"]) == (120.0, 230.0)


#: Runs the CLI with the given arguments, then writes its process' peak RSS (KiB) to stderr:
#: VmHWM, its own (``ru_maxrss`` keeps the larger peak of the pytest process it was forked from).
_PEAK_RSS = (
    "import re, sys\n"
    "from pathlib import Path\n"
    "from tokenmeter.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "status = Path('/proc/self/status').read_text()\n"
    "print('peak', re.search(r'VmHWM:\\s*(\\d+)', status)[1], file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def _peak_kib(*args: str) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, *args],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return int(done.stderr.rsplit("peak ", 1)[1]), done.stdout


def test_tail_reads_the_rows_it_prints_not_the_table(pg_url: str, pg_dsn: str) -> None:
    """``tail -n 3`` (and ``-n 20000``) over a ledger of 150,000 rows: read a page of rows at a
    time, newest first, each page a query of its own. One query ordered newest first, as
    before, was held whole by psycopg's client cursor: every row of the table came over the
    connection (~100 MiB more for ``-n 3`` here)."""
    import psycopg

    before, last_3 = _peak_kib("tail", "-n", "3", "--format", "json", "--source", pg_url)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("SET search_path = tokenmeter")
        columns = [
            name
            for (name,) in conn.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = 'tokenmeter' AND table_name = 'records' "
                "AND column_name NOT IN ('id', 'seq') ORDER BY ordinal_position"
            )
        ]
        listed = ", ".join(columns)
        conn.execute(  # 150,000 copies of the oldest record, older than every other row
            f"INSERT INTO records (id, {listed}) "
            f"SELECT 'copy-' || n, {listed} FROM records, generate_series(1, 150000) AS n "
            "WHERE seq = (SELECT min(seq) FROM records) ORDER BY n"
        )
        conn.execute("UPDATE records SET seq = seq + 1000000 WHERE id NOT LIKE 'copy-%'")
    after, still_last_3 = _peak_kib("tail", "-n", "3", "--format", "json", "--source", pg_url)
    assert still_last_3 == last_3 and len(last_3.splitlines()) == 3
    grown = (after - before) / 1024
    assert grown < 30, f"tail -n 3 took {grown:.0f} MiB more over 150,000 more rows"
    many, printed = _peak_kib("tail", "-n", "20000", "--format", "json", "--source", pg_url)
    lines = printed.splitlines()
    assert len(lines) == 20_000 and "\n".join(lines[-3:]) + "\n" == last_3
    assert (many - before) / 1024 < 30, f"tail -n 20000 took {(many - before) / 1024:.0f} MiB"


@pytest.mark.parametrize("where", ["url", "PGCONNECT_TIMEOUT"])
def test_a_connect_timeout_the_url_or_the_environment_sets_is_the_one_waited(
    where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI's own 10 s overrode the URL's ``connect_timeout`` (and ``PGCONNECT_TIMEOUT``),
    as the sink's did: a report against a server that does not answer waited 10 s."""
    import socket

    import psycopg
    from helpers import returns

    from tokenmeter.cli._postgres import _connect

    with socket.create_server(("127.0.0.1", 0), backlog=8) as silent:  # takes, never answers
        url = f"postgresql://nobody@127.0.0.1:{silent.getsockname()[1]}/db"
        if where == "url":
            url += "?connect_timeout=2"
        else:
            monkeypatch.setenv("PGCONNECT_TIMEOUT", "2")
        failed = returns(lambda: _connect(psycopg, url), "the CLI's 10 s were waited", limit=8)
    assert [type(exc) for exc in failed] == [psycopg.errors.ConnectionTimeout]


def test_with_no_source_the_database_the_sinks_setting_writes_to_is_read(
    cli: RunCli, tmp_path: Path, pg_url: str, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A project that moved from the default sqlite sink to ``sinks = ["postgres"]`` keeps its
    old usage.db: a report with no --source read it (1 call), silently leaving out every call
    the database got since. A keyword DSN, as the sink takes it, is read as its URL; a DSN the
    CLI cannot read is said, not read around."""
    monkeypatch.chdir(tmp_path)
    write_sqlite(tmp_path / ".tokenmeter" / "usage.db", RECORDS[:1], [])
    monkeypatch.setenv("TOKENMETER_SINKS", "postgres")
    monkeypatch.setenv("TOKENMETER_PG_DSN", pg_url)
    code, out, err = cli("report", "--by", "model", "--format", "json")
    assert code == 0, err
    assert json.loads(out)["totals"]["calls"] == len(RECORDS) > 1
    monkeypatch.setenv("TOKENMETER_PG_DSN", pg_dsn)  # host=... dbname=...: no URL
    code, out, err = cli("report", "--by", "model", "--format", "json")
    assert code == 0, err  # was exit 2: "pass --source postgresql://..."
    assert json.loads(out)["totals"]["calls"] == len(RECORDS)
    code, out, err = cli("report", "--source", pg_dsn, "--format", "json")  # as the sink takes it
    assert code == 0, err  # was "no usage data at host=..."
    assert json.loads(out)["totals"]["calls"] == len(RECORDS)
    monkeypatch.setenv("TOKENMETER_PG_DSN", "nosuchkey=1")
    code, out, err = cli("report")
    assert code == 2 and out == ""
    assert "--source postgresql://" in err and len(err.strip().splitlines()) == 1
    assert "the pg_dsn setting" in err and "TOKENMETER_PG_DSN" not in err  # maybe pyproject
    monkeypatch.setenv("TOKENMETER_SINKS", "postgres,sqlite")  # a file sink too: the file
    code, out, err = cli("report", "--format", "json")
    assert code == 0 and json.loads(out)["totals"]["calls"] == 1


def test_with_no_source_an_empty_pg_dsn_reads_the_database_libpq_environment_names(
    cli: RunCli, tmp_path: Path, pg_url: str, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/team.md: leave ``TOKENMETER_PG_DSN`` unset and the sink connects where libpq's
    ``PGHOST``, ``PGPORT``, ``PGUSER``, ``PGDATABASE`` say. A report with no --source refused
    that setup, exit 2: "the pg_dsn setting is neither such a URL nor a key=value DSN"."""
    monkeypatch.chdir(tmp_path)
    params = dict(part.split("=", 1) for part in pg_dsn.split())
    for key, variable in [("host", "PGHOST"), ("port", "PGPORT"), ("user", "PGUSER")]:
        monkeypatch.setenv(variable, params[key])
    monkeypatch.setenv("PGDATABASE", params["dbname"])
    monkeypatch.setenv("TOKENMETER_SINKS", "postgres")
    monkeypatch.delenv("TOKENMETER_PG_DSN", raising=False)
    code, out, err = cli("report", "--by", "model", "--format", "json")
    assert code == 0, err
    assert json.loads(out)["totals"]["calls"] == len(RECORDS)
    # Named as the server read, as a --source of the same DSN names it: it said
    # "postgres:(default database)@localhost".
    named = f"postgres:{params['dbname']}@{params['host']}:{params['port']}"
    assert json.loads(out)["source"] == named


def test_an_empty_pg_dsn_names_the_server_libpq_environment_names_never_its_password(
    cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that cannot be reached was said to be "(default database)@localhost" while
    libpq's error named the host of PGHOST."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PGHOST", "127.0.0.1")
    monkeypatch.setenv("PGPORT", "1")  # nothing listens there
    monkeypatch.setenv("PGDATABASE", "usage_app")
    monkeypatch.setenv("PGPASSWORD", "hunter2")
    monkeypatch.setenv("TOKENMETER_SINKS", "postgres")
    monkeypatch.delenv("TOKENMETER_PG_DSN", raising=False)
    code, _, err = cli("report")
    assert code == 1
    assert "cannot read postgres:usage_app@127.0.0.1:1:" in err
    assert "hunter2" not in err


def test_a_url_listing_several_hosts_is_read_and_named_by_its_first(
    cli: RunCli, tmp_path: Path, pg_url: str, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libpq's failover form (``postgresql://db1:5432,db2:5432/app?target_session_attrs=...``),
    which the sink writes through: every command refused it, exit 2, "bad PostgreSQL URL: Port
    could not be cast to integer value as '1,127.0.0.1:PORT'". Here the first host is down, as
    after a failover."""
    database = dict(part.split("=", 1) for part in pg_dsn.split())["dbname"]
    url = pg_url.replace("@", "@127.0.0.1:1,", 1) + "?target_session_attrs=read-write"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TOKENMETER_SINKS", "postgres")
    monkeypatch.setenv("TOKENMETER_PG_DSN", url)
    for source in (("--source", url), ()):  # given, and the default the settings name
        code, out, err = cli("report", "--by", "model", "--format", "json", *source)
        assert code == 0, err
        assert json.loads(out)["totals"]["calls"] == len(RECORDS)
        assert json.loads(out)["source"] == f"postgres:{database}@127.0.0.1:1 (+1 more host)"
    code, out, err = cli("report", "--source", url.replace(":1,", ":x,", 1))
    assert (code, out) == (2, "")
    # The text taken for the port is never quoted: it may be a password's head.
    assert "bad PostgreSQL URL: its port is not a number" in err
