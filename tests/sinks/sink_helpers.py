"""Plain helpers shared by the sink tests and the scripts they run: building records, reading the
SQLite file back, and running a workload on a disk that fills up (``disk_full_writer.py``) with
checks of what it leaves. Fixtures live in this folder's ``conftest.py``.

Imported by name (``from sink_helpers import build_record``), not from ``conftest``: every test
folder's conftest.py is the top-level module ``conftest``, so ``from conftest import ...`` read
whichever folder's conftest pytest had imported last (``pytest tests/sinks tests/pricing`` failed
to collect the sink tests). No other folder has a module of this name.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tokenmeter._models import SessionInfo, UsageRecord
from tokenmeter.sinks import JSONLSink, MarkdownJournalSink, Sink, SQLiteSink

START = datetime(2026, 11, 22, 10, 0, 0, 123000, tzinfo=UTC)


def resume_after_a_crash(session_id: str) -> str:
    """Through the real pipeline (``tokenmeter.configure`` first): run 1 of ``session_id`` fails,
    leaving a thread it started, run 2 (a job resumed after a crash) completes, then the thread
    makes a late call of run 1. 3 calls in all; returns run 2's status."""
    import tokenmeter

    go = threading.Event()

    def late_call() -> None:
        go.wait(10)
        tokenmeter.record("openai", "gpt-4o", 100, 10)

    worker = threading.Thread(target=late_call)
    with contextlib.suppress(RuntimeError), tokenmeter.session("import", id=session_id):
        tokenmeter.record("openai", "gpt-4o", 100, 10)
        worker.start()
        time.sleep(0.01)  # a run takes a moment: run 2 starts a millisecond later at least
        raise RuntimeError("crash")
    with tokenmeter.session("import", id=session_id) as resumed:
        tokenmeter.record("openai", "gpt-4o", 100, 10)
    go.set()
    worker.join()
    assert tokenmeter.flush(10)
    return resumed.status


def build_record(i: int, **overrides: Any) -> UsageRecord:
    """A realistic priced record; ``i`` makes the id and the timestamp unique."""
    input_cost = Decimal("0.0000025") * 1200
    output_cost = Decimal("0.00001") * 300
    fields: dict[str, Any] = {
        "timestamp": START + timedelta(milliseconds=i),
        "model_provider": "openai",
        "model_name": "gpt-4o",
        "input_tokens": 1200,
        "output_tokens": 300,
        "total_tokens": 1500,
        "estimated_cost_usd": input_cost + output_cost,
        "cost_breakdown": {"input": input_cost, "output": output_cost},
        "price_source": "genai-prices 0.2.3",
        "id": f"rec-{i:06d}",
        "operation": "chat.completions",
        "session_id": "s1",
        "session_name": "demo",
        "tags": {"team": "search"},
        "latency_ms": 412.5,
    }
    fields.update(overrides)
    return UsageRecord(**fields)


def read_sqlite_records(path: Path) -> list[UsageRecord]:
    """Every record in the database, rebuilt the way a reader of the schema would."""
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        rows = [dict(row) for row in conn.execute("SELECT * FROM records ORDER BY timestamp, id")]
    finally:
        conn.close()
    return [record_from_row(row) for row in rows]


def record_from_row(row: dict[str, Any]) -> UsageRecord:
    """A stored row (SQLite or PostgreSQL: same columns) as the record it was written from."""
    row = dict(row)
    row.pop("cost_pusd")
    cost = row["estimated_cost_usd"]
    row["estimated_cost_usd"] = None if cost is None else Decimal(cost)
    breakdown = row["cost_breakdown"]
    row["cost_breakdown"] = (
        None if breakdown is None else {k: Decimal(v) for k, v in json.loads(breakdown).items()}
    )
    row["tags"] = json.loads(row["tags"])
    row["modalities"] = json.loads(row["modalities"])
    row["tool_requests"] = json.loads(row["tool_requests"])
    row["timestamp"] = datetime.fromisoformat(row["timestamp"].replace("Z", "+00:00"))
    return UsageRecord.model_validate(row)


# --- a PostgreSQL whose answer to a COMMIT is lost -------------------------------------------


class CommitAnswerLost:
    """A TCP proxy in front of the test server that, once ``armed`` with a count, forwards that
    many COMMITs and cuts their client off before the answer comes back: the server commits,
    the client sees its connection die (a failover, a pooler's cut, a network drop at that
    moment). ``dsn``: the server's DSN through the proxy. While ``down``, it closes every new
    connection at once, as a pooler does whose server is gone."""

    def __init__(self, pg_dsn: str) -> None:
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        params = conninfo_to_dict(pg_dsn)
        self._target = (str(params.get("host", "127.0.0.1")), int(params.get("port", 5432)))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.dsn = make_conninfo(pg_dsn, host="127.0.0.1", port=self._listener.getsockname()[1])
        self.armed = 0
        self.cut = 0  # COMMIT answers lost so far
        self.down = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self._listener.accept()
                if self.down:
                    client.close()
                    continue
                server = socket.create_connection(self._target)
                cut = threading.Event()
                threading.Thread(target=self._up, args=(client, server, cut), daemon=True).start()
                threading.Thread(target=self._down, args=(server, client, cut), daemon=True).start()

    def _up(self, client: socket.socket, server: socket.socket, cut: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                commit = self.armed and b"COMMIT" in data.upper()
                if commit:  # before it is sent: an answer back at once is not passed on either
                    self.armed -= 1
                    cut.set()
                server.sendall(data)
                if commit:
                    time.sleep(0.3)  # the server commits meanwhile; its answer is dropped
                    self.cut += 1
                    client.shutdown(socket.SHUT_RDWR)
                    client.close()
                    server.close()
                    return

    @staticmethod
    def _down(server: socket.socket, client: socket.socket, cut: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while (data := server.recv(65536)) and not cut.is_set():
                client.sendall(data)


# --- a disk that fills up: the workload, the child process that runs it, the checks ------------

SINKS_DIR = Path(__file__).resolve().parent
DISK_FULL_WRITER = SINKS_DIR / "disk_full_writer.py"
DISK_FULL_RECORDS = 400
#: Long enough that the ended session's file (notes in its state and in its tail) is for a while
#: bigger than token_usage.md, so the limit hits session files too, not only the usage file.
NOTES = "What this session tried, and why it ended early.\n" * 120

Step = list[UsageRecord] | list[SessionInfo]


def disk_full_steps() -> list[Step]:
    """What the disk-full tests write: sessions, then 400 records in uneven batches.

    Records go to two sessions and to none, over 30 models (so the usage summary outgrows its
    first reservation and the whole file is rewritten), with session updates in between.
    """
    s1 = SessionInfo(id="s1", name="demo", started_at=START)
    s2 = SessionInfo(
        id="s2",
        name="ended early",
        started_at=START,
        status="completed",
        ended_at=START + timedelta(hours=1),
        notes=NOTES,
    )
    steps: list[Step] = [[s1, s2]]
    sizes = itertools.cycle([1, 5, 13, 2, 8, 21, 3])
    start = 0
    while start < DISK_FULL_RECORDS:
        end = min(start + next(sizes), DISK_FULL_RECORDS)
        steps.append([_disk_full_record(i) for i in range(start, end)])
        if start < DISK_FULL_RECORDS // 2 <= end:
            steps.append([s1.model_copy(update={"tags": {"phase": "second half"}})])
        start = end
    ended = START + timedelta(hours=2)
    steps.append([s1.model_copy(update={"status": "completed", "ended_at": ended})])
    return steps


def _disk_full_record(i: int) -> UsageRecord:
    session = ("s1", "demo"), ("s2", "ended early"), (None, None)
    session_id, session_name = session[i % 3]
    return build_record(
        i,
        session_id=session_id,
        session_name=session_name,
        model_name=f"model-{i % 30:02d}-with-a-long-name",
    )


def write_step(sink: Sink, step: Step) -> None:
    """Hand ``step`` to ``sink`` as the pipeline does (sessions only to session-aware sinks)."""
    if step and isinstance(step[0], SessionInfo):
        write_sessions = getattr(sink, "write_sessions", None)
        if write_sessions is not None:
            write_sessions(step)
    else:
        sink.write(step)  # type: ignore[arg-type]


def make_sink(kind: str, directory: Path) -> Sink:
    """The sink of ``kind`` writing under ``directory`` (the file names the CLI defaults to)."""
    if kind == "markdown":
        return MarkdownJournalSink(directory / "journal")
    if kind == "jsonl":
        return JSONLSink(directory / "usage.jsonl")
    if kind == "sqlite":
        return SQLiteSink(directory / "usage.db")
    raise ValueError(kind)


@functools.cache
def tmpfs_unavailable() -> str | None:
    """Why a small tmpfs cannot be mounted in a user namespace here, or None if it can."""
    if shutil.which("unshare") is None:
        return "needs unshare(1) to mount a small tmpfs"
    probe = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True
    )
    if probe.returncode:
        return f"no user namespaces here: {probe.stderr.decode(errors='replace').strip()}"
    return None


def disk_faults(*, fsize_step: int, enospc_step: int) -> list[Any]:
    """``(fault, start, step)`` parameters for ``run_disk_full_writer``: both kinds of full disk.

    The steps are the room made after each failure: small enough for many failures at many
    offsets, large enough to keep the test quick for the sink's file sizes.
    """
    return [
        pytest.param("fsize", 2000, fsize_step, id="file-size-limit"),
        pytest.param("enospc", 4096, enospc_step, id="full-tmpfs"),
    ]


def skip_without_tmpfs(fault: str) -> None:
    """Skip an "enospc" test where no tmpfs can be mounted (the "fsize" ones still run)."""
    if fault == "enospc" and (reason := tmpfs_unavailable()):
        pytest.skip(reason)


def run_disk_full_writer(
    kind: str,
    tmp_path: Path,
    fault: str,
    *,
    start: int,
    step: int,
    stop_after: int = 0,
) -> tuple[Path, dict[str, Any]]:
    """Run ``disk_full_steps()`` into a ``kind`` sink in a child process whose disk is full.

    ``fault="fsize"``: the file size limit (RLIMIT_FSIZE, SIGXFSZ ignored) starts at ``start``
    bytes, so writes past it fail with EFBIG or come back short. ``fault="enospc"``: the files
    live on a tmpfs mounted for the child (in its own user and mount namespace) and filled by a
    ballast file up to ``start`` free bytes: writes fail with ENOSPC or come back short, and
    ``ftruncate`` can still extend a file (sparsely), as on a real full disk. After every failure
    the child checks the files as a reader would find them, then frees ``step`` more bytes and
    retries the same step, as the pipeline does. With ``stop_after``, the child gives up after that
    many failures (a process that died with the batch unwritten) and reports where to resume.

    Returns the directory holding the sink's files and the child's report: ``failures``,
    ``problems`` (what the checks found after failures) and ``resume_at``.
    """
    out = tmp_path / "out"
    out.mkdir()
    command = [sys.executable, str(DISK_FULL_WRITER), kind, fault, str(start), str(step)]
    command += [str(stop_after), str(out)]
    if fault == "enospc":
        disk = tmp_path / "disk"
        disk.mkdir()
        mount = 'mount -t tmpfs -o size=4m,mode=0700 tmpfs "$1" || exit 97; shift; exec "$@"'
        prefix = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", mount, "sh"]
        command = [*prefix, str(disk), *command, str(disk)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if fault == "enospc" and result.returncode == 97:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    return out, report


def resume_steps(kind: str, directory: Path, resume_at: int) -> None:
    """Write the steps from ``resume_at`` on in this process, without any limit."""
    sink = make_sink(kind, directory)
    for step in disk_full_steps()[resume_at:]:
        write_step(sink, step)
    sink.close()


def write_reference(kind: str, directory: Path) -> None:
    """The same steps written on a disk with room: what a run with faults must end up with."""
    directory.mkdir()
    resume_steps(kind, directory, 0)


def tree_bytes(directory: Path) -> dict[str, bytes]:
    """Every regular file under ``directory`` (relative path -> content), the lock file aside."""
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != ".journal.lock"
    }


_LOG_HEADERS = {"| # | Timestamp |": 10, "| Call | Timestamp |": 6}
_NUMBERED_ROW = re.compile(r"\| \d+ \|")


def journal_problems(directory: Path) -> list[str]:
    """What a reader would find wrong in the markdown journal under ``directory``.

    Checked per file: no NUL bytes, valid UTF-8, nothing but whole rows numbered 1..N in the log
    table, N equal to the calls the head (usage) or the summary (session) accounts for, nothing
    after the table but the tail, and no temporary files left behind. An empty directory or file
    is fine: a batch that was not written at all.
    """
    problems: list[str] = []
    if not directory.exists():
        return problems
    for path in sorted(directory.rglob("*")):
        name = str(path.relative_to(directory))
        if path.is_dir() or path.name == ".journal.lock":
            continue
        if path.suffix != ".md" or path.name.startswith("."):
            problems.append(f"{name}: left behind")
            continue
        data = path.read_bytes()
        if b"\0" in data:
            problems.append(f"{name}: {data.count(0)} NUL bytes")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(f"{name}: not UTF-8 ({exc})")
            continue
        if text and not text.endswith("\n"):
            problems.append(f"{name}: ends in the middle of a line")
        problems += [f"{name}: {p}" for p in _document_problems(text)]
    return problems


def _document_problems(text: str) -> list[str]:
    if not text:
        return []
    lines = text.split("\n")
    found = [
        (i, cells)
        for i, line in enumerate(lines)
        for start, cells in _LOG_HEADERS.items()
        if line.startswith(start)
    ]
    if len(found) != 1:
        return [f"{len(found)} log tables"]
    header, cells = found[0]
    end = header + 2
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    rows = lines[header + 2 : end]
    problems = []
    numbers = [int(row.split("|")[1]) if _NUMBERED_ROW.match(row) else -1 for row in rows]
    if numbers != list(range(1, len(rows) + 1)):
        problems.append(f"log rows are numbered {numbers[:3]}...{numbers[-3:]}")
    torn = [row for row in rows if len(re.split(r"(?<!\\)\|", row)) != cells + 2]
    if torn or any(not row.endswith(" |") for row in rows):
        problems.append(f"torn log rows, e.g. {torn[0][:60]!r}" if torn else "torn log rows")
    rest = lines[end:]
    stray = [line for line in rest if _NUMBERED_ROW.match(line)]
    if stray:
        problems.append(f"{len(stray)} rows after the log table, e.g. {stray[0][:60]!r}")
    if cells == 10:  # token_usage.md: the TOTAL row of the summary counts the calls
        total = next((line for line in lines[:header] if line.startswith("| **TOTAL**")), "")
        counted = total.split("|")[3].strip(" *").replace(",", "") if total else "none"
        tail_ok = all(not line or line.startswith("<!--") for line in rest)
    else:
        summary = [line for line in rest if line.startswith("- **Total Calls:** ")]
        counted = summary[0].split()[-1].replace(",", "") if len(summary) == 1 else "none"
        tail_ok = rest[:2] == ["", "## Session Summary"]
    if counted != str(len(rows)):
        problems.append(f"{len(rows)} log rows but the totals count {counted}")
    if not tail_ok:
        problems.append(f"after the log table: {rest[:2]!r}")
    return problems
