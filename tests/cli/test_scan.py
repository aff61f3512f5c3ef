"""The report's fast JSONL scan agrees with the general path (full parse + ``check_record``).

``JsonlScan`` recognises the lines the JSONL sink writes with one pattern and decodes only the
fields totals read; every other line goes through the general path. These tests hold the two to
the same answer on each field's edge cases, valid and not: same records kept, same values (a cost
digit for digit, scale included), same lines skipped. And they check that the lines the sink
writes do take the fast path, so that the comparison is not between the general path and itself.
"""

from __future__ import annotations

import itertools
import json
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tokenmeter._models import UsageRecord
from tokenmeter.cli import _source
from tokenmeter.cli._source import MAX_LINE_BYTES, parse_record
from tokenmeter.cli.reports import _query
from tokenmeter.cli.reports._scan import _LINE, JsonlScan

from .conftest import RECORDS, RunCli, write_jsonl
from .test_bad_records import BAD_JSON_FIELDS

BASE = RECORDS[0]  # priced, in a session, tagged, with a cost breakdown
SCANNED = (
    "timestamp",
    "model_provider",
    "model_name",
    "session_id",
    "session_name",
    "status",
    "estimated",
    "tags",
)
COUNTS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "total_tokens",
)


_LINE_IDS = itertools.count()


def compact_line(base: UsageRecord, **raw: str) -> str:
    """``base`` as the JSONL sink writes it, with an id of its own and the named fields replaced
    by raw JSON text."""
    fields = {**base.to_json_dict(), "id": f"{base.id}-line-{next(_LINE_IDS)}"}
    text = {
        k: raw.pop(k) if k in raw else json.dumps(v, separators=(",", ":"), ensure_ascii=False)
        for k, v in fields.items()
    }
    text.update(raw)
    return "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in text.items()) + "}"


#: Values the pattern itself decides on (it accepts or refuses them without the general path).
EDGES: list[tuple[str, str]] = [
    *BAD_JSON_FIELDS,
    ("estimated_cost_usd", "0.5"),
    ("estimated_cost_usd", "0.50"),  # trailing zero: a scale repr() would not keep
    ("estimated_cost_usd", "5.0"),
    ("estimated_cost_usd", "5"),
    ("estimated_cost_usd", "10"),
    ("estimated_cost_usd", "0"),
    ("estimated_cost_usd", "-0"),
    ("estimated_cost_usd", "0.0"),
    ("estimated_cost_usd", "-0.0"),
    ("estimated_cost_usd", "-0.25"),
    ("estimated_cost_usd", "1e-05"),
    ("estimated_cost_usd", "1.5e-05"),
    ("estimated_cost_usd", "1E-5"),
    ("estimated_cost_usd", "5e-3"),
    ("estimated_cost_usd", "10e-3"),
    ("estimated_cost_usd", "0.00001"),
    ("estimated_cost_usd", "0.10000000000000001"),
    ("estimated_cost_usd", "0.123456789012345"),
    ("estimated_cost_usd", "0.1234567890123456"),
    ("estimated_cost_usd", "999999999.5"),
    ("estimated_cost_usd", "1000000000"),
    ("estimated_cost_usd", "1000000000.5"),
    ("estimated_cost_usd", "1e9"),
    ("estimated_cost_usd", "null"),
    ("input_tokens", "0"),
    ("input_tokens", "-0"),
    ("input_tokens", "01"),
    ("input_tokens", str(10**18 - 1)),
    ("input_tokens", str(10**18)),
    ("input_tokens", str(2**63 - 1)),
    ("input_tokens", "null"),
    ("reasoning_tokens", "7"),
    ("timestamp", '"2026-02-29T00:00:00.000Z"'),
    ("timestamp", '"2024-02-29T00:00:00.000Z"'),
    ("timestamp", '"2026-11-01T24:00:00.000Z"'),
    ("timestamp", '"2026-11-01T23:59:60.000Z"'),
    ("timestamp", '"2026-11-01T10:00:00Z"'),
    ("timestamp", '"2026-11-01T10:00:00.000+02:00"'),
    ("timestamp", '"2026-11-01T10:00:00.000"'),
    ("model_name", '"gpt-\\u00e9"'),
    ("model_name", '"caf\u00e9 \U0001f600"'),
    ("model_name", '"a\\"b"'),
    ("model_name", '"\\ud800"'),
    ("model_name", '"tab\there"'),
    ("model_name", '""'),
    ("model_name", "null"),
    ("model_provider", "null"),
    ("session_id", "null"),
    ("session_name", '"POST /draft"'),
    ("status", '"error"'),
    ("status", '"blocked"'),
    ("status", "null"),
    ("error", '"boom \\"quoted\\" \\n"'),
    ("error", '"\\x"'),
    ("id", '"\\u12"'),
    ("tags", "{}"),
    ("tags", '{"a":"x","a":"y"}'),
    ("tags", '{"k\\"":"v\\\\"}'),
    ("tags", '{"a": "x"}'),
    ("tags", "null"),
    ("latency_ms", "0"),
    ("latency_ms", "12"),
    ("latency_ms", "12.5"),
    ("latency_ms", "1e-3"),
    ("latency_ms", "999999999999"),
    ("latency_ms", "1000000000000"),
    ("latency_ms", "1e12"),
    ("latency_ms", "1e13"),
    ("latency_ms", "null"),
    ("estimated", "true"),
    ("estimated", "null"),
    ("streamed", "true"),
    ("streamed", "null"),
    ("cost_breakdown", '{"input":0.5,"output":null}'),
    ("cost_breakdown", '{"input":1e9}'),
    ("cost_breakdown", '{"input":-1e-05}'),
    ("cost_breakdown", "{}"),
    ("modalities", '{"input_text":5}'),
    ("modalities", '{"input_text":-5}'),
    ("modalities", '{"input_text":"x"}'),
    ("modalities", "null"),
    ("tool_requests", '{"web_search":1}'),
    ("unknown_new_field", '"from a newer writer"'),
]

#: Of those, the ones a sink could write: they must take the fast path.
FAST = {
    ("estimated_cost_usd", "0.5"),
    ("estimated_cost_usd", "5.0"),
    ("estimated_cost_usd", "5"),
    ("estimated_cost_usd", "-0.25"),
    ("estimated_cost_usd", "1e-05"),
    ("estimated_cost_usd", "1.5e-05"),
    ("estimated_cost_usd", "0.123456789012345"),
    ("estimated_cost_usd", "0.1234567890123456"),
    ("estimated_cost_usd", "null"),
    ("input_tokens", str(10**18 - 1)),
    ("timestamp", '"2024-02-29T00:00:00.000Z"'),
    ("model_name", '"caf\u00e9 \U0001f600"'),
    ("status", '"error"'),
    ("error", '"boom \\"quoted\\" \\n"'),
    ("tags", '{"a":"x","a":"y"}'),
    ("latency_ms", "999999999999"),
    ("latency_ms", "1e-3"),
    ("cost_breakdown", '{"input":-1e-05}'),
    ("modalities", '{"input_text":5}'),
}


def _scan(path: Path) -> tuple[list[tuple[dict[str, Any], tuple[int, ...], Any]], int]:
    scan = JsonlScan(path, tags=True)
    found = list(scan)
    return found, scan.skipped


def _same_cost(a: Decimal | None, b: Decimal | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.as_tuple() == b.as_tuple()  # digit for digit: 0.50 is not 0.5 here


@pytest.mark.parametrize(("field", "raw"), EDGES, ids=[f"{f}={r[:30]}" for f, r in EDGES])
def test_scan_agrees_with_the_general_path(tmp_path: Path, field: str, raw: str) -> None:
    line = compact_line(BASE, **{field: raw})
    path = tmp_path / "usage.jsonl"
    path.write_text(line + "\n", encoding="utf-8", errors="surrogatepass")
    data = path.read_bytes()
    expected = parse_record(data)
    found, skipped = _scan(path)
    if expected is None:
        assert (found, skipped) == ([], 1)
        return
    assert skipped == 0 and len(found) == 1
    record, counts, cost = found[0]
    assert {k: record[k] for k in SCANNED} == {k: expected[k] for k in SCANNED}
    latency = expected["latency_ms"]
    assert record["latency_ms"] == (None if latency is None else float(latency))
    assert counts == tuple(expected[k] for k in COUNTS)
    assert _same_cost(cost, expected["estimated_cost_usd"])
    if (field, raw) in FAST:
        assert _LINE(data.decode("utf-8", "surrogatepass")) is not None


def test_the_sinks_lines_take_the_fast_path(tmp_path: Path) -> None:
    many = [
        *RECORDS,
        RECORDS[1].model_copy(
            update={"id": "more-1", "modalities": {"input_text": 3}, "latency_ms": 812.25}
        ),
        RECORDS[2].model_copy(
            update={"id": "more-2", "tool_requests": {"web_search": 2}, "estimated": True}
        ),
    ]
    path = write_jsonl(tmp_path / "usage.jsonl", many)
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    assert len(lines) == len(many)
    assert all(_LINE(line) for line in lines)
    found, skipped = _scan(path)
    assert skipped == 0
    for (record, counts, cost), line in zip(found, lines, strict=True):
        expected = parse_record(line.encode())
        assert expected is not None
        assert {k: record[k] for k in SCANNED} == {k: expected[k] for k in SCANNED}
        assert counts == tuple(expected[k] for k in COUNTS)
        assert _same_cost(cost, expected["estimated_cost_usd"])


def test_a_record_followed_by_more_on_its_line_is_skipped(tmp_path: Path) -> None:
    line = compact_line(BASE)
    path = tmp_path / "usage.jsonl"
    other = compact_line(BASE)
    path.write_text(f"{line}{line}\n{line} x\n{line[:-1]}\n{line}\r\n{other}\n", encoding="utf-8")
    found, skipped = _scan(path)
    assert skipped == 3 and len(found) == 2  # "\r\n" is whitespace after the object: kept


def test_tags_are_decoded_only_when_asked(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "usage.jsonl", RECORDS[:1])
    assert next(iter(JsonlScan(path, tags=False)))[0]["tags"] == {}
    assert next(iter(JsonlScan(path, tags=True)))[0]["tags"] == {"feature": "chat"}


# --- a large file read in two halves at once ---------------------------------------------------

#: (arguments) of reports that must read the same in one pass and in two halves.
SPLIT_REPORTS = [
    ("--by", "model"),
    ("--by", "family,day", "--latency", "--tz", "Asia/Kolkata"),
    ("--by", "tag:feature,status", "--provider", "openai", "--since", "2026-11-01T01:00"),
    ("--by", "session", "--by", "provider", "--estimated"),
]


def _two_halves_file(path: Path, middle_line: str) -> Path:
    """The fixture records many times over, bad lines among them, ``middle_line`` in the middle."""
    lines = [compact_line(r) for _ in range(40) for r in RECORDS]
    lines[7] = compact_line(BASE, input_tokens='"many"')
    lines[-3] = lines[-3][:50]  # torn
    lines.insert(len(lines) // 2, middle_line)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("middle", ["record", "over-long"])
@pytest.mark.parametrize("args", SPLIT_REPORTS, ids=" ".join)
def test_two_halves_read_as_one_pass(
    cli: RunCli,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    middle: str,
    args: tuple[str, ...],
) -> None:
    """Read in two halves (the second in a child process), a report is the one-pass report, digit
    for digit: a line is never read twice or lost where the halves meet, even when the middle
    falls inside a line too long to read, and the skipped lines of both halves are counted."""
    long_line = compact_line(BASE, id=json.dumps("x" * (MAX_LINE_BYTES + 10)))
    path = _two_halves_file(
        tmp_path / "usage.jsonl", long_line if middle == "over-long" else compact_line(BASE)
    )
    command = ("report", *args, "--format", "json", "--source", str(path))
    one_pass = cli(*command)
    assert one_pass[0] == 0, one_pass[2]
    assert f"skipped {3 if middle == 'over-long' else 2} corrupt lines" in one_pass[2]
    halves: list[int] = []
    start_half = _query._start_half

    def spied(*start: Any) -> Any:
        halves.append(start[-1])
        return start_half(*start)

    monkeypatch.setattr(_query, "_start_half", spied)
    monkeypatch.setattr(_query, "SPLIT_BYTES", 1)
    assert cli(*command) == one_pass
    assert len(halves) == 1 and 0 < halves[0] < path.stat().st_size
    if middle == "over-long":  # the second half begins after it
        assert halves[0] > path.read_bytes().index(long_line.encode())


def test_a_half_whose_child_dies_is_read_by_the_parent(
    cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _two_halves_file(tmp_path / "usage.jsonl", compact_line(BASE))
    command = ("report", "--by", "model", "--format", "json", "--source", str(path))
    one_pass = cli(*command)
    monkeypatch.setattr(_query, "SPLIT_BYTES", 1)
    monkeypatch.setattr(_query, "_half_in_child", lambda *_: os._exit(1))
    assert cli(*command) == one_pass


def _ids_file(path: Path, ids: list[str]) -> Path:
    lines = [compact_line(RECORDS[i % 3], id=json.dumps(rid)) for i, rid in enumerate(ids)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("args", SPLIT_REPORTS[:2], ids=" ".join)
def test_a_record_written_twice_is_counted_once_in_one_pass_and_in_two_halves(
    cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]
) -> None:
    """The same record twice in a JSONL file (two JSONL sinks on one path) was counted twice,
    where SQLite keeps one row per id. A record whose id is among the last ``SAME_ID_WINDOW``
    records' is now counted once, and the halves read the same: what the second half counted of
    a record written twice across the middle is taken back."""
    monkeypatch.setattr(_source, "SAME_ID_WINDOW", 5)
    ids = [f"r{i}" for i in range(60)]
    # Twice at distances 1..7 everywhere, the middle among them; a third copy further on.
    ids = [rid for i, rid in enumerate(ids) for rid in [rid, ids[i - i % 7]]]
    ids.insert(len(ids) // 2, "r1")
    path = _ids_file(tmp_path / "usage.jsonl", ids)
    expected = [i for i, rid in enumerate(ids) if rid not in ids[max(0, i - 5) : i]]
    command = ("report", *args, "--format", "json", "--source", str(path))
    code, out, err = cli(*command)
    assert code == 0, err
    assert json.loads(out)["totals"]["calls"] == len(expected) < len(ids)
    monkeypatch.setattr(_query, "SPLIT_BYTES", 1)
    assert cli(*command) == (code, out, err)
    code, out, err = cli("report", "--detailed", "--format", "json", "--source", str(path))
    assert len(json.loads(out)["calls"]) == len(expected)
