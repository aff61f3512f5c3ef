"""instrument() / uninstrument() / wrap(): one record per logical call, originals restored, and
nothing of ours ever breaking or changing a call (errors, retries, faults, warnings)."""

from __future__ import annotations

import contextlib
import copy
import gc
import importlib
import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import anthropic
import openai
import pytest
import wrapt
from anthropic import _base_client as anthropic_base
from helpers import run_python
from openai import _base_client as openai_base
from provider_helpers import MESSAGES, Records

import tokenmeter
from tokenmeter import _runtime
from tokenmeter._models import UsageRecord
from tokenmeter.sinks import InMemorySink
from tokenmeter.testing import FakeProvider

PATCHED = [
    (module.SyncAPIClient, module.SyncAPIClient.__dict__["request"])
    for module in (openai_base, anthropic_base)
] + [
    (module.AsyncAPIClient, module.AsyncAPIClient.__dict__["request"])
    for module in (openai_base, anthropic_base)
]


def originals_in_place() -> bool:
    return all(owner.__dict__["request"] is original for owner, original in PATCHED)


async def chat(client: Any, kit: ModuleType, **kwargs: Any) -> Any:
    return await kit.maybe(
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, **kwargs)
    )


# -- patching ------------------------------------------------------------------------------------
def test_uninstrument_restores_the_original_methods(fake: FakeProvider, records: Records) -> None:
    assert originals_in_place()
    handle = tokenmeter.instrument(["openai", "anthropic"])
    assert not originals_in_place()
    assert openai_base.SyncAPIClient.request is not PATCHED[0][1]
    tokenmeter.uninstrument()
    assert originals_in_place()
    assert openai_base.SyncAPIClient.request is PATCHED[0][1]
    fake.openai_client().chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert records() == []
    handle.uninstrument()  # a second undo is harmless
    assert originals_in_place()


def test_instrumentation_handle_is_a_context_manager(fake: FakeProvider, records: Records) -> None:
    with tokenmeter.instrument("openai"):
        fake.openai_client().chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert originals_in_place()
    fake.openai_client().chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert len(records()) == 1


@pytest.mark.parametrize("redo", ["after_the_block", "inside_the_block"])
def test_a_used_handle_leaves_a_later_instrument_alone(
    fake: FakeProvider, records: Records, redo: str
) -> None:
    """A handle undoes only its own patch, once: a second cleanup of it (a fixture's finalizer
    after ``with``), or leaving a ``with`` block whose code re-instrumented, left the later
    ``instrument()``'s calls unmetered."""
    client = fake.openai_client()
    with tokenmeter.instrument("openai") as first:
        if redo == "inside_the_block":
            tokenmeter.uninstrument()
            tokenmeter.instrument("openai")
    if redo == "after_the_block":
        assert tokenmeter.instrument("openai").providers == ["openai"]
    first.uninstrument()
    assert not originals_in_place()
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert len(records()) == 1


async def test_instrument_twice_records_once(
    fake: FakeProvider, records: Records, kit: ModuleType, is_async: bool
) -> None:
    tokenmeter.instrument()
    tokenmeter.instrument("openai")
    client = fake.openai_client(async_=is_async)
    await chat(client, kit)
    await kit.drain(await chat(client, kit, stream=True))
    assert [r.streamed for r in records()] == [False, True]


async def test_instrument_and_wrap_record_once(
    fake: FakeProvider, records: Records, kit: ModuleType, is_async: bool
) -> None:
    client = fake.openai_client(async_=is_async)
    assert tokenmeter.wrap(client) is client
    assert tokenmeter.wrap(client) is client  # idempotent
    tokenmeter.instrument()
    await chat(client, kit)
    await kit.drain(await chat(client, kit, stream=True))
    assert len(records()) == 2


@pytest.mark.requires(anthropic=">=2.15")
def test_a_call_another_client_makes_inside_a_metered_call_is_metered(
    fake: FakeProvider, records: Records
) -> None:
    """A call made while another is being sent, on another client (an SDK middleware asking a
    moderation model first, of the same provider or another), is billed on its own: it went
    unrecorded, as a call nested in the one being metered (the guard let every client through)."""
    from anthropic._middleware import Middleware

    tokenmeter.instrument()
    judge_openai = fake.openai_client()
    judge_anthropic = fake.anthropic_client()

    class Moderation(Middleware):  # type: ignore[misc]
        def handle(self, request: Any, call_next: Any) -> Any:
            judge_openai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            judge_anthropic.messages.create(
                model="claude-haiku-4-5", max_tokens=5, messages=MESSAGES
            )
            return call_next(request)

    client = fake.anthropic_client(middleware=[Moderation()])
    client.messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=MESSAGES)
    assert sorted(r.request_model for r in records()) == [
        "claude-haiku-4-5",
        "claude-sonnet-4-5",
        "gpt-4o-mini",
    ]


@pytest.mark.requires(anthropic=">=2.15")
def test_an_answer_middleware_gives_from_its_cache_is_not_billed_again(
    fake: FakeProvider, records: Records
) -> None:
    """anthropic's client middleware may answer a call without sending it (the SDK hands back
    what the middleware returns as it is): three calls, one request sent, three records were
    made, each at the full price of the first."""
    from anthropic._middleware import Middleware

    class Cache(Middleware):  # type: ignore[misc]
        def __init__(self) -> None:
            self.answers: dict[str, Any] = {}

        def handle(self, request: Any, call_next: Any) -> Any:
            key = json.dumps(request.options.json_data, sort_keys=True, default=str)
            if key not in self.answers:
                self.answers[key] = call_next(request).parse()
            return self.answers[key]

    tokenmeter.instrument()
    client = fake.anthropic_client(middleware=[Cache()])
    for question in ("a", "a", "b", "a"):
        client.messages.create(
            model="claude-sonnet-4-5",
            max_tokens=10,
            messages=[{"role": "user", "content": question}],
        )
    assert len(fake.requests) == len(records()) == 2


async def test_a_copy_of_a_wrapped_client_sends_as_itself(
    records: Records, kit: ModuleType, is_async: bool
) -> None:
    """``copy.copy()`` of a wrapped client kept the methods wrap() set on the original, bound to
    it: the copy sent every call to the original's server with the original's key, whatever was
    changed on the copy (the SDK's own copy sends as itself; openai < 2 as the original)."""

    async def sent(wrapped: bool) -> list[tuple[str, str]]:
        seen = []

        def server(request: Any) -> Any:
            seen.append((request.url.host, request.headers["authorization"]))
            return kit.http.Response(200, json=kit.chat_body())

        client = kit.mock_openai(server, is_async=is_async)
        if wrapped:
            tokenmeter.wrap(client)
        other = copy.copy(client)
        other.api_key = "sk-other"
        other.base_url = "http://other.local/v1"
        await chat(other, kit)
        await chat(copy.copy(other).with_options(timeout=5), kit)
        await chat(client, kit)
        return seen

    bare = await sent(wrapped=False)
    assert await sent(wrapped=True) == bare
    assert len(records()) == 3


@pytest.mark.parametrize("overridden", ["with_options", "copy"])
async def test_wrap_keeps_a_subclass_s_own_with_options_and_copy(
    records: Records, kit: ModuleType, is_async: bool, overridden: str
) -> None:
    """wrap() set both ``with_options`` and ``copy`` to one hook around the SDK's ``copy``: a
    client subclass's own ``with_options()`` (adding a team header to every derived client)
    never ran once wrapped, and one overriding only ``copy()`` had it run by ``with_options()``
    too. Each name now calls the client's own method and wraps what it makes."""
    base: Any = openai.AsyncOpenAI if is_async else openai.OpenAI

    def with_team(self: Any, **kwargs: Any) -> Any:
        kwargs["default_headers"] = {**(kwargs.get("default_headers") or {}), "X-Team": "search"}
        return getattr(super(team_client, self), overridden)(**kwargs)

    team_client: Any = type("TeamClient", (base,), {overridden: with_team})

    async def sent(wrapped: bool) -> list[str | None]:
        seen = []

        def server(request: Any) -> Any:
            seen.append(request.headers.get("x-team"))
            return kit.http.Response(200, json=kit.chat_body())

        http_client = (kit.http.AsyncClient if is_async else kit.http.Client)(
            transport=kit.http.MockTransport(server)
        )
        client = team_client(
            api_key="sk-test", base_url="http://fake.local/v1", http_client=http_client
        )
        if wrapped:
            tokenmeter.wrap(client)
        await chat(client.with_options(timeout=5), kit)
        await chat(client.copy(timeout=5), kit)
        await chat(client.with_options(timeout=5).with_options(max_retries=0), kit)
        return seen

    bare = await sent(wrapped=False)
    assert await sent(wrapped=True) == bare
    assert len(records()) == 3


async def test_wrap_instruments_only_that_client(
    fake: FakeProvider, records: Records, kit: ModuleType, is_async: bool
) -> None:
    wrapped = tokenmeter.wrap(fake.openai_client(async_=is_async))
    other = fake.openai_client(async_=is_async)
    assert isinstance(wrapped, openai.AsyncOpenAI if is_async else openai.OpenAI)
    await chat(wrapped, kit)
    await chat(other, kit)
    assert originals_in_place()
    (record,) = records()
    assert record.input_tokens == fake.openai_usage.prompt_tokens
    # Copies of the wrapped client (with_options / copy) are wrapped too; the copy's copy as well.
    await chat(wrapped.with_options(timeout=5).copy(max_retries=0), kit)
    await chat(other.with_options(timeout=5), kit)
    assert len(records()) == 2


async def test_wrap_anthropic_and_vertex_clients(
    fake: FakeProvider, records: Records, kit: ModuleType, is_async: bool
) -> None:
    for client in (
        fake.anthropic_client(async_=is_async),
        fake.anthropic_vertex_client(async_=is_async),
    ):
        tokenmeter.wrap(client)
        await kit.maybe(
            client.messages.create(model="claude-haiku-4-5", max_tokens=64, messages=MESSAGES)
        )
    assert [r.model_name for r in records()] == ["claude-haiku-4-5-20251001"] * 2


async def test_streams_stay_sdk_streams_when_wrapped_and_after_uninstrument(
    fake: FakeProvider, records: Records, kit: ModuleType, is_async: bool
) -> None:
    """anthropic 0.x's Stream metaclass rejects every object not exactly a Stream: not ours."""
    kind = anthropic.AsyncStream if is_async else anthropic.Stream
    client = tokenmeter.wrap(fake.anthropic_client(async_=is_async))
    wrapped = await kit.maybe(
        client.messages.create(
            model="claude-haiku-4-5", max_tokens=64, messages=MESSAGES, stream=True
        )
    )
    tokenmeter.instrument("anthropic")
    plain = await kit.maybe(
        fake.anthropic_client(async_=is_async).messages.create(
            model="claude-haiku-4-5", max_tokens=64, messages=MESSAGES, stream=True
        )
    )
    tokenmeter.uninstrument("anthropic")
    assert isinstance(wrapped, kind) and isinstance(plain, kind)
    assert not isinstance(object(), kind)
    await kit.drain(wrapped)
    await kit.drain(plain)
    assert len(records()) == 2


def test_what_a_call_returns_shows_as_the_sdks_object(
    fake: FakeProvider, instrumented: Records
) -> None:
    """repr() of a stream, its HTTP response, a raw or streaming response (a log line, a
    notebook's display) is the SDK object's own, not the name of a proxy of ours."""
    client = fake.openai_client()
    stream = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    shown = [
        (stream, "<openai.Stream object at "),
        (stream.response, "<Response [200 OK]>"),
        (raw, "<APIResponse [200 OK] type="),
    ]
    with fake.anthropic_client().messages.with_streaming_response.create(
        model="claude-haiku-4-5", max_tokens=64, messages=MESSAGES
    ) as streaming:
        streaming.parse()
        shown.append((streaming, "<APIResponse [200 OK] type="))
        for obj, start in shown:
            assert repr(obj).startswith(start), repr(obj)
            assert repr(obj) == repr(obj.__wrapped__)
    list(stream)
    assert len(instrumented()) == 3


def test_a_wrapper_another_library_buried_stays_inert_after_a_later_uninstrument(
    fake: FakeProvider, records: Records
) -> None:
    """Another library wraps over our patch; uninstrument() leaves ours in its chain, inert.
    instrument() again switches it on under the new patch: the next uninstrument() must switch
    it off again, or calls go on being metered by the buried one."""
    owner, original = PATCHED[0]
    tokenmeter.instrument("openai")
    try:
        owner.request = wrapt.FunctionWrapper(  # type: ignore[method-assign]
            owner.__dict__["request"], lambda w, i, a, k: w(*a, **k)
        )
        tokenmeter.uninstrument()
        tokenmeter.instrument("openai")
        tokenmeter.uninstrument()
        fake.openai_client().chat.completions.create(model="gpt-4o", messages=MESSAGES)
        assert records() == []
    finally:  # the other library's wrapper and ours under it go
        owner.request = original  # type: ignore[method-assign]


def test_wrap_rejects_other_objects() -> None:
    with pytest.raises(ValueError, match="wrap\\(\\) takes"):
        tokenmeter.wrap(object())


class CompanyOpenAI(openai.OpenAI):
    """An application's own client class, in the application's module (here, this test's)."""


class CompanyAnthropic(anthropic.AsyncAnthropic):
    """An application's own async Anthropic client."""


def _company_clients(fake: FakeProvider) -> dict[str, Any]:
    from google import genai

    class CompanyGenAI(genai.Client):
        """An application's own Google GenAI client."""

    gemini = {"base_url": fake.gemini_base_url, "api_version": "v1beta"}
    return {
        "openai": CompanyOpenAI(api_key="k", base_url=fake.openai_base_url, max_retries=0),
        "anthropic": CompanyAnthropic(api_key="k", base_url=fake.anthropic_base_url, max_retries=0),
        "google": CompanyGenAI(api_key="k", http_options=gemini),
    }


async def test_wrap_takes_an_applications_subclass_of_an_sdk_client(
    fake: FakeProvider, records: Records, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``class CompanyOpenAI(openai.OpenAI)`` in the application's module: wrap() looked the SDK
    up by that module's name and raised "wrap() takes an OpenAI, Anthropic or Google GenAI
    client, got CompanyOpenAI" for all three SDKs, with TOKENMETER_DISABLED=1 too (a deployment
    switching tokenmeter off crashed at start). Each is its SDK's client, metered once a call."""
    clients = _company_clients(fake)
    for client in clients.values():
        assert tokenmeter.wrap(client) is client
    clients["openai"].chat.completions.create(model="gpt-4o", messages=MESSAGES)
    await clients["anthropic"].messages.create(
        model="claude-sonnet-4-5", max_tokens=16, messages=MESSAGES
    )
    clients["google"].models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert [r.model_provider for r in records()] == ["openai", "anthropic", "google"]

    monkeypatch.setenv("TOKENMETER_DISABLED", "1")
    _runtime.reset()
    for client in _company_clients(fake).values():
        assert tokenmeter.wrap(client) is client


class _NoRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


@pytest.mark.parametrize(
    "providers", ["x" * 1_000_000, ["x" * 1_000_000], [_NoRepr()], [["openai"] * 100_000]]
)
def test_unknown_providers_are_a_short_value_error(providers: Any) -> None:
    """A megabyte name, an object whose repr fails, an unhashable item: one short ValueError."""
    for call in (tokenmeter.instrument, tokenmeter.uninstrument):
        with pytest.raises(ValueError, match="unknown provider") as raised:
            call(providers)
        assert len(str(raised.value)) < 300


def test_instrument_sinks_overrides_a_bad_sinks_variable_as_configure_does(
    fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """instrument(sinks=[mine]) read the settings before applying its sinks: with
    TOKENMETER_SINKS=sqlite;jsonl (a typo the argument overrides) it raised "tokenmeter setting
    'sinks' from TOKENMETER_SINKS: unknown sink" and patched nothing, where configure(sinks=
    [mine]) then instrument() worked. A bad provider name still configures nothing."""
    monkeypatch.setenv("TOKENMETER_SINKS", "sqlite;jsonl")
    mine = InMemorySink()
    with pytest.raises(ValueError, match="unknown provider"):
        tokenmeter.instrument(["nope"], sinks=[mine])
    assert not _runtime.own_sinks()
    assert "openai" in tokenmeter.instrument(sinks=[mine]).providers
    fake.openai_client().chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert tokenmeter.flush()
    assert [record.model_provider for record in mine.records] == ["openai"]


@pytest.mark.parametrize("name", ["azure", "Groq", "deepseek", "nope"])
def test_an_unknown_name_lists_every_name_taken_and_the_sdk_of_a_provider(name: str) -> None:
    """A provider called through the openai SDK (Azure, Groq, ...) names no SDK (naming one
    would meter every openai call, whatever the host): the error lists every name instrument()
    takes (it listed the four SDKs alone, not "google", "gemini", "vertex", "google-legacy")
    and, for such a provider, the SDK to name."""
    for call in (tokenmeter.instrument, tokenmeter.uninstrument):
        with pytest.raises(ValueError, match="unknown provider") as raised:
            call([name])
        said = str(raised.value)
        for taken in ("openai", "google-genai", "google-legacy", "google", "gemini", "vertex"):
            assert repr(taken) in said
        assert ("through the openai SDK: name 'openai'" in said) is (name != "nope")
    assert tokenmeter.instrument(["vertex", "google-legacy"]).providers == [
        "google-genai",
        "google-generativeai",
    ]


@pytest.mark.parametrize("module", ["m", None])
def test_wrap_names_a_class_with_a_huge_name_or_no_module_shortly(module: Any) -> None:
    odd = type("X" * 1_000_000, (), {"__module__": module})
    with pytest.raises(ValueError, match="wrap\\(\\) takes") as raised:
        tokenmeter.wrap(odd())
    assert len(str(raised.value)) < 300


def test_raw_response_wrapper_accessed_before_instrument_is_still_recorded(
    fake: FakeProvider, records: Records
) -> None:
    """The SDK caches bound methods in with_raw_response; request-level patching still sees it."""
    client = fake.openai_client()
    raw_create = client.chat.completions.with_raw_response.create
    tokenmeter.instrument("openai")
    raw_create(model="gpt-4o", messages=MESSAGES)
    assert len(records()) == 1


# -- retries and failures ------------------------------------------------------------------------
async def test_sdk_retry_is_one_call(
    fake: FakeProvider, instrumented: Records, kit: ModuleType, is_async: bool
) -> None:
    client = fake.openai_client(async_=is_async, max_retries=1)
    fake.fail_next(500)
    result = await chat(client, kit)
    assert result.usage is not None
    assert len(fake.requests) == 2  # the SDK did retry
    (record,) = instrumented()
    assert record.status == "ok" and record.input_tokens == fake.openai_usage.prompt_tokens


@pytest.mark.parametrize("stream", [False, True])
async def test_http_error_is_recorded_and_reraised(
    fake: FakeProvider, instrumented: Records, kit: ModuleType, is_async: bool, stream: bool
) -> None:
    client = fake.openai_client(async_=is_async)
    fake.fail_next(429)
    with pytest.raises(openai.RateLimitError) as raised:
        await chat(client, kit, stream=stream)
    assert raised.value.status_code == 429
    (record,) = instrumented()
    assert record.status == "error" and record.error == "RateLimitError"
    assert record.total_tokens == 0 and record.model_name == "gpt-4o"
    assert record.streamed is stream


async def test_the_very_same_exception_object_is_reraised(
    instrumented: Records, kit: ModuleType, is_async: bool
) -> None:
    raised_by_sdk: list[BaseException] = []
    original = openai_base.SyncAPIClient.__dict__["request"]
    assert original is not None

    def handler(request: Any) -> Any:
        raise kit.http.ConnectTimeout("too slow", request=request)

    client = kit.mock_openai(handler, is_async=is_async, max_retries=0)
    try:
        await chat(client, kit)
    except openai.APITimeoutError as exc:
        raised_by_sdk.append(exc)
    (exc,) = raised_by_sdk
    assert isinstance(exc.__cause__, kit.http.ConnectTimeout)
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame.f_code.co_filename)
        tb = tb.tb_next
    assert frames[-1].endswith("_base_client.py")  # raised by the SDK, passed through untouched
    (record,) = instrumented()
    assert record.status == "error" and record.error == "APITimeoutError"


# -- faults inside tokenmeter never break the call -----------------------------------------------
@pytest.mark.parametrize("stream", [False, True])
async def test_garbage_usage_is_logged_not_raised(
    instrumented: Records,
    kit: ModuleType,
    is_async: bool,
    stream: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    garbage = {"prompt_tokens": "lots", "completion_tokens": -3, "total_tokens": None}

    def handler(request: Any) -> Any:
        if stream:
            return kit.sse_response(kit.chat_sse(3, usage=garbage))
        return kit.http.Response(200, json=kit.chat_body(usage=garbage))

    client = kit.mock_openai(handler, is_async=is_async)
    with caplog.at_level(logging.DEBUG, logger="tokenmeter"):  # a warning once, then debug
        result = await chat(client, kit, stream=stream)
        if stream:
            chunks = await kit.drain(result)
            assert len(chunks) == 3
        else:
            assert result.usage.prompt_tokens == "lots"  # the caller gets the SDK's object as is
        assert tokenmeter.flush(5)  # the record reaches the sink
    assert any(" failed" in r.getMessage() and "reading" in r.getMessage() for r in caplog.records)


class FlakySink:
    """Its first write fails (a full disk, say); later ones succeed."""

    def __init__(self) -> None:
        self.attempts = 0
        self.records: list[Any] = []

    def write(self, records: list[Any]) -> None:
        self.attempts += 1
        if self.attempts == 1:
            raise OSError("disk full")
        self.records.extend(records)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


async def test_failing_sink_never_reaches_the_caller(
    fake: FakeProvider, kit: ModuleType, is_async: bool
) -> None:
    sink = FlakySink()
    tokenmeter.configure(sinks=[sink])
    tokenmeter.instrument("openai")
    with tokenmeter.session("s") as session:
        result = await chat(fake.openai_client(async_=is_async), kit)
    assert result.usage is not None
    assert session.summary.calls == 1
    assert tokenmeter.flush(10)
    assert sink.attempts >= 2
    assert [r.status for r in sink.records if isinstance(r, UsageRecord)] == ["ok"]


def test_disabled_makes_instrument_a_no_op(
    fake: FakeProvider, records: Records, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tokenmeter import _runtime

    monkeypatch.setenv("TOKENMETER_DISABLED", "1")
    _runtime.reset()
    tokenmeter.instrument()
    assert originals_in_place()


async def test_disabled_leaves_a_wrapped_client_unmetered_and_under_no_budget(
    fake: FakeProvider,
    kit: ModuleType,
    is_async: bool,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """TOKENMETER_DISABLED=1 ("unmetered and with no budget") made only instrument() a no-op: a
    wrap()ped client was metered, and a session's budget refused its 3rd call (BudgetExceeded,
    after warnings at 50% and 80%). A session still works as a context manager."""
    monkeypatch.setenv("TOKENMETER_DISABLED", "1")
    client = tokenmeter.wrap(fake.openai_client(async_=is_async))
    with tokenmeter.session("job", budget_usd=0.0002, on_exceed="raise") as job:
        assert tokenmeter.current_session() is job
        for _ in range(10):  # $0.0001425 each: the 2nd passes the budget
            await chat(client, kit)
    assert tokenmeter.current_session() is None and job.status == "completed"
    assert (job.summary.calls, job.summary.cost_usd) == (0, 0)
    assert not [r for r in caplog.records if "budget" in r.getMessage()]


# -- SDK warnings still reach the user, attributed to the user's line ------------------------------
def _a_deprecated_anthropic_model() -> str:
    """A model the installed SDK itself warns about: its table changes with every release, so the
    test reads it instead of naming a model."""
    table: dict[str, str] = {}
    for module in ("anthropic._data", "anthropic.resources.messages.messages"):
        with contextlib.suppress(ImportError):
            table = getattr(importlib.import_module(module), "DEPRECATED_MODELS", {}) or table
        if table:
            return next(iter(table))
    pytest.skip(f"anthropic {anthropic.__version__} has no table of deprecated models to warn on")


def test_anthropic_deprecation_warning_points_at_the_callers_line(
    fake: FakeProvider, instrumented: Records
) -> None:
    model = _a_deprecated_anthropic_model()
    client = fake.anthropic_client()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        client.messages.create(model=model, max_tokens=16, messages=MESSAGES)
    deprecations = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    assert deprecations, "the SDK's deprecation warning was swallowed"
    assert deprecations[0].filename == __file__
    assert len(instrumented()) == 1


def test_anthropic_sdk_objects_are_not_written_to(
    fake: FakeProvider, instrumented: Records
) -> None:
    client = fake.anthropic_client()
    stream = client.messages.create(
        model="claude-haiku-4-5", max_tokens=64, messages=MESSAGES, stream=True
    )
    list(stream)
    assert not [
        name for name in vars(stream.__wrapped__) if "self_" in name or "tokenmeter" in name
    ]
    assert isinstance(stream, anthropic.Stream)
    del stream
    gc.collect()
    assert len(instrumented()) == 1


EXIT_WITH_OPEN_STREAMS = """
import tokenmeter
from tokenmeter.testing import FakeProvider
tokenmeter.instrument()
fake = FakeProvider(stream_chunks=5).start()
client = fake.openai_client()
KEPT = []
for _ in range(3):
    stream = client.chat.completions.create(model="gpt-4o", messages=[], stream=True)
    next(stream)
    KEPT.append(stream)  # still open and referenced when the interpreter exits
"""


def test_streams_still_open_at_exit_are_recorded_quietly(tmp_path: Path) -> None:
    env = {**os.environ, "TOKENMETER_SINKS": "jsonl", "TOKENMETER_DIR": str(tmp_path)}
    done = run_python("-c", EXIT_WITH_OPEN_STREAMS, env=env, cwd=tmp_path)
    assert "Traceback" not in done.stderr
    lines = (tmp_path / "usage.jsonl").read_text().splitlines()
    assert len(lines) == 3
    assert all(json.loads(line)["streamed"] for line in lines)


@pytest.mark.requires(openai=">=2.0")  # client.chat.completions.stream (beta.chat before)
async def test_a_call_made_in_the_block_and_sent_after_it_is_not_metered_as_the_docs_say(
    fake: FakeProvider, records: Records
) -> None:
    """docs/providers.md said every call made inside ``with instrument():`` is metered even when
    its stream is read after it; the openai and anthropic SDKs send a stream helper's request
    at its ``with`` and an async method's at its ``await``, after the block restored their
    methods: sent and billed, no record (s51 streams item 5). Metering them needs hooks at
    the SDKs' public surface that outlive the block; the docs say what is metered instead."""
    client, aclient = fake.openai_client(), fake.anthropic_client(async_=True)
    with tokenmeter.instrument():
        helper = client.chat.completions.stream(model="gpt-4o", messages=MESSAGES)
        pending = aclient.messages.create(
            model="claude-haiku-4-5", max_tokens=16, messages=MESSAGES, stream=True
        )
    with helper as stream:
        list(stream)
    async for _ in await pending:
        pass

    assert (len(fake.requests), records()) == (2, [])
    page = Path(__file__).resolve().parents[2] / "docs" / "providers.md"
    said = " ".join(page.read_text(encoding="utf-8").split())
    assert "made in the block and sent after it, such a call is not metered" in said


CTRL_C_DURING_A_STREAM = """
import json, os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
import openai
import tokenmeter
from openai import _base_client
http = getattr(_base_client, "httpx2", None) or _base_client.httpx
if sys.argv[1] == "metered":
    tokenmeter.instrument("openai")

class Answer(http.SyncByteStream):
    # A stream the user interrupts mid-answer: the Ctrl-C lands inside the SDK's read.
    def __iter__(self):
        for n in range(50):
            if n == 5:
                os.kill(os.getpid(), signal.SIGINT)
            chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1,
                     "model": "gpt-4o", "choices": [{"index": 0, "delta": {"content": "w "}}]}
            yield b"data: " + json.dumps(chunk).encode() + bytes([10, 10])

transport = http.MockTransport(lambda request: http.Response(
    200, stream=Answer(), headers={"content-type": "text/event-stream"}))
client = openai.OpenAI(api_key="sk-test", http_client=http.Client(transport=transport))
messages = [{"role": "user", "content": "hi"}]
for _ in client.chat.completions.create(model="gpt-4o", messages=messages, stream=True):
    pass
"""


def test_ctrl_c_during_a_stream_ends_the_process_as_without_tokenmeter(tmp_path: Path) -> None:
    """A Ctrl-C while the process's first stream without usage is read: its estimate started
    the tokenizer's load in the background, the exit waited for it, and the load running as
    the interpreter ended made the process exit with status 1, not die of SIGINT (-2 here,
    130 in a shell) as it does without tokenmeter. The stream is still recorded, estimated."""
    env = {
        **os.environ,
        "TOKENMETER_SINKS": "jsonl",
        "TOKENMETER_DIR": str(tmp_path),
        "PYTHONPATH": os.pathsep.join(sys.path),  # this tokenmeter, not one installed elsewhere
    }
    statuses = {}
    for mode in ("bare", "metered"):
        done = subprocess.run(
            [sys.executable, "-c", CTRL_C_DURING_A_STREAM, mode],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        statuses[mode] = done.returncode
    assert statuses == {"bare": -signal.SIGINT, "metered": -signal.SIGINT}
    (line,) = (tmp_path / "usage.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert (record["streamed"], record["estimated"]) == (True, True)


INSTRUMENT_WHILE_ANOTHER_THREAD_IMPORTS = """
import faulthandler, sys, threading, time
faulthandler.dump_traceback_later(30, exit=True)  # a hang fails, with every thread's stack
import tokenmeter
tokenmeter.configure(sinks=[tokenmeter.sinks.InMemorySink()])
tokenmeter.instrument("openai")  # its import hook is registered; openai is not imported yet
tokenmeter.uninstrument()
inside = threading.Event()

class HoldOpenAIImport:
    '''Keeps the importing thread inside openai's import a moment, as a slow import does.'''
    def find_spec(self, name, path=None, target=None):
        if name == "openai._client" and not inside.is_set():
            inside.set()
            time.sleep(0.5)
        return None

sys.meta_path.insert(0, HoldOpenAIImport())
importing = threading.Thread(target=lambda: __import__("openai"))
importing.start()
inside.wait()
tokenmeter.instrument("openai")
importing.join()
from openai import _base_client
print(type(_base_client.SyncAPIClient.__dict__["request"]).__name__)
"""


def test_instrument_while_another_thread_imports_the_sdk_never_hangs(tmp_path: Path) -> None:
    """The importing thread holds the SDK's import lock while its post-import hook patches;
    instrument() on another thread must not hold our lock while it waits for that import."""
    done = run_python(
        "-c", INSTRUMENT_WHILE_ANOTHER_THREAD_IMPORTS, env=dict(os.environ), cwd=tmp_path
    )
    assert done.stdout.split() == ["FunctionWrapper"]


# -- copies and pickles of what the SDK returned through our proxies ------------------------------
def _sdk_refusal(action: Any, obj: Any) -> str:
    try:
        action(obj)
    except Exception as exc:
        return type(exc).__name__
    return "copied"


async def test_a_copied_stream_is_read_into_its_call_and_recorded_once(
    fake: FakeProvider, instrumented: Records, kit: ModuleType, is_async: bool
) -> None:
    """copy.copy() of an SDK stream reads the same response (it shares its iterator)."""
    stream = await chat(fake.openai_client(async_=is_async), kit, stream=True)
    twin = copy.copy(stream)
    assert isinstance(twin, openai.AsyncStream if is_async else openai.Stream)
    assert await kit.drain(twin)
    del stream, twin
    gc.collect()
    (record,) = instrumented()
    assert not record.estimated
    assert record.input_tokens == fake.openai_usage.prompt_tokens


@pytest.mark.parametrize("action", [copy.deepcopy, pickle.dumps])
def test_deepcopy_and_pickle_do_what_the_sdk_does(
    fake: FakeProvider, records: Records, action: Any
) -> None:
    """The SDK's streams and raw responses hold its client (a lock): a TypeError, not wrapt's
    NotImplementedError, for code that falls back on it."""

    def made() -> list[Any]:
        client = fake.openai_client()
        stream = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
        return [stream, raw]

    bare = [_sdk_refusal(action, obj) for obj in made()]
    tokenmeter.instrument("openai")
    assert [_sdk_refusal(action, obj) for obj in made()] == bare == ["TypeError"] * 2


FORK_WITH_A_STREAM_OPEN = """
import multiprocessing, os, sys
import tokenmeter
from tokenmeter.testing import FakeProvider
tokenmeter.instrument()
fake = FakeProvider(stream_chunks=5).start()
stream = fake.openai_client().chat.completions.create(model="gpt-4o", messages=[], stream=True)
next(stream)  # open in the parent when it forks

def child():
    tokenmeter.record("openai", "gpt-4o", 1, 1, tags={"who": "child"})

worker = multiprocessing.get_context("fork").Process(target=child)
worker.start()
worker.join()
pid = os.fork()
if pid == 0:
    sys.exit(0)  # a plain child, exiting normally: its exit hooks run
os.waitpid(pid, 0)
list(stream)
"""


def test_a_stream_open_in_the_parent_at_fork_is_not_recorded_by_the_child(tmp_path: Path) -> None:
    env = {**os.environ, "TOKENMETER_SINKS": "jsonl", "TOKENMETER_DIR": str(tmp_path)}
    done = run_python("-c", FORK_WITH_A_STREAM_OPEN, env=env, cwd=tmp_path)
    assert "Traceback" not in done.stderr
    lines = [json.loads(line) for line in (tmp_path / "usage.jsonl").read_text().splitlines()]
    assert sorted((r["streamed"], r["estimated"], r["tags"]) for r in lines) == [
        (False, False, {"who": "child"}),
        (True, False, {}),
    ]
