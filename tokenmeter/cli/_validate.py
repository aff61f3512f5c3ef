"""Check every field of a usage record as it is read, in one place, before any command uses it.

A line can be valid JSON and still not be a record: ``"input_tokens": "many"``, a cost of
``1e400`` (JSON's infinity), ``NaN``, tags that are a list. SQLite is typed per value, not per
column, so another program may have stored text in an INTEGER column. Such a record is refused
here (``BadRecord``) and the reader skips and counts it like a torn line, so that no command
meets a value of the wrong type later, half-way through adding it up or printing it.

The checks (SPEC §3): token counts are ints in ``[0, 2**63)`` (never bool, float or text), input
and output always there, ``total_tokens`` their sum; costs are finite numbers within
``MAX_COST_USD`` either way, read into exact Decimals; text fields are strings or null (a lone
surrogate is allowed: it is replaced when printed); tags map strings to strings; the timestamp
is an ISO-8601 instant, normalised to the record format so windows and days compare as text.
Unknown keys are left alone: a newer writer may add fields.

``record_from_row`` turns a SQLite row into the JSONL shape and applies ``check_record``: every
row a command lists (``--detailed``, ``session``, ``tail``) passes through it. The totals that
SQLite adds up itself use ``sql_valid`` instead, which states in SQL the checks on the columns those
totals read (timestamp, provider, model, session, counts, cost, tags). Checking every column in SQL
would cost several times the report itself, so a row that is bad only in a column no total reads
(``cost_breakdown``, ``latency_ms``, a tag value that is a number) still counts in totals, and is
skipped and counted where calls are listed.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Collection
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from tokenmeter.cli._dates import format_instant

__all__ = [
    "MAX_COST_USD",
    "MAX_COUNT",
    "MAX_LATENCY_MS",
    "BadRecord",
    "check_record",
    "record_from_row",
    "sql_valid",
]

#: Largest token count accepted: SQLite's integers are 64-bit, and no call comes near.
MAX_COUNT = 2**63 - 1
#: Largest cost of one call accepted, either sign: far above any real call, far below where
#: Decimal arithmetic or a formatted number gets unwieldy.
MAX_COST_USD = Decimal(10**9)
_MAX_COST_FLOAT = float(MAX_COST_USD)
#: Longest latency accepted, in ms (about 30 years); it only has to be a sane finite number.
MAX_LATENCY_MS = 1e12

COUNT_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "total_tokens",
)
TEXT_FIELDS = (
    "model_provider",
    "model_name",
    "id",
    "request_model",
    "operation",
    "price_source",
    "session_id",
    "session_name",
    "status",
    "error",
    "request_id",
)
FLAG_FIELDS = ("streamed", "estimated")
#: The counts every record has (the original unified format's); the others default to 0.
_REQUIRED_COUNTS = ("input_tokens", "output_tokens")

_fromisoformat = datetime.fromisoformat
_DECIMAL_TEXT = re.compile(r"-?\d+(?:\.\d+)?")


class BadRecord(ValueError):
    """A record with a field of the wrong type or out of range; the message names the field."""


def _bad(name: str, value: Any) -> BadRecord:
    shown = repr(value)
    return BadRecord(f"{name}: {shown[:60]}{'...' if len(shown) > 60 else ''}")


def _is_record_format(text: str) -> bool:
    """The shape of ``2026-11-22T10:00:00.123Z``, when ``fromisoformat`` also accepts it.

    Cheaper than the regex on the path every record takes.
    """
    return len(text) == 24 and text[4:20:3] == "--T::." and text[23] == "Z"


def _timestamp(value: Any) -> str:
    """The instant in the record format (``2026-11-22T10:00:00.123Z``); naive means UTC."""
    if type(value) is not str:
        raise _bad("timestamp", value)
    try:
        parsed = _fromisoformat(value)
    except ValueError:
        raise _bad("timestamp", value) from None
    if _is_record_format(value):
        return value
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return format_instant(parsed)
    except OverflowError:  # e.g. 0001-01-01T00:00+01:00 is before year 1 in UTC
        raise _bad("timestamp", value) from None


def _money(name: str, value: Any) -> Decimal:
    """A finite cost within MAX_COST_USD as an exact Decimal (a float via its shortest repr)."""
    kind = type(value)
    # NaN fails both comparisons, infinity (JSON's 1e400) one of them.
    if kind is float and -_MAX_COST_FLOAT <= value <= _MAX_COST_FLOAT:
        return Decimal(repr(value))
    if kind is int and -MAX_COST_USD <= value <= MAX_COST_USD:
        return Decimal(value)
    if kind is Decimal and value.is_finite() and -MAX_COST_USD <= value <= MAX_COST_USD:
        exact: Decimal = value
        return exact
    raise _bad(name, value)


def _is_money(value: Any) -> bool:
    """What ``_money`` accepts, without building the Decimal (for parts most commands skip)."""
    kind = type(value)
    if kind is float or kind is int:
        return bool(-_MAX_COST_FLOAT <= value <= _MAX_COST_FLOAT)
    if kind is Decimal:
        return bool(value.is_finite() and -MAX_COST_USD <= value <= MAX_COST_USD)
    return False


def check_record(data: dict[str, Any], *, counts_add_up: bool = True) -> dict[str, Any]:
    """``data`` with every known field checked and normalised in place; BadRecord if one is bad.

    After this, counts are ints (cache and reasoning counts missing: 0; a missing total: input +
    output), the cost a Decimal or None, ``cost_breakdown`` None
    or a dict of finite numbers within range or None (``Call`` makes them Decimal, drops None),
    ``tags`` a dict of str (missing: {}), flags bool, the timestamp in the record format.

    ``counts_add_up=False`` leaves out the checks that input and output are there and that the
    total is their sum: for SQLite rows, whose totals SQL adds up under ``sql_valid``, which
    does not state them (a listed call and the totals must agree on which rows count).
    """
    get = data.get
    data["timestamp"] = _timestamp(get("timestamp"))
    total = get("total_tokens")
    for name in COUNT_FIELDS:
        value = get(name)
        if value is None:
            # Only the counts a writer may leave out read as 0 (older writers had no cache or
            # reasoning counts); a record without its input or output count is no record.
            if counts_add_up and name in _REQUIRED_COUNTS:
                raise _bad(name, value)
            data[name] = 0
        elif type(value) is not int or not 0 <= value <= MAX_COUNT:
            raise _bad(name, value)
    if counts_add_up:
        # SPEC §3: total_tokens is input_tokens + output_tokens. A line whose counts disagree
        # would make a report's columns not add up; a missing total is their sum.
        made = data["input_tokens"] + data["output_tokens"]
        if total is None:
            data["total_tokens"] = made
        elif total != made:
            raise _bad("total_tokens", total)
    for name in TEXT_FIELDS:
        value = get(name)
        if value is not None and type(value) is not str:
            raise _bad(name, value)
    cost = get("estimated_cost_usd")
    if cost is not None:
        data["estimated_cost_usd"] = _money("estimated_cost_usd", cost)
    breakdown = get("cost_breakdown")
    if breakdown is not None:
        if type(breakdown) is not dict:
            raise _bad("cost_breakdown", breakdown)
        for key, part in breakdown.items():
            if part is not None and not _is_money(part):
                raise _bad(f"cost_breakdown.{key}", part)
    tags = get("tags")
    if tags is None:
        data["tags"] = {}
    elif type(tags) is not dict or not all(type(v) is str for v in tags.values()):
        raise _bad("tags", tags)
    latency = get("latency_ms")
    if latency is not None and (
        type(latency) not in (int, float) or not 0 <= latency <= MAX_LATENCY_MS
    ):
        raise _bad("latency_ms", latency)
    for name in FLAG_FIELDS:
        value = get(name)
        if value is None:
            data[name] = False
        elif type(value) is not bool:
            raise _bad(name, value)
    for name in ("modalities", "tool_requests"):
        parts = get(name)
        if parts is not None and type(parts) is not dict:
            raise _bad(name, parts)
    return data


# --- SQLite ----------------------------------------------------------------------------------


def _decimal_text(name: str, value: Any) -> Any:
    """SQLite keeps costs as exact decimal text (``0.0075``): that text as a Decimal.

    Any other text is refused here; a number is passed on for ``check_record`` to judge.
    """
    if type(value) is not str:
        return value
    if not _DECIMAL_TEXT.fullmatch(value):
        raise _bad(name, value)
    return Decimal(value)


#: One decoder for every JSON column of every row (``json.loads`` with an argument makes one a
#: call); numbers with a fraction read as exact Decimals.
_DECODE = json.JSONDecoder(parse_float=Decimal).decode


def _json_text(name: str, value: Any) -> Any:
    if value is None:
        return None
    if type(value) is not str:
        raise _bad(name, value)
    if value == "{}":  # no tags, modalities or server tools: most rows
        return {}
    try:
        return _DECODE(value)
    except (ValueError, RecursionError):
        raise _bad(name, value) from None


def record_from_row(row: sqlite3.Row) -> dict[str, Any]:
    """A ``records`` row in the JSONL shape, checked (BadRecord if a value has the wrong type)."""
    data = dict(row)
    cost = data.get("estimated_cost_usd")
    if cost is not None:
        data["estimated_cost_usd"] = _decimal_text("estimated_cost_usd", cost)
    if "cost_pusd" in data:
        # The exact text and the integer pico-USD the SQL totals use must agree on "priced".
        pusd = data.pop("cost_pusd")
        if (pusd is None) != (cost is None) or (pusd is not None and type(pusd) is not int):
            raise _bad("cost_pusd", pusd)
    for name in ("tags", "cost_breakdown", "modalities", "tool_requests"):
        if name in data:
            data[name] = _json_text(name, data[name])
    breakdown = data.get("cost_breakdown")
    if type(breakdown) is dict:
        data["cost_breakdown"] = {
            key: None if part is None else _decimal_text(f"cost_breakdown.{key}", part)
            for key, part in breakdown.items()
        }
    for name in FLAG_FIELDS:
        value = data.get(name)
        if type(value) is int and value in (0, 1):
            data[name] = bool(value)
    timestamp = data.get("timestamp")
    if type(timestamp) is not str or not _is_record_format(timestamp):
        # The SQL totals compare and group timestamps as text: only the record format will do.
        raise _bad("timestamp", timestamp)
    return check_record(data, counts_add_up=False)


_SQL_TEXT_COLUMNS = ("model_provider", "model_name", "session_id", "session_name")


def sql_valid(columns: Collection[str], prefix: str = "") -> str:
    """A SQL condition true for rows whose columns read by the SQL totals are sound.

    The same checks as ``check_record`` on those columns, as far as SQL states them cheaply:
    the timestamp in the record format (so that windows and days compare as text), counts
    non-negative integers, ``cost_pusd`` an integer exactly when the cost text is there, and that
    text plain digits; tags a JSON object (valid JSON whose first character past white space is
    ``{``: one parse). Built only from the ``columns`` the table has;
    ``prefix`` is a table alias with its dot (``"r."``). Never NULL, so ``NOT (...)`` selects the
    rest.
    """
    parts: list[str] = []

    def has(name: str) -> str | None:
        return prefix + name if name in columns else None

    # Written for speed: every opcode here runs once per row of the window.
    if c := has("timestamp"):
        parts.append(f"{c} GLOB '????-??-??T??:??:??.???Z' AND julianday({c}) IS NOT NULL")
    for name in COUNT_FIELDS:
        if c := has(name):
            parts.append(f"(typeof({c}) = 'integer' AND {c} >= 0 OR {c} IS NULL)")
    for name in _SQL_TEXT_COLUMNS:
        if c := has(name):
            parts.append(f"(typeof({c}) = 'text' OR {c} IS NULL)")
    if c := has("estimated_cost_usd"):
        text = f"typeof({c}) = 'text' AND {c} NOT GLOB '*[^0-9.-]*'"
        if p := has("cost_pusd"):
            parts.append(
                f"CASE WHEN {p} IS NULL THEN {c} IS NULL "
                f"ELSE typeof({p}) = 'integer' AND {text} END"
            )
        else:
            parts.append(f"({c} IS NULL OR {text})")
    if c := has("tags"):
        parts.append(
            f"({c} IS NULL OR {c} = '{{}}' OR typeof({c}) = 'text' AND json_valid({c}) "
            f"AND ltrim({c}, char(32, 9, 10, 13)) GLOB '{{*')"
        )
    return "(" + " AND ".join(parts or ["1"]) + ")"
