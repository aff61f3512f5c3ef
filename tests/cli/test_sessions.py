"""``tokenmeter sessions`` and ``tokenmeter session ID``."""

from __future__ import annotations

import json
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from .conftest import RunCli


def test_sessions_lists_most_recent_first_with_totals(cli: RunCli, source: Path) -> None:
    code, out, err = cli("sessions", "--source", str(source), "--format", "json")
    assert code == 0, err
    rows = json.loads(out, parse_float=Decimal)
    assert [row["session_id"] for row in rows] == ["sess-chat", "(none)", "sess-search"]
    chat = rows[0]
    assert chat["name"] == "chat" and chat["calls"] == 3
    assert chat["cost_usd"] == Decimal("1.254413569024")
    assert chat["first_call"] == "2026-11-01T00:00:00.000Z"
    assert chat["last_call"] == "2026-11-03T08:00:00.000Z"
    assert rows[1]["cost_usd"] is None and rows[1]["unpriced_calls"] == 1


def test_sessions_table_and_window(cli: RunCli, sqlite_db: Path) -> None:
    code, out, _ = cli("sessions", "--source", str(sqlite_db), "--until", "2026-11-01")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["Session", "Name", "Status"]
    assert len(lines) == 3 and "sess-chat" in lines[2] and "completed" in lines[2]
    assert "$0.0198" in lines[2]  # only the two calls of 2026-11-01


def test_session_as_journal(cli: RunCli, source: Path) -> None:
    code, out, err = cli("session", "sess-chat", "--source", str(source))
    assert code == 0, err
    assert out.startswith("# Session: chat\n")
    assert "| Call | Timestamp | Input Tokens | Output Tokens | Total Tokens | Cost |" in out
    assert "| 1 | 2026-11-01 00:00:00.000Z | 1,000 | 500 | 1,500 | $0.0075 |" in out
    assert "| 3 | 2026-11-03 08:00:00.000Z | 123,456 | 654 | 124,110 | $1.23 |" in out
    assert "## Session Summary" in out
    assert "- **Total Cost:** $1.25" in out
    assert "openai/gpt-4o, anthropic/claude-sonnet-4-5, openai/gpt-4o-mini" in out


def test_session_is_rendered_by_the_journal(cli: RunCli, tmp_path: Path) -> None:
    """One renderer: the command prints what the markdown journal wrote for the session."""
    from tokenmeter.sinks import MarkdownJournalSink

    from .conftest import RECORDS, SESSIONS, write_sqlite

    chat = [r for r in RECORDS if r.session_id == "sess-chat"]
    journal = MarkdownJournalSink(tmp_path / "journal")
    journal.write(chat)
    journal.write_sessions(SESSIONS)
    journal.close()
    written = (tmp_path / "journal" / "sessions" / "sess-chat.md").read_text()

    def text(document: str) -> list[str]:  # without the journal's bookkeeping and padding
        lines = [line.rstrip() for line in document.splitlines()]
        return [line for line in lines if line and not line.startswith("<!--")]

    db = write_sqlite(tmp_path / "usage.db", RECORDS, SESSIONS)
    code, out, _ = cli("session", "sess-chat", "--source", str(db))
    assert code == 0 and text(out) == text(written)


def test_session_status_and_notes_from_sqlite(cli: RunCli, sqlite_db: Path) -> None:
    code, out, _ = cli("session", "sess-chat", "--source", str(sqlite_db))
    assert code == 0
    assert "- **Status:** completed" in out
    assert "- **Completed:** 2026-11-03 08:00:01.000Z" in out
    assert "> first week" in out
    assert "### Averages per Call" in out and "### Efficiency Metrics" in out
    assert "- **Input/Output Ratio:** 100.84" in out  # 126,456 / 1,254


def test_a_jsonl_sessions_status_is_unknown_not_active(cli: RunCli, jsonl_file: Path) -> None:
    """JSONL keeps no session status (``sessions`` leaves the column empty, JSON says null):
    the markdown said a session that had ended was "active"."""
    code, out, _ = cli("session", "sess-chat", "--source", str(jsonl_file))
    assert code == 0
    assert "- **Status:** unknown" in out and "active" not in out
    assert "## Session Completion" not in out  # nothing is known of its end


def test_session_by_name_and_json(cli: RunCli, source: Path) -> None:
    code, out, _ = cli("session", "search", "--source", str(source), "--format", "json")
    assert code == 0
    doc = json.loads(out, parse_float=Decimal)
    assert doc["session_id"] == "sess-search"
    assert doc["cost_usd"] == Decimal("0.001975") and len(doc["calls"]) == 2


def test_unknown_session(cli: RunCli, source: Path) -> None:
    code, out, err = cli("session", "nope", "--source", str(source))
    assert code == 1 and out == ""
    assert err.strip() == f"tokenmeter: error: no session 'nope' in {source}"


def _nested_pipeline(directory: Path) -> tuple[Any, Any]:
    """A parent session "pipeline" with no call of its own: "extract" (1 call) and "summarise"
    (1 call, and "check" nested in it with 1), stored in SQLite. Returns (pipeline, summarise)."""
    import tokenmeter

    tokenmeter.configure(directory=directory, sinks=["sqlite"])
    with tokenmeter.session("pipeline") as parent:
        with tokenmeter.session("extract"):
            tokenmeter.record("openai", "gpt-4o", 1000, 500)
        with tokenmeter.session("summarise") as summarise:
            tokenmeter.record("openai", "gpt-4o", 1000, 500)
            with tokenmeter.session("check"):
                tokenmeter.record("openai", "gpt-4o", 1000, 500)
    return parent, summarise


def test_a_parent_whose_calls_were_all_nested_is_listed_with_rolled_up_totals(
    cli: RunCli, tmp_path: Path
) -> None:
    import tokenmeter

    directory = tmp_path / "store"
    parent, _ = _nested_pipeline(directory)
    assert tokenmeter.flush(5)
    code, out, _ = cli("sessions", "--source", str(directory), "--format", "json")
    assert code == 0
    rows = {row["name"]: row for row in json.loads(out)}
    assert set(rows) == {"pipeline", "extract", "summarise", "check"}
    assert rows["pipeline"]["session_id"] == parent.id
    assert (rows["pipeline"]["calls"], rows["summarise"]["calls"], rows["check"]["calls"]) == (
        3,
        2,
        1,
    )
    assert rows["pipeline"]["status"] == "completed"


def test_session_shows_a_parent_whose_calls_were_all_nested_with_rolled_up_totals(
    cli: RunCli, tmp_path: Path
) -> None:
    import tokenmeter

    directory = tmp_path / "store"
    parent, summarise = _nested_pipeline(directory)
    with tokenmeter.session("elsewhere"):
        tokenmeter.record("openai", "gpt-4o", 1000, 500)
    assert tokenmeter.flush(5)
    one = parent.summary.cost_usd / 3
    for wanted in (parent.id, "pipeline"):
        code, out, err = cli("session", wanted, "--source", str(directory), "--format", "json")
        assert code == 0, err
        doc = json.loads(out, parse_float=Decimal)
        assert (doc["session_id"], doc["name"], doc["status"]) == (
            parent.id,
            "pipeline",
            "completed",
        )
        assert len(doc["calls"]) == 3 and doc["cost_usd"] == parent.summary.cost_usd
    code, out, _ = cli("session", summarise.id, "--source", str(directory), "--format", "json")
    doc = json.loads(out, parse_float=Decimal)
    assert code == 0 and len(doc["calls"]) == 2 and doc["cost_usd"] == 2 * one
    code, out, _ = cli("session", parent.id, "--source", str(directory))
    assert code == 0 and out.startswith("# Session: pipeline\n")
    assert "- **Total Calls:** 3" in out


def test_session_with_more_nested_sessions_than_sqlite_takes_parameters(
    cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The calls of a session and of those nested in it were selected with one parameter per
    session id: SQLite before 3.32 takes 999 (later builds 32,766; PostgreSQL 65,535), so
    ``session run_...`` of a server whose 1,000 requests each had a session was "too many SQL
    variables". Here SQLite is limited to 999 as those builds are."""
    from tokenmeter._models import SessionInfo

    from .conftest import rec, ts, write_sqlite

    started = ts("2026-11-01T00:00:00.000Z")
    children = [(f"req-{i}", "POST /draft") for i in range(1000)]
    records = [
        rec(i, "2026-11-01T00:00:00.000Z", "openai", "gpt-4o", 1, 1, "0.001", session=child)
        for i, child in enumerate(children)
    ]
    sessions = [SessionInfo(id="run_1", name="server", started_at=started)] + [
        SessionInfo(id=sid, name=name, parent_id="run_1", started_at=started)
        for sid, name in children
    ]
    data = write_sqlite(tmp_path / "usage.db", records, sessions)
    connect = sqlite3.connect

    def limited(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = connect(*args, **kwargs)
        conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
        return conn

    monkeypatch.setattr(sqlite3, "connect", limited)
    code, out, err = cli("session", "run_1", "--source", str(data), "--format", "json")
    assert code == 0, err
    doc = json.loads(out, parse_float=Decimal)
    assert len(doc["calls"]) == 1000 and doc["cost_usd"] == Decimal("1")
