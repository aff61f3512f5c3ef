"""The calls ``report --detailed`` lists, kept on disk when there are many of them.

``--limit 0`` lists every call of the window: a store of a million calls would otherwise hold a
million ``Call`` objects (and the record dicts they were read from) in memory at once, several
gigabytes. A ``CallSpool`` holds the first ``IN_MEMORY`` calls; past them it writes each call to
an anonymous temporary file as it is read, and reads them back one at a time while the report is
written, so memory stays flat whatever the number of calls (8 bytes a call for its place in the
file). ``tokenmeter session ID`` lists a session's calls the same way, in time order.
"""

from __future__ import annotations

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
    timestamps, not the last appended. That keeps each call's timestamp in memory, not the call.

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
        self._times: list[str] | None = [] if by_time else None
        self._order: array[int] | None = None  # the calls' places in time order, once sorted
        self._in_order = True
        self._sorted = False

    def append(self, call: Call) -> None:
        times = self._times
        if times is not None:
            if times and call.timestamp < times[-1]:
                self._in_order = False
            times.append(call.timestamp)
        if self._file is None:
            self._held.append(call)
            if len(self._held) > IN_MEMORY and not self._in_memory:
                self._spill()
            return
        self._write(self._file, call)

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
        held, self._held = self._held, deque()
        for call in held:
            self._write(self._file, call)

    def __len__(self) -> int:
        count = len(self._held) if self._file is None else len(self._offsets) - 1
        return min(count, self._limit) if self._limit else count

    @property
    def in_order(self) -> bool:
        """Whether the calls were appended in time order (always, unless ``by_time``)."""
        return self._in_order

    def _sort(self) -> None:
        """Put the calls in time order, once appending is over (sorting places, not calls), and
        keep the newest ``limit`` of them."""
        times = self._times or []
        ranked = sorted(range(len(times)), key=times.__getitem__)
        order = array("q", ranked[len(ranked) - len(self) :])
        self._times, self._sorted = None, True  # appending is over
        if self._file is None:
            held = list(self._held)
            self._held = deque(held[index] for index in order)
        else:
            self._order = order

    def __iter__(self) -> Iterator[Call]:
        """The calls, read back one at a time (one iteration at a time; appending is over)."""
        if not (self._in_order or self._sorted):
            self._sort()
        if self._file is None:  # in time order: all but the newest ``limit`` are left out
            yield from islice(self._held, len(self._held) - len(self), None)
            return
        if self._order is not None:
            yield from self._in_time_order(self._file, self._order)
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

    def _in_time_order(self, file: IO[bytes], order: array[int]) -> Iterator[Call]:
        offsets, seek, read = self._offsets, file.seek, file.read
        try:
            for index in order:
                seek(offsets[index])
                yield _load(read(offsets[index + 1] - offsets[index]))
        except OSError as exc:  # what was still buffered could not be written
            raise _spool_failed(exc) from None
        seek(0, os.SEEK_END)


def _no_room(exc: OSError) -> str:
    return (
        f"cannot keep the calls listed in a temporary file in {tempfile.gettempdir()}: "
        f"{exc.strerror or exc} (set TMPDIR to a directory with room)"
    )


def _spool_failed(exc: OSError) -> CliError:
    return CliError(_no_room(exc))
