"""Render a Report as a terminal table, markdown, JSON or CSV (HTML lives in ``_html``).

Human formats share one cell layout (``summary_cells`` / ``call_cells``); the machine formats
(JSON, CSV) carry exact decimal numbers and nothing else: no colour, no totals mixed into rows.
CSV text cells that a spreadsheet would run as a formula are neutralised (see ``csv_text``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from tokenmeter.cli._dates import format_instant
from tokenmeter.cli._output import printable
from tokenmeter.cli.reports._format import (
    dumps_exact,
    fmt_int,
    fmt_share,
    fmt_usd,
    round_share,
)
from tokenmeter.cli.reports._model import CALL_JSON_KEYS, Call, Report, Totals

__all__ = [
    "CellTable",
    "call_cells",
    "csv_text",
    "period_text",
    "render_csv",
    "render_json",
    "render_markdown",
    "render_rich",
    "render_text",
    "summary_cells",
]

METRIC_HEADERS = (
    "Calls",
    "Input",
    "Output",
    "Cache read",
    "Cache write",
    "Reasoning",
    "Total tokens",
    "Cost",
    "Share",
    "Unpriced",
)
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

    def is_numeric(self, index: int) -> bool:
        return index in self.numeric


def _metric_cells(totals: Totals, whole: Totals) -> list[str]:
    return [
        fmt_int(totals.calls),
        fmt_int(totals.input_tokens),
        fmt_int(totals.output_tokens),
        fmt_int(totals.cache_read_tokens),
        fmt_int(totals.cache_write_tokens),
        fmt_int(totals.reasoning_tokens),
        fmt_int(totals.total_tokens),
        fmt_usd(totals.cost),
        fmt_share(totals.share_of(whole)),
        fmt_int(totals.unpriced_calls),
    ]


def summary_cells(report: Report) -> CellTable:
    breakdown = report.main
    headers = [*breakdown.columns, *METRIC_HEADERS]
    table = CellTable(headers, range(len(breakdown.columns), len(headers)))
    for row in breakdown.rows:
        table.rows.append([*row.key, *_metric_cells(row.totals, report.totals)])
    label = ["TOTAL"] + [""] * (len(breakdown.columns) - 1)
    table.footer = [*label, *_metric_cells(report.totals, report.totals)]
    return table


def call_cells(calls: Sequence[Call]) -> CellTable:
    table = CellTable(CALL_HEADERS, range(4, 8))
    for call in calls:
        table.rows.append(
            [
                call.timestamp,
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


def _status(call: Call) -> str:
    """``ok``, ``ok (estimated)`` for counts tokenmeter estimated, or ``error (its name)``."""
    if call.error:
        return f"{call.status} ({call.error})"
    return f"{call.status} (estimated)" if call.estimated else call.status


def _day_text(instant: datetime | None) -> str:
    return "…" if instant is None else format_instant(instant)


def period_text(report: Report) -> str:
    if report.since is None and report.until is None:
        return "all time"
    return f"{_day_text(report.since)} to {_day_text(report.until)} (UTC, end exclusive)"


def _calls_caption(report: Report) -> str:
    shown = len(report.calls or [])
    if report.calls_limit and shown >= report.calls_limit < report.totals.calls:
        return f"Calls (the latest {shown} of {report.totals.calls:,})"
    return f"Calls ({shown:,})"


# --- plain text ------------------------------------------------------------------------------


def plain_table(table: CellTable) -> list[str]:
    everything = [table.headers, *table.rows, *([table.footer] if table.footer else [])]
    widths = [max(len(cells[i]) for cells in everything) for i in range(len(table.headers))]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(width) if table.is_numeric(i) else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * width for width in widths)
    lines = [line(table.headers), rule, *(line(row) for row in table.rows)]
    if table.footer:
        lines += [rule, line(table.footer)]
    return lines


def _header_lines(report: Report) -> list[str]:
    return [
        f"tokenmeter report: {report.source}",
        f"period: {period_text(report)}; by {report.main.title}",
    ]


def render_text(report: Report) -> str:
    lines = [*_header_lines(report), ""]
    lines += plain_table(summary_cells(report))
    if report.calls is not None:
        lines += ["", _calls_caption(report), *plain_table(call_cells(report.calls))]
    return "\n".join(lines) + "\n"


def render_rich(report: Report) -> None:
    """The terminal table (stdout is a tty and rich is installed); NO_COLOR is honoured by rich."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console()

    def build(cells: CellTable, title: str) -> Table:
        table = Table(
            title=title,
            title_justify="left",
            header_style="bold cyan",
            show_footer=cells.footer is not None,
        )
        for i, header in enumerate(cells.headers):
            footer = cells.footer[i] if cells.footer else ""
            table.add_column(
                printable(header),
                footer=Text(printable(footer)),
                justify="right" if cells.is_numeric(i) else "left",
                style="green" if header == "Cost" else None,
            )
        for row in cells.rows:
            # Text(), not str: a model or session name must never be read as rich markup.
            table.add_row(*(Text(printable(cell)) for cell in row))
        return table

    for line in _header_lines(report):
        console.print(printable(line), markup=False, highlight=False)
    console.print(build(summary_cells(report), ""))
    if report.calls is not None:
        console.print(build(call_cells(report.calls), _calls_caption(report)))


# --- markdown --------------------------------------------------------------------------------


def markdown_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def markdown_table(table: CellTable) -> list[str]:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(markdown_escape(cell) for cell in cells) + " |"

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
        f"- **Source**: {markdown_escape(report.source)}",
        f"- **Period**: {period_text(report)}",
        f"- **Grouped by**: {markdown_escape(report.main.title)}",
        f"- **Total cost**: {fmt_usd(report.totals.cost)}",
        "",
        *markdown_table(summary_cells(report)),
    ]
    if report.calls is not None:
        lines += ["", f"## {_calls_caption(report)}", "", *markdown_table(call_cells(report.calls))]
    return "\n".join(lines) + "\n"


# --- machine formats -------------------------------------------------------------------------


def _totals_json(totals: Totals, whole: Totals) -> dict[str, Any]:
    return {
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
    }


def render_json(report: Report) -> str:
    breakdown = report.main
    document: dict[str, Any] = {
        "source": report.source,
        "since": None if report.since is None else format_instant(report.since),
        "until_exclusive": None if report.until is None else format_instant(report.until),
        "group_by": [d.spec for d in breakdown.dimensions],
        "rows": [
            {
                **dict(zip(breakdown.columns, row.key, strict=True)),
                **_totals_json(row.totals, report.totals),
            }
            for row in breakdown.rows
        ],
        "totals": _totals_json(report.totals, report.totals),
        "skipped_lines": report.skipped_lines,
    }
    if report.calls is not None:
        document["calls"] = [call.as_json() for call in report.calls]
    return dumps_exact(document) + "\n"


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
    lines: list[str] = []
    if report.calls is not None:
        headers = list(CALL_JSON_KEYS)
        lines.append(_csv_line(headers))
        for call in report.calls:
            record = call.as_json()
            record["tags"] = ";".join(f"{k}={v}" for k, v in record["tags"].items())
            lines.append(_csv_line([_csv_value(record[h]) for h in headers]))
        return "".join(lines)
    breakdown = report.main
    metrics = list(_totals_json(report.totals, report.totals))
    lines.append(_csv_line([*breakdown.columns, *metrics]))
    for row in breakdown.rows:
        values = _totals_json(row.totals, report.totals)
        keys = [csv_text(key) for key in row.key]
        lines.append(_csv_line([*keys, *(_csv_value(values[m]) for m in metrics)]))
    return "".join(lines)
