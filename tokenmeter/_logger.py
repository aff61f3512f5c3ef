"""The ``tokenmeter`` logger never raises into the application.

An application's filter or handler on it (or on a logger it propagates to) that raises (a log
shipper that is down, a redaction filter with a bug) raised out of the line we logged: out of
``record()`` and ``configure()``, out of a record's queueing half-way through the sinks (the
others never got it), and out of the exit flush before it set aside what it held. A line that
cannot be logged is lost; nothing else is.
"""

from __future__ import annotations

import logging

__all__ = ["guard"]


class _NeverRaising(logging.Logger):
    def handle(self, record: logging.LogRecord) -> None:
        try:
            super().handle(record)
        except Exception:  # the application's filter or handler: its fault, never the call's
            return


def guard(logger: logging.Logger) -> None:
    """Make ``logger`` swallow what its filters and handlers raise (its class, the application's
    own logger class if it set one, is extended in place: whoever holds the logger keeps it)."""
    kind = type(logger)
    if issubclass(kind, _NeverRaising):
        return
    if kind is logging.Logger:
        logger.__class__ = _NeverRaising
    else:
        logger.__class__ = type(kind.__name__, (_NeverRaising, kind), {})


guard(logging.getLogger("tokenmeter"))
