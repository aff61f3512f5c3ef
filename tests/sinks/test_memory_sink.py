from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from helpers import held_by_another_thread

from tokenmeter._models import SessionInfo, UsageRecord
from tokenmeter.sinks import (
    InMemorySink,
    JSONLSink,
    MarkdownJournalSink,
    SessionAwareSink,
    Sink,
    SQLiteSink,
)

RecordFactory = Callable[..., UsageRecord]


def test_keeps_records_in_order_and_latest_session_state(make_record: RecordFactory) -> None:
    sink = InMemorySink()
    started = datetime(2026, 11, 22, 10, tzinfo=UTC)
    sink.write([make_record(0), make_record(1)])
    sink.write([make_record(2)])
    sink.write_sessions([SessionInfo(id="s1", started_at=started)])
    sink.write_sessions([SessionInfo(id="s1", started_at=started, status="completed")])

    assert [r.id for r in sink.records] == ["rec-000000", "rec-000001", "rec-000002"]
    assert sink.sessions["s1"].status == "completed"

    sink.clear()
    assert sink.records == []
    assert sink.sessions == {}


def test_concurrent_writers_lose_nothing(make_record: RecordFactory) -> None:
    sink = InMemorySink()
    batches = [[make_record(t * 1000 + i) for i in range(1000)] for t in range(4)]
    threads = [threading.Thread(target=sink.write, args=(batch,)) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len({r.id for r in sink.records}) == 4000


def test_every_built_in_sink_satisfies_the_protocols(tmp_path: Path) -> None:
    sinks = [
        InMemorySink(),
        SQLiteSink(tmp_path / "usage.db"),
        JSONLSink(tmp_path / "usage.jsonl"),
        MarkdownJournalSink(tmp_path / "journal"),
    ]
    for sink in sinks:
        assert isinstance(sink, Sink)
    for sink in (sinks[0], sinks[1], sinks[3]):
        assert isinstance(sink, SessionAwareSink)


@pytest.mark.parametrize("sink", [SQLiteSink, JSONLSink, MarkdownJournalSink])
@pytest.mark.parametrize(
    "bad",
    ["usage\x00.db", None, 3, b"usage.db", "usage\ud800.db", "u" * 256, "/tmp/" + "d/" * 2100],
)
def test_a_path_that_cannot_name_a_file_is_a_value_error(sink: type[Any], bad: object) -> None:
    """A path with a NUL was taken, and every write then failed ("embedded null byte") until
    the records were dropped; so was one with a lone surrogate (every write failed to encode
    it), or a name or a path longer than any file system takes; None, a number or bytes raised
    a TypeError that named nothing."""
    with pytest.raises(ValueError, match=r"^(path|directory) (must be|cannot name|.*longer)"):
        sink(bad)


def test_a_child_forked_while_the_sink_is_locked_can_use_it(make_record: RecordFactory) -> None:
    """The sink's lock held by another thread at fork (its writer inside write()) stayed held
    in the child for ever: the child's writer, and the test reading the sink, hung."""
    import os

    sink = InMemorySink()
    with held_by_another_thread(sink._lock):
        pid = os.fork()
        if pid == 0:  # the child: exits 0 only if the sink takes a record
            code = 1
            try:
                sink.write([make_record(0)])
                code = 0 if len(sink.records) == 1 else 2
            finally:
                os._exit(code)
    deadline = 30
    while deadline > 0:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        threading.Event().wait(0.1)
        deadline -= 0.1
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the child hung on the sink's lock")
    assert os.waitstatus_to_exitcode(status) == 0
