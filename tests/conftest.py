"""Shared fixtures: every test runs in its own directory with tokenmeter's state reset.

``@pytest.mark.requires(openai=">=1.92")`` skips a test of an API that older SDKs lack.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from pg_server import pg_dsn, pg_server  # noqa: F401  (fixtures: a PostgreSQL on loopback)

import tokenmeter
from tokenmeter import _config, _estimate, _runtime
from tokenmeter.providers import _core
from tokenmeter.sinks import InMemorySink
from tokenmeter.testing._sdk import unmet


def pytest_configure(config: pytest.Config) -> None:
    # Run as a background job of a non-interactive shell (`.ci/run &`, `nohup ... &`), the
    # suite starts with SIGINT ignored, and every child it starts inherits that: the tests that
    # end `tokenmeter tail -f` with Ctrl-C waited 30 s for a child that could not hear it.
    # A handler here is reset to the default in each child at exec.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    config.addinivalue_line(
        "markers", "requires(**sdks): skip unless the installed SDKs match, e.g. openai='>=1.92'"
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("requires"):
        reason = unmet(**mark.kwargs)
        if reason:
            pytest.skip(reason)


@pytest.fixture(autouse=True, scope="session")
def _tokenizers_loaded() -> None:
    """Inside an LLM call, an estimate never waits for a tokenizer to load: it falls back on the
    heuristic until the tokenizer is loaded in the background. Loaded up front here, every
    test's estimates are the tokenizer's whatever order the tests run in."""
    for encoding in ("o200k_base", "cl100k_base"):
        _estimate._counter(encoding)


#: The runner's cloud settings the SDK clients read even when a test passes its own keys: an
#: AWS_PROFILE its config does not hold raised ProfileNotFound in every Bedrock client, and
#: GOOGLE_GENAI_USE_VERTEXAI made the tests' Gemini clients Vertex ones.
_MACHINE_ONLY = frozenset({"AWS_PROFILE", "AWS_DEFAULT_PROFILE", "GOOGLE_GENAI_USE_VERTEXAI"})


@pytest.fixture(autouse=True)
def _isolated(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """A fresh working directory and no TOKENMETER_* settings leaking in from the machine."""
    monkeypatch.chdir(tmp_path)
    # A pyproject.toml above the temp root (TMPDIR or --basetemp inside the checkout) is not
    # the test's project: found by a first load made before the test writes its own, it was
    # pinned and the test's project settings never read.
    root = tmp_path_factory.getbasetemp().resolve()

    def find_pyproject(start: Path | None) -> Path | None:
        found = real_find_pyproject(start)
        return found if found is None or found.resolve().is_relative_to(root) else None

    real_find_pyproject = _config.find_pyproject
    monkeypatch.setattr(_config, "find_pyproject", find_pyproject)
    monkeypatch.setattr(_runtime, "find_pyproject", find_pyproject)
    _core._faults_logged.clear()  # each test sees its own faults logged
    leaking = [
        name
        for name in os.environ
        if name.startswith(("TOKENMETER_", "OTEL_")) or name in _MACHINE_ONLY
    ]
    for name in leaking:
        monkeypatch.delenv(name, raising=False)
    yield
    tokenmeter.uninstrument()
    monkeypatch.undo()  # the test's environment may hold deliberately bad settings
    _runtime.reset()


@pytest.fixture
def sink() -> InMemorySink:
    """An in-memory sink configured as the only sink."""
    memory = InMemorySink()
    tokenmeter.configure(sinks=[memory])
    return memory
