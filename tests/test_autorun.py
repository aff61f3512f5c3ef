"""The pieces ``tokenmeter run`` puts into each process (the whole, through real subprocesses, is
in tests/cli/test_run.py): the named implicit session, the attached sink that configure() keeps,
and the per-process totals the run adds up."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

import tokenmeter
from tokenmeter import _runtime, _sessions
from tokenmeter._autorun import RunTotalsSink, read_totals
from tokenmeter.sinks import InMemorySink


def test_the_implicit_session_takes_the_runs_name_id_and_tags(sink: InMemorySink) -> None:
    _sessions.name_implicit_session("nightly", id="run_1", tags={"team": "search"})
    record = tokenmeter.record("openai", "gpt-4o", 10, 5)
    assert (record.session_id, record.session_name, record.tags) == (
        "run_1",
        "nightly",
        {"team": "search"},
    )
    with tokenmeter.session("own") as own:  # the program's own sessions stay its own
        inner = tokenmeter.record("openai", "gpt-4o", 10, 5)
    assert inner.session_id == own.id


def test_the_programs_own_sessions_carry_the_runs_tags(sink: InMemorySink) -> None:
    """They carried none: the run's ``--budget`` (scoped by its tag) and ``--tag`` missed them."""
    _sessions.name_implicit_session("nightly", id="run_1", tags={"tokenmeter_run": "run_1"})
    with tokenmeter.session("own", tags={"job": "7"}), tokenmeter.session("inner"):
        record = tokenmeter.record("openai", "gpt-4o", 10, 5)
    assert record.tags == {"tokenmeter_run": "run_1", "job": "7"}


def test_the_runs_own_tag_wins_over_a_programs_session_and_record(sink: InMemorySink) -> None:
    """A program session or ``record()`` tagged ``tokenmeter_run`` by the program replaced the
    run's id, and escaped the run's ``--budget`` (scoped by that tag); other tags stay theirs."""
    tags = {"tokenmeter_run": "run_1", "team": "search"}
    _sessions.name_implicit_session("nightly", id="run_1", tags=tags, imposed=["tokenmeter_run"])
    with (
        tokenmeter.session("own", tags={"tokenmeter_run": "mine", "team": "a"}) as own,
        tokenmeter.session("inner", tags={"tokenmeter_run": "deeper"}),
    ):
        inner = tokenmeter.record("openai", "gpt-4o", 10, 5)
    by_hand = tokenmeter.record("openai", "gpt-4o", 10, 5, tags={"tokenmeter_run": "mine"})
    assert own.effective_tags == {"tokenmeter_run": "run_1", "team": "a"}
    assert inner.tags == {"tokenmeter_run": "run_1", "team": "a"}
    assert by_hand.tags == {"tokenmeter_run": "run_1", "team": "search"}


def test_naming_the_implicit_session_checks_like_session() -> None:
    with pytest.raises(ValueError, match="tags"):
        _sessions.name_implicit_session("x", tags={"": "v"})


def test_an_attached_sink_survives_configure(tmp_path: Path) -> None:
    attached = InMemorySink()
    _runtime.attach_sink(attached)
    tokenmeter.configure(sinks=[InMemorySink()])  # the program replaces the sinks
    tokenmeter.record("openai", "gpt-4o", 10, 5)
    assert tokenmeter.flush(timeout=10)
    assert len(attached.records) == 1


def test_totals_of_several_processes_add_up_exactly(tmp_path: Path) -> None:
    prices = {"m": {"input_per_mtok": "0.1", "output_per_mtok": "0.2"}}
    tokenmeter.configure(prices=prices)
    records = [tokenmeter.record("openai", "m", 1, 1) for _ in range(3)]
    unpriced = tokenmeter.record("openai", "unknown-model-x", 7, 0)
    first, second = RunTotalsSink(tmp_path), RunTotalsSink(tmp_path)
    first.write(records[:2])
    first.close()
    second.write([records[2], unpriced])
    second.flush()
    models, processes, _, _ = read_totals(tmp_path)
    assert processes == 2
    assert models["m"] == {
        "calls": 3,
        "input_tokens": 3,
        "output_tokens": 3,
        "cost_usd": Decimal("0.0000009"),  # 3 x (0.1 + 0.2) / 1e6, no float drift
        "unpriced_calls": 0,
        "errors": 0,
    }
    assert models["unknown-model-x"]["unpriced_calls"] == 1


def test_totals_are_not_written_once_the_run_is_over(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    totals = RunTotalsSink(gone)
    totals.write([tokenmeter.record("openai", "gpt-4o", 1, 1)])
    totals.close()  # no directory: nothing written, nothing raised
    assert not gone.exists()


def test_a_tag_the_user_gave_under_the_runs_own_name_is_kept() -> None:
    """``tokenmeter run --tag tokenmeter_run=nightly``: the run's id replaced the user's value
    without a word; it takes the next free name, as a run inside another does."""
    from tokenmeter._autorun import run_tags

    assert run_tags("run_1", {"tokenmeter_run": "nightly"}) == {
        "tokenmeter_run": "nightly",
        "tokenmeter_run.2": "run_1",
    }
