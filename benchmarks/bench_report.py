"""How fast is ``tokenmeter report --by model`` on 1,000,000 records, and how much memory?

Prints, in one run, wall and CPU time (user + sys of the process, steadier than wall time on a
shared machine) of each contender, each run in its own process, best of ``--repeat``:
- SQLite: the report against the bare ``sqlite3`` GROUP BY it boils down to (target <= 3x);
- JSONL: the report against a bare ``json.loads`` loop over the same file (target: 10 s on 2
  idle cores; the ratio says how far the report is from merely parsing the file; a file this
  large is read in two halves at once, so the report's CPU time is that of both processes);
- peak memory (max RSS) of each report process at 100k and 1M records (target: flat).

The JSONL lines are written as the JSONL sink writes them (same keys, same order, compact).

Usage: python benchmarks/bench_report.py [--records N] [--keep DIR] [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tokenmeter._models import UsageRecord  # noqa: E402
from tokenmeter.sinks import SQLiteSink  # noqa: E402

MODELS = [
    ("openai", "gpt-4o", "2.5", "10"),
    ("openai", "gpt-4o-mini", "0.15", "0.6"),
    ("anthropic", "claude-sonnet-4-5", "3", "15"),
    ("anthropic", "claude-haiku-4-5", "1", "5"),
    ("google", "gemini-2.5-flash", "0.3", "2.5"),
    ("google", "gemini-2.5-pro", "1.25", "10"),
    ("custom", "in-house-model", "", ""),  # unpriced
]
START = datetime(2026, 1, 1, tzinfo=UTC)
MTOK = Decimal(1_000_000)
#: The columns each synthetic row fills (newer columns keep their defaults).
_COLUMNS = (
    "id", "timestamp", "model_provider", "model_name", "input_tokens", "output_tokens",
    "total_tokens", "estimated_cost_usd", "cost_pusd", "request_model", "operation",
    "cache_read_tokens", "cache_write_tokens", "reasoning_tokens", "cost_breakdown",
    "price_source", "session_id", "session_name", "tags", "latency_ms", "streamed", "status",
    "error", "request_id", "estimated",
)  # fmt: skip


def _rows(count: int, seed: int = 7):  # type: ignore[no-untyped-def]
    """(json line, sqlite tuple) for each synthetic record; costs exact to 12 decimals."""
    rng = random.Random(seed)
    for i in range(count):
        provider, model, rate_in, rate_out = MODELS[i % len(MODELS)]
        inp, out = rng.randint(10, 20_000), rng.randint(1, 2_000)
        ts = START + timedelta(seconds=i * 30)
        stamp = ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{i % 1000:03d}Z"
        cost = None if not rate_in else (inp * Decimal(rate_in) + out * Decimal(rate_out)) / MTOK
        session = f"sess-{i // 50}"
        tags = {"feature": ("chat", "search", "summarise")[i % 3]}
        record = {
            "timestamp": stamp,
            "model_provider": provider,
            "model_name": model,
            "input_tokens": inp,
            "output_tokens": out,
            "total_tokens": inp + out,
            "estimated_cost_usd": None if cost is None else float(cost),
            "id": f"r{i:09d}",
            "request_model": model,
            "operation": "chat.completions",
            "cache_read_tokens": 0,
            "cache_write_tokens": 0,
            "reasoning_tokens": 0,
            "cost_breakdown": None,
            "price_source": "bench",
            "session_id": session,
            "session_name": session,
            "tags": tags,
            "latency_ms": 120.5,
            "streamed": False,
            "status": "ok",
            "error": None,
            "request_id": None,
            "estimated": False,
            "modalities": {},
            "tool_requests": {},
        }
        row = (
            f"r{i:09d}",
            stamp,
            provider,
            model,
            inp,
            out,
            inp + out,
            None if cost is None else format(cost, "f"),
            None if cost is None else int(cost * 10**12),
            model,
            "chat.completions",
            0,
            0,
            0,
            None,
            "bench",
            session,
            session,
            json.dumps(tags),
            120.5,
            0,
            "ok",
            None,
            None,
            0,
        )
        yield json.dumps(record, separators=(",", ":")), row


def generate(directory: Path, count: int) -> tuple[Path, Path]:
    db, jsonl = directory / f"usage-{count}.db", directory / f"usage-{count}.jsonl"
    seed = UsageRecord(
        timestamp=START,
        model_provider="x",
        model_name="seed",
        input_tokens=0,
        output_tokens=0,
        total_tokens=0,
        estimated_cost_usd=None,
        id="seed",
    )
    sink = SQLiteSink(db)  # the real sink creates the real schema
    sink.write([seed])
    sink.close()
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM records")
    insert = (
        f"INSERT INTO records ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
    )
    batch: list[tuple[object, ...]] = []
    with jsonl.open("w") as out:
        for line, row in _rows(count):
            out.write(line + "\n")
            batch.append(row)
            if len(batch) == 50_000:
                conn.executemany(insert, batch)
                batch.clear()
        conn.executemany(insert, batch)
    conn.commit()
    conn.close()
    return db, jsonl


_CHILD = """
import resource, sys, time
def cpu(who):
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime
from tokenmeter.cli import main
start, start_cpu = time.perf_counter(), cpu(resource.RUSAGE_SELF)
code = main(sys.argv[1:])
elapsed, used = time.perf_counter() - start, cpu(resource.RUSAGE_SELF) - start_cpu
# A report may read half of a large JSONL file in a child process: its CPU time counts too, and
# the longer of the two is what the report takes when each has a core to itself.
child = cpu(resource.RUSAGE_CHILDREN)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(f"{elapsed} {used + child} {rss} {code} {max(used, child)}", file=sys.stderr)
"""

_BARE_JSONL = """
import json, resource, sys, time
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
start, start_cpu = time.perf_counter(), cpu()
with open(sys.argv[1], "rb") as handle:
    for line in handle:
        json.loads(line)
elapsed, used = time.perf_counter() - start, cpu() - start_cpu
print(f"{elapsed} {used} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss} 0", file=sys.stderr)
"""

_BARE_SQL = """
import resource, sqlite3, sys, time
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
conn = sqlite3.connect(sys.argv[1])
start, start_cpu = time.perf_counter(), cpu()
conn.execute(
    "SELECT model_provider, model_name, COUNT(*), SUM(total_tokens), SUM(cost_pusd) "
    "FROM records GROUP BY model_provider, model_name"
).fetchall()
elapsed, used = time.perf_counter() - start, cpu() - start_cpu
print(f"{elapsed} {used} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss} 0", file=sys.stderr)
"""


def _child(code: str, *args: str) -> tuple[float, float, float, float]:
    """(wall s, CPU s, peak RSS MiB, CPU s of its longer process) the child process reports for
    its measured part."""
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    elapsed, used, rss_kib, status, *longest = result.stderr.strip().splitlines()[-1].split()
    assert status == "0", result.stderr
    return float(elapsed), float(used), int(rss_kib) / 1024, float((longest or [used])[0])


def run_report(source: Path) -> tuple[float, float, float, float]:
    """``tokenmeter report --by model --format json`` in its own process."""
    return _child(_CHILD, "report", "--source", str(source), "--by", "model", "--format", "json")


def _best(runs: list[tuple[float, float, float, float]]) -> tuple[float, float, float, float]:
    """Least wall time and least CPU time over the runs (each is noise added to the truth)."""
    return (
        min(r[0] for r in runs),
        min(r[1] for r in runs),
        max(r[2] for r in runs),
        min(r[3] for r in runs),
    )


def _line(name: str, report: tuple[float, ...], bare: tuple[float, ...], what: str) -> str:
    return (
        f"  {name}: report {report[0]:.2f} s wall, {report[1]:.2f} s CPU; "
        f"{what} {bare[0]:.2f} s wall, {bare[1]:.2f} s CPU -> "
        f"{report[0] / bare[0]:.2f}x wall, {report[1] / bare[1]:.2f}x CPU"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path, help="write the data here and keep it")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each contender")
    parser.add_argument("--reuse", action="store_true", help="use the data already in --keep")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        directory = args.keep or Path(temp)
        directory.mkdir(parents=True, exist_ok=True)
        small = max(args.records // 10, 1)
        print(f"generating {args.records:,} and {small:,} records ...", flush=True)
        start = time.perf_counter()
        if args.reuse and args.keep:
            db, jsonl = (
                directory / f"usage-{args.records}.db",
                directory / f"usage-{args.records}.jsonl",
            )
            small_db, small_jsonl = (
                directory / f"usage-{small}.db",
                directory / f"usage-{small}.jsonl",
            )
        else:
            db, jsonl = generate(directory, args.records)
            small_db, small_jsonl = generate(directory, small)
        print(
            f"  generated in {time.perf_counter() - start:.1f} s "
            f"(JSONL {jsonl.stat().st_size / 2**20:.0f} MiB, "
            f"SQLite {db.stat().st_size / 2**20:.0f} MiB)"
        )

        repeat = range(args.repeat)
        for path in (db, jsonl):  # warm the page cache for every contender
            with path.open("rb") as handle:  # in pieces: a child inherits this process's peak RSS
                while handle.read(1 << 20):
                    pass
        load_before = os.getloadavg()[0]
        sqlite_report = _best([run_report(db) for _ in repeat])
        sqlite_bare = _best([_child(_BARE_SQL, str(db)) for _ in repeat])
        jsonl_report = _best([run_report(jsonl) for _ in repeat])
        jsonl_bare = _best([_child(_BARE_JSONL, str(jsonl)) for _ in repeat])
        small_sqlite_rss = run_report(small_db)[2]
        small_jsonl_rss = run_report(small_jsonl)[2]

        load = os.getloadavg()[0]
        print(
            f"\nreport --by model on {args.records:,} records (best of {args.repeat}; load "
            f"average {load_before:.1f} before, {load:.1f} after, on {os.cpu_count()} cores)"
        )
        print(_line("SQLite", sqlite_report, sqlite_bare, "bare GROUP BY") + " (target <= 3x)")
        print(_line("JSONL ", jsonl_report, jsonl_bare, "bare json.loads loop"))
        print(
            f"  (JSONL target: <= 10 s on 2 idle cores; {jsonl_report[0]:.1f} s wall here; the "
            f"longer of its two processes took {jsonl_report[3]:.1f} s CPU)"
        )
        print("peak memory (max RSS of the report process)")
        print(
            f"  SQLite: {small_sqlite_rss:.0f} MiB at {small:,} records, "
            f"{sqlite_report[2]:.0f} MiB at {args.records:,}"
        )
        print(
            f"  JSONL:  {small_jsonl_rss:.0f} MiB at {small:,} records, "
            f"{jsonl_report[2]:.0f} MiB at {args.records:,}"
        )


if __name__ == "__main__":
    main()
