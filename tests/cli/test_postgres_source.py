"""``--source postgresql://...``: every command reads the PostgreSQL sink's tables and says exactly
what it says of the same history in SQLite (the aggregation runs in PostgreSQL)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import RECORDS, SESSIONS, RunCli, write_sqlite

pytest.importorskip("psycopg", reason="psycopg is not installed (tokenmeter[postgres])")

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


def test_a_report_over_postgresql_is_aggregated_in_sql(cli: RunCli, pg_url: str) -> None:
    code, out, err = cli("report", "--source", pg_url, "--by", "model", "--format", "json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["totals"]["calls"] == len(RECORDS)


def test_a_wrong_url_is_one_line_without_the_password(cli: RunCli, pg_dsn: str) -> None:
    params = dict(part.split("=", 1) for part in pg_dsn.split())
    url = f"postgresql://nobody:hunter2@{params['host']}:{params['port']}/no_such_db"
    code, _, err = cli("report", "--source", url)
    assert code != 0
    assert "hunter2" not in err and "Traceback" not in err
    assert err.strip().count("\n") == 0


def test_a_database_without_tokenmeter_tables_is_refused_clearly(cli: RunCli, pg_dsn: str) -> None:
    code, _, err = cli("report", "--source", _url(pg_dsn))
    assert code != 0
    assert "no tokenmeter records" in err
