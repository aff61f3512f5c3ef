"""Legacy google-generativeai instrumentation, driven through the real SDK.

Sync calls go over the SDK's REST transport to a FakeProvider. The REST transport has no async
twin, so async calls go to a small in-process gRPC GenerativeService (the SDK's own protos).
"""

from __future__ import annotations

import asyncio
import copy
import gc
import pickle
import threading
import warnings
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import nullcontext
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest
from google.ai import generativelanguage_v1beta as glm
from google.ai.generativelanguage_v1beta.services.generative_service.transports import (
    GenerativeServiceGrpcAsyncIOTransport,
    GenerativeServiceGrpcTransport,
)
from google.api_core import exceptions as core_exceptions
from google.api_core import retry_async
from helpers import sleeping
from provider_helpers import flushed, only

import tokenmeter
from tokenmeter import UsageRecord
from tokenmeter.testing import FakeProvider, GeminiUsage, InMemorySink
from tokenmeter.testing._sdk import unmet

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import google.generativeai as legacy_genai
    from google.generativeai import generative_models
    from google.generativeai.types import generation_types

USAGE = GeminiUsage(prompt=100, candidates=20, cached=30, thoughts=40)
#: What the legacy proto keeps: thoughts are dropped but still inside the total.
EXPECTED = USAGE.normalized()
#: ``GenerateContentResponse.model_version``: from google-ai-generativelanguage 0.6.13, which
#: google-generativeai 0.8.4 requires (0.8.3 pins 0.6.10).
MODEL_VERSION = unmet(google_ai_generativelanguage=">=0.6.13") is None
#: Every test writes to the in-memory sink (``tests/conftest.py``), asked for or not.
pytestmark = pytest.mark.usefixtures("sink")


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider(gemini_usage=USAGE) as provider:
        provider.configure_generativeai()
        yield provider


@pytest.fixture
def instrumented() -> None:
    tokenmeter.instrument("google-generativeai")


def model(name: str = "gemini-1.5-flash") -> Any:
    """A legacy model (typed Any: the SDK's methods are untyped)."""
    return generative_models.GenerativeModel(name)


def assert_counts(record: UsageRecord) -> None:
    assert record.input_tokens == EXPECTED.input_tokens
    assert record.output_tokens == EXPECTED.output_tokens  # total - prompt: thoughts included
    assert record.reasoning_tokens == USAGE.thoughts
    assert record.cache_read_tokens == USAGE.cached


# -- sync over REST ----------------------------------------------------------------------------


@pytest.mark.usefixtures("fake", "instrumented")
def test_generate_content_counts_hidden_thoughts(sink: InMemorySink) -> None:
    response = model("gemini-1.5-flash").generate_content("hi")

    assert isinstance(response, generation_types.GenerateContentResponse)
    assert response.usage_metadata.candidates_token_count == USAGE.candidates
    record = only(flushed(sink))
    assert_counts(record)
    assert record.output_tokens == USAGE.total - USAGE.prompt
    assert (record.model_provider, record.operation) == ("google", "generate_content")
    assert record.request_model == "models/gemini-1.5-flash"
    assert record.streamed is False


@pytest.mark.requires(google_ai_generativelanguage=">=0.6.13")  # response.model_version
@pytest.mark.usefixtures("instrumented")
def test_model_name_comes_from_the_response_version(fake: FakeProvider, sink: InMemorySink) -> None:
    fake.set_model("gemini-1.5-flash", "gemini-1.5-flash-002")
    model("models/gemini-1.5-flash").generate_content(contents="hi")
    record = only(flushed(sink))
    assert (record.model_name, record.request_model) == (
        "gemini-1.5-flash-002",
        "models/gemini-1.5-flash",
    )


@pytest.mark.usefixtures("fake", "instrumented")
def test_stream_records_the_final_running_total_once(sink: InMemorySink) -> None:
    response = model("gemini-1.5-flash").generate_content("hi", stream=True)
    assert isinstance(response, generation_types.GenerateContentResponse)
    assert flushed(sink) == []  # not before the stream is done with

    chunks = list(response)

    assert len(chunks) == 3
    assert response.usage_metadata.total_token_count == USAGE.total
    record = only(flushed(sink))
    assert_counts(record)
    assert record.streamed is True


@pytest.mark.usefixtures("fake", "instrumented")
def test_stream_response_shows_as_the_sdks_response(sink: InMemorySink) -> None:
    """Its repr (a notebook shows a response by it) is the SDK's text, not our proxy's name."""
    response = model().generate_content("hi", stream=True)
    assert repr(response).startswith("response:\nGenerateContentResponse(\n    done=False,")
    assert str(response) == repr(response)
    response.resolve()
    assert repr(response).startswith("response:\nGenerateContentResponse(\n    done=True,")
    assert len(flushed(sink)) == 1


#: What generic code asks a response for (cleanup asks for close() or aclose()).
_SURFACE = ("__next__", "__aiter__", "__anext__", "close", "aclose", "resolve", "response")


@pytest.mark.usefixtures("fake", "instrumented")
def test_stream_response_has_the_sdks_methods_and_no_others(sink: InMemorySink) -> None:
    """It has no close() nor next(): code that asks (``hasattr``, generic cleanup) must find
    what it finds without tokenmeter, not a method that fails with AttributeError."""
    response = model().generate_content("hi", stream=True)
    for name in _SURFACE:
        assert hasattr(response, name) == hasattr(generation_types.GenerateContentResponse, name)
    response.resolve()
    assert len(flushed(sink)) == 1


@pytest.mark.usefixtures("fake", "instrumented")
def test_stream_resolve_records_once(sink: InMemorySink) -> None:
    response = model("gemini-1.5-flash").generate_content("hi", stream=True)
    response.resolve()
    response.resolve()
    assert response.text
    assert_counts(only(flushed(sink)))


@pytest.mark.usefixtures("fake", "instrumented")
def test_stream_broken_off_records_what_was_reported(sink: InMemorySink) -> None:
    response = model("gemini-1.5-flash").generate_content("hi", stream=True)
    for _ in response:
        break
    del response
    gc.collect()

    record = only(flushed(sink))
    assert record.streamed is True
    # The SDK reads one chunk ahead: the second running total (2 of 3 pieces) is the latest.
    assert record.output_tokens == USAGE.candidates * 2 // 3 + USAGE.thoughts


@pytest.mark.usefixtures("fake", "instrumented")
def test_chat_session_is_one_record_per_message(sink: InMemorySink) -> None:
    chat = model("gemini-1.5-flash").start_chat()
    chat.send_message("hi")
    chat.send_message("again", stream=True).resolve()
    found = flushed(sink)
    assert [r.streamed for r in found] == [False, True]
    for record in found:
        assert_counts(record)


@pytest.mark.usefixtures("instrumented")
@pytest.mark.parametrize(
    ("status", "error"),
    [(400, core_exceptions.BadRequest), (500, core_exceptions.InternalServerError)],
)
def test_api_error_is_recorded_and_reraised(
    fake: FakeProvider, sink: InMemorySink, status: int, error: type[Exception]
) -> None:
    fake.fail_next(status, count=5)  # more than any SDK retry would use
    with pytest.raises(error):
        model("gemini-1.5-flash").generate_content("hi")
    record = only(flushed(sink))
    assert (record.status, record.error) == ("error", error.__name__)
    assert record.model_name == "gemini-1.5-flash"


@pytest.mark.usefixtures("instrumented")
async def test_an_async_call_cancelled_while_its_retry_waits_costs_nothing(
    fake: FakeProvider, sink: InMemorySink
) -> None:
    """The application's timeout cancels ``generate_content_async`` while its api_core retry
    waits after a 429: the provider billed nothing (it refused the one request sent), yet the
    record was an estimate of the prompt, $0.03125 for 25,000 tokens on gemini-1.5-pro."""
    fake.configure_generativeai_async()
    fake.fail_next(429, count=5)
    fake.clear_requests()
    retry = retry_async.AsyncRetry(
        predicate=retry_async.if_exception_type(core_exceptions.ResourceExhausted),
        initial=30,
        maximum=30,
        timeout=120,
    )
    pending = asyncio.ensure_future(
        model("gemini-1.5-pro").generate_content_async("hi", request_options={"retry": retry})
    )
    await sleeping(pending, "the retry waiting after a 429")
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    assert len(fake.requests) == 1
    record = only(flushed(sink))
    assert (record.status, record.error, record.estimated) == ("error", "CancelledError", False)
    assert (record.input_tokens, record.estimated_cost_usd) == (0, 0)


class _OneBody(BaseHTTPRequestHandler):
    """Answers every request 200 with the server's ``body``: a proxy's answer, not Gemini's."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        body: bytes = self.server.body  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def answering_200() -> Iterator[Callable[[bytes], None]]:
    """A loopback server the legacy SDK is pointed at (REST): ``answer(body)`` sets its body."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OneBody)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    legacy_genai.configure(
        api_key="fake-key",
        transport="rest",
        client_options={"api_endpoint": f"http://127.0.0.1:{server.server_port}"},
    )
    yield lambda body: setattr(server, "body", body)
    server.shutdown()
    server.server_close()


@pytest.mark.usefixtures("instrumented")
@pytest.mark.parametrize(
    "body",
    [b"<html><body>502 Bad Gateway</body></html>", b'[{"candidates": [{"content"', b"[1]"],
    ids=["HTML page", "cut short", "not an object"],
)
def test_a_stream_whose_200_answer_the_sdk_cannot_parse_is_estimated(
    answering_200: Callable[[bytes], None], sink: InMemorySink, body: bytes
) -> None:
    """The SDK reads a stream's first chunk inside ``generate_content``: one it could not parse
    (a proxy's page, a body cut short) raised there, as if nothing had been sent, and was
    recorded as an error costing exactly $0, though the provider answered 200 and bills it."""
    answering_200(body)
    with pytest.raises((ValueError, StopIteration)) as raised:
        model("gemini-2.5-flash").generate_content("Write a poem about the sea", stream=True)
    record = only(flushed(sink))
    assert (record.status, record.error) == ("error", type(raised.value).__name__)
    assert record.estimated and record.input_tokens > 0 and record.output_tokens == 0
    assert record.estimated_cost_usd is not None and record.estimated_cost_usd > 0


# -- one call, one record; undo ----------------------------------------------------------------


@pytest.mark.usefixtures("fake")
def test_instrument_twice_and_wrap_are_one_record(sink: InMemorySink) -> None:
    tokenmeter.instrument("google-generativeai")
    tokenmeter.instrument("google-generativeai")
    wrapped = tokenmeter.wrap(model())
    wrapped.generate_content("hi")
    wrapped.generate_content("hi", stream=True).resolve()
    assert [r.streamed for r in flushed(sink)] == [False, True]


@pytest.mark.usefixtures("fake")
def test_wrap_alone_meters_that_model_only(sink: InMemorySink) -> None:
    original = generative_models.GenerativeModel.__dict__["generate_content"]
    metered = model()
    assert tokenmeter.wrap(metered) is metered
    assert tokenmeter.wrap(metered) is metered

    metered.start_chat().send_message("hi")
    model().generate_content("hi")  # another model: not metered

    assert generative_models.GenerativeModel.__dict__["generate_content"] is original
    assert_counts(only(flushed(sink)))


@pytest.mark.usefixtures("fake")
@pytest.mark.parametrize("instrumented", [False, True])
@pytest.mark.parametrize("copied", [copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m))])
def test_a_wrapped_model_deep_copied_or_pickled_stays_metered(
    sink: InMemorySink, instrumented: bool, copied: Any
) -> None:
    """The SDK's model deep-copies and pickles (a process pool's argument): a wrapped one too."""
    if instrumented:
        tokenmeter.instrument("google-generativeai")
    original = tokenmeter.wrap(model())
    twin = copied(original)
    assert twin is not original and twin.model_name == original.model_name
    twin.generate_content("hi")
    assert tokenmeter.wrap(twin) is twin
    original.generate_content("hi", stream=True).resolve()
    assert [r.streamed for r in flushed(sink)] == [False, True]


@pytest.mark.usefixtures("fake")
def test_uninstrument_restores_the_original_methods(sink: InMemorySink) -> None:
    owner = generative_models.GenerativeModel
    originals = {
        name: owner.__dict__[name] for name in ("generate_content", "generate_content_async")
    }
    tokenmeter.instrument("google-generativeai")
    assert owner.__dict__["generate_content"] is not originals["generate_content"]

    tokenmeter.uninstrument("google-generativeai")

    assert {name: owner.__dict__[name] for name in originals} == originals
    model("gemini-1.5-flash").generate_content("hi")
    assert flushed(sink) == []


# -- async over gRPC ---------------------------------------------------------------------------


def _reply(
    candidates: int, done: bool, usage: bool = True, output: bool = True, part: Any = None
) -> Any:
    """``output`` False: a running total of the prompt alone (early chunks may count no output).
    ``part``: the chunk's part (by default the text "piece")."""
    meta = glm.GenerateContentResponse.UsageMetadata(
        prompt_token_count=USAGE.prompt,
        cached_content_token_count=USAGE.cached,
        candidates_token_count=candidates if output else 0,
        total_token_count=USAGE.prompt + (candidates + USAGE.thoughts if output else 0),
    )
    candidate = glm.Candidate(
        content=glm.Content(parts=[part or glm.Part(text="piece")], role="model"),
        finish_reason=glm.Candidate.FinishReason.STOP if done else 0,
    )
    version = {"model_version": "gemini-1.5-flash-002"} if MODEL_VERSION else {}
    metered = {"usage_metadata": meta} if usage else {}
    return glm.GenerateContentResponse(candidates=[candidate], **metered, **version)


def _prompt(request: Any) -> str:
    return str(request.contents[0].parts[0].text)


def _served(unary: Any, streaming: Any) -> Iterator[str]:
    """The API's GenerateContent (``unary``) and StreamGenerateContent (``streaming``) served on
    loopback gRPC: yields the address, and stops the server after."""
    request_type, response_type = glm.GenerateContentRequest, glm.GenerateContentResponse
    handler = grpc.method_handlers_generic_handler(
        "google.ai.generativelanguage.v1beta.GenerativeService",
        {
            "GenerateContent": grpc.unary_unary_rpc_method_handler(
                unary, request_type.deserialize, response_type.serialize
            ),
            "StreamGenerateContent": grpc.unary_stream_rpc_method_handler(
                streaming, request_type.deserialize, response_type.serialize
            ),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(0)


#: Each kind of output a stream may carry instead of text: its parts (one a chunk), and the text
#: an estimate counts of them. Arguments without numbers (a proto Struct holds them as floats).
NON_TEXT_OUTPUT = {
    "function call": (
        [
            glm.Part(
                function_call=glm.FunctionCall(
                    name="get_weather_forecast",
                    args={"include": ["hourly forecast", "air quality index", "pollen"]},
                )
            )
        ],
        'get_weather_forecast{"include": ["hourly forecast", "air quality index", "pollen"]}',
    ),
    "code execution": (
        [
            glm.Part(
                executable_code=glm.ExecutableCode(
                    language="PYTHON", code="print(sum(n * n for n in range(1, 101)))"
                )
            ),
            glm.Part(
                code_execution_result=glm.CodeExecutionResult(
                    outcome="OUTCOME_OK", output="338350\n"
                )
            ),
        ],
        "print(sum(n * n for n in range(1, 101)))338350\n",
    ),
}


@pytest.fixture(scope="module")
def grpc_address() -> Iterator[str]:
    """GenerateContent (unary) and StreamGenerateContent (3 running totals) on loopback."""

    def unary(request: Any, context: Any) -> Any:
        return _reply(USAGE.candidates, True, usage=_prompt(request) != "no usage")

    def streaming(request: Any, context: Any) -> Iterator[Any]:
        """Prompt "cut": the connection fails after two chunks; "no usage": no chunk has any;
        "prompt only": each running total counts the prompt alone, and the connection fails
        after two chunks; a ``NON_TEXT_OUTPUT`` kind: those parts, one a chunk, each running
        total counting the prompt alone, then the connection fails; "last unmetered": the last
        chunk has no usage."""
        prompt = _prompt(request)
        if prompt in NON_TEXT_OUTPUT:
            for part in NON_TEXT_OUTPUT[prompt][0]:
                yield _reply(0, False, output=False, part=part)
            context.abort(grpc.StatusCode.INTERNAL, "connection lost")
        for i in (1, 2, 3):
            if prompt in ("cut", "prompt only") and i == 3:
                context.abort(grpc.StatusCode.INTERNAL, "connection lost")
            counted = USAGE.candidates * i // 3
            metered = prompt != "no usage" and (prompt, i) != ("last unmetered", 3)
            yield _reply(counted, i == 3, usage=metered, output=prompt != "prompt only")

    yield from _served(unary, streaming)


def _async_model(address: str) -> Any:
    legacy_model = model()
    transport = GenerativeServiceGrpcAsyncIOTransport(channel=grpc.aio.insecure_channel(address))
    legacy_model._async_client = glm.GenerativeServiceAsyncClient(transport=transport)
    return legacy_model


@pytest.mark.usefixtures("instrumented")
async def test_async_generate_content(grpc_address: str, sink: InMemorySink) -> None:
    response = await _async_model(grpc_address).generate_content_async("hi")

    assert isinstance(response, generation_types.AsyncGenerateContentResponse)
    record = only(flushed(sink))
    assert_counts(record)
    # The response's model version when the proto has one, else the request's model.
    assert record.model_name == ("gemini-1.5-flash-002" if MODEL_VERSION else "gemini-1.5-flash")


@pytest.mark.usefixtures("instrumented")
async def test_async_stream_records_the_final_running_total(
    grpc_address: str, sink: InMemorySink
) -> None:
    response = await _async_model(grpc_address).generate_content_async("hi", stream=True)
    assert isinstance(response, generation_types.AsyncGenerateContentResponse)

    chunks = [chunk async for chunk in response]

    assert len(chunks) == 3
    record = only(flushed(sink))
    assert_counts(record)
    assert record.streamed is True


@pytest.mark.usefixtures("instrumented")
async def test_async_stream_resolve(grpc_address: str, sink: InMemorySink) -> None:
    response = await _async_model(grpc_address).generate_content_async("hi", stream=True)
    await response.resolve()
    assert_counts(only(flushed(sink)))


@pytest.mark.usefixtures("instrumented")
async def test_async_stream_response_has_the_sdks_methods_and_no_others(
    grpc_address: str, sink: InMemorySink
) -> None:
    response = await _async_model(grpc_address).generate_content_async("hi", stream=True)
    kind = generation_types.AsyncGenerateContentResponse
    for name in _SURFACE:
        assert hasattr(response, name) == hasattr(kind, name), name
    await response.resolve()
    assert len(flushed(sink)) == 1


# -- every way a stream ends is one record (the core's stream proxies, as for every provider) ---


def _sync_model(address: str, name: str = "gemini-1.5-flash") -> Any:
    """A sync model over gRPC: there a stream can fail part-way (the REST fake cannot)."""
    legacy_model = model(name)
    transport = GenerativeServiceGrpcTransport(channel=grpc.insecure_channel(address))
    legacy_model._client = glm.GenerativeServiceClient(transport=transport)
    return legacy_model


#: The running total after two of three chunks.
TWO_THIRDS = USAGE.candidates * 2 // 3 + USAGE.thoughts


@pytest.mark.usefixtures("fake", "instrumented")
def test_stream_iterated_again_replays_without_a_second_record(sink: InMemorySink) -> None:
    response = model("gemini-1.5-flash").generate_content("hi", stream=True)
    first = [chunk.text for chunk in response]
    again = [chunk.text for chunk in response]  # the SDK replays a finished stream
    response.resolve()
    del response
    gc.collect()

    assert again == first
    assert len(first) == 3
    assert_counts(only(flushed(sink)))


@pytest.mark.usefixtures("instrumented")
def test_stream_failing_part_way_is_one_error_record(grpc_address: str, sink: InMemorySink) -> None:
    response = _sync_model(grpc_address).generate_content("cut", stream=True)
    seen = []
    with pytest.raises(core_exceptions.GoogleAPICallError) as raised:
        for chunk in response:
            seen.append(chunk)
    response.resolve()  # once failed, the SDK's stream is done: resolving raises nothing more
    del response
    gc.collect()

    assert len(seen) == 2
    record = only(flushed(sink))
    assert (record.status, record.error) == ("error", type(raised.value).__name__)
    assert record.output_tokens == TWO_THIRDS  # what it reported before failing
    assert record.streamed is True


@pytest.mark.parametrize("how", ["left", "cut"])
@pytest.mark.usefixtures("instrumented")
def test_stream_ended_while_its_running_total_counts_no_output_is_estimated(
    grpc_address: str, sink: InMemorySink, how: str
) -> None:
    """Early running totals may count the prompt alone: a stream left or cut then is estimated
    from the text it fetched, never recorded as 0 output tokens (as with google-genai)."""
    response = _sync_model(grpc_address).generate_content("prompt only", stream=True)
    with pytest.raises(core_exceptions.GoogleAPICallError) if how == "cut" else nullcontext():
        for _ in response:
            if how == "left":
                break
    del response
    gc.collect()

    record = only(flushed(sink))
    assert (record.status == "error") is (how == "cut")
    assert (record.input_tokens, record.estimated) == (USAGE.prompt, True)
    assert record.output_tokens > 0  # the pieces it fetched


@pytest.mark.parametrize("output", list(NON_TEXT_OUTPUT))
@pytest.mark.parametrize(("is_async", "how"), [(False, "left"), (False, "cut"), (True, "cut")])
@pytest.mark.usefixtures("instrumented")
async def test_a_stream_ended_after_a_function_call_or_code_estimates_them_as_output(
    grpc_address: str, sink: InMemorySink, is_async: bool, how: str, output: str
) -> None:
    """Left or cut while its running total counted the prompt alone, after a function call (or
    code execution) streamed by: only text was tallied, so the output was 0 and the record not
    marked estimated. The call's name and arguments, the code and its output count now."""
    parts, text = NON_TEXT_OUTPUT[output]
    seen = 0
    with pytest.raises(core_exceptions.GoogleAPICallError) if how == "cut" else nullcontext():
        if is_async:
            model_ = _async_model(grpc_address)
            async for _ in await model_.generate_content_async(output, stream=True):
                seen += 1
        else:
            for _ in _sync_model(grpc_address).generate_content(output, stream=True):
                seen += 1
                if how == "left" and seen == len(parts):
                    break
    gc.collect()

    assert seen == len(parts)
    record = only(flushed(sink))
    assert (record.status == "error") is (how == "cut")
    assert (record.input_tokens, record.estimated) == (USAGE.prompt, True)
    expected = tokenmeter.estimate("gemini-1.5-flash", output=text).output_tokens
    assert record.output_tokens == expected > 10


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.usefixtures("instrumented")
async def test_a_streams_latest_running_total_wins_when_its_last_chunk_has_none(
    grpc_address: str, sink: InMemorySink, is_async: bool
) -> None:
    """Only the first chunk's total (read while sending) and the SDK's joined response were
    read, and the join loses the usage when the last chunk carries none: the record kept the
    first chunk's output count, not marked estimated (10 recorded where 200 were reported)."""
    if is_async:
        response = await _async_model(grpc_address).generate_content_async(
            "last unmetered", stream=True
        )
        seen = len([chunk async for chunk in response])
    else:
        seen = len(list(_sync_model(grpc_address).generate_content("last unmetered", stream=True)))

    assert seen == 3
    record = only(flushed(sink))
    assert (record.output_tokens, record.estimated) == (TWO_THIRDS, False)
    assert record.input_tokens == USAGE.prompt


@pytest.mark.usefixtures("instrumented")
def test_stream_without_usage_is_estimated(grpc_address: str, sink: InMemorySink) -> None:
    chunks = list(_sync_model(grpc_address).generate_content("no usage", stream=True))

    assert len(chunks) == 3
    record = only(flushed(sink))
    assert record.estimated is True
    assert record.input_tokens > 0
    assert record.output_tokens > 0  # the three streamed pieces


@pytest.mark.parametrize("where", ["model", "call"])
@pytest.mark.usefixtures("instrumented")
def test_an_estimated_streams_output_is_capped_at_max_output_tokens(
    grpc_address: str, sink: InMemorySink, where: str
) -> None:
    """A stream without usage was estimated from all the text that came, past the
    ``max_output_tokens`` the model or the call set (where the provider stops and bills)."""
    legacy_model = _sync_model(grpc_address)
    if where == "model":  # the model's default generation_config, the call's none
        legacy_model._generation_config = {"max_output_tokens": 2, "temperature": 0.5}
        chunks = list(legacy_model.generate_content("no usage", stream=True))
    else:  # the call's own, over the model's
        legacy_model._generation_config = {"max_output_tokens": 1_000}
        config = generation_types.GenerationConfig(max_output_tokens=2)
        chunks = list(
            legacy_model.generate_content("no usage", stream=True, generation_config=config)
        )

    assert len(chunks) == 3
    record = only(flushed(sink))
    assert (record.estimated, record.output_tokens) == (True, 2)
    assert tokenmeter.estimate("gemini-1.5-flash", output="piece" * 3).output_tokens > 2


#: How a caller may read a stream, and the chunks the SDK has fetched (one ahead of the caller,
#: the first while sending) when it is done with: what an estimate counts, each chunk once.
READ_ONCE_OR_AGAIN = {
    "read once": 3,
    "peeked, then read": 3,
    "peeked, then resolved": 3,
    "peeked, then left": 2,
    "never iterated": 1,
}


@pytest.mark.parametrize("how", list(READ_ONCE_OR_AGAIN))
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.usefixtures("instrumented")
async def test_stream_without_usage_estimates_each_fetched_chunk_once(
    grpc_address: str, sink: InMemorySink, is_async: bool, how: str
) -> None:
    """A caller may peek at a stream and iterate it again: the SDK replays the chunks it already
    handed out, and each pass's text was tallied, so a peek then a full read estimated the first
    chunk twice (450 output tokens for three chunks estimated at 338 when read once). One never
    iterated was estimated at 0 output, though the SDK fetched its first chunk while sending."""
    peek, then = how.startswith("peeked"), how.rpartition(", then ")[2]
    if is_async:
        response = await _async_model(grpc_address).generate_content_async("no usage", stream=True)
        if how != "never iterated":
            async for _ in response:
                if peek:
                    break
        if then == "read":
            async for _ in response:
                pass
        elif then == "resolved":
            await response.resolve()
    else:
        response = _sync_model(grpc_address).generate_content("no usage", stream=True)
        if how != "never iterated":
            for _ in response:
                if peek:
                    break
        if then == "read":
            list(response)
        elif then == "resolved":
            response.resolve()
    del response
    for _ in range(3):  # the event loop closes an abandoned async generator
        await asyncio.sleep(0)
    gc.collect()

    record = only(flushed(sink))
    assert (record.status, record.estimated) == ("ok", True)
    pieces = "piece" * READ_ONCE_OR_AGAIN[how]
    expected = tokenmeter.estimate("gemini-1.5-flash", output=pieces).output_tokens
    assert record.output_tokens == expected


@pytest.mark.usefixtures("instrumented")
def test_response_without_usage_is_estimated_not_zero(
    grpc_address: str, sink: InMemorySink
) -> None:
    """Its output is estimated from the reply's text, as a stream's is (it was 0)."""
    response = _sync_model(grpc_address).generate_content("no usage")

    assert response.text == "piece"
    record = only(flushed(sink))
    assert (record.status, record.estimated) == ("ok", True)
    assert record.input_tokens > 0
    said = tokenmeter.estimate(record.model_name, output="piece", provider=record.model_provider)
    assert record.output_tokens == said.output_tokens > 0
    assert record.estimated_cost_usd is not None and record.estimated_cost_usd > 0


@pytest.mark.usefixtures("instrumented")
async def test_async_stream_left_early_is_recorded_once_when_dropped(
    grpc_address: str, sink: InMemorySink
) -> None:
    response = await _async_model(grpc_address).generate_content_async("hi", stream=True)
    async for _ in response:
        break
    assert flushed(sink) == []  # the caller may still iterate again
    del response
    for _ in range(3):  # the event loop closes the abandoned async generator
        await asyncio.sleep(0)
    gc.collect()

    record = only(flushed(sink))
    assert (record.status, record.streamed) == ("ok", True)
    assert record.output_tokens == TWO_THIRDS  # the SDK read one chunk ahead


@pytest.mark.usefixtures("instrumented")
def test_async_stream_left_early_as_asyncio_run_ends_is_not_an_error(
    grpc_address: str, sink: InMemorySink
) -> None:
    """Broken out of just before ``asyncio.run()`` returns: the loop's shutdown cancels the task
    closing the abandoned generator, and that CancelledError arrives at the chunk handed to the
    caller. It is the caller's side ending, not the call failing: recorded ok, as when the loop
    runs on (it was an error record, CancelledError)."""

    async def main() -> None:
        response = await _async_model(grpc_address).generate_content_async("hi", stream=True)
        async for _ in response:
            break
        del response

    asyncio.run(main())
    gc.collect()

    record = only(flushed(sink))
    assert (record.status, record.error, record.streamed) == ("ok", None, True)
    assert record.output_tokens == TWO_THIRDS  # the SDK read one chunk ahead


@pytest.mark.usefixtures("instrumented")
async def test_async_stream_failing_part_way_is_one_error_record(
    grpc_address: str, sink: InMemorySink
) -> None:
    response = await _async_model(grpc_address).generate_content_async("cut", stream=True)
    seen = []
    with pytest.raises(core_exceptions.GoogleAPICallError) as raised:
        async for chunk in response:
            seen.append(chunk)
    await response.resolve()
    del response
    gc.collect()

    assert len(seen) == 2
    record = only(flushed(sink))
    assert (record.status, record.error) == ("error", type(raised.value).__name__)
    assert record.output_tokens == TWO_THIRDS


@pytest.mark.usefixtures("instrumented")
async def test_async_stream_iterated_again_replays_without_a_second_record(
    grpc_address: str, sink: InMemorySink
) -> None:
    response = await _async_model(grpc_address).generate_content_async("hi", stream=True)
    await response.resolve()
    chunks = [chunk async for chunk in response]  # the SDK replays a resolved stream
    del response
    gc.collect()

    assert len(chunks) == 3
    assert_counts(only(flushed(sink)))


# -- usage fields the SDK's proto lacks (over gRPC, its default transport) -----------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _wire(number: int, value: int | bytes) -> bytes:
    """One protobuf field: a varint, or a length-delimited field (an embedded message)."""
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def _modality(number: int, modality: int, count: int) -> bytes:
    """A ``ModalityTokenCount`` (TEXT 1, IMAGE 2, AUDIO 4) in the details list ``number``."""
    return _wire(number, _wire(1, modality) + _wire(2, count))


@pytest.fixture
def api_usage() -> Iterator[tuple[str, dict[str, Any]]]:
    """A GenerateContent server answering as the API does today: ``usage`` gives the counts the
    SDK's proto has and ``usage["beyond"]`` the wire form of the ``UsageMetadata`` fields it
    lacks (thoughts 10, tool-use prompt 8, details by modality 5 and 7), sent as the API sends
    them, in the same message (the SDK keeps them as unknown fields)."""
    usage: dict[str, Any] = {}

    def unary(request: Any, context: Any) -> Any:
        meta = glm.GenerateContentResponse.UsageMetadata(
            prompt_token_count=usage["prompt"],
            candidates_token_count=usage["candidates"],
            total_token_count=usage["total"],
        )
        candidate = glm.Candidate(
            content=glm.Content(parts=[glm.Part(text="done")], role="model"),
            finish_reason=glm.Candidate.FinishReason.STOP,
        )
        return glm.GenerateContentResponse(candidates=[candidate], usage_metadata=meta)

    def serialize(response: Any) -> bytes:
        # A second usage_metadata (field 3) on the wire is merged into the first by the parser.
        wire: bytes = glm.GenerateContentResponse.serialize(response)
        return wire + _wire(3, usage["beyond"])

    handler = grpc.method_handlers_generic_handler(
        "google.ai.generativelanguage.v1beta.GenerativeService",
        {
            "GenerateContent": grpc.unary_unary_rpc_method_handler(
                unary, glm.GenerateContentRequest.deserialize, serialize
            ),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", usage
    server.stop(0)


@pytest.mark.usefixtures("instrumented")
def test_usage_fields_the_sdks_proto_lacks_are_read_over_grpc(
    api_usage: tuple[str, dict[str, Any]], sink: InMemorySink
) -> None:
    """The proto of google-ai-generativelanguage 0.6.x has four usage counts; the total counts
    the rest. Read as thoughts, a code-execution call's tool-use prompt was billed as output
    ($2.50/M, not $0.30/M: $0.00143 for $0.00033), and without the counts by modality an image
    was billed as text output ($2.50/M, not $30/M: 12x under) and audio input as text."""
    address, usage = api_usage

    # gemini-2.5-flash, code execution: prompt 100, tool-use prompt 500, 20 + 40 thoughts.
    usage.update(prompt=100, candidates=20, total=660, beyond=_wire(8, 500) + _wire(10, 40))
    _sync_model(address, "gemini-2.5-flash").generate_content("run the code")
    record = only(flushed(sink))
    assert (record.input_tokens, record.output_tokens, record.reasoning_tokens) == (600, 60, 40)
    assert record.estimated_cost_usd == Decimal("0.00033")  # 600 x $0.30/M + 60 x $2.50/M

    # gemini-2.5-flash-image: 1,290 image tokens at $30/M.
    sink.records.clear()
    image = _modality(5, 1, 7) + _modality(7, 2, 1290)
    usage.update(prompt=7, candidates=1290, total=1297, beyond=image)
    _sync_model(address, "gemini-2.5-flash-image").generate_content("a red bicycle")
    record = only(flushed(sink))
    assert record.modalities == {"input_text": 7, "output_image": 1290}
    assert record.estimated_cost_usd == Decimal("0.0387021")  # + 7 x $0.30/M

    # gemini-2.5-flash, 5,000 tokens of audio at $1/M.
    sink.records.clear()
    audio = _modality(5, 1, 1000) + _modality(5, 4, 5000)
    usage.update(prompt=6000, candidates=200, total=6200, beyond=audio)
    _sync_model(address, "gemini-2.5-flash").generate_content("transcribe")
    record = only(flushed(sink))
    assert record.modalities == {"input_text": 1000, "input_audio": 5000}
    assert record.estimated_cost_usd == Decimal("0.0058")  # $0.005 + $0.0003 + 200 x $2.50/M


@pytest.mark.parametrize(
    "beyond",
    [
        _wire(10, 2**31 + 5),
        _wire(8, 2**31 + 5),
        _wire(10, 2**32 - 5),
        _wire(10, 2**64 - 5),
        _modality(5, 1, 1000) + _modality(5, 4, 1000),
    ],
    ids=["thoughts-2e31", "tool-prompt-2e31", "thoughts-u32", "thoughts-negative", "modalities"],
)
@pytest.mark.usefixtures("instrumented")
def test_impossible_usage_in_the_fields_the_proto_lacks_is_unreadable(
    api_usage: tuple[str, dict[str, Any]], sink: InMemorySink, beyond: bytes
) -> None:
    """Thoughts (10) or the tool-use prompt (8) sent as a varint beyond 32 bits were read whole:
    2**31 + 5 thoughts was an "ok" record of two billion reasoning tokens at $5,368.71. As an
    int32 (what the SDK makes of the same bytes in a field it knows) it is negative. TEXT 1000
    and AUDIO 1000 in the details of a 1000-token prompt were "ok" too: all of it priced as
    audio ($0.00125 for $0.00055 of text), the text at nothing. Both are unreadable usage."""
    address, usage = api_usage
    usage.update(prompt=1000, candidates=100, total=1150, beyond=beyond)
    _sync_model(address, "gemini-2.5-flash").generate_content("hi")
    record = only(flushed(sink))
    assert (record.status, record.error, record.estimated_cost_usd) == (
        "error",
        "UnreadableUsage",
        None,
    )


@pytest.fixture
def grounded_address() -> Iterator[str]:
    """GenerateContent and StreamGenerateContent (3 chunks) answering with Grounding with Google
    Search: two search queries in the candidate's grounding metadata (on the last chunk)."""
    if "web_search_queries" not in glm.GroundingMetadata.meta.fields:
        pytest.skip("this google-ai-generativelanguage's proto has no web_search_queries")

    def reply(request: Any, last: bool) -> Any:
        grounding = glm.GroundingMetadata(web_search_queries=["weather paris", "weather lyon"])
        candidate = glm.Candidate(
            content=glm.Content(parts=[glm.Part(text="sunny")], role="model"),
            finish_reason=glm.Candidate.FinishReason.STOP if last else 0,
            grounding_metadata=grounding if last else None,
        )
        meta = glm.GenerateContentResponse.UsageMetadata(
            prompt_token_count=100, candidates_token_count=20, total_token_count=120
        )
        return glm.GenerateContentResponse(candidates=[candidate], usage_metadata=meta)

    def streaming(request: Any, context: Any) -> Iterator[Any]:
        for i in (1, 2, 3):
            yield reply(request, i == 3)

    yield from _served(lambda request, context: reply(request, True), streaming)


@pytest.mark.usefixtures("instrumented")
def test_search_grounding_is_a_billed_tool_request(
    grounded_address: str, sink: InMemorySink
) -> None:
    """Grounding with Google Search is billed beside the tokens (per search query from Gemini 3
    on, per grounded prompt before), as google-genai's calls are: the legacy SDK's calls were
    priced at their tokens alone. A stream's joined response drops the grounding metadata its
    last chunk had: it is read from the chunks."""
    _sync_model(grounded_address, "gemini-3-pro-preview").generate_content("weather?")
    record = only(flushed(sink))
    assert record.tool_requests == {"web_search": 2}
    assert record.cost_breakdown is not None
    assert record.cost_breakdown["web_search"] == Decimal("0.028")  # 2 queries at $14 per 1,000

    sink.records.clear()
    stream = _sync_model(grounded_address, "gemini-2.5-flash").generate_content("w?", stream=True)
    assert len(list(stream)) == 3
    record = only(flushed(sink))
    assert record.tool_requests == {"web_search": 1}  # one grounded prompt
    assert record.cost_breakdown is not None
    assert record.cost_breakdown["web_search"] == Decimal("0.035")


# -- budgets -----------------------------------------------------------------------------------


def test_a_budget_counts_the_tools_declared_on_the_model(
    fake: FakeProvider, instrumented: None, sink: InMemorySink, tmp_path: Any
) -> None:
    """``GenerativeModel(tools=...)`` keeps its tools as a FunctionLibrary, which the estimate
    counted as its str(), a few tokens: a $0.01 per-call budget sent a request whose ~120k-token
    tool description it refused (estimate $0.032) when passed to generate_content(tools=...).
    Gemini bills function declarations as prompt tokens: every spelling is refused alike."""
    tokenmeter.configure(
        sinks=[sink],
        directory=tmp_path / "tm",
        budgets=[{"limit_usd": 0.01, "period": "call"}],
        budget_ledger="memory",
    )
    description = "The quick brown fox jumps over the lazy dog. " * 12_000
    tools = [{"function_declarations": [{"name": "lookup", "description": description}]}]
    spellings = [
        lambda: model("gemini-2.5-flash").generate_content("hi", tools=tools),
        lambda: generative_models.GenerativeModel("gemini-2.5-flash", tools=tools).generate_content(
            "hi"
        ),
        lambda: (
            generative_models.GenerativeModel("gemini-2.5-flash", tools=tools)
            .start_chat()
            .send_message("hi")
        ),
    ]
    estimates = []
    for call in spellings:
        with pytest.raises(tokenmeter.BudgetExceeded) as refused:
            call()
        estimates.append(refused.value.estimate_usd)
    assert fake.requests == []
    assert len(set(estimates)) == 1 and estimates[0] > Decimal("0.01")
