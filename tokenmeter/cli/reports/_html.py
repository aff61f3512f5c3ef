"""The HTML dashboard: one self-contained file, inline CSS, charts drawn with HTML and CSS.

Nothing is fetched: no stylesheet, font, image or script from anywhere. The charts are plain
elements sized in percent, so they fill the width at 1400 px and at 390 px with text that stays
readable; every bar carries its exact value (``data-cost``) and a hover title. One small inline
script sorts the main table when a header is clicked; the page is complete without it.

Every string that came from the data (model, session, tag names, alert text) goes through
``esc``, which also escapes ``<`` and ``&`` inside the script-free parts, so a session called
``<script>`` is shown, never run.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from html import escape

from tokenmeter._format import exact_usd, fmt_count, fmt_usd
from tokenmeter._totals import Totals
from tokenmeter.cli.reports._alerts import Alert, Alerts
from tokenmeter.cli.reports._model import (
    NO_NAME_LABEL,
    NONE_LABEL,
    Breakdown,
    Report,
    Row,
    TagSection,
    key_label,
    tag_label,
    untagged_label,
)
from tokenmeter.cli.reports._render import (
    CellTable,
    call_cells,
    change_text,
    period_text,
    summary_cells,
)

__all__ = ["HTML_GROUPINGS", "HTML_SHORTLISTS", "HTML_TAG_VALUES", "nice_ticks", "render_html"]

#: The extra groupings the charts need, asked of the query next to the user's ``--by``.
HTML_GROUPINGS = (("day", "model"), ("model",), ("session",), ("name",))
#: Values of one tag key shown as bars (the others are summed in one); ``Query.tag_values``.
HTML_TAG_VALUES = 10
#: Tag keys with a chart of their own, most used first (a ``--by tag:KEY`` key always).
_TAG_KEYS = 8
_MORE_KEYS_LISTED = 20

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
_OTHER = "#c7c7c7"
_TOP = 9  # series beyond this many are summed into "other"
_BARS = 12  # rows of a horizontal bar chart
#: The groupings only a bar chart shows (their first ``_BARS`` rows): a store of a session per
#: call has millions of sessions, which need not all be made rows.
HTML_SHORTLISTS = {HTML_GROUPINGS[2]: _BARS, HTML_GROUPINGS[3]: _BARS}
#: Characters of labels under the daily chart, at most: side by side at 390 px (6 days'
#: MM-DD, 4 months' YYYY-MM).
_X_LABEL_CHARS = 30
#: Columns the daily chart draws at most: a quarter of days, still 2 px wide each at 390 px.
#: More days than that are drawn by week, month, year... (730 columns were each 0 px wide).
_COLUMNS = 92
_DENSE = 46  # beyond this many columns they stand 1 px apart, not 2

_CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1f2328;
background:#f6f8fa;font-size:15px;line-height:1.4}
main{max-width:1400px;margin:0 auto;padding:1.25rem clamp(.75rem,3vw,2rem)}
h1{margin:0 0 .25rem;font-size:1.6rem}
h2{margin:1.75rem 0 .6rem;font-size:1.2rem;overflow-wrap:anywhere}
.meta{color:#57606a;margin:0 0 1rem;overflow-wrap:anywhere}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(10rem,1fr));gap:.75rem}
.card{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:.7rem .9rem}
.card span{color:#57606a;font-size:.85rem}
.card b{display:block;font-size:1.35rem;overflow-wrap:anywhere}
.card small{color:#57606a}.up{color:#cf222e}.down{color:#1a7f37}
.panel{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:1rem;min-width:0}
.grid2{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,34rem),1fr));gap:1rem}
.chart{display:grid;grid-template-columns:auto minmax(0,1fr);gap:0 .5rem}
.yaxis{position:relative;height:260px;font-size:.8rem;color:#57606a;min-width:3.5rem}
.yaxis span{position:absolute;right:0;transform:translateY(50%)}
.plot{position:relative;height:260px;border-left:1px solid #8c959f;border-bottom:1px solid #8c959f}
.gridline{position:absolute;left:0;right:0;border-top:1px solid #eaeef2}
.cols{position:absolute;inset:0;display:flex;align-items:flex-end;gap:2px;padding:0 2px}
.col{flex:1 1 0;min-width:0;height:100%;display:flex;flex-direction:column-reverse}
.seg{width:100%;min-height:1px}.seg:hover,.bar:hover{filter:brightness(1.15)}
.xaxis{grid-column:2;display:flex;gap:2px;padding:0 2px;font-size:.8rem;color:#57606a;
height:1.3rem}
.xaxis span{flex:1 1 0;min-width:0;white-space:nowrap;overflow:visible}
.legend{display:flex;flex-wrap:wrap;gap:.3rem 1rem;margin-top:.6rem;font-size:.85rem;
overflow-wrap:anywhere}
.legend i{display:inline-block;width:.8rem;height:.8rem;margin-right:.3rem;vertical-align:-1px;
border-radius:2px}
.bars{display:grid;grid-template-columns:minmax(0,38%) minmax(0,1fr) auto;gap:.35rem .6rem;
align-items:center;font-size:.9rem}
.bars .label{overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.track{background:#f0f3f6;border-radius:3px;height:1.1rem}.bar{height:100%;border-radius:3px}
.value{font-variant-numeric:tabular-nums;text-align:right}
.scroll{overflow-x:auto;max-width:100%;border:1px solid #d0d7de;border-radius:8px;background:#fff}
table{border-collapse:collapse;font-size:.88rem;width:100%}
th,td{border-bottom:1px solid #eaeef2;padding:.35rem .6rem;text-align:left;white-space:nowrap}
th{background:#f6f8fa;position:sticky;top:0}
th button{font:inherit;font-weight:600;background:none;border:0;padding:0;cursor:pointer;
color:inherit}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
tfoot td{font-weight:bold;background:#f6f8fa}
.empty{color:#6e7781;font-style:italic}
.note{color:#57606a;font-size:.85rem;margin:0 0 .6rem;overflow-wrap:anywhere}
footer{color:#6e7781;font-size:.8rem;margin:2rem 0 1rem}
@media (max-width:600px){.bars{grid-template-columns:minmax(0,1fr) auto;gap:.1rem .6rem}
.bars .label{grid-column:1/-1;white-space:normal;overflow-wrap:anywhere;margin-top:.3rem}}
"""

#: Sorts the table whose header button was clicked by that column (numbers by value; a cell
#: that is not wholly a number, such as a day, as text: parseFloat read "2026-11-01" as 2026).
_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th button").forEach(function (button, index) {
    button.addEventListener("click", function () {
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      var down = button.getAttribute("data-dir") !== "desc";
      rows.sort(function (a, b) {
        var x = a.cells[index].getAttribute("data-sort");
        var y = b.cells[index].getAttribute("data-sort");
        var nx = Number(x), ny = Number(y);
        var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : String(x).localeCompare(String(y));
        return down ? -c : c;
      });
      button.setAttribute("data-dir", down ? "desc" : "asc");
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""


def esc(text: object) -> str:
    return escape(str(text), quote=True)


# --- numbers -------------------------------------------------------------------------------------


def nice_ticks(peak: Decimal, most: int = 6) -> list[Decimal]:
    """Axis ticks from 0 in steps of 1, 2, 2.5 or 5 x 10^n, at most ``most`` above 0, the last
    one just at or above ``peak``: a $2.15 peak gets 0, 0.5, ..., 2.5, not an axis to $5."""
    if peak <= 0:
        return [Decimal(0), Decimal(1)]
    exponent = peak.adjusted() - 1
    while True:
        for mantissa in ("1", "2", "2.5", "5"):
            step = Decimal(mantissa).scaleb(exponent)
            count = int((peak / step).to_integral_value(ROUND_CEILING))
            if count <= most:
                return [step * i for i in range(max(count, 1) + 1)]
        exponent += 1


def _pct(value: Decimal, top: Decimal) -> str:
    return f"{float(value / top) * 100:.3f}%" if top else "0%"


# --- charts --------------------------------------------------------------------------------------


def _model_label(row: Row, columns: Sequence[str]) -> str:
    values = dict(zip(columns, row.key, strict=True))
    return f"{values['provider']}/{values['model']}"


def _model_colors(by_model: Breakdown) -> dict[str, str]:
    labels = [_model_label(row, by_model.columns) for row in by_model.rows]
    colors = {label: _PALETTE[i % len(_PALETTE)] for i, label in enumerate(labels[:_TOP])}
    colors["other"] = _OTHER
    return colors


def _empty() -> str:
    return '<p class="empty">No priced calls in this period.</p>'


def _week(day: str) -> str:
    start = date.fromisoformat(day)
    return f"week of {(start - timedelta(days=start.weekday())).isoformat()}"  # as --by week


#: The periods the daily chart can draw, finest first: a day's label to that period's label.
_PERIODS: tuple[tuple[str, Callable[[str], str]], ...] = (
    ("day", lambda day: day),
    ("week", _week),
    ("month", lambda day: day[:7]),
    ("year", lambda day: day[:4]),
    *((f"{10**n:,} years", lambda day, n=n: day[: 4 - n] + "0" * n + "s") for n in (1, 2, 3)),
)


def _period_of(days: list[str]) -> tuple[str, Callable[[str], str]]:
    """The finest period that draws ``days`` in at most ``_COLUMNS`` columns (a label that is
    no day, such as ``(none)``, stays as it is)."""

    def label(period: Callable[[str], str], day: str) -> str:
        try:
            date.fromisoformat(day)
        except ValueError:
            return day
        return period(day)

    name, period = next(
        ((name, period) for name, period in _PERIODS
         if len({label(period, day) for day in days}) <= _COLUMNS),
        _PERIODS[-1],
    )  # fmt: skip
    return name, lambda day: label(period, day)


def _daily_chart(per_day_model: Breakdown, colors: dict[str, str]) -> tuple[str, str]:
    """The chart of cost per day (or per coarser period: see ``_COLUMNS``) and that period."""
    days_seen = sorted(
        {
            key_label(dict(zip(per_day_model.columns, r.key, strict=True))["day"])
            for r in per_day_model.rows
        }
    )
    unit, period_of = _period_of(days_seen)
    stacks: dict[str, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for row in per_day_model.rows:
        model = _model_label(row, per_day_model.columns)
        day = period_of(key_label(dict(zip(per_day_model.columns, row.key, strict=True))["day"]))
        stacks[day][model if model in colors else "other"] += row.totals.cost_usd
    days = sorted(stacks)
    peak = max((sum(stack.values(), Decimal(0)) for stack in stacks.values()), default=Decimal(0))
    if not days or peak <= 0:
        return unit, _empty()
    ticks = nice_ticks(peak)
    top = ticks[-1]
    order = list(colors)
    y_labels = "".join(
        f'<span style="bottom:{_pct(tick, top)}">{esc(fmt_usd(tick))}</span>' for tick in ticks
    )
    grid = "".join(f'<div class="gridline" style="bottom:{_pct(t, top)}"></div>' for t in ticks)
    columns = []
    for day in days:
        stack = stacks[day]
        total = sum(stack.values(), Decimal(0))
        drawn = sum((cost for cost in stack.values() if cost > 0), Decimal(0))  # not refunds
        segments = "".join(
            f'<div class="seg" style="height:{_pct(cost, drawn)};background:{colors[model]}" '
            f'data-label="{esc(model)}" data-cost="{exact_usd(cost)}" '
            f'title="{esc(day)} · {esc(model)}: {esc(fmt_usd(cost))}"></div>'
            for model, cost in sorted(stack.items(), key=lambda item: order.index(item[0]))
            if cost > 0
        )
        columns.append(
            f'<div class="col" data-day="{esc(day)}" data-cost="{exact_usd(total)}" '
            f'title="{esc(day)}: {esc(fmt_usd(total))}">'
            f'<div style="height:{_pct(total, top)};display:flex;flex-direction:column-reverse">'
            f"{segments}</div></div>"
        )
    texts = [day[-5:] if unit in ("day", "week") else day for day in days]
    every = max(1, -(-len(days) // max(1, _X_LABEL_CHARS // max(map(len, texts)))))
    x_labels = "".join(
        f"<span>{esc(text) if i % every == 0 else ''}</span>" for i, text in enumerate(texts)
    )
    gap = ' style="gap:1px"' if len(days) > _DENSE else ""
    legend = "".join(
        f'<span><i style="background:{color}"></i>{esc(label)}</span>'
        for label, color in colors.items()
        if any(stack.get(label, 0) > 0 for stack in stacks.values())  # drawn somewhere
    )
    return unit, (
        f'<div class="chart" role="img" aria-label="Cost per {unit} by model, up to '
        f'{esc(fmt_usd(peak))}" data-top="{exact_usd(top)}">'
        f'<div class="yaxis">{y_labels}</div>'
        f'<div class="plot">{grid}<div class="cols"{gap}>{"".join(columns)}</div></div>'
        f'<div class="xaxis"{gap}>{x_labels}</div></div><div class="legend">{legend}</div>'
    )


def _bar_chart(title: str, bars: list[tuple[str, str, Decimal, str]]) -> str:
    """Horizontal bars: (label, hover text, cost, colour), largest first."""
    bars = [bar for bar in bars if bar[2] > 0]
    if not bars:
        return _empty()
    top = max(cost for _, _, cost, _ in bars)
    parts = [f'<div class="bars" role="img" aria-label="{esc(title)}">']
    for label, hover, cost, color in bars:
        parts.append(
            f'<div class="label" title="{esc(hover)}">{esc(label)}</div>'
            f'<div class="track"><div class="bar" style="width:{_pct(cost, top)};'
            f'background:{color}" data-label="{esc(label)}" data-cost="{exact_usd(cost)}" '
            f'title="{esc(hover)}: {esc(fmt_usd(cost))}"></div></div>'
            f'<div class="value">{esc(fmt_usd(cost))}</div>'
        )
    parts.append("</div>")
    return "".join(parts)


def _session_bars(by_session: Breakdown) -> list[tuple[str, str, Decimal, str]]:
    """Top sessions: a name shared by several sessions gets the id's end, so labels differ."""
    rows = by_session.rows[:_BARS]
    names = [row.key[1] for row in rows]
    bars = []
    for row in rows:
        session_id, name = map(key_label, row.key)
        label = name or session_id
        if name and names.count(name) > 1:
            label = f"{name} · …{session_id[-8:]}"
        hover = f"{name} ({session_id})" if name else session_id
        bars.append((label, hover, row.totals.cost_usd, _PALETTE[0]))
    return bars


def _simple_bars(breakdown: Breakdown, color: str) -> list[tuple[str, str, Decimal, str]]:
    bars = []
    for row in breakdown.rows[:_BARS]:
        label = row.key[-1] or NO_NAME_LABEL
        bars.append((label, label, row.totals.cost_usd, color))
    return bars


def _tag_chart(section: TagSection) -> str:
    key = section.key
    bars = [
        (
            tag_label(key, row.key[0]),
            f"{key} = {tag_label(key, row.key[0])}",
            row.totals.cost_usd,
            _PALETTE[4],
        )
        for row in section.rows
    ]
    if section.rest is not None:
        others = section.values - len(section.rows)
        label = f"{fmt_count(others)} other values" if others > 0 else "other values"
        bars.append((label, f"{key}: {label}", section.rest.cost_usd, _OTHER))
    if section.untagged.calls:
        label = untagged_label(key)
        bars.append((label, f"calls without the tag {key}", section.untagged.cost_usd, _OTHER))
    calls = section.tagged.calls + section.untagged.calls
    note = (
        f"{fmt_count(section.values)} value{'' if section.values == 1 else 's'} on "
        f"{fmt_count(section.tagged.calls)} of {fmt_count(calls)} calls"
    )
    if section.partial:
        note += "; more values than a JSONL read keeps apart: ranked among the first ones seen"
    return f'<p class="note">{esc(note)}</p>' + _bar_chart(f"Cost by tag {key}", bars)


def _tag_charts(report: Report) -> list[str]:
    """A chart per tag key in the data: the ``--by tag:KEY`` ones, then the most used."""
    found = report.tags or []
    asked = {d.tag_key for d in report.main.dimensions if d.tag_key is not None}
    first = [section for section in found if section.key in asked]
    shown = first + [s for s in found if s.key not in asked][: max(0, _TAG_KEYS - len(first))]
    if not shown:
        return []
    parts = ['<div class="grid2" id="tags">']
    for i, section in enumerate(shown):
        parts += [
            f"<div><h2>Cost by tag {esc(section.key)}</h2>"
            f'<div class="panel" id="chart-tag-{i}" data-tag="{esc(section.key)}">',
            _tag_chart(section),
            "</div></div>",
        ]
    parts.append("</div>")
    more = [section.key for section in found if section not in shown]
    count = len(more) + report.more_tag_keys
    if count:
        listed = ", ".join(more[:_MORE_KEYS_LISTED])
        listed += "…" if count > min(len(more), _MORE_KEYS_LISTED) else ""
        keys = f"{fmt_count(count)} more tag key{'' if count == 1 else 's'}"
        text = f"{keys} without a chart: {listed}" if more else f"{keys} (too many to total)"
        parts.append(f'<p class="note" id="more-tags">{esc(text)}</p>')
    return parts


# --- tables --------------------------------------------------------------------------------------

#: Rows a table of the page holds at most: 100,000 sessions made a 50 MB page that a browser
#: took 107 s to show. The JSON and CSV formats hold every row.
_MAX_ROWS = 1_000


def _rows_shown(table: CellTable, what: str) -> str:
    """Cut ``table`` to its first ``_MAX_ROWS`` rows; the note that says so (or nothing)."""
    count = len(table.rows)
    if count <= _MAX_ROWS:
        return ""
    del table.rows[_MAX_ROWS:]
    return (
        f'<p class="note">The first {_MAX_ROWS:,} of {count:,} {what}s, in this order; the '
        "totals count them all, and the json and csv formats list every one.</p>"
    )


def _sort_key(cell: str) -> str:
    """What a cell sorts by: the number in it when it is one ($1,234.5 -> 1234.5)."""
    text = cell.replace("$", "").replace(",", "").replace("%", "").replace(" ms", "").strip()
    if text in ("n/a", ""):
        return "-Infinity"  # unknown sorts below every number
    try:
        return str(float(text))
    except ValueError:
        return cell


def _table(cells: CellTable, *, sortable: bool = False) -> str:
    def head(i: int, value: str) -> str:
        klass = " class=n" if cells.is_numeric(i) else ""
        inner = f"<button type=button>{esc(value)}</button>" if sortable else esc(value)
        return f"<th{klass}>{inner}</th>"

    def cell(i: int, value: str) -> str:
        klass = " class=n" if cells.is_numeric(i) else ""
        return f'<td{klass} data-sort="{esc(_sort_key(value))}">{esc(value)}</td>'

    header = "<tr>" + "".join(head(i, v) for i, v in enumerate(cells.headers)) + "</tr>"
    body = "".join(
        "<tr>" + "".join(cell(i, v) for i, v in enumerate(row)) + "</tr>" for row in cells.rows
    )
    foot = ""
    if cells.footer:
        foot = "<tfoot><tr>" + "".join(cell(i, v) for i, v in enumerate(cells.footer))
        foot += "</tr></tfoot>"
    klass = ' class="sortable"' if sortable else ""
    return (
        f'<div class="scroll"><table{klass}><thead>{header}</thead><tbody>{body}</tbody>'
        f"{foot}</table></div>"
    )


def _attention(by_model: Breakdown) -> str:
    """Errors, blocked and estimated calls per model: the calls that need a second look."""
    rows = [
        row
        for row in by_model.rows
        if row.totals.error_calls or row.totals.blocked_calls or row.totals.estimated_calls
    ]
    if not rows:
        return '<p class="empty">No failed, blocked or estimated calls in this period.</p>'
    cells = CellTable(["Model", "Calls", "Errors", "Blocked", "Estimated"], range(1, 5))
    for row in rows:
        t = row.totals
        cells.rows.append(
            [
                _model_label(row, by_model.columns),
                fmt_count(t.calls),
                fmt_count(t.error_calls),
                fmt_count(t.blocked_calls),
                fmt_count(t.estimated_calls),
            ]
        )
    return _table(cells)


def _alerts_table(alerts: list[Alert]) -> str:
    cells = CellTable(["Time", "Rule", "Scope", "Observed", "Threshold", "About"], range(3, 5))
    for alert in alerts:
        cells.rows.append(
            [alert.time, alert.rule, alert.scope, alert.observed, alert.threshold, alert.subject]
        )
    return _table(cells)


def _find(report: Report, specs: tuple[str, ...]) -> Breakdown:
    for breakdown in report.breakdowns:
        if tuple(d.spec for d in breakdown.dimensions) == specs:
            return breakdown
    raise ValueError(f"the report was not queried with grouping {specs}")


def _card(label: str, value: str, note: str = "", klass: str = "") -> str:
    small = f'<small class="{klass}">{esc(note)}</small>' if note else ""
    return f'<div class="card"><span>{esc(label)}</span><b>{esc(value)}</b>{small}</div>'


def _delta(now: Totals, before: Totals | None) -> tuple[str, str]:
    if before is None:
        return "", ""
    if now.cost is None or before.cost is None:  # unpriced calls: no change can be told
        return f"vs {fmt_usd(before.cost, na='an unknown cost')} the period before", ""
    text = change_text(now.cost, before.cost)
    if not text:
        return "no change from the period before", ""
    klass = "up" if now.cost_usd >= before.cost_usd else "down"
    return f"{text} vs {fmt_usd(before.cost, na='$0.00')} the period before", klass


# --- the page ------------------------------------------------------------------------------------


def render_html(
    report: Report, alerts: Alerts | None = None, *, now: datetime | None = None
) -> str:
    per_day = _find(report, HTML_GROUPINGS[0])
    by_model = _find(report, HTML_GROUPINGS[1])
    by_session = _find(report, HTML_GROUPINGS[2])
    by_name = _find(report, HTML_GROUPINGS[3])
    colors = _model_colors(by_model)
    unit, daily_chart = _daily_chart(per_day, colors)
    model_bars = [
        (label, label, row.totals.cost_usd, colors.get(label, _OTHER))
        for row in by_model.rows[:_BARS]
        for label in [_model_label(row, by_model.columns)]
    ]
    totals = report.totals
    before = None if report.previous is None else report.previous.totals
    delta, delta_class = _delta(totals, before)
    cards = [
        _card("Total cost", fmt_usd(totals.cost), delta, delta_class),
        _card("Calls", fmt_count(totals.calls)),
        _card("Total tokens", fmt_count(totals.total_tokens)),
        _card("Average cost per priced call", fmt_usd(totals.avg_cost_per_call)),
        _card("Errors", fmt_count(totals.error_calls)),
        _card("Blocked by a budget", fmt_count(totals.blocked_calls)),
        _card("Estimated usage", fmt_count(totals.estimated_calls)),
        _card("Unpriced calls", fmt_count(totals.unpriced_calls)),
    ]
    generated = (now or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    meta = f"{report.source} · {period_text(report)}"
    if report.filters:
        meta += f" · only {report.filters}"
    sections = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>tokenmeter report</title>",
        f"<style>{_CSS}</style></head><body><main>",
        "<h1>tokenmeter report</h1>",
        f'<p class="meta">{esc(meta)}<br>Generated {esc(generated)}</p>',
        f'<section class="cards" id="cards">{"".join(cards)}</section>',
        f'<h2>Cost per {unit} by model</h2><div class="panel" id="chart-daily">',
        daily_chart,
        '</div><div class="grid2"><div><h2>Cost by model</h2><div class="panel" id="chart-models">',
        _bar_chart("Cost by model", model_bars),
        '</div></div><div><h2>Cost by session name</h2><div class="panel" id="chart-names">',
        _bar_chart("Cost by session name", _simple_bars(by_name, _PALETTE[2])),
        '</div></div></div><h2>Top sessions</h2><div class="panel" id="chart-sessions">',
        _bar_chart("Top sessions by cost", _session_bars(by_session)),
        "</div>",
    ]
    sections += _tag_charts(report)
    sections += [
        '<h2>Errors, blocked and estimated calls</h2><div id="attention">',
        _attention(by_model),
        "</div>",
    ]
    period_alerts = [] if alerts is None else alerts.within(report.since, report.until)
    if period_alerts:
        sections += [
            f'<h2>Budgets and alerts ({len(period_alerts):,})</h2><div id="alerts">',
            _alerts_table(period_alerts),
            "</div>",
        ]
    main = summary_cells(report)
    sections += [
        f"<h2>By {esc(report.main.title)}</h2>",
        _rows_shown(main, "row"),
        f'<div id="main-table">{_table(main, sortable=True)}</div>',
    ]
    if report.calls is not None:
        calls = call_cells(report.calls, report.tz)
        sections += [
            f"<h2>Calls ({len(report.calls):,})</h2>",
            _rows_shown(calls, "call"),
            _table(calls, sortable=True),
        ]
    sections += [
        f"<footer>tokenmeter · {esc(NONE_LABEL)} marks calls without that value, "
        f"{esc(untagged_label('KEY'))} calls without the tag KEY · "
        "costs are estimates from published prices</footer>",
        f"</main><script>{_SCRIPT}</script></body></html>",
    ]
    return "\n".join(sections) + "\n"
