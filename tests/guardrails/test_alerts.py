"""Usage alerts: rolling baselines, thresholds, cooldown, and every delivery (logger, JSONL,
callbacks), computed off the caller's thread. Times come from the records' own timestamps."""

from __future__ import annotations

import contextvars
import json
import logging
import os
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import one_line_value_error, returns, wait_for

import tokenmeter
from tokenmeter.cli._alerts import read_alerts
from tokenmeter.guardrails._alerts import Alert
from tokenmeter.sinks import InMemorySink

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


class Collect:
    def __init__(self) -> None:
        self.alerts: list[Alert] = []
        self.threads: set[str] = set()

    def __call__(self, alert: Alert) -> None:
        self.alerts.append(alert)
        self.threads.add(threading.current_thread().name)


def setup(tmp_path: Path, rules: list[Any]) -> Collect:
    seen = Collect()
    tokenmeter.configure(
        sinks=[InMemorySink()], directory=tmp_path / "tm", alerts=rules, on_alert=seen
    )
    return seen


def call(tokens: int, minutes: float, model: str = "gpt-4o") -> None:
    tokenmeter.record("openai", model, tokens, 0, timestamp=T0 + timedelta(minutes=minutes))


def test_a_call_far_above_its_models_baseline_alerts_everywhere(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seen = setup(tmp_path, [{"rule": "call_tokens", "multiplier": 3, "warmup": 5}])
    with caplog.at_level(logging.WARNING, logger="tokenmeter"):
        for i in range(5):
            call(1000, i)
        call(2900, 5)  # under 3x the baseline
        call(10_000, 6, model="gpt-4o-mini")  # another model: no baseline yet
        big = tokenmeter.record("openai", "gpt-4o", 9000, 0, timestamp=T0 + timedelta(minutes=7))
        assert tokenmeter.flush(5)
    (alert,) = seen.alerts
    assert (alert.rule, alert.scope, alert.observed, alert.record_id) == (
        "call_tokens",
        "model=gpt-4o",
        9000.0,
        big.id,
    )
    assert alert.baseline is not None and 1000 < alert.baseline < 1500
    assert alert.threshold == pytest.approx(3 * alert.baseline)
    assert threading.current_thread().name not in seen.threads  # judged on a writer thread
    assert any("tokenmeter alert: high usage" in r.getMessage() for r in caplog.records)
    (line,) = (tmp_path / "tm" / "alerts.jsonl").read_text().splitlines()
    stored = json.loads(line)
    assert list(stored)[:8] == [
        "time",
        "rule",
        "scope",
        "observed",
        "baseline",
        "threshold",
        "record_id",
        "session_id",
    ]
    assert stored["time"] == "2026-12-01T09:07:00.000Z" and stored["record_id"] == big.id


def test_an_alert_is_not_repeated_within_its_cooldown(tmp_path: Path) -> None:
    seen = setup(tmp_path, [{"rule": "call_tokens", "threshold": 5000, "cooldown_s": 600}])
    call(6000, 0)
    call(6000, 5)  # 5 minutes later: same rule and scope, still cooling down
    call(6000, 5, model="gpt-4o-mini")  # another scope
    call(6000, 11)  # cooldown over
    assert tokenmeter.flush(5)
    assert [(a.scope, a.time.minute) for a in seen.alerts] == [
        ("model=gpt-4o", 0),
        ("model=gpt-4o-mini", 5),
        ("model=gpt-4o", 11),
    ]


@pytest.mark.parametrize("kind", ["directory", "FIFO"])
def test_alerts_alerts_jsonl_refused_are_written_once_it_takes_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    """alerts.jsonl unwritable (its disk full, a directory in its place): each alert was lost,
    with an error line of its own. They are kept, and written, in order, once it can be. A FIFO
    there (made for a log shipper) held the alert writer for ever, reading it: no alert was
    given, and flush() never returned. It is refused as a directory is."""
    seen = setup(tmp_path, [{"rule": "call_tokens", "threshold": 5000, "cooldown_s": 0}])
    path = tmp_path / "tm" / "alerts.jsonl"
    path.parent.mkdir()
    path.mkdir() if kind == "directory" else os.mkfifo(path)
    with caplog.at_level(logging.ERROR, logger="tokenmeter"):
        for minute in range(3):
            call(6000, minute)
            assert tokenmeter.flush(5)
    assert len(seen.alerts) == 3
    (error,) = [r.getMessage() for r in caplog.records if str(path) in r.getMessage()]
    assert kind in error.replace(str(path), "")  # says what is there
    path.rmdir() if kind == "directory" else path.unlink()
    call(6000, 3)
    assert tokenmeter.flush(5)
    assert [a["time"][14:16] for a in read_alerts(path)[0]] == ["00", "01", "02", "03"]


def test_alerts_jsonl_refused_keeps_its_alerts_across_a_configure(tmp_path: Path) -> None:
    """Every configure() made a new alert sink and closed the old one, dropping the alerts
    alerts.jsonl had refused: 1 line of 2 once it took lines again, after a configure() that
    changed nothing about alerts (exit_timeout)."""
    setup(tmp_path, [{"rule": "call_tokens", "threshold": 5000, "cooldown_s": 0}])
    path = tmp_path / "tm" / "alerts.jsonl"
    path.mkdir(parents=True)
    call(6000, 0)
    assert tokenmeter.flush(5)
    tokenmeter.configure(exit_timeout=5)
    path.rmdir()
    call(6000, 1)
    assert tokenmeter.flush(5)
    assert [a["time"][14:16] for a in read_alerts(path)[0]] == ["00", "01"]


def test_an_alert_dated_in_the_future_does_not_silence_its_rule(tmp_path: Path) -> None:
    """One line of alerts.jsonl dated ahead (a clock set wrong, a record backfilled with a
    future timestamp, a hand edit) kept its rule and scope cooling down until that date: for a
    line of year 9999, silenced for good. A record only cools down near the last alert's time,
    before it as after (threads' records arrive a little out of order)."""
    (tmp_path / "tm").mkdir()
    ahead = {"time": "9999-12-31T00:00:00.000Z", "rule": "call_tokens", "scope": "model=gpt-4o"}
    (tmp_path / "tm" / "alerts.jsonl").write_text(json.dumps(ahead) + "\n")
    seen = setup(tmp_path, [{"rule": "call_tokens", "threshold": 5000, "cooldown_s": 600}])
    call(6000, 5)
    call(6000, 4)  # a minute before the alert (another thread's record): still cooling down
    call(6000, 16)  # 11 minutes after: over
    assert tokenmeter.flush(5)
    assert [a.time.minute for a in seen.alerts] == [5, 16]


def test_an_alert_message_escapes_the_model_name_a_server_chose(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A response naming its model ``gpt-4o ESC]0;... BEL \\n 2026-12-06 ERROR ...`` had the
    alert logged as two lines, the second a forged ERROR line, with the terminal escape raw (and
    so in the message handed to the callbacks). The name is escaped as the "no price known"
    warning has it; the scope keeps it as recorded."""
    model = "gpt-4o\x1b]0;pwned\x07\n2026-12-06 ERROR payment service down"
    seen = setup(tmp_path, [{"rule": "call_tokens", "threshold": 5000}])
    with caplog.at_level(logging.WARNING, logger="tokenmeter"):
        call(6000, 0, model=model)
        assert tokenmeter.flush(5)
    (alert,) = seen.alerts
    assert alert.scope == f"model={model}"
    assert f"for model={model!r} exceeds 5,000 " in alert.message
    (logged,) = [r.getMessage() for r in caplog.records if "tokenmeter alert" in r.getMessage()]
    assert logged == f"tokenmeter alert: {alert.message}" and logged.isprintable()


def test_an_alert_message_cuts_a_long_model_name_and_says_so(tmp_path: Path) -> None:
    """A 402-character name made a 280-character message cut inside the name's quotes, with
    nothing to say so: the name's repr is cut at 200 characters, ending in an ellipsis."""
    model = "m" * 402
    seen = setup(tmp_path, [{"rule": "call_tokens", "threshold": 5000}])
    call(6000, 0, model=model)
    assert tokenmeter.flush(5)
    (alert,) = seen.alerts
    shown = alert.message.split("for model=", 1)[1].split(" exceeds ", 1)[0]
    assert shown == "'" + "m" * 198 + "…"
    assert alert.scope == f"model={model}"


def test_call_cost_threshold(tmp_path: Path) -> None:
    seen = setup(tmp_path, [{"rule": "call_cost", "threshold": 0.01}])
    call(1000, 0)  # $0.0025
    call(5000, 1)  # $0.0125
    assert tokenmeter.flush(5)
    assert [(a.rule, a.observed) for a in seen.alerts] == [("call_cost", pytest.approx(0.0125))]


def test_a_session_costing_a_multiple_of_its_names_baseline(tmp_path: Path) -> None:
    seen = setup(tmp_path, [{"rule": "session_cost", "multiplier": 2, "warmup": 3}])
    for i in range(3):
        with tokenmeter.session("nightly"):
            call(1000, i)
    with tokenmeter.session("other"):  # its own baseline: not warmed up
        call(50_000, 4)
    with tokenmeter.session("nightly") as heavy:
        call(1000, 5)
        with tokenmeter.session("step"):  # nested calls count for the session
            call(4000, 6)
    assert tokenmeter.flush(5)
    (alert,) = seen.alerts
    assert (alert.rule, alert.scope, alert.session_id) == (
        "session_cost",
        "session=nightly",
        heavy.id,
    )
    assert alert.observed == pytest.approx(0.0125)


def test_a_session_with_late_calls_is_one_sample_at_its_latest_total(tmp_path: Path) -> None:
    """A session is handed to the sinks again for each call recorded after it ended (a stream
    read after its block, pool work that outlives it): the session_cost rule took each as a new
    sample. Four identical sessions of $0.01 (one call in the block, three late) made 16
    samples of $0.0025 to $0.01 and 8 false alerts; now 4 samples and none. A session whose
    late calls take it over the limit alerts once, with its total then."""
    rule = {"rule": "session_cost", "multiplier": 1.6, "warmup": 3, "cooldown_s": 0}
    seen = setup(tmp_path, [rule])

    def nightly(late_calls: int) -> contextvars.Context:
        with tokenmeter.session("nightly"):
            call(1000, 0)  # $0.0025
            late = contextvars.copy_context()  # work started in the block, run after it
        for _ in range(late_calls):
            late.run(call, 1000, 0)
            assert tokenmeter.flush(5)  # each handed to the alert sink on its own
        return late

    for _ in range(4):
        nightly(late_calls=3)
    assert seen.alerts == []
    from tokenmeter.guardrails import _alerts

    sink = _alerts._active
    assert sink is not None
    [baseline] = sink._baselines.values()
    assert (baseline.count, baseline.mean) == (4, pytest.approx(0.01))
    heavy = nightly(late_calls=6)  # $0.0175, over 1.6 x $0.01 (at its 7th call)
    heavy.run(call, 1000, 0)  # $0.02: the same session, alerted already
    assert tokenmeter.flush(5)
    [alert] = seen.alerts
    assert (alert.rule, alert.observed, alert.threshold) == (
        "session_cost",
        pytest.approx(0.0175),
        pytest.approx(0.016),
    )
    assert (baseline.count, baseline.mean) == (5, pytest.approx(0.01 + (0.02 - 0.01) * 2 / 51))


def test_the_baselines_kept_per_session_name_or_model_stay_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server naming its sessions after its requests (or a gateway passing its users' model
    names on) kept a baseline, and a cooldown, for every name it ever saw: memory grew without
    end. Past a bound (10,000; 20 here) they start over."""
    from tokenmeter.guardrails import _alerts

    monkeypatch.setattr(_alerts, "_MAX_SCOPES", 20, raising=False)
    rules = [
        {"rule": "session_cost", "threshold": 0.001},
        {"rule": "call_tokens", "threshold": 1, "cooldown_s": 0},
    ]
    seen = setup(tmp_path, rules)
    for i in range(100):
        with tokenmeter.session(f"request-{i}"):
            call(1000, i)  # $0.0025
        call(1000, i, model=f"model-{i}")
    assert tokenmeter.flush(5)
    assert len(seen.alerts) == 300  # each name its own scope: none cooling down another
    sink = _alerts._active
    assert sink is not None and len(sink._baselines) <= 20 and len(sink._last) <= 20


def test_spend_rate_over_the_trailing_hour(tmp_path: Path) -> None:
    seen = setup(tmp_path, [{"rule": "spend_rate", "threshold": 0.02, "cooldown_s": 3600}])
    for minute in range(0, 120, 10):  # $0.0025 every 10 minutes: $0.015 an hour
        call(1000, minute)
    assert tokenmeter.flush(5) and seen.alerts == []
    for minute in range(120, 125):  # a burst
        call(1000, minute)
    assert tokenmeter.flush(5)
    (alert,) = seen.alerts
    assert alert.rule == "spend_rate" and alert.observed > 0.02


def test_a_configure_keeps_the_baselines_and_the_hour_of_the_rules_it_leaves_alone(
    tmp_path: Path,
) -> None:
    """Every configure() (a reload of budgets or hooks, an exit_timeout) made a new alert sink:
    the baselines and the trailing hour of spend started afresh, and a process reloading more
    often than ``warmup`` calls never alerted. Here: no alert at all where two were due. A rule
    changed starts afresh, and the new callbacks take over."""
    seen = setup(
        tmp_path,
        [
            {"rule": "call_tokens", "multiplier": 3, "warmup": 5},
            {"rule": "spend_rate", "threshold": 0.5},
        ],
    )
    for minute in range(10):
        call(1000, minute)  # a baseline of 1,000 tokens; $0.025 in the hour
    assert tokenmeter.flush(5)
    tokenmeter.configure(exit_timeout=5)
    call(120_000, 10)  # 120 times the baseline; $0.325 in the hour
    assert tokenmeter.flush(5)
    tokenmeter.configure(on_session_end=[])
    call(120_000, 11)  # $0.625 in the hour
    assert tokenmeter.flush(5)
    assert [(a.rule, a.time.minute) for a in seen.alerts] == [
        ("call_tokens", 10),
        ("spend_rate", 11),
    ]
    other = Collect()
    changed = [
        {"rule": "call_tokens", "multiplier": 4, "warmup": 5},  # afresh: 0 samples of 5
        {"rule": "call_tokens", "threshold": 500_000},
    ]
    tokenmeter.configure(alerts=changed, on_alert=other)
    call(1_000_000, 20)
    assert tokenmeter.flush(5)
    (alert,) = other.alerts
    assert (alert.threshold, alert.baseline) == (500_000, None)
    assert len(seen.alerts) == 2


def test_a_configure_does_not_wait_for_a_running_callback(tmp_path: Path) -> None:
    """configure() replaced the alert sink and waited for its writer, inside a slow on_alert
    callback (a post to a chat), up to exit_timeout: a reload of hooks took as long as the
    callback. The alert sink goes on now, with the rules and callbacks given."""
    started, release = threading.Event(), threading.Event()

    def slow(alert: Alert) -> None:
        started.set()
        release.wait(60)

    tokenmeter.configure(
        sinks=[InMemorySink()],
        directory=tmp_path / "tm",
        alerts=[{"rule": "call_tokens", "threshold": 1}],
        on_alert=slow,
        exit_timeout=60,
    )
    call(1000, 0)
    try:
        wait_for(started.is_set, "the on_alert callback running")
        reload = returns(
            lambda: tokenmeter.configure(on_session_end=[]),
            "configure() waited for the running on_alert callback",
            limit=20,
        )
        assert reload == []
    finally:
        release.set()
    assert tokenmeter.flush(10)


def test_spend_rate_counts_only_the_trailing_hour_of_backfilled_records(tmp_path: Path) -> None:
    """Records made with an earlier timestamp (a backfill of the morning's calls) were added to
    the hour the newest records are in: $0.0075 an hour at 08:00 and at 12:00 alerted as
    $0.0225 "in the trailing hour" of 08:00, where $0.0075 was spent."""
    seen = setup(tmp_path, [{"rule": "spend_rate", "threshold": 0.007}])
    call(1000, 240)  # 13:00, then 13:01: $0.005 in the hour
    call(1000, 241)
    call(1000, 0)  # 09:00 and 09:01, told afterwards
    call(1000, 1)
    call(1000, 239.5)  # 12:59:30, a little out of order: in the trailing hour
    assert tokenmeter.flush(5)
    (alert,) = seen.alerts
    assert alert.observed == pytest.approx(0.0075) and alert.time.minute == 59


def test_spend_rate_still_judges_after_a_record_dated_ahead_of_the_clock(tmp_path: Path) -> None:
    """One record dated a year ahead (a clock stepped back since, a wrong timestamp given to
    record()) ended the trailing hour there: every later record was 'a backfill' and the rule
    was silent for the rest of the process ($1.50 in minutes over a $1 threshold: no alert)."""
    seen = setup(tmp_path, [{"rule": "spend_rate", "threshold": 1}])
    now = datetime.now(UTC)
    tokenmeter.record("openai", "gpt-4o", 1000, 0, timestamp=now + timedelta(days=400))
    assert tokenmeter.flush(5)
    for _ in range(3):
        tokenmeter.record("openai", "gpt-4o", 200_000, 0, timestamp=now)  # $0.50 each
    assert tokenmeter.flush(5)
    (alert,) = seen.alerts
    assert alert.rule == "spend_rate" and alert.observed == pytest.approx(1.5)


def test_spend_rate_keeps_the_trailing_hour_in_seconds_not_records(tmp_path: Path) -> None:
    """spend_rate kept every record of the trailing hour (its time and cost): memory grew with
    the call rate, about 136 bytes a call, 490 MB at 1,000 calls a second. The hour is kept by
    the second, its sums the same."""
    from tokenmeter.guardrails import _alerts

    seen = setup(tmp_path, [{"rule": "spend_rate", "threshold": 0.02}])
    for index in range(3_000):  # 3,000 calls in 30 seconds, $0.000025 each: $0.075
        tokenmeter.record(
            "openai", "gpt-4o", 10, 0, timestamp=T0 + timedelta(milliseconds=10 * index)
        )
    assert tokenmeter.flush(30)  # 3,000 records: room for a busy machine, as bulk flushes have
    sink = _alerts._active
    assert sink is not None and len(sink._hour) <= 30
    assert sink._hour_sum == pytest.approx(0.075)
    (alert,) = seen.alerts  # as the hour passed the threshold (within a call), then cooling
    assert alert.observed == pytest.approx(0.02, abs=0.000025)


def test_two_rules_of_one_kind_count_each_record_once(tmp_path: Path) -> None:
    """Rules of one kind shared their state, and each added the record to it: with two
    spend_rate rules $0.01275 spent in an hour alerted as $0.0255 over a $0.013 threshold, and
    with two call_tokens rules a baseline took each call twice (warm after half its warmup)."""
    rules = [
        {"rule": "spend_rate", "threshold": 0.013},
        {"rule": "spend_rate", "multiplier": 2},
        {"rule": "call_tokens", "multiplier": 3, "warmup": 4},
        {"rule": "call_tokens", "threshold": 10**9},
    ]
    seen = setup(tmp_path, rules)
    call(1000, 0)  # $0.0025 each
    call(1000, 1)
    call(3100, 2)  # 3 calls, $0.01275: a baseline of 4 samples is not there yet
    assert tokenmeter.flush(5)
    assert seen.alerts == []
    call(1000, 3)  # $0.01525 in the hour
    call(5000, 4)  # 4 samples in: far above them
    assert tokenmeter.flush(5)
    assert sorted(a.rule for a in seen.alerts) == ["call_tokens", "spend_rate"]


def test_refused_calls_do_not_drag_the_baseline_down(tmp_path: Path, fake: Any) -> None:
    seen = Collect()
    tokenmeter.configure(
        sinks=[InMemorySink()],
        directory=tmp_path / "tm",
        alerts=[{"rule": "call_tokens", "multiplier": 3, "warmup": 2}],
        on_alert=seen,
        budgets=[{"limit_usd": 0, "provider": "openai", "model": "gpt-4o-mini"}],
    )
    tokenmeter.instrument(["openai"])
    call(1000, 0, model="gpt-4o-mini")
    call(1000, 1, model="gpt-4o-mini")
    client = fake.openai_client(max_retries=0)
    for _ in range(20):  # 20 blocked records of 0 tokens for the same model
        with pytest.raises(tokenmeter.BudgetExceeded):
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
    call(2900, 2, model="gpt-4o-mini")  # under 3x a baseline of 1000
    assert tokenmeter.flush(5)
    assert [a for a in seen.alerts if a.rule == "call_tokens"] == []
    assert {a.rule for a in seen.alerts} == {"budget_50pct", "budget_80pct", "budget_100pct"}


def test_failed_calls_that_used_nothing_do_not_drag_the_baseline_down(
    tmp_path: Path, fake: Any, instrumented: None
) -> None:
    """A burst of rate-limited calls (429: no usage, 0 tokens, $0) taught the model's baselines
    zeros, so the next ordinary call alerted as high usage, at 5x its baseline."""
    import openai

    seen = setup(
        tmp_path,
        [
            {"rule": "call_tokens", "multiplier": 3, "warmup": 5},
            {"rule": "call_cost", "multiplier": 3, "warmup": 5},
        ],
    )
    client = fake.openai_client(max_retries=0)

    def ask() -> Any:  # the model the fake's responses name, so errors share its baseline
        return client.chat.completions.create(
            model="gpt-4o-2024-08-06", messages=[{"role": "user", "content": "hi"}]
        )

    for _ in range(5):
        ask()
    fake.fail_next(429, count=40)
    for _ in range(40):
        with pytest.raises(openai.RateLimitError):
            ask()
    ask()  # as the first five
    assert tokenmeter.flush(5)
    assert seen.alerts == []


def test_a_failing_callback_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def broken(alert: Alert) -> None:
        raise RuntimeError("callback bug")

    tokenmeter.configure(
        sinks=[InMemorySink()],
        directory=tmp_path / "tm",
        alerts=[{"rule": "call_tokens", "threshold": 1}],
        on_alert=broken,
    )
    with caplog.at_level(logging.ERROR, logger="tokenmeter"):
        call(1000, 0)
        assert tokenmeter.flush(5)
    assert any("on_alert callback failed" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "tm" / "alerts.jsonl").exists()


def test_a_callback_that_flushes_does_not_wait_on_its_own_writer(tmp_path: Path) -> None:
    """Callbacks run on the alert sink's writer: a flush() there waited for that writer (for
    ever without a timeout, and every other flush meanwhile)."""
    flushed: list[bool] = []

    def flushes(alert: Alert) -> None:
        flushed.append(tokenmeter.flush(2))

    tokenmeter.configure(
        sinks=[InMemorySink()],
        directory=tmp_path / "tm",
        alerts=[{"rule": "call_tokens", "threshold": 1}],
        on_alert=flushes,
    )
    call(1000, 0)
    assert tokenmeter.flush(10)
    assert flushed == [True]


def test_a_callback_that_raises_system_exit_is_logged_like_any_other(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SystemExit on a writer thread ends nothing: it got past the callback guard, and the
    alert sink "failed" on the record and retried it (alerting again once a cooldown is 0)."""

    def exits(alert: Alert) -> None:
        raise SystemExit(3)

    tokenmeter.configure(
        sinks=[InMemorySink()],
        directory=tmp_path / "tm",
        alerts=[{"rule": "call_tokens", "threshold": 1}],
        on_alert=exits,
    )
    with caplog.at_level(logging.ERROR, logger="tokenmeter"):
        call(1000, 0)
        assert tokenmeter.flush(10)
    assert any("on_alert callback failed" in r.getMessage() for r in caplog.records)
    assert not any("sink AlertSink failed" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ([{"rule": "loud"}], "alerts[0].rule"),
        ([{"rule": "call_cost", "multiplier": 0.5}], "alerts[0].multiplier"),
        ([{"rule": "call_cost", "threshold": -1}], "alerts[0].threshold"),
        ([{"rule": "call_cost", "warmup": 2.5}], "alerts[0].warmup"),
        ([{"rule": "call_cost", "multiplier": None}], "give a multiplier, a threshold or both"),
        ([{"rule": "call_cost", "every": 2}], "no such field 'every'"),
        (7, "must be a list of alert rules"),
        # Ints past a float's range (JSON allows them): OverflowError, or later in the writer.
        ([{"rule": "call_cost", "multiplier": 10**400}], "alerts[0].multiplier"),
        ([{"rule": "call_cost", "threshold": 10**400}], "alerts[0].threshold"),
        ([{"rule": "call_cost", "cooldown_s": 10**400}], "alerts[0].cooldown_s"),
        ([{"rule": "call_cost", "window": 10**400}], "alerts[0].window"),
    ],
)
def test_bad_rules_are_a_value_error_naming_the_field(rules: Any, message: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        tokenmeter.configure(alerts=rules)
    assert message in one_line_value_error(excinfo)


def test_read_alerts_skips_and_counts_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "alerts.jsonl"
    good = {"time": "2026-12-01T09:00:00.000Z", "rule": "call_cost", "scope": "s"}
    later = {**good, "time": "2026-12-02T09:00:00.000Z"}
    path.write_text(
        json.dumps(good)
        + "\n{not json\n"
        + json.dumps({"rule": "x"})
        + "\n[1]\n"
        + json.dumps(later)
        + "\n"
    )
    alerts, bad = read_alerts(path)
    assert (len(alerts), bad) == (2, 3)
    alerts, bad = read_alerts(path, since=datetime(2026, 12, 2, tzinfo=UTC))
    assert [a["time"] for a in alerts] == [later["time"]]


RESTARTED = """
import sys
from datetime import datetime, timedelta, timezone
import tokenmeter
tokenmeter.configure(
    sinks=["jsonl"], directory=sys.argv[1],
    alerts=[{"rule": "call_tokens", "threshold": 5000, "cooldown_s": 600}],
)
at = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc) + timedelta(minutes=float(sys.argv[2]))
tokenmeter.record("openai", "gpt-4o", 6000, 0, timestamp=at)
"""


def test_a_restarted_process_keeps_the_cooldowns_of_the_alerts_already_given(
    tmp_path: Path,
) -> None:
    import os
    import subprocess
    import sys

    directory = tmp_path / "tm"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for minutes in ("0", "5", "11"):  # one process each: restarted between the calls
        subprocess.run(
            [sys.executable, "-c", RESTARTED, str(directory), minutes], env=env, check=True
        )
    alerts, bad = read_alerts(directory / "alerts.jsonl")
    assert bad == 0
    assert [a["time"] for a in alerts] == ["2026-12-01T09:00:00.000Z", "2026-12-01T09:11:00.000Z"]


def test_an_alert_dated_ahead_in_alerts_jsonl_does_not_hide_a_running_cooldown(
    tmp_path: Path,
) -> None:
    """A restarted process took the latest time of each (rule, scope) in alerts.jsonl as its
    cooldown: a line dated ahead of the clock (an alert about a record dated ahead) won over
    the alert given a minute ago, whose cooldown was then not kept: the alert came again."""
    now = datetime.now(UTC)
    lines = [
        {"time": (now - timedelta(minutes=1)).isoformat(), "rule": "call_tokens"},
        {"time": (now + timedelta(days=300)).isoformat(), "rule": "call_tokens"},
    ]
    (tmp_path / "tm").mkdir()
    (tmp_path / "tm" / "alerts.jsonl").write_text(
        "".join(json.dumps({**line, "scope": "model=gpt-4o"}) + "\n" for line in lines)
    )
    seen = setup(tmp_path, [{"rule": "call_tokens", "threshold": 100}])  # cooldown 300 s
    tokenmeter.record("openai", "gpt-4o", 1000, 0, timestamp=now)
    assert tokenmeter.flush(5) and seen.alerts == []


def test_a_callback_that_makes_an_llm_call_does_not_alert_about_it(
    tmp_path: Path, fake: Any
) -> None:
    """An on_alert callback that asks a model (to summarise the alert, say) made a call over
    the threshold: that alerted again and called the callback again, a paid loop without end
    once the cooldown is 0 (one more call per cooldown otherwise). The callback's own calls are
    recorded, and not judged."""
    client = fake.openai_client(max_retries=0)
    asked: list[str] = []

    def summarise(alert: Alert) -> None:
        asked.append(alert.scope)
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": alert.message}]
        )

    memory = InMemorySink()
    tokenmeter.configure(
        sinks=[memory],
        directory=tmp_path / "tm",
        alerts=[{"rule": "call_tokens", "threshold": 1, "cooldown_s": 0}],
        on_alert=summarise,
    )
    tokenmeter.instrument(["openai"])
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    for _ in range(5):
        assert tokenmeter.flush(5)
    assert asked == ["model=gpt-4o-2024-08-06"]
    assert [r.request_model for r in memory.records] == ["gpt-4o", "gpt-4o-mini"]
    # The application's own calls go on being judged.
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert tokenmeter.flush(5)
    assert tokenmeter.flush(5)
    assert asked == ["model=gpt-4o-2024-08-06"] * 2


def test_flush_returns_once_the_calls_callbacks_made_are_in_the_sinks(
    tmp_path: Path, fake: Any
) -> None:
    """flush() waits for the on_alert callbacks, but the alert sink's writer is flushed after
    the record sinks': the records of the calls the callbacks made came after those had been
    passed. 5 alerting calls, 5 summarising callbacks, 10 requests sent: flush() answered True
    with 5 records in the sink. A flush takes them in now."""
    client = fake.openai_client(max_retries=0)
    summarised: list[str] = []

    def summarise(alert: Alert) -> None:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": alert.message}]
        )
        summarised.append(alert.scope)

    memory = InMemorySink()
    tokenmeter.configure(
        sinks=[memory],
        directory=tmp_path / "tm",
        alerts=[{"rule": "call_tokens", "threshold": 1, "cooldown_s": 0}],
        on_alert=summarise,
    )
    tokenmeter.instrument(["openai"])
    for _ in range(5):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])

    assert tokenmeter.flush(30)

    assert len(summarised) == 5 and len(fake.requests) == 10
    assert sorted(r.request_model for r in memory.records) == ["gpt-4o"] * 5 + ["gpt-4o-mini"] * 5


class _CountedFlushes(InMemorySink):
    """Counts the sink's own flush() calls (a PostgreSQL commit, an HTTP post in real sinks)."""

    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def test_a_callback_that_makes_no_call_costs_the_sinks_no_second_flush(
    tmp_path: Path, fake: Any
) -> None:
    """Only the records callbacks submit make a flush() go round again: one more round for each
    callback that ran flushed every sink again (a slow sink's flush twice, and a flush(timeout)
    whose records were all written said False)."""
    client = fake.openai_client(max_retries=0)
    seen: list[str] = []
    counted = _CountedFlushes()
    tokenmeter.configure(
        sinks=[counted],
        directory=tmp_path / "tm",
        alerts=[{"rule": "call_tokens", "threshold": 1, "cooldown_s": 0}],
        on_alert=lambda alert: seen.append(alert.scope),
    )
    tokenmeter.instrument(["openai"])
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert tokenmeter.flush(30)
    before = counted.flushes

    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert tokenmeter.flush(30)

    assert len(seen) == 2 and len(counted.records) == 2
    assert counted.flushes - before == 1


def test_flush_waits_for_a_call_a_callback_hands_to_an_older_thread(
    tmp_path: Path, fake: Any
) -> None:
    """A callback that hands its call to a worker thread the application started before (a
    notifier's queue) and waits for it: the record, submitted outside the callback's context,
    made no second round, and flush() said True with 1 of 2 records in a slow sink."""
    import queue

    client = fake.openai_client(max_retries=0)
    jobs: queue.Queue[threading.Event | None] = queue.Queue()

    def worker() -> None:
        while (done := jobs.get()) is not None:
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "summary"}]
            )
            done.set()

    thread = threading.Thread(target=worker)
    thread.start()

    def summarise(alert: Alert) -> None:
        done = threading.Event()
        jobs.put(done)
        done.wait(30)

    class SlowSink(InMemorySink):  # a remote store
        def write(self, records: Any) -> None:
            time.sleep(0.3)
            super().write(records)

    slow = SlowSink()
    tokenmeter.configure(
        sinks=[slow],
        directory=tmp_path / "tm",
        alerts=[{"rule": "call_tokens", "threshold": 1, "cooldown_s": 3600}],
        on_alert=summarise,
    )
    tokenmeter.instrument(["openai"])
    try:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        assert tokenmeter.flush(30)
        # (The worker's call, not the callback's own, alerts in its turn: a summary of it too.)
        assert len(slow.records) == len(fake.requests) >= 2
    finally:
        jobs.put(None)
        thread.join()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_child_forked_while_a_callback_runs_counts_no_callback() -> None:
    """Forked while an alert writer ran callbacks, a child kept the count of callbacks running
    with no writer to bring it back: every flush() there took other threads' records for a
    callback's call and made all its rounds."""
    from tokenmeter.guardrails import _alerts

    _alerts._callbacks_running += 1
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover (the child)
            os._exit(0 if _alerts._callbacks_running == 0 else 1)
    finally:
        _alerts._callbacks_running -= 1
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_flush_ends_while_another_thread_keeps_making_alerting_calls(
    tmp_path: Path, fake: Any
) -> None:
    """Each round of a flush whose writers ran callbacks is followed by another: with another
    thread making a call that alerts, and a callback that makes a call, each time, the rounds
    are bounded and the flush returns."""
    client = fake.openai_client(max_retries=0)
    stop = threading.Event()

    def summarise(alert: Alert) -> None:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": alert.message}]
        )

    def keep_calling() -> None:
        while not stop.is_set():
            client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
            )

    tokenmeter.configure(
        sinks=[InMemorySink()],
        directory=tmp_path / "tm",
        alerts=[{"rule": "call_tokens", "threshold": 1, "cooldown_s": 0}],
        on_alert=summarise,
    )
    tokenmeter.instrument(["openai"])
    caller = threading.Thread(target=keep_calling)
    caller.start()
    try:
        wait_for(lambda: len(fake.requests) > 20, "the other thread's calls")
        assert returns(lambda: tokenmeter.flush(), "flush() went on round after round") == []
    finally:
        stop.set()
        caller.join()


def test_a_budget_warning_about_a_callbacks_own_call_is_not_handed_to_it(
    tmp_path: Path, fake: Any
) -> None:
    """An on_alert callback that summarises the alert with an LLM call in a session of its own
    under a 1-cent budget: its $0.0075 call passed 50 % of that session's budget, a new warning,
    handed to the same callback, which opened a new session and made a new call: one
    application call sent 5,387 requests in 30 s. Such a warning is logged and written, and not
    handed to the callbacks."""
    client = fake.openai_client(max_retries=0)
    asked: list[str] = []

    def summarise(alert: Alert) -> None:
        asked.append(alert.scope)
        if len(asked) > 3:  # a loop: ends here, so the test fails and does not run on
            return
        with tokenmeter.session("alert-summary", budget_usd=0.01):
            client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": alert.message}]
            )

    memory = InMemorySink()
    tokenmeter.configure(sinks=[memory], directory=tmp_path / "tm", on_alert=summarise)
    tokenmeter.instrument(["openai"])
    with tokenmeter.session("job", budget_usd=0.01):  # $0.0075: 75 % of 1 cent
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    for _ in range(5):
        assert tokenmeter.flush(5)
    assert asked == ["session=job"]
    assert len(memory.records) == 2
    written, _ = read_alerts(tmp_path / "tm" / "alerts.jsonl")
    assert [alert["scope"] for alert in written] == ["session=job", "session=alert-summary"]


def test_a_callback_that_hands_its_summary_to_a_pool_does_not_loop(
    tmp_path: Path, fake: Any
) -> None:
    """The docs advise handing slow work to a thread or pool: a summary made there, in a session
    under a budget, warned again, and the warning ran the callback again (40 requests in about
    a second for one application call). The callback's work there is still its own."""
    from concurrent.futures import ThreadPoolExecutor

    client = fake.openai_client(max_retries=0)
    asked: list[str] = []
    pool = ThreadPoolExecutor(2)

    def summarise(message: str) -> None:
        with tokenmeter.session("alert-summary", budget_usd=0.01):
            client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": message}]
            )

    def on_alert(alert: Alert) -> None:
        asked.append(alert.scope)
        if len(asked) <= 3:  # a loop: ends here, so the test fails and does not run on
            pool.submit(summarise, alert.message)

    memory = InMemorySink()
    tokenmeter.configure(sinks=[memory], directory=tmp_path / "tm", on_alert=on_alert)
    tokenmeter.instrument(["openai"])
    with tokenmeter.session("job", budget_usd=0.01):  # $0.0075: 75 % of 1 cent
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    for _ in range(5):
        assert tokenmeter.flush(5)
        pool.shutdown(wait=True)  # the summary submitted meanwhile is made, then flushed
        pool = ThreadPoolExecutor(2)
    assert asked == ["session=job"]
    assert len(memory.records) == 2


def test_a_day_budgets_warnings_reach_the_callback_whoever_crossed_them(
    tmp_path: Path, fake: Any
) -> None:
    """A day's budget warns once a mark a period: the 100 % warning crossed by a callback's
    summary call was held back, and no later call gave it again (the day was spent, $0.03 of
    $0.015, and on_alert never told). Only warnings whose scope can be new at each call (a
    session's) are held back."""
    client = fake.openai_client(max_retries=0)
    rules: list[str] = []

    def on_alert(alert: Alert) -> None:
        rules.append(alert.rule)
        if alert.rule == "budget_50pct":  # summarise the half-way warning
            client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": alert.message}]
            )

    daily = {"name": "daily", "limit_usd": 0.015, "period": "day", "on_exceed": "warn"}
    tokenmeter.configure(
        sinks=[InMemorySink()], directory=tmp_path / "tm", on_alert=on_alert, budgets=[daily]
    )
    tokenmeter.instrument(["openai"])
    for _ in range(3):  # $0.0075 each: the first is half the day's budget
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        assert tokenmeter.flush(5)
    assert tokenmeter.flush(5)
    assert rules == ["budget_50pct", "budget_80pct", "budget_100pct"]
