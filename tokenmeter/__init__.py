"""tokenmeter: exact, local cost metering for LLM calls.

import tokenmeter
tokenmeter.instrument()          # patch every installed provider SDK, once
with tokenmeter.session("chat", tags={"feature": "support"}) as s:
    ...                          # OpenAI / Anthropic / Gemini calls as usual
print(s.summary.cost_usd)
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tokenmeter import sinks
from tokenmeter._models import Cost, SessionInfo, Usage, UsageRecord
from tokenmeter._pipeline import flush as _flush
from tokenmeter._record import record, record_response
from tokenmeter._runtime import configure
from tokenmeter._sessions import (
    ModelTotals,
    Session,
    SessionSummary,
    current_session,
    session,
    track,
)
from tokenmeter.providers import Instrumentation, instrument, uninstrument, wrap

if TYPE_CHECKING:
    from tokenmeter import testing

__all__ = [
    "Cost",
    "Instrumentation",
    "ModelTotals",
    "Session",
    "SessionInfo",
    "SessionSummary",
    "Usage",
    "UsageRecord",
    "configure",
    "current_session",
    "flush",
    "instrument",
    "price",
    "record",
    "record_response",
    "session",
    "sinks",
    "testing",
    "track",
    "uninstrument",
    "wrap",
]

__version__ = "0.1.0"


def price(
    provider: str,
    model: str,
    usage: Usage | Mapping[str, int],
    *,
    at: datetime | None = None,
    tier: str | None = None,
) -> Cost:
    """Price a Usage as of ``at`` (default now). ``Cost.total_usd`` is None for unknown models.

    ``usage`` may be a mapping of token counts. Bad arguments raise a one-line ValueError naming
    the argument (and the count at fault), like ``record()``: this is public API, so a pydantic
    dump or a TypeError from deep inside would be the wrong answer.
    """
    from pydantic import ValidationError

    from tokenmeter._record import _first_error
    from tokenmeter.pricing import price_usage
    from tokenmeter.pricing._overrides import short_repr

    if not isinstance(provider, str) or not provider.strip():
        raise ValueError(f"provider must be a non-empty string, got {short_repr(provider)}")
    if not isinstance(model, str) or not model.strip():
        raise ValueError(f"model must be a non-empty string, got {short_repr(model)}")
    if not isinstance(usage, Usage):
        if not isinstance(usage, Mapping):
            raise ValueError(
                f"usage must be a Usage or a mapping of token counts, got {short_repr(usage)}"
            )
        try:
            usage = Usage.model_validate(dict(usage))
        except ValidationError as exc:  # "usage.input_tokens: ...", or "usage: <the rule>"
            joint = "." if exc.errors()[0]["loc"] else ": "
            raise ValueError("usage" + joint + _first_error(exc)) from None
    if at is not None:
        if not isinstance(at, datetime):
            raise ValueError(f"at must be a datetime, got {short_repr(at)}")
        try:
            at = at.astimezone(UTC) if at.tzinfo else at.replace(tzinfo=UTC)  # naive is UTC
        except OverflowError:
            raise ValueError(f"at is out of range in UTC, got {short_repr(at)}") from None
    if tier is not None and not isinstance(tier, str):
        raise ValueError(f"tier must be a string such as 'batch' or 'flex', got {short_repr(tier)}")
    return price_usage(provider.strip().lower(), model.strip(), usage, at=at, tier=tier)


def flush(timeout: float | None = None) -> bool:
    """Block until every record produced so far is in every sink (False if ``timeout`` ran out)."""
    return _flush(timeout)


def __getattr__(name: str) -> Any:
    if name == "testing":  # imported on demand: it is for tests and demos only
        import importlib

        return importlib.import_module("tokenmeter.testing")
    raise AttributeError(f"module 'tokenmeter' has no attribute {name!r}")
