"""``tokenmeter report``, ``sessions`` and ``session ID``."""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable, Collection, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, tzinfo
from itertools import chain
from pathlib import Path

from tokenmeter._registry import canonical
from tokenmeter.cli._dates import (
    calendar_start_before,
    parse_since,
    parse_tz,
    parse_until,
    period_bounds,
)
from tokenmeter.cli._errors import CliError
from tokenmeter.cli._output import refuse_overwriting, write_output
from tokenmeter.cli._progress import Progress, progress_allowed
from tokenmeter.cli._source import resolve_source, warn_set_aside, warn_skipped
from tokenmeter.cli.reports._alerts import alerts_near
from tokenmeter.cli.reports._format import dumps_exact, exact_pieces
from tokenmeter.cli.reports._html import (
    HTML_GROUPINGS,
    HTML_SHORTLISTS,
    HTML_TAG_VALUES,
    render_html,
)
from tokenmeter.cli.reports._model import Dimension, Report, parse_dimension
from tokenmeter.cli.reports._periodic import (
    PERIODIC_GROUPINGS,
    PERIODIC_SHORTLISTS,
    render_usage_report,
)
from tokenmeter.cli.reports._query import STATUSES, Filters, Query, run_query
from tokenmeter.cli.reports._render import (
    CellTable,
    calls_listed_all,
    csv_pieces,
    json_pieces,
    markdown_table,
    parse_metrics,
    plain_table,
    render_markdown,
    render_rich,
    render_text,
    rich_table,
)
from tokenmeter.cli.reports._sessions import find_session, list_sessions

__all__ = ["filters_from", "run_report", "run_session", "run_sessions", "window"]

MACHINE_FORMATS = {"json", "csv"}
_SUFFIX_FORMATS = {
    ".html": "html",
    ".htm": "html",
    ".md": "markdown",
    ".markdown": "markdown",
    ".json": "json",
    ".csv": "csv",
    ".txt": "table",
}
#: The machine formats are written as they are made, a line or a call at a time (``--detailed
#: --limit 0`` may list millions of calls).
_RENDERERS: dict[str, Callable[[Report], str | Iterator[str]]] = {
    "table": render_text,
    "markdown": render_markdown,
    "json": json_pieces,
    "csv": csv_pieces,
    "html": render_html,
}


def _format(args: argparse.Namespace, among: Collection[str] = (), default: str = "table") -> str:
    """``--format``, else guessed from ``-o``'s suffix (one of ``among``, when given), else
    ``default``."""
    if args.format:
        return str(args.format)
    if args.output:
        found = _SUFFIX_FORMATS.get(Path(args.output).suffix.lower(), default)
        return found if not among or found in among else default
    return default


def _dimensions(specs: list[str] | None) -> tuple[Dimension, ...]:
    """``--by`` may repeat and may hold commas: ``--by model,day --by tag:team``.

    A value that names no key at all (``''``, ``','``) is an unknown key, not a report with no
    grouping: that has no rows to show.
    """
    try:
        dimensions: list[Dimension] = []
        for spec in specs or ["model"]:
            names = [part for part in spec.split(",") if part.strip()]
            if not names:
                parse_dimension(spec)  # raises: names the value as given
            dimensions += [parse_dimension(name) for name in names]
    except ValueError as exc:
        raise CliError(str(exc), exit_code=2) from None
    return tuple(dimensions)


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


def _usage_error(message: str) -> CliError:
    return CliError(message, exit_code=2)


def window(args: argparse.Namespace) -> tuple[datetime | None, datetime | None, tzinfo]:
    """``--tz``, ``--since`` / ``--until`` (or ``--period`` / ``--previous``) as UTC instants
    ``[since, until)``; an empty or reversed range is a usage error, not an empty report."""
    try:
        tz = parse_tz(args.tz)
        since = None if args.since is None else parse_since(args.since, tz=tz)
        until = None if args.until is None else parse_until(args.until, tz=tz)
    except ValueError as exc:
        raise _usage_error(str(exc)) from None
    period = getattr(args, "period", None)
    if period is not None:
        if since is not None or until is not None:
            raise _usage_error("--period replaces --since / --until: give one or the other")
        since, until = period_bounds(period, previous=args.previous, tz=tz)
    elif getattr(args, "previous", False):
        raise _usage_error("--previous needs --period day|week|month")
    if since is not None and until is not None and since >= until:
        raise _usage_error(
            f"empty range: --since {args.since} is not before --until {args.until} "
            "(--since is the start, --until the end)"
        )
    return since, until, tz


def _split(option: str, values: list[str]) -> tuple[str, ...]:
    """The comma-separated names of a repeatable filter. A value naming none (``"$UNSET"``)
    would filter nothing, as if the option had not been given: a usage error."""
    parts: list[str] = []
    for value in values:
        names = [part.strip() for part in value.split(",") if part.strip()]
        if not names:
            raise _usage_error(f"{option} {value!r} names no value")
        parts += names
    return tuple(parts)


def filters_from(args: argparse.Namespace) -> Filters:
    statuses = tuple(status.lower() for status in _split("--status", args.status))
    unknown = [status for status in statuses if status not in STATUSES]
    if unknown:
        raise _usage_error(
            f"unknown --status {', '.join(unknown)}: use some of {', '.join(STATUSES)}"
        )
    return Filters(
        providers=_providers(_split("--provider", args.provider)),
        models=tuple(args.model),
        session_names=tuple(args.session_name),
        tags=tuple(args.tag),
        statuses=statuses,
        estimated=args.estimated,
    )


def _providers(names: tuple[str, ...]) -> tuple[str, ...]:
    """Each provider as records name it (``gemini`` and ``vertex`` are google, ``OpenAI`` is
    openai), and as given in lower case (records an older version stored under an alias)."""
    return tuple(dict.fromkeys(n for name in names for n in (canonical(name), name.lower())))


def _check_tag_keys(report: Report) -> None:
    """``--by tag:KEY`` on a key no record in the window has: say so, not one "(no KEY tag)" row (a
    row of calls without the tag has None for it; a value may be the text "(none)")."""
    breakdown = report.main
    for dimension in breakdown.dimensions:
        if dimension.tag_key is None or not breakdown.rows:
            continue
        index = breakdown.columns.index(dimension.spec)
        if all(row.key[index] is None for row in breakdown.rows):
            raise CliError(
                f"no record in this period has the tag {dimension.tag_key!r} "
                f"({report.totals.calls:,} calls read)"
            )


def _earliest(tz: tzinfo) -> datetime:
    """The first instant a report can show: the start of year 1 in UTC, and in ``tz``."""
    first = datetime.min.replace(tzinfo=UTC)
    try:
        return max(first, datetime.min.replace(tzinfo=tz).astimezone(UTC))
    except OverflowError:  # ``tz`` is ahead of UTC: year 1 began there before it did in UTC
        return first


def _earlier_start(
    since: datetime, end: datetime, tz: tzinfo, period: str | None = None
) -> datetime | None:
    """Where the period before ``[since, end)`` starts (``--compare``): the calendar days (or
    month, for ``--period month``) before a window of whole days in ``tz``, else the same
    length of time before.

    It starts no earlier than a report can show, so a window near year 1 compares with a shorter
    one; None when there is no time before ``since`` at all. A window that starts after ``end``
    (a ``--since`` in the future, no ``--until``) has no length yet: the earlier one is empty.
    """
    earliest = _earliest(tz)
    if since <= earliest:
        return None
    calendar = calendar_start_before(since, end, tz, period)
    if calendar is not None:
        return max(calendar, earliest)
    length = max(end - since, timedelta(0))  # else ``since - length`` runs past year 9999
    return earliest if since - earliest <= length else since - length


def run_report(args: argparse.Namespace) -> int:
    fmt = _format(args)
    source = resolve_source(args.source)
    refuse_overwriting(args.output, source.path)
    since, until, tz = window(args)
    metrics = None
    if args.columns:
        try:
            metrics = parse_metrics(args.columns)
        except ValueError as exc:
            raise _usage_error(str(exc)) from None
    groupings = [_dimensions(args.by)]
    if fmt == "html":
        groupings += [tuple(parse_dimension(s) for s in specs) for specs in HTML_GROUPINGS]
    if fmt == "markdown" and args.period:
        groupings += [tuple(parse_dimension(s) for s in specs) for specs in PERIODIC_GROUPINGS]
    query = Query(
        groupings=tuple(groupings),
        since=since,
        until=until,
        calls_limit=args.limit if args.detailed else None,
        filters=filters_from(args),
        tz=tz,
        latency=args.latency or fmt == "html",
        tag_values=HTML_TAG_VALUES if fmt == "html" else 0,
        shortlists=_shortlists(fmt, args.period),
    )
    if args.compare and since is None:
        raise _usage_error("--compare needs --since or --period (the length to compare)")
    end = until or datetime.now(UTC)
    start = None if since is None else _earlier_start(since, end, tz, args.period)
    if args.compare and start is None:
        raise _usage_error("--compare: there is no time before --since to compare with")
    compare = args.compare or fmt == "html"
    show = progress_allowed(machine_format=fmt in MACHINE_FORMATS, to_file=args.output is not None)
    with Progress(f"reading {source.path.name}", enabled=show) as progress:
        report = run_query(source, query, progress)
        if compare and start is not None:
            # Only the main table's rows and the totals are compared: the period before is
            # read for them alone (the HTML report's charts are of this period).
            before = replace(
                query,
                groupings=query.groupings[:1],
                since=start,
                until=since,
                calls_limit=None,
                latency=False,
                tag_values=0,
            )
            report.previous = run_query(source, before, progress)
            if source.kind == "jsonl":  # the whole file is read again: the same bad lines
                report.skipped_lines = max(report.skipped_lines, report.previous.skipped_lines)
            else:  # only the earlier window's rows: others than the first read's
                report.skipped_lines += report.previous.skipped_lines
    warn_skipped(report.skipped_lines, source.path, _unit(source.kind))
    filtered = query.filters != Filters()
    warn_set_aside(source, since, until, query.filters.matches if filtered else None)
    _check_tag_keys(report)
    if not calls_listed_all(report):
        # Said where a machine format cannot: its rows stop at --limit with no sign of it.
        shown, calls = len(report.calls or ()), report.totals.calls
        print(
            f"tokenmeter: listed the latest {shown:,} of {calls:,} calls (--limit 0 lists all)",
            file=sys.stderr,
        )
    if fmt == "markdown" and getattr(args, "period", None):
        write_output(render_usage_report(report, alerts_near(source.path)), args.output)
    elif _use_rich(fmt, args.output):
        render_rich(report, metrics, wide=args.wide)
    elif fmt == "table":
        width = None
        if not args.wide and args.output is None and sys.stdout.isatty():
            width = shutil.get_terminal_size().columns
        write_output(render_text(report, metrics, width), args.output)
    elif fmt == "html":
        write_output(render_html(report, alerts_near(source.path)), args.output)
    else:
        write_output(_RENDERERS[fmt](report), args.output, exact=fmt in MACHINE_FORMATS)
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


def _shortlists(fmt: str, period: str | None) -> dict[tuple[Dimension, ...], int]:
    """The charts' groupings of which only the first rows are shown (``Query.shortlists``)."""
    if fmt == "html":
        specs = HTML_SHORTLISTS
    elif fmt == "markdown" and period:
        specs = PERIODIC_SHORTLISTS
    else:
        return {}
    return {tuple(parse_dimension(s) for s in spec): count for spec, count in specs.items()}


def run_sessions(args: argparse.Namespace) -> int:
    source = resolve_source(args.source)
    refuse_overwriting(args.output, source.path)
    since, until, _ = window(args)
    latest = None if args.session_name else args.limit  # names are picked from every session
    rows, skipped = list_sessions(source, since=since, until=until, limit=latest)
    warn_skipped(skipped, source.path, _unit(source.kind))
    names = Filters(session_names=tuple(args.session_name)) if args.session_name else None
    warn_set_aside(source, since, until, None if names is None else names.matches)
    if args.session_name:
        rows = [row for row in rows if row.name in args.session_name]
    rows = rows[: args.limit] if args.limit else rows
    args.format = _format(args, among=("table", "markdown", "json"))
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
    from tokenmeter.cli.reports._journal import render_sessions_list  # the journal's models

    table.rows = render_sessions_list(rows)
    if args.format == "markdown":
        write_output("\n".join(markdown_table(table)) + "\n", args.output)
    elif _use_rich("table", args.output):
        from rich.console import Console

        Console().print(rich_table(table))
    else:
        write_output("\n".join(plain_table(table)) + "\n", args.output)
    return 0


def run_session(args: argparse.Namespace) -> int:
    source = resolve_source(args.source)
    refuse_overwriting(args.output, source.path)
    detail = find_session(source, args.session_id)
    args.format = _format(args, among=("markdown", "json"), default="markdown")
    if args.format == "json":
        document = {
            "session_id": detail.session.session_id,
            "name": detail.session.name,
            "status": detail.session.status,
            "started_at": detail.session.started_at or detail.session.first_call,
            "ended_at": detail.session.ended_at,
            "notes": detail.session.notes,
            "tags": detail.session.tags,
            "calls": (call.as_json() for call in detail.calls),
            "cost_usd": detail.session.totals.cost,
            "total_tokens": detail.session.totals.total_tokens,
        }
        write_output(chain(exact_pieces(document), ["\n"]), args.output)
    else:
        from tokenmeter.cli.reports._journal import render_session_markdown  # pydantic

        write_output(render_session_markdown(detail), args.output)
    return 0
