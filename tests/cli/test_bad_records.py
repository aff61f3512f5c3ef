"""Records that parse (valid JSON, a readable SQLite row) but hold the wrong types.

Every command must skip such a record and count it like a corrupt line, and print exactly what it
prints for the same history without it: no traceback, no half-added totals.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from decimal import Decimal
from pathlib import Path

import pytest

from tokenmeter.cli._source import table_columns
from tokenmeter.cli._validate import sql_valid
from tokenmeter.cli.reports._query import UNSOUND_INDEX

from .conftest import (
    RECORDS,
    SESSIONS,
    RunCli,
    append_lines,
    insert_sqlite_row,
    rec,
    record_line,
    run_module,
    start_module,
    write_jsonl,
    write_sqlite,
)

#: Each command as a user may run it on a history holding bad records.
COMMANDS = [
    ("report", "--format", "table"),
    ("report", "--format", "markdown"),
    ("report", "--format", "json"),
    ("report", "--format", "csv"),
    ("report", "--format", "html"),
    ("report", "--detailed", "--format", "table"),
    ("report", "--detailed", "--format", "json"),
    ("report", "--detailed", "--format", "csv"),
    ("report", "--detailed", "--format", "html"),
    ("report", "--by", "tag:feature,day", "--format", "json"),
    ("report", "--by", "session", "--since", "2026-11-02", "--format", "markdown"),
    ("sessions",),
    ("sessions", "--format", "json"),
    ("session", "sess-chat"),
    ("session", "sess-chat", "--format", "json"),
    ("session", "chat"),
    ("tail",),
    ("tail", "--format", "json"),
]
COMMAND_IDS = ["-".join(c).replace("--", "") for c in COMMANDS]

_DEEP = "[" * 100_000 + "]" * 100_000  # deep enough to exhaust the JSON decoder's recursion

#: (field, raw JSON text) on a copy of a sess-chat record in the middle of the file.
BAD_JSON_FIELDS = [
    ("input_tokens", '"many"'),
    ("input_tokens", "1e400"),
    ("input_tokens", "true"),
    ("input_tokens", "-1"),
    ("input_tokens", str(2**63)),
    ("output_tokens", "1.5"),
    ("output_tokens", "{}"),
    ("total_tokens", "[1]"),
    # The seven first keys are always there, and total_tokens is input + output (SPEC §3).
    ("input_tokens", "null"),
    ("output_tokens", "null"),
    ("input_tokens", "0"),
    ("total_tokens", "1"),
    ("cache_read_tokens", '"3"'),
    ("reasoning_tokens", "1e3"),
    ("estimated_cost_usd", "1e400"),
    ("estimated_cost_usd", "-1e400"),
    ("estimated_cost_usd", "NaN"),
    ("estimated_cost_usd", "Infinity"),
    ("estimated_cost_usd", '"NaN"'),
    ("estimated_cost_usd", '"0.5"'),
    ("estimated_cost_usd", "1e300"),
    ("estimated_cost_usd", "false"),
    ("cost_breakdown", '{"input": "x"}'),
    ("cost_breakdown", '{"input": NaN}'),
    ("cost_breakdown", '{"input": 1e400}'),
    ("cost_breakdown", '"x"'),
    ("tags", '{"feature": 1}'),
    ("tags", '{"feature": null}'),
    ("tags", '["feature"]'),
    ("tags", '"feature=chat"'),
    ("tags", _DEEP),
    ("model_name", "5"),
    ("model_provider", '{"a": 1}'),
    ("session_name", "5"),
    ("operation", "[]"),
    ("status", "[]"),
    ("error", "1"),
    ("id", "7"),
    ("timestamp", '"garbage"'),
    ("timestamp", '"2026-13-01T00:00:00.000Z"'),
    ("timestamp", "20261101"),
    ("timestamp", "null"),
    ("timestamp", '"0001-01-01T00:00:00+01:00"'),  # before year 1 once turned into UTC
    ("latency_ms", '"slow"'),
    ("latency_ms", "1e400"),
    ("latency_ms", "-5"),
    ("streamed", '"yes"'),
    ("estimated", "2"),
    ("modalities", '"text"'),
]


def _clean_then_dirty(path: Path, bad_lines: list[str]) -> None:
    """The fixture history at ``path``, with ``bad_lines`` between its 3rd and 4th records."""
    path.unlink()
    write_jsonl(path, RECORDS[:3])
    append_lines(path, bad_lines)
    write_jsonl(path, RECORDS[3:])


def _without_skip_count(command: tuple[str, ...], out: str) -> tuple[str, int | None]:
    """A json report says how many lines it skipped; everything else must match exactly."""
    if command[0] == "report" and "json" in command:
        doc = json.loads(out)
        return json.dumps({**doc, "skipped_lines": 0}), doc["skipped_lines"]
    return out, None


@pytest.mark.parametrize("command", COMMANDS, ids=COMMAND_IDS)
def test_jsonl_wrong_types_are_skipped_and_counted(
    cli: RunCli, tmp_path: Path, command: tuple[str, ...]
) -> None:
    path = write_jsonl(tmp_path / "usage.jsonl", RECORDS)
    code, clean, err = cli(*command, "--source", str(path))
    assert code == 0 and err == ""
    bad = [record_line(RECORDS[5], **{field: raw}) for field, raw in BAD_JSON_FIELDS]
    _clean_then_dirty(path, bad)
    code, dirty, err = cli(*command, "--source", str(path))
    assert code == 0, err
    assert err.splitlines() == [f"tokenmeter: warning: skipped {len(bad)} corrupt lines in {path}"]
    dirty, skipped = _without_skip_count(command, dirty)
    assert dirty == _without_skip_count(command, clean)[0]
    assert skipped in (None, len(bad))


def test_jsonl_each_wrong_type_alone(cli: RunCli, tmp_path: Path) -> None:
    """One bad field at a time, so a check that lets one through is named by the failure."""
    path = write_jsonl(tmp_path / "usage.jsonl", RECORDS)
    for field, raw in BAD_JSON_FIELDS:
        _clean_then_dirty(path, [record_line(RECORDS[5], **{field: raw})])
        for command in (("report", "--detailed", "--format", "json"), ("tail",)):
            code, out, err = cli(*command, "--source", str(path))
            assert code == 0, (field, raw, err)
            assert "skipped 1 corrupt line in" in err, (field, raw, command, out)


def test_valid_odd_values_are_kept(cli: RunCli, tmp_path: Path) -> None:
    """Strict is not fussy: nulls, a zero-padded timestamp offset, 0 and big counts are fine."""
    lines = [
        record_line(RECORDS[0], estimated_cost_usd="null", cost_breakdown="null", tags="{}"),
        record_line(
            RECORDS[0], input_tokens=str(2**63 - 1), output_tokens="0", total_tokens=str(2**63 - 1)
        ),
        record_line(RECORDS[0], timestamp='"2026-11-01T02:30:00+01:00"', latency_ms="12.5"),
        record_line(RECORDS[0], estimated_cost_usd="-0.25", modalities='{"text": 3}'),
    ]
    path = append_lines(tmp_path / "usage.jsonl", lines)
    code, out, err = cli("report", "--detailed", "--format", "json", "--source", str(path))
    assert code == 0 and err == "", err
    doc = json.loads(out, parse_float=Decimal)
    assert doc["totals"]["calls"] == 4 and doc["skipped_lines"] == 0
    assert doc["totals"]["cost_usd"] == Decimal("0.0075") * 2 - Decimal("0.25")
    # A timestamp with an offset is read as the UTC instant it names, in and out of the window.
    assert "2026-11-01T01:30:00.000Z" in [call["timestamp"] for call in doc["calls"]]
    code, out, _ = cli(
        "report", "--since", "2026-11-01T01:15", "--format", "json", "--source", str(path)
    )
    assert code == 0 and json.loads(out)["totals"]["calls"] == 1


def test_counts_that_do_not_add_up_are_not_totalled(cli: RunCli, tmp_path: Path) -> None:
    """A line with a null input count, or a 0 beside a total of 1,010, was counted as a call of
    0 input tokens: the report's totals then said input + output != total (1,000 + 20 = 2,020).
    Such a line is skipped and counted; a line of an older writer without the cache and
    reasoning counts, or without its total, is still a call (the total is input + output)."""
    path = write_jsonl(tmp_path / "usage.jsonl", RECORDS)
    code, clean, err = cli("report", "--format", "json", "--source", str(path))
    assert code == 0 and err == ""
    older = RECORDS[5].to_json_dict()
    for name in ("cache_read_tokens", "cache_write_tokens", "reasoning_tokens", "total_tokens"):
        del older[name]
    older["id"] = "older-writer"
    bad = [
        record_line(RECORDS[5], input_tokens="null"),
        record_line(RECORDS[5], output_tokens="null"),
        record_line(RECORDS[5], input_tokens="0"),
    ]
    _clean_then_dirty(path, [*bad, json.dumps(older)])
    code, out, err = cli("report", "--format", "json", "--source", str(path))
    assert code == 0
    assert err.splitlines() == [f"tokenmeter: warning: skipped 3 corrupt lines in {path}"]
    before, after = json.loads(clean)["totals"], json.loads(out)["totals"]
    assert after["calls"] == before["calls"] + 1
    assert after["input_tokens"] == before["input_tokens"] + RECORDS[5].input_tokens
    assert after["total_tokens"] == after["input_tokens"] + after["output_tokens"]


@pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
@pytest.mark.parametrize("command", COMMANDS, ids=COMMAND_IDS)
def test_counts_past_what_64_bits_hold_still_add_up(
    cli: RunCli, tmp_path: Path, command: tuple[str, ...], kind: str
) -> None:
    """A count near 2**63 is a valid record; with any other call of its group, SQLite's 64-bit
    SUM overflowed, and every report and session list of the database failed ("integer
    overflow"). The sums are exact on SQLite as on JSONL."""
    huge = 2**63 - 1
    if kind == "jsonl":
        path = write_jsonl(tmp_path / "usage.jsonl", RECORDS)
        line = record_line(
            RECORDS[5], input_tokens=str(huge), output_tokens="0", total_tokens=str(huge)
        )
        append_lines(path, [line.replace('"rec-006"', '"huge"')])
    else:
        path = write_sqlite(tmp_path / "usage.db", RECORDS, SESSIONS)
        insert_sqlite_row(path, "rec-006", "huge", input_tokens=huge, total_tokens=huge)
    code, out, err = cli(*command, "--source", str(path))
    assert code == 0 and err == "", err
    code, out, err = cli("report", "--format", "json", "--source", str(path))
    doc = json.loads(out, parse_float=Decimal)
    assert doc["totals"]["input_tokens"] == huge + sum(r.input_tokens for r in RECORDS)
    assert doc["totals"]["cost_usd"] == Decimal("1.256388569024") + Decimal("1.234567890123")


# --- SQLite ----------------------------------------------------------------------------------

#: Columns of a copy of a sess-chat row, stored with types SQLite accepts but tokenmeter never
#: writes (an INTEGER column keeps text it cannot convert; a TEXT column keeps a blob). Each is in
#: a column the SQL totals read, so every command skips the row.
BAD_SQLITE_COLUMNS: list[dict[str, object]] = [
    {"input_tokens": "many"},
    {"output_tokens": 1.5},
    {"total_tokens": -3},
    {"cache_read_tokens": b"\x01"},
    {"cost_pusd": float("inf"), "estimated_cost_usd": "inf"},
    {"estimated_cost_usd": "NaN"},
    {"estimated_cost_usd": "1e400"},
    {"cost_pusd": "lots"},
    {"cost_pusd": None},  # the exact text and the integer disagree about whether it is priced
    {"tags": "not json"},
    {"tags": "[1]"},
    {"model_name": b"\xff"},
    {"session_name": b"chat"},
    {"timestamp": "garbage"},
    {"timestamp": "2026-13-01T00:00:00.000Z"},
    {"timestamp": "2026-11-03 08:00:00.000Z"},  # not the record format: compares wrongly as text
    {"timestamp": 20261101},
]

#: Bad only in columns no SQL total reads: the totals keep the row (its tokens and cost are
#: sound), the commands that list calls skip and count it.
BAD_LISTED_COLUMNS: list[dict[str, object]] = [
    {"tags": '{"feature": 1}'},
    {"cost_breakdown": "{"},
    {"cost_breakdown": '{"input": "x"}'},
    {"latency_ms": "slow"},
    {"streamed": "yes"},
    {"status": b"ok"},
    {"estimated_cost_usd": "1.2.3"},
]


def test_sqlite_latencies_out_of_range_are_not_ranked(cli: RunCli, tmp_path: Path) -> None:
    """A latency another program stored as Infinity (or below 0, or past 10**12 ms) was ranked:
    ``--latency --format json`` wrote ``Infinity``, which is not JSON, and the table "inf ms".
    Such a latency is left out of the percentiles, as a JSONL record's would be; the call
    still counts in the totals, which do not read it."""
    path = write_sqlite(tmp_path / "usage.db", RECORDS, SESSIONS)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE records SET latency_ms = 100 WHERE id = 'rec-001'")
    conn.commit()
    conn.close()
    for number, latency in enumerate([float("inf"), -5, 1e13]):
        insert_sqlite_row(path, "rec-001", f"odd-{number}", latency_ms=latency)

    def no_constant(name: str) -> None:
        raise AssertionError(f"not JSON: {name}")

    code, out, err = cli("report", "--source", str(path), "--latency", "--format", "json")
    assert code == 0, err
    doc = json.loads(out, parse_constant=no_constant)
    (gpt,) = [row for row in doc["rows"] if row["model"] == "gpt-4o"]
    assert gpt["calls"] == 5 and (gpt["latency_p50_ms"], gpt["latency_p95_ms"]) == (100, 100)
    code, out, err = cli("report", "--source", str(path), "--latency")
    assert code == 0 and "inf" not in out and "-5 ms" not in out, err


def _sqlite_with_bad_rows(path: Path, rows: list[dict[str, object]]) -> Path:
    for number, columns in enumerate(rows):
        insert_sqlite_row(path, "rec-006", f"bad-{number}", **columns)
    return path


@pytest.mark.parametrize("command", COMMANDS, ids=COMMAND_IDS)
def test_sqlite_wrong_types_are_skipped_and_counted(
    cli: RunCli, tmp_path: Path, command: tuple[str, ...]
) -> None:
    path = write_sqlite(tmp_path / "usage.db", RECORDS, SESSIONS)
    code, clean, err = cli(*command, "--source", str(path))
    assert code == 0 and err == ""
    _sqlite_with_bad_rows(path, BAD_SQLITE_COLUMNS)
    code, dirty, err = cli(*command, "--source", str(path))
    assert code == 0, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    count = len(BAD_SQLITE_COLUMNS)
    assert lines[0] == f"tokenmeter: warning: skipped {count} corrupt rows in {path}"
    dirty, skipped = _without_skip_count(command, dirty)
    assert dirty == _without_skip_count(command, clean)[0]
    assert skipped in (None, len(BAD_SQLITE_COLUMNS))


@pytest.mark.parametrize("detailed", [False, True])
def test_sqlite_rows_whose_tags_are_not_json_do_not_fail_a_tag_filter(
    cli: RunCli, tmp_path: Path, detailed: bool
) -> None:
    """``report --tag feature=chat`` over a database holding a row whose tags are not JSON
    (another program's) failed whole ("cannot read usage.db: malformed JSON", exit 1): the
    filter read every row's tags before the unsound ones were left out. Such a row cannot be
    said to hold the tag: the report is the one of the history without it."""
    command = ("report", "--tag", "feature=chat", "--format", "json")
    command += ("--detailed",) if detailed else ()
    path = write_sqlite(tmp_path / "usage.db", RECORDS, SESSIONS)
    code, clean, err = cli(*command, "--source", str(path))
    assert code == 0 and err == "" and json.loads(clean)["totals"]["calls"] > 0
    _sqlite_with_bad_rows(path, BAD_SQLITE_COLUMNS)
    code, dirty, err = cli(*command, "--source", str(path))
    assert code == 0, err
    assert _without_skip_count(command, dirty)[0] == _without_skip_count(command, clean)[0]


def test_the_sinks_index_of_unsound_rows_answers_the_reports_check(tmp_path: Path) -> None:
    """Reports find unsound rows through the partial index the sink keeps: SQLite uses it only
    for the very condition ``sql_valid`` states (else "no query solution"). If this fails,
    ``sql_valid`` changed: add a sink migration that rebuilds the index with the new condition."""
    path = write_sqlite(tmp_path / "usage.db", RECORDS, SESSIONS)
    _sqlite_with_bad_rows(path, BAD_SQLITE_COLUMNS)
    conn = sqlite3.connect(path)
    try:
        columns = table_columns(conn, "records")
        for table, prefix in (("records", ""), ("records r", "r.")):
            found = conn.execute(
                f"SELECT {prefix}id FROM {table} INDEXED BY {UNSOUND_INDEX} "
                f"WHERE NOT {sql_valid(columns, prefix)}"
            ).fetchall()
            assert len(found) == len(BAD_SQLITE_COLUMNS)
    finally:
        conn.close()


@pytest.mark.parametrize("index", ["missing", "stale"])
@pytest.mark.parametrize(
    "command",
    [
        ("report", "--format", "json"),
        ("report", "--by", "tag:feature,day", "--format", "json"),
        ("sessions", "--format", "json"),
    ],
    ids="-".join,
)
def test_without_the_sinks_index_every_row_is_checked(
    cli: RunCli, tmp_path: Path, index: str, command: tuple[str, ...]
) -> None:
    """A database the sink never migrated (no index), or one whose index states another
    condition, gives the same answer: the report then checks every row itself."""
    path = write_sqlite(tmp_path / "usage.db", RECORDS, SESSIONS)
    _sqlite_with_bad_rows(path, BAD_SQLITE_COLUMNS)
    indexed = cli(*command, "--source", str(path))
    assert indexed[0] == 0 and f"skipped {len(BAD_SQLITE_COLUMNS)} corrupt rows" in indexed[2]
    conn = sqlite3.connect(path)
    conn.execute(f"DROP INDEX {UNSOUND_INDEX}")
    if index == "stale":  # misses the text count: used, it would let that row through
        conn.execute(
            f"CREATE INDEX {UNSOUND_INDEX} ON records(timestamp) WHERE NOT (input_tokens >= 0)"
        )
    conn.commit()
    conn.close()
    assert cli(*command, "--source", str(path)) == indexed


LISTING_COMMANDS = [c for c in COMMANDS if c[0] in ("tail", "session") or "--detailed" in c]


@pytest.mark.parametrize("command", LISTING_COMMANDS, ids="-".join)
def test_sqlite_rows_bad_where_calls_are_listed(
    cli: RunCli, tmp_path: Path, command: tuple[str, ...]
) -> None:
    path = write_sqlite(tmp_path / "usage.db", RECORDS, SESSIONS)
    _sqlite_with_bad_rows(path, BAD_LISTED_COLUMNS)
    code, out, err = cli(*command, "--source", str(path))
    assert code == 0, err
    count = len(BAD_LISTED_COLUMNS)
    assert err.splitlines() == [f"tokenmeter: warning: skipped {count} corrupt rows in {path}"]
    if command[0] == "report" and "json" in command:
        doc = json.loads(out, parse_float=Decimal)
        assert len(doc["calls"]) == len(RECORDS)  # listed: only the sound ones
        assert doc["totals"]["calls"] == len(RECORDS) + count  # added up by SQL: all of them


def test_sqlite_sessions_table_with_wrong_types(cli: RunCli, tmp_path: Path) -> None:
    path = write_sqlite(tmp_path / "usage.db", RECORDS, SESSIONS)
    conn = sqlite3.connect(path)
    conn.execute(
        "UPDATE sessions SET name = ?, tags = 'not json', notes = ?, status = 5 "
        "WHERE id = 'sess-chat'",
        [b"\xff", b"\x00"],
    )
    conn.commit()
    conn.close()
    for command in (("sessions",), ("sessions", "--format", "json"), ("session", "sess-chat")):
        code, out, err = cli(*command, "--source", str(path))
        assert code == 0, err
        assert "sess-chat" in out
    code, out, _ = cli("session", "sess-chat", "--source", str(path), "--format", "json")
    doc = json.loads(out)
    assert doc["name"] == "chat" and doc["tags"] == {} and doc["notes"] is None


def test_session_whose_every_row_is_bad(cli: RunCli, tmp_path: Path) -> None:
    path = write_sqlite(tmp_path / "usage.db", RECORDS, SESSIONS)
    insert_sqlite_row(path, "rec-006", "only-bad", session_id="sess-bad", input_tokens="x")
    code, out, err = cli("session", "sess-bad", "--source", str(path))
    assert code == 1 and out == ""
    assert err.splitlines()[-1] == f"tokenmeter: error: no session 'sess-bad' in {path}"


# --- lone surrogates: valid JSON strings that cannot be encoded -----------------------------


@pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
@pytest.mark.parametrize("command", COMMANDS, ids=COMMAND_IDS)
def test_unencodable_text_is_replaced_when_printed(
    cli: RunCli, tmp_path: Path, command: tuple[str, ...], kind: str
) -> None:
    """JSON may hold a lone surrogate (``"\\ud800"``), SQLite text invalid UTF-8: both print."""
    if kind == "jsonl":
        path = write_jsonl(tmp_path / "usage.jsonl", RECORDS)
        odd = record_line(
            RECORDS[5],
            model_name='"gpt\\ud800"',
            session_name='"chat\\udfff"',
            tags='{"feature": "chat", "k\\udc00": "v\\ud83d"}',
        )
        append_lines(path, [odd])
    else:
        path = write_sqlite(tmp_path / "usage.db", RECORDS, SESSIONS)
        insert_sqlite_row(path, "rec-006", "odd")
        conn = sqlite3.connect(path)
        conn.execute(
            "UPDATE records SET model_name = CAST(? AS TEXT), session_name = CAST(? AS TEXT), "
            "tags = CAST(? AS TEXT) WHERE id = 'odd'",
            [b"gpt\xed\xa0\x80", b"chat\xed\xbf\xbf", b'{"feature":"chat","k\xed\xb0\x80":"v"}'],
        )
        conn.commit()
        conn.close()
    code, out, err = cli(*command, "--source", str(path))
    assert code == 0, err
    assert err == ""
    # By session, a store with a sessions table names the session by its stored name.
    named_by_the_store = kind == "sqlite" and "session" in command
    if command[0] in ("report", "tail") and "json" not in command and not named_by_the_store:
        assert "gpt\ufffd" in out or "chat\ufffd" in out
    assert not any("\ud800" <= ch <= "\udfff" for ch in out)


def test_lone_surrogates_through_a_pipe_and_a_file(tmp_path: Path) -> None:
    line = record_line(RECORDS[5], model_name='"gpt\\ud800"', session_name='"s\\udfff"')
    path = append_lines(tmp_path / "usage.jsonl", [line])
    for command in (["report", "--detailed"], ["tail"], ["sessions"]):
        result = run_module(*command, "--source", str(path), cwd=tmp_path)
        assert result.returncode == 0 and result.stderr == "", result.stderr
        assert "gpt\ufffd" in result.stdout or "s\ufffd" in result.stdout
    target = tmp_path / "report.csv"
    result = run_module(
        "report", "--detailed", "--source", str(path), "-o", str(target), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "gpt\ufffd" in target.read_text(encoding="utf-8")


# --- tail -f: a bad line arriving while following --------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
def test_follow_skips_bad_records_that_arrive(kind: str, tmp_path: Path) -> None:
    if kind == "jsonl":
        path = write_jsonl(tmp_path / "usage.jsonl", RECORDS[:1])
    else:
        path = write_sqlite(tmp_path / "usage.db", RECORDS[:1], SESSIONS)
    args = ["tail", "-f", "-n", "1", "--interval", "0.1", "--source", str(path)]
    proc = start_module(*args)
    assert proc.stdout is not None
    try:
        assert "gpt-4o" in proc.stdout.readline()
        if kind == "jsonl":
            append_lines(path, [record_line(RECORDS[5], input_tokens='"many"')])
            append_lines(path, [record_line(RECORDS[5], estimated_cost_usd="1e400")])
            write_jsonl(path, [rec(70, "2026-11-09T00:00:00.000Z", "openai", "after", 1, 1, "1")])
        else:
            insert_sqlite_row(path, "rec-001", "bad-1", input_tokens="many")
            insert_sqlite_row(path, "rec-001", "bad-2", estimated_cost_usd="1e400")
            insert_sqlite_row(path, "rec-001", "after", model_name="after")
        deadline = time.monotonic() + 30
        line = ""
        while "after" not in line and time.monotonic() < deadline:
            line = proc.stdout.readline()
        assert "openai/after" in line
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    noun = "lines" if kind == "jsonl" else "rows"
    assert err.splitlines() == [f"tokenmeter: warning: skipped 2 corrupt {noun} in {path}"]


# --- hostile command-line values -------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["report", "--since", "99999999d"],
        ["report", "--since", "9999999999999999999999w"],
        ["report", "--since", "0001-01-01T00:00+01:00"],
        ["report", "--until", "0001-01-01T00:00+00:01"],
        ["sessions", "--since", "99999999d"],
        ["tail", "--interval", "nan"],
        ["tail", "--interval", "inf"],
        ["tail", "--interval", "1e300"],
        ["tail", "--interval", "1e-300"],  # polled without pause, a CPU busy
        ["tail", "--interval", "0"],
        ["tail", "-n", "99999999999999999999"],
        ["report", "--detailed", "--limit", "99999999999999999999"],
    ],
)
def test_out_of_range_arguments_are_one_line_errors(
    cli: RunCli, jsonl_file: Path, args: list[str]
) -> None:
    code, out, err = cli(*args, "--source", str(jsonl_file))
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("tokenmeter: error:"), err


@pytest.mark.parametrize("command", ["report", "sessions", "alerts"])
def test_a_relative_date_of_thousands_of_digits_is_a_bad_date(
    cli: RunCli, jsonl_file: Path, command: str
) -> None:
    """Past 4,300 digits int() refuses the number: the error was Python's ('Exceeds the limit
    (4300 digits) for integer string conversion ... use sys.set_int_max_str_digits()')."""
    code, out, err = cli(command, "--since", "9" * 5000 + "d", "--source", str(jsonl_file))
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "bad date" in err and "4300" not in err, err


@pytest.mark.parametrize(
    ("window", "calls"),
    [
        (["--until", "9999-12-31"], 6),  # the end of that day is past datetime's range
        (["--until", "9999-12-31T23:59:59.999"], 6),
        (["--since", "0999-01-01"], 6),  # a year below 1000 still sorts before 2026
        (["--since", "0001-01-01", "--until", "0999-12-31"], 0),
        # a window that starts after now and has no end: nothing earlier to compare it with
        (["--since", "9999-12-31T23:59:59.999"], 0),
        (["--since", "6100-01-01", "--compare"], 0),
    ],
)
def test_far_dates_still_work(cli: RunCli, source: Path, window: list[str], calls: int) -> None:
    code, out, err = cli("report", "--source", str(source), *window, "--format", "json")
    assert code == 0, err
    assert json.loads(out)["totals"]["calls"] == calls
