"""Legacy google-generativeai (0.8.x) adapter: ``GenerativeModel.generate_content`` (+ async).

Every request of the SDK, ``ChatSession`` and its function-calling loop included, goes through
these two methods, so they are the only patches. With ``stream=True`` the SDK returns a response
that fetches as it is iterated (one chunk ahead) and joins what it fetched, so its
``usage_metadata`` is the running total so far. It is wrapped in the core's stream proxies like
every other provider's stream: recorded once when it ends, is resolved (``resolve()`` drains it
through the proxy), fails, or is dropped; the running total is read then, once (a proto read
costs more than the SDK's own work on a chunk). The SDK's proto lacks the usage fields the API
added since (thoughts, tool-use prompt, counts by modality): over gRPC, the SDK's default
transport, they arrive as unknown fields and are read from there (``_dropped_fields``); over REST
they are dropped, and ``usage_from_gemini`` recovers the thoughts from the total. A response whose
proto carries no usage at all (the SDK hands back an empty message: zeros) is estimated, never a
silent zero; so is the output of a stream that ended while its running total counted the prompt
alone. Both estimates read the text the SDK fetched, from its joined response: a caller may peek
at a stream and iterate it again (the SDK replays the chunks it handed out), so the chunks that
pass by are no count of what was sent.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
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
from tokenmeter.providers._gemini import (
    PROVIDER,
    add_candidates,
    estimated_output,
    reply_text,
    short_model,
)
from tokenmeter.usage import Extracted
from tokenmeter.usage.google import billed_searches, reports_usage, usage_from_gemini

__all__ = ["ADAPTER", "patch_targets", "wrap_instance"]

OPERATION = "generate_content"
ADAPTER = Switches()


@dataclass(slots=True, eq=False)
class _StreamCall(Call):
    """A stream's call. The SDK joins every chunk it fetched (one ahead of the caller) into the
    response, whose usage is the running total so far: it is read when the call finishes,
    however the stream ended (the core's proxies decide when), and replaces the latest chunk's
    (``_TextTally``) if it reports any. With no usage at all, the output is estimated from the
    text the SDK fetched (``_TextTally.take_fetched``)."""

    response: Any = None

    def finish(self, error: BaseException | None = None) -> None:
        if not self.done and self.response is not None:
            reader = self.reader
            latest = reader.latest if isinstance(reader, _TextTally) else None
            joined = _usage_metadata(self.response)
            if latest is not None and (joined is None or not reports_usage(joined)):
                self.read("reading a Gemini stream", _read, latest, self)
            else:
                self.read("reading a Gemini stream", _read, self.response, self)
            if self.usage is None and isinstance(reader, _TextTally):
                reader.take_fetched()
        Call.finish(self, error)


def _new_call(model: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call:
    name = getattr(model, "model_name", None)
    request_model = name if isinstance(name, str) else None
    request = {
        "contents": args[0] if args else kwargs.get("contents"),
        "system_instruction": getattr(model, "_system_instruction", None),
        "tools": kwargs.get("tools") or getattr(model, "_tools", None),
        # its output cap: the call's own, else the model's (the SDK merges them so)
        "generation_config": _output_config(kwargs.get("generation_config"), model),
    }
    streamed = bool(kwargs.get("stream"))
    call = (_StreamCall if streamed else Call)(
        PROVIDER, request_model, OPERATION, streamed=streamed, expects_usage=True, request=request
    )
    call.model = short_model(request_model)  # replaced by response.model_version when given
    return call


def _output_config(given: Any, model: Any) -> dict[str, Any]:
    """The output limits a call runs with: the call's ``generation_config`` (a dict, a
    ``GenerationConfig`` or its proto) over the model's (a dict, as the SDK keeps it), merged
    key by key as the SDK merges them. Read only to cap an estimate's output."""
    merged: dict[str, Any] = {}
    for config in (getattr(model, "_generation_config", None), given):
        for key in ("max_output_tokens", "candidate_count"):
            value = config.get(key) if isinstance(config, dict) else getattr(config, key, None)
            if value:  # unset: None, or a proto's 0
                merged[key] = value
    return merged


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
        if not call.streamed:  # billed, nothing reported: estimated (its output from its text)
            call.missing = True
            call.reply = reply_text(response)
        return
    dropped = _dropped_fields(meta)
    if dropped:
        meta = {name: getattr(meta, name, None) for name in _PROTO_COUNTS} | dropped
    usage = usage_from_gemini(meta)
    if call.streamed:  # its joined response drops the grounding: read from the chunks
        reader = call.reader
        queries = reader.queries if isinstance(reader, _TextTally) else 0
    else:
        queries = _search_queries(response)
    searches = billed_searches(queries, version or call.model)
    if searches:
        usage = usage.model_copy(update={"tool_requests": {"web_search": searches}})
    call.take(Extracted(PROVIDER, usage, model=version or None, operation=OPERATION))


#: The usage fields the SDK's proto has.
_PROTO_COUNTS = (
    "prompt_token_count",
    "cached_content_token_count",
    "candidates_token_count",
    "total_token_count",
)
#: Usage fields it lacks, by their number in the API's v1beta ``UsageMetadata``: counts...
_DROPPED_COUNTS = {8: "tool_use_prompt_token_count", 10: "thoughts_token_count"}
#: ... and lists of ``ModalityTokenCount`` (modality = 1, token_count = 2).
_DROPPED_DETAILS = {
    5: "prompt_tokens_details",
    6: "cache_tokens_details",
    7: "candidates_tokens_details",
    9: "tool_use_prompt_tokens_details",
}
_MODALITIES = {1: "TEXT", 2: "IMAGE", 3: "VIDEO", 4: "AUDIO", 5: "DOCUMENT"}
#: Entries kept per details list (the reader reads no more).
_MAX_DETAILS = 100


def _dropped_fields(meta: Any) -> dict[str, Any]:
    """The usage fields the SDK's proto lacks, as the server sent them: over gRPC a message
    keeps the fields it does not know, so thoughts (which the total counts), the tool-use prompt
    (which it counts too: input, not thoughts) and the counts by modality (audio input, image
    output, each at its own rate) are read from its wire form. Empty over REST (the SDK's JSON
    parser drops them) and for a wire form that cannot be read (the proto's counts stand)."""
    try:
        data = type(meta).serialize(meta)
        found: dict[str, Any] = {}
        for number, value in _wire_fields(data):
            if number in _DROPPED_COUNTS and type(value) is int:
                found[_DROPPED_COUNTS[number]] = _int32(value)
            elif number in _DROPPED_DETAILS and type(value) is bytes:
                entries = found.setdefault(_DROPPED_DETAILS[number], [])
                if len(entries) < _MAX_DETAILS:
                    entries.append(_modality_count(value))
    except Exception:
        return {}
    return found


def _modality_count(data: bytes) -> dict[str, Any]:
    """A ``ModalityTokenCount`` (modality = 1, token_count = 2) as the API's JSON spells it."""
    entry = dict(_wire_fields(data))
    modality, count = entry.get(1), entry.get(2, 0)
    return {
        "modality": _MODALITIES.get(modality) if type(modality) is int else None,
        "token_count": _int32(count) if type(count) is int else None,
    }


def _wire_fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of a protobuf message's wire form: varints as ints, length-delimited
    fields as bytes; fixed-width ones skipped. Raises on a malformed one."""
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, kind = key >> 3, key & 7
        if kind == 0:
            value, at = _varint(data, at)
            yield number, value
        elif kind == 2:
            size, at = _varint(data, at)
            if at + size > len(data):
                raise ValueError("truncated field")
            yield number, data[at : at + size]
            at += size
        elif kind in (1, 5):
            at += 8 if kind == 1 else 4
        else:
            raise ValueError(f"wire type {kind}")


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while shift < 70:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7
    raise ValueError("varint too long")


def _int32(value: int) -> int:
    """An int32 varint as protobuf reads it: its low 32 bits, signed (a negative one is sent as
    its 64-bit two's complement). The SDK reads its own fields so: 2**31 + 5 is -2147483643, an
    unreadable count, where the whole varint was a count of two billion tokens at $5,368."""
    value &= 0xFFFF_FFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _search_queries(response: Any) -> int:
    """The Google Search queries the grounding metadata of a response's (or chunk's) candidates
    lists, read on its protobuf: a few microseconds a chunk, where the SDK's wrappers take ten
    times that. 0 when there is none, or no proto to read."""
    result: Any = getattr(response, "_result", None)
    try:
        message = type(result).pb(result)
        return sum(
            len(candidate.grounding_metadata.web_search_queries)
            for candidate in message.candidates
            if candidate.HasField("grounding_metadata")
        )
    except Exception:
        return 0


class _TextTally:
    """The stream reader: the usage is read when the call finishes (``_StreamCall``), from the
    SDK's joined response (it fetches one chunk ahead), or from the latest chunk that reported
    a running total (``latest``) when the joined response lost it (the SDK's join does when the
    last chunk carries none). If none ever comes, ``tally`` is filled then, from the joined
    response (``take_fetched``), not from the chunks that pass by: each pass over the stream
    replays the chunks already handed out. The chunks' search queries are kept too: the SDK's
    joined response drops them."""

    __slots__ = ("latest", "queries", "response", "tally")

    def __init__(self, response: Any) -> None:
        self.tally = TextTally()
        self.response = response
        self.queries = 0
        self.latest: Any = None

    def feed(self, chunk: Any, call: Call) -> bool:
        self.queries = max(self.queries, _search_queries(chunk))
        meta = _usage_metadata(chunk)
        if meta is not None and reports_usage(meta):
            self.latest = chunk  # read once, at the end
        return False

    def take_fetched(self) -> None:
        """Tally the output the SDK fetched (its joined response), each chunk once, for an
        estimate: the one read ahead and, in a stream never iterated, the one read while
        sending included, as they are in its running totals."""
        fetched = TextTally()
        # The joined proto: the SDK's own ``candidates`` refuses a stream left part-way.
        with suppress(Exception):  # what cannot be read adds nothing
            add_candidates(fetched, getattr(self.response, "_result", None))
        self.tally = fetched

    def partial(self, usage: Usage, model: str, request: Any = None) -> Usage | None:
        """The output estimated from the text the SDK fetched (joined in its response), for a
        running total that counts none: early chunks may count the prompt alone. At most the
        ``request``'s output limit (its ``generation_config``'s)."""
        if usage.output_tokens > usage.reasoning_tokens:
            return None
        fetched, thoughts = TextTally(), TextTally()
        # The joined proto: the SDK's own ``candidates`` refuses a stream left part-way.
        with suppress(Exception):  # what cannot be read leaves the reported count
            add_candidates(fetched, getattr(self.response, "_result", None), thoughts)
        return estimated_output(usage, fetched, thoughts, PROVIDER, model, request)


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
