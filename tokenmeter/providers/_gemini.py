"""What the two Gemini adapters (google-genai, legacy google-generativeai) share: the provider
their calls are recorded under, how a request's model path is shortened, what of a streamed part
is output, and how a stream left before its output was counted (or a reply without usage) is
estimated."""

from __future__ import annotations

import json
from collections.abc import Mapping
from contextlib import suppress
from typing import Any

from tokenmeter._estimate import TextTally, capped_output
from tokenmeter._models import Usage
from tokenmeter._registry import provider_of_sdk, short_model
from tokenmeter.usage._read import field

__all__ = [
    "PROVIDER",
    "add_candidates",
    "add_output",
    "estimated_output",
    "json_reply_text",
    "reply_text",
    "short_model",
]

#: Gemini API and Vertex AI bill the same models from one price table.
PROVIDER = provider_of_sdk("google-genai")


#: Output tokens of one image an image model generates, by model name prefix (Google's
#: pricing: Gemini 3 Pro Image 1,120 for a 1K or 2K image, 2,000 for a 4K one, counted here at
#: the smaller), else ``_IMAGE_TOKENS`` (Gemini 2.5 Flash Image: 1,290 for up to 1024 x 1024).
_IMAGE_TOKENS_BY_MODEL = (("gemini-3-pro-image", 1_120),)
_IMAGE_TOKENS = 1_290


def image_tokens(model: str) -> int:
    """The output tokens one generated image of ``model`` is billed at: 0 for a model that
    generates none (an image part there is a code execution's chart, not billed output)."""
    if "image" not in model:
        return 0
    for prefix, tokens in _IMAGE_TOKENS_BY_MODEL:
        if model.startswith(prefix):
            return tokens
    return _IMAGE_TOKENS


def estimated_output(
    usage: Usage,
    text: TextTally,
    thoughts: TextTally,
    provider: str,
    model: str,
    request: Any = None,
) -> Usage | None:
    """``usage`` of a stream whose running total counts no output beside the thoughts (early
    chunks count the prompt, and a thinking model's its thoughts, before any text): its output
    estimated from the ``text`` that streamed by, added to the thoughts counted, and each image
    that streamed by at its model's per-image tokens (as ``output_image``: priced at the image
    rate). The thought summaries' text stands for the thoughts when none are counted. At most
    the ``request``'s ``max_output_tokens`` (``capped_output``), thoughts counted included. None
    when the total counts some output (the provider's own count), or nothing streamed, or the
    thoughts counted already reach the limit."""
    if usage.output_tokens > usage.reasoning_tokens:
        return None
    images = text.images * image_tokens(short_model(model) or "")
    found = text.tokens(provider, model) + images
    if not usage.reasoning_tokens:
        found += thoughts.tokens(provider, model)
    if not found:
        return None
    output = capped_output(usage.reasoning_tokens + found, request, usage.reasoning_tokens)
    if output <= usage.output_tokens:
        return None
    update: dict[str, Any] = {"output_tokens": output}
    images = min(images, output - usage.reasoning_tokens)  # the images within the limit
    if images:
        update["modalities"] = {**usage.modalities, "output_image": images}
    return usage.model_copy(update=update)


def add_output(tally: TextTally, part: Any) -> None:
    """What a part the model streamed adds to its output: its text, a function call's name and
    arguments (as the OpenAI and Anthropic readers count a tool call's), the code it wrote for
    code execution and that code's output, an image it generated (counted, see
    ``estimated_output``). A part of either SDK (google-genai's objects, the legacy SDK's
    protos, whose unset fields read as empty)."""
    if _is_image(getattr(part, "inline_data", None)):
        tally.images += 1
    add = tally.add
    add(getattr(part, "text", None))
    call = getattr(part, "function_call", None)
    if call is not None:
        add(getattr(call, "name", None))
        args = getattr(call, "args", None)
        if args:
            with suppress(Exception):  # arguments that cannot be spelled add nothing
                add(json.dumps(args, ensure_ascii=False, default=_plain))
    add(getattr(getattr(part, "executable_code", None), "code", None))
    add(getattr(getattr(part, "code_execution_result", None), "output", None))


def add_candidates(tally: TextTally, response: Any, thoughts: TextTally | None = None) -> None:
    """The output of ``response``'s parts (text, function calls, code: ``add_output``), thought
    summaries into ``thoughts`` when given."""
    for candidate in getattr(response, "candidates", None) or ():
        content = getattr(candidate, "content", None)
        for part in getattr(content, "parts", None) or ():
            into = thoughts if thoughts is not None and getattr(part, "thought", None) else tally
            add_output(into, part)


def reply_text(response: Any) -> TextTally:
    """The output of a reply that was not streamed and reported no usage, as a stream's is
    tallied for its estimate (thought summaries apart: not counted, as a stream's are not). A
    part that cannot be read adds nothing."""
    tally = TextTally()
    with suppress(Exception):
        add_candidates(tally, response, TextTally())
    return tally


def json_reply_text(body: Any) -> TextTally:
    """``reply_text`` of a response given as its JSON (``record_response()`` of a stored body:
    ``add_output`` reads the SDK objects' attributes, not a dict's camelCase keys). Thought
    summaries are left out, as there: a usage's thoughts count is their own, and without one
    the SDK path does not count them either. A part that cannot be read adds nothing."""
    tally = TextTally()
    add = tally.add
    with suppress(Exception):
        for candidate in field(body, "candidates") or ():
            for part in field(field(candidate, "content"), "parts") or ():
                if field(part, "thought"):
                    continue
                add(field(part, "text"))
                call = field(part, "function_call", "functionCall")
                add(field(call, "name"))
                args = field(call, "args")
                if args:
                    add(json.dumps(args, ensure_ascii=False, default=_plain))
                add(field(field(part, "executable_code", "executableCode"), "code"))
                result = field(part, "code_execution_result", "codeExecutionResult")
                add(field(result, "output"))
    return tally


def _is_image(blob: Any) -> bool:
    """An inline blob of an image (``image/png``...): one the model generated, in its output."""
    mime = getattr(blob, "mime_type", None)
    return type(mime) is str and mime.startswith("image/")


def _plain(value: Any) -> Any:
    """A proto-plus map or list (the legacy SDK's function call arguments) as JSON reads it."""
    if isinstance(value, Mapping):
        return dict(value)
    if hasattr(value, "__iter__") and not isinstance(value, (str, bytes)):
        return list(value)
    return str(value)
