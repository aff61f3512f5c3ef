"""The sink protocol: the one extension point for where records go."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from tokenmeter._models import SessionInfo, UsageRecord

__all__ = ["SessionAwareSink", "Sink"]


@runtime_checkable
class Sink(Protocol):
    """Anything with these three methods can receive records.

    tokenmeter calls them from the sink's own writer thread, never from the application's threads,
    so an implementation needs no locking of its own. ``write`` may raise: the batch is kept and
    retried later; a record that fails alone while others go through is set aside in the
    quarantine file.
    """

    def write(self, records: Sequence[UsageRecord]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class SessionAwareSink(Sink, Protocol):
    """A sink that also stores sessions (start and end: the same id is sent again when it ends)."""

    def write_sessions(self, sessions: Sequence[SessionInfo]) -> None: ...
