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
from typing import Any, Protocol

from pydantic import ValidationError

from tokenmeter import _pipeline, _runtime, _sessions
from tokenmeter._models import Usage, UsageRecord, trusted, usage_of
from tokenmeter.pricing import price_usage
from tokenmeter.usage import extract

__all__ = ["Deferred", "build_record", "defer", "emit", "record", "record_response"]

logger = logging.getLogger("tokenmeter")

_id_prefix = secrets.token_hex(6)
_id_counter = itertools.count()


def _reset_ids_after_fork() -> None:
    global _id_prefix, _id_counter
    _id_prefix, _id_counter = secrets.token_hex(6), itertools.count()


os.register_at_fork(after_in_child=_reset_ids_after_fork)


def build_record(
    provider: str,
    model: str,
    usage: Usage,
    session: _sessions.Session,
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
    """Price one call's usage and make its record (no side effects). Inputs are trusted."""
    now = timestamp or datetime.now(UTC)
    cost = price_usage(provider, model, usage, at=now, tier=tier)
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
    return record


def emit(provider: str, model: str, usage: Usage, **fields: Any) -> UsageRecord:
    """Price, attribute and enqueue one call's usage now (the manual API's road)."""
    if _runtime._settings is None:  # once per process: price overrides must be in place
        _runtime.settings()
    session = _sessions.current_session() or _sessions.implicit_session()
    record = build_record(provider, model, usage, session, **fields)
    if not session._announced:
        _sessions.announce(session)
    session._add(record)
    _pipeline.submit(record)
    return record


class Deferred(Protocol):
    """An intercepted call whose record is built later, off the caller's thread."""

    session: _sessions.Session | None

    def build(self) -> UsageRecord | None:
        """The call's record, made on first use (None: nothing to record). Called with the
        sessions' lock held, so it is made exactly once."""
        ...


def defer(call: Deferred, session: _sessions.Session) -> None:
    """Queue a finished call: the writer thread prices it, builds its record and adds it to the
    session summaries, unless a summary is read first (then the reader does, on its thread).

    This keeps the caller's share of an intercepted call to a few attribute writes and appends.
    """
    if _runtime._settings is None:  # here, not on the writer: configure() waits for the writer
        _runtime.settings()
    call.session = session
    if not session._announced:
        _sessions.announce(session)
    node: _sessions.Session | None = session
    while node is not None:
        node._pending.append(call)
        node = node.parent
    _pipeline.submit(call)  # type: ignore[arg-type]


def _build_deferred(items: list[Any]) -> list[Any]:
    """On the writer thread: replace deferred calls by their records; fold them into summaries."""
    built: list[Any] = []
    sessions: dict[int, _sessions.Session] = {}
    with _sessions._lock:
        for item in items:
            if type(item) in _pipeline.KINDS:
                built.append(item)
                continue
            record = item.build()
            if record is not None:
                built.append(record)
            if item.session is not None:
                sessions[id(item.session)] = item.session
        for session in sessions.values():
            node: _sessions.Session | None = session
            while node is not None:
                node._fold()
                node = node.parent
    return built


_pipeline.build_deferred = _build_deferred


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
