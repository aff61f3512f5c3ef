"""``tokenmeter prices MODEL``: the rates that would be applied and where they come from."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from helpers import GENAI_PRICES_SOURCE

import tokenmeter

from .conftest import RunCli


def test_known_model(cli: RunCli) -> None:
    code, out, _ = cli("prices", "gpt-4o", "--provider", "openai")
    assert code == 0
    assert "price source   genai-prices" in out
    lines = {
        line.split("  ")[1].strip(): line.split()[-1]
        for line in out.splitlines()
        if line.startswith("  ")
    }
    assert lines["input"] == "2.5" and lines["output"] == "10" and lines["cache read"] == "1.25"


def test_long_context_tier_lists_every_rate_as_the_base_does(cli: RunCli) -> None:
    """The text view listed a long-context tier's input, output, cache read and 5-minute write
    rates only: claude-sonnet-4-5's $12 1-hour write rate above 200,000 input tokens (which
    price() applies) was missing, so a reader took the base $6 line for it."""
    code, out, _ = cli("prices", "claude-sonnet-4-5", "--provider", "anthropic")
    assert code == 0
    head, tier = out.split("above 200,000 input tokens (every token of the call):\n")
    base = head.split("USD per 1M tokens\n")[1].split("USD per 1,000")[0]
    base_labels = [line.split("  ")[1].strip() for line in base.splitlines() if line[:2] == "  "]
    tier_rates = {line.split("  ")[1].strip(): line.split()[-1] for line in tier.splitlines()}
    assert list(tier_rates) == base_labels
    assert tier_rates["cache write (1 hour)"] == "12"
    assert tier_rates["input"] == "6" and tier_rates["cache write (5 min)"] == "7.5"


def test_json_with_long_context_tier(cli: RunCli) -> None:
    code, out, _ = cli("prices", "claude-sonnet-4-5", "--provider", "anthropic", "--format", "json")
    assert code == 0
    doc = json.loads(out, parse_float=Decimal)
    assert doc["usd_per_million_tokens"]["input_per_mtok"] == 3
    assert doc["usd_per_million_tokens"]["cache_write_1h_per_mtok"] == 6
    assert doc["long_context_tiers"][0]["above_input_tokens"] == 200_000


@pytest.fixture
def clean_user_prices() -> Iterator[None]:
    from tokenmeter.pricing import set_user_prices

    yield
    set_user_prices({})  # the CLI loaded process-wide overrides: leave none for other tests


@pytest.mark.usefixtures("clean_user_prices")
def test_override_file_wins(cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"my-model": {"input_per_mtok": 2, "output_per_mtok": 10}}))
    monkeypatch.setenv("TOKENMETER_PRICES", str(prices))
    code, out, err = cli("prices", "my-model", "--format", "json")
    assert code == 0, err
    doc = json.loads(out, parse_float=Decimal)
    assert doc["usd_per_million_tokens"]["input_per_mtok"] == 2
    assert doc["price_source"] != GENAI_PRICES_SOURCE


def test_unknown_model(cli: RunCli) -> None:
    code, out, err = cli("prices", "no-such-model-xyz")
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and "no price known" in err


def test_model_priced_under_a_provider_resolves_without_one(cli: RunCli) -> None:
    """A metered call knows its provider; ``prices`` without ``--provider`` asks every table."""
    code, out, err = cli("prices", "text-embedding-3-small", "--format", "json")
    assert code == 0, err
    doc = json.loads(out, parse_float=Decimal)
    assert doc["provider"] == "openai"
    assert doc["usd_per_million_tokens"]["input_per_mtok"] == Decimal("0.02")


def test_unknown_model_suggests_the_nearest_names(cli: RunCli) -> None:
    code, out, err = cli("prices", "claude-sonet-4-5")
    assert code == 1 and out == ""
    assert "no price known" in err and "Did you mean claude-sonnet-4-5" in err


def test_modality_rates_and_tool_fees_are_shown(cli: RunCli) -> None:
    code, out, _ = cli("prices", "gemini-2.5-flash-image", "--provider", "google")
    assert code == 0
    assert [line.split() for line in out.splitlines() if "output image" in line] == [
        ["output", "image", "30"]
    ]
    code, out, _ = cli("prices", "claude-sonnet-4-5", "--provider", "anthropic", "--format", "json")
    assert json.loads(out, parse_float=Decimal)["usd_per_thousand_requests"] == {
        "web_search_per_k": 10
    }


def test_the_citation_rate_is_shown(cli: RunCli) -> None:
    """sonar-deep-research bills citation tokens at $2/M (output $8/M): a rate applied to its
    calls that ``prices`` did not show."""
    code, out, _ = cli("prices", "sonar-deep-research", "--provider", "perplexity")
    assert code == 0
    assert [line.split() for line in out.splitlines() if "citation" in line] == [
        ["output", "citation", "2"]
    ]
    code, out, _ = cli("prices", "gpt-4o", "--provider", "openai")
    assert "citation" not in out  # the output rate: not repeated


def test_a_bad_setting_is_a_usage_error(cli: RunCli, monkeypatch: pytest.MonkeyPatch) -> None:
    """Exit 2, as in every command (it was 1 here)."""
    monkeypatch.setenv("TOKENMETER_BUDGETS", '[{"limit_usd": 5, "period": "fortnight"}]')
    code, out, err = cli("prices", "gpt-4o")
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert err.startswith("tokenmeter: error: tokenmeter setting 'budgets' from TOKENMETER_BUDGETS")


def test_a_model_priced_from_another_providers_table_says_whose(cli: RunCli) -> None:
    """``--provider anthropic`` for gpt-4o: a metered call (a proxy) is priced from OpenAI's
    table, and ``prices`` said so as "provider anthropic" with OpenAI's rates and no word of it."""
    code, out, err = cli("prices", "gpt-4o", "--provider", "anthropic")
    assert code == 0, err
    provider_line = next(line for line in out.splitlines() if line.startswith("provider"))
    assert provider_line.split(None, 1)[1] == "anthropic (no price of its own: openai's price)"
    code, out, err = cli("prices", "gpt-4o", "--provider", "anthropic", "--format", "json")
    assert code == 0, err
    doc = json.loads(out, parse_float=Decimal)
    assert (doc["provider"], doc["priced_provider"]) == ("anthropic", "openai")
    assert doc["usd_per_million_tokens"]["input_per_mtok"] == Decimal("2.5")
    code, out, err = cli("prices", "gpt-4o", "--provider", "openai")
    assert code == 0, err
    assert "provider       openai\n" in out


@pytest.mark.usefixtures("clean_user_prices")
def test_an_unpriced_name_is_not_suggested_as_its_own_correction(
    cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ "no price known for model 'whisper-1' ... Did you mean whisper-1, ...?": a name with no
    price now (billed by the hour of audio, or priced from a later date) was offered as the fix."""
    prices = tmp_path / "prices.json"
    later = {"input_per_mtok": 2, "output_per_mtok": 10, "since": "2099-01-01"}
    prices.write_text(json.dumps({"my-model": later}))
    monkeypatch.setenv("TOKENMETER_PRICES", str(prices))
    for model in ("whisper-1", "my-model", "MY-MODEL"):
        code, out, err = cli("prices", model)
        assert code == 1 and out == "" and "no price known" in err
        assert model.lower() not in err.lower().partition("did you mean")[2]


#: A fine-tune's name as OpenAI gives it, for each ``ft:`` entry of the tables (genai-prices'
#: and tokenmeter's errata): its base snapshot, then the organisation and the job's suffix.
FINE_TUNES = [
    "ft:gpt-3.5-turbo-0125:my-org::abc123",
    "ft:gpt-4o-2024-08-06:my-org::abc123",
    "ft:gpt-4o-mini-2024-07-18:my-org::abc123",
    "ft:gpt-4.1-2025-04-14:my-org::abc123",
    "ft:gpt-4.1-mini-2025-04-14:my-org::abc123",
    "ft:gpt-4.1-nano-2025-04-14:my-org::abc123",
]


@pytest.mark.parametrize("model", FINE_TUNES)
def test_a_fine_tune_without_provider_shows_the_rates_a_metered_call_pays(
    cli: RunCli, model: str
) -> None:
    """``tokenmeter prices ft:gpt-4o-2024-08-06:...`` without ``--provider`` showed gpt-4o's
    $2.50 / $10 and "fine-tune at base rates (no fine-tune price known)", where the table has
    the fine-tune's $3.75 / $15 and a metered call (OpenAI's) pays them."""
    code, out, _ = cli("prices", model, "--format", "json")
    assert code == 0
    shown = json.loads(out, parse_float=Decimal)
    code, out, _ = cli("prices", model, "--provider", "openai", "--format", "json")
    assert code == 0
    with_provider = json.loads(out, parse_float=Decimal)
    assert shown["priced_model"].startswith("ft:")
    assert "base rates" not in shown["price_source"]
    rates = shown["usd_per_million_tokens"]
    assert rates == with_provider["usd_per_million_tokens"]
    usage = {"input_tokens": 1_000_000, "output_tokens": 1_000_000}
    paid = tokenmeter.price("openai", model, usage).total_usd
    assert paid == rates["input_per_mtok"] + rates["output_per_mtok"]


@pytest.mark.parametrize("tier", ["standard", "flex", "priority"])
def test_a_fine_tune_of_a_model_another_provider_also_sells_is_openais(
    cli: RunCli, tier: str
) -> None:
    """Looked up in any provider's table, ``ft:o4-mini-2025-04-16:...`` was Azure's o4-mini:
    ``--tier flex`` showed $1.10 / $4.40 (OpenAI's flex: $0.55 / $2.20), ``priority`` too."""
    model = "ft:o4-mini-2025-04-16:my-org::abc123"
    code, out, err = cli("prices", model, "--tier", tier, "--format", "json")
    assert code == 0, err
    shown = json.loads(out, parse_float=Decimal)
    code, out, err = cli(
        "prices", model, "--tier", tier, "--provider", "openai", "--format", "json"
    )
    assert code == 0, err
    with_provider = json.loads(out, parse_float=Decimal)
    assert shown["provider"] == "openai"
    assert shown["usd_per_million_tokens"] == with_provider["usd_per_million_tokens"]


@pytest.mark.usefixtures("clean_user_prices")
@pytest.mark.parametrize(
    ("model", "options", "provider"),
    [
        ("gpt-3.5-turbo-0125", [], None),
        ("gemini-2.0-flash-001", ["--provider", "google"], "google"),
    ],
)
def test_a_price_set_under_a_models_name_is_shown_for_its_versioned_names(
    cli: RunCli,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    model: str,
    options: list[str],
    provider: str | None,
) -> None:
    """``tokenmeter prices gpt-3.5-turbo-0125`` showed the table's $0.50 / $1.50 where the
    prices file set gpt-3.5-turbo at $0.25 / $0.75, and a metered call (OpenAI answers with
    that name) is billed at them; the same for Vertex's gemini-2.0-flash-001."""
    prices = tmp_path / "prices.json"
    rates = {"input_per_mtok": 0.25, "output_per_mtok": 0.75}
    entries = {"gpt-3.5-turbo": rates, "gemini-2.0-flash": {**rates, "provider": "google"}}
    prices.write_text(json.dumps(entries))
    monkeypatch.setenv("TOKENMETER_PRICES", str(prices))

    code, out, err = cli("prices", model, *options, "--format", "json")

    assert code == 0, err
    shown = json.loads(out, parse_float=Decimal)
    assert (shown["provider"], shown["price_source"]) == (provider, "override")
    assert shown["usd_per_million_tokens"]["input_per_mtok"] == Decimal("0.25")
    usage = {"input_tokens": 1_000_000, "output_tokens": 1_000_000}
    assert tokenmeter.price(provider or "openai", model, usage).total_usd == Decimal(1)
