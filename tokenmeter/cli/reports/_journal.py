"""A session rendered the way the markdown journal (SPEC §5) writes ``sessions/<id>.md``."""

from __future__ import annotations

from decimal import Decimal

from tokenmeter._models import output_cost as output_part
from tokenmeter.cli.reports._format import fmt_int, fmt_usd
from tokenmeter.cli.reports._render import markdown_escape as md
from tokenmeter.cli.reports._sessions import SessionDetail, SessionRow

__all__ = ["render_session_markdown", "render_sessions_list"]


def _input_output_cost(detail: SessionDetail) -> tuple[Decimal | None, Decimal | None]:
    """Input (uncached + cache read + cache write, tool fees and passes) vs output cost (every
    output modality), from each call's breakdown."""
    known = [call.cost_breakdown for call in detail.calls if call.cost_breakdown is not None]
    if not known:
        return None, None
    output_cost = sum((output_part(b) for b in known), Decimal(0))
    input_cost = sum((sum(b.values(), Decimal(0)) for b in known), Decimal(0)) - output_cost
    return input_cost, output_cost


def _percent(part: Decimal | None, whole: Decimal | None) -> str:
    if part is None or not whole:
        return ""
    return f" ({part / whole * 100:.1f}%)"


def render_session_markdown(detail: SessionDetail) -> str:
    session, calls = detail.session, detail.calls
    totals = session.totals
    models = sorted({f"{call.provider}/{call.model}" for call in calls})
    lines = [
        f"# Session: {md(session.name or session.session_id)}",
        "",
        "## Session Information",
        "",
        f"- **Session ID**: {md(session.session_id)}",
        f"- **Name**: {md(session.name or '')}",
        f"- **Provider/Model**: {md(', '.join(models))}",
        f"- **Started**: {md(session.started_at or session.first_call)}",
        f"- **Status**: {md(session.status or 'unknown')}",
    ]
    if session.tags:
        tags = ", ".join(f"{k}={v}" for k, v in session.tags.items())
        lines.append(f"- **Tags**: {md(tags)}")
    lines += [
        "",
        "## API Calls",
        "",
        "| Call | Timestamp | Input Tokens | Output Tokens | Total Tokens | Cost |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for number, call in enumerate(calls, 1):
        lines.append(
            f"| {number} | {md(call.timestamp)} | {fmt_int(call.input_tokens)} | "
            f"{fmt_int(call.output_tokens)} | {fmt_int(call.total_tokens)} | {fmt_usd(call.cost)} |"
        )
    lines += [
        "",
        "## Session Summary",
        "",
        f"- **Total Calls**: {fmt_int(totals.calls)}",
        f"- **Total Input Tokens**: {fmt_int(totals.input_tokens)}",
        f"- **Total Output Tokens**: {fmt_int(totals.output_tokens)}",
        f"- **Cache Read / Write Tokens**: {fmt_int(totals.cache_read_tokens)} / "
        f"{fmt_int(totals.cache_write_tokens)}",
        f"- **Reasoning Tokens**: {fmt_int(totals.reasoning_tokens)}",
        f"- **Total Tokens**: {fmt_int(totals.total_tokens)}",
        f"- **Total Cost**: {fmt_usd(totals.cost)}",
        f"- **Unpriced Calls**: {fmt_int(totals.unpriced_calls)}",
    ]
    if session.ended_at:
        lines.append(f"- **Completed**: {md(session.ended_at)}")
    if session.notes:
        lines.append(f"- **Notes**: {md(session.notes)}")
    if totals.calls:
        per_call_cost = None if totals.cost is None else totals.priced_cost / totals.priced_calls
        lines += [
            "",
            "## Averages per Call",
            "",
            f"- **Tokens per Call**: {totals.total_tokens / totals.calls:,.1f}",
            f"- **Input Tokens per Call**: {totals.input_tokens / totals.calls:,.1f}",
            f"- **Output Tokens per Call**: {totals.output_tokens / totals.calls:,.1f}",
            f"- **Cost per Call**: {fmt_usd(per_call_cost)}",
        ]
    input_cost, output_cost = _input_output_cost(detail)
    lines += [
        "",
        "## Cost Breakdown",
        "",
        f"- **Input Cost**: {fmt_usd(input_cost)}{_percent(input_cost, totals.cost)}",
        f"- **Output Cost**: {fmt_usd(output_cost)}{_percent(output_cost, totals.cost)}",
        "",
        "## Efficiency Metrics",
        "",
    ]
    ratio = f"{totals.input_tokens / totals.output_tokens:,.2f}" if totals.output_tokens else "n/a"
    lines.append(f"- **Input/Output Ratio**: {ratio}")
    if totals.cost is not None and totals.total_tokens:
        per_token = totals.priced_cost / totals.total_tokens
        lines.append(f"- **Cost per Token**: ${per_token:.9f}")
        lines.append(f"- **Cost per 1K Tokens**: {fmt_usd(per_token * 1000)}")
    else:
        lines.append("- **Cost per Token**: n/a")
    return "\n".join(lines) + "\n"


def render_sessions_list(rows: list[SessionRow]) -> list[list[str]]:
    """Cells for the ``sessions`` table: id, name, status, first and last call, totals."""
    return [
        [
            row.session_id,
            row.name or "",
            row.status or "",
            row.first_call,
            row.last_call,
            fmt_int(row.totals.calls),
            fmt_int(row.totals.total_tokens),
            fmt_usd(row.totals.cost),
            fmt_int(row.totals.unpriced_calls),
        ]
        for row in rows
    ]
