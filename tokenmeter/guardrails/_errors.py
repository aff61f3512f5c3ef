"""The exception a budget raises from the SDK call, before any network traffic."""

from __future__ import annotations

from decimal import Decimal

__all__ = ["BudgetExceeded"]


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
        super().__init__(
            f"budget {budget!r} ({scope}, per {period}) would be exceeded: "
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
