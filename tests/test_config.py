"""Settings precedence (arguments > environment > pyproject.toml), and bad values."""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from helpers import one_line_value_error, returns, run_python, unusable_paths

import tokenmeter
from tokenmeter import _config, _runtime
from tokenmeter._config import load_settings, load_settings_with_sources
from tokenmeter.sinks import InMemorySink, JSONLSink, MarkdownJournalSink, SQLiteSink

CHEAP = {"input_per_mtok": 1, "output_per_mtok": 1}


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
        ({"TOKENMETER_SINKS": "sqlite,clickhouse"}, "unknown sink 'clickhouse'"),
        ({"TOKENMETER_DISABLED": "maybe"}, "TOKENMETER_DISABLED"),
        ({"TOKENMETER_DIR": "  "}, r"'directory' from TOKENMETER_DIR: must not be empty"),
    ],
)
def test_bad_environment_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_settings(env=env)


def test_a_path_from_the_home_folder_is_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """directory = "~/usage" (pyproject, TOKENMETER_DIR, configure()) made a folder named "~" in
    the working directory (or beside the pyproject.toml): records where nobody looks."""
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text('[tool.tokenmeter]\nstate_file = "~/state.md"\n')
    settings = load_settings(
        {"prices_file": "~/prices.toml"}, env={"TOKENMETER_DIR": "~/meter"}, cwd=project
    )
    assert settings.directory == home / "meter"
    assert settings.state_file == home / "state.md"
    assert settings.prices_file == home / "prices.toml"


def test_a_path_variable_from_a_crlf_env_file_loses_its_line_end(tmp_path: Path) -> None:
    """An .env file saved with CRLF line ends, exported by a tool that keeps the carriage
    return: TOKENMETER_DIR=tm\\r sent the records to a new folder named 'tm\\r' (and the state
    lines to 'state.md\\r'), silently, while TOKENMETER_MAX_QUEUE=1000\\r of the same file was
    read as 1000. A trailing space is a name's own and stays."""
    (tmp_path / "prices.toml").write_text("")
    env = {
        "TOKENMETER_DIR": "tm\r",
        "TOKENMETER_STATE_FILE": "state.md\r\n",
        "TOKENMETER_PRICES": "prices.toml\r",
        "TOKENMETER_MAX_QUEUE": "1000\r",
        "TOKENMETER_PG_DSN": "postgresql://u@localhost/postgres\r",
        "TOKENMETER_BUDGET_TIMEZONE": "Europe/Paris\r",
    }
    settings = load_settings(env=env, cwd=tmp_path, prices_base=tmp_path)
    assert settings.directory == Path("tm")
    assert settings.state_file == Path("state.md")
    assert settings.prices_file == tmp_path / "prices.toml"
    assert settings.max_queue == 1000
    assert settings.pg_dsn == "postgresql://u@localhost/postgres"  # database "postgres\r" before
    assert settings.budget_timezone == "Europe/Paris"
    assert load_settings(env={"TOKENMETER_DIR": "tm "}).directory == Path("tm ")
    # An unfilled line of the same file ("\r") is unset, as an LF file's empty one is.
    blank = {"TOKENMETER_PG_DSN": "\r", "TOKENMETER_BUDGET_TIMEZONE": "\r\n"}
    unset = load_settings(env=blank)
    assert (unset.pg_dsn, unset.budget_timezone) == (
        load_settings(env={}).pg_dsn,
        load_settings(env={}).budget_timezone,
    )


def test_the_kill_switch_works_whatever_else_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TOKENMETER_DISABLED=1 beside a bad setting (in the environment or the pyproject) made
    instrument() raise that setting's ValueError: the switch an operator reaches for when the
    settings are wrong did not work until they were fixed. What the code passes still counts."""
    (tmp_path / "pyproject.toml").write_text("[tool.tokenmeter]\nmax_queue = -5\n")
    monkeypatch.chdir(tmp_path)
    bad = {"TOKENMETER_MAX_QUEUE": "0", "TOKENMETER_SINKS": ""}
    with pytest.raises(ValueError, match="TOKENMETER_SINKS"):
        load_settings(env=bad)
    assert load_settings(env={**bad, "TOKENMETER_DISABLED": "1"}).disabled
    with pytest.raises(ValueError, match="max_queue"):
        load_settings(env={})  # the pyproject alone is bad
    (tmp_path / "pyproject.toml").write_text("[tool.tokenmeter]\ndisabled = true\nmax_queue = -5\n")
    for unset in ({}, {"TOKENMETER_DISABLED": ""}, {"TOKENMETER_DISABLED": "\r"}):
        # a CRLF .env file's unfilled line is unset too: the pyproject's switch holds
        assert load_settings(env=unset).disabled
    (tmp_path / "pyproject.toml").write_text("[tool.tokenmeter]\nmax_queue = -5\n")
    assert load_settings(env={"TOKENMETER_DISABLED": "1"}).disabled
    assert load_settings({"exit_timeout": 3}, env={"TOKENMETER_DISABLED": "yes"}).exit_timeout == 3
    with pytest.raises(ValueError, match="exit_timeout"):
        load_settings({"exit_timeout": -1}, env={**bad, "TOKENMETER_DISABLED": "1"})
    with pytest.raises(ValueError, match="TOKENMETER_SINKS"):
        load_settings({"disabled": False}, env={**bad, "TOKENMETER_DISABLED": "1"})
    for name, value in {**bad, "TOKENMETER_DISABLED": "1"}.items():
        monkeypatch.setenv(name, value)
    tokenmeter.instrument()  # patches nothing, raises nothing
    assert tokenmeter.record("openai", "gpt-4o", 10, 5).input_tokens == 10


def test_disabled_true_in_the_pyproject_works_whatever_else_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`disabled = true` in [tool.tokenmeter] beside a bad value (max_queue = 0) made instrument()
    raise that value's ValueError, where TOKENMETER_DISABLED=1 beside it was a quiet no-op. The
    variable, when set, still decides."""
    (tmp_path / "pyproject.toml").write_text("[tool.tokenmeter]\ndisabled = true\nmax_queue = 0\n")
    monkeypatch.chdir(tmp_path)
    resolved, sources = load_settings_with_sources(env={})
    assert resolved.disabled and resolved.max_queue == 100_000
    assert sources["disabled"].endswith("pyproject.toml [tool.tokenmeter]")
    assert load_settings(env={"TOKENMETER_MAX_QUEUE": "0"}).disabled
    with pytest.raises(ValueError, match=r"'max_queue' from .*pyproject\.toml"):
        load_settings(env={"TOKENMETER_DISABLED": "0"})  # switched on: the bad value counts
    with pytest.raises(ValueError, match="TOKENMETER_DISABLED"):
        load_settings(env={"TOKENMETER_DISABLED": "maybe"})
    (tmp_path / "pyproject.toml").write_text('[tool.tokenmeter]\ndisabled = "yes"\nmax_queue = 0\n')
    with pytest.raises(ValueError, match=r"'disabled' from .*pyproject\.toml"):
        load_settings(env={})  # not a boolean: no switch
    (tmp_path / "pyproject.toml").write_text("[tool.tokenmeter]\ndisabled = true\nmax_queue = 0\n")
    assert tokenmeter.instrument().providers == []


@pytest.mark.parametrize("where", ["environment", "pyproject"])
def test_the_kill_switch_holds_over_a_prices_file_that_cannot_be_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """The prices file is read apart from the other settings, and was read even with the switch
    on: TOKENMETER_DISABLED=1 beside TOKENMETER_PRICES=ops/prices.toml (missing from this
    checkout) made instrument() raise "cannot read prices file", where any other bad value
    beside the switch is a quiet no-op."""
    if where == "environment":
        monkeypatch.setenv("TOKENMETER_DISABLED", "1")
        monkeypatch.setenv("TOKENMETER_PRICES", "ops/prices.toml")
    else:
        (tmp_path / "pyproject.toml").write_text(
            '[tool.tokenmeter]\ndisabled = true\nprices_file = "prices.toml"\n'
        )
    assert tokenmeter.instrument().providers == []
    tokenmeter.configure(max_queue=1000, prices={"my-model": CHEAP})
    cost = tokenmeter.price("openai", "my-model", {"input_tokens": 1_000_000, "output_tokens": 0})
    assert cost.total_usd == 1  # the other overrides still price
    if where == "environment":  # switched on, the file counts again
        monkeypatch.delenv("TOKENMETER_DISABLED")
        _runtime.reset()  # configure()'s prices replaced the file: as in a new process
        with pytest.raises(ValueError, match="cannot read prices file"):
            tokenmeter.configure()


@pytest.mark.parametrize(
    "variable",
    [
        "TOKENMETER_DISABLED",
        "TOKENMETER_STREAM_USAGE",
        "TOKENMETER_THREAD_PROPAGATION",
        "TOKENMETER_MAX_QUEUE",
        "TOKENMETER_EXIT_TIMEOUT",
        "TOKENMETER_BUDGET_WARN_AT",
    ],
)
def test_a_huge_bad_environment_value_is_quoted_short(variable: str) -> None:
    """The whole value was quoted: a 100 kB variable made a 100 kB message."""
    with pytest.raises(ValueError, match=variable) as raised:
        load_settings(env={variable: "x" * 100_000})
    assert len(one_line_value_error(raised)) < 300


def test_the_callers_later_changes_to_what_configure_was_given_never_apply(
    sink: InMemorySink,
) -> None:
    """configure() kept the caller's own price entries, budget tables and lists, and validated
    them again at every later call: an application reusing its dicts for another tenant had
    its $1/Mtok price at $50 and its $5 budget at $500 from the next unrelated configure() (a
    reload of its hooks), and a hook appended to its list ran too."""
    prices = {"my-model": {"input_per_mtok": 1, "output_per_mtok": 0}}
    budget = {"limit_usd": 5, "period": "day"}
    ended: list[str] = []
    hooks = [lambda session: ended.append("given")]
    warn_at = [0.5]
    tokenmeter.configure(
        prices=prices, budgets=[budget], on_session_end=hooks, budget_warn_at=warn_at
    )
    prices["my-model"]["input_per_mtok"] = 50
    budget["limit_usd"] = 500
    hooks.append(lambda session: ended.append("appended"))
    warn_at[0] = 0.9
    tokenmeter.configure(exit_timeout=4)  # an unrelated reload
    record = tokenmeter.record("openai", "my-model", 1_000_000, 0)
    assert record.estimated_cost_usd == 1
    resolved = _runtime.settings()
    assert (resolved.budgets[0].limit_usd, resolved.budget_warn_at) == (5, (0.5,))
    with tokenmeter.session("job"):
        pass
    assert ended == ["given"]


def test_a_value_sharing_its_parts_is_copied_once_per_part(sink: InMemorySink) -> None:
    """configure() copies what it keeps; a value whose lists share their parts (each level
    holding the next twice) was copied once per path: 2**60 copies, configure() never returned.
    Each part is copied once, and the value refused for what it is."""
    shared: list[object] = []
    for _ in range(60):
        shared = [shared, shared]
    with pytest.raises(ValueError, match="budgets"):
        tokenmeter.configure(budgets=shared)


def test_a_mapping_making_its_entries_when_read_keeps_each_models_price(
    sink: InMemorySink,
) -> None:
    """The copy kept each part's copy by the part's id: entries made as they are read were freed
    once copied, the next one made at the same address, and took the first one's copy (gpt-4.1
    priced at another model's $3 where the user's was $7)."""
    rates = {"gpt-4o": (1, 2), "gpt-4o-mini": (7, 9), "gpt-4.1": (3, 4), "o3": (5, 6)}

    class MadeWhenRead(Mapping[str, Any]):
        def __getitem__(self, model: str) -> Any:
            given, made = rates[model]
            return MappingProxyType({"input_per_mtok": given, "output_per_mtok": made})

        def __iter__(self) -> Iterator[str]:
            return iter(rates)

        def __len__(self) -> int:
            return len(rates)

    tokenmeter.configure(prices=MadeWhenRead())
    usage = {"input_tokens": 1_000_000, "output_tokens": 1_000_000}
    for model, (given, made) in rates.items():
        assert tokenmeter.price("openai", model, usage).total_usd == given + made, model


@pytest.mark.parametrize(
    "periods",
    [{"daily"}, frozenset({"daily"}), (p for p in ["daily"]), ["daily"]],
    ids=["set", "frozenset", "generator", "list"],
)
def test_reports_takes_any_iterable_of_periods_as_its_type_says(periods: Any) -> None:
    """``reports: str | Iterable[str]``: a set or a generator was refused (sinks takes them)."""
    tokenmeter.configure(reports=periods)
    assert _runtime.settings().reports == ("daily",)


def test_the_pyproject_tokenmeter_run_pins_is_read_wherever_the_process_starts(
    tmp_path: Path,
) -> None:
    """``tokenmeter run`` names the pyproject.toml it found (TOKENMETER_RUN_PYPROJECT, "" for
    none): a process of the program started in another directory reads that one, not the
    nearest (or none) from where it is; one removed since reads as none, never as an error."""
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    pinned = project / "pyproject.toml"
    pinned.write_text('[tool.tokenmeter]\nsinks = ["jsonl"]\n')
    (elsewhere / "pyproject.toml").write_text('[tool.tokenmeter]\nsinks = ["markdown"]\n')
    run = "TOKENMETER_RUN_PYPROJECT"
    assert load_settings(env={run: str(pinned)}, cwd=elsewhere).sinks == ("jsonl",)
    assert load_settings(env={run: ""}, cwd=elsewhere).sinks == ("sqlite",)
    assert load_settings(env={}, cwd=elsewhere).sinks == ("markdown",)
    pinned.unlink()
    assert load_settings(env={run: str(pinned)}, cwd=elsewhere).sinks == ("sqlite",)


def test_a_pinned_pyproject_that_is_no_regular_file_is_refused_without_reading_it(
    tmp_path: Path,
) -> None:
    """A FIFO there blocked the application's first settings read for ever (opened, it waits
    for a writer); /dev/zero was read until MemoryError."""
    fifo = tmp_path / "pyproject.toml"
    os.mkfifo(fifo)
    run = "TOKENMETER_RUN_PYPROJECT"
    for path in (fifo, Path("/dev/zero")):
        raised = returns(lambda p=path: load_settings(env={run: str(p)}), f"reading {path}")
        assert [str(e) for e in raised] == [f"{path}: a pyproject.toml must be a regular file"]


def test_bad_pyproject_value_names_its_source(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.tokenmeter]\nmax_queue = 'many'\n")
    with pytest.raises(ValueError, match=r"max_queue.*\[tool.tokenmeter\]"):
        load_settings(env={}, cwd=tmp_path)


def test_pyproject_money_is_exact_and_a_rate_too_small_to_be_a_float_is_refused(
    tmp_path: Path,
) -> None:
    """TOML read ``input_per_mtok = 1e-400`` as the float 0.0: the model was priced $0, while
    configure(prices=...) and the prices file refuse that rate. Money is now read exactly."""
    (tmp_path / "pyproject.toml").write_text(
        "[tool.tokenmeter]\nexit_timeout = 2.5\n"
        "[tool.tokenmeter.prices.my-model]\ninput_per_mtok = 1e-400\noutput_per_mtok = 1\n"
    )
    with pytest.raises(ValueError, match=r"'prices' from .*pyproject.toml.*input_per_mtok"):
        load_settings(env={}, cwd=tmp_path)
    (tmp_path / "pyproject.toml").write_text(
        "[tool.tokenmeter]\nexit_timeout = 2.5\nbudget_warn_at = [0.5]\n"
        'budgets = [{limit_usd = 0.1, period = "day"}]\n'
    )
    settings = load_settings(env={}, cwd=tmp_path)
    assert settings.budgets[0].limit_usd == Decimal("0.1")  # not 0.1000000000000000055...
    assert (settings.exit_timeout, settings.budget_warn_at) == (2.5, (0.5,))


@pytest.mark.parametrize(
    ("variable", "value", "given"),
    [
        ("TOKENMETER_SINKS", "", {"sinks": ["jsonl"]}),
        ("TOKENMETER_SINKS", "sqlite;jsonl", {"sinks": ["jsonl"]}),
        ("TOKENMETER_MAX_QUEUE", "10k", {"max_queue": 10_000}),
        ("TOKENMETER_STREAM_USAGE", "maybe", {"stream_usage": False}),
        ("TOKENMETER_BUDGETS", "{limit_usd: 5}", {"budgets": []}),
        ("TOKENMETER_PROVIDERS", ",", {"providers": ["openai"]}),
    ],
)
def test_a_bad_environment_value_is_an_error_only_if_configure_does_not_set_it(
    tmp_path: Path, variable: str, value: str, given: dict[str, Any]
) -> None:
    env = {variable: value}
    with pytest.raises(ValueError) as excinfo:
        load_settings(env=env, cwd=tmp_path)
    key = next(iter(given))
    assert f"tokenmeter setting {key!r} from {variable}: " in one_line_value_error(excinfo)
    sources = load_settings_with_sources(given, env=env, cwd=tmp_path)[1]
    assert sources[key] == "configure()"


def test_configure_overrides_a_bad_environment_value_of_its_own_setting(
    monkeypatch: pytest.MonkeyPatch, sink: InMemorySink
) -> None:
    monkeypatch.setenv("TOKENMETER_MAX_QUEUE", "10k")  # what the warning at a call points to
    tokenmeter.configure(sinks=[sink], max_queue=10_000)
    tokenmeter.record("openai", "gpt-4o", 10, 5)
    assert tokenmeter.flush()
    assert len(sink.records) == 1


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
    tokenmeter.configure(sinks=[sink])
    mine = tokenmeter.record("openai", "my-model", 1_000_000, 100_000)
    assert (mine.estimated_cost_usd, mine.price_source) == (Decimal("3"), "override")
    tokenmeter.configure(prices={"other-model": {"input_per_mtok": 3, "output_per_mtok": 3}})
    other = tokenmeter.record("openai", "other-model", 1_000_000, 0)
    assert other.estimated_cost_usd == Decimal("3")  # configure() replaces the file, whole
    assert tokenmeter.record("openai", "my-model", 1_000_000, 0).estimated_cost_usd is None


def _project_prices(folder: Path, file: str = "project.toml") -> None:
    """A pyproject.toml in ``folder`` pricing ``file-model`` in its ``prices_file`` (``file``,
    written unless named ``missing.toml``) and ``table-model`` in its table, each at $1/M."""
    if file != "missing.toml":
        (folder / file).write_text("[file-model]\ninput_per_mtok = 1\noutput_per_mtok = 1\n")
    (folder / "pyproject.toml").write_text(
        f'[tool.tokenmeter]\nprices_file = "{file}"\n'
        '[tool.tokenmeter.prices]\n"table-model" = { input_per_mtok = 1, output_per_mtok = 1 }\n'
    )


def _input_costs(*models: str) -> dict[str, Decimal | None]:
    """What 1M input tokens of each model are recorded at."""
    return {
        model: tokenmeter.record("openai", model, 1_000_000, 0).estimated_cost_usd
        for model in models
    }


def test_price_overrides_are_the_highest_layers_whole_whether_a_table_or_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sink: InMemorySink
) -> None:
    """The project's [tool.tokenmeter.prices] table beat the operator's TOKENMETER_PRICES file
    per model (a 1M-token call at the project's $1, not the environment's $3), and
    configure(prices=...) replaced the project's table but kept its prices_file."""
    _project_prices(tmp_path)
    (tmp_path / "ops.toml").write_text(
        "[TABLE-MODEL]\ninput_per_mtok = 3\noutput_per_mtok = 3\n"  # names in any case
        "[ops-model]\ninput_per_mtok = 3\noutput_per_mtok = 3\n"
    )
    monkeypatch.chdir(tmp_path)
    tokenmeter.configure(sinks=[sink])
    models = ("file-model", "table-model", "ops-model", "my-model")
    assert _input_costs(*models) == {
        "file-model": 1,
        "table-model": 1,
        "ops-model": None,
        "my-model": None,
    }
    monkeypatch.setenv("TOKENMETER_PRICES", "ops.toml")
    tokenmeter.configure()
    assert _input_costs(*models) == {
        "file-model": None,
        "table-model": 3,
        "ops-model": 3,
        "my-model": None,
    }
    tokenmeter.configure(prices={"my-model": CHEAP})
    assert _input_costs(*models) == {
        "file-model": None,
        "table-model": None,
        "ops-model": None,
        "my-model": 1,
    }
    monkeypatch.delenv("TOKENMETER_PRICES")
    tokenmeter.configure()  # configure()'s prices are still the ones in force
    assert _input_costs(*models) == {
        "file-model": None,
        "table-model": None,
        "ops-model": None,
        "my-model": 1,
    }


def test_configure_prices_empty_leaves_no_override_of_the_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sink: InMemorySink
) -> None:
    _project_prices(tmp_path)
    monkeypatch.chdir(tmp_path)
    tokenmeter.configure(sinks=[sink], prices={})
    assert _input_costs("file-model", "table-model") == {"file-model": None, "table-model": None}
    settings, sources = load_settings_with_sources({"prices": {}})
    assert (settings.prices, settings.prices_file) == ({}, None)
    assert (sources["prices"], sources["prices_file"]) == ("configure()", "default")


def test_a_projects_missing_prices_file_under_tokenmeter_prices_is_no_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sink: InMemorySink
) -> None:
    """The operator's file replaces the project's, which is not read: a checkout without it
    (kept out of git, say) still meters at the operator's prices."""
    _project_prices(tmp_path, file="missing.toml")
    (tmp_path / "ops.toml").write_text("[ops-model]\ninput_per_mtok = 3\noutput_per_mtok = 3\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TOKENMETER_PRICES", "ops.toml")
    tokenmeter.configure(sinks=[sink])
    assert _input_costs("ops-model", "table-model") == {"ops-model": 3, "table-model": None}
    monkeypatch.delenv("TOKENMETER_PRICES")  # now the project's missing file is in force
    with pytest.raises(ValueError, match=r"missing\.toml: cannot read prices file"):
        tokenmeter.configure()


def test_a_prices_file_that_cannot_be_read_is_named_as_its_setting_and_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``TOKENMETER_PRICES=prices.toml`` exported in a shell, the program run in another folder:
    record() said "/tmp/x/prices.toml: cannot read prices file", never the setting nor where it
    came from, as every other bad setting says."""
    (tmp_path / "elsewhere").mkdir()
    _project_prices(tmp_path / "elsewhere", file="missing.toml")  # under TOKENMETER_PRICES
    monkeypatch.chdir(tmp_path / "elsewhere")
    monkeypatch.setenv("TOKENMETER_PRICES", "prices.toml")
    missing = tmp_path / "elsewhere" / "prices.toml"
    expected = (
        f"tokenmeter setting 'prices_file' from TOKENMETER_PRICES: {missing}: cannot read "
        "prices file (No such file or directory)"
    )
    with pytest.raises(ValueError) as excinfo:
        tokenmeter.record("openai", "gpt-4o", 10, 5)  # the first record reads the settings
    assert one_line_value_error(excinfo) == expected
    with pytest.raises(ValueError) as excinfo:
        tokenmeter.configure(sinks=[InMemorySink()])
    assert one_line_value_error(excinfo) == expected
    monkeypatch.delenv("TOKENMETER_PRICES")  # now the project's missing file is in force
    with pytest.raises(ValueError) as excinfo:
        tokenmeter.configure(sinks=[InMemorySink()])
    assert one_line_value_error(excinfo).startswith(
        f"tokenmeter setting 'prices_file' from {tmp_path / 'elsewhere' / 'pyproject.toml'} "
        f"[tool.tokenmeter]: {tmp_path / 'elsewhere' / 'missing.toml'}: cannot read prices file"
    )


def test_within_the_pyproject_its_prices_file_and_table_add_up_the_table_winning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sink: InMemorySink
) -> None:
    _project_prices(tmp_path)
    (tmp_path / "project.toml").write_text(
        "[file-model]\ninput_per_mtok = 1\noutput_per_mtok = 1\n"
        "[table-model]\ninput_per_mtok = 5\noutput_per_mtok = 5\n"
    )
    monkeypatch.chdir(tmp_path)
    tokenmeter.configure(sinks=[sink])
    assert _input_costs("file-model", "table-model") == {"file-model": 1, "table-model": 1}


def test_a_prices_file_is_parsed_once_per_configure_and_again_once_edited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sink: InMemorySink
) -> None:
    from tokenmeter.pricing import _overrides

    parses: list[Path] = []
    parse = _overrides._read_file

    def counted(file: Path) -> Any:
        parses.append(file)
        return parse(file)

    monkeypatch.setattr(_overrides, "_read_file", counted)
    prices = tmp_path / "prices.json"
    prices.write_text('{"my-model": {"input_per_mtok": 2, "output_per_mtok": 10}}')
    monkeypatch.setenv("TOKENMETER_PRICES", str(prices))
    tokenmeter.configure(sinks=[sink])  # checked, then applied: one parse
    assert len(parses) == 1
    assert tokenmeter.record("openai", "my-model", 1_000_000, 0).estimated_cost_usd == 2
    # The same size, so only the modification time tells the edit apart.
    prices.write_text('{"my-model": {"input_per_mtok": 3, "output_per_mtok": 10}}')
    info = prices.stat()
    os.utime(prices, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000))
    tokenmeter.configure(sinks=[sink])
    assert len(parses) == 2
    assert tokenmeter.record("openai", "my-model", 1_000_000, 0).estimated_cost_usd == 3


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


def test_configure_installs_prices_and_aliases_in_one_step(sink: InMemorySink) -> None:
    """A call priced on another thread while configure() runs sees the old settings or the new:
    never the new prices with the old aliases (the alias then named no priced model)."""
    from tokenmeter.pricing import _overrides

    seen: list[tuple[bool, bool]] = []

    def installed() -> None:
        seen.append(("my-model" in _overrides.user_price_names(), "prod" in _overrides.aliases()))

    _overrides._listeners.append(installed)
    try:
        tokenmeter.configure(sinks=[sink], prices={"my-model": CHEAP}, aliases={"prod": "my-model"})
    finally:
        _overrides._listeners.remove(installed)

    assert seen and set(seen) <= {(False, False), (True, True)}
    assert tokenmeter.record("azure", "prod", 1_000_000, 0).estimated_cost_usd == Decimal(1)


def test_a_prices_file_broken_after_its_check_leaves_the_previous_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sink: InMemorySink
) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text('{"my-model": {"input_per_mtok": 1, "output_per_mtok": 1}}')
    monkeypatch.setenv("TOKENMETER_PRICES", str(prices))
    tokenmeter.configure(sinks=[sink])
    check = _runtime.check_settings_prices_file

    def edited_after_the_check(resolved: Any, sources: Any) -> None:
        check(resolved, sources)
        prices.write_text('{"my-model": {"input_per_mtok": "cheap"}}')  # an editor saves now

    monkeypatch.setattr(_runtime, "check_settings_prices_file", edited_after_the_check)
    with pytest.raises(ValueError, match="my-model"):
        tokenmeter.configure(aliases={"prod": "gpt-4o"})
    monkeypatch.setattr(_runtime, "check_settings_prices_file", check)
    prices.write_text('{"my-model": {"input_per_mtok": 2, "output_per_mtok": 2}}')

    tokenmeter.configure()  # the rejected aliases are not remembered

    assert tokenmeter.record("azure", "prod", 1_000_000, 0).estimated_cost_usd is None
    assert tokenmeter.record("azure", "my-model", 1_000_000, 0).estimated_cost_usd == Decimal(2)


def test_sink_objects_and_names_mix(tmp_path: Path) -> None:
    memory = InMemorySink()
    tokenmeter.configure(sinks=[memory, "jsonl"], directory=tmp_path / "meter")
    tokenmeter.record("openai", "gpt-4o", 10, 1)
    assert tokenmeter.flush(5)
    assert len(memory.records) == 1
    assert (tmp_path / "meter" / "usage.jsonl").read_text().count("\n") == 1


def test_unknown_sink_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown sink 'clickhouse'"):
        tokenmeter.configure(sinks=["clickhouse"])


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"max_queue": 0}, r"'max_queue' from configure\(\): .*at least 1.*got 0"),
        ({"max_queue": -5}, r"'max_queue'.*got -5"),
        ({"max_queue": True}, r"'max_queue'.*got True"),
        ({"max_queue": 2.0}, r"'max_queue'.*got 2.0"),
        ({"max_queue": "10"}, r"'max_queue'.*got '10'"),
        ({"exit_timeout": -1}, r"'exit_timeout' from configure\(\): .*got -1"),
        ({"exit_timeout": math.nan}, r"'exit_timeout'.*got nan"),
        ({"exit_timeout": math.inf}, r"'exit_timeout'.*got inf"),
        ({"exit_timeout": 1e300}, r"'exit_timeout'.*got 1e\+300"),
        ({"exit_timeout": True}, r"'exit_timeout'.*got True"),
        ({"exit_timeout": "3"}, r"'exit_timeout'.*got '3'"),
        ({"sinks": 5}, r"sinks.*got 5"),
        ({"sinks": "sqlite,clickhouse"}, r"unknown sink 'clickhouse'"),
        ({"prices": 5}, r"'prices' from configure\(\)"),
        ({"prices": [("my-model", {"input_per_mtok": 1, "output_per_mtok": 1})]}, r"'prices'"),
        ({"prices": {1: {"input_per_mtok": 1, "output_per_mtok": 1}}}, r"'prices'.*model name"),
        ({"directory": 5}, r"'directory' from configure\(\).*got 5"),
        ({"directory": ""}, r"'directory'"),
        ({"directory": b"meter"}, r"'directory'"),
        ({"directory": "me\x00ter"}, r"'directory'"),
        # A lone surrogate names no file (not a non-UTF-8 byte, which is \udc80-\udcff): every
        # record was rejected by the sinks, and could not be set aside in that directory either.
        ({"directory": "me\ud800ter"}, r"'directory'.*cannot name a file"),
        ({"state_file": "state\ud800.md"}, r"'state_file'.*cannot name a file"),
        # Past what any file system takes: accepted, then every write failed (every record lost).
        ({"directory": "t" * 256}, r"'directory'.*name longer than any file system takes"),
        ({"state_file": "/tmp/" + "s" * 300 + ".md"}, r"'state_file'.*name longer"),
        ({"directory": "/tmp/" + "d/" * 2100}, r"'directory'.*longer than any file system"),
        # libpq cannot take it whole: a NUL ends the string, a lone surrogate is not UTF-8.
        ({"pg_dsn": "host=db\x00 password=x"}, r"'pg_dsn'.*NUL character"),
        ({"pg_dsn": "host=db password=x\ud800"}, r"'pg_dsn'.*lone surrogate"),
        # The postgres sink refuses these: they passed here, then instrument() with budgets
        # raised an error naming no setting ("schema must be a plain SQL identifier").
        ({"pg_dsn": "postgresql://app@db/usage?schema=team-a"}, r"'pg_dsn'.*'team-a'"),
        ({"pg_dsn": "postgresql://db/usage?schema=a&schema=b"}, r"'pg_dsn'.*more than once"),
        ({"pg_dsn": "postgresql://u:%ff@db/usage"}, r"'pg_dsn'.*not UTF-8"),
        ({"aliases": [1]}, r"'aliases' from configure\(\)"),
        ({"aliases": 5}, r"'aliases'"),
        ({"aliases": {"prod": 3}}, r"'aliases'.*alias 'prod'"),
        ({"stream_usage": "no"}, r"'stream_usage' from configure\(\).*got 'no'"),
        ({"stream_usage": "false"}, r"'stream_usage'.*got 'false'"),
        ({"stream_usage": 0}, r"'stream_usage'.*got 0"),
    ],
)
def test_bad_configure_argument_is_a_one_line_value_error_naming_it(
    arguments: dict[str, Any], message: str
) -> None:
    """max_queue=0 once made every call wait 5 s and drop its record; strings became iterables."""
    with pytest.raises(ValueError, match=message) as excinfo:
        tokenmeter.configure(**arguments)
    one_line_value_error(excinfo)


def test_a_dsn_the_postgres_sink_refuses_is_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """TOKENMETER_PG_DSN=...?schema=team-a with the postgres sink and a budget: instrument()
    raised "schema must be a plain SQL identifier, got 'team-a'", naming no setting, and kept
    raising with TOKENMETER_DISABLED=1 (the budgets' ledger sink was made even then)."""
    monkeypatch.setenv("TOKENMETER_SINKS", "sqlite,postgres")
    monkeypatch.setenv("TOKENMETER_BUDGETS", '[{"limit_usd": 3, "period": "day"}]')
    monkeypatch.setenv("TOKENMETER_PG_DSN", "postgresql://app@db.invalid/usage?schema=team-a")
    with pytest.raises(ValueError, match=r"^tokenmeter setting 'pg_dsn' from TOKENMETER_PG_DSN"):
        tokenmeter.instrument()
    monkeypatch.setenv("TOKENMETER_DISABLED", "1")
    _runtime.reset()  # as in a new process
    assert tokenmeter.instrument().providers == []


def test_a_rejected_configure_changes_nothing(sink: InMemorySink) -> None:
    """A bad call must leave the previous settings in force, and not poison later calls."""
    tokenmeter.configure(sinks=[sink], max_queue=5, prices={"my-model": CHEAP})
    with pytest.raises(ValueError, match="max_queue"):
        tokenmeter.configure(max_queue=0)
    with pytest.raises(ValueError, match=r"'my-model'.*input_per_mtok"):
        tokenmeter.configure(prices={"my-model": {"input_per_mtok": -1, "output_per_mtok": 1}})
    assert _runtime.settings().max_queue == 5
    tokenmeter.configure(sinks=[sink])  # the earlier failures were not remembered
    rec = tokenmeter.record("openai", "my-model", 1_000_000, 0)
    assert rec.estimated_cost_usd == Decimal("1")


def test_a_bad_prices_file_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sink: InMemorySink
) -> None:
    good = tmp_path / "good.json"
    good.write_text('{"my-model": {"input_per_mtok": 1, "output_per_mtok": 1}}')
    monkeypatch.setenv("TOKENMETER_PRICES", str(good))
    tokenmeter.configure(sinks=[sink])
    prices = tmp_path / "prices.json"
    prices.write_bytes(b'{"my-model": \xff}')
    monkeypatch.setenv("TOKENMETER_PRICES", str(prices))
    with pytest.raises(ValueError, match=r"prices\.json"):
        tokenmeter.configure(max_queue=7)
    assert _runtime.settings().max_queue != 7
    assert tokenmeter.record("openai", "my-model", 1_000_000, 0).estimated_cost_usd == 1
    monkeypatch.delenv("TOKENMETER_PRICES")
    tokenmeter.configure(sinks=[sink])
    assert _runtime.settings().max_queue == 100_000  # the rejected call was not remembered


@pytest.mark.parametrize("value", ["jsonl", " JSONL ", "jsonl,", "sqlite, jsonl"])
def test_sinks_accepts_one_name_or_a_comma_separated_string(value: str, tmp_path: Path) -> None:
    tokenmeter.configure(sinks=value, directory=tmp_path / "meter")
    assert "jsonl" in _runtime.settings().sinks
    tokenmeter.record("openai", "gpt-4o", 10, 1)
    assert tokenmeter.flush(5)
    assert (tmp_path / "meter" / "usage.jsonl").read_text().count("\n") == 1


def test_sinks_accepts_one_sink_object() -> None:
    memory = InMemorySink()
    tokenmeter.configure(sinks=memory)
    tokenmeter.record("openai", "gpt-4o", 10, 1)
    assert tokenmeter.flush(5)
    assert len(memory.records) == 1


@pytest.mark.parametrize(
    "sinks",
    [InMemorySink, [InMemorySink], [InMemorySink(), InMemorySink]],
    ids=["alone", "in-a-list", "beside-an-instance"],
)
def test_a_sink_class_for_an_instance_is_refused_naming_sinks(sinks: Any) -> None:
    """A class passes the Sink protocol check (its methods are there); it was accepted, then
    every write failed on the writer thread."""
    memory = InMemorySink()
    tokenmeter.configure(sinks=[memory])
    with pytest.raises(
        ValueError, match=r"^sinks: .*InMemorySink.* is a class; an instance is needed"
    ) as excinfo:
        tokenmeter.configure(sinks=sinks)
    one_line_value_error(excinfo)
    tokenmeter.record("openai", "gpt-4o", 10, 1)  # the previous sinks are still in force
    assert tokenmeter.flush(5)
    assert len(memory.records) == 1


def test_a_sink_whose_methods_are_not_methods_is_refused_naming_them() -> None:
    """The Sink protocol check only asks that write, flush and close be there: a sink whose
    ``write = 5`` was accepted, then every write failed on the writer thread (records set
    aside). A ``write_sessions`` of None is a sink without sessions, as before."""

    class Odd:
        write: Any = 5
        write_sessions: Any = None

        def flush(self) -> None: ...

        def close(self) -> None: ...

    with pytest.raises(ValueError, match=r"^sinks: Odd\.write must be a method, got 5$"):
        tokenmeter.configure(sinks=[Odd()])
    Odd.write = lambda self, records: None
    tokenmeter.configure(sinks=[Odd()])
    Odd.write_sessions = "sessions"
    with pytest.raises(ValueError, match=r"^sinks: Odd\.write_sessions must be a method"):
        tokenmeter.configure(sinks=[Odd()])


def test_smallest_queue_and_zero_exit_timeout_are_allowed() -> None:
    tokenmeter.configure(max_queue=1, exit_timeout=0, stream_usage=False)
    resolved = _runtime.settings()
    assert (resolved.max_queue, resolved.exit_timeout, resolved.stream_usage) == (1, 0.0, False)
    tokenmeter.configure(exit_timeout=2)
    assert _runtime.settings().exit_timeout == 2.0


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("max_queue = 0", r"'max_queue' from .*pyproject.toml \[tool.tokenmeter\].*got 0"),
        ("max-queue = -1", r"'max_queue'.*got -1"),
        ("max_queue = true", r"'max_queue'.*got True"),
        ("exit_timeout = -1", r"'exit_timeout' from .*pyproject.toml.*got -1"),
        ("exit_timeout = nan", r"'exit_timeout'.*got nan"),
        ("exit-timeout = inf", r"'exit_timeout'.*got inf"),
        ("exit_timeout = 1e300", r"'exit_timeout'.*got 1e\+300"),
        ('stream-usage = "no"', r"'stream_usage'.*got 'no'"),
        ('disabled = "yes"', r"'disabled'.*got 'yes'"),
        ("sinks = 5", r"'sinks' from .*pyproject.toml \[tool.tokenmeter\]: .*got 5"),
        ("sinks = [1]", r"sinks.*got 1"),
        ("directory = 5", r"'directory'.*got 5"),
        # Joined to the pyproject.toml's folder, an empty path was that folder: the state file
        # a directory (every line lost), the usage files beside pyproject.toml.
        ('state_file = ""', r"'state_file' from .*pyproject.toml.*must not be empty"),
        ('directory = " "', r"'directory' from .*pyproject.toml.*must not be empty"),
        ("prices-file = ''", r"'prices_file' from .*pyproject.toml.*must not be empty"),
        ("prices = 5", r"'prices'"),
        ("prices = { my-model = { input_per_mtok = -1, output_per_mtok = 1 } }", r"'my-model'"),
        ("aliases = { prod = 3 }", r"'aliases'.*alias 'prod'"),
        ("colour = 'blue'", r"'colour' from .*pyproject.toml"),
    ],
)
def test_bad_pyproject_value_is_a_one_line_value_error_naming_the_file(
    tmp_path: Path, line: str, message: str
) -> None:
    (tmp_path / "pyproject.toml").write_text(f"[tool.tokenmeter]\n{line}\n")
    with pytest.raises(ValueError, match=message) as excinfo:
        load_settings(env={}, cwd=tmp_path)
    assert str(tmp_path / "pyproject.toml") in one_line_value_error(excinfo)


@pytest.mark.parametrize(
    "content",
    [
        b"[tool.tokenmeter]\ndirectory = '\xff'\n",
        b"[tool.tokenmeter]\nsinks = " + b"[" * 100_000 + b"]" * 100_000 + b"\n",
        b"[tool]\ntokenmeter = 5\n",
    ],
    ids=["not-utf-8", "deeply-nested", "not-a-table"],
)
def test_unreadable_pyproject_is_a_value_error_naming_the_file(
    tmp_path: Path, content: bytes
) -> None:
    (tmp_path / "pyproject.toml").write_bytes(content)
    with pytest.raises(ValueError) as excinfo:
        load_settings(env={}, cwd=tmp_path)
    assert str(tmp_path / "pyproject.toml") in one_line_value_error(excinfo)


def test_pyproject_layer_accepts_good_numbers(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        "[tool.tokenmeter]\nmax-queue = 1\nexit-timeout = 0\nsinks = 'jsonl,markdown'\n"
    )
    resolved = load_settings(env={}, cwd=tmp_path)
    assert (resolved.max_queue, resolved.exit_timeout) == (1, 0.0)
    assert resolved.sinks == ("jsonl", "markdown")


def test_settings_are_read_in_a_working_directory_that_was_removed(tmp_path: Path) -> None:
    """A worker whose checkout was deleted under it: ``Path.cwd()`` raises, and configure()
    (and the first record) raised FileNotFoundError; there is just no pyproject.toml to read."""
    import subprocess
    import sys

    gone = tmp_path / "gone"
    gone.mkdir()
    script = (
        "import os, tokenmeter\n"
        "os.rmdir(os.getcwd())\n"
        f"tokenmeter.configure(directory={str(tmp_path / 'tm')!r}, sinks='jsonl')\n"
        "tokenmeter.record('openai', 'gpt-4o', 1000, 500)\n"
        "assert tokenmeter.flush(5)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=gone, timeout=60, capture_output=True
    )
    assert done.returncode == 0, done.stderr.decode()
    assert len((tmp_path / "tm" / "usage.jsonl").read_text().splitlines()) == 1


def test_record_in_a_removed_working_directory_with_the_relative_default_directory(
    tmp_path: Path,
) -> None:
    """The default ``.tokenmeter`` is relative: with the working directory removed it has no
    absolute name, and ``record()`` raised FileNotFoundError into the application. The record
    is made (and its sink reports that it cannot write)."""
    gone = tmp_path / "gone"
    gone.mkdir()
    script = (
        "import os, tokenmeter\n"
        "os.rmdir(os.getcwd())\n"
        "record = tokenmeter.record('openai', 'gpt-4o', 1000, 500)\n"
        "assert record.estimated_cost_usd > 0\n"
        "print(tokenmeter.flush(1))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "TOKENMETER_EXIT_TIMEOUT": "1"}
    done = run_python("-c", script, cwd=gone, env=env)
    assert done.stdout.strip() == "False"
    assert "cannot be made absolute" in done.stderr


def test_a_directory_named_with_bytes_that_are_not_utf8_is_used(tmp_path: Path) -> None:
    """Such a name reaches Python as \\udc80-\\udcff (surrogateescape): it names a file and is
    kept, unlike a lone surrogate outside that range."""
    directory = tmp_path / "usage-\udcff"
    tokenmeter.configure(directory=directory, sinks="jsonl")
    tokenmeter.record("openai", "gpt-4o", 10, 5)
    assert tokenmeter.flush(5)
    assert (directory / "usage.jsonl").is_file()


def test_a_directory_that_can_hold_no_files_is_refused_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """configure(directory=) took a regular file or a device: every sink's write failed on the
    writer thread, and the quarantine too ("could not be set aside either": records lost). A
    sink whose own file in a good directory cannot be (a directory at usage.jsonl) is left out,
    logged; the other sinks still store the records."""
    for kind, path in unusable_paths(tmp_path, "directory").items():
        with pytest.raises(ValueError) as excinfo:
            tokenmeter.configure(directory=path)
        message = one_line_value_error(excinfo)
        assert "'directory'" in message and (kind in message or path == "")
    (tmp_path / "meter" / "usage.jsonl").mkdir(parents=True)
    tokenmeter.configure(directory=tmp_path / "meter", sinks=["jsonl", "sqlite"])
    with caplog.at_level(logging.ERROR, logger="tokenmeter"):
        tokenmeter.record("openai", "gpt-4o", 10, 5)
    assert tokenmeter.flush(5)
    assert "tokenmeter sink 'jsonl': path must be a file" in caplog.text
    assert (tmp_path / "meter" / "usage.db").is_file()


def test_a_state_file_that_is_one_of_tokenmeters_own_files_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``state_file="usage.db"`` beside the SQLite store was taken: the state lines appended to
    the database were cut away at its checkpoint (0 of 3 in the state file), or made it a text
    file that refused every record ("file is not a database"), in this run and every later one."""
    (tmp_path / "meter").mkdir()
    (tmp_path / "link.md").symlink_to(tmp_path / "usage.jsonl")
    for state_file in (
        "usage.db",  # beside directory=".", not made yet
        tmp_path / "meter" / ".." / "usage.db-wal",
        tmp_path / "link.md",  # a link to the records file
        "journal/token_usage.md",
    ):
        with pytest.raises(ValueError) as excinfo:
            tokenmeter.configure(directory=".", state_file=state_file)
        message = one_line_value_error(excinfo)
        assert message.startswith("tokenmeter setting 'state_file' from configure(): must not")
        with pytest.raises(ValueError, match="'state_file' from TOKENMETER_STATE_FILE"):
            monkeypatch.setenv("TOKENMETER_STATE_FILE", os.fspath(state_file))
            tokenmeter.configure(directory=tmp_path)
        monkeypatch.delenv("TOKENMETER_STATE_FILE")
    (tmp_path / "meter" / "usage.db").touch()
    os.link(tmp_path / "meter" / "usage.db", tmp_path / "hard.md")  # another name of the store
    with pytest.raises(ValueError, match=r"own usage\.db in the directory"):
        tokenmeter.configure(directory="meter", state_file="hard.md")
    tokenmeter.configure(directory=".", sinks=["sqlite"], state_file="meter/state.md")
    with tokenmeter.session("job"):
        tokenmeter.record("openai", "gpt-4o", 10, 5)
    assert tokenmeter.flush(5)
    assert (tmp_path / "meter" / "state.md").read_text().count("TOKEN_TRACKING") == 1


def test_a_state_file_that_is_a_directory_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``state_file=<a directory>`` was taken, from every layer: each session's line then failed
    on the writer (IsADirectoryError) and was set aside in quarantine.jsonl, none ever written."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "states").mkdir()
    (tmp_path / "notes.txt").write_text("")
    for state_file, kind in (
        ("states", "a directory"),
        (tmp_path / "states", "a directory"),
        ("notes.txt/state.md", "a path under a file"),
    ):
        with pytest.raises(ValueError) as excinfo:
            tokenmeter.configure(state_file=state_file)
        assert one_line_value_error(excinfo).startswith(
            f"tokenmeter setting 'state_file' from configure(): must be a file or nothing yet, "
            f"got {kind}"
        )
        monkeypatch.setenv("TOKENMETER_STATE_FILE", os.fspath(state_file))
        with pytest.raises(ValueError, match="'state_file' from TOKENMETER_STATE_FILE"):
            tokenmeter.configure()
        monkeypatch.delenv("TOKENMETER_STATE_FILE")
    (tmp_path / "pyproject.toml").write_text('[tool.tokenmeter]\nstate_file = "states"\n')
    with pytest.raises(ValueError, match=r"'state_file' from .*pyproject\.toml.*a directory"):
        tokenmeter.configure()
    (tmp_path / "pyproject.toml").unlink()
    tokenmeter.configure(state_file="states/state.md")  # a file in it: taken


def test_a_state_file_that_is_the_file_of_a_sink_given_as_an_object_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``JSONLSink("ledger.jsonl")`` beside ``state_file="ledger.jsonl"`` was taken: the state
    lines landed among the records (``report`` skipped them as corrupt lines)."""
    monkeypatch.chdir(tmp_path)
    for sink in (JSONLSink("ledger.jsonl"), SQLiteSink(tmp_path / "ledger.db")):
        with pytest.raises(ValueError) as excinfo:
            tokenmeter.configure(sinks=[sink], state_file=sink.path.name)
        message = one_line_value_error(excinfo)
        assert message.startswith("tokenmeter setting 'state_file': must not be the file")
        assert type(sink).__name__ in message
    tokenmeter.configure(sinks=[JSONLSink("ledger.jsonl")], state_file="state.md")


def test_a_state_file_among_the_files_of_a_sink_given_as_an_object_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A state file in a ``MarkdownJournalSink`` object's folder was taken: the journal cut the
    state lines away when it rewrote its file (3 sessions ended, 0 lines kept), or refused its
    file and set every later record aside. ``SQLiteSink("x.db")`` beside
    ``state_file="x.db-wal"`` was taken too, where tokenmeter's own ``usage.db-wal`` is not."""
    monkeypatch.chdir(tmp_path)
    journal = MarkdownJournalSink("journal")
    for sink, state_file in (
        (journal, "journal/token_usage.md"),
        (journal, tmp_path / "journal" / "sessions" / "state.md"),
        (SQLiteSink("ledger.db"), "ledger.db-wal"),
        (SQLiteSink("ledger.db"), "ledger.db-journal"),
        (journal, "journal/.journal.lock"),
    ):
        with pytest.raises(ValueError) as excinfo:
            tokenmeter.configure(directory="data", sinks=[sink], state_file=state_file)
        message = one_line_value_error(excinfo)
        assert message.startswith("tokenmeter setting 'state_file': must not be")
        assert type(sink).__name__ in message
    for state_file in ("journal-state.md", "journal/progress.md"):  # the rest is the user's
        tokenmeter.configure(directory="data", sinks=[journal], state_file=state_file)
        with tokenmeter.session("job"):
            tokenmeter.record("openai", "gpt-4o", 10, 5)
        assert tokenmeter.flush(5)
        assert (tmp_path / state_file).read_text().count("TOKEN_TRACKING") == 1


def test_two_sinks_on_one_file_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``sinks=["jsonl", JSONLSink("<directory>/usage.jsonl")]``, or two ``JSONLSink`` objects
    of one file, was taken: 3 calls made 6 lines (3 ids) for any reader of the file to count
    twice. A ``JSONLSink`` on tokenmeter's own alerts.jsonl put the records among the alerts,
    and a ``SQLiteSink`` on its budgets.db refused every record (set aside)."""
    monkeypatch.chdir(tmp_path)
    ledger = JSONLSink("ledger.jsonl")
    tokenmeter.configure(directory="data", sinks=[ledger])
    (tmp_path / "mine.jsonl").write_text("")
    os.link(tmp_path / "mine.jsonl", tmp_path / "hard.jsonl")
    (tmp_path / "soft.jsonl").symlink_to(tmp_path / "mine.jsonl")
    for sinks, first, second in (
        (["jsonl", JSONLSink("data/usage.jsonl")], "JSONLSink", "the 'jsonl' sink"),
        (["sqlite", SQLiteSink(tmp_path / "data" / "usage.db")], "SQLiteSink", "'sqlite'"),
        (["markdown", MarkdownJournalSink("data/journal")], "MarkdownJournalSink", "'markdown'"),
        ([JSONLSink("mine.jsonl"), JSONLSink(tmp_path / "soft.jsonl")], "JSONLSink", "JSONLSink"),
        ([JSONLSink("mine.jsonl"), JSONLSink("hard.jsonl")], "JSONLSink", "JSONLSink"),
        ([JSONLSink("data/alerts.jsonl")], "JSONLSink", "tokenmeter's own alerts.jsonl"),
        ([JSONLSink("data/quarantine.jsonl")], "JSONLSink", "own quarantine.jsonl"),
        ([SQLiteSink("data/budgets.db")], "SQLiteSink", "tokenmeter's own budgets.db"),
        ([JSONLSink("data/reports/usage.jsonl")], "JSONLSink", "own reports/ folder"),
    ):
        with pytest.raises(ValueError) as excinfo:
            tokenmeter.configure(directory="data", sinks=sinks)
        message = one_line_value_error(excinfo)
        assert message.startswith(f"tokenmeter setting 'sinks' from configure(): {first} writes")
        assert second in message
    for _ in range(3):  # the settings before the refusals are in force
        tokenmeter.record("openai", "gpt-4o", 10, 5)
    assert tokenmeter.flush(5)
    assert len((tmp_path / "ledger.jsonl").read_text().splitlines()) == 3
    mine = JSONLSink("mine.jsonl")
    tokenmeter.configure(directory="data", sinks=["jsonl", mine, mine, ledger])  # apart: taken
    tokenmeter.record("openai", "gpt-4o", 10, 5)
    assert tokenmeter.flush(5)
    for name, lines in (("data/usage.jsonl", 1), ("mine.jsonl", 1), ("ledger.jsonl", 4)):
        assert len((tmp_path / name).read_text().splitlines()) == lines


def test_a_state_file_that_is_a_hard_link_to_another_writers_file_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hard link has a name of its own, so a state file that was one was taken where the same
    file through a symbolic link was refused: linked to a ``JSONLSink``'s ledger, 3 sessions put
    3 markdown lines among its 3 records; linked to the journal's page of the directory, or to a
    ``MarkdownJournalSink`` object's, it was taken too. (Not looked for among session pages and
    reports: their folders would be listed at every load of the settings.)"""
    monkeypatch.chdir(tmp_path)
    for name in ("ledger.jsonl", "data/journal/token_usage.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    (tmp_path / "own").mkdir()
    (tmp_path / "own" / "token_usage.md").write_text("")
    ledger = JSONLSink("ledger.jsonl")
    journal = MarkdownJournalSink("own")
    for sink, linked, said in (
        (ledger, "ledger.jsonl", "the file of the sink JSONLSink"),
        (journal, "own/token_usage.md", "a file of the sink MarkdownJournalSink"),
        (ledger, "data/journal/token_usage.md", "tokenmeter's own journal/token_usage.md"),
    ):
        link = tmp_path / "state.md"
        link.unlink(missing_ok=True)
        os.link(tmp_path / linked, link)
        with pytest.raises(ValueError) as excinfo:
            tokenmeter.configure(directory="data", sinks=[sink], state_file="state.md")
        message = one_line_value_error(excinfo)
        assert message.startswith("tokenmeter setting 'state_file'")
        assert said in message
    (tmp_path / "state.md").unlink()
    (tmp_path / "state.md").write_text("")  # a file of its own (one name): taken
    os.link(tmp_path / "state.md", tmp_path / "state-copy.md")  # two names, no writer's file
    tokenmeter.configure(directory="data", sinks=[ledger], state_file="state.md")
    with tokenmeter.session("job"):
        tokenmeter.record("openai", "gpt-4o", 10, 5)
    assert tokenmeter.flush(5)
    assert (tmp_path / "state.md").read_text().count("TOKEN_TRACKING") == 1
    assert len((tmp_path / "ledger.jsonl").read_text().splitlines()) == 1


@pytest.mark.parametrize("read_by", ["configure", "instrument"])
def test_relative_paths_are_where_the_process_was_when_the_settings_were_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read_by: str
) -> None:
    """The sinks (and the state file) are made at the first record: a process that changed
    directory in between (a daemon going to '/') wrote its records and sessions there, while its
    budgets and quarantine stayed where the settings were read, the data split over two places."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    monkeypatch.setenv("TOKENMETER_SINKS", "jsonl")
    monkeypatch.setenv("TOKENMETER_STATE_FILE", "state.md")
    if read_by == "configure":
        tokenmeter.configure(directory="meter", budgets=[{"limit_usd": 5}])
    else:
        monkeypatch.setenv("TOKENMETER_DIR", "meter")
        tokenmeter.instrument()
    monkeypatch.chdir(tmp_path / "b")
    with tokenmeter.session("job"):
        tokenmeter.record("openai", "gpt-4o", 10, 5)
    assert tokenmeter.flush(5)
    assert list((tmp_path / "b").iterdir()) == []
    assert (tmp_path / "a" / "meter" / "usage.jsonl").is_file()
    assert (tmp_path / "a" / "state.md").read_text().count("TOKEN_TRACKING") == 1


def _project_with_prices(tmp_path: Path, more: str = "") -> tuple[Path, Path]:
    """``project`` whose pyproject.toml sets a directory (.costs), the JSONL sink, gpt-4o-mini
    at $2/M in and ``more``, and another folder, ``elsewhere``."""
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    (project / "pyproject.toml").write_text(
        '[tool.tokenmeter]\ndirectory = ".costs"\nsinks = ["jsonl"]\n'
        '[tool.tokenmeter.prices."gpt-4o-mini"]\ninput_per_mtok = 2\noutput_per_mtok = 8\n' + more
    )
    return project, elsewhere


def test_a_configure_after_a_change_of_directory_keeps_the_projects_pyproject(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """configure() looked for the pyproject.toml again from the working directory of its call:
    a process that had left its project (a daemon going to its work dir) and only added a hook
    lost the project's prices ($0.15 instead of its $2.00), its budget, its directory (records
    split over two stores) and its ``disabled = true``, silently."""
    project, elsewhere = _project_with_prices(
        tmp_path, '[[tool.tokenmeter.budgets]]\nlimit_usd = 3\nperiod = "day"\n'
    )
    monkeypatch.chdir(project)
    tokenmeter.record("openai", "gpt-4o-mini", 1_000_000, 0)
    monkeypatch.chdir(elsewhere)
    tokenmeter.configure(on_session_end=lambda info: None)
    assert tokenmeter.record("openai", "gpt-4o-mini", 1_000_000, 0).estimated_cost_usd == 2
    assert [budget.limit_usd for budget in _runtime.settings().budgets] == [3]
    assert tokenmeter.flush(5)
    assert (project / ".costs" / "usage.jsonl").read_text().count("\n") == 2
    assert list(elsewhere.iterdir()) == []
    (project / "pyproject.toml").write_text("[tool.tokenmeter]\ndisabled = true\n")
    tokenmeter.configure()  # the project's file is read again, where it is
    assert _runtime.settings().disabled
    _runtime.reset()  # as a process started here: no project
    assert not _runtime.settings().disabled


def _app_with_relative_prices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """``app`` holding prices.toml (gpt-4o-mini at $2/M in) named by a relative
    ``TOKENMETER_PRICES``, and another folder, ``elsewhere``."""
    app, elsewhere = tmp_path / "app", tmp_path / "elsewhere"
    app.mkdir()
    elsewhere.mkdir()
    (app / "prices.toml").write_text('["gpt-4o-mini"]\ninput_per_mtok = 2\noutput_per_mtok = 8\n')
    monkeypatch.setenv("TOKENMETER_PRICES", "prices.toml")
    return app, elsewhere


@pytest.mark.parametrize("read_by", ["configure", "instrument"])
def test_a_relative_tokenmeter_prices_is_the_file_of_the_first_read_after_a_chdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read_by: str
) -> None:
    """``TOKENMETER_PRICES=prices.toml`` (a container's WORKDIR and ENV) was looked for again
    from each configure()'s working directory: the application's configure(on_session_end=...)
    after an os.chdir() raised "prices.toml: cannot read prices file", and added no hook."""
    app, work = _app_with_relative_prices(tmp_path, monkeypatch)
    monkeypatch.chdir(app)
    if read_by == "configure":
        tokenmeter.configure()
    else:
        tokenmeter.instrument()
    monkeypatch.chdir(work)
    ended: list[object] = []
    tokenmeter.configure(sinks=[InMemorySink()], on_session_end=ended.append)
    with tokenmeter.session("job"):
        made = tokenmeter.record("openai", "gpt-4o-mini", 1_000_000, 0)
    assert made.estimated_cost_usd == 2
    assert len(ended) == 1
    _runtime.reset()  # as a process started here: prices.toml is looked for here
    with pytest.raises(ValueError, match=r"prices\.toml: cannot read"):
        tokenmeter.configure()


def test_a_relative_tokenmeter_prices_is_not_pinned_by_a_read_that_could_not_find_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first read made outside the folder holding prices.toml (an intercepted call, an
    import-time instrument()) was refused for it, yet pinned that folder: the configure() the
    warning asks for, made in the right folder, raised for the first folder's file."""
    app, start = _app_with_relative_prices(tmp_path, monkeypatch)
    monkeypatch.chdir(start)
    assert _runtime.settings_at_a_call() is None  # refused: no prices.toml here
    monkeypatch.chdir(app)
    tokenmeter.configure(sinks=[InMemorySink()])
    assert tokenmeter.record("openai", "gpt-4o-mini", 1_000_000, 0).estimated_cost_usd == 2


def test_a_first_read_refused_for_another_setting_pins_the_prices_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused for ``TOKENMETER_MAX_QUEUE=10k`` where prices.toml is: the configure() the
    warning asks for, after a chdir, looked for prices.toml in the new folder, and raised."""
    app, work = _app_with_relative_prices(tmp_path, monkeypatch)
    monkeypatch.setenv("TOKENMETER_MAX_QUEUE", "10k")
    monkeypatch.chdir(app)
    assert _runtime.settings_at_a_call() is None  # refused for max_queue
    monkeypatch.chdir(work)
    tokenmeter.configure(sinks=[InMemorySink()], max_queue=10_000)
    assert tokenmeter.record("openai", "gpt-4o-mini", 1_000_000, 0).estimated_cost_usd == 2


def test_a_first_read_outside_any_project_or_refused_pins_no_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The project is the one the first read that found a pyproject.toml found: an instrument()
    at import, made outside the project, pinned that directory, so the configure() made once
    in the project read no pyproject.toml at all; a broken one read first refused every later
    configure(), in the good project too."""
    project, outside, broken = tmp_path / "project", tmp_path / "outside", tmp_path / "broken"
    for folder in (project, outside, broken):
        folder.mkdir()
    (project / "pyproject.toml").write_text(
        '[tool.tokenmeter.prices."gpt-4o-mini"]\ninput_per_mtok = 2\noutput_per_mtok = 8\n'
    )
    (broken / "pyproject.toml").write_text('[tool.tokenmeter]\nmax_queue = "lots"\n')
    monkeypatch.chdir(outside)
    if _config.find_pyproject(outside) is not None:
        pytest.skip("a pyproject.toml above the temporary folder")
    tokenmeter.configure()
    monkeypatch.chdir(project)
    tokenmeter.configure()
    assert tokenmeter.record("openai", "gpt-4o-mini", 1_000_000, 0).estimated_cost_usd == 2
    _runtime.reset()
    monkeypatch.chdir(broken)
    with pytest.raises(ValueError, match="max_queue"):
        tokenmeter.configure()
    monkeypatch.chdir(project)
    tokenmeter.configure()
    assert tokenmeter.record("openai", "gpt-4o-mini", 1_000_000, 0).estimated_cost_usd == 2


@pytest.mark.parametrize("first_read", ["configure", "a call"])
def test_a_first_read_refused_for_the_environment_pins_the_project_it_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first_read: str
) -> None:
    """A first read that found and read the project's pyproject.toml, refused for the
    operator's ``TOKENMETER_MAX_QUEUE=10k``, pinned nothing: the ``configure(max_queue=10_000)``
    the warning asks for, made after a chdir, read no pyproject.toml and dropped the project's
    price ($0.15 instead of its $2.00) and directory."""
    project, elsewhere = _project_with_prices(tmp_path)
    monkeypatch.setenv("TOKENMETER_MAX_QUEUE", "10k")
    monkeypatch.chdir(project)
    with pytest.raises(ValueError, match="TOKENMETER_MAX_QUEUE"):
        if first_read == "configure":
            tokenmeter.configure()
        else:
            tokenmeter.record("openai", "gpt-4o-mini", 1_000_000, 0)
    monkeypatch.chdir(elsewhere)
    tokenmeter.configure(max_queue=10_000)
    assert tokenmeter.record("openai", "gpt-4o-mini", 1_000_000, 0).estimated_cost_usd == 2
    assert tokenmeter.flush(5)
    assert (project / ".costs" / "usage.jsonl").read_text().count("\n") == 1
    assert list(elsewhere.iterdir()) == []


def test_a_bad_setting_found_at_the_first_call_is_read_once_and_never_breaks_the_call(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A client wrapped without configure() or instrument() reads the settings at its first
    call: a bad one was read again (the pyproject.toml searched for and parsed) at every call,
    twice for a stream, the calls themselves unaffected; and its fault was logged with a
    traceback at every call, then as "planning a openai call failed" and "recording a call
    (openai) failed" with tracebacks of ours: it is the one-line warning of a bad setting."""
    from tokenmeter.testing import FakeProvider

    monkeypatch.setenv("TOKENMETER_MAX_QUEUE", "0")
    reads: list[object] = []
    load = _runtime.load_settings_with_sources

    def counted(*args: Any, **kwargs: Any) -> Any:
        reads.append(args)
        return load(*args, **kwargs)

    monkeypatch.setattr(_runtime, "load_settings_with_sources", counted)
    with FakeProvider() as fake:
        client = tokenmeter.wrap(fake.openai_client())
        for stream in (False, True, False, True):
            reply = client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=stream
            )
            if stream:
                assert sum(1 for _ in reply) > 0
            else:
                assert reply.choices[0].message.content
    assert len(reads) == 1
    logged = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in logged] == [
        "tokenmeter: tokenmeter setting 'max_queue' from TOKENMETER_MAX_QUEUE: must be a whole "
        "number of records, at least 1, got 0; nothing is recorded until configure() is called"
    ]
    assert not logged[0].exc_info
    with pytest.raises(ValueError, match="'max_queue' from TOKENMETER_MAX_QUEUE") as raised:
        tokenmeter.record("openai", "gpt-4o", 10, 5)  # the application's own call is told
    one_line_value_error(raised)
    monkeypatch.delenv("TOKENMETER_MAX_QUEUE")
    tokenmeter.configure()  # read again: now good
    assert tokenmeter.record("openai", "gpt-4o", 10, 5).estimated_cost_usd


def test_a_bad_setting_never_breaks_a_session_entry_nor_leaves_the_session_current(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bad setting found at a session's entry (its announcement is the first record): the
    first `with session()` raised its ValueError and the next ones did not (the refusal was read
    once), and the session that raised stayed current for good: once configure() had fixed the
    setting, a call made outside any session was filed under it."""
    from tokenmeter.testing import FakeProvider

    monkeypatch.setenv("TOKENMETER_MAX_QUEUE", "0")
    messages = [{"role": "user", "content": "hi"}]
    with FakeProvider() as fake:
        client = tokenmeter.wrap(fake.openai_client())
        for _ in range(3):  # three requests of a web handler: the same outcome each time
            with tokenmeter.session("request"):
                assert client.chat.completions.create(model="gpt-4o", messages=messages).id
            assert tokenmeter.current_session() is None
        told = [r for r in caplog.records if "TOKENMETER_MAX_QUEUE" in r.getMessage()]
        assert len(told) == 1 and told[0].levelno == logging.WARNING
        memory = InMemorySink()
        tokenmeter.configure(max_queue=1000, sinks=[memory])  # the setting fixed in code
        client.chat.completions.create(model="gpt-4o", messages=messages)
    assert tokenmeter.flush(5)
    assert [r.session_name for r in memory.records] == [None]


def test_threads_making_their_first_records_at_once_read_the_settings_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each thread that found no settings read and applied them: 8 threads, 8 applies, each
    replacing the sinks just made (the thread waiting for the old writers to stop) and the
    budgets' state of the calls in flight."""
    import threading

    monkeypatch.setenv("TOKENMETER_SINKS", "jsonl")
    applies: list[int] = []
    apply = _runtime._apply

    def counted() -> None:
        applies.append(1)
        apply()

    monkeypatch.setattr(_runtime, "_apply", counted)
    start = threading.Barrier(8)

    def work() -> None:
        start.wait()
        tokenmeter.record("openai", "gpt-4o", 10, 5)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert tokenmeter.flush(5)
    assert len(applies) == 1
    assert (tmp_path / ".tokenmeter" / "usage.jsonl").read_text().count("\n") == 8


def test_configure_while_another_thread_opens_the_first_session_never_hangs(
    tmp_path: Path,
) -> None:
    """configure() holds the settings' lock and then takes the pipeline's to replace the sinks;
    a session opened meanwhile on another thread (the process's first use) took the pipeline's
    lock and then waited for the settings': both threads hung for ever."""
    script = (
        "import threading, time, tokenmeter\n"
        "from tokenmeter import _runtime\n"
        "load = _runtime.load_settings\n"
        "def slow(*args, **kwargs):\n"
        "    time.sleep(0.3)  # a slow disk: configure() holds its lock meanwhile\n"
        "    return load(*args, **kwargs)\n"
        "_runtime.load_settings = slow\n"
        "def work():\n"
        "    time.sleep(0.1)\n"
        "    with tokenmeter.session('job'):\n"
        "        tokenmeter.record('openai', 'gpt-4o', 10, 5)\n"
        "worker = threading.Thread(target=work, daemon=True)\n"
        "worker.start()\n"
        f"tokenmeter.configure(sinks='jsonl', directory={str(tmp_path / 'tm')!r})\n"
        "worker.join(20)\n"
        "assert not worker.is_alive(), 'hung'\n"
        "assert tokenmeter.flush(5)\n"
    )
    import subprocess

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    try:
        done = subprocess.run(
            [sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        pytest.fail("configure() and the first session hung each other")
    assert done.returncode == 0, done.stderr.decode()
    assert (tmp_path / "tm" / "usage.jsonl").read_text().count("\n") == 1


def test_a_pg_dsn_whose_database_holds_an_at_is_taken() -> None:
    """A database named with an ``@`` after a numeric port (``host:5432/team@prod``), also
    with an IPv6 host or a host list, is a DSN libpq takes; a password's unencoded ``/``
    (``tm:pa/ss@db``) is refused, as its tail would be named as the database."""
    for dsn in (
        "postgresql://db.internal:5432/team@prod",
        "postgresql://[::1]:5432/team@prod",
        "postgresql://[::1]/team@prod",  # no port
        "postgresql://db1:5432,db2:5433/team@prod",
        "postgresql://db1:5432,db2/team@prod",
        "postgresql://db.internal:5432/team:eu@prod",  # a ':' too: after a port, no user name
        "postgresql://[::1]:5432/team:eu@prod",
    ):
        tokenmeter.configure(pg_dsn=dsn)
    for dsn in (
        "postgresql://tm:pa/ss@db.internal/llm",
        "postgresql://tm:2024/ss@db.internal/llm",  # digits, then a host and a database
        "postgresql://tm:2024/ss@db.internal:5432",  # ... or a host and a port
        "postgresql://tm:2024,db/ss@db.internal/llm",  # a ',' in the password
        "postgresql://svc/app:ss@db.internal/llm",  # a '/' in the user name
        "postgresql://svc/app@REALM:ss@db.internal/llm",  # ... a Kerberos principal's
    ):
        with pytest.raises(ValueError, match="%2F"):
            tokenmeter.configure(pg_dsn=dsn)


@pytest.mark.parametrize(
    ("line", "argument"),
    [('providers = ""', None), ('providers = ","', None), (None, ""), (None, " , ")],
)
def test_a_providers_string_that_names_none_is_refused_in_every_layer(
    tmp_path: Path, line: str | None, argument: str | None
) -> None:
    """``providers = ""`` (an unfilled template) or ``configure(providers="")`` made
    ``instrument()`` patch nothing without a word: every openai call went out unrecorded and a
    $0.000001 budget refused none. ``TOKENMETER_PROVIDERS=","`` was refused already."""
    from tokenmeter.testing import FakeProvider

    (tmp_path / "pyproject.toml").write_text(f"[tool.tokenmeter]\n{line or ''}\n")
    source = "configure()" if argument is not None else str(tmp_path / "pyproject.toml")
    with pytest.raises(ValueError) as excinfo:
        if argument is not None:
            tokenmeter.configure(providers=argument)
        tokenmeter.instrument()
    assert one_line_value_error(excinfo).startswith(f"tokenmeter setting 'providers' from {source}")
    assert "names no provider" in str(excinfo.value)
    (tmp_path / "pyproject.toml").write_text("[tool.tokenmeter]\n")
    memory = InMemorySink()
    tokenmeter.configure(sinks=[memory], providers=None)
    tokenmeter.instrument()  # the settings fixed: every installed provider metered
    with FakeProvider() as fake:
        fake.openai_client().chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
        )
    assert tokenmeter.flush(5)
    assert len(memory.records) == 1


def test_an_empty_providers_list_patches_none(sink: InMemorySink) -> None:
    """An explicit empty list stays "no provider", as ``instrument([])`` (documented)."""
    tokenmeter.configure(providers=[])
    assert tokenmeter.instrument().providers == []


@pytest.mark.parametrize(
    ("line", "argument"),
    [
        ('sinks = ""', None),
        ('sinks = ","', None),
        ('sinks = [""]', None),
        (None, ""),
        (None, " , "),
        (None, [""]),
        (None, [" "]),
    ],
)
def test_a_sinks_string_that_names_none_is_refused_in_every_layer(
    tmp_path: Path, line: str | None, argument: str | list[str] | None
) -> None:
    """``sinks = ""`` (an unfilled template) or ``configure(sinks="")`` stored nothing while
    ``flush()`` said True: 5 records made, no file written, not a word. ``TOKENMETER_SINKS=""``
    was refused already."""
    (tmp_path / "pyproject.toml").write_text(f'[tool.tokenmeter]\ndirectory = "tm"\n{line or ""}\n')
    project = f"{tmp_path / 'pyproject.toml'} [tool.tokenmeter]"
    source = "configure()" if argument is not None else project
    with pytest.raises(ValueError) as excinfo:
        if argument is not None:
            tokenmeter.configure(sinks=argument)
        tokenmeter.record("openai", "gpt-4o", 1000, 100)
    message = one_line_value_error(excinfo)
    assert message.startswith(f"tokenmeter setting 'sinks' from {source}: names no sink")
    assert "TOKENMETER_DISABLED=1 to store nothing" in message
    (tmp_path / "pyproject.toml").write_text('[tool.tokenmeter]\ndirectory = "tm"\n')
    tokenmeter.configure(sinks="jsonl")
    tokenmeter.record("openai", "gpt-4o", 1000, 100)
    assert tokenmeter.flush(5)
    assert (tmp_path / "tm" / "usage.jsonl").read_text().count("\n") == 1


def test_an_empty_sinks_list_leaves_only_the_sink_objects_given(tmp_path: Path) -> None:
    """``configure(sinks=[])`` is "no default sink" on purpose (the tests use it), not an error."""
    memory = InMemorySink()
    tokenmeter.configure(sinks=[], directory=tmp_path / "tm")
    tokenmeter.configure(sinks=[memory])
    tokenmeter.record("openai", "gpt-4o", 10, 1)
    assert tokenmeter.flush(5)
    assert len(memory.records) == 1 and not (tmp_path / "tm").exists()


def test_a_state_file_that_is_a_file_the_settings_are_read_from_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``state_file = "pyproject.toml"`` (or the ``TOKENMETER_PRICES`` file) was taken: the
    first finished session appended its line there, the file was no TOML any more, and every
    later process raised at its first record ("cannot read [tool.tokenmeter]")."""
    project = tmp_path / "pyproject.toml"
    project.write_text('[tool.tokenmeter]\ndirectory = ".tm"\nstate_file = "pyproject.toml"\n')
    with pytest.raises(ValueError) as excinfo:
        tokenmeter.record("openai", "gpt-4o", 10, 1)
    assert one_line_value_error(excinfo).startswith(
        f"tokenmeter setting 'state_file' from {project} [tool.tokenmeter]: must not be the "
        "pyproject.toml tokenmeter reads its settings from, got "
    )
    project.write_text('[tool.tokenmeter]\ndirectory = ".tm"\n')
    prices = tmp_path / "prices.toml"
    prices.write_text('["my-model"]\ninput_per_mtok = 2\noutput_per_mtok = 10\n')
    monkeypatch.setenv("TOKENMETER_PRICES", "prices.toml")
    (tmp_path / "link.md").symlink_to(prices)
    for state_file in ("prices.toml", "link.md"):
        monkeypatch.setenv("TOKENMETER_STATE_FILE", state_file)
        with pytest.raises(ValueError) as excinfo:
            tokenmeter.configure()
        assert one_line_value_error(excinfo) == (
            "tokenmeter setting 'state_file' from TOKENMETER_STATE_FILE: must not be the prices "
            f"file (prices_file), got '{state_file}'"
        )
    with pytest.raises(ValueError, match="'state_file' from configure"):
        tokenmeter.configure(state_file=project)
    monkeypatch.setenv("TOKENMETER_DISABLED", "1")  # nothing written: the kill switch works
    tokenmeter.configure()
    monkeypatch.delenv("TOKENMETER_DISABLED")
    tokenmeter.configure(state_file="state.md")
    with tokenmeter.session("job"):
        tokenmeter.record("openai", "my-model", 10, 1)
    assert tokenmeter.flush(5)
    assert (tmp_path / "state.md").read_text().count("TOKEN_TRACKING") == 1
    assert "TOKEN_TRACKING" not in prices.read_text() + project.read_text()


@pytest.mark.parametrize("where", ["here", "sub/pyproject.toml"])
def test_a_state_file_named_pyproject_toml_is_refused_where_none_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Where no pyproject.toml is read (a folder without one, or another folder's), the first
    run made ``pyproject.toml`` of its state line, and every later run there raised: a
    pyproject.toml is never a state file."""
    state_file = "pyproject.toml" if where == "here" else where
    monkeypatch.setenv("TOKENMETER_STATE_FILE", state_file)
    with pytest.raises(ValueError) as excinfo:
        tokenmeter.configure()
    assert one_line_value_error(excinfo) == (
        "tokenmeter setting 'state_file' from TOKENMETER_STATE_FILE: must not be a "
        f"pyproject.toml, got '{state_file}'"
    )
    assert not (tmp_path / state_file).exists()


def test_a_blank_sink_name_beside_a_sink_object_is_no_sink(tmp_path: Path) -> None:
    """``sinks=[os.environ.get("EXTRA_SINK", ""), my_sink]``: the object is the sink meant."""
    memory = InMemorySink()
    tokenmeter.configure(directory=tmp_path / "tm", sinks=["", memory])
    tokenmeter.record("openai", "gpt-4o", 10, 1)
    assert tokenmeter.flush(5)
    assert len(memory.records) == 1 and not (tmp_path / "tm").exists()


def test_a_state_file_linked_to_a_pyproject_toml_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A state file named otherwise that links to another folder's pyproject.toml: the first
    run appended its line there, and every later run in that project raised."""
    other = tmp_path / "proj"
    other.mkdir()
    (other / "pyproject.toml").write_text("[tool.tokenmeter]\nexit_timeout = 5\n")
    (tmp_path / "state.log").symlink_to(other / "pyproject.toml")
    monkeypatch.setenv("TOKENMETER_STATE_FILE", "state.log")
    with pytest.raises(ValueError, match=r"must not be a pyproject\.toml"):
        tokenmeter.configure()
