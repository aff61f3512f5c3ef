"""Every billed OpenAI route makes exactly one record with normalised counts, sync and async.

The real openai SDK talks to FakeProvider over loopback; the expected counts come from the fake's
own usage (``fake.openai_usage.normalized()``), so the arithmetic is checked, not repeated.
"""

from __future__ import annotations

import logging
import warnings
from decimal import Decimal
from types import ModuleType
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from provider_helpers import MESSAGES, Answer, Records, not_metered_in_docs, only

import tokenmeter
from tokenmeter._models import UsageRecord
from tokenmeter.providers import _core
from tokenmeter.testing import FakeProvider, OpenAIUsage


def assert_counts(record: UsageRecord, fake: FakeProvider) -> None:
    usage = fake.openai_usage.normalized()
    assert record.input_tokens == usage.input_tokens
    assert record.cache_read_tokens == usage.cache_read_tokens
    assert record.output_tokens == usage.output_tokens
    assert record.reasoning_tokens == usage.reasoning_tokens
    assert record.total_tokens == record.input_tokens + record.output_tokens
    assert record.status == "ok" and record.error is None
    assert record.latency_ms is not None and record.latency_ms > 0


@pytest.mark.parametrize("stream", [False, True])
async def test_chat_create(
    fake: FakeProvider, instrumented: Records, kit: ModuleType, is_async: bool, stream: bool
) -> None:
    client = fake.openai_client(async_=is_async)
    result = await kit.maybe(
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=stream)
    )
    if stream:
        assert isinstance(result, openai.AsyncStream if is_async else openai.Stream)
        chunks = await kit.drain(result)
        assert chunks and all(isinstance(c, ChatCompletionChunk) for c in chunks)
        assert all(c.choices for c in chunks)  # the usage-only chunk tokenmeter asked for is hidden
    else:
        assert isinstance(result, ChatCompletion)
    record = only(instrumented())
    assert_counts(record, fake)
    assert record.model_provider == "openai"
    assert record.model_name == "gpt-4o-2024-08-06"  # the response's model
    assert record.request_model == "gpt-4o"
    assert record.operation == "chat.completions"
    assert record.streamed is stream
    assert record.request_id is not None and record.request_id.startswith("chatcmpl-")
    assert record.estimated_cost_usd is not None and record.estimated_cost_usd > 0


async def test_a_price_set_under_the_requested_model_prices_the_snapshot_that_answered(
    instrumented: Records, kit: ModuleType, is_async: bool
) -> None:
    """OpenAI answers a ``gpt-4`` call as ``gpt-4-0613``: the user's price for gpt-4 ($15 / $30)
    was not applied, and 1M tokens in and 1M out were recorded at the table's $90, not $45."""
    tokenmeter.configure(prices={"gpt-4": {"input_per_mtok": 15, "output_per_mtok": 30}})
    million = OpenAIUsage(
        prompt_tokens=1_000_000, completion_tokens=1_000_000, cached_tokens=0, reasoning_tokens=0
    )
    with FakeProvider(openai_usage=million, models={"gpt-4": "gpt-4-0613"}) as fake:
        client = fake.openai_client(async_=is_async)
        await kit.maybe(client.chat.completions.create(model="gpt-4", messages=MESSAGES))

    record = only(instrumented())
    assert record.model_name == "gpt-4-0613"
    assert (record.estimated_cost_usd, record.price_source) == (Decimal(45), "override")
    usage = {"input_tokens": 1_000_000, "output_tokens": 1_000_000}
    assert tokenmeter.price("openai", "gpt-4-0613", usage).total_usd == Decimal(45)


async def test_chat_parse(
    fake: FakeProvider, instrumented: Records, kit: ModuleType, is_async: bool
) -> None:
    client = fake.openai_client(async_=is_async)
    parsed = await kit.maybe(
        kit.chat_helpers(client).parse(model="gpt-4o", messages=MESSAGES, response_format=Answer)
    )
    assert isinstance(parsed.choices[0].message.parsed, Answer)
    record = only(instrumented())
    assert_counts(record, fake)
    assert record.operation == "chat.completions" and not record.streamed


async def test_chat_stream_helper(
    fake: FakeProvider, instrumented: Records, kit: ModuleType, is_async: bool
) -> None:
    client = fake.openai_client(async_=is_async)
    manager = kit.chat_helpers(client).stream(model="gpt-4o", messages=MESSAGES)
    if is_async:
        async with manager as stream:
            events = [event async for event in stream]
            final = await stream.get_final_completion()
    else:
        with manager as stream:
            events = list(stream)
            final = stream.get_final_completion()
    assert events and final.choices[0].message.content
    assert final.usage is None  # the caller did not ask for usage, so the helper shows none
    record = only(instrumented())
    assert_counts(record, fake)
    assert record.streamed


@pytest.mark.parametrize("stream", [False, True])
async def test_responses_create(
    fake: FakeProvider, instrumented: Records, kit: ModuleType, is_async: bool, stream: bool
) -> None:
    client = fake.openai_client(async_=is_async)
    result = await kit.maybe(client.responses.create(model="gpt-4o", input="hi", stream=stream))
    if stream:
        events = await kit.drain(result)
        assert events[-1].type == "response.completed"
        response_id = events[-1].response.id
    else:
        response_id = result.id
    record = only(instrumented())
    assert_counts(record, fake)
    assert record.operation == "responses"
    assert record.streamed is stream
    assert record.request_id == response_id
    assert record.model_name == "gpt-4o-2024-08-06" and record.request_model == "gpt-4o"


async def test_responses_parse_and_stream_helper(
    fake: FakeProvider, instrumented: Records, kit: ModuleType, is_async: bool
) -> None:
    client = fake.openai_client(async_=is_async)
    parsed = await kit.maybe(client.responses.parse(model="gpt-4o", input="hi", text_format=Answer))
    assert isinstance(parsed.output_parsed, Answer)
    manager = client.responses.stream(model="gpt-4o", input="hi")
    if is_async:
        async with manager as stream:
            async for _ in stream:
                pass
            final = await stream.get_final_response()
    else:
        with manager as stream:
            for _ in stream:
                pass
            final = stream.get_final_response()
    first, second = instrumented()
    assert_counts(first, fake)
    assert_counts(second, fake)
    assert (first.streamed, second.streamed) == (False, True)
    assert second.request_id == final.id


async def test_responses_retrieve_is_recorded_once_per_id(
    fake: FakeProvider, instrumented: Records, kit: ModuleType, is_async: bool
) -> None:
    client = fake.openai_client(async_=is_async)
    created = await kit.maybe(client.responses.create(model="gpt-4o", input="hi"))
    for _ in range(3):
        again = await kit.maybe(client.responses.retrieve(created.id))
        assert again.usage is not None
    assert only(instrumented()).request_id == created.id


async def test_a_retrieved_id_still_in_use_is_not_forgotten(
    instrumented: Records, kit: ModuleType, is_async: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ids that stop a second record were dropped oldest recorded first, whatever was
    looked up since: a background job retrieved every 2,000 responses was recorded (and billed,
    $0.0125 on gpt-4o) again once 10,000 others had been recorded. A hit keeps its id; the bound
    is made 5 here so that 6 other responses pass it."""
    monkeypatch.setattr(_core, "_RECORDED_MAX", 5)

    def answer(request: Any) -> Any:
        body = kit.response_body("gpt-4o-2024-08-06", [], [], 1000, 1000)
        body.update(id=request.url.path.rsplit("/", 1)[-1], background=True)
        return kit.http.Response(200, json=body)

    client = kit.mock_openai(answer, is_async=is_async)
    await kit.maybe(client.responses.retrieve("resp_A"))  # done: its record
    for other in range(6):
        await kit.maybe(client.responses.retrieve(f"resp_{other}"))
        if other % 2 == 0:
            await kit.maybe(client.responses.retrieve("resp_A"))  # shown again: no record
    await kit.maybe(client.responses.retrieve("resp_A"))
    records = instrumented()
    assert [r.request_id for r in records] == ["resp_A"] + [f"resp_{i}" for i in range(6)]
    assert records[0].estimated_cost_usd == Decimal("0.0125")


@pytest.mark.requires(openai=">=1.82")  # retrieve(stream=True) replays a response's events
async def test_streamed_retrieve_of_a_recorded_response_is_not_recorded_again(
    fake: FakeProvider, instrumented: Records, kit: ModuleType, is_async: bool
) -> None:
    client = fake.openai_client(async_=is_async)
    created = await kit.maybe(client.responses.create(model="gpt-4o", input="hi"))
    await kit.drain(await kit.maybe(client.responses.retrieve(created.id, stream=True)))
    await kit.drain(await kit.maybe(client.responses.retrieve(created.id, stream=True)))
    assert only(instrumented()).request_id == created.id


@pytest.mark.requires(openai=">=1.80")  # background responses
async def test_background_response_is_recorded_when_its_usage_arrives(
    fake: FakeProvider, instrumented: Records, kit: ModuleType, is_async: bool
) -> None:
    client = fake.openai_client(async_=is_async)
    queued = await kit.maybe(client.responses.create(model="gpt-4o", input="hi", background=True))
    assert queued.usage is None
    assert instrumented() == []  # nothing billed is known yet: no record
    await kit.maybe(client.responses.retrieve(queued.id))
    await kit.maybe(client.responses.retrieve(queued.id))
    record = only(instrumented())
    assert record.request_id == queued.id
    assert_counts(record, fake)


#: What a background response used: $0.006 on gpt-4.1.
BACKGROUND_USAGE = {
    "input_tokens": 1000,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 500,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 1500,
}


def background_response(status: str, usage: dict[str, Any] | None) -> dict[str, Any]:
    """A ``background`` Responses answer in ``status``, with ``usage`` (None: null)."""
    return {
        "id": "resp_bg",
        "object": "response",
        "created_at": 1,
        "status": status,
        "background": True,
        "model": "gpt-4.1-2025-04-14",
        "output": [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": usage,
    }


@pytest.mark.requires(openai=">=1.80")  # background responses
async def test_polls_of_a_background_response_that_time_out_make_no_record(
    instrumented: Records, kit: ModuleType, is_async: bool
) -> None:
    """A poll (``responses.retrieve``) that timed out left an estimated record of model
    "unknown" at no known cost, beside the one record of the retrieve that found the response
    done: 3 timed-out polls, 4 records. A retrieve bills nothing."""
    usage = BACKGROUND_USAGE
    polls = []

    def answer(request: Any) -> Any:
        if request.method == "POST":
            return kit.http.Response(200, json=background_response("queued", None))
        polls.append(request)
        if len(polls) <= 3:  # a slow proxy, a short timeout
            raise kit.http.ReadTimeout("timed out", request=request)
        return kit.http.Response(200, json=background_response("completed", usage))

    client = kit.mock_openai(answer, is_async=is_async)
    created = await kit.maybe(client.responses.create(model="gpt-4.1", input="hi", background=True))
    status = None
    while status != "completed":
        try:
            status = (await kit.maybe(client.responses.retrieve(created.id))).status
        except openai.APITimeoutError:
            continue
    record = only(instrumented())
    assert (record.model_name, record.input_tokens, record.output_tokens) == (
        "gpt-4.1-2025-04-14",
        1000,
        500,
    )
    assert not record.estimated and record.status == "ok"


@pytest.mark.requires(openai=">=1.80")  # background responses
@pytest.mark.parametrize("billed", [True, False])
async def test_a_cancelled_background_response_is_recorded_by_its_cancel(
    instrumented: Records, kit: ModuleType, is_async: bool, billed: bool
) -> None:
    """``responses.cancel()`` of a background response answers it ``cancelled`` with the usage
    billed up to then (1000 in / 500 out: $0.006 on gpt-4.1), and made no record: only a later
    retrieve did, which an application that cancels rarely makes. The cancel's answer is the
    record now, and a retrieve after it adds none. Cancelled before it ran (usage null), it
    makes none, and its retrieve no estimate either (an estimate of the create's input was
    recorded)."""
    usage = BACKGROUND_USAGE
    cancelled = background_response("cancelled", usage if billed else None)

    def answer(request: Any) -> Any:
        queued = request.method == "POST" and request.url.path.endswith("/responses")
        return kit.http.Response(
            200, json=background_response("queued", None) if queued else cancelled
        )

    client = kit.mock_openai(answer, is_async=is_async)
    created = await kit.maybe(
        client.responses.create(model="gpt-4.1", input="a long task", background=True)
    )
    assert instrumented() == []
    await kit.maybe(client.responses.cancel(created.id))
    records = instrumented()
    await kit.maybe(client.responses.retrieve(created.id))
    assert instrumented() == records
    if not billed:
        assert records == []
        return
    record = only(records)
    assert (record.operation, record.request_id, record.model_name) == (
        "responses",
        "resp_bg",
        "gpt-4.1-2025-04-14",
    )
    assert (record.input_tokens, record.output_tokens, record.estimated) == (1000, 500, False)
    listed = tokenmeter.price("openai", "gpt-4.1", {"input_tokens": 1000, "output_tokens": 500})
    assert record.estimated_cost_usd == listed.total_usd


@pytest.mark.parametrize(
    ("status", "error", "expected"),
    [
        ("failed", {"code": "server_error", "message": "boom"}, ("error", "server_error")),
        ("failed", None, ("error", "response.failed")),
        ("incomplete", None, ("ok", None)),
    ],
)
async def test_a_failed_response_is_an_error_record_with_its_billed_usage(
    instrumented: Records, kit: ModuleType, is_async: bool, status: str, error: Any, expected: Any
) -> None:
    """``responses.create`` answered with status ``failed`` (the SDK raises nothing): an error
    record named by the response's error code, keeping the usage it was billed and its cost. An
    ``incomplete`` one (max_output_tokens reached) succeeded."""
    usage = {
        "input_tokens": 20,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 9,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 29,
    }
    body = {
        "id": "resp_failed",
        "object": "response",
        "created_at": 1,
        "status": status,
        "error": error,
        "model": "gpt-4o-2024-08-06",
        "output": [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": usage,
    }
    client = kit.mock_openai(lambda request: kit.http.Response(200, json=body), is_async=is_async)
    result = await kit.maybe(client.responses.create(model="gpt-4o", input="hi"))
    assert result.status == status
    record = only(instrumented())
    assert (record.status, record.error) == expected
    assert (record.input_tokens, record.output_tokens, record.estimated) == (20, 9, False)
    assert record.estimated_cost_usd is not None and record.estimated_cost_usd > 0


async def test_embeddings(
    fake: FakeProvider, instrumented: Records, kit: ModuleType, is_async: bool
) -> None:
    client = fake.openai_client(async_=is_async)
    result = await kit.maybe(
        client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    )
    assert len(result.data) == 2
    record = only(instrumented())
    assert record.input_tokens == record.total_tokens == fake.openai_usage.prompt_tokens
    assert record.output_tokens == record.cache_read_tokens == 0
    assert record.operation == "embeddings"
    assert record.model_name == "text-embedding-3-small"


@pytest.mark.parametrize("stream", [False, True])
async def test_legacy_completions(
    fake: FakeProvider, instrumented: Records, kit: ModuleType, is_async: bool, stream: bool
) -> None:
    client = fake.openai_client(async_=is_async)
    result = await kit.maybe(
        client.completions.create(model="gpt-3.5-turbo-instruct", prompt="hi", stream=stream)
    )
    if stream:
        chunks = await kit.drain(result)
        assert all(chunk.choices for chunk in chunks)
    record = only(instrumented())
    assert_counts(record, fake)
    assert record.operation == "completions" and record.streamed is stream


@pytest.mark.skipif(not hasattr(openai.OpenAI, "decisions"), reason="no client.decisions")
async def test_decisions(instrumented: Records, kit: ModuleType, is_async: bool) -> None:
    """``client.decisions.create`` (openai 3.57+, ``POST /decisions``) is billed by the tokens of
    its ``Decision.usage``: one record, priced (it made none: a billed call missing from every
    report)."""
    body = {
        "model": "gpt-6-luna",
        "answers": [{"type": "predicate", "name": "spam", "probability": 0.93}],
        "usage": {
            "input_tokens": 1000,
            "input_tokens_details": {"cached_tokens": 200, "cache_write_tokens": 0},
            "output_tokens": 20,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 1020,
        },
    }
    client = kit.mock_openai(lambda request: kit.http.Response(200, json=body), is_async=is_async)
    question = {"type": "predicate", "name": "spam", "question": "Is this spam?"}
    decision = await kit.maybe(
        client.decisions.create(model="gpt-6-luna", input="Buy now!!!", questions=[question])
    )
    assert decision.answers[0].type == "predicate"
    record = only(instrumented())
    assert record.operation == "decisions" and not record.streamed
    assert (record.model_name, record.request_model) == ("gpt-6-luna", "gpt-6-luna")
    assert (record.input_tokens, record.cache_read_tokens, record.output_tokens) == (1000, 200, 20)
    assert (record.estimated, record.status) == (False, "ok")
    # 800 x $0.10/M + 200 cached x $0.01/M + 20 x $0.50/M
    assert record.estimated_cost_usd == Decimal("0.000092")


@pytest.mark.parametrize(
    ("ttl_30m", "ttl_12h", "cost"),
    [
        (50_000, 0, Decimal("0.1175")),  # 50,000 x $1 + 50,000 x $1.25 + 1,000 x $5 per M
        (0, 50_000, Decimal("0.18")),  # the writes at $2.50
        (25_000, 25_000, Decimal("0.14875")),
    ],
)
async def test_responses_12_hour_cache_writes(
    instrumented: Records,
    kit: ModuleType,
    is_async: bool,
    ttl_30m: int,
    ttl_12h: int,
    cost: Decimal,
) -> None:
    """OpenAI's 12-hour cache writes (``cache_write_tokens_details.ttl_12h_tokens``) are billed
    at their own rate ($2.50 per million on gpt-6.1-terra, twice the 30-minute $1.25): they
    were all priced at the 30-minute rate, 50,000 of them $0.1175 where $0.18 was billed."""
    body = {
        "id": "resp_ttl",
        "object": "response",
        "created_at": 1790000000,
        "status": "completed",
        "model": "gpt-6.1-terra-2026-10-20",
        "output": [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": 100_000,
            "input_tokens_details": {
                "cached_tokens": 0,
                "cache_write_tokens": 50_000,
                "cache_write_tokens_details": {
                    "ttl_30m_tokens": ttl_30m,
                    "ttl_12h_tokens": ttl_12h,
                },
            },
            "output_tokens": 1_000,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 101_000,
        },
    }
    client = kit.mock_openai(lambda request: kit.http.Response(200, json=body), is_async=is_async)
    await kit.maybe(client.responses.create(model="gpt-6.1-terra", input="hello"))
    record = only(instrumented())
    assert record.cache_write_tokens == 50_000
    assert record.estimated_cost_usd == cost
    # The same usage as a plain dict (record_response(), a proxy's log) reads alike.
    read = tokenmeter.usage.extract(body).usage
    assert (read.cache_write_tokens, read.cache_write_1h_tokens) == (50_000, ttl_12h)
    assert tokenmeter.price("openai", "gpt-6.1-terra", read).total_usd == cost


@pytest.mark.parametrize("stream", [False, True])
async def test_with_raw_response(
    fake: FakeProvider, instrumented: Records, kit: ModuleType, is_async: bool, stream: bool
) -> None:
    client = fake.openai_client(async_=is_async)
    raw = await kit.maybe(
        client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=MESSAGES, stream=stream
        )
    )
    assert raw.http_response.status_code == 200
    assert raw.headers is not None
    parsed = await kit.maybe(raw.parse())
    if stream:
        assert isinstance(parsed, openai.AsyncStream if is_async else openai.Stream)
        assert all(chunk.choices for chunk in await kit.drain(parsed))
    else:
        assert isinstance(parsed, ChatCompletion)
        assert await kit.maybe(raw.parse()) is parsed  # parse() still caches
    record = only(instrumented())  # read through parse(): the usage chunk asked for is hidden
    assert_counts(record, fake)
    assert record.streamed is stream


async def test_with_raw_response_is_recorded_without_parse(
    fake: FakeProvider, instrumented: Records, kit: ModuleType, is_async: bool
) -> None:
    client = fake.openai_client(async_=is_async)
    raw = await kit.maybe(
        client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    )
    assert raw.http_response.json()["usage"]["prompt_tokens"] == 19
    assert_counts(only(instrumented()), fake)


@pytest.mark.parametrize("stream", [False, True])
async def test_with_streaming_response(
    fake: FakeProvider, instrumented: Records, kit: ModuleType, is_async: bool, stream: bool
) -> None:
    client = fake.openai_client(async_=is_async)
    manager = client.chat.completions.with_streaming_response.create(
        model="gpt-4o", messages=MESSAGES, stream=stream
    )
    if is_async:
        async with manager as response:
            parsed = await response.parse()
            items = [c async for c in parsed] if stream else [parsed]
    else:
        with manager as response:
            parsed = response.parse()
            items = list(parsed) if stream else [parsed]
    assert all(item.choices for item in items)
    assert_raw_record(only(instrumented()), fake, stream)


def assert_raw_record(record: UsageRecord, fake: FakeProvider, stream: bool) -> None:
    """A raw stream's body is the caller's to read: no usage it did not ask for is asked for
    (test_a_raw_stream_read_line_by_line_is_the_bare_body), so it is estimated."""
    assert record.streamed is stream
    if stream:
        assert "stream_options" not in fake.requests[-1].body
        assert (record.status, record.estimated) == ("ok", True)
        assert record.input_tokens > 0 and record.output_tokens > 0
    else:
        assert_counts(record, fake)


@pytest.mark.parametrize("read", ["json", "text", "read", "iter_bytes"])
async def test_with_streaming_response_read_without_parse(
    fake: FakeProvider, instrumented: Records, kit: ModuleType, is_async: bool, read: str
) -> None:
    """A caller that reads the body itself (``json()``, ``text()``...) instead of ``parse()``
    made a billed call all the same: it is recorded when the ``with`` block closes the response
    (it was not recorded at all), from the body when it was kept, or as it passed by
    (``iter_bytes``: tests/providers/test_raw_bodies.py has the other ways)."""
    client = fake.openai_client(async_=is_async)
    manager = client.chat.completions.with_streaming_response.create(
        model="gpt-4o", messages=MESSAGES
    )
    if is_async:
        async with manager as response:
            if read == "iter_bytes":
                body = b"".join([part async for part in response.iter_bytes()])
            else:
                body = await getattr(response, read)()
    else:
        with manager as response:
            body = (
                b"".join(response.iter_bytes())
                if read == "iter_bytes"
                else getattr(response, read)()
            )
    assert body  # the caller got the body, as without tokenmeter
    record = only(instrumented())  # ``response`` is still alive here
    assert_counts(record, fake)
    assert not record.streamed and not record.estimated


@pytest.mark.parametrize("stream", [False, True])
async def test_azure_client(
    fake: FakeProvider, instrumented: Records, kit: ModuleType, is_async: bool, stream: bool
) -> None:
    client = fake.azure_openai_client(async_=is_async)
    result = await kit.maybe(
        client.chat.completions.create(
            model="my-gpt4o-deployment", messages=MESSAGES, stream=stream
        )
    )
    if stream:
        await kit.drain(result)
    record = only(instrumented())
    assert record.model_provider == "azure"
    assert record.request_model == "my-gpt4o-deployment"  # the deployment name
    assert_counts(record, fake)


async def test_a_failed_call_to_a_deployment_no_price_table_knows_cost_nothing(
    fake: FakeProvider,
    instrumented: Records,
    kit: ModuleType,
    is_async: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A failed call is known by the name the request gave (an Azure deployment's own name):
    it was recorded with an unknown cost, an "unpriced" call in every report, with a warning
    that no price is known for 'prod-chat', where nothing was billed."""
    client = fake.azure_openai_client(async_=is_async, max_retries=0)
    fake.fail_next(429)
    with pytest.raises(openai.RateLimitError):
        await kit.maybe(client.chat.completions.create(model="prod-chat", messages=MESSAGES))
    record = only(instrumented())
    assert (record.status, record.model_name, record.estimated_cost_usd) == (
        "error",
        "prod-chat",
        0,
    )
    assert "no price" not in caplog.text


@pytest.mark.parametrize(
    ("base_url", "provider"),
    [
        ("https://api.groq.com/openai/v1", "groq"),
        ("https://api.deepseek.com/v1", "deepseek"),
        ("https://openrouter.ai/api/v1", "openrouter"),
        ("https://api.openai.com/v1", "openai"),
        ("https://example-llm.internal/v1", "openai"),
    ],
)
async def test_compatible_base_url_names_the_provider(
    instrumented: Records, kit: ModuleType, is_async: bool, base_url: str, provider: str
) -> None:
    seen: list[str] = []

    def handler(request: Any) -> Any:
        seen.append(str(request.url))
        return kit.http.Response(200, json=kit.chat_body(model="llama-3.3-70b-versatile"))

    client = kit.mock_openai(handler, is_async=is_async, base_url=base_url)
    await kit.maybe(client.chat.completions.create(model="llama-3.3-70b", messages=MESSAGES))
    assert seen[0].startswith(base_url)
    record = only(instrumented())
    assert record.model_provider == provider
    assert record.model_name == "llama-3.3-70b-versatile"


async def test_uncovered_routes_make_no_record(
    fake: FakeProvider, instrumented: Records, kit: ModuleType, is_async: bool
) -> None:
    client = fake.openai_client(async_=is_async)
    with pytest.raises(openai.NotFoundError):
        await kit.maybe(client.models.list())
    assert instrumented() == []


def test_records_are_priced_and_attributed(fake: FakeProvider, instrumented: Records) -> None:
    client = fake.openai_client()
    with tokenmeter.session("pricing", tags={"team": "a"}) as session:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    record = only(instrumented())
    assert record.session_name == "pricing" and record.tags == {"team": "a"}
    assert record.price_source and record.cost_breakdown
    assert session.summary.calls == 1
    assert session.summary.cost_usd == record.estimated_cost_usd


def test_summaries_count_a_call_as_soon_as_it_returns(
    fake: FakeProvider, instrumented: Records, caplog: pytest.LogCaptureFixture
) -> None:
    """The record is built off the caller's thread; a summary read right after the call (no
    flush) still counts it, exactly once, in the session and its ancestors."""
    client = fake.openai_client()
    with caplog.at_level(logging.WARNING, logger="tokenmeter"):
        with (
            tokenmeter.session("outer") as outer,
            tokenmeter.session("inner", budget_usd=0) as inner,
        ):
            client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
            assert inner.summary.calls == 1 and outer.summary.calls == 1
            assert inner.over_budget
            client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
            assert inner.summary.calls == 2
        records = instrumented()
    assert [r.session_name for r in records] == ["inner", "inner"]
    assert outer.summary.calls == 2 and inner.summary.input_tokens == sum(
        r.input_tokens for r in records
    )
    assert inner.summary.cost_usd == sum(r.estimated_cost_usd or 0 for r in records)
    assert sum("over budget" in r.getMessage() for r in caplog.records) == 1


_CUT_USAGE = {"prompt_tokens": 5_000, "completion_tokens": 16_384, "total_tokens": 21_384}


def _cut_completion(finish: str) -> dict[str, Any]:
    message = {"role": "assistant", "content": '{"answer": "aaaa' if finish == "length" else None}
    return {
        "id": "chatcmpl-cut",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": _CUT_USAGE,
    }


@pytest.mark.parametrize(
    ("finish", "raised"),
    [("length", "LengthFinishReasonError"), ("content_filter", "ContentFilterFinishReasonError")],
)
@pytest.mark.parametrize("raw", [False, True], ids=["parse", "with_raw_response"])
async def test_a_billed_answer_a_parse_helper_refuses_keeps_its_usage(
    instrumented: Records, kit: ModuleType, is_async: bool, finish: str, raised: str, raw: bool
) -> None:
    """``parse()`` raises after the answer came when it cannot be the caller's type (cut at the
    output cap, filtered): the call was billed, but recorded at 0 tokens and $0 (through
    ``with_raw_response``, at an unknown cost)."""
    if raw and is_async:
        pytest.skip("an async raw response is read from its JSON body: no parse() runs there")
    body = _cut_completion(finish)
    client = kit.mock_openai(lambda request: kit.http.Response(200, json=body), is_async=is_async)
    helpers = kit.chat_helpers(client)
    request = {"model": "gpt-4o", "messages": MESSAGES, "response_format": Answer}
    with pytest.raises(Exception) as caught:
        if raw:
            helpers.with_raw_response.parse(**request).parse()
        else:
            await kit.maybe(helpers.parse(**request))
    assert type(caught.value).__name__ == raised  # the application's error, as without us
    record = only(instrumented())
    assert (record.input_tokens, record.output_tokens) == (5_000, 16_384)
    assert (record.status, record.error) == ("error", raised)
    expected = tokenmeter.price("openai", "gpt-4o-2024-08-06", record.usage)
    assert record.estimated_cost_usd == expected.total_usd and expected.total_usd


async def test_an_incomplete_response_responses_parse_refuses_keeps_its_usage(
    instrumented: Records, kit: ModuleType, is_async: bool
) -> None:
    """``responses.parse`` of an answer cut at ``max_output_tokens``: the SDK's parser raises
    pydantic's ValidationError on the partial JSON; its 3,000 / 800 tokens were recorded as 0."""
    text = {"type": "output_text", "text": '{"answer": "aa', "annotations": []}
    message = {"type": "message", "id": "msg_1", "status": "incomplete", "role": "assistant"}
    body = kit.response_body("gpt-4o-2024-08-06", [{**message, "content": [text]}], [], 3_000, 800)
    body.update(status="incomplete", incomplete_details={"reason": "max_output_tokens"})
    client = kit.mock_openai(lambda request: kit.http.Response(200, json=body), is_async=is_async)
    with pytest.raises(Exception, match="validation error"):
        await kit.maybe(client.responses.parse(model="gpt-4o", input="hi", text_format=Answer))
    record = only(instrumented())
    assert (record.input_tokens, record.output_tokens, record.status) == (3_000, 800, "error")
    assert record.estimated_cost_usd


@pytest.mark.skipif(
    not hasattr(openai.resources.beta.Beta, "threads"),
    reason="no client.beta.threads in this openai",
)
def test_assistants_runs_are_not_metered_as_documented(records: Records, kit: ModuleType) -> None:
    """An Assistants run (``client.beta.threads.runs``) is billed per token (its ``usage``: 1,200
    in, 300 out here) and makes no record; the "Not metered" list did not name it, so a user
    took its spend for recorded. The docs' advice holds: the completed run, given to
    ``record_response()``, is one priced record."""
    run = {
        "id": "run_1",
        "object": "thread.run",
        "created_at": 1,
        "assistant_id": "asst_1",
        "thread_id": "thread_1",
        "status": "completed",
        "model": "gpt-4o-2024-08-06",
        "instructions": "",
        "tools": [],
        "usage": {"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500},
        "parallel_tool_calls": True,
        "truncation_strategy": {"type": "auto"},
        "tool_choice": "auto",
        "response_format": "auto",
        "metadata": {},
    }
    client = kit.mock_openai(lambda request: kit.http.Response(200, json=run))
    tokenmeter.instrument("openai")
    with warnings.catch_warnings():  # the SDK marks the Assistants API deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        done = client.beta.threads.runs.create(thread_id="thread_1", assistant_id="asst_1")

    assert done.usage is not None and done.usage.prompt_tokens == 1200
    assert records() == []
    assert "`client.beta.threads.runs`" in not_metered_in_docs()
    recorded = tokenmeter.record_response(done)
    assert (recorded.input_tokens, recorded.output_tokens) == (1200, 300)
    assert recorded.estimated_cost_usd


@pytest.mark.skipif(
    not hasattr(openai.resources.beta.Beta, "agents"),
    reason="no client.beta.agents in this openai",
)
def test_agent_sessions_are_not_metered_as_documented(records: Records, kit: ModuleType) -> None:
    """OpenAI's agent sessions (``client.beta.agents.sessions``) run their turns on OpenAI's
    side, billed per token (each turn's ``usage``), and no call of them is recorded: the docs'
    "Not metered" list says so."""
    turn = {
        "id": "turn_1",
        "agent_id": "agent_1",
        "created_at": 1,
        "object": "agent.session.turn",
        "session_id": "sess_1",
        "status": "completed",
        "usage": {
            "input_tokens": 50000,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 4000,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 54000,
        },
    }

    def server(request: Any) -> Any:
        if request.method == "POST":
            return kit.http.Response(204)
        return kit.http.Response(200, json=turn)

    client = kit.mock_openai(server)
    tokenmeter.instrument("openai")
    said = [{"type": "message", "role": "user", "content": "Fix the test"}]
    client.beta.agents.sessions.events.create("sess_1", events=said)
    done = client.beta.agents.sessions.turns.retrieve("turn_1", session_id="sess_1")

    assert done.usage is not None and done.usage.input_tokens == 50000
    assert records() == []
    assert "`client.beta.agents.sessions`" in not_metered_in_docs()
