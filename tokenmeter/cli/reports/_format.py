"""Number formatting for the CLI (from ``tokenmeter._format``), and an exact JSON writer."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from decimal import Decimal
from json.encoder import encode_basestring_ascii
from typing import Any

from tokenmeter._format import fmt_count, fmt_share, fmt_usd

__all__ = ["dumps_exact", "exact_pieces", "fmt_int", "fmt_share", "fmt_usd", "round_share"]

_SHARE_PLACES = Decimal("0.000001")


fmt_int = fmt_count


def round_share(value: Decimal | None) -> Decimal | None:
    return None if value is None else value.quantize(_SHARE_PLACES)


def dumps_exact(value: Any, indent: int = 2, level: int = 0) -> str:
    """JSON text in which a Decimal is written as the exact number it is (never via float);
    ``level``: how deep ``value`` is nested (its lines are indented so much)."""
    parts: list[str] = []
    _write(value, parts, indent, level)
    return "".join(parts)


def exact_pieces(document: dict[str, Any], indent: int = 2) -> Iterator[str]:
    """``dumps_exact(document)`` in pieces, where a member that is an iterator (not a list) is
    written as a list an item at a time: a document listing a million calls is never whole in
    memory."""
    pad = "\n" + " " * indent
    yield "{"
    for i, (key, value) in enumerate(document.items()):
        yield ("," if i else "") + pad + json.dumps(str(key)) + ": "
        if not isinstance(value, Iterator):
            yield dumps_exact(value, indent, 1)
            continue
        opened = False
        for item in value:
            yield ("," if opened else "[") + pad + " " * indent + dumps_exact(item, indent, 2)
            opened = True
        yield pad + "]" if opened else "[]"
    yield "\n}" if document else "}"


#: The scalars a report holds, written as ``json.dumps`` writes them, without its dispatch (a
#: detailed list of a million calls writes twenty million of them).
_SCALARS: dict[type, Callable[[Any], str]] = {
    str: encode_basestring_ascii,
    int: int.__repr__,
    bool: lambda value: "true" if value else "false",
    type(None): lambda _: "null",
}


def _write(value: Any, out: list[str], indent: int, level: int) -> None:
    scalar = _SCALARS.get(type(value))
    if scalar is not None:
        out.append(scalar(value))
    elif isinstance(value, Decimal):
        text = format(value, "f")
        out.append(text if "." not in text else text.rstrip("0").rstrip(".") or "0")
    elif isinstance(value, dict):
        if not value:
            out.append("{}")
            return
        pad = "\n" + " " * (indent * (level + 1))
        out.append("{")
        for i, (key, item) in enumerate(value.items()):
            out.append(("," if i else "") + pad + encode_basestring_ascii(str(key)) + ": ")
            _write(item, out, indent, level + 1)
        out.append("\n" + " " * (indent * level) + "}")
    elif isinstance(value, list | tuple):
        if not value:
            out.append("[]")
            return
        pad = "\n" + " " * (indent * (level + 1))
        out.append("[")
        for i, item in enumerate(value):
            out.append(("," if i else "") + pad)
            _write(item, out, indent, level + 1)
        out.append("\n" + " " * (indent * level) + "]")
    else:
        out.append(json.dumps(value))
