"""tokenmeter's corrections to known genai-prices 0.2.3 data bugs (research: anchors-pricing §2.8).

Each correction only fills a gap it can detect in the card it is given, so it retires itself as
soon as genai-prices ships the fix. A corrected card carries ``price_source="tokenmeter-errata"``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable
from dataclasses import dataclass, fields, replace
from datetime import date, datetime
from decimal import Decimal

from ._source import (
    FEE_FIELDS,
    REGION_UPLIFT,
    STANDARD,
    PricedModel,
    PriceSource,
    RateCard,
    Rates,
    Tier,
    utc_midnight,
)

__all__ = [
    "ERRATA_SOURCE",
    "ErrataSource",
    "fine_tune_at_base_rates",
    "provider_tool_fees",
    "regional",
]

ERRATA_SOURCE = "tokenmeter-errata"

_HALF = Decimal("0.5")
#: Providers whose flex tier is billed at half the standard rates (OpenAI at its Batch API rates,
#: Gemini's Flex inference). Another's flex without a flex price is billed as standard: Groq's
#: flex tier is billed at its on-demand prices.
_FLEX_AT_HALF = frozenset({"openai", "google"})
_O3_PRICE_CUT = date(2025, 6, 10)
#: Fast mode's multiple of the standard rates (every token class, cache reads and writes
#: included; Anthropic's fast-mode page) for models genai-prices has no fast price for:
#: claude-opus-4-6, the first model with fast mode, at $30 / $150 per million.
_FAST_MODE = {"claude-opus-4-6": Decimal(6)}
#: OpenAI's list prices per million tokens (input, cached input, output) for inference on the
#: fine-tunes genai-prices 0.2.3 has no ``ft:`` entry for: OpenAI's pricing page
#: (https://openai.com/api/pricing, "Fine-tuning" section; LiteLLM's
#: ``ft:gpt-4.1*-2025-04-14`` rows have the same figures). Their base models bill half and
#: less ($2 / $0.50 / $8 for gpt-4.1). Batch and flex follow the tier rules below (50 %).
_FINE_TUNES: dict[str, tuple[Decimal, Decimal, Decimal]] = {
    "ft:gpt-4.1": (Decimal(3), Decimal("0.75"), Decimal(12)),
    "ft:gpt-4.1-mini": (Decimal("0.80"), Decimal("0.20"), Decimal("3.20")),
    "ft:gpt-4.1-nano": (Decimal("0.20"), Decimal("0.05"), Decimal("0.80")),
}
_FINE_TUNE_PROVIDER = "openai"
_OPENROUTER = "openrouter"
#: OpenRouter's vendor prefix (``openai/gpt-4o-audio-preview``) -> the first-party table that
#: prices the model under the rest of the name. OpenRouter passes the vendor's list price on.
_OPENROUTER_VENDORS = {
    "openai": "openai",
    "google": "google",
    "anthropic": "anthropic",
    "x-ai": "x-ai",
    "mistralai": "mistral",
}
#: Each rate per modality, and the text rate of its side a card without one has in its place.
_MODALITY_TEXT_RATES = {
    "input_audio_per_mtok": "input_per_mtok",
    "input_image_per_mtok": "input_per_mtok",
    "input_video_per_mtok": "input_per_mtok",
    "output_audio_per_mtok": "output_per_mtok",
    "output_image_per_mtok": "output_per_mtok",
    "output_video_per_mtok": "output_per_mtok",
    "cache_read_audio_per_mtok": "cache_read_per_mtok",
    "cache_read_image_per_mtok": "cache_read_per_mtok",
}


class ErrataSource:
    """Wraps a source and corrects the cards it returns."""

    def __init__(self, inner: PriceSource) -> None:
        self._inner = inner

    def find(self, provider: str | None, model: str) -> PricedModel | None:
        found = self._inner.find(provider, model) or self._fine_tune(provider, model)
        if found is None:
            return None
        first_party = None
        if provider == _OPENROUTER and getattr(found, "provider", None) == _OPENROUTER:
            first_party = self._first_party_of_openrouter(model)
        return _Corrected(found, model, first_party)

    def find_in_any_provider(self, model: str) -> PricedModel | None:
        find = getattr(self._inner, "find_in_any_provider", None)
        found = find(model) if find is not None else None
        return None if found is None else _Corrected(found, model)

    def model_names(self) -> list[str]:
        names = getattr(self._inner, "model_names", None)
        return [*(names() if names is not None else ()), *_FINE_TUNES]

    def _first_party_of_openrouter(self, model: str) -> _Corrected | None:
        """The first-party model an OpenRouter name (``openai/gpt-4o-audio-preview``) names: the
        entry the first party's table matches the rest of the name to, by the table's own aliases
        and match rules, as a call to that provider is priced (``google/gemini-3-pro-image`` is
        Google's ``gemini-3-pro-image-preview`` entry, which lists ``gemini-3-pro-image`` as an
        alias). Its modality rates are the ones OpenRouter bills where its own table has none
        (``_Corrected._first_party_modalities``). A route (``:free``, ``:online``) or another
        vendor's prefix names none."""
        vendor, slash, name = model.partition("/")
        table = _OPENROUTER_VENDORS.get(vendor)
        if table is None or not slash or not name or "/" in name or ":" in name:
            return None
        found = self._inner.find(table, name)
        if found is None or getattr(found, "provider", None) != table:
            return None
        return _Corrected(found, name)

    def _fine_tune(self, provider: str | None, model: str) -> PricedModel | None:
        """An OpenAI fine-tune the inner table has no ``ft:`` entry for, at its list rates."""
        rates = _FINE_TUNES.get(model)
        if rates is None or provider not in (None, _FINE_TUNE_PROVIDER):
            return None
        base_name = model.removeprefix("ft:")
        base = self._inner.find(_FINE_TUNE_PROVIDER, base_name)
        return None if base is None else _FineTune(_Corrected(base, base_name), model, *rates)


@dataclass(frozen=True)
class _Corrected:
    inner: PricedModel
    requested: str
    #: For an OpenRouter model, the first party's (``ErrataSource._first_party_of_openrouter``).
    first_party: _Corrected | None = None

    @property
    def time_dependent(self) -> bool:
        first_party = self.first_party
        return self.inner.time_dependent or (first_party is not None and first_party.time_dependent)

    @property
    def provider(self) -> str | None:
        return getattr(self.inner, "provider", None)

    def time_slot(self, at: datetime) -> Hashable:
        if self.first_party is None:
            return self.inner.time_slot(at)
        return (self.inner.time_slot(at), self.first_party.time_slot(at))

    def tier_start(self, tier: Tier) -> date | None:
        return date.min if tier in ("batch", "flex") else self.inner.tier_start(tier)

    def rate_card(self, at: datetime, tier: Tier) -> RateCard | None:
        card = self.inner.rate_card(at, tier)
        if card is None:
            if tier == STANDARD:  # not priced per token at all
                return None
            card = self._tier_before_its_start(at, tier)
            if card is None:
                return None
        for correct in _DATA_CORRECTIONS:
            card = correct(card, self.requested, at)
        if self.first_party is not None:
            card = self._first_party_modalities(card, self.first_party, at, tier)
        return provider_tool_fees(card, self.provider, at)

    def _first_party_modalities(
        self, card: RateCard, first_party: _Corrected, at: datetime, tier: Tier
    ) -> RateCard:
        """An OpenRouter card with the first party's rate for each modality it has no rate of its
        own for: genai-prices' OpenRouter table has none, so openai/gpt-4o-audio-preview's audio
        was billed at the $2.50 text rate where OpenRouter lists $40 per million (16x low), and
        Gemini's output images at $2.50 where Google's $30 applies. Only where the first party's
        text rates of that side are OpenRouter's (the list price passed on, as OpenRouter does)
        and it has a rate of its own; a rate OpenRouter's table has is never changed."""
        listed = first_party.rate_card(at, tier)
        if listed is None:
            return card
        changed = replace(
            card,
            base=_missing_modalities_from(card.base, listed.base),
            tiers=tuple(
                (start, _missing_modalities_from(rates, listed.rates_for(start + 1)))
                for start, rates in card.tiers
            ),
        )
        return card if changed == card else replace(changed, price_source=ERRATA_SOURCE)

    def _tier_before_its_start(self, at: datetime, tier: Tier) -> RateCard | None:
        """Batch/flex/priority where genai-prices has no variant price in effect at ``at``.

        Before the variant's start date, use the tier's discount as genai-prices has it from its
        start date, applied to the standard rates of ``at`` (``_discounted_as``: a long-context
        tier at its own discount); batch and flex without any variant
        are 50 % (OpenAI, Anthropic and Google have billed batch at half price since long before
        those dates), flex only from a provider that discounts it (``_FLEX_AT_HALF``); a priority
        tier, or another provider's flex, without any figure is billed at the standard rates. The
        card's ``price_source`` names the rule that applied.
        """
        standard = self.rate_card(at, STANDARD)
        if standard is None:
            return None
        start = self.inner.tier_start(tier)
        discounted: RateCard | None = None
        rule = ""
        if start is not None and start > at.date():
            first_day = utc_midnight(start)
            tier_card = self.inner.rate_card(first_day, tier)
            standard_then = self.inner.rate_card(first_day, STANDARD)
            if tier_card is not None and standard_then is not None:
                discounted = _discounted_as(standard, tier_card, standard_then)
                rule = f"{tier} at its {start.isoformat()} discount on standard rates"
        if discounted is None and tier == "fast" and standard.priced_model in _FAST_MODE:
            fast = _uniform(_FAST_MODE[standard.priced_model])
            discounted = _each_rates(standard, lambda rates: rates.scaled(fast))
            rule = f"fast at {_FAST_MODE[standard.priced_model]}x standard rates"
        if discounted is None:
            if tier != "batch" and (tier != "flex" or self.provider not in _FLEX_AT_HALF):
                # No figure for this tier at all: billed like genai-prices does, and said so.
                return replace(
                    standard,
                    price_source=f"{standard.price_source}; {tier} at standard rates "
                    f"(no {tier} price known)",
                )
            half = _uniform(_HALF)
            discounted = _each_rates(standard, lambda rates: rates.scaled(half))
            rule = f"{tier} at 50% of standard rates (no {tier} price known)"
        return RateCard(
            priced_model=standard.priced_model,
            price_source=f"{ERRATA_SOURCE}: {rule}",
            base=discounted.base,
            tiers=discounted.tiers,
        )


@dataclass(frozen=True)
class _FineTune:
    """An OpenAI fine-tune at its own rates per token (``_FINE_TUNES``) and its base model's
    fees per tool request. Only its standard rates are known: the other tiers are left to
    ``_Corrected``'s rules for a tier without a price (batch and flex at 50 %)."""

    base: PricedModel
    name: str
    input_per_mtok: Decimal
    cache_read_per_mtok: Decimal
    output_per_mtok: Decimal
    provider: str = _FINE_TUNE_PROVIDER

    @property
    def time_dependent(self) -> bool:
        return self.base.time_dependent

    def time_slot(self, at: datetime) -> Hashable:
        return self.base.time_slot(at)

    def tier_start(self, tier: Tier) -> date | None:
        return date.min if tier == STANDARD else None

    def rate_card(self, at: datetime, tier: Tier) -> RateCard | None:
        base = self.base.rate_card(at, STANDARD) if tier == STANDARD else None
        if base is None:
            return None
        paid_in, paid_out = self.input_per_mtok, self.output_per_mtok
        rates = Rates(
            input_per_mtok=paid_in,
            output_per_mtok=paid_out,
            cache_read_per_mtok=self.cache_read_per_mtok,
            cache_write_per_mtok=paid_in,
            cache_write_1h_per_mtok=paid_in,
            input_audio_per_mtok=paid_in,
            output_audio_per_mtok=paid_out,
            reasoning_per_mtok=paid_out,
            **{name: getattr(base.base, name) for name in FEE_FIELDS},
        )
        return RateCard(priced_model=self.name, price_source=ERRATA_SOURCE, base=rates)


def fine_tune_at_base_rates(card: RateCard) -> RateCard:
    """``card``, its base model's, for a fine-tune no table has a price for: billed as the
    base (OpenAI bills fine-tunes more), and ``price_source`` says so."""
    source = f"{card.price_source}; fine-tune at base rates (no fine-tune price known)"
    return replace(card, price_source=source)


def regional(card: RateCard, region: str) -> RateCard:
    """``card`` for inference kept in ``region``: every token rate at the region's multiple
    (fees per request are not scaled), and ``price_source`` says so."""
    factors = _uniform(REGION_UPLIFT[region])
    source = f"{card.price_source}; {region.upper()}-only inference at {REGION_UPLIFT[region]}x"
    return _each_rates(replace(card, price_source=source), lambda rates: rates.scaled(factors))


def _each_rates(card: RateCard, change: Callable[[Rates], Rates]) -> RateCard:
    """``card`` with ``change`` made to its base rates and to each long-context tier's."""
    return replace(
        card,
        base=change(card.base),
        tiers=tuple((start, change(rates)) for start, rates in card.tiers),
    )


def _corrected_each(card: RateCard, fix: Callable[[Rates], Rates]) -> RateCard:
    """``card`` with ``fix`` made to each of its rates (``_each_rates``), its base's and its
    tiers' price source naming the errata where the fix changed them."""
    corrected = _each_rates(card, fix)
    if corrected == card:
        return card
    return replace(
        corrected,
        price_source=ERRATA_SOURCE if corrected.base != card.base else card.price_source,
        tiers_price_source=ERRATA_SOURCE
        if corrected.tiers != card.tiers
        else card.tiers_price_source,
    )


def _discounted_as(standard: RateCard, variant: RateCard, standard_then: RateCard) -> RateCard:
    """``standard`` (a call's day) at ``variant``'s ratio to ``standard_then`` (the variant's
    first day), the base rates and each long-context tier at the ratio for an input of that size:
    a variant with no tier of its own there (genai-prices' flat priority of gpt-5.4 and gpt-5.5)
    stays at its flat rates above it. Scaling standard's tier by the base ratio priced a >272k
    priority call the day before the start date at twice the standard tier (about 1.9x the next
    day's price). Multiplied before divided: a rate the same on both days is ``variant``'s exactly.
    """

    def rebased(rates: Rates, input_tokens: int) -> Rates:
        paid = variant.rates_for(input_tokens)
        listed = standard_then.rates_for(input_tokens)

        def rate(name: str) -> Decimal:
            now: Decimal = getattr(rates, name)
            then: Decimal = getattr(listed, name)
            return now * getattr(paid, name) / then if then else now

        return Rates(**{f.name: rate(f.name) for f in fields(Rates)})

    return replace(
        standard,
        base=rebased(standard.base, 0),
        tiers=tuple((start, rebased(rates, start + 1)) for start, rates in standard.tiers),
    )


def _missing_modalities_from(rates: Rates, listed: Rates) -> Rates:
    """``rates`` with ``listed``'s rate for each modality ``rates`` bills at its side's text rate
    and ``listed`` does not, where the two have that text rate alike."""
    taken = {
        modality: getattr(listed, modality)
        for modality, text in _MODALITY_TEXT_RATES.items()
        if getattr(rates, modality) == getattr(rates, text) == getattr(listed, text)
        and getattr(listed, modality) != getattr(listed, text)
    }
    return rates.with_rates(**taken) if taken else rates


def _uniform(factor: Decimal) -> Rates:
    """``factor`` for every token rate; per-request fees are not discounted."""
    return Rates(**{f.name: Decimal(1) if f.name in FEE_FIELDS else factor for f in fields(Rates)})


def _by_side(
    *,
    input_side: Decimal = Decimal(1),
    output_side: Decimal = Decimal(1),
    cache_read: Decimal | None = None,
) -> Rates:
    """Factors for ``Rates.scaled`` naming sides of a call rather than fields, so that a modality
    rate (image, video, audio, citations) is never left behind by a correction of the text rate:
    ``input_side`` for every ``input_*``, ``cache_read_*`` and ``cache_write_*`` rate,
    ``output_side`` for every ``output_*`` and ``reasoning_*`` one, ``cache_read`` (default
    ``input_side``) for the ``cache_read_*`` ones alone. Per-request fees are left as they are."""
    reading = input_side if cache_read is None else cache_read

    def factor(name: str) -> Decimal:
        if name in FEE_FIELDS:
            return Decimal(1)
        if name.startswith("cache_read_"):
            return reading
        if name.startswith(("input_", "cache_write_")):
            return input_side
        if name.startswith(("output_", "reasoning_")):
            return output_side
        raise AssertionError(f"Rates.{name} is on no side of a call: give it one here")

    return Rates(**{f.name: factor(f.name) for f in fields(Rates)})


def _mark(card: RateCard, base: Rates) -> RateCard:
    return replace(card, price_source=ERRATA_SOURCE, base=base)


def _gpt4o_audio_preview(card: RateCard, requested: str, at: datetime) -> RateCard:
    """gpt-4o-audio-preview and gpt-4o-mini-audio-preview have no audio rates in genai-prices:
    audio billed as text (OpenAI's list: $40 / $80 and $10 / $20 per million audio tokens)."""
    base = card.base
    if (
        card.priced_model not in ("gpt-4o-audio-preview", "gpt-4o-mini-audio-preview")
        or base.input_audio_per_mtok != base.input_per_mtok
    ):
        return card
    if card.priced_model == "gpt-4o-mini-audio-preview":
        audio_in, audio_out = Decimal(10), Decimal(20)
    elif "2024-10-01" in requested:  # the first snapshot
        audio_in, audio_out = Decimal(100), Decimal(200)
    else:
        audio_in, audio_out = Decimal(40), Decimal(80)
    return _mark(
        card,
        base=base.with_rates(input_audio_per_mtok=audio_in, output_audio_per_mtok=audio_out),
    )


#: gpt-4o-realtime-preview-2024-10-01, the first Realtime snapshot, as OpenAI listed it per
#: million audio tokens (input, cached input, output): the December 2024 cut to $40 / $2.50 / $80
#: was for the new 2024-12-17 snapshot only. genai-prices has one entry for every snapshot.
_REALTIME_FIRST_SNAPSHOT = "2024-10-01"
_REALTIME_FIRST_AUDIO = (Decimal(100), Decimal(20), Decimal(200))


def _gpt4o_realtime_first_snapshot(card: RateCard, requested: str, at: datetime) -> RateCard:
    """gpt-4o-realtime-preview-2024-10-01's audio at its own rates, not the later snapshot's
    (a call was 2.3x low), as ``_gpt4o_audio_preview`` does for its sibling of that day."""
    if card.priced_model != "gpt-4o-realtime-preview" or _REALTIME_FIRST_SNAPSHOT not in requested:
        return card
    audio_in, cached_audio, audio_out = _REALTIME_FIRST_AUDIO
    return _mark(
        card,
        base=card.base.with_rates(
            input_audio_per_mtok=audio_in,
            cache_read_audio_per_mtok=cached_audio,
            output_audio_per_mtok=audio_out,
        ),
    )


#: Gemini 1.5 Flash-8B, which genai-prices has no entry of its own for: its
#: ``gemini-1.5-flash`` entry matches any name containing that, so Flash-8B was priced as 1.5
#: Flash. Google listed Flash-8B at half of 1.5 Flash's rates ($0.0375 / $0.15 per million, x2
#: above 128k), its cached input at $0.01 (and $0.02 above 128k) rather than half of $0.01875.
_FLASH_8B = "gemini-1.5-flash-8b"
_FLASH_8B_PRICED_AS = "gemini-1.5-flash"
_FLASH_8B_CACHE_READ = (Decimal("0.01"), Decimal("0.02"))  # up to 128k input, above it


def _gemini_1_5_flash_8b(card: RateCard, requested: str, at: datetime) -> RateCard:
    """Flash-8B at its own list rates (half of 1.5 Flash's), not 1.5 Flash's (2x): a known
    price, so a call is priced rather than refused. Only while the card is 1.5 Flash's."""
    if card.priced_model != _FLASH_8B_PRICED_AS or _FLASH_8B not in requested:
        return card
    half = _uniform(_HALF)

    def flash_8b(rates: Rates, cached: Decimal) -> Rates:
        return rates.scaled(half).with_rates(
            cache_read_per_mtok=cached,
            cache_read_audio_per_mtok=cached,
            cache_read_image_per_mtok=cached,
        )

    base_cached, tier_cached = _FLASH_8B_CACHE_READ
    return replace(
        card,
        priced_model=_FLASH_8B,
        price_source=ERRATA_SOURCE,
        base=flash_8b(card.base, base_cached),
        tiers=tuple((start, flash_8b(rates, tier_cached)) for start, rates in card.tiers),
        tiers_price_source=ERRATA_SOURCE if card.tiers else card.tiers_price_source,
    )


#: Claude Sonnet 4 as each table names it: Anthropic's, Bedrock's (regional and global
#: profiles), Vertex's and OpenRouter's.
_SONNET_4 = re.compile(r"(?:^|[./])claude-sonnet-4(?:-0|-20250514(?:-v1:0)?)?$|^claude-4-sonnet$")


def _sonnet_4_long_context(card: RateCard, requested: str, at: datetime) -> RateCard:
    """Claude Sonnet 4 lacks the >200k (1M-context) tier that claude-sonnet-4-5 has, in every
    table that prices it (Anthropic, Bedrock, Vertex and OpenRouter bill it alike): every input
    rate doubled and every output rate at 1.5x, images, audio and cached tokens included, as
    Anthropic bills image tokens as input tokens."""
    if card.tiers or not _SONNET_4.search(card.priced_model):
        return card
    long_context = card.base.scaled(_by_side(input_side=Decimal(2), output_side=Decimal("1.5")))
    return replace(card, tiers=((200_000, long_context),), tiers_price_source=ERRATA_SOURCE)


def _o3_launch_cache_rate(card: RateCard, requested: str, at: datetime) -> RateCard:
    """o3 before its 2025-06-10 price cut: cached input was $2.50 (a quarter of $10), not $0.50."""
    base = card.base
    if (
        card.priced_model != "o3"
        or at.date() >= _O3_PRICE_CUT
        or base.cache_read_per_mtok * 20 != base.input_per_mtok
    ):
        return card
    # A quarter of the input rate where genai-prices has a twentieth: five times its cached rates,
    # image and audio ones too, which follow the text one (genai-prices has the cut price there).
    return _mark(card, base=base.scaled(_by_side(cache_read=Decimal(5))))


#: Gemini 1.5 Pro and Flash before their price cuts, as Google listed them per million tokens
#: (twice that above 128k input): Pro $3.50 / $10.50 until 2024-10-01, Flash $0.35 / $1.05
#: until 2024-08-12, cached input a quarter of the input rate throughout. genai-prices has the
#: cut prices alone: the day of the cut, then (input, output) after it and before it.
_GEMINI_1_5_LAUNCH: dict[str, tuple[date, tuple[Decimal, Decimal], tuple[Decimal, Decimal]]] = {
    "gemini-1.5-pro": (
        date(2024, 10, 1),
        (Decimal("1.25"), Decimal("5.00")),
        (Decimal("3.50"), Decimal("10.50")),
    ),
    "gemini-1.5-flash": (
        date(2024, 8, 12),
        (Decimal("0.075"), Decimal("0.30")),
        (Decimal("0.35"), Decimal("1.05")),
    ),
}
_GEMINI_1_5_PRO = "gemini-1.5-pro"
_QUARTER = Decimal("0.25")


def _gemini_1_5_pro_cache_reads(card: RateCard, requested: str, at: datetime) -> RateCard:
    """Gemini 1.5 Pro's cached input at a quarter of its input rate ($0.3125 per million, $0.625
    above 128k), not at the full rate a card without a cache-read rate bills (4x). Each rate
    only while it bills cache reads at its input rate."""
    if card.priced_model != _GEMINI_1_5_PRO:
        return card

    def fixed(rates: Rates) -> Rates:
        if rates.cache_read_per_mtok != rates.input_per_mtok:
            return rates
        return rates.scaled(_by_side(cache_read=_QUARTER))

    return _corrected_each(card, fixed)


def _gemini_1_5_launch_rates(card: RateCard, requested: str, at: datetime) -> RateCard:
    """Gemini 1.5 Pro and Flash at the prices in effect before their 2024 cuts (a backfilled
    call of the summer of 2024 was 2.6x to 4.3x low), only while the card has the cut price."""
    launch = _GEMINI_1_5_LAUNCH.get(card.priced_model)
    if launch is None:
        return card
    cut, (cut_input, cut_output), (input_then, output_then) = launch
    if at.date() >= cut or card.base.input_per_mtok != cut_input:
        return card
    # Each rate times the launch price, divided by the cut one: exact, where a factor (14/3) is not.
    times = _by_side(input_side=input_then, output_side=output_then)
    over = _by_side(input_side=cut_input, output_side=cut_output)

    def then(rates: Rates) -> Rates:
        return Rates(
            **{
                f.name: getattr(rates, f.name) * getattr(times, f.name) / getattr(over, f.name)
                for f in fields(Rates)
            }
        )

    return _corrected_each(card, then)


#: A Claude model as any table names it (``claude-opus-4-1@20250805``,
#: ``anthropic.claude-sonnet-4-20250514-v1:0``, ``anthropic/claude-sonnet-4.5``).
_CLAUDE = re.compile(r"(?:^|[./])claude-")
_CLAUDE_1H_WRITE = Decimal(2)


def _claude_1h_cache_writes(card: RateCard, requested: str, at: datetime) -> RateCard:
    """Claude's 1-hour cache writes at twice the input rate, as Anthropic bills them on every
    platform. genai-prices' Vertex, Bedrock and OpenRouter entries of several Claude models
    (sonnet-4, opus-4-1, 3-5-haiku) have no 1-hour rate, and a card without one bills them at
    the 5-minute rate (1.25x input): 100k such writes on Sonnet 4 were $0.375, not $0.60. Only
    the base rates and tiers that bill them at a 5-minute rate of their own are changed."""
    if not _CLAUDE.search(card.priced_model):
        return card

    def fixed(rates: Rates) -> Rates:
        write = rates.cache_write_per_mtok
        if rates.cache_write_1h_per_mtok != write or write == rates.input_per_mtok:
            return rates  # a 1-hour rate of its own, or no caching (claude-2: writes as input)
        return rates.with_rates(cache_write_1h_per_mtok=rates.input_per_mtok * _CLAUDE_1H_WRITE)

    return _corrected_each(card, fixed)


#: OpenAI's 12-hour cache writes as a multiple of the input rate, for the models whose 12-hour
#: rate is published: gpt-6.1-terra's $2.50 per million beside $1.00 input (OpenAI's model
#: page, as genai-prices 0.2.3's own entry quotes it: "The 12-hour retention rate ($2.50) is
#: not modeled"). Its long-context, flex, priority and batch rates scale the input and cache
#: rates alike, so the multiple holds in each. A model not listed bills its 12-hour writes at
#: the 30-minute rate (docs/pricing.md's known limits).
_OPENAI_12H_WRITE = {"gpt-6.1-terra": Decimal("2.5")}


def _openai_12h_cache_writes(card: RateCard, requested: str, at: datetime) -> RateCard:
    """OpenAI's 12-hour cache writes (read into the long-TTL write class, ``cache_write_1h``)
    at their own rate where genai-prices has the 30-minute rate alone: 50,000 such writes on
    gpt-6.1-terra were $0.0625, not $0.125."""
    multiple = _OPENAI_12H_WRITE.get(card.priced_model)
    if multiple is None:
        return card

    def fixed(rates: Rates) -> Rates:
        if rates.cache_write_1h_per_mtok != rates.cache_write_per_mtok:
            return rates  # a long-TTL rate of its own
        return rates.with_rates(cache_write_1h_per_mtok=rates.input_per_mtok * multiple)

    return _corrected_each(card, fixed)


#: OpenAI's fine-tunes of gpt-4o-2024-08-06 and gpt-4o-mini-2024-07-18 as genai-prices 0.2.3 names
#: them (``ft:gpt-4o``, ``ft:gpt-4o-mini``, and ``gpt-4o-mini-2024-07-18.ft-``, the spelling of
#: its own that an answer may name the mini one by): entries with input and output rates alone.
#: OpenAI lists their cached input at half the input rate ($1.875 beside $3.75, $0.15 beside
#: $0.30: its pricing page, "Fine-tuning"; LiteLLM's ``ft:gpt-4o*`` rows have the same figures).
_FINE_TUNE_HALF_CACHE_READ = frozenset(
    {"ft:gpt-4o", "ft:gpt-4o-mini", "gpt-4o-mini-2024-07-18.ft-"}
)


def _gpt4o_fine_tune_cache_reads(card: RateCard, requested: str, at: datetime) -> RateCard:
    """Cached input of a gpt-4o or gpt-4o-mini fine-tune at half its input rate, not at the full
    rate a card without a cache-read rate bills: 8,000 cached tokens on ft:gpt-4o were $0.030,
    not $0.015. Each rate of the card (its batch variant's too) only while it bills cache reads
    at its input rate, so a table that gains the rate keeps its own."""
    if card.priced_model not in _FINE_TUNE_HALF_CACHE_READ:
        return card
    half_cache_read = _by_side(cache_read=_HALF)

    def fixed(rates: Rates) -> Rates:
        if rates.cache_read_per_mtok != rates.input_per_mtok:
            return rates  # a cache-read rate of its own
        return rates.scaled(half_cache_read)

    return _corrected_each(card, fixed)


#: OpenAI's models without reasoning (gpt-4o, gpt-4.1 and their minis), whose
#: ``web_search_preview`` calls cost $25 per 1,000 (the search content's tokens free) where
#: every other web search costs $10 (OpenAI's pricing page; genai-prices has one fee).
_PREVIEW_SEARCH_AT_25 = re.compile(r"^(chatgpt-4o|gpt-4o|gpt-4\.1)")
_PREVIEW_SEARCH_FEE = Decimal(25)


def _web_search_preview_fee(card: RateCard, requested: str, at: datetime) -> RateCard:
    base = card.base
    if (
        not _PREVIEW_SEARCH_AT_25.match(card.priced_model)
        or base.web_search_preview_per_k != base.web_search_per_k
    ):
        return card
    return _each_rates(
        card, lambda rates: rates.with_rates(web_search_preview_per_k=_PREVIEW_SEARCH_FEE)
    )


#: Gemini 2.5 Flash's previews (04-17, 05-20, and their ``:thinking`` spellings, which
#: genai-prices prices as one model) as Google listed them: output $0.60 per million without
#: thinking, $3.50 for thinking; audio input $1.00 (text, image and video $0.15). genai-prices
#: has the non-thinking output rate for the thoughts too, and the text rate for audio.
_FLASH_PREVIEW = "gemini-2.5-flash-preview"
_FLASH_PREVIEW_THINKING = Decimal("3.50")
_FLASH_PREVIEW_AUDIO_IN = Decimal("1.00")


def _flash_preview_thinking(card: RateCard, requested: str, at: datetime) -> RateCard:
    """Gemini 2.5 Flash preview's thinking tokens at $3.50 per million and its audio input at
    $1.00 (a backfilled call of April to July 2025 was 2.9x to 4.9x low). Only the thoughts
    are counted apart: the text of a thinking call stays at the $0.60 output rate."""
    base = card.base
    if card.priced_model != _FLASH_PREVIEW:
        return card
    gaps: dict[str, Decimal] = {}  # each rate only while genai-prices bills it as text
    if base.reasoning_per_mtok == base.output_per_mtok:
        gaps["reasoning_per_mtok"] = _FLASH_PREVIEW_THINKING
    if base.input_audio_per_mtok == base.input_per_mtok:
        gaps["input_audio_per_mtok"] = _FLASH_PREVIEW_AUDIO_IN
    return _mark(card, base=base.with_rates(**gaps)) if gaps else card


#: Perplexity's fees per 1,000 requests of its sonar models by the search context size an answer
#: reports (low, its default; medium; high), from Perplexity's pricing page
#: (https://docs.perplexity.ai/getting-started/pricing). genai-prices has the high one alone
#: ("we just take the highest price shown"): a default call was charged twice its fee.
#: sonar-deep-research is billed per search query instead (``num_search_queries``).
_SONAR_REQUEST_FEES: dict[str, tuple[Decimal, Decimal, Decimal]] = {
    "sonar": (Decimal(5), Decimal(8), Decimal(12)),
    "sonar-reasoning": (Decimal(5), Decimal(8), Decimal(12)),
    "sonar-pro": (Decimal(6), Decimal(10), Decimal(14)),
    "sonar-reasoning-pro": (Decimal(6), Decimal(10), Decimal(14)),
}
_PER_K = Decimal(1000)


def _sonar_request_fee_by_context(card: RateCard, requested: str, at: datetime) -> RateCard:
    """A sonar model's fee per request at the low search context size (what an answer that
    reports none is billed), and the medium and high fees an answer reporting those sets
    instead; only while the card has the single high fee genai-prices gives."""
    fees = _SONAR_REQUEST_FEES.get(card.priced_model)
    base = card.base
    if (
        fees is None
        or base.per_request_usd * _PER_K != fees[2]
        or base.per_request_medium_usd != base.per_request_usd
        or base.per_request_high_usd != base.per_request_usd
    ):
        return card
    low, medium, high = (fee / _PER_K for fee in fees)
    return _mark(
        card,
        base=base.with_rates(
            per_request_usd=low, per_request_medium_usd=medium, per_request_high_usd=high
        ),
    )


#: Fees per 1,000 server-side tool calls a provider bills on every model, each set from the day
#: it took effect: for a card without them (genai-prices has none of xAI's, and no card of a
#: model the user prices because the table lacks it). xAI (https://docs.x.ai/developers/pricing,
#: "Tool Invocation Costs"): web search, X search and code execution $10 at the agent tools'
#: launch (its models page of 2025-11-09), $5 once the launch's free period ended on
#: 2025-12-03 (the day is the promotion's end, as reported; xAI's page gives no date of the
#: cut); Collections Search (the Responses API's ``file_search``) $2.50 throughout. Anthropic
#: (its pricing page, "Web search"): web search $10 on every model since its launch. OpenAI
#: (its pricing page lists them as tool prices, not per model; the genai-prices entries that
#: have them all carry these): web search $10 (``web_search_preview`` too, but on gpt-4o and
#: gpt-4.1, whose $25 ``_web_search_preview_fee`` sets first) and file search $2.50; Azure
#: OpenAI's Responses API bills the same tools alike.
_OPENAI_TOOL_FEES = {
    "web_search_per_k": Decimal(10),
    "web_search_preview_per_k": Decimal(10),
    "file_search_per_k": Decimal("2.50"),
}
_TOOL_FEES: dict[str, tuple[tuple[date, dict[str, Decimal]], ...]] = {
    "anthropic": ((date.min, {"web_search_per_k": Decimal(10)}),),
    "openai": ((date.min, _OPENAI_TOOL_FEES),),
    "azure": ((date.min, _OPENAI_TOOL_FEES),),
    "x-ai": (
        (
            date.min,
            {
                "web_search_per_k": Decimal(10),
                "x_search_per_k": Decimal(10),
                "code_execution_per_k": Decimal(10),
                "file_search_per_k": Decimal("2.50"),
            },
        ),
        (
            date(2025, 12, 3),
            {
                "web_search_per_k": Decimal(5),
                "x_search_per_k": Decimal(5),
                "code_execution_per_k": Decimal(5),
                "file_search_per_k": Decimal("2.50"),
            },
        ),
    ),
}


def provider_tool_fees(card: RateCard, provider: str | None, at: datetime) -> RateCard:
    """``card`` with the tool fees its provider bills on every model (``_TOOL_FEES``) in effect
    at ``at`` where it has none; a fee the card has is kept. Applied to every table card, and to
    a user's price for a model no table has (that price sets rates per token only)."""
    schedule = _TOOL_FEES.get(provider or "")
    if schedule is None:
        return card
    fees = next(fees for start, fees in reversed(schedule) if at.date() >= start)
    missing = {name: fee for name, fee in fees.items() if not getattr(card.base, name)}
    if not missing:
        return card
    return _each_rates(card, lambda rates: rates.with_rates(**missing))


_DATA_CORRECTIONS: tuple[Callable[[RateCard, str, datetime], RateCard], ...] = (
    _web_search_preview_fee,
    _sonar_request_fee_by_context,
    _flash_preview_thinking,
    _gpt4o_audio_preview,
    _gpt4o_realtime_first_snapshot,
    _gemini_1_5_flash_8b,
    _sonnet_4_long_context,
    _claude_1h_cache_writes,  # after the long-context tier it may add
    _openai_12h_cache_writes,
    _o3_launch_cache_rate,
    _gpt4o_fine_tune_cache_reads,
    _gemini_1_5_pro_cache_reads,
    _gemini_1_5_launch_rates,  # after the cache reads it scales
)
