"""price_usage: the one function the rest of tokenmeter calls, and its cache.

Resolution (names, aliases, overrides, table lookup) runs once per (provider, model, tier); the
rates in effect run once per UTC day (or off-peak window). What is left per call is a Decimal dot
product over the token classes, a few microseconds.
"""

from __future__ import annotations

import difflib
import logging
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import (
    Context,
    Decimal,
    getcontext,
    localcontext,
    setcontext,
)
from typing import Any

from tokenmeter._fork import renew_after_fork
from tokenmeter._models import SEARCH_CONTEXT_KEYS, Cost, Usage, trusted, usage_of
from tokenmeter._registry import billed
from tokenmeter._totals import USD_CONTEXT as _PRICE_CONTEXT

from . import _overrides
from ._errata import ErrataSource, fine_tune_at_base_rates, provider_tool_fees, regional
from ._names import is_fine_tune, name_candidates, normalise_provider, with_unversioned
from ._source import (
    FEE_FIELDS,
    STANDARD,
    PricedModel,
    PriceSource,
    RateCard,
    Rates,
    Tier,
    split_tier,
)

__all__ = [
    "PriceDescription",
    "clear_cache",
    "cost_fields",
    "describe_price",
    "price_usage",
    "set_price_source",
    "suggest_models",
    "usage_without_passes",
]

logger = logging.getLogger("tokenmeter")

_ZERO = Decimal(0)
_PER_MTOK = Decimal(1_000_000)
_PER_K = Decimal(1_000)
#: Rates are divided once, at cache fill, in a context of our own (not the caller thread's).
_RATE_CONTEXT = Context(prec=40)
_UNKNOWN = Cost(total_usd=None, breakdown=None, price_source=None, priced_model=None)
_UNKNOWN_FIELDS = _UNKNOWN.__dict__
_MAX_ENTRIES = 10_000  # distinct (provider, model, tier) triples before the cache starts over
_MAX_PERIODS = 1_000  # cached days/windows per entry


#: A Cost's fields as a dict: what the engine computes, and what ``emit`` reads (a record needs
#: the figures, not a Cost object; ``price_usage`` wraps them in one).
CostFields = dict[str, Any]


def _make_cost(
    total: Decimal, breakdown: dict[str, Decimal], source: str, priced_model: str
) -> CostFields:
    return {
        "total_usd": total,
        "breakdown": breakdown,
        "price_source": source,
        "priced_model": priced_model,
    }


class _PerToken:
    """One set of Rates divided by a million (fees by a thousand), ready for the dot product."""

    __slots__ = (
        "audio_in",
        "audio_out",
        "cache_read",
        "cache_read_audio",
        "cache_read_image",
        "cache_write",
        "cache_write_1h",
        "citation_out",
        "fees",
        "image_in",
        "image_out",
        "input",
        "output",
        "per_request",
        "per_request_by_size",
        "reasoning",
        "reasoning_as_output",
        "source",
        "video_in",
        "video_out",
    )

    def __init__(self, rates: Rates, source: str) -> None:
        with localcontext(_RATE_CONTEXT):
            self._fill(rates, source)

    def _fill(self, rates: Rates, source: str) -> None:
        self.source = source
        self.input = rates.input_per_mtok / _PER_MTOK
        self.output = rates.output_per_mtok / _PER_MTOK
        self.cache_read = rates.cache_read_per_mtok / _PER_MTOK
        self.cache_write = rates.cache_write_per_mtok / _PER_MTOK
        self.cache_write_1h = rates.cache_write_1h_per_mtok / _PER_MTOK
        self.audio_in = rates.input_audio_per_mtok / _PER_MTOK
        self.audio_out = rates.output_audio_per_mtok / _PER_MTOK
        self.reasoning = rates.reasoning_per_mtok / _PER_MTOK
        self.reasoning_as_output = self.reasoning == self.output
        self.per_request = rates.per_request_usd
        #: ``tool_requests`` key of a larger search context -> the fee per call it sets instead.
        self.per_request_by_size = {
            SEARCH_CONTEXT_KEYS["medium"]: rates.per_request_medium_usd,
            SEARCH_CONTEXT_KEYS["high"]: rates.per_request_high_usd,
        }
        self.image_in = rates.input_image_per_mtok / _PER_MTOK
        self.video_in = rates.input_video_per_mtok / _PER_MTOK
        self.image_out = rates.output_image_per_mtok / _PER_MTOK
        self.video_out = rates.output_video_per_mtok / _PER_MTOK
        self.cache_read_audio = rates.cache_read_audio_per_mtok / _PER_MTOK
        self.cache_read_image = rates.cache_read_image_per_mtok / _PER_MTOK
        self.citation_out = rates.output_citation_per_mtok / _PER_MTOK
        self.fees = {
            "web_search": rates.web_search_per_k / _PER_K,
            "web_search_preview": rates.web_search_preview_per_k / _PER_K,
            "file_search": rates.file_search_per_k / _PER_K,
            "code_execution": rates.code_execution_per_k / _PER_K,
            "x_search": rates.x_search_per_k / _PER_K,
        }


class _Vector:
    """A RateCard compiled for pricing; ``price`` is the hot path."""

    __slots__ = ("base", "card", "tiers")

    def __init__(self, card: RateCard) -> None:
        self.card = card
        self.base = _PerToken(card.base, card.price_source)
        tier_source = card.tiers_price_source or card.price_source
        self.tiers = tuple(
            (start, _PerToken(rates, tier_source)) for start, rates in reversed(card.tiers)
        )

    def price(self, usage: Usage, source: str | None = None) -> CostFields:
        counts = usage.__dict__  # cheaper than a pydantic model's attribute access (hot path)
        total_in = counts["input_tokens"]
        r = self.base
        for start, tier_rates in self.tiers:  # highest threshold first; a cliff on total input
            if total_in > start:
                r = tier_rates
                break
        cache_read = counts["cache_read_tokens"]
        cache_write = counts["cache_write_tokens"]
        write_1h = counts["cache_write_1h_tokens"]
        uncached = total_in - cache_read - cache_write
        audio_out = counts["output_audio_tokens"]
        reasoning = counts["reasoning_tokens"]
        text_out = counts["output_tokens"] - audio_out - reasoning
        if counts["modalities"] or counts["tool_requests"]:
            return self._price_parts(usage, r, source)

        audio_in = min(counts["input_audio_tokens"], max(uncached, 0))
        input_usd = r.input * (uncached - audio_in) if uncached - audio_in > 0 else _ZERO
        read_usd = r.cache_read * cache_read if cache_read else _ZERO
        write_usd = _ZERO
        if cache_write - write_1h:
            write_usd = r.cache_write * (cache_write - write_1h)
        if write_1h:
            write_usd = write_usd + r.cache_write_1h * write_1h
        if reasoning and r.reasoning_as_output:  # one product: the same rate
            output_usd = r.output * (text_out + reasoning)
        else:
            output_usd = r.output * text_out if text_out else _ZERO
            if reasoning:
                output_usd = output_usd + r.reasoning * reasoning
        breakdown = {
            "input": input_usd,
            "cache_read": read_usd,
            "cache_write": write_usd,
            "output": output_usd,
        }
        total = input_usd + read_usd + output_usd
        if write_usd:
            total += write_usd
        if audio_in:
            breakdown["input_audio"] = part = r.audio_in * audio_in
            total += part
        if audio_out:
            breakdown["output_audio"] = part = r.audio_out * audio_out
            total += part
        if r.per_request:
            breakdown["request"] = r.per_request
            total += r.per_request
        return _make_cost(total, breakdown, source or r.source, self.card.priced_model)

    def _price_parts(self, usage: Usage, r: _PerToken, source: str | None) -> CostFields:
        """Per-modality counts and tool requests: each part at its own rate."""
        m = usage.modalities
        cache_read = usage.cache_read_tokens
        cache_write = usage.cache_write_tokens
        write_1h = usage.cache_write_1h_tokens
        uncached = max(usage.input_tokens - cache_read - cache_write, 0)
        # Cache reads by modality first: whatever is left of each modality was not cached.
        read_audio = min(m.get("cache_read_audio", 0), cache_read)
        read_image = min(m.get("cache_read_image", 0), cache_read - read_audio)
        read_other = cache_read - read_audio - read_image  # text and video: the cache-read rate
        read_video = min(m.get("cache_read_video", 0), read_other)
        audio_total = max(usage.input_audio_tokens, m.get("input_audio", 0))
        left = uncached
        audio_in = min(max(audio_total - read_audio, 0), left)
        left -= audio_in
        image_in = min(max(m.get("input_image", 0) - read_image, 0), left)
        left -= image_in
        video_in = min(max(m.get("input_video", 0) - read_video, 0), left)
        left -= video_in

        total_out = usage.output_tokens
        audio_out = min(max(usage.output_audio_tokens, m.get("output_audio", 0)), total_out)
        image_out = min(m.get("output_image", 0), total_out - audio_out)
        video_out = min(m.get("output_video", 0), total_out - audio_out - image_out)
        media_out = audio_out + image_out + video_out
        citation_out = min(m.get("output_citation", 0), total_out - media_out)
        media_out += citation_out
        reasoning = min(usage.reasoning_tokens, total_out - media_out)
        text_out = total_out - media_out - reasoning

        breakdown = {
            "input": r.input * left,
            "cache_read": r.cache_read * read_other
            + r.cache_read_audio * read_audio
            + r.cache_read_image * read_image,
            "cache_write": r.cache_write * (cache_write - write_1h) + r.cache_write_1h * write_1h,
            "output": r.output * text_out + r.reasoning * reasoning,
        }
        for key, count, rate in (
            ("input_audio", audio_in, r.audio_in),
            ("input_image", image_in, r.image_in),
            ("input_video", video_in, r.video_in),
            ("output_audio", audio_out, r.audio_out),
            ("output_image", image_out, r.image_out),
            ("output_video", video_out, r.video_out),
            ("output_citation", citation_out, r.citation_out),
        ):
            if count:
                breakdown[key] = rate * count
        fees, by_size = r.fees, r.per_request_by_size
        per_request = r.per_request
        for tool, count in usage.tool_requests.items():
            if tool in by_size:  # the context size the answer reports: its fee, in place
                if count:
                    per_request = by_size[tool]
            elif count:
                breakdown[tool] = fees.get(tool, _ZERO) * count
        if per_request:
            breakdown["request"] = per_request
        return _make_cost(
            sum(breakdown.values(), _ZERO),
            breakdown,
            source or r.source,
            self.card.priced_model,
        )


class _Entry:
    """Everything known about one (provider, model, tier) as the caller spelled it."""

    __slots__ = (
        "fine_tune",
        "last",
        "models",
        "periods",
        "provider",
        "region",
        "tier",
        "timed",
    )

    def __init__(
        self,
        provider: str | None,
        models: tuple[PricedModel, ...],
        tier: Tier,
        region: str | None = None,
        *,
        fine_tune: bool = False,
    ) -> None:
        self.provider = provider
        self.models = models
        self.tier = tier
        #: An inference region billed above the global rates (a price table's, not yours).
        self.region = region
        #: The model is a fine-tune (``ft:...``, Azure's ``<base>.ft-...``): a table's card for
        #: another name is its base's.
        self.fine_tune = fine_tune
        self.timed = any(m.time_dependent for m in models)
        self.periods: dict[Hashable, _Vector | None] = {}
        #: The vector made last: a period whose rates are the same shares it (about 3 KB each,
        #: for every day of a backfill that records a model's history day by day).
        self.last: _Vector | None = None

    def period_key(self, at: datetime) -> Hashable:
        if not self.timed:
            return at.date()
        return (at.date(), *(m.time_slot(at) for m in self.models))

    def vector(self, at: datetime) -> _Vector | None:
        key = self.period_key(at)
        try:
            return self.periods[key]
        except KeyError:
            pass
        vector = None
        with localcontext(_PRICE_CONTEXT):  # cached for every thread: not in the caller's
            for index, model in enumerate(self.models):
                card = model.rate_card(at, self.tier)
                if card is not None:
                    if card.price_source == _overrides.OVERRIDE_SOURCE:
                        card = self._with_table_fees(card, self.models[index + 1 :], at)
                    else:
                        if self.fine_tune and not is_fine_tune(card.priced_model):
                            card = fine_tune_at_base_rates(card)
                        if self.region is not None:
                            card = regional(card, self.region)
                    last = self.last
                    vector = last if last is not None and last.card == card else _Vector(card)
                    self.last = vector
                    break
        if len(self.periods) >= _MAX_PERIODS:
            self.periods.clear()
        self.periods[key] = vector
        return vector

    def _with_table_fees(
        self, card: RateCard, tables: tuple[PricedModel, ...], at: datetime
    ) -> RateCard:
        """A user price sets rates per token only (it has no key for a fee): the fees per request
        and per tool request stay those the table has for the model, never a silent $0. A model
        no table has (a new one, priced by the user) still pays the tool fees its provider bills
        on every model (xAI's searches, Anthropic's web search, OpenAI's web and file search).
        Another user price among ``tables`` (``my-gpt`` behind a priced ``my-gpt-2026-01-01``)
        has no fee of its own, so it is passed over for the table behind it."""
        for model in tables:
            table = model.rate_card(at, self.tier) or model.rate_card(at, STANDARD)
            if table is not None and table.price_source != _overrides.OVERRIDE_SOURCE:
                fees = {name: getattr(table.base, name) for name in FEE_FIELDS}
                return replace(card, base=card.base.with_rates(**fees))
        return provider_tool_fees(card, self.provider, at)


_source: PriceSource | None = None  # made on first use: importing genai-prices takes ~50 ms


def _default_source() -> PriceSource:
    from ._genai import GenaiPricesSource  # once per process, not per call

    return ErrataSource(GenaiPricesSource())


def warm() -> None:
    """Load the price tables now rather than on the first call (``instrument()`` calls this at
    start-up): importing genai-prices and reading its snapshot takes tens of milliseconds, which
    the application's first LLM call would otherwise wait for."""
    try:
        _price_source().find("openai", "gpt-4o")
    except Exception:  # a broken table shows on the first real price, with its own message
        logger.debug("tokenmeter: warming the price tables failed", exc_info=True)


def _price_source() -> PriceSource:
    global _source
    if _source is None:
        with _lock:
            if _source is None:
                _source = _default_source()
    return _source


_entries: dict[tuple[str | None, str, str | None], _Entry] = {}
_warned: set[tuple[str | None, str]] = set()
#: Models warned about by name; past this many, one more warning says so and the rest are logged
#: at debug level (the set stays bounded).
_MAX_WARNED = 1_000
_lock = threading.RLock()
renew_after_fork(globals(), "_lock")


def price_usage(
    provider: str | None,
    model: str,
    usage: Usage,
    *,
    at: datetime | None = None,
    tier: str | None = None,
) -> Cost:
    """What ``usage`` cost at ``at`` (default now); ``total_usd`` is None for an unknown model.

    ``tier`` is the service tier / processing mode the response reported ("batch", "flex",
    "priority", "fast"; None, "default", "standard", "auto" mean standard). Never raises for an
    unknown model: it logs one warning per (provider, model) on the ``tokenmeter`` logger instead.
    """
    fields = cost_fields(provider, model, usage, at=at, tier=tier)
    if fields is _UNKNOWN_FIELDS:
        return _UNKNOWN
    cost: Cost = trusted(Cost, fields)
    return cost


def cost_fields(
    provider: str | None,
    model: str,
    usage: Usage,
    *,
    at: datetime | None = None,
    tier: str | None = None,
) -> CostFields:
    """``price_usage`` as the fields of its Cost, for a caller that only reads them (``emit``,
    once per record). A new dict each time, but an unknown model's is shared: never change it."""
    entry = _entries.get((provider, model, tier))
    if entry is None:
        entry = _resolve(provider, model, tier)
    if entry.models:
        vector = entry.vector(_utc(at))
        if vector is not None:
            caller = getcontext()
            setcontext(_PRICE_CONTEXT)  # not localcontext(): a third of the price's time
            try:
                if usage.__dict__["passes"]:
                    return _price_with_passes(provider, model, usage, vector, at, tier)
                return vector.price(usage)
            finally:
                setcontext(caller)
    _warn_unknown(provider, model)
    return _UNKNOWN_FIELDS


def _price_with_passes(
    provider: str | None,
    model: str,
    usage: Usage,
    vector: _Vector,
    at: datetime | None,
    tier: str | None,
) -> CostFields:
    """The call's own tokens at its model's rates, and each further pass (Anthropic compaction,
    an advisor on another model) at its own model's rates, under its own breakdown key. A pass
    whose model has no known price makes the whole cost unknown: never a silent part.

    A pass with passes of its own is refused here too: validation refuses it, but a usage made
    without it (pydantic's ``model_copy(update=...)``, ``model_construct``) reaches this, and
    one nested deep was priced level by level into a RecursionError."""
    for index, extra in enumerate(usage.passes):
        if extra.usage.passes:
            raise ValueError(f"passes[{index}].usage: a pass has no passes of its own")
    own = usage_without_passes(usage)
    cost = vector.price(own)
    if cost["breakdown"] is None or cost["total_usd"] is None:
        return cost
    breakdown = dict(cost["breakdown"])
    total = cost["total_usd"]
    for extra in usage.passes:
        part = cost_fields(provider, extra.model or model, extra.usage, at=at, tier=tier)
        if part["total_usd"] is None:
            return _UNKNOWN_FIELDS
        breakdown[extra.kind] = breakdown.get(extra.kind, _ZERO) + part["total_usd"]
        total += part["total_usd"]
    return _make_cost(total, breakdown, cost["price_source"] or "", cost["priced_model"] or model)


def usage_without_passes(usage: Usage) -> Usage:
    """``usage`` less the tokens of its passes: what the call's own model was billed for."""
    passes = usage.passes
    counts = {
        name: getattr(usage, name) - sum(getattr(p.usage, name) for p in passes)
        for name in (
            "input_tokens",
            "output_tokens",
            "cache_read_tokens",
            "cache_write_tokens",
            "cache_write_1h_tokens",
            "reasoning_tokens",
        )
    }
    return usage_of(
        **{name: max(value, 0) for name, value in counts.items()},
        input_audio_tokens=usage.input_audio_tokens,
        output_audio_tokens=usage.output_audio_tokens,
        modalities=usage.modalities,
        tool_requests=usage.tool_requests,
    )


@dataclass(frozen=True)
class PriceDescription:
    """The rates ``price_usage`` would apply, and where they come from (``tokenmeter prices``)."""

    provider: str | None
    model: str
    priced_model: str
    price_source: str
    tier: Tier
    at: datetime
    rates: Rates
    #: Long-context tiers: (start, rates) applies to every token when total input > start.
    tiers: tuple[tuple[int, Rates], ...] = ()
    #: The provider whose table priced the model (None for an override): another than
    #: ``provider`` when that one has no price for it and the model was found by name alone.
    priced_provider: str | None = None

    @property
    def input_per_mtok(self) -> Decimal:
        return self.rates.input_per_mtok

    @property
    def output_per_mtok(self) -> Decimal:
        return self.rates.output_per_mtok

    @property
    def cache_read_per_mtok(self) -> Decimal:
        return self.rates.cache_read_per_mtok

    @property
    def cache_write_per_mtok(self) -> Decimal:
        return self.rates.cache_write_per_mtok

    @property
    def cache_write_1h_per_mtok(self) -> Decimal:
        return self.rates.cache_write_1h_per_mtok


def describe_price(
    provider: str | None, model: str, *, at: datetime | None = None, tier: str | None = None
) -> PriceDescription | None:
    """The per-million-token rates for ``model`` at ``at``, or None when no price is known."""
    entry = _entries.get((provider, model, tier)) or _resolve(provider, model, tier)
    when = _utc(at)
    vector = entry.vector(when) if entry.models else None
    if vector is None:
        return _describe_scoped_override(model, at, tier) if provider is None else None
    card = vector.card
    table_provider = None
    if card.price_source != _overrides.OVERRIDE_SOURCE:
        table_provider = getattr(entry.models[-1], "provider", None)  # whose table priced it
    return PriceDescription(
        provider=entry.provider or table_provider,
        priced_provider=table_provider,
        model=model,
        priced_model=card.priced_model,
        price_source=card.price_source,
        tier=entry.tier,
        at=when,
        rates=card.base,
        tiers=card.tiers,
    )


def _describe_scoped_override(
    model: str, at: datetime | None, tier: str | None
) -> PriceDescription | None:
    """Without a provider, a user price set only for some providers, as a call of the first of
    them would be priced (``tokenmeter prices MODEL`` finds a model as a metered call would)."""
    user = _overrides.find_user_prices(with_unversioned(_with_alias(name_candidates(model))))
    scoped = () if user is None else (e.provider for e in user[1] if e.provider is not None)
    for provider in dict.fromkeys(scoped):
        found = describe_price(provider, model, at=at, tier=tier)
        if found is not None:
            return found
    return None


def suggest_models(model: str, limit: int = 3) -> list[str]:
    """The priced model names nearest to ``model`` (user prices and aliases included), closest
    first: what ``tokenmeter prices`` offers for a name it does not know."""
    names = _with_alias(name_candidates(model))
    known = set(_overrides.user_price_names()) | set(_overrides.aliases())
    table = getattr(_price_source(), "model_names", None)
    if table is not None:
        known.update(table())
    known.difference_update(names)  # the name asked, unpriced now, is no correction of itself
    found: dict[str, None] = {}
    for name in names:
        for match in difflib.get_close_matches(name, known, n=limit, cutoff=0.6):
            found.setdefault(match)
    return list(found)[:limit]


def clear_cache() -> None:
    """Forget resolved names, rates and warnings (after prices, aliases or the source change)."""
    with _lock:
        _entries.clear()
        _warned.clear()


def set_price_source(source: PriceSource | None) -> None:
    """Swap the price table behind the overrides (None: genai-prices with tokenmeter's errata)."""
    global _source
    with _lock:
        _source = source
    clear_cache()


_overrides.on_change(clear_cache)


def _utc(at: datetime | None) -> datetime:
    if at is None:
        return datetime.now(UTC)
    if at.tzinfo is UTC:
        return at
    if at.tzinfo is None:
        return at.replace(tzinfo=UTC)  # naive timestamps are UTC
    return at.astimezone(UTC)


def _resolve(provider: str | None, model: str, tier: str | None) -> _Entry:
    with _lock:
        key = (provider, model, tier)
        entry = _entries.get(key)
        if entry is not None:
            return entry
        provider_id = normalise_provider(provider)
        candidates = name_candidates(model)
        names = _with_alias(candidates)
        models: list[PricedModel] = []
        for name, entries in _user_prices(provider_id, names):
            models.append(_overrides.UserPricedModel(name, entries, provider_id))
        # A server you run yourself bills nothing: a table's price would be another
        # provider's (Ollama's deepseek-r1:8b priced as DeepSeek's hosted deepseek-reasoner),
        # unless the user's alias names the model to price it as.
        table = (
            _find_in_table(provider_id, names)
            if billed(provider_id or "") or names != candidates
            else None
        )
        if table is not None:
            models.append(table)
        fine_tune = bool(names) and is_fine_tune(names[0])
        entry = _Entry(provider_id, tuple(models), *split_tier(tier), fine_tune=fine_tune)
        if len(_entries) >= _MAX_ENTRIES:
            _entries.clear()
        _entries[key] = entry
        return entry


def _user_prices(
    provider: str | None, names: list[str]
) -> list[tuple[str, tuple[_overrides.UserPrice, ...]]]:
    """The user's prices for each of ``names`` that has some, the most specific first (the
    first whose entries apply to a call prices it). A price set for a fine-tune's base model is
    not the fine-tune's when a table has the fine-tune's own: a fine-tune is billed at other
    rates, and a price for gpt-4o would bill every gpt-4o fine-tune as gpt-4o. ``names`` are
    looked up without their version suffix too (``with_unversioned``), last."""
    found = _overrides.every_user_price(with_unversioned(names))
    if not names or not is_fine_tune(names[0]):
        return found
    tuned = [name for name in names if is_fine_tune(name)]
    if _find_in_table(provider, tuned) is None:
        return found
    return [(name, entries) for name, entries in found if is_fine_tune(name)]


def _with_alias(names: list[str]) -> list[str]:
    """The spellings of the model the user's alias of ``names`` names, else ``names``. An alias
    set under a model's name applies to its versioned names too (``with_unversioned``), unless
    the user priced one of ``names`` itself: a price set for ``gpt-4-0613`` beside an alias of
    ``gpt-4`` prices ``gpt-4-0613`` (the alias took it to the table's price)."""
    aliases = _overrides.aliases()
    unversioned = with_unversioned(names)[len(names) :]
    if unversioned and _overrides.find_user_prices(names) is not None:
        unversioned = []
    for name in [*names, *unversioned]:
        target = aliases.get(name)
        if target is not None:
            return name_candidates(target)
    return names


def _find_in_table(provider: str | None, names: list[str]) -> PricedModel | None:
    """Every spelling with the caller's provider first, then by name alone, then (without a
    provider: the CLI, a response of unknown origin) in any provider's table.

    Without a provider, a fine-tune's spelling (``ft:gpt-4o-2024-08-06:org::id``, OpenAI's
    naming) is looked up in OpenAI's table as soon as its name alone finds nothing, before the
    less specific spellings: its base spelling, found by name, priced ``tokenmeter prices
    ft:gpt-4o-...`` at gpt-4o's $2.50 / $10 where the fine-tune's $3.75 / $15 apply (a metered
    call, which knows its provider, was right). Any provider's table would do worse: Azure's
    o4-mini entry takes ``ft:o4-mini-...``, at Azure's rates, without OpenAI's tiers."""
    source = _price_source()
    for provider_id in dict.fromkeys((provider, None)):
        for name in names:
            found = source.find(provider_id, name)
            if found is None and provider is None and name.startswith("ft:"):
                found = source.find("openai", name)
            if found is not None:
                return found
    find_any: Callable[[str], PricedModel | None] | None = getattr(
        source, "find_in_any_provider", None
    )
    if provider is None and find_any is not None:  # the CLI, or a response of unknown origin
        for name in names:
            found = find_any(name)
            if found is not None:
                return found
    return None


def _warn_unknown(provider: str | None, model: str) -> None:
    key = (provider, model)
    if key in _warned:
        return
    with _lock:
        if key in _warned:
            return
        if len(_warned) >= _MAX_WARNED:  # a server naming a new model every call: say it once
            if len(_warned) == _MAX_WARNED:
                _warned.add(key)
                logger.warning(
                    "tokenmeter: no price known for %d models; further ones are logged at debug "
                    "level",
                    _MAX_WARNED,
                )
            logger.debug(
                "tokenmeter: no price known for model %.200r (provider %.200r)", model, provider
            )
            return
        _warned.add(key)
    logger.warning(
        "tokenmeter: no price known for model %.200r (provider %.200r); its cost is recorded as "
        "null. Set one with tokenmeter.configure(prices=...) or an alias.",
        model,
        provider,
    )
