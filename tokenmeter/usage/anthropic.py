"""Anthropic usage -> Usage.

Anthropic's ``input_tokens`` EXCLUDES cache reads and writes, so all input is
``input_tokens + cache_read_input_tokens + cache_creation_input_tokens``. Cache writes are split
by TTL in ``cache_creation`` (5-minute at 1.25x input, 1-hour at 2x). Thinking is inside
``output_tokens``.
"""

from __future__ import annotations

from typing import Any

from tokenmeter._models import Usage, usage_of
from tokenmeter.usage._read import count, field
from tokenmeter.usage._types import Extracted

_STANDARD_TIERS = {None, "standard"}


def usage_from_anthropic(usage: Any) -> Usage:
    if field(usage, "input_tokens") is None and field(usage, "output_tokens") is None:
        raise ValueError(f"not an Anthropic usage block: {usage!r}")
    cache_read = count(usage, "cache_read_input_tokens")
    split = field(usage, "cache_creation")
    write_5m = count(split, "ephemeral_5m_input_tokens")
    write_1h = count(split, "ephemeral_1h_input_tokens")
    cache_write = count(usage, "cache_creation_input_tokens") or write_5m + write_1h
    return usage_of(
        input_tokens=count(usage, "input_tokens") + cache_read + cache_write,
        output_tokens=count(usage, "output_tokens"),
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        cache_write_1h_tokens=min(write_1h, cache_write),
        reasoning_tokens=count(field(usage, "output_tokens_details"), "thinking_tokens"),
    )


def tier_from_anthropic(usage: Any) -> str | None:
    tier = field(usage, "service_tier")
    tier = str(tier).lower() if tier is not None else None
    return None if tier in _STANDARD_TIERS else tier


def from_anthropic_response(response: Any, provider: str = "anthropic") -> Extracted:
    """Read a Message / BetaMessage / ParsedMessage (object or dict)."""
    usage = field(response, "usage")
    if usage is None:
        raise ValueError("the Anthropic response carries no usage")
    return Extracted(
        provider=provider,
        usage=usage_from_anthropic(usage),
        model=field(response, "model"),
        operation="messages",
        tier=tier_from_anthropic(usage),
        request_id=field(response, "id"),
    )
