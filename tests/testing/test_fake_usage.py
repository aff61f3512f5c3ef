"""The usage dataclasses: validation, internally consistent JSON, and the normalised view."""

from __future__ import annotations

import pytest

from tokenmeter._models import Usage
from tokenmeter.testing import AnthropicUsage, GeminiUsage, OpenAIUsage


def test_openai_json_totals_add_up() -> None:
    usage = OpenAIUsage(
        prompt_tokens=100, completion_tokens=40, cached_tokens=30, reasoning_tokens=8
    )
    chat = usage.chat_json()
    assert chat["total_tokens"] == chat["prompt_tokens"] + chat["completion_tokens"] == 140
    responses = usage.responses_json()
    assert responses["total_tokens"] == responses["input_tokens"] + responses["output_tokens"]
    assert usage.normalized() == Usage(
        input_tokens=100, output_tokens=40, cache_read_tokens=30, reasoning_tokens=8
    )


def test_anthropic_input_excludes_cache_but_normalized_includes_it() -> None:
    usage = AnthropicUsage(
        input_tokens=25,
        output_tokens=12,
        cache_read_input_tokens=50,
        cache_creation_5m=60,
        cache_creation_1h=40,
    )
    message = usage.message_json()
    assert message["cache_creation_input_tokens"] == 100
    assert message["input_tokens"] == 25
    assert usage.message_json(output_tokens=1)["output_tokens"] == 1
    assert usage.delta_json()["output_tokens"] == 12
    normalized = usage.normalized()
    assert normalized.input_tokens == 25 + 50 + 100
    assert (normalized.cache_read_tokens, normalized.cache_write_tokens) == (50, 100)
    assert normalized.cache_write_1h_tokens == 40


def test_gemini_total_includes_thoughts_and_tool_use() -> None:
    usage = GeminiUsage(prompt=10, candidates=5, cached=4, thoughts=7, tool_use_prompt=3)
    meta = usage.metadata_json()
    assert meta["totalTokenCount"] == 10 + 5 + 7 + 3
    running = usage.metadata_json(candidates=2)
    assert running["totalTokenCount"] == 10 + 2 + 7 + 3
    assert usage.normalized() == Usage(
        input_tokens=13, output_tokens=12, cache_read_tokens=4, reasoning_tokens=7
    )


def test_gemini_omits_zero_optional_counts() -> None:
    meta = GeminiUsage(prompt=3, candidates=1, cached=0, thoughts=0).metadata_json()
    assert "thoughtsTokenCount" not in meta
    assert "cachedContentTokenCount" not in meta


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: OpenAIUsage(prompt_tokens=-1), "OpenAIUsage.prompt_tokens"),
        (lambda: OpenAIUsage(prompt_tokens=3, cached_tokens=4), "OpenAIUsage.cached_tokens"),
        (lambda: OpenAIUsage(completion_tokens=1, reasoning_tokens=2), "reasoning_tokens"),
        (lambda: OpenAIUsage(prompt_tokens=1.5), "OpenAIUsage.prompt_tokens"),  # type: ignore[arg-type]
        (lambda: AnthropicUsage(output_tokens=True), "AnthropicUsage.output_tokens"),  # type: ignore[arg-type]
        (lambda: AnthropicUsage(cache_creation_1h=-3), "AnthropicUsage.cache_creation_1h"),
        (lambda: GeminiUsage(prompt=1, cached=2), "GeminiUsage.cached"),
        (lambda: GeminiUsage(thoughts="9"), "GeminiUsage.thoughts"),  # type: ignore[arg-type]
    ],
)
def test_bad_counts_raise_value_error_naming_the_field(build: object, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        build()  # type: ignore[operator]
