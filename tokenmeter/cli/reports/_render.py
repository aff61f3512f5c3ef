"""Render a Report as a terminal table, markdown, JSON or CSV (HTML lives in ``_html``).

Human formats share one cell layout (``summary_cells`` / ``call_cells``); the machine formats
(JSON, CSV) carry exact decimal numbers and nothing else: no colour, no totals mixed into rows.
CSV text cells that a spreadsheet would run as a formula are neutralised (see ``csv_text``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import Decimal
from typing import Any

from tokenmeter._format import markdown_text
from tokenmeter._totals import to_pico_usd_precision
from tokenmeter.cli._dates import format_instant, in_zone
from tokenmeter.cli._output import one_line, printable
from tokenmeter.cli.reports._format import (
    exact_pieces,
    fmt_int,
    fmt_share,
    fmt_usd,
    round_share,
)
from tokenmeter.cli.reports._model import (
    CALL_JSON_KEYS,
    NO_NAME_LABEL,
    Call,
    Report,
    Row,
    Totals,
    column_label,
)
from tokenmeter.cli.reports._query import sort_rows

__all__ = [
    "CellTable",
    "call_cells",
    "csv_pieces",
    "csv_text",
    "json_pieces",
    "period_text",
    "render_csv",
    "render_json",
    "render_markdown",
    "render_rich",
    "render_text",
    "summary_cells",
]

MetricCell = Callable[[Totals, Totals, "Row | None", "Report"], str]


def _latency_cell(pick: str) -> MetricCell:
    def cell(totals: Totals, whole: Totals, row: Row | None, report: Report) -> str:
        latency = row.latency if row is not None else None
        if latency is None:
            return ""
        value = latency.p50_ms if pick == "p50" else latency.p95_ms
        return f"{value:,.0f} ms"

    return cell


def compared_rows(report: Report) -> list[Row]:
    """The main table's rows and, with ``--compare``, a row of zero totals for each key that
    spent only in the period before: without it a model no longer used was nowhere, and the
    Prev cost column did not add up to its TOTAL. Sorted as the rows are (time order, or most
    costly first: these last)."""
    rows = report.main.rows
    if report.previous is None:
        return rows
    here = {row.key for row in rows}
    gone = [Row(row.key, Totals()) for row in report.previous.main.rows if row.key not in here]
    return sort_rows(report.main.columns, [*rows, *gone]) if gone else rows


def _previous(row: Row | None, report: Report) -> Totals | None:
    if report.previous is None:
        return None
    if row is None:
        return report.previous.totals
    return report.previous_totals(report.main, row.key)


def _prev_cost(totals: Totals, whole: Totals, row: Row | None, report: Report) -> str:
    previous = _previous(row, report)
    return "" if previous is None else fmt_usd(previous.cost, na="-")


def _change(totals: Totals, whole: Totals, row: Row | None, report: Report) -> str:
    previous = _previous(row, report)
    if previous is None:
        return ""
    return change_text(totals.cost, previous.cost)


def change_text(now: Decimal | None, before: Decimal | None) -> str:
    """``+12.5%`` / ``-3.0%``; ``new`` when there was nothing before; ``""`` when both are 0,
    or when either cost is unknown (calls, none priced): taken as $0, an unpriced period read
    as "-100.0%", a fall to nothing that nobody knows of; ``n/a`` when refunds made the cost
    before negative: no percentage of that means anything (-$2.00 to $1.00 read as -150%)."""
    if now is None or before is None:
        return ""
    if not before:
        return "new" if now else ""
    if before < 0:
        return "n/a"
    return f"{(now - before) / before * 100:+.1f}%"


#: id -> (header, cell). The order is the order of the columns.
METRICS: dict[str, tuple[str, MetricCell]] = {
    "calls": ("Calls", lambda t, w, r, rep: fmt_int(t.calls)),
    "input": ("Input", lambda t, w, r, rep: fmt_int(t.input_tokens)),
    "output": ("Output", lambda t, w, r, rep: fmt_int(t.output_tokens)),
    "cache_read": ("Cache read", lambda t, w, r, rep: fmt_int(t.cache_read_tokens)),
    "cache_write": ("Cache write", lambda t, w, r, rep: fmt_int(t.cache_write_tokens)),
    "reasoning": ("Reasoning", lambda t, w, r, rep: fmt_int(t.reasoning_tokens)),
    "total": ("Total tokens", lambda t, w, r, rep: fmt_int(t.total_tokens)),
    "cost": ("Cost", lambda t, w, r, rep: fmt_usd(t.cost)),
    "avg_cost": ("Avg/call", lambda t, w, r, rep: fmt_usd(t.avg_cost_per_call, na="")),
    "share": ("Share", lambda t, w, r, rep: fmt_share(t.share_of(w))),
    "prev_cost": ("Prev cost", _prev_cost),
    "change": ("Change", _change),
    "unpriced": ("Unpriced", lambda t, w, r, rep: fmt_int(t.unpriced_calls)),
    "errors": ("Errors", lambda t, w, r, rep: fmt_int(t.error_calls)),
    "blocked": ("Blocked", lambda t, w, r, rep: fmt_int(t.blocked_calls)),
    "estimated": ("Estimated", lambda t, w, r, rep: fmt_int(t.estimated_calls)),
    "p50": ("p50 latency", _latency_cell("p50")),
    "p95": ("p95 latency", _latency_cell("p95")),
}
#: Never hidden to fit a terminal: what a reader came for (with the row's key columns).
ESSENTIAL = ("calls", "total", "cost", "change")
#: Hidden first when the terminal is too narrow, in this order.
DROP_ORDER = (
    "reasoning",
    "cache_write",
    "cache_read",
    "prev_cost",
    "share",
    "avg_cost",
    "input",
    "output",
    "p95",
    "estimated",
    "blocked",
    "unpriced",
    "errors",
    "p50",
)
METRIC_HEADERS = tuple(header for header, _ in METRICS.values())
#: The total a column sums, for the columns that can be all zero (such a column says nothing).
_ZERO_WHEN = {
    "reasoning": "reasoning_tokens",
    "cache_write": "cache_write_tokens",
    "cache_read": "cache_read_tokens",
    "unpriced": "unpriced_calls",
    "errors": "error_calls",
    "blocked": "blocked_calls",
    "estimated": "estimated_calls",
}


def _drop_order(totals: Totals) -> list[str]:
    """``DROP_ORDER``, with the columns that are zero on every row first."""
    empty = [n for n in DROP_ORDER if n in _ZERO_WHEN and not getattr(totals, _ZERO_WHEN[n])]
    return empty + [name for name in DROP_ORDER if name not in empty]


def default_metrics(report: Report) -> list[str]:
    """Every usual column; errors / blocked / estimated / latency / comparison when there is
    something to show in them."""
    totals = report.totals
    hidden = set()
    if not totals.error_calls:
        hidden.add("errors")
    if not totals.blocked_calls:
        hidden.add("blocked")
    if not totals.estimated_calls:
        hidden.add("estimated")
    if not any(row.latency for row in report.main.rows):
        hidden |= {"p50", "p95"}
    if report.previous is None:
        hidden |= {"prev_cost", "change"}
    return [name for name in METRICS if name not in hidden]


def parse_metrics(text: str) -> list[str]:
    """``--columns calls,total,cost``; ValueError names an unknown one."""
    names = [part.strip().lower().replace("-", "_") for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in METRICS]
    if unknown or not names:
        raise ValueError(
            f"unknown column {', '.join(unknown) or text!r}: use some of {', '.join(METRICS)}"
        )
    return names


CALL_HEADERS = (
    "Timestamp",
    "Provider",
    "Model",
    "Session",
    "Input",
    "Output",
    "Total tokens",
    "Cost",
    "Status",
)


class CellTable:
    """Headers, string cells and which columns are numeric (right-aligned)."""

    def __init__(self, headers: Sequence[str], numeric: range) -> None:
        self.headers = list(headers)
        self.numeric = numeric
        self.rows: list[list[str]] = []
        self.footer: list[str] | None = None
        self.metric_ids: list[str] = []

    def is_numeric(self, index: int) -> bool:
        return index in self.numeric


def summary_cells(report: Report, metrics: Sequence[str] | None = None) -> CellTable:
    breakdown = report.main
    chosen = list(metrics) if metrics is not None else default_metrics(report)
    headers = [*breakdown.columns, *(METRICS[name][0] for name in chosen)]
    table = CellTable(headers, range(len(breakdown.columns), len(headers)))
    table.metric_ids = chosen
    whole = report.totals
    # --by name: a blank name read as a row without a label (with no session id beside it)
    columns = breakdown.columns
    name = columns.index("session") if "session" in columns and "session_id" not in columns else -1
    for row in compared_rows(report):
        cells = [METRICS[metric][1](row.totals, whole, row, report) for metric in chosen]
        # a tag's calls without it: "(no KEY tag)"
        key = [column_label(column, value) for column, value in zip(columns, row.key, strict=True)]
        if name >= 0 and not key[name]:
            key[name] = NO_NAME_LABEL
        table.rows.append([*key, *cells])
    label = ["TOTAL"] + [""] * (len(breakdown.columns) - 1)
    cells = [
        "" if name in ("p50", "p95") else METRICS[name][1](whole, whole, None, report)
        for name in chosen
    ]
    table.footer = [*label, *cells]
    return table


def _width(table: CellTable, per_column: int = 2, extra: int = -2) -> int:
    """Characters the table takes: its cells plus ``per_column`` each, plus ``extra``."""
    everything = [table.headers, *table.rows, *([table.footer] if table.footer else [])]
    widths = [max(len(cells[i]) for cells in everything) for i in range(len(table.headers))]
    return sum(widths) + per_column * len(widths) + extra


def shorten_middle(text: str, width: int) -> str:
    """``gpt-4o-2024-08-06`` -> ``gpt-4o…08-06``: both ends of a name tell it apart."""
    if len(text) <= width or width < 5:
        return text
    head = width // 2
    tail = width - 1 - head
    return text[:head] + "…" + text[len(text) - tail :]


def fit_summary(
    report: Report, width: int, metrics: Sequence[str], per_column: int = 2, extra: int = -2
) -> tuple[CellTable, list[str]]:
    """The summary table within ``width`` characters (plain layout: 2 spaces between columns;
    rich: 3 per column and 1 more): secondary columns go first, in ``DROP_ORDER``, then long
    key cells are shortened in the middle. Returns the table and the hidden headers."""
    chosen = list(metrics)
    dropped: list[str] = []
    table = summary_cells(report, chosen)

    def too_wide() -> int:
        return _width(table, per_column, extra) - width

    for name in _drop_order(report.totals):
        if too_wide() <= 0:
            break
        if name in chosen:
            chosen.remove(name)
            dropped.append(METRICS[name][0])
            table = summary_cells(report, chosen)
    keys = len(report.main.columns)
    while too_wide() > 0:
        lengths = [max(len(r[i]) for r in table.rows) if table.rows else 0 for i in range(keys)]
        widest = max(range(keys), key=lambda i: lengths[i]) if keys else None
        if widest is None or lengths[widest] <= 12:
            break
        target = max(12, lengths[widest] - too_wide())
        for cells in table.rows:
            cells[widest] = shorten_middle(cells[widest], target)
    return table, dropped


def local_time(timestamp: str, tz: tzinfo) -> str:
    """A record timestamp as shown to people: as stored in UTC, else in ``--tz`` with its offset
    (as stored too when it has no time there, before year 1 or after 9999)."""
    if tz is UTC:
        return timestamp
    try:
        instant = in_zone(datetime.fromisoformat(timestamp.replace("Z", "+00:00")), tz)
    except ValueError:
        return timestamp
    return timestamp if instant is None else instant.isoformat(timespec="milliseconds")


def call_cells(calls: Iterable[Call], tz: tzinfo = UTC) -> CellTable:
    table = CellTable(CALL_HEADERS, range(4, 8))
    for call in calls:
        table.rows.append(
            [
                local_time(call.timestamp, tz),
                call.provider,
                call.model,
                call.session_name or call.session_id or "",
                fmt_int(call.input_tokens),
                fmt_int(call.output_tokens),
                fmt_int(call.total_tokens),
                fmt_usd(call.cost),
                _status(call),
            ]
        )
    return table


def _zone_name(report: Report) -> str:
    return str(report.tz)


def _is_midnight(local: datetime) -> bool:
    return (local.hour, local.minute, local.second, local.microsecond) == (0, 0, 0, 0)


def _instant_text(local: datetime) -> str:
    naive = local.replace(tzinfo=None)
    return naive.isoformat(sep=" ", timespec="milliseconds")  # a four-digit year, unlike %Y


def _bound_in_zone(bound: datetime | None, report: Report) -> datetime | None:
    """A bound of the window in the report's zone; None for no bound, and for one the zone's
    calendar does not reach (``--until 9999-12-31`` ends in year 10000 in Paris): as late (or
    early) as dates go there, no bound, as ``_dates`` reads an end past year 9999."""
    return None if bound is None else in_zone(bound, report.tz)


def _status(call: Call) -> str:
    """``ok``, ``ok (estimated)`` for counts tokenmeter estimated, or ``error (its name)``."""
    if call.error:
        return f"{call.status} ({call.error})"
    return f"{call.status} (estimated)" if call.estimated else call.status


def period_text(report: Report) -> str:
    """The window as ``--since`` / ``--until`` take it: both days included when it is whole days,
    else the first instant included and the first one after the window."""
    start, end = _bound_in_zone(report.since, report), _bound_in_zone(report.until, report)
    if start is None and end is None:
        return "all time"
    zone = _zone_name(report)
    if all(bound is None or _is_midnight(bound) for bound in (start, end)):
        first = "…" if start is None else start.date().isoformat()
        last = "…" if end is None else (end - timedelta(days=1)).date().isoformat()
        return f"{first} to {last} ({zone}, both days included)"
    first = "…" if start is None else _instant_text(start)
    last = "…" if end is None else _instant_text(end)
    return f"{first} up to {last} ({zone}; the end is the first instant not included)"


def calls_listed_all(report: Report) -> bool:
    """False when ``--limit`` cut the list of calls short (bad rows, skipped, do not)."""
    shown = len(report.calls or [])
    return not (report.calls_limit and shown >= report.calls_limit < report.totals.calls)


def _calls_caption(report: Report) -> str:
    shown = len(report.calls or [])
    if not calls_listed_all(report):
        return f"Calls (the latest {shown} of {report.totals.calls:,})"
    return f"Calls ({shown:,})"


# --- plain text ------------------------------------------------------------------------------


#: The widest cell a padded table shows (a stored name: tokenmeter cuts its own at 500): every
#: row is padded to the widest, and one 900,000-character name another writer stored made a
#: report of 60 rows print 117 MB. Only the cell shown is cut: grouping, filters and the json
#: and csv formats keep the stored value.
_WIDEST_CELL = 500


def plain_table(table: CellTable) -> list[str]:
    everything = [
        [shorten_middle(cell, _WIDEST_CELL) for cell in cells]
        for cells in [table.headers, *table.rows, *([table.footer] if table.footer else [])]
    ]
    widths = [max(len(cells[i]) for cells in everything) for i in range(len(table.headers))]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(width) if table.is_numeric(i) else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return one_line("  ".join(parts).rstrip())

    rule = "  ".join("-" * width for width in widths)
    headers, *rows = everything
    footer = rows.pop() if table.footer else None
    lines = [line(headers), rule, *(line(row) for row in rows)]
    if footer is not None:
        lines += [rule, line(footer)]
    return lines


def _header_lines(report: Report) -> list[str]:
    lines = [
        f"tokenmeter report: {report.source}",
        f"period: {period_text(report)}; by {report.main.title}",
    ]
    if report.filters:
        lines.append(f"only: {report.filters}")
    if report.previous is not None:
        lines.append(f"compared with: {period_text(report.previous)}")
    if not report.totals.calls:
        lines.append(
            "no calls match these filters in this period"
            if report.filters
            else "no calls in this period"
        )
    return lines


def _fitted(
    report: Report, metrics: Sequence[str] | None, width: int | None
) -> tuple[CellTable, list[str]]:
    chosen = list(metrics) if metrics is not None else default_metrics(report)
    if width is None:
        return summary_cells(report, chosen), []
    return fit_summary(report, width, chosen)


def _hidden_note(dropped: list[str]) -> list[str]:
    if not dropped:
        return []
    return [f"(hidden to fit the terminal: {', '.join(dropped)}; --wide shows every column)"]


def render_text(
    report: Report, metrics: Sequence[str] | None = None, width: int | None = None
) -> str:
    lines = [*_header_lines(report), ""]
    table, dropped = _fitted(report, metrics, width)
    lines += plain_table(table)
    lines += _hidden_note(dropped)
    if report.calls is not None:
        lines += ["", _calls_caption(report), *plain_table(call_cells(report.calls, report.tz))]
    return "\n".join(lines) + "\n"


def rich_table(cells: CellTable, title: str = "") -> Any:
    """A rich Table of these cells: numbers never wrap or shorten; names wrap if they must.

    Every cell is ``one_line``, as in the plain table: a tab or newline in a name is shown as
    U+FFFD (a model named ``evil\\nTOTAL`` printed a second line that read as a row)."""
    from rich.table import Table
    from rich.text import Text

    table = Table(
        title=title,
        title_justify="left",
        header_style="bold cyan",
        show_footer=cells.footer is not None,
    )
    everything = [cells.headers, *cells.rows, *([cells.footer] if cells.footer else [])]
    for i, header in enumerate(cells.headers):
        footer = cells.footer[i] if cells.footer else ""
        numeric = cells.is_numeric(i)
        table.add_column(
            Text(one_line(header)),
            footer=Text(one_line(footer)),
            justify="right" if numeric else "left",
            style="green" if header == "Cost" else None,
            no_wrap=numeric,
            min_width=max(len(row[i]) for row in everything) if numeric else None,
            overflow="fold",
        )
    for row in cells.rows:
        # Text(), not str: a model or session name must never be read as rich markup.
        table.add_row(*(Text(one_line(cell)) for cell in row))
    return table


#: Columns a rich table spends on borders and padding, per column.
_RICH_PER_COLUMN = 3


def render_rich(report: Report, metrics: Sequence[str] | None = None, wide: bool = False) -> None:
    """The terminal table (stdout is a tty and rich is installed); NO_COLOR is honoured by rich."""
    from rich.console import Console

    console = Console()
    chosen = list(metrics) if metrics is not None else default_metrics(report)
    if wide:
        table, dropped = summary_cells(report, chosen), list[str]()
    else:
        table, dropped = fit_summary(report, console.width, chosen, _RICH_PER_COLUMN, 1)
    for line in _header_lines(report):
        console.print(printable(line), markup=False, highlight=False)
    console.print(rich_table(table))
    for line in _hidden_note(dropped):
        console.print(line, markup=False, highlight=False, style="dim")
    if report.calls is not None:
        console.print(rich_table(call_cells(report.calls, report.tz), _calls_caption(report)))


# --- markdown --------------------------------------------------------------------------------


def markdown_table(table: CellTable) -> list[str]:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(markdown_text(cell) for cell in cells) + " |"

    align = ["---:" if table.is_numeric(i) else "---" for i in range(len(table.headers))]
    lines = [line(table.headers), "| " + " | ".join(align) + " |"]
    lines += [line(row) for row in table.rows]
    if table.footer:
        lines.append(line([f"**{cell}**" if cell else "" for cell in table.footer]))
    return lines


def render_markdown(report: Report) -> str:
    lines = [
        "# tokenmeter report",
        "",
        f"- **Source**: {markdown_text(report.source)}",
        f"- **Period**: {period_text(report)}",
        f"- **Grouped by**: {markdown_text(report.main.title)}",
    ]
    if report.filters:  # else a filtered total reads as the whole spend
        lines.append(f"- **Only**: {markdown_text(report.filters)}")
    if report.previous is not None:
        lines.append(f"- **Compared with**: {period_text(report.previous)}")
    total = fmt_usd(report.totals.cost)
    unpriced = report.totals.unpriced_calls
    if unpriced:  # as the TOTAL row's Unpriced cell says: the total leaves them out
        total += f" (without {fmt_int(unpriced)} unpriced call{'s' if unpriced > 1 else ''})"
    lines += [f"- **Total cost**: {total}", "", *markdown_table(summary_cells(report))]
    if report.calls is not None:
        lines += [
            "",
            f"## {_calls_caption(report)}",
            "",
            *markdown_table(call_cells(report.calls, report.tz)),
        ]
    return "\n".join(lines) + "\n"


# --- machine formats -------------------------------------------------------------------------


def _totals_json(
    totals: Totals,
    whole: Totals,
    row: Row | None = None,
    previous: Totals | None = None,
    latency: bool = False,
) -> dict[str, Any]:
    """A row's (or the totals') figures. ``latency``: the report was asked for latencies, so a
    row has both keys, None where none of its calls reported one (a consumer reading
    ``row["latency_p50_ms"]`` failed on such a row), as an unknown cost is None."""
    document: dict[str, Any] = {
        "calls": totals.calls,
        "input_tokens": totals.input_tokens,
        "output_tokens": totals.output_tokens,
        "cache_read_tokens": totals.cache_read_tokens,
        "cache_write_tokens": totals.cache_write_tokens,
        "reasoning_tokens": totals.reasoning_tokens,
        "total_tokens": totals.total_tokens,
        "cost_usd": totals.cost,
        "share_of_cost": round_share(totals.share_of(whole)),
        "unpriced_calls": totals.unpriced_calls,
        "error_calls": totals.error_calls,
        "blocked_calls": totals.blocked_calls,
        "estimated_calls": totals.estimated_calls,
        "avg_cost_per_call_usd": None
        if totals.avg_cost_per_call is None
        else to_pico_usd_precision(totals.avg_cost_per_call),
    }
    if row is not None and (latency or row.latency is not None):
        document["latency_p50_ms"] = None if row.latency is None else row.latency.p50_ms
        document["latency_p95_ms"] = None if row.latency is None else row.latency.p95_ms
    if previous is not None:
        document["previous_cost_usd"] = previous.cost
        document["previous_calls"] = previous.calls
    return document


def render_json(report: Report) -> str:
    return "".join(json_pieces(report))


def json_pieces(report: Report) -> Iterator[str]:
    """The JSON report in pieces: the calls listed one at a time (``--limit 0`` may list a
    million of them, read back from disk: see ``_spool``)."""
    breakdown = report.main
    document: dict[str, Any] = {
        "source": report.source,
        "since": None if report.since is None else format_instant(report.since),
        "until_exclusive": None if report.until is None else format_instant(report.until),
        "group_by": [d.spec for d in breakdown.dimensions],
        "tz": str(report.tz),
        "filters": report.filters or None,
        "rows": [
            {
                **dict(zip(breakdown.columns, row.key, strict=True)),
                **_totals_json(
                    row.totals,
                    report.totals,
                    row,
                    report.previous_totals(breakdown, row.key),
                    report.latency,
                ),
            }
            for row in compared_rows(report)
        ],
        "totals": _totals_json(
            report.totals,
            report.totals,
            previous=None if report.previous is None else report.previous.totals,
        ),
        "skipped_lines": report.skipped_lines,
    }
    if report.calls is not None:
        document["calls"] = (call.as_json() for call in report.calls)
        document["calls_listed_all"] = calls_listed_all(report)
    yield from exact_pieces(document)
    yield "\n"


#: What a spreadsheet reads as the start of a formula (OWASP, "CSV Injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NEEDS_QUOTES = re.compile('[,"\r\n]')


def csv_text(text: str) -> str:
    """A text cell a spreadsheet shows rather than runs: formula-like text gets a leading ``'``.

    Only text: a model named ``-2+3`` is neutralised, a cost of ``-0.25`` stays a number.
    """
    return "'" + text if text.startswith(_FORMULA_START) else text


def _csv_value(value: Any) -> str:
    """Numbers exact and as they are; None empty; anything else is text (see ``csv_text``)."""
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return csv_text(str(value))


def _csv_line(cells: Iterable[str]) -> str:
    """RFC 4180 quoting: a cell holding a comma, quote, CR or LF is quoted, quotes doubled.

    ``csv.writer`` with a ``"\\n"`` terminator leaves a lone CR unquoted, which ends the row.
    """
    return (
        ",".join(
            '"' + cell.replace('"', '""') + '"' if _NEEDS_QUOTES.search(cell) else cell
            for cell in cells
        )
        + "\n"
    )


def render_csv(report: Report) -> str:
    """One table: the grouped rows, or with ``--detailed`` the calls. No totals row."""
    return "".join(csv_pieces(report))


def csv_pieces(report: Report) -> Iterator[str]:
    """``render_csv``'s lines one at a time (the calls read back one at a time, see
    ``json_pieces``)."""
    if report.calls is not None:
        headers = list(CALL_JSON_KEYS)
        yield _csv_line(headers)
        for call in report.calls:
            record = call.as_json()
            # JSON: "k=v;k=v" told {"a": "1;b=2"} from {"a": "1", "b": "2"} by nothing.
            record["tags"] = json.dumps(record["tags"], ensure_ascii=False, sort_keys=True)
            yield _csv_line([_csv_value(record[h]) for h in headers])
        return
    breakdown = report.main
    metrics = list(_totals_json(report.totals, report.totals))
    if report.latency or any(row.latency for row in breakdown.rows):
        metrics += ["latency_p50_ms", "latency_p95_ms"]
    if report.previous is not None:
        metrics += ["previous_cost_usd", "previous_calls"]
    yield _csv_line([*breakdown.columns, *metrics])
    for row in compared_rows(report):
        values = _totals_json(
            row.totals, report.totals, row, report.previous_totals(breakdown, row.key)
        )
        # The calls without a tag are "(no KEY tag)" as in the table: an empty cell would be the
        # same as an empty tag value's.
        keys = [
            csv_text(column_label(column, key))
            for column, key in zip(breakdown.columns, row.key, strict=True)
        ]
        yield _csv_line([*keys, *(_csv_value(values.get(m)) for m in metrics)])
