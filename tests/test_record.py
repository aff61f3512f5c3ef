"""The manual API: record(), record_response(), price(), and what a record carries."""

from __future__ import annotations

import json
import logging
import sqlite3
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from typing import Any

import pytest

import tokenmeter
from tokenmeter import Usage, UsageRecord
from tokenmeter._estimate import count_tokens
from tokenmeter.providers.openai import _reply_text
from tokenmeter.sinks import InMemorySink

SPEC_KEYS = [
    "timestamp",
    "model_provider",
    "model_name",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "estimated_cost_usd",
    "id",
    "request_model",
    "operation",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_breakdown",
    "price_source",
    "session_id",
    "session_name",
    "tags",
    "latency_ms",
    "streamed",
    "status",
    "error",
    "request_id",
    "estimated",
    "modalities",
    "tool_requests",
]


def test_record_is_priced_attributed_and_written(sink: InMemorySink) -> None:
    with tokenmeter.session("chat", tags={"feature": "support"}) as s:
        rec = tokenmeter.record(
            "openai", "gpt-4o", 10_000, 500, cache_read_tokens=8_000, tags={"user": "u1"}
        )
    assert tokenmeter.flush(5)
    assert sink.records == [rec]
    assert rec.estimated_cost_usd == Decimal("0.02")  # pricing-reference.csv row 2
    assert rec.total_tokens == 10_500
    assert rec.cost_breakdown is not None
    assert sum(rec.cost_breakdown.values()) == rec.estimated_cost_usd
    assert (rec.session_id, rec.session_name) == (s.id, "chat")
    assert rec.tags == {"feature": "support", "user": "u1"}
    assert s.summary.calls == 1 and s.summary.cost_usd == Decimal("0.02")


def test_a_provider_alias_is_recorded_as_its_provider(sink: InMemorySink) -> None:
    """Aliases are accepted wherever a provider is named: ``record("gemini", ...)`` stored
    "gemini", so reports split one provider in two rows (``record_response`` stored "google"),
    and a budget on google never counted those calls (tests/guardrails)."""
    made = [
        tokenmeter.record(name, "gemini-2.5-flash", 1_000, 1_000)
        for name in ("gemini", "Google-GenAI", " vertex ")
    ]
    made.append(tokenmeter.record("azure_openai", "gpt-4o", 10, 10))
    made.append(tokenmeter.record("my-own-host", "x", 10, 10))
    assert [r.model_provider for r in made] == ["google"] * 3 + ["azure", "my-own-host"]
    assert tokenmeter.flush(5)
    assert [r.model_provider for r in sink.records] == [r.model_provider for r in made]


def test_json_form_has_spec_keys_in_order_and_round_trips(sink: InMemorySink) -> None:
    rec = tokenmeter.record(
        "anthropic",
        "claude-sonnet-4-5-20250929",
        10_500,
        300,
        cache_write_tokens=10_000,
        timestamp=datetime(2026, 11, 22, 10, 0, 0, 123456, tzinfo=UTC),
    )
    data = rec.to_json_dict()
    assert list(data) == SPEC_KEYS
    assert data["timestamp"] == "2026-11-22T10:00:00.123Z"
    assert data["estimated_cost_usd"] == 0.0435  # JSON number, row 13 of the reference CSV
    line = json.dumps(data)
    back = UsageRecord.from_json_dict(json.loads(line))
    assert back.estimated_cost_usd == Decimal("0.0435")
    assert back.model_dump(exclude={"timestamp"}) == rec.model_dump(exclude={"timestamp"})
    assert json.loads(rec.model_dump_json()) == data


def test_editing_a_returned_records_tags_leaves_the_sessions_alone(sink: InMemorySink) -> None:
    """A record's tags were the session's own dict: an application editing the record it got
    back changed the tags of every later record of the session."""
    with tokenmeter.session("s", tags={"team": "core"}) as s:
        first = tokenmeter.record("openai", "gpt-4o", 10, 5)
        first.tags["leaked"] = "yes"
        second = tokenmeter.record("openai", "gpt-4o", 10, 5)
    assert second.tags == {"team": "core"} and s.effective_tags == {"team": "core"}


def test_editing_a_returned_record_changes_nothing_the_sinks_store(tmp_path: Any) -> None:
    """record() and record_response() returned the object queued for the sinks: an application
    editing what it got back (a tag added for its own log, a part of the breakdown dropped)
    changed what SQLite and JSONL stored whenever the writer had not written it yet, so the
    stored breakdown no longer added up to the cost, and sinks disagreed with each other."""
    from tokenmeter.sinks import JSONLSink, SQLiteSink

    memory = InMemorySink()
    tokenmeter.configure(
        sinks=[memory, SQLiteSink(tmp_path / "u.db"), JSONLSink(tmp_path / "u.jsonl")],
        directory=str(tmp_path),
    )
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o",
        "choices": [],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }
    with tokenmeter.session("s", tags={"team": "core"}):
        made = [
            tokenmeter.record("openai", "gpt-4o", 10, 5, modalities={"input_text": 10}),
            tokenmeter.record_response(body),
        ]
    expected = [rec.to_json_dict() for rec in made]
    for rec in made:
        rec.tags["mine"] = "x"
        rec.modalities["input_image"] = 3
        assert rec.cost_breakdown is not None
        rec.cost_breakdown["input"] = Decimal(99)
    assert tokenmeter.flush(30)
    assert [rec.to_json_dict() for rec in memory.records] == expected
    lines = (tmp_path / "u.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == expected
    rows = sqlite3.connect(tmp_path / "u.db").execute(
        "SELECT tags, modalities, estimated_cost_usd, cost_breakdown FROM records ORDER BY id"
    )
    for (tags, modalities, cost, breakdown), want in zip(rows, expected, strict=True):
        assert json.loads(tags) == want["tags"] and json.loads(modalities) == want["modalities"]
        assert sum(Decimal(part) for part in json.loads(breakdown).values()) == Decimal(cost)


def test_a_records_id_has_room_for_every_process_of_a_team(sink: InMemorySink) -> None:
    """A record's id is its process's random prefix and a counter from 0, and the SQLite and
    PostgreSQL sinks keep the first row of an id (a retried batch is no new record): two
    processes drawing the same prefix lose the second one's records, silently. 48 random bits
    gave that odds of 16 % among the 10 million processes (jobs, workers, functions) that may
    write into a team's PostgreSQL database over its life; 80 bits make it nil."""
    first, second = (tokenmeter.record("openai", "gpt-4o", 10, 5).id for _ in range(2))
    prefix = first[:-10]  # the counter is the last 10 hex digits
    assert second.startswith(prefix) and first != second
    assert len(prefix) * 4 >= 80 and int(prefix, 16) >= 0


def test_unknown_model_records_null_cost_never_zero(sink: InMemorySink) -> None:
    rec = tokenmeter.record("openai", "my-private-model-x", 100, 10)
    assert rec.estimated_cost_usd is None
    assert rec.cost_breakdown is None
    assert rec.to_json_dict()["estimated_cost_usd"] is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_tokens": -1}, "input_tokens"),
        ({"output_tokens": 1.5}, "output_tokens"),
        ({"input_tokens": "10"}, "input_tokens"),
        ({"input_tokens": True}, "input_tokens"),
        ({"cache_read_tokens": 200}, "cache_read_tokens"),
        ({"reasoning_tokens": 11}, "reasoning_tokens"),
        ({"cache_write_tokens": 10, "cache_write_1h_tokens": 11}, "cache_write_1h_tokens"),
        ({"provider": ""}, "provider"),
        ({"model": "  "}, "model"),
        ({"tags": {"a": object()}}, "tags"),
        # Too long for str(): its ValueError named nothing (nor did the session's, below).
        ({"tags": {"a": 10**5000}}, "^tags: "),
        ({"timestamp": "yesterday"}, "timestamp"),
        ({"tier": "bacth"}, "^tier must be one of "),  # a typo, not standard rates
        ({"tier": 5}, "^tier must be a string"),
    ],
)
def test_bad_input_raises_value_error_and_writes_nothing(
    sink: InMemorySink, kwargs: dict[str, Any], message: str
) -> None:
    args: dict[str, Any] = {
        "provider": "openai",
        "model": "gpt-4o",
        "input_tokens": 100,
        "output_tokens": 10,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        tokenmeter.record(**args)
    tokenmeter.flush(5)
    assert sink.records == []


def test_record_takes_the_tier_a_call_was_billed_at(sink: InMemorySink) -> None:
    """docs/records.md sends a batch job's results to record(), which had no tier: a gpt-4o
    batch result of 1,000 / 500 tokens was recorded at $0.0075, where the Batch API bills
    $0.00375. ``tier`` is taken as ``price()`` takes it."""
    batch = tokenmeter.record("openai", "gpt-4o", 1000, 500, tier="batch")
    assert batch.estimated_cost_usd == Decimal("0.00375")
    us = tokenmeter.record("anthropic", "claude-opus-4-8", 10_000, 2_000, tier="Batch+us")
    assert us.estimated_cost_usd == Decimal("0.055")  # half of $0.10, at 1.1x
    standard = tokenmeter.record("openai", "gpt-4o", 1000, 500, tier="default")
    assert standard.estimated_cost_usd == Decimal("0.0075")
    assert tokenmeter.flush(5)
    assert sink.records == [batch, us, standard]


def test_record_prices_1_hour_cache_writes(sink: InMemorySink) -> None:
    """record() took no 1-hour cache writes: 10,000 of them on claude-sonnet-4-5 (with 200
    input and 300 output) were recorded at the 5-minute rate, $0.0426, where Anthropic bills
    $0.0651 ($6 per million, not $3.75). ``cache_write_1h_tokens`` is taken as price() takes it,
    with a modality split too."""
    counts: dict[str, Any] = {"cache_write_tokens": 10_000, "cache_write_1h_tokens": 10_000}
    rec = tokenmeter.record("anthropic", "claude-sonnet-4-5-20250929", 10_200, 300, **counts)
    assert rec.estimated_cost_usd == Decimal("0.0651")
    assert rec.cost_breakdown is not None and rec.cost_breakdown["cache_write"] == Decimal("0.06")
    priced = tokenmeter.price(
        "anthropic",
        "claude-sonnet-4-5-20250929",
        {"input_tokens": 10_200, "output_tokens": 300, **counts},
    )
    assert rec.estimated_cost_usd == priced.total_usd
    split = tokenmeter.record(
        "anthropic",
        "claude-sonnet-4-5-20250929",
        10_200,
        300,
        modalities={"input_text": 10_200},
        cache_write_tokens=10_000,
        cache_write_1h_tokens=4_000,
    )
    assert split.estimated_cost_usd == Decimal("0.0516")  # 6,000 at $3.75, 4,000 at $6
    assert tokenmeter.flush(5)
    assert sink.records == [rec, split]


def test_record_response_detects_the_provider(sink: InMemorySink) -> None:
    rec = tokenmeter.record_response(
        {
            "type": "message",
            "id": "msg_1",
            "model": "claude-opus-4-1-20250805",
            "usage": {
                "input_tokens": 2000,
                "cache_read_input_tokens": 3000,
                "cache_creation_input_tokens": 1000,
                "output_tokens": 2000,
            },
        }
    )
    assert rec.model_provider == "anthropic"
    assert rec.input_tokens == 6000
    assert rec.estimated_cost_usd == Decimal("0.20325")  # reference CSV row 16
    assert rec.request_id == "msg_1"


def test_record_response_reads_sdk_objects() -> None:
    openai = pytest.importorskip("openai")
    completion = openai.types.chat.ChatCompletion.model_validate(
        {
            "id": "c1",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-4o-2024-08-06",
            "choices": [],
            "usage": {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500},
        }
    )
    rec = tokenmeter.record_response(completion)
    assert (rec.model_provider, rec.model_name, rec.operation) == (
        "openai",
        "gpt-4o-2024-08-06",
        "chat.completions",
    )
    assert rec.estimated_cost_usd == Decimal("0.0075")


def test_record_response_rejects_unreadable_shapes(sink: InMemorySink) -> None:
    with pytest.raises(ValueError, match="cannot read usage"):
        tokenmeter.record_response({"text": "hello"})
    with pytest.raises(ValueError, match="names no model"):
        tokenmeter.record_response({"usage": {"prompt_tokens": 1, "completion_tokens": 1}})
    tokenmeter.flush(5)
    assert sink.records == []


#: A reply of about 450 tokens, and a reasoning of about 500, for answers whose usage counts the
#: prompt alone.
LONG_REPLY = "The quick brown fox jumps over the lazy dog. " * 45
THINKING = "Let me think about the capital of France step by step. " * 40


def _chat_body(message: dict[str, Any], usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "object": "chat.completion",
        "model": "gpt-4o",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}}],
        "usage": usage,
    }


def _responses_body(output: list[dict[str, Any]], usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "object": "response",
        "model": "gpt-4o",
        "status": "completed",
        "output": output,
        "usage": usage,
    }


def _answer(text: str) -> dict[str, Any]:
    """A Responses message output item holding ``text``."""
    return {"type": "message", "content": [{"type": "output_text", "text": text}]}


def _gemini_body(parts: list[dict[str, Any]], usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "candidates": [{"content": {"parts": parts, "role": "model"}}],
        "usageMetadata": usage,
        "modelVersion": "gemini-2.5-flash",
    }


def _tokens(text: str, provider: str, model: str) -> int:
    """``text``'s tokens, once the tokenizer is loaded (``count_tokens`` waits for it), so that
    the estimate on the caller's thread counts as this does, whichever ran first."""
    return count_tokens(text, provider, model)


def test_record_response_of_a_usage_counting_the_prompt_alone_estimates_the_output(
    sink: InMemorySink,
) -> None:
    """A compatible server's usage without an output count nor a total (chat
    ``{"prompt_tokens": 100}``, Responses ``{"input_tokens": 100}``, Gemini
    ``{"promptTokenCount": 100}``) beside a ~450-token reply was recorded 100 / 0,
    ``estimated: false``, $0.00025 (Gemini $0.00003): the reply a silent $0, where the SDK path
    estimates the same answer. A count that is there, 0 included (a cancelled Realtime
    response's zeros, which docs/providers.md has fed to record_response()), is the provider's."""
    genai = pytest.importorskip("google.genai")
    openai_reply = _tokens(LONG_REPLY, "openai", "gpt-4o")
    gemini_reply = _tokens(LONG_REPLY, "google", "gemini-2.5-flash")
    gemini = _gemini_body([{"text": LONG_REPLY}], {"promptTokenCount": 100})
    bodies = {
        "chat": (_chat_body({"content": LONG_REPLY}, {"prompt_tokens": 100}), openai_reply),
        "responses": (_responses_body([_answer(LONG_REPLY)], {"input_tokens": 100}), openai_reply),
        "batch line": (
            {
                "custom_id": "r1",
                "response": {
                    "status_code": 200,
                    "body": _chat_body({"content": LONG_REPLY}, {"prompt_tokens": 100}),
                },
            },
            openai_reply,
        ),
        "gemini": (gemini, gemini_reply),
        "gemini object": (
            genai.types.GenerateContentResponse.model_validate(gemini),
            gemini_reply,
        ),
    }
    for name, (body, reply) in bodies.items():
        rec = tokenmeter.record_response(body)
        assert (rec.status, rec.estimated, rec.input_tokens) == ("ok", True, 100), name
        assert rec.output_tokens == reply > 400, name
        assert rec.estimated_cost_usd is not None and rec.estimated_cost_usd > Decimal("0.001")

    counted = _chat_body({"content": LONG_REPLY}, {"prompt_tokens": 100, "completion_tokens": 0})
    rec = tokenmeter.record_response(counted)
    assert (rec.estimated, rec.output_tokens) == (False, 0)
    zeros = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
    cancelled = {"object": "realtime.response", "status": "cancelled", "output": [], "usage": zeros}
    rec = tokenmeter.record_response(cancelled, model="gpt-realtime")
    assert (rec.status, rec.estimated, rec.input_tokens, rec.output_tokens) == ("ok", False, 0, 0)
    assert tokenmeter.flush(5)
    assert len(sink.records) == len(bodies) + 2


def test_record_response_counts_the_reasoning_text_once(sink: InMemorySink) -> None:
    """The output estimated for a usage counting the prompt alone takes the reasoning's text
    (chat ``reasoning_content``, a Responses reasoning item) as billed output, once; beside a
    reasoning count (Gemini's ``thoughtsTokenCount``) the estimate is the rest of the reply,
    never that text again on top of the count (review8: 964 output tokens where 483 were
    billed)."""
    thinking = _tokens(THINKING, "openai", "gpt-4o")
    answer = _tokens("Paris.", "openai", "gpt-4o")
    reasoning_item = {"type": "reasoning", "summary": [{"type": "summary_text", "text": THINKING}]}
    bodies = {
        "chat": _chat_body(
            {"content": "Paris.", "reasoning_content": THINKING}, {"prompt_tokens": 100}
        ),
        "responses": _responses_body([reasoning_item, _answer("Paris.")], {"input_tokens": 100}),
    }
    for name, body in bodies.items():
        rec = tokenmeter.record_response(body)
        assert rec.estimated, name
        assert thinking <= rec.output_tokens <= thinking + answer + 1, name
        # Beside a reasoning count, the estimate added to it leaves that text out.
        assert _reply_text(body, reasoning=False).tokens("openai", "gpt-4o") == answer, name

    parts = [{"text": THINKING, "thought": True}, {"text": "Paris."}]
    gemini = _gemini_body(parts, {"promptTokenCount": 100, "thoughtsTokenCount": 480})
    rec = tokenmeter.record_response(gemini)
    answer = _tokens("Paris.", "google", "gemini-2.5-flash")
    assert (rec.estimated, rec.reasoning_tokens, rec.output_tokens) == (True, 480, 480 + answer)
    assert tokenmeter.flush(5)
    assert len(sink.records) == 3


def test_implausible_costs_warn_about_a_bounded_number_of_models(
    sink: InMemorySink, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server's usage priced above what any call can cost is recorded as unknown with a
    warning per model; a server naming a new model in every answer must not grow the set of
    models warned about."""
    from tokenmeter import _record

    rates = {"input_per_mtok": 1, "output_per_mtok": 1}
    tokenmeter.configure(sinks=[sink], prices={f"m{n}": rates for n in range(10)})
    monkeypatch.setattr(_record, "MAX_COST_USD", Decimal("0.000001"))  # every call implausible
    monkeypatch.setattr(_record, "_MAX_WARNED_COST", 3, raising=False)
    monkeypatch.setattr(_record, "_warned_cost", set())
    records = [
        tokenmeter.record_response(
            {"model": f"m{n}", "usage": {"prompt_tokens": 1_000, "completion_tokens": 10}},
            provider="openai",
        )
        for n in range(10)
    ]
    assert all(r.estimated_cost_usd is None for r in records)
    warned = [m for m in caplog.messages if "more than any call can cost" in m]
    assert len(warned) == 3 and len(_record._warned_cost) == 3


def test_a_hand_recorded_call_keeps_a_price_above_what_an_answer_can_cost(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """One large batch job recorded by hand (4 G input, 1.5 G output of gpt-4o at batch rates)
    costs $12,500, as price() says: it was stored with no cost (the session's total $0, one
    unpriced call), the cap on a server's answers applied to counts the caller gave. It is kept
    up to what a record can store (64-bit pico-USD); a server's answer keeps the cap."""
    from tokenmeter.sinks import SQLiteSink

    sink = InMemorySink()
    db = tmp_path / "usage.db"
    tokenmeter.configure(sinks=[sink, SQLiteSink(db)])
    usage = {"input_tokens": 4_000_000_000, "output_tokens": 1_500_000_000}
    quoted = tokenmeter.price("openai", "gpt-4o", usage, tier="batch").total_usd
    assert quoted == Decimal(12_500)

    with tokenmeter.session("import-job") as job:
        rec = tokenmeter.record("openai", "gpt-4o", **usage, tier="batch")
        answer = {"model": "gpt-4o", "usage": {"prompt_tokens": 8_000_000_000}}
        from_server = tokenmeter.record_response(answer, provider="openai")
    tokenmeter.flush(10)

    assert rec.estimated_cost_usd == quoted
    assert (job.summary.cost_usd, job.summary.unpriced_calls) == (quoted, 1)
    assert from_server.estimated_cost_usd is None  # $20,000 of input: above the cap
    with sqlite3.connect(db) as conn:
        stored = conn.execute("SELECT estimated_cost_usd FROM records ORDER BY rowid").fetchall()
    assert [row[0] for row in stored] == ["12500", None]

    # Beyond what a record holds ($9.2 M), the cost is unknown, with a warning.
    huge = {"input_tokens": 10**12, "output_tokens": 10**12}
    assert tokenmeter.price("openai", "o1-pro", huge).total_usd > Decimal(10**7)
    assert tokenmeter.record("openai", "o1-pro", **huge).estimated_cost_usd is None
    assert any("more than a record holds" in m for m in caplog.messages)


def test_price_returns_decimal_and_none_for_unknown() -> None:
    cost = tokenmeter.price(
        "google",
        "gemini-2.5-pro",
        Usage(input_tokens=10_000, output_tokens=3_000, reasoning_tokens=2_000),
    )
    assert cost.total_usd == Decimal("0.0425")
    assert tokenmeter.price("openai", "no-such-model", {"input_tokens": 1}).total_usd is None
    with pytest.raises(ValueError, match="provider"):
        tokenmeter.price("", "gpt-4o", Usage())


def test_price_of_a_megabyte_model_name_keeps_the_cache_and_the_warning_short(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An unknown name is remembered (priced once, warned once): a megabyte of it is cut, as in a
    record, not kept whole in the price cache and written whole into the log."""
    from tokenmeter.pricing import _engine

    caplog.set_level(logging.WARNING, logger="tokenmeter")
    huge = "m" * 1_000_000
    assert tokenmeter.price("openai", huge, {"input_tokens": 1}).total_usd is None
    assert tokenmeter.price("\ud800" * 1_000, huge, {"input_tokens": 1}).total_usd is None
    warned = [m for m in caplog.messages if "no price known" in m]
    assert len(warned) == 2 and all(len(m) < 1_000 for m in warned)
    assert max(len(part or "") for key in _engine._entries for part in key[:2]) <= 500


def test_records_outside_sessions_belong_to_the_implicit_process_session(
    sink: InMemorySink,
) -> None:
    import os

    rec = tokenmeter.record("openai", "gpt-4o", 1, 1)
    assert tokenmeter.current_session() is None
    assert rec.session_id is not None
    assert rec.session_id.startswith("session_") and rec.session_id.endswith(f"_{os.getpid()}")
    assert tokenmeter.record("openai", "gpt-4o", 1, 1).session_id == rec.session_id


def test_ids_are_unique(sink: InMemorySink) -> None:
    ids = {tokenmeter.record("openai", "gpt-4o", 1, 1).id for _ in range(1000)}
    assert len(ids) == 1000


# -- bad input to the manual API: one-line ValueErrors that name what is wrong --------------------
@pytest.mark.parametrize(
    "model", [123, 1.5, True, ["gpt-4o"], {"name": "gpt-4o"}, "", "   "], ids=repr
)
def test_record_response_with_a_non_string_model_names_model(
    sink: InMemorySink, model: Any
) -> None:
    """A response's model is the record's name: anything but text is the caller's mistake to
    hear about (a ValueError naming it), not an AttributeError from deep inside."""
    usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    with pytest.raises(ValueError, match="model"):
        tokenmeter.record_response({"model": model, "usage": usage})
    assert tokenmeter.flush(5)
    assert sink.records == []


_BLANK_MODEL_BODIES = [
    (
        {
            "object": "chat.completion",
            "usage": {"prompt_tokens": 1000, "completion_tokens": 10, "total_tokens": 1010},
        },
        "gpt-4o-search-preview",
    ),
    (
        {"type": "message", "usage": {"input_tokens": 1000, "output_tokens": 10}},
        "claude-sonnet-4-5",
    ),
]


@pytest.mark.parametrize("served", ["", "   ", 5, ["gpt-4o"]], ids=repr)
@pytest.mark.parametrize(("body", "model"), _BLANK_MODEL_BODIES, ids=["openai", "anthropic"])
def test_record_response_of_a_blank_model_is_recorded_at_the_model_given(
    sink: InMemorySink, body: dict[str, Any], model: str, served: Any
) -> None:
    """A gateway's ``"model": ""`` (or a compatible server's 5 or list) names no model: a
    stored body given with ``model=`` is recorded at that model, priced as the same body naming
    it (a search model's fee included), as the metered SDK call with that answer is. It was
    refused ("must be a string, got ''"); without ``model=`` it still is."""
    blank = tokenmeter.record_response({**body, "model": served}, model=model)
    named = tokenmeter.record_response({**body, "model": model})
    assert blank.model_name == model
    assert blank.estimated_cost_usd is not None
    assert (blank.estimated_cost_usd, blank.cost_breakdown) == (
        named.estimated_cost_usd,
        named.cost_breakdown,
    )


@pytest.mark.parametrize("notes", [5, b"bytes", ["a"], {"a": 1}], ids=repr)
def test_session_notes_are_checked_when_the_session_is_made(notes: Any) -> None:
    """At construction, where the mistake is, not later on ``with`` (or never, as a decorator)."""
    with pytest.raises(ValueError, match="notes"):
        tokenmeter.session(notes=notes)


@pytest.mark.parametrize("estimated", ["no", 0, 1, None, "False"], ids=repr)
def test_record_estimated_must_be_a_bool(sink: InMemorySink, estimated: Any) -> None:
    with pytest.raises(ValueError, match="estimated"):
        tokenmeter.record("openai", "gpt-4o", 10, 5, estimated=estimated)
    assert tokenmeter.flush(5)
    assert sink.records == []


COUNT_FIELDS = [
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "reasoning_tokens",
]


@pytest.mark.parametrize("value", [2**63, True, 1.5, "3"], ids=["2**63", "True", "1.5", "'3'"])
@pytest.mark.parametrize("name", COUNT_FIELDS)
def test_record_refuses_impossible_counts_naming_the_field(
    sink: InMemorySink, name: str, value: Any
) -> None:
    """2**63 overflows SQLite's integers and every sum in a report; True, 1.5 and "3" are not
    token counts. Each is refused before anything is written, naming the field."""
    counts: dict[str, Any] = {"input_tokens": 100, "output_tokens": 50, name: value}
    with pytest.raises(ValueError, match=name) as raised:
        tokenmeter.record("openai", "gpt-4o", **counts)
    assert "\n" not in str(raised.value)
    assert tokenmeter.flush(5)
    assert sink.records == []


CHAT: dict[str, Any] = {"object": "chat.completion", "id": "c1", "model": "gpt-4o"}
CLAUDE: dict[str, Any] = {"type": "message", "id": "m1", "model": "claude-sonnet-4-5"}
GEMINI: dict[str, Any] = {"modelVersion": "gemini-2.5-flash"}


def unreadable(name: str, response: dict[str, Any], names: str, provider: str | None = None) -> Any:
    return pytest.param(response, provider, names, id=name)


@pytest.mark.parametrize(
    ("response", "provider", "names"),
    [
        unreadable("negative", {**CHAT, "usage": {"prompt_tokens": -5}}, "prompt_tokens"),
        unreadable("2**63", {**CHAT, "usage": {"prompt_tokens": 2**63}}, "prompt_tokens"),
        unreadable("1e300", {**CHAT, "usage": {"prompt_tokens": 1e300}}, "prompt_tokens"),
        unreadable("NaN", {**CHAT, "usage": {"prompt_tokens": float("nan")}}, "prompt_tokens"),
        unreadable(
            "many", {**CHAT, "usage": {"prompt_tokens": 9, "completion_tokens": "many"}}, "complet"
        ),
        unreadable("1 MB text", {**CHAT, "usage": {"prompt_tokens": "x" * 2**20}}, "prompt_tok"),
        unreadable(
            "cached > prompt",
            {**CHAT, "usage": {"prompt_tokens": 5, "prompt_tokens_details": {"cached_tokens": 9}}},
            "cache_read_tokens",
        ),
        unreadable(
            "details not an object",
            {**CHAT, "usage": {"prompt_tokens": 5, "prompt_tokens_details": "lots"}},
            "prompt_tokens_details",
        ),
        unreadable("usage null", {**CHAT, "usage": None}, "no usage"),
        unreadable("usage 1 MB text", {**CHAT, "usage": "lots" * 2**18}, "usage", "openai"),
        unreadable(
            "queued background response",
            {"object": "response", "status": "queued", "model": "gpt-4o", "usage": None},
            "queued",
        ),
        unreadable(
            "anthropic negative",
            {**CLAUDE, "usage": {"input_tokens": -1, "output_tokens": 1}},
            "input_tokens",
        ),
        unreadable(
            "anthropic cache read '7'",
            {**CLAUDE, "usage": {"input_tokens": 1, "cache_read_input_tokens": "7"}},
            "cache_read_input_tokens",
        ),
        unreadable(
            "gemini negative",
            {**GEMINI, "usageMetadata": {"promptTokenCount": -3}},
            "prompt_token_count",
        ),
        unreadable(
            "gemini 10**300",
            {**GEMINI, "usageMetadata": {"thoughtsTokenCount": 10**300}},
            "thoughts_token_count",
        ),
        unreadable("gemini usage text", {**GEMINI, "usageMetadata": "none"}, "usage_metadata"),
    ],
)
def test_record_response_with_unreadable_usage_says_why_in_one_line(
    sink: InMemorySink, response: dict[str, Any], provider: str | None, names: str
) -> None:
    """The caller handed us the response: unlike an intercepted call (recorded as
    UnreadableUsage), they hear why at once, in one short line, and nothing is written."""
    with pytest.raises(ValueError, match=names) as raised:
        tokenmeter.record_response(response, provider=provider)
    message = str(raised.value)
    assert "\n" not in message and len(message) < 300
    assert tokenmeter.flush(5)
    assert sink.records == []


def test_record_response_cleans_text_a_server_sent(sink: InMemorySink) -> None:
    """A response's text may hold what no sink can store: a lone surrogate, a megabyte."""
    usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    odd = tokenmeter.record_response({**CHAT, "model": "gpt-\ud800", "id": 7, "usage": usage})
    huge = tokenmeter.record_response(
        {**CHAT, "model": "g" * 2**20, "id": "i" * 2**20, "usage": usage}
    )
    assert (odd.model_name, odd.request_id) == ("gpt-\ufffd", "7")
    assert 0 < len(huge.model_name) <= 1_000 and 0 < len(huge.request_id or "") <= 1_000
    assert tokenmeter.flush(5)
    assert sink.records == [odd, huge]
    for record in sink.records:
        json.dumps(record.to_json_dict(), ensure_ascii=False).encode("utf-8")


def test_record_cleans_the_operation_for_every_sink(tmp_path: Any) -> None:
    """``operation`` is the caller's text: a lone surrogate in it made the SQLite and JSONL sinks
    refuse the record (set aside in quarantine), and a megabyte of it went into every sink."""
    from tokenmeter.sinks import JSONLSink, SQLiteSink

    tokenmeter.configure(
        sinks=[SQLiteSink(tmp_path / "u.db"), JSONLSink(tmp_path / "u.jsonl")],
        directory=str(tmp_path),
    )
    odd = tokenmeter.record("openai", "gpt-4o", 10, 5, operation="chat-\ud800")
    huge = tokenmeter.record("openai", "gpt-4o", 10, 5, operation="o" * 2**20)
    assert odd.operation == "chat-\ufffd"
    assert huge.operation is not None and 0 < len(huge.operation) <= 1_000
    assert tokenmeter.flush(30)
    assert not (tmp_path / "quarantine.jsonl").exists()
    assert len((tmp_path / "u.jsonl").read_text().splitlines()) == 2


# -- modality breakdown and server tool requests by hand -------------------------------------------
#: A Gemini image-generation answer as the API sends it (7 prompt tokens, one 1,290-token image).
GEMINI_IMAGE: dict[str, Any] = {
    "modelVersion": "gemini-2.5-flash-image",
    "candidates": [],
    "usageMetadata": {
        "promptTokenCount": 7,
        "candidatesTokenCount": 1290,
        "totalTokenCount": 1297,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 7}],
        "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": 1290}],
    },
}


def test_record_prices_modalities_like_an_intercepted_call(sink: InMemorySink) -> None:
    read = tokenmeter.record_response(GEMINI_IMAGE)
    by_hand = tokenmeter.record(
        "google",
        "gemini-2.5-flash-image",
        input_tokens=7,
        output_tokens=1290,
        modalities={"input_text": 7, "output_image": 1290},
    )
    assert by_hand.modalities == read.modalities == {"input_text": 7, "output_image": 1290}
    assert by_hand.cost_breakdown == read.cost_breakdown
    assert by_hand.estimated_cost_usd == read.estimated_cost_usd
    assert by_hand.cost_breakdown is not None
    assert by_hand.cost_breakdown["output_image"] == Decimal("0.0387")  # 1,290 x $30 / M
    assert tokenmeter.flush(5)
    assert [r.modalities for r in sink.records] == [read.modalities] * 2


def test_record_audio_modalities_fill_the_audio_counts(sink: InMemorySink) -> None:
    rec = tokenmeter.record(
        "openai",
        "gpt-4o-audio-preview",
        input_tokens=100,
        output_tokens=50,
        modalities={"input_audio": 80, "output_audio": 40},
    )
    plain = tokenmeter.record("openai", "gpt-4o-audio-preview", input_tokens=100, output_tokens=50)
    assert rec.cost_breakdown is not None
    assert set(rec.cost_breakdown) >= {"input_audio", "output_audio"}
    assert rec.estimated_cost_usd is not None and plain.estimated_cost_usd is not None
    assert rec.estimated_cost_usd > plain.estimated_cost_usd  # audio is dearer than text


def test_record_modalities_adding_up_beyond_their_total_are_a_value_error(
    sink: InMemorySink,
) -> None:
    """Each count by modality is a part of its total: 1000 text and 1000 audio tokens of an
    input of 1000 were recorded, all priced as audio and the text at nothing."""
    with pytest.raises(ValueError, match=r"^modalities: .*\(2000\) .* input \(1000\)$"):
        tokenmeter.record(
            "google",
            "gemini-2.5-flash",
            1000,
            100,
            modalities={"input_text": 1000, "input_audio": 1000},
        )
    assert tokenmeter.flush(5) and not sink.records
    fits = tokenmeter.record(
        "google", "gemini-2.5-flash", 1000, 100, modalities={"input_text": 600, "input_audio": 400}
    )
    assert fits.modalities == {"input_text": 600, "input_audio": 400}


def test_record_prices_server_tool_requests(sink: InMemorySink) -> None:
    rec = tokenmeter.record(
        "anthropic",
        "claude-sonnet-4-5",
        input_tokens=1000,
        output_tokens=100,
        tool_requests={"web_search": 3},
    )
    assert rec.tool_requests == {"web_search": 3}
    assert rec.cost_breakdown is not None
    assert rec.cost_breakdown["web_search"] == Decimal("0.03")  # $10 per 1,000 searches
    assert tokenmeter.flush(5)
    assert sink.records[0].tool_requests == {"web_search": 3}


@pytest.mark.parametrize("field", ["modalities", "tool_requests"])
@pytest.mark.parametrize(
    "bad",
    [-1, float("nan"), 1.5, "3", True, None, 10**13, 2**63],
    ids=["negative", "NaN", "float", "text", "bool", "None", "10**13", "2**63"],
)
def test_record_refuses_bad_part_counts_naming_the_field(
    sink: InMemorySink, field: str, bad: Any
) -> None:
    key = "input_image" if field == "modalities" else "web_search"
    with pytest.raises(ValueError, match=rf"{field}\['{key}'\]") as raised:
        tokenmeter.record("openai", "gpt-4o", 100, 50, **{field: {key: bad}})
    assert "\n" not in str(raised.value)
    # The range, both ends: "of at most 10**12" told nothing about -1.
    assert "from 0 to 1000000000000" in str(raised.value), raised.value
    assert tokenmeter.flush(5)
    assert sink.records == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"modalities": [("input_image", 1)]}, "modalities must be a dict"),
        ({"modalities": "input_image"}, "modalities must be a dict"),
        ({"tool_requests": 3}, "tool_requests must be a dict"),
        ({"modalities": {"input_pixels": 1}}, "modalities has an unknown key 'input_pixels'"),
        ({"modalities": {1: 1}}, "modalities has an unknown key 1"),
        ({"tool_requests": {"image_gen": 1}}, "tool_requests has an unknown key"),
        ({"modalities": {"input_image": 101}}, r"\['input_image'\] \(101\) cannot exceed"),
        ({"modalities": {"output_audio": 51}}, "cannot exceed output_tokens"),
        ({"modalities": {"cache_read_text": 1}}, "cannot exceed cache_read_tokens"),
    ],
)
def test_record_refuses_bad_parts(sink: InMemorySink, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        tokenmeter.record("openai", "gpt-4o", input_tokens=100, output_tokens=50, **kwargs)
    assert "\n" not in str(raised.value)
    assert tokenmeter.flush(5)
    assert sink.records == []


def test_record_refuses_a_huge_parts_dict(sink: InMemorySink) -> None:
    huge = {f"k{i}": 1 for i in range(100_000)}
    with pytest.raises(ValueError, match="tool_requests has 100000 keys"):
        tokenmeter.record("openai", "gpt-4o", 100, 50, tool_requests=huge)


@pytest.mark.parametrize(
    "timestamp",
    [
        datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5))),
        datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))),
        "9999-12-31T23:00:00-05:00",
        "0001-01-01T00:00:00+05:00",
    ],
    ids=["aware past year 9999", "aware before year 1", "ISO past 9999", "ISO before year 1"],
)
def test_record_with_a_timestamp_beyond_utc_is_a_value_error(
    sink: InMemorySink, timestamp: Any
) -> None:
    """A time whose UTC form falls outside years 1 to 9999 raised OverflowError from the
    conversion to UTC."""
    with pytest.raises(ValueError, match="timestamp") as raised:
        tokenmeter.record("openai", "gpt-4o", 10, 5, timestamp=timestamp)
    assert type(raised.value) is ValueError
    assert tokenmeter.flush(5)
    assert sink.records == []


@pytest.mark.parametrize("text", ["1" * 5_000, "2026-11-22T10:00:00" + " " * 100])
def test_record_with_a_long_timestamp_text_is_a_value_error(sink: InMemorySink, text: str) -> None:
    """Python reads 5,000 ones as 1111-11-11 11:11:11.111111: text far longer than any ISO-8601
    time is refused, not read as some date."""
    with pytest.raises(ValueError, match=r"^timestamp is not an ISO-8601 date/time"):
        tokenmeter.record("openai", "gpt-4o", 10, 5, timestamp=text)
    assert tokenmeter.flush(5)
    assert sink.records == []


@pytest.mark.parametrize(
    "timestamp", [datetime(2026, 11, 22, 10), "2026-11-22T10:00:00", "2026-11-22"]
)
def test_record_with_a_timestamp_without_a_time_zone_is_a_value_error(
    sink: InMemorySink, timestamp: Any
) -> None:
    """A naive time was read as UTC; Python's naive times are local (``datetime.now()``), so a
    call made now in Tokyo was recorded nine hours ahead, in another day's reports."""
    with pytest.raises(ValueError, match=r"^timestamp must say its time zone") as raised:
        tokenmeter.record("openai", "gpt-4o", 10, 5, timestamp=timestamp)
    assert "2026-11-22" in str(raised.value)
    assert tokenmeter.flush(5)
    assert sink.records == []


class FailingZone(tzinfo):
    """A caller's time zone whose offset cannot be found (a tz database that is missing)."""

    def utcoffset(self, dt: datetime | None) -> timedelta:
        raise RuntimeError("no offset")


def test_record_with_a_time_zone_that_fails_is_a_value_error(sink: InMemorySink) -> None:
    with pytest.raises(ValueError, match=r"^timestamp's time zone failed: RuntimeError"):
        tokenmeter.record(
            "openai", "gpt-4o", 10, 5, timestamp=datetime(2026, 1, 1, tzinfo=FailingZone())
        )
    assert tokenmeter.flush(5)
    assert sink.records == []


def test_price_at_a_time_zone_that_fails_is_a_value_error() -> None:
    """price(at=) let the tzinfo's own RuntimeError through, where record(timestamp=) names the
    argument; a naive time is still UTC there, an aware one still read in UTC."""
    usage = {"input_tokens": 1000}
    with pytest.raises(ValueError, match=r"^at's time zone failed: RuntimeError$"):
        tokenmeter.price("openai", "gpt-4o", usage, at=datetime(2026, 1, 1, tzinfo=FailingZone()))
    naive = tokenmeter.price("openai", "gpt-4o", usage, at=datetime(2026, 1, 1))
    aware = tokenmeter.price("openai", "gpt-4o", usage, at=datetime(2026, 1, 1, tzinfo=UTC))
    assert naive.total_usd == aware.total_usd == Decimal("0.0025")


def test_record_reads_the_longest_iso_timestamp(sink: InMemorySink) -> None:
    tokenmeter.record("openai", "gpt-4o", 10, 5, timestamp="2026-11-22T10:00:00.123456+05:30")
    assert tokenmeter.flush(5)
    assert sink.records[0].timestamp == datetime(2026, 11, 22, 4, 30, 0, 123456, tzinfo=UTC)


class _Int64:
    """An integer of another library (numpy's ``int64``, a pandas column's cell): an int by
    ``__index__``, not by type."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value


def test_record_takes_integers_of_other_libraries(sink: InMemorySink) -> None:
    """Counts summed with numpy (or read from a pandas frame) are ``numpy.int64``: refused as
    "not a whole number" although each is one."""
    rec = tokenmeter.record(
        "openai",
        "gpt-4o",
        _Int64(1000),
        _Int64(200),
        cache_read_tokens=_Int64(100),
        reasoning_tokens=_Int64(50),
        modalities={"input_image": _Int64(300)},
        tool_requests={"web_search": _Int64(2)},
    )
    counts = (rec.input_tokens, rec.output_tokens, rec.cache_read_tokens, rec.reasoning_tokens)
    assert counts == (1000, 200, 100, 50)
    assert all(type(n) is int for n in counts)
    assert rec.modalities == {"input_image": 300}
    assert type(rec.modalities["input_image"]) is int
    assert rec.tool_requests == {"web_search": 2}
    assert type(rec.tool_requests["web_search"]) is int
    assert tokenmeter.flush(5)
    assert [r.input_tokens for r in sink.records] == [1000]
    with pytest.raises(ValueError, match="input_tokens"):  # the checks still apply
        tokenmeter.record("openai", "gpt-4o", _Int64(-1), 0)


def test_price_takes_integers_of_other_libraries() -> None:
    given = tokenmeter.price(
        "openai",
        "gpt-4o",
        {"input_tokens": _Int64(1000), "output_tokens": _Int64(100), "modalities": {}},
    )
    assert given == tokenmeter.price(
        "openai", "gpt-4o", {"input_tokens": 1000, "output_tokens": 100}
    )
    with pytest.raises(ValueError, match=r"usage\.input_tokens"):
        tokenmeter.price("openai", "gpt-4o", {"input_tokens": _Int64(-1), "output_tokens": 0})
