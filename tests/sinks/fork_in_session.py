"""Workers forked inside ``with tokenmeter.session("job")``: one leaves the block by
``sys.exit`` while the parent is still in it, one (a pre-fork server's) flushes and ends with
``os._exit`` inside it, the last makes its call after the parent ended the session. Run as
``python fork_in_session.py DIRECTORY``; prints the session's id."""

from __future__ import annotations

import os
import sys

os.environ["TOKENMETER_DIR"] = sys.argv[1]
os.environ["TOKENMETER_SINKS"] = "sqlite"
import tokenmeter


def call() -> None:
    tokenmeter.record("openai", "gpt-4o", input_tokens=1000, output_tokens=100)


def worker(wait_for: int | None, leave: str = "sys.exit") -> None:
    """Fork a worker that makes one call (after ``wait_for`` is readable) and leaves by
    ``sys.exit`` (which unwinds the parent's ``with`` block in the worker), or by ``os._exit``
    after a flush, as docs/sinks.md tells a bare fork's child to."""
    if os.fork() == 0:
        if wait_for is not None:
            os.read(wait_for, 1)
        call()
        if leave == "os._exit":
            tokenmeter.flush()
            os._exit(0)
        sys.exit(0)


with tokenmeter.session("job") as job:
    call()
    call()
    worker(None)
    os.wait()
    worker(None, leave="os._exit")
    os.wait()
    go, signal = os.pipe()
    worker(go)
tokenmeter.flush()
os.write(signal, b"x")
os.wait()
print(job.id)
