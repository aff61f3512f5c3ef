"""OTelSink.write in CPU instructions per record (callgrind): steady where CPU time is not.

For each sink (today's with the v1.41 conventions, today's with the latest ones, and with
``--compare-with COMMIT`` the sink as it was at that commit), a child process writes N records in
the writer's chunks into in-memory exporters under ``valgrind --tool=callgrind``; a second child
does the same setup and writes none. The difference over N is the sink's cost per record, the
OpenTelemetry SDK's work included. Needs valgrind; each child takes tens of seconds.

Usage: python benchmarks/bench_otel_instructions.py [--records N] [--compare-with COMMIT]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_CHILD = """
import os, sys
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/benchmarks"]
from bench_otel import _sink_at
from bench_sinks import make_records
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from tokenmeter._pipeline import _CHUNK
from tokenmeter.sinks.otel import OTelSink

commit, count = sys.argv[2], int(sys.argv[3])
sink_class = _sink_at(commit) if commit else OTelSink
records = make_records(count + _CHUNK)
tracer = TracerProvider()
tracer.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
meter = MeterProvider(metric_readers=[InMemoryMetricReader()])
sink = sink_class(tracer_provider=tracer, meter_provider=meter)
sink.write(records[:_CHUNK])  # instruments, caches and first-use imports in both children
for i in range(_CHUNK, len(records), _CHUNK):
    sink.write(records[i : i + _CHUNK])
os._exit(0)
"""


def _instructions(commit: str, count: int, latest: bool) -> int:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("OTEL_SEMCONV_STABILITY_OPT_IN", None)
    if latest:
        env["OTEL_SEMCONV_STABILITY_OPT_IN"] = "gen_ai_latest_experimental"
    result = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            "-c",
            _CHILD,
            str(REPO),
            commit,
            str(count),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )
    found = re.search(r"Collected : (\d+)", result.stderr)
    if found is None:
        raise SystemExit(result.stderr[-2000:])
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=512)
    parser.add_argument("--compare-with", metavar="COMMIT", default="")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed")
    runs = [("today, v1.41", "", False), ("today, latest", "", True)]
    if args.compare_with:
        runs += [(f"{args.compare_with}, v1.41", args.compare_with, False)]
        runs += [(f"{args.compare_with}, latest opt-in", args.compare_with, True)]
    for label, commit, latest in runs:
        spent = _instructions(commit, args.records, latest) - _instructions(commit, 0, latest)
        print(f"writer    {label:28s} {spent / args.records / 1000:8.1f} k instructions per record")


if __name__ == "__main__":
    main()
