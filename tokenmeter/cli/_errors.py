"""The one exception every command raises for a user-facing failure."""

from __future__ import annotations

__all__ = ["CliError", "NoSourceYet", "NoTablesYet"]


class CliError(Exception):
    """A problem the user can fix (missing source, bad date, ...): printed as one line, exit 1."""

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class NoSourceYet(CliError):
    """The store named (or the default one) does not exist: nothing has been recorded there yet.
    ``tail -f`` waits for it; every other command says so."""


class NoTablesYet(CliError):
    """A SQLite file with no table at all: a sink's first connection has made the file and is
    writing its schema (or it is an empty file). ``tail -f`` waits for the tables; every other
    command says it is not a tokenmeter database."""
