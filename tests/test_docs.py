"""Every ```python snippet in README.md and docs/*.md runs, each on its own, offline.

The snippets are found when the tests are collected, so a page added to docs/ is covered without
a change here. Each runs in a fresh interpreter in an empty temporary directory, with the
provider SDKs pointed at a loopback ``FakeProvider`` (its base URLs and dummy keys in the
environment) and ``TOKENMETER_DIR`` under that directory: a snippet that needs a key or writes
files works as written, and nothing reaches the network or the checkout. Text that is not meant
to run is fenced as ```text, ```console, ```toml or ```bash.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tokenmeter.testing import FakeProvider

REPO = Path(__file__).resolve().parent.parent
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)[ \t]*(?P<info>[^\n`]*)$")


def snippets(text: str) -> Iterator[tuple[int, str, str]]:
    """(first line number, info string, code) of every fenced block in markdown ``text``."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        fence, indent = opening.group("fence"), len(opening.group("indent"))
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            closing = _FENCE.match(lines[j])
            if closing and closing.group("fence").startswith(fence) and not closing.group("info"):
                break
            body.append(lines[j][indent:] if lines[j][:indent].isspace() else lines[j])
            j += 1
        yield i + 1, opening.group("info").strip().lower(), "\n".join(body) + "\n"
        i = j + 1


def _python_snippets() -> list[tuple[str, int, str]]:
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    found = []
    for page in pages:
        for line, info, code in snippets(page.read_text(encoding="utf-8")):
            language = info.split()[0] if info else ""
            if language in ("python", "py", "python3"):
                found.append((str(page.relative_to(REPO)), line, code))
    return found


SNIPPETS = _python_snippets()


def test_the_docs_have_python_snippets() -> None:
    assert len(SNIPPETS) >= 5  # the collector works: README and docs carry runnable examples


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProvider]:
    with FakeProvider() as provider:
        yield provider


@pytest.mark.parametrize(
    ("page", "line", "code"), SNIPPETS, ids=[f"{page}:{line}" for page, line, _ in SNIPPETS]
)
def test_snippet_runs_on_its_own(
    page: str, line: int, code: str, tmp_path: Path, fake: FakeProvider
) -> None:
    script = tmp_path / "snippet.py"
    script.write_text(code, encoding="utf-8")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TOKENMETER_", "OPENAI_", "ANTHROPIC_", "GEMINI_", "GOOGLE_"))
    }
    env.update(fake.environ())
    env["TOKENMETER_DIR"] = str(tmp_path / ".tokenmeter")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"{page}:{line} failed:\n{code}\n{done.stderr[-3000:]}"


def test_snippet_finder_reads_fences() -> None:
    """The extractor itself: language tags, indented fences, longer fences, unclosed ones."""
    text = (
        "intro\n```python\na = 1\n```\n"
        "- item\n\n  ```py\n  b = 2\n  ```\n"
        "````text\n```python\nnot code\n```\n````\n"
        "```\nbare\n```\n"
        "```python\nunclosed = True\n"
    )
    found = [(info, code) for _, info, code in snippets(text)]
    assert found == [
        ("python", "a = 1\n"),
        ("py", "b = 2\n"),
        ("text", "```python\nnot code\n```\n"),
        ("", "bare\n"),
        ("python", "unclosed = True\n"),
    ]


def test_a_failing_snippet_fails(tmp_path: Path) -> None:
    """The harness can fail: a snippet that raises is a non-zero exit."""
    script = tmp_path / "bad.py"
    script.write_text("raise SystemExit('boom')\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert done.returncode != 0


def test_every_command_line_option_is_in_docs_cli() -> None:
    """Every option of every subcommand is named in docs/cli.md: tail's -n, --interval and
    --follow, sessions' --limit and report's --limit were in --help only."""
    import argparse

    from tokenmeter.cli import build_parser

    text = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    [commands] = [
        action
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    ]
    missing = [
        f"{name} {option}"
        for name, parser in commands.choices.items()
        for action in parser._actions
        for option in action.option_strings
        if option not in ("-h", "--help") and not re.search(re.escape(option) + r"(?![\w-])", text)
    ]
    assert missing == []
