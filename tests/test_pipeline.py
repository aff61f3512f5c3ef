"""Delivery: failing sinks lose nothing, the queue is bounded, exit flushes, files are private."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

import tokenmeter
from tokenmeter import SessionInfo, UsageRecord
from tokenmeter.sinks import InMemorySink


class FlakySink(InMemorySink):
    """Raises OSError on every write until ``healthy`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.healthy = threading.Event()
        self.failures = 0

    def write(self, records: Sequence[UsageRecord]) -> None:
        if not self.healthy.is_set():
            self.failures += 1
            raise OSError("disk full")
        super().write(records)

    def write_sessions(self, sessions: Sequence[SessionInfo]) -> None:
        if not self.healthy.is_set():
            self.failures += 1
            raise OSError("disk full")
        super().write_sessions(sessions)


def test_a_failing_sink_loses_nothing_and_is_reported_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    flaky, healthy = FlakySink(), InMemorySink()
    tokenmeter.configure(sinks=[flaky, healthy])
    with caplog.at_level(logging.WARNING, logger="tokenmeter"):
        made = [tokenmeter.record("openai", "gpt-4o", i + 1, 1) for i in range(500)]
        assert not tokenmeter.flush(0.5)  # cannot complete while the sink is failing
        assert [r.id for r in healthy.records] == [r.id for r in made]
        more = [tokenmeter.record("openai", "gpt-4o", 1, 1) for _ in range(100)]
        time.sleep(0.3)
        assert flaky.failures >= 2  # retried with back-off
        flaky.healthy.set()
        assert tokenmeter.flush(10)
    assert [r.id for r in flaky.records] == [r.id for r in made + more]
    errors = [r for r in caplog.records if "failed" in r.message and "FlakySink" in r.message]
    assert len(errors) == 1
    assert any("recovered" in r.message for r in caplog.records)


def test_a_sink_fault_never_reaches_the_caller() -> None:
    class Broken:
        def write(self, records: Sequence[UsageRecord]) -> None:
            raise RuntimeError("bug in a user sink")

        def flush(self) -> None:
            raise RuntimeError("also broken")

        def close(self) -> None:
            pass

    tokenmeter.configure(sinks=[Broken()], exit_timeout=0.5)  # it never recovers
    rec = tokenmeter.record("openai", "gpt-4o", 1, 1)  # must not raise
    assert rec.input_tokens == 1


def test_bounded_queue_makes_the_caller_wait_not_drop() -> None:
    class Slow(InMemorySink):
        def write(self, records: Sequence[UsageRecord]) -> None:
            time.sleep(0.002)
            super().write(records)

    slow = Slow()
    tokenmeter.configure(sinks=[slow], max_queue=5)
    for _ in range(300):
        tokenmeter.record("openai", "gpt-4o", 1, 1)
    assert tokenmeter.flush(10)
    assert len(slow.records) == 300


class BatchCountingSink(InMemorySink):
    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def write(self, records: Sequence[UsageRecord]) -> None:
        self.batches.append(len(records))
        super().write(records)


def test_a_busy_caller_gets_its_records_written_in_batches_while_it_runs() -> None:
    """The writer neither starves (records reach the sink during a CPU-bound loop, not only at
    flush) nor wakes per record (each wake-up takes the GIL from the caller)."""
    sink = BatchCountingSink()
    tokenmeter.configure(sinks=[sink])
    deadline = time.monotonic() + 0.6
    made = 0
    while time.monotonic() < deadline:
        sum(range(2_000))  # the caller's own work, holding the GIL
        os.urandom(16)  # a brief GIL release, as the SDKs make per request
        tokenmeter.record("openai", "gpt-4o", 1, 1)
        made += 1
    written_while_busy = len(sink.records)
    assert tokenmeter.flush(5)
    assert len(sink.records) == made
    assert written_while_busy >= made // 3, (written_while_busy, made)
    assert len(sink.batches) <= 40, sink.batches  # ~one batch per 50 ms, not one per record


def test_a_slow_sink_never_holds_the_caller_for_long() -> None:
    """The caller hands the GIL to the writer once per batch and waits at most a few ms for it:
    a sink that takes half a second per write does not stall the caller's calls."""

    class SlowSink(InMemorySink):
        def write(self, records: Sequence[UsageRecord]) -> None:
            time.sleep(0.5)
            super().write(records)

    sink = SlowSink()
    tokenmeter.configure(sinks=[sink])
    slowest = 0.0
    deadline = time.monotonic() + 1.5
    made = 0
    while time.monotonic() < deadline:
        start = time.perf_counter()
        tokenmeter.record("openai", "gpt-4o", 1, 1)
        slowest = max(slowest, time.perf_counter() - start)
        made += 1
        time.sleep(0.001)
    assert slowest < 0.25, slowest
    assert tokenmeter.flush(10)
    assert len(sink.records) == made


def test_configure_rejects_things_that_are_not_sinks() -> None:
    with pytest.raises(ValueError, match="not a sink"):
        tokenmeter.configure(sinks=[object()])  # type: ignore[list-item]


SCRIPT = """
import sys, tokenmeter
with tokenmeter.session("job", tags={"k": "v"}):
    for i in range(1000):
        tokenmeter.record("openai", "gpt-4o", 100 + i, 10)
if sys.argv[1] == "raise":
    raise RuntimeError("the app crashed")
"""


@pytest.mark.parametrize("how", ["normal", "raise"])
def test_exit_flushes_every_record_to_default_sinks(tmp_path: Path, how: str) -> None:
    env = {
        **os.environ,
        "TOKENMETER_SINKS": "sqlite,jsonl,markdown",
        "TOKENMETER_DIR": str(tmp_path / "meter"),
    }
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, how],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (done.returncode == 0) == (how == "normal"), done.stderr
    meter = tmp_path / "meter"
    with sqlite3.connect(meter / "usage.db") as db:
        assert db.execute("select count(*) from records").fetchone() == (1000,)
        # The session ended before the crash, so it completed either way.
        assert db.execute("select status from sessions where name='job'").fetchone() == (
            "completed",
        )
    lines = (meter / "usage.jsonl").read_text().splitlines()
    assert len(lines) == 1000
    assert all(json.loads(line)["session_name"] == "job" for line in lines)
    assert "TOTAL" in (meter / "journal" / "token_usage.md").read_text()
    for path in (meter / "usage.db", meter / "usage.jsonl"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(meter.stat().st_mode) == 0o700


def test_flush_with_nothing_recorded_returns_at_once() -> None:
    assert tokenmeter.flush(0.1)


CHILDREN = """
import multiprocessing as mp, sys, tokenmeter

def work(i):
    for _ in range(100):
        tokenmeter.record("openai", "gpt-4o", 10, 1)

if __name__ == "__main__":
    tokenmeter.record("openai", "gpt-4o", 10, 1)
    ctx = mp.get_context(sys.argv[1])
    procs = [ctx.Process(target=work, args=(i,)) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    pool = ctx.Pool(2)
    pool.map(work, range(4))
    pool.close()
    pool.join()
"""


@pytest.mark.parametrize("start_method", ["fork", "spawn", "forkserver"])
def test_multiprocessing_children_flush_their_records(tmp_path: Path, start_method: str) -> None:
    # multiprocessing ends children with os._exit(), which skips atexit.
    script = tmp_path / "children.py"
    script.write_text(CHILDREN)
    env = {**os.environ, "TOKENMETER_SINKS": "jsonl", "TOKENMETER_DIR": str(tmp_path / "m")}
    done = subprocess.run(
        [sys.executable, str(script), start_method],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "m" / "usage.jsonl").read_text().count("\n") == 1 + 300 + 400
