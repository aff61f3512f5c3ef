"""The mutable settings one `FakeProvider` answers with, shared by the provider modules."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tokenmeter.testing._usage import AnthropicUsage, GeminiUsage, OpenAIUsage

__all__ = ["DEFAULT_MODELS", "State"]

#: Aliases the real APIs resolve to a dated snapshot; anything else is echoed back unchanged.
DEFAULT_MODELS = {
    "gpt-4o": "gpt-4o-2024-08-06",
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "claude-sonnet-4-5": "claude-sonnet-4-5-20250929",
    "claude-haiku-4-5": "claude-haiku-4-5-20251001",
    "claude-opus-4-5": "claude-opus-4-5-20251101",
}


_MAX_STORED_RESPONSES = 10_000


@dataclass
class State:
    openai: OpenAIUsage = field(default_factory=OpenAIUsage)
    anthropic: AnthropicUsage = field(default_factory=AnthropicUsage)
    gemini: GeminiUsage = field(default_factory=GeminiUsage)
    #: Usage of a Gemini reply that asks for a function call (first AFC round); None: `gemini`.
    gemini_function_call: GeminiUsage | None = None
    stream_chunks: int = 3
    models: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_MODELS))
    #: Per request-model usage, keyed by (provider, model).
    per_model: dict[tuple[str, str], Any] = field(default_factory=dict)
    #: Finished OpenAI Responses by id, so `GET /v1/responses/{id}` can replay them.
    responses: dict[str, dict[str, Any]] = field(default_factory=dict)

    def response_model(self, model: str) -> str:
        return self.models.get(model, model)

    def openai_usage(self, model: str) -> OpenAIUsage:
        usage: OpenAIUsage = self.per_model.get(("openai", model), self.openai)
        return usage

    def anthropic_usage(self, model: str) -> AnthropicUsage:
        usage: AnthropicUsage = self.per_model.get(("anthropic", model), self.anthropic)
        return usage

    def gemini_usage(self, model: str) -> GeminiUsage:
        usage: GeminiUsage = self.per_model.get(("gemini", model), self.gemini)
        return usage

    def remember_response(self, response: dict[str, Any]) -> None:
        """Keep a finished response for retrieval; bounded so long benchmarks stay small."""
        self.responses[response["id"]] = response
        if len(self.responses) > _MAX_STORED_RESPONSES:
            del self.responses[next(iter(self.responses))]
