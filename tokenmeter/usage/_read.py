"""Field access that works the same on SDK objects, proto-plus messages and JSON dicts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def field(obj: Any, name: str, camel: str | None = None) -> Any:
    """``obj.name`` or ``obj[name]`` (or the camelCase key), None when absent."""
    if obj is None:
        return None
    if type(obj) is dict or (not hasattr(obj, name) and isinstance(obj, Mapping)):
        value = obj.get(name)
        if value is None and camel is not None:
            value = obj.get(camel)
        return value
    return getattr(obj, name, None)


def count(obj: Any, name: str, camel: str | None = None) -> int:
    """A token count: absent or None reads as 0 (SDKs parse leniently); anything else must be a
    non-negative whole number."""
    value = field(obj, name, camel)
    if type(value) is int and value >= 0:  # nearly always: no further checks
        return value
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise ValueError(f"usage field {name!r} is not a whole number: {value!r}")
    if value < 0:
        raise ValueError(f"usage field {name!r} is negative: {value!r}")
    return int(value)


def has_any(obj: Any, *names: str) -> bool:
    return any(field(obj, name) is not None for name in names)
