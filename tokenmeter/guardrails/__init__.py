"""Guardrails: budgets that stop a call before it is sent, usage alerts, session-end hooks.

Budgets are the only synchronous check (``_budgets``, called from the providers' ``send``);
alerts and the state-file line are computed on writer threads, off the caller's.
"""

from typing import TYPE_CHECKING, Any

from tokenmeter.guardrails._errors import BudgetExceeded

if TYPE_CHECKING:
    from tokenmeter.guardrails._alerts import Alert

__all__ = ["Alert", "BudgetExceeded"]


def __getattr__(name: str) -> Any:
    """``Alert`` (what ``on_alert`` callbacks get) on first use: its module brings the record
    models, which ``import tokenmeter`` does not load."""
    if name == "Alert":
        from tokenmeter.guardrails._alerts import Alert

        globals()["Alert"] = Alert
        return Alert
    raise AttributeError(f"module 'tokenmeter.guardrails' has no attribute {name!r}")
