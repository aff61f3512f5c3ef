"""google-genai adapter: meter every HTTP round of ``client.models`` (sync and ``client.aio``).

``Models.generate_content`` loops over ``Models._generate_content`` for automatic function
calling and continuation hops, but hands back only the LAST response's usage. So the private
per-request methods are patched: each billed round becomes one record. Older SDKs without them
fall back to the public methods. Chats call ``Models``, so they are covered without a patch of
their own. Stream chunks carry usage as a running total: the latest chunk wins, never a sum.
The public stream methods are patched as well: their rounds are sent lazily, once the stream is
read, maybe after the caller's session ended or in another task, yet they are the caller's calls
(``_Caller``); an async stream's rounds are recorded when the caller closes it (``_OuterStream``).
Those rounds are intercepted by the stream's own copy of its models (``_through_own_rounds``),
not by the class patch, which ``uninstrument()`` may have taken away before the stream is read.
"""

from __future__ import annotations

import contextlib
import copy
import json
import types
from collections.abc import Awaitable, Iterator
from contextvars import Context, ContextVar, copy_context
from dataclasses import dataclass, field
from typing import Any

import wrapt

from tokenmeter._estimate import TextTally
from tokenmeter._models import Usage
from tokenmeter._sessions import Session, session_of_record
from tokenmeter.providers._core import (
    AsyncStreamProxy,
    Call,
    ObjectProxy,
    Patch,
    Plan,
    SDKObjectProxy,
    Switches,
    SyncGeneratorProxy,
    Wrapper,
    intercept,
    intercept_async,
    named_model,
)
from tokenmeter.providers._gemini import (
    PROVIDER,
    add_output,
    estimated_output,
    reply_text,
    short_model,
)
from tokenmeter.usage import Extracted, from_gemini_response
from tokenmeter.usage._read import getter, ident, priced_tier
from tokenmeter.usage.google import (
    billed_searches,
    reports_usage,
    search_queries,
    usage_from_gemini,
)

__all__ = ["ADAPTER", "ChunkReader", "patch_targets", "short_model", "wrap_instance"]

ADAPTER = Switches()


def _new_call(kwargs: dict[str, Any], operation: str, streamed: bool) -> Call:
    model = kwargs.get("model")
    request_model = model if isinstance(model, str) else None
    # generate_content always reports usage_metadata (every chunk of a stream carries the
    # running total); embeddings of older SDKs or of Vertex may not.
    generates = operation == "generate_content"
    caller = _caller.get() if streamed else None
    call = Call(
        PROVIDER,
        request_model,
        operation,
        streamed=streamed,
        expects_usage=generates,
        request=kwargs,
        session=None if caller is None else caller.session,
        session_name=False if caller is None else caller.session_name,
        context=None if caller is None else caller.context.copy(),
    )
    call.model = short_model(request_model)  # replaced by response.model_version when given
    call.tier = _requested_tier(kwargs.get("config"))  # replaced by a reported trafficType
    return call


def _requested_tier(config: Any) -> str | None:
    """The service tier a request asks for (``config.service_tier``, sent as ``serviceTier``):
    the Gemini API reports none in its answer (Vertex reports ``trafficType``), so a flex or
    priority call is priced at the tier it asked for. A config the SDK will refuse has none."""
    try:
        return priced_tier(getter(config, camel=True, what="config")("service_tier"))
    except Exception:
        return None


def _counts_no_output(meta: Any) -> bool:
    """A usage block that gives neither an output count nor a total to tell one by: an output
    count that is there (0 included, or told by the total) is the provider's, as for OpenAI."""
    try:
        get = getter(meta, camel=True)
        return get("candidates_token_count") is None and get("total_token_count") is None
    except Exception:  # unreadable: read as it was, by the usage reader
        return False


def _read_response(response: Any, call: Call) -> None:
    meta = getattr(response, "usage_metadata", None)
    if meta is None:
        body = _raw_body(response)
        if body is not None:
            response, meta = body, body.get("usageMetadata")
    if meta is not None and reports_usage(meta):
        _take_usage(response, call)
        usage = call.usage
        if (
            call.expects_usage
            and usage is not None
            and usage.output_tokens <= usage.reasoning_tokens
            and _counts_no_output(meta)
        ):
            # Counts the prompt alone (a compatible server's {"promptTokenCount": 100}): the
            # output is estimated from the reply's text, as the same answer streamed is.
            call.reply = reply_text(response)
        return
    if not call.expects_usage:
        # Vertex :predict embeddings report tokens per embedding instead of usage_metadata.
        embeddings = getattr(response, "embeddings", None) or []
        stats = [getattr(e, "statistics", None) for e in embeddings]
        counts = [getattr(s, "token_count", None) for s in stats]
        if counts and all(isinstance(c, int | float) for c in counts):
            usage = usage_from_gemini({"prompt_token_count": sum(int(c or 0) for c in counts)})
            call.take(Extracted(provider=PROVIDER, usage=usage, operation=call.operation))
            return
    # Billed, and nothing reported (an embedding answer whose usage an older SDK drops, or a
    # usage_metadata without a count): estimated from the request and the text of the reply,
    # never lost or a silent 0.
    _names(response, call)
    call.missing = True
    call.reply = reply_text(response)


#: Largest raw body read for its usage (Gemini answers are far smaller, images inline included).
_MAX_RAW_BODY = 16 * 1024 * 1024


def _raw_body(response: Any) -> dict[str, Any] | None:
    """The JSON body of an answer the SDK handed back unparsed (``should_return_http_response``:
    its response holds only ``sdk_http_response``), None if there is none that can be read."""
    body = getattr(getattr(response, "sdk_http_response", None), "body", None)
    if type(body) is not str or not body or len(body) > _MAX_RAW_BODY:
        return None
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return parsed if type(parsed) is dict else None


def _take_usage(response: Any, call: Call) -> None:
    """Read a response's or chunk's usage into ``call``; when it cannot be read, the call still
    gets the served model and the response id before the error goes on to ``Call.read``."""
    try:
        found = from_gemini_response(response, PROVIDER)
    except Exception:
        _names(response, call)
        raise
    requested = call.tier
    call.take(found)
    if requested is not None and found.tier is None and _reports_traffic(response):
        call.tier = None  # Vertex served it on demand (standard), whatever was asked


def _reports_traffic(response: Any) -> bool:
    meta = getter(response, camel=True, what="response")("usage_metadata")
    return getter(meta, camel=True, what="usage_metadata")("traffic_type") is not None


def _names(response: Any, call: Call) -> None:
    """The served model and the response id, for the record of a response whose usage cannot
    be read."""
    call.model = getattr(response, "model_version", None) or call.model
    call.request_id = ident(getattr(response, "response_id", None)) or call.request_id


class ChunkReader:
    """Each chunk's ``usage_metadata`` is the running total of its request: keep the latest.
    The output that passes by (text, function calls, code) is tallied: estimated if no total
    ever comes, or if the stream ends while the total counts no output yet (early chunks may
    report the prompt alone).

    Search grounding is kept apart, the most any chunk listed: it may come on an earlier chunk
    than the last total (image models send it with their first part), which lists none."""

    __slots__ = ("queries", "tally", "thoughts")

    def __init__(self) -> None:
        self.tally = TextTally()
        self.thoughts = TextTally()  # thought summaries (``include_thoughts``)
        self.queries = 0

    def feed(self, chunk: Any, call: Call) -> bool:
        call.reader = self  # the stream has started (see ``_Method.deliver``)
        candidates = getattr(chunk, "candidates", None)
        for candidate in candidates or ():
            content = getattr(candidate, "content", None)
            for part in getattr(content, "parts", None) or ():
                add_output(self.thoughts if getattr(part, "thought", None) else self.tally, part)
        meta = getattr(chunk, "usage_metadata", None)
        if meta is not None and reports_usage(meta):
            _take_usage(chunk, call)
        elif call.request_id is None:  # named even if no chunk ever reports usage
            _names(chunk, call)
        self.queries = max(self.queries, search_queries(candidates))
        if self.queries and call.usage is not None:
            searches = billed_searches(self.queries, named_model(call.model) or call.request_model)
            if call.usage.tool_requests.get("web_search", 0) < searches:
                tools = {**call.usage.tool_requests, "web_search": searches}
                call.usage = call.usage.model_copy(update={"tool_requests": tools})
        return False

    def partial(self, usage: Usage, model: str, request: Any = None) -> Usage | None:
        """The output estimated from the text that streamed by, for a running total that counts
        none (None when it counts some: the provider's own count, then), at most the
        ``request``'s output limit."""
        return estimated_output(usage, self.tally, self.thoughts, PROVIDER, model, request)


# -- the adapter: one per patched method (its operation, and whether it streams) -----------------
class _Method:
    """An ``Adapter`` of the one interception loop for one ``Models`` method. A stream method
    (sync: a generator function, nothing sent until the first ``next()``; async: sends when
    awaited, returns an async generator) hands back a stream that is read as it is consumed."""

    name = "google-genai"
    __slots__ = ("operation", "streamed")

    def __init__(self, operation: str, streamed: bool) -> None:
        self.operation = operation
        self.streamed = streamed

    @property
    def active(self) -> bool:
        return ADAPTER.active

    def plan(self, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Plan:
        return Plan(_new_call(kwargs, self.operation, self.streamed), args, kwargs)

    def deliver(self, plan: Plan, result: Any, is_async: bool) -> Any:
        call = plan.call
        if self.streamed:
            reader = ChunkReader()
            if is_async:  # sent when awaited: its stream has started
                call.reader = reader
            # A sync stream is a generator that sends its request at its first next(): its
            # reader is the call's once a chunk came (``ChunkReader.feed``), so that a failure
            # before (a connection refused: nothing sent) is not estimated as a billed stream;
            # one on the 200 answer's first event is (``Call._answered_stream``).
            caller = _caller.get()
            if is_async and caller is not None:
                caller.rounds.append(call)
            proxy = AsyncStreamProxy if is_async else SyncGeneratorProxy
            return proxy(result, call, reader)
        call.read("reading a Gemini response", _read_response, result, call)
        call.finish()
        return result


@dataclass(slots=True, eq=False)
class _Caller:
    """Where the public stream method was called. The SDK sends each round of its stream once
    the stream is read (a sync stream at its first ``next()``), which may be after the caller's
    session ended (a web handler returning a streaming response over it) or in another task: the
    rounds are still the caller's calls, in its session (its budget checks them) and context.
    ``rounds``: an async stream's, recorded when the caller closes it (``_OuterStream``)."""

    session: Session
    context: Context
    rounds: list[Call] = field(default_factory=list)
    #: The session's name then: the rounds' records keep it, however it is renamed after.
    session_name: str | None = None

    @classmethod
    def here(cls) -> _Caller:
        """The caller of a stream called now: a chat's stream calls the models' one when read,
        its caller is the chat stream's."""
        if (caller := _caller.get()) is not None:
            return caller
        session = session_of_record()
        return cls(session, copy_context(), session_name=session.name)


#: The caller of the public stream whose next chunk is being fetched.
_caller: ContextVar[_Caller | None] = ContextVar("tokenmeter_genai_caller", default=None)


class _SyncOuterStream(SDKObjectProxy):
    """The generator ``Models.generate_content_stream`` hands back: each ``next()`` runs with its
    caller known, as the rounds it sends are made there (``_Caller``)."""

    def __init__(self, wrapped: Any, caller: _Caller) -> None:
        super().__init__(wrapped)
        self._self_caller = caller

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        token = _caller.set(self._self_caller)
        try:
            return next(self.__wrapped__)
        finally:
            _caller.reset(token)

    def send(self, value: Any) -> Any:
        token = _caller.set(self._self_caller)
        try:
            return self.__wrapped__.send(value)
        finally:
            _caller.reset(token)


class _OuterStream(SDKObjectProxy):
    """The async generator ``AsyncModels.generate_content_stream`` hands back, over the
    per-round streams we read. Closed (``aclose()``) or dropped early, it leaves those to the
    event loop's async generator finaliser, which closes them some loop iterations later (at
    loop shutdown if nothing else runs): its rounds are recorded when it is closed or dropped
    instead, as a sync stream's are."""

    def __init__(self, wrapped: Any, caller: _Caller) -> None:
        super().__init__(wrapped)
        self._self_caller = caller

    def __aiter__(self) -> _OuterStream:
        return self

    async def __anext__(self) -> Any:
        token = _caller.set(self._self_caller)
        try:
            return await self.__wrapped__.__anext__()
        finally:
            with contextlib.suppress(ValueError):  # closed by the collector (see send_async)
                _caller.reset(token)

    async def aclose(self) -> None:
        try:
            await self.__wrapped__.aclose()
        finally:
            self._self_finish()

    def _self_finish(self) -> None:
        for call in self._self_caller.rounds:
            call.finish()

    def __del__(self) -> None:
        caller = getattr(self, "_self_caller", None)
        if caller is not None and caller.rounds:
            self._self_finish()


def _outer_wrapper(is_async: bool, gated: bool) -> Wrapper:
    """The public stream method: its caller is taken where it is called (``_Caller``)."""

    def wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if gated and not ADAPTER.active:
            return wrapped(*args, **kwargs)
        caller = _Caller.here()
        token = _caller.set(caller)
        try:
            send = _through_own_rounds(wrapped, instance, is_async) if gated else wrapped
            made = send(*args, **kwargs)
        finally:
            _caller.reset(token)
        return _outer_async(made, caller) if is_async else _SyncOuterStream(made, caller)

    return wrapper


def _through_own_rounds(wrapped: Any, instance: Any, is_async: bool) -> Any:
    """A class patch's stream method (``instrument()``) bound to an object whose per-round
    method is ours, not the class's. The SDK sends a stream's rounds only once it is read, maybe
    after ``uninstrument()`` (the end of a ``with instrument():`` block) gave the class its own
    method back: the call, made while metered, was sent and billed with no record. A Models
    object is copied with its round method wrapped (``_with_own_rounds``); a chat is seen
    through a proxy whose models are that copy (``_ChatOverModels``)."""
    if _rebound(wrapped, instance) is None:  # not a method: sent as it is
        return wrapped
    own = _with_own_rounds(instance, is_async)
    if own is not None:
        return _rebound(wrapped, own)
    own = _with_own_rounds(getattr(instance, "_modules", None), is_async)
    if own is None:
        return wrapped
    return _rebound(wrapped, _ChatOverModels(instance, own))


def _rebound(method: Any, obj: Any) -> Any:
    """``method`` (bound to its instance) bound to ``obj`` instead, through whatever another
    library wrapped it in (a tracer's wrapt wrapper keeps its descriptor as ``_self_parent``;
    its ``__func__`` is the SDK's own function, which would skip the tracer). None for what is
    no method."""
    parent = getattr(method, "_self_parent", None)
    if parent is not None and hasattr(parent, "__get__"):
        return parent.__get__(obj, type(obj))
    function = getattr(method, "__func__", None)
    return None if function is None else types.MethodType(function, obj)


def _with_own_rounds(models_obj: Any, is_async: bool) -> Any:
    """``models_obj`` when its round method is already its own (``wrap()``), else a copy of it
    (it holds only its API client) whose round method is ours, bound to the copy; None if it
    is no Models object."""
    from google.genai import models

    if not isinstance(models_obj, models.Models | models.AsyncModels):
        return None
    private, public, adapter = _STREAM_ROUND
    name = private if hasattr(models_obj, private) else public
    if name in vars(models_obj):
        return models_obj
    made = copy.copy(models_obj)
    round_method = wrapt.FunctionWrapper(getattr(made, name), _wrapper(adapter, is_async, False))
    setattr(made, name, round_method)
    return made


class _ChatOverModels(ObjectProxy):
    """A chat as its stream made while metered sees it: its models are the given ones (whose
    rounds are ours); everything else is the chat's own (the history the stream writes goes to
    the chat)."""

    def __init__(self, chat: Any, models_obj: Any) -> None:
        super().__init__(chat)
        self._self_models = models_obj

    @property
    def _modules(self) -> Any:
        return self._self_models


async def _outer_async(made: Awaitable[Any], caller: _Caller) -> _OuterStream:
    token = _caller.set(caller)  # older SDKs send the first round before they return
    try:
        stream = await made
    finally:
        with contextlib.suppress(ValueError):  # closed by the collector (see send_async)
            _caller.reset(token)
    return _OuterStream(stream, caller)


def _wrapper(adapter: _Method, is_async: bool, gated: bool) -> Wrapper:
    """Nested calls (a wrapped client under instrument()) pass straight through the guard."""
    if is_async:

        async def wrapper_async(
            wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            return await intercept_async(adapter, gated, wrapped, instance, args, kwargs)

        return wrapper_async

    def wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return intercept(adapter, gated, wrapped, instance, args, kwargs)

    return wrapper


#: (private per-request method, public fallback, its adapter)
_STREAM_ROUND = (
    "_generate_content_stream",
    "generate_content_stream",
    _Method("generate_content", True),
)
_METHODS: tuple[tuple[str, str, _Method], ...] = (
    ("_generate_content", "generate_content", _Method("generate_content", False)),
    _STREAM_ROUND,
    ("_embed_content", "embed_content", _Method("embed_content", False)),
)


def _targets(owner: type, is_async: bool, gated: bool) -> list[tuple[str, Wrapper]]:
    found: list[tuple[str, Wrapper]] = []
    for private, public, adapter in _METHODS:
        name = private if hasattr(owner, private) else public
        if hasattr(owner, name):
            found.append((name, _wrapper(adapter, is_async, gated)))
        if adapter.streamed and name == private and hasattr(owner, public):
            found.append((public, _outer_wrapper(is_async, gated)))
    return found


def _chat_targets(owner: type, is_async: bool) -> list[tuple[str, Wrapper]]:
    """A chat's stream calls the models' stream method once read, not when it is called."""
    if "send_message_stream" not in vars(owner):
        return []
    return [("send_message_stream", _outer_wrapper(is_async, gated=True))]


def patch_targets() -> list[tuple[type, str, Wrapper]]:
    """(class, method, wrapper) for the installed google-genai SDK."""
    from google.genai import chats, models

    found: list[tuple[type, str, Wrapper]] = [
        (owner, name, wrapper)
        for owner, is_async in ((models.Models, False), (models.AsyncModels, True))
        for name, wrapper in _targets(owner, is_async, gated=True)
        if name in vars(owner)  # Patch replaces the class's own attribute
    ]
    for owner, is_async in ((chats.Chat, False), (chats.AsyncChat, True)):
        found += [(owner, name, wrapper) for name, wrapper in _chat_targets(owner, is_async)]
    return found


def _wrapped_chats_wrapper(is_async: bool) -> Wrapper:
    """A chat's stream over a wrapped client's models (``wrap()``): its caller is taken where it
    is called, as ``instrument()``'s chat patch does. Other chats pass straight through."""
    outer = _outer_wrapper(is_async, gated=False)

    def wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        models_obj = getattr(instance, "_modules", None)
        if not getattr(models_obj, "__dict__", {}).get("_tokenmeter_wrapped"):
            return wrapped(*args, **kwargs)
        return outer(wrapped, instance, args, kwargs)

    return wrapper


#: The chat classes whose stream method ``wrap()`` hooked (kept: inert for other chats).
_hooked_chats: set[type] = set()


def _hook_chats() -> None:
    """A wrapped client's chats are made anew on each ``client.chats`` (a property), so no
    object of the client can carry their hook: it is the chat classes', acting only for a chat
    over wrapped models. A chat stream sends its request only when read, maybe after its session
    ended: without it, it was recorded in the session where it was read, outside its own
    session's budget."""
    from google.genai import chats

    for owner, is_async in ((chats.Chat, False), (chats.AsyncChat, True)):
        if owner in _hooked_chats or "send_message_stream" not in vars(owner):
            continue
        Patch(owner, "send_message_stream", _wrapped_chats_wrapper(is_async)).apply()
        _hooked_chats.add(owner)


def _wrap_models(models_obj: Any, is_async: bool) -> None:
    if models_obj.__dict__.get("_tokenmeter_wrapped"):
        return
    for name, wrapper in _targets(type(models_obj), is_async, gated=False):
        setattr(models_obj, name, wrapt.FunctionWrapper(getattr(models_obj, name), wrapper))
    models_obj.__dict__["_tokenmeter_wrapped"] = True


def wrap_instance(obj: Any) -> bool:
    """A ``genai.Client`` (its ``models`` and ``aio.models``), an ``AsyncClient`` or a Models."""
    try:
        from google.genai import client, models
    except ImportError:  # wrap() asks every Google adapter; this SDK may not be installed
        return False
    _hook_chats()
    if isinstance(obj, client.Client):
        _wrap_models(obj.models, is_async=False)
        _wrap_models(obj.aio.models, is_async=True)
    elif isinstance(obj, client.AsyncClient):
        _wrap_models(obj.models, is_async=True)
    elif isinstance(obj, models.Models | models.AsyncModels):
        _wrap_models(obj, is_async=isinstance(obj, models.AsyncModels))
    else:
        return False
    return True
