"""The concurrency bound: many callers racing one budget overshoot it by at most what the calls
in flight cost beyond their estimates. Where the estimate is exact (the fake reports the input
tokens tokenmeter's estimator gives the racers' request, and no output), the bound is zero:
exactly as many calls as fit are made, however the threads and processes interleave and
whatever slices of the budget the processes lease (docs/budgets-and-alerts.md).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from budget_racer import MESSAGES
from helpers import fake_environ, hold_budget

from tokenmeter._estimate import estimate_input
from tokenmeter.guardrails._ledger import SQLiteLedger
from tokenmeter.testing import FakeProvider

HERE = Path(__file__).parent
#: What the budget reserves for each call, and what the fake then reports.
TOKENS = estimate_input("openai", {"model": "gpt-4o", "messages": MESSAGES}).input_tokens
PER_CALL = TOKENS * 2.5e-6  # gpt-4o input: $2.50 per million tokens
OUTPUT_TOKENS = 100
OUTPUT = OUTPUT_TOKENS * 10e-6  # gpt-4o output: $10 per million tokens, unknown before the call


def limit_for(fit: int) -> str:
    """Room for ``fit`` calls and half of one more."""
    return repr(fit * PER_CALL + PER_CALL / 2)


def start_fake(output_tokens: int = 0) -> FakeProvider:
    provider = FakeProvider()
    provider.start()
    provider.set_usage(
        openai={
            "prompt_tokens": TOKENS,
            "completion_tokens": output_tokens,
            "cached_tokens": 0,
            "reasoning_tokens": 0,
        }
    )
    return provider


@pytest.fixture
def exact_fake() -> Iterator[FakeProvider]:
    provider = start_fake()
    yield provider
    provider.stop()


def race(
    fake: FakeProvider, directory: Path, processes: int, threads: int, limit: str
) -> list[dict[str, int]]:
    runners = [
        subprocess.Popen(
            [sys.executable, str(HERE / "budget_racer.py"), str(directory), str(threads), limit],
            env=fake_environ(fake),
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    results = []
    for runner in runners:
        out, _ = runner.communicate(timeout=300)
        assert runner.returncode == 0
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def ledger_row(directory: Path) -> tuple[float, float]:
    with sqlite3.connect(directory / "budgets.db") as conn:
        settled, reserved = conn.execute(
            "SELECT settled_usd, reserved_usd FROM budget_ledger WHERE scope_key LIKE 'race|%'"
        ).fetchone()
    return settled, reserved


@pytest.mark.parametrize(
    ("processes", "threads", "fit"),
    [
        (1, 8, 10),
        (4, 2, 10),
        (4, 8, 10),  # the race: 8 threads in each of 4 processes
        (2, 1, 5),  # too small to slice: every call reserves exactly its estimate
        (2, 1, 60),  # sliced at first, exact near the limit
        (4, 8, 200),
    ],
)
def test_racing_callers_make_exactly_the_calls_that_fit(
    tmp_path: Path, exact_fake: FakeProvider, processes: int, threads: int, fit: int
) -> None:
    results = race(exact_fake, tmp_path / "tm", processes, threads, limit_for(fit))
    assert sum(r["made"] for r in results) == fit  # all of them, and not one more
    assert sum(r["refused"] for r in results) == processes * threads
    assert len(exact_fake.requests) == fit
    settled, reserved = ledger_row(tmp_path / "tm")  # every process gave its slices back at exit
    assert settled == pytest.approx(fit * PER_CALL) and reserved == pytest.approx(0)


def test_the_overshoot_is_at_most_the_calls_in_flight(tmp_path: Path) -> None:
    """Each call costs its estimate plus output the estimate cannot know: the budget is passed
    by at most the output of the calls in flight when it runs out (4 x 8 racers here)."""
    fake = start_fake(OUTPUT_TOKENS)
    try:
        limit = 20 * (PER_CALL + OUTPUT)
        results = race(fake, tmp_path / "tm", 4, 8, repr(limit))
    finally:
        fake.stop()
    made = sum(r["made"] for r in results)
    settled, reserved = ledger_row(tmp_path / "tm")
    assert settled == pytest.approx(made * (PER_CALL + OUTPUT)) and reserved == pytest.approx(0)
    assert settled <= limit + 32 * OUTPUT + 1e-12  # the bound
    assert settled > limit - (PER_CALL + OUTPUT)  # and no call was refused while room was left


@pytest.mark.parametrize("fit", [5, 60])
def test_a_process_gives_its_slice_back_when_its_session_ends(
    tmp_path: Path, exact_fake: FakeProvider, fit: int
) -> None:
    """The edge of leasing: one process takes part of a budget and stays alive, idle; another
    must still be able to make every remaining call."""
    directory = tmp_path / "tm"
    holder = hold_budget(exact_fake, directory, limit_for(fit), 1, "session")
    try:
        [result] = race(exact_fake, directory, 1, 1, limit_for(fit))
        assert result == {"made": fit - 1, "refused": 1}
    finally:
        holder.communicate("\n", timeout=60)
    assert holder.returncode == 0
    assert len(exact_fake.requests) == fit


def test_an_exit_waits_for_a_locked_ledger_no_longer_than_exit_timeout(
    tmp_path: Path, exact_fake: FakeProvider
) -> None:
    """At exit a process gives its unused slices back: with budgets.db write-locked by another
    program it waited SQLite's busy timeout (30 s) before its exit_timeout even began. The
    give-back now has half of exit_timeout (1 s here); the slice stays reserved."""
    directory = tmp_path / "tm"
    holder = hold_budget(exact_fake, directory, limit_for(60), 3, "exit")
    other = sqlite3.connect(directory / "budgets.db", isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        holder.stdin.write("\n")  # type: ignore[union-attr]
        holder.stdin.flush()  # type: ignore[union-attr]
        assert holder.wait(timeout=20) == 0, "the exit waits SQLite's busy timeout"
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert ledger_row(directory)[1] > 0  # not given back: the ledger was locked


def test_spend_made_while_the_ledger_was_locked_reaches_it_at_exit(
    tmp_path: Path, exact_fake: FakeProvider
) -> None:
    """Calls made while budgets.db was locked by another program go through (fail open) and
    their spend is settled later. The ledger, paused for a minute after that slow failure,
    refused the exit's settlement too: a process that ended within the minute never added its
    spend to the budget (settled $0 after 3 calls). The exit now asks the ledger whatever."""
    directory = tmp_path / "tm"
    SQLiteLedger(directory / "budgets.db").close()  # made, to be locked before the holder starts
    other = sqlite3.connect(directory / "budgets.db", isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        holder = hold_budget(exact_fake, directory, limit_for(60), 3, "failing")
    finally:
        other.execute("ROLLBACK")
        other.close()
    holder.communicate("\n", timeout=60)
    assert holder.returncode == 0
    assert len(exact_fake.requests) == 3
    settled, reserved = ledger_row(directory)
    assert settled == pytest.approx(3 * PER_CALL) and reserved == pytest.approx(0)


def test_a_call_made_by_a_session_end_hook_at_exit_leaves_nothing_reserved(
    tmp_path: Path, exact_fake: FakeProvider
) -> None:
    """The implicit session's end hooks run at exit after the slices were given back: a call a
    hook made took a fresh slice that nobody returned (a $1 budget kept $0.64 reserved after
    ten such runs, and refused calls long before its limit)."""
    directory = tmp_path / "tm"
    holder = hold_budget(exact_fake, directory, limit_for(60), 1, "hook")
    holder.communicate("\n", timeout=60)
    assert holder.returncode == 0
    assert len(exact_fake.requests) == 2  # the hook's call was made
    settled, reserved = ledger_row(directory)
    assert settled == pytest.approx(2 * PER_CALL) and reserved == pytest.approx(0)


def test_an_idle_process_gives_its_slice_back(tmp_path: Path, exact_fake: FakeProvider) -> None:
    """Calls outside any session: the holder's slice goes back once it has been idle a while."""
    directory = tmp_path / "tm"
    holder = hold_budget(exact_fake, directory, limit_for(60), 1, "bare")
    try:
        deadline = time.monotonic() + 60
        while ledger_row(directory)[1] > 0:  # its slice is reserved until it gives it back
            assert time.monotonic() < deadline, "the idle holder never gave its slice back"
            time.sleep(0.05)
        [result] = race(exact_fake, directory, 1, 1, limit_for(60))
        assert result == {"made": 59, "refused": 1}
    finally:
        holder.communicate("\n", timeout=60)
    assert holder.returncode == 0
