"""A record as it waits behind a backlog: one flat tuple of plain values (see ``_pipeline``).

The garbage collector stops tracking a tuple of plain values at its first collection, so packed
records never pile up in its oldest generation however long they wait. A tuple holding a dict
is never untracked, and one holding another tuple only after the inner one, which one collection
does not always manage: the record's mappings are laid out flat.

Layout: the record's fields in the model's order without ``MAPPINGS`` (``PLAIN_FIELDS``), the
sizes of ``MAPPINGS`` (-1: None), then each mapping's keys followed by its values.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any

from tokenmeter._models import UsageRecord, trusted

__all__ = ["MAPPINGS", "PLAIN_FIELDS", "Packed", "as_dict", "pack", "unpack"]

Packed = tuple[Any, ...]

_FIELDS = tuple(UsageRecord.model_fields)
#: The record's fields whose values are dicts (a dict holding a dict is always tracked).
MAPPINGS = ("cost_breakdown", "tags", "modalities", "tool_requests")
PLAIN_FIELDS = tuple(name for name in _FIELDS if name not in MAPPINGS)
_plain_values = itemgetter(*PLAIN_FIELDS)
_mapping_values = itemgetter(*MAPPINGS)
_PLAIN = len(PLAIN_FIELDS)
#: Where each of ``MAPPINGS`` goes back among the plain values (ascending).
_SLOTS = tuple(sorted(_FIELDS.index(name) for name in MAPPINGS))
assert [_FIELDS[slot] for slot in _SLOTS] == list(MAPPINGS)
#: Unpacked tags, shared by the records that have the same ones (a session's records): the memo
#: is only for text keys and values, whose equality is identity of content (a Decimal is equal
#: to another with a different exponent; True to 1).
_TAGS_MEMO: dict[tuple[Any, ...], dict[str, str]] = {}
_MEMO_SIZE = 1_024


def pack(record: UsageRecord) -> Packed | UsageRecord:
    """The record as one tuple of plain values (a record not built by us waits as it is)."""
    values = record.__dict__
    try:
        breakdown, tags, modalities, tools = _mapping_values(values)
        if breakdown is None:
            breakdown, costs = {}, -1
        else:
            costs = len(breakdown)
        return (
            *_plain_values(values),
            costs,
            len(tags),
            len(modalities),
            len(tools),
            *breakdown,
            *breakdown.values(),
            *tags,
            *tags.values(),
            *modalities,
            *modalities.values(),
            *tools,
            *tools.values(),
        )
    except (KeyError, AttributeError, TypeError):
        return record


def flat_mappings(item: Packed) -> tuple[Packed | None, Packed, Packed, Packed]:
    """Each of ``MAPPINGS`` in a packed record as one tuple of its keys then its values (the
    breakdown None when the record has none)."""
    costs, tags, modalities, tools = item[_PLAIN : _PLAIN + 4]
    at = _PLAIN + 4
    end = at + 2 * costs if costs > 0 else at
    breakdown = item[at:end] if costs >= 0 else None
    at, end = end, end + 2 * tags
    tag_items = item[at:end] if tags else ()
    at, end = end, end + 2 * modalities
    modality_items = item[at:end] if modalities else ()
    tool_items = item[end : end + 2 * tools] if tools else ()
    return breakdown, tag_items, modality_items, tool_items


def as_dict(flat: Packed) -> dict[Any, Any]:
    """A mapping laid out flat (its keys then its values) as a dict."""
    if not flat:
        return {}
    half = len(flat) // 2
    return dict(zip(flat[:half], flat[half:], strict=True))


def _tags(flat: Packed) -> dict[Any, Any]:
    tags = _TAGS_MEMO.get(flat)
    if tags is None:
        tags = as_dict(flat)
        if all(type(part) is str for part in flat):
            if len(_TAGS_MEMO) >= _MEMO_SIZE:
                _TAGS_MEMO.clear()
            _TAGS_MEMO[flat] = tags
    return tags


def unpack(item: Any) -> Any:
    """A record as its sinks take it (items that were not packed are returned as they are)."""
    if type(item) is not tuple:
        return item
    breakdown, tags, modalities, tools = flat_mappings(item)
    values = list(item[:_PLAIN])
    values.insert(_SLOTS[0], None if breakdown is None else as_dict(breakdown))
    values.insert(_SLOTS[1], _tags(tags) if tags else {})
    values.insert(_SLOTS[2], as_dict(modalities) if modalities else {})
    values.insert(_SLOTS[3], as_dict(tools) if tools else {})
    record: UsageRecord = trusted(UsageRecord, dict(zip(_FIELDS, values, strict=True)))
    return record
