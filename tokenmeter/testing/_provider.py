"""`FakeProvider`: one loopback server that answers like OpenAI, Anthropic and Gemini at once.

It exists so tokenmeter's tests, examples and benchmarks drive the REAL provider SDKs (their
parsing, streaming and retry code) end to end without a network or an API key, while the usage
they report is known in advance.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Self, TypeVar, overload
from urllib.parse import urlsplit

from tokenmeter._models import short_repr
from tokenmeter.testing import _anthropic, _gemini, _openai
from tokenmeter.testing._server import FakeRequest, LoopbackServer, Reply
from tokenmeter.testing._state import State
from tokenmeter.testing._usage import AnthropicUsage, GeminiUsage, OpenAIUsage, coerce_usage

if TYPE_CHECKING:
    import anthropic
    import openai

    from tokenmeter.testing._grpc_legacy import LegacyGrpcServer

__all__ = ["FakeProvider"]

_FAKE_KEY = "fake-key-not-secret"


class _Provider(NamedTuple):
    handle: Callable[[FakeRequest, State], Reply | None]
    error_reply: Callable[[int, str | None], Reply]


_OPENAI = _Provider(_openai.handle, _openai.error_reply)
_ANTHROPIC = _Provider(_anthropic.handle, _anthropic.error_reply)
_GEMINI = _Provider(_gemini.handle, _gemini.error_reply)


def _provider_for(path: str) -> _Provider:
    if _anthropic.is_anthropic_path(path):
        return _ANTHROPIC
    if _gemini.is_gemini_path(path):
        return _GEMINI
    return _OPENAI


UsageArg = OpenAIUsage | AnthropicUsage | GeminiUsage | Mapping[str, Any]


S = TypeVar("S")
A = TypeVar("A")


def _made(
    sync_cls: type[S], async_cls: type[A], async_: bool, defaults: dict[str, Any], kwargs: Any
) -> S | A:
    """An SDK client pointed at the fake: no retries by default, the caller's arguments win."""
    options = {"max_retries": 0, **defaults, **kwargs}
    return async_cls(**options) if async_ else sync_cls(**options)


class FakeProvider:
    """A loopback HTTP server speaking the OpenAI, Anthropic and Gemini APIs with set usage.

    ``with FakeProvider(openai_usage={"prompt_tokens": 19}) as fake:`` then point an SDK at it
    (``fake.openai_client()``, ``fake.openai_base_url``, ...). Usage arguments take the usage
    dataclass or a mapping of its fields; ``models`` maps a request model to the model the
    response names (defaults resolve a few aliases, e.g. ``gpt-4o`` -> ``gpt-4o-2024-08-06``).
    ``stream_chunks`` is the number of text deltas per stream. Every request is logged in
    `requests` (method, path, query, JSON body; never headers, so never API keys).
    """

    def __init__(
        self,
        *,
        openai_usage: OpenAIUsage | Mapping[str, Any] | None = None,
        anthropic_usage: AnthropicUsage | Mapping[str, Any] | None = None,
        gemini_usage: GeminiUsage | Mapping[str, Any] | None = None,
        gemini_function_call_usage: GeminiUsage | Mapping[str, Any] | None = None,
        models: Mapping[str, str] | None = None,
        stream_chunks: int = 3,
        record_requests: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an integer from 0 to 65535, got {short_repr(port)}")
        if not isinstance(host, str) or not host:
            raise ValueError(f"host must be a non-empty string, got {short_repr(host)}")
        self._state = State()
        self.set_usage(
            openai=openai_usage,
            anthropic=anthropic_usage,
            gemini=gemini_usage,
            gemini_function_call=gemini_function_call_usage,
        )
        if models is not None and not isinstance(models, Mapping):
            raise ValueError(
                "models must be a mapping of request model to reply model, got "
                + short_repr(models)
            )
        for request_model, response_model in (models or {}).items():
            self.set_model(request_model, response_model)
        self.stream_chunks = stream_chunks
        self.record_requests = record_requests
        self._requests: list[FakeRequest] = []
        #: Injected failures: [status, message, requests left to fail] (a count may mean
        #: "always": one entry, never a list of that many).
        self._failures: deque[list[Any]] = deque()
        self._lock = threading.Lock()
        self._server = LoopbackServer(self._app, host, port)
        self._grpc: LegacyGrpcServer | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Self:
        self._server.start()
        return self

    def stop(self) -> None:
        """Stop serving and drop open keep-alive connections. Safe to call twice."""
        self._server.stop()
        if self._grpc is not None:
            self._grpc.stop()
            self._grpc = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` (raises if not started)."""
        return self._server.url

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.url

    @property
    def anthropic_vertex_base_url(self) -> str:
        return self.url + "/v1"

    @property
    def gemini_base_url(self) -> str:
        return self.url

    def environ(self) -> dict[str, str]:
        """Environment variables that point SDKs in a subprocess at this fake.

        ``NO_PROXY`` keeps what the environment has and adds the fake's loopback address: behind
        an HTTP proxy (``HTTP(S)_PROXY`` set, ``NO_PROXY`` often just ``localhost``) the SDKs
        sent every request to the proxy, which cannot reach this machine's loopback."""
        no_proxy = os.environ.get("NO_PROXY") or os.environ.get("no_proxy") or ""
        no_proxy = ",".join(filter(None, (no_proxy, urlsplit(self.url).hostname)))
        return {
            "OPENAI_BASE_URL": self.openai_base_url,
            "OPENAI_API_KEY": _FAKE_KEY,
            "ANTHROPIC_BASE_URL": self.anthropic_base_url,
            "ANTHROPIC_API_KEY": _FAKE_KEY,
            "GOOGLE_GEMINI_BASE_URL": self.gemini_base_url,
            "GEMINI_API_KEY": _FAKE_KEY,
            "NO_PROXY": no_proxy,
            "no_proxy": no_proxy,
        }

    # -- configuration ---------------------------------------------------------------------

    @property
    def openai_usage(self) -> OpenAIUsage:
        return self._state.openai

    @property
    def anthropic_usage(self) -> AnthropicUsage:
        return self._state.anthropic

    @property
    def gemini_usage(self) -> GeminiUsage:
        return self._state.gemini

    @property
    def gemini_function_call_usage(self) -> GeminiUsage:
        """Usage of a reply that asks for a function call (the first AFC round)."""
        return self._state.gemini_function_call or self._state.gemini

    def set_usage(
        self,
        *,
        openai: OpenAIUsage | Mapping[str, Any] | None = None,
        anthropic: AnthropicUsage | Mapping[str, Any] | None = None,
        gemini: GeminiUsage | Mapping[str, Any] | None = None,
        gemini_function_call: GeminiUsage | Mapping[str, Any] | None = None,
        model: str | None = None,
    ) -> None:
        """Set the usage replies report; with ``model``, only for requests naming that model
        (the Azure deployment, Vertex or Gemini URL model count as the request model)."""
        state = self._state
        new_openai = None if openai is None else coerce_usage(OpenAIUsage, openai, "openai")
        new_anthropic = (
            None if anthropic is None else coerce_usage(AnthropicUsage, anthropic, "anthropic")
        )
        new_gemini = None if gemini is None else coerce_usage(GeminiUsage, gemini, "gemini")
        new_call = (
            None
            if gemini_function_call is None
            else coerce_usage(GeminiUsage, gemini_function_call, "gemini_function_call")
        )
        if model is not None:
            if new_call is not None:
                raise ValueError("gemini_function_call: cannot be set per model")
            for provider, usage in (
                ("openai", new_openai),
                ("anthropic", new_anthropic),
                ("gemini", new_gemini),
            ):
                if usage is not None:
                    state.per_model[(provider, model)] = usage
            return
        state.openai = new_openai or state.openai
        state.anthropic = new_anthropic or state.anthropic
        state.gemini = new_gemini or state.gemini
        state.gemini_function_call = new_call or state.gemini_function_call

    def set_model(self, request_model: str, response_model: str) -> None:
        """Make replies to ``request_model`` name ``response_model`` (like a dated snapshot)."""
        for arg, value in (("request_model", request_model), ("response_model", response_model)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{arg} must be a non-empty string, got {short_repr(value)}")
        self._state.models[request_model] = response_model

    @property
    def stream_chunks(self) -> int:
        """Text deltas per streamed reply (OpenAI chat adds a role and a finish chunk)."""
        return self._state.stream_chunks

    @stream_chunks.setter
    def stream_chunks(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"stream_chunks must be a positive integer, got {short_repr(value)}")
        self._state.stream_chunks = value

    def fail_next(self, status: int = 500, count: int = 1, *, message: str | None = None) -> None:
        """Answer the next ``count`` requests with ``status`` and the provider's error body."""
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
            raise ValueError(
                f"status must be an HTTP error status (400-599), got {short_repr(status)}"
            )
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"count must be a positive integer, got {short_repr(count)}")
        if message is not None and not isinstance(message, str):
            raise ValueError(f"message must be a string, got {type(message).__name__}")
        with self._lock:
            self._failures.append([status, message, count])

    # -- request log -----------------------------------------------------------------------

    @property
    def requests(self) -> list[FakeRequest]:
        """A copy of the requests received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    # -- the app ---------------------------------------------------------------------------

    def _admit(self, request: FakeRequest) -> tuple[int, str | None] | None:
        """Log ``request``; return the injected failure it must get, if one is queued."""
        with self._lock:
            if self.record_requests:
                self._requests.append(request)
            if not self._failures:
                return None
            failure = self._failures[0]
            failure[2] -= 1
            if failure[2] == 0:
                self._failures.popleft()
            return failure[0], failure[1]

    def _app(self, request: FakeRequest) -> Reply:
        provider = _provider_for(request.path)
        failure = self._admit(request)
        if failure is not None:
            return provider.error_reply(*failure)
        reply = provider.handle(request, self._state)
        if reply is None:
            return provider.error_reply(
                404, f"FakeProvider: no route {request.method} {request.path}"
            )
        return reply

    # -- ready-made clients (SDKs imported lazily: a missing SDK breaks only its helper) ----

    @overload
    def openai_client(self, *, async_: Literal[False] = False, **kwargs: Any) -> openai.OpenAI: ...
    @overload
    def openai_client(self, *, async_: Literal[True], **kwargs: Any) -> openai.AsyncOpenAI: ...
    def openai_client(
        self, *, async_: bool = False, **kwargs: Any
    ) -> openai.OpenAI | openai.AsyncOpenAI:
        """An OpenAI client on this fake, ``max_retries=0`` unless given."""
        import openai

        defaults = {
            "api_key": _FAKE_KEY,
            "base_url": self.openai_base_url,
        }
        return _made(openai.OpenAI, openai.AsyncOpenAI, async_, defaults, kwargs)

    @overload
    def azure_openai_client(
        self, *, async_: Literal[False] = False, **kwargs: Any
    ) -> openai.AzureOpenAI: ...
    @overload
    def azure_openai_client(
        self, *, async_: Literal[True], **kwargs: Any
    ) -> openai.AsyncAzureOpenAI: ...
    def azure_openai_client(
        self, *, async_: bool = False, **kwargs: Any
    ) -> openai.AzureOpenAI | openai.AsyncAzureOpenAI:
        """An Azure OpenAI client on this fake; pass ``azure_deployment=`` to pin a deployment."""
        import openai

        defaults = {
            "api_key": _FAKE_KEY,
            "api_version": "2024-10-21",
            "azure_endpoint": self.url,
        }
        return _made(openai.AzureOpenAI, openai.AsyncAzureOpenAI, async_, defaults, kwargs)

    @overload
    def anthropic_client(
        self, *, async_: Literal[False] = False, **kwargs: Any
    ) -> anthropic.Anthropic: ...
    @overload
    def anthropic_client(
        self, *, async_: Literal[True], **kwargs: Any
    ) -> anthropic.AsyncAnthropic: ...
    def anthropic_client(
        self, *, async_: bool = False, **kwargs: Any
    ) -> anthropic.Anthropic | anthropic.AsyncAnthropic:
        """An Anthropic client on this fake, ``max_retries=0`` unless given."""
        import anthropic

        defaults = {
            "api_key": _FAKE_KEY,
            "base_url": self.anthropic_base_url,
        }
        return _made(anthropic.Anthropic, anthropic.AsyncAnthropic, async_, defaults, kwargs)

    @overload
    def anthropic_vertex_client(
        self, *, async_: Literal[False] = False, **kwargs: Any
    ) -> anthropic.AnthropicVertex: ...
    @overload
    def anthropic_vertex_client(
        self, *, async_: Literal[True], **kwargs: Any
    ) -> anthropic.AsyncAnthropicVertex: ...
    def anthropic_vertex_client(
        self, *, async_: bool = False, **kwargs: Any
    ) -> anthropic.AnthropicVertex | anthropic.AsyncAnthropicVertex:
        """An ``AnthropicVertex`` client on this fake (static token, no Google auth)."""
        import anthropic

        defaults = {
            "access_token": "ya29.fake-token",
            "region": "us-east5",
            "project_id": "fake-project",
            "base_url": self.anthropic_vertex_base_url,
        }
        return _made(
            anthropic.AnthropicVertex, anthropic.AsyncAnthropicVertex, async_, defaults, kwargs
        )

    @overload
    def anthropic_bedrock_client(
        self, *, async_: Literal[False] = False, **kwargs: Any
    ) -> anthropic.AnthropicBedrock: ...
    @overload
    def anthropic_bedrock_client(
        self, *, async_: Literal[True], **kwargs: Any
    ) -> anthropic.AsyncAnthropicBedrock: ...
    def anthropic_bedrock_client(
        self, *, async_: bool = False, **kwargs: Any
    ) -> anthropic.AnthropicBedrock | anthropic.AsyncAnthropicBedrock:
        """An ``AnthropicBedrock`` client on this fake (static AWS keys; needs boto3 installed,
        which the SDK uses to sign requests)."""
        import anthropic

        defaults = {
            "aws_access_key": "AKIDFAKEFAKEFAKE",
            "aws_secret_key": "fake-secret",
            "aws_region": "us-east-1",
            "base_url": self.url,
        }
        return _made(
            anthropic.AnthropicBedrock, anthropic.AsyncAnthropicBedrock, async_, defaults, kwargs
        )

    def genai_client(self, *, vertexai: bool = False, **kwargs: Any) -> Any:
        """A ``google.genai.Client`` on this fake (``client.aio`` for async). With
        ``vertexai=True`` it uses the Vertex paths and a static OAuth token."""
        from google import genai

        options: dict[str, Any]
        if vertexai:
            from google.oauth2.credentials import Credentials

            options = {
                "vertexai": True,
                "project": "fake-project",
                "location": "us-central1",
                "credentials": Credentials(token="ya29.fake-token"),  # type: ignore[no-untyped-call]
                "http_options": {"base_url": self.gemini_base_url},
            }
        else:
            options = {
                "vertexai": False,  # whatever GOOGLE_GENAI_USE_VERTEXAI the environment holds
                "api_key": _FAKE_KEY,
                "http_options": {"base_url": self.gemini_base_url, "api_version": "v1beta"},
            }
        options.update(kwargs)
        return genai.Client(**options)

    def configure_generativeai(self, **kwargs: Any) -> None:
        """Point the legacy ``google.generativeai`` (process-global) at this fake over REST."""
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            import google.generativeai as legacy_genai

        options: dict[str, Any] = {
            "api_key": _FAKE_KEY,
            "transport": "rest",
            "client_options": {"api_endpoint": self.gemini_base_url},
        }
        options.update(kwargs)
        legacy_genai.configure(**options)  # type: ignore[attr-defined]

    def configure_generativeai_async(self) -> None:
        """Serve the legacy SDK's ``*_async`` calls, which only exist over gRPC, from this fake.

        Call it inside the running event loop (grpc.aio channels belong to one loop), after
        `configure_generativeai`; models whose async client was already created keep theirs.
        """
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            from google.generativeai import client as legacy_client

        from tokenmeter.testing._grpc_legacy import LegacyGrpcServer

        if self._grpc is None:
            if not self._server.running:
                raise RuntimeError("FakeProvider is not running: call start() or use `with`")
            self._grpc = LegacyGrpcServer(self._state, self._admit)
        legacy_client._client_manager.clients["generative_async"] = self._grpc.async_client()
