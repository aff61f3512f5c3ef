"""Settings: ``configure()`` arguments > ``TOKENMETER_*`` environment > ``[tool.tokenmeter]``.

Read once, lazily (the first record or ``instrument()``), never on the hot path. Every value is
checked here, whichever layer it comes from: a bad one is a one-line ValueError naming the setting
and where it came from, never a value that misbehaves later (``max_queue=0`` used to make every
call wait and drop its record).
"""

from __future__ import annotations

import json
import os
import threading
import tomllib
from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from tokenmeter._models import plain_str
from tokenmeter.pricing import check_aliases, check_prices
from tokenmeter.pricing._overrides import (
    check_prices_file,
    no_repeated_keys,
    read_small_file,
    short_repr,
)

__all__ = [
    "DATA_FILES",
    "FILE_SINK_NAMES",
    "SINK_NAMES",
    "Settings",
    "check_settings_prices_file",
    "find_pyproject",
    "load_settings",
    "load_settings_with_sources",
    "without_line_end",
]

SINK_NAMES = ("sqlite", "jsonl", "markdown", "postgres", "otel")
#: The sinks that write into the ``directory`` setting (the others: a server, an exporter).
FILE_SINK_NAMES = ("sqlite", "jsonl", "markdown")
#: The files tokenmeter keeps in the ``directory`` setting's folder: the default sinks', the
#: budgets' ledger, the alerts and the records set aside (SQLite's companions included).
DATA_FILES = frozenset(
    f"{name}{suffix}"
    for name in ("usage.db", "budgets.db")
    for suffix in ("", "-wal", "-shm", "-journal")
) | {"usage.jsonl", "alerts.jsonl", "quarantine.jsonl"}
#: The folders in it whose files tokenmeter names itself: the markdown journal, usage reports.
_DATA_FOLDERS = ("journal", "reports")
#: The markdown journal's page in the directory.
_JOURNAL_PAGE = "journal/token_usage.md"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_ENV_NAMES = {
    "directory": "TOKENMETER_DIR",
    "sinks": "TOKENMETER_SINKS",
    "disabled": "TOKENMETER_DISABLED",
    "prices_file": "TOKENMETER_PRICES",
    "stream_usage": "TOKENMETER_STREAM_USAGE",
    "max_queue": "TOKENMETER_MAX_QUEUE",
    "exit_timeout": "TOKENMETER_EXIT_TIMEOUT",
    "budgets": "TOKENMETER_BUDGETS",
    "budget_timezone": "TOKENMETER_BUDGET_TIMEZONE",
    "budget_warn_at": "TOKENMETER_BUDGET_WARN_AT",
    "budget_ledger": "TOKENMETER_BUDGET_LEDGER",
    "alerts": "TOKENMETER_ALERTS",
    "state_file": "TOKENMETER_STATE_FILE",
    "thread_propagation": "TOKENMETER_THREAD_PROPAGATION",
    "providers": "TOKENMETER_PROVIDERS",
    "reports": "TOKENMETER_REPORTS",
    "pg_dsn": "TOKENMETER_PG_DSN",
}
REPORT_PERIODS = ("daily", "weekly", "monthly")
#: Settings that hold code (callables): configure() only.
_CODE_ONLY = ("on_alert", "on_session_end")


class Settings(BaseModel):
    """The merged settings. The validators take each value as given (no pydantic coercion):
    ``"no"`` is not a boolean and ``"10"`` is not a number, whichever layer they come from."""

    model_config = ConfigDict(extra="forbid")

    #: Where the default sinks write (``usage.db``, ``usage.jsonl``, ``journal/``).
    directory: Path = Path(".tokenmeter")
    #: Default sinks by name, used when no sink objects are configured.
    sinks: tuple[str, ...] = ("sqlite",)
    #: The kill switch: ``instrument()`` does nothing, a ``wrap()``ped client passes its calls
    #: through, no budget refuses a call and nothing is written.
    disabled: bool = False
    #: Price overrides (USD per million tokens), see ``tokenmeter.pricing.set_user_prices``.
    prices: dict[str, Any] = {}
    #: A TOML or JSON file of price overrides.
    prices_file: Path | None = None
    #: Model-name aliases, e.g. Azure deployment name -> model.
    aliases: dict[str, str] = {}
    #: Ask OpenAI chat streams for usage (and hide the extra chunk) when the caller did not.
    stream_usage: bool = True
    #: Records buffered per sink; beyond it the oldest is dropped, never waited for (see _pipeline).
    max_queue: int = 100_000
    #: How long interpreter exit waits for records to reach the sinks.
    exit_timeout: float = 10.0
    #: Budgets (see docs/budgets-and-alerts.md): limit_usd, period, scope, on_exceed.
    budgets: tuple[Any, ...] = ()
    #: The time zone of calendar periods (hour, day, week, month).
    budget_timezone: str = "UTC"
    #: Fractions of a budget's limit that warn, once each per period.
    budget_warn_at: tuple[float, ...] = (0.5, 0.8, 1.0)
    #: Where budgets keep their spend: "sqlite" (every process using the directory) or "memory"
    #: (this process only). A configured sink with ``budget_ledger()`` overrides both.
    budget_ledger: str = "sqlite"
    #: Usage alert rules (call_tokens, call_cost, session_cost, spend_rate).
    alerts: tuple[Any, ...] = ()
    #: Callables given each alert (configure() only).
    on_alert: tuple[Any, ...] = ()
    #: Callables given each session that ends (configure() only).
    on_session_end: tuple[Any, ...] = ()
    #: A workflow state file: a line is appended when a top-level session ends.
    state_file: Path | None = None
    #: Sessions follow work into threads started inside them.
    thread_propagation: bool = True
    #: Providers ``instrument()`` patches when it names none (None: every installed one).
    providers: tuple[str, ...] | None = None
    #: Usage reports written once per closed period to ``<directory>/reports/``.
    reports: tuple[str, ...] = ()

    @field_validator("reports", mode="before")
    @classmethod
    def _report_periods(cls, value: Any) -> tuple[str, ...]:
        return _parse_reports(value)

    #: The "postgres" sink's connection string or URL; empty: libpq's standard PG* variables.
    pg_dsn: str = ""

    @field_validator("sinks", mode="before")
    @classmethod
    def _known_sinks(cls, value: Any) -> tuple[str, ...]:
        sinks = _parse_sinks(value)
        # An unfilled template ("", [""]), not "store nothing": only an empty list is that.
        if not sinks and (isinstance(value, str) or (isinstance(value, list | tuple) and value)):
            raise ValueError(f"names no sink; leave it out for {_NO_SINK_NAMED}")
        return sinks

    @field_validator("budgets", mode="before")
    @classmethod
    def _valid_budgets(cls, value: Any) -> tuple[Any, ...]:
        from tokenmeter.guardrails._budgets import parse_budgets

        return parse_budgets(value)

    @field_validator("budget_timezone", mode="before")
    @classmethod
    def _valid_zone(cls, value: Any) -> str:
        from tokenmeter.guardrails._budgets import parse_timezone

        return parse_timezone(value)

    @field_validator("budget_warn_at", mode="before")
    @classmethod
    def _valid_warn_at(cls, value: Any) -> tuple[float, ...]:
        from tokenmeter.guardrails._budgets import parse_warn_at

        return parse_warn_at(value)

    @field_validator("providers", mode="before")
    @classmethod
    def _known_providers(cls, value: Any) -> tuple[str, ...] | None:
        if value is None:
            return None
        from tokenmeter.providers import _names

        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
            if not value:  # an unfilled template or an unset variable: every call was unmetered
                raise ValueError(
                    "names no provider; leave it out for every installed one, or name some "
                    "(openai, anthropic, gemini...)"
                )
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"must be provider names, got {short_repr(value)}")
        return tuple(_names(list(value)))

    @field_validator("budget_ledger", mode="before")
    @classmethod
    def _valid_ledger(cls, value: Any) -> str:
        if value not in ("sqlite", "memory"):
            raise ValueError(f"must be 'sqlite' or 'memory', got {short_repr(value)}")
        return str(value)

    @field_validator("alerts", mode="before")
    @classmethod
    def _valid_alerts(cls, value: Any) -> tuple[Any, ...]:
        from tokenmeter.guardrails._alerts import parse_alert_rules

        return parse_alert_rules(value)

    @field_validator("on_alert", "on_session_end", mode="before")
    @classmethod
    def _callables(cls, value: Any) -> tuple[Callable[..., object], ...]:
        from tokenmeter.guardrails._hooks import check_not_async

        if callable(value):
            value = (value,)
        if isinstance(value, list | tuple) and all(callable(item) for item in value):
            check_not_async("hooks and callbacks", value)
            return tuple(value)
        raise ValueError(f"must be a callable or a list of callables, got {short_repr(value)}")

    @field_validator("directory", "prices_file", "state_file", mode="before")
    @classmethod
    def _a_path(cls, value: Any) -> Path:
        # str/PathLike only: Path(5) is a TypeError, and bytes or NUL fail later, in the writer.
        text = os.fspath(value) if isinstance(value, str | os.PathLike) else None
        if not isinstance(text, str):
            raise ValueError(f"must be a path (str or pathlib.Path), got {short_repr(value)}")
        text = plain_str(text)
        if not text.strip():
            raise ValueError("must not be empty")
        if "\x00" in text:
            raise ValueError(f"must not contain a NUL character, got {short_repr(text)}")
        from tokenmeter.sinks._files import unnameable  # the sinks' own rule

        fault = unnameable(text)  # else every file operation on it would fail later
        if fault is not None:
            raise ValueError(f"{fault}, got {short_repr(text)}")
        return Path(os.path.expanduser(text))  # "~/usage": the home folder, as a shell means it

    @field_validator("directory", mode="after")
    @classmethod
    def _a_directory(cls, value: Path) -> Path:
        # A file or a device there: every sink's write, and even the quarantine, failed later.
        from tokenmeter.sinks._files import wrong_kind  # the sinks' own rule

        kind = wrong_kind(value, "directory")
        if kind is not None:
            raise ValueError(
                f"must be a directory or nothing yet, got {kind}: {short_repr(str(value))}"
            )
        return value

    @field_validator("state_file", mode="after")
    @classmethod
    def _not_our_data(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        from tokenmeter.sinks._files import wrong_kind  # the sinks' own rule

        # A directory there (or a path under a file) was taken, and every session's line
        # failed on the writer and was set aside. A pipe or a device is kept: a FIFO with a
        # reader, /dev/stderr, takes the lines.
        kind = None if value is None else wrong_kind(value, "file")
        if kind in ("a directory", "a path under a file", "a loop of symbolic links"):
            raise ValueError(f"must be a file or nothing yet, got {kind}: {short_repr(str(value))}")
        # Two writers on one file: the state lines appended to usage.db were cut away at
        # SQLite's checkpoint, or made it a text file that refused every record.
        directory = info.data.get("directory")  # absent: refused itself
        kept = None if value is None or directory is None else _data_file(value, directory)
        if kept is not None:
            raise ValueError(
                f"must not be {kept} in the directory {str(directory)!r}, "
                f"got {short_repr(str(value))}"
            )
        return value

    @field_validator("disabled", "stream_usage", "thread_propagation", mode="before")
    @classmethod
    def _a_bool(cls, value: Any) -> bool:
        # No truthiness: "no", "false" and 0 must not quietly mean True (or anything).
        if not isinstance(value, bool):
            raise ValueError(f"must be True or False, got {short_repr(value)}")
        return value

    @field_validator("prices", mode="before")
    @classmethod
    def _valid_prices(cls, value: Any) -> dict[str, Any]:
        check_prices(value)  # every entry now, not at the first record
        return dict(value)

    @field_validator("aliases", mode="before")
    @classmethod
    def _valid_aliases(cls, value: Any) -> dict[str, str]:
        check_aliases(value)
        return dict(value)

    @field_validator("pg_dsn", mode="before")
    @classmethod
    def _a_dsn(cls, value: Any) -> str:
        if not isinstance(value, str):
            # Never echo it: a DSN may hold a password.
            raise ValueError(f"must be a connection string, got {type(value).__name__}")
        if not value:
            return value  # libpq's PG* variables
        from tokenmeter.sinks.postgres import check_dsn  # only when a DSN is given

        check_dsn(value)  # the sink's own checks: refused here, naming the setting
        return value

    @field_validator("max_queue", mode="before")
    @classmethod
    def _queue_size(cls, value: Any) -> int:
        # 0 or less would make every call wait for room that never comes, then drop its record.
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"must be a whole number of records, at least 1, got {short_repr(value)}"
            )
        return value

    @field_validator("exit_timeout", mode="before")
    @classmethod
    def _seconds(cls, value: Any) -> float:
        # NaN and negative waits are meaningless; past TIMEOUT_MAX, waiting raises OverflowError.
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not 0 <= value <= threading.TIMEOUT_MAX
        ):
            raise ValueError(
                f"must be a number of seconds from 0 to {threading.TIMEOUT_MAX:.0f}, "
                f"got {short_repr(value)}"
            )
        return float(value)


def _data_file(path: Path, directory: Path) -> str | None:
    """Which file (or folder) of its own data tokenmeter keeps at ``path`` in ``directory``
    ("tokenmeter's own usage.db"), through a link too, whether or not it exists yet; None for
    any other path. Both are taken from the working directory, as the sinks will take them."""
    from tokenmeter.sinks._files import absolute

    try:
        target = Path(os.path.realpath(absolute(path)))
        folder = Path(os.path.realpath(absolute(directory)))
    except (ValueError, OSError):  # no name of a file, or no working directory: no file yet
        return None
    if target.parent == folder and target.name in DATA_FILES:
        return f"tokenmeter's own {target.name}"
    for name in _DATA_FOLDERS:
        if target.is_relative_to(folder / name):
            return f"in tokenmeter's own {name}/ folder"
    return _hard_link_to_data(target, folder)


def _hard_link_to_data(target: Path, folder: Path) -> str | None:
    """The data file in ``folder`` that ``target`` is another name of (a hard link, a folder
    mounted twice), as ``_data_file`` says it, or None: the journal's page too. Not the session
    pages and reports, whose folders would be listed at every load of the settings (50,000
    pages: 4 s a configure())."""
    from tokenmeter.sinks._files import same_file

    for name in [*sorted(DATA_FILES), _JOURNAL_PAGE]:
        if same_file(target, folder / name):
            return f"tokenmeter's own {name}"
    return None


def _parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"must be 1/0, true/false, yes/no or on/off, got {short_repr(value)}")


def _parse_sinks(value: Any) -> tuple[str, ...]:
    """Sink names from a list or a comma-separated string (one name is a string, not letters)."""
    return _parse_names(
        value,
        SINK_NAMES,
        f"must be sink names ({', '.join(SINK_NAMES)}) as a list or a comma-separated string",
        "sink names",
        f"unknown sink {{}}; expected some of {SINK_NAMES}",
    )


def _parse_reports(value: Any) -> tuple[str, ...]:
    """``"weekly"``, ``"daily,monthly"`` or a list of them; ``""`` / ``[]`` for none."""
    return _parse_names(
        value,
        REPORT_PERIODS,
        f"must be some of {', '.join(REPORT_PERIODS)} as a string or a list",
        "report periods",
        f"unknown report period {{}}; use {REPORT_PERIODS}",
    )


def _parse_names(
    value: Any, known: tuple[str, ...], shape: str, items_are: str, unknown: str
) -> tuple[str, ...]:
    """Known names from a list or a comma-separated string, lower-cased, each once (the same
    sink twice would write every record twice)."""
    if isinstance(value, str):
        items: list[Any] = value.split(",")
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise ValueError(f"{shape}, got {short_repr(value)}")
    names: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"{items_are} must be strings, got {short_repr(item)}")
        name = item.strip().lower()
        if name and name not in known:
            raise ValueError(unknown.format(short_repr(name)))
        if name and name not in names:
            names.append(name)
    return tuple(names)


class _Unreadable:
    """A ``TOKENMETER_*`` value that cannot be read, kept in its setting's place: an error only
    if no ``configure()`` argument sets that setting (the first that sets a value wins). Raised
    while the variables were read, it made ``configure(max_queue=10000)`` fail on
    ``TOKENMETER_MAX_QUEUE=10k``, the very value the application overrides."""

    def __init__(self, message: str) -> None:
        self.message = message


def _parsed(parse: Callable[[str], Any], value: str) -> Any:
    """``parse(value)``, or an ``_Unreadable`` saying why not."""
    try:
        return parse(value)
    except (ValueError, RecursionError) as exc:
        return _Unreadable(str(exc))


#: What to do instead of naming no sink (an empty list in ``configure()`` is "no default sink").
_NO_SINK_NAMED = (
    f"the default (sqlite), name some of {', '.join(SINK_NAMES)}, "
    "or set TOKENMETER_DISABLED=1 to store nothing"
)


def _some_sinks(value: str) -> tuple[str, ...]:
    sinks = _parse_sinks(value)
    if not sinks:  # an unset variable in a shell script, not a wish to store nothing
        raise ValueError(f"is set but names no sink; unset it for {_NO_SINK_NAMED}")
    return sinks


def _some_providers(value: str) -> str:
    if not value.replace(",", " ").strip():  # as TOKENMETER_SINKS: nothing would be patched
        raise ValueError(
            "is set but names no provider; unset it for every installed one, or name some "
            "(openai, anthropic, gemini...)"
        )
    return value


def _some_reports(value: str) -> str:
    """``TOKENMETER_REPORTS``: periods, or ``0``/``off``/``none`` (no reports: the variable's
    way to turn off a ``pyproject.toml``'s, now that an empty one is unset)."""
    if value.strip().lower() in _FALSE | {"none"}:
        return ""
    if not value.replace(",", " ").strip():  # as TOKENMETER_PROVIDERS: not a wish for none
        raise ValueError(
            "is set but names no report period; unset it for the pyproject.toml's (or none), "
            f"or name some of {', '.join(REPORT_PERIODS)}"
        )
    return value


def _json_tables(example: str) -> Callable[[str], Any]:
    def parse(value: str) -> Any:
        try:
            return _json_once(value)
        except _RepeatedKey as exc:
            raise ValueError(f"must be JSON naming each key once: {exc}") from None
        except (ValueError, RecursionError):
            raise ValueError(f"must be JSON: a list of tables, e.g. {example}") from None

    return parse


class _RepeatedKey(ValueError):
    """A JSON object naming one key twice."""


def _json_once(value: str) -> Any:
    """``value`` decoded as JSON, refusing an object that names one key twice (raising
    ``_RepeatedKey``): the decoder kept the last, and ``[{"limit_usd": 5, "period": "day",
    "limit_usd": 500}]`` (a template's default left beside the override) was a $500 budget.
    A prices file (``no_repeated_keys``) and TOML refuse the same mistake."""

    def once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        try:
            return no_repeated_keys(pairs)
        except ValueError as exc:
            raise _RepeatedKey(str(exc)) from None

    return json.loads(value, object_pairs_hook=once)


def _fractions(value: str) -> list[int | float]:
    return [_parse_number(part, float) for part in value.split(",") if part.strip()]


def without_line_end(value: str) -> str:
    """A variable read as written (a path, a DSN, a time zone) without the line end a CRLF
    ``.env`` file leaves on it (``tm\\r``): taken verbatim, the records went to a new folder
    named ``tm\\r`` with no word, while the same file's other variables were read as meant
    (their whitespace stripped). Only line-end characters go: a name with a deliberate trailing
    space is the user's, and a DSN pasted after a space is still one libpq cannot read."""
    return value.rstrip("\r\n")


#: How each ``TOKENMETER_*`` variable is read, and whether it counts when set but empty. Empty,
#: a variable is unset (an unfilled ``.env`` line, ``export X=$UNSET``): read as "false" or
#: "none", ``TOKENMETER_STREAM_USAGE=`` and ``TOKENMETER_THREAD_PROPAGATION=`` switched their
#: feature off without a word. ``TOKENMETER_SINKS=`` alone is an error instead, documented: it
#: must not be taken for "store nothing".
_ENV_READERS: dict[str, tuple[Callable[[str], Any], bool]] = {
    "directory": (without_line_end, False),
    "sinks": (_some_sinks, True),
    "disabled": (_parse_bool, False),
    "prices_file": (without_line_end, False),
    "stream_usage": (_parse_bool, False),
    "reports": (_some_reports, False),
    "thread_propagation": (_parse_bool, False),
    "max_queue": (lambda value: _parse_number(value, int), False),
    "exit_timeout": (lambda value: _parse_number(value, float), False),
    "budgets": (_json_tables('[{"limit_usd": 5, "period": "day"}]'), False),
    "alerts": (_json_tables('[{"rule": "call_tokens", "multiplier": 3}]'), False),
    "budget_timezone": (without_line_end, False),
    "budget_warn_at": (_fractions, False),
    "budget_ledger": (lambda value: value.strip().lower(), False),
    "state_file": (without_line_end, False),
    "providers": (_some_providers, False),
    "pg_dsn": (without_line_end, False),  # a CRLF .env file's \r named the database "postgres\r"
}


def _from_env(env: Mapping[str, str], prices_base: Path | None = None) -> dict[str, Any]:
    """The settings the ``TOKENMETER_*`` variables set; one that cannot be read as an
    ``_Unreadable``, for ``_validated`` to raise unless ``configure()`` sets it. A relative
    ``TOKENMETER_PRICES`` is in ``prices_base`` when one is given."""
    found: dict[str, Any] = {}
    for key, (parse, empty_counts) in _ENV_READERS.items():
        value = env.get(_ENV_NAMES[key])
        # Empty is unset, a CRLF .env file's unfilled line ("\r") too: it replaced the
        # pyproject's pg_dsn with "" (libpq's defaults) where an LF file's left it alone.
        if value is not None and (without_line_end(value) or empty_counts):
            found[key] = _parsed(parse, value)
    prices_file = found.get("prices_file")
    # An empty one is refused as empty, not taken for the folder.
    if prices_base is not None and isinstance(prices_file, str) and prices_file.strip():
        found["prices_file"] = prices_base / os.path.expanduser(prices_file)
    return found


def _parse_number(value: str, kind: type[int] | type[float]) -> int | float:
    try:
        return kind(value.strip())
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ValueError(f"must be {what}, got {short_repr(value)}") from None


#: ``tokenmeter._autorun.ENV_PYPROJECT`` (not imported: the settings load before it).
_RUN_PYPROJECT = "TOKENMETER_RUN_PYPROJECT"
#: ``tokenmeter run --budget``'s budgets (JSON, an outer run's first), apart from
#: ``TOKENMETER_BUDGETS``: added to the budgets of every layer, configure()'s included.
RUN_BUDGETS = "TOKENMETER_RUN_BUDGETS"


def _with_run_budgets(resolved: Settings, env: Mapping[str, str]) -> Settings:
    """``resolved`` with the budgets of the ``tokenmeter run --budget`` the process is part of:
    carried in ``TOKENMETER_BUDGETS``, they were replaced by the program's own
    ``configure(budgets=...)`` (even ``budgets=[]``), and its calls went through the run's
    limit. The run's budget is not the program's to drop."""
    value = env.get(RUN_BUDGETS)
    if not value:
        return resolved
    from tokenmeter.guardrails._budgets import parse_budgets

    try:
        run_budgets = parse_budgets(_json_once(value))
        budgets = parse_budgets([*resolved.budgets, *run_budgets])  # names checked together
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"tokenmeter setting 'budgets' from {RUN_BUDGETS}: {exc}") from None
    return resolved.model_copy(update={"budgets": budgets})


def _pinned_pyproject(pinned: str) -> Path | None:
    """The pyproject.toml ``tokenmeter run`` found ("" for none). One removed since (a build that
    rewrites it, a checkout switching branches) is none, as where no project has one: a process
    started then must not fail to start metering."""
    path = Path(pinned) if pinned else None
    try:
        return path if path is not None and path.exists() else None
    except OSError:  # a folder on the way that cannot be searched: read, and refused, as any
        return path


def find_pyproject(start: Path | None) -> Path | None:
    """The nearest pyproject.toml from ``start`` (the working directory) up. A working directory
    that was removed, or a folder that cannot be searched, has none to give."""
    try:
        start = start or Path.cwd()
        for folder in (start, *start.parents):
            candidate = folder / "pyproject.toml"
            if candidate.is_file():
                return candidate
    except OSError:
        return None
    return None


#: Settings whose numbers are money, read from pyproject.toml as exact decimals; the other
#: settings' numbers are floats, as TOML gives them.
_EXACT = frozenset({"prices", "budgets"})


def _floats(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, list):
        return [_floats(item) for item in value]
    if isinstance(value, dict):
        return {key: _floats(item) for key, item in value.items()}
    return value


#: The largest pyproject.toml read for its [tool.tokenmeter] table.
_MAX_PYPROJECT = 16 * 1024 * 1024


def _from_pyproject(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    raw = read_small_file(path, "pyproject.toml", _MAX_PYPROJECT)  # not a FIFO, nor /dev/zero
    try:
        data = tomllib.loads(raw.decode("utf-8"), parse_float=Decimal)  # 1e-400 is not 0.0
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except RecursionError:
        raise ValueError(f"{path}: nested too deeply to be read") from None
    except ValueError as exc:  # TOMLDecodeError, and ints past Python's digit limit
        raise ValueError(f"{path}: cannot read [tool.tokenmeter]: {exc}") from None
    tool = data.get("tool", {})
    table = tool.get("tokenmeter", {}) if isinstance(tool, dict) else {}
    if not isinstance(table, dict):
        raise ValueError(f"{path}: [tool.tokenmeter] must be a table, got {short_repr(table)}")
    try:
        table = {
            key.replace("-", "_"): value if key in _EXACT else _floats(value)
            for key, value in table.items()
        }
    except RecursionError:
        raise ValueError(f"{path}: nested too deeply to be read") from None
    for key in _CODE_ONLY:
        if key in table:
            raise ValueError(f"{path}: [tool.tokenmeter] {key} holds code: set it with configure()")
    for key in ("directory", "prices_file", "state_file"):
        value = table.get(key)
        # Relative to the pyproject.toml that names them; an empty one is refused as empty,
        # not taken for that file's folder.
        if isinstance(value, str) and value.strip():
            table[key] = path.parent / os.path.expanduser(value)
    return table


def load_settings(
    explicit: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    prices_base: Path | None = None,
) -> Settings:
    """Merge the three layers; a bad value raises ValueError naming where it came from.
    ``cwd``: where the pyproject.toml is looked for from; ``prices_base``: the folder a
    relative ``TOKENMETER_PRICES`` is in (None for both: the working directory)."""
    return load_settings_with_sources(explicit, env=env, cwd=cwd, prices_base=prices_base)[0]


def check_settings_prices_file(resolved: Settings, sources: Mapping[str, str]) -> None:
    """Raise the ValueError ``configure()`` would for the prices file of ``resolved``, reading it
    (the file is read apart from the other settings), naming the setting and where it came from
    (``sources``, as ``load_settings_with_sources`` gives them) as for any other bad setting: a
    ``TOKENMETER_PRICES`` exported long ago said only "prices.toml: cannot read prices file".
    Not while the kill switch is on: like any other bad setting, a prices file that cannot be
    read (one missing from this checkout) must not stop ``TOKENMETER_DISABLED=1`` from working."""
    if resolved.prices_file is None or resolved.disabled:
        return
    try:
        check_prices_file(resolved.prices_file)
    except ValueError as exc:
        source = sources.get("prices_file", "settings")
        raise ValueError(f"tokenmeter setting 'prices_file' from {source}: {exc}") from None


def _switched_off(
    env: Mapping[str, str], pyproject: tuple[str, dict[str, Any]]
) -> tuple[str, dict[str, Any]] | None:
    """The layer that turns tokenmeter off whatever else is set (the kill switch), or None:
    ``TOKENMETER_DISABLED`` saying yes, else, when that is unset, ``disabled = true`` in the
    pyproject.toml (as the layers' order has it)."""
    value = env.get("TOKENMETER_DISABLED")
    if value is None or not without_line_end(value):  # empty: unset, as every TOKENMETER_*
        layer, on = pyproject[0], pyproject[1].get("disabled") is True  # a boolean, not "yes"
    else:
        layer = "environment"
        try:
            on = _parse_bool(value)
        except ValueError:  # a bad switch is no switch: its own error is raised
            on = False
    return (layer, {"disabled": True}) if on else None


def _validated(layers: list[tuple[str, dict[str, Any]]]) -> Settings:
    """The layers merged (later ones win) and checked: a ValueError names the bad setting and
    the layer it came from."""
    merged: dict[str, Any] = {}
    for _, layer in layers:
        merged.update(layer)
    for key, value in merged.items():
        if isinstance(value, _Unreadable):  # still the environment's: nothing overrides it
            raise ValueError(f"tokenmeter setting {key!r} from {_ENV_NAMES[key]}: {value.message}")
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = str(error["loc"][0]) if error["loc"] else "?"
        source = next((name for name, layer in reversed(layers) if key in layer), "settings")
        if source == "environment":
            source = _ENV_NAMES.get(key, source)
        if error["type"] == "extra_forbidden":
            message = f"no such setting; known: {', '.join(Settings.model_fields)}"
        else:
            message = error["msg"].removeprefix("Value error, ")
        raise ValueError(f"tokenmeter setting {key!r} from {source}: {message}") from None


def _check_state_file_is_no_settings_file(
    resolved: Settings, pyproject: Path | None, sources: Mapping[str, str]
) -> None:
    """Refuse a state file that is a file tokenmeter reads its settings from: the first
    finished session appended a line to the pyproject.toml (or the prices file), which was then
    no TOML, and every later process raised at its first record (the project's build failed
    too). Not while the kill switch is on: nothing is written then."""
    if resolved.state_file is None or resolved.disabled:
        return
    for what, path in (
        ("the pyproject.toml tokenmeter reads its settings from", pyproject),
        ("the prices file (prices_file)", resolved.prices_file),
    ):
        if path is not None and _one_file(resolved.state_file, path):
            source = sources.get("state_file", "settings")
            raise ValueError(
                f"tokenmeter setting 'state_file' from {source}: must not be {what}, "
                f"got {short_repr(str(resolved.state_file))}"
            )
    if "pyproject.toml" in (resolved.state_file.name, _real_name(resolved.state_file)):
        # another folder's (through a link too), or one its first write would make
        source = sources.get("state_file", "settings")
        raise ValueError(
            f"tokenmeter setting 'state_file' from {source}: must not be a pyproject.toml, "
            f"got {short_repr(str(resolved.state_file))}"
        )


def _real_name(path: Path) -> str:
    """The name of the file ``path`` leads to through links ("" when it cannot be told)."""
    from tokenmeter.sinks._files import absolute

    try:
        return os.path.basename(os.path.realpath(absolute(path)))
    except (ValueError, OSError):
        return ""


def _one_file(path: Path, other: Path) -> bool:
    """Whether two paths name one file, through links too, whether or not it exists yet; both
    taken from the working directory, as the sinks will take them."""
    from tokenmeter.sinks._files import absolute, same_file

    try:
        one, two = os.path.realpath(absolute(path)), os.path.realpath(absolute(other))
    except (ValueError, OSError):  # no name of a file, or no working directory: no file yet
        return False
    return one == two or same_file(one, two)


#: The keys of the price overrides, one setting: a table (``configure(prices=...)``, a
#: pyproject's ``[tool.tokenmeter.prices]``), a file (``TOKENMETER_PRICES``, a pyproject's
#: ``prices_file``), or, in a pyproject.toml, both.
_PRICE_KEYS = frozenset({"prices", "prices_file"})


def _with_one_price_layer(
    layers: list[tuple[str, dict[str, Any]]],
) -> list[tuple[str, dict[str, Any]]]:
    """``layers`` with the price overrides of the highest layer that gives any, whole, and none
    of the layers below. Merged as two keys, a pyproject's ``[tool.tokenmeter.prices]`` table
    beat ``TOKENMETER_PRICES`` (the table was laid over whichever file), and ``configure(
    prices=...)`` replaced a project's table but kept its ``prices_file``. Within a pyproject's
    layer, its file and its table still combine (the table wins per model). A layer below the
    one in force is not read at all: a project's missing ``prices_file`` under the operator's
    ``TOKENMETER_PRICES`` is no error, as any bad value under one that replaces it."""
    kept: list[tuple[str, dict[str, Any]]] = []
    found = False
    for name, layer in reversed(layers):
        if found:
            layer = {key: value for key, value in layer.items() if key not in _PRICE_KEYS}
        else:
            found = not _PRICE_KEYS.isdisjoint(layer)
        kept.append((name, layer))
    return kept[::-1]


def load_settings_with_sources(
    explicit: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    prices_base: Path | None = None,
) -> tuple[Settings, dict[str, str]]:
    """The merged settings, and where each came from ("default", "configure()", the environment
    variable's name, or "<pyproject.toml> [tool.tokenmeter]")."""
    environ = os.environ if env is None else env
    given = ("configure()", dict(explicit or {}))
    pyproject: Path | None = None
    table: tuple[str, dict[str, Any]] = ("pyproject.toml", {})  # none read yet
    try:
        pinned = environ.get(_RUN_PYPROJECT)  # tokenmeter run: the run's, in every process
        pyproject = find_pyproject(cwd) if pinned is None else _pinned_pyproject(pinned)
        table = (f"{pyproject} [tool.tokenmeter]", _from_pyproject(pyproject))
        environment = ("environment", _from_env(environ, prices_base))
        layers = _with_one_price_layer([table, environment, given])
        resolved = _validated(layers)
    except ValueError:
        switch = _switched_off(environ, table)
        if switch is None or given[1].get("disabled") is False:
            raise
        # TOKENMETER_DISABLED=1 (or disabled = true in a pyproject.toml that can be read) turns
        # tokenmeter off whatever else the environment or the pyproject holds: an operator
        # reaching for the switch must not first have to fix the setting that made them reach
        # for it. What the application's code passes still counts.
        layers = [switch, given]
        resolved = _validated(layers)
    layered = resolved
    resolved = _with_run_budgets(layered, environ)
    sources = {key: "default" for key in Settings.model_fields}
    for name, layer in layers:
        for key in layer:
            sources[key] = _ENV_NAMES.get(key, name) if name == "environment" else name
    _check_state_file_is_no_settings_file(resolved, pyproject, sources)
    if len(resolved.budgets) > len(layered.budgets):  # tokenmeter run --budget's, added
        run = f"{RUN_BUDGETS} (tokenmeter run --budget)"
        budgets = sources["budgets"]
        sources["budgets"] = run if budgets == "default" else f"{budgets} + {run}"
    return resolved, sources
