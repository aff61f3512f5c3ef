"""A progress line on stderr for reads that take more than about a second.

Drawn only after ``delay`` seconds, at most ten times a second, and wiped when done, so quick
reports print nothing extra. Callers decide whether it may appear at all (``progress_allowed``):
never on a non-terminal stderr, never while a machine format is piped out of stdout.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO

__all__ = ["Progress", "progress_allowed"]

_BAR_WIDTH = 30


def progress_allowed(*, machine_format: bool, to_file: bool) -> bool:
    if not sys.stderr.isatty():
        return False
    return not (machine_format and not to_file and not sys.stdout.isatty())


class Progress:
    def __init__(
        self, label: str, *, enabled: bool, delay: float = 1.0, stream: TextIO | None = None
    ) -> None:
        self.label = label
        self.enabled = enabled
        self.delay = delay
        self.stream = stream or sys.stderr
        self._started = time.monotonic()
        self._last_draw = 0.0
        self._drawn_width = 0

    def update(self, done: int | None = None, total: int | None = None) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        elapsed = now - self._started
        if elapsed < self.delay or now - self._last_draw < 0.1:
            return
        self._last_draw = now
        if done is not None and total:
            fraction = min(done / total, 1.0)
            filled = int(fraction * _BAR_WIDTH)
            bar = "#" * filled + "-" * (_BAR_WIDTH - filled)
            text = f"{self.label} [{bar}] {fraction:4.0%} {elapsed:5.1f}s"
        else:
            spinner = "|/-\\"[int(elapsed * 8) % 4]
            text = f"{self.label} {spinner} {elapsed:5.1f}s"
        self.stream.write("\r" + text.ljust(self._drawn_width))
        self.stream.flush()
        self._drawn_width = len(text)

    def close(self) -> None:
        if self._drawn_width:
            self.stream.write("\r" + " " * self._drawn_width + "\r")
            self.stream.flush()
            self._drawn_width = 0

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
