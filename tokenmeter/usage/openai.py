"""OpenAI usage (chat completions, legacy completions, embeddings, Responses) -> Usage.

``prompt_tokens``/``input_tokens`` already include ``cached_tokens``; reasoning is already inside
``completion_tokens``/``output_tokens``. So the totals are taken as they are and the details are
subsets. OpenAI-compatible servers put extra keys beside them
(DeepSeek: ``prompt_cache_hit_tokens``).
"""

from __future__ import annotations

from typing import Any

from tokenmeter._models import Usage, usage_of
from tokenmeter.usage._read import counts, getter, ident, priced_tier, shown
from tokenmeter.usage._types import Extracted

_OPERATIONS = {
    "chat.completion": "chat.completions",
    "chat.completion.chunk": "chat.completions",
    "text_completion": "completions",
    "response": "responses",
    "list": "embeddings",
}
_NOT_YET_BILLED = {"queued", "in_progress"}
#: (total input, total output, input details, output details) of the two usage shapes.
_CHAT = ("prompt_tokens", "completion_tokens", "prompt_tokens_details", "completion_tokens_details")
_RESPONSES = ("input_tokens", "output_tokens", "input_tokens_details", "output_tokens_details")


def usage_from_openai(usage: Any) -> Usage:
    """Normalise an OpenAI ``usage`` block of any of its three shapes."""
    get = getter(usage)
    if get("prompt_tokens") is not None:  # chat, legacy completions, embeddings
        names = _CHAT
    elif get("input_tokens") is not None:  # Responses API
        names = _RESPONSES
    else:
        raise ValueError(f"not an OpenAI usage block: {shown(usage)}")
    total_in, total_out, in_details, out_details = names
    input_tokens, output_tokens, hit = counts(get, total_in, total_out, "prompt_cache_hit_tokens")
    cached, write, audio_in = counts(
        getter(get(in_details), what=in_details),
        "cached_tokens",
        "cache_write_tokens",
        "audio_tokens",
    )
    reasoning, audio_out = counts(
        getter(get(out_details), what=out_details), "reasoning_tokens", "audio_tokens"
    )
    return usage_of(
        input_tokens,
        output_tokens,
        cache_read_tokens=cached or hit,
        cache_write_tokens=write,
        reasoning_tokens=reasoning,
        input_audio_tokens=audio_in,
        output_audio_tokens=audio_out,
    )


def tier_from_openai(service_tier: Any) -> str | None:
    return None if service_tier is None else priced_tier(service_tier)


def from_openai_response(response: Any, provider: str = "openai") -> Extracted | None:
    """Read a ChatCompletion / Completion / CreateEmbeddingResponse / Response (object or dict).

    None for a Responses ``background`` create still queued or in progress: it reports no usage
    yet, and its later retrieve is the record."""
    get = getter(response, what="response")
    usage = get("usage")
    if usage is None:
        status = get("status")
        if get("object") == "response" and type(status) is str and status in _NOT_YET_BILLED:
            return None
        raise ValueError("the OpenAI response carries no usage")
    kind = get("object")
    tier = get("service_tier")
    return Extracted(
        provider=provider,
        usage=usage_from_openai(usage),
        model=get("model"),
        operation=_OPERATIONS.get(kind) if type(kind) is str else None,
        tier=None if tier is None or tier == "default" else priced_tier(tier),
        request_id=ident(get("id")),
    )
