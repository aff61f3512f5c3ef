"""Fixtures for the sink tests; the plain helpers they wrap live in ``sink_helpers.py``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sink_helpers import CommitAnswerLost, build_record, read_sqlite_records

from tokenmeter._models import UsageRecord


@pytest.fixture
def make_record() -> Callable[..., UsageRecord]:
    return build_record


@pytest.fixture
def read_sqlite() -> Callable[[Path], list[UsageRecord]]:
    return read_sqlite_records


@pytest.fixture
def commit_answer_lost(pg_dsn: str) -> Iterator[CommitAnswerLost]:
    proxy = CommitAnswerLost(pg_dsn)
    yield proxy
    proxy.close()
