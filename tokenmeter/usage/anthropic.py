"""Anthropic usage -> Usage.

Anthropic's ``input_tokens`` EXCLUDES cache reads and writes, so all input is
``input_tokens + cache_read_input_tokens + cache_creation_input_tokens``. Cache writes are split
by TTL in ``cache_creation`` (5-minute at 1.25x input, 1-hour at 2x). Thinking is inside
``output_tokens``.

Billed beside the tokens:
- ``server_tool_use``: web search requests ($10 per 1,000 on the table's rate) and web fetch
  requests (no fee: a fetched page is billed as input tokens) are kept as ``tool_requests``.
- ``iterations`` (beta usage): one entry per pass of the request. ``message`` entries are the
  sampling passes of the requested model (and ``fallback_message`` the pass of a fallback model
  that served the reply); the top-level figures are their sum. A ``compaction`` entry's tokens are
  NOT in the top-level figures (the API reference says so), and an ``advisor_message`` entry is
  the advisor model's own pass, billed at that model's rates and also left out of the top level.
  Those two are added to the totals and kept as ``passes``, each priced at its own model. A
  ``fallback_message`` entry is kept as a pass too, inside the totals: it names the fallback
  model whose rates billed it, not the requested one the response names. So is a ``message``
  entry naming a model of another family than the response's: the fallback model's earlier
  tool-loop passes (or a fallback model that declined in turn) are ``message`` entries.
  Where the ``message`` and ``fallback_message`` entries add up to more than the top level, the
  top level is the serving hop's alone (the stream the SDK's ``BetaRefusalFallbackMiddleware``
  splices: the declined hop's entry beside the serving one's): the entries' sum is counted, each
  hop at its own model, since each was billed.
"""

from __future__ import annotations

from typing import Any

from tokenmeter._models import Pass, Usage, short_repr, usage_of
from tokenmeter.pricing._names import model_family
from tokenmeter.usage._read import Get, batch_tier, counts, field, getter, ident, priced_tier
from tokenmeter.usage._types import Extracted

#: Iteration types whose tokens the top-level usage leaves out (billed on top of it).
_PASSES_OUTSIDE_TOP_LEVEL = frozenset({"compaction", "advisor_message"})
#: Iteration types priced at the model they name: those above, and a fallback model's pass
#: (inside the top-level figures).
_PASSES = _PASSES_OUTSIDE_TOP_LEVEL | {"fallback_message"}
_MAX_NAME = 200  # a model name longer than this is no model name
_MAX_PASSES = 1_000  # a hostile server may send a million iterations: read this many


def _counts(get: Any) -> tuple[int, int, int, int, int, int]:
    uncached, output, cache_read, cache_write = counts(
        get,
        "input_tokens",
        "output_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
    )
    write_5m, write_1h = counts(
        getter(get("cache_creation"), what="cache_creation"),
        "ephemeral_5m_input_tokens",
        "ephemeral_1h_input_tokens",
    )
    cache_write = cache_write or write_5m + write_1h
    (thinking,) = counts(
        getter(get("output_tokens_details"), what="output_tokens_details"), "thinking_tokens"
    )
    return uncached, output, cache_read, cache_write, min(write_1h, cache_write), thinking


def usage_from_anthropic(usage: Any, model: Any = None) -> Usage:
    """``model``: the one the response names, to tell a fallback model's ``message`` passes
    from the requested model's (without it, every ``message`` entry is taken as its own)."""
    get = getter(usage)
    if get("input_tokens") is None or get("output_tokens") is None:
        # Both are required in every usage block the API sends (a stream's deltas are merged
        # with its message_start first): a null one is unknown, never a silent zero.
        raise ValueError(f"not an Anthropic usage block: {short_repr(usage)}")
    uncached, output, cache_read, cache_write, write_1h, thinking = _counts(get)
    tools = get("server_tool_use")
    tool_requests = _tool_requests(tools) if tools is not None else None
    iterations = get("iterations")
    passes, hops = _passes(iterations, model) if iterations else ((), None)
    if hops is not None and (
        hops[0] + hops[2] + hops[3] > uncached + cache_read + cache_write or hops[1] > output
    ):
        # The hops claim more than the top level: it is the serving hop's alone (the SDK's
        # BetaRefusalFallbackMiddleware splices a stream so), and each hop was billed.
        top = (uncached, output, cache_read, cache_write, write_1h, thinking)
        uncached, output, cache_read, cache_write, write_1h, thinking = map(max, top, hops)
    for extra in passes:
        if extra.kind not in _PASSES_OUTSIDE_TOP_LEVEL:
            continue  # already inside the top-level figures
        u = extra.usage
        uncached += u.input_tokens - u.cache_read_tokens - u.cache_write_tokens
        output += u.output_tokens
        cache_read += u.cache_read_tokens
        cache_write += u.cache_write_tokens
        write_1h += u.cache_write_1h_tokens
    return usage_of(
        uncached + cache_read + cache_write,
        output,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        cache_write_1h_tokens=write_1h,
        reasoning_tokens=thinking,
        tool_requests=tool_requests,
        passes=passes,
    )


#: The server tools ``server_tool_use`` counts the requests of (``<tool>_requests``), as their
#: ``tool_requests`` keys: the names a ``server_tool_use`` content block gives them, so that a
#: stream left before its usage counts the blocks it showed.
SERVER_TOOLS = ("web_search", "web_fetch", "code_execution")
_SERVER_TOOL_COUNTS = tuple(f"{tool}_requests" for tool in SERVER_TOOLS)


def _tool_requests(tools: Any) -> dict[str, int] | None:
    found = counts(getter(tools, what="server_tool_use"), *_SERVER_TOOL_COUNTS)
    requests = {tool: value for tool, value in zip(SERVER_TOOLS, found, strict=True) if value}
    return requests or None


def _family(model: str) -> str:
    """The model a name spells, to tell the requested model's ``message`` entries from a
    fallback model's: an entry may echo the alias the caller sent (``claude-sonnet-4-0``) where
    the response names the snapshot (``claude-sonnet-4-20250514``)."""
    family = model_family(model[:_MAX_NAME])
    return family.removesuffix("-0")


def _passes(iterations: Any, served: Any) -> tuple[tuple[Pass, ...], tuple[int, ...] | None]:
    """The passes priced at a model of their own, and the sum of the ``message`` and
    ``fallback_message`` entries' counts (as ``_counts`` gives them, None without any entry), to
    check the top level against."""
    if not isinstance(iterations, list | tuple):
        raise ValueError(f"usage 'iterations' is not a list: {short_repr(iterations)}")
    family = _family(served) if type(served) is str and served.strip() else None
    found = []
    hops: tuple[int, ...] | None = None
    for entry in iterations[:_MAX_PASSES]:
        get = getter(entry, what="iterations entry")
        kind = get("type")
        if type(kind) is not str or (kind not in _PASSES and kind != "message"):
            continue  # a kind this reader does not know: inside the top-level figures
        entry_counts = _counts(get)
        uncached, output, cache_read, cache_write, write_1h, _ = entry_counts
        if kind not in _PASSES_OUTSIDE_TOP_LEVEL:
            hops = (
                entry_counts
                if hops is None
                else tuple(map(sum, zip(hops, entry_counts, strict=True)))
            )
        model = get("model")
        named = type(model) is str and bool(model.strip())
        if kind == "message":
            if not named or family is None or _family(model) == family:
                continue  # the requested model's, already inside the top-level figures
            kind = "fallback_message"  # a fallback model's pass, billed at its rates
        if kind == "fallback_message" and not named:
            continue  # no other model named: priced with the top level
        found.append(
            Pass(
                kind=kind,
                model=model[:_MAX_NAME] if named else None,
                usage=usage_of(
                    uncached + cache_read + cache_write,
                    output,
                    cache_read_tokens=cache_read,
                    cache_write_tokens=cache_write,
                    cache_write_1h_tokens=write_1h,
                ),
            )
        )
    return tuple(found), hops


def tier_from_anthropic(usage: Any) -> str | None:
    """``usage.speed`` "fast" (fast mode, billed at the model's fast rates) before
    ``usage.service_tier``: a fast-mode call is never a batch one. ``usage.inference_geo``
    "us" (US-only inference, billed at 1.1x) follows after a ``+``: ``"fast+us"``."""
    get = getter(usage)
    if priced_tier(get("speed")) == "fast":
        tier: str | None = "fast"
    else:
        reported = get("service_tier")
        tier = None if reported is None else priced_tier(reported)
    geo = get("inference_geo")
    if type(geo) is str and geo.strip().lower() == "us":
        return f"{tier or 'standard'}+us"
    return tier


def batch_result_message(get: Get) -> Any:
    """The message of a Message Batches results line (``custom_id``, ``result.message``; the
    SDK's ``MessageBatchIndividualResponse``), or None for anything else: a request that
    errored, was canceled or expired holds none (nothing was billed)."""
    if get("custom_id") is None or get("usage") is not None:
        return None
    return field(get("result"), "message")


def from_anthropic_response(response: Any, provider: str = "anthropic") -> Extracted:
    """Read a Message / BetaMessage / ParsedMessage (object or dict), or a Message Batches
    results line holding one (priced at the batch tier)."""
    get = getter(response, what="response")
    usage = get("usage")
    if usage is None:
        message = batch_result_message(get)
        if message is None:
            raise ValueError("the Anthropic response carries no usage")
        found = from_anthropic_response(message, provider)
        found.tier = batch_tier(found.tier)
        return found
    return Extracted(
        provider=provider,
        usage=usage_from_anthropic(usage, get("model")),
        model=get("model"),
        operation="messages",
        tier=tier_from_anthropic(usage),
        request_id=ident(get("id")),
    )
