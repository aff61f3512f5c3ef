from __future__ import annotations

import itertools
import os
import re
import signal
import stat
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from helpers import (  # type: ignore[import-not-found, unused-ignore]
    one_line_value_error,
    unusable_paths,
)
from sink_helpers import (  # type: ignore[import-not-found, unused-ignore]
    DISK_FULL_RECORDS,
    disk_faults,
    journal_problems,
    resume_after_a_crash,
    resume_steps,
    run_disk_full_writer,
    skip_without_tmpfs,
    tree_bytes,
    write_reference,
)

from tokenmeter._models import SessionInfo, UsageRecord
from tokenmeter.sinks import MarkdownJournalSink, SessionAwareSink

RecordFactory = Callable[..., UsageRecord]
STARTED = datetime(2026, 11, 22, 10, tzinfo=UTC)
SESSION_TABLE = "| Call | Timestamp | Input Tokens | Output Tokens | Total Tokens | Cost |"


def table_rows(text: str, header_start: str) -> list[list[str]]:
    """The cells of the markdown table whose header line starts with ``header_start``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = re.split(r"(?<!\\)\|", line)[1:-1]  # split on pipes that are not escaped
        rows.append([cell.strip() for cell in cells])
    return rows


def write_demo(directory: Path, make_record: RecordFactory) -> MarkdownJournalSink:
    sink = MarkdownJournalSink(directory)
    sink.write_sessions([SessionInfo(id="s1", name="demo", started_at=STARTED)])
    sink.write(
        [
            make_record(0),
            make_record(1),
            make_record(
                2,
                model_provider="anthropic",
                model_name="claude-sonnet-4-5",
                input_tokens=100,
                output_tokens=50,
                total_tokens=150,
                estimated_cost_usd=None,
                cost_breakdown=None,
            ),
        ]
    )
    sink.write([make_record(3, session_id=None, session_name=None)])
    return sink


def test_usage_file_has_summary_total_and_detailed_log(
    tmp_path: Path, make_record: RecordFactory
) -> None:
    write_demo(tmp_path, make_record)
    text = (tmp_path / "token_usage.md").read_text(encoding="utf-8")

    assert table_rows(text, "| Provider | Model | Calls |") == [
        ["anthropic", "claude-sonnet-4-5", "1", "150", "150.0", "n/a"],
        ["openai", "gpt-4o", "3", "4,500", "1,500.0", "$0.018"],
        ["**TOTAL**", "", "**4**", "**4,650**", "**1,162.5**", "**$0.018**"],
    ]
    assert "**Total estimated cost: $0.018**" in text
    log = table_rows(text, "| # | Timestamp |")
    assert [row[0] for row in log] == ["1", "2", "3", "4"]
    assert log[2][2:4] == ["anthropic", "claude-sonnet-4-5"]
    assert log[2][8] == "n/a"
    assert log[0][1] == "2026-11-22 10:00:00.123Z"
    assert text.index("## Usage Summary") < text.index("## Detailed Log")


def test_session_file_has_information_calls_and_summary(
    tmp_path: Path, make_record: RecordFactory
) -> None:
    sink = write_demo(tmp_path, make_record)
    assert isinstance(sink, SessionAwareSink)
    text = (tmp_path / "sessions" / "s1.md").read_text(encoding="utf-8")

    assert "- **Session ID:** s1" in text
    assert "- **Provider/Model:** openai/gpt-4o, anthropic/claude-sonnet-4-5" in text
    assert "- **Started:** 2026-11-22 10:00:00.000Z" in text
    assert "- **Status:** active" in text
    assert table_rows(text, SESSION_TABLE) == [
        ["1", "2026-11-22 10:00:00.123Z", "1,200", "300", "1,500", "$0.006"],
        ["2", "2026-11-22 10:00:00.124Z", "1,200", "300", "1,500", "$0.006"],
        ["3", "2026-11-22 10:00:00.125Z", "100", "50", "150", "n/a"],
    ]
    summary = text[text.index("## Session Summary") :]
    assert "- **Total Calls:** 3" in summary
    assert "- **Total Tokens:** 3,150" in summary
    assert "- **Total Cost:** $0.012" in summary
    assert "Session Completion" not in text
    assert text.index("## Session Information") < text.index(SESSION_TABLE)
    assert text.index(SESSION_TABLE) < text.index("## Session Summary")
    assert not list((tmp_path / "sessions").glob("None*"))  # the unattributed call has no file


def test_completed_session_gets_the_completion_section(
    tmp_path: Path, make_record: RecordFactory
) -> None:
    sink = write_demo(tmp_path, make_record)
    ended = datetime(2026, 11, 22, 11, 30, tzinfo=UTC)
    sink.write_sessions(
        [
            SessionInfo(
                id="s1",
                name="demo",
                started_at=STARTED,
                status="completed",
                ended_at=ended,
                notes="tuned | prompts\nsecond line",
            )
        ]
    )
    text = (tmp_path / "sessions" / "s1.md").read_text(encoding="utf-8")

    assert "- **Status:** completed" in text
    completion = text[text.index("## Session Completion") :]
    assert "- **Completed:** 2026-11-22 11:30:00.000Z" in completion
    assert "> tuned \\| prompts\n> second line" in completion
    assert "- **Total Tokens:** 1,050.0" in completion  # averages per call over 3 calls
    assert "- **Cost:** $0.006" in completion  # average over the 2 priced calls
    assert table_rows(completion, "| Part | Cost | Share |") == [
        ["Input", "$0.006", "50.0%"],
        ["Output", "$0.006", "50.0%"],
    ]
    assert "- **Input/Output Ratio:** 3.85" in completion  # 2,500 in / 650 out
    assert "- **Cost per Token:** $0.000004" in completion  # $0.012 / 3,000 priced tokens
    assert len(table_rows(text, SESSION_TABLE)) == 3  # the call table is untouched


def test_a_new_sink_continues_the_totals(tmp_path: Path, make_record: RecordFactory) -> None:
    MarkdownJournalSink(tmp_path).write([make_record(0)])
    MarkdownJournalSink(tmp_path).write([make_record(1), make_record(2)])
    text = (tmp_path / "token_usage.md").read_text(encoding="utf-8")

    total = table_rows(text, "| Provider | Model | Calls |")[-1]
    assert total[:4] == ["**TOTAL**", "", "**3**", "**4,500**"]
    assert [row[0] for row in table_rows(text, "| # | Timestamp |")] == ["1", "2", "3"]
    session = (tmp_path / "sessions" / "s1.md").read_text(encoding="utf-8")
    assert [row[0] for row in table_rows(session, SESSION_TABLE)] == ["1", "2", "3"]


def test_user_strings_cannot_break_tables(tmp_path: Path, make_record: RecordFactory) -> None:
    odd = "gpt|4o\nnext <!-- x"
    MarkdownJournalSink(tmp_path).write(
        [make_record(0, model_name=odd, session_id="a/../b", session_name="x|y")]
    )
    text = (tmp_path / "token_usage.md").read_text(encoding="utf-8")

    summary = table_rows(text, "| Provider | Model | Calls |")
    assert summary[0][1] == "gpt\\|4o\ufffdnext &lt;!-- x"  # a new line is shown, not obeyed
    assert len(summary[0]) == 6
    assert len(table_rows(text, "| # | Timestamp |")[0]) == 10
    [session_file] = (tmp_path / "sessions").iterdir()
    assert session_file.parent == tmp_path / "sessions"
    assert "- **Session ID:** a/../b" in session_file.read_text(encoding="utf-8")


def test_names_with_characters_that_print_as_nothing_are_told_apart(
    tmp_path: Path, make_record: RecordFactory
) -> None:
    """``gpt``, ZERO WIDTH SPACE, ``-4o`` was a second row that read ``gpt-4o`` in the journal,
    as in the CLI's reports: shown as U+FFFD there too."""
    MarkdownJournalSink(tmp_path).write(
        [make_record(0, model_name="gpt-4o"), make_record(1, model_name="gpt\u200b\ufeff-4o")]
    )
    text = (tmp_path / "token_usage.md").read_text(encoding="utf-8")
    models = [row[1] for row in table_rows(text, "| Provider | Model | Calls |")]
    assert "gpt-4o" in models and "gpt\ufffd\ufffd-4o" in models
    shown = re.sub(r"<!--.*?-->", "", text, flags=re.DOTALL)  # the journal's own state
    assert "\u200b" not in shown and "\ufeff" not in shown


def test_recorded_names_never_become_links_or_images(
    tmp_path: Path, make_record: RecordFactory
) -> None:
    """Opening the journal in a viewer must not load an image from a server that put
    ``![](https://...)`` in its model name, nor show a link a session name made up."""
    image = "![x](https://evil.example/p.png)"
    link = "[click](https://evil.example)"
    MarkdownJournalSink(tmp_path).write(
        [make_record(0, model_name=image, session_id="s1", session_name=link)]
    )
    texts = [(tmp_path / "token_usage.md").read_text(encoding="utf-8")]
    texts += [path.read_text(encoding="utf-8") for path in (tmp_path / "sessions").iterdir()]
    for text in texts:
        shown = re.sub(r"<!--.*?-->", "", text, flags=re.DOTALL)  # the journal's own state
        assert "![x](" not in shown and "[click](" not in shown
    assert "!\\[x\\](https://evil.example/p.png)" in texts[0]
    assert "\\[click\\](https://evil.example)" in texts[1]


def test_many_models_grow_the_summary_without_losing_the_log(
    tmp_path: Path, make_record: RecordFactory
) -> None:
    sink = MarkdownJournalSink(tmp_path)
    for i in range(120):
        sink.write([make_record(i, model_name=f"model-{i:03d}-with-a-long-name")])
    text = (tmp_path / "token_usage.md").read_text(encoding="utf-8")

    assert len(table_rows(text, "| Provider | Model | Calls |")) == 121
    assert [row[0] for row in table_rows(text, "| # | Timestamp |")] == [
        str(i) for i in range(1, 121)
    ]
    session = (tmp_path / "sessions" / "s1.md").read_text(encoding="utf-8")
    assert len(table_rows(session, SESSION_TABLE)) == 120
    assert "- **Total Calls:** 120" in session


def test_models_past_the_bound_share_one_summary_row_and_every_call_is_counted(
    tmp_path: Path, make_record: RecordFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server naming a new model in every answer: past the bound (1,000; 3 here) the summary
    sums the further models in one last row, so a batch never rewrites a summary that grows
    without end, while the detailed log still names each call's model."""
    from tokenmeter import _totals
    from tokenmeter.sinks import markdown

    monkeypatch.setattr(markdown, "_MAX_MODELS", 3)
    monkeypatch.setattr(_totals, "MAX_SESSION_MODELS", 3)  # a session's list (``note_model``)
    sink = MarkdownJournalSink(tmp_path)
    sink.write([make_record(i, model_name=f"m{i}") for i in range(2)])
    sink.write([make_record(i, model_name=f"m{i % 5}") for i in range(2, 9)])  # m2..m4, m0..m3
    text = (tmp_path / "token_usage.md").read_text(encoding="utf-8")

    summary = table_rows(text, "| Provider | Model | Calls |")
    assert [(row[1], row[2]) for row in summary] == [
        ("m0", "2"),
        ("m1", "2"),
        ("m2", "2"),
        ("(other models)", "3"),  # m3 twice, m4 once
        ("", "**9**"),
    ]
    log = table_rows(text, "| # | Timestamp |")
    assert [row[3] for row in log] == ["m0", "m1", "m2", "m3", "m4", "m0", "m1", "m2", "m3"]
    session = (tmp_path / "sessions" / "s1.md").read_text(encoding="utf-8")
    listed = next(line for line in session.splitlines() if "**Provider/Model:**" in line)
    assert listed.split(":** ")[1] == "openai/m0, openai/m1, openai/m2, (other models)"
    assert len(table_rows(session, SESSION_TABLE)) == 9


def test_per_batch_io_does_not_grow_with_the_file(
    tmp_path: Path, make_record: RecordFactory
) -> None:
    io_stats = Path("/proc/self/io")
    if not io_stats.exists():
        pytest.skip("needs Linux /proc/self/io to count bytes read and written")

    def io_bytes() -> int:
        fields = dict(line.split(": ") for line in io_stats.read_text().splitlines())
        return int(fields["rchar"]) + int(fields["wchar"])

    sink = MarkdownJournalSink(tmp_path)
    models = ["gpt-4o", "gpt-4o-mini", "o3"]
    costs, sizes = [], []
    for batch in range(200):
        records = [
            make_record(batch * 50 + i, model_name=models[i % 3], session_id=f"s{batch % 4}")
            for i in range(50)
        ]
        before = io_bytes()
        sink.write(records)
        costs.append(io_bytes() - before)
        sizes.append((tmp_path / "token_usage.md").stat().st_size)

    # Batches 0-3 create the four session files; from batch 4 on every file exists.
    assert sizes[-1] > 20 * sizes[4]  # the journal grew twenty-fold...
    assert costs[-1] < 1.2 * costs[4]  # ...while the bytes read and written per batch did not


def test_a_file_that_is_not_a_journal_is_refused(
    tmp_path: Path, make_record: RecordFactory
) -> None:
    (tmp_path / "token_usage.md").write_text("# my own notes\n", encoding="utf-8")

    with pytest.raises(ValueError, match=r"token_usage\.md.*not a tokenmeter journal"):
        MarkdownJournalSink(tmp_path).write([make_record(0)])
    assert (tmp_path / "token_usage.md").read_text(encoding="utf-8") == "# my own notes\n"


@pytest.mark.parametrize("content", [b"x" * (32 << 20), b"a line\n" * (4 << 20)])
def test_a_large_file_that_is_not_a_journal_is_refused_without_reading_it_all(
    tmp_path: Path, make_record: RecordFactory, content: bytes
) -> None:
    """Before refusing it, the sink read the whole file into memory looking for a first line
    (the file as one line) and then for the copy of one at its end, on every retry of the
    batch: a 2 GB log at the journal's path took 2 to 4 GB each time."""
    io_stats = Path("/proc/self/io")
    if not io_stats.exists():
        pytest.skip("needs Linux /proc/self/io to count bytes read")
    path = tmp_path / "token_usage.md"
    path.write_bytes(content)
    sink = MarkdownJournalSink(tmp_path)

    def read_bytes() -> int:
        fields = dict(line.split(": ") for line in io_stats.read_text().splitlines())
        return int(fields["rchar"])

    before = read_bytes()
    with pytest.raises(ValueError, match=r"token_usage\.md.*not a tokenmeter journal"):
        sink.write([make_record(0)])
    assert read_bytes() - before < 1 << 20
    assert path.stat().st_size == len(content)


def test_files_and_directories_are_owner_only(tmp_path: Path, make_record: RecordFactory) -> None:
    directory = tmp_path / "journal"
    write_demo(directory, make_record)

    for path in (directory, directory / "sessions"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
    files = [p for p in directory.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"token_usage.md", "s1.md"}
    for file in files:
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, file


def test_a_journal_shared_by_its_owner_stays_shared_when_written_whole_again(
    tmp_path: Path, make_record: RecordFactory
) -> None:
    """Files that exist are left as their owner configured them: a journal made readable to a
    team (0644) became 0600 once its head outgrew its room and the document was written whole
    again, and the team could no longer read it."""
    sink = MarkdownJournalSink(tmp_path)
    sink.write([make_record(0)])
    usage = tmp_path / "token_usage.md"
    usage.chmod(0o644)

    # 30 models with long names make the head outgrow its room: the document is rewritten.
    sink.write(
        [make_record(1 + i, model_name=f"model-{i:02d}-with-a-long-name") for i in range(30)]
    )

    assert b"model-29-with-a-long-name" in usage.read_bytes()
    assert stat.S_IMODE(usage.stat().st_mode) == 0o644


def test_budget_and_tags_show_in_session_information(tmp_path: Path) -> None:
    sink = MarkdownJournalSink(tmp_path)
    sink.write_sessions(
        [
            SessionInfo(
                id="s9",
                started_at=STARTED,
                tags={"team": "search"},
                budget_usd=Decimal("2.5"),
                parent_id="s1",
            )
        ]
    )
    text = (tmp_path / "sessions" / "s9.md").read_text(encoding="utf-8")

    assert "- **Tags:** team=search" in text
    assert "- **Budget:** $2.50" in text
    assert "- **Parent Session:** s1" in text
    assert "- **Provider/Model:** none yet" in text
    assert table_rows(text, SESSION_TABLE) == []


def test_a_batch_retried_after_a_failure_is_not_counted_twice(
    tmp_path: Path, make_record: RecordFactory
) -> None:
    sink = MarkdownJournalSink(tmp_path)
    (tmp_path / "sessions" / "s1.md").mkdir(parents=True)  # the session file cannot be written
    batch = [make_record(0), make_record(1)]
    with pytest.raises(IsADirectoryError):
        sink.write(batch)
    (tmp_path / "sessions" / "s1.md").rmdir()

    sink.write(batch)  # the caller's retry of the same batch
    sink.write([make_record(2)])

    text = (tmp_path / "token_usage.md").read_text(encoding="utf-8")
    assert [row[0] for row in table_rows(text, "| # | Timestamp |")] == ["1", "2", "3"]
    session = (tmp_path / "sessions" / "s1.md").read_text(encoding="utf-8")
    assert [row[0] for row in table_rows(session, SESSION_TABLE)] == ["1", "2", "3"]


def assert_whole_journal(directory: Path) -> None:
    """Every record of ``disk_full_steps()`` is in the journal exactly once, and nothing else."""
    assert journal_problems(directory) == []
    text = (directory / "token_usage.md").read_text(encoding="utf-8")
    log = table_rows(text, "| # | Timestamp |")
    assert [row[0] for row in log] == [str(i) for i in range(1, DISK_FULL_RECORDS + 1)]
    total = table_rows(text, "| Provider | Model | Calls |")[-1]
    assert total[:3] == ["**TOTAL**", "", f"**{DISK_FULL_RECORDS}**"]
    for session, calls in (("s1", 134), ("s2", 133)):
        session_text = (directory / "sessions" / f"{session}.md").read_text(encoding="utf-8")
        assert len(table_rows(session_text, SESSION_TABLE)) == calls
        assert f"- **Total Calls:** {calls}" in session_text
        assert "## Session Completion" in session_text


FAULTS = disk_faults(fsize_step=700, enospc_step=4096)


@pytest.mark.parametrize(("fault", "start", "step"), FAULTS)
def test_a_full_disk_leaves_each_batch_written_whole_or_not_at_all(
    tmp_path: Path, fault: str, start: int, step: int
) -> None:
    """Short writes and EFBIG/ENOSPC part-way through a batch: after each failure the files are
    as consistent as before it, and the retries end with exactly what a roomy disk gets."""
    skip_without_tmpfs(fault)
    out, report = run_disk_full_writer("markdown", tmp_path, fault, start=start, step=step)

    assert report["failures"] > 20  # the disk really was full, many times, at many offsets
    assert report["problems"] == []
    assert_whole_journal(out / "journal")
    write_reference("markdown", tmp_path / "reference")
    assert tree_bytes(out / "journal") == tree_bytes(tmp_path / "reference" / "journal")


@pytest.mark.parametrize("stop_after", [3, 17, 31])
@pytest.mark.parametrize(("fault", "start", "step"), FAULTS)
def test_a_new_process_completes_what_a_full_disk_stopped(
    tmp_path: Path, fault: str, start: int, step: int, stop_after: int
) -> None:
    """The files alone (no memory of the failure) tell the next writer where to go on from."""
    skip_without_tmpfs(fault)
    out, report = run_disk_full_writer(
        "markdown", tmp_path, fault, start=start, step=step, stop_after=stop_after
    )
    assert report["problems"] == []
    assert report["resume_at"] is not None

    resume_steps("markdown", out, report["resume_at"])

    assert_whole_journal(out / "journal")
    write_reference("markdown", tmp_path / "reference")
    assert tree_bytes(out / "journal") == tree_bytes(tmp_path / "reference" / "journal")


def heads_of_a_failed_head_write(old: bytes, new: bytes) -> dict[str, bytes]:
    """The head region as a head write that failed part-way can leave it (torn at a page).

    ``old`` and ``new`` are the document before and after a batch; the head is written after the
    rows and tail, the rest of it first and its first line last.
    """
    found = re.match(rb'<!-- tokenmeter-journal \{"head":(\d+)', new)
    assert found is not None
    size = int(found.group(1))
    first = new.index(b"\n") + 1
    assert first > 4096  # so that a page-sized write can end inside it
    return {
        "nothing-written": old[:size],
        "rest-written": old[:first] + new[first:size],
        "first-line-torn": new[:4096] + old[4096:first] + new[first:size],
    }


@pytest.mark.parametrize("tear", ["nothing-written", "rest-written", "first-line-torn"])
def test_a_head_write_that_failed_part_way_is_completed_by_the_retry(
    tmp_path: Path, make_record: RecordFactory, tear: str
) -> None:
    """Overwriting the head needs no new space on most filesystems; where it fails anyway (copy-on-
    write filesystems, I/O errors), the retry of the batch still ends with the right document."""
    sink = MarkdownJournalSink(tmp_path)
    models = [f"model-{i:02d}-with-a-long-name" for i in range(30)]  # a first line over 4 KiB
    for i in range(30):
        sink.write([make_record(i, model_name=models[i])])
    path = tmp_path / "token_usage.md"
    old = path.read_bytes()
    batch = [make_record(30 + i, model_name=models[i]) for i in range(3)]
    sink.write(batch)
    new = path.read_bytes()
    head = heads_of_a_failed_head_write(old, new)[tear]
    path.write_bytes(head + new[len(head) :])

    sink.write(batch)  # the pipeline's retry of the batch whose head write failed

    assert path.read_bytes() == new
    sink.write([make_record(33)])
    assert journal_problems(tmp_path) == []
    assert len(table_rows(path.read_text(encoding="utf-8"), "| # | Timestamp |")) == 34


def test_a_journal_written_before_first_lines_had_a_checksum_is_continued(
    tmp_path: Path, make_record: RecordFactory
) -> None:
    reference = tmp_path / "reference"
    MarkdownJournalSink(reference).write([make_record(0), make_record(1)])
    current = (reference / "token_usage.md").read_bytes()
    MarkdownJournalSink(reference).write([make_record(2)])
    # The earlier format: no checksum on the first line and no copy of it at the end.
    copy = current.rindex(b"\n<!-- tokenmeter-journal-copy ")
    legacy = re.sub(rb" sha256=[0-9a-f]{16} -->", b" " * 25 + b"-->", current[:copy], count=1)
    assert len(legacy) == copy and b"sha256" not in legacy[: legacy.index(b"\n")]
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "token_usage.md").write_bytes(legacy)

    MarkdownJournalSink(tmp_path / "old").write([make_record(2)])

    assert (tmp_path / "old" / "token_usage.md").read_bytes() == (
        reference / "token_usage.md"
    ).read_bytes()


def test_a_child_forked_while_a_batch_is_written_holds_no_lock(
    tmp_path: Path, make_record: RecordFactory
) -> None:
    """The lock on ``.journal.lock`` was let go by closing its descriptor, which releases a
    ``flock`` only with the last descriptor of the open file: a child forked during a batch (a
    pool worker) kept a copy, so the parent's journal stalled until the child exited, and the
    child's own writes waited for ever on the lock its copy held."""
    sink = MarkdownJournalSink(tmp_path)
    sink.write([make_record(0)])
    go_read, go_write = os.pipe()
    with sink._locked():  # the writer thread is inside a batch...
        pid = os.fork()  # ...when the application forks
        if pid == 0:
            code = 1
            try:
                os.close(go_write)
                os.read(go_read, 1)  # lives on, as a pool worker does, until told
                signal.alarm(10)  # a hung write ends the child, not the test run
                sink.write([make_record(1)])
                code = 0
            finally:
                os._exit(code)
    os.close(go_read)
    parent = threading.Thread(target=sink.write, args=([make_record(2)],), daemon=True)
    parent.start()
    parent.join(10)
    stalled = parent.is_alive()
    os.write(go_write, b"x")
    os.close(go_write)
    _, status = os.waitpid(pid, 0)
    parent.join(10)
    assert not stalled, "the parent's batch waited for the child to exit"
    assert os.waitstatus_to_exitcode(status) == 0
    [calls] = [
        row[2]
        for row in table_rows(
            (tmp_path / "token_usage.md").read_text(encoding="utf-8"), "| Provider"
        )
        if row[0] == "openai"
    ]
    assert calls == "3"


@pytest.mark.parametrize("killed_at", [1, 2], ids=["usage-file", "session-file"])
def test_temporary_files_of_a_writer_killed_mid_rewrite_are_removed(
    tmp_path: Path, make_record: RecordFactory, killed_at: int
) -> None:
    """A document is rewritten whole into ``.NAME.PID.tmp``, then renamed over the old one: a
    process killed in between left that file for ever (each as big as its document), since
    every later process writes a temporary file of its own pid."""
    pid = os.fork()
    if pid == 0:
        try:
            replaced = itertools.count(1)
            real_replace = os.replace

            def replace(src: str, dst: str) -> None:
                if next(replaced) == killed_at:
                    os.kill(os.getpid(), signal.SIGKILL)  # killed with the file written
                real_replace(src, dst)

            os.replace = replace  # type: ignore[assignment]
            MarkdownJournalSink(tmp_path).write([make_record(0)])
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == -signal.SIGKILL
    assert [p.name for p in tmp_path.rglob("*.tmp")] != []
    theirs = tmp_path / ".notes.md.42.tmp"  # another program's, in a directory shared with it
    theirs.write_text("not ours")

    MarkdownJournalSink(tmp_path).write([make_record(1)])
    theirs.unlink()
    assert journal_problems(tmp_path) == []
    assert [p.name for p in tmp_path.rglob("*.tmp")] == []


def test_a_parent_journal_shows_the_calls_of_its_nested_sessions(tmp_path: Path) -> None:
    import tokenmeter

    tokenmeter.configure(directory=tmp_path / "tm", sinks=["markdown"])
    with tokenmeter.session("parent") as parent, tokenmeter.session("child"):
        tokenmeter.record("openai", "gpt-4o", 1000, 500)
        tokenmeter.record("openai", "gpt-4o", 1000, 500)
    assert tokenmeter.flush(5)
    text = next((tmp_path / "tm" / "journal").rglob(f"{parent.id}*.md")).read_text()
    assert "- **Total Calls:** 0\n" in text
    assert "- **Including Nested Sessions:** 2 calls, 3,000 tokens, $0.015" in text


def test_a_session_stored_in_parts_shows_the_calls_of_all_its_nested_sessions(
    tmp_path: Path,
) -> None:
    """A session entered again under its id (a job resumed), or carried on by a forked worker,
    is stored in parts: the file showed the last part's nested calls ("Including Nested
    Sessions: 2 calls" beside a row of 6), or, as here, no line at all (2 is not more than the
    file's own 2 calls), and a forked worker's part was never counted."""
    import tokenmeter

    tokenmeter.configure(directory=tmp_path / "tm", sinks=["markdown"])
    for steps in (3, 1):  # 1 call of its own and `steps` nested calls, twice
        with tokenmeter.session("import", id="import-1"):
            tokenmeter.record("openai", "gpt-4o", 1000, 500)
            for _ in range(steps):
                with tokenmeter.session("step"):
                    tokenmeter.record("openai", "gpt-4o", 1000, 500)
    assert tokenmeter.flush(5)
    text = (tmp_path / "tm" / "journal" / "sessions" / "import-1.md").read_text()
    assert "- **Total Calls:** 2\n" in text
    assert "- **Including Nested Sessions:** 6 calls, 9,000 tokens, $0.045" in text
    sink = MarkdownJournalSink(tmp_path / "forked")
    ended = SessionInfo(
        id="job", started_at=STARTED, ended_at=STARTED, status="completed", part="p0", calls=3
    )
    worker = SessionInfo(id="job", started_at=STARTED, part="p1", calls=2, inherited=True)
    sink.write_sessions([ended, worker])
    text = sink.session_path("job").read_text()
    assert "- **Including Nested Sessions:** 5 calls" in text
    assert "- **Status:** completed\n" in text  # the worker's part says nothing of the session


def test_a_late_call_of_an_earlier_run_of_an_id_leaves_the_file_to_the_latest(
    tmp_path: Path,
) -> None:
    """The session file of a job resumed after a crash, which completed, said "failed" again
    once a thread of the crashed run made a late call."""
    import tokenmeter

    tokenmeter.configure(directory=tmp_path / "tm", sinks=["markdown"])
    assert resume_after_a_crash("import-1") == "completed"
    text = (tmp_path / "tm" / "journal" / "sessions" / "import-1.md").read_text()
    assert "- **Status:** completed\n" in text
    assert "- **Final Status:** completed\n" in text
    assert "- **Total Calls:** 3\n" in text


def test_estimated_counts_are_marked_in_the_log(tmp_path: Path, make_record: RecordFactory) -> None:
    """A call whose provider reported no usage carries tokenmeter's estimate: the log says so."""
    MarkdownJournalSink(tmp_path).write([make_record(0), make_record(1, estimated=True)])
    log = table_rows((tmp_path / "token_usage.md").read_text(encoding="utf-8"), "| # | Timestamp |")
    assert [row[-1] for row in log] == ["ok", "ok (estimated)"]


def test_a_call_refused_by_a_budget_is_logged_as_blocked(
    tmp_path: Path, make_record: RecordFactory
) -> None:
    """A refused call's record has status "blocked": the log called it an error ("error:
    BudgetExceeded: cap"), a call that failed, where every other reader says blocked."""
    blocked = make_record(
        1,
        status="blocked",
        error="BudgetExceeded: cap",
        input_tokens=0,
        output_tokens=0,
        total_tokens=0,
        estimated_cost_usd=None,
        cost_breakdown=None,
    )
    failed = make_record(2, status="error", error="APITimeoutError")
    MarkdownJournalSink(tmp_path).write([make_record(0), blocked, failed])
    log = table_rows((tmp_path / "token_usage.md").read_text(encoding="utf-8"), "| # | Timestamp |")
    assert [row[-1] for row in log] == [
        "ok",
        "blocked (BudgetExceeded: cap)",
        "error: APITimeoutError",
    ]


def test_calls_a_budget_blocked_cost_nothing_and_have_a_price(
    tmp_path: Path, make_record: RecordFactory
) -> None:
    """A blocked call's cost is null, but it was never sent: the session file said "Total
    Cost: n/a" for a session of blocked calls only, and "Calls Without a Known Price: 2" beside
    $0.006 for one priced call and two blocked, where the summary and `tokenmeter sessions` say
    $0.00 and no unpriced call. The model row of token_usage.md read n/a too."""

    def blocked(i: int, session_id: str, model: str = "gpt-4o") -> UsageRecord:
        return make_record(
            i,
            session_id=session_id,
            model_name=model,
            status="blocked",
            error="BudgetExceeded: cap",
            input_tokens=0,
            output_tokens=0,
            total_tokens=0,
            estimated_cost_usd=None,
            cost_breakdown=None,
        )

    MarkdownJournalSink(tmp_path).write(
        [make_record(0), blocked(1, "s1"), blocked(2, "s1"), blocked(3, "s2", "gpt-5")]
    )
    for session_id, cost in (("s1", "$0.006"), ("s2", "$0.00")):
        text = (tmp_path / "sessions" / f"{session_id}.md").read_text(encoding="utf-8")
        summary = text[text.index("## Session Summary") :]
        assert f"- **Total Cost:** {cost}\n" in summary, summary
        assert "Without a Known Price" not in summary
    usage = (tmp_path / "token_usage.md").read_text(encoding="utf-8")
    assert [row[::5] for row in table_rows(usage, "| Provider | Model | Calls |")] == [
        ["openai", "$0.006"],
        ["openai", "$0.00"],
        ["**TOTAL**", "**$0.006**"],
    ]
    assert "no known price" not in usage


class SessionFilesRefused(MarkdownJournalSink):
    """For its first ``failures`` writes, a directory stands where each session file goes: the OS
    refuses to open it, after ``token_usage.md`` took the batch (a failure half-way through)."""

    def __init__(self, directory: Path, failures: int) -> None:
        super().__init__(directory)
        self.failures = failures

    def write(self, records: Sequence[UsageRecord]) -> None:
        if not self.failures:
            return super().write(records)
        self.failures -= 1
        moved = []
        for path in {self.session_path(r.session_id) for r in records if r.session_id}:
            aside = path.with_name(f"{path.name}.aside")
            if path.exists():
                path.rename(aside)
                moved.append((path, aside))
            path.mkdir(parents=True)
        try:
            super().write(records)
        finally:
            for path in {self.session_path(r.session_id) for r in records if r.session_id}:
                path.rmdir()
            for path, aside in moved:
                aside.rename(path)


def logged_input_tokens(text: str, header: str, column: int) -> Counter[int]:
    """How many rows of the log table carry each input token count (one per record here)."""
    return Counter(int(row[column].replace(",", "")) for row in table_rows(text, header))


@pytest.mark.parametrize("failures", [3, 4, 7])
def test_records_retried_in_other_groupings_are_written_once(tmp_path: Path, failures: int) -> None:
    """The pipeline retries a batch whole, then one record at a time: the files that took some of
    its records before a session file failed must not take them again, whatever the grouping."""
    import tokenmeter

    sink = SessionFilesRefused(tmp_path / "journal", failures=0)
    tokenmeter.configure(sinks=[sink], directory=tmp_path)
    with tokenmeter.session("s", id="abc"):
        first = tokenmeter.record("openai", "gpt-4o", 1000, 5)
        assert tokenmeter.flush(5)
        sink.failures = failures
        records = [first] + [tokenmeter.record("openai", "gpt-4o", 1001 + i, 5) for i in range(10)]
    for _ in range(5):  # each flush() gives up after a few failed attempts
        if tokenmeter.flush(10):
            break
    assert sink.failures == 0

    assert journal_problems(tmp_path / "journal") == []
    expected = Counter(r.input_tokens for r in records)
    assert len(expected) == len(records) == 11  # the input count tells the records apart
    usage = (tmp_path / "journal" / "token_usage.md").read_text(encoding="utf-8")
    assert logged_input_tokens(usage, "| # | Timestamp |", 5) == expected
    total = table_rows(usage, "| Provider | Model | Calls |")[-1]
    assert total[:4] == ["**TOTAL**", "", "**11**", f"**{sum(r.total_tokens for r in records):,}**"]
    session = (tmp_path / "journal" / "sessions" / "abc.md").read_text(encoding="utf-8")
    assert logged_input_tokens(session, SESSION_TABLE, 2) == expected
    assert "- **Total Calls:** 11\n" in session


def test_a_failed_batch_retried_in_parts_is_counted_once_in_each_file(
    tmp_path: Path, make_record: RecordFactory
) -> None:
    """Usage file and one session file take a batch, the next session file fails: the retries of
    its records in other groupings (part of it, then one at a time) add each one once per file."""
    sink = MarkdownJournalSink(tmp_path)
    batch = [
        make_record(i, input_tokens=1000 + i, session_id=f"s{i % 2}", total_tokens=1300 + i)
        for i in range(6)
    ]
    (tmp_path / "sessions" / "s1.md").mkdir(parents=True)
    with pytest.raises(IsADirectoryError):
        sink.write(batch)
    with pytest.raises(IsADirectoryError):
        sink.write(batch[:4])
    (tmp_path / "sessions" / "s1.md").rmdir()

    sink.write(batch[1:4])  # then the records not written yet, as the pipeline hands them
    for record in (batch[0], batch[4], batch[5]):
        sink.write([record])
    sink.write([make_record(6, input_tokens=1006, session_id="s0", total_tokens=1306)])

    assert journal_problems(tmp_path) == []
    usage = (tmp_path / "token_usage.md").read_text(encoding="utf-8")
    assert logged_input_tokens(usage, "| # | Timestamp |", 5) == Counter(range(1000, 1007))
    total = table_rows(usage, "| Provider | Model | Calls |")[-1]
    assert total[:4] == ["**TOTAL**", "", "**7**", f"**{sum(range(1300, 1307)):,}**"]
    for name, tokens in (("s0", [1000, 1002, 1004, 1006]), ("s1", [1001, 1003, 1005])):
        session = (tmp_path / "sessions" / f"{name}.md").read_text(encoding="utf-8")
        assert logged_input_tokens(session, SESSION_TABLE, 2) == Counter(tokens)
        assert f"- **Total Calls:** {len(tokens)}\n" in session


def test_a_failed_batch_over_more_session_files_than_remembered_is_counted_once(
    tmp_path: Path, make_record: RecordFactory
) -> None:
    """The pipeline's chunk of 256 records, each of its own session (a server with a session
    per request), fails at the last session file: the sink remembered what only 256 files took,
    of 257, and forgot the usage file first (the oldest), so retried one at a time every record
    was counted twice in ``token_usage.md`` (512 calls for 256)."""
    sink = MarkdownJournalSink(tmp_path)
    batch = [make_record(i, session_id=f"s{i}") for i in range(256)]
    (tmp_path / "sessions" / "s255.md").mkdir(parents=True)
    with pytest.raises(IsADirectoryError):
        sink.write(batch)
    (tmp_path / "sessions" / "s255.md").rmdir()

    for record in batch:  # as the pipeline retries a batch that keeps failing
        sink.write([record])

    usage = (tmp_path / "token_usage.md").read_text(encoding="utf-8")
    assert table_rows(usage, "| Provider | Model | Calls |")[-1][2] == "**256**"
    assert len(table_rows(usage, "| # | Timestamp |")) == 256
    assert journal_problems(tmp_path) == []


def test_a_relative_path_stays_where_it_was_when_the_process_changes_directory(
    tmp_path: Path, make_record: RecordFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A daemon changes to "/" after start-up: a sink given a relative path looked it up again
    from the new working directory, and went on in new files there (or failed for ever where it
    may not write), its records split over two places."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    sink = MarkdownJournalSink("journal")
    sink.write([make_record(0)])
    monkeypatch.chdir(tmp_path / "b")
    sink.write([make_record(1)])

    assert sink.directory == tmp_path / "a" / "journal"
    usage = (sink.directory / "token_usage.md").read_text(encoding="utf-8")
    assert table_rows(usage, "| Provider | Model | Calls |")[-1][2] == "**2**"
    assert list((tmp_path / "b").iterdir()) == []


@pytest.mark.parametrize(
    ("name", "old", "new"),
    [
        ("token_usage.md", "## Detailed Log\n", "## Detailed Log\n\nA note of mine.\n"),
        ("token_usage.md", "| demo |", "| dem |"),
        ("token_usage.md", "## Usage Summary", "## Usage Summary (seen by Ann)"),
        ("sessions/s1.md", "## Calls\n", "## Calls\n\nA note of mine.\n"),
    ],
    ids=["note-in-the-log", "shorter-row", "longer-head", "note-in-a-session"],
)
@pytest.mark.parametrize(
    "save",
    [
        lambda text: text,
        lambda text: text.removesuffix("\n"),
        lambda text: text + "A line typed after the closing comment.\n",
    ],
    ids=["as-is", "no-last-line-end", "text-after-the-end"],
)
def test_a_journal_edited_by_hand_goes_on_whole(
    tmp_path: Path,
    make_record: RecordFactory,
    name: str,
    old: str,
    new: str,
    save: Callable[[str], str],
) -> None:
    """A journal saved from an editor with a line added or a row shortened (its first line kept)
    was written at the offsets its first line recorded, now elsewhere in the text: the next
    batch's first row was glued into an old row ("$0.00| 4 |"), or left after a blank line,
    outside the table. The document is now taken as it was edited and written whole again.
    That held only when the file still ended exactly as tokenmeter left it: saved without its
    last line end, or with a line typed at the end, the new rows were written over the edited
    text again ("| 3 | ... | 1,000 | | 4 |", 5 calls in the summary and 3 whole rows)."""
    sink = MarkdownJournalSink(tmp_path)
    sink.write([make_record(i) for i in range(3)])
    path = tmp_path / name
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(save(text.replace(old, new, 1)), encoding="utf-8")

    sink.write([make_record(3 + i) for i in range(2)])
    sink.write([make_record(5)])

    assert journal_problems(tmp_path) == []
    edited = path.read_text(encoding="utf-8")
    if "Summary" not in old:  # an edit of the head is written over, as the head always is
        assert new in edited
    usage = (tmp_path / "token_usage.md").read_text(encoding="utf-8")
    assert len(table_rows(usage, "| # | Timestamp |")) == 6
    assert table_rows(usage, "| Provider | Model | Calls |")[-1][2] == "**6**"


BOM = b"\xef\xbb\xbf"


@pytest.mark.parametrize(
    "save",
    [
        lambda text: text.replace(b"\n", b"\r\n"),
        lambda text: BOM + text,
        lambda text: BOM + text.replace(b"\n", b"\r\n"),
        lambda text: text.replace(b"\n", b"\r\n").removesuffix(b"\r\n"),
    ],
    ids=["crlf", "bom", "bom-and-crlf", "crlf-no-last-line-end"],
)
@pytest.mark.parametrize(
    ("name", "heading"),
    [("token_usage.md", b"## Detailed Log\n"), ("sessions/s1.md", b"## Calls\n")],
)
def test_a_journal_an_editor_saved_with_crlf_or_a_bom_goes_on(
    tmp_path: Path,
    make_record: RecordFactory,
    name: str,
    heading: bytes,
    save: Callable[[bytes], bytes],
) -> None:
    """A journal with a note added and saved by an editor that writes CRLF line ends or a UTF-8
    BOM (Windows editors, VS Code with files.eol, git core.autocrlf) was refused for good ("not
    a tokenmeter journal or its first line was edited"): every later record went to
    quarantine.jsonl. It goes on from the text as edited, written again with LF line ends."""
    sink = MarkdownJournalSink(tmp_path)
    sink.write([make_record(i) for i in range(3)])
    path = tmp_path / name
    text = path.read_bytes()
    path.write_bytes(save(text.replace(heading, heading + b"\nA note of mine.\n", 1)))

    sink.write([make_record(3 + i) for i in range(2)])
    sink.write([make_record(5)])

    assert journal_problems(tmp_path) == []
    saved = path.read_bytes()
    assert b"\nA note of mine.\n" in saved
    assert b"\r" not in saved and not saved.startswith(BOM)
    usage = (tmp_path / "token_usage.md").read_text(encoding="utf-8")
    assert len(table_rows(usage, "| # | Timestamp |")) == 6
    assert table_rows(usage, "| Provider | Model | Calls |")[-1][2] == "**6**"


def test_a_journal_linked_from_elsewhere_is_rewritten_where_the_link_points(
    tmp_path: Path, make_record: RecordFactory
) -> None:
    """token_usage.md kept in a notes vault and linked into the journal directory: the first
    document rewritten whole (its head grew) was renamed over the link, and the linked file
    stopped being updated (12 calls of 41 there). The file the link names is replaced now, with
    its mode, and the link kept."""
    journal = tmp_path / "journal"
    sink = MarkdownJournalSink(journal)
    sink.write([make_record(0)])
    vault = tmp_path / "vault"
    vault.mkdir()
    usage = journal / "token_usage.md"
    usage.rename(vault / "token_usage.md")
    (vault / "token_usage.md").chmod(0o640)
    usage.symlink_to(vault / "token_usage.md")

    # 30 models with long names make the head outgrow its room: the document is rewritten.
    sink.write(
        [make_record(1 + i, model_name=f"model-{i:02d}-with-a-long-name") for i in range(30)]
    )

    assert usage.is_symlink()
    assert stat.S_IMODE((vault / "token_usage.md").stat().st_mode) == 0o640
    text = (vault / "token_usage.md").read_text(encoding="utf-8")
    assert table_rows(text, "| Provider | Model | Calls |")[-1][2] == "**31**"
    assert sorted(p.name for p in vault.iterdir()) == ["token_usage.md"]
    assert journal_problems(journal) == []


def test_a_link_planted_at_the_temporary_file_is_not_followed(
    tmp_path: Path, make_record: RecordFactory
) -> None:
    """A document rewritten whole (its head grew) was written to ``.NAME.PID.tmp`` opened with
    O_TRUNC, following a symbolic link someone with write access to the directory planted there
    (the pid is no secret): the file it pointed to was truncated, overwritten with the journal
    and made mode 0600, and the link renamed to ``token_usage.md`` took every later batch there."""
    journal = tmp_path / "journal"
    sink = MarkdownJournalSink(journal)
    sink.write([make_record(0)])
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n", encoding="utf-8")
    victim.chmod(0o644)
    (journal / f".token_usage.md.{os.getpid()}.tmp").symlink_to(victim)

    # 30 models with long names make the head outgrow its room: the document is rewritten.
    sink.write(
        [make_record(1 + i, model_name=f"model-{i:02d}-with-a-long-name") for i in range(30)]
    )

    assert victim.read_text(encoding="utf-8") == "precious\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644
    usage = journal / "token_usage.md"
    assert not usage.is_symlink()
    assert table_rows(usage.read_text(encoding="utf-8"), "| Provider | Model | Calls |")[-1][2] == (
        "**31**"
    )
    assert journal_problems(journal) == []


def test_a_directory_that_can_hold_no_journal_is_refused_at_once(tmp_path: Path) -> None:
    """MarkdownJournalSink took a regular file, a device or a FIFO as its directory: every write
    then failed on the writer thread, its records set aside."""
    for kind, path in unusable_paths(tmp_path, "directory").items():
        with pytest.raises(ValueError) as excinfo:
            MarkdownJournalSink(path)
        message = one_line_value_error(excinfo)
        assert message.startswith("directory must ") and (kind in message or path == "")


def test_a_journal_linked_into_a_folder_not_made_yet_is_written_there(
    tmp_path: Path, make_record: RecordFactory
) -> None:
    """A journal file linked into a notes vault whose folder is not made yet: the rewrite's
    temporary file went to that missing folder, every write failed and the records were set
    aside as ones the sink cannot take. The folder is made, owner-only, as a linked sink file's."""
    journal = tmp_path / "journal"
    journal.mkdir()
    linked = tmp_path / "vault" / "notes" / "token_usage.md"
    (journal / "token_usage.md").symlink_to(linked)
    sink = MarkdownJournalSink(journal)

    sink.write([make_record(i, model_name=f"model-{i:02d}-with-a-long-name") for i in range(30)])

    assert (journal / "token_usage.md").is_symlink()
    assert stat.S_IMODE(linked.parent.stat().st_mode) == 0o700
    text = linked.read_text(encoding="utf-8")
    assert table_rows(text, "| Provider | Model | Calls |")[-1][2] == "**30**"
