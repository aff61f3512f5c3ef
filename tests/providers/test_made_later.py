"""Records made later: an intercepted call queues what it read, a writer makes its record.

Whatever needs the records first catches up: a session's summary and end, flush(), configure(),
the exit. Each test holds the writers back with a long ``flush_interval``, so that the records
are still waiting when the test looks.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from helpers import HungSink, held_by_another_thread, run_python, wait_for
from provider_helpers import MESSAGES, json_bytes, json_reply

import tokenmeter
from tokenmeter import _pipeline
from tokenmeter.sinks import InMemorySink, JSONLSink
from tokenmeter.testing import FakeProvider

#: Long enough that no writer wakes by itself during a test.
HELD = 600.0


def chat(client: Any) -> Any:
    return client.chat.completions.create(model="gpt-4o", messages=MESSAGES)


def waiting() -> int:
    """Calls whose records are not made yet."""
    return len(_pipeline._later) // 2


@pytest.fixture
def held() -> InMemorySink:
    """An in-memory sink whose writer waits ``HELD`` seconds before it takes anything."""
    memory = InMemorySink()
    tokenmeter.configure(sinks=[memory])
    _pipeline.set_sinks(lambda: [memory], flush_interval=HELD)
    tokenmeter.instrument(["openai"])
    return memory


def test_a_calls_record_waits_for_a_writer_and_a_summary_counts_it(
    fake: FakeProvider, held: InMemorySink
) -> None:
    client = fake.openai_client()
    with tokenmeter.session("chat") as session:
        chat(client)  # the first call of the session and of the model: made at once
        assert waiting() == 0
        for _ in range(3):
            chat(client)
        assert waiting() == 3
        assert session.summary.calls == 4  # caught up
        assert waiting() == 0
    assert tokenmeter.flush(5)
    assert len(held.records) == 4
    assert len({record.id for record in held.records}) == 4


def test_a_sessions_end_hooks_count_every_call_it_made(
    fake: FakeProvider, held: InMemorySink
) -> None:
    client = fake.openai_client()
    seen: list[int] = []
    with tokenmeter.session("job", on_end=lambda ended: seen.append(ended.summary.calls)):
        for _ in range(5):
            chat(client)
        assert waiting() == 4
    assert seen == [5]


def test_a_record_made_later_keeps_its_calls_time_and_session(
    fake: FakeProvider, held: InMemorySink
) -> None:
    client = fake.openai_client()
    with tokenmeter.session("first") as first:
        chat(client)
        before = datetime.now(UTC)
        chat(client)
        after = datetime.now(UTC)
        assert waiting() == 1
        time.sleep(0.05)
        with tokenmeter.session("second"):  # made here, in another session's context
            assert tokenmeter.flush(5)
    later = held.records[-1]
    assert later.session_id == first.id
    assert before <= later.timestamp <= after


def test_a_record_made_later_keeps_the_session_name_of_its_call(
    fake: FakeProvider, held: InMemorySink
) -> None:
    """Made at once, a call's record carries the session's name then: made later, the same
    (it carried the name the session was renamed to before the writer made it)."""
    client = fake.openai_client()
    with tokenmeter.session("job") as session:
        chat(client)  # made at once
        chat(client)
        assert waiting() == 1
        session.name = "job (renamed)"
        chat(client)
        assert tokenmeter.flush(5)
    assert [record.session_name for record in held.records] == [
        "job",
        "job",
        "job (renamed)",
    ]


async def test_a_call_keeps_the_session_name_it_was_made_under(
    held: InMemorySink, kit: ModuleType, is_async: bool
) -> None:
    """A session renamed while a call waits for its answer (another thread, a hook; here the
    server): a sync call's record carried the new name, its async twin's the name at the call.
    Twice: the first record of the model is made at once, the second by a writer."""
    sessions: list[Any] = []

    def answer(request: Any) -> Any:
        sessions[-1].name = "job (renamed)"
        return json_reply(kit.http, kit.chat_body())

    client = kit.mock_openai(answer, is_async=is_async, max_retries=0)
    for _ in range(2):
        with tokenmeter.session("job") as session:
            sessions.append(session)
            await kit.maybe(chat(client))
    assert tokenmeter.flush(5)
    assert [record.session_name for record in held.records] == ["job", "job"]


def stream_client(fake: FakeProvider, provider: str, is_async: bool) -> Any:
    if provider == "openai":
        return fake.openai_client(async_=is_async)
    if provider == "anthropic":
        return fake.anthropic_client(async_=is_async)
    client = fake.genai_client()  # kept: a google-genai client closes its connection when dropped
    return client.aio if is_async else client


STREAMS: dict[str, Any] = {
    "openai": lambda client: client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    ),
    "anthropic": lambda client: client.messages.create(
        model="claude-sonnet-4-5", max_tokens=64, messages=MESSAGES, stream=True
    ),
    "google-genai": lambda client: client.models.generate_content_stream(
        model="gemini-2.5-flash", contents="hi"
    ),
}


@pytest.mark.parametrize("provider", list(STREAMS))
async def test_a_stream_keeps_the_session_name_it_was_made_under(
    fake: FakeProvider, held: InMemorySink, kit: ModuleType, is_async: bool, provider: str
) -> None:
    """A stream made, its session renamed, then the stream read: its record carried the new name
    (the name when the stream ended), where a plain call's keeps the name at the call. Twice: the
    first record of the model is made at once, the second by a writer."""
    tokenmeter.instrument([provider])
    client = stream_client(fake, provider, is_async)
    for _ in range(2):
        with tokenmeter.session("job") as session:
            stream = await kit.maybe(STREAMS[provider](client))
            session.name = "job (renamed)"
            await kit.drain(stream)
    assert tokenmeter.flush(5)
    assert [record.session_name for record in held.records] == ["job", "job"]


def test_configure_sends_waiting_records_to_the_sinks_they_were_made_under(
    fake: FakeProvider, held: InMemorySink
) -> None:
    client = fake.openai_client()
    for _ in range(4):
        chat(client)
    assert waiting() == 3
    then = InMemorySink()
    tokenmeter.configure(sinks=[then])
    assert len(held.records) == 4
    assert tokenmeter.flush(5)
    assert then.records == []


def test_waiting_calls_hold_nothing_the_garbage_collector_tracks(
    fake: FakeProvider, held: InMemorySink
) -> None:
    """Calls can wait long for a writer that a CPU-bound caller keeps from the GIL: tracked
    objects among them would reach the collector's oldest generation, whose growth makes the
    interpreter pause every thread for full collections."""
    client = fake.openai_client()
    for _ in range(20):
        chat(client)
    assert waiting() == 19
    gc.collect()
    gc.collect()
    queued = [item for item in _pipeline._later if type(item) is tuple]
    assert len(queued) == 19
    assert not any(gc.is_tracked(item) for item in queued)


def test_a_hung_sink_holds_back_no_other_sinks_records(fake: FakeProvider) -> None:
    """Every writer is woken for the waiting calls: the first one may be stuck in its sink."""
    hung, memory = HungSink(), InMemorySink()
    tokenmeter.configure(sinks=[hung, memory])
    _pipeline.set_sinks(lambda: [hung, memory], flush_interval=0.05)
    tokenmeter.instrument(["openai"])
    client = fake.openai_client()
    chat(client)
    hung.entered.wait(10)  # stuck in the first record's write
    for _ in range(5):
        chat(client)
    try:
        wait_for(lambda: len(memory.records) == 6, "the other sink's records")
    finally:
        hung.release.set()


def test_budgeted_calls_are_made_at_once(fake: FakeProvider, held: InMemorySink) -> None:
    """A budget is checked against the spend of every call before it (nothing waits)."""
    client = fake.openai_client()
    with tokenmeter.session("capped", budget_usd=100):
        for _ in range(3):
            chat(client)
        assert waiting() == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() only")
def test_a_forked_child_makes_none_of_its_parents_waiting_calls(
    fake: FakeProvider, tmp_path: Path
) -> None:
    path = tmp_path / "usage.jsonl"
    sink = JSONLSink(path)
    tokenmeter.configure(sinks=[sink])
    _pipeline.set_sinks(lambda: [sink], flush_interval=HELD)
    tokenmeter.instrument(["openai"])
    client = fake.openai_client()
    for _ in range(3):
        chat(client)
    assert waiting() == 2
    pid = os.fork()
    if pid == 0:  # the child: its flush has none of the parent's calls to make
        code = 0 if tokenmeter.flush(5) and waiting() == 0 else 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert tokenmeter.flush(5)
    lines = path.read_text().splitlines()
    assert len([json.loads(line) for line in lines]) == 3


def test_waiting_records_are_made_and_written_at_exit(kit: ModuleType, tmp_path: Path) -> None:
    code = f"""
import json, sys
sys.path.insert(0, {str(Path(kit.__file__).parent)!r})
import tokenmeter
from provider_helpers import MESSAGES, json_bytes
from tokenmeter import _pipeline
from tokenmeter.sinks import JSONLSink
from tokenmeter.testing import FakeProvider
from tokenmeter.sinks import InMemorySink
class Ended(InMemorySink):
    def write_sessions(self, sessions):
        print(*[f"calls {{s.calls}}" for s in sessions if s.ended_at], flush=True)
sinks = [JSONLSink("usage.jsonl"), Ended()]
tokenmeter.configure(sinks=sinks)
_pipeline.set_sinks(lambda: sinks, flush_interval={HELD})
tokenmeter.instrument(["openai"])
with FakeProvider() as fake:
    client = fake.openai_client()
    for _ in range(4):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert len(_pipeline._later) == 6, len(_pipeline._later)
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = run_python("-c", code, env=env, cwd=tmp_path)
    lines = (tmp_path / "usage.jsonl").read_text().splitlines()
    assert len(lines) == 4
    assert done.stdout.split() == ["calls", "4"]  # the implicit session ends with all of them


def test_a_record_made_later_is_the_record_made_at_once(
    kit: ModuleType, held: InMemorySink
) -> None:
    """Every count survives the queue: modalities, tool requests, cache and reasoning tokens."""
    usage = {
        "prompt_tokens": 30,
        "completion_tokens": 12,
        "total_tokens": 42,
        "prompt_tokens_details": {"cached_tokens": 6, "audio_tokens": 5, "text_tokens": 25},
        "completion_tokens_details": {"reasoning_tokens": 4, "text_tokens": 12},
        "num_search_queries": 2,
    }
    body = kit.chat_body(usage)
    client = kit.mock_openai(lambda request: kit.http.Response(200, json=body))
    chat(client)
    chat(client)
    assert waiting() == 1
    assert tokenmeter.flush(5)
    at_once, later = held.records
    varying = {"id", "timestamp", "latency_ms"}
    assert at_once.modalities and at_once.tool_requests  # the queue carried them
    assert later.model_dump(exclude=varying) == at_once.model_dump(exclude=varying)


async def test_an_event_loops_calls_are_made_later_by_the_loop_itself(
    fake: FakeProvider, held: InMemorySink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Made at once on the loop, between its SDK calls, each record cost the loop several times
    what a batch costs; made by a writer, they held up the loop's timers for its slices. The
    loop makes them itself, shortly after (the writer here waits ``HELD`` seconds). The loop's
    turn is put off until the calls are made (on a slow machine three calls outlasted the 50 ms
    gathering), then brought back."""
    monkeypatch.setattr(_pipeline, "_LOOP_GATHERING", 3600.0)
    client = fake.openai_client(async_=True)
    for _ in range(3):
        await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert waiting() == 2  # the first call of the model was made at once
    loop = asyncio.get_running_loop()
    [turn] = [h for h in loop._scheduled if h._callback is _pipeline._make_on_loop]
    turn.cancel()
    loop.call_soon(_pipeline._make_on_loop, loop)
    deadline = time.monotonic() + 30
    while waiting() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert waiting() == 0
    assert tokenmeter.flush(5)
    assert len(held.records) == 3


def test_an_event_loop_makes_a_long_backlog_in_turns(
    fake: FakeProvider, held: InMemorySink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past ``_LOOP_SLICE`` of work, the loop makes the rest at its next turn, so that its
    timers and tasks run between: with no time at all, one record per turn. The first turn is
    put off until the five calls are made, and then started (on a slow machine they outlasted
    the 50 ms gathering: the turns saw 3, 2, 1, 1)."""
    monkeypatch.setattr(_pipeline, "_LOOP_SLICE", 0.0)
    monkeypatch.setattr(_pipeline, "_LOOP_GATHERING", 3600.0)
    turns: list[int] = []
    make_on_loop = _pipeline._make_on_loop

    def counted(loop: Any) -> None:
        turns.append(waiting())
        make_on_loop(loop)

    monkeypatch.setattr(_pipeline, "_make_on_loop", counted)

    async def main() -> None:
        client = fake.openai_client(async_=True)
        for _ in range(5):
            await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        counted(asyncio.get_running_loop())
        while waiting():
            await asyncio.sleep(0.01)

    asyncio.run(main())
    assert turns == [4, 3, 2, 1]
    assert tokenmeter.flush(5)
    assert len(held.records) == 5


async def test_an_event_loop_never_waits_for_a_writer_making_records(
    fake: FakeProvider,
    held: InMemorySink,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another thread holds the queue's lock (a writer making a record): it makes every waiting
    call, so the loop goes on at once instead of waiting for it (it waited, up to 2 s). The
    loop's own turn is put off for the test: on a loaded machine the calls outlasted the 50 ms
    gathering, and it made them first (2 of 4 runs failed under two suites at once)."""
    monkeypatch.setattr(_pipeline, "_LOOP_GATHERING", 3600.0)
    client = fake.openai_client(async_=True)
    for _ in range(3):
        await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    with (
        held_by_another_thread(_pipeline._later_lock),
        caplog.at_level(logging.ERROR, logger="tokenmeter"),
    ):
        _pipeline._make_on_loop(asyncio.get_running_loop())
    assert waiting() == 2
    assert not [r for r in caplog.records if r.name == "tokenmeter"]  # no catch-up gave up
    assert tokenmeter.flush(5)
    assert len(held.records) == 3


def test_the_calls_a_closed_event_loop_left_are_made_and_the_loop_not_kept(
    fake: FakeProvider, held: InMemorySink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``asyncio.run()`` ends before its loop's turn to make the records: they wait for the next
    catch-up (here a flush; else a writer's delivery), and the closed loop is not kept for
    them (one per ``asyncio.run()`` would pile up). The loop's turn is put off for the test:
    four calls outlasted the 50 ms gathering on a loaded machine."""
    monkeypatch.setattr(_pipeline, "_LOOP_GATHERING", 3600.0)

    async def calls() -> None:
        client = fake.openai_client(async_=True)
        for _ in range(4):
            await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)

    asyncio.run(calls())
    assert waiting() == 3  # the first record, which made the sinks, was made at once
    gc.collect()
    assert len(_pipeline._loops_making) == 0
    assert tokenmeter.flush(5)
    assert waiting() == 0 and len(held.records) == 4


def test_a_catch_up_waits_for_the_record_another_thread_is_making() -> None:
    """A writer took the last waiting call and is making it: a summary read (or a reset of the
    settings) must not go on without it."""
    import threading

    taken, made = threading.Event(), threading.Event()

    def making() -> None:
        with _pipeline._later_lock:  # as _making holds it around one record
            taken.set()
            time.sleep(0.2)
            made.set()

    writer = threading.Thread(target=making)
    writer.start()
    taken.wait(10)
    _pipeline.catch_up()
    assert made.is_set()
    writer.join()


def test_hostile_values_made_later_reach_the_sqlite_sink(kit: ModuleType, tmp_path: Path) -> None:
    """A lone surrogate in the model name and a megabyte response id, made later by the writer:
    cleaned at the door as when made at once, and every record stored."""
    import sqlite3

    from tokenmeter.sinks import SQLiteSink

    body = {**kit.chat_body(model="gpt-\ud800"), "id": "x" * 1_000_000}
    reply = json_bytes(body)
    client = kit.mock_openai(
        lambda request: kit.http.Response(
            200, content=reply, headers={"content-type": "application/json"}
        )
    )
    sink = SQLiteSink(tmp_path / "usage.db")
    tokenmeter.configure(sinks=[sink])
    _pipeline.set_sinks(lambda: [sink], flush_interval=HELD)
    tokenmeter.instrument(["openai"])
    for _ in range(3):
        chat(client)
    assert waiting() == 2
    assert tokenmeter.flush(5)
    with sqlite3.connect(tmp_path / "usage.db") as conn:
        rows = conn.execute("SELECT model_name, length(request_id) FROM records").fetchall()
    assert len(rows) == 3
    assert len(set(rows)) == 1
    assert rows[0][1] < 1_000


def test_waiting_records_are_written_on_sigterm(kit: ModuleType, tmp_path: Path) -> None:
    """docker / systemd / kubernetes stop: Python's default SIGTERM disposition, calls waiting."""
    code = f"""
import os, signal, sys, time
sys.path.insert(0, {str(Path(kit.__file__).parent)!r})
import tokenmeter
from provider_helpers import MESSAGES
from tokenmeter import _pipeline
from tokenmeter.sinks import JSONLSink
from tokenmeter.testing import FakeProvider
sink = JSONLSink("usage.jsonl")
tokenmeter.configure(sinks=[sink])
_pipeline.set_sinks(lambda: [sink], flush_interval={HELD})
tokenmeter.instrument(["openai"])
with FakeProvider() as fake:
    client = fake.openai_client()
    for _ in range(4):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert len(_pipeline._later) == 6, len(_pipeline._later)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, timeout=120
    )
    assert done.returncode == -signal.SIGTERM, done.stderr
    assert len((tmp_path / "usage.jsonl").read_text().splitlines()) == 4


@pytest.mark.parametrize(
    ("modalities", "tools"),
    [({}, {}), ({"input_text": 70, "output_image": 2}, {"web_search": 3})],
)
def test_the_queue_carries_every_count_of_a_usage(
    modalities: dict[str, int], tools: dict[str, int]
) -> None:
    """Each count in its own place (all different, so a swapped pair shows), none left out."""
    from tokenmeter import Usage
    from tokenmeter._record import _queued, _usage_of

    usage = Usage(
        input_tokens=100,
        output_tokens=50,
        cache_read_tokens=11,
        cache_write_tokens=12,
        cache_write_1h_tokens=5,
        reasoning_tokens=7,
        input_audio_tokens=13,
        output_audio_tokens=3,
        modalities=modalities,
        tool_requests=tools,
    )
    queued = _queued(usage)
    for _ in range(3):  # a tuple is untracked once those it holds are: a level per collection
        gc.collect()
    assert not gc.is_tracked(queued)  # plain values only
    assert _usage_of(queued) == usage
    assert _usage_of(queued).modalities is not usage.modalities  # a dict of its own
