from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from helpers import (  # type: ignore[import-not-found, unused-ignore]
    one_line_value_error,
    returns,
    unusable_paths,
)
from sink_helpers import (  # type: ignore[import-not-found, unused-ignore]
    DISK_FULL_RECORDS,
    disk_faults,
    run_disk_full_writer,
    skip_without_tmpfs,
    write_reference,
)

from tokenmeter._models import UsageRecord
from tokenmeter.sinks import JSONLSink
from tokenmeter.sinks.jsonl import read_jsonl

RecordFactory = Callable[..., UsageRecord]
REPO = Path(__file__).resolve().parents[2]


def test_records_round_trip_exactly(tmp_path: Path, make_record: RecordFactory) -> None:
    records = [
        make_record(0),
        make_record(1, estimated_cost_usd=None, cost_breakdown=None),
        make_record(
            2,
            estimated_cost_usd=Decimal("0.000123456789"),
            cost_breakdown={"input": Decimal("0.0001"), "output": Decimal("0.000023456789")},
            tags={"who": "émilie", "odd": 'quote " and\nnewline'},
            status="error",
            error="APITimeoutError",
            streamed=True,
        ),
        make_record(
            3,
            modalities={"input_text": 7, "output_image": 1290},
            tool_requests={"web_search": 2},
            cost_breakdown={"input": Decimal("0.0000021"), "output_image": Decimal("0.0387")},
        ),
    ]
    sink = JSONLSink(tmp_path / "usage.jsonl")
    sink.write(records)
    sink.close()

    assert [r.model_dump() for r in read_jsonl(tmp_path / "usage.jsonl") if r] == [
        r.model_dump() for r in records
    ]


def test_each_line_is_the_compact_spec_json(tmp_path: Path, make_record: RecordFactory) -> None:
    records = [make_record(i, tags={"n": str(i), "ü": "|"}) for i in range(3)]
    JSONLSink(tmp_path / "usage.jsonl").write(records)

    lines = (tmp_path / "usage.jsonl").read_text(encoding="utf-8").splitlines()
    assert lines == [
        json.dumps(r.to_json_dict(), separators=(",", ":"), ensure_ascii=False) for r in records
    ]
    assert list(json.loads(lines[0])) == list(UsageRecord.model_fields)


def test_appends_to_an_existing_file(tmp_path: Path, make_record: RecordFactory) -> None:
    path = tmp_path / "usage.jsonl"
    JSONLSink(path).write([make_record(0)])
    JSONLSink(path).write([make_record(1), make_record(2)])

    assert [r.id for r in read_jsonl(path) if r] == ["rec-000000", "rec-000001", "rec-000002"]


def test_a_torn_last_line_stays_alone_and_new_lines_parse(
    tmp_path: Path, make_record: RecordFactory
) -> None:
    path = tmp_path / "usage.jsonl"
    JSONLSink(path).write([make_record(i) for i in range(3)])
    size = path.stat().st_size
    os.truncate(path, size - 40)  # a writer died in the middle of its last line

    JSONLSink(path).write([make_record(3), make_record(4)])

    parsed = list(read_jsonl(path))
    assert [r.id if r else None for r in parsed] == [
        "rec-000000",
        "rec-000001",
        None,
        "rec-000003",
        "rec-000004",
    ]


def test_a_failed_write_leaves_no_partial_batch(tmp_path: Path, make_record: RecordFactory) -> None:
    """A batch that hits the file size limit half-way is taken back out, so a retry is clean."""
    path = tmp_path / "usage.jsonl"
    JSONLSink(path).write([make_record(0)])
    before = path.read_bytes()
    script = f"""
import resource, signal, sys
sys.path.insert(0, {str(REPO)!r}); sys.path.insert(0, {str(Path(__file__).parent)!r})
from sink_helpers import build_record
from tokenmeter.sinks import JSONLSink
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, ({len(before) + 5000}, resource.RLIM_INFINITY))
try:
    JSONLSink({str(path)!r}).write([build_record(i) for i in range(1, 200)])
except OSError as exc:
    print(type(exc).__name__)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )

    assert result.stdout.strip() == "OSError"
    assert path.read_bytes() == before


def test_file_and_created_directories_are_owner_only(
    tmp_path: Path, make_record: RecordFactory
) -> None:
    path = tmp_path / "logs" / "nested" / "usage.jsonl"
    JSONLSink(path).write([make_record(0)])

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "logs").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "logs" / "nested").stat().st_mode) == 0o700


def test_a_forked_child_appends_through_its_own_descriptor(
    tmp_path: Path, make_record: RecordFactory
) -> None:
    path = tmp_path / "usage.jsonl"
    sink = JSONLSink(path)
    sink.write([make_record(0)])

    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            sink.write([make_record(1)])
            sink.close()
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    sink.write([make_record(2)])

    assert os.waitstatus_to_exitcode(status) == 0
    assert sorted(r.id for r in read_jsonl(path) if r) == [
        "rec-000000",
        "rec-000001",
        "rec-000002",
    ]
    sink.close()


@pytest.mark.parametrize("rotation", ["delete", "rename"])
def test_lines_after_the_file_is_deleted_or_renamed_go_to_its_path(
    tmp_path: Path, make_record: RecordFactory, rotation: str
) -> None:
    path = tmp_path / "usage.jsonl"
    rotated = tmp_path / "usage.jsonl.1"
    sink = JSONLSink(path)
    sink.write([make_record(i) for i in range(3)])

    if rotation == "delete":
        path.unlink()
    else:  # log rotation moves the file
        path.rename(rotated)
    sink.write([make_record(3), make_record(4)])
    sink.write([make_record(5)])
    sink.close()

    assert [r.id for r in read_jsonl(path) if r] == [f"rec-{i:06d}" for i in range(3, 6)]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    if rotation == "rename":
        assert [r.id for r in read_jsonl(rotated) if r] == [f"rec-{i:06d}" for i in range(3)]


def test_lines_that_are_not_records_read_as_none(tmp_path: Path) -> None:
    path = tmp_path / "usage.jsonl"
    path.write_text('{"id": "x"}\nnot json\n[1, 2]\n\n', encoding="utf-8")

    assert list(read_jsonl(path)) == [None, None, None]


def test_a_deeply_nested_line_reads_as_none(tmp_path: Path, make_record: RecordFactory) -> None:
    """``json.loads`` of a line nested 100,000 deep raises RecursionError, which stopped the
    reading of the whole file instead of skipping that line."""
    path = tmp_path / "usage.jsonl"
    JSONLSink(path).write([make_record(0)])
    with path.open("a", encoding="utf-8") as file:
        file.write("[" * 100_000 + "]" * 100_000 + "\n")
        file.write('{"a":' * 100_000 + "1" + "}" * 100_000 + "\n")
    JSONLSink(path).write([make_record(1)])

    read = list(read_jsonl(path))
    assert [r if r is None else r.id for r in read] == ["rec-000000", None, None, "rec-000001"]


@pytest.mark.parametrize(
    ("cost", "breakdown", "field"),
    [
        ("abc", None, "estimated_cost_usd"),
        (True, None, "estimated_cost_usd"),
        ([1], None, "estimated_cost_usd"),
        (0.5, {"input": None}, "cost_breakdown"),
        (0.5, {"input": "many"}, "cost_breakdown"),
        (0.5, [1, 2], "cost_breakdown"),
    ],
)
def test_a_line_with_a_cost_that_is_no_number_reads_as_none(
    tmp_path: Path, make_record: RecordFactory, cost: Any, breakdown: Any, field: str
) -> None:
    """A line edited to hold a cost that is no number stopped the reading of the whole file
    with decimal.InvalidOperation (or AttributeError for a breakdown that is no object), and
    UsageRecord.from_json_dict raised those instead of a ValueError naming the field."""
    path = tmp_path / "usage.jsonl"
    JSONLSink(path).write([make_record(0)])
    edited = {**make_record(1).to_json_dict(), "estimated_cost_usd": cost}
    edited["cost_breakdown"] = breakdown
    with path.open("a", encoding="utf-8") as file:
        file.write(json.dumps(edited) + "\n")
    JSONLSink(path).write([make_record(2)])

    read = list(read_jsonl(path))
    assert [r if r is None else r.id for r in read] == ["rec-000000", None, "rec-000002"]
    with pytest.raises(ValueError, match=field) as excinfo:
        UsageRecord.from_json_dict(edited)
    assert excinfo.type is ValueError and "\n" not in str(excinfo.value)


@pytest.mark.parametrize(("fault", "start", "step"), disk_faults(fsize_step=5000, enospc_step=8192))
def test_a_full_disk_leaves_no_torn_or_duplicate_lines(
    tmp_path: Path, fault: str, start: int, step: int
) -> None:
    """Batches that fail part-way on a full disk are taken back out, so their retries append each
    record once: the file ends as a roomy disk would have it."""
    skip_without_tmpfs(fault)
    out, report = run_disk_full_writer("jsonl", tmp_path, fault, start=start, step=step)

    assert report["failures"] > 10
    assert report["problems"] == []
    parsed = list(read_jsonl(out / "usage.jsonl"))
    assert [r.id if r else None for r in parsed] == [
        f"rec-{i:06d}" for i in range(DISK_FULL_RECORDS)
    ]
    write_reference("jsonl", tmp_path / "reference")
    reference = (tmp_path / "reference" / "usage.jsonl").read_bytes()
    assert (out / "usage.jsonl").read_bytes() == reference


def test_a_relative_path_stays_where_it_was_when_the_process_changes_directory(
    tmp_path: Path, make_record: RecordFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A daemon changes to "/" after start-up: a sink given a relative path looked it up again
    from the new working directory, and went on in new files there (or failed for ever where it
    may not write), its records split over two places."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    sink = JSONLSink("usage.jsonl")
    sink.write([make_record(0)])
    monkeypatch.chdir(tmp_path / "b")
    sink.write([make_record(1)])
    sink.close()

    assert sink.path == tmp_path / "a" / "usage.jsonl"
    assert [r.id for r in read_jsonl(sink.path) if r] == ["rec-000000", "rec-000001"]
    assert list((tmp_path / "b").iterdir()) == []


def test_a_path_that_can_hold_no_file_is_refused_at_once(tmp_path: Path) -> None:
    """JSONLSink took a directory, /dev/full, a FIFO or "" (what SQLiteSink refuses): every write
    then failed on the writer thread (records set aside), and into a FIFO nobody read the lines
    went with no error (flush() said True; the records were gone at exit)."""
    for kind, path in unusable_paths(tmp_path, "file").items():
        with pytest.raises(ValueError) as excinfo:
            JSONLSink(path)
        message = one_line_value_error(excinfo)
        assert message.startswith("path must ") and (kind in message or path == "")


def test_a_fifo_put_in_place_of_the_file_is_refused_not_written_into(
    tmp_path: Path, make_record: RecordFactory
) -> None:
    """usage.jsonl rotated away and a named pipe put there for a log shipper not reading yet:
    the sink opened it and its writer blocked in write() for ever once the pipe was full
    (flush() False from then on, 256 records "may be lost" at exit). The write fails now,
    saying what is there, and the records are kept for the next write, which the file takes."""
    path = tmp_path / "usage.jsonl"
    sink = JSONLSink(path)
    sink.write([make_record(0)])
    path.rename(tmp_path / "usage.jsonl.1")
    os.mkfifo(path)
    records = [make_record(i, tags={"team": "x" * 1_000}) for i in range(1, 201)]  # > 64 KiB
    (error,) = returns(lambda: sink.write(records), "the write into the FIFO")
    assert isinstance(error, OSError) and "a FIFO, not a regular file" in str(error)
    path.unlink()
    sink.write(records)
    sink.close()
    assert [r.id for r in read_jsonl(path) if r] == [r.id for r in records]
