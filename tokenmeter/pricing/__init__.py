"""Pricing: user overrides and errata first, then genai-prices' bundled table; cached.

``price_usage(provider, model, usage, at=..., tier=...)`` is what the rest of tokenmeter calls.
"""

from ._engine import (
    PriceDescription,
    clear_cache,
    describe_price,
    price_usage,
    set_price_source,
    suggest_models,
    warm,
)
from ._names import model_family
from ._overrides import (
    check_aliases,
    check_prices,
    load_prices_file,
    read_prices_file,
    set_aliases,
    set_user_prices,
)
from ._source import PricedModel, PriceSource, RateCard, Rates

__all__ = [
    "PriceDescription",
    "PriceSource",
    "PricedModel",
    "RateCard",
    "Rates",
    "check_aliases",
    "check_prices",
    "clear_cache",
    "describe_price",
    "load_prices_file",
    "model_family",
    "price_usage",
    "read_prices_file",
    "set_aliases",
    "set_price_source",
    "set_user_prices",
    "suggest_models",
    "warm",
]
