"""The three value types every other module speaks: Usage, Cost and UsageRecord.

Token counts follow one convention everywhere (SPEC §3): ``input_tokens`` is ALL input (cached and
cache-written included) and ``output_tokens`` is ALL output (reasoning included); the other counts
are subsets of those two. Provider-specific conventions are converted in ``tokenmeter.usage``.
"""

from __future__ import annotations

import operator
import reprlib
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from tokenmeter._totals import output_cost

__all__ = [
    "MAX_COST_USD",
    "MAX_STORED_COST_USD",
    "MAX_TOKENS",
    "UNREADABLE_USAGE",
    "Cost",
    "Pass",
    "SessionInfo",
    "Usage",
    "UsageRecord",
    "clean_text",
    "first_error",
    "output_cost",
]

M = TypeVar("M", bound=BaseModel)

_SUBSETS_OF_INPUT = ("cache_read_tokens", "cache_write_tokens", "input_audio_tokens")

#: More tokens than any call can have (a trillion): a larger count is a provider's or a caller's
#: bug, refused at the door so that no sink (SQLite's 64-bit integers, sums in reports) chokes.
MAX_TOKENS = 10**12
#: The ``error`` of a call that succeeded but whose usage could not be read (missing, negative,
#: inconsistent): recorded with status "error" and an unknown cost, never dropped.
UNREADABLE_USAGE = "UnreadableUsage"
#: More than any single call can cost; a larger price of an intercepted answer (a server's
#: usage) is treated as unknown (with a warning).
MAX_COST_USD = Decimal(10_000)
#: The largest cost a record can hold: the SQLite and PostgreSQL sinks keep it as 64-bit
#: pico-USD too. A hand-recorded call (``record()``: the caller chose its counts) keeps any
#: price up to this; above it the cost is unknown, with the same warning.
MAX_STORED_COST_USD = Decimal(2**63 - 1).scaleb(-12)
#: The longest name kept (model, provider, session, tag key): a server or a caller may send a
#: megabyte of it, which every record, cache and log line would then carry.
MAX_NAME = 500

Count = Annotated[int, Field(ge=0, le=MAX_TOKENS)]

#: Modalities a provider reports token counts for, as ``modalities`` keys spell them.
MODALITIES = ("text", "image", "audio", "video", "document")
#: ``modalities`` keys: ``input_<m>`` and ``output_<m>`` (subsets of input/output tokens) and
#: ``cache_read_<m>`` (subsets of cache_read_tokens), for each modality ``m`` above; and
#: ``output_citation``: the citation tokens Perplexity bills as output at a rate of their own.
MODALITY_KEYS = frozenset(
    f"{side}_{m}" for side in ("input", "output", "cache_read") for m in MODALITIES
) | {"output_citation"}
#: Perplexity's search context sizes above its default (low), as ``tool_requests`` keys spell
#: them (one a call, when the answer reports such a size): it sets the call's fee per request.
SEARCH_CONTEXT_KEYS = {"medium": "search_context_medium", "high": "search_context_high"}
#: Billed server-side tool requests a response reports, as ``tool_requests`` keys spell them.
TOOL_REQUEST_KEYS = frozenset(
    {"web_search", "web_search_preview", "web_fetch", "file_search", "code_execution", "x_search"}
) | frozenset(SEARCH_CONTEXT_KEYS.values())


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 60
_SHORT.maxlevel = 2


def short_repr(value: Any) -> str:
    """``repr(value)`` cut to a readable length, for error messages.

    A value read from a file or given by a caller can be a 10 kB string, a list nested 100 000
    deep (plain ``repr`` raises RecursionError) or an int too long to print; the message must
    still be one short line.
    """
    try:
        return _SHORT.repr(value)
    except Exception:  # a user object's __repr__, or an int beyond sys.get_int_max_str_digits()
        return f"a {type(value).__name__} that cannot be shown"


def plain_str(text: str) -> str:
    """``text`` as a plain ``str``: a subclass's ``__str__``, ``__hash__`` and ``__eq__`` are the
    application's code (they may raise, or differ from the characters), and we only want the
    characters."""
    return text if type(text) is str else str.__str__(text)


def clean_text(text: str, limit: int = 1_000) -> str:
    """``text`` as every sink can store it: lone surrogates (not encodable as UTF-8) and NUL
    (PostgreSQL text cannot hold it) replaced by U+FFFD, and at most ``limit`` characters (a
    hostile server may send a megabyte-long model)."""
    if len(text) > limit:
        text = text[:limit]
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in text)
    return text


def first_error(exc: ValidationError) -> str:
    """pydantic's first complaint as one line that names the field."""
    from tokenmeter.pricing._overrides import short_repr  # not at import: pricing imports us

    error = exc.errors()[0]
    message = error["msg"].removeprefix("Value error, ")
    # A key the model does not have is part of the location: a megabyte-long one is cut.
    where = ".".join(
        str(part) if len(str(part)) <= 60 else short_repr(part) for part in error["loc"]
    )
    return f"{where}: {message} (got {short_repr(error['input'])})" if where else message


class _Model(BaseModel):
    """A model users build too: a bad value is a one-line ValueError naming the field, like
    everywhere else in the public API, not pydantic's multi-line dump with a URL.

    Only calling the class is changed: ``model_validate`` still raises pydantic's
    ValidationError, and tokenmeter's own hot path builds instances with ``trusted`` (no
    ``__init__`` at all).
    """

    if not TYPE_CHECKING:  # type checkers keep the typed __init__ pydantic derives from fields

        def __init__(self, /, **data: Any) -> None:
            # What BaseModel.__init__ does (the same cost), the error made one line.
            try:
                self.__pydantic_validator__.validate_python(data, self_instance=self)
            except ValidationError as exc:
                raise ValueError(first_error(exc)) from None

        # pydantic's mark of its own __init__: without it, validating a dict (model_validate,
        # a nested model) would call this one too, and wrap its ValueError in a ValidationError.
        __init__.__pydantic_base_init__ = True


class Usage(_Model):
    """Normalised token counts of one call."""

    # strict: a count is an int, never a bool, float or numeric string.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    input_tokens: Count = 0
    output_tokens: Count = 0
    cache_read_tokens: Count = 0
    cache_write_tokens: Count = 0
    #: Part of ``cache_write_tokens`` written with a 1-hour TTL (Anthropic bills it at 2x input).
    cache_write_1h_tokens: Count = 0
    reasoning_tokens: Count = 0
    input_audio_tokens: Count = 0
    output_audio_tokens: Count = 0
    #: Token counts by modality as the provider reports them (keys in ``MODALITY_KEYS``, e.g.
    #: ``{"input_text": 12, "output_image": 1290}``); each priced at its modality's rate.
    modalities: dict[str, Count] = {}
    #: Billed server-side tool requests (keys in ``TOOL_REQUEST_KEYS``), e.g. ``{"web_search": 3}``.
    tool_requests: dict[str, Count] = {}
    #: Billed passes the provider reports beside the call's own (Anthropic ``usage.iterations``:
    #: compaction, advisor). Their tokens are INSIDE the totals above; each is priced at its own
    #: model's rates.
    passes: tuple[Pass, ...] = ()

    @field_validator("passes", mode="before")
    @classmethod
    def _passes_from_a_list(cls, value: Any) -> Any:
        """A list of passes is the tuple it stands for: JSON has no tuple, so a usage read back
        from a file (or given by hand) has a list, which strict mode would refuse."""
        return tuple(value) if type(value) is list else value

    @model_validator(mode="before")
    @classmethod
    def _no_pass_of_a_pass(cls, data: Any) -> Any:
        """A pass of a pass is refused here, before pydantic validates the passes: their usages
        are validated level by level, so a dict nested 600 deep got pydantic's depth error
        (4,000 characters of location) instead of the one-line refusal the after-check gives
        (``check_usage_subsets``, which a usage built by ``usage_of`` goes through)."""
        passes = data.get("passes") if type(data) is dict else None
        if type(passes) is list or type(passes) is tuple:
            for index, extra in enumerate(passes):
                if _has_passes(extra.get("usage") if type(extra) is dict else extra):
                    raise ValueError(f"passes[{index}].usage: a pass has no passes of its own")
        return data

    @model_validator(mode="after")
    def _check_subsets(self) -> Usage:
        check_usage_subsets(self.__dict__)
        return self

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class Pass(_Model):
    """One billed pass beside the call's own, with its own model (None: the call's model)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    #: What the provider calls it, e.g. "compaction", "advisor_message".
    kind: str
    model: str | None = None
    usage: Usage


Usage.model_rebuild()


def _has_passes(usage: Any) -> bool:
    """Whether a pass's usage (a dict, a Usage; the Pass itself stands for its usage) lists
    passes of its own. Anything else is no usage: left for validation to name."""
    if isinstance(usage, Pass):
        usage = usage.usage
    if isinstance(usage, Usage):
        return len(usage.passes) > 0
    passes = usage.get("passes") if type(usage) is dict else None
    return (type(passes) is list or type(passes) is tuple) and len(passes) > 0


def check_usage_subsets(c: dict[str, Any]) -> None:
    """The parts of a Usage must fit inside its totals (ValueError naming the fields if not)."""
    read, write, total_in = c["cache_read_tokens"], c["cache_write_tokens"], c["input_tokens"]
    for name in ("input_tokens", "output_tokens"):
        if c[name] > MAX_TOKENS:  # the value itself may be too long to print
            raise ValueError(f"{name} is more than any call can use ({MAX_TOKENS})")
    if read + write > total_in:
        raise ValueError(
            f"cache_read_tokens + cache_write_tokens ({read} + {write}) "
            f"cannot exceed input_tokens ({total_in})"
        )
    if c["input_audio_tokens"] > total_in:
        raise ValueError(
            f"input_audio_tokens ({c['input_audio_tokens']}) "
            f"cannot exceed input_tokens ({total_in})"
        )
    if c["cache_write_1h_tokens"] > write:
        raise ValueError(
            f"cache_write_1h_tokens ({c['cache_write_1h_tokens']}) "
            f"cannot exceed cache_write_tokens ({write})"
        )
    reasoning, audio_out, total_out = (
        c["reasoning_tokens"],
        c["output_audio_tokens"],
        c["output_tokens"],
    )
    if reasoning + audio_out > total_out:
        raise ValueError(
            f"reasoning_tokens ({reasoning}) cannot exceed output_tokens ({total_out})"
            if not audio_out
            else f"reasoning_tokens + output_audio_tokens ({reasoning} + {audio_out}) "
            f"cannot exceed output_tokens ({total_out})"
        )
    modalities = c.get("modalities")
    if modalities:
        _check_parts("modalities", modalities, MODALITY_KEYS)
        for key, value in modalities.items():
            limit = total_in if key.startswith("input") else total_out
            if key.startswith("cache_read"):
                limit = read
            if value > limit:
                side = key.split("_")[0] if not key.startswith("cache_read") else "cache_read"
                whole = {"input": "input_tokens", "output": "output_tokens"}.get(
                    side, "cache_read_tokens"
                )
                raise ValueError(f"modalities[{key!r}] ({value}) cannot exceed {whole} ({limit})")
    tools = c.get("tool_requests")
    if tools:
        _check_parts("tool_requests", tools, TOOL_REQUEST_KEYS)
    passes = c.get("passes")
    if passes:
        for index, extra in enumerate(passes):
            if extra.usage.passes:
                # A pass is one billed sub-inference (a compaction, an advisor's message): no
                # provider bills passes of a pass. A nesting of any depth would be priced level
                # by level, and run out of stack deep down (RecursionError, not a ValueError).
                raise ValueError(f"passes[{index}].usage: a pass has no passes of its own")
        extra_in = sum(p.usage.input_tokens for p in passes)
        extra_out = sum(p.usage.output_tokens for p in passes)
        if extra_in > total_in or extra_out > total_out:
            raise ValueError(
                f"the passes' tokens ({extra_in} in, {extra_out} out) must be inside "
                f"input_tokens ({total_in}) and output_tokens ({total_out})"
            )


def as_int(value: Any) -> Any:
    """An integer of another library (numpy's ``int64``) as the int it stands for; anything
    else as it is, for the checks to name (a bool is no count, though it has ``__index__``)."""
    if type(value) is int or isinstance(value, bool | float | str):
        return value
    try:
        return operator.index(value)
    except Exception:
        return value


def _check_parts(name: str, parts: Any, known: frozenset[str]) -> None:
    if type(parts) is not dict:
        raise ValueError(f"{name} must be a dict of counts, got {type(parts).__name__}")
    for key, value in parts.items():
        if key not in known:
            raise ValueError(
                f"{name} has an unknown key {short_repr(key)}: expected one of {sorted(known)}"
            )
        if type(value) is not int or not 0 <= value <= MAX_TOKENS:
            raise ValueError(
                f"{name}[{key!r}] must be a whole number from 0 to {MAX_TOKENS}, "
                f"got {short_repr(value)}"
            )


def modalities_over_total(
    modalities: dict[str, int], input_tokens: int, output_tokens: int, cache_read_tokens: int
) -> str | None:
    """What is wrong when the counts by modality of a side add up to more than its total (each
    is a part of it: ``input_text`` 1000 and ``input_audio`` 1000 of an input of 1000 priced it
    all as audio and the text at nothing), else None. Citation tokens are billed beside the
    output, not inside it."""
    totals = {"input": input_tokens, "output": output_tokens, "cache_read": cache_read_tokens}
    sums = dict.fromkeys(totals, 0)
    for key, value in modalities.items():
        if key != "output_citation":
            sums[key.rpartition("_")[0]] += value
    for side, total in totals.items():
        if sums[side] > total:
            return f"its counts by modality ({sums[side]}) are more than its {side} ({total})"
    return None


def usage_of(
    input_tokens: int,
    output_tokens: int,
    cache_read_tokens: int = 0,
    cache_write_tokens: int = 0,
    cache_write_1h_tokens: int = 0,
    reasoning_tokens: int = 0,
    input_audio_tokens: int = 0,
    output_audio_tokens: int = 0,
    modalities: dict[str, int] | None = None,
    tool_requests: dict[str, int] | None = None,
    passes: tuple[Pass, ...] = (),
) -> Usage:
    """A Usage from counts already known to be non-negative ints (the usage readers' hot path):
    only the subset rules are checked, not each field again."""
    counts: dict[str, Any] = {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_read_tokens": cache_read_tokens,
        "cache_write_tokens": cache_write_tokens,
        "cache_write_1h_tokens": cache_write_1h_tokens,
        "reasoning_tokens": reasoning_tokens,
        "input_audio_tokens": input_audio_tokens,
        "output_audio_tokens": output_audio_tokens,
        "modalities": modalities or {},
        "tool_requests": tool_requests or {},
        "passes": passes,
    }
    if (  # the rules of check_usage_subsets for a call with no parts: every call, nearly
        modalities
        or tool_requests
        or passes
        or input_tokens > MAX_TOKENS
        or output_tokens > MAX_TOKENS
        or cache_read_tokens + cache_write_tokens > input_tokens
        or input_audio_tokens > input_tokens
        or cache_write_1h_tokens > cache_write_tokens
        or reasoning_tokens + output_audio_tokens > output_tokens
    ):
        check_usage_subsets(counts)  # says which rule is broken, and checks the parts
    usage: Usage = trusted(Usage, counts)
    return usage


class Cost(_Model):
    """What a Usage cost. ``total_usd`` is None when no price is known (never a silent 0)."""

    model_config = ConfigDict(frozen=True)

    total_usd: Decimal | None
    #: {"input": uncached input, "cache_read": …, "cache_write": …, "output": …} in USD, plus
    #: a key per further billed part when there is one: "input_audio", "input_image",
    #: "input_video", "output_audio", "output_image", "output_video" (modalities at their own
    #: rates), "web_search", "web_fetch", "file_search", "code_execution", "x_search"
    #: (server-side tool requests) and one per pass kind ("compaction", "advisor_message").
    #: The parts add up to ``total_usd``.
    breakdown: dict[str, Decimal] | None = None
    price_source: str | None = None
    #: The price-table model the name resolved to (e.g. "gpt-4o" for "gpt-4o-2024-08-06").
    priced_model: str | None = None

    @property
    def input_usd(self) -> Decimal | None:
        """Everything billed for input: uncached (every modality), cache reads and writes."""
        if self.breakdown is None:
            return None
        return sum(
            (v for k, v in self.breakdown.items() if k.startswith(("input", "cache_"))),
            Decimal(0),
        )

    @property
    def output_usd(self) -> Decimal | None:
        """Everything billed for output, every modality."""
        return None if self.breakdown is None else output_cost(self.breakdown)


def _iso(ts: datetime) -> str:
    """ISO-8601 UTC with millisecond precision and a "Z", e.g. 2026-11-22T10:00:00.123Z."""
    if ts.tzinfo is not UTC and ts.tzinfo is not None:
        ts = ts.astimezone(UTC)
    # Field by field with %: cheaper than isoformat() (which asks the zone for its offset) and
    # than an f-string's format specs.
    return "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (  # noqa: UP031
        ts.year,
        ts.month,
        ts.day,
        ts.hour,
        ts.minute,
        ts.second,
        ts.microsecond // 1000,
    )


def _number(value: Decimal) -> float | int:
    """Decimal -> JSON number; the float repr round-trips to the same decimal text."""
    return int(value) if value == value.to_integral_value() else float(value)


class UsageRecord(_Model):
    """One metered LLM call, exactly as every sink stores it (SPEC §3)."""

    model_config = ConfigDict(frozen=True)

    # The seven keys of the original unified format come first and keep their names.
    timestamp: datetime
    model_provider: str
    model_name: str
    input_tokens: int
    output_tokens: int
    total_tokens: int
    estimated_cost_usd: Decimal | None
    id: str
    request_model: str | None = None
    operation: str | None = None
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost_breakdown: dict[str, Decimal] | None = None
    price_source: str | None = None
    session_id: str | None = None
    session_name: str | None = None
    tags: dict[str, str] = {}
    latency_ms: float | None = None
    streamed: bool = False
    status: Literal["ok", "error", "blocked"] = "ok"
    error: str | None = None
    request_id: str | None = None
    estimated: bool = False
    #: Token counts by modality when the provider reports them ({} when not): see ``Usage``.
    modalities: dict[str, int] = {}
    #: Billed server-side tool requests ({} when none), e.g. {"web_search": 2}.
    tool_requests: dict[str, int] = {}

    @field_serializer("timestamp", when_used="json")
    def _ser_timestamp(self, value: datetime) -> str:
        return _iso(value)

    @field_serializer("estimated_cost_usd", when_used="json")
    def _ser_cost(self, value: Decimal | None) -> float | int | None:
        return None if value is None else _number(value)

    @field_serializer("cost_breakdown", when_used="json")
    def _ser_breakdown(self, value: dict[str, Decimal] | None) -> dict[str, float | int] | None:
        return None if value is None else {k: _number(v) for k, v in value.items()}

    def to_json_dict(self) -> dict[str, Any]:
        """The record as plain JSON types, keys in SPEC order (timestamps as ISO strings)."""
        return _to_json_dict(self)

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> UsageRecord:
        """Read back what ``to_json_dict`` wrote; numbers become Decimal again without drift."""
        data = dict(data)
        cost = data.get("estimated_cost_usd")
        if cost is not None:
            data["estimated_cost_usd"] = _json_usd("estimated_cost_usd", cost)
        breakdown = data.get("cost_breakdown")
        if breakdown is not None:
            if type(breakdown) is not dict:
                raise ValueError(f"cost_breakdown: not an object (got {short_repr(breakdown)})")
            data["cost_breakdown"] = {
                k: _json_usd(f"cost_breakdown.{k}", v) for k, v in breakdown.items()
            }
        ts = data.get("timestamp")
        if isinstance(ts, str):
            data["timestamp"] = datetime.fromisoformat(ts.replace("Z", "+00:00"))
        return cls.model_validate(data)

    @property
    def usage(self) -> Usage:
        return Usage.model_construct(
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cache_read_tokens=self.cache_read_tokens,
            cache_write_tokens=self.cache_write_tokens,
            reasoning_tokens=self.reasoning_tokens,
            modalities=self.modalities,
            tool_requests=self.tool_requests,
        )


def _json_usd(name: str, value: Any) -> Decimal:
    """A cost as JSON holds it (a number) as the exact Decimal it was written from; ValueError
    naming the field for anything else (text, a bool, null in a breakdown: an edited line),
    where ``Decimal()`` raised decimal.InvalidOperation, which no reader expects."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{name}: not a number (got {short_repr(value)})")
    try:
        return Decimal(str(value))
    except ArithmeticError:
        raise ValueError(f"{name}: not a number (got {short_repr(value)})") from None


def _to_json_dict(record: UsageRecord) -> dict[str, Any]:
    # Hand-rolled rather than model_dump(mode="json"): sinks call this for every record and it is
    # several times faster, with the same output.
    cost = record.estimated_cost_usd
    breakdown = record.cost_breakdown
    return {
        "timestamp": _iso(record.timestamp),
        "model_provider": record.model_provider,
        "model_name": record.model_name,
        "input_tokens": record.input_tokens,
        "output_tokens": record.output_tokens,
        "total_tokens": record.total_tokens,
        "estimated_cost_usd": None if cost is None else _number(cost),
        "id": record.id,
        "request_model": record.request_model,
        "operation": record.operation,
        "cache_read_tokens": record.cache_read_tokens,
        "cache_write_tokens": record.cache_write_tokens,
        "reasoning_tokens": record.reasoning_tokens,
        "cost_breakdown": None
        if breakdown is None
        else {k: _number(v) for k, v in breakdown.items()},
        "price_source": record.price_source,
        "session_id": record.session_id,
        "session_name": record.session_name,
        "tags": dict(record.tags),
        "latency_ms": record.latency_ms,
        "streamed": record.streamed,
        "status": record.status,
        "error": record.error,
        "request_id": record.request_id,
        "estimated": record.estimated,
        "modalities": dict(record.modalities),
        "tool_requests": dict(record.tool_requests),
    }


class SessionInfo(_Model):
    """A session as sinks store it: sent when it starts and again when it ends."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str | None = None
    parent_id: str | None = None
    tags: dict[str, str] = {}
    status: Literal["active", "completed", "failed"] = "active"
    started_at: datetime
    ended_at: datetime | None = None
    notes: str | None = None
    budget_usd: Decimal | None = None
    #: Totals of the session and its nested ones when it was sent (zero when it starts): a sink
    #: need not add records up, and a parent whose calls were all made in nested sessions still
    #: shows what it cost.
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    unpriced_calls: int = 0
    #: Whose totals these are: one session may be carried on by several processes (workers
    #: forked inside it, every process of ``tokenmeter run``) or entered again under its id, and
    #: each of them sends its own part, under its own key. A store keeps the latest of each part
    #: and shows their sum: the last one sent is not the whole session.
    part: str = ""
    #: Sent by a process forked inside the session, which neither started nor ends it: only
    #: its totals (its own calls since the fork) are news; its status stays "active".
    inherited: bool = False


_fields_sets: dict[type, set[str]] = {}


_new = object.__new__
_set = object.__setattr__


def _slot_setter(name: str) -> Any:
    """The setter of one of BaseModel's own slots, called directly: what ``object.__setattr__``
    does once it has looked the slot up, without the lookup (hot path: every record)."""
    setter = getattr(BaseModel.__dict__.get(name), "__set__", None)
    if setter is None:  # pragma: no cover - a pydantic without this slot: the generic road
        return lambda obj, value: _set(obj, name, value)
    return setter


_set_dict = _slot_setter("__dict__")
_set_fields_set = _slot_setter("__pydantic_fields_set__")
_set_extra = _slot_setter("__pydantic_extra__")
_set_private = _slot_setter("__pydantic_private__")


def _trusted(cls: type[M], values: dict[str, Any]) -> M:
    # Exactly the attributes pydantic's own construction sets, without its per-field work
    # (model_construct costs ~10 µs for a UsageRecord, this ~0.5 µs). Every field is given, so
    # every instance of a class can share one fields-set (these models are frozen: pydantic only
    # copies it, never changes it in place).
    obj = _new(cls)
    _set_dict(obj, values)
    fields_set = _fields_sets.get(cls)
    if fields_set is None or len(fields_set) != len(values):
        fields_set = _fields_sets[cls] = set(values)
    _set_fields_set(obj, fields_set)
    _set_extra(obj, None)
    _set_private(obj, None)
    return obj


def _construct(cls: type[M], values: dict[str, Any]) -> M:
    return cls.model_construct(**values)


def _pick_builder() -> Any:
    """Use the fast path only if it gives what pydantic gives (checked once, at import)."""
    probe = {
        "timestamp": datetime(2026, 1, 1, tzinfo=UTC),
        "model_provider": "p",
        "model_name": "m",
        "input_tokens": 1,
        "output_tokens": 1,
        "total_tokens": 2,
        "estimated_cost_usd": Decimal("0.5"),
        "id": "x",
        **{
            name: info.get_default(call_default_factory=True)
            for name, info in UsageRecord.model_fields.items()
            if not info.is_required()
        },
    }
    try:
        fast, slow = _trusted(UsageRecord, dict(probe)), UsageRecord.model_validate(probe)
        if fast == slow and fast.model_dump() == slow.model_dump():
            return _trusted
    except Exception:  # pragma: no cover - only if pydantic's internals change
        pass
    return _construct  # pragma: no cover


#: ``trusted(Model, values)``: build a model from values tokenmeter computed itself (all fields
#: given, already valid) without re-validating them. For the hot path only.
trusted = _pick_builder()
