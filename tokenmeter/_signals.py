"""The SIGTERM / SIGHUP flush, set at ``import tokenmeter`` when the import runs on the main thread.

Only the main thread may set a signal handler. The flush used to be set at the first
``instrument()``, ``configure()`` or record made on the main thread: an application whose every
use of tokenmeter happens on other threads (a Streamlit script thread, a job runner's pool) got
none, and ``docker stop`` ended it with its queued records unwritten. The import nearly always
runs on the main thread, so the handler is set there, where a signal still has its default
disposition: an application's own handler is never replaced, and one it sets later replaces ours.

Kept light (``import tokenmeter`` stays cheap): once tokenmeter's pipeline is loaded, the handler
is ``_pipeline``'s own; before that nothing can be queued, and it only dies of the signal, as
the process would have without it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from types import FrameType

__all__ = ["TERMINATION_SIGNALS", "hook_at_import", "on_termination"]

#: The signals that end a Python process without running atexit, whose default we take over.
TERMINATION_SIGNALS = ("SIGTERM", "SIGHUP")

#: ``TOKENMETER_DISABLED`` values that turn tokenmeter off (``_config._TRUE``; not imported
#: from there, which loads pydantic).
_SWITCHED_OFF = {"1", "true", "yes", "on"}


def hook_at_import() -> None:
    """Set ``on_termination`` for the termination signals left at their default, from the main
    thread; not with ``TOKENMETER_DISABLED`` on (the kill switch leaves the process as it was).
    Off the main thread, the first ``instrument()``, ``configure()`` or record made on it sets
    the handler (``_pipeline.hook_termination_signals``)."""
    if threading.current_thread() is not threading.main_thread():
        return
    if os.environ.get("TOKENMETER_DISABLED", "").strip().lower() in _SWITCHED_OFF:
        return
    for name in TERMINATION_SIGNALS:
        signum = getattr(signal, name, None)
        if signum is None:
            continue
        with contextlib.suppress(ValueError, OSError):
            if signal.getsignal(signum) is signal.SIG_DFL:
                signal.signal(signum, on_termination)


def on_termination(signum: int, frame: FrameType | None) -> None:
    """Flush what tokenmeter has queued, then die of ``signum`` (``_pipeline``'s handler); at
    once when tokenmeter never loaded its pipeline (nothing to write)."""
    pipeline = sys.modules.get("tokenmeter._pipeline")
    handler = getattr(pipeline, "_on_termination", None)  # None while it is still being imported
    if handler is not None:
        handler(signum, frame)
        return
    with contextlib.suppress(ValueError, OSError):
        signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
