"""Gemini bodies and streams: google-genai (Gemini API, Vertex) and google-generativeai (REST).

Streamed chunks carry ``usageMetadata`` as a RUNNING TOTAL (never per-chunk increments). With
``alt=sse`` (google-genai) the stream is server-sent events; without it (the legacy SDK's REST
transport) it is one JSON array written piece by piece. A request that declares function tools
and does not end with a ``functionResponse`` gets a ``functionCall`` back, so automatic function
calling makes two HTTP rounds, each billed with its own usage.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from tokenmeter.testing._content import (
    REPLY_TEXT,
    new_id,
    sample_from_schema,
    schema_reply,
    text_pieces,
)
from tokenmeter.testing._server import FakeRequest, Reply, json_reply, sse, stream_reply
from tokenmeter.testing._state import State
from tokenmeter.testing._usage import GeminiUsage

__all__ = ["error_reply", "generate", "handle", "is_gemini_path", "stream_chunks"]

_PATH = re.compile(
    r"^/v1(?:beta1?|alpha)?/(?:projects/[^/]+/locations/[^/]+/)?(?:publishers/google/)?"
    r"(?:models|tunedModels)/([^/:]+):(\w+)$"
)

_STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def is_gemini_path(path: str) -> bool:
    return _PATH.match(path) is not None


def error_reply(status: int, message: str | None = None) -> Reply:
    code = _STATUSES.get(status, "UNKNOWN")
    text = message or code.replace("_", " ").capitalize()
    return json_reply({"error": {"code": status, "message": text, "status": code}}, status)


def handle(request: FakeRequest, state: State) -> Reply | None:
    match = _PATH.match(request.path)
    if request.method != "POST" or match is None:
        return None
    model, method = match.groups()
    body = request.json
    if method == "generateContent":
        return json_reply(generate(body, model, state))
    if method == "streamGenerateContent":
        chunks = stream_chunks(body, model, state)
        if request.query.get("alt") == "sse":
            return stream_reply(sse(c, end=b"\r\n\r\n") for c in chunks)
        return stream_reply(_json_array(chunks), content_type="application/json")
    if method == "countTokens":
        return json_reply(_count_tokens(state.gemini_usage(model)))
    if method in ("embedContent", "batchEmbedContents", "predict"):
        return json_reply(_embed(method, body, state.gemini_usage(model)))
    return None


def _response(
    state: State, model: str, parts: list[dict[str, Any]], usage: dict[str, Any], finish: bool
) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
    if finish:
        candidate["finishReason"] = "STOP"
    return {
        "candidates": [candidate],
        "usageMetadata": usage,
        "modelVersion": state.response_model(model),
    }


def generate(body: dict[str, Any], model: str, state: State) -> dict[str, Any]:
    call = _function_call(body)
    parts: list[dict[str, Any]]
    if call is not None:
        usage = state.gemini_function_call or state.gemini_usage(model)
        parts = [{"functionCall": call}]
    else:
        usage = state.gemini_usage(model)
        parts = [{"text": _reply_text(body)}]
    return {**_response(state, model, parts, usage.metadata_json(), True), "responseId": new_id("")}


def stream_chunks(body: dict[str, Any], model: str, state: State) -> Iterator[dict[str, Any]]:
    """One chunk per text piece, each with the running-total usage; a function call is one."""
    response_id = new_id("")
    if _function_call(body) is not None:
        yield {**generate(body, model, state), "responseId": response_id}
        return
    usage: GeminiUsage = state.gemini_usage(model)
    text = _reply_text(body)
    pieces = text_pieces(state.stream_chunks) if text == REPLY_TEXT else [text]
    for i, piece in enumerate(pieces, start=1):
        running = usage.metadata_json(candidates=usage.candidates * i // len(pieces))
        chunk = _response(state, model, [{"text": piece}], running, i == len(pieces))
        yield {**chunk, "responseId": response_id}


def _json_array(chunks: Iterator[dict[str, Any]]) -> Iterator[bytes]:
    """The REST stream of the legacy SDK: ``[{...},\\r\\n{...}]`` sent element by element."""
    separator = b"["
    for chunk in chunks:
        yield separator + json.dumps(chunk).encode()
        separator = b",\r\n"
    yield b"]" if separator != b"[" else b"[]"


def _reply_text(body: dict[str, Any]) -> str:
    config = body.get("generationConfig") or {}
    schema = config.get("responseJsonSchema") or config.get("responseSchema")
    return schema_reply(schema) if schema else REPLY_TEXT


def _function_call(body: dict[str, Any]) -> dict[str, Any] | None:
    """The call to make when tools are declared and the last turn is not a function response."""
    declarations = [
        d for tool in body.get("tools") or [] for d in tool.get("functionDeclarations") or []
    ]
    if not declarations:
        return None
    contents = body.get("contents") or []
    last_parts = (contents[-1].get("parts") or []) if contents else []
    if any("functionResponse" in part for part in last_parts):
        return None
    first = declarations[0]
    schema = (  # google-genai sends the JSON-schema field in snake case
        first.get("parametersJsonSchema")
        or first.get("parameters_json_schema")
        or first.get("parameters")
        or {}
    )
    args = sample_from_schema(schema) if schema else {}
    return {"name": first.get("name", "function"), "args": args or {}}


def _count_tokens(usage: GeminiUsage) -> dict[str, Any]:
    counted: dict[str, Any] = {
        "totalTokens": usage.prompt,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": usage.prompt}],
    }
    if usage.cached:
        counted["cachedContentTokenCount"] = usage.cached
    return counted


def _embed(method: str, body: dict[str, Any], usage: GeminiUsage) -> dict[str, Any]:
    values = [round(0.01 * (i + 1), 4) for i in range(8)]
    if method == "embedContent":
        return {"embedding": {"values": values}, "usageMetadata": usage.embedding_json()}
    if method == "batchEmbedContents":
        count = len(body.get("requests") or [None])
        embeddings = [{"values": values} for _ in range(count)]
        return {"embeddings": embeddings, "usageMetadata": usage.embedding_json()}
    count = len(body.get("instances") or [None])  # Vertex :predict
    stats = {"token_count": usage.prompt, "truncated": False}
    predictions = [{"embeddings": {"values": values, "statistics": stats}} for _ in range(count)]
    return {"predictions": predictions, "metadata": {"billableCharacterCount": 4 * usage.prompt}}
