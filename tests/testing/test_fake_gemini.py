"""The real google-genai SDK (sync, aio, Gemini API and Vertex paths) against FakeProvider."""

# No ``from __future__ import annotations`` here: google-genai 1.10 reads a tool function's
# annotations as written, and fails automatic function calling on the string "str".

from collections.abc import Iterator
from typing import Any

import pytest
from google.genai import errors, types
from pydantic import BaseModel

from tokenmeter.testing import FakeProvider, GeminiUsage

USAGE = GeminiUsage(prompt=8, candidates=5, cached=2, thoughts=32, tool_use_prompt=3)
CALL_USAGE = GeminiUsage(prompt=20, candidates=7, cached=0, thoughts=0)
MODEL = "gemini-2.5-flash"


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider(
        gemini_usage=USAGE, gemini_function_call_usage=CALL_USAGE, stream_chunks=4
    ) as provider:
        yield provider


def assert_usage(meta: Any) -> None:
    assert meta.prompt_token_count == 8
    assert meta.candidates_token_count == 5
    assert meta.cached_content_token_count == 2
    assert meta.thoughts_token_count == 32
    assert meta.tool_use_prompt_token_count == 3
    assert meta.total_token_count == 8 + 5 + 32 + 3


def get_weather(city: str) -> str:
    """Returns the weather for a city."""
    return f"sunny in {city}"


def test_generate_content(fake: FakeProvider) -> None:
    client = fake.genai_client()
    response = client.models.generate_content(model=MODEL, contents="hi")
    assert_usage(response.usage_metadata)
    assert response.text == "Hello from FakeProvider!"
    assert response.model_version == MODEL
    assert fake.requests[-1].path == f"/v1beta/models/{MODEL}:generateContent"


def test_stream_chunks_carry_running_totals(fake: FakeProvider) -> None:
    client = fake.genai_client()
    chunks = list(client.models.generate_content_stream(model=MODEL, contents="hi"))
    assert len(chunks) == 4
    totals = [chunk.usage_metadata.total_token_count for chunk in chunks]  # type: ignore[union-attr]
    assert totals == sorted(totals)
    assert totals[-1] == 48  # the last chunk is the grand total, not a per-chunk increment
    assert [c.usage_metadata.candidates_token_count for c in chunks] == [1, 2, 3, 5]  # type: ignore[union-attr]
    assert_usage(chunks[-1].usage_metadata)
    assert "".join(chunk.text or "" for chunk in chunks) == "Hello from FakeProvider!"
    assert fake.requests[-1].query == {"alt": "sse"}


def test_structured_output_matches_schema(fake: FakeProvider) -> None:
    class Recipe(BaseModel):
        name: str
        minutes: int

    client = fake.genai_client()
    response = client.models.generate_content(
        model=MODEL,
        contents="a recipe",
        config=types.GenerateContentConfig(
            response_mime_type="application/json", response_schema=Recipe
        ),
    )
    assert response.parsed == Recipe(name="fake", minutes=42)


def test_automatic_function_calling_makes_two_rounds(fake: FakeProvider) -> None:
    config = types.GenerateContentConfig(tools=[get_weather])
    client = fake.genai_client()
    response = client.models.generate_content(
        model=MODEL, contents="weather in Paris?", config=config
    )
    first, second = fake.requests
    assert first.body["tools"]
    call = response.automatic_function_calling_history[1].parts[0].function_call  # type: ignore[index, union-attr]
    assert call.name == "get_weather"  # type: ignore[union-attr]
    assert call.args == {"city": "fake"}  # type: ignore[union-attr]
    reply = second.body["contents"][-1]["parts"][0]["functionResponse"]
    assert reply["response"] == {"result": "sunny in fake"}
    # The SDK returns only the last round; its usage is the text round's.
    assert_usage(response.usage_metadata)


def test_function_call_round_has_its_own_usage(fake: FakeProvider) -> None:
    config = types.GenerateContentConfig(
        tools=[get_weather],
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
    )
    client = fake.genai_client()
    response = client.models.generate_content(model=MODEL, contents="weather?", config=config)
    assert response.function_calls is not None
    meta = response.usage_metadata
    assert (meta.prompt_token_count, meta.candidates_token_count) == (20, 7)  # type: ignore[union-attr]
    assert meta.total_token_count == 27  # type: ignore[union-attr]


def test_chat_afc_with_streaming(fake: FakeProvider) -> None:
    client = fake.genai_client()
    chat = client.chats.create(model=MODEL, config=types.GenerateContentConfig(tools=[get_weather]))
    chunks = list(chat.send_message_stream("weather?"))
    assert len(fake.requests) == 2
    assert chunks[-1].usage_metadata.total_token_count == 48  # type: ignore[union-attr]


def test_count_tokens_and_embeddings(fake: FakeProvider) -> None:
    client = fake.genai_client()
    counted = client.models.count_tokens(model=MODEL, contents="hi")
    assert counted.total_tokens == 8
    assert counted.cached_content_token_count == 2
    embedded = client.models.embed_content(model="gemini-embedding-001", contents=["a", "b"])
    assert embedded.embeddings is not None and len(embedded.embeddings) == 2
    assert fake.requests[-1].path.endswith("gemini-embedding-001:batchEmbedContents")


@pytest.mark.requires(google_genai=">=3.1")  # EmbedContentResponse.usage_metadata
def test_embeddings_report_usage(fake: FakeProvider) -> None:
    client = fake.genai_client()
    embedded = client.models.embed_content(model="gemini-embedding-001", contents=["a", "b"])
    assert embedded.usage_metadata.prompt_token_count == 8  # type: ignore[attr-defined]


def test_vertex_paths(fake: FakeProvider) -> None:
    client = fake.genai_client(vertexai=True)
    response = client.models.generate_content(model=MODEL, contents="hi")
    assert_usage(response.usage_metadata)
    assert fake.requests[-1].path == (
        "/v1beta1/projects/fake-project/locations/us-central1/publishers/google/models/"
        f"{MODEL}:generateContent"
    )
    chunks = list(client.models.generate_content_stream(model=MODEL, contents="hi"))
    assert_usage(chunks[-1].usage_metadata)
    embedded = client.models.embed_content(model="text-embedding-005", contents="a")
    assert embedded.embeddings is not None
    assert embedded.embeddings[0].statistics.token_count == 8  # type: ignore[union-attr]
    assert fake.requests[-1].path.endswith("text-embedding-005:predict")


@pytest.mark.parametrize(("status", "code"), [(500, "INTERNAL"), (429, "RESOURCE_EXHAUSTED")])
def test_error_injection(fake: FakeProvider, status: int, code: str) -> None:
    fake.fail_next(status=status, message="injected")
    expected = errors.ServerError if status >= 500 else errors.ClientError
    client = fake.genai_client()
    with pytest.raises(expected) as caught:
        client.models.generate_content(model=MODEL, contents="hi")
    assert caught.value.code == status
    assert caught.value.status == code
    assert caught.value.message == "injected"


async def test_aio_variants(fake: FakeProvider) -> None:
    client = fake.genai_client()
    response = await client.aio.models.generate_content(model=MODEL, contents="hi")
    assert_usage(response.usage_metadata)
    stream = await client.aio.models.generate_content_stream(model=MODEL, contents="hi")
    chunks = [chunk async for chunk in stream]
    assert len(chunks) == 4
    assert_usage(chunks[-1].usage_metadata)
    fake.clear_requests()
    afc = await client.aio.models.generate_content(
        model=MODEL, contents="weather?", config=types.GenerateContentConfig(tools=[get_weather])
    )
    assert len(fake.requests) == 2
    assert afc.text == "Hello from FakeProvider!"
    fake.fail_next(status=503)
    with pytest.raises(errors.ServerError):
        await client.aio.models.generate_content(model=MODEL, contents="hi")
