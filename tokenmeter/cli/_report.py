"""``tokenmeter report``, ``sessions`` and ``session ID``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from tokenmeter.cli._errors import CliError
from tokenmeter.cli._output import write_output
from tokenmeter.cli._progress import Progress, progress_allowed
from tokenmeter.cli._source import resolve_source, warn_skipped
from tokenmeter.cli.reports._format import dumps_exact
from tokenmeter.cli.reports._html import HTML_GROUPINGS, render_html
from tokenmeter.cli.reports._journal import render_session_markdown, render_sessions_list
from tokenmeter.cli.reports._model import Dimension, Report, parse_dimension
from tokenmeter.cli.reports._query import Query, run_query
from tokenmeter.cli.reports._render import (
    CellTable,
    markdown_table,
    plain_table,
    render_csv,
    render_json,
    render_markdown,
    render_rich,
    render_text,
)
from tokenmeter.cli.reports._sessions import find_session, list_sessions

__all__ = ["FORMATS", "run_report", "run_session", "run_sessions"]

FORMATS = ("table", "markdown", "json", "csv", "html")
MACHINE_FORMATS = {"json", "csv"}
_SUFFIX_FORMATS = {
    ".html": "html",
    ".htm": "html",
    ".md": "markdown",
    ".json": "json",
    ".csv": "csv",
    ".txt": "table",
}
_RENDERERS: dict[str, Callable[[Report], str]] = {
    "table": render_text,
    "markdown": render_markdown,
    "json": render_json,
    "csv": render_csv,
    "html": render_html,
}


def _format(args: argparse.Namespace) -> str:
    """``--format``, else guessed from ``-o``'s suffix, else a table."""
    if args.format:
        return str(args.format)
    if args.output:
        return _SUFFIX_FORMATS.get(Path(args.output).suffix.lower(), "table")
    return "table"


def _dimensions(specs: list[str] | None) -> tuple[Dimension, ...]:
    """``--by`` may repeat and may hold commas: ``--by model,day --by tag:team``."""
    names = [part for spec in specs or ["model"] for part in spec.split(",") if part.strip()]
    try:
        return tuple(parse_dimension(name) for name in names)
    except ValueError as exc:
        raise CliError(str(exc), exit_code=2) from None


def _use_rich(fmt: str, output: str | None) -> bool:
    if fmt != "table" or output is not None or not sys.stdout.isatty():
        return False
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def _unit(kind: str) -> str:
    """What a skipped record was: a JSONL line or a SQLite row."""
    return "line" if kind == "jsonl" else "row"


def run_report(args: argparse.Namespace) -> int:
    fmt = _format(args)
    source = resolve_source(args.source)
    groupings = [_dimensions(args.by)]
    if fmt == "html":
        groupings += [tuple(parse_dimension(s) for s in specs) for specs in HTML_GROUPINGS]
    query = Query(
        groupings=tuple(groupings),
        since=args.since,
        until=args.until,
        calls_limit=args.limit if args.detailed else None,
    )
    show = progress_allowed(machine_format=fmt in MACHINE_FORMATS, to_file=args.output is not None)
    with Progress(f"reading {source.path.name}", enabled=show) as progress:
        report = run_query(source, query, progress)
    warn_skipped(report.skipped_lines, source.path, _unit(source.kind))
    if _use_rich(fmt, args.output):
        render_rich(report)
    else:
        write_output(_RENDERERS[fmt](report), args.output)
    if args.output:
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


_SESSION_HEADERS = (
    "Session",
    "Name",
    "Status",
    "First call",
    "Last call",
    "Calls",
    "Total tokens",
    "Cost",
    "Unpriced",
)


def run_sessions(args: argparse.Namespace) -> int:
    source = resolve_source(args.source)
    rows, skipped = list_sessions(source, since=args.since, until=args.until)
    warn_skipped(skipped, source.path, _unit(source.kind))
    rows = rows[: args.limit] if args.limit else rows
    if args.format == "json":
        document = [
            {
                "session_id": row.session_id,
                "name": row.name,
                "status": row.status,
                "first_call": row.first_call,
                "last_call": row.last_call,
                "calls": row.totals.calls,
                "total_tokens": row.totals.total_tokens,
                "cost_usd": row.totals.cost,
                "unpriced_calls": row.totals.unpriced_calls,
            }
            for row in rows
        ]
        write_output(dumps_exact(document) + "\n", args.output)
        return 0
    table = CellTable(_SESSION_HEADERS, range(5, len(_SESSION_HEADERS)))
    table.rows = render_sessions_list(rows)
    if args.format == "markdown":
        write_output("\n".join(markdown_table(table)) + "\n", args.output)
    else:
        write_output("\n".join(plain_table(table)) + "\n", args.output)
    return 0


def run_session(args: argparse.Namespace) -> int:
    source = resolve_source(args.source)
    detail = find_session(source, args.session_id)
    if args.format == "json":
        document = {
            "session_id": detail.session.session_id,
            "name": detail.session.name,
            "status": detail.session.status,
            "started_at": detail.session.started_at or detail.session.first_call,
            "ended_at": detail.session.ended_at,
            "notes": detail.session.notes,
            "tags": detail.session.tags,
            "calls": [call.as_json() for call in detail.calls],
            "cost_usd": detail.session.totals.cost,
            "total_tokens": detail.session.totals.total_tokens,
        }
        write_output(dumps_exact(document) + "\n", args.output)
    else:
        write_output(render_session_markdown(detail), args.output)
    return 0
