"""Interception for the two Stainless-generated SDKs (openai, anthropic).

Both funnel every API call through ``SyncAPIClient.request`` / ``AsyncAPIClient.request`` with the
retry loop inside. Patching there (once per SDK) covers every resource, ``parse``, the ``.stream()``
helpers, beta/Azure/Bedrock/Vertex clients and raw responses, and sees one call per logical call.
The adapter only says which URLs are billed and how to read their responses and streams.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import json
import sys
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, SupportsIndex

from tokenmeter._estimate import TextTally
from tokenmeter._media import file_head
from tokenmeter.providers import _core
from tokenmeter.providers._core import (
    AsyncStreamProxy,
    Call,
    Plan,
    SDKObjectProxy,
    StreamReader,
    SyncStreamProxy,
    intercept,
    intercept_async,
    logger,
)
from tokenmeter.usage._read import getter, ident

RAW_HEADER = "X-Stainless-Raw-Response"
_UNSEEN: Any = object()


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A billed API route: how to read its responses and its streams."""

    operation: str
    #: Reads a parsed response into its call (``call.take``; ``call.missing`` when a billed
    #: response carries no usage).
    read: Callable[[Any, Call], None]
    new_reader: Callable[[bool], StreamReader]
    #: Remember each response id (Responses API: retrieve repeats the same usage).
    dedupe: bool = False
    #: Reads a response made before (a retrieve): not recorded again when its id was.
    retrieval: bool = False
    #: What a caller can do when its call reports no usage (logged once per provider).
    no_usage_hint: str = ""
    #: The SDK's stream ends at an event whose data begins ``[DONE]`` (openai's): it reads no
    #: event after it, so neither does a raw body's reading (an event after it was an error, or
    #: billed). anthropic's stream skips such an event (it has no name) and reads on.
    ends_at_done: bool = False


@dataclass(slots=True)
class StainlessPlan(Plan):
    endpoint: Endpoint
    streamed: bool
    hide_usage_chunk: bool
    raw: str | None
    #: When ``prepare`` adjusted the request: the adapter, the client and the caller's own
    #: (args, kwargs), sent instead if the server refuses the adjustment.
    given: tuple[StainlessAdapter, Any, tuple[Any, ...], dict[str, Any]] | None = None
    #: The client runs middleware (anthropic 2.15+), which may answer from a cache of its own.
    middleware: bool = False

    def as_given(self, error: Exception) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        if self.given is None:
            return None
        adapter, _, args, kwargs = self.given
        if not adapter.refuses(error, _options_of(args, kwargs)):
            return None
        self.hide_usage_chunk = self.call.expects_usage = False  # none was asked for
        return args, kwargs

    def taken_as_given(self) -> None:
        """Remembered only now: a request that fails as given too failed for a reason of its
        own (an error echoing the whole request names what we added as well), and the server
        is asked for usage again next time."""
        if self.given is not None:
            adapter, client, _, _ = self.given
            adapter.remember_refusing(client)


#: What ``wrap_client`` sets on a client it wraps.
_WRAPPED_ATTRIBUTES = frozenset(
    ("request", "copy", "with_options", "__reduce_ex__", "_tokenmeter_wrapped")
)


def _wrapped_copy(
    adapter: StainlessAdapter, cls: Any, state: dict[str, Any], sync_base: type, async_base: type
) -> Any:
    """A copy of a wrapped client (``copy.copy``), wrapped in turn."""
    made = cls.__new__(cls)
    made.__dict__.update(state)
    adapter.wrap_client(made, sync_base, async_base)
    return made


def _options_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The SDK's request options among the arguments of its client's ``request``."""
    return args[1] if len(args) > 1 else kwargs.get("options")


#: What ``plan`` reads of the SDK's request options.
_OPTION_FIELDS = ("method", "url", "json_data", "extra_json", "headers", "files")


def _with_files(body: dict[str, Any], files: Any) -> dict[str, Any]:
    """``body`` with the multipart files the SDK sends beside it (an ``images.edit``'s
    ``image`` and ``mask``, a transcription's ``file``), by field name (``image[]``:
    ``image``), each a list of the files' contents: bytes, or of a file object its head and
    size (``file_head``: read now, before the SDK sends it; None if it cannot be). The SDK takes
    them out of the JSON body: an Images API edit was estimated at its prompt alone, whatever
    its images, and a transcription without its audio."""
    pairs = list(files.items()) if isinstance(files, dict) else files
    if not isinstance(pairs, list | tuple):
        return body
    sent: dict[str, list[Any]] = {}
    for pair in pairs:
        if not isinstance(pair, tuple) or len(pair) != 2 or not isinstance(pair[0], str):
            continue
        name, file = pair
        content = file[1] if isinstance(file, tuple) and len(file) > 1 else file
        if callable(getattr(content, "read", None)):
            content = file_head(content)
        sent.setdefault(name.removesuffix("[]"), []).append(content)
    return {**body, **sent} if sent else body


class StainlessAdapter:
    """Subclassed per SDK: ``endpoint()``, ``provider_of()`` and optionally ``prepare()``. An
    ``Adapter`` of the one interception loop (``_core.intercept``)."""

    name = ""
    active = True

    def __init__(self) -> None:
        self._routes: dict[tuple[Any, Any], Endpoint | None] = {}
        #: Servers that refused what ``prepare`` adds (``_server``): sent as given from then on.
        self._refusing: set[tuple[str, str]] = set()

    def endpoint(self, method: str, path: str) -> Endpoint | None:
        raise NotImplementedError

    def provider_of(self, client: Any) -> str:
        raise NotImplementedError

    def prepare(self, options: Any, endpoint: Endpoint, streamed: bool) -> tuple[Any, bool]:
        """Adjust a streamed call's request options before sending; returns (options,
        hide_usage_chunk)."""
        return options, False

    def promises_usage(self, options: Any, endpoint: Endpoint) -> bool:
        """True if a stream sent with these (prepared) options always reports usage before its
        end: one that ends without any is then recorded as unreadable usage, not zero tokens."""
        return False

    def defers(self, body: dict[str, Any], endpoint: Endpoint) -> bool:
        """True if a stream of this request is recorded by a later call when it ends without
        usage (``Call.deferred``): a resumed stream (a retrieve) is no call of its own."""
        return endpoint.retrieval

    def not_in_tokens(self, body: dict[str, Any], endpoint: Endpoint) -> bool:
        """True if a stream of this request is not billed in tokens (``Call.not_in_tokens``):
        ended without token usage, it makes no record rather than a token estimate."""
        return False

    def refuses(self, error: Exception, given: Any) -> bool:
        """True if ``error`` is a server refusing what ``prepare`` added to a request (``given``:
        the request options as the caller gave them)."""
        return False

    def remember_refusing(self, client: Any) -> None:
        """The client's server refused what ``prepare`` adds (it took the request as given):
        its later calls are sent as the caller gives them."""
        server = _server(client)
        if server not in self._refusing:
            if len(self._refusing) >= 1024:
                self._refusing.clear()
            self._refusing.add(server)
            logger.warning(
                "tokenmeter: %s at %s refused the usage request tokenmeter adds to streams; "
                "its streams are sent as you give them and recorded with estimated usage",
                self.name,
                str(getattr(getattr(client, "base_url", None), "host", "?"))[:200],  # no userinfo
            )

    # -- the generic part ------------------------------------------------------------------------
    def plan(
        self, client: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> StainlessPlan | None:
        options = _options_of(args, kwargs)
        if options is None:
            return None
        # The SDK's request options are a pydantic model: its fields read from its __dict__
        # (attribute access goes through a __getattr__ hook; this runs for every call).
        fields = getattr(options, "__dict__", None)
        if type(fields) is not dict or "url" not in fields:
            fields = {name: getattr(options, name, None) for name in _OPTION_FIELDS}
        route = (fields["method"], fields["url"])
        endpoint = self._routes.get(route, _UNSEEN)
        if endpoint is _UNSEEN:
            endpoint = self._route(route)
        if endpoint is None:
            return None
        streamed = bool(kwargs.get("stream", False))
        body = fields.get("json_data")
        if not isinstance(body, dict):
            body = {}
        extra = fields.get("extra_json")
        if extra and isinstance(extra, dict):  # what the SDK sends: ``extra_body`` over the body
            body = {**body, **extra}
        files = fields.get("files")
        if files:
            body = _with_files(body, files)
        headers = fields.get("headers")
        raw = (
            headers.get(RAW_HEADER) or headers.get(RAW_HEADER.lower())
            if isinstance(headers, dict)
            else None
        )
        promised, given = False, None
        new_options = options
        if streamed:
            if raw == "stream" or (self._refusing and _server(client) in self._refusing):
                # A streaming response's body is the caller's to read line by line: what it did
                # not ask for cannot be hidden there. (A raw response is read through parse(),
                # whose stream hides the usage chunk as any stream does.)
                hide = False
            else:
                new_options, hide = self.prepare(options, endpoint, streamed)
            if new_options is not options:
                given = (self, client, args, kwargs)
            promised = self.promises_usage(new_options, endpoint)
        else:
            hide = False
        model = body.get("model")
        call = Call(
            self.provider_of(client),
            model if type(model) is str else None,
            endpoint.operation,
            streamed,
            dedupe=endpoint.dedupe,
            retrieval=endpoint.retrieval,
            deferred=streamed and self.defers(body, endpoint),
            not_in_tokens=streamed and self.not_in_tokens(body, endpoint),
            expects_usage=promised,
            request=body,
            no_usage_hint=endpoint.no_usage_hint,
        )
        post_parser = fields.get("post_parser")
        if not streamed and callable(post_parser):  # a parse() helper's
            new_options = new_options.model_copy()
            new_options.post_parser = _reading_first(post_parser, call, endpoint)
        if new_options is not options:
            if len(args) > 1:
                args = (args[0], new_options, *args[2:])
            else:
                kwargs = {**kwargs, "options": new_options}
        middleware = bool(getattr(client, "_middleware", None))
        return StainlessPlan(call, args, kwargs, endpoint, streamed, hide, raw, given, middleware)

    def _route(self, route: tuple[Any, Any]) -> Endpoint | None:
        """``endpoint()`` for a (method, url) seen for the first time (remembered: apps call the
        same few routes; bounded, since retrieve URLs carry ids)."""
        method, url = route
        endpoint = self.endpoint(str(method).lower(), str(url).split("?", 1)[0])
        if len(self._routes) >= 1024:
            self._routes.clear()
        self._routes[route] = endpoint
        return endpoint

    def deliver(self, plan: Plan, result: Any, is_async: bool) -> Any:
        """Read a returned result, or wrap it so that it is read as it is consumed."""
        assert isinstance(plan, StainlessPlan)
        if plan.raw is not None and hasattr(result, "parse") and hasattr(result, "http_response"):
            raw = _StreamingResponseProxy if plan.raw == "stream" else _RawResponseProxy
            return raw(result, plan, is_async)
        if plan.streamed:
            return _stream_proxy(plan, result, is_async)
        if plan.middleware and _replayed(result):
            plan.call.done = True  # nothing was sent: no record (a reservation is given back)
            return result
        _read_into(plan, result)
        return result

    def sync_wrapper(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        """The class-level patch (inert once ``active`` is off)."""
        return intercept(self, True, wrapped, instance, args, kwargs)

    async def async_wrapper(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        return await intercept_async(self, True, wrapped, instance, args, kwargs)

    def wrap_client(self, client: Any, sync_base: type, async_base: type) -> bool:
        """Instrument one client object: its ``request`` becomes ours (instance attribute), and
        the clients its ``with_options()`` / ``copy()`` make are wrapped in turn."""
        is_client = isinstance(client, sync_base | async_base)
        is_async = isinstance(client, async_base)
        if not is_client:
            return False
        if vars(client).get("_tokenmeter_wrapped"):
            return True
        bound = type(client).request.__get__(client, type(client))
        if is_async:

            async def request_async(*args: Any, **kwargs: Any) -> Any:
                return await self.async_call(bound, client, args, kwargs)

            client.request = request_async
        else:

            def request(*args: Any, **kwargs: Any) -> Any:
                return self.sync_call(bound, client, args, kwargs)

            client.request = request
        # Each name around the client's own method: a subclass may override either (the SDK's
        # ``with_options`` is its ``copy``), and its override must still run. Whichever runs,
        # what it makes is wrapped (once: the guard above, when one calls the other).
        client.copy = self._copy_hook(client.copy, sync_base, async_base)
        client.with_options = self._copy_hook(client.with_options, sync_base, async_base)

        def reduce_ex(protocol: SupportsIndex) -> tuple[Any, ...]:
            # copy.copy() / deepcopy() of the client (they look this up on the object): the copy
            # is wrapped around itself; given our methods, it sent as this client, to its server
            # with its key, whatever was changed on the copy.
            state = {k: v for k, v in vars(client).items() if k not in _WRAPPED_ATTRIBUTES}
            return _wrapped_copy, (self, type(client), state, sync_base, async_base)

        client.__reduce_ex__ = reduce_ex
        client._tokenmeter_wrapped = True
        return True

    def _copy_hook(
        self, make: Callable[..., Any], sync_base: type, async_base: type
    ) -> Callable[..., Any]:
        """``make`` (a client's ``copy`` or ``with_options``), wrapping the client it returns."""

        def copy(*args: Any, **kwargs: Any) -> Any:
            made = make(*args, **kwargs)
            self.wrap_client(made, sync_base, async_base)
            return made

        return copy

    def sync_call(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        return intercept(self, False, wrapped, instance, args, kwargs)

    async def async_call(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        return await intercept_async(self, False, wrapped, instance, args, kwargs)


class _RawResponseProxy(SDKObjectProxy):
    """``with_raw_response`` / ``with_streaming_response``: the usage is in what ``parse()`` gives.

    A raw non-stream response (``with_raw_response``) has its body already: it is read at once
    (sync ``parse()`` caches, so the caller's own ``parse()`` returns the same object; an async
    ``parse()`` cannot run here, so the JSON body is read instead). Otherwise the parsed result is
    read, or for a stream wrapped, when the caller asks for it.
    """

    def __init__(self, wrapped: Any, plan: StainlessPlan, is_async: bool) -> None:
        super().__init__(wrapped)
        self._self_plan = plan
        self._self_async = is_async
        self._self_parsed: tuple[Any, Any] | None = None
        #: The body as the caller reads it through ``iter_bytes``/``iter_text``/``iter_lines``.
        self._self_body: _BodyReading | None = None
        if _read_at_once(plan):
            plan.call.read("reading a raw response", self._self_read_body)
            plan.call.finish()  # a body that cannot be read is recorded now, not at collection

    def _self_read_body(self) -> None:
        raw = self.__wrapped__
        if inspect.iscoroutinefunction(raw.parse):
            _read_into(self._self_plan, raw.http_response.json())
            return
        call = self._self_plan.call
        try:
            parsed = raw.parse()
        except Exception:
            if call.failure is not None and call.usage is not None:
                return  # a parse() helper refused a billed answer: read (_reading_first)
            raise
        self._self_take(parsed)

    def _self_take(self, parsed: Any) -> Any:
        if self._self_parsed is not None and parsed is self._self_parsed[0]:
            return self._self_parsed[1]
        plan = self._self_plan
        shown: Any = parsed
        if plan.streamed:
            shown = _stream_proxy(plan, parsed, self._self_async)
        else:
            _read_into(plan, parsed)
        self._self_parsed = (parsed, shown)
        return shown

    def parse(self, *args: Any, **kwargs: Any) -> Any:
        result = self.__wrapped__.parse(*args, **kwargs)
        if args or kwargs.get("to") is not None:
            return result  # parsed to the caller's own type: not ours to read
        if inspect.isawaitable(result):
            return self._self_parse_async(result)
        return self._self_take(result)

    async def _self_parse_async(self, pending: Any) -> Any:
        return self._self_take(await pending)

    def __getattr__(self, name: str) -> Any:
        """The SDK response's attribute; its method reading the body whole (``read()``,
        ``text()``, ``json()``: ``_WHOLE_READS``) one that holds this response until the body is
        there. A body read whole is recorded when its response goes (``_self_settle``): read in
        the line that made the response (``client...with_raw_response.create(stream=True)
        .read()``), the SDK's bound method alone held it, so it went before its body was read,
        recorded as an estimate of its request. (Looked up here, not defined: openai's legacy
        raw response has ``text`` as a property, and no ``read()``.)
        A stream's ``iter_bytes()``/``iter_text()``/``iter_lines()`` (anthropic's raw response has
        them; openai's legacy one has not) read its events as they pass, as
        ``http_response.iter_*()`` do: they were not read, and the call was estimated."""
        found = super().__getattr__(name)
        if name in _WHOLE_READS and inspect.ismethod(found):
            return _holding(self, found)
        if name in _ITER_READS and self._self_plan.streamed and inspect.ismethod(found):
            return self._self_iter_reading(found, _ITER_READS[name])
        return found

    def _self_iter_reading(
        self, iterate: Callable[..., Any], to_bytes: Callable[[Any], bytes]
    ) -> Callable[..., Any]:
        """The SDK response's ``iterate`` (an ``iter_*`` method), its pieces read as they pass."""

        @functools.wraps(iterate)
        def reading(*args: Any, **kwargs: Any) -> Any:
            return self._self_read_through(iterate(*args, **kwargs), to_bytes)

        return reading

    def __del__(self) -> None:  # never parsed (e.g. only ``iter_lines()``): record what is known
        if getattr(self, "_self_plan", None) is not None:
            self._self_settle()

    def _self_settle(self) -> None:
        """Record a response the caller never parsed: from its body if it was read and kept
        (``json()``, ``text()``, ``read()``; a stream's events as ``parse()`` would have read
        them), else estimated (a body streamed through and gone was billed all the same)."""
        plan = self._self_plan
        if self._self_parsed is not None or plan.call.done:
            return
        body = self._self_body
        if not plan.streamed:
            plan.call.read("reading a raw response", self._self_read_kept)
        elif body is None:
            self._self_read_whole_stream()
        else:  # read through iter_*(), not to its end
            body.left()
        plan.call.finish(None if body is None else body.refused)

    def _self_read_whole_stream(self) -> None:
        """A stream's body the caller read whole: its events are read as through ``iter_bytes()``
        (a body never read whole is estimated: it was billed all the same)."""
        try:
            content = self.__wrapped__.http_response.content
        except Exception:  # never read whole (httpx's ResponseNotRead)
            return
        self._self_body = body = _BodyReading(self, _as_is)
        body.take(content)
        body.ended()

    @property
    def http_response(self) -> Any:
        """The SDK's HTTP response; one whose body is still to come (a stream's, or a
        ``with_streaming_response`` JSON answer's), one whose ``iter_*()``/``aiter_*()`` read it
        as it passes by (the caller reading ``r.http_response.iter_lines()`` itself, or a relay
        passing a JSON answer on through ``iter_raw()``: it was recorded as an estimate)."""
        http = self.__wrapped__.http_response
        # Not kept: a response holding its own reader would be a cycle, collected (and so
        # recorded, when its body was read whole) only by the garbage collector.
        return http if _read_at_once(self._self_plan) else _ReadThroughHTTP(http, self)

    def _self_read_through(self, pieces: Any, to_bytes: Callable[[Any], bytes]) -> Any:
        if (
            self._self_body is not None
            or self._self_parsed is not None
            or self._self_plan.call.done
        ):
            return pieces  # read already (a second pass gets what the SDK gives it, unread)
        self._self_body = body = _BodyReading(self, to_bytes)
        if hasattr(pieces, "__anext__"):
            return body.passing_async(pieces, self)
        return body.passing(pieces, self)

    def _self_events(self, data: bytes) -> Iterator[Any]:
        """The events in ``data`` (whole SSE events, or AWS event-stream frames, of this
        response's body) as the SDK's own stream parses them: ``parse()``'s stream, made over a
        copy of the response that holds ``data``. An async client's stream is stepped here:
        nothing in it waits on anything."""
        raw = copy.copy(self.__wrapped__)
        raw.http_response = _Replay(raw.http_response, data)
        stream = raw._parse()
        return _stepped(stream) if hasattr(stream, "__anext__") else iter(stream)

    def _self_read_kept(self) -> None:
        http = self.__wrapped__.http_response
        try:
            http.content  # noqa: B018 (raises when the body was never read whole)
        except Exception:
            self._self_plan.call.missing = True
            return
        _read_into(self._self_plan, http.json())


class _ReadThroughHTTP(SDKObjectProxy):
    """The HTTP response of a raw stream, or of a streaming response's JSON answer: a body the
    caller iterates itself (``iter_lines()``, ``aiter_bytes()``...) is read as it passes by, as
    through the SDK response's ``iter_*()``. The caller gets every piece as httpx gives it.
    Its bytes as they came (``iter_raw()``, a relay passing the upstream body on undecoded) are
    read too, unless the server compressed them (``_unencoded``): those are estimated, as a body
    never read is."""

    def __init__(self, wrapped: Any, response: _RawResponseProxy) -> None:
        super().__init__(wrapped)
        self._self_response = response

    def _self_through(self, pieces: Any, to_bytes: Callable[[Any], bytes]) -> Any:
        return self._self_response._self_read_through(pieces, to_bytes)

    def read(self, *args: Any, **kwargs: Any) -> Any:  # the response held as it reads (above)
        return self.__wrapped__.read(*args, **kwargs)

    def aread(self, *args: Any, **kwargs: Any) -> Any:
        return _kept_while_read(self, self.__wrapped__.aread(*args, **kwargs))

    def iter_bytes(self, *args: Any, **kwargs: Any) -> Any:
        return self._self_through(self.__wrapped__.iter_bytes(*args, **kwargs), _as_is)

    def iter_text(self, *args: Any, **kwargs: Any) -> Any:
        return self._self_through(self.__wrapped__.iter_text(*args, **kwargs), _text)

    def iter_lines(self, *args: Any, **kwargs: Any) -> Any:
        return self._self_through(self.__wrapped__.iter_lines(*args, **kwargs), _line)

    def aiter_bytes(self, *args: Any, **kwargs: Any) -> Any:
        return self._self_through(self.__wrapped__.aiter_bytes(*args, **kwargs), _as_is)

    def iter_raw(self, *args: Any, **kwargs: Any) -> Any:
        return self._self_raw(self.__wrapped__.iter_raw(*args, **kwargs))

    def aiter_raw(self, *args: Any, **kwargs: Any) -> Any:
        return self._self_raw(self.__wrapped__.aiter_raw(*args, **kwargs))

    def _self_raw(self, pieces: Any) -> Any:
        """The body's bytes as they came, read as ``iter_bytes()``'s are when they are what
        ``iter_bytes()`` gives (not compressed); compressed, passed on unread. (Not read, a
        whole stream relayed this way was recorded as an estimate of its request, 0 output.)"""
        return self._self_through(pieces, _as_is) if _unencoded(self.__wrapped__) else pieces

    def aiter_text(self, *args: Any, **kwargs: Any) -> Any:
        return self._self_through(self.__wrapped__.aiter_text(*args, **kwargs), _text)

    def aiter_lines(self, *args: Any, **kwargs: Any) -> Any:
        return self._self_through(self.__wrapped__.aiter_lines(*args, **kwargs), _line)


def _read_at_once(plan: StainlessPlan) -> bool:
    """True for a raw response whose body is read as it is made: a ``with_raw_response`` call
    not streamed (openai's ``raw`` is "true", anthropic's "raw"; ``with_streaming_response``'s
    "stream"). Any other body is read as the caller reads it."""
    return plan.raw != "stream" and not plan.streamed


#: The methods of an SDK's raw response that read its body whole.
_WHOLE_READS = frozenset(("read", "text", "json"))


def _holding(response: object, read: Callable[..., Any]) -> Callable[..., Any]:
    """``read``, holding ``response`` until what it reads is there (an async read's too)."""

    @functools.wraps(read)
    def read_holding(*args: Any, **kwargs: Any) -> Any:
        return _kept_while_read(response, read(*args, **kwargs))

    return read_holding


def _kept_while_read(response: object, result: Any) -> Any:
    """``result`` of a body read whole; an async read's awaitable holds ``response`` until the
    body is there (a sync read held it, as the ``self`` of the method that read)."""
    if inspect.isawaitable(result):
        return _awaited_with(response, result)
    return result


async def _awaited_with(response: object, pending: Any) -> Any:
    """``pending`` awaited while ``response`` is referenced (by this coroutine's frame)."""
    return await pending


class _StreamingResponseProxy(_RawResponseProxy):
    """``with_streaming_response``: its ``with`` block closes the response, which records it
    then if the caller read the body without ``parse()``.

    A body read through ``iter_bytes()``, ``iter_text()`` or ``iter_lines()`` (the SDKs' own
    example, or a server relaying a stream to its client) is read as it passes by: its usage is
    the call's, as with ``parse()``. The caller gets every piece as the SDK gives it. A stream's
    body read whole (``read()``, ``text()``, ``json()``) is read when the response closes.
    """

    def iter_bytes(self, *args: Any, **kwargs: Any) -> Any:
        return self._self_read_through(self.__wrapped__.iter_bytes(*args, **kwargs), _as_is)

    def iter_text(self, *args: Any, **kwargs: Any) -> Any:
        return self._self_read_through(self.__wrapped__.iter_text(*args, **kwargs), _text)

    def iter_lines(self, *args: Any, **kwargs: Any) -> Any:
        return self._self_read_through(self.__wrapped__.iter_lines(*args, **kwargs), _line)

    def close(self) -> Any:
        closing = self.__wrapped__.close
        if inspect.iscoroutinefunction(closing):
            return self._self_close_async(closing)
        try:
            return closing()
        finally:
            self._self_settle()

    async def _self_close_async(self, closing: Callable[[], Any]) -> Any:
        try:
            return await closing()
        finally:
            self._self_settle()


#: A streamed body read through ``iter_*()`` is parsed whenever this many bytes of it wait: one
#: batch of events at a time, whatever the size of the pieces the caller reads.
_PARSE_AT = 16 * 1024
#: The most of a body kept to be read: a JSON body, or one SSE event. Past it, the call is
#: recorded as one whose body was never read (estimated).
_MAX_KEPT = 32 * 1024 * 1024
#: What ends an SSE event: an empty line, whichever line ending the server uses.
_EVENT_ENDS = (b"\n\n", b"\r\r", b"\n\r\n")
#: The content type of a stream sent as AWS event-stream frames (an ``AnthropicBedrock`` stream):
#: binary messages, each holding one event, which the SDK's own decoder reads; no SSE in it.
_EVENT_STREAM = "application/vnd.amazon.eventstream"
#: The smallest AWS event-stream frame: its prelude (total length, headers length, CRC) and CRC.
_MIN_FRAME = 16


def _as_is(piece: bytes) -> bytes:
    return bytes(piece)


def _text(piece: str) -> bytes:
    return piece.encode("utf-8", "replace")


def _line(piece: str) -> bytes:
    return (piece + "\n").encode("utf-8", "replace")


#: The methods of an SDK's raw response that iterate its body, and how their pieces are bytes.
_ITER_READS: dict[str, Callable[[Any], bytes]] = {
    "iter_bytes": _as_is,
    "iter_text": _text,
    "iter_lines": _line,
}


#: Events of a stream read through ``iter_*()`` that the SDK parses before only those that
#: matter are: their text is what an estimate is made of when no usage comes (every stream
#: reader extrapolates from it to the events counted after: ``SKIPPED``).
#: A limit of matching ``parse()``: an event after these that is only counted is never parsed,
#: so one the SDK would refuse (no JSON) does not make the call an error, as its stream's
#: raising would. Its tokens are the stream's all the same; only status and error differ.
#: Parsing every delta to catch that would cost the caller's loop what the skip saves.
_READ_EVENTS = 64
#: What the reader is fed for an event not parsed (a delta: ``_skippable``): it has no attribute
#: a reader reads. A reader that tallies text counts it, and scales the text of the deltas it
#: read up to the deltas counted, as a chat stream's reader does for the chunks it only counts:
#: not counted, a stream left after its 64th event was estimated from those 64 only.
SKIPPED = object()


class SampledText:
    """A stream reader's output text: that of the deltas it read (``read`` of them), scaled up
    in ``tally`` for the ``counted`` deltas it was only given to count (``SKIPPED``; a chat
    stream's chunks past those it reads). A stream parsed whole counts none: its tally is
    exactly the text read."""

    __slots__ = ("counted", "read", "text")

    def __init__(self) -> None:
        self.text = TextTally()
        self.read = 0
        self.counted = 0

    @property
    def tally(self) -> TextTally:
        """The text read, standing for every delta read or counted."""
        return self.text.scaled(self.read + self.counted, self.read)

    def forget_text(self) -> None:
        """Start again: nothing read or counted (the text so far is accounted for elsewhere)."""
        self.text, self.read, self.counted = TextTally(), 0, 0


def _skippable(event: bytes) -> bool:
    """An SSE event a reader only needs to count: no usage, no error, and one of a stream's
    many (a chat chunk, which has no event name; an event whose name ends in ``delta``)."""
    if b"usage" in event or b"error" in event:
        return False
    if event.startswith(b"event:"):
        at = 0
    else:
        at = event.find(b"\nevent:") + 1
        if not at:
            return True
    return event[at + 6 :].split(b"\n", 1)[0].strip().endswith(b"delta")


def _whole_events(data: bytes) -> int:
    """How many bytes of ``data`` are whole SSE events."""
    return max(data.rfind(end) + len(end) if end in data else 0 for end in _EVENT_ENDS)


def _data_of(event: bytes) -> bytes:
    """An SSE event's first ``data:`` field, as the SDK's decoder reads it (one leading space
    dropped): what it compares with ``[DONE]``, whatever the event's other fields."""
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            value = line[5:]
            return value[1:] if value.startswith(b" ") else value
    return b""


def _whole_frames(data: bytes) -> int:
    """How many bytes of ``data`` are whole AWS event-stream frames (each begins with its total
    length, 4 bytes big-endian). They end at a length no frame has (junk after the last frame,
    a corrupted length): the frames before it are good all the same, and the SDK's decoder
    reads them before it meets the bad one."""
    end = 0
    while len(data) - end >= 4:
        length = int.from_bytes(data[end : end + 4], "big")
        if length < _MIN_FRAME or end + length > len(data):
            break
        end += length
    return end


#: What an SDK's stream raises on a body it refuses: an error event's ``APIError``, an AWS
#: event-stream frame botocore's decoder refuses (``ParserError``: a bad checksum or length).
_SDK_REFUSALS = frozenset({"APIError", "ParserError"})


def _refused_by_sdk(exc: Exception) -> bool:
    """True for an exception the SDK's own stream raises to its reader on this body: those,
    and an event that is no JSON (``JSONDecodeError``) or no text (``UnicodeDecodeError``),
    both ``ValueError``. Anything else is a fault of ours in reading it."""
    return isinstance(exc, ValueError) or any(
        kind.__name__ in _SDK_REFUSALS for kind in type(exc).__mro__
    )


def _unencoded(http: Any) -> bool:
    """True for a body sent as it is (no ``content-encoding``, or ``identity``): its raw bytes
    are the ones ``iter_bytes()`` gives. A compressed one (gzip, br...) is not decoded here."""
    encoding = str(getattr(http, "headers", {}).get("content-encoding", ""))
    return encoding.strip().lower() in ("", "identity")


def _is_event_stream(http: Any) -> bool:
    """True for a body of AWS event-stream frames (Bedrock's streams), by its content type."""
    content_type = str(getattr(http, "headers", {}).get("content-type", ""))
    return content_type.split(";", 1)[0].strip().lower() == _EVENT_STREAM


class _BodyReading:
    """A raw response's body as the caller reads it, kept only until it is read: a JSON body
    whole (read at its end), a stream's events a batch at a time, parsed by the SDK as its own
    stream would (those a reader needs) and fed to the endpoint's reader. Memory is bounded by
    ``_MAX_KEPT``. A stream of AWS event-stream frames (Bedrock's) is cut at whole frames, each
    batch decoded by the SDK's own decoder: its events are in binary frames, not SSE.
    Nothing here raises into the caller's loop: a fault leaves the call recorded as unreadable."""

    def __init__(self, response: _RawResponseProxy, to_bytes: Callable[[Any], bytes]):
        #: Weak: the response holds its reading (``_self_body``). Held both ways, a response the
        #: caller dropped part-way through its body was recorded, and its body freed, only when
        #: the garbage collector ran.
        self.response = weakref.ref(response)
        self.plan: StainlessPlan = response._self_plan
        self.to_bytes = to_bytes
        self.pending: list[bytes] = []
        self.size = 0
        self.reader: StreamReader | None = None
        self.stopped = False  # given up: too big, or a fault
        self.parse_at = _PARSE_AT
        self.events = 0
        #: AWS event-stream frames, not SSE events (decided when a stream's reading begins).
        self.framed = False
        #: What the SDK's own stream raised on this body (its reader would have got it): the
        #: call's error, recorded as that stream records it.
        self.refused: Exception | None = None
        if self.plan.streamed:
            self.plan.call.reader = self.reader = self.plan.endpoint.new_reader(False)
            self.framed = _is_event_stream(getattr(response.__wrapped__, "http_response", None))
            if self.framed and to_bytes is not _as_is:
                # Frames read as text (``iter_text()``/``iter_lines()``): decoded, their line ends
                # split off, the bytes cannot be rebuilt to match their checksums. The call is
                # estimated, as a body never read is; not an error (it succeeded).
                self.stop()

    def passing(self, pieces: Iterator[Any], response: object) -> Iterator[Any]:
        """``pieces`` as they pass, read. ``response``: kept alive while they pass (the caller
        may hold only the iterator: ``for line in raw.http_response.iter_lines()`` of a raw
        response made in the same line), so that it is recorded once they have all passed,
        from what they held; the response holds no reference back to this iterator."""
        try:
            for piece in pieces:
                self.take(piece)
                yield piece
        except GeneratorExit:  # left early: the response's close (or collection) records it
            raise
        except BaseException as exc:
            self.broken_off(exc)
            raise
        self.ended()

    async def passing_async(
        self, pieces: AsyncIterator[Any], response: object
    ) -> AsyncIterator[Any]:
        """``passing``'s async twin."""
        try:
            async for piece in pieces:
                self.take(piece)
                yield piece
        except GeneratorExit:
            raise
        except BaseException as exc:
            self.broken_off(exc)
            raise
        self.ended()

    def take(self, piece: Any) -> None:
        if self.stopped:
            return
        try:
            data = self.to_bytes(piece)
            self.pending.append(data)
            self.size += len(data)
            if self.reader is not None and self.size >= self.parse_at:
                self.parse()
                # What waits now is part of one event: look again when it has doubled (a long
                # event read in small pieces is joined a logarithmic number of times).
                self.parse_at = max(2 * self.size, _PARSE_AT)
            if self.size > _MAX_KEPT:
                self.stop()
        except Exception:
            self.fault()

    def parse(self, final: bool = False) -> None:
        """Feed the reader the whole events (or frames) waiting. ``final``: no more bytes come
        (the body ended, broke off or was left)."""
        assert self.reader is not None
        data = b"".join(self.pending)
        # Frames: at the end, what is left is given to the SDK's decoder too, as its own stream
        # gives it every byte: it fails on bytes that are no frame (a bad length or checksum),
        # or waits for more (a frame cut short), as that stream does.
        if not self.framed:
            end = _whole_events(data)
        else:
            end = len(data) if final else _whole_frames(data)
        if not end:
            return
        self.pending, self.size = ([data[end:]], len(data) - end) if end < len(data) else ([], 0)
        if self.framed:  # each frame's event is in base64 inside it: the SDK reads them all
            self.feed_parsed(data[:end])
        else:
            self.feed_sse(data[:end])

    def feed_sse(self, batch: bytes) -> None:
        """Feed the reader whole SSE events. The SDK parses those the reader needs (the first
        ``_READ_EVENTS``, then those with usage, an error, or other than a delta); the rest are
        fed as ``SKIPPED`` (the reader counts them; one the SDK would refuse goes unseen, see
        ``_READ_EVENTS``). Where the SDK's stream ends at
        ``[DONE]`` (``Endpoint.ends_at_done``), the reading ends there too."""
        assert self.reader is not None
        if b"\r" in batch:
            batch = batch.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        call, feed = self.plan.call, self.reader.feed
        ends_at_done = self.plan.endpoint.ends_at_done
        run: list[bytes] = []
        for event in batch.split(b"\n\n"):
            if self.stopped:  # the SDK's stream failed on an event: it reads none after it
                return
            if b"data:" not in event or (event.startswith(b"data: [DONE]") and not ends_at_done):
                continue  # a comment, a keep-alive, an end: no event of the SDK's stream
            if ends_at_done and b"[DONE]" in event and _data_of(event).startswith(b"[DONE]"):
                if run:
                    self.feed_parsed(b"\n\n".join(run) + b"\n\n")
                if not self.stopped:  # the SDK's stream ran to its end: it reads nothing after
                    call.ran_out = True
                    self.stop()
                return
            self.events += 1
            if self.events <= _READ_EVENTS or not _skippable(event):
                run.append(event)
                continue
            if run:
                self.feed_parsed(b"\n\n".join(run) + b"\n\n")
                run = []
            feed(SKIPPED, call)
        if run:
            self.feed_parsed(b"\n\n".join(run) + b"\n\n")

    def feed_parsed(self, data: bytes) -> None:
        """Feed the reader the events of ``data`` (whole events or frames) as the SDK parses
        them."""
        assert self.reader is not None
        call, feed = self.plan.call, self.reader.feed
        response = self.response()
        if response is None:  # dropped: recorded then, with what it had read (``_self_settle``)
            self.stop()
            return
        events = response._self_events(data)
        while True:
            try:
                event = next(events)
            except StopIteration:
                return
            except Exception as exc:
                if not _refused_by_sdk(exc):
                    raise
                # The SDK's stream raises here (an error event's APIError; a frame or an event
                # its decoder refuses): the caller reading the body does not see it. Recorded
                # as the call's error, with the events read before it, as the stream would be.
                self.refused = exc.with_traceback(None)
                self.stop()
                return
            feed(event, call)

    def ended(self) -> None:
        """The caller read the body to its end: the call is recorded now."""
        call = self.plan.call
        try:
            if self.stopped:
                call.missing = call.missing or self.reader is None
            elif self.reader is not None:
                # An event not ended by an empty line is none (as for the SDK).
                self.parse(final=True)
                call.ran_out = True
            else:
                body, self.pending = b"".join(self.pending), []
                call.read("reading a raw response", _read_into, self.plan, json.loads(body))
        except Exception:
            self.fault()
        call.finish(self.refused)

    def broken_off(self, error: BaseException) -> None:
        """The body failed part-way (the connection broke): the whole events that came are read
        first, as a parsed stream's reader had them (the usage, when it came before the break)."""
        if self.reader is not None:
            self.left()
        self.plan.call.finish(error)

    def left(self) -> None:
        """The response closed (or was collected) before the caller read the stream to its end:
        its whole events are read. (A JSON body is read from what the response kept, if any.)"""
        if not self.stopped:
            try:
                self.parse(final=True)
            except Exception:
                self.fault()

    def stop(self) -> None:
        self.stopped = True
        self.pending, self.size = [], 0

    def fault(self) -> None:
        """Called inside ``except``: our reading failed; the caller's body is unaffected."""
        self.stop()
        exc = sys.exc_info()[1]
        self.plan.call.cannot_read(f"a response's body could not be read ({type(exc).__name__})")
        if _core._RAISE_INTERNAL:
            raise
        if isinstance(exc, Exception):
            _core._warn_unreadable(self.plan.call.provider, "reading a response's body", exc)


class _Replay:
    """An HTTP response holding bytes another one gave: what an SDK stream made by ``parse()``
    reads instead of the network. Closing it closes nothing (the caller is still reading the real
    one); only what an SDK stream reads of a response is passed through. It says it is closed:
    an SDK that drains a stream's rest after its end (for the connection's reuse) drains nothing.
    """

    is_closed = True
    _PASSED = frozenset({"request", "headers", "status_code", "url", "http_version", "encoding"})

    def __init__(self, http: Any, data: bytes) -> None:
        self._http = http
        self._data = data

    def __getattr__(self, name: str) -> Any:
        if name in _Replay._PASSED:
            return getattr(self._http, name)
        raise AttributeError(name)

    def iter_bytes(self, *args: Any, **kwargs: Any) -> Iterator[bytes]:
        yield self._data

    async def aiter_bytes(self, *args: Any, **kwargs: Any) -> AsyncIterator[bytes]:
        yield self._data

    def close(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


def _stepped(stream: Any) -> Iterator[Any]:
    """An SDK async stream over a ``_Replay``, iterated without an event loop: none of its steps
    waits on anything, so each one completes at its first ``send``."""
    events = stream.__aiter__()
    while True:
        step = events.__anext__()
        try:
            step.send(None)
        except StopIteration as done:
            yield done.value
            continue
        except StopAsyncIteration:
            return
        step.close()
        raise RuntimeError("an SDK stream over bytes in memory waited on something")


def _server(client: Any) -> tuple[str, str]:
    """A client's server as far as what it takes: its base URL and default query (Azure's
    api-version)."""
    return str(getattr(client, "base_url", "")), repr(getattr(client, "default_query", None))


def _reading_first(
    post_parser: Callable[[Any], Any], call: Call, endpoint: Endpoint
) -> Callable[[Any], Any]:
    """A ``parse()`` helper's post-parser that reads the usage of the response first: the
    helper raises on a billed answer it cannot turn into the caller's type (cut at the output
    cap: ``LengthFinishReasonError``; a content filter; JSON its model refuses), and that
    answer's usage must not be lost with it. The call is recorded as failed, with that usage."""

    def read_then_post_parse(parsed: Any) -> Any:
        if not call.done:
            with contextlib.suppress(Exception):  # read again, and reported, once delivered
                endpoint.read(parsed, call)
        try:
            return post_parser(parsed)
        except Exception as exc:
            if call.usage is not None:
                call.failure = type(exc).__name__
            raise

    return read_then_post_parse


#: The answers a client running middleware returned, by id: middleware answering from a cache
#: of its own hands back the very object an earlier call returned (the SDK returns a value the
#: middleware gives verbatim), and nothing was sent or billed. Each entry lives as long as its
#: answer does (as long as the cache keeps it).
_answered: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()


def _replayed(answer: Any) -> bool:
    """True for an answer returned before (a middleware's cache hit); else it is remembered."""
    if _answered.get(id(answer)) is answer:
        return True
    with contextlib.suppress(TypeError):  # an object that cannot be weakly referenced
        _answered[id(answer)] = answer
    return False


def _read_into(plan: StainlessPlan, parsed: Any) -> None:
    """Read a parsed response and record the call (unreadable usage is recorded too)."""
    call = plan.call
    call.read("reading a response", _take, call, plan.endpoint, parsed)
    call.finish()


def _take(call: Call, endpoint: Endpoint, parsed: Any) -> None:
    try:
        endpoint.read(parsed, call)
    except Exception:
        keep_names(call, parsed)
        raise


def _stream_proxy(plan: StainlessPlan, stream: Any, is_async: bool) -> Any:
    """The SDK stream, read as it is consumed by the endpoint's reader."""
    plan.call.reader = reader = plan.endpoint.new_reader(plan.hide_usage_chunk)
    return (AsyncStreamProxy if is_async else SyncStreamProxy)(stream, plan.call, reader)


def keep_names(call: Call, parsed: Any) -> None:
    """The served model and the response id, for the record of a response whose usage cannot be
    read: which model, which request (both Stainless APIs name them ``model`` and ``id``)."""
    try:
        get = getter(parsed, what="response")
        call.model = get("model") or call.model
        call.request_id = ident(get("id")) or call.request_id
    except Exception:  # the usage error is the one to report
        pass
