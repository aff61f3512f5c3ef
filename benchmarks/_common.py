"""Shared by the benchmarks: canned OpenAI replies over ``httpx2.MockTransport``, latency
statistics and the PASS/MISS lines.

The replies are prebuilt bytes, so a call costs what the SDK itself does (build the request,
parse JSON or SSE, construct the models) with no socket in the way.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import math
import os
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
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
JSON_HEADERS = {"content-type": "application/json"}
SSE_HEADERS = {"content-type": "text/event-stream"}


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


def mock_client(stream_chunks: int = 10) -> openai.OpenAI:
    """A sync client whose replies are prebuilt bytes (the SDK still does all its parsing).
    Streams carry the usage chunk only when the request asks for it, as OpenAI does."""
    bodies = {True: sse(stream_chunks, True), False: sse(stream_chunks, False)}

    def handler(request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        if not body.get("stream"):
            return httpx2.Response(200, content=BODY, headers=JSON_HEADERS)
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return httpx2.Response(200, content=bodies[usage], headers=SSE_HEADERS)

    return openai.OpenAI(
        api_key="sk-bench",
        base_url="http://bench.local/v1",
        max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
    )


def async_mock_client(latency: Callable[[], float]) -> openai.AsyncOpenAI:
    """An async client over MockTransport with an async handler that waits ``latency()`` seconds
    (the network and the model, without a socket) before returning the non-streamed reply."""

    async def handler(request: httpx2.Request) -> httpx2.Response:
        await asyncio.sleep(latency())
        return httpx2.Response(200, content=BODY, headers=JSON_HEADERS)

    return openai.AsyncOpenAI(
        api_key="sk-bench",
        base_url="http://bench.local/v1",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(handler)),
    )


def chat(client: openai.OpenAI) -> Callable[[], Any]:
    def run() -> Any:
        return client.chat.completions.create(model="gpt-4o", messages=MESSAGES)

    return run


def stream(client: openai.OpenAI) -> Callable[[], None]:
    def run() -> None:
        for _ in client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True):
            pass

    return run


def async_chat(client: openai.AsyncOpenAI) -> Callable[[], Awaitable[Any]]:
    async def run() -> Any:
        return await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)

    return run


def describe() -> str:
    """Python, SDK, machine and load, and which tokenmeter (its git commit, when a checkout)."""
    root = Path(tokenmeter.__file__).resolve().parents[1]
    commit = "not a git checkout"
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "tokenmeter"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        commit = head + (" + uncommitted changes in tokenmeter/" if dirty else "")
    load = os.getloadavg()
    return (
        f"tokenmeter {commit}; python {sys.version.split()[0]}, openai {openai.__version__}; "
        f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} at start"
    )


# -- who is measured -----------------------------------------------------------------------------
@contextlib.contextmanager
def bare() -> Iterator[None]:
    yield


@contextlib.contextmanager
def instrumented() -> Iterator[None]:
    tokenmeter.instrument("openai")
    try:
        yield
    finally:
        tokenmeter.uninstrument("openai")


CONTENDERS = {"bare": bare, "tokenmeter": instrumented}


def make_records_at_once() -> None:
    """``--made-at-once``: every intercepted call's record made on the caller's thread as the
    call returns, instead of by a writer in a batch (``tokenmeter._pipeline.later``). The design
    issue 8 suggested, kept measurable: it runs fewer instructions in a tight loop, and costs
    more time where the caches are cold (``bench_cold``) and with threads (target 3)."""
    from tokenmeter import _pipeline

    _pipeline.can_make_later = lambda: False


class ReferenceDesign:
    """The "minimal persisting design" issue 8 measured at +2.6 us of CPU per call on its machine:
    a wrapt wrapper reading the usage into a tuple, a deque, and a thread inserting 4 columns into
    SQLite every ``period`` seconds. A yardstick run beside tokenmeter in the same rounds: what
    any design with a writer thread costs on this machine, however little it does per call.

    ``round()`` is a contender (its thread lives during the round only); ``flush()`` waits until
    every row so far is committed, like ``tokenmeter.flush()``.
    """

    def __init__(self, directory: str | os.PathLike[str], period: float = 0.2) -> None:
        self.path = Path(directory) / "reference.db"
        self.period = period
        self.buffer: collections.deque[tuple[Any, ...]] = collections.deque()
        self.appended = self.written = 0
        self.active = False
        self._stopping = False
        self._wake = threading.Event()  # a flush() or the round's end: write now
        self._committed = threading.Condition()

    def _wrapper(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        result = wrapped(*args, **kwargs)
        usage = getattr(result, "usage", None) if self.active else None
        if usage is not None:
            self.buffer.append(
                (time.time(), result.model, usage.prompt_tokens, usage.completion_tokens)
            )
            self.appended += 1
        return result

    def _write(self, conn: sqlite3.Connection) -> None:
        rows = [self.buffer.popleft() for _ in range(len(self.buffer))]
        if rows:
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO records VALUES (?, ?, ?, ?)", rows)
            conn.execute("COMMIT")
            with self._committed:
                self.written += len(rows)
                self._committed.notify_all()

    def _writer(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("CREATE TABLE IF NOT EXISTS records (ts REAL, model TEXT, input, output)")
        while not self._stopping:
            self._wake.wait(self.period)
            self._wake.clear()
            self._write(conn)
        conn.close()

    def flush(self) -> None:
        self._wake.set()
        with self._committed:
            self._committed.wait_for(lambda: self.written >= self.appended)

    @contextlib.contextmanager
    def round(self) -> Iterator[None]:
        import wrapt
        from openai import _base_client

        owner = _base_client.SyncAPIClient
        original = owner.__dict__["request"]
        wrapt.wrap_function_wrapper(owner, "request", self._wrapper)  # for this round only
        self._stopping = False
        thread = threading.Thread(target=self._writer, daemon=True)
        thread.start()
        self.active = True
        try:
            yield
        finally:
            self.flush()
            self.active = False
            self._stopping = True
            self._wake.set()
            thread.join()
            owner.request = original


@contextlib.contextmanager
def gil_waiter() -> Iterator[None]:
    """A yardstick contender: the bare SDK beside a thread that does nothing but wake every
    millisecond, so that it keeps asking for the GIL. What a background thread costs the calls
    on this machine while it is kept from the GIL, whatever it would do with it (see
    ``bench_instrumentation``'s docstring)."""
    stop = threading.Event()

    def wait_for_the_gil() -> None:
        while not stop.wait(0.001):
            pass

    thread = threading.Thread(target=wait_for_the_gil, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


#: Set by a benchmark that runs the reference design among its contenders.
REFERENCE: list[ReferenceDesign] = []


def flush_all() -> None:
    """``tokenmeter.flush()``, and the reference design's when it runs: inside the timing."""
    tokenmeter.flush()
    for reference in REFERENCE:
        reference.flush()


# -- statistics ----------------------------------------------------------------------------------
def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (q in 0..100)."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


TAIL_KEYS = ("p50", "p99", "p99.9", "max", ">2ms", ">4ms")


def tail(samples: Sequence[float]) -> dict[str, float]:
    """p50, p99, p99.9, max (seconds) and how many samples exceed 2 ms and 4 ms."""
    ordered = sorted(samples)
    return {
        "p50": percentile(ordered, 50),
        "p99": percentile(ordered, 99),
        "p99.9": percentile(ordered, 99.9),
        "max": ordered[-1] if ordered else math.nan,
        ">2ms": sum(1 for s in ordered if s > 0.002),
        ">4ms": sum(1 for s in ordered if s > 0.004),
    }


def median_tail(rounds: Sequence[dict[str, float]]) -> dict[str, float]:
    """Each statistic's median over rounds."""
    return {key: statistics.median(r[key] for r in rounds) for key in TAIL_KEYS}


def tail_row(name: str, stats: dict[str, float]) -> str:
    us = "".join(f"{stats[key] * 1e6:>10.0f}" for key in ("p50", "p99", "p99.9", "max"))
    counts = "".join(f"{stats[key]:>8g}" for key in (">2ms", ">4ms"))
    return f"  {name:<12}{us}{counts}"


def tail_header() -> str:
    return (
        f"  {'(us)':<12}" + "".join(f"{k:>10}" for k in TAIL_KEYS[:4]) + f"{'>2ms':>8}{'>4ms':>8}"
    )


def verdict(label: str, ok: bool, detail: str) -> str:
    line = f"  [{'PASS' if ok else 'MISS'}] {label}: {detail}"
    VERDICTS.append(line)
    return line


#: Every verdict printed so far, repeated in the closing summary.
VERDICTS: list[str] = []
