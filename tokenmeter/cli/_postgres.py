"""``--source postgresql://...``: the CLI's SQL readers, run against the PostgreSQL sink's tables.

The PostgreSQL sink stores the same columns with the same encodings as the SQLite file, so the
readers' queries (aggregation in SQL, never in Python) run there almost as written. This module is
the thin dialect layer between them: a connection object with the part of ``sqlite3.Connection``
the readers use, which translates the few SQLite spellings they contain:

- ``?`` placeholders become ``%s``; ``LIMIT -1`` (no limit) becomes ``LIMIT NULL``;
- ``rowid`` (insertion order) becomes the ``seq`` column;
- ``json_extract(tags, ?)`` with a ``$."key"`` path becomes ``(pg_temp.tokenmeter_jsonb(tags)
  ->> 'key')``, and ``json_each(tags)`` (a row per tag) ``jsonb_each_text(...)`` of the same: a
  function made for the connection that reads text that is not JSON (another program's row, a
  ``\u0000`` jsonb refuses) as NULL, where a ``::jsonb`` cast would fail the whole query. Rows
  whose tags are not a JSON object are left out and counted, as SQLite's are (``valid_tags``).
  Where the function cannot be made (no ``TEMPORARY`` privilege, a read-only standby) the casts
  are plain ``::jsonb``;
- ``typeof(latency_ms) IN ('real', 'integer')`` becomes ``latency_ms IS NOT NULL`` (typed);
- ``FROM records`` (or ``sessions``) of a table whose column types an admin changed becomes
  ``FROM (SELECT <those columns as the sink's text> FROM records) AS records`` (``_as_written``);
- the ``sqlite_master`` lookup of a table becomes one in ``pg_tables``;
- ``BEGIN`` opens a read-only REPEATABLE READ transaction: one snapshot for every query, while
  writers carry on (as a SQLite read transaction does).

Errors come out as ``sqlite3.Error`` so the readers' own handling (a one-line ``CliError``)
applies unchanged. The sink's typed columns (integer counts, text names) keep out what SQLite's
per-row validity check finds of a wrong type, but not another program's negative counts, a
timestamp that is not the record format, or tags that are not JSON: ``sound_rows`` states that
check for them, and the reports skip and count such rows, as SQLite's do (``is_postgres`` in
``exclude_bad_rows``).
"""

from __future__ import annotations

import getpass
import json
import os
import re
import sqlite3
import time
from collections.abc import Iterator, Sequence
from typing import Any, TypeGuard
from urllib.parse import SplitResult, parse_qs, quote, urlencode, urlsplit

from tokenmeter.cli._errors import CliError
from tokenmeter.cli._validate import COUNT_FIELDS
from tokenmeter.sinks.postgres import (
    _DEFAULT_CONNECT_TIMEOUT_S,
    _given_connect_timeout,
    database_may_be_a_password,
    split_schema,
)

__all__ = [
    "PgConnection",
    "display_name",
    "is_postgres",
    "is_postgres_url",
    "keyword_dsn_url",
    "refuse_unparsed_dsn",
    "split_schema",
]

_SCHEMES = ("postgresql://", "postgres://")
#: A host a URL may hold as written: a name or an IPv4 address (not a socket directory, nor a
#: list of hosts); an IPv6 address goes in brackets.
_URL_HOST = re.compile(r"[A-Za-z0-9.-]+")
_IPV6_HOST = re.compile(r"[0-9A-Fa-f:]+:[0-9A-Fa-f:.]*")
#: SQLite's guard of a filter's tags (``tag_sql``): the tags read as below do not fail.
_JSON_GUARD = re.compile(r"CASE WHEN json_valid\((\w+(?:\.\w+)?)\) THEN \1 END")
_JSON_EXTRACT = re.compile(r"json_extract\((\w+(?:\.\w+)?), \?\)")
_JSON_EACH = re.compile(r"\bjson_each\((\w+(?:\.\w+)?)\)")
_NUMBER_TYPE = re.compile(r"\btypeof\((\w+(?:\.\w+)?)\) IN \('real', 'integer'\)")
_JSON_PATH = re.compile(r'^\$\."((?:[^"\\]|\\.)*)"$')
_ROWID = re.compile(r"\browid\b")
_TABLE_LOOKUP = "FROM sqlite_master WHERE type='table' AND name="
_PG_TABLE_LOOKUP = "FROM pg_tables WHERE schemaname = current_schema() AND tablename="
#: Tags text as jsonb, NULL where it is not JSON (a cast in an EXCEPTION block: nothing else in
#: PostgreSQL before 16 tells whether text is valid JSON without failing the query). Parallel
#: unsafe: an EXCEPTION block starts a subtransaction, which no parallel plan allows (declared
#: safe, every report over a table big enough for a parallel scan failed).
_SAFE_JSONB = (
    "CREATE FUNCTION pg_temp.tokenmeter_jsonb(tags text) RETURNS jsonb "
    "LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL UNSAFE AS "
    "$$ BEGIN RETURN tags::jsonb; EXCEPTION WHEN others THEN RETURN NULL; END $$"
)
#: The record format's timestamp, with the ranges of its fields SQLite's ``julianday()`` accepts
#: (``sql_valid``: ``2026-13-45T...`` or ``yesterday`` is no timestamp; a day 31 of a 30-day
#: month is one). A POSIX regular expression: no function to make, so checked everywhere.
_RECORD_TIMESTAMP = (
    "'^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    "T([01][0-9]|2[0-4]):[0-5][0-9]:[0-5][0-9][.][0-9]{3}Z$'"
)
#: Seconds waited before each attempt to connect again when a connection was ended (1 min).
_RECONNECT_WAITS = (0, 0.5, 1, 2, 4, 8, 15, 30)


def is_postgres_url(value: str | None) -> bool:
    return bool(value) and str(value).lower().startswith(_SCHEMES)


#: What only a connection string holds: a URL's scheme, or a libpq keyword that carries a secret
#: or a server (``password=``, ``host=``, ...) set with ``=``.
_LOOKS_LIKE_DSN = re.compile(
    r"^\s*[A-Za-z][A-Za-z0-9+.-]*://|postgres(?:ql)?(?:\+\w+)?://|password\s*=|"
    r"(?:^|[\s'\"])(?:passfile|host|hostaddr|dbname|user|port|sslmode|service)\s*=",
    re.IGNORECASE,
)


def refuse_unparsed_dsn(value: str, option: str = "--source") -> None:
    """A value that names no file but reads as a connection string libpq would not take (a
    misspelt keyword, a quote left open, a URL after a space) is refused here, without echoing
    it: taken for a file path, the message "no usage data at ..." printed its password."""
    if os.path.lexists(value) or not _LOOKS_LIKE_DSN.search(value):
        return
    raise CliError(
        f"{option} names no file and is not a PostgreSQL connection string that parses (a "
        "postgresql:// URL, or libpq's keyword=value form); it is not shown, as it may hold a "
        "password",
        exit_code=2,
    )


def keyword_dsn_url(dsn: str) -> str | None:
    """A libpq keyword DSN (``host=db port=5432 dbname=app``), which the PostgreSQL sink and the
    budget ledger take as is, as the ``postgresql://`` URL the CLI reads through (the host, port
    and database where a URL puts them, the other keywords as its parameters); None when ``dsn``
    is none that psycopg parses (or psycopg is not installed)."""
    if "=" not in dsn or is_postgres_url(dsn):
        return None
    try:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        return None
    try:
        params = {key: str(value) for key, value in conninfo_to_dict(dsn).items()}
    except psycopg.Error:  # a keyword libpq does not know, a quote left open: no DSN
        return None
    netloc, host = "", params.get("host", "")
    if _URL_HOST.fullmatch(host) or _IPV6_HOST.fullmatch(host):
        netloc = f"[{params.pop('host')}]" if ":" in host else params.pop("host")
        if params.get("port", "").isdigit():
            netloc += ":" + params.pop("port")
    path = "/" + quote(params.pop("dbname"), safe="") if "dbname" in params else ""
    query = "?" + urlencode(params, quote_via=quote) if params else ""
    return f"postgresql://{netloc}{path}{query}"


def display_name(url: str) -> str:
    """``postgres:db@host:port``: what messages and reports call the source (never a password),
    followed by ``?schema=NAME`` when the URL names a schema. What the URL leaves out is what
    libpq connects to: its ``PGHOST``, ``PGPORT``, ``PGDATABASE`` (``postgresql://``, an
    empty pg_dsn, was named "(default database)@localhost" whatever server it read). A
    database that may be a password's tail (``tm:2024/Pw:S3cret@db``) is shown as ``***``."""
    hidden = database_may_be_a_password(url)
    url, schema = split_schema(url)
    user, url = _without_userinfo(url)
    parts = _split(url)
    given = {key: values[0] for key, values in parse_qs(parts.query).items()}
    first, more = _first_host(parts)
    # a socket directory is a host parameter
    where = first.hostname or given.get("host") or os.environ.get("PGHOST") or "localhost"
    port = _port(first) or given.get("port") or os.environ.get("PGPORT")
    if port:
        where += f":{port}"
    database = (
        parts.path.lstrip("/")
        or given.get("dbname")
        or _libpq_default_database(user or given.get("user"))
    )
    if hidden:
        database = "***"
    hosts = f" (+{more} more host{'s' if more > 1 else ''})" if more else ""
    return f"postgres:{database}@{where}" + (f"?schema={schema}" if schema else "") + hosts


def _without_userinfo(url: str) -> tuple[str | None, str]:
    """The URL's user name (None: not given) and the URL with its ``user:password@`` taken out,
    split where libpq splits it (at the ``@``, ``check_userinfo`` having refused a second one).
    ``urlsplit`` checks any ``[...]`` in the authority as an IPv6 host, the password's included,
    and its error quoted the bracketed part of a password libpq takes as written
    (``Pw[k9Secret]x``)."""
    scheme, mark, rest = url.partition("://")
    end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    userinfo, at, hosts = rest[:end].rpartition("@")
    if not at:
        return None, url
    return userinfo.partition(":")[0], f"{scheme}{mark}{hosts}{rest[end:]}"


def _split(url: str) -> SplitResult:
    """``urlsplit(url)``, or a ValueError that quotes nothing of the URL: urllib's errors quote
    the part they could not read ("'...' does not appear to be an IPv4 or IPv6 address", or the
    whole authority for a character NFKC turns into a '/'), which may be part of a password."""
    try:
        return urlsplit(url)
    except ValueError:
        raise ValueError(
            "its host is not a host name, an IPv4 address or an IPv6 address in brackets"
        ) from None


def _first_host(parts: SplitResult) -> tuple[SplitResult, int]:
    """The URL's first ``host:port`` and how many more it lists: libpq's failover form
    (``postgresql://db1:5432,db2:5432/app?target_session_attrs=read-write``) names several,
    tried in turn, where ``parts.port`` raised (``1,db2:5432`` is no number) and the CLI refused
    a URL the sink writes through. A port that is not a number, in any of them, is a ValueError."""
    listed = parts.netloc.rpartition("@")[2].split(",")
    if len(listed) == 1:
        return parts, 0
    hosts = [_split("//" + host) for host in listed]
    for host in hosts:
        _port(host)  # raises ValueError for a port that is not a number
    return hosts[0], len(hosts) - 1


def _port(parts: SplitResult) -> int | None:
    """``parts.port``, or a ValueError that quotes nothing of the URL: a password holding a
    ``/``, ``?`` or ``#`` ends the authority early and ``user:HEAD`` reads as host and port, so
    urllib's "Port could not be cast to integer value as 'HEAD'" printed the password's head."""
    try:
        return parts.port
    except ValueError as exc:
        if "out of range" in str(exc):  # "Port out of range 0-65535": nothing of the URL
            raise
        raise ValueError(
            "its port is not a number (a '/', '?', '#' or '@' in a password must be "
            "percent-encoded)"
        ) from None


def _libpq_default_database(user: str | None) -> str:
    """The database libpq connects to when none is named: ``PGDATABASE``, else the user's name
    (``PGUSER``, else the login name)."""
    database = os.environ.get("PGDATABASE") or user or os.environ.get("PGUSER")
    if database:
        return database
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name to be found (a container's bare uid)
        return "(default database)"


def is_postgres(conn: object) -> TypeGuard[PgConnection]:
    return isinstance(conn, PgConnection)


class _Row(Sequence[Any]):
    """A row readable as ``sqlite3.Row`` is: by position, by column name, ``keys()``, ``dict()``."""

    __slots__ = ("_names", "_values")

    def __init__(self, names: dict[str, int], values: tuple[Any, ...]) -> None:
        self._names = names
        self._values = values

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return self._values[self._names[key]]
        return self._values[key]

    def __len__(self) -> int:
        return len(self._values)

    def keys(self) -> list[str]:
        return list(self._names)


def _columns(cursor: Any) -> dict[str, int]:
    """Each column name's place in a psycopg cursor's rows (the first, if a name is twice)."""
    names = [column.name for column in cursor.description or ()]
    return {name: i for i, name in reversed(list(enumerate(names)))}


class _Cursor:
    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor
        self._names = _columns(cursor)

    def _rows(self, rows: list[tuple[Any, ...]]) -> list[_Row]:
        return [_Row(self._names, row) for row in rows]

    def fetchone(self) -> _Row | None:
        row = _call(self._cursor.fetchone)
        return None if row is None else _Row(self._names, row)

    def fetchmany(self, size: int) -> list[_Row]:
        return self._rows(_call(self._cursor.fetchmany, size))

    def fetchall(self) -> list[_Row]:
        return self._rows(_call(self._cursor.fetchall))

    def __iter__(self) -> Iterator[_Row]:
        while rows := self.fetchmany(1000):
            yield from rows

    def close(self) -> None:
        self._cursor.close()


def _call(function: Any, *args: Any) -> Any:
    import psycopg

    try:
        return function(*args)
    except psycopg.Error as exc:
        raise sqlite3.DatabaseError(str(exc).strip().splitlines()[0]) from None


def _connect(psycopg: Any, url: str) -> Any:
    """A connection, or an error whose message shows nothing of the URL's password (libpq quotes
    the part it cannot parse, which may be the password). It asks for UTF-8, as the sink writes:
    in a SQL_ASCII database (initdb in the C locale) psycopg would return text columns as bytes."""
    from tokenmeter.sinks.postgres import _without_password

    # The URL's connect_timeout (or PGCONNECT_TIMEOUT) is the one waited, as the sink's is.
    given = _given_connect_timeout(url) is not None
    wait = {} if given else {"connect_timeout": _DEFAULT_CONNECT_TIMEOUT_S}
    try:
        return psycopg.connect(url, autocommit=True, client_encoding="utf8", **wait)
    except UnicodeDecodeError:  # a %-escape libpq decoded is not UTF-8 (psycopg decodes it)
        raise psycopg.ProgrammingError(
            "malformed PostgreSQL connection string (a %-escaped value is not UTF-8)"
        ) from None
    except psycopg.Error as exc:
        hidden = _without_password(exc, url)
        if hidden is exc:
            raise
        raise hidden from None


class NoRecordsTable(sqlite3.OperationalError):
    """The schema has no ``records`` table: no PostgresSink has written there yet (``tail -f``
    waits for it)."""


class PgConnection:
    """A read-only connection to the sink's schema (the URL's ``schema=NAME``, else the sink's
    default) that answers the readers' SQLite SQL."""

    row_factory: Any = None  # rows always read both ways; kept for the readers that set it

    def __init__(self, url: str) -> None:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise sqlite3.OperationalError(
                "reading PostgreSQL needs psycopg 3: pip install 'tokenmeter[postgres]'"
            ) from None
        from tokenmeter.sinks.postgres import DEFAULT_SCHEMA

        self._url, schema = split_schema(url)
        self._schema = schema or DEFAULT_SCHEMA
        self._safe_json = False  # pg_temp.tokenmeter_jsonb made for the connection
        self._text_timestamp = True  # records.timestamp reads as the sink's text
        self._as_written: dict[str, str] = {}  # table -> its SELECT as the sink's text
        self._conn = self._open()
        self._snapshot = False  # inside the readers' BEGIN: a statement is never run elsewhere

    def _open(self) -> Any:
        import psycopg

        conn = _call(lambda: _connect(psycopg, self._url))
        _call(conn.execute, f'SET search_path = "{self._schema}"'.encode())
        self._safe_json = _made_safe_json(conn)
        types = _column_types(conn)
        self._as_written = _as_written(types)
        self._text_timestamp = _timestamp_is_text(types)
        _call(conn.execute, b"SET default_transaction_read_only = on")
        found = _call(conn.execute, b"SELECT to_regclass('records') IS NOT NULL").fetchone()
        if not found[0]:
            conn.close()
            raise NoRecordsTable(
                f"no tokenmeter records in schema {self._schema!r} "
                "(has a PostgresSink written here?)"
            )
        return conn

    def valid_tags(self, prefix: str = "") -> str | None:
        """The condition a row's ``tags`` meets when they are a JSON object or NULL (as
        ``sql_valid`` states for SQLite), never NULL (its NOT counts the others); None where it
        cannot be checked."""
        if not self._safe_json:
            return None
        c = f"{prefix}tags"
        return (
            f"({c} IS NULL OR {c}::text = '{{}}' "
            f"OR jsonb_typeof(pg_temp.tokenmeter_jsonb({c}::text)) IS NOT DISTINCT FROM 'object')"
        )

    def sound_rows(self, prefix: str = "") -> str:
        """The condition a ``records`` row meets when the columns the report totals read hold
        what the sink writes (``sql_valid``'s for SQLite, as far as the typed columns leave it
        open): the timestamp in the record format, counts not negative, ``cost_pusd`` there
        exactly when the cost text is, and that text plain digits; tags as ``valid_tags``
        says. Never NULL (its NOT counts the others)."""
        parts = [f"({prefix}{name} >= 0 OR {prefix}{name} IS NULL)" for name in COUNT_FIELDS]
        if self._text_timestamp:  # else typed (an admin's timestamptz): always a time
            parts.append(f"{prefix}timestamp ~ {_RECORD_TIMESTAMP}")
        cost, text = f"{prefix}cost_pusd", f"{prefix}estimated_cost_usd"
        parts.append(
            f"CASE WHEN {cost} IS NULL THEN {text} IS NULL "
            f"ELSE {text} IS NOT NULL AND {text}::text !~ '[^0-9.-]' END"
        )
        if (tags := self.valid_tags(prefix)) is not None:
            parts.append(tags)
        return f"COALESCE({' AND '.join(parts)}, false)"

    def set_progress_handler(self, handler: Any, n: int) -> None:
        """No progress ticks: the server aggregates, the client only waits."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Cursor:
        if sql.strip().upper() == "BEGIN":
            sql = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
            self._snapshot = True
        translated, values = _translate(sql, list(params), self._safe_json, self._as_written)
        try:
            return self._run(translated, values)
        except sqlite3.DatabaseError:
            if self._snapshot or not self._conn.broken:
                raise
        # The server restarted or ended the connection since the last statement (tail -f polls
        # for hours): once more on a new one, made as soon as the server is back (a restart or
        # a failover takes a moment). Never inside a snapshot, which it would split.
        self._conn.close()
        for wait in _RECONNECT_WAITS:
            time.sleep(wait)
            try:
                self._conn = self._open()
                break
            except sqlite3.DatabaseError:
                if wait == _RECONNECT_WAITS[-1]:
                    raise
        return self._run(translated, values)

    def _run(self, sql: str, values: list[Any]) -> _Cursor:
        cursor = self._conn.cursor()
        _call(cursor.execute, sql.encode(), values)
        return _Cursor(cursor)

    def stream(self, sql: str, params: Sequence[Any] = ()) -> Iterator[_Row]:
        """The rows of a query as the server sends them, one at a time: a client cursor holds
        every row of the answer at once (``report --detailed --limit 0``: millions of rows).
        Inside the readers' snapshot; nothing else runs on the connection until it is read."""
        import psycopg

        translated, values = _translate(sql, list(params), self._safe_json, self._as_written)
        cursor = self._conn.cursor()
        names: dict[str, int] | None = None
        try:
            for row in cursor.stream(translated.encode(), values):
                if names is None:
                    names = _columns(cursor)
                yield _Row(names, row)
        except psycopg.Error as exc:
            raise sqlite3.DatabaseError(str(exc).strip().splitlines()[0]) from None

    def close(self) -> None:
        self._conn.close()


def _made_safe_json(conn: Any) -> bool:
    """Whether ``pg_temp.tokenmeter_jsonb`` could be made on ``conn`` (see ``_SAFE_JSONB``)."""
    import psycopg

    try:
        conn.execute(_SAFE_JSONB.encode())
    except psycopg.Error:
        return False
    return True


#: The types of the columns of ``records`` and ``sessions``: table -> [(column, type)].
_ColumnTypes = dict[str, list[tuple[str, str]]]


def _column_types(conn: Any) -> _ColumnTypes:
    """The columns of the schema's ``records`` and ``sessions`` and their types, as the
    server's catalogue (readable by any role, on a standby too) says them."""
    found = conn.execute(
        b"SELECT table_name, column_name, data_type FROM information_schema.columns "
        b"WHERE table_schema = current_schema() AND table_name IN ('records', 'sessions') "
        b"ORDER BY table_name, ordinal_position"
    ).fetchall()
    tables: _ColumnTypes = {}
    for table, column, kind in found:
        tables.setdefault(table, []).append((column, kind))
    return tables


def _timestamp_is_text(types: _ColumnTypes) -> bool:
    """Whether ``records.timestamp`` reads as text: the sink's column, or an admin's
    ``timestamptz`` that ``_as_written`` shows as it; not another time type."""
    kind = dict(types.get("records", [])).get("timestamp")
    return kind is None or kind == "text" or kind in _AS_TEXT


#: Column types an admin may give the sink's text columns (team.md: the sink writes the same
#: values to them), and how each reads back as the text the sink writes to its own columns.
_AS_TEXT = {
    "timestamp with time zone": "to_char({c} AT TIME ZONE 'UTC', {iso})",
    "timestamp without time zone": "to_char({c}, {iso})",
    "jsonb": "{c}::text",
    "json": "{c}::text",
}
_ISO = """'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'"""


def _as_written(types: _ColumnTypes) -> dict[str, str]:
    """For each table whose column types an admin changed (``tags`` made ``jsonb``,
    ``timestamp`` made ``timestamptz``), a SELECT of it showing those columns as the sink's
    text, which ``_translate`` reads in the table's place: the readers, written for that text,
    got a datetime or a dict, and ``substr(timestamp, ...)`` failed. A subquery, not a temporary
    view: a role without the ``TEMPORARY`` privilege, or a read-only standby, could make no
    view, and every row read as corrupt there (``sessions`` failed on a datetime)."""
    selects = {}
    for table, columns in types.items():
        if not any(kind in _AS_TEXT for _, kind in columns):
            continue
        shown = ", ".join(
            _AS_TEXT[kind].format(c=f'"{column}"', iso=_ISO) + f' AS "{column}"'
            if kind in _AS_TEXT
            else f'"{column}"'
            for column, kind in columns
        )
        selects[table] = f"SELECT {shown} FROM {table}"
    return selects


#: A table the readers read (``FROM records``, ``JOIN sessions s``), with its alias if it has
#: one: the readers write SQL keywords in capitals, aliases in small letters.
_TABLE_READ = re.compile(r"\b(FROM|JOIN)\s+(records|sessions)\b(?:\s+([a-z_][a-z0-9_]*)\b)?")


def _read_as_written(sql: str, as_written: dict[str, str]) -> str:
    """``sql`` reading each table of ``as_written`` through its SELECT (``_as_written``)."""

    def read(match: re.Match[str]) -> str:
        keyword, table, alias = match.groups()
        if table not in as_written:
            return match.group()
        return f"{keyword} ({as_written[table]}) AS {alias or table}"

    return _TABLE_READ.sub(read, sql) if as_written else sql


def _translate(
    sql: str,
    params: list[Any],
    safe_json: bool = False,
    as_written: dict[str, str] | None = None,
) -> tuple[str, list[Any]]:
    """SQLite's spelling of a reader's query -> PostgreSQL's, parameters adjusted to match.
    ``safe_json``: tags are read through ``pg_temp.tokenmeter_jsonb``, not a cast that fails;
    ``as_written``: the tables read through a SELECT (``_as_written``)."""
    sql = sql.replace("%", "%%").replace(_TABLE_LOOKUP, _PG_TABLE_LOOKUP)
    sql = _ROWID.sub("seq", sql)
    sql = _JSON_GUARD.sub(r"\1", sql)
    paths: set[int] = set()  # parameters that are SQLite JSON paths
    for match in _JSON_EXTRACT.finditer(sql):
        paths.add(sql.count("?", 0, match.start()))
    jsonb = r"pg_temp.tokenmeter_jsonb(\1::text)" if safe_json else r"\1::jsonb"
    sql = _JSON_EXTRACT.sub(rf"({jsonb} ->> ?)", sql)
    sql = _JSON_EACH.sub(rf"jsonb_each_text({jsonb})", sql)
    sql = _NUMBER_TYPE.sub(r"\1 IS NOT NULL", sql)
    for index in paths:
        found = _JSON_PATH.match(str(params[index]))
        if found:  # the member name is a JSON string (``tag_path``)
            params[index] = json.loads(str(params[index])[2:])
    if re.search(r"LIMIT \?\s*$", sql) and params and params[-1] == -1:
        params[-1] = None  # LIMIT NULL: no limit
    sql = _read_as_written(sql, as_written or {})
    return sql.replace("?", "%s"), params
