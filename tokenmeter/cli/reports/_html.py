"""The self-contained HTML report: inline CSS and hand-drawn SVG charts, no script, no network.

Every string that came from the data (model, session and tag names) goes through ``esc`` before it
reaches the page, so a session called ``<script>`` is shown, never run.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from decimal import Decimal
from html import escape

from tokenmeter.cli.reports._alerts import Alerts
from tokenmeter.cli.reports._format import fmt_int, fmt_usd
from tokenmeter.cli.reports._model import Breakdown, Report, Row
from tokenmeter.cli.reports._render import (
    CellTable,
    call_cells,
    period_text,
    summary_cells,
)

__all__ = ["HTML_GROUPINGS", "render_html"]

#: The extra groupings the charts need, asked of the query next to the user's ``--by``.
HTML_GROUPINGS = (("day", "model"), ("model",), ("session",))

_PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#59a14f",
    "#e15759",
    "#76b7b2",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
)
_TOP = 9  # series beyond this many are summed into "other"
_WIDTH = 760

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#222;
background:#fafafa}
h1{margin:0 0 .25rem}h2{margin-top:2rem}.meta{color:#666;margin:0 0 1rem}
.cards{display:flex;gap:1rem;flex-wrap:wrap}.card{background:#fff;border:1px solid #ddd;
border-radius:6px;padding:.75rem 1rem;min-width:9rem}.card b{display:block;font-size:1.4rem}
.chart{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.5rem;margin:.5rem 0;
max-width:100%;overflow-x:auto}
table{border-collapse:collapse;background:#fff;font-size:.9rem}
th,td{border:1px solid #ddd;padding:.3rem .6rem;text-align:left;white-space:nowrap}
td.n,th.n{text-align:right}
tfoot td{font-weight:bold;background:#f2f2f2}.legend span{display:inline-block;margin-right:1rem}
.swatch{display:inline-block;width:.8rem;height:.8rem;margin-right:.3rem;vertical-align:middle}
.empty{color:#888;font-style:italic}
"""


def esc(text: object) -> str:
    return escape(str(text), quote=True)


def _money_axis(value: Decimal, top: Decimal) -> str:
    """Axis labels share one precision, enough to tell the gridlines apart."""
    exponent = (top / 4).normalize().as_tuple().exponent
    places = max(2, -exponent if isinstance(exponent, int) else 2)
    return f"${value:,.{places}f}"


def _nice_max(value: Decimal) -> Decimal:
    """A round number just above ``value`` for the y axis (1, 2, 5 x 10^n)."""
    if value <= 0:
        return Decimal(1)
    exponent = value.adjusted()
    for step in (1, 2, 5, 10):
        candidate = Decimal(step).scaleb(exponent)
        if candidate >= value:
            return candidate
    return Decimal(10).scaleb(exponent)


def _model_label(row: Row, columns: Sequence[str]) -> str:
    values = dict(zip(columns, row.key, strict=True))
    return f"{values['provider']}/{values['model']}"


def _model_colors(by_model: Breakdown) -> dict[str, str]:
    labels = [_model_label(row, by_model.columns) for row in by_model.rows]
    colors = {label: _PALETTE[i % len(_PALETTE)] for i, label in enumerate(labels[:_TOP])}
    colors["other"] = "#cccccc"
    return colors


def _daily_chart(per_day_model: Breakdown, colors: dict[str, str]) -> str:
    stacks: dict[str, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for row in per_day_model.rows:
        model = _model_label(row, per_day_model.columns)
        day = dict(zip(per_day_model.columns, row.key, strict=True))["day"]
        stacks[day][model if model in colors else "other"] += row.totals.cost_usd
    days = sorted(stacks)
    peak = max((sum(stack.values(), Decimal(0)) for stack in stacks.values()), default=Decimal(0))
    if not days or peak <= 0:
        return '<p class="empty">No priced calls in this period.</p>'
    top = _nice_max(peak)
    left, right, height, bottom = 70, 10, 240, 40
    plot_w, plot_h = _WIDTH - left - right, height - 10
    slot = plot_w / len(days)
    bar = max(min(slot * 0.8, 60), 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="Cost per day by model" '
        f'width="{_WIDTH}" height="{height + bottom}" viewBox="0 0 {_WIDTH} {height + bottom}">'
    ]
    for i in range(5):
        value = top * i / 4
        y = 10 + plot_h - plot_h * float(value / top)
        parts.append(
            f'<line x1="{left}" x2="{_WIDTH - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">'
            f"{esc(_money_axis(value, top))}</text>"
        )
    label_every = max(1, len(days) // 12)
    for index, day in enumerate(days):
        x = left + slot * index + (slot - bar) / 2
        y = 10 + plot_h
        for model, cost in sorted(
            stacks[day].items(), key=lambda item: list(colors).index(item[0])
        ):
            h = plot_h * float(cost / top)
            y -= h
            parts.append(
                f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                f'fill="{colors[model]}"><title>{esc(day)} · {esc(model)}: '
                f"{esc(fmt_usd(cost))}</title></rect>"
            )
        if index % label_every == 0:
            parts.append(
                f'<text x="{x + bar / 2:.1f}" y="{height + 16}" font-size="11" '
                f'text-anchor="middle">{esc(day[5:])}</text>'
            )
    parts.append("</svg>")
    legend = "".join(
        f'<span><i class="swatch" style="background:{color}"></i>{esc(label)}</span>'
        for label, color in colors.items()
        if any(label in stack for stack in stacks.values())
    )
    return "".join(parts) + f'<div class="legend">{legend}</div>'


def _bar_chart(title: str, bars: list[tuple[str, str, Decimal, str]]) -> str:
    """Horizontal bars: (label, tooltip, cost, colour), largest first."""
    bars = [bar for bar in bars if bar[2] > 0]
    if not bars:
        return '<p class="empty">No priced calls in this period.</p>'
    top = max(cost for _, _, cost, _ in bars)
    label_w, row_h = 260, 24
    plot_w = _WIDTH - label_w - 110
    height = row_h * len(bars) + 10
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{esc(title)}" '
        f'width="{_WIDTH}" height="{height}" viewBox="0 0 {_WIDTH} {height}">'
    ]
    for i, (label, tooltip, cost, color) in enumerate(bars):
        y = 5 + i * row_h
        w = max(plot_w * float(cost / top), 1)
        short = label if len(label) <= 34 else label[:33] + "…"
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 16}" font-size="12" text-anchor="end">'
            f"{esc(short)}</text>"
            f'<rect class="bar" x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 6}" '
            f'fill="{color}"><title>{esc(tooltip)}: {esc(fmt_usd(cost))}</title></rect>'
            f'<text x="{label_w + w + 6:.1f}" y="{y + 16}" font-size="12">'
            f"{esc(fmt_usd(cost))}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _table(cells: CellTable) -> str:
    def row(values: Sequence[str], tag: str) -> str:
        return (
            "<tr>"
            + "".join(
                f"<{tag}{' class=n' if cells.is_numeric(i) else ''}>{esc(value)}</{tag}>"
                for i, value in enumerate(values)
            )
            + "</tr>"
        )

    body = "".join(row(values, "td") for values in cells.rows)
    foot = f"<tfoot>{row(cells.footer, 'td')}</tfoot>" if cells.footer else ""
    return f"<table><thead>{row(cells.headers, 'th')}</thead><tbody>{body}</tbody>{foot}</table>"


def _find(report: Report, specs: tuple[str, ...]) -> Breakdown:
    for breakdown in report.breakdowns:
        if tuple(d.spec for d in breakdown.dimensions) == specs:
            return breakdown
    raise ValueError(f"the report was not queried with grouping {specs}")


def render_html(report: Report, alerts: Alerts | None = None) -> str:
    per_day = _find(report, HTML_GROUPINGS[0])
    by_model = _find(report, HTML_GROUPINGS[1])
    by_session = _find(report, HTML_GROUPINGS[2])
    colors = _model_colors(by_model)
    model_bars = [
        (label, label, row.totals.cost_usd, colors.get(label, colors["other"]))
        for row in by_model.rows[: _TOP + 1]
        for label in [_model_label(row, by_model.columns)]
    ]
    session_bars = [
        (
            row.key[1] or row.key[0],
            f"{row.key[1]} ({row.key[0]})" if row.key[1] else row.key[0],
            row.totals.cost_usd,
            _PALETTE[0],
        )
        for row in by_session.rows[:10]
    ]
    totals = report.totals
    cards = (
        ("Total cost", fmt_usd(totals.cost)),
        ("Calls", fmt_int(totals.calls)),
        ("Total tokens", fmt_int(totals.total_tokens)),
        ("Unpriced calls", fmt_int(totals.unpriced_calls)),
    )
    sections = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>tokenmeter report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>tokenmeter report</h1>",
        f'<p class="meta">{esc(report.source)} · {esc(period_text(report))}</p>',
        '<div class="cards">'
        + "".join(f'<div class="card">{esc(k)}<b>{esc(v)}</b></div>' for k, v in cards)
        + "</div>",
        '<h2>Cost per day by model</h2><div class="chart" id="chart-daily">',
        _daily_chart(per_day, colors),
        '</div><h2>Cost by model</h2><div class="chart" id="chart-models">',
        _bar_chart("Cost by model", model_bars),
        '</div><h2>Top sessions</h2><div class="chart" id="chart-sessions">',
        _bar_chart("Top sessions by cost", session_bars),
        "</div>",
        f"<h2>By {esc(report.main.title)}</h2>",
        _table(summary_cells(report)),
    ]
    if report.calls is not None:
        sections += [f"<h2>Calls ({len(report.calls):,})</h2>", _table(call_cells(report.calls))]
    sections.append("</body></html>")
    return "\n".join(sections) + "\n"
