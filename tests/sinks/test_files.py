"""What the file sinks share (``tokenmeter.sinks._files``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tokenmeter._models import UsageRecord
from tokenmeter.sinks import JSONLSink, MarkdownJournalSink, SQLiteSink


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
