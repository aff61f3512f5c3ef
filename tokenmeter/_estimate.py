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
import math
import os
import tempfile
import threading
import typing
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from typing import Any

from tokenmeter import _pipeline
from tokenmeter._fork import renew_after_fork
from tokenmeter._media import (
    audio_seconds,
    decoded_size,
    image_size,
    media_bytes,
    mp4_seconds,
    pdf_pages,
)
from tokenmeter._models import MAX_TOKENS, Usage, plain_str
from tokenmeter._registry import canonical, family_of
from tokenmeter.pricing._overrides import short_repr
from tokenmeter.usage.openai import asked_search_context, with_chat_search

__all__ = [
    "TextTally",
    "capped_output",
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


# -- tokenizers ---------------------------------------------------------------------------------
Counter = Callable[[str], int]
_counters: dict[str, Counter | None] = {}
_counters_lock = threading.Lock()
renew_after_fork(globals(), "_counters_lock", threading.Lock)

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


#: False inside an LLM call (``without_waiting``): a tokenizer not loaded yet is not waited for.
_wait_for_load: ContextVar[bool] = ContextVar("tokenmeter_wait_for_tokenizer", default=True)
#: False for the estimate of a call the process is ending through (``without_waiting``'s
#: ``start_load``): its load is not started in the background either.
_start_load: ContextVar[bool] = ContextVar("tokenmeter_start_tokenizer_load", default=True)
_loading: set[str] = set()  # loads started, in this process (a child starts its own)
_loading_lock = threading.Lock()
renew_after_fork(globals(), "_loading", set)
renew_after_fork(globals(), "_loading_lock", threading.Lock)


@contextmanager
def without_waiting(start_load: bool = True) -> Iterator[None]:
    """Estimates made inside the application's LLM call for a record without usage: importing
    a tokenizer and loading its vocabulary is slow, and the call must never wait for it. Until
    it is loaded (in the background, from the first such estimate), the heuristic answers.
    ``estimate()``, ``count_tokens()`` and a budget's reservation (which must be the
    tokenizer's count; budgets start the load when configured) wait for it.

    ``start_load=False``: not even started, for a call the process is likely ending through
    (a Ctrl-C): the exit waits for a load under way, and one running as the interpreter ends
    made a Ctrl-C'd process exit with status 1 rather than die of SIGINT (130 in a shell)."""
    token = _wait_for_load.set(False)
    loads = _start_load.set(start_load)
    try:
        yield
    finally:
        _start_load.reset(loads)
        _wait_for_load.reset(token)


def _counter(name: str) -> Counter | None:
    """The BPE counter of an OpenAI encoding, None when none runs offline (loaded once)."""
    if name in _counters:
        return _counters[name]
    if not _wait_for_load.get():
        if _start_load.get() and not _pipeline.exit_began():
            _load_in_background(name)
        return None
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


def load_tokenizers_in_background() -> None:
    """Start loading the OpenAI vocabularies now (budgets count every request with them)."""
    for name in _TIKTOKEN_FILES:
        if name not in _counters:
            _load_in_background(name)


def _load_in_background(name: str) -> None:
    # Not _counters_lock: a loader holds it while it imports, and this may run inside an import
    # (an import hook that instruments): waiting for a loader that waits for the import lock
    # would deadlock.
    with _loading_lock:
        if name in _loading:
            return
        _loading.add(name)
    # (``imports``: the exit waits for a load under way, which holds the import lock.)
    try:
        _pipeline.start_thread(lambda: _counter(name), "tokenmeter-tokenizer", imports=True)
    except RuntimeError as exc:
        # A thread that cannot start (a container's pids limit: "can't start new thread") must
        # not fail the instrument(), wrap() or configure() that preloads for budgets: loading
        # is only started early; an estimate that waits loads the tokenizer itself, and a later
        # one that does not tries the background load again. (Only the message is logged: a
        # traceback kept by a handler would keep the unstarted thread for the exit to join.)
        with _loading_lock:
            _loading.discard(name)
        logger.debug("tokenmeter: tokenizer %s not loaded in the background: %s", name, str(exc))


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
        if len(_encodings) < 1000 and len(model) <= 200:  # a server's megabyte name: not kept
            _encodings[model] = found
    encoding = found
    counter = _counter(encoding)
    if counter is not None:
        try:
            total = sum(_counted(encoding, counter, text) for text in texts if text)
        except Exception:  # the tokenizer refuses some input (a multi-megabyte text): count all
            logger.debug("tokenmeter: tokenizer %s refused a text", encoding, exc_info=True)
        else:
            return max(1, round(total * _SCALE.get(family, 1.0))) if total else 0
    raw = sum(_heuristic(text, family) for text in texts if text)
    return max(1, round(raw)) if raw else 0


#: The encoding of each OpenAI model name seen (a request names its model each time).
_encodings: dict[str, str] = {}

#: Token counts of texts counted before, per encoding: a conversation resends its earlier
#: messages with every call, and a budget check and an estimated record count the same request.
#: Bounded by the characters it keeps; emptied when full.
_counts: dict[tuple[str, str], int] = {}
_counts_chars = 0
_COUNTS_MAX_CHARS = 4_000_000
_COUNT_LONGEST = 100_000


#: A long text is tokenized in pieces of at most this many characters (at most 4 bytes, so
#: tokens, each): bpe-openai refuses a text of more than 200,000 tokens.
_PIECE = 40_000
#: Characters of one text tokenized at most (some 0.05 s of prose, a few tenths for the slowest
#: text, random symbols); its count is extrapolated beyond.
_TOKENIZE_MOST = 500_000


def _counted(encoding: str, counter: Counter, text: str) -> int:
    global _counts_chars
    if len(text) > _COUNT_LONGEST:
        return _counted_in_pieces(counter, text)
    key = (encoding, text)
    found = _counts.get(key)
    if found is None:
        found = counter(text)
        if _counts_chars + len(text) > _COUNTS_MAX_CHARS:
            _counts.clear()
            _counts_chars = 0
        _counts[key] = found
        _counts_chars += len(text)
    return found


def _counted_in_pieces(counter: Counter, text: str) -> int:
    """Tokens of a long text, tokenized piece by piece (cut before a space, where the tokenizer
    splits anyway), up to ``_TOKENIZE_MOST`` characters and extrapolated beyond."""
    total = at = 0
    while at < len(text) and at < _TOKENIZE_MOST:
        end = at + _PIECE
        if end < len(text):
            cut = text.rfind(" ", at + _PIECE // 2, end)
            end = cut if cut > 0 else end
        total += counter(text[at:end])
        at = end
    return total if at >= len(text) else round(total * len(text) / at)


def _family(provider: str) -> str:
    found = _families.get(provider)
    if found is None:
        family = family_of(provider)
        found = family if family in _OVERHEAD else "openai"
        if len(_families) < 1000 and len(provider) <= 200:  # a megabyte name: not kept
            _families[provider] = found
    return found


#: The family of each provider name seen (the registry is fixed at import).
_families: dict[str, str] = {}


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
_IMAGE_TYPES = frozenset({"image_url", "input_image", "image", "computer_screenshot"})
#: Values a request's walk reads at most. A request holding one list twice at each of its levels
#: (a list that contains itself twice) is a tree of 2**30 values: walking it whole took hours
#: and gigabytes. No real request comes near this many.
_MAX_VALUES = 1_000_000


def _uploaded(files: Any) -> tuple[Any, ...]:
    """The contents of a multipart field's files, as ``_with_files`` gathers them: bytes, or of
    a file object what ``file_head`` read (None when it could not be read: no dimensions, no
    audio)."""
    if files is None:
        return ()
    return tuple(files) if isinstance(files, list | tuple) else (files,)


class _Walk:
    """Collects the text of a request's content, and what its media will cost, whatever its
    shape: dicts, lists, strings, SDK objects (pydantic models, protos). Images, audio and
    documents are counted as ``_media_tokens`` says: from their dimensions, duration or pages
    when the request carries them inline, else at a typical figure."""

    __slots__ = ("audio", "documents", "excerpts", "family", "images", "left", "parts", "video")

    def __init__(self, family: str) -> None:
        self.family = family
        self.parts: list[str] = []
        #: The first bytes of long inline text files as text, and how many times longer each is.
        self.excerpts: list[tuple[str, float]] = []
        #: (width, height) or None when unknown, and the OpenAI ``detail`` asked for.
        self.images: list[tuple[tuple[int, int] | None, Any]] = []
        self.audio = 0.0  # seconds
        self.video = 0.0  # seconds
        self.documents = 0  # pages
        self.left = _MAX_VALUES

    def add(self, value: Any, depth: int = 0) -> None:
        if depth > 30 or value is None or self.left <= 0:
            return
        self.left -= 1
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
        if self._media(value):
            return
        for key, item in value.items():
            if key in _NOT_TEXT or key in _MEDIA_KEYS:
                continue
            if isinstance(item, Mapping | list | tuple) and key in _JSON_KEYS:
                # Tool-call arguments, schemas and Gemini function responses are sent as JSON.
                self.parts.append(_json(item))
                continue
            self.add(item, depth + 1)

    def _media(self, value: Mapping[Any, Any]) -> bool:
        """Count ``value`` if it is an image, audio or document part (True), else False."""
        kind = value.get("type")
        if not isinstance(kind, str):  # a tool result's own JSON (a schema's list of types)
            kind = None
        if kind is None and "mime_type" in value and "data" in value:  # a legacy Gemini blob
            mime = value.get("mime_type")
            self._blob(mime if isinstance(mime, str) else "", value.get("data"), None)
            return True
        inline = value.get("inline_data") or value.get("inlineData")
        stored = value.get("file_data") or value.get("fileData")
        if isinstance(inline, Mapping) or isinstance(stored, Mapping):  # Gemini parts
            part = inline if isinstance(inline, Mapping) else stored
            assert isinstance(part, Mapping)
            mime = part.get("mime_type") or part.get("mimeType") or ""
            self._blob(mime if isinstance(mime, str) else "", part.get("data"), None)
            return True
        if kind in _IMAGE_TYPES:
            detail = value.get("detail")
            source = value.get("image_url")
            if isinstance(source, Mapping):  # chat: {"url": ..., "detail": ...}
                detail = source.get("detail", detail)
                source = source.get("url")
            if isinstance(value.get("source"), Mapping):  # Anthropic: {"type": "base64", ...}
                source = value["source"].get("data")
            self._image(source, detail)
            return True
        if kind == "input_audio":
            clip = value.get("input_audio")
            clip = clip if isinstance(clip, Mapping) else value
            fmt = clip.get("format")
            self._audio(clip.get("data"), fmt if isinstance(fmt, str) else None)
            return True
        if kind in ("file", "input_file"):
            file = value.get("file") if isinstance(value.get("file"), Mapping) else value
            assert isinstance(file, Mapping)
            self._file(file.get("file_data"))
            return True
        if kind == "document" and isinstance(value.get("source"), Mapping):
            source = value["source"]
            if source.get("type") == "text":  # a plain-text document: its text is what is read
                self.add(source.get("data"))
            elif source.get("type") == "content":
                self.add(source.get("content"))
            else:
                self._document(source.get("data"))
            return True
        return False

    def _blob(self, mime: str, data: Any, detail: Any) -> None:
        if mime.startswith("image/"):
            self._image(data, detail)
        elif mime.startswith("audio/"):
            self._audio(data, mime)
        elif mime.startswith("video/"):
            head, end = media_bytes(data), media_bytes(data, tail=True)
            seconds = (mp4_seconds(head) if head else None) or (mp4_seconds(end) if end else None)
            if seconds is None:
                seconds = decoded_size(data) * 8 / _VIDEO_BITRATE
            self.video += max(1, int(seconds))  # sampled at one frame a second
        elif mime == "application/pdf":
            self._document(data)
        elif mime.startswith("text/"):
            head = media_bytes(data, _KEEP_CHARS)
            if head:
                size = decoded_size(data)
                if size > len(head):  # only its head is decoded: its count is extrapolated
                    self.excerpts.append((head.decode("utf-8", "replace"), size / len(head)))
                else:
                    self.parts.append(head.decode("utf-8", "replace"))
        else:
            self.documents += 1

    def _image(self, data: Any, detail: Any) -> None:
        head = media_bytes(data)
        self.images.append((image_size(head) if head else None, detail))

    def image_files(self, files: Any) -> None:
        """The image files an Images API request uploads (``image``, ``mask``), each counted as
        an inline image is, from its header."""
        for data in _uploaded(files):
            self._image(data, None)

    def audio_files(self, files: Any) -> None:
        """The audio file a transcription uploads (``file``), counted as inline audio is: its
        duration from its header (a WAV's exact, an MP3's from its bitrate, else its size at a
        typical bitrate)."""
        for data in _uploaded(files):
            self._audio(data, None)

    def _audio(self, data: Any, fmt: str | None) -> None:
        head = media_bytes(data)
        if head:
            self.audio += audio_seconds(head, decoded_size(data), fmt)

    def _file(self, data: Any) -> None:
        """An OpenAI file part: a PDF is read as pages (each page's text and image), a text
        file (code, CSV, JSON, markdown) as its text, which is what OpenAI passes on: a 40 kB
        source file was counted as one PDF page (750 tokens for about 10,000). Told apart by
        their bytes, not by the name or MIME type the caller gave."""
        head = media_bytes(data, _KEEP_CHARS)
        if head and not head.startswith(b"%PDF") and _is_text(head):
            self._blob("text/plain", data, None)
        else:  # a PDF, a binary document (docx: its text is not read here), a file id
            self._document(data)

    def _document(self, data: Any) -> None:
        self.documents += pdf_pages(data) or 1  # unknown (a file id, a URL): one page at least

    def tokens(self, provider: str, model: str) -> int:
        return sum(self.counts(provider, model).values())

    def counts(self, provider: str, model: str) -> dict[str, int]:
        """Tokens by ``modalities`` key: input_text, input_image, input_audio, ..."""
        found = {"input_text": _measure(self.parts, provider, model)}
        for text, times in self.excerpts:
            found["input_text"] += round(_measure((text,), provider, model) * times)
        if self.images:
            image = _image_tokens(self.family, model)
            found["input_image"] = sum(image(size, detail) for size, detail in self.images)
        per_second = _AUDIO_PER_SECOND[self.family]
        if self.audio:
            found["input_audio"] = max(1, round(self.audio * per_second))
        if self.video:
            found["input_video"] = round(self.video * _VIDEO_PER_SECOND)
        if self.documents:
            found["input_document"] = self.documents * _PAGE_TOKENS[self.family]
        return found


#: Keys whose values are media, not text (read by ``_Walk._media`` where they can be).
_MEDIA_KEYS = frozenset(
    {"data", "url", "image_url", "inline_data", "inlineData", "file_data", "fileData", "source"}
)


# -- what media costs, by provider (each provider's documented rule; docs/providers.md) ----------
#: Audio tokens a second: Gemini 32 (documented); OpenAI 10 (one per 100 ms of user audio, as its
#: Realtime cost guide counts it). Claude takes no audio.
_AUDIO_PER_SECOND = {"openai": 10, "anthropic": 10, "google": 32}
#: Gemini video: 263 tokens a second (documented); the duration is read from an MP4's index (at
#: its start or its end), else taken from its size at a typical 1 Mbit/s.
_VIDEO_PER_SECOND = 263
_VIDEO_BITRATE = 1_000_000
_BINARY_CONTROLS = bytes(set(range(32)) - set(b"\t\n\r\f"))


def _is_text(head: bytes) -> bool:
    """Whether the first bytes of a file are UTF-8 text (the last character may be cut)
    without the control characters binary formats hold (a zip's ``PK\\3\\4``)."""
    if len(head.translate(None, _BINARY_CONTROLS)) != len(head):
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as error:
        return error.start >= len(head) - 3 and error.reason == "unexpected end of data"
    return True


#: Tokens a PDF page: Gemini 258 (documented); Claude 1,500-3,000 depending on its text
#: (documented; the middle taken); OpenAI documents none: a page's image and its text, about 220
#: tokens for a near-empty page in recorded calls plus some 530 for a page of about 400 words.
_PAGE_TOKENS = {"openai": 750, "anthropic": 2_250, "google": 258}
#: OpenAI tile models: (name prefix, base tokens, tokens a 512 px tile); checked in order.
_OPENAI_TILES = (
    ("gpt-4o-mini", 2_833, 5_667),
    ("gpt-5", 70, 140),
    ("o1", 75, 150),
    ("o3", 75, 150),
    ("computer-use", 65, 129),
)
#: OpenAI patch models: 32 px patches (at most 1,536) times a multiplier; checked first.
_OPENAI_PATCHES = (
    ("gpt-5-mini", 1.62),
    ("gpt-5-nano", 2.46),
    ("gpt-4.1-mini", 1.62),
    ("gpt-4.1-nano", 2.46),
    ("o4-mini", 1.72),
)


def _image_tokens(family: str, model: str) -> Callable[[tuple[int, int] | None, Any], int]:
    """The provider's (and for OpenAI, the model's) image rule: tokens of one image given its
    dimensions (None: not known, a typical image of about a megapixel is assumed)."""
    if family == "anthropic":
        return _claude_image
    if family == "google":
        return _gemini_image
    name = model.lower().rsplit("/", 1)[-1]
    for prefix, multiplier in _OPENAI_PATCHES:
        if name.startswith(prefix):
            return lambda size, detail: _openai_patches(size or (1024, 1024), multiplier)
    base, tile = 85, 170
    for prefix, base_, tile_ in _OPENAI_TILES:
        if name.startswith(prefix):
            base, tile = base_, tile_
            break
    return lambda size, detail: _openai_tiles(size, detail, base, tile)


def _openai_tiles(size: tuple[int, int] | None, detail: Any, base: int, tile: int) -> int:
    """Low detail: the base tokens. Else fit in 2048 x 2048, shorten the short side to 768 px,
    and add a tile's tokens per 512 px tile (a 1024 x 1024 image: 4 tiles)."""
    if detail == "low":
        return base
    width, height = size or (1024, 1024)
    scale = min(1.0, 2048 / max(width, height))
    scale *= min(1.0, 768 / (min(width, height) * scale))
    return base + tile * math.ceil(width * scale / 512) * math.ceil(height * scale / 512)


def _openai_patches(size: tuple[int, int], multiplier: float) -> int:
    """32 x 32 px patches, at most 1,536 (the image is scaled down to fit), times the model's
    multiplier."""
    width, height = size
    patches = math.ceil(width / 32) * math.ceil(height / 32)
    if patches > 1_536:
        scale = math.sqrt(32 * 32 * 1_536 / (width * height))
        across, down = width * scale / 32, height * scale / 32
        scale *= min(math.floor(across) / across, math.floor(down) / down)
        patches = min(1_536, math.ceil(width * scale / 32) * math.ceil(height * scale / 32))
    return round(patches * multiplier)


def _claude_image(size: tuple[int, int] | None, detail: Any) -> int:
    """width x height / 750, after scaling down to a long edge of 1568 px and about 1.2
    megapixels (1,600 tokens)."""
    if size is None:
        return 1_500
    width, height = size
    scale = min(1.0, 1568 / max(width, height), math.sqrt(1_200_000 / (width * height)))
    return max(1, math.ceil(width * scale * height * scale / 750))


def _gemini_image(size: tuple[int, int] | None, detail: Any) -> int:
    """258 tokens for an image within 384 x 384 px; larger ones are cut into 768 x 768 tiles
    of 258 tokens each."""
    if size is None:
        return 258
    width, height = size
    if width <= 384 and height <= 384:
        return 258
    return 258 * math.ceil(width / 768) * math.ceil(height / 768)


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
    ``tools``, Gemini ``contents`` (+ ``config.system_instruction``, ``tools``), each with
    its structured-output schema (``_output_schemas``), a legacy ``prompt`` or (``operation``
    "embeddings" or "embed_content") an embeddings input. Never raises: what cannot be read
    counts as nothing.
    """
    try:
        return _usage_of(_input_parts(provider, request, operation))
    except Exception:
        logger.debug("tokenmeter: estimating a request's input failed", exc_info=True)
        return Usage()


def _usage_of(parts: dict[str, int], output_tokens: int = 0) -> Usage:
    """A Usage from input tokens by modality: the breakdown is kept (each part priced at its
    modality's rate) when anything but text is in it."""
    total = min(sum(parts.values()), MAX_TOKENS)
    media = {key: value for key, value in parts.items() if value and key != "input_text"}
    if not media:
        return Usage(input_tokens=total, output_tokens=output_tokens)
    found = {key: min(value, total) for key, value in parts.items() if value}
    return Usage(
        input_tokens=total,
        output_tokens=output_tokens,
        input_audio_tokens=found.get("input_audio", 0),
        modalities=found,
    )


_BARE = frozenset({"embeddings", "embed_content", "completions"})


def _input_parts(provider: str, request: Any, operation: str | None = None) -> dict[str, int]:
    """A request's estimated input tokens by modality (text: with the framing and the tools)."""
    if request is None:
        return {}
    family = _family(provider)
    model = _get(request, "model")
    model = model if isinstance(model, str) else ""
    per_message, per_request, per_tools = _OVERHEAD[family]
    contents = _get(request, "contents")
    messages = _get(request, "messages")
    config = _get(request, "config")
    tools: Any = None
    token_ids = 0
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
        token_ids = _token_ids(given)
        if isinstance(given, list | tuple) and given and isinstance(given[0], Mapping):
            walk, n = _messages(given, family)  # Responses items
        else:
            walk, n = _Walk(family), 1
            walk.add(None if token_ids else given)
        walk.add(_get(request, "instructions"))
        tools = _get(request, "tools")
        if operation == "images":  # an edit's input images (multipart files)
            walk.image_files(_get(request, "image"))
            walk.image_files(_get(request, "mask"))
        elif operation == "audio.transcriptions":  # the uploaded clip (its prompt is text)
            walk.audio_files(_get(request, "file"))
    if operation in _BARE or (operation is None and _get(request, "prompt") is not None):
        n, per_request = 0, 0  # no chat framing around a bare prompt or an embeddings input
    parts = walk.counts(provider, model)
    parts["input_text"] += per_message * n + per_request + token_ids
    if tools:
        parts["input_text"] += _tool_tokens(tools, provider, model) + per_tools
    schemas = _output_schemas(request, config)
    if schemas:
        parts["input_text"] += _tool_tokens(schemas, provider, model)
    return parts


#: Request keys that may hold a structured-output schema (OpenAI chat, OpenAI Responses,
#: Anthropic): ``_input_bound`` leaves their values to ``_output_schemas``.
_SCHEMA_KEYS = frozenset({"response_format", "text", "output_config", "output_format"})


def _output_schemas(request: Any, config: Any = None) -> list[Any]:
    """The structured-output schemas a request sends, as plain data: chat
    ``response_format.json_schema``, Responses ``text.format``, Anthropic
    ``output_config.format`` (and the beta's ``output_format``), Gemini
    ``config.response_json_schema`` / ``response_schema``. The providers bill them as input (the
    schema is put in the prompt), as they bill tools' parameters, and they are counted the same
    way: a large schema left out let a per-call budget send a request that cost many times it."""
    found: list[Any] = []
    response_format = _get(request, "response_format")
    if _is_json_schema(response_format):  # {"type": "json_schema", "json_schema": {...}}
        found.append(_get(response_format, "json_schema"))
    formats = (
        _get(_get(request, "text"), "format"),
        _get(_get(request, "output_config"), "format"),
        _get(request, "output_format"),
    )
    found += [given for given in formats if _is_json_schema(given)]
    if config is not None:
        for name in ("response_json_schema", "responseJsonSchema", "response_schema"):
            found.append(_get(config, name))
        if isinstance(config, Mapping):
            found.append(config.get("responseSchema"))
    return [plain for plain in map(_schema_data, found) if plain]


def _is_json_schema(value: Any) -> bool:
    """Whether ``value`` is a structured-output format of type ``json_schema``."""
    return value is not None and _get(value, "type") == "json_schema"


def _schema_data(schema: Any) -> Any:
    """A schema as plain data: a dict as it is, an SDK object (a Gemini ``Schema``) dumped, a
    pydantic class (Gemini takes one) as its JSON schema; None for anything else."""
    if schema is None or isinstance(schema, str | bytes | int | float | bool):
        return None
    if isinstance(schema, Mapping):
        return schema
    if isinstance(schema, type):
        to_schema = getattr(schema, "model_json_schema", None)
        if callable(to_schema):
            with suppress(Exception):
                return to_schema()
        return None
    if typing.get_origin(schema) is not None:  # a form google-genai takes: list[M], M | None
        from pydantic import TypeAdapter  # not at import: only budgets' rare typing schemas

        with suppress(Exception):
            return TypeAdapter(schema).json_schema()
        return None
    return _plain(schema)


def _token_ids(given: Any) -> int:
    """Tokens sent as token ids in place of text (embeddings, legacy completions: a list of
    ints, or a list of such lists, as LangChain's OpenAI embeddings send them): one token each.
    0 when ``given`` is not that."""
    if not isinstance(given, list | tuple) or not given:
        return 0
    if all(type(item) is int for item in given):
        return len(given)
    if all(
        isinstance(item, list | tuple) and all(type(token) is int for token in item)
        for item in given
    ):
        return sum(len(item) for item in given)
    return 0


#: Content part types whose cost is not their text (``_Walk._media`` reads them).
_MEDIA_TYPES = _IMAGE_TYPES | {"input_audio", "file", "input_file", "document"}
#: A request's keys whose values the bound leaves to ``_tool_tokens`` (their JSON is counted).
_TOOL_KEYS = frozenset({"tools", "functions"})


def _input_bound(provider: str, request: Any) -> int | None:
    """A ceiling on ``_input_parts``' total for a plain request (a dict of dicts, lists and
    strings, as the Stainless adapters pass their JSON body), found without tokenizing: a
    byte-level BPE token (o200k, cl100k) covers at least one UTF-8 byte and the heuristic counts
    at most one token a character, so every string of the request counts as its bytes, scaled
    by the family's factor, plus the framing of every top-level item and the tools as counted
    exactly. None when the request holds anything whose cost is not its text (media, tool-call
    arguments sent as JSON, SDK objects): then only the exact count will do. A budget check
    reserves this ceiling while it fits easily, and tokenizes only near a limit."""
    if type(request) is not dict:
        return None
    size = 0  # bytes at most
    items = 1
    tooled = False
    for key, value in request.items():
        kind = type(value)
        if kind is str:
            size += len(value) if value.isascii() else 4 * len(value)
            continue
        if key in _TOOL_KEYS:
            tooled = True
            continue
        if key in _SCHEMA_KEYS:  # counted below, as the JSON the estimate counts
            continue
        if kind is list or kind is tuple:
            if len(value) > items:
                items = len(value)
            for item in value:  # _bound_bytes(value, 0), with a message of strings inline
                if type(item) is int:  # token ids, a token each: the exact count will do
                    return None
                if type(item) is dict and _PLAIN_MESSAGE.isdisjoint(item):
                    for text in item.values():
                        if type(text) is str:
                            size += len(text) if text.isascii() else 4 * len(text)
                            continue
                        found = _bound_bytes(text, 2)
                        if found < 0:
                            return None
                        size += found
                    continue
                found = _bound_bytes(item, 1)
                if found < 0:
                    return None
                size += found
            continue
        found = _bound_bytes(value, 0)
        if found < 0:
            return None
        size += found
    schemas = _output_schemas(request, request.get("config"))
    if schemas:  # their JSON's bytes, as the strings above: tokenized, a big one cost ms a call
        text = _json(schemas)
        size += len(text) if text.isascii() else 4 * len(text)
    framing = _framing.get(provider)
    if framing is None:
        family = _family(provider)
        framing = (_SCALE.get(family, 1.0), *_OVERHEAD[family])
        if len(_framing) < 1000:
            _framing[provider] = framing
    scale, per_message, per_request, per_tools = framing
    tokens = math.ceil(size * scale) + 1 + per_message * items + per_request
    tools = (request.get("tools") or request.get("functions")) if tooled else None
    if tools:
        model = request.get("model")
        model = model if type(model) is str else ""
        tokens += _tool_tokens(tools, provider, model) + per_tools
    return tokens


#: Of each provider name seen: its family's scale, and per-message, per-request and per-tools
#: framing tokens (the registry is fixed at import).
_framing: dict[str, tuple[float, int, int, int]] = {}


def _bound_bytes(value: Any, depth: int) -> int:
    """The UTF-8 bytes of ``value``'s strings at most; -1 when the bound cannot see through it."""
    kind = type(value)
    if kind is str:
        return len(value) if value.isascii() else 4 * len(value)
    if value is None or kind is int or kind is float or kind is bool:
        return 0
    if depth > 30:
        return -1
    total = 0
    if kind is dict:
        part = value.get("type")
        if isinstance(part, str) and part in _MEDIA_TYPES:
            return -1
        for key, item in value.items():
            if key in _MEDIA_KEYS or (key in _TOOL_KEYS and item):  # tools in a Gemini config
                return -1
            if type(item) is str:
                total += len(item) if item.isascii() else 4 * len(item)
                continue
            if key in _JSON_KEYS and item is not None:  # tool-call arguments, sent as JSON
                return -1
            found = _bound_bytes(item, depth + 1)
            if found < 0:
                return -1
            total += found
        return total
    if kind is list or kind is tuple:
        for item in value:
            if type(item) is int:  # token ids (a list of them in a list): not text
                return -1
            found = _bound_bytes(item, depth + 1)
            if found < 0:
                return -1
            total += found
        return total
    return -1


#: Keys of a content part whose structured values are sent as JSON text (tool-call arguments,
#: a Gemini function response).
_JSON_KEYS = frozenset({"input", "args", "parameters", "response"})
#: A dict with none of these keys is walked by ``_bound_bytes`` without a check of its keys.
_PLAIN_MESSAGE = _MEDIA_KEYS | _TOOL_KEYS | _JSON_KEYS | {"type"}


def _tool_tokens(tools: Any, provider: str, model: str) -> int:
    """Tool definitions are sent as their JSON schemas (formatting overhead aside)."""
    if not isinstance(tools, list | tuple | Mapping):
        # google-generativeai's GenerativeModel(tools=...) keeps them as a FunctionLibrary,
        # whose str() is its repr: its declarations were estimated as a few tokens.
        to_proto = getattr(tools, "to_proto", None)
        if callable(to_proto):
            with suppress(Exception):  # unreadable: counted as before
                tools = to_proto()
    items = tools if isinstance(tools, list | tuple) else [tools]
    plain = [t if isinstance(t, Mapping) else (_plain(t) or str(t)) for t in items]
    share = _TOOL_SHARE[_family(provider)]
    return round(count_tokens(_json(plain), provider, model) * share)


# -- output: what passed through a stream ---------------------------------------------------------
class TextTally:
    """The output text a stream delivered (or a reply that was not streamed held), kept to count
    its tokens if the provider reports none.
    Bounded: past ``_KEEP_CHARS`` characters only their number is kept (and extrapolated)."""

    __slots__ = ("chars", "images", "kept", "parts")

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.chars = 0
        self.kept = 0
        #: Images the model generated (a Gemini image model's parts): no text to count, each
        #: billed at its model's per-image tokens, which the provider's reader adds.
        self.images = 0

    def add(self, text: Any) -> None:
        if type(text) is not str or not text:
            return
        self.chars += len(text)
        if self.kept < _KEEP_CHARS:
            room = _KEEP_CHARS - self.kept
            if len(text) > room:  # one huge piece (a server's megabytes) is not kept whole
                text = text[:room]
            self.parts.append(text)
            self.kept += len(text)

    def scaled(self, seen: int, read: int) -> TextTally:
        """A copy standing for ``seen`` chunks, of which this holds the text of ``read``."""
        copy = TextTally()
        copy.parts, copy.chars, copy.kept = list(self.parts), self.chars, self.kept
        copy.images = self.images
        if read and seen > read:
            copy.chars = round(self.chars * seen / read)
        return copy

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
        raise ValueError(f"model must be a non-empty string, got {short_repr(model)}")
    if provider is not None and (not isinstance(provider, str) or not provider.strip()):
        raise ValueError(f"provider must be a non-empty string, got {short_repr(provider)}")
    if messages is not None and not isinstance(messages, list | tuple):
        raise ValueError(f"messages must be a list of messages, got {type(messages).__name__}")
    for name, value in (("text", text), ("output", output)):
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {type(value).__name__}")
    # A str subclass's own __hash__ / __eq__ would run in the caches' lookups: its characters.
    model = plain_str(model)
    text, output = (None if value is None else plain_str(value) for value in (text, output))
    name = canonical(plain_str(provider)) if provider else provider_for_model(model)
    parts: dict[str, int] = {"input_text": 0}
    if messages is not None:
        key = "contents" if _family(name) == "google" else "messages"
        parts.update(_input_parts(name, {"model": model, key: list(messages)}))
    if text:
        parts["input_text"] += count_tokens(text, name, model)
    output_tokens = 0
    if output:
        output_tokens = count_tokens(output, name, model) + _OUTPUT_OVERHEAD.get(_family(name), 0)
    # A search model searches before every answer: counted as the call's record will count it.
    return with_chat_search(_usage_of(parts, output_tokens), model)


def _count(value: Any) -> int | None:
    """A token count or number of choices the request set: a positive int, else None."""
    return value if type(value) is int and value > 0 else None


def output_cap(request: Any) -> int | None:
    """The most output tokens the request let the provider bill, None when it set no limit.

    An estimate counts the text that came back, which a server (or a proxy) may send far past
    the request's limit: a 2 MB reply to ``max_tokens=10`` was estimated at 588,253 output
    tokens, when the provider stops (and bills) at the limit, thinking included. Read from
    ``max_completion_tokens`` / ``max_tokens`` (OpenAI chat, legacy completions, Anthropic),
    ``max_output_tokens`` (OpenAI Responses), a google-genai ``config`` or a legacy Gemini
    ``generation_config``; times the choices asked for (``n``, ``best_of``,
    ``candidate_count``), each of which may reach it."""
    if request is None:
        return None
    choices = max(_count(_get(request, "n")) or 1, _count(_get(request, "best_of")) or 1)
    limit = (
        _count(_get(request, "max_completion_tokens"))
        or _count(_get(request, "max_output_tokens"))
        or _count(_get(request, "max_tokens"))
    )
    for key in ("config", "generation_config"):  # google-genai, google-generativeai
        config = _get(request, key)
        if config is None or limit is not None:
            continue
        limit = _count(_get(config, "max_output_tokens")) or _count(_get(config, "maxOutputTokens"))
        choices = (
            _count(_get(config, "candidate_count"))
            or _count(_get(config, "candidateCount"))
            or choices
        )
    return None if limit is None else limit * choices


def capped_output(estimated: int, request: Any, reported: int = 0) -> int:
    """An estimated output count taken at most at ``request``'s output limit (``output_cap``),
    as the provider stops and bills there, but never below ``reported``: a count the provider
    sent is its own, even over the limit. Every estimate of a call's output goes through here
    (a reply without usage, a usage that counts the input only, a stream left before its count):
    a reply to ``max_tokens=10`` of 20,000 words, with usage ``{"prompt_tokens": 19}``, was
    recorded as 25,000 output tokens."""
    cap = output_cap(request)
    if cap is None or estimated <= cap:
        return estimated
    return max(cap, reported)


def estimate_usage(
    provider: str, request: Any, model: str, tally: TextTally | None, operation: str | None = None
) -> Usage:
    """A call's whole usage when the provider reported none: the request's input, and the output
    that passed through a stream or came back in a reply (``tally``; None when there is none);
    with the fees the request set: a search model's search, Perplexity's search context size."""
    found = estimate_input(provider, request, operation)
    output = 0
    if tally is not None:
        try:
            output = capped_output(tally.tokens(provider, model), request)
        except Exception:
            logger.debug("tokenmeter: estimating a stream's output failed", exc_info=True)
    usage = found.model_copy(update={"output_tokens": output}) if output else found
    if operation == "chat.completions":  # a search model searched, reported usage or not
        usage = with_chat_search(usage, model)
    sized = asked_search_context(request)
    if sized is not None:  # the fee of the size asked for, as its budget reserved (Perplexity)
        usage = usage.model_copy(update={"tool_requests": {**usage.tool_requests, sized: 1}})
    return usage
