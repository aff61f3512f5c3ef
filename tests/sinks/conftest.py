"""Shared helpers for the sink tests: building records and reading the SQLite file back."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tokenmeter._models import UsageRecord

START = datetime(2026, 11, 22, 10, 0, 0, 123000, tzinfo=UTC)


def build_record(i: int, **overrides: Any) -> UsageRecord:
    """A realistic priced record; ``i`` makes the id and the timestamp unique."""
    input_cost = Decimal("0.0000025") * 1200
    output_cost = Decimal("0.00001") * 300
    fields: dict[str, Any] = {
        "timestamp": START + timedelta(milliseconds=i),
        "model_provider": "openai",
        "model_name": "gpt-4o",
        "input_tokens": 1200,
        "output_tokens": 300,
        "total_tokens": 1500,
        "estimated_cost_usd": input_cost + output_cost,
        "cost_breakdown": {"input": input_cost, "output": output_cost},
        "price_source": "genai-prices 0.2.3",
        "id": f"rec-{i:06d}",
        "operation": "chat.completions",
        "session_id": "s1",
        "session_name": "demo",
        "tags": {"team": "search"},
        "latency_ms": 412.5,
    }
    fields.update(overrides)
    return UsageRecord(**fields)


@pytest.fixture
def make_record() -> Callable[..., UsageRecord]:
    return build_record


def read_sqlite_records(path: Path) -> list[UsageRecord]:
    """Every record in the database, rebuilt the way a reader of the schema would."""
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        rows = [dict(row) for row in conn.execute("SELECT * FROM records ORDER BY timestamp, id")]
    finally:
        conn.close()
    records = []
    for row in rows:
        row.pop("cost_pusd")
        cost = row["estimated_cost_usd"]
        row["estimated_cost_usd"] = None if cost is None else Decimal(cost)
        breakdown = row["cost_breakdown"]
        row["cost_breakdown"] = (
            None if breakdown is None else {k: Decimal(v) for k, v in json.loads(breakdown).items()}
        )
        row["tags"] = json.loads(row["tags"])
        row["timestamp"] = datetime.fromisoformat(row["timestamp"].replace("Z", "+00:00"))
        records.append(UsageRecord.model_validate(row))
    return records


@pytest.fixture
def read_sqlite() -> Callable[[Path], list[UsageRecord]]:
    return read_sqlite_records
