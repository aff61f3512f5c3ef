"""OpenAI usage (chat completions, legacy completions, embeddings, Responses, Images,
Realtime) -> Usage.

``prompt_tokens``/``input_tokens`` already include ``cached_tokens``; reasoning is already inside
``completion_tokens``/``output_tokens``. So the totals are taken as they are and the details are
subsets. OpenAI-compatible servers put extra keys beside them
(DeepSeek: ``prompt_cache_hit_tokens``; Perplexity: ``reasoning_tokens`` and ``citation_tokens``
OUTSIDE ``completion_tokens``, and ``num_search_queries``, each billed at its own rate, and
``search_context_size``, which sets its fee per request). xAI counts
its reasoning tokens beside ``completion_tokens`` too, and says so in ``total_tokens`` (prompt +
completion + reasoning): when the total says so, they are added to the output. A total beyond
prompt + completion that no reasoning detail names is thinking the completion count leaves out
(Gemini's OpenAI-compatible usage): added to the output, as reasoning.
"""

from __future__ import annotations

from typing import Any

from tokenmeter._models import (
    MAX_TOKENS,
    SEARCH_CONTEXT_KEYS,
    Pass,
    Usage,
    short_repr,
    usage_of,
)
from tokenmeter.pricing._names import model_family
from tokenmeter.usage._read import (
    Get,
    counts,
    field,
    getter,
    ident,
    plain_fields,
    priced_tier,
)
from tokenmeter.usage._types import Extracted

_OPERATIONS = {
    "chat.completion": "chat.completions",
    "chat.completion.chunk": "chat.completions",
    "text_completion": "completions",
    "response": "responses",
    "list": "embeddings",
}
_NOT_YET_BILLED = {"queued", "in_progress"}
#: Responses output items of built-in tools billed per call, and their ``tool_requests`` key.
_TOOL_CALLS = {"web_search_call": "web_search", "file_search_call": "file_search"}
#: Chat Completions models that search the web before every answer: OpenAI bills that search
#: per call, apart from the tokens, as its web search tool's ``web_search_preview`` (priced at
#: $25 per 1,000 on these gpt-4o models, as the Responses tool is). gpt-5-search-api searches
#: too, but its fee is not confirmed: it is left out (docs/providers.md, known limits).
_SEARCHING_CHAT_MODELS = {
    "gpt-4o-search-preview": "web_search_preview",
    "gpt-4o-mini-search-preview": "web_search_preview",
}
#: xAI's billed server-side tool calls (``usage.server_side_tool_usage_details``, successful
#: calls only) and their ``tool_requests`` key: its Collections Search is the Responses API's
#: ``file_search``. Its MCP calls are billed by their tokens alone.
_XAI_TOOL_CALLS = {
    "web_search_calls": "web_search",
    "x_search_calls": "x_search",
    "code_interpreter_calls": "code_execution",
    "file_search_calls": "file_search",
}
_XAI_TOOL_DETAILS = "server_side_tool_usage_details"
#: Web search actions that are no search (a reasoning model reading a page it found): no fee.
_PAGE_ACTIONS = {"open_page", "find_in_page", "find"}
_MAX_ITEMS = 10_000
#: (total input, total output, input details, output details) of the two usage shapes.
_CHAT = ("prompt_tokens", "completion_tokens", "prompt_tokens_details", "completion_tokens_details")
_RESPONSES = ("input_tokens", "output_tokens", "input_tokens_details", "output_tokens_details")


def usage_from_openai(usage: Any) -> Usage:
    """Normalise an OpenAI ``usage`` block of any of its three shapes."""
    found = _plain_block(usage)
    return found if found is not None else _any_shape(usage)


_NO_FIELDS: dict[str, Any] = {}


def _plain_block(usage: Any) -> Usage | None:
    """``_any_shape`` of the usual block, read in a straight line (every call reads one): an SDK
    chat or Responses usage block whose details hold nothing beside their declared fields, each
    count a whole number in range or absent. None for anything else, which ``_any_shape`` reads
    (``tests/usage/test_normalisation.py`` checks that the two read alike)."""
    fields = plain_fields(usage)
    if fields is None:
        return None
    names = _CHAT if fields.get("prompt_tokens") is not None else _RESPONSES
    total_in, total_out, in_details, out_details = names
    details_in, details_out = fields.get(in_details), fields.get(out_details)
    if details_in is None and names is _RESPONSES:  # a transcription's may be spelled otherwise
        return None
    got_in = _NO_FIELDS if details_in is None else plain_fields(details_in)
    got_out = _NO_FIELDS if details_out is None else plain_fields(details_out)
    if got_in is None or got_out is None:
        return None
    split = got_in.get("cache_write_tokens_details")
    got_split = _NO_FIELDS if split is None else plain_fields(split)
    if got_split is None:
        return None
    found: tuple[Any, ...] = (
        fields.get(total_in),
        fields.get(total_out),
        fields.get("total_tokens"),
        got_in.get("cached_tokens"),
        got_in.get("cache_write_tokens"),
        got_in.get("audio_tokens"),
        got_in.get("image_tokens"),
        got_in.get("text_tokens"),
        got_out.get("reasoning_tokens"),
        got_out.get("audio_tokens"),
        got_out.get("image_tokens"),
        got_out.get("text_tokens"),
        got_split.get("ttl_12h_tokens"),
    )
    if found[0] is None or found[1] is None:  # no usage block, or an output to work out
        return None
    for value in found:
        if value is not None and (type(value) is not int or not 0 <= value <= MAX_TOKENS):
            return None  # to be refused, with the field named
    input_tokens, output_tokens, total, cached, write, audio_in, image_in, text_in = found[:8]
    reasoning, audio_out, image_out, text_out, long_writes = found[8:]
    if not reasoning and total is not None and total > input_tokens + output_tokens:
        return None  # thinking only the total holds, as _any_shape reads it
    if reasoning and total == input_tokens + output_tokens + reasoning:  # as in _any_shape
        output_tokens += reasoning
    modalities = None
    if image_in or image_out or audio_in or audio_out or text_in or text_out:
        modalities = _modalities(
            input_tokens, output_tokens, text_in, audio_in, image_in, text_out, audio_out, image_out
        )
    return usage_of(
        input_tokens,
        output_tokens,
        cached or 0,
        write or 0,
        min(long_writes or 0, write or 0),
        reasoning or 0,
        audio_in or 0,
        audio_out or 0,
        modalities,
    )


def _modalities(
    input_tokens: int,
    output_tokens: int,
    text_in: int | None,
    audio_in: int | None,
    image_in: int | None,
    text_out: int | None,
    audio_out: int | None,
    image_out: int | None,
    citations: int = 0,
) -> dict[str, int]:
    """The counts by modality that a block reports (none larger than its total)."""
    found = {
        "input_text": text_in,
        "input_audio": audio_in,
        "input_image": image_in,
        "output_text": text_out,
        "output_audio": audio_out,
        "output_image": image_out,
        "output_citation": citations,
    }
    return {
        key: min(value, input_tokens if key[0] == "i" else output_tokens)
        for key, value in found.items()
        if value
    }


def _any_shape(usage: Any) -> Usage:
    get = getter(usage)
    if get("prompt_tokens") is not None:  # chat, legacy completions, embeddings
        names = _CHAT
    elif get("input_tokens") is not None:  # Responses API
        names = _RESPONSES
    else:
        raise ValueError(f"not an OpenAI usage block: {short_repr(usage)}")
    total_in, total_out, in_details, out_details = names
    input_tokens, output_tokens, hit = counts(get, total_in, total_out, "prompt_cache_hit_tokens")
    if get(total_out) is None:  # left out (a compatible server): what the total holds beyond
        (total,) = counts(get, "total_tokens")
        output_tokens = max(total - input_tokens, 0)
    citations, searches = counts(get, "citation_tokens", "num_search_queries")
    beside = 0  # Perplexity's reasoning tokens, outside completion_tokens (only in its usage)
    if citations or searches:
        (beside,) = counts(get, "reasoning_tokens")
        output_tokens += beside + citations
    details_in, details_out = get(in_details), get(out_details)
    if names is _RESPONSES:  # audio transcriptions and Realtime spell them without "s"
        if details_in is None:
            details_in = get("input_token_details")
        if details_out is None:
            details_out = get("output_token_details")
    get_in = getter(details_in, what=in_details)
    cached, write, audio_in, image_in, text_in = counts(
        get_in,
        "cached_tokens",
        "cache_write_tokens",
        "audio_tokens",
        "image_tokens",
        "text_tokens",
    )
    cached_parts = _cached_by_modality(get_in, cached) if cached else {}
    long_writes = _long_ttl_writes(get_in, write) if write else 0
    reasoning, audio_out, image_out, text_out = counts(
        getter(details_out, what=out_details),
        "reasoning_tokens",
        "audio_tokens",
        "image_tokens",
        "text_tokens",
    )
    if reasoning and not beside:
        (total,) = counts(get, "total_tokens")
        if total == input_tokens + output_tokens + reasoning:  # xAI: outside the completion
            output_tokens += reasoning
    elif not reasoning and not beside and get(total_out) is not None:
        (total,) = counts(get, "total_tokens")
        if total > input_tokens + output_tokens + citations:
            # Thinking the completion count leaves out, and no detail names: only the total
            # holds it (Gemini's OpenAI-compatible usage, and gateways that translate it).
            reasoning = total - input_tokens - output_tokens - citations
            output_tokens += reasoning
    reasoning += beside
    modalities = None
    if image_in or image_out or audio_in or audio_out or text_in or text_out or citations:
        modalities = _modalities(
            input_tokens,
            output_tokens,
            text_in,
            audio_in,
            image_in,
            text_out,
            audio_out,
            image_out,
            citations,
        )
    if cached_parts:
        modalities = {**(modalities or {}), **cached_parts}
    tools = {"web_search": searches} if searches else {}
    tools.update(_xai_tool_calls(get(_XAI_TOOL_DETAILS)))
    sized = search_context_key(get("search_context_size"))
    if sized is not None:
        tools[sized] = 1
    return usage_of(
        input_tokens,
        output_tokens,
        cache_read_tokens=cached or hit,
        cache_write_tokens=write,
        cache_write_1h_tokens=long_writes,
        reasoning_tokens=reasoning,
        input_audio_tokens=audio_in,
        output_audio_tokens=audio_out,
        modalities=modalities,
        tool_requests=tools or None,
    )


def _xai_tool_calls(details: Any) -> dict[str, int]:
    """The server-side tool calls xAI bills, by ``tool_requests`` key, from its usage's
    ``server_side_tool_usage_details`` (None: not an xAI answer)."""
    if details is None:
        return {}
    found = counts(getter(details, what=_XAI_TOOL_DETAILS), *_XAI_TOOL_CALLS)
    return {key: count for key, count in zip(_XAI_TOOL_CALLS.values(), found, strict=True) if count}


def asked_search_context(request: Any) -> str | None:
    """The ``tool_requests`` key of the search context size above low a request asks Perplexity
    for (``web_search_options.search_context_size``), whose fee per request is higher; None for
    low, the default (and for any request of another shape). What a budget reserves for, and
    what an estimate of a call whose usage never came counts (one reading of the request)."""
    try:
        return search_context_key(
            field(field(request, "web_search_options"), "search_context_size")
        )
    except Exception:  # what cannot be read asks for nothing (the default)
        return None


def search_context_key(size: Any) -> str | None:
    """The ``tool_requests`` key of a Perplexity search context size above low (its default,
    and what a size not reported, or not known, is taken as): its fee per request is higher."""
    if type(size) is not str or len(size) > 10:
        return None
    return SEARCH_CONTEXT_KEYS.get(size.strip().lower())


def _long_ttl_writes(get_in: Get, write: int) -> int:
    """The cache writes made with 12-hour retention (``cache_write_tokens_details.
    ttl_12h_tokens``), billed above the 30-minute ones: priced in the long-TTL write class
    (``cache_write_1h_tokens``) that Anthropic's 1-hour writes use. Chat completions have no
    such split: their writes are all taken as 30-minute ones."""
    (long_writes,) = counts(
        getter(get_in("cache_write_tokens_details"), what="cache_write_tokens_details"),
        "ttl_12h_tokens",
    )
    return min(long_writes, write)


def _cached_by_modality(get_in: Get, cached: int) -> dict[str, int]:
    """The cached input by modality, as Realtime reports it (``input_token_details.
    cached_tokens_details``): cached audio and images have rates of their own, and the audio
    and image counts beside it include their cached part."""
    text, audio, image = counts(
        getter(get_in("cached_tokens_details"), what="cached_tokens_details"),
        "text_tokens",
        "audio_tokens",
        "image_tokens",
    )
    found = {"cache_read_text": text, "cache_read_audio": audio, "cache_read_image": image}
    return {key: min(value, cached) for key, value in found.items() if value}


def usage_from_openai_images(usage: Any, svg_usage: Any = None) -> Usage:
    """An Images API ``usage`` (GPT Image models: generate, edit, their streams' completed event).

    Its input is split into text and image tokens (``input_tokens_details``), each with its own
    rate. What it outputs is the image: ``output_tokens`` are image tokens unless
    ``output_tokens_details`` splits them. ``svg_usage`` (SVG authoring, reported apart from the
    rendering and naming its own model) is a billed pass of its own, added to the totals."""
    found = usage_from_openai(usage)
    modalities = dict(found.modalities)
    if found.output_tokens and not any(key.startswith("output_") for key in modalities):
        modalities["output_image"] = found.output_tokens
    passes: tuple[Pass, ...] = ()
    extra_in = extra_out = extra_reasoning = 0
    if svg_usage is not None:
        get = getter(svg_usage, what="svg_usage")
        extra_in, extra_out, extra_reasoning = counts(
            get, "input_tokens", "output_tokens", "reasoning_tokens"
        )
        model = get("model")
        passes = (
            Pass(
                kind="svg_authoring",
                model=model[:500] if type(model) is str and model.strip() else None,
                usage=usage_of(extra_in, extra_out, reasoning_tokens=extra_reasoning),
            ),
        )
    return usage_of(
        found.input_tokens + extra_in,
        found.output_tokens + extra_out,
        cache_read_tokens=found.cache_read_tokens,
        cache_write_tokens=found.cache_write_tokens,
        reasoning_tokens=found.reasoning_tokens + extra_reasoning,
        input_audio_tokens=found.input_audio_tokens,
        output_audio_tokens=found.output_audio_tokens,
        modalities=modalities or None,
        passes=passes,
    )


def with_chat_search(usage: Usage, model: Any) -> Usage:
    """``usage`` of a chat completion answered by ``model``, with the one web search a search
    model makes for it counted (one per completion, however many choices it holds). Every chat
    completion is read through here: any other model's name is let by at one substring test."""
    if type(model) is not str or "-search-" not in model:
        return usage
    tool = _SEARCHING_CHAT_MODELS.get(model_family(model))
    if tool is None or usage.tool_requests.get(tool):
        return usage
    return usage.model_copy(update={"tool_requests": {**usage.tool_requests, tool: 1}})


def _tool_requests(get: Get) -> dict[str, int] | None:
    """Built-in tool calls of a Responses answer: ``tool_usage`` when the API sends it, else
    the tool-call items of its output (one web search or file search per item; a web search
    item whose action opens or searches a page it found is none)."""
    found: dict[str, int] = {}
    tool_usage = get("tool_usage")
    if tool_usage is not None:
        web = getter(tool_usage, what="tool_usage")("web_search")
        (searches,) = counts(getter(web, what="tool_usage.web_search"), "num_requests")
        if searches:
            found["web_search"] = searches
    output = get("output")
    if isinstance(output, list | tuple):
        for item in output[:_MAX_ITEMS]:
            tool = _billed_call(item)
            if tool == "web_search" and tool_usage is not None:
                continue
            if tool is not None:
                found[tool] = found.get(tool, 0) + 1
    if "web_search" in found and _searches_in_preview(get("tools")):
        found["web_search_preview"] = found.pop("web_search")
    return found or None


def responses_tool_requests(response: Any) -> dict[str, int] | None:
    """The built-in tool calls a Responses answer bills (``tool_usage``, else its output
    items), read as for its usage: for an answer without usage, whose estimate counts them."""
    return _tool_requests(getter(response, what="response"))


def billed_tool_call(item: Any, tools: Any) -> str | None:
    """The ``tool_requests`` key one Responses output item is billed under (None: none), as an
    answer's are counted; for a stream's items, seen one at a time. ``tools``: the request's
    (the answer echoes them)."""
    tool = _billed_call(item)
    if tool == "web_search" and _searches_in_preview(tools):
        return "web_search_preview"
    return tool


def _billed_call(item: Any) -> str | None:
    """One web search or file search per tool-call item; a web search item whose action opens
    or searches a page it found is none."""
    get_item = getter(item, what="output item")
    kind = get_item("type")
    tool = _TOOL_CALLS.get(kind) if type(kind) is str else None
    if tool == "web_search" and _opens_a_page(get_item):
        return None
    return tool


def _searches_in_preview(tools: Any) -> bool:
    """The answer's searches were made by the ``web_search_preview`` tool (billed apart from
    ``web_search`` on some models): the tools it echoes have that one and no other search."""
    if not isinstance(tools, list | tuple):
        return False
    kinds = {field(tool, "type") for tool in tools[:_MAX_ITEMS]}
    preview = any(type(k) is str and k.startswith("web_search_preview") for k in kinds)
    return preview and not any(
        type(k) is str and k.startswith("web_search") and not k.startswith("web_search_preview")
        for k in kinds
    )


def _opens_a_page(get_item: Get) -> bool:
    kind = field(get_item("action"), "type")
    return type(kind) is str and kind in _PAGE_ACTIONS


#: The image model a Responses ``image_generation`` tool used when neither the request nor the
#: response names one: not known here, so the pass is left unpriced (the call's cost unknown)
#: rather than priced at the text model's rates.
UNNAMED_IMAGE_MODEL = "image-generation-model-not-named"


def _image_generation(get: Get) -> Pass | None:
    """``tool_usage.image_gen`` of a Responses answer: the image generation tool's tokens,
    reported apart from the model's ``usage`` and billed at the image model's rates. That model
    is the one the response's echoed ``image_generation`` tool names."""
    tool_usage = get("tool_usage")
    if tool_usage is None:
        return None
    image_gen = getter(tool_usage, what="tool_usage")("image_gen")
    if image_gen is None:
        return None
    drawn = usage_from_openai_images(image_gen)
    if not drawn.input_tokens and not drawn.output_tokens:
        return None
    get_drawn = getter(image_gen, what="tool_usage.image_gen")
    (cached,) = counts(get_drawn, "cached_tokens")
    if cached:
        cached = min(cached, drawn.input_tokens)
        # Cached image tokens have a rate of their own (``cached_tokens_details`` splits them).
        (cached_image,) = counts(
            getter(get_drawn("cached_tokens_details"), what="cached_tokens_details"),
            "cached_image_tokens",
        )
        modalities = dict(drawn.modalities)
        if cached_image:
            modalities["cache_read_image"] = min(cached_image, cached)
        drawn = drawn.model_copy(update={"cache_read_tokens": cached, "modalities": modalities})
    model = None
    tools = get("tools")
    if isinstance(tools, list | tuple):
        for tool in tools[:_MAX_ITEMS]:
            tool_get = getter(tool, what="tool")
            if tool_get("type") == "image_generation":
                named = tool_get("model")
                model = named[:500] if type(named) is str and named.strip() else None
                break
    return Pass(kind="image_generation", model=model or UNNAMED_IMAGE_MODEL, usage=drawn)


def _with_pass(usage: Usage, extra: Pass) -> Usage:
    """``usage`` with a pass reported apart from it: its tokens added to the totals."""
    return usage_of(
        usage.input_tokens + extra.usage.input_tokens,
        usage.output_tokens + extra.usage.output_tokens,
        cache_read_tokens=usage.cache_read_tokens + extra.usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        cache_write_1h_tokens=usage.cache_write_1h_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        input_audio_tokens=usage.input_audio_tokens,
        output_audio_tokens=usage.output_audio_tokens,
        modalities=usage.modalities or None,
        tool_requests=usage.tool_requests or None,
        passes=(*usage.passes, extra),
    )


def tier_from_openai(service_tier: Any) -> str | None:
    return None if service_tier is None else priced_tier(service_tier)


def batch_result_body(get: Get) -> Any:
    """The response body of a Batch API results line (``custom_id``, ``response.body``), or
    None for anything else: billed at batch prices though the body says ``"default"``."""
    if get("custom_id") is None or get("usage") is not None:
        return None
    return field(get("response"), "body")


def from_openai_response(response: Any, provider: str = "openai") -> Extracted | None:
    """Read a ChatCompletion / Completion / CreateEmbeddingResponse / Response (object or dict),
    or a Batch API results line holding one (priced at the batch tier).

    None for a Responses ``background`` create still queued or in progress: it reports no usage
    yet, and its later retrieve is the record."""
    found = plain_completion(response, provider)
    return found if found is not None else _any_response(response, provider)


def plain_completion(response: Any, provider: str) -> Extracted | None:
    """``_any_response`` of the usual chat completion, read in a straight line (every call reads
    one): an SDK ``ChatCompletion`` holding nothing beside its declared fields, with a plain
    usage block (``_plain_block``). None for anything else, which ``_any_response`` reads
    (``tests/usage/test_normalisation.py`` checks that the two read alike)."""
    fields = plain_fields(response)
    if fields is None or fields.get("object") != "chat.completion":
        return None
    usage = _plain_block(fields.get("usage"))
    if usage is None:
        return None
    tier = fields.get("service_tier")
    model = fields.get("model")
    return Extracted(
        provider,
        with_chat_search(usage, model),
        model,
        "chat.completions",
        None if tier is None or tier == "default" else priced_tier(tier),
        ident(fields.get("id")),
    )


def _any_response(response: Any, provider: str) -> Extracted | None:
    """``from_openai_response`` of a response of any shape, or a Batch API results line."""
    get = getter(response, what="response")
    body = batch_result_body(get)
    if body is None:
        return _from_response(get, provider)
    batched = _from_response(getter(body, what="response"), provider)
    if batched is not None:
        batched.tier = "batch"
    return batched


def _from_response(get: Get, provider: str) -> Extracted | None:
    """``get``: the response's fields (read once: the batch line check above reads them too)."""
    usage = get("usage")
    if usage is None:
        status = get("status")
        if get("object") == "response" and type(status) is str and status in _NOT_YET_BILLED:
            return None
        raise ValueError("the OpenAI response carries no usage")
    kind = get("object")
    tier = get("service_tier")
    if kind is None and get("created") is not None:  # an ImagesResponse has no ``object``
        return Extracted(
            provider=provider,
            usage=usage_from_openai_images(usage, get("svg_usage")),
            model=get("model"),
            operation="images",
        )
    found = usage_from_openai(usage)
    if kind == "list" and found.output_tokens:  # an embedding has no output: the total is off
        raise ValueError("an embeddings usage counts more in total than its prompt")
    if kind == "response":
        # xAI's usage counts its billed tool calls (read above); its output items are every
        # attempt, failed ones included, which it does not bill.
        counted = getter(usage)(_XAI_TOOL_DETAILS) is not None
        tools = None if counted else _tool_requests(get)
        if tools:
            found = found.model_copy(update={"tool_requests": tools})
        drawn = _image_generation(get)
        if drawn is not None:
            found = _with_pass(found, drawn)
    elif kind == "chat.completion":
        found = with_chat_search(found, get("model"))
    return Extracted(
        provider=provider,
        usage=found,
        model=get("model"),
        operation=_OPERATIONS.get(kind) if type(kind) is str else None,
        tier=None if tier is None or tier == "default" else priced_tier(tier),
        request_id=ident(get("id")),
    )
