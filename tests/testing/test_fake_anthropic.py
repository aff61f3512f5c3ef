"""The real anthropic SDK (sync and async, first-party and Vertex) against FakeProvider."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from anthropic._exceptions import OverloadedError  # exported as anthropic.X from 0.108 only
from pydantic import BaseModel

from tokenmeter.testing import AnthropicUsage, FakeProvider

USAGE = AnthropicUsage(
    input_tokens=25,
    output_tokens=12,
    cache_read_input_tokens=50,
    cache_creation_5m=60,
    cache_creation_1h=40,
)
REQUEST: dict[str, Any] = {
    "model": "claude-opus-4-5",
    "max_tokens": 256,
    "messages": [{"role": "user", "content": "hi"}],
}


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider(anthropic_usage=USAGE, stream_chunks=5) as provider:
        yield provider


def assert_usage(usage: Any) -> None:
    assert usage.input_tokens == 25
    assert usage.output_tokens == 12
    assert usage.cache_read_input_tokens == 50
    assert usage.cache_creation_input_tokens == 100
    split = usage.model_dump()["cache_creation"]  # an untyped dict before anthropic 0.64
    assert split["ephemeral_5m_input_tokens"] == 60
    assert split["ephemeral_1h_input_tokens"] == 40


def test_message_reports_configured_usage(fake: FakeProvider) -> None:
    message = fake.anthropic_client().messages.create(**REQUEST)
    assert_usage(message.usage)
    assert message.model == "claude-opus-4-5-20251101"
    assert message.content[0].text == "Hello from FakeProvider!"  # type: ignore[union-attr]
    assert fake.requests[-1].path == "/v1/messages"


def test_raw_stream_events_carry_start_and_cumulative_delta_usage(fake: FakeProvider) -> None:
    events = list(fake.anthropic_client().messages.create(**REQUEST, stream=True))
    kinds = [event.type for event in events]
    assert kinds[0] == "message_start"
    assert kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds.count("content_block_delta") == 5
    start = events[0].message.usage  # type: ignore[union-attr]
    assert (start.input_tokens, start.output_tokens) == (25, 1)
    assert start.cache_read_input_tokens == 50
    delta = events[-2].usage  # type: ignore[union-attr]
    assert delta.output_tokens == 12  # cumulative: the final total, not an increment
    assert delta.input_tokens == 25


def test_raw_stream_includes_a_ping_event(fake: FakeProvider) -> None:
    client = fake.anthropic_client()
    with client.messages.with_streaming_response.create(**REQUEST, stream=True) as response:
        body = b"".join(response.iter_bytes())
    assert b"event: ping" in body
    assert body.count(b"event: content_block_delta") == 5


def test_stream_helper_accumulates_the_final_usage(fake: FakeProvider) -> None:
    with fake.anthropic_client().messages.stream(**REQUEST) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello from FakeProvider!"
    assert_usage(final.usage)


def test_beta_messages_and_count_tokens(fake: FakeProvider) -> None:
    client = fake.anthropic_client()
    beta = client.beta.messages.create(**REQUEST)
    assert_usage(beta.usage)
    assert fake.requests[-1].path == "/v1/messages"
    counted = client.messages.count_tokens(model="claude-opus-4-5", messages=REQUEST["messages"])
    assert counted.input_tokens == 25


@pytest.mark.requires(anthropic=">=0.77")  # messages.parse()
def test_parse_gets_json_matching_the_schema(fake: FakeProvider) -> None:
    class Weather(BaseModel):
        city: str
        celsius: float

    parsed = fake.anthropic_client().messages.parse(**REQUEST, output_format=Weather)
    assert parsed.parsed_output == Weather(city="fake", celsius=1.5)
    assert_usage(parsed.usage)


def test_per_model_usage_override(fake: FakeProvider) -> None:
    fake.set_usage(
        anthropic={
            "input_tokens": 3,
            "output_tokens": 4,
            "cache_read_input_tokens": 0,
            "cache_creation_5m": 0,
            "cache_creation_1h": 0,
        },
        model="claude-haiku-4-5",
    )
    client = fake.anthropic_client()
    small = client.messages.create(**{**REQUEST, "model": "claude-haiku-4-5"})
    assert (small.usage.input_tokens, small.usage.output_tokens) == (3, 4)
    assert small.model == "claude-haiku-4-5-20251001"
    assert_usage(client.messages.create(**REQUEST).usage)


def test_vertex_raw_predict_and_stream_raw_predict(fake: FakeProvider) -> None:
    client = fake.anthropic_vertex_client()
    message = client.messages.create(**REQUEST)
    assert_usage(message.usage)
    assert fake.requests[-1].path == (
        "/v1/projects/fake-project/locations/us-east5/publishers/anthropic/models/"
        "claude-opus-4-5:rawPredict"
    )
    with client.messages.stream(**REQUEST) as stream:
        final = stream.get_final_message()
    assert_usage(final.usage)
    assert fake.requests[-1].path.endswith("claude-opus-4-5:streamRawPredict")


@pytest.mark.parametrize(
    ("status", "error", "kind"),
    [
        (500, anthropic.InternalServerError, "api_error"),
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (529, OverloadedError, "overloaded_error"),
    ],
)
def test_error_injection(
    fake: FakeProvider, status: int, error: type[anthropic.APIStatusError], kind: str
) -> None:
    fake.fail_next(status=status)
    with pytest.raises(error) as caught:
        fake.anthropic_client().messages.create(**REQUEST)
    assert caught.value.status_code == status
    assert caught.value.body["error"]["type"] == kind  # type: ignore[index]
    assert caught.value.request_id is not None


async def test_async_clients(fake: FakeProvider) -> None:
    client = fake.anthropic_client(async_=True)
    assert_usage((await client.messages.create(**REQUEST)).usage)
    events = [event async for event in await client.messages.create(**REQUEST, stream=True)]
    assert events[-2].usage.output_tokens == 12  # type: ignore[union-attr]
    async with client.messages.stream(**REQUEST) as stream:
        final = await stream.get_final_message()
    assert_usage(final.usage)
    fake.fail_next(status=500)
    with pytest.raises(anthropic.InternalServerError):
        await client.messages.create(**REQUEST)
    await client.close()

    vertex = fake.anthropic_vertex_client(async_=True)
    assert_usage((await vertex.messages.create(**REQUEST)).usage)
    await vertex.close()
