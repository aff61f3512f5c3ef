"""The generic interception core shared by every provider adapter.

An adapter decides *what* to patch and *how to read* a response or a stream chunk; this module
does the rest the same way for everyone: the exactly-once guard, timing, error records, stream
proxies that finalise exactly once on every exit path, and reversible patching.

Nothing here may raise into the caller: every step of ours is wrapped by ``safely``.

Which calls make a record: every failed call (status "error"); every non-streamed call that
reported usage, or that was billed and reported none (a Responses ``background`` create still
queued reports none because nothing is billed yet: its later retrieve is the record); and every
stream, however it ended. Where the provider reported no usage at all (a stream left before its
usage arrived, an OpenAI chat stream sent with ``include_usage: False``, an OpenAI-compatible
server that sends none), the record holds an estimate marked ``estimated`` (``_estimate``): never
a silent zero. A call whose usage was sent but cannot be read (negative, not a number,
inconsistent) is recorded with status "error", error "UnreadableUsage" and an unknown cost: the
latest reading decides, as usage is cumulative. So is the cost of a success answer the SDK failed
to parse (``_answered_unparsed``), its error the SDK's exception.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import sys
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from contextvars import Context, ContextVar, copy_context
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, SupportsIndex

import wrapt

from tokenmeter import _pipeline, _runtime
from tokenmeter._estimate import TextTally, capped_output, estimate_usage, without_waiting
from tokenmeter._fork import renew_after_fork
from tokenmeter._models import UNREADABLE_USAGE, Usage
from tokenmeter._record import NOTHING_USED, emit_call
from tokenmeter._sessions import Session, session_of_record
from tokenmeter.guardrails import _budgets, _state
from tokenmeter.usage import Extracted, with_model_fees

__all__ = [
    "Adapter",
    "AsyncIterableProxy",
    "AsyncStreamProxy",
    "Call",
    "Patch",
    "Plan",
    "SDKObjectProxy",
    "StreamReader",
    "Switches",
    "SyncGeneratorProxy",
    "SyncIterableProxy",
    "SyncStreamProxy",
    "Wrapper",
    "fault",
    "guard",
    "intercept",
    "intercept_async",
    "named_model",
    "safely",
    "send",
    "send_async",
]


class _QuietLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The ``tokenmeter`` logger as the interception loop uses it, on the application's thread:
    an application's logging that raises (a failing filter or handler) is not its call's problem,
    so what we log there never raises."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        with contextlib.suppress(Exception):
            super().log(level, msg, *args, **kwargs)


logger = _QuietLogger(logging.getLogger("tokenmeter"), {})

if TYPE_CHECKING:
    _Proxy = wrapt.ObjectProxy[Any]
else:  # wrapt 1.x proxies are not subscriptable at run time
    # wrapt 2's base proxy has no ``__iter__`` (its ObjectProxy adds one whatever it wraps):
    # a proxy of ours has one only if the SDK's object has (``SDKObjectProxy``).
    _Proxy = getattr(wrapt, "BaseObjectProxy", wrapt.ObjectProxy)


class ObjectProxy(_Proxy):
    """wrapt's proxy, shown as the SDK object it stands for: ``repr()`` (a log line, a
    notebook's display of a response) reads as without tokenmeter, not as wrapt's
    ``<Proxy at 0x... for Stream at 0x...>``."""

    def __repr__(self) -> str:
        return repr(self.__wrapped__)


#: The client (or SDK object) whose instrumented call is running: nested calls on it (a wrapped
#: client under instrument(), a helper calling create, an SDK retry) pass straight through. One
#: call, one record. A call on another client made meanwhile (an SDK middleware asking a second
#: model, of the same provider or not) is a call of its own, billed, so metered.
guard: ContextVar[object] = ContextVar("tokenmeter_in_call", default=None)

#: TOKENMETER_STRICT=1 (or true, yes, on) only: "0" or "false" is a deployment saying off, and
#: must never let our faults into the application's calls.
_STRICT = os.environ.get("TOKENMETER_STRICT", "").strip().lower()
_RAISE_INTERNAL = _STRICT in ("1", "true", "yes", "on")


#: Our faults already logged with their traceback, by what failed and the exception's type: a
#: fault that lasts (a bad setting found at every call, a sink's code broken) is logged once, its
#: repeats at debug, not a traceback per LLM call. Bounded.
_faults_logged: set[tuple[str, type[BaseException]]] = set()
_MAX_FAULTS_LOGGED = 1_000


def fault(what: str) -> None:
    """Called inside ``except``: log our own failure (re-raise it under TOKENMETER_STRICT=1).
    An exception a signal handler raised into our wait for a writer (an alarm's TimeoutError)
    is the application's, not ours: re-raised, to reach the caller."""
    if _RAISE_INTERNAL or _pipeline.raised_while_waiting(sys.exc_info()[1] or BaseException()):
        raise
    kind = (what, type(sys.exc_info()[1] or BaseException()))
    if kind in _faults_logged:
        logger.debug("tokenmeter: %s failed again", what, exc_info=True)
        return
    if len(_faults_logged) < _MAX_FAULTS_LOGGED:
        _faults_logged.add(kind)
    logger.warning(
        "tokenmeter: %s failed; the call itself is unaffected (logged once; repeats at debug)",
        what,
        exc_info=True,
    )


#: A ``wrapt`` wrapper: ``(wrapped, instance, args, kwargs) -> result``.
Wrapper = Callable[[Any, Any, tuple[Any, ...], dict[str, Any]], Any]


def safely(what: str, func: Callable[..., Any], *args: Any) -> Any:
    """Run one of our own steps; a fault is logged (never raised) unless TOKENMETER_STRICT=1."""
    try:
        return func(*args)
    except Exception:
        fault(what)
        return None


@dataclass(slots=True)
class Switches:
    """An adapter's switches, set by the registry: ``active`` turns its class patches inert
    after an unclean restore (someone wrapped over them)."""

    active: bool = True


def _with_output_of(
    usage: Usage, reply: TextTally, provider: str, model: str, request: Any = None
) -> Usage | None:
    """``usage`` of a reply that was not streamed, whose usage counts no output beside its
    thinking (the input alone, from a compatible server), with its output estimated from the
    reply's text, as the same answer streamed is (``partial`` of the stream readers): recorded
    with 0 output, it was a silent $0 for the reply. At most the ``request``'s output limit
    (``capped_output``; thinking included, as the provider counts it). None when it counts some
    output, or the reply holds no text (a blocked prompt: nothing came back), or the thinking
    counted already reaches the limit."""
    if usage.output_tokens > usage.reasoning_tokens:
        return None
    found = reply.tokens(provider, model)
    if not found:
        return None
    output = capped_output(usage.reasoning_tokens + found, request, usage.reasoning_tokens)
    if output <= usage.output_tokens:
        return None
    return usage.model_copy(update={"output_tokens": output})


def named_model(model: object) -> str | None:
    """The model an answer named, or None for none: a blank name (a compatible server's
    ``"model": ""`` or ``" "``) is none, as in the record, which is priced at the model asked
    (and so are an estimate and the fees that depend on the model: a search model's)."""
    return model if type(model) is str and model.strip() else None


@dataclass(slots=True, weakref_slot=True, eq=False)
class Call:
    """One logical LLM call in flight: what is known so far, recorded exactly once."""

    provider: str
    request_model: str | None
    operation: str | None
    streamed: bool = False
    started: float = field(default_factory=time.perf_counter)
    usage: Usage | None = None
    model: str | None = None
    tier: str | None = None
    request_id: str | None = None
    #: Remember the response id, so that a retrieve of it is not counted again (the Responses
    #: API repeats a response's usage on every retrieve).
    dedupe: bool = False
    #: A retrieve of a response (not a new call): recorded only if its id was never recorded.
    retrieval: bool = False
    done: bool = False
    #: The session the call was made in. A stream may end elsewhere (another task, a thread, the
    #: garbage collector): its record still belongs to the session it was made in.
    session: Session | None = None
    #: That session's name when the call was made (False: not taken, its name at the record). A
    #: stream is recorded at its end: the session may have been renamed since.
    session_name: str | Literal[False] | None = False
    #: Why the usage the provider sent could not be read (missing, negative, inconsistent).
    unreadable: str | None = None
    #: The provider always reports this call's usage (an OpenAI chat stream with
    #: ``include_usage``, an Anthropic message stream, Gemini generate_content): one that ends
    #: without any is estimated, with a warning naming what the caller can do about it.
    expects_usage: bool = False
    #: A billed response came back without usage (set by the adapter): estimated, not dropped.
    missing: bool = False
    #: The stream ran to its end (a stream left early is expected to lack its usage).
    ran_out: bool = False
    #: The request's parameters as the caller gave them (model, messages/input/contents, tools,
    #: ...): read only to estimate the usage of a call that reports none, never stored.
    request: Any = None
    #: The adapter's stream reader, which counts what passed through (estimates of the output).
    reader: Any = None
    #: The output text of a reply that was not streamed and reported no usage, or a usage that
    #: counts no output (beside its thinking: a compatible server's ``{"prompt_tokens": 100}``)
    #: (set by the adapter, from the reply it read): its output is estimated from it, as a
    #: stream's is from the text that passed through. Only counted, never kept past the record.
    reply: TextTally | None = None
    #: Server-side tool requests (web searches) a stream showed, or a reply without usage
    #: lists, by ``tool_requests`` key: billed per request, and counted in any estimate of the
    #: call (the usage that would count them never came).
    tools_seen: dict[str, int] | None = None
    #: What the caller can do about a stream without usage (the adapter words it).
    no_usage_hint: str = ""
    #: The budget reservation the call holds until its record settles it (guardrails).
    budget: Any = None
    #: An error the provider reported without the SDK raising (an OpenAI Responses ``error``
    #: event, a response whose status is ``failed``): recorded as the call's error, like an
    #: exception, with the usage it reported (billed all the same).
    failure: str | None = None
    #: Its usage comes with a later call (an OpenAI Responses ``background`` create, which runs
    #: on at the provider when its stream is left or cut, or a resumed stream of one: the
    #: retrieve that finds it done is the record). Ended without usage, it makes no record.
    deferred: bool = False
    #: A stream of a call not billed in tokens (an OpenAI whisper transcription: billed per
    #: second, and OpenAI ignores its ``stream`` and answers the plain transcription). Ended
    #: without token usage it makes no record, as the same call not streamed makes none: an
    #: estimate would count tokens never billed as tokens, at no known price. Cleared by an
    #: event only a stream billed in tokens sends (a transcribe model's under another name).
    not_in_tokens: bool = False
    #: A stream's context where it was made: its record is made in it wherever the stream ends,
    #: so that what the sinks read of the caller's context is the call's (the OpenTelemetry
    #: span it was made in becomes its span's parent, not the one active when it was read).
    context: Context | None = None

    def __post_init__(self) -> None:
        if self.streamed:
            if self.session is None:
                self.session = session_of_record()
            if self.session_name is False:  # an adapter may give the name its caller had
                self.session_name = self.session.name
            if self.context is None:  # an adapter may give the context its caller made it in
                self.context = copy_context()
            _open_streams.add(self)

    def take(self, found: Extracted | None) -> None:
        """Keep the latest reading (stream usage is cumulative: overwrite, never add)."""
        if found is None:
            return
        served = named_model(found.model)  # a blank or non-text model (5, a list) names none
        if served:
            self.usage = found.usage
        else:  # the fees that depend on the model: the one the call will be recorded at
            self.usage = with_model_fees(found, named_model(self.model) or self.request_model)
        self.model = served or self.model
        self.tier = found.tier or self.tier
        self.request_id = found.request_id or self.request_id
        self.operation = self.operation or found.operation

    def read(self, what: str, reader: Callable[..., Any], *args: Any) -> None:
        """Run an adapter's reader; usage it cannot read still leaves a record (see finish)."""
        try:
            reader(*args)
        except Exception as exc:
            self.cannot_read(f"{type(exc).__name__}: {exc}")
            if _RAISE_INTERNAL:
                raise
            _warn_unreadable(self.provider, what, exc)

    def saw_tool(self, tool: str) -> None:
        """One more server-side tool request seen go by (a stream's web search)."""
        seen = self.tools_seen or {}
        self.tools_seen = {**seen, tool: seen.get(tool, 0) + 1}

    def saw_tools(self, found: dict[str, int] | None) -> None:
        """The server-side tool requests an answer lists (its whole output, so the ones a stream
        showed of it are among them): as many of each as seen or listed, whichever is more,
        save web searches: any it lists are counted as it lists them (see _listed_searches)."""
        if found:
            self.tools_seen = _most_of_each(_listed_searches(self.tools_seen or {}, found), found)

    def _with_tools_seen(self, usage: Usage) -> Usage:
        """An estimate, with the tool requests seen: a usage left before its final count reports
        none of them, or fewer (Anthropic's ``message_start``)."""
        if not self.tools_seen:
            return usage
        tools = _most_of_each(usage.tool_requests, self.tools_seen)
        return usage.model_copy(update={"tool_requests": tools})

    def cannot_read(self, why: str) -> None:
        """The latest usage reading failed. Usage is cumulative, so an earlier reading is not the
        call's usage either (an Anthropic ``message_start`` before a garbled ``message_delta``):
        forget it. A later reading that succeeds is the call's usage again."""
        self.unreadable = why[:500]
        self.usage = None

    def ended(self) -> None:
        """A stream ran to its end (not cut, closed early or dropped): record it."""
        self.ran_out = True
        self.finish()

    def finish(self, error: BaseException | None = None) -> None:
        """Record the call (once; later calls are no-ops)."""
        if self.done:
            return
        self.done = True
        if sys.is_finalizing():  # teardown (after every exit hook): imports no longer work
            return
        context, self.context = self.context, None  # nothing of the caller's kept past this
        try:
            if context is None:
                self._record(error)
            else:
                context.run(self._record, error)
        except Exception:
            fault(f"recording a call ({self.provider})")

    def _record(self, error: BaseException | None) -> None:
        latency_ms = round((time.perf_counter() - self.started) * 1000, 3)
        usage, status, error_name, estimated = self.usage, "ok", None, False
        # The provider answered: a usage was read, or a stream began (its reader came in). The
        # tier it named then is the call's, whatever ended it (a cancelled or cut stream is
        # priced as the same stream closed there); a call that raised before any answer has
        # none of its own (the tier of a request alone is not read: standard).
        answered = error is None or usage is not None or self.reader is not None
        ran_on = error is None or self.request_id is not None  # a refused request made none
        if usage is None and self.deferred and self.unreadable is None and ran_on:
            logger.debug("tokenmeter: %s call runs on; its retrieve is the record", self.provider)
            return
        if error is not None or self.failure is not None:
            status = "error"
            error_name = type(error).__name__ if error is not None else self.failure
            # A stream's reader is attached once its stream started (the provider answered):
            # a call that failed before (a connection refused) has none.
            reader = self.reader
            tally = getattr(reader, "tally", None)
            if usage is None and (
                (tally is not None and tally.chars)
                or (_broken_off(error) and (reader is not None or self._answered_stream(error)))
                or _cut_after_sending(error)  # sent, and its reply (or stream) timed out
            ):
                # A stream cut once the provider had answered (content streamed by; or the
                # connection dropped, a timeout, the task cancelled: not an error the provider
                # reported), whether or not its reader tallies text (an Images API stream has
                # none), or a reply (a stream's before it began) that timed out or broke off
                # while read: billed, so
                # estimated (the request's input), never a silent zero, as when the
                # application closes a stream there.
                if self.retrieval:
                    # A retrieve cut or timed out (a poll, a resumed stream) bills nothing: the
                    # response is recorded once, by the retrieve that finds it done. Estimated,
                    # each left a record of model "unknown" beside that one.
                    logger.debug("tokenmeter: a %s retrieve broke off; not recorded", self.provider)
                    return
                usage, estimated = self._estimate(error), True
        elif usage is None and self.unreadable is not None:
            # The call succeeded but its usage cannot be trusted: recorded, with an unknown cost.
            status, error_name = "error", UNREADABLE_USAGE
        elif usage is None and not self.streamed and not self.missing:
            logger.debug("tokenmeter: %s call reported no usage; not recorded", self.provider)
            return
        elif usage is None and self.not_in_tokens:
            logger.debug("tokenmeter: %s call is not billed in tokens; not recorded", self.provider)
            return
        elif usage is None:  # billed, and nothing reported: never a silent zero
            usage, estimated = self._estimate(), True
            if self.ran_out or self.missing:
                _warn_no_usage(self.provider, self.no_usage_hint)
        if not estimated and usage is not None:
            if self.streamed:
                if hasattr(self.reader, "partial"):
                    # A stream left or cut before its final count (Anthropic: only
                    # message_start's).
                    served = named_model(self.model) or self.request_model or ""
                    with without_waiting(start_load=not _ending(error)):
                        better = self.reader.partial(usage, served, self.request)
                    if better is not None:
                        usage, estimated = self._with_tools_seen(better), True
            elif self.reply is not None:  # a reply whose usage counted no output
                served = named_model(self.model) or self.request_model or ""
                with without_waiting(start_load=not _ending(error)):
                    better = _with_output_of(usage, self.reply, self.provider, served, self.request)
                self.reply = None
                if better is not None:
                    usage, estimated = better, True
        if self.dedupe and usage is not None and self.request_id:  # noqa: SIM102
            # Only ids that carried usage are remembered. A create is billed whatever its id (a
            # compatible server may repeat one); a retrieve of a recorded id is not billed again,
            # nor a background create's own stream ending after a retrieve found the job done.
            if _already_recorded(self.request_id) and (self.retrieval or self.deferred):
                return
        model = self.model if type(self.model) is str and self.model.strip() else None
        model = model or self.request_model  # a blank name is none: the one asked for
        if not model:  # billed all the same: recorded under a name that says what is known
            model = UNKNOWN_MODEL
        emit_call(
            self.provider,
            model,
            usage or NOTHING_USED,
            self.session,
            self,
            request_model=self.request_model,
            operation=self.operation,
            tier=self.tier if answered and usage is not None else None,
            request_id=self.request_id,
            latency_ms=latency_ms,
            streamed=self.streamed,
            status=status,
            error=error_name,
            estimated=estimated,
            # A failed call's cost is $0 only if it sent no usage we could not read.
            priced=usage is not None or (status == "error" and self.unreadable is None),
            session_name=self.session_name,
        )

    def _answered_stream(self, error: BaseException | None) -> bool:
        """A stream whose SDK raised on the success answer's first piece, before its reader came
        in (a google-genai sync stream, sent at its first ``next()``; the legacy Gemini SDK,
        which reads its first chunk inside the call): the provider answered 2xx, so it started
        as any stream whose first event cannot be parsed, and is billed."""
        if not self.streamed or error is None:
            return False
        return bool(safely("reading a failed stream", _answered, error))

    def _estimate(self, error: BaseException | None = None) -> Usage:
        """What the call most likely used: its request's input, the output that passed by (a
        stream's) or came back (a reply's)."""
        model = named_model(self.model) or self.request_model or ""
        tally = self.reply if self.reply is not None else getattr(self.reader, "tally", None)
        self.reply = None  # counted once: the text is not kept with the call
        with without_waiting(start_load=not _ending(error)):
            usage = estimate_usage(self.provider, self.request, model, tally, self.operation)
        return self._with_tools_seen(usage)


def _ending(error: BaseException | None) -> bool:
    """True for an error the process is likely ending through (a Ctrl-C, ``sys.exit()``): its
    estimate starts no tokenizer load (``without_waiting``). Not a task's CancelledError, nor
    the GeneratorExit of a call whose event loop closed: an application goes on after those."""
    return isinstance(error, KeyboardInterrupt | SystemExit)


#: The keys a web search is counted under, one per search: which one is read from tools (a
#: Responses stream's items from the request's, its answer from the ones it echoes).
_SEARCHES = ("web_search", "web_search_preview")


def _listed_searches(seen: dict[str, int], listed: dict[str, int]) -> dict[str, int]:
    """The requests seen, less their web searches if the answer lists any: its count of them
    is the whole output's, and its name for them may differ from the one the stream's items were
    given (a stored prompt's tools, a server that echoes none), so kept beside it, the same
    searches would be counted twice (3 as web_search and again as web_search_preview)."""
    if not any(listed.get(key) for key in _SEARCHES):
        return seen
    return {tool: n for tool, n in seen.items() if tool not in _SEARCHES}


def _most_of_each(counts: dict[str, int], more: dict[str, int]) -> dict[str, int]:
    """Two counts of the same tool requests merged: the larger of each (never added)."""
    return {**counts, **{tool: max(n, counts.get(tool, 0)) for tool, n in more.items()}}


_warned_unreadable: set[tuple[str, type]] = set()


def _warn_unreadable(provider: str, what: str, exc: Exception) -> None:
    """One line per provider and kind of fault: a misbehaving server would otherwise log a
    traceback per call. The rest go to debug, with the traceback."""
    key = (provider, type(exc))
    if key in _warned_unreadable:
        logger.debug("tokenmeter: %s failed", what, exc_info=True)
        return
    _warned_unreadable.add(key)
    logger.warning(
        "tokenmeter: %s failed; the call is unaffected and recorded with an unknown cost "
        "(%s: %s; further ones are logged at debug level)",
        what,
        type(exc).__name__,
        str(exc)[:300],
    )


#: The model name of a billed call whose response and request name none (a retrieve answered
#: with ``"model": null``): recorded, with an unknown cost, rather than lost.
UNKNOWN_MODEL = "unknown"
_warned_no_usage: set[str] = set()


#: Streams not yet finished. At exit they are recorded with what they reported so far, before the
#: final flush: left to the garbage collector, they would end after the sinks are closed.
_open_streams: weakref.WeakSet[Call] = weakref.WeakSet()


def _finish_open_streams() -> None:
    for call in list(_open_streams):
        call.finish()


_pipeline.before_exit(_finish_open_streams)


def _leave_the_parents_streams() -> None:
    """In a forked child (a pool worker): the streams open in the parent at ``fork()`` are the
    parent's calls, read and recorded there. The child's copies of them, finished at its exit or
    collected, must not record each call again as an estimate of its own."""
    for call in list(_open_streams):
        call.done = True
    _open_streams.clear()


os.register_at_fork(after_in_child=_leave_the_parents_streams)


def _warn_no_usage(provider: str, hint: str) -> None:
    """Once per provider: a stream ran to its end, or a response came back, without usage (a
    server that ignores the request for it, a caller that turned it off); the adapter's ``hint``
    says what the caller can do."""
    if provider not in _warned_no_usage:
        _warned_no_usage.add(provider)
        logger.warning(
            "tokenmeter: %s call ended without reporting usage; it is recorded with estimated "
            "tokens%s",
            provider,
            f" ({hint})" if hint else "",
        )


_recorded_ids: OrderedDict[str, None] = OrderedDict()
_recorded_lock = threading.Lock()
renew_after_fork(globals(), "_recorded_lock", threading.Lock)
_RECORDED_MAX = 10_000


def _already_recorded(response_id: str) -> bool:
    """True if this id was recorded before; remembers it otherwise. Bounded to the 10,000 ids
    used last: a hit moves its id to the newest end, so a background job retrieved now and then
    is not forgotten (and billed again) behind 10,000 other responses recorded since."""
    with _recorded_lock:
        if response_id in _recorded_ids:
            _recorded_ids.move_to_end(response_id)
            return True
        _recorded_ids[response_id] = None
        if len(_recorded_ids) > _RECORDED_MAX:
            _recorded_ids.popitem(last=False)
        return False


def send(
    call: Call,
    instance: Any,
    wrapped: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    plan: Plan | None = None,
) -> Any:
    """Make the SDK call with nested calls passing through; a failure is recorded, then raised.
    A budget in force is checked first: ``BudgetExceeded`` is raised before anything is sent.
    A server that refuses what the adapter added gets the caller's own request (the ``plan``'s
    ``as_given``), and the plan is told when the server took that one (``taken_as_given``)."""
    if call.session is None:
        # Its session, taken as the call is made rather than at its record (no more work: the
        # record takes this one), and its name then: renamed while the call waits (by another
        # thread, a hook), the record keeps the name it was made under, as ``send_async``'s.
        call.session = session_of_record()
        call.session_name = call.session.name
    if _state.armed:
        _budgets.check(call, args, kwargs)
    token = guard.set(instance)
    try:
        try:
            return wrapped(*args, **kwargs)
        except Exception as exc:
            given = _refused(plan, exc)
            if given is None:
                raise
        result = wrapped(*given[0], **given[1])  # outside the except: no chained refusal
        safely("remembering a refusing server", given[2])
        return result
    except BaseException as exc:
        safely("reading a failed call", _answered_unparsed, call, exc)
        call.finish(exc)
        raise
    finally:
        guard.reset(token)


async def send_async(
    call: Call,
    instance: Any,
    wrapped: Callable[..., Awaitable[Any]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    plan: Plan | None = None,
) -> Any:
    """The async twin of ``send`` (CancelledError included: recorded as an error)."""
    if call.session is None:
        # Its session, read in its task: a call whose event loop is closed as it waits is
        # recorded where the collector closes it, charged to whatever session is open there.
        call.session = session_of_record()
        call.session_name = call.session.name
    if _state.armed:
        _budgets.check(call, args, kwargs)
    token = guard.set(instance)
    try:
        try:
            return await wrapped(*args, **kwargs)
        except Exception as exc:
            given = _refused(plan, exc)
            if given is None:
                raise
        result = await wrapped(*given[0], **given[1])
        safely("remembering a refusing server", given[2])
        return result
    except BaseException as exc:
        safely("reading a failed call", _answered_unparsed, call, exc)
        call.finish(exc)
        raise
    finally:
        # An event loop closed with the call in flight: the garbage collector closes this
        # coroutine (GeneratorExit) outside its task's context, where the token cannot be reset;
        # that context is dropped with the task and needs no reset. Raised, the ValueError would
        # replace the GeneratorExit and be printed as an unraisable exception of ours.
        with contextlib.suppress(ValueError):
            guard.reset(token)


def _answered_unparsed(call: Call, error: BaseException) -> None:
    """A call whose SDK raised on a success answer it could not parse (a body cut by a proxy,
    an HTML page served as JSON): the provider ran the request, so it may well be billed. With
    no usage read from it, its usage is unreadable (an unknown cost, as when the same answer is
    read through ``with_raw_response``), not the $0 of a call the provider refused; its error
    stays the exception's type name."""
    if call.usage is None and call.unreadable is None and _answered(error):
        call.cannot_read(f"a success answer could not be parsed ({type(error).__name__})")


#: How deep ``_answered`` looks along an exception's traceback.
_FRAMES_LOOKED_AT = 64
#: Answer types (module: class name) made only from a success (2xx) answer, an error status
#: raising first: google-genai's (which holds no status), and the REST stream iterator of the
#: legacy Gemini SDK's transport (``google.api_core``).
_SUCCESS_ONLY = {
    "google.genai.types": "HttpResponse",
    "google.genai._api_client": "HttpResponse",
    "google.api_core.rest_streaming": "ResponseIterator",
}
#: The frame locals that hold such an answer where its SDK reads it: the answer itself, or the
#: object whose method is parsing it (google-genai's ``segments()`` of a stream, the legacy
#: SDK's iterator over its first chunk).
_ANSWER_HOLDERS = ("response", "session_response", "self", "iterator")


def _answered(error: BaseException) -> bool:
    """True for an exception raised once the provider answered with a success (2xx) status: one
    that says so (an SDK's response validation error), or one raised while a frame held that
    answer as its ``response`` (the SDKs' own parse of it: Stainless ``_process_response`` and
    ``APIResponse._parse``), or held an answer made only from a success one (google-genai's
    parse of its ``HttpResponse``, a stream's first event included). An error status, a
    transport error or a refusal before sending holds none."""
    status = getattr(error, "status_code", None)
    if type(status) is int:
        return 200 <= status < 300
    traceback = error.__traceback__
    for _ in range(_FRAMES_LOOKED_AT):
        if traceback is None:
            return False
        held = traceback.tb_frame.f_locals
        status = getattr(held.get("response"), "status_code", None)
        if type(status) is int and 200 <= status < 300:
            return True
        if any(_made_on_success(held.get(name)) for name in _ANSWER_HOLDERS):
            # Its answer is a success: an exception beside it is its parse failing, unless the
            # exception is the provider's own error report (a status ``code``: an error event).
            return type(getattr(error, "code", None)) is not int
        traceback = traceback.tb_next
    return False


def _made_on_success(answer: Any) -> bool:
    kind = type(answer)
    return _SUCCESS_ONLY.get(kind.__module__) == kind.__name__


def _refused(
    plan: Plan | None, error: Exception
) -> tuple[tuple[Any, ...], dict[str, Any], Callable[[], None]] | None:
    """The caller's own arguments if ``error`` is the server refusing what we added, and what
    to tell once the server took them."""
    if plan is None:
        return None
    try:
        given = plan.as_given(error)
    except Exception:
        fault("reading a refused request")
        return None
    return None if given is None else (*given, plan.taken_as_given)


@dataclass(slots=True)
class Plan:
    """What an adapter decided about one call before it is sent: the call being metered and the
    arguments to send (an adapter may adjust them, e.g. to ask a stream for its usage)."""

    call: Call
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def as_given(self, error: Exception) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        """The arguments as the caller gave them, when ``error`` is the server refusing what the
        adapter added to them (sent instead, once); None otherwise."""
        return None

    def taken_as_given(self) -> None:
        """The server took the arguments ``as_given`` returned: it did refuse the addition."""


class Adapter(Protocol):
    """What every provider adapter tells the one interception loop (``intercept``).

    ``plan`` reads the intercepted method's arguments (None: not a billed call, pass it through);
    ``deliver`` reads what the SDK returned, or wraps it (a stream) so that it is read as it is
    consumed, and returns what the caller gets. Everything else (the nested-call guard, the send,
    error records, faults of ours kept out of the caller's way) is the loop's, the same for all.
    """

    #: Named in the log when a step of ours fails.
    name: str

    @property
    def active(self) -> bool:
        """False once ``uninstrument()`` could not remove a class patch: it passes through."""
        ...

    def plan(self, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Plan | None: ...

    def deliver(self, plan: Plan, result: Any, is_async: bool) -> Any: ...


def _planned(
    adapter: Adapter, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Plan | None:
    if _runtime._settings is None and _runtime.settings_at_a_call() is None:
        return None  # a bad setting: the call passes through, unmetered
    try:
        return adapter.plan(instance, args, kwargs)
    except Exception:
        fault(f"planning a {adapter.name} call")
        return None


def intercept(
    adapter: Adapter,
    gated: bool,
    wrapped: Callable[..., Any],
    instance: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """The one interception loop: guard -> plan -> send -> deliver. ``gated``: a class patch,
    inert once the adapter is switched off."""
    if (gated and not adapter.active) or guard.get() is instance:
        return wrapped(*args, **kwargs)
    plan = _planned(adapter, instance, args, kwargs)
    if plan is None:
        return wrapped(*args, **kwargs)
    result = send(plan.call, instance, wrapped, plan.args, plan.kwargs, plan)
    try:
        return adapter.deliver(plan, result, False)
    except Exception:
        fault(f"reading a {adapter.name} response")
        return result


async def intercept_async(
    adapter: Adapter,
    gated: bool,
    wrapped: Callable[..., Awaitable[Any]],
    instance: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """The async twin of ``intercept``."""
    if (gated and not adapter.active) or guard.get() is instance:
        return await wrapped(*args, **kwargs)
    plan = _planned(adapter, instance, args, kwargs)
    if plan is None:
        return await wrapped(*args, **kwargs)
    result = await send_async(plan.call, instance, wrapped, plan.args, plan.kwargs, plan)
    try:
        return adapter.deliver(plan, result, True)
    except Exception:
        fault(f"reading a {adapter.name} response")
        return result


def _broken_off(error: BaseException | None) -> bool:
    """True for an exception that broke a stream off on the client's side (a dropped
    connection, a read timeout, a cancelled task), not one carrying the provider's own error
    report (an HTTP status, an error event's body or code: a failure it does not bill)."""
    return error is not None and all(
        getattr(error, name, None) is None for name in ("status_code", "body", "code")
    )


#: Transport errors (httpx, httpx2, requests: the same names) raised while a reply was read:
#: the request had reached the provider, which runs it, and bills it. ``DecodingError`` too:
#: raised only once an answer came, while its body is decompressed (a proxy that corrupts a
#: gzip body; the SDKs raise it as a connection error, whose cause it is).
_READING_FAILURES = frozenset({"ReadTimeout", "ReadError", "RemoteProtocolError", "DecodingError"})


#: A task cancelled (asyncio, trio): the application's own timeout (``asyncio.wait_for``,
#: ``asyncio.timeout``) of a call that is waiting for its reply, nearly always: the request was
#: sent, and the provider runs it and bills it. ``GeneratorExit``: the same call's coroutine
#: closed as it waited, its event loop closed with its task still pending (``asyncio.wait``
#: with a timeout cancels nothing; a thread's loop closed at shutdown).
_CANCELLED = frozenset({"CancelledError", "Cancelled", "GeneratorExit"})

#: The modules whose code sleeps between an SDK's attempts: the Stainless SDKs' retry loop
#: (openai, anthropic: ``_sleep_for_retry``), tenacity (google-genai's ``HttpRetryOptions``) and
#: ``google.api_core.retry`` (the legacy Gemini SDK's ``retry`` option).
_RETRY_LOOPS = (
    "openai._base_client",
    "anthropic._base_client",
    "tenacity",
    "google.api_core.retry",
)


def _cut_after_sending(error: BaseException | None) -> bool:
    """True for an error that came once the request was sent: its reply timed out, or the
    connection broke while it was read (the SDK's timeout or connection error has it as its
    cause), or the caller's task was cancelled while it waited. Not a connection never made
    (nothing was sent), nor an error the provider reported. A task cancelled while its SDK
    waited to retry was waiting for no reply: it was sent (and billed) only if the attempt
    before ended as a reply cut short, which the cancellation holds as its context."""
    if error is not None and type(error).__name__ in _CANCELLED and not _backing_off(error):
        return True
    for _ in range(8):  # along the causes, bounded
        if error is None:
            return False
        name = type(error).__name__
        if name in _READING_FAILURES and (name != "DecodingError" or _decoding_a_success(error)):
            return True
        error = error.__cause__ or error.__context__
    return False


def _backing_off(cancelled: BaseException) -> bool:
    """True for a cancellation raised while the SDK slept before its next attempt (a 429's
    ``retry-after``, an overloaded 529, a connection refused): a frame of its retry loop called
    the sleep it was cancelled in. A sleep anywhere else (an HTTP transport of the application's
    that waits for its reply) is not a back-off."""
    traceback = cancelled.__traceback__
    for _ in range(_FRAMES_LOOKED_AT):
        if traceback is None or traceback.tb_next is None:
            return False
        caller, callee = traceback.tb_frame, traceback.tb_next.tb_frame
        if callee.f_code.co_name == "sleep" and str(
            caller.f_globals.get("__name__", "")
        ).startswith(_RETRY_LOOPS):
            return True
        traceback = traceback.tb_next
    return False


def _decoding_a_success(error: BaseException) -> bool:
    """A ``DecodingError`` raised while a success answer's body was decompressed (billed), not
    an error status's (a proxy's error page labelled gzip and not: the SDK never saw its 429 or
    500, and the call cost nothing). httpx raises it inside the response's own reading, whose
    frames hold the response (``self``, or the client's ``response``)."""
    traceback = error.__traceback__
    for _ in range(_FRAMES_LOOKED_AT):
        if traceback is None:
            return False
        held = traceback.tb_frame.f_locals
        for name in ("response", "self"):
            status = getattr(held.get(name), "status_code", None)
            if type(status) is int:
                return 200 <= status < 300
        traceback = traceback.tb_next
    return False


class StreamReader(Protocol):
    """Per-stream O(1) state kept by an adapter.

    A reader may also have ``quiet`` and ``counted`` attributes (a chat stream's): while
    ``quiet`` is True, a chunk whose ``usage`` is None is not fed but counted (``counted += 1``)
    by the stream's proxy, as the reader's ``feed`` would: nearly every chunk of a long stream,
    so in as few steps as can be.
    """

    def feed(self, chunk: Any, call: Call) -> bool:
        """Read one chunk into ``call``; True to hide the chunk from the caller."""
        ...


#: The protocols a proxy of ours may implement (wrapt's proxy has the context managers, and
#: before wrapt 2 ``__iter__``, whatever it wraps).
_PROTOCOL = (
    "__enter__",
    "__exit__",
    "__aenter__",
    "__aexit__",
    "__iter__",
    "__next__",
    "__aiter__",
    "__anext__",
)
#: The methods whose ``None`` tells ``collections.abc`` and ``contextlib`` a class lacks their
#: protocol (``Iterable``, ``AsyncIterable``, ``AbstractContextManager``...): kept ``None``.
_READ_BY_ABCS = frozenset({"__iter__", "__aiter__", "__exit__", "__aexit__"})
_fitted: dict[tuple[type, frozenset[str]], type] = {}


class _Lacking(AttributeError, TypeError):
    """A protocol method the SDK's object lacks, asked for: an AttributeError to ``hasattr``
    and ``getattr``, the TypeError that ``with``, ``async with`` or ``next()`` raise on the
    SDK's object to them."""


class _Absent:
    """Stands for a protocol method the SDK's object lacks, where ``None`` would answer
    ``hasattr`` True (code choosing sync or async use by ``hasattr(x, "__enter__")``). Only
    looked up when asked for: an attribute read of ours costs what it did."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, proxy: Any, owner: Any = None) -> Any:
        kind = type(proxy.__wrapped__).__name__ if proxy is not None else owner.__name__
        raise _Lacking(f"{kind!r} object has no attribute {self.name!r}", name=self.name)


def _iterate_wrapped(proxy: Any) -> Any:
    return iter(proxy.__wrapped__)


def _fit(cls: type, has: frozenset[str]) -> type:
    """``cls`` with only the protocols an SDK object that ``has`` them has: those it lacks
    set to ``None`` (read by ``collections.abc``, as for ``__hash__ = None``) or ``_Absent``;
    an ``__iter__`` that wrapt 2's base proxy lacks given when it has one."""
    namespace: dict[str, Any] = {}
    for name in _PROTOCOL:
        ours = getattr(cls, name, None) is not None
        if name in has and name == "__iter__" and not ours:
            namespace[name] = _iterate_wrapped
        elif name not in has and ours:
            namespace[name] = None if name in _READ_BY_ABCS else _Absent(name)
    return type(cls.__name__, (cls,), namespace) if namespace else cls


class SDKObjectProxy(ObjectProxy):
    """A proxy of ours over an object the SDK returned: ``copy.copy``, ``copy.deepcopy`` and
    ``pickle`` do what they do to the SDK's object (wrapt's proxies refuse all three with
    NotImplementedError). A deep copy or an unpickled copy is the SDK's own object: a snapshot,
    not a call in flight.

    It has only the protocols of the SDK's object: ``with``, ``async with`` or ``iter()`` on one
    that the SDK's object does not support raise the TypeError they raise there, and
    ``isinstance(proxy, collections.abc.Iterable)`` (or ``AbstractContextManager``) answers as
    for it (an async stream claimed to be sync-iterable, a google-genai async stream to be an
    async context manager, whose ``async with`` then raised AttributeError), as do
    ``hasattr(proxy, "__iter__")``, ``"__enter__"``, ``"__aenter__"`` (``__exit__`` and
    ``__aexit__`` answer True where the SDK's object lacks them, as ``__iter__`` does with wrapt
    before 2: their ``None`` is what ``collections.abc`` reads)."""

    def __new__(cls, wrapped: Any, *args: Any, **kwargs: Any) -> Any:
        kind = type(wrapped)
        has = frozenset(name for name in _PROTOCOL if hasattr(kind, name))
        fitted = _fitted.get((cls, has))
        if fitted is None:
            fitted = _fitted.setdefault((cls, has), _fit(cls, has))
        return super().__new__(fitted)

    def __copy__(self) -> Any:
        return copy.copy(self.__wrapped__)

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        return copy.deepcopy(self.__wrapped__, memo)

    def __reduce_ex__(self, protocol: SupportsIndex) -> Any:
        return self.__wrapped__.__reduce_ex__(protocol)


class _StreamProxyBase(SDKObjectProxy):
    """State lives in ``_self_*`` attributes so nothing is written onto the SDK object.

    Per chunk, the proxy does one reader call inside one ``try``: nothing is kept but the reader's
    O(1) state, so a stream of any length costs constant memory.
    """

    def __init__(self, wrapped: Any, call: Call, reader: StreamReader) -> None:
        super().__init__(wrapped)
        self._self_call = call
        self._self_reader = reader
        self._self_feed = reader.feed
        #: The reader may go ``quiet`` (see ``StreamReader``): its chunks without usage are then
        #: counted here, without a call per chunk.
        self._self_quietly = hasattr(reader, "quiet")
        self._self_response: Any = None
        #: The proxy this one is a ``copy.copy()`` of (kept alive by it; see ``__copy__``).
        self._self_origin: Any = None

    def __copy__(self) -> Any:
        """The SDK's shallow copy of a stream reads the same response: ours reads it into the same
        call. It keeps this proxy alive and records nothing when collected, so the call is
        recorded once, at the end of whichever is read to the end, closed, or collected last."""
        twin = type(self)(copy.copy(self.__wrapped__), self._self_call, self._self_reader)
        twin._self_origin = self
        return twin

    def _self_fault(self) -> None:
        """Called inside ``except``: our reader failed on a chunk; the caller still gets it.
        Logged like a response that cannot be read: once per provider and kind of fault."""
        exc = sys.exc_info()[1]
        call = self._self_call
        call.cannot_read(f"a stream chunk could not be read ({type(exc).__name__})")
        if _RAISE_INTERNAL:
            raise
        assert isinstance(exc, Exception)
        _warn_unreadable(call.provider, "reading a stream chunk", exc)

    def _self_finish(self, error: BaseException | None = None) -> None:
        self._self_call.finish(error)

    @property
    def response(self) -> Any:
        """The HTTP response, whose ``close()`` also ends the stream's record.

        OpenAI's ``ChatCompletionStream``/``ResponseStream`` helpers close ``raw_stream.response``,
        not the raw stream, when their ``with`` block is left: this makes that close record at once.
        """
        if self._self_response is None:
            self._self_response = _ClosingResponse(self.__wrapped__.response, self._self_call)
        return self._self_response

    def __del__(self) -> None:  # abandoned without being drained or closed: record what it said
        call = getattr(self, "_self_call", None)
        if call is not None and not call.done and getattr(self, "_self_origin", None) is None:
            call.finish()


class _ClosingResponse(SDKObjectProxy):
    """An SDK stream's HTTP response; closing it finalises the stream's call."""

    def __init__(self, wrapped: Any, call: Call) -> None:
        super().__init__(wrapped)
        self._self_call = call

    def close(self) -> None:
        try:
            self.__wrapped__.close()
        finally:
            self._self_call.finish()

    async def aclose(self) -> None:
        try:
            await self.__wrapped__.aclose()
        finally:
            self._self_call.finish()


class SyncIterableProxy(_StreamProxyBase):
    """For a sync stream that is only iterable (the legacy google-generativeai response: no
    ``next()``, no ``close()``, no ``with``): only what it has, so that code asking for a method
    (``hasattr``, ``with``) finds what it finds without tokenmeter. Records when it ends."""

    def __iter__(self) -> Iterator[Any]:
        return self._self_iterate()

    def _self_iterate(self) -> Iterator[Any]:
        """What ``for chunk in stream`` runs: a generator over the SDK's own iterator, cheaper per
        chunk than ``__next__`` (no method calls of ours or the SDK's per chunk). Leaving the loop
        early closes this generator, not the stream: the record waits for the stream's end, close
        or collection, as with ``next()``, so a caller may peek and then iterate again.

        Only what the SDK's iteration raises fails the call. What arrives at the ``yield`` (the
        caller's ``close()`` or ``throw()``) is the caller's side ending this loop, like a
        ``break``: the call stays open for its end, close or collection."""
        call, feed = self._self_call, self._self_feed
        reader: Any = self._self_reader  # with ``quiet`` and ``counted`` when ``quietly``
        quietly = self._self_quietly
        handed = False  # True once the caller's side raised at the ``yield``
        try:
            for chunk in self.__wrapped__:
                try:
                    if quietly and reader.quiet and getattr(chunk, "usage", None) is None:
                        reader.counted += 1
                    elif feed(chunk, call):
                        continue  # hidden
                except Exception:
                    self._self_fault()
                try:
                    yield chunk
                except BaseException:
                    handed = True
                    raise
        except BaseException as exc:
            if not handed:
                call.finish(exc)
            raise
        call.ended()


class SyncStreamProxy(SyncIterableProxy):
    """Looks and behaves like the SDK stream (isinstance holds): an iterator, a context manager
    with ``close()``; records when it ends."""

    def __next__(self) -> Any:
        while True:
            try:
                chunk = next(self.__wrapped__)
            except StopIteration:
                self._self_call.ended()
                raise
            except BaseException as exc:
                self._self_call.finish(exc)
                raise
            try:
                reader: Any = self._self_reader
                if self._self_quietly and reader.quiet and getattr(chunk, "usage", None) is None:
                    reader.counted += 1
                    return chunk
                if not self._self_feed(chunk, self._self_call):
                    return chunk
            except Exception:
                self._self_fault()
                return chunk

    def __enter__(self) -> SyncStreamProxy:
        self.__wrapped__.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> Any:
        try:
            return self.__wrapped__.__exit__(*exc_info)
        finally:
            self._self_finish()

    def close(self) -> None:
        try:
            self.__wrapped__.close()
        finally:
            self._self_finish()


class AsyncStreamProxy(_StreamProxyBase):
    """The async twin: ``async for``, ``async with``, ``await close()``/``aclose()``."""

    def __aiter__(self) -> AsyncStreamProxy:
        return self

    async def __anext__(self) -> Any:
        while True:
            try:
                chunk = await self.__wrapped__.__anext__()
            except StopAsyncIteration:
                self._self_call.ended()
                raise
            except BaseException as exc:  # CancelledError included: recorded as an error
                self._self_call.finish(exc)
                raise
            try:
                reader: Any = self._self_reader
                if self._self_quietly and reader.quiet and getattr(chunk, "usage", None) is None:
                    reader.counted += 1
                    return chunk
                if not self._self_feed(chunk, self._self_call):
                    return chunk
            except Exception:
                self._self_fault()
                return chunk

    async def __aenter__(self) -> AsyncStreamProxy:
        await self.__wrapped__.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> Any:
        try:
            return await self.__wrapped__.__aexit__(*exc_info)
        finally:
            self._self_finish()

    # Properties, so that ``hasattr`` answers as for the SDK's stream: anthropic's has no
    # ``aclose()``, an async generator no ``close()`` (generic cleanup asks which there is).
    @property
    def close(self) -> Callable[[], Awaitable[None]]:
        return self._self_closing(self.__wrapped__.close)

    @property
    def aclose(self) -> Callable[[], Awaitable[None]]:
        return self._self_closing(self.__wrapped__.aclose)

    def _self_closing(self, closing: Callable[[], Awaitable[None]]) -> Callable[[], Any]:
        async def close() -> None:
            try:
                await closing()
            finally:
                self._self_finish()

        return close


class AsyncIterableProxy(_StreamProxyBase):
    """For an async stream that is iterable but not an iterator (the legacy google-generativeai
    response: its ``__aiter__`` is an async generator, and iterating it again once done replays
    its chunks; it has no ``__anext__``, ``close()`` or ``async with``, nor has this): each
    ``async for`` is a fresh pass over the SDK's own iteration, read as it goes.
    The async twin of ``SyncStreamProxy._self_iterate``; leaving the loop early records nothing
    until the stream ends, is closed or is collected, as there."""

    def __aiter__(self) -> Any:
        return self._self_aiterate()

    async def _self_aiterate(self) -> Any:
        """As ``SyncIterableProxy._self_iterate``: what arrives at the ``yield`` is the caller's
        side, not the call's. A loop broken out of as ``asyncio.run()`` ends has the closing of
        this generator cancelled at shutdown: that CancelledError, thrown in at the ``yield``,
        is no failure of the call (it was recorded as one)."""
        call, feed = self._self_call, self._self_feed
        handed = False  # True while the caller holds a chunk (suspended at the ``yield``)
        try:
            async for chunk in self.__wrapped__:
                try:
                    hide = feed(chunk, call)
                except Exception:
                    self._self_fault()
                    hide = False
                if not hide:
                    handed = True
                    yield chunk
                    handed = False
        except BaseException as exc:  # the SDK's CancelledError included: recorded as an error
            if not handed:
                call.finish(exc)
            raise
        call.ended()


class SyncGeneratorProxy(SyncStreamProxy):
    """For streams that are plain generators (google-genai): close() and send() too."""

    def send(self, value: Any) -> Any:
        return self.__wrapped__.send(value)


@dataclass
class Patch:
    """One method replaced on one class; reversible, and inert once disabled."""

    owner: type
    name: str
    wrapper: Wrapper
    original: Any = None
    installed: Any = None

    def apply(self) -> None:
        if self.installed is not None:
            return
        self.original = self.owner.__dict__[self.name]
        self.installed = wrapt.FunctionWrapper(self.original, self.wrapper)
        setattr(self.owner, self.name, self.installed)

    def restore(self) -> bool:
        """Put the original back; False if someone else has wrapped over ours since."""
        if self.installed is None:
            return True
        on_top = self.owner.__dict__.get(self.name) is self.installed
        if on_top:
            setattr(self.owner, self.name, self.original)
        self.installed = None
        return on_top
