"""Gemini usage (google-genai, google-generativeai, REST JSON) -> Usage.

``prompt_token_count`` includes cached content; ``thoughts_token_count`` is NOT inside
``candidates_token_count``; ``tool_use_prompt_token_count`` is input outside the prompt. So
input = prompt + tool_use_prompt, output = candidates + thoughts. The legacy SDK's proto drops the
thoughts field while ``total_token_count`` still counts it: whatever the total holds beyond
input + output is hidden thinking, added to output (and to reasoning). Without a prompt count
that excess cannot be told from the prompt: such usage is unreadable, as is a cached count above
the prompt's, or counts by modality adding up to more than their total. A total below the parts is
not used (the parts are billed), as OpenAI's totals are not.

Billed beside the tokens: Grounding with Google Search, per search query the model ran (its
``groundingMetadata`` lists them) from Gemini 3 on, per grounded prompt (an answer that ran any)
on Gemini 1.x and 2.x. Kept as ``tool_requests["web_search"]``, priced at the model's fee.
"""

from __future__ import annotations

import re
from typing import Any

from tokenmeter._models import Usage, modalities_over_total, short_repr, usage_of
from tokenmeter.usage._read import _SCALARS, Get, batch_tier, counts, field, getter, ident
from tokenmeter.usage._types import Extracted

_TIERS = {"ON_DEMAND_FLEX": "flex", "ON_DEMAND_PRIORITY": "priority"}
#: Gemini's MediaModality names -> tokenmeter's ``modalities`` spelling.
_MODALITY_KEYS = {
    "TEXT": "text",
    "IMAGE": "image",
    "AUDIO": "audio",
    "VIDEO": "video",
    "DOCUMENT": "document",
}
_MAX_DETAILS = 100
#: Models billed per grounded prompt rather than per search query.
_GROUNDED_PER_PROMPT = re.compile(r"gemini-[12]\.")


def usage_from_gemini(meta: Any) -> Usage:
    get = getter(meta, camel=True, what="usage_metadata")
    # Embeddings report their output as response_token_count.
    prompt, tool_prompt, candidates, response, thoughts, total, cached = counts(
        get,
        "prompt_token_count",
        "tool_use_prompt_token_count",
        "candidates_token_count",
        "response_token_count",
        "thoughts_token_count",
        "total_token_count",
        "cached_content_token_count",
    )
    candidates = candidates or response
    input_tokens = prompt + tool_prompt
    hidden = total - input_tokens - candidates - thoughts
    if thoughts and hidden == -thoughts and candidates >= thoughts:
        # The total says the candidates count holds the thinking (some Vertex answers): the
        # output is that count, not it plus the thinking again.
        candidates -= thoughts
    elif hidden > 0:
        if not prompt:  # null, absent or 0: the total may hold the prompt, not only thinking
            raise ValueError("usage_metadata counts a total beyond its parts, and no prompt")
        thoughts += hidden
    output_tokens = candidates + thoughts
    cache_read = cached  # inside the prompt: more is inconsistent, and usage_of refuses it
    modalities: dict[str, int] = {}
    for name, side, limit in (
        ("prompt_tokens_details", "input", input_tokens),
        ("tool_use_prompt_tokens_details", "input", input_tokens),
        ("candidates_tokens_details", "output", output_tokens),
        ("response_tokens_details", "output", output_tokens),
        ("cache_tokens_details", "cache_read", cache_read),
    ):
        details = get(name)
        if details:
            _add_modalities(modalities, details, side, limit, name)
    wrong = modalities and modalities_over_total(modalities, input_tokens, output_tokens, cached)
    if wrong:
        raise ValueError(f"usage_metadata: {wrong}")
    audio_in = modalities.get("input_audio", 0)
    return usage_of(
        input_tokens,
        output_tokens,
        cache_read_tokens=cache_read,
        reasoning_tokens=thoughts,
        input_audio_tokens=audio_in,
        output_audio_tokens=modalities.get("output_audio", 0),
        modalities=modalities or None,
    )


def _add_modalities(found: dict[str, int], details: Any, side: str, limit: int, name: str) -> None:
    """Add a ``[{modality, token_count}]`` list to ``found`` under ``<side>_<modality>``."""
    if not isinstance(details, list | tuple):
        raise ValueError(f"usage field {name!r} is not a list: {short_repr(details)}")
    for entry in details[:_MAX_DETAILS]:
        get = getter(entry, camel=True, what=name)
        modality = get("modality")
        modality = getattr(modality, "name", None) or modality  # an SDK enum, or its JSON text
        if type(modality) is not str:
            continue
        key = _MODALITY_KEYS.get(modality.rsplit(".", 1)[-1].upper())
        if key is None:
            continue  # MODALITY_UNSPECIFIED or one added later: billed with the text
        (tokens,) = counts(get, "token_count")
        if tokens:
            full = f"{side}_{key}"
            found[full] = min(found.get(full, 0) + tokens, limit)


def reports_usage(meta: Any) -> bool:
    """False for a ``usage_metadata`` without a single count (``{}``, or a proto's empty
    message): a generate_content call always has a prompt, so its usage was not reported (it is
    estimated, never recorded as a silent zero). True for anything else, unreadable included:
    ``usage_from_gemini`` says what is wrong with it."""
    try:
        get = getter(meta, camel=True, what="usage_metadata")
        return any(get(name) for name in _ANY_COUNT)
    except Exception:
        return True


_ANY_COUNT = ("prompt_token_count", "total_token_count", "candidates_token_count")


def tier_from_gemini(meta: Any) -> str | None:
    traffic = getter(meta, camel=True)("traffic_type")
    if traffic is None:
        return None
    name = getattr(traffic, "name", None) or str(traffic)
    return _TIERS.get(name.rsplit(".", 1)[-1])


def batch_result_response(result: Any) -> Any:
    """The response a Gemini batch job's result holds: a line of a Gemini API batch output
    file (``key``, ``response``), of a Vertex AI batch prediction output (``request``,
    ``response``), or google-genai's ``InlinedResponse``; None for anything else (a request
    that failed holds no response: nothing was billed)."""
    if field(result, "usage_metadata", "usageMetadata") is not None:
        return None
    response = field(result, "response")
    if field(response, "usage_metadata", "usageMetadata") is None:
        return None
    return response


def from_gemini_response(response: Any, provider: str = "google") -> Extracted:
    """Read a GenerateContentResponse / EmbedContentResponse of either SDK, or its JSON, or a
    batch job's result holding one (priced at the batch tier)."""
    get = getter(response, camel=True, what="response")
    meta = get("usage_metadata")
    if meta is None:
        inner = batch_result_response(response)
        if inner is None:
            raise ValueError("the Gemini response carries no usage_metadata")
        found = from_gemini_response(inner, provider)
        found.tier = batch_tier(found.tier)
        return found
    model = get("model_version") or None
    usage = usage_from_gemini(meta)
    searches = billed_searches(search_queries(get("candidates")), model)
    if searches:
        usage = usage.model_copy(update={"tool_requests": {"web_search": searches}})
    return Extracted(
        provider=provider,
        usage=usage,
        model=model,
        # A generate_content answer may hold no candidates (a blocked prompt, a usage-only chunk)
        operation="embed_content" if _holds_embeddings(get) else "generate_content",
        tier=tier_from_gemini(meta),
        request_id=ident(get("response_id")) or None,
    )


def search_queries(candidates: Any) -> int:
    """The Google Search queries (web and image) an answer's candidates ran, as their
    grounding metadata lists them. What is not of the known shape counts nothing (grounding is
    billed beside the tokens, which stay readable)."""
    if not isinstance(candidates, list | tuple):
        return 0
    queries = 0
    for candidate in candidates[:_MAX_DETAILS]:
        if candidate is None or isinstance(candidate, _SCALARS):
            continue
        grounding = getter(candidate, camel=True)("grounding_metadata")
        if grounding is None or isinstance(grounding, _SCALARS):
            continue
        get = getter(grounding, camel=True)
        for name in ("web_search_queries", "image_search_queries"):
            found = get(name)
            if isinstance(found, list | tuple):
                queries += len(found)
    return queries


def billed_searches(queries: int, model: Any) -> int:
    """The searches billed for an answer whose candidates ran ``queries`` search queries: 1 (a
    grounded prompt) on a model billed per grounded prompt."""
    if queries and type(model) is str and _GROUNDED_PER_PROMPT.search(model.lower()):
        return 1
    return queries


def _holds_embeddings(get: Get) -> bool:
    """An embedding answer: ``embeddings`` (batchEmbedContents, the SDK) or ``embedding``
    (embedContent)."""
    return get("embeddings") is not None or get("embedding") is not None
