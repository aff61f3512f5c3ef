"""Several real processes writing the same files, and a writer killed with SIGKILL."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

from tokenmeter._models import UsageRecord
from tokenmeter.sinks import JSONLSink, MarkdownJournalSink
from tokenmeter.sinks import sqlite as sqlite_module
from tokenmeter.sinks.jsonl import read_jsonl

RecordFactory = Callable[..., UsageRecord]
WRITER = Path(__file__).with_name("writer_process.py")


def count_rows(path: Path, sql: str = "SELECT COUNT(*) FROM records") -> int:
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        count: int = conn.execute(sql).fetchone()[0]
        return count
    finally:
        conn.close()


def journal_counts(directory: Path) -> tuple[int, list[int]]:
    """The TOTAL calls of token_usage.md and the numbers of its detailed log rows."""
    text = (directory / "token_usage.md").read_text(encoding="utf-8")
    match = re.search(r"^\| \*\*TOTAL\*\* \| \| \*\*([\d,]+)\*\*", text, re.MULTILINE)
    assert match is not None
    log = text[text.index("## Detailed Log") :]
    numbers = [int(n) for n in re.findall(r"^\| (\d+) \| ", log, re.MULTILINE)]
    return int(match.group(1).replace(",", "")), numbers


def test_four_processes_write_twenty_thousand_records(tmp_path: Path) -> None:
    writers = [
        subprocess.Popen([sys.executable, str(WRITER), f"p{n}", "5000", "100", str(tmp_path)])
        for n in range(4)
    ]
    for writer in writers:
        assert writer.wait(timeout=240) == 0

    assert count_rows(tmp_path / "usage.db") == 20_000
    lines = (tmp_path / "usage.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 20_000
    ids = [json.loads(line)["id"] for line in lines]  # every line is valid JSON
    assert len(set(ids)) == 20_000
    total_calls, numbers = journal_counts(tmp_path / "journal")
    assert total_calls == 20_000
    assert numbers == list(range(1, 20_001))
    for n in range(4):
        session = (tmp_path / "journal" / "sessions" / f"p{n}-session.md").read_text()
        assert "- **Total Calls:** 5,000" in session


def test_a_writer_killed_mid_stream_leaves_readable_files(
    tmp_path: Path, make_record: RecordFactory
) -> None:
    writer = subprocess.Popen(
        [sys.executable, str(WRITER), "k", "0", "50", str(tmp_path), "forever"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None
    assert writer.stdout.readline().strip() == "started"
    time.sleep(0.5)
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    writer.stdout.close()

    stored = count_rows(tmp_path / "usage.db")
    assert stored > 0
    assert stored % 50 == 0  # batches are stored whole or not at all

    jsonl = tmp_path / "usage.jsonl"
    parsed = list(read_jsonl(jsonl))
    assert all(record is not None for record in parsed[:-1])
    valid = sum(record is not None for record in parsed)
    JSONLSink(jsonl).write([make_record(i, id=f"after-{i}") for i in range(10)])
    parsed_after = list(read_jsonl(jsonl))
    assert sum(record is not None for record in parsed_after) == valid + 10
    assert [r.id for r in parsed_after[-10:] if r] == [f"after-{i}" for i in range(10)]

    MarkdownJournalSink(tmp_path / "journal").write([make_record(0, id="after")])
    total_calls, numbers = journal_counts(tmp_path / "journal")
    assert numbers == list(range(1, total_calls + 1))


def test_processes_racing_to_upgrade_a_version_3_database(tmp_path: Path) -> None:
    """Four processes open a database of schema 3 at once: one upgrades it (the others wait and
    find it done), every process writes all its records, and the rows it had are all there."""
    path = tmp_path / "usage.db"
    conn = sqlite3.connect(path)
    for migrate in sqlite_module._MIGRATIONS[:3]:
        migrate(conn)
    conn.execute("PRAGMA user_version = 3")
    conn.executemany(
        "INSERT INTO records (id, timestamp, model_provider, model_name, input_tokens, "
        "output_tokens, total_tokens) VALUES (?, '2026-01-01T00:00:00.000Z', 'openai', 'gpt-4o', "
        "?, 2, 3)",
        [(f"old-{n}", n) for n in range(50)] + [("old-text", "many")],
    )
    conn.commit()
    conn.close()
    writers = [
        subprocess.Popen([sys.executable, str(WRITER), f"p{n}", "200", "50", str(tmp_path)])
        for n in range(4)
    ]
    for writer in writers:
        assert writer.wait(timeout=240) == 0

    assert count_rows(path) == 51 + 800
    assert count_rows(path, "SELECT COUNT(*) FROM records WHERE id LIKE 'old-%'") == 51
    assert count_rows(path, "PRAGMA user_version") == sqlite_module.SCHEMA_VERSION
    unsound = "SELECT id FROM records INDEXED BY ix_records_unsound WHERE NOT "
    unsound += sqlite_module._SOUND_ROW_V5
    conn = sqlite3.connect(path)
    try:
        assert conn.execute(unsound).fetchall() == [("old-text",)]
    finally:
        conn.close()


def test_workers_forked_inside_a_session_add_their_calls_to_its_row(tmp_path: Path) -> None:
    """Each forked worker stored the session again over the parent's row, with its own copy of
    the totals and a status of its own: "completed" with 2 calls became "active" with 3 (the
    parent's 2 before the fork and the worker's), while the session's records were 4. A worker
    that flushed and left by ``os._exit`` never stored its part at all (4 calls of 5)."""
    script = Path(__file__).with_name("fork_in_session.py")
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    session_id = done.stdout.strip()
    conn = sqlite3.connect(tmp_path / "usage.db")
    try:
        rows = conn.execute(
            "SELECT status, calls, input_tokens, output_tokens, cost_usd FROM sessions"
        ).fetchall()
        records = conn.execute(
            "SELECT count(*), sum(input_tokens), sum(output_tokens), sum(cost_pusd) FROM records "
            "WHERE session_id = ?",
            [session_id],
        ).fetchone()
    finally:
        conn.close()
    assert records[:3] == (5, 5000, 500)
    [(status, calls, input_tokens, output_tokens, cost)] = rows
    assert (status, calls, input_tokens, output_tokens) == ("completed", 5, 5000, 500)
    assert Decimal(cost) == Decimal(records[3]).scaleb(-12) == Decimal("0.0175")
