"""The pytest plugin: what each test spent on LLM calls, budgets that fail a test or a run.

Registered through the ``pytest11`` entry point, so pytest loads it in every project where
tokenmeter is installed. It is inert unless ``--tokenmeter`` (or ``tokenmeter = true`` in the
ini file, or ``--tokenmeter-budget`` / ``--tokenmeter-json``) turns it on: until then it only adds
its options, its marker and the ``tokenmeter_fake`` fixture, and imports nothing heavier than
``tokenmeter`` itself (whose names load lazily). Installing tokenmeter never changes a test run.

Turned on, every test runs in its own tokenmeter session named by its node id and tagged
``test=<node id>``, so its calls also reach the configured sinks attributed to it. The test's
totals ride on its teardown report (a plain dict), which is how pytest-xdist workers hand them to
the controller: the controller adds up the same numbers a single process would, exactly.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Generator, Iterator
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tokenmeter._sessions import Session
    from tokenmeter.testing import FakeProvider

__all__ = ["tokenmeter_fake"]

#: The attribute of a teardown report that carries the test's totals (JSON-safe values only).
REPORT_KEY = "tokenmeter"
#: The attribute of a teardown report that carries the calls made outside any test before it
#: (while its process collected, between tests), counted once (JSON-safe values only).
OUTSIDE_KEY = "tokenmeter_outside"
#: The row of those calls in the summary and the JSON file, and of the calls a test's session
#: received after the test ended (``_Spend.late``).
OUTSIDE_TESTS = "(outside tests)"
_MARKER = "tokenmeter_budget"
_SPEND_KEY = pytest.StashKey["_Spend"]()
_TOP = 10
_NAME_WIDTH = 72


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tokenmeter", "LLM usage and cost per test (tokenmeter)")
    group.addoption(
        "--tokenmeter",
        action="store_true",
        default=None,
        help="meter the LLM calls each test makes; list the most expensive tests",
    )
    group.addoption(
        "--tokenmeter-budget",
        metavar="USD",
        default=None,
        help="fail the run when all tests together spend more than USD (implies --tokenmeter)",
    )
    group.addoption(
        "--tokenmeter-json",
        metavar="PATH",
        default=None,
        help="write every test's usage and the total to PATH as JSON (implies --tokenmeter)",
    )
    group.addoption(
        "--tokenmeter-top",
        metavar="N",
        type=int,
        default=None,
        help=f"how many of the most expensive tests the summary lists (default {_TOP})",
    )
    parser.addini("tokenmeter", "meter LLM calls per test, like --tokenmeter", type="bool")
    parser.addini("tokenmeter_budget", "like --tokenmeter-budget (USD)", default=None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{_MARKER}(usd): fail this test when its LLM calls cost more than usd "
        "(needs --tokenmeter)",
    )
    for option in ("tokenmeter_budget", "tokenmeter_json"):
        if config.getoption(option) == "":  # ``--tokenmeter-budget="$UNSET"``: not silently off
            raise pytest.UsageError(f"--{option.replace('_', '-')} must not be empty")
    budget_text = config.getoption("tokenmeter_budget")
    budget_name = "--tokenmeter-budget"
    if not budget_text:
        budget_text, budget_name = config.getini("tokenmeter_budget"), "tokenmeter_budget (ini)"
    json_path = config.getoption("tokenmeter_json")
    enabled = config.getoption("tokenmeter")
    if enabled is None:
        enabled = bool(config.getini("tokenmeter"))
    if not (enabled or budget_text or json_path):
        return
    budget = None
    if budget_text:
        budget = _usd(str(budget_text))
        if budget is None:
            raise pytest.UsageError(
                f"{budget_name} must be a non-negative number of USD (at most "
                f"{_MAX_USD}), got {budget_text!r}"
            )
    from tokenmeter._config import check_settings_prices_file, load_settings_with_sources

    try:  # here, once: from the first test's instrument() it was an INTERNALERROR traceback
        settings, sources = load_settings_with_sources()
        check_settings_prices_file(settings, sources)
    except ValueError as exc:  # a bad TOKENMETER_* variable, [tool.tokenmeter] or prices file
        raise pytest.UsageError(str(exc)) from None
    if json_path and _is_dir(json_path):
        raise pytest.UsageError(f"--tokenmeter-json: {json_path} is a directory; name a file")
    if json_path:  # the summary written over usage.jsonl or usage.db replaced the records
        from tokenmeter.cli._errors import CliError
        from tokenmeter.cli._output import refuse_overwriting

        try:
            refuse_overwriting(json_path, settings.directory, "--tokenmeter-json")
        except CliError as exc:
            raise pytest.UsageError(str(exc)) from None
    top = config.getoption("tokenmeter_top")
    if top is not None and top < 0:
        raise pytest.UsageError(f"--tokenmeter-top must be 0 or more, got {top}")
    meter = Meter(
        config,
        budget=budget,
        budget_name=budget_name,
        json_path=json_path,
        top=_TOP if top is None else top,
        disabled_by=sources["disabled"] if settings.disabled else None,
    )
    config.pluginmanager.register(meter, "tokenmeter-meter")


def _is_dir(json_path: str) -> bool:
    """Whether ``--tokenmeter-json`` names a directory. A name the system refuses to look up
    (too long: ENAMETOOLONG; under a directory that may not be searched: EACCES) is a usage
    error: ``Path.is_dir()`` raised it from this hook as an INTERNALERROR traceback, and no
    test ran."""
    try:
        return Path(json_path).is_dir()
    except OSError as exc:
        raise pytest.UsageError(f"--tokenmeter-json: {json_path}: {exc.strerror or exc}") from None


@pytest.fixture
def tokenmeter_fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeProvider]:
    """A started `tokenmeter.testing.FakeProvider`, with the environment pointing the OpenAI,
    Anthropic and Gemini SDKs at it: clients your code creates during the test (``OpenAI()``,
    ``Anthropic()``, ``genai.Client()``) talk to the fake, offline, with a fake key.

    Works with or without ``--tokenmeter``; ``fake.openai_client()`` and friends give clients
    that never retry, and ``fake.set_usage(...)`` / ``fake.fail_next(...)`` set what comes back.
    """
    from tokenmeter.testing import FakeProvider

    with FakeProvider() as fake:
        for name in _NOT_FOR_THE_FAKE:
            monkeypatch.delenv(name, raising=False)
        for name, value in {**fake.environ(), **_FAKE_ENVIRON}.items():
            monkeypatch.setenv(name, value)
        yield fake


#: Variables of the developer's environment that the SDKs would prefer to the fake's (set back
#: after the test): google-genai's key before ours; Anthropic's bearer token, which the client
#: would send to the fake beside the fake key.
_NOT_FOR_THE_FAKE = ("GOOGLE_API_KEY", "ANTHROPIC_AUTH_TOKEN")
#: A Vertex AI user's GOOGLE_GENAI_USE_VERTEXAI=true made genai.Client() build Vertex URLs on the
#: fake's base URL: the test's call failed with a 404 from the fake ("no route POST /").
_FAKE_ENVIRON = {"GOOGLE_GENAI_USE_VERTEXAI": "false"}


#: The largest budget (``tokenmeter._sessions.MAX_BUDGET_USD``): the summary could not print
#: ``1e1000000`` (decimal.Overflow after every test had run).
_MAX_USD = Decimal(10**9)


def _usd(text: str) -> Decimal | None:
    try:
        value = Decimal(text.strip())
    except (InvalidOperation, ValueError):
        return None
    return value if value.is_finite() and 0 <= value <= _MAX_USD else None


def _marker_budget(item: pytest.Item) -> Decimal | None:
    marker = item.get_closest_marker(_MARKER)
    if marker is None:
        return None
    args = list(marker.args) + ([marker.kwargs["usd"]] if "usd" in marker.kwargs else [])
    value = None
    if len(args) == 1 and not isinstance(args[0], bool):
        with contextlib.suppress(Exception):  # str() of an int past Python's digit limit
            value = _usd(str(args[0]))
    if value is None:
        raise ValueError(
            f"{item.nodeid}: @pytest.mark.{_MARKER} takes one non-negative number of USD "
            f"(at most {_MAX_USD}), "
            f"e.g. @pytest.mark.{_MARKER}(0.05); got {_shown(marker.args)} {_shown(marker.kwargs)}"
        )
    return value


def _shown(value: object) -> str:
    """``repr(value)``, cut to 100 characters; a value that cannot show itself (an int past
    Python's digit limit) by its type."""
    try:
        text = repr(value)
    except Exception:
        return f"<{type(value).__name__}>"
    return text if len(text) <= 100 else f"{text[:97]}..."


_COUNTS = ("calls", "input_tokens", "output_tokens", "cost_usd", "unpriced_calls")


class _Spend:
    """What one test spent: its session's totals, plus the calls that landed in the process's
    implicit session meanwhile (made on a thread the test started, which does not carry the
    test's session): tests run one at a time in a process, so those are the test's too."""

    def __init__(self, session: Session) -> None:
        from tokenmeter import _sessions

        self.session = session
        self.outside = _sessions.implicit_session()
        self.before = self._counts(self.outside)
        #: The session's own counts in the test's row (``totals``); none before it is made.
        self.reported: dict[str, Any] = dict.fromkeys(_COUNTS, 0)
        #: Later tests whose sessions were entered inside this one's (``Meter._nest``): their
        #: calls roll up into this session's totals, but are in their own rows.
        self.nested: list[_Spend] = []

    @staticmethod
    def _counts(session: Session) -> dict[str, Any]:
        return {name: getattr(session.summary, name) for name in _COUNTS}

    def counts(self, own: dict[str, Any] | None = None) -> dict[str, Any]:
        own = self._counts(self.session) if own is None else own
        now = self._counts(self.outside)
        return {name: own[name] + now[name] - self.before[name] for name in _COUNTS}

    def totals(self, nodeid: str) -> dict[str, Any]:
        self.reported = self._counts(self.session)
        return {"nodeid": nodeid, "session_id": self.session.id, **_row(self.counts(self.reported))}

    def late(self) -> dict[str, Any]:
        """The calls the test's session received after its row was made: work the test started
        that runs on after it (a thread started by a session-scoped fixture in its setup, which
        serves every later test in this session; a stream read by a later test). Not those of
        the later tests nested in it, which have rows of their own (a session a suite-wide
        fixture entered in the first test's setup holds every later test's session: each of
        their calls was counted twice)."""
        now = self._counts(self.session)
        for spend in self.nested:  # their whole sessions, late calls too: their own late()
            theirs = self._counts(spend.session)
            now = {name: now[name] - theirs[name] for name in _COUNTS}
        return {"nodeid": OUTSIDE_TESTS, **_row({n: now[n] - self.reported[n] for n in _COUNTS})}


def _row(counts: dict[str, Any]) -> dict[str, Any]:
    """A row of the summary and the JSON file: a test's counts, or those outside tests."""
    return {
        "calls": counts["calls"],
        "input_tokens": counts["input_tokens"],
        "output_tokens": counts["output_tokens"],
        "total_tokens": counts["input_tokens"] + counts["output_tokens"],
        "cost_usd": str(counts["cost_usd"]),
        "unpriced_calls": counts["unpriced_calls"],
    }


class _Outside:
    """The calls made in this process outside any test (at collection: a parametrize list a
    model wrote, a module-level call): they land in the implicit session, and were counted
    nowhere. Counted from ``mark``, which moves to the end of each test's window."""

    def __init__(self) -> None:
        from tokenmeter import _sessions

        self.session = _sessions.implicit_session()
        self.mark = _Spend._counts(self.session)

    def take(self) -> dict[str, Any]:
        """The calls since the mark, which moves on to now."""
        now = _Spend._counts(self.session)
        taken = {name: now[name] - self.mark[name] for name in _COUNTS}
        self.mark = now
        return {"nodeid": OUTSIDE_TESTS, **_row(taken)}


class Meter:
    """The plugin as turned on: one per pytest run (in the controller and in each xdist worker)."""

    def __init__(
        self,
        config: pytest.Config,
        *,
        budget: Decimal | None,
        json_path: str | None,
        top: int,
        disabled_by: str | None = None,
        budget_name: str = "--tokenmeter-budget",
    ) -> None:
        self.config = config
        self.budget = budget
        #: Where the run's budget came from, named when it is passed: the option or the ini file.
        self.budget_name = budget_name
        self.json_path = Path(json_path).absolute() if json_path else None
        self.top = top
        self.results: list[dict[str, Any]] = []
        #: The calls made outside any test, in every process (see `_Outside`).
        self.outside: list[dict[str, Any]] = []
        self._outside: _Outside | None = None
        #: What each test run in this process spent, by its session's id, read again at the end
        #: (``_Spend.late``).
        self._spent: dict[str, _Spend] = {}
        self.is_worker = hasattr(config, "workerinput")
        #: An xdist controller: it neither collects nor runs a test (its workers do). xdist's own
        #: test: a ``--dist`` mode with no ``-n``/``--tx`` (``addopts``, ``-n`` given on CI only)
        #: runs the tests here, and the calls made while collecting went unmetered.
        self.is_controller = (
            not self.is_worker
            and config.getoption("dist", "no") != "no"
            and bool(config.getoption("tx", None))
        )
        #: The providers the plugin patched (not those the application had patched already).
        self._patched: set[str] = set()
        #: What disabled tokenmeter (TOKENMETER_DISABLED...): the tests ran unmetered.
        self.disabled_by = disabled_by
        #: Why the JSON file could not be written (shown in the summary; the run fails).
        self.json_error: str | None = None
        #: The run was interrupted (Ctrl-C, SIGTERM, SIGHUP): its totals count the tests that
        #: finished only. (Not a run that stopped itself: collection errors, ``-x``.)
        self.interrupted = False
        #: The JSON file was written, or tried: the exit flush does not write it again.
        self.json_done = False
        if self.json_path is not None and not self.is_worker:
            from tokenmeter import _pipeline

            _pipeline.before_exit(self._write_json_at_exit)
            # SIGTERM / SIGHUP run the exit flush, which writes the file: hooked here too, for
            # an xdist controller never instruments (it runs no test).
            _pipeline.hook_termination_signals()

    # -- collecting and running each test (in the process that does) -----------------------------
    def _instrument(self) -> None:
        import tokenmeter

        self._patched.update(tokenmeter.instrument().providers)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_collection(self) -> Iterator[None]:
        """Metered from collection on: a test module's calls at import (a parametrize list a
        model wrote) were made unmetered, missing from the store, the summary and the budget."""
        if not self.is_controller:  # which collects nothing, and must not be instrumented
            self._outside = _Outside()
            self._instrument()
        yield

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Iterator[None]:
        import tokenmeter

        # Here too: an xdist controller runs no test. At every test: one that called
        # uninstrument() left the tests after it unmetered (instrument() is idempotent).
        self._instrument()
        if self._outside is not None:
            item.stash[_OUTSIDE_KEY] = self._outside.take()
        session = tokenmeter.session(item.nodeid, tags={"test": item.nodeid})
        item.stash[_SPEND_KEY] = _Spend(session)
        with session:
            yield

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_call(self, item: pytest.Item) -> None:
        """After the fixtures ran: the context a session a fixture opened (a suite's ``build``
        tag) is the test's too (see ``_give_the_session_to_an_isolated_asyncio_test``)."""
        _give_the_session_to_an_isolated_asyncio_test(item)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        """Read the test's budget marker; a bad one is an error of that test (a UsageError
        from a report hook killed an xdist worker: an INTERNALERROR that never said why).

        Each run of the test decides its own outcome: pytest-rerunfailures runs the same item
        again after a failed attempt, and the flag that attempt left made its rerun's budget
        unchecked (a rerun over its budget passed)."""
        item.stash[_DECIDED_KEY] = False
        try:
            item.stash[_BUDGET_KEY] = _marker_budget(item)
        except ValueError as exc:
            raise pytest.fail.Exception(str(exc), pytrace=False) from None

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, Any, None]:
        outcome = yield
        report: pytest.TestReport = outcome.get_result()
        spend = item.stash.get(_SPEND_KEY, None)
        if spend is None:
            return
        budget = item.stash.get(_BUDGET_KEY, None)
        if budget is not None and _budget_checked_at(item, report):
            counts = spend.counts()
            cost: Decimal = counts["cost_usd"]
            if cost > budget:
                report.outcome = "failed"
                tokens = counts["input_tokens"] + counts["output_tokens"]
                calls = "1 call" if counts["calls"] == 1 else f"{counts['calls']} calls"
                report.longrepr = (
                    f"tokenmeter: this test's LLM calls cost ${cost.normalize():f}, over its "
                    f"budget of ${budget.normalize():f} (@pytest.mark.{_MARKER}); "
                    f"{calls}, {tokens} tokens"
                )
        if not report.passed:  # failed, skipped, xfailed: the test has its outcome
            item.stash[_DECIDED_KEY] = True
        if call.when == "teardown":
            setattr(report, REPORT_KEY, spend.totals(item.nodeid))
            self._nest(spend)
            self._spent[spend.session.id] = spend
            outside = item.stash.get(_OUTSIDE_KEY, None)
            if self._outside is not None:
                self._outside.take()  # the test's window ends: those calls were the test's
            if outside is not None and outside["calls"]:
                setattr(report, OUTSIDE_KEY, outside)

    def _nest(self, spend: _Spend) -> None:
        """Tell the nearest earlier test whose session encloses this test's (through a session a
        fixture entered in that test's setup and left open) that this test's calls are not late
        calls of its own. The nearest only: its ``late`` leaves out this whole session, which
        holds any session nested deeper."""
        enclosing = spend.session.parent
        while enclosing is not None and enclosing.id not in self._spent:
            enclosing = enclosing.parent
        if enclosing is not None:
            self._spent[enclosing.id].nested.append(spend)

    # -- collecting (in the controller under xdist: the reports arrive from the workers) ---------
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        totals = getattr(report, REPORT_KEY, None)
        if report.when == "teardown" and isinstance(totals, dict):
            self.results.append(totals)
        outside = getattr(report, OUTSIDE_KEY, None)
        if report.when == "teardown" and isinstance(outside, dict):
            self.outside.append(outside)

    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        """Ctrl-C. pytest also ends a run this way, with an exception of its own (a subclass),
        when it stops itself (collection errors; xdist's ``-x``): not an interruption."""
        if type(excinfo.value) is KeyboardInterrupt:
            self.interrupted = True

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: object) -> None:
        """An xdist worker's calls outside its tests since its last one (a worker that ran no
        test: all it made while collecting), handed over as it ends."""
        outside = getattr(node, "workeroutput", {}).get(OUTSIDE_KEY)
        if isinstance(outside, dict):
            self.outside.append(outside)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        # After the last test, or with no test at all (an xdist worker sends it as it ends).
        # The calls of tests' sessions made after their rows were counted nowhere: a thread a
        # session-scoped fixture started served 10 calls of later tests, none in the total.
        outside = [spend.late() for spend in self._spent.values()]
        if self._outside is not None:
            outside.append(self._outside.take())
        if self.is_worker:
            if outside:
                self.config.workeroutput[OUTSIDE_KEY] = _added(outside)  # type: ignore[attr-defined]
            return
        import tokenmeter

        tokenmeter.flush(timeout=10)  # the sinks have every record when pytest exits
        self.outside.extend(outside)
        total = self.total()
        over = self.budget is not None and total["cost"] > self.budget
        if over:
            _fail(session)
        if self.json_path is not None:
            self.json_done = True
            try:
                self.write_json(total)
            except OSError as exc:  # after every test ran: one line, not an INTERNALERROR
                self.json_error = f"cannot write {self.json_path}: {exc.strerror or exc}"
                _fail(session)

    def pytest_unconfigure(self) -> None:
        from tokenmeter import _pipeline

        _pipeline.remove_before_exit(self._write_json_at_exit)
        if self._patched:  # only those: pytest run in-process (pytest.main()) by a program
            # that meters itself left the program's later calls unmetered (uninstrument() of all)
            import tokenmeter

            tokenmeter.uninstrument(sorted(self._patched))

    # -- the numbers ----------------------------------------------------------------------------
    def outside_tests(self) -> list[dict[str, Any]]:
        """The calls made outside any test, in every process, as one row (none without)."""
        if not any(r["calls"] for r in self.outside):
            return []
        return [_added(self.outside)]

    def total(self) -> dict[str, Any]:
        spending = [r for r in self.results if r["calls"]]
        rows = [*self.results, *self.outside_tests()]
        return {
            "tests": len(self.results),
            "tests_with_calls": len(spending),
            "calls": sum(r["calls"] for r in rows),
            "input_tokens": sum(r["input_tokens"] for r in rows),
            "output_tokens": sum(r["output_tokens"] for r in rows),
            "total_tokens": sum(r["total_tokens"] for r in rows),
            "cost": sum((Decimal(r["cost_usd"]) for r in rows), Decimal(0)),
            "unpriced_calls": sum(r["unpriced_calls"] for r in rows),
        }

    def ranked(self) -> list[dict[str, Any]]:
        """Tests that made calls, the most expensive first (then most tokens, then by id), and
        the calls made outside any test as one more row."""
        spending = [r for r in [*self.results, *self.outside_tests()] if r["calls"]]
        return sorted(
            spending, key=lambda r: (-Decimal(r["cost_usd"]), -r["total_tokens"], r["nodeid"])
        )

    def _write_json_at_exit(self) -> None:
        """A run ended by SIGTERM or SIGHUP (a CI job's time limit, ``kill``) never reaches
        ``pytest_sessionfinish``, and left no JSON file: it is written at tokenmeter's exit
        flush instead, marked interrupted, with the tests that had finished."""
        if self.json_done:
            return
        self.json_done = self.interrupted = True
        self.write_json(self.total())

    def write_json(self, total: dict[str, Any]) -> None:
        from tokenmeter.cli._output import _write_file  # through a link, into a pipe, atomic
        from tokenmeter.cli.reports._format import dumps_exact

        cost = total.pop("cost")
        document = {
            "total": {**total, "cost_usd": _known(cost, total)},
            "budget_usd": self.budget,
            "over_budget": self.budget is not None and cost > self.budget,
            "interrupted": self.interrupted,
            "tests": [
                {**r, "cost_usd": _known(Decimal(r["cost_usd"]), r), "share": _share(r, cost)}
                for r in self.ranked()
            ],
        }
        self.json_path.parent.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
        _write_file(self.json_path, dumps_exact(document) + "\n")  # type: ignore[arg-type]

    # -- the terminal summary -------------------------------------------------------------------
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.is_worker:
            return
        from tokenmeter.cli._output import one_line
        from tokenmeter.cli.reports._format import fmt_int, fmt_usd

        total = self.total()
        cost = total["cost"]
        write = terminalreporter.write_line
        terminalreporter.write_sep("=", "tokenmeter: LLM usage by test")
        if self.disabled_by is not None:  # no count, and no budget verdict: nothing is known
            write(f"tokenmeter is disabled ({one_line(self.disabled_by)}): nothing was metered")
        elif not total["calls"]:
            write(f"no LLM calls in {total['tests']} tests")
        else:
            ranked = self.ranked()
            shown = ranked[: self.top]
            rows = [
                (
                    one_line(r["nodeid"]),  # a plugin's item named by its data: no forged row
                    fmt_int(r["calls"]),
                    fmt_int(r["total_tokens"]),
                    fmt_usd(_known(Decimal(r["cost_usd"]), r)),
                    _fmt_share(_share(r, cost)),
                )
                for r in shown
            ]
            label = f"total ({total['tests_with_calls']} of {total['tests']} tests made calls)"
            rows.append(
                (
                    label,
                    fmt_int(total["calls"]),
                    fmt_int(total["total_tokens"]),
                    fmt_usd(_known(cost, total)),
                    "",
                )
            )
            head = ("test", "calls", "tokens", "cost", "share")
            widths = [min(_NAME_WIDTH, max(len(row[0]) for row in rows)), 7, 11, 12, 6]
            for index, row in enumerate([head, *rows]):
                if index == len(rows):  # the total row: a rule above it
                    write("-" * (sum(widths) + 2 * (len(widths) - 1)))
                name = _middle(row[0], widths[0])
                cells = [name.ljust(widths[0])] + [
                    cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True)
                ]
                write("  ".join(cells).rstrip())
            if len(ranked) > len(shown):
                write(f"... and {len(ranked) - len(shown)} more tests that made calls")
            if total["unpriced_calls"]:
                unpriced = total["unpriced_calls"]
                had = "call had" if unpriced == 1 else "calls had"
                write(f"{unpriced} {had} no known price (not in the cost)")
        if self.interrupted and self.disabled_by is None:
            write(
                "the run was interrupted: these totals count the tests that finished "
                "(the store holds every call recorded)"
            )
        if self.budget is not None and self.disabled_by is None:
            if cost > self.budget:
                terminalreporter.write_line(
                    f"tokenmeter: FAILED: the tests spent {fmt_usd(cost)}, over the budget of "
                    f"{fmt_usd(self.budget)} ({self.budget_name})",
                    red=True,
                    bold=True,
                )
            else:
                write(f"within the budget of {fmt_usd(self.budget)}")
        if self.json_error is not None:
            terminalreporter.write_line(
                f"tokenmeter: FAILED: {self.json_error} (--tokenmeter-json)", red=True, bold=True
            )
        elif self.json_path is not None:
            write(f"usage written to {self.json_path}")


#: A phase of this run of the test did not pass (tokenmeter's budget check may have failed
#: it): its budget is not checked again in this run. Cleared as each run starts its setup.
_DECIDED_KEY = pytest.StashKey[bool]()
#: The calls made outside any test before this one (``_Outside.take``), in its process.
_OUTSIDE_KEY = pytest.StashKey[dict[str, Any]]()
#: The test's ``tokenmeter_budget`` marker, read when its setup starts (None: no marker).
_BUDGET_KEY = pytest.StashKey[Decimal | None]()


def _give_the_session_to_an_isolated_asyncio_test(item: pytest.Item) -> None:
    """A ``unittest.IsolatedAsyncioTestCase`` runs its ``asyncSetUp``, test and
    ``asyncTearDown`` in a copy of the context made when its instance was (pytest makes it at
    collection, before the test's session is entered): their calls went to the process's
    implicit session, stored without the test's session and ``test`` tag. Its copy is made
    again when the test is called: inside the test's session, and those its fixtures opened."""
    import unittest

    cls = getattr(item, "cls", None)
    if not (isinstance(cls, type) and issubclass(cls, unittest.IsolatedAsyncioTestCase)):
        return
    instance: Any = getattr(item, "instance", None)
    if hasattr(instance, "_asyncioTestContext"):  # CPython's name since 3.11
        instance._asyncioTestContext = contextvars.copy_context()


def _added(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Rows of calls made outside any test, added up into one."""
    row: dict[str, Any] = {"nodeid": OUTSIDE_TESTS}
    for name in ("calls", "input_tokens", "output_tokens", "total_tokens", "unpriced_calls"):
        row[name] = sum(r[name] for r in rows)
    row["cost_usd"] = str(sum((Decimal(r["cost_usd"]) for r in rows), Decimal(0)))
    return row


def _fail(session: pytest.Session) -> None:
    """Exit status 1 (tests failed) for a run whose tests passed, or that had none to run: a
    budget passed by the calls made while collecting ended in 5 (no tests collected), which
    CI scripts often accept. A run that failed otherwise keeps its own status."""
    if session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _budget_checked_at(item: pytest.Item, report: pytest.TestReport) -> bool:
    """The budget is checked when the test has run: on its call report (the counts hold its
    setup's calls), then on its teardown report for the calls made there. Checked at setup, a
    failure there was a setup ERROR and the test's body never ran. Only while every phase has
    passed: a test that failed (or was skipped) keeps that outcome, not a second one (its
    teardown was also an ERROR for its budget), and it fails once for its budget."""
    return report.when != "setup" and report.passed and not item.stash.get(_DECIDED_KEY, False)


def _known(cost: Decimal, counts: dict[str, Any]) -> Decimal | None:
    """``cost``, or None (shown ``n/a``, JSON null) when every call counted had no known price:
    as ``tokenmeter run`` and the reports show them, never a cost of $0."""
    return None if counts["calls"] and counts["unpriced_calls"] == counts["calls"] else cost


def _share(result: dict[str, Any], cost: Decimal) -> Decimal | None:
    return (Decimal(result["cost_usd"]) / cost).quantize(Decimal("0.0001")) if cost else None


def _fmt_share(share: Decimal | None) -> str:
    return "" if share is None else f"{share * 100:.1f}%"


def _middle(text: str, width: int) -> str:
    """Shorten in the middle: a node id's file and test name are both worth keeping."""
    if len(text) <= width:
        return text
    keep = width - 1
    return text[: keep // 2] + "…" + text[len(text) - (keep - keep // 2) :]
