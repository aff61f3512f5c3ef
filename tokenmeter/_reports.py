"""Periodic usage reports: ``reports = "weekly"`` writes ``reports/usage_report_<period>.md``.

No daemon: the report of a period is written by whichever process first records a call after the
period closed (at least ``GRACE`` into the next one, so that records of the last moments have
reached the database), with the report of the period of the last calls before it when missing
(no call came in between to write it). It runs as one more sink, on its own writer thread: the
application's call never waits for it. Each report is written once, across processes: it is
built in a temporary file and linked to its final name, which fails if another process got there
first; a process killed halfway leaves only a temporary file, and the next one writes the report.

Periods are calendar periods in UTC: a day, an ISO week (Monday to Sunday, named ``2026-W47``),
a month (``2026-11``).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from tokenmeter._models import SessionInfo, UsageRecord
from tokenmeter.sinks._files import ensure_private_dir

if TYPE_CHECKING:
    from tokenmeter.cli._source import Source

__all__ = [
    "GRACE",
    "PERIODS",
    "REPORTS_DIR",
    "PeriodicReports",
    "is_report_name",
    "period_name",
    "write_period_report",
]

logger = logging.getLogger("tokenmeter")

#: Setting value -> the period it reports on.
PERIODS = {"daily": "day", "weekly": "week", "monthly": "month"}
GRACE = timedelta(seconds=10)
#: The folder of ``directory`` the reports are written into.
REPORTS_DIR = "reports"
_REPORT_PREFIX, _REPORT_SUFFIX = "usage_report_", ".md"


def _report_name(period: str) -> str:
    """``usage_report_2026-W47.md`` for the period named ``2026-W47`` (``period_name``)."""
    return f"{_REPORT_PREFIX}{period}{_REPORT_SUFFIX}"


def is_report_name(name: str) -> bool:
    """Whether ``name`` is that of a report this module writes (``usage_report_2026-W47.md``)."""
    return (
        name.startswith(_REPORT_PREFIX)
        and name.endswith(_REPORT_SUFFIX)
        and len(name) > len(_REPORT_PREFIX) + len(_REPORT_SUFFIX)
    )


def period_name(period: str, start: datetime) -> str:
    """``2026-11-22``, ``2026-W47`` or ``2026-11`` for the period starting at ``start`` (UTC)."""
    if period == "day":
        return start.date().isoformat()
    if period == "week":
        year, week, _ = start.date().isocalendar()
        return f"{year}-W{week:02d}"
    return start.date().isoformat()[:7]  # a four-digit year, unlike strftime("%Y")


def _source(directory: Path) -> Path | None:
    for name in ("usage.db", "usage.jsonl"):
        if (directory / name).is_file():
            return directory / name
    return None


def write_period_report(directory: Path, period: str, now: datetime) -> Path | None:
    """Write the report of the last period closed before ``now`` unless it exists already.

    Returns the path written, or None when it was there (or there is no data to report on).
    The process that writes it also writes the report of the period of the last calls before
    it, if missing: no call came in the periods between to write it (a job run every few days
    left only empty daily reports).
    """
    from tokenmeter.cli._dates import period_bounds
    from tokenmeter.cli._source import Source, resolve_source

    since, until = period_bounds(period, previous=True, now=now)
    if _target(directory, period, since).exists():
        return None
    data = _source(directory)
    if data is None:
        return None
    # usage.db by its name: looking at its first bytes opened and closed a descriptor on it,
    # which drops the SQLite sink's locks in this process (``make_private``).
    source = Source(data, "sqlite") if data.name == "usage.db" else resolve_source(str(data))
    written = _write(directory, source, period, since, until)
    if written is not None:
        last = _last_call_before(source, since)
        if last is not None:
            start, end = period_bounds(period, previous=False, now=last)
            if not _target(directory, period, start).exists():
                earlier = _write(directory, source, period, start, end)
                if earlier is not None:
                    logger.info("tokenmeter: wrote %s", earlier)
    return written


def _target(directory: Path, period: str, start: datetime) -> Path:
    return directory / REPORTS_DIR / _report_name(period_name(period, start))


def _last_call_before(source: Source, instant: datetime) -> datetime | None:
    """The time of the newest call recorded before ``instant``, if any."""
    from tokenmeter.cli.reports._model import parse_dimension
    from tokenmeter.cli.reports._query import Query, run_query

    query = Query(groupings=((parse_dimension("model"),),), until=instant, calls_limit=1)
    last = next(iter(run_query(source, query).calls or ()), None)  # the newest, alone
    if last is None:
        return None
    return datetime.fromisoformat(last.timestamp.replace("Z", "+00:00"))


def _write(
    directory: Path, source: Source, period: str, since: datetime, until: datetime
) -> Path | None:
    """Write the report of [since, until) unless another process got there first."""
    from tokenmeter.cli.reports._alerts import alerts_near
    from tokenmeter.cli.reports._model import parse_dimension
    from tokenmeter.cli.reports._periodic import PERIODIC_GROUPINGS, render_usage_report
    from tokenmeter.cli.reports._query import Query, run_query

    name = period_name(period, since)
    folder = directory / REPORTS_DIR
    target = folder / _report_name(name)
    groupings = tuple(
        tuple(parse_dimension(spec) for spec in specs) for specs in PERIODIC_GROUPINGS
    )
    report = run_query(source, Query(groupings=groupings, since=since, until=until))
    text = render_usage_report(
        report, alerts_near(source.path), title=f"Usage report {name} ({period})"
    )
    ensure_private_dir(folder)  # tokenmeter's directories are their owner's only (SPEC §4)
    fd, temporary = tempfile.mkstemp(prefix=f".{_REPORT_PREFIX}{name}.", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.link(temporary, target)  # atomic, and refuses to replace another process's report
    except FileExistsError:
        return None
    finally:
        os.unlink(temporary)
    return target


class PeriodicReports:
    """A sink that writes the report of each closed period once (see the module docstring)."""

    def __init__(self, directory: Path, periods: Sequence[str]) -> None:
        self.directory = directory
        self.periods = [PERIODS.get(p, p) for p in periods]
        self._done: dict[str, str] = {}  # period -> name of the last one handled here
        self._failed = False

    def write(self, records: Sequence[UsageRecord]) -> None:
        if not records:
            return
        # Never past the clock: a record dated ahead of it (record(timestamp=...), a clock
        # stepped back since) would close periods not over yet, their reports never replaced.
        latest = min(max(record.timestamp for record in records), datetime.now(UTC))
        for period in self.periods:
            self._check(period, latest)

    def _check(self, period: str, latest: datetime) -> None:
        from tokenmeter.cli._dates import period_bounds

        try:
            start, _ = period_bounds(period, previous=False, now=latest)
            closed_start, _ = period_bounds(period, previous=True, now=latest)
        except OverflowError:  # a record of year 1 or 9999: no period before or after it
            return
        if latest - start < GRACE:
            return
        closed = period_name(period, closed_start)
        if self._done.get(period) == closed:
            return
        try:
            written = write_period_report(self.directory, period, latest)
        except Exception as exc:
            if not self._failed:
                logger.warning("tokenmeter: could not write the %s usage report: %r", period, exc)
            self._failed = True
            return
        self._done[period] = closed
        if written is not None:
            logger.info("tokenmeter: wrote %s", written)

    def write_sessions(self, sessions: Sequence[SessionInfo]) -> None:
        return None

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None
