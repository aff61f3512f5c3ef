"""A process that makes a few calls against the shared budget, then stays alive until told to
exit (a line on stdin): it holds whatever slice of the budget it still has.

Run as ``python budget_holder.py DIRECTORY LIMIT CALLS MODE [DSN]`` with the FakeProvider's
environment; MODE is ``session`` (the calls are made in a root session, which ends before the
process waits), ``bare`` (no session: the slice goes back only once the process is idle) or
``exit`` (no session, and the slice goes back only at exit, within ``exit_timeout`` = 1 s) or
``hook`` (as ``exit``, with an ``on_session_end`` hook that makes one more call when the
implicit session ends at exit) or ``failing`` (as ``exit`` with ``exit_timeout`` = 10 s, for a
ledger that fails at first: SQLite's busy timeout is 1 s, not 30, for a ``budgets.db`` the test
holds locked). With a DSN, the records and the ledger are in that PostgreSQL database.
Prints ``made N`` once its calls are made.
"""

from __future__ import annotations

import sys

import openai
from budget_racer import MESSAGES

import tokenmeter
from tokenmeter.guardrails import _ledger
from tokenmeter.sinks import PostgresSink


def main() -> None:
    directory, limit, calls, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    client = openai.OpenAI(max_retries=0)
    if mode == "failing":
        _ledger.BUSY_TIMEOUT_S = 1.0

    def summarise(session: tokenmeter.Session) -> None:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)

    tokenmeter.configure(
        directory=directory,
        sinks=[PostgresSink(sys.argv[5])] if len(sys.argv) > 5 else ["sqlite"],
        budgets=[{"name": "race", "limit_usd": limit, "period": "total"}],
        exit_timeout=1.0 if mode == "exit" else 10.0,
        on_session_end=summarise if mode == "hook" else None,
    )
    tokenmeter.instrument(["openai"])
    from tokenmeter.guardrails import _leases

    if mode != "bare":
        _leases.IDLE_S = 3600.0  # only the end of the session (or the exit) gives it back
    if mode == "session":
        with tokenmeter.session("holder"):
            for _ in range(calls):
                client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    else:
        for _ in range(calls):
            client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    print(f"made {calls}", flush=True)
    sys.stdin.readline()


if __name__ == "__main__":
    main()
