"""Legacy google-generativeai (0.8.x) adapter: ``GenerativeModel.generate_content`` (+ async).

Every request of the SDK, ``ChatSession`` and its function-calling loop included, goes through
these two methods, so they are the only patches. With ``stream=True`` the SDK returns a response
that fetches as it is iterated (one chunk ahead) and joins what it fetched, so its
``usage_metadata`` is the running total so far. It is wrapped in the core's stream proxies like
every other provider's stream: recorded once when it ends, is resolved (``resolve()`` drains it
through the proxy), fails, or is dropped; the running total is read then, once (a proto read
costs more than the SDK's own work on a chunk). The SDK's proto drops ``thoughts_token_count``;
``usage_from_gemini`` recovers it from the total. A response whose proto carries no usage at all
(the SDK hands back an empty message: zeros) is estimated, never a silent zero; so is the output
of a stream that ended while its running total counted the prompt alone.
"""

from __future__ import annotations

import copy
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, SupportsIndex

import wrapt

from tokenmeter._estimate import TextTally
from tokenmeter._models import Usage
from tokenmeter.providers._core import (
    AsyncIterableProxy,
    Call,
    Plan,
    Switches,
    SyncIterableProxy,
    Wrapper,
    intercept,
    intercept_async,
)
from tokenmeter.providers._gemini import PROVIDER, short_model
from tokenmeter.usage import Extracted
from tokenmeter.usage.google import reports_usage, usage_from_gemini

__all__ = ["ADAPTER", "patch_targets", "wrap_instance"]

OPERATION = "generate_content"
ADAPTER = Switches()


@dataclass(slots=True, eq=False)
class _StreamCall(Call):
    """A stream's call. The SDK joins every chunk it fetched (one ahead of the caller) into the
    response, whose usage is the running total so far: it is read once, when the call finishes,
    however the stream ended (the core's proxies decide when)."""

    response: Any = None

    def finish(self, error: BaseException | None = None) -> None:
        if not self.done and self.response is not None:
            self.read("reading a Gemini stream", _read, self.response, self)
        Call.finish(self, error)


def _new_call(model: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call:
    name = getattr(model, "model_name", None)
    request_model = name if isinstance(name, str) else None
    request = {
        "contents": args[0] if args else kwargs.get("contents"),
        "system_instruction": getattr(model, "_system_instruction", None),
        "tools": kwargs.get("tools") or getattr(model, "_tools", None),
    }
    streamed = bool(kwargs.get("stream"))
    call = (_StreamCall if streamed else Call)(
        PROVIDER, request_model, OPERATION, streamed=streamed, expects_usage=True, request=request
    )
    call.model = short_model(request_model)  # replaced by response.model_version when given
    return call


def _usage_metadata(response: Any) -> Any:
    """The response's usage, None when its proto carries none: the SDK answers an unset field
    with an empty message, whose zeros are not the call's usage."""
    result = getattr(response, "_result", None)
    if result is not None:
        try:
            if "usage_metadata" not in result:
                return None
        except TypeError:  # not a proto message: read the attribute
            pass
    return getattr(response, "usage_metadata", None)


def _read(response: Any, call: Call) -> None:
    """Works on a finished response and on a stream part-way (the joined result so far)."""
    meta = _usage_metadata(response)
    version = getattr(response, "model_version", None)
    if meta is None or not reports_usage(meta):
        call.model = version or call.model
        call.missing = not call.streamed  # billed, nothing reported: estimated
        return
    usage = usage_from_gemini(meta)
    call.take(Extracted(PROVIDER, usage, model=version or None, operation=OPERATION))


class _TextTally:
    """The stream reader: the usage is read when the call finishes (``_StreamCall``); until a
    total is known, the text that passes by is tallied (estimated if none ever comes)."""

    __slots__ = ("response", "tally")

    def __init__(self, response: Any) -> None:
        self.tally = TextTally()
        self.response = response

    def feed(self, chunk: Any, call: Call) -> bool:
        if call.usage is None:
            _add_text(self.tally, chunk)
        return False

    def partial(self, usage: Usage, model: str) -> Usage | None:
        """The output estimated from the text the SDK fetched (joined in its response), for a
        running total that counts none: early chunks may count the prompt alone."""
        if usage.output_tokens:
            return None
        fetched = TextTally()
        # The joined proto: the SDK's own ``candidates`` refuses a stream left part-way.
        with suppress(Exception):  # what cannot be read leaves the reported count
            _add_text(fetched, getattr(self.response, "_result", None))
        if not fetched.chars:
            return None
        return usage.model_copy(update={"output_tokens": fetched.tokens(PROVIDER, model)})


def _add_text(tally: TextTally, response: Any) -> None:
    for candidate in getattr(response, "candidates", None) or ():
        content = getattr(candidate, "content", None)
        for part in getattr(content, "parts", None) or ():
            tally.add(getattr(part, "text", None))


class SyncStreamResponse(SyncIterableProxy):
    """The SDK's stream response (``isinstance`` holds) in the core's stream proxy."""

    def resolve(self) -> None:
        """The SDK's ``resolve()`` drains the stream by iterating it: so does this, through the
        proxy (once done, iterating replays the chunks; the record is already made)."""
        for _ in self:
            pass


class AsyncStreamResponse(AsyncIterableProxy):
    """The async twin: ``async for`` and ``await resolve()``."""

    async def resolve(self) -> None:
        async for _ in self:
            pass


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
        if isinstance(call, _StreamCall):
            # The SDK fetched the first chunk while sending: its total is known before any next().
            call.read("reading a Gemini stream", _read, result, call)
            call.response = result
            call.reader = _TextTally(result)
            proxy = AsyncStreamResponse if is_async else SyncStreamResponse
            return proxy(result, call, call.reader)
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
    for name in ("generate_content", "generate_content_async"):
        setattr(obj, name, _wrapped_method(obj, name))
    obj.__dict__["_tokenmeter_wrapped"] = True
    return True


if TYPE_CHECKING:
    _FunctionWrapper = wrapt.FunctionWrapper[..., Any]
else:  # wrapt's wrappers are not subscriptable at run time
    _FunctionWrapper = wrapt.FunctionWrapper


class _ModelMethod(_FunctionWrapper):
    """A wrapped model's method, in the model's ``__dict__``. The SDK's model can be deep-copied
    and pickled (to a process pool, say), which wrapt's wrappers refuse: the copy's methods are
    wrapped in turn, around the copy."""

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        bound: Any = self.__wrapped__
        return _wrapped_method(copy.deepcopy(bound.__self__, memo), bound.__name__)

    def __reduce_ex__(self, protocol: SupportsIndex) -> Any:
        bound: Any = self.__wrapped__
        return _wrapped_method, (bound.__self__, bound.__name__)


def _wrapped_method(model: Any, name: str) -> _ModelMethod:
    """``model``'s method ``name`` (one of the two ``wrap_instance`` meters), metered."""
    is_async = name == "generate_content_async"
    wrapper = _wrapper(is_async, gated=False, adapter=_Adapter(model))
    return _ModelMethod(getattr(model, name), wrapper)
