"""User prices (dict, TOML, JSON, since dates, provider scope), aliases, and bad input."""

import json
import math
import os
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from helpers import GENAI_PRICES_SOURCE, one_line_value_error

import tokenmeter
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


@pytest.mark.parametrize(
    ("model", "served"),
    [
        ("claude-sonnet-4-5", "anthropic/claude-sonnet-4.5"),
        ("claude-haiku-4-5", "anthropic/claude-haiku-4.5"),
        ("claude-3-7-sonnet", "anthropic/claude-3.7-sonnet"),
    ],
)
def test_a_claude_price_applies_to_openrouters_dotted_spelling(model: str, served: str) -> None:
    """OpenRouter names Claude Sonnet 4.5 ``anthropic/claude-sonnet-4.5``: a price set for
    claude-sonnet-4-5 was not applied to it (priced from OpenRouter's table, $0.30 for 100k
    in, where the price says $0.10)."""
    set_user_prices({model: {"input_per_mtok": 1, "output_per_mtok": 1}})
    usage = Usage(input_tokens=100_000, output_tokens=0)

    cost = price_usage("openrouter", served, usage, at=DAY)

    assert (cost.total_usd, cost.price_source) == (Decimal("0.1"), "override")


def test_a_price_set_for_a_base_model_is_not_its_fine_tunes_price() -> None:
    """A fine-tune is billed at its own rates (gpt-4o's: $3.75/$15 where gpt-4o's are $2.50/$10):
    a price set for gpt-4o billed every gpt-4o fine-tune at it, a third under, as gpt-4o."""
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    tuned = "ft:gpt-4o-2024-08-06:acme::abc123"
    set_user_prices({"gpt-4o": {"input_per_mtok": 2, "output_per_mtok": 8}})

    cost = price_usage("openai", tuned, usage, at=DAY)
    assert (cost.total_usd, cost.priced_model) == (Decimal("18.75"), "ft:gpt-4o")
    assert price_usage("openai", "gpt-4o-2024-08-06", usage, at=DAY).total_usd == Decimal(10)
    # A fine-tune no table prices is priced as its base, by the user's price then.
    set_user_prices({"o4-mini": {"input_per_mtok": 2, "output_per_mtok": 8}})
    base = price_usage("openai", "ft:o4-mini-2025-04-16:acme::x", usage, at=DAY)
    assert (base.total_usd, base.price_source) == (Decimal(10), "override")
    # A price set for the fine-tune is its price.
    set_user_prices({"ft:gpt-4o": {"input_per_mtok": 2, "output_per_mtok": 8}})
    assert price_usage("openai", tuned, usage, at=DAY).total_usd == Decimal(10)


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

    assert (before.total_usd, before.price_source) == (Decimal("2.5"), GENAI_PRICES_SOURCE)
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


def test_a_snapshots_price_that_does_not_apply_leaves_the_call_to_its_familys_price() -> None:
    """The user's gpt-4o price bills every gpt-4o snapshot; a snapshot's own entries for another
    provider, or from a later date, hid it: the call fell to the table's $2.50, not the $2 set."""
    set_user_prices(
        {
            "gpt-4o": {"input_per_mtok": 2, "output_per_mtok": 8},
            "gpt-4o-2024-08-06": [
                {"input_per_mtok": 1, "output_per_mtok": 4, "provider": "azure"},
                {"input_per_mtok": 1.5, "output_per_mtok": 6, "since": "2027-01-01"},
            ],
        }
    )
    usage = Usage(input_tokens=1_000_000, output_tokens=0)

    def cost(provider: str, on: datetime = DAY) -> tuple[Decimal | None, str | None]:
        found = price_usage(provider, "gpt-4o-2024-08-06", usage, at=on)
        return found.total_usd, found.price_source

    assert cost("openai") == (Decimal(2), "override")
    assert cost("azure") == (Decimal(1), "override")
    assert cost("openai", datetime(2027, 1, 1, tzinfo=UTC)) == (Decimal("1.5"), "override")
    assert price_usage("openai", "gpt-4o-2024-11-20", usage, at=DAY).total_usd == Decimal(2)


#: (provider, the name a price is set under, a name the provider answers its calls with):
#: OpenAI's 4-digit dates, Vertex's build numbers, Anthropic's ``-latest``.
VERSIONED_NAMES = [
    ("openai", "gpt-3.5-turbo", "gpt-3.5-turbo-0125"),
    ("openai", "gpt-4", "gpt-4-0613"),
    ("google", "gemini-2.0-flash", "gemini-2.0-flash-001"),
    ("google", "gemini-2.0-flash-lite", "gemini-2.0-flash-lite-001"),
    ("google", "gemini-1.5-pro", "gemini-1.5-pro-002"),
    ("anthropic", "claude-3-5-sonnet", "claude-3-5-sonnet-latest"),
]


@pytest.mark.parametrize(("provider", "model", "served"), VERSIONED_NAMES)
def test_a_price_set_under_a_models_name_prices_its_versioned_names(
    provider: str, model: str, served: str
) -> None:
    """Providers answer with the snapshot that served the call (``gpt-3.5-turbo-0125``,
    ``gemini-2.0-flash-001``): a price set under the model's name missed every name but those
    with an 8- or 10-digit date, and the table's price was recorded instead, with no warning
    (1M tokens in and 1M out of gpt-3.5-turbo-0125: $2, not the $1 set; gpt-4-0613: $90)."""
    set_user_prices({model: {"input_per_mtok": 0.25, "output_per_mtok": 0.75}})
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)

    cost = price_usage(provider, served, usage, at=DAY)
    described = describe_price(None, served, at=DAY)

    assert (cost.total_usd, cost.price_source, cost.priced_model) == (Decimal(1), "override", model)
    assert described is not None
    assert (described.price_source, described.input_per_mtok) == ("override", Decimal("0.25"))


def test_a_versioned_names_own_price_still_wins_and_no_table_entry_is_guessed() -> None:
    """Dropping the version suffix comes after every other spelling, and for the user's prices
    only: a snapshot's own price wins over its model's, a fine-tune takes the price set under
    ``ft:``, and a model no table prices does not take the price of another that a name
    without its suffix would find (gemini-2.0-flash-live-001 is not gemini-2.0-flash)."""
    set_user_prices(
        {
            "gpt-4": {"input_per_mtok": 15, "output_per_mtok": 30},
            "gpt-4-0613": {"input_per_mtok": 20, "output_per_mtok": 40},
            "ft:gpt-3.5-turbo": {"input_per_mtok": 1, "output_per_mtok": 2},
            "gemini-2.0-flash": {"input_per_mtok": 0, "output_per_mtok": 0},
        }
    )
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)

    def cost(provider: str, model: str) -> Decimal | None:
        return price_usage(provider, model, usage, at=DAY).total_usd

    assert cost("openai", "gpt-4-0613") == Decimal(60)
    assert cost("openai", "gpt-4-0314") == Decimal(45)
    assert cost("openai", "ft:gpt-3.5-turbo-0125:acme::abc123") == Decimal(3)
    assert cost("google", "gemini-2.0-flash-001") == Decimal(0)
    assert cost("google", "gemini-2.0-flash-live-001") is None


def test_an_alias_set_under_a_models_name_applies_to_its_versioned_names() -> None:
    """An alias keyed by a model's name (the only way to price a self-hosted server's model)
    missed the server's versioned answer: ``my-model-0613`` was recorded unpriced."""
    set_aliases({"my-model": "gpt-4o-mini"})
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)

    cost = price_usage("vllm", "my-model-0613", usage, at=DAY)

    assert (cost.total_usd, cost.priced_model) == (Decimal("0.75"), "gpt-4o-mini")


def test_a_versioned_names_own_price_wins_over_an_alias_of_its_models_name() -> None:
    """An alias set under ``gpt-4`` took ``gpt-4-0613`` to the alias's table price ($10 for 1M
    input), though the user priced ``gpt-4-0613`` itself ($1): the name's own price comes first."""
    set_user_prices({"gpt-4-0613": {"input_per_mtok": 1, "output_per_mtok": 2}})
    set_aliases({"gpt-4": "gpt-4-turbo"})
    usage = Usage(input_tokens=1_000_000, output_tokens=0)

    assert price_usage("openai", "gpt-4-0613", usage, at=DAY).total_usd == Decimal(1)
    assert price_usage("openai", "gpt-4-0314", usage, at=DAY).priced_model == "gpt-4-turbo"


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
    # numbers as written (Decimal), not as floats
    assert read_prices_file(path) == {"my-model": {k: Decimal(str(v)) for k, v in MY_MODEL.items()}}


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


def test_a_fifo_a_device_or_a_directory_is_refused_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A FIFO waited for a writer for ever (``configure()`` and ``tokenmeter prices`` hung), and
    /dev/zero filled memory: only a regular file is read."""
    fifo = tmp_path / "prices.json"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero"), tmp_path):
        with pytest.raises(ValueError, match="must be a regular file") as excinfo:
            load_prices_file(path)
        assert str(path) in str(excinfo.value)


def test_a_json_prices_file_naming_a_key_twice_is_refused(tmp_path: Path) -> None:
    """The JSON decoder kept a repeated key's last value: a model's second entry silently won
    ($25 a million input tokens instead of $2.50), where TOML refuses the file."""
    path = tmp_path / "prices.json"
    low, high = json.dumps(MY_MODEL), json.dumps({**MY_MODEL, "input_per_mtok": 25})
    path.write_text(f'{{"my-model": {low}, "my-model": {high}}}')
    with pytest.raises(ValueError, match=r"not valid JSON: 'my-model' is given twice$"):
        load_prices_file(path)
    path.write_text('{"my-model": {"input_per_mtok": 1, "input_per_mtok": 2}}')
    with pytest.raises(ValueError, match=r"'input_per_mtok' is given twice$"):
        load_prices_file(path)


def test_a_prices_file_past_the_size_bound_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tokenmeter.pricing import _overrides

    monkeypatch.setattr(_overrides, "MAX_PRICES_FILE", 1_000)
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({f"model-{n}": MY_MODEL for n in range(100)}))
    with pytest.raises(ValueError, match="not a prices file"):
        load_prices_file(path)
    path.write_text(json.dumps({"my-model": MY_MODEL}))
    load_prices_file(path)
    assert price_usage(None, "my-model", USAGE, at=DAY).total_usd is not None


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


# -- bad values through the public API: configure(prices=...) and the TOKENMETER_PRICES file ----


BAD_RATES = [
    pytest.param(-1, id="negative"),
    pytest.param(-0.01, id="negative-float"),
    pytest.param("-1", id="negative-string"),
    pytest.param(math.nan, id="nan"),
    pytest.param(math.inf, id="inf"),
    pytest.param(-math.inf, id="minus-inf"),
    pytest.param("nan", id="nan-string"),
    pytest.param("Infinity", id="inf-string"),
    pytest.param(Decimal("NaN"), id="nan-decimal"),
    pytest.param(Decimal("sNaN"), id="snan-decimal"),
    pytest.param("two", id="word"),
    pytest.param("", id="empty-string"),
    pytest.param(1e300, id="huge"),
    pytest.param("1e300", id="huge-string"),
    pytest.param(10**400, id="huge-int"),
    pytest.param(True, id="true"),
    pytest.param(False, id="false"),
    pytest.param(None, id="none"),
    pytest.param([1], id="list"),
    pytest.param({"usd": 1}, id="table"),
    pytest.param("x" * 10_000, id="long-string"),
]


@pytest.mark.parametrize("rate", BAD_RATES)
def test_bad_rate_given_to_configure_names_the_model_and_field(rate: object) -> None:
    with pytest.raises(ValueError, match=r"'my-model'.*output_per_mtok") as excinfo:
        tokenmeter.configure(prices={"my-model": {"input_per_mtok": 1, "output_per_mtok": rate}})
    one_line_value_error(excinfo)


@pytest.mark.parametrize(
    "since",
    [5, True, 2026.5, [2026, 1, 1], "soon", "2026-02-30", "", "2026-01-01" + "x" * 10_000],
)
def test_a_since_that_is_not_a_date_names_the_model(since: object) -> None:
    with pytest.raises(ValueError, match=r"'my-model'.*since must be a date") as excinfo:
        tokenmeter.configure(prices={"my-model": {**MY_MODEL, "since": since}})
    one_line_value_error(excinfo)


@pytest.mark.parametrize(
    "since",
    ["2027-01-01T12:00:00Z", "2027-01-01T02:00:00+05:00", datetime(2027, 1, 1, 0, 30, tzinfo=UTC)],
)
def test_a_since_with_a_time_of_day_is_refused_not_moved_to_midnight(since: object) -> None:
    """Prices change by the UTC day: "2027-01-01T12:00:00Z" was taken as 2027-01-01 and
    applied twelve hours early, "2027-01-01T02:00:00+05:00" from 2026-12-31 00:00 UTC."""
    with pytest.raises(ValueError, match=r"'my-model'.*since .*a time of day is not") as excinfo:
        tokenmeter.configure(prices={"my-model": {**MY_MODEL, "since": since}})
    one_line_value_error(excinfo)


def test_a_since_at_utc_midnight_is_that_day() -> None:
    usage = Usage(input_tokens=1_000_000, output_tokens=0)
    for since in ("2027-01-01T00:00:00Z", "2027-01-01T05:00:00+05:00", datetime(2027, 1, 1)):
        set_user_prices({"my-model": {"input_per_mtok": 1, "output_per_mtok": 1, "since": since}})
        before = price_usage(None, "my-model", usage, at=datetime(2026, 12, 31, 23, 59, tzinfo=UTC))
        assert before.total_usd is None, since
        on_the_day = price_usage(None, "my-model", usage, at=datetime(2027, 1, 1, tzinfo=UTC))
        assert on_the_day.total_usd == Decimal(1), since


def test_a_rate_nested_too_deeply_to_print_names_the_model_and_field() -> None:
    nested: list[object] = []
    for _ in range(100_000):
        nested = [nested]
    with pytest.raises(ValueError, match=r"'my-model'.*input_per_mtok") as excinfo:
        tokenmeter.configure(prices={"my-model": {"input_per_mtok": nested, "output_per_mtok": 1}})
    one_line_value_error(excinfo)


def test_largest_sensible_rate_and_numeric_strings_are_accepted() -> None:
    tokenmeter.configure(
        prices={"my-model": {"input_per_mtok": "1000000", "output_per_mtok": Decimal("0.5")}}
    )
    usage = Usage(input_tokens=1, output_tokens=2)
    assert tokenmeter.price("openai", "my-model", usage).total_usd == Decimal("1.000001")


@pytest.mark.parametrize("rate", ["1e-999999999", Decimal("1E-13"), 1e-300, "0." + "0" * 99 + "1"])
def test_a_rate_too_small_to_write_out_is_refused(rate: object) -> None:
    """ "1e-999999999" was accepted: one record's cost then took a million digits in the journal
    and ``tokenmeter tail``, and ``tokenmeter prices --format json`` died of MemoryError."""
    with pytest.raises(ValueError, match=r"'my-model'.*output_per_mtok.*at least 1E-12") as excinfo:
        tokenmeter.configure(prices={"my-model": {"input_per_mtok": 1, "output_per_mtok": rate}})
    one_line_value_error(excinfo)


def test_the_smallest_rate_and_any_zero_are_accepted() -> None:
    tokenmeter.configure(
        prices={"my-model": {"input_per_mtok": "1e-12", "output_per_mtok": "0E-999999999"}}
    )
    usage = Usage(input_tokens=1_000_000, output_tokens=5)
    cost = tokenmeter.price("openai", "my-model", usage)
    assert cost.breakdown is not None and cost.breakdown["output"] == 0
    assert cost.total_usd == Decimal("1E-12")


def _configure_from_file(
    path: Path, content: bytes, monkeypatch: pytest.MonkeyPatch
) -> pytest.ExceptionInfo[ValueError]:
    path.write_bytes(content)
    monkeypatch.setenv("TOKENMETER_PRICES", str(path))
    with pytest.raises(ValueError) as excinfo:
        tokenmeter.configure()
    message = one_line_value_error(excinfo)
    assert str(path) in message
    return excinfo


@pytest.mark.parametrize(
    "rate",
    [
        "-1",
        "NaN",
        "Infinity",
        "-Infinity",
        "1e300",
        "1e400",
        "1e-400",  # read as a float it was 0.0: the model priced at $0 without a word
        '"two"',
        '"nan"',
        "true",
        "null",
    ],
)
def test_bad_rate_in_a_json_file_names_the_file_model_and_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rate: str
) -> None:
    content = f'{{"my-model": {{"input_per_mtok": 1, "output_per_mtok": {rate}}}}}'
    excinfo = _configure_from_file(tmp_path / "prices.json", content.encode(), monkeypatch)
    excinfo.match(r"'my-model'.*output_per_mtok")


@pytest.mark.parametrize("rate", ["-1", "nan", "inf", "-inf", "1e300", "1e-400", '"two"', "true"])
def test_bad_rate_in_a_toml_file_names_the_file_model_and_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rate: str
) -> None:
    content = f'["my-model"]\ninput_per_mtok = 1\noutput_per_mtok = {rate}\n'
    excinfo = _configure_from_file(tmp_path / "prices.toml", content.encode(), monkeypatch)
    excinfo.match(r"'my-model'.*output_per_mtok")


@pytest.mark.parametrize(
    "since", ["5", "true", '"soon"', "07:30:00", "[2026]", "2027-01-01T12:00:00Z"]
)
def test_a_since_in_a_toml_file_that_is_not_a_date_names_the_file_and_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, since: str
) -> None:
    content = f'["my-model"]\ninput_per_mtok = 1\noutput_per_mtok = 1\nsince = {since}\n'
    excinfo = _configure_from_file(tmp_path / "prices.toml", content.encode(), monkeypatch)
    excinfo.match(r"'my-model'.*since must be a date")


@pytest.mark.parametrize("depth", [900, 100_000])
def test_deeply_nested_json_file_names_the_file_and_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, depth: int
) -> None:
    """Shallow enough for the decoder, the entry is rejected; deeper, the decoder's
    RecursionError is turned into the same kind of error."""
    nested = "[" * depth + "]" * depth
    content = f'{{"fine": {{"input_per_mtok": 1, "output_per_mtok": 1}}, "my-model": {nested}}}'
    excinfo = _configure_from_file(tmp_path / "prices.json", content.encode(), monkeypatch)
    excinfo.match(r"'my-model'")


def test_deeply_nested_toml_file_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nested = "[" * 100_000 + "]" * 100_000
    content = f'["my-model"]\ninput_per_mtok = {nested}\noutput_per_mtok = 1\n'
    excinfo = _configure_from_file(tmp_path / "prices.toml", content.encode(), monkeypatch)
    excinfo.match("nested too deeply")


@pytest.mark.parametrize("name", ["prices.json", "prices.toml", "prices"])
def test_prices_file_that_is_not_utf8_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    content = b'{"my-model": {"input_per_mtok": 1, "output_per_mtok": "\xff"}}'
    excinfo = _configure_from_file(tmp_path / name, content, monkeypatch)
    excinfo.match("UTF-8")


def test_prices_file_with_a_byte_order_mark_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Windows editors write a BOM; it is not a reason to reject the file."""
    path = tmp_path / "prices"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"my-model": MY_MODEL}).encode())
    monkeypatch.setenv("TOKENMETER_PRICES", str(path))
    tokenmeter.configure()
    assert tokenmeter.price("openai", "my-model", USAGE, at=DAY).total_usd == Decimal("2.69")


def test_prices_file_named_in_pyproject_is_checked_too(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.tokenmeter]\nprices-file = "prices.json"\n')
    (tmp_path / "prices.json").write_text(
        '{"my-model": {"input_per_mtok": 1, "output_per_mtok": 1e300}}'
    )
    with pytest.raises(ValueError, match=r"prices.json.*'my-model'.*output_per_mtok") as excinfo:
        tokenmeter.configure()
    one_line_value_error(excinfo)


def test_configure_prices_win_over_the_file_however_the_file_spells_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Model names are matched in any case; the file's "My-Model" won over configure()'s
    "my-model" (both were kept, and the file's came first)."""
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"My-Model": {"input_per_mtok": 1, "output_per_mtok": 1}}))
    monkeypatch.setenv("TOKENMETER_PRICES", str(path))
    tokenmeter.configure(prices={"my-model": MY_MODEL})
    assert tokenmeter.price("openai", "MY-MODEL", USAGE, at=DAY).total_usd == Decimal("2.69")


def test_describe_price_without_a_provider_finds_a_provider_scoped_override() -> None:
    """``tokenmeter prices only-groq`` said "no price known ... Did you mean only-groq?": without
    ``--provider`` a model is found as a metered call would find it, so under groq here."""
    set_user_prices({"only-groq": {"input_per_mtok": 7, "output_per_mtok": 0, "provider": "groq"}})

    described = describe_price(None, "only-groq", at=DAY)

    assert described is not None
    assert (described.provider, described.price_source) == ("groq", "override")
    assert described.input_per_mtok == Decimal(7)
    assert describe_price("openai", "only-groq", at=DAY) is None


@pytest.mark.parametrize(
    "prices",
    [
        {"My-Model": MY_MODEL, "my-model": {"input_per_mtok": 9, "output_per_mtok": 9}},
        {"my-model": [MY_MODEL, {**MY_MODEL, "input_per_mtok": 9}]},
        {"my-model": [{**MY_MODEL, "since": "2026-01-01"}, {**MY_MODEL, "since": "2026-01-01"}]},
        {"my-model": [{**MY_MODEL, "provider": "OpenAI"}, {**MY_MODEL, "provider": "openai"}]},
    ],
)
def test_two_prices_for_the_same_model_provider_and_date_are_refused(
    prices: dict[str, object],
) -> None:
    """Which of two such entries applied was an accident of their order (the first), silently."""
    with pytest.raises(ValueError, match=r"'my-model'.*two prices") as excinfo:
        tokenmeter.configure(prices=prices)
    one_line_value_error(excinfo)


def test_an_override_keeps_the_tables_fees_per_request_and_per_tool_request() -> None:
    """A user price sets rates per token only (it has no key for a fee): a negotiated token
    price for claude-sonnet-4-5 billed its web searches at $0, and one for Perplexity's sonar
    dropped its fee per request. The table's fees of the model stay."""
    set_user_prices(
        {
            "claude-sonnet-4-5": {"input_per_mtok": "2.4", "output_per_mtok": 12},
            "sonar": {"input_per_mtok": "0.8", "output_per_mtok": "0.8"},
            "my-finetune": MY_MODEL,
        }
    )
    searched = Usage(input_tokens=1_000, output_tokens=200, tool_requests={"web_search": 3})
    cost = price_usage("anthropic", "claude-sonnet-4-5", searched, at=DAY)
    assert cost.price_source == "override"
    assert cost.breakdown is not None
    assert cost.breakdown["web_search"] == Decimal("0.03")  # 3 at $10 per 1,000
    assert cost.total_usd == Decimal("0.0024") + Decimal("0.0024") + Decimal("0.03")

    plain = Usage(input_tokens=1_000_000, output_tokens=0)
    cost = price_usage("perplexity", "sonar", plain, at=DAY)
    assert cost.price_source == "override"
    # + the table's fee: $5 per 1,000 requests at the low search context (Perplexity's default)
    assert cost.total_usd == Decimal("0.8") + Decimal("0.005")

    # A model no table prices has no fee to keep.
    cost = price_usage(None, "my-finetune", searched, at=DAY)
    assert cost.breakdown is not None
    assert cost.breakdown["web_search"] == 0


def test_a_user_priced_model_no_table_has_pays_its_providers_tool_fees() -> None:
    """xAI bills its X search, web search and code execution on every model ($5 per 1,000), and
    Anthropic its web search ($10 per 1,000): a new model the table lacks, priced by the user as
    the docs say, recorded 5 X searches at $0 ($0.023 for a $0.048 call) where a user price of
    a model the table has counted them."""
    price = {"input_per_mtok": "1.25", "output_per_mtok": "2.5"}
    set_user_prices({"grok-5": price, "grok-4.3": price, "claude-opus-9": price})
    searched = Usage(input_tokens=1_000, output_tokens=200, tool_requests={"x_search": 5})
    tokens = Decimal("0.00125") + Decimal("0.0005")
    for model in ("grok-4.3", "grok-5"):
        cost = price_usage("xai", model, searched, at=DAY)
        assert cost.price_source == "override"
        assert cost.breakdown is not None
        assert cost.breakdown["x_search"] == Decimal("0.025"), model  # 5 at $5 per 1,000
        assert cost.total_usd == tokens + Decimal("0.025"), model
    # Before xAI's 2025-12-03 cut, at $10 per 1,000 as for the models the table has.
    cost = price_usage("xai", "grok-5", searched, at=datetime(2025, 12, 2, tzinfo=UTC))
    assert cost.breakdown is not None
    assert cost.breakdown["x_search"] == Decimal("0.05")

    web = Usage(input_tokens=1_000, output_tokens=200, tool_requests={"web_search": 3})
    cost = price_usage("anthropic", "claude-opus-9", web, at=DAY)
    assert cost.breakdown is not None
    assert cost.breakdown["web_search"] == Decimal("0.03")  # 3 at $10 per 1,000


@pytest.mark.parametrize("provider", ["openai", "azure"])
def test_a_user_priced_openai_model_no_table_has_pays_openais_tool_fees(provider: str) -> None:
    """OpenAI (and Azure OpenAI) bill web search at $10 and file search at $2.50 per 1,000 calls
    on every model: a new model priced by the user recorded 2 web searches and a file search at
    $0 ($0.002 for a $0.0245 call)."""
    set_user_prices({"gpt-7-test": {"input_per_mtok": 1, "output_per_mtok": 10}})
    tools = {"web_search": 2, "web_search_preview": 1, "file_search": 1}
    searched = Usage(input_tokens=1_000, output_tokens=100, tool_requests=tools)
    cost = price_usage(provider, "gpt-7-test", searched, at=DAY)
    assert cost.price_source == "override"
    assert cost.breakdown is not None
    fees = {"web_search": "0.02", "web_search_preview": "0.01", "file_search": "0.0025"}
    assert {key: cost.breakdown[key] for key in tools} == {
        key: Decimal(fee) for key, fee in fees.items()
    }
    assert cost.total_usd == Decimal("0.002") + Decimal("0.0325")


@pytest.mark.parametrize(
    ("family", "preview_fee"), [("my-gpt", Decimal("0.01")), ("gpt-4o", Decimal("0.025"))]
)
def test_a_user_priced_snapshot_of_a_user_priced_family_keeps_the_fees(
    family: str, preview_fee: Decimal
) -> None:
    """A dated snapshot priced next to its family took the family's user price as "the table"
    and copied its fees, all 0: my-gpt-2026-01-01's 2 web and 2 file searches were $0 ($0.002
    for a $0.027 call), and gpt-4o-2026-01-01 lost gpt-4o's own table fees ($25 preview)."""
    rate = {"input_per_mtok": 1, "output_per_mtok": 10}
    snapshot = f"{family}-2026-01-01"
    set_user_prices({family: rate, snapshot: rate})
    tools = {"web_search": 2, "file_search": 2, "web_search_preview": 1}
    searched = Usage(input_tokens=1_000, output_tokens=100, tool_requests=tools)
    fees = {"web_search": Decimal("0.02"), "file_search": Decimal("0.005")}
    fees["web_search_preview"] = preview_fee
    for model in (family, snapshot):
        cost = price_usage("openai", model, searched, at=DAY)
        assert cost.price_source == "override", model
        assert cost.breakdown is not None
        assert {key: cost.breakdown[key] for key in tools} == fees, model
        assert cost.total_usd == Decimal("0.002") + sum(fees.values()), model
