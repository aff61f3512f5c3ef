"""Anthropic messages: create, the .stream() helper, parse, beta and Vertex, sync and async.

Anthropic's ``input_tokens`` excludes cache reads and writes: the record's input is the sum
(SPEC §3). Streams report usage on ``message_start`` and cumulatively on ``message_delta``: the
record must equal the non-streamed one, never a sum of the two.

Bedrock runs against the fake too: ``AnthropicBedrock`` signs with boto3 (static keys, offline) and
its streams arrive as AWS event-stream frames.
"""

from __future__ import annotations

import gc
from types import ModuleType
from typing import Any

import anthropic
import pytest
from anthropic import _base_client as anthropic_base_client
from anthropic.types import Message
from provider_helpers import (
    MESSAGES,
    Answer,
    Records,
    cut_reply,
    http_of,
    json_reply,
    mock_anthropic,
    not_metered_in_docs,
    only,
    sse_reply,
)

import tokenmeter
from tokenmeter._models import UsageRecord
from tokenmeter.testing import FakeProvider

MODEL = "claude-haiku-4-5"
SERVED = "claude-haiku-4-5-20251001"


def assert_counts(record: UsageRecord, fake: FakeProvider) -> None:
    usage = fake.anthropic_usage
    expected = usage.normalized()
    assert record.input_tokens == (
        usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens
    )
    assert record.input_tokens == expected.input_tokens
    assert record.cache_read_tokens == usage.cache_read_input_tokens
    assert record.cache_write_tokens == usage.cache_creation_input_tokens
    assert record.output_tokens == usage.output_tokens  # the final cumulative count, not a sum
    assert record.reasoning_tokens == usage.thinking_tokens
    assert record.model_provider == "anthropic"
    assert record.model_name == SERVED and record.request_model == MODEL
    assert record.operation == "messages"
    assert record.status == "ok"
    assert record.estimated_cost_usd is not None and record.estimated_cost_usd > 0


@pytest.fixture
def thinking_fake(fake: FakeProvider) -> FakeProvider:
    fake.set_usage(
        anthropic={
            "input_tokens": 30,
            "output_tokens": 40,
            "cache_read_input_tokens": 500,
            "cache_creation_5m": 60,
            "cache_creation_1h": 40,
            "thinking_tokens": 25,
        }
    )
    return fake


@pytest.mark.parametrize("stream", [False, True])
async def test_messages_create(
    thinking_fake: FakeProvider,
    instrumented: Records,
    kit: ModuleType,
    is_async: bool,
    stream: bool,
) -> None:
    client = thinking_fake.anthropic_client(async_=is_async)
    result = await kit.maybe(
        client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES, stream=stream)
    )
    if stream:
        assert isinstance(result, anthropic.AsyncStream if is_async else anthropic.Stream)
        events = await kit.drain(result)
        assert events[0].type == "message_start"
    else:
        assert isinstance(result, Message)
    record = only(instrumented())
    assert_counts(record, thinking_fake)
    assert record.streamed is stream
    assert record.request_id is not None and record.request_id.startswith("msg_")


async def test_stream_helper_text_stream_and_final_message(
    fake: FakeProvider, instrumented: Records, is_async: bool
) -> None:
    client = fake.anthropic_client(async_=is_async)
    manager = client.messages.stream(model=MODEL, max_tokens=64, messages=MESSAGES)
    if is_async:
        async with manager as stream:
            text = "".join([piece async for piece in stream.text_stream])
            final = await stream.get_final_message()
    else:
        with manager as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
    assert text and final.usage.output_tokens == fake.anthropic_usage.output_tokens
    record = only(instrumented())
    assert_counts(record, fake)
    assert record.streamed and record.request_id == final.id


async def test_stream_helper_get_final_message_alone(
    fake: FakeProvider, instrumented: Records, is_async: bool
) -> None:
    client = fake.anthropic_client(async_=is_async)
    if is_async:
        async with client.messages.stream(model=MODEL, max_tokens=64, messages=MESSAGES) as s:
            final = await s.get_final_message()
    else:
        with client.messages.stream(model=MODEL, max_tokens=64, messages=MESSAGES) as s:
            final = s.get_final_message()
    assert isinstance(final, Message)
    assert_counts(only(instrumented()), fake)


async def test_async_stream_has_the_close_methods_of_the_sdks_and_no_others(
    fake: FakeProvider, instrumented: Records
) -> None:
    """anthropic's ``AsyncStream`` has ``close()`` and no ``aclose()``: generic cleanup that
    asks ``hasattr(stream, "aclose")`` (closing any async resource) must take ``close()``, as
    without tokenmeter, not an ``aclose`` of ours that fails with AttributeError."""
    client = fake.anthropic_client(async_=True)
    stream = await client.messages.create(
        model=MODEL, max_tokens=64, messages=MESSAGES, stream=True
    )
    assert await stream.__anext__()
    assert hasattr(stream, "aclose") is hasattr(stream.__wrapped__, "aclose") is False

    await (stream.aclose() if hasattr(stream, "aclose") else stream.close())

    record = only(instrumented())
    assert (record.status, record.streamed) == ("ok", True)


async def test_stream_helper_left_early_records_what_was_reported(
    fake: FakeProvider, instrumented: Records, is_async: bool
) -> None:
    fake.stream_chunks = 50
    client = fake.anthropic_client(async_=is_async)
    manager = client.messages.stream(model=MODEL, max_tokens=64, messages=MESSAGES)
    if is_async:
        async with manager as stream:
            await stream.__anext__()  # message_start only
    else:
        with manager as stream:
            next(iter(stream))
    record = only(instrumented())  # at once: leaving the `with` closed the raw stream
    usage = fake.anthropic_usage
    assert record.input_tokens == usage.normalized().input_tokens  # message_start had it all
    # message_start's provisional count, the least billed: an estimate (the server went on)
    assert (record.output_tokens, record.estimated) == (1, True)
    del stream
    gc.collect()
    assert len(instrumented()) == 1


def _stream_event(kind: str, usage: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A ``message_start`` or ``message_delta`` event carrying ``usage``."""
    if kind == "message_delta":
        delta = {"stop_reason": "end_turn", "stop_sequence": None}
        return kind, {"type": kind, "delta": delta, "usage": usage}
    message = {
        "id": "msg_order",
        "type": "message",
        "role": "assistant",
        "model": SERVED,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }
    return kind, {"type": kind, "message": message}


_START = _stream_event("message_start", {"input_tokens": 25, "output_tokens": 1})
_DELTA = _stream_event("message_delta", {"output_tokens": 410})
#: Newer API versions repeat the input and cache counts on message_delta (cumulative too).
_FULL_DELTA = _stream_event(
    "message_delta",
    {"input_tokens": 25, "cache_read_input_tokens": 300, "output_tokens": 410},
)
_STOP = ("message_stop", {"type": "message_stop"})


@pytest.mark.parametrize(
    ("events", "cache_read"),
    [
        pytest.param([_DELTA, _START, _STOP], 0, id="delta-before-start"),
        pytest.param([_START, _DELTA, _START, _STOP], 0, id="start-again-after-delta"),
        pytest.param([_START, _FULL_DELTA, _START, _STOP], 300, id="full-delta-then-start"),
    ],
)
async def test_stream_usage_is_the_final_count_whatever_the_event_order(
    kit: ModuleType,
    instrumented: Records,
    is_async: bool,
    caplog: pytest.LogCaptureFixture,
    events: list[tuple[str, object]],
    cache_read: int,
) -> None:
    """A message_delta's cumulative counts are the call's, whether a message_start (input and a
    provisional output of one token) comes before or after it: never message_start's output."""
    client = mock_anthropic(lambda request: sse_reply(kit.http, events), is_async=is_async)

    stream = await kit.maybe(
        client.messages.create(model=MODEL, max_tokens=512, messages=MESSAGES, stream=True)
    )
    await kit.drain(stream)

    record = only(instrumented())
    assert (record.status, record.estimated) == ("ok", False)
    assert (record.input_tokens, record.output_tokens) == (25 + cache_read, 410)
    assert record.cache_read_tokens == cache_read
    assert "tokenmeter" not in caplog.text  # nothing was wrong with this usage


#: The usage of a call that read 4,000 tokens from the cache and wrote 300 (100 for an hour).
_CACHED_USAGE = {
    "input_tokens": 1000,
    "output_tokens": 200,
    "cache_read_input_tokens": 4000,
    "cache_creation_input_tokens": 300,
    "cache_creation": {"ephemeral_5m_input_tokens": 200, "ephemeral_1h_input_tokens": 100},
}


@pytest.mark.parametrize(
    "delta_usage",
    [
        pytest.param({"input_tokens": 0, "output_tokens": 200}, id="input-zeroed"),
        pytest.param(
            {
                "input_tokens": 0,
                "cache_read_input_tokens": 0,
                "cache_creation_input_tokens": 0,
                "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
                "output_tokens": 200,
            },
            id="every-input-count-zeroed",
        ),
    ],
)
async def test_a_message_delta_lowering_the_input_counts_keeps_message_start_s(
    kit: ModuleType, instrumented: Records, is_async: bool, delta_usage: dict[str, object]
) -> None:
    """Some Anthropic-compatible servers (SGLang's /v1/messages, gateways) close a stream with
    ``input_tokens: 0``: a cumulative count cannot fall, so message_start's input stays the call's
    and the record equals the non-streamed one (5,300 input, $0.00285; the stream's was 4,300 or
    0 input, $0.00185 or $0.001)."""
    _, start = _stream_event("message_start", {**_CACHED_USAGE, "output_tokens": 1})
    message = {**start["message"], "content": [{"type": "text", "text": "Paris."}]}
    text = {"type": "text_delta", "text": "Paris."}
    events = [
        ("message_start", start),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": text}),
        _stream_event("message_delta", delta_usage),
        _STOP,
    ]
    as_json = {**message, "stop_reason": "end_turn", "usage": _CACHED_USAGE}
    for stream in (False, True):
        reply = sse_reply(kit.http, events) if stream else json_reply(kit.http, as_json)
        client = mock_anthropic(lambda request, reply=reply: reply, is_async=is_async)
        answer = await kit.maybe(
            client.messages.create(model=MODEL, max_tokens=512, messages=MESSAGES, stream=stream)
        )
        if stream:
            await kit.drain(answer)

    whole, streamed = instrumented()
    assert (streamed.status, streamed.estimated) == ("ok", False)
    assert (streamed.input_tokens, streamed.output_tokens) == (1000 + 4000 + 300, 200)
    assert (streamed.cache_read_tokens, streamed.cache_write_tokens) == (4000, 300)
    assert streamed.estimated_cost_usd == whole.estimated_cost_usd
    assert streamed.cost_breakdown == whole.cost_breakdown  # the 1h writes among them


async def test_a_message_delta_correcting_message_start_s_input_estimate_wins(
    kit: ModuleType, instrumented: Records, is_async: bool
) -> None:
    """A gateway that puts an estimate in message_start (1,200 input) and the real count in the
    closing message_delta (1,000): the delta's is the call's, as the SDK's final message has
    it (keeping the larger of the two billed $0.00145 for a $0.00125 call)."""
    events = [
        _stream_event("message_start", {"input_tokens": 1200, "output_tokens": 1}),
        _stream_event("message_delta", {"input_tokens": 1000, "output_tokens": 50}),
        _STOP,
    ]
    client = mock_anthropic(lambda request: sse_reply(kit.http, events), is_async=is_async)
    stream = await kit.maybe(
        client.messages.create(model=MODEL, max_tokens=512, messages=MESSAGES, stream=True)
    )
    await kit.drain(stream)

    record = only(instrumented())
    assert (record.input_tokens, record.output_tokens, record.estimated) == (1000, 50, False)


async def test_a_stream_run_to_its_end_with_its_count_in_message_start_is_exact(
    kit: ModuleType, instrumented: Records, is_async: bool
) -> None:
    """A compatible server that gives the whole usage in message_start (output 410) and none in
    message_delta: the stream ran to message_stop, so that count is the call's (705fff2 made it
    an estimate, as for a stream left early)."""
    start = _stream_event("message_start", {"input_tokens": 25, "output_tokens": 410})
    bare_delta = ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}})
    text = {"type": "text_delta", "text": "Paris."}
    events = [
        start,
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": text}),
        bare_delta,
        _STOP,
    ]
    client = mock_anthropic(lambda request: sse_reply(kit.http, events), is_async=is_async)
    stream = await kit.maybe(
        client.messages.create(model=MODEL, max_tokens=512, messages=MESSAGES, stream=True)
    )
    await kit.drain(stream)

    record = only(instrumented())
    assert (record.input_tokens, record.output_tokens, record.estimated) == (25, 410, False)


async def test_stream_cut_after_text_is_estimated_not_message_start_count(
    kit: ModuleType, instrumented: Records, is_async: bool
) -> None:
    """A dropped connection after message_start and some text: the error record's output is the
    text that streamed by (estimated), not message_start's provisional token."""
    http = http_of(anthropic_base_client)
    text = {"type": "text_delta", "text": " The capital of France is Paris."}
    events = [
        _START,
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": text}),
    ]
    head = sse_reply(http, [events[0], *[events[1]] * 40]).content

    def server(request: object) -> object:
        return cut_reply(http, head)

    client = mock_anthropic(server, is_async=is_async)
    stream = await kit.maybe(
        client.messages.create(model=MODEL, max_tokens=512, messages=MESSAGES, stream=True)
    )
    with pytest.raises(Exception) as raised:
        await kit.drain(stream)

    record = only(instrumented())
    assert (record.status, record.error) == ("error", type(raised.value).__name__)
    assert record.input_tokens == 25  # message_start's, as reported
    assert record.estimated and record.output_tokens > 40  # 40 deltas of 7 words streamed by


async def test_a_stream_left_while_its_omitted_thinking_runs_counts_the_thinking_hinted(
    kit: ModuleType, instrumented: Records, is_async: bool
) -> None:
    """Thinking with ``display: "omitted"`` streams no thinking text; with the
    thinking-token-count beta its frames hint the tokens thought (``estimated_tokens``
    increments). Left while the model thinks (a stop button), the stream was recorded with
    message_start's provisional 1 output token where its 20 frames hinted 5,120 (read to its
    end: 5,130). A hint that is no count in bounds adds nothing."""
    start = _stream_event("message_start", {"input_tokens": 50, "output_tokens": 1})
    block = {"type": "thinking", "thinking": "", "signature": ""}
    opened = {"type": "content_block_start", "index": 0, "content_block": block}
    frame = {"type": "content_block_delta", "index": 0}
    thinking = [
        {"type": "thinking_delta", "thinking": "", "estimated_tokens": hint}
        for hint in [256] * 20 + [2**70, -5, None]
    ]
    events = [
        start,
        ("content_block_start", opened),
        *[("content_block_delta", frame | {"delta": delta}) for delta in thinking],
    ]
    client = mock_anthropic(lambda request: sse_reply(kit.http, events), is_async=is_async)
    stream = await kit.maybe(
        client.beta.messages.create(
            model=MODEL,
            max_tokens=8000,
            messages=MESSAGES,
            stream=True,
            thinking={"type": "enabled", "budget_tokens": 6000, "display": "omitted"},
            betas=["thinking-token-count-2026-05-13"],
        )
    )
    await kit.drain(stream)  # the user leaves here: no message_delta came
    await kit.maybe(stream.close())

    record = only(instrumented())
    assert (record.input_tokens, record.estimated, record.status) == (50, True, "ok")
    assert (record.output_tokens, record.reasoning_tokens) == (5_120, 5_120)


#: A compaction block's summary (``compaction={"type": "summarize"}``): about 1,150 tokens.
SUMMARY = (
    "The user and the assistant discussed the design of a caching layer, its eviction "
    "policy, and the tests that cover it. "
) * 40


@pytest.mark.parametrize("streamed", [True, False])
async def test_a_compaction_summary_without_its_usage_counts_as_output(
    kit: ModuleType, instrumented: Records, is_async: bool, streamed: bool
) -> None:
    """A compaction request's reply is one ``compaction`` block, its summary streamed as
    ``compaction_delta`` frames' ``content``. Left before its closing message_delta, the stream
    was recorded with message_start's provisional 1 output token where ~1,150 tokens of summary
    streamed by; so was a reply not streamed and without usage (a compatible server's)."""
    if streamed:
        frame = {"type": "content_block_delta", "index": 0}
        opened = {"type": "compaction", "content": None}
        events = [
            _stream_event("message_start", {"input_tokens": 20_000, "output_tokens": 1}),
            (
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": opened},
            ),
            *[
                (
                    "content_block_delta",
                    frame
                    | {"delta": {"type": "compaction_delta", "content": SUMMARY[at : at + 200]}},
                )
                for at in range(0, len(SUMMARY), 200)
            ],
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ]
        reply = sse_reply(kit.http, events)
    else:
        body = _stream_event("message_start", {})[1]["message"]
        body |= {"content": [{"type": "compaction", "content": SUMMARY}], "usage": None}
        reply = json_reply(kit.http, body)
    client = mock_anthropic(lambda request: reply, is_async=is_async)
    asked = {
        "model": MODEL,
        "max_tokens": 8000,
        "messages": MESSAGES,
        "betas": ["compact-2026-09-04"],
        "extra_body": {"compaction": {"type": "summarize"}},  # older SDKs lack the parameter
    }
    if streamed:
        stream = await kit.maybe(client.beta.messages.create(stream=True, **asked))
        await kit.drain(stream)  # left here: no message_delta came
        await kit.maybe(stream.close())
    else:
        await kit.maybe(client.beta.messages.create(**asked))

    record = only(instrumented())
    assert (record.estimated, record.status) == (True, "ok")
    summary = tokenmeter.estimate(MODEL, output=SUMMARY).output_tokens
    assert record.output_tokens == summary > 1_000


@pytest.mark.requires(anthropic=">=0.77")  # messages.parse()
async def test_messages_parse(
    fake: FakeProvider, instrumented: Records, kit: ModuleType, is_async: bool
) -> None:
    client = fake.anthropic_client(async_=is_async)
    parsed = await kit.maybe(
        client.messages.parse(model=MODEL, max_tokens=64, messages=MESSAGES, output_format=Answer)
    )
    assert isinstance(parsed.parsed_output, Answer)
    assert_counts(only(instrumented()), fake)


@pytest.mark.parametrize("stream", [False, True])
async def test_beta_messages(
    fake: FakeProvider, instrumented: Records, kit: ModuleType, is_async: bool, stream: bool
) -> None:
    client = fake.anthropic_client(async_=is_async)
    result = await kit.maybe(
        client.beta.messages.create(
            model=MODEL,
            max_tokens=64,
            messages=MESSAGES,
            stream=stream,
            betas=["context-management-2025-06-27"],
        )
    )
    if stream:
        await kit.drain(result)
    record = only(instrumented())
    assert_counts(record, fake)
    assert record.streamed is stream


async def test_beta_stream_helper(
    fake: FakeProvider, instrumented: Records, is_async: bool
) -> None:
    client = fake.anthropic_client(async_=is_async)
    manager = client.beta.messages.stream(model=MODEL, max_tokens=64, messages=MESSAGES)
    if is_async:
        async with manager as stream:
            final = await stream.get_final_message()
    else:
        with manager as stream:
            final = stream.get_final_message()
    assert final.usage.output_tokens == fake.anthropic_usage.output_tokens
    assert_counts(only(instrumented()), fake)


@pytest.mark.parametrize("stream", [False, True])
async def test_vertex_client(
    fake: FakeProvider, instrumented: Records, kit: ModuleType, is_async: bool, stream: bool
) -> None:
    client = fake.anthropic_vertex_client(async_=is_async)
    result = await kit.maybe(
        client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES, stream=stream)
    )
    if stream:
        await kit.drain(result)
    assert any(":streamRawPredict" in r.path or ":rawPredict" in r.path for r in fake.requests)
    record = only(instrumented())
    assert_counts(record, fake)  # the model moved into the URL; the request model is still known


@pytest.mark.parametrize("stream", [False, True])
async def test_bedrock_client(
    fake: FakeProvider, instrumented: Records, kit: ModuleType, is_async: bool, stream: bool
) -> None:
    bedrock_model = "anthropic.claude-haiku-4-5-20251001-v1:0"
    client = fake.anthropic_bedrock_client(async_=is_async)
    result = await kit.maybe(
        client.messages.create(model=bedrock_model, max_tokens=64, messages=MESSAGES, stream=stream)
    )
    chunks = await kit.drain(result) if stream else []
    assert fake.requests[-1].path.endswith("/invoke-with-response-stream" if stream else "/invoke")
    record = only(instrumented())
    usage = fake.anthropic_usage
    assert record.input_tokens == usage.normalized().input_tokens
    assert record.output_tokens == usage.output_tokens  # the final cumulative count, not a sum
    assert record.model_name == bedrock_model and record.streamed is stream
    assert record.estimated_cost_usd is not None and record.estimated_cost_usd > 0
    assert not stream or [c.type for c in chunks][-1] == "message_stop"


async def test_vertex_beta_and_stream_helper(
    fake: FakeProvider, instrumented: Records, is_async: bool
) -> None:
    client = fake.anthropic_vertex_client(async_=is_async)
    manager = client.messages.stream(model=MODEL, max_tokens=64, messages=MESSAGES)
    if is_async:
        async with manager as stream:
            await stream.get_final_message()
        await client.beta.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)
    else:
        with manager as stream:
            stream.get_final_message()
        client.beta.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)
    assert [r.streamed for r in instrumented()] == [True, False]


@pytest.mark.parametrize("stream", [False, True])
async def test_raw_and_streaming_responses(
    fake: FakeProvider, instrumented: Records, kit: ModuleType, is_async: bool, stream: bool
) -> None:
    client = fake.anthropic_client(async_=is_async)
    raw = await kit.maybe(
        client.messages.with_raw_response.create(
            model=MODEL, max_tokens=64, messages=MESSAGES, stream=stream
        )
    )
    parsed = await kit.maybe(raw.parse())
    if stream:
        await kit.drain(parsed)
    else:
        assert isinstance(parsed, Message)
    manager = client.messages.with_streaming_response.create(
        model=MODEL, max_tokens=64, messages=MESSAGES
    )
    if is_async:
        async with manager as response:
            message = await response.parse()
    else:
        with manager as response:
            message = response.parse()
    assert isinstance(message, Message)
    records = instrumented()
    assert [r.streamed for r in records] == [stream, False]
    for record in records:
        assert_counts(record, fake)


async def test_async_raw_response_is_recorded_without_parse(
    fake: FakeProvider, instrumented: Records, kit: ModuleType
) -> None:
    client = fake.anthropic_client(async_=True)
    raw = await client.messages.with_raw_response.create(
        model=MODEL, max_tokens=64, messages=MESSAGES
    )
    assert raw.http_response.status_code == 200
    assert_counts(only(instrumented()), fake)
    message = await kit.maybe(raw.parse())  # older SDKs: a plain method on async clients too
    assert isinstance(message, Message)
    assert len(instrumented()) == 1


async def test_count_tokens_is_not_billed(
    fake: FakeProvider, instrumented: Records, kit: ModuleType, is_async: bool
) -> None:
    client = fake.anthropic_client(async_=is_async)
    counted = await kit.maybe(client.messages.count_tokens(model=MODEL, messages=MESSAGES))
    assert counted.input_tokens == fake.anthropic_usage.input_tokens
    assert instrumented() == []


@pytest.mark.skipif(
    not hasattr(anthropic.resources.beta.Beta, "sessions"),
    reason="no client.beta.sessions (Managed Agents) in this anthropic",
)
def test_managed_agents_sessions_are_not_metered_as_documented(instrumented: Records) -> None:
    """Claude Managed Agents (``client.beta.sessions``) run their turns on Anthropic's side,
    billed per token (50,000 in and 4,000 out in this session's ``usage``: about $0.21 at Sonnet
    4.5 rates), and no call of them is recorded. docs/providers.md's "Not metered" list named
    nothing of them, so the session looked metered."""
    session = {
        "id": "sesn_1",
        "type": "session",
        "status": "idle",
        "title": None,
        "agent": {"id": "agent_1", "type": "agent", "version": 1, "model": "claude-sonnet-4-5"},
        "environment_id": "env_1",
        "metadata": {},
        "created_at": "2026-12-07T00:00:00Z",
        "updated_at": "2026-12-07T00:05:00Z",
        "usage": {"input_tokens": 50000, "output_tokens": 4000, "cache_read_input_tokens": 0},
    }
    http = http_of(anthropic_base_client)

    def server(request: Any) -> Any:
        if request.url.path.endswith("/events"):
            return json_reply(http, {"data": [{"type": "user.message", "id": "ev_1"}]})
        return json_reply(http, session)

    client = mock_anthropic(server)
    said = [{"type": "user.message", "content": [{"type": "text", "text": "Fix the test"}]}]
    made = client.beta.sessions.create(agent="agent_1", environment_id="env_1")
    client.beta.sessions.events.send(made.id, events=said)
    done = client.beta.sessions.retrieve(made.id)

    assert (done.usage.input_tokens, done.usage.output_tokens) == (50000, 4000)
    assert instrumented() == []
    assert "`client.beta.sessions`" in not_metered_in_docs()


async def test_api_error_is_recorded(
    fake: FakeProvider, instrumented: Records, kit: ModuleType, is_async: bool
) -> None:
    client = fake.anthropic_client(async_=is_async)
    fake.fail_next(529)
    with pytest.raises(anthropic.APIStatusError) as raised:
        await kit.maybe(client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES))
    record = only(instrumented())
    assert record.status == "error" and record.error == type(raised.value).__name__
    assert record.model_name == MODEL and record.total_tokens == 0
