"""Sessions: nest them, tag them, give them a budget, and record usage by hand.

python examples/sessions.py
"""

from __future__ import annotations

import asyncio

import tokenmeter
from tokenmeter.sinks import InMemorySink, JSONLSink


@tokenmeter.track(tags={"feature": "summarise"})
def summarise(document: str) -> str:
    # A call made some other way (an HTTP API, a batch job): record it by hand. Without the
    # provider's count, English text is about 4 characters per token.
    estimate = max(1, len(document) // 4)
    tokenmeter.record(
        "openai", "gpt-4o-mini", input_tokens=estimate, output_tokens=120, estimated=True
    )
    return "summary"


async def answer(question: str) -> None:
    async with tokenmeter.session("answer", tags={"feature": "qa"}):
        tokenmeter.record("anthropic", "claude-haiku-4-5", input_tokens=800, output_tokens=200)


def main() -> None:
    memory = InMemorySink()
    tokenmeter.configure(sinks=[memory, JSONLSink(".tokenmeter/example-usage.jsonl")])
    with tokenmeter.session("nightly-job", tags={"team": "research"}, budget_usd=0.01) as job:
        for doc in ("alpha " * 100, "beta " * 300):
            summarise(doc)
        with tokenmeter.session("pricey-step", notes="uses the big model"):
            tokenmeter.record("openai", "gpt-4o", input_tokens=2_000, output_tokens=500)

    async def run_all() -> None:
        await asyncio.gather(*(answer(q) for q in ("why?", "how?")))

    asyncio.run(run_all())
    tokenmeter.flush()
    summary = job.summary
    print(
        f"nightly-job: {summary.calls} calls, ${summary.cost_usd:f} "
        f"(over budget: {job.over_budget})"
    )
    for model, totals in summary.by_model.items():
        print(f"  {model}: {totals.calls} call(s), ${totals.cost_usd:f}")
    print("records written:", len(memory.records))
    print("sessions seen:", sorted({r.session_name or "?" for r in memory.records}))


if __name__ == "__main__":
    main()
