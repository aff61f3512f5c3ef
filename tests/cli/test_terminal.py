"""The command at a real terminal (a pseudo-terminal): tables that fit, colour, help, version."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tokenmeter._models import UsageRecord

from .conftest import SESSIONS, rec, run_module, subprocess_env, write_sqlite

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def at_terminal(args: list[str], cwd: Path, columns: int, **env: str) -> str:
    """Run with stdout and stderr on a pseudo-terminal ``columns`` wide; the screen text."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokenmeter", *args],
        cwd=cwd,
        env=subprocess_env(COLUMNS=str(columns), LINES="50", TERM="xterm-256color", **env),
        stdout=follower,
        stderr=follower,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(timeout=60)
    os.close(leader)
    assert proc.returncode == 0, b"".join(chunks).decode()
    return b"".join(chunks).decode()


@pytest.fixture
def long_names(tmp_path: Path) -> Path:
    records = [
        rec(
            1,
            "2026-11-01T10:00:00.000Z",
            "openai",
            "gpt-4o-2024-08-06",
            1000,
            100,
            "0.0325123",
            session=("sess-aaaaaaaaaaaa", "nightly summarisation"),
        ),
        rec(2, "2026-11-01T11:00:00.000Z", "openai", "text-embedding-3-small", 50, 0, "0.000001"),
        rec(
            3,
            "2026-11-01T12:00:00.000Z",
            "anthropic",
            "claude-sonnet-4-5-20250929",
            3000,
            900,
            "0.0001425",
            status="error",
            error="APIError",
        ),
    ]
    return write_sqlite(tmp_path / "usage.db", records, SESSIONS)


@pytest.mark.parametrize("columns", [80, 100, 130])
def test_report_fits_the_terminal_without_losing_names_or_costs(
    long_names: Path, tmp_path: Path, columns: int
) -> None:
    pytest.importorskip("rich")
    screen = ANSI.sub("", at_terminal(["report", "--source", str(long_names)], tmp_path, columns))
    lines = screen.splitlines()
    assert max(len(line) for line in lines) <= columns
    flat = screen.replace("\r\n", "\n")
    # What a reader came for is whole: names (wrapped if need be), calls, tokens and costs.
    for cost in ("$0.0325", "$0.000001", "$0.000143", "$0.0327"):
        assert cost in flat, (cost, flat)
    joined = re.sub(r"[│┃\s]+", "", flat)
    for name in ("gpt-4o-2024-08-06", "text-embedding-3-small", "claude-sonnet-4-5-20250929"):
        assert name in joined, name
    assert "Calls" in flat and "Total tokens" in flat
    if columns < 130:
        assert "hidden to fit the terminal: Reasoning" in flat


def test_wide_shows_every_column(long_names: Path, tmp_path: Path) -> None:
    pytest.importorskip("rich")
    screen = ANSI.sub(
        "", at_terminal(["report", "--source", str(long_names), "--wide"], tmp_path, 300)
    )
    assert "hidden" not in screen and "Reasoning" in screen and "Cache write" in screen


def test_sessions_and_tail_are_coloured(long_names: Path, tmp_path: Path) -> None:
    pytest.importorskip("rich")
    sessions = at_terminal(["sessions", "--source", str(long_names)], tmp_path, 160)
    tail = at_terminal(["tail", "--source", str(long_names)], tmp_path, 160)
    colour = re.compile(r"\x1b\[[0-9;]*3[0-9]m")  # a foreground colour, not bold or dim
    assert colour.search(sessions) and colour.search(tail)
    assert "nightly summarisation" in ANSI.sub("", sessions)
    assert "$0.0325" in ANSI.sub("", tail)
    plain = at_terminal(["tail", "--source", str(long_names)], tmp_path, 160, NO_COLOR="1")
    assert not colour.search(plain) and "$0.0325" in ANSI.sub("", plain)


def test_bare_command_shows_the_commands(tmp_path: Path) -> None:
    result = run_module(cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for command in ("report", "sessions", "session", "tail", "prices", "demo"):
        assert command in result.stdout


def test_version(tmp_path: Path) -> None:
    from importlib.metadata import version

    result = run_module("--version", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == f"tokenmeter {version('tokenmeter')}"


def test_cli_reads_the_configured_directory(tmp_path: Path) -> None:
    """[tool.tokenmeter] directory, like the library; TOKENMETER_DIR wins over it."""
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "pyproject.toml").write_text('[tool.tokenmeter]\ndirectory = "var/meter"\n')
    write_sqlite(
        project / "var" / "meter" / "usage.db",
        [rec(1, "2026-11-01T10:00:00.000Z", "openai", "gpt-4o", 10, 10, "0.5")],
        [],
    )
    result = run_module("report", "--format", "json", cwd=project / "src")
    assert result.returncode == 0, result.stderr
    assert '"calls": 1' in result.stdout
    other = tmp_path / "elsewhere"
    two = [rec(n, "2026-11-01T10:00:00.000Z", "openai", "gpt-4o", 1, 1, "0.5") for n in (1, 2)]
    write_sqlite(other / "usage.db", two, [])
    result = run_module(
        "report", "--format", "json", cwd=project / "src", TOKENMETER_DIR=str(other)
    )
    assert result.returncode == 0 and '"calls": 2' in result.stdout
    result = run_module("report", cwd=tmp_path)  # nothing configured, nothing there
    assert result.returncode == 1 and "tokenmeter demo" in result.stderr


def test_columns_that_are_zero_on_every_row_are_hidden_first(tmp_path: Path) -> None:
    """An all-zero Unpriced column says nothing: it goes before Share; an unpriced call keeps it."""
    pytest.importorskip("rich")
    priced = [
        rec(1, "2026-11-01T10:00:00.000Z", "openai", "gpt-4o-2024-08-06", 1000, 100, "0.0325"),
        rec(2, "2026-11-01T11:00:00.000Z", "openai", "text-embedding-3-small", 50, 0, "0.000001"),
    ]
    unpriced = [*priced, rec(3, "2026-11-01T12:00:00.000Z", "custom", "mine", 5, 5, None)]

    def hidden(records: list[UsageRecord]) -> list[str]:
        db = write_sqlite(tmp_path / f"usage-{len(records)}.db", records, SESSIONS)
        screen = ANSI.sub("", at_terminal(["report", "--source", str(db)], tmp_path, 100))
        note = re.search(r"hidden to fit the terminal: (.*?);", screen.replace("\r\n", " "), re.S)
        assert note, screen
        return [name.strip() for name in note.group(1).split(",")]

    all_priced = hidden(priced)
    assert all_priced.index("Unpriced") < all_priced.index("Share")
    assert "Unpriced" not in hidden(unpriced)


#: What a recorded name may hold that a terminal would act on: a window title (OSC), clear the
#: screen, a colour, a carriage return that overwrites the line, a bell, a C1 CSI.
_HOSTILE = "\x1b]0;PWNED\x07\x1b[2J\x1b[31m"
_INJECTED = ("\x1b]0;", "\x1b[2J", "\x1b[31mred", "\r", "\x07", "\x9b")


@pytest.fixture
def hostile_names(tmp_path: Path) -> Path:
    records = [
        rec(
            1,
            "2026-11-01T10:00:00.000Z",
            "openai",
            f"gpt{_HOSTILE}red\x1b[0m",
            1000,
            100,
            "0.0325",
            session=("sess-\x9b2J", "night\rly"),
            tags={"team": "core\x1b[2J"},
            status="error",
            error="API\x07Error",
        )
    ]
    return write_sqlite(tmp_path / "usage.db", records, SESSIONS)


def test_control_characters_in_the_data_never_reach_the_terminal(
    hostile_names: Path, tmp_path: Path
) -> None:
    """A model, session or tag name holding escape sequences (a provider or another program
    wrote them) is shown with U+FFFD in their place: it cannot retitle, clear or recolour the
    reader's terminal, piped or at a terminal, in any command that prints it. CSV carries the
    exact text into a pipe or file, but not onto a terminal."""
    commands = [
        ["report", "--detailed", "--by", "model,session,tag:team"],
        ["report", "--format", "markdown", "--detailed"],
        ["report", "--format", "html", "--by", "tag:team"],
        ["tail"],
        ["sessions"],
        ["session", "sess-\x9b2J"],
    ]
    for command in commands:
        result = run_module(*command, "--source", str(hostile_names), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        for sequence in _INJECTED:
            assert sequence not in result.stdout, (command, sequence)
        assert "\ufffd" in result.stdout, command
    csv = ["report", "--format", "csv", "--detailed", "--source", str(hostile_names)]
    assert "\x1b[2J" in run_module(*csv, cwd=tmp_path).stdout
    assert "\x1b" not in at_terminal(csv, tmp_path, 200)
    pytest.importorskip("rich")
    for command in (["report", "--detailed", "--by", "model,session"], ["tail"], ["sessions"]):
        screen = at_terminal([*command, "--source", str(hostile_names)], tmp_path, 200)
        for sequence in _INJECTED[:3]:
            assert sequence not in screen, (command, sequence)


def test_a_newline_in_recorded_text_never_starts_a_line_of_its_own(tmp_path: Path) -> None:
    """A name holding a newline (or a tab) would start a line of its own in a text table or a
    tail line: a model named ``x\\nTOTAL ... $0.00`` forges a row. It is shown as U+FFFD, piped
    or at a terminal, in every command that prints recorded text on lines (the terminal's rich
    tables of report, --detailed and sessions printed the rest of the name on a line of its
    own, inside the table's borders)."""
    forged = "FORGED  999  $0.00"
    records = [
        rec(
            1,
            "2026-11-01T10:00:00.000Z",
            "openai",
            f"gpt\n{forged}",
            1000,
            100,
            "0.0325",
            session=("sess-1", f"night\n{forged}"),
            tags={"team": f"a\t\n{forged}"},
            status="error",
            error=f"API\n{forged}",
        )
    ]
    db = write_sqlite(tmp_path / "usage.db", records, SESSIONS)
    alert = {"time": "2026-11-01T10:00:00.000Z", "rule": "budget", "scope": f"s\n{forged}"}
    (tmp_path / "alerts.jsonl").write_text(json.dumps(alert) + "\n")

    def forges(output: str) -> bool:
        """Whether the forged text starts anywhere but right after a shown U+FFFD."""
        return re.search("(?<!\ufffd)FORGED", ANSI.sub("", output)) is not None

    commands = [
        ["report", "--by", "model,session,tag:team", "--source", str(db)],
        ["report", "--detailed", "--source", str(db)],
        ["sessions", "--source", str(db)],
        ["tail", "--source", str(db)],
        ["alerts", "--source", str(tmp_path)],
    ]
    for command in commands:
        result = run_module(*command, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert forged in result.stdout and not forges(result.stdout), command
    pytest.importorskip("rich")
    for command in commands:
        assert not forges(at_terminal(command, tmp_path, 200)), command
