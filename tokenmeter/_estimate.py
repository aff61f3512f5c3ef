"""Token estimates, for calls whose provider reports no usage and for checks made before a call.

A stream the caller leaves early, a chat stream sent with ``include_usage: false``, an
OpenAI-compatible server that sends no usage: the record gets an estimate marked
``estimated: true``, never a silent zero. The input is estimated from the request (its text, as
the provider's tokenizer counts it where one runs offline, plus the provider's per-message
overhead); the output from the text and tool-call arguments that passed through the stream.

Tokenizers: OpenAI's own BPE vocabularies when ``bpe-openai`` is installed (the ``estimate``
extra: they ship in its wheel), else tiktoken's when its vocabulary files are already cached
(tiktoken downloads them on first use; we never do), else a character heuristic. Claude's and
Gemini's tokenizers do not run offline: their counts are OpenAI's ``o200k_base`` count scaled by a
factor measured against their real usage (docs/providers.md gives the measured error).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from tokenmeter._models import Usage
from tokenmeter._registry import canonical, family_of

__all__ = [
    "TextTally",
    "count_tokens",
    "estimate",
    "estimate_input",
    "estimate_usage",
    "provider_for_model",
]

logger = logging.getLogger("tokenmeter")

#: At most this many characters of a stream's output are kept to be counted exactly; beyond it,
#: the count is extrapolated from the characters seen (a stream of any length costs bounded memory).
_KEEP_CHARS = 64_000

#: Scale from OpenAI's o200k_base count to the provider's own (measured on real usage, see
#: tests/estimate): Claude's tokenizer splits English finer than o200k; Gemini's about the same.
_SCALE = {"anthropic": 1.2, "google": 1.12}
#: Characters per token of the heuristic (English prose; other scripts count 1 token a character).
_CHARS_PER_TOKEN = {"openai": 4.0, "anthropic": 3.4, "google": 4.0}

#: Per-message framing (role markers), per request (reply priming) and per tool list, in tokens.
_OVERHEAD = {
    "openai": (4, 3, 12),  # 4 a message (role markers), 3 to prime the reply
    "anthropic": (3, 4, 420),  # Claude adds a tool-use system prompt of a few hundred tokens
    "google": (0, 0, 0),
}
#: Tool definitions are sent as JSON schemas but rendered more compactly for the model: the
#: share of their JSON's tokens that the provider counts (measured).
_TOOL_SHARE = {"openai": 0.5, "anthropic": 1.0, "google": 0.8}
#: Tokens a response adds around its visible text (end of turn), by family.
_OUTPUT_OVERHEAD = {"anthropic": 3}
#: Tokens one image costs, as each provider bills a typical (about 1 megapixel) image.
_IMAGE = {"openai": 765, "anthropic": 1_500, "google": 258}
_OPENAI_LOW_DETAIL_IMAGE = 85


# -- tokenizers ---------------------------------------------------------------------------------
Counter = Callable[[str], int]
_counters: dict[str, Counter | None] = {}
_counters_lock = threading.Lock()

_TIKTOKEN_FILES = {
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
}


def _bpe_openai(name: str) -> Counter | None:
    # Its import and its vocabulary loader use a deprecated importlib call: not our callers' noise.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import bpe_openai
        except ImportError:
            return None
        encoding = bpe_openai.get_encoding(name)
        encoding.encode_ordinary("load")  # its vocabulary loads on first use

    def count(text: str) -> int:
        return len(encoding.encode_ordinary(text))

    return count


def _tiktoken_cached(name: str) -> Counter | None:
    """tiktoken, only when its vocabulary file is already in its cache (it would download it)."""
    try:
        import tiktoken
    except ImportError:
        return None
    cache = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
    cache = cache or os.path.join(tempfile.gettempdir(), "data-gym-cache")
    key = hashlib.sha1(_TIKTOKEN_FILES[name].encode()).hexdigest()  # tiktoken cache name
    if not os.path.isfile(os.path.join(cache, key)):
        return None
    encoding = tiktoken.get_encoding(name)

    def count(text: str) -> int:
        return len(encoding.encode_ordinary(text))

    return count


def _counter(name: str) -> Counter | None:
    """The BPE counter of an OpenAI encoding, None when none runs offline (loaded once)."""
    if name in _counters:
        return _counters[name]
    with _counters_lock:
        if name not in _counters:
            found: Counter | None = None
            for load in (_bpe_openai, _tiktoken_cached):
                try:
                    found = load(name)
                except Exception:  # a broken install: the heuristic still answers
                    logger.debug("tokenmeter: tokenizer %s unavailable", name, exc_info=True)
                if found is not None:
                    break
            _counters[name] = found
    return _counters[name]


def _encoding_of(model: str) -> str:
    """OpenAI's encoding for a model: cl100k_base for GPT-4/3.5 and the embeddings, o200k_base
    for everything since GPT-4o (and for any model it does not know)."""
    name = model.lower().rsplit("/", 1)[-1]
    if name.startswith(("gpt-4o", "gpt-4.1", "gpt-4.5", "chatgpt-4o")):
        return "o200k_base"
    if name.startswith(("gpt-4", "gpt-3.5", "text-embedding", "davinci", "babbage")):
        return "cl100k_base"
    return "o200k_base"


def _heuristic(text: str, family: str) -> float:
    ascii_chars = sum(1 for ch in text if ch < "\x80") if not text.isascii() else len(text)
    other = len(text) - ascii_chars
    return ascii_chars / _CHARS_PER_TOKEN.get(family, 4.0) + other


def count_tokens(text: str, provider: str = "openai", model: str = "") -> int:
    """Tokens of ``text`` as ``provider`` counts them (estimated where its tokenizer is not
    available offline)."""
    return _measure((text,), provider, model) if text else 0


def _measure(texts: Iterable[str], provider: str, model: str) -> int:
    """Tokens of several separately sent texts (each counted on its own, scaled once)."""
    family = _family(provider)
    found = _encodings.get(model) if family == "openai" else "o200k_base"
    if found is None:
        found = _encoding_of(model)
        if len(_encodings) < 1000:
            _encodings[model] = found
    encoding = found
    counter = _counter(encoding)
    if counter is not None:
        try:
            total = sum(counter(text) for text in texts if text)
        except Exception:  # the tokenizer refuses some input (a multi-megabyte text): count all
            logger.debug("tokenmeter: tokenizer %s refused a text", encoding, exc_info=True)
        else:
            return max(1, round(total * _SCALE.get(family, 1.0))) if total else 0
    raw = sum(_heuristic(text, family) for text in texts if text)
    return max(1, round(raw)) if raw else 0


#: The encoding of each OpenAI model name seen (a request names its model each time).
_encodings: dict[str, str] = {}


def _family(provider: str) -> str:
    family = family_of(provider)
    return family if family in _OVERHEAD else "openai"


def provider_for_model(model: str) -> str:
    """The provider a bare model name most likely belongs to (for ``estimate()`` without one)."""
    name = model.lower().rsplit("/", 1)[-1]
    if name.startswith("claude") or "anthropic." in model.lower():
        return "anthropic"
    if name.startswith(("gemini", "gemma")):
        return "google"
    return "openai"


# -- walking a request ----------------------------------------------------------------------------
#: Keys whose string values are not text the model reads (ids, roles, types, options, media).
_NOT_TEXT = frozenset(
    {
        "role",
        "type",
        "id",
        "tool_call_id",
        "tool_use_id",
        "call_id",
        "model",
        "mime_type",
        "mimeType",
        "detail",
        "media_type",
        "cache_control",
        "status",
        "file_id",
        "file_uri",
        "fileUri",
        "signature",
        "encrypted_content",
        "thoughtSignature",
        "thought_signature",
    }
)
_IMAGE_TYPES = frozenset({"image_url", "input_image", "image"})


class _Walk:
    """Collects the text (and counts the images) of a request's content, whatever its shape:
    dicts, lists, strings, SDK objects (pydantic models, protos)."""

    __slots__ = ("family", "images", "low_images", "parts")

    def __init__(self, family: str) -> None:
        self.family = family
        self.parts: list[str] = []
        self.images = 0
        self.low_images = 0

    def add(self, value: Any, depth: int = 0) -> None:
        if depth > 30 or value is None:
            return
        kind = type(value)  # the plain types first: a request is mostly dicts, lists and str
        if kind is str:
            self.parts.append(value)
            return
        if kind is dict:
            self._mapping(value, depth)
            return
        if isinstance(value, str):
            self.parts.append(value)
            return
        if isinstance(value, bytes | bytearray | memoryview | int | float | bool):
            return
        if isinstance(value, Mapping):
            self._mapping(value, depth)
            return
        if isinstance(value, list | tuple):
            for item in value:
                self.add(item, depth + 1)
            return
        self.add(_plain(value), depth + 1)

    def _mapping(self, value: Mapping[Any, Any], depth: int) -> None:
        kind = value.get("type")
        if kind in _IMAGE_TYPES or _is_inline_image(value):
            detail = value.get("detail")
            if detail is None and isinstance(value.get("image_url"), Mapping):
                detail = value["image_url"].get("detail")
            if self.family == "openai" and detail == "low":
                self.low_images += 1
            else:
                self.images += 1
            return
        for key, item in value.items():
            if key in _NOT_TEXT or key in ("data", "url", "image_url", "inline_data"):
                continue
            if isinstance(item, Mapping | list | tuple) and key in ("input", "args", "parameters"):
                # Tool-call arguments and schemas are sent as JSON text.
                self.parts.append(_json(item))
                continue
            self.add(item, depth + 1)

    def tokens(self, provider: str, model: str) -> int:
        text = _measure(self.parts, provider, model)
        image = _IMAGE[self.family] * self.images + _OPENAI_LOW_DETAIL_IMAGE * self.low_images
        return text + image


def _is_inline_image(value: Mapping[Any, Any]) -> bool:
    inline = value.get("inline_data") or value.get("inlineData")
    if isinstance(inline, Mapping):
        mime = inline.get("mime_type") or inline.get("mimeType") or ""
        return isinstance(mime, str) and mime.startswith("image/")
    return False


def _plain(value: Any) -> Any:
    """An SDK object as plain data (pydantic ``model_dump``, proto ``to_dict``), else nothing."""
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        try:
            return dump(exclude_none=True)
        except Exception:
            return None
    to_dict = getattr(type(value), "to_dict", None)
    if callable(to_dict):
        try:
            return to_dict(value)
        except Exception:
            return None
    return None


def _json(value: Any) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), default=str, ensure_ascii=False)
    except Exception:
        return ""


def _messages(items: Iterable[Any], family: str) -> tuple[_Walk, int]:
    """(the walk of a message list, how many messages it holds)."""
    walk = _Walk(family)
    n = 0
    for item in items:
        n += 1
        walk.add(item)
    return walk, n


def _get(request: Any, key: str) -> Any:
    if type(request) is dict or isinstance(request, Mapping):
        return request.get(key)
    return getattr(request, key, None)


def estimate_input(provider: str, request: Any, operation: str | None = None) -> Usage:
    """Estimated input tokens of a request, before it is sent or when no usage came back.

    ``request`` holds the SDK method's parameters as the caller passed them (the JSON body for
    OpenAI and Anthropic, the keyword arguments for Gemini): chat ``messages`` (+ ``tools``), a
    Responses ``input`` (+ ``instructions``, ``tools``), Anthropic ``messages`` + ``system`` +
    ``tools``, Gemini ``contents`` (+ ``config.system_instruction``, ``tools``), a legacy
    ``prompt`` or (``operation`` "embeddings" or "embed_content") an embeddings input. Never
    raises: what cannot be read counts as nothing.
    """
    try:
        return Usage(input_tokens=_input_tokens(provider, request, operation))
    except Exception:
        logger.debug("tokenmeter: estimating a request's input failed", exc_info=True)
        return Usage()


_BARE = frozenset({"embeddings", "embed_content", "completions"})


def _input_tokens(provider: str, request: Any, operation: str | None = None) -> int:
    if request is None:
        return 0
    family = _family(provider)
    model = _get(request, "model")
    model = model if isinstance(model, str) else ""
    per_message, per_request, per_tools = _OVERHEAD[family]
    contents = _get(request, "contents")
    messages = _get(request, "messages")
    config = _get(request, "config")
    tools: Any = None
    if contents is not None:  # Gemini
        items = contents if isinstance(contents, list | tuple) else [contents]
        walk, n = _messages(items, family)
        walk.add(_get(config, "system_instruction") if config is not None else None)
        walk.add(_get(request, "system_instruction") or _get(request, "systemInstruction"))
        tools = _get(request, "tools") or (_get(config, "tools") if config is not None else None)
    elif isinstance(messages, list | tuple):  # chat, Anthropic messages
        walk, n = _messages(messages, family)
        walk.add(_get(request, "system"))
        tools = _get(request, "tools") or _get(request, "functions")
    else:  # Responses input, embeddings input, legacy completions prompt
        given = _get(request, "input")
        if given is None:
            given = _get(request, "prompt")
        if isinstance(given, list | tuple) and given and isinstance(given[0], Mapping):
            walk, n = _messages(given, family)  # Responses items
        else:
            walk, n = _Walk(family), 1
            walk.add(given)
        walk.add(_get(request, "instructions"))
        tools = _get(request, "tools")
    if operation in _BARE or (operation is None and _get(request, "prompt") is not None):
        n, per_request = 0, 0  # no chat framing around a bare prompt or an embeddings input
    total = walk.tokens(provider, model) + per_message * n + per_request
    if tools:
        total += _tool_tokens(tools, provider, model) + per_tools
    return total


def _tool_tokens(tools: Any, provider: str, model: str) -> int:
    """Tool definitions are sent as their JSON schemas (formatting overhead aside)."""
    items = tools if isinstance(tools, list | tuple) else [tools]
    plain = [t if isinstance(t, Mapping) else (_plain(t) or str(t)) for t in items]
    share = _TOOL_SHARE[_family(provider)]
    return round(count_tokens(_json(plain), provider, model) * share)


# -- output: what passed through a stream ---------------------------------------------------------
class TextTally:
    """The output text a stream delivered, kept to count its tokens if the provider reports none.
    Bounded: past ``_KEEP_CHARS`` characters only their number is kept (and extrapolated)."""

    __slots__ = ("chars", "kept", "parts")

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.chars = 0
        self.kept = 0

    def add(self, text: Any) -> None:
        if type(text) is not str or not text:
            return
        self.chars += len(text)
        if self.kept < _KEEP_CHARS:
            self.parts.append(text)
            self.kept += len(text)

    def tokens(self, provider: str, model: str) -> int:
        if not self.chars:
            return 0
        counted = count_tokens("".join(self.parts), provider, model)
        if self.kept < self.chars:
            counted = round(counted * self.chars / self.kept)
        return counted + _OUTPUT_OVERHEAD.get(_family(provider), 0)


# -- the public function --------------------------------------------------------------------------
def estimate(
    model: str,
    *,
    messages: Any = None,
    text: str | None = None,
    provider: str | None = None,
    output: str | None = None,
) -> Usage:
    """Estimate the tokens of a call without making it: what a budget checks before sending, or
    what to record for a call whose provider reported no usage.

    ``messages`` is a request's message list in its provider's shape (OpenAI chat or Responses
    items, Anthropic messages, Gemini contents) and ``text`` a plain prompt: both count as input,
    with the provider's per-message overhead. ``output`` is a completion's text, counted as
    output. ``provider`` defaults to the one the model name suggests (``claude-*``: Anthropic,
    ``gemini-*``: Google, else OpenAI). The result is an estimate: docs/providers.md says how close.
    """
    if not isinstance(model, str) or not model.strip():
        raise ValueError(f"model must be a non-empty string, got {model!r}")
    if provider is not None and (not isinstance(provider, str) or not provider.strip()):
        raise ValueError(f"provider must be a non-empty string, got {provider!r}")
    if messages is not None and not isinstance(messages, list | tuple):
        raise ValueError(f"messages must be a list of messages, got {type(messages).__name__}")
    for name, value in (("text", text), ("output", output)):
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {type(value).__name__}")
    name = canonical(provider) if provider else provider_for_model(model)
    input_tokens = 0
    if messages is not None:
        key = "contents" if _family(name) == "google" else "messages"
        input_tokens += _input_tokens(name, {"model": model, key: list(messages)})
    if text:
        input_tokens += count_tokens(text, name, model)
    output_tokens = 0
    if output:
        output_tokens = count_tokens(output, name, model) + _OUTPUT_OVERHEAD.get(_family(name), 0)
    return Usage(input_tokens=input_tokens, output_tokens=output_tokens)


def estimate_usage(
    provider: str, request: Any, model: str, tally: TextTally | None, operation: str | None = None
) -> Usage:
    """A call's whole usage when the provider reported none: the request's input, and the output
    that passed through (``tally``; None for a response that was not streamed)."""
    found = estimate_input(provider, request, operation)
    output = 0
    if tally is not None:
        try:
            output = tally.tokens(provider, model)
        except Exception:
            logger.debug("tokenmeter: estimating a stream's output failed", exc_info=True)
    return Usage(input_tokens=found.input_tokens, output_tokens=output)
