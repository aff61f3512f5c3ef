"""PLACEHOLDER input-cost estimate of a request, used by budgets before the request is sent.

The pricing issue builds the real estimator (``tokenmeter.estimate``, and a request-kwargs ->
input Usage function). Until it is merged, ``estimate_input_usd`` counts the characters of the
request's text content and takes four characters for a token, priced with the pricing engine.
Rewire this one function to the real estimator; nothing else in guardrails reads requests.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from tokenmeter._models import MAX_TOKENS, usage_of
from tokenmeter.pricing import price_usage

__all__ = ["estimate_input_usd"]

#: Request arguments that carry the text sent to the model (OpenAI, Anthropic, Gemini).
_CONTENT_KEYS = ("messages", "input", "contents", "system", "prompt", "instructions", "tools")
_MAX_DEPTH = 12
_MAX_ITEMS = 100_000
_ZERO = Decimal(0)


def estimate_input_usd(
    provider: str, model: str | None, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> Decimal:
    """The request's estimated input cost in USD (0 when the model has no known price)."""
    if not model:
        return _ZERO
    counter = [0, 0]  # characters, items visited
    _count_request(kwargs, counter)
    for value in (*args, *kwargs.values()):
        body = getattr(value, "json_data", None)  # the Stainless SDKs' request options
        if isinstance(body, Mapping):
            _count_request(body, counter)
        elif value is not None and not isinstance(value, str | int | float | bool):
            _count(value, counter, 0)  # contents passed positionally (google-generativeai)
    if not args and not kwargs:
        return _ZERO
    tokens = min(counter[0] // 4 + (1 if counter[0] % 4 else 0), MAX_TOKENS)
    cost = price_usage(provider, model, usage_of(input_tokens=tokens, output_tokens=0))
    return cost.total_usd or _ZERO


def _count_request(body: Mapping[str, Any], counter: list[int]) -> None:
    for key in _CONTENT_KEYS:
        if key in body:
            _count(body[key], counter, 0)


def _count(value: Any, counter: list[int], depth: int) -> None:
    if counter[1] > _MAX_ITEMS or depth > _MAX_DEPTH:
        return
    counter[1] += 1
    if isinstance(value, str):
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
