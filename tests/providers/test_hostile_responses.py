"""Hostile server answers: whatever comes back, the caller gets the SDK's own result, and exactly
one record is written that every sink can store.

An OpenAI-compatible ``base_url`` can point at anything (a buggy proxy, a self-hosted server,
something hostile), and the official APIs have shipped surprising usage blocks too. tokenmeter
runs inside the caller's LLM call, so nothing such a server sends may become an exception of
ours, a lost record, a wedged sink or a made-up number: usage that cannot be read is recorded as
such (status "error", error "UnreadableUsage", cost unknown, the call still named by its model and
id), text is made storable (lone surrogates replaced, megabyte names cut), and the next call is
recorded as if nothing had happened.

Every reply is exact bytes through a MockTransport, so NaN, 2**63, 1e300 and lone surrogates
reach the real SDK as a server would send them. Each request is made once without tokenmeter
first: what the caller gets with tokenmeter must be the same, result or exception.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from anthropic import _base_client as anthropic_base
from google.genai import _api_client as genai_base
from openai import _base_client as openai_base
from provider_helpers import (
    MESSAGES,
    flushed,
    http_of,
    json_bytes,
    json_reply,
    mock_anthropic,
    mock_genai,
    only,
    sse_reply,
)

import tokenmeter
from tokenmeter import UsageRecord
from tokenmeter.sinks import InMemorySink

OPENAI_HTTP = http_of(openai_base)
ANTHROPIC_HTTP = http_of(anthropic_base)
GENAI_HTTP = http_of(genai_base)


class _Absent:
    """A key left out of the answer altogether (as opposed to sent as null)."""

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()
UNREADABLE = ("error", "UnreadableUsage")
MEGABYTE = 2**20


def assert_storable(record: UsageRecord) -> None:
    """Every text field encodes as UTF-8 and the whole record is small: what a sink can take."""
    line = json.dumps(record.to_json_dict(), ensure_ascii=False).encode("utf-8")
    assert len(line) < 10_000


def assert_estimated(record: UsageRecord, output: bool) -> None:
    """Recorded as an estimate: the request's input (and the output of the text that streamed by
    or came back), priced, flagged ``estimated``; never zero tokens passed off as reported."""
    assert (record.status, record.error, record.estimated) == ("ok", None, True)
    assert record.input_tokens > 0
    assert (record.output_tokens > 0) is output
    assert record.estimated_cost_usd is not None and record.estimated_cost_usd > 0


def assert_unreadable(record: UsageRecord) -> None:
    """Recorded, flagged, and never priced from numbers that were not read."""
    assert (record.status, record.error) == UNREADABLE
    assert record.estimated_cost_usd is None and record.cost_breakdown is None
    assert record.total_tokens == 0


def same(result: Any) -> list[tuple[type, str]]:
    """What a caller can observe of a result or of a list of stream items, comparable across two
    calls (repr, not model_dump: the SDKs keep values such as "many" that would not serialise)."""
    items = result if isinstance(result, list) else [result]
    return [(type(item), repr(item)) for item in items]


# -- an OpenAI-compatible server ------------------------------------------------------------------
SERVED = "gpt-4o-2024-08-06"
CHAT_ID = "chatcmpl-hostile"
USAGE: dict[str, Any] = {"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29}


@dataclass(frozen=True)
class Chat:
    """What the server puts in every chat answer (and every chunk of a streamed one)."""

    model: Any = SERVED
    id: Any = CHAT_ID
    usage: Any = field(default_factory=lambda: dict(USAGE))


OPENAI_ANSWERS = {
    "lone surrogate model": Chat(model="gpt-\ud800"),
    # PostgreSQL refuses a NUL in text: it must never reach a sink.
    "NUL in model and id": Chat(model=f"{SERVED}\x00", id=f"{CHAT_ID}\x00"),
    "1 MB model": Chat(model="g" * MEGABYTE),
    "blank model": Chat(model=" \n"),
    # The SDKs pass a model that is not text on unchecked: it names none, as a blank one.
    "numeric model": Chat(model=5),
    "list model": Chat(model=["gpt-4o"]),
    "numeric id": Chat(id=12345),
    "count 2**63": Chat(usage={**USAGE, "prompt_tokens": 2**63}),
    "count 1e300": Chat(usage={**USAGE, "completion_tokens": 1e300}),
    "count -5": Chat(usage={**USAGE, "prompt_tokens": -5}),
    "count 'many'": Chat(usage={**USAGE, "completion_tokens": "many"}),
    "count NaN": Chat(usage={**USAGE, "prompt_tokens": math.nan}),
    "cached > prompt": Chat(usage={**USAGE, "prompt_tokens_details": {"cached_tokens": 20}}),
    "usage missing": Chat(usage=ABSENT),
    "usage null": Chat(usage=None),
}
BAD_TEXT = {
    "lone surrogate model",
    "NUL in model and id",
    "1 MB model",
    "blank model",
    "numeric model",
    "list model",
    "numeric id",
}
#: No model named (blank, or not text): recorded at the one asked for, usage and price kept.
NO_MODEL = {"blank model", "numeric model", "list model"}
#: No usage at all (a server that sends none): an estimate, never a silent zero.
NO_USAGE = {"usage missing", "usage null"}


class OpenAICompatible:
    """Answers chat completions with one ``Chat``'s model, id and usage, streamed or not. The
    usage-only chunk comes only when ``include_usage`` is asked for (as OpenAI sends it); a
    usage of null is sent on every chunk, as servers that ignore the option do."""

    def __init__(self, answer: Chat) -> None:
        self.answer = answer

    def __call__(self, request: Any) -> Any:
        sent = json.loads(request.content)
        answer = self.answer
        head = {"id": answer.id, "created": 1, "model": answer.model}
        if not sent.get("stream"):
            body = {
                **head,
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "Hello!"},
                        "finish_reason": "stop",
                    }
                ],
            }
            if answer.usage is not ABSENT:
                body["usage"] = answer.usage
            return json_reply(OPENAI_HTTP, body)
        chunk: dict[str, Any] = {
            **head,
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": None}],
        }
        if answer.usage is None:
            chunk["usage"] = None
        chunks = [chunk, chunk, chunk]
        asked = (sent.get("stream_options") or {}).get("include_usage")
        if asked and answer.usage is not None and answer.usage is not ABSENT:
            chunks.append({**head, "object": chunk["object"], "choices": [], "usage": answer.usage})
        return sse_reply(OPENAI_HTTP, [*((None, c) for c in chunks), (None, b"[DONE]")])


def compatible_client(answer: Chat, kit: ModuleType, is_async: bool) -> Any:
    return kit.mock_openai(
        OpenAICompatible(answer),
        is_async=is_async,
        base_url="http://llm.example.invalid/v1",
        max_retries=0,
    )


async def chat(
    client: Any, kit: ModuleType, stream: bool, stream_options: dict[str, Any] | None
) -> Any:
    """One chat call as the caller makes it: the result, or every chunk of the stream."""
    extra = {"stream_options": stream_options} if stream_options else {}
    result = await kit.maybe(
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=stream, **extra)
    )
    return list(await kit.drain(result)) if stream else result


#: (stream, stream_options): a JSON answer; a stream whose caller asks for usage (and sees the
#: usage chunk); a stream where tokenmeter asks for it (and hides the chunk it asked for).
OPENAI_MODES = [
    pytest.param(False, None, id="json"),
    pytest.param(True, {"include_usage": True}, id="stream-caller-asks-usage"),
    pytest.param(True, None, id="stream-tokenmeter-asks-usage"),
]


@pytest.mark.parametrize(("stream", "stream_options"), OPENAI_MODES)
@pytest.mark.parametrize("case", list(OPENAI_ANSWERS))
async def test_openai_compatible_server(
    sink: InMemorySink,
    kit: ModuleType,
    is_async: bool,
    case: str,
    stream: bool,
    stream_options: dict[str, Any] | None,
) -> None:
    answer = OPENAI_ANSWERS[case]
    client = compatible_client(answer, kit, is_async)
    bare = await chat(client, kit, stream, stream_options)
    tokenmeter.instrument("openai")

    seen = await chat(client, kit, stream, stream_options)

    assert same(seen) == same(bare)  # the SDK's own result, chunk for chunk, garbage included
    record = only(flushed(sink))
    assert_storable(record)
    assert record.model_provider == "openai" and record.request_model == "gpt-4o"
    assert record.streamed is stream and record.operation == "chat.completions"
    if case in NO_USAGE:  # the answer's text, streamed or not, is its output
        assert_estimated(record, output=True)
        assert (record.model_name, record.request_id) == (SERVED, CHAT_ID)
        return
    if case not in BAD_TEXT:
        assert_unreadable(record)
        assert (record.model_name, record.request_id) == (SERVED, CHAT_ID)  # still named
        return
    assert (record.status, record.error) == ("ok", None)
    assert (record.input_tokens, record.output_tokens) == (19, 10)
    if case == "lone surrogate model":
        assert record.model_name == "gpt-\ufffd"
    elif case == "NUL in model and id":  # replaced as a lone surrogate is
        assert (record.model_name, record.request_id) == (f"{SERVED}\ufffd", f"{CHAT_ID}\ufffd")
    elif case == "1 MB model":
        assert 0 < len(record.model_name) <= 1_000
        assert answer.model.startswith(record.model_name)
    elif case in NO_MODEL:  # no name: the one asked for, priced (as for a null model)
        assert record.model_name == "gpt-4o"
        assert record.estimated_cost_usd is not None and record.estimated_cost_usd > 0
    else:
        assert record.request_id == "12345"
        assert record.estimated_cost_usd is not None and record.estimated_cost_usd > 0


def test_an_application_logging_setup_that_raises_never_reaches_its_call(
    kit: ModuleType, sink: InMemorySink
) -> None:
    """Reading an unreadable usage logs a warning on the caller's thread; an application whose
    logging filter raises got that error from its own LLM call (our fault report raised too)."""

    class Broken(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            raise RuntimeError("the application's logging is broken")

    broken = Broken()
    logging.getLogger("tokenmeter").addFilter(broken)
    try:
        tokenmeter.instrument("openai")
        client = compatible_client(OPENAI_ANSWERS["cached > prompt"], kit, is_async=False)
        answer = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    finally:
        logging.getLogger("tokenmeter").removeFilter(broken)
    assert answer.choices[0].message.content == "Hello!"
    assert_unreadable(only(flushed(sink)))


def test_hostile_answers_never_wedge_the_default_sqlite_sink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kit: ModuleType
) -> None:
    """The default sink (SQLite under TOKENMETER_DIR) takes every hostile call's record, and the
    normal call after them is written too."""
    monkeypatch.setenv("TOKENMETER_DIR", str(tmp_path / "meter"))
    tokenmeter.instrument("openai")
    hostile = ["lone surrogate model", "1 MB model", "numeric id", "count 2**63", "count NaN"]
    hostile += ["cached > prompt", "usage null"]
    for case in hostile:
        client = compatible_client(OPENAI_ANSWERS[case], kit, is_async=False)
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    normal = compatible_client(Chat(id="chatcmpl-normal"), kit, is_async=False)
    normal.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert tokenmeter.flush(10)

    database = tmp_path / "meter" / "usage.db"
    with sqlite3.connect(database) as conn:
        rows = conn.execute(
            "SELECT model_name, status, error, estimated_cost_usd, request_id FROM records"
        ).fetchall()
    conn.close()
    assert len(rows) == 2 * len(hostile) + 1
    (last,) = [row for row in rows if row[4] == "chatcmpl-normal"]
    assert last[:3] == (SERVED, "ok", None) and last[3] is not None
    unreadable = [row for row in rows if row[1:3] == UNREADABLE]
    assert len(unreadable) == 2 * 3 and all(row[3] is None for row in unreadable)
    assert {row[0] for row in rows} >= {"gpt-\ufffd", SERVED}
    assert max(len(row[0]) for row in rows) <= 1_000
    assert not (tmp_path / "meter" / "quarantine.jsonl").exists()  # no record was refused


async def test_a_nul_in_any_text_field_never_reaches_a_sink(
    sink: InMemorySink, kit: ModuleType, is_async: bool
) -> None:
    """NUL in the served and requested model, the response id, the session's name, id and tags,
    and the error a stream reports: each replaced (U+FFFD), never handed to a sink."""
    error = {"type": "error", "code": "boom\x00", "message": "x", "param": None}
    events = [
        (
            "response.created",
            {
                "type": "response.created",
                "response": {
                    **response_body("in_progress", None),
                    "model": "gpt-4o\x00",
                    "id": "resp_\x00",
                },
            },
        ),
        ("error", {**error, "sequence_number": 1}),
    ]
    client = kit.mock_openai(lambda request: sse_reply(OPENAI_HTTP, events), is_async=is_async)
    tokenmeter.instrument("openai")

    tags = {"team\x00": "a\x00b"}
    with tokenmeter.session("nul\x00name", id="nul\x00id", tags=tags):
        stream = await kit.maybe(
            client.responses.create(model="gpt-4o-mini\x00", input="hi", stream=True)
        )
        await kit.drain(stream)

    record = only(flushed(sink))
    assert (record.status, record.error) == ("error", "boom\ufffd")
    assert (record.model_name, record.request_model) == ("gpt-4o\ufffd", "gpt-4o-mini\ufffd")
    assert (record.session_name, record.session_id) == ("nul\ufffdname", "nul\ufffdid")
    assert (record.request_id, record.tags) == ("resp_\ufffd", {"team\ufffd": "a\ufffdb"})
    assert "\\u0000" not in json.dumps(record.to_json_dict())


# -- the Responses API: a queued background create is not a call yet ----------------------------
RESPONSE_USAGE = {"input_tokens": 19, "output_tokens": 10, "total_tokens": 29}


def response_body(status: str, usage: Any) -> dict[str, Any]:
    return {
        "id": "resp_hostile",
        "object": "response",
        "created_at": 1,
        "status": status,
        "model": SERVED,
        "output": [],
        "background": status == "queued",
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": usage,
    }


@pytest.mark.requires(openai=">=1.80")  # background responses
async def test_queued_background_create_is_not_a_call_yet_but_a_chat_without_usage_is(
    sink: InMemorySink, kit: ModuleType, is_async: bool
) -> None:
    """A queued create has no usage because nothing is billed yet: its retrieve is the record.
    A chat completion is billed when it returns: without usage it is recorded as an estimate,
    never dropped."""

    def server(request: Any) -> Any:
        if request.url.path.endswith("/chat/completions"):
            return OpenAICompatible(Chat(usage=ABSENT))(request)
        if request.method == "POST":
            return json_reply(OPENAI_HTTP, response_body("queued", None))
        return json_reply(OPENAI_HTTP, response_body("completed", RESPONSE_USAGE))

    client = kit.mock_openai(server, is_async=is_async, max_retries=0)
    tokenmeter.instrument("openai")
    queued = await kit.maybe(client.responses.create(model="gpt-4o", input="hi", background=True))
    assert queued.status == "queued" and queued.usage is None
    assert flushed(sink) == []

    done = await kit.maybe(client.responses.retrieve(queued.id))
    assert done.usage.input_tokens == 19
    retrieved = only(flushed(sink))
    assert (retrieved.status, retrieved.operation) == ("ok", "responses")
    assert (retrieved.request_id, retrieved.input_tokens, retrieved.output_tokens) == (
        queued.id,
        19,
        10,
    )

    await kit.maybe(client.chat.completions.create(model="gpt-4o", messages=MESSAGES))
    records = flushed(sink)
    assert len(records) == 2 and records[0] == retrieved
    assert_estimated(records[1], output=True)  # its "Hello!"
    assert (records[1].operation, records[1].request_id) == ("chat.completions", CHAT_ID)


@pytest.mark.parametrize("status", ["queued", "in_progress"])
async def test_create_that_asked_no_background_is_recorded_though_said_to_run_on(
    sink: InMemorySink, kit: ModuleType, is_async: bool, status: str
) -> None:
    """Only a create that asked for ``background`` runs on to a retrieve that records it. One
    that did not, answered as still running without usage (a compatible server), was dropped:
    no retrieve would ever come. It is an estimate. ``extra_body`` asks as the argument does."""

    def server(request: Any) -> Any:
        if request.method == "POST":
            background = json.loads(request.content).get("background") is True
            body = {**response_body(status, None), "background": background}
            return json_reply(OPENAI_HTTP, {**body, "id": "resp_bg"} if background else body)
        return json_reply(
            OPENAI_HTTP, {**response_body("completed", RESPONSE_USAGE), "id": "resp_bg"}
        )

    client = kit.mock_openai(server, is_async=is_async, max_retries=0)
    tokenmeter.instrument("openai")
    await kit.maybe(client.responses.create(model="gpt-4o", input="hi"))
    record = only(flushed(sink))
    assert_estimated(record, output=False)
    assert (record.request_id, record.request_model) == ("resp_hostile", "gpt-4o")

    asked = {"background": True}
    await kit.maybe(client.responses.create(model="gpt-4o", input="hi", extra_body=asked))
    assert flushed(sink) == [record]  # runs on: its retrieve is the record
    await kit.maybe(client.responses.retrieve("resp_bg"))
    retrieved = flushed(sink)[1]
    assert (retrieved.input_tokens, retrieved.request_model) == (19, "gpt-4o")


async def test_embeddings_whose_total_exceeds_the_prompt_are_unreadable(
    sink: InMemorySink, kit: ModuleType, is_async: bool
) -> None:
    """An embedding has no output: a total beyond the prompt was stored as 5,000 output tokens
    that no embedding model prices, a billed call at $0. Unreadable: recorded, cost unknown."""
    body = {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1]}],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 0, "total_tokens": 5000},
    }
    client = kit.mock_openai(lambda request: json_reply(OPENAI_HTTP, body), is_async=is_async)
    tokenmeter.instrument("openai")
    await kit.maybe(client.embeddings.create(model="text-embedding-3-small", input="hi"))
    assert_unreadable(only(flushed(sink)))


@pytest.mark.parametrize("status", ["completed", "incomplete"])
async def test_finished_response_without_usage_is_estimated(
    sink: InMemorySink, kit: ModuleType, is_async: bool, status: str
) -> None:
    """Unlike a queued one, a finished response was billed: without usage it is estimated."""
    client = kit.mock_openai(
        lambda request: json_reply(OPENAI_HTTP, response_body(status, None)),
        is_async=is_async,
        max_retries=0,
    )
    tokenmeter.instrument("openai")
    await kit.maybe(client.responses.create(model="gpt-4o", input="hi"))
    record = only(flushed(sink))
    assert_estimated(record, output=False)
    assert (record.model_name, record.request_id) == (SERVED, "resp_hostile")


@pytest.mark.parametrize("model", [None, "", 5])
async def test_a_retrieve_that_names_no_model_is_recorded(
    sink: InMemorySink, kit: ModuleType, is_async: bool, model: Any
) -> None:
    """A retrieve has no request model to fall back on: billed all the same, it is recorded
    under "unknown" (with an unknown cost), never lost."""
    body = {**response_body("completed", RESPONSE_USAGE), "model": model, "background": True}
    client = kit.mock_openai(lambda request: json_reply(OPENAI_HTTP, body), is_async=is_async)
    tokenmeter.instrument("openai")
    await kit.maybe(client.responses.retrieve("resp_hostile"))
    record = only(flushed(sink))
    assert (record.model_name, record.request_id) == ("unknown", "resp_hostile")
    assert (record.input_tokens, record.output_tokens) == (19, 10)
    assert record.estimated_cost_usd is None


@pytest.mark.parametrize(
    "streamed",
    # retrieve(stream=True) replays a response's events from openai 1.82
    [False, pytest.param(True, marks=pytest.mark.requires(openai=">=1.82"))],
    ids=["json", "stream"],
)
async def test_a_retrieve_of_a_response_made_in_the_foreground_is_no_call(
    sink: InMemorySink, kit: ModuleType, is_async: bool, streamed: bool
) -> None:
    """A response created without ``background`` was billed at its create; reading it again
    (a worker or a restarted process, which has not recorded its id) is not billed, and was
    recorded a second time with the whole usage (a streamed retrieve still was: $0.075 for a
    response of 10,000 input and 5,000 output tokens)."""
    body = response_body("completed", RESPONSE_USAGE)
    assert body["background"] is False
    events = [
        ("response.created", {"type": "response.created", "response": {**body, "usage": None}}),
        ("response.completed", {"type": "response.completed", "response": body}),
    ]

    def server(request: Any) -> Any:
        if request.url.params.get("stream") == "true":
            return sse_reply(OPENAI_HTTP, events)
        return json_reply(OPENAI_HTTP, body)

    client = kit.mock_openai(server, is_async=is_async)
    tokenmeter.instrument("openai")
    asked = {"stream": True} if streamed else {}  # openai before 1.82 takes no stream argument
    answer = await kit.maybe(client.responses.retrieve("resp_hostile", **asked))
    if streamed:
        assert [event.type for event in await kit.drain(answer)] == [kind for kind, _ in events]
    assert flushed(sink) == []


async def test_every_create_is_recorded_even_when_a_server_repeats_its_response_id(
    sink: InMemorySink, kit: ModuleType, is_async: bool
) -> None:
    """Each POST /responses is a billed call, whatever id a compatible server gives it; only a
    retrieve of an id already recorded is the same call again."""
    done = response_body("completed", RESPONSE_USAGE)

    def server(request: Any) -> Any:
        if request.method == "POST" and json.loads(request.content).get("stream"):
            event = {"type": "response.completed", "response": done}
            return sse_reply(OPENAI_HTTP, [(event["type"], event)])
        return json_reply(OPENAI_HTTP, done)

    client = kit.mock_openai(server, is_async=is_async)
    tokenmeter.instrument("openai")
    for _ in range(3):
        await kit.maybe(client.responses.create(model="gpt-4o", input="hi"))
    await kit.drain(
        await kit.maybe(client.responses.create(model="gpt-4o", input="hi", stream=True))
    )
    await kit.maybe(client.responses.retrieve("resp_hostile"))
    records = flushed(sink)
    assert [r.request_id for r in records] == ["resp_hostile"] * 4
    assert [r.streamed for r in records] == [False, False, False, True]


async def test_a_raw_response_whose_body_cannot_be_read_is_recorded_at_once(
    sink: InMemorySink, kit: ModuleType, is_async: bool
) -> None:
    """``with_raw_response`` on a billed answer that is not JSON: the record is written when the
    call returns, not when the raw response is collected (an application that keeps the parse
    error keeps the raw response alive)."""
    client = kit.mock_openai(
        lambda request: OPENAI_HTTP.Response(
            200, content=b"{not json", headers={"content-type": "application/json"}
        ),
        is_async=is_async,
    )
    tokenmeter.instrument("openai")
    raw = await kit.maybe(
        client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    )
    with pytest.raises(json.JSONDecodeError):
        await kit.maybe(raw.parse())
    record = only(flushed(sink))  # raw is still alive here
    assert_unreadable(record)
    assert record.model_name == "gpt-4o"


#: Success answers whose body the SDK cannot parse: one cut short by a proxy (its length right,
#: so no transport error), a gateway's HTML page served as JSON.
UNPARSABLE = {
    "cut short": json_bytes({"id": CHAT_ID, "model": SERVED, "usage": USAGE})[:40],
    "HTML page": b"<html><body>502 Bad Gateway</body></html>",
}


def unparsable_call(
    kit: ModuleType, is_async: bool, sdk: str, status: int, body: bytes
) -> Callable[[], Any]:
    """A plain ``create`` of ``sdk`` that a server answers with ``status`` and ``body``."""
    http = OPENAI_HTTP if sdk == "openai" else ANTHROPIC_HTTP

    def reply(request: Any) -> Any:
        return http.Response(status, content=body, headers={"content-type": "application/json"})

    if sdk == "openai":
        client = kit.mock_openai(reply, is_async=is_async, max_retries=0)
        return lambda: client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    client = mock_anthropic(reply, is_async=is_async)
    return lambda: client.messages.create(
        model="claude-haiku-4-5", max_tokens=100, messages=MESSAGES
    )


@pytest.mark.parametrize("status", [200, 502])
@pytest.mark.parametrize("body", list(UNPARSABLE))
@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
async def test_a_success_answer_the_sdk_cannot_parse_has_an_unknown_cost_not_zero(
    sink: InMemorySink, kit: ModuleType, is_async: bool, sdk: str, body: str, status: int
) -> None:
    """A 2xx means the provider ran the request: a body the SDK then fails to parse was recorded
    as an error costing exactly $0 (not flagged), where the very same answer read through
    ``with_raw_response`` is unreadable usage with an unknown cost. Now both are unknown, the
    error still the exception's name. The caller gets the SDK's own exception either way. An
    error status with the same body is the provider refusing the call: $0, as before."""
    call = unparsable_call(kit, is_async, sdk, status, UNPARSABLE[body])
    with pytest.raises(Exception) as bare:
        await kit.maybe(call())
    tokenmeter.instrument(sdk)

    with pytest.raises(Exception) as seen:
        await kit.maybe(call())

    assert (type(seen.value), str(seen.value)) == (type(bare.value), str(bare.value))
    record = only(flushed(sink))
    assert (record.status, record.error) == ("error", type(bare.value).__name__)
    assert not record.estimated and record.total_tokens == 0
    if status == 200:
        assert record.estimated_cost_usd is None and record.cost_breakdown is None
    else:
        assert record.estimated_cost_usd == 0


def cut_after(chunks: int) -> Any:
    """A chat stream that sends ``chunks`` chunks of text, then breaks (a dropped connection)."""

    def stream(request: Any) -> Any:
        def body() -> Any:
            for _ in range(chunks):
                chunk = {
                    "id": CHAT_ID,
                    "created": 1,
                    "model": SERVED,
                    "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": {"content": "word "}, "finish_reason": None}],
                }
                yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
            raise OPENAI_HTTP.ReadError("Connection reset")

        return OPENAI_HTTP.Response(
            200, content=body(), headers={"content-type": "text/event-stream"}
        )

    return stream


@pytest.mark.parametrize("chunks", [0, 5])
def test_a_stream_cut_after_it_sent_text_is_estimated(
    sink: InMemorySink, kit: ModuleType, chunks: int
) -> None:
    """A stream cut before its usage came, once the provider answered, was billed: an error
    record with an estimate, never a cost of 0. Cut before any text, its input (it was $0,
    where the application closing the stream at the same point gave an estimate)."""
    client = kit.mock_openai(cut_after(chunks), max_retries=0)
    tokenmeter.instrument("openai")
    stream = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    with pytest.raises(Exception, match="onnection") as raised:  # the SDK's or httpx's error
        for _ in stream:
            pass
    record = only(flushed(sink))
    assert (record.status, record.error) == ("error", type(raised.value).__name__)
    assert record.streamed
    if chunks:
        assert record.estimated and record.output_tokens >= chunks and record.input_tokens > 0
        assert record.estimated_cost_usd is not None and record.estimated_cost_usd > 0
    else:
        assert record.estimated and record.input_tokens > 0 and record.output_tokens == 0
        assert record.estimated_cost_usd is not None and record.estimated_cost_usd > 0


async def responses_stream(client: Any, kit: ModuleType) -> list[Any]:
    stream = await kit.maybe(client.responses.create(model="gpt-4o", input="hi", stream=True))
    return list(await kit.drain(stream))


@pytest.mark.parametrize("usage", [None, {**RESPONSE_USAGE, "input_tokens": -1}])
async def test_responses_stream_completed_without_readable_usage(
    sink: InMemorySink, kit: ModuleType, is_async: bool, usage: Any
) -> None:
    """The completed event carries the response's usage: none is estimated (never zero tokens
    passed off as reported); one that cannot be read is recorded as unreadable usage."""
    events = [
        {"type": "response.created", "response": response_body("in_progress", None)},
        {"type": "response.completed", "response": response_body("completed", usage)},
    ]

    def server(request: Any) -> Any:
        numbered = [{**event, "sequence_number": n} for n, event in enumerate(events)]
        return sse_reply(OPENAI_HTTP, [(event["type"], event) for event in numbered])

    client = kit.mock_openai(server, is_async=is_async, max_retries=0)
    bare = await responses_stream(client, kit)
    tokenmeter.instrument("openai")
    seen = await responses_stream(client, kit)
    assert same(seen) == same(bare)
    record = only(flushed(sink))
    if usage is None:
        assert_estimated(record, output=False)
    else:
        assert_unreadable(record)
    assert record.streamed and (record.model_name, record.request_id) == (SERVED, "resp_hostile")


#: A reply of about 500 tokens, for the answers whose usage counts the prompt alone.
LONG_REPLY = "The quick brown fox jumps over the lazy dog. " * 45


def _chat_counting_the_prompt_alone(kit: ModuleType, stream: bool) -> None:
    """One chat call answered with ``LONG_REPLY`` and the usage ``{"prompt_tokens": 100}``."""
    usage = {"prompt_tokens": 100}
    head = {"id": CHAT_ID, "created": 1, "model": SERVED}
    if stream:
        delta = {"index": 0, "delta": {"content": LONG_REPLY}, "finish_reason": "stop"}
        chunks = [
            {**head, "object": "chat.completion.chunk", "choices": [delta]},
            {**head, "object": "chat.completion.chunk", "choices": [], "usage": usage},
        ]
        reply = sse_reply(OPENAI_HTTP, [*((None, c) for c in chunks), (None, b"[DONE]")])
    else:
        message = {"role": "assistant", "content": LONG_REPLY}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        body = {**head, "object": "chat.completion", "choices": [choice], "usage": usage}
        reply = json_reply(OPENAI_HTTP, body)
    client = kit.mock_openai(lambda request: reply)
    answer = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=stream)
    if stream:
        list(answer)


def _taken(sink: InMemorySink) -> list[UsageRecord]:
    """The records written since the last look (taken out of ``sink``)."""
    records = flushed(sink)
    sink.records.clear()
    return records


def test_a_reply_whose_usage_counts_the_prompt_alone_has_its_output_estimated(
    sink: InMemorySink, kit: ModuleType
) -> None:
    """An OpenAI-compatible answer whose usage gives the input count and nothing else (no
    output count, no total): not streamed, it was recorded 100 in / 0 out, ``estimated: false``,
    $0.00025 for a reply of about 500 tokens; streamed, the same answer was estimated (100 /
    506, $0.00531). Both now are, alike; Responses' ``{"input_tokens": 100}`` too. A count
    that is there (0 included) is the provider's, and an embedding has no output."""
    tokenmeter.instrument("openai")
    records = []
    for stream in (False, True):
        _chat_counting_the_prompt_alone(kit, stream)
        records.append(only(_taken(sink)))
    json_record, streamed = records
    assert (json_record.status, json_record.estimated, json_record.input_tokens) == (
        "ok",
        True,
        100,
    )
    assert json_record.output_tokens > 400
    assert (json_record.output_tokens, json_record.estimated_cost_usd) == (
        streamed.output_tokens,
        streamed.estimated_cost_usd,
    )

    output = [{"type": "output_text", "text": LONG_REPLY, "annotations": []}]
    item = {"type": "message", "id": "m1", "status": "completed", "role": "assistant"}
    body = {
        **response_body("completed", {"input_tokens": 100}),
        "output": [{**item, "content": output}],
    }
    client = kit.mock_openai(lambda request: json_reply(OPENAI_HTTP, body))
    client.responses.create(model="gpt-4o", input="hi")
    record = only(_taken(sink))
    assert (record.estimated, record.input_tokens) == (True, 100)
    assert (record.output_tokens, record.estimated_cost_usd) == (
        streamed.output_tokens,
        streamed.estimated_cost_usd,
    )

    counted = {"prompt_tokens": 100, "completion_tokens": 0, "total_tokens": 100}
    message = {"role": "assistant", "content": LONG_REPLY}
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    body = {"id": CHAT_ID, "created": 1, "model": SERVED, "object": "chat.completion"}
    reply = json_reply(OPENAI_HTTP, {**body, "choices": [choice], "usage": counted})
    kit.mock_openai(lambda request: reply).chat.completions.create(
        model="gpt-4o", messages=MESSAGES
    )
    record = only(_taken(sink))
    assert (record.estimated, record.output_tokens) == (False, 0)

    embedded = {
        "object": "list",
        "model": "text-embedding-3-small",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1]}],
        "usage": {"prompt_tokens": 8},
    }
    client = kit.mock_openai(lambda request: json_reply(OPENAI_HTTP, embedded))
    client.embeddings.create(model="text-embedding-3-small", input="hi")
    record = only(_taken(sink))
    assert (record.estimated, record.input_tokens, record.output_tokens) == (False, 8, 0)


# -- Anthropic ------------------------------------------------------------------------------------
CLAUDE = "claude-haiku-4-5"
CLAUDE_SERVED = "claude-haiku-4-5-20251001"
MESSAGE_ID = "msg_hostile"
CLAUDE_USAGE: dict[str, Any] = {"input_tokens": 25, "output_tokens": 12}


@dataclass(frozen=True)
class Message:
    """An Anthropic answer; ``final`` is the usage of a stream's ``message_delta`` (its
    cumulative totals), by default the same output count as ``usage``."""

    model: Any = CLAUDE_SERVED
    usage: Any = field(default_factory=lambda: dict(CLAUDE_USAGE))
    final: Any = None


ANTHROPIC_ANSWERS = {
    "negative input_tokens": Message(usage={**CLAUDE_USAGE, "input_tokens": -5}),
    "cache_read_input_tokens 'seven'": Message(
        usage={**CLAUDE_USAGE, "cache_read_input_tokens": "seven"}
    ),
    "cache_read_input_tokens '7'": Message(usage={**CLAUDE_USAGE, "cache_read_input_tokens": "7"}),
    "lone surrogate model": Message(model="claude-\ud800"),
    "numeric model": Message(model=5),
    "list model": Message(model=[CLAUDE_SERVED]),
    "message_delta output_tokens -3": Message(final={"output_tokens": -3}),
    "message_delta usage 'many'": Message(final="many"),
    # The closing count never came: message_start's (a token) is no count of the reply.
    "message_delta without usage": Message(
        usage={**CLAUDE_USAGE, "output_tokens": 1}, final=ABSENT
    ),
    "message_delta output_tokens null": Message(
        usage={**CLAUDE_USAGE, "output_tokens": 1}, final={"output_tokens": None}
    ),
    # Required counts sent as null: unknown, never a silent zero.
    "input_tokens null": Message(usage={**CLAUDE_USAGE, "input_tokens": None}),
    "usage null": Message(usage=None, final={"output_tokens": 12}),
}
#: A non-streamed answer has no message_delta: the case exists only as a stream.
STREAM_ONLY = {
    "message_delta output_tokens -3",
    "message_delta usage 'many'",
    "message_delta without usage",
    "message_delta output_tokens null",
}
#: The closing output count never came: the output that streamed by is estimated.
NO_CLOSING_COUNT = {"message_delta without usage", "message_delta output_tokens null"}


class AnthropicServer:
    """Answers messages with one ``Message``: JSON, or the event stream Anthropic sends."""

    def __init__(self, answer: Message) -> None:
        self.answer = answer

    def __call__(self, request: Any) -> Any:
        answer = self.answer
        message = {
            "id": MESSAGE_ID,
            "type": "message",
            "role": "assistant",
            "model": answer.model,
            "content": [{"type": "text", "text": "hi"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": answer.usage,
        }
        if not json.loads(request.content).get("stream"):
            return json_reply(ANTHROPIC_HTTP, message)
        final = answer.final or {"output_tokens": answer.usage["output_tokens"]}
        events = [
            {"type": "message_start", "message": {**message, "content": []}},
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "hi"},
            },
            {"type": "content_block_stop", "index": 0},
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": final,
            },
            {"type": "message_stop"},
        ]
        if final is ABSENT:
            del events[-2]["usage"]
        return sse_reply(ANTHROPIC_HTTP, [(event["type"], event) for event in events])


async def anthropic_call(client: Any, kit: ModuleType, stream: bool) -> Any:
    result = await kit.maybe(
        client.messages.create(model=CLAUDE, max_tokens=64, messages=MESSAGES, stream=stream)
    )
    return list(await kit.drain(result)) if stream else result


def cache_read_as_the_caller_sees_it(result: Any) -> Any:
    message = result[0].message if isinstance(result, list) else result
    return message.usage.cache_read_input_tokens


@pytest.mark.parametrize(
    ("case", "stream"),
    [
        pytest.param(case, stream, id=f"{case}-{'stream' if stream else 'json'}")
        for case in ANTHROPIC_ANSWERS
        for stream in (False, True)
        if stream or case not in STREAM_ONLY
    ],
)
async def test_anthropic_server(
    sink: InMemorySink, kit: ModuleType, is_async: bool, case: str, stream: bool
) -> None:
    client = mock_anthropic(AnthropicServer(ANTHROPIC_ANSWERS[case]), is_async=is_async)
    bare = await anthropic_call(client, kit, stream)
    tokenmeter.instrument("anthropic")

    seen = await anthropic_call(client, kit, stream)

    assert same(seen) == same(bare)
    record = only(flushed(sink))
    assert_storable(record)
    assert record.streamed is stream and record.request_id == MESSAGE_ID
    if case == "lone surrogate model":
        assert (record.status, record.model_name) == ("ok", "claude-\ufffd")
        assert (record.input_tokens, record.output_tokens) == (25, 12)
    elif case in ("numeric model", "list model"):  # names none: the model asked for, priced
        assert (record.status, record.error, record.model_name) == ("ok", None, CLAUDE)
        assert (record.input_tokens, record.output_tokens) == (25, 12)
        assert record.estimated_cost_usd is not None and record.estimated_cost_usd > 0
    elif case in NO_CLOSING_COUNT:  # the output streamed by is estimated
        assert (record.status, record.estimated, record.input_tokens) == ("ok", True, 25)
        assert record.output_tokens > 1
    elif (
        case == "cache_read_input_tokens '7'"
        and type(cache_read_as_the_caller_sees_it(seen)) is int
    ):
        # This SDK reads "7" as 7 for its caller: the record agrees with what the caller sees.
        assert (record.status, record.input_tokens, record.cache_read_tokens) == ("ok", 32, 7)
    elif case == "usage null" and not stream:  # no usage block at all: estimated from its text
        assert_estimated(record, output=True)
        assert record.model_name == CLAUDE_SERVED
    else:
        assert_unreadable(record)
        assert record.model_name == CLAUDE_SERVED


# -- Gemini (google-genai) ------------------------------------------------------------------------
GEMINI = "gemini-2.5-flash"
RESPONSE_ID = "gemini-hostile"
RUNNING = {"promptTokenCount": 5, "candidatesTokenCount": 1, "totalTokenCount": 6}
FINAL = {"promptTokenCount": 5, "candidatesTokenCount": 4, "totalTokenCount": 9}


@dataclass(frozen=True)
class Generated:
    """A Gemini answer: ``meta`` is the usageMetadata of the reply (of its last chunk when
    streamed; earlier chunks carry a sane running total unless it is ABSENT)."""

    meta: Any = field(default_factory=lambda: dict(FINAL))
    model: Any = GEMINI


GEMINI_ANSWERS = {
    "negative promptTokenCount": Generated(meta={**FINAL, "promptTokenCount": -5}),
    "thoughtsTokenCount 1e300": Generated(meta={**FINAL, "thoughtsTokenCount": 1e300}),
    "thoughtsTokenCount 10**300": Generated(meta={**FINAL, "thoughtsTokenCount": 10**300}),
    "usageMetadata missing": Generated(meta=ABSENT),
    "usageMetadata {}": Generated(meta={}),
    "lone surrogate modelVersion": Generated(model="gemini-\ud800"),
    # A compatible server's count of the prompt alone: the output is estimated from the text.
    "promptTokenCount only": Generated(meta={"promptTokenCount": 5}),
    "no promptTokenCount, total beyond the output": Generated(
        meta={"candidatesTokenCount": 100, "totalTokenCount": 10_100}
    ),
    "cachedContentTokenCount above the prompt": Generated(
        meta={**FINAL, "cachedContentTokenCount": 50}
    ),
}


class GeminiServer:
    """Answers generateContent with one ``Generated``: JSON, or two SSE chunks when streamed."""

    def __init__(self, answer: Generated) -> None:
        self.answer = answer

    def chunk(self, meta: Any) -> dict[str, Any]:
        body = {
            "candidates": [{"content": {"parts": [{"text": "ok"}], "role": "model"}, "index": 0}],
            "modelVersion": self.answer.model,
            "responseId": RESPONSE_ID,
        }
        if meta is not ABSENT:
            body["usageMetadata"] = meta
        return body

    def __call__(self, request: Any) -> Any:
        meta = self.answer.meta
        if ":streamGenerateContent" not in str(request.url):
            return json_reply(GENAI_HTTP, self.chunk(meta))
        first = ABSENT if meta is ABSENT else RUNNING
        chunks = [self.chunk(first), self.chunk(meta)]
        return sse_reply(GENAI_HTTP, [(None, c) for c in chunks], end=b"\r\n\r\n")


async def gemini_call(client: Any, is_async: bool, stream: bool) -> Any:
    """The result, the stream's chunks, or the exception the SDK raised (returned, to compare)."""
    try:
        if is_async and stream:
            chunks = await client.aio.models.generate_content_stream(model=GEMINI, contents="hi")
            return [chunk async for chunk in chunks]
        if is_async:
            return await client.aio.models.generate_content(model=GEMINI, contents="hi")
        if stream:
            return list(client.models.generate_content_stream(model=GEMINI, contents="hi"))
        return client.models.generate_content(model=GEMINI, contents="hi")
    except Exception as exc:
        return exc


@pytest.mark.requires(google_genai=">=1.46")  # HttpOptions(httpx_client=...)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("case", list(GEMINI_ANSWERS))
async def test_gemini_server(sink: InMemorySink, is_async: bool, case: str, stream: bool) -> None:
    client = mock_genai(GeminiServer(GEMINI_ANSWERS[case]))
    bare = await gemini_call(client, is_async, stream)
    tokenmeter.instrument("google-genai")

    seen = await gemini_call(client, is_async, stream)

    record = only(flushed(sink))
    assert_storable(record)
    assert record.streamed is stream
    if isinstance(bare, Exception):
        # The SDK itself refuses the answer (google-genai: 1e300 is no integer): the caller
        # gets the SDK's own exception, and the call is an error record naming it.
        assert type(seen) is type(bare) and str(seen) == str(bare)
        assert (record.status, record.error) == ("error", type(bare).__name__)
        return
    assert same(seen) == same(bare)
    assert record.request_id == RESPONSE_ID
    if case == "lone surrogate modelVersion":
        assert (record.status, record.model_name) == ("ok", "gemini-\ufffd")
        assert (record.input_tokens, record.output_tokens) == (5, 4)
    elif case == "usageMetadata missing" or (case == "usageMetadata {}" and not stream):
        assert_estimated(record, output=True)  # billed, nothing reported: estimated
        assert record.model_name == GEMINI
    elif case == "promptTokenCount only":  # streamed or not, the output is estimated
        assert (record.status, record.estimated, record.input_tokens) == ("ok", True, 5)
        assert record.output_tokens > 0 and record.model_name == GEMINI
    elif case == "usageMetadata {}":  # a stream's last report is its running total so far
        assert (record.status, record.estimated) == ("ok", False)
        assert (record.input_tokens, record.output_tokens) == (5, 1)
    else:
        assert_unreadable(record)
        assert record.model_name == GEMINI


@pytest.mark.requires(google_genai=">=1.46")  # HttpOptions(httpx_client=...)
@pytest.mark.parametrize(
    ("meta", "output"),
    [
        ({"promptTokenCount": 5, "candidatesTokenCount": 0, "totalTokenCount": 5}, 0),
        ({"promptTokenCount": 5, "totalTokenCount": 55}, 50),  # the total tells it
    ],
)
async def test_a_gemini_answer_that_tells_its_output_count_keeps_it(
    sink: InMemorySink, is_async: bool, meta: dict[str, int], output: int
) -> None:
    """Only an answer that gives neither an output count nor a total has its output estimated
    from its text: one that tells 0, or 50 by its total, was recorded 5 / 500 and 5 / 550
    estimated (the provider's total 55), where OpenAI's keep theirs."""
    tokenmeter.instrument("google-genai")
    await gemini_call(mock_genai(GeminiServer(Generated(meta=meta))), is_async, stream=False)
    record = only(flushed(sink))
    assert (record.status, record.estimated) == ("ok", False)
    assert (record.input_tokens, record.output_tokens) == (5, output)


@pytest.mark.requires(google_genai=">=1.46")  # HttpOptions(httpx_client=...)
@pytest.mark.parametrize("status", [200, 502])
@pytest.mark.parametrize("body", list(UNPARSABLE))
async def test_a_gemini_success_answer_the_sdk_cannot_parse_has_an_unknown_cost(
    sink: InMemorySink, is_async: bool, body: str, status: int
) -> None:
    """google-genai's answer object holds no status, so a 200 whose body it could not parse was
    recorded as an error costing exactly $0, where openai's and anthropic's are unknown. An
    error status with the same body is the provider refusing the call: $0."""

    def reply(request: Any) -> Any:
        headers = {"content-type": "application/json"}
        return GENAI_HTTP.Response(status, content=UNPARSABLE[body], headers=headers)

    client = mock_genai(reply)
    bare = await gemini_call(client, is_async, stream=False)
    tokenmeter.instrument("google-genai")

    seen = await gemini_call(client, is_async, stream=False)

    assert isinstance(bare, Exception)
    assert (type(seen), str(seen)) == (type(bare), str(bare))
    record = only(flushed(sink))
    assert (record.status, record.error) == ("error", type(bare).__name__)
    assert not record.estimated and record.total_tokens == 0
    if status == 200:
        assert record.estimated_cost_usd is None and record.cost_breakdown is None
    else:
        assert record.estimated_cost_usd == 0


@pytest.mark.requires(google_genai=">=1.46")  # HttpOptions(httpx_client=...)
@pytest.mark.parametrize("status", [200, 502])
@pytest.mark.parametrize("body", list(UNPARSABLE))
async def test_a_gemini_stream_whose_first_event_the_sdk_cannot_parse_is_estimated(
    sink: InMemorySink, is_async: bool, body: str, status: int
) -> None:
    """A sync google-genai stream sends its request at its first ``next()``, so one whose first
    event the SDK could not parse (a proxy cutting or replacing a 200 stream) was recorded as
    if nothing had been sent: an error costing exactly $0, where the ``client.aio`` stream, and
    openai's and anthropic's, are estimated as any stream that broke once the provider
    answered. An error status with the same body is the provider refusing the call: $0."""

    def reply(request: Any) -> Any:
        headers = {"content-type": "text/event-stream"}
        event = b"data: " + UNPARSABLE[body] + b"\r\n\r\n"
        return GENAI_HTTP.Response(status, content=event, headers=headers)

    client = mock_genai(reply)
    bare = await gemini_call(client, is_async, stream=True)
    tokenmeter.instrument("google-genai")

    seen = await gemini_call(client, is_async, stream=True)

    assert isinstance(bare, Exception)
    assert (type(seen), str(seen)) == (type(bare), str(bare))
    record = only(flushed(sink))
    assert (record.status, record.error, record.output_tokens) == ("error", type(bare).__name__, 0)
    assert record.estimated_cost_usd is not None
    if status == 200:
        assert record.estimated and record.input_tokens > 0
        assert record.estimated_cost_usd > 0
    else:
        assert not record.estimated and record.total_tokens == 0
        assert record.estimated_cost_usd == 0


@pytest.mark.requires(google_genai=">=1.46")  # HttpOptions(httpx_client=...)
@pytest.mark.parametrize("provider", ["anthropic", "google-genai"])
async def test_unreadable_stream_usage_is_one_warning_not_a_traceback_per_chunk(
    sink: InMemorySink,
    caplog: pytest.LogCaptureFixture,
    kit: ModuleType,
    is_async: bool,
    provider: str,
) -> None:
    """A server whose every stream carries usage that cannot be read logs one warning line for
    it, the rest at debug level, as a JSON answer does: a warning with a traceback for every
    such chunk of every call flooded the application's log."""
    tokenmeter.instrument(provider)
    with caplog.at_level(logging.DEBUG, logger="tokenmeter"):
        for _ in range(3):
            if provider == "anthropic":
                answer = Message(usage={**CLAUDE_USAGE, "input_tokens": -5})
                client = mock_anthropic(AnthropicServer(answer), is_async=is_async)
                await anthropic_call(client, kit, stream=True)
            else:
                meta = {**FINAL, "promptTokenCount": -5}
                client = mock_genai(GeminiServer(Generated(meta=meta)))
                assert type(await gemini_call(client, is_async, stream=True)) is list
    records = flushed(sink)
    assert len(records) == 3 and all((r.status, r.error) == UNREADABLE for r in records)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].exc_info is None, warnings
    assert "-5" in warnings[0].getMessage()


_STRICT_SCRIPT = """
import tokenmeter
from tokenmeter.testing import FakeProvider, InMemorySink

tokenmeter.instrument(["openai"])
sink = InMemorySink()
tokenmeter.configure(sinks=[sink])
usage = {"prompt_tokens": 10**13, "completion_tokens": 10, "reasoning_tokens": 0}
with FakeProvider(openai_usage=usage) as fake:
    try:
        reply = fake.openai_client().chat.completions.create(model="gpt-4o", messages=[])
    except ValueError as exc:
        print("raised", exc)
    else:
        print("returned", type(reply).__name__)
tokenmeter.flush()
print([record.error for record in sink.records])
"""


@pytest.mark.parametrize(
    ("value", "raised"),
    [("0", False), ("false", False), ("off", False), ("", False), ("1", True), ("true", True)],
)
def test_strict_mode_is_on_only_when_the_variable_says_so(
    value: str, raised: bool, tmp_path: Path
) -> None:
    """TOKENMETER_STRICT=1 makes our own faults raise (docs/configuration.md); any other text
    did too, so TOKENMETER_STRICT=0 or false, an explicit 'off' in a deployment's environment,
    sent a usage that cannot be read into the application's LLM call as a ValueError."""
    import os

    from helpers import run_python

    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENMETER_")}
    env.update(TOKENMETER_STRICT=value, TOKENMETER_DIR=str(tmp_path / "meter"))
    out = run_python("-c", _STRICT_SCRIPT, env=env, cwd=tmp_path).stdout.splitlines()
    assert out[0].startswith("raised" if raised else "returned ChatCompletion"), out
    if not raised:
        assert out[-1] == "['UnreadableUsage']"
