"""A record as it waits behind a backlog: one flat tuple of plain values (see ``_pipeline``).

The garbage collector stops tracking a tuple of plain values at its first collection, so packed
records never pile up in its oldest generation however long they wait. A tuple holding a dict
(or another tuple) is untracked only after what it holds, which one collection does not always
manage: the record's mappings are laid out flat.

Layout: the record's fields in the model's order without ``MAPPINGS`` (``PLAIN_FIELDS``), then
for each of ``MAPPINGS`` its size (-1: None), its keys and its values.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any

from tokenmeter._models import UsageRecord, trusted

__all__ = ["MAPPINGS", "PLAIN_FIELDS", "Packed", "mappings", "pack", "unpack"]

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
        costs = (-1,) if breakdown is None else (len(breakdown), *breakdown, *breakdown.values())
        return (
            *_plain_values(values),
            *costs,
            *(len(tags), *tags, *tags.values()),
            *(len(modalities), *modalities, *modalities.values()),
            *(len(tools), *tools, *tools.values()),
        )
    except (KeyError, AttributeError, TypeError):
        return record


def _tags(flat: tuple[Any, ...]) -> dict[Any, Any]:
    tags = _TAGS_MEMO.get(flat)
    if tags is None:
        half = len(flat) // 2
        tags = dict(zip(flat[:half], flat[half:], strict=True))
        if all(type(part) is str for part in flat):
            if len(_TAGS_MEMO) >= _MEMO_SIZE:
                _TAGS_MEMO.clear()
            _TAGS_MEMO[flat] = tags
    return tags


def mappings(item: Packed) -> list[Any]:
    """The values of ``MAPPINGS`` in a packed record, in that order (a shared dict for tags seen
    before: read them, never change them)."""
    found: list[Any] = []
    at = _PLAIN
    for name in MAPPINGS:
        size = item[at]
        if size <= 0:
            found.append(None if size < 0 else {})
            at += 1
            continue
        end = at + 1 + 2 * size
        if name == "tags":
            found.append(_tags(item[at + 1 : end]))
        else:
            keys, parts = item[at + 1 : at + 1 + size], item[at + 1 + size : end]
            found.append(dict(zip(keys, parts, strict=True)))
        at = end
    return found


def unpack(item: Any) -> Any:
    """A record as its sinks take it (items that were not packed are returned as they are)."""
    if type(item) is not tuple:
        return item
    values = list(item[:_PLAIN])
    for slot, mapping in zip(_SLOTS, mappings(item), strict=True):
        values.insert(slot, mapping)
    record: UsageRecord = trusted(UsageRecord, dict(zip(_FIELDS, values, strict=True)))
    return record
