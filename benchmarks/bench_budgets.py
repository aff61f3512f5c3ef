"""What a budget check adds to a call, on the caller's thread.

    python benchmarks/bench_budgets.py [--quick]
    TOKENMETER_TEST_PG=postgresql://... python benchmarks/bench_budgets.py   # + PostgreSQL

The check is two steps on the caller's thread: before the request is sent (a ceiling on the
input cost of the request body, found without tokenizing, or near a limit its estimate; reserve
it in every budget in scope) and when its record is made
(settle the reservation with the real cost). Reservations come out of the slice of each budget
the process leases from the ledger; the ledger is written only when a slice runs out (about once
in 64 calls here), so the median call never touches it and the slow percentiles show the ledger
transaction. Measured:

- no budget configured: ``send()`` with its hook line against the same function without it
  (target <= 5 µs);
- three budgets in scope (a day, a month for the provider, a total for a tag), with the memory,
  SQLite and (when ``TOKENMETER_TEST_PG`` names a server) PostgreSQL ledgers: the check and the
  settlement of one call, less the same loop making the call object only (target <= 20 µs at
  the median);
- and, for scale, one real uninstrumented OpenAI SDK call over ``httpx2.MockTransport``.

Times are CPU time of the calling thread (``time.thread_time_ns``: the writer threads do not
count, and a noisy neighbour costs less than in wall time), one sample per call; the hook's cost
is the best of several interleaved rounds (it is too small to time call by call).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import MESSAGES, chat, describe, mock_client, percentile

import tokenmeter
from tokenmeter import _runtime
from tokenmeter.guardrails import _budgets, _state
from tokenmeter.providers._core import Call, guard, send
from tokenmeter.sinks import InMemorySink

QUICK = "--quick" in sys.argv
N = 3_000 if QUICK else 20_000
ROUNDS = 3 if QUICK else 9
KWARGS: dict[str, Any] = {"model": "gpt-4o", "messages": MESSAGES}
BUDGETS = [
    {"name": "day", "limit_usd": 1e9, "period": "day"},
    {"name": "month", "limit_usd": 1e9, "period": "month", "provider": "openai"},
    {"name": "acme", "limit_usd": 1e9, "period": "total", "tag": "customer=acme"},
]


def sdk_method(**kwargs: Any) -> None:
    return None


def send_without_hook(call: Call, wrapped: Any, args: Any, kwargs: Any) -> Any:
    """``send`` without its budget line: the baseline of the no-budget case."""
    token = guard.set(True)
    try:
        return wrapped(*args, **kwargs)
    except BaseException as exc:
        call.finish(exc)
        raise
    finally:
        guard.reset(token)


def best_of(runs: list[Callable[[], Any]], n: int) -> list[float]:
    """Best per-call CPU time of each (µs), their rounds interleaved (A B A B ...)."""
    best = [float("inf")] * len(runs)
    for _ in range(ROUNDS):
        for index, run in enumerate(runs):
            start = time.thread_time_ns()
            for _ in range(n):
                run()
            best[index] = min(best[index], (time.thread_time_ns() - start) / n / 1000)
    return best


def samples(run: Callable[[], Any], n: int) -> list[float]:
    """CPU time of each of ``n`` calls (µs), sorted."""
    clock = time.thread_time_ns
    out = []
    for _ in range(n):
        start = clock()
        run()
        out.append((clock() - start) / 1000)
    out.sort()
    return out


def configure(directory: Path, budgets: list[dict[str, Any]], ledger: Any = "memory") -> None:
    _runtime.reset()
    _state.armed = False
    sinks: list[Any] = [InMemorySink()]
    if not isinstance(ledger, str):
        sinks.append(ledger)
        ledger = "sqlite"
    tokenmeter.configure(
        sinks=sinks, directory=directory, budgets=budgets, budget_ledger=ledger, max_queue=10 * N
    )


def budget_work(session: Any, record: Any) -> Callable[[], None]:
    """Only what budgets add: the check before sending (the estimate of the request body the
    adapter passes, and the reservation) and the settlement when the record is made."""

    def run() -> None:
        call = Call("openai", "gpt-4o", "chat", request=KWARGS)
        _budgets.check(call, (), KWARGS)
        _budgets.settle(record, session, call)

    return run


def bare_call() -> None:
    Call("openai", "gpt-4o", "chat", request=KWARGS)


def postgres_sink() -> Any:
    dsn = os.environ.get("TOKENMETER_TEST_PG")
    if not dsn:
        return None
    from tokenmeter.sinks.postgres import PostgresSink

    return PostgresSink(dsn, schema=f"bench_budgets_{uuid.uuid4().hex[:8]}")


def drop_schema(sink: Any) -> None:
    with sink.connect() as conn:
        conn.execute(f"DROP SCHEMA {sink.schema} CASCADE".encode())


def main() -> None:
    print(describe())
    ledgers: list[tuple[str, Any]] = [("memory", "memory"), ("sqlite", "sqlite")]
    pg = postgres_sink()
    if pg is not None:
        ledgers.append(("postgres", pg))
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        sdk = samples(chat(mock_client()), max(300, N // 20))
        sdk_p50 = percentile(sdk, 50)
        configure(directory, [])  # before the session: it writes under the temporary directory
        with tokenmeter.session("bench", tags={"customer": "acme"}) as session:

            def one_call(sender: Callable[..., Any]) -> Callable[[], None]:
                return lambda: sender(Call("openai", "gpt-4o", "chat"), sdk_method, (), KWARGS)

            without, with_hook = best_of([one_call(send_without_hook), one_call(send)], N)
            results: dict[str, list[float]] = {}
            bare = samples(bare_call, N)
            for name, ledger in ledgers:
                configure(directory / name, BUDGETS, ledger)
                record = tokenmeter.record("openai", "gpt-4o", 19, 10)
                work = budget_work(session, record)
                samples(work, N // 10)  # warm: the scopes, the first slices
                results[name] = samples(work, N)
                bare = min(bare, samples(bare_call, N), key=lambda s: percentile(s, 50))
        _runtime.reset()
    if pg is not None:
        drop_schema(pg)
    base = percentile(bare, 50)
    print(f"one uninstrumented OpenAI SDK call (MockTransport): p50 {sdk_p50:8.2f} µs CPU")
    print(
        f"the call object alone (subtracted below): p50 {base:.2f}, p99 "
        f"{percentile(bare, 99):.2f}, p99.9 {percentile(bare, 99.9):.2f} µs (the noise floor)"
    )
    print(
        "three budgets in scope, check + settle per call, µs CPU added "
        "(and as a share of the SDK call's p50):"
    )
    print(f"  {'ledger':9s} {'p50':>18s} {'p99':>18s} {'p99.9':>18s}")
    for name, values in results.items():
        cells = []
        for q in (50, 99, 99.9):
            added = percentile(values, q) - base
            cells.append(f"{added:8.2f} ({added / sdk_p50:6.1%})")
        print(f"  {name:9s} {cells[0]:>18s} {cells[1]:>18s} {cells[2]:>18s}")
    hook = with_hook - without
    print(f"no budget configured: the hook adds {hook:6.2f} µs (target <= 5 µs) ", end="")
    print("PASS" if hook <= 5 else "MISS")
    for name, values in results.items():
        added = percentile(values, 50) - base
        verdict = "PASS" if added <= 20 else "MISS"
        print(f"three budgets, {name} ledger: p50 adds {added:6.2f} µs (target <= 20 µs) {verdict}")


if __name__ == "__main__":
    main()
