"""A JSONL line far longer than any record (a runaway writer, a hostile file) costs bounded memory.

The reader takes at most ``MAX_LINE_BYTES`` of a line; a longer line is skipped and counted, and
the rest of it is read past in small chunks, never held.
"""

from __future__ import annotations

import json
import signal
import time
from decimal import Decimal
from pathlib import Path

import pytest

from tokenmeter.cli import _source

from .conftest import (
    MIB,
    RECORDS,
    TOTAL_COST,
    RunCli,
    append_lines,
    peak_python_memory,
    rec,
    record_line,
    start_module,
    write_jsonl,
)

LONG = 50 * MIB
#: What reading may hold at once, whatever the length of a line: a few times the line limit.
BUDGET = 16 * MIB


def _write_long_line(path: Path, size: int, *, newline: bool = True) -> None:
    """A line that starts like a record and goes on for ``size`` bytes, written in pieces."""
    with path.open("ab") as handle:
        handle.write(b'{"timestamp": "2026-11-02T00:00:01.000Z", "model_name": "')
        piece = b"x" * MIB
        for _ in range(size // MIB):
            handle.write(piece)
        handle.write(b'"}\n' if newline else b"x")


def _history_with_long_line(tmp_path: Path, *, newline: bool = True) -> Path:
    path = write_jsonl(tmp_path / "usage.jsonl", RECORDS[:3])
    _write_long_line(path, LONG, newline=newline)
    if newline:
        write_jsonl(path, RECORDS[3:])
    return path


@pytest.mark.parametrize(
    "command",
    [
        ("report", "--format", "json"),
        ("report", "--detailed", "--format", "csv"),
        ("sessions",),
        ("session", "sess-chat"),
        ("tail",),
    ],
    ids=["report-json", "report-detailed-csv", "sessions", "session", "tail"],
)
def test_long_line_is_skipped_in_bounded_memory(
    cli: RunCli, tmp_path: Path, command: tuple[str, ...]
) -> None:
    path = _history_with_long_line(tmp_path)
    results: list[tuple[int, str, str]] = []
    peak = peak_python_memory(lambda: results.append(cli(*command, "--source", str(path))))
    code, out, err = results[0]
    assert code == 0, err
    assert err.splitlines() == [f"tokenmeter: warning: skipped 1 corrupt line in {path}"]
    assert peak < BUDGET, f"held {peak / MIB:.1f} MiB reading a {LONG // MIB} MiB line"
    if command[0] == "report" and "json" in command:
        assert json.loads(out)["totals"]["calls"] == len(RECORDS)


def test_long_torn_last_line_is_skipped_in_bounded_memory(cli: RunCli, tmp_path: Path) -> None:
    """A writer killed half-way through a huge line: no newline ever comes."""
    path = _history_with_long_line(tmp_path, newline=False)
    results: list[tuple[int, str, str]] = []
    args = ("report", "--format", "json", "--source", str(path))
    peak = peak_python_memory(lambda: results.append(cli(*args)))
    code, out, err = results[0]
    assert code == 0 and peak < BUDGET
    assert err.splitlines() == [f"tokenmeter: warning: skipped 1 corrupt line in {path}"]
    assert json.loads(out)["totals"]["calls"] == 3


@pytest.mark.parametrize("held", [10_000, 2], ids=["held", "read-twice"])
def test_tail_counts_a_long_last_line_without_its_newline_as_report_does(
    cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, held: int
) -> None:
    """``tail`` without ``-f`` reads a finished file: its too-long last line, with no newline
    (a torn huge line, another tool's garbage), is skipped and counted, as ``report`` says
    "skipped 1 corrupt line"; ``tail -n 10`` printed the records and no warning."""
    from tokenmeter.cli import _tail

    monkeypatch.setattr(_tail, "_HELD", held)
    path = write_jsonl(tmp_path / "usage.jsonl", RECORDS[:3])
    _write_long_line(path, 3 * MIB, newline=False)
    code, out, err = cli("tail", "--source", str(path), "-n", "10", "--format", "json")
    assert code == 0
    assert [json.loads(line)["model"] for line in out.splitlines()] == [
        r.model_name for r in RECORDS[:3]
    ]
    assert err.splitlines() == [f"tokenmeter: warning: skipped 1 corrupt line in {path}"]


def test_line_limit_is_a_record_and_a_half_of_room(cli: RunCli, tmp_path: Path) -> None:
    """A record exactly at the limit is read; one byte more and it is skipped and counted."""
    limit = _source.MAX_LINE_BYTES
    assert MIB <= limit <= BUDGET // 8
    base = record_line(RECORDS[0], tags='{"pad": ""}')
    fits = base.replace('"pad": ""', '"pad": "' + "p" * (limit - len(base)) + '"')
    assert len(fits.encode()) == limit
    too_long = fits.replace('"pad": "', '"pad": "p')
    path = append_lines(tmp_path / "usage.jsonl", [fits, too_long])
    code, out, err = cli("report", "--format", "json", "--source", str(path))
    assert code == 0
    assert json.loads(out)["totals"]["calls"] == 1
    assert err.splitlines() == [f"tokenmeter: warning: skipped 1 corrupt line in {path}"]


def test_many_long_lines_each_counted_once(cli: RunCli, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "usage.jsonl", RECORDS)
    for _ in range(3):
        _write_long_line(path, 3 * MIB)
    append_lines(path, ["", "   "])  # blank lines are not records, nor corrupt
    code, out, err = cli("report", "--format", "json", "--source", str(path))
    assert code == 0
    assert json.loads(out)["totals"]["calls"] == len(RECORDS)
    assert json.loads(out)["skipped_lines"] == 3
    assert err.splitlines() == [f"tokenmeter: warning: skipped 3 corrupt lines in {path}"]
    code, out, err = cli("report", "--format", "csv", "--by", "day", "--source", str(path))
    assert code == 0 and "skipped 3 corrupt lines" in err


def test_follow_skips_a_long_line_written_in_pieces(tmp_path: Path) -> None:
    """``tail -f`` may poll while the long line is half written: it is still one skipped line."""
    path = write_jsonl(tmp_path / "usage.jsonl", RECORDS[:1])
    args = ["tail", "-f", "--interval", "0.05", "--format", "json", "--source", str(path)]
    proc = start_module(*args)
    assert proc.stdout is not None
    try:
        assert json.loads(proc.stdout.readline())["model"] == "gpt-4o"
        with path.open("ab") as handle:
            handle.write(b'{"timestamp": "2026-11-09T00:00:00.000Z", "model_name": "')
            for _ in range(4):
                handle.write(b"y" * MIB)
                handle.flush()
                time.sleep(0.2)  # let a poll or two see the line unfinished
            handle.write(b'"}\n')
        write_jsonl(path, [rec(70, "2026-11-09T00:00:01.000Z", "openai", "after", 1, 1, "1")])
        shown = json.loads(proc.stdout.readline())
        assert shown["model"] == "after"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert err.splitlines() == [f"tokenmeter: warning: skipped 1 corrupt line in {path}"]


def test_totals_unchanged_by_a_long_line(cli: RunCli, tmp_path: Path) -> None:
    path = _history_with_long_line(tmp_path)
    code, out, _ = cli("report", "--format", "json", "--source", str(path))
    assert code == 0
    assert json.loads(out, parse_float=Decimal)["totals"]["cost_usd"] == TOTAL_COST


def test_the_longest_record_the_library_writes_is_read_not_skipped(
    cli: RunCli, tmp_path: Path
) -> None:
    """Tags were unbounded: a record with 1.2 MB of them made a JSONL line longer than the reader
    takes, and ``report`` skipped a valid record as corrupt. The tags a record keeps are now
    bounded (``MAX_TAGS_SIZE``), and the longest line a record can make, every text at its limit
    in the characters JSON spells longest (``\\u0001``), fits the reader."""
    import tokenmeter
    from tokenmeter import _sessions
    from tokenmeter.sinks import JSONLSink

    path = tmp_path / "usage.jsonl"
    tokenmeter.configure(sinks=[JSONLSink(path)])
    odd = "\x01"
    tags: dict[str, str] = {}
    while sum(len(k) + len(v) + 2 for k, v in tags.items()) < _sessions.MAX_TAGS_SIZE - 300:
        tags[odd + str(len(tags))] = odd * 200
    with tokenmeter.session(odd * 1000, id=odd * 1000):
        tokenmeter.record(odd * 1000, odd * 1000, 10, 5, operation=odd * 1000, tags=tags)
    assert tokenmeter.flush()
    assert 500_000 < path.stat().st_size <= _source.MAX_LINE_BYTES
    code, out, err = cli("report", "--source", str(path), "--format", "json")
    assert code == 0, err
    assert json.loads(out)["totals"]["calls"] == 1 and "skipped" not in err


def test_tags_beyond_what_a_record_keeps_are_a_value_error() -> None:
    import tokenmeter
    from tokenmeter import _sessions

    too_many = {f"k{i}": "v" * 10_000 for i in range(120)}
    with pytest.raises(ValueError, match=r"^tags: .* more than the 100,000"):
        tokenmeter.record("openai", "gpt-4o", 1, 1, tags=too_many)
    with pytest.raises(ValueError, match=r"^tags: "):
        tokenmeter.session("s", tags=too_many)
    half = {f"a{i}": "v" * 9_000 for i in range(6)}
    other = {f"b{i}": "v" * 9_000 for i in range(6)}
    with tokenmeter.session("outer", tags=half):
        with pytest.raises(ValueError, match=r"^tags with those of the session: "):
            tokenmeter.record("openai", "gpt-4o", 1, 1, tags=other)
        with (
            pytest.raises(ValueError, match=r"^tags with those of the enclosing sessions: "),
            tokenmeter.session("inner", tags=other),
        ):
            pass
    assert _sessions.current_session() is None


def test_a_table_shows_a_long_stored_name_cut_not_every_row_padded_to_it(
    cli: RunCli, tmp_path: Path
) -> None:
    """Another writer stored a 200,000-character model name (tokenmeter cuts its own at 500):
    a plain table padded every row to it (60 rows of a 1.8 MB file printed 117 MB). The cell
    shown is cut in the middle; the json format keeps the stored name."""
    long_name = "m" * 100_000 + "z" * 100_000
    path = write_jsonl(tmp_path / "usage.jsonl", RECORDS)
    line = json.loads(path.read_text().splitlines()[0])
    line["model_name"], line["id"] = long_name, "another-writers-record"
    append_lines(path, [json.dumps(line)])
    code, out, err = cli("report", "--detailed", "--source", str(path))
    assert code == 0, err
    assert len(out) < 20 * 1000 * (len(RECORDS) + 10), len(out)
    assert "m" * 200 + "…" + "z" * 200 in out and long_name not in out
    code, out, err = cli("report", "--format", "json", "--by", "model", "--source", str(path))
    assert code == 0, err
    assert long_name in out
