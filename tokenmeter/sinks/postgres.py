"""PostgreSQL sink: one ledger shared by every process on every machine of a team.

Why it is shaped this way:
- The same tables and column encodings as the SQLite sink (timestamps as ISO text, costs as exact
  decimal text plus integer pico-USD, tags as JSON text; ``seq`` numbers rows in insertion order,
  as SQLite's rowid does), inside their own PostgreSQL schema
  (``tokenmeter`` by default, so ``records`` never meets an application's table of that name):
  the CLI reads both with the same SQL, and a query written for one runs on the other.
- One transaction per batch, one round trip: a binary ``COPY`` straight into ``records``, the rows
  streamed to the server as they are built, so the server stores the first rows while the writer
  still builds the last. A batch is stored whole or not at all. The primary key refuses a batch
  holding an id already stored (the writer retrying a batch whose commit was made but whose answer
  was lost): that batch goes the slow way, COPYed into a temporary table, then
  ``INSERT ... SELECT ... ON CONFLICT (id) DO NOTHING``, so a retry never creates duplicates. So
  does a batch the server refused for a NUL character, after the NULs are replaced.
- Every failure raises, so the writer thread keeps the batch and retries it with back-off. A broken
  connection (server restarted, ``pg_terminate_backend``, network) is dropped and a new one is made
  on the next attempt; a batch that failed on a connection found dead is retried once at once on a
  fresh one. ``statement_timeout`` bounds every statement, so a locked table never hangs the writer.
- Versioned migrations under a transaction-scoped advisory lock: when several processes start at
  once, one migrates and the others wait for it, then find the schema current.
- The connection is opened lazily and a new one is made after ``fork()`` (a libpq connection must
  not be shared by two processes; the inherited one is left alone, never closed, since closing it
  would end the parent's session too).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote

from tokenmeter._models import SessionInfo, UsageRecord
from tokenmeter.sinks.sqlite import _RECORD_COLUMNS as RECORD_COLUMNS
from tokenmeter.sinks.sqlite import _SESSION_COLUMNS as SESSION_COLUMNS
from tokenmeter.sinks.sqlite import (
    HAS_FEW_PARTS,
    HAS_NO_PARTS,
    RUN_NOT_EARLIER,
    SESSION_PARTS_V6,
    SESSION_TOTALS,
    _exit_deadline,
    _record_row,
    _session_row,
)
from tokenmeter.sinks.sqlite import kept_parts as _kept_parts
from tokenmeter.sinks.sqlite import latest_parts as _latest_parts
from tokenmeter.sinks.sqlite import moved_totals as _moved_totals
from tokenmeter.sinks.sqlite import part_row as _part_row
from tokenmeter.sinks.sqlite import sum_parts as _sum_parts

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "DEFAULT_SCHEMA",
    "SCHEMA_VERSION",
    "PostgresSink",
    "check_dbname",
    "check_dsn",
    "check_schema_name",
    "split_schema",
]

#: Key of the advisory lock that serialises migrations (any fixed 64-bit number: "tokenme").
_MIGRATION_LOCK = 0x746F6B656E6D65

_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS records (
  id TEXT PRIMARY KEY,
  timestamp TEXT NOT NULL,
  model_provider TEXT NOT NULL,
  model_name TEXT NOT NULL,
  input_tokens BIGINT NOT NULL,
  output_tokens BIGINT NOT NULL,
  total_tokens BIGINT NOT NULL,
  estimated_cost_usd TEXT,
  cost_pusd BIGINT,
  request_model TEXT,
  operation TEXT,
  cache_read_tokens BIGINT NOT NULL DEFAULT 0,
  cache_write_tokens BIGINT NOT NULL DEFAULT 0,
  reasoning_tokens BIGINT NOT NULL DEFAULT 0,
  cost_breakdown TEXT,
  price_source TEXT,
  session_id TEXT,
  session_name TEXT,
  tags TEXT NOT NULL DEFAULT '{}',
  latency_ms DOUBLE PRECISION,
  streamed SMALLINT NOT NULL DEFAULT 0,
  status TEXT NOT NULL DEFAULT 'ok',
  error TEXT,
  request_id TEXT,
  estimated SMALLINT NOT NULL DEFAULT 0,
  seq BIGSERIAL NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_records_seq ON records(seq);
CREATE INDEX IF NOT EXISTS ix_records_timestamp ON records(timestamp);
CREATE INDEX IF NOT EXISTS ix_records_session ON records(session_id);
CREATE INDEX IF NOT EXISTS ix_records_model ON records(model_provider, model_name);
CREATE TABLE IF NOT EXISTS sessions (
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
CREATE OR REPLACE VIEW session_totals AS
  SELECT s.id, s.name, s.status, s.started_at, s.ended_at,
         COUNT(r.id) AS calls,
         COALESCE(SUM(r.input_tokens), 0) AS input_tokens,
         COALESCE(SUM(r.output_tokens), 0) AS output_tokens,
         SUM(r.cost_pusd) / 1e12 AS cost_usd
  FROM sessions s LEFT JOIN records r ON r.session_id = s.id
  GROUP BY s.id;
CREATE TABLE IF NOT EXISTS budget_ledger (
  scope_key TEXT NOT NULL,
  period_start TEXT NOT NULL,
  settled_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
  reserved_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  PRIMARY KEY (scope_key, period_start)
)
"""


def _run_script(script: str) -> Callable[[psycopg.Connection[Any]], None]:
    def migrate(conn: psycopg.Connection[Any]) -> None:
        for statement in script.split(";\n"):
            if statement.strip():
                conn.execute(statement.encode())

    return migrate


#: ``_MIGRATIONS[n]`` takes the schema from version ``n`` to ``n + 1``, inside the migrating
#: transaction. Append a function to evolve the schema; never change what an existing one makes.
#: Each makes only what is missing (``IF NOT EXISTS``): a schema that lost a table while in use
#: is migrated again from the start, which makes that table again and leaves the others alone.
#: Per-modality token counts and server-side tool requests, as JSON text (as in SQLite v2).
_SCHEMA_V2 = """
ALTER TABLE records ADD COLUMN IF NOT EXISTS modalities TEXT NOT NULL DEFAULT '{}';
ALTER TABLE records ADD COLUMN IF NOT EXISTS tool_requests TEXT NOT NULL DEFAULT '{}'
"""
#: The totals a session carries when it is stored (as in SQLite v3; NULL for older rows).
_SCHEMA_V3 = """
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS calls BIGINT;
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS input_tokens BIGINT;
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS output_tokens BIGINT;
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS cost_usd TEXT;
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS unpriced_calls BIGINT
"""
#: Each process's part of a session's totals, which the session's row adds up (as in SQLite v6).
_SCHEMA_V4 = SESSION_PARTS_V6.replace("calls INTEGER", "calls BIGINT").replace(
    "tokens INTEGER", "tokens BIGINT"
)
_MIGRATIONS: list[Callable[[psycopg.Connection[Any]], None]] = [
    _run_script(_SCHEMA_V1),
    _run_script(_SCHEMA_V2),
    _run_script(_SCHEMA_V3),
    _run_script(_SCHEMA_V4),
]

SCHEMA_VERSION = len(_MIGRATIONS)

#: The columns of the rows ``_record_row`` makes (the SQLite sink's: one list for both).
_RECORD_COLUMNS = ", ".join(RECORD_COLUMNS)
#: The type of each of those columns, in that order, read from the table itself: a binary COPY
#: needs them, and the schema stays the one place that states them.
_COLUMN_TYPES = (
    "SELECT a.atttypid::int FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY AS c(tab, name, n) "
    "JOIN pg_attribute a ON a.attrelid = c.tab::regclass AND a.attname = c.name ORDER BY c.n"
)
#: The sessions' columns the upsert compares (``RUN_NOT_EARLIER``), their types read with the
#: records' (``_COLUMN_TYPES``).
_SESSION_TIMES = ("started_at", "ended_at")
_TEXT = 25
#: Binary COPY sends each value as its column's type, which is right only for the types the
#: migrations make (text, bigint, smallint, double precision). A column an admin changed (tags
#: made jsonb, timestamp made timestamptz) would get the JSON text as one jsonb string, or fail
#: every batch: a table with such a column gets the text COPY, read by the server as an INSERT is.
_BINARY_TYPES = frozenset({25, 20, 21, 701})
_BINARY = " (FORMAT BINARY)"
_COPY = f"COPY records ({_RECORD_COLUMNS}) FROM STDIN"
_STAGE = (
    "CREATE TEMPORARY TABLE IF NOT EXISTS tokenmeter_stage AS "
    f"SELECT {_RECORD_COLUMNS} FROM records WITH NO DATA"
)
_COPY_STAGE = f"COPY tokenmeter_stage ({_RECORD_COLUMNS}) FROM STDIN"
#: Two statements sent as one simple query: PostgreSQL runs them as one implicit transaction,
#: in one round trip.
_MOVE = (
    f"INSERT INTO records ({_RECORD_COLUMNS}) SELECT {_RECORD_COLUMNS} FROM tokenmeter_stage "
    "ON CONFLICT (id) DO NOTHING; TRUNCATE tokenmeter_stage"
)
_ADD_SESSION = (
    f"INSERT INTO sessions ({', '.join(SESSION_COLUMNS)}) "
    f"VALUES ({', '.join(['%s'] * len(SESSION_COLUMNS))}) ON CONFLICT (id) "
)
#: The row of the process that entered the session sets what it says (name, status, times...);
#: a process forked inside it only adds its part, and a late call of an earlier run of the id
#: does not set it back to that run's (the SQLite sink's rules, ``RUN_NOT_EARLIER``).
_UPSERT_SESSION = (
    _ADD_SESSION
    + "DO UPDATE SET "
    + ", ".join(
        f"{column} = excluded.{column}"
        for column in SESSION_COLUMNS[1:]
        if column not in SESSION_TOTALS
    )
    + " WHERE "
)
#: ``RUN_NOT_EARLIER`` on the sink's own text columns: their ISO texts compared bytewise.
_TEXT_TIMES_NOT_EARLIER = RUN_NOT_EARLIER.format(collate=' COLLATE "C"')
#: The same rule where an admin made ``started_at`` or ``ended_at`` a ``timestamptz`` (or
#: ``timestamp``), as team.md allows for ``records.timestamp``: a collation on such a column
#: refused every session row ("collations are not supported by type timestamp with time zone").
#: Compared as instants; the sink's ISO texts (``...Z``) read as the same instants.
_INSTANTS_NOT_EARLIER = (
    "excluded.started_at::timestamptz >= sessions.started_at::timestamptz"
    " OR excluded.ended_at IS NULL"
    " OR excluded.ended_at::timestamptz > sessions.started_at::timestamptz"
)
_PART_COLUMNS = ("session_id", "part", *SESSION_TOTALS)
_UPSERT_PART = (
    f"INSERT INTO session_parts ({', '.join(_PART_COLUMNS)}) "
    f"VALUES ({', '.join(['%s'] * len(_PART_COLUMNS))}) ON CONFLICT (session_id, part) "
    "DO UPDATE SET " + ", ".join(f"{column} = excluded.{column}" for column in SESSION_TOTALS)
)
#: The sessions' rows locked, in one order, before their parts are added up: two processes
#: storing parts of one session at once each added up the parts without the other's.
_LOCK_SESSIONS = "SELECT id FROM sessions WHERE id = ANY(%s) ORDER BY id FOR UPDATE"
_READ_PARTS = (
    f"SELECT session_id, {', '.join(SESSION_TOTALS)} FROM session_parts WHERE session_id = ANY(%s)"
)
_SET_TOTALS = (
    f"UPDATE sessions SET {', '.join(f'{column} = %s' for column in SESSION_TOTALS)} WHERE id = %s"
)
#: The totals of the locked rows, and of the parts about to be stored (by their primary key:
#: not every part of an id), before they change: a row is moved by its parts' change. With each
#: row, whether its id has no parts at all: it keeps its totals as one (``kept_parts``).
_READ_TOTALS = (
    f"SELECT id, {HAS_NO_PARTS}, {', '.join(SESSION_TOTALS)} FROM sessions WHERE id = ANY(%s)"
)
#: Those of the locked rows whose id has few parts: summed from them (``moved_totals``).
_READ_FEW_PARTS = f"SELECT id FROM sessions WHERE id = ANY(%s) AND {HAS_FEW_PARTS}"
_READ_STORED_PARTS = (
    f"SELECT {', '.join(f'p.{column}' for column in _PART_COLUMNS)} "
    "FROM unnest(%s::text[], %s::text[]) AS k(session_id, part) "
    "JOIN session_parts AS p ON p.session_id = k.session_id AND p.part = k.part"
)


#: The JSON escape of a NUL (``\u0000``), not an escaped backslash followed by "u0000".
_JSON_NUL = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


#: Where the JSON text columns are in a record's row and a session's: a ``\\u0000`` there is
#: accepted by a text column but refused by the ``jsonb`` casts of every reader, so it is looked
#: for before the row is sent. (Elsewhere those six characters are text, kept as SQLite keeps it.)
_RECORD_JSON = tuple(
    RECORD_COLUMNS.index(name) for name in ("cost_breakdown", "tags", "modalities", "tool_requests")
)
_SESSION_JSON = (SESSION_COLUMNS.index("tags"),)


def _pg_row(row: tuple[Any, ...], json_columns: tuple[int, ...]) -> tuple[Any, ...]:
    """``row`` with NUL characters replaced by U+FFFD: PostgreSQL text cannot hold them (nor can
    ``jsonb`` hold the JSON escape of one, in ``json_columns``), SQLite can. The record is kept,
    as there."""
    if not any(type(v) is str and ("\x00" in v or "\\u0000" in v) for v in row):
        return row
    return tuple(
        (_JSON_NUL.sub("\\1\ufffd", v) if index in json_columns else v).replace("\x00", "\ufffd")
        if type(v) is str
        else v
        for index, v in enumerate(row)
    )


#: The longest timeout PostgreSQL and libpq take (a 32-bit ``int``: ms, or s to connect).
_MAX_INT32 = 2**31 - 1

#: What libpq quotes of a connection string it cannot parse; group 1: the words before a quoted
#: parameter *name* (never a value, so never the password: shown, it tells what to fix).
_QUOTED = re.compile(r'(invalid URI query parameter: |invalid connection option )?"([^"]*)"')


def _hide_quoted(match: re.Match[str]) -> str:
    named, quoted = match.group(1), match.group(2)
    if named and re.fullmatch(r"\w+", quoted):
        return match.group(0)
    return f'{named or ""}"…"'


def _without_password(exc: Exception, dsn: str) -> Exception:
    """``exc`` of a failed connect, or the same error with a message that shows nothing of the
    DSN's password: the writer logs it and the quarantine file keeps it. libpq quotes the part of
    a string it cannot parse, which may be the password (one holding a space or a stray ``%``),
    so those quotes are hidden; the password of a string it can parse is masked wherever it is."""
    psycopg = _psycopg()
    message = str(exc).strip()
    try:
        password = psycopg.conninfo.conninfo_to_dict(dsn).get("password")
    except psycopg.Error:
        hidden = _QUOTED.sub(_hide_quoted, message)
        return type(exc)(f"malformed PostgreSQL connection string ({hidden})")
    if password and password in message:
        return type(exc)(message.replace(password, "***"))
    database = psycopg.conninfo.conninfo_to_dict(dsn).get("dbname")
    if database and database in message and database_may_be_a_password(dsn):
        return type(exc)(message.replace(database, "***"))
    return exc


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:  # pragma: no cover - depends on the extras installed
        raise ImportError(
            "the PostgreSQL sink needs psycopg 3: pip install 'tokenmeter[postgres]'"
        ) from None
    return psycopg


def _check_escapes(dsn: str) -> None:
    """ValueError for a URL whose %-escape is not UTF-8 (``password=%ff``): psycopg decodes the
    escapes as it connects, and every write failed with a bare codec error naming nothing. A
    string libpq cannot parse otherwise is told at connecting, by libpq, its password hidden."""
    psycopg = _psycopg()
    try:
        psycopg.conninfo.conninfo_to_dict(dsn)
    except UnicodeDecodeError:
        raise ValueError("dsn has a %-escape that is not UTF-8 text") from None
    except psycopg.Error:  # libpq says what, once connecting
        return


#: A URL's authority (``user:password@host:port``): up to its path, query or fragment.
_URL_AUTHORITY = re.compile(r"^[a-z][a-z0-9+.-]*://([^/?#]*)", re.IGNORECASE)


def check_userinfo(dsn: str) -> None:
    """ValueError, never quoting ``dsn``, for a URL whose authority holds more than one ``@``:
    a password with an ``@`` not percent-encoded (``tm:p@ss@db``), or whose password holds a
    ``/`` not percent-encoded (``tm:pa/ss@db``: an ``@`` after the host's ``/``). libpq ends
    the password at the first ``@`` and tries the rest as a host that cannot exist, and its
    error quotes that "host": the password's tail reached the writer's log,
    ``quarantine.jsonl`` and the CLI."""
    authority = _URL_AUTHORITY.match(dsn)
    if authority is None:
        return
    if authority[1].count("@") > 1:
        raise ValueError(
            "the URL has more than one '@' before its host: an '@' in a user name "
            "or password must be percent-encoded as %40"
        )
    # As libpq splits it: the host part ends at the first '/' (or '?'), nothing else.
    after_scheme = dsn[dsn.index("://") + 3 :].partition("?")[0]
    host_part, slash, path = after_scheme.partition("/")
    if slash and "@" not in host_part and "@" in path and _slashed_password(host_part, path):
        # ``tm:HEAD/ss+TAIL@db/llm``: libpq ends the authority at the ``/``, takes ``tm:HEAD``
        # for host and port and the password's tail for the database, which messages name.
        raise ValueError(
            "the URL has an '@' after the '/' that ends its host: a '/' in a user name or "
            "password must be percent-encoded as %2F"
        )


def _slashed_password(host_part: str, path: str) -> bool:
    """Whether a URL's host part and path (``path`` holding an ``@``) read as a password with a
    ``/`` not percent-encoded: a "port" that is not a number (``tm:HEAD/ss@db``, ``tm:/ss@db``),
    or a number followed, after the ``@``, by a host and a database or a port
    (``tm:2024/ss@db/llm``, ``tm:2024/ss@db:5432``; a ``,`` in the password too). A database
    named with an ``@`` (``host:5432/team@prod``, ``[::1]/team@prod``, a host list) is a DSN
    libpq takes. Without a port, a ``:`` before the path's last ``@`` reads as the password of
    a user name with a ``/`` (``svc/app:PW@db/llm``, a Kerberos principal, with its realm:
    ``svc/app@REALM:PW@db``); after a port, a ``/`` in the user name cannot be."""
    ported = False
    for host in host_part.split(","):
        if host.startswith("["):  # an IPv6 address: its port, if any, after the bracket
            host = host.partition("]")[2]
        if ":" in host:
            if not host.rpartition(":")[2].isdigit():
                return True
            ported = True
    if not ported:
        return ":" in path.rpartition("@")[0]
    after = path.partition("@")[2]
    return "/" in after or ":" in after


def database_may_be_a_password(dsn: str) -> bool:
    """Whether the database of a URL, as libpq reads it, may be the tail of a password holding
    a ``/`` not percent-encoded, so that it is never shown: an ``@`` in the path after a numeric
    port, with no user name before the host. ``tm:2024/Pw:S3cret@db`` (user ``tm``, password
    ``2024/Pw:S3cret``) reads as host ``tm``, port 2024, database ``Pw:S3cret@db``, just as the
    database ``db:5432/team:eu@prod`` does: the string cannot tell them apart, and libpq takes
    both, so both are taken and neither database is printed."""
    if _URL_AUTHORITY.match(dsn) is None:
        return False
    after_scheme = dsn[dsn.index("://") + 3 :].partition("?")[0]
    host_part, slash, path = after_scheme.partition("/")
    if not slash or "@" in host_part or "@" not in path:
        return False
    for host in host_part.split(","):
        if host.startswith("["):  # an IPv6 address: its port, if any, after the bracket
            host = host.partition("]")[2]
        if ":" in host and host.rpartition(":")[2].isdigit():
            return True
    return False


def _sendable(dsn: str) -> bool:
    """Whether libpq gets ``dsn`` whole: it takes UTF-8 bytes up to the first NUL."""
    if "\x00" in dsn:
        return False
    try:
        dsn.encode()
    except UnicodeEncodeError:
        return False
    return True


#: The PostgreSQL schema the sink's tables live in unless another is given (and the CLI reads).
DEFAULT_SCHEMA = "tokenmeter"


def split_schema(url: str) -> tuple[str, str | None]:
    """The URL without tokenmeter's own ``schema=NAME`` parameter (libpq refuses a parameter it
    does not know), and that schema (None: not given). The other parameters are kept as written,
    escapes and all. ValueError for a name ``PostgresSink`` would refuse, or two of them."""
    base, mark, query = url.partition("?")
    kept, found = [], []
    for item in query.split("&") if mark else ():
        key, _, value = item.partition("=")
        if key == "schema":
            try:
                found.append(unquote(value, errors="strict"))
            except UnicodeDecodeError:
                raise ValueError("schema in the URL has a %-escape that is not UTF-8") from None
        else:
            kept.append(item)
    if not found:
        return url, None
    if len(found) > 1:
        raise ValueError("schema is given more than once")
    return base + ("?" + "&".join(kept) if kept else ""), check_schema_name(found[0])


def _schema_of_url(dsn: str, schema: str | None) -> tuple[str, str]:
    """The DSN libpq gets and the schema: a ``postgresql://`` URL may name it with
    ``?schema=NAME``, as the CLI's ``--source`` does (the only way to choose it through
    ``TOKENMETER_PG_DSN`` or ``pg_dsn``); ``schema`` given as well must be the same."""
    named = None
    if dsn.lower().startswith(("postgresql://", "postgres://")):
        dsn, named = split_schema(dsn)
    chosen = None if schema is None else check_schema_name(schema)
    if named is not None and chosen is not None and named != chosen:
        raise ValueError(f"schema={schema!r} and the DSN's ?schema={named} differ")
    return dsn, chosen or named or DEFAULT_SCHEMA


def check_dsn(dsn: object, schema: str | None = None) -> tuple[str, str]:
    """The DSN libpq gets and the schema, or the ValueError ``PostgresSink(dsn, schema=schema)``
    raises for them (the ``pg_dsn`` setting is checked here too: one it would refuse, such as
    ``?schema=team-a``, passed the settings and then broke ``instrument()`` with an error naming
    no setting). The %-escapes are checked where psycopg, which decodes them, is installed."""
    if not isinstance(dsn, str):
        raise ValueError(f"dsn must be a connection string, got {type(dsn).__name__}")
    if not _sendable(dsn):  # never echoed: it may hold a password
        raise ValueError(
            "dsn cannot hold a NUL character (libpq would read the string up to it) or a "
            "lone surrogate (not UTF-8)"
        )
    check_userinfo(dsn)
    dsn, chosen = _schema_of_url(dsn, schema)
    with contextlib.suppress(ImportError):  # no sink can be made: making one says so
        _check_escapes(dsn)
        check_dbname(dsn)
    return dsn, chosen


_URL_SCHEMES = ("postgresql://", "postgres://")


def check_dbname(dsn: str) -> None:
    """ValueError, never quoting ``dsn``, for one whose ``dbname`` is itself a connection string
    (``dbname='postgresql://tm:pw@db/llm'``, ``dbname='user=tm password=pw'``, or a URL's
    ``?dbname=``). libpq documents such a dbname as expanded, and psql expands it, but psycopg
    does not: the whole string, password included, was the database name, which the CLI's
    labels, ``config``, the sink's log and ``quarantine.jsonl`` then showed, and no record was
    stored where the user meant. A URL's ``?schema=`` is taken off first (libpq never sees it);
    a DSN libpq cannot read is told at connecting, its password hidden."""
    psycopg = _psycopg()
    try:
        in_path = False
        if dsn.lower().startswith(("postgresql://", "postgres://")):
            dsn = split_schema(dsn)[0]
            query = dsn.partition("?")[2].partition("#")[0]
            in_path = "dbname" not in dict(parse_qsl(query))
        database = str(psycopg.conninfo.conninfo_to_dict(dsn).get("dbname") or "").lower()
    except (psycopg.Error, ValueError):
        return
    # A URL's path names the database as it is: postgresql://tm@db/team%3Da is the database
    # "team=a"; only one that holds a password or a URL is refused there.
    held = ("password=",) if in_path else ("=",)
    if any(part in database for part in held) or database.startswith(_URL_SCHEMES):
        raise ValueError(
            "the DSN's dbname is itself a connection string, which psycopg would take as the "
            "database's name: write its parameters in the DSN itself"
        )


#: How long a connection is waited for when neither ``connect_timeout_s`` nor the DSN says.
_DEFAULT_CONNECT_TIMEOUT_S = 10


def _exit_bound() -> int | None:
    """At exit, the whole seconds left of ``exit_timeout`` (a new connection is waited no
    longer: the retry of a write a server stopped answering connected for the full connect
    timeout, past the exit); None before the exit. A TimeoutError once nothing is left."""
    deadline = _exit_deadline()
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("exit_timeout ran out before PostgreSQL was connected to")
    return max(1, math.ceil(left))


def _given_connect_timeout(dsn: str) -> int | None:
    """libpq's ``connect_timeout`` as the DSN, else ``PGCONNECT_TIMEOUT``, sets it (whole
    seconds, 0 for ever); None where neither does (or the DSN cannot be read: connecting says
    why)."""
    psycopg = _psycopg()
    try:
        value = psycopg.conninfo.conninfo_to_dict(dsn).get("connect_timeout")
    except (psycopg.Error, ValueError):  # a %-escape that is not UTF-8: a UnicodeDecodeError
        return None
    if value is None:
        value = os.environ.get("PGCONNECT_TIMEOUT")
    try:
        return max(0, min(int(float(str(value))), _MAX_INT32))
    except (ValueError, OverflowError):
        return None


#: Longest name PostgreSQL keeps whole (NAMEDATALEN - 1); it cuts longer ones to this.
MAX_SCHEMA_BYTES = 63


def check_schema_name(schema: str) -> str:
    """A schema name as PostgreSQL folds it (lower case), or ValueError: only plain identifiers,
    which are spliced into ``SET search_path`` (never a quoted name or SQL). PostgreSQL keeps
    ``pg_`` names for its own schemas: a sink given one failed every write, setting each record
    aside. A name past 63 bytes is refused: the server cut it, so two services' names alike in
    their first 63 bytes shared one store (records, sessions and budget rows mixed). A store
    made under a longer name is the one its first 63 bytes name: give that name to keep it."""
    if not isinstance(schema, str) or not schema.isidentifier() or not schema.isascii():
        raise ValueError(f"schema must be a plain SQL identifier, got {schema!r}")
    if schema.lower().startswith("pg_"):
        raise ValueError(f"schema must not start with pg_ (PostgreSQL's own), got {schema!r}")
    if len(schema) > MAX_SCHEMA_BYTES:  # ASCII: a byte a character
        raise ValueError(
            f"schema must be at most {MAX_SCHEMA_BYTES} bytes (PostgreSQL cuts longer names, "
            f"so names alike in their first {MAX_SCHEMA_BYTES} would share one store), got "
            f"{len(schema)}: {schema!r} (its store so far: {schema[:MAX_SCHEMA_BYTES].lower()!r})"
        )
    return schema.lower()


def _untotalled(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A session's row made with no totals (``_session_row``'s end): summed from its parts in
    the same transaction, never seen so (a row made with one part's totals looked whole)."""
    return (*row[: -len(SESSION_TOTALS)], *[None] * len(SESSION_TOTALS))


class PostgresSink:
    """Stores records (and sessions) in PostgreSQL, shared by many processes and machines.

    ``dsn`` is a libpq connection string or ``postgresql://`` URL; empty (the default) lets libpq
    read the standard ``PGHOST``, ``PGPORT``, ``PGUSER``, ``PGDATABASE``, ``PGPASSWORD`` (or
    ``~/.pgpass``) variables. Tables live in the PostgreSQL schema ``schema`` (else the one a
    URL names with ``?schema=NAME``, else ``tokenmeter``), created when missing.
    ``statement_timeout_s`` bounds every statement (a locked table fails the batch, which is
    retried, instead of hanging the writer).
    """

    def __init__(
        self,
        dsn: str = "",
        *,
        schema: str | None = None,
        connect_timeout_s: float | None = None,
        statement_timeout_s: float = 30.0,
    ) -> None:
        self._dsn, self.schema = check_dsn(dsn, schema)
        for name, value in (
            ("connect_timeout_s", 1 if connect_timeout_s is None else connect_timeout_s),
            ("statement_timeout_s", statement_timeout_s),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        _psycopg()  # a missing extra fails here, not at every write
        # Both are 32-bit integers to libpq and the server, which refuses a larger timeout.
        self._connect_timeout = (
            None if connect_timeout_s is None else max(1, round(min(connect_timeout_s, _MAX_INT32)))
        )
        self._statement_timeout_ms = max(1, round(min(statement_timeout_s * 1000, _MAX_INT32)))
        #: How long a write or a ledger transaction may wait for the server: past its own timeout.
        self._deadline_s = self._statement_timeout_ms / 1000 + 1.0
        self._conn: psycopg.Connection[Any] | None = None
        self._pid = 0
        self._watch: Any = None  # the writer's watchdog (``_with_retry``), made at first use
        self._types: list[int] = []  # of the COPY columns, read on connecting
        self._format = _BINARY  # or "" (text) when one of those types is not the schema's
        self._upsert_session = _UPSERT_SESSION + _TEXT_TIMES_NOT_EARLIER  # set on connecting
        #: ``give_up_unsent_write``: whether the write under way may have sent a commit (its
        #: rows may be stored), and whether the exit set it aside (it must send none now).
        self._sending = threading.Lock()
        self._sending_pid = os.getpid()
        self._may_be_stored = False
        self._given_up = False

    def __repr__(self) -> str:  # never the DSN: it may hold a password
        return f"PostgresSink(schema={self.schema!r})"

    # -- the Sink protocol -------------------------------------------------------------------------
    def write(self, records: Sequence[UsageRecord]) -> None:
        if records:
            rows: list[tuple[Any, ...]] = []  # built once, by the first attempt
            self._begin_write()
            self._with_retry(lambda conn: self._insert_records(conn, records, rows))

    def write_sessions(self, sessions: Sequence[SessionInfo]) -> None:
        if sessions:
            self._begin_write()
            self._with_retry(lambda conn: self._upsert_sessions(conn, sessions))

    def give_up_unsent_write(self) -> bool:
        """For the exit, whose ``exit_timeout`` ran out inside ``write``: True when the write
        under way has sent no commit, and from now on never will (its records are stored by no
        attempt: the exit sets them aside); False when one may have been sent. A server that
        stops answering held the write on the old connection, then on a new one's connect, and
        the exit counted the batch as "may be lost" although none of it could be stored."""
        with self._sending_lock():
            if self._may_be_stored:
                return False
            self._given_up = True
            return True

    def flush(self) -> None:
        """Nothing to do: every ``write`` commits before it returns."""

    def close(self) -> None:
        if self._conn is not None:
            self._drop_connection()
        if self._watch is not None:
            self._watch.stop()

    # -- for the budget ledger and the CLI ---------------------------------------------------------
    def connect(self, timeout_s: float | None = None) -> psycopg.Connection[Any]:
        """A new connection of its own (autocommit, ``search_path`` set to the schema, which is
        migrated to the current version): for readers and the budget ledger, never the writer's.
        ``timeout_s``: a shorter wait to connect than ``connect_timeout_s`` (whole seconds)."""
        if timeout_s is None:
            return self._open()
        return self._open(max(1, math.ceil(timeout_s)))

    def budget_ledger(self) -> Any:
        """The budget ledger over this database (see ``tokenmeter.sinks._pg_ledger``)."""
        from tokenmeter.sinks._pg_ledger import PostgresLedger

        return PostgresLedger(self)

    # -- inside --------------------------------------------------------------------------------
    def _sending_lock(self) -> threading.Lock:
        """The lock of ``_may_be_stored`` and ``_given_up``, made again in a forked child: one
        forked while the writer held it stayed held there, and the child's writer and exit
        waited for it for ever (0 of 3 records stored, the process never ending)."""
        if self._sending_pid != os.getpid():
            self._sending, self._sending_pid = threading.Lock(), os.getpid()
            self._may_be_stored = self._given_up = False
        return self._sending

    def _begin_write(self) -> None:
        with self._sending_lock():
            self._may_be_stored = False

    def _may_commit(self) -> None:
        """Called before anything that may commit the write's rows (a COPY's end, a
        transaction's COMMIT): raises when the exit gave the write up (``give_up_unsent_write``),
        else notes that its rows may be stored from now on."""
        with self._sending_lock():
            if self._given_up:
                raise RuntimeError("given up at exit before anything of it was sent")
            self._may_be_stored = True

    def _insert_records(
        self,
        conn: psycopg.Connection[Any],
        records: Sequence[UsageRecord],
        rows: list[tuple[Any, ...]],
    ) -> None:
        """Store ``records``. ``rows`` holds the rows built for them so far (by an attempt on a
        connection that died) and gets the rest as they are built."""
        errors = _psycopg().errors
        try:
            with conn.cursor() as cur, cur.copy(_COPY + self._format) as copy:
                if self._format:
                    copy.set_types(self._types)
                for row in rows:
                    copy.write_row(row)
                for record in records[len(rows) :] if rows else records:
                    row = _record_row(record)
                    if any("\\u0000" in (row[index] or "") for index in _RECORD_JSON):
                        row = _pg_row(row, _RECORD_JSON)
                    rows.append(row)
                    copy.write_row(row)  # sent as the buffer fills: the server works meanwhile
                self._may_commit()  # the COPY's end, sent as the block ends, commits it
        except (errors.UniqueViolation, errors.CharacterNotInRepertoire):
            # An id stored already (a retried batch), or a NUL the server refused: the whole COPY
            # was rolled back, and the batch goes through the stage, NULs replaced.
            rows.extend(_record_row(r) for r in records[len(rows) :])
            rows[:] = [_pg_row(row, _RECORD_JSON) for row in rows]
            conn.execute(_STAGE.encode())
            with conn.cursor() as cur, cur.copy(_COPY_STAGE + self._format) as copy:
                if self._format:
                    copy.set_types(self._types)
                for row in rows:
                    copy.write_row(row)
            self._may_commit()
            conn.execute(_MOVE.encode())

    def _upsert_sessions(
        self, conn: psycopg.Connection[Any], sessions: Sequence[SessionInfo]
    ) -> None:
        """The sessions' rows and parts, each row's totals the sum of its parts: moved by the
        change of the parts stored (``moved_totals``), a row made here summed from its parts."""
        ids = sorted({s.id for s in sessions})
        first = {s.id: s for s in reversed(sessions)}  # a row for each, made if missing
        latest = _latest_parts(sessions)
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(
                _ADD_SESSION + "DO NOTHING",
                [_pg_row(_untotalled(_session_row(first[id_])), _SESSION_JSON) for id_ in ids],
            )
            cur.execute(_LOCK_SESSIONS, [ids])
            cur.execute(_READ_TOTALS, [ids])
            stored = cur.fetchall()
            rows_before = {id_: totals for id_, _, *totals in stored}
            kept = _kept_parts(rows_before, {id_ for id_, partless, *_ in stored if partless})
            if kept:  # read with the parts: a batch's own part '' moves it
                cur.executemany(_UPSERT_PART, kept)
            cur.execute(_READ_STORED_PARTS, [[k[0] for k in latest], [k[1] for k in latest]])
            parts_before = {(id_, part): totals for id_, part, *totals in cur.fetchall()}
            owned = [_pg_row(_session_row(s), _SESSION_JSON) for s in sessions if not s.inherited]
            if owned:
                cur.executemany(self._upsert_session, owned)
            cur.executemany(_UPSERT_PART, [_pg_row(_part_row(s), ()) for s in latest.values()])
            cur.execute(_READ_FEW_PARTS, [ids])
            few = {id_ for (id_,) in cur.fetchall()}
            moved, resum = _moved_totals(latest, parts_before, rows_before, few)
            if moved:
                cur.executemany(_SET_TOTALS, moved)
            if resum:
                cur.execute(_READ_PARTS, [resum])
                cur.executemany(_SET_TOTALS, _sum_parts(cur.fetchall()))
            self._may_commit()  # the COMMIT, sent as the block ends

    def _with_retry(self, work: Callable[[psycopg.Connection[Any]], None]) -> None:
        """``work`` on the connection, once more on a new one if it was found dead. Given up a
        second past ``statement_timeout_s``: the timeout is the server's, so a server that
        stopped answering mid-write (frozen, or cut off behind a proxy that keeps the socket
        open) held the writer, and every record after, for ever."""
        if self._watch is None:
            from tokenmeter.sinks._pg_ledger import _Watchdog

            self._watch = _Watchdog("tokenmeter-pg-sink-watchdog")
        deadline = self._deadline_s
        for attempt in (1, 2):
            fresh = self._conn is None or self._pid != os.getpid()
            conn = self._connection()
            cut = self._watch.start(conn, deadline)
            try:
                work(conn)
                return
            except BaseException as exc:
                if cut.is_set():  # the server did not answer: no second attempt
                    self._drop_connection()
                    raise TimeoutError(
                        f"PostgreSQL did not answer within {deadline:g} s (statement_timeout_s + 1)"
                    ) from exc
                dead = conn.broken or conn.closed
                self._drop_connection()  # a new connection next time, with an empty stage
                if not dead or fresh or attempt == 2:
                    # The statement failed (the writer retries later), or a new connection died
                    # (the server is going away).
                    raise
            finally:
                self._watch.done()
            # An old connection found dead (restart, terminated, idle cut): once more on a new
            # one; the batch is idempotent, so a commit made before the break is harmless.

    def _connection(self) -> psycopg.Connection[Any]:
        """The writer's connection, made if there is none (at exit, waited for no longer than
        ``exit_timeout`` allows: ``_exit_bound``)."""
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        if self._conn is not None:
            self._drop_connection()
        conn = self._open(_exit_bound())
        columns = [("records", name) for name in RECORD_COLUMNS]
        columns += [("sessions", name) for name in _SESSION_TIMES]
        try:
            found = conn.execute(
                _COLUMN_TYPES, ([table for table, _ in columns], [name for _, name in columns])
            ).fetchall()
        except BaseException:
            conn.close()
            raise
        if len(found) != len(columns):
            conn.close()
            raise RuntimeError(
                f"table {self.schema}.records lacks some of {RECORD_COLUMNS}, "
                f"or {self.schema}.sessions some of {_SESSION_TIMES}"
            )
        types = [oid for (oid,) in found]
        self._types = types[: len(RECORD_COLUMNS)]
        self._format = _BINARY if _BINARY_TYPES.issuperset(self._types) else ""
        text_times = all(oid == _TEXT for oid in types[len(RECORD_COLUMNS) :])
        self._upsert_session = _UPSERT_SESSION + (
            _TEXT_TIMES_NOT_EARLIER if text_times else _INSTANTS_NOT_EARLIER
        )
        self._conn, self._pid = conn, os.getpid()
        return conn

    def _connect_wait(self, bound: int | None) -> dict[str, int]:
        """``psycopg.connect``'s ``connect_timeout``: ``connect_timeout_s``, else the one the DSN
        or ``PGCONNECT_TIMEOUT`` sets (a keyword argument would override it: it was ignored),
        else 10 s; never longer than ``bound``. Empty: the DSN's own, left to libpq."""
        wait = self._connect_timeout
        if wait is None:
            given = _given_connect_timeout(self._dsn)
            wait = _DEFAULT_CONNECT_TIMEOUT_S if given is None else given
            if bound is None:
                return {} if given is not None else {"connect_timeout": wait}
        if bound is not None and not 0 < wait <= bound:  # 0: libpq waits for ever
            wait = bound
        return {"connect_timeout": wait}

    def _open(self, connect_timeout: int | None = None) -> psycopg.Connection[Any]:
        errors = _psycopg().Error
        try:
            conn: psycopg.Connection[Any] = _psycopg().connect(
                self._dsn,
                autocommit=True,
                **self._connect_wait(connect_timeout),
                application_name="tokenmeter",
                # Whatever PGCLIENTENCODING says (set for an application's own use, LATIN1, say):
                # psycopg encodes every value in it, and a model name outside it fails the batch.
                client_encoding="utf8",
            )
        except errors as exc:
            hidden = _without_password(exc, self._dsn)
            if hidden is exc:
                raise
            raise hidden from None  # the original, password and all, is not chained
        try:
            # READ COMMITTED whatever the database's default: the budget ledger's statements
            # re-check the row they lock, which a stricter isolation refuses under concurrent
            # updates ("could not serialize access"), and a refused check lets the call through.
            # No lock_timeout either (an admin's guard against DDL queues): racing ledgers wait
            # a moment for a budget's row, and one given up lets the call through unreserved;
            # statement_timeout bounds every wait.
            conn.execute(
                f"SET statement_timeout = {self._statement_timeout_ms}; SET lock_timeout = 0; "
                "SET default_transaction_isolation = 'read committed'".encode()
            )
            _migrate(conn, self.schema)
            conn.execute(f'SET search_path = "{self.schema}"'.encode())
        except BaseException:
            conn.close()
            raise
        return conn

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._pid == os.getpid():
            conn.close()
        else:
            _INHERITED_CONNECTIONS.append(conn)  # the parent's: never close it from the child


_INHERITED_CONNECTIONS: list[Any] = []


#: The tables and view the migrations make: a schema missing one (dropped while in use) is
#: migrated again.
_RELATIONS = ("records", "sessions", "session_parts", "session_totals", "budget_ledger")


def _version(conn: psycopg.Connection[Any], schema: str) -> tuple[int, bool]:
    """The schema's version, and whether every one of ``_RELATIONS`` is there."""
    names = [f'"{schema}".{name}' for name in ("tokenmeter_schema", *_RELATIONS)]
    row = conn.execute(
        "SELECT bool_and(to_regclass(n) IS NOT NULL) FILTER (WHERE n <> %s), "
        "to_regclass(%s) IS NOT NULL FROM unnest(%s::text[]) AS t(n)",
        (names[0], names[0], names),
    ).fetchone()
    if row is None or not row[1]:
        return 0, False
    found = conn.execute(f'SELECT max(version) FROM "{schema}".tokenmeter_schema'.encode())
    value = found.fetchone()
    return int(value[0]) if value is not None and value[0] is not None else 0, bool(row[0])


def _migrate(conn: psycopg.Connection[Any], schema: str) -> None:
    """Bring ``schema`` to ``SCHEMA_VERSION``; ValueError for a schema written by a newer one."""
    found = _version(conn, schema)
    if found == (SCHEMA_VERSION, True):
        return
    try:
        _migrate_locked(conn, schema)
    except _psycopg().errors.InsufficientPrivilege as exc:
        if not 0 < found[0] < SCHEMA_VERSION:
            raise
        # A writing role given team.md's grants cannot migrate the schema an admin made: the
        # error said only "permission denied for database postgres", at every write.
        raise type(exc)(
            f"schema {schema!r} is at version {found[0]}, this tokenmeter needs "
            f"{SCHEMA_VERSION}: run it once as the schema's owner to migrate, and grant this "
            f"role the new tables (docs/team.md, Privileges) ({exc})"
        ) from exc


def _migrate_locked(conn: psycopg.Connection[Any], schema: str) -> None:
    """``_migrate``'s work, in one transaction under the migration lock."""
    with conn.transaction():
        # One process migrates; the others wait here, then find the work done.
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'.encode())
        conn.execute(
            f'CREATE TABLE IF NOT EXISTS "{schema}".tokenmeter_schema '
            "(version INTEGER NOT NULL, migrated_at TIMESTAMPTZ NOT NULL DEFAULT now())".encode()
        )
        version, complete = _version(conn, schema)
        if version > SCHEMA_VERSION:
            raise ValueError(
                f"PostgreSQL schema {schema!r} is at version {version}, newer than this "
                f"tokenmeter supports ({SCHEMA_VERSION}); upgrade tokenmeter to write to it"
            )
        conn.execute(f'SET LOCAL search_path = "{schema}"'.encode())
        first = version if complete else 0  # a table dropped: every migration makes what it lacks
        for number, migrate in enumerate(_MIGRATIONS[first:], start=first + 1):
            migrate(conn)
            if number > version:
                conn.execute(
                    f'INSERT INTO "{schema}".tokenmeter_schema (version) VALUES (%s)'.encode(),
                    (number,),
                )
