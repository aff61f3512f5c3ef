"""Filter and aggregate usage records into a Report, from SQLite, PostgreSQL or JSONL.

SQLite is aggregated by SQL ``GROUP BY`` over the integer pico-USD column ``cost_pusd`` (exact and
fast), over the rows that pass ``sql_valid`` (the rest in the window are counted as skipped; the
sink's partial index of unsound rows names them, see ``exclude_bad_rows``); PostgreSQL answers the
same SQL through ``_postgres``. JSONL is streamed once, whatever the number of groupings asked for
(a large file as two halves at once, see ``SPLIT_BYTES``): for totals through ``_scan`` (only the
fields totals read, checked as ``_validate`` checks them), for a list of calls as full records;
costs are exact Decimals; a record written twice is counted once (``_source.RecentIds``). Both
group by the stored columns (``raw_columns``); groupings that are computed from them (a model
family, a day / week / month in ``--tz``) are then rolled up from those few groups by
``roll_up``. Memory stays flat: only the groups and at most ``calls_limit`` calls are kept in
memory, a longer list on disk (``_spool``: ``--limit 0`` lists every call; PostgreSQL sends those
rows as it reads them; a JSONL file's list is put in time order by its timestamps, sorted on
disk too);
``--latency`` also keeps the latencies, 8 bytes a call, except where PostgreSQL ranks them; the
dashboard's totals per tag key keep each key's few most costly values, see ``_TagTotals``. The
dialect-specific SQL lives in ``_sql``.
"""

from __future__ import annotations

import contextlib
import copy
import heapq
import json
import multiprocessing
import operator
import os
import signal
import sqlite3
import sys
import threading
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import Decimal
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeAlias

from tokenmeter._totals import COUNT_NAMES, Totals, known_cost, sql_cost
from tokenmeter.cli._dates import format_instant, in_zone
from tokenmeter.cli._errors import CliError
from tokenmeter.cli._postgres import PgConnection, is_postgres
from tokenmeter.cli._progress import Progress
from tokenmeter.cli._source import (
    JsonlReader,
    RecentIds,
    Source,
    line_start_after,
    open_database,
    table_columns,
)
from tokenmeter.cli._validate import COUNT_FIELDS, BadRecord, record_from_row, sql_valid
from tokenmeter.cli.reports._model import (
    NONE_LABEL,
    SESSION_NAME,
    TIME_COLUMNS,
    UTC_HOUR,
    UTC_MINUTE,
    Breakdown,
    Call,
    CallList,
    Dimension,
    Key,
    Latency,
    Report,
    Row,
    TagSection,
    as_shown,
    key_columns,
    key_label,
    raw_columns,
)
from tokenmeter.cli.reports._scan import JsonlScan
from tokenmeter.cli.reports._spool import CallSpool, spooled
from tokenmeter.cli.reports._sql import (
    LATENCY_KNOWN,
    PERCENTILES_PG,
    PLACEHOLDER,
    group_by_sql,
    raw_column_sql,
    session_names_sql,
    tag_pairs_sql,
    tag_sql,
    totals_select,
    with_exact_sums,
)

__all__ = [
    "Filters",
    "Query",
    "add_calls",
    "calls_from_rows",
    "exclude_bad_rows",
    "figures",
    "run_query",
    "sort_rows",
    "stream_rows",
]

Extractor = Callable[[dict[str, Any]], str | None]
#: A record's figures in ``COUNT_NAMES`` order (``figures``).
Figures = tuple[int, ...]
STATUSES = ("ok", "error", "blocked")
#: The sink's partial index of the rows ``sql_valid`` refuses (schema version 4).
UNSOUND_INDEX = "ix_records_unsound"


@dataclass(frozen=True)
class Filters:
    """Which records count: each set field narrows (values within one field are alternatives)."""

    providers: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    session_names: tuple[str, ...] = ()
    tags: tuple[tuple[str, str], ...] = ()
    statuses: tuple[str, ...] = ()
    estimated: bool | None = None  # True: only estimated records; False: none of them

    def describe(self) -> str:
        parts = [
            *(f"provider={v}" for v in self.providers),
            *(f"model={v}" for v in self.models),
            *(f"session-name={v}" for v in self.session_names),
            *(f"tag {k}={v}" for k, v in self.tags),
            *(f"status={v}" for v in self.statuses),
        ]
        if self.estimated is not None:
            parts.append("estimated" if self.estimated else "not estimated")
        return ", ".join(parts)

    def matches(self, record: dict[str, Any]) -> bool:
        """The same test as ``sql_where``, on a checked JSONL record."""
        if self.providers and record.get("model_provider") not in self.providers:
            return False
        if (
            self.models
            and record.get("model_name") not in self.models
            and record.get("request_model") not in self.models
        ):
            return False
        if self.session_names and record.get("session_name") not in self.session_names:
            return False
        if self.statuses and (record.get("status") or "ok") not in self.statuses:
            return False
        if self.estimated is not None and bool(record.get("estimated")) != self.estimated:
            return False
        tags = record.get("tags")
        for key, value in self.tags:
            if not isinstance(tags, dict) or key not in tags or str(tags[key]) != value:
                return False
        return True

    def sql_where(self, columns: set[str]) -> tuple[list[str], list[str]]:
        clauses: list[str] = []
        params: list[str] = []

        def one_of(column: str, values: tuple[str, ...]) -> None:
            if values:
                marks = ", ".join(PLACEHOLDER for _ in values)
                clauses.append(f"{column} IN ({marks})")
                params.extend(values)

        one_of("model_provider", self.providers)
        if self.models and "request_model" in columns:  # the name served, or the one asked for
            marks = ", ".join(PLACEHOLDER for _ in self.models)
            clauses.append(f"(model_name IN ({marks}) OR request_model IN ({marks}))")
            params.extend(self.models * 2)
        else:
            one_of("model_name", self.models)
        one_of("session_name", self.session_names)
        if self.statuses:
            column = "COALESCE(status, 'ok')" if "status" in columns else "'ok'"
            one_of(column, self.statuses)
        for key, value in self.tags:
            expr, param = tag_sql(key, guarded=True)
            clauses.append(f"{expr} = {PLACEHOLDER}")
            params += [param, value]
        if self.estimated is not None:
            flag = "estimated" if "estimated" in columns else "0"
            clauses.append(f"{flag} = {1 if self.estimated else 0}")
        return clauses, params


@dataclass(frozen=True)
class Query:
    """What to read: a time window, filters, the groupings to total, whether to list calls."""

    groupings: tuple[tuple[Dimension, ...], ...]
    since: datetime | None = None
    until: datetime | None = None  # exclusive
    session_id: str | None = None
    calls_limit: int | None = None  # None: no call list; 0: every call
    filters: Filters = field(default_factory=Filters)
    tz: tzinfo = UTC  # the calendar of hour / day / week / month groups
    latency: bool = False  # p50 / p95 latency per group of the first grouping
    #: > 0: also total every tag key in the data (``Report.tags``), keeping this many of each
    #: key's most costly values apart.
    tag_values: int = 0
    #: Groupings of which only the first rows (most costly first) are shown, and how many: a
    #: chart's top sessions. Only those rows are made (a store of a session per call has
    #: millions). Never the first grouping, the main table, shown whole.
    shortlists: Mapping[tuple[Dimension, ...], int] = field(default_factory=dict)


def run_query(source: Source, query: Query, progress: Progress | None = None) -> Report:
    if not query.groupings:
        raise ValueError("a query needs at least one grouping")
    tags = _TagTotals(query.tag_values) if query.tag_values > 0 else None
    # Each grouping is read once: the HTML report asks for ``model`` beside a ``--by model``
    # (each one a scan of the window, with its latencies).
    distinct = tuple(dict.fromkeys(query.groupings))
    shortlists = {g: n for g, n in query.shortlists.items() if g != query.groupings[0]}
    read = replace(query, groupings=distinct, shortlists=shortlists)
    if source.kind != "jsonl":  # SQLite, or PostgreSQL through the dialect layer
        found, calls, skipped = _run_sqlite(source, read, progress, tags)
    else:
        found, calls, skipped = _run_jsonl(source, read, progress, tags)
    breakdowns = _as_asked(query.groupings, dict(zip(distinct, found, strict=True)))
    totals = Totals()
    for row in breakdowns[0].rows:
        totals.add(row.totals)
    return Report(
        tags=None if tags is None else tags.sections(totals),
        more_tag_keys=0 if tags is None else tags.left_out_keys(),
        source=str(source.path),
        since=query.since,
        until=query.until,
        totals=totals,
        breakdowns=breakdowns,
        calls=calls,
        calls_limit=query.calls_limit,
        skipped_lines=skipped,
        filters=query.filters.describe(),
        tz=query.tz,
        latency=query.latency,
    )


def _as_asked(
    groupings: Sequence[tuple[Dimension, ...]], found: dict[tuple[Dimension, ...], Breakdown]
) -> list[Breakdown]:
    """The breakdown of each grouping asked for, in order: a grouping asked for again gets a
    copy of its own (rows and totals), which a renderer may change without changing the other."""
    given: set[tuple[Dimension, ...]] = set()
    breakdowns = []
    for grouping in groupings:
        breakdown = found[grouping]
        if grouping in given:
            rows = [Row(row.key, copy.copy(row.totals), row.latency) for row in breakdown.rows]
            breakdown = replace(breakdown, rows=rows)
        given.add(grouping)
        breakdowns.append(breakdown)
    return breakdowns


def _in_time_order(value: str | None) -> tuple[bool, str, int]:
    """A group's label as it sorts: an hour lived twice (``2026-10-25 02:00 +02:00``, then
    ``+01:00``) in the order it was lived, the larger offset first; the calls without a tag
    (None) after its values."""
    if value is None:
        return True, "", 0
    if len(value) == 23 and value[16] == " " and value[17] in "+-":
        minutes = int(value[18:20]) * 60 + int(value[21:23])
        return False, value[:16], -minutes if value[17] == "+" else minutes
    return False, value, 0


def _missing_last(key: Key) -> tuple[tuple[bool, str], ...]:
    """A key as it sorts by its text: the calls without a tag (None) after its values."""
    return tuple((value is None, value or "") for value in key)


def _stored_key(values: Sequence[Any]) -> Key:
    """A group's key as SQL returns it: text, NULL only where a call lacks a grouped tag."""
    return tuple(None if value is None else str(value) for value in values)


def sort_rows(columns: tuple[str, ...], rows: Iterable[Row]) -> list[Row]:
    """Calendar groups read best in time order; everything else most expensive first."""
    if any(column in TIME_COLUMNS for column in columns):
        return sorted(rows, key=lambda row: tuple(map(_in_time_order, row.key)))
    return sorted(rows, key=lambda row: _costliest(row.totals.cost, row.totals.calls, row.key))


def _costliest(
    cost: Decimal | None, calls: int, key: Key
) -> tuple[Decimal, int, tuple[tuple[bool, str], ...]]:
    """Where a group sorts among others: most costly first (unknown and $0 last), then most
    calls, then by its key."""
    return -(cost or Decimal(-1)), -calls, _missing_last(key)


#: Where ``priced_calls`` and ``unpriced_calls`` are among ``COUNT_NAMES``.
_PRICED = COUNT_NAMES.index("priced_calls")
_UNPRICED = COUNT_NAMES.index("unpriced_calls")


def _shortlisted(
    count: int, groups: Iterable[tuple[Key, Sequence[Any], Decimal]]
) -> list[tuple[Key, Totals]]:
    """The ``count`` groups ``sort_rows`` puts first, of (key, counts in ``COUNT_NAMES`` order,
    summed cost): the others are ranked, not made ``Totals``."""

    def rank(group: tuple[Key, Sequence[Any], Decimal]) -> tuple[Any, ...]:
        key, counts, cost = group
        calls = int(counts[0] or 0)
        priced, unpriced = int(counts[_PRICED] or 0), int(counts[_UNPRICED] or 0)
        return _costliest(known_cost(cost, priced, unpriced), calls, key)

    first = heapq.nsmallest(count, groups, key=rank)
    return [(key, Totals.from_counts(counts, cost)) for key, counts, cost in first]


def _can_shortlist(grouping: tuple[Dimension, ...], raw: tuple[str, ...]) -> bool:
    """Whether the stored groups are the grouping's rows, most costly first (no calendar bucket
    or family merging several of them)."""
    columns = key_columns(grouping)
    return as_shown(raw) == columns and not any(column in TIME_COLUMNS for column in columns)


# --- from stored columns to the grouping asked for -------------------------------------------


def _bucket(utc_time: str, column: str, tz: tzinfo) -> str:
    """The ``--tz`` calendar bucket of a UTC hour (``2026-11-01T23``) or minute (``...T23:40``)."""
    shape = "%Y-%m-%dT%H" if len(utc_time) == 13 else "%Y-%m-%dT%H:%M"
    try:
        start = in_zone(datetime.strptime(utc_time, shape).replace(tzinfo=UTC), tz)
    except ValueError:  # not an hour
        return NONE_LABEL
    if start is None:  # an hour before year 1 or past 9999 in ``tz``
        return NONE_LABEL
    # ``isoformat`` pads the year to four digits (``strftime("%Y")`` does not on glibc: year
    # 999 would sort after 2026).
    if column == "hour":
        label = f"{start.date().isoformat()} {start.hour:02d}:00"
        if start.replace(fold=1 - start.fold).utcoffset() != start.utcoffset():
            # An hour the clock lived twice (set back at the end of summer time): each named
            # by its UTC offset, or the two made one row.
            label += " " + start.isoformat()[-6:]
        return label
    if column == "day":
        return start.date().isoformat()
    if column == "month":
        return start.date().isoformat()[:7]
    monday = start.date() - timedelta(days=start.weekday())
    return f"week of {monday.isoformat()}"


def _key_maker(
    raw: tuple[str, ...], columns: tuple[str, ...], tz: tzinfo
) -> Callable[[Key], Key] | None:
    """How a stored key becomes the grouping's key; None when they are the same."""
    if as_shown(raw) == columns:
        return None
    where = {column: i for i, column in enumerate(as_shown(raw))}
    time = where.get(UTC_HOUR, where.get(UTC_MINUTE, -1))
    buckets: dict[tuple[str, str], str] = {}
    families: dict[str, str] = {}

    def one(key: Key, column: str) -> str | None:
        if column == "family":
            model = key_label(key[where["model"]])
            family = families.get(model)
            if family is None:
                from tokenmeter.pricing import model_family  # the price tables: only for this

                family = families[model] = model_family(model)
            return family
        if column in TIME_COLUMNS:
            when = key_label(key[time])
            bucket = buckets.get((when, column))
            if bucket is None:
                bucket = buckets[(when, column)] = _bucket(when, column, tz)
            return bucket
        return key[where[column]]

    return lambda key: tuple(one(key, column) for column in columns)


def roll_up(
    grouping: tuple[Dimension, ...],
    raw: tuple[str, ...],
    groups: Iterable[tuple[Key, Totals]],
    tz: tzinfo,
) -> Breakdown:
    """Merge groups of stored columns into the grouping's rows (a no-op when they match)."""
    columns = key_columns(grouping)
    make = _key_maker(raw, columns, tz)
    merged: dict[Key, Totals] = {}
    for key, totals in groups:
        target = key if make is None else make(key)
        known = merged.get(target)
        if known is None:
            merged[target] = totals
        else:
            known.add(totals)
    rows = [Row(key, totals) for key, totals in merged.items()]
    return Breakdown(grouping, columns, sort_rows(columns, rows))


#: The SQLite that has window functions (a Python built on an older one ranks here).
_WINDOWS = (3, 25, 0)


def _rank(count: int, share: float) -> int:
    """The nearest rank of a percentile (1-based) among ``count`` values."""
    return max(1, int(-(-count * share // 1)))


def _rank_sql(count: str, share: float) -> str:
    """``_rank`` in SQL, with the same floating-point product (a ceiling, as ``_rank``'s)."""
    product = f"({count} * {share!r})"
    return f"MAX(1, CAST({product} AS INTEGER) + ({product} > CAST({product} AS INTEGER)))"


def _percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile of sorted values."""
    return values[_rank(len(values), share) - 1]


def _ranked_latencies(
    conn: Any, exprs: list[str], where: str, params: list[str]
) -> dict[Key, Latency]:
    """p50 / p95 latency of each group of stored keys ``exprs``, ranked by SQLite (window
    functions), which returns the two ranked rows of each group instead of every latency."""
    keys = ", ".join(f"k{i}" for i in range(len(exprs)))
    named = ", ".join(f"{expr} AS k{i}" for i, expr in enumerate(exprs))
    ranked = (
        f"SELECT {keys}, lat, ROW_NUMBER() OVER (PARTITION BY {keys} ORDER BY lat) AS rn, "
        f"COUNT(*) OVER (PARTITION BY {keys}) AS n "
        f"FROM (SELECT {named}, latency_ms AS lat FROM records{where})"
    )
    sql = (
        f"SELECT {keys}, lat, rn, n FROM ({ranked}) "
        f"WHERE rn = {_rank_sql('n', 0.5)} OR rn = {_rank_sql('n', 0.95)}"
    )
    n = len(exprs)
    found: dict[Key, Latency] = {}
    for values in conn.execute(sql, params):
        key = _stored_key(values[:n])
        latency, rank, count = float(values[n]), int(values[n + 1]), int(values[n + 2])
        known = found.get(key, Latency(latency, latency, count))
        if rank == _rank(count, 0.5):
            known = replace(known, p50_ms=latency)
        if rank == _rank(count, 0.95):
            known = replace(known, p95_ms=latency)
        found[key] = known
    return found


def _latencies(
    breakdown: Breakdown,
    raw: tuple[str, ...],
    pairs: Iterable[tuple[Key, float]],
    tz: tzinfo,
) -> None:
    """Attach p50 / p95 latency to each row of ``breakdown`` from (stored key, latency) pairs."""
    make = _key_maker(raw, breakdown.columns, tz)
    found: dict[Key, array[float]] = {}
    for key, value in pairs:
        target = key if make is None else make(key)
        values = found.get(target)
        if values is None:
            values = found[target] = array("d")
        values.append(value)
    for i, row in enumerate(breakdown.rows):
        values = found.get(row.key)
        if values:
            ordered = sorted(values)
            latency = Latency(_percentile(ordered, 0.5), _percentile(ordered, 0.95), len(ordered))
            breakdown.rows[i] = Row(row.key, row.totals, latency)


# --- every tag key -----------------------------------------------------------------------------

#: Tag keys totalled (SQL: the most used; JSONL: the first seen), and, in a JSONL read, values of
#: one key kept apart: memory stays flat whatever the tags hold. A key's further values are
#: summed together, and the key's section says its ranking is among the first values seen.
_TAG_KEYS_KEPT = 100
_TAG_VALUES_KEPT = 2_000
#: Distinct tag keys beyond the kept ones counted (JSONL), to say how many were left out.
_MORE_KEYS_COUNTED = 100_000


#: A tag value as a key's heap ranks it: (cost, calls, -arrival, value, its counts).
_Ranked = tuple[Decimal, int, int, str, Sequence[int]]


@dataclass
class _Sums:
    """What a tag key's values add up to: counts in ``COUNT_NAMES`` order, and their cost."""

    counts: list[int]
    cost: Decimal


def _minus(whole: Totals, part: Totals) -> Totals:
    rest = Totals()
    for name in Totals.__slots__:
        setattr(rest, name, getattr(whole, name) - getattr(part, name))
    return rest


class _TagTotals:
    """Totals per (tag key, value), reduced as they arrive to each key's ``limit`` most costly
    values plus one sum of the others: memory is bounded by keys x limit, not by values.

    A tag of a value per call (a request or customer id) sends a million groups: each is ranked
    by its cost and calls alone, and only the values shown are made ``Totals``; what a key's
    values add up to is kept as plain counts (the values not shown are that less those shown).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        #: key -> (heap of its values ranked, what all its values add up to)
        self.keys: dict[str, tuple[list[_Ranked], _Sums]] = {}
        self.values: dict[str, int] = {}
        self.partial: set[str] = set()
        self.seq = 0
        # JSONL only: running sums per (key, value) before ``feed``.
        self.groups: dict[tuple[str, str | None], Sequence[int]] = {}
        self.costs: dict[tuple[str, str | None], Decimal] = {}
        self.kept: dict[str, int] = {}
        #: Keys left out (SQL: their number; JSONL: the first ``_MORE_KEYS_COUNTED`` of them).
        self.more_keys = 0
        self.left_out: set[str] = set()

    def feed(self, key: str, value: str | None, counts: Sequence[int], cost: Decimal) -> None:
        """One (key, value) group's counts (``COUNT_NAMES`` order) and cost; ``value`` None:
        values not kept apart."""
        entry = self.keys.get(key)
        if entry is None:
            entry = self.keys[key] = ([], _Sums([0] * len(counts), _NO_COST))
        heap, tagged = entry
        tagged.counts = list(map(_ADD, tagged.counts, counts))
        tagged.cost += cost
        if value is None:
            self.partial.add(key)
            return
        self.values[key] = self.values.get(key, 0) + 1
        self.seq += 1
        item = (cost, counts[0], -self.seq, value, counts)
        if len(heap) < self.limit:
            heapq.heappush(heap, item)
        else:
            heapq.heappushpop(heap, item)

    def add(self, tags: dict[str, str], values: tuple[int, ...], cost: Decimal | None) -> None:
        """One JSONL record's tags (``values`` in ``COUNT_NAMES`` order)."""
        groups, kept = self.groups, self.kept
        for key, value in tags.items():
            group: tuple[str, str | None] = (key, value)
            known = groups.get(group)
            if known is None:
                count = kept.get(key)
                if count is None:
                    if len(kept) >= _TAG_KEYS_KEPT:
                        if len(self.left_out) < _MORE_KEYS_COUNTED:
                            self.left_out.add(key)
                        continue
                    count = 0
                if count >= _TAG_VALUES_KEPT:
                    group = (key, None)
                    known = groups.get(group)
                else:
                    kept[key] = count + 1
            groups[group] = values if known is None else list(map(_ADD, known, values))
            if cost is not None:
                self.costs[group] = self.costs.get(group, _NO_COST) + cost

    def left_out_keys(self) -> int:
        return self.more_keys + len(self.left_out)

    def sections(self, report_totals: Totals) -> list[TagSection]:
        for (key, value), counts in self.groups.items():
            self.feed(key, value, counts, self.costs.get((key, value), _NO_COST))
        self.groups.clear()
        found = []
        for key, (heap, sums) in self.keys.items():
            rows = [
                Row((value,), Totals.from_counts(counts, cost))
                for cost, _, _, value, counts in sorted(heap, key=lambda i: (-i[0], -i[1], i[3]))
            ]
            tagged = Totals.from_counts(sums.counts, sums.cost)
            rest = tagged
            for row in rows:
                rest = _minus(rest, row.totals)
            found.append(
                TagSection(
                    key=key,
                    tagged=tagged,
                    values=self.values.get(key, 0),
                    rows=rows,
                    rest=rest if rest.calls else None,
                    untagged=_minus(report_totals, tagged),
                    partial=key in self.partial,
                )
            )
        return sorted(found, key=lambda section: (-section.tagged.calls, section.key))


def _sql_tags(
    conn: sqlite3.Connection, tags: _TagTotals, where: str, params: list[str], table: set[str]
) -> None:
    """Every (tag key, value) of the rows in ``where``, totalled in SQL (``json_each``): the
    ``_TAG_KEYS_KEPT`` most used keys, the number of the others."""
    if "tags" not in table:
        return
    pairs = f"(SELECT * FROM records{where}) AS r, {tag_pairs_sql('r.')}"
    keys = conn.execute(
        f"SELECT t.key, COUNT(*) OVER () FROM {pairs} GROUP BY 1 ORDER BY COUNT(*) DESC, 1 "
        f"LIMIT {_TAG_KEYS_KEPT}",
        params,
    ).fetchall()
    if not keys:
        return
    tags.more_keys = int(keys[0][1]) - len(keys)
    marks = ", ".join(PLACEHOLDER for _ in keys)

    def rows(total: str) -> list[Any]:
        sql = (
            f"SELECT t.key, CAST(t.value AS TEXT), {totals_select(table, 'r.', total)} "
            f"FROM {pairs} WHERE t.key IN ({marks}) GROUP BY 1, 2"
        )
        return conn.execute(sql, [*params, *(str(key) for key, _ in keys)]).fetchall()

    n = 2 + len(COUNT_NAMES)
    for values in with_exact_sums(rows):  # a row per (kept key, value): a million, or more
        value = NONE_LABEL if values[1] is None else str(values[1])
        counts = [int(count or 0) for count in values[2:n]]
        tags.feed(str(values[0]), value, counts, sql_cost(values[n], values[n + 1]))


# --- SQLite ----------------------------------------------------------------------------------


def _where(query: Query, columns: set[str]) -> tuple[str, list[str]]:
    clauses: list[str] = []
    params: list[str] = []
    if query.since is not None:
        clauses.append(f"timestamp >= {PLACEHOLDER}")
        params.append(format_instant(query.since))
    if query.until is not None:
        clauses.append(f"timestamp < {PLACEHOLDER}")
        params.append(format_instant(query.until))
    if query.session_id is not None:
        clauses.append(f"session_id = {PLACEHOLDER}")
        params.append(query.session_id)
    more, more_params = query.filters.sql_where(columns)
    clauses += more
    params += more_params
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def calls_from_rows(rows: Iterable[sqlite3.Row]) -> tuple[list[Call], int]:
    """The calls in these ``records`` rows, and how many rows the record check refused."""
    calls: list[Call] = []
    return calls, add_calls(rows, calls.append)


def stream_rows(conn: sqlite3.Connection, sql: str, params: list[Any]) -> Iterable[Any]:
    """A query's rows one at a time as they are read, never all at once (a PostgreSQL client
    cursor would hold the whole answer); nothing else runs on ``conn`` until they are read."""
    return conn.stream(sql, params) if is_postgres(conn) else conn.execute(sql, params)


def add_calls(rows: Iterable[sqlite3.Row], add: Callable[[Call], None]) -> int:
    """``add`` the call of each of these ``records`` rows; how many rows the check refused."""
    refused = 0
    for row in rows:
        try:
            add(Call.from_json(record_from_row(row)))
        except BadRecord:
            refused += 1
    return refused


def _spool_rows(
    conn: sqlite3.Connection, where: str, params: list[str], limit: int
) -> tuple[CallSpool, int]:
    """The newest ``limit`` calls (0: all) in ``CallSpool``, streamed from the database oldest
    first (no row list in memory), and how many rows the record check refused."""
    sql = f"SELECT * FROM records{where} ORDER BY timestamp, rowid"
    values: list[Any] = list(params)
    if limit:
        (count,) = conn.execute(f"SELECT count(*) FROM records{where}", params).fetchone()
        sql += " LIMIT ? OFFSET ?"
        values += [limit, max(count - limit, 0)]
    spool = CallSpool()
    return spool, add_calls(stream_rows(conn, sql, values), spool.append)


def exclude_bad_rows(
    conn: sqlite3.Connection, where: str, params: list[str], alias: str = ""
) -> tuple[str, list[str], int]:
    """``where`` narrowed to the rows that pass ``sql_valid``, and how many it left out.

    The bad rowids (normally none) are collected once; the queries that follow exclude those by
    rowid, so the check is not repeated for every grouping. A database the sink has migrated
    keeps its unsound rows in the partial index ``ix_records_unsound``, so only that index is
    read; where it is missing, or its condition is not this one (SQLite then finds no plan), every
    row of the window is checked. ``alias`` names the records table in the caller's query
    (``"r"``). Call inside one read transaction, so that rows written meanwhile cannot slip past
    the check.
    """
    prefix = f"{alias}." if alias else ""
    table = f"records {alias}" if alias else "records"
    if is_postgres(conn):  # no index of unsound rows there: counted, then excluded by SQL
        return _exclude_unsound_pg(conn, where, params, prefix, table)
    valid = sql_valid(table_columns(conn, "records"), prefix)
    joiner = " AND " if where else " WHERE "
    condition = f"{where}{joiner}NOT {valid}"
    try:
        cursor = conn.execute(
            f"SELECT {prefix}rowid FROM {table} INDEXED BY {UNSOUND_INDEX}{condition}", params
        )
    except sqlite3.OperationalError as exc:  # no such index, or not one for this condition
        if "index" not in str(exc) and "no query solution" not in str(exc):
            raise
        cursor = conn.execute(f"SELECT {prefix}rowid FROM {table}{condition}", params)
    bad = [row[0] for row in cursor]
    if not bad:
        return where, params, 0
    excluded = f"{where}{joiner}{prefix}rowid NOT IN (SELECT value FROM json_each(?))"
    return excluded, [*params, json.dumps(bad)], len(bad)


def _exclude_unsound_pg(
    conn: PgConnection, where: str, params: list[str], prefix: str, table: str
) -> tuple[str, list[str], int]:
    """``exclude_bad_rows`` over PostgreSQL: another program's rows that are not sound
    (``PgConnection.sound_rows``: negative counts, a timestamp that is not the record format,
    tags that are not a JSON object, where a ``::jsonb`` cast would fail the query) are left
    out and counted. They were summed: negative token totals, a ``(none)`` day."""
    valid = conn.sound_rows(prefix)
    joiner = " AND " if where else " WHERE "
    row = conn.execute(f"SELECT count(*) FROM {table}{where}{joiner}NOT {valid}", params).fetchone()
    bad = 0 if row is None else int(row[0])
    return (f"{where}{joiner}{valid}", params, bad) if bad else (where, params, 0)


def _run_sqlite(
    source: Source, query: Query, progress: Progress | None, tags: _TagTotals | None
) -> tuple[list[Breakdown], CallList | None, int]:
    conn = open_database(source)
    if progress is not None:
        tick = progress.update

        def on_progress() -> int:
            tick()
            return 0  # 0 = carry on

        conn.set_progress_handler(on_progress, 100_000)
    try:
        columns = table_columns(conn, "records")
        window, window_params = _where(query, columns)
        conn.execute("BEGIN")  # one snapshot for every query below, while writers carry on
        where, where_params, skipped = exclude_bad_rows(conn, window, window_params)
        breakdowns = [
            _sqlite_breakdown(conn, query, grouping, where, where_params, columns)
            for grouping in query.groupings
        ]
        if tags is not None:
            _sql_tags(conn, tags, where, where_params, columns)
        calls: CallList | None = None
        if query.calls_limit is not None:
            conn.row_factory = sqlite3.Row
            if spooled(query.calls_limit):
                calls, refused = _spool_rows(conn, where, where_params, query.calls_limit)
            else:  # the newest few, fetched at once
                rows = conn.execute(
                    f"SELECT * FROM records{where} ORDER BY timestamp DESC, rowid DESC LIMIT ?",
                    [*where_params, query.calls_limit],
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
    query: Query,
    grouping: tuple[Dimension, ...],
    where: str,
    where_params: list[str],
    table: set[str],
) -> Breakdown:
    raw = raw_columns(grouping, query.tz)
    exprs: list[str] = []
    params: list[str] = []
    for column in raw:
        expr, expr_params = raw_column_sql(column)
        exprs.append(expr)
        params.extend(expr_params)
    positions = ", ".join(str(i) for i in range(1, len(raw) + 1))
    n = len(raw)

    shortlist = query.shortlists.get(grouping)
    if shortlist is not None and not _can_shortlist(grouping, raw):
        shortlist = None
    counted = n + len(COUNT_NAMES)

    def breakdown_of(total: str) -> Breakdown:
        sql = (
            f"SELECT {', '.join(exprs)}, {totals_select(table, total=total)} FROM records{where} "
            f"GROUP BY {group_by_sql(raw)}"
        )
        found = conn.execute(sql, [*params, *where_params])
        if shortlist is not None:
            ranked = (
                (
                    _stored_key(values[:n]),
                    values[n:counted],
                    sql_cost(values[counted], values[counted + 1]),
                )
                for values in found
            )
            return roll_up(grouping, raw, _shortlisted(shortlist, ranked), query.tz)
        groups = ((_stored_key(values[:n]), Totals.from_sql(values[n:])) for values in found)
        return roll_up(grouping, raw, groups, query.tz)

    breakdown = with_exact_sums(breakdown_of)
    if query.latency and grouping == query.groupings[0] and "latency_ms" in table:
        joiner = " AND " if where else " WHERE "
        known = f"{where}{joiner}{LATENCY_KNOWN}"
        if is_postgres(conn) and as_shown(raw) == breakdown.columns:
            # The server ranks: one row per group, nothing streamed.
            found = {
                _stored_key(values[:n]): Latency(
                    float(values[n]), float(values[n + 1]), int(values[n + 2])
                )
                for values in conn.execute(
                    f"SELECT {', '.join(exprs)}, {PERCENTILES_PG} FROM records{known} "
                    f"GROUP BY {positions}",
                    [*params, *where_params],
                )
            }
            breakdown.rows[:] = [Row(r.key, r.totals, found.get(r.key)) for r in breakdown.rows]
        elif as_shown(raw) == breakdown.columns and sqlite3.sqlite_version_info >= _WINDOWS:
            # SQLite ranks in window functions: two rows per group come back
            found = _ranked_latencies(conn, exprs, known, [*params, *where_params])
            breakdown.rows[:] = [Row(r.key, r.totals, found.get(r.key)) for r in breakdown.rows]
        else:  # a family or calendar row spans stored groups: their latencies ranked here
            cursor = conn.execute(
                f"SELECT {', '.join(exprs)}, latency_ms FROM records{known}",
                [*params, *where_params],
            )
            pairs = ((_stored_key(values[:n]), float(values[n])) for values in cursor)
            _latencies(breakdown, raw, pairs, query.tz)
    if SESSION_NAME in raw:
        name_sessions(breakdown, _stored_session_names(conn, _session_ids(breakdown)))
    return breakdown


#: Sessions whose names one query asks for: far below SQLite's and PostgreSQL's parameter limits.
_NAMES_AT_ONCE = 500


def _stored_session_names(conn: sqlite3.Connection, ids: list[str]) -> dict[str, str]:
    """The latest name of each of these sessions: the ``sessions`` table's, where the store has
    one (tokenmeter's: with an ``id`` and a ``name``; another tool's table of that name is not
    read), else that of the session's latest record (whatever the window and filters)."""
    stored = {"id", "name"} <= table_columns(conn, "sessions")
    names: dict[str, str] = {}
    for start in range(0, len(ids), _NAMES_AT_ONCE):
        some = ids[start : start + _NAMES_AT_ONCE]
        for session_id, name in conn.execute(session_names_sql(len(some), stored), some):
            names[str(session_id)] = str(name)
    return names


def _session_ids(breakdown: Breakdown) -> list[str]:
    """The ids of the sessions that are rows of a grouping by session."""
    at = breakdown.columns.index("session_id")
    return list(dict.fromkeys(str(row.key[at]) for row in breakdown.rows if row.key[at]))


def name_sessions(breakdown: Breakdown, names: Mapping[str, str]) -> None:
    """Give each row of a grouping by session its session's name (``SESSION_NAME``: the rows
    were grouped by the id alone), '' for a session without one; then sort them again, as a tie
    falls to the key."""
    at, name_at = breakdown.columns.index("session_id"), breakdown.columns.index("session")
    rows = [
        Row(
            tuple(
                names.get(str(row.key[at]), "") if i == name_at else v
                for i, v in enumerate(row.key)
            ),
            row.totals,
            row.latency,
        )
        for row in breakdown.rows
    ]
    breakdown.rows[:] = sort_rows(breakdown.columns, rows)


# --- JSONL -----------------------------------------------------------------------------------


#: The columns that are one field of a record, and what stands for it when it is empty.
_FIELDS = {
    "provider": ("model_provider", NONE_LABEL),
    "model": ("model_name", NONE_LABEL),
    "session_id": ("session_id", NONE_LABEL),
    "session": ("session_name", ""),
    "status": ("status", "ok"),
}


def _extractor(column: str) -> Extractor:
    """A record's value of one stored column (a tag's: None when the record lacks the tag)."""
    if column in _FIELDS:
        name, none = _FIELDS[column]
        return lambda r: r.get(name) or none
    if column == SESSION_NAME:  # a session's latest name, found as the records are read
        return lambda r: ""
    if column == UTC_HOUR:
        return lambda r: str(r["timestamp"])[:13]
    if column == UTC_MINUTE:
        return lambda r: str(r["timestamp"])[:16]
    key = column.removeprefix("tag:")

    def tag(record: dict[str, Any]) -> str | None:
        tags = record.get("tags")
        value = tags.get(key) if isinstance(tags, dict) else None
        return None if value is None else str(value)

    return tag


def _key_function(raw: tuple[str, ...]) -> Callable[[dict[str, Any]], Key]:
    """The stored key of a record for these columns (one or two columns without a loop)."""
    if len(raw) == 2 and raw[0] in _FIELDS and raw[1] in _FIELDS:  # by model: one call a record
        (name_1, none_1), (name_2, none_2) = _FIELDS[raw[0]], _FIELDS[raw[1]]
        return lambda r: (r.get(name_1) or none_1, r.get(name_2) or none_2)
    extractors = [_extractor(column) for column in raw]
    if len(extractors) == 1:
        (first,) = extractors
        return lambda r: (first(r),)
    if len(extractors) == 2:
        first, second = extractors
        return lambda r: (first(r), second(r))
    return lambda r: tuple([extract(r) for extract in extractors])


_ADD = operator.add
_NO_COST = Decimal(0)


class _Newest:
    """The ``limit`` records of the latest timestamps (of equal ones, the later lines) among
    those added, in a heap: memory for ``limit`` records, whatever the file's order."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.heap: list[tuple[str, int, dict[str, Any]]] = []
        self.added = 0

    def add(self, record: dict[str, Any]) -> None:
        self.added += 1
        item = (record["timestamp"], self.added, record)  # no two alike: dicts never compared
        if len(self.heap) < self.limit:
            heapq.heappush(self.heap, item)
        else:
            heapq.heappushpop(self.heap, item)

    def calls(self) -> list[Call]:
        """The records kept as Calls, oldest first."""
        return [Call.from_json(record) for _, _, record in sorted(self.heap, key=_TIME_AND_LINE)]


_TIME_AND_LINE = operator.itemgetter(0, 1)


class _Grouper:
    """Running totals of one grouping over a stream of JSONL records, by stored columns.

    A group's counts are a plain list in ``COUNT_NAMES`` order, added to element-wise in C
    (``map(add, ...)``); its cost a Decimal. ``Totals`` are made once per group at the end.
    """

    def __init__(self, grouping: tuple[Dimension, ...], latency: bool, tz: tzinfo) -> None:
        self.grouping = grouping
        self.raw = raw_columns(grouping, tz)
        self.key = _key_function(self.raw)
        self.groups: dict[Key, Sequence[int]] = {}
        self.costs: dict[Key, Decimal] = {}
        self.latencies: list[tuple[Key, float]] | None = [] if latency else None
        #: By session: each session's (timestamp, name) of its latest record (``name_sessions``).
        self.names: dict[str, tuple[str, str]] | None = {} if SESSION_NAME in self.raw else None

    def note_name(self, record: dict[str, Any]) -> None:
        """Keep the name of a session's latest record (of equal times, the later line's): any
        record of the file, whatever the window and filters, as SQL reads a session's name."""
        session_id = record.get("session_id")
        if session_id is None or self.names is None:
            return
        timestamp = record["timestamp"]
        known = self.names.get(session_id)
        if known is None or timestamp >= known[0]:
            self.names[session_id] = (timestamp, record.get("session_name") or "")

    def add(self, record: dict[str, Any], values: tuple[int, ...], cost: Decimal | None) -> None:
        key = self.key(record)
        groups = self.groups
        known = groups.get(key)
        groups[key] = values if known is None else list(map(_ADD, known, values))
        if cost is not None:
            costs = self.costs
            costs[key] = costs.get(key, _NO_COST) + cost
        if self.latencies is not None:
            latency = record.get("latency_ms")
            if isinstance(latency, int | float) and not isinstance(latency, bool):
                self.latencies.append((key, float(latency)))

    def subtract(
        self, record: dict[str, Any], values: tuple[int, ...], cost: Decimal | None
    ) -> None:
        """Take back a record ``add`` counted (with its latency)."""
        latencies, self.latencies = self.latencies, None
        try:
            self.add(record, tuple([-value for value in values]), None if cost is None else -cost)
        finally:
            self.latencies = latencies
        latency = record.get("latency_ms")
        if isinstance(latency, int | float) and not isinstance(latency, bool) and latencies:
            latencies.remove((self.key(record), float(latency)))

    def state(self) -> _State:
        """What ``merge`` takes (latencies by key: compact to send between processes)."""
        if self.latencies is None:
            return self.groups, self.costs, None, self.names
        latencies: dict[Key, array[float]] = {}
        for key, value in self.latencies:
            found = latencies.get(key)
            if found is None:
                found = latencies[key] = array("d")
            found.append(value)
        return self.groups, self.costs, latencies, self.names

    def merge(
        self,
        groups: dict[Key, Sequence[int]],
        costs: dict[Key, Decimal],
        latencies: dict[Key, array[float]] | None,
        names: dict[str, tuple[str, str]] | None,
    ) -> None:
        """Add the totals of the records that follow, read elsewhere (``state``)."""
        if self.names is not None and names is not None:
            for session_id, (timestamp, name) in names.items():
                self.note_name(
                    {"session_id": session_id, "timestamp": timestamp, "session_name": name}
                )
        for key, values in groups.items():
            known = self.groups.get(key)
            self.groups[key] = values if known is None else list(map(_ADD, known, values))
        for key, cost in costs.items():
            self.costs[key] = self.costs.get(key, _NO_COST) + cost
        if self.latencies is not None and latencies is not None:
            self.latencies.extend(
                (key, value) for key, found in latencies.items() for value in found
            )

    def breakdown(self, tz: tzinfo, shortlist: int | None = None) -> Breakdown:
        costs = self.costs
        if shortlist is not None and _can_shortlist(self.grouping, self.raw):
            ranked = (
                (key, values, costs.get(key, _NO_COST)) for key, values in self.groups.items()
            )
            groups: Iterable[tuple[Key, Totals]] = _shortlisted(shortlist, ranked)
        else:
            groups = (
                (key, Totals.from_counts(values, costs.get(key, _NO_COST)))
                for key, values in self.groups.items()
            )
        breakdown = roll_up(self.grouping, self.raw, groups, tz)
        if self.latencies is not None:
            _latencies(breakdown, self.raw, self.latencies, tz)
        if self.names is not None:
            name_sessions(breakdown, {sid: name for sid, (_, name) in self.names.items()})
        return breakdown


def _breakdowns(groupers: list[_Grouper], query: Query) -> list[Breakdown]:
    return [g.breakdown(query.tz, query.shortlists.get(g.grouping)) for g in groupers]


def _uses_tags(query: Query) -> bool:
    return bool(query.filters.tags) or any(
        column.startswith("tag:")
        for grouping in query.groupings
        for column in raw_columns(grouping)
    )


#: A JSONL file this large is read in two halves at once when only totals are asked for (no
#: call list, no dashboard tag charts): the second half in a child process, so two cores share
#: the wait. Smaller files are not worth the child's start.
SPLIT_BYTES = 64 << 20

#: What a child's half of a read sends back: each grouping's counts, costs and latencies (by
#: stored key), and the lines it skipped.
_State: TypeAlias = (
    "tuple[dict[Key, Sequence[int]], dict[Key, Decimal], dict[Key, array[float]] | None, "
    "dict[str, tuple[str, str]] | None]"
)
_Part: TypeAlias = "tuple[list[_State], int]"


def _run_jsonl(
    source: Source, query: Query, progress: Progress | None, tags: _TagTotals | None
) -> tuple[list[Breakdown], CallList | None, int]:
    on_progress = progress.update if progress else None
    groupers = [
        _Grouper(grouping, query.latency and i == 0, query.tz)
        for i, grouping in enumerate(query.groupings)
    ]
    if query.calls_limit is not None:  # the calls are listed: every field of every record
        reader = JsonlReader(source.path, on_progress=on_progress)
        records = (
            (r, tuple([r[name] for name in COUNT_FIELDS]), r.get("estimated_cost_usd"))
            for r in reader
        )
        calls: CallList
        # The newest by timestamp, in time order, as SQLite lists them: a file's lines are not in
        # time order (a backfill recorded with ``timestamp=``, several processes appending).
        if spooled(query.calls_limit):
            spool = calls = CallSpool(query.calls_limit, by_time=True)

            def keep_call(record: dict[str, Any]) -> None:
                spool.append(Call.from_json(record))

            _total(records, query, groupers, tags, keep_call)
        else:  # the newest few: only those are made Calls
            newest = _Newest(query.calls_limit)
            _total(records, query, groupers, tags, newest.add)
            calls = newest.calls()
        return _breakdowns(groupers, query), calls, reader.skipped
    # Totals only: the fast scan of the fields totals read.
    need_tags = tags is not None or _uses_tags(query)
    middle = _middle(source.path) if tags is None else None
    if middle is None:
        scan = JsonlScan(source.path, tags=need_tags, on_progress=on_progress)
        _total(scan, query, groupers, tags, None)
        return _breakdowns(groupers, query), None, scan.skipped
    child, results = _start_half(source.path, query, need_tags, middle)
    window = RecentIds()
    try:
        scan = JsonlScan(
            source.path, tags=need_tags, on_progress=on_progress, end=middle, window=window
        )
        _total(scan, query, groupers, tags, None)
        part = _receive_half(child, results)
    finally:
        if child.is_alive():
            child.kill()
        child.join()
        results.close()
    if part is None:  # the child did not finish (killed?): read its half here
        part = _scan_half(source.path, query, need_tags, middle)
    parts, skipped = part
    for grouper, (counts, costs, latencies, names) in zip(groupers, parts, strict=True):
        grouper.merge(counts, costs, latencies, names)
    _take_back_seam(source.path, query, need_tags, middle, window, groupers)
    return _breakdowns(groupers, query), None, scan.skipped + skipped


class _SeamPassed(Exception):
    """The records after the middle that the first half's ids reach have all been read."""


class _Seam(RecentIds):
    """As ``RecentIds`` for a read from the middle on: ``seen`` is False only for the records
    that one read of the whole file drops as written twice (their id among the first half's
    last ids, ``first``) and the second half's read counted (its own ``second`` had not seen
    it); past the first half's reach, the two reads see the same, and ``_SeamPassed`` ends it."""

    __slots__ = ("first", "left", "second")

    def __init__(self, first: RecentIds) -> None:
        super().__init__(first.size)
        self.first = first
        self.second = RecentIds(first.size)
        self.left = first.size

    def seen(self, record_id: str | None) -> bool:
        if not self.left:
            raise _SeamPassed
        self.left -= 1
        in_first = self.first.seen(record_id)
        return self.second.seen(record_id) or not in_first


def _take_back_seam(
    path: Path,
    query: Query,
    need_tags: bool,
    middle: int,
    window: RecentIds,
    groupers: list[_Grouper],
) -> None:
    """The second half was read with no memory of the first half's ids: take back what it
    counted of a record written twice across the middle, so the figures are one read's."""
    scan = JsonlScan(path, tags=need_tags, start=middle, window=_Seam(window))
    with contextlib.suppress(_SeamPassed):
        _total(scan, query, groupers, None, None, subtract=True)


def _middle(path: Path) -> int | None:
    """Where a large file's second half begins (at a line), if it is to be read in two halves.

    Only where a child can be forked cheaply and safely: the process has no other thread, and
    the system is not macOS (whose system libraries do not survive a fork without exec).
    """
    try:
        size = path.stat().st_size
    except OSError:
        return None
    if (
        size < SPLIT_BYTES
        or (os.cpu_count() or 1) < 2
        or sys.platform == "darwin"
        or "fork" not in multiprocessing.get_all_start_methods()
        or threading.active_count() != 1
    ):
        return None
    return line_start_after(path, size // 2)


def _start_half(
    path: Path, query: Query, need_tags: bool, start: int
) -> tuple[multiprocessing.process.BaseProcess, Connection]:
    context = multiprocessing.get_context("fork")
    results, sender = context.Pipe(duplex=False)
    for stream in (sys.stdout, sys.stderr):  # else the child could print what is buffered again
        stream.flush()
    child = context.Process(
        target=_half_in_child, args=(sender, path, query, need_tags, start), daemon=True
    )
    child.start()
    sender.close()
    return child, results


def _half_in_child(
    sender: Connection, path: Path, query: Query, need_tags: bool, start: int
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C: the parent reports it, once
    try:
        sender.send(("ok", _scan_half(path, query, need_tags, start)))
    except CliError as exc:
        sender.send(("error", str(exc)))
    except Exception:  # a fault of ours: the parent reads this half itself, and meets it there
        sender.send(("again", None))


def _receive_half(child: multiprocessing.process.BaseProcess, results: Connection) -> _Part | None:
    try:
        status, value = results.recv()
    except (EOFError, OSError):
        return None
    if status == "error":
        raise CliError(value)
    if status == "again":
        return None
    part: _Part = value
    return part


def _scan_half(path: Path, query: Query, need_tags: bool, start: int) -> _Part:
    """Totals of the lines from ``start`` on, as the child sends them back."""
    groupers = [
        _Grouper(grouping, query.latency and i == 0, query.tz)
        for i, grouping in enumerate(query.groupings)
    ]
    scan = JsonlScan(path, tags=need_tags, start=start)
    _total(scan, query, groupers, None, None)
    return [g.state() for g in groupers], scan.skipped


def figures(record: dict[str, Any], counts: Sequence[int], cost: Decimal | None) -> Figures:
    """A scanned record's figures in ``COUNT_NAMES`` order, as ``Totals.from_counts`` reads them
    (``counts``: its six token counts, as ``JsonlScan`` yields them)."""
    status = record.get("status")
    return (
        1,
        *counts,
        0 if cost is None else 1,
        0 if cost is None else counts[5],
        1 if status == "error" else 0,
        1 if status == "blocked" else 0,
        1 if record.get("estimated") else 0,
        1 if cost is None and status != "blocked" else 0,
    )


def _total(
    records: Iterable[tuple[dict[str, Any], tuple[int, ...], Decimal | None]],
    query: Query,
    groupers: list[_Grouper],
    tags: _TagTotals | None,
    keep: Callable[[dict[str, Any]], None] | None,
    subtract: bool = False,
) -> None:
    """Add the records in the window that pass the filters to every grouping (and the tags), and
    ``keep`` each (the listed calls); ``subtract``: take them back."""
    since = format_instant(query.since) if query.since is not None else None
    until = format_instant(query.until) if query.until is not None else None
    adders = [grouper.subtract if subtract else grouper.add for grouper in groupers]
    namers = [g.note_name for g in groupers if g.names is not None and not subtract]
    filters = query.filters
    filtering = filters != Filters()
    session_id = query.session_id
    for record, counts, cost in records:  # checked: counts are ints, the cost a Decimal or None
        for note_name in namers:
            note_name(record)
        timestamp = record["timestamp"]
        if (since is not None and timestamp < since) or (until is not None and timestamp >= until):
            continue
        if session_id is not None and record.get("session_id") != session_id:
            continue
        if filtering and not filters.matches(record):
            continue
        values = figures(record, counts, cost)
        for add in adders:
            add(record, values, cost)
        if tags is not None and record["tags"]:
            tags.add(record["tags"], values, cost)
        if keep is not None:
            keep(record)
