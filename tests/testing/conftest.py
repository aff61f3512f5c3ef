"""A fresh FakeProvider per test, with a few short streams by default."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tokenmeter.testing import FakeProvider


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider() as provider:
        yield provider
