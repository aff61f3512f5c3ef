"""Owner-only files and directories, and writes that are whole or fail.

Modes are passed to ``os.mkdir``/``os.open`` at creation (so no other user can open the file in
between) and set again with ``chmod`` in case a restrictive-looking umask is not in effect. Files
and directories that already exist are left as their owner configured them.

``os.write``/``os.pwrite`` may write fewer bytes than asked: on a full disk (ENOSPC), at the file
size limit (EFBIG) or on a signal. A sink that ignored the count would leave a torn record, and a
later ``ftruncate`` or ``pwrite`` past the end would fill the gap with NUL bytes. ``write_all``
and ``pwrite_all`` go on until every byte is written or raise, and each write starts where the
previous one ended, so they never leave a hole.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from tokenmeter._models import short_repr

__all__ = [
    "absolute",
    "append_line",
    "append_whole",
    "directory_path",
    "ensure_private_dir",
    "file_path",
    "make_private",
    "open_private",
    "pread_exact",
    "pwrite_all",
    "refuse_irregular",
    "remove_temporaries",
    "replace_private",
    "same_file",
    "write_all",
    "wrong_kind",
]

DIR_MODE = 0o700
FILE_MODE = 0o600


#: The longest file name (one path component) Linux, macOS and Windows file systems take, and
#: the longest path Linux takes: past them every open fails, so every record would be lost.
NAME_MAX = 255
PATH_MAX = 4096


def unnameable(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` can name no file on any file system (None if it can): a lone surrogate
    (not encodable), or a name or a path longer than any file system takes."""
    try:
        encoded = os.fsencode(path)
    except UnicodeEncodeError:
        return "cannot name a file"
    if len(encoded) >= PATH_MAX:
        return f"is longer than any file system takes ({PATH_MAX} bytes)"
    if any(len(part) > NAME_MAX for part in encoded.split(os.sep.encode())):
        return f"has a name longer than any file system takes ({NAME_MAX} bytes)"
    return None


def absolute(path: str | os.PathLike[str], name: str = "path") -> Path:
    """``path`` made absolute against the working directory now, so that a process changing
    directory later (a daemon going to "/") goes on writing to the same file. Left relative when
    the working directory was removed: opening it then fails, and says so, at each write. A
    leading ``~`` is the home folder, as in the ``directory`` setting (not a directory named
    ``~`` in the working directory).

    ValueError naming the argument ``name`` for what cannot name a file (None, bytes, a NUL),
    rather than failing every write later.
    """
    try:
        found = Path(os.path.expanduser(path))
    except TypeError:
        found = None
    if found is None or "\x00" in str(found):
        raise ValueError(f"{name} must be a file system path, got {short_repr(path)}")
    fault = unnameable(found)
    if fault is not None:
        raise ValueError(f"{name} {fault}, got {short_repr(path)}")
    try:
        return found.absolute()
    except OSError:
        return found


_KINDS = (
    (stat.S_ISREG, "a regular file"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a device"),
    (stat.S_ISBLK, "a device"),
    (stat.S_ISSOCK, "a socket"),
)


def wrong_kind(path: str | os.PathLike[str], wanted: Literal["file", "directory"]) -> str | None:
    """What is at ``path`` ("a directory", "a FIFO", "a device"...) when it is not what a sink
    needs there (a regular file, or a directory; links followed), else None: nothing there yet,
    the wanted kind, or nothing can be told (not searchable: the first write says why). A path
    under a file (``notes.txt/usage``) or a loop of links can never be made, nor written in.
    Every write to the wrong kind fails later on the writer thread, or, into a FIFO nobody
    reads, seems to succeed while the records are lost."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return _NEVER_MADE.get(exc.errno or 0)
    except ValueError:
        return None
    if (stat.S_ISREG if wanted == "file" else stat.S_ISDIR)(mode):
        return None
    return _kind(mode)


#: Why nothing can ever be at a path, by the errno of its ``stat``: accepted as "nothing there
#: yet", a directory under a regular file was never made, and every record was lost (not even
#: set aside: the quarantine file is in that directory).
_NEVER_MADE = {errno.ENOTDIR: "a path under a file", errno.ELOOP: "a loop of symbolic links"}


def _kind(mode: int) -> str:
    return next((kind for is_kind, kind in _KINDS if is_kind(mode)), "not a file")


def refuse_irregular(fd: int) -> None:
    """OSError (EINVAL, saying what it is) unless ``fd``, opened with ``O_NONBLOCK`` (else
    opening a FIFO waits for its other end), is a regular file. A file put in a sink's place
    after it was checked (a FIFO made there for a log shipper) held its writer thread for
    ever: a read waits for a writer, a write for a reader once the pipe's buffer is full."""
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        raise OSError(errno.EINVAL, f"{_kind(mode)}, not a regular file")


def file_path(path: str | os.PathLike[str], name: str = "path") -> Path:
    """``absolute(path)`` for a file a sink makes or writes (absent, or a regular file there);
    ValueError naming the argument ``name`` for an empty path or another kind of file."""
    return _checked(path, name, "file")


def directory_path(path: str | os.PathLike[str], name: str = "directory") -> Path:
    """``absolute(path)`` for a directory a sink makes or writes in (absent, or a directory);
    ValueError naming the argument ``name`` for an empty path or another kind of file."""
    return _checked(path, name, "directory")


def _checked(path: str | os.PathLike[str], name: str, wanted: Literal["file", "directory"]) -> Path:
    if isinstance(path, str) and not path.strip():  # "" is "." to Path: the working directory
        raise ValueError(f"{name} must not be empty")
    found = absolute(path, name)
    kind = wrong_kind(found, wanted)
    if kind is not None:
        raise ValueError(
            f"{name} must be a {wanted} or nothing yet, got {kind}: {short_repr(str(found))}"
        )
    return found


def ensure_private_dir(directory: Path) -> None:
    """Create ``directory`` and any missing parents, each with mode 0o700. One that is a
    symbolic link to a directory not made yet (``ln -s /mnt/data/tokenmeter .tokenmeter``) is
    made where the link points (``_link_target``), as the sinks' files are."""
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
        except FileExistsError:
            target = _link_target(path)
            if target is not None:
                # mkdir never follows a link: every write under it failed, the quarantine
                # file's too, and every record was lost.
                ensure_private_dir(target)
            continue  # else another process created it first
        os.chmod(path, DIR_MODE)


def _link_target(path: Path) -> Path | None:
    """Where ``path`` points when it is a symbolic link to nothing yet, else None (a loop of
    links, which can never be made, included)."""
    if not os.path.islink(path) or os.path.exists(path):
        return None
    target = Path(os.path.realpath(path))
    return None if os.path.islink(target) else target


def open_private(path: Path, flags: int) -> int:
    """``os.open`` that creates a missing file with mode 0o600; returns the descriptor. A
    symbolic link to a file not made yet (``usage.db`` linked to another disk before the first
    run) has that file made where it points, as ``open(path, "a")`` and ``sqlite3`` do: ``O_EXCL``
    never follows a link, and every write to such a sink failed."""
    try:
        return os.open(path, flags | os.O_CLOEXEC)
    except FileNotFoundError:
        pass
    with contextlib.suppress(FileExistsError):
        return _create_private(path, flags)
    target = _link_target(path)
    if target is not None:
        with contextlib.suppress(FileExistsError):
            return _create_private(target, flags)
    return os.open(path, flags | os.O_CLOEXEC)  # another process created it between our calls


def make_private(path: Path) -> os.stat_result:
    """Create the file ``path`` with mode 0o600 if it is missing (where a symbolic link to a
    file not made yet points, as ``open_private``), and return its status, without ever holding
    a descriptor on it: closing any descriptor on a file drops every POSIX lock this process
    holds on it, SQLite's own on other threads' connections included. Another process then took
    the database for unused: it checkpointed and deleted the WAL under those connections (the
    budget ledger's reservations lost, "disk I/O error"). What to open with SQLite. A file this
    process may not write is refused (PermissionError), as opening it for writing was: SQLite
    would open it read-only, and keep it so once it is writable again."""
    try:
        _make_file(path)
    except FileExistsError:
        target = _link_target(path)
        if target is not None:
            with contextlib.suppress(FileExistsError):
                _make_file(target)
    info = os.stat(path)
    if stat.S_ISREG(info.st_mode) and not _may_write(path):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
    return info


def _may_write(path: Path) -> bool:
    """Whether this process may read and write ``path``, as an open() would decide: by its
    effective user (a setuid wrapper, a daemon after seteuid), not its real one."""
    if os.access in os.supports_effective_ids:
        return os.access(path, os.R_OK | os.W_OK, effective_ids=True)
    return os.access(path, os.R_OK | os.W_OK)


def _make_file(path: Path) -> None:
    """Create the empty regular file ``path``, mode 0o600, without opening it where the system
    allows (``mknod``; FileExistsError if anything is there)."""
    try:
        os.mknod(path, stat.S_IFREG | FILE_MODE)
    except FileExistsError:
        raise
    except (OSError, AttributeError):  # no mknod of regular files here (macOS, Windows)
        os.close(_create_private(path, os.O_RDWR))
        return
    os.chmod(path, FILE_MODE)  # what the umask took


def _create_private(path: Path, flags: int) -> int:
    """Create the file ``path`` with mode 0o600 (FileExistsError if anything is there)."""
    fd = os.open(path, flags | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    return fd


def replace_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + rename) with mode 0o600, or the mode
    of the file it replaces (left as its owner configured it: a journal shared with a team).

    Readers and a process killed half-way see the old or the new content, never a mix; when a
    write fails (disk full) the old file is left as it was and the temporary file is removed.
    The temporary file is always a new one (``O_EXCL``): whatever is at its name, which anyone
    who may write in the directory can guess, is removed first, never followed (a symbolic link
    planted there would have the file it points to overwritten).

    ``path`` a symbolic link (a journal kept in a notes vault, linked into its directory): the
    file it points to is replaced, the temporary file made beside it. Renamed over the link, the
    copy took its place and the linked file stopped being updated. (``remove_temporaries`` of
    the link's directory does not see the temporary file a killed process left there.)
    """
    if os.path.islink(path):
        path = Path(os.path.realpath(path))
        ensure_private_dir(path.parent)  # a link into a folder not made yet: made, as a file's
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    try:
        mode = os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        mode = FILE_MODE
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, mode)
        write_all(fd, data)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def remove_temporaries(directory: Path, names: str) -> None:
    """Remove the temporary files (``.NAME.PID.tmp``) that ``replace_private`` left in
    ``directory`` for the files whose names match the regular expression ``names``, when its
    process was killed before the rename: each is as big as its file, and never used again (a
    later process writes one of its own pid). Only for a caller holding the lock that every
    writer of those files takes, so that none of them is being written; best effort."""
    temporary = re.compile(rf"\.(?:{names})\.[0-9]+\.tmp")
    try:
        found = [entry.name for entry in os.scandir(directory)]
    except OSError:
        return
    for name in found:
        if temporary.fullmatch(name):
            with contextlib.suppress(OSError):
                os.unlink(directory / name)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """``os.write`` until all of ``data`` is written; an error after a short write propagates."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:  # not expected of a regular file; never loop forever on it
            raise OSError(errno.ENOSPC, "write made no progress")
        view = view[written:]


def append_whole(fd: int, data: bytes) -> None:
    """Append ``data`` as a unit (the caller holds a lock on the file, which ``fd`` has open for
    reading and appending): after a torn line, and never partly (what a failed write left is cut
    off again)."""
    start = os.fstat(fd).st_size
    if start and os.pread(fd, 1, start - 1) != b"\n":
        data = b"\n" + data
    try:
        write_all(fd, data)  # a short write is continued; an error after one is undone below
    except BaseException:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, start)
        raise


def append_line(
    path: Path,
    data: bytes,
    unless: Callable[[int], bool] | None = None,
    regular_only: bool = False,
) -> bool:
    """Append ``data`` to the file at ``path`` (created owner-only) with ``append_whole``, under
    an exclusive lock: other processes append to the same state file and alerts.jsonl.
    ``unless(fd)``, called under the lock, may find the file has what it needs already (another
    process wrote it): nothing is appended then, and False returned. ``regular_only``: OSError
    for what is not a regular file (``refuse_irregular``): a file read back (alerts.jsonl); the
    state file may be a pipe or a terminal (``/dev/stderr`` in a container)."""
    ensure_private_dir(path.parent)
    fd = open_private(path, os.O_RDWR | os.O_APPEND | (os.O_NONBLOCK if regular_only else 0))
    try:
        if regular_only:
            refuse_irregular(fd)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if unless is not None and unless(fd):
                return False
            append_whole(fd, data)
            return True
        finally:
            # Not left to close(): a child forked meanwhile holds a copy of the descriptor, and
            # the lock would last as long as that child (every later append would wait for it).
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """``os.pwrite`` all of ``data`` at ``offset``, or raise; never writes past the end of file.

    Writing past the end would leave the bytes in between as a hole that reads as NUL bytes, so
    an ``offset`` beyond the current size is a bug in the caller and refused.
    """
    if offset > os.fstat(fd).st_size:
        raise ValueError(f"pwrite at {offset} would leave a hole past the end of the file")
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if written <= 0:
            raise OSError(errno.ENOSPC, "pwrite made no progress")
        view = view[written:]
        offset += written


def pread_exact(fd: int, size: int, offset: int) -> bytes:
    """``size`` bytes from ``offset``; raise if the file ends first (it was truncated under us)."""
    chunks = []
    while size:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            raise OSError(errno.EIO, f"file ends {size} bytes short of what was expected")
        chunks.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)


FileId = tuple[int, int]


def file_id(info: os.stat_result) -> FileId:
    """What tells one file from another: its device and inode."""
    return (info.st_dev, info.st_ino)


def still_names(path: Path, known: FileId) -> bool:
    """Whether ``path`` still names the file ``known`` (not deleted or renamed away since)."""
    try:
        return file_id(os.stat(path)) == known
    except FileNotFoundError:
        return False


def same_file(one: str | os.PathLike[str], other: str | os.PathLike[str]) -> bool:
    """Whether two existing paths name one file (a hard link, a folder mounted twice): the
    names differ, so comparing resolved paths misses it. A path missing or unreadable: False."""
    try:
        return os.path.samefile(one, other)
    except (OSError, ValueError):
        return False
