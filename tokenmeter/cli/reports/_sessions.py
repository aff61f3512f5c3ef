"""Sessions as the ``sessions`` and ``session ID`` commands show them.

SQLite has a ``sessions`` table (name, status, start and end, notes); JSONL has only records, so
there a session is what its records say: first and last call, the name they carry. Records that
fail the record check (``_validate``) are skipped and counted; a ``sessions`` row is only
descriptive, so a value of the wrong type there is dropped rather than the session.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from operator import add
from typing import Any

from tokenmeter._totals import COUNT_NAMES, Totals, note_model
from tokenmeter.cli._dates import format_instant
from tokenmeter.cli._errors import CliError
from tokenmeter.cli._source import JsonlReader, Source, open_database, table_columns, warn_skipped
from tokenmeter.cli.reports._model import NONE_LABEL, Call, CallList
from tokenmeter.cli.reports._query import add_calls, exclude_bad_rows, figures, stream_rows
from tokenmeter.cli.reports._scan import JsonlScan
from tokenmeter.cli.reports._spool import CallSpool
from tokenmeter.cli.reports._sql import totals_select, with_exact_sums

__all__ = ["SessionDetail", "SessionRow", "find_session", "list_sessions"]

_NO_COST = Decimal(0)


@dataclass
class SessionRow:
    session_id: str
    name: str | None
    first_call: str
    last_call: str
    status: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    notes: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    totals: Totals = field(default_factory=Totals)


@dataclass
class SessionDetail:
    session: SessionRow
    calls: CallList  # in time order
    models: list[str]  # "provider/model", first used first (``note_model``)


def _window(since: datetime | None, until: datetime | None) -> tuple[str | None, str | None]:
    return (
        None if since is None else format_instant(since),
        None if until is None else format_instant(until),
    )


def list_sessions(
    source: Source,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = None,
) -> tuple[list[SessionRow], int]:
    """Every session with calls in the window, most recently active first; and skipped records.
    ``limit``: at least the latest ``limit`` of them (the caller cuts the list; a SQL source
    then need not total every session of a large store).

    The caller warns about the skipped ones (``warn_skipped``).
    """
    low, high = _window(since, until)
    if source.kind != "jsonl":
        return _list_sqlite(source, low, high, limit)
    scan = JsonlScan(source.path, tags=False)  # the fields totals read, as reports scan them
    rows: dict[str, SessionRow] = {}
    sums: dict[str, tuple[Sequence[int], Decimal]] = {}
    for record, counts, cost in scan:
        timestamp = record["timestamp"]
        if (low is not None and timestamp < low) or (high is not None and timestamp >= high):
            continue
        session_id = record.get("session_id") or NONE_LABEL
        row = rows.get(session_id)
        values = figures(record, counts, cost)
        if row is None:
            name = record.get("session_name")
            rows[session_id] = SessionRow(session_id, name, timestamp, timestamp)
            sums[session_id] = (values, cost or _NO_COST)
            continue
        row.first_call = min(row.first_call, timestamp)
        if timestamp >= row.last_call:  # a session renamed as it goes is named by its latest call
            row.last_call = timestamp
            row.name = record.get("session_name")
        known, spent = sums[session_id]
        sums[session_id] = (list(map(add, known, values)), spent if cost is None else spent + cost)
    for session_id, (summed, spent) in sums.items():
        rows[session_id].totals = Totals.from_counts(summed, spent)
    ordered = sorted(rows.values(), key=lambda row: row.last_call, reverse=True)
    return ordered, scan.skipped


def _has_sessions_table(conn: sqlite3.Connection) -> bool:
    found = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name='sessions'"
    ).fetchone()
    return found is not None


def _nested(conn: sqlite3.Connection) -> bool:
    """Whether any stored session has a parent (whose totals then include its children's)."""
    found = conn.execute("SELECT 1 FROM sessions WHERE parent_id IS NOT NULL LIMIT 1")
    return found.fetchone() is not None


def _list_sqlite(
    source: Source, low: str | None, high: str | None, limit: int | None
) -> tuple[list[SessionRow], int]:
    conn = open_database(source)
    clauses, params = [], []
    if low is not None:
        clauses.append("r.timestamp >= ?")
        params.append(low)
    if high is not None:
        clauses.append("r.timestamp < ?")
        params.append(high)
    window = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    try:
        conn.execute("BEGIN")  # the check and the totals see the same rows
        where, params, skipped = exclude_bad_rows(conn, window, params, "r")
        joined = _has_sessions_table(conn)
        columns = table_columns(conn, "records")
        # Where sessions nest, a parent's totals and last call come from its children: all are
        # read and rolled up. Where none does, the latest few alone: a store of a session per
        # request (``@track``) has millions, each made a row before (200,000: 10 s, 340 MB).
        nested = joined and _nested(conn)
        latest = f" LIMIT {int(limit)}" if limit and not nested else ""
    except sqlite3.Error as exc:
        conn.close()
        raise CliError(f"cannot read {source.path}: {exc}") from None
    info = (  # MAX(): one sessions row per group; PostgreSQL wants it said (SQLite does not)
        "MAX(s.name), MAX(s.status), MAX(s.started_at), MAX(s.ended_at), MAX(s.notes), MAX(s.tags)"
        if joined
        else "NULL, NULL, NULL, NULL, NULL, NULL"
    )
    join = " LEFT JOIN sessions s ON s.id = r.session_id" if joined else ""

    def session_rows(total: str) -> list[SessionRow]:
        sql = (
            f"SELECT COALESCE(r.session_id, '{NONE_LABEL}'), MAX(r.session_name), "
            f"MIN(r.timestamp), MAX(r.timestamp), {totals_select(columns, 'r.', total)}, {info} "
            f"FROM records r{join}{where} GROUP BY 1 ORDER BY 4 DESC, MAX(r.rowid) DESC{latest}"
        )
        return [_sqlite_session_row(values) for values in conn.execute(sql, params)]

    try:
        result = with_exact_sums(session_rows)
        if nested:
            result = _roll_up(conn, result)
    except sqlite3.Error as exc:
        raise CliError(f"cannot read {source.path}: {exc}") from None
    finally:
        conn.close()
    return result, skipped


def _roll_up(conn: sqlite3.Connection, rows: list[SessionRow]) -> list[SessionRow]:
    """Add each session's calls to its ancestors' totals (as a live ``session.summary`` does),
    listing an ancestor whose calls were all made in nested sessions too."""
    parents: dict[str, tuple[Any, ...]] = {}
    for values in conn.execute(
        "SELECT id, parent_id, name, status, started_at, ended_at, notes, tags FROM sessions"
    ):
        if isinstance(values[0], str):
            parents[values[0]] = values
    by_id = {row.session_id: row for row in rows}
    own: dict[str, Totals] = {}
    for row in rows:
        copy = own[row.session_id] = Totals()
        copy.add(row.totals)
    for session_id, totals in own.items():
        child = by_id[session_id]
        seen = {session_id}
        info = parents.get(session_id)
        parent_id = info[1] if info is not None else None
        while isinstance(parent_id, str) and parent_id not in seen:  # a cycle is bad data
            seen.add(parent_id)
            found = by_id.get(parent_id)
            info = parents.get(parent_id)
            if found is not None:
                row = found
            else:
                name, status, started, ended, notes, tags = (
                    info[2:8] if info is not None else (None,) * 6
                )
                row = by_id[parent_id] = SessionRow(
                    session_id=parent_id,
                    name=_text(name),
                    first_call=child.first_call,
                    last_call=child.last_call,
                    status=_text(status),
                    started_at=_text(started),
                    ended_at=_text(ended),
                    notes=_text(notes),
                    tags=_tags(tags),
                )
            row.first_call = min(row.first_call, child.first_call)
            row.last_call = max(row.last_call, child.last_call)
            row.totals.add(totals)
            parent_id = info[1] if info is not None else None
    return sorted(by_id.values(), key=lambda row: row.last_call, reverse=True)


def _text(value: Any) -> str | None:
    """A ``sessions`` column as text, or None when it holds something else (a blob, a number)."""
    return value if isinstance(value, str) else None


def _tags(value: Any) -> dict[str, str]:
    """The ``sessions.tags`` JSON object of strings, or {} when it is anything else."""
    if not isinstance(value, str):
        return {}
    try:
        tags = json.loads(value)
    except (ValueError, RecursionError):
        return {}
    if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
        return {}
    return tags


def _sqlite_session_row(values: tuple[Any, ...]) -> SessionRow:
    end = 4 + len(COUNT_NAMES) + 2  # and the cost's two sums
    totals = Totals.from_sql(values[4:end])
    name, status, started, ended, notes, tags = values[end : end + 6]
    return SessionRow(
        session_id=values[0],
        name=_text(name) or values[1],
        first_call=values[2],
        last_call=values[3],
        status=_text(status),
        started_at=_text(started),
        ended_at=_text(ended),
        notes=_text(notes),
        tags=_tags(tags),
        totals=totals,
    )


def find_session(source: Source, wanted: str) -> SessionDetail:
    """The session with this id, else the most recent one with this name; CliError if none.

    Its calls are in a ``CallSpool``: a process's implicit session may hold millions of them.
    Warns about the records it had to skip before it returns or raises.
    """
    if source.kind != "jsonl":
        return _find_sqlite(source, wanted)
    reader = JsonlReader(source.path)
    found = _Found(CallSpool(by_time=True))
    named: dict[str, str] = {}  # the sessions of that name: their last calls
    for record in reader:
        session_id = record.get("session_id")
        if session_id == wanted:
            found.add(Call.from_json(record))
        elif not found.calls and record.get("session_name") == wanted:
            call = Call.from_json(record)
            key = str(session_id)
            named[key] = max(named.get(key, call.timestamp), call.timestamp)
    reader.warn_skipped()
    if not found.calls and named:  # no session has that id: the one with that name, read again
        if len(named) > 1:
            _several(wanted, named)
        (key,) = named
        # Every call of that session, whatever name it carries: one renamed as it goes has
        # records under each of its names (the journal's page too lists them all).
        for record in JsonlReader(source.path):  # its skipped lines were counted above
            if str(record.get("session_id")) == key:
                found.add(Call.from_json(record))
    if not found.calls:
        raise CliError(f"no session {wanted!r} in {source.path}")
    return found.detail()


class _Found:
    """A session's calls as they are read, and what is added up from them in time order: its
    span, its totals and its models (its journal file's list)."""

    def __init__(self, calls: CallSpool) -> None:
        self.calls = calls
        self.row = SessionRow("", None, "", "")
        self.models: list[str] = []

    def add(self, call: Call) -> None:
        self.calls.append(call)
        self._sum(call)

    def _sum(self, call: Call) -> None:
        row = self.row
        if not row.totals.calls:
            row.session_id, row.first_call = call.session_id or NONE_LABEL, call.timestamp
        row.name, row.last_call = call.session_name, call.timestamp
        row.totals.add_record(call)
        note_model(self.models, f"{call.provider}/{call.model}")

    def detail(self) -> SessionDetail:
        if not self.calls.in_order:  # appended out of time order: added up again, in order
            self.row, self.models = SessionRow("", None, "", ""), []
            for call in self.calls:
                self._sum(call)
        return SessionDetail(self.row, self.calls, self.models)


def _several(name: str, last_calls: dict[str, str]) -> None:
    """Several sessions share this name: list them (latest first) rather than pick one."""
    ordered = sorted(last_calls.items(), key=lambda item: item[1], reverse=True)
    listed = "; ".join(f"{sid} (last call {last})" for sid, last in ordered[:20])
    more = f"; and {len(ordered) - 20} more" if len(ordered) > 20 else ""
    raise CliError(f"{len(ordered)} sessions are named {name!r}, give one id: {listed}{more}")


def _stored_session(conn: sqlite3.Connection, wanted: str) -> str | None:
    """The id of the stored session with this id, else of the latest one with this name (a
    session with no calls of its own has no records to find it by)."""
    if not _has_sessions_table(conn):
        return None
    if conn.execute("SELECT 1 FROM sessions WHERE id = ?", [wanted]).fetchone() is not None:
        return wanted
    named = conn.execute(
        "SELECT id, started_at FROM sessions WHERE name = ? ORDER BY started_at DESC", [wanted]
    ).fetchall()
    if len(named) > 1:
        _several(wanted, {str(sid): str(started) for sid, started in named})
    return str(named[0][0]) if named else None


#: The calls of a session and of the sessions nested in it at any depth (its calls roll up, as
#: in ``sessions``), found in SQL: one parameter per nested session would meet SQLite's limit
#: (999 before 3.32) and PostgreSQL's. ``UNION`` drops an id already found: a cycle ends.
_TREE_CALLS = (
    "WITH RECURSIVE tree(id) AS (SELECT CAST(? AS TEXT) "
    "UNION SELECT s.id FROM sessions s JOIN tree ON s.parent_id = tree.id) "
    "SELECT * FROM records WHERE session_id IN (SELECT id FROM tree) ORDER BY timestamp, rowid"
)


def _find_sqlite(source: Source, wanted: str) -> SessionDetail:
    conn = open_database(source)
    conn.row_factory = sqlite3.Row
    try:
        session_id = wanted
        hit = conn.execute("SELECT 1 FROM records WHERE session_id = ? LIMIT 1", [wanted])
        if hit.fetchone() is None:
            named = conn.execute(
                "SELECT session_id, MAX(timestamp) FROM records WHERE session_name = ? "
                "GROUP BY session_id ORDER BY 2 DESC",
                [wanted],
            ).fetchall()
            if named:
                if len(named) > 1:
                    _several(wanted, {str(sid): str(last) for sid, last in named})
                session_id = named[0][0]
            else:  # a parent whose calls were all made in nested sessions: theirs roll up
                stored = _stored_session(conn, wanted)
                if stored is None:
                    raise CliError(f"no session {wanted!r} in {source.path}")
                session_id = stored
        nested = _has_sessions_table(conn)
        sql = (
            _TREE_CALLS
            if nested
            else "SELECT * FROM records WHERE session_id = ? ORDER BY timestamp, rowid"
        )
        found = _Found(CallSpool())
        skipped = add_calls(stream_rows(conn, sql, [session_id]), found.add)
        info = None
        if nested:
            info = conn.execute("SELECT * FROM sessions WHERE id = ?", [session_id]).fetchone()
    except sqlite3.Error as exc:
        raise CliError(f"cannot read {source.path}: {exc}") from None
    finally:
        conn.close()
    warn_skipped(skipped, source.path, "row")
    if not found.calls:  # every row of it failed the record check
        raise CliError(f"no session {wanted!r} in {source.path}")
    detail = found.detail()
    row = detail.session
    row.session_id = session_id  # its nested sessions' calls are listed too
    if info is not None:
        keys = info.keys()

        def column(name: str) -> str | None:
            return _text(info[name]) if name in keys else None

        row.name = column("name") or row.name
        row.status = column("status")
        row.started_at = column("started_at")
        row.ended_at = column("ended_at")
        row.notes = column("notes")
        row.tags = _tags(info["tags"]) if "tags" in keys else {}
    return detail
