"""What the two Gemini adapters (google-genai, legacy google-generativeai) share: the provider
their calls are recorded under, and how a request's model path is shortened."""

from __future__ import annotations

from tokenmeter._registry import provider_of_sdk

__all__ = ["PROVIDER", "short_model"]

#: Gemini API and Vertex AI bill the same models from one price table.
PROVIDER = provider_of_sdk("google-genai")


def short_model(model: str | None) -> str | None:
    """``models/x``, ``publishers/google/models/x`` or a full Vertex path -> ``x``."""
    if not model:
        return None
    return model.rsplit("models/", 1)[-1] or model
