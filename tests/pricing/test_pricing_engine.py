"""price_usage: unknown models, name normalisation, tiers, the cache, and no network."""

import logging
import random
import socket
import subprocess
import sys
import textwrap
import threading
import warnings
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
import pytest
from helpers import GENAI_PRICES_SOURCE
from pydantic import ValidationError

from tokenmeter._models import Cost, Usage
from tokenmeter.pricing import (
    clear_cache,
    describe_price,
    price_usage,
    set_price_source,
    set_user_prices,
)
from tokenmeter.pricing._genai import GenaiPricesSource, _billed_in_other_units

DAY = datetime(2026, 11, 23, 12, tzinfo=UTC)
BEFORE_TIER_VARIANTS = datetime(
    2025, 9, 1, tzinfo=UTC
)  # genai-prices' variants start 2026-10-12/14
PLAIN = Usage(input_tokens=1000, output_tokens=500)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "tokenmeter" and r.levelno == logging.WARNING
    ]


def test_unknown_model_is_unpriced_with_exactly_one_warning_per_model(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="tokenmeter")

    costs = [price_usage("openai", "gpt-unknown-9000", PLAIN, at=DAY) for _ in range(5)]
    costs += [price_usage("openai", "gpt-unknown-9000", PLAIN, tier="batch") for _ in range(2)]
    costs.append(price_usage(None, "my-custom-model", PLAIN, at=DAY))
    costs.append(price_usage("bogusprov", "my-custom-model", PLAIN, at=DAY))

    assert all(c.total_usd is None and c.breakdown is None for c in costs)
    messages = _warnings(caplog)
    assert len(messages) == 3
    assert "gpt-unknown-9000" in messages[0]
    assert "my-custom-model" in messages[1] and "my-custom-model" in messages[2]


def test_a_new_unknown_model_every_call_keeps_the_warnings_and_their_memory_bounded(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that names a new model in every answer: one warning per model up to a bound,
    then one saying so, and nothing more kept or logged at warning level."""
    from tokenmeter.pricing import _engine

    caplog.set_level(logging.WARNING, logger="tokenmeter")
    monkeypatch.setattr(_engine, "_MAX_WARNED", 5)
    for n in range(50):
        assert price_usage("openai", f"rotating-model-{n}", PLAIN, at=DAY).total_usd is None
    messages = _warnings(caplog)
    assert len(messages) == 6
    assert "rotating-model-4" in messages[4] and "5 models" in messages[5]
    assert len(_engine._warned) == 6


def test_a_new_model_name_every_call_keeps_genai_prices_caches_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """genai-prices remembers every name it is asked about, found or not: a server naming a new
    model in every answer must not grow its caches (and the process) without end."""
    from genai_prices import data_snapshot

    from tokenmeter.pricing import _genai

    expected = price_usage("openai", "gpt-4o", PLAIN, at=DAY)
    assert expected.total_usd
    monkeypatch.setattr(_genai, "_MAX_CACHED", 20, raising=False)  # 10,000 in use
    for n in range(100):
        price_usage("openai", f"gpt-4o-rotating-{n}", PLAIN, at=DAY)  # a provider it knows
        price_usage("nobody-knows", f"rotating-{n}", PLAIN, at=DAY)  # one it does not
    snapshot = data_snapshot.get_snapshot()
    caches = ("_lookup_cache", "_provider_cache", "_provider_misses")
    sizes = {name: len(getattr(snapshot, name)) for name in caches}
    assert all(size <= 21 for size in sizes.values()), sizes
    clear_cache()  # our own cache too: the next look-up goes through genai-prices again
    assert price_usage("openai", "gpt-4o", PLAIN, at=DAY) == expected


def test_unknown_model_is_never_a_silent_zero_nor_an_exception() -> None:
    cost = price_usage("azure", "my-gpt4o-prod-deployment", PLAIN, at=DAY)
    assert cost.total_usd is None
    assert describe_price("azure", "my-gpt4o-prod-deployment", at=DAY) is None


@pytest.mark.parametrize(
    ("provider", "model"),
    [
        ("openai", "whisper-1"),  # by the hour of audio
        ("openai", "tts-1"),  # by the million characters
        ("mistral", "mistral-ocr-2505"),  # by the thousand pages
        ("groq", "whisper-large-v3"),
    ],
)
def test_a_model_billed_only_in_units_other_than_tokens_is_unpriced_not_free(
    provider: str, model: str
) -> None:
    """genai-prices has no token rate for these: their tokens were priced at $0 with
    price_source "genai-prices" (a silent zero), and ``tokenmeter prices whisper-1`` showed
    rates of 0."""
    assert price_usage(provider, model, PLAIN, at=DAY).total_usd is None
    assert describe_price(provider, model, at=DAY) is None
    free = price_usage("openrouter", "deepseek-chat:free", PLAIN, at=DAY)  # no rate at all: free
    assert (free.total_usd, free.price_source) == (0, GENAI_PRICES_SOURCE)


@pytest.mark.parametrize(
    ("provider", "model", "priced_model"),
    [
        ("openai", "GPT-4o", "gpt-4o"),
        ("openai", "openai/gpt-4o", "gpt-4o"),
        (None, "openai/gpt-4o", "gpt-4o"),
        ("openai", "gpt-4o-2099-01-01", "gpt-4o"),
        ("openai", "gpt-4o-20990101", "gpt-4o"),
        ("azure", "gpt-4o", "gpt-4o"),
        ("openai", "ft:gpt-4o-2024-08-06:acme::abc123", "ft:gpt-4o"),
        ("openai", "ft:gpt-4.1-mini-2025-04-14:org:x:y", "ft:gpt-4.1-mini"),
        ("openai", "ft:o4-mini-2025-04-16:org:x:y", "o4-mini"),
        ("google", "models/gemini-2.5-pro", "gemini-2.5-pro"),
        ("google", "publishers/google/models/gemini-2.5-pro", "gemini-2.5-pro"),
        (
            "google",
            "projects/acme/locations/us-central1/publishers/google/models/gemini-2.5-pro",
            "gemini-2.5-pro",
        ),
        ("gemini", "gemini-2.5-pro", "gemini-2.5-pro"),
        ("vertex_ai", "gemini-2.0-flash-001", "gemini-2.0-flash"),
        ("google", "claude-sonnet-4@20250514", "claude-4-sonnet"),
        (None, "claude-sonnet-4@20250514", "claude-sonnet-4-0"),
        ("anthropic", "claude-sonnet-4-5@20250929", "claude-sonnet-4-5"),
        ("aws", "us.anthropic.claude-sonnet-4-20250514-v1:0", None),
        ("bedrock", "eu.anthropic.claude-sonnet-4-20250514-v1:0", None),
        (None, "us.anthropic.claude-sonnet-4-20250514-v1:0", "claude-sonnet-4-0"),
        ("some-proxy", "claude-sonnet-4-5", "claude-sonnet-4-5"),
    ],
)
def test_name_normalisation(provider: str | None, model: str, priced_model: str | None) -> None:
    cost = price_usage(provider, model, PLAIN, at=DAY)

    assert cost.total_usd is not None
    if priced_model is not None:
        assert cost.priced_model == priced_model


def test_normalised_names_price_like_the_canonical_name() -> None:
    expected = price_usage("openai", "gpt-4o", PLAIN, at=DAY).total_usd
    for spelling in ("openai/gpt-4o", "GPT-4O", "gpt-4o-2099-01-01"):
        assert price_usage("openai", spelling, PLAIN, at=DAY).total_usd == expected
    # Bedrock and Vertex serve Sonnet 4 at Anthropic's list price: $3/$15
    for provider, model in [
        ("aws", "us.anthropic.claude-sonnet-4-20250514-v1:0"),
        ("google", "claude-sonnet-4@20250514"),
        ("anthropic", "claude-sonnet-4-20250514"),
    ]:
        assert price_usage(provider, model, PLAIN, at=DAY).total_usd == Decimal("0.0105")


@pytest.mark.parametrize(
    ("model", "expected"),
    [  # OpenAI's fine-tune list prices: 1M in (500k cached) + 1M out
        ("ft:gpt-4.1-2025-04-14:acme::abc123", "13.875"),  # $3 / $0.75 / $12
        ("ft:gpt-4.1-mini-2025-04-14:acme::abc123", "3.7"),  # $0.80 / $0.20 / $3.20
        ("ft:gpt-4.1-nano-2025-04-14:acme::abc123", "0.925"),  # $0.20 / $0.05 / $0.80
    ],
)
def test_gpt_4_1_fine_tunes_are_priced_at_their_own_rates(model: str, expected: str) -> None:
    """genai-prices has no ft: entry for the gpt-4.1 family: ft:gpt-4.1-mini (1M in, 1M out) was
    recorded at gpt-4.1-mini's $2.00, not the $4.00 OpenAI bills, as an exact table price."""
    usage = Usage(input_tokens=1_000_000, cache_read_tokens=500_000, output_tokens=1_000_000)
    cost = price_usage("openai", model, usage, at=DAY)
    batch = price_usage("openai", model, usage, at=DAY, tier="batch")

    assert (cost.total_usd, cost.price_source) == (Decimal(expected), "tokenmeter-errata")
    assert batch.total_usd == Decimal(expected) / 2


@pytest.mark.parametrize(
    ("provider", "model", "expected"),
    [  # 1M in (500k cached) + 1M out at OpenAI's fine-tune list prices
        ("openai", "ft:gpt-4o-2024-08-06:acme::abc123", "17.8125"),  # $3.75 / $1.875 / $15
        ("openai", "ft:gpt-4o-mini-2024-07-18:acme::abc123", "1.425"),  # $0.30 / $0.15 / $1.20
        ("openai", "gpt-4o-mini-2024-07-18.ft-0123456789abcdef", "1.425"),
        ("azure", "ft:gpt-4o-2024-08-06:acme::abc123", "17.8125"),
    ],
)
def test_gpt_4o_fine_tunes_bill_cached_input_at_half_their_input_rate(
    provider: str, model: str, expected: str
) -> None:
    """genai-prices' ft:gpt-4o and ft:gpt-4o-mini have no cache-read rate: 8,000 cached tokens
    on ft:gpt-4o were billed at the $3.75 input rate ($0.030), where OpenAI bills $1.875. The
    batch tier, genai-prices' variant (ft:gpt-4o-mini) or 50 %, halves the cached rate too."""
    usage = Usage(input_tokens=1_000_000, cache_read_tokens=500_000, output_tokens=1_000_000)
    cost = price_usage(provider, model, usage, at=DAY)
    batch = price_usage(provider, model, usage, at=DAY, tier="batch")
    early_batch = price_usage(provider, model, usage, at=BEFORE_TIER_VARIANTS, tier="batch")

    assert (cost.total_usd, cost.price_source) == (Decimal(expected), "tokenmeter-errata")
    assert cost.breakdown is not None
    assert cost.breakdown["cache_read"] == cost.breakdown["input"] / 2  # as many cached as not
    assert batch.total_usd == early_batch.total_usd == Decimal(expected) / 2


@pytest.mark.parametrize(
    ("azure_name", "openai_name"),
    [
        (
            "gpt-4o-2024-08-06.ft-d93dda6110004b4da3472d96f4dd4777-ft",
            "ft:gpt-4o-2024-08-06:acme::abc123",
        ),
        ("gpt-4o-mini-2024-07-18.ft-0123456789abcdef", "ft:gpt-4o-mini-2024-07-18:acme::abc123"),
        # A gateway's provider prefix (LiteLLM's azure/...): was priced at base rates ($0.030).
        ("azure/gpt-4o-2024-08-06.ft-0123456789abcdef", "ft:gpt-4o-2024-08-06:acme::abc123"),
        # Azure's GPT-3.5 spelling, of a fine-tune the table prices ($3 / $6): was at base rates.
        ("gpt-35-turbo-0125.ft-0123456789abcdef", "ft:gpt-3.5-turbo-0125:acme::abc123"),
        ("ft:gpt-35-turbo-1106:acme::abc123", "ft:gpt-3.5-turbo-1106:acme::abc123"),
    ],
)
def test_an_azure_fine_tune_is_priced_as_the_same_fine_tune_spelled_ft(
    azure_name: str, openai_name: str
) -> None:
    """Azure names a fine-tune ``<base>.ft-<job id>``: a gpt-4o one (10,000 in, 500 out) was
    recorded with a null cost, where its ``ft:`` spelling is priced at the fine-tune's rates."""
    usage = Usage(input_tokens=10_000, cache_read_tokens=8_000, output_tokens=500)
    cost = price_usage("azure", azure_name, usage, at=DAY)
    assert cost.total_usd is not None
    spelled_ft = price_usage("azure", openai_name, usage, at=DAY)
    assert (cost.total_usd, cost.breakdown) == (spelled_ft.total_usd, spelled_ft.breakdown)
    assert "base rates" not in cost.price_source


@pytest.mark.parametrize(
    ("azure_name", "openai_name"),
    [
        ("gpt-35-turbo-0125", "gpt-3.5-turbo-0125"),  # $0.50 / $1.50
        ("gpt-35-turbo-0613", "gpt-3.5-turbo-0613"),  # $1.50 / $2
        ("gpt-35-turbo-1106", "gpt-3.5-turbo-1106"),  # $1 / $2
    ],
)
def test_azure_gpt_35_models_are_priced_as_openai_gpt_3_5(
    azure_name: str, openai_name: str
) -> None:
    """Azure spells gpt-3.5-turbo-0125 ``gpt-35-turbo-0125``: its calls (and its fine-tunes',
    ``gpt-35-turbo-0125.ft-<job id>``) were recorded with a null cost, 10,000 in + 500 out
    priced at $0.00575 under OpenAI's spelling. A fine-tune is priced as OpenAI's of the same
    base (the table's ft:gpt-3.5-turbo), not at base rates."""
    cost = price_usage("azure", azure_name, PLAIN, at=DAY)
    assert cost.total_usd is not None
    assert cost.total_usd == price_usage("azure", openai_name, PLAIN, at=DAY).total_usd
    tuned = price_usage("azure", f"{azure_name}.ft-0123456789abcdef", PLAIN, at=DAY)
    spelled_ft = price_usage("azure", f"ft:{openai_name}:acme::abc123", PLAIN, at=DAY)
    assert tuned.total_usd == spelled_ft.total_usd != cost.total_usd
    assert "base rates" not in tuned.price_source


def test_a_fine_tune_without_a_price_of_its_own_says_it_is_at_base_rates() -> None:
    """A fine-tune is billed above its base model; one no table prices (an o4-mini
    reinforcement fine-tune, one served by Azure) is priced as its base, and says so."""
    for provider, model, base in [
        ("openai", "ft:o4-mini-2025-04-16:acme::abc123", "o4-mini"),
        ("azure", "ft:gpt-4.1-mini-2025-04-14:acme::abc123", "gpt-4.1-mini"),
        ("azure", "gpt-4.1-2025-04-14.ft-0123456789abcdef0123456789abcdef", "gpt-4.1"),
        ("openai", "o4-mini-2025-04-16.ft-0123456789abcdef", "o4-mini"),
    ]:
        cost = price_usage(provider, model, PLAIN, at=DAY)
        assert cost.total_usd == price_usage(provider, base, PLAIN, at=DAY).total_usd
        assert cost.price_source == (
            f"{GENAI_PRICES_SOURCE}; fine-tune at base rates (no fine-tune price known)"
        )
        described = describe_price(provider, model, at=DAY)  # tokenmeter prices says it too
        assert described is not None and described.price_source == cost.price_source


def test_azure_uses_the_azure_table() -> None:
    cost = price_usage("azure", "gpt-4o", Usage(input_tokens=1_000_000, output_tokens=0), at=DAY)
    assert cost.total_usd == Decimal("2.5")


def test_prices_as_of_the_call_date() -> None:
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    before_cut = price_usage("openai", "o3", usage, at=datetime(2025, 6, 9, 23, 59, tzinfo=UTC))
    after_cut = price_usage("openai", "o3", usage, at=datetime(2025, 6, 10, tzinfo=UTC))
    # A local time whose UTC day is already the 10th
    local = datetime(2025, 6, 9, 21, tzinfo=timezone(timedelta(hours=-5)))

    assert before_cut.total_usd == Decimal(50)
    assert after_cut.total_usd == Decimal(10)
    assert price_usage("openai", "o3", usage, at=local).total_usd == Decimal(10)
    # naive timestamps are UTC
    assert price_usage("openai", "o3", usage, at=datetime(2025, 6, 9, 23)).total_usd == 50


def test_o3_cached_image_and_audio_tokens_before_the_price_cut_cost_what_cached_text_did() -> None:
    """o3's cached input was $2.50 before 2025-06-10; the erratum corrected the text rate only, so
    1M cached image tokens cost $0.50 on the call where 1M cached text tokens cost $2.50."""
    at = datetime(2025, 5, 1, tzinfo=UTC)
    text = Usage(input_tokens=1_000_000, cache_read_tokens=1_000_000, output_tokens=0)
    for cached in ("cache_read_image", "cache_read_audio"):
        modality = cached.removeprefix("cache_read_")
        split = text.model_copy(
            update={"modalities": {f"input_{modality}": 1_000_000, cached: 1_000_000}}
        )
        cost = price_usage("openai", "o3", split, at=at)
        assert cost.breakdown is not None
        assert cost.breakdown["cache_read"] == Decimal("2.5"), cached
    assert price_usage("openai", "o3", text, at=at).total_usd == Decimal("2.5")


@pytest.mark.parametrize("modality", ["video", "image", "audio"])
def test_cached_media_is_not_priced_again_at_its_input_rate(modality: str) -> None:
    """A Gemini Live prompt of 10,000 tokens: 6,000 of one medium, all read from the cache, and
    4,000 of text. gemini-live-2.5-flash: $0.50 text (and cache reads: no rate of their own),
    $3 video, per million. Cached video was priced again at the video rate, out of the
    uncached text ($0.015 for $0.005); cached images and audio never were."""
    usage = Usage(
        input_tokens=10_000,
        cache_read_tokens=6_000,
        output_tokens=0,
        modalities={
            f"input_{modality}": 6_000,
            "input_text": 4_000,
            f"cache_read_{modality}": 6_000,
        },
    )
    cost = price_usage("google", "gemini-live-2.5-flash", usage, at=DAY)
    assert cost.breakdown is not None
    assert f"input_{modality}" not in cost.breakdown  # none of it was read uncached
    assert cost.total_usd == Decimal("0.005")  # 4,000 x $0.50 + 6,000 x $0.50 per million


@pytest.mark.parametrize(
    ("model", "day", "usage", "expected"),
    [
        # 80k of 100k cached at $0.3125, 20k at $1.25, 1k out at $5 (was $0.13: cached at $1.25)
        ("gemini-1.5-pro-002", date(2025, 3, 1), (100_000, 80_000, 1_000), "0.055"),
        # above 128k: cached at $0.625, input $2.50, output $10
        ("gemini-1.5-pro-002", date(2025, 3, 1), (200_000, 100_000, 1_000), "0.3225"),
        # before the 2024-10-01 cut: $3.50 / $10.50 (was $0.175)
        ("gemini-1.5-pro-001", date(2024, 9, 30), (100_000, 0, 10_000), "0.455"),
        ("gemini-1.5-pro-001", date(2024, 10, 1), (100_000, 0, 10_000), "0.175"),
        # above 128k then: $7 in, $1.75 cached, $21 out
        ("gemini-1.5-pro", date(2024, 9, 15), (200_000, 100_000, 1_000), "0.896"),
        # before the 2024-08-12 cut: $0.35 / $1.05 (was $0.0105)
        ("gemini-1.5-flash-001", date(2024, 8, 11), (100_000, 0, 10_000), "0.0455"),
        ("gemini-1.5-flash-001", date(2024, 8, 12), (100_000, 0, 10_000), "0.0105"),
        ("gemini-1.5-flash-001", date(2024, 7, 15), (200_000, 200_000, 0), "0.035"),
        # Flash-8B came after the cut, at its own rates
        ("gemini-1.5-flash-8b", date(2024, 7, 15), (100_000, 0, 10_000), "0.00525"),
    ],
)
def test_gemini_1_5_is_priced_at_its_list_rates_of_the_day(
    model: str, day: date, usage: tuple[int, int, int], expected: str
) -> None:
    """genai-prices has Gemini 1.5 Pro without a cached-input rate (billed at the input rate: 4x)
    and both 1.5 models at their prices after the 2024 cuts only (Google's list: Pro $3.50 /
    $10.50 until 2024-10-01, Flash $0.35 / $1.05 until 2024-08-12; cached input a quarter)."""
    input_tokens, cached, output = usage
    at = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
    counts = Usage(input_tokens=input_tokens, cache_read_tokens=cached, output_tokens=output)
    assert price_usage("google", model, counts, at=at).total_usd == Decimal(expected)


@pytest.mark.parametrize(
    "model",
    [
        "gemini-2.5-flash-preview-04-17",
        "gemini-2.5-flash-preview-05-20",
        "gemini-2.5-flash-preview-05-20:thinking",
    ],
)
def test_gemini_2_5_flash_preview_thinking_and_audio_are_at_their_list_rates(model: str) -> None:
    """Google listed the previews at $0.15 in ($1.00 audio), $0.60 out, $3.50 for thinking:
    1M in, 1M out of which 500k thoughts was $0.75 (every output token at $0.60)."""
    at = datetime(2025, 6, 1, 12, tzinfo=UTC)
    thinking = Usage(input_tokens=1_000_000, output_tokens=1_000_000, reasoning_tokens=500_000)
    cost = price_usage("google", model, thinking, at=at)
    assert cost.total_usd == Decimal("0.15") + Decimal("0.30") + Decimal("1.75")
    assert cost.price_source == "tokenmeter-errata"
    audio = Usage(input_tokens=1_000_000, input_audio_tokens=1_000_000, output_tokens=0)
    assert price_usage("google", model, audio, at=at).total_usd == Decimal(1)


def test_default_time_is_now() -> None:
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    now = price_usage("openai", "o3", usage, at=datetime.now(UTC)).total_usd
    assert price_usage("openai", "o3", usage).total_usd == now


def test_long_context_tier_is_a_cliff_on_total_input_including_cache() -> None:
    # gemini-2.5-pro: $1.25/$10 up to 200k prompt tokens, $2.50/$15 above, cache $0.125/$0.25
    at_limit = Usage(input_tokens=200_000, cache_read_tokens=150_000, output_tokens=1000)
    above = Usage(input_tokens=200_001, cache_read_tokens=150_000, output_tokens=1000)

    assert price_usage("google", "gemini-2.5-pro", at_limit, at=DAY).total_usd == Decimal(
        "0.09125"
    )  # 50k*1.25 + 150k*0.125 + 1k*10, per million
    assert price_usage("google", "gemini-2.5-pro", above, at=DAY).total_usd == Decimal(
        "0.1775025"
    )  # 50_001*2.5 + 150k*0.25 + 1k*15, per million


@pytest.mark.parametrize(
    ("provider", "model"),
    [
        ("anthropic", "claude-sonnet-4-20250514"),
        ("aws", "us.anthropic.claude-sonnet-4-20250514-v1:0"),
        ("aws", "global.anthropic.claude-sonnet-4-20250514-v1:0"),
        ("google", "claude-sonnet-4@20250514"),
        ("openrouter", "anthropic/claude-sonnet-4"),
    ],
)
def test_claude_sonnet_4_above_200k_is_at_its_long_context_rates_in_every_table(
    provider: str, model: str
) -> None:
    """Sonnet 4's 1M-context calls are billed $6 / $22.50 above 200k input tokens by Anthropic,
    Bedrock, Vertex and OpenRouter alike; the tables lack the tier, and the correction knew
    Anthropic's name for the model only: the others were priced at half, $0.915."""
    usage = Usage(input_tokens=300_000, output_tokens=1_000)
    cost = price_usage(provider, model, usage, at=DAY)
    assert cost.total_usd == Decimal("1.8225")  # 300k * $6 + 1k * $22.50, per million
    at_limit = Usage(input_tokens=200_000, output_tokens=1_000)
    assert price_usage(provider, model, at_limit, at=DAY).total_usd == Decimal("0.615")
    sonnet_45 = price_usage(provider, model.replace("sonnet-4", "sonnet-4-5"), usage, at=DAY)
    assert sonnet_45.price_source != "tokenmeter-errata"


@pytest.mark.parametrize(
    ("provider", "model"),
    [
        ("anthropic", "claude-sonnet-4-20250514"),
        ("aws", "us.anthropic.claude-sonnet-4-20250514-v1:0"),
        ("openrouter", "anthropic/claude-sonnet-4"),
    ],
)
def test_claude_sonnet_4_above_200k_bills_images_video_and_cached_images_at_the_tier_too(
    provider: str, model: str
) -> None:
    """Anthropic bills an image's tokens as input tokens, so telling which tokens were images
    (record(modalities=...), or estimate() for a call without usage) changes nothing. The tier
    the errata add kept the standard $3 for images: 300k tokens, 100k of them an image, cost
    $1.50 where they cost $1.80 as text."""
    plain = Usage(input_tokens=300_000, cache_read_tokens=100_000, output_tokens=1_000)
    split = plain.model_copy(
        update={
            "modalities": {
                "input_text": 100_000,
                "input_image": 100_000,
                "input_video": 100_000,
                "cache_read_image": 60_000,
                "cache_read_audio": 40_000,
                "output_image": 600,
                "output_citation": 400,
            }
        }
    )
    cost = price_usage(provider, model, plain, at=DAY)
    # 200k uncached * $6 + 100k cached * $0.60 + 1k * $22.50, per million
    assert cost.total_usd == Decimal("1.2825")
    assert price_usage(provider, model, split, at=DAY).total_usd == cost.total_usd


def test_cache_writes_5m_and_1h_are_priced_separately() -> None:
    # claude-sonnet-4-5: input $3, 5m write $3.75, 1h write $6, output $15
    usage = Usage(
        input_tokens=30_000,
        cache_write_tokens=20_000,
        cache_write_1h_tokens=5_000,
        output_tokens=0,
    )
    cost = price_usage("anthropic", "claude-sonnet-4-5", usage, at=DAY)

    assert cost.breakdown is not None
    assert cost.breakdown["input"] == Decimal("0.03")
    assert cost.breakdown["cache_write"] == Decimal("0.05625") + Decimal("0.03")
    assert cost.total_usd == Decimal("0.11625")


def test_claude_1h_cache_writes_are_twice_the_input_rate_in_every_table() -> None:
    """Anthropic bills 1-hour cache writes at 2x the input rate on every platform. The Vertex,
    Bedrock and OpenRouter entries without a 1-hour rate priced them at the 5-minute rate:
    100k on claude-sonnet-4@20250514 were $0.375, not $0.60 (opus-4-1 on Vertex: $1.875, not
    $3). Every Claude entry of every table, at standard and above any long-context tier."""
    snapshot = genai_prices.data_snapshot.get_snapshot()
    checked = 0
    for provider in snapshot.providers:
        for model in provider.models:
            if "claude-" not in model.id:
                continue
            described = describe_price(provider.id, model.id, at=DAY)
            if described is None or not described.input_per_mtok:
                continue
            rates = [described.rates] + [tier for _, tier in described.tiers]
            for each in rates:
                if each.cache_write_per_mtok == each.input_per_mtok:
                    continue  # no prompt caching (claude-2): no write is ever billed
                assert each.cache_write_1h_per_mtok == 2 * each.input_per_mtok, (
                    provider.id,
                    model.id,
                )
            checked += 1
    assert checked > 40
    writes = Usage(input_tokens=100_000, cache_write_tokens=100_000, cache_write_1h_tokens=100_000)
    cost = price_usage("google", "claude-sonnet-4@20250514", writes, at=DAY)
    assert cost.total_usd == Decimal("0.6")
    assert cost.price_source == "tokenmeter-errata"


def test_audio_tokens_use_audio_rates() -> None:
    # gemini-2.5-flash: text input $0.30, audio input $1.00, output $2.50
    usage = Usage(input_tokens=6000, input_audio_tokens=5000, output_tokens=200)
    assert price_usage("google", "gemini-2.5-flash", usage, at=DAY).total_usd == Decimal("0.0058")


def test_openrouter_modalities_without_a_rate_of_their_own_are_at_the_first_partys() -> None:
    """genai-prices' OpenRouter table has no modality rates: openai/gpt-4o-audio-preview's
    audio was billed at the $2.50 text rate ($0.026 for this call) where OpenRouter lists $40
    per million, as OpenAI does ($0.3635); Gemini's output images at $2.50, not Google's $30.
    OpenRouter passes the first party's list price on: its modality rates apply."""
    heard = Usage(
        input_tokens=10_000,
        input_audio_tokens=9_000,
        output_tokens=100,
        modalities={"input_audio": 9_000},
    )
    routed = price_usage("openrouter", "openai/gpt-4o-audio-preview", heard, at=DAY)
    direct = price_usage("openai", "gpt-4o-audio-preview-2024-12-17", heard, at=DAY)
    # 1,000 text in at $2.50, 9,000 audio in at $40, 100 out at $10
    assert routed.total_usd == direct.total_usd == Decimal("0.3635")
    assert routed.price_source == "tokenmeter-errata"

    drawn = Usage(input_tokens=10, output_tokens=1_290, modalities={"output_image": 1_290})
    image = price_usage("openrouter", "google/gemini-2.5-flash-image", drawn, at=DAY)
    assert image.breakdown is not None
    assert image.breakdown["output_image"] == Decimal("0.0387")  # 1,290 at $30 per million

    # A model whose first party has no image rate of its own (OpenAI's gpt-5-image entry) keeps
    # OpenRouter's rates, and so does a route: a free one is free.
    assert price_usage("openrouter", "openai/gpt-5-image", drawn, at=DAY).price_source == (
        GENAI_PRICES_SOURCE
    )
    free = price_usage("openrouter", "google/gemini-2.0-flash-exp:free", heard, at=DAY)
    assert free.total_usd == 0


@pytest.mark.parametrize(
    ("routed", "direct", "usage"),
    [
        # Google's gemini-3-pro-image-preview entry lists gemini-3-pro-image as an alias: its
        # output images at $12 (OpenRouter's text rate) were $0.01568, at Google's $120 $0.155.
        (
            "google/gemini-3-pro-image",
            "gemini-3-pro-image",
            Usage(input_tokens=100, output_tokens=1_290, modalities={"output_image": 1_290}),
        ),
        # Google's gemini-2.5-flash-lite entry matches every -preview name by a prefix rule:
        # audio in at $0.10 was $0.0010, at Google's $0.30 $0.0028.
        (
            "google/gemini-2.5-flash-lite-preview-09-2025",
            "gemini-2.5-flash-lite-preview-09-2025",
            Usage(input_tokens=10_000, input_audio_tokens=9_000, output_tokens=0),
        ),
    ],
)
def test_openrouter_modalities_of_a_model_the_first_party_prices_under_another_entry(
    routed: str, direct: str, usage: Usage
) -> None:
    """The first party's table matches these names to an entry of another name, as a call to
    Google is priced: OpenRouter's card takes that entry's modality rates (text rates alike)."""
    via_openrouter = price_usage("openrouter", routed, usage, at=DAY)
    assert via_openrouter.total_usd == price_usage("google", direct, usage, at=DAY).total_usd
    assert via_openrouter.price_source == "tokenmeter-errata"


def test_the_first_realtime_snapshot_bills_audio_at_its_own_rates() -> None:
    """gpt-4o-realtime-preview-2024-10-01 billed audio at $100 in, $20 cached, $200 out; it was
    priced at the 2024-12-17 snapshot's $40 / $2.50 / $80 ($0.12625 for this call, not $0.285)."""
    at = datetime(2024, 11, 15, 12, tzinfo=UTC)
    usage = Usage(
        input_tokens=2000,
        output_tokens=2000,
        cache_read_tokens=500,
        input_audio_tokens=1000,
        output_audio_tokens=1000,
        modalities={"input_audio": 1000, "cache_read_audio": 500, "output_audio": 1000},
    )
    first = price_usage("openai", "gpt-4o-realtime-preview-2024-10-01", usage, at=at)
    # text $5 in, $2.50 cached, $20 out: 1,000 in, 1,000 out; audio 500 in, 500 cached, 1,000 out
    assert first.total_usd == Decimal("0.285")
    assert first.price_source == "tokenmeter-errata"
    later = price_usage("openai", "gpt-4o-realtime-preview-2024-12-17", usage, at=at)
    assert later.total_usd == Decimal("0.12625")  # $40 / $2.50 / $80: that snapshot's own


@pytest.mark.parametrize(
    "model", ["gemini-1.5-flash-8b", "gemini-1.5-flash-8b-001", "models/gemini-1.5-flash-8b-latest"]
)
def test_gemini_1_5_flash_8b_is_at_its_own_rates_not_1_5_flash(model: str) -> None:
    """genai-prices' gemini-1.5-flash entry matched Flash-8B: 100k in / 10k out was $0.0105
    as gemini-1.5-flash; Google listed Flash-8B at $0.0375 / $0.15 ($0.01 cached), x2 above 128k."""
    at = datetime(2025, 3, 1, 12, tzinfo=UTC)
    cost = price_usage("google", model, Usage(input_tokens=100_000, output_tokens=10_000), at=at)
    assert cost.total_usd == Decimal("0.00525")
    assert (cost.priced_model, cost.price_source) == ("gemini-1.5-flash-8b", "tokenmeter-errata")
    long = Usage(input_tokens=200_000, cache_read_tokens=100_000, output_tokens=10_000)
    # above 128k: $0.075 in, $0.02 cached, $0.30 out
    assert price_usage("google", model, long, at=at).total_usd == Decimal("0.0125")
    flash = price_usage("google", "gemini-1.5-flash", Usage(input_tokens=100_000), at=at)
    assert flash.total_usd == Decimal("0.0075")  # 1.5 Flash itself unchanged


@pytest.mark.parametrize(
    ("tier", "expected"),
    [
        (None, "0.0075"),
        ("default", "0.0075"),
        ("auto", "0.0075"),
        ("standard", "0.0075"),
        ("scale", "0.0075"),
        ("batch", "0.00375"),
        ("BATCH", "0.00375"),
        ("priority", "0.01275"),  # $4.25 / $17
        ("fast", "0.01275"),  # OpenAI bills fast mode at the priority rates
    ],
)
def test_service_tiers(tier: str | None, expected: str) -> None:
    assert price_usage("openai", "gpt-4o", PLAIN, at=DAY, tier=tier).total_usd == Decimal(expected)


def test_anthropic_fast_mode_is_priced_at_its_speed_variant() -> None:
    """Fast mode is a ``speed`` variant in genai-prices: claude-opus-4-8 $10 / $50, twice the
    standard rates; a model without one is billed at standard rates, and says so."""
    opus = price_usage("anthropic", "claude-opus-4-8", PLAIN, at=DAY, tier="fast")
    sonnet = price_usage("anthropic", "claude-sonnet-4-5", PLAIN, at=DAY, tier="fast")

    assert opus.total_usd == Decimal("0.035")
    assert opus.price_source == GENAI_PRICES_SOURCE
    assert sonnet.total_usd == Decimal("0.0105")
    assert sonnet.price_source == (
        f"{GENAI_PRICES_SOURCE}; fast at standard rates (no fast price known)"
    )


def test_opus_4_6_fast_mode_is_six_times_standard_where_genai_prices_has_no_price() -> None:
    """claude-opus-4-6 (the first model with fast mode) bills it at $30 / $150 per million;
    genai-prices has no fast price for it, and it was billed at $5 / $25."""
    usage = Usage(input_tokens=10_000, output_tokens=2_000, cache_read_tokens=1_000)
    fast = price_usage("anthropic", "claude-opus-4-6", usage, at=DAY, tier="fast")
    standard = price_usage("anthropic", "claude-opus-4-6", usage, at=DAY)
    assert fast.total_usd == Decimal("0.573")  # 9,000 x $30 + 1,000 x $3 + 2,000 x $150
    assert standard.total_usd is not None and fast.total_usd == 6 * standard.total_usd
    assert fast.price_source == "tokenmeter-errata: fast at 6x standard rates"


def test_tiers_match_genai_prices_after_its_variant_start_dates() -> None:
    usage = Usage(input_tokens=5000, cache_read_tokens=1000, output_tokens=8000)
    g_usage = genai_prices.Usage(input_tokens=5000, cache_read_tokens=1000, output_tokens=8000)
    for tier, context in [
        ("batch", {"processing": "batch"}),
        ("flex", {"service_tier": "flex"}),
        ("priority", {"service_tier": "priority"}),
    ]:
        ours = price_usage("openai", "o3", usage, at=DAY, tier=tier)
        theirs = genai_prices.calc_price(
            g_usage, "o3", provider_id="openai", genai_request_timestamp=DAY, price_context=context
        )
        assert ours.total_usd == theirs.total_price
        assert ours.price_source == GENAI_PRICES_SOURCE


def test_batch_before_genai_prices_variant_dates_is_half_price() -> None:
    """genai-prices prices 2025 batch calls at the standard rate (2x too much)."""
    gpt4o = price_usage("openai", "gpt-4o", PLAIN, at=BEFORE_TIER_VARIANTS, tier="batch")
    sonnet = price_usage(
        "anthropic",
        "claude-sonnet-4-5",
        Usage(input_tokens=11_000, cache_read_tokens=10_000, output_tokens=1000),
        at=BEFORE_TIER_VARIANTS,
        tier="batch",
    )
    gemini = price_usage("google", "gemini-2.5-pro", PLAIN, at=BEFORE_TIER_VARIANTS, tier="batch")

    assert gpt4o.total_usd == Decimal("0.00375")
    # price_source names the rule: genai-prices' batch variant only starts in 2026-10.
    assert gpt4o.price_source == (
        "tokenmeter-errata: batch at its 2026-10-14 discount on standard rates"
    )
    assert sonnet.total_usd == Decimal("0.0105")
    assert gemini.total_usd == Decimal("0.0031250")  # half of $1.25 / $10


def test_flex_and_priority_before_genai_prices_variant_dates() -> None:
    usage = Usage(input_tokens=5000, cache_read_tokens=1000, output_tokens=8000)
    flex = price_usage("openai", "o3", usage, at=BEFORE_TIER_VARIANTS, tier="flex")
    priority = price_usage("openai", "o3", usage, at=BEFORE_TIER_VARIANTS, tier="priority")

    assert flex.total_usd == Decimal("0.03625")  # $1 / $0.25 cached / $4
    assert priority.total_usd == Decimal("0.126875")  # $3.50 / $0.875 cached / $14
    assert flex.price_source == (
        "tokenmeter-errata: flex at its 2026-10-12 discount on standard rates"
    )
    assert priority.price_source == (
        "tokenmeter-errata: priority at its 2026-10-12 discount on standard rates"
    )


@pytest.mark.parametrize(
    ("model", "tier", "start", "expected"),
    [
        # priority $5 / $30 flat (genai-prices has no >272k priority tier)
        ("gpt-5.4", "priority", date(2026, 10, 12), Decimal("1.8")),
        ("gpt-5.5", "priority", date(2026, 10, 12), Decimal("4.5")),
        # batch and flex $15 / $90 flat ("no long-context Batch surcharge is modeled")
        ("gpt-5.5-pro", "batch", date(2026, 10, 14), Decimal("5.4")),
        ("gpt-5.5-pro", "flex", date(2026, 10, 12), Decimal("5.4")),
    ],
)
def test_a_long_context_call_before_a_variant_start_date_is_at_that_days_discount_for_its_size(
    model: str, tier: str, start: date, expected: Decimal
) -> None:
    """Before genai-prices' variant start date a tier is at its discount on the standard rates;
    above 272k that discount is the variant's ratio to standard's long-context rates. It was the
    base rates' ratio applied to the standard long-context tier: a 300k-input priority call on
    gpt-5.4 the day before 2026-10-12 was $3.45, $1.80 the next day at the same standard price."""
    usage = Usage(input_tokens=300_000, output_tokens=10_000)
    day_before = datetime.combine(start - timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    before = price_usage("openai", model, usage, at=day_before, tier=tier)
    on_the_day = price_usage("openai", model, usage, at=day_before + timedelta(days=1), tier=tier)
    assert on_the_day.price_source == GENAI_PRICES_SOURCE
    assert before.price_source == (
        f"tokenmeter-errata: {tier} at its {start.isoformat()} discount on standard rates"
    )
    assert before.total_usd == on_the_day.total_usd == expected


def test_cached_results_equal_uncached_results() -> None:
    usage = Usage(input_tokens=250_000, cache_read_tokens=20_000, output_tokens=3000)
    first = price_usage("google", "gemini-2.5-pro", usage, at=DAY)
    again = price_usage("google", "gemini-2.5-pro", usage, at=DAY)
    clear_cache()
    fresh = price_usage("google", "gemini-2.5-pro", usage, at=DAY)

    assert first == again == fresh
    assert first.total_usd == Decimal("0.625")  # 230k*2.5 + 20k*0.25 + 3k*15, per million


def test_off_peak_windows_are_not_cached_across_the_day() -> None:
    model = describe_price("deepseek", "deepseek-chat", at=datetime(2025, 3, 1, 12, tzinfo=UTC))
    off_peak = describe_price("deepseek", "deepseek-chat", at=datetime(2025, 3, 1, 17, tzinfo=UTC))
    assert model is not None and off_peak is not None
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    for hour in (12, 17, 12, 17):
        at = datetime(2025, 3, 1, hour, tzinfo=UTC)
        expected = genai_prices.calc_price(
            genai_prices.Usage(input_tokens=1_000_000, output_tokens=1_000_000),
            "deepseek-chat",
            provider_id="deepseek",
            genai_request_timestamp=at,
        ).total_price
        assert price_usage("deepseek", "deepseek-chat", usage, at=at).total_usd == expected
    assert model.input_per_mtok != off_peak.input_per_mtok


def test_identical_to_genai_prices_for_every_model_in_its_table() -> None:
    """Without our errata, the cached dot product equals genai-prices' own calculation."""
    set_price_source(GenaiPricesSource())
    rnd = random.Random(20261123)
    compared = 0
    snapshot = genai_prices.data_snapshot.get_snapshot()
    for provider in snapshot.providers:
        for model in provider.models:
            kwargs = _random_usage(rnd)
            at = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(hours=rnd.randrange(3 * 365 * 24))
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    theirs = genai_prices.calc_price(
                        genai_prices.Usage(**_genai_kwargs(kwargs)),
                        model.id,
                        provider_id=provider.id,
                        genai_request_timestamp=at,
                    )
            except (LookupError, ValueError):
                continue
            if theirs.model is not model:
                continue
            ours = price_usage(provider.id, model.id, Usage(**kwargs), at=at)
            if _billed_in_other_units(model.get_prices(at)):  # their $0 is no price per token
                assert ours.total_usd is None, (provider.id, model.id)
                continue
            assert ours.total_usd == theirs.total_price, (provider.id, model.id, kwargs, at)
            compared += 1
    assert compared > 2000


def _random_usage(rnd: random.Random) -> dict[str, int]:
    total_in = rnd.choice([0, 800, 40_000, 180_000, 250_000, 1_100_000])
    read = rnd.randint(0, total_in // 2)
    write = rnd.randint(0, (total_in - read) // 2)
    audio_in = rnd.randint(0, total_in - read - write) if rnd.random() < 0.3 else 0
    out = rnd.randint(0, 30_000)
    reasoning = rnd.randint(0, out // 2)
    audio_out = rnd.randint(0, out - reasoning) if rnd.random() < 0.3 else 0
    return {
        "input_tokens": total_in,
        "cache_read_tokens": read,
        "cache_write_tokens": write,
        "cache_write_1h_tokens": rnd.randint(0, write),
        "input_audio_tokens": audio_in,
        "output_tokens": out,
        "reasoning_tokens": reasoning,
        "output_audio_tokens": audio_out,
    }


def _genai_kwargs(kwargs: dict[str, int]) -> dict[str, int]:
    renamed = dict(kwargs)
    renamed["output_reasoning_tokens"] = renamed.pop("reasoning_tokens")
    return renamed


def test_describe_price_shows_rates_tiers_and_source() -> None:
    described = describe_price("google", "models/gemini-2.5-pro", at=DAY)

    assert described is not None
    assert described.priced_model == "gemini-2.5-pro"
    assert described.price_source == GENAI_PRICES_SOURCE
    assert (described.input_per_mtok, described.output_per_mtok) == (Decimal("1.25"), Decimal(10))
    assert described.cache_read_per_mtok == Decimal("0.125")
    assert [start for start, _ in described.tiers] == [200_000]
    assert described.tiers[0][1].input_per_mtok == Decimal("2.5")


def test_describe_price_shows_errata_and_tier() -> None:
    described = describe_price("openai", "gpt-4o-audio-preview-2024-12-17", at=DAY, tier="standard")
    assert described is not None
    assert described.price_source == "tokenmeter-errata"
    assert described.rates.input_audio_per_mtok == Decimal(40)
    assert described.rates.output_audio_per_mtok == Decimal(80)
    batch = describe_price("openai", "gpt-4o", at=BEFORE_TIER_VARIANTS, tier="batch")
    assert batch is not None and batch.tier == "batch"
    assert batch.input_per_mtok == Decimal("1.25")


def test_same_results_from_many_threads() -> None:
    cases: list[tuple[str, str, Usage]] = [
        ("openai", "gpt-4o", Usage(input_tokens=10_000, cache_read_tokens=8000, output_tokens=500)),
        ("anthropic", "claude-sonnet-4-5", Usage(input_tokens=250_000, output_tokens=2000)),
        ("google", "gemini-2.5-pro", Usage(input_tokens=10_000, output_tokens=3000)),
        ("openai", "no-such-model", PLAIN),
    ]
    expected = [price_usage(p, m, u, at=DAY) for p, m, u in cases]
    clear_cache()
    results: list[list[Any]] = []
    barrier = threading.Barrier(8)

    def work() -> None:
        barrier.wait()
        results.append([price_usage(p, m, u, at=DAY) for _ in range(200) for p, m, u in cases])

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert len(results) == 8
    for result in results:
        assert result == expected * 200


def test_override_change_drops_cached_prices() -> None:
    usage = Usage(input_tokens=1_000_000, output_tokens=0)
    assert price_usage("openai", "gpt-4o", usage, at=DAY).total_usd == Decimal("2.5")
    set_user_prices({"gpt-4o": {"input_per_mtok": 9, "output_per_mtok": 9}})
    assert price_usage("openai", "gpt-4o", usage, at=DAY).total_usd == Decimal(9)
    set_user_prices(None)
    assert price_usage("openai", "gpt-4o", usage, at=DAY).total_usd == Decimal("2.5")


def test_no_network_is_touched(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("pricing tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    clear_cache()

    for provider, model in [
        ("openai", "gpt-4o"),
        ("anthropic", "claude-sonnet-4-20250514"),
        ("google", "gemini-2.5-pro"),
        ("openai", "unknown-model-x"),
    ]:
        price_usage(provider, model, PLAIN, at=DAY)
        price_usage(provider, model, PLAIN, at=BEFORE_TIER_VARIANTS, tier="batch")
        describe_price(provider, model)


def test_import_and_pricing_in_a_fresh_process_open_no_socket() -> None:
    script = textwrap.dedent(
        """
        import socket
        def refuse(*a, **k):
            raise SystemExit("network used: " + repr(a))
        socket.socket.connect = refuse
        socket.getaddrinfo = refuse
        socket.create_connection = refuse
        from tokenmeter._models import Usage
        from tokenmeter.pricing import price_usage
        cost = price_usage("openai", "gpt-4o", Usage(input_tokens=1000, output_tokens=500))
        assert cost.total_usd is not None
        print(cost.total_usd)
        """
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0.0075000"


def test_tier_start_of_a_model_without_variants() -> None:
    source = GenaiPricesSource()
    model = source.find("anthropic", "claude-sonnet-4-0")
    assert model is not None
    assert model.tier_start("standard") == date.min
    assert model.tier_start("batch") is None


def test_cost_is_a_normal_validated_cost() -> None:
    cost = price_usage("openai", "gpt-4o", PLAIN, at=DAY)
    validated = Cost.model_validate(cost.model_dump())

    assert cost == validated
    assert cost.model_dump_json() == validated.model_dump_json()
    assert cost.input_usd == Decimal("0.0025") and cost.output_usd == Decimal("0.005")
    with pytest.raises(ValidationError):
        cost.total_usd = Decimal(0)


def test_prices_of_many_days_share_the_rates_they_have_in_common() -> None:
    """The rates worked out for each day a model was priced on (records backfilled with
    record(timestamp=...)) were kept whole per day, about 3 KB each, up to 1,000 days for each
    of 10,000 models: three years of history of 100 models held 300 MB of identical rates.
    Days whose rates are those of the day before share them."""
    from tokenmeter.pricing import _engine

    clear_cache()
    start = datetime(2024, 1, 1, 12, tzinfo=UTC)
    costs = {
        price_usage("openai", "gpt-4o-mini", PLAIN, at=start + timedelta(days=d)).total_usd
        for d in range(300)
    }
    assert len(costs) == 1  # one price all along: nothing else to keep
    (entry,) = [e for key, e in _engine._entries.items() if key[1] == "gpt-4o-mini"]
    assert len(entry.periods) == 300
    assert len({id(vector) for vector in entry.periods.values()}) == 1
