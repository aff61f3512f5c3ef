"""Legacy google-generativeai (0.8.x) adapter: ``GenerativeModel.generate_content`` (+ async).

Every request of the SDK, ``ChatSession`` and its function-calling loop included, goes through
these two methods, so they are the only patches. With ``stream=True`` the SDK returns a response
that fetches as it is iterated and whose ``usage_metadata`` is the running total so far; it is
wrapped so the final total is recorded when the stream ends, is resolved, broken off or dropped.
The SDK's proto drops ``thoughts_token_count``; ``usage_from_gemini`` recovers it from the total.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import wrapt

from tokenmeter.providers._core import Call, Plan, Switches, Wrapper, intercept, intercept_async
from tokenmeter.providers._gemini import PROVIDER, short_model
from tokenmeter.usage import Extracted
from tokenmeter.usage.google import usage_from_gemini

__all__ = ["ADAPTER", "patch_targets", "wrap_instance"]

OPERATION = "generate_content"
ADAPTER = Switches()


def _new_call(model: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call:
    name = getattr(model, "model_name", None)
    request_model = name if isinstance(name, str) else None
    request = {
        "contents": args[0] if args else kwargs.get("contents"),
        "system_instruction": getattr(model, "_system_instruction", None),
        "tools": kwargs.get("tools") or getattr(model, "_tools", None),
    }
    streamed = bool(kwargs.get("stream"))
    call = Call(PROVIDER, request_model, OPERATION, streamed=streamed, request=request)
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


class _Adapter:
    """The ``Adapter`` of the one interception loop for ``generate_content`` (+ async); ``model``
    pins the instance for a per-object wrap (wrapping a bound method)."""

    name = "google-generativeai"
    __slots__ = ("model",)

    def __init__(self, model: Any = None) -> None:
        self.model = model

    @property
    def active(self) -> bool:
        return ADAPTER.active

    def plan(self, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Plan:
        model = instance if self.model is None else self.model
        return Plan(_new_call(model, args, kwargs), args, kwargs)

    def deliver(self, plan: Plan, result: Any, is_async: bool) -> Any:
        call = plan.call
        if call.streamed:
            return (AsyncStreamResponse if is_async else SyncStreamResponse)(result, call)
        call.read("reading a Gemini response", _read, result, call)
        call.finish()
        return result


_CLASS_ADAPTER = _Adapter()


def _wrapper(is_async: bool, gated: bool, adapter: _Adapter = _CLASS_ADAPTER) -> Wrapper:
    if is_async:

        async def wrapper_async(
            wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            return await intercept_async(adapter, gated, wrapped, instance, args, kwargs)

        return wrapper_async

    def wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return intercept(adapter, gated, wrapped, instance, args, kwargs)

    return wrapper


def patch_targets() -> list[tuple[type, str, Wrapper]]:
    """(class, method, wrapper) for the installed google-generativeai SDK."""
    from google.generativeai import generative_models

    owner = generative_models.GenerativeModel
    return [
        (owner, "generate_content", _wrapper(is_async=False, gated=True)),
        (owner, "generate_content_async", _wrapper(is_async=True, gated=True)),
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
    adapter = _Adapter(obj)
    for name, is_async in (("generate_content", False), ("generate_content_async", True)):
        wrapper = _wrapper(is_async, gated=False, adapter=adapter)
        setattr(obj, name, wrapt.FunctionWrapper(getattr(obj, name), wrapper))
    obj.__dict__["_tokenmeter_wrapped"] = True
    return True
