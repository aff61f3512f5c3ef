"""``tokenmeter tail [-f]``: the latest records, then (with -f) each new one as it arrives.

Following polls: SQLite by ``rowid`` (insertion order, so a late batch with older timestamps is
still shown), JSONL by byte offset (only complete lines; without ``-f`` the file is finished, and
a last line without its newline is read too). A JSONL file truncated, replaced, rewritten in
place, or renamed away (a log rotation: the gap until the sink makes it again is waited for), a
``usage.db`` replaced (moved away, and made again by the library), and a ``records`` table
dropped and made again (its rowids start over), are read again from the start: the follower
checks that the file is the one it opened, and that the bytes before its offset, or the row at
its rowid, are still the ones it read. Records that fail the record check, and JSONL lines longer
than ``MAX_LINE_BYTES``, are skipped and counted, with one warning at the end. Ctrl-C ends it
quietly with status 0.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from tokenmeter.cli._errors import CliError, NoSourceYet, NoTablesYet
from tokenmeter.cli._output import one_line, stdout_failed
from tokenmeter.cli._source import (
    MAX_LINE_BYTES,
    RecentIds,
    Source,
    is_too_long,
    open_database,
    parse_record,
    resolve_source,
    skip_rest_of_line,
    warn_skipped,
)
from tokenmeter.cli._validate import BadRecord, record_from_row
from tokenmeter.cli.reports._format import dumps_exact, fmt_int, fmt_usd
from tokenmeter.cli.reports._model import Call
from tokenmeter.cli.reports._query import calls_from_rows

__all__ = ["format_call_line", "run_tail"]


def format_call_line(call: Call) -> str:
    """One line a call, whatever its text holds (``one_line``)."""
    session = call.session_name or call.session_id or "-"
    status = call.status if not call.error else f"{call.status}:{call.error}"
    return one_line(
        f"{call.timestamp}  {call.provider}/{call.model}  in={fmt_int(call.input_tokens)} "
        f"out={fmt_int(call.output_tokens)} total={fmt_int(call.total_tokens)}  "
        f"{fmt_usd(call.cost)}  session={session}  {status}"
    )


def _colour_console() -> Any:
    """A rich Console when stdout is a terminal and rich is installed (NO_COLOR is honoured)."""
    if not sys.stdout.isatty():
        return None
    try:
        from rich.console import Console
    except ImportError:
        return None
    return Console(highlight=False, soft_wrap=True)


def _styled(call: Call) -> Any:
    """The same text as ``format_call_line``, with the parts a reader scans for in colour."""
    from rich.text import Text

    session = call.session_name or call.session_id or "-"
    status = call.status if not call.error else f"{call.status}:{call.error}"
    text = Text()
    text.append(one_line(call.timestamp), style="dim")
    text.append("  ")
    text.append(one_line(f"{call.provider}/{call.model}"), style="cyan")
    text.append(
        f"  in={fmt_int(call.input_tokens)} out={fmt_int(call.output_tokens)} "
        f"total={fmt_int(call.total_tokens)}  "
    )
    text.append(fmt_usd(call.cost), style="green")
    text.append(one_line(f"  session={session}  "))
    text.append(one_line(status), style="bold red" if call.status != "ok" else "")
    return text


def _emit(calls: Iterable[Call], as_json: bool, console: Any = None) -> None:
    try:
        _print_calls(calls, as_json, console)
    except BrokenPipeError:
        raise
    except OSError as exc:  # a full disk under ``tail -f > file``
        raise stdout_failed(exc) from None


def _print_calls(calls: Iterable[Call], as_json: bool, console: Any) -> None:
    for call in calls:
        if as_json:
            print(dumps_exact(call.as_json(), indent=0).replace("\n", ""), flush=True)
        elif console is not None:
            console.print(_styled(call))
            sys.stdout.flush()
        else:
            print(format_call_line(call), flush=True)


#: Rows read at a time past ``_HELD``.
_PAGE = 256
#: The lowest and highest rowids SQLite allows (another program may have inserted rows with
#: negative ones).
_LOWEST, _HIGHEST = -(1 << 63), (1 << 63) - 1
#: Past this many records, ``tail -n`` first finds where they begin, then reads them from there
#: as it prints them: it held them all (about 2 KB a record read from SQLite, 5 KB from JSONL;
#: ``-n 1000000`` over a large store ran out of memory).
_HELD = 10_000


def _row_id(row: sqlite3.Row) -> Any:
    """The record id of a row (None in a table of another schema, without one)."""
    return row["id"] if "id" in row.keys() else None  # noqa: SIM118  (a Row holds values)


def _file_id(source: Source) -> tuple[int, int] | None:
    """The (device, inode) of a SQLite source's file; None for PostgreSQL or no file there."""
    if source.kind != "sqlite":
        return None
    try:
        info = os.stat(source.path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


class _SqliteFollower:
    def __init__(self, source: Source) -> None:
        self.source = source
        self.path = source.path
        #: The file opened, taken before it is: one replaced in between is read again, not lost.
        self.file_id = _file_id(source)
        self.conn = open_database(source)
        self.conn.row_factory = sqlite3.Row
        self.last_rowid = 0
        #: The id of the row at ``last_rowid``: another one there means the table was made again.
        self.last_id: Any = None
        self.skipped = 0

    def _reopen_if_replaced(self) -> None:
        """Open the file the path names now, if it is not the one opened (``usage.db`` moved
        away or deleted, and made again by the library): the open connection read the old
        file forever, and nothing new was shown. The new one is read from its start; until it
        has its ``records`` table (the writer is at it), the old one is followed."""
        now = _file_id(self.source)
        if now is None or now == self.file_id:
            return
        try:
            conn = open_database(self.source)
        except CliError:
            return
        self.conn.close()
        self.conn, self.file_id = conn, now
        self.conn.row_factory = sqlite3.Row
        self.last_rowid, self.last_id = 0, None

    def _still_there(self) -> bool:
        """Whether the row at ``last_rowid`` is the one read (not a table dropped and made again,
        whose rowids start over: following on would skip its rows up to the old rowid)."""
        if not self.last_rowid:
            return True
        row = self.conn.execute("SELECT * FROM records WHERE rowid = ?", [self.last_rowid])
        found = row.fetchone()
        return found is not None and _row_id(found) == self.last_id

    def _pages(self, low: int, high: int, newest_first: bool, size: int) -> Iterator[list[Any]]:
        """The rows from rowid ``low`` to ``high``, ``size`` at a time, each page a query of its
        own that starts past the last row read. One query over them all would be held whole
        by PostgreSQL's client cursor (``tail -n 5`` of a ledger of millions of rows fetched
        them all); SQLite walks its rowids either way."""
        order = "DESC" if newest_first else "ASC"
        while low <= high:
            rows = self.conn.execute(
                "SELECT rowid AS _rowid, * FROM records WHERE rowid >= ? AND rowid <= ? "
                f"ORDER BY rowid {order} LIMIT ?",
                [low, high, size],
            ).fetchall()
            if rows:
                yield rows
            if len(rows) < size:
                return
            edge = int(rows[-1]["_rowid"])
            low, high = (low, edge - 1) if newest_first else (edge + 1, high)

    def last(self, count: int) -> Iterable[Call]:
        """The latest ``count`` good records: bad rows on the way are skipped, not shown."""
        top = self.conn.execute(
            "SELECT rowid AS _rowid, * FROM records ORDER BY rowid DESC LIMIT 1"
        ).fetchone()
        if top is not None:
            self.last_rowid, self.last_id = int(top["_rowid"]), _row_id(top)
        if count > _HELD:
            return self._forward(self._start_of_newest(count))
        newest_first: list[Call] = []
        for rows in self._pages(_LOWEST, self.last_rowid, True, max(count, 64)):
            calls, refused = calls_from_rows(rows)
            self.skipped += refused
            newest_first += calls
            if len(newest_first) >= count:
                break
        return newest_first[:count][::-1]

    def _start_of_newest(self, count: int) -> int:
        """The rowid of the oldest of the newest ``count`` good rows (``_LOWEST`` when fewer),
        found by checking the rows newest first, keeping none."""
        good = 0
        for rows in self._pages(_LOWEST, self.last_rowid, True, _PAGE):
            for row in rows:
                try:
                    record_from_row(row)
                except BadRecord:
                    continue
                good += 1
                if good == count:
                    return int(row["_rowid"])
        return _LOWEST

    def _forward(self, start: int) -> Iterator[Call]:
        """The good records from rowid ``start`` to the newest one seen, a page at a time (each
        printed before the next is read)."""
        for rows in self._pages(start, self.last_rowid, False, _PAGE):
            calls, refused = calls_from_rows(rows)
            self.skipped += refused
            yield from calls

    def new(self) -> Iterator[Call]:
        """The records stored since the last read, a page at a time (a table made again and
        filled meanwhile, or a file made again, is read from its start)."""
        self._reopen_if_replaced()
        if not self._still_there():
            self.last_rowid = 0
        for rows in self._pages(self.last_rowid + 1, _HIGHEST, False, _PAGE):
            self.last_rowid, self.last_id = int(rows[-1]["_rowid"]), _row_id(rows[-1])
            calls, refused = calls_from_rows(rows)
            self.skipped += refused
            yield from calls

    def close(self) -> None:
        self.conn.close()
        warn_skipped(self.skipped, self.path, "row")


#: Bytes before the offset that a JSONL follower checks are still there at its next poll.
_SEEN_BYTES = 64
#: Bytes read at a time when looking for the start of the last lines.
_BLOCK = 1 << 16


class _JsonlFollower:
    def __init__(self, path: Path, *, finished: bool = False) -> None:
        self.path = path
        #: The file is read once, not followed (``tail`` without ``-f``): a last line without its
        #: newline is a record another tool wrote so (a report counts it), not one being written.
        self.finished = finished
        self.offset = 0
        self.skipped = 0
        self.in_long_line = False  # the offset is inside a too-long line not yet ended
        #: The file read (device, inode) and its last bytes before ``offset``.
        self.file_id = (0, 0)
        self.seen = b""
        #: The file is gone (renamed away by a log rotation) and the wait was said on stderr.
        self.said_gone = False
        #: The ids of the records last read: a record written twice (two JSONL sinks on one
        #: path) is printed once, as a report counts it once.
        self.recent = RecentIds()

    def _same_file(self, handle: BinaryIO, offset: int) -> bool:
        """Whether ``offset`` still follows what was read: the same file, no shorter, with the
        same bytes before it (a file rewritten in place, even larger, is read again)."""
        info = os.fstat(handle.fileno())
        if (info.st_dev, info.st_ino) != self.file_id or info.st_size < offset:
            return False
        handle.seek(offset - len(self.seen))
        return handle.read(len(self.seen)) == self.seen

    def _records_from(
        self, offset: int, followed: bool = True, until: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """The complete records after ``offset``, read as they are taken, but those whose id is
        among ``self.recent``'s (a record written twice); ``self.offset`` is where reading ended
        once they all are. ``followed``: ``offset`` is where the last read ended (checked: the
        file may have been replaced since), not a line's start found by ``_start_of_last``.
        ``until``: stop at that offset (lines appended since are not read)."""
        try:
            with self.path.open("rb") as handle:
                if not followed or (offset and not self._same_file(handle, offset)):
                    # A line's start (found, or the file's when read again from there).
                    offset = offset if not followed else 0
                    self.in_long_line = False
                handle.seek(offset)
                while until is None or offset < until:
                    if self.in_long_line:
                        skipped, ended = skip_rest_of_line(handle)
                        offset += skipped
                        if not ended and not self.finished:
                            break  # still being written: read past the rest next time
                        # Ended, or the file's last line without its newline (read once, it
                        # will not be: a report counts it skipped too).
                        self.in_long_line = False
                        self.skipped += 1
                        if not ended:
                            break
                    line = handle.readline(MAX_LINE_BYTES + 1)
                    if is_too_long(line):
                        offset += len(line)
                        self.in_long_line = True
                        continue
                    if not line.endswith(b"\n") and not (self.finished and line):
                        break  # a line still being written: read it next time
                    offset += len(line)
                    record = parse_record(line)
                    if record is None:
                        if line.strip():
                            self.skipped += 1
                    elif not self.recent.seen(record.get("id")):
                        yield record
                info = os.fstat(handle.fileno())
                self.file_id = (info.st_dev, info.st_ino)
                handle.seek(offset - min(offset, _SEEN_BYTES))
                self.seen = handle.read(min(offset, _SEEN_BYTES))
                self.offset = offset
                self.said_gone = False
        except FileNotFoundError as exc:
            if not followed:
                raise CliError(f"cannot read {self.path}: {exc.strerror or exc}") from None
            self._wait_while_gone()
        except OSError as exc:
            raise CliError(f"cannot read {self.path}: {exc.strerror or exc}") from None

    def _wait_while_gone(self) -> None:
        """The file was renamed away (a log rotation) or deleted: the sink makes it again at its
        next record, so it is waited for, as ``-f`` waits for it at its start; nothing new yet.
        The file made again is another inode, so ``_same_file`` has it read from its start."""
        if not self.said_gone:
            print(f"tokenmeter tail: {self.path} is gone; waiting for it", file=sys.stderr)
            self.said_gone = True

    def last(self, count: int) -> Iterable[Call]:
        """The last ``count`` records, read from near the end: reading the whole file took 15 s
        to show ten lines of a million. Corrupt lines among them make it look further back.
        Past ``_HELD`` records, they are counted first and read again as they are printed."""
        lines, skipped = count + 16, self.skipped
        while True:
            start = self._start_of_last(lines)
            self.skipped = skipped  # what an earlier try skipped is read again
            self.recent = RecentIds()  # and the ids it read
            if count <= _HELD:
                records = deque(self._records_from(start, followed=False), maxlen=count)
                if len(records) >= count or start == 0:
                    return [Call.from_json(record) for record in records]
            else:
                found = sum(1 for _ in self._records_from(start, followed=False))
                if found >= count or start == 0:
                    self.skipped = skipped  # counted again as they are read
                    return self._forward(start, found - count, self.offset)
            lines *= 4

    def _forward(self, start: int, skip: int, until: int) -> Iterator[Call]:
        """The records from ``start`` to ``until`` but the first ``skip`` of them (the ids are
        read again too: the same copies are left out as when the records were counted)."""
        self.recent = RecentIds()
        for index, record in enumerate(self._records_from(start, followed=False, until=until)):
            if index >= skip:
                yield Call.from_json(record)

    def _start_of_last(self, lines: int) -> int:
        """Where the last ``lines`` complete lines begin (0 when the file has fewer), found by
        reading backwards from the end in blocks."""
        try:
            with self.path.open("rb") as handle:
                position, found = handle.seek(0, os.SEEK_END), 0
                while position > 0:
                    size = min(_BLOCK, position)
                    position -= size
                    handle.seek(position)
                    block = handle.read(size)
                    index = len(block)
                    while (index := block.rfind(b"\n", 0, index)) >= 0:
                        found += 1  # the first ends the last line: one more marks the start
                        if found > lines:
                            return position + index + 1
        except OSError as exc:
            raise CliError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        return 0

    def new(self) -> list[Call]:
        return [Call.from_json(record) for record in self._records_from(self.offset)]

    def close(self) -> None:
        warn_skipped(self.skipped, self.path)


def _follower(source: Source, *, finished: bool = False) -> _SqliteFollower | _JsonlFollower:
    """The reader of ``source``; ``finished``: read once, not followed (see ``_JsonlFollower``)."""
    if source.kind == "jsonl":
        return _JsonlFollower(source.path, finished=finished)
    return _SqliteFollower(source)


def _recorded_source(given: str | None) -> Source:
    """The source to follow; ``NoSourceYet`` while nothing is recorded there yet, including a
    ``usage.db`` the SQLite sink has made but not written its tables into (its first
    connection makes the file, then the schema: polled in between, it has no table at all), and
    a PostgreSQL schema the sink has not made its tables in yet."""
    source = resolve_source(given)
    if source.kind != "jsonl":
        try:
            open_database(source).close()
        except NoTablesYet:
            raise NoSourceYet(f"no records in {source.path} yet") from None
    return source


def _when_recorded(
    args: argparse.Namespace,
) -> tuple[_SqliteFollower | _JsonlFollower, bool] | None:
    """``-f`` started before anything was recorded (tail in one terminal, then the application
    in another) waits for the store, as ``tail -F`` does; None once Ctrl-C ends the wait. With
    the follower, whether it had to wait: then all the store holds was written since tail
    began, and is new to the reader."""
    said = False
    try:
        while True:
            try:
                return _follower(_recorded_source(args.source)), said
            except NoSourceYet as exc:
                if not said:
                    print(f"tokenmeter tail: {exc}; waiting for the first record", file=sys.stderr)
                    said = True
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return None


def run_tail(args: argparse.Namespace) -> int:
    waited = False
    if args.follow:
        found = _when_recorded(args)
        if found is None:
            return 0
        follower, waited = found
    else:
        follower = _follower(resolve_source(args.source), finished=True)
    source_path = follower.path
    as_json = args.format == "json"
    console = None if as_json else _colour_console()
    try:
        try:  # the latest records, printed as they are read
            # A store waited for holds only records written since tail began: all are shown
            # (cut to the last -n, a first batch larger than that lost its first records).
            first = follower.new() if waited else follower.last(args.lines)
            _emit(first, as_json, console)
        except sqlite3.Error as exc:
            raise CliError(f"cannot read {source_path}: {exc}") from None
        while args.follow:
            time.sleep(args.interval)
            try:
                _emit(follower.new(), as_json, console)
            except sqlite3.Error as exc:
                raise CliError(f"cannot read {source_path}: {exc}") from None
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        sys.stderr.close()  # the reader went away (| head): nothing more to say
    finally:
        follower.close()
    return 0
