"""Filter and aggregate usage records into a Report, from SQLite or JSONL.

SQLite is aggregated by SQL ``GROUP BY`` over the integer pico-USD column ``cost_pusd`` (exact and
fast), over the rows that pass ``sql_valid`` (the rest in the window are counted as skipped); JSONL
is streamed once, whatever the number of groupings asked for, as records already checked by
``_validate`` (costs exact Decimals). Memory stays flat: only the groups and at most
``calls_limit`` calls are kept.
"""

from __future__ import annotations

import json
import sqlite3
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from tokenmeter.cli._dates import format_instant
from tokenmeter.cli._errors import CliError
from tokenmeter.cli._postgres import is_postgres
from tokenmeter.cli._progress import Progress
from tokenmeter.cli._source import JsonlReader, Source, open_database, table_columns
from tokenmeter.cli._validate import COUNT_FIELDS, BadRecord, record_from_row, sql_valid
from tokenmeter.cli.reports._model import (
    NONE_LABEL,
    Breakdown,
    Call,
    Dimension,
    Report,
    Row,
    Totals,
    key_columns,
)

__all__ = ["Query", "calls_from_rows", "exclude_bad_rows", "read_calls", "run_query"]

Extractor = Callable[[dict[str, Any]], str]


@dataclass(frozen=True)
class Query:
    """What to read: a time window, the groupings to total, and whether to list calls."""

    groupings: tuple[tuple[Dimension, ...], ...]
    since: datetime | None = None
    until: datetime | None = None  # exclusive
    session_id: str | None = None
    calls_limit: int | None = None  # None: no call list; 0: every call


def run_query(source: Source, query: Query, progress: Progress | None = None) -> Report:
    if not query.groupings:
        raise ValueError("a query needs at least one grouping")
    if source.kind != "jsonl":  # SQLite, or PostgreSQL through the dialect layer
        breakdowns, calls, skipped = _run_sqlite(source, query, progress)
    else:
        breakdowns, calls, skipped = _run_jsonl(source, query, progress)
    totals = Totals()
    for row in breakdowns[0].rows:
        totals.add(row.totals)
    return Report(
        source=str(source.path),
        since=query.since,
        until=query.until,
        totals=totals,
        breakdowns=breakdowns,
        calls=calls,
        calls_limit=query.calls_limit,
        skipped_lines=skipped,
    )


def read_calls(source: Source, query: Query, progress: Progress | None = None) -> list[Call]:
    """Just the calls (for ``session`` and ``tail``), oldest first."""
    return run_query(source, query, progress).calls or []


def _sort_rows(columns: tuple[str, ...], rows: Iterable[Row]) -> list[Row]:
    """Days read best in time order; everything else most expensive first."""
    if "day" in columns:
        return sorted(rows, key=lambda row: row.key)
    return sorted(
        rows,
        key=lambda row: (-(row.totals.cost or Decimal(-1)), -row.totals.calls, row.key),
    )


# --- SQLite ----------------------------------------------------------------------------------


def _sql_column(column: str) -> tuple[str, list[str]]:
    """SQL expression (and its parameters) for one key column."""
    if column == "provider":
        return f"COALESCE(model_provider, '{NONE_LABEL}')", []
    if column == "model":
        return f"COALESCE(model_name, '{NONE_LABEL}')", []
    if column == "session_id":
        return f"COALESCE(session_id, '{NONE_LABEL}')", []
    if column == "session":
        return "COALESCE(session_name, '')", []
    if column == "day":
        return "substr(timestamp, 1, 10)", []
    key = column.removeprefix("tag:")
    path = '$."' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"COALESCE(CAST(json_extract(tags, ?) AS TEXT), '{NONE_LABEL}')", [path]


def _where(query: Query) -> tuple[str, list[str]]:
    clauses: list[str] = []
    params: list[str] = []
    if query.since is not None:
        clauses.append("timestamp >= ?")
        params.append(format_instant(query.since))
    if query.until is not None:
        clauses.append("timestamp < ?")
        params.append(format_instant(query.until))
    if query.session_id is not None:
        clauses.append("session_id = ?")
        params.append(query.session_id)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def calls_from_rows(rows: Iterable[sqlite3.Row]) -> tuple[list[Call], int]:
    """The calls in these ``records`` rows, and how many rows the record check refused."""
    calls: list[Call] = []
    refused = 0
    for row in rows:
        try:
            calls.append(Call.from_json(record_from_row(row)))
        except BadRecord:
            refused += 1
    return calls, refused


def exclude_bad_rows(
    conn: sqlite3.Connection, where: str, params: list[str], alias: str = ""
) -> tuple[str, list[str], int]:
    """``where`` narrowed to the rows that pass ``sql_valid``, and how many it left out.

    The check runs in one scan that collects the bad rowids (normally none); the queries that
    follow exclude those by rowid, so the per-row check is not repeated for every grouping.
    ``alias`` names the records table in the caller's query (``"r"``). Call inside one read
    transaction, so that rows written meanwhile cannot slip past the check.
    """
    if is_postgres(conn):
        return where, params, 0  # typed columns: the sink's NOT NULL integers need no check
    prefix = f"{alias}." if alias else ""
    table = f"records {alias}" if alias else "records"
    valid = sql_valid(table_columns(conn, "records"), prefix)
    joiner = " AND " if where else " WHERE "
    sql = f"SELECT {prefix}rowid FROM {table}{where}{joiner}NOT {valid}"
    bad = [row[0] for row in conn.execute(sql, params)]
    if not bad:
        return where, params, 0
    excluded = f"{where}{joiner}{prefix}rowid NOT IN (SELECT value FROM json_each(?))"
    return excluded, [*params, json.dumps(bad)], len(bad)


def _run_sqlite(
    source: Source, query: Query, progress: Progress | None
) -> tuple[list[Breakdown], list[Call] | None, int]:
    conn = open_database(source)
    if progress is not None:
        tick = progress.update

        def on_progress() -> int:
            tick()
            return 0  # 0 = carry on

        conn.set_progress_handler(on_progress, 100_000)
    window, window_params = _where(query)
    try:
        conn.execute("BEGIN")  # one snapshot for every query below, while writers carry on
        where, where_params, skipped = exclude_bad_rows(conn, window, window_params)
        breakdowns = [
            _sqlite_breakdown(conn, grouping, where, where_params) for grouping in query.groupings
        ]
        calls = None
        if query.calls_limit is not None:
            limit = query.calls_limit or -1
            conn.row_factory = sqlite3.Row
            rows = conn.execute(
                f"SELECT * FROM records{where} ORDER BY timestamp DESC, rowid DESC LIMIT ?",
                [*where_params, limit],
            ).fetchall()
            calls, refused = calls_from_rows(reversed(rows))
            skipped += refused
    except sqlite3.Error as exc:
        raise CliError(f"cannot read {source.path}: {exc}") from None
    finally:
        conn.close()
    return breakdowns, calls, skipped


def _sqlite_breakdown(
    conn: sqlite3.Connection,
    grouping: tuple[Dimension, ...],
    where: str,
    where_params: list[str],
) -> Breakdown:
    columns = key_columns(grouping)
    exprs: list[str] = []
    params: list[str] = []
    for column in columns:
        expr, expr_params = _sql_column(column)
        exprs.append(expr)
        params.extend(expr_params)
    positions = ", ".join(str(i) for i in range(1, len(columns) + 1))
    sql = (
        f"SELECT {', '.join(exprs)}, COUNT(*), SUM(input_tokens), SUM(output_tokens), "
        "SUM(cache_read_tokens), SUM(cache_write_tokens), SUM(reasoning_tokens), "
        f"SUM(total_tokens), COUNT(cost_pusd), SUM(cost_pusd) FROM records{where} "
        f"GROUP BY {positions}"
    )
    n = len(columns)
    rows = []
    for values in conn.execute(sql, [*params, *where_params]):
        rows.append(Row(tuple(str(v) for v in values[:n]), Totals.from_sql(values[n:])))
    return Breakdown(grouping, columns, _sort_rows(columns, rows))


# --- JSONL -----------------------------------------------------------------------------------


def _extractor(column: str) -> Extractor:
    if column == "provider":
        return lambda r: r.get("model_provider") or NONE_LABEL
    if column == "model":
        return lambda r: r.get("model_name") or NONE_LABEL
    if column == "session_id":
        return lambda r: r.get("session_id") or NONE_LABEL
    if column == "session":
        return lambda r: r.get("session_name") or ""
    if column == "day":
        return lambda r: str(r["timestamp"])[:10]
    key = column.removeprefix("tag:")

    def tag(record: dict[str, Any]) -> str:
        tags = record.get("tags")
        value = tags.get(key) if isinstance(tags, dict) else None
        return NONE_LABEL if value is None else str(value)

    return tag


class _Grouper:
    """Running totals of one grouping over a stream of JSONL records."""

    def __init__(self, grouping: tuple[Dimension, ...]) -> None:
        self.grouping = grouping
        self.columns = key_columns(grouping)
        self.extractors = [_extractor(column) for column in self.columns]
        self.groups: dict[tuple[str, ...], Totals] = {}

    def add(self, record: dict[str, Any], counts: tuple[int, ...], cost: Decimal | None) -> None:
        key = tuple([extract(record) for extract in self.extractors])
        totals = self.groups.get(key)
        if totals is None:
            totals = self.groups[key] = Totals()
        totals.calls += 1
        totals.input_tokens += counts[0]
        totals.output_tokens += counts[1]
        totals.cache_read_tokens += counts[2]
        totals.cache_write_tokens += counts[3]
        totals.reasoning_tokens += counts[4]
        totals.total_tokens += counts[5]
        if cost is not None:
            totals.priced_calls += 1
            totals.priced_cost += cost

    def breakdown(self) -> Breakdown:
        rows = [Row(key, totals) for key, totals in self.groups.items()]
        return Breakdown(self.grouping, self.columns, _sort_rows(self.columns, rows))


def _run_jsonl(
    source: Source, query: Query, progress: Progress | None
) -> tuple[list[Breakdown], list[Call] | None, int]:
    reader = JsonlReader(source.path, on_progress=progress.update if progress else None)
    since = format_instant(query.since) if query.since is not None else None
    until = format_instant(query.until) if query.until is not None else None
    groupers = [_Grouper(grouping) for grouping in query.groupings]
    keep: deque[dict[str, Any]] | None = None
    if query.calls_limit is not None:
        keep = deque(maxlen=query.calls_limit or None)
    for record in reader:  # checked: counts are ints, the cost a Decimal or None
        timestamp = record["timestamp"]
        if (since is not None and timestamp < since) or (until is not None and timestamp >= until):
            continue
        if query.session_id is not None and record.get("session_id") != query.session_id:
            continue
        counts = tuple([record[name] for name in COUNT_FIELDS])
        cost = record.get("estimated_cost_usd")
        for grouper in groupers:
            grouper.add(record, counts, cost)
        if keep is not None:
            keep.append(record)
    calls = None if keep is None else [Call.from_json(record) for record in keep]
    return [g.breakdown() for g in groupers], calls, reader.skipped
