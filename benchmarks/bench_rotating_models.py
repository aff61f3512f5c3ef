"""A compatible server that names a new model in every answer (an id in the name): does the cost
of a call, or the process's memory, grow with the number of names seen?

    python benchmarks/bench_rotating_models.py [--calls 20000] [--blocks 4]

The real OpenAI SDK over ``httpx2.MockTransport``, instrumented, with the SQLite sink and the
markdown journal, inside one session with a budget (so every call checks the session's summary).
Two contenders in the same process, one after the other: the server answering the same model
every time, then a new model every time. Each block prints the time per call (a flush() included)
and the resident memory. Target: the last block of the rotating server costs no more than 1.25x
its first, and memory stays within 25 MB of where it started (a bounded cache fills, then stops).
A new name costs more than a known one (the price tables are searched for it): the ratio between
the contenders is printed for information.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx2
import openai
from _common import BODY, describe, verdict

import tokenmeter

MESSAGES = [{"role": "user", "content": "Say hello."}]
#: The benchmarks' canned chat reply, whose model and id each answer replaces.
REPLY = json.loads(BODY)


def client_answering(rotating: bool) -> openai.OpenAI:
    counter = itertools.count()

    def handler(request: httpx2.Request) -> httpx2.Response:
        n = next(counter)
        model = f"gpt-4o-rotating-{n}" if rotating else REPLY["model"]
        body = {**REPLY, "id": f"chatcmpl-{n}", "model": model}
        return httpx2.Response(200, json=body)

    http = httpx2.Client(transport=httpx2.MockTransport(handler))
    return openai.OpenAI(api_key="sk-bench", base_url="http://compat.local/v1", http_client=http)


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 1e6


def run(rotating: bool, calls: int, blocks: int) -> list[tuple[float, float]]:
    """(us per call, RSS MB) after each block."""
    client = client_answering(rotating)
    per_block = calls // blocks
    results = []
    with tokenmeter.session("rotating" if rotating else "same", budget_usd=1_000_000):
        for _ in range(blocks):
            start = time.perf_counter()
            for _ in range(per_block):
                client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
            tokenmeter.flush()
            results.append(((time.perf_counter() - start) / per_block * 1e6, rss_mb()))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--blocks", type=int, default=4)
    args = parser.parse_args()
    logging.getLogger("tokenmeter").setLevel(logging.ERROR)  # one warning per unknown name
    directory = Path(tempfile.mkdtemp(prefix="tokenmeter-bench-"))
    tokenmeter.configure(sinks=["sqlite", "markdown"], directory=directory)
    tokenmeter.instrument("openai")
    print(describe())
    print(f"sinks: sqlite and markdown in {directory}; {args.calls:,} calls per contender\n")
    found: dict[str, Any] = {}
    for name, rotating in (("same model", False), ("new model per answer", True)):
        start_rss = rss_mb()
        found[name] = results = run(rotating, args.calls, args.blocks)
        per_block = args.calls // args.blocks
        for index, (us, rss) in enumerate(results, 1):
            done = index * per_block
            print(f"  {name:<22} after {done:>7,} calls: {us:8.0f} us/call, {rss:6.0f} MB")
        found[name + " rss"] = results[-1][1] - start_rss
    rotating_blocks = found["new model per answer"]
    growth = rotating_blocks[-1][0] / rotating_blocks[0][0]
    memory = found["new model per answer rss"]
    with sqlite3.connect(directory / "usage.db") as db:
        rows = db.execute("SELECT COUNT(*) FROM records").fetchone()[0]
    print(
        f"\n  for information: a new model per answer costs "
        f"{rotating_blocks[-1][0] / found['same model'][-1][0]:.2f}x the same model per call; "
        f"usage.db holds {rows:,} of {2 * args.calls:,} records"
    )
    growth_text = f"last block {growth:.2f}x the first"
    print(verdict("rotating models: time per call", growth <= 1.25, growth_text))
    print(verdict("rotating models: memory", memory <= 25, f"+{memory:.0f} MB over the run"))


if __name__ == "__main__":
    main()
