"""Delivery: failing sinks lose nothing, the queue is bounded, exit flushes, files are private."""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import logging
import os
import random
import re
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from helpers import Held, HungSink, refuse_threads, run_python, wait_for

import tokenmeter
from tokenmeter import SessionInfo, UsageRecord, _pipeline, _runtime
from tokenmeter.sinks import InMemorySink, JSONLSink, SQLiteSink


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


class Picky(HungSink):
    """Refuses every batch holding a record of the model "poison", which it can never store;
    its other writes wait for ``release``, as HungSink's."""

    def write(self, records: Sequence[UsageRecord]) -> None:
        if any(r.model_name == "poison" for r in records):
            raise ValueError("cannot store this one")
        super().write(records)


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
        wait_for(lambda: flaky.failures >= 2, "a retry with back-off")
        flaky.healthy.set()
        assert tokenmeter.flush(30)
    assert [r.id for r in flaky.records] == [r.id for r in made + more]
    errors = [r for r in caplog.records if "failed" in r.message and "FlakySink" in r.message]
    assert len(errors) == 1
    assert any("recovered" in r.message for r in caplog.records)
    assert not (Path(".tokenmeter") / "quarantine.jsonl").exists()  # a sink down is not bad data


def test_a_writer_that_cannot_start_fails_no_session_and_starts_with_a_later_record(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A thread that could not start (RuntimeError "can't start new thread") as a session's
    entry made the first record, and so the sinks' writers, raised out of the application's
    ``with tokenmeter.session()``: its body never ran. Now the records wait, the writer starts
    with a later one, and that it could not start is logged once."""
    memory = InMemorySink()
    tokenmeter.configure(sinks=[memory])
    # The session's entry, then the call's record:
    refuse_threads(monkeypatch, "tokenmeter-writer", 2)
    ran = []
    with caplog.at_level(logging.WARNING, logger="tokenmeter"):
        with tokenmeter.session("request") as session:
            tokenmeter.record("openai", "gpt-4o", 10, 2)
            ran.append(session.id)
        assert tokenmeter.flush(timeout=30)  # started by the session's end
    assert [record.session_id for record in memory.records] == ran
    assert memory.sessions[session.id].calls == 1
    refused = [r.message for r in caplog.records if "could not start" in r.message]
    assert len(refused) == 1 and "can't start new thread" in refused[0]
    assert any("started at last" in r.message for r in caplog.records)


def test_a_writer_that_never_starts_says_what_it_held_at_exit(tmp_path: Path) -> None:
    """Threads that stay unavailable: the application runs on; flush() says False, and the exit
    says how many records and sessions were never written (never a silent loss)."""
    code = """
import threading, tokenmeter
def refuse(thread):
    raise RuntimeError("can't start new thread")
threading.Thread.start = refuse
tokenmeter.configure(directory=".", sinks=["jsonl"])
with tokenmeter.session("request"):
    tokenmeter.record("openai", "gpt-4o", 10, 2)
print("flushed", tokenmeter.flush(timeout=5))
"""
    done = run_python("-c", code, env=os.environ, cwd=tmp_path)
    assert "flushed False" in done.stdout
    assert "its writer never started; 3 records and sessions it held are lost" in done.stderr


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
    assert not tokenmeter.flush()  # released once the sink has failed a few times, not a hang


class BufferingSink(InMemorySink):
    """Keeps records in ``write`` and stores them in ``flush``, which fails until ``healthy``."""

    def __init__(self) -> None:
        super().__init__()
        self.buffered: list[UsageRecord] = []
        self.healthy = False

    def write(self, records: Sequence[UsageRecord]) -> None:
        self.buffered += records

    def flush(self) -> None:
        if not self.healthy:
            raise OSError("upload failed")
        super().write(self.buffered)
        self.buffered.clear()


def test_flush_is_false_while_a_sinks_own_flush_fails() -> None:
    """flush() is True only when everything is written: a sink that stores its records in its
    own flush() (an uploader) and fails there has not written them."""
    sink = BufferingSink()
    tokenmeter.configure(sinks=[sink])
    made = [tokenmeter.record("openai", "gpt-4o", 1, 1) for _ in range(3)]
    assert not tokenmeter.flush(30)
    assert sink.records == []
    sink.healthy = True
    assert tokenmeter.flush(30)
    assert [r.id for r in sink.records] == [r.id for r in made]


def test_flush_with_timeout_0_says_true_once_everything_is_written(tmp_path: Path) -> None:
    """A non-blocking check of delivery (a health endpoint): flush(timeout=0) said False every
    time, records all written, as every writer was handed a marker it had no time to take. A
    writer holding nothing, whose last answer was True, answers at once; one whose sink's own
    flush() fails still says False."""
    sink = BufferingSink()
    tokenmeter.configure(sinks=["jsonl", sink], directory=str(tmp_path))
    made = [tokenmeter.record("openai", "gpt-4o", 1, 1) for _ in range(5)]
    assert not tokenmeter.flush(30)  # the uploader's own flush() fails
    assert not tokenmeter.flush(timeout=0)
    sink.healthy = True
    assert tokenmeter.flush(30)
    assert tokenmeter.flush(timeout=0)
    assert [r.id for r in sink.records] == [r.id for r in made]
    assert (tmp_path / "usage.jsonl").read_text().count("\n") == 5


def test_flush_without_a_timeout_is_released_once_a_slow_failure_outlasts_its_patience(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sink whose every attempt fails slowly (a server that takes the connection and never
    answers: 10 s or more each) held a flush() without a timeout for five attempts (109.5 s with
    a PostgreSQL sink). Past ``_FLUSH_PATIENCE`` (0.1 s here) with a failure since, it returns
    False after the attempt that outlasted it; the records stay queued."""
    monkeypatch.setattr(_pipeline, "_FLUSH_PATIENCE", 0.1, raising=False)

    class SlowToFail(InMemorySink):
        attempts = 0
        down = True

        def write(self, records: Sequence[UsageRecord]) -> None:
            if self.down:
                self.attempts += 1
                time.sleep(0.3)  # longer than the patience: each attempt outlasts it
                raise OSError("connection timeout expired")
            super().write(records)

    sink = SlowToFail()
    tokenmeter.configure(sinks=[sink])
    tokenmeter.record("openai", "gpt-4o", 1, 1)
    assert tokenmeter.flush() is False
    assert sink.attempts < _pipeline._FLUSH_TRIES
    sink.down = False
    assert tokenmeter.flush(30) and len(sink.records) == 1


def test_flush_is_released_between_the_writes_of_an_isolation_pass_of_a_slow_failing_sink(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sink failing each write slowly, and a flush() without a timeout per request: from the
    third failure on, each failure starts an isolation pass (records written one at a time),
    and the flush() was answered only after it: three more slow writes (40 s for the third
    flush() with writes failing in 10 s; 24.5 s for the first with 4 s ones). Past
    ``_FLUSH_PATIENCE`` (0.1 s here) each flush() is answered after the write under way, the
    one that came during a pass too; at most one more write starts before its caller sees it."""
    monkeypatch.setattr(_pipeline, "_FLUSH_PATIENCE", 0.1, raising=False)

    class SlowToFail(InMemorySink):
        down = True
        waiting = False
        started_while_waiting = 0

        def write(self, records: Sequence[UsageRecord]) -> None:
            if self.down:
                self.started_while_waiting += self.waiting
                time.sleep(0.3)  # longer than the patience: each attempt outlasts it
                raise OSError("connection timeout expired")
            super().write(records)

    sink = SlowToFail()
    tokenmeter.configure(sinks=[sink])
    made = []
    for _ in range(6):
        made += [tokenmeter.record("openai", "gpt-4o", 1, 1) for _ in range(3)]
        sink.started_while_waiting, sink.waiting = 0, True
        assert tokenmeter.flush() is False
        sink.waiting = False
        assert sink.started_while_waiting <= 2, sink.started_while_waiting
    sink.down = False
    assert tokenmeter.flush(30)
    assert sorted(r.id for r in sink.records) == sorted(r.id for r in made)


class BackAfterOneMoreFailure(InMemorySink):
    """A sink down ("down"), then back after one more failed write ("stale": a pooled
    connection gone stale while the server was down)."""

    state = "down"

    def write(self, records: Sequence[UsageRecord]) -> None:
        if self.state == "down":
            raise OSError("connection refused")
        if self.state == "stale":
            self.state = "up"
            raise OSError("server closed the connection unexpectedly")
        super().write(records)


def test_flush_says_true_when_the_isolation_pass_writes_every_record() -> None:
    """After five failed deliveries, a flush() whose delivery failed once and whose isolation
    pass then wrote every record said False (answered before the pass, for the tries alone)."""
    sink = BackAfterOneMoreFailure()
    tokenmeter.configure(sinks=[sink])
    first = tokenmeter.record("openai", "gpt-4o", 1, 1)
    assert tokenmeter.flush(60) is False  # down: its tries ran out
    sink.state = "stale"
    second = tokenmeter.record("openai", "gpt-4o", 1, 1)
    assert tokenmeter.flush(60) is True
    assert sorted(r.id for r in sink.records) == sorted([first.id, second.id])


class FailingThenHeld(InMemorySink):
    """Three writes failing at once (an isolation pass begins), two failing slowly, then one
    held until ``go``; then every write is stored."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.fourth = threading.Event()
        self.go = threading.Event()

    def write(self, records: Sequence[UsageRecord]) -> None:
        self.writes += 1
        if self.writes == 4:
            self.fourth.set()
        if self.writes <= 3:
            raise OSError("connection refused")
        if self.writes <= 5:
            time.sleep(0.3)
            raise OSError("connection timeout expired")
        if self.writes == 6:
            self.go.wait(60)
        super().write(records)


def test_a_flush_answered_during_an_isolation_pass_takes_no_records_place(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A flush() answered while its marker still waited in the buffer left the marker there,
    counted against max_queue as a record: a caller filling the buffer had a record dropped
    and lost (12 of 13 written) that is kept without that flush()."""
    monkeypatch.setattr(_pipeline, "_FLUSH_PATIENCE", 0.1, raising=False)
    sink = FailingThenHeld()
    tokenmeter.configure(sinks=[sink], max_queue=10)
    made = [tokenmeter.record("openai", "gpt-4o", 1, 1) for _ in range(3)]
    assert sink.fourth.wait(60)  # the isolation pass began
    answered: list[bool] = []
    waiter = threading.Thread(target=lambda: answered.append(tokenmeter.flush()))
    waiter.start()
    waiter.join(30)  # answered (False) during the pass, once its patience ran out
    made += [tokenmeter.record("openai", "gpt-4o", 1, 1) for _ in range(10)]
    sink.go.set()
    waiter.join(60)
    assert answered in ([False], [True])
    assert tokenmeter.flush(60)
    assert sorted(r.id for r in sink.records) == sorted(r.id for r in made)


def test_a_sinks_own_flush_failing_at_every_flush_is_reported_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An uploader whose endpoint is down, and a flush() per request (a function run per
    request): an error line per flush(), where a failing sink is reported once."""
    sink = BufferingSink()
    tokenmeter.configure(sinks=[sink])
    with caplog.at_level(logging.ERROR, logger="tokenmeter"):
        for _ in range(20):
            tokenmeter.record("openai", "gpt-4o", 1, 1)
            assert not tokenmeter.flush(30)
        sink.healthy = True
        assert tokenmeter.flush(30)
        sink.healthy = False  # down again: said again
        assert not tokenmeter.flush(30)
        assert not tokenmeter.flush(30)
    failed = [r for r in caplog.records if "flush failed" in r.message]
    assert len(failed) == 2, len(failed)
    assert len(sink.records) == 20


def test_two_sinks_that_flush_inside_their_writes_do_not_wait_on_each_other() -> None:
    """Each writer's flush() waited for the other writer, busy in the same wait: both hung until
    their timeouts ran out (for ever without one), and every flush() of the application with
    them. A writer in flush() does not wait for a writer that entered flush() before it."""
    results: list[bool] = []

    class Flushing(InMemorySink):
        def write(self, records: Sequence[UsageRecord]) -> None:
            results.append(tokenmeter.flush(20))
            super().write(records)

    first, second = Flushing(), Flushing()
    tokenmeter.configure(sinks=[first, second])
    made = tokenmeter.record("openai", "gpt-4o", 1, 1)
    assert tokenmeter.flush(60)
    assert [r.id for r in first.records] == [r.id for r in second.records] == [made.id]
    assert len(results) == 2 and True in results  # the one that waited saw the other finish


@pytest.mark.parametrize("raised", [KeyboardInterrupt, SystemExit, GeneratorExit])
def test_a_sink_raising_a_base_exception_keeps_its_writer(raised: type[BaseException]) -> None:
    class Fatal(FlakySink):
        def write(self, records: Sequence[UsageRecord]) -> None:
            if not self.healthy.is_set():
                self.failures += 1
                raise raised()
            super().write(records)

    sink = Fatal()
    tokenmeter.configure(sinks=[sink])
    made = [tokenmeter.record("openai", "gpt-4o", 1, 1) for _ in range(3)]
    assert not tokenmeter.flush()  # returns (False): the writer is alive and gave up for now
    sink.healthy.set()
    assert tokenmeter.flush(30)
    assert [r.id for r in sink.records] == [r.id for r in made]


class RaisingFilter(logging.Filter):
    """An application's logging filter that fails on every line it is shown."""

    def filter(self, record: logging.LogRecord) -> bool:
        raise RuntimeError("the application's logging is broken")


def test_a_writer_outlives_a_logging_setup_that_raises() -> None:
    """The writer reports a failing sink through the logger: a filter of the application's
    that raises there made the error escape the writer's own guard, whose report raised again,
    and the writer thread died: the sink's records were never written and flush() said False."""
    sink = FlakySink()
    tokenmeter.configure(sinks=[sink])
    broken = RaisingFilter()
    logging.getLogger("tokenmeter").addFilter(broken)
    try:
        made = [tokenmeter.record("openai", "gpt-4o", 1, 1) for _ in range(3)]
        wait_for(lambda: sink.failures >= 2, "a retry after the failure was reported")
        sink.healthy.set()
        assert tokenmeter.flush(30)
    finally:
        logging.getLogger("tokenmeter").removeFilter(broken)
    assert [r.id for r in sink.records] == [r.id for r in made]


def test_a_hung_sink_holds_back_neither_the_caller_nor_the_other_sinks() -> None:
    hung, memory = HungSink(), InMemorySink()
    tokenmeter.configure(sinks=[hung, memory])
    made = [tokenmeter.record("openai", "gpt-4o", 1, 1)]
    hung.entered.wait(30)  # the writer is now stuck inside write()
    made += [tokenmeter.record("openai", "gpt-4o", 1, 1) for _ in range(500)]  # never waits
    wait_for(lambda: len(memory.records) == 501, "the healthy sink got every record")
    assert not tokenmeter.flush(0.2)  # the hung sink has not got them
    hung.release.set()
    assert tokenmeter.flush(30)
    assert [r.id for r in hung.records] == [r.id for r in made]


def test_a_full_buffer_drops_its_oldest_instead_of_making_the_caller_wait(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hung = HungSink()
    tokenmeter.configure(sinks=[hung], max_queue=50)
    first = tokenmeter.record("openai", "gpt-4o", 1, 1)
    hung.entered.wait(30)
    with caplog.at_level(logging.ERROR, logger="tokenmeter"):
        made = [tokenmeter.record("openai", "gpt-4o", 1, 1) for _ in range(500)]
    assert len([r for r in caplog.records if "dropped the oldest" in r.message]) == 1
    hung.release.set()
    assert not tokenmeter.flush(30)  # what it waited for is in, but 450 records were dropped
    got = [r.id for r in hung.records]
    assert got[0] == first.id and got[-1] == made[-1].id
    assert len(got) == 1 + 50  # the one being written, then the newest max_queue


def _only_the_hand_over_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    """Widen the wall-clock rules around the callers' hand-over to a crowded writer (each
    tested on its own: a wait of 5 ms, a writer stalled after 0.1 s or hung after 1 s in a
    write): on a busy machine a writer descheduled that long lost records for the load alone."""
    monkeypatch.setattr(_pipeline, "_HAND_OVER", 1.0)
    monkeypatch.setattr(_pipeline, "_STALLED_S", 30.0)
    monkeypatch.setattr(_pipeline, "_HUNG_S", 60.0)


def test_a_tight_loop_of_records_loses_none_to_a_healthy_file_sink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CPU-bound loop of record() calls (a batch's results imported) kept the JSONL sink's
    writer from the GIL: its buffer passed max_queue and dropped records (18,926 of 60,000),
    although the sink writes several times as fast as the loop made them. Callers now hand a
    healthy writer the GIL once its buffer is three quarters full.

    The hand-over is what is tested here, not the stall rule (tested on its own): on a busy
    machine a writer descheduled for 0.1 s counted as stalled, the loop stopped waiting for it,
    and the test failed for the machine's load alone (1,965 of 20,000 dropped)."""
    _only_the_hand_over_decides(monkeypatch)
    path = tmp_path / "usage.jsonl"
    tokenmeter.configure(sinks=[JSONLSink(path)], max_queue=2_000)
    made = [tokenmeter.record("openai", "gpt-4o", 1, 1) for _ in range(20_000)]
    assert tokenmeter.flush(60)
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == [
        r.id for r in made
    ]


@pytest.mark.parametrize("max_queue", [1, 2, 3, 4])
def test_the_smallest_queues_lose_no_record_of_a_healthy_sink(
    max_queue: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``max_queue`` 1 to 3 (accepted: "at least 1"), the point past which callers hand a
    healthy writer the GIL was the queue's limit itself: the hand-over came only with the drop,
    and a plain loop of 200 records left 1 to 6 of them in a healthy sink (100 here).

    A caller waits for the writer 5 ms at most, and not at all once it let the waits go
    unanswered for 0.1 s: on a busy machine that dropped records for the load alone (85 of 100
    stored). Both are widened here, so that only the hand-over decides: most, not all, as a
    writer that signals a chunk written before it takes its buffer lets the caller go on."""
    _only_the_hand_over_decides(monkeypatch)
    sink = InMemorySink()
    tokenmeter.configure(sinks=[sink], max_queue=max_queue)
    made = [tokenmeter.record("openai", "gpt-4o", 1, 1) for _ in range(100)]
    tokenmeter.flush(60)
    stored = [r.id for r in sink.records]
    assert len(stored) >= 90
    assert stored == [r.id for r in made if r.id in set(stored)]  # in order, none twice


def test_a_writer_that_makes_progress_is_waited_for_again() -> None:
    """A writer that let a caller's wait go unanswered is "stalled" (no caller hands it the GIL)
    only until it takes its buffer again: left stalled for good, a tight loop of records never
    waited for a healthy sink again and dropped them. (The hand-over tests above widen the stall
    rule, so this is its own test.)"""
    sink = InMemorySink()
    tokenmeter.configure(sinks=[sink])
    tokenmeter.record("openai", "gpt-4o", 1, 1)
    assert tokenmeter.flush(30)
    [writer] = _pipeline._writers()
    writer._unanswered_since = time.monotonic() - 2 * _pipeline._STALLED_S - 1
    assert _pipeline._stalled(writer)

    tokenmeter.record("openai", "gpt-4o", 1, 1)
    assert tokenmeter.flush(30)  # the writer took its buffer: progress

    assert not _pipeline._stalled(writer) and len(sink.records) == 2


class RecordsOnlyByDesign:
    """A user sink with no ``write_sessions`` at all: records are all it stores."""

    def __init__(self) -> None:
        self.records: list[UsageRecord] = []

    def write(self, records: Sequence[UsageRecord]) -> None:
        self.records.extend(records)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_session_row_dropped_for_a_sink_that_takes_none_is_no_loss() -> None:
    """``max_queue=1``: the implicit session's opening row and the first record arrive back to
    back, and the row was dropped and counted ("dropped the oldest"), so flush() said False with
    every record stored in a sink (the JSONL one) that never stores sessions."""
    sink = RecordsOnlyByDesign()
    tokenmeter.configure(sinks=[sink], max_queue=1)
    made = tokenmeter.record("openai", "gpt-4o", 1, 1)
    assert tokenmeter.flush(60)
    assert [r.id for r in sink.records] == [made.id]


@pytest.fixture
def hand_overs(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """When the application's (main) thread waited in the pipeline: a caller handing a writer
    the GIL (``_pipeline._hand_over``)."""
    waited: list[float] = []
    wait = _pipeline._wait_for_progress

    def spy() -> None:
        if threading.current_thread() is threading.main_thread():
            waited.append(time.monotonic())
        wait()

    monkeypatch.setattr(_pipeline, "_wait_for_progress", spy)
    return waited


class HungInFlush(Held, InMemorySink):
    """The in-memory sink, held in its own ``flush()`` (an uploader whose server stopped
    answering)."""

    def flush(self) -> None:
        self.hold()


def test_callers_never_wait_for_a_hung_or_failing_sink(
    monkeypatch: pytest.MonkeyPatch, hand_overs: list[float]
) -> None:
    """A sink that is hung or failing is not short of the GIL: its buffer drops the oldest,
    as before, and the callers never sleep for it."""
    monkeypatch.setattr(_pipeline, "_HUNG_S", 0.0)  # a write in progress counts as hung
    hung = HungSink()
    tokenmeter.configure(sinks=[hung], max_queue=50)
    tokenmeter.record("openai", "gpt-4o", 1, 1)
    assert hung.entered.wait(30)
    for _ in range(500):
        tokenmeter.record("openai", "gpt-4o", 1, 1)
    (writer,) = _pipeline._get().writers
    assert writer.dropped == 450
    hung.release.set()
    assert not tokenmeter.flush(30)
    flaky = FlakySink()
    tokenmeter.configure(sinks=[flaky], max_queue=50)
    tokenmeter.record("openai", "gpt-4o", 1, 1)
    assert not tokenmeter.flush(30)  # it has failed: not short of the GIL
    for _ in range(10):
        for _ in range(40):
            tokenmeter.record("openai", "gpt-4o", 1, 1)
        assert not tokenmeter.flush(30)
    (writer,) = _pipeline._get().writers
    assert writer.dropped > 300
    stuck = HungInFlush()  # its writes return; its flush() does not
    tokenmeter.configure(sinks=[stuck], max_queue=50)
    tokenmeter.record("openai", "gpt-4o", 1, 1)
    assert not tokenmeter.flush(0.1)
    assert stuck.entered.wait(30)
    for _ in range(500):
        tokenmeter.record("openai", "gpt-4o", 1, 1)
    (writer,) = _pipeline._get().writers
    assert writer.dropped >= 450
    stuck.release.set()
    assert hand_overs == []


class _Interrupting:
    """``_pipeline._progress`` whose wait is interrupted by a signal handler raising (an alarm's
    ``TimeoutError``) while a crowded caller waits for its writer."""

    def clear(self) -> None:
        pass

    def set(self) -> None:
        pass

    def wait(self, timeout: float | None = None) -> bool:
        raise TimeoutError("the application's alarm")


def test_a_signal_handlers_exception_raised_while_a_call_waits_for_the_writer_reaches_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An SDK call's record is queued, and a crowded caller waits for the writer, inside the
    recording's guard, which logs a fault of ours and lets the call return: an application's
    alarm (SIGALRM raising TimeoutError) landing in that wait was swallowed, the deadline
    silently missed. It reaches the application now, as from any other line of its own."""
    import httpx2
    import openai

    def reply(request: Any) -> Any:
        usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
        body = {"id": "c", "object": "chat.completion", "created": 1, "model": "gpt-4o",
                "choices": [], "usage": usage}  # fmt: skip
        return httpx2.Response(200, json=body)

    client = openai.OpenAI(
        api_key="sk-test",
        base_url="http://fake.local/v1",
        http_client=httpx2.Client(transport=httpx2.MockTransport(reply)),
    )
    monkeypatch.setattr(_pipeline, "_HUNG_S", 60.0)  # a write in progress: healthy
    monkeypatch.setattr(_pipeline, "_STALLED_S", 3600.0)  # waited for, however slow the test
    hung = HungSink()
    tokenmeter.configure(sinks=[hung], max_queue=8)
    tokenmeter.record("openai", "gpt-4o", 1, 1)
    assert hung.entered.wait(30)
    for _ in range(6):  # up to 3/4 of max_queue: nothing waits yet
        tokenmeter.record("openai", "gpt-4o", 1, 1)
    monkeypatch.setattr(_pipeline, "_progress", _Interrupting())
    tokenmeter.instrument("openai")
    try:
        with pytest.raises(TimeoutError, match="alarm"):
            client.chat.completions.create(model="gpt-4o", messages=[])
    finally:
        tokenmeter.uninstrument("openai")
        hung.release.set()
    assert tokenmeter.flush(30)
    assert len(hung.records) == 8  # its record was queued before the wait


class _CountedWaits(_pipeline._Flag):
    """``_pipeline._progress``, counting the waits of callers."""

    waits = 0

    def wait(self, timeout: float | None = None) -> bool:
        self.waits += 1
        return super().wait(timeout)


def test_callers_stop_waiting_for_a_writer_that_makes_no_progress(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sink blocked in its write by a lock the application holds while it records is healthy
    for a second (not hung yet), and the writer can do nothing while the caller waits: each
    record waited 5 ms for it, 200 of them a burst, to be dropped all the same. Once a writer let
    the waits go unanswered for 0.1 s, no caller waits for it: each unanswered wait lasts 5 ms,
    so at most about 20 happen."""
    monkeypatch.setattr(_pipeline, "_HUNG_S", 60.0)  # a write in progress: healthy
    counted = _CountedWaits()
    monkeypatch.setattr(_pipeline, "_progress", counted)
    hung = HungSink()
    tokenmeter.configure(sinks=[hung], max_queue=100)
    tokenmeter.record("openai", "gpt-4o", 1, 1)
    assert hung.entered.wait(30)
    for _ in range(2_000):
        tokenmeter.record("openai", "gpt-4o", 1, 1)
    hung.release.set()
    assert 1 <= counted.waits <= _pipeline._STALLED_S / _pipeline._HAND_OVER + 2
    (writer,) = _pipeline._get().writers
    assert writer.dropped >= 1_900


def test_flushes_with_a_timeout_while_a_sink_hangs_keep_its_buffer_bounded() -> None:
    """A flush() per request, with a timeout, while a sink hangs: each left a marker in the
    hung sink's buffer for good. The markers took the records' room (the sink got back 545 of
    its newest 1,000 records), grew memory without end, and every record the caller made
    scanned past all of them (the call got slower and slower)."""
    hung = HungSink()
    tokenmeter.configure(sinks=[hung], max_queue=50)
    first = tokenmeter.record("openai", "gpt-4o", 1, 1)
    hung.entered.wait(30)
    made = []
    for _ in range(500):
        made.append(tokenmeter.record("openai", "gpt-4o", 1, 1))
        assert not tokenmeter.flush(timeout=0)
    assert len(_pipeline._get().writers[0]._buffer) <= 51  # 50 records and one marker
    hung.release.set()
    assert not tokenmeter.flush(30)  # the oldest were dropped
    assert [r.id for r in hung.records] == [first.id] + [r.id for r in made[-50:]]


def test_a_failing_sink_keeps_at_most_max_queue_records_dropping_the_oldest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A sink that raises (a server down for hours) keeps its records for retry, but no more
    than ``max_queue`` of them: memory stays bounded and the newest are the ones kept."""
    flaky = FlakySink()
    tokenmeter.configure(sinks=[flaky], max_queue=50)
    with caplog.at_level(logging.ERROR, logger="tokenmeter"):
        made = []
        for _ in range(10):  # batches the writer takes in while the sink keeps failing
            made += [tokenmeter.record("openai", "gpt-4o", 1, 1) for _ in range(40)]
            assert not tokenmeter.flush(30)
    assert any("dropped the oldest" in r.message for r in caplog.records)
    flaky.healthy.set()
    assert tokenmeter.flush(30)
    got = [r.id for r in flaky.records]
    assert got == [r.id for r in made[-len(got) :]]
    assert 40 <= len(got) <= 50


def test_how_many_records_a_sink_dropped_is_said_when_it_stops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Drops are logged once per 10,000: a sink that dropped 24,000 records said '20,272 so
    far' last, and the total was never said."""
    tokenmeter.configure(sinks=[FlakySink()], max_queue=50)
    tokenmeter.record("openai", "gpt-4o", 1, 1)
    (writer,) = _pipeline._get().writers
    with caplog.at_level(logging.ERROR, logger="tokenmeter"):
        for _ in range(10):
            for _ in range(40):
                tokenmeter.record("openai", "gpt-4o", 1, 1)
            assert not tokenmeter.flush(30)
        tokenmeter.configure(sinks=["jsonl"])  # it stops
    said = [r.getMessage() for r in caplog.records if "dropped" in r.message]
    assert writer.dropped > 300
    assert said[-1] == f"tokenmeter sink FlakySink dropped {writer.dropped} records in all"


def test_records_waiting_for_a_writer_stay_out_of_the_collectors_oldest_generation() -> None:
    """A writer kept from its sink (here hung; in life, kept from the GIL by a CPU-bound caller)
    lets records wait. Waiting records that the garbage collector tracks get promoted to its
    oldest generation, whose growth makes the interpreter run full collections: a pause of
    every thread of the application, ~0.5 us per object of the whole heap."""
    hung = HungSink()
    tokenmeter.configure(sinks=[hung])
    tokenmeter.record("openai", "gpt-4o", 1, 1)
    hung.entered.wait(30)  # the writer is now stuck inside write(): the rest wait
    with tokenmeter.session("job", tags={"customer": "acme"}):
        for _ in range(300):  # the writer is behind from here on
            tokenmeter.record("openai", "gpt-4o", 1, 1)
        gc.collect()
        tracked = len(gc.get_objects())
        for i in range(1_000):
            tokenmeter.record("openai", "gpt-4o", 10 + i, 5, tags={"run": "nightly"})
        gc.collect(0)
        gc.collect(1)
        added = len(gc.get_objects()) - tracked
    hung.release.set()
    assert tokenmeter.flush(30)
    assert len(hung.records) == 1 + 300 + 1_000
    assert added < 100, f"{added} tracked objects for 1,000 waiting records"


def test_a_sink_gets_each_record_exactly_as_it_was_made() -> None:
    """Records queued behind a backlog wait packed as plain values; the sink still gets equal
    UsageRecords, field by field in the model's order, with each Decimal's exponent and each
    mapping kept."""
    sink = HungSink()
    tokenmeter.configure(sinks=[sink])
    tokenmeter.record("openai", "gpt-4o", 1, 1)
    sink.entered.wait(30)
    for _ in range(300):
        tokenmeter.record("openai", "gpt-4o", 1, 1)
    with tokenmeter.session("job", tags={"team": "search", "tier": "gold"}):
        made = [
            tokenmeter.record("openai", "gpt-4o", 1_000, 200, cache_read_tokens=300),
            tokenmeter.record("openai", "gpt-4o", 10, 5, tags={"run": "1"}),
            tokenmeter.record(
                "openai",
                "gpt-4o",
                700,
                1_290,
                modalities={"output_image": 1_290},
                tool_requests={"web_search": 2},
            ),
            tokenmeter.record("nowhere", "unpriced-model", 3, 4),  # no price: no breakdown
            tokenmeter.record("openai", "gpt-4o", 0, 0),
        ]
    sink.release.set()
    assert tokenmeter.flush(30)
    got = sink.records[-len(made) :]
    assert made[3].cost_breakdown is None and made[2].tool_requests
    assert [list(r.__dict__) for r in got] == [list(r.__dict__) for r in made]
    assert [[repr(v) for v in r.__dict__.values()] for r in got] == [
        [repr(v) for v in r.__dict__.values()] for r in made
    ]
    assert got == made


class HungSQLiteSink(Held, SQLiteSink):
    """The SQLite sink, held before each insert."""

    def _write_rows(self, rows: Sequence[tuple[Any, ...]]) -> None:
        self.hold()
        super()._write_rows(rows)


class CopyingSQLiteSink(SQLiteSink):
    """A user's SQLite sink that also keeps what its ``write`` is given."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.seen: list[UsageRecord] = []

    def write(self, records: Sequence[UsageRecord]) -> None:
        self.seen.extend(records)
        super().write(records)


def test_the_sqlite_sink_stores_the_rows_made_on_the_callers_thread(tmp_path: Path) -> None:
    """The SQLite sink's rows are made when the records are, and wait as rows (plain values,
    never packed): the database holds each record as made, exactly as its ``write`` would."""
    sink = HungSQLiteSink(tmp_path / "usage.db")
    tokenmeter.configure(sinks=[sink])
    tokenmeter.record("openai", "gpt-4o", 1, 1)
    sink.entered.wait(30)
    with tokenmeter.session("job", tags={"team": "search"}):
        made = [
            tokenmeter.record(
                "openai",
                "gpt-4o",
                1_000 + i,
                200,
                cache_read_tokens=300,
                tags={"run": str(i)} if i % 2 else None,
                modalities={"output_image": 100} if i % 3 else None,
                tool_requests={"web_search": 2} if i % 5 else None,
            )
            for i in range(300)
        ]
    assert _pipeline._pipeline is not None and not _pipeline._pipeline._backlog
    waiting = [i for i in _pipeline._pipeline.writers[0]._buffer if type(i) is not SessionInfo]
    assert len(waiting) == 300
    assert all(type(row) is tuple and len(row) == 27 for row in waiting)
    sink.release.set()
    assert tokenmeter.flush(30)
    reference = SQLiteSink(tmp_path / "reference.db")
    reference.write(made)
    reference.close()
    sql = "SELECT * FROM records WHERE input_tokens >= 1000 ORDER BY id"
    with (
        sqlite3.connect(tmp_path / "usage.db") as stored,
        sqlite3.connect(tmp_path / "reference.db") as expected,
    ):
        rows = stored.execute(sql).fetchall()
        assert len(rows) == 300
        assert rows == expected.execute(sql).fetchall()


def test_a_subclass_that_overrides_write_gets_every_record_through_it(tmp_path: Path) -> None:
    """The SQLite sink's own shortcut for packed records is not taken for a subclass with a
    ``write`` of its own: behind a backlog too, every record goes through that ``write``."""
    sink = CopyingSQLiteSink(tmp_path / "usage.db")
    hung = HungSink()
    tokenmeter.configure(sinks=[sink, hung])  # the hung sink makes the backlog
    tokenmeter.record("openai", "gpt-4o", 1, 1)
    hung.entered.wait(30)
    made = [tokenmeter.record("openai", "gpt-4o", 10 + i, 5) for i in range(400)]
    assert _pipeline._pipeline is not None and _pipeline._pipeline._backlog
    hung.release.set()
    assert tokenmeter.flush(30)
    assert sink.seen[-400:] == made
    assert all(type(r) is UsageRecord for r in sink.seen)


class BatchCountingSink(InMemorySink):
    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def write(self, records: Sequence[UsageRecord]) -> None:
        self.batches.append(len(records))
        super().write(records)


def test_records_are_written_in_batches_of_the_flush_size() -> None:
    """With the interval out of the way, the writer wakes only when a full batch waits, and
    hands it to the sink in chunks."""
    sink = BatchCountingSink()
    tokenmeter.configure(sinks=[sink])
    _pipeline.set_sinks(lambda: [sink], flush_interval=3600)
    made = 3 * _pipeline._FLUSH_AT
    for _ in range(made):
        tokenmeter.record("openai", "gpt-4o", 1, 1)
    wait_for(lambda: len(sink.records) >= 2 * _pipeline._FLUSH_AT, "full batches written")
    assert tokenmeter.flush(30)
    assert len(sink.records) == made
    # Not one write per record: full chunks, a short one where a batch ends.
    assert max(sink.batches) == _pipeline._CHUNK
    assert len(sink.batches) <= 2 * made // _pipeline._CHUNK, sink.batches


def test_a_call_made_after_a_delivery_waits_for_the_next_gathering_to_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A writer delivers once per interval. The records it made itself in a delivery woke it
    again, and the first call after that ended its next gathering at once: it delivered once
    per call (one SQLite transaction and a GIL hand-over each, a CPU-bound stream's ~1 %)."""
    sink = HungSink()
    monkeypatch.setattr(_pipeline, "make_later", lambda session, call: tokenmeter.record(*call))
    tokenmeter.configure(sinks=[sink])
    _pipeline.set_sinks(lambda: [sink], flush_interval=0.05)
    (writer,) = _pipeline._get().writers
    _pipeline.later(None, ("openai", "gpt-4o", 1, 1))
    assert sink.entered.wait(30)  # its delivery made the record, and writes it
    writer.interval = 3600.0
    sink.release.set()
    wait_for(lambda: len(sink.records) == 1, "the first delivery")
    time.sleep(0.2)  # the writer is gathering again
    _pipeline.later(None, ("openai", "gpt-4o", 2, 2))
    time.sleep(1.0)
    assert len(sink.records) == 1  # gathering for the interval, not ended by the call
    assert tokenmeter.flush(30)
    assert [r.usage.input_tokens for r in sink.records] == [1, 2]


def test_a_full_batch_of_calls_waiting_for_their_records_ends_the_gathering(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sink = BatchCountingSink()
    monkeypatch.setattr(_pipeline, "make_later", lambda session, call: tokenmeter.record(*call))
    tokenmeter.configure(sinks=[sink])
    _pipeline.set_sinks(lambda: [sink], flush_interval=3600)
    _pipeline._get()  # its writers, which a call finds at work (``can_make_later``)
    for _ in range(_pipeline._FLUSH_AT):
        _pipeline.later(None, ("openai", "gpt-4o", 1, 1))
    wait_for(lambda: len(sink.records) == _pipeline._FLUSH_AT, "a full batch written")


def test_a_small_max_queue_ends_the_gathering_at_its_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The writers' batch is half of max_queue below 2,000: calls waiting for their records
    ended the gathering only at 1,000, so with max_queue=200 the calls past it were made on the
    callers' threads while the writer gathered, and its buffer overflowed (144 of 800 records
    dropped, the SQLite sink healthy and idle)."""
    sink = InMemorySink()
    monkeypatch.setattr(_pipeline, "make_later", lambda session, call: tokenmeter.record(*call))
    tokenmeter.configure(sinks=[sink])
    _pipeline.set_sinks(lambda: [sink], max_queue=20, flush_interval=3600)
    (writer,) = _pipeline._get().writers  # a call finds it at work (``can_make_later``)

    def gathering() -> bool:  # woken by the first call, the writer waits in its interval
        frame = sys._current_frames().get(writer._thread.ident or 0)
        return frame is not None and frame.f_locals.get("self") is writer._hurry

    _pipeline.later(None, ("openai", "gpt-4o", 1, 1))
    wait_for(gathering, "the writer gathering")
    for _ in range(9):
        _pipeline.later(None, ("openai", "gpt-4o", 1, 1))
    wait_for(lambda: len(sink.records) == 10, "a batch of 10 written")


def test_a_writer_makes_no_more_records_than_a_batch_between_two_writes() -> None:
    """A writer's delivery made every waiting call's record into its buffer at once: more
    than max_queue of them, and the oldest were dropped, the sink healthy."""
    sink = BatchCountingSink()
    tokenmeter.configure(sinks=[sink])
    _pipeline.set_sinks(lambda: [sink], max_queue=20, flush_interval=3600)
    (writer,) = _pipeline._get().writers
    made: list[int] = []

    def make(session: object, call: tuple[int]) -> None:
        made.append(call[0])
        tokenmeter.record("openai", "gpt-4o", call[0], 1)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_pipeline, "make_later", make)
        calls = [entry for i in range(1, 31) for entry in (None, (i,))]
        patch.setattr(_pipeline, "_later", type(_pipeline._later)(calls))
        writer._rouse()
        wait_for(lambda: len(sink.records) == 30, "the 30 records written")
    assert writer.dropped == 0
    assert max(sink.batches) <= writer.batch == 10
    assert [r.usage.input_tokens for r in sink.records] == list(range(1, 31))


def test_flush_says_false_when_records_were_dropped() -> None:
    """A full buffer drops its oldest records: flush() still said True ("everything recorded
    so far is in every sink") after 250 of 320 records were dropped."""
    sink = HungSink()
    tokenmeter.configure(sinks=[sink])
    _pipeline.set_sinks(lambda: [sink], max_queue=2)
    tokenmeter.record("openai", "gpt-4o", 1, 1)
    assert sink.entered.wait(30)  # the writer is inside its write: the next ones wait
    for _ in range(5):
        tokenmeter.record("openai", "gpt-4o", 1, 1)
    sink.release.set()
    assert not tokenmeter.flush(30)  # 3 of them were dropped
    assert len(sink.records) == 3
    tokenmeter.record("openai", "gpt-4o", 1, 1)
    assert tokenmeter.flush(30)  # none since


def test_a_record_a_sink_can_never_accept_is_set_aside_not_retried_forever(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The poison record is set aside and the others written; the flush() that waited for it
    says False (it said True: "every record is in every sink" though one was not), the next one,
    with nothing set aside meanwhile, True."""
    sink = Picky()
    sink.release.set()
    tokenmeter.configure(sinks=[sink])
    with caplog.at_level(logging.ERROR, logger="tokenmeter"):
        before = [tokenmeter.record("openai", "gpt-4o", 1, 1) for _ in range(5)]
        bad = tokenmeter.record("openai", "poison", 1, 1)
        after = [tokenmeter.record("openai", "gpt-4o", 1, 1) for _ in range(5)]
        assert not tokenmeter.flush(30)  # one of them set aside, not written
        later = tokenmeter.record("openai", "gpt-4o", 2, 2)
        assert tokenmeter.flush(30)
    assert [r.id for r in sink.records] == [r.id for r in [*before, *after, later]]
    lines = (Path(".tokenmeter") / "quarantine.jsonl").read_text().splitlines()
    assert len(lines) == 1
    kept = json.loads(lines[0])
    assert kept["record"]["id"] == bad.id and "cannot store this one" in kept["error"]
    assert kept["sink"] == "Picky"
    assert len([r for r in caplog.records if "set aside" in r.message]) == 1


class Unprintable(Exception):
    """An exception of a user sink's whose message cannot be made."""

    def __str__(self) -> str:
        raise RuntimeError("no message")


class PickyUnprintable(InMemorySink):
    """Refuses the record of the model "poison" with an exception that cannot be printed."""

    def write(self, records: Sequence[UsageRecord]) -> None:
        if any(r.model_name == "poison" for r in records):
            raise Unprintable()
        super().write(records)


def test_a_poison_record_whose_error_cannot_be_printed_is_set_aside_once() -> None:
    """Setting the record aside wrote the error's message, which raised: the writer lost its
    place in the one-at-a-time pass and wrote the records around the poison one again and again
    (hundreds of duplicates, some records never written, a traceback logged every time)."""
    sink = PickyUnprintable()
    tokenmeter.configure(sinks=[sink])
    made = [tokenmeter.record("openai", "gpt-4o", 1, 1) for _ in range(5)]
    bad = tokenmeter.record("openai", "poison", 1, 1)
    made += [tokenmeter.record("openai", "gpt-4o", 1, 1) for _ in range(5)]
    assert not tokenmeter.flush(30)  # the poison one set aside
    assert [r.id for r in sink.records] == [r.id for r in made]
    kept = [json.loads(line) for line in (Path(".tokenmeter") / "quarantine.jsonl").open()]
    assert [k["record"]["id"] for k in kept] == [bad.id]
    assert kept[0]["error"].startswith("Unprintable")


QUARANTINE_ON_A_FULL_DISK = """
import resource, signal, sys, tokenmeter
from tokenmeter.sinks import InMemorySink

class Picky(InMemorySink):
    def write(self, records):
        if any(r.model_name == "poison" for r in records):
            raise ValueError("cannot store this one")
        super().write(records)

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
tokenmeter.configure(sinks=[Picky()], directory=sys.argv[1])
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
for limit in (100, soft):  # a disk with room for 100 bytes, then room again
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    for model in ("gpt-4o", "poison", "gpt-4o", "gpt-4o"):
        tokenmeter.record("openai", model, 1, 1)
    assert not tokenmeter.flush(30)  # the poison record lost, then set aside: not written
"""


def test_a_record_set_aside_on_a_full_disk_leaves_no_torn_line(tmp_path: Path) -> None:
    """The quarantine file filled the disk part-way through a line: the torn line stayed, and
    the next record set aside was glued to it, unreadable."""
    result = subprocess.run(
        [sys.executable, "-c", QUARANTINE_ON_A_FULL_DISK, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "could not be set aside" in result.stderr  # the first one: the disk was full
    lines = (tmp_path / "quarantine.jsonl").read_text().splitlines()
    assert [json.loads(line)["record"]["model_name"] for line in lines] == ["poison"]


#: A sink whose every write fails (a database down), for the scripts of child processes below.
DOWN_SINK = """
class Down:
    def write(self, records):
        raise ConnectionError("database unreachable")
    def flush(self):
        pass
    def close(self):
        pass
"""

SET_ASIDE_ON_A_NEARLY_FULL_DISK = (
    """
import resource, signal, sys, tokenmeter
"""
    + DOWN_SINK
    + """
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
tokenmeter.configure(sinks=[Down()], directory=sys.argv[1])
for _ in range(200):
    tokenmeter.record("openai", "gpt-4o", 1, 1)
tokenmeter.flush(30)
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), hard))
tokenmeter.configure(sinks=[], directory=sys.argv[1])  # Down stops: its records are set aside
"""
)


def test_a_stopping_sinks_records_fill_a_nearly_full_disk(tmp_path: Path) -> None:
    """A stopping sink's records are set aside in blocks of up to 1,000 lines, each whole or
    not at all: on a disk with room for half of them, none was kept (0 of 200; 100 before the
    blocks). A block the disk has no room for is tried in halves: what fits is kept, each line
    whole, and the lost ones are counted exactly."""
    room = 200 * 800 // 2  # a line is some 780 bytes
    result = subprocess.run(
        [sys.executable, "-c", SET_ASIDE_ON_A_NEARLY_FULL_DISK, str(tmp_path), str(room)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "quarantine.jsonl").read_bytes().splitlines(keepends=True)
    kept = [json.loads(line)["record"]["id"] for line in lines]
    assert 0 < len(kept) < 200 and len(set(kept)) == len(kept)
    assert room - sum(map(len, lines)) < max(map(len, lines))  # no room for one more
    lost = 200 - len(kept)
    assert f"{lost} records it rejected when it stopped could not be set aside" in result.stderr


class Restarting(InMemorySink):
    """Refuses batches; one record at a time, it is down for its first write, up for the next
    three, then down again until ``up`` is set: a server restarting during the writer's
    one-at-a-time pass."""

    def __init__(self) -> None:
        super().__init__()
        self.singles = 0
        self.up = threading.Event()

    def write(self, records: Sequence[UsageRecord]) -> None:
        if not self.up.is_set():
            if len(records) > 1:
                raise OSError("batch refused")
            self.singles += 1
            if self.singles == 1 or self.singles > 4:
                raise OSError("the database system is starting up")
        super().write(records)


def test_records_that_fail_while_a_sink_restarts_are_never_set_aside() -> None:
    sink = Restarting()
    tokenmeter.configure(sinks=[sink])
    made = [tokenmeter.record("openai", "gpt-4o", 1, 1) for _ in range(20)]
    wait_for(lambda: sink.singles > 6, "the one-at-a-time pass met the sink down again")
    sink.up.set()
    assert tokenmeter.flush(30)
    assert sorted(r.id for r in sink.records) == sorted(r.id for r in made)
    assert not (Path(".tokenmeter") / "quarantine.jsonl").exists()


def test_a_poison_record_queued_behind_a_backlog_is_set_aside_as_a_record() -> None:
    """Behind a backlog, records wait packed: the one set aside is still written out as the
    record's JSON, and every other record reaches the sink."""
    sink = Picky()
    tokenmeter.configure(sinks=[sink])
    made = [tokenmeter.record("openai", "gpt-4o", 1, 1)]
    sink.entered.wait(30)
    made += [tokenmeter.record("openai", "gpt-4o", 1, 1) for _ in range(300)]
    bad = tokenmeter.record("openai", "poison", 1, 1, tags={"why": "test"})
    made += [tokenmeter.record("openai", "gpt-4o", 1, 1) for _ in range(5)]
    sink.release.set()
    assert not tokenmeter.flush(30)  # the poison one set aside
    assert [r.id for r in sink.records] == [r.id for r in made]
    kept = json.loads((Path(".tokenmeter") / "quarantine.jsonl").read_text())
    assert kept["record"] == bad.to_json_dict()


class TakesOneThenFull(HungSink):
    """Takes its first write once ``release`` is set, then one more single record, and
    refuses every other write with the disk's error: a disk that fills up while the writer has
    a backlog."""

    taken = 0

    def write(self, records: Sequence[UsageRecord]) -> None:
        self.hold()
        if self.taken == 0 or (self.taken == 1 and len(records) == 1):
            self.taken += 1
            InMemorySink.write(self, records)
            return
        raise OSError(28, "No space left on device")


def test_records_set_aside_behind_a_backlog_keep_the_sinks_own_error() -> None:
    """Records made before the sink failed wait as records, those queued behind its backlog
    packed: the isolation pass put both back as one run, whose next write handed the packed
    ones to the sink, and at the stop all 299 were set aside under "AttributeError: 'tuple'
    object has no attribute ..." instead of the disk's error."""
    sink = TakesOneThenFull()
    tokenmeter.configure(sinks=[sink])
    made = [tokenmeter.record("openai", "gpt-4o", 1, 1)]
    sink.entered.wait(30)
    made += [tokenmeter.record("openai", "gpt-4o", 1, 1) for _ in range(299)]
    sink.release.set()
    assert not tokenmeter.flush(30)
    tokenmeter.configure(sinks=[])  # the sink stops: what it refuses is set aside
    kept = [json.loads(line) for line in (Path(".tokenmeter") / "quarantine.jsonl").open()]
    assert {line["error"] for line in kept} == {"OSError: [Errno 28] No space left on device"}
    stored = [r.id for r in sink.records] + [line["record"]["id"] for line in kept]
    assert sorted(stored) == sorted(r.id for r in made)


def test_a_row_the_database_refuses_is_set_aside_as_its_record(tmp_path: Path) -> None:
    """The SQLite sink's rows are made on the caller's thread and wait as rows: one that the
    database refuses (here by a trigger) is set aside as its record's JSON, and every other
    record is stored."""
    path = tmp_path / "usage.db"
    sink = SQLiteSink(path)
    sink._connection().execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON records WHEN NEW.model_name = 'poison' "
        "BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END"
    )
    tokenmeter.configure(sinks=[sink])
    made = [tokenmeter.record("openai", "gpt-4o", 1, 1) for _ in range(3)]
    with tokenmeter.session("job", tags={"team": "search"}):
        bad = tokenmeter.record(
            "openai", "poison", 1_000, 20, cache_read_tokens=100, modalities={"input_audio": 3}
        )
    made += [tokenmeter.record("openai", "gpt-4o", 1, 1) for _ in range(3)]
    wait_for(lambda: tokenmeter.flush(30), "the poison row set aside")
    with sqlite3.connect(path) as conn:
        stored = [row[0] for row in conn.execute("SELECT id FROM records ORDER BY id")]
    assert stored == sorted(r.id for r in made)
    (kept,) = [json.loads(line) for line in (Path(".tokenmeter") / "quarantine.jsonl").open()]
    assert kept["sink"] == "SQLiteSink"
    assert "refused by a trigger" in kept["error"]
    assert kept["record"] == bad.to_json_dict()


class RecordsOnlyPicky:
    """A user sink with ``write`` only (no ``write_sessions``) that refuses the model
    "poison"."""

    def __init__(self) -> None:
        self.records: list[UsageRecord] = []

    def write(self, records: Sequence[UsageRecord]) -> None:
        if any(r.model_name == "poison" for r in records):
            raise ValueError("cannot store this one")
        self.records.extend(records)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.mark.parametrize("sink_class", [Picky, RecordsOnlyPicky])
def test_a_sessions_only_record_that_is_poison_is_set_aside(sink_class: type) -> None:
    """The poison record is its session's only one, so sessions are queued on both sides of
    it: isolated alone, it never met a success, and the sink was taken for down for good. The
    runs behind it show the sink works (a run of sessions only where the sink stores them)."""
    sink = sink_class()
    if isinstance(sink, Picky):
        sink.release.set()
    tokenmeter.configure(sinks=[sink])
    made = [tokenmeter.record("openai", "gpt-4o", 1, 1)]
    with tokenmeter.session("job"):
        bad = tokenmeter.record("openai", "poison", 1, 1)
    with tokenmeter.session("next"):
        made.append(tokenmeter.record("openai", "gpt-4o", 1, 1))
    wait_for(lambda: tokenmeter.flush(30), "the poison record set aside")
    assert [r.id for r in sink.records] == [r.id for r in made]
    kept = [json.loads(line) for line in (Path(".tokenmeter") / "quarantine.jsonl").open()]
    assert [k["record"]["id"] for k in kept] == [bad.id]


def test_a_poison_record_in_a_trickle_of_flushes_is_set_aside() -> None:
    """One record per flush() (a function run per request): no pass ever holds two successes
    after the poison record, which is accused once and then judged after the next success,
    instead of holding every later flush() back for good."""
    sink = Picky()
    sink.release.set()
    tokenmeter.configure(sinks=[sink])
    made = [tokenmeter.record("openai", "gpt-4o", 1, 1)]
    bad = tokenmeter.record("openai", "poison", 1, 1)
    assert not tokenmeter.flush(30)  # the poison record last: nothing proves it bad yet
    made.append(tokenmeter.record("openai", "gpt-4o", 1, 1))
    tokenmeter.flush(30)  # accused: it failed right after the sink took a record
    made.append(tokenmeter.record("openai", "gpt-4o", 1, 1))
    assert not tokenmeter.flush(30)  # failed after the next one too: set aside
    assert [r.id for r in sink.records] == [r.id for r in made]
    kept = [json.loads(line) for line in (Path(".tokenmeter") / "quarantine.jsonl").open()]
    assert [k["record"]["id"] for k in kept] == [bad.id]
    made.append(tokenmeter.record("openai", "gpt-4o", 1, 1))
    assert tokenmeter.flush(30)
    assert [r.id for r in sink.records] == [r.id for r in made]


@pytest.mark.parametrize("poison", [2, 3])
def test_poison_records_in_a_row_never_hold_back_the_records_behind_them(poison: int) -> None:
    """Two failures with no success before them were taken for a sink that is down: two poison
    records at the head of the queue were retried for ever, and none of the records behind them
    was written (0 of 59, a flush() each, in 20 s). A later record now shows the sink works."""
    sink = Picky()
    sink.release.set()
    tokenmeter.configure(sinks=[sink])
    bad = [tokenmeter.record("openai", "poison", 1, 1) for _ in range(poison)]
    made = []
    for _ in range(4):  # one record per flush(), as a function run per request makes
        made.append(tokenmeter.record("openai", "gpt-4o", 1, 1))
        tokenmeter.flush(30)
    wait_for(lambda: tokenmeter.flush(30), "the poison records set aside")
    assert [r.id for r in sink.records] == [r.id for r in made]
    kept = [json.loads(line) for line in (Path(".tokenmeter") / "quarantine.jsonl").open()]
    assert sorted(k["record"]["id"] for k in kept) == sorted(r.id for r in bad)


def test_poison_records_in_a_row_are_set_aside_when_their_sink_stops() -> None:
    """The stopping sink's last tries hit the same "two in a row: the sink is down", and the
    good records behind two poison ones were set aside with them (12 lines for 2 refused)."""
    sink = Picky()
    sink.release.set()
    _alone_gathering_for_an_hour(sink)  # one batch, written when the sink stops
    bad = [tokenmeter.record("openai", "poison", 1, 1) for _ in range(2)]
    made = [tokenmeter.record("openai", "gpt-4o", 1, 1) for _ in range(10)]
    tokenmeter.configure(sinks=[InMemorySink()])
    assert sorted(r.id for r in sink.records) == sorted(r.id for r in made)  # the last one first
    kept = [json.loads(line) for line in (Path(".tokenmeter") / "quarantine.jsonl").open()]
    assert [k["record"]["id"] for k in kept] == [r.id for r in bad]


class RefusesSession(InMemorySink):
    """Stores every session but those named "refused" (a sink that cannot map its tags)."""

    def write_sessions(self, sessions: Sequence[SessionInfo]) -> None:
        if any(s.name == "refused" for s in sessions):
            raise ValueError("cannot store this session")
        super().write_sessions(sessions)


def test_a_refused_session_never_holds_back_the_sessions_behind_it() -> None:
    """A session the sink refuses is two failing items, its start and its end: taken for a sink
    that is down, they held back every later session (0 of 50 stored, a flush() each)."""
    sink = RefusesSession()
    tokenmeter.configure(sinks=[sink])
    with tokenmeter.session("refused") as refused:
        tokenmeter.record("openai", "gpt-4o", 1, 1)
    later = []
    for _ in range(4):
        with tokenmeter.session("next") as session:
            tokenmeter.record("openai", "gpt-4o", 1, 1)
        later.append(session.id)
        tokenmeter.flush(30)
    wait_for(lambda: tokenmeter.flush(30), "the refused session set aside")
    assert sorted(sink.sessions) == sorted(later)
    assert all(sink.sessions[id_].status == "completed" for id_ in later)
    assert len(sink.records) == 5
    kept = [json.loads(line) for line in (Path(".tokenmeter") / "quarantine.jsonl").open()]
    assert [k["record"]["id"] for k in kept] == [refused.id, refused.id]  # its start and end


def test_poison_records_among_the_later_ones_never_hold_back_the_good_ones() -> None:
    """Three poison records in a row, then good and poison ones alternating, in one batch: the
    later record tried to show the sink works was the last, poison too, every pass, and the
    good records were set aside with the poison ones when the sink stopped. Each pass now tries
    another one."""
    sink = Picky()
    sink.release.set()
    _alone_gathering_for_an_hour(sink)  # one batch, written when the sink stops
    made, bad = [], []
    for model in ["poison"] * 3 + ["gpt-4o", "poison", "gpt-4o", "poison"]:
        (made if model == "gpt-4o" else bad).append(tokenmeter.record("openai", model, 1, 1))
    tokenmeter.configure(sinks=[InMemorySink()])
    assert sorted(r.id for r in sink.records) == sorted(r.id for r in made)
    kept = [json.loads(line) for line in (Path(".tokenmeter") / "quarantine.jsonl").open()]
    assert sorted(k["record"]["id"] for k in kept) == sorted(r.id for r in bad)


class RefusesTenant(InMemorySink):
    """Refuses the records of the tenant "blocked" and its session's end (a table it has no
    rights on), and takes the rest."""

    def write(self, records: Sequence[UsageRecord]) -> None:
        if any(r.tags.get("tenant") == "blocked" for r in records):
            raise PermissionError("tenant 'blocked'")
        super().write(records)

    def write_sessions(self, sessions: Sequence[SessionInfo]) -> None:
        if any(s.tags.get("tenant") == "blocked" and s.status != "active" for s in sessions):
            raise PermissionError("tenant 'blocked'")
        super().write_sessions(sessions)


@pytest.mark.parametrize("calls", [1, 2])
def test_a_refused_record_and_session_end_never_hold_back_the_sessions_behind_them(
    calls: int,
) -> None:
    """A refused record, then its session's refused end row: the run of sessions tried to show
    the sink works held that end row, and failed, so the sink was taken for down, and not one
    later record was written (0 of 5). Each pass now tries another run: a later run of records.
    Two refused records in a row had no later one of their kind to try: a later run is tried."""
    sink = RefusesTenant()
    tokenmeter.configure(sinks=[sink])
    with tokenmeter.session("job", tags={"tenant": "blocked"}) as refused:
        bad = [tokenmeter.record("openai", "gpt-4o", 1, 1) for _ in range(calls)]
    made = []
    for index in range(5):
        with tokenmeter.session(f"job-{index}", tags={"tenant": "acme"}):
            made.append(tokenmeter.record("openai", "gpt-4o", 1, 1))
    wait_for(lambda: tokenmeter.flush(30) or len(sink.records) == 5, "the later records written")
    made.append(tokenmeter.record("openai", "gpt-4o", 1, 1))  # after which the refused one is
    wait_for(lambda: tokenmeter.flush(30), "the refused items set aside")  # judged poison
    assert [r.id for r in sink.records] == [r.id for r in made]
    assert all(sink.sessions[r.session_id].status == "completed" for r in made[:5])
    kept = [json.loads(line) for line in (Path(".tokenmeter") / "quarantine.jsonl").open()]
    assert sorted(k["record"]["id"] for k in kept) == sorted([*(r.id for r in bad), refused.id])


class RecordsDown(InMemorySink):
    """Its records fail (a table locked) while its sessions are written, until ``down`` is
    cleared."""

    down = True

    def write(self, records: Sequence[UsageRecord]) -> None:
        if self.down:
            raise TimeoutError("canceling statement due to statement timeout")
        super().write(records)


@pytest.mark.parametrize("calls", [1, 2])
def test_records_failing_while_sessions_are_written_are_kept_not_set_aside(calls: int) -> None:
    """A sink whose records fail for a while and whose sessions go through: the session's end
    row, written ahead to show the sink works, was taken as proof, and the session's records
    were set aside as poison. Only records show that records can be written."""
    sink = RecordsDown()
    tokenmeter.configure(sinks=[sink])
    with tokenmeter.session("job"):
        made = [tokenmeter.record("openai", "gpt-4o", 1, 1) for _ in range(calls)]
    writer = _pipeline._writers()[0]
    wait_for(lambda: writer._failures > _pipeline._ISOLATE_AFTER + 1, "isolated passes")
    sink.down = False
    assert tokenmeter.flush(30)
    assert [r.id for r in sink.records] == [r.id for r in made]
    assert not (Path(".tokenmeter") / "quarantine.jsonl").exists()


def test_sessions_behind_a_poison_record_are_written_without_waiting_for_a_record() -> None:
    """A poison record, then sessions that made no call: only a run of records shows that
    records can be written, and with none behind it the sessions waited for the next record
    (or the exit). They are written ahead of it (the two kinds are written apart)."""
    sink = Picky()
    sink.release.set()
    tokenmeter.configure(sinks=[sink])
    tokenmeter.record("openai", "poison", 1, 1)
    later = []
    for index in range(3):
        with tokenmeter.session(f"later{index}") as session:
            later.append(session.id)

    def ended() -> bool:
        sessions = dict(sink.sessions)
        return all(id_ in sessions and sessions[id_].ended_at is not None for id_ in later)

    wait_for(ended, "the sessions written")


def test_good_records_behind_poison_ones_and_a_session_row_are_written_as_the_app_runs() -> None:
    """Two poison records (a session's), then the session's end row, then a session whose
    records are good, poison and good: the later run of records was written whole to show the
    sink works, refused for its poison record every pass, so the two good records were never
    written while the app ran (flush() False for good) and were set aside at the exit with the
    poison ones. One record at a time is written to show it now, the first one behind."""
    sink = Picky()
    sink.release.set()
    tokenmeter.configure(sinks=[sink])
    with tokenmeter.session("a"):
        bad = [tokenmeter.record("openai", "poison", 1, 1) for _ in range(2)]
    tokenmeter.flush(5)
    made = []
    with tokenmeter.session("b"):
        made.append(tokenmeter.record("openai", "gpt-4o", 1, 1))
        bad.append(tokenmeter.record("openai", "poison", 1, 1))
        made.append(tokenmeter.record("openai", "gpt-4o", 1, 1))

    def written() -> bool:
        tokenmeter.flush(5)
        return len(sink.records) == len(made)

    wait_for(written, "the good records written")
    tokenmeter.configure(sinks=[InMemorySink()])  # it stops: the last poison one set aside
    assert [r.id for r in sink.records] == [r.id for r in made]  # in order
    kept = [json.loads(line) for line in (Path(".tokenmeter") / "quarantine.jsonl").open()]
    assert sorted(k["record"]["id"] for k in kept) == sorted(r.id for r in bad)


class PickyAboutSessions(RefusesSession):
    """Refuses the records of the model "poison" and the sessions named "refused"."""

    def write(self, records: Sequence[UsageRecord]) -> None:
        if any(r.model_name == "poison" for r in records):
            raise ValueError("cannot store this one")
        super().write(records)


def _ended_then_set_aside(sink: Any, job: tokenmeter.Session) -> list[tuple[str, Any]]:
    """Wait for ``job``'s end in ``sink``, then stop the sink: what it set aside, (id, status)."""

    def ended() -> bool:
        tokenmeter.flush(5)
        return job.id in sink.sessions and sink.sessions[job.id].status == "completed"

    wait_for(ended, "the good session's end written")
    tokenmeter.configure(sinks=[InMemorySink()])  # it stops: what it refuses is set aside
    quarantine = Path(".tokenmeter") / "quarantine.jsonl"
    kept = [json.loads(line)["record"] for line in quarantine.open()]
    return sorted((k["id"], k.get("status")) for k in kept)


def test_a_refused_session_behind_a_poison_record_never_holds_back_a_good_sessions_end() -> None:
    """A session whose only record is poison, then a session the sink refuses, delivered
    together: their rows, written ahead of the poison record as one run, were refused for the
    refused session's, so the good session stayed "active" in the sink while the app ran, and
    its end was set aside with the refused session at the exit. They are written one session
    at a time now: only the refused one waits."""
    sink = PickyAboutSessions()
    _alone_gathering_for_an_hour(sink)  # one batch
    with tokenmeter.session("job") as job:
        bad = tokenmeter.record("openai", "poison", 1, 1)
    with tokenmeter.session("refused") as refused:
        pass

    assert _ended_then_set_aside(sink, job) == sorted(
        [(bad.id, "ok"), (refused.id, "active"), (refused.id, "completed")]
    )


def test_a_sink_down_through_isolated_passes_has_nothing_set_aside() -> None:
    """Every write fails, with many records waiting in runs of their own: each isolated pass
    tries a later record too, which fails as well, so nothing is taken for poison; all of them
    are written, in order, once the sink is back."""
    sink = FlakySink()
    tokenmeter.configure(sinks=[sink])
    made = []
    for _ in range(10):
        made.append(tokenmeter.record("openai", "gpt-4o", 1, 1))
        tokenmeter.flush(0.1)
    with tokenmeter.session("job"):
        made.append(tokenmeter.record("openai", "gpt-4o", 1, 1))
    wait_for(lambda: sink.failures >= 3 * _pipeline._ISOLATE_AFTER, "isolated passes")
    sink.healthy.set()
    assert tokenmeter.flush(30)
    assert [r.id for r in sink.records] == [r.id for r in made]
    assert list(sink.sessions) and not (Path(".tokenmeter") / "quarantine.jsonl").exists()


class CoinFlipSink(InMemorySink):
    """A user sink behind a flaky network: each write fails at random, half of them (seeded)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.coin = random.Random(seed)
        self.failures = 0

    def write(self, records: Sequence[UsageRecord]) -> None:
        if self.coin.random() < 0.5:
            self.failures += 1
            raise ConnectionError("connection reset by peer")
        super().write(records)


def test_a_sink_that_fails_at_random_gets_every_record_and_sets_none_aside() -> None:
    """Tried one at a time after three failed batches, a good record that failed, then failed
    once more right after the sink took another, then once more after the next, was set aside as
    if the sink could never store it: at half its writes failing, 58 of 2,000 records. Each of
    those "once more" is now many tries in a row, and a good record passes one of them."""
    sink = CoinFlipSink(seed=1)
    tokenmeter.configure(sinks=[sink])
    made = []
    for _ in range(20):
        made += [tokenmeter.record("openai", "gpt-4o", 1, 1) for _ in range(25)]
        tokenmeter.flush(30)
    wait_for(lambda: tokenmeter.flush(30), "every record written")
    assert sink.failures > 100  # the sink did fail half the time, isolated passes included
    assert sorted(r.id for r in sink.records) == sorted(r.id for r in made)
    assert not (Path(".tokenmeter") / "quarantine.jsonl").exists()


def _alone_gathering_for_an_hour(sink: object) -> None:
    """``sink`` as the only sink, its writer gathering records for an hour."""
    tokenmeter.configure(sinks=[sink])
    quarantine = Path(".tokenmeter") / "quarantine.jsonl"
    _pipeline.set_sinks(lambda: [sink], flush_interval=3600, quarantine=quarantine)


class FailsOnce(InMemorySink):
    """A user sink whose first write fails (a connection the server had closed), as do the
    next ``more``; then it takes every write."""

    def __init__(self, more: int = 0) -> None:
        super().__init__()
        self.failures = 0
        self.more = more

    def write(self, records: Sequence[UsageRecord]) -> None:
        if self.failures <= self.more:
            self.failures += 1
            raise ConnectionError("connection reset by peer")
        super().write(records)


@pytest.mark.parametrize("more", [0, 3])
def test_a_sink_replaced_right_after_one_failed_write_gets_its_records(more: int) -> None:
    """configure() stops the sink it replaces: one failed write then set aside every record the
    sink held, though its next write would have taken them. It gets a flush()'s tries now
    (back to back), the isolated pass of one record at a time included."""
    sink = FailsOnce(more)
    _alone_gathering_for_an_hour(sink)  # nothing is written before it stops
    made = [tokenmeter.record("openai", "gpt-4o", 1, 1) for _ in range(20)]
    assert not sink.failures
    tokenmeter.configure(sinks=[InMemorySink()])
    assert sink.failures == more + 1
    assert sorted(r.id for r in sink.records) == sorted(r.id for r in made)
    assert not (Path(".tokenmeter") / "quarantine.jsonl").exists()


class SlowToFail(InMemorySink):
    """A user sink whose server is gone: each write fails after a while (a connect timeout)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, records: Sequence[UsageRecord]) -> None:
        self.writes += 1
        time.sleep(0.1)
        raise TimeoutError("connect timed out")


def test_a_sink_slow_to_fail_when_replaced_is_not_tried_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its tries would keep its records past the exit, where they are lost: once the stop has
    taken ``_LAST_TRIES_FOR``, what it holds is set aside."""
    monkeypatch.setattr(_pipeline, "_LAST_TRIES_FOR", 0.05)
    sink = SlowToFail()
    _alone_gathering_for_an_hour(sink)
    made = [tokenmeter.record("openai", "gpt-4o", 1, 1) for _ in range(3)]
    tokenmeter.configure(sinks=[InMemorySink()])
    assert sink.writes == 1
    kept = [json.loads(line) for line in (Path(".tokenmeter") / "quarantine.jsonl").open()]
    assert [k["record"]["id"] for k in kept] == [r.id for r in made]


def test_a_record_still_refused_when_its_sink_stops_is_set_aside_not_lost() -> None:
    """The last record is poison: nothing behind it lets the sink prove it can store others, so
    it waits. When the sink stops (exit, or a new configuration), it is set aside with its
    error, and the records before it are written."""
    sink = Picky()
    sink.release.set()
    tokenmeter.configure(sinks=[sink])
    made = [tokenmeter.record("openai", "gpt-4o", 1, 1) for _ in range(5)]
    bad = tokenmeter.record("openai", "poison", 1, 1)
    assert not tokenmeter.flush(30)
    tokenmeter.configure(sinks=["jsonl"])  # the old pipeline stops
    assert [r.id for r in sink.records] == [r.id for r in made]
    kept = [json.loads(line) for line in (Path(".tokenmeter") / "quarantine.jsonl").open()]
    assert [k["record"]["id"] for k in kept] == [bad.id]
    assert kept[0]["error"] == "ValueError: cannot store this one"


class RecordsOnly(InMemorySink):
    """A user sink that stores records and left ``write_sessions`` unimplemented."""

    def write_sessions(self, sessions: Sequence[SessionInfo]) -> None:
        raise NotImplementedError


def test_sessions_a_sink_keeps_refusing_never_hold_back_its_records() -> None:
    """Its sessions failed at the head of its queue and were taken for the sink being down: no
    record of a session ever reached it (dropped at max_queue, set aside at exit)."""
    sink = RecordsOnly()
    tokenmeter.configure(sinks=[sink])
    with tokenmeter.session("job"):
        made = [tokenmeter.record("openai", "gpt-4o", 1, 1) for _ in range(10)]
    assert not tokenmeter.flush(30)  # the sessions are not written
    with tokenmeter.session("next"):
        made += [tokenmeter.record("openai", "gpt-4o", 1, 1) for _ in range(10)]
    tokenmeter.flush(30)
    assert [r.id for r in sink.records] == [r.id for r in made]
    tokenmeter.configure(sinks=["jsonl"])  # it stops: the sessions it refused are set aside
    kept = [json.loads(line) for line in (Path(".tokenmeter") / "quarantine.jsonl").open()]
    assert [k["record"]["name"] for k in kept] == ["job", "job", "next", "next"]
    assert [k["record"]["status"] for k in kept] == ["active", "completed"] * 2


class DownSink(InMemorySink):
    """A user sink whose server is down: every write fails."""

    def write(self, records: Sequence[UsageRecord]) -> None:
        raise OSError("server down")


def test_a_sink_down_when_replaced_has_its_records_set_aside_at_once() -> None:
    """A sink that refuses every write when it is stopped gets its five tries, no more: the
    records are set aside, not retried for ever."""
    sink = DownSink()
    _alone_gathering_for_an_hour(sink)  # nothing is written before it stops
    made = [tokenmeter.record("openai", "gpt-4o", 1, 1) for _ in range(20)]
    tokenmeter.configure(sinks=[InMemorySink()])
    kept = [json.loads(line) for line in (Path(".tokenmeter") / "quarantine.jsonl").open()]
    assert [k["record"]["id"] for k in kept] == [r.id for r in made]
    assert {k["error"] for k in kept} == {"OSError: server down"}


def test_a_stopping_sink_that_refuses_a_sessions_records_still_gets_its_end() -> None:
    """A sink that refuses every record and takes sessions: the session's end waited behind
    the records, was never offered to it, and was set aside with the records' error when the
    sink stopped: the sink kept the session "active" for ever."""
    sink = DownSink()
    tokenmeter.configure(sinks=[sink])
    with tokenmeter.session("job") as job:
        made = [tokenmeter.record("openai", "gpt-4o", 1, 1) for _ in range(2)]
    assert not tokenmeter.flush(30)
    tokenmeter.configure(sinks=[InMemorySink()])  # it stops
    assert sink.sessions[job.id].status == "completed"
    kept = [json.loads(line) for line in (Path(".tokenmeter") / "quarantine.jsonl").open()]
    assert [k["record"]["id"] for k in kept] == [r.id for r in made]  # records only


class DownRefusingSession(DownSink):
    """Down for records; stores every session but those named "refused"."""

    def write_sessions(self, sessions: Sequence[SessionInfo]) -> None:
        if any(s.name == "refused" for s in sessions):
            raise ValueError("cannot store this session")
        super().write_sessions(sessions)


def test_a_stopping_sink_gets_the_sessions_it_takes_from_a_run_it_refuses() -> None:
    """The sessions offered to a stopping sink were offered a run at a time: a good session's
    end in one run with a session the sink refuses was set aside with it, and the good session
    stayed "active" in the sink for ever. A refused run is offered a session at a time."""
    sink = DownRefusingSession()
    _alone_gathering_for_an_hour(sink)  # one batch, written when the sink stops
    with tokenmeter.session("job") as job:
        made = [tokenmeter.record("openai", "gpt-4o", 1, 1)]
    with tokenmeter.session("refused") as refused:
        pass
    made.append(tokenmeter.record("openai", "gpt-4o", 1, 1))  # a later record: tried ahead
    tokenmeter.configure(sinks=[InMemorySink()])  # it stops
    assert sink.sessions[job.id].status == "completed"
    quarantine = Path(".tokenmeter") / "quarantine.jsonl"
    kept = [json.loads(line)["record"] for line in quarantine.open()]
    assert [(k["id"], k.get("status")) for k in kept] == [
        (refused.id, "active"),
        (refused.id, "completed"),
        *((r.id, "ok") for r in made),
    ]


class DownForAll(DownSink):
    """Down for records and sessions alike; keeps the writes it was given, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, ...]] = []

    def write(self, records: Sequence[UsageRecord]) -> None:
        self.calls.append(("records", *(r.id for r in records)))
        super().write(records)

    def write_sessions(self, sessions: Sequence[SessionInfo]) -> None:
        self.calls.append(("sessions", *(s.id for s in sessions)))
        raise OSError("server down")


def test_a_sink_down_gets_a_run_of_one_sessions_rows_once_a_pass() -> None:
    """A run of one session's rows refused whole was written again a row at a time: the very
    write that had just failed, back to back, each pass (5 writes a pass instead of 4) and when
    the sink stopped (7 instead of 5). Its failure is that session's refusal now."""
    sink = DownForAll()
    _alone_gathering_for_an_hour(sink)
    with tokenmeter.session("job"):
        for _ in range(2):
            tokenmeter.record("openai", "gpt-4o", 1, 1)
    passes = []
    for _ in range(3):
        before = len(sink.calls)
        tokenmeter.flush(5)
        passes.append(sink.calls[before:])
    before = len(sink.calls)
    tokenmeter.configure(sinks=[InMemorySink()])  # it stops
    passes.append(sink.calls[before:])
    for calls in passes[1:-1]:  # the records, one at a time, then the session's rows once
        assert [call[0] for call in calls] == ["records"] * 3 + ["sessions"]
    assert len(passes[-1]) <= 5  # its last tries, then its sessions offered


class DownWithoutSessions:
    """A user sink of records only (no ``write_sessions``: it is never given a session), down."""

    def write(self, records: Sequence[UsageRecord]) -> None:
        raise OSError("server down")

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_sink_that_takes_no_sessions_has_none_set_aside() -> None:
    """Its sessions were set aside beside its records when it stopped down, though it is never
    given one: the CLI then called each such line of the quarantine file corrupt."""
    sink = DownWithoutSessions()
    _alone_gathering_for_an_hour(sink)
    with tokenmeter.session("job"):
        made = [tokenmeter.record("openai", "gpt-4o", 1, 1) for _ in range(3)]
    tokenmeter.configure(sinks=[InMemorySink()])
    kept = [json.loads(line) for line in (Path(".tokenmeter") / "quarantine.jsonl").open()]
    assert [k["record"]["id"] for k in kept] == [r.id for r in made]


def test_a_sink_that_fails_thousands_of_times_keeps_its_writer_working(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each failure doubles the back-off, capped at 5 s: the power of two itself overflowed a
    float after 1,024 failures (a server down for hours; or a flush() per request, each asking
    for an attempt), and the writer failed on every delivery from then on."""
    sink = DownSink()
    tokenmeter.configure(sinks=[sink])
    tokenmeter.record("openai", "gpt-4o", 1, 1)
    writer = _pipeline._writers()[0]
    with caplog.at_level(logging.ERROR, logger="tokenmeter"):
        while writer._failures < 1_100:
            assert not tokenmeter.flush(30)
    assert not [r for r in caplog.records if "writer for sink" in r.getMessage()]
    assert writer._retry_at - time.monotonic() <= _pipeline._MAX_BACKOFF


def test_records_that_cannot_be_set_aside_are_not_logged_one_line_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A sink down for long, stopped with thousands of records when the quarantine file cannot
    be written (a directory in its place, a read-only or full disk): a log line each, with the
    whole record (20,000 records: 20,000 lines, 18 MB of log). The first is logged with its
    record, then how many."""
    (Path(".tokenmeter") / "quarantine.jsonl").mkdir(parents=True)
    tokenmeter.configure(sinks=[DownSink()])
    made = [tokenmeter.record("openai", "gpt-4o", 1, 1) for _ in range(3_000)]
    assert not tokenmeter.flush(30)
    with caplog.at_level(logging.ERROR, logger="tokenmeter"):
        tokenmeter.configure(sinks=["jsonl"])  # the old sink stops: its records are refused
    lost = [r.getMessage() for r in caplog.records if "could not be set aside" in r.message]
    assert len(lost) == 2, len(lost)
    assert made[0].id in lost[0]  # the first one's record is in the log
    assert "3000 records it rejected when it stopped could not be set aside" in lost[1]


def test_records_are_never_set_aside_into_a_fifo(caplog: pytest.LogCaptureFixture) -> None:
    """A FIFO made at the quarantine file's path (for a log shipper that is not running): the
    records set aside went into the pipe, where nobody read them, as if kept. They are counted
    lost and logged, as for any quarantine file that cannot be written."""
    fifo = Path(".tokenmeter") / "quarantine.jsonl"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    tokenmeter.configure(sinks=[DownSink()])
    made = tokenmeter.record("openai", "gpt-4o", 1, 1)
    assert not tokenmeter.flush(30)
    with caplog.at_level(logging.ERROR, logger="tokenmeter"):
        tokenmeter.configure(sinks=["jsonl"])  # the old sink stops: its record is refused
    (lost,) = [r.getMessage() for r in caplog.records if "could not be set aside" in r.message]
    assert made.id in lost and "FIFO" in lost
    assert stat.S_ISFIFO(fifo.stat().st_mode)


def test_a_stopping_sinks_records_are_set_aside_many_per_append(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each record a stopping sink refused was set aside with an append of its own (open, lock,
    write, close: some 8,000 a second), and the exit cut the writer off with the rest: of
    30,000 records held by a sink that was down, 11,300 were lost with exit_timeout=2. Many go
    in one append now, each line whole."""
    appends: list[int] = []
    append_line = _pipeline.append_line

    def counted(path: Path, data: bytes, **how: Any) -> bool:
        appends.append(data.count(b"\n"))
        return append_line(path, data, **how)

    monkeypatch.setattr(_pipeline, "append_line", counted)
    _alone_gathering_for_an_hour(DownSink())
    made = [tokenmeter.record("openai", "gpt-4o", 1, 1) for _ in range(2_500)]
    tokenmeter.configure(sinks=[InMemorySink()])  # it stops: its records are set aside
    kept = [json.loads(line) for line in (Path(".tokenmeter") / "quarantine.jsonl").open()]
    assert [k["record"]["id"] for k in kept] == [r.id for r in made]
    assert sum(appends) == len(made) and len(appends) <= 3


CUT_OFF_WHILE_SETTING_ASIDE = (
    """
import fcntl, os, tokenmeter
"""
    + DOWN_SINK
    + """
tokenmeter.configure(sinks=[Down()], exit_timeout=0.5)
os.makedirs(os.environ["TOKENMETER_DIR"], exist_ok=True)
held = open(os.path.join(os.environ["TOKENMETER_DIR"], "quarantine.jsonl"), "a")
fcntl.flock(held, fcntl.LOCK_EX)  # locked until the end: the writer waits to set aside
for _ in range(3_000):
    tokenmeter.record("openai", "gpt-4o", 1, 1)
assert not tokenmeter.flush(30)
"""
)


def test_records_a_writer_cut_off_was_setting_aside_are_counted_at_risk(tmp_path: Path) -> None:
    """The exit cut off a writer setting aside what its sink refused: the run it had taken out
    of its queue was left out of the count ("2746 records ... may be lost" of 3,000 held, none
    set aside). It stays in the queue until it is in the file now: every record is counted."""
    env = {**os.environ, "TOKENMETER_DIR": str(tmp_path / "m")}
    done = run_python("-c", CUT_OFF_WHILE_SETTING_ASIDE, env=env, cwd=tmp_path)
    assert "3000 records and sessions still held by Down may be lost" in done.stderr, done.stderr
    assert (tmp_path / "m" / "quarantine.jsonl").read_text() == ""


class DownWithAPage(InMemorySink):
    """A user sink whose server is down and which raises with the error page it got."""

    def write(self, records: Sequence[UsageRecord]) -> None:
        raise RuntimeError("upload failed: 502 <html>" + "x" * 200_000)


def test_a_sinks_long_error_message_is_kept_short_with_each_record_set_aside(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The sink's whole message went into the log and into every line of the quarantine file:
    2,000 records of a sink raising with a 200 kB error page made a 400 MB quarantine file
    (max_queue records, 20 GB)."""
    tokenmeter.configure(sinks=[DownWithAPage()])
    made = [tokenmeter.record("openai", "gpt-4o", 1, 1) for _ in range(50)]
    with caplog.at_level(logging.ERROR, logger="tokenmeter"):
        assert not tokenmeter.flush(30)
        tokenmeter.configure(sinks=["jsonl"])  # the old sink stops: its records are set aside
    kept = [json.loads(line) for line in (Path(".tokenmeter") / "quarantine.jsonl").open()]
    assert [k["record"]["id"] for k in kept] == [r.id for r in made]
    assert all(k["error"].startswith("RuntimeError: upload failed: 502 <html>xxx") for k in kept)
    assert max(len(k["error"]) for k in kept) <= 1_100
    assert max(len(r.getMessage()) for r in caplog.records) <= 1_500


def test_impossible_values_never_wedge_the_default_sinks(tmp_path: Path) -> None:
    """A lone surrogate, a cost beyond reason: the record is made storable at the door, and every
    record after it still reaches SQLite, JSONL and the journal."""
    tokenmeter.configure(
        sinks=["sqlite", "jsonl", "markdown"],
        directory=tmp_path / "m",
        prices={"pricey": {"input_per_mtok": 100_000, "output_per_mtok": 1}},
    )
    with tokenmeter.session("s\ud800", tags={"k\udfff": "v\ud800"}):
        tokenmeter.record("openai", "gpt-\ud800", 10, 1)
        tokenmeter.record("openai", "pricey", 10**11, 1)  # $10,000,000: no call costs that
        tokenmeter.record("openai", "gpt-4o", 10, 1)
    assert tokenmeter.flush(30)
    with sqlite3.connect(tmp_path / "m" / "usage.db") as db:
        rows = db.execute(
            "select model_name, estimated_cost_usd, tags from records order by id"
        ).fetchall()
    assert [r[0] for r in rows] == ["gpt-\ufffd", "pricey", "gpt-4o"]
    assert rows[1][1] is None  # priced beyond reason: unknown, not a wedge
    assert json.loads(rows[0][2]) == {"k\ufffd": "v\ufffd"}
    assert len((tmp_path / "m" / "usage.jsonl").read_text().splitlines()) == 3
    assert "gpt-4o" in (tmp_path / "m" / "journal" / "token_usage.md").read_text()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("input_tokens", 2**63),
        ("output_tokens", 10**13),
        ("cache_read_tokens", 2**64),
        pytest.param("input_tokens", 10**5000, id="input_tokens-too-long-to-print"),
    ],
)
def test_counts_no_call_can_have_are_refused_at_the_door(field: str, value: int) -> None:
    counts = {"input_tokens": 1, "output_tokens": 1, field: value}
    with pytest.raises(ValueError, match=field):
        tokenmeter.record("openai", "gpt-4o", **counts)


def test_configure_rejects_things_that_are_not_sinks() -> None:
    with pytest.raises(ValueError, match="not a sink"):
        tokenmeter.configure(sinks=[object()])  # type: ignore[list-item]


def test_configure_rejects_a_sink_with_async_methods() -> None:
    """An ``async def write`` returned a coroutine nobody awaited: flush() said True and the
    sink never got a record."""

    class AsyncSink(InMemorySink):
        async def write(self, records: Sequence[UsageRecord]) -> None:  # type: ignore[override]
            super().write(records)

    with pytest.raises(ValueError, match=r"AsyncSink.write\(\) is async"):
        tokenmeter.configure(sinks=[AsyncSink()])


def test_a_sink_whose_write_returns_a_coroutine_has_its_records_set_aside(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An ``async def write`` behind a plain decorator (``functools.wraps``: not a coroutine
    function for configure()'s check) returned a coroutine nobody awaited: 0 of 20 records
    stored, flush() True and nothing logged. Now the write counts as failed: reported, flush()
    False, and the records kept, then set aside when the sink is replaced."""

    def timed(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def timed_call(*args: Any, **kwargs: Any) -> Any:
            return method(*args, **kwargs)

        return timed_call

    class AsyncHTTPSink(InMemorySink):
        @timed
        async def write(self, records: Sequence[UsageRecord]) -> None:  # type: ignore[override]
            super().write(records)

    sink = AsyncHTTPSink()
    tokenmeter.configure(sinks=[sink])
    with caplog.at_level(logging.WARNING, logger="tokenmeter"):
        made = [tokenmeter.record("openai", "gpt-4o", i + 1, 1) for i in range(20)]
        assert not tokenmeter.flush(30)
    assert sink.records == []
    assert any("write() returned a coroutine" in r.message for r in caplog.records)
    quarantine = Path(".tokenmeter") / "quarantine.jsonl"

    def set_aside() -> list[str]:
        lines = quarantine.read_text(encoding="utf-8").splitlines() if quarantine.exists() else []
        return sorted(json.loads(line)["record"]["id"] for line in lines)

    # A sink that takes nothing is down, not refusing bad records: it keeps them until it is
    # replaced (or the exit), which sets them aside.
    tokenmeter.configure(sinks=[InMemorySink()])
    wait_for(lambda: len(set_aside()) == len(made), "every record set aside")
    assert set_aside() == sorted(r.id for r in made)


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
    run_python(str(script), start_method, env=env, cwd=tmp_path)
    assert (tmp_path / "m" / "usage.jsonl").read_text().count("\n") == 1 + 300 + 400


def _run_bounded(args: list[str], env: dict[str, str], cwd: Path) -> str:
    """This interpreter running ``args`` in a new process group, which is killed whole if it has
    not ended within 60 s (a hung worker must not outlive the test); its stdout."""
    child = subprocess.Popen(
        [sys.executable, *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = child.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        pytest.fail(f"{args} hung")
    assert child.returncode == 0, err
    return out


def _dies_of_sigterm(script: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (with ``args``) in a child process, which must end killed by SIGTERM."""
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == -signal.SIGTERM, done.stderr
    return done


RECONFIGURED = """
import os, signal, threading, time, tokenmeter
from tokenmeter.sinks import JSONLSink

configuring = threading.Event()

class Slow(JSONLSink):
    def write(self, records):
        if configuring.is_set():  # SIGTERM while configure() waits for the old sinks
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.5)
        super().write(records)

tokenmeter.configure(sinks=[Slow("old.jsonl")])
for _ in range(10):
    tokenmeter.record("openai", "gpt-4o", 10, 1)
configuring.set()
tokenmeter.configure(sinks=["jsonl"])
"""


def test_a_sigterm_while_configure_stops_the_old_sinks_loses_none_of_their_records(
    tmp_path: Path,
) -> None:
    """configure() takes the old pipeline out, then waits for it to write its records: the
    handler flushed only the new (empty) one and ended the process, the old records unwritten."""
    _dies_of_sigterm(RECONFIGURED, tmp_path)
    assert (tmp_path / "old.jsonl").read_text().count("\n") == 10


FIRST_RECORD_SIGNALLED = """
import os, signal, time, tokenmeter
from tokenmeter import _pipeline

tokenmeter.configure(sinks=["sqlite"], directory=".", exit_timeout=10)
make = _pipeline._sink_factory

def make_and_be_stopped():  # SIGTERM while the first record opens the sinks
    sinks = make()
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.5)
    return sinks

_pipeline._sink_factory = make_and_be_stopped
tokenmeter.record("openai", "gpt-4o", 10, 1)
time.sleep(60)
"""


def test_a_sigterm_while_the_first_record_opens_the_sinks_flushes_and_ends_at_once(
    tmp_path: Path,
) -> None:
    """The handler runs on the main thread, which was holding the pipeline's lock to make it:
    the exit hooks' thread waited for that lock until its timeout (half of exit_timeout: 5 s,
    ``Pool.terminate()`` of workers making their first call), and nothing was written. The
    signal is now acted on once the lock is let go: the process flushes what was submitted (the
    implicit session) and dies of it."""
    done = _dies_of_sigterm(FIRST_RECORD_SIGNALLED, tmp_path)
    assert "did not finish" not in done.stderr
    with contextlib.closing(sqlite3.connect(tmp_path / "usage.db")) as db:
        assert db.execute("SELECT count(*) FROM sessions").fetchone() == (1,)


QUEUEING_SIGNALLED = """
import os, signal, sys, time, tokenmeter
from tokenmeter import _pipeline

tokenmeter.configure(sinks=["jsonl"], directory=".", exit_timeout=5)
tokenmeter.record("openai", "gpt-4o", 10, 1)
tokenmeter.flush()  # the writer asleep: the next record wakes it
[writer] = _pipeline._pipeline.writers
if sys.argv[1] == "put":
    writer.interval = 3600  # gathering: the records wait in its buffer, their calls returned
    for _ in range(5):
        tokenmeter.record("openai", "gpt-4o", 10, 1)

lines = 0

def inside(frame, event, arg):  # past the first line of put() or set(): inside its lock
    global lines
    if event == "line":
        lines += 1
        if lines == 2:
            sys.settrace(None)
            os.kill(os.getpid(), signal.SIGTERM)
    return inside

def tracer(frame, event, arg):  # the writer's put(), or its wake-up's set()
    target = writer if sys.argv[1] == "put" else writer._arrived
    if frame.f_code.co_name == sys.argv[1] and frame.f_locals.get("self") is target:
        return inside
    return None

sys.settrace(tracer)
tokenmeter.record("openai", "gpt-4o", 10, 1)
sys.settrace(None)
time.sleep(60)
"""


@pytest.mark.parametrize("inside", ["put", "set"])
def test_a_sigterm_while_a_record_is_queued_flushes_it_and_ends(
    inside: str, tmp_path: Path
) -> None:
    """Python runs the handler on the main thread between two bytecodes. Inside the Event a
    record set to wake its writer, that Event's lock was held, and the handler's exit flush set
    the same Event: the process waited for itself for ever (``with Pool()`` ending busy workers
    hung). Inside the writer's lock (queueing the record), the writer could not take what the
    exit flush asked for: the exit waited all of exit_timeout and lost the records held."""
    script = ["-c", QUEUEING_SIGNALLED, inside]
    try:
        done = subprocess.run(
            [sys.executable, *script], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the process hung in its SIGTERM handler")
    assert done.returncode == -signal.SIGTERM, done.stderr
    records = 7 if inside == "put" else 2
    assert (tmp_path / "usage.jsonl").read_text().count("\n") == records, done.stderr


SIGNALLED_WHILE_MAKING = """
import os, signal, sys, tokenmeter
from tokenmeter import _record, _sessions
from tokenmeter.testing import FakeProvider

tokenmeter.configure(sinks=["jsonl"], directory=".", exit_timeout=10)
tokenmeter.instrument(["openai"])
target = {"making": _record._make_later, "session": _sessions.SessionSummary._add}[sys.argv[1]]
entered = 0

def signalled(frame, event, arg):  # SIGTERM (docker stop) as the third one begins
    global entered
    if event == "call" and frame.f_code is target.__code__:
        entered += 1
        if entered == 3:
            sys.setprofile(None)
            os.kill(os.getpid(), signal.SIGTERM)

with FakeProvider() as fake:
    client = fake.openai_client()
    hi = [{"role": "user", "content": "hi"}]
    sys.setprofile(signalled)
    for n in range(1, 11):
        with tokenmeter.session(f"request-{n}"):  # its end makes the call's record here
            client.chat.completions.create(model="gpt-4o", messages=hi)
            print("answered", n, flush=True)
"""


@pytest.mark.parametrize("inside", ["making", "session"])
def test_a_sigterm_while_the_main_thread_makes_a_record_loses_none_and_ends_at_once(
    inside: str, tmp_path: Path
) -> None:
    """A session's end makes its waiting calls' records on the application's thread. A SIGTERM
    landing there (the call out of the waiting queue, its record not queued yet) was flushed
    without that call and the process died of it: 3 calls answered, 2 records. Landing inside a
    session's totals (``_sessions._lock`` held), the exit hooks' thread waited for that lock
    for half of exit_timeout, then flushed without the call. The signal now waits for the lock
    to be let go, as it does for a writer's."""
    done = _dies_of_sigterm(SIGNALLED_WHILE_MAKING, tmp_path, inside)
    answered = done.stdout.count("answered")
    assert answered >= 3, done.stdout + done.stderr
    lines = [json.loads(line) for line in (tmp_path / "usage.jsonl").open()]
    assert len(lines) == answered, done.stdout + done.stderr
    assert len({line["id"] for line in lines}) == answered
    assert "did not finish" not in done.stderr, done.stderr


SIGNALLED_BETWEEN_TWO_SINKS = """
import os, signal, sys, time, tokenmeter
from tokenmeter.sinks import JSONLSink, SQLiteSink

tokenmeter.configure(sinks=[JSONLSink("usage.jsonl"), SQLiteSink("usage.db")], directory=".",
                     exit_timeout=10)
name, where = sys.argv[1:]
entered = 0

def signalled(frame, event, arg):
    global entered
    if frame.f_code.co_qualname != "_Writer.put":
        return
    if where == "between" and event == "call":  # the first sink has the record, not the second
        entered += 1
        if entered < 2:
            return
    elif not (where == "appended" and event == "c_return" and arg.__name__ == "append"):
        return  # else: just in the first sink's buffer, its lock still held
    sys.setprofile(None)
    os.kill(os.getpid(), getattr(signal, name))

with tokenmeter.session("job"):
    for _ in range(5):
        tokenmeter.record("openai", "gpt-4o", 10, 5)
    sys.setprofile(signalled)
    tokenmeter.record("openai", "gpt-4o", 10, 5)
    time.sleep(60)  # a signal held back until the lock is let go comes meanwhile
"""


@pytest.mark.parametrize(
    ("name", "where"),
    [
        ("SIGTERM", "between"),
        ("SIGHUP", "between"),
        ("SIGINT", "between"),
        ("SIGINT", "appended"),  # the exception does not say which sinks have it: never twice
        ("SIGTERM", "appended"),
    ],
)
def test_a_signal_between_two_sinks_buffers_leaves_the_record_in_both(
    name: str, where: str, tmp_path: Path
) -> None:
    """A record goes into each sink's buffer in turn, under its pipeline's lock. A SIGTERM or
    SIGHUP (docker stop) landing between two sinks ran the exit flush there: the record was in
    the JSONL file and not in SQLite (6 and 5), and the exit hooks' thread waited for that lock
    half of exit_timeout, leaving the session's row active with 0 calls. A Ctrl-C there raised
    out of the fan-out: 6 and 5 too. The signal now waits for the lock, as for a writer's, and
    an exception finishes the fan-out on its way out."""
    signum = getattr(signal, name)
    done = subprocess.run(
        [sys.executable, "-c", SIGNALLED_BETWEEN_TWO_SINKS, name, where],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == -signum, done.stderr
    assert "did not finish" not in done.stderr, done.stderr
    lines = (tmp_path / "usage.jsonl").read_text().splitlines()
    in_jsonl = len({json.loads(line)["id"] for line in lines})
    assert len(lines) == in_jsonl, "a record written twice"
    with contextlib.closing(sqlite3.connect(tmp_path / "usage.db")) as db:
        in_sqlite = db.execute("SELECT count(*) FROM records").fetchone()[0]
        calls = db.execute("SELECT calls FROM sessions WHERE name = 'job'").fetchone()[0]
    assert in_jsonl == in_sqlite == calls == 6, done.stderr


HELD_IN_A_WRITERS_LOCK = """
import logging, os, signal, sys, threading, time, tokenmeter

class Hung:
    def write(self, records):
        threading.Event().wait()
    def flush(self):
        pass
    def close(self):
        pass

class Blocking(logging.Handler):  # a log shipper whose socket is stuck
    def emit(self, record):
        if "behind" in record.getMessage():  # logged as a full buffer drops a record
            os.kill(os.getpid(), signal.SIGTERM)
            threading.Event().wait()

logging.getLogger("tokenmeter").addHandler(Blocking())
tokenmeter.configure(sinks=[Hung()], directory=".", max_queue=5, exit_timeout=1)
for _ in range(50):
    tokenmeter.record("openai", "gpt-4o", 1, 1)
time.sleep(60)
"""


def test_a_sigterm_ends_the_process_while_its_main_thread_is_stuck_in_a_writers_lock(
    tmp_path: Path,
) -> None:
    """The signal that came inside a writer's lock is sent again once the lock is let go: one
    never let go (an application's logging handler that blocks, called as a full buffer drops a
    record) had it sent again every 10 ms, for ever. Past exit_timeout the exit runs anyway."""
    try:
        _dies_of_sigterm(HELD_IN_A_WRITERS_LOCK, tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail("the process outlived its SIGTERM")


INTERRUPTED_EXIT_FLUSH = """
import atexit, os, signal, sys, threading, time

atexit.register(lambda: open("earlier-hook-ran", "w").close())  # before tokenmeter's: runs after
import tokenmeter
from tokenmeter import _pipeline
from tokenmeter.sinks import JSONLSink

how = sys.argv[1]
pressed = threading.Event()

def press_twice_here():  # another thread of the application takes both Ctrl-Cs
    pressed.wait()
    for _ in range(2):
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)
        time.sleep(0.2)

if how == "twice elsewhere":
    threading.Thread(target=press_twice_here, daemon=True).start()

class Slow(JSONLSink):  # a remote sink: the exit flush takes a while
    interrupted = False

    def write(self, records):
        while not _pipeline.exiting():  # a writer woken early under load waits for the exit
            time.sleep(0.01)
        if how == "twice elsewhere":  # the sink hangs
            pressed.set()
            time.sleep(3600)
        if not Slow.interrupted:  # the user presses Ctrl-C as the exit seems slow
            Slow.interrupted = True
            os.kill(os.getpid(), signal.SIGTERM if how == "sys.exit" else signal.SIGINT)
            time.sleep(0.2)
            if how == "twice":  # and again: the sink hangs, the user wants out
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(3600)
        super().write(records)

if how == "sys.exit":  # the application's own handler, as docs/sinks.md shows
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
tokenmeter.configure(sinks=[Slow("usage.jsonl")], directory=".")
_pipeline.set_sinks(_pipeline._sink_factory, flush_interval=3600, exit_timeout=60)  # all at exit
for i in range(999):
    tokenmeter.record("openai", "gpt-4o", 10, 5)
if how == "sigterm":  # a service stopped by SIGTERM: tokenmeter's handler flushes
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(60)
"""


@pytest.mark.parametrize(
    ("how", "status"), [("exit", 0), ("sys.exit", 0), ("sigterm", -signal.SIGTERM)]
)
def test_an_interrupt_during_the_exit_flush_waits_for_it_and_ends_the_process_after(
    how: str, status: int, tmp_path: Path
) -> None:
    """A Ctrl-C (or a SIGTERM whose application handler calls sys.exit) raised into the exit
    flush's wait stopped it there: atexit printed tokenmeter's traceback and the writers were cut
    off with the interpreter; 301-511 of 3,000 records written, none set aside or counted;
    after tokenmeter's own SIGTERM flush, 501 of 3,000 and no line. The flush goes on (bounded
    by exit_timeout as ever), then the exit goes on as it was: the atexit hooks registered
    before tokenmeter's run (ending the process from ours skipped logging's, OTel's, the app's),
    with the status the process was ending with (a pending SIGTERM of tokenmeter's handler: of
    it)."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", INTERRUPTED_EXIT_FLUSH, how],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the interrupted exit flush hung")
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == status, done.stderr
    assert (tmp_path / "usage.jsonl").read_text().count("\n") == 999, done.stderr
    assert (tmp_path / "earlier-hook-ran").exists() or how == "sigterm"  # SIGTERM: dies of it


@pytest.mark.parametrize("how", ["twice", "twice elsewhere"])
def test_a_second_ctrl_c_during_the_exit_flush_stops_it_setting_aside_what_is_left(
    how: str, tmp_path: Path
) -> None:
    """With a hung sink every Ctrl-C after the first was swallowed until exit_timeout ran out
    (60 s here; 10 s by default): the second one stops the wait; what the writer holds is set
    aside or counted, as at a timeout, and the earlier atexit hooks still run. A Ctrl-C that
    lands just as the main thread begins to wait, or on another thread, did not end the wait
    (its handler ran when the wait was over): the main thread waits in slices."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", INTERRUPTED_EXIT_FLUSH, how],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=45,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("a second Ctrl-C did not stop the exit flush")
    assert "Traceback" not in done.stderr, done.stderr
    assert "a second one stops it" in done.stderr
    assert "may be lost" in done.stderr or "set aside" in done.stderr, done.stderr
    assert (tmp_path / "earlier-hook-ran").exists()


HANDLER_INSIDE_PUT = """
import logging, signal, sys, threading, tokenmeter
from tokenmeter.sinks import JSONLSink

how = sys.argv[1]

class Stalled(JSONLSink):  # stalls once (a slow network): its buffer fills past max_queue
    release = threading.Event()

    def write(self, records):
        Stalled.release.wait()
        super().write(records)

def on_usr1(signum, frame):  # the application's "flush now" or "reload the settings"
    if how == "flush":
        print("handler flush", tokenmeter.flush(), flush=True)
    else:
        tokenmeter.configure(sinks=[JSONLSink("after.jsonl")], directory=".", max_queue=10)
        print("reloaded", flush=True)

class Signalling(logging.Handler):  # the signal lands while a record is queued: the drop line
    def emit(self, record):
        sys.stderr.write(record.getMessage() + "\\n")
        if "behind" in record.getMessage() and not Stalled.release.is_set():
            Stalled.release.set()
            signal.raise_signal(signal.SIGUSR1)

signal.signal(signal.SIGUSR1, on_usr1)
logging.getLogger("tokenmeter").addHandler(Signalling())
tokenmeter.configure(sinks=[Stalled("usage.jsonl")], directory=".", max_queue=10, exit_timeout=3)
for _ in range(100):
    tokenmeter.record("openai", "gpt-4o", 10, 5)
tokenmeter.flush()  # says the records dropped (False)
print("flushed", tokenmeter.flush(), flush=True)
"""


@pytest.mark.parametrize("how", ["flush", "configure"])
def test_a_signal_handlers_flush_or_configure_inside_a_records_queueing_never_waits_for_itself(
    how: str, tmp_path: Path
) -> None:
    """A signal handler runs on the main thread between two bytecodes, also inside ``put``,
    which holds the writer's lock. Its flush() waited for the writer, which needed that lock to
    take the flush: with no timeout, the process hung for ever (flush(timeout=3): 1 handler
    flush in 12-145 waited 3 s and returned False on a healthy sink); its configure() waited all
    of exit_timeout, then left the old sink "to finish in the background"."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", HANDLER_INSIDE_PUT, how],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the handler's flush() waited for the lock its own thread held")
    assert done.returncode == 0, done.stderr
    # The sink's records are not written while the handler runs: its flush() says so at once.
    expected = "handler flush False" if how == "flush" else "reloaded"
    assert expected in done.stdout, done.stdout + done.stderr
    assert "still writing" not in done.stderr, done.stderr
    assert "flushed True" in done.stdout, done.stdout + done.stderr


CTRL_C_IN_A_CATCH_UP = """
import os, signal, sys, threading, tokenmeter
from tokenmeter import _pipeline
from tokenmeter.testing import FakeProvider

from tokenmeter import _sessions

event, name = sys.argv[1:]
tokenmeter.configure(sinks=["jsonl"], directory=".")
_pipeline.set_sinks(_pipeline._sink_factory, flush_interval=3600)  # the calls wait
tokenmeter.instrument(["openai"])
with FakeProvider() as fake:
    client = fake.openai_client()
    for _ in range(5):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert len(_pipeline._later) == 8  # the first call is made at once, 4 wait

    def interrupt(frame, what, arg):  # Ctrl-C at one exact point of the flush's catch-up
        called = getattr(arg, "__name__", None) if what == "c_return" else frame.f_code.co_name
        if what == event and called == name:
            sys.setprofile(None)
            os.kill(os.getpid(), signal.SIGINT)

    sys.setprofile(interrupt)
    try:
        tokenmeter.flush()
    except KeyboardInterrupt:
        print("interrupted")
    sys.setprofile(None)

    def look():  # from another thread: the writers' catch-ups need it
        free = _pipeline._later_lock.acquire(blocking=False)
        print("lock free", free)
        if free:
            _pipeline._later_lock.release()

    looking = threading.Thread(target=look)
    looking.start()
    looking.join()
    print("flushed", tokenmeter.flush())
    print("session calls", _sessions.implicit_session().summary.calls)
"""


@pytest.mark.parametrize(
    ("event", "name"),
    [
        ("c_return", "popleft"),  # between the two entries of a call (before the fix)
        ("c_return", "acquire"),  # the lock just taken
        ("call", "_usage_of"),  # the record not made yet
        ("call", "_add"),  # the record made: queued whatever comes
        ("call", "submit"),  # counted in its session, not queued yet: queued, not made again
    ],
)
def test_ctrl_c_inside_a_flush_loses_no_call_and_doubles_none(
    event: str, name: str, tmp_path: Path
) -> None:
    """flush(), configure() and a session's summary make the waiting calls' records on the
    application's thread, where Ctrl-C (or a SIGTERM handler calling sys.exit) lands between
    any two bytecodes. Between the two entries of a call it left the queue off by one: every
    later record failed ("'Session' object is not subscriptable", 7,826 of 10,387 calls lost);
    right after the lock was taken, the main thread kept it (every writer's catch-up then gave
    up after 2 s); inside the making, that call was lost; made and counted in its session but
    not queued yet, it was made again and counted twice. Each call is written and counted once."""
    done = run_python("-c", CTRL_C_IN_A_CATCH_UP, event, name, env=dict(os.environ), cwd=tmp_path)
    assert "lock free True" in done.stdout, done.stdout + done.stderr
    assert "flushed True" in done.stdout, done.stdout + done.stderr
    assert "making a record failed" not in done.stderr
    lines = [json.loads(line) for line in (tmp_path / "usage.jsonl").open()]
    assert len(lines) == 5, done.stdout + done.stderr
    assert len({line["id"] for line in lines}) == 5
    # Never counted twice; interrupted as its session's bookkeeping starts, the call is left out
    # of the session's totals (its record is written all the same).
    counted = int(done.stdout.split("session calls ")[1])
    assert counted == 5 or (name == "_add" and counted == 4), done.stdout + done.stderr


FLUSHING_SINKS_REPLACED = """
import threading, time, tokenmeter
from tokenmeter import _pipeline

class Flushing:  # wants everything else written first
    def __init__(self):
        self.entered, self.go = threading.Event(), threading.Event()
    def write(self, records):
        self.entered.set()
        self.go.wait()
        tokenmeter.flush()
    def flush(self):
        pass
    def close(self):
        pass

x, a = Flushing(), Flushing()
for sink in (x, a):  # each replaced while in its write: it finishes in the background
    tokenmeter.configure(sinks=[sink], exit_timeout=0.1)
    tokenmeter.record("openai", "gpt-4o", 1, 1)
    sink.entered.wait()
    writer = _pipeline._pipeline.writers[0]
    if sink is x:
        x_writer = writer

class Ending(list):
    def extend(self, writers):  # configure() replacing A: A's write flushes right now
        a.go.set()
        while x_writer._open_marker is None:  # A's flush waits for X
            time.sleep(0.01)
        super().extend(writers)

_pipeline._ending = Ending(_pipeline._ending)
tokenmeter.configure(sinks=[], exit_timeout=0.1)
x.go.set()  # X's write flushes: it waited for A, which waited for it
print("flushed", tokenmeter.flush())
"""


def test_sinks_flushing_in_their_write_replaced_by_configure_never_hang(tmp_path: Path) -> None:
    """A sink whose write() calls flush() (the docs allow it), replaced by configure() on
    another thread while inside it: a writer being replaced was for a moment in none of the
    lists flush() goes by, so its flush was not known to be a sink's (``_flushing``), and it
    waited for another replaced writer whose own flush waited for it; the application's
    flush() waited for both, for ever (repro_3: 2 runs of 3)."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", FLUSHING_SINKS_REPLACED],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("flush() hung: two replaced sinks' writers waited for each other")
    assert "flushed True" in done.stdout, done.stdout + done.stderr


POOL_TERMINATED = """
import multiprocessing as mp, sys, tokenmeter

def work(i):
    for _ in range(100):
        tokenmeter.record("openai", "gpt-4o", 10, 1)

if __name__ == "__main__":
    with mp.get_context(sys.argv[1]).Pool(2) as pool:  # __exit__: terminate(), i.e. SIGTERM
        pool.map(work, range(4))
"""


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_pool_workers_terminated_while_flushing_at_exit_keep_their_records(
    tmp_path: Path, start_method: str
) -> None:
    """``with Pool()`` ends its workers, then sends SIGTERM to those still alive: a worker still
    flushing at its exit was killed by the signal in the middle, and its records were lost."""
    script = tmp_path / "pool.py"
    script.write_text(POOL_TERMINATED)
    env = {**os.environ, "TOKENMETER_SINKS": "jsonl", "TOKENMETER_DIR": str(tmp_path / "m")}
    for _ in range(3):  # the signal has to catch a worker in its exit flush
        _run_bounded([str(script), start_method], env, tmp_path)
    assert (tmp_path / "m" / "usage.jsonl").read_text().count("\n") == 3 * 400


MISSED_SIGNAL = """
import multiprocessing as mp, signal, sys, threading, time, tokenmeter

def child():
    for _ in range(100):
        tokenmeter.record("openai", "gpt-4o", 10, 1)
    # The SIGTERM reaches the process while the main thread is not in a wait it interrupts (as
    # when it comes just before the main thread blocks): Python runs the handler only between
    # bytecodes, and the main thread then waits for ever (a pool worker in its queue's lock).
    # Here it is delivered to another thread of the application's, which it does not interrupt.
    threading.Timer(0.3, lambda: signal.pthread_kill(threading.get_ident(), signal.SIGTERM)).start()
    threading.Event().wait()

if __name__ == "__main__":
    p = mp.get_context(sys.argv[1]).Process(target=child)
    p.start()
    p.join(30)
    if p.exitcode is None:
        p.kill()
        p.join()
        print("hung")
    else:
        print(p.exitcode)
"""


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_a_sigterm_that_missed_the_blocked_main_thread_still_flushes_and_ends_the_child(
    tmp_path: Path, start_method: str
) -> None:
    """A multiprocessing child whose main thread was blocked when its SIGTERM came never ran
    our handler: it neither flushed nor died, and its parent's join() waited for ever."""
    script = tmp_path / "missed.py"
    script.write_text(MISSED_SIGNAL)
    env = {**os.environ, "TOKENMETER_SINKS": "jsonl", "TOKENMETER_DIR": str(tmp_path / "m")}
    out = _run_bounded([str(script), start_method], env, tmp_path)
    assert out.split() == [str(-signal.SIGTERM)]
    assert (tmp_path / "m" / "usage.jsonl").read_text().count("\n") == 100


FORKED_AND_TERMINATED = """
import multiprocessing as mp, os, signal, sys, time, tokenmeter

def child():
    tokenmeter.record("openai", "gpt-4o", 10, 1)
    pid = os.fork()
    if pid == 0:
        tokenmeter.record("openai", "gpt-4o", 10, 1)
        time.sleep(30)
        os._exit(0)
    time.sleep(0.5)
    os.kill(pid, signal.SIGTERM)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
    time.sleep(1)

if __name__ == "__main__":
    p = mp.get_context("spawn").Process(target=child)
    p.start()
    p.join(30)
    print(p.exitcode)
"""


def test_a_forked_childs_sigterm_never_ends_its_parent(tmp_path: Path) -> None:
    """A multiprocessing child watches the signals it gets through a pipe Python writes into:
    inherited by a process it forks, the grandchild's SIGTERM would make the child end itself."""
    script = tmp_path / "forked.py"
    script.write_text(FORKED_AND_TERMINATED)
    env = {**os.environ, "TOKENMETER_SINKS": "jsonl", "TOKENMETER_DIR": str(tmp_path / "m")}
    out = _run_bounded([str(script)], env, tmp_path)
    assert out.split() == [str(-signal.SIGTERM), "0"]
    assert (tmp_path / "m" / "usage.jsonl").read_text().count("\n") == 2


APPLICATION_WAKEUP_FD = """
import multiprocessing as mp, os, signal, socket, tokenmeter

def child():
    tokenmeter.record("openai", "gpt-4o", 10, 1)  # tokenmeter watches the wakeup fd from here
    mine, theirs = socket.socketpair()
    theirs.setblocking(False)
    signal.set_wakeup_fd(theirs.fileno())  # the application's own (asyncio sets one this way)
    pid = os.fork()
    if pid == 0:
        os._exit(0 if signal.set_wakeup_fd(-1) == theirs.fileno() else 1)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)

if __name__ == "__main__":
    p = mp.get_context("spawn").Process(target=child)
    p.start()
    p.join(30)
    print(p.exitcode)
"""


def test_a_forked_child_keeps_the_wakeup_fd_the_application_set(tmp_path: Path) -> None:
    """After a fork, tokenmeter drops its own wakeup pipe in the child: one the application set
    in its place since (an event loop's) is the application's, and stays."""
    script = tmp_path / "wakeup.py"
    script.write_text(APPLICATION_WAKEUP_FD)
    env = {**os.environ, "TOKENMETER_SINKS": "jsonl", "TOKENMETER_DIR": str(tmp_path / "m")}
    assert _run_bounded([str(script)], env, tmp_path).split() == ["0", "0"]


FORKS = """
import os, sys, threading, time, tokenmeter
tokenmeter.configure(sinks=["jsonl"], max_queue=2_000)  # the busy threads outrun the writer
# Warm: a fork while other threads make the first records is the next test's subject.
tokenmeter.record("openai", "gpt-4o", 1, 1)
stop = threading.Event()

def busy():
    while not stop.is_set():
        with tokenmeter.session("t"):
            tokenmeter.record("openai", "gpt-4o", 1, 1)

threads = [threading.Thread(target=busy) for _ in range(2)]
for t in threads:
    t.start()
hung = 0
for _ in range(int(sys.argv[1])):
    pid = os.fork()
    if pid == 0:  # the child records and flushes: a lock inherited held would hang it here
        tokenmeter.record("openai", "gpt-4o", 7, 7)
        os._exit(0 if tokenmeter.flush(20) else 3)
    watchdog = threading.Timer(30, os.kill, (pid, 9))  # a hung child is killed, and counted
    watchdog.start()
    _, status = os.waitpid(pid, 0)
    watchdog.cancel()
    if os.waitstatus_to_exitcode(status) == -9:
        hung += 1
    else:
        assert os.waitstatus_to_exitcode(status) == 0, status
stop.set()
for t in threads:
    t.join()
print("hung", hung)
"""


def test_fork_while_other_threads_record_never_hangs_the_child(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", FORKS, "200"],
        env={**os.environ, "TOKENMETER_DIR": str(tmp_path / "m")},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["hung", "0"]
    lines = (tmp_path / "m" / "usage.jsonl").read_text().splitlines()
    assert sum(json.loads(line)["input_tokens"] == 7 for line in lines) == 200


COLD_FORK = """
import faulthandler, os, signal, sys, threading, tokenmeter
faulthandler.enable()  # inherited by the child: a hung one prints its stack when killed
if sys.argv[1] == "configured":
    tokenmeter.configure(sinks=["jsonl"])
# else the settings come from the environment: nothing of tokenmeter's is loaded until the
# threads' first record
# Threads make the process's first records (importing the modules behind tokenmeter.record and
# tokenmeter.session, and the price tables) while the main thread forks at once.
threads = [
    threading.Thread(target=lambda: tokenmeter.record("openai", "gpt-4o", 1, 1)) for _ in range(4)
]
for t in threads:
    t.start()
pid = os.fork()
if pid == 0:
    with tokenmeter.session("child"):
        tokenmeter.record("openai", "gpt-4o", 7, 7)
    os._exit(0 if tokenmeter.flush(20) else 3)
watchdog = threading.Timer(20, os.kill, (pid, signal.SIGABRT))  # a hung child is killed
watchdog.start()
_, status = os.waitpid(pid, 0)
watchdog.cancel()
for t in threads:
    t.join()
print(os.waitstatus_to_exitcode(status), tokenmeter.flush(20))  # the parent's sinks work on
"""


@pytest.mark.parametrize("start", ["configured", "imported"])
def test_fork_while_other_threads_make_the_first_records_never_hangs_the_child(
    tmp_path: Path, start: str
) -> None:
    """tokenmeter imports its modules on first use: a fork waits for such an import in progress
    in another thread (the child would otherwise find its import lock held forever). Imported
    only, with the first records made by threads, the wait was not in place yet: 4 of 4 hung.
    A module of ours imported during that wait (the SQLite sink's) has its fork hooks
    registered between the fork's before-hooks and after-hooks: its gate, counted down
    without having been counted up, held every SQLite write of the parent forever; and
    concurrent.futures' shutdown lock was released in the parent without having been taken."""
    for attempt in range(6):  # each a fresh process: one race each
        meter = tmp_path / f"m{attempt}"
        done = subprocess.run(
            [sys.executable, "-c", COLD_FORK, start],
            env={**os.environ, "TOKENMETER_DIR": str(meter), "TOKENMETER_SINKS": "jsonl,sqlite"},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["0", "True"], (
            f"attempt {attempt}: {done.stdout}\n{done.stderr[-5000:]}"
        )
        # No module's fork hooks half run (an after-hook releasing a lock nothing took).
        assert "Exception ignored" not in done.stderr, done.stderr
        lines = (meter / "usage.jsonl").read_text().splitlines()
        assert sum(json.loads(line)["input_tokens"] == 7 for line in lines) == 1


SLOW_PACKAGE_FORK = """
import os, sys, threading, time
sys.path.insert(0, os.getcwd())
import tokenmeter
from tokenmeter import _fork
_fork._IMPORT_WAIT = 0.05  # the fork does not wait for the import below
threading.Thread(target=lambda: __import__("slowpkg"), daemon=True).start()
while "slowpkg.slow" not in sys.modules:  # its first submodule imported, the second under way
    time.sleep(0.001)
pid = os.fork()
if pid == 0:
    quick = sys.modules["slowpkg.quick"]  # finished in the parent: what others may hold
    try:
        import slowpkg
        os._exit(0 if slowpkg.DONE and slowpkg.quick is quick and quick.done() else 3)
    except BaseException as exc:
        print(repr(exc), file=sys.stderr)
        os._exit(4)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() only")
def test_a_child_forked_during_another_threads_package_import_imports_it_whole(
    tmp_path: Path,
) -> None:
    """A package half imported at the fork is imported afresh in the child. The submodules it
    had finished stayed, and, found in sys.modules, were not bound to the package made afresh:
    asyncio's __init__ raised NameError in the child, out of its first record (which imports
    asyncio) and out of the application's own import of it. Its code runs again in its own
    module, so that they are bound to it, the same modules (forgotten and run again, what other
    modules held of them was another class, and asyncio's C part kept the old CancelledError),
    and what they hold of the package is the package the child finishes."""
    package = tmp_path / "slowpkg"
    package.mkdir()
    (package / "__init__.py").write_text(
        "from .quick import *\nfrom .slow import *\nDONE = quick.VALUE and slow.VALUE\n"
    )
    (package / "quick.py").write_text(
        "import slowpkg\nVALUE = True\ndef done():\n    return slowpkg.DONE\n"
    )
    (package / "slow.py").write_text("import time\ntime.sleep(1)\nVALUE = True\n")
    done = run_python("-c", SLOW_PACKAGE_FORK, env=os.environ, cwd=tmp_path)
    assert done.stdout.split() == ["0"], done.stderr[-5000:]


SLOW_IMPORT_FORK = """
import faulthandler, os, signal, sys, threading, time
faulthandler.enable()
sys.path.insert(0, os.getcwd())
import tokenmeter
from tokenmeter import _fork
_fork._IMPORT_WAIT = 0.05  # the fork does not wait for the import below
threading.Thread(target=lambda: __import__("slowmod"), daemon=True).start()
while "slowmod" not in sys.modules:
    time.sleep(0.001)
pid = os.fork()
if pid == 0:
    import slowmod  # held by a thread that is not in the child: imported afresh
    os._exit(0 if slowmod.DONE else 3)
watchdog = threading.Timer(20, os.kill, (pid, signal.SIGABRT))
watchdog.start()
_, status = os.waitpid(pid, 0)
watchdog.cancel()
print(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() only")
def test_a_child_forked_during_another_threads_import_imports_the_module_afresh(
    tmp_path: Path,
) -> None:
    """The wait for imports before fork() is bounded, and a thread may start one just after it:
    the child must not wait for ever on the module lock of a thread it does not have."""
    (tmp_path / "slowmod.py").write_text("import time\ntime.sleep(1)\nDONE = True\n")
    done = run_python("-c", SLOW_IMPORT_FORK, env=os.environ, cwd=tmp_path)
    assert done.stdout.split() == ["0"], done.stderr[-5000:]


def _other_cpython(name: str) -> str | None:
    """``name`` (python3.12...) when this machine runs it (on the PATH, or installed by pyenv,
    whose shims run only the versions a project selects), else None."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    for found in [shutil.which(name), *sorted(map(str, pyenv.glob(f"versions/*/bin/{name}")))]:
        if found is None:
            continue
        try:
            works = subprocess.run([found, "-c", "pass"], capture_output=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if works.returncode == 0:
            return found
    return None


#: The same fork as SLOW_IMPORT_FORK, with only ``tokenmeter/_fork.py`` loaded (standard library
#: only), so that any CPython can run it without tokenmeter's dependencies.
BARE_SLOW_IMPORT_FORK = """
import importlib.util, os, signal, sys, threading, time
sys.path.insert(0, os.getcwd())
spec = importlib.util.spec_from_file_location("tokenmeter_fork", sys.argv[1])
fork = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fork)
fork._IMPORT_WAIT = 0.05
threading.Thread(target=lambda: __import__("slowmod"), daemon=True).start()
while "slowmod" not in sys.modules:
    time.sleep(0.001)
pid = os.fork()
if pid == 0:
    signal.alarm(20)  # a hung child dies
    import slowmod
    os._exit(0 if slowmod.DONE else 3)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() only")
@pytest.mark.parametrize("name", ["python3.12", "python3.13"])
def test_the_childs_import_mend_fits_each_cpythons_module_locks(tmp_path: Path, name: str) -> None:
    """Module locks are laid out otherwise from CPython 3.12 (an RLock, lists for the counts):
    the mend must make each part anew in its own kind, or the child's import fails."""
    python = _other_cpython(name)
    if python is None:
        pytest.skip(f"{name} is not installed here")
    (tmp_path / "slowmod.py").write_text("import time\ntime.sleep(1)\nDONE = True\n")
    fork = Path(tokenmeter.__file__).parent / "_fork.py"
    done = run_python(
        "-c", BARE_SLOW_IMPORT_FORK, str(fork), env=os.environ, cwd=tmp_path, python=python
    )
    assert done.stdout.split() == ["0"], done.stderr[-5000:]


TERMINATED = """
import os, signal, sys, time, tokenmeter
for name in ("SIGTERM", "SIGHUP"):  # the default, whatever the parent left (nohup: SIGHUP ignored)
    signal.signal(getattr(signal, name), signal.SIG_DFL)
if sys.argv[1] == "own-handler":
    def handler(signum, frame):
        print("app handler", flush=True)
        sys.exit(3)
    signal.signal(signal.SIGTERM, handler)
tokenmeter.instrument()
with tokenmeter.session("job"):
    for i in range(1000):
        tokenmeter.record("openai", "gpt-4o", 100 + i, 10)
    print("ready", flush=True)
    if sys.argv[1] == "blocked":  # the main thread waits in a call that only a signal ends
        import threading
        threading.Event().wait()
    for _ in range(600):  # a handler runs between two sleeps, even if the signal came just
        time.sleep(0.1)   # before the first (CPython checks for signals between bytecodes)
"""


def _terminated_child(tmp_path: Path, mode: str) -> tuple[subprocess.Popen[str], Path]:
    """TERMINATED in a child with the SQLite and JSONL sinks, once its 1,000 calls are made."""
    meter = tmp_path / "meter"
    child = subprocess.Popen(
        [sys.executable, "-c", TERMINATED, mode],
        env={**os.environ, "TOKENMETER_SINKS": "sqlite,jsonl", "TOKENMETER_DIR": str(meter)},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    return child, meter


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_termination_signal_with_the_default_disposition_loses_nothing(
    tmp_path: Path, signum: int
) -> None:
    child, meter = _terminated_child(tmp_path, "default")
    child.send_signal(signum)
    assert child.wait(60) == -signum  # still dies of the signal, as it would without us
    with sqlite3.connect(meter / "usage.db") as db:
        assert db.execute("select count(*) from records").fetchone() == (1000,)
    assert len((meter / "usage.jsonl").read_text().splitlines()) == 1000


def test_a_signal_reaches_the_main_thread_whatever_it_waits_in(tmp_path: Path) -> None:
    """Our threads block the signals sent from outside: received by a writer, a SIGTERM would
    not interrupt the main thread's wait, and the process would neither flush nor die."""
    child, meter = _terminated_child(tmp_path, "blocked")
    time.sleep(0.5)  # the main thread is in its wait now
    child.send_signal(signal.SIGTERM)
    try:
        assert child.wait(60) == -signal.SIGTERM
    finally:
        child.kill()
    with sqlite3.connect(meter / "usage.db") as db:
        assert db.execute("select count(*) from records").fetchone() == (1000,)


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signal masks")
def test_writer_threads_block_the_signals_meant_for_the_application() -> None:
    class MaskSink(InMemorySink):
        def write(self, records: Sequence[UsageRecord]) -> None:
            self.mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])  # the writer's own
            super().write(records)

    sink = MaskSink()
    tokenmeter.configure(sinks=[sink])
    tokenmeter.record("openai", "gpt-4o", 10, 1)
    assert tokenmeter.flush(10)
    assert {signal.SIGTERM, signal.SIGINT, signal.SIGHUP} <= sink.mask
    assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])  # ours only


def test_the_applications_own_sigterm_handler_is_never_replaced(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", TERMINATED, "own-handler"],
        env={**os.environ, "TOKENMETER_SINKS": "sqlite", "TOKENMETER_DIR": str(tmp_path / "m")},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    child.send_signal(signal.SIGTERM)
    assert child.wait(60) == 3
    assert child.stdout.read().strip() == "app handler"
    with sqlite3.connect(tmp_path / "m" / "usage.db") as db:  # its sys.exit() ran atexit
        assert db.execute("select count(*) from records").fetchone() == (1000,)


def test_a_submit_observer_goes_with_its_owner_and_a_reset_forgets_every_one() -> None:
    """An observer left by an owner that is gone (a sink made and dropped unclosed) kept every
    later call's record on the caller's thread for the life of the process; the tests' reset
    left it too, for the next test."""

    class Owner:
        pass

    def observe(item: object) -> None:
        pass

    tokenmeter.configure(sinks=[InMemorySink()])
    tokenmeter.record("openai", "gpt-4o", 10, 2)  # the writers are at work
    assert _pipeline.can_make_later()
    owner = Owner()
    _pipeline.add_submit_observer(observe, owner=owner)
    assert not _pipeline.can_make_later()
    del owner
    gc.collect()
    assert _pipeline.can_make_later()
    assert _pipeline._submit_observers == []

    kept = Owner()
    _pipeline.add_submit_observer(observe, owner=kept)
    _runtime.reset()
    assert _pipeline._submit_observers == []


def test_submit_observers_run_on_the_callers_thread_and_cannot_fail_the_call(
    sink: InMemorySink, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[tuple[str, str]] = []

    def observer(item: object) -> None:
        seen.append((type(item).__name__, threading.current_thread().name))

    def broken(item: object) -> None:
        raise RuntimeError("observer bug")

    _pipeline.add_submit_observer(broken)
    _pipeline.add_submit_observer(observer)
    try:
        made = tokenmeter.record("openai", "gpt-4o", 10, 2)
    finally:
        _pipeline.remove_submit_observer(broken)
        _pipeline.remove_submit_observer(observer)
    tokenmeter.record("openai", "gpt-4o", 10, 2)  # no longer observed
    assert tokenmeter.flush(timeout=10)
    assert ("UsageRecord", threading.current_thread().name) in seen
    assert len([kind for kind, _ in seen if kind == "UsageRecord"]) == 1
    assert sink.records[0].id == made.id and len(sink.records) == 2
    assert "observer bug" in caplog.text


class _VirtualTime:
    """A clock for ``_pipeline.time``: each item iterated costs ``work`` seconds; a pause lasts
    its length, or ``held`` when another thread takes the GIL meanwhile."""

    def __init__(self, work: float, held: float | None) -> None:
        self.now, self.work, self.held = 0.0, work, held
        self.pauses: list[float] = []

    def perf_counter(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.pauses.append(self.now)
        self.now += seconds if self.held is None else self.held


def _gaps(monkeypatch: pytest.MonkeyPatch, *, held: float | None) -> list[float]:
    """The work done between pauses while iterating 400 items of 0.1 ms each."""
    clock = _VirtualTime(work=0.0001, held=held)
    monkeypatch.setattr(_pipeline, "time", clock)
    for _ in _pipeline._Paced(range(400)):
        clock.now += clock.work
    pause = _pipeline._YIELD if held is None else held
    return [b - a - pause for a, b in zip(clock.pauses, clock.pauses[1:], strict=False)]


def test_a_writer_pauses_every_slice_while_a_caller_takes_the_gil(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gaps = _gaps(monkeypatch, held=0.005)  # the caller held the GIL for a switch interval
    assert len(gaps) > 50
    assert all(_pipeline._SLICE <= gap < _pipeline._SLICE + 0.0001 + 1e-9 for gap in gaps)


def test_a_writer_alone_lengthens_its_slices_up_to_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gaps = _gaps(monkeypatch, held=None)  # nobody used the pauses
    assert gaps[0] >= 2 * _pipeline._SLICE
    assert all(gap < _pipeline._MAX_SLICE + 0.0001 + 1e-9 for gap in gaps)
    assert len(gaps) < len(_gaps(monkeypatch, held=0.005)) / 2


class FileSink:
    """An application's sink that writes one line per record to a file it opened once."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("a")
        self.closed = 0

    def write(self, records: Sequence[UsageRecord]) -> None:
        for record in records:
            self.file.write(record.id + "\n")

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.closed += 1
        self.file.close()


def test_configure_again_goes_on_with_the_applications_own_sink_unclosed(tmp_path: Path) -> None:
    """configure() again (a price override added) replaces the pipeline: an application's sink
    object it still names is not closed by the old one, so the new one can go on using it."""
    mine = FileSink(tmp_path / "mine.txt")
    tokenmeter.configure(sinks=[mine])
    first = tokenmeter.record("openai", "gpt-4o", 1, 1)
    assert tokenmeter.flush(30)
    tokenmeter.configure(prices={"my-model": {"input_per_mtok": 1, "output_per_mtok": 2}})
    second = tokenmeter.record("openai", "gpt-4o", 2, 1)
    assert tokenmeter.flush(30)
    assert mine.closed == 0
    assert (tmp_path / "mine.txt").read_text().split() == [first.id, second.id]
    tokenmeter.configure(sinks=["jsonl"])  # no longer named: closed once
    assert mine.closed == 1


def _default_sqlite_sink() -> SQLiteSink:
    """The ``sqlite`` default sink the pipeline writes with now (made if none is yet)."""
    found = [w.sink for w in _pipeline._get().writers if isinstance(w.sink, SQLiteSink)]
    assert len(found) == 1
    return found[0]


def test_configure_leaving_the_store_alone_goes_on_with_the_same_default_sinks(
    tmp_path: Path,
) -> None:
    """A reload (budgets, hooks, exit_timeout) made a new SQLiteSink for the same usage.db each
    time, with a writer of its own beside the old one's; a respelt directory is the same store.
    Another directory, or other sinks, are other sink objects."""
    os.chdir(tmp_path)
    tokenmeter.configure(directory=tmp_path / "store", sinks=["sqlite", "jsonl"])
    tokenmeter.record("openai", "gpt-4o", 1, 1)
    first = _default_sqlite_sink()
    tokenmeter.configure(exit_timeout=5, on_session_end=[])
    assert _default_sqlite_sink() is first
    tokenmeter.configure(directory="./store/../store")
    assert _default_sqlite_sink() is first
    tokenmeter.configure(directory=tmp_path / "other")
    assert _default_sqlite_sink() is not first
    tokenmeter.record("openai", "gpt-4o", 2, 1)
    assert tokenmeter.flush(30)
    counted = [
        sqlite3.connect(tmp_path / name / "usage.db").execute("select count(*) from records")
        for name in ("store", "other")
    ]
    assert [c.fetchone()[0] for c in counted] == [1, 1]


def test_configure_leaving_the_store_alone_never_sets_an_open_sessions_row_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """configure(exit_timeout=...) while a session was open: the old SQLiteSink's writer, held
    in its write of the session's opening row (a busy disk), stored it after the new sink's
    writer had stored the closing one: the finished session's row stayed ('active', 0 calls)."""
    tokenmeter.configure(directory=tmp_path / "store", sinks=["sqlite"], exit_timeout=0.1)
    tokenmeter.record("openai", "gpt-4o", 1, 1)
    assert tokenmeter.flush(30)
    held = Held()
    store = SQLiteSink.write_sessions

    def held_once(sink: SQLiteSink, sessions: Sequence[SessionInfo]) -> None:
        if not held.entered.is_set():
            held.hold()
        store(sink, sessions)

    monkeypatch.setattr(SQLiteSink, "write_sessions", held_once)
    try:
        with tokenmeter.session("job") as job:
            assert held.entered.wait(30)  # the opening row is being written
            tokenmeter.configure(exit_timeout=10)  # the store is the same
            tokenmeter.record("openai", "gpt-4o", 1000, 100)
    finally:
        held.release.set()
    assert tokenmeter.flush(30)
    row = (
        sqlite3.connect(tmp_path / "store" / "usage.db")
        .execute("select status, calls, input_tokens from sessions where id = ?", (job.id,))
        .fetchone()
    )
    assert row == ("completed", 1, 1000)


class OneAtATime(InMemorySink):
    """Notes a write made while another is under way (a sink need not be thread-safe); holds
    the write of a record of 1 input token until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.entered = threading.Event()
        self.writing = 0
        self.overlapped = False

    def write(self, records: Sequence[UsageRecord]) -> None:
        self.writing += 1
        self.overlapped |= self.writing > 1
        try:
            if records[0].input_tokens == 1:
                self.entered.set()
                self.release.wait()
            super().write(records)
        finally:
            self.writing -= 1


def test_configure_again_never_lets_two_writers_call_the_applications_sink_at_once() -> None:
    """configure() stops waiting for the old pipeline after exit_timeout: a sink object it
    passes on, still inside a slow write, was given a second writer by the new pipeline, which
    wrote the next records at the same time and before the held ones."""
    mine = OneAtATime()
    tokenmeter.configure(sinks=[mine], exit_timeout=0.1)
    held = tokenmeter.record("openai", "gpt-4o", 1, 1)
    assert mine.entered.wait(30)
    tokenmeter.configure(prices={"my-model": {"input_per_mtok": 1, "output_per_mtok": 2}})
    later = tokenmeter.record("openai", "gpt-4o", 2, 1)
    tokenmeter.flush(0.3)  # the sink is still held
    mine.release.set()
    assert tokenmeter.flush(30)
    assert not mine.overlapped
    assert [r.id for r in mine.records] == [held.id, later.id]


def test_a_sink_configure_left_writing_in_the_background_and_named_again_keeps_one_writer() -> None:
    """configure() replaced a sink inside a slow write (an upload taking 2 s) and left its writer
    to finish in the background after exit_timeout; a later configure() naming the same object
    again gave it a second writer: two threads called its write() at once (2 overlapping calls
    in 3 of 3 runs), where the docs promise a sink never is. The first writer goes on instead,
    with the records it still holds, in order."""
    mine, other = OneAtATime(), InMemorySink()
    tokenmeter.configure(sinks=[mine, other], exit_timeout=0.1)
    held = tokenmeter.record("openai", "gpt-4o", 1, 1)
    assert mine.entered.wait(30)
    waiting = tokenmeter.record("openai", "gpt-4o", 2, 1)  # behind the held write
    tokenmeter.configure(sinks=[other])  # mine is left to finish in the background
    tokenmeter.configure(sinks=[mine, other])
    later = tokenmeter.record("openai", "gpt-4o", 3, 1)
    tokenmeter.flush(0.3)  # the sink is still held
    mine.release.set()
    assert tokenmeter.flush(30)
    assert not mine.overlapped
    assert [r.id for r in mine.records] == [held.id, waiting.id, later.id]


class HeldInClose(Held, InMemorySink):
    """The in-memory sink, held in ``close``; notes a write made while it is closing."""

    def __init__(self) -> None:
        super().__init__()
        self.closing = False
        self.wrote_while_closing = False

    def write(self, records: Sequence[UsageRecord]) -> None:
        self.wrote_while_closing |= self.closing
        super().write(records)

    def close(self) -> None:
        self.closing = True
        self.hold()
        self.closing = False


def test_a_sink_named_again_while_its_old_writer_closes_it_is_written_once_that_is_done() -> None:
    """A sink whose close() outlasted exit_timeout (a file lock held elsewhere), named again
    by a later configure(): its new writer wrote to it while the old one was still closing it
    (JSONLSink: the descriptor closed under the new writer's append, "Bad file descriptor")."""
    mine, other = HeldInClose(), InMemorySink()
    tokenmeter.configure(sinks=[mine, other], exit_timeout=0.1)
    first = tokenmeter.record("openai", "gpt-4o", 1, 1)
    assert tokenmeter.flush(30)
    tokenmeter.configure(sinks=[other])
    assert mine.entered.wait(30)  # its writer is closing it, held there
    tokenmeter.configure(sinks=[mine, other])
    second = tokenmeter.record("openai", "gpt-4o", 2, 1)
    assert not tokenmeter.flush(0.3)  # held behind the close
    mine.release.set()
    assert tokenmeter.flush(30)
    assert not mine.wrote_while_closing
    assert [r.id for r in mine.records] == [first.id, second.id]


def test_flush_right_after_configure_waits_for_the_records_a_kept_sink_still_holds() -> None:
    mine = OneAtATime()
    tokenmeter.configure(sinks=[mine], exit_timeout=0.1)
    held = tokenmeter.record("openai", "gpt-4o", 1, 1)
    assert mine.entered.wait(30)
    tokenmeter.configure(prices={"my-model": {"input_per_mtok": 1, "output_per_mtok": 2}})
    assert not tokenmeter.flush(0.1)  # no record since: the kept sink's writer is still at work
    mine.release.set()
    assert tokenmeter.flush(30)
    assert [r.id for r in mine.records] == [held.id]


def test_flush_while_configure_replaces_a_sink_waits_for_the_records_it_still_holds() -> None:
    """configure() on another thread waits for the sink it replaces to write what it holds:
    meanwhile flush() waited only for the new sinks, and returned True at once with the old
    sink one record short (a remote collector taking a second a write: 1 of 2 records), though
    it promises every record made so far in every sink (flush() then os._exit())."""
    old, new = OneAtATime(), InMemorySink()
    tokenmeter.configure(sinks=[old])
    held = tokenmeter.record("openai", "gpt-4o", 1, 1)
    assert old.entered.wait(30)
    replacing = threading.Thread(target=tokenmeter.configure, kwargs={"sinks": [new]})
    replacing.start()
    try:
        wait_for(lambda: bool(_pipeline._ending), "configure() stops the old sink")
        assert not tokenmeter.flush(0.1)  # the old sink is still writing the record
        old.release.set()
        assert tokenmeter.flush(30)
        assert [r.id for r in old.records] == [held.id] and new.records == []
    finally:
        old.release.set()
        replacing.join(30)


AFTER_THE_EXIT_FLUSH = """
import atexit, sys

def late():  # registered before tokenmeter's own exit hook: runs after it
    import tokenmeter
    tokenmeter.record("openai", "gpt-4o", 5, 5)
    CLIENT.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])

atexit.register(late)
import tokenmeter
from tokenmeter.testing import FakeProvider

tokenmeter.instrument()
CLIENT = FakeProvider().start().openai_client(max_retries=0)
tokenmeter.record("openai", "gpt-4o", 1, 1)
"""


def test_records_made_after_the_exit_flush_are_still_written(tmp_path: Path) -> None:
    """An exit hook that runs after tokenmeter's (atexit runs the last registered first) made a
    record and an LLM call after the sinks were flushed and closed: both went nowhere."""
    env = {**os.environ, "TOKENMETER_SINKS": "sqlite,jsonl", "TOKENMETER_DIR": str(tmp_path / "m")}
    done = run_python("-c", AFTER_THE_EXIT_FLUSH, env=env, cwd=tmp_path)
    assert "Traceback" not in done.stderr
    with sqlite3.connect(tmp_path / "m" / "usage.db") as db:
        rows = db.execute("select input_tokens from records order by rowid").fetchall()
    assert len(rows) == 3 and rows[:2] == [(1,), (5,)]
    assert (tmp_path / "m" / "usage.jsonl").read_text().count("\n") == 3


FIRST_USED_AFTER_THE_EXIT_FLUSH = """
import atexit

def late():  # tokenmeter's delivery is first used here, in an exit hook
    import tokenmeter
    tokenmeter.record("openai", "gpt-4o", 5, 5)

atexit.register(late)
import tokenmeter
"""


def test_records_of_an_exit_hook_that_first_uses_tokenmeter_are_written(tmp_path: Path) -> None:
    """tokenmeter's own exit hook is registered when its delivery is first used: inside an exit
    hook, too late to run, so the record waited in a buffer nobody wrote (and importing the
    session module there raised RuntimeError: can't register atexit after shutdown)."""
    env = {**os.environ, "TOKENMETER_SINKS": "sqlite,jsonl", "TOKENMETER_DIR": str(tmp_path / "m")}
    done = run_python("-c", FIRST_USED_AFTER_THE_EXIT_FLUSH, env=env, cwd=tmp_path)
    assert "Traceback" not in done.stderr, done.stderr
    with sqlite3.connect(tmp_path / "m" / "usage.db") as db:
        assert db.execute("select input_tokens from records").fetchall() == [(5,)]
    assert (tmp_path / "m" / "usage.jsonl").read_text().count("\n") == 1


FAILING_AT_EXIT = """
import fcntl, os, sys, threading, tokenmeter
from tokenmeter.sinks import InMemorySink

class Broken(InMemorySink):
    def write(self, records):
        raise OSError("disk full")

class Hung(InMemorySink):
    def write(self, records):
        threading.Event().wait()

sink = Hung() if sys.argv[1] == "hung" else Broken()
tokenmeter.configure(sinks=[sink], exit_timeout=float(sys.argv[2]))
tokenmeter.record("openai", "gpt-4o", 1, 1)
if sys.argv[1] == "cut":  # what it refused is set aside in a file locked until the end
    os.makedirs(os.environ["TOKENMETER_DIR"], exist_ok=True)
    held = open(os.path.join(os.environ["TOKENMETER_DIR"], "quarantine.jsonl"), "a")
    fcntl.flock(held, fcntl.LOCK_EX)
    for _ in range(1_000):
        tokenmeter.record("openai", "gpt-4o", 1, 1)
    assert not tokenmeter.flush(30)  # it kept failing: released at once at exit
"""


@pytest.mark.parametrize(
    ("how", "exit_timeout", "said"),
    [
        ("failing", "60", "sinks Broken failed to write every record at exit"),
        ("hung", "0.3", "sinks Hung did not accept every record at exit within exit_timeout"),
        ("cut", "0.5", "sinks Broken did not accept every record at exit within exit_timeout"),
    ],
)
def test_exit_says_whether_a_sink_failed_or_ran_out_of_time(
    tmp_path: Path, how: str, exit_timeout: str, said: str
) -> None:
    """A sink that failed at once was reported as not done "within 60s". One whose writer was
    still setting aside what it refused when exit_timeout ran out (a sink down for long holds up
    to max_queue records; here the quarantine file is locked) was said to have failed, which at
    exit means set aside: the records the writer never reached were lost without a word."""
    env = {**os.environ, "TOKENMETER_DIR": str(tmp_path / "m")}
    done = run_python("-c", FAILING_AT_EXIT, how, exit_timeout, env=env, cwd=tmp_path)
    assert said in done.stderr
    assert ("within" in done.stderr) == (how != "failing")


NO_EXIT_TIMEOUT = """
import tokenmeter
tokenmeter.configure(sinks=["jsonl"], exit_timeout=0)
for _ in range(50):
    tokenmeter.record("openai", "gpt-4o", 1, 1)
"""


def test_exit_timeout_0_names_no_sink_that_took_every_record(tmp_path: Path) -> None:
    """``exit_timeout=0`` (accepted): the exit flush's wait ends at once, and the writers then
    write what they hold as they stop (a short grace). Every sink was named as not having
    accepted every record at exit, although all of them were in its file. It is named only
    when it did not take them all."""
    env = {**os.environ, "TOKENMETER_DIR": str(tmp_path / "m")}
    done = run_python("-c", NO_EXIT_TIMEOUT, env=env, cwd=tmp_path)
    stored = len((tmp_path / "m" / "usage.jsonl").read_text().splitlines())
    # A machine too busy to run the writer within the grace leaves some unwritten: then it says so.
    assert ("did not accept every record" in done.stderr) == (stored < 50), done.stderr


SIGTERM_IN_A_LOCK_OF_OURS = """
import os, signal, time, tokenmeter
from tokenmeter import _pipeline
tokenmeter.configure(sinks=["jsonl"], exit_timeout=4)
tokenmeter.record("openai", "gpt-4o", 5, 5)
with _pipeline._later_lock:  # as while the main thread makes a waiting call's record
    os.kill(os.getpid(), signal.SIGTERM)
    print(_pipeline.exit_deadline() is not None, flush=True)
    time.sleep(0.3)
time.sleep(30)
print("not ended", flush=True)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name != "posix", reason="POSIX signals")
def test_a_sigterm_put_off_by_a_lock_of_ours_counts_in_exit_timeout(tmp_path: Path) -> None:
    """A SIGTERM landing while the main thread holds a lock of ours is put off until it lets
    go (sent again). That wait started the exit's clock only when the flush began, so a lock
    held long (a logging handler that blocks) made the exit take up to twice exit_timeout, past
    docker stop's grace. The exit's clock starts at the first putting off; the process still
    dies of the signal once the lock is let go, its record written."""
    env = {**os.environ, "TOKENMETER_DIR": str(tmp_path / "m")}
    done = subprocess.run(
        [sys.executable, "-c", SIGTERM_IN_A_LOCK_OF_OURS],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == -signal.SIGTERM, done.stdout + done.stderr
    assert done.stdout.split() == ["True"], done.stdout + done.stderr
    assert len((tmp_path / "m" / "usage.jsonl").read_text().splitlines()) == 1


REFUSING_AT_EXIT = """
import tokenmeter
from tokenmeter.sinks import InMemorySink
class Bad(InMemorySink):
    def write(self, records):
        if any(r.model_name == "bad" for r in records):
            raise ValueError("bad record")
        super().write(records)
tokenmeter.configure(sinks=[Bad()], exit_timeout=0)
for i in range(50):
    tokenmeter.record("openai", "bad" if i == 10 else "gpt-4o", 1, 1)
"""


def test_exit_timeout_0_names_a_sink_that_refused_a_record_as_it_stopped(tmp_path: Path) -> None:
    """``exit_timeout=0``, and a sink that refuses one record of the batch its writer writes as
    it stops: the record is set aside, and the exit's summary must name the sink, as it does
    with time to wait (the line that leaves out sinks that took everything left it out too)."""
    env = {**os.environ, "TOKENMETER_DIR": str(tmp_path / "m")}
    done = run_python("-c", REFUSING_AT_EXIT, env=env, cwd=tmp_path)
    set_aside = (tmp_path / "m" / "quarantine.jsonl").read_text().splitlines()
    assert len(set_aside) == 1, done.stderr
    assert re.search(r"sinks Bad (did not accept|failed to write) every record", done.stderr), (
        done.stderr
    )


HUNG_BESIDE_HEALTHY = """
import sys, threading, tokenmeter
from tokenmeter.sinks import InMemorySink

class Hung(InMemorySink):
    def write(self, records):
        threading.Event().wait()

class Closing(InMemorySink):
    def close(self):
        print("closed", len(self.records), flush=True)

tokenmeter.configure(sinks=[Hung(), Closing(), "jsonl"], exit_timeout=1)
tokenmeter.record("openai", "gpt-4o", 1, 1)
assert not tokenmeter.flush(0.5)  # the hung sink's write holds the first record
for _ in range(19):
    tokenmeter.record("openai", "gpt-4o", 1, 1)
"""


def test_a_hung_sink_at_exit_is_the_only_one_named_and_the_others_are_closed(
    tmp_path: Path,
) -> None:
    """The exit woke the writers one after another, each after the one before it had ended or
    used up what was left of exit_timeout: behind a hung sink, the healthy ones were woken
    with nothing left, cut off before closing their sinks, and named as not having accepted
    their records, which they had."""
    env = {**os.environ, "TOKENMETER_DIR": str(tmp_path / "m")}
    done = run_python("-c", HUNG_BESIDE_HEALTHY, env=env, cwd=tmp_path)
    assert "sinks Hung did not accept every record at exit" in done.stderr
    assert "Closing" not in done.stderr and "JSONLSink" not in done.stderr
    assert done.stdout.split() == ["closed", "20"]
    assert len((tmp_path / "m" / "usage.jsonl").read_text().splitlines()) == 20
    # What the hung sink held beyond its unfinished write (19 records, the implicit session)
    # is set aside, not lost with its thread; the one in the write is said to be at risk.
    assert "20 records and sessions held by Hung were set aside" in done.stderr, done.stderr
    assert "1 records and sessions held by Hung (in its unfinished write" in done.stderr
    lines = [json.loads(line) for line in (tmp_path / "m" / "quarantine.jsonl").open()]
    assert [line["sink"] for line in lines] == ["Hung"] * 20
    assert sum("model_name" in line["record"] for line in lines) == 19


HUNG_IN_ITS_FLUSH = """
import threading, tokenmeter
from tokenmeter.sinks import InMemorySink

class Uploader(InMemorySink):  # posts its batch in flush(), to a server that stopped answering
    def flush(self):
        threading.Event().wait()

tokenmeter.configure(sinks=[Uploader(), "jsonl"], exit_timeout=1)
for _ in range(10):
    tokenmeter.record("openai", "gpt-4o", 1, 1)
assert not tokenmeter.flush(timeout=1)  # its writer is in the sink's flush() from now on
for _ in range(100):
    tokenmeter.record("openai", "gpt-4o", 1, 1, tags={"late": "1"})
"""


def test_what_a_sink_hung_in_its_own_flush_holds_at_exit_is_set_aside(tmp_path: Path) -> None:
    """A sink hung in its own flush() (an uploader whose server stopped answering), the exit
    set aside nothing its writer held: "101 records and sessions still held by Uploader may be
    lost", and 0 of the 100 records made after it hung were in quarantine.jsonl. They were never
    handed to the sink (no write is unfinished): they are set aside, as behind a hung write."""
    env = {**os.environ, "TOKENMETER_DIR": str(tmp_path / "m")}
    done = run_python("-c", HUNG_IN_ITS_FLUSH, env=env, cwd=tmp_path)
    assert "sinks Uploader did not accept every record at exit" in done.stderr, done.stderr
    assert "101 records and sessions held by Uploader were set aside" in done.stderr, done.stderr
    assert "may be lost" not in done.stderr, done.stderr
    lines = [json.loads(line) for line in (tmp_path / "m" / "quarantine.jsonl").open()]
    assert [line["sink"] for line in lines] == ["Uploader"] * 101
    late = [line for line in lines if line["record"].get("tags") == {"late": "1"}]
    assert len(late) == 100
    assert len((tmp_path / "m" / "usage.jsonl").read_text().splitlines()) == 110


SLOW_TO_FAIL_ALONE = """
import sys, threading, tokenmeter

class Down:
    \"\"\"A server that refuses batches, takes three records one at a time, then never answers
    the next write of one (a connection it takes and never answers, as a collector that is
    down and slow to fail does).\"\"\"
    def __init__(self):
        self.hung = threading.Event()
    def write(self, records):
        records = list(records)
        if len(records) > 1:
            raise ConnectionError("collector unreachable")
        with open(sys.argv[1]) as taken:
            if len(taken.readlines()) == 3:
                self.hung.set()
                threading.Event().wait()
        with open(sys.argv[1], "a") as taken:
            taken.write(records[0].id + "\\n")
    def flush(self):
        pass
    def close(self):
        pass

down = Down()
tokenmeter.configure(sinks=[down], exit_timeout=1)
for _ in range(500):
    print(tokenmeter.record("openai", "gpt-4o", 10, 1).id)
assert down.hung.wait(60)  # cut off at exit inside a write of its one-at-a-time pass
"""


def test_a_sink_cut_off_at_exit_in_a_write_of_one_record_has_the_rest_set_aside(
    tmp_path: Path,
) -> None:
    """A sink down and slow to fail spends the exit in the writes of one record that follow
    failing batches; those writes were not marked as the sink's, so the writer cut off there
    was "not inside a write": 0 of 500 records set aside, "502 records and sessions still held
    by Down may be lost". What it holds is set aside now, but the records that pass already
    wrote (not twice) and the one in the unfinished write (at risk)."""
    (tmp_path / "taken").touch()
    env = {**os.environ, "TOKENMETER_DIR": str(tmp_path / "m")}
    done = run_python("-c", SLOW_TO_FAIL_ALONE, str(tmp_path / "taken"), env=env, cwd=tmp_path)
    made = done.stdout.split()
    taken = (tmp_path / "taken").read_text().split()
    lines = [json.loads(line) for line in (tmp_path / "m" / "quarantine.jsonl").open()]
    set_aside = [line["record"]["id"] for line in lines if "model_name" in line["record"]]
    assert taken == made[:3]
    assert set_aside == made[4:], done.stderr  # the fourth is in the unfinished write
    assert "1 records and sessions held by Down (in its unfinished write" in done.stderr


@pytest.mark.parametrize("paced", [False, True])
def test_a_catch_up_makes_the_calls_waiting_when_it_began(
    monkeypatch: pytest.MonkeyPatch, paced: bool
) -> None:
    """Threads queueing calls as fast as a writer made their records kept its catch-up going:
    it never wrote, its sink's buffer dropped what passed max_queue (18,002 of 23,002 records
    in 20 s, every sink healthy), and a configure() or an exit waiting for it ran far past
    exit_timeout. Here each record made queues another call, as a busy thread would."""
    made: list[tuple[str, ...]] = []

    def make(session: object, call: tuple[str, ...]) -> None:
        made.append(call)
        if len(made) < 1_000:
            _pipeline._later.extend((None, ("queued meanwhile",)))

    monkeypatch.setattr(_pipeline, "make_later", make)
    monkeypatch.setattr(_pipeline, "_later", type(_pipeline._later)())
    _pipeline._later.extend((None, ("a",), None, ("b",)))
    _pipeline.catch_up(paced=paced)
    assert made == [("a",), ("b",)]
    assert len(_pipeline._later) == 4  # the next catch-up's


@pytest.mark.parametrize("waiting", [0, 201])
def test_a_writer_whose_records_are_about_to_be_dropped_stops_pausing(
    monkeypatch: pytest.MonkeyPatch, waiting: int
) -> None:
    """A writer pauses between slices of work for the callers; busy callers took the GIL at
    every pause and kept it (CPython does not hand it to a waiting thread while its holder lets
    go of it briefly and often, as the SDKs do once per call), so the writer fell behind at each
    pause, and a healthy sink dropped records past max_queue (15,571 of 24,602 with
    max_queue=5,000 and 8 busy threads). Past half of max_queue, it no longer pauses."""
    paused: list[float] = []
    monkeypatch.setattr(_pipeline, "_max_queue", 100)
    monkeypatch.setattr(_pipeline, "_later", type(_pipeline._later)([None] * 2 * waiting))
    monkeypatch.setattr(_pipeline, "_SLICE", 0.0)  # a pause after every item, unless behind
    monkeypatch.setattr(_pipeline.time, "sleep", paused.append)
    assert list(_pipeline._paced(iter(range(10)), 0.0)) == list(range(10))
    assert len(paused) == (10 if not waiting else 0)


def test_only_a_writer_kept_from_the_gil_makes_the_writers_stop_pausing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past half of max_queue the writers stop pausing (callers then wait for the GIL one
    switch interval), but not for a sink that holds records because it fails or hangs (an
    OpenTelemetry collector down for a minute): the other writers keep their pauses, and the
    callers' latency."""
    from types import SimpleNamespace

    writer = SimpleNamespace(
        _buffer=[None] * 6, max_queue=10, _failures=0, _writing_since=None, _flushing_since=None
    )
    monkeypatch.setattr(_pipeline, "_pipeline", SimpleNamespace(writers=[writer]))
    monkeypatch.setattr(_pipeline, "_later", type(_pipeline._later)())
    assert _pipeline._behind()  # 6 of 10 wait: kept from the GIL
    writer._failures = 1
    assert not _pipeline._behind()  # failing: backing off, not starved
    writer._failures, writer._writing_since = 0, time.monotonic() - 2 * _pipeline._HUNG_S
    assert not _pipeline._behind()  # inside one write for long: hung
    writer._writing_since = time.monotonic()
    assert _pipeline._behind()
    writer._flushing_since = time.monotonic() - 2 * _pipeline._HUNG_S
    assert not _pipeline._behind()  # inside its own flush() for long: hung
    writer._flushing_since = None
    writer._buffer = [None] * 5
    assert not _pipeline._behind()  # half, not past it


def test_a_sink_object_named_twice_gets_every_record_once() -> None:
    """configure(sinks=[mine, mine]) (or a sink attached by ``tokenmeter run`` and named again)
    made two writers for one object: every record written twice, by two threads at once."""
    mine = OneAtATime()
    mine.release.set()
    tokenmeter.configure(sinks=[mine, mine])
    made = [tokenmeter.record("openai", "gpt-4o", 2, 1) for _ in range(3)]
    assert tokenmeter.flush(30)
    assert [r.id for r in mine.records] == [r.id for r in made]
    assert not mine.overlapped


class Redacting(InMemorySink):
    """A user's sink that edits what it is given before keeping it (drops a tag, adds one,
    clears the cost breakdown), then lets ``after`` go."""

    def __init__(self) -> None:
        super().__init__()
        self.done = threading.Event()

    def write(self, records: Sequence[UsageRecord]) -> None:
        for record in records:
            record.tags.pop("user", None)
            record.tags["redacted"] = "yes"
            if record.cost_breakdown is not None:
                record.cost_breakdown.clear()
            record.modalities["input_image"] = 1
        super().write(records)
        self.done.set()

    def write_sessions(self, sessions: Sequence[SessionInfo]) -> None:
        for session in sessions:
            session.tags.clear()
        super().write_sessions(sessions)


class AfterRedacting(InMemorySink):
    """Writes only once the redacting sink has written (the order the race may take)."""

    def __init__(self, redacting: Redacting) -> None:
        super().__init__()
        self.redacting = redacting

    def write(self, records: Sequence[UsageRecord]) -> None:
        self.redacting.done.wait(30)
        super().write(records)


def test_a_sink_that_edits_its_records_changes_no_other_sinks_nor_later_records() -> None:
    """A sink is handed the record objects the other sinks get, whose mappings the session's
    later records share: a user's sink editing its own (dropping a tag) changed what every
    other sink stored, and the tags of every later record of the session."""
    redacting = Redacting()
    other = AfterRedacting(redacting)
    tokenmeter.configure(sinks=[redacting, other])
    with tokenmeter.session("job", tags={"user": "alice"}):
        first = tokenmeter.record("openai", "gpt-4o", 1_000, 100, modalities={"input_text": 1})
        assert tokenmeter.flush(30)
        later = tokenmeter.record("openai", "gpt-4o", 1_000, 100)
    assert tokenmeter.flush(30)
    assert first.tags == later.tags == {"user": "alice"}
    assert first.modalities == {"input_text": 1} and first.cost_breakdown
    assert other.records == [first, later]
    assert [s.tags for s in other.sessions.values()] == [{"user": "alice"}]
    assert [r.tags for r in redacting.records] == [{"redacted": "yes"}] * 2


def test_a_record_made_while_another_thread_configures_is_never_lost() -> None:
    """A thread took the pipeline, then configure() on another thread stopped its writers before
    the record was queued: it went into a buffer nobody reads any more. (A submit observer, as
    the OTel sink installs, widens that window; here it waits for the configure() to end.)"""
    mine = InMemorySink()
    tokenmeter.configure(sinks=[mine, "jsonl"])
    tokenmeter.record("openai", "gpt-4o", 1, 1)
    entered, go = threading.Event(), threading.Event()

    def observer(item: UsageRecord | SessionInfo) -> None:
        if threading.current_thread().name == "recorder":
            entered.set()
            go.wait()

    _pipeline.add_submit_observer(observer)
    try:
        made: list[UsageRecord] = []
        recorder = threading.Thread(
            target=lambda: made.append(tokenmeter.record("openai", "gpt-4o", 2, 1)),
            name="recorder",
        )
        recorder.start()
        assert entered.wait(30)
        tokenmeter.configure(sinks=[mine, "jsonl"])  # a new JSONL sink; mine goes on
        go.set()
        recorder.join(30)
    finally:
        _pipeline.remove_submit_observer(observer)
    assert tokenmeter.flush(30)
    assert [r.input_tokens for r in mine.records] == [1, 2]
    lines = (Path(".tokenmeter") / "usage.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines][1:] == [made[0].id]


FLUSH_AFTER_THE_EXIT_FLUSH = """
import atexit

def late():  # runs after tokenmeter's exit hook
    import tokenmeter
    print(tokenmeter.flush(30))
    tokenmeter.record("openai", "gpt-4o", 5, 5)
    print(tokenmeter.flush(30))

atexit.register(late)
import tokenmeter

tokenmeter.record("openai", "gpt-4o", 1, 1)
"""


def test_flush_in_an_exit_hook_after_tokenmeters_says_whether_all_is_written(
    tmp_path: Path,
) -> None:
    """It returned False (as if a sink had failed) once the exit flush had ended the writers,
    though everything was written."""
    env = {**os.environ, "TOKENMETER_SINKS": "jsonl", "TOKENMETER_DIR": str(tmp_path / "m")}
    done = run_python("-c", FLUSH_AFTER_THE_EXIT_FLUSH, env=env, cwd=tmp_path)
    assert done.stdout.split() == ["True", "True"]
    assert (tmp_path / "m" / "usage.jsonl").read_text().count("\n") == 2


class Reconfiguring(InMemorySink):
    """Calls configure() from its own write, as an on_alert callback may (callbacks run on the
    alert sink's writer thread), naming other sinks: its writer is one of those that end."""

    def __init__(self, then: InMemorySink) -> None:
        super().__init__()
        self.then = then
        self.raised: list[BaseException] = []

    def write(self, records: Sequence[UsageRecord]) -> None:
        super().write(records)
        try:
            tokenmeter.configure(sinks=[self.then])
        except Exception as exc:
            self.raised.append(exc)


def test_configure_from_a_sinks_own_writer_thread_never_raises() -> None:
    """configure() joined every old writer, the one it ran on included: "RuntimeError: cannot
    join current thread" raised into the callback, and the settings were half applied."""
    other = InMemorySink()
    mine = Reconfiguring(then=other)
    tokenmeter.configure(sinks=[mine])
    first = tokenmeter.record("openai", "gpt-4o", 1, 1)
    assert tokenmeter.flush(30)
    second = tokenmeter.record("openai", "gpt-4o", 2, 1)
    assert tokenmeter.flush(30)
    assert mine.raised == []
    assert [r.id for r in mine.records] == [first.id]
    assert [r.id for r in other.records] == [second.id]


SLOWER_THAN_EXIT_TIMEOUT = """
import time, tokenmeter
from tokenmeter.sinks import InMemorySink

class Slow(InMemorySink):
    def write(self, records):
        time.sleep(1)
        super().write(records)
        print("written", len(records), flush=True)

tokenmeter.configure(sinks=[Slow()], exit_timeout=0.2)
tokenmeter.record("openai", "gpt-4o", 1, 1)
tokenmeter.configure(sinks=[InMemorySink()], exit_timeout=60)  # the old sink is still writing
"""


def test_exit_waits_for_a_sink_configure_left_still_writing(tmp_path: Path) -> None:
    """configure() stops waiting for the old sinks after their exit_timeout; one still writing
    then was forgotten: the process exited under it without a word and its records were lost."""
    env = {**os.environ, "TOKENMETER_DIR": str(tmp_path / "m")}
    done = run_python("-c", SLOWER_THAN_EXIT_TIMEOUT, env=env, cwd=tmp_path)
    assert done.stdout.split() == ["written", "1"]
    assert "sinks Slow were still writing after exit_timeout (0.2s)" in done.stderr


def test_a_child_forked_while_a_line_is_appended_holds_no_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The quarantine file, the state file and alerts.jsonl are appended under a ``flock`` that
    was let go by closing the descriptor: a child forked meanwhile (a pool worker) kept a copy,
    and every later append, by any process, waited for that child to exit."""
    import fcntl

    from tokenmeter.sinks import _files

    path = tmp_path / "quarantine.jsonl"
    real_append = _files.append_whole
    go_read, go_write = os.pipe()
    children = []

    def append_while_forking(fd: int, data: bytes) -> None:
        pid = os.fork()  # another thread of the application forks right now
        if pid == 0:
            os.read(go_read, 1)  # lives on, as a pool worker does, until told
            os._exit(0)
        children.append(pid)
        real_append(fd, data)

    monkeypatch.setattr(_files, "append_whole", append_while_forking)
    _files.append_line(path, b'{"a": 1}\n')
    try:
        with path.open("rb") as other:
            fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError if held
    finally:
        os.write(go_write, b"x")
        for pid in children:
            os.waitpid(pid, 0)
    assert path.read_bytes() == b'{"a": 1}\n'


EXEC_SCRIPT = """
import os, sys, tokenmeter

replace = [sys.executable, "-c", "print('replaced')"]
how = sys.argv[1]
made = 5 if how in ("fork", "failed") else 300
for n in range(2 if how in ("fork", "failed") else made):
    tokenmeter.record("openai", "gpt-4o", 10 + n, 1)
if how == "execv":
    os.execv(sys.executable, replace)
elif how == "execl":
    os.execl(sys.executable, *replace)
elif how == "execvpe":
    os.execvpe(sys.executable, replace, dict(os.environ))
elif how == "fork":  # the child records its own, then execs (as pty.spawn does)
    pid = os.fork()
    if pid == 0:
        for n in range(3):
            tokenmeter.record("openai", "gpt-4o", 100 + n, 1)
        os.execv(sys.executable, replace)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
elif how == "failed":
    try:
        os.execv(os.path.join(os.getcwd(), "no-such-program"), ["no-such-program"])
    except FileNotFoundError:
        print("not replaced")
    for n in range(3):
        tokenmeter.record("openai", "gpt-4o", 100 + n, 1)
    import threading  # the records are queued for writers running again, not written at once
    assert any(t.name.startswith("tokenmeter-writer") for t in threading.enumerate())
"""


@pytest.mark.parametrize("how", ["execv", "execl", "execvpe", "fork", "failed"])
def test_a_process_that_execs_writes_its_records_first(tmp_path: Path, how: str) -> None:
    """``os.exec*()`` replaces the process without running atexit: the records made just before
    it (within a flush interval) were lost. They are written first, the implicit session
    ended; a forked child that execs writes its own records only, and an exec that fails leaves
    the program recording on, its writers started again (its records were then each written
    at once on the caller's thread: ~10 ms a record)."""
    env = {**os.environ, "TOKENMETER_SINKS": "sqlite", "TOKENMETER_DIR": str(tmp_path / "m")}
    done = run_python("-c", EXEC_SCRIPT, how, env=env, cwd=tmp_path)
    assert done.stdout == ("not replaced\n" if how == "failed" else "replaced\n")
    with sqlite3.connect(tmp_path / "m" / "usage.db") as db:
        inputs = sorted(n for (n,) in db.execute("SELECT input_tokens FROM records"))
        ended = db.execute("SELECT status FROM sessions").fetchall()
    expected = [10, 11, 100, 101, 102] if how in ("fork", "failed") else list(range(10, 310))
    assert inputs == expected
    assert ended and all(status == ("completed",) for status in ended), ended
    assert "Traceback" not in done.stderr


_TOKENIZER_LOADING_AT_EXIT = """
import atexit, sys, threading, time

def check():  # registered before tokenmeter's exit flush: runs after it
    loading = [t for t in threading.enumerate() if t.name == "tokenmeter-tokenizer"]
    print("still loading" if any(t.is_alive() for t in loading) else "loaded", flush=True)

atexit.register(check)
import tokenmeter
from tokenmeter import _estimate

exiting = threading.Event()
def load_under_way_at_exit(name):
    exiting.wait()  # still loading when the exit begins, whatever the machine's speed
    time.sleep(1.0)  # and a while after: gone by the check only if the exit waited
    return len  # no vocabulary read: the disk and CPU it takes are not the subject

_estimate._bpe_openai = load_under_way_at_exit
tokenmeter.record("openai", "gpt-4o", 1, 1)  # the exit flush runs
with _estimate.without_waiting():  # a stream left early, estimated inside the call
    _estimate.count_tokens("a stream's text", "openai", "gpt-4o")
atexit.register(exiting.set)  # registered last: the first thing the exit does
"""


def test_the_exit_waits_for_a_tokenizer_load_under_way(tmp_path: Path) -> None:
    """An estimate made inside a call (a stream the exit flush records) loads the tokenizer on
    a daemon thread. The interpreter ended while it imported: stopped holding the import lock,
    it hung the exiting program's next import for ever (an SDK stream's cleanup, when the
    collector closed it: 1 run in 10-20 of a parse() stream helper that raised). The exit
    waits within ``exit_timeout``: given room here, so that a slow machine's exit flush does not
    use up the default 10 s before the load ends."""
    env = {
        **os.environ,
        "TOKENMETER_SINKS": "jsonl",
        "TOKENMETER_DIR": str(tmp_path / "m"),
        "TOKENMETER_EXIT_TIMEOUT": "100",  # below run_python's 120 s
    }
    done = run_python("-c", _TOKENIZER_LOADING_AT_EXIT, env=env, cwd=tmp_path)
    assert done.stdout.strip() == "loaded"


def test_sinks_that_could_not_be_made_are_tried_again_a_second_later(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Making the sinks failed once (an import of ours half done on the thread when the
    garbage collector recorded a call): the pipeline without sinks was kept, and nothing of
    the process was written until the next configure(). It is tried again a second later."""
    sink, tries = InMemorySink(), []

    def make() -> list[Any]:
        tries.append(len(tries))
        if len(tries) == 1:
            raise ImportError("cannot import name 'AlertSink' (partially initialized module)")
        return [sink]

    tokenmeter.configure(sinks=[sink])  # the settings are read: what follows is kept
    _pipeline.set_sinks(make)
    with caplog.at_level(logging.ERROR, logger="tokenmeter"):
        tokenmeter.record("openai", "gpt-4o", 10, 1)
        tokenmeter.record("openai", "gpt-4o", 11, 1)  # within the second: not tried again
        tokenmeter.flush(timeout=30)
    assert len(tries) == 1
    assert caplog.text.count("could not open its sinks") == 1
    monkeypatch.setattr(_pipeline, "_sinks_failed_at", _pipeline._sinks_failed_at - 1.0)
    tokenmeter.record("openai", "gpt-4o", 20, 2)
    assert tokenmeter.flush(timeout=30)
    assert [r.input_tokens for r in sink.records] == [20]


SIGNALS_REFUSED = """
import multiprocessing as mp, sys, threading

def child(queue):
    start = threading.Thread.start

    def start_or_refuse(thread):  # a pids limit, for our signal watcher
        if thread.name.startswith("tokenmeter-signals"):
            raise RuntimeError("can't start new thread")
        start(thread)

    threading.Thread.start = start_or_refuse
    import tokenmeter

    try:
        tokenmeter.configure(sinks=["jsonl"], directory=".")
        tokenmeter.instrument("openai")
        tokenmeter.record("openai", "gpt-4o", 10, 1)
        queue.put("ok")
    except BaseException as exc:
        queue.put(repr(exc))

if __name__ == "__main__":
    mp.set_start_method("fork")
    queue = mp.Queue()
    process = mp.Process(target=child, args=(queue,))
    process.start()
    print(queue.get(timeout=60))
    process.join(60)
"""


def test_a_signal_watcher_that_cannot_start_never_fails_the_application(tmp_path: Path) -> None:
    """In a multiprocessing child, the thread watching for termination signals started
    unguarded: at a pids limit, configure() (else instrument(), else the first record) raised
    RuntimeError into the application. It is logged, and the child goes on metering."""
    script = tmp_path / "app.py"
    script.write_text(SIGNALS_REFUSED)
    done = run_python(str(script), env=os.environ, cwd=tmp_path)
    assert done.stdout.strip() == "ok"
    assert "signal watcher thread could not start" in done.stderr
    assert (tmp_path / "usage.jsonl").read_text().count("\n") == 1


SECOND_CTRL_C_IN_AN_EXIT_STOP_HOOK = """
import os, signal, sys, threading, time
import tokenmeter
from tokenmeter import _pipeline

hang = threading.Event()

class Sink:  # a database gone unresponsive at exit
    def write(self, records):
        pass
    def write_sessions(self, sessions):
        if hang.is_set():
            time.sleep(3600)
    def flush(self):
        pass
    def close(self):
        if hang.is_set():
            time.sleep(3600)

tokenmeter.configure(directory=sys.argv[1], sinks=[Sink()], exit_timeout=3600)
tokenmeter.session("open").__enter__()  # still open at exit: stored again before the stop
tokenmeter.record("openai", "gpt-4o", 1000, 500)
tokenmeter.flush()

def pressed_during_the_hooks():  # the user presses Ctrl-C twice as they run
    hang.set()
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.2)

_pipeline.before_exit_stop(pressed_during_the_hooks)
"""


def test_a_second_ctrl_c_during_the_exit_stop_hooks_stops_the_exit_flush(tmp_path: Path) -> None:
    """The hooks run before the writers stop were run under ``except Exception``, which caught
    the second Ctrl-C's ``_CutShort``: "an exit hook failed" was logged and the exit waited out
    the rest of exit_timeout (an hour here) for a hung sink."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", SECOND_CTRL_C_IN_AN_EXIT_STOP_HOOK, str(tmp_path)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("a second Ctrl-C did not stop the exit flush")
    assert "an exit hook failed" not in done.stderr, done.stderr
    assert "a second one stops it" in done.stderr, done.stderr


def test_a_record_made_by_a_signal_handler_while_its_thread_opens_the_sinks_is_written_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The main thread's record opens the sinks; a signal handler's record lands inside the
    sink factory (a stream's finaliser does the same when a collection runs there). It made
    the sinks a second time on the same thread: the factory's imports were half done
    ("could not open its sinks", the records of the next second dropped, flush() True), or a
    second writer wrote the same sink object at once. It is held back for the opening call."""
    sink, made = InMemorySink(), []

    def make() -> list[Any]:
        if made:  # entered again before it returned: its imports are half done
            raise ImportError("cannot import name 'AlertSink' (partially initialized module)")
        made.append(1)
        signal.raise_signal(signal.SIGUSR1)
        made.append(2)  # the handler ran before this line
        return [sink]

    def on_usr1(signum: int, frame: object) -> None:
        tokenmeter.record("openai", "gpt-4o", 2, 1)

    tokenmeter.configure(sinks=[sink])  # the settings are read: what follows is kept
    _pipeline.set_sinks(make)
    previous = signal.signal(signal.SIGUSR1, on_usr1)
    try:
        with caplog.at_level(logging.ERROR, logger="tokenmeter"):
            tokenmeter.record("openai", "gpt-4o", 1, 1)
            assert tokenmeter.flush(timeout=30)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert made == [1, 2]
    assert "could not open its sinks" not in caplog.text
    assert sorted(r.input_tokens for r in sink.records) == [1, 2]
    assert len(_pipeline._writers()) == 1
