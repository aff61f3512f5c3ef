"""The concurrency bound: many callers racing one budget overshoot it by at most what the calls
in flight cost beyond their estimates. Here the estimate is exact (the fake reports the 1,000
input tokens the 4,000-character request is estimated at, and no output), so the bound is zero:
exactly as many calls as fit are made, however the threads and processes interleave.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tokenmeter.testing import FakeProvider

HERE = Path(__file__).parent
PER_CALL = 0.0025  # 1,000 gpt-4o input tokens
FIT = 10
LIMIT = str(FIT * PER_CALL + PER_CALL / 2)  # room for 10 calls and half of an 11th


@pytest.fixture
def exact_fake() -> FakeProvider:
    provider = FakeProvider()
    provider.start()
    provider.set_usage(
        openai={
            "prompt_tokens": 1000,
            "completion_tokens": 0,
            "cached_tokens": 0,
            "reasoning_tokens": 0,
        }
    )
    return provider


def race(fake: FakeProvider, directory: Path, processes: int, threads: int) -> list[dict[str, int]]:
    env = {**os.environ, **fake.environ(), "PYTHONPATH": os.pathsep.join(sys.path)}
    runners = [
        subprocess.Popen(
            [sys.executable, str(HERE / "budget_racer.py"), str(directory), str(threads), LIMIT],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    results = []
    for runner in runners:
        out, _ = runner.communicate(timeout=120)
        assert runner.returncode == 0
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def ledger_row(directory: Path) -> tuple[float, float]:
    with sqlite3.connect(directory / "budgets.db") as conn:
        settled, reserved = conn.execute(
            "SELECT settled_usd, reserved_usd FROM budget_ledger WHERE scope_key LIKE 'race|%'"
        ).fetchone()
    return settled, reserved


@pytest.mark.parametrize(("processes", "threads"), [(1, 8), (4, 2), (4, 8)])
def test_racing_callers_make_exactly_the_calls_that_fit(
    tmp_path: Path, exact_fake: FakeProvider, processes: int, threads: int
) -> None:
    try:
        results = race(exact_fake, tmp_path / "tm", processes, threads)
        assert sum(r["made"] for r in results) == FIT
        assert sum(r["refused"] for r in results) == processes * threads
        assert len(exact_fake.requests) == FIT
        settled, reserved = ledger_row(tmp_path / "tm")
        assert settled == pytest.approx(FIT * PER_CALL) and reserved == pytest.approx(0)
    finally:
        exact_fake.stop()
