"""Anthropic adapter: the messages routes, and the cumulative usage of its streams.

Stream usage arrives twice: complete on ``message_start`` and as cumulative totals on each
``message_delta`` (fields omitted when unchanged). Merge by overwriting, never by adding; a
``message_delta``'s counts win over any ``message_start``'s, whichever came first, except an
input-side count of 0: some compatible servers close with ``input_tokens: 0``.
"""

from __future__ import annotations

import json
from contextlib import suppress
from typing import Any

from tokenmeter._estimate import TextTally, capped_output
from tokenmeter._models import Usage
from tokenmeter.providers._core import Call, _StreamProxyBase, safely
from tokenmeter.providers._stainless import (
    SKIPPED,
    Endpoint,
    SampledText,
    StainlessAdapter,
    keep_names,
)
from tokenmeter.usage import from_anthropic_response
from tokenmeter.usage._read import field, getter, ident, reports_nothing
from tokenmeter.usage.anthropic import (
    SERVER_TOOLS,
    batch_result_message,
    tier_from_anthropic,
    usage_from_anthropic,
)

_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "cache_creation",
    "output_tokens_details",
    "service_tier",
    "speed",
    "inference_geo",
    "server_tool_use",
    "iterations",
)
#: The fields of a usage block that count the request's input (each hop of a fallback sends it).
_INPUT_FIELDS = (
    "input_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "cache_creation",
)
#: The input-side counts a ``message_delta`` of 0 does not zero (``cache_creation``, the 5m/1h
#: split of the cache writes, by its sum).
_INPUT_COUNTS = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")


def _count(value: Any) -> int | None:
    """A plain token count (None for anything else, left for the usage reader to judge)."""
    return value if type(value) is int else None


def _split_sum(block: Any) -> int:
    """The cache writes a ``cache_creation`` block counts (a field that is no plain count adds
    nothing; a block that is no block raises ValueError)."""
    get = getter(block, what="cache_creation")
    return sum(
        _count(get(name)) or 0
        for name in ("ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens")
    )


def _never_zeroed(start: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    """``message_start``'s fields under ``message_delta``'s, but for an input-side count the
    delta gives as 0 where message_start gave more: a server that does not repeat it (SGLang's
    and some gateways' ``input_tokens: 0``), not input that was not billed. Any other count of
    the delta's wins, lower too: a gateway that put an estimate in message_start closes with the
    real count, as the SDK's final message has it. The output count is the delta's as it stands
    (message_start's is a provisional 1)."""
    fields = {**start, **delta}
    for name in _INPUT_COUNTS:
        first, last = _count(start.get(name)), _count(delta.get(name))
        if first and last == 0:
            fields[name] = first
    if "cache_creation" in start and "cache_creation" in delta:
        with suppress(ValueError):  # unreadable: the usage reader refuses it as before
            if _split_sum(delta["cache_creation"]) == 0 < _split_sum(start["cache_creation"]):
                fields["cache_creation"] = start["cache_creation"]
    return fields


#: The most one ``thinking_delta`` frame's ``estimated_tokens`` is read as: a larger increment is
#: no hint of thinking written (a broken or hostile value), and is not counted.
_MOST_HINTED = 100_000


def _hinted(delta: Any) -> int:
    """The thinking tokens a ``thinking_delta`` frame hints (``estimated_tokens``, sent with the
    thinking-token-count beta when the thinking's display is ``omitted``: the frames then carry
    no thinking text to tally). A value that is no plain count in bounds hints nothing."""
    hint = getattr(delta, "estimated_tokens", None)
    return hint if type(hint) is int and 0 <= hint <= _MOST_HINTED else 0


def _model_of(info: Any) -> str | None:
    """The model a fallback block's ``from`` / ``to`` names (None if none)."""
    model = info.get("model") if type(info) is dict else getattr(info, "model", None)
    return model if type(model) is str and model.strip() else None


class EventReader(SampledText):
    """Keeps the usage fields of one message stream (a handful of values): those of
    ``message_start`` and, apart, the cumulative ones of ``message_delta``, which win whatever the
    order (a ``message_start`` seen after a delta, or twice, must not bring back its provisional
    output count). Until the closing ``message_delta`` brings the output count, the text that
    passes by is tallied: a stream left early reports only ``message_start``'s output count (a
    token or so). A thinking block whose display is ``omitted`` streams no text; its frames'
    ``estimated_tokens`` hints (a beta) are summed in ``hinted`` and counted with the text.

    A ``fallback`` block (a refusal fallback: the SDK's ``BetaRefusalFallbackMiddleware`` or the
    server's) ends a hop that was sent, answered and billed: the hop is kept in ``declined``
    (its model, the text it streamed) and the tally starts again for the next hop. Only the
    closing ``message_delta`` counts the hops (``usage.iterations``); a stream left before it
    is estimated hop by hop (``partial``).

    A body read through ``iter_*()`` feeds its deltas past the first events as ``SKIPPED``:
    counted, the text of those read scaled up to them (``SampledText``)."""

    __slots__ = ("declined", "delta", "hinted", "start", "started", "stopped")

    def __init__(self, hide_usage_chunk: bool = False) -> None:
        super().__init__()
        self.start: dict[str, Any] = {}
        self.delta: dict[str, Any] = {}
        self.started = False
        #: ``message_stop`` came: the stream ran to its end.
        self.stopped = False
        #: The thinking tokens the frames of the hop streaming now hinted (see ``_hinted``).
        self.hinted = 0
        #: The hops that declined before the one streaming now: (model, the text it streamed,
        #: the thinking tokens its frames hinted).
        self.declined: list[tuple[str | None, TextTally, int]] = []

    @property
    def final(self) -> bool:
        """The closing output count came: a message_delta whose usage holds one (a usage block
        without it, or with a null one, brought none)."""
        return "output_tokens" in self.delta

    def feed(self, event: Any, call: Call) -> bool:
        kind = getattr(event, "type", None)
        if kind == "content_block_delta":
            self.read += 1
            delta = event.delta
            add = self.text.add
            add(getattr(delta, "text", None))
            add(getattr(delta, "partial_json", None))
            add(getattr(delta, "thinking", None))
            delta_kind = getattr(delta, "type", None)
            if delta_kind == "thinking_delta":
                self.hinted += _hinted(delta)
            elif delta_kind == "compaction_delta":  # a compaction block's summary, as it streams
                add(getattr(delta, "content", None))
        elif kind == "content_block_start":
            block = getattr(event, "content_block", None)
            self._fallback(block, call)
            _server_tool(block, call)
        elif kind == "message_start":
            message = event.message
            call.model = getattr(message, "model", None) or call.model
            call.request_id = ident(getattr(message, "id", None))
            self.started = True
            self._merge(getattr(message, "usage", None), self.start, call)
        elif kind == "message_delta":
            usage = getattr(event, "usage", None)
            if usage is not None:  # none: the output is estimated, as for a stream left early
                self._merge(usage, self.delta, call)
        elif kind == "message_stop":
            self.stopped = True
        elif event is SKIPPED:
            self.counted += 1
        return False

    def partial(self, usage: Usage, model: str, request: Any = None) -> Usage | None:
        """For a stream left before its final output count: the reported input with the output
        estimated from what streamed by, never less than message_start's provisional count
        (None when the count came). Left right after message_start, it is an estimate all the
        same: the server went on writing what it billed. A stream that ran to ``message_stop``
        with no count in its ``message_delta`` (a compatible server that gives the whole usage
        in ``message_start``) keeps that count unless more text streamed by than it says. The
        thinking tokens hinted (an ``omitted`` display's) are output too, and its reasoning.
        The estimate is at most the ``request``'s ``max_tokens`` (``capped_output``), where the
        provider stops and bills, thinking included."""
        if self.final:
            return None
        if self.declined:
            return self._hops(model, request)
        estimated = self.tally.tokens("anthropic", model) + self.hinted
        output = capped_output(estimated, request, usage.output_tokens)
        if self.stopped and output <= usage.output_tokens:
            return None
        counts = {"output_tokens": max(output, usage.output_tokens)}
        reasoning = min(self.hinted, counts["output_tokens"])  # thinking is part of the output
        if reasoning > usage.reasoning_tokens:
            counts["reasoning_tokens"] = reasoning
        return usage.model_copy(update=counts)

    def _hops(self, model: str, request: Any) -> Usage:
        """A fallback stream left before its final count: every hop it reached was billed,
        each at its own model. Each is counted with the input message_start reported (the same
        request was sent again; the SDK's message_start is the first hop's, or the serving
        one's when the first declined before any output) and the output it streamed, as the
        closing ``usage.iterations`` would have (``message`` entries, the serving hop's
        ``fallback_message``), with the thinking tokens it hinted, and priced from there. Each
        hop's output is at most the ``request``'s ``max_tokens``: each hop is the same request."""
        fields = _never_zeroed(self.start, self.delta)
        sent = {name: fields[name] for name in _INPUT_FIELDS if name in fields}
        iterations = [
            {
                **sent,
                "type": "message",
                "model": declined,
                "output_tokens": capped_output(
                    tally.tokens("anthropic", declined or model) + hinted, request
                ),
            }
            for declined, tally, hinted in self.declined
        ]
        serving = capped_output(self.tally.tokens("anthropic", model) + self.hinted, request)
        iterations.append(
            {**sent, "type": "fallback_message", "model": model, "output_tokens": serving}
        )
        return usage_from_anthropic({**fields, "iterations": iterations}, model)

    def _fallback(self, block: Any, call: Call) -> None:
        """A ``fallback`` block: the hop before it declined (billed, kept in ``declined``); the
        model it hands over to serves the reply from here on (the SDK's final message names it,
        as a non-streamed reply does), not message_start's."""
        if getattr(block, "type", None) != "fallback":
            return
        declined = _model_of(getattr(block, "from_", None)) or call.model
        self.declined.append((declined, self.tally, self.hinted))
        self.forget_text()
        self.hinted = 0
        model = _model_of(getattr(block, "to", None))
        if model is not None:
            call.model = model

    def _merge(self, usage: Any, into: dict[str, Any], call: Call) -> None:
        if usage is None:
            return
        get = getter(usage)  # text or a number where usage belongs is unreadable, not ignored
        for name in _FIELDS:
            value = get(name)
            if value is not None:
                into[name] = value
        fields = _never_zeroed(self.start, self.delta)
        if not self.started and "input_tokens" not in fields:
            # A message_delta before message_start: the input count is still to come.
            call.cannot_read("message_delta before message_start: no input count yet")
            return
        if reports_nothing(fields):  # {} or zeros so far: none came (estimated, as without)
            call.usage = None
            return
        call.usage = usage_from_anthropic(fields, call.model)
        call.tier = tier_from_anthropic(fields)


def _server_tool(block: Any, call: Call) -> None:
    """A ``server_tool_use`` block (a web search the server runs): one request of the tool its
    usage's ``server_tool_use`` counts, which a stream left before its final usage lacks."""
    if field(block, "type") != "server_tool_use":
        return
    name = field(block, "name")
    if type(name) is str and name in SERVER_TOOLS:
        call.saw_tool(name)


def _server_tools(parsed: Any, call: Call) -> None:
    """The ``server_tool_use`` blocks of a message that was not streamed, read as a stream's
    are: its usage, which would count their requests, never came."""
    content = field(parsed, "content")
    for block in content if isinstance(content, list | tuple) else ():
        _server_tool(block, call)


def _reply_text(parsed: Any) -> TextTally:
    """The output of a message that was not streamed, as the stream reader tallies it: text,
    thinking, a compaction block's summary, and each tool_use block's name and input (JSON, as
    a stream's ``partial_json`` delivers it). A block that cannot be read adds nothing."""
    tally = TextTally()
    add = tally.add
    with suppress(Exception):
        for block in field(parsed, "content") or ():
            add(field(block, "text"))
            add(field(block, "thinking"))
            if field(block, "type") == "compaction":  # other blocks' content is no output
                add(field(block, "content"))
            add(field(block, "name"))
            tool_input = field(block, "input")
            if tool_input is not None:
                add(json.dumps(tool_input, default=str, separators=(",", ":")))
    return tally


def _read_message(parsed: Any, call: Call) -> None:
    """A message; a billed one without a usage block (an Anthropic-compatible server's) is
    estimated from its request, the text it holds and its server tool requests, as a stream
    without usage is. Usage that was sent but cannot be read stays an error
    (``from_anthropic_response`` raises); usage that reports nothing (``{}``, zeros) is none."""
    usage = field(parsed, "usage")
    if (usage is None or reports_nothing(usage)) and batch_result_message(getter(parsed)) is None:
        call.missing = True
        call.reply = _reply_text(parsed)
        safely("reading server tool calls", _server_tools, parsed, call)
        keep_names(call, parsed)
        return
    call.take(from_anthropic_response(parsed, call.provider))


_MESSAGES = Endpoint("messages", _read_message, EventReader)


class AnthropicAdapter(StainlessAdapter):
    name = "anthropic"

    def endpoint(self, method: str, path: str) -> Endpoint | None:
        if method != "post":
            return None
        # Vertex and Bedrock clients rewrite the URL (``:rawPredict``, ``/model/{id}/invoke``)
        # only after this point: their requests arrive here as ``/v1/messages`` too.
        return _MESSAGES if path.endswith("/v1/messages") else None

    def provider_of(self, client: Any) -> str:
        return "anthropic"

    def promises_usage(self, options: Any, endpoint: Endpoint) -> bool:
        """Every message stream reports usage on ``message_start``."""
        return True


ADAPTER = AnthropicAdapter()
_taught: set[type] = set()


def _teach_isinstance() -> None:
    """anthropic < 1.0: ``Stream``'s metaclass answers ``isinstance()`` False for any object whose
    type is not exactly ``Stream`` (its old ``MessageStream`` aside), so our stream proxies failed
    ``isinstance(s, anthropic.Stream)``. Make it answer for what a proxy wraps. Kept after
    ``uninstrument()``: proxies made before must keep passing; it changes no other answer."""
    from anthropic import _streaming

    for name in ("_SyncStreamMeta", "_AsyncStreamMeta"):
        meta = getattr(_streaming, name, None)
        if meta is None or meta in _taught or "__instancecheck__" not in vars(meta):
            continue
        original = vars(meta)["__instancecheck__"]

        def instancecheck(cls: type, obj: Any, _original: Any = original) -> bool:
            if isinstance(obj, _StreamProxyBase):
                return isinstance(obj.__wrapped__, cls)
            return bool(_original(cls, obj))

        meta.__instancecheck__ = instancecheck
        _taught.add(meta)


def patch_targets() -> list[tuple[type, str, Any]]:
    """(class, method, wrapper) for the installed anthropic SDK."""
    from anthropic import _base_client

    _teach_isinstance()
    return [
        (_base_client.SyncAPIClient, "request", ADAPTER.sync_wrapper),
        (_base_client.AsyncAPIClient, "request", ADAPTER.async_wrapper),
    ]


def wrap_instance(client: Any) -> bool:
    from anthropic import _base_client

    _teach_isinstance()
    return ADAPTER.wrap_client(client, _base_client.SyncAPIClient, _base_client.AsyncAPIClient)
