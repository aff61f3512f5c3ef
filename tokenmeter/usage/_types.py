"""What reading a response yields, before it becomes a record."""

from __future__ import annotations

from dataclasses import dataclass

from tokenmeter._models import Usage


@dataclass(slots=True)  # not frozen: made once per call, and a frozen __init__ costs ~2x
class Extracted:
    """Usage plus the facts about the call that pricing and the record need."""

    provider: str
    usage: Usage
    #: As the response gave it: a compatible server may send a blank one, or 5 or a list (the
    #: SDKs pass it on unchecked), which name no model (``providers._core.named_model``).
    model: str | None = None
    operation: str | None = None
    #: Service tier / processing mode that changes the price ("batch", "flex", "priority").
    tier: str | None = None
    request_id: str | None = None
