"""tokenmeter: exact, local cost metering for LLM calls.

import tokenmeter
tokenmeter.instrument()          # patch every installed provider SDK, once
with tokenmeter.session("chat", tags={"feature": "support"}) as s:
    ...                          # OpenAI / Anthropic / Gemini calls as usual
print(s.summary.cost_usd)
"""

from __future__ import annotations

from datetime import datetime
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
    usage: Usage | dict[str, int],
    *,
    at: datetime | None = None,
    tier: str | None = None,
) -> Cost:
    """Price a Usage as of ``at`` (default now). ``Cost.total_usd`` is None for unknown models."""
    from tokenmeter.pricing import price_usage

    if not isinstance(provider, str) or not provider.strip():
        raise ValueError(f"provider must be a non-empty string, got {provider!r}")
    if not isinstance(model, str) or not model.strip():
        raise ValueError(f"model must be a non-empty string, got {model!r}")
    if not isinstance(usage, Usage):
        usage = Usage(**usage)
    return price_usage(provider.strip().lower(), model.strip(), usage, at=at, tier=tier)


def flush(timeout: float | None = None) -> bool:
    """Block until every record produced so far is in every sink (False if ``timeout`` ran out)."""
    return _flush(timeout)


def __getattr__(name: str) -> Any:
    if name == "testing":  # imported on demand: it is for tests and demos only
        import importlib

        return importlib.import_module("tokenmeter.testing")
    raise AttributeError(f"module 'tokenmeter' has no attribute {name!r}")
