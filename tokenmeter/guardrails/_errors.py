"""The exception a budget raises from the SDK call, before any network traffic."""

from __future__ import annotations

from decimal import Decimal

__all__ = ["BudgetExceeded", "printable"]


class BudgetExceeded(Exception):
    """A call was refused because it would take a budget past its limit.

    Raised from the SDK method itself (``client.chat.completions.create`` etc.) before the request
    leaves the process, so the application can catch it where it makes the call. A record with
    status "blocked" is written for it, so reports show refused calls.
    """

    def __init__(
        self,
        budget: str,
        scope: str,
        limit_usd: Decimal,
        spent_usd: Decimal,
        estimate_usd: Decimal,
        period: str,
    ) -> None:
        self.budget = budget
        self.scope = scope
        self.limit_usd = limit_usd
        self.spent_usd = spent_usd
        self.estimate_usd = estimate_usd
        self.period = period
        # The scope may hold a session name taken from outside input (a request header): a
        # newline or a terminal escape in it, raw, forged a line of the log the application
        # writes this message to. ``self.scope`` stays as recorded.
        super().__init__(
            f"budget {budget!r} ({printable(scope)}, per {period}) would be exceeded: "
            f"${spent_usd} spent of ${limit_usd}, this call is estimated at ${estimate_usd}"
        )

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        return (
            type(self),
            (
                self.budget,
                self.scope,
                self.limit_usd,
                self.spent_usd,
                self.estimate_usd,
                self.period,
            ),
        )


def printable(text: str) -> str:
    """``text`` as it is when every character of it prints; otherwise escaped as Python writes
    it (``\\n``, ``\\x1b``), without the quotes: what a log line or a terminal may be given."""
    return text if text.isprintable() else repr(text)[1:-1]
