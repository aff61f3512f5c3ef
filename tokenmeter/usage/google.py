"""Gemini usage (google-genai, google-generativeai, REST JSON) -> Usage.

``prompt_token_count`` includes cached content; ``thoughts_token_count`` is NOT inside
``candidates_token_count``; ``tool_use_prompt_token_count`` is input outside the prompt. So
input = prompt + tool_use_prompt, output = candidates + thoughts. The legacy SDK's proto drops the
thoughts field while ``total_token_count`` still counts it: whatever the total holds beyond
input + output is hidden thinking, added to output (and to reasoning).
"""

from __future__ import annotations

from typing import Any

from tokenmeter._models import Usage, usage_of
from tokenmeter.usage._read import count, field
from tokenmeter.usage._types import Extracted

_TIERS = {"ON_DEMAND_FLEX": "flex", "ON_DEMAND_PRIORITY": "priority"}


def usage_from_gemini(meta: Any) -> Usage:
    prompt = count(meta, "prompt_token_count", "promptTokenCount")
    tool_prompt = count(meta, "tool_use_prompt_token_count", "toolUsePromptTokenCount")
    # Embeddings report their output as response_token_count.
    candidates = count(meta, "candidates_token_count", "candidatesTokenCount") or count(
        meta, "response_token_count", "responseTokenCount"
    )
    thoughts = count(meta, "thoughts_token_count", "thoughtsTokenCount")
    total = count(meta, "total_token_count", "totalTokenCount")
    input_tokens = prompt + tool_prompt
    hidden = total - input_tokens - candidates - thoughts
    if hidden > 0:
        thoughts += hidden
    return usage_of(
        input_tokens=input_tokens,
        output_tokens=candidates + thoughts,
        cache_read_tokens=min(
            count(meta, "cached_content_token_count", "cachedContentTokenCount"), input_tokens
        ),
        reasoning_tokens=thoughts,
    )


def tier_from_gemini(meta: Any) -> str | None:
    traffic = field(meta, "traffic_type", "trafficType")
    if traffic is None:
        return None
    name = getattr(traffic, "name", None) or str(traffic)
    return _TIERS.get(name.rsplit(".", 1)[-1])


def from_gemini_response(response: Any, provider: str = "google") -> Extracted:
    """Read a GenerateContentResponse / EmbedContentResponse of either SDK, or its JSON."""
    meta = field(response, "usage_metadata", "usageMetadata")
    if meta is None:
        raise ValueError("the Gemini response carries no usage_metadata")
    has_candidates = field(response, "candidates") is not None
    return Extracted(
        provider=provider,
        usage=usage_from_gemini(meta),
        model=field(response, "model_version", "modelVersion") or None,
        operation="generate_content" if has_candidates else "embed_content",
        tier=tier_from_gemini(meta),
        request_id=field(response, "response_id", "responseId") or None,
    )
