"""PostgreSQL: records/s the sink stores, and ``report --by model`` against the bare GROUP BY.

Prints, in one run against a PostgreSQL on loopback:
- records/s ``PostgresSink.write`` stores in the writer's chunks of 256 (target >= 20,000/s),
  with the CPU seconds this process spent per 1,000 records (steadier than wall time here);
- ``tokenmeter report --by model --source postgresql://...`` over N rows (default 1,000,000)
  against the bare ``SELECT ... GROUP BY`` it boils down to, run in the same way (target <= 1.5x).

The server: ``TOKENMETER_TEST_PG`` (a DSN) when set, else a throwaway cluster started with
``.ci/pg`` (Debian's postgresql must be installed) and removed at the end.

Usage: python benchmarks/bench_postgres.py [--records N] [--report-rows N] [--repeat N]
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import psycopg  # noqa: E402
from bench_report import _rows  # noqa: E402
from bench_sinks import make_records  # noqa: E402

from tokenmeter._models import UsageRecord  # noqa: E402
from tokenmeter.sinks.postgres import _RECORD_COLUMNS, PostgresSink  # noqa: E402
from tokenmeter.sinks.sqlite import _record_row  # noqa: E402

WRITE_TARGET = 20_000
REPORT_TARGET = 1.5
CHUNK = 256  # what a writer thread hands a sink at most (tokenmeter._pipeline._CHUNK)


@contextmanager
def server() -> Iterator[str]:
    dsn = os.environ.get("TOKENMETER_TEST_PG")
    if dsn:
        yield dsn
        return
    directory = tempfile.mkdtemp(prefix="tokenmeter-bench-pg-")
    os.rmdir(directory)
    started = subprocess.run(
        [str(REPO / ".ci" / "pg"), "start", directory], capture_output=True, text=True, check=True
    )
    try:
        yield started.stdout.strip()
    finally:
        subprocess.run([str(REPO / ".ci" / "pg"), "stop", directory], check=False)
        shutil.rmtree(directory, ignore_errors=True)


def new_database(dsn: str) -> str:
    name = f"tm_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}".encode())
    return f"{dsn.replace('dbname=postgres', '')} dbname={name}"


def _write_rate(dsn: str, records: list[UsageRecord], bare: bool) -> tuple[float, float]:
    """(records/s, CPU ms per 1,000 records in this process) of one run into a new database.

    ``bare``: the floor to compare with, measured the same way: the same rows COPYed straight
    into the table in the same chunks, one transaction each, with no staging, no duplicate
    check and no retry logic.
    """
    sink = PostgresSink(new_database(dsn))
    sink.write(records[:1])  # connect and migrate outside the measurement
    conn = sink._connection()
    started, cpu = time.perf_counter(), time.process_time()
    for i in range(1, len(records), CHUNK):
        chunk = records[i : i + CHUNK]
        if not bare:
            sink.write(chunk)
            continue
        with (
            conn.transaction(),
            conn.cursor() as cur,
            cur.copy(f"COPY records ({_RECORD_COLUMNS}) FROM STDIN") as copy,
        ):
            for record in chunk:
                copy.write_row(_record_row(record))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    sink.close()
    return (len(records) - 1) / elapsed, cpu / (len(records) - 1) * 1e6


def bench_writes(dsn: str, count: int, repeat: int) -> None:
    records = make_records(count)
    gc.freeze()
    runs = {"sink": [], "bare": []}  # type: dict[str, list[tuple[float, float]]]
    for _ in range(repeat):  # interleaved: load on the machine hits both alike
        runs["sink"].append(_write_rate(dsn, records, bare=False))
        runs["bare"].append(_write_rate(dsn, records, bare=True))
    sink_rate, sink_cpu = max(r[0] for r in runs["sink"]), min(r[1] for r in runs["sink"])
    bare_rate, bare_cpu = max(r[0] for r in runs["bare"]), min(r[1] for r in runs["bare"])
    print(
        f"write     {sink_rate:>10,.0f} records/s in chunks of {CHUNK} "
        f"({sink_cpu:.1f} ms CPU per 1,000 here); bare COPY of the same rows "
        f"{bare_rate:,.0f}/s ({bare_cpu:.1f} ms): ratio {sink_rate / bare_rate:.2f}x of bare"
    )
    print(
        f"          target {WRITE_TARGET:,}/s: {'PASS' if sink_rate >= WRITE_TARGET else 'MISS'} "
        f"({sink_rate / WRITE_TARGET:.2f}x)"
    )


def load_rows(dsn: str, count: int) -> None:
    PostgresSink(dsn).write(make_records(1))  # the real sink makes the real schema
    with psycopg.connect(dsn) as conn:
        conn.execute("DELETE FROM tokenmeter.records")
        load = f"COPY tokenmeter.records ({_RECORD_COLUMNS}) FROM STDIN"
        with conn.cursor() as cur, cur.copy(load) as copy:
            for _, row in _rows(count):
                copy.write_row(row)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE tokenmeter.records")


_BARE = (
    "SELECT model_provider, model_name, COUNT(*), SUM(input_tokens), SUM(output_tokens), "
    "SUM(cache_read_tokens), SUM(cache_write_tokens), SUM(reasoning_tokens), SUM(total_tokens), "
    "COUNT(cost_pusd), SUM(cost_pusd) FROM tokenmeter.records GROUP BY 1, 2"
)
_CHILD_BARE = """
import sys, time, psycopg
start = time.perf_counter()
with psycopg.connect(sys.argv[1]) as conn:
    conn.execute(sys.argv[2]).fetchall()
print(time.perf_counter() - start, file=sys.stderr)
"""
_CHILD_REPORT = """
import sys, time
import psycopg  # imported before the clock starts, as in the bare child: the same driver cost
from tokenmeter.cli import main
start = time.perf_counter()
code = main(sys.argv[1:])
print(time.perf_counter() - start, file=sys.stderr)
sys.exit(code)
"""


def _timed(args: list[str]) -> float:
    result = subprocess.run(
        [sys.executable, "-c", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    if result.returncode:
        raise SystemExit(result.stderr)
    return float(result.stderr.strip().splitlines()[-1])


def bench_report(dsn: str, count: int, repeat: int, reuse: str | None) -> None:
    if reuse:
        database = f"{dsn.replace('dbname=postgres', '')} dbname={reuse}"
    else:
        database = new_database(dsn)
        load_rows(database, count)
        print(f"          loaded {count:,} rows into {database.rsplit('=', 1)[1]}")
    url = "postgresql://?" + "&".join(database.split())  # the same server, as a URL
    bare = min(_timed([_CHILD_BARE, database, _BARE]) for _ in range(repeat))
    report = min(
        _timed([_CHILD_REPORT, "report", "--source", url, "--by", "model", "--format", "json"])
        for _ in range(repeat)
    )
    ratio = report / bare
    print(
        f"report    {count:,} rows: --by model {report:.3f} s, bare GROUP BY {bare:.3f} s "
        f"(connect included in both, the driver imported before)\n"
        f"          ratio {ratio:.2f}x  (target <= {REPORT_TARGET}x: "
        f"{'PASS' if ratio <= REPORT_TARGET else 'MISS'})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000, help="records to write")
    parser.add_argument("--report-rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the best counts")
    parser.add_argument("--skip-report", action="store_true")
    parser.add_argument("--skip-writes", action="store_true")
    parser.add_argument("--reuse-db", help="a database a previous run loaded (it prints the name)")
    args = parser.parse_args()
    with server() as dsn:
        if not args.skip_writes:
            bench_writes(dsn, args.records, args.repeat)
        if not args.skip_report:
            bench_report(dsn, args.report_rows, args.repeat, args.reuse_db)


if __name__ == "__main__":
    main()
