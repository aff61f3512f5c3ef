"""The value types users build themselves (Usage, Pass, Cost, UsageRecord, SessionInfo)."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import one_line_value_error
from pydantic import BaseModel, ValidationError

import tokenmeter
from tokenmeter._models import Pass, first_error

#: A pass's usage that has a pass of its own.
NESTED_PASS = {"input_tokens": 2, "passes": ({"kind": "compaction", "usage": {"input_tokens": 1}},)}


@pytest.mark.parametrize(
    ("model", "values", "message"),
    [
        (
            tokenmeter.Usage,
            {"input_tokens": -1},
            r"^input_tokens: Input should be greater than or equal to 0 \(got -1\)$",
        ),
        (tokenmeter.Usage, {"input_tokens": "5"}, r"^input_tokens: .*integer \(got '5'\)$"),
        (tokenmeter.Usage, {"input_tokens": 10**400}, r"^input_tokens: .*less than or equal"),
        (tokenmeter.Usage, {"bogus": 1}, r"^bogus: Extra inputs are not permitted \(got 1\)$"),
        (
            tokenmeter.Usage,
            {"input_tokens": 1, "cache_read_tokens": 5},
            r"^cache_read_tokens \+ cache_write_tokens \(5 \+ 0\) cannot exceed "
            r"input_tokens \(1\)$",
        ),
        (
            tokenmeter.Usage,
            {"passes": ({"kind": "compaction", "usage": {"input_tokens": -1}},)},
            r"^passes\.0\.usage\.input_tokens: ",
        ),
        (
            tokenmeter.Usage,
            {"input_tokens": 9, "passes": ({"kind": "compaction", "usage": NESTED_PASS},)},
            r"^passes\[0\]\.usage: a pass has no passes of its own$",
        ),
        (Pass, {"kind": "compaction"}, r"^usage: Field required"),
        (tokenmeter.Cost, {"total_usd": "abc"}, r"^total_usd: .*decimal \(got 'abc'\)$"),
        (tokenmeter.UsageRecord, {}, r"^timestamp: Field required"),
        (tokenmeter.SessionInfo, {"id": "s", "started_at": "soon"}, r"^started_at: "),
    ],
)
def test_building_a_model_from_bad_values_is_a_one_line_value_error_naming_the_field(
    model: type[BaseModel], values: dict[str, Any], message: str
) -> None:
    """It was pydantic's multi-line dump with a URL (a ValueError subclass, but not one line)."""
    with pytest.raises(ValueError, match=message) as excinfo:
        model(**values)
    one_line_value_error(excinfo)
    # Only calling the class changed: model_validate (what nested models go through too) is
    # pydantic's, errors and all, and says the same.
    with pytest.raises(ValidationError) as validation:
        model.model_validate(values)
    assert first_error(validation.value) == str(excinfo.value)


def test_a_pass_of_a_pass_is_refused_where_the_usage_is_made() -> None:
    """A usage whose passes nested 600 deep (built level by level: each was valid on its own)
    made price() raise RecursionError, not a ValueError; a pass of a pass means nothing in any
    provider's billing, so the second level is refused."""
    usage = tokenmeter.Usage(input_tokens=1, output_tokens=1)
    with pytest.raises(ValueError, match=r"^passes\[0\]\.usage: a pass has no passes") as refused:
        for _ in range(600):
            compaction = Pass(kind="compaction", usage=usage)
            usage = tokenmeter.Usage(input_tokens=1, output_tokens=1, passes=(compaction,))
        tokenmeter.price("anthropic", "claude-sonnet-4-20250514", usage)
    one_line_value_error(refused)
    # One level, as every reader makes: priced as before.
    assert usage.passes and not usage.passes[0].usage.passes
    assert tokenmeter.price("anthropic", "claude-sonnet-4-20250514", usage).total_usd


def test_a_pass_of_a_pass_given_as_dicts_nested_deep_is_the_one_line_refusal() -> None:
    """A usage dict with passes nested 600 deep got pydantic's depth error, not the refusal of
    a pass of a pass: price() raised a 3,973-character ValueError, a location of
    ``usage.passes.0.usage.passes.0...`` that never named the rule. Refused before pydantic
    descends into the passes now, in every way a dict becomes a Usage."""
    counts: dict[str, Any] = {"input_tokens": 1, "output_tokens": 1}
    for _ in range(600):
        counts = {**counts, "passes": [{"kind": "compaction", "usage": counts}]}
    refusal = "passes[0].usage: a pass has no passes of its own"

    with pytest.raises(ValueError) as priced:
        tokenmeter.price("anthropic", "claude-sonnet-4-20250514", counts)
    assert one_line_value_error(priced) == f"usage: {refusal}"
    with pytest.raises(ValueError) as built:
        tokenmeter.Usage(**counts)
    assert one_line_value_error(built) == refusal
    with pytest.raises(ValidationError) as validated:
        tokenmeter.Usage.model_validate(counts)
    assert first_error(validated.value) == refusal
