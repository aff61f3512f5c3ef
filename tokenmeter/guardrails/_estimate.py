"""The input cost of a request, estimated before it is sent (what budgets reserve).

The tokens come from ``tokenmeter._estimate.estimate_input``, the estimator that also fills in
calls whose provider reports no usage (the provider's tokenizer where it runs offline, a
calibrated heuristic otherwise), applied to the request body the adapter read. Where no body was
read, the characters of the request's text content are counted, four to a token. The tokens are
priced as input (output is not known before the answer): at the model's base input rate, plus its
fees per request once (Perplexity's request fee; the web search a Chat Completions search model
makes for every answer), up to its first long-context tier; past it, by the pricing engine.
Perplexity's fee is its low search context's unless the request asks for a larger one
(``web_search_options.search_context_size``): that one is priced by the engine too.

A request that asks for a dearer service tier is estimated at that tier's rates (OpenAI's
``service_tier: "priority"``, Anthropic's ``speed: "fast"`` and ``inference_geo: "us"``): its
record will be priced there, and a per-call budget refuses a request whose input alone costs more.
A cheaper tier (``flex``) is estimated at the standard rates: the server may serve it at those.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any, NamedTuple

from tokenmeter._estimate import _input_bound, _input_parts, _usage_of
from tokenmeter._models import MAX_TOKENS, Usage, usage_of
from tokenmeter.pricing import describe_price, price_usage
from tokenmeter.pricing._source import known_tier, normalise_tier
from tokenmeter.usage.openai import asked_search_context, with_chat_search

__all__ = ["estimate_input_usd", "input_bound_usd"]

#: Request arguments that carry the text sent to the model (OpenAI, Anthropic, Gemini), tools
#: and structured-output schemas included (billed as input too).
_CONTENT_KEYS = (
    "messages",
    "input",
    "contents",
    "system",
    "prompt",
    "instructions",
    "tools",
    "response_format",
    "text",
    "output_config",
    "output_format",
)
_MAX_DEPTH = 12
_MAX_ITEMS = 100_000
_ZERO = Decimal(0)


def estimate_input_usd(
    provider: str,
    model: str | None,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    request: Any = None,
    operation: str | None = None,
) -> Decimal:
    """The request's estimated input cost in USD (0 when the model has no known price)."""
    if not model:
        return _ZERO
    sized = asked_search_context(request if request is not None else kwargs)
    if request is not None:
        try:  # the estimator's counts by modality: a Usage model only when media are in it
            parts = _input_parts(provider, request, operation)
        except Exception:  # what cannot be read counts as nothing (as estimate_input does)
            parts = {}
        if any(value for key, value in parts.items() if key != "input_text"):
            # images, audio, documents: each part at its own rate, at the tier asked for
            tier = _dearer_tier(provider, model, request)
            return _priced(provider, model, _usage_of(parts), sized, tier)
        tokens = min(sum(parts.values()), MAX_TOKENS)
    else:
        counter = [0, 0]  # characters, items visited
        _count_request(kwargs, counter)
        for value in args:
            _count_arg(value, counter, positional=True)
        for value in kwargs.values():
            _count_arg(value, counter, positional=False)
        chars = counter[0]
        tokens = min(chars // 4 + (1 if chars % 4 else 0), MAX_TOKENS)
    tier = _dearer_tier(provider, model, request if request is not None else kwargs)
    price = _input_price(provider, model, tier)
    if tokens > price.linear_up_to or sized:  # a tier or a larger fee may apply: the engine's
        usage = usage_of(input_tokens=tokens, output_tokens=0)
        return _priced(provider, model, usage, sized, tier)
    return price.usd(tokens)


def _priced(
    provider: str,
    model: str,
    usage: Usage,
    sized: str | None = None,
    tier: str | None = None,
) -> Decimal:
    """``usage`` priced by the engine, with the search a search model makes for every answer
    counted (as its record will count it), the search context size ``sized`` asked for, and at
    the service ``tier`` asked for."""
    if sized is not None:
        usage = usage.model_copy(update={"tool_requests": {**usage.tool_requests, sized: 1}})
    priced = price_usage(provider, model, with_chat_search(usage, model), tier=tier)
    return priced.total_usd or _ZERO


def requested_tier(request: Any) -> str | None:
    """The service tier a request body asks for, spelled as ``tokenmeter.price()`` takes it
    (``"priority"``, ``"fast+us"``), or None for the standard one: OpenAI's ``service_tier``,
    Anthropic's ``speed: "fast"`` and US-only ``inference_geo``. Only a plain dict is read (the
    body the Stainless SDKs send, ``extra_body`` merged in, or the call's keyword arguments)."""
    if type(request) is not dict:
        return None
    tier = request.get("service_tier")
    name = tier.strip().lower() if type(tier) is str and known_tier(tier) else "standard"
    if request.get("speed") == "fast":
        name = "fast"
    region = request.get("inference_geo")
    if type(region) is str and region.strip().lower() == "us":
        return f"{normalise_tier(name)}+us"
    return None if normalise_tier(name) == "standard" else name


def _dearer_tier(provider: str, model: str, request: Any) -> str | None:
    """The tier ``request`` asks for when ``model``'s input costs more there than at the
    standard rates; None otherwise (flex, or a tier without a price of its own), so that a
    request is never estimated below its standard price."""
    tier = requested_tier(request)
    if tier is None:
        return None
    if _input_price(provider, model, tier).per_token <= _input_price(provider, model).per_token:
        return None
    return tier


def input_bound_usd(provider: str, model: str | None, request: Any) -> float | None:
    """A ceiling on ``estimate_input_usd`` for a plain request, found without tokenizing (see
    ``_input_bound``); None when there is none short of the estimate itself."""
    if not model or request is None or asked_search_context(request) is not None:
        return None
    try:
        tokens = _input_bound(provider, request)
    except Exception:
        return None
    if tokens is None:
        return None
    price = _input_price(provider, model, _dearer_tier(provider, model, request))
    if tokens > price.linear_up_to:
        return None
    return price.usd_float(tokens)


class _InputPrice(NamedTuple):
    """What a request's input costs below the model's first long-context tier: its base rate per
    token, and its fees per request (Perplexity's sonar models; a Chat Completions search
    model's web search), owed once whatever the tokens."""

    per_token: Decimal
    per_request: Decimal
    per_token_float: float
    per_request_float: float
    #: Prompts of more tokens may be billed at a tier's rate: the engine prices those.
    linear_up_to: int

    def usd(self, tokens: int) -> Decimal:
        return self.per_request + self.per_token * tokens

    def usd_float(self, tokens: int) -> float:
        return self.per_request_float + self.per_token_float * tokens


_NO_PRICE = _InputPrice(_ZERO, _ZERO, 0.0, 0.0, MAX_TOKENS)
_PER_MTOK = Decimal(1_000_000)


def _input_price(provider: str, model: str, tier: str | None = None) -> _InputPrice:
    """The model's base (lowest-tier) input rates in the service ``tier`` (standard when None),
    from the rates the engine prices calls with (user prices, regions and fine-tunes included);
    kept per model and tier until the settings change."""
    key = (provider, model, tier)
    price = _input_prices.get(key)
    if price is None:
        found = describe_price(provider, model, tier=tier)
        if found is None:
            price = _NO_PRICE  # its estimate is $0, as its cost is unknown
        else:
            rates = found.rates
            per_token = rates.input_per_mtok / _PER_MTOK
            per_request = rates.per_request_usd + _search_fee(provider, model)
            first_tier = min((start for start, _ in found.tiers), default=MAX_TOKENS)
            price = _InputPrice(
                per_token, per_request, float(per_token), float(per_request), first_tier
            )
        if len(_input_prices) >= _MAX_MODELS:  # a gateway passing its users' model names on
            _input_prices.clear()
        _input_prices[key] = price
    return price


def _search_fee(provider: str, model: str) -> Decimal:
    """The fee of the web search a Chat Completions search model makes before every answer
    (billed whatever it is asked): the record of the call counts it (``with_chat_search``), so
    the reservation does too, at the rate the engine prices that search with. 0 for any other."""
    searching = with_chat_search(_NO_TOKENS, model)
    if not searching.tool_requests:
        return _ZERO
    return price_usage(provider, model, searching).total_usd or _ZERO


_NO_TOKENS = Usage()
#: Models whose input price is kept: past this many the cache starts over.
_MAX_MODELS = 10_000
_input_prices: dict[tuple[str, str, str | None], _InputPrice] = {}


def forget_prices() -> None:
    """Prices may have changed (configure()): price again."""
    _input_prices.clear()


def _count_arg(value: Any, counter: list[int], *, positional: bool) -> None:
    """A positional argument is content (google-generativeai's ``generate_content(contents)``);
    of the keyword arguments only the content keys count (counted already), and the request
    options of the Stainless SDKs (openai, anthropic), whose body is ``json_data``."""
    kind = type(value)
    if kind is int or kind is float or kind is bool or value is None:
        return
    if kind is str or kind is dict or kind is list or kind is tuple:
        if positional:
            _count(value, counter, 0)
        return
    body = getattr(value, "json_data", None)
    if type(body) is dict:
        _count_request(body, counter)
    elif positional and not isinstance(value, type):
        _count(value, counter, 0)  # an SDK content object


def _count_request(body: Mapping[str, Any], counter: list[int]) -> None:
    for key in _CONTENT_KEYS:
        if key in body:
            _count(body[key], counter, 0)


def _count(value: Any, counter: list[int], depth: int) -> None:
    if counter[1] > _MAX_ITEMS or depth > _MAX_DEPTH:
        return
    counter[1] += 1
    kind = type(value)
    if kind is str:
        counter[0] += len(value)
    elif kind is dict:
        for item in value.values():
            _count(item, counter, depth + 1)
    elif kind is list or kind is tuple:
        for item in value:
            _count(item, counter, depth + 1)
    elif isinstance(value, str):
        counter[0] += len(value)
    elif isinstance(value, Mapping):
        for item in value.values():
            _count(item, counter, depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            _count(item, counter, depth + 1)
    else:
        text = getattr(value, "text", None)  # SDK content objects (Gemini Part, Content)
        if isinstance(text, str):
            counter[0] += len(text)
        parts = getattr(value, "parts", None)
        if isinstance(parts, list | tuple):
            _count(parts, counter, depth + 1)
