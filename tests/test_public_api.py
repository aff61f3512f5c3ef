"""The public API: what ``tokenmeter`` exports, and what importing it costs."""

from __future__ import annotations

import json
import subprocess
import sys

import tokenmeter

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
