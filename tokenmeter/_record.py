"""Building records: the one road every intercepted or manual call takes.

Only computes: price (cached), attribute to the session, update the live summaries, enqueue.
An intercepted call's record is made on a writer's thread when nothing waits for it on the
caller's (``emit_call``); a manual one, on the caller's. All I/O happens on the writers' threads
(``_pipeline``).
Values from outside (a provider's response, the caller's arguments) are made safe for every sink
here, at the door: text that UTF-8 cannot encode, megabyte names, impossible costs.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from operator import itemgetter
from typing import Any, Literal

from pydantic import ValidationError

from tokenmeter import _pipeline, _runtime, _sessions
from tokenmeter._estimate import without_waiting
from tokenmeter._models import (
    MAX_COST_USD,
    MAX_NAME,
    MAX_STORED_COST_USD,
    MAX_TOKENS,
    MODALITY_KEYS,
    TOOL_REQUEST_KEYS,
    Cost,
    Usage,
    UsageRecord,
    _check_parts,
    as_int,
    clean_text,
    first_error,
    modalities_over_total,
    plain_str,
    trusted,
    usage_of,
)
from tokenmeter._registry import canonical, family_of
from tokenmeter._totals import normalise_usd
from tokenmeter.guardrails import _budgets, _state
from tokenmeter.pricing._engine import CostFields, cost_fields
from tokenmeter.pricing._overrides import short_repr
from tokenmeter.pricing._source import KNOWN_TIERS, known_tier, split_tier
from tokenmeter.usage import Extracted, extract, with_model_fees
from tokenmeter.usage._read import field, getter, priced_tier
from tokenmeter.usage.google import batch_result_response
from tokenmeter.usage.openai import batch_result_body

__all__ = ["NOTHING_USED", "emit", "emit_call", "record", "record_response"]

logger = logging.getLogger("tokenmeter")

#: Random bytes that start every record id of a process (a counter follows). The sinks keep the
#: first row of an id, so two processes sharing a prefix would lose records: 80 bits keep that
#: out of reach of any number of processes writing into one database (48 did not, at a team's
#: millions of short-lived processes).
_ID_BYTES = 10
_id_prefix = secrets.token_hex(_ID_BYTES)
_id_counter = itertools.count()
_warned_cost: set[str] = set()
#: Models warned about for an implausible cost; past this many the rest are not warned about
#: (the set stays bounded whatever names a server sends).
_MAX_WARNED_COST = 1_000
#: The fields of an unknown cost and of a call that cost nothing (shared: never changed).
_UNKNOWN: CostFields = Cost(total_usd=None).__dict__
#: The usage of a call that failed before anything was billed (an HTTP error, a timeout with
#: no answer): it cost nothing, whatever its model, even one no price table knows (an Azure
#: deployment's own name).
NOTHING_USED = Usage()
_NOTHING: CostFields = Cost(total_usd=Decimal(0)).__dict__


def _reset_ids_after_fork() -> None:
    global _id_prefix, _id_counter
    _id_prefix, _id_counter = secrets.token_hex(_ID_BYTES), itertools.count()


os.register_at_fork(after_in_child=_reset_ids_after_fork)


def _opt_text(value: Any) -> str | None:
    """Optional text from a response: None stays None, anything else becomes clean text."""
    if value is None:
        return None
    if type(value) is str and len(value) <= MAX_NAME and value.isascii() and "\x00" not in value:
        return value  # nearly always (a response id): nothing to clean
    return clean_text(value if type(value) is str else str(value), MAX_NAME)


def _plausible(cost: CostFields, model: str, cap: Decimal) -> CostFields:
    """``cost``, or unknown (with a warning per model) when it is above ``cap``."""
    total = cost["total_usd"]
    if total is None or total <= cap:
        return cost
    if model not in _warned_cost and len(_warned_cost) < _MAX_WARNED_COST:
        _warned_cost.add(model)
        what = "more than any call can cost" if cap == MAX_COST_USD else "more than a record holds"
        logger.warning(
            "tokenmeter: a %s call priced at $%s, %s; "
            "recorded with an unknown cost (check the price overrides)",
            model,
            total,
            what,
        )
    return _UNKNOWN


def emit(
    provider: str,
    model: str,
    usage: Usage,
    session: _sessions.Session | None = None,
    call: object = None,
    *,
    request_model: str | None = None,
    operation: str | None = None,
    tier: str | None = None,
    request_id: Any = None,
    latency_ms: float | None = None,
    streamed: bool = False,
    status: str = "ok",
    error: str | None = None,
    estimated: bool = False,
    timestamp: datetime | None = None,
    tags: dict[str, str] | None = None,
    priced: bool = True,
    making: bool = False,
    session_name: str | Literal[False] | None = False,
    by_hand: bool = False,
) -> UsageRecord:
    """Price one call's usage, make its record, attribute it and enqueue it: every record's road.

    ``call``: the intercepted call, whose budget reservation the record settles.
    ``priced=False``: the usage is not known (unreadable), so neither is the cost.
    ``making``: a waiting call's record, made by ``_pipeline._make_next``.
    ``session_name``: the session's name when the call was made, for a record made later (the
    session may have been renamed since); False: its name now.
    ``by_hand``: counts the caller gave (``record()``), priced up to what a record can store;
    a server's usage is held to what a call can plausibly cost (``MAX_COST_USD``): above it,
    a hostile or buggy answer, or a wrong price override.
    """
    if _runtime._settings is None:  # once per process: price overrides must be in place
        _runtime.settings()
    if session is None:
        session = _sessions.session_of_record()
    now = timestamp or datetime.now(UTC)
    if type(model) is not str or not model.isascii() or "\x00" in model:
        model = clean_text(str(model), MAX_NAME)
    elif len(model) > MAX_NAME:
        model = model[:MAX_NAME]
    if request_model is not None:
        request_model = model if request_model == model else _opt_text(request_model)
    if error is not None:  # a stream's own error event names it: text from a server
        error = _opt_text(error)
    if not priced:
        cost = _UNKNOWN
    elif usage is NOTHING_USED:
        cost = _NOTHING
    else:
        # The Cost's fields, not a Cost: the record copies them, no object is needed between.
        cost = cost_fields(provider, model, usage, at=now, tier=tier)
    total = cost["total_usd"]
    if total is not None and total > MAX_COST_USD:
        cost = _plausible(cost, model, MAX_STORED_COST_USD if by_hand else MAX_COST_USD)
        total = cost["total_usd"]
    priced_as = cost
    # The models' fields read from their __dict__: a pydantic model's attribute access goes
    # through its __getattr__ hook, several times dearer than a dict lookup (hot path).
    counts = usage.__dict__
    session_tags = session.effective_tags
    record: UsageRecord = trusted(
        UsageRecord,
        {
            "timestamp": now,
            "model_provider": provider,
            "model_name": model,
            "input_tokens": counts["input_tokens"],
            "output_tokens": counts["output_tokens"],
            "total_tokens": counts["input_tokens"] + counts["output_tokens"],
            "estimated_cost_usd": None if total is None else normalise_usd(total),
            "id": f"{_id_prefix}{next(_id_counter):010x}",
            "request_model": request_model,
            "operation": operation,
            "cache_read_tokens": counts["cache_read_tokens"],
            "cache_write_tokens": counts["cache_write_tokens"],
            "reasoning_tokens": counts["reasoning_tokens"],
            "cost_breakdown": priced_as["breakdown"],
            "price_source": priced_as["price_source"],
            "session_id": session.id,
            "session_name": session.name if session_name is False else session_name,
            # A dict of the record's own: an application editing a returned record's tags
            # must not change the session's (nor its later records').
            "tags": _tagged(session_tags, tags) if tags else dict(session_tags),
            "latency_ms": latency_ms,
            "streamed": streamed,
            "status": status,
            "error": error,
            "request_id": request_id if request_id is None else _opt_text(request_id),
            "estimated": estimated,
            "modalities": counts["modalities"],
            "tool_requests": counts["tool_requests"],
        },
    )
    if making:
        _pipeline.made(record)
    try:
        if not session._announced:
            _sessions.announce(session)
        if status != "blocked":  # a refused call cost nothing and is no call of the summary
            session._add(record)
            if _state.armed:
                _budgets.settle(record, session, call)
    finally:
        # Queued whatever befell the session's bookkeeping (its fault still raises, to be
        # logged): a billed call is never lost because of a session's state.
        _pipeline.submit(record)
    return record


#: (provider, model) pairs that have had a record made on the caller's thread: priced once
#: there (a model no price table knows is warned about where the call was made).
_made_here: set[tuple[str, str]] = set()
#: Past this many pairs, a new model's calls are all made on the caller's thread (bounded).
_MAX_MADE_HERE = 1_000
#: A Usage's token counts, in its declaration order: ``emit_call`` queues them so, ``_usage_of``
#: reads them so (``tests/providers/test_made_later.py`` checks the two agree).
_COUNT_FIELDS = tuple(name for name, info in Usage.model_fields.items() if info.annotation is int)
_counts_of = itemgetter(*_COUNT_FIELDS)


def emit_call(
    provider: str,
    model: str,
    usage: Usage,
    session: _sessions.Session | None,
    call: object,
    *,
    request_model: str | None,
    operation: str | None,
    tier: str | None,
    request_id: str | None,
    latency_ms: float,
    streamed: bool,
    status: str,
    error: str | None,
    estimated: bool,
    priced: bool,
    session_name: str | Literal[False] | None = False,
) -> None:
    """An intercepted call's record: made later by a writer (``_pipeline.later``) when nothing
    waits for it on the caller's thread, else at once (``emit``).

    Made at once: a call with a budget to settle (the guardrails, a session's budget), the first
    call of a session (announced first) or of a model (priced first: an unknown one is warned
    about here), and a call that failed or was estimated or unpriced (rare, and warned about).
    A call made on an asyncio event loop's thread is made later by that loop (``_pipeline.later``).
    ``session_name``: the session's name when the call was made (a stream's, recorded at its end);
    False: its name now.
    """
    if (
        status == "ok"
        and priced
        and not estimated
        and not _state.armed
        and (provider, model) in _made_here
        and _pipeline.can_make_later()
    ):
        if session is None:
            session = _sessions.session_of_record()
        if (
            session._announced
            and session.ended_at is None
            and not session._budgeted()
            and not usage.passes
        ):
            # Plain values only (the usage's counts, not the Usage): the garbage collector stops
            # tracking the tuple, which then never reaches its oldest generation, however long
            # it waits for a writer kept from the GIL (see _pipeline's docstring). The session's
            # name too: renamed before a writer makes the record, the call was made under this one.
            made = (provider, model, request_model, operation, tier, request_id, latency_ms)
            name = session.name if session_name is False else session_name
            call = (*made, streamed, time.time(), _queued(usage), name)
            _pipeline.later(session, call, _running_loop())
            return
    emit(
        provider,
        model,
        usage,
        session,
        call,
        request_model=request_model,
        operation=operation,
        tier=tier,
        request_id=request_id,
        latency_ms=latency_ms,
        streamed=streamed,
        status=status,
        error=error,
        estimated=estimated,
        priced=priced,
        session_name=session_name,
    )
    if status == "ok" and len(_made_here) < _MAX_MADE_HERE:
        _made_here.add((provider, model))


def _queued(usage: Usage) -> tuple[Any, ...]:
    """What ``emit_call`` queues of a Usage without passes: its counts in ``_COUNT_FIELDS``
    order, then its modalities and tool requests as pairs when it has any (no dicts: a tuple
    holding one stays tracked by the garbage collector)."""
    fields = usage.__dict__
    counts: tuple[Any, ...] = _counts_of(fields)
    modalities, tools = fields["modalities"], fields["tool_requests"]
    if modalities or tools:
        counts += (tuple(modalities.items()), tuple(tools.items()))
    return counts


def _usage_of(counts: tuple[Any, ...]) -> Usage:
    """The Usage ``emit_call`` queued as ``counts`` (a dict literal, cheaper than ``dict(zip())``:
    a writer makes one per record; new empty dicts for a call without parts, nearly every one)."""
    if len(counts) == 8:
        modalities: dict[str, int] = {}
        tools: dict[str, int] = {}
    else:
        modalities, tools = dict(counts[8]), dict(counts[9])
    usage: Usage = trusted(
        Usage,
        {
            "input_tokens": counts[0],
            "output_tokens": counts[1],
            "cache_read_tokens": counts[2],
            "cache_write_tokens": counts[3],
            "cache_write_1h_tokens": counts[4],
            "reasoning_tokens": counts[5],
            "input_audio_tokens": counts[6],
            "output_audio_tokens": counts[7],
            "modalities": modalities,
            "tool_requests": tools,
            "passes": (),
        },
    )
    return usage


def _running_loop() -> Any:
    """The asyncio event loop running on this thread, or None."""
    events = sys.modules.get("asyncio.events")  # not imported: no loop runs
    return None if events is None else events._get_running_loop()


def _make_later(session: _sessions.Session, call: tuple[Any, ...]) -> None:
    """Make the record of a call ``emit_call`` queued, as ``emit`` would have made it then."""
    provider, model, request_model, operation, tier, request_id, latency_ms = call[:7]
    streamed, at, counts, session_name = call[7:]
    emit(
        provider,
        model,
        _usage_of(counts),
        session,
        request_model=request_model,
        operation=operation,
        tier=tier,
        request_id=request_id,
        latency_ms=latency_ms,
        streamed=streamed,
        timestamp=datetime.fromtimestamp(at, UTC),
        making=True,
        session_name=session_name,
    )


_pipeline.make_later = _make_later


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string, got {short_repr(value)}")
    return clean_text(value.strip(), MAX_NAME)


#: The longest timestamp text read: ``2026-11-22T10:00:00.123456+05:30`` is 32 characters.
#: Python's ``fromisoformat`` reads far longer text (5,000 ones as 1111-11-11 11:11:11.111111).
_MAX_TIMESTAMP_TEXT = 40


def _timestamp(value: Any) -> datetime:
    if isinstance(value, str):
        try:
            if len(value) > _MAX_TIMESTAMP_TEXT:
                raise ValueError
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"timestamp is not an ISO-8601 date/time: {short_repr(value)}"
            ) from None
    if not isinstance(value, datetime):
        raise ValueError(
            f"timestamp must be a datetime or ISO-8601 string, got {short_repr(value)}"
        )
    if utc_offset(value, "timestamp") is None:
        # Python's naive times are local (datetime.now()): read as UTC, a call made "now" in
        # Tokyo was recorded 9 hours ahead, in another day's reports and budgets.
        raise ValueError(
            "timestamp must say its time zone (datetime.now(UTC), or ISO text ending in Z or "
            f"+hh:mm), got {short_repr(value if isinstance(value, str) else value.isoformat())}"
        )
    return in_utc(value, "timestamp")


def utc_offset(value: datetime, name: str) -> timedelta | None:
    """``value.utcoffset()`` (None: naive); ValueError naming the argument ``name`` when the
    caller's tzinfo fails, rather than its own exception from deep inside."""
    try:
        return value.utcoffset()
    except Exception as exc:  # a tzinfo of the caller's that fails
        raise ValueError(f"{name}'s time zone failed: {type(exc).__name__}") from None


def in_utc(value: datetime, name: str) -> datetime:
    """An aware ``value`` in UTC; ValueError naming the argument ``name`` past year 9999 there."""
    try:
        return value.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:00-05:00: past year 9999 in UTC
        raise ValueError(f"{name} is out of range in UTC, got {short_repr(value)}") from None


def caller_tier(tier: Any) -> str | None:
    """A caller's ``tier=`` (``price()``, ``record()``) as pricing takes it: None for standard.
    Refused with a ValueError naming ``tier`` when it is no tier name: a typo ("bacth") priced
    at standard rates would pass unseen, where a response's unknown tier is billed as standard."""
    if tier is None:
        return None
    if not isinstance(tier, str):
        raise ValueError(f"tier must be a string such as 'batch' or 'flex', got {short_repr(tier)}")
    if not known_tier(tier):
        raise ValueError(f"tier must be one of {KNOWN_TIERS}, got {short_repr(tier)}")
    # Only a tier that changes the price is kept, as for a response's: the price cache is keyed
    # by it, and would hold each distinct megabyte-long tier otherwise.
    name, region = split_tier(tier[:40])
    return f"{name}+{region}" if region else priced_tier(name)


def _usage(**counts: Any) -> Usage:
    if all(type(value) is int and 0 <= value <= MAX_TOKENS for value in counts.values()):
        return usage_of(**counts)  # the common case; only the subset rules are left to check
    counts = {name: as_int(value) for name, value in counts.items()}
    return Usage(**counts)  # a one-line ValueError naming the field that is wrong


def _parts(name: str, given: Mapping[str, int] | None, known: frozenset[str]) -> dict[str, int]:
    """A ``modalities`` / ``tool_requests`` argument as a plain dict, checked (ValueError naming
    the field and the key: a wrong type, an unknown key, a count that is not a whole number from
    0 to MAX_TOKENS: negative, NaN, a float, a bool, too large)."""
    if given is None:
        return {}
    if not isinstance(given, Mapping):
        raise ValueError(f"{name} must be a dict of counts, got {type(given).__name__}")
    if len(given) > len(known):
        raise ValueError(f"{name} has {len(given)} keys: expected at most {len(known)}")
    parts = {key: as_int(value) for key, value in given.items()}
    _check_parts(name, parts, known)
    return {key: value for key, value in parts.items() if value}


def _with_parts(
    usage: Usage, modalities: Mapping[str, int] | None, tool_requests: Mapping[str, int] | None
) -> Usage:
    """``usage`` with its modality breakdown and tool requests, the subset rules checked. Audio
    counts also fill the audio fields, as the usage readers of intercepted calls do."""
    by_modality = _parts("modalities", modalities, MODALITY_KEYS)
    tools = _parts("tool_requests", tool_requests, TOOL_REQUEST_KEYS)
    parted = usage_of(  # each part within its total, or a ValueError naming that part
        usage.input_tokens,
        usage.output_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        cache_write_1h_tokens=usage.cache_write_1h_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        input_audio_tokens=by_modality.get("input_audio", 0),
        output_audio_tokens=by_modality.get("output_audio", 0),
        modalities=by_modality or None,
        tool_requests=tools or None,
    )
    wrong = by_modality and modalities_over_total(
        by_modality, usage.input_tokens, usage.output_tokens, usage.cache_read_tokens
    )
    if wrong:
        raise ValueError(f"modalities: {wrong}")
    return parted


def record(
    provider: str,
    model: str,
    input_tokens: int,
    output_tokens: int,
    *,
    cache_read_tokens: int = 0,
    cache_write_tokens: int = 0,
    cache_write_1h_tokens: int = 0,
    reasoning_tokens: int = 0,
    modalities: Mapping[str, int] | None = None,
    tool_requests: Mapping[str, int] | None = None,
    operation: str | None = None,
    tier: str | None = None,
    tags: dict[str, str] | None = None,
    estimated: bool = False,
    timestamp: datetime | str | None = None,
) -> UsageRecord:
    """Record a call by hand; priced, attributed and written like an intercepted one.

    Counts follow tokenmeter's convention: ``input_tokens`` is ALL input (cache included) and
    ``output_tokens`` ALL output (reasoning included). ``cache_write_1h_tokens`` is the part of
    ``cache_write_tokens`` written with a long TTL (Anthropic's 1-hour writes, OpenAI's 12-hour
    ones), billed at a higher rate than the rest, as ``price()`` takes it. Image, audio and
    video tokens and server tool requests have their own rates, so a call that had them is only
    priced right when they are given: ``modalities`` splits the counts by modality
    (``{"output_image": 1290}``; keys
    ``input_*``, ``output_*``, ``cache_read_*`` for text/image/audio/video/document, each a part
    of its total, a side's parts together no more than it) and ``tool_requests`` counts billed
    server-side tool requests (``{"web_search": 2}``; keys web_search, web_search_preview,
    web_fetch, file_search, code_execution, x_search), both priced as for an intercepted call.
    ``tier`` is the service tier the call was billed at, as ``price()`` takes it: ``"batch"``
    for a batch job's results (half price), ``"flex"``, ``"priority"``, ...; None is standard.
    A count may be any integer type (numpy's ``int64`` from a sum over a frame). Bad input raises
    ValueError naming the field; nothing is written then.
    """
    provider = canonical(_text("provider", provider))  # an alias is its provider, as elsewhere
    model = _text("model", model)
    usage = _usage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read_tokens=cache_read_tokens,
        cache_write_tokens=cache_write_tokens,
        cache_write_1h_tokens=cache_write_1h_tokens,
        reasoning_tokens=reasoning_tokens,
    )
    if modalities is not None or tool_requests is not None:
        usage = _with_parts(usage, modalities, tool_requests)
    if operation is not None:
        if not isinstance(operation, str):
            raise ValueError(f"operation must be a string, got {short_repr(operation)}")
        operation = clean_text(operation, MAX_NAME)  # storable by every sink, as a model name
    if not isinstance(estimated, bool):
        raise ValueError(f"estimated must be True or False, got {short_repr(estimated)}")
    return _returned(
        emit(
            provider,
            model,
            usage,
            request_model=model,
            operation=operation,
            tier=caller_tier(tier),
            estimated=estimated,
            timestamp=_timestamp(timestamp) if timestamp is not None else None,
            tags=_merged_tags_fit(_sessions._check_tags(tags)) or None,
            by_hand=True,
        )
    )


def _returned(record: UsageRecord) -> UsageRecord:
    """The record for the application: a copy with mappings of its own, since the one queued
    for the sinks is written later, and an edit of what the caller got back (a tag added, a
    part of the breakdown dropped) would change what they store."""
    copy: UsageRecord = _pipeline._own_copy(record)
    return copy


def _merged_tags_fit(tags: dict[str, str]) -> dict[str, str]:
    """``tags``, checked with the session's they are merged with (``_sessions.MAX_TAGS_SIZE``)."""
    if tags:
        session = _sessions.session_of_record()
        if session.effective_tags:
            _sessions.check_tags_size(
                {**session.effective_tags, **tags}, "with those of the session"
            )
    return tags


def record_response(
    response: Any, *, provider: str | None = None, model: str | None = None
) -> UsageRecord:
    """Record a provider response object or its JSON dict (provider detected from its shape).

    A batch job's result given whole is read as the response it holds, priced at batch rates:
    a line of an OpenAI Batch API or Anthropic Message Batches results file (``custom_id``
    and all), of a Gemini API or Vertex AI batch output file (``response`` beside ``key`` or
    ``request``), or google-genai's ``InlinedResponse``.
    A response without a usage block it can read raises ``ValueError``, and nothing is written.
    """
    if provider is not None:
        provider = _text("provider", provider)
    if model is not None:
        model = _text("model", model)
    try:
        found = extract(response, provider)
    except ValidationError as exc:
        raise ValueError("unreadable usage in response: " + first_error(exc)) from None
    except (TypeError, AttributeError, ArithmeticError) as exc:
        raise ValueError(f"unreadable usage in response: {exc}") from None
    if found is None:
        raise ValueError("the response carries no usage yet (still queued or in progress)")
    # A blank model (a gateway's ``"model": ""``) or one that is not text (a compatible
    # server's 5 or list) names none, as on the metered SDK path: the record is made at
    # ``model=``, with the fees that depend on it.
    served = found.model
    served = plain_str(served) if isinstance(served, str) and str.strip(served) else None
    model_name = served or model
    if not model_name:
        if found.model is None:
            raise ValueError("the response names no model: pass model=")
        raise ValueError(
            f"model: the response's model {short_repr(found.model)} names none: pass model="
        )
    usage = found.usage if served else with_model_fees(found, model_name)
    operation = found.operation
    if operation is None and _transcribed(found, response):
        # Imported here: the adapters import this module (emit_call).
        from tokenmeter.providers.openai import clip_as_audio

        # Its input is the clip: read as text without input_token_details, it was priced
        # below the same answer with them, or made through the SDK (048f65a).
        usage, operation = clip_as_audio(usage), _TRANSCRIPTIONS
    estimated = False
    if usage.output_tokens <= usage.reasoning_tokens and operation != "embeddings":
        better = _with_reply_output(found, response, usage, model_name)
        if better is not None:
            usage, estimated = better, True
    return _returned(
        emit(
            found.provider,
            model_name,
            usage,
            request_model=model or model_name,
            operation=operation,
            tier=found.tier,
            request_id=found.request_id,
            estimated=estimated,
        )
    )


def _with_reply_output(found: Extracted, response: Any, usage: Usage, model: str) -> Usage | None:
    """``usage`` with its output estimated from the reply's text, for a usage that counts no
    output beside its reasoning and gives no total to tell one by (a compatible server's
    ``{"prompt_tokens": 100}``, Responses' ``{"input_tokens": 100}``, Gemini's
    ``{"promptTokenCount": 100}``), as the adapters estimate the same answer made through the
    SDK: recorded as given, the reply was a silent $0. None otherwise: a count that is there (0
    included, as a cancelled Realtime response's) is the provider's, and Anthropic's usage
    always counts its output (it is refused without one).

    The estimate is added to the reasoning the usage counts, so it leaves the reasoning's text
    out (the reply's text is counted once, never on top of the provider's count); without a
    reasoning count, that text is billed output and is part of the estimate."""
    # Imported here, and only the adapter needed: the adapters import this module (emit_call).
    from tokenmeter.providers._core import _with_output_of

    family = family_of(found.provider)
    if family == "openai":
        from tokenmeter.providers import openai as openai_adapter

        body = batch_result_body(getter(response, what="response")) or response
        if not openai_adapter._counts_no_output(field(body, "usage")):
            return None
        reply = openai_adapter._reply_text(body, reasoning=not usage.reasoning_tokens)
    elif family == "google":
        from tokenmeter.providers import _gemini, google_genai

        body = batch_result_response(response) or response
        if not google_genai._counts_no_output(field(body, "usage_metadata", "usageMetadata")):
            return None
        # Thought summaries are left out of either reader: counted or not, as on the SDK path.
        stored = isinstance(body, Mapping)  # a stored body: the SDK's objects read otherwise
        reply = _gemini.json_reply_text(body) if stored else _gemini.reply_text(body)
    else:
        return None
    # On the caller's thread, as the SDK path's estimate: a tokenizer not loaded is not waited for.
    with without_waiting():
        return _with_output_of(usage, reply, found.provider, model)


#: The operation of a transcription, as the OpenAI adapter names it.
_TRANSCRIPTIONS = "audio.transcriptions"


def _transcribed(found: Extracted, response: Any) -> bool:
    """Whether ``response`` is an OpenAI transcription's JSON (``{"text": ..., "usage":
    {"type": "tokens", ...}}``): no ``object`` names it, its usage's type does."""
    if family_of(found.provider) != "openai":
        return False
    return (
        field(field(response, "usage"), "type") == "tokens" and field(response, "text") is not None
    )


def _tagged(session_tags: Mapping[str, str], tags: Mapping[str, str]) -> dict[str, str]:
    """A record's own ``tags`` over its session's, but under the tags the process imposes
    (``tokenmeter run``'s ``tokenmeter_run``): ``record(tags={"tokenmeter_run": ...})`` filed
    the call outside the run, and out of its ``--budget``."""
    merged = {**session_tags, **tags}
    merged.update(_sessions.imposed_tags())
    return merged
