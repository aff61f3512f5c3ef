"""``report --detailed --limit 0`` (every call: an export) in memory that does not grow with the
number of calls: the calls wait in a temporary file (``_spool``) and the machine formats are
written a call at a time. It held every call in memory, several times over (300,000 calls: 1.6 GB
for CSV, 2.2 GB for JSON)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import tempfile
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tokenmeter._models import UsageRecord
from tokenmeter.cli import _source
from tokenmeter.cli.reports import _spool
from tokenmeter.cli.reports._format import dumps_exact, exact_pieces

from .conftest import (
    MIB,
    RunCli,
    history,
    peak_python_memory,
    subprocess_env,
    write_jsonl,
    write_sqlite,
)


def _store(tmp_path: Path, kind: str, records: list[UsageRecord]) -> Path:
    if kind == "sqlite":
        return write_sqlite(tmp_path / "usage.db", records, [])
    return write_jsonl(tmp_path / "usage.jsonl", records)


def _listed(text: str, fmt: str) -> list[tuple[str, str, int, Decimal]]:
    """(timestamp, model, input tokens, cost) of each call a CSV or JSON report lists."""
    if fmt == "json":
        calls = json.loads(text, parse_float=Decimal)["calls"]
    else:
        calls = list(csv.DictReader(io.StringIO(text)))
    return [
        (c["timestamp"], c["model"], int(c["input_tokens"]), Decimal(str(c["cost_usd"])))
        for c in calls
    ]


def _expected(records: list[UsageRecord]) -> list[tuple[str, str, int, Decimal]]:
    return [
        (
            r.timestamp.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            r.model_name,
            r.input_tokens,
            Decimal(str(r.estimated_cost_usd)),
        )
        for r in records
    ]


def _peak_listing(
    cli: RunCli, source: Path, out: Path, fmt: str, records: list[UsageRecord]
) -> int:
    """The peak Python memory of listing every call of ``source`` into ``out`` (after one run
    that imports what it needs: modules imported once are not what is measured), checked."""
    args = ("report", "--source", str(source), "--detailed", "--limit", "0", "-o", str(out))
    cli(*args)
    results: list[tuple[int, str, str]] = []
    peak = peak_python_memory(lambda: results.append(cli(*args)))
    code, _, err = results[0]
    assert code == 0, err
    assert _listed(out.read_text(encoding="utf-8"), fmt) == _expected(records)
    return peak


@pytest.mark.parametrize("fmt", ["csv", "json"])
@pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
def test_every_call_is_listed_in_memory_that_does_not_grow(
    cli: RunCli, tmp_path: Path, kind: str, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_spool, "IN_MEMORY", 100)  # past 100 calls, the list waits on disk
    peaks = {}
    for count in (400, 2_400):
        folder = tmp_path / f"{kind}{count}"
        records = history(count)
        source = _store(folder, kind, records)
        peaks[count] = _peak_listing(cli, source, folder / f"calls.{fmt}", fmt, records)
    grown = peaks[2_400] - peaks[400]
    # Held in memory, 2,000 more calls took ~10 MiB more (about 5 KB a call).
    assert grown < MIB, f"2,000 more calls held {grown / MIB:.1f} MiB more"


@pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
def test_a_long_limit_lists_the_newest_calls_oldest_first(
    cli: RunCli, tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_spool, "IN_MEMORY", 10)  # a --limit past it is spooled
    records = history(60)
    source = _store(tmp_path, kind, records)
    for limit, listed in ((25, records[-25:]), (60, records), (100, records)):
        args = ("report", "--source", str(source), "--detailed", "--limit", str(limit))
        code, out, err = cli(*args, "--format", "json")
        assert code == 0, err
        assert _listed(out, "json") == _expected(listed)
        assert json.loads(out)["calls_listed_all"] is (limit >= 60)
        assert ("listed the latest 25 of 60 calls" in err) is (limit == 25)
        code, out, err = cli(*args, "--format", "csv")
        assert code == 0 and _listed(out, "csv") == _expected(listed)


@pytest.mark.parametrize("limit", [5, 25, 0])
def test_a_file_out_of_time_order_lists_the_newest_calls_as_sqlite_does(
    cli: RunCli, tmp_path: Path, limit: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A JSONL file holds its calls in the order they were written, not in time order (a
    backfill recorded with ``timestamp=``, several processes): ``--limit N`` listed its last N
    lines (the 2026-11-01 call of a backfill, where SQLite lists the 2026-11-03 one) and
    ``--limit 0`` listed the calls in file order."""
    monkeypatch.setattr(_spool, "IN_MEMORY", 10)  # --limit 25 and 0 are spooled, 5 is not
    monkeypatch.setattr(_spool, "RUN_LENGTH", 7)  # their times sorted in runs, then merged
    records = history(40)
    written = records[20:] + records[:5] + records[30:] + records[5:20]  # some twice: once
    write_sqlite(tmp_path / "usage.db", written, [])
    write_jsonl(tmp_path / "usage.jsonl", written)
    newest = records[-limit:] if limit else records
    for source in ("usage.db", "usage.jsonl"):
        args = ("report", "--source", str(tmp_path / source), "--detailed", "--limit", str(limit))
        code, out, err = cli(*args, "--format", "json")
        assert code == 0, err
        assert _listed(out, "json") == _expected(newest), source


def test_a_file_out_of_time_order_is_put_in_order_in_memory_that_does_not_grow(
    cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ordering a JSONL file's calls kept each call's timestamp as a str in memory, and sorted
    them all at once: about 80 bytes a call (300,000 calls: max RSS 63 MB before, 84 MB after).
    Their times now wait on disk in sorted runs, merged as the calls are read back."""
    monkeypatch.setattr(_spool, "IN_MEMORY", 100)
    monkeypatch.setattr(_spool, "RUN_LENGTH", 1_000)  # runs to merge, each sorted at once
    monkeypatch.setattr(_source, "SAME_ID_WINDOW", 100)  # the ids a read remembers: not measured
    peaks = {}
    for count in (1_000, 9_000):
        records = history(count)
        written = records[1::2] + records[::2]  # every other call first: a backfill
        source = write_jsonl(tmp_path / f"usage{count}.jsonl", written)
        peaks[count] = _peak_listing(cli, source, tmp_path / f"calls{count}.csv", "csv", records)
    per_call = (peaks[9_000] - peaks[1_000]) / 8_000
    assert per_call < 24, f"each call held {per_call:.0f} bytes more"  # its place: 8


def test_no_call_in_the_window_is_an_empty_list(cli: RunCli, tmp_path: Path) -> None:
    source = _store(tmp_path, "jsonl", history(3))
    args = ("report", "--source", str(source), "--detailed", "--limit", "0")
    args += ("--until", "2026-10-01")
    code, out, err = cli(*args, "--format", "json")
    assert code == 0, err
    assert json.loads(out)["calls"] == [] and '"calls": []' in out
    code, out, err = cli(*args, "--format", "csv")
    assert code == 0 and out.count("\n") == 1  # the header alone


def test_pieces_make_the_same_text_as_the_whole_document() -> None:
    calls = [{"cost": Decimal("0.10"), "tags": {"a": "b"}, "parts": [1, [2]]}, {}]
    document = {"source": "x", "rows": [], "calls": calls, "empty": {}, "last": True}
    streamed = {**document, "calls": iter(calls)}
    assert "".join(exact_pieces(streamed)) == dumps_exact(document)
    assert "".join(exact_pieces({**document, "calls": iter([])})) == dumps_exact(
        {**document, "calls": []}
    )
    assert "".join(exact_pieces({})) == dumps_exact({}) == "{}"


def test_without_a_temporary_file_the_calls_are_listed_from_memory(
    cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only system without a writable /tmp still gets its report, with a warning."""
    records = history(30)
    source = _store(tmp_path, "sqlite", records)
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    monkeypatch.setattr(tempfile, "tempdir", str(not_a_folder))
    monkeypatch.setattr(_spool, "IN_MEMORY", 10)
    for limit, listed in (("0", records), ("20", records[-20:])):
        args = ("report", "--source", str(source), "--detailed", "--limit", limit)
        code, out, err = cli(*args, "--format", "csv")
        assert code == 0 and _listed(out, "csv") == _expected(listed)
        assert err.splitlines()[0] == (
            f"tokenmeter: warning: cannot keep the calls listed in a temporary file in "
            f"{not_a_folder}: Not a directory (set TMPDIR to a directory with room); the calls "
            "are listed from memory"
        )
    # A list that fits in memory never asks for a file.
    args = ("report", "--source", str(source), "--detailed", "--limit", "0", "--format", "csv")
    code, out, err = cli(*args, "--until", "2026-11-01T00:00:08Z")
    assert code == 0 and _listed(out, "csv") == _expected(records[:9]) and err == ""


@pytest.mark.parametrize("output", ["file", "stdout"])
def test_a_full_disk_while_the_calls_wait_is_one_line(tmp_path: Path, output: str) -> None:
    """The temporary file's writes fail part-way (a real file size limit, as a full disk makes
    them fail): the report says so in one line, and an output file is left as it was."""
    source = _store(tmp_path, "jsonl", history(2_400))  # ~500 KB of calls to keep
    out = tmp_path / "calls.csv"
    out.write_text("the previous export\n")
    args = ["report", "--source", str(source), "--detailed", "--limit", "0", "--format", "csv"]
    args += ["-o", str(out)] if output == "file" else []
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))\n"
        "from tokenmeter.cli import main\n"
        "from tokenmeter.cli.reports import _spool\n"
        "_spool.IN_MEMORY = 100\n"
        f"sys.exit(main({args!r}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [
        f"tokenmeter: error: cannot keep the calls listed in a temporary file in "
        f"{tempfile.gettempdir()}: File too large (set TMPDIR to a directory with room)"
    ]
    assert out.read_text() == "the previous export\n"


def test_exact_json_writes_every_other_value_as_json_does() -> None:
    """The writer's scalars skip ``json.dumps``'s dispatch (a million calls write twenty million
    of them): the same text, hostile strings and big integers included; Decimals stay exact."""
    values: list[Any] = ["", 'q"b\\s/', "\ud800", "\x00\x1f\x7f", "é€𝄞", "\u2028"]
    values += [0, -1, 2**70, True, False, None, 1.5, float("nan"), float("-inf")]
    document = {"k\udfff": values, "nested": {"": {}, "list": [values, ()]}, "t": tuple(values)}
    assert dumps_exact(document) == json.dumps(document, indent=2)
    assert dumps_exact([Decimal("1.2300"), Decimal("0E-12"), Decimal("1E+3")]) == (
        "[\n  1.23,\n  0,\n  1000\n]"
    )
