"""The default price source: the data bundled with genai-prices, read offline.

We use genai-prices' model matching and its time-conditional prices, then turn the resolved
``ModelPrice`` into our gap-free ``RateCard`` once, so the engine can cache it. ``UpdatePrices``
is never started: the bundled data is the data.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import genai_prices
from genai_prices import data_snapshot
from genai_prices import types as gp

from ._source import RateCard, Rates, Tier

__all__ = ["SOURCE_NAME", "GenaiPricesSource"]

SOURCE_NAME = f"genai-prices {genai_prices.__version__}"

#: genai-prices' snapshot remembers every model name it is asked about, found or not, in caches
#: that never shrink: a server naming a new model in every response (an id in the name) would
#: grow them without end. Past this many entries each starts over, like our own cache in front.
_MAX_CACHED = 10_000
_SNAPSHOT_CACHES = ("_lookup_cache", "_provider_cache", "_provider_misses")

_CONTEXT_FOR_TIER: dict[Tier, dict[str, str]] = {
    "batch": {"processing": "batch"},
    "flex": {"service_tier": "flex"},
    "priority": {"service_tier": "priority"},
    # Anthropic prices fast mode as a ``speed`` variant, OpenAI as a ``service_tier`` one.
    "fast": {"speed": "fast", "service_tier": "fast"},
}


class GenaiPricesSource:
    """``PriceSource`` over genai-prices' bundled snapshot."""

    name = SOURCE_NAME

    def find(self, provider: str | None, model: str) -> _GenaiModel | None:
        snapshot = _bounded(data_snapshot.get_snapshot())
        provider_id = provider
        if (
            provider_id is not None
            and data_snapshot.find_provider_by_id(snapshot.providers, provider_id) is None
        ):
            provider_id = None  # a provider genai-prices does not know: match on the name only
        try:
            found, info = snapshot.find_provider_model(model, None, provider_id, None)
        except LookupError:
            return None
        return _GenaiModel(info, found.id)

    def find_in_any_provider(self, model: str) -> _GenaiModel | None:
        """``model`` in the first provider's table that has it, first parties first.

        Without a provider genai-prices guesses one from the name, and only from providers whose
        model list matches it: ``text-embedding-3-small`` is then found nowhere, though a metered
        call (which knows its provider) prices it.
        """
        snapshot = _bounded(data_snapshot.get_snapshot())
        for candidate in sorted(snapshot.providers, key=_first_party_first):
            try:
                found, info = snapshot.find_provider_model(model, None, candidate.id, None)
            except LookupError:
                continue
            return _GenaiModel(info, found.id)
        return None

    def model_names(self) -> list[str]:
        """Every model id the table prices (for "did you mean" suggestions)."""
        snapshot = data_snapshot.get_snapshot()
        return [model.id for provider in snapshot.providers for model in provider.models]


def _bounded(snapshot: Any) -> Any:
    """``snapshot`` with none of its lookup caches past ``_MAX_CACHED`` entries."""
    for name in _SNAPSHOT_CACHES:
        cache = getattr(snapshot, name, None)
        if isinstance(cache, dict | set) and len(cache) > _MAX_CACHED:
            cache.clear()
    return snapshot


#: Providers that make the models others resell: asked first when no provider is given.
_FIRST_PARTY = ("openai", "anthropic", "google", "mistral", "x-ai", "deepseek", "cohere")


def _first_party_first(provider: Any) -> int:
    return _FIRST_PARTY.index(provider.id) if provider.id in _FIRST_PARTY else len(_FIRST_PARTY)


@dataclass(frozen=True)
class _GenaiModel:
    info: gp.ModelInfo
    #: The provider whose table priced the model.
    provider: str | None = None

    @property
    def time_dependent(self) -> bool:
        return any(isinstance(c, gp.TimeOfDateConstraint) for c in self._constraints())

    def time_slot(self, at: datetime) -> Hashable:
        return tuple(
            c.active(at) for c in self._constraints() if isinstance(c, gp.TimeOfDateConstraint)
        )

    def rate_card(self, at: datetime, tier: Tier) -> RateCard | None:
        context = _CONTEXT_FOR_TIER.get(tier)
        if context is not None and not self._variant_active(context, at):
            return None  # genai-prices would silently fall back to standard prices here
        price = self.info.get_prices(at, context)
        if _billed_in_other_units(price):
            return None
        return _rate_card(self.info.id, price)

    def tier_start(self, tier: Tier) -> date | None:
        context = _CONTEXT_FOR_TIER.get(tier)
        if context is None:
            return date.min
        starts = [
            date.min if v.constraint is None else v.constraint.start_date
            for v in self._variants(context)
            if v.constraint is None or isinstance(v.constraint, gp.StartDateConstraint)
        ]
        return min(starts, default=None)

    def _variants(self, context: dict[str, str]) -> list[gp.PriceVariant]:
        return [
            v
            for v in self.info.price_variants or ()
            if all(context.get(key) == value for key, value in v.when.items())
        ]

    def _variant_active(self, context: dict[str, str], at: datetime) -> bool:
        return any(v.constraint is None or v.constraint.active(at) for v in self._variants(context))

    def _constraints(self) -> list[Any]:
        prices = self.info.prices
        conditional = [] if isinstance(prices, gp.ModelPrice) else [c.constraint for c in prices]
        variants = [v.constraint for v in self.info.price_variants or ()]
        return [c for c in conditional + variants if c is not None]


#: Rates ``_rates`` reads that are not per token: per request and per server-side tool call.
_FEE_KEYS = frozenset(
    ("requests_kcount", "web_searches_kcount", "storage_searches_kcount", "code_executions_kcount")
)


def _billed_in_other_units(price: gp.ModelPrice) -> bool:
    """No rate per token, but one in a unit tokenmeter does not meter (whisper-1 by the hour of
    audio, tts-1 by the million characters, OCR by the page): pricing such a model's tokens
    would give a silent $0. A model with no rate at all is free (``:free`` routes)."""
    rated = [
        key
        for key, value in price.__dict__.items()
        if not key.startswith("_") and value is not None and key not in _FEE_KEYS
    ]
    return bool(rated) and not any(key.endswith("_mtok") for key in rated)


def _rate_card(model_id: str, price: gp.ModelPrice) -> RateCard:
    """Flatten genai-prices' (possibly tiered) ModelPrice into base rates plus cliff tiers."""
    values: dict[str, Any] = {
        key: value
        for key, value in price.__dict__.items()
        if not key.startswith("_") and value is not None
    }
    starts = sorted(
        {t.start for v in values.values() if isinstance(v, gp.TieredPrices) for t in v.tiers}
    )
    base = _rates(values, input_tokens=0)
    tiers = tuple((start, _rates(values, input_tokens=start + 1)) for start in starts)
    return RateCard(priced_model=model_id, price_source=SOURCE_NAME, base=base, tiers=tiers)


def _rates(values: dict[str, Any], *, input_tokens: int) -> Rates:
    def rate(key: str) -> Decimal | None:
        value = values.get(key)
        if isinstance(value, gp.TieredPrices):
            chosen = value.base
            for tier in value.tiers:
                if input_tokens > tier.start:
                    chosen = tier.price
            return chosen
        return value

    zero = Decimal(0)
    input_rate = rate("input_mtok") or zero
    output_rate = rate("output_mtok") or zero
    cache_write = _first(rate("cache_write_5m_mtok"), rate("cache_write_mtok"), input_rate)
    requests = rate("requests_kcount")
    cache_read = _first(rate("cache_read_mtok"), input_rate)
    return Rates(
        input_per_mtok=input_rate,
        output_per_mtok=output_rate,
        cache_read_per_mtok=cache_read,
        cache_write_per_mtok=cache_write,
        cache_write_1h_per_mtok=_first(rate("cache_write_1h_mtok"), cache_write),
        input_audio_per_mtok=_first(rate("input_audio_mtok"), input_rate),
        output_audio_per_mtok=_first(rate("output_audio_mtok"), output_rate),
        reasoning_per_mtok=_first(rate("output_reasoning_mtok"), output_rate),
        per_request_usd=zero if requests is None else requests / 1000,
        input_image_per_mtok=_first(rate("input_image_mtok"), input_rate),
        input_video_per_mtok=_first(rate("input_video_mtok"), input_rate),
        output_image_per_mtok=_first(rate("output_image_mtok"), output_rate),
        output_video_per_mtok=_first(rate("output_video_mtok"), output_rate),
        cache_read_audio_per_mtok=_first(rate("cache_audio_read_mtok"), cache_read),
        cache_read_image_per_mtok=_first(rate("cache_image_read_mtok"), cache_read),
        output_citation_per_mtok=_first(rate("output_citation_mtok"), output_rate),
        web_search_per_k=rate("web_searches_kcount") or zero,
        file_search_per_k=rate("storage_searches_kcount") or zero,
        code_execution_per_k=rate("code_executions_kcount") or zero,
    )


def _first(*rates: Decimal | None) -> Decimal:
    for value in rates:
        if value is not None:
            return value
    raise AssertionError("the last fallback is never None")
