"""``tokenmeter alerts``: the alerts in ``alerts.jsonl``, oldest first, optionally ``--since``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from tokenmeter.cli._errors import CliError
from tokenmeter.cli._output import write_output

__all__ = ["run_alerts"]


def _alerts_path(source: str | None) -> Path:
    if source is not None:
        path = Path(source)
        return path / "alerts.jsonl" if path.is_dir() else path
    from tokenmeter._config import load_settings

    try:
        directory = load_settings().directory
    except ValueError as exc:
        raise CliError(str(exc)) from None
    return Path(directory) / "alerts.jsonl"


def _number(value: object) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:,.6g}"
    return "-"


def run_alerts(args: argparse.Namespace) -> int:
    from tokenmeter.guardrails._alerts import read_alerts

    path = _alerts_path(args.source)
    if not path.exists():
        print(f"no alerts: {path} does not exist yet", file=sys.stderr)
        return 0
    try:
        alerts, bad = read_alerts(path, args.since)
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
    if bad:
        print(f"tokenmeter: skipped {bad} unreadable line(s) in {path}", file=sys.stderr)
    if args.format == "json":
        text = "".join(json.dumps(alert, ensure_ascii=False) + "\n" for alert in alerts)
    else:
        rows = [("TIME", "RULE", "SCOPE", "OBSERVED", "BASELINE", "THRESHOLD")]
        rows += [
            (
                str(alert.get("time", ""))[:19].replace("T", " "),
                str(alert.get("rule", "")),
                str(alert.get("scope", ""))[:60],
                _number(alert.get("observed")),
                _number(alert.get("baseline")),
                _number(alert.get("threshold")),
            )
            for alert in alerts
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        text = "".join(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            + os.linesep
            for row in rows
        )
        text += f"{len(alerts)} alert(s)\n"
    write_output(text, None)
    return 0
