"""What a record costs the caller's thread, and what `import tokenmeter` costs.

    python benchmarks/bench_record.py

Prints the median and p99 of `tokenmeter.record()` (pricing, session attribution, enqueue: the
whole caller-side path; the writer thread delivers to an in-memory sink meanwhile) and the
import time of tokenmeter in a fresh interpreter, checking that no provider SDK was imported.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

import tokenmeter
from tokenmeter.sinks import InMemorySink

N = 50_000


def bench_record() -> None:
    sink = InMemorySink()
    tokenmeter.configure(sinks=[sink], max_queue=10 * N)
    for _ in range(2_000):  # warm the price cache and the writer thread
        tokenmeter.record("openai", "gpt-4o", 1000, 200, cache_read_tokens=500)
    tokenmeter.flush()
    timings = []
    clock = time.perf_counter_ns
    with tokenmeter.session("bench", tags={"k": "v"}):
        for i in range(N):
            start = clock()
            tokenmeter.record("openai", "gpt-4o", 1000 + i % 7, 200, cache_read_tokens=500)
            timings.append(clock() - start)
    tokenmeter.flush()
    timings.sort()
    median = statistics.median(timings) / 1000
    p99 = timings[int(len(timings) * 0.99)] / 1000
    print(
        f"record() on the caller's thread: median {median:.2f} µs, p99 {p99:.2f} µs "
        f"over {N:,} calls (target: median <= 10 µs) -> {'OK' if median <= 10 else 'MISSED'}"
    )
    assert len(sink.records) == N + 2_000


def bench_import() -> None:
    code = (
        "import sys, time; t = time.perf_counter(); import tokenmeter; "
        "d = time.perf_counter() - t; "
        "sdks = [m for m in ('openai', 'anthropic', 'google.genai', 'google.generativeai', "
        "'genai_prices') if m in sys.modules]; print(d, ','.join(sdks))"
    )
    runs = []
    for _ in range(5):
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.split()
        runs.append(float(out[0]))
        loaded = out[1] if len(out) > 1 else ""
    print(
        f"import tokenmeter: median {statistics.median(runs) * 1000:.0f} ms over 5 fresh "
        f"interpreters; provider SDKs / genai_prices imported: {loaded or 'none'}"
    )


if __name__ == "__main__":
    bench_record()
    bench_import()
