"""The generic interception core shared by every provider adapter.

An adapter decides *what* to patch and *how to read* a response or a stream chunk; this module
does the rest the same way for everyone: the exactly-once guard, timing, error records, stream
proxies that finalise exactly once on every exit path, and reversible patching.

Nothing here may raise into the caller: every step of ours is wrapped by ``_safely``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

import wrapt

from tokenmeter._models import Usage
from tokenmeter._record import emit
from tokenmeter.usage import Extracted

__all__ = [
    "AsyncStreamProxy",
    "Call",
    "Patch",
    "StreamReader",
    "SyncStreamProxy",
    "guard",
    "safely",
]

logger = logging.getLogger("tokenmeter")

#: Set while an instrumented call is running: nested instrumented calls (a wrapped client under
#: instrument(), a helper calling create, an SDK retry) pass straight through. One call, one record.
guard: ContextVar[bool] = ContextVar("tokenmeter_in_call", default=False)

_RAISE_INTERNAL = bool(os.environ.get("TOKENMETER_STRICT"))


def safely(what: str, func: Callable[..., Any], *args: Any) -> Any:
    """Run one of our own steps; a fault is logged (never raised) unless TOKENMETER_STRICT=1."""
    try:
        return func(*args)
    except Exception:
        if _RAISE_INTERNAL:
            raise
        logger.warning("tokenmeter: %s failed; the call itself is unaffected", what, exc_info=True)
        return None


@dataclass(slots=True)
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
    #: Record a given response id only once (the Responses API repeats usage on every retrieve).
    dedupe: bool = False
    done: bool = False

    def take(self, found: Extracted | None) -> None:
        """Keep the latest reading (stream usage is cumulative: overwrite, never add)."""
        if found is None:
            return
        self.usage = found.usage
        self.model = found.model or self.model
        self.tier = found.tier or self.tier
        self.request_id = found.request_id or self.request_id
        self.operation = self.operation or found.operation

    def finish(self, error: BaseException | None = None) -> None:
        if self.done:
            return
        self.done = True
        safely("recording a call", self._emit, error)

    def _emit(self, error: BaseException | None) -> None:
        if error is None and self.usage is None:
            logger.debug("tokenmeter: %s call reported no usage; nothing recorded", self.provider)
            return
        if self.dedupe and self.request_id and _already_recorded(self.request_id):
            return
        model = self.model or self.request_model
        if not model:
            logger.debug("tokenmeter: %s call names no model; nothing recorded", self.provider)
            return
        emit(
            self.provider,
            model,
            self.usage or Usage(),
            request_model=self.request_model,
            operation=self.operation,
            tier=self.tier,
            request_id=self.request_id,
            latency_ms=round((time.perf_counter() - self.started) * 1000, 3),
            streamed=self.streamed,
            status="ok" if error is None else "error",
            error=None if error is None else type(error).__name__,
        )


_recorded_ids: OrderedDict[str, None] = OrderedDict()
_recorded_lock = threading.Lock()
_RECORDED_MAX = 10_000


def _already_recorded(response_id: str) -> bool:
    """True if this id was recorded before; remembers it otherwise (bounded: the newest 10,000)."""
    with _recorded_lock:
        if response_id in _recorded_ids:
            return True
        _recorded_ids[response_id] = None
        if len(_recorded_ids) > _RECORDED_MAX:
            _recorded_ids.popitem(last=False)
        return False


class StreamReader(Protocol):
    """Per-stream O(1) state kept by an adapter."""

    def feed(self, chunk: Any, call: Call) -> bool:
        """Read one chunk into ``call``; True to hide the chunk from the caller."""
        ...


class _StreamProxyBase(wrapt.ObjectProxy):  # type: ignore[misc]
    """State lives in ``_self_*`` attributes so nothing is written onto the SDK object."""

    def __init__(self, wrapped: Any, call: Call, reader: StreamReader) -> None:
        super().__init__(wrapped)
        self._self_call = call
        self._self_reader = reader

    def _self_feed(self, chunk: Any) -> bool:
        hide = safely("reading a stream chunk", self._self_reader.feed, chunk, self._self_call)
        return bool(hide)

    def _self_finish(self, error: BaseException | None = None) -> None:
        self._self_call.finish(error)

    def __del__(self) -> None:  # abandoned without being drained or closed: record what it said
        call = getattr(self, "_self_call", None)
        if call is not None and not call.done:
            call.finish()


class SyncStreamProxy(_StreamProxyBase):
    """Looks and behaves like the SDK stream (isinstance holds); records when it ends."""

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        while True:
            try:
                chunk = next(self.__wrapped__)
            except StopIteration:
                self._self_finish()
                raise
            except BaseException as exc:
                self._self_finish(None if isinstance(exc, GeneratorExit) else exc)
                raise
            if not self._self_feed(chunk):
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
                self._self_finish()
                raise
            except BaseException as exc:
                cancelled = isinstance(exc, GeneratorExit)
                self._self_finish(None if cancelled else exc)
                raise
            if not self._self_feed(chunk):
                return chunk

    async def __aenter__(self) -> AsyncStreamProxy:
        await self.__wrapped__.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> Any:
        try:
            return await self.__wrapped__.__aexit__(*exc_info)
        finally:
            self._self_finish()

    async def close(self) -> None:
        try:
            await self.__wrapped__.close()
        finally:
            self._self_finish()

    async def aclose(self) -> None:
        try:
            await self.__wrapped__.aclose()
        finally:
            self._self_finish()


class SyncGeneratorProxy(SyncStreamProxy):
    """For streams that are plain generators (google-genai): close() and send() too."""

    def close(self) -> None:
        try:
            self.__wrapped__.close()
        finally:
            self._self_finish()

    def send(self, value: Any) -> Any:
        return self.__wrapped__.send(value)


@dataclass
class Patch:
    """One method replaced on one class; reversible, and inert once disabled."""

    owner: type
    name: str
    wrapper: Callable[[Any, Any, tuple[Any, ...], dict[str, Any]], Any]
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
