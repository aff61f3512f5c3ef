"""``tokenmeter sessions`` and ``tokenmeter session ID``."""

from __future__ import annotations

import json
import random
import re
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tokenmeter._models import SessionInfo, UsageRecord
from tokenmeter.cli.reports import _spool

from .conftest import (
    MIB,
    RunCli,
    history,
    peak_python_memory,
    rec,
    write_jsonl,
    write_sqlite,
)


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


def test_sessions_and_session_take_their_format_from_the_output_files_suffix(
    cli: RunCli, sqlite_db: Path, tmp_path: Path
) -> None:
    """``sessions -o s.json`` wrote a table into s.json (``report`` reads the suffix)."""
    listed, one, table = tmp_path / "s.json", tmp_path / "one.json", tmp_path / "s.txt"
    assert cli("sessions", "--source", str(sqlite_db), "-o", str(listed))[0] == 0
    assert json.loads(listed.read_text())[0]["session_id"] == "sess-chat"
    assert cli("session", "sess-chat", "--source", str(sqlite_db), "-o", str(one))[0] == 0
    assert json.loads(one.read_text())["session_id"] == "sess-chat"
    assert cli("sessions", "--source", str(sqlite_db), "-o", str(table))[0] == 0
    assert table.read_text().split()[:3] == ["Session", "Name", "Status"]


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


# -- a session of many calls (a server's implicit session over months) --------------------------
def _one_session(count: int, *, models: int = 7, name: str | None = None) -> list[UsageRecord]:
    """``count`` calls a second apart, all in one session, over ``models`` models."""
    return [
        r.model_copy(
            update={
                "session_id": "session_20261101_000000_42",
                "session_name": name,
                "model_name": f"m{n % models}",
            }
        )
        for n, r in enumerate(history(count))
    ]


def _shuffled(records: list[UsageRecord]) -> list[UsageRecord]:
    """Out of time order, as several processes appending to one JSONL file write them."""
    mixed = list(records)
    random.Random(7).shuffle(mixed)
    return mixed


def _listed_times(out: str, fmt: str) -> list[str]:
    if fmt == "json":
        return [call["timestamp"] for call in json.loads(out)["calls"]]
    rows = [line.split(" | ") for line in out.splitlines() if re.match(r"\| \d+ \| 20", line)]
    return [row[1].replace(" ", "T") for row in rows]


@pytest.mark.parametrize("fmt", ["markdown", "json"])
@pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
def test_a_long_session_is_shown_in_memory_that_does_not_grow(
    cli: RunCli, tmp_path: Path, kind: str, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past ``IN_MEMORY`` calls (100 here) the session's calls wait on disk and the document is
    written as it is made. It held every call (100,000 calls: 580 MB; a million: ~6 GB)."""
    monkeypatch.setattr(_spool, "IN_MEMORY", 100)
    peaks = {}
    for count in (400, 2_400):
        records = _one_session(count)
        folder = tmp_path / f"{kind}{count}"
        source = _session_store(folder, kind, records)
        out = folder / f"session.{fmt}"
        args = ("session", "session_20261101_000000_42", "--source", str(source))
        args += ("--format", fmt, "-o", str(out))
        cli(*args)  # modules imported once are not what is measured
        results: list[tuple[int, str, str]] = []
        peaks[count] = peak_python_memory(lambda: results.append(cli(*args)))  # noqa: B023
        code, _, err = results[0]
        assert code == 0, err
        assert _listed_times(out.read_text(encoding="utf-8"), fmt) == [_when(r) for r in records]
    grown = peaks[2_400] - peaks[400]
    # Held in memory, 2,000 more calls took ~11 MiB more.
    assert grown < MIB, f"2,000 more calls held {grown / MIB:.1f} MiB more"


def _session_store(folder: Path, kind: str, records: list[UsageRecord]) -> Path:
    """SQLite in time order; JSONL shuffled."""
    if kind == "sqlite":
        return write_sqlite(folder / "usage.db", records, [])
    return write_jsonl(folder / "usage.jsonl", _shuffled(records))


def _when(record: UsageRecord) -> str:
    return record.timestamp.strftime("%Y-%m-%dT%H:%M:%S.000Z")


@pytest.mark.parametrize("wanted", ["session_20261101_000000_42", "nightly"])
@pytest.mark.parametrize("fmt", ["markdown", "json"])
@pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
def test_a_session_on_disk_reads_as_one_held_in_memory(
    cli: RunCli, tmp_path: Path, kind: str, fmt: str, wanted: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Byte for byte: in time order (ties as written), the same totals, and the same model list
    in its head, whose first 100 models are those used first and the rest one "(other models)"."""
    records = _one_session(300, models=150, name="nightly")
    records[5:9] = [r.model_copy(update={"timestamp": records[5].timestamp}) for r in records[5:9]]
    source = _session_store(tmp_path, kind, records)
    written = records if kind == "sqlite" else _shuffled(records)
    ordered = sorted(written, key=lambda r: r.timestamp)  # stable: ties as written
    args = ("session", wanted, "--source", str(source), "--format", fmt)
    code, held, err = cli(*args)
    assert code == 0, err
    monkeypatch.setattr(_spool, "IN_MEMORY", 20)
    code, spooled, err = cli(*args)
    assert code == 0 and err == ""
    assert spooled == held
    if fmt == "json":
        document = json.loads(held, parse_float=Decimal)
        assert document["cost_usd"] == sum(r.estimated_cost_usd or 0 for r in records)
        listed = [(c["timestamp"], c["input_tokens"]) for c in document["calls"]]
        assert listed == [(_when(r), r.input_tokens) for r in ordered]
    else:
        models = list(dict.fromkeys(f"openai/{r.model_name}" for r in ordered))
        head = ", ".join([*models[:100], "(other models)"])
        assert f"- **Provider/Model:** {head}\n" in held
        assert "- **Total Calls:** 300\n" in held
        assert _listed_times(held, fmt) == [_when(r) for r in ordered]


def test_the_session_list_of_a_jsonl_file_is_that_of_the_same_records_in_sqlite(
    cli: RunCli, tmp_path: Path
) -> None:
    """The JSONL list is read by the reports' scan (it parsed and checked every record, 2.4x
    slower): a name with escapes, an unpriced and a blocked call, a record written twice (one
    record), a line that is no record (skipped and counted) give the list SQLite gives."""
    records = [
        r.model_copy(update={"session_id": f"s{n % 3}", "session_name": f'"n\\{n % 3}" é\t'})
        for n, r in enumerate(history(30))
    ]
    records[4] = records[4].model_copy(update={"estimated_cost_usd": None, "cost_breakdown": None})
    records[7] = records[7].model_copy(update={"status": "blocked", "estimated_cost_usd": None})
    records[8] = records[8].model_copy(update={"session_id": None, "session_name": None})
    db = write_sqlite(tmp_path / "usage.db", records, [])
    jsonl = write_jsonl(tmp_path / "usage.jsonl", records)
    with jsonl.open("a", encoding="utf-8") as handle:
        handle.write(records[3].model_dump_json() + "\n{not a record}\n")
    from_sqlite = cli("sessions", "--source", str(db), "--format", "json")
    code, out, err = cli("sessions", "--source", str(jsonl), "--format", "json")
    assert code == 0 and "skipped 1 " in err, err
    assert out == from_sqlite[1]
    listed = {row["session_id"]: row for row in json.loads(out, parse_float=Decimal)}
    assert listed["s1"]["unpriced_calls"] == 1 and listed["s1"]["calls"] == 10
    assert listed["s0"]["name"] == '"n\\0" é\t' and listed["(none)"]["calls"] == 1


def _a_session_per_call(count: int) -> list[UsageRecord]:
    """``count`` calls, each in a session of its own (``@track`` around a request handler)."""
    return [
        r.model_copy(update={"session_id": f"req-{n:05d}", "session_name": "handle"})
        for n, r in enumerate(history(count))
    ]


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
def test_the_latest_sessions_of_many_are_listed_without_totalling_them_all(
    cli: RunCli, tmp_path: Path, nested: bool
) -> None:
    """``sessions`` (the latest 20) over a store of a session per call: where no session holds
    another, only the latest are read (a row for each of 200,000 sessions took 10 s and
    340 MB); where some do, all are rolled up as before. Either way the same list as
    ``--limit 0``'s first rows, ties in the same order."""
    peaks = {}
    for count in (400, 2_400):
        records = _a_session_per_call(count)  # the last two sessions' last calls tie
        records[-2] = records[-2].model_copy(update={"timestamp": records[-1].timestamp})
        sessions = [
            SessionInfo(id="req-00003", name="handle", started_at=records[3].timestamp),
            SessionInfo(
                id="req-00004",
                name="handle",
                parent_id="req-00003" if nested else None,
                started_at=records[4].timestamp,
            ),
        ]
        db = write_sqlite(tmp_path / f"usage{count}.db", records, sessions)
        args = ("sessions", "--source", str(db), "--format", "json")
        code, everything, err = cli(*args, "--limit", "0")
        assert code == 0, err
        cli(*args, "--limit", "5")  # modules imported once are not what is measured
        results: list[tuple[int, str, str]] = []
        peaks[count] = peak_python_memory(
            lambda: results.append(cli(*args, "--limit", "5"))  # noqa: B023
        )
        code, latest, err = results[0]
        assert code == 0, err
        assert json.loads(latest) == json.loads(everything)[:5]
        assert [row["session_id"] for row in json.loads(latest)][:2] == [
            f"req-{count - 1:05d}",  # a tie: the one stored last first
            f"req-{count - 2:05d}",
        ]
    grown = peaks[2_400] - peaks[400]
    if not nested:  # held a row for each, 2,000 more sessions took ~3 MiB more
        assert grown < MIB / 2, f"2,000 more sessions held {grown / MIB:.1f} MiB more"


def test_a_session_renamed_as_it_goes_is_read_whole_from_jsonl_under_its_latest_name(
    cli: RunCli, tmp_path: Path
) -> None:
    """``job.name = ...`` mid-session: the later records carry the new name (docs/sessions.md).
    Over usage.jsonl, ``session final`` showed only the calls named ``final`` as the whole
    session (2 calls, $0.022 of $0.0255), and ``sessions`` listed it under its first name, so
    ``--session-name final`` found nothing. The file's lines need not be in time order."""
    job = "sess-job"
    records = [
        rec(
            2,
            "2026-11-01T10:02:00Z",
            "openai",
            "gpt-4o",
            4000,
            100,
            "0.011",
            session=(job, "final"),
        ),
        rec(
            1,
            "2026-11-01T10:00:00Z",
            "openai",
            "gpt-4o",
            1000,
            100,
            "0.0035",
            session=(job, "draft"),
        ),
        rec(
            3,
            "2026-11-01T10:03:00Z",
            "openai",
            "gpt-4o",
            4000,
            100,
            "0.011",
            session=(job, "final"),
        ),
    ]
    jsonl = write_jsonl(tmp_path / "usage.jsonl", records)
    code, out, err = cli("session", "final", "--source", str(jsonl), "--format", "json")
    assert code == 0, err
    shown = json.loads(out, parse_float=Decimal)
    assert shown["session_id"] == job and len(shown["calls"]) == 3
    assert shown["cost_usd"] == Decimal("0.0255")
    for asked in ((), ("--session-name", "final")):
        code, out, err = cli("sessions", "--source", str(jsonl), "--format", "json", *asked)
        assert code == 0, err
        listed = json.loads(out, parse_float=Decimal)
        assert [(row["name"], row["calls"]) for row in listed] == [("final", 3)]
