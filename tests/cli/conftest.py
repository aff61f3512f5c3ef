"""A small usage history with totals worked out by hand, stored through the real sinks."""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import subprocess
import sys
import tracemalloc
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import pytest

from tokenmeter._models import SessionInfo, UsageRecord
from tokenmeter.cli import main
from tokenmeter.sinks import JSONLSink, SQLiteSink

REPO = Path(__file__).resolve().parents[2]


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def rec(
    n: int,
    when: str,
    provider: str,
    model: str,
    inp: int,
    out: int,
    cost: str | None,
    *,
    session: tuple[str, str] | None = None,
    tags: dict[str, str] | None = None,
    cache_read: int = 0,
    cache_write: int = 0,
    reasoning: int = 0,
    status: str = "ok",
    error: str | None = None,
) -> UsageRecord:
    return UsageRecord(
        id=f"rec-{n:03d}",
        timestamp=ts(when),
        model_provider=provider,
        model_name=model,
        input_tokens=inp,
        output_tokens=out,
        total_tokens=inp + out,
        estimated_cost_usd=None if cost is None else Decimal(cost),
        cost_breakdown=None if cost is None else {"input": Decimal(cost), "output": Decimal(0)},
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        reasoning_tokens=reasoning,
        session_id=None if session is None else session[0],
        session_name=None if session is None else session[1],
        tags=tags or {},
        status=status,  # type: ignore[arg-type]
        error=error,
    )


CHAT = ("sess-chat", "chat")
SEARCH = ("sess-search", "search")

#: Three days of calls; edges on purpose: the first and last millisecond of 2026-11-01.
RECORDS = [
    rec(
        1,
        "2026-11-01T00:00:00.000Z",
        "openai",
        "gpt-4o",
        1000,
        500,
        "0.0075",
        session=CHAT,
        tags={"feature": "chat"},
    ),
    rec(
        2,
        "2026-11-01T23:59:59.999Z",
        "anthropic",
        "claude-sonnet-4-5",
        2000,
        100,
        "0.012345678901",
        session=CHAT,
        tags={"feature": "chat"},
        cache_read=500,
        cache_write=300,
    ),
    rec(
        3,
        "2026-11-02T00:00:00.000Z",
        "google",
        "gemini-2.5-flash",
        300,
        700,
        "0.00185",
        session=SEARCH,
        tags={"feature": "search", "team": "core"},
        reasoning=200,
    ),
    rec(4, "2026-11-02T12:00:00.000Z", "openai", "gpt-4o", 10, 10, "0.000125", session=SEARCH),
    rec(
        5,
        "2026-11-02T12:30:00.000Z",
        "custom",
        "unknown-model",
        50,
        5,
        None,
        status="error",
        error="APIError",
    ),
    rec(
        6,
        "2026-11-03T08:00:00.000Z",
        "openai",
        "gpt-4o-mini",
        123456,
        654,
        "1.234567890123",
        session=CHAT,
        tags={"feature": "chat"},
    ),
]
TOTAL_COST = Decimal("1.256388569024")

SESSIONS = [
    SessionInfo(
        id="sess-chat",
        name="chat",
        tags={"feature": "chat"},
        status="completed",
        started_at=ts("2026-11-01T00:00:00.000Z"),
        ended_at=ts("2026-11-03T08:00:01.000Z"),
        notes="first week",
    ),
    SessionInfo(
        id="sess-search",
        name="search",
        status="completed",
        started_at=ts("2026-11-02T00:00:00.000Z"),
        ended_at=ts("2026-11-02T12:00:01.000Z"),
    ),
]


def renamed_session() -> list[UsageRecord]:
    """A session renamed as it goes (``job.name = "final"`` after its first call): its records
    carry ``draft``, then ``final`` (docs/sessions.md), not in time order; 3 calls, $0.09."""
    records = [
        rec(
            2,
            "2026-11-01T10:02:00.000Z",
            "openai",
            "gpt-4o",
            400,
            10,
            "0.04",
            session=("s-9", "final"),
        ),
        rec(
            1,
            "2026-11-01T10:00:00.000Z",
            "openai",
            "gpt-4o",
            100,
            10,
            "0.01",
            session=("s-9", "draft"),
        ),
        rec(
            3,
            "2026-11-01T10:03:00.000Z",
            "openai",
            "gpt-4o",
            400,
            10,
            "0.04",
            session=("s-9", "final"),
        ),
    ]
    return [r.model_copy(update={"latency_ms": 100.0 * r.input_tokens}) for r in records]


HISTORY_START = datetime(2026, 11, 1, tzinfo=UTC)


def history(count: int) -> list[UsageRecord]:
    """``count`` calls a second apart, each with its own counts, cost and tags."""
    return [
        rec(
            n,
            (HISTORY_START + timedelta(seconds=n)).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "openai",
            f"gpt-4o-{n % 7}",
            100 + n,
            n % 50,
            f"0.{n:06d}",
            tags={"feature": f"f{n % 3}", "customer": f"c{n}"},
        )
        for n in range(count)
    ]


def write_sqlite(path: Path, records: list[UsageRecord], sessions: list[SessionInfo]) -> Path:
    sink = SQLiteSink(path)
    sink.write(records)
    sink.write_sessions(sessions)
    sink.close()
    return path


def write_jsonl(path: Path, records: list[UsageRecord]) -> Path:
    sink = JSONLSink(path)
    sink.write(records)
    sink.close()
    return path


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Path:
    return write_sqlite(tmp_path / "usage.db", RECORDS, SESSIONS)


@pytest.fixture
def jsonl_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "usage.jsonl", RECORDS)


@pytest.fixture(params=["sqlite", "jsonl"])
def source(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """The same history in each storage format: every report must agree on both."""
    if request.param == "sqlite":
        return write_sqlite(tmp_path / "usage.db", RECORDS, SESSIONS)
    return write_jsonl(tmp_path / "usage.jsonl", RECORDS)


RunCli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> RunCli:
    """Run ``tokenmeter ARGS`` in-process; returns (exit status, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse usage errors
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return run


_TERMINAL_ENV = (
    "NO_COLOR",
    "FORCE_COLOR",
    "CLICOLOR",
    "CLICOLOR_FORCE",
    "TTY_COMPATIBLE",
    "TTY_INTERACTIVE",
    "COLORTERM",
    "COLUMNS",
    "LINES",
)


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TOKENMETER_") and k not in _TERMINAL_ENV
    }
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def start_module(*args: str, stdout: IO[str] | int = subprocess.PIPE) -> subprocess.Popen[str]:
    """``python -m tokenmeter ARGS`` started in a real subprocess (``tail -f``), its stdout and
    stderr pipes of text; ``stdout`` a file instead, to poll what it printed without blocking
    on a line that may never come."""
    return subprocess.Popen(
        [sys.executable, "-m", "tokenmeter", *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )


def run_module(*args: str, cwd: Path, **extra_env: str) -> subprocess.CompletedProcess[str]:
    """``python -m tokenmeter ARGS`` in a real subprocess (stdout and stderr are pipes)."""
    return subprocess.run(
        [sys.executable, "-m", "tokenmeter", *args],
        cwd=cwd,
        env=subprocess_env(**extra_env),
        capture_output=True,
        text=True,
        timeout=120,
    )


_LINE_IDS = itertools.count()


def record_line(base: UsageRecord, **raw: str) -> str:
    """``base`` as one JSONL line of an id of its own (a record's id twice is one record written
    twice, counted once), with the named fields replaced by raw JSON text.

    Raw text, not Python values, so a test can write what ``json.dumps`` never would: ``NaN``,
    ``1e400``, a lone surrogate escape, a nesting thousands deep.
    """
    fields = {**base.to_json_dict(), "id": f"{base.id}-line-{next(_LINE_IDS)}"}
    text = {k: raw.pop(k) if k in raw else json.dumps(v) for k, v in fields.items()}
    text.update(raw)
    parts = [f"{json.dumps(k)}:{v}" for k, v in text.items()]
    return "{" + ",".join(parts) + "}"


def append_lines(path: Path, lines: Iterable[str]) -> Path:
    with path.open("a", encoding="utf-8", errors="surrogatepass") as handle:
        handle.writelines(line + "\n" for line in lines)
    return path


def insert_sqlite_row(path: Path, copy_of: str, new_id: str, **columns: Any) -> None:
    """Store a copy of row ``copy_of`` with some columns replaced, bypassing the sink.

    SQLite keeps whatever type it is given (text in an INTEGER column, a blob in a TEXT one), as
    another program writing to the database might.
    """
    conn = sqlite3.connect(path)
    try:
        conn.row_factory = sqlite3.Row
        row = dict(conn.execute("SELECT * FROM records WHERE id = ?", [copy_of]).fetchone())
        row.update(id=new_id, **columns)
        names = ", ".join(row)
        marks = ", ".join("?" * len(row))
        conn.execute(f"INSERT INTO records ({names}) VALUES ({marks})", list(row.values()))
        conn.commit()
    finally:
        conn.close()


MIB = 1 << 20


def peak_python_memory(run: Callable[[], Any]) -> int:
    """Bytes of the largest Python heap ``run()`` held at once, above what was held before."""
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - before
