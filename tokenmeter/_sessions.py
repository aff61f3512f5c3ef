"""Sessions: contextvars-scoped attribution of records, nesting with roll-up, live summaries.

A session follows work into threads started inside it (``threading.Thread`` and
``ThreadPoolExecutor.submit``), unless the ``thread_propagation`` setting is off: see
``set_thread_propagation``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import logging
import operator
import os
import secrets
import sys
import threading
import weakref
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TypeVar, cast, overload

from tokenmeter import _pipeline
from tokenmeter._fork import renew_after_fork
from tokenmeter._models import MAX_NAME, SessionInfo, UsageRecord, clean_text
from tokenmeter._totals import (
    COUNT_NAMES,
    DECIMAL_NAMES,
    MAX_SESSION_MODELS,
    OTHER_MODELS,
    USD_CONTEXT,
    Totals,
    to_pico_usd_precision,
)
from tokenmeter.guardrails import _state as _guard_state
from tokenmeter.guardrails._hooks import _in_callback, _in_hooks
from tokenmeter.pricing._overrides import short_repr

__all__ = ["ModelTotals", "Session", "SessionSummary", "current_session", "session", "track"]

logger = logging.getLogger("tokenmeter")
F = TypeVar("F", bound=Callable[..., Any])
_ZERO = Decimal(0)
_lock = threading.RLock()  # guards summary updates
#: Sessions entered and not ended (weakly, under ``_lock``): at exit, their stored totals are
#: brought up to date.
_open: weakref.WeakSet[Session] = weakref.WeakSet()
#: How many sessions of ``_open`` have each id (under ``_lock``): whether an id is still in use
#: is asked at every session's end, and walking ``_open`` for it took O(open sessions) under the
#: lock every session's enter and exit takes (5,000 requests in flight: 3-5 ms a session).
_open_ids: dict[str, int] = {}
#: Ids of sessions collected while open (a context dropped inside their block), appended by
#: their finalizer wherever the collector runs: uncounted under ``_lock`` at the next change.
_collected_ids: list[str] = []
#: Held while a session's state is taken and handed to the sinks (``_tell``), so that they get
#: the states in the order they were taken: the last one they keep is the latest.
_told = threading.RLock()
_current: ContextVar[Session | None] = ContextVar("tokenmeter_session", default=None)
_MAX_ID = 200
MAX_NOTES = 10_000
#: Most text a record's tags may hold: every name and value, plus 2 a tag. JSON takes at most 6
#: bytes a character (``\u001f``) and 6 a tag for its quotes, ``:`` and ``,``, so a record's
#: JSONL line stays under what ``tokenmeter report`` reads whole (1 MiB); a longer line could
#: only be skipped there, as a corrupt one.
MAX_TAGS_SIZE = 100_000
#: Largest session budget: far above any real spend, far below where Decimal arithmetic
#: overflows (the reports' bound on a cost, ``tokenmeter.cli._validate.MAX_COST_USD``).
MAX_BUDGET_USD = Decimal(10**9)
#: Fractions of a session's budget that warn, once each (``budget_warn_at``; set by _runtime).
warn_fractions: tuple[float, ...] = (0.5, 0.8, 1.0)
OnEnd = Callable[["Session"], object]


class ModelTotals(Totals):
    """Running totals of a set of records, with the derived figures people ask for.

    The sums and figures are ``tokenmeter._totals.Totals``, shared with the journal and the CLI.
    """

    __slots__ = ()

    def _add(self, record: UsageRecord) -> None:
        self.add_record(record)


class SessionSummary(ModelTotals):
    """Totals of a session and everything nested in it, up to date as soon as a call returns.

    Each record is added once, to its model's totals (``by_model``); the session's own figures
    are their sums, made when read (a session rarely has more than a few models).
    """

    def __init__(self) -> None:  # no Totals.__init__: the figures are read from by_model
        #: Never changed once made: a model seen first is added to a copy, which replaces it
        #: (``_add``, under ``_lock``). Readers take it without the lock, on other threads: a
        #: dict that grew as they iterated it raised RuntimeError into the application.
        self._by_model: dict[str, ModelTotals] = {}

    @property
    def by_model(self) -> dict[str, ModelTotals]:
        """The totals per model name, as of this read: a copy, the application's to keep, edit,
        copy or pickle. The live dict, handed out, raised RuntimeError into a loop over it as
        another thread recorded a new model, and an edit of it (``clear()``, a figure set)
        changed the session's totals and its budget check."""
        return {name: copy.copy(totals) for name, totals in self._by_model.items()}

    def _add(self, record: UsageRecord) -> None:
        # On the caller's thread for every record: add_record directly, no extra frames.
        per_model = self._by_model.get(record.model_name)
        if per_model is None:
            # Bounded: each read of a summary (a budget check per call) sums it.
            by_model = self._by_model
            name = record.model_name if len(by_model) < MAX_SESSION_MODELS else OTHER_MODELS
            per_model = by_model.get(name)
            if per_model is None:
                per_model = ModelTotals()
                self._by_model = {**by_model, name: per_model}  # see __init__: never changed
        per_model.add_record(record)


def _summed(name: str, zero: Any) -> property:
    add = USD_CONTEXT.add if isinstance(zero, Decimal) else operator.add  # not the caller's

    def total(self: SessionSummary) -> Any:
        value = zero
        for per_model in self._by_model.values():  # never changed: a new model replaces it
            value = add(value, getattr(per_model, name))
        return value

    return property(total, doc=f"``{name}`` summed over the session's models.")


for _name in COUNT_NAMES:
    setattr(SessionSummary, _name, _summed(_name, 0))
for _name in DECIMAL_NAMES:
    setattr(SessionSummary, _name, _summed(_name, _ZERO))


_FIXED_TAGS = (
    "a session's tags are fixed when it is made (its records and stored totals carry them, "
    "merged with its enclosing sessions' as it is entered): give them to session(tags=...), "
    "or to record(tags=...) for one record"
)


def _failed_by(exc: BaseException) -> bool:
    """Whether a session its body left by raising ``exc`` failed.

    GeneratorExit: a generator around whose yields it is was left early by its consumer (break,
    close()). SystemExit with code None or 0: the program ends successfully (``sys.exit(0)`` at
    the end of a CLI entry point, argparse's ``--help``, click's ``ctx.exit(0)``), which its
    exit status says too; the session was stored "failed" and end hooks told so.
    """
    if isinstance(exc, GeneratorExit):
        return False
    if isinstance(exc, SystemExit):
        code = exc.code
    elif _is_click_exit(type(exc)):  # ctx.exit(0): a RuntimeError, not a SystemExit
        code = getattr(exc, "exit_code", 1)
    else:
        return True
    return not (code is None or (isinstance(code, int) and code == 0))


def _is_click_exit(kind: type[BaseException]) -> bool:
    """Whether ``kind`` is click's ``Exit`` (typer's too, a subclass), told by name: click
    is the application's, never imported here."""
    return any(
        base.__name__ == "Exit" and base.__module__ == "click.exceptions" for base in kind.__mro__
    )


class FrozenTags(dict[str, str]):
    """``Session.tags``: a dict that refuses every change, loudly. An edit made inside the block
    (``s.tags["user"] = ...``) raised nothing and showed in ``s.tags``, while the session's records
    and stored totals kept the tags given to ``session()``. A dict still (``json.dumps``,
    ``dict(...)``, ``copy``), only not a changeable one."""

    __slots__ = ()

    def _refuse(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError(_FIXED_TAGS)

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self) -> tuple[type[FrozenTags], tuple[dict[str, str]]]:
        return (FrozenTags, (dict(self),))  # copied and pickled whole, not item by item


def _new_id() -> str:
    # 64 random bits: sessions made in the same second, by any process writing the same
    # database, must not share an id (their records and summaries would merge).
    return f"session_{datetime.now(UTC):%Y%m%d_%H%M%S}_{secrets.token_hex(8)}"


class Session:
    """A named scope for attribution: ``with tokenmeter.session("chat", tags={...}) as s:``.

    Records made inside belong to the innermost session and roll up into its ancestors. Usable as
    a sync or async context manager, and as a decorator (each call then gets a fresh session).
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        id: str | None = None,
        tags: dict[str, str] | None = None,
        budget_usd: float | Decimal | str | None = None,
        notes: str | None = None,
        on_exceed: Literal["warn", "raise"] = "warn",
        on_end: OnEnd | Sequence[OnEnd] | None = None,
    ) -> None:
        if id is not None and (not isinstance(id, str) or not id.strip()):
            raise ValueError(f"session id must be a non-empty string, got {short_repr(id)}")
        self.notes = notes  # checked and cleaned by the property's setter
        self._id = clean_text(id.strip(), _MAX_ID) if id else _new_id()
        self.name = name  # checked and cleaned by the property's setter
        self._tags = FrozenTags(_check_tags(tags))
        self.budget_usd = budget_usd  # checked and made a Decimal by the property's setter
        self.on_exceed = on_exceed  # checked by the property's setter
        self.on_end = on_end  # checked and made a tuple by the property's setter
        #: USD reserved by calls in flight (budgets with on_exceed="raise"), under ``_lock``.
        self._reserved = _ZERO
        self._warned_at: set[float] = set()
        #: The limit ``_warned_at`` and ``_over_budget_warned`` are about (see ``_check_budget``).
        self._warned_for: Decimal | None = None
        self._status: Literal["active", "completed", "failed"] = "active"
        self._started_at: datetime | None = None
        self._ended_at: datetime | None = None
        self._parent: Session | None = None
        self._summary = SessionSummary()
        #: Tags of the ancestors merged with this session's own (inner ones win).
        self._effective_tags: FrozenTags = self._tags
        self._token: Token[Session | None] | None = None
        #: Its token once it ended in another context than the one it was entered in (a
        #: generator's block closed from another task), which still holds it as current: reset
        #: there by the first record made there (``_attributed``).
        self._left_current: Token[Session | None] | None = None
        self._over_budget_warned = False
        self._announced = False
        #: The id given to ``session(id=...)``, if any: what each call of a decorated function
        #: is entered under (never the id made for this object, which every call would share).
        self._given_id = id
        #: This process's part of the session's stored totals (``SessionInfo.part``): others
        #: may carry the same session on (forked workers, ``tokenmeter run``, its id reused).
        self._part = secrets.token_hex(8)
        #: The process ``_part`` is for: the one that entered the session, or that inherited it.
        self._pid = 0
        #: In a process forked inside the session: its totals at the fork, which are the parent's
        #: part, not this process's (``_inherit``). None in the process that entered it.
        self._base: tuple[int, int, int, Decimal, int] | None = None
        #: An enclosing session with the same id (a request id entered again by the handler),
        #: whose part of the stored totals holds this one's calls already (they roll up into it):
        #: this one stores nothing of its own, which counted them twice (2 calls stored as 3).
        self._stored_by: Session | None = None
        #: While it is in ``_open``: uncounts its id from ``_open_ids`` if it is collected open.
        self._uncount_if_collected: weakref.finalize[[str], Session] | None = None

    @property
    def name(self) -> str | None:
        """The session's name, stored with it and with each of its records."""
        return self._name

    @name.setter
    def name(self, name: str | None) -> None:
        # Renamed as it goes, the name must be storable as the constructor's is: a lone
        # surrogate made the sinks refuse every record of the session from then on.
        if name is not None and not isinstance(name, str):
            raise ValueError(f"session name must be a string, got {short_repr(name)}")
        renamed = "_name" in self.__dict__  # not the constructor's
        self._name = None if name is None else clean_text(name, MAX_NAME)
        if renamed and _guard_state.armed:  # which budgets scoped to a name cover its calls
            from tokenmeter.guardrails._budgets import session_renamed

            session_renamed()

    @property
    def id(self) -> str:
        """The session's id, its records' ``session_id``: given to ``session(id=...)`` or made."""
        return self._id

    @id.setter
    def id(self, id: object) -> NoReturn:
        # Changed inside the block, it was no longer the id the session was stored under, and
        # not checked: a lone surrogate made the sinks refuse every record of the session.
        _refuse_setting("id", "fixed when it is made (give it to session(id=...))")

    @property
    def parent(self) -> Session | None:
        """The session this one was entered in (None at top level)."""
        return self._parent

    @parent.setter
    def parent(self, parent: object) -> NoReturn:
        # Set to anything but a session, every later record of its nested sessions was lost.
        _refuse_setting("parent", "the session it was entered in")

    @property
    def status(self) -> Literal["active", "completed", "failed"]:
        """ "active", then "completed", or "failed" when its block raised."""
        return self._status

    @status.setter
    def status(self, status: object) -> NoReturn:
        _refuse_setting("status", "set as it ends")

    @property
    def tags(self) -> Mapping[str, str]:
        """The tags given to ``session()``, fixed: changing them is a TypeError."""
        return self._tags

    @tags.setter
    def tags(self, tags: object) -> NoReturn:
        raise TypeError(_FIXED_TAGS)

    @property
    def effective_tags(self) -> Mapping[str, str]:
        """Its tags merged over those of the sessions it was entered in (inner ones win): those
        of its records. Fixed as it is entered: editing them is a TypeError."""
        return self._effective_tags

    @effective_tags.setter
    def effective_tags(self, tags: object) -> NoReturn:
        # Set (or edited) inside the block, they retagged its later records, which the docs say
        # cannot happen, unchecked: None made the block's exit raise ValueError from tokenmeter,
        # and a lone surrogate (a file name from os.listdir) made the SQLite sink refuse the
        # session's records and end row. (An edit of the mapping is the TypeError of FrozenTags.)
        _refuse_setting(
            "effective_tags", "its tags merged with those of the sessions it was entered in"
        )

    @property
    def started_at(self) -> datetime | None:
        """When it was entered (None before)."""
        return self._started_at

    @started_at.setter
    def started_at(self, started_at: object) -> NoReturn:
        # Set by hand to anything but a datetime ("yesterday"), the block's exit raised
        # ValueError from tokenmeter as the session was stored.
        _refuse_setting("started_at", "set as it is entered")

    @property
    def ended_at(self) -> datetime | None:
        """When it ended (None while it is open)."""
        return self._ended_at

    @ended_at.setter
    def ended_at(self, ended_at: object) -> NoReturn:
        _refuse_setting("ended_at", "set as it ends")

    @property
    def budget_usd(self) -> Decimal | None:
        """USD the session may spend (itself and its nested sessions); may be set as it goes."""
        return self._budget_usd

    @budget_usd.setter
    def budget_usd(self, budget: float | Decimal | str | None) -> None:
        # Set later, a budget must be checked and made a Decimal as the constructor's is: a float
        # kept as given made every later record of the session fail in its budget check.
        self._budget_usd = _check_budget(budget)
        self._arm_if_set_inside()

    @property
    def on_exceed(self) -> Literal["warn", "raise"]:
        """ "raise": a call that would take the session past ``budget_usd`` is refused before it
        is sent (``tokenmeter.BudgetExceeded``); "warn": it is made, and a warning logged. May be
        set as it goes."""
        return self._on_exceed

    @on_exceed.setter
    def on_exceed(self, on_exceed: Literal["warn", "raise"]) -> None:
        # Set later, it must be checked as the constructor's is: "rasie" was kept, and the
        # session's budget then refused nothing.
        if on_exceed not in ("warn", "raise"):
            raise ValueError(f"on_exceed must be 'warn' or 'raise', got {short_repr(on_exceed)}")
        self._on_exceed = on_exceed
        self._arm_if_set_inside()

    def _arm_if_set_inside(self) -> None:
        """A budget with on_exceed="raise", either set inside the block (not by ``__init__``):
        calls are refused before they are sent from now on, as if both had been given."""
        if (
            self.__dict__.get("_started_at") is not None
            and self._budget_usd is not None
            and self._on_exceed == "raise"
            and not _disabled()
        ):
            _guard_state.armed = True

    @property
    def on_end(self) -> tuple[OnEnd, ...]:
        """Called with the finished session when it ends; may be set as it goes."""
        return self._on_end

    @on_end.setter
    def on_end(self, on_end: OnEnd | Sequence[OnEnd] | None) -> None:
        # Set later, hooks must be checked as the constructor's are: 5 was kept, and the
        # block's exit raised a TypeError from tokenmeter.
        hooks = _check_hooks(on_end)
        if self.__dict__.get("_ended_at") is not None:  # its hooks ran as it ended: never again
            raise RuntimeError(
                f"session {self.name or self.id!r} has ended: set on_end inside its block"
            )
        self._on_end = hooks

    @property
    def notes(self) -> str | None:
        """Free text stored with the session; may be set as it goes (completion notes)."""
        return self._notes

    @notes.setter
    def notes(self, notes: str | None) -> None:
        # Set later, notes must be made storable as the constructor's are: a lone surrogate (a
        # file name from os.listdir) made the sinks refuse the session's end row.
        if notes is not None and not isinstance(notes, str):
            raise ValueError(f"session notes must be a string, got {short_repr(notes)}")
        self._notes = None if notes is None else clean_text(notes, MAX_NOTES)

    # -- lifecycle -------------------------------------------------------------------------------
    def _start(self) -> None:
        with _lock:  # two threads entering it at once: one does (both did, unlocked)
            if self._started_at is not None:  # entered, ended, or running a decorated generator
                # (its session, current in its body, holds no token: entered again there, it
                # was its own parent, and every record walked that loop of ancestors for ever)
                raise RuntimeError(f"session {self.id!r} was already entered; create a new one")
            parent = _attributed()  # ended, in work started inside it: part of that work
            # At top level, the process's own tags (``tokenmeter run``'s): a program's own
            # session carried none of them, and escaped the run's ``--budget`` (scoped by tag).
            enclosing = parent.effective_tags if parent is not None else _implicit_tags()
            if enclosing:
                merged = {**enclosing, **self._tags}
                # ``tokenmeter run``'s own tag wins over the session's: a program's session
                # tagged ``tokenmeter_run`` by its own escaped the run's ``--budget``.
                merged.update(_imposed_tags)
                self._effective_tags = FrozenTags(
                    check_tags_size(merged, "with those of the enclosing sessions")
                )
            self._parent = parent
            self._stored_by = _enclosing_with_id(parent, self.id)
            self._started_at = datetime.now(UTC)
            self._pid = os.getpid()
        self._token = _current.set(self)
        try:
            if self.on_exceed == "raise" and self.budget_usd is not None and not _disabled():
                _guard_state.armed = True
            self._announce()
        except BaseException:
            # Not entered after all (a Ctrl-C as the settings load): its block does not run and
            # nothing ends it, so it must not stay current, filing every later record under it.
            _current.reset(self._token)
            self._token = None
            with _lock:
                _closed(self)
            raise

    def _end(self, failed: bool) -> None:
        _pipeline.catch_up()  # its calls are in its totals before its end hooks run
        with _lock:  # two threads exiting it at once: one ends it
            if self._started_at is None or self._ended_at is not None:
                return  # never entered, or exited already: its hooks and its row are done once
            self._status = "failed" if failed else "completed"
            self._ended_at = datetime.now(UTC)
            token, self._token = self._token, None
            _closed(self)
        if token is not None and _current.get() is self:
            # Back to the innermost enclosing session still open: an outer session exited
            # before this one (ExitStack misuse, a generator closed late) is current no more.
            outer = self.parent
            while outer is not None and outer.ended_at is not None:
                outer = outer.parent
            with contextlib.suppress(ValueError):  # exited in another context than its own
                _current.reset(token)
                token = None
            if _current.get() is not outer:
                _current.set(outer)
        # Else not current: exited before a session nested in it, which stays current until its
        # own exit (which then skips this one). Either way, a token not used here is that of a
        # context that may still hold it: ``_attributed`` resets it there.
        self._left_current = token
        if sys.is_finalizing():  # a generator's block closed at teardown: imports fail now
            return
        _tell(self)
        if self._base is None:  # a forked worker leaving the block ends its part, not the session
            _end_hooks(self)

    def _announce(self) -> None:
        self._announced = True
        with _lock:
            _opened(self)
        if self._stored_by is None:  # else its id's row is the enclosing session's, told already
            _pipeline.submit(self.info())

    def __enter__(self) -> Session:
        self._start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:  # called by hand with a type only (a with statement gives both)
            self._end(failed=exc_type is not None and not issubclass(exc_type, GeneratorExit))
        else:
            self._end(failed=_failed_by(exc))

    async def __aenter__(self) -> Session:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __call__(self, func: F) -> F:
        def fresh() -> Session:
            # What is set on this object now, not what was given to session(): a budget made
            # to refuse (``job.on_exceed = "raise"``), a rename or hooks set after session(...)
            # were read back from it while each call's session ignored them (3 calls, $0.0105,
            # admitted against a $0.001 budget set to raise).
            return Session(
                self.name,
                id=self._given_id,
                tags=self._tags,  # copied by the new session
                budget_usd=self.budget_usd,
                notes=self.notes,
                on_exceed=self.on_exceed,
                on_end=self.on_end,
            )

        return _decorate(func, fresh)

    # -- records ---------------------------------------------------------------------------------
    @property
    def summary(self) -> SessionSummary:
        """Totals of this session and its nested ones, including every call that has returned."""
        _pipeline.catch_up()  # the records of calls that have returned, made by now
        return self._summary

    def _budgeted(self) -> bool:
        """This session or an enclosing one has a budget."""
        # ``_budget_usd`` and ``_parent``, not the properties, here and in ``_add``: read at
        # every call.
        node: Session | None = self
        while node is not None:
            if node._budget_usd is not None:
                return True
            node = node._parent
        return False

    def _add(self, record: UsageRecord) -> None:
        node: Session | None = self
        budgeted = False
        ended: list[Session] = []
        with _lock:
            while node is not None:
                if node._ended_at is not None:
                    if node._pid != os.getpid():  # ended before a fork: this process's part
                        node._inherit()
                    ended.append(node)
                node._summary._add(record)
                budgeted = budgeted or node._budget_usd is not None
                node = node._parent
        for late in ended:  # a stream read after its session ended: its stored totals go on
            _tell(late)
        if budgeted:  # every ancestor's budget, however the record was made
            node = self
            while node is not None:
                if node._budget_usd is not None:
                    node._check_budget(record)
                node = node._parent

    def _check_budget(self, record: UsageRecord | None = None) -> None:
        """Warn at each ``budget_warn_at`` fraction of the limit the session has reached, once.

        1.0 is the over-budget warning, given once the session is past the limit (whether or
        not 1.0 is listed). Fractions above it warn as a configured budget's do: skipped here,
        a session at 2x or 5x its limit was never told of past its first over-budget line."""
        budget = self.budget_usd
        if budget is None:
            return
        crossed: list[float] = []
        with _lock:  # threads crossing a fraction at once: one of them warns
            self._warn_anew_if_changed(budget)
            spent = self._summary.cost_usd
            for fraction in warn_fractions:
                if fraction == 1 or fraction in self._warned_at:
                    continue
                if spent > 0 and spent >= USD_CONTEXT.multiply(budget, Decimal(repr(fraction))):
                    self._warned_at.add(fraction)
                    crossed.append(fraction)
            over = not self._over_budget_warned and spent > budget
            self._over_budget_warned = self._over_budget_warned or over
        for fraction in (f for f in crossed if f < 1):  # in the order they were reached
            self._alert(record, f"budget_{round(fraction * 100)}pct", fraction, spent, budget)
        if over:
            logger.warning(
                "session %r is over budget: $%s spent of $%s",
                self.name or self.id,
                spent,
                budget,
            )
            self._alert(record, "budget_100pct", 1.0, spent, budget)
        for fraction in (f for f in crossed if f > 1):
            self._alert(record, f"budget_{round(fraction * 100)}pct", fraction, spent, budget)

    def _warn_anew_if_changed(self, budget: Decimal) -> None:
        """Under ``_lock``: forget the warnings given at another limit. Kept for the session's
        life, a limit raised as it goes (``job.budget_usd = 0.05`` after $0.01 was passed) was
        passed without a word: its 50 %, 80 % and over-budget warnings counted as given. Each
        limit warns once at each fraction, as a configured budget raised in its period does."""
        if self._warned_for != budget:
            self._warned_for = budget
            self._warned_at.clear()
            self._over_budget_warned = False

    def _alert(
        self,
        record: UsageRecord | None,
        rule: str,
        fraction: float,
        spent: Decimal,
        budget: Decimal,
    ) -> None:
        """Post the alert for ``fraction`` of ``budget``, the limit ``_check_budget`` read and
        found crossed: ``self.budget_usd`` read again here may have been lifted (None) or
        changed by another thread meanwhile, which raised into the caller's ``record()``."""
        from tokenmeter.guardrails import _alerts

        _alerts.post(
            _alerts.Alert(
                time=record.timestamp if record is not None else datetime.now(UTC),
                rule=rule,
                scope=f"session={self.name or self.id}",
                observed=_alerts.shown(float(spent)),
                baseline=None,
                threshold=_alerts.shown(float(budget) * fraction),
                record_id=record.id if record is not None else None,
                session_id=self.id,
                message=f"session {self.name or self.id!r} has reached "
                f"{round(fraction * 100)}% of its ${budget} budget: ${spent} spent",
            ),
            scope_per_call=True,
        )

    @property
    def over_budget(self) -> bool:
        # The limit read once: another thread lifting it (``budget_usd = None``) between two
        # reads made ``over_budget`` raise TypeError into the app.
        budget = self._budget_usd
        return budget is not None and self.summary.cost_usd > budget

    def _totals(self) -> tuple[int, int, int, Decimal, int]:
        """This process's part of the session's totals: all of them, less those it inherited."""
        t = self._summary
        calls, input_tokens, output_tokens = t.calls, t.input_tokens, t.output_tokens
        cost, unpriced = t.cost_usd, t.unpriced_calls
        base = self._base
        if base is None:
            return calls, input_tokens, output_tokens, cost, unpriced
        return (
            calls - base[0],
            input_tokens - base[1],
            output_tokens - base[2],
            USD_CONTEXT.subtract(cost, base[3]),
            unpriced - base[4],
        )

    def _inherit(self) -> None:
        """In a process forked inside this session (or in work still running on after it):
        the totals so far are the parent's part, stored by the parent. This process's part,
        under a key of its own, is what it adds from now on; it never ends the session.

        What its budget holds for calls in flight (``_reserved``) is the parent's too: those
        calls settle in the parent, and kept here, a call the parent had in flight at the fork
        ($0.0085 of a $0.01 budget) refused the child's first call ($0.002, $0 spent) for the
        child's whole life. Reservations made before the fork are never released here
        (``_budgets``: ``_Reservation.forks``)."""
        t = self._summary
        self._reserved = _ZERO
        self._base = (t.calls, t.input_tokens, t.output_tokens, t.cost_usd, t.unpriced_calls)
        self._part = secrets.token_hex(8)
        self._pid = os.getpid()

    def info(self) -> SessionInfo:
        calls, input_tokens, output_tokens, cost, unpriced = self._totals()
        inherited = self._base is not None
        return SessionInfo(
            id=self.id,
            name=self.name,
            parent_id=self.parent.id if self.parent else None,
            tags=self._effective_tags,
            status="active" if inherited else self.status,
            started_at=self.started_at or datetime.now(UTC),
            ended_at=None if inherited else self.ended_at,
            notes=self.notes,
            budget_usd=self.budget_usd,
            calls=calls,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=cost,
            unpriced_calls=unpriced,
            part=self._part,
            inherited=inherited,
        )

    def __repr__(self) -> str:
        return f"Session(id={self.id!r}, name={self.name!r}, status={self.status!r})"


def _tell(session: Session) -> None:
    """Hand the sinks an ended session's state. Taken and handed over under ``_told``: threads
    making late calls of it at once each handed over a state taken outside any lock, and the
    last one handed over (not the latest) was the stored row (245 of 250 calls)."""
    if session._stored_by is not None:  # its calls are in the enclosing session's part
        return
    with _told:
        with _lock:
            info = session.info()
        _pipeline.submit(info)


def _enclosing_with_id(parent: Session | None, session_id: str) -> Session | None:
    """The innermost of ``parent`` and its ancestors whose id is ``session_id``, if any."""
    while parent is not None and parent.id != session_id:
        parent = parent.parent
    return parent


def open_ids() -> frozenset[str]:
    """The ids of this process's open sessions."""
    with _lock:
        _uncount_collected()
        return frozenset(_open_ids)


def id_in_use(session_id: str) -> bool:
    """Whether a session of this process with this id is open: the same id entered again on
    another thread or task, while one of them ends."""
    with _lock:
        _uncount_collected()
        return session_id in _open_ids


def _opened(session: Session) -> None:
    """``session`` is open (under ``_lock``): in ``_open``, and its id counted once."""
    if session in _open:  # announced before it was entered (a record naming it)
        return
    _uncount_collected()
    _open.add(session)
    _open_ids[session.id] = _open_ids.get(session.id, 0) + 1
    uncount = weakref.finalize(session, _collected_ids.append, session.id)
    uncount.atexit = False
    session._uncount_if_collected = uncount


def _closed(session: Session) -> None:
    """``session`` is open no more (under ``_lock``)."""
    uncount = session._uncount_if_collected
    if uncount is None:  # never opened, or closed already
        return
    session._uncount_if_collected = None
    _open.discard(session)
    # Dead already: collected as it closed (a coroutine the garbage collector closes, its event
    # loop closed with it in flight, ends its session then), its id counted off as collected.
    if uncount.detach() is not None:
        _uncount(session.id)


def _uncount_collected() -> None:
    """Count off the ids of sessions collected while open (under ``_lock``)."""
    while _collected_ids:
        _uncount(_collected_ids.pop())


def _uncount(session_id: str) -> None:
    left = _open_ids[session_id] - 1
    if left:
        _open_ids[session_id] = left
    else:
        del _open_ids[session_id]


def _check_tags(tags: Any) -> dict[str, str]:
    if tags is None:
        return {}
    if not isinstance(tags, dict):
        raise ValueError(f"tags must be a dict of str to str, got {type(tags).__name__}")
    for key, value in tags.items():
        if not isinstance(key, str) or not isinstance(value, str | int | float | bool):
            raise ValueError(
                f"tags must map strings to strings, got {short_repr(key)}: {short_repr(value)}"
            )
        if not key.strip():
            raise ValueError("tags: a tag name must be a non-empty string")
    cleaned: dict[str, str] = {}
    for key, value in tags.items():
        try:
            text = _text_of(value)
        except Exception:  # an int past sys.get_int_max_str_digits()
            raise ValueError(
                f"tags: the value of {short_repr(key)} cannot be made text (too long?)"
            ) from None
        cleaned[clean_text(key, MAX_NAME)] = clean_text(text, MAX_NOTES)
    return check_tags_size(cleaned)


def check_tags_size(tags: dict[str, str], merged: str = "") -> dict[str, str]:
    """``tags``, or ValueError when they hold more than ``MAX_TAGS_SIZE`` (``merged`` says with
    which other tags they were merged)."""
    size = sum(len(key) + len(value) + 2 for key, value in tags.items())
    if size > MAX_TAGS_SIZE:
        raise ValueError(
            f"tags{' ' + merged if merged else ''}: {size:,} characters of names and values "
            f"(2 more a tag), more than the {MAX_TAGS_SIZE:,} a record keeps"
        )
    return tags


def _refuse_setting(name: str, what: str) -> NoReturn:
    raise AttributeError(f"a session's {name} cannot be set: it is {what}")


def _check_hooks(hooks: Any) -> tuple[OnEnd, ...]:
    from tokenmeter.guardrails._hooks import check_not_async

    if hooks is None:
        return ()
    if callable(hooks):
        hooks = (hooks,)
    if isinstance(hooks, list | tuple) and all(callable(hook) for hook in hooks):
        check_not_async("on_end hooks", hooks)
        return tuple(hooks)
    raise ValueError(f"on_end must be a callable or a list of callables, got {short_repr(hooks)}")


def _end_hooks(ended: Session) -> None:
    from tokenmeter.guardrails._hooks import global_hooks, run_end_hooks

    if _guard_state.armed:  # unused budget slices go back to the ledger
        from tokenmeter.guardrails._budgets import session_ended

        session_ended(ended)
    if ended.on_end or global_hooks:
        run_end_hooks(ended, ended.on_end)


def _disabled() -> bool:
    from tokenmeter import _runtime  # imports this module

    return _runtime.disabled()


def _check_budget(budget: Any) -> Decimal | None:
    return None if budget is None else usd_amount("budget_usd", budget)


#: ``str()`` of a value, by its built-in type's own method: a subclass's ``__str__`` or
#: ``__repr__`` is the application's code, which may raise or say something else.
_AS_TEXT: tuple[tuple[type, Callable[[Any], str]], ...] = (
    (str, str.__str__),
    (bool, bool.__repr__),
    (int, int.__repr__),
    (float, float.__repr__),
    (Decimal, Decimal.__str__),
)


def _text_of(value: Any) -> str:
    """``str(value)`` for the types ``_AS_TEXT`` names, whatever a subclass says."""
    for kind, as_text in _AS_TEXT:
        if isinstance(value, kind):
            return as_text(value)
    return str(value)


def usd_amount(where: str, value: Any) -> Decimal:
    """A budget or limit in USD, from 0 to ``MAX_BUDGET_USD``; ValueError naming ``where``.

    Past that (``"1e999999999"``) the warning thresholds (budget x fraction) and the ledger's
    arithmetic overflow; below a pico-dollar (``"1e-999999"``) the amount is kept to the
    pico-dollar, not written out as a million digits by every sink."""
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ValueError(f"{where} must be a number of USD, got {short_repr(value)}")
    try:  # an int as it is: str() of one past 4300 digits raises
        amount = Decimal(value) if isinstance(value, int) else Decimal(_text_of(value))
    except ArithmeticError:
        raise ValueError(f"{where} must be a number of USD, got {short_repr(value)}") from None
    if not amount.is_finite() or not 0 <= amount <= MAX_BUDGET_USD:
        raise ValueError(
            f"{where} must be a number of USD from 0 to {MAX_BUDGET_USD}, got {short_repr(value)}"
        )
    exponent = amount.as_tuple().exponent
    if type(exponent) is int and exponent < -12:
        amount = to_pico_usd_precision(amount)
    return amount


class _Steps:
    """The session of one call of a decorated generator function: it lasts until the generator
    ends, and is current only while the generator's body runs (each step), never in the code
    that iterates it. A session the body opens stays current across its yields."""

    def __init__(self, session: Session) -> None:
        """``session``: entered, and set aside (``_set_aside``): current only during the steps."""
        self.session = session
        self.current: Session | None = session

    def run(self, step: Callable[..., Any], *args: Any) -> Any:
        token = _current.set(self.current)
        try:
            return step(*args)
        finally:
            self.current = _current.get()
            _current.reset(token)

    async def run_async(self, step: Awaitable[Any]) -> Any:
        token = _current.set(self.current)
        try:
            return await step
        finally:
            self.current = _current.get()
            with contextlib.suppress(ValueError):  # closed by the collector, out of its context
                _current.reset(token)


def _set_aside(session: Session) -> Session:
    """``session``, just entered here, current here no more: only where its work runs (the
    steps of a generator, a coroutine), not in the code that holds that work until it runs it."""
    assert session._token is not None
    _current.reset(session._token)  # the caller's context, as it was before it was entered
    session._token = None
    return session


def _decorate_generator(func: Callable[..., Any], session_of: Callable[[], Session]) -> Any:
    """``func`` is a generator function (a streamed answer): its session spans the iteration.

    ``session_of`` gives the session of a call, entered and set aside (``_set_aside``), when
    the generator is first iterated."""

    @functools.wraps(func)
    def run_generator(*args: Any, **kwargs: Any) -> Any:
        steps = _Steps(session_of())
        inner = func(*args, **kwargs)
        failed = True
        try:
            value: Any = None
            thrown: BaseException | None = None
            while True:
                try:
                    if thrown is None:
                        item = steps.run(inner.send, value)
                    else:
                        item = steps.run(inner.throw, thrown)
                except StopIteration as stop:
                    failed = False
                    return stop.value
                thrown = None
                try:
                    value = yield item
                except GeneratorExit:  # the consumer stopped early: no failure of the body
                    steps.run(inner.close)
                    failed = False
                    raise
                except BaseException as exc:
                    thrown = exc
        except SystemExit as exc:  # the body ended the program (see _failed_by)
            failed = _failed_by(exc)
            raise
        finally:
            steps.session._end(failed)

    return run_generator


def _decorate_async_generator(func: Callable[..., Any], session_of: Callable[[], Session]) -> Any:
    """``func`` is an async generator function: as ``_decorate_generator``."""

    @functools.wraps(func)
    async def run_async_generator(*args: Any, **kwargs: Any) -> Any:
        from asyncio import CancelledError  # loaded already: an async generator is running

        steps = _Steps(session_of())
        inner = func(*args, **kwargs)
        failed = True
        try:
            value: Any = None
            thrown: BaseException | None = None
            while True:
                try:
                    step = inner.asend(value) if thrown is None else inner.athrow(thrown)
                    item = await steps.run_async(step)
                except StopAsyncIteration:
                    failed = False
                    return
                except CancelledError as exc:
                    # Cancelled at its yield (asyncio.run ending cancels the closing of a
                    # generator its consumer left with break): stopped early, as by aclose().
                    failed = exc is not thrown
                    raise
                thrown = None
                try:
                    value = yield item
                except GeneratorExit:
                    await steps.run_async(inner.aclose())
                    failed = False
                    raise
                except BaseException as exc:
                    thrown = exc
        except SystemExit as exc:  # the body ended the program (see _failed_by)
            failed = _failed_by(exc)
            raise
        finally:
            steps.session._end(failed)

    return run_async_generator


def _decorate(func: F, make_session: Callable[[], Session]) -> F:
    if not callable(func):  # else every call of the "decorated" function would fail
        raise ValueError(f"a session decorates a function or callable, got {short_repr(func)}")
    # What runs when it is called: a callable object's own __call__ (async or a generator too).
    code: Any = func
    if not (inspect.isroutine(func) or isinstance(func, functools.partial)):
        code = type(func).__call__

    def entered_aside() -> Session:  # its parent: the session the generator is first iterated in
        made = make_session()
        made._start()
        return _set_aside(made)

    if inspect.isgeneratorfunction(code):
        return cast(F, _decorate_generator(func, entered_aside))
    if inspect.isasyncgenfunction(code):
        return cast(F, _decorate_async_generator(func, entered_aside))
    if inspect.iscoroutinefunction(code):

        @functools.wraps(func)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            async with make_session():
                return await func(*args, **kwargs)

        return cast(F, run_async)

    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> Any:
        made = make_session()
        made._start()
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            made._end(failed=_failed_by(exc))
            raise
        if inspect.iscoroutine(result):
            # A plain wrapper of an async function (a functools.wraps decorator): its session
            # ended before the coroutine ran, and the coroutine's calls went to the caller's.
            _set_aside(made)
            return _ended_if_never_run(lambda began: _awaited_in(began, result), made)
        if inspect.isgenerator(result) or inspect.isasyncgen(result):
            # The same over a generator function (a streamed answer): its session ended before
            # the body ran, its calls went to the caller's session, its budget refused none.
            # It spans the iteration, as a decorated generator function's does.
            _set_aside(made)
            steps_of = (
                _decorate_generator if inspect.isgenerator(result) else _decorate_async_generator
            )
            named = functools.wraps(func)(lambda: result)  # its repr names the function
            return _ended_if_never_run(lambda began: steps_of(named, began)(), made)
        made._end(failed=False)
        return result

    return cast(F, run)


def _ended_if_never_run(work_of: Callable[[Callable[[], Session]], Any], session: Session) -> Any:
    """The coroutine or generator ``work_of(began)`` makes, which calls ``began()`` for
    ``session`` when its body starts and ends the session when it ends, made to end it too when
    it is collected without having started: closed before its first step (a task cancelled at
    once, a client gone before the first item), its body never runs, so nothing else ended the
    session (stored "active" for ever, its end hooks never run).

    Only then: one that started ends the session itself as it is closed, after this runs (its
    weak references are cleared first); ended here, the calls of its ``finally`` came too late
    for the session."""
    started: list[bool] = []

    def began() -> Session:
        started.append(True)
        return session

    work = work_of(began)
    ends = weakref.finalize(work, _end_if_never_started, session, started)
    ends.atexit = False  # still held at exit: open then, as any session left open
    return work


def _end_if_never_started(session: Session, started: list[bool]) -> None:
    if not started and session.ended_at is None:
        session._end(failed=False)


def _awaited_in(session_of: Callable[[], Session], coroutine: Any) -> Any:
    """``coroutine`` run in the session of ``session_of()`` (called as it starts), which ends
    with it: current only while it runs, not in the code that holds it until it is awaited (as
    a decorated generator's session is)."""

    async def run_in_session() -> Any:
        session = session_of()
        token = _current.set(session)
        failed = False
        try:
            return await coroutine
        except GeneratorExit:  # closed as it waited (its loop closed): no failure of its own,
            raise  # as for the async function decorated directly
        except BaseException as exc:
            failed = _failed_by(exc)
            raise
        finally:
            with contextlib.suppress(ValueError):  # closed by the collector, out of its context
                _current.reset(token)
            session._end(failed)

    # Named as the application's coroutine in asyncio's task reprs and warnings.
    run_in_session.__name__ = getattr(coroutine, "__name__", run_in_session.__name__)
    run_in_session.__qualname__ = getattr(coroutine, "__qualname__", run_in_session.__qualname__)
    return run_in_session()


def session(
    name: str | None = None,
    *,
    id: str | None = None,
    tags: dict[str, str] | None = None,
    budget_usd: float | Decimal | str | None = None,
    notes: str | None = None,
    on_exceed: Literal["warn", "raise"] = "warn",
    on_end: OnEnd | Sequence[OnEnd] | None = None,
) -> Session:
    """Open a session: ``with``, ``async with`` or ``@session(...)`` (docs/sessions.md).

    ``name``: shown in reports and the journal. ``id``: the session's id (default a new
    ``session_<date>_<time>_<hex>``); a session entered again under an id already used adds its
    part to that session's stored totals. ``tags``: text to text, given to each record made in
    it (merged over its ancestors'). ``notes``: text stored with the session. ``budget_usd``
    with ``on_exceed``: "raise" refuses a call before it is sent once the session (nested ones
    included) would pass it; the default "warn" only logs. ``on_end`` callbacks receive the
    finished Session (with its final ``summary``) when it ends.
    """
    return Session(
        name,
        id=id,
        tags=tags,
        budget_usd=budget_usd,
        notes=notes,
        on_exceed=on_exceed,
        on_end=on_end,
    )


@overload
def track(name: F, *, tags: dict[str, str] | None = None) -> F: ...


@overload
def track(name: str | None = None, *, tags: dict[str, str] | None = None) -> Callable[[F], F]: ...


def track(name: Any = None, *, tags: dict[str, str] | None = None) -> Any:
    """Decorator: every call of the function runs in its own session (named after it by default).

    ``@track`` and ``@track()`` are the same: the bare form is the one people write first."""
    if callable(name) and not isinstance(name, str):
        return track(tags=tags)(name)
    if name is not None and not isinstance(name, str):
        raise ValueError(f"session name must be a string, got {short_repr(name)}")
    _check_tags(tags)

    def decorator(func: F) -> F:
        session_name = name or _qualname(func)
        return _decorate(func, lambda: Session(session_name, tags=tags))

    return decorator


def _qualname(func: Any) -> str:
    """The name of what ``@track`` decorates: a partial is named after its function, and a
    callable object (which has no ``__qualname__``) after its class."""
    while isinstance(func, functools.partial):
        func = func.func
    name = getattr(func, "__qualname__", None)
    return name if isinstance(name, str) else type(func).__qualname__


def current_session() -> Session | None:
    """The innermost explicit session of this thread or task, or None."""
    session = _current.get()
    while session is not None and session.ended_at is not None:
        # Exited in another thread or task, whose context it was not current in: this one
        # falls back to the innermost enclosing session still open.
        session = session.parent
    return session


def session_of_record() -> Session:
    """The session a record made now belongs to: the current one, ended or not, else the
    implicit session.

    An ended session still current here was either copied inside the block (a thread or pool
    work item started there, an asyncio task or callback created there, a ``copy_context()``)
    or ended in another context than the one that entered it (a generator's block closed from
    another task), and this is that one (``_attributed``), which falls back to what was current
    before it. Work started inside a session stays in it (it used to fall back as well when it
    ran on after the block): its record is a late call of it, counted in its stored totals as
    a late stream's is (``Session._add``), and a session it opens is nested in it.
    ``current_session()`` names the open session."""
    return _attributed() or implicit_session()


def _attributed() -> Session | None:
    """The session that work running here belongs to: the current one, ended or not, unless it
    ended in another context than the one it was entered in and this is that one (which still
    holds it): there it is reset to what was current before it, as its exit would have done.

    Told apart by its token, which resets only in the context it was made in: the entering
    context's thread or task id said so, and ids are reused (a follow-up item of a pool on the
    thread that ran the session, a task made after the entering task was freed: each charged
    to the enclosing session)."""
    session = _current.get()
    if session is None or session.ended_at is None:
        return session
    left = session._left_current
    if left is None:  # exited where it was entered: a context that holds it was copied inside
        return session
    try:
        _current.reset(left)
    except (ValueError, RuntimeError):  # copied inside the block (or reset there already)
        return session
    session._left_current = None
    return _attributed()


# -- the implicit per-process session -----------------------------------------------------------
_implicit: Session | None = None
_implicit_pid = 0
#: Name, id and tags of the implicit session when set by `name_implicit_session`.
_implicit_args: tuple[str | None, str | None, dict[str, str] | None] = (None, None, None)
#: Those of its tags that win over any session's and any record's own (``tokenmeter run``'s
#: ``tokenmeter_run``, which scopes the run's ``--budget`` and its reports): a process of the
#: run cannot file a call outside the run by tagging it with that key.
_imposed_tags: dict[str, str] = {}


#: This process was forked from one that had imported tokenmeter (``store_forked_parts``).
_forked = False


def _forget_implicit_after_fork() -> None:
    global _implicit, _forked
    _implicit = None  # a forked child is another process: it starts its own implicit session
    _forked = True
    for inherited in list(_open):  # sessions open at the fork: the child adds its own part
        inherited._inherit()


os.register_at_fork(after_in_child=_forget_implicit_after_fork)


def implicit_session() -> Session:
    """The session records belong to outside any explicit one: one per process."""
    global _implicit, _implicit_pid
    if _implicit is None:
        with _lock:
            if _implicit is None:
                pid = os.getpid()
                started = datetime.now(UTC)
                name, id_, tags = _implicit_args
                id_ = id_ or f"session_{started:%Y%m%d_%H%M%S}_{pid}"
                created = Session(name, id=id_, tags=tags)
                created._started_at, created._pid = started, pid
                _implicit, _implicit_pid = created, pid
    return _implicit


def _implicit_tags() -> dict[str, str]:
    """The tags `name_implicit_session` gave this process (none unless it did)."""
    return _implicit_args[2] or {}


def name_implicit_session(
    name: str | None = None,
    *,
    id: str | None = None,
    tags: dict[str, str] | None = None,
    imposed: Collection[str] = (),
) -> None:
    """Give the implicit session of this process, and of processes forked from it, a name, an id
    and tags: ``tokenmeter run`` files every process of one run under one session this way. The
    sessions the process opens at top level carry those tags too (theirs win, but for the keys
    ``imposed``, whose values win over every session's and record's own)."""
    global _implicit, _implicit_args, _imposed_tags
    Session(name, id=id, tags=tags)  # the same checks, the same ValueError, as session()
    given = dict(tags) if tags else {}
    with _lock:
        _implicit_args = (name, id, given or None)
        _imposed_tags = {key: value for key, value in given.items() if key in imposed}
        _implicit = None


def imposed_tags() -> dict[str, str]:
    """The tags that win over a record's own (``name_implicit_session``'s ``imposed``)."""
    return _imposed_tags


def announce(record_session: Session) -> None:
    """Make sure sinks have heard of the session before its first record."""
    if not record_session._announced:
        record_session._announce()


def finish_implicit() -> None:
    """At exit: the implicit session is complete (if it ever recorded anything), and a session
    still open (a SIGTERM inside its block, a generator never closed) has its stored totals
    brought up to date: its row said 0 calls beside its records. It is still "active": it
    never ended."""
    with _lock:
        still_open = list(_open)
    for session in still_open:
        if session is not _implicit and session.ended_at is None and session._totals()[0]:
            _told_at_exit[id(session)] = session._totals()[0]
            _tell(session)
    if _implicit is not None and _implicit._announced and _implicit_pid == os.getpid():
        _implicit._status = "completed"
        _implicit._ended_at = datetime.now(UTC)
        _pipeline.submit(_implicit.info())
        _end_hooks(_implicit)


#: The calls of each session still open that ``finish_implicit`` stored, by ``id()``.
_told_at_exit: dict[int, int] = {}


def store_open_again() -> None:
    """At exit, once the flush has written what was queued and before the writers stop: a
    session still open whose calls changed since ``finish_implicit`` stored it (a daemon
    worker's calls that finished meanwhile), or that was entered since, is stored again, once:
    its row said 59 calls beside 61 records, or 0 beside 1."""
    _pipeline.catch_up()
    with _lock:
        still_open = list(_open)
    for session in still_open:
        if session is _implicit or session.ended_at is not None:
            continue
        calls = session._totals()[0]
        if calls and _told_at_exit.get(id(session)) != calls:
            _told_at_exit[id(session)] = calls
            _tell(session)


def store_forked_parts() -> None:
    """``flush()`` in a forked process: its part of the sessions still open in it (those it
    carries on from its parent, its own implicit session) is stored now. A bare ``os.fork()``
    child (a pre-fork server's worker) ends with ``os._exit()``, after a flush as the docs say,
    which runs no exit hook: its part was never stored, and the session's row counted 1 call
    of the 3 in its records."""
    if not _forked:  # the process that entered them stores them as they end, and at its exit
        return
    _pipeline.catch_up()  # the calls that have returned are in the totals stored
    with _lock:
        still_open = list(_open)
    for session in still_open:
        if session.ended_at is None and session._totals()[0]:
            _tell(session)


_pipeline.before_exit(finish_implicit)
_pipeline.before_exit_stop(store_open_again)
renew_after_fork(globals(), "_lock")
renew_after_fork(globals(), "_told")


def reset() -> None:
    """Forget the implicit session (tests)."""
    global _implicit, _implicit_pid, _implicit_args, _imposed_tags
    _implicit, _implicit_pid, _implicit_args, _imposed_tags = None, 0, (None, None, None), {}


# -- sessions follow work into threads ------------------------------------------------------------
if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor
try:
    from concurrent.futures import thread as _futures_thread
except RuntimeError:  # first imported by an exit hook after threading's shutdown: no pool runs
    _futures_thread = None  # type: ignore[assignment]
_propagate = False
_original_start = threading.Thread.start
_original_submit = None if _futures_thread is None else _futures_thread.ThreadPoolExecutor.submit


#: What work handed to another thread takes along: the current session, and whether
#: session-end hooks or an ``on_alert`` callback are running. A hook's or callback's work done
#: there is still its own: a session a hook opens is not handed to the global hooks, whose work
#: would open another, and a callback's calls are not judged, whose alerts would run it again: a
#: paid call a round for ever (``run_end_hooks``, ``_alerts.post``).
_Carried = tuple[Session | None, bool, bool]


def _carried() -> _Carried:
    return _current.get(), _in_hooks.get(), _in_callback.get()


def _start_in_session(self: threading.Thread) -> None:
    if _propagate and not getattr(self, "_tokenmeter_worker", False):
        current, in_hooks, in_callback = _carried()
        if current is not None or in_hooks or in_callback:
            run = self.run

            def run_in_session() -> None:
                _current.set(current)  # a new thread starts with an empty context
                _in_hooks.set(in_hooks)
                _in_callback.set(in_callback)
                run()

            self.run = run_in_session  # type: ignore[method-assign]
    _original_start(self)


def _run_in(carried: _Carried, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    current, in_hooks, in_callback = carried
    token = _current.set(current)
    hooks_token = _in_hooks.set(in_hooks)
    callback_token = _in_callback.set(in_callback)
    try:
        return fn(*args, **kwargs)
    finally:
        _in_callback.reset(callback_token)
        _in_hooks.reset(hooks_token)
        _current.reset(token)


def _submit_in_session(
    self: ThreadPoolExecutor, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
) -> Any:
    if _propagate:
        # Each work item runs in the session it was submitted from (or none): a pool's worker
        # thread outlives the session that happened to start it.
        _worker_start.flag = True
        try:
            return _original_submit(
                self, functools.partial(_run_in, _carried(), fn), *args, **kwargs
            )
        finally:
            _worker_start.flag = False
    return _original_submit(self, fn, *args, **kwargs)


class _WorkerStart(threading.local):
    flag = False


_worker_start = _WorkerStart()


def _start_checked(self: threading.Thread) -> None:
    if _worker_start.flag:  # a pool worker started by submit(): its items carry their session
        _original_start(self)
    else:
        _start_in_session(self)


#: ``multiprocessing.pool.ThreadPool`` methods that hand work to its workers, each given the
#: function that a worker calls for every item (``_map_async`` serves map, map_async, starmap
#: and starmap_async). Its workers start with the pool and serve every later session.
_THREAD_POOL_METHODS = ("apply_async", "_map_async", "imap", "imap_unordered")


def _items_in_session(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def in_session(self: Any, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if _propagate:
            func = functools.partial(_run_in, _carried(), func)
        return method(self, func, *args, **kwargs)

    in_session._tokenmeter_items = True  # type: ignore[attr-defined]
    return in_session


def _follow_thread_pool_items(module: Any) -> None:
    """Each item of a ``multiprocessing.pool.ThreadPool`` runs in the session it was handed
    over from (or none), as a ``ThreadPoolExecutor``'s does: every item ran in the session of
    the pool's creation (a session closed long before: its late calls; or none). Its process
    ``Pool`` (which pickles the function) is left as it is."""
    pool = getattr(module, "ThreadPool", None)
    for name in _THREAD_POOL_METHODS if pool is not None else ():
        method = getattr(pool, name, None)
        if method is not None and not getattr(method, "_tokenmeter_items", False):
            setattr(pool, name, _items_in_session(method))


def set_thread_propagation(enabled: bool) -> None:
    """Carry the current session into threads started inside it (the ``thread_propagation``
    setting). The patches are installed once and read the switch at each start / submit."""
    global _propagate
    _propagate = enabled
    if enabled and threading.Thread.start is not _start_checked:
        threading.Thread.start = _start_checked  # type: ignore[method-assign]
        if _futures_thread is not None:
            _futures_thread.ThreadPoolExecutor.submit = _submit_in_session  # type: ignore[method-assign, assignment]
        import wrapt  # its post-import hooks patch the SDKs too

        wrapt.register_post_import_hook(_follow_thread_pool_items, "multiprocessing.pool")
