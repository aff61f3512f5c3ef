"""The small, format-free result of a report query: rows of exact Decimal totals.

Every renderer (table, markdown, json, csv, html) reads only these types, so the SQLite and JSONL
readers and the output formats never meet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

__all__ = ["Breakdown", "Call", "Dimension", "Report", "Row", "Totals", "parse_dimension"]

NONE_LABEL = "(none)"
_PICO_PER_USD = Decimal(10**12)
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
    "session": ("session_id", "session"),
    "day": ("day",),
}
DIMENSION_NAMES = (*_SIMPLE_DIMENSIONS, "tag:KEY")


def parse_dimension(spec: str) -> Dimension:
    """``model|provider|session|day|tag:KEY`` -> Dimension; ValueError names the bad key."""
    text = spec.strip()
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


@dataclass(slots=True)
class Totals:
    """Token and cost sums of a set of calls. Unpriced calls add tokens but never a fake $0."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    total_tokens: int = 0
    priced_calls: int = 0
    priced_cost: Decimal = field(default_factory=Decimal)

    @classmethod
    def from_sql(cls, values: Sequence[Any]) -> Totals:
        """From ``COUNT(*)``, the six token SUMs, ``COUNT(cost_pusd)``, ``SUM(cost_pusd)``."""
        counts = [int(value or 0) for value in values[:8]]
        return cls(
            calls=counts[0],
            input_tokens=counts[1],
            output_tokens=counts[2],
            cache_read_tokens=counts[3],
            cache_write_tokens=counts[4],
            reasoning_tokens=counts[5],
            total_tokens=counts[6],
            priced_calls=counts[7],
            priced_cost=Decimal(values[8] or 0) / _PICO_PER_USD,
        )

    @property
    def cost(self) -> Decimal | None:
        """Sum of known costs; None when no call in the set has a price."""
        return self.priced_cost if self.priced_calls else None

    @property
    def unpriced_calls(self) -> int:
        return self.calls - self.priced_calls

    def add(self, other: Totals) -> None:
        self.calls += other.calls
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cache_read_tokens += other.cache_read_tokens
        self.cache_write_tokens += other.cache_write_tokens
        self.reasoning_tokens += other.reasoning_tokens
        self.total_tokens += other.total_tokens
        self.priced_calls += other.priced_calls
        self.priced_cost += other.priced_cost

    def share_of(self, whole: Totals) -> Decimal | None:
        """This cost as a fraction of ``whole``'s cost (None when there is nothing to divide)."""
        if self.cost is None or not whole.priced_cost:
            return None
        return self.priced_cost / whole.priced_cost


@dataclass(frozen=True, slots=True)
class Row:
    key: tuple[str, ...]
    totals: Totals


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


@dataclass
class Report:
    """Everything a renderer needs: the requested breakdown, totals, and optional extras."""

    source: str
    since: datetime | None
    until: datetime | None  # exclusive
    totals: Totals
    breakdowns: list[Breakdown]  # the first one is what --by asked for
    calls: list[Call] | None = None  # the detailed variant: the most recent calls, oldest first
    calls_limit: int | None = None
    skipped_lines: int = 0

    @property
    def main(self) -> Breakdown:
        return self.breakdowns[0]
