"""Legacy google-generativeai (0.8.x) adapter: ``GenerativeModel.generate_content`` (+ async).

Every request of the SDK, ``ChatSession`` and its function-calling loop included, goes through
these two methods, so they are the only patches. With ``stream=True`` the SDK returns a response
that fetches as it is iterated and whose ``usage_metadata`` is the running total so far; it is
wrapped so the final total is recorded when the stream ends, is resolved, broken off or dropped.
The SDK's proto drops ``thoughts_token_count``; ``usage_from_gemini`` recovers it from the total.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import wrapt

from tokenmeter.providers._core import Call, Switches, Wrapper, safely, send, send_async
from tokenmeter.providers.google_genai import short_model
from tokenmeter.usage import Extracted
from tokenmeter.usage.google import usage_from_gemini

__all__ = ["ADAPTER", "patch_targets", "wrap_instance"]

PROVIDER = "google"
OPERATION = "generate_content"
Run = Callable[[Any, Any, tuple[Any, ...], dict[str, Any]], Any]
ADAPTER = Switches()


def _new_call(model: Any, streamed: bool) -> Call:
    name = getattr(model, "model_name", None)
    request_model = name if isinstance(name, str) else None
    call = Call(PROVIDER, request_model, OPERATION, streamed=streamed)
    call.model = short_model(request_model)  # replaced by response.model_version when given
    return call


def _read(response: Any, call: Call) -> None:
    """Works on a finished response and on a stream part-way (the joined result so far)."""
    meta = getattr(response, "usage_metadata", None)
    if meta is None:
        return
    version = getattr(response, "model_version", None)
    usage = usage_from_gemini(meta)
    call.take(Extracted(PROVIDER, usage, model=version or None, operation=OPERATION))


class _StreamResponse(wrapt.ObjectProxy[Any]):
    """The SDK's stream response (``isinstance`` holds), recorded once when it is done with."""

    def __init__(self, wrapped: Any, call: Call) -> None:
        super().__init__(wrapped)
        self._self_call = call

    def _self_settle(self, error: BaseException | None = None) -> None:
        call = self._self_call
        if not call.done:
            call.read("reading a Gemini stream", _read, self.__wrapped__, call)
            call.finish(error)

    def __del__(self) -> None:
        if getattr(self, "_self_call", None) is not None:
            self._self_settle()


class SyncStreamResponse(_StreamResponse):
    def __iter__(self) -> Iterator[Any]:
        try:
            yield from self.__wrapped__
        except GeneratorExit:  # the caller broke off: record what was reported
            self._self_settle()
            raise
        except BaseException as exc:
            self._self_settle(exc)
            raise
        self._self_settle()

    def resolve(self) -> None:
        try:
            self.__wrapped__.resolve()
        except BaseException as exc:
            self._self_settle(exc)
            raise
        self._self_settle()


class AsyncStreamResponse(_StreamResponse):
    async def __aiter__(self) -> AsyncIterator[Any]:
        try:
            async for chunk in self.__wrapped__:
                yield chunk
        except GeneratorExit:
            self._self_settle()
            raise
        except BaseException as exc:
            self._self_settle(exc)
            raise
        self._self_settle()

    async def resolve(self) -> None:
        try:
            await self.__wrapped__.resolve()
        except BaseException as exc:
            self._self_settle(exc)
            raise
        self._self_settle()


def _finish(call: Call, response: Any, is_async: bool) -> Any:
    if call.streamed:
        return (AsyncStreamResponse if is_async else SyncStreamResponse)(response, call)
    call.read("reading a Gemini response", _read, response, call)
    call.finish()
    return response


def _generate(wrapped: Any, model: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    call = _new_call(model, streamed=bool(kwargs.get("stream")))
    response = send(call, wrapped, args, kwargs)
    shown = safely("wrapping a Gemini response", _finish, call, response, False)
    return response if shown is None else shown


async def _generate_async(
    wrapped: Any, model: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    call = _new_call(model, streamed=bool(kwargs.get("stream")))
    response = await send_async(call, wrapped, args, kwargs)
    shown = safely("wrapping a Gemini response", _finish, call, response, True)
    return response if shown is None else shown


def _wrapper(run: Run, gated: bool, model: Any = None) -> Wrapper:
    """``model`` pins the instance for a per-object wrap (wrapping a bound method)."""

    def wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if ADAPTER.passes_through(gated):
            return wrapped(*args, **kwargs)
        return run(wrapped, instance if model is None else model, args, kwargs)

    return wrapper


def patch_targets() -> list[tuple[type, str, Wrapper]]:
    """(class, method, wrapper) for the installed google-generativeai SDK."""
    from google.generativeai import generative_models

    owner = generative_models.GenerativeModel
    return [
        (owner, "generate_content", _wrapper(_generate, gated=True)),
        (owner, "generate_content_async", _wrapper(_generate_async, gated=True)),
    ]


def wrap_instance(obj: Any) -> bool:
    """One ``GenerativeModel`` (and the chats started from it)."""
    try:
        from google.generativeai import generative_models
    except ImportError:  # wrap() asks every Google adapter; this SDK may not be installed
        return False
    if not isinstance(obj, generative_models.GenerativeModel):
        return False
    if obj.__dict__.get("_tokenmeter_wrapped"):
        return True
    for name, run in (("generate_content", _generate), ("generate_content_async", _generate_async)):
        wrapper = _wrapper(run, gated=False, model=obj)
        setattr(obj, name, wrapt.FunctionWrapper(getattr(obj, name), wrapper))
    obj.__dict__["_tokenmeter_wrapped"] = True
    return True
