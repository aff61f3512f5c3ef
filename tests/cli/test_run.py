"""``tokenmeter run``: real subprocesses against FakeProvider. The programs it runs never import
tokenmeter; what they spend is read back from the SQLite file the run wrote.

Prices come from an override in the working directory's pyproject.toml (1 and 2 USD per million
input and output tokens for ``m-test``), so every cost here is plain arithmetic. Nothing waits
for time to pass: each test reads the program's output line by line or waits for it to end.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tokenmeter.cli import main
from tokenmeter.testing import FakeProvider

_PYPROJECT = """
[tool.tokenmeter]
prices = {"m-test" = {input_per_mtok = 1, output_per_mtok = 2}}
"""

#: One call per provider SDK, 1000 input and 500 output tokens each ($0.002 at m-test's price).
_CALLS = """
import anthropic, openai
openai.OpenAI(max_retries=0).chat.completions.create(model="m-test", messages=[])
anthropic.Anthropic(max_retries=0).messages.create(model="m-test", max_tokens=5, messages=[])
"""


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeProvider]:
    (tmp_path / "pyproject.toml").write_text(_PYPROJECT)
    with FakeProvider(
        openai_usage={"prompt_tokens": 1000, "completion_tokens": 500},
        anthropic_usage={
            "input_tokens": 1000,
            "output_tokens": 500,
            "cache_read_input_tokens": 0,
            "cache_creation_5m": 0,
            "cache_creation_1h": 0,
        },
        models={"m-test": "m-test"},
    ) as provider:
        yield provider


def _script(path: Path, body: str) -> Path:
    path.write_text(textwrap.dedent(body))
    return path


def _env(fake: FakeProvider, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENMETER_")}
    return {**env, **fake.environ(), **extra}


def _run(args: list[str], env: dict[str, str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tokenmeter", "run", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        **kwargs,
    )


def _records(db: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT model_provider, session_id, session_name, tags, input_tokens, output_tokens "
            "FROM records ORDER BY model_provider"
        ).fetchall()


def test_a_program_that_never_imports_tokenmeter_is_metered(
    fake: FakeProvider, tmp_path: Path
) -> None:
    app = _script(
        tmp_path / "app.py",
        _CALLS
        + """
import sys
assert "tokenmeter" not in sys.argv[0]
print("program output")
sys.exit(3)
""",
    )
    result = _run(
        [
            "--dir",
            "usage",
            "--session",
            "nightly",
            "--tag",
            "team=search",
            "--",
            sys.executable,  # "python" on PATH may be another interpreter (a pyenv shim)
            app.name,
        ],
        _env(fake),
        cwd=tmp_path,
    )
    assert result.returncode == 3  # the program's exit status, passed through
    assert result.stdout == "program output\n"  # stdout is the program's alone
    rows = _records(tmp_path / "usage" / "usage.db")
    assert [row[0] for row in rows] == ["anthropic", "openai"]
    (run_id,) = {row[1] for row in rows}
    assert run_id.startswith("run_")
    for _, _, name, tags, inp, out in rows:
        tagged = {"team": "search", "tokenmeter_run": run_id}  # the run's id: --budget's scope
        assert (name, json.loads(tags), inp, out) == ("nightly", tagged, 1000, 500)
    assert "tokenmeter: 'nightly' (exit status 3)" in result.stderr
    assert _summary_row(result.stderr, "m-test") == ["m-test", "2", "2,000", "1,000", "$0.004"]
    assert _summary_row(result.stderr, "total") == ["total", "2", "2,000", "1,000", "$0.004"]
    assert run_id in result.stderr


def _summary_row(stderr: str, first: str) -> list[str]:
    for line in stderr.splitlines():
        cells = line.split()
        if cells and cells[0] == first:
            return cells
    raise AssertionError(f"no {first!r} row in:\n{stderr}")


def test_child_processes_are_covered(fake: FakeProvider, tmp_path: Path) -> None:
    _script(tmp_path / "child.py", _CALLS)
    parent = _script(
        tmp_path / "parent.py",
        _CALLS
        + """
import shlex, subprocess, sys
subprocess.run([sys.executable, "child.py"], check=True)
subprocess.run(["sh", "-c", f"{shlex.quote(sys.executable)} child.py"], check=True)  # a shell too
""",
    )
    result = _run(["--", sys.executable, parent.name], _env(fake), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = _records(tmp_path / ".tokenmeter" / "usage.db")
    assert len(rows) == 6
    assert len({row[1] for row in rows}) == 1  # one run, one session, across three processes
    assert _summary_row(result.stderr, "total")[1] == "6"
    assert "calls from 3 processes" in result.stderr


def test_a_child_started_elsewhere_records_into_the_runs_store_with_its_prices(
    fake: FakeProvider, tmp_path: Path
) -> None:
    """Without --dir, a process of the program started in another directory wrote into its own
    ./.tokenmeter, unpriced (it found no pyproject.toml there): 2 of 6 calls missing from the
    run's store, and a --budget of the run not shared with it (it spent 2.25x the budget)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _script(tmp_path / "child.py", _CALLS)
    parent = _script(
        tmp_path / "parent.py",
        _CALLS
        + f"""
import subprocess, sys
subprocess.run([sys.executable, {str(tmp_path / "child.py")!r}], check=True, cwd={str(elsewhere)!r})
""",
    )
    result = _run(["--", sys.executable, parent.name], _env(fake), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not (elsewhere / ".tokenmeter").exists()
    with sqlite3.connect(tmp_path / ".tokenmeter" / "usage.db") as conn:
        costs = conn.execute("SELECT estimated_cost_usd FROM records").fetchall()
    assert costs == [("0.002",)] * 4


def test_a_child_started_elsewhere_reads_a_relative_tokenmeter_prices_of_the_run(
    fake: FakeProvider, tmp_path: Path
) -> None:
    """``TOKENMETER_PRICES=prices.toml`` was kept relative: a process of the program started in
    another directory said "not metering this process: prices.toml: cannot read prices file"
    and ran unmetered, its calls missing from the run's store and outside its --budget. A
    relative ``TOKENMETER_STATE_FILE`` was written in that directory, not the run's."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "prices.toml").write_text('["m-test"]\ninput_per_mtok = 4\noutput_per_mtok = 4\n')
    _script(tmp_path / "child.py", _CALLS)
    parent = _script(
        tmp_path / "parent.py",
        f"""
import subprocess, sys
subprocess.run([sys.executable, {str(tmp_path / "child.py")!r}], check=True, cwd={str(elsewhere)!r})
""",
    )
    env = _env(fake, TOKENMETER_PRICES="prices.toml", TOKENMETER_STATE_FILE="state.md")
    result = _run(["--", sys.executable, parent.name], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "not metering" not in result.stderr
    with sqlite3.connect(tmp_path / ".tokenmeter" / "usage.db") as conn:
        costs = conn.execute("SELECT estimated_cost_usd FROM records").fetchall()
    assert costs == [("0.006",)] * 2
    # A relative state file likewise: the run's one, not the worker's own worker/state.md.
    assert (tmp_path / "state.md").exists() and not (elsewhere / "state.md").exists()


def test_sigterm_is_forwarded_and_the_exit_status_passed(
    fake: FakeProvider, tmp_path: Path
) -> None:
    app = _script(
        tmp_path / "app.py",
        _CALLS
        + """
import signal, sys

def stop(signum, frame):
    print("stopping on", signum, flush=True)
    sys.exit(7)

signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
while True:
    signal.pause()
""",
    )
    run = subprocess.Popen(
        [sys.executable, "-m", "tokenmeter", "run", "--", sys.executable, app.name],
        env=_env(fake),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert run.stdout is not None and run.stderr is not None
    assert run.stdout.readline() == "ready\n"  # the handler is in place
    run.send_signal(signal.SIGTERM)  # to `tokenmeter run`, not to the program
    out, err = run.communicate()
    assert out == f"stopping on {int(signal.SIGTERM)}\n"
    assert run.returncode == 7
    assert _summary_row(err, "total")[1] == "2"


def test_a_run_started_with_sigchld_ignored_ends_with_the_program(tmp_path: Path) -> None:
    """SIGCHLD ignored by whoever started the run (a supervisor; SIG_IGN is inherited across
    exec): the program was reaped unannounced and the run waited for ever. It now ends with the
    program's status, and the program still has SIGCHLD ignored, as it would without the run."""
    app = _script(
        tmp_path / "app.py",
        "import signal, sys\n"
        "sys.exit(7 if signal.getsignal(signal.SIGCHLD) is signal.SIG_IGN else 3)\n",
    )
    run = subprocess.run(
        [sys.executable, "-m", "tokenmeter", "run", "--", sys.executable, app.name],
        env={k: v for k, v in os.environ.items() if not k.startswith("TOKENMETER_")},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,  # the hang, as a failure
        preexec_fn=lambda: signal.signal(signal.SIGCHLD, signal.SIG_IGN),
    )
    assert run.returncode == 7, run.stderr
    assert "(exit status 7)" in run.stderr


def test_a_program_killed_by_a_signal_still_has_its_calls_and_so_does_the_run(
    fake: FakeProvider, tmp_path: Path
) -> None:
    app = _script(
        tmp_path / "app.py",
        _CALLS
        + """
import signal
print("ready", flush=True)
while True:
    signal.pause()
""",
    )
    run = subprocess.Popen(
        [sys.executable, "-m", "tokenmeter", "run", "--", sys.executable, app.name],
        env=_env(fake),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert run.stdout is not None
    assert run.stdout.readline() == "ready\n"
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate()
    assert run.returncode == -signal.SIGTERM  # died of the same signal, after its summary
    assert "killed by signal 15" in err
    assert _summary_row(err, "total")[1] == "2"
    assert len(_records(tmp_path / ".tokenmeter" / "usage.db")) == 2


def test_a_program_killed_by_sigkill_is_reported_and_the_run_dies_of_it_too(
    fake: FakeProvider, tmp_path: Path
) -> None:
    """SIGKILL (the OOM killer): its disposition cannot be set, and passing it on raised a
    traceback after the summary; the run now dies of it as of any other signal."""
    app = _script(tmp_path / "app.py", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    run = _run(["--", sys.executable, app.name], _env(fake), cwd=tmp_path, timeout=120)
    assert run.returncode == -signal.SIGKILL
    assert "killed by signal 9" in run.stderr and "Traceback" not in run.stderr


def test_a_program_killed_after_its_calls_were_stored_has_them_in_the_summary(
    fake: FakeProvider, tmp_path: Path
) -> None:
    """A program killed (SIGKILL by the OOM killer; ``os._exit``) after its calls were written
    never flushes: the store held its 2 calls, and the summary said "no LLM calls were
    recorded" and "within the budget". The run's totals are now left after every batch the
    writer takes (a second batch within a second of the first was left out: ecac553). The
    program waits (30 s at most) for each call to be stored and in its totals, as it is once
    the writers have taken it, then dies."""
    app = _script(
        tmp_path / "app.py",
        """
import json, os, pathlib, signal, sqlite3, time
import anthropic, openai
totals = pathlib.Path(os.environ["TOKENMETER_RUN_TOTALS"])
def stored(count):
    try:
        with sqlite3.connect(".tokenmeter/usage.db") as db:
            return db.execute("SELECT count(*) FROM records").fetchone()[0] == count
    except sqlite3.Error:
        return False
def left(count):  # the run's totals file says so (what the run reads after the kill)
    try:
        return sum(
            totals["calls"]
            for path in totals.glob("*.json")
            for totals in json.loads(path.read_text())["models"].values()
        ) == count
    except (OSError, ValueError):
        return False
def wait(count):
    for _ in range(300):
        if stored(count) and left(count):
            return
        time.sleep(0.1)
openai.OpenAI(max_retries=0).chat.completions.create(model="m-test", messages=[])
wait(1)  # a batch of its own: the next call's batch comes within a second of this one
anthropic.Anthropic(max_retries=0).messages.create(model="m-test", max_tokens=5, messages=[])
wait(2)
os.kill(os.getpid(), signal.SIGKILL)
""",
    )
    run = _run(["--budget", "5", "--", sys.executable, app.name], _env(fake), cwd=tmp_path)
    assert run.returncode == -signal.SIGKILL
    assert "no LLM calls were recorded" not in run.stderr
    assert _summary_row(run.stderr, "total")[1] == "2"
    assert len(_records(tmp_path / ".tokenmeter" / "usage.db")) == 2


def _can_start_a_pid_namespace() -> bool:
    """``unshare --pid`` works here (root, or user namespaces allowed), as in a container."""
    if shutil.which("unshare") is None:
        return False
    probe = ["unshare", "--fork", "--pid", "--map-root-user", "true"]
    if os.geteuid() == 0:
        probe.remove("--map-root-user")
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


@pytest.mark.skipif(not _can_start_a_pid_namespace(), reason="cannot start a PID namespace")
@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGKILL"])
def test_as_pid_1_a_program_killed_by_a_signal_ends_the_run_with_128_plus_n(
    tmp_path: Path, signal_name: str
) -> None:
    """As PID 1 of a PID namespace (a container's ENTRYPOINT) the run cannot die of a signal it
    sends itself: it exited with the negative status, 241 for SIGTERM and 247 for SIGKILL (the
    OOM killer's), where a shell, tini or dumb-init give 143 and 137."""
    unshare = ["unshare", "--fork", "--pid"]
    if os.geteuid() != 0:
        unshare.append("--map-root-user")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENMETER_")}
    program = ["sh", "-c", f"kill -{signal_name.removeprefix('SIG')} $$"]
    run = subprocess.run(
        [*unshare, sys.executable, "-m", "tokenmeter", "run", "-q", "--dir", "tm", "--", *program],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert run.returncode == 128 + getattr(signal, signal_name), run.stderr


def _core_files_here() -> bool:
    """Core dumps written as files in the working directory, and allowed (Linux)."""
    try:
        import resource

        pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
    except (ImportError, OSError):
        return False
    hard = resource.getrlimit(resource.RLIMIT_CORE)[1]
    return bool(pattern) and pattern[0] not in "|/" and hard != 0


@pytest.mark.skipif(not _core_files_here(), reason="core dumps are off or go elsewhere here")
def test_a_program_that_dumps_core_keeps_its_core_file(tmp_path: Path) -> None:
    """The run dies of the program's signal: for SIGSEGV or SIGABRT, with core dumps on, it
    dumped a core of its own (of the Python running tokenmeter), over the program's ``core``."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_CORE)[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENMETER_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "tokenmeter", "run", "-q", "--", "sh", "-c", "kill -SEGV $$"],
        env=env,
        cwd=tmp_path,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_CORE, (hard, hard)),
    )
    _, status = os.waitpid(process.pid, 0)
    process.returncode = 0  # reaped here
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSEGV
    assert not os.WCOREDUMP(status)


def test_the_programs_own_sitecustomize_still_runs(fake: FakeProvider, tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("MARK = 'the application sitecustomize'\n")
    app = _script(
        tmp_path / "app.py",
        _CALLS
        + """
import sitecustomize, sys
print(sitecustomize.MARK)
print(any(p.endswith("_bootstrap") for p in sys.path))
""",
    )
    result = _run(
        ["--quiet", "--", sys.executable, app.name],
        _env(fake, PYTHONPATH=str(site)),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "the application sitecustomize\nFalse\n"
    assert result.stderr == ""  # --quiet: no summary
    assert len(_records(tmp_path / ".tokenmeter" / "usage.db")) == 2


_SHIM = Path(__file__).resolve().parents[2] / "tokenmeter" / "_bootstrap" / "sitecustomize.py"


def _older_pythons() -> list[str]:
    """Interpreters older than tokenmeter's on this machine (pyenv's or on PATH), if any."""
    found = set()
    for path in Path(os.path.expanduser("~/.pyenv/versions")).glob("*/bin/python"):
        version = path.parent.parent.name.split(".")[:2]
        if all(part.isdigit() for part in version) and tuple(map(int, version)) < (3, 11):
            found.add(str(path))
    for version in ("2.7", "3.6", "3.7", "3.8", "3.9", "3.10"):
        on_path = shutil.which(f"python{version}")
        if on_path and "shims" not in Path(on_path).parts:  # pyenv's: may run none
            found.add(on_path)
    return sorted(found)


def test_the_start_up_hook_reads_as_an_older_python_would() -> None:
    # The hook every Python of a command imports first: no syntax newer than Python 3.4 (2.7
    # reads the same subset here), or an older interpreter fails at every start.
    ast.parse(_SHIM.read_text(), feature_version=(3, 4))
    assert "annotations" not in _SHIM.read_text()


@pytest.mark.parametrize("python", _older_pythons() or [None])
def test_an_older_python_in_the_command_runs_unmetered_and_says_so(
    fake: FakeProvider, tmp_path: Path, python: str | None
) -> None:
    if python is None:
        pytest.skip("no Python older than 3.11 on this machine")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("MARK = 'the application sitecustomize'\n")
    app = _script(tmp_path / "app.py", "import sitecustomize\nprint(sitecustomize.MARK)\n")
    result = _run(
        ["--quiet", "--", python, app.name], _env(fake, PYTHONPATH=str(site)), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "the application sitecustomize\n"
    assert "Error in sitecustomize" not in result.stderr
    assert "older than tokenmeter supports: unmetered" in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    # Without a sitecustomize of its own, the program starts all the same.
    bare = _run(["--quiet", "--", python, "-c", "print(1)"], _env(fake), cwd=tmp_path)
    assert (bare.returncode, bare.stdout) == (0, "1\n"), bare.stderr


def test_settings_reach_the_program(fake: FakeProvider, tmp_path: Path) -> None:
    app = _script(
        tmp_path / "app.py",
        """
        import os
        for name in ("TOKENMETER_SINKS", "TOKENMETER_DIR", "TOKENMETER_BUDGET_USD"):
            print(name, os.environ.get(name))
        """,
    )
    result = _run(
        ["--sinks", "jsonl", "--dir", "d", "--budget", "0.5", "--", sys.executable, app.name],
        _env(fake),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "TOKENMETER_SINKS jsonl",
        f"TOKENMETER_DIR {tmp_path / 'd'}",
        "TOKENMETER_BUDGET_USD 0.5",
    ]
    assert "no LLM calls were recorded" in result.stderr
    assert "within the budget of $0.50" in result.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        ([], 2, "no command given"),
        (["--", "no-such-program-tokenmeter"], 127, "command not found: no-such-program"),
        # An empty name (an unset variable): a shell's 127, not "permission denied" (126).
        (["--", ""], 127, "command not found"),
        (["--tag", "novalue", "--", "true"], 2, "must be KEY=VALUE"),
        (["--budget", "-1", "--", "true"], 2, "must be a non-negative number of USD"),
        # Past the budgets' bound: the error named TOKENMETER_BUDGETS, a variable never set.
        (["--budget", "1e999999999", "--", "true"], 2, "argument --budget: must be"),
        # Named TOKENMETER_SINKS, a variable never set, not the option typed.
        (["--sinks", "carrier-pigeon", "--", "true"], 2, "error: --sinks: unknown sink 'carrier-"),
        # An unset variable: the run went under the program's name without a word.
        (["--session", "", "--", "true"], 2, "argument --session: must not be empty"),
        (["--session", " ", "--", "true"], 2, "argument --session: must not be empty"),
        # Every process of the program failed every write there, many lines each.
        (["--dir", "/dev/null/usage", "--", "true"], 2, "--dir /dev/null/usage: must be a dir"),
        # A traceback.
        (["--dir", "x" * 5000, "--", "true"], 2, "--dir: path is longer than any file system"),
        # More environment than exec() takes (E2BIG): an OSError traceback and status 1.
        (["--tag", "big=" + "x" * 2_000_000, "--", "true"], 126, "run: cannot run true: "),
    ],
)
def test_errors_are_one_line(
    args: list[str], code: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        status = main(["run", *args])
    except SystemExit as exc:  # argparse's own usage errors
        status = exc.code
    assert status == code
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_a_prices_file_that_cannot_be_read_stops_the_run_before_it_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every process of the program said "not metering this process" and ran unmetered, and
    the run reported no calls with status 0: unlike the other settings every child rejects."""
    monkeypatch.setenv("TOKENMETER_PRICES", str(tmp_path / "missing.json"))
    assert main(["run", "--", "true"]) == 2
    err = capsys.readouterr().err
    assert (
        err == "tokenmeter: error: tokenmeter setting 'prices_file' from TOKENMETER_PRICES: "
        f"{tmp_path / 'missing.json'}: cannot read prices file (No such file or directory)\n"
    )


def test_a_projects_missing_prices_file_under_tokenmeter_prices_does_not_stop_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator's TOKENMETER_PRICES replaces the project's prices_file, which is not read."""
    (tmp_path / "pyproject.toml").write_text('[tool.tokenmeter]\nprices_file = "missing.json"\n')
    (tmp_path / "ops.json").write_text('{"ops-model": {"input_per_mtok": 3, "output_per_mtok": 3}}')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TOKENMETER_PRICES", str(tmp_path / "ops.json"))
    assert main(["run", "--", "true"]) == 0


@pytest.mark.parametrize("directory", ["/dev/null", "/dev/null/usage"])
def test_a_directory_from_the_environment_is_checked_as_dir_is(
    directory: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--dir /dev/null`` was refused in one line; ``TOKENMETER_DIR=/dev/null`` ran the program,
    whose every process printed its records as errors, and the summary said they were there."""
    monkeypatch.setenv("TOKENMETER_DIR", directory)
    assert main(["run", "--", "true"]) == 2
    err = capsys.readouterr().err  # the setting's own check, or the run's
    assert err.startswith("tokenmeter: error: ") and err.count("\n") == 1, err
    assert "TOKENMETER_DIR" in err and directory in err


def test_a_totals_file_of_another_shape_leaves_the_summary_and_the_status(
    fake: FakeProvider, tmp_path: Path
) -> None:
    """A JSON file of another shape among the processes' totals (another tokenmeter's, in
    another virtualenv) ended the summary in a KeyError traceback, and the run's status was 1,
    not the program's."""
    app = _script(
        tmp_path / "app.py",
        _CALLS
        + """
import json, os
folder = os.environ["TOKENMETER_RUN_TOTALS"]
for name, document in [("a", {"m": {"calls": 1}}), ("b", [1]), ("c", {"m": {"calls": "x"}}),
                       ("d", {"models": {}, "store": 5})]:
    with open(os.path.join(folder, name + ".json"), "w") as file:
        json.dump(document, file)
raise SystemExit(4)
""",
    )
    result = _run(["--", sys.executable, app.name], _env(fake), cwd=tmp_path)
    assert result.returncode == 4, result.stderr
    assert "Traceback" not in result.stderr
    assert _summary_row(result.stderr, "total") == ["total", "2", "2,000", "1,000", "$0.004"]


def test_the_summary_names_the_store_the_program_configured_itself(
    fake: FakeProvider, tmp_path: Path
) -> None:
    """It named the run's directory and sinks, where there was nothing: the record was in the
    program's own var/llm/usage.jsonl."""
    app = _script(
        tmp_path / "app.py",
        """
        import tokenmeter
        tokenmeter.configure(directory="var/llm", sinks=["jsonl"])
        import openai
        openai.OpenAI(max_retries=0).chat.completions.create(model="m-test", messages=[])
        """,
    )
    result = _run(["--", sys.executable, app.name], _env(fake), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f" in {tmp_path / 'var' / 'llm'} (jsonl); see" in result.stderr
    assert (tmp_path / "var" / "llm" / "usage.jsonl").exists()
    assert not (tmp_path / ".tokenmeter").exists()


def test_a_run_into_postgresql_alone_names_no_directory(tmp_path: Path) -> None:
    """``run --sinks postgres`` said "session ... in <DIR> (postgres)": that directory was never
    made, and the report it suggested read it ("no usage data")."""
    env = {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": "1"}  # never reached: no calls
    result = _run(["--sinks", "postgres", "--", sys.executable, "-c", "pass"], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert " in postgres; see `tokenmeter report --by session --source postgresql://" in last
    assert str(tmp_path) not in last


#: The first line of a program that records into a directory of its own.
_OWN_DIRECTORY = "import tokenmeter; tokenmeter.configure(directory='own')"


@pytest.mark.parametrize(
    ("options", "program", "source"),
    [
        (["--dir", "runs"], "", "runs/usage.db"),
        (["--sinks", "jsonl"], "", ".tokenmeter/usage.jsonl"),
        (["--dir", "my runs", "--sinks", "jsonl,markdown"], "", "my runs/usage.jsonl"),
        ([], "", None),
        ([], _OWN_DIRECTORY, "own/usage.db"),
        (["--sinks", "jsonl"], _OWN_DIRECTORY, "own/usage.jsonl"),
    ],
)
def test_the_summary_names_the_report_that_shows_the_run(
    fake: FakeProvider, tmp_path: Path, options: list[str], program: str, source: str | None
) -> None:
    """In a project that already recorded into .tokenmeter/usage.db, ``run --dir runs`` (or
    ``--sinks jsonl``) said "see `tokenmeter report --by session`": typed there, that command
    read .tokenmeter/usage.db, without the run's session (--dir and --sinks were the run's
    environment only). So did a run whose program configured its own directory, though the
    summary said the session was in own/. The command named now shows it."""
    import shlex

    env = _env(fake)
    setup = "import tokenmeter; tokenmeter.record('openai', 'm-test', 1, 1); tokenmeter.flush()"
    subprocess.run([sys.executable, "-c", setup], env=env, cwd=tmp_path, check=True)
    app = _script(tmp_path / "app.py", program + _CALLS)
    result = _run([*options, "--", sys.executable, app.name], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    session = last.split("session ", 1)[1].split()[0]
    hint = last.split("see `", 1)[1].removesuffix("`")
    expected = "tokenmeter report --by session"
    if source is not None:
        expected += f" --source {shlex.quote(str(tmp_path / source))}"
    assert hint == expected
    shown = subprocess.run(
        [sys.executable, "-m", "tokenmeter", *shlex.split(hint)[1:], "--format", "json"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert session in [row["session_id"] for row in json.loads(shown.stdout)["rows"]]


@pytest.mark.parametrize("program", ["own sink object", "no call"])
def test_a_run_with_nothing_to_point_to_gives_no_hint(
    fake: FakeProvider, tmp_path: Path, program: str
) -> None:
    """A program writing to its own ``SQLiteSink`` object was told "add sqlite or jsonl to
    --sinks" (its sink is not one ``--sinks`` changes); ``--sinks markdown`` with no call named
    a journal page never written. Nothing is pointed to then."""
    body = (
        "from tokenmeter.sinks import SQLiteSink\n"
        "tokenmeter.configure(sinks=[SQLiteSink('mine.db')])\n" + _CALLS
        if program == "own sink object"
        else "print('no call')\n"
    )
    app = _script(tmp_path / "app.py", "import tokenmeter\n" + body)
    result = _run(["--sinks", "markdown", "--", sys.executable, app.name], _env(fake), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("  session run_") and ";" not in last, last


@pytest.mark.parametrize("sinks", ["markdown", "otel"])
def test_a_run_into_no_store_the_cli_reads_names_no_report(
    fake: FakeProvider, tmp_path: Path, sinks: str
) -> None:
    """``run --sinks markdown`` (or ``otel``) said "see `tokenmeter report --by session`": typed
    there, that command failed, "no usage data at .../usage.db". The journal's page of the
    session is named instead; with no file at all, what to add for a report."""
    if sinks == "otel":
        pytest.importorskip("opentelemetry.sdk", reason="opentelemetry-sdk (tokenmeter[otel])")
    env = _env(fake, OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none")
    app = _script(tmp_path / "app.py", _CALLS)
    result = _run(["--sinks", sinks, "--", sys.executable, app.name], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    session = last.split("session ", 1)[1].split()[0]
    assert "tokenmeter report" not in last
    if sinks == "otel":
        assert last.endswith(
            "; no sink the tokenmeter CLI reads: add sqlite or jsonl to --sinks for a report"
        )
        return
    page = Path(last.split("; see its journal page ", 1)[1])
    assert page == tmp_path / ".tokenmeter" / "journal" / "sessions" / f"{session}.md"
    assert session in page.read_text()


def test_a_run_into_the_journal_of_sessions_the_program_opens_names_the_journal(
    fake: FakeProvider, tmp_path: Path
) -> None:
    """``run --sinks markdown`` of a program that makes its calls in ``tokenmeter.session("job")``
    (the usual shape) ended "session run_... in D (markdown)", pointing nowhere: the run's own
    session has no page. The journal's log of the calls, ``token_usage.md``, is named then."""
    body = 'import tokenmeter\nwith tokenmeter.session("job"):\n' + textwrap.indent(_CALLS, "    ")
    app = _script(tmp_path / "app.py", body)
    result = _run(["--sinks", "markdown", "--", sys.executable, app.name], _env(fake), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    journal = tmp_path / ".tokenmeter" / "journal"
    assert last.endswith(f"; see the journal {journal / 'token_usage.md'}"), last
    assert "m-test" in (journal / "token_usage.md").read_text()
    session = last.split("session ", 1)[1].split()[0]
    assert not (journal / "sessions" / f"{session}.md").exists()


def test_a_run_inside_a_run_counts_in_both_summaries(fake: FakeProvider, tmp_path: Path) -> None:
    """A Makefile target using ``tokenmeter run``, in a CI job wrapped in one: the inner run took
    the calls, and the outer summary said no LLM calls were recorded."""
    app = _script(tmp_path / "app.py", _CALLS)
    inner = [sys.executable, "-m", "tokenmeter", "run", "--session", "inner", "--"]
    result = _run(
        ["--session", "outer", "--", *inner, sys.executable, app.name], _env(fake), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    outer_summary = result.stderr[result.stderr.index("'outer'") :]
    inner_summary = result.stderr[result.stderr.index("'inner'") : result.stderr.index("'outer'")]
    for summary in (inner_summary, outer_summary):
        assert _summary_row(summary, "total") == ["total", "2", "2,000", "1,000", "$0.004"]
    assert len(_records(tmp_path / ".tokenmeter" / "usage.db")) == 2


def test_a_file_that_is_no_program_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x7fELF not really")
    junk.chmod(0o755)
    assert main(["run", "--", str(junk)]) == 126  # ENOEXEC: it was an OSError traceback
    err = capsys.readouterr().err
    assert err == f"tokenmeter: error: run: cannot run {junk}: Exec format error\n"


def test_the_default_session_name_never_holds_a_shell_command_line(
    fake: FakeProvider, tmp_path: Path
) -> None:
    """``sh -c "KEY=... python app.py"``: the command line ends in ``.py`` and was taken for the
    script, so the API key became the session's name, in every record and in the summary."""
    app = _script(tmp_path / "app.py", _CALLS)
    line = f"OPENAI_API_KEY=sk-secret-123 {Path(sys.executable).name} app.py"
    env = {**_env(fake), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = _run(["--dir", "usage", "--", "sh", "-c", line], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert {row[2] for row in _records(tmp_path / "usage" / "usage.db")} == {"sh"}
    assert "sk-secret" not in result.stderr
    result = _run(["--dir", "usage", "--", sys.executable, app.name], _env(fake), cwd=tmp_path)
    assert f"tokenmeter: '{Path(sys.executable).name} app.py' (exit status 0)" in result.stderr


@pytest.mark.parametrize(
    "options", [["-W", "ignore"], ["-X", "dev"], ["-u"], ["-uW", "ignore"], ["-BX", "dev"]]
)
def test_the_default_session_name_has_the_script_after_python_options(
    fake: FakeProvider, tmp_path: Path, options: list[str]
) -> None:
    """The value of ``-W`` / ``-X`` was taken for the script: ``python -W ignore app.py`` was
    named ``python``, like any other script run so (``-uW ignore app.py`` too, clustered)."""
    app = _script(tmp_path / "app.py", _CALLS)
    result = _run(["--", sys.executable, *options, app.name], _env(fake), cwd=tmp_path)
    assert f"tokenmeter: '{Path(sys.executable).name} app.py' (exit status 0)" in result.stderr


def test_the_default_session_name_reads_pythons_options_only_for_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python's clustered options read into another program's arguments lost its script:
    ``pytest -rxX test_chat.py`` (``-x`` is no value-taking flag of pytest's) was named
    ``pytest``."""
    from tokenmeter.cli._run import _default_name

    monkeypatch.chdir(tmp_path)
    (tmp_path / "test_chat.py").write_text("")
    assert _default_name(["pytest", "-rxX", "test_chat.py"]) == "pytest test_chat.py"
    assert _default_name(["pytest", "-pno:cacheprovider", "test_chat.py"]) == "pytest test_chat.py"
    assert _default_name(["python3", "-uW", "ignore", "test_chat.py"]) == "python3 test_chat.py"
    assert _default_name(["python3", "-uc", "test_chat.py"]) == "python3"


def test_the_default_session_name_has_the_module_python_runs(
    fake: FakeProvider, tmp_path: Path
) -> None:
    """``python -m jobs.nightly`` and ``python -m jobs.hourly`` were both named ``python``:
    ``report --by name`` merged them into one row (``-um`` still after the first fix). ``-c``'s
    code stays out of the name."""
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "__init__.py").write_text("")
    _script(tmp_path / "jobs" / "nightly.py", _CALLS)
    _script(tmp_path / "jobs" / "hourly.py", _CALLS)
    python = Path(sys.executable).name
    for program, name in [
        (["-m", "jobs.nightly"], f"{python} -m jobs.nightly"),
        (["-u", "-mjobs.hourly", "--key", "sk-secret"], f"{python} -m jobs.hourly"),
        (["-Bum", "jobs.nightly"], f"{python} -m jobs.nightly"),  # clustered, as Python takes
        (["-uc", _CALLS], python),
    ]:
        result = _run(["--", sys.executable, *program], _env(fake), cwd=tmp_path)
        assert f"tokenmeter: '{name}' (exit status 0)" in result.stderr
    names = {row[2] for row in _records(tmp_path / ".tokenmeter" / "usage.db")}
    assert names == {python, f"{python} -m jobs.hourly", f"{python} -m jobs.nightly"}


@pytest.mark.parametrize("inherited", ["lots", "5"])
def test_a_budget_figure_inherited_from_the_environment_is_not_the_runs(
    inherited: str, tmp_path: Path
) -> None:
    """TOKENMETER_BUDGET_USD set around the run (an outer ``tokenmeter run``, a CI variable) was
    taken for --budget: a summary claiming a budget nothing enforced, or, not a number, a
    traceback after the program ended and status 1 instead of the program's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENMETER_")}
    env["TOKENMETER_BUDGET_USD"] = inherited
    result = _run(["--dir", "usage", "--", "sh", "-c", "exit 7"], env, cwd=tmp_path)
    assert result.returncode == 7
    assert "Traceback" not in result.stderr
    assert "the budget of" not in result.stderr


def test_budget_stops_the_program_call_that_would_pass_it(
    fake: FakeProvider, tmp_path: Path
) -> None:
    # $0.002 a call against a budget of $0.003: the first two calls go through (one per process,
    # the second in a child), the third is refused inside the program before it is sent.
    child = _script(
        tmp_path / "child.py",
        """
        import openai
        openai.OpenAI(max_retries=0).chat.completions.create(model="m-test", messages=[])
        """,
    )
    app = _script(
        tmp_path / "app.py",
        f"""
        import subprocess, sys
        import openai
        client = openai.OpenAI(max_retries=0)
        client.chat.completions.create(model="m-test", messages=[])
        subprocess.run([sys.executable, {child.name!r}], check=True)
        try:
            client.chat.completions.create(model="m-test", messages=[])
        except Exception as exc:
            print("refused:", type(exc).__name__)
        """,
    )
    result = _run(["--budget", "0.003", "--", sys.executable, app.name], _env(fake), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "refused: BudgetExceeded\n"
    assert len(fake.requests) == 2  # the refused call never reached the server
    with sqlite3.connect(tmp_path / ".tokenmeter" / "usage.db") as conn:
        statuses = [s for (s,) in conn.execute("SELECT status FROM records ORDER BY timestamp")]
    assert statuses == ["ok", "ok", "blocked"]
    assert "no known price" not in result.stderr  # the refused call cost nothing


_FIVE_CALLS_IN_OWN_SESSIONS = """
import openai, tokenmeter
client = openai.OpenAI(max_retries=0)
made = 0
for job in range(5):
    with tokenmeter.session(f"job-{job}"):
        try:
            client.chat.completions.create(model="m-test", messages=[])
            made += 1
        except tokenmeter.BudgetExceeded:
            pass
print(made)
"""


@pytest.mark.parametrize("nested", [False, True], ids=["own-sessions", "run-inside-the-run"])
def test_budget_covers_the_programs_own_sessions_and_a_run_inside_the_run(
    nested: bool, fake: FakeProvider, tmp_path: Path
) -> None:
    """Scoped by the run's session, --budget missed the calls the program made in its own
    sessions, and those of a ``tokenmeter run`` inside the run (a build script using it): all 5
    calls of $0.002 were made under ``--budget 0.003``, and the summary said OVER the budget."""
    app = _script(tmp_path / "app.py", _FIVE_CALLS_IN_OWN_SESSIONS)
    command = [sys.executable, app.name]
    if nested:
        command = [sys.executable, "-m", "tokenmeter", "run", "-q", "--", *command]
    result = _run(["--budget", "0.003", "--", *command], _env(fake), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "2\n"  # the third call would pass the budget: refused, and after
    assert len(fake.requests) == 2


def test_budget_covers_a_programs_session_and_record_tagged_with_the_runs_own_key(
    fake: FakeProvider, tmp_path: Path
) -> None:
    """A program session tagged ``tokenmeter_run`` by the program (tags taken from a request)
    replaced the run's id with its own value, so the run's ``--budget`` (scoped by that tag) no
    longer covered it: all 5 calls of $0.002 were made under ``--budget 0.003``. The run's tag
    wins, on the session's calls and on a ``record()`` tagged the same way."""
    program = (
        _FIVE_CALLS_IN_OWN_SESSIONS.replace(
            'tokenmeter.session(f"job-{job}")',
            'tokenmeter.session(f"job-{job}", tags={"tokenmeter_run": "mine", "team": "a"})',
        )
        + 'tokenmeter.record("openai", "m-test", 1, 1, tags={"tokenmeter_run": "mine"})\n'
    )
    app = _script(tmp_path / "app.py", program)
    result = _run(["--budget", "0.003", "--", sys.executable, app.name], _env(fake), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "2\n"  # the third call would pass the budget: refused
    assert len(fake.requests) == 2
    with sqlite3.connect(tmp_path / ".tokenmeter" / "usage.db") as conn:
        rows = conn.execute("SELECT tags, session_id FROM records").fetchall()
    assert len(rows) == 6  # 2 made, 3 refused, 1 by hand (in the run's own session)
    (run_id,) = {session for _, session in rows if session.startswith("run_")}
    assert {json.loads(tags)["tokenmeter_run"] for tags, _ in rows} == {run_id}
    assert sum(json.loads(tags).get("team") == "a" for tags, _ in rows) == 5


_FIVE_CALLS = """
import openai, tokenmeter
client = openai.OpenAI(max_retries=0)
made = 0
for job in range(5):
    try:
        client.chat.completions.create(model="m-test", messages=[])
        made += 1
    except tokenmeter.BudgetExceeded:
        pass
print(made)
"""


@pytest.mark.parametrize(
    ("outer", "inner", "made"),
    [("0.003", "1", "2"), ("1", "0.001", "1")],
    ids=["outer-budget-stops", "inner-budget-stops"],
)
def test_a_run_with_a_budget_inside_a_run_with_a_budget_keeps_both(
    outer: str, inner: str, made: str, fake: FakeProvider, tmp_path: Path
) -> None:
    """Both budgets had one name: the inner run refused it as a second budget of that name
    (exit status 2, the program never ran). Calls of $0.002, the first of a run admitted on
    its estimate ($0.001)."""
    app = _script(tmp_path / "app.py", _FIVE_CALLS)
    inner_run = [sys.executable, "-m", "tokenmeter", "run", "-q", "--budget", inner, "--"]
    command = ["--budget", outer, "--", *inner_run, sys.executable, app.name]
    result = _run(command, _env(fake), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{made}\n"
    assert len(fake.requests) == int(made)


def test_budget_is_added_to_the_projects_budgets_not_put_in_their_place(
    fake: FakeProvider, tmp_path: Path
) -> None:
    """TOKENMETER_BUDGETS replaces pyproject.toml's budgets: holding the run's alone, it took
    the project's $0.003 a day away, and all 5 calls of $0.002 were made under --budget 100."""
    project_budget = '[[tool.tokenmeter.budgets]]\nname = "daily"\nlimit_usd = 0.003\n'
    (tmp_path / "pyproject.toml").write_text(_PYPROJECT + project_budget)
    app = _script(tmp_path / "app.py", _FIVE_CALLS)
    result = _run(["--budget", "100", "--", sys.executable, app.name], _env(fake), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "2\n"
    assert len(fake.requests) == 2


@pytest.mark.parametrize(
    "budgets",
    ['[{"name": "daily", "limit_usd": 100, "period": "day"}]', "[]"],
    ids=["its-own-budget", "no-budget"],
)
def test_budget_holds_whatever_budgets_the_program_configures(
    budgets: str, fake: FakeProvider, tmp_path: Path
) -> None:
    """Carried in TOKENMETER_BUDGETS, --budget was replaced by the program's own
    ``configure(budgets=...)`` (even ``budgets=[]``): all 5 calls of $0.002 were made under
    ``--budget 0.003``, and the summary said OVER the budget."""
    app = _script(
        tmp_path / "app.py", f"import tokenmeter\ntokenmeter.configure(budgets={budgets})\n"
    )
    app.write_text(app.read_text() + _FIVE_CALLS)
    result = _run(["--budget", "0.003", "--", sys.executable, app.name], _env(fake), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "2\n"
    assert len(fake.requests) == 2


def test_a_malformed_budgets_variable_stops_a_run_with_a_budget_too(tmp_path: Path) -> None:
    """Without --budget it was exit status 2; with it, replaced unread: the run went on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENMETER_")}
    env["TOKENMETER_BUDGETS"] = "[{oops"
    result = _run(["--budget", "1", "--", "sh", "-c", "echo ran"], env, cwd=tmp_path)
    assert (result.returncode, result.stdout) == (2, "")
    assert "TOKENMETER_BUDGETS" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("budgets", "source"),
    [
        ("", "TOKENMETER_RUN_BUDGETS (tokenmeter run --budget)"),
        (
            '[{"limit_usd": 9, "period": "day"}]',
            "TOKENMETER_BUDGETS + TOKENMETER_RUN_BUDGETS (tokenmeter run --budget)",
        ),
    ],
)
def test_config_under_a_run_names_the_run_as_the_source_of_its_budget(
    budgets: str, source: str, tmp_path: Path
) -> None:
    """It said ``[default]``, or ``[TOKENMETER_BUDGETS]`` beside that variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENMETER_")}
    if budgets:
        env["TOKENMETER_BUDGETS"] = budgets
    command = [sys.executable, "-m", "tokenmeter", "config", "--format", "json"]
    result = _run(["--budget", "5", "--", *command], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout[: result.stdout.rindex("}") + 1])["budgets"]
    assert shown["source"] == source
    assert shown["value"][-1]["name"].startswith("tokenmeter run --budget")


def test_the_summary_never_sends_control_characters_to_the_terminal(tmp_path: Path) -> None:
    """The model name a server answers with reaches the summary: its escape sequences are shown
    as U+FFFD, not obeyed by the terminal, and so is a newline, which would start a row of its
    own (SIGINT-free: the run's stderr is a pipe here)."""
    (tmp_path / "pyproject.toml").write_text(_PYPROJECT)
    hostile = "m-\x1b]0;PWNED\x07\x1b[2J\ntest"
    with FakeProvider(
        openai_usage={"prompt_tokens": 1000, "completion_tokens": 500},
        models={"m-test": hostile},
    ) as fake:
        app = _script(
            tmp_path / "app.py",
            "import openai\nopenai.OpenAI(max_retries=0).chat.completions.create("
            'model="m-test", messages=[])\n',
        )
        result = _run(["--dir", "usage", "--", sys.executable, app.name], _env(fake), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr
    assert _summary_row(result.stderr, "m-\ufffd]0;PWNED\ufffd\ufffd[2J\ufffdtest")[1] == "1"


def test_a_run_whose_calls_have_no_price_totals_n_a_not_zero(tmp_path: Path) -> None:
    """Like the reports: an unknown price is ``n/a``, never a cost of $0."""
    with FakeProvider(
        openai_usage={"prompt_tokens": 1000, "completion_tokens": 500},
        models={"m-unpriced": "m-unpriced"},
    ) as fake:
        app = _script(
            tmp_path / "app.py",
            "import openai\nopenai.OpenAI(max_retries=0).chat.completions.create("
            'model="m-unpriced", messages=[])\n',
        )
        result = _run(["--dir", "usage", "--", sys.executable, app.name], _env(fake), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert _summary_row(result.stderr, "m-unpriced") == ["m-unpriced", "1", "1,000", "500", "n/a"]
    assert _summary_row(result.stderr, "total") == ["total", "1", "1,000", "500", "n/a"]
    assert "1 call had no known price" in result.stderr


def test_a_program_that_records_by_hand_without_any_sdk_is_part_of_the_run(
    tmp_path: Path,
) -> None:
    """Metering started only at a provider SDK's import: a program's own ``tokenmeter.record()``
    calls, in a process that imports no SDK, went to the default session and the summary said
    no call was made."""
    (tmp_path / "pyproject.toml").write_text(_PYPROJECT)
    app = _script(
        tmp_path / "app.py",
        """
        import sys
        import tokenmeter
        tokenmeter.record("openai", "m-test", 1000, 500)
        tokenmeter.record("openai", "m-test", 1000, 500)
        assert not {"openai", "anthropic"} & set(sys.modules)
        """,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENMETER_")}
    result = _run(["--dir", "usage", "--", sys.executable, app.name], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = _records(tmp_path / "usage" / "usage.db")
    assert len(rows) == 2 and all(row[1].startswith("run_") for row in rows)
    assert rows[0][1] in result.stderr
    assert _summary_row(result.stderr, "total") == ["total", "2", "2,000", "1,000", "$0.004"]


@pytest.mark.parametrize("options", [[], ["--dir", "usage"]])
def test_a_removed_working_directory_keeps_the_programs_exit_status(
    options: list[str], tmp_path: Path
) -> None:
    # Started in a directory that is gone (a deleted build dir): the summary and --dir made it
    # absolute with os.getcwd(), so the run ended in a traceback and status 1, not the program's.
    gone = tmp_path / "gone"
    gone.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENMETER_")}
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, sys; from tokenmeter.cli import main; os.rmdir(os.getcwd()); "
            "sys.exit(main(sys.argv[1:]))",
            "run",
            *options,
            "--",
            sys.executable,
            "-c",
            "print('program output'); raise SystemExit(3)",
        ],
        env=env,
        cwd=gone,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 3
    assert result.stdout == "program output\n"
    assert "Traceback" not in result.stderr
    assert "tokenmeter: 'python" in result.stderr


@pytest.mark.parametrize("program", ["raise SystemExit(7)", "import os; os.kill(os.getpid(), 15)"])
@pytest.mark.parametrize("stderr", ["a pipe nobody reads", "/dev/full"])
def test_a_summary_that_cannot_be_written_keeps_the_programs_exit_status(
    program: str, stderr: str, tmp_path: Path
) -> None:
    # ``tokenmeter run -- cmd 2>&1 | head -1`` (the reader gone before the summary), or a full
    # disk: the failed write of the summary ended the run with status 1, not the program's.
    if stderr == "/dev/full" and not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENMETER_")}
    read_end, write_end = os.pipe()
    os.close(read_end)
    target = write_end if stderr != "/dev/full" else os.open("/dev/full", os.O_WRONLY)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "tokenmeter", "run", "--", sys.executable, "-c", program],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=target,
            check=False,
            timeout=120,
        )
    finally:
        os.close(write_end)
        if target != write_end:
            os.close(target)
    assert result.returncode == (7 if "SystemExit" in program else -signal.SIGTERM)


def test_the_summary_line_naming_the_directory_sends_no_control_characters(
    tmp_path: Path,
) -> None:
    # The directory comes from a project's pyproject.toml (a repository just cloned) as well as
    # from --dir: its escape sequences reached the terminal, and a newline started a line.
    (tmp_path / "pyproject.toml").write_text(
        '[tool.tokenmeter]\ndirectory = "usage\\u001b]0;PWNED\\u0007\\n  total  9"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENMETER_")}
    result = _run(["--", sys.executable, "-c", "pass"], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr
    assert not any(line.startswith("  total") for line in result.stderr.splitlines())
    assert "usage\ufffd]0;PWNED\ufffd\ufffd  total  9 (sqlite)" in result.stderr


@pytest.mark.parametrize("bad", [{}, {"TOKENMETER_PRICES": "ops/prices.toml"}])
def test_a_run_with_tokenmeter_disabled_says_so_not_that_nothing_was_spent(
    fake: FakeProvider, tmp_path: Path, bad: dict[str, str]
) -> None:
    # TOKENMETER_DISABLED=1 (a kill switch) still runs the program, unmetered: the summary said
    # "no LLM calls were recorded" and "within the budget of $0.001" after $0.004 of calls.
    # A prices file missing from the checkout made the run exit 2 without running the program.
    app = _script(tmp_path / "app.py", _CALLS)
    result = _run(
        ["--budget", "0.001", "--", sys.executable, app.name],
        _env(fake, TOKENMETER_DISABLED="1", **bad),
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert len(fake.requests) == 2  # the program ran as without tokenmeter
    assert "tokenmeter is disabled (TOKENMETER_DISABLED): nothing was metered" in result.stderr
    assert "no LLM calls" not in result.stderr and "budget" not in result.stderr


@pytest.mark.skipif(not hasattr(signal, "sigtimedwait"), reason="POSIX signal waits")
def test_a_program_whose_sigchld_went_elsewhere_still_ends_the_run() -> None:
    """The run blocks SIGCHLD on its own thread only: one that came while another thread had it
    unblocked (a program that ended before the wait began) went there and was discarded, and the
    run waited for ever (seen as a test hung 15 min in ``main(["run", "--", "true"])`` inside a
    test runner's worker). Here the program ends, its SIGCHLD is discarded, then the run waits."""
    script = textwrap.dedent(
        """
        import os, signal, subprocess
        from tokenmeter.cli import _run
        process = subprocess.Popen(["true"])
        os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)  # ended, not reaped
        waited = {signal.SIGCHLD}
        signal.pthread_sigmask(signal.SIG_BLOCK, waited)
        print(_run._wait(process, waited))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["0"]
