"""The swap point between tokenmeter and whatever table it prices from.

A ``PriceSource`` turns a model name into a ``PricedModel``; a ``PricedModel`` answers "which
rates applied at this moment, in this service tier" with a ``RateCard``. The engine only speaks
these types, so genai-prices can be replaced by a vendored table without touching the engine.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, fields, replace
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Literal, Protocol

__all__ = [
    "FEE_FIELDS",
    "GAP",
    "KNOWN_TIERS",
    "REGION_UPLIFT",
    "STANDARD",
    "PriceSource",
    "PricedModel",
    "RateCard",
    "Rates",
    "Tier",
    "known_tier",
    "normalise_tier",
    "split_tier",
    "utc_midnight",
]

#: "fast": fast mode (Anthropic ``usage.speed``, OpenAI ``service_tier``), billed at its own rates.
Tier = Literal["standard", "batch", "flex", "priority", "fast"]
STANDARD: Tier = "standard"

_TIER_NAMES: dict[str, Tier] = {
    "standard": "standard",
    "default": "standard",
    "auto": "standard",
    "scale": "standard",  # OpenAI reserved capacity: billed by contract, not per token
    "on_demand": "standard",
    "batch": "batch",
    "flex": "flex",
    "priority": "priority",
    "fast": "fast",
}


def utc_midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def normalise_tier(tier: str | None) -> Tier:
    """Map the service tier a response reports to one of the tiers we price."""
    if tier is None:
        return STANDARD
    return _TIER_NAMES.get(tier.strip().lower(), STANDARD)


def split_tier(tier: str | None) -> tuple[Tier, str | None]:
    """A tier as a response reported it, and the inference region it names after a ``+``
    (``"fast+us"``: Anthropic's ``usage.inference_geo``), when that region is billed above
    the global rates (``REGION_UPLIFT``)."""
    if tier is None or "+" not in tier:
        return normalise_tier(tier), None
    name, _, region = tier.partition("+")
    region = region.strip().lower()
    return normalise_tier(name), region if region in REGION_UPLIFT else None


def known_tier(tier: str) -> bool:
    """``tier`` is a tier name ``normalise_tier`` knows, with at most a region after a ``+``
    that is ``"global"`` or billed above it. A response's unknown tier is billed as standard;
    a caller's (``tokenmeter.price(tier="bacth")``) is a typo, to be refused, not priced."""
    name, plus, region = tier.partition("+")
    region = region.strip().lower()
    return name.strip().lower() in _TIER_NAMES and (
        not plus or region == "global" or region in REGION_UPLIFT
    )


#: Each inference region billed at a multiple of the global rates: Anthropic bills US-only
#: inference (``inference_geo: "us"``, Opus 4.6, Sonnet 4.6 and later) at 1.1x every token
#: class (``_errata.regional``).
REGION_UPLIFT = {"us": Decimal("1.1")}
#: ``known_tier``'s names, for a message that refuses another.
KNOWN_TIERS = (
    f"{', '.join(_TIER_NAMES)}, optionally followed by "
    f"{' or '.join(f'+{region}' for region in (*REGION_UPLIFT, 'global'))}"
)


#: A rate a source did not give: filled in by ``Rates`` from the rate that class is billed at.
GAP = Decimal("NaN")
#: Per-request fees, in USD per 1,000 requests: not scaled by service-tier discounts.
FEE_FIELDS = (
    "per_request_usd",
    "per_request_medium_usd",
    "per_request_high_usd",
    "web_search_per_k",
    "web_search_preview_per_k",
    "file_search_per_k",
    "code_execution_per_k",
    "x_search_per_k",
)


@dataclass(frozen=True, slots=True)
class Rates:
    """USD per million tokens for every token class, with no gaps.

    A source that has no separate rate for a class fills in the rate that class is billed at
    (e.g. cache writes at the input rate when the table has no cache-write price), so pricing is
    a plain dot product. The modality rates after ``reasoning_per_mtok`` may be left out (``GAP``):
    they then take the text rate of their side (image input at the input rate, and so on).
    """

    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cache_read_per_mtok: Decimal
    #: Cache writes with the default (5-minute) TTL.
    cache_write_per_mtok: Decimal
    cache_write_1h_per_mtok: Decimal
    input_audio_per_mtok: Decimal
    output_audio_per_mtok: Decimal
    reasoning_per_mtok: Decimal
    #: A flat fee per call (a few providers charge one), in USD.
    per_request_usd: Decimal = Decimal(0)
    input_image_per_mtok: Decimal = GAP
    input_video_per_mtok: Decimal = GAP
    output_image_per_mtok: Decimal = GAP
    output_video_per_mtok: Decimal = GAP
    cache_read_audio_per_mtok: Decimal = GAP
    cache_read_image_per_mtok: Decimal = GAP
    output_citation_per_mtok: Decimal = GAP
    #: Server-side tool requests, USD per 1,000 (0 where a tool is billed by its tokens only).
    web_search_per_k: Decimal = Decimal(0)
    file_search_per_k: Decimal = Decimal(0)
    code_execution_per_k: Decimal = Decimal(0)
    #: xAI's X search tool.
    x_search_per_k: Decimal = Decimal(0)
    #: OpenAI's ``web_search_preview`` tool: the web search fee unless a model's differs.
    web_search_preview_per_k: Decimal = GAP
    #: The fee per call when the answer reports a larger search context (Perplexity's
    #: ``search_context_size`` medium or high; ``per_request_usd`` is low's): the same fee
    #: unless a model's differs.
    per_request_medium_usd: Decimal = GAP
    per_request_high_usd: Decimal = GAP

    def __post_init__(self) -> None:
        fills = (
            ("input_image_per_mtok", self.input_per_mtok),
            ("input_video_per_mtok", self.input_per_mtok),
            ("output_image_per_mtok", self.output_per_mtok),
            ("output_video_per_mtok", self.output_per_mtok),
            ("cache_read_audio_per_mtok", self.cache_read_per_mtok),
            ("cache_read_image_per_mtok", self.cache_read_per_mtok),
            ("output_citation_per_mtok", self.output_per_mtok),
            ("web_search_preview_per_k", self.web_search_per_k),
            ("per_request_medium_usd", self.per_request_usd),
            ("per_request_high_usd", self.per_request_usd),
        )
        for name, rate in fills:
            if getattr(self, name).is_nan():
                object.__setattr__(self, name, rate)

    def scaled(self, factors: Rates) -> Rates:
        """Multiply every rate by the matching field of ``factors``."""
        return Rates(
            **{f.name: getattr(self, f.name) * getattr(factors, f.name) for f in fields(self)}
        )

    def with_rates(self, **changes: Decimal) -> Rates:
        return replace(self, **changes)


@dataclass(frozen=True, slots=True)
class RateCard:
    """The rates one model had at one moment in one service tier.

    ``tiers`` holds long-context prices: ``(start, rates)`` applies to EVERY token of a call whose
    total input (cache included) is above ``start`` (a cliff, as Google and Anthropic bill).
    """

    priced_model: str
    price_source: str
    base: Rates
    tiers: tuple[tuple[int, Rates], ...] = ()
    #: Where the tier rates come from, when not from ``price_source`` (an erratum adding a tier).
    tiers_price_source: str | None = None

    def rates_for(self, input_tokens: int) -> Rates:
        for start, rates in reversed(self.tiers):
            if input_tokens > start:
                return rates
        return self.base


class PricedModel(Protocol):
    """One model as a source knows it."""

    @property
    def time_dependent(self) -> bool:
        """True when prices change within a UTC day (off-peak windows)."""
        ...

    def time_slot(self, at: datetime) -> Hashable:
        """Cache key part for ``at`` within its day; only called when ``time_dependent``."""
        ...

    def rate_card(self, at: datetime, tier: Tier) -> RateCard | None:
        """Rates in effect at ``at`` (UTC) for ``tier``; None when not priced at that moment."""
        ...

    def tier_start(self, tier: Tier) -> date | None:
        """First day from which this source prices ``tier`` for the model (None: never)."""
        ...


class PriceSource(Protocol):
    """Resolves an already-normalised model name (and optional provider id) to a PricedModel."""

    def find(self, provider: str | None, model: str) -> PricedModel | None: ...
