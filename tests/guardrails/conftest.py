"""Fixtures for guardrail tests: a FakeProvider, and an instrumented openai/anthropic."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import tokenmeter
from tokenmeter.testing import FakeProvider


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider() as provider:
        provider.set_usage(openai={"prompt_tokens": 1000, "completion_tokens": 500})
        yield provider


@pytest.fixture
def instrumented() -> Iterator[None]:
    tokenmeter.instrument(["openai", "anthropic"])
    yield
    tokenmeter.uninstrument()
