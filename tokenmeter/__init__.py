"""tokenmeter: exact, local cost metering for LLM calls.

import tokenmeter
tokenmeter.instrument()          # patch every installed provider SDK, once
with tokenmeter.session("chat", tags={"feature": "support"}) as s:
    ...                          # OpenAI / Anthropic / Gemini calls as usual
print(s.summary.cost_usd)
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

# _fork: fork() waits for imports other threads run (tokenmeter's own come on first use, maybe
# on a thread of the application's at the instant the main thread forks). _logger: whatever an
# application hangs on the "tokenmeter" logger never raises out of our lines.
from tokenmeter import _fork, _logger  # noqa: F401

if TYPE_CHECKING:
    from tokenmeter import sinks, testing
    from tokenmeter._estimate import estimate
    from tokenmeter._models import Cost, SessionInfo, Usage, UsageRecord
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
    from tokenmeter.guardrails import BudgetExceeded
    from tokenmeter.providers import Instrumentation, instrument, uninstrument, wrap

#: Where each public name lives. They are imported on first use, so ``import tokenmeter`` stays
#: cheap (pydantic, wrapt and the sinks load with the first ``instrument()``, record or session):
#: a library that imports tokenmeter but never meters pays nothing for it.
_HOMES = {
    "BudgetExceeded": "tokenmeter.guardrails._errors",
    "Cost": "tokenmeter._models",
    "SessionInfo": "tokenmeter._models",
    "Usage": "tokenmeter._models",
    "UsageRecord": "tokenmeter._models",
    "record": "tokenmeter._record",
    "record_response": "tokenmeter._record",
    "configure": "tokenmeter._runtime",
    "estimate": "tokenmeter._estimate",
    "ModelTotals": "tokenmeter._sessions",
    "Session": "tokenmeter._sessions",
    "SessionSummary": "tokenmeter._sessions",
    "current_session": "tokenmeter._sessions",
    "session": "tokenmeter._sessions",
    "track": "tokenmeter._sessions",
    "Instrumentation": "tokenmeter.providers",
    "instrument": "tokenmeter.providers",
    "uninstrument": "tokenmeter.providers",
    "wrap": "tokenmeter.providers",
}
_SUBMODULES = ("sinks", "testing")

__all__ = [
    "BudgetExceeded",
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
    "estimate",
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

    from tokenmeter._models import MAX_NAME, Usage, as_int, clean_text, first_error
    from tokenmeter._record import caller_tier, in_utc, utc_offset
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
            counts = {
                name: {key: as_int(n) for key, n in value.items()}
                if isinstance(value, Mapping)
                else as_int(value)
                for name, value in usage.items()
            }
            usage = Usage.model_validate(counts)
        except ValidationError as exc:  # "usage.input_tokens: ...", or "usage: <the rule>"
            joint = "." if exc.errors()[0]["loc"] else ": "
            raise ValueError("usage" + joint + first_error(exc)) from None
    if at is not None:
        if not isinstance(at, datetime):
            raise ValueError(f"at must be a datetime, got {short_repr(at)}")
        # As record(timestamp=) reads it, but naive is UTC here; a failing tzinfo is named.
        at = at.replace(tzinfo=UTC) if utc_offset(at, "at") is None else in_utc(at, "at")
    tier = caller_tier(tier)
    from tokenmeter import _runtime

    if _runtime._settings is None:  # the overrides of TOKENMETER_PRICES or pyproject.toml, as
        _runtime.settings()  # a record's price has them (once per process)
    # Names cut and cleaned as a record's are: a megabyte-long name would otherwise be kept in
    # the price cache and logged whole.
    return price_usage(
        clean_text(provider.strip().lower(), MAX_NAME),
        clean_text(model.strip(), MAX_NAME),
        usage,
        at=at,
        tier=tier,
    )


def flush(timeout: float | None = None) -> bool:
    """Block until every record produced so far is in every sink (False if ``timeout`` ran out,
    or a sink keeps failing: its records stay queued and are retried; False too when a record
    it waited for was set aside in quarantine.jsonl instead of written, or when records were
    dropped since the last flush because a sink's buffer was full).

    ``timeout`` is in seconds; None or ``math.inf`` waits without limit. A negative, NaN or
    non-number timeout raises a one-line ValueError: it would otherwise return False at once,
    as if the sinks were slow, or fail deep inside with a TypeError.
    """
    from tokenmeter import _pipeline, _sessions

    if timeout is not None:
        # "not >= 0" is also true of NaN (and works for an int too long for a float)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout >= 0:
            from tokenmeter.pricing._overrides import short_repr

            raise ValueError(
                "timeout must be None or a number of seconds, at least 0, "
                f"got {short_repr(timeout)}"
            )
        # A wait past TIMEOUT_MAX (inf, 1e300) raises OverflowError: that long is no limit. (Half
        # of it, so that the deadline arithmetic in _pipeline cannot round past it either.)
        timeout = None if timeout > threading.TIMEOUT_MAX / 2 else float(timeout)
    _sessions.store_forked_parts()  # what a forked child's os._exit() would never store
    return _pipeline.flush(timeout)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is not None:
        value = getattr(importlib.import_module(home), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"tokenmeter.{name}")
    else:
        raise AttributeError(f"module 'tokenmeter' has no attribute {name!r}")
    if name != "testing":  # testing stays on demand: it is for tests and demos only
        globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


#: ``_autorun.ENV_ID``, spelled out so that ``import tokenmeter`` stays cheap outside a run.
_RUN_ID_VARIABLE = "TOKENMETER_RUN_ID"
if os.environ.get(_RUN_ID_VARIABLE):
    # Under ``tokenmeter run``, a program that imports tokenmeter to record by hand, and never
    # imports a provider SDK (whose import starts metering otherwise), is part of the run too.
    importlib.import_module("tokenmeter._autorun").start_or_say()
