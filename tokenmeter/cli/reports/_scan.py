"""The JSONL read behind a report: each line reduced to the few fields totals are made of.

A report over a JSONL file spends its time reading lines, so this is the one place tuned for it.
A line as the JSONL sink writes it (compact JSON, keys in the record's order, fields of the right
types) is recognised by one compiled pattern (``_LINE``) that states, character by character, the
JSON grammar of every field and the range checks of ``_validate.check_record``: counts are digit
strings below ``2**63``, costs and latencies finite and in range, text fields JSON strings or
null, tags an object of strings, the timestamp in the record format. From a match only the fields
a report reads are decoded; the rest (``id``, ``error``, the cost breakdown ...) are checked by the
pattern and never built into objects.

Any other line (a different key order, extra keys from a newer writer, whitespace, an escape the
pattern does not spell out, a wrong type, a torn line) takes the general path: full JSON parse and
``check_record``. The pattern only ever accepts lines that path accepts and decodes them to the
same values (``tests/cli/test_scan.py`` checks both on every field's edge cases), so a bad line is
skipped and counted either way, and a line longer than ``MAX_LINE_BYTES`` is read past in small
pieces without being held.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

from tokenmeter.cli._source import RecentIds, lines_of, parse_record
from tokenmeter.cli._validate import COUNT_FIELDS

__all__ = ["Counts", "JsonlScan", "ScanRecord"]

#: The fields of a line a report reads, as ``check_record`` leaves them: timestamp,
#: model_provider, model_name, session_id, session_name, status, estimated, tags, latency_ms.
ScanRecord = dict[str, Any]
#: The six token counts in ``COUNT_FIELDS`` order.
Counts = tuple[int, int, int, int, int, int]

_STR = r'"[^"\\\x00-\x1f]*(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})[^"\\\x00-\x1f]*)*"'
_OPT_STR = rf"(?:{_STR}|null)"
#: A string a report reads, captured without its quotes: one with an escape takes the general
#: path (rare: names are plain text), so a match needs no decoding.
_PLAIN = r'"([^"\\\x00-\x1f]*)"'
_OPT_PLAIN = rf"(?:{_PLAIN}|null)"
#: At most 18 digits: below 2**63 - 1 (``MAX_COUNT``) without a range check.
_COUNT = r"(?:0|[1-9]\d{0,17})"
#: Magnitude below 10**9 (``MAX_COST_USD``); no positive exponent: finite without a check.
_MONEY = r"-?(?:0|[1-9]\d{0,8})(?:\.\d+)?(?:[eE]-\d{1,3})?"
#: A cost as the sink writes it: an integer, or a float's shortest repr (no trailing zero in
#: the fraction, one digit before an exponent). Such text with at most 15 significant digits
#: (``_SHORT`` characters) reads into the same Decimal, digit for digit, as ``check_record``'s
#: ``Decimal(repr(float(text)))``; a longer one goes through the float.
_COST = r"-?(?:0|[1-9]\d{0,8})\.(?:0|\d*[1-9])|0|-?[1-9]\d{0,8}|-?[1-9](?:\.\d*[1-9])?e-\d{2,3}"
_SHORT = 16
#: Below 10**12 ms (``MAX_LATENCY_MS``), not negative.
_LATENCY = r"(?:0|[1-9]\d{0,11})(?:\.\d+)?(?:[eE]-\d{1,3})?"


def _object(value: str) -> str:
    """A flat JSON object of string keys and ``value``s."""
    return rf"\{{(?:{_STR}:{value}(?:,{_STR}:{value})*)?\}}"


_LINE = re.compile(
    r'\{"timestamp":"((\d{4}-\d\d-\d\d)T(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d\.\d{3}Z)"'
    rf',"model_provider":{_PLAIN},"model_name":{_PLAIN}'
    rf',"input_tokens":({_COUNT}),"output_tokens":({_COUNT}),"total_tokens":({_COUNT})'
    rf',"estimated_cost_usd":(?:({_COST})|null),"id":({_STR}|null)'
    rf',"request_model":{_OPT_PLAIN},"operation":{_OPT_STR}'
    rf',"cache_read_tokens":({_COUNT}),"cache_write_tokens":({_COUNT})'
    rf',"reasoning_tokens":({_COUNT})'
    rf',"cost_breakdown":(?:null|{_object(f"(?:{_MONEY}|null)")}),"price_source":{_OPT_STR}'
    rf',"session_id":{_OPT_PLAIN},"session_name":{_OPT_PLAIN},"tags":({_object(_STR)})'
    rf',"latency_ms":(?:({_LATENCY})|null),"streamed":(?:true|false),"status":{_OPT_PLAIN}'
    rf',"error":{_OPT_STR},"request_id":{_OPT_STR},"estimated":(true|false)'
    rf'(?:,"modalities":{_object(_COUNT)},"tool_requests":{_object(_COUNT)})?\}}\n?'
).fullmatch

_MAX_DATES = 100_000


def _money(text: str) -> Decimal:
    """What ``check_record`` makes of a JSON number the pattern matched as a cost."""
    if len(text) <= _SHORT:
        return Decimal(text)
    return Decimal(repr(float(text)))


class _Dates:
    """Whether ``YYYY-MM-DD`` is a calendar date, remembered (a file spans few days)."""

    def __init__(self) -> None:
        self.known: dict[str, bool] = {}

    def valid(self, day: str) -> bool:
        found = self.known.get(day)
        if found is None:
            try:
                date.fromisoformat(day)
                found = True
            except ValueError:
                found = False
            if len(self.known) < _MAX_DATES:
                self.known[day] = found
        return found


class JsonlScan:
    """Iterate ``(record, counts, cost)`` over the records of a JSONL file; ``skipped`` counts
    the lines that are not records. ``tags`` says whether the records need their tags (a tag
    grouping or filter): they are decoded only then. ``start`` and ``end`` read only the lines
    between those offsets (each where a line begins). A record whose id ``window`` has seen is
    one written twice: not yielded, counted in ``duplicates``.
    """

    def __init__(
        self,
        path: Path,
        *,
        tags: bool,
        on_progress: Callable[[int, int], None] | None = None,
        start: int = 0,
        end: int | None = None,
        window: RecentIds | None = None,
    ) -> None:
        self.path = path
        self.tags = tags
        self.on_progress = on_progress
        self.start = start
        self.end = end
        self.window = RecentIds() if window is None else window
        self.skipped = 0
        self.duplicates = 0

    def __iter__(self) -> Iterator[tuple[ScanRecord, Counts, Decimal | None]]:
        need_tags = self.tags
        dates = _Dates()
        valid_date = dates.valid
        known_date = dates.known.get
        match_line = _LINE
        seen = self.window.seen
        for line in lines_of(self, self.start, self.end):
            try:
                found = match_line(line.decode())
            except UnicodeDecodeError:
                found = None
            if found is not None:
                (
                    timestamp,
                    day,
                    provider,
                    model,
                    inp,
                    out,
                    tot,
                    cost,
                    record_id,
                    request_model,
                    cache_read,
                    cache_write,
                    reasoning,
                    session_id,
                    session_name,
                    tags,
                    latency,
                    status,
                    estimated,
                ) = found.groups()
                input_count, output_count, total_count = int(inp), int(out), int(tot)
                # A total that is not input + output: refused, as check_record refuses it.
                if (
                    known_date(day) or valid_date(day)
                ) and input_count + output_count == total_count:
                    if seen(
                        None
                        if record_id == "null"
                        else record_id[1:-1]
                        if "\\" not in record_id
                        else json.loads(record_id)
                    ):
                        self.duplicates += 1
                        continue
                    record = {
                        "timestamp": timestamp,
                        "model_provider": provider,
                        "model_name": model,
                        "request_model": request_model,
                        "session_id": session_id,
                        "session_name": session_name,
                        "status": status,
                        "estimated": estimated == "true",
                        "tags": json.loads(tags) if need_tags and tags != "{}" else {},
                        "latency_ms": None if latency is None else float(latency),
                    }
                    counts = (
                        input_count,
                        output_count,
                        int(cache_read),
                        int(cache_write),
                        int(reasoning),
                        total_count,
                    )
                    yield record, counts, None if cost is None else _money(cost)
                    continue
                self.skipped += 1  # the pattern's shape, but not a calendar date or a sum
                continue
            checked = parse_record(line)
            if checked is None:
                if line.strip():
                    self.skipped += 1
                continue
            if seen(checked.get("id")):
                self.duplicates += 1
                continue
            yield (
                checked,
                tuple([checked[name] for name in COUNT_FIELDS]),
                checked.get("estimated_cost_usd"),
            )
