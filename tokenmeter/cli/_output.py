"""Where command output goes: stdout, or an owner-only file named by ``-o``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tokenmeter.cli._errors import CliError

__all__ = ["write_output"]


def write_output(text: str, path: str | None) -> None:
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
