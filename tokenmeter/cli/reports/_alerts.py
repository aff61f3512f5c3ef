"""Alerts and budget events that the library wrote to ``alerts.jsonl`` next to the usage data.

One JSON object per line (time, rule, scope, observed, baseline, threshold, record or session id).
The reports only show what is there: no file, no section; a line that is not such an object is
skipped and counted like any corrupt record line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from tokenmeter.cli._alerts import parse_alert
from tokenmeter.cli._dates import format_instant
from tokenmeter.cli._source import MAX_LINE_BYTES, is_too_long, skip_rest_of_line
from tokenmeter.guardrails._alerts import shown

__all__ = ["ALERTS_FILE", "Alert", "alerts_in", "alerts_near"]

ALERTS_FILE = "alerts.jsonl"
_MAX_ALERTS = 10_000  # a report lists the latest ones; a runaway rule must not fill memory


@dataclass(frozen=True)
class Alert:
    time: str
    rule: str
    scope: str
    observed: str
    threshold: str
    baseline: str
    subject: str  # the record or session id it is about


@dataclass
class Alerts:
    path: Path | None
    items: list[Alert]
    skipped: int = 0

    def within(self, since: datetime | None, until: datetime | None) -> list[Alert]:
        low = None if since is None else format_instant(since)
        high = None if until is None else format_instant(until)
        return [
            alert
            for alert in self.items
            if (low is None or alert.time >= low) and (high is None or alert.time < high)
        ]


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    # Older writers posted a budget's float sum as it was (0.0010500000000000002): shown as the
    # budgets now post it (0.00105).
    return str(shown(value))


def _alert(line: bytes) -> Alert | None:
    """The alert on this line, checked as ``tokenmeter alerts`` checks it, its time in the
    record format (so that ``within`` compares it as text); None when the line is not one."""
    found = parse_alert(line)
    if found is None:
        return None
    data, when = found
    return Alert(
        time=format_instant(when),
        rule=_text(data.get("rule")),
        scope=_text(data.get("scope")),
        observed=_text(data.get("observed")),
        threshold=_text(data.get("threshold")),
        baseline=_text(data.get("baseline")),
        subject=_text(data.get("record_id") or data.get("session_id") or data.get("id")),
    )


def alerts_in(path: Path) -> Alerts:
    """The alerts in this file (the latest ``_MAX_ALERTS``), oldest first."""
    found = Alerts(path, [])
    if not path.is_file():  # none, or a FIFO that opening would wait on for ever
        return Alerts(None, [])
    try:
        handle = path.open("rb")
    except OSError:
        return Alerts(None, [])
    with handle:
        while line := handle.readline(MAX_LINE_BYTES + 1):
            if is_too_long(line):
                skip_rest_of_line(handle)
                found.skipped += 1
                continue
            if not line.strip():
                continue
            alert = _alert(line)
            if alert is None:
                found.skipped += 1
                continue
            found.items.append(alert)
            if len(found.items) > 2 * _MAX_ALERTS:
                del found.items[:_MAX_ALERTS]
    found.items = sorted(found.items[-_MAX_ALERTS:], key=lambda alert: alert.time)
    return found


def alerts_near(source: Path) -> Alerts:
    """``alerts.jsonl`` in the directory of the usage data, when there is one."""
    return alerts_in(source.parent / ALERTS_FILE)
