"""OpenAI adapter: which routes are billed, how to read them, and the include_usage request.

OpenAI-compatible servers (Groq, DeepSeek, OpenRouter, ...) use the same client; the provider is
inferred from the base URL's host so the right price table applies.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from contextlib import suppress
from typing import Any

from tokenmeter._estimate import TextTally, capped_output, count_tokens, without_waiting
from tokenmeter._models import Usage
from tokenmeter._registry import provider_for_host
from tokenmeter._runtime import settings
from tokenmeter.pricing._names import name_candidates
from tokenmeter.pricing._overrides import aliases
from tokenmeter.providers._core import Call, named_model, safely
from tokenmeter.providers._stainless import (
    SKIPPED,
    Endpoint,
    SampledText,
    StainlessAdapter,
    keep_names,
)
from tokenmeter.usage import from_openai_response
from tokenmeter.usage._read import field, getter, ident, reports_nothing
from tokenmeter.usage.openai import (
    billed_tool_call,
    plain_completion,
    responses_tool_requests,
    tier_from_openai,
    usage_from_openai,
    usage_from_openai_images,
    with_chat_search,
)

_TERMINAL_EVENTS = {"response.completed", "response.incomplete", "response.failed"}
#: Responses stream events whose ``delta`` is output text (estimated if no usage comes): the
#: answer (an audio answer's transcript), its reasoning, and every tool call's input the model
#: writes (a function's arguments, a custom tool's freeform input, code interpreter code, an MCP
#: call's arguments, a shell command; all billed as output). Not the audio itself (base64) nor a
#: shell command's output (the tool's, not the model's).
_OUTPUT_DELTAS = {
    "response.output_text.delta",
    "response.function_call_arguments.delta",
    "response.custom_tool_call_input.delta",
    "response.code_interpreter_call_code.delta",
    "response.mcp_call_arguments.delta",
    "response.shell_call_command.delta",
    "response.audio.transcript.delta",
    "response.refusal.delta",
    "response.reasoning_summary_text.delta",
    "response.reasoning_text.delta",
}
_NOT_YET_BILLED = {"queued", "in_progress"}
#: A background response cancelled: billed for what it had done, which its usage says (none
#: when it was cancelled before it ran: its usage is null, and nothing is estimated for it).
_CANCELLED = "cancelled"
#: The error of a Responses stream that ended on an ``error`` event without a code.
_ERROR_EVENT = "ResponseErrorEvent"
#: The error of a Responses answer whose status is ``failed`` without an error code.
_FAILED = "response.failed"
#: What a caller can do about a chat stream without usage.
_CHAT_HINT = (
    "a chat stream reports it when stream_options.include_usage is True, as tokenmeter asks "
    "unless you set False; a compatible server may ignore it, and a stream cut short has none"
)


class ChunkReader(SampledText):
    """Chat and legacy completion streams: usage only on the last chunk (when asked for). Until
    it comes, the text of the first ``_READ_CHUNKS`` chunks is read as they pass and the rest are
    counted: a stream left early, or sent without ``include_usage``, is recorded with an estimate
    of that text, scaled up to the chunks counted. Only text is kept, never a chunk: the bare
    SDK frees each chunk as the caller moves on (so a stream runs no garbage collection at all),
    and holding chunks made the collector run young and full collections the bare stream never
    does."""

    __slots__ = ("hide", "no_output", "quiet")

    def __init__(self, hide_usage_chunk: bool) -> None:
        super().__init__()  # ``read``: chunks whose text is in ``text``; ``counted``: the rest
        self.hide = hide_usage_chunk
        #: The usage came without an output count, or a total to tell it by (a compatible
        #: server's ``{"prompt_tokens": 19}``): the output is estimated from what streamed by.
        self.no_output = False
        #: Every text chunk to read is read and the model is known: a chunk without usage is
        #: only counted (nearly every chunk of a long stream, so in as few steps as can be).
        self.quiet = False

    def feed(self, chunk: Any, call: Call) -> bool:
        if self.quiet and getattr(chunk, "usage", None) is None:
            self.counted += 1
            return False
        if call.usage is None:
            if self.read < _READ_CHUNKS:
                self.read += 1
                with suppress(Exception):  # a hostile chunk adds nothing; the others still count
                    _add_text(self.text, chunk)
                if call.tier is None:  # the usage chunk's, if it comes, is the one recorded
                    call.tier = tier_from_openai(getattr(chunk, "service_tier", None))
            else:
                self.counted += 1
        if not call.model:  # Azure's first chunk (prompt filter results) names none, nor an id
            call.model = getattr(chunk, "model", None)
            call.request_id = ident(getattr(chunk, "id", None)) or None
        usage = getattr(chunk, "usage", None)
        if usage is None:
            if call.provider != "groq":  # Groq's usage comes beside: each chunk is looked at
                self.quiet = self.read >= _READ_CHUNKS and call.usage is None and bool(call.model)
                return False
            usage = _groq_usage(chunk)
            if usage is None:
                return False
        self.quiet = False  # after it, chunks are not counted (unless it cannot be read)
        if reports_nothing(usage):  # {} or zeros: none came (estimated from the text read)
            return self.hide and not getattr(chunk, "choices", None)
        self.no_output = False
        with suppress(Exception):  # text where usage belongs: unreadable (read below), no more
            self.no_output = _counts_no_output(usage)
        if not self.no_output:
            self.forget_text()  # nothing left to estimate
        # Decided first, so that a usage block we cannot read is still hidden when we asked for it.
        hidden = self.hide and not getattr(chunk, "choices", None)
        call.read("reading stream usage", _read_usage, chunk, usage, call)
        return hidden

    def partial(self, usage: Usage, model: str, request: Any = None) -> Usage | None:
        """For a usage that named no output count: the reported input with the output
        estimated from what streamed by, at most the ``request``'s output limit (None when the
        count came)."""
        if not self.no_output:
            return None
        output = capped_output(self.tally.tokens("openai", model), request, usage.output_tokens)
        if output <= usage.output_tokens:
            return None
        return usage.model_copy(update={"output_tokens": output})


#: The usage fields that tell a chat stream's output count (see ``usage_from_openai``).
_OUTPUT_COUNTS = ("completion_tokens", "output_tokens", "total_tokens")


def _counts_no_output(usage: Any) -> bool:
    """A usage block without an output count, or a total to tell it by (a compatible server's
    ``{"prompt_tokens": 19}``, Responses' ``{"input_tokens": 19}``): it counts the input alone,
    and the output is estimated from the text that came back, streamed or not."""
    get = getter(usage)
    return all(get(name) is None for name in _OUTPUT_COUNTS)


#: Chunks of a chat stream whose text is read until its usage comes (about a token each): the
#: estimate of a longer stream without usage is extrapolated from them. Reading costs a few
#: attribute reads per chunk, so only the first ones are read and the rest counted.
_READ_CHUNKS = 64


def _groq_usage(chunk: Any) -> Any:
    """Groq sends a stream's usage in its last choice chunk's ``x_groq`` (asked for or not).
    Read from the chunk's extra fields: a dict look-up, on every chunk of a Groq stream."""
    extra = getattr(chunk, "__pydantic_extra__", None)
    groq = extra.get("x_groq") if type(extra) is dict else None
    return field(groq, "usage") if isinstance(groq, Mapping) else None


def _add_text(tally: TextTally, chunk: Any) -> None:
    add = tally.add
    for choice in getattr(chunk, "choices", None) or ():
        delta = getattr(choice, "delta", None)
        if delta is None:  # legacy completions
            add(getattr(choice, "text", None))
            continue
        add(getattr(delta, "content", None))
        add(getattr(delta, "refusal", None))
        add(_reasoning(delta))
        audio = getattr(delta, "audio", None)  # an audio answer's: its text is the transcript
        if audio is not None:
            add(field(audio, "transcript"))
        for tool_call in getattr(delta, "tool_calls", None) or ():
            function = getattr(tool_call, "function", None)
            if function is not None:
                add(getattr(function, "name", None))
                add(getattr(function, "arguments", None))


def _reasoning(message: Any) -> Any:
    """A reasoning model's reasoning in a chat delta or message, billed as output but not part of
    the SDK's types (read from its extra fields): DeepSeek's and vLLM's ``reasoning_content``, or
    else OpenRouter's ``reasoning``; one of them only, as a server may send both, the same text."""
    extra = getattr(message, "__pydantic_extra__", None)
    if type(extra) is dict and not extra and type(getattr(message, "__dict__", None)) is dict:
        # An SDK model with no extra fields (nearly every chunk): only a field it declares
        # can hold either, read without pydantic's lookup of a missing attribute (which raises).
        fields = message.__dict__
        reasoning = fields.get("reasoning_content")
        return reasoning if type(reasoning) is str else fields.get("reasoning")
    reasoning = field(message, "reasoning_content")
    return reasoning if type(reasoning) is str else field(message, "reasoning")


def _reply_text(parsed: Any, reasoning: bool = True) -> TextTally:
    """The output of a reply that was not streamed (an object, or a dict read from a raw body),
    as the stream readers tally it: chat and legacy completion choices, Responses output items.
    A part that cannot be read adds nothing.

    ``reasoning=False`` leaves the reasoning's text out (chat ``reasoning_content`` or
    ``reasoning``, Responses reasoning items): for a usage that counts the reasoning, whose
    estimate is added to that count, the text would be counted twice."""
    tally = TextTally()
    add = tally.add
    with suppress(Exception):
        for choice in field(parsed, "choices") or ():
            message = field(choice, "message")
            if message is None:  # legacy completions
                add(field(choice, "text"))
                continue
            add(field(message, "content"))
            add(field(message, "refusal"))
            add(field(field(message, "audio"), "transcript"))  # an audio answer's text
            if reasoning:
                add(_reasoning(message))
            for tool_call in field(message, "tool_calls") or ():
                _add_call(add, field(tool_call, "function"))
    with suppress(Exception):
        for item in field(parsed, "output") or ():
            if not reasoning and field(item, "type") == "reasoning":
                continue
            _add_call(add, item)  # a function or MCP call's (a message has neither)
            add(field(item, "input"))  # a custom tool call's freeform input
            add(field(item, "code"))  # a code interpreter call's code
            # A message's text and refusals; a reasoning item's summary and reasoning text.
            for part in (field(item, "content") or (), field(item, "summary") or ()):
                for piece in part if isinstance(part, list | tuple) else ():
                    add(field(piece, "text"))
                    add(field(piece, "refusal"))
    return tally


def _add_call(add: Callable[[Any], None], function: Any) -> None:
    """A tool call's name and arguments (a chat tool call's function, a Responses item)."""
    add(field(function, "name"))
    add(field(function, "arguments"))


def _keep_tier(call: Call, parsed: Any, *, served: bool = True) -> None:
    """The service tier an answer without usage reports (a chat chunk's, a Responses stream's
    ``response.created``, a reply's): its estimate is priced at it, as its usage would have
    been (a flex stream left early was estimated at twice the flex price). ``served``: the
    answer names the tier it was served at (a reply, a stream's last response), which replaces
    the one asked for, ``default`` included; ``response.created`` names the tier asked for."""
    with suppress(Exception):  # the tier of a response that cannot be read: standard
        named = field(parsed, "service_tier")
        if served and named is not None:
            call.tier = tier_from_openai(named)
        else:
            call.tier = tier_from_openai(named) or call.tier


def _read_usage(chunk: Any, usage: Any, call: Call) -> None:
    # A chunk's blank model (a compatible server's ``"model": ""``) names none: the one asked
    # for decides the search fee, as it names the record.
    call.usage = with_chat_search(
        usage_from_openai(usage), named_model(call.model) or call.request_model
    )
    call.tier = tier_from_openai(getattr(chunk, "service_tier", None))


class ResponseEventReader(SampledText):
    """Responses streams: usage on the terminal event (completed, incomplete or failed). Until it
    comes, output deltas are tallied: a stream left early, or a terminal response without usage
    (a server that sends none), is recorded with an estimate. A stream that ends on an ``error``
    event is recorded as an error named by the event's code (estimated the same way), and one
    that ends on ``response.failed`` as an error named by the response's (its usage billed).

    A body read through ``iter_*()`` feeds its deltas past the first events as ``SKIPPED``:
    counted, the output text of the deltas read scaled up to them (``SampledText``), every
    delta read counted among those (an audio delta too, as the skipped ones are)."""

    __slots__ = ()

    def __init__(self, hide_usage_chunk: bool = False) -> None:
        super().__init__()

    def feed(self, event: Any, call: Call) -> bool:
        kind = getattr(event, "type", None)
        if type(kind) is not str:
            if event is SKIPPED:
                self.counted += 1
            elif kind is None and getattr(event, "event", None) == "error":
                # Older SDKs hand an SSE ``error`` event over wrapped: {"event", "data"}.
                _ended_on_error(call, field(getattr(event, "data", None), "code"))
            return False
        if kind in _OUTPUT_DELTAS:
            self.read += 1
            self.text.add(getattr(event, "delta", None))
        elif kind == "response.output_item.done":
            tool = safely("reading a tool call", _tool_call, event, call)
            if tool is not None:
                call.saw_tool(tool)  # its fee counts if the stream ends before its usage
        elif kind in _TERMINAL_EVENTS:
            response = getattr(event, "response", None)
            if _read_again(call, field(response, "background"), ident(field(response, "id"))):
                keep_names(call, response)  # ended without usage, a retrieve makes no record
                return False
            _asked_for(call, ident(field(response, "id")))
            if kind == "response.failed":
                _failed(call, response)
            if field(response, "usage") is None:  # an object, or a dict (older SDKs)
                keep_names(call, response)
                _keep_tier(call, response)
                call.saw_tools(safely("reading tool calls", responses_tool_requests, response))
            else:
                try:
                    found = from_openai_response(response, call.provider)
                except Exception:
                    keep_names(call, response)
                    raise
                # The tier billed is the one beside the usage (OpenAI may serve a priority or
                # flex request at default): response.created's, the tier asked for, is only an
                # estimate's.
                call.tier = None
                call.take(found)
        elif kind == "response.created":
            response = getattr(event, "response", None)
            if call.model is None:
                keep_names(call, response)
            _keep_tier(call, response, served=False)
            if call.deferred and field(response, "background") is True:
                # Asked for: it runs on if the stream is left, and its retrieve records it. A
                # server's say-so alone defers nothing (the call would go unrecorded).
                _runs_on(ident(field(response, "id")), call.request_model)
        elif kind == "error":
            _ended_on_error(call, getattr(event, "code", None))
        elif kind.endswith("delta"):  # no output text (audio): one of the deltas all the same
            self.read += 1
        return False


def _tool_call(event: Any, call: Call) -> str | None:
    """The billed tool call (a web search) a stream's finished output item is, if any."""
    return billed_tool_call(getattr(event, "item", None), field(call.request, "tools"))


def _ended_on_error(call: Call, code: Any, otherwise: str = _ERROR_EVENT) -> None:
    """A Responses stream's ``error`` event: the SDK raises nothing, the stream just ends with
    no usage. Recorded as an error named by the event's code."""
    call.failure = code[:100] if type(code) is str and code.strip() else otherwise


def _failed(call: Call, response: Any) -> None:
    """A response whose status is ``failed`` (the SDK raises nothing): an error record named by
    its error's code, that keeps the usage the provider billed for it."""
    _ended_on_error(call, field(field(response, "error"), "code"), _FAILED)


def _read(parsed: Any, call: Call) -> None:
    """A chat, completion, embeddings or decisions response; a billed one without usage is
    estimated (its output from the text it holds), as is one whose usage reports nothing, and
    the output of one whose usage counts the input alone."""
    plain = plain_completion(parsed, call.provider)
    if plain is not None and (plain.usage.input_tokens or plain.usage.output_tokens):
        # The usual chat completion, read once: a usage block with counts (it reports
        # something) that names its output count (nothing to estimate).
        call.take(plain)
        return
    usage = field(parsed, "usage")
    if usage is None or reports_nothing(usage):
        call.missing = True
        call.reply = _reply_text(parsed)
        keep_names(call, parsed)
        _keep_tier(call, parsed)
        return
    found = from_openai_response(parsed, call.provider)
    call.take(found)
    if (
        found is not None
        and not found.usage.output_tokens
        and call.operation != "embeddings"  # which has no output
        and _counts_no_output(usage)
    ):
        call.reply = _reply_text(parsed)  # its output, estimated as a stream's (Call._record)


#: Response id -> the model its background create asked for (the create reports no usage; the
#: retrieve that does is the record, and its request names no model). Bounded.
_background: OrderedDict[str, str] = OrderedDict()
_BACKGROUND_MAX = 10_000


def _runs_on(response_id: str | None, model: str | None) -> None:
    """A background response not billed yet: its retrieve's record gets the create's model."""
    if response_id is not None and model is not None:
        _background[response_id] = model
        if len(_background) > _BACKGROUND_MAX:
            _background.popitem(last=False)


def _asked_for(call: Call, response_id: str | None) -> None:
    """A finished background response: its record (made by a retrieve, streamed or not, whose
    request names no model) gets the model its create asked for, and the entry is done with
    (a create streamed to its end too: kept, it held memory until 10,000 others pushed it out)."""
    if response_id is not None:
        asked = _background.pop(response_id, None)
        if call.request_model is None:
            call.request_model = asked


def _read_again(call: Call, background: Any, response_id: str | None) -> bool:
    """A retrieve of a response made in the foreground (by another process, say): it was billed
    once, at its create, which is its record. Only background ones bill a retrieve."""
    return call.retrieval and background is False and response_id not in _background


def _read_response(parsed: Any, call: Call) -> None:
    """A Responses API answer. A retrieve of one made in the foreground is no call. A
    background create still queued or in progress, and its retrieves until it finishes, are not
    billed yet: no record (the finished retrieve is it,
    with the create's model as the request model). A finished one without usage is estimated,
    and so is a create that did not ask for ``background`` whose answer says it is still
    running (no retrieve would ever record it), and a failed one is an error record (with the
    usage it was billed). A cancel's answer is read as a retrieve: a cancelled response is
    recorded at the usage it reports, once whichever of its cancel and retrieves comes first
    (deduplicated by id), and not at all when it reports none (cancelled before it ran)."""
    get = getter(parsed, what="response")
    status, ident_ = get("status"), ident(get("id"))
    if _read_again(call, get("background"), ident_):
        return
    usage = get("usage")
    no_usage = usage is None or reports_nothing(usage)
    if (
        no_usage
        and type(status) is str
        and status in _NOT_YET_BILLED
        and (call.retrieval or field(call.request, "background") is True)
    ):
        _runs_on(ident_, call.request_model)
        return
    _asked_for(call, ident_)
    if status == _CANCELLED and no_usage and call.retrieval:
        return  # cancelled before it ran: nothing billed, nothing to estimate
    if status == "failed":
        _failed(call, parsed)
    if no_usage:  # estimated: with the searches its output lists
        call.saw_tools(safely("reading tool calls", responses_tool_requests, parsed))
    _read(parsed, call)


class ImageEventReader:
    """Images API streams (``stream=True`` on generate/edit with a GPT Image model): partial
    images, then a ``*.completed`` event that carries the usage."""

    __slots__ = ("tally",)

    def __init__(self, hide_usage_chunk: bool = False) -> None:
        self.tally = None  # no text: a stream left early is estimated from its request

    def feed(self, event: Any, call: Call) -> bool:
        kind = getattr(event, "type", None)
        if type(kind) is str and kind.endswith(".completed"):
            usage = getattr(event, "usage", None)
            if usage is not None:
                call.read("reading image usage", _read_image_usage, usage, call)
        return False


def _read_image_usage(usage: Any, call: Call) -> None:
    call.usage = usage_from_openai_images(usage)


def _read_images(parsed: Any, call: Call) -> None:
    """An ImagesResponse: GPT Image models report token usage; DALL-E models report none (they
    are billed per image, which no price table here knows): such a call is not recorded."""
    if field(parsed, "usage") is None:
        return
    call.take(from_openai_response(parsed, call.provider))


class TranscriptEventReader(SampledText):
    """Audio transcription streams: ``transcript.text.done`` carries the usage. A body read
    through ``iter_*()`` feeds its deltas past the first events as ``SKIPPED``: counted, the
    text of those read scaled up to them (``SampledText``)."""

    __slots__ = ()

    def __init__(self, hide_usage_chunk: bool = False) -> None:
        super().__init__()

    def feed(self, event: Any, call: Call) -> bool:
        kind = getattr(event, "type", None)
        if event is SKIPPED or (type(kind) is str and kind.startswith("transcript.text.")):
            # A transcribe model's stream (deltas, segments of a diarized one...), whatever its
            # model's name: billed in tokens (whisper answers JSON, no events).
            call.not_in_tokens = False
        if kind == "transcript.text.delta":
            self.read += 1
            self.text.add(getattr(event, "delta", None))
        elif kind == "transcript.text.done":
            usage = getattr(event, "usage", None)
            if usage is not None:
                call.read("reading transcription usage", _read_transcript_usage, usage, call)
        elif event is SKIPPED:
            self.counted += 1
        return False


def _read_transcript_usage(usage: Any, call: Call) -> None:
    if field(usage, "type") != "duration":
        call.usage = _clip_as_audio(usage_from_openai(usage), call)


def _read_transcription(parsed: Any, call: Call) -> None:
    """A transcription: GPT-4o transcribe models report tokens (audio and text in,
    text out). whisper models report seconds of audio, or nothing (billed per second, a unit
    no record field here holds): not recorded. A token-billed model's answer without usage (a
    ``response_format="text"`` answer is a bare string; a compatible server may send none) was
    billed all the same: estimated as one whose usage never came, its audio from the clip's
    duration and its output from the text returned. Only a model named as one (``*transcribe*``),
    by the request or the alias the application gave it: an Azure deployment's name says
    nothing of its model, and a whisper deployment's answers were recorded as unpriced token
    estimates."""
    usage = field(parsed, "usage")
    if usage is None:
        if not _transcribe_model(call.request_model or ""):
            return
        call.missing = True
        call.reply = TextTally()
        call.reply.add(parsed if type(parsed) is str else field(parsed, "text"))
        return
    if field(usage, "type") == "duration":
        return
    call.usage = _clip_as_audio(usage_from_openai(usage), call)


def _clip_as_audio(usage: Usage, call: Call) -> Usage:
    """A transcription's usage whose input is not split by modality (``input_token_details``
    left out: the SDK types it optional, and a compatible server or a proxy may drop it). Its
    input is the clip, audio, and the request's ``prompt``, text: read as one text count, the
    audio was priced at the text rate ($2.50 for $6 per million on gpt-4o-transcribe), where
    the same answer with the split, or one without usage (estimated), prices it as audio. The
    prompt's share is its estimate (without waiting for a tokenizer to load: this runs in the
    caller's call); the rest is the clip's."""
    if not usage.input_tokens or usage.input_audio_tokens or usage.modalities.get("input_text"):
        return usage  # split by the answer (or nothing to split)
    prompt = field(call.request, "prompt")
    text = 0
    if type(prompt) is str and prompt:
        with without_waiting():
            text = min(
                count_tokens(prompt, call.provider, call.request_model or ""), usage.input_tokens
            )
    return clip_as_audio(usage, text)


def clip_as_audio(usage: Usage, prompt_tokens: int = 0) -> Usage:
    """A transcription's ``usage`` whose input is not split by modality, read as the clip's
    audio but for ``prompt_tokens`` of text (``_clip_as_audio``); ``record_response()`` of
    such a body, which has no request to tell the prompt by, reads it all as audio."""
    if not usage.input_tokens or usage.input_audio_tokens or usage.modalities.get("input_text"):
        return usage  # split by the answer (or nothing to split)
    text = min(prompt_tokens, usage.input_tokens)
    audio = usage.input_tokens - text
    modalities = {**usage.modalities, "input_audio": audio}
    if text:
        modalities["input_text"] = text
    return usage.model_copy(update={"input_audio_tokens": audio, "modalities": modalities})


def _transcribe_model(model: str) -> bool:
    """Whether ``model`` names a transcribe model, by any spelling pricing reads it by
    (``STT-Prod``, ``azure/stt-prod``) or the alias the application gave one of them."""
    names = name_candidates(model)
    known = aliases()
    spellings = [*names, *(known.get(name, "") for name in names)]
    return any("transcribe" in name.lower() for name in spellings)


_CHAT = Endpoint(
    "chat.completions", _read, ChunkReader, no_usage_hint=_CHAT_HINT, ends_at_done=True
)
_COMPLETIONS = Endpoint("completions", _read, ChunkReader, ends_at_done=True)
_EMBEDDINGS = Endpoint("embeddings", _read, ChunkReader, ends_at_done=True)
#: ``client.decisions.create`` (openai 3.57+): never streamed; its ``Decision`` carries a
#: Responses-shaped ``usage`` (input, cached and cache-write, output, reasoning tokens).
_DECISIONS = Endpoint("decisions", _read, ChunkReader, ends_at_done=True)
_RESPONSES = Endpoint(
    "responses", _read_response, ResponseEventReader, dedupe=True, ends_at_done=True
)
_RETRIEVED = Endpoint(
    "responses",
    _read_response,
    ResponseEventReader,
    dedupe=True,
    retrieval=True,
    ends_at_done=True,
)
_IMAGES = Endpoint("images", _read_images, ImageEventReader, ends_at_done=True)
_TRANSCRIPTIONS = Endpoint(
    "audio.transcriptions", _read_transcription, TranscriptEventReader, ends_at_done=True
)
_NOT_BILLED = {"input_tokens", "input_items"}


def _is_azure(kind: type) -> bool:
    """Whether a client class is the SDK's Azure OpenAI client or a subclass of it.

    Asked of the class hierarchy, not the class name: an application's ``class
    CompanyLLM(openai.AzureOpenAI)`` is Azure on any endpoint, and an ``openai.OpenAI``
    subclass that merely has "Azure" in its name is whatever its host says."""
    try:
        from openai.lib.azure import BaseAzureClient
    except ImportError:  # an SDK without the Azure client
        return False
    return issubclass(kind, BaseAzureClient)


class OpenAIAdapter(StainlessAdapter):
    name = "openai"

    def __init__(self) -> None:
        super().__init__()
        self._providers: dict[int, tuple[Any, type, str]] = {}

    def endpoint(self, method: str, path: str) -> Endpoint | None:
        if method == "post":
            if path.endswith("/chat/completions"):
                return _CHAT
            if path.endswith("/embeddings"):
                return _EMBEDDINGS
            if path.endswith("/completions"):
                return _COMPLETIONS
            if path.endswith(("/images/generations", "/images/edits")):
                return _IMAGES
            if path.endswith("/audio/transcriptions"):
                return _TRANSCRIPTIONS
            if path.endswith("/decisions"):  # not the admin GET /organization/usage/decisions
                return _DECISIONS
        elif method != "get":
            return None
        parts = path.rstrip("/").split("/")
        if "responses" in parts:  # create and compact (POST), retrieve (GET), cancel; not delete
            tail = parts[parts.index("responses") + 1 :]
            if not tail or (len(tail) == 1 and tail[0] not in _NOT_BILLED):
                return _RETRIEVED if method == "get" else _RESPONSES
            if method == "post" and len(tail) == 2 and tail[1] == "cancel":
                # The cancelled response, with the usage billed up to the cancel: what a
                # retrieve of it would find (an application that cancels rarely retrieves).
                return _RETRIEVED
        return None

    def provider_of(self, client: Any) -> str:
        # Keyed by the URL object itself (rendering it as text costs more than the rest of the
        # call planning); a client given a new base_url has a new URL object.
        url = vars(client).get("_base_url") or getattr(client, "base_url", None)
        found = self._providers.get(id(url))
        if found is None or found[0] is not url or found[1] is not type(client):
            host = getattr(url, "host", "") or ""
            port = getattr(url, "port", None)
            named = provider_for_host(host, _is_azure(type(client)), port)
            found = (url, type(client), named)
            if len(self._providers) >= 1024:  # apps that make a client per request
                self._providers.clear()
            self._providers[id(url)] = found
        return found[2]

    def prepare(self, options: Any, endpoint: Endpoint, streamed: bool) -> tuple[Any, bool]:
        if not (streamed and endpoint.new_reader is ChunkReader and settings().stream_usage):
            return options, False
        body = options.json_data
        stream_options = body.get("stream_options") if isinstance(body, dict) else None
        if (
            not isinstance(body, dict)
            or _in_extra_body(options)
            or (isinstance(stream_options, dict) and "include_usage" in stream_options)
            or not isinstance(stream_options, dict | None)  # the caller's mistake, sent as given
        ):
            return options, False  # the caller decided; never override an explicit choice
        copied = options.model_copy()
        copied.json_data = {
            **body,
            "stream_options": {**(stream_options or {}), "include_usage": True},
        }
        return copied, True

    def defers(self, body: dict[str, Any], endpoint: Endpoint) -> bool:
        """A ``background`` Responses create runs on at OpenAI however its stream ends (even
        never iterated): its retrieve is the record."""
        return endpoint.retrieval or (endpoint is _RESPONSES and body.get("background") is True)

    def not_in_tokens(self, body: dict[str, Any], endpoint: Endpoint) -> bool:
        """A transcription stream of a model not named a transcribe model (whisper-1, an Azure
        deployment not aliased to one): whisper-1 ignores ``stream`` and answers the plain
        JSON transcription, billed per second, so the stream parses no event and was recorded
        as an unpriced token estimate on every call. ``_read_transcription``'s rule."""
        if endpoint is not _TRANSCRIPTIONS:
            return False
        model = body.get("model")
        return not _transcribe_model(model if type(model) is str else "")

    def refuses(self, error: Exception, given: Any) -> bool:
        """A server that does not take ``stream_options`` (Azure OpenAI before api-version
        2024-09-01-preview: 400 "Unrecognized request argument supplied: stream_options"; a
        compatible server that forbids unknown fields: 400 or 422 naming it). When the caller
        gave ``stream_options`` of its own, only ``include_usage`` is ours: an error naming the
        caller's options (a wrong type in ``include_obfuscation``) is the caller's, raised as it
        is, and the server is not taken for one that refuses usage.

        A JSON answer is read where a server names what it objects to (FastAPI's ``loc`` and
        ``msg``, OpenAI's ``param`` and ``message``), never in what it echoes of the request:
        FastAPI's default 422 holds the whole body sent (``input``), ``stream_options``
        included, whatever field failed; taken for a refusal, that server was never asked for
        usage again and all its later streams were estimated."""
        if getattr(error, "status_code", None) not in (400, 422):
            return False
        body = getattr(given, "json_data", None)
        ours = (
            "include_usage"
            if isinstance(body, dict) and body.get("stream_options") is not None
            else "stream_options"
        )
        answer = getattr(error, "body", None)
        if isinstance(answer, dict | list):
            return any(ours in text for text in _named_in(answer))
        try:
            text = error.response.text  # type: ignore[attr-defined]
        except Exception:
            text = None
        return ours in str(error) or (type(text) is str and ours in text[:65_536])

    def promises_usage(self, options: Any, endpoint: Endpoint) -> bool:
        """A chat or legacy completion stream sent with ``include_usage`` true (asked by the
        caller or by us) ends with a usage chunk; a server that ignores the option sends none."""
        if endpoint.new_reader is not ChunkReader:
            return False
        if _in_extra_body(options):
            stream_options = options.extra_json["stream_options"]
        else:
            body = options.json_data
            stream_options = body.get("stream_options") if isinstance(body, dict) else None
        return isinstance(stream_options, dict) and stream_options.get("include_usage") is True


#: Keys under which a validation error echoes what the server was sent (pydantic's ``input``
#: and ``input_value``; ``body``, FastAPI's documented handler that returns the request body).
_ECHOES = frozenset(("input", "input_value", "body"))
#: How deep ``_named_in`` looks into an error answer.
_NAMED_DEPTH = 16


def _named_in(answer: Any, depth: int = 0) -> list[str]:
    """The keys and texts of a JSON error answer, bar what it echoes of the request."""
    if isinstance(answer, str):
        return [answer]
    if depth >= _NAMED_DEPTH:
        return []
    texts: list[str] = []
    if isinstance(answer, dict):
        for key, value in answer.items():
            if key not in _ECHOES:
                texts.append(str(key))
                texts.extend(_named_in(value, depth + 1))
    elif isinstance(answer, list):
        for value in answer:
            texts.extend(_named_in(value, depth + 1))
    return texts


def _in_extra_body(options: Any) -> bool:
    """``stream_options`` given through ``extra_body``: the SDK merges it over the body's,
    replacing them whole, so it is the caller's to send as it is (and a usage chunk it asks for
    is the caller's, not hidden)."""
    extra = getattr(options, "extra_json", None)
    return isinstance(extra, Mapping) and "stream_options" in extra


ADAPTER = OpenAIAdapter()


def patch_targets() -> list[tuple[type, str, Any]]:
    """(class, method, wrapper) for the installed openai SDK."""
    from openai import _base_client

    return [
        (_base_client.SyncAPIClient, "request", ADAPTER.sync_wrapper),
        (_base_client.AsyncAPIClient, "request", ADAPTER.async_wrapper),
    ]


def wrap_instance(client: Any) -> bool:
    from openai import _base_client

    return ADAPTER.wrap_client(client, _base_client.SyncAPIClient, _base_client.AsyncAPIClient)
