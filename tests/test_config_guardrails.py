"""The guardrail settings in all three layers, their precedence, and the two rules of issue 10:
``TOKENMETER_DISABLED=1`` writes nothing at all; ``TOKENMETER_SINKS=`` (empty) is an error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import one_line_value_error, run_python

import tokenmeter
from tokenmeter._config import load_settings, load_settings_with_sources
from tokenmeter.guardrails._budgets import parse_budgets

PYPROJECT = """
[tool.tokenmeter]
state_file = "state.md"
budget_timezone = "Europe/Paris"
thread_propagation = false
budget-warn-at = [0.9]

[[tool.tokenmeter.budgets]]
name = "daily"
limit_usd = 10
period = "day"

[[tool.tokenmeter.alerts]]
rule = "call_tokens"
multiplier = 3
warmup = 20
"""


def test_pyproject_then_environment_then_configure(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    from_file, sources = load_settings_with_sources(env={}, cwd=tmp_path)
    assert from_file.state_file == tmp_path / "state.md"  # relative to the pyproject.toml
    assert from_file.budget_timezone == "Europe/Paris" and not from_file.thread_propagation
    assert from_file.budget_warn_at == (0.9,)
    assert from_file.budgets == parse_budgets([{"name": "daily", "limit_usd": 10}])
    assert [rule.rule for rule in from_file.alerts] == ["call_tokens"]
    assert sources["budgets"].endswith("pyproject.toml [tool.tokenmeter]")
    env = {
        "TOKENMETER_STATE_FILE": "/tmp/elsewhere.md",
        "TOKENMETER_BUDGETS": '[{"name": "weekly", "limit_usd": 50, "period": "week"}]',
        "TOKENMETER_THREAD_PROPAGATION": "yes",
        "TOKENMETER_BUDGET_WARN_AT": "0.5, 1",
        "TOKENMETER_EXIT_TIMEOUT": "2.5",
        "TOKENMETER_MAX_QUEUE": "500",
        "TOKENMETER_ALERTS": '[{"rule": "spend_rate", "threshold": 5}]',
        "TOKENMETER_BUDGET_LEDGER": "memory",
    }
    from_env, sources = load_settings_with_sources(env=env, cwd=tmp_path)
    assert from_env.state_file == Path("/tmp/elsewhere.md") and from_env.thread_propagation
    assert [b.name for b in from_env.budgets] == ["weekly"]
    assert from_env.budget_warn_at == (0.5, 1.0) and from_env.budget_timezone == "Europe/Paris"
    assert (from_env.exit_timeout, from_env.max_queue, from_env.budget_ledger) == (
        2.5,
        500,
        "memory",
    )
    assert [rule.rule for rule in from_env.alerts] == ["spend_rate"]
    assert sources["budgets"] == "TOKENMETER_BUDGETS"
    assert sources["budget_timezone"].endswith("[tool.tokenmeter]")
    explicit, sources = load_settings_with_sources(
        {"budgets": [], "thread_propagation": False}, env=env, cwd=tmp_path
    )
    assert explicit.budgets == () and not explicit.thread_propagation
    assert sources["budgets"] == "configure()"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TOKENMETER_BUDGETS": "10/day"}, "'budgets' from TOKENMETER_BUDGETS: must be JSON"),
        ({"TOKENMETER_ALERTS": "loud"}, "'alerts' from TOKENMETER_ALERTS: must be JSON"),
        (
            {"TOKENMETER_BUDGETS": '[{"limit_usd": 1, "period": "year"}]'},
            "'budgets' from TOKENMETER_BUDGETS: budgets[0].period",
        ),
        (
            {"TOKENMETER_BUDGET_TIMEZONE": "Mars/Olympus"},
            "'budget_timezone' from TOKENMETER_BUDGET_TIMEZONE: unknown time zone",
        ),
        (
            {"TOKENMETER_BUDGET_WARN_AT": "half"},
            "'budget_warn_at' from TOKENMETER_BUDGET_WARN_AT: must be a number",
        ),
        ({"TOKENMETER_BUDGET_WARN_AT": "0,1"}, "each fraction must be a number above 0"),
        ({"TOKENMETER_BUDGET_LEDGER": "postgres"}, "must be 'sqlite' or 'memory'"),
        (
            {"TOKENMETER_THREAD_PROPAGATION": "sometimes"},
            "from TOKENMETER_THREAD_PROPAGATION: must be 1/0",
        ),
        ({"TOKENMETER_EXIT_TIMEOUT": "soon"}, "from TOKENMETER_EXIT_TIMEOUT: must be a number"),
        ({"TOKENMETER_MAX_QUEUE": "0"}, "'max_queue' from TOKENMETER_MAX_QUEUE"),
        ({"TOKENMETER_SINKS": ""}, "from TOKENMETER_SINKS: is set but names no sink"),
        ({"TOKENMETER_SINKS": " , "}, "from TOKENMETER_SINKS: is set but names no sink"),
        # Nothing was patched, without a word: every call unmetered (an empty value is unset).
        ({"TOKENMETER_PROVIDERS": " "}, "from TOKENMETER_PROVIDERS: is set but names no provider"),
        ({"TOKENMETER_PROVIDERS": ","}, "from TOKENMETER_PROVIDERS: is set but names no provider"),
        ({"TOKENMETER_REPORTS": " , "}, "from TOKENMETER_REPORTS: is set but names no report"),
        # The last one won: a $5 budget enforced as $500, a 3x alert rule at 300x.
        (
            {"TOKENMETER_BUDGETS": '[{"limit_usd": 5, "period": "day", "limit_usd": 500}]'},
            "'budgets' from TOKENMETER_BUDGETS: must be JSON naming each key once: "
            "'limit_usd' is given twice",
        ),
        (
            {"TOKENMETER_ALERTS": '[{"rule": "call_tokens", "multiplier": 3, "multiplier": 300}]'},
            "'alerts' from TOKENMETER_ALERTS: must be JSON naming each key once: "
            "'multiplier' is given twice",
        ),
        (
            {"TOKENMETER_RUN_BUDGETS": '[{"limit_usd": 5, "limit_usd": 500, "period": "day"}]'},
            "'budgets' from TOKENMETER_RUN_BUDGETS: 'limit_usd' is given twice",
        ),
        ({"TOKENMETER_STREAM_USAGE": " "}, "from TOKENMETER_STREAM_USAGE: must be 1/0"),
    ],
)
def test_bad_environment_values(tmp_path: Path, env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        load_settings(env=env, cwd=tmp_path)
    assert message in one_line_value_error(excinfo)


@pytest.mark.parametrize(
    ("variable", "key", "in_pyproject", "default"),
    [
        ("TOKENMETER_STREAM_USAGE", "stream_usage", None, True),
        ("TOKENMETER_THREAD_PROPAGATION", "thread_propagation", None, True),
        ("TOKENMETER_REPORTS", "reports", 'reports = "weekly"', ("weekly",)),
        ("TOKENMETER_DISABLED", "disabled", "disabled = true", True),
    ],
)
def test_a_variable_set_but_empty_is_unset(
    tmp_path: Path, variable: str, key: str, in_pyproject: str | None, default: object
) -> None:
    """An unfilled ``.env`` line or ``export X=$UNSET`` read as "false" (or "none"): streams
    were estimated, threads left their session, a project's reports were switched off, and its
    ``disabled = true`` was overridden, each without a word. Empty is unset, as for the other
    ``TOKENMETER_*`` variables (``TOKENMETER_SINKS=`` alone is an error)."""
    if in_pyproject is not None:
        (tmp_path / "pyproject.toml").write_text(f"[tool.tokenmeter]\n{in_pyproject}\n")
    resolved, sources = load_settings_with_sources(env={variable: ""}, cwd=tmp_path)
    assert getattr(resolved, key) == default
    assert sources[key] != variable


@pytest.mark.parametrize("value", ["0", "off", "none", "FALSE"])
def test_the_environment_turns_a_projects_reports_off(tmp_path: Path, value: str) -> None:
    """An empty ``TOKENMETER_REPORTS`` is unset now: the variable still needs a way to turn off a
    ``pyproject.toml``'s reports (for one CI job), and ``0`` is what the docs say for a switch."""
    (tmp_path / "pyproject.toml").write_text('[tool.tokenmeter]\nreports = "weekly"\n')
    resolved, sources = load_settings_with_sources(env={"TOKENMETER_REPORTS": value}, cwd=tmp_path)
    assert (resolved.reports, sources["reports"]) == ((), "TOKENMETER_REPORTS")


def test_callbacks_cannot_be_written_in_toml(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.tokenmeter]\non_alert = "print"\n')
    with pytest.raises(ValueError, match="on_alert holds code: set it with configure"):
        load_settings(env={}, cwd=tmp_path)


def test_configure_takes_every_new_setting(tmp_path: Path) -> None:
    tokenmeter.configure(
        budgets=[{"limit_usd": 1}],
        budget_timezone="Asia/Tokyo",
        budget_warn_at=[0.25],
        budget_ledger="memory",
        alerts=["call_tokens"],
        on_alert=print,
        on_session_end=[print],
        state_file=tmp_path / "s.md",
        thread_propagation=False,
    )
    from tokenmeter import _runtime

    resolved = _runtime.settings()
    assert resolved.budget_timezone == "Asia/Tokyo" and resolved.on_alert == (print,)
    assert resolved.alerts[0].multiplier == 3.0 and resolved.budget_warn_at == (0.25,)


def test_disabled_writes_nothing_at_all(tmp_path: Path) -> None:
    """Sessions, records, hooks, budgets, alerts and the state file: not one file appears."""
    work = tmp_path / "work"
    work.mkdir()
    script = (
        "import tokenmeter\n"
        "tokenmeter.configure(sinks=['sqlite', 'jsonl', 'markdown'], state_file='state.md',\n"
        "    budgets=[{'limit_usd': 0.001, 'on_exceed': 'warn'}],\n"
        "    alerts=[{'rule': 'call_tokens', 'threshold': 1}])\n"
        "tokenmeter.instrument()\n"
        "with tokenmeter.session('job'):\n"
        "    tokenmeter.record('openai', 'gpt-4o', 1000, 500)\n"
        "tokenmeter.record('openai', 'gpt-4o', 1000, 500)\n"
        "assert tokenmeter.flush(5)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "TOKENMETER_DISABLED": "1"}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=work, timeout=60)
    assert list(work.iterdir()) == []
    env["TOKENMETER_DISABLED"] = "0"  # the same script does write when enabled
    subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=work, timeout=60)
    assert {p.name for p in work.iterdir()} == {".tokenmeter", "state.md"}
    assert {p.name for p in (work / ".tokenmeter").iterdir()} >= {
        "usage.db",
        "usage.jsonl",
        "journal",
        "alerts.jsonl",
        "budgets.db",
    }


def test_the_providers_setting_chooses_what_instrument_patches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKENMETER_PROVIDERS", "anthropic, gemini")  # gemini: both its SDKs
    chosen = ("anthropic", "google-genai", "google-generativeai")
    assert load_settings(cwd=tmp_path).providers == chosen
    monkeypatch.setenv("TOKENMETER_PROVIDERS", "anthropic, google-genai")
    assert load_settings(cwd=tmp_path).providers == chosen[:2]
    done = tokenmeter.instrument()
    try:
        assert set(done.providers) <= set(chosen[:2]) and done.providers
    finally:
        done.uninstrument()
    monkeypatch.setenv("TOKENMETER_PROVIDERS", "openai,cohere")
    with pytest.raises(ValueError) as excinfo:
        load_settings(cwd=tmp_path)
    assert "'providers' from TOKENMETER_PROVIDERS: unknown provider 'cohere'" in (
        one_line_value_error(excinfo)
    )


def test_budgets_apply_when_the_tokenizer_loader_cannot_start(tmp_path: Path) -> None:
    """Budgets start loading the tokenizers in a thread: one that could not start (a container's
    pids limit: "can't start new thread") raised RuntimeError out of the application's wrap(),
    instrument() and configure(budgets=...). The preload is only an early start: the budgets
    apply, and the tokenizer is loaded when an estimate needs it."""
    script = (
        "import threading, openai, tokenmeter\n"
        "from tokenmeter import _runtime\n"
        "start = threading.Thread.start\n"
        "def start_or_refuse(thread):\n"
        "    if thread.name == 'tokenmeter-tokenizer':\n"
        '        raise RuntimeError("can\'t start new thread")\n'
        "    start(thread)\n"
        "threading.Thread.start = start_or_refuse\n"
        "tokenmeter.wrap(openai.OpenAI(api_key='sk-test'))\n"
        "tokenmeter.instrument(['openai'])\n"
        "tokenmeter.configure(budgets=[{'name': 'daily', 'limit_usd': 10, 'period': 'day'}])\n"
        "print([b.name for b in _runtime.settings().budgets])\n"
        "print(tokenmeter.estimate('gpt-4o', text='hello world').input_tokens)\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "TOKENMETER_DIR": str(tmp_path / "tm"),
        "TOKENMETER_BUDGETS": '[{"limit_usd": 5, "period": "day"}]',
    }
    done = run_python("-c", script, env=env, cwd=tmp_path)
    assert done.stdout.splitlines() == ["['daily']", "2"]
