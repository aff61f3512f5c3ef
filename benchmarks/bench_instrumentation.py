"""What instrumenting the OpenAI SDK costs the caller, against the bare SDK in the same run.

    python benchmarks/bench_instrumentation.py [--quick] [--only 1a,1b,2,3,6] [--diagnose]
                                               [--no-extras] [--made-at-once]

Every call goes through ``httpx2.MockTransport`` (in-process, prebuilt replies): what is left is
the SDK's own work, so a ratio is our overhead against it, with no socket noise. Bare and
instrumented rounds alternate (``instrument()`` / ``uninstrument()``) so that machine drift hits
both alike, and medians are taken. Records go through the real pipeline to the DEFAULT sink
(``configure(sinks=["sqlite"], directory=<tmpdir>)``): the writer thread's share is counted.
Wall-clock ratios use the median of per-round pairs (a round and the other contender's round
next to it): on a shared machine, interference comes in bursts that a pair mostly sees whole.

Targets (each printed with PASS/MISS):
1a. non-streamed chat: CPU added per call, every thread, a final flush() included
    (``time.process_time()``), <= 15 us; the writer thread's share is shown (/proc schedstat);
1b. 20,000 non-streamed calls on one thread, each timed: p99.9 <= bare p99.9 + 200 us, and no
    call delayed more than 2 ms by tokenmeter: PASS when no more instrumented calls than bare
    ones take over (bare p50 + 2 ms), since a bare call's own tail may pass 2 ms; calls over 2 ms
    and 4 ms are counted too; the median of 3 interleaved rounds;
2.  1,000-chunk stream: instrumented / bare <= 1.01x;
3.  8 threads making calls back to back: instrumented throughput >= 90 % of bare;
6.  a user sink that sleeps 100 ms per write (an HTTP post) as the only sink: calls over 4 ms
    among 20,000, no more than bare.
1a and 3 also run, in the same rounds, the "minimal persisting design" the issue measured
(a wrapper, a deque, a thread inserting 4 columns into SQLite every 200 ms;
``_common.ReferenceDesign``) and print what it added: a yardstick for what any writer thread
costs on the machine at hand.
Why any writer thread costs CPU in 1a: the SDK releases the GIL briefly once per call
(``uuid.uuid4()`` for its idempotency key reads ``os.urandom``). A thread waiting for the GIL
is then woken at every release and never gets it (each release restarts the interpreter's
switch-interval wait, so the caller is never asked to hand it over) until the caller waits in
``flush()``. Each of those wake-ups costs CPU on both threads, more in a virtual machine. 1a
prints how often the writers were scheduled per call, and runs a third yardstick in the same
rounds: "waiter", the bare SDK beside a thread that only asks for the GIL every millisecond
(``_common.gil_waiter``), which pays that cost alone.
``--diagnose`` also logs each SQLite write and each garbage collection, and counts the slow calls
of 1b that overlap a full collection or a write.
Then, for information: the same calls over loopback HTTP (``FakeProvider`` in a child process),
RSS over 10,000 streamed calls (target <= 5 MB) and peers (Logfire in this process, OpenLLMetry in
a child process), each skipped when not installed (``--no-extras`` skips all of these).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import openai
from _common import (
    CONTENDERS,
    REFERENCE,
    VERDICTS,
    ReferenceDesign,
    chat,
    describe,
    flush_all,
    gil_waiter,
    instrumented,
    make_records_at_once,
    median_tail,
    mock_client,
    stream,
    tail,
    tail_header,
    tail_row,
    verdict,
)

import tokenmeter

Contenders = dict[str, Callable[[], contextlib.AbstractContextManager[None]]]
#: Instrumented calls made while the SQLite sink is configured (checked against usage.db).
metered = {"calls": 0}


# -- 1a and 2: time per operation, interleaved rounds --------------------------------------------
#: (wall, CPU of every thread, CPU of tokenmeter's writer threads) seconds per operation, and
#: how many times per operation the writers were woken.
Sample = tuple[float, float, float, float]


def writer_stat() -> tuple[float, int]:
    """CPU seconds used so far by tokenmeter's writer threads, and how many times they were
    scheduled (Linux: /proc schedstat, ns and time slices)."""
    total = slices = 0
    for thread in threading.enumerate():
        if thread.name.startswith("tokenmeter-writer") and thread.native_id is not None:
            path = f"/proc/self/task/{thread.native_id}/schedstat"
            with contextlib.suppress(OSError), open(path) as stat:
                ran, _, scheduled = stat.read().split()[:3]
                total, slices = total + int(ran), slices + int(scheduled)
    return total / 1e9, slices


def per_op(run: Callable[[], Any], repeat: int) -> Sample:
    """Seconds per ``run()``; ``flush()`` inside the timing (the writer's share is counted)."""
    gc.collect()
    flush_all()
    (writer, woken), cpu, wall = writer_stat(), time.process_time(), time.perf_counter()
    for _ in range(repeat):
        run()
    flush_all()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    writer_after, woken_after = writer_stat()
    writer, woken = writer_after - writer, woken_after - woken
    return wall / repeat, cpu / repeat, writer / repeat, woken / repeat


def interleaved(
    contenders: Contenders, run: Callable[[], Any], repeat: int, rounds: int
) -> dict[str, list[Sample]]:
    """Each contender's samples, one per round, rounds alternating."""
    for name, make in contenders.items():  # warm-up (imports, caches, first price look-up)
        with make():
            per_op(run, max(3, repeat // 10))
        if name == "tokenmeter":
            metered["calls"] += max(3, repeat // 10)
    times: dict[str, list[Sample]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, make in contenders.items():
            with make():
                times[name].append(per_op(run, repeat))
                if name == "tokenmeter":
                    metered["calls"] += repeat
    return times


def median_of(samples: list[Sample], index: int) -> float:
    return statistics.median(sample[index] for sample in samples)


def paired(times: dict[str, list[Sample]], index: int) -> list[float]:
    """Instrumented / bare of the same round, for each round."""
    return [t[index] / b[index] for b, t in zip(times["bare"], times["tokenmeter"], strict=True)]


def report_ops(
    title: str, times: dict[str, list[Sample]], unit: str, per: int = 1
) -> dict[str, tuple[float, float]]:
    """Print median wall and CPU per op, ratios and what is added per ``unit``; returns the
    (wall, CPU) medians."""
    medians = {name: (median_of(v, 0), median_of(v, 1)) for name, v in times.items()}
    base_wall, base_cpu = medians["bare"]
    print(f"\n{title}")
    print(f"  {'':<12}{'wall':>12}{'ratio':>8}{'added':>14}{'CPU':>12}{'ratio':>8}{'added':>14}")
    for name, (wall, cpu) in medians.items():
        cells = [f"  {name:<12}{fmt(wall):>12}{wall / base_wall:>7.3f}x"]
        cells.append(f"{'' if name == 'bare' else added(wall - base_wall, per, unit):>14}")
        cells.append(f"{fmt(cpu):>12}{cpu / base_cpu:>7.3f}x")
        cells.append(f"{'' if name == 'bare' else added(cpu - base_cpu, per, unit):>14}")
        print("".join(cells))
    if "tokenmeter" in times:
        walls, cpus = sorted(paired(times, 0)), sorted(paired(times, 1))
        print(
            f"  tokenmeter/bare per round: wall median {statistics.median(walls):.3f}x "
            f"(quartiles {walls[len(walls) // 4]:.3f} .. {walls[3 * len(walls) // 4]:.3f}), "
            f"CPU median {statistics.median(cpus):.3f}x; best round each: wall "
            f"{min(v[0] for v in times['tokenmeter']) / min(v[0] for v in times['bare']):.3f}x"
        )
    return medians


def fmt(seconds: float) -> str:
    return f"{seconds * 1e6:.1f}us" if seconds < 0.01 else f"{seconds * 1e3:.2f}ms"


def added(seconds: float, per: int, unit: str) -> str:
    return f"{seconds / per * 1e6:+.2f}us/{unit}"


# -- 1b and 6: every call timed ------------------------------------------------------------------
def timed_calls(run: Callable[[], Any], calls: int) -> tuple[list[float], list[float]]:
    """(start, latency) of ``calls`` calls on this thread; flush() after, outside the timing."""
    starts, latencies = [0.0] * calls, [0.0] * calls
    clock = time.perf_counter
    gc.collect()
    for i in range(calls):
        start = clock()
        run()
        latencies[i] = clock() - start
        starts[i] = start
    tokenmeter.flush()
    return starts, latencies


Raw = dict[str, list[tuple[list[float], list[float]]]]


def latency_rounds(
    run: Callable[[], Any], calls: int, rounds: int, sink_label: str
) -> tuple[dict[str, list[dict[str, float]]], Raw]:
    """Per round tail statistics for each contender (rounds alternating), and the rounds' raw
    (starts, latencies)."""
    for name, make in CONTENDERS.items():
        with make():
            timed_calls(run, max(100, calls // 20))
        if name == "tokenmeter" and sink_label == "sqlite":
            metered["calls"] += max(100, calls // 20)
    stats: dict[str, list[dict[str, float]]] = {name: [] for name in CONTENDERS}
    raw: Raw = {name: [] for name in CONTENDERS}
    for _ in range(rounds):
        for name, make in CONTENDERS.items():
            with make():
                starts, latencies = timed_calls(run, calls)
            stats[name].append(tail(latencies))
            raw[name].append((starts, latencies))
            if name == "tokenmeter" and sink_label == "sqlite":
                metered["calls"] += calls
    print(tail_header() + "   (per round, then the median of rounds)")
    for index in range(rounds):
        for name in CONTENDERS:
            print(tail_row(f"{name[:6]} r{index + 1}", stats[name][index]))
    return stats, raw


def delayed(stats: dict[str, list[dict[str, float]]], raw: Raw, by: float) -> tuple[float, str]:
    """Calls slower than the bare median call by more than ``by`` seconds: the threshold, and
    a text of each contender's median count over rounds (and each round's)."""
    threshold = statistics.median(r["p50"] for r in stats["bare"]) + by
    parts = []
    counts = {}
    for name, rounds in raw.items():
        each = [sum(1 for x in latencies if x > threshold) for _, latencies in rounds]
        counts[name] = statistics.median(each)
        parts.append(f"{name} {counts[name]:g} (rounds {', '.join(map(str, each))})")
    return counts["tokenmeter"] - counts["bare"], (
        f"calls over bare p50 + {by * 1e3:g} ms = {threshold * 1e3:.2f} ms: " + "; ".join(parts)
    )


# -- 3: threads ----------------------------------------------------------------------------------
def threads_round(clients: Sequence[openai.OpenAI], calls_each: int) -> float:
    """Calls per second of len(clients) threads making ``calls_each`` calls each (flush in)."""
    barrier = threading.Barrier(len(clients) + 1)

    def work(client: openai.OpenAI) -> None:
        run = chat(client)
        barrier.wait()
        for _ in range(calls_each):
            run()

    workers = [threading.Thread(target=work, args=(client,)) for client in clients]
    for worker in workers:
        worker.start()
    gc.collect()
    barrier.wait()
    start = time.perf_counter()
    for worker in workers:
        worker.join()
    flush_all()
    return len(clients) * calls_each / (time.perf_counter() - start)


# -- 6: a slow user sink -------------------------------------------------------------------------
class SlowSink:
    """A user's sink that posts each batch somewhere slow: 100 ms per write."""

    def __init__(self) -> None:
        self.records = 0
        self.writes = 0

    def write(self, records: Any) -> None:
        time.sleep(0.1)
        self.records += len(records)
        self.writes += 1

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


# -- diagnosis: which slow calls overlap a SQLite write or a full garbage collection -------------
SINK_WRITES: list[tuple[float, float, int]] = []
#: (generation, start, end) of every garbage collection (``--diagnose`` only).
GC_PAUSES: list[tuple[int, float, float]] = []


def time_sqlite_writes_and_gc() -> None:
    """Wrap SQLiteSink._write_rows to log (start, end, records) of each write, and
    log every garbage collection (``--diagnose`` only)."""
    from tokenmeter.sinks import SQLiteSink

    def timed(original: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
        def write(self: Any, records: Any) -> None:
            start = time.perf_counter()
            try:
                original(self, records)
            finally:
                SINK_WRITES.append((start, time.perf_counter(), len(records)))

        return write

    # Every write stores its rows through _write_rows (the pipeline's rows are made beforehand).
    SQLiteSink._write_rows = timed(SQLiteSink._write_rows)  # type: ignore[method-assign]
    started = [0.0]

    def collection(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            GC_PAUSES.append((info["generation"], started[0], time.perf_counter()))

    gc.callbacks.append(collection)


def overlap_report(raw: Raw, threshold: float) -> None:
    """Per contender: full collections during its rounds; for the instrumented rounds, the slow
    calls that overlap a full collection or a SQLite write."""
    writes = sorted(SINK_WRITES)
    if writes:
        durations = sorted(end - start for start, end, _ in writes)
        sizes = sorted(n for _, _, n in writes)
        print(
            f"  diagnose: {len(writes)} SQLite writes, records per write median "
            f"{statistics.median(sizes):.0f} (max {sizes[-1]}), write wall time median "
            f"{statistics.median(durations) * 1e3:.1f} ms (max {durations[-1] * 1e3:.1f} ms)"
        )
    for name, rounds in raw.items():
        full = [
            (g0, g1)
            for starts, latencies in rounds
            for gen, g0, g1 in GC_PAUSES
            if gen == 2 and starts[0] <= g0 <= starts[-1] + latencies[-1]
        ]
        slow = in_gc = in_write = 0
        for starts, latencies in rounds:
            for start, latency in zip(starts, latencies, strict=True):
                if latency <= threshold:
                    continue
                slow += 1
                end = start + latency
                in_gc += any(g0 < end and start < g1 for g0, g1 in full)
                in_write += name != "bare" and any(w0 < end and start < w1 for w0, w1, _ in writes)
        pauses = ", ".join(f"{(g1 - g0) * 1e3:.1f}" for g0, g1 in full) or "none"
        print(
            f"  diagnose {name}: full (gen 2) collections in its rounds: {len(full)} "
            f"(ms: {pauses}); calls over {threshold * 1e3:.2f} ms: {slow}, of which {in_gc} "
            f"during a full collection"
            + (f" and {in_write} during a SQLite write" if name != "bare" else "")
        )


# -- extras (information) ------------------------------------------------------------------------
@contextlib.contextmanager
def fake_in_child_process(stream_chunks: int) -> Iterator[str]:
    """FakeProvider in its own process, like a real API: its server threads then do not compete
    with the measured client for this interpreter's GIL. Yields the OpenAI base URL."""
    code = (
        "import sys; from tokenmeter.testing import FakeProvider; "
        f"fake = FakeProvider(stream_chunks={stream_chunks}, record_requests=False).start(); "
        "print(fake.openai_base_url, flush=True); sys.stdin.read(); fake.stop()"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        yield child.stdout.readline().strip()
    finally:
        child.stdin.close()
        child.wait(10)


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_growth(calls: int) -> tuple[float, float, float]:
    """RSS (MB) before and after ``calls`` instrumented streamed calls (after a warm-up), and
    the Python heap still held after them (MB, tracemalloc, after flush: what is retained)."""
    call = stream(mock_client(stream_chunks=5))
    with instrumented():
        for _ in range(2_000):
            call()
        tokenmeter.flush()
        gc.collect()
        before = rss_mb()
        for _ in range(calls):
            call()
        tokenmeter.flush()
        gc.collect()
        after = rss_mb()
        tracemalloc.start()
        start = tracemalloc.get_traced_memory()[0]
        for _ in range(calls):
            call()
        tokenmeter.flush()
        gc.collect()
        retained = (tracemalloc.get_traced_memory()[0] - start) / 2**20
        tracemalloc.stop()
    metered["calls"] += 2_000 + 2 * calls
    return before, after, retained


def logfire_contender() -> Contenders:
    """Logfire's OpenAI instrumentation, switched on and off in this process, when installed."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import logfire

            logfire.configure(send_to_logfire=False, console=False, inspect_arguments=False)
    except ImportError:
        print("(Logfire not installed: pip install logfire)")
        return {}

    @contextlib.contextmanager
    def with_logfire() -> Iterator[None]:
        with logfire.instrument_openai():
            yield

    return {"Logfire": with_logfire}


def openllmetry(rounds: int, calls: int, streams: int, chunks: int) -> None:
    """Child-process mode: bare rounds, then OpenLLMetry rounds. Its uninstrument() leaves
    wrappers behind that slow the bare SDK down for good, so it is never switched off."""
    try:
        from opentelemetry.instrumentation.openai import OpenAIInstrumentor
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError:
        print("(OpenLLMetry not installed: pip install opentelemetry-instrumentation-openai)")
        return
    client = mock_client(stream_chunks=chunks)
    workloads = {"chat": (chat(client), calls, 1), "stream": (stream(client), streams, chunks)}
    results: dict[str, dict[str, list[Sample]]] = {"chat": {}, "stream": {}}
    for name in ("bare", "OpenLLMetry"):
        if name == "OpenLLMetry":  # spans are made and ended; no exporter
            OpenAIInstrumentor().instrument(tracer_provider=TracerProvider())
        for kind, (run, repeat, _) in workloads.items():
            per_op(run, max(3, repeat // 10))
            results[kind][name] = [per_op(run, repeat) for _ in range(rounds)]
    report_ops("OpenLLMetry, own process (bare rounds first): chat", results["chat"], "call")
    report_ops(f"OpenLLMetry: {chunks:,}-chunk stream", results["stream"], "chunk", chunks)


def extras(args: argparse.Namespace, rounds: int, calls: int, streams: int, chunks: int) -> None:
    print("\n== for information ==")
    with fake_in_child_process(stream_chunks=200) as base_url:
        client = openai.OpenAI(api_key="sk-test", base_url=base_url, max_retries=0)
        report_ops(
            f"FakeProvider (loopback HTTP): non-streamed chat ({calls // 2} calls/round)",
            interleaved(CONTENDERS, chat(client), calls // 2, rounds),
            "call",
        )
        report_ops(
            f"FakeProvider (loopback HTTP): 200-chunk stream ({streams * 2} streams/round)",
            interleaved(CONTENDERS, stream(client), streams * 2, rounds),
            "chunk",
            per=202,  # role chunk + 200 deltas + finish chunk
        )
    rss_calls = 2_000 if args.quick else 10_000
    before, after, retained = rss_growth(rss_calls)
    print(
        f"\nRSS over {rss_calls:,} instrumented streamed calls: {before:.1f} MB -> {after:.1f} MB "
        f"(growth {after - before:+.2f} MB; target <= 5 MB)\n"
        f"  Python heap retained after another {rss_calls:,} (tracemalloc, after flush): "
        f"{retained:+.3f} MB"
    )
    print("\n== peers (same workloads, MockTransport) ==")
    peers = logfire_contender()
    if peers:
        with_peers = {**CONTENDERS, **peers}
        client = mock_client(stream_chunks=chunks)
        report_ops(
            "non-streamed chat", interleaved(with_peers, chat(client), calls, rounds), "call"
        )
        report_ops(
            f"{chunks:,}-chunk stream",
            interleaved(with_peers, stream(client), streams, rounds),
            "chunk",
            per=chunks,
        )
    child = [sys.executable, __file__, "--openllmetry"] + (["--quick"] if args.quick else [])
    subprocess.run(child, check=False)


# -- the targets ---------------------------------------------------------------------------------
def with_reference() -> Contenders:
    """bare, the reference design (see ``_common.ReferenceDesign``), tokenmeter."""
    return {"bare": CONTENDERS["bare"], "reference": REFERENCE[0].round, **CONTENDERS}


def reference_line(bare: float, reference: float, tokenmeter_: float, unit: str) -> str:
    """What the reference design added in the same rounds, beside tokenmeter's figure."""
    return (
        f"  for information: the reference design (issue 8's minimal persisting design, a "
        f"thread writing 4 columns every 200 ms) added {reference - bare:+.1f} {unit} in the "
        f"same rounds, tokenmeter {tokenmeter_ - bare:+.1f} {unit}"
    )


def section_1a(client: openai.OpenAI, rounds: int, calls: int) -> None:
    contenders = {"bare": CONTENDERS["bare"], "waiter": gil_waiter, **with_reference()}
    times = interleaved(contenders, chat(client), calls, rounds)
    medians = report_ops(
        f"1a. non-streamed chat, {calls:,} calls/round + flush(), {rounds} interleaved rounds, "
        "medians (CPU = time.process_time(), every thread)",
        times,
        "call",
    )
    cpu_added = (medians["tokenmeter"][1] - medians["bare"][1]) * 1e6
    writer = median_of(times["tokenmeter"], 2) * 1e6
    deltas = sorted(
        (t[1] - b[1]) * 1e6 for b, t in zip(times["bare"], times["tokenmeter"], strict=True)
    )
    print(
        f"  CPU added per call: {cpu_added:+.1f} us, of which the writer thread "
        f"{writer:.1f} us (its /proc schedstat) and the caller's thread the rest; per-round "
        f"pairs {deltas[0]:+.1f} .. {deltas[-1]:+.1f} us (median {statistics.median(deltas):+.1f})"
    )
    print(
        f"  the writer threads were scheduled {median_of(times['tokenmeter'], 3):.2f} times per "
        "call (about once per call: kept from the GIL while the calls run back to back, see the "
        "module docstring)"
    )
    cpu = {name: cpu_ * 1e6 for name, (_, cpu_) in medians.items()}
    print(reference_line(cpu["bare"], cpu["reference"], cpu["tokenmeter"], "us CPU per call"))
    print(
        f"  for information: a thread that only asks for the GIL ('waiter', no work) added "
        f"{cpu['waiter'] - cpu['bare']:+.1f} us CPU per call in the same rounds"
    )
    print(verdict("1a CPU added per call", cpu_added <= 15, f"{cpu_added:+.1f} us (target <= 15)"))


def section_1b(client: openai.OpenAI, rounds: int, calls: int, diagnose: bool) -> None:
    print(
        f"\n1b. {calls:,} non-streamed calls on one thread, each timed, {rounds} interleaved rounds"
    )
    SINK_WRITES.clear()
    GC_PAUSES.clear()
    stats, raw = latency_rounds(chat(client), calls, rounds, "sqlite")
    med = {name: median_tail(rounds_) for name, rounds_ in stats.items()}
    print(tail_row("bare", med["bare"]))
    print(tail_row("tokenmeter", med["tokenmeter"]))
    p999_added = (med["tokenmeter"]["p99.9"] - med["bare"]["p99.9"]) * 1e6
    print(verdict("1b p99.9 added", p999_added <= 200, f"{p999_added:+.0f} us (target <= +200)"))
    excess, text = delayed(stats, raw, 0.002)
    print(
        verdict(
            "1b no call delayed > 2 ms",
            excess <= 0,
            f"{text}. Calls > 2 ms: {med['tokenmeter']['>2ms']:g} instrumented vs "
            f"{med['bare']['>2ms']:g} bare; max {med['tokenmeter']['max'] * 1e3:.2f} ms vs "
            f"{med['bare']['max'] * 1e3:.2f} ms (PASS when no more calls than bare are over "
            "bare p50 + 2 ms)",
        )
    )
    if diagnose:
        bare_p50 = statistics.median(r["p50"] for r in stats["bare"])
        overlap_report(raw, bare_p50 + 0.002)


def section_2(client: openai.OpenAI, rounds: int, streams: int, chunks: int) -> None:
    times = interleaved(CONTENDERS, stream(client), streams, rounds)
    medians = report_ops(
        f"2. {chunks:,}-chunk chat stream, {streams} streams/round + flush(), "
        f"{rounds} interleaved rounds",
        times,
        "chunk",
        per=chunks,
    )
    ratio = statistics.median(paired(times, 0))
    cpu_ratio = statistics.median(paired(times, 1))
    of_medians = medians["tokenmeter"][0] / medians["bare"][0]
    print(
        verdict(
            "2 stream instrumented/bare",
            ratio <= 1.01,
            f"{ratio:.3f}x wall, median of per-round pairs (CPU {cpu_ratio:.3f}x; ratio of the "
            f"medians {of_medians:.3f}x; target <= 1.01x)",
        )
    )


def section_3(rounds: int, calls_each: int) -> None:
    clients = [mock_client() for _ in range(8)]
    contenders = with_reference()
    for make in contenders.values():
        with make():
            threads_round(clients, max(5, calls_each // 10))
    metered["calls"] += 8 * max(5, calls_each // 10)
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, make in contenders.items():
            with make():
                rates[name].append(threads_round(clients, calls_each))
    metered["calls"] += rounds * 8 * calls_each
    rate = {name: statistics.median(values) for name, values in rates.items()}
    share = statistics.median(
        t / b for b, t in zip(rates["bare"], rates["tokenmeter"], strict=True)
    )
    print(
        f"\n3. 8 threads, {calls_each} calls each per round + flush(), {rounds} interleaved "
        "rounds, medians"
    )
    for name, values in rates.items():
        print(
            f"  {name:<12}{rate[name]:>10,.0f} calls/s  (rounds {min(values):,.0f} .. "
            f"{max(values):,.0f})"
        )
    print(
        verdict(
            "3 threaded throughput",
            share >= 0.90,
            f"{share:.1%} of bare, median of per-round pairs (ratio of the medians "
            f"{rate['tokenmeter'] / rate['bare']:.1%}; target >= 90 %)",
        )
    )
    reference = statistics.median(
        r / b for b, r in zip(rates["bare"], rates["reference"], strict=True)
    )
    print(
        f"  for information: the reference design (see 1a) kept {reference:.1%} of bare "
        "throughput in the same rounds"
    )


def section_6(client: openai.OpenAI, rounds: int, calls: int) -> None:
    slow = SlowSink()
    tokenmeter.configure(sinks=[slow])
    print(
        f"\n6. a user sink that sleeps 100 ms per write (the only sink): {calls:,} "
        f"non-streamed calls, each timed, {rounds} interleaved rounds"
    )
    stats, _ = latency_rounds(chat(client), calls, rounds, "slow")
    med = {name: median_tail(rounds_) for name, rounds_ in stats.items()}
    print(tail_row("bare", med["bare"]))
    print(tail_row("tokenmeter", med["tokenmeter"]))
    over_bare, over_tm = med["bare"][">4ms"], med["tokenmeter"][">4ms"]
    print(
        f"  the sink took {slow.records:,} records in {slow.writes} writes "
        f"(~{slow.records / max(1, slow.writes):.0f} per write)"
    )
    print(
        verdict(
            "6 slow sink, calls > 4 ms",
            over_tm <= over_bare,
            f"{over_tm:g} instrumented vs {over_bare:g} bare; max "
            f"{med['tokenmeter']['max'] * 1e3:.2f} ms vs {med['bare']['max'] * 1e3:.2f} ms",
        )
    )


# -- main ----------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls and rounds (a smoke run)")
    parser.add_argument(
        "--diagnose",
        action="store_true",
        help="log SQLite writes and garbage collections; count the slow calls of 1b during them",
    )
    parser.add_argument("--no-extras", action="store_true", help="targets only")
    parser.add_argument("--only", default="", help="comma-separated targets: 1a,1b,2,3,6")
    parser.add_argument("--openllmetry", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--made-at-once",
        action="store_true",
        help="make each record on the caller's thread (a design compared, not tokenmeter's)",
    )
    args = parser.parse_args()
    if args.made_at_once:
        make_records_at_once()
    chunks = 1_000
    if args.quick:
        rounds, calls, tail_calls, tail_rounds, streams, thread_calls = 2, 300, 2_000, 1, 1, 40
    else:
        rounds, calls, tail_calls, tail_rounds, streams, thread_calls = 11, 1_000, 20_000, 3, 1, 250
    if args.openllmetry:
        openllmetry(rounds, calls, streams, chunks)
        return

    directory = Path(tempfile.mkdtemp(prefix="tokenmeter-bench-"))
    tokenmeter.configure(sinks=["sqlite"], directory=directory)
    REFERENCE.append(ReferenceDesign(directory))
    if args.diagnose:
        time_sqlite_writes_and_gc()
    print(describe())
    print(f"sink: sqlite in {directory}; GIL switch interval {sys.getswitchinterval() * 1e3:g} ms")
    client = mock_client(stream_chunks=chunks)
    only = set(args.only.split(",")) if args.only else {"1a", "1b", "2", "3", "6"}
    if "1a" in only:
        section_1a(client, rounds * 2, calls)
    if "1b" in only:
        section_1b(client, tail_rounds, tail_calls, args.diagnose)
    if "2" in only:
        section_2(client, rounds * 6, streams, chunks)
    if "3" in only:
        section_3(rounds, thread_calls)
    tokenmeter.flush()
    if metered["calls"]:  # `--only 6` alone writes nothing to usage.db (its table is not made)
        with sqlite3.connect(directory / "usage.db") as db:
            rows = db.execute("SELECT COUNT(*) FROM records").fetchone()[0]
        print(f"\n  usage.db holds {rows:,} records; {metered['calls']:,} instrumented calls made")
    if "6" in only:
        section_6(client, tail_rounds, tail_calls)
        tokenmeter.configure(sinks=["sqlite"], directory=directory)
    if not args.no_extras and not args.only:
        extras(args, rounds, calls // 3, streams, chunks)

    load = os.getloadavg()
    print(f"\n== summary (load average {load[0]:.2f} {load[1]:.2f} at the end) ==")
    print("\n".join(VERDICTS))


if __name__ == "__main__":
    main()
