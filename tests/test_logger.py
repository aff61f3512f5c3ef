"""The ``tokenmeter`` logger never raises into the application (``tokenmeter/_logger.py``)."""

from __future__ import annotations

import io
import logging

import pytest

import tokenmeter
from tokenmeter._logger import guard
from tokenmeter.sinks import InMemorySink


class _Raising(logging.Filter):
    """An application's filter that fails (a log shipper that is down)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def filter(self, record: logging.LogRecord) -> bool:
        self.calls += 1
        raise RuntimeError("log shipper down")


@pytest.mark.parametrize("on", ["logger", "handler"])
def test_a_raising_filter_never_fails_a_record(sink: InMemorySink, on: str) -> None:
    logger = logging.getLogger("tokenmeter")
    raising = _Raising()
    handler = logging.StreamHandler(io.StringIO())
    if on == "logger":
        logger.addFilter(raising)
    else:
        handler.addFilter(raising)
        logger.addHandler(handler)
    try:
        # A model no price table knows is warned about on the caller's thread.
        record = tokenmeter.record("openai", f"my-private-model-{on}", 100, 10)
    finally:
        logger.removeFilter(raising)
        logger.removeHandler(handler)
    assert raising.calls >= 1  # the line was logged, through the filter
    assert tokenmeter.flush(10)
    assert [r.id for r in sink.records] == [record.id]


def test_an_applications_own_logger_class_is_kept() -> None:
    class Mine(logging.Logger):
        pass

    logger = Mine("tokenmeter-test-own-class")
    logger.addFilter(_Raising())
    guard(logger)
    guard(logger)  # twice: the same class
    logger.warning("a line")
    assert isinstance(logger, Mine)
    assert type(logger).__mro__.count(Mine) == 1
