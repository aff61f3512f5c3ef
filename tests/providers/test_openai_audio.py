"""OpenAI audio transcriptions through the real SDK (MockTransport replies shaped as the API
documents them): GPT-4o transcribe models report tokens, audio and text in, text out, each at
its rate (gpt-4o-transcribe: audio in $6, text in $2.50, text out $10 per million)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from provider_helpers import Records, json_reply, only, sse_reply

pytestmark = pytest.mark.usefixtures("instrumented")

USAGE = {
    "type": "tokens",
    "input_tokens": 180,
    "input_token_details": {"audio_tokens": 170, "text_tokens": 10},
    "output_tokens": 40,
    "total_tokens": 220,
}
CLIP = ("clip.wav", b"RIFF\0\0\0\0WAVE", "audio/wav")


async def test_transcription_prices_audio_input_as_audio(
    kit: Any, records: Records, is_async: bool
) -> None:
    body = {"text": "Hello there.", "usage": USAGE}
    client = kit.mock_openai(lambda request: json_reply(kit.http, body), is_async=is_async)

    result = await kit.maybe(
        client.audio.transcriptions.create(model="gpt-4o-transcribe", file=CLIP)
    )

    assert result.text == "Hello there."
    record = only(records())
    assert (record.model_name, record.operation) == ("gpt-4o-transcribe", "audio.transcriptions")
    assert record.modalities == {"input_audio": 170, "input_text": 10}
    b = record.cost_breakdown
    assert b is not None
    assert b["input_audio"] == Decimal("0.00102")  # 170 x $6 / M
    assert (b["input"], b["output"]) == (Decimal("0.000025"), Decimal("0.0004"))
    assert record.estimated_cost_usd == Decimal("0.001445")


def test_whisper_duration_usage_is_not_recorded_as_tokens(kit: Any, records: Records) -> None:
    """whisper-1 reports seconds of audio, billed by the minute: no price table here holds it,
    so no record rather than a zero-token one (and no unreadable-usage error)."""
    body = {"text": "Hello there.", "usage": {"type": "duration", "seconds": 12}}
    client = kit.mock_openai(lambda request: json_reply(kit.http, body))
    client.audio.transcriptions.create(model="whisper-1", file=CLIP)
    assert records() == []


def test_plain_text_transcription_passes_through(kit: Any, records: Records) -> None:
    client = kit.mock_openai(
        lambda request: kit.http.Response(
            200, content=b"Hello there.", headers={"content-type": "text/plain"}
        )
    )
    text = client.audio.transcriptions.create(
        model="gpt-4o-transcribe", file=CLIP, response_format="text"
    )
    assert "Hello there." in str(text)
    assert records() == []


@pytest.mark.requires(openai=">=2.0")  # streamed transcriptions
async def test_streamed_transcription_reads_the_done_event(
    kit: Any, records: Records, is_async: bool
) -> None:
    events = [
        ("transcript.text.delta", {"type": "transcript.text.delta", "delta": "Hello"}),
        ("transcript.text.delta", {"type": "transcript.text.delta", "delta": " there."}),
        (
            "transcript.text.done",
            {"type": "transcript.text.done", "text": "Hello there.", "usage": USAGE},
        ),
    ]
    client = kit.mock_openai(lambda request: sse_reply(kit.http, events), is_async=is_async)
    stream = await kit.maybe(
        client.audio.transcriptions.create(model="gpt-4o-transcribe", file=CLIP, stream=True)
    )
    kinds = [event.type for event in await kit.drain(stream)]

    assert kinds[-1] == "transcript.text.done"
    record = only(records())
    assert record.streamed is True
    assert record.estimated_cost_usd == Decimal("0.001445")


def test_record_response_reads_transcription_usage(records: Records) -> None:
    import tokenmeter

    rec = tokenmeter.record_response(
        json.loads(json.dumps({"text": "hi", "usage": USAGE})), model="gpt-4o-transcribe"
    )
    assert rec.modalities == {"input_audio": 170, "input_text": 10}
    assert rec.estimated_cost_usd == Decimal("0.001445")
