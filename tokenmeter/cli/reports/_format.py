"""Number formatting for the CLI (from ``tokenmeter._format``), and an exact JSON writer."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from tokenmeter._format import fmt_count, fmt_share, fmt_usd

__all__ = ["dumps_exact", "fmt_int", "fmt_share", "fmt_usd", "round_share"]

_SHARE_PLACES = Decimal("0.000001")


fmt_int = fmt_count


def round_share(value: Decimal | None) -> Decimal | None:
    return None if value is None else value.quantize(_SHARE_PLACES)


def dumps_exact(value: Any, indent: int = 2) -> str:
    """JSON text in which a Decimal is written as the exact number it is (never via float)."""
    parts: list[str] = []
    _write(value, parts, indent, 0)
    return "".join(parts)


def _write(value: Any, out: list[str], indent: int, level: int) -> None:
    if isinstance(value, Decimal):
        text = format(value, "f")
        out.append(text if "." not in text else text.rstrip("0").rstrip(".") or "0")
    elif isinstance(value, dict):
        if not value:
            out.append("{}")
            return
        pad = "\n" + " " * (indent * (level + 1))
        out.append("{")
        for i, (key, item) in enumerate(value.items()):
            out.append(("," if i else "") + pad + json.dumps(str(key)) + ": ")
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
