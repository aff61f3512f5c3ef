"""``tokenmeter.estimate`` and the request estimates behind estimated records.

The real figures below are usage that providers reported for these exact requests in public
recorded API exchanges (short prompts; the counts are facts about the providers' tokenizers).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

import tokenmeter
from tokenmeter import _estimate
from tokenmeter._estimate import TextTally, count_tokens, estimate_input

#: (provider, model, request, real input tokens, response text, real output tokens)
REAL = [
    (
        "openai",
        "gpt-4o-mini",
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]},
        8,
        "Hello! How can I assist you today?",
        9,
    ),
    (
        "anthropic",
        "claude-3-opus-latest",
        {
            "model": "claude-3-opus-latest",
            "system": "You are a helpful assistant.\n\n",
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "What is the capital of France?"}],
                }
            ],
        },
        20,
        "The capital of France is Paris.",
        10,
    ),
    (
        "anthropic",
        "claude-haiku-4-5",
        {
            "model": "claude-haiku-4-5",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}],
        },
        8,
        "Hi there! How are you doing today? Is there anything I can help you with?",
        21,
    ),
    (
        "google",
        "gemini-2.0-flash",
        {
            "model": "gemini-2.0-flash",
            "contents": [{"role": "user", "parts": [{"text": "What is the capital of France?"}]}],
            "systemInstruction": {"parts": [{"text": "You are a helpful assistant."}]},
        },
        13,
        "The capital of France is Paris.\n",
        8,
    ),
]


@pytest.mark.parametrize(
    ("provider", "model", "request_", "real_in", "text", "real_out"),
    REAL,
    ids=[f"{r[0]}-{r[1]}" for r in REAL],
)
def test_estimates_come_close_to_real_usage(
    provider: str, model: str, request_: dict[str, Any], real_in: int, text: str, real_out: int
) -> None:
    """Within 30% of what the provider billed (OpenAI's own tokenizer: within one token)."""
    got_in = estimate_input(provider, request_).input_tokens
    got_out = tokenmeter.estimate(model, output=text, provider=provider).output_tokens
    tolerance = 1 if provider == "openai" else 0.3
    for got, real in ((got_in, real_in), (got_out, real_out)):
        if tolerance == 1:
            assert abs(got - real) <= 1, (got, real)
        else:
            assert abs(got / real - 1) <= tolerance, (got, real)


def test_estimate_public_api_counts_messages_and_text_as_input() -> None:
    messages = [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "Summarise the plot of Hamlet in two sentences."},
    ]
    usage = tokenmeter.estimate("gpt-4o", messages=messages)
    assert isinstance(usage, tokenmeter.Usage)
    assert usage.output_tokens == 0
    # Two messages of 6 and 11 tokens, 4 tokens of framing each, 3 to prime the reply.
    assert usage.input_tokens == 6 + 11 + 2 * 4 + 3
    prompt = tokenmeter.estimate("gpt-4o", text="Summarise the plot of Hamlet in two sentences.")
    assert prompt.input_tokens == 11
    both = tokenmeter.estimate("gpt-4o", messages=messages, text="Summarise")
    assert both.input_tokens > usage.input_tokens


def test_provider_follows_the_model_name_unless_given() -> None:
    text = "A longer sentence, so that a per-provider difference in counting shows clearly here."
    claude = tokenmeter.estimate("claude-sonnet-4-5", text=text).input_tokens
    gpt = tokenmeter.estimate("gpt-4o", text=text).input_tokens
    assert claude > gpt  # Claude's tokenizer splits English finer than o200k
    assert tokenmeter.estimate("my-proxy-model", text=text, provider="anthropic").input_tokens == (
        claude
    )
    assert tokenmeter.estimate("claude-x", text=text, provider="bedrock").input_tokens == gpt


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"model": ""}, "model"),
        ({"model": 3}, "model"),
        ({"model": "gpt-4o", "messages": "hi"}, "messages"),
        ({"model": "gpt-4o", "text": 5}, "text"),
        ({"model": "gpt-4o", "provider": ""}, "provider"),
        ({"model": "gpt-4o", "output": ["x"]}, "output"),
    ],
)
def test_bad_arguments_are_a_value_error_naming_the_field(
    kwargs: dict[str, Any], field: str
) -> None:
    model = kwargs.pop("model")
    with pytest.raises(ValueError, match=field):
        tokenmeter.estimate(model, **kwargs)


def test_every_request_surface_is_read() -> None:
    """Chat messages + tools, Responses input + instructions, Anthropic messages + system +
    tools, Gemini contents (SDK objects too), legacy prompt, embeddings input."""
    from google.genai import types

    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    chat = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Weather in Paris?"}]}
    bare = estimate_input("openai", chat).input_tokens
    assert estimate_input("openai", {**chat, "tools": [tool]}).input_tokens > bare + 10
    responses = {
        "model": "gpt-4o",
        "instructions": "Answer in French.",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]}],
    }
    assert estimate_input("openai", responses, "responses").input_tokens >= 10
    claude = {
        "model": "claude-sonnet-4-5",
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
    }
    with_tools = {**claude, "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}]}
    assert estimate_input("anthropic", with_tools).input_tokens > (
        estimate_input("anthropic", claude).input_tokens + 300  # Claude's tool-use system prompt
    )
    contents = [types.Content(role="user", parts=[types.Part(text="Weather in Paris?")])]
    config = types.GenerateContentConfig(system_instruction="Be brief.")
    gemini = estimate_input("google", {"model": "gemini-2.5-flash", "contents": contents})
    with_system = estimate_input(
        "google", {"model": "gemini-2.5-flash", "contents": contents, "config": config}
    )
    assert 0 < gemini.input_tokens < with_system.input_tokens
    prompt = {"model": "gpt-3.5-turbo-instruct", "prompt": "Say this is a test"}
    assert estimate_input("openai", prompt, "completions").input_tokens == 5
    embeddings = {"model": "text-embedding-3-small", "input": ["first text", "second text"]}
    assert estimate_input("openai", embeddings, "embeddings").input_tokens == 4


def test_token_ids_sent_in_place_of_text_are_a_token_each() -> None:
    """Embeddings and legacy completions take token ids (LangChain's OpenAI embeddings send
    them by default): they were estimated at 0 tokens, so a budget reserved nothing for them."""
    ids = {"model": "text-embedding-3-small", "input": [1] * 5000}
    batch = {"model": "text-embedding-3-small", "input": [[1] * 50, [2] * 70]}
    prompt = {"model": "gpt-3.5-turbo-instruct", "prompt": [5] * 10}
    assert estimate_input("openai", ids, "embeddings").input_tokens == 5000
    assert estimate_input("openai", batch, "embeddings").input_tokens == 120
    assert estimate_input("openai", prompt, "completions").input_tokens == 10
    # the budgets' cheap ceiling cannot see token ids: it leaves them to the exact count
    assert _estimate._input_bound("openai", ids) is None
    assert _estimate._input_bound("openai", batch) is None


def test_images_are_counted_at_the_providers_typical_rate() -> None:
    picture = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    low = {"type": "image_url", "image_url": {"url": "https://x.invalid/a.png", "detail": "low"}}
    base = [{"type": "text", "text": "What is this?"}]

    def tokens(parts: list[Any]) -> int:
        return estimate_input(
            "openai", {"model": "gpt-4o", "messages": [{"role": "user", "content": parts}]}
        ).input_tokens

    assert tokens([*base, picture]) - tokens(base) == 765
    assert tokens([*base, low]) - tokens(base) == 85
    inline = {"inline_data": {"mime_type": "image/png", "data": "AAAA"}}
    gemini = estimate_input("google", {"contents": [{"role": "user", "parts": [inline]}]})
    assert gemini.input_tokens == 258


def test_a_structured_output_schema_is_counted_as_input() -> None:
    """A structured-output schema is billed as input (the provider puts it in the prompt): the
    estimate of a call without usage, and a budget's, left it out. It counts as tools'
    parameters count, in each shape the SDKs take it: a dict, a Gemini ``Schema``, a pydantic
    class."""
    from google.genai import types
    from pydantic import BaseModel, Field

    description = "The city, spelled as its people spell it. " * 50
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "description": description}},
    }

    class City(BaseModel):
        city: str = Field(description=description)

    hi = [{"role": "user", "content": "hi"}]
    bare = {
        "openai": estimate_input("openai", {"model": "gpt-4o", "messages": hi}).input_tokens,
        "anthropic": estimate_input(
            "anthropic", {"model": "claude-sonnet-4-5", "messages": hi}
        ).input_tokens,
        "google": estimate_input(
            "google", {"model": "gemini-2.5-flash", "contents": "hi"}
        ).input_tokens,
    }
    with_schema = [
        (
            "openai",
            {
                "model": "gpt-4o",
                "messages": hi,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "c", "schema": schema},
                },
            },
        ),
        (
            "openai",
            {
                "model": "gpt-4o",
                "input": hi,
                "text": {"format": {"type": "json_schema", "name": "c", "schema": schema}},
            },
        ),
        (
            "anthropic",
            {
                "model": "claude-sonnet-4-5",
                "messages": hi,
                "output_config": {"format": {"type": "json_schema", "schema": schema}},
            },
        ),
        (
            "google",
            {
                "model": "gemini-2.5-flash",
                "contents": "hi",
                "config": {"responseJsonSchema": schema},
            },
        ),
        (
            "google",
            {
                "model": "gemini-2.5-flash",
                "contents": "hi",
                "config": types.GenerateContentConfig(
                    response_schema=types.Schema.model_validate(schema)
                ),
            },
        ),
        (
            "google",
            {
                "model": "gemini-2.5-flash",
                "contents": "hi",
                "config": types.GenerateContentConfig(response_schema=City),
            },
        ),
    ]
    for provider, request in with_schema:
        assert estimate_input(provider, request).input_tokens > bare[provider] + 200, request
    # A format without a schema (plain JSON mode, plain text) adds nothing.
    plain = {"model": "gpt-4o", "messages": hi, "response_format": {"type": "json_object"}}
    assert estimate_input("openai", plain).input_tokens == bare["openai"]


def test_unreadable_requests_estimate_nothing_and_never_raise() -> None:
    class Weird:
        def model_dump(self, **kwargs: Any) -> Any:
            raise RuntimeError("no")

    assert estimate_input("openai", None).input_tokens == 0
    assert estimate_input("openai", {"messages": [Weird(), 5, None]}).input_tokens == 4 * 3 + 3
    assert estimate_input("openai", object()).input_tokens >= 0


def test_text_tally_is_bounded_and_extrapolates() -> None:
    tally = TextTally()
    piece = "word " * 100
    for _ in range(1_000):  # 500,000 characters streamed
        tally.add(piece)
    tally.add(None)
    tally.add(3)
    assert tally.chars == 500_000
    assert tally.kept <= _estimate._KEEP_CHARS + len(piece)
    exact = count_tokens(piece * 1_000, "openai", "gpt-4o")
    assert abs(tally.tokens("openai", "gpt-4o") / exact - 1) < 0.01


def test_one_huge_streamed_piece_is_not_kept_whole() -> None:
    """A 20 MB delta (a hostile or broken server) keeps no more than the bound: the rest is only
    counted, and the estimate extrapolated from what was kept."""
    tally = TextTally()
    tally.add("word " * 4)
    tally.add("word " * 4_000_000)
    assert tally.chars == 20_000_020
    assert tally.kept == _estimate._KEEP_CHARS == sum(map(len, tally.parts))
    exact = count_tokens("word " * 100_000, "openai", "gpt-4o") * 40  # a 20 MB text is refused
    assert abs(tally.tokens("openai", "gpt-4o") / exact - 1) < 0.01


def test_without_an_offline_tokenizer_a_character_heuristic_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    text = "The quick brown fox jumps over the lazy dog, again and again, all afternoon long."
    exact = count_tokens(text, "openai", "gpt-4o")
    monkeypatch.setattr(_estimate, "_counters", {"o200k_base": None, "cl100k_base": None})
    guessed = count_tokens(text, "openai", "gpt-4o")
    assert guessed != exact or guessed > 0
    assert abs(guessed / exact - 1) < 0.35
    assert count_tokens("日本語のテキスト", "openai") == 8  # one token a character


def test_a_text_the_tokenizer_refuses_is_counted_by_the_heuristic_not_as_nothing() -> None:
    # bpe-openai refuses a text of several megabytes; a 5 MB prompt must not estimate as 0
    # tokens (a budget would then let it through, a stream without usage would record zero).
    huge = "word " * 1_000_000
    estimated = tokenmeter.estimate("gpt-4o", text=huge).input_tokens
    assert 1_000_000 <= estimated <= 1_500_000
    request = {"model": "gpt-4o", "messages": [{"role": "user", "content": huge}]}
    assert estimate_input("openai", request).input_tokens >= 1_000_000


def test_texts_counted_before_are_remembered_per_encoding_and_within_bounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A conversation resends its history: each text is tokenized once per encoding, the
    answers are the tokenizer's, and the memory kept is bounded by characters."""
    monkeypatch.setattr(_estimate, "_counts", {})
    monkeypatch.setattr(_estimate, "_counts_chars", 0)
    monkeypatch.setattr(_estimate, "_COUNTS_MAX_CHARS", 2_000)
    calls: list[str] = []
    real = _estimate._counter("o200k_base")
    assert real is not None

    def counting(text: str) -> int:
        calls.append(text)
        return real(text)

    monkeypatch.setitem(_estimate._counters, "o200k_base", counting)
    history = ["The quick brown fox jumps over the lazy dog. " * 5, "And then it slept."]
    first = count_tokens(history[0], "openai", "gpt-4o")
    assert count_tokens(history[0], "openai", "gpt-4o") == first == real(history[0])
    assert len(calls) == 1
    assert count_tokens(history[0], "openai", "gpt-4") != 0  # cl100k: its own entry
    assert ("cl100k_base", history[0]) in _estimate._counts
    for n in range(200):  # far more characters than the bound
        count_tokens(f"message number {n} " * 3, "openai", "gpt-4o")
    assert _estimate._counts_chars <= 2_000
    assert sum(len(text) for _, text in _estimate._counts) == _estimate._counts_chars


#: Plain requests of every surface and family (the bound must cover each): worst cases for it are
#: texts that tokenize one byte a token (digits, symbols, non-Latin scripts) and many short parts.
_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
_TEXTS = [
    "",
    "x",
    "Say hello.",
    "0123456789" * 50,
    "}{)(][!?~^" * 40,
    "日本語のテキストです。" * 20,
    "emoji 🙂🚀🧪 " * 30,
    "Ünïcödé çhàrs — \u2018quotes\u2019 … " * 10,
    "a b c d e f g " * 100,
    "".join(chr(i) for i in range(1, 32)) * 10,  # about a token a byte
    "".join(chr(0x4E00 + i * 7919 % 20000) for i in range(200)),  # rare CJK: 2 tokens a character
    "".join(chr(0x1F300 + i * 37 % 700) for i in range(100)),  # emoji
]
_BOUNDED = [
    *(
        ("openai", {"model": "gpt-4o", "messages": [{"role": "user", "content": text}]}, "chat")
        for text in _TEXTS
    ),
    (
        "openai",
        {
            "model": "gpt-4",
            "messages": [{"role": "system", "content": t} for t in _TEXTS],
            "tools": [_TOOL],
        },
        "chat",
    ),
    ("openai", {"model": "gpt-4o", "input": _TEXTS[5], "instructions": "Be brief."}, "responses"),
    (
        "openai",
        {
            "model": "gpt-4o",
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": t}]} for t in _TEXTS
            ],
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
        },
        "responses",
    ),
    ("openai", {"model": "text-embedding-3-small", "input": _TEXTS}, "embeddings"),
    ("openai", {"model": "gpt-3.5-turbo-instruct", "prompt": _TEXTS[3]}, "completions"),
    *(
        (
            "anthropic",
            {
                "model": "claude-sonnet-4-5",
                "system": [{"type": "text", "text": "Be brief."}],
                "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}],
                "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
            },
            "messages",
        )
        for text in _TEXTS
    ),
    *(
        (
            "google",
            {"model": "gemini-2.5-flash", "contents": [{"role": "user", "parts": [{"text": t}]}]},
            "generate_content",
        )
        for t in _TEXTS
    ),
]


_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "description": "The city, as its people spell it"}},
    "required": ["city"],
}
_BOUNDED += [
    (
        "openai",
        {
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": "json_schema", "json_schema": {"schema": _SCHEMA}},
        },
        "chat",
    ),
    (
        "openai",
        {"model": "gpt-4o", "input": "hi", "text": {"format": {"type": "json_schema", **_SCHEMA}}},
        "responses",
    ),
    (
        "anthropic",
        {
            "model": "claude-sonnet-4-5",
            "messages": [{"role": "user", "content": "hi"}],
            "output_config": {"format": {"type": "json_schema", "schema": _SCHEMA}},
        },
        "messages",
    ),
    (
        "google",
        {"model": "gemini-2.5-flash", "contents": "hi", "config": {"response_schema": _SCHEMA}},
        "generate_content",
    ),
]


@pytest.mark.parametrize(("provider", "request_", "operation"), _BOUNDED)
@pytest.mark.parametrize("tokenizer", [True, False])
def test_the_ceiling_a_budget_check_reserves_is_never_below_the_estimate(
    provider: str,
    request_: dict[str, Any],
    operation: str,
    tokenizer: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if not tokenizer:
        monkeypatch.setattr(_estimate, "_counters", {"o200k_base": None, "cl100k_base": None})
    exact = sum(_estimate._input_parts(provider, request_, operation).values())
    bound = _estimate._input_bound(provider, request_)
    assert bound is not None
    assert bound >= exact
    assert bound <= 8 * exact + 1000  # a ceiling, not a refusal of everything


@pytest.mark.parametrize(
    "request_",
    [
        {"messages": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
        {"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "f"}}]}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "u"}]}]},
        {"contents": [{"parts": [{"inline_data": {"mime_type": "image/png", "data": "AA"}}]}]},
        {"contents": [{"parts": [{"text": "x"}]}], "config": {"tools": [_TOOL]}},
        {"messages": [{"role": "assistant", "content": [{"type": "tool_use", "input": {}}]}]},
        {"messages": [{"role": "user", "content": b"bytes"}]},
        {"messages": [object()]},
        [{"role": "user", "content": "not a dict"}],
    ],
)
def test_no_ceiling_where_a_cost_is_not_its_text(request_: Any) -> None:
    """Media, tool-call arguments (sent as JSON), tools in a Gemini config, SDK objects: the
    characters say nothing of the cost, so only the exact estimate will do."""
    assert _estimate._input_bound("openai", request_) is None


def test_a_request_holding_a_list_twice_at_every_level_is_walked_within_bounds() -> None:
    """A list that holds itself twice is a tree of 2**30 values within the walk's depth: it was
    walked whole (hours, and gigabytes of text parts). The walk now reads a bounded number."""
    looped: list[Any] = ["word"]
    looped += [looped, looped]

    usage = tokenmeter.estimate("gpt-4o", messages=[{"role": "user", "content": looped}])

    assert 0 < usage.input_tokens <= _estimate._MAX_VALUES


def test_a_part_whose_type_is_not_text_leaves_the_rest_of_the_request_counted() -> None:
    """A tool's result is the application's own JSON: a Gemini function response holding a JSON
    schema (``"type": ["string", "null"]``) made the whole request estimate 0 tokens (a record
    without usage silently zero, a budget reserving nothing), and the budget's ceiling raise."""
    text = "word " * 2_000
    schema = {"type": ["string", "null"], "items": {"type": {"$ref": "#/x"}}}
    gemini = {
        "model": "gemini-2.5-flash",
        "contents": [
            {"role": "user", "parts": [{"text": text}]},
            {"role": "user", "parts": [{"function_response": {"name": "f", "response": schema}}]},
        ],
    }
    chat = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": text}, {"role": "tool", "content": [schema]}],
    }
    for provider, request in (("google", gemini), ("openai", chat)):
        usage = estimate_input(provider, request)
        assert usage.input_tokens > 2_000
        bound = _estimate._input_bound(provider, request)
        assert bound is None or bound >= usage.input_tokens


def test_a_text_too_long_for_the_tokenizer_in_one_piece_is_still_tokenized() -> None:
    """bpe-openai refuses a text of more than 200,000 tokens; such a text (a 600 KB JSON
    document, within a 1M-token context) was counted by the character heuristic, at half its
    tokens: a budget's reservation guessed where docs promise the tokenizer's count."""
    rows = [f'{{"id": {n * 7919}, "v": {n / 7:.6f}, "tag": "ab{n}"}}' for n in range(10_000)]
    document = "[" + ", ".join(rows) + "]"
    exact = sum(count_tokens(", ".join(rows[at : at + 500])) for at in range(0, 10_000, 500))
    assert abs(count_tokens(document) / exact - 1) < 0.01
    request = {"model": "gpt-4.1", "messages": [{"role": "user", "content": document * 10}]}
    assert abs(estimate_input("openai", request).input_tokens / (10 * exact) - 1) < 0.02


def test_a_model_name_of_any_length_is_not_kept_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """The encoding of each model name seen is remembered (up to 1,000 names): a server naming
    its model with a megabyte per answer (estimated for want of usage) held a gigabyte."""
    monkeypatch.setattr(_estimate, "_encodings", {})
    tally = TextTally()
    tally.add("Hello there.")
    for n in range(50):
        assert tally.tokens("openai", f"gpt-4-{n}" + "x" * 100_000) == 3
    assert sum(map(len, _estimate._encodings)) < 50 * 1_000


def test_a_provider_name_of_any_length_is_not_kept_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """The family of each provider name seen is remembered (up to 1,000 names): estimate() with
    a megabyte-long provider name each time held a gigabyte."""
    monkeypatch.setattr(_estimate, "_families", {})
    for n in range(50):
        usage = tokenmeter.estimate("gpt-4o", provider=f"p{n}" + "x" * 100_000, text="Hello there.")
        assert usage.input_tokens == 3
    assert sum(map(len, _estimate._families)) < 50 * 1_000


def test_a_gemini_function_response_is_counted_as_the_json_it_is_sent_as() -> None:
    """A function response is the application's JSON, sent as JSON: one shaped {"data": [...]}
    (the commonest shape of an API's answer) was counted as nothing, its key taken for media."""
    rows = [{"name": f"item {n}", "price": n * 1.5, "note": "a fine thing"} for n in range(200)]
    sent = count_tokens(json.dumps({"data": rows}, separators=(",", ":")), "google")

    def tokens(response: dict[str, Any]) -> int:
        part = {"function_response": {"name": "lookup", "response": response}}
        request = {"model": "gemini-2.5-flash", "contents": [{"role": "user", "parts": [part]}]}
        assert _estimate._input_bound("google", request) is None  # not text: the exact count
        return estimate_input("google", request).input_tokens

    for response in ({"data": rows}, {"result": {"data": rows}}, {"rows": rows}):
        assert abs(tokens(response) / sent - 1) < 0.1
