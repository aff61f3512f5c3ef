"""SQLite sink: one local database that several processes can write at once.

Why it is shaped this way:
- WAL journal + a busy timeout: writers from other processes wait for the lock instead of
  failing, and readers (the CLI) never block writers. SQLite waits in slices (``_BUSY_SLICE_S``)
  that ``_begin`` repeats up to ``busy_timeout_s``: between them it sees the exit's deadline.
- One ``BEGIN IMMEDIATE`` transaction per batch with ``ON CONFLICT(id) DO NOTHING``: a batch is
  stored whole or not at all, and a batch retried after a failure never creates duplicates. Not
  ``INSERT OR IGNORE``: it also skips, silently, a row breaking a NOT NULL or CHECK constraint
  someone added to the table; such a row must fail, so the pipeline reports and sets it aside.
- The connection is opened lazily and reopened after ``fork()`` (SQLite connections must not
  cross a fork), and ``fork()`` waits for our transactions to end (``_ForkGate``).
- Before each batch one ``stat`` checks that ``path`` still names the file the connection has
  open: a database deleted or renamed away (log rotation) is closed and a new one made at
  ``path``, instead of records going on into a file no reader finds there.
- The schema version lives in ``PRAGMA user_version``; ``_MIGRATIONS[n]`` upgrades version ``n``
  to ``n + 1``. A database written by a newer tokenmeter is refused rather than damaged.

Costs are stored twice: ``estimated_cost_usd`` as exact decimal text and ``cost_pusd`` as integer
pico-USD, so ``SUM(cost_pusd)`` is exact and fast.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from itertools import chain
from operator import itemgetter
from pathlib import Path
from typing import Any

from tokenmeter._fork import renew_after_fork
from tokenmeter._models import SessionInfo, UsageRecord, _iso, short_repr
from tokenmeter._packed import MAPPINGS, as_dict
from tokenmeter._totals import USD_CONTEXT
from tokenmeter.sinks._encode import compact_json
from tokenmeter.sinks._files import (
    ensure_private_dir,
    file_id,
    file_path,
    make_private,
    still_names,
)

__all__ = ["SCHEMA_VERSION", "SQLiteSink"]

_SCHEMA_V1 = """
CREATE TABLE records (
  id TEXT PRIMARY KEY,
  timestamp TEXT NOT NULL,
  model_provider TEXT NOT NULL,
  model_name TEXT NOT NULL,
  input_tokens INTEGER NOT NULL,
  output_tokens INTEGER NOT NULL,
  total_tokens INTEGER NOT NULL,
  estimated_cost_usd TEXT,
  cost_pusd INTEGER,
  request_model TEXT,
  operation TEXT,
  cache_read_tokens INTEGER NOT NULL DEFAULT 0,
  cache_write_tokens INTEGER NOT NULL DEFAULT 0,
  reasoning_tokens INTEGER NOT NULL DEFAULT 0,
  cost_breakdown TEXT,
  price_source TEXT,
  session_id TEXT,
  session_name TEXT,
  tags TEXT NOT NULL DEFAULT '{}',
  latency_ms REAL,
  streamed INTEGER NOT NULL DEFAULT 0,
  status TEXT NOT NULL DEFAULT 'ok',
  error TEXT,
  request_id TEXT,
  estimated INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX ix_records_timestamp ON records(timestamp);
CREATE INDEX ix_records_session ON records(session_id);
CREATE INDEX ix_records_model ON records(model_provider, model_name);
CREATE TABLE sessions (
  id TEXT PRIMARY KEY,
  name TEXT,
  parent_id TEXT,
  tags TEXT NOT NULL DEFAULT '{}',
  status TEXT NOT NULL,
  started_at TEXT NOT NULL,
  ended_at TEXT,
  notes TEXT,
  budget_usd TEXT
);
"""


def _create_v1(conn: sqlite3.Connection) -> None:
    for statement in _SCHEMA_V1.split(";"):
        if statement.strip():
            conn.execute(statement)


def _add_modalities_v2(conn: sqlite3.Connection) -> None:
    """Per-modality token counts and server-side tool requests, as JSON objects."""
    conn.execute("ALTER TABLE records ADD COLUMN modalities TEXT NOT NULL DEFAULT '{}'")
    conn.execute("ALTER TABLE records ADD COLUMN tool_requests TEXT NOT NULL DEFAULT '{}'")


#: The totals a session carries when it is stored (``SessionInfo``): NULL in the rows of sessions
#: stored before version 3, which a reader adds up from the records instead.
_SESSION_TOTALS_V3 = """
ALTER TABLE sessions ADD COLUMN calls INTEGER;
ALTER TABLE sessions ADD COLUMN input_tokens INTEGER;
ALTER TABLE sessions ADD COLUMN output_tokens INTEGER;
ALTER TABLE sessions ADD COLUMN cost_usd TEXT;
ALTER TABLE sessions ADD COLUMN unpriced_calls INTEGER
"""


def _add_session_totals_v3(conn: sqlite3.Connection) -> None:
    """Sessions store their totals (nested sessions included), as ``SessionInfo`` has them."""
    for statement in _SESSION_TOTALS_V3.split(";"):
        conn.execute(statement)


#: A row is sound when the columns the report totals read hold what this sink writes: the
#: timestamp in the record format, counts non-negative integers, names text, a cost as integer
#: pico-USD exactly when its decimal text is there, tags a JSON object. This is the condition
#: ``tokenmeter.cli._validate.sql_valid`` stated for these columns at version 4, kept as it was
#: (version 5 replaced it: ``_SOUND_ROW_V5``).
_SOUND_ROW_V4 = (
    "(timestamp GLOB '????-??-??T??:??:??.???Z' AND julianday(timestamp) IS NOT NULL"
    " AND (typeof(input_tokens) = 'integer' AND input_tokens >= 0 OR input_tokens IS NULL)"
    " AND (typeof(output_tokens) = 'integer' AND output_tokens >= 0 OR output_tokens IS NULL)"
    " AND (typeof(cache_read_tokens) = 'integer' AND cache_read_tokens >= 0"
    " OR cache_read_tokens IS NULL)"
    " AND (typeof(cache_write_tokens) = 'integer' AND cache_write_tokens >= 0"
    " OR cache_write_tokens IS NULL)"
    " AND (typeof(reasoning_tokens) = 'integer' AND reasoning_tokens >= 0"
    " OR reasoning_tokens IS NULL)"
    " AND (typeof(total_tokens) = 'integer' AND total_tokens >= 0 OR total_tokens IS NULL)"
    " AND (typeof(model_provider) = 'text' OR model_provider IS NULL)"
    " AND (typeof(model_name) = 'text' OR model_name IS NULL)"
    " AND (typeof(session_id) = 'text' OR session_id IS NULL)"
    " AND (typeof(session_name) = 'text' OR session_name IS NULL)"
    " AND CASE WHEN cost_pusd IS NULL THEN estimated_cost_usd IS NULL"
    " ELSE typeof(cost_pusd) = 'integer' AND typeof(estimated_cost_usd) = 'text'"
    " AND estimated_cost_usd NOT GLOB '*[^0-9.-]*' END"
    " AND (tags IS NULL OR typeof(tags) = 'text' AND json_valid(tags)"
    " AND json_type(tags) = 'object'))"
)


def _index_unsound_rows_v4(conn: sqlite3.Connection) -> None:
    """A partial index of the rows that are not sound (normally none), kept by SQLite itself.

    SQLite is typed per value, so another program may store text in a count column; reports skip
    and count such rows. Finding them took a check of every row in every report, as long again as
    the report's own GROUP BY. SQLite now keeps them in this index as rows are inserted, updated
    or deleted, whoever writes them and however, so a report reads only the index. Nothing is
    refused or moved: a database keeps every row it had, and a reader without this index (an
    older database) still checks every row.
    """
    conn.execute(f"CREATE INDEX ix_records_unsound ON records(timestamp) WHERE NOT {_SOUND_ROW_V4}")


#: The condition of version 5, which ``sql_valid`` states (``tests/cli`` checks that the two
#: agree; when the reader's condition changes, a new migration replaces the index and this text
#: stays as it was). Tags are checked as in version 4, for one JSON parse less per insert: none
#: for no tags (``'{}'``), one for others (valid JSON whose first character past JSON's white
#: space is ``{`` is an object).
_SOUND_ROW_V5 = _SOUND_ROW_V4.replace(
    " AND (tags IS NULL OR typeof(tags) = 'text' AND json_valid(tags)"
    " AND json_type(tags) = 'object'))",
    " AND (tags IS NULL OR tags = '{}' OR typeof(tags) = 'text' AND json_valid(tags)"
    " AND ltrim(tags, char(32, 9, 10, 13)) GLOB '{*'))",
)


def _index_unsound_rows_v5(conn: sqlite3.Connection) -> None:
    """The index of unsound rows, rebuilt for a cheaper condition: SQLite checks it for every
    row inserted, and the tags' two JSON parses were a sixth of that check
    (``benchmarks/bench_callgrind.py`` counts what a record costs to store)."""
    conn.execute("DROP INDEX IF EXISTS ix_records_unsound")
    conn.execute(f"CREATE INDEX ix_records_unsound ON records(timestamp) WHERE NOT {_SOUND_ROW_V5}")


#: One session may be carried on by several processes (workers forked inside it, every process of
#: ``tokenmeter run``) or entered again under its id: each sends its own part of the totals
#: (``SessionInfo.part``). This table keeps the latest of each part; the session's row holds their
#: sum, which one process's last word is not. The totals stored before are the rows' parts ``''``.
SESSION_PARTS_V6 = """
CREATE TABLE IF NOT EXISTS session_parts (
  session_id TEXT NOT NULL,
  part TEXT NOT NULL,
  calls INTEGER NOT NULL,
  input_tokens INTEGER NOT NULL,
  output_tokens INTEGER NOT NULL,
  cost_usd TEXT NOT NULL,
  unpriced_calls INTEGER NOT NULL,
  PRIMARY KEY (session_id, part)
);
INSERT INTO session_parts
  SELECT id, '', calls, COALESCE(input_tokens, 0), COALESCE(output_tokens, 0),
         COALESCE(cost_usd, '0'), COALESCE(unpriced_calls, 0)
  FROM sessions WHERE calls IS NOT NULL
  ON CONFLICT DO NOTHING
"""


def _add_session_parts_v6(conn: sqlite3.Connection) -> None:
    """Each process's part of a session's totals, which the session's row adds up."""
    for statement in SESSION_PARTS_V6.split(";"):
        conn.execute(statement)


#: ``_MIGRATIONS[n]`` takes a database from schema version ``n`` to ``n + 1``, inside the
#: caller's transaction. Append a function to evolve the schema; never edit an existing one.
_MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _create_v1,
    _add_modalities_v2,
    _add_session_totals_v3,
    _index_unsound_rows_v4,
    _index_unsound_rows_v5,
    _add_session_parts_v6,
]

SCHEMA_VERSION = len(_MIGRATIONS)


#: Rows per INSERT statement (see ``_Statement``).
_RUN_ROWS = 32


class _Statement:
    """An INSERT of many rows in one statement, which SQLite runs in one step.

    The sqlite3 module lets go of the GIL for every step it runs; ``executemany`` steps once per
    row, so a writer would ask for the GIL back after every record and cost a CPU-bound caller
    thread one forced thread switch per record. One statement per run of rows asks once.
    Binding a statement's parameters holds the GIL, so a run is at most ``_RUN_ROWS`` rows: a
    caller waiting for the GIL waits for one short bind, not for thousands of parameters.
    ``values`` is the rows' parameters one after the other, ``width`` per row.
    """

    __slots__ = ("_head", "_one", "_sql", "_tail", "_width")

    def __init__(self, head: str, width: int, tail: str = "") -> None:
        self._head, self._width, self._tail = head, width, tail
        self._one = f"({', '.join('?' * width)})"
        self._sql: dict[int, str] = {}

    def run(self, conn: sqlite3.Connection, values: Sequence[Any]) -> None:
        width = self._width
        per = max(1, min(_RUN_ROWS, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width))
        start, left = 0, len(values) // width
        while left:
            # Runs of a power of two rows (or as many as SQLite takes): a handful of statements
            # to prepare and cache, whatever the batch sizes.
            count = min(per, 1 << (left.bit_length() - 1))
            end = start + count * width
            conn.execute(self._text(count), values[start:end] if start or left > count else values)
            start, left = end, left - count

    def _text(self, count: int) -> str:
        sql = self._sql.get(count)
        if sql is None:
            sql = self._sql[count] = self._head + ", ".join([self._one] * count) + self._tail
        return sql


_RECORD_COLUMNS = (
    "id",
    "timestamp",
    "model_provider",
    "model_name",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "estimated_cost_usd",
    "cost_pusd",
    "request_model",
    "operation",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_breakdown",
    "price_source",
    "session_id",
    "session_name",
    "tags",
    "latency_ms",
    "streamed",
    "status",
    "error",
    "request_id",
    "estimated",
    "modalities",
    "tool_requests",
)
#: The columns of the rows ``_session_row`` makes (the PostgreSQL sink's too).
_SESSION_COLUMNS = (
    "id",
    "name",
    "parent_id",
    "tags",
    "status",
    "started_at",
    "ended_at",
    "notes",
    "budget_usd",
    "calls",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "unpriced_calls",
)
#: The totals among them, which the session's parts make (``sum_parts``).
SESSION_TOTALS = ("calls", "input_tokens", "output_tokens", "cost_usd", "unpriced_calls")
#: Whether an incoming session state (``excluded``) may set what the stored row says: not if it
#: is of an earlier run of the id, one that had ended when the stored run started. An id entered
#: again (a job resumed after a crash) has runs one after the other, and a late call of an earlier
#: one (a thread it started, a stream read after it) sends that run's state again: the row of the
#: resumed, completed job went back to the crashed run's "failed" and times. Runs at once (the
#: processes of one ``tokenmeter run``) overlap: the last state stored sets the row.
#: ``{collate}`` makes the comparison of the ISO texts bytewise where the database's is not.
RUN_NOT_EARLIER = (
    "excluded.started_at{collate} >= sessions.started_at OR excluded.ended_at IS NULL"
    " OR excluded.ended_at{collate} > sessions.started_at"
)
#: The row of the process that entered the session sets what it says (name, status, times...).
_UPSERT_SESSION = _Statement(
    f"INSERT INTO sessions ({', '.join(_SESSION_COLUMNS)}) VALUES ",
    len(_SESSION_COLUMNS),
    " ON CONFLICT(id) DO UPDATE SET "
    + ", ".join(
        f"{column} = excluded.{column}"
        for column in _SESSION_COLUMNS[1:]
        if column not in SESSION_TOTALS
    )
    + " WHERE "
    + RUN_NOT_EARLIER.format(collate=""),
)
#: A process forked inside it only adds its part: its row is stored if the session has none yet.
_ADD_SESSION = _Statement(
    f"INSERT INTO sessions ({', '.join(_SESSION_COLUMNS)}) VALUES ",
    len(_SESSION_COLUMNS),
    " ON CONFLICT(id) DO NOTHING",
)
_PART_COLUMNS = ("session_id", "part", *SESSION_TOTALS)
_UPSERT_PART = _Statement(
    f"INSERT INTO session_parts ({', '.join(_PART_COLUMNS)}) VALUES ",
    len(_PART_COLUMNS),
    " ON CONFLICT(session_id, part) DO UPDATE SET "
    + ", ".join(f"{column} = excluded.{column}" for column in SESSION_TOTALS),
)
_SET_TOTALS = (
    f"UPDATE sessions SET {', '.join(f'{column} = ?' for column in SESSION_TOTALS)} WHERE id = ?"
)
#: Session ids a query of the parts names at once (well under SQLite's 999 variables).
_IDS_PER_QUERY = 500


def decimal_text(value: Decimal) -> str:
    """Exact fixed-point text (``0.0000001``, never ``1E-7``) that ``Decimal()`` reads back."""
    text = str(value)  # the same text unless it has an exponent, and cheaper than format()
    return text if "E" not in text else format(value, "f")


def to_pico_usd(value: Decimal) -> int:
    """USD as integer pico-USD (10**-12), rounded half-even: exact sums in SQL."""
    scaled = value.scaleb(12)  # value * 10**12, as exact (and as rounded to the context) as *
    pico = int(scaled)
    if pico != scaled:  # a fraction of a pico-USD: round it
        pico = int(scaled.to_integral_value(rounding=ROUND_HALF_EVEN))
    return pico


#: Text made before, for the shapes records repeat: ``_MINUTES`` the timestamps' first 17
#: characters per minute; ``_BREAKDOWN_FORMATS`` a ``%`` format per tuple of cost-breakdown keys;
#: ``_TAGS`` the JSON of tags per tuple of their items. Each is emptied when it grows past
#: ``_MEMO_SIZE`` (the sinks' writer threads may share them: a dict's get and set are atomic).
_MINUTES: dict[int, str] = {}
_BREAKDOWN_FORMATS: dict[tuple[Any, ...], tuple[str, int]] = {}
_TAGS: dict[tuple[Any, ...], str] = {}
_MEMO_SIZE = 256
_SECONDS = [f"{second:02d}." for second in range(60)]
_MILLISECONDS = [f"{ms:03d}Z" for ms in range(1000)]


def _memo(memo: dict[Any, str], key: Any, text: str) -> str:
    if len(memo) >= _MEMO_SIZE:
        memo.clear()
    memo[key] = text
    return text


def iso_text(ts: datetime) -> str:
    """``_models._iso(ts)`` (the record's timestamp text), made from the minute's text."""
    if ts.tzinfo is not UTC:
        return _iso(ts)
    minute = ts.toordinal() * 1440 + ts.hour * 60 + ts.minute
    head = _MINUTES.get(minute)
    if head is None:
        head = _memo(_MINUTES, minute, _iso(ts)[:17])  # "2026-11-22T10:00:"
    return head + _SECONDS[ts.second] + _MILLISECONDS[ts.microsecond // 1000]


def breakdown_text(breakdown: dict[str, Decimal]) -> str:
    """``compact_json`` of the breakdown with each part as ``decimal_text``: the keys' JSON made
    once per set of keys, the parts put in by ``%s`` (the text ``str()`` gives)."""
    keys = tuple(breakdown)
    memo = _BREAKDOWN_FORMATS.get(keys)
    if memo is None:
        if any(type(key) is not str for key in keys):
            return compact_json({k: decimal_text(v) for k, v in breakdown.items()})
        parts = [compact_json(key).replace("%", "%%") + ':"%s"' for key in keys]
        form = "{" + ",".join(parts) + "}"
        memo = _BREAKDOWN_FORMATS[keys] = (form, form.count("E"))
        if len(_BREAKDOWN_FORMATS) > _MEMO_SIZE:
            _BREAKDOWN_FORMATS.clear()
    form, letters = memo
    values = tuple(breakdown.values())
    text = form % values
    if text.count("E") != letters:  # a part in exponent form, which decimal text never has
        text = form % tuple(map(decimal_text, values))
    return text


def tags_text(tags: dict[str, str]) -> str:
    """``compact_json(tags)``, made once for tags seen before (a session's records repeat them)."""
    return _tags_text((*tags, *tags.values())) if tags else "{}"


def _tags_text(flat: tuple[Any, ...]) -> str:
    """``tags_text`` of tags laid out flat (their keys, then their values). Only text keys and
    values are kept in the memo: equal tags then have the same JSON."""
    if not flat:
        return "{}"
    try:
        text = _TAGS.get(flat)
    except TypeError:  # an unhashable value: no memo
        return compact_json(as_dict(flat))
    if text is None:
        text = compact_json(as_dict(flat))
        if all(type(part) is str for part in flat):
            _memo(_TAGS, flat, text)
    return text


def _record_row(r: UsageRecord) -> tuple[Any, ...]:
    """The record's values for ``_RECORD_COLUMNS`` (the PostgreSQL sink's rows)."""
    cost = r.estimated_cost_usd
    breakdown = r.cost_breakdown
    return (
        r.id,
        iso_text(r.timestamp),
        r.model_provider,
        r.model_name,
        r.input_tokens,
        r.output_tokens,
        r.total_tokens,
        None if cost is None else decimal_text(cost),
        None if cost is None else to_pico_usd(cost),
        r.request_model,
        r.operation,
        r.cache_read_tokens,
        r.cache_write_tokens,
        r.reasoning_tokens,
        None if breakdown is None else breakdown_text(breakdown),
        r.price_source,
        r.session_id,
        r.session_name,
        tags_text(r.tags),
        r.latency_ms,
        int(r.streamed),
        r.status,
        r.error,
        r.request_id,
        int(r.estimated),
        compact_json(r.modalities) if r.modalities else "{}",
        compact_json(r.tool_requests) if r.tool_requests else "{}",
    )


# The SQLite sink's INSERT takes the same values as ``_record_row`` in another order, shaped to
# bind cheaply: on Python 3.11 the sqlite3 module binds None through its adapter lookup, which
# raises and clears an AttributeError for every None (the cost of building a row). So a None goes
# in as 0 where the column's SQL is ``NULLIF(?, 0)`` (text columns: text is never equal to the
# integer 0) or ``NULLIF(?, '')`` (``cost_pusd``: an integer is never equal to text), and a
# ``latency_ms`` of None as NaN, which SQLite stores as NULL.
#: Columns that are never None, read in one call.
_PLAIN_COLUMNS = (
    "id",
    "model_provider",
    "model_name",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "status",
)
#: Text columns that may be None.
_OPTIONAL_TEXT_COLUMNS = (
    "request_model",
    "operation",
    "price_source",
    "session_id",
    "session_name",
    "error",
    "request_id",
)
#: The rest, built one by one in ``_sqlite_values``, with their SQL.
_BUILT_COLUMNS = {
    "latency_ms": "?",
    "timestamp": "?",
    "estimated_cost_usd": "NULLIF(?, 0)",
    "cost_pusd": "NULLIF(?, '')",
    "streamed": "?",
    "estimated": "?",
    "cost_breakdown": "NULLIF(?, 0)",
    "tags": "?",
    "modalities": "?",
    "tool_requests": "?",
}
#: The fields ``_BUILT_COLUMNS`` are made from.
_BUILT_FROM = ("latency_ms", "timestamp", "estimated_cost_usd", "streamed", "estimated", *MAPPINGS)
_FIELDS = _PLAIN_COLUMNS + _OPTIONAL_TEXT_COLUMNS + _BUILT_FROM
_read = itemgetter(*_FIELDS)
_NAN = float("nan")


def _fields(r: UsageRecord) -> dict[str, Any]:
    """The record's fields by name: its ``__dict__`` where it has one (one lookup per field
    instead of an attribute access through the model's class)."""
    try:
        fields: dict[str, Any] = r.__dict__
    except AttributeError:
        return {name: getattr(r, name) for name in _FIELDS}
    return fields


def _sqlite_row(r: UsageRecord) -> tuple[Any, ...]:
    """The record's values for ``_SQLITE_INSERT``'s columns: text and numbers only, so that the
    row, made with the record, waits in the writer's buffer untracked by the garbage
    collector (see ``SQLiteSink._row``)."""
    (
        *plain,
        request_model,
        operation,
        price_source,
        session_id,
        session_name,
        error,
        request_id,
        latency,
        ts,
        cost,
        streamed,
        estimated,
        breakdown,
        tags,
        modalities,
        tools,
    ) = _read(_fields(r))
    return (
        *plain,
        0 if request_model is None else request_model,
        0 if operation is None else operation,
        0 if price_source is None else price_source,
        0 if session_id is None else session_id,
        0 if session_name is None else session_name,
        0 if error is None else error,
        0 if request_id is None else request_id,
        _NAN if latency is None else latency,
        iso_text(ts),
        0 if cost is None else decimal_text(cost),
        "" if cost is None else to_pico_usd(cost),
        int(streamed),
        int(estimated),
        0 if breakdown is None else breakdown_text(breakdown),
        tags_text(tags),
        compact_json(modalities) if modalities else "{}",
        compact_json(tools) if tools else "{}",
    )


_SQLITE_COLUMNS = _PLAIN_COLUMNS + _OPTIONAL_TEXT_COLUMNS + tuple(_BUILT_COLUMNS)
_SQL_OF_COLUMN = ["?"] * len(_PLAIN_COLUMNS) + ["NULLIF(?, 0)"] * len(_OPTIONAL_TEXT_COLUMNS)
_SQL_OF_COLUMN += _BUILT_COLUMNS.values()
#: The rows' values go in as plain ``?`` (each row of a long statement costs SQLite as little to
#: prepare as it can); the NULLIFs are applied once, in the SELECT over them. Only a duplicate id
#: is ignored (a retried batch); ``WHERE true`` tells SQLite's parser the ``ON`` starts the upsert,
#: not a join constraint.
_SQLITE_INSERT = _Statement(
    f"INSERT INTO records ({', '.join(_SQLITE_COLUMNS)}) SELECT "
    + ", ".join(
        sql.replace("?", f"column{number}") for number, sql in enumerate(_SQL_OF_COLUMN, start=1)
    )
    + " FROM (VALUES ",
    len(_SQLITE_COLUMNS),
    ") WHERE true ON CONFLICT(id) DO NOTHING",
)


#: The columns whose stand-in for NULL is 0 (``NULLIF(?, 0)``).
_ZERO_FOR_NULL = frozenset(
    column for column, sql in zip(_SQLITE_COLUMNS, _SQL_OF_COLUMN, strict=True) if "0)" in sql
)
_JSON_COLUMNS = ("cost_breakdown", "tags", "modalities", "tool_requests")


def _row_record(row: tuple[Any, ...]) -> dict[str, Any]:
    """``_sqlite_row``'s row read back: NULL's stand-ins as None, the JSON columns parsed."""
    data = dict(zip(_SQLITE_COLUMNS, row, strict=True))
    for column in _ZERO_FOR_NULL:
        if type(data[column]) is int and data[column] == 0:
            data[column] = None
    del data["cost_pusd"]
    latency = data["latency_ms"]
    if latency != latency:  # NaN
        data["latency_ms"] = None
    for column in _JSON_COLUMNS:
        if data[column] is not None:
            data[column] = json.loads(data[column])
    data["streamed"], data["estimated"] = bool(data["streamed"]), bool(data["estimated"])
    return data


def _session_row(s: SessionInfo) -> tuple[Any, ...]:
    return (
        s.id,
        s.name,
        s.parent_id,
        compact_json(s.tags),
        s.status,
        iso_text(s.started_at),
        None if s.ended_at is None else iso_text(s.ended_at),
        s.notes,
        None if s.budget_usd is None else decimal_text(s.budget_usd),
        s.calls,
        s.input_tokens,
        s.output_tokens,
        decimal_text(s.cost_usd),
        s.unpriced_calls,
    )


def part_row(s: SessionInfo) -> tuple[Any, ...]:
    """The ``session_parts`` row of ``s``: its sender's part of the session's totals."""
    return (
        s.id,
        s.part,
        s.calls,
        s.input_tokens,
        s.output_tokens,
        decimal_text(s.cost_usd),
        s.unpriced_calls,
    )


def sum_parts(rows: Iterable[Sequence[Any]]) -> list[tuple[Any, ...]]:
    """``(calls, input_tokens, output_tokens, cost_usd, unpriced_calls, session_id)`` for each
    session of ``rows`` (``session_parts`` rows, the session id first): its parts added up, the
    cost exactly (decimal text, as a session's own is stored)."""
    sums: dict[str, list[Any]] = {}
    for session_id, calls, input_tokens, output_tokens, cost, unpriced in rows:
        total = sums.setdefault(session_id, [0, 0, 0, Decimal(0), 0])
        total[0] += calls or 0
        total[1] += input_tokens or 0
        total[2] += output_tokens or 0
        with contextlib.suppress(ArithmeticError, TypeError, ValueError):  # edited by hand
            total[3] = USD_CONTEXT.add(total[3], Decimal(cost))
        total[4] += unpriced or 0
    return [(*total[:3], decimal_text(total[3]), total[4], id_) for id_, total in sums.items()]


def latest_parts(sessions: Sequence[SessionInfo]) -> dict[tuple[str, str], SessionInfo]:
    """The last state of each ``(session_id, part)`` among ``sessions``: the one stored."""
    return {(s.id, s.part): s for s in sessions}


#: An id with at most this many stored parts has its row summed from them on each store (the
#: work bounded by it): a row edited by hand, or otherwise off them, is mended (a row with no
#: parts at all keeps its totals as one first: ``kept_parts``). An id with more (entered again
#: per request) has its row moved by the change of the parts stored (``moved_totals``).
FEW_PARTS = 64
#: The condition, on a ``sessions`` row, that its id has at most ``FEW_PARTS`` parts: at most
#: ``FEW_PARTS + 1`` of them looked at (by the primary key), however many it has.
HAS_FEW_PARTS = (
    "NOT EXISTS (SELECT 1 FROM session_parts WHERE session_id = sessions.id "
    f"LIMIT 1 OFFSET {FEW_PARTS})"
)
#: The condition, on a ``sessions`` row, that its id has no parts at all: restored without
#: them, or copied from a database of schema version 5 or earlier (``kept_parts``).
HAS_NO_PARTS = "NOT EXISTS (SELECT 1 FROM session_parts WHERE session_id = sessions.id)"


def kept_parts(
    rows_before: dict[str, Sequence[Any]], partless: Collection[str]
) -> list[tuple[Any, ...]]:
    """The ``session_parts`` rows that keep the totals of the stored sessions' rows whose id has
    no parts (``partless``: ``HAS_NO_PARTS``), as part ``''``: what migration v6
    (``SESSION_PARTS_V6``) does for a row stored before it. Stored ahead of a batch's parts, so
    that the row is its totals so far plus the new parts: summed from the new parts alone, a row
    restored without its parts (2 runs, then one more) held that one run. ``rows_before``: the
    rows' ``SESSION_TOTALS``; a row whose totals are not whole (edited by hand) keeps none."""
    return [
        (id_, "", *totals)
        for id_, totals in rows_before.items()
        if id_ in partless and _whole(totals)
    ]


def _whole(totals: Sequence[Any]) -> bool:
    """Whether a stored row's ``SESSION_TOTALS`` are all there and numbers (not edited by hand,
    not missing as in a row stored before schema version 3)."""
    return _stored_usd(totals[3]) is not None and all(type(totals[i]) is int for i in (0, 1, 2, 4))


def moved_totals(
    latest: dict[tuple[str, str], SessionInfo],
    parts_before: dict[tuple[str, str], Sequence[Any]],
    rows_before: dict[str, Sequence[Any]],
    summed: Collection[str] = (),
) -> tuple[list[tuple[Any, ...]], list[str]]:
    """The totals of the sessions of ``latest`` (``latest_parts``), moved by the change of their
    parts: ``(calls, input_tokens, output_tokens, cost_usd, unpriced_calls, session_id)`` rows, as
    ``sum_parts`` makes, and the ids whose totals must be summed from their parts instead.

    ``parts_before``: the stored ``SESSION_TOTALS`` of those parts, ``rows_before`` those of the
    sessions' rows, as they were before this store. Moving a row by the change of one part costs
    the same however many runs its id had: summing every part on each store of an id entered
    again per request made the writer's time per run grow with the id's runs (190 ms a run after
    20,000), until records backed up and were set aside at exit. A row is summed from its parts
    instead when its id has few (``summed``: ``HAS_FEW_PARTS``), when it was not stored before,
    when its totals are not whole, or when a moved total would fall below zero or below the new
    totals of the parts stored now (a row edited by hand)."""
    changes: dict[str, list[Any]] = {}
    #: The new totals of each id's parts stored now: its row holds at least as much.
    floors: dict[str, list[Any]] = {}
    for key, info in latest.items():
        floor = floors.setdefault(info.id, [0, 0, 0, Decimal(0), 0])
        for index, value in enumerate(_totals_of(info)):
            floor[index] += value
        change = changes.setdefault(info.id, [0, 0, 0, Decimal(0), 0])
        old = parts_before.get(key)
        old_calls, old_in, old_out, old_cost, old_unpriced = old or (0, 0, 0, "0", 0)
        change[0] += info.calls - (old_calls or 0)
        change[1] += info.input_tokens - (old_in or 0)
        change[2] += info.output_tokens - (old_out or 0)
        change[3] = USD_CONTEXT.add(change[3], info.cost_usd)
        with contextlib.suppress(ArithmeticError, TypeError, ValueError):  # as sum_parts
            change[3] = USD_CONTEXT.subtract(change[3], Decimal(old_cost))
        change[4] += info.unpriced_calls - (old_unpriced or 0)
    moved: list[tuple[Any, ...]] = []
    resum: list[str] = []
    for id_, change in changes.items():
        row = rows_before.get(id_)
        if id_ in summed or row is None or not _whole(row):
            resum.append(id_)
            continue
        totals = [row[i] + change[i] for i in (0, 1, 2)]
        totals += [USD_CONTEXT.add(Decimal(row[3]), change[3]), row[4] + change[4]]
        if _below(totals, floors[id_]):
            resum.append(id_)  # the row was off its parts: it is mended
            continue
        moved.append((*totals[:3], decimal_text(totals[3]), totals[4], id_))
    return moved, resum


def _totals_of(info: SessionInfo) -> tuple[Any, ...]:
    """A part's totals, in ``SESSION_TOTALS`` order."""
    return (info.calls, info.input_tokens, info.output_tokens, info.cost_usd, info.unpriced_calls)


def _below(totals: list[Any], parts: list[Any]) -> bool:
    """Whether any of a moved row's ``totals`` is below zero, or below the totals of the
    ``parts`` stored now (both in ``SESSION_TOTALS`` order): the row was off its parts."""
    return any(total < max(least, 0) for total, least in zip(totals, parts, strict=True))


def _stored_usd(text: Any) -> Decimal | None:
    """A stored cost's exact value, or None when it is not one (edited by hand)."""
    try:
        value = Decimal(text)
    except (ArithmeticError, TypeError, ValueError):
        return None
    return value if value.is_finite() else None


def _store_sessions(conn: sqlite3.Connection, sessions: Sequence[SessionInfo]) -> None:
    """Store the sessions' rows and parts, and move each row's totals by its parts' change."""
    latest = latest_parts(sessions)
    ids = list(dict.fromkeys(key[0] for key in latest))
    rows_before = _stored_totals(conn, ids)
    kept = kept_parts(rows_before, _stored_ids_where(conn, ids, HAS_NO_PARTS))
    _UPSERT_PART.run(conn, _flat(kept))  # read with the parts: a batch's own part '' moves it
    parts_before = _stored_parts(conn, list(latest))
    owned = [_session_row(s) for s in sessions if not s.inherited]
    inherited = [_session_row(s) for s in sessions if s.inherited]
    _UPSERT_SESSION.run(conn, _flat(owned))
    _ADD_SESSION.run(conn, _flat(inherited))
    _UPSERT_PART.run(conn, _flat(part_row(s) for s in latest.values()))
    few = _stored_ids_where(conn, ids, HAS_FEW_PARTS)
    moved, resum = moved_totals(latest, parts_before, rows_before, few)
    conn.executemany(_SET_TOTALS, moved)
    for start in range(0, len(resum), _IDS_PER_QUERY):
        chunk = resum[start : start + _IDS_PER_QUERY]
        rows = conn.execute(
            f"SELECT {', '.join(_PART_COLUMNS[:1] + _PART_COLUMNS[2:])} FROM session_parts "
            f"WHERE session_id IN ({', '.join('?' * len(chunk))})",
            chunk,
        )
        conn.executemany(_SET_TOTALS, sum_parts(rows))


def _stored_parts(
    conn: sqlite3.Connection, keys: list[tuple[str, str]]
) -> dict[tuple[str, str], Sequence[Any]]:
    """The stored ``SESSION_TOTALS`` of the ``(session_id, part)`` parts of ``keys``, each found
    by its primary key (joined to the keys: ``(session_id, part) IN (VALUES ...)`` scanned the
    whole table)."""
    found: dict[tuple[str, str], Sequence[Any]] = {}
    per_query = _IDS_PER_QUERY // 2  # two variables a part
    columns = ", ".join(f"p.{column}" for column in _PART_COLUMNS)
    for start in range(0, len(keys), per_query):
        chunk = keys[start : start + per_query]
        for session_id, part, *totals in conn.execute(
            f"SELECT {columns} FROM (VALUES {', '.join(['(?, ?)'] * len(chunk))}) AS k "
            "JOIN session_parts AS p ON p.session_id = k.column1 AND p.part = k.column2",
            _flat(chunk),
        ):
            found[session_id, part] = totals
    return found


def _stored_totals(conn: sqlite3.Connection, ids: list[str]) -> dict[str, Sequence[Any]]:
    """The ``SESSION_TOTALS`` of the stored rows of the sessions ``ids``."""
    found: dict[str, Sequence[Any]] = {}
    for start in range(0, len(ids), _IDS_PER_QUERY):
        chunk = ids[start : start + _IDS_PER_QUERY]
        for id_, *totals in conn.execute(
            f"SELECT id, {', '.join(SESSION_TOTALS)} FROM sessions "
            f"WHERE id IN ({', '.join('?' * len(chunk))})",
            chunk,
        ):
            found[id_] = totals
    return found


def _stored_ids_where(conn: sqlite3.Connection, ids: list[str], condition: str) -> set[str]:
    """Those of the stored sessions ``ids`` whose row meets ``condition`` (``HAS_FEW_PARTS``,
    ``HAS_NO_PARTS``)."""
    found: set[str] = set()
    for start in range(0, len(ids), _IDS_PER_QUERY):
        chunk = ids[start : start + _IDS_PER_QUERY]
        found.update(
            id_
            for (id_,) in conn.execute(
                f"SELECT id FROM sessions WHERE id IN ({', '.join('?' * len(chunk))}) "
                f"AND {condition}",
                chunk,
            )
        )
    return found


def _flat(rows: Iterable[tuple[Any, ...]]) -> list[Any]:
    return list(chain.from_iterable(rows))


#: The longest busy timeout SQLite takes (``int`` milliseconds: 24.8 days).
_MAX_BUSY_TIMEOUT_MS = 2**31 - 1
#: The longest one wait of SQLite's for another connection's lock: ``_begin`` repeats such waits
#: up to ``busy_timeout_s``, and sees between them when the exit's time runs out. SQLite's own
#: wait cannot be ended from outside (``interrupt()`` does not end it): a writer still inside a
#: 30 s one when ``exit_timeout`` (10 s) ran out was cut off with the interpreter, and the records
#: it held were lost instead of set aside.
_BUSY_SLICE_S = 0.05


class SQLiteSink:
    """Stores records (and sessions) in the SQLite database at ``path``."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_s: float = 30.0) -> None:
        if (
            isinstance(busy_timeout_s, bool)
            or not isinstance(busy_timeout_s, int | float)
            or not busy_timeout_s >= 0
        ):
            raise ValueError(
                "busy_timeout_s must be a non-negative number of seconds, got "
                + short_repr(busy_timeout_s)
            )
        # Not a device: SQLite would make its journal beside it (/dev/zero-journal, mode 0o666).
        self.path = file_path(path)
        try:
            self._busy_timeout_s = float(busy_timeout_s)
        except OverflowError:  # a whole number past what a float holds (10**400): wait as inf
            self._busy_timeout_s = math.inf
        # SQLite keeps it as 32-bit milliseconds, and reads a larger number as 0 (no wait at all).
        self._busy_timeout_ms = int(min(self._busy_timeout_s * 1000, _MAX_BUSY_TIMEOUT_MS))
        #: The busy timeout set on the connection (ms): one slice, less at exit (``_begin``).
        self._slice_ms = 0
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        #: ``(st_dev, st_ino)`` of the database file the connection has open.
        self._file_id = (0, 0)

    def write(self, records: Sequence[UsageRecord]) -> None:
        # Built one by one from the run the writer hands over, which pauses the writer now and
        # then: a caller never waits for a whole chunk of rows to be built.
        self._write_rows([_sqlite_row(r) for r in records])

    # The pipeline's road for this sink's records (``tokenmeter._pipeline``): each row is made on
    # the thread that made its record, as part of the call, and the writer thread only binds and
    # steps. Made on the writer, thousands of rows at a time, the same work held the GIL in
    # stretches that delayed the application's calls by milliseconds.
    @staticmethod
    def _row(record: UsageRecord) -> tuple[Any, ...]:
        """The row the database will hold for ``record`` (text and numbers only)."""
        return _sqlite_row(record)

    def _write_rows(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Store rows made by ``_row``, in one transaction."""
        if rows:
            self._transaction(_SQLITE_INSERT, _flat(rows))

    @staticmethod
    def _row_record(row: tuple[Any, ...]) -> dict[str, Any]:
        """A row made by ``_row`` in the record's JSON shape, for the quarantine file."""
        return _row_record(row)

    def write_sessions(self, sessions: Sequence[SessionInfo]) -> None:
        if sessions:
            self._in_transaction(lambda conn: _store_sessions(conn, sessions))

    def flush(self) -> None:
        """Nothing to do: every ``write`` commits before it returns."""

    def close(self) -> None:
        if self._conn is not None:
            with _gate.held():
                self._drop_connection()

    def _drop_connection(self) -> None:
        assert self._conn is not None
        if self._pid == os.getpid():
            self._conn.close()
        else:
            # Inherited through fork(): SQLite forbids using or closing it in the child; keep a
            # reference so garbage collection never closes it either.
            _INHERITED_CONNECTIONS.append(self._conn)
        self._conn = None

    def _transaction(self, statement: _Statement, values: Sequence[Any]) -> None:
        self._in_transaction(lambda conn: statement.run(conn, values))

    def _in_transaction(self, work: Callable[[sqlite3.Connection], None]) -> None:
        started = time.monotonic()
        while True:
            # Each wait for another connection's lock (one slice) in a pass of its own: fork()
            # waits for the calls under way in ``_gate``, and waited for a whole busy timeout
            # (up to its 3 s) at every fork while a DB browser held the lock.
            with _gate.held():
                conn = self._connection()
                try:
                    if not self._begun(conn, started):
                        continue
                    work(conn)
                    conn.execute("COMMIT")
                    return
                except BaseException as exc:
                    _rollback(conn)
                    if _made_again_by_new_connection(exc):
                        self._drop_connection()
                    raise

    def _begin(self, conn: sqlite3.Connection) -> None:
        """``BEGIN IMMEDIATE``, waiting up to ``busy_timeout_s`` for the write lock another
        connection holds (see ``_begun``)."""
        started = time.monotonic()
        while not self._begun(conn, started):
            pass

    def _begun(self, conn: sqlite3.Connection, started: float) -> bool:
        """Try ``BEGIN IMMEDIATE``, waiting at most one slice for the write lock another
        connection holds (a DB browser with an edit pending holds it as long as it likes): False
        when it is still held and ``busy_timeout_s`` since ``started`` has not run out (raises
        once it has). At exit, no longer than ``exit_timeout`` allows: a write still waiting
        then would be cut off with the interpreter and its records lost, where a write that
        gives up has them set aside in the quarantine file."""
        deadline = _exit_deadline()
        wait = self._busy_timeout_s if deadline is None else deadline - time.monotonic()
        self._set_slice(conn, int(max(0.0, min(wait, _BUSY_SLICE_S)) * 1000))
        try:
            conn.execute("BEGIN IMMEDIATE")
            return True
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                raise
            now = time.monotonic()
            waited_enough = now - started >= self._busy_timeout_s
            if waited_enough or (deadline is not None and now >= deadline):
                raise
            return False

    def _set_slice(self, conn: sqlite3.Connection, milliseconds: int) -> None:
        """Set how long SQLite itself waits for a lock in the statements that follow (a
        statement only when that changes: at exit)."""
        if milliseconds != self._slice_ms:
            conn.execute(f"PRAGMA busy_timeout = {milliseconds}")
            self._slice_ms = milliseconds

    def _connection(self) -> sqlite3.Connection:
        """The connection to the database at ``path``: opened in this process, to the file that
        ``path`` names now (the caller holds ``_gate``)."""
        if self._conn is not None and self._pid == os.getpid():
            if still_names(self.path, self._file_id):
                return self._conn
            self._set_slice(self._conn, self._busy_timeout_ms)  # best effort, as long as asked
            _checkpoint_moved(self._conn)
        if self._conn is not None:
            self._drop_connection()
        ensure_private_dir(self.path.parent)
        info = make_private(self.path)  # created 0o600; -wal/-shm copy the mode
        if not stat.S_ISREG(info.st_mode):  # put there since the sink was made
            raise OSError(errno.EINVAL, f"{self.path} is not a regular file")
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._slice_ms = -1  # a new connection: set it
        try:
            self._set_slice(conn, int(min(self._busy_timeout_s, _BUSY_SLICE_S) * 1000))
            _use_wal(conn, self._busy_timeout_s)
            conn.execute("PRAGMA synchronous = NORMAL")
            _migrate(conn, self.path, self._begin)
        except BaseException:
            conn.close()
            raise
        self._conn, self._pid = conn, os.getpid()
        self._file_id = file_id(info)
        return conn


#: SQLite's result code for a file that is not a database (``sqlite3.SQLITE_NOTADB``).
_NOTADB = 26


def _made_again_by_new_connection(exc: BaseException) -> bool:
    """Whether ``exc`` is what a database emptied under the connection gives, which only a new
    connection makes again: a table dropped ("no such table"), or the file truncated to nothing
    by another process ("file is not a database": the connection's cache still describes the
    old file, where a new one takes the empty file for a new database)."""
    if isinstance(exc, sqlite3.OperationalError) and "no such table" in str(exc):
        return True
    return isinstance(exc, sqlite3.DatabaseError) and getattr(exc, "sqlite_errorcode", 0) == _NOTADB


class _ForkGate:
    """Lets ``fork()`` wait until no SQLite call of ours is under way in another thread.

    SQLite keeps the POSIX locks of the process in memory, per file and for all its connections.
    A child forked while a writer thread was inside a transaction inherits that memory with the
    lock marked held by a connection nobody will ever release it from (the thread is not in the
    child): every write of the child then fails with "database is locked", past any busy
    timeout. Our calls on a connection run ``held()``, any number at once; the before-fork hook
    stops new ones and waits (at most ``_FORK_WAIT_S``) for those under way to end. If they do
    not end in time, the fork goes on anyway. A write waiting for another process's lock holds
    the gate for one slice of its wait at a time (``SQLiteSink._transaction``), outside any
    transaction: the fork waits for that slice only (``_BUSY_SLICE_S``).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._busy = 0  # calls under way
        self._forks = 0  # fork() calls between their before and after hooks

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        with self._cond:
            while self._forks:
                self._cond.wait()
            self._busy += 1
        try:
            yield
        finally:
            with self._cond:
                self._busy -= 1
                if not self._busy:
                    self._cond.notify_all()

    def before_fork(self, timeout: float) -> None:
        # Waiting on the condition lets go of the GIL, so the writer threads can finish.
        with self._cond:
            self._forks += 1
            self._cond.wait_for(lambda: not self._busy, timeout)

    def after_fork_in_parent(self) -> None:
        # Unmatched when this module was imported (on another thread) during that fork's
        # before-hooks, which the wait for imports lets end: the count must not go below zero,
        # or every SQLite call of ours would wait for a fork that is not under way.
        with self._cond:
            self._forks = max(0, self._forks - 1)
            self._cond.notify_all()


#: How long ``fork()`` waits for our SQLite calls under way to end.
_FORK_WAIT_S = 3.0
_gate = _ForkGate()


def held_from_fork() -> contextlib.AbstractContextManager[None]:
    """Around a call on another SQLite connection of ours (the budget ledger's, made on the
    application's threads and the lease keeper's): ``fork()`` waits for it to end, as for the
    sink's, since SQLite's memory of the process's locks is shared by every connection."""
    return _gate.held()


def _before_fork() -> None:
    _gate.before_fork(_FORK_WAIT_S)


def _after_fork_in_parent() -> None:
    _gate.after_fork_in_parent()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent)
renew_after_fork(globals(), "_gate", _ForkGate)  # the child's threads have no call under way


_INHERITED_CONNECTIONS: list[sqlite3.Connection] = []


def _exit_deadline() -> float | None:
    """When the exit's ``exit_timeout`` runs out, once this process's exit flush has begun."""
    from tokenmeter import _pipeline  # not at import: the pipeline imports the sinks

    return _pipeline.exit_deadline()


def _user_version(conn: sqlite3.Connection) -> int:
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    return version


def _use_wal(conn: sqlite3.Connection, timeout_s: float) -> None:
    """``journal_mode = WAL``, waiting up to ``timeout_s`` for other connections. Switching a new
    database to WAL is refused at once while another connection holds a lock on it, busy timeout
    or not: processes or threads opening a new database together got "database is locked"."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.005)


#: The tables the migrations make.
_TABLES = ("records", "sessions", "session_parts")


def _missing_tables(conn: sqlite3.Connection) -> set[str]:
    found = conn.execute(
        f"SELECT name FROM sqlite_master WHERE type = 'table' AND name IN {_TABLES}"
    ).fetchall()
    return set(_TABLES).difference(name for (name,) in found)


def _migrate(
    conn: sqlite3.Connection, path: Path, begin: Callable[[sqlite3.Connection], None]
) -> None:
    """Bring the schema to ``SCHEMA_VERSION``; raise ``ValueError`` for a newer database.
    ``begin``: the sink's ``BEGIN IMMEDIATE``, which waits for another connection's lock."""
    if _user_version(conn) == SCHEMA_VERSION and not _missing_tables(conn):
        return
    begin(conn)  # one process migrates; the others wait, then see it done
    try:
        version = _user_version(conn)
        if version > SCHEMA_VERSION:
            raise ValueError(
                f"{path}: database schema version {version} is newer than this tokenmeter "
                f"supports ({SCHEMA_VERSION}); upgrade tokenmeter to write to it"
            )
        missing = _missing_tables(conn)
        if version == 0 and len(missing) < len(_TABLES):
            version = _version_of_schema(conn)
        if version == 0 or len(missing) == len(_TABLES):
            # None of ours is left: another program's, which may keep its own schema number in
            # user_version (6 had tokenmeter's tables added to it), unless it holds nothing.
            _refuse_others(conn, path)
        if version == SCHEMA_VERSION:
            _make_again(conn, missing)
        for migrate in _MIGRATIONS[version:]:
            migrate(conn)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise


def _schema(conn: sqlite3.Connection) -> dict[str, str]:
    """The statements that made tokenmeter's tables and the indexes on them, by name, as SQLite
    keeps them (white space evened out)."""
    rows = conn.execute(
        f"SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL AND tbl_name IN {_TABLES}"
    ).fetchall()
    return {name: " ".join(sql.split()) for name, sql in rows}


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]


def _version_of_schema(conn: sqlite3.Connection) -> int:
    """The latest schema version whose migrations made this database's tables and indexes, or 0.

    An SQL dump (``sqlite3 usage.db .dump``, Python's ``iterdump()``) does not carry
    ``user_version``: a ``usage.db`` restored from one was taken for another program's database
    and every later record was set aside. Its schema, not a table's name, says it is ours: each
    index a version makes, as it makes it, and each table with that version's columns first
    (what a user added, an index, a trigger, a column at the end, is theirs and kept)."""
    found = _schema(conn)
    scratch = sqlite3.connect(":memory:")
    version_found = 0
    try:
        for version, migrate in enumerate(_MIGRATIONS, start=1):
            migrate(scratch)
            if _holds_the_schema_of(scratch, conn, found):
                version_found = version
    finally:
        scratch.close()
    return version_found


def _holds_the_schema_of(
    made: sqlite3.Connection, conn: sqlite3.Connection, found: dict[str, str]
) -> bool:
    """True when ``conn`` (whose ``_schema`` is ``found``) holds each index of ``made`` as it
    was made, and each table with the columns ``made`` gives it first."""
    for name, sql in _schema(made).items():
        if found.get(name) == sql:
            continue
        columns = _columns(made, name)
        if (
            name not in found
            or name not in _TABLES
            or _columns(conn, name)[: len(columns)] != columns
        ):
            return False
    return True


def _make_again(conn: sqlite3.Connection, tables: set[str]) -> None:
    """Make ``tables`` (dropped while in use: a database emptied by hand) and their indexes as
    the migrations make them, which a new in-memory database states."""
    if not tables:
        return
    scratch = sqlite3.connect(":memory:")
    try:
        for migrate in _MIGRATIONS:
            migrate(scratch)
        schema = scratch.execute(
            "SELECT tbl_name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY type = 'index'"
        ).fetchall()
    finally:
        scratch.close()
    for table, sql in schema:
        if table in tables:
            conn.execute(sql)


def _refuse_others(conn: sqlite3.Connection, path: Path) -> None:
    """Raise ``ValueError`` for a database that holds another program's tables: tokenmeter's
    would be added to it and its ``user_version`` (which the program's own migrations may keep)
    set to tokenmeter's schema version."""
    names = [
        name
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite!_%' ESCAPE '!' LIMIT 3"
        )
    ]
    others = (
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' "
        f"AND name NOT LIKE 'sqlite!_%' ESCAPE '!' AND name NOT IN {_TABLES}"
    )
    if names and conn.execute(others).fetchone()[0] == 0:
        raise ValueError(
            f"{path}: tokenmeter's tables without their schema version (user_version 0), in a "
            "shape no version of tokenmeter made; give the SQLite sink a file of its own"
        )
    if names:
        raise ValueError(
            f"{path}: not a tokenmeter database (it holds {', '.join(names)}); "
            "give the SQLite sink a file of its own"
        )


def _checkpoint_moved(conn: sqlite3.Connection) -> None:
    """Copy what ``conn`` wrote into the database file it has open, now deleted or renamed away.

    SQLite does not checkpoint on close a database file that has moved, and a new, empty
    database at the old path deletes the -wal file it finds there: the records of a renamed
    database that were still in its WAL would be lost. Best effort: when other connections keep
    the checkpoint from finishing, the new database is made all the same.
    """
    with contextlib.suppress(sqlite3.Error):
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _rollback(conn: sqlite3.Connection) -> None:
    """Undo an open transaction without hiding the error that caused it."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
