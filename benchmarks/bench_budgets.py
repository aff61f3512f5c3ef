"""What a budget check adds to a call, on the caller's thread.

    python benchmarks/bench_budgets.py [--quick]

The check is two steps on the caller's thread: before the request is sent (estimate the input
cost, reserve it in every budget in scope) and when its record is made (settle the reservation
with the real cost). This runs exactly what the providers' core runs around a call -- ``send()``
with a do-nothing SDK method, then ``emit()`` of its record -- and compares:

- no budget configured, against the same path with the hook line taken out (target <= 5 µs);
- three budgets in scope (day, month, and a tag), in-memory and SQLite ledgers, against no
  budget (target <= 20 µs);
- and, for scale, one real (uninstrumented) OpenAI SDK call over ``httpx2.MockTransport``.

Times are CPU time of the calling thread (``time.thread_time_ns``: the writer threads do not
count, and a noisy neighbour costs less than in wall time), best of several rounds.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import MESSAGES, chat, mock_client

import tokenmeter
from tokenmeter import _runtime
from tokenmeter._models import usage_of
from tokenmeter._record import emit
from tokenmeter.guardrails import _budgets, _state
from tokenmeter.providers._core import Call, guard, send
from tokenmeter.sinks import InMemorySink

QUICK = "--quick" in sys.argv
N = 2_000 if QUICK else 10_000
ROUNDS = 3 if QUICK else 11
USAGE = usage_of(input_tokens=19, output_tokens=10)
KWARGS: dict[str, Any] = {"model": "gpt-4o", "messages": MESSAGES}


def sdk_method(**kwargs: Any) -> None:
    return None


def send_without_hook(call: Call, wrapped: Any, args: Any, kwargs: Any) -> Any:
    """``send`` as it was before budgets: the baseline of the no-budget case."""
    token = guard.set(True)
    try:
        return wrapped(*args, **kwargs)
    except BaseException as exc:
        call.finish(exc)
        raise
    finally:
        guard.reset(token)


def one_call(sender: Callable[..., Any]) -> Callable[[], None]:
    def run() -> None:
        call = Call("openai", "gpt-4o", "chat")
        sender(call, sdk_method, (), KWARGS)
        emit("openai", "gpt-4o", USAGE, call=call, request_model="gpt-4o")

    return run


def per_call_us(run: Callable[[], Any], n: int = N) -> float:
    return interleaved([run], n)[0]


def interleaved(runs: list[Callable[[], Any]], n: int = N) -> list[float]:
    """Best per-call time of each, their rounds interleaved (A B A B ...): a slow spell of the
    machine then hurts both sides of a comparison, not one."""
    best = [float("inf")] * len(runs)
    for _ in range(ROUNDS):
        for index, run in enumerate(runs):
            start = time.thread_time_ns()
            for _ in range(n):
                run()
            best[index] = min(best[index], (time.thread_time_ns() - start) / n / 1000)
        tokenmeter.flush()
    return best


BUDGETS = [
    {"name": "day", "limit_usd": 1e9, "period": "day"},
    {"name": "month", "limit_usd": 1e9, "period": "month", "provider": "openai"},
    {"name": "acme", "limit_usd": 1e9, "period": "total", "tag": "customer=acme"},
]


def configure(directory: Path, budgets: list[dict[str, Any]], ledger: str = "memory") -> None:
    _runtime.reset()
    _state.armed = False
    tokenmeter.configure(
        sinks=[InMemorySink()],
        directory=directory,
        budgets=budgets,
        budget_ledger=ledger,
        max_queue=10 * N,
    )


def budget_work(session: Any) -> Callable[[], None]:
    """Only what budgets add: the pre-send check and the settlement of the call's record."""
    record = tokenmeter.record("openai", "gpt-4o", 19, 10)

    def run() -> None:
        call = Call("openai", "gpt-4o", "chat")
        _budgets.check(call, (), KWARGS)
        _budgets.settle(record, session, call)

    return run


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        sdk = per_call_us(chat(mock_client()), max(200, N // 20))
        results: dict[str, float] = {}
        alone: dict[str, float] = {}
        with tokenmeter.session("bench", tags={"customer": "acme"}) as session:
            configure(directory, [])
            per_call_us(one_call(send))  # warm up
            results["without the hook"], results["no budget"] = interleaved(
                [one_call(send_without_hook), one_call(send)]
            )
            alone["nothing"] = per_call_us(lambda: Call("openai", "gpt-4o", "chat"))
            for ledger in ("memory", "sqlite"):
                configure(directory / ledger, BUDGETS, ledger)
                results[f"3 budgets, {ledger}"] = per_call_us(one_call(send))
                work = budget_work(session)
                bare = lambda: Call("openai", "gpt-4o", "chat")  # noqa: E731
                alone[ledger], alone[f"nothing, {ledger}"] = interleaved([work, bare])
        _runtime.reset()
    base = results["no budget"]
    print(f"one uninstrumented OpenAI SDK call (MockTransport): {sdk:8.2f} µs CPU")
    for name, value in results.items():
        print(
            f"send + record, {name:20s}: {value:8.2f} µs CPU ({value / sdk:6.1%} of the SDK call)"
        )
    print("the budget work alone (check before sending + settle at the record), 3 budgets:")
    for ledger in ("memory", "sqlite"):
        value = alone[ledger] - alone[f"nothing, {ledger}"]
        print(f"  {ledger:6s} ledger: {value:8.2f} µs CPU ({value / sdk:6.1%} of the SDK call)")
    hook = base - results["without the hook"]
    memory = alone["memory"] - alone["nothing, memory"]
    sqlite = alone["sqlite"] - alone["nothing, sqlite"]
    for label, value, target in (
        ("no budget configured: the check adds", hook, 5.0),
        ("three budgets in scope (memory ledger) add", memory, 20.0),
        ("three budgets in scope (SQLite ledger) add", sqlite, 20.0),
    ):
        verdict = "PASS" if value <= target else "MISS"
        print(f"{label:45s} {value:7.2f} µs (target <= {target:.0f} µs) {verdict}")


if __name__ == "__main__":
    main()
