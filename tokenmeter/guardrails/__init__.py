"""Guardrails: budgets that stop a call before it is sent, usage alerts, session-end hooks.

Budgets are the only synchronous check (``_budgets``, called from the providers' ``send``);
alerts and the state-file line are computed on writer threads, off the caller's.
"""

from tokenmeter.guardrails._errors import BudgetExceeded

__all__ = ["BudgetExceeded"]
