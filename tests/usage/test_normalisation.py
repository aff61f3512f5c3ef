"""SPEC §3 counting rules, on realistic payloads, as SDK objects and as JSON dicts."""

from __future__ import annotations

import json
import random
from decimal import Decimal
from typing import Any

import pytest

import tokenmeter
from tokenmeter import Usage
from tokenmeter._models import MAX_TOKENS
from tokenmeter.sinks import InMemorySink
from tokenmeter.usage import detect_provider, extract

OPENAI_CHAT: dict[str, Any] = {
    "id": "chatcmpl-123",
    "object": "chat.completion",
    "created": 1730000000,
    "model": "gpt-4o-2024-08-06",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}
    ],
    "usage": {
        "prompt_tokens": 19,
        "completion_tokens": 10,
        "total_tokens": 29,
        "prompt_tokens_details": {"cached_tokens": 4, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 2, "audio_tokens": 0},
    },
    "service_tier": "default",
}

OPENAI_RESPONSE: dict[str, Any] = {
    "id": "resp_1",
    "object": "response",
    "created_at": 1730000000,
    "status": "completed",
    "model": "o3-2025-04-16",
    "output": [],
    "parallel_tool_calls": True,
    "tool_choice": "auto",
    "tools": [],
    "service_tier": "flex",
    "usage": {
        "input_tokens": 5000,
        "output_tokens": 8000,
        "total_tokens": 13000,
        "input_tokens_details": {"cached_tokens": 1000},
        "output_tokens_details": {"reasoning_tokens": 6000},
    },
}

ANTHROPIC_MESSAGE: dict[str, Any] = {
    "id": "msg_01",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "content": [{"type": "text", "text": "Hello!"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 25,
        "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 50,
        "cache_creation": {"ephemeral_5m_input_tokens": 60, "ephemeral_1h_input_tokens": 40},
        "output_tokens": 12,
        "service_tier": "batch",
    },
}

GEMINI_RESPONSE: dict[str, Any] = {
    "candidates": [
        {"content": {"parts": [{"text": "Hello!"}], "role": "model"}, "finishReason": "STOP"}
    ],
    "modelVersion": "gemini-2.5-pro",
    "responseId": "resp-abc",
    "usageMetadata": {
        "promptTokenCount": 8,
        "candidatesTokenCount": 5,
        "cachedContentTokenCount": 2,
        "thoughtsTokenCount": 32,
        "toolUsePromptTokenCount": 3,
        "totalTokenCount": 48,
        "trafficType": "ON_DEMAND",
    },
}


def test_openai_prompt_tokens_already_include_cached_and_reasoning_is_inside_output() -> None:
    found = extract(OPENAI_CHAT)
    assert found.provider == "openai"
    assert found.usage == Usage(
        input_tokens=19, output_tokens=10, cache_read_tokens=4, reasoning_tokens=2
    )
    assert (found.model, found.operation, found.request_id, found.tier) == (
        "gpt-4o-2024-08-06",
        "chat.completions",
        "chatcmpl-123",
        None,
    )


def test_openai_sdk_object_reads_like_its_json() -> None:
    openai = pytest.importorskip("openai")
    completion = openai.types.chat.ChatCompletion.model_validate(OPENAI_CHAT)
    assert extract(completion) == extract(OPENAI_CHAT)


def test_openai_responses_usage_and_service_tier() -> None:
    found = extract(OPENAI_RESPONSE)
    assert found.usage == Usage(
        input_tokens=5000, output_tokens=8000, cache_read_tokens=1000, reasoning_tokens=6000
    )
    assert (found.operation, found.tier) == ("responses", "flex")


def test_openai_responses_without_total_tokens_is_read_as_openai() -> None:
    """A Responses answer names itself (``object``): one whose usage lacks ``total_tokens`` (a
    compatible server) is OpenAI's shape all the same, not Anthropic's input_tokens and
    output_tokens (it was recorded under provider "anthropic", its cached tokens unread)."""
    usage = {key: value for key, value in OPENAI_RESPONSE["usage"].items() if key != "total_tokens"}
    body = {**OPENAI_RESPONSE, "usage": usage}
    assert detect_provider(body) == "openai"
    assert extract(body) == extract(OPENAI_RESPONSE)


def test_openai_embeddings_have_no_output() -> None:
    body = {
        "object": "list",
        "data": [],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 8, "total_tokens": 8},
    }
    found = extract(body)
    assert found.usage == Usage(input_tokens=8)
    assert found.operation == "embeddings"
    # A total beyond the prompt was read as output, which no embedding model prices: $0.
    with pytest.raises(ValueError, match="embeddings"):
        extract({**body, "usage": {"prompt_tokens": 0, "total_tokens": 5000}})


@pytest.mark.parametrize("absent", [None, ...], ids=["null", "absent"])
def test_openai_output_left_out_is_what_the_total_holds_beyond_the_input(absent: Any) -> None:
    """A compatible server that sends its output count as null, or not at all, beside a total:
    the output was recorded as 0 tokens (a silent zero, priced at the input alone)."""
    for total_in, total_out in (
        ("prompt_tokens", "completion_tokens"),
        ("input_tokens", "output_tokens"),
    ):
        usage = {total_in: 19, "total_tokens": 29}
        if absent is None:
            usage[total_out] = None
        body = {"object": "chat.completion", "model": "m", "usage": usage}
        assert extract(body).usage == Usage(input_tokens=19, output_tokens=10)
    embeddings = {"object": "list", "usage": {"prompt_tokens": 8, "total_tokens": 8}}
    assert extract(embeddings).usage == Usage(input_tokens=8)


def test_openai_compatible_extra_cache_field_is_read() -> None:
    body = {
        "object": "chat.completion",
        "model": "deepseek-chat",
        "usage": {"prompt_tokens": 100, "completion_tokens": 5, "prompt_cache_hit_tokens": 60},
    }
    assert extract(body, "deepseek").usage.cache_read_tokens == 60
    assert extract(body, "deepseek").provider == "deepseek"


def test_anthropic_input_excludes_cache_so_all_three_are_added() -> None:
    found = extract(ANTHROPIC_MESSAGE)
    assert found.provider == "anthropic"
    assert found.usage == Usage(
        input_tokens=25 + 50 + 100,
        output_tokens=12,
        cache_read_tokens=50,
        cache_write_tokens=100,
        cache_write_1h_tokens=40,
    )
    assert found.tier == "batch"


def test_anthropic_sdk_object_and_thinking_tokens() -> None:
    anthropic = pytest.importorskip("anthropic")
    body = {
        **ANTHROPIC_MESSAGE,
        "usage": {**ANTHROPIC_MESSAGE["usage"], "output_tokens_details": {"thinking_tokens": 4}},
    }
    message = anthropic.types.Message.model_validate(body)
    found = extract(message)
    assert found.usage.reasoning_tokens == 4
    assert found.usage.input_tokens == 175


def test_anthropic_cache_split_without_total_field() -> None:
    usage = {
        "input_tokens": 10,
        "output_tokens": 1,
        "cache_creation": {"ephemeral_5m_input_tokens": 7, "ephemeral_1h_input_tokens": 3},
    }
    found = extract({"type": "message", "model": "claude-haiku-4-5", "usage": usage})
    assert (found.usage.input_tokens, found.usage.cache_write_tokens) == (20, 10)
    assert found.usage.cache_write_1h_tokens == 3


def test_gemini_thoughts_are_outside_candidates_and_tool_prompt_is_input() -> None:
    found = extract(GEMINI_RESPONSE)
    assert found.provider == "google"
    assert found.usage == Usage(
        input_tokens=8 + 3, output_tokens=5 + 32, cache_read_tokens=2, reasoning_tokens=32
    )
    assert found.usage.total_tokens == 48
    assert (found.model, found.request_id) == ("gemini-2.5-pro", "resp-abc")


@pytest.mark.parametrize(
    ("response", "operation"),
    [
        ({"promptFeedback": {"blockReason": "SAFETY"}}, "generate_content"),  # no candidates
        ({}, "generate_content"),  # a usage-only answer (a stream's last chunk)
        ({"embeddings": [{"values": [0.1]}]}, "embed_content"),  # batchEmbedContents
        ({"embedding": {"values": [0.1]}}, "embed_content"),  # embedContent
    ],
)
def test_gemini_operation_is_embed_content_only_for_embeddings(
    response: dict[str, Any], operation: str
) -> None:
    """A generate_content answer without candidates (a blocked prompt, a usage-only chunk) is
    no embedding: only an answer that holds embeddings is one."""
    meta = {"promptTokenCount": 10, "candidatesTokenCount": 3, "totalTokenCount": 13}
    found = extract({**response, "usageMetadata": meta, "modelVersion": "gemini-2.5-flash"})
    assert found is not None and found.operation == operation


def test_gemini_snake_case_sdk_object() -> None:
    types = pytest.importorskip("google.genai.types")
    response = types.GenerateContentResponse.model_validate(GEMINI_RESPONSE)
    assert extract(response).usage == extract(GEMINI_RESPONSE).usage


def test_gemini_candidates_that_hold_the_thoughts_as_the_total_says_count_them_once() -> None:
    """A recorded answer (openinference #3177) whose candidates count holds its thinking:
    341 + 3,362 = 3,703, the total. Adding the thoughts again made 6,709 output tokens, twice
    the cost. Thoughts outside the candidates (the documented shape) still add up."""
    meta = {
        "promptTokenCount": 341,
        "candidatesTokenCount": 3362,
        "thoughtsTokenCount": 3347,
        "totalTokenCount": 3703,
    }
    found = extract({"candidates": [], "usageMetadata": meta})
    assert (found.usage.input_tokens, found.usage.output_tokens) == (341, 3362)
    assert found.usage.reasoning_tokens == 3347
    meta["totalTokenCount"] = 341 + 3362 + 3347
    assert extract({"candidates": [], "usageMetadata": meta}).usage.output_tokens == 3362 + 3347


def test_legacy_gemini_without_thoughts_field_derives_output_from_total() -> None:
    meta = {"promptTokenCount": 8, "candidatesTokenCount": 5, "totalTokenCount": 45}
    found = extract({"candidates": [], "usageMetadata": meta})
    assert found.usage.output_tokens == 45 - 8
    assert found.usage.reasoning_tokens == 32


@pytest.mark.parametrize("prompt", [{}, {"promptTokenCount": None}, {"promptTokenCount": 0}])
def test_gemini_total_beyond_its_parts_without_a_prompt_count_is_unreadable(
    prompt: dict[str, Any],
) -> None:
    """The excess over the output was taken for hidden thinking: the whole prompt became
    reasoning output (10,000 tokens priced at the output rate, ~8x the cost)."""
    meta = {**prompt, "candidatesTokenCount": 100, "totalTokenCount": 10_100}
    with pytest.raises(ValueError, match="no prompt"):
        extract({"candidates": [], "usageMetadata": meta})
    meta["totalTokenCount"] = 100  # no excess: nothing to tell apart
    assert extract({"candidates": [], "usageMetadata": meta}).usage.output_tokens == 100


def test_gemini_cached_count_above_the_prompt_is_unreadable() -> None:
    """The prompt count includes the cached content: more cached than prompt is inconsistent
    (it was cut down to the prompt, and all of it priced as cached)."""
    meta = {"promptTokenCount": 10_000, "cachedContentTokenCount": 50_000}
    with pytest.raises(ValueError, match="cache"):
        extract({"candidates": [], "usageMetadata": {**meta, "totalTokenCount": 10_000}})


def test_legacy_proto_object() -> None:
    glm = pytest.importorskip("google.ai.generativelanguage")
    response = glm.GenerateContentResponse(
        usage_metadata={
            "prompt_token_count": 8,
            "candidates_token_count": 5,
            "total_token_count": 45,
            "cached_content_token_count": 2,
        }
    )
    found = extract(response, "google")
    assert found.usage == Usage(
        input_tokens=8, output_tokens=37, cache_read_tokens=2, reasoning_tokens=32
    )


def test_gemini_flex_traffic_is_a_tier() -> None:
    body = {
        **GEMINI_RESPONSE,
        "usageMetadata": {**GEMINI_RESPONSE["usageMetadata"], "trafficType": "ON_DEMAND_FLEX"},
    }
    assert extract(body).tier == "flex"


@pytest.mark.parametrize(
    "payload",
    [
        {"hello": "world"},
        {"usage": {"foo": 1}},
        42,
    ],
)
def test_unreadable_shapes_raise_value_error(payload: Any) -> None:
    with pytest.raises(ValueError, match="cannot read usage"):
        detect_provider(payload)


def test_negative_or_fractional_counts_are_rejected() -> None:
    with pytest.raises(ValueError, match="prompt_tokens"):
        extract({"usage": {"prompt_tokens": -1, "completion_tokens": 1}})
    with pytest.raises(ValueError, match="completion_tokens"):
        extract({"usage": {"prompt_tokens": 1, "completion_tokens": 1.5}})


def test_unknown_provider_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown provider"):
        extract(OPENAI_CHAT, "cohere-v9")


@pytest.mark.parametrize(
    ("provider", "message"), [(3, "provider must be"), ("x" * 10**6, "unknown")]
)
def test_a_provider_that_is_no_name_is_a_short_value_error(provider: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        extract(OPENAI_CHAT, provider)
    assert len(str(raised.value)) < 200


# -- billed units beside the text tokens ----------------------------------------------------------


def _anthropic(usage: dict[str, Any]) -> dict[str, Any]:
    return {"id": "msg_1", "type": "message", "model": "claude-sonnet-4-5", "usage": usage}


def test_anthropic_message_iterations_are_inside_the_top_level() -> None:
    """``message`` and ``fallback_message`` entries are the passes the top level sums: only
    ``compaction`` and ``advisor_message`` entries add tokens."""
    entry = {"input_tokens": 100, "output_tokens": 10}
    found = extract(
        _anthropic(
            {
                "input_tokens": 200,
                "output_tokens": 20,
                "iterations": [
                    {"type": "message", **entry},
                    {"type": "fallback_message", "model": "claude-haiku-4-5", **entry},
                    {"type": "a_future_kind", **entry},
                ],
            }
        )
    )
    assert found is not None
    assert (found.usage.input_tokens, found.usage.output_tokens) == (200, 20)
    # The fallback model's pass is kept (inside the totals) to be priced at its own model.
    assert [(p.kind, p.model, p.usage.input_tokens) for p in found.usage.passes] == [
        ("fallback_message", "claude-haiku-4-5", 100)
    ]


def test_anthropic_fallback_pass_is_priced_at_the_fallback_models_rates() -> None:
    """Server-side fallback: the requested model declined (its ``message`` entry) and a
    fallback model served the reply (``fallback_message``, naming it). Both are inside the top
    level; each was billed at its own model, but the whole was priced at the call's model:
    claude-haiku-4-5's pass at claude-opus-4-1's rates, 15x over."""
    from decimal import Decimal

    from anthropic.types.beta import BetaMessage

    import tokenmeter

    usage = {
        "input_tokens": 2_000,
        "output_tokens": 1_010,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "iterations": [
            {
                "type": "message",
                "model": "claude-opus-4-1",
                "input_tokens": 1_000,
                "output_tokens": 10,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
            {
                "type": "fallback_message",
                "model": "claude-haiku-4-5",
                "input_tokens": 1_000,
                "output_tokens": 1_000,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
        ],
    }
    body = {**_anthropic(usage), "model": "claude-opus-4-1", "role": "assistant", "content": []}
    for response in (body, BetaMessage.model_validate(body)):
        found = extract(response)
        assert found is not None
        assert (found.usage.input_tokens, found.usage.output_tokens) == (2_000, 1_010)
        cost = tokenmeter.price("anthropic", "claude-opus-4-1", found.usage)
        assert cost.breakdown is not None
        # opus-4-1 $15/$75: 1,000 in + 10 out; haiku-4-5 $1/$5: 1,000 in + 1,000 out
        assert cost.breakdown["fallback_message"] == Decimal("0.006")
        assert cost.total_usd == Decimal("0.01575") + Decimal("0.006")

    # Entries that add up to more than the top level: it does not sum them (it is the serving
    # hop's alone, as in the stream the SDK's refusal-fallback middleware splices), so each
    # entry is counted, at its own model's rates; the top level's own figures are never cut.
    usage["iterations"][1]["input_tokens"] = 5_000  # type: ignore[index]
    found = extract({**body, "usage": usage})
    assert found is not None
    assert (found.usage.input_tokens, found.usage.output_tokens) == (6_000, 1_010)
    assert [(p.model, p.usage.input_tokens) for p in found.usage.passes] == [
        ("claude-haiku-4-5", 5_000)
    ]
    usage["iterations"][1]["output_tokens"] = 5  # type: ignore[index]
    found = extract({**body, "usage": usage})
    assert found is not None
    assert (found.usage.input_tokens, found.usage.output_tokens) == (6_000, 1_010)


@pytest.mark.parametrize(
    ("served", "named"),
    [
        ("claude-sonnet-4-20250514", "claude-sonnet-4-0"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-sonnet-4-5-20250929", "us.anthropic.claude-sonnet-4-5-20250929-v1:0"),
        ("claude-opus-4-1", "Claude-Opus-4-1-20250805"),
    ],
)
def test_anthropic_message_entries_naming_the_served_model_stay_in_the_top_level(
    served: str, named: str
) -> None:
    """A ``message`` entry of the requested model may spell it as the caller did (an alias):
    still the call's own pass, not a fallback model's."""
    entry = {"type": "message", "model": named, "input_tokens": 100, "output_tokens": 10}
    found = extract(
        {
            **_anthropic({"input_tokens": 100, "output_tokens": 10, "iterations": [entry]}),
            "model": served,
        }
    )
    assert found is not None and found.usage.passes == ()


def test_anthropic_compaction_cache_tokens_join_the_totals() -> None:
    found = extract(
        _anthropic(
            {
                "input_tokens": 10,
                "output_tokens": 5,
                "iterations": [
                    {
                        "type": "compaction",
                        "input_tokens": 100,
                        "cache_read_input_tokens": 40_000,
                        "cache_creation_input_tokens": 500,
                        "cache_creation": {"ephemeral_1h_input_tokens": 500},
                        "output_tokens": 300,
                    }
                ],
            }
        )
    )
    assert found is not None
    u = found.usage
    assert (u.input_tokens, u.output_tokens) == (40_610, 305)
    assert (u.cache_read_tokens, u.cache_write_tokens, u.cache_write_1h_tokens) == (
        40_000,
        500,
        500,
    )
    assert [(p.kind, p.model, p.usage.input_tokens) for p in u.passes] == [
        ("compaction", None, 40_600)
    ]


@pytest.mark.parametrize(
    ("usage", "message"),
    [
        ({"input_tokens": 1, "output_tokens": 1, "iterations": "lots"}, "'iterations' is not"),
        (
            {"input_tokens": 1, "output_tokens": 1, "iterations": [{"type": "compaction"}, 7]},
            "'iterations entry' is not an object",
        ),
        (
            {"input_tokens": 1, "output_tokens": 1, "server_tool_use": {"web_search_requests": -1}},
            "negative",
        ),
    ],
)
def test_anthropic_unreadable_billed_units_are_a_value_error(
    usage: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        extract(_anthropic(usage))


def test_gemini_modalities_unknown_ones_skipped_and_none_beyond_the_totals() -> None:
    meta = {
        "promptTokenCount": 10,
        "candidatesTokenCount": 5,
        "totalTokenCount": 15,
        "promptTokensDetails": [
            {"modality": "MODALITY_UNSPECIFIED", "tokenCount": 3},
            {"modality": "HOLOGRAM", "tokenCount": 3},
            {"modality": "VIDEO", "tokenCount": 99},  # more than the prompt: cut to it
            {"tokenCount": 2},
        ],
        "candidatesTokensDetails": [{"modality": "AUDIO", "tokenCount": 5}],
    }
    found = extract({"candidates": [], "usageMetadata": meta})
    assert found is not None
    assert found.usage.modalities == {"input_video": 10, "output_audio": 5}
    assert found.usage.output_audio_tokens == 5


@pytest.mark.parametrize(
    ("side", "details"),
    [
        ("input", {"promptTokensDetails": [("TEXT", 1000), ("AUDIO", 1000)]}),
        ("output", {"candidatesTokensDetails": [("TEXT", 100), ("IMAGE", 60)]}),
        ("cache_read", {"cacheTokensDetails": [("TEXT", 400), ("AUDIO", 400)]}),
    ],
)
def test_gemini_modalities_adding_up_beyond_their_total_are_unreadable(
    side: str, details: dict[str, list[tuple[str, int]]]
) -> None:
    """Each count by modality was cut to its total, never their sum: TEXT 1000 and AUDIO 1000 of
    a 1000-token prompt priced all of it as audio and the text at nothing."""
    meta: dict[str, Any] = {
        "promptTokenCount": 1000,
        "cachedContentTokenCount": 500,
        "candidatesTokenCount": 100,
        "totalTokenCount": 1100,
    }
    for name, entries in details.items():
        meta[name] = [{"modality": m, "tokenCount": n} for m, n in entries]
    with pytest.raises(ValueError, match=f"counts by modality .* more than its {side}"):
        extract({"candidates": [], "usageMetadata": meta})
    fitting = {**meta, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 1000}]}
    found = extract({"candidates": [], "usageMetadata": {**fitting, **_one_each(details)}})
    assert found is not None and found.usage.input_tokens == 1000


def _one_each(details: dict[str, list[tuple[str, int]]]) -> dict[str, Any]:
    """``details`` with only the first entry of each list: parts that fit their totals."""
    return {
        name: [{"modality": m, "tokenCount": n} for m, n in entries[:1]]
        for name, entries in details.items()
        if name != "promptTokensDetails"
    }


def test_gemini_modality_details_that_are_not_a_list_are_a_value_error() -> None:
    meta = {"promptTokenCount": 10, "promptTokensDetails": "TEXT"}
    with pytest.raises(ValueError, match="prompt_tokens_details"):
        extract({"candidates": [], "usageMetadata": meta})


def test_openai_responses_tool_usage_counts_billable_searches_once() -> None:
    """``tool_usage.web_search.num_requests`` counts billable searches (page opens excluded):
    it wins over counting ``web_search_call`` items."""
    response = {
        **OPENAI_RESPONSE,
        "output": [{"type": "web_search_call", "id": f"ws_{i}"} for i in range(3)]
        + [{"type": "file_search_call", "id": "fs_1"}, {"type": 7}],
        "tool_usage": {
            "web_search": {"num_requests": 2},
            "image_gen": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0},
        },
    }
    found = extract(response)
    assert found is not None
    assert found.usage.tool_requests == {"web_search": 2, "file_search": 1}


def test_openai_web_search_page_actions_are_not_billed_searches() -> None:
    """Without ``tool_usage``, searches are counted from the ``web_search_call`` items; a
    reasoning model's ``open_page`` and ``find_in_page`` actions are such items too, but only
    ``search`` actions incur the per-call fee (OpenAI's web search docs; ``tool_usage`` leaves
    page opens out). They were each billed as a search."""
    calls = [
        {"type": "web_search_call", "id": "ws_1", "action": {"type": "search", "query": "q"}},
        {"type": "web_search_call", "id": "ws_2", "action": {"type": "open_page", "url": "u"}},
        {"type": "web_search_call", "id": "ws_3", "action": {"type": "find_in_page", "url": "u"}},
        {"type": "web_search_call", "id": "ws_4", "status": "completed"},  # older: no action
    ]
    found = extract({**OPENAI_RESPONSE, "output": calls})
    assert found is not None
    assert found.usage.tool_requests == {"web_search": 2}


def test_an_openai_batch_results_line_is_read_at_batch_prices(sink: InMemorySink) -> None:
    """docs/providers.md sends batch jobs to record_response(), but a results file's body says
    ``"service_tier": "default"``: recorded at the standard price, twice the bill (gpt-4o-mini
    $0.00036 for 1,200 / 300 tokens where the Batch API bills $0.00018). The results line
    (``custom_id``, ``response.body``) is read as its body, at batch prices."""
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [],
        "usage": {"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500},
        "service_tier": "default",
    }
    line = {
        "id": "batch_req_1",
        "custom_id": "request-1",
        "response": {"status_code": 200, "request_id": "req_1", "body": body},
        "error": None,
    }
    found = extract(line)
    assert found is not None
    assert (found.provider, found.tier, found.usage.input_tokens) == ("openai", "batch", 1200)
    rec = tokenmeter.record_response(line)
    assert (rec.model_name, rec.operation, rec.request_id) == (
        "gpt-4o-mini-2024-07-18",
        "chat.completions",
        "chatcmpl-1",
    )
    assert rec.estimated_cost_usd == Decimal("0.00018")  # half of $0.15 / $0.60 a million
    failed = {**line, "response": {"status_code": 400, "body": {"error": {"code": "x"}}}}
    with pytest.raises(ValueError, match="no usage"):
        tokenmeter.record_response(failed)


#: A Realtime ``response.done`` event's response (gpt-realtime: text $4 in / $0.40 cached /
#: $16 out, audio $32 in / $0.40 cached / $64 out, per million).
OPENAI_REALTIME_RESPONSE: dict[str, Any] = {
    "id": "resp_1",
    "object": "realtime.response",
    "status": "completed",
    "output": [],
    "usage": {
        "total_tokens": 3000,
        "input_tokens": 2000,
        "output_tokens": 1000,
        "input_token_details": {
            "cached_tokens": 500,
            "text_tokens": 500,
            "audio_tokens": 1500,
            "image_tokens": 0,
            "cached_tokens_details": {"text_tokens": 100, "audio_tokens": 400},
        },
        "output_token_details": {"text_tokens": 200, "audio_tokens": 800},
    },
}


def test_an_openai_realtime_response_is_priced_by_modality_and_cache(sink: InMemorySink) -> None:
    """docs/providers.md sends Realtime calls to record_response(), but its usage spells the
    details ``input_token_details`` / ``output_token_details`` and splits the cached input in
    ``cached_tokens_details``: the 800 output audio tokens were priced as text and the 400
    cached audio tokens as uncached audio, $0.0642 recorded where OpenAI bills $0.0914."""
    realtime = pytest.importorskip("openai.types.realtime")
    sdk_object = realtime.RealtimeResponse.model_validate(OPENAI_REALTIME_RESPONSE)
    model = "gpt-realtime-2025-08-28"
    by_hand = tokenmeter.price(
        "openai",
        model,
        {
            "input_tokens": 2000,
            "output_tokens": 1000,
            "cache_read_tokens": 500,
            "modalities": {
                "input_text": 500,
                "input_audio": 1500,
                "cache_read_text": 100,
                "cache_read_audio": 400,
                "output_text": 200,
                "output_audio": 800,
            },
        },
    )
    assert by_hand.total_usd == Decimal("0.0914")
    for response in (OPENAI_REALTIME_RESPONSE, sdk_object):
        rec = tokenmeter.record_response(response, provider="openai", model=model)
        assert rec.estimated_cost_usd == by_hand.total_usd
        assert not rec.estimated
        assert rec.cost_breakdown == by_hand.breakdown


def test_a_proxy_is_read_as_what_it_wraps_whatever_another_proxy_wrapped() -> None:
    """A proxy's class says what it wraps (a model, then a dict): each is read as such, whichever
    came first (a cached answer per proxy type would be the first one's)."""
    import wrapt

    from tokenmeter.usage._read import getter

    model = wrapt.ObjectProxy(Usage(input_tokens=3, output_tokens=1))
    plain = wrapt.ObjectProxy({"input_tokens": 4})
    assert getter(model)("input_tokens") == 3
    assert getter(plain)("input_tokens") == 4


def test_gemini_search_grounding_is_a_billed_tool_request() -> None:
    """Grounding with Google Search is billed beside the tokens: per search query the model ran
    from Gemini 3 on ($14 per 1,000 in genai-prices), per grounded prompt (an answer that ran
    any) on Gemini 1.x and 2.x ($35 per 1,000). It was never read, though docs/pricing.md lists
    its fee: a grounded call was priced at its tokens alone."""
    from decimal import Decimal

    from google.genai import types

    import tokenmeter

    def grounded(model: str, *queries: str) -> dict[str, Any]:
        return {
            **GEMINI_RESPONSE,
            "modelVersion": model,
            "candidates": [
                {
                    **GEMINI_RESPONSE["candidates"][0],
                    "groundingMetadata": {
                        "webSearchQueries": list(queries[:2]),
                        "imageSearchQueries": list(queries[2:]),
                        "groundingChunks": [{"web": {"uri": "https://example.com"}}],
                    },
                }
            ],
        }

    three = grounded("gemini-3-pro-preview", "weather paris", "weather lyon", "eiffel tower")
    for response in (three, types.GenerateContentResponse.model_validate(three)):
        found = extract(response)
        assert found is not None
        assert found.usage.tool_requests == {"web_search": 3}
    cost = tokenmeter.price("google", "gemini-3-pro-preview", found.usage)
    assert cost.breakdown is not None
    assert cost.breakdown["web_search"] == Decimal("0.042")  # 3 queries at $14 per 1,000

    found = extract(grounded("gemini-2.5-flash", "weather paris", "weather lyon"))
    assert found is not None
    assert found.usage.tool_requests == {"web_search": 1}  # one grounded prompt
    cost = tokenmeter.price("google", "gemini-2.5-flash", found.usage)
    assert cost.breakdown is not None
    assert cost.breakdown["web_search"] == Decimal("0.035")

    # The search tool offered but not used, or metadata of no known shape: nothing billed.
    for metadata in ({"webSearchQueries": []}, {"webSearchQueries": "x"}, "x", 5):
        response = grounded("gemini-3-pro-preview")
        response["candidates"][0]["groundingMetadata"] = metadata
        found = extract(response)
        assert found is not None
        assert found.usage.tool_requests == {}
    found = extract({**GEMINI_RESPONSE, "candidates": ["x", None, 5]})
    assert found is not None
    assert found.usage.tool_requests == {}


#: Values a compatible server may send for a count: fine ones, and every kind to refuse.
_COUNT_VALUES: list[Any] = [None, 0, 1, 3, 19, 250, MAX_TOKENS, MAX_TOKENS + 1, -1, 2.0, 2.5]
_COUNT_VALUES += [True, False, "5", "", [], {}, 2**70, float("nan")]
#: Per shape: the totals, then each details object with the counts it may hold.
_SHAPES: dict[
    str, tuple[tuple[str, ...], tuple[str, tuple[str, ...]], tuple[str, tuple[str, ...]]]
] = {
    "chat": (
        ("prompt_tokens", "completion_tokens", "total_tokens"),
        (
            "prompt_tokens_details",
            ("cached_tokens", "cache_write_tokens", "audio_tokens", "image_tokens", "text_tokens"),
        ),
        (
            "completion_tokens_details",
            ("reasoning_tokens", "audio_tokens", "accepted_prediction_tokens", "text_tokens"),
        ),
    ),
    "responses": (
        ("input_tokens", "output_tokens", "total_tokens"),
        ("input_tokens_details", ("cached_tokens", "cache_write_tokens")),
        ("output_tokens_details", ("reasoning_tokens",)),
    ),
}
#: Keys beside the declared ones (compatible servers), and details that are not an object.
_EXTRA = ("prompt_cache_hit_tokens", "citation_tokens", "num_search_queries", "reasoning_tokens")
_ODD_DETAILS: list[Any] = [None, 5, "x", [], {"cached_tokens": 2, "extra_key": 1}]


def _random_usage(rng: random.Random, shape: str) -> dict[str, Any]:
    """A usage block of ``shape``: mostly consistent counts (parts within their totals; now and then
    xAI's total with the reasoning beside the output), now and then a value or a shape to refuse
    or a key beside the declared ones."""
    prompt, completion = rng.randrange(0, 3000), rng.randrange(0, 1000)

    def part(total: int) -> Any:
        return (
            rng.choice(_COUNT_VALUES) if rng.random() < 0.03 else rng.randrange(0, total // 3 + 1)
        )

    reasoning = part(completion)
    total = (
        prompt + completion + (reasoning if type(reasoning) is int and rng.random() < 0.2 else 0)
    )
    top, (key_in, names_in), (key_out, names_out) = _SHAPES[shape]
    usage: dict[str, Any] = dict(zip(top, (prompt, completion, total), strict=True))
    for name in top:
        if rng.random() < 0.04:
            usage[name] = rng.choice([*_COUNT_VALUES, "absent"])
    usage = {name: value for name, value in usage.items() if value != "absent"}
    for key, names, within in (
        (key_in, names_in, prompt),
        (key_out, names_out, completion),
    ):
        if rng.random() < 0.05:
            usage[key] = rng.choice(_ODD_DETAILS)
        elif rng.random() < 0.9:
            usage[key] = {name: part(within) for name in names if rng.random() < 0.7}
    details_out = usage.get(key_out)
    if type(details_out) is dict and "reasoning_tokens" in details_out:
        details_out["reasoning_tokens"] = reasoning  # the one the total may count beside
    if rng.random() < 0.1:
        usage[rng.choice(_EXTRA)] = part(completion)
    if type(details_out) is dict and rng.random() < 0.1:  # not declared by every SDK release
        details_out["image_tokens"] = part(completion)
    return usage


def _openai_serving(bodies: list[dict[str, Any]]) -> Any:
    """A real openai client whose server answers each call with the last of ``bodies``."""
    openai = pytest.importorskip("openai")
    import httpx2

    return openai.OpenAI(
        api_key="sk-test",
        base_url="http://fake.local/v1",
        http_client=httpx2.Client(
            transport=httpx2.MockTransport(
                lambda request: httpx2.Response(
                    200,  # NaN too, as a server may send it (json= refuses it)
                    content=json.dumps(bodies[-1]).encode(),
                    headers={"content-type": "application/json"},
                )
            )
        ),
    )


@pytest.mark.parametrize("shape", ["chat", "responses"])
def test_a_usage_block_reads_alike_on_the_straight_road_and_the_general_one(shape: str) -> None:
    """``usage_from_openai`` reads the usual SDK chat or Responses block in a straight line, and
    anything else the general way: both must give the same Usage, or refuse with the same message,
    for the objects the SDK really builds from a response (it does not validate what a server
    sends)."""
    from tokenmeter.usage import openai as reader

    bodies: list[dict[str, Any]] = []
    client = _openai_serving(bodies)

    def outcome(read: Any, usage: Any) -> tuple[str, Any]:
        try:
            return "read", read(usage)
        except ValueError as error:
            return "refused", str(error)

    rng = random.Random(8)
    straight = refused = 0
    for _ in range(400):
        body = OPENAI_CHAT if shape == "chat" else OPENAI_RESPONSE
        bodies.append({**body, "usage": _random_usage(rng, shape)})
        if shape == "chat":
            usage = client.chat.completions.create(model="gpt-4o", messages=[]).usage
        else:
            usage = client.responses.create(model="o3", input="hi").usage
        general = outcome(reader._any_shape, usage)  # meets the block's types first
        straight += outcome(reader._plain_block, usage) != ("read", None)
        refused += general[0] == "refused"
        assert outcome(reader.usage_from_openai, usage) == general, bodies[-1]["usage"]
    assert straight > 200 and refused > 40, (straight, refused)  # both roads; refusals too


#: Values a compatible server may send for a chat completion's own fields.
_TOP_VALUES: dict[str, list[Any]] = {
    "model": ["gpt-4o-2024-08-06", "", None, 5, ["gpt-4o"], "gpt-\ud800", "m" * 5000],
    "id": ["chatcmpl-1", None, 12, 2**70, "", ["x"], "i" * 5000, 1.5],
    "service_tier": [None, "default", "flex", "priority", " Flex ", "scale", 5, ["x"], "x" * 30],
    "object": ["chat.completion", "chat.completion.chunk", "text_completion", None, 5, "response"],
}


def test_a_chat_completion_reads_alike_on_the_straight_road_and_the_general_one() -> None:
    """``from_openai_response`` reads the usual SDK chat completion in a straight line and
    anything else the general way: both must give the same reading, or refuse with the same
    message, for the objects the SDK really builds from what a server sends."""
    from tokenmeter.usage import openai as reader

    bodies: list[dict[str, Any]] = []
    client = _openai_serving(bodies)

    def outcome(read: Any, response: Any) -> tuple[str, Any]:
        try:
            return "read", read(response, "openai")
        except ValueError as error:
            return "refused", str(error)

    rng = random.Random(9)
    straight = 0
    for _ in range(400):
        body: dict[str, Any] = {**OPENAI_CHAT, "usage": _random_usage(rng, "chat")}
        for name, values in _TOP_VALUES.items():
            if rng.random() < 0.15:
                body[name] = rng.choice(values)
        if rng.random() < 0.05:
            body["usage"] = rng.choice([None, 5, "x", {}])
        if rng.random() < 0.05:
            body[rng.choice(["custom_id", "x_extra"])] = "req-1"
        bodies.append(body)
        completion = client.chat.completions.create(model="gpt-4o", messages=[])
        general = outcome(reader._any_response, completion)  # meets the types first
        straight += outcome(reader.plain_completion, completion) != ("read", None)
        assert outcome(reader.from_openai_response, completion) == general, body
    # (A random total beyond prompt + completion takes the general road: thinking it holds.)
    assert straight > 150, straight
