"""A fresh FakeProvider per test, with a few short streams by default.

``@pytest.mark.requires(openai=">=1.92")`` skips a test of an API that older SDKs lack.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tokenmeter.testing import FakeProvider
from tokenmeter.testing._sdk import unmet


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "requires(**sdks): skip unless the installed SDKs match, e.g. openai='>=1.92'"
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("requires"):
        reason = unmet(**mark.kwargs)
        if reason:
            pytest.skip(reason)


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider() as provider:
        yield provider
