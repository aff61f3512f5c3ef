"""The three value types every other module speaks: Usage, Cost and UsageRecord.

Token counts follow one convention everywhere (SPEC §3): ``input_tokens`` is ALL input (cached and
cache-written included) and ``output_tokens`` is ALL output (reasoning included); the other counts
are subsets of those two. Provider-specific conventions are converted in ``tokenmeter.usage``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_serializer, model_validator

__all__ = ["Cost", "SessionInfo", "Usage", "UsageRecord"]

_SUBSETS_OF_INPUT = ("cache_read_tokens", "cache_write_tokens", "input_audio_tokens")


class Usage(BaseModel):
    """Normalised token counts of one call."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    #: Part of ``cache_write_tokens`` written with a 1-hour TTL (Anthropic bills it at 2x input).
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0
    input_audio_tokens: int = 0
    output_audio_tokens: int = 0

    @model_validator(mode="before")
    @classmethod
    def _check_counts(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, value in data.items():
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
                if value < 0:
                    raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        return data

    @model_validator(mode="after")
    def _check_subsets(self) -> Usage:
        if self.cache_read_tokens + self.cache_write_tokens > self.input_tokens:
            raise ValueError(
                "cache_read_tokens + cache_write_tokens "
                f"({self.cache_read_tokens} + {self.cache_write_tokens}) "
                f"cannot exceed input_tokens ({self.input_tokens})"
            )
        if self.input_audio_tokens > self.input_tokens:
            raise ValueError(
                f"input_audio_tokens ({self.input_audio_tokens}) "
                f"cannot exceed input_tokens ({self.input_tokens})"
            )
        if self.cache_write_1h_tokens > self.cache_write_tokens:
            raise ValueError(
                f"cache_write_1h_tokens ({self.cache_write_1h_tokens}) "
                f"cannot exceed cache_write_tokens ({self.cache_write_tokens})"
            )
        if self.reasoning_tokens + self.output_audio_tokens > self.output_tokens:
            raise ValueError(
                f"reasoning_tokens ({self.reasoning_tokens}) cannot exceed "
                f"output_tokens ({self.output_tokens})"
                if not self.output_audio_tokens
                else f"reasoning_tokens + output_audio_tokens ({self.reasoning_tokens} + "
                f"{self.output_audio_tokens}) cannot exceed output_tokens ({self.output_tokens})"
            )
        return self

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class Cost(BaseModel):
    """What a Usage cost. ``total_usd`` is None when no price is known (never a silent 0)."""

    model_config = ConfigDict(frozen=True)

    total_usd: Decimal | None
    #: {"input": uncached input, "cache_read": …, "cache_write": …, "output": …} in USD.
    breakdown: dict[str, Decimal] | None = None
    price_source: str | None = None
    #: The price-table model the name resolved to (e.g. "gpt-4o" for "gpt-4o-2024-08-06").
    priced_model: str | None = None

    @property
    def input_usd(self) -> Decimal | None:
        """Everything billed for input: uncached, cache reads and cache writes."""
        if self.breakdown is None:
            return None
        b = self.breakdown
        return b.get("input", Decimal(0)) + b.get("cache_read", Decimal(0)) + b.get(
            "cache_write", Decimal(0)
        )

    @property
    def output_usd(self) -> Decimal | None:
        return None if self.breakdown is None else self.breakdown.get("output", Decimal(0))


def _iso(ts: datetime) -> str:
    """ISO-8601 UTC with millisecond precision and a "Z", e.g. 2026-11-22T10:00:00.123Z."""
    if ts.tzinfo is not None:
        ts = ts.astimezone(UTC)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def _number(value: Decimal) -> float | int:
    """Decimal -> JSON number; the float repr round-trips to the same decimal text."""
    return int(value) if value == value.to_integral_value() else float(value)


class UsageRecord(BaseModel):
    """One metered LLM call, exactly as every sink stores it (SPEC §3)."""

    model_config = ConfigDict(frozen=True)

    # The seven keys of the original unified format come first and keep their names.
    timestamp: datetime
    model_provider: str
    model_name: str
    input_tokens: int
    output_tokens: int
    total_tokens: int
    estimated_cost_usd: Decimal | None
    id: str
    request_model: str | None = None
    operation: str | None = None
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost_breakdown: dict[str, Decimal] | None = None
    price_source: str | None = None
    session_id: str | None = None
    session_name: str | None = None
    tags: dict[str, str] = {}
    latency_ms: float | None = None
    streamed: bool = False
    status: Literal["ok", "error"] = "ok"
    error: str | None = None
    request_id: str | None = None
    estimated: bool = False

    @field_serializer("timestamp", when_used="json")
    def _ser_timestamp(self, value: datetime) -> str:
        return _iso(value)

    @field_serializer("estimated_cost_usd", when_used="json")
    def _ser_cost(self, value: Decimal | None) -> float | int | None:
        return None if value is None else _number(value)

    @field_serializer("cost_breakdown", when_used="json")
    def _ser_breakdown(self, value: dict[str, Decimal] | None) -> dict[str, float | int] | None:
        return None if value is None else {k: _number(v) for k, v in value.items()}

    def to_json_dict(self) -> dict[str, Any]:
        """The record as plain JSON types, keys in SPEC order (timestamps as ISO strings)."""
        return _to_json_dict(self)

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> UsageRecord:
        """Read back what ``to_json_dict`` wrote; numbers become Decimal again without drift."""
        data = dict(data)
        cost = data.get("estimated_cost_usd")
        if cost is not None:
            data["estimated_cost_usd"] = Decimal(str(cost))
        breakdown = data.get("cost_breakdown")
        if breakdown is not None:
            data["cost_breakdown"] = {k: Decimal(str(v)) for k, v in breakdown.items()}
        ts = data.get("timestamp")
        if isinstance(ts, str):
            data["timestamp"] = datetime.fromisoformat(ts.replace("Z", "+00:00"))
        return cls.model_validate(data)

    @property
    def usage(self) -> Usage:
        return Usage.model_construct(
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cache_read_tokens=self.cache_read_tokens,
            cache_write_tokens=self.cache_write_tokens,
            reasoning_tokens=self.reasoning_tokens,
        )


def _to_json_dict(record: UsageRecord) -> dict[str, Any]:
    # Hand-rolled rather than model_dump(mode="json"): sinks call this for every record and it is
    # several times faster, with the same output.
    cost = record.estimated_cost_usd
    breakdown = record.cost_breakdown
    return {
        "timestamp": _iso(record.timestamp),
        "model_provider": record.model_provider,
        "model_name": record.model_name,
        "input_tokens": record.input_tokens,
        "output_tokens": record.output_tokens,
        "total_tokens": record.total_tokens,
        "estimated_cost_usd": None if cost is None else _number(cost),
        "id": record.id,
        "request_model": record.request_model,
        "operation": record.operation,
        "cache_read_tokens": record.cache_read_tokens,
        "cache_write_tokens": record.cache_write_tokens,
        "reasoning_tokens": record.reasoning_tokens,
        "cost_breakdown": None
        if breakdown is None
        else {k: _number(v) for k, v in breakdown.items()},
        "price_source": record.price_source,
        "session_id": record.session_id,
        "session_name": record.session_name,
        "tags": dict(record.tags),
        "latency_ms": record.latency_ms,
        "streamed": record.streamed,
        "status": record.status,
        "error": record.error,
        "request_id": record.request_id,
        "estimated": record.estimated,
    }


class SessionInfo(BaseModel):
    """A session as sinks store it: sent when it starts and again when it ends."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str | None = None
    parent_id: str | None = None
    tags: dict[str, str] = {}
    status: Literal["active", "completed", "failed"] = "active"
    started_at: datetime
    ended_at: datetime | None = None
    notes: str | None = None
    budget_usd: Decimal | None = None
