"""A ``with_streaming_response`` body read by the caller itself (``iter_bytes``, ``iter_text``,
``iter_lines``: the SDKs' own example, or a server relaying a stream to its client) is read as it
passes: the record is the one ``parse()`` would have given, and the caller gets every piece the
SDK gives it. So is a ``with_raw_response`` stream's body read whole or through its
``http_response``'s iterators."""

from __future__ import annotations

import contextlib
import functools
import gc
import gzip
import importlib.util
import json
import re
from collections.abc import AsyncIterator, Callable, Iterator
from types import ModuleType
from typing import Any

import pytest
from provider_helpers import (
    MESSAGES,
    Records,
    http_of,
    json_bytes,
    mock_anthropic,
    mock_bedrock,
    only,
    sse_reply,
)

import tokenmeter
from tokenmeter import UsageRecord
from tokenmeter.providers import _stainless
from tokenmeter.testing import FakeProvider

READS = ["iter_bytes", "iter_text", "iter_lines"]
#: What a record says of a call's usage and cost.
COMPARED = (
    "model_name",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "estimated_cost_usd",
    "cost_breakdown",
    "estimated",
    "status",
    "streamed",
    "operation",
)


def same_body(pieces: list[Any]) -> tuple[int, Any]:
    """The pieces' number and their text, without the ids and times the fake makes up."""
    text = "".join(pieces) if isinstance(pieces[0], str) else b"".join(pieces).decode()
    return len(pieces), re.sub(r'"(\w*id|created\w*)": ?("[^"]*"|\d+)', "", text)


def summary(record: UsageRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in COMPARED}


Create = Callable[[Any], Any]
CALLS: dict[str, tuple[str, Create]] = {
    "chat stream": (
        "openai",
        lambda c: c.chat.completions.with_streaming_response.create(
            model="gpt-4o",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        ),
    ),
    "chat": (
        "openai",
        lambda c: c.chat.completions.with_streaming_response.create(
            model="gpt-4o", messages=MESSAGES
        ),
    ),
    "responses stream": (
        "openai",
        lambda c: c.responses.with_streaming_response.create(
            model="gpt-4o", input="hi", stream=True
        ),
    ),
    "messages stream": (
        "anthropic",
        lambda c: c.messages.with_streaming_response.create(
            model="claude-sonnet-4-5", max_tokens=64, messages=MESSAGES, stream=True
        ),
    ),
    "messages": (
        "anthropic",
        lambda c: c.messages.with_streaming_response.create(
            model="claude-sonnet-4-5", max_tokens=64, messages=MESSAGES
        ),
    ),
}


async def read_through(manager: Any, read: str, **kwargs: Any) -> list[Any]:
    """The body's pieces as the caller reads them, inside the response's ``with`` block."""
    if hasattr(manager, "__aenter__"):
        async with manager as response:
            return [piece async for piece in getattr(response, read)(**kwargs)]
    with manager as response:
        return list(getattr(response, read)(**kwargs))


async def read_until(manager: Any, read: str, stop: Callable[[Any], bool], **kwargs: Any) -> None:
    """The body's pieces read until ``stop(piece)``, then the response's ``with`` block left."""
    if hasattr(manager, "__aenter__"):
        async with manager as response:
            async for piece in getattr(response, read)(**kwargs):
                if stop(piece):
                    break
        return
    with manager as response:
        for piece in getattr(response, read)(**kwargs):
            if stop(piece):
                break


async def parsed(manager: Any, kit: ModuleType) -> None:
    """What ``parse()`` gives, read to its end."""
    if hasattr(manager, "__aenter__"):
        async with manager as response:
            result = await response.parse()
            if hasattr(result, "__aiter__"):
                await kit.drain(result)
        return
    with manager as response:
        result = response.parse()
        if hasattr(result, "__iter__") and not hasattr(result, "model_dump"):
            list(result)


def client_of(fake: FakeProvider, provider: str, is_async: bool) -> Any:
    if provider == "openai":
        return fake.openai_client(async_=is_async)
    return fake.anthropic_client(async_=is_async)


@pytest.mark.parametrize("read", READS)
@pytest.mark.parametrize("call", list(CALLS))
async def test_a_body_read_through_is_recorded_as_parse_records_it(
    fake: FakeProvider, records: Records, kit: ModuleType, is_async: bool, call: str, read: str
) -> None:
    provider, create = CALLS[call]
    client = client_of(fake, provider, is_async)
    bare = await read_through(create(client), read)
    tokenmeter.instrument(provider)

    seen = await read_through(create(client), read)
    read_record = only(records())
    await parsed(create(client), kit)
    parse_record = records()[-1]

    assert same_body(seen) == same_body(bare)
    assert len(records()) == 2
    assert summary(read_record) == summary(parse_record)
    assert read_record.estimated is False and read_record.status == "ok"
    assert read_record.output_tokens > 0 and read_record.estimated_cost_usd


async def read_whole(manager: Any, read: str) -> Any:
    """The body read whole (``read()``, ``text()``) inside the response's ``with`` block."""
    if hasattr(manager, "__aenter__"):
        async with manager as response:
            return await getattr(response, read)()
    with manager as response:
        return getattr(response, read)()


@pytest.mark.parametrize("read", ["read", "text"])
@pytest.mark.parametrize("call", [call for call in CALLS if call.endswith("stream")])
async def test_a_stream_body_read_whole_is_recorded_as_parse_records_it(
    fake: FakeProvider, records: Records, kit: ModuleType, is_async: bool, call: str, read: str
) -> None:
    """A stream's body read whole was not read at all: recorded as an estimate of its request
    (a stream reporting 1,900 input and 1,000 output tokens: 8 and 0, $0.00002)."""
    provider, create = CALLS[call]
    client = client_of(fake, provider, is_async)
    tokenmeter.instrument(provider)

    body = await read_whole(create(client), read)
    read_record = only(records())
    await parsed(create(client), kit)
    parse_record = records()[-1]

    assert "data:" in (body if isinstance(body, str) else body.decode())
    assert summary(read_record) == summary(parse_record)
    assert read_record.estimated is False and read_record.status == "ok"
    assert read_record.output_tokens > 0 and read_record.estimated_cost_usd


#: The streams of ``CALLS`` made through ``with_raw_response``: their body is there at once.
RAW_STREAMS: dict[str, tuple[str, Create]] = {
    "chat stream": (
        "openai",
        lambda c: c.chat.completions.with_raw_response.create(
            model="gpt-4o",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        ),
    ),
    "responses stream": (
        "openai",
        lambda c: c.responses.with_raw_response.create(model="gpt-4o", input="hi", stream=True),
    ),
    "messages stream": (
        "anthropic",
        lambda c: c.messages.with_raw_response.create(
            model="claude-sonnet-4-5", max_tokens=64, messages=MESSAGES, stream=True
        ),
    ),
}


async def read_http_bytes(http: Any, read: str, is_async: bool) -> bytes:
    """An HTTP response's body read whole (``read``) or through ``iter_bytes``/``iter_raw``."""
    if read == "read":
        return bytes(await http.aread() if is_async else http.read())
    if is_async:
        return b"".join([piece async for piece in getattr(http, f"a{read}")()])
    return b"".join(getattr(http, read)())


async def read_http(http: Any, read: str, is_async: bool) -> str:
    """An HTTP response's body read whole (``read``) or through one of its iterators."""
    if read in ("read", "iter_bytes", "iter_raw"):
        return (await read_http_bytes(http, read, is_async)).decode()
    if is_async:
        pieces = [piece async for piece in getattr(http, f"a{read}")()]
    else:
        pieces = list(getattr(http, read)())
    return "".join(pieces)


@pytest.mark.parametrize("read", ["read", "iter_bytes", "iter_lines", "iter_raw"])
@pytest.mark.parametrize("call", list(RAW_STREAMS))
async def test_a_raw_stream_body_read_yourself_is_recorded_as_parse_records_it(
    fake: FakeProvider, records: Records, kit: ModuleType, is_async: bool, call: str, read: str
) -> None:
    """A ``with_raw_response`` stream whose body the application read itself (``.text``,
    ``read()``, ``http_response.iter_lines()``) was recorded as an estimate of its request, its
    usage ignored (an Anthropic stream of 3,100 input and 500 output tokens, $0.01215: 8 and 0,
    $0.000024), where the same body through ``with_streaming_response`` is exact. Its bytes as
    they came (``iter_raw()``, a relay) were not read at all: estimated so too."""
    provider, create = RAW_STREAMS[call]
    client = client_of(fake, provider, is_async)
    tokenmeter.instrument(provider)

    raw = await kit.maybe(create(client))
    body = await read_http(raw.http_response, read, is_async)
    del raw  # a body read whole is read when its response goes
    read_record = only(records())
    await parsed(CALLS[call][1](client), kit)
    parse_record = records()[-1]

    assert "data:" in body
    assert summary(read_record) == summary(parse_record)
    assert read_record.estimated is False and read_record.status == "ok"
    assert read_record.output_tokens > 0 and read_record.estimated_cost_usd


def streamed_reply(http: Any, body: bytes, headers: dict[str, str]) -> Any:
    """A reply whose body arrives in 100-byte pieces (sync and async), as from a socket: not
    read by the transport, so that its bytes can be read as they came (``iter_raw()``)."""

    class Pieces(http.SyncByteStream, http.AsyncByteStream):  # type: ignore[misc]
        def __iter__(self) -> Iterator[bytes]:
            for at in range(0, len(body), 100):
                yield body[at : at + 100]

        async def __aiter__(self) -> AsyncIterator[bytes]:
            for piece in self:
                yield piece

    return http.Response(200, stream=Pieces(), headers=headers)


async def relayed(manager: Any, read: str, is_async: bool) -> bytes:
    """A streaming response's body as a relay passes it on: its ``http_response`` read through
    ``read`` (``iter_raw``, ``iter_bytes``) inside the response's ``with`` block."""
    if is_async:
        async with manager as response:
            return await read_http_bytes(response.http_response, read, is_async)
    with manager as response:
        return await read_http_bytes(response.http_response, read, is_async)


@pytest.mark.parametrize("encoding", [None, "identity", "gzip"])
async def test_a_stream_relayed_as_it_came_is_read_unless_compressed(
    records: Records, kit: ModuleType, is_async: bool, encoding: str | None
) -> None:
    """A relay passing a stream on undecoded (``http_response.iter_raw()``, ``content-encoding``
    kept) had nothing read: a stream that reported 19 input and 10 output tokens was recorded
    as an estimate of its request, 0 output. Its bytes are read as ``iter_bytes()``'s are when
    they are those; compressed, they are not decoded here (estimated, as documented). The
    relay gets the bytes as they came, either way."""
    body = kit.chat_sse(3, kit.CHAT_USAGE)
    sent = gzip.compress(body) if encoding == "gzip" else body
    headers = {"content-type": "text/event-stream"}
    if encoding is not None:
        headers["content-encoding"] = encoding
    client = kit.mock_openai(
        lambda request: streamed_reply(kit.http, sent, headers), is_async=is_async
    )
    tokenmeter.instrument("openai")

    assert await relayed(CALLS["chat stream"][1](client), "iter_raw", is_async) == sent
    record = only(records())
    if encoding == "gzip":
        assert (record.estimated, record.output_tokens) == (True, 0)
    else:
        assert (record.input_tokens, record.output_tokens, record.estimated) == (19, 10, False)


@pytest.mark.parametrize("read", ["iter_raw", "iter_bytes"])
@pytest.mark.parametrize("encoding", [None, "gzip"])
async def test_a_json_answer_relayed_through_its_http_response_is_read(
    records: Records, kit: ModuleType, is_async: bool, encoding: str | None, read: str
) -> None:
    """A relay serving ``stream=False`` requests with its stream code (passing the upstream
    bytes on through ``http_response.iter_raw()``), or reading ``http_response.iter_bytes()``,
    had a JSON answer unread: one that reported 19 input and 10 output tokens was recorded as an
    estimate of its request, 0 output, where the response's own ``iter_bytes()`` was exact. It
    is read as that one reads it; raw and compressed it is not decoded here (estimated, as a
    stream is). The relay gets the bytes as they came, either way."""
    body = json_bytes(kit.chat_body(kit.CHAT_USAGE))
    sent = gzip.compress(body) if encoding == "gzip" else body
    headers = {"content-type": "application/json"}
    if encoding is not None:
        headers["content-encoding"] = encoding
    client = kit.mock_openai(
        lambda request: streamed_reply(kit.http, sent, headers), is_async=is_async
    )
    tokenmeter.instrument("openai")

    passed_on = await relayed(CALLS["chat"][1](client), read, is_async)

    assert passed_on == (sent if read == "iter_raw" else body)
    record = only(records())
    if encoding == "gzip" and read == "iter_raw":
        assert (record.estimated, record.output_tokens) == (True, 0)
    else:
        assert (record.input_tokens, record.output_tokens, record.estimated) == (19, 10, False)


BEDROCK_MODEL = "anthropic.claude-haiku-4-5-20251001-v1:0"


def bedrock_stream(client: Any, way: str) -> Any:
    """An ``AnthropicBedrock`` stream, ``way``: ``with_streaming_response`` or
    ``with_raw_response``."""
    create = getattr(client.messages, f"with_{way}_response").create
    return create(model=BEDROCK_MODEL, max_tokens=64, messages=MESSAGES, stream=True)


@pytest.mark.parametrize(
    ("way", "read", "size"),
    [
        ("streaming", "iter_bytes", None),
        ("streaming", "iter_bytes", 7),  # frames split across pieces
        ("streaming", "read", None),
        ("raw", "iter_bytes", None),
        ("raw", "read", None),
    ],
)
async def test_a_bedrock_stream_body_read_yourself_is_recorded_as_parse_records_it(
    fake: FakeProvider,
    records: Records,
    kit: ModuleType,
    is_async: bool,
    way: str,
    read: str,
    size: int | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An ``AnthropicBedrock`` stream's body is AWS event-stream frames, not SSE: read by the
    caller (``iter_bytes()``, ``read()``), none of its events was found, and the call was
    recorded as an estimate of its request (175 input and 12 output tokens, $0.000245: 8 and 0,
    $0.000008). Its frames are decoded by the SDK's own decoder, as ``parse()`` decodes them."""
    monkeypatch.setattr(_stainless, "_PARSE_AT", 64)  # batches of a few frames, cut mid-frame
    client = fake.anthropic_bedrock_client(async_=is_async)
    tokenmeter.instrument("anthropic")

    if way == "raw":
        raw = await kit.maybe(bedrock_stream(client, way))
        assert await read_http_bytes(raw.http_response, read, is_async)
        del raw  # a body read whole is read when its response goes
    elif read == "read":
        assert await read_whole(bedrock_stream(client, way), read)
    else:
        pieces = await read_through(bedrock_stream(client, way), read, chunk_size=size)
        assert not size or {len(piece) for piece in pieces[:-1]} == {size}
    read_record = only(records())
    await parsed(bedrock_stream(client, "streaming"), kit)
    parse_record = records()[-1]

    assert summary(read_record) == summary(parse_record)
    assert read_record.estimated is False and read_record.status == "ok"
    assert read_record.output_tokens == fake.anthropic_usage.output_tokens


async def bedrock_body(fake: FakeProvider) -> bytes:
    """The fake's ``AnthropicBedrock`` stream body, as its frames came (read before tokenmeter
    is instrumented)."""
    client = fake.anthropic_bedrock_client()
    return b"".join(await read_through(bedrock_stream(client, "streaming"), "iter_bytes"))


@pytest.mark.parametrize(
    ("spoiled", "error"),
    [
        ("bedrock junk after the last frame", None),
        ("bedrock last frame's checksum broken", "ChecksumMismatch"),
        ("chat event not JSON after the usage", "JSONDecodeError"),
    ],
)
async def test_a_body_the_sdk_refuses_after_its_usage_keeps_it(
    fake: FakeProvider,
    records: Records,
    kit: ModuleType,
    is_async: bool,
    spoiled: str,
    error: str | None,
) -> None:
    """A relay reads a stream as bytes whose end the SDK's decoder refuses: a Bedrock body with
    5 bytes of junk after its last frame (a length no frame has), or its last frame's checksum
    broken; a chat stream with an event that is no JSON after its usage chunk. The usage read
    before was lost: recorded 0 / 0, ``UnreadableUsage``, cost unknown, where ``parse()``'s
    stream records the same body's usage (20 and 7 tokens: here the fake's). Recorded as
    ``parse()`` records it now, its error the one the SDK's stream raises."""
    if spoiled.startswith("bedrock"):
        body = await bedrock_body(fake)
        if "junk" in spoiled:
            body += b"\x00\x00\x00\x05junk"
        else:
            body = body[:-1] + bytes([body[-1] ^ 1])
        headers = {"content-type": "application/vnd.amazon.eventstream"}
        client = mock_bedrock(
            lambda request: kit.http.Response(200, content=body, headers=headers),
            is_async=is_async,
        )
        tokenmeter.instrument("anthropic")
        read = await read_through(bedrock_stream(client, "streaming"), "iter_bytes")
        with contextlib.suppress(Exception):  # the SDK's stream raises what it refuses
            await parsed(bedrock_stream(client, "streaming"), kit)
        expected = fake.anthropic_usage.output_tokens
    else:
        body = kit.chat_sse(3, kit.CHAT_USAGE).replace(
            b"data: [DONE]", b"data: {not json\n\ndata: [DONE]"
        )
        client = kit.mock_openai(lambda request: kit.sse_response(body), is_async=is_async)
        tokenmeter.instrument("openai")
        create = CALLS["chat stream"][1]
        read = await read_through(create(client), "iter_bytes")
        with contextlib.suppress(Exception):
            await parsed(create(client), kit)
        expected = kit.CHAT_USAGE["completion_tokens"]

    assert b"".join(read) == body
    read_record, parse_record = records()
    assert summary(read_record) == summary(parse_record)
    assert (read_record.error, parse_record.error) == (error, error)
    assert (read_record.output_tokens, read_record.estimated) == (expected, False)


@pytest.mark.parametrize("done", ["data: [DONE]", "data:[DONE]", "event: end\ndata: [DONE]"])
@pytest.mark.parametrize("after", ["not json", "a usage chunk"])
async def test_a_chat_stream_relayed_is_read_to_its_done_as_the_sdk_reads_it(
    records: Records, kit: ModuleType, is_async: bool, done: str, after: str
) -> None:
    """The SDK's stream ends at ``[DONE]`` and reads nothing after it. A relay reading the same
    bytes read on: an event that is no JSON after ``[DONE]`` made a call ``parse()`` records as
    ok an error (``JSONDecodeError``), and a chunk claiming 5,000 / 5,000 tokens after it was
    billed instead of the stream's 19 / 10. Both are recorded as ``parse()`` records them."""
    late = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o"}
    late |= {"choices": [], "usage": {"prompt_tokens": 5000, "completion_tokens": 5000}}
    event = "{not json" if after == "not json" else json.dumps(late)
    body = kit.chat_sse(3, kit.CHAT_USAGE).replace(b"data: [DONE]", done.encode())
    body += f"data: {event}\n\n".encode()
    client = kit.mock_openai(lambda request: kit.sse_response(body), is_async=is_async)
    tokenmeter.instrument("openai")
    create = CALLS["chat stream"][1]

    assert b"".join(await read_through(create(client), "iter_bytes")) == body
    await parsed(create(client), kit)  # the SDK's stream does not fail on this body
    read_record, parse_record = records()
    assert summary(read_record) == summary(parse_record)
    assert (read_record.status, read_record.error) == ("ok", None)
    assert (read_record.input_tokens, read_record.output_tokens) == (19, 10)


@pytest.mark.parametrize(("way", "read"), [("streaming", "iter_lines"), ("raw", "iter_text")])
async def test_a_bedrock_stream_body_read_as_text_is_estimated_not_an_error(
    fake: FakeProvider, records: Records, kit: ModuleType, is_async: bool, way: str, read: str
) -> None:
    """An ``AnthropicBedrock`` stream the caller reads as text (a relay passing it on): its binary
    frames, decoded, no longer match their checksums, and the call that succeeded was recorded
    ``status="error"``, ``UnreadableUsage``, cost unknown. It is estimated, as a body never read."""
    client = fake.anthropic_bedrock_client(async_=is_async)
    tokenmeter.instrument("anthropic")

    if way == "raw":
        raw = await kit.maybe(bedrock_stream(client, way))
        assert await read_http(raw.http_response, read, is_async)
        del raw
    else:
        assert await read_through(bedrock_stream(client, way), read)
    record = only(records())

    assert (record.status, record.error, record.estimated) == ("ok", None, True)
    assert record.estimated_cost_usd


async def read_own(raw: Any, read: str) -> list[Any]:
    """A raw response's body through its own ``iter_*()`` (anthropic's; async: async ones)."""
    pieces = getattr(raw, read)()
    if hasattr(pieces, "__anext__"):
        return [piece async for piece in pieces]
    return list(pieces)


@pytest.mark.parametrize("read", READS)
@pytest.mark.parametrize("bedrock", [False, True])
async def test_a_raw_stream_read_through_its_own_iterators_is_recorded_from_its_body(
    fake: FakeProvider,
    records: Records,
    kit: ModuleType,
    is_async: bool,
    bedrock: bool,
    read: str,
) -> None:
    """A ``with_raw_response`` stream read through the raw response's own ``iter_bytes()`` (not
    its ``http_response``'s) was recorded as an estimate of its request (175 input and 12 output
    tokens, $0.000735: 8 and 0, $0.000024). Bedrock's frames read as text are estimated."""
    if bedrock:
        client: Any = fake.anthropic_bedrock_client(async_=is_async)
        create = functools.partial(bedrock_stream, way="raw")
    else:
        client = fake.anthropic_client(async_=is_async)
        create = RAW_STREAMS["messages stream"][1]
    first = await kit.maybe(create(client))
    if not hasattr(first, "iter_bytes"):  # anthropic 0.49's raw response (oldest CI) has none
        pytest.skip("this SDK's raw response has no iterators of its own")
    bare = await read_own(first, read)
    tokenmeter.instrument("anthropic")

    raw = await kit.maybe(create(client))
    seen = await read_own(raw, read)
    del raw
    record = only(records())

    assert type(seen[0]) is type(bare[0])
    # Bedrock's binary frames hold random bytes: two answers split into different lines.
    assert len(seen) == len(bare) or (bedrock and read != "iter_bytes")
    assert record.status == "ok"
    if bedrock and read != "iter_bytes":
        assert record.estimated is True
    else:
        assert record.estimated is False
        assert record.output_tokens == fake.anthropic_usage.output_tokens


class Server:
    """A chat stream of ``chunks`` deltas and a usage chunk, its lines ended by ``ending``."""

    def __init__(self, kit: ModuleType, chunks: int, ending: bytes = b"\n") -> None:
        self.kit, self.chunks, self.ending = kit, chunks, ending

    def __call__(self, request: Any) -> Any:
        body = self.kit.chat_sse(self.chunks, self.kit.CHAT_USAGE)
        return self.kit.sse_response(body.replace(b"\n", self.ending))


@pytest.mark.parametrize(
    ("chunks", "ending", "size"),
    [(3, b"\n", 1), (600, b"\n", None), (600, b"\r\n", 777), (40, b"\r", 5)],
)
async def test_a_stream_read_in_any_pieces_is_exact(
    records: Records,
    kit: ModuleType,
    is_async: bool,
    chunks: int,
    ending: bytes,
    size: int | None,
) -> None:
    """Pieces of any size (one byte; events split across pieces), any line ending the SSE
    format allows, and a body longer than one parse batch (600 chunks: ~100 KB)."""
    client = kit.mock_openai(Server(kit, chunks, ending), is_async=is_async)
    tokenmeter.instrument("openai")
    create = CALLS["chat stream"][1]
    pieces = await read_through(create(client), "iter_bytes", chunk_size=size)
    assert b"".join(pieces) == kit.chat_sse(chunks, kit.CHAT_USAGE).replace(b"\n", ending)
    record = only(records())
    assert (record.input_tokens, record.output_tokens, record.cache_read_tokens) == (19, 10, 4)
    assert (record.reasoning_tokens, record.estimated, record.status) == (2, False, "ok")


async def test_a_stream_left_early_is_recorded_once_with_an_estimate(
    records: Records, kit: ModuleType, is_async: bool
) -> None:
    client = kit.mock_openai(Server(kit, 50), is_async=is_async)
    tokenmeter.instrument("openai")
    data_lines = iter(range(1, 100))

    def third_data_line(line: str) -> bool:  # two whole events read, and the third's data
        return line.startswith("data:") and next(data_lines) == 3

    await read_until(CALLS["chat stream"][1](client), "iter_lines", third_data_line)
    record = only(records())
    assert (record.status, record.streamed, record.estimated) == ("ok", True, True)
    assert record.output_tokens > 0  # the text of the whole events that passed by


#: Text deltas of the long streams below, and the events read before they are left: far past
#: the events a body read through ``iter_*()`` has parsed (``_READ_EVENTS``).
LONG_DELTAS, LEFT_AFTER = 600, 400
DELTA_TEXT = "hello world, "


def anthropic_long(client: Any, streaming: bool) -> Any:
    messages = client.messages.with_streaming_response if streaming else client.messages
    return messages.create(
        model="claude-sonnet-4-5", max_tokens=4096, messages=MESSAGES, stream=True
    )


def responses_long(client: Any, streaming: bool) -> Any:
    responses = client.responses.with_streaming_response if streaming else client.responses
    return responses.create(model="gpt-4o", input="hi", stream=True)


def transcription_long(client: Any, streaming: bool) -> Any:
    audio = client.audio.transcriptions
    transcriptions = audio.with_streaming_response if streaming else audio
    clip = ("clip.wav", b"RIFF\0\0\0\0WAVE", "audio/wav")
    return transcriptions.create(model="gpt-4o-transcribe", file=clip, stream=True)


def long_events(kind: str) -> list[tuple[str | None, Any]]:
    """A stream of ``kind`` holding ``LONG_DELTAS`` text deltas after its opening events."""
    if kind == "anthropic":
        message = {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": "claude-sonnet-4-5",
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 1000, "output_tokens": 1},
        }
        block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}}
        delta = {"type": "text_delta", "text": DELTA_TEXT}
        return [
            ("message_start", {"type": "message_start", "message": message}),
            ("content_block_start", block),
        ] + [
            ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
        ] * LONG_DELTAS
    if kind == "responses":
        response = {
            "id": "resp_1",
            "object": "response",
            "created_at": 1,
            "model": "gpt-4o-2024-08-06",
            "status": "in_progress",
            "output": [],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
        }
        name = "response.output_text.delta"
        text = {"item_id": "m1", "output_index": 0, "content_index": 0, "delta": DELTA_TEXT}
        return [("response.created", {"type": "response.created", "response": response})] + [
            (name, {"type": name, **text})
        ] * LONG_DELTAS
    name = "transcript.text.delta"
    return [(name, {"type": name, "delta": DELTA_TEXT})] * LONG_DELTAS


LONG_STREAMS: dict[str, Callable[[Any, bool], Any]] = {
    "anthropic": anthropic_long,
    "responses": responses_long,
    "transcription": transcription_long,
}


def long_client(kind: str, is_async: bool, kit: ModuleType) -> Any:
    events = long_events(kind)
    if kind == "anthropic":
        from anthropic import _base_client

        http = http_of(_base_client)
        return mock_anthropic(lambda request: sse_reply(http, events), is_async=is_async)
    return kit.mock_openai(lambda request: sse_reply(kit.http, events), is_async=is_async)


async def parsed_until(stream: Any, events: int) -> None:
    """``events`` of an SDK stream read, then the stream closed."""
    read = 0
    if hasattr(stream, "__aiter__"):
        async for _ in stream:
            read += 1
            if read == events:
                break
        await stream.close()
        return
    for _ in stream:
        read += 1
        if read == events:
            break
    stream.close()


@pytest.mark.parametrize(
    "kind",
    [
        "anthropic",
        "responses",
        pytest.param(
            "transcription", marks=pytest.mark.requires(openai=">=2.0")
        ),  # streamed transcriptions
    ],
)
async def test_a_long_stream_left_early_is_estimated_as_parse_estimates_it(
    records: Records, kit: ModuleType, is_async: bool, kind: str
) -> None:
    """Read through ``iter_lines()`` and left after 2,000 of 3,000 text deltas, an Anthropic
    stream was estimated at 240 output tokens ($0.0066) where the same stream left at the same
    event through the SDK's stream is 7,642 ($0.118): the deltas after the 64th, fed only to be
    counted, were counted by the chat reader alone (a Responses stream: 198 for 6,490; a
    transcription's too)."""
    client = long_client(kind, is_async, kit)
    tokenmeter.instrument("anthropic" if kind == "anthropic" else "openai")
    create = LONG_STREAMS[kind]
    data_lines = iter(range(1, 2 * LONG_DELTAS))

    def next_event_begun(line: str) -> bool:  # LEFT_AFTER whole events read, and one more's data
        return line.startswith("data:") and next(data_lines) == LEFT_AFTER + 1

    await read_until(create(client, True), "iter_lines", next_event_begun)
    read_record = only(records())
    await parsed_until(await kit.maybe(create(client, False)), LEFT_AFTER)
    parse_record = records()[-1]

    assert len(records()) == 2
    assert read_record.estimated is parse_record.estimated is True
    assert parse_record.output_tokens > 1000
    assert read_record.output_tokens == pytest.approx(parse_record.output_tokens, rel=0.01)
    assert read_record.input_tokens == parse_record.input_tokens


async def test_an_error_event_is_the_calls_error(
    records: Records, kit: ModuleType, is_async: bool
) -> None:
    """The SDK raises an error event's APIError to a caller of ``parse()``; the caller reading
    the body gets the event as bytes, and the call is recorded as an error all the same."""
    chunk = json.loads(kit.chat_sse(1).split(b"\n\n")[0][len(b"data: ") :])
    events = [(None, chunk), (None, {"error": {"message": "overloaded"}})]
    client = kit.mock_openai(lambda request: sse_reply(kit.http, events), is_async=is_async)
    tokenmeter.instrument("openai")
    lines = await read_through(CALLS["chat stream"][1](client), "iter_lines")
    assert any("overloaded" in line for line in lines)
    record = only(records())
    assert (record.status, record.error) == ("error", "APIError")


@pytest.mark.parametrize(
    "body",
    [
        b"data: {not json\n\n" * 3,
        b"\xff\xfe\x00garbage" * 1000,
        b'data: {"choices": "many", "usage": {"prompt_tokens": -1}}\n\n',
        b"data: " + b"x" * 5000,  # one event longer than what is kept (patched below)
    ],
)
async def test_a_hostile_body_reaches_the_caller_whole_and_leaves_one_record(
    records: Records,
    kit: ModuleType,
    is_async: bool,
    body: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_stainless, "_MAX_KEPT", 4096)
    client = kit.mock_openai(lambda request: kit.sse_response(body), is_async=is_async)
    tokenmeter.instrument("openai")
    pieces = await read_through(CALLS["chat stream"][1](client), "iter_bytes")
    assert b"".join(pieces) == body
    record = only(records())
    assert record.streamed and record.model_name == "gpt-4o"
    assert record.estimated or record.estimated_cost_usd is None


async def test_a_json_body_cut_short_is_estimated(
    fake: FakeProvider, records: Records, is_async: bool
) -> None:
    client = fake.openai_client(async_=is_async)
    tokenmeter.instrument("openai")
    await read_until(CALLS["chat"][1](client), "iter_bytes", lambda piece: True, chunk_size=16)
    record = only(records())
    assert (record.status, record.estimated, record.streamed) == ("ok", True, False)


async def test_a_second_pass_is_the_sdks_own(
    fake: FakeProvider, records: Records, is_async: bool
) -> None:
    """Reading the body twice fails in the SDK as it does without tokenmeter (the body was
    consumed), and the call is recorded once, from the first pass."""
    client = fake.openai_client(async_=is_async)
    tokenmeter.instrument("openai")
    manager = CALLS["chat stream"][1](client)
    if is_async:
        async with manager as response:
            first = [line async for line in response.iter_lines()]
            with pytest.raises(Exception) as again:
                _ = [line async for line in response.iter_lines()]
    else:
        with manager as response:
            first = list(response.iter_lines())
            with pytest.raises(Exception) as again:
                list(response.iter_lines())
    assert first and "consumed" in type(again.value).__name__.lower() + str(again.value).lower()
    record = only(records())
    assert (record.estimated, record.status) == (False, "ok")


async def test_a_json_body_read_whole_after_an_unused_iterator_is_exact(
    fake: FakeProvider, records: Records, is_async: bool
) -> None:
    client = fake.openai_client(async_=is_async)
    tokenmeter.instrument("openai")
    manager = CALLS["chat"][1](client)
    if is_async:
        async with manager as response:
            response.iter_bytes()  # made, never iterated
            body = await response.read()
    else:
        with manager as response:
            response.iter_bytes()
            body = response.read()
    assert json.loads(body)["usage"]
    record = only(records())
    assert (record.status, record.estimated, record.output_tokens) == ("ok", False, 10)


async def test_a_stream_broken_after_its_usage_keeps_it(
    records: Records, kit: ModuleType, is_async: bool
) -> None:
    """The connection breaks after the usage chunk came (before ``[DONE]``): the call is an
    error, with the usage that came, as a parsed stream records it."""
    body = kit.chat_sse(3, kit.CHAT_USAGE).rsplit(b"data: [DONE]", 1)[0]

    def pieces() -> Any:
        yield body
        raise kit.http.ReadError("connection reset")

    async def async_pieces() -> Any:
        for piece in pieces():
            yield piece

    def handler(request: Any) -> Any:
        content = async_pieces() if is_async else pieces()
        return kit.http.Response(
            200, content=content, headers={"content-type": "text/event-stream"}
        )

    client = kit.mock_openai(handler, is_async=is_async)
    tokenmeter.instrument("openai")
    with pytest.raises(Exception, match="connection reset"):
        await read_through(CALLS["chat stream"][1](client), "iter_lines")
    record = only(records())
    assert (record.status, record.estimated) == ("error", False)
    assert (record.input_tokens, record.output_tokens) == (19, 10)


def test_a_raw_stream_left_part_way_is_recorded_when_dropped_not_when_collected(
    records: Records, kit: ModuleType
) -> None:
    """A ``with_raw_response`` stream read part-way through ``http_response.iter_lines()`` and
    dropped (a relay whose client went away): its response and the reading of its body held each
    other, so it was recorded, and its HTTP response freed, only when the garbage collector ran."""
    body = kit.chat_sse(5, kit.CHAT_USAGE)

    class Live(kit.http.SyncByteStream):  # a body that arrives over the wire, not read yet
        def __iter__(self) -> Any:
            for part in body.split(b"\n\n"):
                yield part + b"\n\n"

    def server(request: Any) -> Any:
        headers = {"content-type": "text/event-stream"}
        return kit.http.Response(200, stream=Live(), headers=headers)

    client = kit.mock_openai(server)
    tokenmeter.instrument("openai")
    gc.disable()
    try:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=MESSAGES, stream=True
        )
        lines = raw.http_response.iter_lines()
        next(lines), next(lines)
        del raw, lines
        assert len(records()) == 1  # the response proxy was freed (what the SDK keeps is its own)
    finally:
        gc.enable()


def test_a_raw_stream_read_in_one_line_is_recorded_from_its_body(
    records: Records, kit: ModuleType
) -> None:
    """``for line in client...with_raw_response.create(stream=True).http_response.iter_lines()``:
    the raw response is dropped as the loop begins, and was recorded then as an estimate of its
    request (8 tokens in, 0 out), not from the usage its body holds. The lines keep it alive."""
    client = kit.mock_openai(Server(kit, 3))
    tokenmeter.instrument("openai")
    create = client.chat.completions.with_raw_response.create
    for _ in create(model="gpt-4o", messages=MESSAGES, stream=True).http_response.iter_lines():
        pass
    record = only(records())
    assert not record.estimated
    assert (record.input_tokens, record.output_tokens) == (
        kit.CHAT_USAGE["prompt_tokens"],
        kit.CHAT_USAGE["completion_tokens"],
    )


@pytest.mark.parametrize("read", ["read", "text", "http_response.read"])
@pytest.mark.parametrize("bedrock", [False, True])
async def test_a_raw_stream_read_whole_in_one_line_is_recorded_from_its_body(
    fake: FakeProvider, records: Records, is_async: bool, read: str, bedrock: bool
) -> None:
    """``client.messages.with_raw_response.create(stream=True).read()``: only the SDK's bound
    ``read`` held the raw response, which went before its body was read and was recorded as an
    estimate of its request (175 input and 12 output tokens, $0.000245: 8 and 0, $0.000008)."""
    if read != "http_response.read" and importlib.util.find_spec("anthropic._legacy_response"):
        pytest.skip("this anthropic's with_raw_response gives a LegacyAPIResponse: no read()")
    if bedrock:
        client: Any = fake.anthropic_bedrock_client(async_=is_async)
        model = BEDROCK_MODEL
    else:
        client, model = fake.anthropic_client(async_=is_async), "claude-sonnet-4-5"
    tokenmeter.instrument("anthropic")
    create = client.messages.with_raw_response.create
    kwargs: dict[str, Any] = {"model": model, "max_tokens": 64, "messages": MESSAGES}
    if is_async and read == "http_response.read":
        body = await (await create(**kwargs, stream=True)).http_response.aread()
    elif is_async:
        body = await getattr(await create(**kwargs, stream=True), read)()
    elif read == "http_response.read":
        body = create(**kwargs, stream=True).http_response.read()
    else:
        body = getattr(create(**kwargs, stream=True), read)()
    assert body
    record = only(records())
    assert (record.estimated, record.status) == (False, "ok")
    assert record.output_tokens == fake.anthropic_usage.output_tokens
