"""Session-end hooks: user callbacks, and the workflow state-file line.

``on_end`` / ``on_session_end`` callbacks run when the session's ``with`` block ends, on that
thread, with the finished Session (its ``summary`` is final); a callback that raises is logged,
never raised into the application. The state-file line is written by ``StateFileSink`` on its
writer thread, from the session as stored (with its totals):

    - <date>: TOKEN_TRACKING: Session <id> - <tokens> tokens, $<cost>

one line per top-level session (nested sessions roll up into it), including the process's
implicit session at exit when it recorded anything.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import os
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from tokenmeter._format import one_line
from tokenmeter._models import SessionInfo, UsageRecord
from tokenmeter.pricing._overrides import short_repr
from tokenmeter.sinks._files import append_line

__all__ = ["FailureLog", "StateFileSink", "check_not_async", "run_end_hooks", "state_line"]

logger = logging.getLogger("tokenmeter")

#: Sessions whose state-file line a ``StateFileSink`` remembers writing.
_REMEMBERED = 10_000

#: configure(on_session_end=...): run for every session that ends.
global_hooks: tuple[Callable[[Any], object], ...] = ()


#: True while session-end hooks run: the sessions a hook opens itself are not handed to the
#: global hooks, which would otherwise recurse (a hook that makes its call in a session).
_in_hooks: ContextVar[bool] = ContextVar("tokenmeter_in_end_hooks", default=False)
#: True while an ``on_alert`` callback runs (on the alert sink's writer thread), and in the work
#: it hands to other threads: its calls are recorded, not judged (``_alerts``).
_in_callback: ContextVar[bool] = ContextVar("tokenmeter_in_alert_callback", default=False)


def check_not_async(where: str, hooks: Sequence[Callable[..., object]]) -> None:
    """Hooks and on_alert callbacks are called, never awaited (no event loop runs them): an
    ``async def`` one would never run, session after session, without a word."""
    for hook in hooks:
        call = getattr(type(hook), "__call__", None)  # noqa: B004 (an async __call__ too)
        if inspect.iscoroutinefunction(hook) or inspect.iscoroutinefunction(call):
            raise ValueError(
                f"{where} must be plain functions: {short_repr(hook)} is async, and its "
                "coroutine would never run"
            )


def not_awaited(result: object, what: str) -> None:
    """A hook returned a coroutine anyway (an object whose call makes one): closed unrun, and
    said so (rather than Python's 'never awaited' warning at some later collection)."""
    if inspect.iscoroutine(result):
        result.close()
        logger.error(
            "tokenmeter: %s returned a coroutine; it is not awaited, so it did not run", what
        )


class FailureLog:
    """Reports a user callback's failure once, until it succeeds again: a hook or an alert
    callback that fails every time logged a traceback per session or alert (800 in a run of
    800 calls). Its later failures are logged at debug level."""

    #: Callbacks remembered as failing; past this many, the memory starts again (bounded).
    _MAX = 1_000

    def __init__(self, what: str) -> None:
        self.what = what
        #: The failing callbacks by id, held so that no new callback takes a failing one's id.
        self._failing: dict[int, object] = {}

    def failed(self, callback: object, about: str = "") -> None:
        """Log the exception being handled, with its traceback the first time in a row."""
        key = id(callback)
        if key in self._failing:
            logger.debug("tokenmeter: %s failed again%s", self.what, about, exc_info=True)
            return
        if len(self._failing) >= self._MAX:
            self._failing.clear()
        self._failing[key] = callback
        logger.exception(
            "tokenmeter: %s failed%s (logged once until it succeeds again)", self.what, about
        )

    def succeeded(self, callback: object) -> None:
        if self._failing:
            self._failing.pop(id(callback), None)


_hook_failures = FailureLog("a session-end hook")


def run_end_hooks(session: Any, own: Sequence[Callable[[Any], object]]) -> None:
    """Run a session's hooks, then the global ones, each once, whatever the others do.

    A hook that raises an Exception is logged (``FailureLog``), never raised. A BaseException
    (KeyboardInterrupt, SystemExit: perhaps a Ctrl-C, or a signal handler's) is raised once the
    other hooks have run: on the application's thread it is the application's.
    """
    hooks = own if _in_hooks.get() else (*own, *global_hooks)
    if not hooks:
        return
    interrupted: BaseException | None = None
    token = _in_hooks.set(True)
    try:
        for hook in hooks:
            try:
                not_awaited(hook(session), "a session-end hook")
            except Exception:
                _hook_failures.failed(hook, f" (session {session.id})")
            except BaseException as exc:
                interrupted = interrupted or exc
            else:
                _hook_failures.succeeded(hook)
    finally:
        _in_hooks.reset(token)
    if interrupted is not None:
        raise interrupted


def _date(moment: datetime) -> str:
    """As the shell's ``date`` prints it in UTC: ``Tue Dec  1 18:18:45 UTC 2026``."""
    utc = moment.astimezone(UTC)
    return f"{utc:%a %b} {utc.day:2d} {utc:%H:%M:%S} UTC {utc.year}"


def _money(value: Decimal) -> str:
    text = format(value.normalize(), "f") if value else "0"
    return text


def state_line(info: SessionInfo) -> str:
    """The session's line. Its id is any text the caller gave (often a request id from outside),
    shown ``one_line``: a newline in it started a line of its own, which the workflow summing
    ``TOKEN_TRACKING`` lines counted, and a terminal escape reached whoever printed the file."""
    tokens = info.input_tokens + info.output_tokens
    return (
        f"- {_date(info.ended_at or info.started_at)}: TOKEN_TRACKING: Session "
        f"{one_line(info.id)} - "
        f"{tokens} tokens, ${_money(info.cost_usd)}{_unknown_cost(info.unpriced_calls)}\n"
    )


def _unknown_cost(unpriced_calls: int) -> str:
    """The mark of calls of unknown cost (no price known, or one refused as absurd), after the
    priced part: unmarked, 250,000 tokens of an unpriced model were written ``$0``, and the
    workflow summing the lines counted them free. The number stays first, as the workflow
    reads it."""
    if not unpriced_calls:
        return ""
    return f" ({unpriced_calls} call{'s' if unpriced_calls != 1 else ''} of unknown cost)"


class StateFileSink:
    """Appends the state-file line when a top-level session ends (records are not its business)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        #: The sessions given a line, by id and part, most recent last: a session is handed
        #: over again when a call is recorded after it ended (a stream read after its ``with``
        #: block), and keeps the one line, with its totals as they were when it ended (as its
        #: on_end hooks saw). By part too: a session entered again under its id (a decorated
        #: function called again) is a new part, and its run gets its line, with its part's
        #: totals, as it does in another process (by id alone, only the first run had one).
        self._written: dict[tuple[str, str], None] = {}

    def write(self, records: Sequence[UsageRecord]) -> None:
        pass

    def write_sessions(self, sessions: Sequence[SessionInfo]) -> None:
        written = self._written
        ended: dict[tuple[str, str], SessionInfo] = {}
        for info in sessions:
            run = (info.id, info.part)
            if info.status != "active" and info.parent_id is None and run not in written:
                ended.setdefault(run, info)  # its first ending
        if not ended:
            return
        lines = [state_line(info) for info in ended.values()]
        # Whole or not at all: a line a full disk tore would be glued to the retried one.
        append_line(self.path, "".join(lines).encode("utf-8", "backslashreplace"))
        written.update(dict.fromkeys(ended))
        for old in list(itertools.islice(written, max(0, len(written) - _REMEMBERED))):
            del written[old]

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
