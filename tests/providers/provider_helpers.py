"""Plain helpers shared by the provider tests (fixtures live in this folder's ``conftest.py``).

Imported by name (``from provider_helpers import only``): pytest puts this folder on ``sys.path``
for its tests, and no other test folder has a module of this name, so the import is unambiguous.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel

import tokenmeter
from tokenmeter._models import UsageRecord
from tokenmeter.sinks import InMemorySink

#: The ``records`` / ``instrumented`` fixtures: call to flush and read every record so far.
Records = Callable[[], list[UsageRecord]]
MESSAGES = [{"role": "user", "content": "hi"}]


class Answer(BaseModel):
    """A structured-output schema for the ``parse()`` helpers."""

    answer: str


def flushed(sink: InMemorySink) -> list[UsageRecord]:
    """Every record written to ``sink`` so far, once the pipeline has delivered them."""
    assert tokenmeter.flush(5)
    return list(sink.records)


def only(records: list[UsageRecord]) -> UsageRecord:
    """The one record a call made (fails, listing them, if there are more or none)."""
    assert len(records) == 1, records
    return records[0]
