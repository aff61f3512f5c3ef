"""What every Python process started under ``tokenmeter run`` does at start-up, and the sink that
tells the ``run`` command what the process spent.

``tokenmeter run`` (``cli/_run.py``) puts ``tokenmeter/_bootstrap`` first on ``PYTHONPATH``; its
``sitecustomize`` calls `start` before the program's first line. The settings arrive in the
environment, which every child process inherits, so the program's own subprocesses are metered
too. The variables below are private to ``run`` and its bootstrap; the sinks and their directory
travel in the ordinary ``TOKENMETER_SINKS`` / ``TOKENMETER_DIR``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sys
import time
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tokenmeter._models import UsageRecord

__all__ = [
    "ENV_ID",
    "ENV_SESSION",
    "ENV_TAGS",
    "ENV_TOTALS",
    "RunTotalsSink",
    "read_totals",
    "start",
    "start_or_say",
]

#: The run's id: the id of the session every process of the run records into.
ENV_ID = "TOKENMETER_RUN_ID"
#: The name of that session (``--session``).
ENV_SESSION = "TOKENMETER_RUN_SESSION"
#: Its tags (``--tag``, an outer run's, and `RUN_TAG`), a JSON object.
ENV_TAGS = "TOKENMETER_RUN_TAGS"
#: A directory where each process leaves its totals for the run's summary.
ENV_TOTALS = "TOKENMETER_RUN_TOTALS"
#: The pyproject.toml whose settings every process of the run reads ("" for none), wherever its
#: working directory is (``tokenmeter._config`` reads it).
ENV_PYPROJECT = "TOKENMETER_RUN_PYPROJECT"

#: The tag whose value is the run's id, on every session of every process of the run; a run
#: inside another carries its outer run's too, under ``tokenmeter_run.2`` (``.3``...) for its own.
RUN_TAG = "tokenmeter_run"


def run_tags(run_id: str, tags: dict[str, str]) -> dict[str, str]:
    """The tags of a new run: those of the run it is inside (its processes are that run's too:
    the outer ``--budget`` and ``--tag`` cover them), ``tags`` (``--tag``) and its own
    ``RUN_TAG``, under a key no outer run uses."""
    outer: Any = {}
    if os.environ.get(ENV_ID):
        try:
            outer = json.loads(os.environ.get(ENV_TAGS) or "{}")
        except ValueError:
            outer = {}
    if not isinstance(outer, dict):
        outer = {}
    key, depth = RUN_TAG, 1
    while key in outer or key in tags:  # a --tag of that name is the user's: kept
        depth += 1
        key = f"{RUN_TAG}.{depth}"
    return {**outer, **tags, key: run_id}


def run_tag_of(tags: dict[str, str], run_id: str) -> str:
    """``KEY=VALUE``: the tag that `run_tags` gave the run ``run_id``."""
    key = next(key for key, value in tags.items() if key.startswith(RUN_TAG) and value == run_id)
    return f"{key}={run_id}"


_started = False


def start() -> None:
    """Meter this process as part of the run the environment describes (no-op outside one, and
    once: the first provider SDK import and the program's own ``import tokenmeter`` both start
    it, whichever comes first)."""
    global _started
    run_id = os.environ.get(ENV_ID)
    if not run_id or _started:
        return
    _started = True
    import tokenmeter
    from tokenmeter import _runtime, _sessions

    tags = json.loads(os.environ.get(ENV_TAGS) or "{}")
    # The run's own tags (its id; an outer run's) win over any the program gives its sessions
    # or records: they scope the run's ``--budget``.
    own = [key for key in tags if key == RUN_TAG or key.startswith(f"{RUN_TAG}.")]
    _sessions.name_implicit_session(
        os.environ.get(ENV_SESSION) or None, id=run_id, tags=tags, imposed=own
    )
    totals = os.environ.get(ENV_TOTALS)
    if totals:
        _runtime.attach_sink(RunTotalsSink(Path(totals)))
    tokenmeter.instrument()


def start_or_say() -> bool:
    """``start()``; a failure is one line on stderr, never the program's exception."""
    try:
        start()
    except Exception as exc:
        sys.stderr.write(f"tokenmeter run: not metering this process: {exc}\n")
        return False
    return True


def _zero() -> dict[str, Any]:
    return {
        "calls": 0,
        "input_tokens": 0,
        "output_tokens": 0,
        "cost_usd": Decimal(0),
        "unpriced_calls": 0,
        "errors": 0,
    }


#: Models up to which a run's totals file is rewritten after every batch; past them, at most
#: every ``_LEAVE_EVERY`` seconds (flush and close: always).
_ALWAYS_LEFT = 256
_LEAVE_EVERY = 1.0


class RunTotalsSink:
    """Adds up this process's records per model and leaves them in ``directory`` as one small
    JSON file for the ``run`` command to add up, rewritten after every batch its writer thread
    takes (never on the caller's thread), and on flush and at close: a program killed after its
    calls were stored (SIGKILL by the OOM killer, ``os._exit``) never flushes, and its run said
    "no LLM calls were recorded" and "within the budget". Past ``_ALWAYS_LEFT`` models, at most
    every ``_LEAVE_EVERY`` seconds: the file holds every model's totals, and a program naming
    thousands rewrote megabytes a second (23-51 ms a one-record batch at 10,000)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._reset()
        os.register_at_fork(after_in_child=self._reset)  # a forked child counts its own calls

    def _reset(self) -> None:
        self.models: dict[str, dict[str, Any]] = {}
        self.path = self.directory / f"{os.getpid()}-{secrets.token_hex(4)}.json"
        self._dirty = False
        self._left_at = 0.0  # when the file was last written (time.monotonic())

    def write(self, records: Sequence[UsageRecord]) -> None:
        for record in records:
            totals = self.models.get(record.model_name)
            if totals is None:
                totals = self.models[record.model_name] = _zero()
            totals["calls"] += 1
            totals["input_tokens"] += record.input_tokens
            totals["output_tokens"] += record.output_tokens
            if record.estimated_cost_usd is None:
                # a call a budget refused cost nothing: it is no call of unknown price
                totals["unpriced_calls"] += record.status != "blocked"
            else:
                totals["cost_usd"] += record.estimated_cost_usd
            if record.status != "ok":
                totals["errors"] += 1
        self._dirty = self._dirty or bool(records)
        if len(self.models) <= _ALWAYS_LEFT or time.monotonic() - self._left_at >= _LEAVE_EVERY:
            with contextlib.suppress(OSError):  # kept dirty: a later batch, flush or close
                self.flush()

    def flush(self) -> None:
        if not self._dirty or not self.directory.is_dir():  # the run has ended: nobody reads it
            return
        document = {
            "models": {
                model: {**totals, "cost_usd": str(totals["cost_usd"])}
                for model, totals in self.models.items()
            },
            "store": store_of_this_process(),
            "settings": settings_of_this_process(),
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(document), encoding="utf-8")
        os.replace(tmp, self.path)  # the run never reads a half-written file
        self._dirty = False
        self._left_at = time.monotonic()

    def close(self) -> None:
        self.flush()


def store_of_this_process() -> str | None:
    """Where this process's records go, as the run's summary says it: ``DIRECTORY (SINKS)``. A
    program that configures its own store (``configure(directory=..., sinks=...)``) writes
    there, not into the run's. None before the settings are loaded."""
    from tokenmeter import _runtime
    from tokenmeter.sinks._files import absolute

    settings = _runtime.loaded_settings()
    if settings is None:
        return None
    own = ["the program's own sinks"] if _runtime.own_sinks() else []
    return describe_store(absolute(settings.directory), [*settings.sinks, *own])


def settings_of_this_process() -> dict[str, Any] | None:
    """The directory (absolute) and sink names this process records with, for the run to name
    the file a report of its records reads (``--source``): a program that configured its own
    directory was sent to a report of the run's, which lacked its session. None before the
    settings are loaded."""
    from tokenmeter import _runtime
    from tokenmeter.sinks._files import absolute

    settings = _runtime.loaded_settings()
    if settings is None:
        return None
    return {"directory": str(absolute(settings.directory)), "sinks": list(settings.sinks)}


def describe_store(directory: Path, sinks: Sequence[str]) -> str:
    """``DIRECTORY (SINKS)`` for the sinks that write files there, then the others by name: a
    run that wrote to PostgreSQL alone was said to be in a directory that held nothing."""
    from tokenmeter._config import FILE_SINK_NAMES

    files = [name for name in sinks if name in FILE_SINK_NAMES]
    where = [f"{directory} ({', '.join(files)})"] if files else []
    where += [name for name in sinks if name not in FILE_SINK_NAMES]
    return ", ".join(where) or f"{directory} (no sinks)"


def read_totals(
    directory: Path,
) -> tuple[dict[str, dict[str, Any]], int, set[str], set[tuple[Path, tuple[str, ...]]]]:
    """Totals per model over every process that left a file, how many did, where they
    recorded (`store_of_this_process`), and with which directory and sinks
    (`settings_of_this_process`). A file of another shape (another tokenmeter's, in another
    virtualenv; anything a program wrote there) is left out whole: it ended the run's summary
    in a traceback, the program's exit status lost."""
    models: dict[str, dict[str, Any]] = {}
    processes = 0
    stores: set[str] = set()
    settings: set[tuple[Path, tuple[str, ...]]] = set()
    for path in sorted(directory.glob("*.json")):
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            found = _file_totals(document)
        except (OSError, ValueError, ArithmeticError):
            continue
        processes += 1
        if document["store"] is not None:
            stores.add(document["store"])
        if document.get("settings") is not None:
            settings.add(_settings_recorded(document["settings"]))
        for model, counts in found.items():
            totals = models.setdefault(model, _zero())
            for key, value in counts.items():
                totals[key] += value
    return models, processes, stores, settings


def _settings_recorded(settings: Any) -> tuple[Path, tuple[str, ...]]:
    """A process's directory and sinks (``settings_of_this_process``), checked: ValueError if
    not that shape."""
    if not isinstance(settings, dict) or set(settings) != {"directory", "sinks"}:
        raise ValueError("not the settings of a process")
    directory, sinks = settings["directory"], settings["sinks"]
    if not isinstance(directory, str) or not isinstance(sinks, list):
        raise ValueError("not the settings of a process")
    if not all(isinstance(sink, str) for sink in sinks):
        raise ValueError("not the sinks of a process")
    return Path(directory), tuple(sinks)


def _file_totals(document: Any) -> dict[str, dict[str, Any]]:
    """One process's totals (``RunTotalsSink.flush``), checked: ValueError if not that shape."""
    if not isinstance(document, dict) or set(document) - {"settings"} != {"models", "store"}:
        # "settings" may be missing: a process of an earlier tokenmeter leaves none.
        raise ValueError("not a JSON object of models and store")
    if not isinstance(document["models"], dict) or not isinstance(document["store"], str | None):
        raise ValueError("not the totals of a process")
    if document.get("settings") is not None:
        _settings_recorded(document["settings"])
    found: dict[str, dict[str, Any]] = {}
    for model, counts in document["models"].items():
        if not isinstance(counts, dict) or set(counts) != set(_zero()):
            raise ValueError(f"not the totals of a model: {model!r}")
        cost = Decimal(counts["cost_usd"]) if type(counts["cost_usd"]) is str else None
        if cost is None or not cost.is_finite() or cost < 0:
            raise ValueError("not a cost")
        checked: dict[str, Any] = {"cost_usd": cost}
        for key, value in counts.items():
            if key != "cost_usd":
                if type(value) is not int or value < 0:
                    raise ValueError(f"not a count: {key}")
                checked[key] = value
        found[model] = checked
    return found
