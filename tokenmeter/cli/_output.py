"""Where command output goes: stdout, or an owner-only file named by ``-o``.

Text from the data may hold lone surrogates (JSON can spell ``"\\ud800"``), which no encoder
accepts: they are replaced by U+FFFD here, at the one place text leaves the program.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from tokenmeter.cli._errors import CliError

__all__ = ["printable", "write_output"]

_SURROGATE = re.compile("[\ud800-\udfff]")


def printable(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD, so that it can be encoded."""
    if text.isascii():
        return text
    return _SURROGATE.sub("\ufffd", text)


def write_output(text: str, path: str | None) -> None:
    text = printable(text)
    if path is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    target = Path(path)
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
    except OSError as exc:
        raise CliError(f"cannot write {target}: {exc.strerror or exc}") from None
