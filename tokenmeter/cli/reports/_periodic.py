"""The usage report of one calendar period, as markdown: ``tokenmeter report --period week
--format markdown`` prints it, and the ``reports`` setting writes it once per closed period
(``reports/usage_report_<period>.md``, see ``tokenmeter._reports``).

Sections: summary, per model, top sessions, efficiency (input/output ratio, cost per 1K tokens,
cache hit rate), and the alerts and budget events of the period when the library recorded any.
"""

from __future__ import annotations

from tokenmeter._format import fmt_count, fmt_ratio, fmt_share, fmt_usd
from tokenmeter._format import markdown_text as md
from tokenmeter.cli.reports._alerts import Alert, Alerts
from tokenmeter.cli.reports._model import Breakdown, Report, key_label
from tokenmeter.cli.reports._render import period_text

__all__ = ["PERIODIC_GROUPINGS", "PERIODIC_SHORTLISTS", "render_usage_report"]

#: The groupings this report reads, next to the one of ``--by``.
PERIODIC_GROUPINGS = (("model",), ("session",))
_TOP_SESSIONS = 10
#: The groupings of which only the first rows are shown (``Query.shortlists``).
PERIODIC_SHORTLISTS = {PERIODIC_GROUPINGS[1]: _TOP_SESSIONS}


def _find(report: Report, specs: tuple[str, ...]) -> Breakdown | None:
    for breakdown in report.breakdowns:
        if tuple(d.spec for d in breakdown.dimensions) == specs:
            return breakdown
    return None


def _alert_rows(alerts: list[Alert]) -> list[str]:
    lines = [
        "| Time | Rule | Scope | Observed | Threshold | About |",
        "|---|---|---|---:|---:|---|",
    ]
    for alert in alerts:
        lines.append(
            f"| {md(alert.time)} | {md(alert.rule)} | {md(alert.scope)} | {md(alert.observed)} "
            f"| {md(alert.threshold)} | {md(alert.subject)} |"
        )
    return lines


def render_usage_report(report: Report, alerts: Alerts | None = None, title: str = "") -> str:
    totals = report.totals
    lines = [
        f"# {md(title) if title else 'Usage report'}",
        "",
        f"- **Period**: {period_text(report)}",
        f"- **Source**: {md(report.source)}",
    ]
    if report.filters:
        lines.append(f"- **Only**: {md(report.filters)}")
    lines += [
        "",
        "## Summary",
        "",
        f"- **Total cost**: {fmt_usd(totals.cost)}",
        f"- **Calls**: {fmt_count(totals.calls)} ({fmt_count(totals.error_calls)} errors, "
        f"{fmt_count(totals.blocked_calls)} blocked, {fmt_count(totals.estimated_calls)} "
        f"estimated, {fmt_count(totals.unpriced_calls)} unpriced)",
        f"- **Tokens**: {fmt_count(totals.total_tokens)} ({fmt_count(totals.input_tokens)} in, "
        f"{fmt_count(totals.output_tokens)} out)",
        f"- **Average cost per priced call**: {fmt_usd(totals.avg_cost_per_call)}",
    ]
    by_model = _find(report, ("model",))
    if by_model is not None and by_model.rows:
        lines += [
            "",
            "## Per model",
            "",
            "| Provider | Model | Calls | Total tokens | Cost | Share |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for row in by_model.rows:
            t, (first, second) = row.totals, map(key_label, row.key)
            lines.append(
                f"| {md(first)} | {md(second)} | {fmt_count(t.calls)} "
                f"| {fmt_count(t.total_tokens)} | {fmt_usd(t.cost)} "
                f"| {fmt_share(t.share_of(totals))} |"
            )
    by_session = _find(report, ("session",))
    if by_session is not None and by_session.rows:
        lines += [
            "",
            "## Top sessions",
            "",
            "| Session | Name | Calls | Total tokens | Cost |",
            "|---|---|---:|---:|---:|",
        ]
        for row in by_session.rows[:_TOP_SESSIONS]:
            t, (first, second) = row.totals, map(key_label, row.key)
            lines.append(
                f"| {md(first)} | {md(second)} | {fmt_count(t.calls)} "
                f"| {fmt_count(t.total_tokens)} | {fmt_usd(t.cost)} |"
            )
    cache = totals.cache_hit_rate
    lines += [
        "",
        "## Efficiency",
        "",
        f"- **Input/output ratio**: {fmt_ratio(totals.io_ratio)}",
        f"- **Cost per 1K tokens**: {fmt_usd(totals.cost_per_1k_tokens)}",
        f"- **Cache hit rate**: {'n/a' if cache is None else fmt_share(cache)} "
        "(input tokens read from the provider's cache)",
    ]
    period_alerts = [] if alerts is None else alerts.within(report.since, report.until)
    budget = [alert for alert in period_alerts if "budget" in alert.rule.lower()]
    other = [alert for alert in period_alerts if alert not in budget]
    if budget or totals.blocked_calls:
        lines += ["", "## Budgets", ""]
        lines.append(f"- **Calls blocked by a budget**: {fmt_count(totals.blocked_calls)}")
        if budget:
            lines += ["", *_alert_rows(budget)]
    if other:
        lines += ["", "## Alerts", "", *_alert_rows(other)]
    return "\n".join(lines) + "\n"
