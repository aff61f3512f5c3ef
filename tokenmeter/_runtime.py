"""Process-wide settings and the sinks they imply; ``configure()`` lives here."""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenmeter import _pipeline, _sessions
from tokenmeter._config import (
    Settings,
    check_settings_prices_file,
    find_pyproject,
    load_settings,
    load_settings_with_sources,
    without_line_end,
)
from tokenmeter._fork import renew_after_fork
from tokenmeter.pricing._overrides import short_repr, use_prices
from tokenmeter.sinks._base import Sink
from tokenmeter.sinks._files import absolute, same_file

__all__ = ["configure", "settings"]

_settings: Settings | None = None
_sink_objects: list[Sink] = []  # sink objects given to configure(), beside the named ones
_attached: list[Sink] = []  # sinks kept whatever configure() sets (see attach_sink)
_explicit: dict[str, Any] = {}
_lock = threading.RLock()
_told_no_cwd = False
#: Why the settings could not be read at first use: raised again, not read again, at every
#: intercepted call (the pyproject.toml searched for and parsed each time) until configure().
_refused: str | None = None
#: The folder of the pyproject.toml the first load that found one read (a good one, even if
#: another layer refused that load): every later load reads that file, wherever the process
#: is. Looked for from where a later configure() was called, a process that had changed
#: directory since (a daemon going to its work dir, a job entering a checkout) lost its
#: project's settings at once, silently: budgets, prices, directory, the kill switch. None
#: until then: a load made outside any project (an import-time ``instrument()``) or refused
#: for its pyproject.toml pins nothing, and the next load looks from its own working directory.
_project_start: Path | None = None
#: The working directory of the first load made where its prices file is: a relative
#: ``TOKENMETER_PRICES`` (a container's ``WORKDIR`` and ``ENV``) names a file there. Looked for
#: from each load's working directory, the file read at start-up made a configure() after an
#: ``os.chdir()`` raise (and add nothing).
_prices_base: Path | None = None
renew_after_fork(globals(), "_lock")


def settings() -> Settings:
    """The settings in force, loaded on first use (never on the hot path)."""
    global _refused
    if _settings is None:
        with _lock:  # threads making their first records at once: one reads, the others wait
            if _settings is None:
                if _refused is not None:
                    raise ValueError(_refused)  # a new one: one object's traceback would grow
                try:
                    _apply()
                except ValueError as exc:
                    _refused = str(exc)
                    raise
    assert _settings is not None
    return _settings


def _load(explicit: Mapping[str, Any]) -> tuple[Settings, dict[str, str]]:
    """``load_settings_with_sources(explicit)``, reading the pyproject.toml the first load that
    could read one found, wherever the process is now (see ``_project_start``)."""
    global _project_start, _prices_base
    here = None
    with contextlib.suppress(OSError):  # a working directory removed: none to pin
        here = Path.cwd()
    prices_base = _prices_base or here
    if _prices_base is None and _holds_the_prices_file(prices_base):
        _prices_base = prices_base  # by a refused load too: the configure() mending it reads it
    start = _project_start or here
    pinned = _project_start is not None or start is None
    try:
        loaded = load_settings_with_sources(explicit, cwd=start, prices_base=prices_base)
    except ValueError:
        # Refused for TOKENMETER_MAX_QUEUE=10k, the project was not pinned: the configure()
        # fixing it after a chdir read no pyproject.toml, and dropped the project's prices.
        if not pinned:
            _project_start = _project_read(start, refused=True)
        raise
    if not pinned:
        _project_start = _project_read(start, refused=False)
    return loaded


def _holds_the_prices_file(folder: Path | None) -> bool:
    """Whether ``folder`` holds the file a relative ``TOKENMETER_PRICES`` names: only such a
    folder is pinned for it. A first read made elsewhere (an import-time instrument()) pinned
    a folder without it, and the configure() made where the file is, after a chdir, could never
    find it."""
    name = without_line_end(os.environ.get("TOKENMETER_PRICES", ""))
    if folder is None or not name.strip():
        return False
    try:
        return (folder / os.path.expanduser(name)).is_file()
    except (OSError, ValueError):  # a name too long, a NUL
        return False


def _project_read(start: Path | None, *, refused: bool) -> Path | None:
    """The folder of the pyproject.toml a load from ``start`` read, or None. After a ``refused``
    load, only if that file is good alone: the refusal came from the environment or an
    argument; a bad pyproject.toml pins nothing (the next load looks from where it is)."""
    found = find_pyproject(start)
    if found is None or not refused:
        return None if found is None else found.parent
    try:
        load_settings(env={}, cwd=found.parent)
    except ValueError:
        return None
    return found.parent


def settings_at_a_call() -> Settings | None:
    """The settings in force, or None while a bad one refuses them: an intercepted call then
    goes on unmetered, and the bad setting is the one-line warning (once), not a fault of the
    interception logged with a traceback of ours."""
    try:
        return settings()
    except ValueError as exc:
        _pipeline.warn_unrecorded(exc)
        return None


def disabled() -> bool:
    """The kill switch is on (``TOKENMETER_DISABLED=1``, ``disabled = true``): no call is metered
    or refused by a budget. A bad setting is no switch: it is reported where it is used."""
    resolved = _settings
    if resolved is None:
        try:
            resolved = settings()
        except ValueError:
            return False
    return resolved.disabled


def _absolute(path: str | Path) -> Path:
    """``path`` made absolute against the working directory (``sinks._files.absolute``); a
    working directory removed under the process (a deleted checkout) is logged once: the path
    stays relative, the sinks that open it fail and say so, calls and records go on."""
    global _told_no_cwd
    made = absolute(path)
    if not made.is_absolute() and not _told_no_cwd:
        _told_no_cwd = True
        logging.getLogger("tokenmeter").error(
            "tokenmeter: %s cannot be made absolute; the working directory was removed", path
        )
    return made


class _DefaultSinks:
    """The default sinks one configuration has made, by ``_sink_key``, and its alert sink, by
    ``_alerts_key``: the next configuration takes over those it makes the same
    (``_kept_defaults``), with their writers.

    A ``configure()`` that left the store alone (``exit_timeout``, budgets, hooks: a reload)
    made new sink objects for the same files, and the old writer and the new one both wrote a
    session open across it: the old one's opening row ('active', 0 calls) could land after the
    new one's closing row, and the finished session stayed 'active' for ever."""

    def __init__(self, made: dict[tuple[str, str], Sink]) -> None:
        self.made = made
        #: A child process (fork) makes sinks of its own: the parent's objects are the parent's.
        self.pid = os.getpid()

    def get(self, key: tuple[str, str] | None, make: Callable[[], Sink]) -> Sink:
        """The sink kept or made for ``key``, or one made now by ``make`` and kept for it."""
        if self.pid != os.getpid():
            self.made, self.pid = {}, os.getpid()
        if key is None:
            return make()
        sink = self.made.get(key)
        if sink is None:
            sink = self.made[key] = make()
        return sink


#: The default sinks of the configuration in force (see ``_DefaultSinks``).
_defaults = _DefaultSinks({})


def _sink_key(name: str, resolved: Settings, directory: Path) -> tuple[str, str] | None:
    """What makes the default sink ``name`` the same sink in another configuration: its name
    and the real path of its file or folder (a respelt ``directory`` is the same), or its DSN.
    None for one never kept: OTel's sink reads the ``OTEL_*`` environment when it is made."""
    places = {"sqlite": "usage.db", "jsonl": "usage.jsonl", "markdown": "journal"}
    if name == "postgres":
        return name, resolved.pg_dsn
    if name not in places:
        return None
    try:
        return name, os.path.realpath(directory / places[name])
    except (OSError, ValueError):  # no working directory to resolve it against: made anew
        return None


def _alerts_key(directory: Path) -> tuple[str, str] | None:
    """What makes the alert sink the same in another configuration: the real path of its
    alerts.jsonl. Its rules and callbacks are updated in place (``AlertSink.update``)."""
    try:
        return "alerts", os.path.realpath(directory / "alerts.jsonl")
    except (OSError, ValueError):  # no working directory to resolve it against: made anew
        return None


def _wants_alerts(resolved: Settings) -> bool:
    """Whether ``resolved`` has an alert sink: rules, callbacks, or budgets (their warnings)."""
    return not resolved.disabled and bool(resolved.alerts or resolved.on_alert or resolved.budgets)


def _kept_defaults(resolved: Settings, directory: Path) -> _DefaultSinks:
    """The default sinks made so far that ``resolved`` makes the same (same name, same file),
    and the alert sink of the same alerts.jsonl, for the new configuration to go on with; the
    others are closed by ``set_sinks``."""
    if resolved.disabled or _defaults.pid != os.getpid():
        return _DefaultSinks({})
    keys = [_sink_key(name, resolved, directory) for name in resolved.sinks]
    if _wants_alerts(resolved):
        keys.append(_alerts_key(directory))
    return _DefaultSinks(
        {key: _defaults.made[key] for key in keys if key is not None and key in _defaults.made}
    )


def _default_sinks(resolved: Settings, directory: Path, kept: _DefaultSinks) -> list[Sink]:
    """The sinks ``resolved`` names, those ``kept`` holds for the same files reused."""
    from tokenmeter.sinks import (
        JSONLSink,
        MarkdownJournalSink,
        OTelSink,
        PostgresSink,
        SQLiteSink,
    )

    makers: dict[str, Callable[[], Sink]] = {
        "sqlite": lambda: SQLiteSink(directory / "usage.db"),
        "jsonl": lambda: JSONLSink(directory / "usage.jsonl"),
        "markdown": lambda: MarkdownJournalSink(directory / "journal"),
        "postgres": lambda: PostgresSink(resolved.pg_dsn),
        "otel": OTelSink,
    }
    made: list[Sink] = []
    if resolved.disabled:  # TOKENMETER_DISABLED=1 writes nothing at all
        return made
    for name in resolved.sinks:
        try:
            made.append(kept.get(_sink_key(name, resolved, directory), makers[name]))
        except Exception as exc:
            # Its file is something else (a directory at usage.jsonl), its extra is missing, or
            # its SDK refuses the OTEL_* settings: the other sinks still work.
            logging.getLogger("tokenmeter").error("tokenmeter sink %r: %s", name, exc)
    if resolved.reports:
        from tokenmeter._reports import PeriodicReports

        made.append(PeriodicReports(directory, resolved.reports))
    return made


def _apply() -> None:
    global _settings, _defaults
    # The calls made so far are priced and written under the settings they were made under.
    _pipeline.catch_up()
    with _lock:
        resolved, sources = _load(_explicit)
        _use_prices(resolved, sources)
        objects = [] if resolved.disabled else [*_sink_objects, *_attached]
        # Where the process is now: the sinks are made at the first record, maybe after the
        # process changed directory (a daemon going to '/'), and must write beside the budgets.
        directory = _absolute(resolved.directory)
        state_file = None if resolved.state_file is None else _absolute(resolved.state_file)
        _apply_guardrails(resolved, objects, directory)
        kept = _defaults = _kept_defaults(resolved, directory)
        _update_kept_alerts(resolved, directory, kept)

        def make_sinks() -> list[Sink]:
            return [
                *objects,
                *_default_sinks(resolved, directory, kept),
                *_guardrail_sinks(resolved, directory, state_file, kept),
            ]

        _pipeline.set_sinks(
            make_sinks,
            max_queue=resolved.max_queue,
            exit_timeout=resolved.exit_timeout,
            quarantine=directory / "quarantine.jsonl",
            # The application's own sink objects, and the default sinks of the same files, go
            # on being used, each with its one writer.
            keep_open=[*objects, *kept.made.values()],
        )
        _settings = resolved
    _pipeline.hook_termination_signals()


def _use_prices(resolved: Settings, sources: Mapping[str, str]) -> None:
    """Install the price overrides of ``resolved``; a prices file that cannot be read is a
    ValueError naming the setting and its source (``sources``). With the kill switch on, it is
    left out (``price()`` uses the tables and the rest of the overrides):
    ``TOKENMETER_DISABLED=1`` holds whatever else is set, and instrument() must not raise."""
    try:
        check_settings_prices_file(resolved, sources)  # read once: use_prices takes it as read
        use_prices(resolved.prices_file, resolved.prices, resolved.aliases)
    except ValueError:
        if not resolved.disabled:
            raise
        use_prices(None, resolved.prices, resolved.aliases)


def _apply_guardrails(resolved: Settings, objects: Sequence[Sink], directory: Path) -> None:
    from tokenmeter.guardrails import _budgets, _hooks

    enabled = not resolved.disabled
    _budgets.configure_budgets(
        resolved.budgets if enabled else (),
        timezone=resolved.budget_timezone,
        warn_at=resolved.budget_warn_at,
        directory=directory,
        ledger=resolved.budget_ledger,
        sinks=[*objects, *_ledger_sinks(resolved)],
    )
    if enabled and resolved.budgets:
        # A budget's reservation is counted by the tokenizer (never a guess): it loads now, in
        # the background, rather than on the first budgeted call.
        from tokenmeter._estimate import load_tokenizers_in_background

        load_tokenizers_in_background()
    _hooks.global_hooks = resolved.on_session_end if enabled else ()
    _sessions.warn_fractions = resolved.budget_warn_at
    _sessions.set_thread_propagation(resolved.thread_propagation)


def _ledger_sinks(resolved: Settings) -> list[Sink]:
    """A sink named in ``sinks`` that keeps budgets too: a PostgreSQL ledger makes budgets hold
    across machines. (The sinks that write are made at first use; this one only points the
    budgets at the same database.)"""
    if resolved.disabled or not resolved.budgets or "postgres" not in resolved.sinks:
        return []  # switched off, no budget is kept
    from tokenmeter.sinks import PostgresSink

    try:
        return [PostgresSink(resolved.pg_dsn)]
    except ImportError:  # the extra is missing: the sink itself reports it
        return []


def _update_kept_alerts(resolved: Settings, directory: Path, kept: _DefaultSinks) -> None:
    """Give the alert sink ``kept`` goes on with the rules and callbacks of ``resolved``: a new
    one at every configure() (a reload of budgets or hooks) forgot the learned baselines, the
    trailing hour of spend and the alerts alerts.jsonl had refused, and configure() waited for
    a running ``on_alert`` callback of the old one."""
    from tokenmeter.guardrails._alerts import AlertSink

    key = _alerts_key(directory)
    alerts = kept.made.get(key) if key is not None else None
    if isinstance(alerts, AlertSink):
        alerts.update(resolved.alerts, resolved.on_alert)


def _guardrail_sinks(
    resolved: Settings, directory: Path, state_file: Path | None, kept: _DefaultSinks
) -> list[Sink]:
    """The alert judge and the state-file writer run as sinks: on writer threads, off the
    caller's, and ``flush()`` waits for them like for any sink. The alert sink of the same
    alerts.jsonl is ``kept`` (see ``_update_kept_alerts``)."""
    from tokenmeter.guardrails._alerts import AlertSink
    from tokenmeter.guardrails._hooks import StateFileSink

    made: list[Sink] = []
    if resolved.disabled:
        return made
    if _wants_alerts(resolved):

        def make() -> Sink:
            return AlertSink(resolved.alerts, directory / "alerts.jsonl", resolved.on_alert)

        alerts = kept.get(_alerts_key(directory), make)
        assert isinstance(alerts, AlertSink)
        alerts.activate()
        made.append(alerts)
    if state_file is not None:
        made.append(StateFileSink(state_file))
    return made


def configure(
    *,
    sinks: Iterable[Sink | str] | Sink | str | None = None,
    prices: Mapping[str, Any] | None = None,
    directory: str | Path | None = None,
    aliases: Mapping[str, str] | None = None,
    stream_usage: bool | None = None,
    max_queue: int | None = None,
    exit_timeout: float | None = None,
    reports: str | Iterable[str] | None = None,
    budgets: Sequence[Mapping[str, Any]] | None = None,
    budget_timezone: str | None = None,
    budget_warn_at: Sequence[float] | None = None,
    budget_ledger: str | None = None,
    alerts: Sequence[Mapping[str, Any] | str] | None = None,
    on_alert: Callable[[Any], object] | Sequence[Callable[[Any], object]] | None = None,
    on_session_end: Callable[[Any], object] | Sequence[Callable[[Any], object]] | None = None,
    state_file: str | Path | None = None,
    thread_propagation: bool | None = None,
    providers: Sequence[str] | str | None = None,
    pg_dsn: str | None = None,
) -> None:
    """Set sinks, price overrides, budgets, alerts, hooks and other settings for this process.

    Budgets, alert rules and the rest are described in docs/configuration.md and
    docs/budgets-and-alerts.md.

    ``sinks`` takes sink objects (anything implementing the Sink protocol) and/or default sink
    names ("sqlite", "jsonl", "markdown", "postgres", "otel"), one of them alone, or names as a
    comma-separated string like ``TOKENMETER_SINKS``. Arguments win over ``TOKENMETER_*``
    variables, which win over ``[tool.tokenmeter]`` in pyproject.toml. Records made before the
    call go to the old sinks. Each call keeps what earlier calls set: an argument left out or
    ``None`` keeps it, an empty list removes hooks, callbacks, budgets or alert rules.

    Everything is checked before anything changes: a bad argument (or a bad prices file) raises
    a one-line ValueError naming it and leaves the previous settings in force.
    """
    global _sink_objects, _refused
    with _lock:
        explicit = dict(_explicit)
        objects = _sink_objects
        if sinks is not None:
            names, objects = _split_sinks(sinks)
            explicit["sinks"] = names
        for key, value in (
            ("prices", prices),
            ("directory", directory),
            ("aliases", aliases),
            ("stream_usage", stream_usage),
            ("max_queue", max_queue),
            ("exit_timeout", exit_timeout),
            ("reports", _listed(reports)),
            ("budgets", budgets),
            ("budget_timezone", budget_timezone),
            ("budget_warn_at", budget_warn_at),
            ("budget_ledger", budget_ledger),
            ("alerts", alerts),
            ("on_alert", on_alert),
            ("on_session_end", on_session_end),
            ("state_file", state_file),
            ("thread_propagation", thread_propagation),
            ("providers", providers),
            ("pg_dsn", pg_dsn),
        ):
            if value is None:
                continue
            try:
                explicit[key] = _copied(value)
            except RecursionError:  # too deep to be valid: Settings refuses it, naming the field
                explicit[key] = value
        resolved, sources = _load(explicit)  # validate before changing anything
        check_settings_prices_file(resolved, sources)  # a bad file must not half-apply
        _check_state_file_apart(resolved.state_file, objects)
        _check_sinks_apart(resolved, objects)
        previous = dict(_explicit), _sink_objects
        _explicit.clear()
        _explicit.update(explicit)
        _sink_objects = objects
        try:
            _apply()
            _refused = None
        except Exception:  # the prices file was broken since its check: keep no rejected argument
            _explicit.clear()
            _explicit.update(previous[0])
            _sink_objects = previous[1]
            raise


def _copied(value: Any, done: dict[int, tuple[Any, Any]] | None = None) -> Any:
    """``value`` with its mappings and lists copied at every depth (anything else as given, for
    Settings to take or reject naming the setting). ``configure()`` keeps its arguments and
    validates them again at every later call: the caller's own dicts kept there (a price entry,
    a budget's table, a list of hooks) put the application's later changes to them in force at
    the next unrelated ``configure()``, a $5 budget becoming $500.

    ``done``: the copies made so far, by the original's id: a list or mapping met again (shared
    by several parents) is copied once, not once per path to it (a hostile value sharing its
    sub-lists 40 levels deep took 2**40 copies). Each original is kept there beside its copy
    while copying: a mapping that makes its values as they are read would free one, and
    another made later could take its id (and its copy)."""
    if not isinstance(value, Mapping | list | tuple):
        return value
    if done is None:
        done = {}
    seen = done.get(id(value))
    if seen is not None:
        return seen[1]
    if isinstance(value, Mapping):
        copy: Any = {key: _copied(item, done) for key, item in value.items()}
    else:
        copy = [_copied(item, done) for item in value]
    done[id(value)] = (value, copy)
    return copy


def _check_state_file_apart(state_file: Path | None, objects: Sequence[Sink]) -> None:
    """Refuse a state file that is a file of a sink passed as an object
    (``JSONLSink("ledger.jsonl")`` beside ``state_file="ledger.jsonl"``): two writers on one
    file, the state lines among the records. tokenmeter's own files are refused by Settings."""
    if state_file is None:
        return
    for sink in objects:
        place = _place_of_sink(state_file, sink)
        if place is not None:
            raise ValueError(
                f"tokenmeter setting 'state_file': must not be {place} of the sink "
                f"{type(sink).__name__}, got {str(state_file)!r}"
            )


def _check_sinks_apart(resolved: Settings, objects: Sequence[Sink]) -> None:
    """Refuse two sinks that write one file (``sinks=["jsonl", JSONLSink(".tokenmeter/
    usage.jsonl")]``, two ``JSONLSink`` objects of one path: every record written twice), and a
    sink object on a file tokenmeter keeps itself in ``directory`` (``alerts.jsonl``: the records
    among the alerts; ``budgets.db``: every record refused and set aside). The names collapse
    the same sink named twice; this is the same hazard through files."""
    if resolved.disabled or not objects:  # nothing is written; a name alone cannot collide
        return
    directory = _absolute(resolved.directory)
    taken: list[tuple[str, Path, bool]] = []  # (who writes it, the file or folder, a folder)
    for name in ("alerts.jsonl", "quarantine.jsonl", "budgets.db"):
        taken += _files_written(f"tokenmeter's own {name}", directory / name, None)
    reports = Path(os.path.realpath(directory / "reports"))  # its files' names are its own
    taken.append(("tokenmeter's own reports/ folder", reports, True))
    for name in resolved.sinks:
        if name in ("sqlite", "jsonl"):
            file = directory / ("usage.db" if name == "sqlite" else "usage.jsonl")
            taken += _files_written(f"the {name!r} sink", file, None)
        elif name == "markdown":
            taken += _files_written("the 'markdown' sink", None, directory / "journal")
    seen: list[Sink] = []
    for sink in objects:
        if any(sink is other for other in seen):  # one object named twice: written once
            continue
        seen.append(sink)
        path, folder = getattr(sink, "path", None), getattr(sink, "directory", None)
        mine = _files_written(
            type(sink).__name__[:100],
            path if isinstance(path, Path) else None,
            folder if isinstance(folder, Path) else None,
        )
        for who, place, is_folder in mine:
            for other, held, held_folder in taken:
                if (
                    place == held
                    or (is_folder and held.is_relative_to(place))
                    or (held_folder and place.is_relative_to(held))
                    or (not is_folder and not held_folder and same_file(place, held))
                ):
                    raise ValueError(
                        f"tokenmeter setting 'sinks' from configure(): {who} writes "
                        f"{str(place)!r}, as {other} does; two writers on one file would "
                        "repeat or mix each other's lines"
                    )
        taken += mine


def _files_written(
    who: str, path: Path | None, folder: Path | None
) -> list[tuple[str, Path, bool]]:
    """What a sink writing ``path`` (with SQLite's companions) or a journal in ``folder`` (its
    ``token_usage.md``, its lock, its ``sessions/`` pages) writes, as resolved absolute paths
    (through symbolic links; a hard link is told by ``same_file``) tagged with ``who``."""
    written: list[tuple[str, Path, bool]] = []
    try:
        if path is not None:
            own = os.path.realpath(absolute(path))
            written += [(who, Path(own + end), False) for end in ("", *_SQLITE_COMPANIONS)]
        if folder is not None:
            journal = Path(os.path.realpath(absolute(folder)))
            written += [(who, journal / name, False) for name in _JOURNAL_FILES]
            written.append((who, journal / _JOURNAL_SESSIONS, True))
    except (ValueError, OSError):  # no name of a file, or no working directory: no file yet
        return written
    return written


#: The files SQLite keeps beside a database while it writes (its log, its shared memory).
_SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")
#: What a ``MarkdownJournalSink`` writes in its folder (the rest of the folder is the user's).
_JOURNAL_FILES = ("token_usage.md", ".journal.lock")
_JOURNAL_SESSIONS = "sessions"


def _place_of_sink(state_file: Path, sink: Sink) -> str | None:
    """How ``state_file`` is a file ``sink`` writes ("the file", "a file"), or None: its ``path``
    or that file's SQLite companions, or the files a ``MarkdownJournalSink`` writes in its
    ``directory`` (its ``token_usage.md``, its lock, its ``sessions/`` pages), through links too
    (symbolic or hard)."""
    path = getattr(sink, "path", None)
    folder = getattr(sink, "directory", None)
    try:
        target = os.path.realpath(absolute(state_file))
        if isinstance(path, Path):
            own = os.path.realpath(absolute(path))
            files = {own, *(own + suffix for suffix in _SQLITE_COMPANIONS)}
            # A hard link has a name of its own: only its device and inode tell it.
            if target in files or any(same_file(target, name) for name in files):
                return "the file"
        if isinstance(folder, Path):
            journal = Path(os.path.realpath(absolute(folder)))
            written = Path(target)
            kept = {journal / name for name in _JOURNAL_FILES}
            if (
                written in kept
                or written.is_relative_to(journal / _JOURNAL_SESSIONS)
                or any(same_file(written, name) for name in kept)
            ):
                return "a file"
    except (ValueError, OSError):  # no name of a file, or no working directory: no file yet
        return None
    return None


def _listed(value: object) -> object:
    """An iterable of names (a set, a generator) as a list, once; text and anything else as given,
    for Settings to take (a comma-separated string) or reject naming the setting."""
    if isinstance(value, Iterable) and not isinstance(value, str | bytes | Mapping):
        return list(value)
    return value


def loaded_settings() -> Settings | None:
    """The settings in force, or None before they are loaded: never loads them (a sink may
    ask while they load, under ``_lock``)."""
    return _settings


def own_sinks() -> bool:
    """The application configured sink objects of its own (``configure(sinks=[...])``)."""
    return bool(_sink_objects)


def attach_sink(sink: Sink) -> None:
    """Add a sink that stays in place whatever ``configure(sinks=...)`` the application calls
    later: ``tokenmeter run`` counts a program's spending with one."""
    with _lock:
        _attached.append(sink)
        if _settings is not None:
            _apply()


def _split_sinks(sinks: object) -> tuple[str | list[str], list[Sink]]:
    """configure(sinks=...) as (names for Settings, sink objects).

    A string is names (one, or comma-separated), not an iterable of one-letter names.
    """
    if isinstance(sinks, str):
        return sinks, []
    if isinstance(sinks, Sink):
        _check_instance(sinks)
        return [], [sinks]
    if not isinstance(sinks, Iterable) or isinstance(sinks, bytes | Mapping):
        raise ValueError(
            "tokenmeter setting 'sinks' from configure(): must be a sink, a sink name or a list "
            f"of them, got {short_repr(sinks)}"
        )
    names: list[str] = []
    objects: list[Sink] = []
    for sink in sinks:
        if isinstance(sink, str):
            names.append(sink)
        elif isinstance(sink, Sink):
            _check_instance(sink)
            objects.append(sink)
        else:
            raise ValueError(
                f"sinks: {short_repr(sink)} is not a sink (needs write(), flush() and close())"
            )
    if objects:  # [os.environ.get("EXTRA_SINK", ""), my_sink]: the objects are the sinks named
        names = [name for name in names if name.strip()]
    return names, objects


def _check_instance(sink: Sink) -> None:
    """A sink class passes the Sink protocol check too (its methods are there, unbound), then
    fails every write on the writer thread: refuse it here instead."""
    if isinstance(sink, type):
        name = sink.__name__[:100]
        raise ValueError(
            f"sinks: {short_repr(sink)} is a class; an instance is needed, e.g. {name}()"
        )
    # The protocol check only asks that the attributes be there: ``write = 5`` passed, then
    # every write failed on the writer thread (records set aside). write_sessions may be None.
    for method in ("write", "flush", "close", "write_sessions"):
        found = getattr(sink, method, None)
        if not callable(found) and (found is not None or method != "write_sessions"):
            raise ValueError(
                f"sinks: {type(sink).__name__[:100]}.{method} must be a method, "
                f"got {short_repr(found)}"
            )
    # An async method returns a coroutine that the writer thread never awaits: the sink would
    # silently get nothing while flush() says everything is written.
    for method in ("write", "flush", "close", "write_sessions"):
        if inspect.iscoroutinefunction(getattr(sink, method, None)):
            raise ValueError(
                f"sinks: {type(sink).__name__[:100]}.{method}() is async; tokenmeter calls it "
                "from a thread of its own: make it a plain method"
            )


def reset() -> None:
    """Forget every configure() call and the implicit session: as in a new process, the settings
    are read again on next use, from the working directory (its pyproject.toml) and environment
    of then (tests)."""
    global _sink_objects, _settings, _refused, _project_start, _prices_base, _defaults
    _pipeline.catch_up()  # made now, not by a writer finding no settings (and loading them)
    with _lock:
        _refused = None
        _project_start = None
        _prices_base = None
        _explicit.clear()
        _sink_objects = []
        _attached.clear()
        _settings = None
        _defaults = _DefaultSinks({})
        _pipeline.set_sinks(list)  # the old sinks get what they were sent, then are closed
        _pipeline.clear_submit_observers()  # and those of sinks never configured
        _pipeline.first_use_hook = settings
        _pipeline._warned_setting = None  # a bad setting met again is warned about again
        _sessions.reset()
        from tokenmeter import _record
        from tokenmeter.guardrails import _budgets, _hooks
        from tokenmeter.guardrails import _state as _guard_state

        _record._made_here.clear()
        _budgets.reset()
        _guard_state.armed = False  # as in a new process: no budget in force
        _hooks.global_hooks = ()
