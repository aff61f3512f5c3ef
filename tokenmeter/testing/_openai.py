"""OpenAI (and Azure OpenAI) bodies and stream events, shaped like the real API's.

Routes: chat completions, Responses (create / retrieve, JSON and SSE), embeddings, legacy
completions, under ``/v1/...`` and Azure's ``/openai/deployments/{deployment}/...``.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator
from typing import Any

from tokenmeter.testing._content import REPLY_TEXT, new_id, now, schema_reply, text_pieces
from tokenmeter.testing._server import FakeRequest, Reply, json_reply, sse, stream_reply
from tokenmeter.testing._state import State
from tokenmeter.testing._usage import OpenAIUsage

__all__ = ["error_reply", "handle"]

_ERRORS = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Forbidden."),
    404: ("invalid_request_error", "not_found", "Not found."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached. Please try again later."),
    500: ("server_error", None, "The server had an error while processing your request."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}


def error_reply(status: int, message: str | None = None) -> Reply:
    kind, code, default = _ERRORS.get(status, ("server_error", None, "Error."))
    error = {"message": message or default, "type": kind, "param": None, "code": code}
    return json_reply({"error": error}, status, {"x-request-id": new_id("req_")})


def handle(request: FakeRequest, state: State) -> Reply | None:
    path, deployment = _normalize(request.path)
    body = request.json
    if request.method == "GET" and path.startswith("/v1/responses/"):
        return _retrieve(path.removeprefix("/v1/responses/"), request, state)
    if request.method != "POST":
        return None
    model = deployment or body.get("model")
    if path in _POST_ROUTES and not isinstance(model, str):
        return error_reply(400, "you must provide a model parameter")
    route = _POST_ROUTES.get(path)
    return route(body, str(model), state) if route else None


def _normalize(path: str) -> tuple[str, str | None]:
    """Map Azure paths onto the OpenAI ones; returns (path, Azure deployment or None)."""
    if path.startswith("/openai/deployments/"):
        deployment, _, rest = path.removeprefix("/openai/deployments/").partition("/")
        return "/v1/" + rest, deployment
    if path.startswith("/openai/"):
        return "/v1/" + path.removeprefix("/openai/").removeprefix("v1/"), None
    return path, None


def _headers() -> dict[str, str]:
    return {"x-request-id": new_id("req_"), "openai-processing-ms": "1"}


# -- chat completions ------------------------------------------------------------------------


def _chat(body: dict[str, Any], model: str, state: State) -> Reply:
    usage = state.openai_usage(model)
    base = {
        "id": new_id("chatcmpl-"),
        "created": now(),
        "model": state.response_model(model),
        "service_tier": body.get("service_tier") or "default",
        "system_fingerprint": "fp_fake",
    }
    if body.get("stream"):
        return stream_reply(_chat_stream(base, usage, _include_usage(body), state.stream_chunks))
    message: dict[str, Any] = {
        "role": "assistant",
        "content": _chat_text(body),
        "refusal": None,
        "annotations": [],
    }
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
    completion = {**base, "object": "chat.completion", "choices": [choice]}
    completion["usage"] = usage.chat_json()
    return json_reply(completion, headers=_headers())


def _chat_text(body: dict[str, Any]) -> str:
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        return schema_reply((fmt.get("json_schema") or {}).get("schema"))
    if fmt.get("type") == "json_object":
        return '{"answer": "fake"}'
    return REPLY_TEXT


def _include_usage(body: dict[str, Any]) -> bool:
    return bool((body.get("stream_options") or {}).get("include_usage"))


def _chat_stream(
    base: dict[str, Any], usage: OpenAIUsage, include_usage: bool, pieces: int
) -> Iterator[bytes]:
    """Role chunk, one chunk per piece, finish chunk, then (opt-in) the usage-only chunk."""
    base = {**base, "object": "chat.completion.chunk"}
    if include_usage:
        base["usage"] = None

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return sse({**base, "choices": [choice]})

    yield chunk({"role": "assistant", "content": "", "refusal": None})
    for piece in text_pieces(pieces):
        yield chunk({"content": piece})
    yield chunk({}, "stop")
    if include_usage:
        yield sse({**base, "choices": [], "usage": usage.chat_json()})
    yield sse("[DONE]")


# -- legacy completions ----------------------------------------------------------------------


def _legacy(body: dict[str, Any], model: str, state: State) -> Reply:
    usage = state.openai_usage(model)
    base = {
        "id": new_id("cmpl-"),
        "object": "text_completion",
        "created": now(),
        "model": state.response_model(model),
    }
    if body.get("stream"):
        return stream_reply(_legacy_stream(base, usage, _include_usage(body), state.stream_chunks))
    choice = {"text": " " + REPLY_TEXT, "index": 0, "logprobs": None, "finish_reason": "stop"}
    return json_reply({**base, "choices": [choice], "usage": usage.chat_json()}, headers=_headers())


def _legacy_stream(
    base: dict[str, Any], usage: OpenAIUsage, include_usage: bool, pieces: int
) -> Iterator[bytes]:
    if include_usage:
        base = {**base, "usage": None}
    texts = text_pieces(pieces)
    for i, text in enumerate(texts):
        finish = "stop" if i == len(texts) - 1 else None
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
        yield sse({**base, "choices": [choice]})
    if include_usage:
        yield sse({**base, "choices": [], "usage": usage.chat_json()})
    yield sse("[DONE]")


# -- embeddings ------------------------------------------------------------------------------


def _embeddings(body: dict[str, Any], model: str, state: State) -> Reply:
    raw = body.get("input")
    count = len(raw) if isinstance(raw, list) and raw and not isinstance(raw[0], int) else 1
    dims = int(body.get("dimensions") or 8)
    vector = [round(0.01 * (i + 1), 4) for i in range(dims)]
    encoded: list[float] | str = vector
    if body.get("encoding_format", "float") == "base64":
        encoded = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
    data = [{"object": "embedding", "index": i, "embedding": encoded} for i in range(count)]
    payload = {
        "object": "list",
        "data": data,
        "model": state.response_model(model),
        "usage": state.openai_usage(model).embeddings_json(),
    }
    return json_reply(payload, headers=_headers())


# -- Responses API ---------------------------------------------------------------------------


def _responses(body: dict[str, Any], model: str, state: State) -> Reply:
    text = _responses_text(body)
    response_id = new_id("resp_")
    final = _response(response_id, state.response_model(model), body, text, "completed")
    final["usage"] = state.openai_usage(model).responses_json()
    state.remember_response(final)
    if body.get("stream"):
        return stream_reply(_response_events(final, state.stream_chunks))
    if body.get("background"):
        return json_reply({**final, "status": "queued", "output": [], "usage": None}, 200)
    return json_reply(final, headers=_headers())


def _retrieve(response_id: str, request: FakeRequest, state: State) -> Reply:
    final = state.responses.get(response_id)
    if final is None:
        return error_reply(404, f"No response found with id '{response_id}'.")
    if request.query.get("stream") == "true":
        after = int(request.query.get("starting_after") or -1)
        return stream_reply(_response_events(final, state.stream_chunks, after))
    return json_reply(final, headers=_headers())


def _responses_text(body: dict[str, Any]) -> str:
    fmt = (body.get("text") or {}).get("format") or {}
    return schema_reply(fmt.get("schema")) if fmt.get("type") == "json_schema" else REPLY_TEXT


def _response(
    response_id: str, model: str, body: dict[str, Any], text: str, status: str
) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "response",
        "created_at": now(),
        "status": status,
        "background": bool(body.get("background")),
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "model": model,
        "output": [_message_item(response_id, text, status)] if status == "completed" else [],
        "parallel_tool_calls": True,
        "previous_response_id": body.get("previous_response_id"),
        "service_tier": body.get("service_tier") or "default",
        "store": body.get("store", True),
        "temperature": 1.0,
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": None,
        "metadata": {},
    }


def _message_item(response_id: str, text: str, status: str) -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {
        "type": "message",
        "id": "msg_" + response_id.removeprefix("resp_"),
        "status": status,
        "role": "assistant",
        "content": [part] if text else [],
    }


def _response_events(final: dict[str, Any], pieces: int, after: int = -1) -> Iterator[bytes]:
    """created, in_progress, item/part added, text deltas, done events, response.completed."""
    text = final["output"][0]["content"][0]["text"]
    deltas = text_pieces(pieces) if text == REPLY_TEXT else [text]
    text = "".join(deltas)
    item_id = final["output"][0]["id"]
    pending = {**final, "status": "in_progress", "output": [], "usage": None}
    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    item = _message_item(final["id"], text, "completed")
    events: list[tuple[str, dict[str, Any]]] = [
        ("response.created", {"response": pending}),
        ("response.in_progress", {"response": pending}),
        (
            "response.output_item.added",
            {"output_index": 0, "item": {**item, "status": "in_progress", "content": []}},
        ),
        ("response.content_part.added", {**where, "part": {**part, "text": ""}}),
    ]
    events += [
        ("response.output_text.delta", {**where, "delta": d, "logprobs": []}) for d in deltas
    ]
    events += [
        ("response.output_text.done", {**where, "text": text, "logprobs": []}),
        ("response.content_part.done", {**where, "part": part}),
        ("response.output_item.done", {"output_index": 0, "item": item}),
        ("response.completed", {"response": {**final, "output": [item]}}),
    ]
    for seq, (kind, data) in enumerate(events):
        if seq > after:
            yield sse({"type": kind, "sequence_number": seq, **data}, event=kind)


_POST_ROUTES = {
    "/v1/chat/completions": _chat,
    "/v1/completions": _legacy,
    "/v1/embeddings": _embeddings,
    "/v1/responses": _responses,
}
