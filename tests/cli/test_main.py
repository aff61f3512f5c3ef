"""The command as users start it: console entry point, ``python -m tokenmeter``, the demo."""

from __future__ import annotations

import io
import json
import re
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

from tokenmeter.cli import _progress
from tokenmeter.cli._progress import Progress

from .conftest import RECORDS, REPO, SESSIONS, run_module, write_sqlite


def test_console_script_is_declared() -> None:
    text = (REPO / "pyproject.toml").read_text()
    assert 'tokenmeter = "tokenmeter.cli:main"' in text


def test_python_dash_m_help(tmp_path: Path) -> None:
    result = run_module("--help", cwd=tmp_path)
    assert result.returncode == 0
    for command in ("report", "sessions", "session", "tail", "prices", "demo"):
        assert command in result.stdout
    # every command reads a postgresql:// source too (cli.md, team.md); the help named two kinds
    assert "SQLite, JSONL or PostgreSQL data" in " ".join(result.stdout.split())


def test_every_report_format_has_a_renderer() -> None:
    from tokenmeter.cli._output import FORMATS
    from tokenmeter.cli._report import _RENDERERS

    assert set(_RENDERERS) == set(FORMATS)


def test_unknown_command_is_one_line(tmp_path: Path) -> None:
    result = run_module("reprot", cwd=tmp_path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["tail", "--interval", "x" * 100_000], 2),  # argparse's error, quoting the value
        (["report", "--source", "/" + "x" * 100_000], 1),  # a CliError, quoting the path
    ],
    ids=["argparse", "command"],
)
def test_an_error_quoting_a_huge_argument_is_one_short_line(
    args: list[str], code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """The argument was quoted whole: a 100 KB value filled the terminal; a path longer than
    any file system takes was a traceback (OSError: File name too long)."""
    from tokenmeter.cli import main

    try:
        status = main(args)
    except SystemExit as exc:
        status = exc.code
    err = capsys.readouterr().err
    assert status == code and err.startswith("tokenmeter: error: ")
    assert len(err.splitlines()) == 1 and len(err) <= 1_001


def test_piped_json_has_no_progress_or_colour(tmp_path: Path) -> None:
    from .conftest import RECORDS, write_jsonl

    path = write_jsonl(tmp_path / "usage.jsonl", RECORDS * 1)
    result = run_module("report", "--source", str(path), "--format", "json", cwd=tmp_path)
    assert result.returncode == 0 and result.stderr == ""
    assert json.loads(result.stdout)["totals"]["calls"] == 6


def test_progress_draws_after_delay_and_wipes_itself() -> None:
    stream = io.StringIO()
    with Progress("reading usage.jsonl", enabled=True, delay=0, stream=stream) as progress:
        progress.update(50, 100)
    text = stream.getvalue()
    assert "reading usage.jsonl [###############---------------]  50%" in text
    assert text.endswith("\r") and text.split("\r")[-2].strip() == ""


def test_progress_is_silent_for_quick_reads() -> None:
    stream = io.StringIO()
    with Progress("x", enabled=True, delay=60, stream=stream) as progress:
        progress.update(1, 2)
    assert stream.getvalue() == ""


@pytest.mark.parametrize(
    ("stdout_tty", "stderr_tty", "machine", "to_file", "allowed"),
    [
        (True, True, False, False, True),
        (False, True, False, False, True),  # table piped: the bar is on stderr, a terminal
        (False, True, True, False, False),  # json piped: never
        (False, True, True, True, True),  # json to -o FILE
        (True, False, False, False, False),  # stderr not a terminal: never
    ],
)
def test_progress_allowed(
    monkeypatch: pytest.MonkeyPatch,
    stdout_tty: bool,
    stderr_tty: bool,
    machine: bool,
    to_file: bool,
    allowed: bool,
) -> None:
    class Stream(io.StringIO):
        def __init__(self, tty: bool) -> None:
            super().__init__()
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    monkeypatch.setattr(_progress.sys, "stdout", Stream(stdout_tty))
    monkeypatch.setattr(_progress.sys, "stderr", Stream(stderr_tty))
    assert _progress.progress_allowed(machine_format=machine, to_file=to_file) is allowed


def test_demo_runs_offline_and_reports(tmp_path: Path) -> None:
    real = tmp_path / "real"
    result = run_module("demo", cwd=tmp_path, TOKENMETER_DIR=str(real))
    assert result.returncode == 0, result.stderr
    # Fake calls never land in the application's data: the demo has its own directory.
    assert not real.exists()
    data = tmp_path / ".tokenmeter-demo"
    assert "TOTAL" in result.stdout
    for provider in ("openai", "anthropic", "google"):
        assert f"\n{provider}" in result.stdout
    with sqlite3.connect(data / "usage.db") as conn:
        sessions = dict(
            conn.execute(
                "SELECT session_name, COUNT(*) FROM records GROUP BY session_name"
            ).fetchall()
        )
        tags = {row[0] for row in conn.execute("SELECT tags FROM records")}
        cost = conn.execute("SELECT SUM(cost_pusd) FROM records").fetchone()[0]
    assert sessions.keys() == {"demo-chat", "demo-search"}
    assert any('"feature":"chat"' in t for t in tags)
    assert cost > 0

    listed = run_module("sessions", "--format", "json", "--source", str(data), cwd=tmp_path)
    names = {row["name"] for row in json.loads(listed.stdout, parse_float=Decimal)}
    assert {"demo-chat", "demo-search"} <= names


def test_demo_dir_option(tmp_path: Path) -> None:
    chosen = tmp_path / "chosen"
    result = run_module("demo", "--dir", str(chosen), "--format", "json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["totals"]["calls"] == 13
    assert (chosen / "usage.db").exists() and not (tmp_path / ".tokenmeter-demo").exists()


@pytest.mark.parametrize(
    ("dir_arg", "data_dir"),
    [
        ("data", "data"),  # TOKENMETER_DIR=data, the demo --dir data
        ("data/../data", "data"),  # the same folder spelt another way
        ("link", "data"),  # a link to it
        (None, ".tokenmeter-demo"),  # the demo's default directory set as the data directory
        (".tokenmeter", None),  # the default data directory, not made yet
    ],
    ids=["same", "spelt-otherwise", "link", "default-demo-dir", "not-made-yet"],
)
def test_demo_refuses_to_record_into_the_data_directory(
    tmp_path: Path, dir_arg: str | None, data_dir: str | None
) -> None:
    """docs/cli.md: the demo 'records into its own directory, never into your data'; `tokenmeter
    demo --dir .tokenmeter` (the configured data directory, 1 real call at $0.0075) added the
    13 fake calls to the real usage.db: `tokenmeter report` then showed 14 calls, $0.00883."""
    data = tmp_path / (data_dir or ".tokenmeter")
    if data_dir is not None:
        data.mkdir()
        write_sqlite(data / "usage.db", RECORDS[:1], SESSIONS)
    (tmp_path / "link").symlink_to("data")
    env = {} if data_dir is None else {"TOKENMETER_DIR": data_dir}
    args = [] if dir_arg is None else ["--dir", dir_arg]
    result = run_module("demo", "--format", "json", *args, cwd=tmp_path, **env)
    assert result.returncode == 2 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(f"tokenmeter: error: {'--dir ' if dir_arg else ''}{dir_arg or data_dir}")
    assert "is your data directory" in line and "pass another --dir" in line
    if data_dir is None:
        assert not data.exists()
    else:
        with sqlite3.connect(data / "usage.db") as conn:
            assert conn.execute("SELECT COUNT(*) FROM records").fetchone() == (1,)


def test_the_commands_the_demo_suggests_next_read_the_demo(tmp_path: Path) -> None:
    """The demo's last line names commands to try: 'tokenmeter sessions' and 'tokenmeter report
    -o report.html' read the application's data, not the demo's, and failed at once for a new
    user ('no usage data at .tokenmeter/usage.db'). Each is run here as the line spells it."""
    import shlex

    result = run_module("demo", "--dir", "my demo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [hint] = [line for line in result.stderr.splitlines() if line.startswith("Next: ")]
    commands = re.split(r"\s+\(or: |, |\)$", hint.removeprefix("Next: ").strip())
    commands = [command.strip() for command in commands if command.strip()]
    assert len(commands) == 3, hint
    for command in commands:
        program, *args = shlex.split(command)
        assert program == "tokenmeter", command
        done = run_module(*args, cwd=tmp_path)
        assert done.returncode == 0, f"{command}: {done.stderr}"
        assert "demo-chat" in done.stdout or (tmp_path / "report.html").exists(), command
    assert "demo-chat" in (tmp_path / "report.html").read_text(encoding="utf-8")


def test_a_report_after_the_demo_without_source_names_the_demos_records(tmp_path: Path) -> None:
    """getting-started.md runs `tokenmeter demo`, then `tokenmeter report --by model`: that reads
    the application's store, empty on a first run, and the error sent the user back to the demo
    they had just run ('`tokenmeter demo` tries it on fake calls')."""
    demo = run_module("demo", "--format", "json", cwd=tmp_path)
    assert demo.returncode == 0, demo.stderr
    result = run_module("report", "--by", "model", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"tokenmeter: error: no usage data at {Path('.tokenmeter', 'usage.db')} (the demo's "
        "records are in .tokenmeter-demo: pass --source .tokenmeter-demo)"
    ]
    again = run_module("report", "--by", "model", "--source", ".tokenmeter-demo", cwd=tmp_path)
    assert again.returncode == 0 and "gpt-4o-mini" in again.stdout, again.stderr


def test_demo_writes_nothing_outside_its_directory(tmp_path: Path) -> None:
    """docs/cli.md: the demo 'records into its own directory, never into your data'. The
    application's settings still sent its fake calls to the team's PostgreSQL database and
    OpenTelemetry collector and appended its sessions to the application's state file; only
    the sinks that write into the demo's directory are kept, and its state file is there,
    under the name docs/cli.md gives it (it said only "a configured state file is written there
    too": a user looked for their file's name in vain)."""
    state = tmp_path / "my_state.md"
    result = run_module(
        "demo",
        "--format",
        "json",
        cwd=tmp_path,
        TOKENMETER_SINKS="sqlite,jsonl,markdown,postgres,otel",
        TOKENMETER_PG_DSN="postgresql://tokenmeter@127.0.0.1:9/nowhere?connect_timeout=1",
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9",
        TOKENMETER_STATE_FILE=str(state),
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["totals"]["calls"] == 13
    assert not state.exists()
    assert "127.0.0.1:9" not in result.stderr and "postgres" not in result.stderr, result.stderr
    demo = tmp_path / ".tokenmeter-demo"
    assert {"usage.db", "usage.jsonl", "journal", "workflow_state.md"} <= {
        path.name for path in demo.iterdir()
    }
    demo_row = next(
        line
        for line in (REPO / "docs" / "cli.md").read_text(encoding="utf-8").splitlines()
        if line.startswith("| `tokenmeter demo")
    )
    assert "state file is written there too, as `workflow_state.md`" in demo_row


def test_demo_reports_whatever_file_sinks_are_configured(tmp_path: Path) -> None:
    """With only the markdown journal (or a team's postgres) configured, the demo recorded
    nothing it could report on and ended in 'the demo recorded nothing readable ...
    (TOKENMETER_SINKS must include sqlite or jsonl)', exit 1: it adds SQLite to report from."""
    result = run_module(
        "demo", "--format", "json", cwd=tmp_path, TOKENMETER_SINKS="markdown,postgres"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["totals"]["calls"] == 13
    demo = tmp_path / ".tokenmeter-demo"
    assert (demo / "journal" / "token_usage.md").exists() and (demo / "usage.db").exists()


def test_demo_calls_only_the_providers_that_are_metered(tmp_path: Path) -> None:
    """With the providers setting (TOKENMETER_PROVIDERS=openai) instrument() patched OpenAI
    only, yet the demo called every installed SDK and named them all: the others' calls went
    unmetered (with --live, paid calls that no record shows)."""
    result = run_module("demo", "--format", "json", cwd=tmp_path, TOKENMETER_PROVIDERS="openai")
    assert result.returncode == 0, result.stderr
    assert "tokenmeter demo: openai -> .tokenmeter-demo/" in result.stderr.splitlines()
    report = json.loads(result.stdout)
    assert report["totals"]["calls"] == 4
    assert {row["provider"] for row in report["rows"]} == {"openai"}


def test_demo_directory_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    """SPEC §4: files tokenmeter creates are its owner's only (directories 0700); the demo made
    its directory itself, and with the umask's mode (0755 here, so session names, tags and the
    costs of a --live run were readable by every user)."""
    import os
    import stat

    chosen = tmp_path / "made" / "for the demo"
    old = os.umask(0o022)
    try:
        result = run_module("demo", "--dir", str(chosen), "--format", "json", cwd=tmp_path)
    finally:
        os.umask(old)
    assert result.returncode == 0, result.stderr
    for directory in (chosen, chosen.parent):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory


def test_demo_with_tokenmeter_disabled_says_so(tmp_path: Path) -> None:
    """With TOKENMETER_DISABLED=1 the demo made its calls unmetered, then blamed the sinks:
    'the demo recorded nothing readable ... (TOKENMETER_SINKS must include sqlite or jsonl)'."""
    result = run_module("demo", cwd=tmp_path, TOKENMETER_DISABLED="1")
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert result.stderr.splitlines() == [
        "tokenmeter: error: tokenmeter is disabled (TOKENMETER_DISABLED): the demo would record"
        " nothing"
    ]


def test_demo_dir_that_cannot_be_one_is_one_line(tmp_path: Path) -> None:
    """``--dir`` naming a file (or a place no directory can be made): the demo waited for its
    sinks for 10 seconds and printed a screenful of rejected records; now one line, at once."""
    a_file = tmp_path / "usage.db"
    a_file.write_bytes(b"")
    for where in (a_file, a_file / "below"):
        result = run_module("demo", "--dir", str(where), cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert result.stderr.startswith(f"tokenmeter: error: --dir {where}: cannot record there")
    assert a_file.read_bytes() == b""


def test_demo_with_a_bad_setting_is_one_line(tmp_path: Path) -> None:
    """A bad ``TOKENMETER_*`` setting made ``configure()`` fail in the demo: a traceback."""
    result = run_module(
        "demo",
        "--dir",
        str(tmp_path / "demo"),
        cwd=tmp_path,
        TOKENMETER_BUDGETS='[{"limit_usd": 5, "period": "fortnight"}]',
    )
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert result.stderr.splitlines() == [
        "tokenmeter: error: tokenmeter setting 'budgets' from TOKENMETER_BUDGETS: budgets[0].period"
        " must be one of call, session, hour, day, week, month, total, got 'fortnight'"
    ]


def test_live_demo_without_keys_is_a_clear_error(tmp_path: Path) -> None:
    result = run_module(
        "demo",
        "--live",
        cwd=tmp_path,
        TOKENMETER_DIR=str(tmp_path / "d"),
        OPENAI_API_KEY="",
        ANTHROPIC_API_KEY="",
        GEMINI_API_KEY="",
        GOOGLE_API_KEY="",
    )
    assert result.returncode == 1
    assert result.stderr.strip().startswith("tokenmeter: error: --live needs")


def _run_in_terminal(args: list[str], cwd: Path, **env: str) -> str:
    """Run with stdout and stderr on a pseudo-terminal, as a person at a shell would."""
    import os
    import pty
    import subprocess
    import sys

    from .conftest import subprocess_env

    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokenmeter", *args],
        cwd=cwd,
        env=subprocess_env(COLUMNS="200", TERM="xterm-256color", **env),
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
    assert proc.returncode == 0
    return b"".join(chunks).decode()


@pytest.mark.parametrize("no_color", [False, True])
def test_terminal_table_uses_rich(tmp_path: Path, no_color: bool) -> None:
    pytest.importorskip("rich")
    from .conftest import RECORDS, SESSIONS, rec, write_sqlite

    markup = rec(60, "2026-11-04T00:00:00.000Z", "openai", "[bold]boom[/bold]", 1, 1, "0.5")
    db = write_sqlite(tmp_path / "usage.db", [*RECORDS, markup], SESSIONS)
    extra = {"NO_COLOR": "1"} if no_color else {}
    screen = _run_in_terminal(["report", "--source", str(db)], tmp_path, **extra)
    assert "┃" in screen or "│" in screen  # rich's box drawing, not the plain layout
    assert "$1.76" in screen and "gpt-4o-mini" in screen
    assert "[bold]boom[/bold]" in screen  # user strings are never rich markup
    coloured = re.search(r"\x1b\[[0-9;]*3[0-7]m", screen) is not None  # a foreground colour
    assert coloured is not no_color


@pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
def test_arguments_that_are_not_utf8_are_one_line(kind: str, tmp_path: Path) -> None:
    """A byte that is not UTF-8 in a name to match (a Latin-1 terminal): SQLite cannot bind it,
    and it can match nothing recorded; it is a usage error naming the argument, never a traceback.
    (Paths may hold any bytes: ``--source`` and ``-o`` take them.)"""
    from .conftest import RECORDS, SESSIONS, write_jsonl, write_sqlite

    if kind == "sqlite":
        source = write_sqlite(tmp_path / "usage.db", RECORDS, SESSIONS)
    else:
        source = write_jsonl(tmp_path / "usage.jsonl", RECORDS)
    bad = "gpt\udcff"  # the byte 0xff, as Python decodes it from argv
    cases = [
        (["report", "--model", bad], "--model"),
        (["report", "--provider", bad], "--provider"),
        (["report", "--session-name", bad], "--session-name"),
        (["report", "--tag", f"team={bad}"], "--tag"),
        (["report", "--tag", f"{bad}=x"], "--tag"),
        (["report", "--by", f"tag:{bad}"], "--by"),
        (["sessions", "--session-name", bad], "--session-name"),
        (["session", bad], "ID"),
    ]
    for args, name in cases:
        result = run_module(*args, "--source", str(source), cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1, args
        assert name in result.stderr and "UTF-8" in result.stderr, (args, result.stderr)
    target = tmp_path / "r\udcff.csv"
    result = run_module("report", "--source", str(source), "-o", str(target), cwd=tmp_path)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "command", [["report"], ["sessions"], ["session", "x"], ["tail"], ["alerts"]]
)
def test_an_empty_source_is_a_usage_error(command: list[str], tmp_path: Path) -> None:
    """``--source "$UNSET_VARIABLE"`` read the default data (or ``./alerts.jsonl``) as if no
    ``--source`` had been given: a report of other data than the one named, without a word."""
    from .conftest import RECORDS, SESSIONS, write_sqlite

    write_sqlite(tmp_path / ".tokenmeter" / "usage.db", RECORDS, SESSIONS)
    result = run_module(*command, "--source", "", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert result.stderr.splitlines() == ["tokenmeter: error: argument --source: must not be empty"]


@pytest.mark.parametrize(
    "args",
    [
        ["report", "-o", ""],
        ["sessions", "-o", ""],
        ["session", "sess-chat", "-o", ""],
        ["demo", "--dir", ""],
        ["run", "--dir", "", "--", "true"],
    ],
)
def test_an_empty_output_or_dir_is_a_usage_error(args: list[str], tmp_path: Path) -> None:
    """``-o ""`` failed as "cannot write .: Is a directory" (exit 1, as if the data were bad);
    ``demo --dir ""`` recorded into the default demo directory and ``run --dir ""`` into the
    current directory itself, without a word."""
    from .conftest import RECORDS, SESSIONS, write_sqlite

    write_sqlite(tmp_path / ".tokenmeter" / "usage.db", RECORDS, SESSIONS)
    result = run_module(*args, cwd=tmp_path)
    option = "-o/--output" if "-o" in args else "--dir"
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert result.stderr.splitlines() == [
        f"tokenmeter: error: argument {option}: must not be empty"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tokenmeter"]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_on_stdout_is_one_line(tmp_path: Path) -> None:
    """``tokenmeter report > file`` on a full disk: one line and status 1, not a traceback (nor
    a second complaint when Python flushes stdout at exit)."""
    import subprocess
    import sys

    from .conftest import RECORDS, SESSIONS, subprocess_env, write_sqlite

    source = write_sqlite(tmp_path / "usage.db", RECORDS, SESSIONS)
    (tmp_path / "alerts.jsonl").write_text('{"time": "2026-11-01T00:00:00Z", "rule": "r"}\n')
    commands = [
        ["report"],
        ["report", "--format", "json"],
        ["report", "--format", "csv"],
        ["sessions"],
        ["session", "sess-chat"],
        ["tail"],
        ["tail", "--format", "json"],
        ["alerts"],
    ]
    for command in commands:
        where = tmp_path if command == ["alerts"] else source
        with open("/dev/full", "w") as full:
            result = subprocess.run(
                [sys.executable, "-m", "tokenmeter", *command, "--source", str(where)],
                stdout=full,
                stderr=subprocess.PIPE,
                text=True,
                cwd=tmp_path,
                env=subprocess_env(),
                timeout=60,
            )
        assert result.returncode == 1, (command, result.stderr)
        assert result.stderr.splitlines() == [
            "tokenmeter: error: cannot write to standard output: No space left on device"
        ], command


def test_closed_stdout_or_stderr_is_no_traceback(tmp_path: Path) -> None:
    """Started with stderr closed (``2>&-``, as from some schedulers), a report crashed on the
    progress bar's ``sys.stderr.isatty()`` and its warnings went to stdout, into the JSON; with
    stdout closed (``>&-``), a traceback. Now: the output alone, and one line."""
    import shlex
    import subprocess
    import sys

    from .conftest import RECORDS, append_lines, subprocess_env, write_jsonl

    source = append_lines(write_jsonl(tmp_path / "usage.jsonl", RECORDS), ["torn"])

    def shell(args: str, redirect: str) -> subprocess.CompletedProcess[str]:
        command = f"exec {shlex.quote(sys.executable)} -m tokenmeter {args} {redirect}"
        return subprocess.run(
            ["sh", "-c", command],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=subprocess_env(),
            timeout=60,
        )

    q = shlex.quote
    result = shell(f"report --format json --source {q(str(source))}", "2>&-")
    assert result.returncode == 0
    assert json.loads(result.stdout)["skipped_lines"] == 1  # the warning is not in it
    result = shell(f"report --source {q(str(tmp_path / 'nope.db'))}", "2>&-")
    assert (result.returncode, result.stdout) == (1, "")
    for args in (f"report --source {q(str(source))}", f"tail --source {q(str(source))}", "config"):
        result = shell(args, ">&-")
        assert result.returncode == 1, result.stderr
        assert result.stderr.splitlines()[-1:] == [
            "tokenmeter: error: standard output is closed"
        ], result.stderr
    report = tmp_path / "report.csv"
    result = shell(f"report --source {q(str(source))} -o {q(str(report))}", ">&-")
    assert result.returncode == 0 and report.exists(), result.stderr


def test_a_name_stdout_cannot_encode_is_replaced_not_a_traceback(tmp_path: Path) -> None:
    """stdout in ASCII or cp1252 (``PYTHONIOENCODING`` in CI, a Latin-1 locale, a redirect on
    Windows) and a session named with an emoji: report, sessions, tail, ``--detailed`` and CSV
    died with a UnicodeEncodeError traceback, the report cut at the name. Now the name is
    printed with ``?`` for what the encoding lacks, and the command succeeds."""
    import subprocess
    import sys

    from .conftest import rec, subprocess_env, write_sqlite

    name = "deploy \U0001f680 eu"
    record = rec(
        1,
        "2026-11-01T00:00:00.000Z",
        "openai",
        "gpt-4o",
        1000,
        500,
        "0.0075",
        session=("s-1", name),
    )
    source = write_sqlite(tmp_path / "usage.db", [record], [])
    commands = [
        ["report", "--by", "session"],
        ["report", "--by", "session", "--format", "markdown"],
        ["report", "--by", "session", "--format", "csv"],
        ["report", "--detailed"],
        ["sessions"],
        ["tail"],
    ]
    for encoding in ("ascii", "cp1252"):
        for command in commands:
            result = subprocess.run(
                [sys.executable, "-m", "tokenmeter", *command, "--source", str(source)],
                capture_output=True,
                cwd=tmp_path,
                env=subprocess_env(PYTHONIOENCODING=encoding),
                timeout=60,
            )
            assert (result.returncode, result.stderr) == (0, b""), (encoding, command)
            assert b"deploy ? eu" in result.stdout, (encoding, command)
