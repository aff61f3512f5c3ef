"""``tokenmeter alerts``: the alerts in ``alerts.jsonl``, oldest first, optionally ``--since``."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tokenmeter.cli._errors import CliError
from tokenmeter.cli._output import one_line, write_output
from tokenmeter.cli._postgres import (
    display_name,
    is_postgres_url,
    keyword_dsn_url,
    refuse_unparsed_dsn,
)
from tokenmeter.cli._source import (
    SQLITE_MAGIC,
    default_directory,
    first_line,
    lines_of,
    parse_record,
    refuse_special_file,
)
from tokenmeter.cli.reports._render import shorten_middle

__all__ = ["parse_alert", "run_alerts"]


#: A budget warning's scope (``budget:NAME (FILTERS, per day from <period start>)``, some 80
#: characters) is shown whole; a longer one (a long session name or tag value) is shortened in
#: the middle, keeping both ends: a budget's name and its period's start.
_SCOPE_WIDTH = 120
#: tokenmeter writes a rule as a short name (``call_tokens``, ``budget_50pct``); one from a
#: foreign or torn line may be 900,000 characters, and the table pads every row to its longest
#: cell: it is shortened in the middle like a scope, so the output grows with the file.
_RULE_WIDTH = 40


def _alerts_path(source: str | None) -> Path:
    if source is None:
        return default_directory() / "alerts.jsonl"
    _refuse_postgres(source)
    path = Path(source)
    try:
        return path / "alerts.jsonl" if path.is_dir() else path
    except OSError as exc:  # a name too long for the file system, a folder not searchable
        raise CliError(f"cannot read {source}: {exc.strerror}") from None


def _refuse_postgres(source: str) -> None:
    """A PostgreSQL URL or keyword DSN, as every other command takes ``--source``, is not where
    alerts are: the alert sink writes each process's ``alerts.jsonl``. Taken as a path, it
    printed "no alerts: postgresql:/reader:PASSWORD@db/app does not exist yet", exit 0. The
    source is named as the other commands name it, never with its password."""
    if not is_postgres_url(source):
        if os.path.lexists(source):  # a file whose name has an "=" in it is a file
            return
        url = keyword_dsn_url(source)
        if url is None:
            refuse_unparsed_dsn(source)
            return
        source = url
    try:
        name = display_name(source)
    except ValueError:  # a torn URL: still never echoed, it may hold the password
        name = "a PostgreSQL database"
    raise CliError(
        f"alerts are not kept in PostgreSQL ({name}): they are in alerts.jsonl in each "
        "process's tokenmeter directory; give that file or its directory"
    )


#: The fields the alert sink writes and their types (besides ``time``): a line where one has
#: another type is not an alert this command can show, and is skipped and counted.
_TEXT_FIELDS = ("rule", "scope", "message", "record_id", "session_id")
_NUMBER_FIELDS = ("observed", "baseline", "threshold")


def _finite(text: str) -> float:
    """``parse_float`` that refuses what JSON cannot hold (``1e999``): out comes valid JSON."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {text}")
    return value


def _no_constant(name: str) -> Any:
    """``parse_constant``: ``NaN`` and ``Infinity`` are not JSON."""
    raise ValueError(f"not JSON: {name}")


_decode = json.JSONDecoder(parse_float=_finite, parse_constant=_no_constant).decode


def parse_alert(line: bytes) -> tuple[dict[str, Any], datetime] | None:
    """The alert on this line and its time in UTC, or None when the line is not one (the
    reports' alert sections read lines through this too)."""
    try:
        item = _decode(line.decode("utf-8"))
    except (ValueError, RecursionError):  # also UnicodeDecodeError
        return None
    if not isinstance(item, dict) or not isinstance(item.get("time"), str):
        return None
    if not isinstance(item.get("rule"), str):
        return None
    if any(item.get(name) is not None and not isinstance(item[name], str) for name in _TEXT_FIELDS):
        return None
    for name in _NUMBER_FIELDS:
        value = item.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        if abs(value) > sys.float_info.max:  # an integer no float holds: not a measurement
            return None
    try:
        when = datetime.fromisoformat(item["time"].replace("Z", "+00:00"))
        when = when.astimezone(UTC) if when.tzinfo is not None else when.replace(tzinfo=UTC)
    except (ValueError, OverflowError):  # no time, or before year 1 in UTC
        return None
    return item, when


@dataclass
class _AlertLines:
    """The lines of ``alerts.jsonl``, read as the report reads JSONL (``lines_of``): a line
    longer than ``MAX_LINE_BYTES`` is read past, not held, and counted in ``skipped``."""

    path: Path
    on_progress: Callable[[int, int], None] | None = None
    skipped: int = field(default=0, init=False)


def read_alerts(path: Path, since: datetime | None = None) -> tuple[list[dict[str, Any]], int]:
    """The alerts in ``path`` at or after ``since``, in file order; and how many lines were bad."""
    lines = _AlertLines(path)
    alerts: list[dict[str, Any]] = []
    for line in lines_of(lines):
        if not line.strip():
            continue
        found = parse_alert(line)
        if found is None:
            lines.skipped += 1
        elif since is None or found[1] >= since:
            alerts.append(found[0])
    return alerts, lines.skipped


def _refuse_other_files(path: Path) -> None:
    """A SQLite database, or a file whose first line is a usage record, is not an alerts file:
    ``--source usage.db``, as every other command takes it, listed "0 alert(s)" after "skipped
    60 unreadable line(s)". Torn or bad lines (a writer killed halfway, the first line too) are
    skipped and counted: refused for one, an alerts file hid every alert after it."""
    try:
        with path.open("rb") as handle:
            sqlite = handle.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
    if sqlite:
        why = "it is a SQLite database"
    else:
        first = first_line(path)
        if first is None or parse_record(first) is None:
            return
        why = "its first line is a usage record"
    raise CliError(
        f"{path} is not an alerts file ({why}): pass the alerts.jsonl beside the data, "
        "or the directory holding it"
    )


def _number(value: object) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:,.6g}"
    return "-"


def run_alerts(args: argparse.Namespace) -> int:
    path = _alerts_path(args.source)
    try:
        found = path.exists()
    except OSError as exc:  # its folder not searchable
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    if not found:
        print(f"no alerts: {path} does not exist yet", file=sys.stderr)
        return 0
    refuse_special_file(path)
    _refuse_other_files(path)
    alerts, bad = read_alerts(path, args.since)
    if bad:
        print(f"tokenmeter: skipped {bad} unreadable line(s) in {path}", file=sys.stderr)
    if args.format == "json":
        text = "".join(
            json.dumps(alert, ensure_ascii=False, allow_nan=False) + "\n" for alert in alerts
        )
    else:
        rows = [("TIME", "RULE", "SCOPE", "OBSERVED", "BASELINE", "THRESHOLD")]
        rows += [
            (
                alert["time"][:19].replace("T", " "),
                shorten_middle(alert["rule"], _RULE_WIDTH),
                shorten_middle(alert.get("scope") or "", _SCOPE_WIDTH),
                _number(alert.get("observed")),
                _number(alert.get("baseline")),
                _number(alert.get("threshold")),
            )
            for alert in alerts
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        text = "".join(
            one_line(
                "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            ).rstrip()
            + "\n"  # stdout's text mode writes the platform's line end
            for row in rows
        )
        text += f"{len(alerts)} alert(s)\n"
    write_output(text, None, exact=args.format == "json")  # JSON: the exact text, as CSV
    return 0
