"""Event-loop lag under instrumented AsyncOpenAI calls, against the bare SDK in the same run.

    python benchmarks/bench_asyncio.py [--quick] [--latency-ms 400] [--tasks 50]

50 tasks call ``AsyncOpenAI.chat.completions.create`` back to back over ``httpx2.MockTransport``
with an async handler that waits a random 0.5x..1.5x ``--latency-ms`` (the network and the model;
the same seeded sequence in every round) before its canned reply, while a ticker task sleeps 1 ms
at a time and records how late it wakes (actual sleep - 1 ms): the time the loop was kept from
running it. Bare and instrumented rounds alternate; each contender's lag samples are pooled over
its rounds. Run with the default SQLite sink, then with all three file sinks (sqlite, jsonl,
markdown): their writer threads share the GIL with the loop's thread.

The default latency leaves the loop mostly idle, as real calls (seconds each) do; "loop busy" is
the loop thread's CPU time over the round's wall time. Lag grows with how busy the loop is, so a
busier loop magnifies any CPU added per call: a last scenario, for information, has a quarter of
the latency (the loop about four times as busy).

Target: lag p99 instrumented within 10 % of bare (each sink set).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
from _common import (
    CONTENDERS,
    VERDICTS,
    async_chat,
    async_mock_client,
    describe,
    tail,
    verdict,
)

import tokenmeter

TICK = 0.001


async def one_round(
    client: openai.AsyncOpenAI, tasks: int, seconds: float, stagger: Callable[[], float]
) -> tuple[list[float], int, float]:
    """(lag samples in seconds, calls completed, loop-thread CPU / wall) over ``seconds``. Each
    task starts after ``stagger()`` seconds, so that they do not all run in step."""
    run = async_chat(client)
    stop = time.perf_counter() + seconds
    lags: list[float] = []
    done = 0

    async def caller(delay: float) -> None:
        nonlocal done
        await asyncio.sleep(delay)
        while time.perf_counter() < stop:
            await run()
            done += 1

    async def ticker() -> None:
        clock = time.perf_counter
        while clock() < stop:
            start = clock()
            await asyncio.sleep(TICK)
            lags.append(clock() - start - TICK)

    gc.collect()
    cpu, wall = time.thread_time(), time.perf_counter()
    await asyncio.gather(ticker(), *(caller(stagger()) for _ in range(tasks)))
    busy = (time.thread_time() - cpu) / (time.perf_counter() - wall)
    return lags, done, busy


def scenario(
    title: str, latency_ms: float, tasks: int, seconds: float, rounds: int, judge: bool
) -> None:
    jitter = random.Random()
    client = async_mock_client(lambda: latency_ms / 1000 * (0.5 + jitter.random()))

    def stagger() -> float:
        return latency_ms / 1000 * jitter.random()

    lags: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    rates: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    busy: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    p99s: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    for make in CONTENDERS.values():  # warm-up
        with make():
            asyncio.run(one_round(client, tasks, min(0.5, seconds), stagger))
            tokenmeter.flush()
    for index in range(rounds):
        for name, make in CONTENDERS.items():
            jitter.seed(index)
            with make():
                samples, done, loop_busy = asyncio.run(one_round(client, tasks, seconds, stagger))
                tokenmeter.flush()
            lags[name] += samples
            rates[name].append(done / seconds)
            busy[name].append(loop_busy)
            p99s[name].append(tail(samples)["p99"])
    print(f"\n{title}")
    print(
        f"  {'lag (us)':<12}{'p50':>9}{'p99':>9}{'p99.9':>9}{'max':>9}{'>2ms':>7}{'>4ms':>7}"
        f"{'ticks':>8}{'calls/s':>9}{'loop busy':>11}   per-round p99"
    )
    pooled = {name: tail(samples) for name, samples in lags.items()}
    for name, stats in pooled.items():
        us = "".join(f"{stats[key] * 1e6:>9.0f}" for key in ("p50", "p99", "p99.9", "max"))
        per_round = " ".join(f"{value * 1e6:.0f}" for value in p99s[name])
        print(
            f"  {name:<12}{us}{stats['>2ms']:>7}{stats['>4ms']:>7}{len(lags[name]):>8}"
            f"{statistics.median(rates[name]):>9,.0f}{statistics.median(busy[name]):>10.0%}"
            f"   {per_round}"
        )
    base, ours = pooled["bare"]["p99"], pooled["tokenmeter"]["p99"]
    line = verdict(
        f"4 {title.split(':')[0]} lag p99",
        ours <= base * 1.10,
        f"{ours * 1e6:.0f} us vs bare {base * 1e6:.0f} us ({ours / base - 1:+.0%}; target <= +10 %)"
        f"; max {pooled['tokenmeter']['max'] * 1e3:.2f} ms vs {pooled['bare']['max'] * 1e3:.2f} ms",
    )
    if judge:
        print(line)
    else:
        VERDICTS.pop()
        print("  (for information: " + line.strip()[7:] + ")")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short rounds (a smoke run)")
    parser.add_argument(
        "--latency-ms", type=float, default=400.0, help="mean handler wait per call"
    )
    parser.add_argument("--tasks", type=int, default=50)
    args = parser.parse_args()
    rounds, seconds = (2, 1.0) if args.quick else (6, 3.0)
    directory = Path(tempfile.mkdtemp(prefix="tokenmeter-bench-"))
    print(describe())
    print(
        f"{args.tasks} tasks, {args.latency_ms:g} ms mean handler latency, {rounds} interleaved "
        f"rounds of {seconds:g} s, 1 ms ticker; sinks in {directory}"
    )
    common: dict[str, Any] = {"tasks": args.tasks, "seconds": seconds, "rounds": rounds}
    tokenmeter.configure(sinks=["sqlite"], directory=directory)
    scenario("sqlite: default sink", args.latency_ms, judge=True, **common)
    tokenmeter.configure(sinks=["sqlite", "jsonl", "markdown"], directory=directory)
    scenario("sqlite+jsonl+markdown", args.latency_ms, judge=True, **common)
    tokenmeter.configure(sinks=["sqlite"], directory=directory)
    busier = args.latency_ms / 4
    scenario(f"busier loop ({busier:g} ms latency), sqlite", busier, judge=False, **common)
    load = os.getloadavg()
    print(f"\n== summary (load average {load[0]:.2f} {load[1]:.2f} at the end) ==")
    print("\n".join(VERDICTS))


if __name__ == "__main__":
    main()
