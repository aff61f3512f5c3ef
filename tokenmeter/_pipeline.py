"""Delivery: a plain batcher per sink, so no caller ever waits on a writer.

Policies (documented in docs/sinks.md):
- An intercepted call's record is made later (``later``): the caller's thread queues what it
  read, as plain values, and a writer makes the records of the waiting calls in a batch at its
  next delivery, where the code and data stay in the CPU's caches (an asyncio event loop's
  calls: that loop, shortly after). Whatever needs them first
  catches up (``catch_up``): a session's summary or end, ``flush()``, ``configure()``, the exit.
- ``submit`` appends the item to each sink's buffer under a lock and returns. Each sink has its own
  writer thread: a slow or hung sink delays only itself. A writer sleeps until its buffer gets its
  first item, gathers for ``flush_interval`` seconds (or until a batch waits, items or calls
  whose records are to be made: ``_FLUSH_AT``, or half of ``max_queue`` when that is fewer; or a
  ``flush()``), then makes at most a batch of the waiting calls' records, takes the whole buffer
  and writes it.
- A full buffer (``max_queue`` items waiting for one sink, which has been hung or failing for a
  long time) drops its oldest item with an error log: memory stays bounded and the caller still
  never waits. The next ``flush()`` says False. Only a healthy writer whose buffer (or the calls
  waiting for their records) is three quarters full has its callers wait for it to take its
  buffer, at most ``_HAND_OVER`` per record (``_hand_over``): it was kept from the GIL by busy
  callers, not slow.
- A sink that raises is reported once through the ``tokenmeter`` logger; its items are kept, in
  order, and retried with back-off. When a batch keeps failing, the writer writes its records one
  at a time: a record that fails again right after the sink took another, and once more after
  the next one the sink takes (in the same pass, or the next write the sink takes), each time
  in ``_TRIES`` tries in a row, can never be written (a poison record) and is set aside in the
  quarantine file with the error, reported once, so it never holds back the records behind it.
  Poison records in a row (a refused session: its start and end) are told from a sink that is
  down by a later record, written ahead of them: another one each pass, as one may be poison too.
  A record that failed only while the sink was down (a server restarting) or at random (a flaky
  sink) is written, never set aside. A sink that is stopped gets a flush()'s tries first.
- Once a writer has fallen behind (``_BACKLOG`` items wait), records are queued packed
  (``_packed``): one tuple of plain values, which the garbage collector stops tracking at its first
  collection. However long they wait (a CPU-bound caller can keep a writer from the GIL for
  seconds: a thread that releases the GIL briefly and often, as the SDKs do once per call, is
  never asked to hand it over), they never pile up in the collector's oldest generation, whose
  growth makes the interpreter run full collections that pause every thread of the application.
  A writer unpacks them into ``UsageRecord`` objects at its own pace, just before its sink gets
  them. Records are not packed while writers keep up: they die young anyway.
- The SQLite sink's rows are made with the record (``SQLiteSink._row``, plain values too), and
  its writer only binds and steps them, and never packs them.
- A writer never holds the GIL for long: once it has worked for ``_SLICE`` seconds on the items
  a sink iterates (rows built, lines encoded, whatever the sink does per record), it sleeps
  ``_YIELD`` seconds, so a caller thread waiting for the GIL takes it then instead of after the
  interpreter's 5 ms switch interval. Without it, turning a batch into rows delays the calls made
  meanwhile by milliseconds. Paced by time, not by count: a cheap sink pauses rarely; and a pause
  that no other thread used lengthens the next slice (up to ``_MAX_SLICE``), so a writer working
  alone is not held back by pauses. A writer whose records are about to be dropped (``_behind``)
  does not pause at all: busy callers took the GIL at each pause and kept it.
- A catch-up makes the calls waiting when it begins, not those queued meanwhile: it ends.
  On the application's thread (a flush, a session's summary, configure()), an exception a
  signal handler raises (Ctrl-C, a SIGTERM handler calling ``sys.exit``) lands between any two
  bytecodes of it: the lock is never kept (``_take_later_lock``), and the call being made goes
  back to the head of the queue unless its record was queued already (``_make_next``).
- ``flush()`` waits until everything submitted before it has been offered to every sink: True when
  all of it is written (and each sink's own ``flush()`` returned). A sink that keeps failing
  releases it after ``_FLUSH_TRIES`` attempts, or once it has waited ``_FLUSH_PATIENCE`` seconds
  and the sink failed since (False; the records stay queued and are retried).
- Interpreter exit, an unhandled exception and SIGTERM / SIGHUP (when the application left
  Python's default disposition: a handler of its own is never replaced) flush, bounded by the
  ``exit_timeout`` setting. A termination signal that comes during that flush waits for it; in a
  multiprocessing child, one the main thread missed is sent to it again (``_watch_signals``).
  ``os.execv`` / ``os.execve`` (which the other ``os.exec*`` call) run the exit flush first.
  ``os._exit()`` and SIGKILL skip everything.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import functools
import importlib
import inspect
import itertools
import json
import logging
import os
import signal
import sys
import threading
import time
import types
import typing
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from tokenmeter._fork import renew_after_fork
from tokenmeter._models import SessionInfo, UsageRecord, trusted
from tokenmeter._packed import Packed, pack, unpack
from tokenmeter.sinks._base import Sink
from tokenmeter.sinks._files import append_line

__all__ = [
    "add_submit_observer",
    "before_exit",
    "before_exit_stop",
    "can_make_later",
    "catch_up",
    "clear_submit_observers",
    "exit_deadline",
    "exit_time_left",
    "exit_timeout",
    "exiting",
    "flush",
    "flush_early_at_exit",
    "hook_termination_signals",
    "later",
    "made",
    "observes",
    "raised_while_waiting",
    "remove_before_exit",
    "remove_submit_observer",
    "set_sinks",
    "start_thread",
    "submit",
]

logger = logging.getLogger("tokenmeter")
_T = typing.TypeVar("_T")

#: A writer wakes as soon as this many items wait, without waiting for the interval.
_FLUSH_AT = 1_000
#: Failed attempts of a whole batch before its records are tried one at a time.
_ISOLATE_AFTER = 3
#: Tries in a row of one record the sink refused, right after it took another: a record that
#: fails them all, and then all of them again after the sink's next success, can never be stored.
#: A sink failing at random (a flaky network) takes a good record in one of them: at half its
#: writes, all 33 tries of an isolated record fail once in 2**33 (with one try each, 1 record in
#: 35 of a pass was set aside).
_TRIES = 16
#: Failed attempts after which a waiting ``flush()`` is released (returning False).
_FLUSH_TRIES = 5
#: ... or seconds it has waited for a sink that failed since: a sink whose every attempt takes
#: long to fail (a server that takes the connection and never answers: 10 s or more each) held
#: a ``flush()`` without a timeout for five of them (109.5 s measured).
_FLUSH_PATIENCE = 10.0
#: How long a stopping writer goes on trying a sink that refused its last write (see
#: ``_Writer._last_tries``).
_LAST_TRIES_FOR = 1.0
_MAX_BACKOFF = 5.0
#: A sink is given at most this many records per write (one transaction, one appended block).
_CHUNK = 256
#: Items set aside in quarantine with one append (see ``_Writer._quarantine_all``).
_SET_ASIDE_AT_ONCE = 1_000
#: Errors of an append that a smaller one may not meet: the disk, the quota or the file size
#: limit has room for some of the lines (``_Writer._append_set_aside``).
_NO_ROOM = frozenset({errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)})
#: ``json.dumps(line, default=str)`` with one encoder: ``dumps`` with an argument makes a new
#: one per call, a large part of the cost of setting a record aside.
_quarantine_json = json.JSONEncoder(default=str).encode
#: Items waiting for one writer from which records are queued packed (see the module docstring):
#: more than one gathering interval holds at ordinary rates, so the writer has fallen behind.
_BACKLOG = 256
#: How long a writer works on a sink's items before it pauses, and how long a pause lasts: long
#: enough for a thread waiting for the GIL to wake and take it.
_SLICE = 0.0005
_YIELD = 0.0002
#: The longest slice a writer works when its pauses find no thread waiting for the GIL.
_MAX_SLICE = 0.0015
#: The longest slice a writer works making records (``catch_up``): an application thread waiting
#: for the GIL (an event loop woken by its timer) waits at most this long.
_MAKING_SLICE = 0.0002
#: A pause longer than this was used by another thread.
_CONTENDED = 4 * _YIELD


class _Paced(list[Any]):
    """A run handed to a sink: iterating it pauses the writer after every ``_SLICE`` of work.

    A pause that took much longer than ``_YIELD`` means another thread took the GIL meanwhile: a
    caller is busy, so the writer keeps pausing often. A pause that nobody used doubles the next
    slice, up to ``_MAX_SLICE``: a writer alone (a ``flush()`` waiting, the application idle or
    in network I/O) is not slowed by pauses nobody needs.
    """

    __slots__ = ()

    def __iter__(self) -> Iterator[Any]:
        return _paced(super().__iter__())


def _paced(items: Iterator[Any], longest: float = _MAX_SLICE) -> Iterator[Any]:
    """``items``, the writer pausing after every slice of work done between them (``longest``:
    the longest slice, when the pauses find no thread waiting)."""
    clock = time.perf_counter
    work = min(_SLICE, longest)
    pause_at = clock() + work
    for item in items:
        yield item
        now = clock()
        if now >= pause_at:
            if _behind():
                pause_at = now + work
                continue
            time.sleep(_YIELD)
            resumed = clock()
            contended = resumed - now > _CONTENDED
            work = min(_SLICE, longest) if contended else min(2 * work, longest)
            pause_at = resumed + work


#: A write that has taken this long is a hung sink's, not a writer kept from the GIL.
_HUNG_S = 1.0


def _healthy(writer: _Writer) -> bool:
    """``writer`` is neither failing nor hung in its sink's write or flush (``_HUNG_S``): one
    that falls behind does so only for want of the GIL."""
    if writer._failures:
        return False
    now = time.monotonic()
    since, flushing = writer._writing_since, writer._flushing_since
    return (since is None or now - since < _HUNG_S) and (
        flushing is None or now - flushing < _HUNG_S
    )


def _behind() -> bool:
    """Records wait in numbers that will soon be dropped (past half of ``max_queue``), for want
    of the GIL: then the writers stop pausing. Busy callers take the GIL at every pause, and a
    thread waiting for it is not given it while its holder lets go of it briefly and often (as
    the SDKs do once per call): a writer that paused fell further behind at each pause, and its
    healthy sink's buffer dropped records. Callers then wait for the GIL as long as Python's
    switch interval. A sink that is failing or hung holds records for another reason: the other
    writers keep their pauses (the callers' latency) meanwhile."""
    if len(_later) > _max_queue:  # two entries a call: half of what can_make_later allows
        return True
    pipeline = _pipeline
    if pipeline is None:
        return False
    return any(
        len(writer._buffer) > writer.max_queue // 2 and _healthy(writer)
        for writer in pipeline.writers
    )


#: A healthy writer's buffer has passed its ``press_at`` (set by ``_Writer.put``, cleared by
#: ``_hand_over`` once none has): callers queueing records hand the writers the GIL meanwhile.
_crowded = False
#: How long such a caller waits at most, once per record, for a writer to take its buffer (or
#: make the waiting calls' records): a writer waiting for the GIL takes it then, where busy
#: callers kept it for ever longer stretches (a short sleep each was not enough with 8 threads:
#: the others took the GIL). About a switch interval: a healthy writer takes its buffer sooner.
_HAND_OVER = 0.005
#: Re-entrant locks of ours (module, name) under which a record or a call may be queued: a
#: caller holding one never sleeps (a writer may wait for it). Looked up when used: a fork
#: renews them.
_LOCKS_OF_OURS = (
    ("tokenmeter._pipeline", "_lock"),
    ("tokenmeter._pipeline", "_later_lock"),
    ("tokenmeter._sessions", "_lock"),
    ("tokenmeter._sessions", "_told"),
    ("tokenmeter.guardrails._budgets", "_warned_lock"),
)


def _hand_over(pipeline: _Pipeline, item: object, making: bool) -> None:
    """``item`` was queued while a healthy writer's buffer is past its ``press_at``: the caller
    waits until a writer takes its buffer, at most ``_HAND_OVER`` seconds, so that the writer
    takes the GIL and writes. Without
    it a CPU-bound loop of ``record()`` calls kept a healthy sink's writer from the GIL until
    its buffer dropped records (35,936 of 300,000, the sink three times as fast as the loop).
    Only for a record queued by an application's thread that holds no lock of ours (never a
    writer's own records, nor one made under ``_later_lock``, nor a session's start or end);
    never for a failing or hung sink: its buffer drops the oldest, its callers never wait."""
    global _crowded
    _progress.clear()  # before looking: a buffer taken from here on ends the wait
    crowded = [writer for writer in pipeline.writers if writer.crowded()]
    if not crowded:
        _crowded = False
        return
    if not making and type(item) is UsageRecord and _may_wait(pipeline):
        _wait_for_progress(crowded)


def _wait_for_progress(crowded: Sequence[_Writer]) -> None:
    """Wait (``_hand_over``) until a writer takes its buffer or writes a chunk of it, at most
    ``_HAND_OVER`` seconds. A ``crowded`` writer that made no progress for ``_STALLED_S`` since
    a wait first went unanswered is not merely kept from the GIL (a sink blocked on a lock the
    caller holds: each burst waited a second, to drop all the same): no caller waits for it
    again until it makes some (``_made_progress``).

    An exception raised into the wait (a signal handler's: an alarm's ``TimeoutError``) is the
    application's, not a fault of ours: ``raised_while_waiting`` tells the guards that log our
    faults to let it through (the record was queued before the wait)."""
    _interrupted.error = None
    began = time.monotonic()
    try:
        _progress.wait(_HAND_OVER)
        for writer in crowded:
            if writer._last_progress < began and writer._unanswered_since is None:
                writer._unanswered_since = began
    except BaseException as exc:
        # Its identity, not the exception: kept, its traceback would keep the application's
        # frames (and what they hold) alive until this thread's next wait.
        _interrupted.error = (id(exc), type(exc))
        raise


def raised_while_waiting(error: BaseException) -> bool:
    """``error`` was raised into this thread's last wait for a writer (``_wait_for_progress``):
    asked by each guard it passes on its way out."""
    return getattr(_interrupted, "error", None) == (id(error), type(error))


def _made_progress(writer: _Writer) -> None:
    """``writer`` took its buffer or wrote a chunk of it: callers waiting go on, and may wait
    for it again."""
    writer._last_progress = time.monotonic()
    writer._unanswered_since = None
    _progress.set()


def _stalled(writer: _Writer) -> bool:
    """The callers' waits have gone unanswered by ``writer`` for ``_STALLED_S``."""
    since = writer._unanswered_since
    return since is not None and time.monotonic() - since > _STALLED_S


def _may_wait(pipeline: _Pipeline | None) -> bool:
    """The current thread may sleep to hand the writers the GIL: it is no writer's and holds
    no lock of ours (``pipeline``'s included)."""
    if getattr(_on_a_writer, "running", False):
        return False
    if pipeline is not None and pipeline._lock._is_owned():  # type: ignore[attr-defined]
        return False
    return not _holds_a_lock_of_ours()


#: Signals sent to the process from outside (kill, a terminal, a supervisor). Our threads block
#: them, so that the kernel delivers them to the application's threads: Python runs a handler on
#: the main thread in any case, but only a signal delivered to the main thread interrupts what it
#: waits in (a sleep, a read). Received by a writer, a SIGTERM would wait for the sleep to end.
_OUTSIDE_SIGNALS = frozenset(
    getattr(signal, name)
    for name in (
        "SIGINT",
        "SIGTERM",
        "SIGHUP",
        "SIGQUIT",
        "SIGUSR1",
        "SIGUSR2",
        "SIGALRM",
        "SIGCHLD",
        "SIGWINCH",
    )
    if hasattr(signal, name)
)


#: Threads of ours that import (a tokenizer's load, started by an estimate): the exit flush
#: waits for them. A daemon thread stopped mid-import when the interpreter ends holds the import
#: lock, and the exiting program's next import (an SDK stream's cleanup, when the collector
#: closes it) waits for it for ever.
_importing: weakref.WeakSet[threading.Thread] = weakref.WeakSet()


def start_thread(
    target: Callable[[], object], name: str, *, imports: bool = False
) -> threading.Thread:
    """Start a daemon thread of ours that never receives the application's signals (a new
    thread inherits the mask of the thread that starts it: blocked only meanwhile here).
    ``imports``: it may import, so the exit waits for it (``_importing``)."""
    thread = threading.Thread(target=target, name=name, daemon=True)
    if imports:
        _importing.add(thread)
    # Not carried into the session it happens to start in (_sessions._start_in_session): it
    # outlives that session, which it would keep alive, and its work belongs to none.
    thread._tokenmeter_worker = True  # type: ignore[attr-defined]
    if not hasattr(signal, "pthread_sigmask"):  # Windows
        thread.start()
        return thread
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _OUTSIDE_SIGNALS)
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return thread


class _Flag:
    """``threading.Event``'s set / clear / wait, safe to use from a signal handler. Python runs
    a handler on the main thread between two bytecodes: inside an Event's ``set()`` there (a
    record waking a writer), the Event's lock is held, and a handler whose flush sets the same
    Event waited for that lock, that is for itself, for ever. Here no lock is held between two
    bytecodes: the flag is a lock that is released while the flag is set, so setting it is one
    C call, and a waiter that takes it as it wakes gives it back at once (a flush marker's, once
    set, is never waited on anew: a later flush gets a new marker)."""

    __slots__ = ("_released",)

    def __init__(self) -> None:
        self._released = threading.Lock()
        self._released.acquire()

    def is_set(self) -> bool:
        return not self._released.locked()

    def set(self) -> None:
        with contextlib.suppress(RuntimeError):  # set already
            self._released.release()

    def clear(self) -> None:
        self._released.acquire(blocking=False)

    def wait(self, timeout: float | None = None) -> bool:
        if _in_slices(self._wait_once, timeout):
            self.set()  # for the next waiter: it stays set until cleared
            return True
        return False

    def _wait_once(self, timeout: float | None) -> bool:
        if timeout is None:
            return self._released.acquire()
        # As Event.wait: no time left is a look.
        return self._released.acquire(timeout > 0, timeout if timeout > 0 else -1)


#: The longest the main thread waits in one piece (``_in_slices``).
_SLICE_S = 0.05


def _in_slices(wait: Callable[[float | None], bool], timeout: float | None) -> bool:
    """``wait(timeout)`` (None: for ever) until it returns True, in slices on the main thread.
    A signal (a Ctrl-C) that lands as the main thread is about to sleep, after Python last
    looked for one and before the wait began, does not end the wait: its handler ran only when
    the whole wait was over (the exit flush's, with a hung sink: all of exit_timeout). Between
    slices it runs."""
    if (timeout is not None and timeout <= 0) or (
        threading.current_thread() is not threading.main_thread()
    ):
        return wait(timeout)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = _SLICE_S if deadline is None else min(_SLICE_S, deadline - time.monotonic())
        if left <= 0:
            return False
        if wait(left):
            return True


def _joined(thread: threading.Thread, timeout: float | None) -> bool:
    """``thread.join(timeout)`` in slices on the main thread (``_in_slices``): whether it ended."""

    def join(seconds: float | None) -> bool:
        thread.join(seconds)
        return not thread.is_alive()

    return _in_slices(join, timeout)


#: Set by a writer each time it takes its buffer: what a crowded caller waits for.
_progress = _Flag()
#: How long a writer may let the callers' waits go unanswered before they stop waiting for it
#: (``_stalled``). Kept from the GIL by 8 busy threads, a writer still writes a chunk within a
#: few waits.
_STALLED_S = 0.1
#: The identity of the exception a signal handler raised into this thread's wait
#: (``raised_while_waiting``).
_interrupted = threading.local()


class _FlushMarker:
    __slots__ = ("done", "ok", "since")

    def __init__(self) -> None:
        self.done = _Flag()
        self.ok = True
        self.since = time.monotonic()


_Item = Packed | UsageRecord | SessionInfo | _FlushMarker


def _makes_rows(sink: Sink) -> bool:
    """True for a sink of ours whose rows are made on the caller's thread (``_row``, then
    ``_write_rows`` on the writer's: SQLite). Looked up on the class, where no stand-in's
    ``__getattr__`` can answer for it; and only where ``write`` is the one defined beside it: a
    subclass that overrides ``write`` gets every record through its ``write``."""
    for cls in type(sink).__mro__:
        defined = vars(cls)
        if "_row" in defined:
            return defined.get("write") is getattr(type(sink), "write", None)
    return False


def _edits_nothing(sink: Sink) -> bool:
    """True for a sink of ours (not a subclass of one): it never edits the records it gets."""
    return type(sink).__module__.startswith("tokenmeter.")


def _own_copy(item: Any) -> Any:
    """``item`` with mappings of its own (its other values are immutable): the sinks share one
    record object, and a record its session's tags, so a user's sink that edits what it is given
    (drops a tag) would change what every other sink stores, and the session's later records."""
    values = item.__dict__.copy()
    model: type[BaseModel] = type(item)
    for name in _mapping_fields(model):  # the few that can hold one, not every field
        value = values[name]
        if type(value) is dict:
            values[name] = dict(value)
    return trusted(model, values)


@functools.cache
def _mapping_fields(model: type[BaseModel]) -> tuple[str, ...]:
    """The fields of a record or session model whose type admits a dict."""

    def admits_dict(annotation: Any) -> bool:
        return (
            annotation is dict
            or typing.get_origin(annotation) is dict
            or any(admits_dict(arg) for arg in typing.get_args(annotation))
        )

    return tuple(name for name, info in model.model_fields.items() if admits_dict(info.annotation))


def _name(sink: Sink) -> str:
    return type(sink).__name__


def _batch_for(max_queue: int) -> int:
    """Items that end a writer's gathering early: a full batch, or half its buffer's room."""
    return max(1, min(_FLUSH_AT, max_queue // 2))


class _Abandoned(Exception):
    """Raised by a write of an isolation pass (``_Writer._try_alone``) once the exit has set
    aside what the writer held meanwhile (``_Writer.abandon``): the pass holds copies of items
    that are no longer the writer's, and must stop there."""


def _not_a_coroutine(sink: Sink, method: str, result: object) -> None:
    """Raise when a sink's ``method`` returned a coroutine: an ``async def`` behind a plain
    decorator (or a ``functools.partial``) passes configure()'s check, and nothing awaits it,
    so nothing was written; flush() said True with the sink holding none of the records.
    Raised, it is the writer's usual failure: reported, retried, then set aside. Only a
    coroutine: it never ran, where a task or future returned may be running elsewhere."""
    if inspect.iscoroutine(result):
        result.close()  # never to be awaited: no "was never awaited" warning
        raise TypeError(
            f"{_name(sink)}.{method}() returned a coroutine, which tokenmeter does not await "
            f"(it calls sinks from a thread of its own): make it a plain method"
        )


class _Writer:
    """One sink, its buffer and the thread that drains it."""

    def __init__(
        self,
        sink: Sink,
        max_queue: int,
        interval: float,
        quarantine: Path | None,
        earlier: Sequence[threading.Thread] = (),
    ) -> None:
        self.sink = sink
        self.settle(max_queue, interval, quarantine)
        #: The sink's ``_row`` (see ``_makes_rows``), called on the caller's thread by ``row``.
        self.make_row: Callable[[UsageRecord], tuple[Any, ...]] | None = (
            sink._row if _makes_rows(sink) else None  # type: ignore[attr-defined]
        )
        self._copy: Callable[[Any], Any] | None = None if _edits_nothing(sink) else _own_copy
        # Re-entrant: a signal handler that flushes may interrupt put() on the same thread.
        self._lock = threading.RLock()
        self._buffer: deque[_Item] = deque()
        #: The last record or session the writer took from its buffer (``has``).
        self._last_taken: Any = None
        #: Set when work comes to a writer asleep (its first item, a call's record to make): it
        #: starts the gathering interval, never ends one (the first call after each delivery
        #: would end the next gathering: a delivery per call).
        self._arrived = _Flag()
        #: Set to end the gathering early (a full batch, a flush(), the stop).
        self._hurry = _Flag()
        self._urgent = False
        self._stopping = False
        #: Past the point where a later configuration can take the writer over (``resume``): it
        #: sets aside what its sink refused and closes it.
        self._closing = False
        #: Threads of earlier writers of the same sink, still ending: this one calls the sink
        #: only once they have (``_wait_for_earlier``).
        self._earlier = list(earlier)
        #: Once the writer has stopped (a new configuration, the exit): whether its sink took
        #: everything. A flush() is then answered with it: a marker put in the buffer after the
        #: last delivery would wait for a writer that is gone.
        self._stopped: bool | None = None
        #: Runs (records or sessions, in order) this sink has not accepted yet.
        self._pending: deque[list[Any]] = deque()
        #: Items that failed again right after the sink took another: set aside if they fail
        #: once more after the next write the sink takes, written if not. Held apart, so the
        #: records behind them are not held back meanwhile.
        self._accused: list[tuple[Any, BaseException]] = []
        self._markers: list[_FlushMarker] = []
        #: The marker in the buffer, shared by every flush() until the writer takes the buffer:
        #: markers are released together once what the writer took is written, so one marker
        #: per buffer means the same. With a hung sink and a flush() per request, a marker
        #: each would pile up in the buffer without end.
        self._open_marker: _FlushMarker | None = None
        #: Markers in the buffer already answered there (``_answer_overdue``): no records, so
        #: ``put`` does not count them against ``max_queue``.
        self._answered_waiting = 0
        #: ``quarantined`` when the open marker was put in the buffer, and when the oldest of
        #: ``_markers`` was: a record set aside since then was not written, and the flush()
        #: calls waiting on them say so (False), as ``flush()`` promises.
        self._set_aside_before_open = 0
        self._set_aside_before_markers: int | None = None
        #: Every item it took was written and answered True, the sink's own flush() included
        #: (``_release_markers``): a flush(timeout=0) finding its buffer empty too is answered
        #: at once (``request_flush``). It waited for no delivery, and said False with
        #: everything written.
        self._all_flushed = True
        self._failures = 0
        #: How many items written ahead of their turn, to show the sink works, failed too: each
        #: pass tries the next candidate (``_ahead``, ``_proof``), as the first may be poison.
        self._proofs_failed = 0
        self._retry_at = 0.0
        #: When its sink's current write began (None between writes): see ``_behind``.
        self._writing_since: float | None = None
        #: The items handed to that write: at risk, not set aside, when the exit cuts the
        #: writer off there (``abandon``). Set before ``_writing_since``: an exit between the two
        #: finds the writer outside a write, never inside one with nothing in it.
        self._in_write: Sequence[Any] = ()
        #: Ids of the items an isolation pass has written or set aside while they are still in
        #: ``_pending`` (it takes its runs out at its end): never set aside by ``abandon``.
        self._done_in_pass: set[int] = set()
        #: The exit set aside what this writer held while its sink's write had not returned
        #: (``abandon``): nothing it held is its own any more.
        self._abandoned = False
        self._reported = False
        #: When it last took its buffer or wrote a chunk of it, and the callers' waits since
        #: (``_wait_for_progress``).
        self._last_progress = time.monotonic()
        self._unanswered_since: float | None = None
        #: When the sink's own flush() began, while it runs (a hung one: ``_healthy``).
        self._flushing_since: float | None = None
        #: The sink's own flush() failed last time: its failure has been reported.
        self._flush_failing = False
        self.dropped = 0
        #: ``dropped`` when flush() calls were last answered: a record dropped since was not
        #: written, and the next answer says so (False).
        self._drops_answered = 0
        #: ``dropped`` when it was last logged (a line per 10,000): the total is said at the end.
        self._drops_said = 0
        self.quarantined = 0
        #: Records that could not be set aside either.
        self.lost = 0
        self._last_error: BaseException | None = None
        #: Why its thread could not start (None once it runs): see ``_start``.
        self._unstarted: RuntimeError | None = None
        self._thread = threading.Thread(target=self._run)  # never started: not alive
        self._start()

    def _start(self) -> None:
        """Start the writer's thread. One that cannot start (a container's pids limit or an
        address-space limit reached: RuntimeError "can't start new thread") is never the
        caller's failure (a session's entry, a call's record): what comes waits in the buffer,
        and the next ``put``, ``flush()`` or ``stop`` tries again; logged once per spell.
        Under the lock: two callers trying again at once start one thread."""
        with self._lock:
            if self._thread.is_alive():  # started meanwhile (another caller, ``revive``)
                self._unstarted = None
                return
            try:
                self._thread = start_thread(self._run, f"tokenmeter-writer-{_name(self.sink)}")
            except RuntimeError as exc:
                if self._unstarted is None:
                    logger.error(
                        "tokenmeter sink %s: its writer could not start (%s); its records "
                        "wait, and it is started again with the next one",
                        _name(self.sink),
                        exc,
                    )
                self._unstarted = exc
                return
            if self._unstarted is not None:
                self._unstarted = None
                logger.warning("tokenmeter sink %s: its writer started at last", _name(self.sink))

    def settle(self, max_queue: int, interval: float, quarantine: Path | None) -> None:
        """Take a configuration's settings: a new writer's, or those of the configuration that
        goes on with this writer's sink (``set_sinks``' keep_open)."""
        self.max_queue = max_queue
        #: Items waiting past which a caller queueing a record hands the GIL to this writer,
        #: when it is healthy (``_crowded``), before it drops anything: at least one below
        #: ``max_queue``, else (``max_queue`` 1 to 3) the hand-over came only with the drop.
        self.press_at = min(max_queue - 1, max_queue - max_queue // 4)
        self.batch = _batch_for(max_queue)
        self.interval = interval
        self.quarantine = quarantine

    # -- any thread --------------------------------------------------------------------------------
    def row(self, record: UsageRecord) -> Any:
        """What this writer queues for ``record``: the sink's row, made here (on the caller's
        thread); the record itself when that fails, so that the sink's ``write`` meets the fault
        on the writer's thread, where a record that can never be stored is set aside."""
        try:
            return self.make_row(record)  # type: ignore[misc]
        except Exception:
            return record

    def put(self, item: _Item, making: bool = False) -> int:
        """Queue ``item``; returns how many items wait. ``making``: the record of a waiting
        call, made under ``_later_lock`` (see ``_make_next``)."""
        global _queued_while_making
        with self._lock:
            buffer = self._buffer
            if making:  # no call between this and the append: no signal handler runs there
                _queued_while_making = True
            buffer.append(item)
            waiting = len(buffer)
            records = waiting - (self._open_marker is not None) - self._answered_waiting
            if records > self.press_at:
                self._crowd(records)
        if waiting == 1:
            self._arrived.set()
        if waiting == self.batch:
            self._hurry.set()
        if self._unstarted is not None:
            self._start()
        return waiting

    def has(self, item: _Item) -> bool:
        """Whether ``item`` was queued here: it is in the buffer, or the last one the writer
        took from it. Exact while the caller holds its pipeline's lock (``_queue_the_rest``):
        nothing else is queued meanwhile, so the writer cannot have taken one after it."""
        with self._lock:
            return self._last_taken is item or any(queued is item for queued in self._buffer)

    def _crowd(self, waiting: int) -> None:
        """Past ``press_at`` (``_lock`` held): a healthy writer's callers hand it the GIL once
        they hold no lock (``_hand_over``); past ``max_queue`` the oldest item is dropped."""
        global _crowded
        if _healthy(self):
            _crowded = True
        if waiting > self.max_queue:
            self._drop_oldest()

    def crowded(self) -> bool:
        """Healthy and not stalled, with more than ``press_at`` items waiting: its records would
        soon be dropped for want of the GIL."""
        return len(self._buffer) > self.press_at and _healthy(self) and not _stalled(self)

    def held(self) -> int:
        """Records and sessions this writer holds, unwritten (read from another thread: a
        writer cut off at exit, inside its sink's write, or setting aside what it held). The
        sessions of a sink that takes none are never its to lose."""
        takes_sessions = getattr(self.sink, "write_sessions", None) is not None
        try:
            # Copied first (in one step, under the GIL): the writer takes items out meanwhile.
            runs = sum(
                len(run)
                for run in tuple(self._pending)
                if takes_sessions or not (run and isinstance(run[0], SessionInfo))
            )
            runs += len(self._accused)
            return runs + sum(type(item) is not _FlushMarker for item in tuple(self._buffer))
        except RuntimeError:  # changed while counted: the writer is not stuck after all
            return 0

    def _drop_oldest(self) -> None:
        for index, item in enumerate(self._buffer):
            if type(item) is not _FlushMarker:
                del self._buffer[index]
                if type(item) is SessionInfo and getattr(self.sink, "write_sessions", None) is None:
                    # Never its sink's to store: nothing lost, and flush() must not say False
                    # (max_queue=1: every implicit session's opening row, records all stored).
                    return
                break
        self._count_drops(1)

    def _count_drops(self, count: int) -> None:
        before, self.dropped = self.dropped, self.dropped + count
        if before == 0 or before // 10_000 != self.dropped // 10_000:
            self._drops_said = self.dropped
            logger.error(
                "tokenmeter sink %s is %d items behind: dropped the oldest (%d so far)",
                _name(self.sink),
                self.max_queue,
                self.dropped,
            )

    def _report_drops(self) -> None:
        """At the end (exit, a new configuration): how many records were dropped in all, when
        more than the last line said."""
        if self.dropped != self._drops_said:
            self._drops_said = self.dropped
            logger.error(
                "tokenmeter sink %s dropped %d records in all", _name(self.sink), self.dropped
            )

    def revive(self) -> None:
        """Start the thread again once it has ended (after the exit flush: ``_write_late``)."""
        if not self._thread.is_alive():
            self._stopping = self._closing = False
            with self._lock:
                self._stopped = None
            self._thread = start_thread(self._run, f"tokenmeter-writer-{_name(self.sink)}")

    def request_flush(self, at_once: bool = False) -> _FlushMarker:
        """A marker answered once what the writer holds is written and its sink's own flush()
        has returned. ``at_once`` (a flush(timeout=0), which cannot wait for that): a writer
        holding nothing whose last answer was True answers True now, without calling the
        sink's flush() again (any other flush() calls it, so a sink down again says so)."""
        marker = _FlushMarker()
        if self._unstarted is not None:
            self._start()
        if not self._thread.is_alive():
            # Ended by the exit flush (a flush() in a later exit hook), or short of a bug died:
            # never wait for nothing. Done if it holds nothing.
            marker.ok = not self._buffer and not self._pending and not self._accused
            marker.done.set()
            return marker
        if threading.current_thread() is self._thread:
            # flush() from this sink's own write (an on_alert callback): the writer cannot wait
            # for itself; what it is writing is in once the call returns.
            marker.done.set()
            return marker
        with self._lock:
            if self._stopped is not None:  # stopping, and no delivery left to take the marker
                marker.ok = self._stopped
                marker.done.set()
                return marker
            if at_once and self._holds_nothing():
                marker.done.set()
                return marker
            if self._open_marker is None:
                # In the buffer before it is shared: a flush() interrupted in between (a Ctrl-C
                # at exit, which flushes again) never waits on a marker no delivery takes.
                self._buffer.append(marker)
                self._set_aside_before_open = self.quarantined
                self._open_marker = marker
            else:
                marker = self._open_marker
        self._rouse()
        return marker

    def _holds_nothing(self) -> bool:
        """(``_lock`` held) Nothing to write, and what it wrote was answered True since: no
        record dropped or set aside, the sink's own flush() called after its last write."""
        return (
            self._all_flushed
            and not self._buffer
            and not self._pending
            and not self._accused
            and not self._markers
            and self._writing_since is None
            and not self._abandoned
            and self.dropped == self._drops_answered
        )

    def stop(self, timeout: float | None) -> None:
        """Write what is buffered, close the sink, end the thread."""
        self.ask_to_stop()
        self.wait_stopped(timeout)

    def wait_stopped(self, timeout: float | None) -> None:
        """Wait up to ``timeout`` for the writer ``ask_to_stop`` was called for to end."""
        if self._unstarted is not None:
            self._start()  # stopping: it writes what it holds, closes its sink and ends
        if self._unstarted is not None:
            logger.error(
                "tokenmeter sink %s: its writer never started; %d records and sessions it held "
                "are lost",
                _name(self.sink),
                self.held(),
            )
            return
        # Not from its own write (it ends once the write returns), nor from a signal handler
        # inside ``put`` (it ends once the handler returns and ``put`` lets go of the lock).
        if threading.current_thread() is not self._thread and not _held_here(self):
            _joined(self._thread, timeout)

    def ask_to_stop(self) -> None:
        """Have the writer write what is buffered, close the sink and end, without waiting."""
        self._stopping = True
        self._rouse()

    def resume(self) -> bool:
        """Cancel the stop of a writer a configuration replaced, still at work (a slow write):
        a later configuration names its sink again and goes on with it, and with what it holds.
        A second writer would call the sink while this one is still inside its write, then have
        it closed under it. False once it has begun to set aside and close (``_closing``), or
        has ended: the sink's next writer then waits for it (``_earlier``)."""
        with self._lock:
            if self._closing or not self._thread.is_alive():
                return False
            self._stopping = False
        return True

    def _stop_for_good(self) -> bool:
        """Stopping, its deliveries done: True once no ``resume`` can take it back (then it sets
        aside what its sink refused and closes it); False if one has."""
        with self._lock:
            self._closing = self._stopping
            return self._closing

    def _wait_for_earlier(self) -> None:
        """Before its first call of the sink: wait for the earlier writers of the same sink to
        end (one that was closing it when a configuration named it again), so that no two
        threads call it at once. Counted as inside a write meanwhile: callers do not wait for
        it, and the exit sets aside what it holds (``abandon``) if they never end."""
        for thread in self._earlier:
            self._in_write, self._writing_since = (), time.monotonic()
            thread.join()
            self._abandoned_meanwhile()
        self._earlier = []

    def _rouse(self) -> None:
        """Have the writer deliver now, asleep or gathering."""
        self._urgent = True
        self._arrived.set()
        self._hurry.set()

    # -- writer thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        _on_a_writer.running = True
        self._wait_for_earlier()
        while True:
            try:
                if self._wait():
                    stopped = time.monotonic()
                    self._deliver(stopped)
                    self._last_tries(stopped)
                    ok = not self._pending and not self._accused
                    self._offer_sessions(stopped)
                    if not self._stop_for_good():  # its sink named again: it goes on
                        continue
                    self._set_aside_pending()
                    _quietly(self.sink.close, self.sink)
                    self._release_markers(ok=ok)
                    self._answer_late_flushes(ok)
                    self._report_drops()
                    return
                self._deliver(time.monotonic())
            except BaseException:  # a bug of ours: report it, keep the thread alive
                # even when reporting fails too (an application's logging filter that raises)
                with contextlib.suppress(BaseException):
                    logger.exception("tokenmeter writer for sink %s failed", _name(self.sink))
                time.sleep(0.1)
                self._rouse()  # take up the delivery it broke off: a flush() may wait

    def _answer_late_flushes(self, ok: bool) -> None:
        """The writer has stopped: the flush() calls that came after its last delivery (a
        flush() while configure() waits for the sinks it replaces) get its verdict."""
        with self._lock:
            self._stopped = ok
            # Those answered while they waited there (``_answer_overdue``) keep their answer.
            late = [
                item
                for item in self._buffer
                if type(item) is _FlushMarker and not item.done.is_set()
            ]
            if late:
                self._buffer = deque(i for i in self._buffer if type(i) is not _FlushMarker)
                self._answered_waiting = 0
            self._open_marker = None
        for marker in late:
            marker.ok = ok
            marker.done.set()

    def _last_tries(self, stopped: float) -> None:
        """Stopping (a new configuration, the exit): a sink that refused its last write gets the
        tries a ``flush()`` gives it (back to back) before what it still holds is set aside. One
        failed write of a flaky sink set aside every record it held when configure() replaced it.
        No more tries for a sink that has failed that often already (the exit's flush), nor once
        ``_LAST_TRIES_FOR`` seconds have passed since ``stopped``: a sink that takes seconds to
        fail would keep its records past the exit, where they are lost, not set aside."""
        for _ in range(_FLUSH_TRIES):
            if (
                not self._pending
                or self._failures >= _FLUSH_TRIES
                or time.monotonic() - stopped > _LAST_TRIES_FOR
            ):
                return
            self._write_pending(time.monotonic())

    def _offer_sessions(self, stopped: float) -> None:
        """Stopping, with items the sink refused still pending: the runs of sessions among them
        were never offered to it, as they go after their records and a sink judged down is
        tried no further. Each is offered now, on its own, while ``_LAST_TRIES_FOR`` lasts; one
        that fails is offered a session at a time (``_sessions_written_apart``), and what the
        sink still refuses is set aside with its own error. A session's end was set aside with
        its records' error, never given to a sink whose ``write_sessions`` worked: the session
        stayed "active" there for ever; and a good session's end in a run with a refused
        session was set aside with it. Once a run's sessions are all refused (the sink's
        sessions side is down), the later runs are set aside with the others."""
        if getattr(self.sink, "write_sessions", None) is None:
            return
        index = 0
        while index < len(self._pending) and time.monotonic() - stopped <= _LAST_TRIES_FOR:
            run = self._pending[index]
            if not isinstance(run[0], SessionInfo):
                index += 1
                continue
            self._in_write, self._writing_since = run, time.monotonic()
            try:
                self._write(run)
            except BaseException as exc:
                if self._abandoned_meanwhile():  # the exit set it aside already
                    return
                apart = self._sessions_written_apart(run, exc)
                if apart is None:
                    return
                refused, taken = apart
                for item, error in refused:  # pending until in the file (``held``)
                    self._quarantine(item, error)
                del self._pending[index]
                if not taken:
                    return
                continue
            if self._abandoned_meanwhile():
                return
            del self._pending[index]

    def _wait(self) -> bool:
        """Sleep until there is work; gather for the interval. True once asked to stop."""
        retry = max(0.0, self._retry_at - time.monotonic()) if self._pending else None
        # Each event is cleared before the state it stands for is read: work that comes after
        # the clear sets it again, so neither wait can miss it.
        self._arrived.clear()
        if not self._buffer and not self._urgent and not _later:
            self._arrived.wait(retry)
        self._hurry.clear()
        if not self._urgent and len(self._buffer) < self.batch and len(_later) < 2 * self.batch:
            self._hurry.wait(self.interval)
        self._urgent = False
        return self._stopping

    def _deliver(self, now: float) -> None:
        # No more records made than a batch fills: made all at once into a small buffer, the
        # waiting calls overflowed it (max_queue=200: 144 of 800 records dropped, the sink
        # healthy and idle). Those left are made at the next delivery, right after this one;
        # all of them when stopping, for this sink, as before.
        room = None if self._stopping else max(0, self.batch - len(self._buffer))
        catch_up(paced=True, most=room)
        with self._lock:
            items, self._buffer = self._buffer, deque()
            self._answered_waiting = 0
            if items:
                self._all_flushed = False  # till a marker's answer says they are written
                for taken in reversed(items):
                    if type(taken) is not _FlushMarker:
                        self._last_taken = taken
                        break
            flushed = self._open_marker is not None
            self._open_marker = None
        _made_progress(self)  # a crowded caller waits for it (``_hand_over``)
        if flushed and self._set_aside_before_markers is None:
            self._set_aside_before_markers = self._set_aside_before_open
        current: list[Any] = []
        kind: type | None = None
        asked = False  # a flush() came: try the sink now, back-off or not
        for item in items:
            item_kind = type(item)
            if item_kind is _FlushMarker:
                marker = typing.cast(_FlushMarker, item)
                if not marker.done.is_set():  # else answered while it waited (_answer_overdue)
                    self._markers.append(marker)
                    asked = True
                continue
            if item_kind is not kind and current:
                self._pending.append(current)
                current = []
            kind = item_kind
            current.append(item)
        if current:
            self._pending.append(current)
        self._bound_pending()
        due = not self._failures or now >= self._retry_at or asked or self._stopping
        if self._pending and due:
            self._write_pending(now)
        if not self._pending:
            self._release_markers(ok=not self._accused)
        elif (
            self._failures >= _FLUSH_TRIES
            or self._stopping
            or (
                self._failures
                and self._markers
                and time.monotonic() - self._markers[0].since >= _FLUSH_PATIENCE
            )
        ):
            self._release_markers(ok=False)

    def _bound_pending(self) -> None:
        """A failing sink's kept items count against ``max_queue`` too: past it, the oldest are
        dropped (memory stays bounded however long the sink fails)."""
        excess = sum(map(len, self._pending)) - self.max_queue
        dropped = 0
        while excess > 0 and self._pending:
            run = self._pending[0]
            if len(run) <= excess:
                self._pending.popleft()
                taken = len(run)
            else:
                del run[:excess]
                taken = excess
            excess -= taken
            dropped += taken
        if dropped:
            with self._lock:  # callers' threads count theirs (``_drop_oldest``) under it too
                self._count_drops(dropped)

    def _write_pending(self, now: float) -> None:
        wrote = False
        while self._pending:
            run = self._pending[0]
            chunk = run if len(run) <= _CHUNK else run[:_CHUNK]
            began = time.monotonic()
            self._in_write, self._writing_since = chunk, began
            try:
                self._write(chunk)
            except BaseException as exc:
                if not self._abandoned_meanwhile():
                    with contextlib.suppress(_Abandoned):  # then nothing is its own any more
                        self._failed(run, exc, now, began)
                return
            if self._abandoned_meanwhile():
                return
            wrote = True
            _made_progress(self)
            if chunk is run:
                self._pending.popleft()
            else:
                del run[:_CHUNK]
                if not _behind():
                    time.sleep(_YIELD)
        if wrote and self._accused:
            try:
                self._judge_accused()
            except _Abandoned:
                return
        recovered = self._failures
        self._failures, self._reported = 0, False  # before the line: logging may raise
        self._proofs_failed = 0  # an outage's passes no longer pick records out of order
        if recovered:
            logger.warning("tokenmeter sink %s recovered; kept records written", _name(self.sink))

    def _abandoned_meanwhile(self) -> bool:
        """The sink's write has returned: whether the exit set aside, meanwhile, what this
        writer held (then it must touch none of it; what comes later is its own again)."""
        with self._lock:
            self._writing_since, self._in_write = None, ()
            abandoned, self._abandoned = self._abandoned, False
            return abandoned

    def abandon(self) -> tuple[int, int]:
        """At exit, for a writer cut off inside its sink's write (a hung user sink): set aside
        in quarantine what it holds and has not handed to the sink, rather than lose it with the
        thread. Returns how many items were set aside, and how many are at risk: those in the
        unfinished write (they may be in the sink already: not set aside twice) and those the
        quarantine file did not take. A sink whose ``give_up_unsent_write()`` says its write sent
        nothing that stores them (and now never will) has that write's items set aside too.
        (0, 0) when the writer is inside neither a write nor its sink's own flush(): what it
        holds is its own to handle. Inside any write: one of an isolation pass too (a sink down
        and slow to fail spends the exit there), where the items the pass has written or set
        aside are still pending. Inside the sink's flush() (an uploader posting to a server that
        stopped answering): no write is unfinished, so nothing is at risk, and what it holds,
        never handed to the sink, is set aside; left there, it was lost (0 of 100 records)."""
        with self._lock:
            inside = self._writing_since is not None or self._flushing_since is not None
            if not inside or self._abandoned:
                return 0, 0
            self._abandoned = True
            pending, self._pending = self._pending, deque()
            accused, self._accused = self._accused, []
            buffer, self._buffer = self._buffer, deque()
            self._answered_waiting = 0
            self._open_marker = None
            in_write, done = self._in_write, self._done_in_pass
            self._done_in_pass = set()
        give_up = getattr(self.sink, "give_up_unsent_write", None)
        unsent = give_up is not None and give_up() is True
        skip = done if unsent else done | {id(item) for item in in_write}
        for marker in buffer:
            if type(marker) is _FlushMarker:  # a flush() that came meanwhile: not written
                marker.ok = False
                marker.done.set()
        error = RuntimeError("the sink's write() had not returned when the process exited")
        runs = [
            *pending,
            [item for item, _ in accused],
            [i for i in buffer if type(i) is not _FlushMarker],
        ]
        takes_sessions = getattr(self.sink, "write_sessions", None) is not None
        lost = self.lost
        held = [
            item
            for item in itertools.chain.from_iterable(runs)
            if (takes_sessions or not isinstance(item, SessionInfo)) and id(item) not in skip
        ]
        for start in range(0, len(held), _SET_ASIDE_AT_ONCE):
            self._quarantine_all(held[start : start + _SET_ASIDE_AT_ONCE], error)
        at_risk = 0 if unsent else len(in_write)
        return len(held) - (self.lost - lost), at_risk + self.lost - lost

    def _write(self, run: Sequence[Any]) -> None:
        first = run[0]
        copy = self._copy
        write: Callable[[Sequence[Any]], object] = self.sink.write  # may return a coroutine
        if type(first) is tuple:  # a run of rows or of packed records (runs are of one kind)
            if self.make_row is not None:  # rows made on the callers' threads
                self.sink._write_rows(run)  # type: ignore[attr-defined]
            else:  # unpacked at the same pace as the sink's own work on the records
                unpacked = map(unpack, _paced(iter(run)))
                result = write(_Paced(unpacked if copy is None else map(copy, unpacked)))
                if result is not None:
                    _not_a_coroutine(self.sink, "write", result)
        elif not isinstance(first, SessionInfo):
            result = write(_Paced(run if copy is None else map(copy, _paced(iter(run)))))
            if result is not None:
                _not_a_coroutine(self.sink, "write", result)
        else:
            write_sessions = getattr(self.sink, "write_sessions", None)
            if write_sessions is not None:
                result = write_sessions(run if copy is None else list(map(copy, run)))
                if result is not None:
                    _not_a_coroutine(self.sink, "write_sessions", result)

    def _judge_accused(self) -> None:
        """The sink has just taken a write: an accused item that fails now too has failed right
        after two of them, and is set aside (a trickle of records, one per ``flush()``, never
        brings two successes into one pass)."""
        while self._accused:  # each kept until judged: the exit may set aside the others
            item, _ = self._accused[0]
            error = self._refused(item)
            del self._accused[0]
            if error is not None:
                self._quarantine(item, error)

    def _refused(self, item: Any) -> BaseException | None:
        """Write ``item`` alone, up to ``_TRIES`` times in a row: None once the sink takes it,
        else the last error. A sink that fails now and then (a flaky network) takes a good
        record in one of the tries; a record it can never store fails every one."""
        error: BaseException | None = None
        for _ in range(_TRIES):
            error = self._try_alone([item])
            if error is None:
                return None
        return error

    def _try_alone(self, run: Sequence[Any]) -> BaseException | None:
        """One write of an isolation pass: the sink's error, or None once it took ``run``.
        Marked as inside the sink's write (``_writing_since``), as the delivery's own writes
        are: a sink down and slow to fail spends the exit in these, and a writer cut off there
        had nothing set aside (``abandon``: 0 of 500 records). Raises ``_Abandoned`` when the
        exit set aside what the writer held meanwhile."""
        began = time.monotonic()
        self._in_write, self._writing_since = run, began
        try:
            self._write(run)
        except BaseException as exc:
            error: BaseException | None = exc
        else:
            error = None
        if self._abandoned_meanwhile():
            raise _Abandoned
        if error is not None:
            self._answer_overdue(began)
        return error

    def _answer_overdue(self, began: float) -> None:
        """A write that ``began`` then has just failed: the ``flush()`` calls that have waited
        ``_FLUSH_PATIENCE`` seconds get False now, before the next write. Checked only once a
        delivery was over, they also waited for the isolation pass that a third failure starts
        (up to three more writes, each as slow to fail as the others): 24.5 s for a sink
        failing in 4 s, 40 s for one failing in 10 s, where the docs promise the patience and
        the write under way.

        That counts the ``flush()`` that came during the pass too, once a write begun after it
        failed (not one under way when it came: the sink may be back by then). Its marker waits
        in the buffer, answered there and passed over by the delivery that takes it (not
        counted by ``put`` meanwhile: ``_answered_waiting``).
        Only the patience applies to it, as the records before it were not offered yet. The
        records of both stay queued and are retried."""
        now = time.monotonic()
        if self._open_marker is not None:
            with self._lock:
                marker = self._open_marker
                if (
                    marker is not None
                    and marker.since <= began
                    and now - marker.since >= _FLUSH_PATIENCE
                ):
                    self._open_marker = None  # a later flush() gets a marker of its own
                    self._answered_waiting += 1
                    self._markers.append(marker)
        # Patience alone: the tries are counted once the isolation pass is over (``_deliver``),
        # which may write every record (a sink back after its first failed write).
        if self._markers and now - self._markers[0].since >= _FLUSH_PATIENCE:
            self._release_markers(ok=False)

    def _set_aside_pending(self) -> None:
        """At the end (exit, a new configuration): what the sink still refuses after its last
        attempt goes to the quarantine file with its error, rather than nowhere."""
        lost = self.lost
        for item, error in self._accused:
            self._quarantine(item, error)
        self._accused.clear()
        takes_sessions = getattr(self.sink, "write_sessions", None) is not None
        error = self._last_error or RuntimeError("not written")
        while self._pending:
            # Many items per append: one each (open, lock, write, close) set aside some 8,000 a
            # second, and the exit cut the writer off with the rest. Each part stays in
            # ``_pending`` until it is in the file: a writer cut off meanwhile is said to hold
            # it (``held``), where the run it had taken out was lost and left out of the count.
            part = self._head_of_pending(takes_sessions)
            if part:
                self._quarantine_all(part, error)
            self._remove_head_of_pending(len(part), takes_sessions)
        if self.lost - lost > 1:  # the first is logged with its record, the rest counted
            logger.error(
                "tokenmeter sink %s: %d records it rejected when it stopped could not be set "
                "aside either",
                _name(self.sink),
                self.lost - lost,
            )

    def _head_of_pending(self, takes_sessions: bool) -> list[Any]:
        """The first ``_SET_ASIDE_AT_ONCE`` items of ``_pending``, in order, but sessions for a
        sink that takes none: never given to it, nothing of them is lost (a run is of one kind)."""
        part: list[Any] = []
        for run in self._pending:
            if len(part) == _SET_ASIDE_AT_ONCE:
                break
            if takes_sessions or not isinstance(run[0], SessionInfo):
                part += run[: _SET_ASIDE_AT_ONCE - len(part)]
        return part

    def _remove_head_of_pending(self, count: int, takes_sessions: bool) -> None:
        """Take out of ``_pending`` the ``count`` items ``_head_of_pending`` gave, and the runs
        of sessions it passed over."""
        pending = self._pending
        while pending:
            run = pending[0]
            if takes_sessions or not isinstance(run[0], SessionInfo):
                if not count:
                    return
                if len(run) > count:
                    del run[:count]
                    return
                count -= len(run)
            pending.popleft()

    def _failed(self, run: list[Any], exc: BaseException, now: float, began: float) -> None:
        """The write of ``run`` that ``began`` then failed with ``exc`` (the delivery's ``now``)."""
        self._last_error = exc
        self._failures += 1
        if not self._reported:
            self._reported = True
            logger.error(
                "tokenmeter sink %s failed (%s); its records are kept and retried",
                _name(self.sink),
                _error_text(exc),
            )
        self._answer_overdue(began)  # before the isolation pass below: more slow writes
        if self._failures >= _ISOLATE_AFTER and self._isolate(run):
            self._failures = 0
            self._write_pending(now)
            return
        if isinstance(run[0], SessionInfo) and self._records_first():
            self._write_pending(now)
            return
        # The exponent capped: a float power of two overflows after 1,024 failures (a sink down
        # for hours, or a flush() per request asking for an attempt each).
        backoff = min(0.1 * 2 ** min(self._failures - 1, 16), _MAX_BACKOFF)
        self._retry_at = now + backoff

    def _records_first(self) -> bool:
        """Move the runs of records ahead of the runs of sessions that failed in front of them,
        each kind in its order (a session's start before its end); False if there are none.
        A sink's sessions and records are written by two methods: one whose write_sessions
        keeps failing (left unimplemented) held back every record of a session behind them."""
        records = [run for run in self._pending if not isinstance(run[0], SessionInfo)]
        if not records:
            return False
        sessions = [run for run in self._pending if isinstance(run[0], SessionInfo)]
        self._pending = deque([*records, *sessions])
        return True

    def _isolate(self, run: list[Any]) -> bool:
        """Write a failing run one item at a time, with the runs of its kind right behind it.

        An item that fails is tried again right after the sink takes another one, and set aside
        in quarantine only if it fails then and the sink takes the next one too: a record that
        failed while the sink was down (a server restarting before or during the pass) is never
        mistaken for one the sink can never store. Items that failed again after a success but
        wait for the next one are held apart (``_accused``); items not tried since the last
        success go back to the head of the queue. Two that fail before any success prove nothing
        while later items wait (poison ones in a row): one later item that may go first is
        tried (``_ahead``: another one each pass, since it may be poison too). False when
        nothing went through: the sink is failing."""
        kind = isinstance(run[0], SessionInfo)
        runs = list(
            itertools.takewhile(
                lambda later: isinstance(later[0], SessionInfo) == kind, self._pending
            )
        )
        items = list(itertools.chain.from_iterable(runs))
        done = self._done_in_pass = set()  # written or set aside, still in ``_pending``
        suspects: list[Any] = []  # failed, not yet tried again since the sink last took one
        accused: list[tuple[Any, BaseException]] = []  # failed again right after a success
        written = False
        ahead: int | None = None  # an item written before its turn, to show the sink works
        for index, item in enumerate(items):
            if index == ahead:
                continue
            if self._took(item):
                done.add(id(item))
            else:
                suspects.append(item)
                if written or len(suspects) < 2:
                    continue
                # Two in a row and no success: the sink is down, or they are poison (a run of
                # them at the head of the queue, a refused session's start and end, which held
                # back every item behind them for good). A later item tells which, and keeps a
                # sink that is down at three writes a pass.
                # (None of their kind behind them, a later run: a refused session's two records.)
                ahead = _ahead(items, index + 1, self._proofs_failed)
                if ahead is None:
                    if not self._later_record_taken(len(runs)):
                        return False  # the sink is down, or the run tried held poison too
                elif self._took(items[ahead]):
                    done.add(id(items[ahead]))
                    self._proofs_failed = 0  # the next proof is the last item again
                else:
                    self._proofs_failed += 1
                    return False  # the sink is down, or the item tried was poison too
            written = True
            for poison, _ in accused:  # the sink works on both sides of their failure
                error = self._refused(poison)
                if error is not None:
                    self._quarantine(poison, error)
                done.add(id(poison))
            accused.clear()
            retry, suspects = suspects, []
            for suspect in retry:
                error = self._refused(suspect)
                if error is not None:
                    accused.append((suspect, error))
                else:
                    done.add(id(suspect))
        if not written and len(suspects) == 1 and self._later_record_taken(len(runs)):
            # One item failed with no other of its kind behind it (a session's only record,
            # between the session's start and end): a run written behind it shows whether the
            # sink is down or the item cannot be stored.
            written = True
            retry, suspects = suspects, []
            error = self._refused(retry[0])
            if error is not None:
                accused.append((retry[0], error))
        if not written:
            return False
        for _ in runs:
            self._pending.popleft()  # every item is now written, set aside or put back below
        self._done_in_pass = set()
        self._accused += accused
        self._put_back(suspects)
        return True

    def _put_back(self, items: list[Any]) -> None:
        """Put ``items`` (in order) back at the head of ``_pending`` as runs of one type each,
        as ``_deliver`` makes them: ``_write`` reads a run's type from its first item, and a run
        of records made before the sink failed and records queued packed behind its backlog
        handed the packed ones to the sink's ``write`` (every record set aside at exit under
        "AttributeError: 'tuple' object has no attribute ...", not the sink's own error)."""
        runs = [list(run) for _, run in itertools.groupby(items, key=type)]
        self._pending.extendleft(reversed(runs))

    def _took(self, item: Any) -> bool:
        """Write ``item`` alone: whether the sink took it."""
        return self._try_alone([item]) is None

    def _later_record_taken(self, start: int) -> bool:
        """Write one record of a run from ``start`` on (``_proof``) alone, before its turn, to
        show the sink works: whether the sink took it (then it is no longer pending). A whole
        run written as the proof held a refused record too, each pass (a session's records, good
        and refused ones mixed): no proof ever went through, the good records were held back for
        good, dropped at ``max_queue`` or set aside at the exit. False when there is none: then
        the run of sessions right behind the failing records is written, as no proof (sessions
        that made no call waited behind a poison record for the next record)."""
        proof = self._proof(start)
        if proof is None:
            self._sessions_written_ahead(start)
            return False
        run_index, index = proof
        run = self._pending[run_index]
        if not self._took(run[index]):
            self._proofs_failed += 1
            return False
        del run[index]
        if not run:
            del self._pending[run_index]
        self._proofs_failed = 0  # the next proof is the first record again
        return True

    def _proof(self, start: int) -> tuple[int, int] | None:
        """Where a record from ``start`` on is, to write alone before its turn (run, index in
        it): the first, or, when proofs failed before (it was poison too: a refused session's
        records), the next one each pass. The first is the one that goes least out of order.
        Never a session: a session's row the sink takes is no proof for records it fails (a
        records table locked, a sink without ``write_sessions``), and a later one may end a
        session that an earlier run starts."""
        pending = self._pending
        records = [
            (run_index, index)
            for run_index in range(start, len(pending))
            if not isinstance(pending[run_index][0], SessionInfo)
            for index in range(len(pending[run_index]))
        ]
        return records[self._proofs_failed % len(records)] if records else None

    def _sessions_written_ahead(self, start: int) -> None:
        """Write the run at ``start`` if it is one of sessions the sink stores (it may go before
        the records in front of it: the two kinds are written apart). Refused, it is written a
        session at a time, and only what the sink refuses waits for its turn: a good session's
        end in the run of a refused session stayed "active" in the sink while the app ran."""
        pending = self._pending
        if start >= len(pending) or not isinstance(pending[start][0], SessionInfo):
            return
        if getattr(self.sink, "write_sessions", None) is None:
            return
        failure = self._try_alone(pending[start])
        if failure is not None:
            apart = self._sessions_written_apart(pending[start], failure)
            if apart is None:
                raise _Abandoned
            refused = [item for item, _ in apart[0]]  # refused too: they wait for their turn
            if refused:
                pending[start] = refused
                return
        del pending[start]

    def _sessions_written_apart(
        self, run: Sequence[Any], failure: BaseException
    ) -> tuple[list[tuple[Any, BaseException]], bool] | None:
        """Write a run of sessions the sink refused whole (with ``failure``) one snapshot at a
        time, in order: a refused session's later snapshots are not tried (written after it, an
        end would land before its start). Returns the snapshots not written, in order, each with
        its error, and whether the sink took any. Two sessions refused before the sink took one:
        its sessions side is down, and the rest are not tried either (a write each would keep a
        sink that is down at one write per session a pass). A run of one session's snapshots is
        not written again: the whole run's failure is that session's refusal (written again,
        the same write that had just failed gave a sink that is down one more write a pass, and
        two more when it stopped). None when the exit set aside meanwhile what this writer held
        (``abandon``): nothing of it is its own any more."""
        if len({item.id for item in run}) == 1:
            return [(item, failure) for item in run], False
        refused: dict[str, BaseException] = {}
        left: list[tuple[Any, BaseException]] = []
        taken = False
        last: BaseException | None = None
        for item in run:
            error = refused.get(item.id)
            if error is None and not taken and len(refused) >= 2:
                error = last  # not tried: the sink's sessions side is down
            if error is None:
                self._in_write, self._writing_since = [item], time.monotonic()
                try:
                    self._write([item])
                except BaseException as exc:
                    error = refused[item.id] = last = exc
                if self._abandoned_meanwhile():
                    return None
                if error is None:
                    taken = True
                    continue
            left.append((item, error))
        return left, taken

    def _quarantine(self, item: Any, exc: BaseException) -> None:
        self._quarantine_all([item], exc)

    def _quarantine_all(self, items: Sequence[Any], exc: BaseException) -> None:
        """Set ``items`` aside in the quarantine file, a line each, with one append: whole or
        not at all (a full disk leaves no torn line for the next one to be glued to), one process
        at a time, as the JSONL sink appends. An append the disk has no room for is tried again
        in halves (``_append_set_aside``): what fits is kept, the rest counted lost."""
        first = self.quarantined == 0
        self.quarantined += len(items)
        where = self.quarantine
        name, error_text = _name(self.sink), _error_text(exc)
        lines = [{"sink": name, "error": error_text, "record": self._plain(i)} for i in items]
        if where is None:
            error = OSError("no quarantine file configured")
            for line in lines:
                self._count_lost(line, error)
            return
        if self._append_set_aside(where, lines) and first:
            logger.error(
                "tokenmeter sink %s cannot accept a record (%s); it was set aside in %s",
                name,
                error_text,
                where,
            )

    def _append_set_aside(self, where: Path, lines: list[dict[str, Any]]) -> bool:
        """Append ``lines`` to the quarantine file at once; when the disk has no room for them
        all (``_NO_ROOM``), each half, down to a single line, and count lost those that fit
        nowhere. All or nothing per block, 0 of 200 records were kept on a disk with room for
        100 of them. True when any line was kept."""
        try:
            text = "".join([_quarantine_json(line) + "\n" for line in lines])
            append_line(where, text.encode("utf-8", "backslashreplace"), regular_only=True)
        except Exception as error:
            if len(lines) > 1 and isinstance(error, OSError) and error.errno in _NO_ROOM:
                half = len(lines) // 2
                kept = self._append_set_aside(where, lines[:half])
                return self._append_set_aside(where, lines[half:]) or kept
            for line in lines:
                self._count_lost(line, error)
            return False
        return True

    def _plain(self, item: Any) -> Any:
        """``item`` as JSON values, for the quarantine file."""
        try:
            if type(item) is tuple and self.make_row is not None:  # a row: its record again
                data = self.sink._row_record(item)  # type: ignore[attr-defined]
                try:
                    return UsageRecord.model_validate(data).to_json_dict()
                except ValueError:
                    return data
            item = unpack(item)
            if isinstance(item, UsageRecord):
                return item.to_json_dict()
            return item.model_dump(mode="json")
        except Exception:
            return repr(item)

    def _count_lost(self, line: dict[str, Any], error: Exception) -> None:
        """Log a record that could not be set aside: the first with the record itself, then one
        line per 10,000 (a sink down for long stops holding up to ``max_queue`` records, and a
        line each flooded the log; ``_set_aside_pending`` says how many it lost)."""
        self.lost += 1
        if self.lost == 1:
            logger.error(
                "tokenmeter sink %s rejected a record and it could not be set aside (%s): %s",
                _name(self.sink),
                error,
                line,
            )
        elif self.lost % 10_000 == 0:
            logger.error(
                "tokenmeter sink %s: %d records it rejected could not be set aside (%s)",
                _name(self.sink),
                self.lost,
                error,
            )

    def _release_markers(self, ok: bool) -> None:
        if not self._markers:
            return
        if ok:  # a sink that stores in its own flush() (an uploader) has not when that fails
            # Reported once until it works again: with a flush() per request, a line each.
            self._flushing_since = time.monotonic()
            try:
                ok = _quietly(self.sink.flush, self.sink, quiet=self._flush_failing)
            finally:
                # What the exit set aside meanwhile (``abandon``) was all in the buffer, pending
                # or accused: nothing this writer holds here, so it goes on as before.
                with self._lock:
                    self._flushing_since = None
                    self._abandoned = False
            self._flush_failing = not ok
        before, self._set_aside_before_markers = self._set_aside_before_markers, None
        if before is not None and self.quarantined != before:
            ok = False  # a record they waited for was set aside in quarantine, not written
        dropped = self.dropped
        if dropped != self._drops_answered:
            # Records dropped since the last answer (a full buffer): flush() said True though
            # 250 of 320 records were gone.
            self._drops_answered = dropped
            ok = False
        for marker in self._markers:
            marker.ok = ok
            marker.done.set()
        self._markers.clear()
        self._all_flushed = ok


#: The most of a sink's error message that is logged and kept with each record set aside: a
#: user sink raising with the error page it got (200 kB) made every quarantine line that long.
_ERROR_TEXT_MAX = 1_000


def _ahead(items: Sequence[Any], start: int, turn: int) -> int | None:
    """The index of one of ``items`` from ``start`` on that may be written before the items in
    front of it: the last (past a run of poison ones, if any is), or, at the ``turn``-th try,
    the ``turn``-th from the end (the one before was poison too). Any record may; a session's
    snapshot only when no earlier snapshot of that session waits (the earlier one, written
    after it, would undo it: a session's start over its end). None when there is none."""
    first: dict[str, int] = {}
    for index, item in enumerate(items):
        if isinstance(item, SessionInfo):
            first.setdefault(item.id, index)
    may = [
        index
        for index in range(len(items) - 1, start - 1, -1)
        if not isinstance(items[index], SessionInfo) or first[items[index].id] == index
    ]
    return may[turn % len(may)] if may else None


def _error_text(exc: BaseException) -> str:
    """``"Type: message"`` of a sink's error, cut at ``_ERROR_TEXT_MAX`` characters. A message
    that cannot be made (a user sink's exception whose ``__str__`` raises) is left out: raised
    in the middle of a one-at-a-time pass, it would make the writer lose its place and write
    records twice."""
    try:
        text = f"{type(exc).__name__}: {exc}"
    except Exception:
        return f"{type(exc).__name__}: <message unavailable>"
    return text if len(text) <= _ERROR_TEXT_MAX else text[:_ERROR_TEXT_MAX] + "..."


def _quietly(call: Callable[[], None], sink: Sink, quiet: bool = False) -> bool:
    """Call one of the sink's methods; False (logged unless ``quiet``) when it raised."""
    try:
        call()
        return True
    except BaseException as exc:
        if quiet:
            return False
        logger.error(
            "tokenmeter sink %s: %s failed: %s", _name(sink), call.__name__, _error_text(exc)
        )
        return False


class _Pipeline:
    def __init__(
        self,
        sinks: list[Sink],
        max_queue: int,
        interval: float,
        quarantine: Path | None,
        carried: Sequence[_Writer] = (),
    ) -> None:
        """``carried``: the writers of sinks the previous configuration passed on (``set_sinks``'
        keep_open); such a sink goes on with its writer, never two writers at once."""
        self.writers: list[_Writer] = []
        for sink in sinks:
            if any(writer.sink is sink for writer in self.writers):
                continue  # one object named twice: one writer, every record once
            writer = next((kept for kept in carried if kept.sink is sink), None)
            if writer is None:
                writer = _Writer(sink, max_queue, interval, quarantine, _earlier_writers(sink))
            else:
                writer.settle(max_queue, interval, quarantine)
            self.writers.append(writer)
        for writer in carried:
            if writer not in self.writers:  # passed on, then not used: ends on its own thread
                _ending.append(writer)  # waited for by flush(), the exit and its next writer
                writer.stop(0)
        #: A writer is behind: records are queued packed (they will wait long).
        self._backlog = False
        #: Held while an item goes into the buffers; re-entrant, as the writers' locks are.
        self._lock = threading.RLock()
        self._replaced = False

    def put(self, item: UsageRecord | SessionInfo) -> bool:
        """Queue ``item`` for every sink; False once ``replace`` has been called: the caller
        took this pipeline just before a ``set_sinks`` on another thread, whose writers may have
        ended since, and the item goes to the new one."""
        writers = self.writers
        making = _later_lock._is_owned()  # type: ignore[attr-defined]
        if type(item) is UsageRecord:
            packed = pack(item) if self._backlog else item
            queued = [packed if w.make_row is None else w.row(item) for w in writers]
        else:
            queued = [item] * len(writers)
        longest = 0
        with self._lock:
            if self._replaced:
                return False
            try:
                for writer, one in zip(writers, queued, strict=True):
                    waiting = writer.put(one, making)
                    if writer.make_row is None and waiting > longest:  # rows are never packed
                        longest = waiting
            except BaseException:
                # A Ctrl-C (or a signal handler's SystemExit) between two sinks' buffers: the
                # record was in the first sink and never in the second.
                _queue_the_rest(writers, queued, making)
                raise
        self._backlog = longest >= _BACKLOG
        if _crowded:  # the only cost to callers while the writers keep up
            _hand_over(self, item, making)
        return True

    def replace(self) -> None:
        """Take no more items (each one is then in every buffer or in none), before the writers
        are stopped or passed on."""
        with self._lock:
            self._replaced = True


def _queue_the_rest(writers: Sequence[_Writer], queued: Sequence[Any], making: bool) -> None:
    """Finish a fan-out an exception interrupted (``_Pipeline.put``, its lock held): queue the
    item into every writer that has not got it, so that it is in every buffer or in none.
    Called only on that exception's way out: the callers' road costs nothing more."""
    for writer, one in zip(writers, queued, strict=True):
        if not writer.has(one):
            writer.put(one, making)


def _earlier_writers(sink: Sink) -> list[threading.Thread]:
    """The threads of the writers of ``sink`` that a configuration replaced and that are still
    ending (``_ending``): a new writer of it waits for them before it calls it."""
    return [w._thread for w in _ending if w.sink is sink and w._thread.is_alive()]


def _flush_writers(
    writers: Sequence[_Writer], timeout: float | None, at_once: bool = False
) -> bool:
    failed, timed_out = _unflushed(writers, timeout, at_once)
    return not failed and not timed_out


#: Writer threads inside a flush (a sink's write, or an on_alert callback, calling flush()): a
#: writer's flush does not wait for those that entered theirs before it, which may be waiting
#: for it (two sinks flushing in their writes waited on each other for ever).
_flushing: set[threading.Thread] = set()
_flushing_lock = threading.Lock()
#: ``running`` is set on a writer's thread for the whole of its run (``_Writer._run``): a flush()
#: there is a sink's, whatever lists the writer is in by then. Decided by membership in the
#: lists flush() was given, a writer configure() was replacing on another thread (out of both
#: for a moment) did not register in ``_flushing``: it waited for writers whose own flush
#: waited for it, and the application's flush() waited for them all, for ever.
_on_a_writer = threading.local()


def _unflushed(
    writers: Sequence[_Writer], timeout: float | None, at_once: bool = False
) -> tuple[list[str], list[str]]:
    """Flush: the names of the sinks that failed to take everything, and of those that did not
    finish within ``timeout`` (what exit reports: a sink that failed at once did not time out).
    A writer busy in a flush of its own is not waited for: it counts as failed. Nor is one whose
    lock this thread holds: a signal handler's flush() that interrupted ``put`` there, on the
    same thread; the writer needs that lock to take what it would wait for, and the handler
    waited for it for ever (with no timeout) or all of its timeout (a configure() there, all of
    exit_timeout). What it holds is written once the handler returns. ``at_once``: see
    ``_Writer.request_flush``."""
    current = threading.current_thread()
    on_a_writer = getattr(_on_a_writer, "running", False)
    busy: set[threading.Thread] = set()
    if on_a_writer:
        with _flushing_lock:
            busy = set(_flushing)
            _flushing.add(current)
    try:
        skipped = [w for w in writers if w._thread in busy or _held_here(w)]
        failed = [_name(writer.sink) for writer in skipped]
        markers = [(w, w.request_flush(at_once)) for w in writers if w not in skipped]
        deadline = None if timeout is None else time.monotonic() + timeout
        timed_out: list[str] = []
        for writer, marker in markers:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not marker.done.wait(left):
                timed_out.append(_name(writer.sink))
            elif not marker.ok:
                failed.append(_name(writer.sink))
        return failed, timed_out
    finally:
        if on_a_writer:
            with _flushing_lock:
                _flushing.discard(current)


def _held_here(writer: _Writer) -> bool:
    """Whether this thread holds ``writer``'s lock (a signal handler running inside ``put``)."""
    return bool(writer._lock._is_owned())  # type: ignore[attr-defined]


def _report_unflushed(failed: list[str], timed_out: list[str], what: str) -> None:
    """Log what an exit flush did not write, by what happened (see ``_unflushed``)."""
    if timed_out:
        logger.error(
            "tokenmeter: sinks %s did not accept %s within exit_timeout (%ss)",
            ", ".join(timed_out),
            what,
            _exit_timeout,
        )
    if failed:
        logger.error(
            "tokenmeter: sinks %s failed to write %s (their errors are logged above)",
            ", ".join(failed),
            what,
        )


#: The least time writers asked to stop together get to end, even when a hung one used up the
#: timeout: the others, woken at the same moment, close their sinks meanwhile.
_STOP_GRACE = 0.1


def _stop_writers(writers: Sequence[_Writer], timeout: float | None, asked: bool = False) -> None:
    """Write what is buffered, close the sinks and end the writers (all within timeout).

    Every writer is woken first, then waited for: a hung sink's writer does not keep the others
    asleep until it has used up the timeout (they were then cut off before closing their sinks,
    and reported as not having accepted their records at exit). ``asked``: ``ask_to_stop`` was
    called already, under ``_lock`` (``set_sinks``): asked again here, a writer a later
    configuration has taken over meanwhile (``resume``) would stop under it."""
    deadline = None if timeout is None else time.monotonic() + max(timeout, _STOP_GRACE)
    if not asked:
        for writer in writers:
            writer.ask_to_stop()
    for writer in writers:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        writer.wait_stopped(left)


# -- module state --------------------------------------------------------------------------------
_pipeline: _Pipeline | None = None
_lock = threading.RLock()


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """Hold ``_lock``; then act on a termination signal that came meanwhile (deferred: see
    ``_on_termination``)."""
    try:
        with _lock:
            yield
    finally:
        _take_deferred_signal()
        if _held_back:
            _release_held_back()


_sink_factory: Callable[[], list[Sink]] = list
_max_queue = 100_000
#: ``_later``'s length (two entries a call) at which a call ends the writers' gathering: their
#: batch. At a fixed 1,000 calls, with ``max_queue`` below 1,000 they gathered on while the calls
#: past it were made on the callers' threads, into buffers that then overflowed.
_hurry_at = 2 * _batch_for(_max_queue)
#: ``later``: the entries of the first calls of a gathering, which wake the writers asleep (the
#: first call's, and those of other threads' calls that came before it read the queue's length).
_FIRST_CALLS = 16
_exit_timeout = 10.0
_interval = 0.2
_quarantine: Path | None = None
#: Writers of the sinks the last ``set_sinks`` passed on (keep_open), until the next pipeline
#: takes them over.
_carried: list[_Writer] = []
#: Writers ``set_sinks`` ended that were still writing after exit_timeout: exit waits for them.
_ending: list[_Writer] = []
#: The pipeline used while making the sinks fails (``_without_sinks``), and when it last failed
#: (``time.monotonic()``): the next use after ``_SINKS_RETRY`` seconds tries again.
_sinkless: _Pipeline | None = None
_sinks_failed_at = 0.0
_SINKS_RETRY = 1.0


def _load_settings() -> object:
    """Read the settings (``_runtime`` imported now: ``import tokenmeter`` stays light). Until
    something had imported ``_runtime``, there was no hook: a session that was the program's
    first use never read them, so threads started in it ran outside it, and, with sinks set by
    ``TOKENMETER_*`` only, the session was never stored."""
    from tokenmeter import _runtime

    return _runtime.settings()


#: Loads the settings (and so the configured sinks) before the first pipeline is made.
first_use_hook: Callable[[], object] | None = _load_settings
#: Run at exit before the final flush (the implicit session ends, open streams are recorded).
_before_exit: list[Callable[[], None]] = []
_before_stop: list[Callable[[], None]] = []


#: The bad setting last warned about by ``warn_unrecorded``.
_warned_setting: str | None = None


def warn_unrecorded(exc: ValueError) -> None:
    """The one-line warning for a bad setting met where nothing may raise it (a session's entry,
    an intercepted call): once per message, however many calls meet it until configure()."""
    global _warned_setting
    if str(exc) != _warned_setting:
        _warned_setting = str(exc)
        logger.warning("tokenmeter: %s; nothing is recorded until configure() is called", exc)


def _get() -> _Pipeline:
    """The pipeline, made now when there is none. Entered again on the thread that is making it
    (a signal handler's record, a stream recorded by its finaliser when a collection runs inside
    the sink factory's imports): the item is held back (``_HoldBack``) for the outer call to
    queue, and nothing is made again. Made twice, one sink object had two writers at once, and a
    second making found the first one's imports half done ("could not open its sinks": the
    records of the next second were dropped)."""
    if _making_here():
        return _holding
    _here.opening = True
    try:
        return _open()
    finally:
        _here.opening = False
        _release_held_back()


def _open() -> _Pipeline:
    global _pipeline, first_use_hook, _carried, _sinkless
    hook = first_use_hook
    if hook is not None:
        # Outside our lock: the hook takes the settings' lock, which configure() holds while it
        # takes ours (the two threads hung each other). A thread that comes meanwhile calls it
        # too, and waits for the first there; it is cleared once it has run.
        try:
            hook()
        except ValueError as exc:
            # A bad setting (TOKENMETER_MAX_QUEUE=0): what made the first record (a session's
            # entry, an intercepted call) goes on, unmetered, the same every time; instrument()
            # and the application's own record() raise it.
            warn_unrecorded(exc)
        finally:
            first_use_hook = None
    with _lock:  # a termination signal meanwhile is taken by the caller (``submit``)
        if _pipeline is None:
            if _sinkless is not None and time.monotonic() - _sinks_failed_at < _SINKS_RETRY:
                return _sinkless
            try:
                sinks = _sink_factory()
            except Exception:
                return _without_sinks()
            _sinkless = None
            pipeline = _pipeline = _Pipeline(sinks, _max_queue, _interval, _quarantine, _carried)
            _carried = []
            _flush_at_multiprocessing_exit()
            hook_termination_signals()
            _hook_exec()
            if _in_exit_hooks():
                # First used by an exit hook: ours, registered at this module's import (just
                # now), will not run; the records are written at once, as after our exit flush.
                _mark_exit_flushed()
            return pipeline
        return _pipeline


class _HoldBack(_Pipeline):
    """What ``_get`` gives a call that re-entered it on the thread making the pipeline: the
    item waits in ``_held_back`` until the pipeline is made (``_release_held_back``)."""

    def put(self, item: UsageRecord | SessionInfo) -> bool:
        _held_back.append(item)
        return True


#: Items submitted on a thread while it was making the pipeline (``_get``), oldest first.
_held_back: deque[UsageRecord | SessionInfo] = deque()
_holding = _HoldBack([], 1, _interval, None)
#: ``opening``: this thread is in ``_get``.
_here = threading.local()


def _making_here() -> bool:
    """This thread is making or replacing the pipeline (``_get``, ``set_sinks``: ``_lock`` is
    held): what it submits now was interrupted there (a signal handler, a finaliser)."""
    return bool(getattr(_here, "opening", False) or _lock._is_owned())  # type: ignore[attr-defined]


def _release_held_back() -> None:
    """Queue the items held back while this thread made or replaced the pipeline, making it if
    needed. Kept while its sinks cannot be made: the next ``_get`` that makes them queues them."""
    while _held_back and not _making_here():
        pipeline = _pipeline or _get()
        if pipeline is not _pipeline:  # the sinks could not be made (``_without_sinks``)
            return
        with contextlib.suppress(IndexError):  # a handler's own release took the last one
            item = _held_back.popleft()
            while not pipeline.put(item):  # replaced meanwhile: configure() on another thread
                pipeline = _pipeline or _get()


def _without_sinks() -> _Pipeline:
    """The pipeline while the sinks cannot be made (called holding ``_lock``): it drops what it
    is given, and ``_get`` tries again a second later. Kept for good, one failure (an import
    of ours half done on this thread when the garbage collector recorded a call) lost every
    record of the process."""
    global _sinkless, _sinks_failed_at
    if _sinkless is None:
        logger.exception(
            "tokenmeter could not open its sinks; nothing is written until it can (it tries "
            "again each second)"
        )
        _sinkless = _Pipeline([], _max_queue, _interval, _quarantine)
    _sinks_failed_at = time.monotonic()
    return _sinkless


def _in_exit_hooks() -> bool:
    """True while the interpreter runs its exit hooks: they run on the main thread, which
    ``threading`` has marked stopped by then (other threads run on during its last joins)."""
    main = threading.main_thread()
    return threading.current_thread() is main and not main.is_alive()


def _mark_exit_flushed() -> None:
    global _ended_pid
    _ended_pid = os.getpid()


#: Called with every submitted item on the caller's thread, before it is queued: for a sink that
#: must capture something only the caller's thread knows (the OTel sink: the active span). Each
#: must be quick and must not raise.
_submit_observers: list[Callable[[UsageRecord | SessionInfo], None]] = []
#: The weak references to the observers' owners (``add_submit_observer``), by observer: kept
#: here, their callbacks run when the owners are collected.
_observer_owners: dict[Callable[[UsageRecord | SessionInfo], None], weakref.ref[Any]] = {}
#: Observers whose owner the garbage collector took, to drop (``_observing``).
_gone_observers: list[Callable[[UsageRecord | SessionInfo], None]] = []


def add_submit_observer(
    observer: Callable[[UsageRecord | SessionInfo], None], owner: object | None = None
) -> None:
    """Call ``observer(item)`` on the caller's thread for every item submitted from now on.

    With ``owner``, only while ``owner`` lives (``observer`` holding it weakly, as the OTel
    sink's does): a sink made and dropped unclosed (one a refused ``configure()`` was given) left
    its observer for the life of the process, and with it every call's record made on the
    caller's thread (``can_make_later``)."""
    with _locked():
        _submit_observers.append(observer)
        if owner is not None:
            _observer_owners[observer] = weakref.ref(
                owner, lambda _: _gone_observers.append(observer)
            )


def remove_submit_observer(observer: Callable[[UsageRecord | SessionInfo], None]) -> None:
    with _locked(), contextlib.suppress(ValueError):
        _observer_owners.pop(observer, None)
        _submit_observers.remove(observer)


def observes(observer: Callable[[UsageRecord | SessionInfo], None]) -> bool:
    """Whether ``observer`` is called for every item submitted (a reset may have forgotten it)."""
    return observer in _submit_observers


def clear_submit_observers() -> None:
    """Forget every observer, as in a new process (the tests' isolation: ``_runtime.reset``):
    one whose owner is not collected yet would keep the next test's records on its thread."""
    with _locked():
        _submit_observers.clear()
        _observer_owners.clear()
        _gone_observers.clear()


def _observing() -> bool:
    """Whether a submit observer is left once those whose owner is gone are dropped.

    Dropped here, not by the garbage collector's callback: that runs on whichever thread
    allocated, perhaps in the middle of taking ``_lock`` or iterating the list, so it only notes
    the observer. No lock is taken here either (the caller's thread, in the middle of a call):
    each step is one list operation."""
    while _gone_observers:
        with contextlib.suppress(IndexError):  # another thread took it meanwhile
            observer = _gone_observers.pop()
            _observer_owners.pop(observer, None)
            with contextlib.suppress(ValueError):
                _submit_observers.remove(observer)
    return bool(_submit_observers)


def submit(item: UsageRecord | SessionInfo) -> None:
    """Queue a record or a session for every sink; returns at once."""
    pipeline = _pipeline or _get()  # first use makes the sinks, which may add an observer
    if _submit_observers and _observing():
        # A copy: another thread's ``_observing`` may drop a gone one from the list meanwhile,
        # and the live observer after it was skipped (its call's span exported parentless).
        for observer in tuple(_submit_observers):
            try:
                observer(item)
            except Exception:  # never the application's problem
                logger.exception("tokenmeter: a submit observer failed")
    while not pipeline.put(item):  # replaced meanwhile: configure() on another thread
        pipeline = _pipeline or _get()
    if _deferred_signal:  # came while this first record made the sinks: the exit writes it
        _take_deferred_signal()
    if _ended_pid and _ended_pid == os.getpid():  # 0 until the exit flush: no getpid() call
        _write_late()


# -- records made later -----------------------------------------------------------------------
#: Intercepted calls whose records are still to be made (``later``), oldest first: each one's
#: session, then its plain values. Two entries, not a (session, values) pair: a pair holding
#: a session is tracked by the garbage collector (see the module docstring). They are always
#: taken out and put back two at a time, in one step (``_make_next``).
_later: deque[Any] = deque()
#: Makes and submits one call's record from what ``later`` was given (set by ``_record``).
make_later: Callable[[Any, tuple[Any, ...]], None] | None = None
#: Held while one call's record is made: whoever catches up next sees it complete.
_later_lock = threading.RLock()
#: Set as the thread making a waiting call's record (``_make_next``) puts it in a sink's buffer
#: (``_Writer.put``): from then on, an exception that comes out of the making (a signal
#: handler's) finds the record queued, and the call is not put back (made twice).
_queued_while_making = False
#: The record of the waiting call being made, once made and about to be counted in its session
#: (``made``): an exception that comes out of the making from then on sends it, not the call
#: back to be made again (its session would count it twice).
_made_while_making: UsageRecord | None = None
#: The longest a catch-up waits for the record another thread is making: microseconds, unless
#: that thread waits for a lock the catching-up thread holds (a signal handler's exit flush).
_CATCH_UP_WAIT = 2.0
#: How long an asyncio event loop gathers its calls before it makes their records, and the
#: longest it works on them at a time.
_LOOP_GATHERING = 0.05
_LOOP_SLICE = 0.001
#: Event loops whose ``_make_on_loop`` is due (weakly: a loop closed before it is not kept).
_loops_making: weakref.WeakSet[Any] = weakref.WeakSet()


def can_make_later() -> bool:
    """True when a call's record may be made later, on a writer's thread: writers are at work
    (fewer than ``max_queue`` calls wait: a CPU-bound caller can keep them from the GIL for
    long; memory stays bounded as the sinks' buffers do), and no submit observer waits to see
    the record on the caller's thread."""
    pipeline = _pipeline
    return (
        pipeline is not None
        and bool(pipeline.writers)
        and len(_later) < 2 * _max_queue
        and not (_submit_observers and _observing())
        and not _ended_pid
    )


def later(session: Any, call: tuple[Any, ...], loop: Any = None) -> None:
    """Have a call's record made later, in order, by a writer (see ``_Writer._deliver``).

    The caller's thread only queues what it read. Made between SDK calls, a record costs the
    caller several times what it costs a writer making a batch of them back to back, whose code
    and data stay in the CPU's caches (``benchmarks/bench_cold.py``). Whatever needs records made
    first catches up: a flush, a session's summary or end, a configure().

    ``loop``: the asyncio event loop the call was made on. It makes the waiting records itself,
    ``_LOOP_GATHERING`` seconds after the first (``_make_on_loop``): a writer making them held
    up the loop's timers for its slices, and made at once, between the loop's SDK calls, each
    cost the loop several times as much (``benchmarks/bench_asyncio.py``). A writer still makes
    those a loop leaves (closed first), at its next delivery.
    """
    _later.extend((session, call))  # one step: no other thread's pair comes between
    if loop is not None and loop not in _loops_making:
        try:
            _loops_making.add(loop)
            loop.call_later(_LOOP_GATHERING, _make_on_loop, loop)
        except Exception:  # a loop of another kind (no weak reference): the writers make them
            with contextlib.suppress(TypeError):
                _loops_making.discard(loop)
    # Other threads' calls may come between the extend and the len: the thresholds below are
    # reached, not met exactly (8 threads skipped the batch's, and a small buffer dropped).
    waiting = len(_later)
    if waiting <= _FIRST_CALLS:
        pipeline = _pipeline
        for writer in pipeline.writers if pipeline is not None else ():
            # Each one asleep (one gathering catches up at its interval's end): a hung sink's
            # writer must not hold the others' records.
            if not writer._buffer and not writer._arrived.is_set():
                writer._arrived.set()
    if waiting >= _hurry_at:
        pipeline = _pipeline
        for writer in pipeline.writers if pipeline is not None else ():
            if not writer._hurry.is_set():  # the writers' batch ends their gathering
                writer._hurry.set()
        if (
            waiting > _max_queue + _max_queue // 2  # 3/4 of what can_make_later allows
            and loop is None  # a loop makes its own calls' records
            and _may_wait(_pipeline)
        ):
            pipeline = _pipeline
            makers = [
                writer
                for writer in (pipeline.writers if pipeline is not None else ())
                if _healthy(writer) and not _stalled(writer)
            ]
            _progress.clear()
            if makers and len(_later) > _max_queue + _max_queue // 2:  # none made since
                _wait_for_progress(makers)  # until one makes the waiting calls' records


def _make_on_loop(loop: Any) -> None:
    """On the loop: make the waiting calls' records for ``_LOOP_SLICE`` seconds at most, and
    the rest at the loop's next turn (its timers run between). Never waits for a writer: one
    making records already makes them all."""
    try:
        stop = time.perf_counter() + _LOOP_SLICE
        for _ in _making(wait=False):
            if _later and time.perf_counter() >= stop:
                loop.call_soon(_make_on_loop, loop)
                return
    except Exception:  # never the loop's exception handler's: the writers make what is left
        logger.exception("tokenmeter: making records on an event loop failed")
    _loops_making.discard(loop)


def _making(wait: bool = True, most: int | None = None) -> Iterator[None]:
    """Make the waiting calls' records, one at a time under the lock, oldest first.
    ``wait=False``: stop when another thread is making one (it makes the rest). ``most``: make
    no more than that many (those waiting when a catch-up began).

    Safe whatever a signal handler raises between two bytecodes (Ctrl-C, an application's
    SIGTERM handler calling ``sys.exit``: flush(), configure() and a session's summary make
    records on the application's thread): the lock is never kept (``_take_later_lock``) and a
    call is never lost (``_make_next``)."""
    left = len(_later) // 2 if most is None else most
    while _later and left > 0:
        left -= 1
        if not _take_later_lock(wait):
            if wait:
                logger.error(
                    "tokenmeter: %d calls wait for their records (a catch-up gave up)",
                    len(_later) // 2,
                )
            return
        try:  # released first thing after the body, whatever it raised: no bytecode between
            made = _make_next()
        finally:
            _later_lock.release()
        if not made:
            return
        yield None


def _take_later_lock(wait: bool) -> bool:
    """Take ``_later_lock`` (``wait=False``: only if free); False when it could not be had.
    Bounded: a signal handler's exit flush may run on a thread that holds a lock the record
    being made waits for (a session's, the sinks'): the flush goes on without it.

    An exception a signal handler raises as ``acquire()`` returns (Python runs handlers right
    after a call) leaves the lock taken with nobody to release it: the main thread kept it after
    a Ctrl-C, and every writer's catch-up then waited 2 s for it. Released here then."""
    depth = _later_lock._recursion_count()  # type: ignore[attr-defined]
    try:
        if not wait:
            return _later_lock.acquire(blocking=False)
        return _later_lock.acquire(timeout=_CATCH_UP_WAIT)
    except BaseException:
        if _later_lock._recursion_count() > depth:  # type: ignore[attr-defined]
            _later_lock.release()
        raise


def _make_next() -> bool:
    """Make the oldest waiting call's record (``_later_lock`` held); False when none waits
    (another thread made the last one).

    A call taken out whose record was not queued when an exception came out of the making (a
    signal handler's KeyboardInterrupt or SystemExit, between any two bytecodes of it) goes back
    at the head, for the next catch-up: it was lost (a record per unlucky Ctrl-C in a flush()).
    One whose record was queued is not: it would be written twice."""
    global _queued_while_making, _made_while_making
    if not _later:
        return False
    # Read and removed with no call between (subscripts, dels), where no signal handler runs:
    # a call's two entries are both in the queue or both here, never split (a KeyboardInterrupt
    # between two ``popleft()`` calls left each later call's session where its values were
    # looked for, and 7,826 of 10,387 records failed), and never in neither.
    _queued_while_making, _made_while_making = False, None
    session, call = _later[0], _later[1]
    del _later[0], _later[0]
    try:
        make_later(session, call)  # type: ignore[misc]
    except Exception:  # a bug of ours: the next calls are made all the same
        logger.exception("tokenmeter: making a record failed")
    except BaseException:
        made = _made_while_making
        if made is None:
            _later.extendleft((call, session))  # one step; reversed: the session first
        elif not _queued_while_making:
            submit(made)  # counted in its session already: queued, not made again
        raise
    return True


def made(record: UsageRecord) -> None:
    """``record`` of the waiting call being made (``_make_next``) is made: from now on it is
    sent, whatever interrupts its making (see ``_made_while_making``)."""
    global _made_while_making
    _made_while_making = record


def catch_up(paced: bool = False, most: int | None = None) -> None:
    """Make the record of every call waiting now, and wait for one another thread is making.
    ``paced``: a writer's thread, which pauses between slices of work for the application's
    threads (see ``_Paced``).

    Only those waiting when it begins (their number, taken from the head: other threads
    append): with threads queueing calls as fast as it made them, a writer's catch-up never
    ended, so it never wrote, and its sink's buffer dropped what passed max_queue (18,002 of
    23,002 records in 20 s, sinks healthy); a configure() or an exit waiting for it ran far past
    its exit_timeout. What comes later is for the next catch-up. ``most``: make no more
    than that many (a writer's catch-up: what its buffer has room for in a batch)."""
    waiting = len(_later) // 2 if most is None else min(len(_later) // 2, most)
    if paced:
        if waiting:
            for _ in _paced(_making(most=waiting), _MAKING_SLICE):
                pass
        return
    for _ in _making(most=waiting):
        pass
    if _take_later_lock(wait=True):  # the last one taken is made by now
        _later_lock.release()


def flush(timeout: float | None = None) -> bool:
    """Wait until everything submitted so far is in every sink; False on timeout, when a sink
    keeps failing (its records stay queued and are retried), when a record it waited for was
    set aside in quarantine instead of written, or when records were dropped since the last
    flush (a full buffer). The sinks a configure() on another
    thread is replacing are waited for too (``_ending``): they still hold records made before
    the flush, and flush() returned True before they had written them. Records held back while
    this thread makes the pipeline (``_get``: a signal handler's flush) are not written yet:
    False.

    An ``on_alert`` callback runs on the alert sink's writer, which this flush waits for after
    the record sinks' writers: the records of the calls it makes came after those writers had
    been passed, and flush() returned True without them. While records were submitted as
    callbacks ran during a round (``callback_submitted``), another round is made,
    ``_FLUSH_ROUNDS`` at most: a callback's own calls are never judged by the alert rules, so
    the next round runs no callback for them."""
    deadline = None if timeout is None else time.monotonic() + timeout
    left = timeout
    for _ in range(_FLUSH_ROUNDS):
        submitted = _callbacks_submitted
        catch_up()
        writers = [*_writers(), *_ending]
        if not _flush_writers(writers, left, at_once=timeout == 0):
            return False
        if _callbacks_submitted == submitted:
            break
        if deadline is not None:
            left = max(0.0, deadline - time.monotonic())
    return not _held_back


#: Rounds a flush() makes at most while writers run ``on_alert`` callbacks (see ``flush``):
#: the second takes in the records of the calls the first's callbacks made; a third those of
#: callbacks run for calls other threads made meanwhile.
_FLUSH_ROUNDS = 3
#: How many records were submitted while ``on_alert`` callbacks ran (``callback_submitted``):
#: flush() compares it before and after a round.
_callbacks_submitted = 0


def callback_submitted() -> None:
    """A record was submitted, from any thread, while an ``on_alert`` callback ran: it may be
    the callback's call's (made there, or by a worker it handed the call to), come after
    flush() passed the record sinks' writers. Only then is another round made: one per
    callback that ran made every sink flush again, and a flush(timeout) whose records were all
    written returned False."""
    global _callbacks_submitted
    _callbacks_submitted += 1


def _writers() -> list[_Writer]:
    """Every writer at work: the pipeline's, or those passed on to the next one (not made yet)."""
    pipeline = _pipeline
    return pipeline.writers if pipeline is not None else list(_carried)


def before_exit(hook: Callable[[], None]) -> None:
    """Run ``hook`` at exit, before the final flush (hooks registered later run first)."""
    _before_exit.insert(0, hook)


def before_exit_stop(hook: Callable[[], None]) -> None:
    """Run ``hook`` at exit once the flush has written what was queued, before the writers stop
    (what it queues is written by the stop): on the exiting thread, so it must be quick."""
    _before_stop.append(hook)


def remove_before_exit(hook: Callable[[], None]) -> None:
    """Undo ``before_exit(hook)`` (nothing if it is not registered)."""
    with contextlib.suppress(ValueError):
        _before_exit.remove(hook)


def set_sinks(
    make_sinks: Callable[[], list[Sink]],
    *,
    max_queue: int = 100_000,
    exit_timeout: float = 10.0,
    flush_interval: float = 0.2,
    quarantine: Path | None = None,
    keep_open: Sequence[Sink] = (),
) -> None:
    """Replace the sinks: the current ones get everything submitted so far, then are closed,
    but those in ``keep_open`` (sink objects of the application's that the new sinks include):
    their writers, with what they still hold, go on in the new pipeline. A sink need not be
    thread-safe: a second writer would call it while the first is still inside a slow write.
    So does the writer of a sink an earlier configuration replaced, left still writing after its
    exit_timeout (``_ending``), when ``keep_open`` names that sink again (``resume``)."""
    global _pipeline, _sink_factory, _max_queue, _exit_timeout, _interval, _quarantine, _carried
    global _hurry_at, _sinkless
    catch_up()  # the calls made so far go to the sinks they were made under
    with _locked():
        old, old_timeout, _pipeline, _sinkless = _pipeline, _exit_timeout, None, None
        _sink_factory, _max_queue, _exit_timeout = make_sinks, max_queue, exit_timeout
        _hurry_at = 2 * _batch_for(max_queue)
        _interval, _quarantine = flush_interval, quarantine
        if old is not None:
            old.replace()
        writers = [*_carried, *(old.writers if old is not None else ())]
        _carried = [w for w in writers if any(w.sink is kept for kept in keep_open)]
        ending = [w for w in writers if w not in _carried]
        # Left finishing in the background by an earlier configure() and named again: each
        # goes on (its stop cancelled), rather than beside a second writer of the same sink.
        resumed = [w for w in _ending if any(w.sink is kept for kept in keep_open) and w.resume()]
        _carried += resumed
        _ending[:] = [w for w in _ending if w not in resumed]
        # Known to the exit flush while they end: a SIGTERM while configure() waits for them
        # (its handler runs right here) flushes them too, not only the new, empty pipeline.
        _ending.extend(ending)
        for writer in ending:  # under the lock: never after a later configure's ``resume``
            writer.ask_to_stop()
    _stop_writers(ending, old_timeout, asked=True)  # the old sinks' own time limit
    current = threading.current_thread()  # a writer configuring from its sink's write goes on
    with _locked():
        # Those a configure() on another thread took over meanwhile are no longer ending.
        behind = [
            w
            for w in ending
            if w in _ending
            and w._thread.is_alive()
            and w._thread is not current
            and not _held_here(w)
        ]
        _ending[:] = [w for w in _ending if w._thread.is_alive()]
    if behind:
        logger.error(
            "tokenmeter: sinks %s were still writing after exit_timeout (%ss) when configure() "
            "replaced them; they finish in the background",
            ", ".join(_name(w.sink) for w in behind),
            old_timeout,
        )


# -- process end -----------------------------------------------------------------------------------
_exit_hooked_pid = 0
_exited_pid = 0
#: The process whose exit flush is under way, and a termination signal that came meanwhile.
_exit_running = 0
_exit_signal = 0
#: The process whose exit flush has ended (or is ending) the writers.
_ended_pid = 0
_late_lock = threading.Lock()
_warned_late = False


def _flush_at_multiprocessing_exit() -> None:
    """multiprocessing ends its child processes with os._exit(), which skips atexit: in such a
    child, flush through multiprocessing's own exit hook (registered once per process)."""
    global _exit_hooked_pid
    mp = sys.modules.get("multiprocessing")
    if mp is None or _exit_hooked_pid == os.getpid() or mp.parent_process() is None:
        return
    _exit_hooked_pid = os.getpid()
    mp_util = importlib.import_module("multiprocessing.util")  # once per child process
    mp_util.Finalize(None, _at_exit, exitpriority=100)


def _on_exit() -> None:
    """tokenmeter's atexit hook. A Ctrl-C or a ``sys.exit()`` that a signal handler raised into
    the exit flush was acted on there (the flush went on, or a second one cut it short, setting
    aside what was left): the exit then goes on as it was, so the atexit hooks registered before
    ours run (logging's, other libraries' exports), and the process ends with the status it was
    ending with. Ending it here, with the interrupt's status, skipped them all."""
    with contextlib.suppress(KeyboardInterrupt, SystemExit):
        _at_exit()


def _at_exit() -> None:
    """The exit flush. A KeyboardInterrupt or SystemExit raised into it (a Ctrl-C, an
    application's SIGTERM handler calling ``sys.exit()``) waits for it, bounded by exit_timeout
    as ever, and is raised again after: it stopped the flush where it landed, and the records
    still queued were neither written, nor set aside, nor counted. A second one stops the
    waits, and what the writers hold is set aside and counted (``_through_interrupts``)."""
    global _exited_pid, _exit_running, _exit_signal, _exit_interrupt
    if _exited_pid == os.getpid():
        return
    _exited_pid = _exit_running = os.getpid()
    try:
        _flush_at_exit()
    finally:
        _exit_running = 0
        signum, _exit_signal = _exit_signal, 0
        if signum:  # a termination signal came meanwhile: the process dies of it now
            _die_of(signum)
    interrupt, _exit_interrupt = _exit_interrupt, None
    if interrupt is not None:
        raise interrupt


#: The first KeyboardInterrupt or SystemExit a signal handler raised into the exit flush.
_exit_interrupt: BaseException | None = None


class _CutShort(Exception):
    """A second Ctrl-C (or ``sys.exit()``) during the exit flush: stop waiting for the writers."""


def _through_interrupts(step: Callable[[], _T], *, stoppable: bool = True) -> _T:
    """Run a step of the exit flush (each may be run again: what it waits for is the same) to
    its end, whatever a signal handler raises into its waits; the first interrupt is kept for
    ``_at_exit`` to raise again. A second one raises ``_CutShort`` from a ``stoppable`` step (a
    wait): a user pressing Ctrl-C again wants out, not the rest of exit_timeout (a hung sink);
    what the writers still hold is then set aside and counted, as at a timeout."""
    global _exit_interrupt
    while True:
        try:
            return step()
        except (KeyboardInterrupt, SystemExit) as exc:
            if _exit_interrupt is None:
                _exit_interrupt = exc
                logger.warning(
                    "tokenmeter: %s during the exit flush; the flush goes on (within %.1f s, "
                    "what is left of exit_timeout); a second one stops it, setting aside what "
                    "is left",
                    "Ctrl-C" if isinstance(exc, KeyboardInterrupt) else "sys.exit()",
                    _exit_time_left(),
                )
            elif stoppable:
                raise _CutShort from None


def _flush_at_exit() -> None:
    writers = _writers()
    failed: list[str] = []
    timed_out: list[str] = []
    set_aside = {writer: writer.quarantined for writer in [*writers, *_ending]}
    try:
        _through_interrupts(catch_up)  # before the hooks: the implicit session's end needs them
        _run_exit_hooks()
        _through_interrupts(catch_up)  # the open streams the hooks recorded
        writers = _writers()
        failed, timed_out = _through_interrupts(lambda: _unflushed(writers, _exit_time_left()))
        for hook in list(_before_stop):
            try:
                _through_interrupts(hook)
            except _CutShort:  # a second Ctrl-C: stop here too
                raise
            except Exception:  # the records are written all the same
                logger.exception("tokenmeter: an exit hook failed")
        _mark_exit_flushed()  # from now on a record is written at once (_write_late)
        # What is left of exit_timeout (nothing, after a flush that used it all on a hung sink).
        _through_interrupts(lambda: _stop_writers([*writers, *_ending], _exit_time_left()))
        for thread in list(_importing):
            _through_interrupts(functools.partial(_join_for_the_exit, thread))
    except _CutShort:  # a second Ctrl-C: what is left is set aside below, as at a timeout
        _mark_exit_flushed()
        for writer in [*writers, *_ending]:
            writer.ask_to_stop()
    # A writer still at work (setting aside what its sink refused, closing it) is cut off when
    # the interpreter ends: what it still holds is lost, not failed and set aside.
    cut_off = [w for w in [*writers, *_ending] if w._thread.is_alive()]
    late = [_name(w.sink) for w in cut_off]
    # A sink that had not answered the flush in time but took everything as it stopped (in the
    # stop's grace: exit_timeout=0) lost nothing: it was named as if it had. One that refused a
    # record meanwhile (set aside) is named still.
    unfinished = {
        _name(w.sink)
        for w in [*writers, *_ending]
        if w._stopped is not True or w.quarantined != set_aside.get(w, 0)
    }
    timed_out = [name for name in timed_out if name in unfinished]
    timed_out += [name for name in late if name not in timed_out]
    failed = [name for name in failed if name not in timed_out]
    _through_interrupts(
        lambda: _report_unflushed(failed, timed_out, "every record at exit"), stoppable=False
    )
    for writer in cut_off:
        _through_interrupts(functools.partial(_set_aside_cut_off, writer), stoppable=False)


def _join_for_the_exit(thread: threading.Thread) -> None:
    _joined(thread, _exit_time_left())


def _set_aside_cut_off(writer: _Writer) -> None:
    """Set aside what a writer cut off at exit holds (``abandon``), and say what may be lost."""
    set_aside, at_risk = writer.abandon()
    if set_aside:
        logger.error(
            "tokenmeter: %d records and sessions held by %s were set aside in %s",
            set_aside,
            _name(writer.sink),
            writer.quarantine,
        )
    if at_risk:
        logger.error(
            "tokenmeter: %d records and sessions held by %s (in its unfinished write, or not "
            "set aside) may be lost",
            at_risk,
            _name(writer.sink),
        )
    elif not set_aside and writer.held():
        logger.error(
            "tokenmeter: %d records and sessions still held by %s may be lost",
            writer.held(),
            _name(writer.sink),
        )


def _run_exit_hooks() -> None:
    """Run the hooks of ``before_exit`` (the implicit session's end and its session-end hooks,
    the budget slices given back, the open streams), within half of what is left of
    ``exit_timeout``: the sinks' flush gets the rest. Each hook's failure is logged, whatever it
    raised: a user hook's KeyboardInterrupt or SystemExit stopped the exit there, and every
    queued record was lost; a user hook (or budget ledger) that hung held the exit for ever.
    They run on a thread of their own for that bound. Where no thread can start (CPython 3.12's
    first releases, in an atexit hook) they run here, unbounded."""

    # A Ctrl-C raised into start_thread() may come after the thread started: started again,
    # a second thread leaves the hooks to the first (none runs twice), and the wait is for them.
    claimed = threading.Lock()
    finished = threading.Event()

    def run_hooks() -> None:
        if not claimed.acquire(blocking=False):
            return
        try:
            for hook in list(_before_exit):
                try:
                    hook()
                except BaseException:  # the records are flushed all the same
                    logger.exception("tokenmeter: an exit hook failed")
        finally:
            finished.set()

    try:
        _through_interrupts(lambda: start_thread(run_hooks, "tokenmeter-exit-hooks"))
    except RuntimeError:  # can't create new thread at interpreter shutdown
        run_hooks()
    limit = max(_exit_time_left() / 2, _STOP_GRACE)  # exit_timeout=0: ours take milliseconds
    deadline = time.monotonic() + limit
    _through_interrupts(lambda: _in_slices(finished.wait, max(0.0, deadline - time.monotonic())))
    if not finished.is_set():
        logger.error(
            "tokenmeter: the exit hooks (session-end hooks, budget slices given back) did not "
            "finish within %.1f s, half of exit_timeout; the records are flushed without them",
            limit,
        )


def _write_late() -> None:
    """A record made after the exit flush (by an exit hook that runs after ours: one the
    application registered before it imported tokenmeter) is written at once: the writers, ended
    by then, start again, write it, close their sinks and end, within what is left of
    ``exit_timeout``."""
    global _warned_late
    if sys.is_finalizing():  # teardown: no other thread runs any more
        return
    writers = _writers()
    current = threading.current_thread()
    if any(writer._thread is current for writer in writers):
        return  # a sink's own write recording (an on_alert callback): its writer is ending
    failed: list[str] = []
    timed_out: list[str] = []
    with _late_lock:
        _stop_writers(writers, _exit_time_left())  # the exit flush may still be ending them
        try:
            for writer in writers:
                writer.revive()
        except Exception as exc:  # RuntimeError: no new thread at interpreter shutdown
            if not _warned_late:
                _warned_late = True
                logger.error("tokenmeter: a record made after the exit flush is lost (%s)", exc)
        else:
            failed, timed_out = _unflushed(writers, _exit_time_left())
        _stop_writers(writers, _exit_time_left())
    if (failed or timed_out) and not _warned_late:
        _warned_late = True  # once: a hung sink would otherwise log a line per record
        _report_unflushed(failed, timed_out, "a record made after the exit flush")


#: (pid, when exit_timeout ends): the flushes made at exit share one exit_timeout, counted from
#: the first of them.
_exit_deadline: tuple[int, float] = (0, 0.0)


def exiting() -> bool:
    """True while this process's exit flush runs (``exit_timeout``'s clock is running)."""
    return _exit_running == os.getpid()


def exit_began() -> bool:
    """True once this process's exit flush started (running or over)."""
    return _exited_pid == os.getpid()


def exit_timeout() -> float:
    """The ``exit_timeout`` setting in force (seconds)."""
    return _exit_timeout


def exit_deadline() -> float | None:
    """When (``time.monotonic()``) ``exit_timeout`` runs out, once this process's exit has
    begun (its flush, or a termination signal put off while a lock of ours was held); None
    before. A sink that waits for something in its write (the SQLite sink for
    another program's lock) gives up by then: a write still under way is cut off with the
    interpreter and what its writer holds is lost, where a write that failed has it set aside
    in the quarantine file. Asking does not start the clock."""
    pid, deadline = _exit_deadline
    return deadline if pid == os.getpid() else None


def exit_time_left() -> float:
    """What is left of ``exit_timeout`` at exit (its clock starts at the first asking)."""
    return _exit_time_left()


def _exit_time_left() -> float:
    global _exit_deadline
    now = time.monotonic()
    if _exit_deadline[0] != os.getpid():
        _exit_deadline = (os.getpid(), now + _exit_timeout)
    return max(0.0, _exit_deadline[1] - now)


def flush_early_at_exit() -> None:
    """Flush at exit before the exit hooks registered so far run too (atexit runs the last one
    registered first): for a sink writing through something such a hook shuts down, e.g. the
    application's OpenTelemetry providers, which the SDK shuts down at exit and which may have
    been set up after tokenmeter's own hook was registered. The final flush still follows,
    within what is left of ``exit_timeout``."""
    atexit.unregister(_flush_early)  # registered again: last, so run first
    atexit.register(_flush_early)


def _flush_early() -> None:
    if _exited_pid != os.getpid():
        _flush_writers(_writers(), _exit_time_left())


#: What ``os.exec*()`` goes through: ``execl`` calls ``execv``, ``execle`` ``execve``, and the
#: ``execlp`` / ``execvp`` family one of the two, looked up in ``os`` at each call.
_EXEC_FUNCTIONS = ("execv", "execve")


def _hook_exec() -> None:
    """``os.exec*()`` replaces the process without running atexit: the records not yet written
    (up to a flush interval's) were lost. Patched once, so that the exit flush runs first, as
    at exit (the exit hooks too: the program ends there); an exec that fails starts the writers
    again (``_resume_after_failed_exec``). A forked child that execs (``pty.spawn``) flushes
    its own records only: the parent's are not its to write."""
    for name in _EXEC_FUNCTIONS:
        original = getattr(os, name, None)
        if original is not None and not hasattr(original, "__tokenmeter_exec__"):
            setattr(os, name, _flushing_first(original))


def _flushing_first(exec_function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(exec_function)
    def exec_after_flush(*args: Any, **kwargs: Any) -> Any:
        current = threading.current_thread()
        in_writer = any(writer._thread is current for writer in _writers())  # a sink's own exec
        flushed = _exited_pid != os.getpid() and not in_writer
        if flushed:
            try:
                _at_exit()
            except Exception:  # the exec is the application's: it happens whatever ours did
                logger.exception("tokenmeter: the flush before os.%s() failed", name)
        try:
            return exec_function(*args, **kwargs)
        except BaseException:
            if flushed:
                _resume_after_failed_exec()
            raise

    name = exec_function.__name__
    exec_after_flush.__tokenmeter_exec__ = exec_function  # type: ignore[attr-defined]
    return exec_after_flush


def _resume_after_failed_exec() -> None:
    """The exec failed (no such program, not executable): the program runs on. Its writers,
    ended by the exit flush, start again, so that its next records are queued as before rather
    than written at once, each on the caller's thread; and its real exit flushes again (the
    implicit session's end with it: its totals then count the calls made meanwhile)."""
    global _exited_pid, _exit_deadline, _ended_pid
    with _locked():
        _exited_pid = _ended_pid = 0
        _exit_deadline = (0, 0.0)
        for writer in _writers():
            with contextlib.suppress(RuntimeError):  # no new thread (at interpreter shutdown)
                writer.revive()


_TERMINATION_SIGNALS = ("SIGTERM", "SIGHUP")
_signals_hooked_pid = 0


def hook_termination_signals() -> None:
    """Where SIGTERM / SIGHUP still have Python's default disposition (the process dies without
    running atexit: docker stop, systemd, kubernetes), flush first, then die of the same signal.
    A handler the application installed is never replaced; one it installs later replaces ours."""
    global _signals_hooked_pid
    if _signals_hooked_pid == os.getpid():
        return
    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread may set handlers: instrument() and configure() try again
    _signals_hooked_pid = os.getpid()
    for name in _TERMINATION_SIGNALS:
        signum = getattr(signal, name, None)
        if signum is None:
            continue
        with contextlib.suppress(ValueError, OSError):
            if signal.getsignal(signum) is signal.SIG_DFL:
                signal.signal(signum, _on_termination)
    mp = sys.modules.get("multiprocessing")
    if mp is not None and mp.parent_process() is not None and _our_signals():
        _watch_for_missed_signals()


def _our_signals() -> list[int]:
    """The termination signals whose handler is ours (set here, or inherited through fork)."""
    found = (getattr(signal, name, None) for name in _TERMINATION_SIGNALS)
    return [s for s in found if s is not None and signal.getsignal(s) is _on_termination]


#: A termination signal that came while the main thread held ``_lock``.
_deferred_signal = 0


def _on_termination(signum: int, frame: object) -> None:
    global _exit_signal, _deferred_signal
    if _lock._is_owned():  # type: ignore[attr-defined]
        # The main thread is making or replacing the pipeline (its first record opens the
        # sinks): the exit flush, on the hooks' thread, would wait for the lock until its
        # timeout (5 s of exit_timeout=10) and lose the record. It runs once the lock is let go.
        _deferred_signal = signum
        return
    writers = [*_writers(), *_ending]
    in_a_lock = any(w._lock._is_owned() for w in writers)  # type: ignore[attr-defined]
    in_a_lock = in_a_lock or _holds_a_lock_of_ours() or _queueing_here()
    if in_a_lock and _exit_time_left() > _exit_timeout / 2 and _send_again_soon(signum):
        # The main thread is queueing an item (``put``, a few bytecodes): the writer needs that
        # lock to take what the exit flush asks it to write, and waited for all of exit_timeout,
        # losing what it held. Or it holds a lock of ours while it makes a waiting call's record
        # (``_later_lock``: the call is out of ``_later``, where the exit flush looks for it, and
        # was lost) or updates a session (``_sessions._lock``: the exit hooks' thread waited for
        # it for half of exit_timeout and left the implicit session unended). The signal comes
        # again once the lock is let go; for no longer than half of exit_timeout, counted in it
        # (its clock starts here): a logging handler that blocks, called as a full buffer drops
        # a record, holds it for ever, and then the exit flush runs all the same with the rest.
        # Counted apart, the exit took up to twice exit_timeout (past docker stop's grace).
        return
    if _exit_running == os.getpid():
        # The exit flush is under way (``with Pool()`` signals workers that are exiting; or this
        # handler's own, signalled again): dying now would lose what it is writing. The process
        # dies of the signal once it ends, bounded by exit_timeout.
        _exit_signal = _exit_signal or signum
        return
    _exit_signal = signum
    _at_exit()  # ends by raising the signal again; returns at once when the exit flush is over
    _die_of(signum)


def _holds_a_lock_of_ours() -> bool:
    """This thread holds one of ``_LOCKS_OF_OURS``: the exit flush, on another thread, needs it."""
    for module, name in _LOCKS_OF_OURS:
        lock = getattr(sys.modules.get(module), name, None)
        if lock is not None and lock._is_owned():
            return True
    return False


def _queueing_here() -> bool:
    """This thread is inside a pipeline's ``put`` holding its lock, between two sinks' buffers
    perhaps: the exit flush run from here would lose the record in the sinks it has not reached
    yet, and the exit hooks' thread would wait for that lock (the implicit session's end) for
    half of exit_timeout. Found from the stack (only when a signal comes): a lock per pipeline,
    of the current one or one a configure() replaced meanwhile."""
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code is _PUT_CODE:
            pipeline = frame.f_locals.get("self")
            if isinstance(pipeline, _Pipeline) and pipeline._lock._is_owned():  # type: ignore[attr-defined]
                return True
        frame = frame.f_back
    return False


_PUT_CODE = _Pipeline.put.__code__


def _take_deferred_signal() -> None:
    """Act on the termination signal that came while this (the main) thread held ``_lock``."""
    global _deferred_signal
    signum = _deferred_signal
    if not signum or threading.current_thread() is not threading.main_thread():
        return
    if not _lock._is_owned():  # type: ignore[attr-defined]
        _deferred_signal = 0
        _on_termination(signum, None)


def _send_again_soon(signum: int) -> bool:
    """Have ``signum`` sent to the main thread again in a moment, by a thread of ours (the
    handler must return for the main thread to go on); False when no thread can start (at
    interpreter shutdown)."""

    def send() -> None:
        time.sleep(0.01)
        main = threading.main_thread().ident
        if main is not None:
            with contextlib.suppress(OSError, ValueError):
                signal.pthread_kill(main, signum)

    try:
        start_thread(send, "tokenmeter-signal-again")
    except RuntimeError:
        return False
    return True


def _die_of(signum: int) -> None:
    with contextlib.suppress(ValueError, OSError):
        signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


#: The pipe (read end, write end) Python writes the number of every signal it catches into.
_wakeup: tuple[int, int] | None = None


def _watch_for_missed_signals() -> None:
    """Have a thread of ours see every termination signal the process gets, and interrupt the
    main thread until our handler runs.

    Python runs a handler on the main thread between two bytecodes, after a signal interrupted
    what it waits in. A signal that came just before the main thread blocked (while it waited
    for the GIL our writer held, at its last check for signals), or that the kernel gave to
    another thread, interrupts nothing: the handler waits until the main thread wakes, which a
    multiprocessing child blocked in its queue's lock (its parent holds it, and ends it with
    SIGTERM: ``Pool.terminate()``) never does. Its parent then waits for ever in ``join()``.
    Only in multiprocessing children: Python has one wakeup fd per process, and an application
    that set its own (asyncio, trio) keeps it (we never watch then)."""
    global _wakeup
    if _wakeup is not None:
        return
    read, write = os.pipe()
    os.set_blocking(write, False)  # the signal handler never waits
    try:
        previous = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    except (ValueError, OSError):
        previous = -2
    if previous != -1:  # the application's: put back at once
        with contextlib.suppress(ValueError, OSError):
            if previous >= 0:
                signal.set_wakeup_fd(previous)
        os.close(read)
        os.close(write)
        return
    try:
        start_thread(lambda: _watch_signals(read), "tokenmeter-signals")
    except RuntimeError as exc:  # a pids limit: no watcher, never a fault of the caller's
        with contextlib.suppress(ValueError, OSError):
            signal.set_wakeup_fd(-1)
        os.close(read)
        os.close(write)
        logger.warning("tokenmeter: the signal watcher thread could not start (%s)", exc)
        return
    _wakeup = (read, write)


def _watch_signals(read: int) -> None:
    while True:
        try:
            caught = os.read(read, 64)
        except OSError:
            return
        if not caught:
            return
        for signum in set(caught) & set(_our_signals()):
            _interrupt_main_thread(signum)


def _interrupt_main_thread(signum: int) -> None:
    """Send ``signum`` again to the main thread, until our handler starts the exit flush: it
    interrupts the wait the first one missed. Never once the flush started: a second signal then
    waits for it."""
    pid = os.getpid()
    pause = 0.05
    while _exited_pid != pid and signal.getsignal(signum) is _on_termination:
        time.sleep(pause)
        if _exited_pid == pid:
            return
        main = threading.main_thread().ident
        if main is None:
            return
        with contextlib.suppress(OSError, ValueError):
            signal.pthread_kill(main, signum)
        pause = min(2 * pause, 1.0)


def _after_fork_in_child() -> None:
    # Writer threads do not survive fork(): the child starts its own. What the parent queued is
    # the parent's to write. The parent's sinks observe nothing here: the child's own will.
    global _pipeline, _carried, _ending, _wakeup
    _pipeline = None
    _carried = []
    _ending = []
    _submit_observers.clear()
    _observer_owners.clear()
    _gone_observers.clear()
    _flushing.clear()
    _later.clear()  # the parent's calls
    _held_back.clear()
    if _wakeup is not None:
        # Our wakeup pipe is the parent's: the child's signals would make the parent's thread
        # interrupt the parent. The child watches its own, once it records.
        with contextlib.suppress(ValueError, OSError):
            current = signal.set_wakeup_fd(-1)
            if current != _wakeup[1]:  # the application set its own since: it stays
                signal.set_wakeup_fd(current)
        for fd in _wakeup:
            with contextlib.suppress(OSError):
                os.close(fd)
        _wakeup = None


atexit.register(_on_exit)
os.register_at_fork(after_in_child=_after_fork_in_child)
renew_after_fork(globals(), "_lock")
renew_after_fork(globals(), "_later_lock")
renew_after_fork(globals(), "_late_lock", threading.Lock)
renew_after_fork(globals(), "_flushing_lock", threading.Lock)
renew_after_fork(globals(), "_progress", _Flag)
