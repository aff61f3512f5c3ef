"""Sessions follow work into threads; session-end hooks; the state-file line; stored totals."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import json
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import weakref
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from multiprocessing.pool import ThreadPool
from pathlib import Path
from typing import Any

import pytest
from helpers import one_line_value_error, run_python

import tokenmeter
from tokenmeter._sessions import Session
from tokenmeter.sinks import InMemorySink


def record() -> None:
    tokenmeter.record("openai", "gpt-4o", 1000, 500)  # $0.0075


def test_a_thread_pool_inside_a_session_records_into_it(sink: InMemorySink) -> None:
    with tokenmeter.session("job", tags={"customer": "acme"}) as job, ThreadPoolExecutor(4) as pool:
        for future in [pool.submit(record) for _ in range(8)]:
            future.result()
    assert job.summary.calls == 8
    assert tokenmeter.flush(5)
    assert {(r.session_id, r.tags["customer"]) for r in sink.records} == {(job.id, "acme")}


def test_a_thread_started_inside_a_session_records_into_it(sink: InMemorySink) -> None:
    class Worker(threading.Thread):  # a subclass with its own run() is followed too
        def run(self) -> None:
            record()

    with tokenmeter.session("job") as job:
        threads = [threading.Thread(target=record), Worker()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert job.summary.calls == 2
    with tokenmeter.session("nested-parent") as parent, tokenmeter.session("child") as child:
        thread = threading.Thread(target=record)
        thread.start()
        thread.join()
    assert (child.summary.calls, parent.summary.calls) == (1, 1)


@pytest.mark.parametrize("how", ["thread", "pool"])
def test_work_started_inside_a_session_stays_in_it_after_its_block_ends(
    sink: InMemorySink, how: str
) -> None:
    """A thread started, or a work item submitted, inside a session whose block ended before it
    made its call recorded into the enclosing session (here the implicit one): 9 to 61 of 160
    calls of a stress run. Its record is a late one of the session, as a stream's read after
    the block is, in its stored totals too."""
    go = threading.Event()

    def late() -> None:
        go.wait(30)
        record()

    with ThreadPoolExecutor(1) as pool, tokenmeter.session("outer") as outer:
        with tokenmeter.session("job") as job:
            if how == "pool":
                done = pool.submit(late)
            else:
                thread = threading.Thread(target=late)
                thread.start()
        go.set()
        done.result(30) if how == "pool" else thread.join(30)
        record()  # outer's own: the thread that ran job's block is back in outer
    assert (job.summary.calls, outer.summary.calls) == (1, 2)
    assert tokenmeter.flush(5)
    assert [r.session_name for r in sink.records] == ["job", "outer"]
    assert sink.sessions[job.id].calls == 1


def test_an_asyncio_task_started_inside_a_session_stays_in_it_after_its_block_ends(
    sink: InMemorySink,
) -> None:
    """A task created inside a session that recorded after the block ended went to the
    enclosing session, as threads did: it is a late call of the session it was started in."""

    async def main() -> tuple[Session, Session]:
        go = asyncio.Event()

        async def late() -> None:
            await go.wait()
            record()

        with tokenmeter.session("outer") as outer:
            with tokenmeter.session("job") as job:
                task = asyncio.create_task(late())
            go.set()
            await task
            record()  # outer's own
        return job, outer

    job, outer = asyncio.run(main())
    assert (job.summary.calls, outer.summary.calls) == (1, 2)
    assert tokenmeter.flush(5)
    assert [r.session_name for r in sink.records] == ["job", "outer"]


def test_a_session_ended_from_another_task_is_left_by_the_task_that_entered_it(
    sink: InMemorySink,
) -> None:
    """A generator's session block entered in one task and closed from another: the task that
    entered it is back in the enclosing session, not in the ended one."""

    async def body() -> Any:
        with tokenmeter.session("inner"):
            yield

    async def main() -> tuple[Session, Session | None]:
        with tokenmeter.session("outer") as outer:
            gen = body()
            await gen.__anext__()  # "inner" entered in this task
            await asyncio.create_task(gen.aclose())  # ... and ended in another
            record()
            return outer, tokenmeter.current_session()

    outer, current = asyncio.run(main())
    assert current is outer and outer.summary.calls == 1
    assert tokenmeter.flush(5)
    assert [r.session_name for r in sink.records] == ["outer"]


def test_late_work_on_the_thread_or_task_that_entered_the_session_stays_in_it(
    sink: InMemorySink,
) -> None:
    """Which context entered a session was told by its thread and task ids, which Python reuses:
    late work of the session that ran where it had been entered (a follow-up item on the pool
    worker that ran it, a thread or task made after the entering one was freed, a context
    copied inside its block) was charged to the enclosing or the implicit session."""
    with ThreadPoolExecutor(1) as pool:
        follow_up: list[Any] = []

        def job() -> Session:
            with tokenmeter.session("pool-job") as session:
                record()
                follow_up.append(pool.submit(record))  # runs on this same worker, later
            return session

        pooled = pool.submit(job).result()
        follow_up[0].result()

    started = threading.Event()

    def later_thread() -> None:
        started.wait()
        helper = threading.Thread(target=record)  # may take the freed entering thread's id
        helper.start()
        helper.join()

    def handler() -> None:
        with tokenmeter.session("thread-job"):
            holder.append(threading.Thread(target=later_thread))
            holder[0].start()

    holder: list[threading.Thread] = []
    entering = threading.Thread(target=handler)
    entering.start()
    entering.join()
    started.set()
    holder[0].join()

    async def main() -> Session:
        go = asyncio.Event()

        async def one() -> None:
            record()

        async def background() -> None:
            await go.wait()
            for _ in range(3):
                await asyncio.create_task(one())  # ids of freed tasks come back

        async def handle() -> tuple[Session, Any]:
            async with tokenmeter.session("task-job") as session:
                return session, asyncio.create_task(background())

        session, task = await asyncio.create_task(handle())
        gc.collect()
        go.set()
        await task
        return session

    tasked = asyncio.run(main())
    with tokenmeter.session("copied") as copied:
        context = contextvars.copy_context()
    context.run(record)
    with tokenmeter.session("elsewhere") as elsewhere:
        context.run(record)
    assert (pooled.summary.calls, tasked.summary.calls, copied.summary.calls) == (2, 3, 2)
    assert elsewhere.summary.calls == 0
    assert tokenmeter.flush(5)
    counts = Counter(r.session_name for r in sink.records)
    assert counts == {"pool-job": 2, "thread-job": 1, "task-job": 3, "copied": 2}


def test_a_session_opened_by_late_work_is_nested_in_the_session_of_that_work(
    sink: InMemorySink,
) -> None:
    """A step (``@track``) run by a thread started in ``job`` after job's block was a session
    of its own, with no parent: its calls were in neither job's summary nor its stored totals,
    and job's tags were not its."""

    @tokenmeter.track
    def step() -> None:
        record()

    go = threading.Event()

    def background() -> None:
        go.wait()
        record()
        step()

    with tokenmeter.session("job", tags={"team": "search"}) as job:
        worker = threading.Thread(target=background)
        worker.start()
    go.set()
    worker.join()
    assert job.summary.calls == 2
    assert tokenmeter.flush(5)
    [nested] = [r for r in sink.records if r.session_id != job.id]
    assert nested.tags == {"team": "search"}
    stored = sink.sessions[nested.session_id]
    assert stored.parent_id == job.id and stored.ended_at is not None
    assert sink.sessions[job.id].calls == 2  # its stored totals, the nested step's included


def test_each_item_of_a_multiprocessing_thread_pool_runs_in_the_session_it_came_from(
    sink: InMemorySink,
) -> None:
    """``multiprocessing.pool.ThreadPool`` starts its workers with the pool: every item ran in
    the session the pool was made in (closed long before), or in none."""
    from multiprocessing.pool import ThreadPool

    with tokenmeter.session("made-here") as first:
        pool = ThreadPool(2)  # its workers start here
        pool.apply(record)
    with pool, ThreadPool(2) as pool_of_none, ThreadPool(2) as other:
        with tokenmeter.session("used-here") as second:
            pool.apply(record)
            pool.map(lambda _: record(), range(2))
            pool.starmap(lambda a, b: record(), [(1, 2)])
            list(pool.imap(lambda _: record(), range(2), chunksize=2))
            list(pool.imap_unordered(lambda _: record(), range(1)))
            pool.apply_async(record).get(5)
            pool_of_none.map_async(lambda _: record(), range(2)).get(5)
        other.apply(record)  # outside any session
    assert (first.summary.calls, second.summary.calls) == (1, 10)
    assert tokenmeter.flush(5)
    counts = Counter(r.session_name for r in sink.records)
    assert (counts["made-here"], counts["used-here"]) == (1, 10) and len(sink.records) == 12


def test_late_calls_made_at_once_leave_the_stored_totals_whole(sink: InMemorySink) -> None:
    """Threads making late calls of a session at once each handed the sinks a state of it
    taken outside any lock: the one handed over last, not the latest, was kept (245 of 250
    calls in 6 to 10 trials of 25 with a short switch interval, which makes threads
    interleave as a busy machine does)."""

    def late(go: threading.Event) -> None:
        go.wait()
        for _ in range(5):
            record()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for trial in range(25):
            go = threading.Event()
            with tokenmeter.session("root") as root, tokenmeter.session("late") as job:
                threads = [threading.Thread(target=late, args=(go,)) for _ in range(50)]
                for thread in threads:
                    thread.start()
            go.set()
            for thread in threads:
                thread.join()
            assert tokenmeter.flush(10)
            stored = (sink.sessions[job.id].calls, sink.sessions[root.id].calls)
            assert (job.summary.calls, *stored) == (250, 250, 250), trial
    finally:
        sys.setswitchinterval(interval)


def test_a_pool_worker_does_not_keep_the_session_that_started_it(sink: InMemorySink) -> None:
    with ThreadPoolExecutor(1) as pool:
        with tokenmeter.session("job") as job:
            pool.submit(record).result()  # starts the pool's only worker, inside the session
        pool.submit(record).result()  # outside any session
        pool.submit(tokenmeter.current_session).result()
        assert pool.submit(tokenmeter.current_session).result() is None
    assert job.summary.calls == 1
    assert tokenmeter.flush(5)
    assert sink.records[1].session_id != job.id


def test_a_thread_of_ours_started_inside_a_session_does_not_keep_it() -> None:
    """A sink's writer thread starts at its first record, and lives as long as the sink: started
    inside a session, it was carried into it like an application's thread, so the session (its
    tags, notes, summary and enclosing sessions) stayed alive for the life of the process, and
    the writer's own calls (an on_alert callback asking a model) were made in it."""
    memory = InMemorySink()
    with tokenmeter.session("first") as first:
        tokenmeter.configure(sinks=[memory])
        record()  # the new sink's writer starts here, inside the session
        assert tokenmeter.flush(5)
    ended = weakref.ref(first)
    del first
    gc.collect()
    assert ended() is None
    assert len(memory.records) == 1


def test_propagation_can_be_switched_off(sink: InMemorySink) -> None:
    tokenmeter.configure(thread_propagation=False)
    with tokenmeter.session("job") as job:
        with ThreadPoolExecutor(2) as pool:
            pool.submit(record).result()
        thread = threading.Thread(target=record)
        thread.start()
        thread.join()
    assert job.summary.calls == 0
    tokenmeter.configure(thread_propagation=True)
    with tokenmeter.session("job") as job, ThreadPoolExecutor(2) as pool:
        pool.submit(record).result()
    assert job.summary.calls == 1


def test_an_empty_propagation_variable_leaves_propagation_on(
    sink: InMemorySink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``TOKENMETER_THREAD_PROPAGATION=`` (an unfilled ``.env`` line) read as "false": the work a
    session handed to a thread was recorded in no session, without a word. Empty is unset."""
    monkeypatch.setenv("TOKENMETER_THREAD_PROPAGATION", "")
    tokenmeter.configure()  # read the environment again
    with tokenmeter.session("nightly-job") as job:
        thread = threading.Thread(target=record)
        thread.start()
        thread.join()
    assert job.summary.calls == 1
    assert tokenmeter.flush(5)
    assert [r.session_name for r in sink.records] == ["nightly-job"]


def test_on_end_hooks_receive_the_finished_session(sink: InMemorySink) -> None:
    ended: list[tuple[str, str, int, Decimal]] = []

    def remember(session: Session) -> None:
        ended.append(
            (f"{session.name}", session.status, session.summary.calls, session.summary.cost_usd)
        )

    tokenmeter.configure(on_session_end=remember)
    with tokenmeter.session("outer", on_end=[remember]):
        with tokenmeter.session("inner"):
            record()
        record()
    assert ended == [
        ("inner", "completed", 1, Decimal("0.0075")),
        ("outer", "completed", 2, Decimal("0.015")),  # its own hook, then the global one
        ("outer", "completed", 2, Decimal("0.015")),
    ]


def test_a_session_exited_twice_or_never_entered_runs_its_hooks_once(sink: InMemorySink) -> None:
    """A second ``__exit__`` ran the end hooks (and wrote the state-file line) again; a session
    never entered could be exited, and was reported as ended."""
    ended: list[str] = []

    def remember(session: Session) -> None:
        ended.append(f"{session.name}")

    with tokenmeter.session("once", on_end=[remember]) as s:
        record()
    s.__exit__(None, None, None)
    never = tokenmeter.session("never", on_end=[remember])
    never.__exit__(None, None, None)
    assert ended == ["once"] and never.status == "active" and never.ended_at is None


def test_a_session_exited_by_two_threads_at_once_runs_its_hooks_once(
    sink: InMemorySink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two threads exiting one session at the same moment (a worker and a watchdog) both found
    it not ended: its hooks ran twice (122 of 2,000 races), and one exit could raise TypeError
    from resetting a token the other had cleared. Made certain here: the end's clock waits
    for the other thread, which only gets there when nothing keeps it out."""
    from tokenmeter import _sessions

    ended: list[str] = []
    both = threading.Barrier(2)

    class Clock(_sessions.datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            with contextlib.suppress(threading.BrokenBarrierError):
                both.wait(timeout=0.5)  # the other exit is kept out: on alone
            return super().now(tz)

    session = tokenmeter.session("shared", on_end=lambda s: ended.append(s.id)).__enter__()
    monkeypatch.setattr(_sessions, "datetime", Clock)
    errors: list[BaseException] = []

    def leave() -> None:
        try:
            session.__exit__(None, None, None)
        except BaseException as exc:
            errors.append(exc)

    exits = [threading.Thread(target=leave) for _ in range(2)]
    for thread in exits:
        thread.start()
    for thread in exits:
        thread.join()
    monkeypatch.undo()
    assert errors == [] and ended == [session.id] and session.status == "completed"


def test_a_session_exited_on_another_thread_is_no_longer_current(sink: InMemorySink) -> None:
    """Entered on one thread and exited on another (a worker closing a request's session), it
    stayed current on the first: later records went to a session already ended."""
    with tokenmeter.session("request") as outer:
        inner = tokenmeter.session("job").__enter__()
        closer = threading.Thread(target=inner.__exit__, args=(None, None, None))
        closer.start()
        closer.join()
        assert tokenmeter.current_session() is outer
        record()
    assert inner.summary.calls == 0 and outer.summary.calls == 1
    assert tokenmeter.flush(5)
    assert sink.records[-1].session_name == "request"


def test_a_global_hook_that_opens_a_session_is_not_handed_its_own_session(
    sink: InMemorySink,
) -> None:
    """A global hook that works in a session of its own (a summary made by an LLM call in a
    ``@tokenmeter.track`` function) was handed that session when it ended, and so on: about
    200 nested hook runs, sessions and records (real calls, paid for) until RecursionError."""
    ended: list[str] = []

    @tokenmeter.track("summarise")
    def summarise(session: Session) -> None:
        ended.append(f"{session.name}")
        record()

    tokenmeter.configure(on_session_end=summarise)
    with tokenmeter.session("job"):
        record()
    assert ended == ["job"]
    assert tokenmeter.flush(5)
    assert [r.session_name for r in sink.records] == ["job", "summarise"]


@pytest.mark.parametrize("how", ["thread", "ThreadPoolExecutor", "ThreadPool"])
def test_a_global_hook_handing_its_work_to_a_thread_is_not_handed_the_sessions_it_opens_there(
    sink: InMemorySink, how: str
) -> None:
    """A global hook that hands its slow work (a summary made by an LLM call in a session of its
    own) to a thread or a pool was handed the session opened there, whose end handed its work
    over again: 'job', 'summary of job', 'summary of summary of job', ... for ever, a paid call
    a round. The thread did not carry the guard that the hook's own work is running."""
    ended: list[str | None] = []
    waits: list[Callable[[float], object]] = []  # each handed-over work's join / result

    def summarise(name: str | None) -> None:
        with tokenmeter.session(f"summary of {name}"):
            record()

    def hand_over(session: Session) -> None:
        ended.append(session.name)
        if len(ended) > 3:  # this test's cap on the loop
            return
        if how == "thread":
            thread = threading.Thread(target=summarise, args=(session.name,))
            thread.start()
            waits.append(thread.join)
        elif how == "ThreadPoolExecutor":
            waits.append(executor.submit(summarise, session.name).result)
        else:
            waits.append(thread_pool.apply_async(summarise, (session.name,)).get)

    tokenmeter.configure(sinks=[sink], on_session_end=hand_over)
    with ThreadPoolExecutor(1) as executor, ThreadPool(1) as thread_pool:
        with tokenmeter.session("job"):
            record()
        while waits:  # the work's own hook hands over the next round before the work ends
            waits.pop(0)(30)
    assert ended == ["job"]
    assert tokenmeter.flush(5)
    assert [r.session_name for r in sink.records] == ["job", "summary of job"]


def test_a_failing_hook_is_logged_not_raised(
    sink: InMemorySink, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(session: Session) -> None:
        raise RuntimeError("hook bug")

    with (
        caplog.at_level(logging.ERROR, logger="tokenmeter"),
        pytest.raises(KeyError),
        tokenmeter.session("s", on_end=broken) as s,
    ):
        raise KeyError("the app's own error still propagates")
    assert s.status == "failed"
    assert any("session-end hook failed" in r.getMessage() for r in caplog.records)


def test_a_hook_failing_every_time_is_logged_once_until_it_succeeds(
    sink: InMemorySink, caplog: pytest.LogCaptureFixture
) -> None:
    """A global hook that failed for every session logged a traceback each time (800 in a run
    of 800 sessions)."""
    failing = [True]

    def flaky(session: Session) -> None:
        if failing[0]:
            raise RuntimeError("hook bug")

    tokenmeter.configure(on_session_end=flaky)

    def failures() -> int:
        return sum("session-end hook failed" in r.getMessage() for r in caplog.records)

    with caplog.at_level(logging.ERROR, logger="tokenmeter"):
        for _ in range(5):
            with tokenmeter.session("s"):
                pass
        assert failures() == 1
        failing[0] = False
        with tokenmeter.session("s"):
            pass
        failing[0] = True
        with tokenmeter.session("s"):
            pass
        assert failures() == 2  # failing again after it succeeded


@pytest.mark.parametrize("raised", [KeyboardInterrupt, SystemExit, GeneratorExit])
def test_a_hook_raising_a_base_exception_runs_the_other_hooks_first(
    sink: InMemorySink, raised: type[BaseException]
) -> None:
    """A KeyboardInterrupt may be a Ctrl-C, so it reaches the application; but the session's
    other hooks and the global ones did not run at all."""
    ran: list[str] = []

    def interrupted(session: Session) -> None:
        ran.append("first")
        raise raised()

    tokenmeter.configure(on_session_end=lambda session: ran.append("global"))
    hooks = [interrupted, lambda session: ran.append("second")]
    with pytest.raises(raised), tokenmeter.session("s", on_end=hooks):
        pass
    assert ran == ["first", "second", "global"]


AT_EXIT_HOOK = """
import sys, threading, time
import tokenmeter
how = sys.argv[1]

class Mine(BaseException):
    pass

def hook(session):
    if how == "hang":
        threading.Event().wait()
    raise {"interrupt": KeyboardInterrupt, "exit": SystemExit, "own": Mine}[how]()

tokenmeter.configure(sinks=["sqlite", "jsonl"], on_session_end=hook, exit_timeout=2)
for _ in range(50):
    tokenmeter.record("openai", "gpt-4o", 1000, 500)
print(time.monotonic(), flush=True)
"""


@pytest.mark.parametrize("how", ["interrupt", "exit", "own", "hang"])
def test_a_session_end_hook_that_raises_or_hangs_at_exit_loses_no_record(
    tmp_path: Path, how: str
) -> None:
    """The implicit session's hooks run at exit. One raising a BaseException (KeyboardInterrupt,
    SystemExit, its own) stopped the exit there: none of the 50 records was written. One that
    hung held the exit for ever (exit_timeout=2): the exit gives its hooks half of exit_timeout."""
    env = {**os.environ, "TOKENMETER_DIR": str(tmp_path / "m")}
    done = run_python("-c", AT_EXIT_HOOK, how, env=env, cwd=tmp_path)
    with contextlib.closing(sqlite3.connect(tmp_path / "m" / "usage.db")) as db:
        assert db.execute("SELECT count(*) FROM records").fetchone() == (50,)
        assert db.execute("SELECT status FROM sessions").fetchall() == [("completed",)]
    assert len((tmp_path / "m" / "usage.jsonl").read_text().splitlines()) == 50
    said = "did not finish within 1.0 s" if how == "hang" else "an exit hook failed"
    assert said in done.stderr


def test_an_exit_with_no_time_to_wait_still_runs_a_quick_session_end_hook(tmp_path: Path) -> None:
    """exit_timeout=0 gave the exit hooks no time at all: a hook of a few milliseconds was left
    unfinished, and every exit said so."""
    script = (
        "import sys, time, tokenmeter\n"
        "def hook(session):\n"
        "    time.sleep(0.02)\n"
        "    print('hook ran', flush=True)\n"
        "tokenmeter.configure(sinks=['jsonl'], exit_timeout=0, on_session_end=hook)\n"
        "tokenmeter.record('openai', 'gpt-4o', 1000, 500)\n"
    )
    env = {**os.environ, "TOKENMETER_DIR": str(tmp_path / "m")}
    done = run_python("-c", script, env=env, cwd=tmp_path)
    assert "exit hooks" not in done.stderr
    assert done.stdout == "hook ran\n"


def test_bad_hooks_are_a_value_error() -> None:
    with pytest.raises(ValueError, match="on_end"):
        tokenmeter.session("s", on_end="print")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="on_exceed"):
        tokenmeter.session("s", on_exceed="stop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"'on_session_end' from configure\(\)"):
        tokenmeter.configure(on_session_end=[print, "x"])  # type: ignore[list-item]


def test_an_async_hook_is_a_value_error_not_a_hook_that_never_runs(
    sink: InMemorySink, caplog: pytest.LogCaptureFixture
) -> None:
    """An ``async def`` hook or on_alert callback was accepted, and called without being
    awaited: it never ran (a RuntimeWarning at best), session after session."""

    async def hook(session: Session) -> None:
        raise AssertionError("never awaited")

    with pytest.raises(ValueError, match="on_end") as refused:
        tokenmeter.session("s", on_end=hook)
    assert "async" in one_line_value_error(refused)
    with pytest.raises(ValueError, match=r"on_session_end.*async"):
        tokenmeter.configure(on_session_end=[print, hook])
    with pytest.raises(ValueError, match=r"on_alert.*async"):
        tokenmeter.configure(on_alert=hook)

    class Sneaky:  # not an async function, yet what it returns is a coroutine
        def __call__(self, session: Session) -> Any:
            return hook(session)

    with (
        caplog.at_level(logging.ERROR, logger="tokenmeter"),
        tokenmeter.session("s", on_end=Sneaky()),
    ):
        pass
    assert any("coroutine" in r.getMessage() for r in caplog.records)


LINE = re.compile(
    r"^- (?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d UTC \d{4}: "
    r"TOKEN_TRACKING: Session (\S+) - (\d+) tokens, \$(\S+)$"
)


def test_the_state_file_gets_the_original_line_per_top_level_session(tmp_path: Path) -> None:
    state = tmp_path / "workflow_state.md"
    state.write_text("# Workflow state\n")
    memory = InMemorySink()
    tokenmeter.configure(sinks=[memory], state_file=state)
    with tokenmeter.session("job") as job:
        with tokenmeter.session("step"):
            record()
        record()
    with tokenmeter.session("empty") as empty:
        pass
    assert tokenmeter.flush(5)
    lines = state.read_text().splitlines()
    assert lines[0] == "# Workflow state"
    found = [LINE.match(line) for line in lines[1:]]
    assert all(found), lines
    assert [m.groups() for m in found if m] == [
        (job.id, "3000", "0.015"),
        (empty.id, "0", "0"),
    ]


def test_the_state_line_marks_calls_of_unknown_cost(tmp_path: Path) -> None:
    """250,000 tokens of a model with no known price were written ``$0``, unmarked, and a
    session mixing priced and unpriced calls as its priced part alone: the workflow summing the
    lines counted unknown spend as free. The cost stays first; the calls of unknown cost follow."""
    state = tmp_path / "workflow_state.md"
    tokenmeter.configure(sinks=[InMemorySink()], state_file=state)
    with tokenmeter.session("finetune") as unknown:
        tokenmeter.record("openai", "acme-internal-model-7", 200_000, 50_000)
    with tokenmeter.session("mixed") as mixed:
        record()
        tokenmeter.record("openai", "acme-internal-model-7", 1000, 500)
        tokenmeter.record("openai", "acme-internal-model-7", 1000, 500)
    assert tokenmeter.flush(5)
    lines = state.read_text().splitlines()
    assert [line.split(": TOKEN_TRACKING: ")[1] for line in lines] == [
        f"Session {unknown.id} - 250000 tokens, $0 (1 call of unknown cost)",
        f"Session {mixed.id} - 4500 tokens, $0.0075 (2 calls of unknown cost)",
    ]


def test_a_session_id_from_outside_writes_one_state_line_without_control_characters(
    tmp_path: Path,
) -> None:
    """An id holding a newline (a request id taken from a header) wrote a second line of the
    caller's choosing, which the workflow summing ``TOKEN_TRACKING`` lines counted ($999), and
    a terminal escape in an id was written raw. Each is shown as U+FFFD, on the session's line."""
    state = tmp_path / "workflow_state.md"
    tokenmeter.configure(sinks=[InMemorySink()], state_file=state)
    forged = "req-1\n- Tue Dec  1 00:00:00 UTC 2026: TOKEN_TRACKING: Session x - 1 tokens, $999"
    for session_id in (forged, "req-2\x1b]0;pwned\x07\r\t2", forged.replace("\n", "\u2028")):
        with tokenmeter.session("handler", id=session_id):
            record()
    assert tokenmeter.flush(5)
    lines = state.read_text().splitlines()  # str.splitlines: U+2028 ends a line too
    assert [line.rsplit(" - ", 1)[1] for line in lines] == ["1500 tokens, $0.0075"] * 3
    assert "Session req-1\ufffd- Tue Dec  1" in lines[0]
    assert lines[2].split(": TOKEN_TRACKING: ", 1)[1] == lines[0].split(": TOKEN_TRACKING: ", 1)[1]
    assert "Session req-2\ufffd]0;pwned\ufffd\ufffd\ufffd2 - 1500" in lines[1]


def test_the_state_file_may_be_a_pipe(tmp_path: Path) -> None:
    """``state_file="/dev/stderr"`` (a pipe under CI, docker, systemd) got each session's line,
    until appends refused what is not a regular file: the line went to quarantine instead."""
    code = (
        "import tokenmeter\n"
        f"tokenmeter.configure(directory={str(tmp_path)!r}, state_file='/dev/stderr', "
        "sinks=['jsonl'])\n"
        "with tokenmeter.session('s1', id='job-1'):\n"
        "    tokenmeter.record('openai', 'gpt-4o', 1000, 500)\n"
        "assert tokenmeter.flush(10)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENMETER_")}
    done = run_python("-c", code, env=env, cwd=tmp_path)
    assert "TOKEN_TRACKING: Session job-1 - 1500 tokens, $0.0075" in done.stderr
    assert not (tmp_path / "quarantine.jsonl").exists()


def test_each_run_of_a_session_id_entered_again_gets_its_state_line(tmp_path: Path) -> None:
    """A decorated function called again under its session id (an import resumed after an
    error) wrote one line, $0.0075 of the $0.0225 spent: the second run was taken for the
    first one handed over again. Each run gets its line with its part, as in two processes."""
    state = tmp_path / "workflow_state.md"
    tokenmeter.configure(sinks=[InMemorySink()], state_file=state)

    @tokenmeter.session("import", id="import-2026-12-06")
    def run_import(calls: int) -> None:
        for _ in range(calls):
            record()

    run_import(1)
    assert tokenmeter.flush(5)
    run_import(2)
    assert tokenmeter.flush(5)
    found = [LINE.match(line) for line in state.read_text().splitlines()]
    assert [m.groups() for m in found if m] == [
        ("import-2026-12-06", "1500", "0.0075"),
        ("import-2026-12-06", "3000", "0.015"),
    ]


def test_the_implicit_session_writes_its_line_at_exit(tmp_path: Path) -> None:
    state = tmp_path / "state.md"
    script = (
        "import tokenmeter\n"
        f"tokenmeter.configure(directory={str(tmp_path / 'tm')!r}, state_file={str(state)!r})\n"
        "tokenmeter.record('openai', 'gpt-4o', 1000, 500)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=60)
    (line,) = state.read_text().splitlines()
    match = LINE.match(line)
    assert match and match.group(2) == "1500" and match.group(3) == "0.0075"


_STILL_OPEN = """
import os, signal, sys, tokenmeter
tokenmeter.configure(directory=sys.argv[1], sinks=["sqlite"])
record = lambda: tokenmeter.record("openai", "gpt-4o", 1000, 500)
if sys.argv[2] == "sigterm":
    with tokenmeter.session("server"):
        for _ in range(3):
            record()
        os.kill(os.getpid(), signal.SIGTERM)
elif sys.argv[2] == "entered":
    tokenmeter.session("server").__enter__()
    for _ in range(3):
        record()
else:
    def answer():
        with tokenmeter.session("server"):
            for _ in range(3):
                record()
            yield
            yield
    started = answer()
    next(started)
"""


@pytest.mark.parametrize("how", ["sigterm", "entered", "generator"])
def test_a_session_still_open_at_exit_has_its_stored_totals(tmp_path: Path, how: str) -> None:
    """A SIGTERM inside its block, a session entered and never exited, a generator never
    closed: the row kept its start (0 calls, $0) beside its 3 records; the generator's, closed
    at teardown, printed an ImportError ('sys.meta_path is None')."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", _STILL_OPEN, str(tmp_path), how],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == (-signal.SIGTERM if how == "sigterm" else 0), done.stderr
    assert "Error" not in done.stderr and "Exception" not in done.stderr, done.stderr
    with contextlib.closing(sqlite3.connect(tmp_path / "usage.db")) as conn:
        row = conn.execute("SELECT status, calls, cost_usd FROM sessions WHERE name = 'server'")
        assert row.fetchone() == ("active", 3, "0.0225")  # it never ended: still "active"
        assert conn.execute("SELECT COUNT(*) FROM records").fetchone() == (3,)


_RECORDED_AFTER_THE_EXIT_STORE = """
import sys, threading
import tokenmeter
go, recorded, started = threading.Event(), threading.Event(), threading.Event()
def implicit_ended(summary):  # runs at exit once the open sessions were stored
    go.set()
    recorded.wait(60)
tokenmeter.configure(directory=sys.argv[1], sinks=["sqlite"], on_session_end=implicit_ended)
record = lambda: tokenmeter.record("openai", "gpt-4o", 1000, 500)
record()  # the implicit session's: its end runs the hook
def work():
    with tokenmeter.session("worker"):
        for _ in range(3):
            record()
        started.set()
        go.wait()
        record()  # a call completing as the process exits
        recorded.set()
        threading.Event().wait()  # still at work as the interpreter ends
threading.Thread(target=work, daemon=True).start()
started.wait()
"""


def test_a_call_recorded_after_the_exit_stored_its_open_session_is_in_its_totals(
    tmp_path: Path,
) -> None:
    """A daemon worker's call completing as the process exits, after the exit stored its
    still-open session: the row kept the totals of that store, 3 calls beside 4 records. The
    open sessions are stored again once the flush has written what was queued."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run_python("-c", _RECORDED_AFTER_THE_EXIT_STORE, str(tmp_path), env=env, cwd=tmp_path)
    with contextlib.closing(sqlite3.connect(tmp_path / "usage.db")) as conn:
        row = conn.execute("SELECT status, calls, cost_usd FROM sessions WHERE name = 'worker'")
        assert row.fetchone() == ("active", 4, "0.0300")  # it never ended: still "active"
        assert conn.execute("SELECT COUNT(*) FROM records").fetchone() == (5,)


def test_stored_sessions_carry_their_rolled_up_totals(sink: InMemorySink) -> None:
    with tokenmeter.session("parent") as parent:
        with tokenmeter.session("child-a"):
            record()
        with tokenmeter.session("child-b"):
            record()
            tokenmeter.record("openai", "unknown-model-zz", 10, 10)
    assert tokenmeter.flush(5)
    stored = sink.sessions[parent.id]
    assert (stored.calls, stored.input_tokens, stored.output_tokens) == (3, 2010, 1010)
    assert (stored.cost_usd, stored.unpriced_calls) == (Decimal("0.015"), 1)


STATE_LINE_ON_A_FULL_DISK = """
import json, resource, signal, sys
from pathlib import Path
import tokenmeter
from tokenmeter.sinks import InMemorySink

from helpers import one_line_value_error, run_python

state, alerts = Path(sys.argv[1]), Path(sys.argv[2]) / "alerts.jsonl"
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
tokenmeter.configure(
    sinks=[InMemorySink()], directory=sys.argv[2], state_file=state,
    alerts=[{"rule": "call_tokens", "threshold": 1, "cooldown_s": 0}],
)
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (30, hard))  # room for part of a line, not all
with tokenmeter.session("job"):
    tokenmeter.record("openai", "gpt-4o", 1000, 500)
assert not tokenmeter.flush(2)  # the state file cannot take its line
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # room again: the line is retried
with tokenmeter.session("job"):
    tokenmeter.record("openai", "gpt-4o", 1000, 500)
assert tokenmeter.flush(30)
"""


def test_a_full_disk_leaves_no_torn_line_in_the_state_file_or_alerts(tmp_path: Path) -> None:
    """The state-file line and an alert that filled the disk part-way were left torn, and the
    next line was glued to them: two sessions' lines read as one. Both are retried, whole."""
    state = tmp_path / "state.md"
    state.write_text("# Workflow state\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run_python(
        "-c", STATE_LINE_ON_A_FULL_DISK, str(state), str(tmp_path / "tm"), env=env, cwd=tmp_path
    )
    lines = state.read_text().splitlines()
    assert lines[0] == "# Workflow state" and len(lines) == 3
    assert all(LINE.match(line) for line in lines[1:]), lines
    alerts = (tmp_path / "tm" / "alerts.jsonl").read_text().splitlines()
    assert [json.loads(line)["rule"] for line in alerts] == ["call_tokens"] * 2


def test_a_stream_read_after_its_session_ended_is_in_the_stored_session(tmp_path: Path) -> None:
    """A stream made in a session and read after its ``with`` block (a web handler returning a
    streamed answer) is the session's call: its live summary counted it, but the stored session
    (the SQLite row, what ``tokenmeter sessions`` prints beside the records) kept the totals
    it had when it ended, one call short. The state file keeps the one line it wrote then."""
    import sqlite3

    from tokenmeter.testing import FakeProvider

    state = tmp_path / "state.md"
    tokenmeter.configure(sinks=["sqlite"], directory=tmp_path / "tm", state_file=state)
    tokenmeter.instrument(["openai"])
    try:
        with FakeProvider() as fake:
            client = fake.openai_client(max_retries=0)
            with tokenmeter.session("request") as outer, tokenmeter.session("answer") as inner:
                client.chat.completions.create(model="gpt-4o", messages=[])
                stream = client.chat.completions.create(model="gpt-4o", messages=[], stream=True)
            assert tokenmeter.flush(5)
            assert [line.count("TOKEN_TRACKING") for line in state.read_text().splitlines()] == [1]
            for _ in stream:
                pass
            assert tokenmeter.flush(5)
    finally:
        tokenmeter.uninstrument()
    assert outer.summary.calls == inner.summary.calls == 2
    with sqlite3.connect(tmp_path / "tm" / "usage.db") as conn:
        stored = dict(conn.execute("SELECT id, calls FROM sessions"))
    assert stored == {outer.id: 2, inner.id: 2}
    (line,) = state.read_text().splitlines()
    assert f"Session {outer.id} -" in line  # its one line, as the session ended


def test_a_record_made_after_the_exit_flush_is_in_the_implicit_sessions_row(
    tmp_path: Path,
) -> None:
    """An exit hook the application registered before tokenmeter's runs after the exit flush;
    the call it records was written, but the implicit session's stored row said one call."""
    import sqlite3

    script = (
        "import atexit, tokenmeter\n"
        "atexit.register(lambda: tokenmeter.record('openai', 'gpt-4o', 1000, 500))\n"
        f"tokenmeter.configure(directory={str(tmp_path / 'tm')!r})\n"
        "tokenmeter.record('openai', 'gpt-4o', 1000, 500)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run_python("-c", script, env=env, cwd=tmp_path)
    with sqlite3.connect(tmp_path / "tm" / "usage.db") as conn:
        assert list(conn.execute("SELECT status, calls FROM sessions")) == [("completed", 2)]
        assert list(conn.execute("SELECT COUNT(*) FROM records")) == [(2,)]
