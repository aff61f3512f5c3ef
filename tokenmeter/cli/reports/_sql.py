"""The SQL the reports send, with every dialect-specific piece in this one module.

Everything else in the query layer is plain SQL (``COUNT``, ``SUM``, ``CASE``, ``GROUP BY``,
``IN``, ``substr``) that SQLite and PostgreSQL read alike. What differs is here: reading one key of
the JSON ``tags`` column or all of its pairs, and the ``?`` placeholder style of ``sqlite3``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Collection
from typing import TypeVar

from tokenmeter._totals import COUNT_NAMES, PICO_PER_USD
from tokenmeter.cli._validate import MAX_LATENCY_MS
from tokenmeter.cli.reports._model import SESSION_NAME

__all__ = [
    "EXACT_SUM",
    "LATENCY_KNOWN",
    "NONE_SQL",
    "PERCENTILES_PG",
    "PLACEHOLDER",
    "group_by_sql",
    "raw_column_sql",
    "session_names_sql",
    "tag_pairs_sql",
    "tag_path",
    "tag_sql",
    "totals_select",
    "with_exact_sums",
]

_T = TypeVar("_T")

PLACEHOLDER = "?"
NONE_SQL = "'(none)'"
#: Rows whose latency is a number (SQLite keeps whatever another program stored; ``_postgres``
#: makes it ``latency_ms IS NOT NULL`` for the typed column) in the range a record may hold
#: (``_validate``): an Infinity stored there would be ranked, and JSON has no Infinity.
LATENCY_KNOWN = (
    f"(typeof(latency_ms) IN ('real', 'integer') AND latency_ms BETWEEN 0 AND {MAX_LATENCY_MS:.0f})"
)
#: PostgreSQL only: p50, p95 latency and the number of calls ranked, per group. ``percentile_disc``
#: is the nearest-rank percentile the SQLite and JSONL readers compute (a latency some call had;
#: ``percentile_cont`` would interpolate between two), so every source gives the same figure.
PERCENTILES_PG = (
    "percentile_disc(0.5) WITHIN GROUP (ORDER BY latency_ms), "
    "percentile_disc(0.95) WITHIN GROUP (ORDER BY latency_ms), COUNT(*)"
)


def tag_path(key: str) -> str:
    """The JSON path of one tag key: quoted, so that a key holding ``.`` or ``[`` is one member
    name, and escaped as the sink's JSON escapes it (a tab as ``\\t``), since SQLite before 3.45
    compares a path's member name with the stored text as it is, escapes and all. (A ``"`` ends
    a quoted name whatever precedes it: a key holding one cannot be named in a SQLite path.)"""
    return "$." + json.dumps(key, ensure_ascii=False)


def tag_sql(key: str, prefix: str = "", guarded: bool = False) -> tuple[str, str]:
    """SQL text of one tag's value, NULL when absent, and its one parameter. A key holding ``"``,
    which no SQLite path can name, is looked up among the row's pairs instead (``json_each``,
    whose keys are unescaped; slower, so only for such a key). ``guarded``: NULL too where the
    tags are not JSON (another program's row), for a filter, which is applied before such rows
    are left out: SQLite failed the whole report there ("malformed JSON")."""
    tags = f"{prefix}tags"
    if guarded:
        tags = f"CASE WHEN json_valid({tags}) THEN {tags} END"
    if '"' not in key:
        return f"CAST(json_extract({tags}, {PLACEHOLDER}) AS TEXT)", tag_path(key)
    pairs = f"json_each({tags})"
    return f"(SELECT CAST(value AS TEXT) FROM {pairs} WHERE key = {PLACEHOLDER} LIMIT 1)", key


def tag_pairs_sql(prefix: str = "") -> str:
    """A table of the (key, value) pairs of each row's tags, aliased ``t`` (its columns ``key``
    and ``value``), to join after the records: SQLite's ``json_each`` (``_postgres`` turns it
    into ``jsonb_each_text``)."""
    return f"json_each({prefix}tags) AS t"


#: Key columns that are a stored column as it is: grouped by that column (an index on it serves
#: the GROUP BY), and shown through ``raw_column_sql``'s COALESCE.
_STORED = {
    "provider": "model_provider",
    "model": "model_name",
    "session_id": "session_id",
    "session": "session_name",
    "status": "status",
}


def group_by_sql(columns: tuple[str, ...], prefix: str = "") -> str:
    """The GROUP BY list for these key columns: stored columns by name, others by position
    (``SESSION_NAME``, a constant until the sessions are named, not at all)."""
    return ", ".join(
        f"{prefix}{_STORED[c]}" if c in _STORED else str(i)
        for i, c in enumerate(columns, 1)
        if c != SESSION_NAME
    )


def raw_column_sql(column: str, prefix: str = "") -> tuple[str, list[str]]:
    """SQL expression (and its parameters) for one stored key column (see ``raw_columns``)."""
    p = prefix
    simple = {
        "provider": f"COALESCE({p}model_provider, {NONE_SQL})",
        "model": f"COALESCE({p}model_name, {NONE_SQL})",
        "session_id": f"COALESCE({p}session_id, {NONE_SQL})",
        "session": f"COALESCE({p}session_name, '')",
        "status": f"COALESCE({p}status, 'ok')",
        SESSION_NAME: "''",
        "utc_hour": f"substr({p}timestamp, 1, 13)",
        "utc_minute": f"substr({p}timestamp, 1, 16)",
    }
    if column in simple:
        return simple[column], []
    # NULL where the call lacks the tag: a group of its own, not one with a value's text.
    expr, param = tag_sql(column.removeprefix("tag:"), prefix)
    return expr, [param]


def session_names_sql(ids: int, stored: bool) -> str:
    """The latest name of each of ``ids`` sessions (``?`` each): its stored one (``stored``: the
    store has a ``sessions`` table), else that of its latest record, '' for none. One row per
    session, whose subqueries run once each, on the index of ``records.session_id``."""
    latest = (
        "(SELECT n.session_name FROM records n WHERE n.session_id = records.session_id"
        " ORDER BY n.timestamp DESC LIMIT 1)"
    )
    if stored:
        latest = f"(SELECT s.name FROM sessions s WHERE s.id = records.session_id), {latest}"
    marks = ", ".join([PLACEHOLDER] * ids)
    return (
        f"SELECT session_id, COALESCE({latest}, '') FROM records "
        f"WHERE session_id IN ({marks}) GROUP BY session_id"
    )


#: An exact SUM of integers, registered on every SQLite connection (``open_sqlite``).
EXACT_SUM = "tokenmeter_exact_sum"


class ExactSum:
    """``SUM`` with Python's integers, as text (SQLite's hold 64 bits); NULL over no value."""

    def __init__(self) -> None:
        self.total: int | None = None

    def step(self, value: int | None) -> None:
        if value is not None:
            self.total = value if self.total is None else self.total + value

    def finalize(self) -> str | None:
        return None if self.total is None else str(self.total)


def with_exact_sums(run: Callable[[str], _T]) -> _T:
    """``run("SUM")``, the fast SQL sum. A valid record may hold a count near 2**63, and with
    any other call of its group SQLite's 64-bit sum fails ("integer overflow"): then
    ``run(EXACT_SUM)``, slower and exact (PostgreSQL's SUM never overflows)."""
    try:
        return run("SUM")
    except sqlite3.OperationalError as exc:
        if "integer overflow" not in str(exc):
            raise
        return run(EXACT_SUM)


def totals_select(columns: Collection[str], prefix: str = "", total: str = "SUM") -> str:
    """The aggregates ``Totals.from_sql`` reads, in ``COUNT_NAMES`` order, then the cost: the sum
    of its whole USD and the sum of the pico-USD left over. SQLite sums integers in 64 bits, and
    ``SUM(cost_pusd)`` overflows past $9,223,372.04 ("integer overflow": no report at all); each
    part stays far below that. ``/`` and ``%`` truncate toward zero in SQLite and PostgreSQL
    alike, so a refund's parts add up too.

    Columns an older database lacks (``status``, ``estimated``) count as 0. ``total`` is the sum
    function (see ``with_exact_sums``).
    """
    p = prefix
    status = f"{p}status" if "status" in columns else None
    parts = [
        "COUNT(*)",
        f"{total}({p}input_tokens)",
        f"{total}({p}output_tokens)",
        f"{total}({p}cache_read_tokens)",
        f"{total}({p}cache_write_tokens)",
        f"{total}({p}reasoning_tokens)",
        f"{total}({p}total_tokens)",
        f"COUNT({p}cost_pusd)",
        f"{total}(CASE WHEN {p}cost_pusd IS NOT NULL THEN {p}total_tokens END)",
        f"{total}(CASE WHEN {status} = 'error' THEN 1 ELSE 0 END)" if status else "0",
        f"{total}(CASE WHEN {status} = 'blocked' THEN 1 ELSE 0 END)" if status else "0",
        f"{total}(CASE WHEN {p}estimated = 1 THEN 1 ELSE 0 END)" if "estimated" in columns else "0",
        (
            f"{total}(CASE WHEN {p}cost_pusd IS NULL AND COALESCE({status}, '') <> 'blocked'"
            " THEN 1 ELSE 0 END)"
            if status
            else f"COUNT(*) - COUNT({p}cost_pusd)"
        ),
        f"{total}({p}cost_pusd / {PICO_PER_USD})",
        f"{total}({p}cost_pusd % {PICO_PER_USD})",
    ]
    assert len(parts) == len(COUNT_NAMES) + 2
    return ", ".join(parts)
