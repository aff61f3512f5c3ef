"""PostgreSQL: records/s the sink stores, and ``report --by model`` against the bare GROUP BY.

Prints, in one run against a PostgreSQL on loopback:
- records/s ``PostgresSink.write`` stores in the writer's chunks (target >= 20,000/s): called
  directly, called with the writer's paced chunks, and driven by the writer thread itself
  (``submit`` ... ``flush``), beside a bare binary COPY of the same rows and the pipeline's own
  ceiling (a sink that only iterates); with the CPU per record of the writing thread and of the
  server process (steadier than wall time on a shared machine);
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
from typing import Any, NamedTuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import psycopg  # noqa: E402
from bench_report import _rows  # noqa: E402
from bench_sinks import make_records  # noqa: E402

from tokenmeter import _pipeline  # noqa: E402
from tokenmeter._models import UsageRecord  # noqa: E402
from tokenmeter._pipeline import _Paced  # noqa: E402
from tokenmeter.sinks.postgres import _RECORD_COLUMNS, RECORD_COLUMNS, PostgresSink  # noqa: E402
from tokenmeter.sinks.sqlite import _record_row  # noqa: E402

WRITE_TARGET = 20_000
REPORT_TARGET = 1.5
CHUNK = _pipeline._CHUNK  # what a writer thread hands a sink at most
_BARE_COPY = f"COPY records ({_RECORD_COLUMNS}) FROM STDIN (FORMAT BINARY)"


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


def _backend_cpu(pid: int) -> float | None:
    """CPU seconds the server process ``pid`` has used (None when /proc cannot tell)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Timed:
    """Passes writes to the sink, counting the CPU its caller (the writer thread) spends."""

    def __init__(self, sink: PostgresSink) -> None:
        self.sink, self.cpu = sink, 0.0

    def write(self, records: list[UsageRecord]) -> None:
        started = time.thread_time()
        try:
            self.sink.write(records)
        finally:
            self.cpu += time.thread_time() - started

    def flush(self) -> None:
        self.sink.flush()

    def close(self) -> None:
        self.sink.close()


class _Iterate:
    """A sink that only looks at each record: the pipeline's own cost, the floor of any sink."""

    def write(self, records: list[UsageRecord]) -> None:
        for _ in records:
            pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _through_pipeline(sink: Any, records: list[UsageRecord]) -> float:
    """Seconds from the first ``submit`` of ``records`` to the ``flush()`` that sees them stored:
    the writer thread drives ``sink`` exactly as it does in an application."""
    _pipeline.set_sinks(lambda: [sink], flush_interval=0.2)
    _pipeline.submit(records[0])
    _pipeline.flush()  # the writer thread, the connection and the schema are ready
    started = time.perf_counter()
    for record in records[1:]:
        _pipeline.submit(record)
    _pipeline.flush()
    return time.perf_counter() - started


def _write_rate(dsn: str, records: list[UsageRecord], how: str) -> Run:
    """One run into a new database.

    ``how``: "write" calls ``PostgresSink.write`` on plain chunks of the writer's size (what the
    sink can do); "paced" on the writer's own paced chunks; "pipeline" submits every record and
    lets the writer thread drive the sink; "bare" is the floor: the same rows binary-COPYed
    straight into the table in the same chunks, with no duplicate or NUL handling and no retry
    logic.
    """
    sink = PostgresSink(new_database(dsn))
    sink.write(records[:1])  # connect and migrate outside the measurement
    conn = sink._connection()
    server = conn.info.backend_pid
    count = len(records) - 1
    wall, cpu, server_cpu = time.perf_counter(), time.thread_time(), _backend_cpu(server)
    if how == "pipeline":
        timed = _Timed(sink)
        wall_s = _through_pipeline(timed, records)
        cpu_s = timed.cpu
    else:
        for i in range(1, len(records), CHUNK):
            chunk = records[i : i + CHUNK]
            if how == "write":
                sink.write(chunk)
            elif how == "paced":
                sink.write(_Paced(chunk))
            else:
                with (
                    conn.cursor() as cur,
                    cur.copy(_BARE_COPY) as copy,
                ):
                    copy.set_types(sink._types)
                    for record in chunk:
                        copy.write_row(_record_row(record))
        wall_s, cpu_s = time.perf_counter() - wall, time.thread_time() - cpu
    after = _backend_cpu(server)
    stored = conn.execute("SELECT count(*) FROM records").fetchone()
    assert stored is not None and stored[0] == len(records), stored
    _pipeline.set_sinks(list)
    sink.close()
    used = None if after is None or server_cpu is None else after - server_cpu
    return Run(count / wall_s, cpu_s / count * 1e6, None if used is None else used / count * 1e6)


class Run(NamedTuple):
    rate: float  # records/s
    cpu_us: float  # CPU of the thread that writes, per record
    server_us: float | None  # CPU of the server process, per record


def _pipeline_floor(records: list[UsageRecord]) -> float:
    rate = (len(records) - 1) / _through_pipeline(_Iterate(), records)
    _pipeline.set_sinks(list)
    return rate


def bench_writes(dsn: str, count: int, repeat: int) -> None:
    records = make_records(count)
    gc.freeze()
    hows = ("write", "paced", "pipeline", "bare")
    runs: dict[str, list[Run]] = {how: [] for how in hows}
    floor = []
    for _ in range(repeat):  # interleaved: load on the machine hits all alike
        for how in hows:
            runs[how].append(_write_rate(dsn, records, how))
        floor.append(_pipeline_floor(records))
    labels = {
        "write": f"PostgresSink.write, plain chunks of {CHUNK}",
        "paced": f"PostgresSink.write, the writer's paced chunks of {CHUNK}",
        "pipeline": "submit() ... flush(): the writer thread drives the sink",
        "bare": "bare binary COPY of the same rows (the floor)",
    }
    for how in hows:
        rate = max(r.rate for r in runs[how])
        cpu = min(r.cpu_us for r in runs[how])
        server = [r.server_us for r in runs[how] if r.server_us is not None]
        on_server = f", server {min(server):5.1f} us" if server else ""
        print(
            f"write     {rate:>8,.0f} records/s  CPU per record: writer {cpu:5.1f} us{on_server}"
            f"  {labels[how]}"
        )
    best = max(r.rate for r in runs["write"])
    print(
        f"          pipeline floor (a sink that only iterates its records): "
        f"{max(floor):,.0f} records/s"
    )
    print(
        f"          sink {best / max(r.rate for r in runs['bare']):.2f}x of the bare COPY; "
        f"target {WRITE_TARGET:,}/s: {'PASS' if best >= WRITE_TARGET else 'MISS'} "
        f"({best / WRITE_TARGET:.2f}x); through the pipeline "
        f"{max(r.rate for r in runs['pipeline']) / WRITE_TARGET:.2f}x"
    )


def load_rows(dsn: str, count: int) -> None:
    PostgresSink(dsn).write(make_records(1))  # the real sink makes the real schema
    with psycopg.connect(dsn) as conn:
        conn.execute("DELETE FROM tokenmeter.records")
        rows = (row for _, row in _rows(count))
        first = next(rows)
        # bench_report's rows may stop before the newest columns, which then take their defaults
        columns = ", ".join(RECORD_COLUMNS[: len(first)])
        load = f"COPY tokenmeter.records ({columns}) FROM STDIN"
        with conn.cursor() as cur, cur.copy(load) as copy:
            copy.write_row(first)
            for row in rows:
                copy.write_row(row)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE tokenmeter.records")


#: What ``report --by model`` shows, computed by hand: every figure of its table (token sums,
#: priced calls and their tokens, errors, blocked and estimated calls, cost) in one GROUP BY.
_BARE = (
    "SELECT model_provider, model_name, COUNT(*), SUM(input_tokens), SUM(output_tokens), "
    "SUM(cache_read_tokens), SUM(cache_write_tokens), SUM(reasoning_tokens), SUM(total_tokens), "
    "COUNT(cost_pusd), SUM(CASE WHEN cost_pusd IS NOT NULL THEN total_tokens END), "
    "SUM(CASE WHEN status = 'error' THEN 1 ELSE 0 END), "
    "SUM(CASE WHEN status = 'blocked' THEN 1 ELSE 0 END), "
    "SUM(CASE WHEN estimated = 1 THEN 1 ELSE 0 END), SUM(cost_pusd) "
    "FROM tokenmeter.records GROUP BY 1, 2"
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


_CHILD_IMPORTS = """
import sys, time
import psycopg
start = time.perf_counter()
import tokenmeter.cli, tokenmeter.cli._report, tokenmeter.cli.reports._query
print(time.perf_counter() - start, file=sys.stderr)
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
    imports = min(_timed([_CHILD_IMPORTS]) for _ in range(repeat))
    ratio = report / bare
    print(
        f"report    {count:,} rows: --by model {report:.3f} s, bare GROUP BY {bare:.3f} s "
        f"(connect included in both, the driver imported before)\n"
        f"          ratio {ratio:.2f}x  (target <= {REPORT_TARGET}x: "
        f"{'PASS' if ratio <= REPORT_TARGET else 'MISS'}); of the report's time, "
        f"{imports:.3f} s is importing the CLI's modules (fixed, whatever the row count)"
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
