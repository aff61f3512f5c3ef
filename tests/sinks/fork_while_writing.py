"""A process that forks while its threads write to a SQLite database; each child writes a record.

Used by test_sqlite_sink.py: ``python fork_while_writing.py DB CHILDREN`` starts two threads that
write batches to DB through their own ``SQLiteSink`` until the end, and forks CHILDREN children
one after the other; child ``n`` writes the record ``child-NN`` to DB through a new sink and
exits 0 if it could. The process exits with the number of children that could not: it stops
forking at the first one (which waits out its busy timeout first, or hangs and is killed).
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sink_helpers import build_record  # type: ignore[import-not-found, unused-ignore]

from tokenmeter.sinks import SQLiteSink

#: Seconds a child's write waits for the database lock before it gives up.
CHILD_BUSY_TIMEOUT_S = 10.0
#: Seconds after which a child that has not exited is taken as hung (a lock it inherited held).
CHILD_HUNG_S = 30.0


def write_until(stop: threading.Event, started: threading.Event, path: Path, name: str) -> None:
    sink = SQLiteSink(path)
    for start in itertools.count(0, 20):
        if stop.is_set():
            break
        sink.write([build_record(i, id=f"{name}-{i:06d}") for i in range(start, start + 20)])
        started.set()
    sink.close()


def write_in_child(path: Path, number: int) -> None:
    code = 1
    try:
        sink = SQLiteSink(path, busy_timeout_s=CHILD_BUSY_TIMEOUT_S)
        sink.write([build_record(number, id=f"child-{number:02d}")])
        sink.close()
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


def exited_well(pid: int) -> bool:
    """Whether the child exited with 0; one still running after ``CHILD_HUNG_S`` is killed."""
    deadline = time.monotonic() + CHILD_HUNG_S
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status) == 0
        if time.monotonic() > deadline:
            print(f"child {pid} hung: killed", file=sys.stderr)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return False
        time.sleep(0.01)


def main() -> None:
    path, children = Path(sys.argv[1]), int(sys.argv[2])
    stop = threading.Event()
    started = [threading.Event() for _ in range(2)]
    threads = [
        threading.Thread(target=write_until, args=(stop, event, path, f"thread{n}"))
        for n, event in enumerate(started)
    ]
    for thread in threads:
        thread.start()
    for event in started:
        if not event.wait(60):  # a thread that failed never starts: say so, do not hang
            sys.exit("a writer thread never wrote")
    failed = 0
    for number in range(children):
        time.sleep(0.005)  # let the threads get into their next transactions
        pid = os.fork()
        if pid == 0:
            write_in_child(path, number)
        if not exited_well(pid):
            failed += 1
            break
    stop.set()
    for thread in threads:
        thread.join()
    sys.exit(failed)


if __name__ == "__main__":
    main()
