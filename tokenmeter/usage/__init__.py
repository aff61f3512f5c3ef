"""Normalisation: every provider's usage shape -> one ``Usage`` (SPEC §3 counting rules).

The provider patches and ``record_response()`` both come through here: one road, not two.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from tokenmeter._models import Usage, short_repr
from tokenmeter._registry import canonical, family_of
from tokenmeter.usage._read import field
from tokenmeter.usage._types import Extracted
from tokenmeter.usage.anthropic import (
    batch_result_message,
    from_anthropic_response,
    usage_from_anthropic,
)
from tokenmeter.usage.google import (
    batch_result_response,
    billed_searches,
    from_gemini_response,
    usage_from_gemini,
)
from tokenmeter.usage.openai import (
    batch_result_body,
    from_openai_response,
    usage_from_openai,
    with_chat_search,
)

__all__ = [
    "Extracted",
    "detect_provider",
    "extract",
    "from_anthropic_response",
    "from_gemini_response",
    "from_openai_response",
    "usage_from_anthropic",
    "usage_from_gemini",
    "usage_from_openai",
    "with_model_fees",
]

_READERS = {
    "openai": from_openai_response,
    "anthropic": from_anthropic_response,
    "google": from_gemini_response,
}
#: OpenAI's ``object`` values of billed responses.
_OPENAI_OBJECTS = {"chat.completion", "text_completion", "response", "list"}


def detect_provider(response: Any) -> str:
    """Which provider's shape a response (object or JSON dict) has."""
    if field(response, "usage_metadata", "usageMetadata") is not None:
        return "google"
    if field(response, "type") == "message":
        return "anthropic"
    kind = field(response, "object")
    if type(kind) is str and kind in _OPENAI_OBJECTS:  # named, whatever its usage holds
        return "openai"
    usage = field(response, "usage")
    if usage is None:  # a batch job's result, holding the response
        get = partial(field, response)
        if batch_result_body(get) is not None:
            return "openai"  # a line of an OpenAI Batch API results file
        if batch_result_message(get) is not None:
            return "anthropic"  # a line of a Message Batches results file
        if batch_result_response(response) is not None:
            return "google"  # a Gemini or Vertex AI batch output line
    if usage is not None:
        if field(usage, "prompt_tokens") is not None or field(usage, "total_tokens") is not None:
            return "openai"
        if field(usage, "input_tokens") is not None or field(usage, "output_tokens") is not None:
            return "anthropic"
    raise ValueError(
        "cannot read usage from this response: expected OpenAI 'usage', Anthropic 'usage' or "
        f"Gemini 'usageMetadata', got {type(response).__name__}"
    )


def extract(response: Any, provider: str | None = None) -> Extracted | None:
    """Read usage, model, tier and id from a response of any supported provider."""
    if provider is not None and type(provider) is not str:
        raise ValueError(f"provider must be a provider name, got {type(provider).__name__}")
    detected = provider.lower() if provider else detect_provider(response)
    family = family_of(detected)  # the registry knows which shape each provider answers with
    reader = _READERS.get(family) if family is not None else None
    if reader is None:
        raise ValueError(
            f"unknown provider {short_repr(provider)}: expected one of openai, anthropic, google"
        )
    return reader(response, canonical(detected))


def with_model_fees(found: Extracted, model: str | None) -> Usage:
    """``found``'s usage with the fees that depend on the model decided by ``model``: the one the
    call is recorded at when the response names none (a gateway that drops Gemini's
    ``modelVersion`` or answers ``"model": ""``, a compatible server's model that is not text,
    a stored body given to ``record_response`` with ``model=``). The readers decide them from
    the body's model alone, which left Gemini 1.x/2.x grounding billed per query instead of per
    grounded prompt, and a search-preview model's per-completion search unbilled.

    A reader given no model counts every grounding query, and ``with_chat_search`` adds nothing
    twice: deciding them again here is safe."""
    usage = found.usage
    served = found.model  # as the body gave it: a compatible server may send 5 or a list
    if not model or (type(served) is str and served.strip()):  # blanks and non-text name none
        return usage
    if found.operation == "chat.completions":
        return with_chat_search(usage, model)
    searches = usage.tool_requests.get("web_search")
    if searches and family_of(found.provider) == "google":
        billed = billed_searches(searches, model)
        if billed != searches:
            return usage.model_copy(
                update={"tool_requests": {**usage.tool_requests, "web_search": billed}}
            )
    return usage
