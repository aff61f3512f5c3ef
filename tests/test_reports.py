"""Periodic usage report files: once per closed period, across processes, without a daemon."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from tokenmeter._config import load_settings
from tokenmeter._models import UsageRecord
from tokenmeter._reports import PeriodicReports, period_name, write_period_report
from tokenmeter.sinks import JSONLSink, SQLiteSink

REPO = Path(__file__).resolve().parent.parent


def _record(n: int, when: str, cost: str | None, **extra: object) -> UsageRecord:
    return UsageRecord(
        id=f"r{n}",
        timestamp=datetime.fromisoformat(when),
        model_provider="openai",
        model_name="gpt-4o",
        input_tokens=1000,
        output_tokens=100,
        total_tokens=1100,
        cache_read_tokens=250,
        estimated_cost_usd=None if cost is None else Decimal(cost),
        session_id=f"s{n % 2}",
        session_name="POST /draft" if n % 2 else "nightly",
        **extra,  # type: ignore[arg-type]
    )


#: Week 47 of 2026 runs from Monday 2026-11-16 to Sunday 2026-11-22.
WEEK_47 = [
    _record(1, "2026-11-16T00:00:00+00:00", "0.5"),
    _record(2, "2026-11-22T23:59:59.999+00:00", "0.25", status="blocked"),
    _record(3, "2026-11-20T10:00:00+00:00", None, status="error", error="APIError"),
]
LATER = [_record(4, "2026-11-23T00:00:00+00:00", "9")]  # week 48: not in the report


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    sink = SQLiteSink(tmp_path / "usage.db")
    sink.write([*WEEK_47, *LATER])
    sink.close()
    (tmp_path / "alerts.jsonl").write_text(
        '{"time": "2026-11-18T09:00:00.000Z", "rule": "budget:team", "scope": "team=a", '
        '"observed": 12, "threshold": 10, "session_id": "s1"}\n'
        '{"time": "2026-11-19T09:00:00.000Z", "rule": "spike", "scope": "<b>model</b>", '
        '"observed": 3, "baseline": 1, "threshold": 2, "record_id": "r1"}\n'
        "not json\n"
        '{"time": "2026-11-25T09:00:00.000Z", "rule": "spike", "scope": "next week"}\n'
    )
    return tmp_path


def test_names() -> None:
    monday = datetime(2026, 11, 16, tzinfo=UTC)
    assert period_name("week", monday) == "2026-W47"
    assert period_name("day", monday) == "2026-11-16"
    assert period_name("month", monday) == "2026-11"
    assert period_name("week", datetime(2026, 12, 28, tzinfo=UTC)) == "2026-W53"


def test_report_of_the_closed_week(directory: Path) -> None:
    now = datetime(2026, 11, 24, 8, tzinfo=UTC)
    path = write_period_report(directory, "week", now)
    assert path == directory / "reports" / "usage_report_2026-W47.md"
    text = path.read_text()
    assert "2026-11-16 to 2026-11-22 (UTC, both days included)" in text
    assert "- **Total cost**: $0.75" in text  # the 2026-11-23 call is next week's
    assert "3 (1 errors, 1 blocked, 0 estimated, 1 unpriced)" in text
    assert "## Per model" in text and "## Top sessions" in text
    assert "| s0 | nightly |" in text and "| s1 | POST /draft |" in text
    assert "- **Input/output ratio**: 10.00" in text
    assert "- **Cost per 1K tokens**: $0.341" in text  # 0.75 over 2,200 priced tokens
    assert "- **Cache hit rate**: 25.0%" in text
    assert "## Budgets" in text and "budget:team" in text
    assert "## Alerts" in text and "&lt;b>model&lt;/b>" in text and "next week" not in text
    # Written once: a second call (another process, a restart) leaves it alone.
    path.write_text("kept")
    assert write_period_report(directory, "week", now) is None
    assert path.read_text() == "kept"


def test_text_a_reader_would_obey_is_shown_not_kept(tmp_path: Path) -> None:
    """A model or session name holding a terminal escape sequence (``cat`` of the report would
    retitle or clear the terminal), a bidi override or, in a JSONL line another program wrote, a
    lone surrogate (which no UTF-8 file holds: the report failed): U+FFFD in the file. A tab
    and a new line are U+FFFD in a cell, as in the CLI's other formats (docs/cli.md)."""
    hostile = "gpt\x1b]0;PWNED\x07\x1b[2J\u202eevil\x9b"
    record = _record(1, "2026-11-20T10:00:00+00:00", "0.5")
    records = [record.model_copy(update={"model_name": hostile, "session_name": "s\x1b[31m\tend"})]
    sink = JSONLSink(tmp_path / "usage.jsonl")
    sink.write(records)
    sink.close()
    with (tmp_path / "usage.jsonl").open("a") as handle:
        line = (tmp_path / "usage.jsonl").read_text().replace('"r1"', '"r2"')
        handle.write(line.replace("gpt", "\\ud800"))
    path = write_period_report(tmp_path, "week", datetime(2026, 11, 24, 8, tzinfo=UTC))
    assert path is not None
    text = path.read_text(encoding="utf-8")
    assert not any(ch in text for ch in "\x1b\x07\x9b\u202e")
    assert "gpt\ufffd\\]0;PWNED\ufffd\ufffd\\[2J\ufffdevil\ufffd" in text
    assert "\ufffd\ufffd\\]0;" in text  # the line with the lone surrogate
    assert "\t" not in text and "s\ufffd\\[31m\ufffdend" in text


def test_no_data_no_report(tmp_path: Path) -> None:
    assert write_period_report(tmp_path, "day", datetime(2026, 11, 24, tzinfo=UTC)) is None
    assert not (tmp_path / "reports").exists()


def test_sink_writes_after_the_period_closed(directory: Path) -> None:
    sink = PeriodicReports(directory, ["weekly", "daily"])
    sink.write(WEEK_47[:1])  # still in week 47: nothing closed yet... but day 2026-11-15 is
    assert not (directory / "reports" / "usage_report_2026-W47.md").exists()
    sink.write(LATER)  # the first record of week 48, but inside the grace: not yet
    assert not (directory / "reports" / "usage_report_2026-W47.md").exists()
    sink.write([_record(5, "2026-11-23T00:01:00+00:00", "1")])
    assert (directory / "reports" / "usage_report_2026-W47.md").exists()
    assert (directory / "reports" / "usage_report_2026-11-22.md").exists()
    leftovers = [p for p in (directory / "reports").iterdir() if p.name.startswith(".")]
    assert leftovers == []


@pytest.mark.parametrize("sink", [SQLiteSink, JSONLSink])
def test_a_period_with_calls_is_reported_when_the_next_calls_come_periods_later(
    tmp_path: Path, sink: type[SQLiteSink] | type[JSONLSink]
) -> None:
    """Only the report of the period just closed was written: a job run every other day
    (Monday, then Wednesday) wrote Tuesday's report, empty, and never Monday's."""
    store = sink(tmp_path / ("usage.db" if sink is SQLiteSink else "usage.jsonl"))
    monday = [_record(1, "2026-11-16T09:00:00+00:00", "0.5")]
    wednesday = [_record(2, "2026-11-18T09:00:00+00:00", "0.25")]
    for batch in (monday, wednesday):  # a process each
        store.write(batch)
        PeriodicReports(tmp_path, ["daily"]).write(batch)
    store.close()
    report = tmp_path / "reports" / "usage_report_2026-11-16.md"
    assert report.exists() and "**Total cost**: $0.50" in report.read_text()
    assert "**Calls**: 0" in (tmp_path / "reports" / "usage_report_2026-11-17.md").read_text()


def test_a_record_dated_ahead_of_the_clock_closes_no_period(tmp_path: Path) -> None:
    """A record dated two days ahead (record(timestamp=...)) closed the periods up to it: the
    reports of today and tomorrow were written before their calls (empty or short, and a report
    is never replaced)."""
    now = datetime.now(UTC)
    ahead = _record(2, (now + timedelta(days=2)).isoformat(), "1")
    store = SQLiteSink(tmp_path / "usage.db")
    store.write([_record(1, now.isoformat(), "1"), ahead])
    store.close()
    PeriodicReports(tmp_path, ["daily"]).write([ahead])
    names = {p.name for p in (tmp_path / "reports").glob("*.md")}
    for days in (0, 1):
        assert f"usage_report_{period_name('day', now + timedelta(days=days))}.md" not in names


@pytest.mark.parametrize(
    "when", ["9999-12-31T23:59:59+00:00", "0001-01-01T00:00:30+00:00", "0001-01-03T00:00:30+00:00"]
)
def test_a_record_at_the_edge_of_the_calendar_is_no_failure(directory: Path, when: str) -> None:
    """record(timestamp=...) takes any time in years 1 to 9999: one whose period has no period
    after it (or before it) to report is not a failure of the sink (which would keep and retry
    the batch, then set it aside), and the next record's reports are written as ever."""
    sink = PeriodicReports(directory, ["daily", "weekly", "monthly"])
    sink.write([_record(6, when, "1")])
    sink.write([_record(5, "2026-11-23T00:01:00+00:00", "1")])
    assert (directory / "reports" / "usage_report_2026-W47.md").exists()
    assert (directory / "reports" / "usage_report_2026-11-22.md").exists()


_WRITER = """
import sys
from datetime import datetime
from pathlib import Path
from tokenmeter._reports import write_period_report
start = float(sys.argv[2])
import time
while time.time() < start:
    pass
now = datetime.fromisoformat("2026-11-24T08:00:00+00:00")
path = write_period_report(Path(sys.argv[1]), "week", now)
print("wrote" if path else "skipped")
"""


def test_once_across_processes(directory: Path) -> None:
    import time

    start = time.time() + 1.5
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(directory), str(start)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(4)
    ]
    results = [proc.communicate(timeout=120)[0].strip() for proc in procs]
    assert sorted(results) == ["skipped", "skipped", "skipped", "wrote"]
    files = sorted(p.name for p in (directory / "reports").iterdir())
    assert files == ["usage_report_2026-W47.md"]


def test_setting_from_every_layer(tmp_path: Path) -> None:
    assert load_settings({"reports": "weekly"}).reports == ("weekly",)
    assert load_settings(env={"TOKENMETER_REPORTS": "daily, monthly"}).reports == (
        "daily",
        "monthly",
    )
    (tmp_path / "pyproject.toml").write_text('[tool.tokenmeter]\nreports = ["weekly"]\n')
    assert load_settings(env={}, cwd=tmp_path).reports == ("weekly",)
    with pytest.raises(ValueError, match=r"'reports' from configure\(\).*unknown report period"):
        load_settings({"reports": "hourly"})


def test_library_writes_the_report_when_it_records(directory: Path) -> None:
    """End to end: a process configured with reports="weekly" records a call in week 48."""
    code = (
        "import tokenmeter\n"
        "tokenmeter.configure(reports='weekly')\n"
        "tokenmeter.record('openai', 'gpt-4o', 10, 10, timestamp='2026-11-24T08:00:00Z')\n"
        "tokenmeter.flush()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENMETER_")}
    env.update(PYTHONPATH=str(REPO), TOKENMETER_DIR=str(directory))
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=directory, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    report = directory / "reports" / "usage_report_2026-W47.md"
    assert report.exists() and "$0.75" in report.read_text()


def test_the_reports_folder_is_its_owners_only(directory: Path) -> None:
    """It was made with the umask's mode (0755 by default), where every other directory of
    tokenmeter's is its owner's only: the reports name sessions, tags and costs."""
    previous = os.umask(0o022)
    try:
        path = write_period_report(directory, "week", datetime(2026, 11, 24, 8, tzinfo=UTC))
    finally:
        os.umask(previous)
    assert path is not None
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


#: Another process storing one record (JSON) in usage.db, then closing its connection.
STORING_ONE = """
import sys
from tokenmeter._models import UsageRecord
from tokenmeter.sinks import SQLiteSink
sink = SQLiteSink(sys.argv[1])
sink.write([UsageRecord.model_validate_json(sys.argv[2])])
sink.close()
"""


def test_a_report_keeps_the_sqlite_sinks_locks_on_the_database(tmp_path: Path) -> None:
    """A report looked at usage.db's first bytes for its kind, opening and closing a descriptor
    on it: that drops every POSIX lock the process holds on the file, the SQLite sink's included.
    Another process closing its connection then took the database for unused and deleted the WAL
    under the sink: the sink's next write failed with "disk I/O error" and the other process's
    records were lost."""
    path = tmp_path / "usage.db"
    store = SQLiteSink(path)
    store.write([_record(0, "2026-11-16T09:00:00+00:00", "0.5")])
    for day in (17, 18, 19):
        batch = [_record(day, f"2026-11-{day}T09:00:00+00:00", "0.25")]
        PeriodicReports(tmp_path, ["daily"]).write(batch)  # the day before's, from usage.db
        other = _record(100 + day, f"2026-11-{day}T10:00:00+00:00", "0.25")
        subprocess.run(
            [sys.executable, "-c", STORING_ONE, str(path), other.model_dump_json()],
            check=True,
            timeout=120,
        )
        store.write(batch)
    store.close()
    assert (tmp_path / "reports" / "usage_report_2026-11-18.md").exists()
    conn = sqlite3.connect(path)
    ids = sorted(row[0] for row in conn.execute("SELECT id FROM records"))
    conn.close()
    assert ids == sorted(["r0", "r17", "r18", "r19", "r117", "r118", "r119"])
