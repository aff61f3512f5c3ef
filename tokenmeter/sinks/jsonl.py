"""JSONL sink: one JSON object per line, appended by any number of processes.

Why it is shaped this way:
- The file is opened with ``O_APPEND`` and each batch is written as ONE buffer under an exclusive
  ``flock``, so lines from different processes never interleave (even where a large ``write()``
  is split, e.g. on network filesystems, the lock keeps other writers out).
- A batch is all-or-nothing: if a write fails half-way (disk full), the file is truncated back to
  where the batch started, so the caller's retry cannot duplicate lines.
- A writer killed mid-line leaves a torn last line; the next batch starts with "\\n" so the torn
  fragment stays alone on its own (invalid, skipped by readers) line.
- The descriptor is opened lazily and reopened after ``fork()``: ``flock`` belongs to the open
  file description, which a forked child would otherwise share with its parent.
- Before each batch one ``stat`` checks that ``path`` still names the file the descriptor has
  open: after the file is deleted or renamed away (log rotation) a new one is made at ``path``,
  instead of lines going on into a file no reader finds there.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator, Sequence

from tokenmeter._models import UsageRecord
from tokenmeter.sinks._encode import compact_json
from tokenmeter.sinks._files import (
    append_whole,
    ensure_private_dir,
    file_id,
    file_path,
    open_private,
    refuse_irregular,
    still_names,
)

__all__ = ["JSONLSink", "read_jsonl"]


class JSONLSink:
    """Appends every record as one line of JSON to the file at ``path``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        # A regular file or none yet: a FIFO took the lines with no reader (lost, flush() said
        # True), a directory or a device failed every write on the writer thread.
        self.path = file_path(path)
        self._fd: int | None = None
        self._pid = 0
        #: ``(st_dev, st_ino)`` of the file the descriptor has open.
        self._file_id = (0, 0)

    def write(self, records: Sequence[UsageRecord]) -> None:
        if not records:
            return
        data = ("\n".join([compact_json(r.to_json_dict()) for r in records]) + "\n").encode()
        fd = self._descriptor()
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            append_whole(fd, data)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def flush(self) -> None:
        """Nothing to do: ``write`` hands every byte to the OS before it returns."""

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def _descriptor(self) -> int:
        """A descriptor of the file that ``path`` names now, opened in this process."""
        if (
            self._fd is not None
            and self._pid == os.getpid()
            and still_names(self.path, self._file_id)
        ):
            return self._fd
        if self._fd is not None:
            # In a forked child, its copy (the parent's stays open and unlocked); else the file
            # was deleted or renamed away.
            os.close(self._fd)
            self._fd = None
        ensure_private_dir(self.path.parent)
        # A FIFO put at the path since the sink was made (for a log shipper not reading yet)
        # held the writer in write() for ever once its buffer was full: refused, as by the
        # other file sinks, and the records kept and retried.
        fd = open_private(self.path, os.O_RDWR | os.O_APPEND | os.O_NONBLOCK)
        try:
            refuse_irregular(fd)
        except BaseException:
            os.close(fd)
            raise
        info = os.fstat(fd)
        self._fd, self._pid, self._file_id = fd, os.getpid(), file_id(info)
        return fd


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[UsageRecord | None]:
    """Yield each line's record, or None for a line that is not a valid record (torn, edited)."""
    with open(path, encoding="utf-8", errors="replace") as file:
        for line in file:
            if not line.strip():
                continue
            try:
                yield UsageRecord.from_json_dict(json.loads(line))
            except (ValueError, TypeError, RecursionError):  # nested too deep for json.loads
                yield None
