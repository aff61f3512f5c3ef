"""Everything an invoice bills beside text tokens, through the real SDKs (MockTransport replies
shaped like recorded provider traffic): per-modality tokens at their own rates, server-side tool
requests, Anthropic passes the top-level usage leaves out, and service tiers of every provider.

Expected figures are list prices (USD per million tokens or per 1,000 requests) worked by hand.
"""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest
from provider_helpers import Records, json_reply, mock_anthropic, mock_genai, only, sse_reply

import tokenmeter
from tokenmeter.pricing._genai import SOURCE_NAME

pytestmark = pytest.mark.usefixtures("instrumented")


@pytest.fixture
def instrumented(records: Records) -> Records:
    tokenmeter.instrument(["openai", "anthropic", "google-genai"])
    return records


def _gemini(kit: Any, body: dict[str, Any]) -> Any:
    return mock_genai(lambda request: json_reply(kit.http, body))


def _gemini_body(model: str, usage: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    return {
        "candidates": [
            {"content": {"parts": [part], "role": "model"}, "finishReason": "STOP", "index": 0}
        ],
        "modelVersion": model,
        "responseId": "resp-1",
        "usageMetadata": usage,
    }


# -- modalities ----------------------------------------------------------------------------------


@pytest.mark.requires(google_genai=">=1.46")
def test_gemini_image_output_is_priced_at_the_image_token_rate(kit: Any, records: Records) -> None:
    """The recorded image-generation call: 1,290 image tokens at $30/M, not the $2.50/M text
    output rate (which made it $0.00324, 12x under)."""
    usage = {
        "promptTokenCount": 7,
        "candidatesTokenCount": 1290,
        "totalTokenCount": 1297,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 7}],
        "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": 1290}],
    }
    image = {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}
    client = _gemini(kit, _gemini_body("gemini-2.5-flash-image", usage, image))

    client.models.generate_content(model="gemini-2.5-flash-image", contents="a red bicycle")

    record = only(records())
    assert record.modalities == {"input_text": 7, "output_image": 1290}
    assert record.cost_breakdown is not None
    assert record.cost_breakdown["output_image"] == Decimal("0.0387")  # 1290 x $30/M
    assert record.estimated_cost_usd == Decimal("0.0387021")  # + 7 x $0.30/M
    assert sum(record.cost_breakdown.values()) == record.estimated_cost_usd


@pytest.mark.requires(google_genai=">=1.46")
def test_gemini_audio_input_and_cached_audio_at_their_own_rates(kit: Any, records: Records) -> None:
    """gemini-2.5-flash: audio input $1/M (text $0.30), cached audio $0.10/M (text $0.03)."""
    usage = {
        "promptTokenCount": 4012,
        "candidatesTokenCount": 40,
        "totalTokenCount": 4052,
        "cachedContentTokenCount": 1000,
        "promptTokensDetails": [
            {"modality": "TEXT", "tokenCount": 12},
            {"modality": "AUDIO", "tokenCount": 4000},
        ],
        "cacheTokensDetails": [{"modality": "AUDIO", "tokenCount": 1000}],
        "candidatesTokensDetails": [{"modality": "TEXT", "tokenCount": 40}],
    }
    client = _gemini(kit, _gemini_body("gemini-2.5-flash", usage, {"text": "a podcast intro"}))

    client.models.generate_content(model="gemini-2.5-flash", contents="transcribe")

    record = only(records())
    assert record.modalities == {
        "input_text": 12,
        "input_audio": 4000,
        "cache_read_audio": 1000,
        "output_text": 40,
    }
    b = record.cost_breakdown
    assert b is not None
    assert b["input_audio"] == Decimal("0.003")  # 3000 uncached audio x $1/M
    assert b["cache_read"] == Decimal("0.0001")  # 1000 cached audio x $0.10/M
    assert b["input"] == Decimal("0.0000036")  # 12 text x $0.30/M
    assert b["output"] == Decimal("0.0001")  # 40 x $2.50/M
    assert record.estimated_cost_usd == Decimal("0.0032036")


@pytest.mark.parametrize(
    ("model", "audio", "text", "total"),
    [
        ("gpt-4o-audio-preview-2024-12-17", ("0.04", "0.04"), ("0.0005", "0.0003"), "0.0808"),
        # genai-prices has no audio rates for it: audio was priced as text ($0.15 / $0.60).
        (
            "gpt-4o-mini-audio-preview-2024-12-17",
            ("0.01", "0.01"),
            ("0.00003", "0.000018"),
            "0.020048",
        ),
    ],
)
def test_openai_audio_tokens_are_kept_and_priced_as_audio(
    kit: Any,
    records: Records,
    model: str,
    audio: tuple[str, str],
    text: tuple[str, str],
    total: str,
) -> None:
    """gpt-4o-audio-preview: audio at $40/M in and $80/M out, text at $2.50 / $10;
    gpt-4o-mini-audio-preview: audio at $10 / $20, text at $0.15 / $0.60."""
    usage = {
        "prompt_tokens": 1200,
        "completion_tokens": 530,
        "total_tokens": 1730,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 1000, "text_tokens": 200},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 500,
            "text_tokens": 30,
        },
    }
    body = kit.chat_body(usage, model=model)
    client = kit.mock_openai(lambda request: json_reply(kit.http, body))

    client.chat.completions.create(model=model, messages=[])

    record = only(records())
    assert record.modalities == {
        "input_text": 200,
        "input_audio": 1000,
        "output_text": 30,
        "output_audio": 500,
    }
    b = record.cost_breakdown
    assert b is not None
    assert (b["input_audio"], b["output_audio"]) == tuple(map(Decimal, audio))
    assert (b["input"], b["output"]) == tuple(map(Decimal, text))
    assert record.estimated_cost_usd == Decimal(total)


# -- server-side tools ---------------------------------------------------------------------------


def _anthropic_message(usage: dict[str, Any], model: str = "claude-sonnet-4-5-20250929") -> Any:
    return {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": "Here is what I found."}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }


def test_anthropic_web_search_requests_cost_ten_dollars_a_thousand(
    kit: Any, records: Records
) -> None:
    usage = {
        "input_tokens": 8200,
        "output_tokens": 410,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "server_tool_use": {"web_search_requests": 3, "web_fetch_requests": 2},
        "service_tier": "standard",
    }
    client = mock_anthropic(lambda r: json_reply(kit.http, _anthropic_message(usage)))

    client.messages.create(model="claude-sonnet-4-5", max_tokens=1024, messages=[])

    record = only(records())
    assert record.tool_requests == {"web_search": 3, "web_fetch": 2}
    b = record.cost_breakdown
    assert b is not None
    assert b["web_search"] == Decimal("0.03")
    assert b["web_fetch"] == 0  # fetched pages are billed as the input tokens they add
    assert record.estimated_cost_usd == Decimal("0.0246") + Decimal("0.00615") + Decimal("0.03")


def test_anthropic_stream_keeps_the_server_tool_requests(kit: Any, records: Records) -> None:
    start = _anthropic_message(
        {"input_tokens": 8200, "output_tokens": 1, "cache_read_input_tokens": 0}
    )
    start["content"] = []
    events = [
        ("message_start", {"type": "message_start", "message": start}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {
                    "output_tokens": 410,
                    "server_tool_use": {"web_search_requests": 2, "web_fetch_requests": 0},
                },
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    client = mock_anthropic(lambda r: sse_reply(kit.http, events))

    for _ in client.messages.create(
        model="claude-sonnet-4-5", max_tokens=1024, messages=[], stream=True
    ):
        pass

    record = only(records())
    assert record.tool_requests == {"web_search": 2}
    assert record.cost_breakdown is not None and record.cost_breakdown["web_search"] == Decimal(
        "0.02"
    )


#: A Perplexity Deep Research answer's usage (its API reference): reasoning and citation tokens
#: are reported beside ``completion_tokens``, outside it (``total_tokens`` leaves them out).
DEEP_RESEARCH_USAGE = {
    "prompt_tokens": 19,
    "completion_tokens": 9095,
    "total_tokens": 9114,
    "citation_tokens": 93174,
    "num_search_queries": 33,
    "reasoning_tokens": 293727,
    "search_context_size": "low",
}


def test_perplexity_reasoning_citations_and_searches_are_billed(kit: Any, records: Records) -> None:
    """sonar-deep-research bills reasoning ($3/M) and citation ($2/M) tokens and search queries
    ($5 per 1,000) beside the completion: recorded at $0.072798, 18x under the bill."""
    body = kit.chat_body(DEEP_RESEARCH_USAGE, model="sonar-deep-research")
    client = kit.mock_openai(
        lambda request: json_reply(kit.http, body), base_url="https://api.perplexity.ai"
    )

    client.chat.completions.create(model="sonar-deep-research", messages=[])

    record = only(records())
    assert record.model_provider == "perplexity"
    assert record.output_tokens == 9095 + 293727 + 93174
    assert record.reasoning_tokens == 293727
    assert record.tool_requests == {"web_search": 33}
    b = record.cost_breakdown
    assert b is not None
    assert b["output_citation"] == Decimal("0.186348")  # 93,174 x $2/M
    assert b["web_search"] == Decimal("0.165")  # 33 x $5/1,000
    # 19 x $2 + 9,095 x $8 + 293,727 x $3 (per M): genai-prices' own figure for this usage
    assert record.estimated_cost_usd == Decimal("1.305327")


#: Perplexity's fees per 1,000 requests by search context size (low, medium, high), from its
#: pricing page, and the tokens' rates per million (input, output).
SONAR_FEES = {"sonar": (5, 8, 12), "sonar-pro": (6, 10, 14), "sonar-reasoning-pro": (6, 10, 14)}
SONAR_RATES = {"sonar": (1, 1), "sonar-pro": (3, 15), "sonar-reasoning-pro": (2, 8)}


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize("model", list(SONAR_FEES))
@pytest.mark.parametrize(("size", "fee"), [("low", 0), ("medium", 1), ("high", 2), (None, 0)])
def test_perplexity_request_fee_is_the_one_of_the_search_context_size_reported(
    kit: Any, records: Records, model: str, size: str | None, fee: int, streamed: bool
) -> None:
    """Sonar calls were charged the high search context's fee per request whatever the answer
    reported: a default (low) sonar call of 1000 in / 1000 out recorded at $0.014 where
    Perplexity bills $0.007. The fee is now that of the size ``usage.search_context_size``
    reports (low when it reports none), under its own breakdown key."""
    usage: dict[str, Any] = {"prompt_tokens": 1000, "completion_tokens": 1000, "total_tokens": 2000}
    if size is not None:
        usage["search_context_size"] = size
    body = kit.chat_body(usage, model=model)
    reply = kit.sse_response(kit.chat_sse(3, usage, model=model)) if streamed else None
    client = kit.mock_openai(
        lambda request: reply or json_reply(kit.http, body), base_url="https://api.perplexity.ai"
    )

    answer = client.chat.completions.create(model=model, messages=[], stream=streamed)
    if streamed:
        list(answer)

    record = only(records())
    assert (record.model_provider, record.estimated) == ("perplexity", False)
    request_fee = Decimal(SONAR_FEES[model][fee]) / 1000
    rate_in, rate_out = SONAR_RATES[model]
    assert record.cost_breakdown is not None
    assert record.cost_breakdown["request"] == request_fee
    assert record.cost_breakdown["input"] == Decimal(1000 * rate_in) / 10**6
    assert record.estimated_cost_usd == Decimal(1000 * (rate_in + rate_out)) / 10**6 + request_fee


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize(("size", "fee"), [("medium", 1), ("high", 2), (None, 0)])
def test_a_sonar_call_without_usage_is_estimated_at_the_search_context_size_asked(
    kit: Any, records: Records, size: str | None, fee: int, streamed: bool
) -> None:
    """A sonar call whose usage never came (a stream without it, a reply without it) is billed
    the fee of the search context size its request asked for, as its budget reserved: it was
    estimated at low's ($0.005012 recorded for a stream asking "high", billed $0.012)."""
    reply = kit.sse_response(kit.chat_sse(3, model="sonar")) if streamed else None
    body = {**kit.chat_body(model="sonar"), "usage": None}
    client = kit.mock_openai(
        lambda request: reply or json_reply(kit.http, body), base_url="https://api.perplexity.ai"
    )
    options = {"extra_body": {"web_search_options": {"search_context_size": size}}} if size else {}

    answer = client.chat.completions.create(model="sonar", messages=[], stream=streamed, **options)
    if streamed:
        list(answer)

    record = only(records())
    assert (record.model_provider, record.estimated) == ("perplexity", True)
    assert record.cost_breakdown is not None
    assert record.cost_breakdown["request"] == Decimal(SONAR_FEES["sonar"][fee]) / 1000


@pytest.mark.parametrize(
    ("completion", "reasoning", "expected"),
    [
        (1, 326, "0.0001674"),  # xAI's reasoning guide: the call was not recorded at all
        (200, 94, "0.0001509"),  # priced as 200 output tokens: the 94 reasoning ones left out
    ],
)
def test_xai_reasoning_outside_completion_tokens_is_billed(
    kit: Any, records: Records, completion: int, reasoning: int, expected: str
) -> None:
    """xAI counts reasoning tokens beside ``completion_tokens``, not in it (``total_tokens`` is
    their sum with the prompt), and bills them as output: grok-3-mini $0.30 / $0.50."""
    usage = {
        "prompt_tokens": 13,
        "completion_tokens": completion,
        "total_tokens": 13 + completion + reasoning,
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }
    body = kit.chat_body(usage, model="grok-3-mini")
    client = kit.mock_openai(
        lambda request: json_reply(kit.http, body), base_url="https://api.x.ai/v1"
    )

    client.chat.completions.create(model="grok-3-mini", messages=[])

    record = only(records())
    assert record.model_provider == "x-ai"
    assert (record.output_tokens, record.reasoning_tokens) == (completion + reasoning, reasoning)
    assert record.estimated_cost_usd == Decimal(expected)


def test_xai_server_side_tool_calls_are_billed_per_call(kit: Any, records: Records) -> None:
    """The usage a public client logged of grok-4.3 with ``x_search``: 5 X searches at xAI's
    $5 per 1,000 beside the tokens ($1.25 / $0.20 cached / $2.50), what its own
    ``cost_in_usd_ticks`` says. Recorded at $0.02326315, its tokens alone. The output lists
    every attempt (a failed search too): the usage's count of the successful ones is billed."""
    output = [
        {"type": "web_search_call", "id": "ws_1", "status": "failed"},
        {
            "type": "message",
            "id": "msg_1",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "...", "annotations": []}],
        },
    ]
    body = kit.response_body("grok-4.3", output, [{"type": "x_search"}], 13181, 4005)
    body["usage"].update(
        input_tokens_details={"cached_tokens": 3072},
        num_server_side_tools_used=5,
        cost_in_usd_ticks=482631500,
        server_side_tool_usage_details={
            "web_search_calls": 0,
            "x_search_calls": 5,
            "code_interpreter_calls": 0,
            "file_search_calls": 0,
            "mcp_calls": 0,
            "document_search_calls": 0,
            "image_generation_calls": 0,
        },
    )
    client = kit.mock_openai(
        lambda request: json_reply(kit.http, body), base_url="https://api.x.ai/v1"
    )

    client.responses.create(model="grok-4.3", input="trending?", tools=[{"type": "x_search"}])

    record = only(records())
    assert (record.model_provider, record.tool_requests) == ("x-ai", {"x_search": 5})
    assert record.cost_breakdown is not None
    assert record.cost_breakdown["x_search"] == Decimal("0.025")
    assert record.estimated_cost_usd == Decimal(482631500) / 10**10


@pytest.mark.parametrize(
    ("day", "fee"),
    [("2025-11-25", "0.01"), ("2025-12-03", "0.005")],
    ids=["at launch", "after the cut"],
)
def test_xai_tool_fees_are_the_ones_in_effect_on_the_day(day: str, fee: str) -> None:
    """xAI listed web search, X search and code execution at $10 per 1,000 calls at launch,
    $5 from 2025-12-03; Collections Search (``file_search``) at $2.50."""
    tools = {"web_search": 1, "x_search": 1, "code_execution": 1, "file_search": 1}
    usage = {"input_tokens": 0, "output_tokens": 0, "tool_requests": tools}
    at = datetime.fromisoformat(f"{day}T12:00:00+00:00")
    cost = tokenmeter.price("x-ai", "grok-4-1-fast-reasoning", usage, at=at)
    assert cost.breakdown is not None
    expected = {"web_search": fee, "x_search": fee, "code_execution": fee, "file_search": "0.0025"}
    assert {key: cost.breakdown[key] for key in tools} == {
        key: Decimal(value) for key, value in expected.items()
    }


@pytest.mark.parametrize("details", [None, {"reasoning_tokens": 0}], ids=["no details", "zero"])
def test_thinking_only_the_total_holds_is_billed_as_output(
    kit: Any, records: Records, details: dict[str, int] | None
) -> None:
    """Gemini's OpenAI-compatible endpoint (and gateways that translate Gemini's usage) leave
    a thinking model's thoughts out of ``completion_tokens``, naming them nowhere but in
    ``total_tokens``: 5 output tokens were recorded for 505 billed (gemini-2.5-flash
    $0.30 / $2.50)."""
    usage: dict[str, Any] = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 515}
    if details is not None:
        usage["completion_tokens_details"] = details
    body = kit.chat_body(usage, model="gemini-2.5-flash")
    client = kit.mock_openai(
        lambda request: json_reply(kit.http, body),
        base_url="https://generativelanguage.googleapis.com/v1beta/openai/",
    )

    client.chat.completions.create(model="gemini-2.5-flash", messages=[])

    record = only(records())
    assert record.model_provider == "google"
    assert (record.output_tokens, record.reasoning_tokens) == (505, 500)
    assert record.estimated_cost_usd == Decimal("0.000003") + Decimal("0.0012625")


def test_openai_responses_built_in_tool_calls_are_billed_per_call(
    kit: Any, records: Records
) -> None:
    """gpt-4o: web search $10 and file search $2.50 per 1,000 calls, one per output item."""
    output = [
        {"type": "web_search_call", "id": "ws_1", "status": "completed"},
        {"type": "web_search_call", "id": "ws_2", "status": "completed"},
        {"type": "file_search_call", "id": "fs_1", "status": "completed", "queries": ["q"]},
        {
            "type": "message",
            "id": "msg_1",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "found it", "annotations": []}],
        },
    ]
    body = kit.response_body("gpt-4o-2024-08-06", output, [], 1000, 100)
    client = kit.mock_openai(lambda request: json_reply(kit.http, body))

    client.responses.create(model="gpt-4o", input="search")

    record = only(records())
    assert record.tool_requests == {"web_search": 2, "file_search": 1}
    b = record.cost_breakdown
    assert b is not None
    assert (b["web_search"], b["file_search"]) == (Decimal("0.02"), Decimal("0.0025"))
    assert record.estimated_cost_usd == Decimal("0.0025") + Decimal("0.001") + Decimal("0.0225")


@pytest.mark.parametrize("azure", [False, True], ids=["openai", "azure"])
@pytest.mark.parametrize(
    ("model", "web", "files"), [("o3-pro", 2, 1), ("o3-mini", 0, 1), ("gpt-4.1-nano", 0, 1)]
)
def test_openai_tool_fees_apply_to_models_whose_table_entry_lacks_them(
    kit: Any, records: Records, model: str, web: int, files: int, azure: bool
) -> None:
    """OpenAI bills web search ($10) and file search ($2.50 per 1,000) on every model, as Azure
    OpenAI does; genai-prices has them on gpt-5 and gpt-4o but not on o3-pro, o3-mini or
    gpt-4.1-nano, whose searches were recorded at $0 (o3-pro: $0.028 of a $0.0505 call)."""
    output = [
        {"type": "web_search_call", "id": f"ws_{index}", "status": "completed"}
        for index in range(web)
    ] + [
        {"type": "file_search_call", "id": f"fs_{index}", "status": "completed", "queries": ["q"]}
        for index in range(files)
    ]
    body = kit.response_body(model, output, [], 1000, 100)
    if azure:
        import openai

        transport = kit.http.MockTransport(lambda request: json_reply(kit.http, body))
        client = openai.AzureOpenAI(
            api_key="sk-test",
            api_version="2025-04-01-preview",
            azure_endpoint="http://azure.invalid",
            http_client=kit.http.Client(transport=transport),
        )
    else:
        client = kit.mock_openai(lambda request: json_reply(kit.http, body))

    client.responses.create(model=model, input="search")

    record = only(records())
    assert record.model_provider == ("azure" if azure else "openai")
    fees = {"web_search": Decimal("0.01") * web, "file_search": Decimal("0.0025") * files}
    fees = {key: fee for key, fee in fees.items() if fee}
    assert record.cost_breakdown is not None
    assert {key: record.cost_breakdown[key] for key in fees} == fees
    plain = record.usage.model_copy(update={"tool_requests": {}})
    tokens = tokenmeter.price(record.model_provider, model, plain)
    assert tokens.total_usd is not None
    assert record.estimated_cost_usd == tokens.total_usd + sum(fees.values())


@pytest.mark.parametrize(
    ("model", "tool", "key", "fee"),
    [
        ("gpt-4.1-2025-04-14", "web_search_preview", "web_search_preview", "0.025"),
        ("gpt-4o-mini", "web_search_preview_2025_03_11", "web_search_preview", "0.025"),
        ("gpt-4.1-2025-04-14", "web_search", "web_search", "0.01"),
        ("o3-2025-04-16", "web_search_preview", "web_search_preview", "0.01"),
    ],
)
def test_openai_web_search_preview_on_a_model_without_reasoning_is_25_dollars_a_thousand(
    kit: Any, records: Records, model: str, tool: str, key: str, fee: str
) -> None:
    """OpenAI bills the web_search_preview tool at $25 per 1,000 calls on gpt-4o and gpt-4.1
    (their search content's tokens free), and every other web search at $10: one search of
    gpt-4.1 with the preview tool was recorded at $10 a thousand."""
    searched = [{"type": "web_search_call", "id": "ws_1", "status": "completed"}]
    body = kit.response_body(
        model, searched, [{"type": tool, "search_context_size": "medium"}], 1000, 200
    )
    client = kit.mock_openai(lambda request: json_reply(kit.http, body))

    client.responses.create(model=model, input="search", tools=[{"type": tool}])

    record = only(records())
    assert record.tool_requests == {key: 1}
    assert record.cost_breakdown is not None and record.cost_breakdown[key] == Decimal(fee)
    tokens = tokenmeter.price(
        "openai", model, record.usage.model_copy(update={"tool_requests": {}})
    )
    assert tokens.total_usd is not None
    assert record.estimated_cost_usd == tokens.total_usd + Decimal(fee)


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize(
    ("model", "served"),
    [
        ("gpt-4o-search-preview", "gpt-4o-search-preview-2025-03-11"),
        ("gpt-4o-mini-search-preview", "gpt-4o-mini-search-preview-2025-03-11"),
    ],
)
def test_a_chat_search_model_is_billed_one_web_search_a_completion(
    kit: Any, records: Records, model: str, served: str, streamed: bool
) -> None:
    """A Chat Completions search model searches the web before it answers: one
    web_search_preview at $25 per 1,000 a completion (two choices share the search), on top of
    the tokens. gpt-4o-mini-search-preview was recorded at its tokens alone: $0.00075 of a
    $0.02575 call."""
    usage = {"prompt_tokens": 1000, "completion_tokens": 1000, "total_tokens": 2000}
    body = kit.chat_body(usage, model=served)
    body["choices"].append({**body["choices"][0], "index": 1})
    reply = kit.sse_response(kit.chat_sse(3, usage, model=served)) if streamed else None
    client = kit.mock_openai(lambda request: reply or json_reply(kit.http, body))

    request = {"role": "user", "content": "Capital of France?"}
    answer = client.chat.completions.create(
        model=model, messages=[request], web_search_options={}, n=2, stream=streamed
    )
    if streamed:
        list(answer)

    record = only(records())
    assert record.tool_requests == {"web_search_preview": 1}
    assert record.cost_breakdown is not None
    assert record.cost_breakdown["web_search_preview"] == Decimal("0.025")
    tokens = tokenmeter.price("openai", served, {"input_tokens": 1000, "output_tokens": 1000})
    assert tokens.total_usd is not None
    assert record.estimated_cost_usd == tokens.total_usd + Decimal("0.025")


@pytest.mark.parametrize("served", ["", " "])
@pytest.mark.parametrize("how", ["reply", "stream", "record_response"])
def test_a_chat_search_model_whose_answer_names_no_model_is_billed_its_web_search(
    kit: Any, records: Records, how: str, served: str
) -> None:
    """A compatible server that answers ``"model": ""``, or a stored body without ``model``
    given to ``record_response(..., model=...)``: the search fee was decided from the body's
    model alone and dropped, $0.00075 recorded for a $0.02575 gpt-4o-mini-search-preview call.
    The record is priced at the model asked, and so is its search."""
    model = "gpt-4o-mini-search-preview"
    usage = {"prompt_tokens": 1000, "completion_tokens": 1000, "total_tokens": 2000}
    if how == "record_response":
        body = kit.chat_body(usage)
        del body["model"]
        record = tokenmeter.record_response(body, provider="openai", model=model)
    else:
        streamed = how == "stream"
        body = kit.chat_body(usage, model=served)
        reply = kit.sse_response(kit.chat_sse(3, usage, model=served)) if streamed else None
        client = kit.mock_openai(lambda request: reply or json_reply(kit.http, body))
        answer = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], stream=streamed
        )
        if streamed:
            list(answer)
        record = only(records())
    assert record.model_name == model
    assert record.tool_requests == {"web_search_preview": 1}
    assert record.estimated_cost_usd == Decimal("0.02575")  # $0.15 + $0.60 per M, + $25 / 1,000


@pytest.mark.requires(google_genai=">=1.46")
@pytest.mark.parametrize("how", ["reply", "stream", "record_response"])
def test_gemini_grounding_without_model_version_is_billed_per_prompt_of_the_model_asked(
    kit: Any, records: Records, how: str
) -> None:
    """Gemini 2.x bills grounding once per grounded prompt. An answer without ``modelVersion``
    (a proxy that drops it, a stored body given to ``record_response(..., model=...)``) was
    billed per search query: 3 x $35 / 1,000, $0.1078 recorded for a $0.0378 call, on a record
    whose model is gemini-2.5-flash."""
    model = "gemini-2.5-flash"
    usage = {"promptTokenCount": 1000, "candidatesTokenCount": 1000, "totalTokenCount": 2000}
    body = _gemini_body(model, usage, {"text": "hello"})
    del body["modelVersion"]
    body["candidates"][0]["groundingMetadata"] = {"webSearchQueries": ["q1", "q2", "q3"]}
    if how == "record_response":
        record = tokenmeter.record_response(body, provider="google", model=model)
    elif how == "stream":
        client = mock_genai(lambda request: sse_reply(kit.http, [(None, body)]))
        for _ in client.models.generate_content_stream(model=model, contents="news?"):
            pass
        record = only(records())
    else:
        _gemini(kit, body).models.generate_content(model=model, contents="news?")
        record = only(records())
    assert record.model_name == model
    assert record.tool_requests == {"web_search": 1}
    assert record.estimated_cost_usd == Decimal("0.0378")  # $0.30 + $2.50 per M, + $35 / 1,000


@pytest.mark.parametrize("streamed", [False, True], ids=["reply", "stream"])
@pytest.mark.parametrize("served", ["gpt-4o-mini-search-preview-2025-03-11", "", " "])
def test_a_chat_search_model_that_reports_no_usage_is_estimated_with_its_web_search(
    kit: Any, records: Records, streamed: bool, served: str
) -> None:
    """A search model's answer without usage (a stream without its usage chunk, a reply without
    a usage block) is estimated: its search was billed all the same, $0.025 of the call, and the
    estimate held its tokens alone ($0.000114). A compatible server naming no model (``""``): the
    estimate took the blank name for the model and lost the fee ($0.0000018 for $0.0250018)."""
    tokenmeter.configure(stream_usage=False)
    body = {**kit.chat_body(model=served), "usage": None}
    reply = kit.sse_response(kit.chat_sse(3, model=served)) if streamed else None
    client = kit.mock_openai(lambda request: reply or json_reply(kit.http, body))

    request = {"role": "user", "content": "Capital of France?"}
    answer = client.chat.completions.create(
        model="gpt-4o-mini-search-preview", messages=[request], stream=streamed
    )
    if streamed:
        list(answer)

    record = only(records())
    assert record.estimated
    assert record.tool_requests == {"web_search_preview": 1}
    assert record.cost_breakdown is not None
    assert record.cost_breakdown["web_search_preview"] == Decimal("0.025")


SEARCHES = 3


def _anthropic_search_blocks() -> list[dict[str, Any]]:
    """3 web searches of an answer: each a ``server_tool_use`` block and its result."""
    blocks: list[dict[str, Any]] = []
    for n in range(SEARCHES):
        blocks += [
            {
                "type": "server_tool_use",
                "id": f"srvtoolu_{n}",
                "name": "web_search",
                "input": {"query": "news"},
            },
            {"type": "web_search_tool_result", "tool_use_id": f"srvtoolu_{n}", "content": []},
        ]
    return blocks


def _anthropic_searches_then_text() -> list[tuple[str, Any]]:
    """A web search stream's events up to its answer's first words: 3 searches (each a
    ``server_tool_use`` block and its result) then text; its closing usage would count them."""
    start = _anthropic_message(
        {"input_tokens": 1000, "output_tokens": 1, "server_tool_use": {"web_search_requests": 0}}
    )
    blocks = _anthropic_search_blocks()
    events = [("message_start", {"type": "message_start", "message": {**start, "content": []}})]
    for index, block in enumerate(blocks):
        events += [
            (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": block},
            ),
            ("content_block_stop", {"type": "content_block_stop", "index": index}),
        ]
    text = {"type": "content_block_start", "index": len(blocks)}
    words = {"type": "content_block_delta", "index": len(blocks)}
    return [
        *events,
        ("content_block_start", {**text, "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {**words, "delta": {"type": "text_delta", "text": "I found"}}),
    ]


@pytest.mark.parametrize("helper", [False, True], ids=["create", "stream-helper"])
def test_an_anthropic_stream_left_after_its_web_searches_is_estimated_with_them(
    kit: Any, records: Records, helper: bool
) -> None:
    """A stream the application stops once the answer starts (a "stop" button) never gets the
    usage that counts its searches: the estimate counts the ``server_tool_use`` blocks that
    went by (it counted none: $0.003405 recorded where the 3 searches alone cost $0.03)."""
    client = mock_anthropic(lambda r: sse_reply(kit.http, _anthropic_searches_then_text()))
    request: dict[str, Any] = {"model": "claude-sonnet-4-5", "max_tokens": 1024, "messages": []}
    request["tools"] = [{"type": "web_search_20250305", "name": "web_search"}]

    if helper:
        with client.messages.stream(**request) as stream:
            next(iter(stream.text_stream))
    else:
        stream = client.messages.create(**request, stream=True)
        next(event for event in stream if event.type == "content_block_delta")
        stream.close()

    record = only(records())
    assert record.estimated and record.tool_requests == {"web_search": SEARCHES}
    assert record.cost_breakdown is not None
    assert record.cost_breakdown["web_search"] == Decimal("0.03")


def test_an_anthropic_message_without_usage_is_estimated_with_its_web_searches(
    kit: Any, records: Records
) -> None:
    """A message not streamed whose usage never came (an Anthropic-compatible server's) counts
    the ``server_tool_use`` blocks it holds, as a stream does (it counted none: $0.001809
    recorded where the 3 searches alone cost $0.03)."""
    message = _anthropic_message({})
    message["content"] = [*_anthropic_search_blocks(), *message["content"]]
    client = mock_anthropic(lambda request: json_reply(kit.http, {**message, "usage": None}))

    client.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=1024,
        messages=[{"role": "user", "content": "What happened today?"}],
        tools=[{"type": "web_search_20250305", "name": "web_search"}],
    )

    record = only(records())
    assert record.estimated and record.tool_requests == {"web_search": SEARCHES}
    assert record.cost_breakdown is not None
    assert record.cost_breakdown["web_search"] == Decimal("0.03")


def _responses_searched(
    kit: Any, *, usage: bool, echoed: list[Any] | None = None
) -> dict[str, Any]:
    """A gpt-4.1 answer that searched the web 3 times (and opened a page it found: no search,
    no fee) before answering, with its usage or, as a compatible server may send it, none;
    echoing the ``web_search`` tool unless ``echoed`` says otherwise."""
    searched = [
        {"type": "web_search_call", "id": f"ws_{n}", "status": "completed"}
        | {"action": {"type": "search", "query": "news"}}
        for n in range(SEARCHES)
    ]
    opened = {**searched[0], "id": "ws_open", "action": {"type": "open_page", "url": "https://a.b"}}
    text = {"type": "output_text", "text": "Here is what I found.", "annotations": []}
    message = {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed"}
    output = [*searched, opened, {**message, "content": [text]}]
    tools = [{"type": "web_search"}] if echoed is None else echoed
    body = kit.response_body("gpt-4.1-2025-04-14", output, tools, 1000, 100)
    return body if usage else {**body, "usage": None}


def _responses_search_stream(kit: Any, ending: str, echoed: list[Any] | None = None) -> Any:
    """The same answer streamed: each output item done in turn, then ``ending``: the connection
    ends before the terminal event (``cut``), or that event comes without usage."""
    done = _responses_searched(kit, usage=False, echoed=echoed)
    events = [{"type": "response.created", "response": {**done, "status": "in_progress"}}]
    events[0]["response"]["output"] = []
    for index, item in enumerate(done["output"]):
        events.append({"type": "response.output_item.done", "output_index": index, "item": item})
    if ending != "cut":
        events.append({"type": "response.completed", "response": done})
    return sse_reply(
        kit.http, [(e["type"], e | {"sequence_number": n}) for n, e in enumerate(events)]
    )


@pytest.mark.parametrize("how", ["cut", "completed without usage", "not streamed"])
def test_a_responses_answer_without_usage_is_estimated_with_its_web_searches(
    kit: Any, records: Records, how: str
) -> None:
    """A Responses answer whose usage never came (a stream cut before its terminal event, a
    compatible server that sends none) is estimated with the searches its output items show,
    read as a whole answer's are (they were left out: $0.000182 recorded, the 3 searches alone
    $0.03)."""
    if how == "not streamed":
        body = _responses_searched(kit, usage=False)
        client = kit.mock_openai(lambda request: json_reply(kit.http, body))
    else:
        client = kit.mock_openai(lambda request: _responses_search_stream(kit, how))
    ask = {"model": "gpt-4.1", "input": "What happened today?", "tools": [{"type": "web_search"}]}

    answer = client.responses.create(**ask, stream=how != "not streamed")
    if how != "not streamed":
        list(answer)

    record = only(records())
    assert record.estimated and record.tool_requests == {"web_search": SEARCHES}
    assert record.cost_breakdown is not None
    assert record.cost_breakdown["web_search"] == Decimal("0.03")


@pytest.mark.parametrize(
    ("asked", "echoed", "named", "fee"),
    [
        (
            {"extra_body": {"prompt": {"id": "pmpt_1"}}},  # the oldest SDK has no prompt=
            [{"type": "web_search_preview"}],
            "web_search_preview",
            "0.075",
        ),
        ({"tools": [{"type": "web_search_preview"}]}, [], "web_search", "0.03"),
    ],
    ids=["tools in a stored prompt", "no tools echoed"],
)
def test_a_responses_stream_without_usage_counts_each_web_search_once(
    kit: Any, records: Records, asked: dict[str, Any], echoed: list[Any], named: str, fee: str
) -> None:
    """A stream's items are named from the request's tools, its terminal answer's from the ones
    it echoes: where they differ, the same 3 searches were counted under both names
    ({"web_search": 3, "web_search_preview": 3}, $0.105016 recorded for at most $0.075). They
    count once, under the answer's name."""
    client = kit.mock_openai(lambda request: _responses_search_stream(kit, "completed", echoed))

    list(
        client.responses.create(model="gpt-4.1", input="What happened today?", stream=True, **asked)
    )

    record = only(records())
    assert record.estimated and record.tool_requests == {named: SEARCHES}
    assert record.cost_breakdown is not None
    assert record.cost_breakdown[named] == Decimal(fee)


# -- passes the top-level usage leaves out -------------------------------------------------------


def test_anthropic_compaction_iteration_is_added_and_priced(kit: Any, records: Records) -> None:
    """The recorded exchange: top level 229 in / 5 out, its compaction pass 55,196 / 131."""
    usage = {
        "input_tokens": 229,
        "output_tokens": 5,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "iterations": [
            {
                "type": "compaction",
                "input_tokens": 55196,
                "output_tokens": 131,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
            {
                "type": "message",
                "input_tokens": 229,
                "output_tokens": 5,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
        ],
    }
    client = mock_anthropic(lambda r: json_reply(kit.http, _anthropic_message(usage)))

    client.beta.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=[])

    record = only(records())
    assert (record.input_tokens, record.output_tokens) == (55_425, 136)
    b = record.cost_breakdown
    assert b is not None
    assert b["compaction"] == Decimal("0.167553")  # 55196 x $3/M + 131 x $15/M
    assert b["input"] == Decimal("0.000687") and b["output"] == Decimal("0.000075")
    assert record.estimated_cost_usd == Decimal("0.168315")


def test_anthropic_advisor_pass_is_priced_at_the_advisor_models_rates(
    kit: Any, records: Records
) -> None:
    """An advisor sub-inference on claude-opus-4-6 ($5 / $25) beside a claude-haiku-4-5
    executor ($1 / $5): each at its own model's rates."""
    usage = {
        "input_tokens": 3000,
        "output_tokens": 200,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 1000,
        "iterations": [
            {
                "type": "message",
                "input_tokens": 3000,
                "output_tokens": 200,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 1000,
            },
            {
                "type": "advisor_message",
                "model": "claude-opus-4-6",
                "input_tokens": 4000,
                "output_tokens": 1500,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
        ],
    }
    body = _anthropic_message(usage, model="claude-haiku-4-5-20251001")
    client = mock_anthropic(lambda r: json_reply(kit.http, body))

    client.beta.messages.create(model="claude-haiku-4-5", max_tokens=64, messages=[])

    record = only(records())
    assert (record.input_tokens, record.output_tokens) == (8_000, 1_700)
    b = record.cost_breakdown
    assert b is not None
    assert b["advisor_message"] == Decimal("0.0575")  # 4000 x $5/M + 1500 x $25/M
    # haiku: 3000 x $1/M + 1000 cached x $0.10/M + 200 x $5/M
    assert b["input"] + b["cache_read"] + b["output"] == Decimal("0.0041")
    assert record.estimated_cost_usd == Decimal("0.0616")


# -- tiers ---------------------------------------------------------------------------------------


def test_anthropic_batch_tier_from_usage_is_half_price(kit: Any, records: Records) -> None:
    usage = {"input_tokens": 10_000, "output_tokens": 1_000, "service_tier": "batch"}
    client = mock_anthropic(lambda r: json_reply(kit.http, _anthropic_message(usage)))

    client.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=[])

    record = only(records())
    assert record.estimated_cost_usd == Decimal("0.0225")  # half of $0.03 + $0.015


def test_anthropic_batch_results_given_whole_are_half_price(kit: Any, records: Records) -> None:
    """docs/providers.md sends batch jobs' results to ``record_response()``; a results line as
    the SDK gives it (``messages.batches.results()``: ``custom_id``, ``result``) was refused
    ("cannot read usage"). It is read as the message it holds, at batch rates, in the inference
    region the message names; a request that errored holds no message (nothing billed)."""
    sonnet = {"input_tokens": 10_000, "output_tokens": 1_000, "service_tier": "standard"}
    opus = {"input_tokens": 10_000, "output_tokens": 2_000, "inference_geo": "us"}
    lines = [
        {"custom_id": "a", "result": {"type": "succeeded", "message": _anthropic_message(sonnet)}},
        {
            "custom_id": "b",
            "result": {"type": "succeeded", "message": _anthropic_message(opus, "claude-opus-4-8")},
        },
        {"custom_id": "c", "result": {"type": "errored", "error": {"type": "error"}}},
    ]
    results_url = "http://anthropic.invalid/v1/messages/batches/msgbatch_1/results"

    def server(request: Any) -> Any:
        if request.url.path.endswith("/results"):
            jsonl = "".join(json.dumps(line) + "\n" for line in lines)
            return kit.http.Response(200, content=jsonl.encode())
        batch = {"id": "msgbatch_1", "type": "message_batch", "processing_status": "ended"}
        return json_reply(kit.http, {**batch, "results_url": results_url})

    client = mock_anthropic(server)
    sonnet_line, opus_line, errored = client.messages.batches.results("msgbatch_1")
    costs = [
        tokenmeter.record_response(line).estimated_cost_usd for line in (sonnet_line, opus_line)
    ]
    assert costs == [Decimal("0.0225"), Decimal("0.055")]  # half price; the second at 1.1x
    with pytest.raises(ValueError, match="cannot read usage"):
        tokenmeter.record_response(errored)
    assert [r.estimated_cost_usd for r in records()] == costs


@pytest.mark.requires(google_genai=">=1.46")
def test_gemini_batch_results_given_whole_are_half_price(kit: Any, records: Records) -> None:
    """A Gemini API batch output file line (``key``, ``response``) was refused by
    ``record_response()``, and the response it holds priced at standard rates: twice the bill
    (gemini-2.5-flash 1M / 1M: $2.80, batch $1.40). A line, and google-genai's
    ``InlinedResponse`` of a batch job with inline results, are read at batch rates."""
    usage = {"promptTokenCount": 1000, "candidatesTokenCount": 500, "totalTokenCount": 1500}
    body = _gemini_body("gemini-2.5-flash", usage, {"text": "ok"})
    inlined = {"inlinedResponses": {"inlinedResponses": [{"response": body}]}}
    job = {"name": "batches/b1", "done": True, "metadata": {"output": inlined}}
    client = mock_genai(lambda request: json_reply(kit.http, job))

    (result,) = client.batches.get(name="batches/b1").dest.inlined_responses
    line = {
        "key": "request-1",
        "response": body,
    }  # a line of the output file, as json.loads reads it

    costs = [tokenmeter.record_response(found).estimated_cost_usd for found in (result, line)]
    assert costs == [Decimal("0.000775")] * 2  # half of 1000 x $0.30/M + 500 x $2.50/M
    assert [r.estimated_cost_usd for r in records()] == costs


def test_anthropic_fast_mode_is_priced_at_its_fast_rates(kit: Any, records: Records) -> None:
    """``usage.speed: "fast"`` (fast mode) is billed at the model's fast rates, $10 / $50 for
    claude-opus-4-8 (standard $5 / $25); it was priced as a standard call, half the bill."""
    usage = {
        "input_tokens": 10_000,
        "output_tokens": 1_000,
        "service_tier": "standard",
        "speed": "fast",
    }
    body = _anthropic_message(usage, model="claude-opus-4-8")
    client = mock_anthropic(lambda r: json_reply(kit.http, body))

    client.messages.create(model="claude-opus-4-8", max_tokens=64, messages=[])

    record = only(records())
    assert record.estimated_cost_usd == Decimal("0.15")  # $0.10 + $0.05


def _anthropic_stream(start: dict[str, Any], output_tokens: int) -> list[tuple[str, Any]]:
    """The events of a stream that starts with message ``start`` (its content left out) and
    ends with ``output_tokens`` in its message_delta."""
    return [
        ("message_start", {"type": "message_start", "message": {**start, "content": []}}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]


def test_anthropic_fast_mode_stream_is_priced_at_its_fast_rates(kit: Any, records: Records) -> None:
    start = _anthropic_message(
        {"input_tokens": 10_000, "output_tokens": 1, "speed": "fast"}, model="claude-opus-4-8"
    )
    events = _anthropic_stream(start, output_tokens=1_000)
    client = mock_anthropic(lambda r: sse_reply(kit.http, events))

    for _ in client.messages.create(
        model="claude-opus-4-8", max_tokens=1024, messages=[], stream=True
    ):
        pass

    assert only(records()).estimated_cost_usd == Decimal("0.15")


@pytest.mark.parametrize("streamed", [False, True], ids=["message", "stream"])
@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, "0.10"),  # claude-opus-4-8 at $5 / $25: $0.05 + $0.05
        ({"speed": "fast"}, "0.20"),  # its fast rates, $10 / $50
        ({"service_tier": "batch"}, "0.05"),  # half price
    ],
    ids=["standard", "fast", "batch"],
)
def test_anthropic_us_only_inference_is_billed_at_1_1x(
    kit: Any, records: Records, extra: dict[str, str], expected: str, streamed: bool
) -> None:
    """``usage.inference_geo: "us"`` (US-only inference, Opus 4.6, Sonnet 4.6 and later) is
    billed at 1.1x every token rate, on top of the tier; it was billed at the global rates."""
    usage = {"input_tokens": 10_000, "output_tokens": 2_000, "inference_geo": "us", **extra}
    body = _anthropic_message(usage, model="claude-opus-4-8")
    if streamed:
        body["usage"] = {**usage, "output_tokens": 1}
        events = _anthropic_stream(body, output_tokens=2_000)
        client = mock_anthropic(lambda r: sse_reply(kit.http, events))
        for _ in client.messages.create(
            model="claude-opus-4-8", max_tokens=64, messages=[], stream=True
        ):
            pass
    else:
        client = mock_anthropic(lambda r: json_reply(kit.http, body))
        client.messages.create(model="claude-opus-4-8", max_tokens=64, messages=[])
    record = only(records())
    assert record.estimated_cost_usd == Decimal(expected) * Decimal("1.1")
    assert record.price_source is not None
    assert record.price_source.endswith("; US-only inference at 1.1x")


def test_openai_fast_service_tier_is_priced_as_priority(kit: Any, records: Records) -> None:
    """A response reporting ``service_tier: "fast"`` (fast mode) pays fast-mode rates, the
    priority ones: gpt-4o $4.25 / $17, not the standard $2.50 / $10."""
    body = kit.chat_body({"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500})
    body["service_tier"] = "fast"
    client = kit.mock_openai(lambda request: json_reply(kit.http, body))

    client.chat.completions.create(model="gpt-4o", messages=[], service_tier="fast")

    assert only(records()).estimated_cost_usd == Decimal("0.01275")


@pytest.mark.requires(google_genai=">=1.46")
def test_gemini_flex_without_a_flex_price_says_which_rule_applied(
    kit: Any, records: Records
) -> None:
    usage = {
        "promptTokenCount": 1000,
        "candidatesTokenCount": 100,
        "totalTokenCount": 1100,
        "trafficType": "ON_DEMAND_FLEX",
    }
    client = _gemini(kit, _gemini_body("gemini-2.5-flash", usage, {"text": "ok"}))

    client.models.generate_content(model="gemini-2.5-flash", contents="hi")

    record = only(records())
    assert record.estimated_cost_usd == Decimal("0.000275")  # half of $0.0003 + $0.00025
    assert record.price_source == (
        "tokenmeter-errata: flex at 50% of standard rates (no flex price known)"
    )


@pytest.mark.requires(google_genai=">=3.6")  # GenerateContentConfig.service_tier
@pytest.mark.parametrize(
    ("traffic", "expected"),
    [(None, "0.000275"), ("ON_DEMAND_FLEX", "0.000275"), ("ON_DEMAND", "0.00055")],
    ids=["Gemini API, no tier reported", "Vertex flex", "Vertex served on demand"],
)
@pytest.mark.parametrize("streamed", [False, True], ids=["unary", "stream"])
def test_gemini_service_tier_asked_for_is_priced_when_the_answer_reports_none(
    kit: Any, records: Records, traffic: str | None, expected: str, streamed: bool
) -> None:
    """``config.service_tier="flex"`` goes out as ``serviceTier``; the Gemini API's answer
    reports no tier (Vertex's ``trafficType`` does, and wins: it may have served the call on
    demand). A Gemini API flex call was priced at standard rates, twice its cost."""
    from google.genai import types

    usage: dict[str, Any] = {
        "promptTokenCount": 1000,
        "candidatesTokenCount": 100,
        "totalTokenCount": 1100,
    }
    if traffic is not None:
        usage["trafficType"] = traffic
    body = _gemini_body("gemini-2.5-flash", usage, {"text": "ok"})
    sent: list[Any] = []

    def reply(request: Any) -> Any:
        sent.append(json.loads(request.content).get("serviceTier"))
        if streamed:
            return sse_reply(kit.http, [(None, body)])
        return json_reply(kit.http, body)

    client = mock_genai(reply)
    config = types.GenerateContentConfig(service_tier=types.ServiceTier.FLEX)
    request = {"model": "gemini-2.5-flash", "contents": "hi", "config": config}
    if streamed:
        for _ in client.models.generate_content_stream(**request):
            pass
    else:
        client.models.generate_content(**request)

    assert sent == ["flex"]
    record = only(records())
    assert record.estimated_cost_usd == Decimal(expected)  # $0.30 / $2.50 a million standard


def test_openai_flex_without_a_flex_price_says_which_rule_applied(
    kit: Any, records: Records
) -> None:
    body = kit.chat_body({"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100})
    body["service_tier"] = "flex"
    client = kit.mock_openai(lambda request: json_reply(kit.http, body))

    client.chat.completions.create(model="gpt-4o", messages=[], service_tier="flex")

    record = only(records())
    assert record.estimated_cost_usd == Decimal("0.001750")  # half of $0.0025 + $0.001
    assert record.price_source == (
        "tokenmeter-errata: flex at 50% of standard rates (no flex price known)"
    )


@pytest.mark.parametrize("named", ["claude-opus-4-1-20250805", "claude-haiku-4-5-20251001"])
def test_anthropic_fallback_models_tool_loop_passes_are_priced_at_its_rates(
    kit: Any, records: Records, named: str
) -> None:
    """A fallback-served turn whose serving model ran a tool loop: its earlier iterations are
    ``message`` entries naming it (the SDK's reference), not ``fallback_message`` ones; they were
    billed at the fallback model's rates, but were priced at the model the response names. Either
    model (a stream's message_start names the requested one, a non-streamed reply the serving
    one: the SDK relabels its stream snapshot to match): 1.9x over, or 2.7x under."""

    def entry(kind: str, model: str, in_: int, out: int) -> dict[str, Any]:
        return {
            "type": kind,
            "model": model,
            "input_tokens": in_,
            "output_tokens": out,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }

    usage = {
        "input_tokens": 3_200,
        "output_tokens": 1_110,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "iterations": [
            entry("message", "claude-opus-4-1", 1_000, 10),  # the requested model declined
            entry("message", "claude-haiku-4-5-20251001", 1_000, 100),  # the fallback's tool loop
            entry("fallback_message", "claude-haiku-4-5-20251001", 1_200, 1_000),
        ],
    }
    body = _anthropic_message(usage, model=named)
    client = mock_anthropic(lambda r: json_reply(kit.http, body))

    client.beta.messages.create(model="claude-opus-4-1", max_tokens=64, messages=[])

    record = only(records())
    assert (record.input_tokens, record.output_tokens) == (3_200, 1_110)
    # claude-opus-4-1 ($15 / $75): 1,000 in + 10 out; claude-haiku-4-5 ($1 / $5): 2,200 in +
    # 1,100 out
    assert record.estimated_cost_usd == Decimal("0.01575") + Decimal("0.0077")


def test_anthropic_stream_served_by_a_fallback_model_names_it(kit: Any, records: Records) -> None:
    """A stream's message_start names the requested model; when a fallback model serves the
    reply, a ``fallback`` content block names it (``to.model``), and the SDK's final message
    names it, as a non-streamed reply does. The record named the requested model."""
    start = _anthropic_message(
        {"input_tokens": 1_000, "output_tokens": 1}, model="claude-opus-4-1-20250805"
    )
    start["content"] = []
    seam = {
        "type": "fallback",
        "from": {"model": "claude-opus-4-1"},
        "to": {"model": "claude-haiku-4-5-20251001"},
        "trigger": {"type": "refusal", "category": None},
    }
    iteration = {"cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    events = [
        ("message_start", {"type": "message_start", "message": start}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": seam}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {
                    "input_tokens": 2_000,
                    "output_tokens": 1_010,
                    "iterations": [
                        {"type": "message", "model": "claude-opus-4-1", **iteration}
                        | {"input_tokens": 1_000, "output_tokens": 10},
                        {"type": "fallback_message", "model": "claude-haiku-4-5-20251001"}
                        | iteration
                        | {"input_tokens": 1_000, "output_tokens": 1_000},
                    ],
                },
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    client = mock_anthropic(lambda r: sse_reply(kit.http, events))

    with client.beta.messages.stream(
        model="claude-opus-4-1", max_tokens=1024, messages=[]
    ) as stream:
        final = stream.get_final_message()

    record = only(records())
    # The SDK's final message names the serving model in newer releases only: not asserted.
    assert record.model_name == "claude-haiku-4-5-20251001", final.model
    assert record.request_model == "claude-opus-4-1"
    # opus-4-1 $15/$75: 1,000 in + 10 out; haiku-4-5 $1/$5: 1,000 in + 1,000 out
    assert record.estimated_cost_usd == Decimal("0.01575") + Decimal("0.006")


def _refusal_fallback_client(kit: Any, declined_text: bool = True) -> Any:
    """An anthropic client running ``BetaRefusalFallbackMiddleware``: claude-sonnet-4-5 declines
    (20,000 in, 300 out; after streaming "Sure", or before any output), claude-opus-4-6 serves
    (20,000 in, 500 out)."""
    import anthropic
    from anthropic.lib.middleware import BetaRefusalFallbackMiddleware

    refusal = {"type": "refusal", "category": "cyber", "fallback_credit_token": "fct_1"}

    def hop(model: str, output: int, stop: str, text: bool) -> Any:
        start = _anthropic_message({"input_tokens": 20_000, "output_tokens": 1}, model=model)
        start["content"] = []
        delta: dict[str, Any] = {"stop_reason": stop, "stop_sequence": None}
        if stop == "refusal":
            delta["stop_details"] = refusal
        block = {"type": "text", "text": ""}
        said = {"type": "text_delta", "text": "Sure"}
        content = [
            (
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": block},
            ),
            ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": said}),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ]
        return sse_reply(
            kit.http,
            [
                ("message_start", {"type": "message_start", "message": start}),
                *(content if text else []),
                (
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": delta,
                        "usage": {"input_tokens": 20_000, "output_tokens": output},
                    },
                ),
                ("message_stop", {"type": "message_stop"}),
            ],
        )

    def reply(request: Any) -> Any:
        if json.loads(request.content)["model"].startswith("claude-sonnet"):
            return hop("claude-sonnet-4-5-20250929", 300, "refusal", declined_text)
        return hop("claude-opus-4-6", 500, "end_turn", True)

    return anthropic.Anthropic(
        api_key="sk-ant-test",
        http_client=kit.http.Client(transport=kit.http.MockTransport(reply)),
        max_retries=0,
        middleware=[BetaRefusalFallbackMiddleware([{"model": "claude-opus-4-6"}])],
    )


@pytest.mark.requires(anthropic=">=2.15")
def test_a_hop_the_sdks_refusal_fallback_middleware_declined_is_counted_in_its_stream(
    kit: Any, records: Records
) -> None:
    """``BetaRefusalFallbackMiddleware`` retries a refused request with a fallback model and
    splices the two streams into one whose final usage is the serving hop's alone, the declined
    hop in ``usage.iterations`` beside it. Both hops were billed, but the entries adding up to
    more than the top level were dropped: the refused claude-sonnet-4-5 hop (20,000 in, 300 out)
    was missing from the record."""
    client = _refusal_fallback_client(kit)
    with client.beta.messages.stream(
        model="claude-sonnet-4-5", max_tokens=1024, messages=[]
    ) as stream:
        final = stream.get_final_message()

    hops = [(i.type, i.input_tokens, i.output_tokens) for i in final.usage.iterations or []]
    assert hops == [("message", 20_000, 300), ("fallback_message", 20_000, 500)]
    assert (final.usage.input_tokens, final.usage.output_tokens) == (20_000, 500)
    record = only(records())
    assert (record.input_tokens, record.output_tokens) == (40_000, 800)
    # sonnet-4-5 $3/$15: 20,000 in + 300 out; opus-4-6 $5/$25: 20,000 in + 500 out
    assert record.estimated_cost_usd == Decimal("0.0645") + Decimal("0.1125")


@pytest.mark.requires(anthropic=">=2.15")
@pytest.mark.parametrize("declined_text", [True, False], ids=["mid-stream", "before-output"])
def test_a_refusal_fallback_stream_left_in_its_fallback_hop_counts_both_hops(
    kit: Any, records: Records, declined_text: bool
) -> None:
    """A ``BetaRefusalFallbackMiddleware`` stream left during the fallback hop (before the
    closing usage names the hops): the declined hop was sent, answered and billed, and the
    fallback hop sent the same input again. The record was one hop, 20,000 in priced at the
    fallback model ($0.10015): it is both, each at its model, estimated."""
    client = _refusal_fallback_client(kit, declined_text)
    stream = client.beta.messages.create(
        model="claude-sonnet-4-5", max_tokens=1024, messages=[], stream=True
    )
    fell_back = False
    for event in stream:
        if event.type == "content_block_start" and event.content_block.type == "fallback":
            fell_back = True
        if fell_back and event.type == "content_block_delta":
            break
    stream.close()

    record = only(records())
    assert record.estimated
    assert record.model_name == "claude-opus-4-6"
    assert record.input_tokens == 40_000
    # sonnet-4-5 $3/M and opus-4-6 $5/M on 20,000 in each, and the few output tokens estimated
    assert Decimal("0.16") < record.estimated_cost_usd < Decimal("0.161")


def test_groq_flex_is_priced_as_on_demand(kit: Any, records: Records) -> None:
    """Groq's flex tier (``service_tier: "flex"``) is billed at its on-demand prices (Groq's flex
    processing docs), where the rule for a flex tier without a flex price billed it at half:
    llama-3.3-70b-versatile at $0.295 / $0.79 instead of $0.59 / $0.79."""
    body = kit.chat_body(
        {"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100},
        model="llama-3.3-70b-versatile",
    )
    body["service_tier"] = "flex"
    client = kit.mock_openai(
        lambda request: json_reply(kit.http, body), base_url="https://api.groq.com/openai/v1"
    )

    client.chat.completions.create(
        model="llama-3.3-70b-versatile", messages=[], service_tier="flex"
    )

    record = only(records())
    assert record.model_provider == "groq"
    assert record.estimated_cost_usd == Decimal("0.000669")  # $0.00059 + $0.000079
    assert record.price_source == f"{SOURCE_NAME}; flex at standard rates (no flex price known)"


@pytest.mark.parametrize(
    ("served", "base"),
    [
        ("gpt-4.1-2025-04-14.ft-0123456789abcdef0123456789abcdef", "gpt-4.1"),
        ("gpt-4o-2024-08-06.ft-d93dda6110004b4da3472d96f4dd4777-ft", None),
    ],
)
def test_an_azure_fine_tune_is_priced_by_the_base_it_names(
    kit: Any, records: Records, served: str, base: str | None
) -> None:
    """An Azure OpenAI fine-tune's answer names it ``<base>.ft-<job id>``: the calls of
    gpt-4o-2024-08-06 and gpt-4.1-2025-04-14 fine-tunes were recorded with a null cost (10,000
    in + 500 out), not at the fine-tune's table rates (gpt-4o's: $3.75 / $15) or, without
    them, at the base's rates and said so."""
    import openai

    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": served,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "ok"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 10_000, "completion_tokens": 500, "total_tokens": 10_500},
    }
    transport = kit.http.MockTransport(lambda request: json_reply(kit.http, body))
    client = openai.AzureOpenAI(
        api_key="sk-test",
        api_version="2024-10-21",
        azure_endpoint="http://azure.invalid",
        http_client=kit.http.Client(transport=transport),
    )

    client.chat.completions.create(
        model="my-fine-tune", messages=[{"role": "user", "content": "hi"}]
    )

    record = only(records())
    assert (record.model_provider, record.model_name) == ("azure", served)
    if base is None:  # the table's fine-tune rates, as ft:gpt-4o-2024-08-06 under Azure
        assert record.estimated_cost_usd == Decimal("0.045")
        return
    at_base = tokenmeter.price("azure", base, record.usage)
    assert at_base.total_usd is not None
    assert record.estimated_cost_usd == at_base.total_usd
    assert record.price_source == (
        f"{SOURCE_NAME}; fine-tune at base rates (no fine-tune price known)"
    )
