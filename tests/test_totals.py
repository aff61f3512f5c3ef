"""One place for totals (tokenmeter._totals) and one for money and counts (tokenmeter._format):
sessions, the markdown journal and the CLI report agree on the same records."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

import tokenmeter
from tokenmeter._format import exact_usd, fmt_usd
from tokenmeter._models import UsageRecord
from tokenmeter._sessions import ModelTotals
from tokenmeter._totals import Totals, normalise_usd
from tokenmeter.cli import main
from tokenmeter.sinks import MarkdownJournalSink, SQLiteSink


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("0.0001425", "$0.000143"),  # three significant figures, rounded half up
        ("0.00000002", "$0.00000002"),  # a priced embedding is not $0.000000
        ("0.0325123", "$0.0325"),
        ("0.5", "$0.50"),
        ("0.9996", "$1.00"),
        ("2.154", "$2.15"),
        ("1234.565", "$1,234.57"),
        ("0", "$0.00"),
        ("-0.25", "-$0.25"),
    ],
)
def test_money_for_people(value: str, shown: str) -> None:
    assert fmt_usd(Decimal(value)) == shown


def test_money_unknown_and_exact() -> None:
    assert fmt_usd(None) == "n/a" and fmt_usd(None, na="-") == "-"
    assert exact_usd(Decimal("0.0300000")) == "0.03" and exact_usd(None) == ""
    assert exact_usd(Decimal("1E+2")) == "100"


@pytest.mark.parametrize(
    ("value", "normal"),
    [("0.0300000", "0.03"), ("0.002921500", "0.0029215"), ("0E-7", "0"), ("10.00", "10")],
)
def test_normalise(value: str, normal: str) -> None:
    assert str(normalise_usd(Decimal(value))) == normal


def test_record_costs_carry_no_decimal_scale() -> None:
    tokenmeter.configure(sinks=[])
    record = tokenmeter.record("openai", "gpt-4o", input_tokens=12_000, output_tokens=0)
    assert str(record.estimated_cost_usd) == "0.03"  # was 0.0300000


def _records() -> list[UsageRecord]:
    def one(n: int, model: str, cost: str | None, **extra: object) -> UsageRecord:
        return UsageRecord(
            id=f"r{n}",
            timestamp=datetime(2026, 11, 22, 10, n, tzinfo=UTC),
            model_provider="openai",
            model_name=model,
            input_tokens=1000 * n,
            output_tokens=100 * n,
            total_tokens=1100 * n,
            cache_read_tokens=10 * n,
            estimated_cost_usd=None if cost is None else Decimal(cost),
            cost_breakdown=None
            if cost is None
            else {"input": Decimal(cost) / 4, "output": Decimal(cost) * 3 / 4},
            session_id="s1",
            session_name="job",
            **extra,  # type: ignore[arg-type]
        )

    return [
        one(1, "gpt-4o", "0.0123456789"),
        one(2, "gpt-4o", "0.5", status="error", error="APIError"),
        one(3, "gpt-4o-mini", None, estimated=True),
        one(4, "gpt-4o-mini", "0.0000001", status="blocked"),
    ]


def test_totals_and_figures() -> None:
    totals = Totals()
    for record in _records():
        totals.add_record(record)
    assert (totals.calls, totals.priced_calls, totals.unpriced_calls) == (4, 3, 1)
    assert (totals.error_calls, totals.blocked_calls, totals.estimated_calls) == (1, 1, 1)
    assert totals.cost == Decimal("0.5123457789")
    assert totals.priced_tokens == 1100 * (1 + 2 + 4)
    assert totals.cost_per_1k_tokens == totals.cost_usd * 1000 / (1100 * 7)
    assert totals.avg_cost_per_call == totals.cost_usd / 3
    assert totals.output_cost_usd == totals.cost_usd * 3 / 4
    assert totals.cache_hit_rate == pytest.approx(0.01)
    # JSON-able state (the journal keeps running totals in its files) round-trips exactly.
    assert Totals.from_state(json.loads(json.dumps(totals.to_state()))) == totals
    half, rest = Totals(), Totals()
    for i, record in enumerate(_records()):
        (half if i < 2 else rest).add_record(record)
    half.add(rest)
    assert half == totals
    # No call costs $0 (a report of an empty period said "n/a", the mark of an unknown price);
    # calls none of which has a price cost an unknown amount.
    assert Totals().cost == 0 and Totals().avg_cost_per_call is None
    unpriced = Totals()
    unpriced.add_record(_records()[2])
    assert unpriced.calls == 1 and unpriced.cost is None


def test_a_call_a_budget_refused_is_not_an_unpriced_call(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A refused call has no cost because it cost nothing, not because its price is unknown:
    reports, the journal and ``tokenmeter run`` counted every budget-blocked call as "unpriced"
    ("3 calls had no known price (not in the cost)")."""
    priced, _error, unpriced, blocked = _records()
    blocked = blocked.model_copy(
        update={"estimated_cost_usd": None, "cost_breakdown": None, "input_tokens": 0}
    )
    records = [priced, unpriced, blocked]
    totals = Totals()
    for record in records:
        totals.add_record(record)
    assert (totals.calls, totals.blocked_calls, totals.unpriced_calls) == (3, 1, 1)
    # state written before the two were told apart counts every call without a cost
    old = {k: v for k, v in totals.to_state().items() if k != "unpriced_calls"}
    assert Totals.from_state(old).unpriced_calls == 2
    SQLiteSink(tmp_path / "usage.db").write(records)
    (tmp_path / "usage.jsonl").write_text(
        "".join(r.model_dump_json() + "\n" for r in records), encoding="utf-8"
    )
    for source in ("usage.db", "usage.jsonl"):
        args = ["report", "--source", str(tmp_path / source), "--format", "json"]
        assert main(args) == 0
        assert json.loads(capsys.readouterr().out)["totals"]["unpriced_calls"] == 1, source
    journal = MarkdownJournalSink(tmp_path / "journal")
    journal.write(records)
    journal.close()
    text = (tmp_path / "journal" / "token_usage.md").read_text(encoding="utf-8")
    assert "_1 call(s) had no known price" in text


def test_the_callers_decimal_context_changes_no_figure() -> None:
    """The figures made from the sums (input cost, per call, per token) and the sum of two
    totals were worked out in the caller's decimal context: a session's ``input_cost_usd`` read
    by an application with ``prec = 4`` was rounded (0.01746 for 0.017465), and one trapping
    Inexact got decimal.Inexact from reading it."""
    import decimal

    records = _records()

    def figures() -> list[object]:
        totals, more = Totals(), Totals()
        for record in records:
            totals.add_record(record)
            more.add_record(record)
        totals.add(more)
        return [
            totals.cost_usd,
            totals.input_cost_usd,
            totals.avg_cost_per_call,
            totals.cost_per_token,
            totals.cost_per_1k_tokens,
        ]

    expected = figures()
    with decimal.localcontext() as context:
        context.prec = 4
        context.traps[decimal.Inexact] = True
        assert figures() == expected


def test_session_summary_is_the_shared_totals() -> None:
    assert issubclass(ModelTotals, Totals)


def test_session_journal_and_report_agree(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = _records()
    summary = ModelTotals()
    for record in records:
        summary._add(record)
    journal = MarkdownJournalSink(tmp_path / "journal")
    journal.write(records)
    journal.close()
    db = SQLiteSink(tmp_path / "usage.db")
    db.write(records)
    db.close()
    assert main(["report", "--source", str(tmp_path / "usage.db"), "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out, parse_float=Decimal)["totals"]
    assert report["cost_usd"] == summary.cost == Decimal("0.5123457789")
    assert report["calls"] == summary.calls and report["unpriced_calls"] == summary.unpriced_calls
    assert report["error_calls"] == summary.error_calls == 1
    text = (tmp_path / "journal" / "token_usage.md").read_text()
    total_row = next(line for line in text.splitlines() if line.startswith("| **TOTAL**"))
    assert f"**{fmt_usd(summary.cost)}**" in total_row  # "$0.512": the one formatter
    assert re.search(r"\*\*4\*\*", total_row)
