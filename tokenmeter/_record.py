"""Building records: the one road every intercepted or manual call takes.

Runs on the caller's thread, so it only computes: price (cached), attribute to the session, update
the live summaries, enqueue. All I/O happens on the writer thread (``_pipeline``).
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from tokenmeter import _pipeline, _runtime, _sessions
from tokenmeter._models import Usage, UsageRecord, trusted, usage_of
from tokenmeter.pricing import price_usage
from tokenmeter.usage import extract

__all__ = ["emit", "record", "record_response"]

logger = logging.getLogger("tokenmeter")

_id_prefix = secrets.token_hex(6)
_id_counter = itertools.count()


def _reset_ids_after_fork() -> None:
    global _id_prefix, _id_counter
    _id_prefix, _id_counter = secrets.token_hex(6), itertools.count()


os.register_at_fork(after_in_child=_reset_ids_after_fork)


def emit(
    provider: str,
    model: str,
    usage: Usage,
    *,
    request_model: str | None = None,
    operation: str | None = None,
    tier: str | None = None,
    request_id: str | None = None,
    latency_ms: float | None = None,
    streamed: bool = False,
    status: str = "ok",
    error: str | None = None,
    estimated: bool = False,
    timestamp: datetime | None = None,
    tags: dict[str, str] | None = None,
) -> UsageRecord:
    """Price, attribute and enqueue one call's usage. Inputs are trusted (already validated)."""
    if _runtime._settings is None:  # once per process: price overrides must be in place
        _runtime.settings()
    now = timestamp or datetime.now(UTC)
    cost = price_usage(provider, model, usage, at=now, tier=tier)
    session = _sessions.current_session() or _sessions.implicit_session()
    session_tags = session.effective_tags
    record: UsageRecord = trusted(
        UsageRecord,
        {
            "timestamp": now,
            "model_provider": provider,
            "model_name": model,
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "total_tokens": usage.input_tokens + usage.output_tokens,
            "estimated_cost_usd": cost.total_usd,
            "id": f"{_id_prefix}{next(_id_counter):010x}",
            "request_model": request_model,
            "operation": operation,
            "cache_read_tokens": usage.cache_read_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
            "reasoning_tokens": usage.reasoning_tokens,
            "cost_breakdown": cost.breakdown,
            "price_source": cost.price_source,
            "session_id": session.id,
            "session_name": session.name,
            "tags": {**session_tags, **tags} if tags else session_tags,
            "latency_ms": latency_ms,
            "streamed": streamed,
            "status": status,
            "error": error,
            "request_id": request_id,
            "estimated": estimated,
        },
    )
    if not session._announced:
        _sessions.announce(session)
    session._add(record)
    _pipeline.submit(record)
    return record


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    return value.strip()


def _timestamp(value: Any) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"timestamp is not an ISO-8601 date/time: {value!r}") from None
    if not isinstance(value, datetime):
        raise ValueError(f"timestamp must be a datetime or ISO-8601 string, got {value!r}")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _usage(**counts: Any) -> Usage:
    if all(type(value) is int and value >= 0 for value in counts.values()):
        return usage_of(**counts)  # the common case; only the subset rules are left to check
    try:
        return Usage(**counts)  # pydantic names the field that is wrong
    except ValidationError as exc:
        raise ValueError(_first_error(exc)) from None


def _first_error(exc: ValidationError) -> str:
    """pydantic's first complaint as one line that names the field."""
    error = exc.errors()[0]
    message = error["msg"].removeprefix("Value error, ")
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {message} (got {error['input']!r})" if where else message


def record(
    provider: str,
    model: str,
    input_tokens: int,
    output_tokens: int,
    *,
    cache_read_tokens: int = 0,
    cache_write_tokens: int = 0,
    reasoning_tokens: int = 0,
    operation: str | None = None,
    tags: dict[str, str] | None = None,
    estimated: bool = False,
    timestamp: datetime | str | None = None,
) -> UsageRecord:
    """Record a call by hand; priced, attributed and written like an intercepted one.

    Counts follow tokenmeter's convention: ``input_tokens`` is ALL input (cache included) and
    ``output_tokens`` ALL output (reasoning included). Bad input raises ValueError; nothing is
    written then.
    """
    provider = _text("provider", provider).lower()
    model = _text("model", model)
    usage = _usage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read_tokens=cache_read_tokens,
        cache_write_tokens=cache_write_tokens,
        reasoning_tokens=reasoning_tokens,
    )
    if operation is not None and not isinstance(operation, str):
        raise ValueError(f"operation must be a string, got {operation!r}")
    return emit(
        provider,
        model,
        usage,
        request_model=model,
        operation=operation,
        estimated=bool(estimated),
        timestamp=_timestamp(timestamp) if timestamp is not None else None,
        tags=_sessions._check_tags(tags) or None,
    )


def record_response(
    response: Any, *, provider: str | None = None, model: str | None = None
) -> UsageRecord:
    """Record a provider response object or its JSON dict (provider detected from its shape)."""
    if provider is not None:
        provider = _text("provider", provider)
    if model is not None:
        model = _text("model", model)
    try:
        found = extract(response, provider)
    except ValidationError as exc:
        raise ValueError("unreadable usage in response: " + _first_error(exc)) from None
    model_name = found.model or model
    if not model_name:
        raise ValueError("the response names no model: pass model=")
    return emit(
        found.provider,
        model_name,
        found.usage,
        request_model=model or model_name,
        operation=found.operation,
        tier=found.tier,
        request_id=found.request_id,
    )
