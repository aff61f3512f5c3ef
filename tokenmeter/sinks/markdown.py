"""Markdown journal sink: human-readable usage files (SPEC §5) at O(models + batch) per batch.

Files under ``directory``:

- ``token_usage.md``: summary table per provider/model with a **TOTAL** row and the total
  estimated cost, then the detailed log of every call.
- ``sessions/<session id>.md``: session information, the table of its calls, the session summary
  and, once the session has ended, the completion section (averages, cost breakdown, efficiency).

How a document stays cheap to update: every file is ``head | body | tail``.

- The head (title, summary or session information) is rewritten in place. It is padded with an
  invisible HTML comment to a reserved size, so rewriting it never moves the rest of the file;
  when it outgrows the reservation the file is rewritten once with twice the room (rare).
- The body (the table of calls) is append-only: new rows are written where it ends.
- The tail (session summary and completion) is rewritten after the new rows.

The running totals live in the document itself, as JSON in an HTML comment on its first line,
together with the head size, the body's end offset and a checksum of all three. So a new process
continues the totals, nothing else has to be kept in sync, and deleting a file simply starts it
afresh. Writers in several processes take turns through ``flock`` on ``directory/.journal.lock``.

A batch spread over several files can fail after some of them took it (a session file on a full
disk); the caller then retries its records, whole and later one at a time, and the files that
took them must not count them twice. Each document remembers a digest of the last batch it took,
which catches the same batch retried (also by a new process). Other groupings are caught by the
sink: after a failed ``write`` it remembers, per file, the ids that file took (at most
``_REMEMBER`` per file, forgotten once a ``write`` of them succeeds) and the digest of the batch
it was writing when it failed, which is in the file exactly when the file's digest is that one.
Its next writes leave those records out of those files. Nothing of this is kept or looked up
while writes succeed.

A full disk must not tear a document: a batch is written whole or not at all, and the sink raises
so that the caller retries it. Every write goes on until all its bytes are written or raises (a
short write is not success), and a batch is written in this order:

1. The bytes that make the file longer (the end of: new rows + tail + a copy of the new first
   line) are written at the current end of file. This is the only step that needs new disk space
   (ENOSPC, EFBIG); when it fails, the file is truncated back to its old size, unchanged.
2. The rest overwrites the old tail in place, and a file that got shorter is truncated.
3. The head is rewritten in place, its first line last. Until then the first line still records
   the old end and totals, so a writer that fails or is killed before it leaves rows past the
   recorded end, which the next writer (the retry) overwrites.

``ftruncate`` never extends a file and nothing is written past its end, so no hole (NUL bytes) can
appear. Steps 2 and 3 overwrite bytes that exist, which needs no new space on most filesystems.
Should they fail part-way anyway (copy-on-write filesystems, I/O errors), the first line is either
the old one (the retry writes the batch again) or not whole, which its checksum shows: then the
copy at the end of the file, written before the head and describing the same state, is used, and
the retry only writes the head again. A document that must grow its head is written whole to a
temporary file and renamed over the old one, which a failure leaves untouched; the temporary
file of a writer killed before the rename is removed by the next process that takes the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from tokenmeter._format import fmt_usd
from tokenmeter._format import markdown_text as _md
from tokenmeter._models import SessionInfo, UsageRecord, _iso
from tokenmeter._totals import OTHER_MODELS, Totals, note_model
from tokenmeter.sinks._files import (
    directory_path,
    ensure_private_dir,
    open_private,
    pread_exact,
    pwrite_all,
    remove_temporaries,
    replace_private,
)

__all__ = ["MarkdownJournalSink", "render_session"]

_MARKER = b"<!-- tokenmeter-journal "
#: What an editor may put before the first line (Windows Notepad, VS Code with its "UTF-8 with
#: BOM" encoding): a UTF-8 byte order mark.
_BOM = b"\xef\xbb\xbf"
_COPY_MARKER = b"\n<!-- tokenmeter-journal-copy "  # after a blank line: its own HTML block
_SUMMED = re.compile(rb"(.*) sha256=([0-9a-f]{16}) -->", re.DOTALL)
_MIN_HEAD = 4096
_PAD_MIN = len("<!---->\n")
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class MarkdownJournalSink:
    """Writes ``token_usage.md`` and one file per session under ``directory``."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        # A directory or none yet: anything else failed every write on the writer thread.
        self.directory = directory_path(directory)
        self.usage_path = self.directory / "token_usage.md"
        self.sessions_dir = self.directory / "sessions"
        #: Files that a failed ``write`` left holding some of its records (see the docstring).
        self._taken: dict[Path, _Taken] = {}
        #: The process that removed what killed writers left (see ``_locked``).
        self._swept = 0

    def write(self, records: Sequence[UsageRecord]) -> None:
        if not records:
            return
        by_session: dict[str, list[UsageRecord]] = {}
        for record in records:
            if record.session_id is not None:
                by_session.setdefault(record.session_id, []).append(record)
        files: list[tuple[Path, _Log, Sequence[UsageRecord]]] = [
            (self.usage_path, _UsageLog(), records)
        ]
        for session_id, session_records in by_session.items():
            files.append((self.session_path(session_id), _SessionLog(session_id), session_records))
        done = 0
        with self._locked():
            try:
                for path, log, batch in files:
                    taken = self._taken.get(path)
                    _update(path, log, batch, taken)
                    if taken is not None:
                        taken.commit()
                    done += 1
            except BaseException:
                self._remember_failure(files, done)
                raise
        if self._taken:
            self._forget(records)

    def write_sessions(self, sessions: Sequence[SessionInfo]) -> None:
        if not sessions:
            return
        with self._locked():
            for info in sessions:
                _update(self.session_path(info.id), _SessionLog(info.id, info), [])

    def flush(self) -> None:
        """Nothing to do: ``write`` hands every byte to the OS before it returns."""

    def close(self) -> None:
        """Nothing to release: files are opened per batch (which also makes fork() safe)."""

    def _remember_failure(
        self, files: Sequence[tuple[Path, _Log, Sequence[UsageRecord]]], done: int
    ) -> None:
        """After ``files[done]`` failed: the files before it took their records, it may have."""
        for index, (path, _log, batch) in enumerate(files[: done + 1]):
            taken = self._taken.get(path)
            if taken is None:
                taken = self._taken[path] = _Taken()
                if index == done:  # not filtered: the batch _update was writing is all of it
                    taken.pending = (_batch_digest(batch), tuple(r.id for r in batch))
            if index < done:
                taken.hold(r.id for r in batch)
        excess = len(self._taken) - _REMEMBER_FILES
        if excess > 0:
            # Files of earlier failures are forgotten first, never those of this one (a batch
            # may span more files than the bound): retried in parts, they would count again.
            current = {path for path, _log, _batch in files[: done + 1]}
            for path in [path for path in self._taken if path not in current][:excess]:
                del self._taken[path]

    def _forget(self, records: Sequence[UsageRecord]) -> None:
        """``records`` are in all their files: the caller never hands them again."""
        for path, taken in list(self._taken.items()):
            for record in records:
                taken.held.pop(record.id, None)
            if not taken.held and taken.pending is None:
                del self._taken[path]

    def session_path(self, session_id: str) -> Path:
        """Where the journal of ``session_id`` lives (odd characters are replaced, then hashed)."""
        if _SAFE_ID.fullmatch(session_id):
            name = session_id
        else:
            digest = hashlib.sha256(session_id.encode()).hexdigest()[:12]
            name = f"{re.sub(r'[^A-Za-z0-9._-]', '_', session_id)[:60]}-{digest}"
        return self.sessions_dir / f"{name}.md"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        ensure_private_dir(self.sessions_dir)
        fd = open_private(self.directory / ".journal.lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if self._swept != os.getpid():
                    # Once per process: a writer killed while it rewrote a document left its
                    # temporary file; none is being written by anyone while the lock is held.
                    self._swept = os.getpid()
                    remove_temporaries(self.directory, re.escape(self.usage_path.name))
                    remove_temporaries(self.sessions_dir, r".+\.md")
                yield
            finally:
                # Not left to close(): that releases a flock only with the last descriptor of
                # the open file, and a child forked during the batch keeps a copy of this one.
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


# --- the document mechanics: head | append-only body | tail ------------------------------------


class _Log:
    """What one kind of document renders; ``state`` is the JSON-able running totals."""

    body_intro = ""

    def apply(self, state: dict[str, Any], records: Sequence[UsageRecord]) -> str:
        """Fold ``records`` into ``state``; return the body rows to append for them."""
        raise NotImplementedError

    def head(self, state: dict[str, Any]) -> str:
        raise NotImplementedError

    def tail(self, state: dict[str, Any]) -> str:
        return ""


@dataclass
class _Layout:
    head_size: int = 0  # 0: the document does not exist yet
    end: int = 0  # where the body ends and the tail starts
    state: dict[str, Any] = field(default_factory=dict)
    from_copy: bool = False  # the first line was not whole: the head must be written again
    #: The body found in a document edited by hand (see ``_body_before_tail``), to be written whole
    #: again; None when the document is as its first line describes it.
    edited_body: bytes | None = None


#: How many ids of records that failed writes put in a file the sink remembers per file (a
#: retried batch holds at most the pipeline's 256), and for how many files at most (more while
#: the files of one failed batch are more).
_REMEMBER = 4096
_REMEMBER_FILES = 256


@dataclass
class _Taken:
    """What one file holds of the records of failed writes, so that their retries skip them."""

    held: dict[str, None] = field(default_factory=dict)  # ids, oldest first
    #: The digest and ids of the batch being written when the write failed: the file holds them
    #: if its ``last_batch`` is that digest, which only reading the file tells.
    pending: tuple[str, tuple[str, ...]] | None = None

    def hold(self, ids: Iterable[str]) -> None:
        held = self.held
        held.update(dict.fromkeys(ids))
        for old in list(itertools.islice(held, max(0, len(held) - _REMEMBER))):
            del held[old]

    def missing(self, layout: _Layout, records: Sequence[UsageRecord]) -> list[UsageRecord]:
        """The ``records`` the file described by ``layout`` does not hold."""
        if self.pending is not None:
            digest, ids = self.pending
            if layout.state.get("last_batch") == digest:
                self.hold(ids)
            self.pending = None
        return [r for r in records if r.id not in self.held]

    def commit(self) -> None:
        """The batch being written is in the file."""
        if self.pending is not None:
            self.hold(self.pending[1])
            self.pending = None


def _batch_digest(records: Sequence[UsageRecord]) -> str:
    return hashlib.sha256("\n".join(r.id for r in records).encode()).hexdigest()[:16]


def _update(
    path: Path, log: _Log, records: Sequence[UsageRecord], taken: _Taken | None = None
) -> None:
    """Add ``records`` to the document at ``path``, less those ``taken`` says it holds."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        fd = -1  # _rewrite creates it whole: a failed first batch leaves no file behind
    try:
        layout = _read_layout(fd, path, log) if fd >= 0 else _Layout()
        if taken is not None and records:
            records = taken.missing(layout, records)
            if not records and not layout.from_copy:
                return  # all of them are in this file already
        if records:
            # A batch is spread over several files; when one of them fails the caller retries
            # the whole batch, and the files that already took it must not count it twice.
            batch = _batch_digest(records)
            if taken is not None:
                taken.pending = (batch, tuple(r.id for r in records))
            if layout.state.get("last_batch") == batch:
                if not layout.from_copy:
                    return
                records = ()  # counted already; only the head has to be written again
            layout.state["last_batch"] = batch
        rows = log.apply(layout.state, records).encode()
        head = log.head(layout.state).encode()
        tail = log.tail(layout.state).encode()
        meta = _meta(layout.head_size, layout.end + len(rows), layout.state)
        first_line = _MARKER + meta
        if (
            layout.head_size
            and layout.edited_body is None
            and len(first_line) + len(head) + _PAD_MIN <= layout.head_size
        ):
            new_head = _pad(first_line + head, layout.head_size)
            data = rows + tail + _COPY_MARKER + meta
            _write_in_place(fd, layout.end, data, new_head, len(first_line))
            return
        if layout.edited_body is not None:
            body = layout.edited_body
        elif layout.head_size:
            body = pread_exact(fd, layout.end - layout.head_size, layout.head_size)
        else:
            body = log.body_intro.encode()
    finally:
        if fd >= 0:
            os.close(fd)
    _rewrite(path, layout.state, head, body + rows, tail)


def _write_in_place(fd: int, end: int, data: bytes, head: bytes, first_line: int) -> None:
    """Put ``data`` (rows, tail, copy of the first line) at ``end``, then ``head`` at 0.

    In the order the module docstring explains: first the part that grows the file, undone if it
    fails; then what overwrites existing bytes; the head last, and its first ``first_line``
    bytes, which commit the batch, after the rest of it. Whatever write fails, the first line is
    then the old one (the batch is not in the file) or not whole (the copy at the end describes
    the file); either way the retry writes the head again.
    """
    size = os.fstat(fd).st_size
    overlap = size - end  # the old tail, and whatever a failed or killed writer left after it
    if len(data) > overlap:
        try:
            pwrite_all(fd, memoryview(data)[overlap:], size)
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)  # shrinks back: the old document, byte for byte
            raise
        pwrite_all(fd, memoryview(data)[:overlap], end)
    else:
        pwrite_all(fd, data, end)
        os.ftruncate(fd, end + len(data))  # shrinks (or keeps) the file, never extends it
    pwrite_all(fd, memoryview(head)[first_line:], first_line)
    pwrite_all(fd, memoryview(head)[:first_line], 0)


def _rewrite(path: Path, state: dict[str, Any], head: bytes, body: bytes, tail: bytes) -> None:
    """Write the whole document with a bigger head reservation (new file, or the head grew)."""
    head_size = _MIN_HEAD
    while True:
        meta = _meta(head_size, head_size + len(body), state)
        if 2 * (len(_MARKER) + len(meta) + len(head) + _PAD_MIN) <= head_size:
            break
        head_size *= 2
    document = _pad(_MARKER + meta + head, head_size) + body + tail + _COPY_MARKER + meta
    replace_private(path, document)


def _meta(head_size: int, end: int, state: dict[str, Any]) -> bytes:
    """The first line after its marker: layout and totals as JSON, with their checksum."""
    meta = json.dumps({"head": head_size, "end": end, "state": state}, separators=(",", ":"))
    # ">" occurs only inside JSON strings, where \u003e means the same: "-->" cannot end it.
    data = meta.replace(">", "\\u003e").encode()
    return data + b" sha256=" + _digest(data) + b" -->\n"


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).hexdigest()[:16].encode()


def _parse_meta(line: bytes, *, legacy: bool) -> _Layout | None:
    """The layout in ``line`` (after its marker, without the newline); None if it is not whole.

    ``legacy``: accept a line without a checksum, as written before there was one.
    """
    match = _SUMMED.fullmatch(line)
    if match is not None:
        data = match.group(1)
        if _digest(data) != match.group(2):
            return None
    elif legacy and line.endswith(b" -->"):
        data = line[:-4]
    else:
        return None
    try:
        meta = json.loads(data)
        return _Layout(int(meta["head"]), int(meta["end"]), dict(meta["state"]))
    except (ValueError, KeyError, TypeError):
        return None


def _pad(head: bytes, size: int) -> bytes:
    return head + b"<!--" + b" " * (size - len(head) - _PAD_MIN) + b"-->\n"


def _read_layout(fd: int, path: Path, log: _Log) -> _Layout:
    size = os.fstat(fd).st_size
    if size == 0:
        return _Layout()
    chunk = _MIN_HEAD  # the first line is inside the head, which is at least this big
    while True:
        data = os.pread(fd, chunk, 0)
        if data.startswith(_BOM):
            return _read_resaved(fd, path, log)
        if not data.startswith(_MARKER):
            # Every journal starts so, even one whose first line a write left torn (the marker
            # is the same in the old line and the new): this file is someone else's, and is
            # neither read whole looking for a first line nor for its copy at the end.
            raise _not_a_journal(path)
        newline = data.find(b"\n")
        if newline >= 0 or len(data) < chunk:
            break
        chunk *= 4
    if data[newline - 1 : newline] == b"\r":
        return _read_resaved(fd, path, log)
    layout = None
    if newline >= 0:
        layout = _parse_meta(data[len(_MARKER) : newline], legacy=True)
    if layout is not None and newline < layout.head_size:
        trailer = log.tail(layout.state).encode() + _COPY_MARKER + data[len(_MARKER) : newline + 1]
        if layout.head_size <= layout.end and os.pread(fd, len(trailer), layout.end) == trailer:
            # As the first line describes it (bytes a failed writer left after the trailer are
            # written over). Checked, not trusted: after an edit of the body the first line's
            # end is inside the text, and new rows were written over the user's.
            return layout
        at, text = _trailer_at(fd, size, trailer)
        if at > 0:
            # The first line's batch left this trailer, but not where the first line says: the
            # file was saved from an editor with a line added or shortened (maybe without its
            # last line end, or with text typed after the closing comment, which is not kept).
            layout.edited_body = _body_before_tail(text[:at])
            if layout.edited_body is None:
                raise ValueError(f"{path}: journal was edited; move the file away")
            return layout
    copy = _read_copy(fd, size, log)
    if copy is not None:
        return copy
    if layout is not None and newline < layout.head_size <= layout.end <= size:
        # A writer failed part-way through overwriting the trailer (step 2): the first line is
        # the old one, and the retry writes the batch again where it says.
        return layout
    if layout is None:
        raise _not_a_journal(path)
    raise ValueError(f"{path}: journal was truncated or edited; move the file away")


#: The end of the head's padding, the first one of these after the first line: the head's text
#: has no "<!--" (recorded text is escaped), and the first line's comment has a marker.
_HEAD_END = re.compile(rb"<!-- *-->\n")


def _trailer_at(fd: int, size: int, trailer: bytes) -> tuple[int, bytes]:
    """Where the last ``trailer`` (tail, copy comment) is in the document, and its text; -1 if
    it is not there. Read whole: only a document edited by hand (or a failed writer's, which
    the copy describes) gets here, and an edited one is written whole again anyway. An editor
    may have left out the last line end: the trailer's own is then added back."""
    text = pread_exact(fd, size, 0)
    if not text.endswith(b"\n"):
        text += b"\n"
    return text.rfind(trailer), text


def _body_before_tail(data: bytes) -> bytes | None:
    """The body of a document edited by hand, ``data`` up to where its tail starts: what lies
    between the end of the head and there, as edited. None when the head's end is not found."""
    head_end = _HEAD_END.search(data, data.find(b"\n") + 1)
    if head_end is None:
        return None
    body = data[head_end.end() :]
    return body if not body or body.endswith(b"\n") else body + b"\n"


def _read_resaved(fd: int, path: Path, log: _Log) -> _Layout:
    """The layout of a journal an editor saved with CRLF line ends or a UTF-8 BOM (Windows
    editors, VS Code with ``files.eol``, a git checkout with ``core.autocrlf``): read as the
    text tokenmeter wrote, with LF line ends and no BOM, and then as a document edited by hand,
    which ``_update`` writes again whole, in LF. Such a journal was refused for good as "not a
    tokenmeter journal", and every later record went to the quarantine file instead.

    Recorded text never holds a CR (``markdown_text`` replaces control characters), so every
    CRLF is a line end the editor wrote. Text after the closing copy comment is not kept, as in
    a journal saved with LF."""
    data = pread_exact(fd, os.fstat(fd).st_size, 0).removeprefix(_BOM).replace(b"\r\n", b"\n")
    if not data.endswith(b"\n"):  # the editor left out the last line end
        data += b"\n"
    newline = data.find(b"\n")
    layout = None
    if data.startswith(_MARKER) and newline >= 0:
        layout = _parse_meta(data[len(_MARKER) : newline], legacy=True)
    if layout is None:
        raise _not_a_journal(path)
    trailer = log.tail(layout.state).encode() + _COPY_MARKER + data[len(_MARKER) : newline + 1]
    at = data.rfind(trailer)
    body = _body_before_tail(data[:at]) if at > 0 else None
    if body is None:
        raise ValueError(f"{path}: journal was edited; move the file away")
    layout.edited_body = body
    return layout


def _not_a_journal(path: Path) -> ValueError:
    return ValueError(
        f"{path}: not a tokenmeter journal or its first line was edited; "
        "move the file away and tokenmeter starts a new one"
    )


def _read_copy(fd: int, size: int, log: _Log) -> _Layout | None:
    """The layout in the copy of the first line that ends the file, if it is there and whole."""
    chunk = _MIN_HEAD
    while True:
        start = max(0, size - chunk)
        data = pread_exact(fd, size - start, start)
        at = data.rfind(_COPY_MARKER)
        if at >= 0 or start == 0:
            break
        chunk *= 4
    line = data[at + len(_COPY_MARKER) :]
    if at < 0 or line.find(b"\n") != len(line) - 1:
        return None
    layout = _parse_meta(line[:-1], legacy=False)
    if layout is None or not 0 < layout.head_size <= layout.end <= start + at:
        return None
    tail = log.tail(layout.state).encode()
    if pread_exact(fd, start + at - layout.end, layout.end) != tail:
        return None  # not the copy that goes with this body and tail
    layout.from_copy = True
    return layout


# --- token_usage.md ------------------------------------------------------------------------------
#: Models the summary of ``token_usage.md`` shows apart; the calls of any more are summed in one
#: row, so that a server naming a new model in every answer cannot make each batch rewrite (and
#: the document carry) a summary that grows without end.
_MAX_MODELS = 1_000
_OTHER_KEY = json.dumps(["", OTHER_MODELS])


def _other_models_last(item: tuple[str, Any]) -> tuple[bool, str]:
    return item[0] == _OTHER_KEY, item[0]


class _UsageLog(_Log):
    body_intro = (
        "\n## Detailed Log\n\n"
        "| # | Timestamp | Provider | Model | Session | Input Tokens | Output Tokens "
        "| Total Tokens | Cost | Status |\n"
        "|---:|---|---|---|---|---:|---:|---:|---:|---|\n"
    )

    def apply(self, state: dict[str, Any], records: Sequence[UsageRecord]) -> str:
        models: dict[str, dict[str, Any]] = state.setdefault("models", {})
        calls: int = state.get("calls", 0)
        # Each model's totals are read from the state once per batch and written back once.
        keys: dict[tuple[str, str], str] = {}
        live: dict[str, Totals] = {}
        rows = []
        for r in records:
            calls += 1
            model = (r.model_provider, r.model_name)
            key = keys.get(model)
            if key is None:
                key = json.dumps(list(model))
                if key not in models and len(models) >= _MAX_MODELS:
                    key = _OTHER_KEY
                keys[model] = key
            totals = live.get(key)
            if totals is None:
                stored = models.setdefault(key, {})  # the model's row, kept from now on
                totals = live[key] = _from_state(stored) if stored else Totals()
            totals.add_record(r)
            rows.append(
                f"| {calls} | {_when(r.timestamp)} | {_md(r.model_provider)} "
                f"| {_md(r.model_name)} | {_md(r.session_name or r.session_id or '')} "
                f"| {r.input_tokens:,} | {r.output_tokens:,} | {r.total_tokens:,} "
                f"| {_money_or_na(r.estimated_cost_usd)} | {_status(r)} |\n"
            )
        for key, totals in live.items():
            models[key].update(_to_state(totals))
        state["calls"] = calls
        return "".join(rows)

    def head(self, state: dict[str, Any]) -> str:
        models: dict[str, dict[str, Any]] = state.get("models", {})
        lines = [
            "# Token Usage\n\n## Usage Summary\n\n",
            "| Provider | Model | Calls | Total Tokens | Avg Tokens/Call | Cost |\n",
            "|---|---|---:|---:|---:|---:|\n",
        ]
        grand = _new_totals()
        for key, totals in sorted(models.items(), key=_other_models_last):
            provider, model = json.loads(key)
            lines.append(
                f"| {_md(provider)} | {_md(model)} | {totals['calls']:,} "
                f"| {totals['total']:,} | {_avg_tokens(totals)} | {_totals_cost(totals)} |\n"
            )
            _merge(grand, totals)
        lines.append(
            f"| **TOTAL** | | **{grand['calls']:,}** | **{grand['total']:,}** "
            f"| **{_avg_tokens(grand)}** | **{_totals_cost(grand)}** |\n\n"
        )
        lines.append(f"**Total estimated cost: {_totals_cost(grand)}**\n")
        unpriced = grand["unpriced"]
        if unpriced:
            lines.append(f"\n_{unpriced:,} call(s) had no known price and are not in the cost._\n")
        return "".join(lines)


# --- sessions/<id>.md ----------------------------------------------------------------------------


class _SessionLog(_Log):
    body_intro = (
        "\n## Calls\n\n"
        "| Call | Timestamp | Input Tokens | Output Tokens | Total Tokens | Cost |\n"
        "|---:|---|---:|---:|---:|---:|\n"
    )

    def __init__(self, session_id: str, info: SessionInfo | None = None) -> None:
        self.session_id = session_id
        self.info = info

    def apply(self, state: dict[str, Any], records: Sequence[UsageRecord]) -> str:
        if self.info is not None:
            # A forked worker's part (inherited) or a late call of an earlier run: its totals
            # only; what the session is (name, status, times) is what its latest run says.
            if not self.info.inherited and not _of_earlier_run(self.info, state.get("info")):
                state["info"] = _info_dict(self.info)
            _note_part(state, self.info)
        elif "info" not in state and records:
            first = records[0]
            state["info"] = {
                "id": self.session_id,
                "name": first.session_name,
                "status": "active",
                "started_at": _iso(first.timestamp),
            }
        stored: dict[str, Any] = state.setdefault("totals", _new_totals())
        totals = _from_state(stored)  # read once per batch, written back once
        models: list[str] = state.setdefault("models", [])
        rows = []
        for r in records:
            totals.add_record(r)
            note_model(models, f"{r.model_provider}/{r.model_name}")
            rows.append(
                f"| {totals.calls} | {_when(r.timestamp)} | {r.input_tokens:,} "
                f"| {r.output_tokens:,} | {r.total_tokens:,} "
                f"| {_money_or_na(r.estimated_cost_usd)} |\n"
            )
        stored.update(_to_state(totals))
        return "".join(rows)

    def head(self, state: dict[str, Any]) -> str:
        info: dict[str, Any] = state.get("info", {"id": self.session_id, "status": "active"})
        title = info.get("name") or info["id"]
        lines = [
            f"# Session: {_md(title)}\n\n## Session Information\n\n",
            f"- **Session ID:** {_md(info['id'])}\n",
        ]
        if info.get("name"):
            lines.append(f"- **Name:** {_md(info['name'])}\n")
        if info.get("parent_id"):
            lines.append(f"- **Parent Session:** {_md(info['parent_id'])}\n")
        models = state.get("models") or ["none yet"]
        lines.append(f"- **Provider/Model:** {_md(', '.join(models))}\n")
        if info.get("started_at"):
            lines.append(f"- **Started:** {_when_text(info['started_at'])}\n")
        lines.append(f"- **Status:** {_md(info['status'])}\n")
        if info.get("tags"):
            tags = ", ".join(f"{k}={v}" for k, v in info["tags"].items())
            lines.append(f"- **Tags:** {_md(tags)}\n")
        if info.get("budget_usd") is not None:
            lines.append(f"- **Budget:** {_money(Decimal(info['budget_usd']))}\n")
        return "".join(lines)

    def tail(self, state: dict[str, Any]) -> str:
        t: dict[str, Any] = state.get("totals", _new_totals())
        totals = _from_state(t)
        lines = ["\n## Session Summary\n\n", f"- **Total Calls:** {t['calls']:,}\n"]
        if totals.blocked_calls:  # counted in Total Calls, never sent
            lines.append(f"- **Blocked by a Budget:** {totals.blocked_calls:,}\n")
        lines += [
            f"- **Input Tokens:** {t['input']:,}\n",
            f"- **Output Tokens:** {t['output']:,}\n",
            f"- **Total Tokens:** {t['total']:,}\n",
        ]
        for label, key in (("Cache Read", "cache_read"), ("Cache Write", "cache_write")):
            if t[key]:
                lines.append(f"- **{label} Tokens:** {t[key]:,}\n")
        if t["reasoning"]:
            lines.append(f"- **Reasoning Tokens:** {t['reasoning']:,}\n")
        lines.append(f"- **Total Cost:** {_totals_cost(t)}\n")
        unpriced = totals.unpriced_calls  # a call a budget blocked is not one
        if unpriced:
            lines.append(f"- **Calls Without a Known Price:** {unpriced:,}\n")
        info = state.get("info", {})
        rolled_up = _rolled_up(state)
        if rolled_up and rolled_up[0] > totals.made_calls:  # calls made in nested sessions
            lines.append(
                f"- **Including Nested Sessions:** {rolled_up[0]:,} calls, "
                f"{rolled_up[1]:,} tokens, {_money(Decimal(rolled_up[2]))}\n"
            )
        if info.get("status", "active") not in ("active", "unknown"):
            lines.append(_completion(info, t))
        return "".join(lines)


def render_session(
    info: dict[str, Any], records: Iterable[UsageRecord], models: list[str]
) -> Iterator[str]:
    """A whole ``sessions/<id>.md`` document in pieces, for ``tokenmeter session ID``: the same
    head, call table and tail the sink writes batch by batch. The table is made 200
    calls at a time (a process's implicit session may hold millions).

    ``info`` has the keys of a journal's session state: id, name, parent_id, tags, status,
    started_at, ended_at (ISO text), notes, budget_usd. ``models`` is the session's model list
    as ``note_model`` makes it from the records in order: the head, which names them, comes
    before the records are read.
    """
    log = _SessionLog(str(info["id"]))
    state: dict[str, Any] = {"info": dict(info), "models": list(models)}
    yield log.head(state)
    yield log.body_intro
    records = iter(records)
    while batch := list(itertools.islice(records, 200)):
        yield log.apply(state, batch)
    yield log.tail(state)


def _completion(info: dict[str, Any], t: dict[str, Any]) -> str:
    calls = _from_state(t).made_calls  # per call made: a call a budget refused has no tokens
    cost = Decimal(t["cost"]) if t["priced"] else None
    input_cost, output_cost = Decimal(t["input_cost"]), Decimal(t["output_cost"])
    split = input_cost + output_cost
    lines = ["\n## Session Completion\n\n"]
    if info.get("ended_at"):
        lines.append(f"- **Completed:** {_when_text(info['ended_at'])}\n")
    lines.append(f"- **Final Status:** {_md(info['status'])}\n")
    if info.get("notes"):
        quoted = "".join(f"> {_md(line)}\n" for line in info["notes"].splitlines())
        lines.append(f"- **Notes:**\n\n{quoted}")
    lines.append("\n### Averages per Call\n\n")
    if calls:
        lines += [
            f"- **Input Tokens:** {t['input'] / calls:,.1f}\n",
            f"- **Output Tokens:** {t['output'] / calls:,.1f}\n",
            f"- **Total Tokens:** {t['total'] / calls:,.1f}\n",
            "- **Cost:** " + (_money(cost / t["priced"]) if cost is not None else "n/a") + "\n",
        ]
    else:
        lines.append("No calls were made in this session.\n")
    lines.append("\n### Cost Breakdown\n\n")
    if split:
        lines += [
            "| Part | Cost | Share |\n|---|---:|---:|\n",
            f"| Input | {_money(input_cost)} | {input_cost / split:.1%} |\n",
            f"| Output | {_money(output_cost)} | {output_cost / split:.1%} |\n",
        ]
    else:
        lines.append("n/a (no priced calls with a cost breakdown)\n")
    ratio = f"{t['input'] / t['output']:,.2f}" if t["output"] else "n/a"
    priced_tokens = t["priced_tokens"]
    per_token = _money(cost / priced_tokens) if cost is not None and priced_tokens else "n/a"
    per_1k = _money(cost * 1000 / priced_tokens) if cost is not None and priced_tokens else "n/a"
    lines += [
        "\n### Efficiency Metrics\n\n",
        f"- **Input/Output Ratio:** {ratio}\n",
        f"- **Cost per Token:** {per_token}\n",
        f"- **Cost per 1K Tokens:** {per_1k}\n",
    ]
    return "".join(lines)


def _of_earlier_run(info: SessionInfo, stored: dict[str, Any] | None) -> bool:
    """Whether ``info`` is of a run of the id that had ended when the stored one started (sent
    for a late call of it): the SQL sinks' ``RUN_NOT_EARLIER``, so that the file of a job resumed
    after a crash does not say "failed" again. Info made from a record (no ``ended_at``) is no
    run's: its start is the record's time."""
    if stored is None or "ended_at" not in stored or info.ended_at is None:
        return False
    stored_start: str = stored["started_at"]
    return _iso(info.started_at) < stored_start and _iso(info.ended_at) <= stored_start


def _info_dict(info: SessionInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "name": info.name,
        "parent_id": info.parent_id,
        "tags": dict(info.tags),
        "status": info.status,
        "started_at": _iso(info.started_at),
        "ended_at": None if info.ended_at is None else _iso(info.ended_at),
        "notes": info.notes,
        "budget_usd": None if info.budget_usd is None else str(info.budget_usd),
    }


def _note_part(state: dict[str, Any], info: SessionInfo) -> None:
    """Keep ``info``'s totals (with its nested sessions') as its part's latest, as the SQL sinks
    do: a session stored in parts (entered again under its id, in one process or several; a
    worker forked inside it) is the sum of them. The journal kept the last part handed to it:
    "Including Nested Sessions: 3 calls" for a session whose row said 7, or no line at all."""
    parts: dict[str, list[Any]] = state.setdefault("parts", {})
    parts[info.part] = [info.calls, info.input_tokens + info.output_tokens, str(info.cost_usd)]


def _rolled_up(state: dict[str, Any]) -> list[Any] | None:
    """The session's totals with its nested sessions' (calls, tokens, cost): the sum of its
    parts; a file written before parts were kept has one figure, its last part's."""
    parts: dict[str, list[Any]] | None = state.get("parts")
    if not parts:
        rolled_up: list[Any] | None = state.get("info", {}).get("rolled_up")
        return rolled_up
    calls = sum(part[0] for part in parts.values())
    tokens = sum(part[1] for part in parts.values())
    cost = sum((Decimal(part[2]) for part in parts.values()), Decimal(0))
    return [calls, tokens, str(cost)]


# --- running totals (JSON-able: Decimals are kept as strings) ------------------------------------


#: The journal's state keys (kept as they are in files already written) -> ``Totals`` fields.
_STATE_KEYS = {
    "calls": "calls",
    "priced": "priced_calls",
    "priced_tokens": "priced_tokens",
    "input": "input_tokens",
    "output": "output_tokens",
    "total": "total_tokens",
    "cache_read": "cache_read_tokens",
    "cache_write": "cache_write_tokens",
    "reasoning": "reasoning_tokens",
    "cost": "cost_usd",
    "output_cost": "output_cost_usd",
    "unpriced": "unpriced_calls",  # absent from journals of earlier versions: calls - priced
    "blocked": "blocked_calls",  # absent from journals of earlier versions: 0
}


def _new_totals() -> dict[str, Any]:
    return _to_state(Totals())


def _from_state(t: dict[str, Any]) -> Totals:
    totals = Totals.from_state({field: t[key] for key, field in _STATE_KEYS.items() if key in t})
    # "input_cost" is the input part of the costs that have a breakdown.
    totals.split_cost_usd = Decimal(str(t.get("input_cost", "0"))) + totals.output_cost_usd
    return totals


def _to_state(totals: Totals) -> dict[str, Any]:
    state = totals.to_state()
    t = {key: state[field] for key, field in _STATE_KEYS.items()}
    t["input_cost"] = str(totals.split_cost_usd - totals.output_cost_usd)
    return t


def _merge(into: dict[str, Any], t: dict[str, Any]) -> None:
    totals = _from_state(into)
    totals.add(_from_state(t))
    into.update(_to_state(totals))


# --- formatting ---------------------------------------------------------------------------------


def _when(ts: datetime) -> str:
    return _iso(ts).replace("T", " ")


def _when_text(iso: str) -> str:
    return iso.replace("T", " ")


def _money(value: Decimal) -> str:
    return fmt_usd(value)


def _money_or_na(value: Decimal | None) -> str:
    return fmt_usd(value)


def _totals_cost(t: dict[str, Any]) -> str:
    """The cost of the calls ``t`` sums, as the reports give it (``Totals.cost``): n/a only
    when some call has no known price and none has one. A call a budget blocked was never sent:
    it costs $0.00, so calls that were all blocked are not an unknown spending."""
    return _money_or_na(_from_state(t).cost)


def _avg_tokens(t: dict[str, Any]) -> str:
    """Tokens per call made (``Totals.avg_tokens_per_call``): not diluted by refused calls."""
    totals = _from_state(t)
    return f"{totals.avg_tokens_per_call:,.1f}" if totals.made_calls else "n/a"


def _status(r: UsageRecord) -> str:
    if r.status == "ok":
        return "ok (estimated)" if r.estimated else "ok"
    if r.status == "blocked":  # refused by a budget before it was sent: no call failed
        return f"blocked ({_md(r.error)})" if r.error else "blocked"
    return f"error: {_md(r.error or 'unknown')}"
