"""Start-up hook of ``tokenmeter run`` on tokenmeter's own Pythons (``sitecustomize`` beside it
imports it): meters this interpreter, then runs the sitecustomize it hides.

``tokenmeter run`` puts this directory first on ``PYTHONPATH``, so Python's ``site`` imports
``sitecustomize`` before the program's first line (``python -I``, ``-E`` and ``-S`` skip it). It
costs a process nothing until the process imports a provider SDK: only then is tokenmeter imported
and ``instrument()`` called, so the many Python processes of a build that never call an LLM start
as fast as before. A ``sitecustomize`` of the application or the system further down the path
still runs, right after this one, and is what ``import sitecustomize`` returns. Nothing here may
stop the program: a failure is one line on stderr.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

_HERE = os.path.dirname(os.path.abspath(__file__))
#: The modules whose import starts metering (tokenmeter.providers.PROVIDERS names the same SDKs).
_SDKS = frozenset({"openai", "anthropic", "google.genai", "google.generativeai"})


def _meter() -> bool:
    try:
        from tokenmeter import _autorun
    except ImportError:  # an interpreter without tokenmeter (another virtualenv)
        sys.stderr.write(f"tokenmeter run: {sys.executable} cannot import tokenmeter: unmetered\n")
        return False
    return _autorun.start_or_say()


class _MeterOnFirstSDKImport:
    """A meta path finder that finds nothing: it notices the first provider SDK import, starts
    metering (which installs the import hooks that patch the SDKs), then lets the import go on
    through those hooks."""

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name not in _SDKS:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)  # once, whatever happens next
        if not _meter():
            return None
        return importlib.util.find_spec(name)  # again, now past tokenmeter's post-import hook


def _elsewhere(entry: str) -> bool:
    return os.path.abspath(entry or os.curdir) != _HERE


def _chain() -> None:
    """Run the next ``sitecustomize`` on the path, as Python would have without us."""
    sys.path[:] = [entry for entry in sys.path if _elsewhere(entry)]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", sys.path)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)


if any(name in sys.modules for name in _SDKS):  # imported by a .pth file already
    _meter()
else:
    sys.meta_path.insert(0, _MeterOnFirstSDKImport())
_chain()
