"""The token counts a `FakeProvider` reports, one small frozen dataclass per provider.

Each type speaks its provider's own convention (Anthropic ``input_tokens`` excludes cache traffic,
Gemini thoughts sit outside candidates, ...) and renders the exact JSON the real API sends, with
totals that add up. ``normalized()`` gives the `Usage` tokenmeter should record for it, so tests
can compare against one source of truth instead of re-deriving the arithmetic.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from tokenmeter._models import Usage, short_repr

__all__ = ["AnthropicUsage", "GeminiUsage", "OpenAIUsage", "coerce_usage"]


def _check_counts(obj: Any) -> None:
    for f in fields(obj):
        if f.type != "int":
            continue
        value = getattr(obj, f.name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(
                f"{type(obj).__name__}.{f.name} must be a non-negative integer, "
                f"got {short_repr(value)}"
            )


def _check_subset(obj: object, part: str, whole: str) -> None:
    if getattr(obj, part) > getattr(obj, whole):
        raise ValueError(
            f"{type(obj).__name__}.{part} ({getattr(obj, part)}) cannot exceed "
            f"{whole} ({getattr(obj, whole)})"
        )


@dataclass(frozen=True, slots=True)
class OpenAIUsage:
    """Chat / legacy completions counts; the Responses API reports the same numbers renamed.

    ``prompt_tokens`` includes ``cached_tokens`` and ``completion_tokens`` includes
    ``reasoning_tokens``, exactly as OpenAI counts them.
    """

    prompt_tokens: int = 19
    completion_tokens: int = 10
    cached_tokens: int = 4
    reasoning_tokens: int = 2

    def __post_init__(self) -> None:
        _check_counts(self)
        _check_subset(self, "cached_tokens", "prompt_tokens")
        _check_subset(self, "reasoning_tokens", "completion_tokens")

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def chat_json(self) -> dict[str, Any]:
        """``usage`` of chat.completions and legacy completions."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": self.reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def responses_json(self) -> dict[str, Any]:
        """``usage`` of the Responses API."""
        return {
            "input_tokens": self.prompt_tokens,
            "input_tokens_details": {"cached_tokens": self.cached_tokens, "cache_write_tokens": 0},
            "output_tokens": self.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
            "total_tokens": self.total_tokens,
        }

    def embeddings_json(self) -> dict[str, Any]:
        """``usage`` of embeddings: input only."""
        return {"prompt_tokens": self.prompt_tokens, "total_tokens": self.prompt_tokens}

    def normalized(self) -> Usage:
        return Usage(
            input_tokens=self.prompt_tokens,
            output_tokens=self.completion_tokens,
            cache_read_tokens=self.cached_tokens,
            reasoning_tokens=self.reasoning_tokens,
        )


@dataclass(frozen=True, slots=True)
class AnthropicUsage:
    """Messages counts. ``input_tokens`` EXCLUDES cache reads and writes (Anthropic's convention).

    Cache writes are split by TTL; ``cache_creation_input_tokens`` is their sum.
    """

    input_tokens: int = 25
    output_tokens: int = 12
    cache_read_input_tokens: int = 50
    cache_creation_5m: int = 60
    cache_creation_1h: int = 40
    thinking_tokens: int = 0
    service_tier: str = "standard"

    def __post_init__(self) -> None:
        _check_counts(self)
        _check_subset(self, "thinking_tokens", "output_tokens")

    @property
    def cache_creation_input_tokens(self) -> int:
        return self.cache_creation_5m + self.cache_creation_1h

    def _input_part(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
        }

    def message_json(self, output_tokens: int | None = None) -> dict[str, Any]:
        """``usage`` of a Message (``output_tokens`` overridden for ``message_start``)."""
        out = self.output_tokens if output_tokens is None else output_tokens
        usage: dict[str, Any] = {
            **self._input_part(),
            "cache_creation": {
                "ephemeral_5m_input_tokens": self.cache_creation_5m,
                "ephemeral_1h_input_tokens": self.cache_creation_1h,
            },
            "output_tokens": out,
            "service_tier": self.service_tier,
        }
        if self.thinking_tokens and output_tokens is None:
            usage["output_tokens_details"] = {"thinking_tokens": self.thinking_tokens}
        return usage

    def delta_json(self) -> dict[str, Any]:
        """``usage`` of the final ``message_delta``: cumulative totals, input repeated."""
        usage: dict[str, Any] = {**self._input_part(), "output_tokens": self.output_tokens}
        if self.thinking_tokens:
            usage["output_tokens_details"] = {"thinking_tokens": self.thinking_tokens}
        return usage

    def normalized(self) -> Usage:
        return Usage(
            input_tokens=self.input_tokens
            + self.cache_read_input_tokens
            + self.cache_creation_input_tokens,
            output_tokens=self.output_tokens,
            cache_read_tokens=self.cache_read_input_tokens,
            cache_write_tokens=self.cache_creation_input_tokens,
            cache_write_1h_tokens=self.cache_creation_1h,
            reasoning_tokens=self.thinking_tokens,
        )


@dataclass(frozen=True, slots=True)
class GeminiUsage:
    """``usageMetadata`` counts. ``prompt`` includes ``cached``; ``thoughts`` is NOT in
    ``candidates``; total = prompt + candidates + thoughts + tool_use_prompt."""

    prompt: int = 8
    candidates: int = 5
    cached: int = 2
    thoughts: int = 32
    tool_use_prompt: int = 0

    def __post_init__(self) -> None:
        _check_counts(self)
        _check_subset(self, "cached", "prompt")

    @property
    def total(self) -> int:
        return self.prompt + self.candidates + self.thoughts + self.tool_use_prompt

    def metadata_json(self, candidates: int | None = None) -> dict[str, Any]:
        """``usageMetadata``; ``candidates`` overrides the output count for running totals."""
        cand = self.candidates if candidates is None else candidates
        meta: dict[str, Any] = {
            "promptTokenCount": self.prompt,
            "candidatesTokenCount": cand,
            "totalTokenCount": self.prompt + cand + self.thoughts + self.tool_use_prompt,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": self.prompt}],
            "candidatesTokensDetails": [{"modality": "TEXT", "tokenCount": cand}],
            "trafficType": "ON_DEMAND",
        }
        if self.cached:
            meta["cachedContentTokenCount"] = self.cached
            meta["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": self.cached}]
        if self.thoughts:
            meta["thoughtsTokenCount"] = self.thoughts
        if self.tool_use_prompt:
            meta["toolUsePromptTokenCount"] = self.tool_use_prompt
        return meta

    def embedding_json(self) -> dict[str, Any]:
        """``usageMetadata`` of embeddings: prompt only."""
        return {"promptTokenCount": self.prompt, "totalTokenCount": self.prompt}

    def normalized(self) -> Usage:
        return Usage(
            input_tokens=self.prompt + self.tool_use_prompt,
            output_tokens=self.candidates + self.thoughts,
            cache_read_tokens=self.cached,
            reasoning_tokens=self.thoughts,
        )


_UsageT = TypeVar("_UsageT", OpenAIUsage, AnthropicUsage, GeminiUsage)


def coerce_usage(kind: type[_UsageT], value: _UsageT | Mapping[str, Any], arg: str) -> _UsageT:
    """Accept a usage object or a plain mapping of its fields; name ``arg`` on bad input.

    A mapping gives the counts the replies report: a count it leaves out is 0, not the type's
    default (``{"input_tokens": 100, "output_tokens": 10}`` reported Anthropic's default cache
    reads and writes beside them: 250 input tokens recorded)."""
    if isinstance(value, kind):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(f"{arg} must be a {kind.__name__} or a mapping, got {short_repr(value)}")
    known = {f.name for f in fields(kind)}
    unknown = [key for key in value if key not in known]  # any keys: not sorted
    if unknown:
        raise ValueError(
            f"{arg}: unknown field(s) {short_repr(unknown)}; expected some of {sorted(known)}"
        )
    counts = {f.name: 0 for f in fields(kind) if f.type == "int"}
    return kind(**{**counts, **value})
