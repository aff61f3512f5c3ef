"""A separate process that writes records to the sinks named on its command line.

Used by test_sinks_multiprocess.py: ``python writer_process.py PREFIX COUNT BATCH DIR [forever]``
writes COUNT records (ids PREFIX-000000...) in batches of BATCH to DIR/usage.db, DIR/usage.jsonl
and DIR/journal; with "forever" it keeps writing new batches until it is killed.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sink_helpers import build_record  # type: ignore[import-not-found, unused-ignore]

from tokenmeter.sinks import JSONLSink, MarkdownJournalSink, Sink, SQLiteSink


def main() -> None:
    prefix, count, batch, directory = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    forever = sys.argv[5:] == ["forever"]
    sinks: list[Sink] = [
        SQLiteSink(Path(directory) / "usage.db"),
        JSONLSink(Path(directory) / "usage.jsonl"),
        MarkdownJournalSink(Path(directory) / "journal"),
    ]
    starts = itertools.count(0, batch) if forever else range(0, count, batch)
    for start in starts:
        records = [
            build_record(i, id=f"{prefix}-{i:06d}", session_id=f"{prefix}-session")
            for i in range(start, start + batch if forever else min(start + batch, count))
        ]
        for sink in sinks:
            sink.write(records)
        if forever and start == 0:
            print("started", flush=True)
    for sink in sinks:
        sink.close()


if __name__ == "__main__":
    main()
