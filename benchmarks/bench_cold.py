"""The record's road timed hot (run back to back) and cold (one run after each bare SDK call).

    python benchmarks/bench_cold.py [--calls 3000] [--made-at-once]

An application calls tokenmeter once per LLM call, between a millisecond or more of the SDK's
own work (request building, JSON, pydantic models), which evicts our code and data from the CPU's
caches. A loop that runs one piece of ours back to back (timeit, callgrind's instruction counts)
finds it in cache and says what it costs in the best case; the cold figure is what it costs in an
application. Their ratio says how much of a piece's cost is its footprint (distinct code and
objects touched) rather than its instructions: such a piece gets cheaper by touching less, or by
being done for many records at once on a writer's thread, not by saving instructions.

Each piece runs with the default SQLite sink configured, its inputs made once from a real
``ChatCompletion`` parsed by the openai SDK over ``httpx2.MockTransport``. Printed: the median of
``--calls`` timings, hot and cold, and cold/hot. The last line times whole calls, a bare client
and a ``tokenmeter.wrap()``-ped one alternating call by call: the median of the per-pair
differences is what one instrumented call adds, cold as in an application; its record is made
later by a writer (the ``emit`` row's hot figure is what that costs the writer), so the line
after it says how many calls were.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import chat, describe, make_records_at_once, mock_client

import tokenmeter
from tokenmeter import _pipeline, _record, _sessions
from tokenmeter.pricing._engine import cost_fields
from tokenmeter.sinks.sqlite import _sqlite_row
from tokenmeter.usage.openai import from_openai_response

clock = time.perf_counter


def timings(piece: Callable[[], Any], calls: int, between: Callable[[], Any] | None) -> float:
    """Median seconds of ``piece()``, each run after ``between()`` (cold) or after the last run
    of itself (hot)."""
    times = []
    for _ in range(calls):
        if between is not None:
            between()
        start = clock()
        piece()
        times.append(clock() - start)
    tokenmeter.flush()
    return statistics.median(times)


def added_per_call(bare: Callable[[], Any], metered: Callable[[], Any], calls: int) -> float:
    """Median of (metered call - bare call), the two alternating call by call."""
    differences = []
    for _ in range(calls):
        start = clock()
        bare()
        middle = clock()
        metered()
        differences.append((clock() - middle) - (middle - start))
    tokenmeter.flush()
    return statistics.median(differences)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument(
        "--made-at-once",
        action="store_true",
        help="make each record on the caller's thread (a design compared, not tokenmeter's)",
    )
    args = parser.parse_args()
    if args.made_at_once:
        make_records_at_once()
    if args.calls < 1:
        parser.error("--calls must be at least 1")
    print(describe())
    tokenmeter.configure(sinks=["sqlite"], directory=tempfile.mkdtemp())
    bare = chat(mock_client())
    completion = bare()
    usage = from_openai_response(completion).usage  # type: ignore[union-attr]
    session = _sessions.implicit_session()
    now = datetime.now(UTC)

    def emit() -> Any:
        return _record.emit(
            "openai",
            "gpt-4o-2024-08-06",
            usage,
            session,
            request_model="gpt-4o",
            operation="chat.completions",
            request_id="chatcmpl-bench",
            latency_ms=1.5,
        )

    record = emit()
    pieces: dict[str, Callable[[], Any]] = {
        "read the usage (from_openai_response)": lambda: from_openai_response(completion),
        "price it (cost_fields)": lambda: cost_fields("openai", record.model_name, usage, at=now),
        "add it to the session (Session._add)": lambda: session._add(record),
        "make the SQLite row (_sqlite_row)": lambda: _sqlite_row(record),
        "queue it for the sinks (submit)": lambda: _pipeline.submit(record),
        "the whole record's road (emit)": emit,
    }
    print(f"\nmedians of {args.calls:,} runs (us)       hot      cold   cold/hot")
    for name, piece in pieces.items():
        timings(piece, 200, bare)  # warm-up
        hot = timings(piece, args.calls, None) * 1e6
        cold = timings(piece, args.calls, bare) * 1e6
        print(f"  {name:38} {hot:7.2f}  {cold:8.2f}   {cold / hot:5.1f}x")
    metered = chat(tokenmeter.wrap(mock_client()))
    added_per_call(bare, metered, 200)
    queued = _count_calls_made_later()
    added = added_per_call(bare, metered, args.calls) * 1e6
    print(f"\n  a whole call, wrapped client - bare client, alternating: {added:+.1f} us (median)")
    print(f"  of {args.calls:,} calls, {queued[0]:,} had their record made later by a writer")


def _count_calls_made_later() -> list[int]:
    """A counter of the calls ``_pipeline.later`` queues from now on (the others were made on
    the caller's thread: the writer was behind by ``max_queue`` calls, or something waited)."""
    count = [0]
    queue = _pipeline.later

    def counted(session: Any, call: tuple[Any, ...]) -> None:
        count[0] += 1
        queue(session, call)

    _pipeline.later = counted
    return count


if __name__ == "__main__":
    main()
