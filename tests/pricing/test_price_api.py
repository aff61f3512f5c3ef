"""``tokenmeter.price()``: bad arguments are one-line ValueErrors naming the argument."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any

import pytest
from helpers import one_line_value_error

import tokenmeter
from tokenmeter import Usage


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


def test_any_mapping_of_counts_is_a_usage() -> None:
    at = datetime(2026, 6, 1, tzinfo=UTC)
    counts = MappingProxyType({"input_tokens": 1_000_000, "output_tokens": 0})
    as_mapping = tokenmeter.price("openai", "gpt-4o", counts, at=at)
    as_usage = tokenmeter.price("openai", "gpt-4o", Usage(**counts), at=at)
    assert as_mapping.total_usd == as_usage.total_usd == Decimal("2.5")
