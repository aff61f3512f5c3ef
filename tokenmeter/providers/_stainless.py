"""Interception for the two Stainless-generated SDKs (openai, anthropic).

Both funnel every API call through ``SyncAPIClient.request`` / ``AsyncAPIClient.request`` with the
retry loop inside. Patching there (once per SDK) covers every resource, ``parse``, the ``.stream()``
helpers, beta/Azure/Bedrock/Vertex clients and raw responses, and sees one call per logical call.
The adapter only says which URLs are billed and how to read their responses and streams.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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


@dataclass(slots=True)
class StainlessPlan(Plan):
    endpoint: Endpoint
    streamed: bool
    hide_usage_chunk: bool
    raw: str | None
    #: When ``prepare`` adjusted the request: the adapter, the client and the caller's own
    #: (args, kwargs), sent instead if the server refuses the adjustment.
    given: tuple[StainlessAdapter, Any, tuple[Any, ...], dict[str, Any]] | None = None

    def as_given(self, error: Exception) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        if self.given is None:
            return None
        adapter, client, args, kwargs = self.given
        if not adapter.refused(client, error):
            return None
        self.hide_usage_chunk = self.call.expects_usage = False  # none was asked for
        return args, kwargs


#: What ``plan`` reads of the SDK's request options.
_OPTION_FIELDS = ("method", "url", "json_data", "extra_json", "headers")


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

    def refuses(self, error: Exception) -> bool:
        """True if ``error`` is a server refusing what ``prepare`` added to a request."""
        return False

    def refused(self, client: Any, error: Exception) -> bool:
        """``refuses``, remembered: the server's later calls are sent as the caller gives them."""
        if not self.refuses(error):
            return False
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
        return True

    # -- the generic part ------------------------------------------------------------------------
    def plan(
        self, client: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> StainlessPlan | None:
        options = args[1] if len(args) > 1 else kwargs.get("options")
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
        headers = fields.get("headers")
        raw = (
            headers.get(RAW_HEADER) or headers.get(RAW_HEADER.lower())
            if isinstance(headers, dict)
            else None
        )
        promised, given = False, None
        if streamed:
            if raw == "stream" or (self._refusing and _server(client) in self._refusing):
                # A streaming response's body is the caller's to read line by line: what it did
                # not ask for cannot be hidden there. (A raw response is read through parse(),
                # whose stream hides the usage chunk as any stream does.)
                new_options, hide = options, False
            else:
                new_options, hide = self.prepare(options, endpoint, streamed)
            if new_options is not options:
                given = (self, client, args, kwargs)
                if len(args) > 1:
                    args = (args[0], new_options, *args[2:])
                else:
                    kwargs = {**kwargs, "options": new_options}
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
            expects_usage=promised,
            request=body,
            no_usage_hint=endpoint.no_usage_hint,
        )
        return StainlessPlan(call, args, kwargs, endpoint, streamed, hide, raw, given)

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
        make_copy = client.copy

        def copy(*args: Any, **kwargs: Any) -> Any:
            made = make_copy(*args, **kwargs)
            self.wrap_client(made, sync_base, async_base)
            return made

        client.copy = client.with_options = copy
        client._tokenmeter_wrapped = True
        return True

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
        if plan.raw != "stream" and not plan.streamed:  # openai says "true", anthropic "raw"
            plan.call.read("reading a raw response", self._self_read_body)
            plan.call.finish()  # a body that cannot be read is recorded now, not at collection

    def _self_read_body(self) -> None:
        raw = self.__wrapped__
        if inspect.iscoroutinefunction(raw.parse):
            _read_into(self._self_plan, raw.http_response.json())
        else:
            self._self_take(raw.parse())

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

    def __del__(self) -> None:  # never parsed (e.g. only ``iter_lines()``): record what is known
        if getattr(self, "_self_plan", None) is not None:
            self._self_settle()

    def _self_settle(self) -> None:
        """Record a response the caller never parsed: from its body if it was read and kept
        (``json()``, ``text()``, ``read()``), else estimated (a body streamed through and gone
        was billed all the same)."""
        plan = self._self_plan
        if self._self_parsed is not None or plan.call.done:
            return
        if not plan.streamed:
            plan.call.read("reading a raw response", self._self_read_kept)
        plan.call.finish()

    def _self_read_kept(self) -> None:
        http = self.__wrapped__.http_response
        try:
            http.content  # noqa: B018 (raises when the body was never read whole)
        except Exception:
            self._self_plan.call.missing = True
            return
        _read_into(self._self_plan, http.json())


class _StreamingResponseProxy(_RawResponseProxy):
    """``with_streaming_response``: its ``with`` block closes the response, which records it
    then if the caller read the body without ``parse()``."""

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


def _server(client: Any) -> tuple[str, str]:
    """A client's server as far as what it takes: its base URL and default query (Azure's
    api-version)."""
    return str(getattr(client, "base_url", "")), repr(getattr(client, "default_query", None))


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
