"""What the file sinks share (``tokenmeter.sinks._files``)."""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

import pytest

import tokenmeter
from tokenmeter._models import UsageRecord
from tokenmeter.sinks import JSONLSink, MarkdownJournalSink, SQLiteSink
from tokenmeter.sinks.jsonl import read_jsonl


@pytest.mark.parametrize(
    ("sink_type", "given", "made"),
    [
        (SQLiteSink, "~/usage.db", "usage.db"),
        (JSONLSink, "~/usage.jsonl", "usage.jsonl"),
        (MarkdownJournalSink, "~/journal", "journal/token_usage.md"),
    ],
)
def test_a_path_from_the_home_folder_is_there(
    sink_type: type[SQLiteSink | JSONLSink | MarkdownJournalSink],
    given: str,
    made: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    make_record: Callable[..., UsageRecord],
) -> None:
    """A sink given "~/usage.db" wrote into a directory named "~" in the working directory,
    where configure(directory="~/...") means the home folder."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    sink = sink_type(given)
    sink.write([make_record(0)])
    sink.close()
    assert (tmp_path / "home" / made).is_file()
    assert not (tmp_path / "~").exists()


@pytest.mark.parametrize(
    ("sink_type", "name"),
    [(SQLiteSink, "usage.db"), (JSONLSink, "usage.jsonl")],
)
def test_a_link_to_a_file_not_made_yet_has_it_made_there(
    sink_type: type[SQLiteSink | JSONLSink],
    name: str,
    tmp_path: Path,
    make_record: Callable[..., UsageRecord],
    read_sqlite: Callable[[Path], list[UsageRecord]],
) -> None:
    """A sink file linked to another disk before the first run: the exclusive create refused
    the link, and every write failed for ever (0 of 5 records). The file is made where the link
    points, as ``open(path, "a")`` and ``sqlite3`` make it, owner-only."""
    (tmp_path / "bigdisk").mkdir()
    link = tmp_path / name
    link.symlink_to(tmp_path / "bigdisk" / name)
    sink = sink_type(link)
    sink.write([make_record(0)])
    sink.close()
    assert link.is_symlink()
    assert stat.S_IMODE((tmp_path / "bigdisk" / name).stat().st_mode) == 0o600
    stored = read_sqlite(link) if sink_type is SQLiteSink else list(read_jsonl(link))
    assert [r.id for r in stored if r] == [make_record(0).id]


def test_a_directory_linked_to_one_not_made_yet_is_made_there(
    tmp_path: Path, read_sqlite: Callable[[Path], list[UsageRecord]]
) -> None:
    """``ln -s /mnt/data/tokenmeter .tokenmeter`` before the first run: mkdir refused the link,
    every write under it failed, the quarantine file's too, and every record was lost. The
    directory is made where the link points, owner-only, and the sinks write in it."""
    (tmp_path / "data").mkdir()
    link = tmp_path / "tm"
    link.symlink_to(tmp_path / "data" / "tokenmeter")
    tokenmeter.configure(directory=link, sinks=["sqlite", "jsonl", "markdown"])
    made = tokenmeter.record("openai", "gpt-4o", 1, 1)
    assert tokenmeter.flush(30)
    target = tmp_path / "data" / "tokenmeter"
    assert stat.S_IMODE(target.stat().st_mode) == 0o700 and link.is_symlink()
    assert [r.id for r in read_sqlite(target / "usage.db")] == [made.id]
    assert [r.id for r in read_jsonl(target / "usage.jsonl") if r] == [made.id]
    assert (target / "journal" / "token_usage.md").is_file()
