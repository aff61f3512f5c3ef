"""User prices (dict, TOML, JSON, since dates, provider scope), aliases, and bad input."""

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from tokenmeter._models import Usage
from tokenmeter.pricing import (
    describe_price,
    load_prices_file,
    price_usage,
    read_prices_file,
    set_aliases,
    set_user_prices,
)

MY_MODEL = {
    "input_per_mtok": 2,
    "output_per_mtok": 10,
    "cache_read_per_mtok": 0.2,
    "cache_write_per_mtok": 2.5,
}
# 1M input of which 200k cached read and 100k cache written, 100k output:
# 700k*2 + 200k*0.2 + 100k*2.5 + 100k*10 = 1.4 + 0.04 + 0.25 + 1.0
USAGE = Usage(
    input_tokens=1_000_000,
    cache_read_tokens=200_000,
    cache_write_tokens=100_000,
    output_tokens=100_000,
)
DAY = datetime(2026, 6, 1, tzinfo=UTC)


def test_user_price_from_a_dict() -> None:
    set_user_prices({"my-model": MY_MODEL})

    cost = price_usage(None, "my-model", USAGE, at=DAY)

    assert cost.total_usd == Decimal("2.69")
    assert cost.breakdown == {
        "input": Decimal("1.4"),
        "cache_read": Decimal("0.04"),
        "cache_write": Decimal("0.25"),
        "output": Decimal("1.0"),
    }
    assert cost.price_source == "override"
    assert cost.priced_model == "my-model"


def test_user_price_wins_over_genai_prices() -> None:
    usage = Usage(input_tokens=1_000_000, output_tokens=0)
    assert price_usage("openai", "gpt-4o", usage, at=DAY).total_usd == Decimal("2.5")

    set_user_prices({"gpt-4o": {"input_per_mtok": 1, "output_per_mtok": 1}})

    cost = price_usage("openai", "gpt-4o", usage, at=DAY)
    assert cost.total_usd == Decimal("1")
    assert cost.price_source == "override"


def test_user_price_matches_normalised_spellings() -> None:
    set_user_prices({"My-Model": MY_MODEL})
    assert price_usage("openai", "openai/MY-MODEL", USAGE, at=DAY).total_usd == Decimal("2.69")


def test_missing_cache_rates_bill_cache_tokens_at_the_input_rate() -> None:
    set_user_prices({"plain": {"input_per_mtok": "3", "output_per_mtok": "4"}})
    # 1M input (all kinds) at $3 + 100k output at $4
    assert price_usage(None, "plain", USAGE, at=DAY).total_usd == Decimal("3.4")


def test_since_dates_choose_the_price_in_effect() -> None:
    set_user_prices(
        {
            "my-model": [
                {"input_per_mtok": 1, "output_per_mtok": 1},
                {"input_per_mtok": 2, "output_per_mtok": 2, "since": "2026-01-01"},
                {"input_per_mtok": 3, "output_per_mtok": 3, "since": "2026-07-01"},
            ]
        }
    )
    usage = Usage(input_tokens=1_000_000, output_tokens=0)

    def on(day: str) -> Decimal | None:
        return price_usage(None, "my-model", usage, at=datetime.fromisoformat(day)).total_usd

    assert on("2025-12-31T23:59:59+00:00") == Decimal(1)
    assert on("2026-01-01T00:00:00+00:00") == Decimal(2)
    assert on("2026-06-30T12:00:00+00:00") == Decimal(2)
    # 2026-06-30 22:00 in New York is already July 1st in UTC
    assert on("2026-06-30T22:00:00-04:00") == Decimal(3)
    assert on("2027-01-01T00:00:00+00:00") == Decimal(3)


def test_before_the_first_since_date_the_table_price_applies() -> None:
    set_user_prices({"gpt-4o": {"input_per_mtok": 1, "output_per_mtok": 1, "since": "2026-07-01"}})
    usage = Usage(input_tokens=1_000_000, output_tokens=0)

    before = price_usage("openai", "gpt-4o", usage, at=DAY)
    after = price_usage("openai", "gpt-4o", usage, at=datetime(2026, 7, 1, tzinfo=UTC))

    assert (before.total_usd, before.price_source) == (Decimal("2.5"), "genai-prices 0.2.3")
    assert (after.total_usd, after.price_source) == (Decimal(1), "override")


def test_unknown_model_before_its_first_since_date_is_unpriced() -> None:
    set_user_prices({"my-model": {**MY_MODEL, "since": "2026-07-01"}})
    assert price_usage(None, "my-model", USAGE, at=DAY).total_usd is None


def test_provider_scoped_prices() -> None:
    set_user_prices(
        {
            "shared-model": [
                {"input_per_mtok": 1, "output_per_mtok": 0},
                {"input_per_mtok": 5, "output_per_mtok": 0, "provider": "Together"},
            ],
            "only-groq": {"input_per_mtok": 7, "output_per_mtok": 0, "provider": "groq"},
        }
    )
    usage = Usage(input_tokens=1_000_000, output_tokens=0)

    assert price_usage("together", "shared-model", usage, at=DAY).total_usd == Decimal(5)
    assert price_usage("together_ai", "shared-model", usage, at=DAY).total_usd == Decimal(5)
    assert price_usage("openai", "shared-model", usage, at=DAY).total_usd == Decimal(1)
    assert price_usage(None, "shared-model", usage, at=DAY).total_usd == Decimal(1)
    assert price_usage("groq", "only-groq", usage, at=DAY).total_usd == Decimal(7)
    assert price_usage("openai", "only-groq", usage, at=DAY).total_usd is None


def test_prices_from_a_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(
        """
["my-model"]
input_per_mtok = 2
output_per_mtok = 10
cache_read_per_mtok = 0.2
cache_write_per_mtok = 2.5

[["dated-model"]]
input_per_mtok = 1
output_per_mtok = 1

[["dated-model"]]
input_per_mtok = 4
output_per_mtok = 4
since = 2026-03-01
provider = "openai"
""",
        encoding="utf-8",
    )
    load_prices_file(path)
    usage = Usage(input_tokens=1_000_000, output_tokens=0)

    assert price_usage(None, "my-model", USAGE, at=DAY).total_usd == Decimal("2.69")
    assert price_usage("openai", "dated-model", usage, at=DAY).total_usd == Decimal(4)
    assert price_usage("openai", "dated-model", usage, at=datetime(2026, 2, 1)).total_usd == 1
    assert price_usage("google", "dated-model", usage, at=DAY).total_usd == Decimal(1)


def test_prices_from_a_json_file(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"my-model": MY_MODEL}), encoding="utf-8")

    load_prices_file(str(path))

    assert price_usage(None, "my-model", USAGE, at=DAY).total_usd == Decimal("2.69")
    assert read_prices_file(path) == {"my-model": MY_MODEL}


def test_loading_a_file_replaces_previous_user_prices(tmp_path: Path) -> None:
    set_user_prices({"old-model": MY_MODEL})
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"my-model": MY_MODEL}), encoding="utf-8")

    load_prices_file(path)

    assert price_usage(None, "old-model", USAGE, at=DAY).total_usd is None
    assert price_usage(None, "my-model", USAGE, at=DAY).total_usd == Decimal("2.69")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"my-model": {"input_per_mtok": 2}}', r"entry 'my-model': missing output_per_mtok"),
        (
            '{"my-model": {"input_per_mtok": 2, "output_per_mtok": -1}}',
            r"entry 'my-model': output_per_mtok must be a finite non-negative number",
        ),
        (
            '{"my-model": {"input_per_mtok": "two", "output_per_mtok": 1}}',
            r"entry 'my-model': input_per_mtok must be a number",
        ),
        (
            '{"my-model": {"input_per_mtok": true, "output_per_mtok": 1}}',
            r"entry 'my-model': input_per_mtok must be a number",
        ),
        (
            '{"my-model": {"input_per_mtok": 1, "output_per_mtok": 1, "input_per_mtk": 3}}',
            r"entry 'my-model': unknown key\(s\) input_per_mtk",
        ),
        (
            '{"ok": {"input_per_mtok": 1, "output_per_mtok": 1},'
            ' "my-model": [{"input_per_mtok": 1, "output_per_mtok": 1},'
            ' {"input_per_mtok": 1, "output_per_mtok": 1, "since": "next week"}]}',
            r"entry 'my-model'\[1\]: since must be a date",
        ),
        ('{"my-model": 3}', r"entry 'my-model': expected a table of prices"),
        ('{"my-model": []}', r"entry 'my-model': expected a table of prices"),
        ('["my-model"]', r"expected a table of models"),
        ('{"my-model": {', r"not valid JSON"),
    ],
)
def test_malformed_json_file_names_the_file_and_entry(
    tmp_path: Path, content: str, message: str
) -> None:
    set_user_prices({"previous": MY_MODEL})
    path = tmp_path / "bad-prices.json"
    path.write_text(content, encoding="utf-8")

    with pytest.raises(ValueError, match=message) as excinfo:
        load_prices_file(path)

    assert str(path) in str(excinfo.value)
    # Nothing half-written: the previous prices are still in force.
    assert price_usage(None, "previous", USAGE, at=DAY).total_usd == Decimal("2.69")


def test_malformed_toml_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text('["my-model"]\ninput_per_mtok = \n', encoding="utf-8")
    with pytest.raises(ValueError, match="not valid TOML") as excinfo:
        load_prices_file(path)
    assert str(path) in str(excinfo.value)


def test_missing_file_is_a_value_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ValueError, match="cannot read prices file") as excinfo:
        load_prices_file(path)
    assert str(path) in str(excinfo.value)


def test_malformed_dict_entry_names_the_entry_and_changes_nothing() -> None:
    set_user_prices({"previous": MY_MODEL})
    with pytest.raises(ValueError, match=r"price entry 'broken': missing input_per_mtok"):
        set_user_prices({"fine": MY_MODEL, "broken": {"output_per_mtok": 1}})
    assert price_usage(None, "previous", USAGE, at=DAY).total_usd == Decimal("2.69")
    assert price_usage(None, "fine", USAGE, at=DAY).total_usd is None


def test_aliases_map_deployments_to_models() -> None:
    usage = Usage(input_tokens=1000, output_tokens=500)
    set_aliases(
        {"My-GPT4o-Prod-Deployment": "gpt-4o", "proxy-route-7": "anthropic/claude-haiku-4-5"}
    )

    azure = price_usage("azure", "my-gpt4o-prod-deployment", usage, at=DAY)
    proxied = price_usage(None, "proxy-route-7", usage, at=DAY)

    assert (azure.total_usd, azure.priced_model) == (Decimal("0.0075"), "gpt-4o")
    assert (proxied.total_usd, proxied.priced_model) == (Decimal("0.0035"), "claude-haiku-4-5")


def test_alias_to_a_user_priced_model() -> None:
    set_user_prices({"my-model": MY_MODEL})
    set_aliases({"prod": "my-model"})
    assert price_usage("azure", "prod", USAGE, at=DAY).total_usd == Decimal("2.69")


@pytest.mark.parametrize("bad", [{"": "gpt-4o"}, {"x": ""}, {"x": 3}])
def test_bad_alias_is_a_value_error(bad: dict[str, object]) -> None:
    set_aliases({"keep": "gpt-4o"})
    with pytest.raises(ValueError, match="alias"):
        set_aliases(bad)  # type: ignore[arg-type]
    assert price_usage(None, "keep", USAGE, at=DAY).total_usd is not None


def test_describe_price_of_an_override() -> None:
    set_user_prices({"my-model": {**MY_MODEL, "cache_write_1h_per_mtok": 4}})

    described = describe_price(None, "my-model", at=DAY)

    assert described is not None
    assert described.price_source == "override"
    assert (described.input_per_mtok, described.output_per_mtok) == (Decimal(2), Decimal(10))
    assert described.cache_read_per_mtok == Decimal("0.2")
    assert described.cache_write_per_mtok == Decimal("2.5")
    assert described.cache_write_1h_per_mtok == Decimal(4)
    assert described.tiers == ()
