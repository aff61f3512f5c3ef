"""The ledgers tokenmeter ships follow the lease protocol (PostgreSQL's: tests/sinks)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import check_lease_protocol

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
