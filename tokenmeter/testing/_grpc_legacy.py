"""An in-process gRPC GenerativeService for google-generativeai's ASYNC calls.

The legacy SDK's REST transport has no async variant: ``generate_content_async`` always goes over
grpc.aio. This serves the same bodies as the REST fake (built by `_gemini`, converted to protos)
on an insecure loopback port, so async code paths run against the real SDK too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc  # type: ignore[import-untyped]
from google.ai import generativelanguage_v1beta as glm

from tokenmeter.testing import _gemini
from tokenmeter.testing._server import FakeRequest
from tokenmeter.testing._state import State

__all__ = ["LegacyGrpcServer"]

_SERVICE = "google.ai.generativelanguage.v1beta.GenerativeService"
_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

#: Logs a request and returns the injected failure ``(status, message)`` to answer with, if any.
Admit = Callable[[FakeRequest], "tuple[int, str | None] | None"]


class LegacyGrpcServer:
    def __init__(self, state: State, admit: Admit) -> None:
        self._state = state
        self._admit = admit
        types = glm.types
        handlers = {
            "GenerateContent": grpc.unary_unary_rpc_method_handler(
                self._generate,
                request_deserializer=types.GenerateContentRequest.deserialize,
                response_serializer=types.GenerateContentResponse.serialize,
            ),
            "StreamGenerateContent": grpc.unary_stream_rpc_method_handler(
                self._stream,
                request_deserializer=types.GenerateContentRequest.deserialize,
                response_serializer=types.GenerateContentResponse.serialize,
            ),
            "CountTokens": grpc.unary_unary_rpc_method_handler(
                self._count_tokens,
                request_deserializer=types.CountTokensRequest.deserialize,
                response_serializer=types.CountTokensResponse.serialize,
            ),
        }
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(_SERVICE, handlers),)
        )
        self.address = f"127.0.0.1:{self._server.add_insecure_port('127.0.0.1:0')}"
        self._server.start()
        self._pid = os.getpid()  # the process that started it: its threads serve there only

    def stop(self) -> None:
        """Stop serving, in the process that started the server. A forked child leaving ``with
        FakeProvider()`` only drops it: ``grpc.Server.stop()`` there waited for ever for the
        parent's threads and completion queues (gRPC cannot be used in a forked child), and the
        parent's server must go on serving."""
        if os.getpid() != self._pid:
            return
        self._server.stop(grace=None)

    def async_client(self) -> Any:
        """A GenerativeServiceAsyncClient on this server; create it inside the running loop."""
        from google.ai.generativelanguage_v1beta.services.generative_service.transports import (
            GenerativeServiceGrpcAsyncIOTransport,
        )

        channel = grpc.aio.insecure_channel(self.address)
        transport = GenerativeServiceGrpcAsyncIOTransport(channel=channel)
        return glm.GenerativeServiceAsyncClient(transport=transport)

    def _accept(self, method: str, request: Any, context: grpc.ServicerContext) -> tuple[str, Any]:
        body = json.loads(type(request).to_json(request))
        model = str(body.get("model", "")).removeprefix("models/")
        failure = self._admit(FakeRequest("POST", f"grpc:/{_SERVICE}/{method}", {}, body))
        if failure is not None:
            status, message = failure
            context.abort(_CODES.get(status, grpc.StatusCode.INTERNAL), message or "injected error")
        return model, body

    def _generate(self, request: Any, context: grpc.ServicerContext) -> Any:
        model, body = self._accept("GenerateContent", request, context)
        return _to_proto(_gemini.generate(body, model, self._state))

    def _stream(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        model, body = self._accept("StreamGenerateContent", request, context)
        for chunk in _gemini.stream_chunks(body, model, self._state):
            yield _to_proto(chunk)

    def _count_tokens(self, request: Any, context: grpc.ServicerContext) -> Any:
        model, _ = self._accept("CountTokens", request, context)
        return glm.types.CountTokensResponse(total_tokens=self._state.gemini_usage(model).prompt)


def _to_proto(response: dict[str, Any]) -> Any:
    return glm.types.GenerateContentResponse.from_json(
        json.dumps(response), ignore_unknown_fields=True
    )
