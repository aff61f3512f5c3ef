"""How money and counts are written for people: one place, used by the journal and the CLI.

A single call often costs a fraction of a cent, so a fixed number of decimals either hides it
($0.000000 for a priced embedding) or pads a total with noise. Amounts under a dollar keep three
significant figures (``$0.000143``, ``$0.0325``), larger ones are shown to the cent. Machine
formats (JSON, CSV, the record itself) carry the exact value instead; see ``exact_usd``.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal

from tokenmeter._totals import normalise_usd

__all__ = [
    "exact_usd",
    "fmt_count",
    "fmt_per_call",
    "fmt_ratio",
    "fmt_share",
    "fmt_usd",
    "markdown_text",
    "one_line",
]

_CENT = Decimal("0.01")
_SIGNIFICANT = 3


def fmt_usd(value: Decimal | None, *, na: str = "n/a") -> str:
    """``$1,234.57``, ``$0.0325``, ``$0.000143``; ``na`` when the amount is unknown (unpriced)."""
    if value is None:
        return na
    sign = "-" if value < 0 else ""
    amount = abs(value)
    if amount >= 1 or amount == 0:
        return f"{sign}${amount.quantize(_CENT, ROUND_HALF_UP):,.2f}"
    places = _SIGNIFICANT - 1 - amount.adjusted()  # adjusted(): exponent of the first digit
    rounded = amount.quantize(Decimal(1).scaleb(-places), ROUND_HALF_UP)
    if rounded >= 1:  # 0.9996 rounds up to a dollar
        return f"{sign}${rounded.quantize(_CENT):,.2f}"
    text = f"{rounded:f}".rstrip("0")
    whole, _, decimals = text.partition(".")
    return f"{sign}${whole}.{decimals.ljust(2, '0')}"


def exact_usd(value: Decimal | None) -> str:
    """The exact amount as plain decimal text, without trailing zeros ("" when unknown)."""
    return "" if value is None else format(normalise_usd(value), "f")


def fmt_count(value: int) -> str:
    return f"{value:,}"


def fmt_share(value: Decimal | float | None) -> str:
    """A fraction as a percentage with one decimal (``""`` when there is nothing to show)."""
    return "" if value is None else f"{value * 100:.1f}%"


def fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.2f}"


def fmt_per_call(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.1f}"


#: Code points (inclusive ranges) that recorded text shows as U+FFFD wherever people read it (the
#: CLI, the journal), rather than hand to a reader to obey or to hide: the control characters
#: but tab and newline (``ESC ]0;...`` retitles the terminal that prints them, ``ESC [2J``
#: clears it), the bidirectional marks, embeddings, overrides and isolates (they reorder the
#: text after them: "Trojan Source", CVE-2021-42574), the characters that print as nothing (a
#: soft hyphen, zero-width spaces and joiners, the BOM: ``gpt\u200b-4o`` reads ``gpt-4o``) and
#: lone surrogates (which no UTF-8 file can hold).
SHOWN_AS_REPLACEMENT = (
    (0x00, 0x08),
    (0x0B, 0x1F),
    (0x7F, 0x9F),
    (0xAD, 0xAD),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x2064),
    (0x2066, 0x2069),
    (0xFEFF, 0xFEFF),
    (0xD800, 0xDFFF),
)


def char_class(ranges: tuple[tuple[int, int], ...]) -> str:
    """A regular expression's character class of ``ranges``."""
    return "[" + "".join(f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in ranges) + "]"


#: Tab, newline and the Unicode line and paragraph separators (U+2028, U+2029: a line end to
#: ``str.splitlines()`` and to many editors): with ``SHOWN_AS_REPLACEMENT``, what recorded text
#: must not hold inside one line (a carriage return, a vertical tab, a form feed and NEL are in
#: that already).
_BREAKS = ((0x09, 0x0A), (0x2028, 0x2029))
_NOT_IN_LINE = re.compile(char_class((*_BREAKS, *SHOWN_AS_REPLACEMENT)))


def one_line(text: str) -> str:
    """Recorded text for a table cell or a field of a line (the CLI's, a log line, the workflow
    state file's): as ``SHOWN_AS_REPLACEMENT`` says, and a tab or a line break replaced too (a
    model named ``x\\nTOTAL ... $0.00`` would start a forged row). One character for one."""
    return _NOT_IN_LINE.sub("\ufffd", text)


#: Markdown that recorded text (a model, session or tag name a server or a caller chose) must not
#: make: a cell break (``|``), HTML (``<``), or a link or image (``[``/``]``: a viewer would load
#: ``![](https://...)`` from its server on opening the journal); and what ``SHOWN_AS_REPLACEMENT``
#: holds, with a line break and a tab (a new row, or a column to some viewers), as in the CLI's
#: other formats (docs/cli.md).
_MARKDOWN_ESCAPES = str.maketrans(
    {
        **{chr(c): "\ufffd" for a, b in (*_BREAKS, *SHOWN_AS_REPLACEMENT) for c in range(a, b + 1)},
        **{"\\": "\\\\", "|": "\\|", "<": "&lt;", "[": "\\[", "]": "\\]"},
    }
)


def markdown_text(text: str) -> str:
    """Recorded text made safe for one markdown table cell or list line."""
    return text.translate(_MARKDOWN_ESCAPES)
