"""Where command output goes: stdout, or an owner-only file named by ``-o``.

Text from the data may hold lone surrogates (JSON can spell ``"\\ud800"``), which no encoder
accepts, control characters (a model name holding ``ESC ]0;...`` would retitle the reader's
terminal, ``ESC [2J`` clear it, a CR overwrite the line) and bidirectional overrides (a session
named ``s`` RLO ``gnp.exe`` shows as ``sexe.png`` in a browser, an editor or a bidi terminal):
all are replaced by U+FFFD here, at the one place text leaves the program. One character for
one, so tables stay aligned. CSV, which carries the exact text, keeps its control characters in a
file or a pipe.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

from tokenmeter._format import SHOWN_AS_REPLACEMENT, char_class, one_line
from tokenmeter.cli._errors import CliError

__all__ = [
    "FORMATS",
    "one_line",
    "printable",
    "refuse_overwriting",
    "stdout_failed",
    "write_output",
]

#: The report formats (``--format``), each rendered by ``_report``.
FORMATS = ("table", "markdown", "json", "csv", "html")

_SURROGATE = re.compile("[\ud800-\udfff]")
_UNPRINTABLE = re.compile(char_class(SHOWN_AS_REPLACEMENT))


def printable(text: str) -> str:
    """``text`` with every lone surrogate, control character (but tab and newline) and bidi
    override replaced by U+FFFD: it can be encoded, and is shown as it is stored, not obeyed."""
    return _UNPRINTABLE.sub("\ufffd", text)


#: The markdown journal beside the data: ``journal/token_usage.md`` and a page per session.
_JOURNAL_DIR = "journal"
_JOURNAL_USAGE = "token_usage.md"
_JOURNAL_SESSIONS = "sessions"
#: How recorded data begins: a SQLite database, or a page of the markdown journal (whose
#: first line an editor may have put a byte order mark before).
_DATA_HEADERS = (
    b"SQLite format 3\x00",
    b"<!-- tokenmeter-journal",
    b"\xef\xbb\xbf<!-- tokenmeter-journal",
)


def refuse_overwriting(output: str | None, data: Path, option: str = "-o") -> None:
    """``-o`` (``option``) naming the file being read (``usage.db``, through a link too), or
    another file of recorded data (any SQLite database, JSONL file of records or page of the
    markdown journal; ``usage.jsonl``, ``alerts.jsonl``, ``journal/token_usage.md``, the automatic
    ``reports/usage_report_*.md``... beside the data or in the configured directory; the
    configured workflow state file) would replace it with the report: a usage error, before
    anything is read. So is one of those names before it exists: a report written as
    ``usage.db`` beside ``usage.jsonl`` was read as the data next time (``--source DIR`` takes
    ``usage.db`` first), and the library's SQLite sink refused every record for it."""
    if output is None:
        return
    try:
        same = os.path.samefile(output, data)
    except OSError:  # the output does not exist yet (or the data is not a local file)
        same = False
    if same:
        raise CliError(
            f"{option} {output} is the usage data being read: write the report to another file",
            exit_code=2,
        )
    if _recorded_data(Path(output), data):
        held = "holds recorded" if os.path.lexists(output) else "names a file of"
        raise CliError(
            f"{option} {output} {held} tokenmeter data: write the report to another file",
            exit_code=2,
        )


def _recorded_data(output: Path, data: Path) -> bool:
    try:
        folder = data if data.is_dir() else data.parent
        # By its name and by the name of what it links to (``my-report.csv`` -> alerts.jsonl).
        named = [output, Path(os.path.realpath(output))] if os.path.islink(output) else [output]
        if any(_kept_file(name, folder) for name in named):
            return True
        if not output.is_file():
            return False
        with output.open("rb") as file:
            if file.read(max(map(len, _DATA_HEADERS))).startswith(_DATA_HEADERS):
                return True
        return _starts_with_a_record(output)
    except (OSError, RuntimeError):  # RuntimeError: a loop of links (Python 3.11, 3.12)
        return False


def _kept_file(output: Path, folder: Path) -> bool:
    """Whether ``output`` is one of the files tokenmeter keeps, by the settings the library
    writes by: those beside the data read (``folder``) and in the configured directory (a
    report of the demo's data written over ``.tokenmeter/usage.jsonl``), and the configured
    workflow state file (its ``TOKEN_TRACKING`` lines were replaced by the report). Settings
    that cannot be read leave only ``folder``'s: a source named is read whatever they say."""
    from tokenmeter._config import load_settings

    try:
        settings = load_settings()
    except ValueError:
        return _data_file_name(output, folder)
    state_file = settings.state_file
    return (
        _data_file_name(output, folder)
        or _data_file_name(output, settings.directory)
        or (state_file is not None and _same_file(output, state_file))
    )


def _starts_with_a_record(output: Path) -> bool:
    """Whether the first line of ``output`` is a record: a JSONL sink's file of any name (the
    example's ``example-usage.jsonl``)."""
    from tokenmeter.cli._source import MAX_LINE_BYTES, parse_record

    with output.open("rb") as file:
        return parse_record(file.readline(MAX_LINE_BYTES)) is not None


def _data_file_name(output: Path, folder: Path) -> bool:
    """Whether ``output`` is where tokenmeter keeps data beside ``folder``, whether or not it
    exists yet: a report there is data corrupted (the journal sink refuses every record for a
    ``token_usage.md`` that is not its journal; a usage report already there is never written
    again)."""
    from tokenmeter._config import DATA_FILES  # a report written over one destroys it
    from tokenmeter._reports import REPORTS_DIR, is_report_name
    from tokenmeter.cli._source import DEMO_STATE_FILE

    journal = folder / _JOURNAL_DIR
    beside = _same_folder(output.parent, folder)
    return (
        (beside and (output.name in DATA_FILES or output.name == DEMO_STATE_FILE))
        or (output.name == _JOURNAL_USAGE and _same_folder(output.parent, journal))
        or (output.suffix == ".md" and _same_folder(output.parent, journal / _JOURNAL_SESSIONS))
        or (is_report_name(output.name) and _same_folder(output.parent, folder / REPORTS_DIR))
    )


def _same_file(one: Path, other: Path) -> bool:
    """The same regular file, through a link too, or the same place before either exists. A
    device is never one (``-o /dev/stdout`` with the state file ``/dev/stderr``: one terminal)."""
    try:
        if any(os.path.exists(path) and not os.path.isfile(path) for path in (one, other)):
            return False
        try:
            return os.path.samefile(one, other)
        except OSError:
            return one.resolve() == other.resolve()
    except (OSError, RuntimeError):  # RuntimeError: a loop of links (Python 3.11, 3.12)
        return False


def _same_folder(one: Path, other: Path) -> bool:
    """The same folder, whether or not it exists yet: by resolved path (links followed), which
    needs neither folder made (on a first run ``.tokenmeter/`` is made by the tests the report
    then replaced the records of), and, when both exist, as one folder under two names (mounted
    twice). False when neither tells (a folder that may not be searched): that one comparison
    fails, never the whole check of ``-o``."""
    from tokenmeter.sinks._files import absolute

    try:
        if os.path.realpath(absolute(one)) == os.path.realpath(absolute(other)):
            return True
        return os.path.samefile(one, other)
    except (OSError, ValueError, RuntimeError):  # RuntimeError: a loop of links (3.11, 3.12)
        return False


def write_output(text: str | Iterable[str], path: str | None, *, exact: bool = False) -> None:
    """``text`` (or its pieces, written as they come) to ``path`` or stdout; ``exact`` text
    (CSV) keeps its control characters unless stdout is a terminal."""
    pieces = [text] if isinstance(text, str) else text
    if exact and (path is not None or not sys.stdout.isatty()):
        clean: Iterable[str] = (_SURROGATE.sub("\ufffd", piece) for piece in pieces)
    else:
        clean = (printable(piece) for piece in pieces)
    if path is None:
        try:
            for piece in clean:
                sys.stdout.write(piece)
            sys.stdout.flush()
        except BrokenPipeError:
            raise  # the reader went away: ``main`` ends quietly
        except OSError as exc:
            raise stdout_failed(exc) from None
        return
    target = Path(path)
    try:
        _write_file(target, clean)
    except OSError as exc:
        raise CliError(f"cannot write {target}: {exc.strerror or exc}") from None


def _write_file(target: Path, text: Iterable[str]) -> None:
    """``text``'s pieces into a new file beside ``target`` (the file a link names), renamed over
    it once whole: a write that fails (a full disk, Ctrl-C) leaves ``target`` as it was, never
    half a report. A new report is owner-only; one written over a regular file keeps that
    file's mode and, where allowed, its group (``_keep_access``). What is there and is not a
    regular file (``/dev/stdout``, a FIFO) is written to as it is."""
    try:
        existing: os.stat_result | None = os.stat(target)
    except FileNotFoundError:
        existing = None
    if existing is not None and not stat.S_ISREG(existing.st_mode):
        with open(target, "w", encoding="utf-8", newline="") as handle:
            handle.writelines(text)
        return
    real = Path(os.path.realpath(target))
    fd, temporary = tempfile.mkstemp(prefix=f".{real.name}.", suffix=".tmp", dir=real.parent)
    try:
        if existing is not None:
            _keep_access(fd, existing)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.writelines(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, real)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _keep_access(fd: int, existing: os.stat_result) -> None:
    """Give the file open at ``fd`` the mode of the file it replaces and, where the user may
    (a group they are in), its group: a report refreshed by cron and served by a web server
    (``chmod 644``) became 0600, as ``mkstemp`` makes files, and was no longer served."""
    if existing.st_gid != os.fstat(fd).st_gid:
        with contextlib.suppress(OSError):  # not a group of this user's: the mode is kept
            os.fchown(fd, -1, existing.st_gid)
    os.fchmod(fd, stat.S_IMODE(existing.st_mode))  # after: a change of group may clear bits


def stdout_failed(exc: OSError) -> CliError:
    """The error for stdout that cannot be written (a full disk, an I/O error). What is still
    buffered goes to /dev/null instead, so that Python's flush at exit does not fail again."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return CliError(f"cannot write to standard output: {exc.strerror or exc}")
