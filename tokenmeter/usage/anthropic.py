"""Anthropic usage -> Usage.

Anthropic's ``input_tokens`` EXCLUDES cache reads and writes, so all input is
``input_tokens + cache_read_input_tokens + cache_creation_input_tokens``. Cache writes are split
by TTL in ``cache_creation`` (5-minute at 1.25x input, 1-hour at 2x). Thinking is inside
``output_tokens``.
"""

from __future__ import annotations

from typing import Any

from tokenmeter._models import Usage, usage_of
from tokenmeter.usage._read import counts, getter, ident, priced_tier, shown
from tokenmeter.usage._types import Extracted


def usage_from_anthropic(usage: Any) -> Usage:
    get = getter(usage)
    if get("input_tokens") is None and get("output_tokens") is None:
        raise ValueError(f"not an Anthropic usage block: {shown(usage)}")
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
    return usage_of(
        uncached + cache_read + cache_write,
        output,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        cache_write_1h_tokens=min(write_1h, cache_write),
        reasoning_tokens=thinking,
    )


def tier_from_anthropic(usage: Any) -> str | None:
    tier = getter(usage)("service_tier")
    return None if tier is None else priced_tier(tier)


def from_anthropic_response(response: Any, provider: str = "anthropic") -> Extracted:
    """Read a Message / BetaMessage / ParsedMessage (object or dict)."""
    get = getter(response, what="response")
    usage = get("usage")
    if usage is None:
        raise ValueError("the Anthropic response carries no usage")
    return Extracted(
        provider=provider,
        usage=usage_from_anthropic(usage),
        model=get("model"),
        operation="messages",
        tier=tier_from_anthropic(usage),
        request_id=ident(get("id")),
    )
