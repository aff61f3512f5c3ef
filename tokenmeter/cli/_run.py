"""``tokenmeter run -- COMMAND...``: meter a program that was never changed to use tokenmeter.

The command runs as a child process whose environment makes every Python interpreter in it (the
program and anything it starts) call ``instrument()`` at start-up, through the ``sitecustomize`` in
``tokenmeter/_bootstrap`` (see ``_autorun``). This process stays to forward signals, pass the exit
status on, and print what the program spent. Its summary goes to stderr: stdout is the program's.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from secrets import token_hex
from typing import Any

from tokenmeter.cli._errors import CliError

__all__ = ["add_run_parser", "run_command"]

#: Where ``tokenmeter run --budget`` puts the budget for the program's processes.
BUDGET_ENV = "TOKENMETER_BUDGET_USD"
_BOOTSTRAP = Path(__file__).resolve().parent.parent / "_bootstrap"
#: Signals passed on to the program. SIGINT and SIGQUIT typed at the terminal already reach it
#: (the terminal signals the whole foreground process group): those are not sent twice.
_FORWARDED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
_SI_KERNEL = 0x80  # Linux si_code of a signal the kernel (the terminal) sent
_TOP_MODELS = 10


def add_run_parser(commands: Any) -> None:
    run = commands.add_parser(
        "run",
        help="run a program with every LLM call it (and its child processes) makes metered",
        description="Run COMMAND with tokenmeter instrumenting every Python process in it, then "
        "print what it spent. Usage: tokenmeter run [options] -- COMMAND [ARGS...]",
    )
    run.add_argument(
        "--sinks",
        help="sinks to write, comma-separated: sqlite, jsonl, markdown, postgres, otel "
        "(TOKENMETER_SINKS)",
    )
    from tokenmeter.cli import nonempty_path

    run.add_argument(
        "--dir", metavar="PATH", type=nonempty_path, help="directory of the sinks (TOKENMETER_DIR)"
    )
    run.add_argument(
        "--budget",
        metavar="USD",
        type=_usd,
        help="budget for the whole run's spending, shared by its processes that keep their "
        "budgets in the same ledger (added to the "
        "project's budgets, and to any the program configures; the figure is passed on as "
        f"{BUDGET_ENV})",
    )
    run.add_argument(
        "--session",
        metavar="NAME",
        type=_session_name,
        help="session name (default: the program's)",
    )
    run.add_argument(
        "--tag", action="append", default=[], metavar="KEY=VALUE", type=_tag, help="repeatable"
    )
    run.add_argument("-q", "--quiet", action="store_true", help="no summary at the end")
    run.add_argument("program", nargs=argparse.REMAINDER, metavar="-- COMMAND ...")


def _usd(value: str) -> Decimal:
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a number of USD: {value!r}") from None
    from tokenmeter._sessions import MAX_BUDGET_USD  # the bound of every budget

    if not number.is_finite() or not 0 <= number <= MAX_BUDGET_USD:
        raise argparse.ArgumentTypeError(
            f"must be a non-negative number of USD (at most {MAX_BUDGET_USD}), got {value!r}"
        )
    return number


def _tag(value: str) -> tuple[str, str]:
    key, sep, tag_value = value.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"must be KEY=VALUE, got {value!r}")
    return key.strip(), tag_value


def _default_name(command: list[str]) -> str:
    """The program and its script, e.g. ``python app.py``, or the module Python runs (``python -m
    jobs.nightly``: a module is code's name, as a script's is): never the other arguments, which
    may hold secrets (``--api-key ...``), nor ``-c``'s code. The script is a file: an argument
    that names none may be a command line (``sh -c "OPENAI_API_KEY=... python app.py"``)."""
    words = [os.path.basename(command[0])]
    if _PYTHON.fullmatch(words[0]):
        option, value = _what_python_runs(command[1:])
    else:  # another program's options are its own (pytest -rxX tests/x.py): no clusters read
        option, value = "", _script_argument(command[1:])
    if option == "-m" and _MODULE_NAME.fullmatch(value or ""):
        words += ["-m", value or ""]
    elif option == "" and value is not None and value.endswith(".py") and os.path.isfile(value):
        words.append(os.path.basename(value))
    return " ".join(words)


#: Python's options whose value is the next argument: ``-W ignore app.py`` took ``ignore`` for
#: the script, and named the session ``python`` alone.
_OPTIONS_WITH_A_VALUE = frozenset({"-W", "-X", "--check-hash-based-pycs"})
#: A Python interpreter's file name (``python3.12``, ``pypy3``, ``python.exe``): only there is
#: ``-m`` a module, not another program's option whose value may be a secret.
_PYTHON = re.compile(r"(?:python|pypy)[\d.]*(?:\.exe)?", re.IGNORECASE)
#: A module's dotted name (``jobs.nightly``).
_MODULE_NAME = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")


#: Python's options after which no script follows (the program is their value).
_OPTIONS_INSTEAD_OF_A_SCRIPT = frozenset({"-c", "-m"})


def _script_argument(arguments: list[str]) -> str | None:
    """The first argument that is no option nor an option's value: the script, if any."""
    remaining = iter(arguments)
    for arg in remaining:
        if arg in _OPTIONS_INSTEAD_OF_A_SCRIPT:
            return None
        if arg in _OPTIONS_WITH_A_VALUE:
            next(remaining, None)
        elif not arg.startswith("-"):
            return arg
    return None


def _what_python_runs(arguments: list[str]) -> tuple[str, str | None]:
    """What Python's ``arguments`` run, read as Python reads its options, clustered ones too
    (``-um jobs.nightly``, ``-uW ignore app.py``, ``-uc CODE``): ``("-m", module)``, ``("-c",
    None)``, ``("", script)`` or ``("", None)`` for none (standard input)."""
    remaining = iter(arguments)
    for arg in remaining:
        if arg == "-":
            return "", None
        if not arg.startswith("-"):
            return "", arg
        if arg.startswith("--"):
            if arg in _OPTIONS_WITH_A_VALUE:
                next(remaining, None)
            continue
        for at, flag in enumerate(arg[1:], start=2):
            if flag == "c":
                return "-c", None
            if flag in "mWX":
                value = arg[at:] or next(remaining, None)
                if flag == "m":
                    return "-m", value
                break
    return "", None


def _child_environment(
    args: argparse.Namespace, command: list[str], totals: Path
) -> dict[str, str]:
    from tokenmeter import _autorun
    from tokenmeter._config import RUN_BUDGETS
    from tokenmeter.sinks._files import absolute

    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = os.pathsep.join([str(_BOOTSTRAP), *([path] if path else [])])
    run_id = f"run_{datetime.now(UTC):%Y%m%d_%H%M%S}_{token_hex(3)}"
    tags = _autorun.run_tags(run_id, dict(args.tag))
    env[_autorun.ENV_ID] = run_id
    env[_autorun.ENV_SESSION] = args.session or _default_name(command)
    env[_autorun.ENV_TAGS] = json.dumps(tags)
    env[_autorun.ENV_TOTALS] = str(totals)
    if args.sinks is not None:
        env["TOKENMETER_SINKS"] = args.sinks
    if args.dir is not None:  # absolute: a child that changes directory writes to the same place
        try:
            env["TOKENMETER_DIR"] = str(absolute(args.dir))
        except ValueError as exc:  # a path longer than any file system takes
            raise CliError(f"--dir: {exc}", exit_code=2) from None
    if args.budget is not None:
        env[BUDGET_ENV] = str(args.budget)
        budget = _run_budget(args.budget, _autorun.run_tag_of(tags, run_id))
        env[RUN_BUDGETS] = json.dumps([*_run_budgets_in(env), budget])
    return env


def _pin_settings(env: dict[str, str], settings: Any) -> None:
    """Every process of the program reads the settings of ``tokenmeter run``'s directory: a
    process that started elsewhere (``subprocess.run(..., cwd=...)``) found another or no
    pyproject.toml, and without ``--dir`` wrote into its own ``./.tokenmeter``: its records
    unpriced and missing from the run's store, its spending outside the run's ``--budget``. A
    relative ``TOKENMETER_PRICES`` or ``TOKENMETER_STATE_FILE`` is made absolute for the same
    reason (a worker started in ``worker/`` wrote its own ``worker/state.md``)."""
    from tokenmeter import _autorun
    from tokenmeter._config import find_pyproject
    from tokenmeter.sinks._files import absolute

    env["TOKENMETER_DIR"] = str(absolute(settings.directory))  # --dir's, made absolute too
    for name in ("TOKENMETER_PRICES", "TOKENMETER_STATE_FILE"):
        path = env.get(name, "")
        if path.strip():  # relative, a process started elsewhere read or wrote another file
            env[name] = str(absolute(path))
    if _autorun.ENV_PYPROJECT not in env:
        pyproject = find_pyproject(None)
        env[_autorun.ENV_PYPROJECT] = str(pyproject.resolve()) if pyproject else ""


def _run_budgets_in(env: dict[str, str]) -> list[Any]:
    """The budgets of the ``tokenmeter run --budget`` this one runs inside, which stay in force
    in its processes too. Not in ``TOKENMETER_BUDGETS``, whose budgets are the project's:
    there the program's own ``configure(budgets=...)`` replaced the run's, and lifted it."""
    from tokenmeter._config import RUN_BUDGETS

    try:
        found = json.loads(env.get(RUN_BUDGETS) or "[]")
    except (ValueError, RecursionError):
        found = None
    if not isinstance(found, list):  # left by hand: the settings check says what is wrong
        raise CliError(f"{RUN_BUDGETS} must be a JSON list of budgets", exit_code=2)
    return found


def _session_name(value: str) -> str:
    """``--session "$UNSET"`` would silently mean the program's name: a usage error instead."""
    if not value.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return value


def _run_budget(limit: Any, run_tag: str) -> dict[str, Any]:
    """``--budget``: the run (every process of the program) may spend at most ``limit``; a call
    that would pass it raises BudgetExceeded in the program. Scoped by the run's tag, which every
    session of the run carries: scoped by the run's session, it missed the program's own
    sessions and a nested ``tokenmeter run``'s, and let their calls through. Its ledger row is
    the run's own (the tag's value is the run id), for the run's whole length. Named after
    the run: under one name, a run's inside another's was refused as a second budget of it."""
    return {
        "name": f"tokenmeter run --budget ({run_tag.partition('=')[2]})",
        "limit_usd": float(limit),
        "period": "total",
        "tag": run_tag,
    }


#: How a bad ``--dir`` or ``--sinks`` comes back from the settings, which get them as
#: ``TOKENMETER_DIR`` and ``TOKENMETER_SINKS``.
_BAD_DIR = "tokenmeter setting 'directory' from TOKENMETER_DIR: "
_BAD_SINKS = "tokenmeter setting 'sinks' from TOKENMETER_SINKS: "


def _check_settings(
    env: dict[str, str], dir_given: str | None, sinks_given: str | None
) -> tuple[Any, dict[str, str]]:
    """Fail here, once, on a setting every child process would reject. The settings, and where
    each came from (``TOKENMETER_DIR``, a pyproject.toml, the default...). A bad ``--dir``
    (``dir_given``; a path under a file) or ``--sinks`` (``sinks_given``; a name that is no
    sink's) is named as the option the user typed, not the variable it was passed on in."""
    from tokenmeter._config import check_settings_prices_file, load_settings_with_sources

    try:
        settings, sources = load_settings_with_sources(env=env)
        check_settings_prices_file(settings, sources)  # else each process runs unmetered, saying so
        return settings, sources
    except ValueError as exc:
        message = str(exc)
        if dir_given is not None and message.startswith(_BAD_DIR):
            message = f"--dir {dir_given}: {message.removeprefix(_BAD_DIR)}"
        if sinks_given is not None and message.startswith(_BAD_SINKS):
            message = f"--sinks: {message.removeprefix(_BAD_SINKS)}"
        raise CliError(message, exit_code=2) from None


def _check_dir(given: str, directory: Path) -> None:
    """The directory (``--dir``, ``TOKENMETER_DIR``, pyproject.toml's) under a file, or where
    nothing may be written: one line here, not the failed writes of every process of the
    program (``TOKENMETER_DIR=/dev/null`` was not checked: each process printed its records as
    errors, and the summary said they were stored there)."""
    try:
        existing = next((path for path in (directory, *directory.parents) if path.exists()), None)
    except OSError as exc:  # a parent that may not be searched (EACCES)
        reason = exc.strerror or str(exc)
    else:
        if existing is None:
            return
        if not existing.is_dir():
            reason = os.strerror(errno.ENOTDIR)
        elif not os.access(existing, os.W_OK | os.X_OK):
            reason = f"{existing} cannot be written"
        else:
            return
    raise CliError(f"{given}: cannot record there ({reason})", exit_code=2)


def _hand_to_an_outer_run(totals: Path) -> None:
    """A run inside another (a Makefile target that uses ``tokenmeter run``, in a CI job wrapped
    in one) reports its processes' totals to the outer run as well: they reported to this one
    only, and the outer summary said no LLM calls were recorded."""
    from tokenmeter import _autorun

    outer = os.environ.get(_autorun.ENV_TOTALS)
    if not outer or not os.path.isdir(outer):
        return
    for path in totals.glob("*.json"):  # each written whole (os.replace): copied whole
        with contextlib.suppress(OSError):
            shutil.copy(path, outer)


def run_command(args: argparse.Namespace) -> int:
    command = list(args.program)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise CliError(
            "run: no command given: tokenmeter run [options] -- COMMAND ...", exit_code=2
        )
    from tokenmeter import _sessions

    try:
        _sessions.Session(args.session, tags=dict(args.tag))  # the checks every child would make
    except ValueError as exc:
        raise CliError(f"run: {exc}", exit_code=2) from None
    totals = Path(tempfile.mkdtemp(prefix="tokenmeter-run-"))
    try:
        env = _child_environment(args, command, totals)
        settings, sources = _check_settings(env, args.dir, args.sinks)
        disabled_by = sources["disabled"] if settings.disabled else None
        if disabled_by is None:  # a disabled run records nothing anywhere
            where = (
                f"--dir {args.dir}"
                if args.dir is not None
                else f"directory {settings.directory} (from {sources['directory']})"
            )
            _check_dir(where, Path(settings.directory))
        _pin_settings(env, settings)
        status = _supervise(command, env)
        _hand_to_an_outer_run(totals)
        if not args.quiet:
            _summary_or_nothing(env, totals, settings, disabled_by, status, args.budget)
    finally:
        shutil.rmtree(totals, ignore_errors=True)
    if status < 0:  # the program died of a signal: so do we, after the summary
        _die_of(-status)
        # Still alive: PID 1 of a PID namespace (a container's ENTRYPOINT) cannot die of a
        # signal it sends itself. 128+N, as shells, tini and dumb-init report it: returned as
        # is, -15 and -9 became exit statuses 241 and 247, which read as no signal at all.
        return 128 - status
    return status


# -- running the program ------------------------------------------------------------------------
def _signals() -> list[signal.Signals]:
    return [getattr(signal, name) for name in _FORWARDED if hasattr(signal, name)]


def _spawn(command: list[str], env: dict[str, str], **kwargs: Any) -> subprocess.Popen[bytes]:
    try:
        if not command[0]:  # searched along PATH, '' names each directory: "permission denied"
            raise FileNotFoundError
        return subprocess.Popen(command, env=env, **kwargs)
    except FileNotFoundError:
        raise CliError(f"run: command not found: {command[0]}", exit_code=127) from None
    except PermissionError:
        raise CliError(f"run: permission denied: {command[0]}", exit_code=126) from None
    except OSError as exc:  # not a program (ENOEXEC), too big an environment (E2BIG), ...
        raise CliError(
            f"run: cannot run {command[0]}: {exc.strerror or exc}", exit_code=126
        ) from None


@contextlib.contextmanager
def _children_reported() -> Iterator[Callable[[], None] | None]:
    """SIGCHLD at its default while the program runs; yields what gives the program back the
    disposition this process had (None: nothing to give back). Started with SIGCHLD ignored (a
    supervisor, a daemonising wrapper: SIG_IGN is inherited across exec), the kernel reaped the
    program unannounced: no SIGCHLD for ``sigtimedwait``, no exit status for ``wait`` (ECHILD,
    read as 0), and the run waited for ever, forwarding SIGTERM to a program already gone. The
    program still gets the ignored SIGCHLD it would have had without tokenmeter."""
    sigchld = getattr(signal, "SIGCHLD", None)
    if sigchld is None or signal.getsignal(sigchld) is not signal.SIG_IGN:  # Windows; default
        yield None
        return

    def ignored_again() -> None:  # in the child, before its exec
        signal.signal(sigchld, signal.SIG_IGN)

    signal.signal(sigchld, signal.SIG_DFL)
    try:
        yield ignored_again
    finally:
        signal.signal(sigchld, signal.SIG_IGN)


def _supervise(command: list[str], env: dict[str, str]) -> int:
    """Run the program to its end, forwarding signals; its exit status (-N: killed by signal N)."""
    if not hasattr(signal, "sigtimedwait"):  # Windows, macOS
        return _supervise_with_handlers(command, env)
    forwarded = set(_signals())
    waited = forwarded | {signal.SIGCHLD}
    # Blocked before the child exists, so no signal and no child exit can slip between the two;
    # the child gets the mask of before (preexec_fn is safe here: this process has one thread).
    with _children_reported() as as_inherited:
        before = signal.pthread_sigmask(signal.SIG_BLOCK, waited)

        def in_child() -> None:
            if as_inherited is not None:
                as_inherited()
            signal.pthread_sigmask(signal.SIG_SETMASK, before)

        try:
            process = _spawn(command, env, preexec_fn=in_child)
            return _wait(process, waited)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _wait(process: subprocess.Popen[bytes], waited: set[signal.Signals]) -> int:
    """Wait for the (blocked) signals ``waited``: pass each on, until the program ends.

    Looked at every ``_LOOK_AGAIN_S`` seconds too: the mask blocks SIGCHLD on this thread only,
    and one that came while another thread of this process had it unblocked (a program that
    ended before the wait began: ``true``) went to that thread and was discarded there, and
    the run waited for ever (``main()`` called in a process with threads: a test runner's)."""
    while True:
        info = signal.sigtimedwait(waited, _LOOK_AGAIN_S)
        if info is None or info.si_signo == signal.SIGCHLD:
            if process.poll() is not None:
                return process.returncode
            continue  # stopped or continued, not ended
        from_terminal = info.si_code == _SI_KERNEL and info.si_signo in (
            signal.SIGINT,
            signal.SIGQUIT,
        )
        if not from_terminal:
            process.send_signal(info.si_signo)


#: How often the run looks whether the program ended without its SIGCHLD (see ``_wait``).
_LOOK_AGAIN_S = 0.2


def _supervise_with_handlers(command: list[str], env: dict[str, str]) -> int:
    process: subprocess.Popen[bytes] | None = None

    def forward(signum: int, frame: object) -> None:
        if process is not None and process.poll() is None:
            process.send_signal(signum)

    previous: dict[signal.Signals, Any] = {}
    for signum in _signals():
        # SIGINT from the terminal reaches the program directly; it must not end us first.
        handler = signal.SIG_IGN if signum == signal.SIGINT else forward
        try:
            previous[signum] = signal.signal(signum, handler)
        except (OSError, ValueError):
            continue
    try:
        with _children_reported() as as_inherited:
            process = _spawn(command, env, preexec_fn=as_inherited)
            return process.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _die_of(signum: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    with contextlib.suppress(ImportError, OSError, ValueError):
        # A core of ours (SIGSEGV, SIGABRT) would be written over the program's own ``core``.
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    with contextlib.suppress(OSError, ValueError):  # SIGKILL, SIGSTOP: their default always
        signal.signal(signum, signal.SIG_DFL)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
    os.kill(os.getpid(), signum)


# -- the summary --------------------------------------------------------------------------------
def _summary_or_nothing(
    env: dict[str, str],
    totals: Path,
    settings: Any,
    disabled_by: str | None,
    status: int,
    budget: Decimal | None,
) -> None:
    """The summary; one that cannot be written (its reader gone: ``2>&1 | head``; a full disk)
    is lost, and the run still ends as the program did, not with the write's error."""
    try:
        _summary(env, totals, settings, disabled_by, status, budget)
        sys.stderr.flush()
    except OSError:
        with contextlib.suppress(OSError, ValueError):  # what is left to flush goes nowhere
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())


def _summary(
    env: dict[str, str],
    totals: Path,
    settings: Any,
    disabled_by: str | None,
    status: int,
    budget: Decimal | None,
) -> None:
    """What the program spent; ``budget`` is --budget's (a TOKENMETER_BUDGET_USD the run
    inherited is no budget of this run). Disabled, the program ran unmetered: nothing is known
    of its calls, its budget or its records."""
    from tokenmeter import _autorun
    from tokenmeter.cli._output import one_line
    from tokenmeter.cli.reports._format import fmt_int, fmt_usd
    from tokenmeter.sinks._files import absolute  # left relative if the directory was removed

    models, processes, stores, recorded = _autorun.read_totals(totals)
    out = sys.stderr
    name = env[_autorun.ENV_SESSION]
    ended = f"exit status {status}" if status >= 0 else f"killed by signal {-status}"
    calls = sum(m["calls"] for m in models.values())
    cost = sum((m["cost_usd"] for m in models.values()), Decimal(0))
    priced = any(m["unpriced_calls"] < m["calls"] for m in models.values())
    print(f"\ntokenmeter: {name!r} ({ended})", file=out)
    if disabled_by is not None:
        print(f"  tokenmeter is disabled ({one_line(disabled_by)}): nothing was metered", file=out)
        return
    if not calls:
        print("  no LLM calls were recorded", file=out)
    else:
        ranked = sorted(models.items(), key=lambda kv: (-kv[1]["cost_usd"], kv[0]))
        rows = [
            (
                model,
                fmt_int(m["calls"]),
                fmt_int(m["input_tokens"]),
                fmt_int(m["output_tokens"]),
                fmt_usd(None if m["unpriced_calls"] == m["calls"] else m["cost_usd"]),
            )
            for model, m in ranked[:_TOP_MODELS]
        ]
        if len(ranked) > _TOP_MODELS:
            rows.append((f"... {len(ranked) - _TOP_MODELS} more models", "", "", "", ""))
        rows.append(
            (
                "total",
                fmt_int(calls),
                fmt_int(sum(m["input_tokens"] for m in models.values())),
                fmt_int(sum(m["output_tokens"] for m in models.values())),
                fmt_usd(cost if priced else None),  # no known price: n/a, as in reports
            )
        )
        head = ("model", "calls", "input", "output", "cost")
        widths = [max(len(str(row[i])) for row in [head, *rows]) for i in range(5)]
        for row in [head, *rows]:
            cells = [row[0].ljust(widths[0])]
            cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
            print("  " + one_line("  ".join(cells).rstrip()), file=out)  # a server's name
        notes = []
        unpriced = sum(m["unpriced_calls"] for m in models.values())
        errors = sum(m["errors"] for m in models.values())
        if unpriced:
            had = "call had" if unpriced == 1 else "calls had"
            notes.append(f"{unpriced} {had} no known price (not in the cost)")
        if errors:
            failed = "call failed or was" if errors == 1 else "calls failed or were"
            notes.append(f"{errors} {failed} refused")
        if processes > 1:
            notes.append(f"calls from {processes} processes")
        if notes:
            print("  " + "; ".join(notes), file=out)
    if budget is not None:
        verdict = "OVER" if cost > budget else "within"
        print(f"  {verdict} the budget of {fmt_usd(budget)}", file=out)
    # Where the processes say they recorded: a program may configure its own store, and the
    # run's was named where there was nothing. No process recorded: the run's settings.
    where = " and ".join(sorted(stores)) or _autorun.describe_store(
        absolute(settings.directory), settings.sinks
    )
    see = _where_to_see(settings, recorded, env[_autorun.ENV_ID], called=calls > 0)
    print(
        f"  session {env[_autorun.ENV_ID]} in {one_line(where)}"  # a cloned pyproject.toml
        + ("" if see is None else f"; {one_line(see)}"),
        file=out,
    )


def _where_to_see(
    settings: Any,
    recorded: set[tuple[Path, tuple[str, ...]]],
    session_id: str,
    *,
    called: bool = False,
) -> str | None:
    """Where to see the run's session: the report that shows it, or, when the run recorded into
    no store the CLI reads (``--sinks markdown`` or ``otel``: the report named failed, "no usage
    data"), its journal page (the journal's log of every call, ``token_usage.md``, when the
    program ``called`` in sessions of its own, whose pages are named after them), or a sentence
    saying what to add. None when there is nothing to say: no journal written (no call), a
    program's own sink objects (their files are not known here, and ``--sinks`` does not change
    them)."""
    from tokenmeter.sinks._files import absolute

    runs = recorded or {(absolute(settings.directory), tuple(settings.sinks))}
    hint = _report_hint(settings, runs)
    if hint is not None:
        return f"see `{hint}`"
    page = _journal_page(runs, absolute(settings.directory), session_id)
    if page is not None:
        if page.is_file():
            return f"see its journal page {shlex.quote(str(page))}"
        usage = page.parent.parent / "token_usage.md"  # the journal's, beside ``sessions/``
        return f"see the journal {shlex.quote(str(usage))}" if called and usage.is_file() else None
    if any(not names for _, names in runs):
        return None
    return "no sink the tokenmeter CLI reads: add sqlite or jsonl to --sinks for a report"


def _journal_page(
    runs: set[tuple[Path, tuple[str, ...]]], directory: Path, session_id: str
) -> Path | None:
    """The markdown journal's page of ``session_id``: the run's (``directory``) when it wrote a
    journal, else the one journal the processes wrote; None for none, or several elsewhere."""
    from tokenmeter.sinks import MarkdownJournalSink

    folders = {where for where, names in runs if "markdown" in names}
    if directory not in folders and len(folders) != 1:
        return None
    folder = directory if directory in folders else next(iter(folders))
    return MarkdownJournalSink(folder / "journal").session_path(session_id)


def _report_hint(settings: Any, runs: set[tuple[Path, tuple[str, ...]]]) -> str | None:
    """The report that shows the run's session: ``tokenmeter report --by session``, with the
    ``--source`` the run recorded into when that command, typed where the run was, reads
    another store: ``--dir`` and ``--sinks`` were the run's environment, not the shell's (its
    session was missing from the report named), and a program may configure its own directory
    (``runs``: the directories and sinks the processes said they recorded with). Quoted as
    a shell takes it, as ``tokenmeter demo`` names its data. None when the run recorded into no
    store the CLI reads."""
    from tokenmeter.cli._source import default_source_path, postgres_written
    from tokenmeter.sinks._files import absolute

    command = "tokenmeter report --by session"
    try:  # what the command reads: the shell's settings, without the run's options
        read: Path | None = None if postgres_written() else absolute(default_source_path())
    except (CliError, OSError):  # a bad setting the run's options replaced; cwd removed
        read = None
    written = _file_recorded(runs, absolute(settings.directory), settings.sinks)
    if written is not None:
        return command if written == read else f"{command} --source {shlex.quote(str(written))}"
    if any("postgres" in sinks for _, sinks in runs):
        # PostgreSQL only: its URL may hold a password
        return command if read is None else f"{command} --source postgresql://..."
    return None


def _file_recorded(
    runs: set[tuple[Path, tuple[str, ...]]], directory: Path, sinks: Sequence[str]
) -> Path | None:
    """The usage.db or usage.jsonl a report reads for the records of ``runs`` (directories and
    sinks): theirs when they wrote one; when they wrote several, the run's (``directory``
    and ``sinks``) if it is one of them. None when they wrote no such file."""
    from tokenmeter.cli._source import written_file

    files = {
        written_file(where, names) for where, names in runs if {"sqlite", "jsonl"} & set(names)
    }
    if len(files) == 1:
        return next(iter(files))
    own = written_file(directory, sinks)
    return own if own in files else None
