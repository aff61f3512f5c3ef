"""Finding the numbers: filters, groupings, calendars, comparison, latency (SQLite = JSONL)."""

from __future__ import annotations

import csv
import html
import io
import json
import random
import re
import sqlite3
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tokenmeter.cli.reports import _query

from .conftest import (
    SESSIONS,
    RunCli,
    append_lines,
    rec,
    record_line,
    renamed_session,
    write_jsonl,
    write_sqlite,
)

CHAT = ("s-1", "POST /draft")


def _records() -> list[Any]:
    base = [
        rec(
            1,
            "2026-11-01T10:00:00.000Z",
            "openai",
            "gpt-4o-2024-08-06",
            100,
            10,
            "0.01",
            session=("s-1", "POST /draft"),
            tags={"team": "a"},
        ),
        rec(
            2,
            "2026-11-01T23:30:00.000Z",
            "openai",
            "gpt-4o",
            200,
            20,
            "0.02",
            session=("s-2", "POST /draft"),
            tags={"team": "b"},
        ),
        rec(
            3,
            "2026-11-02T01:00:00.000Z",
            "anthropic",
            "claude-sonnet-4-5",
            300,
            30,
            "0.04",
            session=("s-3", "GET /x"),
            status="error",
            error="APIError",
        ),
        rec(
            4,
            "2026-11-08T12:00:00.000Z",
            "openai",
            "gpt-4o",
            400,
            40,
            "0.08",
            session=("s-4", "POST /draft"),
        ),
        rec(5, "2026-11-09T12:00:00.000Z", "openai", "gpt-4o-mini", 10, 1, None, status="blocked"),
    ]
    latencies = [100.0, 300.0, 200.0, 400.0, None]
    estimated = [False, True, False, False, False]
    return [
        r.model_copy(update={"latency_ms": lat, "estimated": est})
        for r, lat, est in zip(base, latencies, estimated, strict=True)
    ]


@pytest.fixture(params=["sqlite", "jsonl"])
def data(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    if request.param == "sqlite":
        return write_sqlite(tmp_path / "usage.db", _records(), SESSIONS)
    return write_jsonl(tmp_path / "usage.jsonl", _records())


def report(cli: RunCli, data: Path, *args: str) -> dict[str, Any]:
    code, out, err = cli("report", "--source", str(data), "--format", "json", *args)
    assert code == 0, err
    return json.loads(out, parse_float=Decimal)  # type: ignore[no-any-return]


def keys(doc: dict[str, Any], *columns: str) -> dict[tuple[str, ...], dict[str, Any]]:
    return {tuple(row[c] for c in columns): row for row in doc["rows"]}


@pytest.mark.parametrize(
    ("args", "calls"),
    [
        (["--provider", "openai"], 4),
        (["--provider", "openai,anthropic"], 5),
        (["--provider", "OpenAI"], 4),  # a provider in any case, or by an alias
        (["--provider", "Anthropic", "--provider", "gemini"], 1),
        (["--model", "gpt-4o"], 2),
        (["--model", "gpt-4o", "--model", "gpt-4o-mini"], 3),
        (["--session-name", "POST /draft"], 3),
        (["--tag", "team=a"], 1),
        (["--tag", "team=a", "--tag", "team=b"], 0),  # every tag filter must hold
        (["--status", "error"], 1),
        (["--status", "blocked"], 1),
        (["--status", "ok"], 3),
        (["--status", "error,blocked"], 2),
        (["--estimated"], 1),
        (["--no-estimated"], 4),
        (["--provider", "openai", "--status", "ok", "--no-estimated"], 2),
    ],
)
def test_filters(cli: RunCli, data: Path, args: list[str], calls: int) -> None:
    doc = report(cli, data, *args)
    assert doc["totals"]["calls"] == calls
    assert sum(row["calls"] for row in doc["rows"]) == calls


@pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
def test_model_filter_finds_the_model_asked_for_too(cli: RunCli, tmp_path: Path, kind: str) -> None:
    """``--model gpt-4o-mini`` found none of the calls made with that model: their records name
    the dated model that answered (``gpt-4o-mini-2024-07-18``) beside the one asked for."""
    made = [
        rec(1, "2026-11-01T10:00:00.000Z", "openai", "gpt-4o-mini-2024-07-18", 10, 1, "0.01"),
        rec(2, "2026-11-01T11:00:00.000Z", "openai", "gpt-4o-mini-2024-07-18", 10, 1, "0.01"),
        rec(3, "2026-11-01T12:00:00.000Z", "openai", "gpt-4o-2024-08-06", 10, 1, "0.01"),
    ]
    made[0] = made[0].model_copy(update={"request_model": "gpt-4o-mini"})
    made[2] = made[2].model_copy(update={"request_model": "gpt-4o"})
    if kind == "sqlite":
        data = write_sqlite(tmp_path / "usage.db", made, [])
    else:
        data = write_jsonl(tmp_path / "usage.jsonl", made)
    assert report(cli, data, "--model", "gpt-4o-mini")["totals"]["calls"] == 1
    assert report(cli, data, "--model", "gpt-4o-mini-2024-07-18")["totals"]["calls"] == 2
    assert report(cli, data, "--model", "gpt-4o-mini", "--model", "gpt-4o")["totals"]["calls"] == 2


def test_error_blocked_estimated_columns(cli: RunCli, data: Path) -> None:
    totals = report(cli, data)["totals"]
    assert (totals["error_calls"], totals["blocked_calls"], totals["estimated_calls"]) == (1, 1, 1)
    assert totals["unpriced_calls"] == 0  # the blocked call has no cost: it cost nothing
    assert totals["avg_cost_per_call_usd"] == Decimal("0.0375")  # 0.15 over 4 priced calls


def test_calls_a_budget_blocked_cost_nothing(cli: RunCli, data: Path) -> None:
    """A row or report of blocked calls only (never sent, no unpriced call among them) read
    cost n/a / null, an unknown spending: ``--status blocked`` said "Total cost: n/a"."""
    rows = keys(report(cli, data, "--by", "status"), "status")
    assert rows[("blocked",)]["cost_usd"] == 0 and rows[("blocked",)]["unpriced_calls"] == 0
    doc = report(cli, data, "--status", "blocked", "--by", "model")
    assert doc["totals"]["cost_usd"] == 0 and doc["rows"][0]["cost_usd"] == 0
    code, out, err = cli(
        "report", "--source", str(data), "--status", "blocked", "--format", "markdown"
    )
    assert code == 0, err
    assert "- **Total cost**: $0.00" in out.splitlines()


def test_bad_status_is_a_usage_error(cli: RunCli, data: Path) -> None:
    code, _, err = cli("report", "--source", str(data), "--status", "failed")
    assert code == 2 and "unknown --status failed" in err


@pytest.mark.parametrize("option", ["--provider", "--status"])
@pytest.mark.parametrize("value", ["", ",", " , "])
def test_a_filter_naming_nothing_is_a_usage_error(
    cli: RunCli, data: Path, option: str, value: str
) -> None:
    """``--provider "$UNSET"`` kept no provider and so filtered nothing: a report of every call
    whose header names no filter, as if the option had not been given."""
    code, out, err = cli("report", "--source", str(data), option, value)
    assert code == 2 and out == ""
    assert err.splitlines() == [f"tokenmeter: error: {option} {value!r} names no value"]


def test_group_by_session_name(cli: RunCli, data: Path) -> None:
    rows = keys(report(cli, data, "--by", "name"), "session")
    assert rows[("POST /draft",)]["calls"] == 3  # three sessions, one row
    assert rows[("POST /draft",)]["cost_usd"] == Decimal("0.11")
    assert rows[("GET /x",)]["calls"] == 1 and rows[("",)]["calls"] == 1


def test_group_by_model_family(cli: RunCli, data: Path) -> None:
    rows = keys(report(cli, data, "--by", "family"), "provider", "family")
    assert rows[("openai", "gpt-4o")]["calls"] == 3  # the dated snapshot joins its family
    assert rows[("openai", "gpt-4o")]["cost_usd"] == Decimal("0.11")
    assert rows[("openai", "gpt-4o-mini")]["calls"] == 1


@pytest.mark.parametrize(
    ("by", "tz", "expected"),
    [
        ("day", "UTC", {"2026-11-01": 2, "2026-11-02": 1, "2026-11-08": 1, "2026-11-09": 1}),
        # 23:30 UTC on Nov 1 is Nov 2 in Paris (UTC+1); 01:00 UTC on Nov 2 is 20:00 Nov 1 in NY.
        (
            "day",
            "Europe/Paris",
            {"2026-11-01": 1, "2026-11-02": 2, "2026-11-08": 1, "2026-11-09": 1},
        ),
        ("day", "America/New_York", {"2026-11-01": 3, "2026-11-08": 1, "2026-11-09": 1}),
        (
            "week",
            "UTC",
            {"week of 2026-10-26": 2, "week of 2026-11-02": 2, "week of 2026-11-09": 1},
        ),
        ("month", "UTC", {"2026-11": 5}),
        (
            "hour",
            "UTC",
            {
                "2026-11-01 10:00": 1,
                "2026-11-01 23:00": 1,
                "2026-11-02 01:00": 1,
                "2026-11-08 12:00": 1,
                "2026-11-09 12:00": 1,
            },
        ),
    ],
)
def test_calendar_groups(
    cli: RunCli, data: Path, by: str, tz: str, expected: dict[str, int]
) -> None:
    doc = report(cli, data, "--by", by, "--tz", tz)
    assert {row[by]: row["calls"] for row in doc["rows"]} == expected
    assert [row[by] for row in doc["rows"]] == sorted(expected)  # in time order


@pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
def test_calendar_groups_in_a_zone_off_utc_by_part_of_an_hour(
    cli: RunCli, tmp_path: Path, kind: str
) -> None:
    """India is UTC+05:30: the UTC hour 18:00-19:00 is 23:30 on one day to 00:30 on the next,
    so a call at 18:40Z is on the next day, in its hour 00:00, and inside that day's window."""
    records = [
        rec(1, "2026-11-01T18:20:00.000Z", "openai", "gpt-4o", 100, 10, "0.01"),  # 23:50 IST
        rec(2, "2026-11-01T18:40:00.000Z", "openai", "gpt-4o", 100, 10, "0.02"),  # 00:10 IST
        rec(3, "2026-11-01T18:14:00.000Z", "openai", "gpt-4o", 100, 10, "0.04"),  # 23:59 NPT
    ]
    records = [r.model_copy(update={"latency_ms": 100.0}) for r in records]
    data = (
        write_sqlite(tmp_path / "usage.db", records, SESSIONS)
        if kind == "sqlite"
        else write_jsonl(tmp_path / "usage.jsonl", records)
    )
    for by, expected in (
        ("day", {"2026-11-01": Decimal("0.05"), "2026-11-02": Decimal("0.02")}),
        ("hour", {"2026-11-01 23:00": Decimal("0.05"), "2026-11-02 00:00": Decimal("0.02")}),
    ):
        doc = report(cli, data, "--by", by, "--tz", "Asia/Kolkata", "--latency")
        assert {row[by]: row["cost_usd"] for row in doc["rows"]} == expected
        assert all(row["latency_p50_ms"] == 100.0 for row in doc["rows"])
    window = ("--since", "2026-11-02", "--until", "2026-11-02", "--by", "day")
    doc = report(cli, data, *window, "--tz", "Asia/Kolkata")
    assert {row["day"]: row["calls"] for row in doc["rows"]} == {"2026-11-02": 1}
    doc = report(cli, data, "--by", "day", "--tz", "Asia/Kathmandu")  # UTC+05:45
    assert {row["day"]: row["calls"] for row in doc["rows"]} == {"2026-11-01": 1, "2026-11-02": 2}


@pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
@pytest.mark.parametrize(
    ("zone", "first", "then"),
    [("Europe/Paris", "+02:00", "+01:00"), ("America/New_York", "-04:00", "-05:00")],
)
def test_the_hour_a_clock_lives_twice_is_two_rows_in_the_order_lived(
    cli: RunCli, tmp_path: Path, kind: str, zone: str, first: str, then: str
) -> None:
    """At the end of summer time 02:00 (Paris) or 01:00 (New York) comes twice: --by hour made
    one row of two hours' calls, with nothing to tell them apart."""
    day, utc = ("2026-10-25", 0) if zone == "Europe/Paris" else ("2026-11-01", 5)
    records = [
        rec(n, f"{day}T{utc + n:02d}:30:00.000Z", "openai", "gpt-4o", 100, 10, "0.01")
        for n in range(3)
    ]
    data = (
        write_sqlite(tmp_path / "usage.db", records, SESSIONS)
        if kind == "sqlite"
        else write_jsonl(tmp_path / "usage.jsonl", records)
    )
    doc = report(cli, data, "--by", "hour", "--tz", zone)
    hour = "02:00" if zone == "Europe/Paris" else "01:00"
    after = "03:00" if zone == "Europe/Paris" else "02:00"
    assert [(row["hour"], row["calls"]) for row in doc["rows"]] == [
        (f"{day} {hour} {first}", 1),
        (f"{day} {hour} {then}", 1),
        (f"{day} {after}", 1),
    ]


@pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
def test_calendar_groups_of_years_before_1000_are_in_time_order(
    cli: RunCli, tmp_path: Path, kind: str
) -> None:
    """record() takes any time from year 1: --by month and --by hour wrote the year as
    strftime's %Y does on glibc, unpadded ('999-12'), which sorted after '2026-11'."""
    records = [
        rec(1, "0999-12-31T10:00:00.000Z", "openai", "gpt-4o", 100, 10, "0.01"),
        rec(2, "2026-11-01T10:00:00.000Z", "openai", "gpt-4o", 100, 10, "0.02"),
    ]
    data = (
        write_sqlite(tmp_path / "usage.db", records, SESSIONS)
        if kind == "sqlite"
        else write_jsonl(tmp_path / "usage.jsonl", records)
    )
    for by, expected in (
        ("month", ["0999-12", "2026-11"]),
        ("hour", ["0999-12-31 10:00", "2026-11-01 10:00"]),
    ):
        doc = report(cli, data, "--by", by)
        assert [row[by] for row in doc["rows"]] == expected


def test_tz_moves_date_bounds(cli: RunCli, data: Path) -> None:
    # Nov 2 in Paris is 2026-11-01T23:00Z up to 2026-11-02T23:00Z: records 2 and 3.
    doc = report(
        cli, data, "--since", "2026-11-02", "--until", "2026-11-02", "--tz", "Europe/Paris"
    )
    assert doc["totals"]["calls"] == 2
    assert doc["since"] == "2026-11-01T23:00:00.000Z"


def test_unknown_tz(cli: RunCli, data: Path) -> None:
    code, _, err = cli("report", "--source", str(data), "--tz", "Mars/Olympus")
    assert code == 2 and "unknown time zone" in err


def test_empty_range_is_an_error(cli: RunCli, data: Path) -> None:
    code, _, err = cli("report", "--source", str(data), "--since", "3d", "--until", "5d")
    assert code == 2 and "empty range" in err
    code, _, err = cli(
        "report", "--source", str(data), "--since", "2026-11-03", "--until", "2026-11-02"
    )
    assert code == 2 and "empty range" in err


def test_tag_key_nobody_has(cli: RunCli, data: Path) -> None:
    code, out, err = cli("report", "--source", str(data), "--by", "tag:nosuch")
    assert code == 1 and "no record in this period has the tag 'nosuch'" in err and out == ""
    assert keys(report(cli, data, "--by", "tag:team"), "tag:team")[("a",)]["calls"] == 1


@pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
def test_a_tag_valued_none_is_not_the_calls_without_the_tag(
    cli: RunCli, tmp_path: Path, kind: str
) -> None:
    """The calls without a tag were grouped under the text "(none)": a call tagged
    ``env="(none)"`` joined them (one row of 2 calls, in JSON too), and a key whose only value is
    "(none)" was said to be in no record. The missing tag is null in JSON, "(no env tag)" in a
    table: the tables showed both rows as "(none)", so which held the untagged calls was a guess.
    A value that reads as that label is shown quoted."""
    records = [
        rec(1, "2026-11-01T10:00:00.000Z", "openai", "gpt-4o", 1, 1, "0.5", tags={"env": "(none)"}),
        rec(2, "2026-11-01T11:00:00.000Z", "openai", "gpt-4o", 1, 1, "0.25"),
        rec(
            3,
            "2026-11-01T12:00:00.000Z",
            "openai",
            "gpt-4o",
            1,
            1,
            "0.125",
            tags={"team": "(none)"},
        ),
        rec(
            4,
            "2026-11-01T13:00:00.000Z",
            "openai",
            "gpt-4o",
            1,
            1,
            "0.0625",
            tags={"env": "(no env tag)"},
        ),
        rec(
            5,
            "2026-11-01T14:00:00.000Z",
            "openai",
            "gpt-4o",
            1,
            1,
            "0.03125",
            tags={"env": '"(no env tag)"'},
        ),
    ]
    if kind == "sqlite":
        data = write_sqlite(tmp_path / "usage.db", records, [])
    else:
        data = write_jsonl(tmp_path / "usage.jsonl", records)
    rows = keys(report(cli, data, "--by", "tag:env"), "tag:env")
    assert {key: row["calls"] for key, row in rows.items()} == {
        ("(none)",): 1,
        (None,): 2,
        ("(no env tag)",): 1,
        ('"(no env tag)"',): 1,
    }
    assert keys(report(cli, data, "--by", "tag:team"), "tag:team")[("(none)",)]["calls"] == 1
    # most costly first: the value "(none)" ($0.50), no tag ($0.375), the values "(no env tag)"
    # ($0.0625) and '"(no env tag)"' ($0.03125), quoted
    labels = ["(none)", "(no env tag)", '"(no env tag)"', '"\\"(no env tag)\\""']
    for fmt in ("table", "markdown", "html"):
        code, out, err = cli("report", "--source", str(data), "--by", "tag:env", "--format", fmt)
        assert code == 0, err
        if fmt == "table":  # the rows between the rules under the header and above TOTAL
            rows = out.split("\n---")[1].split("\n---")[0].splitlines()[1:]
            shown = [line.split("  ")[0] for line in rows]
        elif fmt == "markdown":  # the rows after the header's | --- | line, before TOTAL
            rows = out.split("| --- |")[1].split("| **TOTAL**")[0].splitlines()[1:]
            shown = [line.split(" | ")[0].removeprefix("| ") for line in rows]
            shown = [cell.replace("\\\\", "\\") for cell in shown]  # markdown's \\ is \
        else:
            main = out.split('<div id="main-table">')[1].split("<tbody>")[1]
            shown = re.findall(r"<tr><td[^>]*>([^<]*)</td>", main.split("</tbody>")[0])
            shown = [html.unescape(cell) for cell in shown]
            assert "(no KEY tag) calls without the tag KEY" in out.split("<footer>")[1]
        assert shown == labels, (fmt, out)


@pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
def test_in_csv_the_calls_without_the_tag_are_not_the_empty_value(
    cli: RunCli, tmp_path: Path, kind: str
) -> None:
    """CSV wrote the calls without the tag as an empty cell, as it writes a tag whose value is
    empty (``tags={"env": ""}``): two rows with the same key, told apart nowhere. They are
    "(no env tag)" as in the table; JSON keeps null."""
    records = [
        rec(1, "2026-11-01T10:00:00.000Z", "openai", "gpt-4o", 1, 1, "0.5", tags={"env": ""}),
        rec(2, "2026-11-01T11:00:00.000Z", "openai", "gpt-4o", 1, 1, "0.25"),
    ]
    if kind == "sqlite":
        data = write_sqlite(tmp_path / "usage.db", records, [])
    else:
        data = write_jsonl(tmp_path / "usage.jsonl", records)
    code, out, err = cli("report", "--source", str(data), "--by", "tag:env", "--format", "csv")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(row["tag:env"], row["calls"]) for row in rows] == [("", "1"), ("(no env tag)", "1")]
    rows = keys(report(cli, data, "--by", "tag:env"), "tag:env")
    assert {key: row["calls"] for key, row in rows.items()} == {("",): 1, (None,): 1}


@pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
@pytest.mark.parametrize(
    "key", ["te\tam", "line\nbreak", "esc\x1b", "back\\slash", "équipe", 'say "hi"', 'a\\"b']
)
def test_tag_keys_that_json_escapes(cli: RunCli, tmp_path: Path, kind: str, key: str) -> None:
    """The SQLite sink writes a tag key as JSON does (a tab as ``\\t``); the JSON path that reads
    it named the raw character, which SQLite compares with the escaped text: no match, so
    ``--by tag:KEY`` said no record had the key and ``--tag KEY=V`` found no call. A key holding
    ``"`` cannot be named in a SQLite path at all (a bad path, or none found)."""
    records = [
        rec(1, "2026-11-01T10:00:00.000Z", "openai", "gpt-4o", 1, 1, "0.5", tags={key: "v"}),
        rec(2, "2026-11-01T11:00:00.000Z", "openai", "gpt-4o", 1, 1, "0.25"),
    ]
    if kind == "sqlite":
        data = write_sqlite(tmp_path / "usage.db", records, [])
    else:
        data = write_jsonl(tmp_path / "usage.jsonl", records)
    rows = keys(report(cli, data, "--by", f"tag:{key}"), f"tag:{key}")
    assert rows[("v",)]["calls"] == 1 and rows[(None,)]["calls"] == 1
    assert report(cli, data, "--tag", f"{key}=v")["totals"]["cost_usd"] == Decimal("0.5")
    # PostgreSQL reads the key itself (``tags::jsonb ->> %s``) from the same path.
    from tokenmeter.cli._postgres import _translate
    from tokenmeter.cli.reports._sql import tag_sql

    sql, param = tag_sql(key)
    assert _translate(f"SELECT {sql}", [param])[1] == [key]


def test_compare_with_previous_period(cli: RunCli, data: Path) -> None:
    # Week of Nov 8-14 against Nov 1-7: 0.08 (+ unpriced) now, 0.07 before.
    doc = report(
        cli, data, "--since", "2026-11-08", "--until", "2026-11-14", "--compare", "--by", "provider"
    )
    assert doc["totals"]["cost_usd"] == Decimal("0.08")
    assert doc["totals"]["previous_cost_usd"] == Decimal("0.07")
    rows = keys(doc, "provider")
    assert rows[("openai",)]["previous_cost_usd"] == Decimal("0.03")
    code, out, _ = cli(
        "report",
        "--source",
        str(data),
        "--since",
        "2026-11-08",
        "--until",
        "2026-11-14",
        "--compare",
        "--by",
        "provider",
    )
    assert code == 0 and "Change" in out and "+166.7%" in out  # 0.08 vs 0.03 for openai
    assert "compared with: 2026-11-01 to 2026-11-07" in out


@pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
def test_compare_lists_the_keys_that_spent_only_before(
    cli: RunCli, tmp_path: Path, kind: str
) -> None:
    """A model used the day before and not this day had no row: Prev cost read $0.0125 above a
    TOTAL of $0.0305, and the -59% had nothing to explain it. Every key of either period has a
    row, in every format (zero this period, -100%)."""
    records = [
        rec(1, "2026-11-01T10:00:00.000Z", "openai", "gpt-4o", 1, 1, "0.0125"),
        rec(2, "2026-11-01T10:00:00.000Z", "anthropic", "claude-sonnet-4-5", 1, 1, "0.018"),
        rec(3, "2026-11-02T10:00:00.000Z", "openai", "gpt-4o", 1, 1, "0.0125"),
    ]
    if kind == "sqlite":
        data = write_sqlite(tmp_path / "usage.db", records, [])
    else:
        data = write_jsonl(tmp_path / "usage.jsonl", records)
    window = ("--since", "2026-11-02", "--until", "2026-11-02", "--compare")
    doc = report(cli, data, *window)
    gone = keys(doc, "model")[("claude-sonnet-4-5",)]
    assert (gone["calls"], gone["cost_usd"], gone["previous_cost_usd"]) == (0, 0, Decimal("0.018"))
    assert sum(row["previous_cost_usd"] for row in doc["rows"]) == Decimal("0.0305")
    assert doc["totals"]["previous_cost_usd"] == Decimal("0.0305")
    code, out, err = cli("report", "--source", str(data), *window, "--format", "csv")
    assert code == 0, err
    lines = [line.split(",") for line in out.splitlines()]
    header, rows = lines[0], lines[1:]
    previous = header.index("previous_cost_usd")
    assert {(row[1], row[previous]) for row in rows} == {
        ("gpt-4o", "0.0125"),
        ("claude-sonnet-4-5", "0.018"),
    }
    for fmt in ("table", "markdown", "html"):
        code, out, err = cli("report", "--source", str(data), *window, "--format", fmt)
        assert code == 0, err
        assert "claude-sonnet-4-5" in out and "-100.0%" in out, fmt


def test_change_from_a_negative_cost_before(cli: RunCli, tmp_path: Path) -> None:
    """A refund made the period before cost -$2.00; $1.00 now is $3.00 more, which read as
    "-150.0%" (and a fall, in the dashboard). No percentage of a negative cost means anything."""
    refund = rec(1, "2026-11-01T10:00:00.000Z", "openai", "gpt-4o", 1, 1, "1")
    paid = rec(2, "2026-11-02T10:00:00.000Z", "openai", "gpt-4o", 1, 1, "1")
    lines = [record_line(refund, estimated_cost_usd="-2"), record_line(paid)]
    data = append_lines(tmp_path / "usage.jsonl", lines)
    window = ("--since", "2026-11-02", "--until", "2026-11-02")
    code, out, err = cli("report", "--source", str(data), *window, "--compare", "--wide")
    assert code == 0, err
    total = next(line for line in out.splitlines() if line.startswith("TOTAL"))
    assert total.split()[-3:] == ["-$2.00", "n/a", "0"], total
    code, out, err = cli("report", "--source", str(data), *window, "--format", "html")
    assert code == 0, err
    assert '<small class="up">n/a vs -$2.00 the period before</small>' in out


def test_change_when_a_cost_is_unknown(cli: RunCli, tmp_path: Path) -> None:
    """A period whose only call is of an unpriced model read Cost ``n/a`` but Change ``-100.0%``
    (the dashboard: "-100.0% vs $0.0125 the period before"), a fall to $0 that nobody knows of;
    a model unpriced the period before read ``new``. No change is told from an unknown cost."""
    records = [
        rec(1, "2026-11-01T10:00:00.000Z", "openai", "gpt-4o", 1, 1, "0.0125"),
        rec(2, "2026-11-02T10:00:00.000Z", "openai", "new-model", 1, 1, None),
        rec(3, "2026-11-03T10:00:00.000Z", "openai", "new-model", 1, 1, "0.5"),
    ]
    data = write_jsonl(tmp_path / "usage.jsonl", records)
    columns = ("--columns", "cost,prev_cost,change", "--compare")
    code, out, err = cli(
        "report", "--source", str(data), "--since", "2026-11-02", "--until", "2026-11-02", *columns
    )
    assert code == 0, err
    total = next(line for line in out.splitlines() if line.startswith("TOTAL"))
    assert total.split() == ["TOTAL", "n/a", "$0.0125"], total
    code, out, err = cli(
        "report", "--source", str(data), "--since", "2026-11-03", "--until", "2026-11-03", *columns
    )
    assert code == 0, err
    row = next(line for line in out.splitlines() if "new-model" in line)
    assert row.split() == ["openai", "new-model", "$0.50", "-"], row
    code, out, err = cli(
        "report", "--source", str(data), "--since", "2026-11-02", "--until", "2026-11-02",
        "--format", "html",
    )  # fmt: skip
    assert code == 0, err
    card = '<span>Total cost</span><b>n/a</b><small class="">vs $0.0125 the period before<'
    assert card in out, out


@pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
def test_compare_whole_days_with_the_calendar_days_before(
    cli: RunCli, tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--compare`` stepped back the window's length in hours: the Paris day after the clocks
    went back (25 hours before it) was compared with a day from 01:00, its first hour's call
    left out; the day after they went forward with a window holding the day before's last
    hour; a month with the 31 days before it (2026-01-29 to 02-28 for March). Whole days
    compare with the calendar days before, a ``--period month`` with the month before."""
    records = [
        rec(1, "2026-01-02T10:00:00.000Z", "openai", "gpt-4o", 1, 1, "0.5"),  # January
        rec(2, "2026-03-28T22:30:00.000Z", "openai", "gpt-4o", 1, 1, "0.5"),  # 03-28 23:30 Paris
        rec(3, "2026-03-28T23:30:00.000Z", "openai", "gpt-4o", 1, 1, "0.5"),  # 03-29 00:30 Paris
        rec(4, "2026-10-24T22:30:00.000Z", "openai", "gpt-4o", 1, 1, "0.5"),  # 10-25 00:30 Paris
    ]
    if kind == "sqlite":
        data = write_sqlite(tmp_path / "usage.db", records, [])
    else:
        data = write_jsonl(tmp_path / "usage.jsonl", records)
    paris = ("--tz", "Europe/Paris", "--compare")
    for day, before in [("2026-10-26", "2026-10-25"), ("2026-03-30", "2026-03-29")]:
        doc = report(cli, data, "--since", day, "--until", day, *paris)
        assert doc["totals"]["previous_calls"] == 1, day
        code, out, err = cli(
            "report", "--source", str(data), "--since", day, "--until", day, *paris
        )
        assert code == 0 and f"compared with: {before} to {before} (Europe/Paris" in out, err
    from tokenmeter.cli import _dates

    monkeypatch.setattr(_dates, "_now", lambda: datetime(2026, 3, 10, 12, tzinfo=UTC))
    code, out, err = cli("report", "--source", str(data), "--period", "month", "--compare")
    assert code == 0 and "compared with: 2026-02-01 to 2026-02-28 (UTC" in out, err
    doc = report(cli, data, "--period", "month", "--previous", "--compare")
    assert doc["since"] == "2026-02-01T00:00:00.000Z"
    assert doc["totals"]["previous_calls"] == 1  # January 2nd: in the month before February


def test_compare_needs_a_length(cli: RunCli, data: Path) -> None:
    code, _, err = cli("report", "--source", str(data), "--compare")
    assert code == 2 and "--compare needs" in err


def test_latency_percentiles(cli: RunCli, data: Path) -> None:
    rows = keys(report(cli, data, "--by", "provider", "--latency"), "provider")
    openai = rows[("openai",)]  # latencies 100, 300, 400 (the blocked call has none)
    assert (openai["latency_p50_ms"], openai["latency_p95_ms"]) == (300.0, 400.0)
    assert rows[("anthropic",)]["latency_p50_ms"] == 200.0
    _, out, _ = cli("report", "--source", str(data), "--by", "provider", "--latency")
    assert "p95 latency" in out and "400 ms" in out


def test_latency_of_a_row_without_latencies_is_null(cli: RunCli, tmp_path: Path) -> None:
    """``--latency --format json``: a row whose calls report no latency (``record()``, estimated
    or blocked calls) had no ``latency_p50_ms`` / ``latency_p95_ms`` keys at all, where the
    other rows had them: a consumer's ``row["latency_p50_ms"]`` failed. CSV lacked the columns
    when no row had a latency."""
    timed = [
        rec(n, "2026-11-02T10:00:00.000Z", "openai", "gpt-4o", 10, 5, "0.01").model_copy(
            update={"latency_ms": latency}
        )
        for n, latency in ((1, 120.0), (2, 300.0))
    ]
    untimed = [rec(3, "2026-11-02T10:00:00.000Z", "openai", "gpt-4o-mini", 10, 5, "0.01")]
    for source in (
        write_sqlite(tmp_path / "u.db", timed + untimed, []),
        write_jsonl(tmp_path / "u.jsonl", timed + untimed),
    ):
        rows = keys(report(cli, source, "--by", "model", "--latency"), "model")
        found = {key: (row["latency_p50_ms"], row["latency_p95_ms"]) for key, row in rows.items()}
        assert found == {("gpt-4o",): (120.0, 300.0), ("gpt-4o-mini",): (None, None)}
        plain = report(cli, source, "--by", "model")["rows"]
        assert not any("latency_p50_ms" in row for row in plain)
    only_untimed = write_sqlite(tmp_path / "untimed.db", untimed, [])
    code, out, err = cli("report", "--source", str(only_untimed), "--latency", "--format", "csv")
    assert code == 0, err
    header = out.splitlines()[0].split(",")
    assert header[-2:] == ["latency_p50_ms", "latency_p95_ms"]


@pytest.mark.parametrize("windows", [True, False])
def test_latency_percentiles_are_nearest_ranks_in_groups_of_any_size(
    cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, windows: bool
) -> None:
    """SQLite ranks each group's latencies itself (window functions: every latency was fetched
    and sorted in Python): the nearest ranks a JSONL file's read gives, for groups of 1 to 41
    calls written in shuffled order with ties, by a stored column and by a tag. A SQLite
    without window functions (before 3.25) has them ranked in Python, alike."""
    from tokenmeter.cli.reports import _query

    if not windows:
        monkeypatch.setattr(_query, "_WINDOWS", (999,))
    rng = random.Random(7)
    records, expected = [], {}
    for size in (1, 2, 3, 19, 20, 21, 40, 41):
        latencies = [float(rng.randrange(1, 15) * 10) for _ in range(size)]
        ordered = sorted(latencies)
        expected[f"m{size}"] = (ordered[-(-size // 2) - 1], ordered[-(-size * 95 // 100) - 1])
        for latency in latencies:
            one = rec(len(records), "2026-11-01T10:00:00.000Z", "openai", f"m{size}", 10, 1, "0.01")
            one = one.model_copy(update={"latency_ms": latency, "tags": {"team": f"m{size}"}})
            records.append(one)
    rng.shuffle(records)
    db = write_sqlite(tmp_path / "u.db", records, [])
    for source in (db, write_jsonl(tmp_path / "u.jsonl", records)):
        for by, column in (("model", "model"), ("tag:team", "tag:team")):
            rows = report(cli, source, "--by", by, "--latency")["rows"]
            found = {row[column]: (row["latency_p50_ms"], row["latency_p95_ms"]) for row in rows}
            assert found == expected, (source.name, by)


def test_session_name_with_several_sessions_lists_them(cli: RunCli, data: Path) -> None:
    code, out, err = cli("session", "POST /draft", "--source", str(data))
    assert code == 1 and out == ""
    assert "3 sessions are named 'POST /draft'" in err
    assert err.index("s-4") < err.index("s-2") < err.index("s-1")  # latest first
    code, out, _ = cli("session", "GET /x", "--source", str(data))
    assert code == 0 and "s-3" in out


def test_columns_option(cli: RunCli, data: Path) -> None:
    code, out, _ = cli("report", "--source", str(data), "--columns", "calls,cost,errors")
    header = next(line for line in out.splitlines() if line.startswith("provider"))
    assert header.split() == ["provider", "model", "Calls", "Cost", "Errors"]
    code, _, err = cli("report", "--source", str(data), "--columns", "calls,bogus")
    assert code == 2 and "unknown column 'bogus'" in err


def test_sessions_filter_by_name(cli: RunCli, data: Path) -> None:
    code, out, _ = cli(
        "sessions", "--source", str(data), "--format", "json", "--session-name", "GET /x"
    )
    assert code == 0 and [row["session_id"] for row in json.loads(out)] == ["s-3"]


def test_period_reports(cli: RunCli, tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from tokenmeter.cli._dates import period_bounds

    start, end = period_bounds("week", previous=True)
    this_week, _ = period_bounds("week", previous=False)
    assert end == this_week and end - start == timedelta(days=7)
    stamp = lambda t: t.strftime("%Y-%m-%dT%H:%M:%S.000Z")  # noqa: E731
    records = [
        rec(1, stamp(start), "openai", "gpt-4o", 10, 10, "0.5"),  # first instant: in
        rec(2, stamp(end - timedelta(seconds=1)), "openai", "gpt-4o", 10, 10, "0.25"),
        rec(3, stamp(end), "openai", "gpt-4o", 10, 10, "4"),  # this week: out
        rec(4, stamp(start - timedelta(seconds=1)), "openai", "gpt-4o", 10, 10, "8"),
    ]
    db = write_sqlite(tmp_path / "usage.db", records, [])
    doc = report(cli, db, "--period", "week", "--previous")
    assert doc["totals"]["cost_usd"] == Decimal("0.75")
    code, out, _ = cli(
        "report", "--source", str(db), "--period", "week", "--previous", "--format", "markdown"
    )
    assert code == 0 and "## Per model" in out and "## Efficiency" in out and "$0.75" in out
    first, last = start.date(), (end - timedelta(days=1)).date()
    assert f"{first} to {last} (UTC, both days included)" in out
    now = datetime.now(UTC)
    current = report(cli, db, "--period", "month")
    assert current["since"].startswith(now.strftime("%Y-%m-01"))
    code, _, err = cli("report", "--source", str(db), "--previous")
    assert code == 2 and "--previous needs --period" in err
    code, _, err = cli("report", "--source", str(db), "--period", "day", "--since", "1d")
    assert code == 2 and "--period replaces" in err


def test_detailed_calls_in_tz(cli: RunCli, data: Path) -> None:
    code, out, _ = cli(
        "report", "--source", str(data), "--detailed", "--tz", "Europe/Paris", "--model", "gpt-4o"
    )
    assert code == 0 and "2026-11-02T00:30:00.000+01:00" in out  # 23:30 UTC on Nov 1
    assert "(Europe/Paris" not in out and "all time" in out
    code, out, _ = cli("report", "--source", str(data), "--detailed", "--model", "gpt-4o")
    assert "2026-11-01T23:30:00.000Z" in out
    doc = report(cli, data, "--detailed", "--tz", "Europe/Paris", "--model", "gpt-4o")
    assert doc["calls"][0]["timestamp"] == "2026-11-01T23:30:00.000Z"  # machine formats: UTC


def test_an_empty_result_says_so(cli: RunCli, data: Path) -> None:
    code, out, _ = cli("report", "--source", str(data), "--since", "2030-01-01")
    assert code == 0 and "no calls in this period" in out
    code, out, _ = cli("report", "--source", str(data), "--model", "no-such-model")
    assert code == 0 and "no calls match these filters in this period" in out
    code, out, _ = cli("report", "--source", str(data))
    assert code == 0 and "no calls" not in out


def _renamed_session(tmp_path: Path, kind: str) -> Path:
    if kind == "jsonl":
        return write_jsonl(tmp_path / "usage.jsonl", renamed_session())
    # "stored": the sessions table names it as it ended (renamed after its last call).
    stored = [SESSIONS[0].model_copy(update={"id": "s-9", "name": "shipped"})]
    return write_sqlite(
        tmp_path / "usage.db", renamed_session(), stored if kind == "stored" else []
    )


@pytest.mark.parametrize("kind", ["sqlite", "stored", "jsonl"])
@pytest.mark.parametrize("window", [(), ("--until", "2026-11-01T10:01:00Z")])
def test_a_session_renamed_as_it_goes_is_one_row_by_session_under_its_latest_name(
    cli: RunCli,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    window: tuple[str, ...],
) -> None:
    """``--by session`` is one row per session (docs/cli.md): a renamed one was a row per name
    it had, each with part of its calls (``final`` 2 calls, ``draft`` 1). It is named by its
    stored name, else by its latest record's, whatever the window shows of it."""
    data = _renamed_session(tmp_path, kind)
    name = "shipped" if kind == "stored" else "final"
    doc = report(cli, data, "--by", "session", "--latency", *window)
    rows = [(row["session_id"], row["session"], row["calls"]) for row in doc["rows"]]
    assert rows == [("s-9", name, 1 if window else 3)]
    if not window:
        assert doc["rows"][0]["cost_usd"] == Decimal("0.09")
    if kind == "jsonl":  # a large file is read in two halves: the same row
        monkeypatch.setattr(_query, "SPLIT_BYTES", 1)
        assert report(cli, data, "--by", "session", "--latency", *window) == doc
    named = report(cli, data, "--by", "name", *window)  # the name each call was made under
    assert sorted((row["session"], row["calls"]) for row in named["rows"]) == (
        [("draft", 1)] if window else [("draft", 1), ("final", 2)]
    )


@pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
@pytest.mark.parametrize("by", ["name,session", "session,name"])
def test_a_renamed_session_by_session_and_name_is_a_row_per_name(
    cli: RunCli, tmp_path: Path, kind: str, by: str
) -> None:
    """Grouped by name as well, a renamed session is a row for each name its calls were made
    under (the latest name was put in every row: one row, ``final`` 3)."""
    data = _renamed_session(tmp_path, kind)
    doc = report(cli, data, "--by", by)
    assert sorted((row["session"], row["calls"]) for row in doc["rows"]) == [
        ("draft", 1),
        ("final", 2),
    ]


def test_another_tools_sessions_table_is_not_read_for_session_names(
    cli: RunCli, tmp_path: Path
) -> None:
    """A ``sessions`` table of another tool's (no ``id`` and ``name``) beside the records:
    ``--by session`` failed, "no such column: s.name"; the records name the session."""
    data = _renamed_session(tmp_path, "sqlite")
    conn = sqlite3.connect(data)
    conn.execute("DROP TABLE IF EXISTS sessions")
    conn.execute("CREATE TABLE sessions (sid TEXT, label TEXT)")
    conn.commit()
    conn.close()
    doc = report(cli, data, "--by", "session")
    assert [(row["session"], row["calls"]) for row in doc["rows"]] == [("final", 3)]
