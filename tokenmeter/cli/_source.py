"""Find and open the usage data a command reads: a SQLite database, a JSONL file, or the
PostgreSQL sink's tables (``postgresql://`` URL, read through ``_postgres``).

The CLI only ever reads. SQLite is opened read-only through a ``mode=ro`` URI so a report can run
while an application is writing; JSONL is streamed line by line and a corrupt line (a writer killed
mid-line, garbage, a record with wrong types, a line longer than ``MAX_LINE_BYTES``) is skipped and
counted, never fatal. Lines are read with a bound, so a runaway line costs no more memory than one
of ``MAX_LINE_BYTES``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, Protocol
from urllib.parse import quote

from tokenmeter._format import one_line
from tokenmeter.cli._dates import format_instant
from tokenmeter.cli._errors import CliError, NoSourceYet, NoTablesYet
from tokenmeter.cli._postgres import (
    NoRecordsTable,
    PgConnection,
    display_name,
    is_postgres_url,
    keyword_dsn_url,
    refuse_unparsed_dsn,
)
from tokenmeter.cli._validate import BadRecord, check_record
from tokenmeter.cli.reports._sql import EXACT_SUM, ExactSum

if TYPE_CHECKING:
    from tokenmeter._config import Settings

__all__ = [
    "DEMO_DIR",
    "DEMO_STATE_FILE",
    "MAX_LINE_BYTES",
    "SAME_ID_WINDOW",
    "SQLITE_MAGIC",
    "JsonlReader",
    "RecentIds",
    "Source",
    "default_source_path",
    "first_line",
    "is_too_long",
    "line_start_after",
    "open_database",
    "open_sqlite",
    "parse_record",
    "postgres_written",
    "refuse_special_file",
    "resolve_source",
    "skip_rest_of_line",
    "table_columns",
    "warn_set_aside",
    "warn_skipped",
    "written_file",
]

#: How a SQLite database file begins.
SQLITE_MAGIC = b"SQLite format 3\x00"
#: Where ``tokenmeter demo`` records (``_demo``): named when a first run looks for the default.
DEMO_DIR = ".tokenmeter-demo"
#: The demo's workflow state file in its directory, when the settings name one.
DEMO_STATE_FILE = "workflow_state.md"
_SQLITE_SUFFIXES = {".db", ".sqlite", ".sqlite3"}
_JSONL_SUFFIXES = {".jsonl", ".ndjson", ".json", ".log"}


def _settings() -> Settings:
    """The library's settings, as it reads them; a bad one is the CLI's error, naming it."""
    from tokenmeter._config import load_settings

    try:
        return load_settings()
    except ValueError as exc:  # a bad setting: say which, as the library would
        raise CliError(str(exc), exit_code=2) from None


def default_directory() -> Path:
    """Where the library writes, by the same settings it reads: ``TOKENMETER_DIR``, else
    ``[tool.tokenmeter] directory`` of the nearest pyproject.toml, else ``.tokenmeter``."""
    return _settings().directory


def postgres_written() -> str | None:
    """The ``pg_dsn`` setting when the ``sinks`` setting writes the records to PostgreSQL and
    to no file the CLI reads: a project that moved from the default sqlite sink keeps its old
    usage.db, which holds none of the calls since. A keyword DSN (``host=... dbname=...``), as
    the sink takes it, is turned into a URL; an empty one is ``postgresql://``, which libpq
    fills from ``PGHOST``, ``PGDATABASE``... as it does for the sink (docs/team.md). CliError
    when the DSN is neither: the setting is named, not where it came from (environment,
    pyproject.toml or ``configure()``)."""
    settings = _settings()
    sinks = settings.sinks
    if "postgres" not in sinks or "sqlite" in sinks or "jsonl" in sinks:
        return None
    if not settings.pg_dsn.strip():
        return "postgresql://"
    url = settings.pg_dsn if is_postgres_url(settings.pg_dsn) else keyword_dsn_url(settings.pg_dsn)
    if url is None:
        raise CliError(
            "the sinks setting writes the records to PostgreSQL: pass --source "
            "postgresql://... to read them (the pg_dsn setting is neither such a URL nor a "
            "key=value DSN the CLI can read)",
            exit_code=2,
        )
    return url


def default_source_path() -> Path:
    """Where the library writes its records: the usage.jsonl of ``default_directory()`` when
    the ``sinks`` setting names jsonl and not sqlite, else its usage.db (its usage.jsonl when
    only that exists).

    The setting comes first: a project that moved from the default sqlite sink to jsonl keeps
    its old usage.db, and reading that would leave every call since out of the report.
    """
    settings = _settings()
    return written_file(settings.directory, settings.sinks)


def written_file(directory: Path, sinks: Sequence[str]) -> Path:
    """The usage.jsonl of ``directory`` when ``sinks`` names jsonl and not sqlite, else its
    usage.db (its usage.jsonl when only that exists): see ``default_source_path``."""
    if "jsonl" in sinks and "sqlite" not in sinks:
        return directory / "usage.jsonl"
    if not (directory / "usage.db").exists() and (directory / "usage.jsonl").is_file():
        return directory / "usage.jsonl"
    return directory / "usage.db"


def _file_in_directory(directory: Path) -> Path:
    """The usage.db or usage.jsonl of a directory given as ``--source``; when it holds both,
    the one the ``sinks`` setting writes, by the rule of ``default_source_path``: naming the
    configured directory must not bring back the usage.db a move to jsonl left behind.

    A source named is read whatever the other settings say: when they cannot be read (a typo
    in a setting the CLI never uses), the usage.db, with a warning, not the settings' error."""
    database, jsonl = directory / "usage.db", directory / "usage.jsonl"
    if database.is_file() and jsonl.is_file():
        try:
            sinks = _settings().sinks
        except CliError as exc:
            print(f"tokenmeter: warning: {exc}; reading {database}", file=sys.stderr)
            return database
        return written_file(directory, sinks)
    if database.is_file():
        return database
    if jsonl.is_file():
        return jsonl
    raise NoSourceYet(f"no usage.db or usage.jsonl in directory {directory}")


@dataclass(frozen=True)
class Source:
    #: The file; for PostgreSQL, a display name (``postgres:db@host:port``, no password).
    path: Path
    kind: Literal["sqlite", "jsonl", "postgres"]
    #: The connection URL of a PostgreSQL source.
    url: str | None = None


def resolve_source(value: str | None) -> Source:
    """Turn ``--source`` (a file, a tokenmeter directory, a ``postgresql://`` URL, or nothing)
    into a readable Source. A libpq keyword DSN (``host=... dbname=...``) that names no file is
    read as the URL it stands for."""
    if value and not is_postgres_url(value) and not os.path.lexists(value):
        value = keyword_dsn_url(value) or value
        if not is_postgres_url(value):
            refuse_unparsed_dsn(value)
    if value and is_postgres_url(value):
        from tokenmeter.sinks.postgres import check_dbname, check_userinfo

        try:
            check_userinfo(value)
            with contextlib.suppress(ImportError):  # reading it says psycopg is needed
                check_dbname(value)
            name = display_name(value)
        except ValueError as exc:  # a port out of range, a torn host: texts quoting no URL
            raise CliError(f"bad PostgreSQL URL: {exc}", exit_code=2) from None
        return Source(Path(name), "postgres", value)
    if not value:
        dsn = postgres_written()
        if dsn is not None:
            return resolve_source(dsn)
    path = Path(value) if value else default_source_path()
    try:
        path, head = _opened(path, bool(value))
    except OSError as exc:  # a name too long, a folder that may not be searched, ...
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
    suffix = path.suffix.lower()
    if head == SQLITE_MAGIC or suffix in _SQLITE_SUFFIXES:
        return Source(path, "sqlite")
    if suffix in _JSONL_SUFFIXES or head[:1] in (b"{", b""):
        _refuse_alerts_file(path)
        return Source(path, "jsonl")
    raise CliError(f"{path} is neither a tokenmeter SQLite database nor a JSONL file")


def _refuse_alerts_file(path: Path) -> None:
    """tokenmeter's ``alerts.jsonl`` (beside the data) is not a file of usage records:
    ``report --source alerts.jsonl`` printed "no calls in this period", exit 0, every alert
    counted as a corrupt line (``tail -f`` waited for records forever)."""
    lines = _first_lines(path, _LINES_LOOKED_AT)
    if not lines or not _is_alert(lines[0]) or any(_is_record(line) for line in lines):
        return  # a usage file whose first line is odd (a note, files put together) is read
    raise CliError(
        f"{path} is not a file of usage records (its first line is an alert): pass the "
        "usage.db or usage.jsonl beside it, or the directory holding them "
        "(`tokenmeter alerts` lists the alerts)"
    )


def _is_alert(line: bytes) -> bool:
    """Whether this line is one the alert sink writes (a ``rule`` and a ``time``), not a record
    (whose time is its ``timestamp``)."""
    try:
        item = json.loads(line)
    except (ValueError, RecursionError):  # also UnicodeDecodeError
        return False
    return (
        isinstance(item, dict)
        and "timestamp" not in item
        and isinstance(item.get("rule"), str)
        and isinstance(item.get("time"), str)
    )


def _is_record(line: bytes) -> bool:
    """Whether this line has the shape of a usage record (its time is its ``timestamp``)."""
    try:
        item = json.loads(line)
    except (ValueError, RecursionError):  # also UnicodeDecodeError
        return False
    return isinstance(item, dict) and "timestamp" in item


#: The lines of a JSONL source looked at to tell tokenmeter's alerts from usage records.
_LINES_LOOKED_AT = 20


def _first_lines(path: Path, count: int) -> list[bytes]:
    """The first ``count`` lines of ``path`` that are not blank."""
    found: list[bytes] = []
    for line in lines_of(JsonlReader(path)):  # left unfinished, it closes the file
        if line.strip():
            found.append(line)
            if len(found) == count:
                break
    return found


def first_line(path: Path) -> bytes | None:
    """The first line of ``path`` that is not blank, if any."""
    lines = _first_lines(path, 1)
    return lines[0] if lines else None


def _opened(path: Path, given: bool) -> tuple[Path, bytes]:
    """The file ``path`` names (its usage.db or usage.jsonl, for a directory) and its first
    bytes; CliError when there is none to read, OSError when it cannot be looked at."""
    if path.is_dir():
        path = _file_in_directory(path)
    if not path.exists():
        hint = ""
        if given:
            pass
        elif Path(DEMO_DIR, "usage.db").is_file():  # a first run's next command, after the demo
            hint = f" (the demo's records are in {DEMO_DIR}: pass --source {DEMO_DIR})"
        else:
            hint = (
                " (set TOKENMETER_DIR or pass --source FILE; `tokenmeter demo` tries it on "
                "fake calls)"
            )
        raise NoSourceYet(f"no usage data at {path}{hint}")
    refuse_special_file(path)
    with path.open("rb") as handle:
        return path, handle.read(len(SQLITE_MAGIC))


def refuse_special_file(path: Path) -> None:
    """A FIFO, a pipe (``<(zcat ...)``) or a device is not read: opening a FIFO waits for a
    writer, and a pipe's size (0) ends the read before its first line."""
    if not path.is_file():
        raise CliError(
            f"{path} is not a regular file (a pipe or a device): save it to a file and pass that"
        )


_PROGRESS_EVERY = 8192
#: Longest JSONL line read, newline excluded. A record takes well under a kilobyte, and never more
#: than this: its tags, the one field without a fixed bound, are bounded for it
#: (``_sessions.MAX_TAGS_SIZE``). A longer line is skipped and counted, and read past in
#: ``_SKIP_CHUNK`` pieces without being held.
MAX_LINE_BYTES = 1 << 20
_SKIP_CHUNK = 1 << 16
_raw_decode = json.JSONDecoder().raw_decode


def _parse_line(line: bytes) -> dict[str, Any] | None:
    """The JSON object on this line, or None when it is blank, torn or not an object.

    ``raw_decode`` skips ``json.loads``' encoding sniffing and whitespace regexes: on a million
    lines that is a quarter of the parsing time. Anything after the object must be whitespace.
    """
    try:
        text = line.decode("utf-8")
        record, end = _raw_decode(text)
    except ValueError:  # also UnicodeDecodeError and leading whitespace
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            return None
    except RecursionError:  # nested deeper than the decoder goes: not a record either
        return None
    else:
        if end != len(text) and not text[end:].isspace():
            return None
    if not isinstance(record, dict):
        return None
    if "timestamp" not in record:
        # A line of quarantine.jsonl: {"sink", "error", "record"}, the record a sink refused.
        inner = record.get("record")
        if "sink" not in record or not isinstance(inner, dict) or "timestamp" not in inner:
            return None
        return inner
    return record


def parse_record(line: bytes) -> dict[str, Any] | None:
    """The checked record on this line (see ``_validate``), or None when it is not one."""
    record = _parse_line(line)
    if record is None:
        return None
    try:
        return check_record(record)
    except BadRecord:
        return None


def is_too_long(line: bytes) -> bool:
    """Whether ``handle.readline(MAX_LINE_BYTES + 1)`` stopped at the bound, not at a newline."""
    return len(line) > MAX_LINE_BYTES and not line.endswith(b"\n")


def skip_rest_of_line(handle: BinaryIO) -> tuple[int, bool]:
    """Read past the rest of the current line in small pieces: (bytes read, newline reached)."""
    skipped = 0
    while True:
        piece = handle.readline(_SKIP_CHUNK)
        skipped += len(piece)
        if not piece:
            return skipped, False
        if piece.endswith(b"\n"):
            return skipped, True


def line_start_after(path: Path, offset: int) -> int | None:
    """Where the first line that starts after ``offset`` begins; None if none does."""
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            _, newline = skip_rest_of_line(handle)
            start = handle.tell()
            return start if newline and handle.read(1) else None
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None


def warn_skipped(count: int, path: Path, unit: str = "line") -> None:
    """The one warning line SPEC §6 asks for; silent when nothing was skipped."""
    if count:
        noun = unit if count == 1 else unit + "s"
        print(f"tokenmeter: warning: skipped {count} corrupt {noun} in {path}", file=sys.stderr)


#: Where the library sets aside, in its directory, what a sink refused (``_pipeline``).
QUARANTINE_FILE = "quarantine.jsonl"
#: Bytes of the quarantine file read to count its records: the note must cost nothing beside
#: the report (a longer file is said to hold at least the count).
_SET_ASIDE_SCAN = 16 << 20
#: A line holding a record: its ``timestamp`` key (a session set aside has none; a key, not a
#: value: a quote inside a JSON string is escaped).
_RECORD_KEY = re.compile(rb'"timestamp"\s*:')


#: The sink that writes each kind of file source, as quarantine.jsonl names it (its class).
_WRITER_OF = {"sqlite": "SQLiteSink", "jsonl": "JSONLSink"}
#: tokenmeter's own sinks, as quarantine.jsonl names them: one of them other than the source's
#: writer stored somewhere else (with ``sinks = sqlite,postgres``, usage.db has what PostgreSQL
#: refused). A line names a sink by its class alone, never by where it wrote: any other name may
#: be a project's subclass of the writer on this very file (``class Audited(SQLiteSink)``).
_OWN_SINKS = frozenset(
    {"SQLiteSink", "JSONLSink", "PostgresSink", "OTelSink", "MarkdownJournalSink", "InMemorySink"}
)
#: The sink name a quarantine line starts with (the library writes ``{"sink": "…", ...``), read
#: without parsing the line: most lines of a long file are another sink's.
_SINK_NAME = re.compile(rb'^\{"sink": "([^"\\]*)"')


def warn_set_aside(
    source: Source,
    since: datetime | None = None,
    until: datetime | None = None,
    matches: Callable[[dict[str, Any]], bool] | None = None,
) -> None:
    """Say, in one line, how many records the library set aside in the quarantine file of the
    source's directory because the sink that writes the source refused them (see
    docs/sinks.md): those are not in the source, so a report of it under-reports them in
    silence. Records another of tokenmeter's sinks refused are not counted: with two sinks
    (``sqlite,postgres``) the source has them, and adding them would count them twice. Those of
    a sink of the project's own are, named (it may write the source: ``_OWN_SINKS``). Only
    those of the report's window ``[since, until)`` that ``matches`` (its filters) count.
    Silent when there are none.
    """
    writer = _WRITER_OF.get(source.kind)
    if writer is None:  # PostgreSQL: its quarantine file is on the machines that wrote to it
        return
    path = source.path.parent / QUARANTINE_FILE
    window = (
        None if since is None else format_instant(since),
        None if until is None else format_instant(until),
    )
    count, whole, sinks = _records_set_aside(path, source.path, writer, window, matches)
    if count:
        # A sink's name is the quarantine file's text (a class of the project's, a hand-edited
        # line): shown as recorded text is, its control characters and line breaks not obeyed.
        shown = sorted(sinks, key=lambda name: (name != writer, name))
        sink = " or ".join(one_line(name) for name in shown)
        how_many = f"{count:,}" if whole else f"at least {count:,}"
        noun, verb = ("record", "is") if count == 1 and whole else ("records", "are")
        scope = "" if since is None and until is None and matches is None else " of this report's"
        if scope:
            scope += " period and filters" if matches is not None else " period"
        # A project's own sink may write the source, or somewhere else (a webhook): which, a
        # quarantine line does not say.
        missing = "not in this report" if sinks == {writer} else f"not in it if {sink} writes it"
        print(
            f"tokenmeter: note: {how_many} {noun}{scope} that {sink} refused {verb} set aside in "
            f"{path}, {missing} (--source {path} reads them, with what other sinks refused)",
            file=sys.stderr,
        )


def _records_set_aside(
    path: Path,
    source: Path,
    writer: str,
    window: tuple[str | None, str | None],
    matches: Callable[[dict[str, Any]], bool] | None,
) -> tuple[int, bool, set[str]]:
    """The records that ``writer``, or a sink that may write the source, refused in the first
    ``_SET_ASIDE_SCAN`` bytes of ``path``, within ``window`` (record-format timestamps, the
    end exclusive) and passing ``matches``; whether that was the whole file; the names of the
    sinks that refused them. (0, True, set()) when there is no such file, or it is the source
    itself."""
    since, until = window
    sinks: set[str] = set()
    try:
        if not path.is_file() or os.path.samefile(path, source):
            return 0, True, sinks
        count, budget = 0, _SET_ASIDE_SCAN
        with path.open("rb") as handle:
            while budget > 0 and (line := handle.readline(min(budget, MAX_LINE_BYTES + 1))):
                budget -= len(line)
                named = _SINK_NAME.match(line)
                name = None if named is None else named[1].decode("ascii", "replace")
                if name is not None and not _may_write(name, writer):
                    continue  # cheap: another of tokenmeter's sinks refused it
                if _RECORD_KEY.search(line) is None:
                    continue  # a session set aside
                set_aside = _set_aside_by(line, writer)
                if set_aside is None:
                    continue
                sink, record = set_aside
                timestamp = record["timestamp"]
                if (since is not None and timestamp < since) or (
                    until is not None and timestamp >= until
                ):
                    continue
                if matches is None or matches(record):
                    count += 1
                    sinks.add(sink)
            return count, not handle.read(1), sinks
    except OSError:  # unreadable: only a note is lost
        return 0, True, sinks


def _may_write(sink: str, writer: str) -> bool:
    """Whether the sink a quarantine line names may be the one that writes the source: its
    ``writer``, or a sink that is none of tokenmeter's (``_OWN_SINKS``)."""
    return sink == writer or sink not in _OWN_SINKS


def _set_aside_by(line: bytes, writer: str) -> tuple[str, dict[str, Any]] | None:
    """The sink and the checked record of a quarantine line when that sink may write the
    source (``_may_write``), else None."""
    try:
        entry = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(entry, dict):
        return None
    sink, record = entry.get("sink"), entry.get("record")
    if not isinstance(sink, str) or not _may_write(sink, writer) or not isinstance(record, dict):
        return None
    try:
        return sink, check_record(record)
    except BadRecord:
        return None


def _decode_text(data: bytes) -> str:
    """SQLite text that is not valid UTF-8 (written by something else) is shown, not fatal."""
    return data.decode("utf-8", "replace")


def open_sqlite(path: Path) -> sqlite3.Connection:
    """Open read-only and check this is a tokenmeter database (it has a ``records`` table)."""
    # The path's bytes, quoted: a name that is not UTF-8 (Latin-1 'caf\xe9') is a valid one.
    uri = f"file:{quote(os.fsencode(path.resolve()))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
        conn.text_factory = _decode_text
        conn.create_aggregate(EXACT_SUM, 1, ExactSum)  # type: ignore[arg-type]  # text out
        tables = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
    except sqlite3.Error as exc:
        raise CliError(f"cannot read {path}: {exc}") from None
    if "records" not in tables:
        conn.close()
        message = f"{path} is not a tokenmeter database (no records table)"
        raise NoTablesYet(message) if not tables else CliError(message)
    return conn


def open_database(source: Source) -> sqlite3.Connection:
    """A read-only connection to a SQL source: the SQLite file, or the PostgreSQL sink's tables
    through the dialect layer (``_postgres``), which answers the same SQL."""
    if source.kind != "postgres":
        return open_sqlite(source.path)
    assert source.url is not None
    try:
        conn: Any = PgConnection(source.url)
    except NoRecordsTable as exc:
        raise NoTablesYet(f"cannot read {source.path}: {exc}") from None
    except sqlite3.Error as exc:
        raise CliError(f"cannot read {source.path}: {exc}") from None
    return conn  # type: ignore[no-any-return]  # the sqlite3.Connection surface readers use


def table_columns(conn: sqlite3.Connection, table: str) -> set[str]:
    """The column names of ``table`` (the validity check uses only the columns there are)."""
    from tokenmeter.cli._postgres import is_postgres

    if is_postgres(conn):
        sql = (
            "SELECT ordinal_position, column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = ?"
        )
        return {str(row[1]) for row in conn.execute(sql, [table])}
    return {str(row[1]) for row in conn.execute(f"PRAGMA table_info({table})")}


#: Records a JSONL read remembers the ids of. A record whose id is among those of the records just
#: before it is one record written twice (two JSONL sinks on one path, a batch written again) and
#: counted once, as the SQLite sink keeps one row per id; remembering only these keeps memory flat.
SAME_ID_WINDOW = 20_000


class RecentIds:
    """The ids of the last ``size`` records read (None for a record without one)."""

    __slots__ = ("counts", "order", "size")

    def __init__(self, size: int | None = None) -> None:
        self.size = SAME_ID_WINDOW if size is None else size
        self.counts: dict[str, int] = {}
        self.order: deque[str | None] = deque()

    def seen(self, record_id: str | None) -> bool:
        """Whether ``record_id`` is among the remembered ids; it is then remembered as the
        latest record's. A read and its halves read in parallel (``_query``) see the same."""
        counts = self.counts
        found = record_id in counts
        if record_id is not None:
            counts[record_id] = counts.get(record_id, 0) + 1
        order = self.order
        order.append(record_id)
        if len(order) > self.size:
            oldest = order.popleft()
            if oldest is not None:
                left = counts[oldest] - 1
                if left:
                    counts[oldest] = left
                else:
                    del counts[oldest]
        return found


class LineSource(Protocol):
    """A reader of a JSONL file: where it is, who is told of progress, the lines it skipped."""

    path: Path
    on_progress: Callable[[int, int], None] | None
    skipped: int


def lines_of(reader: LineSource, start: int = 0, end: int | None = None) -> Iterator[bytes]:
    """The lines of ``reader.path``. One longer than ``MAX_LINE_BYTES`` is read past in pieces
    (never held whole) and counted in ``reader.skipped``; ``reader.on_progress(bytes_read,
    total_bytes)`` is called every few thousand lines. ``start`` and ``end`` (offsets where lines
    begin, see ``line_start_after``) read only the lines between them."""
    try:
        handle = reader.path.open("rb")
    except OSError as exc:
        raise CliError(f"cannot read {reader.path}: {exc.strerror or exc}") from None
    with handle:
        total = os.fstat(handle.fileno()).st_size if end is None else end
        if start:
            handle.seek(start)
            total -= start
        done = 0
        countdown = _PROGRESS_EVERY
        readline = handle.readline
        while done < total and (line := readline(MAX_LINE_BYTES + 1)):
            done += len(line)
            countdown -= 1
            if not countdown:
                countdown = _PROGRESS_EVERY
                if reader.on_progress is not None:
                    reader.on_progress(done, total)
            if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):  # is_too_long
                done += skip_rest_of_line(handle)[0]
                reader.skipped += 1
                continue
            yield line


@dataclass
class JsonlReader:
    """Stream checked records from a JSONL file, counting the lines that are not records; a
    record written twice (``RecentIds``) is yielded once.

    ``on_progress(bytes_read, total_bytes)`` is called every few thousand lines so a caller can
    draw a progress bar without this module knowing about terminals.
    """

    path: Path
    on_progress: Callable[[int, int], None] | None = None
    skipped: int = field(default=0, init=False)
    #: Records not yielded: their id was among the last ``SAME_ID_WINDOW`` records'.
    duplicates: int = field(default=0, init=False)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        seen = RecentIds().seen
        for line in lines_of(self):
            record = parse_record(line)
            if record is None:
                if line.strip():
                    self.skipped += 1
                continue
            if seen(record.get("id")):
                self.duplicates += 1
                continue
            yield record

    def warn_skipped(self) -> None:
        warn_skipped(self.skipped, self.path)
