"""In-memory sink: what tests and notebooks inspect instead of files."""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Sequence

from tokenmeter._models import SessionInfo, UsageRecord

__all__ = ["InMemorySink"]


class InMemorySink:
    """Keeps every record in ``records`` and the latest state of each session in ``sessions``.

    A lock guards the containers because tests read them from other threads while the writer
    thread appends.
    """

    def __init__(self) -> None:
        self.records: list[UsageRecord] = []
        self.sessions: dict[str, SessionInfo] = {}
        self._lock = threading.Lock()
        _made.add(self)

    def write(self, records: Sequence[UsageRecord]) -> None:
        with self._lock:
            self.records.extend(records)

    def write_sessions(self, sessions: Sequence[SessionInfo]) -> None:
        with self._lock:
            for session in sessions:
                self.sessions[session.id] = session

    def flush(self) -> None:
        """Nothing to do: records are visible as soon as ``write`` returns."""

    def close(self) -> None:
        """Nothing to release; the records stay readable after close."""

    def clear(self) -> None:
        with self._lock:
            self.records.clear()
            self.sessions.clear()


#: Every sink made, for a forked child to give each a lock of its own: one held by the parent's
#: writer at the fork (inside ``write``) would be held in the child for ever.
_made: weakref.WeakSet[InMemorySink] = weakref.WeakSet()


def _renew_locks() -> None:
    for sink in list(_made):
        sink._lock = threading.Lock()


os.register_at_fork(after_in_child=_renew_locks)
