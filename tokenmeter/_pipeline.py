"""Delivery: records go from the caller's thread into a queue; one writer thread hands batches to
every sink.

Policies (documented in docs/sinks.md):
- The caller's thread only appends to a queue (intercepted calls arrive unbuilt: turning them into
  records, ``build_deferred``, is the writer's job). The writer gathers for ``_LINGER`` seconds,
  then takes everything waiting. It gets the GIL by hand-over: the caller whose record finds it
  idle, or its batch due, wakes it and waits (at most ``_HANDOVER_WAIT``) until it blocks again.
  Left to compete for the GIL, a waiting writer loses to a busy caller for hundreds of
  milliseconds, and every brief GIL release of the caller (the SDKs call ``os.urandom`` per
  request) pays a futex wake-up for it: ~15 us per call, measured. A busy writer gathers again
  right after a batch instead of idling, so callers need not wake it: one hand-over per batch.
- When ``max_queue`` records are waiting (sinks far behind), the caller waits up to
  ``_FULL_WAIT`` seconds for room, then drops the record with an error log: back-pressure first,
  never an unbounded queue.
- A sink that raises is reported once through the ``tokenmeter`` logger; its records are kept (per
  sink, in order) and retried with back-off until written. Only past ``_MAX_PENDING`` kept records
  for one sink are the oldest dropped, with an error log.
- ``flush()`` waits for everything submitted before it; interpreter exit flushes (bounded by the
  ``exit_timeout`` setting) and closes the sinks.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tokenmeter._models import SessionInfo, UsageRecord
from tokenmeter.sinks._base import Sink

__all__ = ["flush", "set_sinks", "submit", "submit_session"]

logger = logging.getLogger("tokenmeter")

_BATCH = 2_000
_FULL_WAIT = 5.0
_MAX_PENDING = 1_000_000
_MAX_BACKOFF = 5.0
_LINGER = 0.2
_HANDOVER_WAIT = 0.005
_NUDGE_AT = 500
_NEVER = float("inf")


class _FlushMarker:
    def __init__(self) -> None:
        self.done = threading.Event()


class _Stop:
    pass


_Item = UsageRecord | SessionInfo | _FlushMarker | _Stop
#: What callers put on the queue besides deferred calls.
KINDS = (UsageRecord, SessionInfo, _FlushMarker, _Stop)


_Run = list[UsageRecord] | list[SessionInfo]


@dataclass
class _SinkState:
    """A sink plus what it has not yet accepted: runs of records or sessions, in order."""

    sink: Sink
    pending: deque[_Run] = field(default_factory=deque)
    pending_count: int = 0
    failing: bool = False
    retry_at: float = 0.0
    backoff: float = 0.1
    dropped: int = 0

    def add(self, run: _Run) -> None:
        self.pending.append(run)
        self.pending_count += len(run)

    def deliver(self, now: float) -> None:
        if not self.pending or (self.failing and now < self.retry_at):
            return
        try:
            while self.pending:
                run = self.pending[0]
                if isinstance(run[0], UsageRecord):
                    self.sink.write(run)
                else:
                    write_sessions = getattr(self.sink, "write_sessions", None)
                    if write_sessions is not None:
                        write_sessions(run)
                self.pending.popleft()
                self.pending_count -= len(run)
        except Exception as exc:
            if not self.failing:
                logger.error(
                    "tokenmeter sink %s failed (%s: %s); its records are kept and retried",
                    _name(self.sink),
                    type(exc).__name__,
                    exc,
                )
            self.failing = True
            self.retry_at = now + self.backoff
            self.backoff = min(self.backoff * 2, _MAX_BACKOFF)
            self._bound()
            return
        if self.failing:
            logger.warning("tokenmeter sink %s recovered; kept records written", _name(self.sink))
        self.failing, self.backoff = False, 0.1

    def _bound(self) -> None:
        while self.pending_count > _MAX_PENDING and len(self.pending) > 1:
            run = self.pending.popleft()
            self.pending_count -= len(run)
            self.dropped += len(run)
            logger.error(
                "tokenmeter sink %s has failed for too long: dropped %d oldest records (%d in all)",
                _name(self.sink),
                len(run),
                self.dropped,
            )


def _runs(items: Sequence[_Item]) -> tuple[list[_Run], list[_FlushMarker], bool]:
    """Split a batch into runs of one kind, flush markers, and whether to stop."""
    runs: list[_Run] = []
    markers: list[_FlushMarker] = []
    stop = False
    current: list[Any] = []
    kind: type | None = None
    for item in items:
        item_kind = type(item)
        if item_kind is UsageRecord or item_kind is SessionInfo:
            if item_kind is not kind and current:
                runs.append(current)
                current = []
            kind = item_kind
            current.append(item)
        elif item_kind is _FlushMarker:
            markers.append(item)  # type: ignore[arg-type]
        elif item_kind is _Stop:
            stop = True
    if current:
        runs.append(current)
    return runs, markers, stop


def _name(sink: Sink) -> str:
    return type(sink).__name__


class _Pipeline:
    def __init__(self, make_sinks: Callable[[], list[Sink]], max_queue: int) -> None:
        self._queue: deque[_Item] = deque()  # append/popleft are atomic: no lock needed
        #: Set to wake the writer: by a caller handing over (writer idle or batch due), by flush().
        self._wake = threading.Event()
        #: Set by the writer just before it blocks: a caller handing over waits for it.
        self._blocking = threading.Event()
        self._idle = False
        self._urgent = False
        #: When the gathering batch is due (monotonic); infinite while the writer is not gathering.
        self._due = _NEVER
        self._make_sinks = make_sinks
        self._states: list[_SinkState] | None = None
        self._markers: list[_FlushMarker] = []
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.max_queue = max_queue
        self.dropped = 0

    # -- caller's thread -------------------------------------------------------------------------
    def put(self, item: _Item) -> None:
        if self._thread is None:
            self._start()
        waiting = len(self._queue)
        if waiting >= self.max_queue and not self._wait_for_room():
            self.dropped += 1
            logger.error("tokenmeter queue full for %.0fs: dropped a record", _FULL_WAIT)
            return
        self._queue.append(item)
        if self._idle or time.monotonic() >= self._due:
            self._hand_over()
        elif waiting >= _NUDGE_AT and not waiting & 63:
            self._hand_over()  # the writer is behind (slow sinks): let it catch up now and then

    def _hand_over(self) -> None:
        """Wake the writer and give it the GIL until it blocks again (or ``_HANDOVER_WAIT``)."""
        self._idle = False
        self._due = _NEVER
        self._blocking.clear()
        self._wake.set()
        self._blocking.wait(_HANDOVER_WAIT)

    def _wait_for_room(self) -> bool:
        deadline = time.monotonic() + _FULL_WAIT
        self._urgent = True  # no gathering: the sinks are behind
        self._wake.set()
        while time.monotonic() < deadline:
            time.sleep(0.005)
            if len(self._queue) < self.max_queue:
                return True
        return False

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                _flush_at_multiprocessing_exit()
                thread = threading.Thread(target=self._run, name="tokenmeter-writer", daemon=True)
                thread.start()
                self._thread = thread

    def flush(self, timeout: float | None) -> bool:
        if self._thread is None:
            return True
        marker = _FlushMarker()
        self._queue.append(marker)
        self._urgent = True
        self._wake.set()
        return marker.done.wait(timeout)

    def stop(self, timeout: float | None) -> None:
        """Flush, close the sinks and end the writer thread."""
        if self._thread is None:
            return
        self.flush(timeout)
        self._queue.append(_Stop())
        self._urgent = True
        self._wake.set()
        self._thread.join(timeout)

    # -- writer thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._states = [_SinkState(sink) for sink in self._make_sinks()]
        except Exception:
            logger.exception("tokenmeter could not open its sinks; records will be kept")
            self._states = []
        busy = False  # records came in the last batch: more are likely
        while True:
            if not self._queue and not busy:
                self._block(idle=True, timeout=self._wait_time())
            if (self._queue or busy) and not self._urgent:
                # Let a batch gather. A busy caller hands over when it is due (so it need not
                # wake us per batch); the timeout is for callers gone quiet.
                self._block(idle=False, timeout=_LINGER * 1.5)
            self._urgent = False
            items: list[_Item] = []
            while len(items) < _BATCH:
                try:
                    items.append(self._queue.popleft())
                except IndexError:
                    break
            busy = bool(items)
            if not self._handle(items):
                self._blocking.set()
                return

    def _block(self, idle: bool, timeout: float | None) -> None:
        """Wait for a hand-over, flush() or the timeout, with the GIL released."""
        self._wake.clear()
        # Announced only after clear(): a caller that sees them wakes us, no wake-up is missed.
        if idle:
            self._idle = True
            block = not self._queue
        else:
            self._due = time.monotonic() + _LINGER
            block = True
        if block and not self._urgent:
            self._blocking.set()
            self._wake.wait(timeout)
        self._idle = False
        self._due = _NEVER

    def _wait_time(self) -> float | None:
        failing = [s.retry_at for s in self._states or () if s.failing and s.pending]
        return max(0.0, min(failing) - time.monotonic()) if failing else None

    def _handle(self, items: list[_Item]) -> bool:
        """Deliver a batch; False once asked to stop."""
        states = self._states or []
        try:
            items = build_deferred(items)
        except Exception:  # a bug of ours: the records it could not build are lost, not the rest
            logger.exception("tokenmeter could not build deferred records")
            items = [item for item in items if type(item) in KINDS]
        runs, markers, stop = _runs(items)
        self._markers.extend(markers)
        for state in states:
            for run in runs:
                state.add(run)
        now = time.monotonic()
        for state in states:
            state.deliver(now)
        if self._markers and not any(state.pending for state in states):
            for state in states:
                _quietly(state.sink.flush, state.sink)
            for marker in self._markers:
                marker.done.set()
            self._markers.clear()
        if stop:
            for state in states:
                _quietly(state.sink.close, state.sink)
        return not stop


def _quietly(call: Callable[[], None], sink: Sink) -> None:
    try:
        call()
    except Exception as exc:
        logger.error("tokenmeter sink %s: %s failed: %s", _name(sink), call.__name__, exc)


# -- module state --------------------------------------------------------------------------------
_pipeline: _Pipeline | None = None
_pipeline_lock = threading.RLock()
_sink_factory: Callable[[], list[Sink]] = list
#: Loads the settings (and so the configured sinks) before the first pipeline is made.
first_use_hook: Callable[[], object] | None = None
#: Turns deferred calls in a batch into records (set by ``_record``; they arrive from callers as
#: plain objects so that the caller's thread does no more than append them).
build_deferred: Callable[[list[Any]], list[Any]] = list
_max_queue = 100_000
_exit_timeout = 10.0


def _get() -> _Pipeline:
    global _pipeline, first_use_hook
    if _pipeline is None:
        with _pipeline_lock:
            if first_use_hook is not None:
                hook, first_use_hook = first_use_hook, None
                hook()
            if _pipeline is None:
                _pipeline = _Pipeline(_sink_factory, _max_queue)
    return _pipeline


def submit(record: UsageRecord) -> None:
    (_pipeline or _get()).put(record)


def submit_session(info: SessionInfo) -> None:
    (_pipeline or _get()).put(info)


def flush(timeout: float | None = None) -> bool:
    """Wait until everything submitted so far is in every sink; False on timeout."""
    return _pipeline.flush(timeout) if _pipeline is not None else True


def set_sinks(
    make_sinks: Callable[[], list[Sink]], *, max_queue: int = 100_000, exit_timeout: float = 10.0
) -> None:
    """Replace the sinks: the current ones get everything submitted so far, then are closed."""
    global _pipeline, _sink_factory, _max_queue, _exit_timeout
    with _pipeline_lock:
        old, old_timeout, _pipeline = _pipeline, _exit_timeout, None
        _sink_factory, _max_queue, _exit_timeout = make_sinks, max_queue, exit_timeout
    if old is not None:
        old.stop(old_timeout)  # the old sinks' own time limit


_exit_hooked_pid = 0
_exited_pid = 0


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


def _at_exit() -> None:
    global _exited_pid
    if _exited_pid == os.getpid():
        return
    _exited_pid = os.getpid()
    from tokenmeter import _sessions  # at exit only: avoids an import cycle at load time

    _sessions.finish_implicit()
    if _pipeline is not None:
        if not _pipeline.flush(_exit_timeout):
            logger.error("tokenmeter: sinks did not accept every record within %ss", _exit_timeout)
        _pipeline.stop(1.0)


def _after_fork_in_child() -> None:
    # The writer thread does not survive fork(); what the parent queued is the parent's to write.
    global _pipeline
    _pipeline = None


atexit.register(_at_exit)
os.register_at_fork(after_in_child=_after_fork_in_child)
