"""A child process that writes ``disk_full_steps()`` to one sink while its disk is full.

``python disk_full_writer.py KIND FAULT START STEP STOP_AFTER OUT [DISK]`` (see
``run_disk_full_writer`` in sink_helpers.py, which also mounts DISK for the "enospc" fault). Why a
child: the file size limit and the mount must not touch the test process. Every failed step is
retried the way the pipeline retries a sink (same sink object, same batch) once a little room has
been made; before that, the files are checked as a reader would find them. The last stdout line
is a JSON report: ``failures``, ``problems`` and ``resume_at`` (the step to resume from when
STOP_AFTER ended the run early).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import shutil
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sink_helpers import (  # type: ignore[import-not-found, unused-ignore]
    disk_full_steps,
    journal_problems,
    make_sink,
    write_step,
)

from tokenmeter._models import UsageRecord


class _Fsize:
    """Files may grow to ``limit`` bytes; past it writes fail with EFBIG or come back short."""

    def __init__(self, start: int) -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        self.limit = start
        self._apply()

    def free(self, step: int) -> None:
        self.limit += step
        self._apply()

    def lift(self) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)

    def _apply(self) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.limit, resource.RLIM_INFINITY))


class _Ballast:
    """Fills the tmpfs at ``disk`` but for ``start`` bytes; ``free`` gives some back."""

    def __init__(self, disk: Path, start: int) -> None:
        self.path = disk / "ballast"
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        chunk = b"\xff" * 65536
        try:
            while True:
                os.write(fd, chunk)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
        finally:
            os.close(fd)
        self.size = self.path.stat().st_size
        self.free(start)

    def free(self, step: int) -> None:
        if step > self.size:
            raise RuntimeError("the ballast is used up and the writes still fail")
        self.size -= step
        os.truncate(self.path, self.size)

    def lift(self) -> None:
        os.unlink(self.path)


def _sqlite_problems(path: Path, written: int, batch: int) -> list[str]:
    """A batch is in the database whole or not at all."""
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        count: int = conn.execute("SELECT count(*) FROM records").fetchone()[0]
    finally:
        conn.close()
    return [] if count in (written, written + batch) else [f"{count} records, not {written}"]


def _jsonl_problems(path: Path) -> list[str]:
    """Every line is a whole record, and none is there twice."""
    if not path.exists():
        return []
    data = path.read_bytes()
    problems = [f"{data.count(0)} NUL bytes"] if b"\0" in data else []
    ids = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        try:
            ids.append(UsageRecord.from_json_dict(json.loads(line)).id)
        except (ValueError, TypeError) as exc:
            problems.append(f"a torn line ({exc}): {line[:60]!r}")
    if len(set(ids)) != len(ids):
        problems.append(f"{len(ids) - len(set(ids))} duplicate lines")
    return problems


def main() -> None:
    kind, fault, start, step, stop_after, out = sys.argv[1:7]
    disk = Path(sys.argv[7]) if fault == "enospc" else None
    directory = Path(out) if disk is None else disk / "data"
    room: _Fsize | _Ballast = _Fsize(int(start)) if disk is None else _Ballast(disk, int(start))
    sink = make_sink(kind, directory)
    failures, problems, resume_at, written = 0, [], None, 0
    for index, batch in enumerate(disk_full_steps()):
        while True:
            try:
                write_step(sink, batch)
                break
            except Exception as exc:  # what the pipeline catches: it keeps the batch and retries
                failures += 1
                found: list[Any] = []
                if kind == "markdown":
                    found = journal_problems(directory / "journal")
                elif kind == "jsonl":
                    found = _jsonl_problems(directory / "usage.jsonl")
                elif isinstance(batch[0], UsageRecord):
                    found = _sqlite_problems(directory / "usage.db", written, len(batch))
                problems += [f"after {type(exc).__name__} at step {index}: {p}" for p in found]
                if failures == int(stop_after):
                    resume_at = index
                    break
                room.free(int(step))
        if resume_at is not None:
            break
        if isinstance(batch[0], UsageRecord):
            written += len(batch)
    sink.close()
    room.lift()
    if disk is not None:
        shutil.copytree(directory, out, dirs_exist_ok=True)
        with contextlib.suppress(OSError):
            shutil.rmtree(directory)
    print(json.dumps({"failures": failures, "problems": problems, "resume_at": resume_at}))


if __name__ == "__main__":
    main()
