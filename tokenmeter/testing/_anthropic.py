"""Anthropic Messages bodies and SSE events: first-party (``/v1/messages``), Vertex and Bedrock
paths. Bedrock streams the same events inside AWS event-stream frames.

Streams follow the real event order; ``message_start`` carries the input/cache counts with
``output_tokens: 1`` and the final ``message_delta`` carries CUMULATIVE totals, which is exactly
what instrumentation gets wrong when it sums instead of overwriting.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import zlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

from tokenmeter.testing._content import REPLY_TEXT, new_id, schema_reply, text_pieces
from tokenmeter.testing._server import FakeRequest, Reply, json_reply, sse, stream_reply
from tokenmeter.testing._state import State
from tokenmeter.testing._usage import AnthropicUsage

__all__ = ["error_reply", "handle", "is_anthropic_path"]

_VERTEX = re.compile(
    r"^/v1/projects/[^/]+/locations/[^/]+/publishers/anthropic/models/([^/:]+):(\w+)$"
)
_BEDROCK = re.compile(r"^/model/([^/]+)/(invoke|invoke-with-response-stream)$")

_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def is_anthropic_path(path: str) -> bool:
    return (
        path.startswith("/v1/messages")
        or "/publishers/anthropic/" in path
        or _BEDROCK.match(path) is not None
    )


def error_reply(status: int, message: str | None = None) -> Reply:
    kind = _ERRORS.get(status, "api_error")
    request_id = new_id("req_")
    error = {"type": kind, "message": message or kind.replace("_", " ").capitalize()}
    body = {"type": "error", "error": error, "request_id": request_id}
    return json_reply(body, status, {"request-id": request_id})


def handle(request: FakeRequest, state: State) -> Reply | None:
    if request.method != "POST":
        return None
    body = request.json
    if request.path == "/v1/messages/count_tokens":
        return _count_tokens(str(body.get("model")), state)
    if request.path == "/v1/messages":
        if not isinstance(body.get("model"), str):
            return error_reply(400, "model: Field required")
        return _messages(body, body["model"], state, stream=bool(body.get("stream")))
    bedrock = _BEDROCK.match(request.path)
    if bedrock is not None:
        model, action = unquote(bedrock.group(1)), bedrock.group(2)
        if action == "invoke":
            return _messages(body, model, state, stream=False)
        return _messages(body, model, state, stream=True, framing=_bedrock_frame)
    match = _VERTEX.match(request.path)
    if match is None:
        return None
    model, method = match.groups()
    if model == "count-tokens":
        return _count_tokens(str(body.get("model")), state)
    if method == "streamRawPredict":
        return _messages(body, model, state, stream=True)
    if method == "rawPredict":
        return _messages(body, model, state, stream=bool(body.get("stream")))
    return None


def _count_tokens(model: str, state: State) -> Reply:
    return json_reply({"input_tokens": state.anthropic_usage(model).input_tokens})


def _messages(
    body: dict[str, Any], model: str, state: State, *, stream: bool, framing: Any = None
) -> Reply:
    usage = state.anthropic_usage(model)
    message = {
        "id": new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": state.response_model(model),
        "content": [{"type": "text", "text": _reply_text(body)}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage.message_json(),
    }
    if stream:
        events = _events(message, usage, state.stream_chunks)
        if framing is not None:
            return stream_reply(map(framing, events), "application/vnd.amazon.eventstream")
        return stream_reply(events)
    return json_reply(message, headers={"request-id": new_id("req_")})


def _reply_text(body: dict[str, Any]) -> str:
    fmt = (body.get("output_config") or {}).get("format") or body.get("output_format") or {}
    return schema_reply(fmt.get("schema")) if fmt.get("type") == "json_schema" else REPLY_TEXT


def _events(message: dict[str, Any], usage: AnthropicUsage, pieces: int) -> Iterator[bytes]:
    text = message["content"][0]["text"]
    deltas = text_pieces(pieces) if text == REPLY_TEXT else [text]
    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "usage": usage.message_json(output_tokens=1),
    }
    yield sse({"type": "message_start", "message": start}, "message_start")
    block = {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    yield sse(block, "content_block_start")
    yield sse({"type": "ping"}, "ping")
    for piece in deltas:
        delta = {"type": "content_block_delta", "index": 0}
        yield sse({**delta, "delta": {"type": "text_delta", "text": piece}}, "content_block_delta")
    yield sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
    final = {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": usage.delta_json(),
    }
    yield sse(final, "message_delta")
    yield sse({"type": "message_stop"}, "message_stop")


def _bedrock_frame(event: bytes) -> bytes:
    """One SSE event as Bedrock sends it: an AWS event-stream message (prelude, headers, payload,
    CRC32s) whose JSON payload carries the event's JSON in base64."""
    data = event.split(b"data: ", 1)[1].strip()
    payload = json.dumps({"bytes": base64.b64encode(data).decode()}).encode()
    headers = b"".join(
        struct.pack(">B", len(name)) + name + struct.pack(">BH", 7, len(value)) + value
        for name, value in (
            (b":event-type", b"chunk"),
            (b":content-type", b"application/json"),
            (b":message-type", b"event"),
        )
    )
    prelude = struct.pack(">II", 16 + len(headers) + len(payload), len(headers))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + headers + payload
    return message + struct.pack(">I", zlib.crc32(message))
