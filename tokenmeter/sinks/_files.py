"""Owner-only files and directories: everything a sink creates is readable by its owner only.

Modes are passed to ``os.mkdir``/``os.open`` at creation (so no other user can open the file in
between) and set again with ``chmod`` in case a restrictive-looking umask is not in effect. Files
and directories that already exist are left as their owner configured them.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["ensure_private_dir", "open_private", "replace_private"]

DIR_MODE = 0o700
FILE_MODE = 0o600


def ensure_private_dir(directory: Path) -> None:
    """Create ``directory`` and any missing parents, each with mode 0o700."""
    missing: list[Path] = []
    current = directory
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for path in reversed(missing):
        try:
            os.mkdir(path, DIR_MODE)
        except FileExistsError:  # another process created it first
            continue
        os.chmod(path, DIR_MODE)


def open_private(path: Path, flags: int) -> int:
    """``os.open`` that creates a missing file with mode 0o600; returns the descriptor."""
    try:
        return os.open(path, flags | os.O_CLOEXEC)
    except FileNotFoundError:
        pass
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    except FileExistsError:  # another process created it between our two calls
        return os.open(path, flags | os.O_CLOEXEC)
    os.fchmod(fd, FILE_MODE)
    return fd


def replace_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + rename) with mode 0o600.

    Readers and a process killed half-way see the old or the new content, never a mix.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)
