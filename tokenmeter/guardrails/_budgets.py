"""Budgets: the one synchronous check, made before a request leaves the process.

``check`` runs from the providers' ``send`` when ``_state.armed`` (some budget is in force). It
estimates the request's input cost, then for every budget in scope reserves that estimate in the
budget's ledger (refused if spent + reserved + estimate would pass the limit) and for every
enclosing session with ``on_exceed="raise"`` does the same against the session's live totals.
A refusal releases what was reserved, writes a record with status "blocked" and raises
``BudgetExceeded``. When the call's record is made, ``settle`` swaps the reservation for the real
cost. Every record (intercepted or made with ``tokenmeter.record()``) adds its cost to the budgets
whose scope it is in, and crossing 50 / 80 / 100 % of a limit (``budget_warn_at``) warns once per
budget and period.

The bound: a budget raced by N calls at once passes its limit by at most what those N calls cost
beyond their estimates (each was admitted against spent + everyone else's reservation).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Any, Literal, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tokenmeter import _pipeline, _sessions
from tokenmeter._models import MAX_NAME, UNREADABLE_USAGE, Usage, UsageRecord, clean_text
from tokenmeter._registry import canonical, gemini_path, provider_of_sdk, short_model
from tokenmeter._totals import USD_CONTEXT
from tokenmeter.guardrails import _leases, _state
from tokenmeter.guardrails._errors import BudgetExceeded, printable
from tokenmeter.guardrails._estimate import estimate_input_usd, forget_prices, input_bound_usd
from tokenmeter.guardrails._ledger import (
    BudgetLedger,
    MemoryLedger,
    SQLiteLedger,
    briefly,
    settle_all,
)
from tokenmeter.pricing._overrides import short_repr

__all__ = [
    "PERIODS",
    "Budget",
    "check",
    "configure_budgets",
    "parse_budgets",
    "parse_timezone",
    "parse_warn_at",
    "session_ended",
    "settle",
]

logger = logging.getLogger("tokenmeter")

PERIODS = ("call", "session", "hour", "day", "week", "month", "total")
_FIELDS = ("name", "limit_usd", "period", "provider", "model", "session", "tag", "on_exceed")
_ZERO = Decimal(0)


_KEY_ESCAPES = str.maketrans({"%": "%25", "|": "%7C", ",": "%2C", "=": "%3D"})


def _key_part(text: str) -> str:
    """``text`` with the separators of a ledger key (and ``%``) percent-escaped."""
    return text.translate(_KEY_ESCAPES)


#: How far a sum of float costs may be from the same sum in decimals, as a share of it (more
#: than a million calls' rounding errors).
_FLOAT_SLACK = 1e-9


@dataclass(frozen=True)
class Budget:
    """A limit in USD over a period, for the calls in a scope (everything when no scope field is
    set; otherwise calls matching every one given)."""

    limit_usd: Decimal
    period: str = "day"
    provider: str | None = None
    model: str | None = None
    session: str | None = None
    tag: tuple[str, str] | None = None
    on_exceed: Literal["raise", "warn"] = "raise"
    name: str = ""

    @functools.cached_property
    def scope(self) -> str:
        return self._scope(str)

    def _scope(self, part: Callable[[str], str]) -> str:
        parts = []
        if self.provider:
            parts.append(f"provider={part(self.provider)}")
        if self.model:
            parts.append(f"model={part(self.model)}")
        if self.session:
            parts.append(f"session={part(self.session)}")
        if self.tag:
            parts.append(f"tag:{part(self.tag[0])}={part(self.tag[1])}")
        return ",".join(parts) or "everything"

    @functools.cached_property
    def limit(self) -> float:
        """The limit the ledgers compare spent + reserved + a call's estimate with. Their sums are
        of floats: three calls of $0.0001 add up to 0.00030000000000000003, a hair over a $0.0003
        limit. The limit has a billionth of itself of room over it (a nano-dollar on $1), so that
        a sum that meets it exactly in decimals is never taken to pass it."""
        return float(self.limit_usd) * (1 + _FLOAT_SLACK)

    def floor(self, fraction: float) -> float:
        """The spent USD from which the budget warns at ``fraction`` of its limit, a billionth of
        the limit early (see ``limit``): ten calls of $0.10 add up to 0.9999999999999999 in
        floats, and must reach 100 % of $1 at the tenth call, as they do in decimals."""
        return fraction * float(self.limit_usd) * (1 - _FLOAT_SLACK)

    @functools.cached_property
    def key(self) -> str:
        """Its ledger row's key. Names and values are escaped: with "|", "," or "=" in them,
        two budgets had one key ("n|day|tag:a=b" and "n" on tag a = "b|day|everything"), and
        spent from one row. A key without those is as before (the ledger's rows stay)."""
        return f"{_key_part(self.name)}|{self.period}|{self._scope(_key_part)}"

    def matches(
        self,
        provider: str,
        models: tuple[str | None, ...],
        session: Any,
        tags: Mapping[str, str] | None = None,
    ) -> bool:
        """``tags``: a record's own (record(tags=...)), where they are not its session's."""
        if self.provider is not None and provider != self.provider:
            return False
        if self.model is not None and self.model not in models:
            return False
        if self.session is not None:
            node = session
            while node is not None and node.name != self.session:
                node = node.parent
            if node is None:
                return False
        if self.tag is not None:
            if tags is None:
                tags = session.effective_tags if session is not None else {}
            if tags.get(self.tag[0]) != self.tag[1]:
                return False
        return True

    def as_setting(self) -> dict[str, Any]:
        """The budget as written in TOML / JSON (for ``tokenmeter config``)."""
        out: dict[str, Any] = {"name": self.name, "limit_usd": str(self.limit_usd)}
        out["period"] = self.period
        for key in ("provider", "model", "session"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.tag is not None:
            out["tag"] = f"{self.tag[0]}={self.tag[1]}"
        out["on_exceed"] = self.on_exceed
        return out


def _opt_text(where: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where} must be a non-empty string, got {short_repr(value)}")
    return _clean(value.strip())


def _clean(text: str, limit: int = MAX_NAME) -> str:
    """Lone surrogates replaced and cut, as in records, session names and tags: the ledger
    (SQLite, PostgreSQL) cannot store a surrogate, and a scope must match the cleaned names
    (a session name of 600 characters is kept as its first ``MAX_NAME``)."""
    return clean_text(text, limit)


def _tag(where: str, value: Any) -> tuple[str, str] | None:
    if value is None:
        return None
    if isinstance(value, Mapping) and len(value) == 1:
        ((key, item),) = value.items()
        # A session's tags are text: a number is spelled out (TOML ``{customer = 42}``), but a
        # table, a list or a bool could never match one.
        plain = isinstance(item, str | int | float) and not isinstance(item, bool)
        value = f"{key}={item}" if isinstance(key, str) and plain else value
    if not isinstance(value, str) or "=" not in value or not value.split("=", 1)[0].strip():
        raise ValueError(
            f"{where} must be 'name=value' (e.g. 'customer=acme'), got {short_repr(value)}"
        )
    key, item = value.split("=", 1)
    return _clean(key.strip()), _clean(item.strip(), _sessions.MAX_NOTES)


def parse_budget(where: str, value: Any) -> Budget:
    if isinstance(value, Budget):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(
            f"{where} must be a table of limit_usd, period, scope and on_exceed, "
            f"got {short_repr(value)}"
        )
    spec = {str(key).replace("-", "_"): item for key, item in value.items()}
    unknown = sorted(set(spec) - set(_FIELDS))
    if unknown:
        raise ValueError(f"{where}: no such field {unknown[0]!r}; known: {', '.join(_FIELDS)}")
    if "limit_usd" not in spec:
        raise ValueError(f"{where}: limit_usd is required")
    limit = _sessions.usd_amount(f"{where}.limit_usd", spec["limit_usd"])
    period = spec.get("period", "day")
    if period not in PERIODS:
        raise ValueError(
            f"{where}.period must be one of {', '.join(PERIODS)}, got {short_repr(period)}"
        )
    on_exceed = spec.get("on_exceed", "raise")
    if on_exceed not in ("raise", "warn"):
        raise ValueError(
            f"{where}.on_exceed must be 'raise' or 'warn', got {short_repr(on_exceed)}"
        )
    provider = _opt_text(f"{where}.provider", spec.get("provider"))
    # Records name the provider by its id: "gemini" or "google-genai" (the names instrument()
    # takes) matched no call, and the budget never refused anything.
    provider = canonical(provider) if provider else None
    model = _opt_text(f"{where}.model", spec.get("model"))
    gemini = provider_of_sdk("google-genai")
    if model is not None and (provider == gemini or (provider is None and gemini_path(model))):
        # As calls' names are: a budget on the legacy SDK's or Vertex's path of a Gemini model
        # (``models/gemini-2.5-flash``) matched no call of it.
        model = short_model(model)
    budget = Budget(
        limit_usd=limit,
        period=period,
        provider=provider,
        model=model,
        session=_opt_text(f"{where}.session", spec.get("session")),
        tag=_tag(f"{where}.tag", spec.get("tag")),
        on_exceed=on_exceed,
    )
    name = _opt_text(f"{where}.name", spec.get("name")) or f"{period}:{budget.scope}"
    return Budget(**{**{f: getattr(budget, f) for f in _FIELDS if f != "name"}, "name": name})


def parse_budgets(value: Any) -> tuple[Budget, ...]:
    """Budgets from a list of tables (TOML ``[[tool.tokenmeter.budgets]]``, JSON, configure())."""
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, list | tuple):
        raise ValueError(f"must be a list of budgets, got {short_repr(value)}")
    budgets = tuple(parse_budget(f"budgets[{i}]", item) for i, item in enumerate(value))
    seen: set[str] = set()
    for budget in budgets:
        if budget.name in seen:
            raise ValueError(f"two budgets are named {budget.name!r}; give each a distinct name")
        seen.add(budget.name)
    return budgets


def parse_timezone(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(
            f"must be a time zone name such as 'UTC' or 'Europe/Paris', got {short_repr(value)}"
        )
    try:
        ZoneInfo(value.strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {short_repr(value)}") from None
    return value.strip()


def parse_warn_at(value: Any) -> tuple[float, ...]:
    if not isinstance(value, list | tuple):
        raise ValueError(
            f"must be a list of fractions of the limit, e.g. [0.5, 0.8, 1.0], got "
            f"{short_repr(value)}"
        )
    out = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int | float) or not 0 < item <= 10:
            raise ValueError(
                f"each fraction must be a number above 0 (1.0 = the limit), got {short_repr(item)}"
            )
        out.append(float(item))
    return tuple(sorted(set(out)))


def _next_start(period: str, start: datetime, zone: tzinfo) -> datetime:
    if period == "hour":
        return start + timedelta(hours=1)
    if period == "day":
        following = start.replace(tzinfo=None) + timedelta(days=1)
    elif period == "week":
        following = start.replace(tzinfo=None) + timedelta(days=7)
    else:
        following = (start.replace(tzinfo=None, day=28) + timedelta(days=4)).replace(day=1)
    return following.replace(tzinfo=zone)  # the zone's offset then (DST may have changed it)


def period_start(period: str, now: datetime, zone: tzinfo, session: Any) -> str:
    """The ledger's period key: the start of the calendar period containing ``now``."""
    if period == "total":
        return ""
    if period == "session":
        return str(session.id) if session is not None else ""
    try:
        local = now.astimezone(zone)
    except OverflowError:  # a record dated in year 1 or 9999, east or west of UTC: its UTC time
        local = now
    if period == "hour":
        start = local.replace(minute=0, second=0, microsecond=0)
    else:  # the first midnight, where the clock goes back from 01:00 to 00:00 (the Azores)
        start = local.replace(hour=0, minute=0, second=0, microsecond=0, fold=0)
        if period == "week":
            start -= timedelta(days=start.weekday())
        elif period == "month":
            start = start.replace(day=1)
    return start.isoformat()


# -- what configure() put in force ---------------------------------------------------------------
@dataclass
class _Config:
    budgets: tuple[Budget, ...]
    zone: tzinfo
    warn_at: tuple[float, ...]
    open_ledger: Any
    ledger: BudgetLedger | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: period -> (first second, first second of the next period, the period's key)
    periods: dict[str, tuple[float, float, str]] = field(default_factory=dict)
    #: The budgets a call's scope falls in, by session, then by (provider, model(s), refusing
    #: only): the same for every call of a model in a session, so worked out once. Kept while the
    #: session lives, and dropped when it ends (its tags and summary are not kept alive): a bound
    #: on every session's entries together made a server with more sessions open than it (long-
    #: lived websockets) work them out at every call, and take a ledger transaction for each.
    scopes: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], _Scope]] = field(
        default_factory=weakref.WeakKeyDictionary
    )
    #: Some budget is scoped to a tag: a record tagged by hand is matched on its own tags.
    tag_scoped: bool = False
    #: Some budget is scoped to a model: a check then also matches the names responses gave to
    #: the request's model (``models``).
    model_scoped: bool = False
    #: (provider, request model) -> the request model and the names responses gave it ("gpt-4o"
    #: answers as "gpt-4o-2024-08-06", the name records and reports show, so budgets are set on
    #: it): the check only knows the request's name. Learnt from records (``learn``).
    models: dict[tuple[str, str], tuple[str | None, ...]] = field(default_factory=dict)
    #: When configure() put it in force (``time.perf_counter``, the clock of ``Call.started``):
    #: a call made before it was admitted by an earlier configuration (``settle``).
    since: float = field(default_factory=time.perf_counter)

    def check_models(
        self, provider: str, request_model: str | None, model: Any = None
    ) -> tuple[str | None, ...]:
        """The model names a call about to be sent is known by. ``model``: the adapter's name
        for it, before any response (Gemini's ``models/gemini-2.5-flash`` is
        ``gemini-2.5-flash``, the name its records have: else only learnt from the first)."""
        if self.model_scoped and request_model is not None:
            known = self.models.get((provider, request_model))
            if (
                type(model) is str
                and model != request_model
                and (known is None or model not in known)
            ):
                self._add(provider, request_model, model)
                known = self.models.get((provider, request_model))
            if known is not None:
                return known
        return (request_model,)

    def learn(self, record: UsageRecord) -> None:
        """A record named the model as its response did: later checks of its request model
        match budgets on that name too (bounded: a few names per model, a few thousand models)."""
        request_model, name = record.request_model, record.model_name
        if request_model is None or name == request_model:
            return
        self._add(record.model_provider, request_model, name)

    def _add(self, provider: str, request_model: str, name: str) -> None:
        key = (provider, request_model)
        known = self.models.get(key, (request_model,))
        if name in known or len(known) > _MAX_RESPONSE_NAMES:
            return
        if len(self.models) >= 4096:
            self.models.clear()
        self.models[key] = (*known, name)

    def in_scope(
        self, provider: str, models: tuple[str | None, ...], session: Any, refusing: bool
    ) -> _Scope:
        """The budgets whose scope covers a call (only those that refuse: ``refusing``)."""
        owner = _NO_SESSION if session is None else session
        kinds = self.scopes.get(owner)
        if kinds is None:
            kinds = self.scopes[owner] = {}
        key = (provider, models, refusing)
        found = kinds.get(key)
        if found is None:
            found = _Scope(
                tuple(
                    b
                    for b in self.budgets
                    if (b.on_exceed == "raise" or not refusing)
                    and b.matches(provider, models, session)
                )
            )
            if len(kinds) >= _MAX_SESSION_SCOPES:  # a session given a new model per answer
                kinds.clear()
            kinds[key] = found
        return found

    def forget_session(self, session: Any) -> None:
        """Drop an ended session's entries of ``scopes``."""
        self.scopes.pop(_NO_SESSION if session is None else session, None)

    def rows(self, scope: _Scope, now: float, session: Any) -> _Rows:
        """The ledger rows (scope_key, period_start, limit) of the scope's budgets at ``now``,
        kept while ``now`` is inside all of their periods (a clock stepped back, by NTP or
        from a wrong date, goes back to the period it names, not on in a later one)."""
        current = scope.current
        if current.since <= now < current.until:
            return current
        rows = [(b.key, self.start_of(b.period, now, session), b.limit) for b in scope.ledgered]
        spans = [self.periods[b.period] for b in scope.ledgered if b.period in self.periods]
        marks = [(b, row[1]) for b, row in zip(scope.ledgered, rows, strict=True)]
        first = self.warn_at[0] if self.warn_at else math.inf
        floors = [b.floor(first) for b in scope.ledgered]
        since = max((span[0] for span in spans), default=-math.inf)
        until = min((span[1] for span in spans), default=math.inf)
        current = scope.current = _Rows(rows, marks, until, floors, since)
        return current

    def start_of(self, period: str, now: float, session: Any) -> str:
        """``period_start`` for the instant ``now`` (seconds since the epoch), cached for as
        long as the period lasts: formatting a date per budget per call is most of a check."""
        if period == "total":
            return ""
        if period == "session":
            return str(session.id) if session is not None else ""
        cached = self.periods.get(period)
        if cached is not None and cached[0] <= now < cached[1]:
            return cached[2]
        moment = datetime.fromtimestamp(now, UTC)
        text = period_start(period, moment, self.zone, session)
        start = datetime.fromisoformat(text)
        try:
            bounds = (start.timestamp(), _next_start(period, start, self.zone).timestamp())
        except OverflowError:  # the calendar's last period (year 9999): not kept
            return text
        self.periods[period] = (*bounds, text)
        return text

    def get_ledger(self) -> BudgetLedger:
        if self.ledger is None:
            with self.lock:
                if self.ledger is None:
                    self.ledger = self.open_ledger()
        assert self.ledger is not None
        return self.ledger


class _Rows(NamedTuple):
    """The ledger rows of a scope's budgets for the periods in force, until the first ends."""

    rows: list[tuple[str, str, float]]
    #: Each budget with the period start of its row.
    marks: list[tuple[Budget, str]]
    until: float
    #: Each row's spent USD from which its budget may warn (the first warning fraction of it).
    floors: list[float]
    #: The first second of the last of the periods to start: before it, the rows are others.
    since: float = -math.inf


class _Scope:
    """The budgets covering one kind of call, and what a check needs of them, worked out once."""

    __slots__ = ("budgets", "call_limit", "current", "group", "ledgered", "others", "per_call")

    def __init__(self, budgets: tuple[Budget, ...]) -> None:
        self.budgets = budgets
        self.per_call = tuple(b for b in budgets if b.period == "call")
        self.ledgered = tuple(b for b in budgets if b.period != "call")
        #: Ledger rows of ``ledgered`` for the current periods.
        self.current = _Rows([], [], -math.inf, [])
        #: The lease group of ``current.rows`` (``_leases.admit`` keeps it here): a call far
        #: from every limit is admitted in all of them at once (``_leases.take``).
        self.group: Any = None
        #: The smallest per-call limit (a ceiling above it takes the exact path).
        self.call_limit = min((b.limit for b in self.per_call), default=math.inf)
        #: Of a record's scope: its budgets other than those the call reserved in, by the
        #: scope of the check.
        self.others: dict[_Scope, tuple[Budget, ...]] = {}


class _NoSession:
    """Stands for "no session" among the sessions of ``_Config.scopes`` (weakly referred to)."""


_NO_SESSION = _NoSession()
#: Kinds of call (provider, model, refusing or not) whose scope a session keeps: past this many
#: (a server naming a new model per answer) its entries start over.
_MAX_SESSION_SCOPES = 256
#: Names a response may give one request model that a check matches (past these, no more are
#: learnt: a gateway routing one name to many models).
_MAX_RESPONSE_NAMES = 8
_config: _Config | None = None
#: What admitted a call made while no budget was configured: none of the budgets a later
#: configure() adds may charge it (``settle``).
_NO_BUDGETS = _Config((), UTC, (), None)
#: The process's ledger for ``budget_ledger = "memory"``, kept across configure() as
#: budgets.db is: a new one for each configure() started every period's spend over (an app
#: that configured twice, to add an ``on_alert`` callback, had its daily budget twice). Its
#: rows are keyed by budget and period start, so changed budgets keep rows of their own.
_memory_ledger = MemoryLedger()
#: ``_Config.models`` of every configuration: the names responses gave to request models are
#: the process's, kept across configure() (each configure() forgot them, so the first call of
#: each request model after it passed a budget on its response's name unchecked).
_response_names: dict[tuple[str, str], tuple[str | None, ...]] = {}
#: Warnings already given: (budget key, period start, fraction, limit: a limit raised in the
#: period warns again on the way to the new one); past ``_MAX_WARNED`` they start over.
_warned: set[tuple[str, str, float, float]] = set()
_MAX_WARNED = 10_000
_warned_lock = threading.RLock()  # re-entrant: a session ended by a collection inside it
#: The ledger and directory (alerts.jsonl) the warnings in ``_warned`` were given for: see
#: ``_ledger_identity``.
_warned_for: tuple[Any, ...] | None = None


def configure_budgets(
    budgets: Sequence[Budget],
    *,
    timezone: str = "UTC",
    warn_at: Sequence[float] = (0.5, 0.8, 1.0),
    directory: Path | None = None,
    ledger: str = "sqlite",
    sinks: Sequence[Any] = (),
) -> None:
    """Put budgets in force (from ``_runtime._apply``). The ledger is opened at the first check:
    a sink's ``budget_ledger()`` if one has it, else SQLite ``<directory>/budgets.db``."""
    global _config
    old = _config
    forget_prices()
    if not budgets:
        _config = None
    else:

        def open_ledger() -> BudgetLedger:
            for sink in sinks:
                make = getattr(sink, "budget_ledger", None)
                if callable(make):
                    found: BudgetLedger = make()
                    return found
            if ledger == "memory" or directory is None:
                return _memory_ledger
            return SQLiteLedger(Path(directory) / "budgets.db")

        _config = _Config(tuple(budgets), ZoneInfo(timezone), tuple(warn_at), open_ledger)
        _forget_warnings_of_another_ledger(_ledger_identity(directory, ledger, sinks))
        _config.model_scoped = any(b.model is not None for b in budgets)
        _config.models = _response_names
        _config.tag_scoped = any(b.tag is not None for b in budgets)
        _state.armed = True
    if old is not None and old.ledger is not None:
        try:  # waited for as configure() waits for the old sinks: up to exit_timeout
            with briefly(_pipeline.exit_timeout()):
                _leases.retire()  # calls in flight in them end there (``Lease.retired``)
        except Exception:
            logger.warning("tokenmeter: returning unused budget slices failed", exc_info=True)
        try:
            old.ledger.close()
        except Exception:
            logger.warning("tokenmeter: closing the budget ledger failed", exc_info=True)


def _ledger_identity(directory: Path | None, ledger: str, sinks: Sequence[Any]) -> tuple[Any, ...]:
    """What the budgets' spend and warnings are kept in: the ledger (its kind, or the sinks
    that bring one) and the directory of budgets.db and alerts.jsonl."""
    providers = tuple(id(sink) for sink in sinks if callable(getattr(sink, "budget_ledger", None)))
    return (providers, ledger, None if directory is None else str(directory))


def _forget_warnings_of_another_ledger(identity: tuple[Any, ...]) -> None:
    """Budgets pointed at another ledger or directory start their warnings over there: the
    warnings given for the old one kept a new budgets.db's 50/80/100 % silent (a test suite
    configuring a tmp directory per test saw them in its first test only). Given again in the
    same directory, alerts.jsonl still says which were given (``once``)."""
    global _warned_for
    with _warned_lock:
        if identity != _warned_for:
            _warned.clear()
            _warned_for = identity


def warn_fractions() -> tuple[float, ...]:
    return _config.warn_at if _config is not None else (0.5, 0.8, 1.0)


# -- the check -------------------------------------------------------------------------------------
#: Forks of this process so far: a reservation made before a fork is the parent's.
_forks = 0


class _Reservation:
    """What a call in flight holds (on the call: ``Call.budget``) until its record settles it."""

    __slots__ = (
        "admitted_by",
        "amount",
        "current",
        "estimate",
        "forks",
        "leases",
        "ref",
        "scope",
        "sessions",
    )

    def __init__(
        self,
        amount: float,
        scope: _Scope | None,
        sessions: Sequence[Any],
        estimate: Decimal = _ZERO,
        leases: Sequence[Any] = (),
        current: _Rows | None = None,
        admitted_by: _Config | None = None,
    ) -> None:
        self.amount = amount
        #: The budgets' configuration the call was admitted under: one ``configure()`` put in
        #: place since never charges it a budget of its own (``_settle``).
        self.admitted_by = admitted_by
        #: The scope whose budgets the amount is reserved in, the leases it is reserved in, and
        #: their rows (the periods the reservation was made in).
        self.scope = scope
        self.leases = leases
        self.current = current
        #: The enclosing sessions whose budgets hold ``estimate`` (on_exceed="raise").
        self.sessions = sessions
        #: The call's estimate; this module's ``_ZERO`` itself while ``amount`` is a ceiling on
        #: it not worked out yet (``check``'s fast path; ``_lower_ceilings`` works it out).
        self.estimate = estimate
        #: A weak reference to the call: when the call is gone without a record (it reported
        #: no usage, or named no model), its callback gives the reservation back.
        self.ref: Any = None
        self.forks = _forks

    def gone(self, ref: Any) -> None:
        """The call is gone without a record: its reservation is to be given back (a forked
        child's copy is the parent's to settle: if the child released it, it would free the
        parent's share of a ledger shared through SQLite). Only queued: see ``_orphans``."""
        _refs.pop(id(ref), None)
        if self.ref is ref and self.forks == _forks:
            self.ref = None
            _orphans.append(self)


#: The weak references of the calls in flight, by id. Kept here, outside the call: a reference
#: reachable only from a call that a garbage collection frees is freed with it, and its callback
#: never runs (a call in a reference cycle, e.g. through a traceback, would keep its reservation).
_refs: dict[int, Any] = {}
#: Reservations of calls gone without a record. A weak reference's callback may run inside any
#: section that holds our locks (a garbage collection starts at any allocation), so it takes
#: none: the next check, settlement, give-back or the exit gives them back.
_orphans: deque[_Reservation] = deque()


def _release_orphans() -> None:
    if _leases.busy():  # a collection inside a lease step: they wait for the next call
        return
    while _orphans:
        try:
            reservation = _orphans.popleft()
        except IndexError:  # another thread took the last one
            return
        _release(reservation)


def _hold(call: Any, reservation: _Reservation) -> None:
    reservation.ref = ref = weakref.ref(call, reservation.gone)
    _refs[id(ref)] = ref
    call.budget = reservation


def _unhold(call: Any, reservation: _Reservation) -> None:
    """A reservation held (``_hold``) but not taken: nothing to give back."""
    ref, reservation.ref = reservation.ref, None
    _refs.pop(id(ref), None)
    call.budget = None


def _forget_in_child() -> None:
    global _forks, _warned_lock, _owed_lock
    _forks += 1
    _warned_lock = threading.RLock()
    _owed_lock = threading.Lock()
    _orphans.clear()  # the parent's to give back
    _owed.clear()  # the parent's to settle
    _refs.clear()


def _release_orphans_at_exit() -> None:
    try:
        _release_orphans()
    except Exception:
        logger.warning("tokenmeter: giving back reservations at exit failed", exc_info=True)


os.register_at_fork(after_in_child=_forget_in_child)
# Registered after the leases' own exit hook (imported above), so it runs first: the slices
# given back at exit are then free of the orphans' reservations.
_pipeline.before_exit(_release_orphans_at_exit)


_ledger_failed = False


def _ledger_fault(what: str) -> None:
    global _ledger_failed
    if not _ledger_failed:
        _ledger_failed = True
        logger.error(
            "tokenmeter: the budget ledger failed (%s); calls are let through", what, exc_info=True
        )


def _guarded(session: Any) -> list[Any]:
    """The session and its ancestors that have a budget refusing calls."""
    nodes = []
    while session is not None:
        if session.budget_usd is not None and session.on_exceed == "raise":
            nodes.append(session)
        session = session.parent
    return nodes


def check(call: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """Before the request is sent: reserve its estimate in every budget in scope, or raise
    ``BudgetExceeded`` (after writing a "blocked" record). A fault of ours lets the call through.

    The common case is done here, in one frame: far from every limit, with no session budget
    refusing calls, a ceiling on the estimate found without tokenizing is reserved in the slices
    the scope's lease group already holds (never less than the estimate, so the bound holds).
    Anything else (near a limit, a scope's first call, media, a session budget) takes
    ``_check``: the estimate itself, through the ledger when a slice is short.

    A retrieval (``client.responses.retrieve(id)``, streamed or not) is never refused and
    reserves nothing: it sends nothing billable (its estimate is $0), and what it reads was
    billed at its create. Refused once a budget was spent, the output of a background response
    OpenAI had finished, and billed, could not be fetched, and its cost, which only the retrieve
    that finds it done records, stayed out of the records and the budgets. Its record settles
    like a ``record()``: it already happened."""
    if call.retrieval:
        return
    try:
        if _orphans:
            _release_orphans()
        session = call.session or _sessions.session_of_record()
        config = _config
        if config is not None:
            models = (
                config.check_models(call.provider, call.request_model, call.model)
                if config.model_scoped
                else (call.request_model,)
            )
            scope = config.in_scope(call.provider, models, session, True)
            group = scope.group
            if group is not None:
                node = session
                while node is not None:
                    if node.budget_usd is not None and node.on_exceed == "raise":
                        break
                    node = node.parent
                else:
                    bound = input_bound_usd(call.provider, call.request_model, call.request)
                    if bound is not None and bound <= scope.call_limit:
                        current, now = scope.current, time.time()
                        if not current.since <= now < current.until:
                            current = config.rows(scope, now, session)
                        # Held before it is taken: the ceiling is findable by a refused
                        # call's lowering from the step that reserves it.
                        reservation = _Reservation(bound, scope, (), _ZERO, (), current, config)
                        _hold(call, reservation)
                        rows, floors = current.rows, current.floors
                        if _leases.take(group, rows, bound, floors, reservation) is not None:
                            return
                        _unhold(call, reservation)
        # The estimate and the session sums in Python's default context, not the caller's (a
        # trapped Inexact would raise, and let the call through; a low precision would round).
        with localcontext(USD_CONTEXT):
            _check(call, args, kwargs, session)
    except BudgetExceeded:
        raise
    except Exception:
        from tokenmeter.providers._core import fault

        fault("the budget check")


def _check(call: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any], session: Any) -> None:
    config = _config
    provider = call.provider
    scope = (
        config.in_scope(
            provider, config.check_models(provider, call.request_model, call.model), session, True
        )
        if config is not None
        else None
    )
    guarded = _guarded(session)
    if (scope is None or not scope.budgets) and not guarded:
        if config is not None:  # admitted by no budget: none configure() adds may charge it
            call.budget = config
        return
    estimate = estimate_input_usd(
        provider, call.request_model, args, kwargs, call.request, call.operation
    )
    amount = float(estimate)
    if guarded:
        with _sessions._lock:
            for node in guarded:
                if node._ended_at is not None and node._pid != os.getpid():
                    # Ended before a fork (open ones are at the fork): this process's part
                    # begins, with none of the parent's reservations (as ``Session._add``).
                    node._inherit()
                # _summary: a budgeted session's calls are never made later (nothing to catch
                # up), and catching up under this lock would wait for a writer that waits for it.
                spent = node._summary.cost_usd + node._reserved
                # A $0 estimate (a model without a price) once spent to the limit too.
                if spent + estimate > node.budget_usd or (
                    not estimate and spent >= node.budget_usd
                ):
                    _block(
                        call,
                        session,
                        f"session:{node.name or node.id}",
                        f"session={node.name or node.id}",
                        node.budget_usd,
                        spent,
                        estimate,
                        "session",
                    )
            for node in guarded:
                node._reserved += estimate
    reservation = _Reservation(amount, None, guarded, estimate, admitted_by=config)
    if scope is not None and scope.budgets:
        assert config is not None
        try:
            _reserve(config, call, session, scope, estimate, reservation)
        except BudgetExceeded:
            _release(reservation)
            raise
        if reservation.scope is None and not guarded:
            # Only per-call budgets, or the ledger failed: nothing to settle but where; a
            # budget configure() adds meanwhile never admitted it (``_settle``).
            call.budget = config
            return
    _hold(call, reservation)


def _reserve(
    config: _Config,
    call: Any,
    session: Any,
    scope: _Scope,
    estimate: Decimal,
    reservation: _Reservation,
) -> None:
    for budget in scope.per_call:
        if estimate > budget.limit_usd:
            _block(
                call, session, budget.name, budget.scope, budget.limit_usd, _ZERO, estimate, "call"
            )
    if not scope.ledgered:
        return
    current = config.rows(scope, time.time(), session)
    try:
        ledger = config.ledger or config.get_ledger()
        seen = _leases.lowerings
        leases, refused, spent = _leases.admit(ledger, current.rows, reservation.amount, scope)
        # Each budget that refuses the call has its ceilings lowered, then the call is checked
        # again: lowered in the first one only, a call short in two budgets at once was refused
        # by the second; lowered once, the room it made could be taken by another thread's
        # call first, and a call that fitted was refused (49 of 50 made). A few rounds, each
        # lowering some ceilings for good, so a check ends. Checked again also when this one
        # found nothing to lower but another thread's lowering has made room since.
        for _ in range(_LOWERING_ROUNDS):
            if refused < 0:
                break
            short = spent + reservation.amount - leases[refused].limit
            lowered = _lower_ceilings(leases[refused], short)
            if not lowered and seen == _leases.lowerings:
                break
            seen = _leases.lowerings
            leases, refused, spent = _leases.admit(ledger, current.rows, reservation.amount, scope)
            if not lowered:
                break
    except Exception:
        _ledger_fault("reserve")
        return
    if refused >= 0:  # nothing was reserved
        budget = scope.ledgered[refused]
        _block(
            call,
            session,
            budget.name,
            budget.scope,
            budget.limit_usd,
            _usd(spent),
            estimate,
            budget.period,
        )
    reservation.scope, reservation.leases, reservation.current = scope, leases, current


#: How many times one check lowers the ceilings of calls in flight before it refuses a call
#: (``_reserve``): each round lowers some of them for good.
_LOWERING_ROUNDS = 8


def _lower_ceilings(lease: _leases.Lease, short: float) -> bool:
    """Bring this process's calls in flight in ``lease`` that hold a ceiling on their estimate
    (admitted far from the limit, ``check``) down to their estimates, until ``short`` USD (what
    the refused call lacked there) is room again: whether any was. Run before a call is refused
    there: the ceilings (3 to 125 times the estimate) of a fan-out's calls admitted early filled
    the room near the limit, and refused calls that fitted (41 of 50 made under a budget of 50).
    True also when another thread lowered them first (the room is there all the same).

    Each estimate is worked out on the refused call's thread (in asyncio: the event loop), so
    as few as needed: the largest ceilings first (their order needs no tokenizing), stopping
    once enough is freed, and none when even dropping every ceiling could not make the room
    (the budget is spent by what is settled and what others hold). Working out every call in
    flight made one check tokenize 99 prompts of 100 KB. The calls admitted far from the limit
    still skip it."""
    held = []
    for ref in list(_refs.copy().values()):
        call = ref()
        reservation = getattr(call, "budget", None)
        if (
            type(reservation) is not _Reservation
            or reservation.ref is not ref
            or reservation.sessions
            or lease not in reservation.leases
        ):
            continue  # settled, or being settled
        amount, estimate = reservation.amount, reservation.estimate
        # A ceiling; or an estimate worked out by another thread's lowering that has not
        # lowered it yet: left out as lowered, it refused a call that fitted.
        if estimate is _ZERO or amount > float(estimate):
            held.append((amount, call, reservation))
    if sum(amount for amount, _, _ in held) < short:
        return False
    held.sort(key=lambda item: item[0], reverse=True)
    lowered, freed = False, 0.0
    for amount, call, reservation in held:
        if freed > short:
            break
        estimate = reservation.estimate
        if estimate is _ZERO:
            try:
                estimate = estimate_input_usd(
                    call.provider, call.request_model, (), {}, call.request, call.operation
                )
            except Exception:
                continue  # unreadable now: it keeps its ceiling
            reservation.estimate = estimate
        # False when another thread lowered it (or its settlement began) meanwhile: the
        # room is made all the same.
        _leases.lower(reservation, reservation.leases, float(estimate))
        lowered = True
        freed += amount - float(estimate)
    return lowered


def _usd(amount: float) -> Decimal:
    """A ledger's float as the Decimal it stands for (float sums drift in the last digits)."""
    return Decimal(repr(round(amount, 10))).normalize()


def _release(reservation: _Reservation) -> None:
    """Give back a reservation (the call was refused, or ended without a record)."""
    if reservation.sessions:
        with _sessions._lock:
            for node in reservation.sessions:
                node._reserved = USD_CONTEXT.subtract(node._reserved, reservation.estimate)
        reservation.sessions = ()
    leases, reservation.leases, reservation.scope = reservation.leases, (), None
    if not leases:
        return
    try:
        _leases.release(leases, reservation)
    except Exception:
        _ledger_fault("settle")


def _block(
    call: Any,
    session: Any,
    name: str,
    scope: str,
    limit: Decimal,
    spent: Decimal,
    estimate: Decimal,
    period: str,
) -> None:
    from tokenmeter._record import emit

    error = BudgetExceeded(name, scope, limit, spent, estimate, period)
    call.done = True  # never sent: nothing else records it (not even an unfinished stream)
    # The name the call is known by, as its other records have it (the legacy Gemini SDK asks
    # for "models/gemini-2.5-flash": the adapter knows it as "gemini-2.5-flash").
    known = call.model if type(call.model) is str and call.model.strip() else None
    model = known or call.request_model or "unknown"
    emit(
        call.provider,
        model,
        Usage(),
        session,
        request_model=call.request_model,
        operation=call.operation,
        streamed=call.streamed,
        status="blocked",
        error=f"BudgetExceeded: {printable(name)}"[:500],  # a session's name, escaped
        estimated=True,
        priced=False,
    )
    raise error


# -- after a record --------------------------------------------------------------------------------
def settle(record: UsageRecord, session: Any, call: Any) -> None:
    """A record was made: its real cost replaces the call's reservation in every budget in scope,
    and crossing a warning fraction of a limit warns (once per budget and period).

    The common case is done here: the call reserved in its scope's budgets only (no session
    budget), and the record's scope holds no other budget; its lease group settles in one
    step (``_leases.settle_group``), which also tells which rows reached a warning floor."""
    try:
        if _orphans:
            _release_orphans()
        learning = _config
        if learning is not None and learning.model_scoped:
            learning.learn(record)
        reservation: _Reservation | _Config | None = getattr(call, "budget", None)
        if isinstance(reservation, _Config):  # admitted with nothing to reserve (``_check``)
            call.budget = None
            _settle(record, session, None, reservation)
            return
        if reservation is None and call is not None and not call.retrieval:
            config = _config
            if config is not None and call.started < config.since:
                # Made while no budget was configured (nothing was checked, so nothing says
                # so): a budget configure() added meanwhile never admitted it, and was charged
                # its whole cost, refusing the next calls it had room for.
                _settle(record, session, None, _NO_BUDGETS)
                return
        if reservation is not None:
            call.budget = None
            ref = reservation.ref
            if ref is None or reservation.forks != _forks:
                reservation = None  # made before a fork: the parent's
            else:
                _refs.pop(id(ref), None)
                reservation.ref = None  # the callback no longer releases it
                config = _config
                reserving = reservation.scope
                if config is not None and reserving is not None and not reservation.sessions:
                    scope = config.in_scope(
                        record.model_provider,
                        (record.request_model, record.model_name),
                        session,
                        False,
                    )
                    if scope.others.get(reserving) == ():
                        current = reservation.current
                        assert current is not None
                        try:
                            crossed = _leases.settle_group(
                                reserving.group,
                                reservation.leases,
                                reservation,
                                _charged(record, reservation.amount),
                                current.floors,
                            )
                        except Exception:
                            _ledger_fault("settle")
                            return
                        if crossed:
                            marks, fractions = current.marks, config.warn_at
                            for index, total in crossed:
                                budget, start = marks[index]
                                _maybe_warn(budget, start, total, fractions, record)
                        return
        _settle(record, session, reservation)
    except Exception:
        from tokenmeter.providers._core import fault

        fault("settling a budget")


def _charged(record: UsageRecord, reserved: float) -> float:
    """What a record charges its budgets: its cost. A call answered with usage that could not
    be read (negative, inconsistent counts from a proxy) was billed at a cost not known: it
    charges what was set aside for it, its input estimate or the ceiling of it that admitted
    the call far from the limit (charged $0, every such call went through a spent budget: 40 of
    40 where 9 fitted). A failed or unpriced call: nothing."""
    cost = record.estimated_cost_usd
    if cost is not None:
        return float(cost)
    return reserved if record.error == UNREADABLE_USAGE else 0.0


def _settle(
    record: UsageRecord,
    session: Any,
    reservation: _Reservation | None,
    admitted_by: _Config | None = None,
) -> None:
    """Settle ``record`` in its budgets. ``admitted_by``: the configuration that admitted a call
    with nothing to reserve (the reservation's own, when there is one)."""
    if reservation is not None and reservation.sessions:
        with _sessions._lock:
            for node in reservation.sessions:
                node._reserved = USD_CONTEXT.subtract(node._reserved, reservation.estimate)
    config = _config
    cost = record.estimated_cost_usd
    actual = _charged(record, reservation.amount if reservation is not None else 0.0)
    if config is None:  # budgets removed while the call was in flight: it ends in its leases
        if reservation is not None and reservation.leases:
            try:
                _leases.settle(reservation.leases, reservation, actual, [])
            except Exception:
                _ledger_fault("settle")
        return
    models = (record.request_model, record.model_name)
    if config.tag_scoped and record.tags != session.effective_tags:
        # Tagged by hand (record(tags=...)): the budgets of the tags it is filed under.
        scope = _Scope(
            tuple(
                b
                for b in config.budgets
                if b.matches(record.model_provider, models, session, record.tags)
            )
        )
    else:
        scope = config.in_scope(record.model_provider, models, session, False)
    reserving = reservation.scope if reservation is not None else None
    # The budgets reserved in settle in the period the reservation was made in (a call across
    # midnight); the others in scope (a record made by hand, a budget that only warns) in the
    # record's.
    others = scope.others.get(reserving) if reserving is not None else scope.budgets
    if others is None:
        assert reserving is not None
        # By key: a budget configure() gave a new limit or on_exceed is another object for the
        # same ledger row, and was charged the call a second time there.
        ledgered = {b.key for b in reserving.ledgered}
        others = scope.others[reserving] = tuple(b for b in scope.budgets if b.key not in ledgered)
    if reservation is not None:
        # None: checked while no budget was configured (a session's budget only).
        admitted_by = reservation.admitted_by or _NO_BUDGETS
    if admitted_by is not None and admitted_by is not config:
        # A call in flight across configure() ends in the budgets it was admitted in (docs):
        # a budget added meanwhile, which never admitted it, was charged its whole cost, and
        # refused the next calls.
        admitted = {budget.key for budget in admitted_by.budgets}
        others = tuple(budget for budget in others if budget.key in admitted)
    rows: list[tuple[str, str]] = []
    budgets: list[Budget] = []
    now = 0.0
    for budget in others:
        if budget.period == "call":
            if cost is not None:
                _maybe_warn(budget, "", actual, config.warn_at, record)
            continue
        now = now or record.timestamp.timestamp()
        rows.append((budget.key, config.start_of(budget.period, now, session)))
        budgets.append(budget)
    if reserving is None and not rows:
        return
    assert reservation is not None or reserving is None
    try:
        seen, leased = _leases.settle(
            reservation.leases if reservation is not None else (),
            reservation if reservation is not None else 0.0,
            actual,
            rows,
        )
    except Exception:
        _ledger_fault("settle")
        return
    fractions = config.warn_at
    settled: Sequence[tuple[Budget, str]] = ()
    if reserving is not None and reservation is not None and reservation.current is not None:
        settled = reservation.current.marks
    if rows:
        more = list(settled)
        direct = []
        for budget, row, took in zip(budgets, rows, leased, strict=True):
            if took:
                more.append((budget, row[1]))
            else:
                direct.append((budget, row[1]))
        if direct and actual > 0:  # rows this process holds no lease on: settled at once
            try:
                ledger = config.ledger or config.get_ledger()
                seen += _settle_direct(ledger, [(b.key, start) for b, start in direct], actual)
            except Exception:
                _ledger_fault("settle")
                return
            more += direct
        settled = more
    if not fractions:
        return
    first = fractions[0]
    for (budget, start), total in zip(settled, seen, strict=True):
        if total >= budget.floor(first):
            _maybe_warn(budget, start, total, fractions, record)


#: Real costs the ledger could not take at once (down, locked, its disk full), by row
#: (scope_key, period_start): the next direct settlement adds them, or the exit. A budget that
#: only warns holds no lease to keep them in: its spend of a ledger's outage was lost, and its
#: warnings never came.
_owed: dict[tuple[str, str], float] = {}
_owed_lock = threading.Lock()


def _settle_direct(ledger: Any, rows: list[tuple[str, str]], actual: float) -> list[float]:
    """Add ``actual`` to the settled USD of each ledger row of ``rows``, with whatever is owed:
    the spent USD of each. What the ledger did not take is owed, and its error raised."""
    with _owed_lock:
        owed = _owed.copy()
        _owed.clear()
    amounts = dict.fromkeys(rows, actual)
    for row, amount in owed.items():
        amounts[row] = amounts.get(row, 0.0) + amount
    items = [(key, start, 0.0, amount) for (key, start), amount in amounts.items()]
    seen: list[float] = []
    try:
        if getattr(ledger, "settle_many", None) is not None:  # one transaction: all or none
            seen = settle_all(ledger, items)
        else:
            for item in items:
                seen.append(ledger.settle(*item))
    except BaseException:
        with _owed_lock:
            for key, start, _, amount in items[len(seen) :]:
                _owed[(key, start)] = _owed.get((key, start), 0.0) + amount
        raise
    return seen[: len(rows)]


def _settle_owed_at_exit() -> None:
    config = _config
    if not _owed or config is None:
        return
    try:
        _settle_direct(config.ledger or config.get_ledger(), [], 0.0)
    except Exception:
        logger.error(
            "tokenmeter: the budget ledger did not take the spend of %d budget rows at exit",
            len(_owed),
            exc_info=True,
        )


_pipeline.before_exit(_settle_owed_at_exit)


def _maybe_warn(
    budget: Budget, start: str, spent: float, fractions: tuple[float, ...], record: UsageRecord
) -> None:
    limit = budget.limit
    for fraction in fractions:
        if spent < budget.floor(fraction) or (limit == 0 and spent == 0):
            break
        key = (budget.key, start, fraction, limit)
        with _warned_lock:
            if key in _warned:
                continue
            if len(_warned) >= _MAX_WARNED:  # past periods' (an hourly budget adds 3 an hour)
                _warned.clear()  # a period's warnings are posted once: alerts.jsonl knows them
            _warned.add(key)
        from tokenmeter.guardrails import _alerts

        _alerts.post(
            _alerts.Alert(
                time=record.timestamp,
                rule=f"budget_{round(fraction * 100)}pct",
                scope=f"budget:{budget.name} ({budget.scope}, per {budget.period}"
                + (f" from {start}" if start else "")
                + ")",
                observed=_alerts.shown(spent),
                baseline=None,
                threshold=_alerts.shown(fraction * float(budget.limit_usd)),
                record_id=record.id,
                session_id=record.session_id,
                message=f"budget {budget.name!r} has reached {round(fraction * 100)}% of its "
                f"${budget.limit_usd} limit: ${spent:.6f} spent",
            ),
            once=budget.period != "call",  # a period's warnings: once, across restarts too
            scope_per_call=budget.period in ("session", "call"),
        )


def session_ended(session: Any) -> None:
    """Unused slices go back to the ledger when a root session ends (and a session's own
    period, its id, is over when it ends: the warnings given in it are forgotten, or a server
    would keep those of every session it ran)."""
    try:
        _release_orphans()
    except Exception:
        _ledger_fault("settle")
    _give_back_briefly(session)
    config = _config
    if config is None:
        return
    config.forget_session(session)
    if not any(b.period == "session" for b in config.budgets) or _period_goes_on(session):
        return
    period_ended = getattr(config.ledger, "period_ended", None)
    if period_ended is not None:
        try:
            # the memory ledger keeps the latest ended periods, and those open again
            period_ended(str(session.id), _sessions.open_ids())
        except Exception:
            _ledger_fault("settle")
    if _warned:  # its period is over: its warnings need not be kept
        start = str(session.id)
        with _warned_lock:
            for budget in config.budgets:
                if budget.period == "session":
                    for fraction in config.warn_at:
                        _warned.discard((budget.key, start, fraction, budget.limit))


def _period_goes_on(session: Any) -> bool:
    """Whether another session of this process open under the ended one's id still spends in
    its period (``period = "session"`` rows are keyed by the id): forgetting them when one of
    two threads' sessions of a job ended gave the other the whole limit again. Asked only when
    this process keeps something of the period: the memory ledger's rows (``period_ended``: it
    keeps only the latest ended periods' rows; a shared ledger keeps them all), or warnings
    given in it."""
    config = _config
    keeps_rows = config is not None and hasattr(config.ledger, "period_ended")
    return (keeps_rows or bool(_warned)) and _sessions.id_in_use(str(session.id))


def _give_back_briefly(session: Any) -> None:
    """A session's unused slices go back to the ledger, waiting for it as the idle keeper does
    (``BRIEF_S``): with budgets.db write-locked by another program, leaving a ``with`` block
    waited SQLite's busy timeout (30 s; an asyncio app's whole event loop stood still). A
    ledger that keeps it waiting longer leaves the slices with the leases: the keeper gives
    them back once the ledger answers, or the exit does."""
    try:
        _leases.give_back(str(session.id), brief=True)
        if session.parent is None:
            _leases.give_back(brief=True)
    except Exception:
        logger.debug("tokenmeter: unused budget slices kept for later", exc_info=True)


def session_renamed() -> None:
    """A session was renamed as it goes (``job.name = ...``): which budgets cover the calls of it
    and of its nested sessions is worked out again (it was kept from their first call)."""
    config = _config
    if config is not None and any(b.session is not None for b in config.budgets):
        config.scopes.clear()


def give_back() -> None:
    """Return every unused slice of a budget to the ledger now (tests, benchmarks, reports)."""
    _release_orphans()
    _leases.give_back()


def reset() -> None:
    """Forget budgets, what the memory ledger kept, the model names learnt and warnings given
    (tests)."""
    global _config, _ledger_failed, _memory_ledger, _warned_for
    configure_budgets(())
    _memory_ledger = MemoryLedger()
    _response_names.clear()
    with _warned_lock:
        _warned.clear()
        _warned_for = None
    with _owed_lock:
        _owed.clear()
    _ledger_failed = False
