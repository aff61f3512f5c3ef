"""The real openai SDK (sync and async) against FakeProvider: routes, usage, streams, errors."""

from __future__ import annotations

import base64
import struct
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from tokenmeter.testing import FakeProvider, OpenAIUsage

USAGE = OpenAIUsage(prompt_tokens=19, completion_tokens=10, cached_tokens=4, reasoning_tokens=2)
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def fake() -> FakeProvider:
    with FakeProvider(openai_usage=USAGE, stream_chunks=4) as provider:
        yield provider


def assert_chat_usage(usage: object) -> None:
    assert usage is not None
    assert usage.prompt_tokens == 19  # type: ignore[attr-defined]
    assert usage.completion_tokens == 10  # type: ignore[attr-defined]
    assert usage.total_tokens == 29  # type: ignore[attr-defined]
    assert usage.prompt_tokens_details.cached_tokens == 4  # type: ignore[attr-defined]
    assert usage.completion_tokens_details.reasoning_tokens == 2  # type: ignore[attr-defined]


def test_chat_completion_reports_configured_usage_and_snapshot_model(fake: FakeProvider) -> None:
    client = fake.openai_client()
    response = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert_chat_usage(response.usage)
    assert response.model == "gpt-4o-2024-08-06"
    assert response.choices[0].message.content
    assert fake.requests[-1].path == "/v1/chat/completions"
    assert fake.requests[-1].body["messages"] == MESSAGES


def test_chat_stream_without_include_usage_has_no_usage(fake: FakeProvider) -> None:
    client = fake.openai_client()
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    assert len(chunks) == 4 + 2  # role chunk, 4 deltas, finish chunk
    assert all(chunk.usage is None for chunk in chunks)
    assert all(len(chunk.choices) == 1 for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert {chunk.model for chunk in chunks} == {"gpt-4o-2024-08-06"}


def test_chat_stream_with_include_usage_adds_one_usage_only_chunk(fake: FakeProvider) -> None:
    client = fake.openai_client()
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert len(chunks) == 4 + 3
    assert chunks[-1].choices == []
    assert_chat_usage(chunks[-1].usage)
    assert all(chunk.usage is None for chunk in chunks[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1])
    assert text == "Hello from FakeProvider!"


def test_stream_chunk_count_is_settable(fake: FakeProvider) -> None:
    fake.stream_chunks = 1000
    client = fake.openai_client()
    stream = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    assert sum(1 for _ in stream) == 1002


def test_chat_stream_helper_and_parse(fake: FakeProvider) -> None:
    class Answer(BaseModel):
        answer: int
        reason: str

    client = fake.openai_client()
    helpers: Any = client.chat.completions
    if not hasattr(helpers, "parse"):  # the helpers were under client.beta before openai 1.92
        helpers = client.beta.chat.completions
    with helpers.stream(
        model="gpt-4o", messages=MESSAGES, stream_options={"include_usage": True}
    ) as stream:
        final = stream.get_final_completion()
    assert_chat_usage(final.usage)
    parsed = helpers.parse(model="gpt-4o", messages=MESSAGES, response_format=Answer)
    assert parsed.choices[0].message.parsed == Answer(answer=42, reason="fake")
    assert_chat_usage(parsed.usage)


def test_responses_create_retrieve_and_stream(fake: FakeProvider) -> None:
    client = fake.openai_client()
    created = client.responses.create(model="o4-mini", input="hi")
    assert created.usage is not None
    assert (created.usage.input_tokens, created.usage.output_tokens) == (19, 10)
    assert created.usage.total_tokens == 29
    details = created.usage.model_dump()  # openai 1.66.0 keeps input_tokens_details untyped
    assert details["input_tokens_details"]["cached_tokens"] == 4
    assert details["output_tokens_details"]["reasoning_tokens"] == 2
    assert created.output_text == "Hello from FakeProvider!"

    again = client.responses.retrieve(created.id)
    assert again.id == created.id
    assert again.usage == created.usage
    assert fake.requests[-1].method == "GET"

    events = list(client.responses.create(model="o4-mini", input="hi", stream=True))
    types = [event.type for event in events]
    assert types[0] == "response.created"
    assert types[-1] == "response.completed"
    assert types.count("response.output_text.delta") == 4
    assert [e.sequence_number for e in events] == list(range(len(events)))
    completed = events[-1]
    assert completed.response.usage.total_tokens == 29  # type: ignore[union-attr]
    assert all(
        getattr(e, "response", None) is None or e.response.usage is None for e in events[:-1]
    )


@pytest.mark.requires(openai=">=1.82")  # retrieve(stream=True) replays a response's events
def test_responses_retrieve_stream_replays_from_a_sequence_number(fake: FakeProvider) -> None:
    client = fake.openai_client()
    events = list(client.responses.create(model="o4-mini", input="hi", stream=True))
    completed = events[-1]
    replay = list(client.responses.retrieve(completed.response.id, stream=True, starting_after=3))  # type: ignore[union-attr]
    assert replay[0].sequence_number == 4
    assert replay[-1].response.usage.total_tokens == 29  # type: ignore[union-attr]


def test_responses_stream_helper(fake: FakeProvider) -> None:
    client = fake.openai_client()
    with client.responses.stream(model="o4-mini", input="hi") as stream:
        final = stream.get_final_response()
    assert final.usage is not None and final.usage.total_tokens == 29
    assert final.output_text == "Hello from FakeProvider!"


@pytest.mark.requires(openai=">=1.80")  # background responses
def test_responses_background_create_then_retrieve(fake: FakeProvider) -> None:
    client = fake.openai_client()
    queued = client.responses.create(model="o4-mini", input="hi", background=True)
    assert queued.status == "queued"
    assert queued.usage is None
    done = client.responses.retrieve(queued.id)
    assert done.status == "completed"
    assert done.usage is not None and done.usage.total_tokens == 29


def test_responses_retrieve_unknown_id_is_a_404(fake: FakeProvider) -> None:
    with pytest.raises(openai.NotFoundError):
        fake.openai_client().responses.retrieve("resp_missing")


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_embeddings_honour_encoding_format(fake: FakeProvider, encoding: str) -> None:
    client = fake.openai_client()
    result = client.embeddings.create(
        model="text-embedding-3-small",
        input=["a", "b", "c"],
        encoding_format=encoding,  # type: ignore[arg-type]
        dimensions=4,
    )
    assert len(result.data) == 3
    vector = result.data[0].embedding
    if encoding == "base64":  # asked for explicitly, the SDK hands the string back as-is
        vector = list(struct.unpack("<4f", base64.b64decode(vector)))  # type: ignore[arg-type]
    assert vector == pytest.approx([0.01, 0.02, 0.03, 0.04])
    assert (result.usage.prompt_tokens, result.usage.total_tokens) == (19, 19)
    assert fake.requests[-1].body.get("encoding_format") == encoding


def test_embeddings_default_sdk_encoding_is_decoded(fake: FakeProvider) -> None:
    result = fake.openai_client().embeddings.create(model="text-embedding-3-small", input="a")
    assert len(result.data) == 1
    assert result.data[0].embedding[0] == pytest.approx(0.01)


def test_legacy_completions(fake: FakeProvider) -> None:
    client = fake.openai_client()
    completion = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="x")
    assert_chat_usage(completion.usage)
    plain = list(client.completions.create(model="gpt-3.5-turbo-instruct", prompt="x", stream=True))
    assert len(plain) == 4
    assert all(chunk.usage is None for chunk in plain)
    with_usage = list(
        client.completions.create(
            model="gpt-3.5-turbo-instruct",
            prompt="x",
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert len(with_usage) == 5
    assert with_usage[-1].choices == []
    assert_chat_usage(with_usage[-1].usage)


def test_azure_deployment_paths(fake: FakeProvider) -> None:
    fake.set_model("my-gpt4o", "gpt-4o-2024-11-20")
    fake.set_usage(
        openai={
            "prompt_tokens": 7,
            "completion_tokens": 3,
            "cached_tokens": 0,
            "reasoning_tokens": 0,
        },
        model="my-gpt4o",
    )
    client = fake.azure_openai_client(azure_deployment="my-gpt4o")
    response = client.chat.completions.create(model="ignored-by-azure", messages=MESSAGES)
    assert response.model == "gpt-4o-2024-11-20"
    assert response.usage is not None and response.usage.total_tokens == 10
    request = fake.requests[-1]
    assert request.path == "/openai/deployments/my-gpt4o/chat/completions"
    assert request.query == {"api-version": "2024-10-21"}

    # Without a pinned deployment the SDK puts the model name in the URL.
    plain = fake.azure_openai_client().embeddings.create(
        model="my-embedder", input="a", encoding_format="float"
    )
    assert plain.usage.prompt_tokens == 19
    assert fake.requests[-1].path == "/openai/deployments/my-embedder/embeddings"


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (500, openai.InternalServerError),
        (429, openai.RateLimitError),
        (400, openai.BadRequestError),
    ],
)
def test_error_injection_raises_the_sdk_error(
    fake: FakeProvider, status: int, error: type[openai.APIStatusError]
) -> None:
    client = fake.openai_client()
    fake.fail_next(status=status, message="injected")
    with pytest.raises(error) as caught:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert caught.value.status_code == status
    assert "injected" in caught.value.message  # older SDKs quote the whole error body
    assert caught.value.body["message"] == "injected"  # type: ignore[index]
    # Only one failure was queued: the next call succeeds.
    assert client.chat.completions.create(model="gpt-4o", messages=MESSAGES).usage is not None


def test_retries_consume_injected_failures(fake: FakeProvider) -> None:
    fake.fail_next(status=500, count=2)
    client = fake.openai_client(max_retries=2)
    client = client.with_options(timeout=5)
    # openai's backoff is ~0.5 s + ~1 s here; still fast enough and proves count is honoured.
    response = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert response.usage is not None
    assert len(fake.requests) == 3


async def test_async_client_routes(fake: FakeProvider) -> None:
    client = fake.openai_client(async_=True)
    response = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert_chat_usage(response.usage)
    stream = await client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert len(chunks) == 7
    assert_chat_usage(chunks[-1].usage)
    created = await client.responses.create(model="o4-mini", input="hi")
    assert created.usage is not None and created.usage.total_tokens == 29
    events = [
        event
        async for event in await client.responses.create(model="o4-mini", input="hi", stream=True)
    ]
    assert events[-1].type == "response.completed"
    embedded = await client.embeddings.create(model="text-embedding-3-small", input="a")
    assert embedded.usage.prompt_tokens == 19
    legacy = await client.completions.create(model="gpt-3.5-turbo-instruct", prompt="x")
    assert_chat_usage(legacy.usage)
    fake.fail_next(status=429)
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    await client.close()


async def test_async_azure_client(fake: FakeProvider) -> None:
    client = fake.azure_openai_client(async_=True, azure_deployment="dep")
    response = await client.chat.completions.create(model="dep", messages=MESSAGES)
    assert response.model == "dep"
    assert response.usage is not None and response.usage.total_tokens == 29
    await client.close()
