"""``tokenmeter alerts``: lists what the alert sink wrote, ``--since`` filters, bad lines count."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tokenmeter
from tokenmeter.sinks import InMemorySink

from .conftest import RunCli


@pytest.fixture
def alerts_dir(tmp_path: Path) -> Path:
    """Alerts written by tokenmeter itself: three calls over an absolute threshold."""
    directory = tmp_path / "tm"
    tokenmeter.configure(
        sinks=[InMemorySink()],
        directory=directory,
        alerts=[{"rule": "call_tokens", "threshold": 5000, "cooldown_s": 0}],
    )
    for day in (1, 2, 3):
        tokenmeter.record("openai", "gpt-4o", 6000, 0, timestamp=f"2026-11-0{day}T10:00:00Z")
    assert tokenmeter.flush(5)
    return directory


def test_lists_every_alert(cli: RunCli, alerts_dir: Path) -> None:
    code, out, err = cli("alerts", "--source", str(alerts_dir))
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split() == ["TIME", "RULE", "SCOPE", "OBSERVED", "BASELINE", "THRESHOLD"]
    assert [line.split()[:4] for line in lines[1:4]] == [
        [f"2026-11-0{day}", "10:00:00", "call_tokens", "model=gpt-4o"] for day in (1, 2, 3)
    ]
    assert lines[-1] == "3 alert(s)"


def test_since_and_json(cli: RunCli, alerts_dir: Path) -> None:
    code, out, _ = cli(
        "alerts",
        "--source",
        str(alerts_dir / "alerts.jsonl"),
        "--since",
        "2026-11-02",
        "--format",
        "json",
    )
    assert code == 0
    items = [json.loads(line) for line in out.splitlines()]
    assert [item["time"][:10] for item in items] == ["2026-11-02", "2026-11-03"]
    assert {item["observed"] for item in items} == {6000}


def test_bad_lines_are_skipped_and_counted(cli: RunCli, alerts_dir: Path) -> None:
    with (alerts_dir / "alerts.jsonl").open("a") as handle:
        handle.write("{torn\n")
    code, out, err = cli("alerts", "--source", str(alerts_dir))
    assert code == 0 and "3 alert(s)" in out
    assert "skipped 1 unreadable line" in err


def test_no_file_yet_is_not_an_error(cli: RunCli, tmp_path: Path) -> None:
    code, out, err = cli("alerts", "--source", str(tmp_path))
    assert (code, out) == (0, "") and "does not exist yet" in err


def test_the_default_is_the_configured_directory(
    cli: RunCli, alerts_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKENMETER_DIR", str(alerts_dir))
    code, out, _ = cli("alerts", "--since", "2026-11-03")
    assert code == 0 and out.splitlines()[-1] == "1 alert(s)"


def test_a_bad_since_is_a_usage_error(cli: RunCli) -> None:
    code, _, err = cli("alerts", "--since", "yesterday-ish")
    assert code == 2 and "bad date" in err
