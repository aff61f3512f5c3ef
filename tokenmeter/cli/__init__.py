"""The ``tokenmeter`` command: reports on recorded usage, sessions, tail, prices and a demo.

``main(argv)`` returns the exit status: 0 on success, 1 for a problem with the data (missing or
unreadable source, unknown session), 2 for bad arguments (a bad date, an unknown ``--by`` key).
Every error is one line on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import NoReturn

from tokenmeter.cli._dates import parse_since, parse_until
from tokenmeter.cli._errors import CliError

__all__ = ["CliError", "build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line, not the usage block plus a line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"tokenmeter: error: {message}\n")


def _date_type(parse: Callable[[str], datetime]) -> Callable[[str], datetime]:
    def convert(value: str) -> datetime:
        try:
            return parse(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


#: Longest poll interval: ``time.sleep`` refuses NaN and overflows on huge values.
_MAX_INTERVAL = 86_400.0


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not 0 < number <= _MAX_INTERVAL:  # NaN fails this too
        raise argparse.ArgumentTypeError(
            f"must be more than 0 and at most {_MAX_INTERVAL:.0f}, got {value!r}"
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
    "(default: $TOKENMETER_DIR/usage.db, else .tokenmeter/usage.db)"
)
_SINCE_HELP = "from this time, inclusive: 7d, 24h, 30m, 2026-11-01 or 2026-11-01T10:00 (UTC)"
_UNTIL_HELP = "up to this time, inclusive; a bare date means the END of that day (UTC)"


def _add_source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", metavar="PATH", help=_SOURCE_HELP, default=None)


def _add_window(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--since", type=_date_type(parse_since), help=_SINCE_HELP)
    parser.add_argument("--until", type=_date_type(parse_until), help=_UNTIL_HELP)


def build_parser() -> argparse.ArgumentParser:
    from tokenmeter.cli._report import FORMATS

    parser = _Parser(
        prog="tokenmeter",
        description="Reports on what your LLM calls cost, from tokenmeter's SQLite or JSONL data.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    report = commands.add_parser("report", help="totals grouped by model, day, session or tag")
    _add_source(report)
    _add_window(report)
    report.add_argument(
        "--by",
        action="append",
        metavar="KEY",
        help="model|provider|session|day|tag:KEY; repeat or comma-separate for a composite key "
        "(default: model)",
    )
    report.add_argument("--format", choices=FORMATS, help="default: from -o's suffix, else table")
    report.add_argument("-o", "--output", metavar="FILE", help="write here (created owner-only)")
    report.add_argument(
        "--detailed", action="store_true", help="also list the calls (newest --limit of them)"
    )
    report.add_argument(
        "--limit", type=_count, default=100, help="calls listed by --detailed; 0 = all (100)"
    )

    sessions = commands.add_parser("sessions", help="recent sessions with their totals")
    _add_source(sessions)
    _add_window(sessions)
    sessions.add_argument("--limit", type=_count, default=20, help="how many; 0 = all (20)")
    sessions.add_argument("--format", choices=("table", "markdown", "json"), default="table")
    sessions.add_argument("-o", "--output", metavar="FILE")

    session = commands.add_parser("session", help="one session, as the markdown journal shows it")
    session.add_argument("session_id", metavar="ID", help="session id (or a session name)")
    _add_source(session)
    session.add_argument("--format", choices=("markdown", "json"), default="markdown")
    session.add_argument("-o", "--output", metavar="FILE")

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
    prices.add_argument("--tier", choices=("standard", "batch", "flex", "priority"))
    prices.add_argument("--format", choices=("table", "json"), default="table")

    demo = commands.add_parser(
        "demo", help="run the installed SDKs against a local fake provider and report"
    )
    demo.add_argument(
        "--live",
        action="store_true",
        help="call the real providers whose API keys are set (costs real money)",
    )
    demo.add_argument("--format", choices=FORMATS, default=None, help="report format (table)")

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
    if command == "prices":
        from tokenmeter.cli._prices import run_prices

        return run_prices(args)
    if command == "run":
        from tokenmeter.cli._run import run_command

        return run_command(args)
    from tokenmeter.cli._demo import run_demo

    return run_demo(args)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except CliError as exc:
        print(f"tokenmeter: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, without a traceback at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
