"""Parse ``--since`` / ``--until`` values into UTC instants.

Accepted forms: a relative span back from now (``30m``, ``24h``, ``7d``, ``2w``), a date
(``2026-11-01``) or a date and time (``2026-11-01T10:00``, seconds and a ``Z``/offset optional).
Dates and times without an offset are in ``--tz`` (UTC by default). ``--since`` is inclusive.
``--until`` is inclusive too, at the precision given: a bare date means the END of that day,
so ``--since 2026-11-01 --until 2026-11-01`` is that whole day. Internally the upper bound is
kept exclusive, which makes both rules one comparison.
A value outside what ``datetime`` holds (``99999999d``, a date before year 1 in UTC) is a bad
date; an ``--until`` whose end falls after year 9999 means "no end".
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "calendar_start_before",
    "format_instant",
    "in_zone",
    "parse_since",
    "parse_tz",
    "parse_until",
    "period_bounds",
]

_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_ONE_MS = timedelta(milliseconds=1)
_LATEST = datetime.max.replace(tzinfo=UTC)


def _now() -> datetime:
    return datetime.now(UTC)


def _parse(value: str, now: datetime | None, tz: tzinfo = UTC) -> tuple[datetime, bool]:
    """Return (instant, is_date_only); raise ValueError with a message fit for the user."""
    text = value.strip()
    relative = _RELATIVE.match(text.lower())
    if relative:
        try:  # int() refuses over 4,300 digits (ValueError): as far back as past year 1
            amount, unit = int(relative.group(1)), relative.group(2)
            return (now or _now()) - timedelta(**{_UNITS[unit]: amount}), False
        except (OverflowError, ValueError):
            raise ValueError(f"bad date {value!r}: that is before year 1") from None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"bad date {value!r}: use 7d, 24h, 30m, 2026-11-01 or 2026-11-01T10:00 (UTC)"
        ) from None
    try:
        parsed = (parsed.replace(tzinfo=tz) if parsed.tzinfo is None else parsed).astimezone(UTC)
    except OverflowError:
        raise ValueError(f"bad date {value!r}: outside years 1 to 9999 in UTC") from None
    return parsed, bool(_DATE_ONLY.match(text))


def parse_since(value: str, *, now: datetime | None = None, tz: tzinfo = UTC) -> datetime:
    """Inclusive lower bound."""
    return _parse(value, now, tz)[0]


def parse_until(value: str, *, now: datetime | None = None, tz: tzinfo = UTC) -> datetime:
    """EXCLUSIVE upper bound: the end of the day for a bare date, else the instant + 1 ms."""
    instant, date_only = _parse(value, now, tz)
    try:
        if date_only:  # the next midnight in ``tz`` (23 or 25 hours away on a DST change)
            local = in_zone(instant, tz)  # a date read in ``tz`` always has a time there
            if local is None:
                return _LATEST
            return _midnight(local.date() + timedelta(days=1), tz)
        return instant + _ONE_MS
    except (OverflowError, ValueError):  # the end of 9999-12-31: as late as datetime goes
        return _LATEST


def parse_tz(name: str | None) -> tzinfo:
    """``--tz``: an IANA zone name (``Europe/Paris``), ``UTC``, or nothing (UTC)."""
    if name is None or name.strip().upper() in ("UTC", "Z", ""):
        return UTC
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r}: use an IANA name such as Europe/Paris"
        ) from None


def _midnight(day: date, tz: tzinfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(UTC)


def period_bounds(
    period: str, *, previous: bool, tz: tzinfo = UTC, now: datetime | None = None
) -> tuple[datetime, datetime]:
    """[start, end) of the calendar day / week (Monday first) / month holding ``now`` in ``tz``,
    or with ``previous`` of the one before it (the last closed one)."""
    today = (now or _now()).astimezone(tz).date()
    if period == "day":
        start = today - timedelta(days=1 if previous else 0)
        end = start + timedelta(days=1)
    elif period == "week":
        start = today - timedelta(days=today.weekday() + (7 if previous else 0))
        end = start + timedelta(days=7)
    elif period == "month":
        start = today.replace(day=1)
        if previous:
            start = (start - timedelta(days=1)).replace(day=1)
        end = (start + timedelta(days=32)).replace(day=1)
    else:
        raise ValueError(f"unknown period {period!r}: use day, week or month")
    return _midnight(start, tz), _midnight(end, tz)


def calendar_start_before(
    since: datetime, until: datetime, tz: tzinfo, period: str | None = None
) -> datetime | None:
    """Where the calendar period before ``[since, until)`` starts, when that window is whole
    days in ``tz`` (bare dates, a ``--period``): as many days before (the day, the week
    before), or for a ``month`` period the month before. Measured in hours instead, the day
    after the clocks went back was compared with a day that began at 01:00, and March with
    January 29 to February 28. None when the window is not whole days (it is compared with
    the same length of time), or where a date would be out of years 1 to 9999."""
    local_since, local_until = in_zone(since, tz), in_zone(until, tz)
    if local_since is None or local_until is None:  # no date in ``tz``, before year 1 or after 9999
        return None
    try:  # near year 1 or 9999 a zone's dates run past what ``datetime`` holds
        first, end = local_since.date(), local_until.date()
        if _midnight(first, tz) != since or _midnight(end, tz) != until:
            return None
        if period == "month":
            return _midnight((first - timedelta(days=1)).replace(day=1), tz)
        return _midnight(first - (end - first), tz)
    except (OverflowError, ValueError):
        return None


def in_zone(instant: datetime, tz: tzinfo) -> datetime | None:
    """``instant`` as the clocks of ``tz`` read it, or None where that is outside years 1 to
    9999: a call stored at ``0001-01-01T00:00:00Z`` (Go's zero time) was still year 0 in New
    York, and the end of 9999-12-31 in UTC is year 10000 in Paris. Every conversion of a stored
    timestamp or a ``--since`` / ``--until`` bound to the report's zone goes through here, so
    each says what it shows instead of ending in an OverflowError traceback."""
    try:
        return instant.astimezone(tz)
    except OverflowError:
        return None


def format_instant(instant: datetime) -> str:
    """The record timestamp format (``2026-11-22T10:00:00.123Z``), which sorts as text.

    ``isoformat`` pads the year to four digits (``strftime("%Y")`` does not on glibc, and
    ``999-...`` would sort after ``2026-...``).
    """
    utc = instant.astimezone(UTC).replace(tzinfo=None)
    return utc.isoformat(timespec="milliseconds") + "Z"
