"""The ``tokenmeter`` command: reports on recorded usage, sessions, tail, prices, alerts, the
effective settings, and a demo.

``main(argv)`` returns the exit status: 0 on success, 1 for a problem with the data (missing or
unreadable source, unknown session), 2 for bad arguments (a bad date, an unknown ``--by`` key)
or a bad setting (``TOKENMETER_*``, pyproject.toml). Every error is one line on stderr.
"""

from __future__ import annotations

import argparse
import codecs
import io
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import NoReturn

from tokenmeter.cli._dates import parse_since
from tokenmeter.cli._errors import CliError
from tokenmeter.cli._output import FORMATS

__all__ = ["CliError", "build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line, not the usage block plus a line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, _error_line(message) + "\n")


#: The longest error line printed: one quoting a hostile argument (a 100 KB ``--since``) whole
#: filled the terminal.
_MAX_ERROR = 1_000


def _error_line(message: str) -> str:
    """``message`` as the one line an error prints: what it quotes (an argument, the data) shown,
    not obeyed (control characters, bidi overrides), and cut at ``_MAX_ERROR`` characters."""
    from tokenmeter.cli._output import printable

    line = printable(f"tokenmeter: error: {message}")
    return line if len(line) <= _MAX_ERROR else f"{line[: _MAX_ERROR - 3]}..."


def _date_type(parse: Callable[[str], datetime]) -> Callable[[str], datetime]:
    def convert(value: str) -> datetime:
        try:
            return parse(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


#: Longest poll interval: ``time.sleep`` refuses NaN and overflows on huge values.
_MAX_INTERVAL = 86_400.0
#: Shortest: below it a poll loop only burns a CPU (``--interval 1e-300`` polled without pause).
_MIN_INTERVAL = 0.01


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not _MIN_INTERVAL <= number <= _MAX_INTERVAL:  # NaN fails this too
        raise argparse.ArgumentTypeError(
            f"must be from {_MIN_INTERVAL} to {_MAX_INTERVAL:.0f} seconds, got {value!r}"
        )
    return number


def _count(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if not 0 <= number <= sys.maxsize:  # a bigger one overflows a deque and SQLite's LIMIT
        raise argparse.ArgumentTypeError(f"must be from 0 to {sys.maxsize}, got {value!r}")
    return number


_SOURCE_HELP = (
    "usage.db (SQLite) or .jsonl file, a directory holding one, or a postgresql:// URL "
    "(default: the directory the library writes to: TOKENMETER_DIR, else [tool.tokenmeter] "
    "directory, else .tokenmeter)"
)
_SINCE_HELP = "from this time, inclusive: 7d, 24h, 30m, 2026-11-01 or 2026-11-01T10:00"
_UNTIL_HELP = "up to this time, inclusive; a bare date means the END of that day"
_TZ_HELP = "time zone of dates, calendar groups and shown times, e.g. Europe/Paris (default UTC)"


def nonempty_path(value: str) -> str:
    """A path named on the command line. An empty one (``--source "$UNSET"``) would silently
    mean the default or the current directory: a usage error instead."""
    if not value:
        raise argparse.ArgumentTypeError("must not be empty")
    return value


def output_file(value: str) -> str | None:
    """``-o``: a file to write, or ``-`` for standard output (as most commands take it)."""
    return None if value == "-" else nonempty_path(value)


def _add_source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source", metavar="PATH", type=nonempty_path, help=_SOURCE_HELP, default=None
    )


def _add_window(parser: argparse.ArgumentParser) -> None:
    # Parsed after --tz is known (see ``window``): a bare date is a day in that zone.
    parser.add_argument("--since", metavar="WHEN", help=_SINCE_HELP)
    parser.add_argument("--until", metavar="WHEN", help=_UNTIL_HELP)
    parser.add_argument("--tz", metavar="ZONE", help=_TZ_HELP)


def _text(value: str) -> str:
    """A name to match with recorded text. A byte that is not UTF-8 (Python holds it as a lone
    surrogate) matches nothing recorded, and SQLite cannot bind it: a usage error."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(f"not UTF-8 text: {value!r}") from None
    return value


def _tag_filter(value: str) -> tuple[str, str]:
    key, sep, tag_value = _text(value).partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {value!r}")
    return key.strip(), tag_value


def _add_filters(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("filters (repeat a filter for any of several values)")
    group.add_argument("--provider", action="append", default=[], type=_text, metavar="NAME")
    group.add_argument("--model", action="append", default=[], type=_text, metavar="NAME")
    group.add_argument("--session-name", action="append", default=[], type=_text, metavar="NAME")
    group.add_argument("--tag", action="append", default=[], type=_tag_filter, metavar="KEY=VALUE")
    group.add_argument(
        "--status", action="append", default=[], metavar="STATUS", help="ok, error or blocked"
    )
    group.add_argument(
        "--estimated",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="only the calls whose usage was estimated (--no-estimated: only measured ones)",
    )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tokenmeter")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tokenmeter",
        description="Reports on what your LLM calls cost, from tokenmeter's SQLite, JSONL or "
        "PostgreSQL data.",
    )
    parser.add_argument("--version", action="version", version=f"tokenmeter {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    report = commands.add_parser("report", help="totals grouped by model, day, session or tag")
    _add_source(report)
    _add_window(report)
    _add_filters(report)
    report.add_argument(
        "--by",
        action="append",
        type=_text,
        metavar="KEY",
        help="model|provider|family|session|name (session name)|status|hour|day|week|month|"
        "tag:KEY; repeat or comma-separate for a composite key (default: model)",
    )
    report.add_argument(
        "--period",
        choices=("day", "week", "month"),
        help="this calendar day / week (from Monday) / month so far, in --tz",
    )
    report.add_argument(
        "--previous", action="store_true", help="with --period: the last closed one instead"
    )
    report.add_argument(
        "--compare",
        action="store_true",
        help="also show the change from the period of the same length just before",
    )
    report.add_argument(
        "--latency", action="store_true", help="p50 / p95 latency per row (reads every latency)"
    )
    report.add_argument(
        "--wide", action="store_true", help="every column, however wide the terminal"
    )
    report.add_argument(
        "--columns",
        metavar="LIST",
        help="the metric columns to show, comma-separated (e.g. calls,total,cost,errors)",
    )
    report.add_argument("--format", choices=FORMATS, help="default: from -o's suffix, else table")
    report.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        type=output_file,
        help="write here (created owner-only); - is standard output",
    )
    report.add_argument(
        "--detailed", action="store_true", help="also list the calls (newest --limit of them)"
    )
    report.add_argument(
        "--limit", type=_count, default=100, help="calls listed by --detailed; 0 = all (100)"
    )

    sessions = commands.add_parser("sessions", help="recent sessions with their totals")
    _add_source(sessions)
    _add_window(sessions)
    sessions.add_argument("--session-name", action="append", default=[], type=_text, metavar="NAME")
    sessions.add_argument("--limit", type=_count, default=20, help="how many; 0 = all (20)")
    sessions.add_argument(
        "--format",
        choices=("table", "markdown", "json"),
        help="default: from -o's suffix, else table",
    )
    sessions.add_argument("-o", "--output", metavar="FILE", type=output_file)

    session = commands.add_parser("session", help="one session, as the markdown journal shows it")
    session.add_argument(
        "session_id", metavar="ID", type=_text, help="session id (or a session name)"
    )
    _add_source(session)
    session.add_argument(
        "--format", choices=("markdown", "json"), help="default: from -o's suffix, else markdown"
    )
    session.add_argument("-o", "--output", metavar="FILE", type=output_file)

    tail = commands.add_parser("tail", help="the latest records; -f to follow new ones")
    _add_source(tail)
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new records")
    tail.add_argument("-n", "--lines", type=_count, default=10, help="records shown first (10)")
    tail.add_argument(
        "--interval", type=_positive_float, default=1.0, help="seconds between polls (1)"
    )
    tail.add_argument("--format", choices=("text", "json"), default="text")

    prices = commands.add_parser("prices", help="the prices tokenmeter would apply to a model")
    prices.add_argument("model")
    prices.add_argument("--provider", help="openai, anthropic, google, ... (default: guessed)")
    prices.add_argument("--at", type=_date_type(parse_since), help="prices as of this date")
    prices.add_argument("--tier", choices=("standard", "batch", "flex", "priority", "fast"))
    prices.add_argument("--format", choices=("table", "json"), default="table")

    alerts = commands.add_parser("alerts", help="usage alerts and budget warnings raised so far")
    alerts.add_argument(
        "--source",
        metavar="PATH",
        type=nonempty_path,
        default=None,
        help="alerts.jsonl, or a directory holding it (default: the configured directory)",
    )
    alerts.add_argument("--since", type=_date_type(parse_since), help=_SINCE_HELP)
    alerts.add_argument("--format", choices=("table", "json"), default="table")

    config = commands.add_parser("config", help="the effective settings and where each came from")
    config.add_argument("--format", choices=("text", "json"), default="text")

    demo = commands.add_parser(
        "demo", help="run the installed SDKs against a local fake provider and report"
    )
    demo.add_argument(
        "--live",
        action="store_true",
        help="call the real providers whose API keys are set (costs real money)",
    )
    demo.add_argument("--format", choices=FORMATS, default=None, help="report format (table)")
    demo.add_argument(
        "--dir",
        metavar="DIR",
        type=nonempty_path,
        default=None,
        help="where the demo records (default: ./.tokenmeter-demo, never your real data)",
    )

    from tokenmeter.cli._run import add_run_parser

    add_run_parser(commands)
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    command: str = args.command
    if command == "report":
        from tokenmeter.cli._report import run_report

        return run_report(args)
    if command == "sessions":
        from tokenmeter.cli._report import run_sessions

        return run_sessions(args)
    if command == "session":
        from tokenmeter.cli._report import run_session

        return run_session(args)
    if command == "tail":
        from tokenmeter.cli._tail import run_tail

        return run_tail(args)
    if command == "alerts":
        from tokenmeter.cli._alerts import run_alerts

        return run_alerts(args)
    if command == "config":
        from tokenmeter.cli._config_cmd import run_config

        return run_config(args)
    if command == "prices":
        from tokenmeter.cli._prices import run_prices

        return run_prices(args)
    if command == "run":
        from tokenmeter.cli._run import run_command

        return run_command(args)
    from tokenmeter.cli._demo import run_demo

    return run_demo(args)


def _replace_unencodable_output() -> None:
    """Make stdout replace (``?``) what its encoding cannot hold when it is not UTF-8 (a
    Latin-1 locale, ``PYTHONIOENCODING=ascii`` in CI, a redirect on Windows): an emoji in one
    session name stopped ``report``, ``sessions`` and ``tail`` with a UnicodeEncodeError
    traceback, the report cut where the character was. JSON is written ASCII-escaped."""
    stream = sys.stdout
    if not isinstance(stream, io.TextIOWrapper):  # replaced by the caller (a test's capture)
        return
    try:
        utf8 = codecs.lookup(stream.encoding).name == "utf-8"
    except LookupError:
        utf8 = False
    if not utf8 and stream.errors in ("strict", "surrogateescape"):  # a replacing choice is kept
        stream.reconfigure(errors="replace")


def _closed_streams(args: argparse.Namespace) -> None:
    """A stream the program was started without (``2>&-``) is None in Python: messages then go
    nowhere (``print(file=None)`` would put them on stdout); output is a one-line error unless
    it goes to ``-o`` (or, for ``run``, is the program's)."""
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115  # open as long as the process runs
    if sys.stdout is None:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        if args.command != "run" and getattr(args, "output", None) is None:
            raise CliError("standard output is closed")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # a bare ``tokenmeter``: what can it do?
        parser.print_help()
        return 0
    try:
        _closed_streams(args)
        _replace_unencodable_output()
        return _dispatch(args)
    except CliError as exc:
        print(_error_line(str(exc)), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, without a traceback at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
