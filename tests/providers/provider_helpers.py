"""Plain helpers shared by the provider tests (fixtures live in this folder's ``conftest.py``).

Imported by name (``from provider_helpers import only``): pytest puts this folder on ``sys.path``
for its tests, and no other test folder has a module of this name, so the import is unambiguous.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import BaseModel

import tokenmeter
from tokenmeter._models import UsageRecord
from tokenmeter.sinks import InMemorySink

#: The ``records`` / ``instrumented`` fixtures: call to flush and read every record so far.
Records = Callable[[], list[UsageRecord]]
MESSAGES = [{"role": "user", "content": "hi"}]


class Answer(BaseModel):
    """A structured-output schema for the ``parse()`` helpers."""

    answer: str


def not_metered_in_docs() -> str:
    """docs/providers.md's "Not metered" list (its paragraph), its lines joined: what the docs
    tell a user makes no record."""
    page = Path(__file__).resolve().parents[2] / "docs" / "providers.md"
    text = page.read_text(encoding="utf-8")
    start = text.index("**Not metered**")
    return " ".join(text[start : text.index("\n\n", start)].split())


def flushed(sink: InMemorySink) -> list[UsageRecord]:
    """Every record written to ``sink`` so far, once the pipeline has delivered them."""
    assert tokenmeter.flush(5)
    return list(sink.records)


def only(records: list[UsageRecord]) -> UsageRecord:
    """The one record a call made (fails, listing them, if there are more or none)."""
    assert len(records) == 1, records
    return records[0]


# -- raw server answers (MockTransport replies) ---------------------------------------------------
#: A server's reply to one request: ``handler(request) -> response`` of the SDK's HTTP library.
Handler = Callable[[Any], Any]


def http_of(sdk_client_module: ModuleType) -> Any:
    """The HTTP library an SDK's client module is built on: ``httpx2`` (newest) or ``httpx``
    (same API). Asked per SDK, since each pins its own."""
    return getattr(sdk_client_module, "httpx2", None) or sdk_client_module.httpx


def json_bytes(body: Any) -> bytes:
    """``body`` as a server may put it on the wire, whatever it holds: a lone surrogate as its
    ``\\ud800`` escape, NaN, 1e300 and 2**63 as JSON spells them (no library's JSON encoder in
    between to refuse them)."""
    return json.dumps(body, ensure_ascii=True, allow_nan=True).encode()


def json_reply(http: Any, body: Any) -> Any:
    return http.Response(
        200, content=json_bytes(body), headers={"content-type": "application/json"}
    )


def sse_reply(http: Any, events: Iterable[tuple[str | None, Any]], end: bytes = b"\n\n") -> Any:
    """A server-sent event stream of ``(event name or None, data)`` pairs; bytes data is sent as
    it is (``b"[DONE]"``), anything else as JSON."""
    parts = []
    for name, data in events:
        head = f"event: {name}\n".encode() if name else b""
        payload = data if isinstance(data, bytes) else json_bytes(data)
        parts.append(head + b"data: " + payload + end)
    return http.Response(
        200, content=b"".join(parts), headers={"content-type": "text/event-stream"}
    )


def cut_reply(http: Any, head: bytes) -> Any:
    """A server-sent event stream whose connection drops after ``head`` (sync and async)."""

    class Cut(http.SyncByteStream, http.AsyncByteStream):  # type: ignore[misc]
        def __iter__(self) -> Iterator[bytes]:
            yield head
            raise http.ReadError("connection reset")

        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield head
            raise http.ReadError("connection reset")

    return http.Response(200, stream=Cut(), headers={"content-type": "text/event-stream"})


def mock_anthropic(handler: Handler, *, is_async: bool = False) -> Any:
    """An Anthropic client whose HTTP replies come from ``handler`` (no sockets, no retries)."""
    import anthropic
    from anthropic import _base_client

    http = http_of(_base_client)
    transport = http.MockTransport(handler)
    if is_async:
        return anthropic.AsyncAnthropic(
            api_key="sk-ant-test",
            base_url="http://anthropic.invalid",
            http_client=http.AsyncClient(transport=transport),
            max_retries=0,
        )
    return anthropic.Anthropic(
        api_key="sk-ant-test",
        base_url="http://anthropic.invalid",
        http_client=http.Client(transport=transport),
        max_retries=0,
    )


def mock_bedrock(handler: Handler, *, is_async: bool = False) -> Any:
    """An ``AnthropicBedrock`` client whose HTTP replies come from ``handler`` (static AWS keys,
    no sockets, no retries)."""
    import anthropic
    from anthropic import _base_client

    http = http_of(_base_client)
    transport = http.MockTransport(handler)
    keys = {"aws_access_key": "AKIDFAKE", "aws_secret_key": "fake", "aws_region": "us-east-1"}
    if is_async:
        return anthropic.AsyncAnthropicBedrock(
            **keys,
            base_url="http://bedrock.invalid",
            http_client=http.AsyncClient(transport=transport),
            max_retries=0,
        )
    return anthropic.AnthropicBedrock(
        **keys,
        base_url="http://bedrock.invalid",
        http_client=http.Client(transport=transport),
        max_retries=0,
    )


def mock_genai(handler: Handler, retry_options: Any = None) -> Any:
    """A ``google.genai.Client`` (``.aio`` for async) whose replies come from ``handler``,
    retrying as ``retry_options`` (``HttpRetryOptions``) say (none: no retries).

    Needs google-genai >= 1.46 (``HttpOptions(httpx_client=...)``)."""
    from google import genai
    from google.genai import _api_client
    from google.genai import types as gtypes

    http = http_of(_api_client)
    return genai.Client(
        vertexai=False,  # not a Vertex client because the runner sets GOOGLE_GENAI_USE_VERTEXAI
        api_key="fake-key",
        http_options=gtypes.HttpOptions(
            base_url="http://gemini.invalid",
            api_version="v1beta",
            httpx_client=http.Client(transport=http.MockTransport(handler)),
            httpx_async_client=http.AsyncClient(transport=http.MockTransport(handler)),
            retry_options=retry_options,
        ),
    )
