"""Fixtures for the provider tests: a FakeProvider, a recording sink, and both client flavours.

Most tests run the REAL openai / anthropic SDKs against `FakeProvider` on loopback; a few use a
``MockTransport`` where a reply must be exact (garbage usage, a given host, a timeout). ``http`` is
the HTTP library the installed openai SDK is built on: ``httpx2`` for the newest, ``httpx`` before.
Tests are written once as ``async def`` and parametrised over sync and async clients: ``maybe()``
awaits what the async client returns and passes the sync client's results through. The helpers
below reach tests through the ``kit`` fixture (this module itself), since test folders here are
not packages; the plain ones every test file names (``only``, ``Records``...) are imported from
``provider_helpers``.
"""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest
from openai import _base_client
from provider_helpers import Records, flushed

import tokenmeter
from tokenmeter.providers import _core
from tokenmeter.providers import openai as openai_adapter
from tokenmeter.sinks import InMemorySink
from tokenmeter.testing import FakeProvider

#: ``httpx2`` or ``httpx``: whichever the installed openai client is built on (same API).
http: Any = getattr(_base_client, "httpx2", None) or _base_client.httpx
Handler = Callable[[Any], Any]
#: Every test folder's conftest is imported as "conftest": keep a handle on this one.
_THIS = sys.modules[__name__]


@pytest.fixture(autouse=True)
def _fresh_core() -> Iterator[None]:
    """Response ids seen, servers that refused stream_options and one-time warnings are process
    state: forget them per test."""
    _core._recorded_ids.clear()
    openai_adapter.ADAPTER._refusing.clear()
    _core._warned_no_usage.clear()
    _core._warned_unreadable.clear()
    yield
    tokenmeter.uninstrument()


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider() as provider:
        yield provider


@pytest.fixture
def records(sink: InMemorySink) -> Records:
    """``records()`` flushes the pipeline and returns every record written so far."""
    return lambda: flushed(sink)


@pytest.fixture
def instrumented(records: Records) -> Records:
    """openai and anthropic patched, records captured."""
    tokenmeter.instrument(["openai", "anthropic"])
    return records


@pytest.fixture
def kit() -> ModuleType:
    """This module: ``kit.maybe``, ``kit.drain``, ``kit.mock_openai``, ``kit.chat_sse``..."""
    return _THIS


@pytest.fixture(params=["sync", "async"])
def is_async(request: pytest.FixtureRequest) -> bool:
    return bool(request.param == "async")


async def maybe(value: Any) -> Any:
    """Await what an async client returned; pass a sync client's result through."""
    return await value if inspect.isawaitable(value) else value


def chat_helpers(client: Any) -> Any:
    """The chat ``parse`` / ``stream`` helpers: under ``client.beta`` before openai 1.92."""
    completions = client.chat.completions
    return completions if hasattr(completions, "parse") else client.beta.chat.completions


async def drain(stream: Any) -> list[Any]:
    """Every item of a sync or async stream."""
    if hasattr(stream, "__aiter__"):
        return [item async for item in stream]
    return list(stream)


# -- exact replies through a MockTransport ---------------------------------------------------------
CHAT_USAGE = {
    "prompt_tokens": 19,
    "completion_tokens": 10,
    "total_tokens": 29,
    "prompt_tokens_details": {"cached_tokens": 4, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 2},
}


def chat_body(usage: Any = None, model: str = "gpt-4o-2024-08-06") -> dict[str, Any]:
    return {
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": 1730000000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello!"},
                "finish_reason": "stop",
            }
        ],
        "usage": CHAT_USAGE if usage is None else usage,
    }


def response_body(
    model: str, output: list[Any], tools: list[Any], input_tokens: int, output_tokens: int
) -> dict[str, Any]:
    """A completed Responses answer of ``model`` with these output items and echoed tools."""
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 1760000000,
        "status": "completed",
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": tools,
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        },
    }


def chat_sse(chunks: int, usage: Any = None, model: str = "gpt-4o-2024-08-06") -> bytes:
    """A chat stream of ``chunks`` text deltas, plus a usage-only chunk when ``usage`` is given."""
    base = {"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1, "model": model}
    delta = {"index": 0, "delta": {"content": "x"}, "finish_reason": None}
    parts = [{**base, "choices": [delta]} for _ in range(chunks)]
    if usage is not None:
        parts.append({**base, "choices": [], "usage": usage})
    text = "".join(f"data: {json.dumps(part)}\n\n" for part in parts)
    return (text + "data: [DONE]\n\n").encode()


def sse_response(body: bytes) -> Any:
    return http.Response(200, content=body, headers={"content-type": "text/event-stream"})


def mock_openai(
    handler: Handler, *, is_async: bool = False, base_url: str = "http://fake.local/v1", **kw: Any
) -> Any:
    """An OpenAI client whose HTTP replies come from ``handler`` (no sockets)."""
    import openai

    transport = http.MockTransport(handler)
    if is_async:
        return openai.AsyncOpenAI(
            api_key="sk-test",
            base_url=base_url,
            http_client=http.AsyncClient(transport=transport),
            **kw,
        )
    return openai.OpenAI(
        api_key="sk-test", base_url=base_url, http_client=http.Client(transport=transport), **kw
    )
