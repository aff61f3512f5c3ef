"""The small, format-free result of a report query: rows of exact Decimal totals.

Every renderer (table, markdown, json, csv, html) reads only these types, so the SQLite and JSONL
readers and the output formats never meet.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import Decimal
from functools import lru_cache
from typing import Any, Protocol

from tokenmeter._totals import Totals

__all__ = [
    "Breakdown",
    "Call",
    "Dimension",
    "Key",
    "Latency",
    "Report",
    "Row",
    "TagSection",
    "Totals",
    "column_label",
    "key_label",
    "parse_dimension",
    "tag_label",
    "untagged_label",
]

NONE_LABEL = "(none)"
#: A row's key, a value per key column. None only in a ``tag:KEY`` column: the calls without
#: that tag, apart from a tag whose value is the text ``(none)``; the table, markdown, HTML
#: and CSV show it as ``untagged_label`` (``tag_label``), JSON as null.
Key = tuple[str | None, ...]


def key_label(value: str | None) -> str:
    """A key value as the tables and charts show it: ``NONE_LABEL`` for None (a ``tag:KEY``
    column's values are shown by ``column_label``)."""
    return NONE_LABEL if value is None else value


def untagged_label(key: str) -> str:
    """What the tables and charts show for the calls without the tag ``key``."""
    return f"(no {key} tag)"


def tag_label(key: str, value: str | None) -> str:
    """A value of the tag ``key`` as the tables and charts show it: ``untagged_label(key)`` for
    the calls without the tag. A tag may hold any text, ``(no customer tag)`` copied from another
    report too: a value that reads as that label, in double quotes or not, is shown quoted as in
    JSON, so that no row of a value looks like the untagged calls' (nor like another value's)."""
    label = untagged_label(key)
    if value is None:
        return label
    if value.strip().strip('"') == label:
        return json.dumps(value, ensure_ascii=False)
    return value


def column_label(column: str, value: str | None) -> str:
    """A value of the key column ``column`` as the tables show it (``tag_label`` for a
    ``tag:KEY`` column, ``key_label`` for the others)."""
    if column.startswith("tag:"):
        return tag_label(column.removeprefix("tag:"), value)
    return key_label(value)


#: What the tables and charts show for calls outside a named session, grouped ``--by name`` (the
#: machine formats keep its empty text).
NO_NAME_LABEL = "(no name)"
CALL_JSON_KEYS = (
    "timestamp",
    "provider",
    "model",
    "session_id",
    "session_name",
    "operation",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "total_tokens",
    "cost_usd",
    "status",
    "error",
    "estimated",
    "tags",
)


@dataclass(frozen=True)
class Dimension:
    """One ``--by`` key: the column(s) it adds to a row key."""

    spec: str  # as typed: "model", "tag:feature"
    columns: tuple[str, ...]
    tag_key: str | None = None


_SIMPLE_DIMENSIONS = {
    "provider": ("provider",),
    "model": ("provider", "model"),
    "family": ("provider", "family"),
    "session": ("session_id", "session"),
    "name": ("session",),
    "status": ("status",),
    "hour": ("hour",),
    "day": ("day",),
    "week": ("week",),
    "month": ("month",),
}
_ALIASES = {"session-name": "name", "session_name": "name", "model-family": "family"}
DIMENSION_NAMES = (*_SIMPLE_DIMENSIONS, "tag:KEY")
#: Key columns that are calendar buckets: rows sort by time, and ``--tz`` decides the calendar.
TIME_COLUMNS = ("hour", "day", "week", "month")


def parse_dimension(spec: str) -> Dimension:
    """``model|provider|family|session|name|status|hour|day|week|month|tag:KEY`` -> Dimension.

    ValueError names the bad key.
    """
    text = spec.strip()
    text = _ALIASES.get(text, text)
    if text in _SIMPLE_DIMENSIONS:
        return Dimension(text, _SIMPLE_DIMENSIONS[text])
    if text.startswith("tag:") and text[4:].strip():
        key = text[4:].strip()
        return Dimension(f"tag:{key}", (f"tag:{key}",), tag_key=key)
    raise ValueError(f"unknown --by key {spec!r}: use one of {', '.join(DIMENSION_NAMES)}")


def key_columns(dimensions: tuple[Dimension, ...]) -> tuple[str, ...]:
    """The row-key columns of a composite grouping, each once (``provider`` + ``model`` overlap)."""
    seen: dict[str, None] = {}
    for dimension in dimensions:
        for column in dimension.columns:
            seen.setdefault(column, None)
    return tuple(seen)


#: The stored column of a session's name in a grouping by session (``session`` beside
#: ``session_id``): empty as the calls are grouped, by the session's id alone, then the
#: session's latest name (``_query.name_sessions``). A session renamed as it goes has records
#: under each name it had, and is still one row.
SESSION_NAME = "latest_session_name"


def raw_columns(grouping: tuple[Dimension, ...], tz: tzinfo = UTC) -> tuple[str, ...]:
    """The stored columns a grouping is read by: a family needs the model, a calendar bucket the
    UTC hour or minute (``time_column``), rolled up into the ``--tz`` calendar afterwards (see
    ``_query.roll_up``); a session's name beside its id, ``SESSION_NAME``, unless the grouping is
    by name too (``--by session,name``: the name each call was made under, a row for each)."""
    columns = key_columns(grouping)
    by_latest_name = not any(dimension.spec == "name" for dimension in grouping)
    seen: dict[str, None] = {}
    for column in columns:
        if column == "session" and "session_id" in columns and by_latest_name:
            seen.setdefault(SESSION_NAME, None)
        elif column == "family":
            seen.setdefault("provider", None)
            seen.setdefault("model", None)
        elif column in TIME_COLUMNS:
            seen.setdefault(time_column(tz), None)
        else:
            seen.setdefault(column, None)
    return tuple(seen)


def as_shown(raw: tuple[str, ...]) -> tuple[str, ...]:
    """Stored columns named as the key columns they fill one to one (``SESSION_NAME`` is
    ``session``): equal to a grouping's columns when each stored group is one of its rows."""
    return tuple("session" if column == SESSION_NAME else column for column in raw)


#: The stored time columns: a record's UTC hour (``2026-11-01T18``) or minute (``...T18:40``).
UTC_HOUR = "utc_hour"
UTC_MINUTE = "utc_minute"
_PROBE_FROM = datetime(1970, 1, 1, tzinfo=UTC)
_PROBE_STEP = timedelta(days=91)
_PROBES = 525  # a season apart, to 2100: such an offset has lasted months or years


@lru_cache(maxsize=16)
def time_column(tz: tzinfo) -> str:
    """``UTC_HOUR``, or ``UTC_MINUTE`` where ``tz`` is ever off UTC by a part of an hour (India
    +05:30, Nepal +05:45, Adelaide +09:30 ...): there a UTC hour holds the end of one local
    hour and the start of the next, at midnight of two days, so it cannot be put in one."""
    if tz is UTC:
        return UTC_HOUR
    for step in range(_PROBES):
        offset = (_PROBE_FROM + step * _PROBE_STEP).astimezone(tz).utcoffset()
        if offset is not None and offset % timedelta(hours=1):
            return UTC_MINUTE
    return UTC_HOUR


@dataclass(frozen=True, slots=True)
class Latency:
    """Nearest-rank latency percentiles of the calls of a group that report a latency."""

    p50_ms: float
    p95_ms: float
    calls: int


@dataclass(frozen=True, slots=True)
class Row:
    key: Key
    totals: Totals
    latency: Latency | None = None


@dataclass(frozen=True)
class Breakdown:
    """Totals grouped by one composite key (``--by model --by day``)."""

    dimensions: tuple[Dimension, ...]
    columns: tuple[str, ...]
    rows: list[Row]

    @property
    def title(self) -> str:
        return " + ".join(d.spec for d in self.dimensions)


@dataclass(frozen=True, slots=True)
class Call:
    """One recorded call as the detailed report, ``session`` and ``tail`` show it."""

    timestamp: str
    provider: str
    model: str
    session_id: str | None
    session_name: str | None
    operation: str | None
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    total_tokens: int
    cost: Decimal | None
    cost_breakdown: dict[str, Decimal] | None
    status: str
    error: str | None
    tags: dict[str, str]
    latency_ms: float | None
    streamed: bool
    #: Token counts estimated by tokenmeter (the provider reported none), not reported.
    estimated: bool = False

    @property
    def estimated_cost_usd(self) -> Decimal | None:
        """The cost under the record's name, so ``Totals.add_record`` reads a Call too."""
        return self.cost

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Call:
        """From a record checked by ``_validate`` (a JSONL line or a SQLite row, same shape)."""
        cost = data.get("estimated_cost_usd")
        breakdown = data.get("cost_breakdown")
        tags = data.get("tags")
        return cls(
            timestamp=str(data.get("timestamp") or ""),
            provider=str(data.get("model_provider") or NONE_LABEL),
            model=str(data.get("model_name") or NONE_LABEL),
            session_id=data.get("session_id"),
            session_name=data.get("session_name"),
            operation=data.get("operation"),
            input_tokens=int(data.get("input_tokens") or 0),
            output_tokens=int(data.get("output_tokens") or 0),
            cache_read_tokens=int(data.get("cache_read_tokens") or 0),
            cache_write_tokens=int(data.get("cache_write_tokens") or 0),
            reasoning_tokens=int(data.get("reasoning_tokens") or 0),
            total_tokens=int(data.get("total_tokens") or 0),
            cost=None if cost is None else Decimal(str(cost)),
            cost_breakdown=None
            if not isinstance(breakdown, dict)
            else {str(k): Decimal(str(v)) for k, v in breakdown.items() if v is not None},
            status=str(data.get("status") or "ok"),
            error=data.get("error"),
            tags={str(k): str(v) for k, v in tags.items()} if isinstance(tags, dict) else {},
            latency_ms=data.get("latency_ms"),
            streamed=bool(data.get("streamed")),
            estimated=bool(data.get("estimated")),
        )

    def as_json(self) -> dict[str, Any]:
        """The keys of ``CALL_JSON_KEYS``, in that order (cost exact, as Decimal)."""
        values = {"provider": self.provider, "model": self.model, "cost_usd": self.cost}
        return {key: values[key] if key in values else getattr(self, key) for key in CALL_JSON_KEYS}


class CallList(Protocol):
    """The calls a detailed report lists, oldest first: a list, or a ``CallSpool`` (on disk)."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Call]: ...


@dataclass
class TagSection:
    """One tag key found in the data: its most costly values, the others summed.

    ``values`` counts the distinct values seen; ``rest`` sums all but the ``rows`` shown (None
    when every value is shown); ``untagged`` the calls of the report without this key.
    ``partial`` is set when the key had more distinct values than a JSONL read keeps apart:
    the ranking is then among the first ones seen (the totals are still exact).
    """

    key: str
    tagged: Totals
    values: int
    rows: list[Row]
    rest: Totals | None
    untagged: Totals
    partial: bool = False


@dataclass
class Report:
    """Everything a renderer needs: the requested breakdown, totals, and optional extras."""

    source: str
    since: datetime | None
    until: datetime | None  # exclusive
    totals: Totals
    breakdowns: list[Breakdown]  # the first one is what --by asked for
    calls: CallList | None = None  # the detailed variant: the most recent calls, oldest first
    calls_limit: int | None = None
    skipped_lines: int = 0
    filters: str = ""  # as ``Filters.describe`` words them; "" when every record counts
    tz: tzinfo = UTC
    previous: Report | None = None  # the same query over the period before (``--compare``)
    #: p50 / p95 latency were asked for (``--latency``): every row has them, None where unknown.
    latency: bool = False
    #: Every tag key in the data, most used first (``Query.tag_values`` > 0), else None.
    tags: list[TagSection] | None = None
    more_tag_keys: int = 0  # tag keys beyond those in ``tags`` (too many to total each)

    def previous_totals(self, breakdown: Breakdown, key: Key) -> Totals | None:
        """The totals of the row with this key in the previous period (``--compare``)."""
        if self.previous is None:
            return None
        # The period before may be read for the main table alone (``run_report``).
        for mine, theirs in zip(self.breakdowns, self.previous.breakdowns, strict=False):
            if mine is breakdown:
                for row in theirs.rows:
                    if row.key == key:
                        return row.totals
                return Totals()
        return None

    @property
    def main(self) -> Breakdown:
        return self.breakdowns[0]
