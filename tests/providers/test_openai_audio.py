"""OpenAI audio transcriptions through the real SDK (MockTransport replies shaped as the API
documents them): GPT-4o transcribe models report tokens, audio and text in, text out, each at
its rate (gpt-4o-transcribe: audio in $6, text in $2.50, text out $10 per million)."""

from __future__ import annotations

import io
import json
import tempfile
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from helpers import wav
from provider_helpers import Records, json_reply, only, sse_reply

import tokenmeter

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


@pytest.mark.parametrize("model", ["gpt-4o-transcribe", "stt-prod", "STT-Prod", "azure/stt-prod"])
@pytest.mark.parametrize("answer", ["text", "json without usage"])
async def test_a_transcription_answered_without_usage_is_estimated_from_its_audio(
    kit: Any, records: Records, is_async: bool, answer: str, model: str
) -> None:
    """A gpt-4o-transcribe call answered without usage (``response_format="text"``: a bare
    string; a compatible server's JSON without ``usage``) left no record at all, where the
    same call with usage is recorded (600 audio tokens in for a minute, $0.00363). It is
    estimated as one whose usage never came: its audio from the clip's duration, its output
    from the text returned. The caller gets the answer unchanged. An Azure deployment the
    application aliased to its model is known by its alias."""
    tokenmeter.configure(aliases={"stt-prod": "gpt-4o-transcribe"})
    if answer == "text":
        headers = {"content-type": "text/plain"}
        reply = kit.http.Response(200, content=b"Hello there.\n", headers=headers)
        options: dict[str, Any] = {"response_format": "text"}
    else:
        reply = json_reply(kit.http, {"text": "Hello there."})
        options = {}
    client = kit.mock_openai(lambda request: reply, is_async=is_async)

    result = await kit.maybe(
        client.audio.transcriptions.create(
            model=model, file=("talk.wav", wav(60), "audio/wav"), **options
        )
    )

    assert "Hello there." in (result if answer == "text" else result.text)
    record = only(records())
    assert (record.status, record.estimated, record.operation) == (
        "ok",
        True,
        "audio.transcriptions",
    )
    assert record.modalities.get("input_audio") == 600
    assert record.output_tokens > 0
    assert record.estimated_cost_usd is not None and record.estimated_cost_usd > Decimal("0.0036")


@pytest.mark.parametrize("model", ["whisper-1", "Whisper-Large-V3", "stt-prod"])
def test_a_whisper_transcription_without_usage_is_not_recorded(
    kit: Any, records: Records, model: str
) -> None:
    """whisper-1 is billed per second, which no record holds: its plain-text answer (no usage)
    is not recorded, as its ``duration`` usage is not; nor one of a model not named as a
    token-billed one (an Azure deployment, "stt-prod", was recorded as an unpriced estimate)."""
    client = kit.mock_openai(
        lambda request: kit.http.Response(
            200, content=b"Hello there.", headers={"content-type": "text/plain"}
        )
    )
    text = client.audio.transcriptions.create(model=model, file=CLIP, response_format="text")
    assert "Hello there." in str(text)
    assert records() == []


@pytest.mark.requires(openai=">=2.0")  # streamed transcriptions
@pytest.mark.parametrize("model", ["whisper-1", "stt-prod"])
async def test_a_whisper_transcription_asked_to_stream_is_not_recorded(
    kit: Any, records: Records, is_async: bool, model: str
) -> None:
    """whisper-1 ignores ``stream=True`` and answers the plain JSON transcription (usage in
    seconds): the stream parses no event, and every successful call was recorded as 307
    estimated tokens (300 audio for 30 s, 7 text) at a null cost, where the same call not
    streamed makes no record. Nor does one of a model not named a transcribe model."""
    body = {"text": "Hello there.", "usage": {"type": "duration", "seconds": 30}}
    client = kit.mock_openai(lambda request: json_reply(kit.http, body), is_async=is_async)

    stream = await kit.maybe(
        client.audio.transcriptions.create(
            model=model, file=("talk.wav", wav(30), "audio/wav"), stream=True
        )
    )
    await kit.drain(stream)

    assert records() == []


@pytest.mark.requires(openai=">=2.0")  # streamed transcriptions
@pytest.mark.parametrize("first", ["transcript.text.delta", "transcript.text.segment"])
@pytest.mark.parametrize("ending", ["left after a delta", "done without usage"])
async def test_a_transcribe_stream_under_another_name_is_estimated_without_usage(
    kit: Any, records: Records, is_async: bool, ending: str, first: str
) -> None:
    """A gpt-4o-transcribe deployment named otherwise ("stt-prod", not aliased) streams
    transcript events (a diarized one, segments), which whisper never does: billed in tokens,
    so a stream of it that ends without usage is estimated, never left unrecorded as whisper's
    is."""
    segment = {"type": first, "delta": "Hello", "text": "Hello", "id": "s1", "speaker": "A"}
    segment.update({"start": 0.0, "end": 1.0})
    events = [
        (first, segment),
        ("transcript.text.delta", {"type": "transcript.text.delta", "delta": " there."}),
        ("transcript.text.done", {"type": "transcript.text.done", "text": "Hello there."}),
    ]
    client = kit.mock_openai(lambda request: sse_reply(kit.http, events), is_async=is_async)
    stream = await kit.maybe(
        client.audio.transcriptions.create(model="stt-prod", file=CLIP, stream=True)
    )
    if ending == "done without usage":
        await kit.drain(stream)
    elif hasattr(stream, "__anext__"):
        await stream.__anext__()
        await stream.close()
    else:
        next(stream)
        stream.close()

    record = only(records())
    assert record.estimated is True and record.input_tokens > 0


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


@pytest.mark.parametrize("details", ["absent", None, {}], ids=repr)
@pytest.mark.parametrize(
    "streamed", [False, pytest.param(True, marks=pytest.mark.requires(openai=">=2.0"))]
)
async def test_a_transcription_usage_without_its_input_split_prices_the_clip_as_audio(
    kit: Any, records: Records, is_async: bool, streamed: bool, details: Any
) -> None:
    """A usage without ``input_token_details`` (typed optional by the SDK; a compatible server
    or a proxy may drop it): its 600 input tokens were priced at the text rate, $0.002 for the
    $0.0041 the same answer with the split is billed (600 audio at $6, 50 out at $10 per M)."""
    usage: dict[str, Any] = {
        "type": "tokens",
        "input_tokens": 600,
        "output_tokens": 50,
        "total_tokens": 650,
    }
    if details != "absent":
        usage["input_token_details"] = details
    done = {"type": "transcript.text.done", "text": "Hello there.", "usage": usage}
    if streamed:
        reply = sse_reply(kit.http, [("transcript.text.done", done)])
    else:
        reply = json_reply(kit.http, {"text": "Hello there.", "usage": usage})
    client = kit.mock_openai(lambda request: reply, is_async=is_async)

    answer = await kit.maybe(
        client.audio.transcriptions.create(
            model="gpt-4o-transcribe",
            file=("talk.wav", wav(60), "audio/wav"),
            **({"stream": True} if streamed else {}),  # older SDKs take no stream argument
        )
    )
    if streamed:
        await kit.drain(answer)

    record = only(records())
    assert (record.input_tokens, record.output_tokens) == (600, 50)
    assert record.modalities == {"input_audio": 600}
    assert record.estimated_cost_usd == Decimal("0.0041")


def test_a_transcription_usage_without_its_input_split_counts_its_prompt_as_text(
    kit: Any, records: Records
) -> None:
    """The request's ``prompt`` is the text part of the input: its estimate is priced as text,
    the rest of the input as the clip's audio."""
    usage = {"type": "tokens", "input_tokens": 600, "output_tokens": 50, "total_tokens": 650}
    client = kit.mock_openai(
        lambda request: json_reply(kit.http, {"text": "Hello there.", "usage": usage})
    )
    prompt = "Speakers: Ada Lovelace, Charles Babbage. Topic: the Analytical Engine."
    client.audio.transcriptions.create(
        model="gpt-4o-transcribe", file=("talk.wav", wav(60), "audio/wav"), prompt=prompt
    )

    record = only(records())
    text = record.modalities["input_text"]
    assert 0 < text < 50
    assert record.modalities["input_audio"] == 600 - text


def test_record_response_reads_transcription_usage(records: Records) -> None:
    import tokenmeter

    rec = tokenmeter.record_response(
        json.loads(json.dumps({"text": "hi", "usage": USAGE})), model="gpt-4o-transcribe"
    )
    assert rec.modalities == {"input_audio": 170, "input_text": 10}
    assert rec.estimated_cost_usd == Decimal("0.001445")


def test_record_response_of_a_transcription_without_its_input_split_prices_the_clip_as_audio(
    kit: Any, records: Records
) -> None:
    """The JSON of a transcription whose usage has no ``input_token_details`` (a server or a
    proxy that drops it) given to ``record_response()``: its 600 input tokens were priced at the
    text rate, $0.002, with no operation, where the same answer made through the SDK is $0.0041
    (048f65a). Now read alike, as a dict and as the SDK's object, with the SDK path's operation."""
    from openai.types.audio import Transcription

    usage = {"type": "tokens", "input_tokens": 600, "output_tokens": 50, "total_tokens": 650}
    body = {"text": "Hello there.", "usage": usage}
    client = kit.mock_openai(lambda request: json_reply(kit.http, body))
    client.audio.transcriptions.create(
        model="gpt-4o-transcribe", file=("talk.wav", wav(60), "audio/wav")
    )
    made = only(records())

    for given in (body, Transcription.model_validate(body)):
        rec = tokenmeter.record_response(given, model="gpt-4o-transcribe")
        assert rec.modalities == made.modalities == {"input_audio": 600}
        assert rec.estimated_cost_usd == made.estimated_cost_usd == Decimal("0.0041")
        assert rec.operation == made.operation == "audio.transcriptions"


class _Pipe(io.RawIOBase):
    """A file object that is read once, front to back, and cannot seek (a pipe's)."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._data.readinto(buffer)


class _Counted(io.BufferedIOBase):
    """A file object that counts what is read of it (an upload progress bar, a hashing
    wrapper): it must see the reads of what is sent, and nothing else."""

    def __init__(self, file: Any) -> None:
        self._file = file
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return int(self._file.tell())

    def seek(self, offset: int, whence: int = 0) -> int:
        return int(self._file.seek(offset, whence))

    def read(self, size: int | None = -1) -> bytes:
        data: bytes = self._file.read(size)
        self.bytes_read += len(data)
        return data


@pytest.mark.parametrize(
    "given",
    ["bytes", "in memory", "open file", "not seekable", "consumed", "wrapped", "spooled", "named"],
)
async def test_a_transcription_without_usage_is_estimated_from_its_audio(
    kit: Any, records: Records, is_async: bool, tmp_path: Path, given: str
) -> None:
    """A transcription whose reply never came (a read timeout: the upload reached the server)
    was estimated at 7 text tokens, $0.0000175, without its audio (the bulk of the bill): 30 s
    of WAV are 300 audio tokens at OpenAI's 10 a second. A file object's header is read before
    the SDK sends it (from its start, as httpx sends it, even one read to its end before), and
    its position put back: the server gets the whole clip. One that cannot seek, or that is not
    a plain file or ``BytesIO`` (a wrapper counting what is read of it), is not read (it would
    see reads that were never sent): no audio counted, and the call goes as without us."""
    clip = wav(30)
    path = tmp_path / "talk.wav"
    path.write_bytes(clip)
    sent: list[bytes] = []

    def server(request: Any) -> Any:
        sent.append(request.content)
        raise kit.http.ReadTimeout("timed out", request=request)

    client = kit.mock_openai(server, is_async=is_async, max_retries=0)
    spooled = tempfile.SpooledTemporaryFile(max_size=1 << 20)  # noqa: SIM115 (closed below)
    spooled.write(clip)
    named = tempfile.NamedTemporaryFile(dir=tmp_path)  # noqa: SIM115 (closed below)
    named.write(clip)
    named.flush()
    with path.open("rb") as opened, spooled, named:
        if given == "consumed":
            opened.read()
        file: Any = {
            "bytes": ("talk.wav", clip, "audio/wav"),
            "in memory": io.BytesIO(clip),
            "not seekable": _Pipe(clip),
            "wrapped": _Counted(opened),
            "spooled": spooled,  # a web framework's upload (Starlette's UploadFile.file)
            "named": ("talk.wav", named),
        }
        with pytest.raises(Exception, match="timed out"):
            await kit.maybe(
                client.audio.transcriptions.create(
                    model="gpt-4o-transcribe", file=file.get(given, opened), prompt="A talk."
                )
            )

    record = only(records())
    assert (record.status, record.estimated, record.operation) == (
        "error",
        True,
        "audio.transcriptions",
    )
    assert record.input_tokens > 0  # the prompt and framing, at least
    unread = given in ("not seekable", "wrapped")  # what we read would not be sent
    assert record.modalities.get("input_audio") == (None if unread else 300)
    assert clip in sent[0]
    if given == "wrapped":  # read by the SDK as it sent it, never by us
        assert file[given].bytes_read == len(clip)


@pytest.mark.requires(openai=">=2.0")  # streamed transcriptions
async def test_a_transcription_stream_left_before_its_usage_counts_its_audio(
    kit: Any, records: Records, is_async: bool
) -> None:
    """Left after its first delta, a streamed transcription of 30 s of WAV was estimated at 7
    text tokens: its audio is 300 tokens (10 a second), priced at the audio rate."""
    events = [
        ("transcript.text.delta", {"type": "transcript.text.delta", "delta": "Hello"}),
        ("transcript.text.delta", {"type": "transcript.text.delta", "delta": " there."}),
    ]
    client = kit.mock_openai(lambda request: sse_reply(kit.http, events), is_async=is_async)
    stream = await kit.maybe(
        client.audio.transcriptions.create(
            model="gpt-4o-transcribe", file=("talk.wav", wav(30), "audio/wav"), stream=True
        )
    )
    await kit.maybe(stream.__anext__() if is_async else next(stream))
    await kit.maybe(stream.close())

    record = only(records())
    assert (record.status, record.estimated, record.streamed) == ("ok", True, True)
    assert record.modalities["input_audio"] == 300
    b = record.cost_breakdown
    assert b is not None
    assert b["input_audio"] == Decimal("0.0018")  # 300 x $6 / M
