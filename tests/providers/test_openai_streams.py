"""OpenAI streams: transparent to the caller, finalised exactly once on every exit path.

Replies come from a ``MockTransport`` (``kit.http``: httpx2 or httpx, as the SDK uses) so the
bytes are identical with and without tokenmeter, which makes chunk-for-chunk comparison exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import gc
import json
import logging
import weakref
from collections.abc import AsyncIterator, Iterable
from types import ModuleType
from typing import Any

import openai
import pytest
import wrapt
from provider_helpers import MESSAGES, Records, cut_reply, only, sse_reply

import tokenmeter
from tokenmeter.sinks import InMemorySink
from tokenmeter.testing import FakeProvider
from tokenmeter.testing._sdk import unmet


class ChatServer:
    """Answers chat streams like OpenAI: a usage-only chunk only when include_usage is true."""

    def __init__(self, kit: ModuleType, chunks: int = 5) -> None:
        self.kit = kit
        self.chunks = chunks
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, request: Any) -> Any:
        body = json.loads(request.content)
        self.bodies.append(body)
        usage = (
            self.kit.CHAT_USAGE if (body.get("stream_options") or {}).get("include_usage") else None
        )
        if not body.get("stream"):
            return self.kit.http.Response(200, json=self.kit.chat_body())
        return self.kit.sse_response(self.kit.chat_sse(self.chunks, usage))


def dumps(chunks: list[Any]) -> list[dict[str, Any]]:
    return [chunk.model_dump() for chunk in chunks]


async def stream_once(client: Any, kit: ModuleType, **kwargs: Any) -> list[Any]:
    stream = await kit.maybe(
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True, **kwargs)
    )
    return list(await kit.drain(stream))


@pytest.mark.parametrize(
    "stream_options", [None, {"include_usage": True}, {"include_usage": False}]
)
async def test_caller_sees_exactly_the_chunks_it_would_without_tokenmeter(
    records: Records, kit: ModuleType, is_async: bool, stream_options: dict[str, Any] | None
) -> None:
    server = ChatServer(kit)
    client = kit.mock_openai(server, is_async=is_async)
    extra = {} if stream_options is None else {"stream_options": stream_options}
    bare = await stream_once(client, kit, **extra)
    tokenmeter.instrument("openai")
    seen = await stream_once(client, kit, **extra)
    assert dumps(seen) == dumps(bare)
    assert [type(c) for c in seen] == [type(c) for c in bare]
    wants_usage = bool(stream_options and stream_options["include_usage"])
    assert (seen[-1].usage is not None) is wants_usage  # the usage chunk only when asked for
    sent = server.bodies[-1]
    if stream_options is None:
        assert sent["stream_options"] == {"include_usage": True}  # requested by tokenmeter
    else:
        assert sent["stream_options"] == stream_options  # an explicit choice is never overridden


@pytest.mark.parametrize(
    "stream_options",
    [{"include_usage": True}, {"include_usage": False}, {"continuous_usage_stats": True}],
)
async def test_stream_options_given_through_extra_body_are_the_callers(
    records: Records, kit: ModuleType, is_async: bool, stream_options: dict[str, Any]
) -> None:
    """``extra_body`` replaces the body's ``stream_options`` whole (the SDK merges shallowly):
    what the caller put there is sent as it is, and a usage chunk it asked for is not hidden."""
    server = ChatServer(kit)
    client = kit.mock_openai(server, is_async=is_async)
    extra = {"extra_body": {"stream_options": stream_options}}
    bare = await stream_once(client, kit, **extra)
    tokenmeter.instrument("openai")

    seen = await stream_once(client, kit, **extra)

    assert dumps(seen) == dumps(bare)
    assert server.bodies[-1]["stream_options"] == stream_options
    record = only(records())
    reported = stream_options.get("include_usage") is True
    assert (record.status, record.estimated) == ("ok", not reported)
    if reported:
        assert (record.input_tokens, record.output_tokens) == (19, 10)


@pytest.mark.parametrize("stream_options", ["usage", ["include_usage"], 5])
async def test_stream_options_that_are_not_an_object_are_sent_as_given_and_recorded(
    records: Records, kit: ModuleType, is_async: bool, stream_options: Any
) -> None:
    """A ``stream_options`` that is not an object is the caller's mistake, sent as it is: the
    server's refusal reaches the caller and is an error record (the call was not left
    unmetered because its options could not be merged with ``include_usage``)."""
    bodies: list[dict[str, Any]] = []

    def server(request: Any) -> Any:
        bodies.append(json.loads(request.content))
        error = {"message": "Invalid type for 'stream_options'", "type": "invalid_request_error"}
        return kit.http.Response(400, json={"error": error})

    client = kit.mock_openai(server, is_async=is_async, max_retries=0)
    tokenmeter.instrument("openai")

    with pytest.raises(openai.BadRequestError):
        await stream_once(client, kit, stream_options=stream_options)

    assert bodies[-1]["stream_options"] == stream_options
    record = only(records())
    assert (record.status, record.error, record.streamed) == ("error", "BadRequestError", True)


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, {"error": {"message": "Unrecognized request argument supplied: stream_options"}}),
        (
            422,
            {
                "detail": [
                    {"loc": ["body", "stream_options"], "msg": "Extra inputs are not permitted"}
                ]
            },
        ),
    ],
)
async def test_a_server_that_refuses_stream_options_still_answers_the_callers_stream(
    records: Records, kit: ModuleType, is_async: bool, status: int, error: dict[str, Any]
) -> None:
    """Azure OpenAI before api-version 2024-09-01-preview (and compatible servers that forbid
    unknown fields) refuse ``stream_options``: the bare call streams, so the include_usage that
    tokenmeter adds must not make it fail. The caller's own request is sent instead, the stream
    recorded with an estimate, and that server is not asked again."""
    inner = ChatServer(kit)

    def server(request: Any) -> Any:
        if "stream_options" in json.loads(request.content):
            inner.bodies.append(json.loads(request.content))
            return kit.http.Response(status, json=error)
        return inner(request)

    client = kit.mock_openai(server, is_async=is_async, max_retries=0)
    bare = await stream_once(client, kit)
    tokenmeter.instrument("openai")

    seen = await stream_once(client, kit)
    again = await stream_once(client, kit)

    assert dumps(seen) == dumps(again) == dumps(bare)
    assert [("stream_options" in body) for body in inner.bodies] == [False, True, False, False]
    first, second = records()
    assert (first.status, first.estimated, first.streamed) == ("ok", True, True)
    assert (second.status, second.estimated) == ("ok", True)


async def test_the_callers_own_stream_options_mistake_is_not_a_server_refusing_usage(
    records: Records, kit: ModuleType, is_async: bool
) -> None:
    """A 400 naming the caller's own ``stream_options`` (a string where a boolean belongs) is
    the caller's error: it was taken for the server refusing the include_usage tokenmeter adds,
    so the request was sent a second time and every later stream to that server went without
    include_usage, recorded as an estimate instead of its exact usage."""
    inner = ChatServer(kit)
    refusal = {
        "error": {
            "message": "Invalid type for 'stream_options.include_obfuscation': expected a boolean",
            "type": "invalid_request_error",
            "param": "stream_options.include_obfuscation",
        }
    }

    sent = []

    def server(request: Any) -> Any:
        options = json.loads(request.content).get("stream_options") or {}
        sent.append(options)
        if "include_obfuscation" in options:
            return kit.http.Response(400, json=refusal)
        return inner(request)

    client = kit.mock_openai(server, is_async=is_async, max_retries=0)
    tokenmeter.instrument("openai")
    with pytest.raises(openai.BadRequestError, match="include_obfuscation"):
        await kit.maybe(
            client.chat.completions.create(
                model="gpt-4o",
                messages=MESSAGES,
                stream=True,
                stream_options={"include_obfuscation": "no"},  # type: ignore[typeddict-item]
            )
        )
    await stream_once(client, kit)

    assert sent == [
        {"include_obfuscation": "no", "include_usage": True},  # sent once
        {"include_usage": True},  # still asked
    ]
    failed, streamed = records()
    assert (failed.status, failed.error) == ("error", "BadRequestError")
    assert (streamed.status, streamed.estimated) == ("ok", False)


class ToolChoiceServer(ChatServer):
    """A compatible server that fails ``tool_choice`` without ``tools`` by its own check, with
    an answer echoing the whole request body (``stream_options`` included): FastAPI's default
    422 (``echo="json"``) or a 400 carrying the validation error's text (``echo="text"``)."""

    def __init__(self, kit: ModuleType, echo: str) -> None:
        super().__init__(kit)
        self.echo = echo

    def __call__(self, request: Any) -> Any:
        body = json.loads(request.content)
        if not (body.get("tool_choice") and not body.get("tools")):
            return super().__call__(request)
        self.bodies.append(body)
        message = "Value error, When using `tool_choice`, `tools` must be set."
        if self.echo == "text":
            return self.kit.http.Response(400, text=f"{message} [input_value={body!r}]")
        detail = [{"type": "value_error", "loc": ["body"], "msg": message, "input": body}]
        return self.kit.http.Response(422, json={"detail": detail})


@pytest.mark.parametrize("echo", ["json", "text"])
async def test_an_error_echoing_the_request_is_no_refusal_of_stream_options(
    records: Records, kit: ModuleType, is_async: bool, echo: str
) -> None:
    """A server's error about another field whose answer echoes the request (FastAPI's default
    422 holds the body in ``detail[].input``) names ``stream_options`` too: it was taken for the
    server refusing usage, the failed request was sent twice and every later stream to that
    server went without include_usage, recorded as an estimate (10 / 28 for a reported 1200 /
    300). A JSON answer is read where it names a field, never in its echo: sent once. A text
    one cannot be told apart: sent as given, it fails again, and that error is raised while the
    server is still asked for usage."""
    server = ToolChoiceServer(kit, echo)
    client = kit.mock_openai(server, is_async=is_async, max_retries=0)
    tokenmeter.instrument("openai")

    with pytest.raises(openai.APIStatusError) as failed:
        await stream_once(client, kit, tool_choice="auto")
    await stream_once(client, kit)

    assert failed.value.status_code == (422 if echo == "json" else 400)
    asked = [(body.get("stream_options") or {}).get("include_usage") for body in server.bodies]
    assert asked == ([True, True] if echo == "json" else [True, None, True])
    error, streamed = records()
    assert (error.status, error.streamed) == ("error", True)
    assert (streamed.status, streamed.estimated) == ("ok", False)
    assert (streamed.input_tokens, streamed.output_tokens) == (19, 10)


async def test_azure_stream_is_named_by_the_chunks_after_its_prompt_filter_chunk(
    records: Records, kit: ModuleType, is_async: bool
) -> None:
    """Azure OpenAI opens a stream with a chunk of prompt filter results whose model and id are
    empty: the served model and the id come from the chunks after it (else the call was
    recorded under its deployment name, unpriced)."""
    first = {
        "choices": [],
        "created": 0,
        "id": "",
        "model": "",
        "object": "",
        "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}],
    }
    rest = kit.chat_sse(3, kit.CHAT_USAGE).decode()
    body = f"data: {json.dumps(first)}\n\n{rest}".encode()
    transport = kit.http.MockTransport(lambda request: kit.sse_response(body))
    azure = openai.AsyncAzureOpenAI if is_async else openai.AzureOpenAI
    http_client = (kit.http.AsyncClient if is_async else kit.http.Client)(transport=transport)
    client = azure(
        api_key="sk-test",
        api_version="2024-10-21",
        azure_endpoint="http://azure.invalid",
        http_client=http_client,
    )
    tokenmeter.instrument("openai")

    stream = await kit.maybe(
        client.chat.completions.create(model="my-gpt4o-deployment", messages=MESSAGES, stream=True)
    )
    await kit.drain(stream)

    record = only(records())
    assert (record.model_provider, record.request_model) == ("azure", "my-gpt4o-deployment")
    assert (record.model_name, record.request_id) == ("gpt-4o-2024-08-06", "chatcmpl-mock")
    assert record.estimated_cost_usd is not None and record.estimated_cost_usd > 0


@pytest.mark.parametrize(
    "usage", [{"prompt_tokens": 19}, {"prompt_tokens": 19, "total_tokens": None}]
)
async def test_a_usage_without_an_output_count_has_its_output_estimated(
    records: Records, kit: ModuleType, is_async: bool, usage: dict[str, Any]
) -> None:
    """A compatible server's usage chunk that counts the prompt only: the stream was recorded
    "ok" with 0 output tokens, not estimated, after 40 chunks of text had streamed by."""
    reply = kit.chat_sse(40, usage)
    client = kit.mock_openai(lambda request: kit.sse_response(reply), is_async=is_async)
    tokenmeter.instrument("openai")
    await stream_once(client, kit)
    record = only(records())
    assert (record.status, record.input_tokens, record.estimated) == ("ok", 19, True)
    assert record.output_tokens > 0  # 40 x, as the tokenizer counts them
    reply = kit.chat_sse(40, {"prompt_tokens": 19, "completion_tokens": 0})
    client = kit.mock_openai(lambda request: kit.sse_response(reply), is_async=is_async)
    await stream_once(client, kit)
    counted = records()[-1]  # a count of 0 is the server's word: taken as it is
    assert (counted.output_tokens, counted.estimated) == (0, False)


async def test_chunks_after_a_usage_without_an_output_count_are_not_counted(
    records: Records, kit: ModuleType, is_async: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the chunks whose text is read, a chunk without usage is only counted (in fewer
    steps); once a usage chunk has come, the chunks after it are not counted, as before: its
    output is estimated from the chunks that came before it, as if the stream ended there."""
    from tokenmeter.providers import openai as adapter

    monkeypatch.setattr(adapter, "_READ_CHUNKS", 4)
    tokenmeter.instrument("openai")
    ended = kit.chat_sse(12, {"prompt_tokens": 19})
    went_on = ended.replace(b"data: [DONE]", kit.chat_sse(12).replace(b"data: [DONE]\n\n", b""))
    went_on += b"data: [DONE]\n\n"
    for reply in (ended, went_on):
        client = kit.mock_openai(lambda request, r=reply: kit.sse_response(r), is_async=is_async)
        await stream_once(client, kit)
    first, second = records()
    assert first.estimated and first.output_tokens > 0
    assert (second.output_tokens, second.estimated) == (first.output_tokens, True)


@pytest.mark.parametrize("stream_options", [None, {"include_usage": False}])
async def test_groq_usage_in_x_groq_is_read_not_estimated(
    records: Records,
    kit: ModuleType,
    is_async: bool,
    caplog: pytest.LogCaptureFixture,
    stream_options: dict[str, Any] | None,
) -> None:
    """Groq sends a stream's usage in its last choice chunk's ``x_groq`` whatever
    ``include_usage`` says: it was never read, so the stream was recorded as an estimate (from
    our tokenizer, not Groq's count) and logged as one that reported no usage."""
    usage = {"queue_time": 0.07, "prompt_tokens": 2300, "prompt_time": 0.006}
    usage |= {"completion_tokens": 30, "completion_time": 0.02, "total_tokens": 2330}
    base = {"id": "chatcmpl-g", "object": "chat.completion.chunk", "created": 1}
    base["model"] = "llama-3.3-70b-versatile"
    chunks = [
        {**base, "choices": [{"index": 0, "delta": {"content": "word "}}], "x_groq": {"id": "r"}}
    ] * 30
    last = {"index": 0, "delta": {}, "finish_reason": "stop"}
    chunks.append({**base, "choices": [last], "x_groq": {"id": "r", "usage": usage}})
    body = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks) + "data: [DONE]\n\n"
    client = kit.mock_openai(
        lambda request: kit.sse_response(body.encode()),
        is_async=is_async,
        base_url="https://api.groq.com/openai/v1",
    )
    bare = await stream_once(client, kit)
    tokenmeter.instrument("openai")
    extra = {} if stream_options is None else {"stream_options": stream_options}
    with caplog.at_level(logging.WARNING, logger="tokenmeter"):
        seen = await stream_once(client, kit, **extra)
    assert dumps(seen) == dumps(bare)  # the chunk with the usage is the caller's, not hidden
    record = only(records())
    assert (record.model_provider, record.status, record.estimated) == ("groq", "ok", False)
    assert (record.input_tokens, record.output_tokens) == (2300, 30)
    assert not [r for r in caplog.records if "without reporting usage" in r.getMessage()]


@pytest.mark.parametrize("stream_options", [None, {"include_usage": True}])
async def test_a_usage_chunk_a_server_always_sends_is_the_callers_when_it_asks_for_usage(
    records: Records, kit: ModuleType, is_async: bool, stream_options: dict[str, Any] | None
) -> None:
    """A server that ends every stream with a usage-only chunk, asked or not, cannot be told
    from one answering tokenmeter's request: left unset, that chunk is hidden (docs/providers.md
    says so). The caller who reads it sets ``include_usage`` itself, and then sees every chunk."""
    usage = {**kit.CHAT_USAGE, "cost": 0.00012}  # a gateway's own figure, read from that chunk
    client = kit.mock_openai(
        lambda request: kit.sse_response(kit.chat_sse(4, usage)), is_async=is_async
    )
    extra = {} if stream_options is None else {"stream_options": stream_options}
    bare = await stream_once(client, kit, **extra)
    tokenmeter.instrument("openai")

    seen = await stream_once(client, kit, **extra)

    if stream_options is None:
        assert dumps(seen) == dumps(bare)[:-1]  # the documented limitation
    else:
        assert dumps(seen) == dumps(bare)
        assert seen[-1].usage.model_extra == {"cost": 0.00012}
    record = only(records())
    assert (record.status, record.estimated) == ("ok", False)
    assert (record.input_tokens, record.output_tokens) == (19, 10)


async def test_stream_without_usage_is_recorded_with_an_estimate(
    records: Records, kit: ModuleType, is_async: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """An explicit include_usage False: the call still counts, estimated from the request and the
    text that streamed by, and flagged as an estimate (never a silent zero)."""
    client = kit.mock_openai(ChatServer(kit), is_async=is_async)
    tokenmeter.instrument("openai")
    with caplog.at_level(logging.WARNING, logger="tokenmeter"):
        await stream_once(client, kit, stream_options={"include_usage": False})
        await stream_once(client, kit, stream_options={"include_usage": False})
    first, second = records()
    assert first.streamed and first.status == "ok" and first.estimated
    assert first.input_tokens > 0 and first.output_tokens > 0
    assert first.estimated_cost_usd is not None and first.estimated_cost_usd > 0
    assert (second.input_tokens, second.output_tokens) == (first.input_tokens, first.output_tokens)
    assert first.model_name == "gpt-4o-2024-08-06"
    warnings = [r for r in caplog.records if "without reporting usage" in r.getMessage()]
    assert len(warnings) == 1  # once per provider, not per call


async def _raw_lines(client: Any, kit: ModuleType, mode: str) -> list[str]:
    """The lines of a chat stream's body read as the caller reads a raw response."""
    create = getattr(client.chat.completions, mode).create
    if mode == "with_raw_response":
        raw = await kit.maybe(create(model="gpt-4o", messages=MESSAGES, stream=True))
        if hasattr(raw.http_response, "aiter_lines"):
            return [line async for line in raw.http_response.aiter_lines()]
        return list(raw.http_response.iter_lines())
    manager = create(model="gpt-4o", messages=MESSAGES, stream=True)
    if hasattr(manager, "__aenter__"):
        async with manager as response:
            return [line async for line in response.iter_lines()]
    with manager as response:
        return list(response.iter_lines())


@pytest.mark.parametrize("mode", ["with_streaming_response"])
async def test_a_raw_stream_read_line_by_line_is_the_bare_body(
    records: Records, kit: ModuleType, is_async: bool, mode: str
) -> None:
    """A raw stream's body is the caller's to read (``iter_lines()``, the SDK's own example,
    or relayed to a client of its own): a usage-only chunk tokenmeter asked for could not be
    hidden there (a client reading ``choices[0]`` fails on it), so none is asked for. The
    stream is recorded with an estimate, its output counted from the text that passed by."""
    server = ChatServer(kit)
    client = kit.mock_openai(server, is_async=is_async)
    bare = await _raw_lines(client, kit, mode)
    tokenmeter.instrument("openai")

    seen = await _raw_lines(client, kit, mode)
    gc.collect()  # a raw response only iterated through is recorded when it goes

    assert seen == bare
    assert "stream_options" not in server.bodies[-1]
    record = only(records())
    assert (record.status, record.streamed, record.estimated) == ("ok", True, True)
    assert record.output_tokens > 0


async def test_callers_arguments_are_not_mutated(
    records: Records, kit: ModuleType, is_async: bool
) -> None:
    server = ChatServer(kit)
    client = kit.mock_openai(server, is_async=is_async)
    tokenmeter.instrument("openai")
    messages = [{"role": "user", "content": "hi"}]
    options = {"include_obfuscation": False}
    before = copy.deepcopy((messages, options))
    chunks = await stream_once(client, kit, stream_options=options)
    assert (messages, options) == before
    assert server.bodies[-1]["stream_options"] == {
        "include_obfuscation": False,
        "include_usage": True,
    }
    assert all(chunk.choices for chunk in chunks)
    assert records()[0].input_tokens == 19


def test_stream_usage_setting_off_leaves_requests_alone(records: Records, kit: ModuleType) -> None:
    server = ChatServer(kit)
    client = kit.mock_openai(server)
    tokenmeter.configure(sinks=[], stream_usage=False)
    tokenmeter.instrument("openai")
    list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    assert "stream_options" not in server.bodies[-1]
    tokenmeter.configure(stream_usage=True)  # applies to the next call, no re-instrumenting
    list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    assert server.bodies[-1]["stream_options"] == {"include_usage": True}
    tokenmeter.configure(stream_usage=False)
    list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    assert "stream_options" not in server.bodies[-1]


def test_an_empty_stream_usage_variable_leaves_the_setting_on(
    records: Records, kit: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``TOKENMETER_STREAM_USAGE=`` (``export TOKENMETER_STREAM_USAGE=$UNSET``) read as "false":
    streams were no longer asked for usage, and recorded as estimates (8 in / 6 out where the
    provider counts 19 / 10). Empty is unset: the default, on."""
    monkeypatch.setenv("TOKENMETER_STREAM_USAGE", "")
    server = ChatServer(kit)
    client = kit.mock_openai(server)
    tokenmeter.configure()  # read the environment again
    tokenmeter.instrument("openai")
    list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    assert server.bodies[-1]["stream_options"] == {"include_usage": True}
    record = only(records())
    assert (record.input_tokens, record.estimated) == (19, False)


def test_a_stream_peeked_then_iterated_again_is_one_whole_record(
    records: Records, kit: ModuleType
) -> None:
    """Leaving a ``for`` loop early (or ``next(iter(stream))``) does not end the stream's record:
    iterating on gets the rest of the chunks and the usage at the end."""
    server = ChatServer(kit)
    client = kit.mock_openai(server)
    tokenmeter.instrument("openai")
    stream = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    first = next(iter(stream))
    for chunk in stream:
        second = chunk
        break
    assert records() == []  # (records() flushes) the stream has not ended: nothing yet
    rest = list(stream)
    assert [c.choices[0].delta.content for c in [first, second, *rest]] == [
        c.choices[0].delta.content for c in stream_once_bare(client)
    ]
    (record,) = records()
    assert record.input_tokens == kit.CHAT_USAGE["prompt_tokens"] and record.streamed


def stream_once_bare(client: Any) -> list[Any]:
    tokenmeter.uninstrument("openai")
    try:
        return list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    finally:
        tokenmeter.instrument("openai")


# -- every exit path: exactly one record --------------------------------------------------------
async def _open(client: Any, kit: ModuleType) -> Any:
    return await kit.maybe(
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    )


async def _next(stream: Any) -> Any:
    return await stream.__anext__() if hasattr(stream, "__anext__") else next(stream)


async def test_break_then_garbage_collection(
    records: Records, kit: ModuleType, is_async: bool
) -> None:
    client = kit.mock_openai(ChatServer(kit), is_async=is_async)
    tokenmeter.instrument("openai")
    stream = await _open(client, kit)
    await _next(stream)
    assert records() == []
    del stream
    gc.collect()
    (record,) = records()
    assert record.streamed and record.status == "ok"
    # Cut before the usage chunk: estimated from the request and what streamed by, and said so.
    assert record.estimated and record.input_tokens > 0


async def test_close(records: Records, kit: ModuleType, is_async: bool) -> None:
    client = kit.mock_openai(ChatServer(kit), is_async=is_async)
    tokenmeter.instrument("openai")
    stream = await _open(client, kit)
    await _next(stream)
    await kit.maybe(stream.close())
    assert len(records()) == 1  # at once, not at garbage collection
    await kit.maybe(stream.close())
    del stream
    gc.collect()
    assert len(records()) == 1


async def test_leaving_with_early_and_caller_exception(
    records: Records, kit: ModuleType, is_async: bool
) -> None:
    client = kit.mock_openai(ChatServer(kit), is_async=is_async)
    tokenmeter.instrument("openai")
    stream = await _open(client, kit)
    with pytest.raises(KeyError):
        if is_async:
            async with stream as entered:
                assert entered is stream
                await _next(stream)
                raise KeyError("caller's own bug")
        else:
            with stream as entered:
                assert entered is stream
                next(stream)
                raise KeyError("caller's own bug")
    (record,) = records()
    assert record.status == "ok"  # the call itself succeeded; the caller's loop failed
    assert stream.response.is_closed


async def test_exhausted_inside_with_records_once(
    records: Records, kit: ModuleType, is_async: bool
) -> None:
    client = kit.mock_openai(ChatServer(kit), is_async=is_async)
    tokenmeter.instrument("openai")
    stream = await _open(client, kit)
    if is_async:
        async with stream:
            chunks = [c async for c in stream]
    else:
        with stream:
            chunks = list(stream)
    assert len(chunks) == 5
    del stream
    gc.collect()
    (record,) = records()
    assert record.input_tokens == 19 and record.output_tokens == 10


async def test_asyncio_cancellation(records: Records, kit: ModuleType) -> None:
    release = asyncio.Event()
    first = kit.chat_sse(1)[: -len(b"data: [DONE]\n\n")]

    async def body() -> AsyncIterator[bytes]:
        yield first
        await release.wait()  # the server stalls mid-stream
        yield b"data: [DONE]\n\n"

    def handler(request: Any) -> Any:
        headers = {"content-type": "text/event-stream"}
        return kit.http.Response(200, content=body(), headers=headers)

    client = kit.mock_openai(handler, is_async=True)
    tokenmeter.instrument("openai")
    got_one = asyncio.Event()

    async def consume() -> None:
        stream = await _open(client, kit)
        async for _ in stream:
            got_one.set()

    task = asyncio.create_task(consume())
    await got_one.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (record,) = records()
    assert record.status == "error" and record.error == "CancelledError"
    assert record.streamed


async def test_leaving_the_helpers_with_records_promptly(
    records: Records, kit: ModuleType, is_async: bool
) -> None:
    """ChatCompletionStream.close() closes raw_stream.response, not the raw stream."""
    client = kit.mock_openai(ChatServer(kit, chunks=50), is_async=is_async)
    tokenmeter.instrument("openai")
    manager = kit.chat_helpers(client).stream(model="gpt-4o", messages=MESSAGES)
    if is_async:
        async with manager as stream:
            await stream.__anext__()
    else:
        with manager as stream:
            next(iter(stream))
    assert len(records()) == 1  # while `stream` is still referenced
    del stream, manager
    gc.collect()
    assert len(records()) == 1


async def test_mid_stream_network_failure_is_an_error_record(
    records: Records, kit: ModuleType, is_async: bool
) -> None:
    head = kit.chat_sse(2)[: -len(b"data: [DONE]\n\n")]

    def handler(request: Any) -> Any:
        return cut_reply(kit.http, head)

    client = kit.mock_openai(handler, is_async=is_async)
    tokenmeter.instrument("openai")
    stream = await _open(client, kit)
    if unmet(openai=">=3.14"):  # older SDKs let the HTTP library's own error through
        with pytest.raises(kit.http.ReadError):
            await kit.drain(stream)
        expected = "ReadError"
    else:
        with pytest.raises(openai.APIConnectionError) as raised:
            await kit.drain(stream)
        assert isinstance(raised.value.__cause__, kit.http.ReadError)  # the SDK's own chain
        expected = "APIConnectionError"
    (record,) = records()
    assert record.status == "error" and record.error == expected


def _responses_events(deltas: int, last: dict[str, Any]) -> list[tuple[str | None, Any]]:
    """A Responses stream: created, ``deltas`` output text deltas, then ``last``."""
    response = {
        "id": "resp_err",
        "object": "response",
        "created_at": 1,
        "status": "in_progress",
        "model": "gpt-4o-2024-08-06",
        "output": [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": None,
    }
    events: list[tuple[str | None, Any]] = [
        ("response.created", {"type": "response.created", "response": response})
    ]
    for n in range(deltas):
        delta = {
            "type": "response.output_text.delta",
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "delta": " word",
            "logprobs": [],
            "sequence_number": n + 1,
        }
        events.append((delta["type"], delta))
    events.append((last["type"], last))
    return events


@pytest.mark.parametrize(("code", "expected"), [("server_error", "server_error"), (None, None)])
async def test_responses_stream_ending_on_an_error_event_is_an_error_record(
    records: Records, kit: ModuleType, is_async: bool, code: str | None, expected: str | None
) -> None:
    """An ``error`` event and no terminal event: the SDK raises nothing, the stream just ends.
    Recorded as an error named by the event's code, with the output that streamed by estimated
    (billed: never a silent zero)."""
    error = {"type": "error", "code": code, "message": "boom", "param": None, "sequence_number": 9}
    events = _responses_events(8, error)
    client = kit.mock_openai(lambda request: sse_reply(kit.http, events), is_async=is_async)
    tokenmeter.instrument("openai")

    stream = await kit.maybe(client.responses.create(model="gpt-4o", input="hi", stream=True))
    seen = await kit.drain(stream)

    # The SDK yields the event (older SDKs wrap it: its type None, event "error"), raises nothing
    assert "error" in (seen[-1].type, getattr(seen[-1], "event", None))
    record = only(records())
    assert (record.status, record.error) == ("error", expected or "ResponseErrorEvent")
    assert record.estimated and record.output_tokens >= 8
    assert (record.model_name, record.request_id) == ("gpt-4o-2024-08-06", "resp_err")


async def test_responses_stream_ending_on_an_error_event_before_any_output_costs_nothing(
    records: Records, kit: ModuleType, is_async: bool
) -> None:
    """Nothing streamed by before the error event: an error record of 0 tokens at $0, as for a
    call that raised (not an unknown cost, which is for usage that could not be read)."""
    error = {"type": "error", "code": "server_error", "message": "boom", "param": None}
    events = _responses_events(0, {**error, "sequence_number": 1})
    client = kit.mock_openai(lambda request: sse_reply(kit.http, events), is_async=is_async)
    tokenmeter.instrument("openai")

    await kit.drain(
        await kit.maybe(client.responses.create(model="gpt-4o", input="hi", stream=True))
    )

    record = only(records())
    assert (record.status, record.error, record.estimated) == ("error", "server_error", False)
    assert (record.total_tokens, record.estimated_cost_usd) == (0, 0)


_RESPONSE_USAGE = {
    "input_tokens": 20,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 9,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 29,
}


def _terminal(kind: str, status: str, **extra: Any) -> dict[str, Any]:
    """A Responses stream's terminal event (``kind``), its response ``status`` and usage."""
    created = _responses_events(0, {"type": "x"})[0][1]["response"]
    response = {**created, "status": status, "usage": _RESPONSE_USAGE, **extra}
    return {"type": kind, "response": response, "sequence_number": 9}


@pytest.mark.parametrize(
    ("error", "expected"),
    [({"code": "server_error", "message": "boom"}, "server_error"), (None, "response.failed")],
)
async def test_responses_stream_ending_failed_is_an_error_record_with_its_billed_usage(
    records: Records, kit: ModuleType, is_async: bool, error: Any, expected: str
) -> None:
    """A ``response.failed`` event: the SDK raises nothing, but the call failed. Recorded as an
    error named by the response's error code (else ``response.failed``), with the usage the
    provider billed and its cost (at the service tier it was billed at)."""
    failed = _terminal("response.failed", "failed", error=error, service_tier="flex")
    events = _responses_events(3, failed)
    client = kit.mock_openai(lambda request: sse_reply(kit.http, events), is_async=is_async)
    tokenmeter.instrument("openai")

    stream = await kit.maybe(client.responses.create(model="gpt-4o", input="hi", stream=True))
    seen = await kit.drain(stream)

    assert seen[-1].type == "response.failed"
    record = only(records())
    assert (record.status, record.error, record.estimated) == ("error", expected, False)
    assert (record.input_tokens, record.output_tokens) == (20, 9)
    assert record.estimated_cost_usd is not None and record.estimated_cost_usd > 0
    assert "flex" in (record.price_source or "")


async def test_responses_stream_ending_failed_with_unreadable_usage_has_an_unknown_cost(
    records: Records, kit: ModuleType, is_async: bool
) -> None:
    """A failed response billed usage that cannot be read: its cost is unknown, not $0."""
    failed = _terminal("response.failed", "failed")
    failed["response"]["usage"] = {**_RESPONSE_USAGE, "input_tokens": -20}
    events = _responses_events(0, failed)
    client = kit.mock_openai(lambda request: sse_reply(kit.http, events), is_async=is_async)
    tokenmeter.instrument("openai")

    await kit.drain(
        await kit.maybe(client.responses.create(model="gpt-4o", input="hi", stream=True))
    )

    record = only(records())
    assert (record.status, record.error, record.estimated) == ("error", "response.failed", False)
    assert record.estimated_cost_usd is None


async def test_responses_stream_ending_incomplete_is_ok(
    records: Records, kit: ModuleType, is_async: bool
) -> None:
    """``response.incomplete`` (max_output_tokens reached): billed, and the call succeeded."""
    details = {"incomplete_details": {"reason": "max_output_tokens"}}
    events = _responses_events(3, _terminal("response.incomplete", "incomplete", **details))
    client = kit.mock_openai(lambda request: sse_reply(kit.http, events), is_async=is_async)
    tokenmeter.instrument("openai")

    await kit.drain(
        await kit.maybe(client.responses.create(model="gpt-4o", input="hi", stream=True))
    )

    record = only(records())
    assert (record.status, record.error, record.estimated) == ("ok", None, False)
    assert (record.input_tokens, record.output_tokens) == (20, 9)


@pytest.mark.requires(openai=">=1.80")  # background responses
@pytest.mark.parametrize("leave", ["break", "cut", "never iterated"])
async def test_background_stream_left_before_its_usage_is_recorded_by_its_retrieve(
    records: Records, kit: ModuleType, is_async: bool, leave: str
) -> None:
    """A ``background`` Responses stream left (or cut) before its usage runs on at the provider
    and is billed whole: like a queued background create it is not the record, the retrieve
    that finds it done is (it was an estimate of the few deltas seen, and the retrieve's real
    usage was dropped as a repeat of its id)."""
    completed = _terminal("response.completed", "completed", background=True)
    events = _responses_events(6, completed)
    events[0][1]["response"]["background"] = True
    if leave == "cut":
        events = events[:4]

    def server(request: Any) -> Any:
        if request.method == "GET":
            return kit.http.Response(200, json=completed["response"])
        return sse_reply(kit.http, events)

    client = kit.mock_openai(server, is_async=is_async)
    tokenmeter.instrument("openai")

    stream = await kit.maybe(
        client.responses.create(model="gpt-4o", input="hi", stream=True, background=True)
    )
    seen = await kit.drain(stream) if leave == "cut" else None
    if leave == "break":
        await kit.maybe(stream.__anext__() if is_async else next(stream))
        await kit.maybe(stream.close())
    elif leave == "never iterated":
        del stream
        gc.collect()
    assert seen is None or seen[-1].type == "response.output_text.delta"
    assert records() == []  # still running at the provider
    await kit.maybe(client.responses.retrieve("resp_err"))

    record = only(records())
    assert (record.status, record.estimated) == ("ok", False)
    assert (record.input_tokens, record.output_tokens) == (20, 9)
    # the create's model, when its stream named the response (one never iterated did not)
    assert record.request_model == (None if leave == "never iterated" else "gpt-4o")


@pytest.mark.requires(openai=">=1.80")  # background responses
async def test_a_background_stream_read_after_a_retrieve_found_the_job_done_is_one_record(
    records: Records, kit: ModuleType, is_async: bool
) -> None:
    """A background create's stream read to its end after the application's poll (a retrieve)
    found the job done: the retrieve recorded it, and the stream recorded it again (2 records,
    twice the cost, for one billed response)."""
    completed = _terminal("response.completed", "completed", background=True)
    events = _responses_events(6, completed)
    events[0][1]["response"]["background"] = True

    def server(request: Any) -> Any:
        if request.method == "GET":
            return kit.http.Response(200, json=completed["response"])
        return sse_reply(kit.http, events)

    client = kit.mock_openai(server, is_async=is_async)
    tokenmeter.instrument("openai")
    stream = await kit.maybe(
        client.responses.create(model="gpt-4o", input="hi", stream=True, background=True)
    )
    first = await kit.maybe(stream.__anext__() if is_async else next(stream))
    await kit.maybe(client.responses.retrieve(first.response.id))
    await kit.drain(stream)

    record = only(records())
    assert (record.input_tokens, record.output_tokens) == (20, 9)


@pytest.mark.parametrize("leave", ["no usage", "cut"])
async def test_stream_the_server_calls_background_unasked_is_still_recorded(
    records: Records, kit: ModuleType, is_async: bool, leave: str
) -> None:
    """A create that did not ask for ``background``, whose stream's first event says it is one
    (a compatible server): it ends here, so it is recorded here, an estimate of what streamed.
    The server's word alone deferred it to a retrieve that never comes: no record at all."""
    events = _responses_events(6, _terminal("response.completed", "completed", usage=None))
    events[0][1]["response"]["background"] = True
    if leave == "cut":
        events = events[:4]
    client = kit.mock_openai(lambda request: sse_reply(kit.http, events), is_async=is_async)
    tokenmeter.instrument("openai")

    await kit.drain(
        await kit.maybe(client.responses.create(model="gpt-4o", input="hi", stream=True))
    )

    record = only(records())
    assert (record.status, record.estimated) == ("ok", True)
    assert record.input_tokens > 0 and record.output_tokens > 0


@pytest.mark.requires(openai=">=1.80")  # background responses
async def test_background_stream_refused_by_the_server_is_an_error_record(
    records: Records, kit: ModuleType, is_async: bool
) -> None:
    """Deferred to its retrieve is a background response that was made: a create the server
    refused made none, and is an error record like any failed call."""

    def server(request: Any) -> Any:
        return kit.http.Response(500, json={"error": {"message": "boom", "type": "server_error"}})

    client = kit.mock_openai(server, is_async=is_async, max_retries=0)
    tokenmeter.instrument("openai")

    with pytest.raises(openai.InternalServerError):
        await kit.maybe(
            client.responses.create(model="gpt-4o", input="hi", stream=True, background=True)
        )

    record = only(records())
    assert (record.status, record.error) == ("error", "InternalServerError")


@pytest.mark.requires(openai=">=1.80")  # background responses
async def test_resumed_background_stream_left_before_its_usage_makes_no_record(
    records: Records, kit: ModuleType, is_async: bool
) -> None:
    """``responses.retrieve(id, stream=True, starting_after=n)`` resumes a background response:
    a retrieve, not a call. Left before its usage it was recorded as a call of its own (an
    estimate, under model 'unknown'), beside the retrieve that found it done."""
    completed = _terminal("response.completed", "completed", background=True)
    events = _responses_events(6, completed)[2:5]  # resumed after the second delta, left

    def server(request: Any) -> Any:
        if request.url.params.get("stream") == "true":
            return sse_reply(kit.http, events)
        return kit.http.Response(200, json=completed["response"])

    client = kit.mock_openai(server, is_async=is_async)
    tokenmeter.instrument("openai")

    resumed = await kit.maybe(client.responses.retrieve("resp_err", stream=True, starting_after=2))
    assert len(await kit.drain(resumed)) == 3
    assert records() == []
    await kit.maybe(client.responses.retrieve("resp_err"))

    record = only(records())
    assert (record.status, record.estimated, record.streamed) == ("ok", False, False)
    assert (record.input_tokens, record.output_tokens) == (20, 9)


@pytest.mark.requires(openai=">=1.80")  # background responses
@pytest.mark.parametrize("create", ["streamed and left", "queued"])
async def test_background_response_finished_by_a_streamed_retrieve_has_the_creates_model(
    records: Records, kit: ModuleType, is_async: bool, create: str
) -> None:
    """The retrieve that finds a background response done is its record, with the create's
    model as ``request_model``, whether it is streamed or not. A streamed one (a resume after
    a left stream, or a queued create followed with ``stream=True``) recorded None."""
    completed = _terminal("response.completed", "completed", background=True)
    events = _responses_events(4, completed)
    events[0][1]["response"]["background"] = True
    queued = {**completed["response"], "status": "queued", "usage": None}

    def server(request: Any) -> Any:
        if request.method == "GET":  # the retrieve, streamed: the rest of the events
            return sse_reply(kit.http, events[2:])
        if json.loads(request.content).get("stream"):
            return sse_reply(kit.http, events[:2])
        return kit.http.Response(200, json=queued)

    client = kit.mock_openai(server, is_async=is_async)
    tokenmeter.instrument("openai")

    if create == "queued":
        await kit.maybe(client.responses.create(model="gpt-4o", input="hi", background=True))
    else:
        stream = await kit.maybe(
            client.responses.create(model="gpt-4o", input="hi", stream=True, background=True)
        )
        await kit.maybe(stream.__anext__() if is_async else next(stream))
        await kit.maybe(stream.close())
    assert records() == []  # still running at the provider
    resume = {} if create == "queued" else {"starting_after": 1}
    retrieved = await kit.maybe(client.responses.retrieve("resp_err", stream=True, **resume))
    assert (await kit.drain(retrieved))[-1].type == "response.completed"

    record = only(records())
    assert (record.status, record.estimated, record.streamed) == ("ok", False, True)
    assert (record.input_tokens, record.output_tokens) == (20, 9)
    assert record.request_model == "gpt-4o"


async def test_stream_state_is_constant(records: Records, kit: ModuleType, is_async: bool) -> None:
    """No chunk outlives the caller's reference to it: nothing is buffered."""
    client = kit.mock_openai(ChatServer(kit, chunks=200), is_async=is_async)
    tokenmeter.instrument("openai")
    stream = await _open(client, kit)
    refs = []
    if is_async:
        async for chunk in stream:
            refs.append(weakref.ref(chunk))
    else:
        for chunk in stream:
            refs.append(weakref.ref(chunk))
    del chunk
    gc.collect()
    assert len(refs) == 200
    assert sum(ref() is not None for ref in refs) == 0
    assert records()[0].input_tokens == 19


async def test_stream_consumed_outside_its_session_belongs_to_it(
    records: Records, kit: ModuleType, is_async: bool
) -> None:
    client = kit.mock_openai(ChatServer(kit), is_async=is_async)
    tokenmeter.instrument("openai")
    with tokenmeter.session("made-here", tags={"k": "v"}) as made:
        stream = await _open(client, kit)
    with tokenmeter.session("consumed-here"):
        await kit.drain(stream)
    (record,) = records()
    assert record.session_name == "made-here" and record.tags == {"k": "v"}
    assert made.summary.calls == 1


#: ``__iter__`` is wrapt's own before wrapt 2, whatever the proxy wraps (its ``None`` tells
#: ``collections.abc`` the stream is not iterable, but ``hasattr`` answers True).
PROBED = ("__next__", "__anext__", "__aiter__", "__enter__", "__aenter__") + (
    ("__iter__",) if hasattr(wrapt, "BaseObjectProxy") else ()
)


async def test_a_stream_answers_hasattr_for_the_protocols_of_the_sdks_stream(
    fake: FakeProvider, instrumented: Records, kit: ModuleType, is_async: bool
) -> None:
    """The protocols the SDK's stream lacks were set to None on the proxy's class, which
    ``hasattr`` takes for a method: an async stream answered True for ``__iter__`` and
    ``__enter__``, a sync one for ``__aenter__``, and code choosing by ``hasattr`` how to
    read a stream called ``list()`` on an async one (TypeError)."""
    stream = await _open(fake.openai_client(async_=is_async), kit)
    for name in PROBED:
        assert hasattr(stream, name) is hasattr(stream.__wrapped__, name), name
    if is_async:
        with pytest.raises(TypeError):
            iter(stream)
        with pytest.raises(TypeError), stream:
            pass
    else:
        with pytest.raises(TypeError):
            async with stream:
                pass
    await kit.drain(stream)
    assert len(instrumented()) == 1


async def test_stream_proxy_keeps_the_sdk_surface(
    fake: FakeProvider, instrumented: Records, kit: ModuleType, is_async: bool
) -> None:
    client = fake.openai_client(async_=is_async)
    stream = await _open(client, kit)
    assert isinstance(stream, openai.AsyncStream if is_async else openai.Stream)
    assert isinstance(stream, Iterable) is not is_async  # wrapt's proxy has __iter__ for all
    assert isinstance(stream, contextlib.AbstractContextManager) is not is_async
    assert isinstance(stream.response, kit.http.Response)
    assert stream.response.status_code == 200
    assert stream.response is stream.response
    first = await _next(stream)
    assert first.choices
    await kit.drain(stream)
    assert len(instrumented()) == 1


def test_a_stream_the_collector_finalises_while_the_sinks_are_opened_is_recorded(
    kit: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    """A stream left early and held in a cycle (an error kept on an object: its traceback holds
    the frame holding the stream) is recorded by its finaliser, wherever a collection runs:
    here inside the sink factory, as the first record after configure() opens the sinks. Its
    record made the sinks again on the same thread, whose imports were half done ("could not
    open its sinks"), and was dropped with the records of the next second (flush() True)."""
    from tokenmeter import _pipeline

    sink, made = InMemorySink(), []
    client = kit.mock_openai(ChatServer(kit))
    tokenmeter.instrument("openai")

    class Agent:
        last_error: ValueError

        def run(self) -> None:
            stream = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
            try:
                for _ in stream:
                    raise ValueError("the application could not handle a chunk")
            except ValueError as exc:
                self.last_error = exc

    def make() -> list[Any]:
        if made:  # entered again before it returned: its imports are half done
            raise ImportError("cannot import name 'AlertSink' (partially initialized module)")
        made.append(1)
        gc.collect()  # the collection an import's allocations set off
        return [sink]

    tokenmeter.configure(sinks=[sink])
    tokenmeter.flush(timeout=30)
    gc.collect()
    gc.disable()  # the agent is freed inside the factory, not before
    try:
        Agent().run()
        _pipeline.set_sinks(make)
        with caplog.at_level(logging.ERROR, logger="tokenmeter"):
            tokenmeter.record("openai", "gpt-4o", 1, 1)
            assert tokenmeter.flush(timeout=30)
    finally:
        gc.enable()
    assert "could not open its sinks" not in caplog.text
    assert sorted(r.streamed for r in sink.records) == [False, True]
