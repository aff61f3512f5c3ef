"""Calls whose provider reports no usage are recorded with an estimate, never a silent zero; a
Responses background call is one quiet record that keeps the create's model.

Streams carry realistic text (an answer split as OpenAI splits it, a tool call's arguments), and
each estimate is compared with the usage the same server reports when asked.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import logging
import sys
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from types import ModuleType
from typing import Any

import pytest
from helpers import sleeping
from provider_helpers import (
    Records,
    cut_reply,
    flushed,
    http_of,
    json_reply,
    mock_anthropic,
    mock_genai,
    only,
    sse_reply,
)

import tokenmeter
from tokenmeter import _estimate
from tokenmeter._estimate import estimate_input
from tokenmeter.sinks import InMemorySink

ANSWER = [
    "The",
    " capital",
    " of",
    " France",
    " is",
    " Paris",
    ".",
    " It",
    " has",
    " been",
    " the",
    " country's",
    " capital",
    " since",
    " the",
    " tenth",
    " century",
    ".",
]
MESSAGES = [
    {"role": "system", "content": "You are a helpful geography tutor."},
    {"role": "user", "content": "What is the capital of France? Answer in two sentences."},
]
#: The usage this server reports when asked (shaped as OpenAI reports it for such a request: the
#: answer's 18 o200k tokens; the prompt's text and chat framing). Accuracy against usage real
#: providers reported is measured in tests/test_estimate.py and benchmarks/estimate_accuracy.py.
REAL_USAGE = {"prompt_tokens": 33, "completion_tokens": 18, "total_tokens": 51}


class StreamingServer:
    """An OpenAI-compatible chat server: streams ANSWER; adds the usage chunk only when asked
    for, unless it ignores ``stream_options`` (as some compatible servers do)."""

    def __init__(self, kit: ModuleType, honours_usage: bool = True) -> None:
        self.kit = kit
        self.honours_usage = honours_usage

    def __call__(self, request: Any) -> Any:
        body = json.loads(request.content)
        base = {"id": "chatcmpl-est", "object": "chat.completion.chunk", "created": 1}
        base["model"] = "gpt-4o-2024-08-06"
        chunks = [
            {**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
            for piece in ANSWER
        ]
        chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        asked = (body.get("stream_options") or {}).get("include_usage")
        if asked and self.honours_usage:
            chunks.append({**base, "choices": [], "usage": REAL_USAGE})
        text = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks)
        return self.kit.sse_response((text + "data: [DONE]\n\n").encode())


async def _open(client: Any, kit: ModuleType, **kwargs: Any) -> Any:
    return await kit.maybe(
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True, **kwargs)
    )


def _close_to(got: int, real: int, within: float) -> bool:
    return abs(got / real - 1) <= within


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize(
    ("failure", "billed"),
    [("ReadTimeout", True), ("RemoteProtocolError", True), ("ConnectError", False)],
)
async def test_a_reply_cut_while_read_is_estimated_and_a_call_never_sent_costs_nothing(
    records: Records, kit: ModuleType, is_async: bool, failure: str, billed: bool, streamed: bool
) -> None:
    """A non-streamed call whose reply timed out (or whose connection broke) once it was sent
    was a $0 record, though the provider ran and billed it: a raise budget let 100 timed-out
    calls of 100 through a $0.01 cap, where a stream cut the same way is estimated. So was a
    stream whose reply timed out before it began. A connection never made sent nothing: $0."""

    def server(request: Any) -> Any:
        raise getattr(kit.http, failure)("cut", request=request)

    client = kit.mock_openai(server, is_async=is_async, max_retries=0)
    tokenmeter.instrument("openai")
    asked = {"stream": True} if streamed else {}
    with pytest.raises(Exception, match=r"timed out|Connection error"):
        await kit.maybe(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, **asked))
    record = only(records())
    assert record.status == "error" and record.estimated is billed
    request = {"model": "gpt-4o", "messages": MESSAGES}
    expected = estimate_input("openai", request).input_tokens if billed else 0
    assert (record.input_tokens, record.output_tokens) == (expected, 0)
    assert record.estimated_cost_usd is not None
    assert (record.estimated_cost_usd > 0) is billed


@pytest.mark.parametrize("status", [200, 429, 500])
@pytest.mark.parametrize("streamed", [False, True])
async def test_a_success_answer_whose_body_cannot_be_decoded_is_estimated(
    records: Records, kit: ModuleType, is_async: bool, streamed: bool, status: int
) -> None:
    """A 200 answer whose gzip body a proxy corrupted fails while it is read (httpx's
    ``DecodingError``, raised as the SDK's connection error): the provider ran and billed the
    request, but the record said $0, where the same reply broken by a ``ReadError`` is
    estimated. An error status's body labelled gzip and not (a proxy's error page) fails alike
    before the SDK sees its status: the provider refused the call, which cost nothing."""

    def server(request: Any) -> Any:
        kind = "text/event-stream" if streamed else "application/json"
        headers = {"content-type": kind, "content-encoding": "gzip"}
        return kit.http.Response(status, content=b"\x1f\x8b" + b"not gzip" * 20, headers=headers)

    client = kit.mock_openai(server, is_async=is_async, max_retries=0)
    tokenmeter.instrument("openai")
    asked = {"stream": True} if streamed else {}
    with pytest.raises(Exception, match="Connection error"):
        answer = await kit.maybe(
            client.chat.completions.create(model="gpt-4o", messages=MESSAGES, **asked)
        )
        if streamed:
            await kit.drain(answer)
    record = only(records())
    if status != 200:
        assert (record.status, record.estimated, record.estimated_cost_usd) == ("error", False, 0)
        return
    assert (record.status, record.estimated) == ("error", True)
    request = {"model": "gpt-4o", "messages": MESSAGES}
    assert record.input_tokens == estimate_input("openai", request).input_tokens
    assert record.estimated_cost_usd is not None and record.estimated_cost_usd > 0


async def test_a_call_cancelled_while_it_waits_for_its_reply_is_estimated(
    records: Records, kit: ModuleType
) -> None:
    """``asyncio.wait_for`` (the usual timeout of async code) cancels the task while the call
    waits for its reply: the request was sent, and the provider runs and bills it, but the
    record said $0, so a raise budget let every such call through (its SDK ReadTimeout twin
    was estimated)."""
    sent = asyncio.Event()

    async def slow_server(request: Any) -> Any:
        sent.set()
        await asyncio.sleep(30)
        raise AssertionError("cancelled before this")

    client = kit.mock_openai(slow_server, is_async=True, max_retries=0)
    tokenmeter.instrument("openai")
    pending = asyncio.ensure_future(
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    )
    await sent.wait()
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    record = only(records())
    assert (record.status, record.error, record.estimated) == ("error", "CancelledError", True)
    request = {"model": "gpt-4o", "messages": MESSAGES}
    assert record.input_tokens == estimate_input("openai", request).input_tokens
    assert record.estimated_cost_usd is not None and record.estimated_cost_usd > 0


def _first_answer(kit: ModuleType, how: str) -> Callable[[Any], Any]:
    """A server whose every answer is ``how``: a refusal (nothing billed) that the SDK retries
    after a wait, or a reply that timed out while read (sent: billed)."""
    http = kit.http

    def answer(request: Any) -> Any:
        if how == "429":
            body = {"error": {"code": 429, "message": "Rate limit reached", "status": "429"}}
            return http.Response(429, headers={"retry-after": "30"}, json=body)
        if how == "529":
            body = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
            return http.Response(529, headers={"retry-after": "30"}, json=body)
        if how == "refused":
            raise http.ConnectError("connection refused", request=request)
        raise http.ReadTimeout("timed out", request=request)

    return answer


@pytest.mark.parametrize(
    ("provider", "how", "billed"),
    [
        ("openai", "429", False),
        ("anthropic", "529", False),
        ("openai", "refused", False),
        ("anthropic", "refused", False),
        pytest.param(  # HttpRetryOptions, HttpOptions(httpx_client=...)
            "google-genai", "429", False, marks=pytest.mark.requires(google_genai=">=1.46")
        ),
        ("openai", "read timeout", True),
        ("anthropic", "read timeout", True),
    ],
)
async def test_a_call_cancelled_while_its_sdk_waits_to_retry_is_billed_only_if_it_was_sent(
    records: Records, kit: ModuleType, provider: str, how: str, billed: bool
) -> None:
    """The application's timeout (``asyncio.wait_for``) cancels the task while the SDK waits to
    retry a refusal (a 429's ``retry-after``, Anthropic's 529 overloaded, a connection refused):
    the provider billed nothing, yet the record was an estimate of the whole prompt
    ($0.0625 on gpt-4o for a 25k-token prompt), charged to budgets too. After a reply that
    timed out while read (sent, so billed), the call is still estimated."""
    from google.genai import types as gtypes

    sent = 0
    answer = _first_answer(kit, how)

    def server(request: Any) -> Any:
        nonlocal sent
        sent += 1
        return answer(request)

    tokenmeter.instrument(provider)
    if provider == "openai":
        openai = kit.mock_openai(server, is_async=True, max_retries=2)
        call = openai.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    elif provider == "anthropic":
        anthropic = mock_anthropic(server, is_async=True).with_options(max_retries=2)
        call = anthropic.messages.create(
            model="claude-sonnet-4-5", max_tokens=100, messages=MESSAGES[1:]
        )
    else:
        retry = gtypes.HttpRetryOptions(attempts=3, initial_delay=30, max_delay=30)
        gemini = mock_genai(server, retry_options=retry)
        call = gemini.aio.models.generate_content(model="gemini-2.5-pro", contents="Hello")
    pending = asyncio.ensure_future(call)
    await sleeping(pending, f"{provider} waiting to retry after {how}")
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    assert sent == 1
    record = only(records())
    assert (record.status, record.error, record.estimated) == ("error", "CancelledError", billed)
    if billed:
        assert record.input_tokens > 0
        assert record.estimated_cost_usd is not None and record.estimated_cost_usd > 0
    else:
        assert (record.input_tokens, record.estimated_cost_usd) == (0, 0)


def _in_session(how: str, call: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[Any]]:
    """``call`` as an application runs it: bare, in a session-decorated async function or async
    generator, or in a plain wrapper of one (``functools.wraps``) under the session decorator."""
    if how == "bare":
        return call

    async def decorated() -> Any:
        return await call()

    if how == "decorated":
        return tokenmeter.session("request")(decorated)

    @tokenmeter.session("request")
    async def answer() -> AsyncIterator[Any]:
        yield await call()

    async def read_answer() -> list[Any]:
        return [piece async for piece in answer()]

    if how == "generator":
        return read_answer

    @functools.wraps(decorated)
    def wrapper() -> Any:
        return decorated()

    return tokenmeter.session("request")(wrapper)


@pytest.mark.parametrize("how", ["bare", "decorated", "generator", "wrapper"])
def test_a_call_in_flight_when_its_event_loop_is_closed_is_estimated_and_quiet(
    records: Records, kit: ModuleType, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """An event loop closed with a call's task pending (``asyncio.wait`` with a timeout cancels
    nothing; a thread's loop closed at shutdown): the collector closes the call's coroutine
    (GeneratorExit) outside its task's context. tokenmeter's contextvar reset then raised a
    ValueError ("was created in a different Context"), printed as an unraisable exception where
    the SDK alone prints nothing, and the sent, billed call was an error record costing $0.
    Its estimate belongs to the session the call was made in, not to one open where the
    collector happens to run (it was charged to that one, whose budget then refused its calls)."""
    unraisable: list[str] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: unraisable.append(repr(u.exc_value)))
    sent = asyncio.Event()

    async def slow_server(request: Any) -> Any:
        sent.set()
        await asyncio.sleep(30)
        raise AssertionError("closed before this")

    client = kit.mock_openai(slow_server, is_async=True, max_retries=0)
    tokenmeter.instrument("openai")
    call = _in_session(
        how, lambda: client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    )
    loop = asyncio.new_event_loop()
    pending = loop.create_task(call())
    loop.run_until_complete(sent.wait())
    loop.close()
    del pending
    gc.disable()  # collected on the next line, not while the session's entry imports modules
    try:
        with tokenmeter.session("elsewhere"):
            gc.collect()
    finally:
        gc.enable()
    assert unraisable == []
    record = only(records())
    assert record.session_name == (None if how == "bare" else "request")
    assert (record.status, record.error, record.estimated) == ("error", "GeneratorExit", True)
    request = {"model": "gpt-4o", "messages": MESSAGES}
    assert record.input_tokens == estimate_input("openai", request).input_tokens
    assert record.estimated_cost_usd is not None and record.estimated_cost_usd > 0


#: An Images API stream's events (gpt-image-1, ``partial_images=1``): a partial image, then the
#: completed event with the usage (50 prompt tokens, 4,160 image tokens out).
IMAGE = {
    "b64_json": "iVBORw0KGgo",
    "background": "opaque",
    "created_at": 1_745_000_000,
    "output_format": "png",
    "quality": "high",
    "size": "1024x1024",
}
IMAGE_EVENTS = [
    {**IMAGE, "type": "image_generation.partial_image", "partial_image_index": 0},
    {
        **IMAGE,
        "type": "image_generation.completed",
        "usage": {"input_tokens": 50, "output_tokens": 4160, "total_tokens": 4210},
    },
]


def _broken_stream(kit: ModuleType, events: list[dict[str, Any]]) -> Any:
    """A server-sent event stream that sends ``events``, then breaks (a dropped connection)."""
    head = "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()

    return cut_reply(kit.http, head)


@pytest.mark.requires(openai=">=2.0")  # streamed image generation (stream=True, partial_images)
@pytest.mark.parametrize("how", ["cut", "refused", "error event"])
async def test_an_image_stream_cut_by_the_network_is_estimated(
    records: Records, kit: ModuleType, is_async: bool, how: str
) -> None:
    """An Images API stream whose connection dropped after a partial image ran, and is billed:
    it was an error record of 0 tokens and $0 (its reader tallies no text), where the same
    stream left early by the application is estimated from its request. A connection refused
    (nothing sent) and an error the provider reported stay $0, not estimated."""

    def server(request: Any) -> Any:
        if how == "refused":
            raise kit.http.ConnectError("connection refused", request=request)
        if how == "cut":
            return _broken_stream(kit, IMAGE_EVENTS[:1])
        error = {"type": "error", "error": {"type": "server_error", "message": "failed"}}
        return kit.sse_response(f"event: error\ndata: {json.dumps(error)}\n\n".encode())

    client = kit.mock_openai(server, is_async=is_async, max_retries=0)
    tokenmeter.instrument("openai")
    request = {"model": "gpt-image-1", "prompt": "A lighthouse at dawn, in watercolour."}
    with pytest.raises(Exception, match=r"onnection|failed"):
        await kit.drain(
            await kit.maybe(client.images.generate(stream=True, partial_images=1, **request))
        )
    record = only(records())
    billed = how == "cut"
    assert (record.status, record.estimated) == ("error", billed)
    expected = estimate_input("openai", request, "images").input_tokens if billed else 0
    assert (record.input_tokens, record.output_tokens) == (expected, 0)
    assert record.estimated_cost_usd is not None
    assert (record.estimated_cost_usd > 0) is billed


@pytest.mark.requires(google_genai=">=1.46")  # HttpOptions(httpx_client=...)
async def test_a_gemini_stream_refused_before_it_started_is_not_estimated(
    records: Records, is_async: bool
) -> None:
    """A sync google-genai stream is a generator that sends its request at its first ``next()``:
    a connection refused there sent nothing, but was recorded as an estimated, billed stream
    (its reader was attached before the request went). Now $0, as the async twin is."""
    from google.genai import _api_client

    http = http_of(_api_client)

    def refused(request: Any) -> Any:
        raise http.ConnectError("connection refused", request=request)

    client = mock_genai(refused)
    tokenmeter.instrument("google-genai")
    request = {"model": "gemini-2.5-flash", "contents": "Weather in Paris for 5 days?"}
    with pytest.raises(http.ConnectError):
        if is_async:
            async for _ in await client.aio.models.generate_content_stream(**request):
                pass
        else:
            for _ in client.models.generate_content_stream(**request):
                pass
    record = only(records())
    assert (record.status, record.error, record.estimated) == ("error", "ConnectError", False)
    assert (record.input_tokens, record.estimated_cost_usd) == (0, 0)


async def test_stream_left_early_is_estimated_from_what_passed(
    records: Records, kit: ModuleType, is_async: bool
) -> None:
    """The caller reads five chunks and closes the stream: the usage chunk never comes. The
    record is estimated: the whole input, and the output the caller actually received."""
    client = kit.mock_openai(StreamingServer(kit), is_async=is_async)
    tokenmeter.instrument("openai")
    stream = await _open(client, kit)
    for _ in range(5):
        await kit.maybe(stream.__anext__() if is_async else next(stream))
    await kit.maybe(stream.close())
    record = only(records())
    assert record.streamed and record.status == "ok" and record.estimated
    request = {"model": "gpt-4o", "messages": MESSAGES}
    assert record.input_tokens == estimate_input("openai", request).input_tokens
    assert _close_to(record.input_tokens, REAL_USAGE["prompt_tokens"], 0.1)
    assert record.output_tokens == 5  # "The capital of France is": the 5 tokens it received
    assert record.estimated_cost_usd is not None and record.estimated_cost_usd > 0


async def test_stream_without_include_usage_is_estimated_close_to_real_usage(
    records: Records, kit: ModuleType, is_async: bool
) -> None:
    client = kit.mock_openai(StreamingServer(kit), is_async=is_async)
    tokenmeter.instrument("openai")
    await kit.drain(await _open(client, kit))  # tokenmeter asks for usage: the real figures
    await kit.drain(await _open(client, kit, stream_options={"include_usage": False}))
    real, estimated = records()
    assert not real.estimated and real.input_tokens == REAL_USAGE["prompt_tokens"]
    assert estimated.estimated
    assert _close_to(estimated.input_tokens, real.input_tokens, 0.1)
    assert _close_to(estimated.output_tokens, real.output_tokens, 0.1)


async def test_a_stream_past_the_kept_chunks_is_extrapolated_from_them(
    records: Records, kit: ModuleType, is_async: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream keeps its first chunks only (memory stays bounded however long it runs); the
    rest are counted, and the estimate scales the kept text up to all of them."""
    from tokenmeter.providers import openai as adapter

    client = kit.mock_openai(StreamingServer(kit), is_async=is_async)
    tokenmeter.instrument("openai")
    await kit.drain(await _open(client, kit, stream_options={"include_usage": False}))
    monkeypatch.setattr(adapter, "_READ_CHUNKS", 6)  # a third of ANSWER's 18 chunks
    await kit.drain(await _open(client, kit, stream_options={"include_usage": False}))
    whole, bounded = records()
    assert whole.output_tokens == 18 and bounded.estimated
    assert bounded.output_tokens != whole.output_tokens  # really extrapolated from 6 chunks
    assert _close_to(bounded.output_tokens, whole.output_tokens, 0.35)


async def test_a_stream_holds_no_chunk_the_caller_is_done_with(
    records: Records, kit: ModuleType, is_async: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream whose usage has not come yet keeps the text of its first chunks and counts the
    rest, never a chunk: the chunks the caller is done with are freed as they would be without
    tokenmeter (held, they made the garbage collector run collections a bare stream never
    runs)."""
    from tokenmeter.providers import openai as adapter

    monkeypatch.setattr(adapter, "_READ_CHUNKS", 2)
    client = kit.mock_openai(StreamingServer(kit), is_async=is_async)
    tokenmeter.instrument("openai")
    stream = await _open(client, kit)
    seen = []
    for _ in range(5):
        chunk = await kit.maybe(stream.__anext__() if is_async else next(stream))
        seen.append(weakref.ref(chunk))
    del chunk
    gc.collect()
    assert [ref() is None for ref in seen] == [True] * 5
    await kit.maybe(stream.close())
    assert only(records()).output_tokens == 5


async def test_compatible_server_that_ignores_stream_options_is_estimated(
    records: Records, kit: ModuleType, is_async: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A Groq-hosted call whose server sends no usage chunk: estimated, provider from the host,
    with one warning saying what to do."""
    client = kit.mock_openai(
        StreamingServer(kit, honours_usage=False),
        is_async=is_async,
        base_url="https://api.groq.com/openai/v1",
    )
    tokenmeter.instrument("openai")
    with caplog.at_level(logging.WARNING, logger="tokenmeter"):
        chunks = await kit.drain(await _open(client, kit))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "".join(ANSWER)
    record = only(records())
    assert record.model_provider == "groq" and record.estimated and record.status == "ok"
    assert _close_to(record.output_tokens, REAL_USAGE["completion_tokens"], 0.1)
    assert [r.getMessage() for r in caplog.records if "estimated" in r.getMessage()]


async def test_streamed_tool_call_arguments_count_as_output(
    records: Records, kit: ModuleType, is_async: bool
) -> None:
    arguments = ['{"', "city", '":"', "Paris", '","', "unit", '":"', "celsius", '"}']

    def server(request: Any) -> Any:
        base = {"id": "chatcmpl-tool", "object": "chat.completion.chunk", "created": 1}
        base["model"] = "gpt-4o-2024-08-06"
        first = {
            "index": 0,
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": ""},
        }
        deltas = [{"tool_calls": [first]}] + [
            {"tool_calls": [{"index": 0, "function": {"arguments": a}}]} for a in arguments
        ]
        chunks = [
            {**base, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas
        ]
        text = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks)
        return kit.sse_response((text + "data: [DONE]\n\n").encode())

    client = kit.mock_openai(server, is_async=is_async)
    tokenmeter.instrument("openai")
    await kit.drain(await _open(client, kit, stream_options={"include_usage": False}))
    record = only(records())
    # get_weather (2 tokens) + {"city":"Paris","unit":"celsius"} (10 tokens)
    assert record.estimated and record.output_tokens == 12


#: A reasoning model's thinking, streamed before its answer (60 chunks).
THINKING = "Let me think about this step by step. First, consider the user's request. "


def _thinking(kit: ModuleType, name: str) -> Any:
    """A reasoning model's chat stream that ends while it reasons (its usage would come last),
    the thinking in the delta field ``name``."""
    base = {"id": "chatcmpl-r1", "object": "chat.completion.chunk", "created": 1}
    delta = {"role": "assistant", "content": None, name: THINKING}
    choice = {"index": 0, "delta": delta, "finish_reason": None}
    body = "".join(f"data: {json.dumps(base | {'choices': [choice]})}\n\n" for _ in range(60))
    return kit.sse_response(body.encode())


@pytest.mark.parametrize(
    ("host", "name"),
    [("api.deepseek.com", "reasoning_content"), ("openrouter.ai/api", "reasoning")],
)
async def test_a_chat_stream_ended_while_the_model_reasons_counts_the_reasoning(
    records: Records, kit: ModuleType, is_async: bool, host: str, name: str
) -> None:
    """The reasoning a model streams (DeepSeek's ``reasoning_content``, OpenRouter's
    ``reasoning``) is output it is billed for, estimated as its answer's text is (it was left
    out: 5,040 characters of deepseek-reasoner's reasoning recorded as 0 output tokens)."""
    tokenmeter.instrument("openai")
    for field in ("content", name):
        client = kit.mock_openai(
            lambda request, field=field: _thinking(kit, field),
            is_async=is_async,
            base_url=f"https://{host}/v1",
        )
        create = client.chat.completions.create
        await kit.drain(
            await kit.maybe(create(model="deepseek-reasoner", messages=MESSAGES, stream=True))
        )
    answered, reasoned = records()
    assert answered.estimated and reasoned.estimated and answered.output_tokens > 500
    assert reasoned.output_tokens == answered.output_tokens


@pytest.mark.parametrize("name", ["reasoning_content", "reasoning"])
async def test_a_chat_reply_without_usage_counts_its_reasoning(
    records: Records, kit: ModuleType, name: str
) -> None:
    """The same reasoning in a reply that was not streamed, without usage, is counted too."""
    tokenmeter.instrument("openai")
    for field in ("content", name):
        body = kit.chat_body(model="deepseek-reasoner")
        del body["usage"]
        body["choices"][0]["message"] = {"role": "assistant", "content": None, field: THINKING * 60}
        client = kit.mock_openai(lambda request, body=body: json_reply(kit.http, body))
        client.chat.completions.create(model="deepseek-reasoner", messages=MESSAGES)
    answered, reasoned = records()
    assert answered.estimated and reasoned.estimated and answered.output_tokens > 500
    assert reasoned.output_tokens == answered.output_tokens


async def test_responses_stream_left_early_is_estimated(
    fake: Any, sink: InMemorySink, is_async: bool, kit: ModuleType
) -> None:
    fake.stream_chunks = 8
    client = fake.openai_client(async_=is_async)
    tokenmeter.instrument("openai")
    request = {"model": "gpt-4o", "input": "Write a haiku about the sea."}
    stream = await kit.maybe(client.responses.create(stream=True, **request))
    seen = []
    async for event in _events(stream, is_async):
        seen.append(event.type)
        if event.type == "response.output_text.delta":
            break
    await kit.maybe(stream.close())
    record = only(flushed(sink))
    assert record.estimated and record.streamed and record.status == "ok"
    assert record.request_model == "gpt-4o" and record.operation == "responses"
    assert record.input_tokens == estimate_input("openai", request, "responses").input_tokens
    assert record.output_tokens >= 1


#: o3's rates per million tokens (in, out) at each tier its answers report.
O3_RATES = {"flex": (Decimal(1), Decimal(4)), "priority": (Decimal("3.5"), Decimal(14))}


def _o3_answer_without_usage(kit: ModuleType, api: str, tier: str) -> Any:
    """An o3 answer of ``tier`` that reports no usage: a chat stream (every chunk names the
    tier), a Responses stream (``response.created`` names it) or a chat reply, left early or
    sent without usage, all on ANSWER's text."""
    if api == "chat reply":
        body = kit.chat_body(model="o3-2025-04-16") | {"service_tier": tier}
        del body["usage"]
        body["choices"][0]["message"]["content"] = "".join(ANSWER)
        return json_reply(kit.http, body)
    if api == "chat stream":
        base = {"id": "c", "object": "chat.completion.chunk", "created": 1}
        base |= {"model": "o3-2025-04-16", "service_tier": tier}
        events = [
            (None, base | {"choices": [{"index": 0, "delta": {"content": piece}}]})
            for piece in ANSWER
        ]
        return sse_reply(kit.http, events)
    response = kit.response_body("o3-2025-04-16", [], [], 0, 0)
    response |= {"status": "in_progress", "usage": None, "service_tier": tier}
    created = {"type": "response.created", "sequence_number": 0, "response": response}
    deltas = [
        {"type": "response.output_text.delta", "sequence_number": n, "item_id": "m"}
        | {"output_index": 0, "content_index": 0, "delta": piece, "logprobs": []}
        for n, piece in enumerate(ANSWER, 1)
    ]
    return sse_reply(kit.http, [(event["type"], event) for event in [created, *deltas]])


@pytest.mark.parametrize("tier", ["flex", "priority"])
@pytest.mark.parametrize("api", ["chat stream", "responses stream", "chat reply"])
async def test_an_estimate_is_priced_at_the_tier_the_answer_reported(
    records: Records, kit: ModuleType, api: str, tier: str
) -> None:
    """A flex or priority answer whose usage never came (a stream left early, a reply without
    usage) is estimated at its tier's rates, as its usage would have been priced: it was priced
    at standard ($2 / $8 on o3), twice a flex call's cost and 1.75x under a priority one's."""
    client = kit.mock_openai(lambda request: _o3_answer_without_usage(kit, api, tier))
    tokenmeter.instrument("openai")
    if api == "chat reply":
        client.chat.completions.create(model="o3", messages=MESSAGES, service_tier=tier)
    else:
        if api == "chat stream":
            stream = client.chat.completions.create(
                model="o3", messages=MESSAGES, stream=True, service_tier=tier
            )
        else:
            # As a body field: the oldest SDKs' responses.create() takes no service_tier.
            tier_asked = {"service_tier": tier}
            stream = client.responses.create(
                model="o3", input="x", stream=True, extra_body=tier_asked
            )
        for _ in range(6):
            next(stream)
        stream.close()
    record = only(records())
    assert record.estimated and record.output_tokens > 0
    rate_in, rate_out = O3_RATES[tier]
    cost = (record.input_tokens * rate_in + record.output_tokens * rate_out) / 10**6
    assert record.estimated_cost_usd == cost


def _stalled_stream(http: Any, events: list[bytes], gate: asyncio.Event) -> Any:
    """A server-sent event stream whose server sends ``events`` then stalls until ``gate``."""

    async def body() -> AsyncIterator[bytes]:
        for event in events:
            yield event
        await gate.wait()

    return http.Response(200, content=body(), headers={"content-type": "text/event-stream"})


def _tiered_stream(kit: ModuleType, provider: str, gate: asyncio.Event) -> Callable[[], Any]:
    """The start of an async ``provider`` stream whose answer names its tier
    (an Anthropic ``speed: fast`` message_start, OpenAI flex chunks; google-genai's tier is the
    one asked for, which the Gemini API does not report) and then stalls after three events."""
    text = "The first part of a long answer. " * 5
    if provider == "anthropic":
        from anthropic import _base_client

        http = http_of(_base_client)
        message = {"id": "msg_1", "type": "message", "role": "assistant"}
        message |= {"model": "claude-opus-4-6", "content": [], "stop_reason": None}
        message |= {"usage": {"input_tokens": 100_000, "output_tokens": 1, "speed": "fast"}}
        block = {"type": "content_block_start", "index": 0}
        delta = {"type": "content_block_delta", "index": 0}
        anthropic_events = [
            ("message_start", {"type": "message_start", "message": message}),
            ("content_block_start", block | {"content_block": {"type": "text", "text": ""}}),
            ("content_block_delta", delta | {"delta": {"type": "text_delta", "text": text}}),
        ]
        events = [f"event: {n}\ndata: {json.dumps(d)}\n\n".encode() for n, d in anthropic_events]
        anthropic = mock_anthropic(
            lambda request: _stalled_stream(http, events, gate), is_async=True
        )
        return lambda: anthropic.messages.create(
            model="claude-opus-4-6", max_tokens=4000, messages=MESSAGES[1:], stream=True
        )
    if provider == "openai":
        chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1}
        chunk |= {"model": "gpt-4o-2024-08-06", "service_tier": "flex"}
        chunk |= {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
        events = [f"data: {json.dumps(chunk)}\n\n".encode()] * 3
        openai = kit.mock_openai(
            lambda request: _stalled_stream(kit.http, events, gate), is_async=True
        )
        return lambda: openai.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, stream=True, service_tier="flex"
        )
    from google.genai import _api_client
    from google.genai import types as gtypes

    http = http_of(_api_client)
    chunks = []
    for n in range(1, 4):
        usage = {"promptTokenCount": 100_000, "candidatesTokenCount": 50 * n}
        content = {"parts": [{"text": text}], "role": "model"}
        chunk = {"candidates": [{"content": content, "index": 0}], "usageMetadata": usage}
        chunks.append(f"data: {json.dumps(chunk | {'modelVersion': 'gemini-2.5-flash'})}\r\n\r\n")
    events = [chunk.encode() for chunk in chunks]
    gemini = mock_genai(lambda request: _stalled_stream(http, events, gate))
    flex = gtypes.GenerateContentConfig(service_tier="flex")
    return lambda: gemini.aio.models.generate_content_stream(
        model="gemini-2.5-flash", contents="hi", config=flex
    )


@pytest.mark.parametrize(
    "provider",
    [
        "anthropic",
        "openai",
        pytest.param(
            "google-genai",
            marks=pytest.mark.requires(google_genai=">=3.6"),  # GenerateContentConfig.service_tier
        ),
    ],
)
async def test_a_stream_cancelled_after_its_tier_was_named_is_priced_at_it(
    records: Records, kit: ModuleType, provider: str
) -> None:
    """A stream whose task is cancelled (a client gone, a ``wait_for`` timeout) after the answer
    named its tier is priced at that tier, as the same stream closed at the same point is: it
    was priced at standard, an Anthropic fast-mode stream at 1/6 of its cost ($0.50 for
    $3.03), an OpenAI or Gemini flex one at twice its cost."""
    tokenmeter.instrument(provider)
    costs = {}
    for leave in ("close", "cancel"):
        gate = asyncio.Event()
        await _leave_at_the_third_event(_tiered_stream(kit, provider, gate), leave)
        gate.set()
        record = only(records()[len(costs) :])
        assert record.status == ("ok" if leave == "close" else "error")
        costs[leave] = record.estimated_cost_usd
    assert costs["cancel"] == costs["close"] is not None


async def _leave_at_the_third_event(start: Callable[[], Any], leave: str) -> None:
    """Read an async stream in a task to its third event, then ``close`` the stream there (the
    application leaves it) or ``cancel`` the task (its client gone, a timeout)."""
    third = asyncio.Event()
    streams = []

    async def read() -> None:
        stream = await start()
        streams.append(stream)
        seen = 0
        async for _ in stream:
            seen += 1
            if seen == 3:
                third.set()
                if leave == "close":
                    break

    task = asyncio.create_task(read())
    await third.wait()
    if leave == "cancel":
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return
    await task
    stream = streams[0]
    await (stream.close() if hasattr(stream, "close") else stream.aclose())


@pytest.mark.requires(google_genai=">=3.6")  # GenerateContentConfig.service_tier
async def test_a_call_cut_before_any_answer_is_priced_at_no_tier(records: Records) -> None:
    """A call that raised before the provider answered (its reply timed out) has no tier of its
    own: a flex request is estimated at the standard rates, as before, not at the tier asked."""
    from google.genai import _api_client
    from google.genai import types as gtypes

    http = http_of(_api_client)

    def timed_out(request: Any) -> Any:
        raise http.ReadTimeout("timed out", request=request)

    client = mock_genai(timed_out)
    tokenmeter.instrument("google-genai")
    for tier in ("flex", None):
        with pytest.raises(http.ReadTimeout):
            await client.aio.models.generate_content(
                model="gemini-2.5-flash",
                contents="Weather in Paris for 5 days?",
                config=gtypes.GenerateContentConfig(service_tier=tier),
            )
    flex, standard = records()
    assert flex.estimated and flex.estimated_cost_usd == standard.estimated_cost_usd > 0


def _o3_stream_read(kit: ModuleType, asked: str, events: list[dict[str, Any]]) -> None:
    """An o3 Responses stream of ``events`` asked at tier ``asked``, read to its end (the tier
    as a body field: the oldest SDKs' ``responses.create()`` takes no ``service_tier``)."""
    client = kit.mock_openai(
        lambda request: sse_reply(kit.http, [(event["type"], event) for event in events])
    )
    tokenmeter.instrument("openai")
    asking = {"service_tier": asked}
    for _ in client.responses.create(model="o3", input="x", stream=True, extra_body=asking):
        pass


@pytest.mark.parametrize(("asked", "served"), [("priority", "default"), ("flex", None)])
async def test_a_responses_stream_with_usage_is_priced_at_the_tier_beside_it(
    records: Records, kit: ModuleType, asked: str, served: str | None
) -> None:
    """``response.created`` names the tier asked for; the completed response beside its usage
    the tier served (OpenAI may serve a priority or flex request at default; a compatible host
    names none). The first was kept for an estimate and outlived the usage: 1M + 1M o3 tokens
    asked at priority, served at default, were recorded at $17.50 where they cost $10."""
    created = kit.response_body("o3-2025-04-16", [], [], 0, 0)
    created |= {"status": "in_progress", "usage": None, "service_tier": asked}
    done = kit.response_body("o3-2025-04-16", [], [], 1_000_000, 1_000_000)
    done |= {"service_tier": served}
    events = [
        {"type": "response.created", "sequence_number": 0, "response": created},
        {"type": "response.completed", "sequence_number": 1, "response": done},
    ]
    _o3_stream_read(kit, asked, events)
    record = only(records())
    assert not record.estimated and record.estimated_cost_usd == Decimal(10)  # $2 + $8


async def test_a_responses_stream_estimate_is_priced_at_the_tier_it_was_served_at(
    records: Records, kit: ModuleType
) -> None:
    """``response.created`` names the tier asked for (priority), the last response, without
    usage, the tier served (``default``): the estimate was priced at priority, 1.75x."""
    created = kit.response_body("o3-2025-04-16", [], [], 0, 0)
    created |= {"status": "in_progress", "usage": None, "service_tier": "priority"}
    done = kit.response_body("o3-2025-04-16", [], [], 0, 0)
    done |= {"usage": None, "service_tier": "default"}
    deltas = [
        {"type": "response.output_text.delta", "sequence_number": n, "item_id": "m"}
        | {"output_index": 0, "content_index": 0, "delta": piece, "logprobs": []}
        for n, piece in enumerate(ANSWER, 1)
    ]
    events = [
        {"type": "response.created", "sequence_number": 0, "response": created},
        *deltas,
        {"type": "response.completed", "sequence_number": 99, "response": done},
    ]
    _o3_stream_read(kit, "priority", events)
    record = only(records())
    assert record.estimated and record.output_tokens > 0
    cost = (record.input_tokens * 2 + record.output_tokens * 8) / Decimal(10**6)  # standard
    assert record.estimated_cost_usd == cost


#: A coding agent's patch, as a tool's input the model writes (in 40 deltas).
PATCH = (
    "*** Update File: app.py\n@@ def handler(request):\n-    return None\n+    return render()\n"
)
#: Output items whose input the model writes: its other fields, the field the input is in, and
#: the event each of its deltas comes in when streamed.
TOOL_INPUTS = {
    "function_call": (
        {"call_id": "call_1", "name": "apply_patch"},
        "arguments",
        "function_call_arguments",
    ),
    "custom_tool_call": (
        {"call_id": "call_1", "name": "apply_patch"},
        "input",
        "custom_tool_call_input",
    ),
    "code_interpreter_call": (
        {"container_id": "cntr_1", "outputs": None, "status": "in_progress"},
        "code",
        "code_interpreter_call_code",
    ),
    "mcp_call": (
        {"name": "apply_patch", "server_label": "repo"},
        "arguments",
        "mcp_call_arguments",
    ),
}


def _tool_item(kind: str, written: str) -> dict[str, Any]:
    fields, name, _ = TOOL_INPUTS[kind]
    return {"type": kind, "id": "item_1", **fields, name: written}


def _tool_input_ended(kit: ModuleType, kind: str) -> Any:
    """A gpt-5 Responses stream writing a ``kind`` item's input, ended before its terminal event."""
    delta = TOOL_INPUTS[kind][2]
    response = kit.response_body("gpt-5-2025-08-07", [], [], 0, 0) | {"status": "in_progress"}
    item = _tool_item(kind, "")
    events = [
        {"type": "response.created", "response": response | {"usage": None}},
        {"type": "response.output_item.added", "output_index": 0, "item": item},
    ] + [
        {"type": f"response.{delta}.delta", "item_id": "item_1", "output_index": 0, "delta": PATCH}
        for _ in range(40)
    ]
    body = "".join(
        f"event: {event['type']}\ndata: {json.dumps(event | {'sequence_number': n})}\n\n"
        for n, event in enumerate(events)
    )
    return kit.sse_response(body.encode())


@pytest.mark.parametrize("kind", ["custom_tool_call", "code_interpreter_call", "mcp_call"])
async def test_a_responses_stream_ended_while_writing_a_tools_input_counts_it(
    records: Records, kit: ModuleType, is_async: bool, kind: str
) -> None:
    """A custom tool's input (a coding agent's patch), code interpreter code and an MCP call's
    arguments are output the model writes, estimated as a function call's arguments are (they
    were left out: 3,000 characters streamed by, recorded as 0 output tokens)."""
    tokenmeter.instrument("openai")
    for item in ("function_call", kind):
        client = kit.mock_openai(
            lambda request, item=item: _tool_input_ended(kit, item), is_async=is_async
        )
        await kit.drain(
            await kit.maybe(client.responses.create(model="gpt-5", input="Fix it", stream=True))
        )
    arguments, written = records()
    assert arguments.estimated and written.estimated and arguments.output_tokens > 500
    assert written.output_tokens == arguments.output_tokens


@pytest.mark.parametrize("kind", ["custom_tool_call", "code_interpreter_call"])
async def test_a_responses_reply_without_usage_counts_a_tools_input(
    records: Records, kit: ModuleType, kind: str
) -> None:
    """The same input in an answer that was not streamed is estimated as it is streamed (a
    code interpreter call has no name to count)."""
    tokenmeter.instrument("openai")
    for item in ("function_call", kind):
        output = [_tool_item(item, PATCH * 40)]
        body = kit.response_body("gpt-5-2025-08-07", output, [], 0, 0) | {"usage": None}
        client = kit.mock_openai(lambda request, body=body: json_reply(kit.http, body))
        client.responses.create(model="gpt-5", input="Fix it")
    arguments, written = records()
    assert arguments.estimated and written.estimated and arguments.output_tokens > 500
    assert _close_to(written.output_tokens, arguments.output_tokens, 0.01)


#: A long answer: its output, not its input, is what a reply without usage is mostly billed for.
LONG_ANSWER = "The quick brown fox jumps over the lazy dog. " * 100
TOOL_CALL = ("get_weather", '{"city": "Paris", "days": 5}')


def _reply_without_usage(kit: ModuleType, api: str) -> dict[str, Any]:
    """A chat completion without ``usage`` (as some compatible servers answer), or a Responses
    answer with ``"usage": null``: the answer and a tool call, and no count of them."""
    name, arguments = TOOL_CALL
    if api == "chat":
        body = kit.chat_body()
        del body["usage"]
        function = {"name": name, "arguments": arguments}
        body["choices"][0]["message"] = {
            "role": "assistant",
            "content": LONG_ANSWER,
            "tool_calls": [{"id": "call_1", "type": "function", "function": function}],
        }
        return body
    text = {"type": "output_text", "text": LONG_ANSWER, "annotations": []}
    message = {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed"}
    output = [
        {**message, "content": [text]},
        {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": name}
        | {"arguments": arguments, "status": "completed"},
    ]
    return kit.response_body("gpt-4o-2024-08-06", output, [], 0, 0) | {"usage": None}


#: Usage blocks that report nothing, as proxies and compatible servers that strip or zero the
#: counts send them (by name: absent, for the chat and Responses shapes).
NO_COUNTS: dict[str, dict[str, Any] | None] = {
    "absent": None,
    "empty": {},
    "zeros": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    "responses zeros": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0},
    # Groq's timings beside zeros: seconds, no count
    "timed zeros": {"prompt_tokens": 0, "completion_tokens": 0, "queue_time": 0.02},
    "responses timed zeros": {"input_tokens": 0, "output_tokens": 0, "queue_time": 0.02},
}


@pytest.mark.parametrize("api", ["chat", "responses"])
@pytest.mark.parametrize("usage", ["absent", "empty", "zeros", "timed zeros"])
async def test_a_reply_without_usage_is_estimated_from_its_text(
    records: Records, kit: ModuleType, is_async: bool, api: str, usage: str
) -> None:
    """A reply that was not streamed and carries no usage holds its whole answer: its output is
    estimated from that text and its tool calls, as the same answer streamed is (it was 0: a
    1,100-token answer recorded as its 12 input tokens, $0.00003). A usage block without a count
    (``{}``) or of zeros reports nothing either: it was a failed call (UnreadableUsage, no cost)
    and a $0 one (1,000 words asked, 400 answered, on gpt-4o: $0.0087675 estimated)."""
    body = _reply_without_usage(kit, api)
    if usage != "absent":
        key = f"responses {usage}" if api == "responses" and "zeros" in usage else usage
        body["usage"] = NO_COUNTS[key]
    client = kit.mock_openai(lambda request: json_reply(kit.http, body), is_async=is_async)
    tokenmeter.instrument("openai")
    request: dict[str, Any]
    if api == "chat":
        request = {"model": "gpt-4o", "messages": MESSAGES}
        await kit.maybe(client.chat.completions.create(**request))
    else:
        request = {"model": "gpt-4o", "input": "What is the capital of France?"}
        await kit.maybe(client.responses.create(**request))
    record = only(records())
    assert (record.status, record.estimated) == ("ok", True)
    assert record.input_tokens == estimate_input("openai", request).input_tokens
    said = tokenmeter.estimate("gpt-4o", output=LONG_ANSWER + "".join(TOOL_CALL))
    assert record.output_tokens == said.output_tokens > 1_000


@pytest.mark.requires(google_genai=">=1.46")  # HttpOptions(httpx_client=...)
async def test_a_gemini_reply_without_usage_metadata_is_estimated_from_its_text(
    records: Records, is_async: bool
) -> None:
    """A Gemini answer without ``usageMetadata``: its output is estimated from its parts' text
    and function calls (it was 0). Thought summaries are left out, as a stream's are."""
    from google.genai import _api_client

    http = http_of(_api_client)
    parts = [
        {"text": "Thinking about the weather.", "thought": True},
        {"text": LONG_ANSWER},
        {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
    ]
    body = {
        "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP"}],
        "modelVersion": "gemini-2.5-flash",
    }
    client = mock_genai(lambda request: json_reply(http, body))
    tokenmeter.instrument("google-genai")
    request = {"model": "gemini-2.5-flash", "contents": "Weather in Paris?"}
    if is_async:
        await client.aio.models.generate_content(**request)
    else:
        client.models.generate_content(**request)
    record = only(records())
    assert (record.status, record.estimated) == ("ok", True)
    said = tokenmeter.estimate(
        "gemini-2.5-flash", output=LONG_ANSWER + 'get_weather{"city": "Paris"}'
    )
    assert record.output_tokens == said.output_tokens > 1_000


async def test_zero_tokens_beside_billed_web_searches_are_usage_not_an_estimate(
    records: Records, kit: ModuleType, is_async: bool
) -> None:
    """A usage block of zero tokens that counts 3 web searches reports what was billed: taken
    as no usage, its searches were dropped and the call estimated ($0.008889 for $0.03)."""
    from anthropic import _base_client

    body = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": "Paris."}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 0,
            "output_tokens": 0,
            "server_tool_use": {"web_search_requests": 3},
        },
    }
    http = http_of(_base_client)
    client = mock_anthropic(lambda request: json_reply(http, body), is_async=is_async)
    tokenmeter.instrument("anthropic")
    request = {"model": "claude-sonnet-4-5", "max_tokens": 2_000, "messages": MESSAGES[1:]}
    await kit.maybe(client.messages.create(**request))
    record = only(records())
    assert (record.status, record.estimated) == ("ok", False)
    assert record.tool_requests == {"web_search": 3}
    assert record.estimated_cost_usd == Decimal("0.03")


@pytest.mark.parametrize("usage", ["absent", "null", "empty", "zeros"])
async def test_an_anthropic_reply_without_usage_is_estimated_from_its_text(
    records: Records, kit: ModuleType, is_async: bool, usage: str
) -> None:
    """A message without a usage block (an Anthropic-compatible server's): its output is
    estimated from its text and tool_use blocks, as the same reply streamed is. It was an error
    record (UnreadableUsage, 0 tokens, no cost) for a call that succeeded; so was one whose
    usage is ``{}``, and one of zeros was a $0 call."""
    from anthropic import _base_client

    name, arguments = TOOL_CALL
    body: dict[str, Any] = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [
            {"type": "text", "text": LONG_ANSWER},
            {"type": "tool_use", "id": "toolu_1", "name": name, "input": json.loads(arguments)},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
    }
    if usage == "null":
        body["usage"] = None
    elif usage != "absent":
        body["usage"] = {} if usage == "empty" else {"input_tokens": 0, "output_tokens": 0}
    http = http_of(_base_client)
    client = mock_anthropic(lambda request: json_reply(http, body), is_async=is_async)
    tokenmeter.instrument("anthropic")
    request = {"model": "claude-sonnet-4-5", "max_tokens": 2_000, "messages": MESSAGES[1:]}
    await kit.maybe(client.messages.create(**request))
    record = only(records())
    assert (record.status, record.error, record.estimated) == ("ok", None, True)
    assert record.input_tokens == estimate_input("anthropic", request).input_tokens
    said = tokenmeter.estimate(
        "claude-sonnet-4-5", output=LONG_ANSWER + name + '{"city":"Paris","days":5}'
    )
    assert record.output_tokens == said.output_tokens > 1_000
    assert record.estimated_cost_usd is not None and record.estimated_cost_usd > 0


async def _events(stream: Any, is_async: bool) -> Any:
    if is_async:
        async for event in stream:
            yield event
    else:
        for event in stream:
            yield event


@pytest.mark.requires(openai=">=1.80")  # background responses
async def test_background_response_is_one_quiet_record_with_the_create_model(
    sink: InMemorySink, kit: ModuleType, is_async: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Create (queued, no usage), retrieve while in progress, retrieve when completed: one
    record, with the create's model as the request model, and nothing logged as a problem."""
    statuses = iter(["queued", "in_progress", "in_progress", "completed"])

    def server(request: Any) -> Any:
        status = next(statuses)
        body = {
            "id": "resp_bg",
            "object": "response",
            "created_at": 1,
            "status": status,
            "background": True,
            "model": "o3-deep-research-2025-06-26",
            "output": [],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": None,
        }
        if status == "completed":
            body["usage"] = {"input_tokens": 1200, "output_tokens": 5400, "total_tokens": 6600}
        return kit.http.Response(200, json=body)

    client = kit.mock_openai(server, is_async=is_async)
    tokenmeter.instrument("openai")
    with caplog.at_level(logging.DEBUG, logger="tokenmeter"):
        created = await kit.maybe(
            client.responses.create(
                model="o3-deep-research", input="Survey of tidal energy", background=True
            )
        )
        for _ in range(3):
            done = await kit.maybe(client.responses.retrieve(created.id))
    assert done.status == "completed"
    record = only(flushed(sink))
    assert record.request_model == "o3-deep-research"
    assert record.model_name == "o3-deep-research-2025-06-26"
    assert (record.input_tokens, record.output_tokens, record.estimated) == (1200, 5400, False)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert all(r.exc_info is None for r in caplog.records)


async def test_anthropic_stream_left_before_its_output_count_is_estimated(
    fake: Any, instrumented: Records, is_async: bool
) -> None:
    """``message_start`` reports the whole input but a provisional output of about one token;
    left before ``message_delta``, the output is estimated from the text that streamed by."""
    fake.stream_chunks = 60
    client = fake.anthropic_client(async_=is_async)
    manager = client.messages.stream(
        model="claude-haiku-4-5", max_tokens=256, messages=[{"role": "user", "content": "Count."}]
    )
    seen = ""
    if is_async:
        async with manager as stream:
            async for event in stream:
                if event.type == "content_block_delta":
                    seen += event.delta.text
                if len(seen) > 100:
                    break
    else:
        with manager as stream:
            for event in stream:
                if event.type == "content_block_delta":
                    seen += event.delta.text
                if len(seen) > 100:
                    break
    record = only(instrumented())
    assert record.input_tokens == fake.anthropic_usage.normalized().input_tokens  # as reported
    assert record.estimated and record.status == "ok"
    expected = tokenmeter.estimate("claude-haiku-4-5", output=seen).output_tokens
    assert record.output_tokens == expected > 20


def _wav(seconds: int, rate: int = 16_000) -> bytes:
    """A 16-bit mono PCM WAV file: its header says how long it is."""
    import struct

    data = b"\0" * (seconds * rate * 2)
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    body = b"WAVEfmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", len(data))
    return b"RIFF" + struct.pack("<I", len(body) + len(data)) + body + data


async def test_audio_of_a_call_without_usage_is_estimated_and_priced_as_audio(
    kit: Any, records: Records, is_async: bool
) -> None:
    """A response without usage for a request carrying 30 s of audio: the estimate counts the
    audio by its duration (10 tokens a second) and prices it at the audio rate ($40 / M for
    gpt-4o-audio-preview, not the $2.50 of text)."""
    import base64
    from decimal import Decimal

    body = kit.chat_body(model="gpt-4o-audio-preview-2024-12-17")
    del body["usage"]
    client = kit.mock_openai(lambda request: kit.http.Response(200, json=body), is_async=is_async)
    tokenmeter.instrument("openai")
    clip = base64.b64encode(_wav(30)).decode()
    content = [
        {"type": "text", "text": "Transcribe this."},
        {"type": "input_audio", "input_audio": {"data": clip, "format": "wav"}},
    ]
    await kit.maybe(
        client.chat.completions.create(
            model="gpt-4o-audio-preview", messages=[{"role": "user", "content": content}]
        )
    )
    record = only(records())
    assert record.estimated is True
    assert record.modalities["input_audio"] == 300
    assert record.cost_breakdown is not None
    assert record.cost_breakdown["input_audio"] == Decimal("0.012")  # 300 x $40 / M


#: What an audio answer says in one chunk: its audio (1 s of 24 kHz pcm16) and its transcript.
SPOKEN = "Paris has been the capital of France since the tenth century. "


def _audio_answer(kit: ModuleType, streamed: bool) -> Any:
    """A gpt-4o-audio-preview answer without usage: 8 chunks of audio and transcript, or the
    reply holding the whole of it."""
    import base64

    second = base64.b64encode(b"\0\0" * 24_000).decode()
    model = "gpt-4o-audio-preview-2024-12-17"
    if not streamed:
        body = kit.chat_body(model=model)
        del body["usage"]
        audio = {"id": "audio_1", "data": second, "expires_at": 1, "transcript": SPOKEN * 8}
        body["choices"][0]["message"] = {"role": "assistant", "content": None, "audio": audio}
        return json_reply(kit.http, body)
    base = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": model}
    delta = {"role": "assistant", "audio": {"id": "audio_1", "data": second, "transcript": SPOKEN}}
    chunk = base | {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
    return sse_reply(kit.http, [(None, chunk)] * 8)


@pytest.mark.parametrize("streamed", [True, False], ids=["stream left early", "reply"])
async def test_an_audio_answer_without_usage_counts_its_transcript(
    records: Records, kit: ModuleType, streamed: bool
) -> None:
    """An answer in audio whose usage never came (a stream the listener stopped after 4
    chunks; a reply without usage) counts its transcript as output, as the text an answer
    holds: it was recorded with 0 output (the input alone, $0 of output). Its audio is not
    counted (OpenAI documents no tokens a second for output audio): the estimate is low."""
    client = kit.mock_openai(lambda request: _audio_answer(kit, streamed))
    tokenmeter.instrument("openai")
    request = {
        "model": "gpt-4o-audio-preview",
        "modalities": ["text", "audio"],
        "audio": {"voice": "alloy", "format": "pcm16"},
        "messages": MESSAGES,
    }
    if streamed:
        stream = client.chat.completions.create(stream=True, **request)
        for _ in range(4):
            next(stream)
        stream.close()
    else:
        client.chat.completions.create(**request)
    record = only(records())
    heard = SPOKEN * (4 if streamed else 8)
    said = tokenmeter.estimate("gpt-4o-audio-preview", output=heard)
    assert record.estimated and record.output_tokens == said.output_tokens > 40
    assert record.cost_breakdown is not None and record.cost_breakdown["output"] > 0


async def test_an_estimate_inside_a_call_never_waits_for_a_tokenizer_to_load(
    records: Records, kit: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Importing a tokenizer and loading its vocabulary is slow: the first call without usage
    is estimated by the heuristic while the tokenizer loads in the background (held here until
    released), and the calls after it by the tokenizer."""
    tokenizer = _estimate._counter("o200k_base")
    loading, release = threading.Event(), threading.Event()

    def held_load(name: str) -> Any:
        loading.set()
        release.wait(60)
        return tokenizer

    request = {"model": "gpt-4o", "messages": MESSAGES}
    with monkeypatch.context() as none_offline:
        none_offline.setattr(_estimate, "_counters", {"o200k_base": None, "cl100k_base": None})
        none_offline.setattr(_estimate, "_counts", {})
        heuristic = estimate_input("openai", request).input_tokens
    assert heuristic != estimate_input("openai", request).input_tokens
    monkeypatch.setattr(_estimate, "_counters", {})
    monkeypatch.setattr(_estimate, "_loading", set())
    monkeypatch.setattr(_estimate, "_counts", {})
    monkeypatch.setattr(_estimate, "_bpe_openai", held_load)
    client = kit.mock_openai(StreamingServer(kit))
    tokenmeter.instrument("openai")

    await kit.drain(await _open(client, kit, stream_options={"include_usage": False}))
    first = only(records())  # written while the tokenizer is still loading
    assert loading.is_set() and not release.is_set()
    assert first.estimated and first.input_tokens == heuristic

    release.set()
    for thread in threading.enumerate():
        if thread.name == "tokenmeter-tokenizer":
            thread.join(60)
    await kit.drain(await _open(client, kit, stream_options={"include_usage": False}))
    second = records()[-1]
    assert second.estimated
    assert second.input_tokens == estimate_input("openai", request).input_tokens != heuristic


@pytest.mark.parametrize("usage", ["empty", "zeros"])
@pytest.mark.parametrize("api", ["chat", "anthropic"])
async def test_a_stream_whose_usage_reports_nothing_is_estimated_as_not_streamed(
    records: Records, kit: ModuleType, is_async: bool, api: str, usage: str
) -> None:
    """A stream closing on ``usage: {}`` (an error record, UnreadableUsage, no cost) or on
    zeros (a $0 call) from a compatible server: estimated like the same answer not streamed,
    from what streamed by (status ok, estimated)."""
    text = " ".join(ANSWER)
    if api == "anthropic":
        from anthropic import _base_client

        block = {} if usage == "empty" else {"input_tokens": 0, "output_tokens": 0}
        message = {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": block,
        }
        delta = {"type": "text_delta", "text": text}
        closing = {"stop_reason": "end_turn", "stop_sequence": None}
        events: list[tuple[str | None, Any]] = [
            ("message_start", {"type": "message_start", "message": message}),
            ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}),
            ("message_delta", {"type": "message_delta", "delta": closing, "usage": block}),
            ("message_stop", {"type": "message_stop"}),
        ]
        http = http_of(_base_client)
        client = mock_anthropic(lambda request: sse_reply(http, events), is_async=is_async)
        tokenmeter.instrument("anthropic")
        answer = client.messages.create(
            model="claude-sonnet-4-5", max_tokens=2_000, messages=MESSAGES[1:], stream=True
        )
    else:
        if api == "chat":
            block = {} if usage == "empty" else {"prompt_tokens": 0, "completion_tokens": 0}
            head = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o"}
            said = {"index": 0, "delta": {"role": "assistant", "content": text}}
            events = [
                (None, {**head, "choices": [said]}),
                (None, {**head, "choices": [], "usage": block}),
                (None, b"[DONE]"),
            ]
        else:
            block = {} if usage == "empty" else {"input_tokens": 0, "output_tokens": 0}
            response = {
                "id": "resp_1",
                "object": "response",
                "created_at": 1,
                "status": "completed",
                "model": "gpt-4o",
                "output": [],
                "parallel_tool_calls": True,
                "tool_choice": "auto",
                "tools": [],
                "usage": block,
            }
            delta = {
                "type": "response.output_text.delta",
                "sequence_number": 1,
                "item_id": "m1",
                "output_index": 0,
                "content_index": 0,
                "delta": text,
                "logprobs": [],
            }
            done = {"type": "response.completed", "sequence_number": 2, "response": response}
            events = [(delta["type"], delta), (done["type"], done)]
        client = kit.mock_openai(lambda request: sse_reply(kit.http, events), is_async=is_async)
        tokenmeter.instrument("openai")
        if api == "chat":
            answer = client.chat.completions.create(
                model="gpt-4o",
                messages=MESSAGES,
                stream=True,
                stream_options={"include_usage": True},
            )
        else:
            answer = client.responses.create(model="gpt-4o", input=text, stream=True)
    await kit.drain(await kit.maybe(answer))
    record = only(records())
    assert (record.status, record.error, record.estimated) == ("ok", None, True)
    assert record.input_tokens > 0 and record.output_tokens > 0
    assert record.estimated_cost_usd is not None and record.estimated_cost_usd > 0


def _capped_call(kit: ModuleType, sdk: str, is_async: bool) -> Callable[[], Any]:
    """A call through ``sdk`` asking for at most 50 output tokens (100 where it asks for two
    choices), whose server answers LONG_ANSWER (over 1,000 tokens) and no usage."""
    if sdk in ("chat max_tokens", "chat max_completion_tokens n=2", "responses"):
        api = "responses" if sdk == "responses" else "chat"
        body = _reply_without_usage(kit, api)
        openai = kit.mock_openai(lambda request: json_reply(kit.http, body), is_async=is_async)
        if sdk == "responses":
            return lambda: openai.responses.create(
                model="gpt-4o", input="Tell me a story.", max_output_tokens=50
            )
        cap = {"max_tokens": 50} if sdk == "chat max_tokens" else {"max_completion_tokens": 50}
        n = {"n": 2} if "n=2" in sdk else {}
        return lambda: openai.chat.completions.create(model="gpt-4o", messages=MESSAGES, **cap, **n)
    if sdk == "anthropic":
        from anthropic import _base_client

        message = {"id": "msg_1", "type": "message", "role": "assistant", "stop_sequence": None}
        message |= {"model": "claude-sonnet-4-5", "stop_reason": "max_tokens"}
        message |= {"content": [{"type": "text", "text": LONG_ANSWER}]}
        http = http_of(_base_client)
        anthropic = mock_anthropic(lambda request: json_reply(http, message), is_async=is_async)
        return lambda: anthropic.messages.create(
            model="claude-sonnet-4-5", max_tokens=50, messages=MESSAGES[1:]
        )
    from google.genai import _api_client
    from google.genai import types as gtypes

    parts = [{"text": "Thinking it over.", "thought": True}, {"text": LONG_ANSWER}]
    gemini_body = {
        "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP"}],
        "modelVersion": "gemini-2.5-flash",
    }
    gemini = mock_genai(lambda request: json_reply(http_of(_api_client), gemini_body))
    config: Any = {"max_output_tokens": 50}
    if sdk == "google-genai config object":
        config = gtypes.GenerateContentConfig(max_output_tokens=50)
    models = gemini.aio.models if is_async else gemini.models
    return lambda: models.generate_content(
        model="gemini-2.5-flash", contents="Tell me a story.", config=config
    )


@pytest.mark.parametrize(
    ("sdk", "cap"),
    [
        ("chat max_tokens", 50),
        ("chat max_completion_tokens n=2", 100),
        ("responses", 50),
        ("anthropic", 50),
        pytest.param("google-genai", 50, marks=pytest.mark.requires(google_genai=">=1.46")),
        pytest.param(
            "google-genai config object", 50, marks=pytest.mark.requires(google_genai=">=1.46")
        ),
    ],
)
async def test_an_estimated_output_is_capped_at_the_requests_output_limit(
    records: Records, kit: ModuleType, is_async: bool, sdk: str, cap: int
) -> None:
    """A reply without usage far longer than the request allowed (a proxy's or a misbehaving
    server's): its output was estimated from all the text that came, a 2 MB reply to
    ``max_tokens=10`` at 588,253 output tokens. The provider stops, and bills, at the limit
    (per choice asked for): the estimate does too."""
    call = _capped_call(kit, sdk, is_async)
    tokenmeter.instrument(["openai", "anthropic", "google-genai"])
    await kit.maybe(call())
    record = only(records())
    assert (record.status, record.estimated) == ("ok", True)
    assert record.output_tokens == cap
    assert tokenmeter.estimate("gpt-4o", output=LONG_ANSWER).output_tokens > 1_000


def _anthropic_stream_events(usage: dict[str, int], fallback: bool) -> list[tuple[str, Any]]:
    """An Anthropic stream cut after LONG_ANSWER streamed by (no message_delta, no
    message_stop): ``message_start`` reports ``usage``; with ``fallback``, a refusal fallback
    block hands over to claude-opus-4-6, which streams LONG_ANSWER again."""
    message = {"id": "msg_1", "type": "message", "role": "assistant", "content": []}
    message |= {"model": "claude-sonnet-4-5", "stop_reason": None, "stop_sequence": None}
    text = {"type": "text_delta", "text": LONG_ANSWER}
    events: list[tuple[str, Any]] = [
        ("message_start", {"type": "message_start", "message": message | {"usage": usage}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": text}),
    ]
    if fallback:
        block = {"type": "fallback", "from": {"model": "claude-sonnet-4-5"}}
        block |= {"to": {"model": "claude-opus-4-6"}}
        events += [
            (
                "content_block_start",
                {"type": "content_block_start", "index": 1} | {"content_block": block},
            ),
            ("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": text}),
        ]
    return events


async def _partly_counted_call(kit: ModuleType, sdk: str, is_async: bool) -> None:
    """A call through ``sdk`` asking for at most 50 output tokens, whose answer is LONG_ANSWER
    (over 1,000 tokens) with a usage that counts the input but not that output."""
    if sdk.startswith("chat"):
        streamed = sdk == "chat stream"
        counted = {"prompt_tokens": 19}  # a compatible server's: the input alone

        def server(request: Any) -> Any:
            if not streamed:
                body = kit.chat_body() | {"usage": counted}
                body["choices"][0]["message"] = {"role": "assistant", "content": LONG_ANSWER}
                return json_reply(kit.http, body)
            base = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o"}
            delta = {"index": 0, "delta": {"content": LONG_ANSWER}, "finish_reason": "length"}
            chunks = [{**base, "choices": [delta]}, {**base, "choices": [], "usage": counted}]
            return sse_reply(kit.http, [*((None, c) for c in chunks), (None, b"[DONE]")])

        openai = kit.mock_openai(server, is_async=is_async)
        request = {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 50}
        if streamed:
            options = {"stream": True, "stream_options": {"include_usage": True}}
            await kit.drain(await kit.maybe(openai.chat.completions.create(**request, **options)))
        else:
            await kit.maybe(openai.chat.completions.create(**request))
        return
    if sdk.startswith("anthropic"):
        from anthropic import _base_client

        usage = {"input_tokens": 10, "output_tokens": 80 if "reported" in sdk else 1}
        events = _anthropic_stream_events(usage, fallback="fallback" in sdk)
        http = http_of(_base_client)
        anthropic = mock_anthropic(lambda request: sse_reply(http, events), is_async=is_async)
        stream = await kit.maybe(
            anthropic.messages.create(
                model="claude-sonnet-4-5", max_tokens=50, messages=MESSAGES[1:], stream=True
            )
        )
        await kit.drain(stream)
        return
    from google.genai import _api_client

    running = {"promptTokenCount": 40, "totalTokenCount": 40}  # the prompt alone so far
    chunk = {"candidates": [{"content": {"parts": [{"text": LONG_ANSWER}], "role": "model"}}]}
    chunk |= {"usageMetadata": running, "modelVersion": "gemini-2.5-flash"}
    gemini = mock_genai(lambda request: sse_reply(http_of(_api_client), [(None, chunk)]))
    request = {"model": "gemini-2.5-flash", "contents": "Tell me a story."}
    request["config"] = {"max_output_tokens": 50}
    if is_async:
        await kit.drain(await gemini.aio.models.generate_content_stream(**request))
    else:
        await kit.drain(gemini.models.generate_content_stream(**request))


@pytest.mark.parametrize(
    ("sdk", "output"),
    [
        ("chat reply", 50),
        ("chat stream", 50),
        ("anthropic stream", 50),
        ("anthropic stream, output reported", 80),  # the provider's count: never capped
        pytest.param(
            "anthropic fallback stream", 100, marks=pytest.mark.requires(anthropic=">=2.15")
        ),
        pytest.param("gemini stream", 50, marks=pytest.mark.requires(google_genai=">=1.46")),
    ],
)
async def test_an_output_estimated_beside_a_reported_input_is_capped_at_the_output_limit(
    records: Records, kit: ModuleType, is_async: bool, sdk: str, output: int
) -> None:
    """The cap on an estimated output held only for a reply without any usage. A usage that
    counts the input alone (a compatible server's ``{"prompt_tokens": 19}``, a Gemini running
    total of the prompt), or an Anthropic stream cut after ``message_start``, had its output
    estimated from all the text: a reply of 20,000 words to ``max_tokens=10`` was recorded at
    25,000 output tokens, an Anthropic stream at 14,709. The provider stops, and bills, at the
    limit: each hop of a refusal fallback at its own, and a count it reported stays as it is."""
    tokenmeter.instrument(["openai", "anthropic", "google-genai"])
    await _partly_counted_call(kit, sdk, is_async)
    record = only(records())
    assert (record.status, record.estimated) == ("ok", True)
    assert record.output_tokens == output
    assert tokenmeter.estimate("gpt-4o", output=LONG_ANSWER).output_tokens > 1_000
