"""What instrumenting the OpenAI SDK costs: instrumented / bare time, per call and per chunk.

    python benchmarks/bench_instrumentation.py [--quick]

Main lines use ``httpx2.MockTransport`` (in-process: the ratio is our overhead against the SDK's
own work - building the request, parsing JSON/SSE, constructing models - with no socket noise).
A second set runs over loopback against ``FakeProvider`` in a child process: closer to a real
network call.
Bare and instrumented runs are interleaved (instrument()/uninstrument() alternately, several
rounds) and medians taken, so machine drift hits both alike. Each round ends with
``tokenmeter.flush()`` inside its timing, so the writer thread's work (pricing, building records,
handing them to the sink, done while the caller waits for it once per batch) is counted.
Logfire's OpenAI instrumentation is measured in the same rounds when installed. OpenLLMetry's is
measured in a child process, bare rounds first: its uninstrument() leaves wrappers behind that
slow the bare SDK down for good (measured: ~+300 us per call), which would flatter every ratio
taken after it.

Targets: non-streamed call <= 1.05x, 1,000-chunk stream <= 1.05x, RSS growth over 10,000
streamed calls <= 5 MB. Records go through the real pipeline to a sink that discards them.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import subprocess
import sys
import time
import tracemalloc
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import httpx2
import openai

import tokenmeter

MESSAGES = [{"role": "user", "content": "Say hello."}]
USAGE = {
    "prompt_tokens": 19,
    "completion_tokens": 10,
    "total_tokens": 29,
    "prompt_tokens_details": {"cached_tokens": 4, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 2},
}
BODY = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1730000000,
        "model": "gpt-4o-2024-08-06",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello!"},
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
        "service_tier": "default",
    }
).encode()


class NullSink:
    """Takes records and drops them: the pipeline runs for real, memory stays flat."""

    def write(self, records: Any) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def sse(chunks: int, with_usage: bool) -> bytes:
    base = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-2024-08-06",
    }
    delta = json.dumps(
        {**base, "choices": [{"index": 0, "delta": {"content": "tok"}, "finish_reason": None}]}
    )
    parts = [f"data: {delta}\n\n"] * chunks
    if with_usage:
        parts.append(f"data: {json.dumps({**base, 'choices': [], 'usage': USAGE})}\n\n")
    return ("".join(parts) + "data: [DONE]\n\n").encode()


def mock_client(stream_chunks: int) -> openai.OpenAI:
    """A client whose replies are prebuilt bytes (the SDK still does all its parsing)."""
    bodies = {True: sse(stream_chunks, True), False: sse(stream_chunks, False)}

    def handler(request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        if not body.get("stream"):
            return httpx2.Response(200, content=BODY, headers={"content-type": "application/json"})
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return httpx2.Response(
            200, content=bodies[usage], headers={"content-type": "text/event-stream"}
        )

    transport = httpx2.MockTransport(handler)
    return openai.OpenAI(
        api_key="sk-bench",
        base_url="http://bench.local/v1",
        http_client=httpx2.Client(transport=transport),
    )


# -- who is measured -----------------------------------------------------------------------------
@contextlib.contextmanager
def bare() -> Iterator[None]:
    yield


@contextlib.contextmanager
def with_tokenmeter() -> Iterator[None]:
    tokenmeter.instrument("openai")
    try:
        yield
    finally:
        tokenmeter.uninstrument("openai")


def peers() -> dict[str, Callable[[], contextlib.AbstractContextManager[None]]]:
    """Peers that can be switched on and off cleanly in this process (Logfire)."""
    found: dict[str, Callable[[], contextlib.AbstractContextManager[None]]] = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import logfire

            logfire.configure(send_to_logfire=False, console=False, inspect_arguments=False)

        @contextlib.contextmanager
        def with_logfire() -> Iterator[None]:
            with logfire.instrument_openai():
                yield

        found["Logfire"] = with_logfire
    except ImportError:
        print("(Logfire not installed: pip install logfire)")
    return found


def openllmetry(rounds: int, calls: int, streams: int, chunks: int) -> None:
    """Child-process mode: bare rounds, then OpenLLMetry rounds (never un-instrumented between)."""
    try:
        from opentelemetry.instrumentation.openai import OpenAIInstrumentor
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError:
        print("(OpenLLMetry not installed: pip install opentelemetry-instrumentation-openai)")
        return
    client = mock_client(stream_chunks=chunks)
    chat, stream = workloads(client)
    results: dict[str, dict[str, float]] = {"chat": {}, "stream": {}}
    for name, setup in (("bare", None), ("OpenLLMetry", OpenAIInstrumentor)):
        if setup is not None:  # spans are made and ended; no exporter (like NullSink)
            setup().instrument(tracer_provider=TracerProvider())
        per_op(chat, max(3, calls // 10))
        results["chat"][name] = statistics.median(per_op(chat, calls) for _ in range(rounds))
        results["stream"][name] = statistics.median(per_op(stream, streams) for _ in range(rounds))
    report(
        "OpenLLMetry, own process (bare rounds first): non-streamed chat", results["chat"], "call"
    )
    report(f"OpenLLMetry, own process: {chunks:,}-chunk stream", results["stream"], "chunk", chunks)


def workloads(client: openai.OpenAI) -> tuple[Callable[[], None], Callable[[], None]]:
    def chat() -> None:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)

    def stream() -> None:
        for _ in client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True):
            pass

    return chat, stream


# -- measuring -----------------------------------------------------------------------------------
def per_op(run: Callable[[], None], repeat: int) -> float:
    """Seconds per ``run()``. The round ends with ``flush()`` inside the timing: the writer
    thread's share (pricing, building records, handing them to the sink) is counted too."""
    gc.collect()
    start = time.perf_counter()
    for _ in range(repeat):
        run()
    tokenmeter.flush()
    return (time.perf_counter() - start) / repeat


def interleaved(
    contenders: dict[str, Callable[[], contextlib.AbstractContextManager[None]]],
    run: Callable[[], None],
    repeat: int,
    rounds: int,
) -> dict[str, float]:
    """Median seconds per op for each contender, measured in alternating rounds."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for make in contenders.values():  # warm-up (imports, caches, first price look-up)
        with make():
            per_op(run, max(3, repeat // 10))
    for _ in range(rounds):
        for name, make in contenders.items():
            with make():
                times[name].append(per_op(run, repeat))
    tokenmeter.flush()
    return {name: statistics.median(values) for name, values in times.items()}


def report(title: str, result: dict[str, float], unit: str, per: int = 1) -> None:
    base = result["bare"]
    print(f"\n{title}")
    print(f"  {'':<12}{'time':>12}{'ratio':>9}{'added':>14}")
    for name, seconds in result.items():
        added = (seconds - base) / per * 1e6
        shown = f"{seconds * 1e6:10.1f}us" if seconds < 0.01 else f"{seconds * 1e3:10.2f}ms"
        added_text = "" if name == "bare" else f"{added:+9.2f}us/{unit}"
        print(f"  {name:<12}{shown:>12}{seconds / base:>8.3f}x{added_text:>16}")


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
    client = mock_client(stream_chunks=5)

    def call() -> None:
        for _ in client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True):
            pass

    with with_tokenmeter():
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
    return before, after, retained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    parser.add_argument("--openllmetry", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    quick = (3, 100, 3, 2_000)
    rounds, calls, streams, rss_calls = quick if args.quick else (11, 1_000, 12, 10_000)
    chunks = 1_000
    if args.openllmetry:
        openllmetry(rounds, calls, streams, chunks)
        return

    tokenmeter.configure(sinks=[NullSink()])
    contenders = {"bare": bare, "tokenmeter": with_tokenmeter}
    print(f"openai {openai.__version__}; {rounds} interleaved rounds, medians")
    chat, stream = workloads(mock_client(stream_chunks=chunks))
    report(
        f"MockTransport: non-streamed chat completion ({calls} calls/round)",
        interleaved(contenders, chat, calls, rounds),
        "call",
    )
    report(
        f"MockTransport: {chunks:,}-chunk chat stream ({streams} streams/round)",
        interleaved(contenders, stream, streams, rounds),
        "chunk",
        per=chunks,
    )

    with fake_in_child_process(stream_chunks=200) as base_url:
        loop_client = openai.OpenAI(api_key="sk-test", base_url=base_url, max_retries=0)
        loop_chat, loop_stream = workloads(loop_client)
        report(
            f"FakeProvider (loopback HTTP): non-streamed chat ({calls // 2} calls/round)",
            interleaved(contenders, loop_chat, calls // 2, rounds),
            "call",
        )
        report(
            f"FakeProvider (loopback HTTP): 200-chunk chat stream ({streams * 2} streams/round)",
            interleaved(contenders, loop_stream, streams * 2, rounds),
            "chunk",
            per=202,  # role chunk + 200 deltas + finish chunk
        )

    before, after, retained = rss_growth(rss_calls)
    print(
        f"\nRSS over {rss_calls:,} instrumented streamed calls: {before:.1f} MB -> {after:.1f} MB "
        f"(growth {after - before:+.2f} MB; target <= 5 MB)\n"
        f"  Python heap retained after another {rss_calls:,} (tracemalloc, after flush): "
        f"{retained:+.3f} MB\n"
        "  (RSS keeps the high-water mark of records waiting for the writer thread, ~3 KB each)"
    )

    print("\n== peers (same workloads; MockTransport) ==")
    logfire = peers()
    if logfire:
        with_peers = {**contenders, **logfire}
        report("non-streamed chat", interleaved(with_peers, chat, calls, rounds), "call")
        report(
            f"{chunks:,}-chunk stream",
            interleaved(with_peers, stream, streams, rounds),
            "chunk",
            per=chunks,
        )
    child = [sys.executable, __file__, "--openllmetry"] + (["--quick"] if args.quick else [])
    subprocess.run(child, check=False)


if __name__ == "__main__":
    main()
