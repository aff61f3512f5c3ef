"""The public API: what ``tokenmeter`` exports, and what importing it costs."""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys
from decimal import Decimal
from typing import Any

import pytest
from helpers import one_line_value_error, run_python

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


def test_the_guardrails_namespace_exports_what_the_docs_name() -> None:
    """budgets-and-alerts.md: on_alert callbacks get a ``tokenmeter.guardrails`` ``Alert``,
    which could not be imported from there (only ``BudgetExceeded`` was); it loads on demand, so
    ``import tokenmeter`` stays light (``test_importing_tokenmeter_loads_nothing_heavy``)."""
    from tokenmeter import guardrails
    from tokenmeter.guardrails import Alert, BudgetExceeded
    from tokenmeter.guardrails._alerts import Alert as Defined

    assert Alert is Defined and BudgetExceeded is tokenmeter.BudgetExceeded
    assert guardrails.__all__ == ["Alert", "BudgetExceeded"]
    with pytest.raises(AttributeError, match="no_such_thing"):
        guardrails.no_such_thing  # type: ignore[attr-defined]  # noqa: B018


def test_every_public_name_has_a_docstring_and_is_in_the_docs() -> None:
    """A newcomer finds each exported name in README.md or docs/ (in a code span or a snippet),
    and ``help()`` says what it is for: uninstrument(), the Instrumentation handle that
    instrument() returns, SessionSummary and ModelTotals were named nowhere in the docs."""
    import inspect
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    pages = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    text = "\n".join(page.read_text(encoding="utf-8") for page in pages)
    spans = " ".join(re.findall(r"`[^`\n]+`", text) + re.findall(r"```.*?```", text, re.S))
    for name in tokenmeter.__all__:
        assert re.search(rf"\b{name}\b", spans), f"{name} is in no code span of the docs"
        assert len(inspect.getdoc(getattr(tokenmeter, name)) or "") > 20, name


def test_help_of_session_names_each_of_its_arguments() -> None:
    """``help(tokenmeter.session)`` said nothing of ``id``, ``tags`` or ``notes``, and no page
    said how to enter a session again under one ``id`` (SPEC §2 lists it)."""
    import inspect

    doc = inspect.getdoc(tokenmeter.session) or ""
    for name in inspect.signature(tokenmeter.session).parameters:
        assert f"``{name}``" in doc, name


def test_help_of_record_response_says_what_a_response_without_usage_raises() -> None:
    """SPEC §2: a shape record_response() cannot read raises ValueError; neither its one-line
    docstring nor docs/records.md said so, so a user reading a batch results file could not
    tell what to catch for a line without usage."""
    assert "``ValueError``" in (tokenmeter.record_response.__doc__ or "")
    with pytest.raises(ValueError, match="cannot read usage"):
        tokenmeter.record_response({"id": "chatcmpl-1", "choices": []})


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


@pytest.mark.parametrize(
    "first_use",
    [
        'tokenmeter.record("openai", "gpt-4o", 10, 5)',
        'tokenmeter.price("google", "gemini-2.5-flash", tokenmeter.Usage(input_tokens=1))',
        'tokenmeter.configure(budgets=[{"limit_usd": 1, "model": "models/gemini-2.5-flash"}])',
        'tokenmeter.session("s").__enter__()',
        "tokenmeter.flush()",
    ],
)
def test_each_entry_point_works_as_the_first_thing_a_program_uses(
    first_use: str, tmp_path: pathlib.Path
) -> None:
    """Modules load on first use: an import cycle among them (the budgets reading a provider's
    fact) made ``record()`` as a program's first use an ImportError, which tests that had
    instrumented first never saw."""
    env = {**os.environ, "TOKENMETER_DIR": str(tmp_path)}
    run_python("-c", f"import tokenmeter; {first_use}", env=env, cwd=tmp_path)


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


class _Unshowable:
    """A value whose ``repr`` and ``str`` raise, as a broken user object's may."""

    def __repr__(self) -> str:
        raise RuntimeError("repr")

    __str__ = __repr__


_MEGABYTE = "x" * 1_000_000
_USAGE = {"prompt_tokens": 1, "completion_tokens": 1}


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda v: tokenmeter.record(v, "gpt-4o", 1, 1), "provider"),
        (lambda v: tokenmeter.record("openai", v, 1, 1), "model"),
        (lambda v: tokenmeter.record("openai", "gpt-4o", 1, 1, operation=v), "operation"),
        (lambda v: tokenmeter.record("openai", "gpt-4o", 1, 1, estimated=v), "estimated"),
        (lambda v: tokenmeter.record("openai", "gpt-4o", 1, 1, timestamp=v), "timestamp"),
        (lambda v: tokenmeter.record("openai", "gpt-4o", 1, 1, tags={"k": v}), "tags"),
        (lambda v: tokenmeter.record_response({"usage": _USAGE}, provider=v), "provider"),
        (lambda v: tokenmeter.record_response({"model": v, "usage": _USAGE}), "model"),
        (lambda v: tokenmeter.session(v), "name"),
        (lambda v: tokenmeter.session(id=v), "id"),
        (lambda v: tokenmeter.session(notes=v), "notes"),
        (lambda v: tokenmeter.session(budget_usd=v), "budget_usd"),
        (lambda v: tokenmeter.session(on_exceed=v), "on_exceed"),
        (lambda v: tokenmeter.session(on_end=v), "on_end"),
        (lambda v: tokenmeter.track(v, tags={"k": "v"}), "name"),
        (lambda v: tokenmeter.estimate(v, text="hi"), "model"),
        (lambda v: tokenmeter.estimate("gpt-4o", text="hi", provider=v), "provider"),
        (lambda v: tokenmeter.instrument(v), "provider"),
        (lambda v: tokenmeter.uninstrument(v), "provider"),
    ],
)
@pytest.mark.parametrize("value", [_MEGABYTE, _Unshowable()], ids=["1 MB text", "unshowable"])
def test_a_bad_value_is_named_in_a_short_line_whatever_it_is(
    call: Any, name: str, value: object, sink: InMemorySink
) -> None:
    """The message quotes the value cut short: a megabyte of text was quoted whole (a 1 MB
    message, in every log line that shows it), and a value whose repr raises turned the
    ValueError into the RuntimeError of that repr. (Where a megabyte of text is a valid value,
    the call succeeds, the text cut as the record's names are.)"""
    try:
        call(value)
    except ValueError as exc:
        message = str(exc)
        assert type(exc) is ValueError
        assert name in message
        assert "\n" not in message
        assert len(message) < 1_000
    else:
        assert value is _MEGABYTE


_COUNTS = {"input_tokens": 10, "output_tokens": 10}


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda k: tokenmeter.record("openai", "gpt-4o", 10, 10, modalities={k: 1}), "modalities"),
        (lambda k: tokenmeter.record("openai", "gpt-4o", 1, 1, tool_requests={k: 1}), "tool"),
        (lambda k: tokenmeter.price("openai", "gpt-4o", {**_COUNTS, "modalities": {k: 1}}), "mod"),
        (lambda k: tokenmeter.price("openai", "gpt-4o", {**_COUNTS, k: 1}), "usage"),
    ],
    ids=["record modalities", "record tool_requests", "price modalities", "price"],
)
def test_a_bad_key_is_named_in_a_short_line(call: Any, name: str, sink: InMemorySink) -> None:
    """A key no count may have was quoted whole: a megabyte-long key gave a 1 MB ValueError
    (record(modalities=...), tool_requests, and the mapping price() takes)."""
    with pytest.raises(ValueError) as exc:
        call("x" * 1_000_000)
    message = one_line_value_error(exc)
    assert name in message and len(message) < 1_000
    assert tokenmeter.flush(5) and sink.records == []


class _Treacherous(str):
    """Text whose own ``__str__``, ``__hash__``, ``__eq__`` and ``__repr__`` raise: the
    application's code, which tokenmeter has no reason to run (it needs the characters)."""

    def _refuse(self, *args: object) -> Any:
        raise RuntimeError("the application's own method")

    __str__ = __hash__ = __eq__ = __repr__ = _refuse  # type: ignore[assignment]


def test_a_str_subclass_is_taken_for_its_characters(
    sink: InMemorySink, tmp_path: pathlib.Path
) -> None:
    """Its own methods ran inside tokenmeter: ``record_response``, ``session(budget_usd=)``,
    ``estimate()`` and ``configure(directory=)`` raised the RuntimeError they raise."""
    text = _Treacherous
    tokenmeter.record("openai", "gpt-4o", 1, 1, tags={"k": text("v")})
    tokenmeter.record_response({"model": text("gpt-4o"), "usage": _USAGE})
    assert tokenmeter.flush(5)
    stored = [(r.model_name, r.tags) for r in sink.records]
    assert stored == [("gpt-4o", {"k": "v"}), ("gpt-4o", {})]
    assert all(type(r.model_name) is str for r in sink.records)
    with tokenmeter.session("s", budget_usd=text("2.5")) as budgeted:
        assert budgeted.budget_usd == Decimal("2.5")
    expected = tokenmeter.estimate("gpt-4o", text="hello there", provider="openai")
    assert tokenmeter.estimate(text("gpt-4o"), text=text("hello there"), provider=text("openai"))
    assert expected == tokenmeter.estimate(text("gpt-4o"), text=text("hello there"))
    tokenmeter.configure(directory=text(str(tmp_path / "usage")), sinks=["jsonl"])
    tokenmeter.record("openai", "gpt-4o", 1, 1)
    assert tokenmeter.flush(5)
    assert (tmp_path / "usage" / "usage.jsonl").exists()
