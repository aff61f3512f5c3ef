"""google-genai instrumentation, driven through the real SDK against a loopback FakeProvider."""

# No ``from __future__ import annotations`` here: google-genai 1.10 reads a tool function's
# annotations as written, and fails automatic function calling on the string "str".

import asyncio
import contextlib
import gc
import json
import sys
import types as pytypes
from collections.abc import AsyncIterator, Iterable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from google import genai
from google.genai import _api_client, errors, models
from google.genai import types as gtypes
from provider_helpers import cut_reply, flushed, json_reply, mock_genai, only, sse_reply

import tokenmeter
from tokenmeter import UsageRecord
from tokenmeter._estimate import estimate_input
from tokenmeter.providers.google_genai import _targets, short_model
from tokenmeter.testing import FakeProvider, GeminiUsage, InMemorySink
from tokenmeter.testing._sdk import unmet

#: ``httpx2`` or ``httpx``: whichever the installed google-genai is built on (same API).
http: Any = getattr(_api_client, "httpx2", None) or _api_client.httpx
#: The per-request embedding method: private from google-genai 1.64, the public one before.
EMBED = "embed_content" if unmet(google_genai=">=1.64") else "_embed_content"

FINAL = GeminiUsage(prompt=120, candidates=30, cached=40, thoughts=50, tool_use_prompt=6)
FUNCTION_CALL = GeminiUsage(prompt=80, candidates=9, cached=0, thoughts=11)


@pytest.fixture(autouse=True)
def sink(sink: InMemorySink) -> Iterator[InMemorySink]:
    """Every test has the in-memory sink; the clients it made live until it ends."""
    yield sink
    _clients.clear()


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider(gemini_usage=FINAL, gemini_function_call_usage=FUNCTION_CALL) as provider:
        yield provider


@pytest.fixture
def instrumented() -> None:
    tokenmeter.instrument("google-genai")


_clients: list[genai.Client] = []


def client(fake: FakeProvider, **kwargs: Any) -> genai.Client:
    """A client kept alive for the test (``genai.Client.__del__`` closes its HTTP client)."""
    made: genai.Client = fake.genai_client(**kwargs)
    _clients.append(made)
    return made


def assert_counts(record: UsageRecord, usage: GeminiUsage) -> None:
    expected = usage.normalized()
    assert record.input_tokens == expected.input_tokens
    assert record.output_tokens == expected.output_tokens
    assert record.cache_read_tokens == expected.cache_read_tokens
    assert record.reasoning_tokens == expected.reasoning_tokens


def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


# -- the four call shapes --------------------------------------------------------------------


@pytest.mark.usefixtures("instrumented")
def test_generate_content_records_thoughts_tool_prompt_and_cache(
    fake: FakeProvider, sink: InMemorySink
) -> None:
    fake.set_model("gemini-flash-latest", "gemini-2.5-flash-001")
    response = client(fake).models.generate_content(model="gemini-flash-latest", contents="hi")

    assert isinstance(response, gtypes.GenerateContentResponse)
    record = only(flushed(sink))
    assert_counts(record, FINAL)
    assert record.output_tokens == 30 + 50  # thoughts are outside candidates
    assert record.input_tokens == 120 + 6  # tool-use prompt is input
    assert record.model_provider == "google"
    assert record.model_name == "gemini-2.5-flash-001"
    assert record.request_model == "gemini-flash-latest"
    assert record.operation == "generate_content"
    assert record.streamed is False
    assert record.status == "ok"


@pytest.mark.usefixtures("instrumented")
def test_stream_takes_the_last_running_total_not_a_sum(
    fake: FakeProvider, sink: InMemorySink
) -> None:
    fake.stream_chunks = 3
    stream = client(fake).models.generate_content_stream(model="gemini-2.5-flash", contents="hi")
    assert isinstance(stream, pytypes.GeneratorType)
    chunks = list(stream)

    assert len(chunks) == 3
    assert all(isinstance(c, gtypes.GenerateContentResponse) for c in chunks)
    record = only(flushed(sink))
    assert_counts(record, FINAL)  # a sum of the three running totals would triple the prompt
    assert record.streamed is True


@pytest.mark.usefixtures("instrumented")
async def test_async_generate_content(fake: FakeProvider, sink: InMemorySink) -> None:
    response = await client(fake).aio.models.generate_content(
        model="gemini-2.5-flash", contents="hi"
    )

    assert isinstance(response, gtypes.GenerateContentResponse)
    record = only(flushed(sink))
    assert_counts(record, FINAL)
    assert record.streamed is False


@pytest.mark.usefixtures("instrumented")
async def test_async_stream(fake: FakeProvider, sink: InMemorySink) -> None:
    stream = await client(fake).aio.models.generate_content_stream(
        model="gemini-2.5-flash", contents="hi"
    )
    assert isinstance(stream, AsyncIterator)
    chunks = [chunk async for chunk in stream]

    assert len(chunks) == fake.stream_chunks
    record = only(flushed(sink))
    assert_counts(record, FINAL)
    assert record.streamed is True


@pytest.mark.usefixtures("instrumented")
async def test_async_stream_has_only_the_sdks_protocols(
    fake: FakeProvider, sink: InMemorySink
) -> None:
    """The proxy had wrapt's context-manager methods and ``__iter__`` whatever it wrapped: the
    async generator claimed to be sync-iterable and an async context manager, and ``async
    with`` on it raised AttributeError, where the SDK's own raises TypeError."""
    stream = await client(fake).aio.models.generate_content_stream(
        model="gemini-2.5-flash", contents="hi"
    )
    assert not isinstance(stream, Iterable)
    assert not isinstance(stream, contextlib.AbstractAsyncContextManager)
    assert not isinstance(stream, contextlib.AbstractContextManager)
    with pytest.raises(TypeError):
        async with stream:  # type: ignore[attr-defined]
            pass
    assert len([chunk async for chunk in stream]) == fake.stream_chunks
    assert_counts(only(flushed(sink)), FINAL)


@pytest.mark.usefixtures("instrumented")
def test_private_stream_is_still_a_generator(fake: FakeProvider, sink: InMemorySink) -> None:
    stream = client(fake).models._generate_content_stream(model="gemini-2.5-flash", contents="hi")
    assert isinstance(stream, pytypes.GeneratorType)
    assert sum(1 for _ in stream) == fake.stream_chunks
    assert_counts(only(flushed(sink)), FINAL)


@pytest.mark.requires(google_genai=">=3.1")  # older SDKs drop the usage of embedContent
@pytest.mark.usefixtures("instrumented")
def test_embed_content(fake: FakeProvider, sink: InMemorySink) -> None:
    response = client(fake).models.embed_content(model="gemini-embedding-001", contents=["a", "b"])

    assert isinstance(response, gtypes.EmbedContentResponse)
    record = only(flushed(sink))
    assert record.operation == "embed_content"
    assert record.input_tokens == FINAL.prompt
    assert record.output_tokens == 0


@pytest.mark.requires(google_genai=">=3.1")  # older SDKs drop the usage of embedContent
@pytest.mark.usefixtures("instrumented")
async def test_async_embed_content(fake: FakeProvider, sink: InMemorySink) -> None:
    await client(fake).aio.models.embed_content(model="gemini-embedding-001", contents="a")
    record = only(flushed(sink))
    assert (record.operation, record.input_tokens) == ("embed_content", FINAL.prompt)


@pytest.mark.skipif(not hasattr(genai.Client, "decisions"), reason="no client.decisions")
@pytest.mark.usefixtures("instrumented")
def test_decisions_are_not_metered_as_documented(sink: InMemorySink) -> None:
    """docs/providers.md lists ``client.decisions`` under "Not metered": a next-gen client of
    its own beside ``client.models``, whose usage ``record_response()`` does not read. It was
    named nowhere, so a billed call missing from every record looked metered."""
    body = {"answers": {}, "usage": {"total_input_tokens": 1000, "total_output_tokens": 20}}
    sent: list[str] = []

    def server(request: Any) -> Any:
        sent.append(request.url.path)
        return json_reply(http, body)

    made = mock_genai(server)
    _clients.append(made)
    question = {
        "type": "choice",
        "criteria": {"yes": "spam", "no": "not spam"},
        "instructions": {"text": "Is this spam?"},
    }
    reply = made.decisions.create(model="gemini-2.5-flash", input="Buy!", questions={"q": question})
    assert sent and sent[0].endswith("/decisions") and reply.usage.total_input_tokens == 1000
    assert flushed(sink) == []
    with pytest.raises(ValueError, match="usage"):
        tokenmeter.record_response(reply, provider="google", model="gemini-2.5-flash")


@pytest.mark.requires(google_genai=">=1.46")  # HttpOptions(httpx_client=...)
@pytest.mark.parametrize("meta", ["absent", {}], ids=["usageMetadata absent", "usageMetadata {}"])
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.usefixtures("instrumented")
async def test_embed_content_without_usage_is_estimated_not_lost(
    sink: InMemorySink, meta: Any, is_async: bool
) -> None:
    """An embedding reply without a count (older SDKs drop it; a server may send none) was
    billed all the same: its input is estimated from the request, never lost or a silent 0."""
    body: dict[str, Any] = {"embeddings": [{"values": [0.1, 0.2]}, {"values": [0.3, 0.4]}]}
    if meta != "absent":
        body["usageMetadata"] = meta
    made = mock_genai(lambda request: json_reply(http, body))
    _clients.append(made)
    contents = ["The capital of France is Paris.", "Berlin is the capital of Germany."]
    request = {"model": "gemini-embedding-001", "contents": contents}

    if is_async:
        response = await made.aio.models.embed_content(**request)
    else:
        response = made.models.embed_content(**request)

    assert len(response.embeddings or []) == 2
    record = only(flushed(sink))
    assert (record.operation, record.status, record.estimated) == ("embed_content", "ok", True)
    expected = estimate_input("google", request, "embed_content").input_tokens
    assert record.input_tokens == expected > 0 and record.output_tokens == 0
    assert record.estimated_cost_usd is not None and record.estimated_cost_usd > 0


def _text_chunk(meta: dict[str, int], finish: bool = False) -> dict[str, Any]:
    candidate: dict[str, Any] = {
        "content": {"parts": [{"text": " The capital of France is Paris."}], "role": "model"},
        "index": 0,
    }
    if finish:
        candidate["finishReason"] = "STOP"
    return {"candidates": [candidate], "usageMetadata": meta, "modelVersion": "gemini-2.0-flash"}


@pytest.mark.requires(google_genai=">=1.46")  # HttpOptions(httpx_client=...)
@pytest.mark.parametrize("searched_first", [True, False], ids=["grounding first", "last"])
@pytest.mark.usefixtures("instrumented")
def test_a_streams_search_grounding_is_billed_whichever_chunk_lists_it(
    sink: InMemorySink, searched_first: bool
) -> None:
    """An image model sends its grounding with the first part, whose running total counts the
    prompt alone; the last total lists no search. Its fee was lost (a non-streamed answer with
    the same grounding was billed)."""
    model = "gemini-3.1-flash-image-preview"  # billed per search query
    grounding = {"webSearchQueries": ["cats"], "imageSearchQueries": ["cat photo"]}
    chunks = [
        _text_chunk({"promptTokenCount": 500, "totalTokenCount": 500}),
        _text_chunk(
            {"promptTokenCount": 500, "candidatesTokenCount": 100, "totalTokenCount": 600},
            finish=True,
        ),
    ]
    chunks[0 if searched_first else 1]["candidates"][0]["groundingMetadata"] = grounding
    for chunk in chunks:
        chunk["modelVersion"] = model
    client = mock_genai(lambda request: sse_reply(http, [(None, c) for c in chunks]))
    for _ in client.models.generate_content_stream(model=model, contents="draw a cat"):
        pass
    record = only(flushed(sink))
    assert record.tool_requests == {"web_search": 2}
    assert (record.input_tokens, record.output_tokens) == (500, 100)
    expected = tokenmeter.price("google", model, record.usage)
    assert record.estimated_cost_usd == expected.total_usd
    assert expected.total_usd is not None and expected.total_usd > 0.028  # 2 x $14 / 1,000


@pytest.mark.requires(google_genai=">=1.46")  # HttpOptions(httpx_client=...)
@pytest.mark.parametrize(
    ("is_async", "how"), [(False, "left"), (False, "cut"), (True, "cut")], ids=str
)
@pytest.mark.usefixtures("instrumented")
async def test_stream_ended_while_its_running_total_counts_no_output_is_estimated(
    sink: InMemorySink, is_async: bool, how: str
) -> None:
    """Early chunks may report the prompt alone (no candidates count yet): a stream left or cut
    (a dropped connection) then is estimated from the text that streamed by, never recorded as 0
    output tokens. A stream that runs to its end keeps the count it reported."""
    running = {"promptTokenCount": 8, "totalTokenCount": 8}
    final = {"promptTokenCount": 8, "candidatesTokenCount": 70, "totalTokenCount": 78}
    chunks = [_text_chunk(running) for _ in range(9)] + [_text_chunk(final, finish=True)]
    whole = sse_reply(http, [(None, c) for c in chunks]).content
    head = sse_reply(http, [(None, c) for c in chunks[:6]]).content

    replies = iter([whole, None if how == "cut" else whole])

    def server(request: Any) -> Any:
        body = next(replies)
        headers = {"content-type": "text/event-stream"}
        if body is None:
            return cut_reply(http, head)
        return http.Response(200, content=body, headers=headers)

    made = mock_genai(server)
    _clients.append(made)
    request = {"model": "gemini-2.0-flash", "contents": "hi"}

    for leave_after in (None, 6 if how == "left" else None):
        seen = 0
        try:
            if is_async:
                async for _ in await made.aio.models.generate_content_stream(**request):
                    seen += 1
            else:
                stream = made.models.generate_content_stream(**request)
                for _ in stream:
                    seen += 1
                    if seen == leave_after:
                        break
                stream.close()
        except Exception:
            assert how == "cut" and seen == 6

    whole_record, ended = flushed(sink)
    assert (whole_record.output_tokens, whole_record.estimated) == (70, False)
    assert (ended.status == "error") is (how == "cut")
    assert (ended.input_tokens, ended.estimated) == (8, True)
    assert ended.output_tokens >= 6 * 7  # six chunks of seven words streamed by


#: A function call's arguments, and code the model wrote for code execution with its output.
FORECAST_ARGS = {
    "city": "Paris",
    "days": 5,
    "units": "metric",
    "include": ["hourly forecast", "air quality index", "pollen"],
}
CODE = (
    "primes = [n for n in range(2, 200) if all(n % d for d in range(2, n))]\n"
    "print(sum(primes[:20]))"
)
#: Each kind of output a stream may carry instead of text: its parts (one a chunk), and the text
#: an estimate counts of them (as the OpenAI and Anthropic readers count a tool call's).
NON_TEXT_OUTPUT = {
    "function call": (
        [{"functionCall": {"name": "get_weather_forecast", "args": FORECAST_ARGS}}],
        "get_weather_forecast" + json.dumps(FORECAST_ARGS, ensure_ascii=False),
    ),
    "code execution": (
        [
            {"executableCode": {"language": "PYTHON", "code": CODE}},
            {"codeExecutionResult": {"outcome": "OUTCOME_OK", "output": "639\n"}},
        ],
        CODE + "639\n",
    ),
}


@pytest.mark.requires(google_genai=">=1.46")  # HttpOptions(httpx_client=...)
@pytest.mark.parametrize("output", list(NON_TEXT_OUTPUT))
@pytest.mark.parametrize(
    ("is_async", "how"), [(False, "left"), (False, "cut"), (True, "cut")], ids=str
)
@pytest.mark.usefixtures("instrumented")
async def test_a_stream_ended_after_a_function_call_or_code_estimates_them_as_output(
    sink: InMemorySink, is_async: bool, how: str, output: str
) -> None:
    """A stream whose running total counted the prompt alone, left or cut after a function call
    (or code execution) streamed by: only ``part.text`` was tallied, so its output was 0 and the
    record not marked estimated (40 in, 0 out, where the whole stream reports 38 out). The
    call's name and arguments, the code and its output are estimated as output now."""
    parts, text = NON_TEXT_OUTPUT[output]
    running = {"promptTokenCount": 40, "totalTokenCount": 40}
    final = {"promptTokenCount": 40, "candidatesTokenCount": 38, "totalTokenCount": 78}
    model = "gemini-2.5-flash"
    chunks = [
        {
            "candidates": [{"content": {"parts": [part], "role": "model"}, "index": 0}],
            "usageMetadata": running,
            "modelVersion": model,
        }
        for part in parts
    ]
    chunks.append(_text_chunk(final, finish=True))
    head = sse_reply(http, [(None, c) for c in chunks[:-1]]).content

    def server(request: Any) -> Any:
        if how == "cut":
            return cut_reply(http, head)
        return sse_reply(http, [(None, c) for c in chunks])

    made = mock_genai(server)
    _clients.append(made)
    request = {"model": model, "contents": "Weather in Paris for 5 days?"}
    seen = 0
    with pytest.raises(http.ReadError) if how == "cut" else contextlib.nullcontext():
        if is_async:
            async for _ in await made.aio.models.generate_content_stream(**request):
                seen += 1
        else:
            stream = made.models.generate_content_stream(**request)
            for _ in stream:
                seen += 1
                if how == "left" and seen == len(parts):
                    break
            stream.close()
    assert seen == len(parts)

    record = only(flushed(sink))
    assert (record.status == "error") is (how == "cut")
    assert (record.input_tokens, record.estimated) == (40, True)
    assert record.output_tokens == tokenmeter.estimate(model, output=text).output_tokens > 20


@pytest.mark.requires(google_genai=">=1.46")  # HttpOptions(httpx_client=...)
@pytest.mark.usefixtures("instrumented")
def test_a_thinking_streams_text_is_estimated_when_left_before_its_output_was_counted(
    sink: InMemorySink,
) -> None:
    """A thinking model's running total counts its thoughts before any text (no candidates
    count until the last chunk): a stream left then was recorded with the thoughts as its whole
    output, exact, the text that streamed by left out. Its text is estimated now, as for a model
    that does not think, and added to the thoughts; the thought summary's own text is not
    counted twice."""

    def leave_early(thoughts: int) -> None:
        running = {"promptTokenCount": 8, "totalTokenCount": 8 + thoughts}
        if thoughts:
            running["thoughtsTokenCount"] = thoughts
        final = {**running, "candidatesTokenCount": 70, "totalTokenCount": 78 + thoughts}
        summary = {"text": "Considering the question at length. " * 20, "thought": True}
        chunks = [_text_chunk(running) for _ in range(9)] + [_text_chunk(final, finish=True)]
        chunks[0]["candidates"][0]["content"]["parts"].insert(0, summary)
        made = mock_genai(lambda request: sse_reply(http, [(None, c) for c in chunks]))
        stream = made.models.generate_content_stream(model="gemini-2.5-flash", contents="hi")
        for seen, _ in enumerate(stream, 1):
            if seen == 6:
                break
        stream.close()

    leave_early(thoughts=50)
    leave_early(thoughts=0)
    thinking, plain = flushed(sink)
    text = tokenmeter.estimate("gemini-2.0-flash", output=" The capital of France is Paris." * 6)
    assert (thinking.reasoning_tokens, thinking.estimated) == (50, True)
    assert thinking.output_tokens == 50 + text.output_tokens  # was 50, exact
    # Without a thoughts count, the summary's text stands for them.
    assert plain.estimated and plain.output_tokens > text.output_tokens + 100


@pytest.mark.requires(google_genai=">=1.46")  # HttpOptions(httpx_client=...)
@pytest.mark.parametrize(
    ("model", "per_image"),
    [
        ("gemini-2.5-flash-image", 1_290),
        ("gemini-3-pro-image-preview", 1_120),
        ("gemini-2.5-flash", 0),  # a code execution's chart: not an image the model made
    ],
)
@pytest.mark.usefixtures("instrumented")
def test_an_image_stream_left_after_its_image_estimates_the_image(
    sink: InMemorySink, model: str, per_image: int
) -> None:
    """An image model's stream left once its image came (the running total counting the prompt
    alone until the last chunk): only text was tallied, so the record was the caption's 4
    tokens, $0.000016, for a call billed 1,290 image tokens ($0.0387). Each image part is
    estimated now at its model's per-image tokens, priced at the image-output rate."""
    image = {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo" + "A" * 400}}
    running = {"promptTokenCount": 20, "totalTokenCount": 20}
    final = {"promptTokenCount": 20, "candidatesTokenCount": per_image + 5}
    parts: list[dict[str, Any]] = [{"text": "Here is your cat."}, image, {"text": ""}]
    chunks = [
        {
            "candidates": [{"content": {"parts": [part], "role": "model"}, "index": 0}],
            "usageMetadata": final if part is parts[-1] else running,
            "modelVersion": model,
        }
        for part in parts
    ]
    made = mock_genai(lambda request: sse_reply(http, [(None, c) for c in chunks]))
    _clients.append(made)
    stream = made.models.generate_content_stream(model=model, contents="draw a cat")
    for chunk in stream:  # the application keeps the first image and stops
        if any(part.inline_data for part in chunk.candidates[0].content.parts):
            break
    stream.close()

    record = only(flushed(sink))
    caption = tokenmeter.estimate(model, output="Here is your cat.").output_tokens
    assert (record.input_tokens, record.estimated) == (20, True)
    assert record.output_tokens == per_image + caption
    assert record.modalities.get("output_image", 0) == per_image
    if model == "gemini-2.5-flash-image":  # 1,290 image tokens at $30/M, the caption at $2.50/M
        assert record.cost_breakdown["output_image"] == Decimal("0.0387")


@pytest.mark.usefixtures("instrumented")
def test_vertex_predict_embeddings_count_per_embedding_tokens(
    fake: FakeProvider, sink: InMemorySink
) -> None:
    response = client(fake, vertexai=True).models.embed_content(
        model="text-embedding-005", contents=["a", "b"]
    )
    # :predict reports statistics per embedding (the field itself exists from google-genai 3.1)
    assert getattr(response, "usage_metadata", None) is None
    record = only(flushed(sink))
    assert (record.operation, record.input_tokens) == ("embed_content", 2 * FINAL.prompt)


@pytest.mark.usefixtures("instrumented")
def test_vertex_client_is_provider_google(fake: FakeProvider, sink: InMemorySink) -> None:
    client(fake, vertexai=True).models.generate_content(model="gemini-2.5-flash", contents="hi")
    record = only(flushed(sink))
    assert record.model_provider == "google"
    assert_counts(record, FINAL)


@pytest.mark.usefixtures("instrumented")
def test_a_price_set_under_the_requested_model_prices_vertexs_build_that_answered(
    sink: InMemorySink,
) -> None:
    """Vertex answers a ``gemini-2.0-flash`` call with ``modelVersion: gemini-2.0-flash-001``:
    the $0 price docs/pricing.md advises for Provisioned Throughput was not applied, and 1M
    tokens in and 1M out were recorded at the on-demand $0.50."""
    tokenmeter.configure(
        prices={
            "gemini-2.0-flash": {"input_per_mtok": 0, "output_per_mtok": 0, "provider": "google"}
        }
    )
    million = GeminiUsage(prompt=1_000_000, candidates=1_000_000, cached=0, thoughts=0)
    with FakeProvider(
        gemini_usage=million, models={"gemini-2.0-flash": "gemini-2.0-flash-001"}
    ) as fake:
        client(fake, vertexai=True).models.generate_content(model="gemini-2.0-flash", contents="hi")

    record = only(flushed(sink))
    assert record.model_name == "gemini-2.0-flash-001"
    assert (record.estimated_cost_usd, record.price_source) == (Decimal(0), "override")


# -- several HTTP rounds per public call -----------------------------------------------------


@pytest.mark.usefixtures("instrumented")
def test_automatic_function_calling_records_every_round(
    fake: FakeProvider, sink: InMemorySink
) -> None:
    config = gtypes.GenerateContentConfig(tools=[get_weather])
    response = client(fake).models.generate_content(
        model="gemini-2.5-flash", contents="weather in Paris?", config=config
    )

    assert len(fake.requests) == 2
    assert response.usage_metadata is not None
    assert response.usage_metadata.prompt_token_count == FINAL.prompt  # the public view: last only
    first, second = flushed(sink)
    assert_counts(first, FUNCTION_CALL)
    assert_counts(second, FINAL)


@pytest.mark.usefixtures("instrumented")
async def test_async_automatic_function_calling_records_every_round(
    fake: FakeProvider, sink: InMemorySink
) -> None:
    config = gtypes.GenerateContentConfig(tools=[get_weather])
    await client(fake).aio.models.generate_content(
        model="gemini-2.5-flash", contents="weather in Paris?", config=config
    )
    first, second = flushed(sink)
    assert_counts(first, FUNCTION_CALL)
    assert_counts(second, FINAL)


@pytest.mark.usefixtures("instrumented")
def test_streamed_automatic_function_calling_records_every_round(
    fake: FakeProvider, sink: InMemorySink
) -> None:
    config = gtypes.GenerateContentConfig(tools=[get_weather])
    chunks = list(
        client(fake).models.generate_content_stream(
            model="gemini-2.5-flash", contents="weather?", config=config
        )
    )
    assert chunks
    first, second = flushed(sink)
    assert_counts(first, FUNCTION_CALL)
    assert_counts(second, FINAL)
    assert first.streamed and second.streamed


@pytest.mark.usefixtures("instrumented")
def test_chat_send_message_is_one_record(fake: FakeProvider, sink: InMemorySink) -> None:
    chat = client(fake).chats.create(model="gemini-2.5-flash")
    chat.send_message("hi")
    assert_counts(only(flushed(sink)), FINAL)


@pytest.mark.usefixtures("instrumented")
async def test_async_chat_stream_is_one_record(fake: FakeProvider, sink: InMemorySink) -> None:
    chat = client(fake).aio.chats.create(model="gemini-2.5-flash")
    async for _ in await chat.send_message_stream("hi"):
        pass
    assert_counts(only(flushed(sink)), FINAL)


async def _open_stream(made: genai.Client, via: str, is_async: bool) -> Any:
    """A stream of the models or of a chat, the sync or the async client's."""
    if via == "chat":
        chats = made.aio.chats if is_async else made.chats
        opened = chats.create(model="gemini-2.5-flash").send_message_stream("hi")
    else:
        models = made.aio.models if is_async else made.models
        opened = models.generate_content_stream(model="gemini-2.5-flash", contents="hi")
    return await opened if is_async else opened


async def _drain(stream: Any, is_async: bool) -> int:
    if is_async:
        return len([chunk async for chunk in stream])
    return len(list(stream))


def _metered(fake: FakeProvider, how: str) -> genai.Client:
    """A client metered by ``instrument()`` or by ``wrap()`` alone."""
    if how == "instrument":
        tokenmeter.instrument("google-genai")
        return client(fake)
    return tokenmeter.wrap(client(fake))


@pytest.mark.parametrize("how", ["instrument", "wrap"])
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("via", ["models", "chat"])
async def test_a_stream_read_after_its_session_belongs_to_it(
    fake: FakeProvider, sink: InMemorySink, via: str, is_async: bool, how: str
) -> None:
    """The SDK sends a stream's request once it is read: its record was made in the session
    that read it (none after the ``with`` block: every Gemini stream a web handler returned
    landed in the implicit session), not the one it was made in as OpenAI's and Anthropic's.
    Through ``wrap()`` a chat's stream still was (its chats are made anew by the client)."""
    metered = _metered(fake, how)
    with tokenmeter.session("made-here", tags={"k": "v"}) as made:
        stream = await _open_stream(metered, via, is_async)
    assert not fake.requests  # nothing sent yet
    with tokenmeter.session("read-here"):
        assert await _drain(stream, is_async) == fake.stream_chunks
    record = only(flushed(sink))
    assert record.session_name == "made-here" and record.tags == {"k": "v"}
    assert made.summary.calls == 1


@pytest.mark.parametrize("how", ["instrument", "wrap"])
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("via", ["models", "chat"])
async def test_a_stream_made_in_a_spent_session_is_refused_when_read_after_it(
    fake: FakeProvider, sink: InMemorySink, via: str, is_async: bool, how: str
) -> None:
    """The session's budget checked the stream where it was read: outside the session, so a
    stream made in a session whose budget was spent was sent and billed all the same."""
    made = _metered(fake, how)
    with tokenmeter.session("capped", budget_usd=0.0001, on_exceed="raise"):
        await _drain(await _open_stream(made, "models", is_async), is_async)  # spends it
        stream = await _open_stream(made, via, is_async)
    with pytest.raises(tokenmeter.BudgetExceeded):
        await _drain(stream, is_async)
    assert len(fake.requests) == 1


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("via", ["models", "chat"])
async def test_a_stream_made_while_instrumented_is_recorded_when_read_after(
    fake: FakeProvider, sink: InMemorySink, via: str, is_async: bool
) -> None:
    """A stream made inside ``with instrument():`` and read after the block: the SDK sends its
    request only then, and the class patch that intercepted it was gone, so it was sent and
    billed with no record. Streams made after the block are still not metered."""
    made = client(fake)
    with tokenmeter.instrument("google-genai"):
        stream = await _open_stream(made, via, is_async)
    assert await _drain(stream, is_async) == fake.stream_chunks
    assert_counts(only(flushed(sink)), FINAL)

    await _drain(await _open_stream(made, via, is_async), is_async)
    assert len(fake.requests) == 2
    assert len(flushed(sink)) == 1


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("via", ["models", "chat"])
async def test_another_librarys_wrapper_of_the_stream_methods_still_runs(
    fake: FakeProvider, sink: InMemorySink, via: str, is_async: bool, monkeypatch: Any
) -> None:
    """A tracer's wrapt wrapper of the public stream methods (OpenLIT's, a user's) ran for
    every stream before tokenmeter, and was skipped once tokenmeter bound the SDK's own
    function to its copy of the models."""
    import wrapt
    from google.genai import chats

    traced: list[str] = []

    def tracer(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        traced.append(type(instance).__name__)
        return wrapped(*args, **kwargs)

    owner = (chats.AsyncChat if is_async else chats.Chat) if via == "chat" else None
    owner = owner or (models.AsyncModels if is_async else models.Models)
    name = "send_message_stream" if via == "chat" else "generate_content_stream"
    monkeypatch.setattr(owner, name, wrapt.FunctionWrapper(vars(owner)[name], tracer))
    made = client(fake)
    tokenmeter.instrument("google-genai")
    try:
        assert await _drain(await _open_stream(made, via, is_async), is_async)
    finally:
        tokenmeter.uninstrument()  # before monkeypatch gives the class its method back
    assert len(traced) == 1
    assert_counts(only(flushed(sink)), FINAL)


# -- streams left early, errors --------------------------------------------------------------


@pytest.mark.usefixtures("instrumented")
def test_stream_broken_off_is_recorded_once_with_what_it_reported(
    fake: FakeProvider, sink: InMemorySink
) -> None:
    fake.stream_chunks = 3
    stream = client(fake).models.generate_content_stream(model="gemini-2.5-flash", contents="hi")
    for _ in stream:
        break
    del stream
    gc.collect()

    record = only(flushed(sink))
    assert record.streamed is True
    assert record.input_tokens == FINAL.prompt + FINAL.tool_use_prompt
    assert record.output_tokens == FINAL.candidates // 3 + FINAL.thoughts  # first running total


@pytest.mark.parametrize("via", ["models", "chat"])
@pytest.mark.usefixtures("instrumented")
async def test_async_stream_closed_early_is_recorded_when_closed(
    fake: FakeProvider, sink: InMemorySink, via: str
) -> None:
    """``aclose()`` of an async stream left early records it at once, as a sync ``close()`` does
    (not some event loop iterations later, when the loop finalises the SDK's inner generators,
    or at loop shutdown if the caller awaits nothing else)."""
    fake.stream_chunks = 3
    made = client(fake)
    if via == "chat":
        stream = await made.aio.chats.create(model="gemini-2.5-flash").send_message_stream("hi")
    else:
        stream = await made.aio.models.generate_content_stream(
            model="gemini-2.5-flash", contents="hi"
        )
    async for _ in stream:
        break
    await stream.aclose()

    record = only(flushed(sink))
    assert record.streamed is True
    assert record.output_tokens == FINAL.candidates // 3 + FINAL.thoughts  # first running total


@pytest.fixture
def raised_errors(monkeypatch: pytest.MonkeyPatch) -> list[errors.APIError]:
    """Every APIError the SDK constructs, to check that the caller gets that very object."""
    made: list[errors.APIError] = []
    original = errors.APIError.__init__

    def spy(self: errors.APIError, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(errors.APIError, "__init__", spy)
    return made


@pytest.mark.usefixtures("instrumented")
def test_api_error_is_recorded_and_the_same_exception_reraised(
    fake: FakeProvider, sink: InMemorySink, raised_errors: list[errors.APIError]
) -> None:
    fake.fail_next(500)
    with pytest.raises(errors.ServerError) as caught:
        client(fake).models.generate_content(model="gemini-2.5-flash", contents="hi")

    assert raised_errors == [caught.value]
    record = only(flushed(sink))
    assert (record.status, record.error) == ("error", "ServerError")
    assert record.model_name == "gemini-2.5-flash"
    assert record.input_tokens == record.output_tokens == 0


@pytest.mark.usefixtures("instrumented")
def test_stream_error_is_recorded(
    fake: FakeProvider, sink: InMemorySink, raised_errors: list[errors.APIError]
) -> None:
    fake.fail_next(429)
    with pytest.raises(errors.ClientError) as caught:
        list(client(fake).models.generate_content_stream(model="gemini-2.5-flash", contents="hi"))

    assert raised_errors == [caught.value]
    record = only(flushed(sink))
    assert (record.status, record.error, record.streamed) == ("error", "ClientError", True)


@pytest.mark.usefixtures("instrumented")
async def test_async_errors_are_recorded(
    fake: FakeProvider, sink: InMemorySink, raised_errors: list[errors.APIError]
) -> None:
    client = fake.genai_client()
    fake.fail_next(500)
    with pytest.raises(errors.ServerError) as plain:
        await client.aio.models.generate_content(model="gemini-2.5-flash", contents="hi")
    fake.fail_next(429)
    with pytest.raises(errors.ClientError) as streamed:
        stream = await client.aio.models.generate_content_stream(
            model="gemini-2.5-flash", contents="hi"
        )
        async for _ in stream:
            pass

    assert raised_errors == [plain.value, streamed.value]
    assert [(r.status, r.error, r.streamed) for r in flushed(sink)] == [
        ("error", "ServerError", False),
        ("error", "ClientError", True),
    ]


@pytest.mark.skipif(
    "should_return_http_response" not in gtypes.GenerateContentConfig.model_fields,
    reason="google-genai without should_return_http_response",
)
@pytest.mark.requires(google_genai=">=1.46")  # HttpOptions(httpx_client=...)
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.usefixtures("instrumented")
async def test_a_raw_http_response_is_read_for_its_usage(
    sink: InMemorySink, is_async: bool
) -> None:
    """``should_return_http_response``: the SDK hands back only the raw body, whose usage is
    the call's (not an estimate of a response without usage)."""
    body = _text_chunk({"promptTokenCount": 812, "candidatesTokenCount": 3, "totalTokenCount": 815})
    made = mock_genai(lambda request: http.Response(200, json=body))
    _clients.append(made)
    config = gtypes.GenerateContentConfig(should_return_http_response=True)
    request = {"model": "gemini-2.0-flash", "contents": "hi", "config": config}
    if is_async:
        response = await made.aio.models.generate_content(**request)
    else:
        response = made.models.generate_content(**request)

    assert response.usage_metadata is None and response.sdk_http_response.body
    record = only(flushed(sink))
    assert (record.input_tokens, record.output_tokens, record.estimated) == (812, 3, False)
    assert (record.status, record.model_name) == ("ok", "gemini-2.0-flash")


# -- model names -----------------------------------------------------------------------------


def _mock_client(body: dict[str, Any]) -> genai.Client:
    def reply(request: Any) -> Any:
        return http.Response(200, json=body)

    transport = http.MockTransport(reply)
    return genai.Client(
        api_key="fake-key",
        http_options=gtypes.HttpOptions(
            base_url="http://gemini.invalid",
            api_version="v1beta",
            httpx_client=http.Client(transport=transport),
        ),
    )


@pytest.mark.requires(google_genai=">=1.46")  # HttpOptions(httpx_client=...)
@pytest.mark.usefixtures("instrumented")
def test_model_prefix_is_stripped_when_the_response_names_no_model(sink: InMemorySink) -> None:
    body = {
        "candidates": [{"content": {"parts": [{"text": "ok"}], "role": "model"}}],
        "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2, "totalTokenCount": 5},
    }
    _mock_client(body).models.generate_content(model="models/gemini-2.5-flash", contents="hi")

    record = only(flushed(sink))
    assert (record.model_name, record.request_model) == (
        "gemini-2.5-flash",
        "models/gemini-2.5-flash",
    )
    assert (record.input_tokens, record.output_tokens) == (3, 2)
    assert json.loads(record.model_dump_json())["model_provider"] == "google"


@pytest.mark.parametrize(
    ("given", "short"),
    [
        ("gemini-2.5-flash", "gemini-2.5-flash"),
        ("models/gemini-2.5-flash", "gemini-2.5-flash"),
        ("publishers/google/models/gemini-2.5-pro", "gemini-2.5-pro"),
        ("projects/p/locations/us-central1/publishers/google/models/gemini-2.0", "gemini-2.0"),
        ("tunedModels/123", "tunedModels/123"),
        (None, None),
    ],
)
def test_short_model(given: str | None, short: str | None) -> None:
    assert short_model(given) == short


def test_sdks_without_private_methods_get_the_public_ones_patched() -> None:
    class OlderModels:
        def generate_content(self) -> None: ...
        def generate_content_stream(self) -> None: ...
        def embed_content(self) -> None: ...

    assert [name for name, _ in _targets(OlderModels, is_async=False, gated=True)] == [
        "generate_content",
        "generate_content_stream",
        "embed_content",
    ]
    assert [name for name, _ in _targets(models.Models, is_async=False, gated=True)] == [
        "_generate_content",
        "_generate_content_stream",
        "generate_content_stream",  # its rounds are its caller's calls, though sent later
        EMBED,
    ]


# -- one call, one record; undo ----------------------------------------------------------------


def test_instrument_twice_is_one_record(fake: FakeProvider, sink: InMemorySink) -> None:
    tokenmeter.instrument("google-genai")
    tokenmeter.instrument("google-genai")
    client(fake).models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert len(flushed(sink)) == 1


def test_wrap_and_instrument_together_are_one_record(
    fake: FakeProvider, sink: InMemorySink
) -> None:
    tokenmeter.instrument("google-genai")
    client = tokenmeter.wrap(fake.genai_client())
    client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    list(client.models.generate_content_stream(model="gemini-2.5-flash", contents="hi"))
    assert [r.streamed for r in flushed(sink)] == [False, True]


async def test_wrap_alone_meters_that_client_only(fake: FakeProvider, sink: InMemorySink) -> None:
    original = models.Models.__dict__["_generate_content"]
    client = fake.genai_client()
    assert tokenmeter.wrap(client) is client
    assert tokenmeter.wrap(client) is client  # idempotent
    other = fake.genai_client()

    client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    await client.aio.models.generate_content(model="gemini-2.5-flash", contents="hi")
    async for _ in await client.aio.models.generate_content_stream(
        model="gemini-2.5-flash", contents="hi"
    ):
        pass
    other.models.generate_content(model="gemini-2.5-flash", contents="hi")

    assert models.Models.__dict__["_generate_content"] is original
    assert [r.streamed for r in flushed(sink)] == [False, False, True]


def test_uninstrument_restores_the_original_methods(fake: FakeProvider, sink: InMemorySink) -> None:
    names = ["_generate_content", "_generate_content_stream", EMBED]
    originals = {
        (cls, name): cls.__dict__[name]
        for cls in (models.Models, models.AsyncModels)
        for name in names
    }
    tokenmeter.instrument("google-genai")
    assert (
        models.Models.__dict__["_generate_content"]
        is not originals[(models.Models, "_generate_content")]
    )

    tokenmeter.uninstrument("google-genai")

    for (cls, name), original in originals.items():
        assert cls.__dict__[name] is original
    assert models.Models._generate_content is originals[(models.Models, "_generate_content")]
    client(fake).models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert flushed(sink) == []


@pytest.mark.requires(google_genai=">=1.46")  # HttpOptions(httpx_client=...)
@pytest.mark.usefixtures("instrumented")
@pytest.mark.parametrize("read", [False, True])
def test_an_async_stream_in_flight_when_its_event_loop_is_closed_is_quiet(
    sink: InMemorySink, monkeypatch: pytest.MonkeyPatch, read: bool
) -> None:
    """An event loop closed while an async stream waits for its first chunk, or its next: the
    collector closes the stream's coroutine outside its task's context, where resetting the
    stream's caller raised a ValueError ("was created in a different Context"), printed as an
    unraisable exception of ours (nothing without tokenmeter)."""
    unraisable: list[str] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: unraisable.append(repr(u.exc_value)))
    chunk = {"candidates": [{"content": {"parts": [{"text": "Hello there"}], "role": "model"}}]}
    first = f"data: {json.dumps({**chunk, 'modelVersion': 'gemini-2.5-flash'})}\r\n\r\n"

    waiting = asyncio.Event()

    class Waiting(http.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            if read:
                yield first.encode()
            waiting.set()
            await asyncio.sleep(30)
            raise AssertionError("closed before this")

    def handler(request: Any) -> Any:
        return http.Response(200, stream=Waiting(), headers={"content-type": "text/event-stream"})

    client = mock_genai(handler)

    async def read_stream() -> None:
        stream = await client.aio.models.generate_content_stream(
            model="gemini-2.5-flash", contents="hi"
        )
        async for _ in stream:
            pass

    loop = asyncio.new_event_loop()
    pending = loop.create_task(read_stream())
    loop.run_until_complete(waiting.wait())
    loop.close()
    del pending
    gc.collect()
    assert unraisable == []
    record = only(flushed(sink))
    assert record.estimated and record.input_tokens
