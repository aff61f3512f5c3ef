"""Locks a forked child gets fresh.

``fork()`` copies a lock in whatever state it was, and only the thread that called ``fork()``
survives in the child: a lock another thread held at that instant stays held forever there, and
the child hangs on its first record. Every module-level lock of tokenmeter is registered here.
"""

from __future__ import annotations

import _thread
import contextlib
import logging  # noqa: F401  (imported before our fork hook is registered: see the end)
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

# See the end of this module. A RuntimeError: imported after threading's shutdown (by an exit
# hook), when no pool runs any more.
with contextlib.suppress(RuntimeError):
    import concurrent.futures.thread  # noqa: F401

__all__ = ["renew_after_fork"]


def renew_after_fork(
    namespace: dict[str, Any], name: str, factory: Callable[[], Any] = threading.RLock
) -> None:
    """In a forked child, replace ``namespace[name]`` by a new ``factory()`` (e.g. a lock)."""

    def renew() -> None:
        namespace[name] = factory()

    os.register_at_fork(after_in_child=renew)
    if not _hooked:
        # Again, now that tokenmeter is in use: the hooks registered last run first (see the
        # end of this module).
        _hooked.append(True)
        os.register_at_fork(before=_wait_for_imports)


_hooked: list[bool] = []
#: How long ``fork()`` waits at most for imports running in other threads.
_IMPORT_WAIT = 5.0


def _wait_for_imports() -> None:
    """Before ``fork()``: let imports that other threads are running finish (bounded).

    tokenmeter imports modules on first use, on the caller's thread or a writer's (a record's
    road, a sink, the price tables). A module being imported at the instant of ``fork()`` stays
    half-imported in the child, its import lock held by a thread that does not exist there: the
    child's first record would wait for it forever. Registered at ``import tokenmeter``: the
    first records may be made by threads while the main thread forks.
    """
    deadline = time.monotonic() + _IMPORT_WAIT
    while _imports_in_other_threads() and time.monotonic() < deadline:
        time.sleep(0.001)


def _imports_in_other_threads() -> list[tuple[str, Any]]:
    """The modules whose import another thread is running, with their import locks (CPython's
    importlib keeps them in ``_module_locks``; an interpreter laid out otherwise has none here:
    it is never waited for, nor mended after a fork)."""
    me = threading.get_ident()
    try:
        from importlib import _bootstrap

        held = []
        for name, ref in list(_bootstrap._module_locks.items()):  # type: ignore[attr-defined]
            lock = ref()
            if lock is not None and lock.count and lock.owner not in (None, me):
                held.append((name, lock))
    except Exception:
        return []
    return held


# At ``import tokenmeter``. Fork hooks registered last run first: logging's takes the logging
# lock, and run before this wait, it would keep an import that needs the lock (every module of
# tokenmeter asks for its logger) from ending: logging is imported above, so its hook runs after.
# concurrent.futures.thread (which the sessions import) is imported above too: a module that
# registers a pair of hooks while this wait runs misses the fork's before-hooks but not its
# after-hooks, and its after-hook in the parent would release a lock that nothing took (another
# thread's, had one held it).
os.register_at_fork(before=_wait_for_imports)


def _forget_imports_of_other_threads() -> None:
    """In a forked child: imports that other threads of the parent were running at the fork
    never finish here (the wait before the fork is bounded, and a thread may start one right
    after it looked). Their module locks are released and their half-made modules forgotten, so
    that the child imports them afresh instead of waiting for ever. The submodules a forgotten
    package had finished are kept (other modules may hold what they made) and bound to the
    package made afresh (``_Rebind``)."""
    me = threading.get_ident()
    try:
        forgotten = []
        for name, lock in _imports_in_other_threads():
            # Each part new and of its kind: a lock and counts (3.11), an RLock and lists (3.12+).
            rlock = isinstance(lock.lock, _thread.RLock)
            lock.lock = _thread.RLock() if rlock else _thread.allocate_lock()
            lock.wakeup = _thread.allocate_lock()
            lock.owner, lock.count, lock.waiters = None, type(lock.count)(), type(lock.waiters)()
            module = sys.modules.get(name)
            if getattr(getattr(module, "__spec__", None), "_initializing", False):
                forgotten.append((name, sys.modules.pop(name)))
        if forgotten:
            sys.meta_path.insert(0, _Rebind(forgotten))
        from importlib import _bootstrap

        blocking = getattr(_bootstrap, "_blocking_on", None)
        if isinstance(blocking, dict):  # 3.11: the dead threads' entries (3.12+ drops its own)
            for tid in [tid for tid in blocking if tid != me]:
                blocking.pop(tid, None)
    except Exception:  # an interpreter laid out otherwise: nothing to mend
        pass


class _Rebind:
    """A finder in a forked child, first on ``sys.meta_path`` until each package forgotten at the
    fork (``_forget_imports_of_other_threads``) is imported again: it finds the package as the
    other finders do, and has its code run again in its own half-made module (``_Again``).

    A new module did not do: the import system binds a submodule to its package only when it
    loads it, so the submodules the parent had finished, found in ``sys.modules``, were not bound
    to a new one, whose ``__init__`` then failed on their names (asyncio's raised NameError, out
    of the child's first record, which imports it); and forgotten with it, other modules kept
    the old ones (another class for ``isinstance``, asyncio's C part the old CancelledError)."""

    def __init__(self, packages: list[tuple[str, Any]]) -> None:
        self.packages = dict(packages)

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        old = self.packages.get(name)
        if old is None:
            return None
        for finder in list(sys.meta_path):
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(name, path, target)
            if spec is not None:
                if hasattr(spec.loader, "exec_module"):
                    spec.loader = _Again(spec, old, self)
                return spec
        return None

    def ran(self, name: str) -> None:
        self.packages.pop(name, None)
        if not self.packages:
            with contextlib.suppress(ValueError):
                sys.meta_path.remove(self)


class _Again:
    """The loader of a package forgotten at the fork, for its next import only: its code runs
    again in its half-made module, with what the parent had made there (its finished
    submodules bound to it), and the real loader in its place from then on."""

    def __init__(self, spec: Any, old: Any, finder: _Rebind) -> None:
        self._real, self._spec, self._old, self._finder = spec.loader, spec, old, finder

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._real, attr)

    def create_module(self, spec: Any) -> Any:
        return self._old

    def exec_module(self, module: Any) -> None:
        self._finder.ran(self._spec.name)
        self._spec.loader = module.__loader__ = self._real
        module.__spec__ = self._spec  # the parent's never ends initializing; this one will
        self._real.exec_module(module)


os.register_at_fork(after_in_child=_forget_imports_of_other_threads)
