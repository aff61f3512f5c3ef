"""The ledgers tokenmeter ships follow the lease protocol (PostgreSQL's: tests/sinks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import check_lease_protocol

from tokenmeter.guardrails import _leases
from tokenmeter.guardrails._ledger import LEASE_CAP, MemoryLedger, SQLiteLedger, grant_of


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_leases_follow_the_protocol(tmp_path: Path, kind: str) -> None:
    ledger = MemoryLedger() if kind == "memory" else SQLiteLedger(tmp_path / "budgets.db")
    check_lease_protocol(ledger)
    ledger.close()


def test_a_slice_is_capped_and_a_budget_near_its_limit_is_not_sliced() -> None:
    assert grant_of(1e9, 0.0, 0.0, 0.0, 1.0, 1.0) == (True, 1.0 + LEASE_CAP * 1.0)
    assert grant_of(9.0, 0.0, 0.0, 0.0, 1.0, 1.0) == (True, 2.0)  # 8 more fit: one slice call
    assert grant_of(8.9, 0.0, 0.0, 0.0, 1.0, 1.0) == (True, 1.0)  # fewer: exactly the call
    assert grant_of(8.9, 0.0, 0.0, 2.0, 1.0, 1.0) == (True, 3.0)  # and the calls in flight
    assert grant_of(1.0, 0.5, 0.0, 0.0, 1.0, 1.0) == (False, 0.0)
    assert grant_of(1.0, 0.0, 0.0, 0.0, 0.0, 0.0) == (True, 0.0)  # an unpriced call fits
    assert grant_of(1.0, 2.0, 0.0, 0.0, 0.0, 0.0) == (False, 0.0)  # unless the budget is over


class _Holder:
    group: Any = None


def test_a_lease_group_admits_and_settles_in_all_its_leases_until_one_is_dropped() -> None:
    ledger = MemoryLedger()
    rows = [
        ("a|day|everything", "2026-12-01T00:00:00+00:00", 10.0),
        ("b|total|everything", "", 10.0),
    ]
    holder = _Holder()
    try:
        leases, refused, _ = _leases.admit(ledger, rows, 0.1, holder)
        assert refused == -1 and holder.group is not None and holder.group.leases == leases
        assert _leases.settle_group(leases, 0.1, 0.1, [0.15, 0.15]) == []
        assert _leases.take(holder.group, rows, 0.1) is leases  # the slices have room
        assert [lease.inflight for lease in leases] == [pytest.approx(0.1)] * 2
        # the second row's floor is crossed (index 1, spent 0.2), the first's is not
        assert _leases.settle_group(leases, 0.1, 0.1, [0.25, 0.15]) == [(1, pytest.approx(0.2))]
        assert [lease.inflight for lease in leases] == [0.0, 0.0]
        assert _leases.take(holder.group, list(rows), 0.1) is None  # not the group's rows
        assert _leases.take(holder.group, rows, 5.0) is None  # no slice has that much room
        assert [lease.inflight for lease in leases] == [0.0, 0.0]  # nothing was reserved
        _leases.give_back()  # unused slices back to the ledger: the leases are dropped
        assert ledger.spent("b|total|everything", "") == pytest.approx(0.2)
        assert _leases.take(holder.group, rows, 0.1) is None
        leases, refused, _ = _leases.admit(ledger, rows, 0.1, holder)  # a new group
        _leases.settle_group(leases, 0.1, 0.1, [9.0, 9.0])
        assert _leases.take(holder.group, rows, 0.1) is leases
        _leases.settle_group(leases, 0.1, 0.1, [9.0, 9.0])
        _leases.forget()  # (a new ledger) the leases are forgotten, slices and all
        assert _leases.take(holder.group, rows, 0.1) is None
        assert [lease.inflight for lease in leases] == [0.0, 0.0]
    finally:
        _leases.give_back()
        _leases.forget()
        ledger.close()
