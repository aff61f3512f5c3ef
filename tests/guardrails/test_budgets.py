"""Budgets stop a call before it is sent: real SDKs against the loopback FakeProvider.

Each gpt-4o call of the fake costs about $0.0075 (1,000 input, 500 output tokens); the request's own
estimate (4 characters a token of its text) is tiny next to it.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import gc
import json
import logging
import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pydantic
import pytest
from helpers import fan_out, one_line_value_error, png, refuse_threads, returns, wav

import tokenmeter
from tokenmeter import BudgetExceeded
from tokenmeter.guardrails import _budgets
from tokenmeter.guardrails._alerts import Alert
from tokenmeter.guardrails._budgets import parse_budgets, period_start
from tokenmeter.guardrails._ledger import MemoryLedger
from tokenmeter.sinks import InMemorySink
from tokenmeter.testing import FakeProvider

MESSAGES = [{"role": "user", "content": "hi"}]


def chat(fake: FakeProvider, model: str = "gpt-4o") -> Any:
    return fake.openai_client(max_retries=0).chat.completions.create(model=model, messages=MESSAGES)


class LedgerSink(InMemorySink):
    """A sink that brings its own budget ledger (as the PostgreSQL sink does)."""

    def __init__(self) -> None:
        super().__init__()
        self.ledger = MemoryLedger()

    def budget_ledger(self) -> MemoryLedger:
        return self.ledger


def configured(tmp_path: Path, budgets: list[dict[str, Any]], **more: Any) -> InMemorySink:
    memory = InMemorySink()
    tokenmeter.configure(sinks=[memory], directory=tmp_path / "tm", budgets=budgets, **more)
    return memory


def per_call(memory: InMemorySink) -> Decimal:
    """What one of the fake's gpt-4o calls costs (read from its record, not repeated here)."""
    assert tokenmeter.flush(5)
    cost = memory.records[0].estimated_cost_usd
    assert cost is not None
    return cost


def test_calls_recorded_under_a_providers_alias_count_against_its_budget(
    tmp_path: Path, fake: FakeProvider, instrumented: None
) -> None:
    """``record("azure_openai", ...)`` stored the alias as the provider: a budget on azure
    (named by any of its names) never counted it, and the next Azure call was sent."""
    budget = {"name": "az", "limit_usd": 0.01, "period": "total", "provider": "azure-openai"}
    configured(tmp_path, [budget])
    tokenmeter.record("azure_openai", "gpt-4o", 2_000, 1_000)  # $0.015
    client = fake.azure_openai_client(max_retries=0)
    with pytest.raises(BudgetExceeded):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert fake.requests == []


def test_a_budget_refuses_the_call_before_it_is_sent(
    tmp_path: Path, fake: FakeProvider, instrumented: None
) -> None:
    memory = configured(tmp_path, [{"name": "daily", "limit_usd": 0.02, "period": "day"}])
    with tokenmeter.session("job") as job:
        for _ in range(3):  # 0, 0.0075, 0.015 spent: each time spent + estimate <= 0.02
            chat(fake)
        with pytest.raises(BudgetExceeded) as refused:
            chat(fake)
    assert len(fake.requests) == 3  # the fourth never left the process
    error = refused.value
    assert (error.budget, error.scope, error.period) == ("daily", "everything", "day")
    assert error.limit_usd == Decimal("0.02") and error.spent_usd == 3 * per_call(memory)
    assert error.estimate_usd > 0
    assert tokenmeter.flush(5)
    statuses = [r.status for r in memory.records]
    assert statuses == ["ok", "ok", "ok", "blocked"]
    blocked = memory.records[-1]
    assert blocked.error == "BudgetExceeded: daily" and blocked.session_id == job.id
    assert blocked.total_tokens == 0 and blocked.estimated
    assert job.summary.calls == 3  # a refused call is no call of the session


def test_calls_estimated_at_zero_under_a_budget_with_room_do_not_each_ask_the_ledger(
    fake: FakeProvider, instrumented: None
) -> None:
    """A model without a price never gets a slice (its calls cost nothing here): once $0 calls
    went to the ledger whenever a slice had no room, each took a ledger transaction under a
    budget far from spent (50 for 50 calls; a lock held by another process made each wait)."""
    asked: list[str] = []

    class Counting(MemoryLedger):
        def lease_many(self, items: Any) -> Any:
            asked.append("lease_many")
            return super().lease_many(items)

        def reserve_many(self, *args: Any) -> Any:
            asked.append("reserve_many")
            return super().reserve_many(*args)

    class LedgerSink(InMemorySink):
        def budget_ledger(self) -> MemoryLedger:
            return Counting()

    tokenmeter.configure(sinks=[LedgerSink()], budgets=[{"limit_usd": 100, "period": "day"}])
    client = fake.openai_client()
    for _ in range(50):
        client.chat.completions.create(model="my-local-llama", messages=MESSAGES)
    assert len(fake.requests) == 50
    assert len(asked) <= 2, asked


def test_a_call_refused_by_a_spent_budget_asks_the_ledger_once(
    fake: FakeProvider, instrumented: None
) -> None:
    """Once a budget is spent, every call is refused: a refusal checks the call again after a
    lowering only when some ceiling was lowered (by it or by another thread) since its check;
    with nothing to lower, each refused call took a second ledger transaction (with budgets.db
    shared by processes, a second write lock each)."""
    asked: list[str] = []

    class Counting(MemoryLedger):
        def lease_many(self, items: Any) -> Any:
            asked.append("lease_many")
            return super().lease_many(items)

    class LedgerSink(InMemorySink):
        def budget_ledger(self) -> MemoryLedger:
            return Counting()

    tokenmeter.configure(sinks=[LedgerSink()], budgets=[{"limit_usd": 0.01, "period": "day"}])
    tokenmeter.record("openai", "gpt-4o", 10_000, 0)  # $0.025: spent
    client = fake.openai_client(max_retries=0)
    asked.clear()
    for _ in range(5):
        with pytest.raises(BudgetExceeded):
            client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert fake.requests == []
    assert asked == ["lease_many"] * 5


def budget_for(
    tmp_path: Path, messages: list[dict[str, str]], fit: int, ledger: str
) -> tuple[Decimal, InMemorySink]:
    """A total budget with room for ``fit`` gpt-4o calls of ``messages`` and half of one (each
    billed its input estimate, $2.50 per million), in ``ledger``: one call's cost, the sink."""
    tokens = tokenmeter.estimate("gpt-4o", messages=messages).input_tokens
    each = Decimal(tokens) * Decimal("2.5") / 1_000_000
    budget = {"name": "batch", "limit_usd": fit * each + each / 2, "period": "total"}
    return each, configured(tmp_path, [budget], budget_ledger=ledger)


#: A short ticket, and a message mostly of blanks: far from the limit, a call of either
#: reserves a ceiling on its estimate found without tokenizing, 3 and 32 times the estimate.
FAN_OUT_PROMPTS = {"ticket": "Summarise this ticket.", "blanks": "a" + " " * 400 + "b"}


@pytest.mark.parametrize("ledger", ["sqlite", "memory"])
@pytest.mark.parametrize(
    ("prompt", "fit", "calls", "threads"),
    [("ticket", 50, 60, False), ("ticket", 50, 60, True), ("blanks", 500, 520, False)],
    ids=["asyncio", "threads", "asyncio-blanks"],
)
def test_a_fan_out_makes_every_call_that_fits(
    tmp_path: Path,
    instrumented: None,
    ledger: str,
    prompt: str,
    fit: int,
    calls: int,
    threads: bool,
) -> None:
    """Calls made at once under a budget with room for ``fit`` of them, each billed its
    estimate. The calls admitted far from the limit held a ceiling on their estimate until
    their record, and near the limit those ceilings filled the room: 42 of 50 fitting calls
    were made (asyncio.gather; 44 with threads), 343 of 500 with blanks, and the budget was
    left that much unspent. Before a call is refused, the ceilings of the calls in flight come
    down to their estimates: every call that fits is made, and the others are refused (the
    bound: nothing past the limit)."""
    messages = [{"role": "user", "content": FAN_OUT_PROMPTS[prompt]}]
    each, memory = budget_for(tmp_path, messages, fit, ledger)
    sent, refused = fan_out(messages, calls, threads=threads)
    assert (sent, len(refused)) == (fit, calls - fit)
    assert tokenmeter.flush(5)
    made = [r for r in memory.records if r.status == "ok"]
    assert sum(r.estimated_cost_usd or 0 for r in made) == fit * each


@pytest.mark.parametrize("ledger", ["sqlite", "memory"])
def test_a_threaded_fan_out_makes_every_call_that_fits_while_others_lower(
    tmp_path: Path, instrumented: None, monkeypatch: pytest.MonkeyPatch, ledger: str
) -> None:
    """The fan-out above, on threads, with a thread switch made likely in a lowering (between
    working out a call's estimate and lowering its ceiling): 47 to 49 of 50 fitting calls were
    made, now and then, under load. A refused call's lowering left out a ceiling whose estimate
    another thread had worked out but not yet lowered, or found one lowered by the time it got
    to it; either way it said it had lowered nothing, and the call was refused without being
    checked again, though the other thread had made its room."""
    from tokenmeter.guardrails import _leases

    lower = _leases.lower

    def slowly(*args: Any) -> Any:
        time.sleep(0.002)
        return lower(*args)

    monkeypatch.setattr(_leases, "lower", slowly)
    messages = [{"role": "user", "content": FAN_OUT_PROMPTS["ticket"]}]
    fit, calls = 50, 60
    budget_for(tmp_path, messages, fit, ledger)
    sent, refused = fan_out(messages, calls, threads=True)
    assert (sent, len(refused)) == (fit, calls - fit)


@pytest.mark.parametrize("ledger", ["sqlite", "memory"])
def test_a_refusal_works_out_only_the_estimates_it_needs(
    tmp_path: Path, instrumented: None, ledger: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before a call is refused, the ceilings of the calls in flight come down to their
    estimates, each worked out on the checking thread (in asyncio: the event loop every task
    shares). Every call in flight was worked out, however little room the call lacked: one
    check tokenized 99 prompts of 100 KB (226 ms). The largest ceilings come down first, and
    only until the call fits: a few estimates per check, and every call that fits is made."""
    prose = " ".join(["the quick brown fox jumps over a lazy dog"] * 100)  # a ceiling of 4.5x
    messages = [{"role": "user", "content": prose}]
    fit, calls = 110, 120
    budget_for(tmp_path, messages, fit, ledger)
    worked_out = [0]
    most = [0]
    estimate, check = _budgets.estimate_input_usd, _budgets._check

    def counted_estimate(*args: Any) -> Decimal:
        worked_out[0] += 1
        return estimate(*args)

    def counted_check(*args: Any) -> None:
        worked_out[0] = 0
        try:
            check(*args)
        finally:
            most[0] = max(most[0], worked_out[0])

    monkeypatch.setattr(_budgets, "estimate_input_usd", counted_estimate)
    monkeypatch.setattr(_budgets, "_check", counted_check)
    sent, refused = fan_out(messages, calls)
    assert (sent, len(refused)) == (fit, calls - fit)
    assert most[0] <= 4


@pytest.mark.parametrize("ledger", ["sqlite", "memory"])
def test_a_fan_out_across_two_budgets_makes_every_call_that_fits(
    tmp_path: Path, instrumented: None, ledger: str
) -> None:
    """Two budgets short at once: "acme" (tag customer=acme) and "gpt4o" (model gpt-4o), with
    room for every call of the fan-out at its estimate plus half a gpt-4o call. Only the
    ceilings of the first budget to refuse a call came down before it was checked again; the
    second then refused it, its own ceilings (the untagged gpt-4o calls') untouched: 1 of 340
    fitting calls refused, saying "$0.0029275 spent of $0.00294125". Each budget that refuses
    the call now has its ceilings lowered in turn."""
    messages = [{"role": "user", "content": FAN_OUT_PROMPTS["ticket"]}]
    tokens = tokenmeter.estimate("gpt-4o", messages=messages).input_tokens
    large = Decimal(tokens) * Decimal("2.5") / 1_000_000  # gpt-4o input
    small = Decimal(tokens) * Decimal("0.15") / 1_000_000  # gpt-4o-mini input
    minis, untagged, both = 250, 60, 30
    acme = {"customer": "acme"}
    configured(
        tmp_path,
        [
            {
                "name": "acme",
                "tag": "customer=acme",
                "limit_usd": minis * small + both * large + large / 2,
                "period": "total",
            },
            {
                "name": "gpt4o",
                "model": "gpt-4o",
                "limit_usd": (untagged + both) * large + large / 2,
                "period": "total",
            },
        ],
        budget_ledger=ledger,
    )
    calls = minis + untagged + both
    plan = [(minis, "gpt-4o-mini", acme), (untagged, "gpt-4o", {}), (both, "gpt-4o", acme)]
    sent, refused = fan_out(messages, calls, plan=plan)
    assert (sent, [str(exc) for exc in refused]) == (calls, [])


@pytest.mark.parametrize("ledger", ["sqlite", "memory"])
def test_a_spent_budget_refuses_every_call_estimated_at_zero(
    tmp_path: Path, fake: FakeProvider, instrumented: None, ledger: str
) -> None:
    """An Azure deployment's name has no price (its answers name the priced model): its calls
    are estimated at $0, and once the budget was spent each was admitted from a lease with no
    slice left, never asking the ledger: all 10 were sent, $0.075 against a $0.02 budget."""
    fake.set_model("prod-deployment", "gpt-4o-2024-08-06")
    memory = configured(
        tmp_path, [{"name": "daily", "limit_usd": 0.02, "period": "day"}], budget_ledger=ledger
    )
    client = fake.azure_openai_client(max_retries=0)

    def deployment() -> Any:
        return client.chat.completions.create(model="prod-deployment", messages=MESSAGES)

    for _ in range(3):  # 0, 0.0075, 0.015 spent
        deployment()
    for _ in range(3):  # each refused, the one after a refusal's give-back too
        with pytest.raises(BudgetExceeded) as refused:
            deployment()
        assert refused.value.spent_usd == 3 * per_call(memory)
        assert refused.value.estimate_usd == 0
    assert len(fake.requests) == 3


@pytest.mark.parametrize("ledger", ["sqlite", "memory"])
@pytest.mark.parametrize("case", ["zero", "exact", "session"])
def test_a_budget_spent_exactly_to_its_limit_refuses_calls_estimated_at_zero(
    tmp_path: Path, fake: FakeProvider, instrumented: None, ledger: str, case: str
) -> None:
    """A $0 budget (a kill switch), or one (or a session's) spent to the decimal: a call of a
    model without a price is estimated at $0, which fits a room of $0, so 5 of 5 were sent.
    Spent is spent at the limit too."""
    fake.set_model("prod-deployment", "gpt-4o-2024-08-06")
    limit = {"zero": 0, "exact": 0.005, "session": 1}[case]
    configured(tmp_path, [{"name": "b", "limit_usd": limit, "period": "day"}], budget_ledger=ledger)
    client = fake.azure_openai_client(max_retries=0)
    kept = {"budget_usd": 0.005, "on_exceed": "raise"} if case == "session" else {}
    with tokenmeter.session("job", **kept):
        if case != "zero":
            for _ in range(2):  # 1,000 input tokens of gpt-4o: $0.0025 each
                tokenmeter.record("openai", "gpt-4o-2024-08-06", 1000, 0)
        for _ in range(3):
            with pytest.raises(BudgetExceeded) as refused:
                client.chat.completions.create(model="prod-deployment", messages=MESSAGES)
            assert refused.value.estimate_usd == 0
    assert fake.requests == []


@pytest.mark.parametrize("ledger", ["sqlite", "memory"])
def test_a_call_answered_with_unreadable_usage_charges_what_was_set_aside_for_it(
    tmp_path: Path, instrumented: None, ledger: str
) -> None:
    """A billed answer whose usage cannot be read (cached > prompt, from a proxy) has no known
    cost: charged $0, every such call went through a spent budget (40 of 40 where 9 fitted).
    It charges what was set aside for it, its input estimate."""
    import openai
    from openai import _base_client

    http = _base_client.httpx2 if hasattr(_base_client, "httpx2") else _base_client.httpx
    usage = {"prompt_tokens": 1000, "completion_tokens": 5, "total_tokens": 1005}
    body = {
        "id": "c1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
        "usage": {**usage, "prompt_tokens_details": {"cached_tokens": 5000}},
    }
    sent: list[object] = []

    def server(request: Any) -> Any:
        sent.append(request)
        return http.Response(200, json=body)

    client = openai.OpenAI(
        api_key="sk-test",
        base_url="http://llm.invalid/v1",
        max_retries=0,
        http_client=http.Client(transport=http.MockTransport(server)),
    )
    configured(
        tmp_path,
        [{"name": "daily", "limit_usd": 0.0001, "period": "day"}],
        budget_ledger=ledger,
    )
    with pytest.raises(BudgetExceeded):
        for _ in range(40):
            client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert 0 < len(sent) < 40


@pytest.mark.requires(openai=">=1.80")  # background responses
def test_a_spent_budget_never_refuses_a_retrieve(
    tmp_path: Path, fake: FakeProvider, instrumented: None
) -> None:
    """``responses.retrieve(id)`` sends nothing billable (estimated at $0): a spent budget
    refused it all the same ("$0.0225 spent of $0.02, this call is estimated at $0"), so the
    output of a background response OpenAI had finished and billed could not be fetched, and its
    cost, which the retrieve that finds it done records, never reached the budget."""
    memory = configured(tmp_path, [{"name": "daily", "limit_usd": 0.02, "period": "day"}])
    client = fake.openai_client(max_retries=0)
    queued = client.responses.create(model="gpt-4o", input="hi", background=True)
    made = [client.responses.create(model="gpt-4o", input="hi") for _ in range(3)]
    with pytest.raises(BudgetExceeded):
        client.responses.create(model="gpt-4o", input="hi")
    assert client.responses.retrieve(queued.id).status == "completed"
    for _ in client.responses.retrieve(made[0].id, stream=True):  # a resumed stream: no call
        pass
    with pytest.raises(BudgetExceeded) as refused:
        client.responses.create(model="gpt-4o", input="hi")
    # The background job's cost is in the budget now: the three calls' and its own.
    assert refused.value.spent_usd == 4 * per_call(memory)
    assert [r.request_id for r in memory.records if r.status == "ok"][-1] == queued.id


def test_configure_waits_for_a_locked_ledger_no_longer_than_exit_timeout(
    tmp_path: Path, fake: FakeProvider, instrumented: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """configure() gives the old ledger the process's unused slices: with budgets.db
    write-locked by another program it waited SQLite's busy timeout (30 s), whatever
    exit_timeout (its bound for the old sinks) said."""
    from tokenmeter.guardrails import _leases

    monkeypatch.setattr(_leases, "IDLE_S", 3600.0)  # the slices wait for configure()
    configured(tmp_path, [{"name": "daily", "limit_usd": 100, "period": "day"}], exit_timeout=1)
    for _ in range(3):
        chat(fake)
    other = sqlite3.connect(tmp_path / "tm" / "budgets.db", isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        replace = functools.partial(
            tokenmeter.configure, sinks=[InMemorySink()], directory=tmp_path / "other"
        )
        assert returns(replace, "configure() waits SQLite's busy timeout", 20) == []
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()


def test_leaving_a_session_waits_for_a_locked_ledger_only_briefly(
    tmp_path: Path, fake: FakeProvider, instrumented: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A root session's end gives its unused slices back: with budgets.db write-locked by
    another program, leaving the ``with`` (``async with``: the whole event loop) waited
    SQLite's busy timeout (30 s). It now waits as the idle keeper does, and the slices stay
    reserved for the keeper or the exit to give back."""
    from tokenmeter.guardrails import _leases

    monkeypatch.setattr(_leases, "IDLE_S", 3600.0)  # the slices wait for the session's end
    configured(tmp_path, [{"name": "daily", "limit_usd": 100, "period": "day"}])
    chat(fake)  # makes budgets.db
    ledger = tmp_path / "tm" / "budgets.db"
    other = sqlite3.connect(ledger, isolation_level=None, check_same_thread=False)

    def request() -> None:
        with tokenmeter.session("request"):
            for _ in range(3):
                chat(fake)
            other.execute("BEGIN EXCLUSIVE")

    try:
        assert returns(request, "leaving the session waits SQLite's busy timeout", 20) == []
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()
    with sqlite3.connect(ledger) as conn:
        [(reserved,)] = conn.execute("SELECT reserved_usd FROM budget_ledger").fetchall()
    assert reserved > 0  # not given back: the ledger was locked


def test_a_budget_whose_name_or_scope_holds_a_lone_surrogate_still_refuses(
    tmp_path: Path, fake: FakeProvider, instrumented: None
) -> None:
    """A lone surrogate cannot be stored in SQLite: the ledger "failed" and let every call
    through. Budget texts are cleaned as session names and tags are (so the tag still matches)."""
    budget = {"name": "d\ud800", "limit_usd": 0.02, "session": "job\udcff", "tag": "t=\ud800"}
    memory = configured(tmp_path, [budget])
    with tokenmeter.session("job\udcff", tags={"t": "\ud800"}):
        for _ in range(3):
            chat(fake)
        with pytest.raises(BudgetExceeded) as refused:
            chat(fake)
    assert len(fake.requests) == 3
    assert refused.value.budget == "d\ufffd"
    assert tokenmeter.flush(5) and [r.status for r in memory.records][-1] == "blocked"


def test_a_budget_scoped_to_a_long_session_name_or_tag_still_refuses(
    tmp_path: Path, fake: FakeProvider, instrumented: None
) -> None:
    """A session name is kept as its first 500 characters (a tag value as its first 10,000): a
    budget naming the whole longer name never matched the session, so it never refused."""
    name, value = "job-" * 200, "v" * 20_000
    memory = configured(tmp_path, [{"limit_usd": 0.02, "session": name, "tag": f"t={value}"}])
    with tokenmeter.session(name, tags={"t": value}):
        for _ in range(3):
            chat(fake)
        with pytest.raises(BudgetExceeded):
            chat(fake)
    assert len(fake.requests) == 3
    assert tokenmeter.flush(5) and [r.status for r in memory.records][-1] == "blocked"


def test_budgets_whose_names_or_values_hold_the_keys_separators_keep_rows_of_their_own() -> None:
    """A ledger row's key is name|period|scope: "n|day|tag:a=b" and a budget "n" on tag a =
    "b|day|everything" had the same key and spent from one row (the duplicate-name check
    did not see it). Keys without separators in them are as they were: a ledger's rows stay."""
    from tokenmeter.guardrails._budgets import parse_budgets

    one, other, plain = parse_budgets(
        [
            {"name": "n|day|tag:a=b", "limit_usd": 1, "period": "day"},
            {"name": "n", "limit_usd": 1, "period": "day", "tag": "a=b|day|everything"},
            {"name": "d", "limit_usd": 1, "period": "total", "model": "gpt-4o"},
        ]
    )
    assert one.key != other.key
    assert plain.key == "d|total|model=gpt-4o"
    assert other.scope == "tag:a=b|day|everything"  # as shown: unescaped


@pytest.mark.parametrize("given", ["gemini", "google-genai", " Google "])
def test_a_budget_on_a_providers_alias_is_on_that_provider(given: str) -> None:
    """Records say "google": a budget on "gemini" or "google-genai" (the names instrument()
    takes) was accepted, matched no call and never refused anything."""
    from tokenmeter.guardrails._budgets import parse_budgets

    (budget,) = parse_budgets([{"limit_usd": 1, "provider": given}])
    assert budget.provider == "google"
    assert budget.matches("google", ("gemini-2.5-flash",), None)


def test_the_ledger_is_a_sqlite_file_shared_by_processes(
    tmp_path: Path, fake: FakeProvider, instrumented: None
) -> None:
    memory = configured(tmp_path, [{"name": "d", "limit_usd": 1, "period": "total"}])
    chat(fake)
    import sqlite3

    def rows() -> list[tuple[str, float, float]]:
        with sqlite3.connect(tmp_path / "tm" / "budgets.db") as conn:
            return list(
                conn.execute("SELECT scope_key, settled_usd, reserved_usd FROM budget_ledger")
            )

    # The process holds a slice of the budget: the call's cost is spent from it, and the rest
    # stays reserved for its next calls until it gives the slice back.
    [(key, settled, reserved)] = rows()
    assert key == "d|total|everything" and settled + reserved > float(per_call(memory))
    from tokenmeter.guardrails import _budgets

    _budgets.give_back()
    [(key, settled, reserved)] = rows()
    assert reserved == 0.0 and settled == pytest.approx(float(per_call(memory)))


@pytest.mark.parametrize(
    ("scope", "blocked"),
    [
        ({"provider": "anthropic"}, False),
        ({"provider": "openai"}, True),
        ({"model": "gpt-4o-mini"}, False),
        ({"model": "gpt-4o"}, True),
        ({"session": "other"}, False),
        ({"session": "outer"}, True),  # an enclosing session's name counts
        ({"tag": "customer=globex"}, False),
        ({"tag": "customer=acme"}, True),
        ({"tag": {"customer": "acme"}}, True),
    ],
)
def test_a_budget_applies_to_its_scope_only(
    tmp_path: Path, fake: FakeProvider, instrumented: None, scope: dict[str, Any], blocked: bool
) -> None:
    configured(tmp_path, [{"limit_usd": 0.0, "period": "day", **scope}])
    with tokenmeter.session("outer", tags={"customer": "acme"}), tokenmeter.session("inner"):
        if blocked:
            with pytest.raises(BudgetExceeded):
                chat(fake)
        else:
            chat(fake)
    assert len(fake.requests) == (0 if blocked else 1)


def test_a_record_made_by_hand_counts_in_the_budget_of_its_own_tags(
    tmp_path: Path, fake: FakeProvider, instrumented: None
) -> None:
    """record(tags=...) tags its record (reports file it there) but a tag budget looked at the
    session's tags only: calls recorded by hand for customer acme never counted in acme's
    budget, and one recorded for another customer in an acme session did."""
    configured(tmp_path, [{"limit_usd": 0.02, "period": "total", "tag": "customer=acme"}])
    with tokenmeter.session("batch", tags={"customer": "globex"}):
        for _ in range(2):  # $0.0075 each: acme's
            tokenmeter.record("openai", "gpt-4o", 1000, 500, tags={"customer": "acme"})
    with tokenmeter.session("support", tags={"customer": "acme"}):
        tokenmeter.record("openai", "gpt-4o", 1000, 500, tags={"customer": "globex"})  # not acme's
        chat(fake)  # $0.015 of $0.02 spent: sent, and then $0.0225
        with pytest.raises(BudgetExceeded):
            chat(fake)
    assert len(fake.requests) == 1


def test_a_session_renamed_as_it_goes_is_in_the_budget_of_its_new_name(
    tmp_path: Path, fake: FakeProvider, instrumented: None
) -> None:
    """Which budgets cover a session's calls was worked out at its first call and kept: a session
    renamed after it (job.name = ...) stayed out of its new name's budget for good."""
    configured(tmp_path, [{"limit_usd": 0.005, "period": "total", "session": "nightly"}])
    with tokenmeter.session("starting") as job, tokenmeter.session("step"):
        chat(fake)  # not yet nightly's
        job.name = "nightly"
        chat(fake)  # nothing spent yet: sent, and then $0.0075 of $0.005
        with pytest.raises(BudgetExceeded):
            chat(fake)
    assert len(fake.requests) == 2


def test_a_budget_on_the_model_name_a_response_gives_refuses_calls_too(
    tmp_path: Path, fake: FakeProvider, instrumented: None
) -> None:
    """The records (and reports) name the model as the response does ("gpt-4o-2024-08-06" for a
    request of "gpt-4o"); a budget on that name only warned: the check knew the request's name
    alone, so every call went through, 8 calls on a budget of fewer than 3. The check now
    knows the names responses gave to a request's model."""
    fake.set_model("gpt-4o", "gpt-4o-2024-08-06")
    memory = configured(tmp_path, [{"limit_usd": 0.02, "model": "gpt-4o-2024-08-06"}])
    with pytest.raises(BudgetExceeded):
        for _ in range(8):
            chat(fake)
    assert len(fake.requests) == 3
    assert tokenmeter.flush(5)
    assert [r.status for r in memory.records] == ["ok", "ok", "ok", "blocked"]
    assert memory.records[0].model_name == "gpt-4o-2024-08-06"


def test_the_model_names_responses_gave_are_kept_across_configure(
    tmp_path: Path, fake: FakeProvider, instrumented: None
) -> None:
    """The names responses gave to a request's model were learnt by the configuration in force:
    after a configure() the first "gpt-4o" call passed a spent budget on "gpt-4o-2024-08-06"."""
    fake.set_model("gpt-4o", "gpt-4o-2024-08-06")
    budgets = [{"limit_usd": 0.02, "period": "day", "model": "gpt-4o-2024-08-06"}]
    configured(tmp_path, budgets, budget_ledger="memory")
    for _ in range(3):
        chat(fake)
    configured(tmp_path, budgets, budget_ledger="memory", on_alert=lambda alert: None)
    with pytest.raises(BudgetExceeded):
        chat(fake)
    assert len(fake.requests) == 3


def test_a_per_call_budget_refuses_a_request_whose_input_alone_costs_too_much(
    tmp_path: Path, fake: FakeProvider, instrumented: None
) -> None:
    configured(tmp_path, [{"limit_usd": 0.001, "period": "call"}])
    chat(fake)  # "hi" is far below $0.001, whatever the answer costs
    client = fake.openai_client(max_retries=0)
    with pytest.raises(BudgetExceeded, match="per call"):
        client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "x" * 4000}],  # ~$0.0025
        )
    assert len(fake.requests) == 1


def test_a_per_call_budget_counts_the_images_an_image_edit_uploads(
    tmp_path: Path, fake: FakeProvider, instrumented: None
) -> None:
    """The SDK sends an ``images.edit``'s images as multipart files, outside the JSON body: the
    estimate saw the prompt alone ($0.00005 with 1, 4 or 16 images of 1024 x 1024), so a
    $0.001 per-call budget let 16 input images ($0.12 of image input) through."""
    configured(tmp_path, [{"limit_usd": 0.001, "period": "call"}])
    client = fake.openai_client(max_retries=0)
    with pytest.raises(BudgetExceeded, match="per call") as refused:
        client.images.edit(
            model="gpt-image-1",
            image=[("fox.png", png(1024, 1024), "image/png")] * 2,
            prompt="make it blue",
        )
    assert fake.requests == []
    # Each image as in a chat request (765 tokens), at gpt-image-1's image input rate ($10/M).
    assert refused.value.estimate_usd >= 2 * 765 * Decimal(10) / 1_000_000


def test_a_per_call_budget_counts_the_audio_a_transcription_uploads(
    tmp_path: Path, fake: FakeProvider, instrumented: None
) -> None:
    """A transcription's audio is a multipart file: the estimate saw 7 text tokens
    ($0.0000175), so a $0.001 per-call budget let any clip through. 30 s of WAV are 300 audio
    tokens at gpt-4o-transcribe's $6/M: $0.0018, refused before sending. An open file's header
    is read for it, its position put back."""
    configured(tmp_path, [{"limit_usd": 0.001, "period": "call"}])
    path = tmp_path / "talk.wav"
    path.write_bytes(wav(30))
    client = fake.openai_client(max_retries=0)
    with path.open("rb") as clip, pytest.raises(BudgetExceeded, match="per call") as refused:
        clip.seek(10)
        try:
            client.audio.transcriptions.create(model="gpt-4o-transcribe", file=clip)
        finally:
            assert clip.tell() == 10
    assert fake.requests == []
    assert refused.value.estimate_usd >= Decimal("0.0018")


#: A structured-output schema of some 20,000 tokens (long descriptions, as real ones carry).
_BIG_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "description": "word " * 20_000}},
    "required": ["answer"],
    "additionalProperties": False,
}


class _Big(pydantic.BaseModel):
    """A model whose JSON schema is ~20,000 tokens: google-genai takes ``list[_Big]`` for arrays."""

    answer: str = pydantic.Field(description="word " * 20_000)


@pytest.mark.parametrize(
    "send",
    [
        pytest.param(
            lambda fake: fake.openai_client(max_retries=0).chat.completions.create(
                model="gpt-4o",
                messages=MESSAGES,
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "x", "strict": True, "schema": _BIG_SCHEMA},
                },
            ),
            id="openai-chat-response_format",
        ),
        pytest.param(
            lambda fake: fake.openai_client(max_retries=0).responses.create(
                model="gpt-4o",
                input="hi",
                text={"format": {"type": "json_schema", "name": "x", "schema": _BIG_SCHEMA}},
            ),
            id="openai-responses-text.format",
        ),
        pytest.param(
            lambda fake: fake.anthropic_client(max_retries=0).messages.create(
                model="claude-sonnet-4-5",
                max_tokens=10,
                messages=MESSAGES,
                output_config={"format": {"type": "json_schema", "schema": _BIG_SCHEMA}},
            ),
            id="anthropic-output_config",
        ),
        pytest.param(
            lambda fake: fake.genai_client().models.generate_content(
                model="gemini-2.5-flash",
                contents="hi",
                config={
                    "response_mime_type": "application/json",
                    "response_json_schema": _BIG_SCHEMA,
                },
            ),
            id="genai-response_json_schema",
        ),
        pytest.param(
            lambda fake: fake.genai_client().models.generate_content(
                model="gemini-2.5-flash",
                contents="hi",
                config={"response_mime_type": "application/json", "response_schema": _BIG_SCHEMA},
            ),
            id="genai-response_schema",
        ),
        pytest.param(
            lambda fake: fake.genai_client().models.generate_content(
                model="gemini-2.5-flash",
                contents="hi",
                config={"response_mime_type": "application/json", "response_schema": list[_Big]},
            ),
            id="genai-response_schema-list-of-a-model",
        ),
        pytest.param(
            lambda fake: fake.genai_client().models.generate_content(
                model="gemini-2.5-flash",
                contents="hi",
                config={"response_mime_type": "application/json", "response_schema": _Big | None},
            ),
            id="genai-response_schema-optional-model",
        ),
    ],
)
def test_a_per_call_budget_counts_a_structured_output_schema(
    tmp_path: Path, fake: FakeProvider, send: Any
) -> None:
    """The providers bill a structured-output schema as input (put in the prompt), but the
    estimate left it out: a $0.003 per-call budget reserved the 1-token "hi" and sent 5 of 5
    requests whose 20,000-token schema costs $0.006 (gemini-2.5-flash) to $0.06
    (claude-sonnet-4-5). It is counted now as tools' parameters are."""
    configured(tmp_path, [{"limit_usd": 0.003, "period": "call"}], budget_ledger="memory")
    tokenmeter.instrument(["openai", "anthropic", "google-genai"])
    try:
        with pytest.raises(BudgetExceeded, match="per call") as refused:
            send(fake)
    finally:
        tokenmeter.uninstrument()
    assert fake.requests == []
    assert refused.value.estimate_usd > Decimal("0.003")


def test_a_warn_budget_lets_calls_through_and_warns(
    tmp_path: Path, fake: FakeProvider, instrumented: None
) -> None:
    seen: list[Alert] = []
    configured(
        tmp_path, [{"name": "soft", "limit_usd": 0.01, "on_exceed": "warn"}], on_alert=seen.append
    )
    for _ in range(3):
        chat(fake)
    assert tokenmeter.flush(5)
    assert len(fake.requests) == 3
    assert [a.rule for a in seen] == ["budget_50pct", "budget_80pct", "budget_100pct"]


def test_a_session_budget_with_raise(fake: FakeProvider, instrumented: None, sink: Any) -> None:
    with tokenmeter.session("capped", budget_usd=0.01, on_exceed="raise") as capped:
        chat(fake)
        chat(fake)  # 0.0075 + a tiny estimate fits under 0.01
        with pytest.raises(BudgetExceeded) as refused:
            chat(fake)
    assert refused.value.scope == "session=capped"
    assert capped.summary.calls == 2 and len(fake.requests) == 2
    with tokenmeter.session("free", budget_usd=0.001) as free:  # "warn" is the default
        chat(fake)
        chat(fake)
    assert free.over_budget and len(fake.requests) == 4


def test_a_refusal_escapes_the_control_characters_of_a_session_name(
    tmp_path: Path, fake: FakeProvider, instrumented: None
) -> None:
    """A session named from outside input ("job\\nERROR forged line\\x1b[2J") put a raw newline
    and terminal escape in ``str(BudgetExceeded)`` (its scope part; the budget name part was
    escaped) and in the blocked record's error: an application logging the refusal wrote a
    forged line. Both are escaped now; ``exc.scope`` keeps the name as it is."""
    memory = configured(tmp_path, [])
    name = "job\nERROR forged line\x1b[2J"
    with (
        tokenmeter.session(name, budget_usd=0, on_exceed="raise"),
        pytest.raises(BudgetExceeded) as refused,
    ):
        chat(fake)
    message = str(refused.value)
    assert "job\\nERROR forged line\\x1b[2J" in message
    assert refused.value.scope == f"session={name}"
    assert tokenmeter.flush(5)
    (blocked,) = memory.records
    assert blocked.status == "blocked" and blocked.error is not None
    for text in (message, blocked.error):
        assert text.isprintable(), text
    assert fake.requests == []


def test_calls_a_session_budget_refused_are_no_calls_of_the_averages_per_call(
    tmp_path: Path, fake: FakeProvider, instrumented: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two calls of 1,500 tokens made, two refused: the journal's session page and `tokenmeter
    session` said "Averages per Call: Total Tokens 750.0" (3,000 over 4 calls, two never sent)
    beside a cost per call of the two made, where ``job.summary`` says 1,500. The refused calls
    are their own line beside "Total Calls"."""
    from tokenmeter.cli import main
    from tokenmeter.sinks import MarkdownJournalSink, SQLiteSink

    journal = tmp_path / "journal"
    sinks = [SQLiteSink(tmp_path / "usage.db"), MarkdownJournalSink(journal)]
    tokenmeter.configure(directory=tmp_path / "tm", sinks=sinks)
    with tokenmeter.session("job", id="J", budget_usd=0.01, on_exceed="raise") as job:
        chat(fake)
        chat(fake)
        for _ in range(2):
            with pytest.raises(BudgetExceeded):
                chat(fake)
    assert tokenmeter.flush(5)
    assert len(fake.requests) == 2 and job.summary.avg_tokens_per_call == 1500.0
    assert main(["session", "J", "--source", str(tmp_path / "usage.db")]) == 0
    shown = capsys.readouterr().out
    page = (journal / "sessions" / "J.md").read_text(encoding="utf-8")
    for text in (page, shown):
        assert "- **Total Calls:** 4\n- **Blocked by a Budget:** 2\n" in text, text
        averages = text[text.index("### Averages per Call") : text.index("### Cost Breakdown")]
        assert "- **Total Tokens:** 1,500.0\n" in averages, averages
        assert "- **Input Tokens:** 1,000.0\n" in averages, averages
    usage = (journal / "token_usage.md").read_text(encoding="utf-8")
    assert "| **TOTAL** | | **4** | **3,000** | **1,500.0** |" in usage, usage


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
@pytest.mark.parametrize("ended", [False, True], ids=["open", "ended"])
def test_a_child_forked_in_a_session_never_counts_the_parents_calls_in_flight(
    tmp_path: Path, ended: bool
) -> None:
    """A process forked inside a session with a refusing $0.01 budget, while a thread of the
    parent had a call in flight ($0.0085 estimated): the child's copy of the session kept that
    reservation for ever, and refused the child's first call ($0.002, nothing spent) "$0.0085
    spent of $0.01", though that call is the parent's and settles there. Also when the session
    had ended before the fork and the child works on in it (a thread started inside it)."""
    import openai
    from openai import _base_client

    http = _base_client.httpx2 if hasattr(_base_client, "httpx2") else _base_client.httpx
    entered, release = threading.Event(), threading.Event()

    def server(request: Any) -> Any:
        if b"SLOW" in request.content:
            entered.set()
            release.wait(30)  # the parent's call is in flight across the fork
        body = {
            "id": "c1",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-4o",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "ok"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 0, "total_tokens": 10},
        }
        return http.Response(200, json=body)

    tokenmeter.configure(directory=tmp_path / "tm", sinks=[])
    tokenmeter.instrument(["openai"])
    client = openai.OpenAI(
        api_key="sk-test",
        base_url="http://llm.invalid/v1",
        max_retries=0,
        http_client=http.Client(transport=http.MockTransport(server)),
    )
    big = [{"role": "user", "content": "SLOW " + "word " * 3400}]  # about $0.0085
    small = [{"role": "user", "content": "word " * 800}]  # about $0.002
    exits: list[int] = []
    session_ended = threading.Event()

    def fork_and_call() -> None:
        if ended:
            session_ended.wait(30)
        pid = os.fork()
        if pid == 0:  # pragma: no cover (the child)
            signal.alarm(30)  # a hang fails the test instead of holding it
            try:
                client.chat.completions.create(model="gpt-4o", messages=small)
                code = 0
            except BudgetExceeded:
                code = 3
            except BaseException:
                code = 1
            os._exit(code)
        exits.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))

    try:
        with tokenmeter.session("job", budget_usd=0.01, on_exceed="raise"):
            parent_call = threading.Thread(
                target=client.chat.completions.create, kwargs={"model": "gpt-4o", "messages": big}
            )
            parent_call.start()
            assert entered.wait(30)
            forker = threading.Thread(target=fork_and_call)  # carries the session
            forker.start()
            if not ended:
                forker.join(60)  # forked inside the block
        session_ended.set()
        forker.join(60)
    finally:
        release.set()
        parent_call.join(30)
        tokenmeter.uninstrument()
    assert exits == [0]  # admitted (3: refused)


def test_a_parent_page_with_refused_calls_names_its_nested_sessions_calls(
    tmp_path: Path, fake: FakeProvider, instrumented: None
) -> None:
    """A parent whose nested session made a call, which made one itself and had two refused:
    its journal page compared the calls rolled up with its nested session's (2, made) to its
    "Total Calls" (3, refused ones counted), and left out "Including Nested Sessions"."""
    from tokenmeter.sinks import MarkdownJournalSink

    journal = tmp_path / "journal"
    tokenmeter.configure(directory=tmp_path / "tm", sinks=[MarkdownJournalSink(journal)])
    with tokenmeter.session("parent", id="P", budget_usd=0.01, on_exceed="raise"):
        with tokenmeter.session("child", id="C"):
            chat(fake)
        chat(fake)
        for _ in range(2):
            with pytest.raises(BudgetExceeded):
                chat(fake)
    assert tokenmeter.flush(5)
    page = (journal / "sessions" / "P.md").read_text(encoding="utf-8")
    assert "- **Including Nested Sessions:** 2 calls" in page, page


def test_a_parent_session_budget_stops_calls_of_its_children(
    fake: FakeProvider, instrumented: None, sink: Any
) -> None:
    with tokenmeter.session("parent", budget_usd=0.005, on_exceed="raise"):
        with tokenmeter.session("child"):
            chat(fake)
        with tokenmeter.session("child2"), pytest.raises(BudgetExceeded):
            chat(fake)
    assert len(fake.requests) == 1


def test_a_session_budget_refuses_whatever_decimal_context_the_caller_set(
    tmp_path: Path, fake: FakeProvider, instrumented: None
) -> None:
    """The check added the session's spend, its reservations and the estimate in the caller's
    decimal context: an application trapping Inexact (or with a low precision) had that sum
    raise, which let every call through (20 calls of a $0.05 budget made, $0.15 spent), and a low
    precision rounded the reservations."""
    import decimal

    memory = configured(tmp_path, [{"limit_usd": 100, "period": "day"}])
    with decimal.localcontext() as context:
        context.prec = 3
        context.traps[decimal.Inexact] = True
        with tokenmeter.session("capped", budget_usd="0.01", on_exceed="raise") as capped:
            chat(fake)
            chat(fake)  # 0.0075 + a tiny estimate fits under 0.01
            with pytest.raises(BudgetExceeded):
                chat(fake)
        with tokenmeter.session("again", budget_usd="0.01", on_exceed="raise") as again:
            chat(fake)
    assert capped.summary.calls == 2 and again.summary.calls == 1 and len(fake.requests) == 3
    assert capped._reserved == again._reserved == 0  # every reservation given back, exactly
    assert tokenmeter.flush(5) and len(memory.records) == 4


def test_async_and_streamed_calls_are_refused_too(
    tmp_path: Path, fake: FakeProvider, instrumented: None
) -> None:
    memory = configured(tmp_path, [{"limit_usd": 0}])

    async def both() -> None:
        client = fake.openai_client(async_=True, max_retries=0)
        with pytest.raises(BudgetExceeded):
            await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        with pytest.raises(BudgetExceeded):
            await client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)

    asyncio.run(both())
    with pytest.raises(BudgetExceeded):
        fake.openai_client(max_retries=0).chat.completions.create(
            model="gpt-4o", messages=MESSAGES, stream=True
        )
    from tokenmeter.providers import _core

    _core._finish_open_streams()  # what exit does: a refused stream must not record again
    assert tokenmeter.flush(5)
    assert [r.status for r in memory.records] == ["blocked"] * 3
    assert [r.streamed for r in memory.records] == [False, True, True]
    assert fake.requests == []


def test_anthropic_calls_are_checked(
    tmp_path: Path, fake: FakeProvider, instrumented: None
) -> None:
    configured(tmp_path, [{"limit_usd": 0, "provider": "anthropic"}])
    client = fake.anthropic_client(max_retries=0)
    with pytest.raises(BudgetExceeded):
        client.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=MESSAGES)
    chat(fake)
    assert len(fake.requests) == 1


@pytest.mark.parametrize("ledger", ["sqlite", "memory"])
def test_a_budget_met_exactly_by_calls_warns_at_the_call_that_meets_it(
    tmp_path: Path, ledger: str
) -> None:
    """Ten calls of $0.10 are a $1 limit exactly, but their float sum is 0.9999999999999999:
    the 100 % warning came at the eleventh call, not the tenth (about a third of such exact ties
    warned a call late)."""
    seen: list[Alert] = []
    configured(
        tmp_path,
        [{"name": "exact", "limit_usd": 1, "period": "total", "on_exceed": "warn"}],
        on_alert=seen.append,
        budget_ledger=ledger,
    )
    records = [tokenmeter.record("openai", "gpt-4o", 40_000, 0) for _ in range(11)]
    assert {r.estimated_cost_usd for r in records} == {Decimal("0.1")}
    assert tokenmeter.flush(5)
    warned_at = {a.rule: [r.id for r in records].index(a.record_id) + 1 for a in seen}
    assert warned_at == {"budget_50pct": 5, "budget_80pct": 8, "budget_100pct": 10}


def test_a_budget_warning_says_the_spend_without_float_noise(tmp_path: Path) -> None:
    """Five calls of $0.00021 spent 0.0010500000000000002 of a $0.001 budget by the ledger's
    float sum: the alert posted that number to alerts.jsonl, and the markdown and HTML reports
    printed it so (``tokenmeter alerts`` said 0.00105). 0.8 of 0.3 was 0.24000000000000002."""
    seen: list[Alert] = []
    configured(
        tmp_path,
        [
            {"name": "daily", "limit_usd": 0.001, "period": "day", "on_exceed": "warn"},
            {"name": "big", "limit_usd": 0.3, "period": "day", "on_exceed": "warn"},
        ],
        on_alert=seen.append,
    )
    for _ in range(6):
        tokenmeter.record("openai", "gpt-4o-mini", 1000, 100)
    tokenmeter.record("openai", "gpt-4o", 100_000, 0)  # $0.25: past 80 % of $0.30
    assert tokenmeter.flush(5)
    shown = {a.rule + " " + a.scope.split()[0]: (a.observed, a.threshold) for a in seen}
    assert shown["budget_100pct budget:daily"] == (0.00105, 0.001)
    assert shown["budget_80pct budget:big"][1] == 0.24
    lines = (tmp_path / "tm" / "alerts.jsonl").read_text().splitlines()
    written = [(a["observed"], a["threshold"]) for a in map(json.loads, lines)]
    assert (0.00105, 0.001) in written and (0.25126, 0.24) in written
    assert all(len(repr(n)) < 12 for pair in written for n in pair), written


def test_a_session_budget_warning_says_its_threshold_without_float_noise(tmp_path: Path) -> None:
    """The session budget's warnings posted 0.8 of $0.10 as 0.08000000000000002 where a
    configured budget's said 0.08."""
    seen: list[Alert] = []
    configured(tmp_path, [], on_alert=seen.append, budget_warn_at=[0.8])
    with tokenmeter.session("s", budget_usd=0.10):
        tokenmeter.record("openai", "gpt-4o", 35_000, 0)  # $0.0875: past 80 % of $0.10
    assert tokenmeter.flush(5)
    assert [(a.rule, a.threshold) for a in seen] == [("budget_80pct", 0.08)]


def test_a_warning_an_older_version_wrote_with_float_noise_is_not_given_again(
    tmp_path: Path,
) -> None:
    """Versions that posted a budget's threshold with its float noise wrote 0.8 of $0.10 as
    0.08000000000000002 to alerts.jsonl; one that posts 0.08, restarted the same day, did not
    know that warning as given and gave it again (once a period, across restarts)."""
    child = textwrap.dedent(
        """
        import tokenmeter
        from tokenmeter.sinks import InMemorySink
        seen = []
        tokenmeter.configure(sinks=[InMemorySink()], directory="tm", on_alert=seen.append,
            budget_warn_at=[0.8], budget_ledger="memory",
            budgets=[{"name": "d", "limit_usd": "0.10", "period": "day", "on_exceed": "warn"}])
        tokenmeter.record("openai", "gpt-4o", 35_000, 0)
        tokenmeter.flush(10)
        print(len(seen))
        """
    )

    def run() -> int:
        done = subprocess.run(
            [sys.executable, "-c", child],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        return int(done.stdout.split()[-1])

    assert run() == 1
    path = tmp_path / "tm" / "alerts.jsonl"
    (line,) = path.read_text().splitlines()
    written = json.loads(line)
    written["threshold"] = 0.8 * float("0.10")  # as the older versions wrote it
    path.write_text(json.dumps(written) + "\n")

    assert run() == 0  # restarted the same day: given already
    assert len(path.read_text().splitlines()) == 1


def test_a_ledger_takes_calls_that_meet_a_budgets_limit_exactly() -> None:
    """The ledgers compare float sums with the limit: three reservations of $0.0001 must fit a
    $0.0003 budget (their float sum is 0.00030000000000000003), a fourth not."""
    [budget] = parse_budgets([{"limit_usd": "0.0003", "period": "total"}])
    ledger = MemoryLedger()
    taken = [ledger.reserve(budget.key, "", budget.limit, 0.0001)[0] for _ in range(4)]
    assert taken == [True, True, True, False]


def test_manual_records_count_against_budgets_and_warn_ancestors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[Alert] = []
    configured(
        tmp_path, [{"name": "all", "limit_usd": 0.03, "on_exceed": "warn"}], on_alert=seen.append
    )
    with caplog.at_level(logging.WARNING, logger="tokenmeter"):
        with tokenmeter.session("outer", budget_usd=0.01) as outer, tokenmeter.session("inner"):
            tokenmeter.record("openai", "gpt-4o", 1000, 500)  # $0.0075
            tokenmeter.record("openai", "gpt-4o", 1000, 500)
        for _ in range(2):
            tokenmeter.record("openai", "gpt-4o", 1000, 500)
        assert tokenmeter.flush(5)
    assert outer.over_budget
    assert sum("over budget" in r.getMessage() for r in caplog.records) == 1
    rules = sorted((a.scope.split(" ")[0], a.rule) for a in seen)
    assert rules == sorted(
        [
            ("session=outer", "budget_50pct"),
            ("session=outer", "budget_80pct"),
            ("session=outer", "budget_100pct"),
            ("budget:all", "budget_50pct"),
            ("budget:all", "budget_80pct"),
            ("budget:all", "budget_100pct"),
        ]
    )


def test_a_ledger_from_a_sink_is_used(fake: FakeProvider, instrumented: None) -> None:
    memory = LedgerSink()
    tokenmeter.configure(sinks=[memory], budgets=[{"name": "b", "limit_usd": 1}])
    chat(fake)
    from tokenmeter.guardrails import _budgets

    _budgets.give_back()  # the unused slice
    assert memory.ledger.spent("b|day|everything", _today()) == pytest.approx(
        float(per_call(memory))
    )


def _today() -> str:
    return period_start("day", datetime.now(UTC), ZoneInfo("UTC"), None)


def test_a_failing_ledger_lets_calls_through(
    fake: FakeProvider, instrumented: None, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(MemoryLedger):
        def reserve(self, *args: Any) -> tuple[bool, float]:
            raise OSError("disk gone")

        def reserve_many(self, *args: Any) -> list[tuple[bool, float]]:
            raise OSError("disk gone")

        def lease_many(self, *args: Any) -> list[tuple[bool, float, float, float]]:
            raise OSError("disk gone")

    class LedgerSink(InMemorySink):
        def budget_ledger(self) -> MemoryLedger:
            return Broken()

    tokenmeter.configure(sinks=[LedgerSink()], budgets=[{"limit_usd": 0}])
    with caplog.at_level(logging.ERROR, logger="tokenmeter"):
        chat(fake)
        chat(fake)
    assert len(fake.requests) == 2
    assert sum("budget ledger failed" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("many", [True, False], ids=["settle_many", "settle"])
def test_spend_a_failing_ledger_could_not_take_is_settled_once_it_can(
    fake: FakeProvider, instrumented: None, many: bool
) -> None:
    """A budget that only warns holds no lease: the spend of its calls made while the ledger
    failed (its disk full, a lock held by another program) was lost for good, and the warnings
    it should have given never came. It is owed, and settled with the next call."""

    class Flaky(MemoryLedger):
        down = True

        def settle(self, *item: Any) -> float:
            if self.down:
                raise OSError("disk full")
            return super().settle(*item)

        def settle_many(self, items: list[Any]) -> list[float]:
            if self.down:
                raise OSError("disk full")
            return super().settle_many(items)

    ledger = Flaky()
    if not many:
        ledger.settle_many = None  # type: ignore[assignment,method-assign]

    class FlakySink(InMemorySink):
        def budget_ledger(self) -> MemoryLedger:
            return ledger

    seen: list[Alert] = []
    memory = FlakySink()
    budget = {"name": "soft", "limit_usd": 0.01, "on_exceed": "warn"}
    tokenmeter.configure(sinks=[memory], budgets=[budget], on_alert=seen.append)
    chat(fake)
    chat(fake)
    assert seen == [] and ledger.spent("soft|day|everything", _today()) == 0
    ledger.down = False
    chat(fake)
    assert ledger.spent("soft|day|everything", _today()) == pytest.approx(
        3 * float(per_call(memory))
    )
    assert [a.rule for a in seen] == ["budget_50pct", "budget_80pct", "budget_100pct"]


def test_a_reservation_is_released_when_the_call_fails(
    tmp_path: Path, fake: FakeProvider, instrumented: None
) -> None:
    configured(tmp_path, [{"name": "b", "limit_usd": 1, "period": "total"}])
    fake.fail_next(500)
    import openai

    with pytest.raises(openai.InternalServerError):
        chat(fake)
    from tokenmeter.guardrails import _budgets

    assert _budgets._config is not None
    _budgets.give_back()  # the process's unused slice of the budget too
    ledger = _budgets._config.get_ledger()
    assert ledger.spent("b|total|everything", "") == 0.0


def test_a_call_is_reserved_when_the_slice_keeper_cannot_start(
    tmp_path: Path,
    fake: FakeProvider,
    instrumented: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The thread giving back unused slices is started once the ledger has reserved a call: one
    that could not start (RuntimeError "can't start new thread") was taken for a ledger fault,
    "the budget ledger failed (reserve); calls are let through", and the call went on
    unreserved, its estimate left in flight for good. Now the call keeps its reservation."""
    from tokenmeter.guardrails import _leases

    configured(tmp_path, [{"name": "daily", "limit_usd": 100, "period": "day"}])
    monkeypatch.setattr(_leases, "_keeper", None)  # not one an earlier test left running
    refuse_threads(monkeypatch, "tokenmeter-budget-leases")
    with caplog.at_level(logging.WARNING, logger="tokenmeter"):
        chat(fake)
        chat(fake)
    assert not [r for r in caplog.records if "ledger failed" in r.message]
    unstarted = [r.message for r in caplog.records if "budget slices could not" in r.message]
    assert len(unstarted) == 1 and "can't start new thread" in unstarted[0]
    assert [lease.inflight for lease in _leases._leases.values()] == [0.0]


@pytest.mark.parametrize(
    ("period", "now", "zone", "start"),
    [
        ("hour", "2026-12-01T23:30:05+00:00", "UTC", "2026-12-01T23:00:00+00:00"),
        ("day", "2026-12-01T23:30:00+00:00", "Asia/Tokyo", "2026-12-02T00:00:00+09:00"),
        ("day", "2026-12-01T23:30:00+00:00", "UTC", "2026-12-01T00:00:00+00:00"),
        ("week", "2026-12-03T10:00:00+00:00", "UTC", "2026-11-30T00:00:00+00:00"),
        ("month", "2026-12-31T22:00:00+00:00", "Europe/Paris", "2026-12-01T00:00:00+01:00"),
        ("total", "2026-12-31T22:00:00+00:00", "UTC", ""),
    ],
)
def test_calendar_periods_start_in_the_configured_zone(
    period: str, now: str, zone: str, start: str
) -> None:
    assert period_start(period, datetime.fromisoformat(now), ZoneInfo(zone), None) == start


@pytest.mark.parametrize("period", ["hour", "day", "week", "month"])
@pytest.mark.parametrize("zone", ["Asia/Tokyo", "America/New_York"])
def test_records_dated_at_the_calendars_edges_are_charged_without_a_fault(
    tmp_path: Path, period: str, zone: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A record dated in year 1 or 9999 (record(timestamp=...)) with a calendar budget in a zone
    east or west of UTC: the period's bounds overflowed the calendar, and settling the budget
    logged a traceback and charged nothing (raised out of record() under TOKENMETER_STRICT)."""
    configured(
        tmp_path,
        [{"name": "b", "limit_usd": 1, "period": period}],
        budget_timezone=zone,
        budget_ledger="memory",
    )
    for moment in ("0001-01-01T01:00:00Z", "9999-12-31T23:30:00Z"):
        tokenmeter.record("openai", "gpt-4o", 1000, 0, timestamp=moment)
    assert tokenmeter.flush(5)
    assert "failed" not in caplog.text


def test_the_timezone_setting_moves_the_period(
    tmp_path: Path, fake: FakeProvider, instrumented: None
) -> None:
    memory = configured(tmp_path, [{"name": "b", "limit_usd": 1}], budget_timezone="Asia/Tokyo")
    chat(fake)
    from tokenmeter.guardrails import _budgets

    assert _budgets._config is not None
    ledger = _budgets._config.get_ledger()
    tokyo = period_start("day", datetime.now(UTC), ZoneInfo("Asia/Tokyo"), None)
    assert tokyo.endswith("+09:00") and ledger.spent("b|day|everything", tokyo) > 0
    assert memory is not None


def test_a_day_whose_midnight_comes_twice_is_one_period(
    fake: FakeProvider, instrumented: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In the Azores the clock goes back from 01:00 to 00:00 (2026-10-25 at 01:00 UTC): a call
    in the second 00:xx hour named its day from the second midnight ('...T00:00:00-01:00'), and
    the process kept that row for the rest of the day while others used the first midnight's:
    one day's budget in two rows, each with the whole limit."""
    import types

    from tokenmeter.guardrails import _budgets

    clock = [datetime(2026, 10, 25, 1, 30, tzinfo=UTC).timestamp()]  # 00:30, the second time
    monkeypatch.setattr(_budgets, "time", types.SimpleNamespace(time=lambda: clock[0]))
    memory = LedgerSink()
    tokenmeter.configure(
        sinks=[memory],
        budgets=[{"name": "b", "limit_usd": 1}],
        budget_timezone="Atlantic/Azores",
    )
    chat(fake)
    clock[0] = datetime(2026, 10, 25, 12, tzinfo=UTC).timestamp()
    chat(fake)
    _budgets.give_back()
    assert memory.ledger.spent("b|day|everything", "2026-10-25T00:00:00+00:00") == pytest.approx(
        2 * float(per_call(memory))
    )


def test_a_clock_stepped_back_charges_the_period_it_names(
    fake: FakeProvider, instrumented: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process whose clock said 2030 (a VM booted with a wrong date) until NTP stepped it
    back kept charging the 2030 day: its rows were kept until that day ended, so the day budget
    never rolled over for it (years of spending in one row, then every call refused)."""
    import types

    from tokenmeter.guardrails import _budgets

    clock = [datetime(2030, 1, 1, 12, tzinfo=UTC).timestamp()]
    monkeypatch.setattr(_budgets, "time", types.SimpleNamespace(time=lambda: clock[0]))
    memory = LedgerSink()
    tokenmeter.configure(sinks=[memory], budgets=[{"name": "b", "limit_usd": 1}])
    chat(fake)
    clock[0] = datetime(2029, 6, 1, 12, tzinfo=UTC).timestamp()  # stepped back
    chat(fake)
    _budgets.give_back()
    cost = float(per_call(memory))
    assert memory.ledger.spent("b|day|everything", "2030-01-01T00:00:00+00:00") == pytest.approx(
        cost
    )
    assert memory.ledger.spent("b|day|everything", "2029-06-01T00:00:00+00:00") == pytest.approx(
        cost
    )


@pytest.mark.parametrize(
    ("budgets", "message"),
    [
        ([{"period": "day"}], "budgets[0]: limit_usd is required"),
        ([{"limit_usd": -1}], "budgets[0].limit_usd"),
        ([{"limit_usd": "lots"}], "budgets[0].limit_usd"),
        ([{"limit_usd": True}], "budgets[0].limit_usd"),
        # Past a float's range the slice arithmetic overflowed: every budget was let through.
        ([{"limit_usd": "1e999999999999"}], "budgets[0].limit_usd"),
        ([{"limit_usd": 10**400}], "budgets[0].limit_usd"),
        ([{"limit_usd": 10**5000}], "budgets[0].limit_usd"),
        ([{"limit_usd": 1, "period": "fortnight"}], "budgets[0].period"),
        ([{"limit_usd": 1, "on_exceed": "explode"}], "budgets[0].on_exceed"),
        ([{"limit_usd": 1, "tag": "acme"}], "budgets[0].tag"),
        ([{"limit_usd": 1, "tag": {"a": {"b": 1}}}], "budgets[0].tag"),
        ([{"limit_usd": 1, "tag": {"customer": ["a"]}}], "budgets[0].tag"),
        ([{"limit_usd": 1, "tag": {"vip": True}}], "budgets[0].tag"),
        ([{"limit_usd": 1, "limit": 2}], "no such field 'limit'"),
        ([{"limit_usd": 1}, {"limit_usd": 2}], "two budgets are named"),
        ("5 dollars", "must be a list of budgets"),
    ],
)
def test_bad_budgets_are_a_value_error_naming_the_field(budgets: Any, message: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        tokenmeter.configure(budgets=budgets)
    assert message in one_line_value_error(excinfo)
    assert "'budgets' from configure()" in str(excinfo.value)


def test_budgets_read_from_toml(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        "[[tool.tokenmeter.budgets]]\n"
        'name = "acme-daily"\nlimit_usd = 25\nperiod = "day"\ntag = "customer=acme"\n'
        "[[tool.tokenmeter.budgets]]\n"
        'limit_usd = "0.50"\nperiod = "call"\non_exceed = "warn"\n'
    )
    from tokenmeter._config import load_settings

    budgets = load_settings(env={}, cwd=tmp_path).budgets
    assert budgets == parse_budgets(
        [
            {"name": "acme-daily", "limit_usd": 25, "period": "day", "tag": "customer=acme"},
            {"limit_usd": "0.50", "period": "call", "on_exceed": "warn"},
        ]
    )
    assert budgets[1].name == "call:everything" and budgets[0].scope == "tag:customer=acme"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_never_releases_the_parents_reservations(tmp_path: Path) -> None:
    from tokenmeter.guardrails import _budgets
    from tokenmeter.providers._core import Call

    configured(tmp_path, [{"name": "b", "limit_usd": 1, "period": "total"}])
    call = Call("openai", "gpt-4o", "chat")
    _budgets.check(call, (), {"messages": [{"role": "user", "content": "x" * 4000}]})
    assert _budgets._config is not None
    ledger = _budgets._config.get_ledger()
    assert ledger.spent("b|total|everything", "") > 0.0025  # the call and a slice for more
    _budgets.give_back()  # the slice goes back, the call in flight keeps its reservation
    reserved = ledger.spent("b|total|everything", "")
    assert reserved == pytest.approx(0.0025, rel=0.01)
    pid = os.fork()
    if pid == 0:  # the child drops its copy of the call, as it would when it finishes
        del call
        gc.collect()
        os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    # still the parent's (a child releasing it would take 0.0025 away; a give-back of another
    # reservation meanwhile, in the parent, moves the float sum by an ulp)
    assert ledger.spent("b|total|everything", "") == pytest.approx(reserved, abs=1e-12)
    del call
    gc.collect()  # the parent's call ends without a record: its reservation is given back...
    _budgets.give_back()  # ...at the next budget operation
    # (the give-back left the call's reservation in the ledger as reserved - unused: a float)
    assert ledger.spent("b|total|everything", "") == pytest.approx(0.0, abs=1e-15)


def test_a_request_carrying_audio_is_reserved_at_the_audio_rate() -> None:
    """60 s of audio is 600 input tokens, at gpt-4o-audio-preview's $40 / M for audio: $0.024
    (at its $2.50 text rate it would be reserved at $0.0015)."""
    import base64
    import struct
    from decimal import Decimal

    from tokenmeter.guardrails._estimate import estimate_input_usd

    data = b"\0" * (60 * 16_000 * 2)
    fmt = struct.pack("<HHIIHH", 1, 1, 16_000, 32_000, 2, 16)
    body = b"WAVEfmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", len(data))
    clip = b"RIFF" + struct.pack("<I", len(body) + len(data)) + body + data
    audio = {"type": "input_audio", "input_audio": {"data": base64.b64encode(clip).decode()}}
    request = {"model": "gpt-4o-audio-preview", "messages": [{"role": "user", "content": [audio]}]}
    usd = estimate_input_usd("openai", "gpt-4o-audio-preview", (), {}, request)
    assert Decimal("0.024") <= usd < Decimal("0.0241")  # the audio, and a few framing tokens


@pytest.mark.parametrize(
    ("provider", "model"),
    [("anthropic", "claude-sonnet-4-20250514"), ("google", "gemini-2.5-pro")],
)
def test_a_tiered_models_request_is_estimated_at_the_price_of_its_own_tokens(
    provider: str, model: str
) -> None:
    """The price of one token was taken from a million tokens, past the 200k tier: a 6,008-token
    Claude Sonnet 4 request ($0.018 at $3 / M) was estimated at $0.036048 and refused by a
    $0.025 per-call budget. The estimate (and the ceiling) is priced at the request's own tier."""
    from tokenmeter._estimate import _input_bound
    from tokenmeter.guardrails._estimate import estimate_input_usd, input_bound_usd

    messages = [{"role": "user", "content": "word " * 5000}]
    request: dict[str, Any] = {"model": model, "max_tokens": 5, "messages": messages}
    if provider == "google":
        request = {"contents": [{"role": "user", "parts": [{"text": "word " * 5000}]}]}
    tokens = tokenmeter.estimate(model, messages=messages).input_tokens
    listed = tokenmeter.price(provider, model, {"input_tokens": tokens, "output_tokens": 0})
    assert estimate_input_usd(provider, model, (), {}, request) == listed.total_usd
    bound_tokens = _input_bound(provider, request)
    assert bound_tokens is not None
    at_list_price = tokenmeter.price(provider, model, {"input_tokens": bound_tokens})
    assert input_bound_usd(provider, model, request) == pytest.approx(
        float(at_list_price.total_usd or 0)
    )


@pytest.mark.parametrize(
    ("provider", "model", "asked", "priced_at"),
    [
        ("openai", "gpt-4o", {"service_tier": "priority"}, "priority"),  # $4.25 / M, not $2.50
        ("openai", "gpt-4o", {"service_tier": "flex"}, None),  # cheaper: kept at standard
        ("openai", "gpt-4o", {"service_tier": "auto"}, None),
        ("anthropic", "claude-opus-4-6", {"speed": "fast"}, "fast"),  # 6x standard
        ("anthropic", "claude-opus-4-6", {"speed": "fast", "inference_geo": "us"}, "fast+us"),
        ("anthropic", "claude-opus-4-6", {"inference_geo": "us"}, "standard+us"),  # 1.1x
    ],
)
def test_a_request_is_estimated_at_the_dearer_service_tier_it_asks_for(
    provider: str, model: str, asked: dict[str, str], priced_at: str | None
) -> None:
    """The estimate priced every request at the standard rates: a gpt-4o request asking for the
    priority tier ($4.25 / M input) and a Claude Opus 4.6 one in fast mode (6x) were estimated
    at a fraction of what their records cost. They are estimated at the tier asked for, as
    their records are priced; never below the standard rates (flex)."""
    from tokenmeter.guardrails._estimate import estimate_input_usd, input_bound_usd

    messages = [{"role": "user", "content": "word " * 500}]
    request: dict[str, Any] = {"model": model, "max_tokens": 5, "messages": messages, **asked}
    tokens = tokenmeter.estimate(model, messages=messages).input_tokens
    usage = {"input_tokens": tokens, "output_tokens": 0}
    listed = tokenmeter.price(provider, model, usage, tier=priced_at).total_usd
    assert listed is not None
    estimate = estimate_input_usd(provider, model, (), {}, request)
    assert estimate == listed
    if priced_at is not None:
        assert estimate > (tokenmeter.price(provider, model, usage).total_usd or 0)
    bound = input_bound_usd(provider, model, request)
    assert bound is None or bound >= float(estimate)


@pytest.mark.parametrize(
    ("provider", "model", "asked", "image"),
    [
        ("openai", "gpt-4o", {"service_tier": "priority"}, {"type": "image_url"}),
        ("anthropic", "claude-opus-4-6", {"speed": "fast"}, {"type": "image"}),
    ],
)
def test_a_request_with_an_image_is_estimated_at_the_tier_it_asks_for_too(
    provider: str, model: str, asked: dict[str, str], image: dict[str, Any]
) -> None:
    """A request holding an image (audio, a document) is priced part by part, and that branch
    took no tier: gpt-4o at priority with an image was estimated at standard ($0.0052 where
    $0.0089) and sent under a $0.006 per-call budget; Claude Opus 4.6 fast mode at 1/6."""
    from tokenmeter.guardrails._estimate import estimate_input_usd

    if provider == "openai":
        image |= {"image_url": {"url": "data:image/png;base64," + "A" * 400}}
    else:
        image |= {"source": {"type": "base64", "media_type": "image/png", "data": "A" * 400}}
    content = [{"type": "text", "text": "word " * 500}, image]
    messages = [{"role": "user", "content": content}]
    plain = {"model": model, "max_tokens": 5, "messages": messages}

    standard = estimate_input_usd(provider, model, (), {}, plain)
    at_tier = estimate_input_usd(provider, model, (), {}, {**plain, **asked})

    assert at_tier > standard > 0


def test_a_per_call_budget_refuses_a_priority_or_fast_request_whose_input_costs_too_much(
    tmp_path: Path, fake: FakeProvider, instrumented: None
) -> None:
    """A $0.006 per-call budget let a 2,000-token gpt-4o request at the priority tier through,
    recorded at $0.0085 (estimated at the standard $0.005), and a $1 one a 100,000-token Claude
    Opus 4.6 request in fast mode, recorded at $3.00: both are refused before they are sent."""
    configured(tmp_path, [{"limit_usd": 0.006, "period": "call"}])
    text = "The quick brown fox jumps over the lazy dog. " * 200  # about 2,000 tokens
    openai = fake.openai_client(max_retries=0)
    messages = [{"role": "user", "content": text}]
    openai.chat.completions.create(model="gpt-4o", messages=messages)  # $0.005 at standard
    sent = len(fake.requests)
    with pytest.raises(BudgetExceeded, match="per call"):
        openai.chat.completions.create(model="gpt-4o", messages=messages, service_tier="priority")
    with pytest.raises(BudgetExceeded, match="per call"):
        openai.responses.create(model="gpt-4o", input=text, extra_body={"service_tier": "priority"})
    configured(tmp_path, [{"limit_usd": 1, "period": "call"}])
    claude = fake.anthropic_client(max_retries=0)
    with pytest.raises(BudgetExceeded, match="per call") as refused:
        claude.messages.create(
            model="claude-opus-4-6",
            max_tokens=10,
            messages=[{"role": "user", "content": text * 45}],  # about 90,000 tokens: $0.45
            extra_body={"speed": "fast"},
        )
    assert refused.value.estimate_usd > 2
    assert len(fake.requests) == sent


@pytest.mark.parametrize(
    ("provider", "model", "tokens"),
    [
        ("openrouter", "qwen/qwen3-coder-flash", 6_000),  # base rate: its tier starts at 32k
        ("openrouter", "qwen/qwen3-coder-flash", 40_000),  # past it: the tier's rate
        ("perplexity", "sonar", 6_000),  # $1 / M input and $5 per 1,000 requests, once
    ],
)
def test_a_request_is_estimated_at_its_models_rate_and_fee_for_its_own_tokens(
    provider: str, model: str, tokens: int
) -> None:
    """The price of one token was that of 100,000 tokens: past the 32k tier of two OpenRouter
    models (a 6,000-token qwen3-coder-flash request estimated at 1.67x its $0.00117), and with a
    per-request fee spread over those tokens (a 6,000-token sonar request estimated at $0.0067,
    where it costs $0.018). The estimate is the base rate times the tokens, plus the fee once."""
    from tokenmeter._estimate import _input_bound
    from tokenmeter.guardrails._estimate import estimate_input_usd, input_bound_usd

    text = "x" * (4 * tokens - len("user"))  # no body read: four characters a token
    kwargs = {"model": model, "messages": [{"role": "user", "content": text}]}
    listed = tokenmeter.price(provider, model, {"input_tokens": tokens, "output_tokens": 0})
    assert estimate_input_usd(provider, model, (), kwargs) == listed.total_usd
    bound_tokens = _input_bound(provider, kwargs)
    assert bound_tokens is not None
    bound = input_bound_usd(provider, model, kwargs)
    if bound_tokens > 32_000:  # a tier may apply: no ceiling short of the estimate itself
        assert bound is None
    else:
        at_list_price = tokenmeter.price(provider, model, {"input_tokens": bound_tokens})
        assert bound == pytest.approx(float(at_list_price.total_usd or 0))


def test_a_per_call_budget_counts_a_models_fee_per_request(tmp_path: Path) -> None:
    """A $0.01 per-call budget let a 6,000-token Perplexity sonar request ($0.011 with its fee)
    through: its fee was spread over 100,000 tokens, and the request estimated at $0.0067."""
    from tokenmeter.providers._core import Call

    configured(tmp_path, [{"limit_usd": 0.01, "period": "call"}])
    request = {"model": "sonar", "messages": [{"role": "user", "content": "x" * 23_996}]}
    with pytest.raises(BudgetExceeded, match="per call") as refused:
        _budgets.check(Call("perplexity", "sonar", "chat"), (), request)
    assert refused.value.estimate_usd == Decimal("0.011")  # its fee at the low search context


@pytest.mark.parametrize(
    ("size", "fee"),
    [(None, "0.005"), ("low", "0.005"), ("medium", "0.008"), ("high", "0.012"), ("huge", "0.005")],
)
def test_a_sonar_request_reserves_the_fee_of_the_search_context_it_asks_for(
    tmp_path: Path, size: str | None, fee: str
) -> None:
    """Perplexity's fee per request depends on the search context size (low, its default:
    $5 per 1,000 on sonar; medium $8; high $12): a request reserves the one it asks for in
    ``web_search_options.search_context_size``, the low one when it asks for none."""
    from tokenmeter.guardrails._estimate import estimate_input_usd, input_bound_usd
    from tokenmeter.providers._core import Call

    configured(tmp_path, [{"limit_usd": 0.01, "period": "call"}])
    request: dict[str, Any] = {"model": "sonar", "messages": MESSAGES}
    if size is not None:
        request["web_search_options"] = {"search_context_size": size}
    tokens = tokenmeter.estimate("sonar", messages=MESSAGES, provider="perplexity").input_tokens
    expected = Decimal(tokens) / 10**6 + Decimal(fee)  # $1 per million input tokens
    assert estimate_input_usd("perplexity", "sonar", (), {}, request) == expected
    # An SDK call's arguments, where no body was read: the same fee on its characters' tokens.
    asked = estimate_input_usd("perplexity", "sonar", (), request)
    plain = estimate_input_usd("perplexity", "sonar", (), {"model": "sonar", "messages": MESSAGES})
    assert asked - plain == Decimal(fee) - Decimal("0.005")
    bound = input_bound_usd("perplexity", "sonar", request)
    assert bound is None or bound >= float(expected)
    if size == "high":  # $0.012 > $0.01: refused before it is sent
        with pytest.raises(BudgetExceeded):
            _budgets.check(Call("perplexity", "sonar", "chat"), (), request)
    else:
        _budgets.check(Call("perplexity", "sonar", "chat"), (), request)


@pytest.mark.parametrize("model", ["gpt-4o-mini-search-preview", "gpt-4o-search-preview"])
def test_a_search_models_web_search_is_reserved_before_the_call(
    tmp_path: Path, fake: FakeProvider, instrumented: None, model: str
) -> None:
    """A $0.02 daily budget let a gpt-4o-mini-search-preview call through and recorded it at
    $0.0250075: the search such a model makes before every answer (its record counts one
    ``web_search_preview``, $0.025) was left out of the reservation. It is reserved once now,
    at the price the record gives it, so the call is refused before it is sent."""
    configured(tmp_path, [{"limit_usd": 0.02, "period": "day"}])
    with pytest.raises(BudgetExceeded) as refused:
        chat(fake, model)
    assert fake.requests == []
    searched = tokenmeter.estimate(model, messages=MESSAGES)
    assert searched.tool_requests == {"web_search_preview": 1}
    listed = tokenmeter.price("openai", model, searched).total_usd
    assert listed is not None and listed > Decimal("0.025")
    assert refused.value.estimate_usd == listed


def test_the_per_token_prices_budgets_keep_stay_bounded_and_right(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A gateway passing its users' model names on: the price of one token is kept per model,
    and past the bound (10,000; 20 here) the cache starts over, giving the same estimates."""
    from tokenmeter.guardrails import _estimate

    request = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello there."}]}
    expected = _estimate.estimate_input_usd("openai", "gpt-4o", (), {}, request)
    bound = _estimate.input_bound_usd("openai", "gpt-4o", request)
    assert expected > 0 and bound is not None and bound >= float(expected)
    monkeypatch.setattr(_estimate, "_MAX_MODELS", 20, raising=False)
    for n in range(100):
        _estimate.estimate_input_usd("openai", f"gpt-4o-user-{n}", (), {}, request)
        _estimate.input_bound_usd("openai", f"gpt-4o-user-{n}", request)
    assert len(_estimate._input_prices) <= 20
    assert _estimate.estimate_input_usd("openai", "gpt-4o", (), {}, request) == expected
    assert _estimate.input_bound_usd("openai", "gpt-4o", request) == bound


def test_a_call_in_flight_across_configure_settles_in_the_ledger_it_reserved_in() -> None:
    from tokenmeter.guardrails import _budgets
    from tokenmeter.providers._core import Call

    first, second = LedgerSink(), LedgerSink()
    budget = [{"name": "b", "limit_usd": 1, "period": "total"}]
    tokenmeter.configure(sinks=[first], budgets=budget)
    call = Call("openai", "gpt-4o", "chat")
    _budgets.check(call, (), {"messages": [{"role": "user", "content": "x" * 4000}]})
    tokenmeter.configure(sinks=[second], budgets=budget)  # its slice goes back; the call stays
    assert first.ledger.spent("b|total|everything", "") == pytest.approx(0.0025, rel=0.01)
    # A record made by hand counts in the budget now in force; the call's record ($0.25, more
    # than its reservation) replaces its reservation in the ledger it was reserved in.
    record = tokenmeter.record("openai", "gpt-4o", 100_000, 0)
    _budgets.settle(record, None, call)
    _budgets.give_back()
    assert first.ledger.spent("b|total|everything", "") == pytest.approx(0.25)
    assert second.ledger.spent("b|total|everything", "") == pytest.approx(0.25)


RESTARTED = """
import sys
from datetime import datetime, timedelta, timezone
import tokenmeter
tokenmeter.configure(
    sinks=["jsonl"], directory=sys.argv[1],
    budgets=[{"name": "daily", "limit_usd": 0.01, "period": "day", "on_exceed": "warn"}],
)
at = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc) + timedelta(days=int(sys.argv[2]))
tokenmeter.record("openai", "gpt-4o", 1000, 500, timestamp=at)  # $0.0075
"""


def test_budget_warnings_are_not_repeated_by_a_restarted_process_in_the_same_period(
    tmp_path: Path,
) -> None:
    """One process a call ($0.0075 of a $0.01 day): 75 %, 150 %, 225 % on the first day, then
    75 % on the next. The second process crosses 50 % again in its own eyes: alerts.jsonl says
    that warning was given for this day already."""
    import subprocess
    import sys

    from tokenmeter.cli._alerts import read_alerts

    directory = tmp_path / "tm"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for day in ("0", "0", "0", "1"):  # one process each: restarted between the calls
        subprocess.run([sys.executable, "-c", RESTARTED, str(directory), day], env=env, check=True)
    alerts, bad = read_alerts(directory / "alerts.jsonl")
    assert bad == 0
    assert [(a["rule"], a["scope"].rsplit(" from ", 1)[1][:10]) for a in alerts] == [
        ("budget_50pct", "2026-12-01"),
        ("budget_80pct", "2026-12-01"),
        ("budget_100pct", "2026-12-01"),
        ("budget_50pct", "2026-12-02"),
    ]


def test_a_budget_whose_limit_was_raised_warns_again_on_the_way_to_its_new_limit(
    tmp_path: Path,
) -> None:
    """Warned at 100 % of $0.01, the limit raised to $0.05 (configure() again, or a restarted
    process with the new setting): its warnings were known as given for the period, so passing
    the new limit ($0.06 spent) said nothing."""
    seen: list[Alert] = []
    for limit, records in ((0.01, 2), (0.05, 6)):  # $0.0075 a record
        configured(
            tmp_path,
            [{"name": "team", "limit_usd": limit, "on_exceed": "warn"}],
            on_alert=seen.append,
        )
        for _ in range(records):
            tokenmeter.record("openai", "gpt-4o", 1000, 500)
        assert tokenmeter.flush(5)
    assert [(a.rule, round(a.threshold or 0, 9)) for a in seen] == [
        ("budget_50pct", 0.005),
        ("budget_80pct", 0.008),
        ("budget_100pct", 0.01),
        ("budget_50pct", 0.025),
        ("budget_80pct", 0.04),
        ("budget_100pct", 0.05),
    ]


def test_a_warning_of_the_first_record_after_configure_reaches_the_callbacks_and_the_file(
    tmp_path: Path,
) -> None:
    """configure() replaces the sinks, the alert sink among them; the new ones are made when the
    first record is submitted, and its budget warnings are posted before that (as it is
    settled): a session already under way had the warning its first record crossed only
    logged, neither written to alerts.jsonl nor given to on_alert."""
    seen: list[Alert] = []
    configured(tmp_path, [])
    tokenmeter.record("openai", "gpt-4o", 1, 1)  # the implicit session is announced
    configured(
        tmp_path,
        [{"name": "team", "limit_usd": 0.01, "on_exceed": "warn"}],
        on_alert=seen.append,
    )
    tokenmeter.record("openai", "gpt-4o", 1000, 500)  # $0.0075 of $0.01
    assert tokenmeter.flush(5)
    assert [a.rule for a in seen] == ["budget_50pct"]
    assert "budget_50pct" in (tmp_path / "tm" / "alerts.jsonl").read_text()


CONCURRENT = """
import sys
from datetime import datetime, timezone
import tokenmeter
tokenmeter.configure(
    sinks=["jsonl"], directory=sys.argv[1],
    budgets=[{"name": "daily", "limit_usd": 0.01, "period": "day", "on_exceed": "warn"}],
    on_alert=lambda alert: print(alert.rule, flush=True),
)
at = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)
tokenmeter.record("openai", "gpt-4o", 100, 0, timestamp=at)  # $0.00025: no warning yet
assert tokenmeter.flush(10)
print("ready", flush=True)
sys.stdin.readline()
tokenmeter.record("openai", "gpt-4o", int(sys.argv[2]), 0, timestamp=at)
assert tokenmeter.flush(10)
"""


def test_a_budget_warning_is_given_once_by_processes_running_side_by_side(
    tmp_path: Path,
) -> None:
    """Workers sharing a budget each read the end of alerts.jsonl once, when they started: each
    gave the 50 % warning again (logged, written, sent to every on_alert callback: a page per
    worker). It is now looked for in alerts.jsonl, under its lock, before it is given."""
    import subprocess
    import sys

    from tokenmeter.cli._alerts import read_alerts

    directory = tmp_path / "tm"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", CONCURRENT, str(directory), tokens],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for tokens in ("2000", "400")  # $0.005 (then 50 % is passed), then $0.001 more
    ]
    for worker in workers:  # both started, and have read alerts.jsonl
        assert worker.stdout is not None and worker.stdout.readline() == "ready\n"
    given = []
    for worker in workers:  # one after the other: each crosses 50 % in its own eyes
        out, _ = worker.communicate("go\n", timeout=60)
        assert worker.returncode == 0
        given.append(out.split())
    assert given == [["budget_50pct"], []]
    alerts, bad = read_alerts(directory / "alerts.jsonl")
    assert bad == 0 and [a["rule"] for a in alerts] == ["budget_50pct"]


def test_the_warnings_kept_for_per_session_budgets_stay_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server with a ``period = "session"`` budget kept, for every session it ever ran, the
    warnings given in it (twice: the check's set and the alert sink's): memory grew without end.
    A session's are forgotten when it ends; the alert sink's past a bound (10,000; 20 here)
    are read again from the end of alerts.jsonl (256 KiB; 2 KiB here)."""
    from tokenmeter.guardrails import _alerts, _budgets

    monkeypatch.setattr(_alerts, "_MAX_GIVEN", 20, raising=False)
    monkeypatch.setattr(_alerts, "_SEED_BYTES", 2048)  # the last few lines
    seen: list[Alert] = []
    budget = {"name": "per-job", "limit_usd": 0.01, "period": "session", "on_exceed": "warn"}
    configured(tmp_path, [budget], on_alert=seen.append)
    for _ in range(100):
        with tokenmeter.session("job"):
            tokenmeter.record("openai", "gpt-4o", 1000, 500)  # $0.0075: 75 % of the session's
    assert tokenmeter.flush(5)
    assert [a.rule for a in seen] == ["budget_50pct"] * 100
    assert len({a.session_id for a in seen}) == 100
    assert not _budgets._warned
    sink = _alerts._active
    assert sink is not None and len(sink._given) <= 20


@pytest.mark.parametrize("ledger", ["sqlite", "memory"])
def test_budgets_pointed_at_another_directory_warn_again_there(tmp_path: Path, ledger: str) -> None:
    """The warnings given in one directory were remembered for the process: configured again
    with a new directory (a new budgets.db and alerts.jsonl, a test per tmp directory), the
    budget was enforced there but reached 50 % without a warning. In the same directory,
    configured again, a warning is still given once."""
    seen: list[Alert] = []
    budget = {"name": "daily", "limit_usd": 0.01, "period": "day"}
    for directory in ("first", "second", "second"):
        tokenmeter.configure(
            directory=tmp_path / directory,
            budgets=[budget],
            budget_ledger=ledger,
            on_alert=seen.append,
        )
        tokenmeter.record("openai", "gpt-4o", 1000, 500)  # $0.0075, 75 % of the limit
        assert tokenmeter.flush(5)
    # sqlite: $0.0075 in each new budgets.db, then $0.015 in the second; the memory ledger is
    # the process's: $0.015 when the second directory's alerts.jsonl gets its three warnings
    rules = [alert.rule for alert in seen]
    assert rules == ["budget_50pct", "budget_50pct", "budget_80pct", "budget_100pct"]


def test_the_memory_ledger_drops_the_rows_of_ended_sessions_past_a_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``budget_ledger="memory"`` with a ``period = "session"`` budget kept a row for every
    session the process ever ran (a server opening one per request: ~344 B each, for ever).
    It keeps those of the ``MAX_ENDED_PERIODS`` latest ended only (and the open ones')."""
    from tokenmeter.guardrails import _budgets, _ledger

    monkeypatch.setattr(_ledger, "MAX_ENDED_PERIODS", 10)
    budget = {"name": "per-job", "limit_usd": 0.01, "period": "session", "on_exceed": "raise"}
    configured(tmp_path, [budget], budget_ledger="memory")
    for _ in range(50):
        with tokenmeter.session("job"):
            tokenmeter.record("openai", "gpt-4o", 1000, 500)  # $0.0075 of the session's $0.01
    with tokenmeter.session("open") as still_open:
        tokenmeter.record("openai", "gpt-4o", 10, 5)
        ledger = _budgets._config.ledger  # type: ignore[union-attr]
        starts = [start for _, start in ledger._rows]
        assert len(starts) <= 11 and starts[-1] == str(still_open.id)


def test_the_memory_ledger_keeps_a_session_ids_spend_while_a_session_of_it_is_open(
    tmp_path: Path, fake: FakeProvider, instrumented: None
) -> None:
    """Two workers of job ``job-7`` on two threads, one session each under that id: the one
    that made no call ended, the memory ledger forgot the id's spend, and the other was let
    through 5 calls of $0.0075 under a $0.02 per-session budget ($0.0375; SQLite: 3)."""
    budget = {"name": "per-job", "limit_usd": 0.02, "period": "session"}
    configured(tmp_path, [budget], budget_ledger="memory")

    def other_worker() -> None:
        with tokenmeter.session("job", id="job-7"):
            pass

    with tokenmeter.session("job", id="job-7"):
        chat(fake)
        chat(fake)
        worker = threading.Thread(target=other_worker)
        worker.start()
        worker.join()
        chat(fake)  # 0.015 spent + its estimate: fits
        with pytest.raises(BudgetExceeded):
            chat(fake)
    assert len(fake.requests) == 3


def test_the_memory_ledger_keeps_an_ended_session_ids_spend(
    tmp_path: Path, fake: FakeProvider, instrumented: None
) -> None:
    """The memory ledger dropped a period="session" budget's rows when the id's last block
    ended: a job run three times under its id was let through 3 calls of $0.0075 a run under a
    $0.02 limit ($0.0675; budgets.db: $0.0225 in all), and a thread's work outliving its
    session's block got the whole limit again. Like budgets.db, it keeps them."""
    configured(
        tmp_path,
        [{"name": "per-job", "limit_usd": 0.02, "period": "session"}],
        budget_ledger="memory",
    )
    refused = 0
    for _ in range(3):  # the job, resumed twice under its id
        with tokenmeter.session("import", id="import-7"):
            try:
                for _ in range(3):
                    chat(fake)
            except BudgetExceeded:
                refused += 1
    assert (len(fake.requests), refused) == (3, 2)
    outlived: list[BaseException] = []
    go = threading.Event()

    def late_work() -> None:
        go.wait()
        with pytest.raises(BudgetExceeded) as late:
            for _ in range(3):
                chat(fake)
        outlived.append(late.value)

    with tokenmeter.session("job"):
        chat(fake)
        chat(fake)
        worker = threading.Thread(target=late_work)  # carries the session
        worker.start()
    go.set()
    worker.join()
    assert len(outlived) == 1 and len(fake.requests) == 6


def test_the_memory_ledger_keeps_the_rows_of_the_latest_ended_periods_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server opening a session per request must not keep a row of each for ever: past
    ``MAX_ENDED_PERIODS`` ended ones, the rows of those ended (or used) longest ago go; the
    rows of other periods stay."""
    from tokenmeter.guardrails import _ledger

    monkeypatch.setattr(_ledger, "MAX_ENDED_PERIODS", 4)
    ledger = MemoryLedger()
    ledger.settle("per-day", "2026-12-06", 0.0, 0.5)
    for n in range(4):
        ledger.settle("per-request", f"r-{n}", 0.0, 0.01)
        ledger.period_ended(f"r-{n}")
    ledger.settle("per-request", "r-0", 0.0, 0.01)  # a late call of r-0: used the latest
    ledger.settle("per-request", "r-4", 0.0, 0.01)
    ledger.period_ended("r-4")
    assert sorted(start for _, start in ledger._rows) == ["2026-12-06", "r-0", "r-4"]
    assert ledger.spent("per-request", "r-0") == pytest.approx(0.02)


def test_the_memory_ledger_never_drops_the_rows_of_a_session_open_again(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake: FakeProvider
) -> None:
    """A job's id entered again and open while many other sessions ended: its ended-once id
    became the oldest, and its rows (the spend of the block still running) were dropped: 5
    calls let through under a limit that holds 3 (review of a44d4e2)."""
    from tokenmeter.guardrails import _ledger

    monkeypatch.setattr(_ledger, "MAX_ENDED_PERIODS", 4)
    budget = {"name": "per-job", "limit_usd": 0.02, "period": "session", "on_exceed": "raise"}
    tokenmeter.configure(
        sinks=[InMemorySink()], directory=tmp_path, budgets=[budget], budget_ledger="memory"
    )
    tokenmeter.instrument(["openai"])
    client = fake.openai_client(max_retries=0)

    def call() -> None:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])

    with tokenmeter.session("job", id="job-1"):
        call()  # $0.0075
    admitted = 1
    with tokenmeter.session("job", id="job-1"):
        for n in range(8):  # other sessions end meanwhile: job-1 is the oldest ended id
            with tokenmeter.session("other", id=f"other-{n}"):
                pass
        for _ in range(3):  # 2 admitted, then refused
            try:
                call()
                admitted += 1
            except tokenmeter.BudgetExceeded:
                pass
    # $0.0075 a call: the third takes the job past $0.02 (a budget is checked before a call),
    # the fourth is refused; with the block's rows dropped it began again from $0.
    assert admitted == 3


class _CountedWalks(weakref.WeakSet[Any]):
    """The open sessions, counting the walks over them."""

    walks = 0

    def __iter__(self) -> Iterator[Any]:
        type(self).walks += 1
        return super().__iter__()


@pytest.mark.parametrize("ledger", ["sqlite", "memory"])
def test_a_sessions_end_does_not_walk_the_open_sessions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ledger: str
) -> None:
    """Whether a session's id was still open was found by walking every open session under the
    lock each session's enter and exit takes, at every session's end under a period="session"
    budget, with any ledger: a server with 4,000 requests in flight, a session each, took 3-5 ms
    a session instead of 0.15-0.3 ms. The ids are counted as sessions open and end, and only the
    memory ledger, which drops a period's rows when it is over, asks."""
    from tokenmeter import _sessions

    asked: list[str] = []
    in_use = _sessions.id_in_use
    monkeypatch.setattr(_sessions, "id_in_use", lambda id_: asked.append(id_) or in_use(id_))
    monkeypatch.setattr(_sessions, "_open", _CountedWalks(_sessions._open))
    configured(tmp_path, [{"limit_usd": 1, "period": "session"}], budget_ledger=ledger)
    in_flight = []
    for n in range(20):
        request = tokenmeter.session("request", id=f"in-flight-{n}")
        contextvars.copy_context().run(request.__enter__)
        in_flight.append(request)
    for n in range(20):
        with tokenmeter.session("request", id=f"r-{n}"):
            tokenmeter.record("openai", "gpt-4o", 10, 5)
    assert _CountedWalks.walks == 0
    assert asked == ([f"r-{n}" for n in range(20)] if ledger == "memory" else [])


def test_a_session_collected_while_open_leaves_its_id_free(tmp_path: Path) -> None:
    """A session entered in a context that was dropped inside its block never ends: once it is
    collected, its id is no longer open, and the memory ledger's period of the id ends again
    (its rows are among the latest ended periods', dropped past ``MAX_ENDED_PERIODS``)."""
    from tokenmeter import _sessions

    budget = {"name": "per-job", "limit_usd": 0.01, "period": "session"}
    configured(tmp_path, [budget], budget_ledger="memory")
    contextvars.copy_context().run(tokenmeter.session("job", id="job-9").__enter__)
    gc.collect()
    assert not _sessions.id_in_use("job-9")
    with tokenmeter.session("job", id="job-9"):
        tokenmeter.record("openai", "gpt-4o", 1000, 500)
    ledger = _budgets._config.ledger  # type: ignore[union-attr]
    assert list(ledger._ended) == ["job-9"]


def test_the_memory_ledger_keeps_the_periods_spend_across_configure(
    tmp_path: Path, fake: FakeProvider, instrumented: None
) -> None:
    """Each configure() made a new memory ledger: configured again to add an ``on_alert``
    callback, a $0.02/day budget that had refused its 4th call let 3 more through ($0.045 in
    the day). budgets.db keeps the day's spend across configure(): so does the memory ledger."""
    budgets = [{"name": "daily", "limit_usd": 0.02, "period": "day"}]
    configured(tmp_path, budgets, budget_ledger="memory")
    for _ in range(3):  # 0, 0.0075, 0.015 spent: each time spent + estimate <= 0.02
        chat(fake)
    configured(tmp_path, budgets, budget_ledger="memory", on_alert=lambda alert: None)
    with pytest.raises(BudgetExceeded):
        chat(fake)
    assert len(fake.requests) == 3


def test_a_call_freed_by_a_garbage_collection_inside_our_locks_gives_its_reservation_back(
    tmp_path: Path,
) -> None:
    """A call in a reference cycle (a traceback is enough) is freed by a garbage collection,
    which can start inside any of our locked sections: its reservation is given back all the
    same, afterwards, without taking those locks (not re-entrant) from inside the collection."""
    script = tmp_path / "collect.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import gc
            import tokenmeter
            from tokenmeter.guardrails import _budgets, _leases
            from tokenmeter.providers._core import Call

            tokenmeter.configure(sinks=[], directory={str(tmp_path / "tm")!r},
                                 budgets=[{{"name": "b", "limit_usd": 1, "period": "total"}}])
            call = Call("openai", "gpt-4o", "chat")
            _budgets.check(call, (), {{"messages": [{{"role": "user", "content": "x" * 4000}}]}})
            holder = [call]
            holder.append(holder)  # a cycle: only a collection frees the call
            del call, holder
            with _leases._lock:
                gc.collect()
            _budgets.give_back()
            ledger = _budgets._config.get_ledger()
            print("spent", ledger.spent("b|total|everything", ""))
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["spent", "0.0"]


def test_calls_far_from_their_limits_take_the_lease_group_and_still_warn_once_per_budget(
    tmp_path: Path, fake: FakeProvider, instrumented: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Most calls far from every limit are checked and settled on the scope's lease group
    (without the exact path), and each budget still warns once at each fraction it crosses."""
    from tokenmeter.guardrails import _budgets

    exact = []
    check_exactly = _budgets._check
    monkeypatch.setattr(
        _budgets, "_check", lambda *args: (exact.append(1), check_exactly(*args))[1]
    )
    seen: list[Alert] = []
    # A cost per call that divides no threshold: at an exact tie, the ledger's float sum of the
    # spend may reach it one call later than the exact one, and the crossing below is exact.
    fake.set_usage(
        openai={
            "prompt_tokens": 1000,
            "completion_tokens": 500,
            "cached_tokens": 4,
            "reasoning_tokens": 2,
        }
    )
    memory = configured(
        tmp_path,
        [
            {"name": "wide", "limit_usd": 1.5},  # 200 calls: 50 % is not reached
            {"name": "openai", "limit_usd": 0.6, "period": "month", "provider": "openai"},
        ],
        on_alert=seen.append,
    )
    for _ in range(70):  # "openai" crosses 50 % (call 40) and 80 % (call 64)
        chat(fake)
    assert tokenmeter.flush(5)
    assert len(fake.requests) == 70
    assert len(exact) < 35  # the rest were admitted in the leases' slices at once
    assert [(a.rule, a.scope.split(" ")[0]) for a in seen] == [
        ("budget_50pct", "budget:openai"),
        ("budget_80pct", "budget:openai"),
    ]
    cost = float(per_call(memory))
    assert seen[0].observed == pytest.approx(math.ceil(0.3 / cost) * cost)  # at the crossing
    assert seen[1].observed == pytest.approx(math.ceil(0.48 / cost) * cost)


GARBAGE_IN_THE_LOCK = """
import faulthandler, gc
import tokenmeter
from tokenmeter.guardrails import _leases
from tokenmeter.sinks import InMemorySink
from tokenmeter.testing import FakeProvider

faulthandler.dump_traceback_later(30, exit=True)  # a hang fails, it does not hang the suite
tokenmeter.configure(
    sinks=[InMemorySink()],
    budgets=[{"limit_usd": 100, "period": "day"}],
    budget_ledger="memory",
)
tokenmeter.instrument()
with FakeProvider(openai_usage={"prompt_tokens": 1000, "completion_tokens": 500}) as fake:
    client = fake.openai_client()
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])

    @tokenmeter.track
    def answer():
        yield 1
        yield 2

    class Holder:
        pass

    holder = Holder()
    holder.answer, holder.me = answer(), holder  # a cycle: only the collector frees it
    next(holder.answer)
    del holder
    gc.disable()
    with _leases._lock:  # as a settle holds it, while it allocates
        gc.collect()  # a collection there, as any allocation may start one
    gc.enable()
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    print("calls", "ok")
"""


def test_a_session_ended_by_the_collector_inside_our_lock_never_hangs_the_budgets(
    tmp_path: Path,
) -> None:
    """A @track generator dropped in a reference cycle ends its session when the collector frees
    it; a collection running while this thread held the leases' lock (any allocation there may
    start one) gave the session's unused slices back under that same lock: the thread waited for
    itself, and every budgeted call of the process after it. The give-back waits for the lock
    to be free instead."""
    script = tmp_path / "garbage.py"
    script.write_text(GARBAGE_IN_THE_LOCK)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["calls", "ok"]


def test_an_ended_session_is_not_kept_by_the_budgets(
    fake: FakeProvider, instrumented: None
) -> None:
    """The budgets' cache of which budgets cover a call is keyed by the call's session: it kept
    every ended session (its tags, its summary) until 4,096 entries piled up, hundreds of MB for
    a server opening a session per request with large tags. An ended session's entries go."""
    tokenmeter.configure(
        sinks=[InMemorySink()],
        budgets=[{"limit_usd": 100, "period": "day"}],
        budget_ledger="memory",
    )
    client = fake.openai_client(max_retries=0)
    with tokenmeter.session("request", tags={"payload": "x" * 10_000}) as ended:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    gone = weakref.ref(ended)
    del ended
    assert tokenmeter.flush(5)
    gc.collect()
    assert gone() is None


def test_sessions_open_at_once_past_any_bound_work_out_their_budgets_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Which budgets cover a session's calls is worked out once per session and model; the
    cache of it was emptied whenever it reached 4,096 entries, so a server with more sessions
    open at once (long-lived websockets) worked it out over every budget at every call, and its
    budgeted calls each took a ledger transaction (the lease group went with the entry)."""
    tokenmeter.configure(
        sinks=[InMemorySink()],
        budgets=[
            {"limit_usd": 10**6, "period": "day"},
            {"limit_usd": 10**6, "tag": "customer=acme"},
        ],
        budget_ledger="memory",
    )
    sessions = []
    for index in range(4_500):
        context = contextvars.copy_context()
        opened = tokenmeter.session(f"socket-{index}", tags={"customer": "acme"})
        context.run(opened.__enter__)
        sessions.append((context, opened))
    for context, _ in sessions:
        context.run(tokenmeter.record, "openai", "gpt-4o", 100, 20)
    matched = 0
    matches = _budgets.Budget.matches

    def counted(budget: Any, *args: Any) -> bool:
        nonlocal matched
        matched += 1
        return matches(budget, *args)

    monkeypatch.setattr(_budgets.Budget, "matches", counted)
    for context, _ in sessions:
        context.run(tokenmeter.record, "openai", "gpt-4o", 100, 20)
    for context, opened in sessions:
        context.run(opened.__exit__, None, None, None)
    assert matched == 0


def test_the_warnings_remembered_for_past_periods_stay_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each warning given (budget, period, fraction) was remembered for the life of the process:
    an hourly budget per customer adds three every hour, for ever. Past a bound (10,000; 20
    here) they start over; alerts.jsonl still has each period's warnings given once."""
    monkeypatch.setattr(_budgets, "_MAX_WARNED", 20, raising=False)
    tokenmeter.configure(
        sinks=[InMemorySink()],
        directory=tmp_path / "tm",
        budgets=[{"limit_usd": "0.0001", "period": "hour", "on_exceed": "warn"}],
        budget_ledger="memory",
    )
    start = datetime(2026, 12, 1, tzinfo=UTC)
    for hour in range(50):  # $0.0025 each: every fraction of that hour's limit passed
        tokenmeter.record(
            "openai", "gpt-4o", 1000, 0, timestamp=start.replace(hour=hour % 24, day=1 + hour // 24)
        )
    tokenmeter.record("openai", "gpt-4o", 1000, 0, timestamp=start)  # the first hour again
    assert tokenmeter.flush(5)
    assert 0 < len(_budgets._warned) <= 20
    lines = (tmp_path / "tm" / "alerts.jsonl").read_text().splitlines()
    assert len(lines) == len(set(lines)) == 150  # each hour's three warnings, once


def test_a_call_refused_by_a_budget_is_recorded_under_the_name_its_calls_have(
    fake: FakeProvider,
) -> None:
    """The legacy Gemini SDK names its model ``models/gemini-2.5-flash``: a refused call was
    recorded under that spelling, a model of its own in every report beside the calls' own
    ``gemini-2.5-flash``."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import google.generativeai as legacy

    sink = InMemorySink()
    tokenmeter.configure(
        sinks=[sink], budgets=[{"limit_usd": 0, "period": "day"}], budget_ledger="memory"
    )
    tokenmeter.instrument(["google-generativeai"])
    fake.configure_generativeai()
    try:
        with pytest.raises(BudgetExceeded):
            legacy.GenerativeModel("gemini-2.5-flash").generate_content("hi")  # type: ignore[attr-defined]
    finally:
        tokenmeter.uninstrument()
    assert tokenmeter.flush(5)
    assert [(r.status, r.model_name) for r in sink.records] == [("blocked", "gemini-2.5-flash")]


@pytest.mark.parametrize("sdk", ["google-generativeai", "google-genai"])
def test_a_budget_on_a_gemini_model_refuses_the_first_call_asking_for_its_path(
    fake: FakeProvider, sdk: str
) -> None:
    """The legacy Gemini SDK asks for models/gemini-2.5-flash (google-genai too, given that
    path): a budget on gemini-2.5-flash, the name records and reports give, only learnt the path
    from the first call's record, so the first call of every process was sent past it."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import google.generativeai as legacy

    tokenmeter.configure(
        sinks=[InMemorySink()],
        budgets=[{"limit_usd": 0, "model": "gemini-2.5-flash"}],
        budget_ledger="memory",
    )
    tokenmeter.instrument([sdk])
    try:
        with pytest.raises(BudgetExceeded):
            if sdk == "google-generativeai":
                fake.configure_generativeai()
                legacy.GenerativeModel("gemini-2.5-flash").generate_content("hi")  # type: ignore[attr-defined]
            else:
                client = fake.genai_client()
                client.models.generate_content(model="models/gemini-2.5-flash", contents="hi")
    finally:
        tokenmeter.uninstrument()
    assert fake.requests == []


@pytest.mark.parametrize(
    "model", ["models/gemini-2.5-flash", "publishers/google/models/gemini-2.5-flash"]
)
def test_a_budget_on_a_gemini_model_path_refuses_the_calls_of_that_model(
    fake: FakeProvider, model: str
) -> None:
    """A budget written with the model's path, as the legacy SDK and Vertex spell it, matched no
    call of google-genai asking for ``gemini-2.5-flash``: every call was sent past it."""
    tokenmeter.configure(
        sinks=[InMemorySink()], budgets=[{"limit_usd": 0, "model": model}], budget_ledger="memory"
    )
    tokenmeter.instrument(["google-genai"])
    try:
        with pytest.raises(BudgetExceeded):
            fake.genai_client().models.generate_content(model="gemini-2.5-flash", contents="hi")
    finally:
        tokenmeter.uninstrument()
    assert fake.requests == []
    [budget] = parse_budgets([{"limit_usd": 1, "model": model}])
    assert (budget.model, budget.scope) == ("gemini-2.5-flash", "model=gemini-2.5-flash")
    # Another provider's id that holds "models/" is its own name (Fireworks'): kept whole.
    fireworks = "accounts/fireworks/models/llama-v3p1-8b-instruct"
    for provider in (None, "fireworks"):
        [budget] = parse_budgets([{"limit_usd": 1, "model": fireworks, "provider": provider}])
        assert budget.model == fireworks


def test_the_slices_of_ended_sessions_are_not_kept(fake: FakeProvider, instrumented: None) -> None:
    """A budget of period "session" has a lease per session. Calls of one session made at once
    (asyncio.gather) left a float residue of their reservations (a + b + c - a - b - c) in flight
    once all had ended, so the lease was never given back nor dropped: one kept per session, for
    ever, in a server opening a session per request. What is left of settled reservations below
    the budgets' float tolerance is nothing."""
    from tokenmeter.guardrails import _leases

    tokenmeter.configure(
        sinks=[InMemorySink()],
        budgets=[{"limit_usd": 5, "period": "session"}],
        budget_ledger="memory",
    )
    client = fake.openai_client(async_=True, max_retries=0)

    async def requests() -> None:
        for i in range(20):
            async with tokenmeter.session(f"request {i}"):
                await asyncio.gather(
                    *(
                        client.chat.completions.create(
                            model="gpt-4o", messages=[{"role": "user", "content": "hi " * (j + 1)}]
                        )
                        for j in range(3)
                    )
                )

    asyncio.run(requests())
    assert [lease.start for lease in _leases._leases.values()] == []


@pytest.mark.parametrize("after", ["same budget", "no budget"])
def test_a_call_in_flight_across_configure_leaves_nothing_reserved_in_the_ledger(
    tmp_path: Path, fake: FakeProvider, instrumented: None, after: str
) -> None:
    """configure() gives the old configuration's slices back, but a stream read across it kept
    references to its leases: at its end the settlement took a new slice into a lease nobody
    gives back (for a $1 a day budget, $0.12 stayed reserved in budgets.db for the rest of the
    day after one stream, for every process sharing it), or, with the budgets removed, left its
    reservation there. A call of an old configuration settles and returns all it holds."""
    from tokenmeter.guardrails import _leases

    budget = [{"name": "daily", "limit_usd": 1, "period": "day"}]
    memory = configured(tmp_path, budget)
    client = fake.openai_client(max_retries=0)
    for _ in range(3):  # a slice the size of these calls
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    stream = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    tokenmeter.configure(budgets=budget if after == "same budget" else [])
    for _ in stream:
        pass
    _budgets.give_back()
    assert tokenmeter.flush(5) and len(memory.records) == 4
    spent = sum((r.estimated_cost_usd or Decimal(0) for r in memory.records), Decimal(0))
    assert spent == Decimal("0.03")
    ledger = sqlite3.connect(tmp_path / "tm" / "budgets.db")
    try:
        row = ledger.execute("select settled_usd, reserved_usd from budget_ledger").fetchone()
    finally:
        ledger.close()
    assert row[0] == pytest.approx(0.03) and row[1] == pytest.approx(0.0, abs=1e-9)
    assert [lease.key for lease in _leases._leases.values()] == []


class _StallingOnce(MemoryLedger):
    """A ledger whose next lease transaction after ``stall()`` waits (a database another
    program holds locked) until ``go``; the transactions after it do not."""

    def __init__(self) -> None:
        super().__init__()
        self.stalling = False
        self.entered = threading.Event()
        self.go = threading.Event()

    def stall(self) -> None:
        self.stalling = True

    def lease_many(self, items: Any) -> Any:
        if self.stalling:
            self.stalling = False
            self.entered.set()
            self.go.wait(60)
        return super().lease_many(items)


def test_a_call_ending_while_configure_gives_its_slice_back_leaves_nothing_reserved(
    fake: FakeProvider, instrumented: None
) -> None:
    """configure() gives the old slices back without holding the leases' lock, so a call in
    flight can end (and sync its lease) before the give-back's transaction. The give-back then
    released the lease's whole hold, call included, and took the call's reservation back, which
    the call's own sync had already released (what the ledger computed for the others went below
    zero and was counted as zero): the call's reservation stayed in the ledger for good."""
    ledger = _StallingOnce()

    class Sink(InMemorySink):
        def budget_ledger(self) -> MemoryLedger:
            return ledger

    budget = [{"name": "b", "limit_usd": 1, "period": "total"}]
    memory = Sink()
    tokenmeter.configure(sinks=[memory], budgets=budget)
    client = fake.openai_client(max_retries=0)
    for _ in range(3):  # a slice the size of these calls
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    stream = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    ledger.stall()
    replacing = threading.Thread(
        target=tokenmeter.configure, kwargs={"sinks": [InMemorySink()], "budgets": budget}
    )
    replacing.start()
    try:
        assert ledger.entered.wait(30)
        for _ in stream:  # ends while the give-back waits for the ledger
            pass
    finally:
        ledger.go.set()
        replacing.join(30)
    assert memory.records[-1].streamed and len(memory.records) == 4
    _budgets.give_back()
    assert ledger.spent("b|total|everything", "") == pytest.approx(0.03)


@pytest.mark.parametrize(
    "first",
    [
        {"name": "o", "limit_usd": 1, "provider": "openai"},
        {"name": "c", "limit_usd": 1, "period": "call"},  # per-call budgets only: no ledger
        None,  # no budget configured yet: nothing was checked
        "session",  # no budget configured, a session's budget checked the call
    ],
    ids=["another-provider", "per-call", "none", "session-budget"],
)
@pytest.mark.parametrize("ledger", ["memory", "sqlite"])
def test_a_budget_configure_adds_is_not_charged_for_a_call_it_never_admitted(
    tmp_path: Path, ledger: str, first: dict[str, Any] | str | None
) -> None:
    """A stream started under budgets that did not cover it (or none at all), then a
    configure() adding a $0.001 Anthropic budget: the stream's $0.00735, settled at its end,
    was charged to the new budget, which then refused a $0.0002 call it had room for (the same
    call finished before configure() was not). A call in flight ends in the budgets it was
    admitted in."""
    big = [{"role": "user", "content": "hello " * 2000}]
    with FakeProvider() as fake:
        fake.set_usage(anthropic={"input_tokens": 2400, "output_tokens": 10})
        tokenmeter.configure(
            directory=tmp_path,
            budget_ledger=ledger,
            budgets=[first] if isinstance(first, dict) else [],
        )
        tokenmeter.instrument(["anthropic"])
        client = fake.anthropic_client()
        with tokenmeter.session(
            budget_usd=1 if first == "session" else None,
            on_exceed="raise" if first == "session" else "warn",
        ):
            stream = client.messages.create(
                model="claude-sonnet-4-5", max_tokens=10, messages=big, stream=True
            )
        tokenmeter.configure(
            directory=tmp_path,
            budget_ledger=ledger,
            budgets=[{"name": "a", "limit_usd": 0.001, "provider": "anthropic"}],
        )
        for _ in stream:
            pass
        client.messages.create(
            model="claude-sonnet-4-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )  # room for it: $0.0002 of $0.001


@pytest.mark.parametrize("change", [{"limit_usd": 2}, {"on_exceed": "warn"}])
def test_a_call_in_flight_is_charged_once_when_configure_changes_its_budgets_limit(
    tmp_path: Path, change: dict[str, Any]
) -> None:
    """The same budget configured again with another limit (or on_exceed) is the same ledger
    row: a stream in flight across it was charged there twice, $0.0147 for $0.00735."""
    import time

    budget = {"name": "x", "limit_usd": 1, "provider": "anthropic"}
    big = [{"role": "user", "content": "hello " * 2000}]
    with FakeProvider() as fake:
        fake.set_usage(anthropic={"input_tokens": 2400, "output_tokens": 10})
        tokenmeter.configure(directory=tmp_path, budget_ledger="sqlite", budgets=[budget])
        tokenmeter.instrument(["anthropic"])
        stream = fake.anthropic_client().messages.create(
            model="claude-sonnet-4-5", max_tokens=10, messages=big, stream=True
        )
        tokenmeter.configure(
            directory=tmp_path, budget_ledger="sqlite", budgets=[{**budget, **change}]
        )
        for _ in stream:
            pass
    config = _budgets._config
    assert config is not None
    _budgets.give_back()  # the slices held for calls to come
    [configured] = config.budgets
    start = config.start_of(configured.period, time.time(), None)
    spent = config.get_ledger().spent(configured.key, start)
    assert spent == pytest.approx(0.00735, rel=1e-6)
