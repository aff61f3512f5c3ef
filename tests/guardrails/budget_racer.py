"""One process of the budget race: N threads call the fake until the budget refuses them.

Run as ``python budget_racer.py DIRECTORY THREADS``, with the FakeProvider's environment; prints
how many calls were made and how many refused, as JSON.
"""

from __future__ import annotations

import json
import sys
import threading

import openai

import tokenmeter
from tokenmeter import BudgetExceeded

#: 4,000 characters of text: the estimate is 1,000 input tokens, exactly what the fake reports.
MESSAGES = [{"role": "user", "content": "x" * 3996}]


def main() -> None:
    directory, threads, limit = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    tokenmeter.configure(
        directory=directory,
        sinks=["sqlite"],
        budgets=[{"name": "race", "limit_usd": limit, "period": "total"}],
    )
    tokenmeter.instrument(["openai"])
    made, refused = [0], [0]
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def work() -> None:
        client = openai.OpenAI(max_retries=0)
        start.wait()
        while True:
            try:
                client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
            except BudgetExceeded:
                with lock:
                    refused[0] += 1
                return
            with lock:
                made[0] += 1

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    print(json.dumps({"made": made[0], "refused": refused[0]}))


if __name__ == "__main__":
    main()
