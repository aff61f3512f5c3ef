"""What the two Gemini adapters (google-genai, legacy google-generativeai) share: the provider
their calls are recorded under, how a request's model path is shortened, and how a stream left
before its output was counted is estimated."""

from __future__ import annotations

from tokenmeter._estimate import TextTally
from tokenmeter._models import Usage
from tokenmeter._registry import provider_of_sdk

__all__ = ["PROVIDER", "estimated_output", "short_model"]

#: Gemini API and Vertex AI bill the same models from one price table.
PROVIDER = provider_of_sdk("google-genai")


def short_model(model: str | None) -> str | None:
    """``models/x``, ``publishers/google/models/x`` or a full Vertex path -> ``x``."""
    if not model:
        return None
    return model.rsplit("models/", 1)[-1] or model


def estimated_output(
    usage: Usage, text: TextTally, thoughts: TextTally, provider: str, model: str
) -> Usage | None:
    """``usage`` of a stream whose running total counts no output beside the thoughts (early
    chunks count the prompt, and a thinking model's its thoughts, before any text): its output
    estimated from the ``text`` that streamed by, added to the thoughts counted. The thought
    summaries' text stands for the thoughts when none are counted. None when the total counts
    some output (the provider's own count), or nothing streamed."""
    if usage.output_tokens > usage.reasoning_tokens:
        return None
    found = text.tokens(provider, model)
    if not usage.reasoning_tokens:
        found += thoughts.tokens(provider, model)
    if not found:
        return None
    return usage.model_copy(update={"output_tokens": usage.reasoning_tokens + found})
