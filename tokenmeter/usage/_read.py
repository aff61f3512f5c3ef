"""Field access that works the same on SDK objects, proto-plus messages and JSON dicts.

Readers take a ``get = getter(obj)`` once per object and then look fields up by name: for dicts
and pydantic models (every current SDK) that is a plain ``dict.get``, the hot path of every
intercepted call; anything else goes through ``field``.

What a response holds comes from a server, which may be buggy or hostile: a refusal is a
``ValueError`` whose message is one short line however long or deep the offending value is.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from pydantic import BaseModel

from tokenmeter._models import MAX_TOKENS, short_repr

Get = Callable[[str], Any]

#: Values that can hold no usage fields: a "usage block" of one of these is not one.
_SCALARS = (str, bytes, bytearray, int, float, list, tuple)
#: Longest id kept: ids are remembered for de-duplication, and a server may send a megabyte.
MAX_ID = 500
#: The service tiers that change a price; any other answer is billed as standard.
_PRICED_TIERS = frozenset({"batch", "flex", "priority", "fast"})


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


@functools.cache  # our own field names only: a handful, each spelled once per process
def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _snake_or_camel(obj: Any, name: str) -> Any:
    return field(obj, name, _camel(name))


#: Whether a type is a pydantic model, by type (the SDKs' response types: a handful).
_is_model: dict[type, bool] = {}


def getter(obj: Any, camel: bool = False, what: str = "usage") -> Get:
    """``get(name)``: a field of ``obj`` by its snake_case name, None when absent.

    ``camel``: REST JSON spells keys in camelCase (Gemini); dicts are then read both ways.
    ``what`` names ``obj`` when it is text, a number or a list: that is a ValueError, never a
    silent zero (``getattr("lots", "cached_tokens")`` would read as absent).
    """
    kind = type(obj)
    if kind is dict:
        return partial(_snake_or_camel, obj) if camel else obj.get
    is_model = _is_model.get(kind)
    if is_model is None:  # pydantic's isinstance check runs Python code: once per type
        is_model = isinstance(obj, BaseModel)
        if obj.__class__ is kind:  # not a proxy, whose answer depends on what it wraps
            if len(_is_model) >= 1_024:
                _is_model.clear()
            _is_model[kind] = is_model
    if is_model:  # declared fields live in __dict__, extra ones beside it
        extra = obj.__pydantic_extra__
        return ({**obj.__dict__, **extra} if extra else obj.__dict__).get
    if obj is None:
        return _absent
    if isinstance(obj, _SCALARS):  # a string or a number where an object belongs: not readable
        raise ValueError(f"{what!r} is not an object: {type(obj).__name__} {short_repr(obj)}")
    return partial(_snake_or_camel, obj) if camel else partial(field, obj)


def plain_fields(obj: Any) -> dict[str, Any] | None:
    """``obj``'s fields as they are (its ``__dict__``) when it is a pydantic model of a type
    ``getter`` has met, and holds nothing beside its declared fields; else None. A proxy's type
    is never one ``getter`` keeps: what a proxy answers depends on what it wraps."""
    if _is_model.get(type(obj)) and not obj.__pydantic_extra__:
        fields: dict[str, Any] = obj.__dict__
        return fields
    return None


def ident(value: Any) -> str | None:
    """A response id as text: a number is spelled out, anything else but text is no id, and a
    very long one is cut (ids are remembered to record each response once)."""
    if type(value) is str:
        return value[:MAX_ID] if len(value) > MAX_ID else value
    if type(value) is int:
        return str(value) if -(10**50) < value < 10**50 else None
    return None


def priced_tier(value: Any) -> str | None:
    """The service tier a response reports, if it is one that changes the price. Anything else
    (standard, unknown, not text, a megabyte of it) is None: billed as standard, and never a key
    of the price cache."""
    if type(value) is not str or len(value) > 20:
        value = getattr(value, "value", None)  # an SDK enum
        if type(value) is not str or len(value) > 20:
            return None
    tier = value.strip().lower()
    return tier if tier in _PRICED_TIERS else None


def batch_tier(tier: str | None) -> str:
    """The tier of a batch job's result read from the response it holds: batch, whatever that
    response says (Anthropic's ``usage.service_tier`` may be ``"standard"``), in the inference
    region it names (``"batch+us"``: billed above the global rates as well)."""
    _, plus, region = (tier or "").partition("+")
    return "batch" + plus + region


def whole(value: Any, name: str) -> int:
    """A token count: absent or None reads as 0 (SDKs parse leniently); anything else must be a
    non-negative whole number."""
    if type(value) is int and 0 <= value <= MAX_TOKENS:  # nearly always: no further checks
        return value
    if value is None:
        return 0
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (isinstance(value, float) and not (math.isfinite(value) and value.is_integer()))
    ):
        raise ValueError(f"usage field {name!r} is not a whole number: {short_repr(value)}")
    if value < 0:
        raise ValueError(f"usage field {name!r} is negative: {short_repr(value)}")
    if value > MAX_TOKENS:
        raise ValueError(f"usage field {name!r} is more than any call can use: {short_repr(value)}")
    return int(value)


def count(obj: Any, name: str, camel: str | None = None) -> int:
    """``whole()`` of one field."""
    return whole(field(obj, name, camel), name)


def counts(get: Get, *names: str) -> list[int]:
    """``whole()`` of several fields, in one call (nearly always an int in range or absent:
    ``whole()`` runs only for a value that is not an int in range). A plain loop: on the hot
    path of every call, it runs fewer interpreter instructions than a comprehension or map."""
    found = []
    for name in names:
        value = get(name)
        if type(value) is not int or not 0 <= value <= MAX_TOKENS:
            value = 0 if value is None else whole(value, name)
        found.append(value)
    return found


#: The totals of a usage block, as OpenAI (chat, Responses) and Anthropic spell them: one that is
#: not 0 reports usage (``reports_nothing`` looks no further).
_TOTALS = (
    "prompt_tokens",
    "completion_tokens",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
)


def reports_nothing(usage: Any) -> bool:
    """True for a usage block without a single count, or with every count 0 (``{}`` or zeros
    from a proxy or compatible server that strips or zeroes them): a billed call always has a
    prompt, so nothing was reported, and the call is estimated as if the block were absent
    (never a silent $0, nor a failed call). The rule Gemini's ``reports_usage`` follows for
    its own spelling. Every count in the block counts, nested ones too: zero tokens beside 3
    web searches (``server_tool_use``) or a compaction's ``iterations`` report what was billed;
    durations (Groq's ``queue_time``, seconds) and costs are no counts. False for anything else,
    unreadable values included (negative, text, NaN): the reader says what is wrong with them."""
    if not isinstance(usage, (dict, BaseModel)):  # text or a number: the reader refuses it
        return False
    try:
        get = getter(usage)
        if any(get(name) for name in _TOTALS):  # the usual answer: no need to look further
            return False
        return not _holds_a_count(usage, 0)
    except Exception:
        return False


def _holds_a_count(value: Any, depth: int) -> bool:
    """Whether ``value`` (a usage block, or a part of one) holds a count that is not 0: a whole
    number (floats are durations and costs; text and booleans are labels). Too deep to look
    through: it does."""
    kind = type(value)
    if kind is int:
        return bool(value != 0)
    if value is None or kind is bool or kind is str or kind is float:
        return False
    if depth >= 8:
        return True
    if kind is list or kind is tuple:
        return any(_holds_a_count(item, depth + 1) for item in value)
    if kind is not dict and isinstance(value, BaseModel):
        value = {**value.__dict__, **(value.__pydantic_extra__ or {})}
    if isinstance(value, dict):
        return any(_holds_a_count(item, depth + 1) for item in value.values())
    return True  # something else: left to the reader
