"""Totals of a set of usage records: the one place where calls, tokens and costs are summed.

A live session (``_sessions.SessionSummary``), the markdown journal (``sinks.markdown``) and every
CLI report (``cli.reports``) add records up with this class, so a figure such as "cost per 1K
tokens" or "unpriced calls" means the same thing wherever it is shown. Costs are exact Decimals;
an unpriced call adds its tokens but never a fake $0 (``cost`` is None while no call is priced).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import (
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DivisionByZero,
    InvalidOperation,
    Overflow,
)
from typing import Any, Protocol

__all__ = [
    "COUNT_NAMES",
    "DECIMAL_NAMES",
    "MAX_SESSION_MODELS",
    "OTHER_MODELS",
    "PICO_PER_USD",
    "Totals",
    "known_cost",
    "normalise_usd",
    "note_model",
    "output_cost",
    "sql_cost",
    "to_pico_usd_precision",
]

_ZERO = Decimal(0)
#: The unit of the SQL sinks' integer ``cost_pusd`` column.
PICO_PER_USD = 10**12
_PICO_PER_USD = Decimal(PICO_PER_USD)
#: The finest amount kept where a figure is not a sum of costs (a budget, an average written
#: out): a pico-dollar, the finest cost the SQL sinks store.
_PICO_USD = Decimal("1E-12")

#: The integer fields, in the order ``from_counts`` / ``from_sql`` take them.
COUNT_NAMES = (
    "calls",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "total_tokens",
    "priced_calls",
    "priced_tokens",
    "error_calls",
    "blocked_calls",
    "estimated_calls",
    "unpriced_calls",
)
DECIMAL_NAMES = ("cost_usd", "output_cost_usd", "split_cost_usd")
#: Where what is kept per model (a session's summary and journal file, the journal's summary)
#: sums the calls of the models past its bound: a server naming a new model in every answer
#: cannot grow it without end.
OTHER_MODELS = "(other models)"
#: Models a session keeps apart (its summary's ``by_model``, its journal file's model list).
MAX_SESSION_MODELS = 100


def note_model(models: list[str], model: str) -> None:
    """Add ``model`` to a session's list of models, first seen first (its journal file's
    "Provider/Model" line); past ``MAX_SESSION_MODELS`` the others show as ``OTHER_MODELS``."""
    if model not in models:
        if len(models) >= MAX_SESSION_MODELS:
            model = OTHER_MODELS
        if model not in models:
            models.append(model)


#: The parts of a call that had no image, audio or video and used no server tool.
_TEXT_ONLY = frozenset({"input", "cache_read", "cache_write", "output"})
_ONE = Decimal(1)
_TEN = Decimal(10)
#: Money is computed in Python's default context whatever the calling thread set (an
#: application's ``getcontext().prec = 4`` or trapped Inexact must not round or break a cost,
#: a price or a session's running total).
USD_CONTEXT = Context(
    prec=28,
    rounding=ROUND_HALF_EVEN,
    Emin=-999_999,
    Emax=999_999,
    capitals=1,
    clamp=0,
    traps=[InvalidOperation, DivisionByZero, Overflow],
)
#: The figures made from the sums are worked out in it too (read on the caller's thread).
_add = USD_CONTEXT.add
_divide = USD_CONTEXT.divide


def normalise_usd(value: Decimal) -> Decimal:
    """The same amount without trailing zeros or an exponent: ``0.0300000`` -> ``0.03``.

    Cheap enough for the hot path: ``normalize`` only writes an exponent for a whole number of
    tens (``1E+1``), which is checked only above 10.
    """
    plain = value.normalize(USD_CONTEXT)
    if plain >= _TEN and plain == plain.to_integral_value(context=USD_CONTEXT):
        return plain.quantize(_ONE, context=USD_CONTEXT)
    return plain


def to_pico_usd_precision(value: Decimal) -> Decimal:
    """``value`` rounded half-even to a pico-dollar, normalised: an average of $0.00007 over 3
    calls is ``0.000023333333``, not the 32 digits of the exact quotient."""
    return normalise_usd(value.quantize(_PICO_USD, context=USD_CONTEXT))


def output_cost(breakdown: Mapping[str, Decimal]) -> Decimal:
    """The output part of a cost breakdown: the ``output`` key and its per-modality parts
    (``output_image``, ``output_audio``...). Tool fees and passes are neither input nor output."""
    if breakdown.keys() == _TEXT_ONLY:  # nearly every call: one output part
        return breakdown["output"]
    total = _ZERO
    for key, value in breakdown.items():  # on the caller's thread (session totals): a plain loop
        if key[:6] == "output":
            total = _add(total, value)
    return total


class _RecordLike(Protocol):
    @property
    def input_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def cache_read_tokens(self) -> int: ...
    @property
    def cache_write_tokens(self) -> int: ...
    @property
    def reasoning_tokens(self) -> int: ...
    @property
    def total_tokens(self) -> int: ...
    @property
    def estimated_cost_usd(self) -> Decimal | None: ...
    @property
    def cost_breakdown(self) -> Mapping[str, Decimal] | None: ...
    @property
    def status(self) -> str: ...
    @property
    def estimated(self) -> bool: ...


#: What ``add_record`` reads of a record: its token counts (input ... total), then the rest.
_RECORD_FIELDS = (*COUNT_NAMES[1:7], "estimated_cost_usd", "cost_breakdown", "status", "estimated")


def known_cost(cost_usd: Decimal, priced_calls: int, unpriced_calls: int) -> Decimal | None:
    """``Totals.cost`` of these sums (for a reader that ranks groups before making Totals):
    unknown only when some call has no price and none has one. A call a budget blocked is
    neither (it was never sent: it cost nothing), so calls that are all blocked cost $0."""
    return normalise_usd(cost_usd) if priced_calls or not unpriced_calls else None


def sql_cost(whole_usd: Any, pico_usd: Any) -> Decimal:
    """The cost of ``totals_select``'s two sums: of whole USD, and of the pico-USD left over
    (integers, or their text from an exact sum; None over no priced call)."""
    return (Decimal(whole_usd or 0) * _PICO_PER_USD + Decimal(pico_usd or 0)) / _PICO_PER_USD


class Totals:
    """Running sums of a set of records, with the derived figures people ask for."""

    __slots__ = (*COUNT_NAMES, *DECIMAL_NAMES)

    def __init__(self) -> None:
        self.calls = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.cache_read_tokens = 0
        self.cache_write_tokens = 0
        self.reasoning_tokens = 0
        self.total_tokens = 0
        self.priced_calls = 0
        #: Tokens of the priced calls: the base of cost per token.
        self.priced_tokens = 0
        self.error_calls = 0
        self.blocked_calls = 0
        self.estimated_calls = 0
        #: Calls without a known cost. A call a budget refused is not one: it cost nothing.
        self.unpriced_calls = 0
        #: Sum of the known costs (see ``cost`` for "nothing priced").
        self.cost_usd = _ZERO
        self.output_cost_usd = _ZERO
        #: Cost of the priced calls that carry a cost breakdown (input + output split).
        self.split_cost_usd = _ZERO

    # --- adding up -------------------------------------------------------------------------

    def add_record(self, record: _RecordLike) -> None:
        # On the caller's thread for every record (session summaries): kept to plain adds. A
        # pydantic record's fields are read from its __dict__ (its attribute access goes through
        # a __getattr__ hook); any other record-like object, through its attributes.
        fields = getattr(record, "__dict__", None)
        if fields is None or "total_tokens" not in fields:
            fields = {name: getattr(record, name) for name in _RECORD_FIELDS}
        total = fields["total_tokens"]
        self.calls += 1
        self.input_tokens += fields["input_tokens"]
        self.output_tokens += fields["output_tokens"]
        self.cache_read_tokens += fields["cache_read_tokens"]
        self.cache_write_tokens += fields["cache_write_tokens"]
        self.reasoning_tokens += fields["reasoning_tokens"]
        self.total_tokens += total
        status = fields["status"]
        if status != "ok":
            if status == "error":
                self.error_calls += 1
            elif status == "blocked":
                self.blocked_calls += 1
        if fields["estimated"]:
            self.estimated_calls += 1
        cost = fields["estimated_cost_usd"]
        if cost is None:
            if status != "blocked":
                self.unpriced_calls += 1
            return
        self.priced_calls += 1
        self.priced_tokens += total
        self.cost_usd = _add(self.cost_usd, cost)
        breakdown = fields["cost_breakdown"]
        if breakdown:  # its parts add up to the cost
            self.output_cost_usd = _add(self.output_cost_usd, output_cost(breakdown))
            self.split_cost_usd = _add(self.split_cost_usd, cost)

    def add(self, other: Totals) -> None:
        for name in COUNT_NAMES:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in DECIMAL_NAMES:
            setattr(self, name, _add(getattr(self, name), getattr(other, name)))

    @classmethod
    def from_counts(cls, counts: Sequence[Any], cost_usd: Decimal = _ZERO) -> Totals:
        """From integers in ``COUNT_NAMES`` order (missing ones are 0) and the summed cost."""
        totals = cls()
        for name, value in zip(COUNT_NAMES, counts, strict=False):
            setattr(totals, name, int(value or 0))
        totals.cost_usd = cost_usd
        return totals

    @classmethod
    def from_sql(cls, values: Sequence[Any]) -> Totals:
        """From the ``COUNT_NAMES`` aggregates followed by the cost in two sums, of whole USD and
        of the pico-USD left over (``totals_select``: one 64-bit sum would overflow)."""
        n = len(COUNT_NAMES)
        return cls.from_counts(values[:n], sql_cost(values[n], values[n + 1]))

    def to_state(self) -> dict[str, Any]:
        """JSON-able (Decimals as strings), for a file that keeps running totals."""
        state: dict[str, Any] = {name: getattr(self, name) for name in COUNT_NAMES}
        state.update({name: str(getattr(self, name)) for name in DECIMAL_NAMES})
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Totals:
        totals = cls()
        for name in COUNT_NAMES:
            setattr(totals, name, int(state.get(name, 0)))
        if "unpriced_calls" not in state:  # written before blocked calls were told apart
            totals.unpriced_calls = totals.calls - totals.priced_calls
        for name in DECIMAL_NAMES:
            setattr(totals, name, Decimal(str(state.get(name, "0"))))
        return totals

    # --- derived figures -------------------------------------------------------------------

    @property
    def cost(self) -> Decimal | None:
        """Sum of known costs, normalised; None when the set has unpriced calls and none has a
        price (no call at all costs $0: a report of an empty period said "n/a", as for unknown;
        so do calls a budget blocked: a "blocked" row read n/a, an unknown spending)."""
        return known_cost(self.cost_usd, self.priced_calls, self.unpriced_calls)

    @property
    def input_cost_usd(self) -> Decimal:
        """Everything billed for input: uncached, cache reads and cache writes."""
        return USD_CONTEXT.subtract(self.cost_usd, self.output_cost_usd)

    @property
    def made_calls(self) -> int:
        """Calls that were sent: a call a budget refused is counted in ``calls`` (a report's
        "Blocked" column) but was never made, so no average per call counts it."""
        return self.calls - self.blocked_calls

    @property
    def avg_tokens_per_call(self) -> float:
        """Over the calls made (``made_calls``): a refused call has no tokens, and counting it
        halved the journal's average where every call made used the same tokens."""
        made = self.made_calls
        return self.total_tokens / made if made else 0.0

    @property
    def avg_cost_per_call(self) -> Decimal | None:
        """Over the priced calls only (an unpriced call is not a free one)."""
        return _divide(self.cost_usd, self.priced_calls) if self.priced_calls else None

    @property
    def io_ratio(self) -> float | None:
        """Input tokens per output token (None before any output)."""
        return self.input_tokens / self.output_tokens if self.output_tokens else None

    @property
    def cost_per_token(self) -> Decimal | None:
        return _divide(self.cost_usd, self.priced_tokens) if self.priced_tokens else None

    @property
    def cost_per_1k_tokens(self) -> Decimal | None:
        if not self.priced_tokens:
            return None
        return _divide(USD_CONTEXT.multiply(self.cost_usd, 1000), self.priced_tokens)

    @property
    def cache_hit_rate(self) -> float | None:
        """Share of input tokens read from the provider's cache (None before any input)."""
        return self.cache_read_tokens / self.input_tokens if self.input_tokens else None

    def share_of(self, whole: Totals) -> Decimal | None:
        """This cost as a fraction of ``whole``'s cost: None when it is not a part of a positive
        whole. A refund (a negative cost) can bring the whole near zero or below, and a share of
        that is no share (1e14 %, or -100 % and 200 %)."""
        if not self.priced_calls or not 0 <= self.cost_usd <= whole.cost_usd or whole.cost_usd <= 0:
            return None
        return _divide(self.cost_usd, whole.cost_usd)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Totals):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(calls={self.calls}, input_tokens={self.input_tokens}, "
            f"output_tokens={self.output_tokens}, cost_usd={self.cost_usd})"
        )
