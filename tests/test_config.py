"""Settings precedence (arguments > environment > pyproject.toml), and bad values."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

import tokenmeter
from tokenmeter._config import load_settings
from tokenmeter.sinks import InMemorySink


def test_defaults() -> None:
    settings = load_settings(env={})
    assert settings.directory == Path(".tokenmeter")
    assert settings.sinks == ("sqlite",)
    assert not settings.disabled


def test_environment_beats_pyproject_and_arguments_beat_both(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.tokenmeter]\ndirectory = "from-file"\nsinks = ["jsonl"]\nstream-usage = false\n'
    )
    from_file = load_settings(env={}, cwd=tmp_path)
    assert from_file.directory == tmp_path / "from-file"
    assert from_file.sinks == ("jsonl",)
    assert from_file.stream_usage is False
    from_env = load_settings(env={"TOKENMETER_SINKS": "sqlite,markdown"}, cwd=tmp_path)
    assert from_env.sinks == ("sqlite", "markdown")
    assert from_env.directory == tmp_path / "from-file"
    explicit = load_settings(
        {"sinks": ("jsonl",)}, env={"TOKENMETER_SINKS": "sqlite"}, cwd=tmp_path
    )
    assert explicit.sinks == ("jsonl",)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TOKENMETER_SINKS": "sqlite,postgres"}, "unknown sink 'postgres'"),
        ({"TOKENMETER_DISABLED": "maybe"}, "TOKENMETER_DISABLED"),
    ],
)
def test_bad_environment_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_settings(env=env)


def test_bad_pyproject_value_names_its_source(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.tokenmeter]\nmax_queue = 'many'\n")
    with pytest.raises(ValueError, match=r"max_queue.*\[tool.tokenmeter\]"):
        load_settings(env={}, cwd=tmp_path)


def test_disabled_makes_instrument_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENMETER_DISABLED", "1")
    tokenmeter.configure()  # re-read the environment
    assert tokenmeter.instrument().providers == []


def test_price_overrides_from_configure_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sink: InMemorySink
) -> None:
    prices = tmp_path / "prices.toml"
    prices.write_text(
        "[my-model]\ninput_per_mtok = 2\noutput_per_mtok = 10\n"
        "[other-model]\ninput_per_mtok = 1\noutput_per_mtok = 1\n"
    )
    monkeypatch.setenv("TOKENMETER_PRICES", str(prices))
    tokenmeter.configure(
        sinks=[sink], prices={"other-model": {"input_per_mtok": 3, "output_per_mtok": 3}}
    )
    mine = tokenmeter.record("openai", "my-model", 1_000_000, 100_000)
    other = tokenmeter.record("openai", "other-model", 1_000_000, 0)
    assert (mine.estimated_cost_usd, mine.price_source) == (Decimal("3"), "override")
    assert other.estimated_cost_usd == Decimal("3")  # configure() wins over the file


def test_malformed_price_file_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text('{"my-model": {"input_per_mtok": "cheap"}}')
    monkeypatch.setenv("TOKENMETER_PRICES", str(prices))
    with pytest.raises(ValueError, match=r"prices.json.*my-model"):
        tokenmeter.configure()


def test_aliases_price_azure_deployments(sink: InMemorySink) -> None:
    tokenmeter.configure(sinks=[sink], aliases={"my-gpt4o-prod-deployment": "gpt-4o"})
    rec = tokenmeter.record("azure", "my-gpt4o-prod-deployment", 1000, 500)
    assert rec.estimated_cost_usd == Decimal("0.0075")


def test_sink_objects_and_names_mix(tmp_path: Path) -> None:
    memory = InMemorySink()
    tokenmeter.configure(sinks=[memory, "jsonl"], directory=tmp_path / "meter")
    tokenmeter.record("openai", "gpt-4o", 10, 1)
    assert tokenmeter.flush(5)
    assert len(memory.records) == 1
    assert (tmp_path / "meter" / "usage.jsonl").read_text().count("\n") == 1


def test_unknown_sink_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown sink 'postgres'"):
        tokenmeter.configure(sinks=["postgres"])
