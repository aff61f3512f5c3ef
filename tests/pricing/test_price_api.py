"""``tokenmeter.price()``: bad arguments are one-line ValueErrors naming the argument."""

from __future__ import annotations

import decimal
import json
import threading
from datetime import UTC, date, datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any

import pytest
from helpers import one_line_value_error

import tokenmeter
from tokenmeter import Usage
from tokenmeter._models import Pass


@pytest.mark.parametrize(
    ("usage", "message"),
    [
        ({"input_tokens": -1}, r"usage\.input_tokens: .*greater than or equal to 0.*got -1"),
        ({"input_tokens": "5"}, r"usage\.input_tokens: .*integer"),
        ({"output_tokens": 1.5}, r"usage\.output_tokens"),
        ({"output_tokens": True}, r"usage\.output_tokens"),
        ({"bogus_tokens": 1}, r"usage\.bogus_tokens"),
        ({"input_tokens": 1, "cache_read_tokens": 2}, r"usage: .*cache_read_tokens"),
        ({1: 5}, r"usage"),
        ([1, 2], r"usage must be a Usage or a mapping of token counts, got \[1, 2\]"),
        ("input_tokens=5", r"usage must be a Usage"),
        (None, r"usage must be a Usage"),
        (5, r"usage must be a Usage"),
    ],
)
def test_bad_usage_is_a_one_line_value_error_naming_usage(usage: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message) as excinfo:
        tokenmeter.price("openai", "gpt-4o", usage)
    one_line_value_error(excinfo)


@pytest.mark.parametrize("at", ["2026-01-01", date(2026, 1, 1), 1_767_225_600, 0])
def test_at_that_is_not_a_datetime_names_at(at: Any) -> None:
    with pytest.raises(ValueError, match=r"^at must be a datetime") as excinfo:
        tokenmeter.price("openai", "gpt-4o", {"input_tokens": 1}, at=at)
    one_line_value_error(excinfo)


def test_tier_that_is_not_a_string_names_tier() -> None:
    with pytest.raises(ValueError, match=r"^tier must be a string") as excinfo:
        tokenmeter.price("openai", "gpt-4o", {"input_tokens": 1}, tier=5)  # type: ignore[arg-type]
    one_line_value_error(excinfo)


@pytest.mark.parametrize("tier", ["bacth", "Batch API", "flex-tier", "priorty", "batch+su", ""])
def test_an_unknown_tier_names_tier(tier: str) -> None:
    """An unknown tier was priced at standard rates without a word: gpt-4o 1k / 500 at
    tier="bacth" cost $0.0075, where batch is $0.00375."""
    with pytest.raises(ValueError, match=r"^tier must be one of standard, .*got '") as excinfo:
        tokenmeter.price("openai", "gpt-4o", {"input_tokens": 1}, tier=tier)
    one_line_value_error(excinfo)


@pytest.mark.parametrize(
    ("tier", "expected"),
    [("BATCH", "0.00375"), (" flex ", "0.00375"), ("auto", "0.0075"), ("batch+global", "0.00375")],
)
def test_a_known_tier_in_any_case_is_priced(tier: str, expected: str) -> None:
    usage = {"input_tokens": 1000, "output_tokens": 500}
    at = datetime(2026, 11, 23, tzinfo=UTC)
    assert tokenmeter.price("openai", "gpt-4o", usage, at=at, tier=tier).total_usd == Decimal(
        expected
    )


def test_passes_given_as_a_list_are_priced_as_a_tuple_of_them() -> None:
    """A usage read from JSON has its passes in a list: price() refused it ("usage.passes: Input
    should be a valid tuple"), even an empty one, where a tuple of the same passes was priced."""
    compaction = {
        "kind": "compaction",
        "model": "claude-sonnet-4-5",
        "usage": {"input_tokens": 5, "output_tokens": 5},
    }
    counts = {"input_tokens": 100, "output_tokens": 10}
    at = datetime(2026, 11, 23, tzinfo=UTC)
    with_tuple = tokenmeter.price(
        "anthropic", "claude-sonnet-4-5", {**counts, "passes": (compaction,)}, at=at
    )
    from_json = json.loads(json.dumps({**counts, "passes": [compaction]}))
    with_list = tokenmeter.price("anthropic", "claude-sonnet-4-5", from_json, at=at)
    assert (with_list.total_usd, with_list.breakdown) == (
        with_tuple.total_usd,
        with_tuple.breakdown,
    )
    assert with_list.breakdown is not None and "compaction" in with_list.breakdown
    empty = tokenmeter.price("anthropic", "claude-sonnet-4-5", {**counts, "passes": []}, at=at)
    alone = tokenmeter.price("anthropic", "claude-sonnet-4-5", counts, at=at)
    assert empty.total_usd == alone.total_usd


def test_a_pass_of_a_pass_made_without_validation_is_refused_when_priced() -> None:
    """Validation refuses a pass of a pass, but ``model_copy(update=...)`` skips it: passes
    nested 2,000 deep that way made price() raise RecursionError, not a ValueError. A nesting
    of two levels is refused alike, and one level is priced as before."""
    one = Pass(kind="compaction", usage=Usage(input_tokens=1, output_tokens=1))
    top = Usage(input_tokens=1, output_tokens=1, passes=(one,))
    usage = top
    for depth in range(2000):
        usage = top.model_copy(update={"passes": (one.model_copy(update={"usage": usage}),)})
        if depth == 0:
            with pytest.raises(ValueError, match=r"^passes\[0\]\.usage: a pass has no passes"):
                tokenmeter.price("anthropic", "claude-sonnet-4-20250514", usage)
    with pytest.raises(ValueError, match=r"^passes\[0\]\.usage: a pass has no passes") as refused:
        tokenmeter.price("anthropic", "claude-sonnet-4-20250514", usage)
    one_line_value_error(refused)
    assert tokenmeter.price("anthropic", "claude-sonnet-4-20250514", top).total_usd


def test_any_mapping_of_counts_is_a_usage() -> None:
    at = datetime(2026, 6, 1, tzinfo=UTC)
    counts = MappingProxyType({"input_tokens": 1_000_000, "output_tokens": 0})
    as_mapping = tokenmeter.price("openai", "gpt-4o", counts, at=at)
    as_usage = tokenmeter.price("openai", "gpt-4o", Usage(**counts), at=at)
    assert as_mapping.total_usd == as_usage.total_usd == Decimal("2.5")


def test_the_callers_decimal_context_changes_no_price() -> None:
    """Costs were computed in the calling thread's decimal context: an application that set
    ``getcontext().prec = 4`` (as the decimal docs' first example does with 6) got 1.295 for
    1.29504125, with breakdown parts that no longer added up to it, and one that traps Inexact
    got ``decimal.Inexact`` raised from pricing."""
    counts = {"input_tokens": 123_457, "output_tokens": 98_765, "cache_read_tokens": 1_001}
    at = datetime(2026, 6, 1, tzinfo=UTC)
    tokenmeter.configure(prices={"my-model": {"input_per_mtok": "0.1234567", "output_per_mtok": 3}})
    expected = {
        model: tokenmeter.price("openai", model, counts, at=at) for model in ("gpt-4o", "my-model")
    }
    with decimal.localcontext() as context:
        context.prec = 4
        context.traps[decimal.Inexact] = True
        for model, cost in expected.items():
            got = tokenmeter.price("openai", model, counts, at=at)
            assert (got.total_usd, got.breakdown) == (cost.total_usd, cost.breakdown)
    assert expected["gpt-4o"].total_usd == Decimal("1.29504125")


def test_a_thread_with_a_low_decimal_precision_does_not_change_the_rates_others_get() -> None:
    """The rates cached for the day (here batch before genai-prices' variant date: a discount
    worked out from ratios) were worked out in the context of the first thread to price: one at
    ``prec = 2`` made every thread's gpt-4o batch price 6.2 for 6.25."""
    counts = {"input_tokens": 1_000_000, "output_tokens": 1_000_000}
    at = datetime(2025, 9, 1, tzinfo=UTC)
    seen: list[Decimal | None] = []

    def low_precision() -> None:
        decimal.getcontext().prec = 2  # this thread's own context
        seen.append(tokenmeter.price("openai", "gpt-4o", counts, at=at, tier="batch").total_usd)

    thread = threading.Thread(target=low_precision)
    thread.start()
    thread.join()
    ours = tokenmeter.price("openai", "gpt-4o", counts, at=at, tier="batch").total_usd
    assert seen == [ours] and ours == Decimal("6.25")


def test_a_tier_of_any_length_leaves_no_long_key_in_the_price_cache() -> None:
    """The price cache is keyed by (provider, model, tier): a tier given to price() was kept as
    given, so 10,000 distinct megabyte tiers held 10 GB until the cache started over (a tier a
    response reports was already reduced to the tiers that change the price). Such a tier is
    refused now, in a short message."""
    from tokenmeter.pricing import _engine

    at = datetime(2026, 6, 1, tzinfo=UTC)
    counts = {"input_tokens": 1_000_000, "output_tokens": 0}
    standard = tokenmeter.price("openai", "gpt-4o", counts, at=at).total_usd
    for tier in ("x" * 100_000, "batch+" + "us" * 50_000):
        with pytest.raises(ValueError, match=r"^tier must be one of") as excinfo:
            tokenmeter.price("openai", "gpt-4o", counts, at=at, tier=tier)
        one_line_value_error(excinfo)
        assert len(str(excinfo.value)) < 500
    batch = tokenmeter.price("openai", "gpt-4o", counts, at=at, tier=" Batch ").total_usd
    assert batch == tokenmeter.price("openai", "gpt-4o", counts, at=at, tier="batch").total_usd
    assert batch is not None and standard is not None and batch < standard
    assert all(len(key[2] or "") <= 20 for key in list(_engine._entries))


def test_a_region_after_the_tier_is_billed_at_its_uplift() -> None:
    """US-only inference (Anthropic ``inference_geo: "us"``) costs 1.1x on top of the tier."""
    counts = {"input_tokens": 1_000_000, "output_tokens": 0}
    at = datetime(2026, 11, 1, tzinfo=UTC)
    batch = tokenmeter.price("anthropic", "claude-opus-4-6", counts, at=at, tier="batch")
    us = tokenmeter.price("anthropic", "claude-opus-4-6", counts, at=at, tier=" Batch+US ")
    assert batch.total_usd == Decimal("2.5")
    assert us.total_usd == Decimal("2.75")
    assert us.price_source == f"{batch.price_source}; US-only inference at 1.1x"


def test_price_has_the_overrides_of_the_environment_and_the_pyproject(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """price() before any record or configure() did not read the settings: a model priced in
    [tool.tokenmeter] prices or a TOKENMETER_PRICES file had no price through price(), while
    the records of its calls had one."""
    from tokenmeter import _runtime

    (tmp_path / "pyproject.toml").write_text(
        '[tool.tokenmeter]\nsinks = []\n[tool.tokenmeter.prices]\n"my-model" = '
        "{input_per_mtok = 1, output_per_mtok = 2}\n"
    )
    monkeypatch.chdir(tmp_path)
    _runtime.reset()
    assert _runtime._settings is None
    counts = {"input_tokens": 10**6, "output_tokens": 10**6}
    assert tokenmeter.price("openai", "my-model", counts).total_usd == Decimal(3)
    assert tokenmeter.record("openai", "my-model", 10**6, 10**6).estimated_cost_usd == Decimal(3)
