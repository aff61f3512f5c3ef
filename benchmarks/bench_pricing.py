"""How fast is tokenmeter's cached pricing compared with calling genai-prices directly?

Run: python benchmarks/bench_pricing.py
Prints microseconds per call for ``price_usage`` (warm cache) and ``genai_prices.calc_price``
for a few models, the speed-up, and checks that both give the same totals.
"""

from __future__ import annotations

import sys
import timeit
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import genai_prices

from tokenmeter._models import Usage
from tokenmeter.pricing import price_usage

AT = datetime(2026, 11, 23, 12, tzinfo=UTC)
CALLS = 20_000
REPEATS = 5

CASES: list[tuple[str, str, dict[str, int]]] = [
    ("openai", "gpt-4o", {"input_tokens": 10_000, "cache_read_tokens": 8000, "output_tokens": 500}),
    (
        "anthropic",
        "claude-sonnet-4-5",
        {
            "input_tokens": 30_000,
            "cache_read_tokens": 10_000,
            "cache_write_tokens": 5000,
            "cache_write_1h_tokens": 2000,
            "output_tokens": 1500,
        },
    ),
    (
        "google",
        "gemini-2.5-pro",
        {"input_tokens": 250_000, "output_tokens": 3000, "reasoning_tokens": 2000},
    ),
]


def per_call_us(fn: Callable[[], object]) -> float:
    best = min(timeit.repeat(fn, number=CALLS, repeat=REPEATS))
    return best / CALLS * 1e6


def compare(provider: str, model: str, counts: dict[str, int]) -> None:
    usage = Usage(**counts)
    genai_counts = dict(counts)
    if "reasoning_tokens" in genai_counts:
        genai_counts["output_reasoning_tokens"] = genai_counts.pop("reasoning_tokens")
    genai_usage = genai_prices.Usage(**genai_counts)

    def ours() -> Decimal | None:
        return price_usage(provider, model, usage, at=AT).total_usd

    def theirs() -> Decimal:
        return genai_prices.calc_price(
            genai_usage, model, provider_id=provider, genai_request_timestamp=AT
        ).total_price

    assert ours() == theirs(), (model, ours(), theirs())
    fast, slow = per_call_us(ours), per_call_us(theirs)
    print(f"{model:<20} {fast:>15.2f} {slow:>14.2f} {slow / fast:>8.1f}x")


def main() -> None:
    print(f"{'model':<20} {'price_usage µs':>15} {'calc_price µs':>14} {'speed-up':>9}")
    for provider, model, counts in CASES:
        compare(provider, model, counts)
    default_time = per_call_us(lambda: price_usage("openai", "gpt-4o", Usage(input_tokens=1)))
    print(f"price_usage with at=None (clock read + Usage build): {default_time:.2f} µs")
    print("totals identical: yes")


if __name__ == "__main__":
    main()
