"""``tokenmeter config``: the effective settings and where each came from.

Read as a new process would read them here: ``[tool.tokenmeter]`` of the nearest pyproject.toml,
then ``TOKENMETER_*`` variables (``configure()`` is the application's, so it cannot show here).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from tokenmeter.cli._errors import CliError
from tokenmeter.cli._output import write_output

__all__ = ["run_config", "shown", "without_password"]

#: A password in a libpq key/value string: quoted, or up to a space, with backslash escapes.
_PASSWORD_PARAM = re.compile(
    r"""(password\s*=\s*)('(?:[^'\\]|\\.)*'?|(?:[^\s\\]|\\.)*\\?)""", re.IGNORECASE
)
#: A connection URL (else libpq reads key/value pairs).
_URL = re.compile(r"[a-z][a-z0-9+.-]*://", re.IGNORECASE)
#: The password of a ``scheme://user:password@host`` URL: libpq ends the user at the first ``:``
#: and takes any other character (``#``, ``?``) up to an ``@`` before the path's ``/`` (masked
#: up to the last such ``@``).
_URL_PASSWORD = re.compile(r"^([a-z][a-z0-9+.-]*://[^/:@]*:)([^/]*)(@)", re.IGNORECASE)
#: A password holding a ``/`` (base64-style secrets), up to the last ``@``: libpq ends the
#: authority at the ``/`` and reads ``user:HEAD`` as host and port, so ``_URL_PASSWORD`` finds
#: none and the whole password was shown. Only up to an ``@`` before the query: one in the query
#: (``?user=alice@corp.com``) is not a password's end.
_URL_SLASHED_PASSWORD = re.compile(
    r"^([a-z][a-z0-9+.-]*://[^/:@\[]*:)([^?@]*/[^?@]*)(@)", re.IGNORECASE
)
#: A URL's query parameter: libpq decodes its name too (``%70assword``).
_QUERY_PARAM = re.compile(r"([?&])([^=&]*)(=)([^&]*)")


def shown(value: Any) -> Any:
    """A setting as plain JSON-able data."""
    as_setting = getattr(value, "as_setting", None)
    if callable(as_setting):
        return as_setting()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | list):
        return [shown(item) for item in value]
    if isinstance(value, dict):
        return {str(key): shown(item) for key, item in value.items()}
    if callable(value):
        return f"<{getattr(value, '__qualname__', type(value).__name__)}>"
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def without_password(dsn: str) -> str:
    """A PostgreSQL connection string as ``config`` shows it: the password, wherever it is
    written, replaced by ``***`` (the output is pasted into tickets and chats). One libpq
    cannot read (a URL after a space, a quote left open) is not shown at all: where its password
    is cannot be told, and the masks below missed it."""
    if dsn and not _parses(dsn):
        return "(not shown: a connection string libpq cannot read)"
    if not _URL.match(dsn):  # key/value: a space ends a value, & does not
        return _PASSWORD_PARAM.sub(r"\1***", dsn)
    dsn, masked = _URL_PASSWORD.subn(r"\1***\3", dsn)
    if not masked:
        dsn = _URL_SLASHED_PASSWORD.sub(r"\1***\3", dsn)

    def hidden(param: re.Match[str]) -> str:
        secret = "password" in unquote(param[2]).lower()
        return param[0] if not secret else f"{param[1]}{param[2]}{param[3]}***"

    return _QUERY_PARAM.sub(hidden, dsn)


def _parses(dsn: str) -> bool:
    """Whether libpq reads ``dsn`` (True when psycopg is not installed: nothing to ask)."""
    try:
        from psycopg import Error
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        return True
    from tokenmeter.sinks.postgres import split_schema

    try:
        conninfo_to_dict(split_schema(dsn)[0])  # libpq never sees tokenmeter's ?schema=
    except (Error, ValueError):  # ValueError: a %-escape that is not UTF-8, a bad schema
        return False
    return True


def run_config(args: argparse.Namespace) -> int:
    from tokenmeter._config import (
        Settings,
        check_settings_prices_file,
        load_settings_with_sources,
    )

    try:
        resolved, sources = load_settings_with_sources()
        check_settings_prices_file(
            resolved, sources
        )  # configure() and instrument() would refuse it
    except ValueError as exc:  # a bad setting: a usage error, as in every command
        raise CliError(str(exc), exit_code=2) from None
    values = {name: shown(getattr(resolved, name)) for name in Settings.model_fields}
    values["pg_dsn"] = without_password(values["pg_dsn"])
    if args.format == "json":
        data = {name: {"value": values[name], "source": sources[name]} for name in values}
        write_output(json.dumps(data, indent=2, ensure_ascii=False) + "\n", None, exact=True)
        return 0
    width = max(len(name) for name in values)
    lines = []
    for name, value in values.items():
        # Plain text as it is; anything else (a line break would forge a line) as JSON.
        plain = isinstance(value, str) and value.isprintable()
        text = value if plain else json.dumps(value, ensure_ascii=False)
        lines.append(f"{name.ljust(width)}  {text}  [{sources[name]}]\n")
    write_output("".join(lines), None)
    return 0
