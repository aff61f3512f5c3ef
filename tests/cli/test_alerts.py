"""``tokenmeter alerts``: lists what the alert sink wrote, ``--since`` filters, bad lines count."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tokenmeter
from tokenmeter.sinks import InMemorySink

from .conftest import RECORDS, SESSIONS, RunCli, peak_python_memory, write_jsonl, write_sqlite


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


def test_json_carries_the_exact_text_into_a_pipe(cli: RunCli, tmp_path: Path) -> None:
    """The table shows a bidi override as U+FFFD; JSON, a machine format like CSV, keeps the
    scope as written (control characters are escaped by JSON itself)."""
    scope = "team=\u202ecba\x1b[2J"
    line = {"time": "2026-11-01T10:00:00.000Z", "rule": "budget", "scope": scope}
    (tmp_path / "alerts.jsonl").write_text(json.dumps(line) + "\n")
    code, out, _ = cli("alerts", "--source", str(tmp_path), "--format", "json")
    assert code == 0 and json.loads(out)["scope"] == scope and "\x1b" not in out
    code, out, _ = cli("alerts", "--source", str(tmp_path))
    assert code == 0 and "team=\ufffdcba\ufffd[2J" in out


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


def test_a_bad_setting_is_a_usage_error(cli: RunCli, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad setting (where the default directory comes from) exited 1 here, 2 in every reader
    of the usage data."""
    monkeypatch.setenv("TOKENMETER_BUDGETS", '[{"limit_usd": 5, "period": "fortnight"}]')
    code, out, err = cli("alerts")
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert err.startswith("tokenmeter: error: tokenmeter setting 'budgets' from TOKENMETER_BUDGETS")


def test_a_bad_since_is_a_usage_error(cli: RunCli) -> None:
    code, _, err = cli("alerts", "--since", "yesterday-ish")
    assert code == 2 and "bad date" in err


def _append(alerts_dir: Path, *lines: str) -> None:
    with (alerts_dir / "alerts.jsonl").open("a") as handle:
        handle.writelines(line + "\n" for line in lines)


GOOD = '{"time": "2026-12-01T09:00:00.000Z", "rule": "call_cost", "scope": "s", "observed": 2}'


@pytest.mark.parametrize(
    "line",
    [
        GOOD.replace('"observed": 2', '"observed": NaN'),
        GOOD.replace('"observed": 2', '"observed": 2, "threshold": Infinity'),
        GOOD.replace('"observed": 2', '"observed": 2, "baseline": -Infinity'),
        GOOD.replace('"observed": 2', '"observed": 1e999'),
        GOOD.replace('"observed": 2', '"observed": 2, "extra": [1e400]'),
    ],
    ids=["nan", "infinity", "minus-infinity", "overflowing-float", "overflowing-extra"],
)
def test_json_output_is_json_without_nan_or_infinity(
    cli: RunCli, alerts_dir: Path, line: str
) -> None:
    _append(alerts_dir, line)
    code, out, err = cli("alerts", "--source", str(alerts_dir), "--format", "json")
    assert code == 0
    strict = [json.loads(text, parse_constant=pytest.fail) for text in out.splitlines()]
    assert len(strict) == 3
    assert "skipped 1 unreadable line" in err


@pytest.mark.parametrize(
    "replace",
    [
        ('"rule": "call_cost"', '"rule": 5'),
        ('"scope": "s"', '"scope": ["x"]'),
        ('"observed": 2', '"observed": "abc"'),
        ('"observed": 2', '"observed": true'),
        ('"observed": 2', '"observed": 2, "baseline": {"a": 1}'),
        ('"observed": 2', '"observed": 2, "threshold": [1]'),
        ('"observed": 2', '"observed": 2, "message": 7'),
        ('"observed": 2', '"observed": 1' + "0" * 400),
    ],
    ids=[
        "rule",
        "scope",
        "observed",
        "observed-bool",
        "baseline",
        "threshold",
        "message",
        "huge-int",
    ],
)
def test_lines_of_the_wrong_types_are_skipped_and_counted(
    cli: RunCli, alerts_dir: Path, replace: tuple[str, str]
) -> None:
    assert replace[0] in GOOD
    _append(alerts_dir, GOOD.replace(*replace))
    code, out, err = cli("alerts", "--source", str(alerts_dir))
    assert code == 0 and out.splitlines()[-1] == "3 alert(s)"
    assert "skipped 1 unreadable line" in err
    code, out, err = cli("alerts", "--source", str(alerts_dir), "--format", "json")
    assert code == 0 and len(out.splitlines()) == 3
    assert "skipped 1 unreadable line" in err


def test_an_alert_without_a_scope_or_numbers_is_listed(cli: RunCli, alerts_dir: Path) -> None:
    _append(alerts_dir, '{"time": "2026-12-04T09:00:00.000Z", "rule": "budget", "scope": null}')
    code, out, err = cli("alerts", "--source", str(alerts_dir))
    assert code == 0 and err == ""
    assert out.splitlines()[-2].split() == ["2026-12-04", "09:00:00", "budget", "-", "-", "-"]


def test_a_long_scope_is_shown_whole_or_shortened_in_the_middle(
    cli: RunCli, alerts_dir: Path
) -> None:
    """Scopes were cut at 60 characters with no mark: every budget warning lost its period's
    start ("... per day from 2026-12-0"), and two budgets' warnings could print the same."""
    budget = "budget:acme-daily (tag:customer=acme, per day from 2026-12-06T00:00:00+00:00)"
    session = "session=" + "nightly-evaluation-" * 20 + "run-42"
    for scope in (budget, session):
        line = {"time": "2026-12-06T10:55:06.531Z", "rule": "budget_50pct", "scope": scope}
        _append(alerts_dir, json.dumps(line))
    code, out, err = cli("alerts", "--source", str(alerts_dir))
    assert code == 0 and err == ""
    shown_budget, shown_session = out.splitlines()[-3:-1]
    assert budget in shown_budget
    assert "session=nightly-evaluation-" in shown_session and "-run-42 " in shown_session
    assert shown_session.count("…") == 1 and len(shown_session) < len(session)


def test_a_long_rule_is_shortened_so_rows_keep_their_width(cli: RunCli, alerts_dir: Path) -> None:
    """One alerts.jsonl line whose rule was 900,000 characters (under the line cap: read) padded
    every row to that width: 101 alerts of a 0.9 MB file printed 92 MB. The rule is shortened in
    the middle like the scope beside it."""
    rule = "foreign-rule-" + "r" * 100_000 + "-end"
    _append(alerts_dir, json.dumps({"time": "2026-12-05T10:00:00.000Z", "rule": rule}))
    code, out, err = cli("alerts", "--source", str(alerts_dir))
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[-1] == "4 alert(s)"
    assert max(len(line) for line in lines) < 200
    shown = lines[-2].split()[2]
    assert shown.startswith("foreign-rule-") and shown.endswith("-end") and "…" in shown
    assert [line.split()[2] for line in lines[1:4]] == ["call_tokens"] * 3


def test_an_over_long_line_is_skipped_in_bounded_memory(cli: RunCli, alerts_dir: Path) -> None:
    """Read as the report reads JSONL: at most ``MAX_LINE_BYTES`` of a line is held."""
    mib = 1 << 20
    with (alerts_dir / "alerts.jsonl").open("ab") as handle:
        handle.write(b'{"time": "2026-12-01T00:00:00.000Z", "rule": "x", "message": "')
        for _ in range(50):
            handle.write(b"a" * mib)
        handle.write(b'"}\n')
    _append(alerts_dir, GOOD)
    results: list[tuple[int, str, str]] = []
    peak = peak_python_memory(lambda: results.append(cli("alerts", "--source", str(alerts_dir))))
    code, out, err = results[0]
    assert code == 0 and out.splitlines()[-1] == "4 alert(s)"
    assert "skipped 1 unreadable line" in err
    assert peak < 16 * mib, f"held {peak / mib:.1f} MiB reading a 50 MiB line"


def test_a_source_that_is_not_an_alerts_file_is_an_error(cli: RunCli, tmp_path: Path) -> None:
    """``alerts --source usage.db`` (as every other command takes it) listed "0 alert(s)" with
    "skipped 60 unreadable line(s)", exit 0: a SQLite database or a file of usage records is
    refused in one line."""
    database = write_sqlite(tmp_path / "usage.db", RECORDS, SESSIONS)
    records = write_jsonl(tmp_path / "usage.jsonl", RECORDS)
    for path, why in [
        (database, "it is a SQLite database"),
        (records, "its first line is a usage record"),
    ]:
        code, out, err = cli("alerts", "--source", str(path))
        assert (code, out) == (1, "")
        assert err == (
            f"tokenmeter: error: {path} is not an alerts file ({why}): pass the alerts.jsonl "
            "beside the data, or the directory holding it\n"
        )


def test_a_postgresql_source_is_refused_without_its_password(
    cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``alerts --source`` given the team ledger's URL or keyword DSN, as every other command
    takes it, printed "no alerts: postgresql:/reader:Hunter2Secret@db.internal:5432/llm_usage
    does not exist yet", exit 0: alerts are not in PostgreSQL, and the password is never shown."""
    monkeypatch.chdir(tmp_path)
    for source in (
        "postgresql://reader:Hunter2Secret@db.internal:5432/llm_usage",
        "host=db.internal port=5432 user=reader password=Hunter2Secret dbname=llm_usage",
    ):
        code, out, err = cli("alerts", "--source", source)
        assert (code, out) == (1, "")
        assert err == (
            "tokenmeter: error: alerts are not kept in PostgreSQL "
            "(postgres:llm_usage@db.internal:5432): they are in alerts.jsonl in each process's "
            "tokenmeter directory; give that file or its directory\n"
        )


def test_a_usage_file_whose_first_line_looks_like_an_alert_is_read(
    cli: RunCli, tmp_path: Path
) -> None:
    """Only a file of alerts is refused: a usage file whose first line has an alert's shape (a
    note, files put together) was refused whole, its records unreadable."""
    usage = write_jsonl(tmp_path / "all.jsonl", RECORDS)
    alert = json.dumps({"rule": "nightly-import", "time": "2026-01-01T00:00:00Z"})
    usage.write_text(alert + "\n" + usage.read_text())
    code, out, err = cli("report", "--source", str(usage), "--format", "json")
    assert code == 0, err
    assert json.loads(out)["totals"]["calls"] == len(RECORDS)
    assert json.loads(out)["skipped_lines"] == 1


def test_the_alerts_file_as_a_usage_source_is_an_error(cli: RunCli, alerts_dir: Path) -> None:
    """``report --source alerts.jsonl`` printed "no calls in this period" and a $0.00 total,
    exit 0 (``sessions`` and ``tail`` an empty list), every alert counted as a corrupt line:
    the mirror of ``alerts --source usage.jsonl``, refused in one line."""
    alerts = alerts_dir / "alerts.jsonl"
    for command in ("report", "sessions", "tail"):
        code, out, err = cli(command, "--source", str(alerts))
        assert (code, out) == (1, ""), command
        assert err == (
            f"tokenmeter: error: {alerts} is not a file of usage records (its first line is an "
            "alert): pass the usage.db or usage.jsonl beside it, or the directory holding them "
            "(`tokenmeter alerts` lists the alerts)\n"
        )


def test_an_alerts_file_whose_first_line_is_torn_lists_the_rest(
    cli: RunCli, alerts_dir: Path
) -> None:
    """A first line a writer left torn (or NUL bytes a crash left) made the alerts file "not an
    alerts file": every alert after it hidden, exit 1. It is skipped and counted, as any bad
    line."""
    path = alerts_dir / "alerts.jsonl"
    path.write_bytes(b"\x00" * 40 + b'{"time": "2026-11-0\n' + path.read_bytes())
    code, out, err = cli("alerts", "--source", str(alerts_dir))
    assert code == 0 and out.splitlines()[-1] == "3 alert(s)"
    assert "skipped 1 unreadable line" in err


def test_a_source_name_too_long_for_the_file_system_is_an_error(cli: RunCli) -> None:
    """The check whether ``--source`` names a directory raised the file system's error: a
    traceback, where every other command says it cannot read the source, in one line."""
    name = "a" * 300
    code, out, err = cli("alerts", "--source", name)
    assert (code, out) == (1, "")
    assert err == f"tokenmeter: error: cannot read {name}: File name too long\n"
