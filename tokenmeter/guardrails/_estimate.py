"""The input cost of a request, estimated before it is sent (what budgets reserve).

The tokens come from ``tokenmeter._estimate.estimate_input``, the estimator that also fills in
calls whose provider reports no usage (the provider's tokenizer where it runs offline, a
calibrated heuristic otherwise), applied to the request body the adapter read. Where no body was
read, the characters of the request's text content are counted, four to a token. The tokens are
priced as input with the pricing engine: output is not known before the answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from tokenmeter._estimate import _input_bound, _input_parts, _usage_of
from tokenmeter._models import MAX_TOKENS, usage_of
from tokenmeter.pricing import price_usage

__all__ = ["estimate_input_usd", "input_bound_usd"]

#: Request arguments that carry the text sent to the model (OpenAI, Anthropic, Gemini).
_CONTENT_KEYS = ("messages", "input", "contents", "system", "prompt", "instructions", "tools")
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
    if request is not None:
        try:  # the estimator's counts by modality: a Usage model only when media are in it
            parts = _input_parts(provider, request, operation)
        except Exception:  # what cannot be read counts as nothing (as estimate_input does)
            parts = {}
        if any(value for key, value in parts.items() if key != "input_text"):
            # images, audio, documents: each part at its own rate
            return price_usage(provider, model, _usage_of(parts)).total_usd or _ZERO
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
    if tokens > _LINEAR_UP_TO:  # long prompts may have their own (tiered) price: ask the engine
        cost = price_usage(provider, model, usage_of(input_tokens=tokens, output_tokens=0))
        return cost.total_usd or _ZERO
    return _price_per_token(provider, model) * tokens


def _price_per_token(provider: str, model: str) -> Decimal:
    per_token = _per_token.get((provider, model))
    if per_token is None:
        cost = price_usage(provider, model, usage_of(input_tokens=_UNIT, output_tokens=0))
        if len(_per_token) >= _MAX_MODELS:  # a gateway passing its users' model names on
            _per_token.clear()
        per_token = _per_token[(provider, model)] = (cost.total_usd or _ZERO) / _UNIT
    return per_token


def input_bound_usd(provider: str, model: str | None, request: Any) -> float | None:
    """A ceiling on ``estimate_input_usd`` for a plain request, found without tokenizing (see
    ``_input_bound``); None when there is none short of the estimate itself."""
    if not model or request is None:
        return None
    try:
        tokens = _input_bound(provider, request)
    except Exception:
        return None
    if tokens is None or tokens > _LINEAR_UP_TO:
        return None
    per_token = _per_token_float.get((provider, model))
    if per_token is None:
        if len(_per_token_float) >= _MAX_MODELS:
            _per_token_float.clear()
        per_token = _per_token_float[(provider, model)] = float(_price_per_token(provider, model))
    return per_token * tokens


#: Input prices are linear per token up to here for every model tokenmeter knows (tiers start at
#: 128k or 200k tokens); the price of one token is cached per model until the settings change.
_LINEAR_UP_TO = 100_000
#: The tokens priced to find the price of one: below every tier (a million tokens is past them
#: and would price every request at a tiered model's long-context rate, twice the list price).
_UNIT = _LINEAR_UP_TO
#: Models whose price of one token is kept: past this many the cache starts over.
_MAX_MODELS = 10_000
_per_token: dict[tuple[str, str], Decimal] = {}
_per_token_float: dict[tuple[str, str], float] = {}


def forget_prices() -> None:
    """Prices may have changed (configure()): price again."""
    _per_token.clear()
    _per_token_float.clear()


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
