"""instrument(), uninstrument() and wrap(): which SDKs get patched, and undoing it exactly.

Each provider module exposes ``patch_targets()`` (class-level patches, applied when the SDK is
imported: no SDK is imported by tokenmeter itself) and ``wrap_instance(obj)`` (one client only).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import sys
import threading
from types import ModuleType, TracebackType
from typing import Any, TypeVar

import wrapt

from tokenmeter import _pipeline, _registry, pricing
from tokenmeter._fork import renew_after_fork
from tokenmeter._models import short_repr
from tokenmeter.providers._core import Patch

__all__ = ["PROVIDERS", "Instrumentation", "instrument", "uninstrument", "wrap"]

logger = logging.getLogger("tokenmeter")
T = TypeVar("T")

#: Integration name -> (the SDK module whose import triggers patching, our adapter module); read
#: from the registry (``tokenmeter._registry``), the one place that knows each provider.
PROVIDERS: dict[str, tuple[str, str]] = {
    i.name: (i.sdk_module, i.adapter_module) for i in _registry.INTEGRATIONS
}

_lock = threading.RLock()
renew_after_fork(globals(), "_lock")
_wanted: set[str] = set()  # providers instrument() asked for (hooks check it when they fire)
_patches: dict[str, list[Patch]] = {}  # providers actually patched
_hooked: set[str] = set()  # post-import hooks registered (they cannot be unregistered)
#: Provider -> how many times instrument() has switched it on: a handle undoes a provider only
#: while the instrumentation it made is still the current one.
_generations: dict[str, int] = {}


def _names(providers: str | list[str] | tuple[str, ...] | None) -> list[str]:
    if providers is None:
        return list(PROVIDERS)
    if isinstance(providers, str):
        items = [providers]
    elif isinstance(providers, list | tuple | set | frozenset):
        items = list(providers)
    else:
        raise ValueError(
            f"providers must be a provider name or a list of them, got {type(providers).__name__}"
        )
    names: list[str] = []
    for item in items:
        found = _registry.integrations_named(item) if isinstance(item, str) else []
        if not found:
            raise ValueError(_unknown(item))
        names += [i.name for i in found if i.name not in names]
    return names


def _unknown(item: Any) -> str:
    """Why ``item`` names no SDK: every name that does, and for a provider called through
    another's SDK (Azure, Groq, ...: the openai SDK), which one to name. Shown cut short: a
    caller may pass a megabyte, or an object without a repr."""
    shown = short_repr(item)
    message = f"unknown provider {shown}; expected some of {_registry.instrument_names()}"
    sdk = _registry.sdk_reaching(item) if isinstance(item, str) else None
    if sdk is not None:
        message += f" ({shown} is called through the {sdk} SDK: name {sdk!r})"
    return message


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _adapter(name: str) -> ModuleType:
    return importlib.import_module(PROVIDERS[name][1])


def _patch(name: str) -> None:
    """Called by the post-import hook once the SDK is imported (or at once if it already was).

    The targets are found outside ``_lock``: finding them imports the SDK's modules, and a thread
    importing the SDK holds its import lock while its post-import hook waits for ``_lock``."""
    with _lock:
        if name not in _wanted or name in _patches:
            return
    try:
        adapter = _adapter(name)
        targets = adapter.patch_targets()
    except Exception:
        logger.warning("tokenmeter could not instrument %s", name, exc_info=True)
        return
    with _lock:
        if name not in _wanted or name in _patches:
            return
        patches: list[Patch] = []
        try:
            adapter.ADAPTER.active = True
            for owner, method, wrapper in targets:
                patch = Patch(owner, method, wrapper)
                patch.apply()
                patches.append(patch)
        except Exception:
            for patch in patches:
                patch.restore()
            logger.warning("tokenmeter could not instrument %s", name, exc_info=True)
            return
        _patches[name] = patches


def _on_import(name: str, _module: ModuleType) -> None:
    _patch(name)


class Instrumentation:
    """What one ``instrument()`` call patched; ``with`` it, or ``.uninstrument()``, to undo.

    Undoing is one-shot and owner-aware: once a provider was uninstrumented (by this handle or by
    ``uninstrument()``) and another ``instrument()`` switched it on again, that patch is the
    other caller's, and this handle leaves it alone (a second cleanup of a used handle, a
    ``with`` block left after ``uninstrument()`` + ``instrument()`` inside it)."""

    def __init__(self, providers: list[str], generations: dict[str, int] | None = None) -> None:
        self.providers = providers
        self._made = dict(generations or {})  # provider -> the generation this handle made

    def uninstrument(self) -> None:
        with _lock:
            mine = [name for name, made in self._made.items() if _still_own(name, made)]
            self._made.clear()
            if mine:
                uninstrument(mine)

    def __enter__(self) -> Instrumentation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.uninstrument()

    def __repr__(self) -> str:
        return f"Instrumentation(providers={self.providers!r})"


def _still_own(name: str, generation: int) -> bool:
    """Whether ``name`` is still instrumented by the ``instrument()`` call that made
    ``generation`` (call with ``_lock`` held)."""
    return name in _wanted and _generations.get(name) == generation


def instrument(
    providers: str | list[str] | tuple[str, ...] | None = None, *, sinks: Any = None
) -> Instrumentation:
    """Patch the named provider SDKs (default: every installed one). Idempotent.

    SDKs are patched when the application imports them, so ``import tokenmeter`` and
    ``instrument()`` import none of them. ``TOKENMETER_DISABLED=1`` makes this a no-op.
    """
    from tokenmeter._runtime import configure, settings

    names = None if providers is None else _names(providers)  # a bad name: nothing configured
    if sinks is not None:
        # Before the settings are read: a bad TOKENMETER_SINKS that ``sinks`` overrides is no
        # error, as with configure(sinks=...) then instrument().
        configure(sinks=sinks)
    if names is None:  # the ``providers`` setting, else every installed one
        names = _names(settings().providers)
    if settings().disabled:
        return Instrumentation([])
    _pipeline.hook_termination_signals()
    pricing.warm()
    made: dict[str, int] = {}  # provider newly switched on -> its generation
    hook: list[str] = []
    with _lock:
        for name in names:
            module = PROVIDERS[name][0]
            if name in _wanted or not _installed(module):
                continue
            _wanted.add(name)
            made[name] = _generations[name] = _generations.get(name, 0) + 1
            if name not in _hooked:
                _hooked.add(name)
                hook.append(name)
    # Outside ``_lock`` (see ``_patch``): a hook runs at once for an SDK already imported.
    for name in made:
        module = PROVIDERS[name][0]
        if name in hook:
            wrapt.register_post_import_hook(functools.partial(_on_import, name), module)
        elif module in sys.modules:
            _patch(name)
    return Instrumentation(list(made), made)


def uninstrument(providers: str | list[str] | tuple[str, ...] | None = None) -> None:
    """Restore the original methods of the named providers (default: all)."""
    with _lock:
        for name in _names(providers):
            _wanted.discard(name)
            patches = _patches.pop(name, [])
            for patch in patches:
                patch.restore()
            if patches:
                # A wrapper of ours that another library wrapped over stays in its chain, inert:
                # one restored cleanly now may sit on top of one buried at an earlier
                # uninstrument(), which instrument() switched on again.
                _adapter(name).ADAPTER.active = False


def _integrations_of(kind: type) -> list[str]:
    """The integrations whose SDK defines ``kind`` or one of its bases, nearest first.

    Read from the whole MRO, not the class's own module: an application's subclass of an SDK
    client (``class CompanyLLM(openai.OpenAI)`` in its own module) is still that SDK's client."""
    names: list[str] = []
    for cls in kind.__mro__:
        module = str(cls.__module__).split(".")[0]  # a class may set it to anything
        names += [i.name for i in _registry.integrations_for_module(module) if i.name not in names]
    return names


def wrap(client: T) -> T:
    """Instrument this one client object only; returns the same object.

    Calls through it are recorded once even while ``instrument()`` is also active. The clients
    its ``with_options()`` / ``copy()`` make (OpenAI, Anthropic) are wrapped as they are made.
    With ``TOKENMETER_DISABLED=1`` its calls pass through, unmetered and under no budget.
    """
    candidates = _integrations_of(type(client))
    from tokenmeter._runtime import disabled

    if candidates and disabled():  # switched off: nothing metered, as instrument() patches none
        return client
    for name in candidates:
        adapter = _adapter(name)
        if adapter.wrap_instance(client):
            return client
    kind = type(client).__name__
    raise ValueError(
        "wrap() takes an OpenAI, Anthropic or Google GenAI client, got "
        + (kind if len(kind) <= 100 else f"{kind[:100]}...")
    )
