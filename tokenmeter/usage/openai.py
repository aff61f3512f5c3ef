"""OpenAI usage (chat completions, legacy completions, embeddings, Responses) -> Usage.

``prompt_tokens``/``input_tokens`` already include ``cached_tokens``; reasoning is already inside
``completion_tokens``/``output_tokens``. So the totals are taken as they are and the details are
subsets. OpenAI-compatible servers put extra keys beside them
(DeepSeek: ``prompt_cache_hit_tokens``).
"""

from __future__ import annotations

from typing import Any

from tokenmeter._models import Usage, usage_of
from tokenmeter.usage._read import count, field
from tokenmeter.usage._types import Extracted

_OPERATIONS = {
    "chat.completion": "chat.completions",
    "chat.completion.chunk": "chat.completions",
    "text_completion": "completions",
    "response": "responses",
    "list": "embeddings",
}
_STANDARD_TIERS = {None, "default", "auto", "standard", "scale"}


def usage_from_openai(usage: Any) -> Usage:
    """Normalise an OpenAI ``usage`` block of any of its three shapes."""
    if field(usage, "prompt_tokens") is not None:  # chat, legacy completions, embeddings
        input_tokens = count(usage, "prompt_tokens")
        output_tokens = count(usage, "completion_tokens")
        in_details = field(usage, "prompt_tokens_details")
        out_details = field(usage, "completion_tokens_details")
    elif field(usage, "input_tokens") is not None:  # Responses API
        input_tokens = count(usage, "input_tokens")
        output_tokens = count(usage, "output_tokens")
        in_details = field(usage, "input_tokens_details")
        out_details = field(usage, "output_tokens_details")
    else:
        raise ValueError(f"not an OpenAI usage block: {usage!r}")
    cached = count(in_details, "cached_tokens") or count(usage, "prompt_cache_hit_tokens")
    return usage_of(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read_tokens=cached,
        cache_write_tokens=count(in_details, "cache_write_tokens"),
        reasoning_tokens=count(out_details, "reasoning_tokens"),
        input_audio_tokens=count(in_details, "audio_tokens"),
        output_audio_tokens=count(out_details, "audio_tokens"),
    )


def tier_from_openai(service_tier: Any) -> str | None:
    tier = str(service_tier).lower() if service_tier is not None else None
    return None if tier in _STANDARD_TIERS else tier


def from_openai_response(response: Any, provider: str = "openai") -> Extracted:
    """Read a ChatCompletion / Completion / CreateEmbeddingResponse / Response (object or dict)."""
    usage = field(response, "usage")
    if usage is None:
        raise ValueError("the OpenAI response carries no usage")
    kind = field(response, "object")
    return Extracted(
        provider=provider,
        usage=usage_from_openai(usage),
        model=field(response, "model"),
        operation=_OPERATIONS.get(str(kind)) if kind is not None else None,
        tier=tier_from_openai(field(response, "service_tier")),
        request_id=field(response, "id"),
    )
