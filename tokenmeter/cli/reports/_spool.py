"""The calls ``report --detailed`` lists, kept on disk when there are many of them.

``--limit 0`` lists every call of the window: a store of a million calls would otherwise hold a
million ``Call`` objects (and the record dicts they were read from) in memory at once, several
gigabytes. A ``CallSpool`` holds the first ``IN_MEMORY`` calls; past them it writes each call to
an anonymous temporary file as it is read, and reads them back one at a time while the report is
written, so memory stays flat whatever the number of calls (8 bytes a call for its place in the
file). ``tokenmeter session ID`` lists a session's calls the same way, in time order: their times
are sorted a run at a time into a second temporary file, and the runs merged as the calls are
read back, so that order costs no memory per call either.
"""

from __future__ import annotations

import heapq
import marshal
import os
import sys
import tempfile
from array import array
from collections import deque
from collections.abc import Iterator
from dataclasses import fields
from decimal import Decimal
from itertools import islice
from operator import attrgetter
from typing import IO, Any

from tokenmeter.cli._errors import CliError
from tokenmeter.cli.reports._model import Call

__all__ = ["IN_MEMORY", "CallSpool", "spooled"]

_NAMES = [field.name for field in fields(Call)]
#: A call's fields in order, kept as one ``marshal`` value: the fastest of the standard
#: serialisations, for plain values only (the cost and its parts go as exact decimal text).
_values_of = attrgetter(*_NAMES)
_COST = _NAMES.index("cost")
_PARTS = _NAMES.index("cost_breakdown")

#: Lists of up to this many calls are kept in memory (the default ``--limit`` is 100).
IN_MEMORY = 10_000

#: A spool in time order sorts its calls' times this many at a time (a sorted run, written to
#: disk): sorting them all at once would hold a Python int and list slot per call (~70 B).
RUN_LENGTH = 10_000

#: A run's (time, place) pairs are read back this many at a time while the runs are merged.
_READ_PAIRS = 512

#: What a record-format timestamp (``2026-11-22T10:00:00.123Z``) holds besides its digits.
_SEPARATORS = str.maketrans("", "", "-T:.Z")


def spooled(limit: int) -> bool:
    """Whether a list of the newest ``limit`` calls (0: all) may pass ``IN_MEMORY`` calls."""
    return limit == 0 or limit > IN_MEMORY


def _dump(call: Call) -> bytes:
    values: list[Any] = list(_values_of(call))
    if values[_COST] is not None:
        values[_COST] = str(values[_COST])
    if values[_PARTS] is not None:
        values[_PARTS] = {name: str(part) for name, part in values[_PARTS].items()}
    return marshal.dumps(values)


def _load(data: bytes) -> Call:
    values = marshal.loads(data)  # our own file, written by ``_dump``
    if values[_COST] is not None:
        values[_COST] = Decimal(values[_COST])
    if values[_PARTS] is not None:
        values[_PARTS] = {name: Decimal(part) for name, part in values[_PARTS].items()}
    return Call(*values)


class CallSpool:
    """A sized, re-iterable list of the newest ``limit`` calls appended (0: all of them), oldest
    first: in memory up to ``IN_MEMORY`` calls, past that in a temporary file that no other
    process can open (it has no name).

    ``by_time``: the calls are read back in the order of their timestamps (ties as appended),
    whatever order they were appended in (a JSONL file that several processes append to, a
    backfill recorded with ``timestamp=``), and the newest ``limit`` are those of the latest
    timestamps, not the last appended. Their timestamps must be in the record format (as
    ``check_record`` leaves them). Once the calls are in the file, their times go there too, in
    sorted runs (``_Runs``), merged as the calls are read back: nothing is kept per call but
    its place in the file.

    Where no temporary file can be made (a read-only system without a writable ``/tmp``), the
    calls stay in memory, with a warning: the report is still made.
    """

    def __init__(self, limit: int = 0, *, by_time: bool = False) -> None:
        self._limit = limit
        # In time order, the newest are known once every call is in: none is dropped before.
        self._held: deque[Call] = deque(maxlen=None if by_time else limit or None)
        self._file: IO[bytes] | None = None
        self._offsets = array("q", [0])  # where each call starts in the file, and its end
        self._in_memory = False  # no temporary file could be made
        self._by_time = by_time
        self._runs: _Runs | None = None  # the spilled calls' times, when by_time
        self._last = ""  # the latest timestamp appended so far
        self._in_order = True
        self._sorted = False

    def append(self, call: Call) -> None:
        if self._by_time:
            if call.timestamp < self._last:
                self._in_order = False
            else:
                self._last = call.timestamp
        if self._file is None:
            self._held.append(call)
            if len(self._held) > IN_MEMORY and not self._in_memory:
                self._spill()
            return
        self._write(self._file, call)
        if self._runs is not None:
            self._runs.add(call.timestamp)

    def _write(self, file: IO[bytes], call: Call) -> None:
        data = _dump(call)
        try:
            file.write(data)
        except OSError as exc:  # a full disk: said in one line, as any other failure to read
            raise _spool_failed(exc) from None
        self._offsets.append(self._offsets[-1] + len(data))

    def _spill(self) -> None:
        """The calls held so far into a new temporary file, which takes the next ones."""
        try:
            self._file = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the spool)
        except OSError as exc:
            print(
                f"tokenmeter: warning: {_no_room(exc)}; the calls are listed from memory",
                file=sys.stderr,
            )
            self._in_memory = True
            return
        if self._by_time:
            try:
                self._runs = _Runs(tempfile.TemporaryFile())  # noqa: SIM115 (as the file)
            except OSError as exc:
                raise _spool_failed(exc) from None
        held, self._held = self._held, deque()
        for call in held:
            self._write(self._file, call)
            if self._runs is not None:
                self._runs.add(call.timestamp)

    def __len__(self) -> int:
        count = len(self._held) if self._file is None else len(self._offsets) - 1
        return min(count, self._limit) if self._limit else count

    @property
    def in_order(self) -> bool:
        """Whether the calls were appended in time order (always, unless ``by_time``)."""
        return self._in_order

    def _sort(self) -> None:
        """Put the calls held in memory in time order, once appending is over (a stable sort:
        ties as appended); the calls in the file are ordered as they are read back."""
        self._sorted = True
        if self._file is None:
            self._held = deque(sorted(self._held, key=_TIMESTAMP))

    def __iter__(self) -> Iterator[Call]:
        """The calls, read back one at a time (one iteration at a time; appending is over)."""
        if not (self._in_order or self._sorted):
            self._sort()
        if self._file is None:  # in time order: all but the newest ``limit`` are left out
            yield from islice(self._held, len(self._held) - len(self), None)
            return
        if not self._in_order and self._runs is not None:
            order = islice(self._runs.places(), len(self._offsets) - 1 - len(self), None)
            yield from self._in_time_order(self._file, order)
            return
        offsets = self._offsets
        first = len(offsets) - 1 - len(self)
        try:  # writes what is still buffered: the disk may be full by then
            self._file.seek(offsets[first])
        except OSError as exc:
            raise _spool_failed(exc) from None
        read = self._file.read
        for index in range(first, len(offsets) - 1):
            yield _load(read(offsets[index + 1] - offsets[index]))
        self._file.seek(0, os.SEEK_END)

    def _in_time_order(self, file: IO[bytes], order: Iterator[int]) -> Iterator[Call]:
        offsets, seek, read = self._offsets, file.seek, file.read
        try:
            for index in order:
                seek(offsets[index])
                yield _load(read(offsets[index + 1] - offsets[index]))
        except OSError as exc:  # what was still buffered could not be written
            raise _spool_failed(exc) from None
        seek(0, os.SEEK_END)


_TIMESTAMP = attrgetter("timestamp")


def _time_key(timestamp: str) -> int:
    """A record-format timestamp as an integer of the same order: its 17 digits (fixed width, so
    the number compares as the text does), 8 bytes on disk."""
    return int(timestamp.translate(_SEPARATORS))


class _Runs:
    """The times of the calls of a spool's file, in a temporary file of their own: every
    ``RUN_LENGTH`` of them are sorted and written as a run of (time, place) pairs; ``places``
    merges the runs into the calls' places in time order (ties as appended). Memory holds one
    run being made and a block of each run being merged, whatever the number of calls."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file
        self._times = array("q")  # of the run being made
        self._first = 0  # the place of its first call
        self._runs: list[tuple[int, int]] = []  # each run's start in the file, and its length

    def add(self, timestamp: str) -> None:
        self._times.append(_time_key(timestamp))
        if len(self._times) >= RUN_LENGTH:
            self._write_run()

    def _write_run(self) -> None:
        times, first = self._times, self._first
        pairs = array("q")
        for index in sorted(range(len(times)), key=times.__getitem__):
            pairs.append(times[index])
            pairs.append(first + index)
        try:
            start = self._file.seek(0, os.SEEK_END)
            self._file.write(pairs.tobytes())
        except OSError as exc:  # a full disk: said in one line, as for the calls
            raise _spool_failed(exc) from None
        self._runs.append((start, len(times)))
        self._first += len(times)
        self._times = array("q")

    def places(self) -> Iterator[int]:
        """The calls' places in time order (appending is over)."""
        if self._times:
            self._write_run()
        for _, place in heapq.merge(*(self._read(*run) for run in self._runs)):
            yield place

    def _read(self, start: int, length: int) -> Iterator[tuple[int, int]]:
        """A run's (time, place) pairs, a block at a time (the runs share one file)."""
        for done in range(0, length, _READ_PAIRS):
            pairs = array("q")
            try:
                self._file.seek(start + 16 * done)
                pairs.frombytes(self._file.read(16 * min(_READ_PAIRS, length - done)))
            except OSError as exc:
                raise _spool_failed(exc) from None
            yield from zip(pairs[::2], pairs[1::2], strict=True)


def _no_room(exc: OSError) -> str:
    return (
        f"cannot keep the calls listed in a temporary file in {tempfile.gettempdir()}: "
        f"{exc.strerror or exc} (set TMPDIR to a directory with room)"
    )


def _spool_failed(exc: OSError) -> CliError:
    return CliError(_no_room(exc))
