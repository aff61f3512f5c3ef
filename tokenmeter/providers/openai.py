"""OpenAI adapter: which routes are billed, how to read them, and the include_usage request.

OpenAI-compatible servers (Groq, DeepSeek, OpenRouter, ...) use the same client; the provider is
inferred from the base URL's host so the right price table applies.
"""

from __future__ import annotations

from typing import Any

from tokenmeter._registry import provider_for_host
from tokenmeter._runtime import settings
from tokenmeter.providers._core import Call
from tokenmeter.providers._stainless import Endpoint, StainlessAdapter, keep_names
from tokenmeter.usage import from_openai_response
from tokenmeter.usage._read import ident
from tokenmeter.usage.openai import tier_from_openai, usage_from_openai

_TERMINAL_EVENTS = {"response.completed", "response.incomplete", "response.failed"}


class ChunkReader:
    """Chat and legacy completion streams: usage only on the last chunk (when asked for)."""

    __slots__ = ("hide",)

    def __init__(self, hide_usage_chunk: bool) -> None:
        self.hide = hide_usage_chunk

    def feed(self, chunk: Any, call: Call) -> bool:
        if call.model is None:
            call.model = getattr(chunk, "model", None)
            call.request_id = ident(getattr(chunk, "id", None))
        usage = getattr(chunk, "usage", None)
        if usage is None:
            return False
        # Decided first, so that a usage block we cannot read is still hidden when we asked for it.
        hidden = self.hide and not getattr(chunk, "choices", None)
        call.read("reading stream usage", _read_usage, chunk, usage, call)
        return hidden


def _read_usage(chunk: Any, usage: Any, call: Call) -> None:
    call.usage = usage_from_openai(usage)
    call.tier = tier_from_openai(getattr(chunk, "service_tier", None))


class ResponseEventReader:
    """Responses streams: usage on the terminal event (completed, incomplete or failed). A
    completed or incomplete response without usage is unreadable usage; a failed one may have
    none (nothing was generated)."""

    __slots__ = ()

    def __init__(self, hide_usage_chunk: bool = False) -> None:
        pass

    def feed(self, event: Any, call: Call) -> bool:
        kind = getattr(event, "type", None)
        if type(kind) is str and kind in _TERMINAL_EVENTS:
            response = getattr(event, "response", None)
            if kind != "response.failed" or getattr(response, "usage", None) is not None:
                try:
                    found = from_openai_response(response, call.provider)
                except Exception:
                    keep_names(call, response)
                    raise
                call.take(found)
        return False


_CHAT = Endpoint("chat.completions", from_openai_response, ChunkReader)
_COMPLETIONS = Endpoint("completions", from_openai_response, ChunkReader)
_EMBEDDINGS = Endpoint("embeddings", from_openai_response, ChunkReader)
_RESPONSES = Endpoint("responses", from_openai_response, ResponseEventReader, dedupe=True)
_NOT_BILLED = {"input_tokens", "cancel", "input_items"}


class OpenAIAdapter(StainlessAdapter):
    name = "openai"

    def __init__(self) -> None:
        super().__init__()
        self._providers: dict[int, tuple[Any, type, str]] = {}

    def endpoint(self, method: str, path: str) -> Endpoint | None:
        if method == "post":
            if path.endswith("/chat/completions"):
                return _CHAT
            if path.endswith("/embeddings"):
                return _EMBEDDINGS
            if path.endswith("/completions"):
                return _COMPLETIONS
        elif method != "get":
            return None
        parts = path.rstrip("/").split("/")
        if "responses" in parts:  # create and compact (POST), retrieve (GET); not cancel, delete
            tail = parts[parts.index("responses") + 1 :]
            if not tail or (len(tail) == 1 and tail[0] not in _NOT_BILLED):
                return _RESPONSES
        return None

    def provider_of(self, client: Any) -> str:
        # Keyed by the URL object itself (rendering it as text costs more than the rest of the
        # call planning); a client given a new base_url has a new URL object.
        url = vars(client).get("_base_url") or getattr(client, "base_url", None)
        found = self._providers.get(id(url))
        if found is None or found[0] is not url or found[1] is not type(client):
            host = getattr(url, "host", "") or ""
            found = (url, type(client), provider_for_host(host, type(client).__name__))
            if len(self._providers) >= 1024:  # apps that make a client per request
                self._providers.clear()
            self._providers[id(url)] = found
        return found[2]

    def prepare(self, options: Any, endpoint: Endpoint, streamed: bool) -> tuple[Any, bool]:
        if not (streamed and endpoint.new_reader is ChunkReader and settings().stream_usage):
            return options, False
        body = options.json_data
        stream_options = body.get("stream_options") if isinstance(body, dict) else None
        if not isinstance(body, dict) or (
            isinstance(stream_options, dict) and "include_usage" in stream_options
        ):
            return options, False  # the caller decided; never override an explicit choice
        copied = options.model_copy()
        copied.json_data = {
            **body,
            "stream_options": {**(stream_options or {}), "include_usage": True},
        }
        return copied, True

    def promises_usage(self, options: Any, endpoint: Endpoint) -> bool:
        """A chat or legacy completion stream sent with ``include_usage`` true (asked by the
        caller or by us) ends with a usage chunk; a server that ignores the option sends none."""
        if endpoint.new_reader is not ChunkReader:
            return False
        body = options.json_data
        stream_options = body.get("stream_options") if isinstance(body, dict) else None
        return isinstance(stream_options, dict) and stream_options.get("include_usage") is True


ADAPTER = OpenAIAdapter()


def patch_targets() -> list[tuple[type, str, Any]]:
    """(class, method, wrapper) for the installed openai SDK."""
    from openai import _base_client

    return [
        (_base_client.SyncAPIClient, "request", ADAPTER.sync_wrapper),
        (_base_client.AsyncAPIClient, "request", ADAPTER.async_wrapper),
    ]


def wrap_instance(client: Any) -> bool:
    from openai import _base_client

    return ADAPTER.wrap_client(client, _base_client.SyncAPIClient, _base_client.AsyncAPIClient)
