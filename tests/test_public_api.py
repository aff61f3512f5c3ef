"""The public API: what ``tokenmeter`` exports, and what importing it costs."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from helpers import one_line_value_error

import tokenmeter
from tokenmeter.sinks import InMemorySink

#: SPEC §2, plus the types the API returns.
PUBLIC = {
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
}


def test_all_lists_exactly_the_public_api_and_every_name_resolves() -> None:
    assert set(tokenmeter.__all__) == PUBLIC
    assert tokenmeter.__all__ == sorted(tokenmeter.__all__)
    for name in tokenmeter.__all__:
        assert getattr(tokenmeter, name) is not None, name
    assert set(dir(tokenmeter)) >= PUBLIC


def test_an_unknown_name_is_an_attribute_error() -> None:
    try:
        tokenmeter.no_such_thing  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_star_import_gives_the_public_api() -> None:
    namespace: dict[str, object] = {}
    exec("from tokenmeter import *", namespace)
    assert set(namespace) >= PUBLIC


def test_importing_tokenmeter_loads_nothing_heavy() -> None:
    """A library may import tokenmeter and never meter: it must not pay for pydantic, wrapt, the
    price tables, SQLite or any provider SDK until something is recorded or instrumented."""
    heavy = ["pydantic", "wrapt", "genai_prices", "sqlite3", "openai", "anthropic", "google.genai"]
    code = (
        "import json, sys, tokenmeter; "
        f"print(json.dumps([m for m in {heavy!r} if m in sys.modules]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(done.stdout) == []


@pytest.mark.parametrize("timeout", [math.inf, 1e300, 10**400], ids=["inf", "1e300", "10**400"])
def test_flush_with_an_endless_timeout_waits_without_limit(
    timeout: float, sink: InMemorySink
) -> None:
    """``math.inf`` or any wait too long for the clock means no limit (it was OverflowError)."""
    tokenmeter.record("openai", "gpt-4o", 1, 1)
    assert tokenmeter.flush(timeout) is True
    assert len(sink.records) == 1


@pytest.mark.parametrize("timeout", [math.nan, -1, -0.5, -math.inf, True, "x", "5"])
def test_flush_with_a_bad_timeout_is_a_one_line_value_error_naming_it(
    timeout: object, sink: InMemorySink
) -> None:
    """NaN and negative timeouts returned False at once, as if the sinks were stuck; a string
    was a TypeError from deep inside."""
    tokenmeter.record("openai", "gpt-4o", 1, 1)
    with pytest.raises(ValueError, match=r"^timeout must be None or a number of seconds") as exc:
        tokenmeter.flush(timeout)  # type: ignore[arg-type]
    one_line_value_error(exc)
    assert tokenmeter.flush(5)  # nothing was lost
    assert len(sink.records) == 1
