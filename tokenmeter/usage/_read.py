"""Field access that works the same on SDK objects, proto-plus messages and JSON dicts.

Readers take a ``get = getter(obj)`` once per object and then look fields up by name: for dicts
and pydantic models (every current SDK) that is a plain ``dict.get``, the hot path of every
intercepted call; anything else goes through ``field``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from pydantic import BaseModel

from tokenmeter._models import MAX_TOKENS

Get = Callable[[str], Any]


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


def _absent(name: str) -> None:
    return None


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _snake_or_camel(obj: Any, name: str) -> Any:
    return field(obj, name, _camel(name))


def getter(obj: Any, camel: bool = False) -> Get:
    """``get(name)``: a field of ``obj`` by its snake_case name, None when absent.

    ``camel``: REST JSON spells keys in camelCase (Gemini); dicts are then read both ways.
    """
    if type(obj) is dict:
        return partial(_snake_or_camel, obj) if camel else obj.get
    if isinstance(obj, BaseModel):  # declared fields live in __dict__, extra ones beside it
        extra = obj.__pydantic_extra__
        return ({**obj.__dict__, **extra} if extra else obj.__dict__).get
    if obj is None:
        return _absent
    return partial(_snake_or_camel, obj) if camel else partial(field, obj)


def whole(value: Any, name: str) -> int:
    """A token count: absent or None reads as 0 (SDKs parse leniently); anything else must be a
    non-negative whole number."""
    if type(value) is int and value >= 0:  # nearly always: no further checks
        return value
    if value is None:
        return 0
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value != int(value)
    ):
        raise ValueError(f"usage field {name!r} is not a whole number: {value!r}")
    if value < 0:
        raise ValueError(f"usage field {name!r} is negative: {value!r}")
    if value > MAX_TOKENS:
        raise ValueError(f"usage field {name!r} is more than any call can use: {value!r}")
    return int(value)


def count(obj: Any, name: str, camel: str | None = None) -> int:
    """``whole()`` of one field."""
    return whole(field(obj, name, camel), name)


def counts(get: Get, *names: str) -> list[int]:
    """``whole()`` of several fields, in one call."""
    found = []
    for name in names:
        value = get(name)
        if type(value) is int and value >= 0:
            found.append(value)
        else:
            found.append(0 if value is None else whole(value, name))
    return found
