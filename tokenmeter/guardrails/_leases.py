"""Leases: a process spends a budget locally, from a slice it took from the ledger.

A check against the shared ledger is a write transaction (SQLite, PostgreSQL): far too slow to
make for every call. So a process takes, in one transaction, a *lease* on each budget row it
uses: its calls in flight, the new call, and a slice for calls to come (``grant_of`` in
``_ledger``: at most LEASE_CAP calls, at most 1/LEASE_SHARE of the room left, none at all when
fewer than LEASE_SHARE more calls fit). Its calls are then admitted and settled here, under one
lock, until the slice runs out; the next transaction ("sync") moves what they really cost to the
row's settled USD, gives back the unused part and takes a new lease.

The ledger's reserved USD always covers every holder's calls in flight and the real cost of
the calls it settled since its last sync; a call that costs more than its slice had left syncs
at once. So a budget is passed by at most what the calls in flight cost beyond their estimates,
as without leases.

A slice another process holds cannot be spent by this one. A holder gives its unused slices
back when a call of its own is refused, when a call ends and the budget is too tight to slice
(every call then reserves exactly its estimate), when its root session ends, when it has made
no call for ``IDLE_S`` seconds (a daemon thread), and at exit.

configure() *retires* the leases of the budgets it replaces (``retire``): their unused slices
go back, and a call still in flight in one of them (a stream read across configure()) settles
there without taking a new slice, and the last of them to end gives back what the lease
still holds.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

from tokenmeter import _pipeline
from tokenmeter.guardrails._ledger import PAUSE_S, briefly, lease_all

__all__ = [
    "IDLE_S",
    "Group",
    "Lease",
    "admit",
    "give_back",
    "lower",
    "release",
    "settle",
    "settle_group",
    "take",
]

logger = logging.getLogger("tokenmeter")

#: A lease nobody used for this long goes back to the ledger.
IDLE_S = 1.0
#: Float sums drift in the last digits: a lease is not overdrawn by less than this (USD).
_EPSILON = 1e-12


class Reserved(Protocol):
    """What a call in flight reserved (``_budgets._Reservation``). The settling functions read
    ``amount`` under ``_lock``: ``lower`` may bring it down meanwhile, from another thread."""

    amount: float
    #: None once the call's settlement (or release) has begun: ``lower`` then leaves it alone.
    ref: Any


def _amount(reserved: float | Reserved) -> float:
    """What was reserved: a number, or a call's reservation read now (under ``_lock``)."""
    return reserved if isinstance(reserved, float) else reserved.amount


class Lease:
    """This process's share of one ledger row (scope_key, period_start)."""

    __slots__ = (
        "held",
        "inflight",
        "key",
        "last",
        "ledger",
        "limit",
        "others",
        "owner",
        "retired",
        "settled",
        "start",
        "syncs",
        "tight",
        "unit",
        "used",
    )

    def __init__(self, key: str, start: str, limit: float, ledger: Any) -> None:
        self.key, self.start, self.limit = key, start, limit
        #: The ledger the lease is in (a call in flight across a configure() settles there).
        self.ledger = ledger
        #: USD of the row's reserved that are this process's (in flight + used + slack).
        self.held = 0.0
        #: Estimates of this process's calls in flight.
        self.inflight = 0.0
        #: Real costs settled here, not yet moved to the row's settled USD.
        self.used = 0.0
        #: The row's settled USD, and everyone else's reserved USD, at the last sync.
        self.settled = 0.0
        self.others = 0.0
        #: What a call costs here (an average of the real costs): the size of a slice's calls.
        self.unit = 0.0
        #: The last sync gave no slice (the budget is near its limit).
        self.tight = True
        #: When a call of this process was last admitted in it (an idle lease goes back).
        self.last = 0.0
        #: The active group whose calls' reservations and costs are kept in the group, not yet
        #: added here (``_fold`` adds them): every reading of this lease's figures folds it.
        self.owner: Group | None = None
        #: Syncs begun (a give-back's figures are not taken over those of a later sync).
        self.syncs = 0
        #: Of a replaced configuration (``retire``): only calls in flight use it, it takes no
        #: new slice, and it is given back whole when they have ended. No give-back nor the
        #: keeper sees it (they go through ``_leases``): a slice taken into it stayed reserved
        #: in the ledger until its period ended.
        self.retired = False

    @property
    def room(self) -> float:
        return self.held - self.inflight - self.used


class Group:
    """The leases of one list of rows (a scope's budgets for the current periods), kept by the
    scope: a call far from every limit is admitted in all of them at once (``take``) and settled
    in all of them at once (``settle_group``). Valid while no lease has been dropped since it
    was made (``_generation``).

    An *active* group owns its leases (none of them owned by another group, none near its
    limit, no warning floor reached): every call admitted or settled in it reserves and costs
    the same in each of its leases, so the group keeps the sums (``pending``, ``spent``) and the
    smallest room and warning headroom of its leases, and one comparison admits or settles a
    call. Anything else that reads or changes one of its leases first folds the sums into them
    (``_fold``, under ``_lock``), so every other path sees exact figures."""

    __slots__ = (
        "active",
        "drift",
        "generation",
        "headroom",
        "last",
        "leases",
        "pending",
        "room",
        "rows",
        "spent",
        "weight",
    )

    def __init__(self, rows: list[tuple[str, str, float]], generation: int, leases: list[Lease]):
        self.rows, self.generation, self.leases = rows, generation, leases
        self.active = False
        #: While active: the estimates reserved and the real costs settled in it since it
        #: became active (not yet in its leases), the smallest room left in its leases, and
        #: the smallest distance of their spent USD to their warning floors.
        self.pending = self.spent = self.room = self.headroom = 0.0
        #: ``unit`` of each lease, once folded: ``weight * unit + drift`` (the same average of
        #: the real costs, started from each lease's own).
        self.weight, self.drift = 1.0, 0.0
        self.last = 0.0


#: The active groups (under ``_lock``).
_owning: set[Group] = set()


def _less(inflight: float, amount: float) -> float:
    """What is still in flight once calls that reserved ``amount`` have ended. Reservations made
    and ended in another order leave a float residue (a + b + c - a - b - c): nothing, or the
    lease of an ended session (period "session") was never given back and was kept for ever."""
    left = inflight - amount
    return left if left > _EPSILON else 0.0


def _fold(group: Group) -> None:
    """Move what an active group's calls reserved and cost into its leases; the group is then
    inactive (under ``_lock``)."""
    if not group.active:
        return
    group.active = False
    _owning.discard(group)
    pending, spent, weight, drift, last = (
        group.pending,
        group.spent,
        group.weight,
        group.drift,
        group.last,
    )
    for lease in group.leases:
        lease.inflight = _less(lease.inflight, -pending)
        lease.used += spent
        lease.unit = weight * lease.unit + drift
        if last > lease.last:
            lease.last = last
        if lease.owner is group:
            lease.owner = None
    group.pending = group.spent = group.drift = 0.0
    group.weight = 1.0


def _fold_owners(leases: Sequence[Lease]) -> None:
    for lease in leases:
        if lease.owner is not None:
            _fold(lease.owner)


def _fold_all() -> None:
    for group in list(_owning):
        _fold(group)


_leases: dict[tuple[str, str], Lease] = {}
#: Re-entrant only so that ``busy`` can tell a thread it holds it already (see there).
_lock = threading.RLock()
_ledger: Any = None
#: Changes whenever a lease is dropped: a list of leases kept for reuse is then stale.
_generation = 0
#: How many ceilings ``lower`` has lowered in this process: a refused call whose own lowering
#: found nothing checks again only when another's made room since it was checked.
lowerings = 0
_keeper: threading.Thread | None = None
_keeper_unstarted = False  # its last start failed (said once until it starts)


def _sync(ledger: Any, leases: list[Lease], need: float, *, drop: bool = False) -> int:
    """One transaction for ``leases``; returns the index of the lease that refused ``need``
    (-1: admitted, or nothing asked; 0.0 asks for a new slice only: a retired lease asks for
    none and keeps only its calls in flight). ``drop``: leases left holding nothing are
    forgotten. Called under ``_lock``."""
    items = []
    closing = _pipeline.exiting()
    for lease in leases:
        ask = -1.0 if lease.retired and need <= 0 else need
        items.append(
            (
                lease.key,
                lease.start,
                lease.limit,
                lease.held,
                lease.used,
                lease.inflight,
                ask,
                _slice_unit(lease, ask, closing),
            )
        )
    results = lease_all(ledger, items)
    refused = -1
    for index, (lease, (ok, granted, settled, others)) in enumerate(
        zip(leases, results, strict=True)
    ):
        if not ok and refused < 0:
            refused = index
        lease.held, lease.used, lease.settled, lease.others = granted, 0.0, settled, others
        lease.syncs += 1
        lease.tight = lease.retired or granted <= lease.inflight + max(need, 0.0) + _EPSILON
    if refused < 0 and need > 0:
        for lease in leases:
            lease.inflight += need
    if drop:
        global _generation
        for lease in leases:
            key = (lease.key, lease.start)
            # A retired lease is not in ``_leases``: the one there is the new configuration's.
            if lease.held <= 0 and lease.inflight <= 0 and _leases.get(key) is lease:
                del _leases[key]
                _generation += 1
    if any(not lease.tight for lease in leases):
        _start_keeper()
    return refused


def _slice_unit(lease: Lease, ask: float, closing: bool) -> float:
    """The size of the calls a slice is made of: none while the process exits. The exit's
    give-back may run before a call made after it (the implicit session's end hooks run after
    it: a hook that summarises the session); a slice taken then was never given back, and
    stayed reserved in the ledger for the rest of the period, as a killed process's does. With
    no slice the lease is tight, and the call gives back what it did not use when it ends."""
    return 0.0 if closing else max(ask, lease.unit)


def admit(
    ledger: Any, wanted: list[tuple[str, str, float]], amount: float, holder: Any = None
) -> tuple[list[Lease], int, float]:
    """Reserve ``amount`` in every (scope_key, period_start, limit) of ``wanted``, or in none:
    (the leases, -1, 0.0), or (the leases, the index of the one that refused, what it found
    spent and reserved). ``holder`` (an object with a ``group`` attribute) keeps the leases of
    ``wanted`` as a ``Group`` for the next calls with the same list (``take``)."""
    global _ledger
    now = time.monotonic()
    with _lock:
        _fold_all()
        group = holder.group if holder is not None else None
        if group is not None:
            found = _take(group, wanted, amount, now)
            if found is not None:
                return found, -1, 0.0
        leases = []
        for key, start, limit in wanted:
            lease = _leases.get((key, start))
            if lease is None:
                lease = _leases[(key, start)] = Lease(key, start, limit, ledger)
            lease.limit = limit
            lease.last = now
            leases.append(lease)
        if _ledger is not ledger:
            _ledger = ledger
        refused = _sync(ledger, leases, amount)
        if refused < 0 and amount <= 0:
            # A call estimated at $0 (a model without a price) fits any room, also none: a
            # budget its priced calls spent to the limit (a $0 kill switch from the start) let
            # such calls through for ever. Nothing was reserved for it.
            refused = next((i for i, lease in enumerate(leases) if _spent(lease)), -1)
        if holder is not None:
            holder.group = Group(wanted, _generation, leases)
        if refused < 0:
            return leases, -1, 0.0
        lease = leases[refused]
        return leases, refused, lease.settled + lease.others + lease.inflight


def take(
    group: Group,
    wanted: list[tuple[str, str, float]],
    amount: float,
    floors: Sequence[float],
    holder: Any = None,
) -> list[Lease] | None:
    """Reserve ``amount`` in every lease of ``group`` when each has room for it and the group
    is still that of ``wanted``: the leases, also set as ``holder.leases`` in the same step
    (a call's reservation, already findable by ``_budgets._lower_ceilings``: found without its
    leases, the ceiling it had just reserved was out of reach of a refused call's lowering,
    which refused a call that fitted); else None (nothing reserved, nothing asked of the
    ledger: ``admit`` then). ``floors``: the spent USD of each row from which its budget warns
    (the group stays active below them)."""
    with _lock:
        leases = _take_slice(group, wanted, amount, floors)
        if leases is not None and holder is not None:
            holder.leases = leases
        return leases


def _take_slice(
    group: Group, wanted: list[tuple[str, str, float]], amount: float, floors: Sequence[float]
) -> list[Lease] | None:
    """``take``'s step, under ``_lock``."""
    if group.rows is not wanted or group.generation != _generation:
        return None
    if group.active:
        if group.room < amount:  # an active group is far from its limits: never spent
            _fold(group)
            return None
        group.room -= amount
        group.pending += amount
        group.last = time.monotonic()
        return group.leases
    leases = group.leases
    room = headroom = math.inf
    steady = True
    for index, lease in enumerate(leases):
        if lease.owner is not None:
            _fold(lease.owner)
        spare = lease.held - lease.inflight - lease.used
        if spare <= amount and _short_of(spare, amount, lease):
            return None
        room = min(room, spare)
        headroom = min(headroom, floors[index] - lease.settled - lease.used)
        if lease.tight or lease.unit <= 0:
            steady = False
    now = time.monotonic()
    if steady and headroom > 0:  # the group's calls are kept in the group from now on
        group.active = True
        _owning.add(group)
        group.room, group.pending, group.headroom = room - amount, amount, headroom
        group.last = now
        for lease in leases:
            lease.owner = group
        return leases
    for lease in leases:
        lease.inflight += amount
        lease.last = now
    return leases


def _take(
    group: Group, wanted: list[tuple[str, str, float]], amount: float, now: float
) -> list[Lease] | None:
    if group.rows is not wanted or group.generation != _generation:
        return None
    leases = group.leases
    for lease in leases:
        spare = lease.held - lease.inflight - lease.used
        if spare <= amount and _short_of(spare, amount, lease):
            return None
    for lease in leases:  # every slice has room: nothing to ask the ledger
        lease.inflight += amount
        lease.last = now
    return leases


def _short_of(room: float, amount: float, lease: Lease) -> bool:
    """A slice with ``room`` left cannot admit a call reserving ``amount`` here: the ledger
    decides (``admit``). Also a slice with no room at all in a budget known to be spent, for a
    call estimated at $0 (an Azure deployment's name, ``openrouter/auto``, a model without a
    price): admitted here, such calls went on for ever once the budget was spent, as no slice
    was ever asked of the ledger again, which refuses them there. Only once it is spent: a $0
    call under a budget with room took a ledger transaction each (a model without a price never
    gets a slice). Callers test ``room <= amount`` first, so a call within the room does no more
    work than before."""
    return room < amount or (room <= 0 and _spent(lease))


def _spent(lease: Lease) -> bool:
    """Whether priced calls have spent ``lease``'s budget: reached its limit, which carries a
    billionth of itself of room for float sums (``Budget.limit``): a budget spent exactly, to
    the decimal, is spent."""
    return lease.settled + lease.used >= lease.limit * (1 - 2e-9)


def release(leases: Sequence[Lease], amount: float | Reserved) -> None:
    """Calls reserved ``amount`` in ``leases`` and ended without a cost (failed, or no record)."""
    with _lock:
        amount = _amount(amount)
        _fold_owners(leases)
        for lease in leases:
            lease.inflight = _less(lease.inflight, amount)
        _give_back_tight(leases)


def settle(
    leases: Sequence[Lease],
    amount: float | Reserved,
    actual: float,
    unreserved: list[tuple[str, str]],
) -> tuple[list[float], list[bool]]:
    """A call's record: its real cost replaces its reservation of ``amount`` in ``leases``, and
    is added to the leases of ``unreserved`` rows (a record made by hand) that this process
    holds. Returns the spent USD seen in each lease, and for each unreserved row whether a
    lease took it (else the caller settles it in the ledger)."""
    taken = []
    over = tight = False
    with _lock:
        amount = _amount(amount)
        _fold_all()
        for lease in leases:
            lease.inflight = inflight = _less(lease.inflight, amount)
            lease.used = used = lease.used + actual
            if actual > 0:
                unit = lease.unit
                lease.unit = actual if unit <= 0 else 0.8 * unit + 0.2 * actual
            if used + inflight > lease.held + _EPSILON:
                over = True
            if lease.tight:
                tight = True
        for key in unreserved:
            held = _leases.get(key)
            taken.append(held is not None)
            if held is not None:
                held.used += actual
                leases = [*leases, held]
                over = over or held.used + held.inflight > held.held + _EPSILON
                tight = tight or held.tight
        if over:  # cost more than the slice had left: sync now
            _sync(
                leases[0].ledger,
                [lease for lease in leases if lease.used + lease.inflight > lease.held + _EPSILON],
                0.0,
            )
            tight = True  # the sync may have found the budget near its limit
        if tight:
            _give_back_tight(leases)
        seen = [lease.settled + lease.used for lease in leases]
    return seen, taken


def settle_group(
    group: Group | None,
    leases: Sequence[Lease],
    amount: float | Reserved,
    actual: float,
    floors: Sequence[float],
) -> list[tuple[int, float]]:
    """``settle`` for a call whose record falls in no budget but those it reserved in (in
    ``leases``, of ``group`` when they are its leases): its real cost replaces its reservation
    of ``amount``. Returns, for each lease whose spent USD is now at least its ``floors`` entry,
    (its index, that spent USD)."""
    with _lock:
        amount = _amount(amount)
        if group is not None and group.active and group.leases is leases:
            group.pending -= amount
            group.spent = spent = group.spent + actual
            group.room = room = group.room + amount - actual
            if actual > 0:
                group.weight *= 0.8
                group.drift = 0.8 * group.drift + 0.2 * actual
            if room >= -_EPSILON and spent < group.headroom:
                return []
            _fold(group)  # over its room, or a warning floor reached: as below, lease by lease
            short = True
        else:
            _fold_owners(leases)
            short = False
            share = 0.2 * actual if actual > 0 else 0.0  # of the average real cost (``unit``)
            for lease in leases:
                lease.inflight = inflight = _less(lease.inflight, amount)
                lease.used = used = lease.used + actual
                if share:
                    unit = lease.unit
                    lease.unit = 0.8 * unit + share if unit > 0 else actual
                if lease.tight or used + inflight > lease.held + _EPSILON:
                    short = True
        if short:  # a sync or a give-back moves used to settled
            overdrawn = [lease for lease in leases if _overdrawn(lease)]
            if overdrawn:  # cost more than the slice had left: sync now
                _sync(leases[0].ledger, overdrawn, 0.0)
            _give_back_tight(leases)
        return [
            (index, lease.settled + lease.used)
            for index, lease in enumerate(leases)
            if lease.settled + lease.used >= floors[index]
        ]


def lower(reserved: Reserved, leases: Sequence[Lease], amount: float) -> bool:
    """A call in flight that reserved a ceiling on its estimate in ``leases`` now holds only
    ``amount`` (its estimate): the rest is room again. Calls admitted far from the limit hold
    ceilings (up to a hundred times their estimates); left held while the budget neared its
    limit, they refused calls that fitted. False when there was nothing to lower: its
    settlement has begun, or it holds no more than ``amount``."""
    global lowerings
    with _lock:
        excess = reserved.amount - amount
        if reserved.ref is None or excess <= _EPSILON:
            return False
        lowerings += 1
        _fold_owners(leases)
        for lease in leases:
            lease.inflight = _less(lease.inflight, excess)
        reserved.amount = amount
        return True


def _overdrawn(lease: Lease) -> bool:
    return lease.used + lease.inflight > lease.held + _EPSILON


def _give_back_tight(leases: Sequence[Lease]) -> None:
    """Near the limit every call reserves only its estimate: what it did not use goes back when
    it ends (under ``_lock``)."""
    idle = [
        lease
        for lease in leases
        if lease.tight and lease.inflight <= 0 and (lease.held > 0 or lease.used > 0)
    ]
    if idle:
        _sync(idle[0].ledger, idle, -1.0, drop=True)


def busy() -> bool:
    """True on a thread inside a lease step: a garbage collection that ran there (any allocation
    may start one) and ended a session (a dropped ``@track`` generator) must not give back or
    release now, in the middle of that step. What it would give back goes back later: the
    keeper returns unused slices within ``IDLE_S``, and released reservations wait in the
    budgets' orphans."""
    return bool(_lock._is_owned())  # type: ignore[attr-defined]


def give_back(start: str | None = None, *, idle_for: float = 0.0, brief: bool = False) -> None:
    """Return unused slices to the ledger (calls in flight keep their reservations): all of
    them, those of the period ``start`` (a session's id), or those unused for ``idle_for``s.

    The ledger is asked without ``_lock``: one that keeps it waiting (a database another
    program holds locked, a server that stopped answering) held up every budgeted call of the
    process meanwhile, those whose slices had room too. The slices leave the leases first,
    under the lock, so a call that needs room meanwhile asks the ledger itself; a ledger that
    fails gives them back to the leases. The ledger's rows change by what each sync says this
    process held, so a sync of a call made meanwhile and this one add up, in either order.

    ``brief`` (the keeper's, which can try again later): under the lock, in a transaction made
    ``briefly``, so a call meanwhile waits at most that long and then has its slice still,
    rather than asking a ledger that keeps it waiting."""
    if not _leases or busy():
        return
    now = time.monotonic()
    with _lock:
        _fold_all()
        ledger = _ledger
        chosen = [
            lease
            for lease in _leases.values()
            if (start is None or lease.start == start)
            and now - lease.last >= idle_for
            and (lease.held > lease.inflight or lease.used > 0)
        ]
        if not chosen or ledger is None:
            return
        if brief:
            with briefly():
                _sync(ledger, chosen, -1.0, drop=True)
            return
        items, sent = _take_back(chosen)
    _send_back(ledger, items, sent)


_Sent = list[tuple[Lease, float, float, int, float]]


def _take_back(chosen: list[Lease]) -> tuple[list[Any], _Sent]:
    """The unused slices and used USD of ``chosen`` leave them, for ``_send_back`` to give to
    the ledger (under ``_lock``).

    Only the unused part is sent as held (and nothing kept): the calls in flight stay the
    lease's, in the ledger too. Sent as held with them as kept, a call that ended and synced
    its lease before this transaction (it released them) was reserved again here, for good:
    the ledger works out the others' reserved USD as the row's minus this held, counted as
    nothing below zero."""
    items = []
    sent = []
    for lease in chosen:
        held, used = lease.held, lease.used
        spare = max(0.0, held - lease.inflight)
        items.append((lease.key, lease.start, lease.limit, spare, used, 0.0, -1.0, lease.unit))
        lease.syncs += 1
        lease.held, lease.used, lease.tight = held - spare, 0.0, True
        sent.append((lease, spare, used, lease.syncs, lease.held))
    return items, sent


def _send_back(ledger: Any, items: list[Any], sent: _Sent) -> None:
    """Give the ledger what ``_take_back`` took (without ``_lock``: see ``give_back``)."""
    try:
        results = lease_all(ledger, items)
    except BaseException:
        with _lock:  # the ledger still holds them: so do the leases
            for lease, spare, used, _, _ in sent:
                lease.held += spare
                lease.used += used
        raise
    global _generation
    with _lock:
        for (lease, _, _, syncs, kept), (_, _, settled, others) in zip(sent, results, strict=True):
            if lease.syncs == syncs:  # no sync since: its figures are the latest
                lease.settled, lease.others = settled, max(0.0, others - kept)
            key = (lease.key, lease.start)
            if (
                lease.held <= 0
                and lease.inflight <= 0
                and lease.used <= 0
                and _leases.get(key) is lease
            ):
                del _leases[key]
                _generation += 1


def retire() -> None:
    """The budgets are being replaced (configure()): every lease is retired, then what each
    holds beyond its calls in flight goes back to the ledger, as ``give_back`` does (without
    ``_lock``; a ledger that fails raises, and the leases keep it). Retired first: a call in
    flight that ends meanwhile, or later, settles without taking a new slice, and the last
    one to end gives back what is left (see ``Lease.retired``)."""
    inside = busy()  # inside a lease step (see there): nothing goes back now
    with _lock:
        ledger = _ledger
        retired = _retire_all()
        chosen = [lease for lease in retired if lease.held > lease.inflight or lease.used > 0]
        if not chosen or ledger is None or inside:
            return
        items, sent = _take_back(chosen)
    _send_back(ledger, items, sent)


def forget() -> None:
    """Drop every lease without returning it (tests; configure() uses ``retire``)."""
    with _lock:
        _retire_all()


def _retire_all() -> list[Lease]:
    """Every lease leaves ``_leases``, retired (under ``_lock``)."""
    global _ledger, _generation
    _fold_all()
    retired = list(_leases.values())
    for lease in retired:
        lease.retired = lease.tight = True
    _leases.clear()
    _ledger = None
    _generation += 1
    return retired


def _start_keeper() -> None:
    """Start the thread that gives back unused slices. One that cannot start (a container's
    pids limit: "can't start new thread") is no fault of the call being admitted: raising here,
    after the ledger had reserved it, let that call through unreserved, its estimate left in
    flight for good. Until a later slice starts it, the slices go back on the other occasions
    (a refused call, a root session's end, ``configure()``, the exit)."""
    global _keeper, _keeper_unstarted
    if _keeper is not None and _keeper.is_alive():
        return
    try:
        _keeper = _pipeline.start_thread(_keep, "tokenmeter-budget-leases")
    except RuntimeError as exc:
        if not _keeper_unstarted:
            _keeper_unstarted = True
            logger.warning(
                "tokenmeter: the thread giving back unused budget slices could not start (%s); "
                "they wait for a refused call, a session's end, configure() or the exit",
                exc,
            )
        return
    _keeper_unstarted = False


def _keep() -> None:
    """Give back the slices no call used for ``IDLE_S``; end when no lease is left. A ledger
    that fails (or keeps the give-back waiting past ``BRIEF_S``) is left alone for
    ``PAUSE_S``, and said once until a give-back goes through (it was logged, traceback and
    all, four times a second)."""
    failing = False
    retry_at = 0.0
    while True:
        time.sleep(IDLE_S / 4)
        if time.monotonic() >= retry_at:
            try:
                give_back(idle_for=IDLE_S, brief=True)
                failing = False
            except Exception as exc:
                retry_at = time.monotonic() + PAUSE_S
                if not failing:
                    failing = True
                    logger.warning(
                        "tokenmeter: returning unused budget slices failed (%s: %s); tried "
                        "again every %g s",
                        type(exc).__name__,
                        exc,
                        PAUSE_S,
                    )
        with _lock:
            if not any(lease.held > lease.inflight for lease in _leases.values()):
                global _keeper
                if _keeper is threading.current_thread():
                    _keeper = None
                return


def _at_exit() -> None:
    """Within ``exit_timeout`` (see ``_ledger.brief_wait``)."""
    try:
        give_back()
    except Exception:
        logger.warning("tokenmeter: returning unused budget slices at exit failed", exc_info=True)


def _forget_in_child() -> None:
    """A forked child's copies of the parent's leases are the parent's: the child takes its own."""
    global _leases, _lock, _ledger, _keeper, _generation, _owning
    _leases, _lock, _ledger, _keeper, _owning = {}, threading.RLock(), None, None, set()
    _generation += 1


os.register_at_fork(after_in_child=_forget_in_child)
_pipeline.before_exit(_at_exit)
