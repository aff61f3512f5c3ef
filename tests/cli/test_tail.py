"""``tokenmeter tail [-f]`` in a real subprocess: new records appear, Ctrl-C stops it cleanly."""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import wait_for

from tokenmeter._models import UsageRecord
from tokenmeter.cli._source import Source
from tokenmeter.cli._tail import _JsonlFollower, _SqliteFollower
from tokenmeter.sinks import JSONLSink, SQLiteSink
from tokenmeter.sinks._encode import compact_json

from .conftest import (
    MIB,
    RECORDS,
    SESSIONS,
    RunCli,
    peak_python_memory,
    rec,
    start_module,
    write_jsonl,
    write_sqlite,
)


def test_tail_last_records(cli, source: Path) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = cli("tail", "--source", str(source), "-n", "2")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("2026-11-02T12:30:00.000Z  custom/unknown-model")
    assert "n/a" in lines[0] and "error:APIError" in lines[0]
    assert "openai/gpt-4o-mini" in lines[1] and "$1.23" in lines[1]
    assert "session=chat" in lines[1]


def test_tail_json_lines(cli, sqlite_db: Path) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = cli("tail", "--source", str(sqlite_db), "-n", "6", "--format", "json")
    assert code == 0
    calls = [json.loads(line) for line in out.splitlines()]
    assert [c["model"] for c in calls][-1] == "gpt-4o-mini" and len(calls) == 6


def test_tail_of_jsonl_reads_from_its_end(cli: RunCli, tmp_path: Path) -> None:
    """tail read a JSONL file from its first line (15 s for ten lines of a million): the
    lines well before those it shows are not read now (nor counted as skipped).
    Corrupt lines among the last ones make it look further back, for as many records."""
    records = [
        rec(n, f"2026-11-01T10:{n // 60:02d}:{n % 60:02d}.000Z", "openai", "gpt-4o", n, 1, "0.1")
        for n in range(60)
    ]
    path = tmp_path / "usage.jsonl"
    lines = [compact_json(r.model_dump(mode="json")) for r in records]
    path.write_text("{not json\n" * 1_000 + "\n".join(lines[:55]) + "\n")
    path.write_text(path.read_text() + "{torn\n" * 100 + "\n".join(lines[55:]) + "\n")
    code, out, err = cli("tail", "--source", str(path), "-n", "8", "--format", "json")
    assert code == 0, err
    assert [json.loads(line)["input_tokens"] for line in out.splitlines()] == list(range(52, 60))
    skipped = int(err.split("skipped ")[1].split()[0])
    assert 100 <= skipped < 1_100  # the torn lines, and not all of the 1,000 before them


@pytest.mark.parametrize("held", [10_000, 2], ids=["held", "read-twice"])
@pytest.mark.parametrize("count", [10, 1])
def test_tail_of_jsonl_prints_a_last_record_without_its_newline(
    cli: RunCli, tmp_path: Path, held: int, count: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A JSONL file whose last record has no final newline (written by another tool, `head -c`):
    `report` counted 6 calls, `tail` printed 5 (`tail -n 1` the one before the last), exit 0.
    Read once, not followed, the file is finished: its last line is a record like the others."""
    from tokenmeter.cli import _tail

    monkeypatch.setattr(_tail, "_HELD", held)
    path = write_jsonl(tmp_path / "export.jsonl", RECORDS)
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    code, out, err = cli("tail", "--source", str(path), "-n", str(count), "--format", "json")
    assert code == 0 and err == ""
    shown = [json.loads(line)["model"] for line in out.splitlines()]
    assert shown == [r.model_name for r in RECORDS][-count:]


@pytest.mark.parametrize("lines", [str(2**31), str(sys.maxsize)])
def test_tail_more_lines_than_a_c_int_holds(cli: RunCli, source: Path, lines: str) -> None:
    """``-n`` takes any count up to sys.maxsize; SQLite's fetchmany took only a C int and the
    command ended in an OverflowError traceback."""
    code, out, err = cli("tail", "--source", str(source), "-n", lines)
    assert code == 0, err
    assert len(out.splitlines()) == 6


def _read_line(proc: subprocess.Popen[str], deadline: float) -> str:
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line:
            return line
    raise AssertionError("tail -f printed nothing in time")


@pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
def test_follow_prints_new_records_and_stops_on_ctrl_c(kind: str, tmp_path: Path) -> None:
    if kind == "sqlite":
        path = write_sqlite(tmp_path / "usage.db", RECORDS[:2], SESSIONS)
        sink: SQLiteSink | JSONLSink = SQLiteSink(path)
    else:
        path = write_jsonl(tmp_path / "usage.jsonl", RECORDS[:2])
        sink = JSONLSink(path)
    proc = start_module("tail", "-f", "-n", "1", "--interval", "0.1", "--source", str(path))
    try:
        deadline = time.monotonic() + 30
        assert "claude-sonnet-4-5" in _read_line(proc, deadline)
        # A late batch whose timestamp is OLDER than what was shown must still appear.
        sink.write([rec(50, "2026-10-01T00:00:00.000Z", "openai", "late-model", 5, 5, "0.01")])
        assert "openai/late-model" in _read_line(proc, deadline)
        sink.write([rec(51, "2026-11-09T00:00:00.000Z", "openai", "new-model", 5, 5, "0.02")])
        assert "openai/new-model" in _read_line(proc, deadline)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        sink.close()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


@pytest.mark.parametrize("kind", ["sqlite", "jsonl", "directory", "sqlite without tables"])
def test_follow_started_before_the_first_record_waits_for_it(kind: str, tmp_path: Path) -> None:
    """`tail -f` in one terminal, then the application in another: it exited at once ('no
    usage data') where it should wait, as `tail -F` does. Polled after the SQLite sink's first
    connection made `usage.db` but before its tables, it exited 1 ('not a tokenmeter database
    (no records table)'): a file with no table at all is waited for too."""
    names = {"jsonl": "usage.jsonl"}
    path = tmp_path / names.get(kind, "usage.db")
    given = tmp_path if kind == "directory" else path
    if kind == "sqlite without tables":
        with contextlib.closing(sqlite3.connect(path)) as made:
            made.execute("PRAGMA journal_mode = WAL")
    args = ["tail", "-f", "--interval", "0.1", "--source", str(given)]
    proc = start_module(*args)
    try:
        deadline = time.monotonic() + 30
        assert proc.stderr is not None
        waiting = proc.stderr.readline()
        assert "waiting for the first record" in waiting and str(given) in waiting, waiting
        sink: SQLiteSink | JSONLSink = SQLiteSink(path) if kind != "jsonl" else JSONLSink(path)
        try:
            sink.write([rec(60, "2026-11-09T00:00:00.000Z", "openai", "first-model", 5, 5, "1")])
            assert "openai/first-model" in _read_line(proc, deadline)
            sink.write([rec(61, "2026-11-09T00:00:01.000Z", "openai", "next-model", 5, 5, "1")])
            assert "openai/next-model" in _read_line(proc, deadline)
        finally:
            sink.close()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


@pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
@pytest.mark.parametrize("lines", ["10", "0"])
def test_follow_started_before_the_first_record_prints_all_of_the_first_write(
    kind: str, lines: str, tmp_path: Path
) -> None:
    """The application's first flush held 25 records (a burst of calls): `tail -f`, waiting
    for them, printed the last `-n` of them only (10; none with `-n 0`): all were written after
    it began and are new."""
    path = tmp_path / ("usage.db" if kind == "sqlite" else "usage.jsonl")
    printed = tmp_path / "printed.txt"
    args = ["tail", "-f", "-n", lines, "--interval", "0.1", "--source", str(path)]

    def shown() -> list[str]:
        return [line.split()[1] for line in printed.read_text(encoding="utf-8").splitlines()]

    with printed.open("w", encoding="utf-8") as out:
        proc = start_module(*args, stdout=out)
    try:
        assert proc.stderr is not None
        assert "waiting for the first record" in proc.stderr.readline()
        sink: SQLiteSink | JSONLSink = SQLiteSink(path) if kind == "sqlite" else JSONLSink(path)
        try:
            sink.write(_new_records(70, 25, "burst"))
            wait_for(lambda: "openai/burst-24" in shown(), "the first write's last record")
            sink.write(_new_records(95, 1, "after"))
            wait_for(lambda: "openai/after-0" in shown(), "the next write's record")
        finally:
            sink.close()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert shown() == [f"openai/burst-{i}" for i in range(25)] + ["openai/after-0"]
    assert proc.returncode == 0
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


def test_follow_waiting_for_a_store_ends_quietly_on_ctrl_c(tmp_path: Path) -> None:
    proc = start_module("tail", "-f", "--source", str(tmp_path / "a.db"))
    try:
        assert proc.stderr is not None
        assert "waiting for the first record" in proc.stderr.readline()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (proc.returncode, out) == (0, "")
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


def test_follow_jsonl_waits_for_complete_lines(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "usage.jsonl", RECORDS[:1])
    proc = start_module(
        "tail", "-f", "--interval", "0.1", "--format", "json", "--source", str(path)
    )
    try:
        deadline = time.monotonic() + 30
        _read_line(proc, deadline)
        line = json.dumps(RECORDS[5].to_json_dict()) + "\n"
        with path.open("a") as handle:
            handle.write(line[:40])  # a writer half-way through a line
            handle.flush()
            time.sleep(0.5)
            handle.write(line[40:])
        shown = json.loads(_read_line(proc, deadline))
        assert shown["model"] == "gpt-4o-mini" and shown["cost_usd"] == 1.234567890123
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and err == ""


def _new_records(first: int, count: int, model: str) -> list[UsageRecord]:
    return [
        rec(first + i, "2026-11-09T00:00:00.000Z", "openai", f"{model}-{i}", 5, 5, "0.01")
        for i in range(count)
    ]


def test_follow_jsonl_reads_a_file_rewritten_larger_in_place_from_the_start(
    tmp_path: Path,
) -> None:
    """A file truncated and written again, larger, between two polls kept the follower's old
    offset: it skipped the new file's first records and counted the line it landed in as
    corrupt."""
    path = write_jsonl(tmp_path / "usage.jsonl", RECORDS[:2])
    follower = _JsonlFollower(path)
    assert len(follower.last(10)) == 2
    with path.open("r+b") as handle:
        handle.truncate(0)
        handle.write(
            "".join(
                compact_json(r.to_json_dict()) + "\n" for r in _new_records(60, 4, "new")
            ).encode()
        )
    assert [call.model for call in follower.new()] == [f"new-{i}" for i in range(4)]
    assert follower.skipped == 0
    JSONLSink(path).write(_new_records(70, 1, "appended"))
    assert [call.model for call in follower.new()] == ["appended-0"]


def test_follow_jsonl_waits_for_a_file_renamed_away_and_reads_the_new_one_from_its_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A log rotation (``mv usage.jsonl usage.jsonl.1``; the sink makes a new file at its next
    record): a poll in the gap ended ``tail -f`` with status 1, "cannot read .../usage.jsonl: No
    such file or directory", and the records of the new file were never shown."""
    path = write_jsonl(tmp_path / "usage.jsonl", RECORDS[:2])
    follower = _JsonlFollower(path)
    assert len(follower.last(10)) == 2
    path.rename(tmp_path / "usage.jsonl.1")
    assert follower.new() == []  # gone: nothing new yet, and no error
    assert follower.new() == []
    sink = JSONLSink(path)
    try:
        sink.write(_new_records(70, 1, "rotated"))
        assert [call.model for call in follower.new()] == ["rotated-0"]
        sink.write(_new_records(80, 2, "later"))
        assert [call.model for call in follower.new()] == ["later-0", "later-1"]
    finally:
        sink.close()
    assert capsys.readouterr().err == f"tokenmeter tail: {path} is gone; waiting for it\n"
    assert follower.skipped == 0


def _write_twice(path: Path, records: list[UsageRecord]) -> None:
    """``records`` written by two JSONL sinks on one path, as ``sinks=["jsonl",
    JSONLSink("usage.jsonl")]`` wrote them before configure() refused it: each line twice."""
    for _ in range(2):
        write_jsonl(path, records)


@pytest.mark.parametrize("held", [10_000, 2], ids=["held", "read-twice"])
def test_tail_of_jsonl_prints_a_record_written_twice_once(
    cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, held: int
) -> None:
    """Two JSONL sinks on one path: report and sessions counted 3 calls, tail listed 6 lines
    and ``tail -f`` printed each new call twice."""
    from tokenmeter.cli import _tail

    monkeypatch.setattr(_tail, "_HELD", held)
    path = tmp_path / "usage.jsonl"
    _write_twice(path, RECORDS[:3])
    code, out, err = cli("tail", "--source", str(path), "-n", "10", "--format", "json")
    assert code == 0, err
    assert [json.loads(line)["model"] for line in out.splitlines()] == [
        r.model_name for r in RECORDS[:3]
    ]
    follower = _JsonlFollower(path)
    assert len(list(follower.last(3))) == 3
    _write_twice(path, _new_records(60, 2, "new"))
    assert [call.model for call in follower.new()] == ["new-0", "new-1"]
    assert follower.skipped == 0


def test_follow_sqlite_reads_a_records_table_made_again(tmp_path: Path) -> None:
    """A ``records`` table dropped and made again (the sink makes it again) starts its rowids
    over: the follower went on from the old table's last rowid and skipped the new rows."""
    path = write_sqlite(tmp_path / "usage.db", RECORDS[:3], SESSIONS)
    follower = _SqliteFollower(Source(path, "sqlite"))
    try:
        assert len(follower.last(10)) == 3
        with contextlib.closing(sqlite3.connect(path)) as conn:
            conn.execute("DROP TABLE records")
            conn.commit()
        sink = SQLiteSink(path)
        try:
            sink.write(_new_records(70, 2, "new"))
            assert [call.model for call in follower.new()] == ["new-0", "new-1"]
            sink.write(_new_records(80, 3, "later"))
            assert [call.model for call in follower.new()] == [f"later-{i}" for i in range(3)]
        finally:
            sink.close()
    finally:
        follower.close()


def test_follow_sqlite_reads_a_database_made_again(tmp_path: Path) -> None:
    """``usage.db`` moved away (archived) and made again by the library on the next record: the
    follower kept reading the old file through the connection it opened, and showed nothing
    more, ever. It opens the new file and reads it from its start, once it has its table."""
    path = write_sqlite(tmp_path / "usage.db", RECORDS[:3], SESSIONS)
    follower = _SqliteFollower(Source(path, "sqlite"))
    try:
        assert len(follower.last(10)) == 3
        path.rename(tmp_path / "usage-2026-11.db")
        assert list(follower.new()) == []  # gone: nothing new yet, and no error
        path.touch()  # made, not yet a database (the writer is at it)
        assert list(follower.new()) == []
        write_sqlite(tmp_path / "next.db", _new_records(70, 2, "new"), []).replace(path)
        assert [call.model for call in follower.new()] == ["new-0", "new-1"]
        sink = SQLiteSink(path)
        try:
            sink.write(_new_records(80, 1, "later"))
            assert [call.model for call in follower.new()] == ["later-0"]
        finally:
            sink.close()
    finally:
        follower.close()


def test_follow_sqlite_reads_many_new_rows_a_page_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows stored between two polls come a page at a time (each page its own query: over
    PostgreSQL a single one was held whole by the client cursor), all of them, in order."""
    from tokenmeter.cli import _tail

    monkeypatch.setattr(_tail, "_PAGE", 2)
    path = write_sqlite(tmp_path / "usage.db", RECORDS[:3], SESSIONS)
    follower = _SqliteFollower(Source(path, "sqlite"))
    sink = SQLiteSink(path)
    try:
        assert len(follower.last(10)) == 3
        sink.write(_new_records(70, 7, "new"))
        assert [call.model for call in follower.new()] == [f"new-{i}" for i in range(7)]
        sink.write(_new_records(80, 1, "later"))
        assert [call.model for call in follower.new()] == ["later-0"]
        assert list(follower.new()) == []
    finally:
        sink.close()
        follower.close()


def test_tail_of_a_records_table_of_another_schema_skips_its_rows(
    cli: RunCli, tmp_path: Path
) -> None:
    path = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE records (a, b)")
        conn.execute("INSERT INTO records VALUES (1, 2)")
        conn.commit()
    follower = _SqliteFollower(Source(path, "sqlite"))
    try:
        assert follower.last(3) == [] and list(follower.new()) == []
    finally:
        follower.close()
    code, out, err = cli("tail", "--source", str(path))
    assert (code, out) == (0, "") and "skipped 1 corrupt row" in err


def _many(count: int) -> list[UsageRecord]:
    return [
        rec(
            n,
            f"2026-11-01T{n // 3600:02d}:{n // 60 % 60:02d}:{n % 60:02d}.000Z",
            "openai",
            "m",
            n,
            1,
            "0.1",
        )
        for n in range(count)
    ]


def _store(kind: str, folder: Path, records: list[UsageRecord]) -> Path:
    """``records`` with a bad one every 50th: a corrupt line, or a row the record check refuses."""
    folder.mkdir()
    if kind == "jsonl":
        path = folder / "usage.jsonl"
        lines = [compact_json(r.model_dump(mode="json")) for r in records]
        for n in range(0, len(lines), 50):
            lines[n] = "{torn"
        path.write_text("\n".join(lines) + "\n")
        return path
    path = write_sqlite(folder / "usage.db", records, [])
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("UPDATE records SET input_tokens = -1 WHERE input_tokens % 50 = 0")
        conn.commit()
    return path


def _tail_to_file(cli: RunCli, out: Path, *args: str) -> tuple[int, str]:
    with out.open("w", encoding="utf-8") as handle, contextlib.redirect_stdout(handle):
        code, _, err = cli("tail", *args)
    return code, err


@pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
def test_tail_of_very_many_records_prints_them_as_it_reads_them(
    cli: RunCli, tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past ``_HELD`` records (100 here), tail finds where the last ones begin and prints them as
    it reads them: it held them all (``-n 150000``: 286 MB from SQLite, 757 MB from JSONL).
    The same lines as when they are held, bad rows and corrupt lines skipped alike."""
    from tokenmeter.cli import _tail

    peaks = {}
    for count in (400, 2_400):
        source = _store(kind, tmp_path / f"{kind}{count}", _many(count + 100))
        args = ("-n", str(count), "--source", str(source), "--format", "json")
        held = _tail_to_file(cli, tmp_path / f"held{count}.txt", *args)
        monkeypatch.setattr(_tail, "_HELD", 100)
        out = tmp_path / f"read{count}.txt"
        _tail_to_file(cli, out, *args)  # modules imported once are not what is measured
        results: list[tuple[int, str]] = []
        peaks[count] = peak_python_memory(
            lambda: results.append(_tail_to_file(cli, out, *args))  # noqa: B023
        )
        monkeypatch.undo()
        (code, err), (held_code, held_err) = results[0], held
        assert code == held_code == 0, err
        assert out.read_text() == (tmp_path / f"held{count}.txt").read_text()
        shown = [json.loads(line)["input_tokens"] for line in out.read_text().splitlines()]
        assert len(shown) == count and shown[-1] == count + 99 and all(n % 50 for n in shown)
        assert "skipped" in err and "skipped" in held_err
    grown = peaks[2_400] - peaks[400]
    assert grown < MIB, f"2,000 more records held {grown / MIB:.1f} MiB more"


@pytest.mark.parametrize("held", [10_000, 2], ids=["held", "read-twice"])
def test_rows_another_program_stored_at_negative_rowids_are_shown(
    cli: RunCli, tmp_path: Path, held: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite allows rowids down to -2**63; a program that inserts its own rowids may use them.
    They come first, in rowid order, whichever way the newest are read (the twice-read path
    began at rowid 0 when there were fewer than asked for, and left them out)."""
    from tokenmeter.cli import _tail

    monkeypatch.setattr(_tail, "_HELD", held)
    path = write_sqlite(tmp_path / "usage.db", _many(5), [])
    with contextlib.closing(sqlite3.connect(path)) as conn:
        names = [row[1] for row in conn.execute("PRAGMA table_info(records)") if row[1] != "id"]
        listed = ", ".join(names)
        for rowid in (-(2**63), -7):
            conn.execute(
                f"INSERT INTO records (rowid, id, {listed}) "
                f"SELECT ?, ?, {listed} FROM records "
                "WHERE rowid = (SELECT MAX(rowid) FROM records)",
                [rowid, f"below-{rowid}"],
            )
        conn.commit()
    code, out, err = cli("tail", "-n", "8", "--source", str(path), "--format", "json")
    assert code == 0, err
    shown = [json.loads(line)["input_tokens"] for line in out.splitlines()]
    assert shown == [4, 4, 0, 1, 2, 3, 4]
