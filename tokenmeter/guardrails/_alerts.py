"""Usage alerts, computed on a writer thread (the alert sink), never on the caller's.

Rules compare what was observed with an absolute ``threshold`` and/or ``multiplier`` x a rolling
baseline (an exponentially weighted mean over about ``window`` samples, kept incrementally per
model, or per session name for session totals; it only judges after ``warmup`` samples):

- ``call_tokens`` / ``call_cost``: one call's total tokens / USD, baseline per model;
- ``session_cost``: a finished session's USD (nested included), baseline per session name; one
  sample a session, kept to its latest total (calls recorded after it ended add to it);
- ``spend_rate``: USD spent in the trailing hour, baseline over completed hours.

An alert for a (rule, scope) is not repeated within ``cooldown_s`` seconds. Alerts (budget
warnings included) go to the ``tokenmeter`` logger, to ``<directory>/alerts.jsonl`` (one JSON
object a line) and to the ``on_alert`` callbacks. The calls a callback makes (an LLM asked to
summarise the alert) are recorded but not judged: an alert about them would call it again.
A budget warning their spending gives about a session's budget (or a budget per session or per
call) is logged and written, but not handed to the callbacks either: a session the callback
opens under a budget would warn anew each time. The same holds for the work a callback hands to
another thread or pool.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from tokenmeter import _pipeline
from tokenmeter._fork import renew_after_fork
from tokenmeter._models import SessionInfo, UsageRecord
from tokenmeter.guardrails._hooks import FailureLog, _in_callback, not_awaited
from tokenmeter.pricing._overrides import short_repr
from tokenmeter.sinks._files import append_line, refuse_irregular

__all__ = ["RULES", "Alert", "AlertRule", "AlertSink", "parse_alert_rules", "post"]

logger = logging.getLogger("tokenmeter")
_callback_failures = FailureLog("an on_alert callback")

RULES = ("call_tokens", "call_cost", "session_cost", "spend_rate")
_FIELDS = ("rule", "multiplier", "threshold", "warmup", "window", "cooldown_s")


@dataclass(frozen=True, slots=True)
class AlertRule:
    """When to raise an alert (see the module docstring for the rules)."""

    rule: str
    multiplier: float | None = 3.0
    threshold: float | None = None
    warmup: int = 20
    window: int = 50
    cooldown_s: float = 300.0

    def as_setting(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in _FIELDS if getattr(self, f) is not None}


#: How many alert writers are running ``on_alert`` callbacks now: a record submitted meanwhile,
#: from any thread, may be a callback's call (see ``_pipeline.callback_submitted``).
_callbacks_running = 0
#: A child forked while a callback ran has no writer to bring it back to 0: every flush() there
#: counted other threads' records as a callback's and made all its rounds.
renew_after_fork(globals(), "_callbacks_running", int)


def shown(amount: Any) -> Any:
    """A float ``amount`` (a budget's spend or threshold) to 12 significant digits; anything else
    as it is. Budgets add costs as floats, whose last digits are noise (five calls of $0.00021
    made 0.0010500000000000002): an alert says what a person would add up (0.00105). Read back
    from alerts.jsonl the same way, so that a warning an older version wrote with the noise is
    known as given (once per period) to one that writes it without."""
    return float(f"{amount:.12g}") if type(amount) is float else amount


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert, as ``alerts.jsonl`` stores it and ``on_alert`` callbacks receive it."""

    time: datetime
    rule: str
    scope: str
    observed: float
    baseline: float | None
    threshold: float | None
    message: str
    record_id: str | None = None
    session_id: str | None = None

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "time": self.time.astimezone(UTC).isoformat(timespec="milliseconds")[:23] + "Z",
            "rule": self.rule,
            "scope": self.scope,
            "observed": self.observed,
            "baseline": self.baseline,
            "threshold": self.threshold,
            "record_id": self.record_id,
            "session_id": self.session_id,
            "message": self.message,
        }


def _number(where: str, value: Any, *, whole: bool = False, minimum: float = 0) -> Any:
    """A finite number, as a float too: an int past a float's range (JSON has them) overflowed
    in ``float()`` here, or in the writer's baseline arithmetic."""
    ok = not isinstance(value, bool) and isinstance(value, int if whole else int | float)
    if ok and isinstance(value, int) and not -(2**1023) < value < 2**1023:
        ok = False
    if not ok or not value >= minimum or value != value or value == float("inf"):
        kind = "a whole number" if whole else "a number"
        raise ValueError(f"{where} must be {kind} of at least {minimum:g}, got {short_repr(value)}")
    return value


def parse_alert_rule(where: str, value: Any) -> AlertRule:
    if isinstance(value, AlertRule):
        return value
    if isinstance(value, str):
        value = {"rule": value}
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} must be a table with a rule, got {short_repr(value)}")
    spec = {str(key).replace("-", "_"): item for key, item in value.items()}
    unknown = sorted(set(spec) - set(_FIELDS))
    if unknown:
        raise ValueError(f"{where}: no such field {unknown[0]!r}; known: {', '.join(_FIELDS)}")
    rule = spec.get("rule")
    if rule not in RULES:
        raise ValueError(f"{where}.rule must be one of {', '.join(RULES)}, got {short_repr(rule)}")
    multiplier = spec.get("multiplier", None if "threshold" in spec else 3.0)
    if multiplier is not None:
        multiplier = float(_number(f"{where}.multiplier", multiplier, minimum=1))
    threshold = spec.get("threshold")
    if threshold is not None:
        threshold = float(_number(f"{where}.threshold", threshold))
    if multiplier is None and threshold is None:
        raise ValueError(f"{where}: give a multiplier, a threshold or both")
    return AlertRule(
        rule=rule,
        multiplier=multiplier,
        threshold=threshold,
        warmup=_number(f"{where}.warmup", spec.get("warmup", 20), whole=True),
        window=_number(f"{where}.window", spec.get("window", 50), whole=True, minimum=1),
        cooldown_s=float(_number(f"{where}.cooldown_s", spec.get("cooldown_s", 300.0))),
    )


def parse_alert_rules(value: Any) -> tuple[AlertRule, ...]:
    if isinstance(value, Mapping | str):
        value = [value]
    if not isinstance(value, list | tuple):
        raise ValueError(f"must be a list of alert rules, got {short_repr(value)}")
    return tuple(parse_alert_rule(f"alerts[{i}]", item) for i, item in enumerate(value))


class _Baseline:
    """An exponentially weighted mean, updated in O(1) per sample."""

    __slots__ = ("alpha", "count", "mean")

    def __init__(self, window: int) -> None:
        self.alpha = 2.0 / (window + 1)
        self.count = 0
        self.mean = 0.0

    def add(self, value: float) -> int:
        """Add a sample; its number (1 for the first)."""
        self.count += 1
        self.mean = value if self.count == 1 else self.mean + self.alpha * (value - self.mean)
        return self.count

    def revise(self, number: int, old: float, new: float) -> None:
        """Sample ``number``, taken as ``old``, is ``new``: the mean as if it had been all along.
        Its weight in the mean is alpha x (1 - alpha) for each later sample (the first's has
        no alpha: it was the mean)."""
        weight = (1 - self.alpha) ** (self.count - number)
        if number > 1:
            weight *= self.alpha
        self.mean += weight * (new - old)


@dataclass(slots=True)
class _SessionSample:
    """A session's sample in a ``session_cost`` baseline, kept to its latest total: a session
    is handed over again for each call recorded after it ended (a stream read after its block,
    pool work that outlives it), and each had been taken as a sample of its own (identical
    sessions alerted, at their partial totals)."""

    baseline: _Baseline
    number: int
    cost: float
    #: What it is judged against, from the sessions before it: with the baseline as it was.
    limit: float | None
    base_value: float | None
    alerted: bool = False


# -- delivery -----------------------------------------------------------------------------------
_active: AlertSink | None = None
#: Ids of records made by callbacks, not yet seen by the alert sink: past this many (records
#: that never reached it) the set starts over.
_MAX_OWN = 10_000


def post(alert: Alert, *, once: bool = False, scope_per_call: bool = False) -> None:
    """Deliver an alert made on another thread (a budget warning): queued for the alert sink's
    writer, which delivers it with the next batch; logged at once when there is no alert sink.
    ``once``: not delivered if alerts.jsonl has its (rule, scope, threshold) already (a budget
    warning given by an earlier process in the same period, at the same limit: its scope names
    the period). ``scope_per_call``: the warning's scope may be new at each call (a session's
    budget, a per-session or per-call one): about a call an ``on_alert`` callback made, it is
    the callback's own (see ``_callbacks_own``). A day's or a month's warnings are given three
    times a period at most: those the callback's calls cross are handed to it as any other."""
    own = scope_per_call and _callbacks_own(alert)
    sink = _active
    if sink is None and _pipeline._pipeline is None:
        # configure() replaced the sinks and the new ones are made at the first record, which
        # posts its warnings before it is submitted: make them now, the alert sink among them
        try:
            _pipeline._get()
        except Exception:  # a setting refused at first use: the record's own submit says so
            logger.debug("tokenmeter: no sinks for an alert", exc_info=True)
        sink = _active
    if sink is None:
        logger.warning("tokenmeter alert: %s", alert.message)
        return
    sink.pending.append(_Pending(alert, once, own))


def _callbacks_own(alert: Alert) -> bool:
    """Whether ``alert`` is about a call an ``on_alert`` callback made: its record is settled
    (and its warnings posted) on the callback's thread, or was seen submitted from it. Handed
    to the callback, such a warning ran it again: a summarising callback that opens a session
    under a budget crossed that session's warning with its own call, each time a new session,
    a new paid call and a new warning, without end."""
    if _in_callback.get():
        return True
    sink = _active
    return sink is not None and alert.record_id is not None and alert.record_id in sink._own


class _Pending(NamedTuple):
    """An alert waiting for the writer: ``once`` (see ``post``), and ``own``: about an
    ``on_alert`` callback's own call, so logged and written but not handed to the callbacks."""

    alert: Alert
    once: bool
    own: bool = False


class AlertSink:
    """A sink that writes nothing of the records: it judges them against the alert rules (on its
    writer thread) and delivers the alerts."""

    def __init__(
        self,
        rules: Sequence[AlertRule],
        path: Path,
        callbacks: Sequence[Callable[[Alert], object]] = (),
    ) -> None:
        self.rules = tuple(dict.fromkeys(rules))  # a rule given twice would judge twice
        self.path = path
        self.callbacks = tuple(callbacks)
        self.pending: deque[_Pending] = deque()
        #: (rule, scope, threshold) of the alerts posted ``once`` that were given (this process
        #: or an earlier one: the tail of alerts.jsonl). The threshold: a budget's limit raised
        #: in the period warns again on the way to the new one.
        self._given: set[tuple[str, str, Any]] = set()
        self._baselines: dict[tuple[AlertRule, str], _Baseline] = {}
        #: The sessions sampled by each session_cost rule, the latest last (``_MAX_SCOPES``).
        self._session_samples: dict[tuple[AlertRule, str], _SessionSample] = {}
        self._last: dict[tuple[str, str], datetime] = {}
        #: The trailing hour's spend, by the second (in the order the records came).
        self._hour: deque[tuple[datetime, float]] = deque()
        self._hour_sum = 0.0
        #: The latest record time seen: the trailing hour ends there (records arrive a little
        #: out of order, and a backfill far out of it), unless it is ahead of the clock.
        self._newest: datetime | None = None
        self._bucket: datetime | None = None
        self._bucket_sum = 0.0
        self._lock = threading.Lock()
        self._seeded = False
        #: Ids of the records the callbacks made: not judged (see ``_note_own``).
        self._own: set[str] = set()
        self._observing = False
        #: Lines alerts.jsonl refused (its disk full, made read-only, a directory in its
        #: place), in order: written before the next ones once it takes them again.
        self._unwritten: deque[bytes] = deque(maxlen=_MAX_UNWRITTEN)
        #: The rules and callbacks of a later configuration (``update``), for the writer to
        #: take at its next batch; its own small lock, never held while a callback runs.
        self._update: tuple[tuple[AlertRule, ...], tuple[Callable[[Alert], object], ...]] | None
        self._update = None
        self._update_lock = threading.Lock()

    def activate(self) -> None:
        global _active
        _active = self
        if self.callbacks and not self._observing:
            self._observing = True
            _pipeline.add_submit_observer(self._note_own)

    def update(
        self, rules: Sequence[AlertRule], callbacks: Sequence[Callable[[Alert], object]]
    ) -> None:
        """Take the rules and callbacks of a ``configure()`` that keeps this sink (the same
        alerts.jsonl): a new sink at each configure() started every baseline and the trailing
        hour of spend afresh, and dropped the alerts alerts.jsonl had refused. The writer takes
        them at its next batch: taken here under ``_lock``, configure() would wait for an
        ``on_alert`` callback running on the writer (a slow one holds it for seconds)."""
        with self._update_lock:
            self._update = (tuple(dict.fromkeys(rules)), tuple(callbacks))
        if callbacks and not self._observing:
            self._observing = True
            _pipeline.add_submit_observer(self._note_own)
        elif not callbacks and self._observing:
            _pipeline.remove_submit_observer(self._note_own)
            self._observing = False

    def _take_update(self) -> None:
        """Under ``_lock``: put the rules and callbacks ``update`` left in force. The baselines
        of a rule still configured go on (the key is the rule itself: a rule changed in any
        field starts afresh), and the trailing hour always: it is the process's spend."""
        with self._update_lock:
            update, self._update = self._update, None
        if update is None:
            return
        rules, self.callbacks = update
        if {rule.rule for rule in rules} - {rule.rule for rule in self.rules}:
            self._seeded = False  # a new kind of rule: its cooldowns from alerts.jsonl
        self.rules = rules
        kept = set(rules)
        self._baselines = {key: value for key, value in self._baselines.items() if key[0] in kept}
        self._session_samples = {
            key: value for key, value in self._session_samples.items() if key[0] in kept
        }

    def _note_own(self, item: object) -> None:
        """On the submitting thread: remember a record an ``on_alert`` callback made. Judged, a
        call over the threshold would alert and run the callback again: a loop of paid calls."""
        if _in_callback.get() and type(item) is UsageRecord:
            if len(self._own) >= _MAX_OWN:
                self._own.clear()
            self._own.add(item.id)
        if _callbacks_running:  # from any thread (a worker the callback hands its call to)
            _pipeline.callback_submitted()  # a flush() under way waits for this record too

    # -- the Sink protocol ----------------------------------------------------------------------
    def write(self, records: Sequence[UsageRecord]) -> None:
        with self._lock:
            self._take_update()
            self._seed()
            for record in records:
                if record.id in self._own:
                    self._own.discard(record.id)  # an on_alert callback's own call
                elif record.status == "ok" or (record.status == "error" and record.total_tokens):
                    # Not samples: a refused call, a failed one that used nothing (a burst of
                    # 429s taught a baseline zeros: the next ordinary call alerted)
                    self._judge_record(record)
            self._deliver_pending()

    def write_sessions(self, sessions: Sequence[SessionInfo]) -> None:
        with self._lock:
            self._take_update()
            self._seed()
            for info in sessions:
                if info.status != "active" and info.calls:
                    self._judge_session(info)
            self._deliver_pending()

    def flush(self) -> None:
        with self._lock:
            self._take_update()
            self._seed()
            self._deliver_pending()

    def close(self) -> None:
        global _active
        if self._observing:
            _pipeline.remove_submit_observer(self._note_own)
            self._observing = False
        self.flush()
        if self._unwritten:
            logger.error(
                "tokenmeter: %d alerts could not be written to %s", len(self._unwritten), self.path
            )
            self._unwritten.clear()
        if _active is self:
            _active = None

    # -- rules ---------------------------------------------------------------------------------
    def _judge_record(self, record: UsageRecord) -> None:
        cost = float(record.estimated_cost_usd) if record.estimated_cost_usd is not None else None
        rate: tuple[bool, float | None] | None = None  # the trailing hour, counted once
        for rule in self.rules:
            if rule.rule == "call_tokens":
                self._judge(
                    rule,
                    f"model={record.model_name}",
                    float(record.total_tokens),
                    record.timestamp,
                    record.id,
                    record.session_id,
                    "tokens",
                )
            elif rule.rule == "call_cost" and cost is not None:
                self._judge(
                    rule,
                    f"model={record.model_name}",
                    cost,
                    record.timestamp,
                    record.id,
                    record.session_id,
                    "USD",
                )
            elif rule.rule == "spend_rate" and cost is not None:
                if rate is None:
                    rate = self._count_spend(record, cost)
                self._spend_rate(rule, record, *rate)

    def _judge_session(self, info: SessionInfo) -> None:
        """One sample a session, at its latest total; an alert when that first passes its
        limit."""
        cost = float(info.cost_usd)
        scope = f"session={info.name or '(unnamed)'}"
        for rule in self.rules:
            if rule.rule != "session_cost":
                continue
            sample = self._session_samples.get((rule, info.id))
            if sample is None:
                baseline = self._baseline(rule, scope)
                limit, base_value = self._limit(rule, baseline)
                number = baseline.add(cost)
                sample = _SessionSample(baseline, number, cost, limit, base_value)
                samples = self._session_samples
                if len(samples) >= _MAX_SCOPES:  # the oldest: ended long before, if ever late
                    del samples[next(iter(samples))]
                samples[(rule, info.id)] = sample
            elif cost != sample.cost:  # handed over again: a call recorded after it ended
                sample.baseline.revise(sample.number, sample.cost, cost)
                sample.cost = cost
            if not sample.alerted and sample.limit is not None and cost > sample.limit:
                sample.alerted = True
                when = info.ended_at or info.started_at
                self._alert(rule, scope, cost, sample.limit, sample.base_value, when, None, info.id)

    def _judge(
        self,
        rule: AlertRule,
        scope: str,
        observed: float,
        when: datetime,
        record_id: str | None,
        session_id: str | None,
        unit: str,
        *,
        learn: bool = True,
    ) -> None:
        baseline = self._baseline(rule, scope)
        limit, base_value = self._limit(rule, baseline)
        if learn:
            baseline.add(observed)
        if limit is not None and observed > limit:
            self._alert(rule, scope, observed, limit, base_value, when, record_id, session_id, unit)

    def _baseline(self, rule: AlertRule, scope: str) -> _Baseline:
        baseline = self._baselines.get((rule, scope))  # each rule's own (its window, warmup)
        if baseline is None:
            if len(self._baselines) >= _MAX_SCOPES:  # a name per request: start over
                self._baselines.clear()
            baseline = self._baselines[(rule, scope)] = _Baseline(rule.window)
        return baseline

    def _limit(self, rule: AlertRule, baseline: _Baseline) -> tuple[float | None, float | None]:
        """The value past which the rule fires (None: it cannot yet), and the baseline's mean
        once it is warm."""
        warm = baseline.count >= rule.warmup and baseline.count > 0
        limits = []
        if rule.threshold is not None:
            limits.append(rule.threshold)
        if rule.multiplier is not None and warm:
            limits.append(rule.multiplier * baseline.mean)
        return (min(limits) if limits else None), (baseline.mean if warm else None)

    def _alert(
        self,
        rule: AlertRule,
        scope: str,
        observed: float,
        limit: float,
        base_value: float | None,
        when: datetime,
        record_id: str | None,
        session_id: str | None,
        unit: str = "USD",
    ) -> None:
        """Queue an alert, unless one of (rule, scope) is cooling down."""
        last = self._last.get((rule.rule, scope))
        # Quiet near the last alert on either side: a record a little older (another thread's)
        # as one a little newer; an alert dated far ahead (a clock set wrong) silences nothing.
        if last is not None and abs((when - last).total_seconds()) < rule.cooldown_s:
            return
        if len(self._last) >= _MAX_SCOPES and (rule.rule, scope) not in self._last:
            self._last.clear()
        self._last[(rule.rule, scope)] = when
        shown = f"{observed:,.0f} tokens" if unit == "tokens" else f"${observed:.6f}"
        self.pending.append(
            _Pending(
                Alert(
                    time=when,
                    rule=rule.rule,
                    scope=scope,
                    observed=observed,
                    baseline=base_value,
                    threshold=limit,
                    record_id=record_id,
                    session_id=session_id,
                    message=f"high usage: {rule.rule} {shown} for {_shown_scope(scope)} exceeds "
                    f"{limit:,.6g} " + (f"({multiplier_text(rule, base_value)})"),
                ),
                False,
            )
        )

    def _count_spend(self, record: UsageRecord, cost: float) -> tuple[bool, float | None]:
        """Add a record's cost to the trailing hour (once, whatever the number of spend_rate
        rules): whether it is in it, and the spend of the clock hour it completed, if any."""
        when = record.timestamp
        newest = self._newest
        if newest is not None and (newest - when).total_seconds() > 3600:
            if (newest - datetime.now(UTC)).total_seconds() <= 3600:
                return False, None  # made earlier (a backfill): not in the trailing hour
            # The newest is dated ahead of the clock (a clock stepped back since, a wrong
            # timestamp): ending the trailing hour there would leave every later record out.
            self._newest = newest = None
            self._hour.clear()
            self._hour_sum = 0.0
            self._bucket, self._bucket_sum = None, 0.0
        if newest is None or when > newest:
            self._newest = newest = when
        bucket = when.replace(minute=0, second=0, microsecond=0)
        completed = None
        if self._bucket is None:
            self._bucket = bucket
        elif bucket > self._bucket:
            completed = self._bucket_sum
            self._bucket, self._bucket_sum = bucket, 0.0
        self._bucket_sum += cost
        # By the second: a call each would grow with the call rate (490 MB at 1,000 a second).
        second = when.replace(microsecond=0)
        hour = self._hour
        if hour and hour[-1][0] == second:
            hour[-1] = (second, hour[-1][1] + cost)
        else:
            hour.append((second, cost))
        self._hour_sum += cost
        while self._hour and (newest - self._hour[0][0]).total_seconds() > 3600:
            self._hour_sum -= self._hour.popleft()[1]
        return True, completed

    def _spend_rate(
        self, rule: AlertRule, record: UsageRecord, counted: bool, completed: float | None
    ) -> None:
        key = (rule, "everything")
        baseline = self._baselines.get(key)
        if baseline is None:
            baseline = self._baselines[key] = _Baseline(rule.window)
        if completed is not None:
            baseline.add(completed)  # a completed hour joins the baseline
        if not counted:
            return
        self._judge(
            rule,
            "everything",
            self._hour_sum,
            record.timestamp,
            record.id,
            record.session_id,
            "USD/hour",
            learn=False,
        )

    def _seed(self) -> None:
        """Once: the cooldowns still running from the alerts a previous process wrote (the tail
        of alerts.jsonl), so a restarted process does not repeat an alert at once; and the
        budget warnings given already."""
        if self._seeded:
            return
        self._seeded = True
        rules = {rule.rule for rule in self.rules}
        now = datetime.now(UTC)
        for item in _tail(self.path, _SEED_BYTES):
            try:
                when = datetime.fromisoformat(str(item["time"]).replace("Z", "+00:00"))
                key = (str(item["rule"]), str(item["scope"]))
            except (ValueError, KeyError, TypeError):
                continue
            threshold = shown(item.get("threshold"))
            if key[0].startswith("budget_") and type(threshold) in (float, int, type(None)):
                self._given.add((*key, threshold))  # a hand-edited list would not hash
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            # One dated ahead of the clock (record(timestamp=...)) silences nothing: kept as
            # the latest, it hid the cooldown of the alert given a minute ago.
            if (
                key[0] in rules
                and when <= now
                and (key not in self._last or self._last[key] < when)
            ):
                self._last[key] = when

    # -- delivery ------------------------------------------------------------------------------
    def _deliver_pending(self) -> None:
        global _callbacks_running
        if self._unwritten:
            self._write_unwritten()
        while self.pending:
            alert, once, own = self.pending.popleft()
            if once:
                key = (alert.rule, alert.scope, alert.threshold)
                if key in self._given:
                    logger.debug("tokenmeter: alert given before, not repeated: %s", alert.message)
                    continue
                if len(self._given) >= _MAX_GIVEN:  # one per session of a per-session budget
                    self._given.clear()
                    self._seeded = False
                    self._seed()  # those of the end of alerts.jsonl, as a new process has
                    if key in self._given:
                        continue
                self._given.add(key)
            if not self._append(alert, once=once):
                logger.debug("tokenmeter: alert given by another process: %s", alert.message)
                continue
            logger.warning("tokenmeter alert: %s", alert.message)
            if own:
                continue  # about a callback's own call: it would run the callback again
            token = _in_callback.set(True)
            _callbacks_running += 1
            try:
                for callback in self.callbacks:
                    try:
                        not_awaited(callback(alert), "an on_alert callback")
                    except BaseException:  # on a writer thread: SystemExit there ends nothing
                        _callback_failures.failed(callback)
                    else:
                        _callback_failures.succeeded(callback)
            finally:
                _callbacks_running -= 1
                _in_callback.reset(token)

    def _append(self, alert: Alert, *, once: bool = False) -> bool:
        """Write the alert to alerts.jsonl; False (nothing written, nothing to give) when it is
        ``once`` and another process running meanwhile wrote it since this one read the file."""
        line = (json.dumps(alert.to_json_dict(), ensure_ascii=False) + "\n").encode(
            "utf-8", "backslashreplace"
        )
        key = (alert.rule, alert.scope, alert.threshold)
        needle = json.dumps(alert.scope, ensure_ascii=False).encode("utf-8", "backslashreplace")

        def given(fd: int) -> bool:
            end = os.fstat(fd).st_size
            data = os.pread(fd, _SEED_BYTES, max(0, end - _SEED_BYTES))
            if needle not in data:  # the common case: no line to parse
                return False
            found = _objects(data, cut=end > _SEED_BYTES)
            return any(
                (str(item.get("rule")), str(item.get("scope")), shown(item.get("threshold"))) == key
                for item in found
            )

        if self._unwritten:  # after those the file refused, in order
            self._unwritten.append(line)
            return True
        try:  # whole or not at all: a torn line would swallow the next alert too
            return append_line(self.path, line, given if once else None, regular_only=True)
        except OSError as exc:
            # Given all the same (logged, the callbacks called); written once the file takes
            # lines again, and said once.
            self._unwritten.append(line)
            logger.error(
                "tokenmeter: cannot append to %s: %s; its alerts are kept and written once it "
                "can be",
                self.path,
                exc,
            )
            return True

    def _write_unwritten(self) -> None:
        lines = list(self._unwritten)
        try:
            append_line(self.path, b"".join(lines), regular_only=True)
        except OSError:
            return
        for _ in lines:
            self._unwritten.popleft()
        logger.info(
            "tokenmeter: %s is written again (%d alerts kept meanwhile)", self.path, len(lines)
        )


#: Scopes (model names, session names) whose baselines and cooldowns are kept: past this many
#: they start over (a server naming sessions after its requests would keep one each forever).
_MAX_SCOPES = 10_000
#: Warnings given ``once`` kept in memory: past this many, only those at the end of
#: alerts.jsonl (what a restarted process knows) are kept.
_MAX_GIVEN = 10_000
#: Alert lines kept while alerts.jsonl cannot be written: past this many the oldest go.
_MAX_UNWRITTEN = 10_000
#: How much of the end of alerts.jsonl a new process reads for the cooldowns still running.
_SEED_BYTES = 256 * 1024


def _tail(path: Path, size: int) -> list[dict[str, Any]]:
    """The JSON objects of the last ``size`` bytes of ``path`` (bad lines skipped; none when
    the file cannot be read, or is not a regular file: ``refuse_irregular``)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as handle:
            refuse_irregular(fd)
            handle.seek(0, os.SEEK_END)
            end = handle.tell()
            handle.seek(max(0, end - size))
            data = handle.read(size)
    except OSError:
        return []
    return _objects(data, cut=end > size)


def _objects(data: bytes, *, cut: bool) -> list[dict[str, Any]]:
    """The JSON objects of the lines of ``data`` (the first skipped when ``cut``)."""
    lines = data.split(b"\n")
    if cut:
        lines = lines[1:]  # the first is cut
    found = []
    for raw in lines:
        try:
            item = json.loads(raw)
        except (ValueError, RecursionError):
            continue
        if isinstance(item, dict):
            found.append(item)
    return found


def _shown_scope(scope: str) -> str:
    """A scope as an alert's message shows it: the name in it escaped and cut as tokenmeter's
    "no price known" warning has it (``model='gpt-4o'``). The name is a server's (the model a
    response names) or a caller's (a session name): raw, a newline in it forged a line of the
    application's log, and a terminal escape reached whoever read it. ``scope`` itself is
    kept as recorded (alerts.jsonl is JSON, which escapes it)."""
    kind, is_named, name = scope.partition("=")
    if not is_named:
        return scope
    shown = repr(name)
    return f"{kind}={shown if len(shown) <= _NAME_SHOWN else shown[: _NAME_SHOWN - 1] + '…'}"


#: The longest name an alert's message shows (its repr; a longer one is cut, ending in "…").
_NAME_SHOWN = 200


def multiplier_text(rule: AlertRule, baseline: float | None) -> str:
    if baseline is None or rule.multiplier is None:
        return "absolute threshold"
    return f"{rule.multiplier:g}x a baseline of {baseline:,.6g}"
