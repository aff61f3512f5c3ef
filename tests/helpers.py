"""Helpers shared by tests across folders (import as ``from helpers import ...``: pytest puts
``tests/`` on the path when it loads ``tests/conftest.py``)."""

from __future__ import annotations

import pytest


def one_line_value_error(excinfo: pytest.ExceptionInfo[ValueError]) -> str:
    """A plain ValueError on one line: not pydantic's multi-line ValidationError (a subclass)."""
    assert excinfo.type is ValueError
    message = str(excinfo.value)
    assert "\n" not in message
    return message
