"""How money and counts are written for people: one place, used by the journal and the CLI.

A single call often costs a fraction of a cent, so a fixed number of decimals either hides it
($0.000000 for a priced embedding) or pads a total with noise. Amounts under a dollar keep three
significant figures (``$0.000143``, ``$0.0325``), larger ones are shown to the cent. Machine
formats (JSON, CSV, the record itself) carry the exact value instead; see ``exact_usd``.
"""

from __future__ import annotations

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


#: Markdown that recorded text (a model, session or tag name a server or a caller chose) must not
#: make: a cell break (``|``), a new line, HTML (``<``), or a link or image (``[``/``]``: a
#: viewer would load ``![](https://...)`` from its server on opening the journal). And what a
#: reader of the file would obey rather than see, shown as U+FFFD as the CLI does: control
#: characters (``ESC ]0;...`` retitles the terminal that prints the file, ``ESC [2J`` clears it),
#: bidirectional overrides (they reorder the text after them) and lone surrogates (which no
#: UTF-8 file can hold).
_SHOWN_AS_REPLACEMENT = (
    *range(0x00, 0x09),
    *range(0x0B, 0x0D),
    *range(0x0E, 0x20),
    *range(0x7F, 0xA0),
    *range(0x202A, 0x202F),
    *range(0x2066, 0x206A),
    *range(0xD800, 0xE000),
)
_MARKDOWN_ESCAPES = str.maketrans(
    {
        **dict.fromkeys(map(chr, _SHOWN_AS_REPLACEMENT), "\ufffd"),
        **{"\\": "\\\\", "|": "\\|", "<": "&lt;", "[": "\\[", "]": "\\]", "\n": " ", "\r": " "},
    }
)


def markdown_text(text: str) -> str:
    """Recorded text made safe for one markdown table cell or list line."""
    return text.translate(_MARKDOWN_ESCAPES)
