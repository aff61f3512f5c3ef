"""Locks a forked child gets fresh.

``fork()`` copies a lock in whatever state it was, and only the thread that called ``fork()``
survives in the child: a lock another thread held at that instant stays held forever there, and
the child hangs on its first record. Every module-level lock of tokenmeter is registered here.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["renew_after_fork"]


def renew_after_fork(
    namespace: dict[str, Any], name: str, factory: Callable[[], Any] = threading.RLock
) -> None:
    """In a forked child, replace ``namespace[name]`` by a new ``factory()`` (e.g. a lock)."""

    def renew() -> None:
        namespace[name] = factory()

    os.register_at_fork(after_in_child=renew)
