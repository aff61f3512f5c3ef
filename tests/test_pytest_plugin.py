"""The pytest plugin, driven through ``pytester``: inner pytest runs whose tests call the real
OpenAI SDK against FakeProvider (the ``tokenmeter_fake`` fixture), with and without xdist.

Prices come from an override in the inner project's pyproject.toml, so every cost below is exact
arithmetic and no price-data release can change it.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import pkgutil
import signal
import stat
import sys

import pytest

import tokenmeter

pytest_plugins = ["pytester"]


def _import_what_inner_runs_import() -> None:
    """pytester's in-process runs drop from ``sys.modules`` every module first imported inside
    them. A tokenmeter module or SDK first imported there was imported again by the tests after
    this file's, in a second copy: their calls went to a pipeline no sink was configured in (a
    budget test never refused, in some orders of the suite). Imported here first, they stay."""
    names = [
        name
        for _, name, _ in pkgutil.walk_packages(tokenmeter.__path__, "tokenmeter.")
        if not name.startswith(("tokenmeter.__main__", "tokenmeter._bootstrap"))
    ]
    for name in [*names, "openai", "anthropic", "google.genai", "google.generativeai"]:
        with contextlib.suppress(ImportError):  # an extra not installed (oldest constraints)
            importlib.import_module(name)


_import_what_inner_runs_import()

#: USD per million tokens for the model the inner tests call: 1000 in + 500 out = $0.002.
_INI = """
[tool.pytest.ini_options]
asyncio_default_fixture_loop_scope = "function"
"""
_TOKENMETER = """
[tool.tokenmeter]
sinks = ["jsonl"]
prices = {"m-test" = {input_per_mtok = 1, output_per_mtok = 2}}
"""
_PYPROJECT = _INI + _TOKENMETER

_TESTS = """
import openai
import pytest


def call(times=1):
    client = openai.OpenAI(max_retries=0)  # the fixture's environment points it at the fake
    for _ in range(times):
        client.chat.completions.create(model="m-test", messages=[])


@pytest.fixture(autouse=True)
def usage(tokenmeter_fake):
    tokenmeter_fake.set_usage(openai={"prompt_tokens": 1000, "completion_tokens": 500})


def test_one_call():
    call()


def test_three_calls():
    call(3)


def test_no_call():
    pass
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyprojecttoml(_PYPROJECT)
    pytester.makepyfile(test_llm=_TESTS)
    return pytester


def _records(pytester: pytest.Pytester) -> list[dict[str, object]]:
    path = pytester.path / ".tokenmeter" / "usage.jsonl"
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [row for row in map(json.loads, lines) if "model_name" in row]


def test_inert_without_the_option(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_patched="""
        import openai
        import wrapt

        def test_sdk_is_not_patched():
            create = openai.resources.chat.completions.Completions.__dict__["create"]
            assert not isinstance(create, wrapt.ObjectProxy)
        """
    )
    result = project.runpytest("--strict-markers")
    result.assert_outcomes(passed=4)
    assert "LLM usage" not in result.stdout.str()
    assert not (project.path / ".tokenmeter").exists()


def test_summary_lists_tests_by_cost_with_the_total(project: pytest.Pytester) -> None:
    result = project.runpytest("--tokenmeter")
    result.assert_outcomes(passed=3)
    result.stdout.re_match_lines(
        [
            r".*tokenmeter: LLM usage by test.*",
            r"test +calls +tokens +cost +share",
            r"test_llm.py::test_three_calls +3 +4,500 +\$0\.006 +75\.0%",
            r"test_llm.py::test_one_call +1 +1,500 +\$0\.002 +25\.0%",
            r"-+",
            r"total \(2 of 3 tests made calls\) +4 +6,000 +\$0\.008",
        ]
    )


def test_each_test_is_a_session_tagged_with_its_id(project: pytest.Pytester) -> None:
    project.runpytest("--tokenmeter").assert_outcomes(passed=3)
    records = _records(project)
    assert sorted(str(r["session_name"]) for r in records) == [
        "test_llm.py::test_one_call",
        *["test_llm.py::test_three_calls"] * 3,
    ]
    for record in records:
        assert record["tags"] == {"test": record["session_name"]}
    assert len({r["session_id"] for r in records}) == 2


_ISOLATED_ASYNCIO_TESTS = """
import unittest

from tokenmeter.testing import FakeProvider

FAKE = FakeProvider(openai_usage={"prompt_tokens": 1000, "completion_tokens": 500}).__enter__()


class Chat(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self):
        self.client = FAKE.openai_client(async_=True)
        await self.client.chat.completions.create(model="m-test", messages=[])

    async def test_one(self):
        await self.client.chat.completions.create(model="m-test", messages=[])

    async def test_two(self):
        for _ in range(2):
            await self.client.chat.completions.create(model="m-test", messages=[])
"""


def test_an_isolated_asyncio_test_cases_calls_are_stored_in_its_session(
    pytester: pytest.Pytester,
) -> None:
    """``IsolatedAsyncioTestCase`` runs its test in a context copied when pytest made its
    instance, at collection: its calls were stored in the process's implicit session, without
    the test's tag (``report --by tag:test`` found none), though the summary listed them.
    Copied again as the test's session was entered, the copy missed the session a fixture
    opened then (a suite's ``build`` tag): it is made when the test is called."""
    pytester.makepyprojecttoml(_PYPROJECT)
    pytester.makeconftest(
        "import pytest, tokenmeter\n"
        "@pytest.fixture(scope='session', autouse=True)\n"
        "def suite():\n"
        "    with tokenmeter.session('suite', tags={'build': '1234'}):\n"
        "        yield\n"
    )
    pytester.makepyfile(test_chat=_ISOLATED_ASYNCIO_TESTS)
    result = pytester.runpytest_subprocess("--tokenmeter", "-p", "no:asyncio")
    result.assert_outcomes(passed=2)
    records = _records(pytester)
    # (The first test's calls are in the suite's session, which its setup opened inside it.)
    assert sorted(str(r["tags"].get("test")) for r in records) == [
        *["test_chat.py::Chat::test_one"] * 2,
        *["test_chat.py::Chat::test_two"] * 3,
    ]
    assert all(record["tags"]["build"] == "1234" for record in records)


def test_ini_option_turns_it_on(project: pytest.Pytester) -> None:
    project.makepyprojecttoml(_INI + "tokenmeter = true\n" + _TOKENMETER)
    result = project.runpytest()
    result.stdout.fnmatch_lines(["*tokenmeter: LLM usage by test*"])
    assert len(_records(project)) == 4


def _json_report(project: pytest.Pytester, *args: str) -> dict[str, object]:
    result = project.runpytest("--tokenmeter-json=out/usage.json", *args)
    result.assert_outcomes(passed=3)
    report: dict[str, object] = json.loads((project.path / "out/usage.json").read_text())
    return report


def test_json_file_for_ci(project: pytest.Pytester) -> None:
    report = _json_report(project)
    assert report["total"] == {
        "tests": 3,
        "tests_with_calls": 2,
        "calls": 4,
        "input_tokens": 4000,
        "output_tokens": 2000,
        "total_tokens": 6000,
        "unpriced_calls": 0,
        "cost_usd": 0.008,
    }
    assert report["budget_usd"] is None
    assert report["over_budget"] is False
    tests = report["tests"]
    assert isinstance(tests, list)
    assert [(t["nodeid"], t["calls"], t["cost_usd"], t["share"]) for t in tests] == [
        ("test_llm.py::test_three_calls", 3, 0.006, 0.75),
        ("test_llm.py::test_one_call", 1, 0.002, 0.25),
    ]


_CASES_WRITTEN_BY_A_MODEL = """
import pytest
from tokenmeter.testing import FakeProvider

FAKE = FakeProvider(openai_usage={"prompt_tokens": 1000, "completion_tokens": 500}).__enter__()


def cases():  # at collection: a parametrize list a model wrote
    FAKE.openai_client().chat.completions.create(model="m-test", messages=[])
    return ["a"]


@pytest.mark.parametrize("case", cases())
def test_case(case):
    FAKE.openai_client().chat.completions.create(model="m-test", messages=[])
"""


@pytest.mark.parametrize(
    ("workers", "collected"),
    [([], 1), (["-n", "2"], 2), (["--dist", "loadgroup"], 1)],
    ids=["alone", "xdist", "dist-mode-without-workers"],
)
def test_calls_made_while_collecting_are_counted(
    pytester: pytest.Pytester, workers: list[str], collected: int
) -> None:
    """Instrumented at the first test only, the calls made at collection were made unmetered:
    not stored, not in the summary, not in --tokenmeter-budget. Each xdist worker collects. A
    ``--dist`` mode without ``-n`` (xdist then runs the tests in-process) was taken for an
    xdist controller, which collects nothing: 1 call of 2 stored."""
    pytester.makepyprojecttoml(_PYPROJECT)
    pytester.makepyfile(test_eval=_CASES_WRITTEN_BY_A_MODEL)
    result = pytester.runpytest_subprocess(
        "--tokenmeter-json=out/usage.json", "--tokenmeter-budget=0.003", *workers
    )
    result.assert_outcomes(passed=1)
    assert len(_records(pytester)) == collected + 1
    report = json.loads((pytester.path / "out/usage.json").read_text())
    assert (report["total"]["tests"], report["total"]["calls"]) == (1, collected + 1)
    assert report["over_budget"] is True
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([f"(outside tests)*{collected}*"])


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["alone", "xdist"])
def test_a_budget_passed_while_collecting_fails_a_run_with_no_test_selected(
    pytester: pytest.Pytester, workers: list[str]
) -> None:
    """The summary said the budget was passed, and the exit status was 5 (no tests collected),
    which CI scripts often accept: only a passing run was made to fail."""
    pytester.makepyprojecttoml(_PYPROJECT)
    pytester.makepyfile(test_eval=_CASES_WRITTEN_BY_A_MODEL)
    result = pytester.runpytest_subprocess("--tokenmeter-budget=0.001", "-k", "nomatch", *workers)
    result.stdout.fnmatch_lines(["*tokenmeter: FAILED*over the budget of $0.001*"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED


_APP_SERVED_BY_A_FIXTURES_THREAD = """
import queue
import threading

import pytest
from tokenmeter.testing import FakeProvider


@pytest.fixture(scope="session")
def app():
    \"\"\"An app under test answering on a thread of its own, started in the first test's setup
    (so in that test's session) and serving every later test.\"\"\"
    jobs = queue.Queue()

    def serve():
        with FakeProvider(openai_usage={"prompt_tokens": 1000, "completion_tokens": 500}) as fake:
            client = fake.openai_client()
            while (done := jobs.get()) is not None:
                client.chat.completions.create(model="m-test", messages=[])
                done.set()

    server = threading.Thread(target=serve)
    server.start()

    def ask():
        done = threading.Event()
        jobs.put(done)
        done.wait()

    yield ask
    jobs.put(None)
    server.join()


def test_one(app):
    app()


@pytest.mark.parametrize("n", range(2))
def test_more(app, n):
    app()
    app()
"""


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["alone", "xdist"])
def test_calls_a_tests_session_gets_after_the_test_are_counted(
    pytester: pytest.Pytester, workers: list[str]
) -> None:
    """A thread started by a session-scoped fixture in the first test's setup carries that
    test's session: the calls it made for later tests were late calls of a session whose row
    was made already, counted nowhere (1 call of 5, $0.002 "within the budget of $0.009")."""
    pytester.makepyprojecttoml(_PYPROJECT)
    pytester.makepyfile(test_app=_APP_SERVED_BY_A_FIXTURES_THREAD)
    result = pytester.runpytest_subprocess(
        "--tokenmeter-json=usage.json", "--tokenmeter-budget=0.009", *workers
    )
    result.assert_outcomes(passed=3)
    assert len(_records(pytester)) == 5
    report = json.loads((pytester.path / "usage.json").read_text())
    assert (report["total"]["calls"], report["total"]["cost_usd"]) == (5, 0.01)
    assert report["over_budget"] is True
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    if not workers:  # (under xdist, which tests are late depends on who ran them)
        assert {row["nodeid"]: row["calls"] for row in report["tests"]} == {
            "(outside tests)": 4,
            "test_app.py::test_one": 1,
        }


_SUITE_SESSION = """
import pytest
import tokenmeter


@pytest.fixture(scope="session", autouse=True)
def suite_session():  # every call of the suite tagged with the CI build
    with tokenmeter.session("suite", tags={"build": "1234"}):
        yield
"""


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["alone", "xdist"])
def test_a_session_a_suite_wide_fixture_opens_counts_each_call_once(
    project: pytest.Pytester, workers: list[str]
) -> None:
    """Entered in the first test's setup, the fixture's session holds every later test's
    session: their calls rolled up into the first test's, whose late calls counted them again
    (4 calls made, a total of 7, $0.014 over a budget of $0.008)."""
    project.makeconftest(_SUITE_SESSION)
    result = project.runpytest_subprocess(
        "--tokenmeter-json=usage.json", "--tokenmeter-budget=0.008", *workers
    )
    result.assert_outcomes(passed=3)
    assert result.ret == pytest.ExitCode.OK
    records = _records(project)
    assert len(records) == 4
    assert sorted(str(r["tags"]["test"]) for r in records) == [  # type: ignore[index]
        "test_llm.py::test_one_call",
        *["test_llm.py::test_three_calls"] * 3,
    ]
    report = json.loads((project.path / "usage.json").read_text())
    assert (report["total"]["calls"], report["total"]["cost_usd"]) == (4, 0.008)
    assert {row["nodeid"]: row["calls"] for row in report["tests"]} == {
        "test_llm.py::test_three_calls": 3,
        "test_llm.py::test_one_call": 1,
    }


def test_pytest_run_in_process_leaves_the_programs_own_instrumentation(
    pytester: pytest.Pytester,
) -> None:
    """At its end the plugin uninstrumented every provider, whoever had patched it: a program
    that meters itself and runs ``pytest.main([..., "--tokenmeter"])`` made its later calls
    unmetered (2 calls made, 1 recorded)."""
    pytester.makepyfile(test_nothing="def test_nothing():\n    pass\n")
    pytester.makepyfile(
        app="""
        import pytest, tokenmeter
        from tokenmeter.testing import FakeProvider

        tokenmeter.configure(directory="store", sinks=["jsonl"])
        tokenmeter.instrument()
        with FakeProvider() as fake:
            client = fake.openai_client()
            client.chat.completions.create(model="m-test", messages=[])
            pytest.main(["-q", "-p", "no:cacheprovider", "--tokenmeter", "test_nothing.py"])
            client.chat.completions.create(model="m-test", messages=[])
        tokenmeter.flush()
        """
    )
    result = pytester.run(sys.executable, "app.py")
    assert result.ret == 0, result.stderr.str()
    lines = (pytester.path / "store" / "usage.jsonl").read_text().splitlines()
    assert len([line for line in lines if '"model_name"' in line]) == 2


def test_calls_with_no_known_price_are_n_a_not_zero(project: pytest.Pytester) -> None:
    """A model no price table knows: the summary said $0.00 and the JSON file 0 for its test
    (``tokenmeter run`` and the reports say n/a / null: never a silent zero)."""
    project.makepyfile(
        test_unpriced="""
        import openai

        def test_unknown_model(tokenmeter_fake):
            tokenmeter_fake.set_usage(openai={"prompt_tokens": 10, "completion_tokens": 5})
            openai.OpenAI(max_retries=0).chat.completions.create(model="m-unknown", messages=[])
        """
    )
    result = project.runpytest("--tokenmeter-json=out/usage.json", "test_unpriced.py")
    result.assert_outcomes(passed=1)
    result.stdout.re_match_lines(
        [
            r"test_unpriced.py::test_unknown_model +1 +15 +n/a$",
            r"total \(1 of 1 tests made calls\) +1 +15 +n/a$",
            r"1 call had no known price \(not in the cost\)",
        ]
    )
    report = json.loads((project.path / "out/usage.json").read_text())
    assert report["total"]["cost_usd"] is None and report["total"]["unpriced_calls"] == 1
    assert [t["cost_usd"] for t in report["tests"]] == [None]
    # With a priced test beside it, the total is the known cost (the note says what is left out).
    mixed = project.runpytest("--tokenmeter-json=out/mixed.json")
    mixed.assert_outcomes(passed=4)
    total = json.loads((project.path / "out/mixed.json").read_text())["total"]
    assert (total["cost_usd"], total["unpriced_calls"]) == (0.008, 1)


def test_a_test_that_uninstruments_leaves_the_next_tests_metered(project: pytest.Pytester) -> None:
    """A test calling ``tokenmeter.uninstrument()`` (to check its code runs without metering)
    left every test after it unmetered: the run's totals missed their calls without a word."""
    project.makepyfile(
        test_a_first="""
        import tokenmeter

        def test_off():
            tokenmeter.uninstrument()
        """
    )
    result = project.runpytest("--tokenmeter-json=out/usage.json", "test_a_first.py", "test_llm.py")
    result.assert_outcomes(passed=4)
    report = json.loads((project.path / "out/usage.json").read_text())
    assert report["total"]["calls"] == 4


def test_an_interrupted_run_says_its_totals_are_those_of_the_tests_that_finished(
    project: pytest.Pytester,
) -> None:
    """A run stopped by Ctrl-C wrote a summary and a JSON file that looked complete: the test
    that was running, and those after it, were missing without a word."""
    project.makepyfile(
        test_stop="""
        from test_llm import call

        def test_stopped(tokenmeter_fake):
            tokenmeter_fake.set_usage(openai={"prompt_tokens": 1000, "completion_tokens": 500})
            call()
            raise KeyboardInterrupt
        """
    )
    # In a process of its own: the KeyboardInterrupt of an inline run reaches this one.
    result = project.runpytest_subprocess(
        "--tokenmeter-json=out/usage.json", "test_llm.py", "test_stop.py"
    )
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*the run was interrupted: these totals count the tests that*"])
    report = json.loads((project.path / "out/usage.json").read_text())
    assert report["interrupted"] is True
    assert _json_report(project, "test_llm.py")["interrupted"] is False


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGHUP"])
def test_a_run_ended_by_a_termination_signal_still_writes_its_json_file(
    project: pytest.Pytester, signal_name: str
) -> None:
    """A CI job's time limit stops pytest with SIGTERM: no JSON file was written at all (Ctrl-C
    wrote one). It is written at the exit flush, marked interrupted, with the tests that
    finished; the process still dies of the signal."""
    project.makepyfile(
        test_stop=f"""
        import os
        import signal

        from test_llm import call

        def test_stopped(tokenmeter_fake):
            tokenmeter_fake.set_usage(openai={{"prompt_tokens": 1000, "completion_tokens": 500}})
            call()
            os.kill(os.getpid(), signal.{signal_name})
        """
    )
    result = project.runpytest_subprocess(
        "--tokenmeter-json=out/usage.json", "-p", "no:cacheprovider", "test_llm.py", "test_stop.py"
    )
    assert result.ret == -getattr(signal, signal_name)
    report = json.loads((project.path / "out/usage.json").read_text())
    assert report["interrupted"] is True
    assert report["total"]["tests"] == 3  # test_llm.py's, which finished
    assert report["total"]["calls"] == 4
    assert report["total"]["cost_usd"] == 0.008


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGHUP"])
def test_an_xdist_run_ended_by_a_termination_signal_still_writes_its_json_file(
    project: pytest.Pytester, signal_name: str
) -> None:
    """Under ``-n``, the signal ends the controller, which runs no test and so never set up the
    exit flush that writes the file: none was written. (The worker's test sends it to the
    controller, its parent, as a CI job's time limit would.)"""
    project.makepyfile(
        test_stop=f"""
        import os
        import signal
        import time

        def test_stopped():
            controller = os.getppid()
            os.kill(controller, signal.{signal_name})
            while os.getppid() == controller:  # until it has died: this test never finishes
                time.sleep(0.05)
        """
    )
    result = project.runpytest_subprocess(
        "--tokenmeter-json=out/usage.json", "-p", "no:cacheprovider", "-n", "1", "test_stop.py"
    )
    assert result.ret == -getattr(signal, signal_name)
    report = json.loads((project.path / "out/usage.json").read_text())
    assert report["interrupted"] is True
    assert report["total"]["tests"] == 0  # the one test never finished


def test_a_collection_error_is_no_interruption(project: pytest.Pytester) -> None:
    """pytest ends a run whose collection failed with the exit status of an interrupted one:
    the JSON file said ``"interrupted": true`` and the summary that the run was interrupted, so
    a CI step took a broken import for a cancelled job."""
    project.makepyfile(test_broken="import no_such_module_here")
    result = project.runpytest("--tokenmeter-json=out/usage.json", "test_llm.py", "test_broken.py")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    report = json.loads((project.path / "out/usage.json").read_text())
    assert report["interrupted"] is False
    assert "the run was interrupted" not in result.stdout.str()


def test_xdist_workers_report_exact_totals(project: pytest.Pytester) -> None:
    alone = _json_report(project)
    spread = _json_report(project, "-n", "2")
    assert spread["total"] == alone["total"]
    tests = spread["tests"]
    assert isinstance(tests, list)
    assert {t["nodeid"]: t["cost_usd"] for t in tests} == {
        "test_llm.py::test_three_calls": 0.006,
        "test_llm.py::test_one_call": 0.002,
    }


def test_xdist_summary_and_run_budget(project: pytest.Pytester) -> None:
    result = project.runpytest("-n", "2", "--tokenmeter-budget=0.007")
    result.assert_outcomes(passed=3)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "total (2 of 3 tests made calls)*4*6,000*$0.008",
            "tokenmeter: FAILED: the tests spent $0.008, over the budget of $0.007*",
        ]
    )


@pytest.mark.parametrize(
    ("budget", "code"), [("0.008", pytest.ExitCode.OK), ("0.0079", pytest.ExitCode.TESTS_FAILED)]
)
def test_run_budget_fails_the_run_only_when_over(
    project: pytest.Pytester, budget: str, code: pytest.ExitCode
) -> None:
    result = project.runpytest(f"--tokenmeter-budget={budget}")
    result.assert_outcomes(passed=3)  # every test passed; the run as a whole is over budget
    assert result.ret == code


@pytest.mark.parametrize("budget", ["-1", "lots", "nan", "1e1000000"])
def test_bad_run_budget_is_a_usage_error(project: pytest.Pytester, budget: str) -> None:
    result = project.runpytest(f"--tokenmeter-budget={budget}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--tokenmeter-budget must be a non-negative number of USD*"])


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            "TOKENMETER_SINKS",
            "carrier-pigeon",
            "*'sinks' from TOKENMETER_SINKS: unknown sink 'carrier-pigeon'*",
        ),
        ("TOKENMETER_PRICES", "missing.json", "*missing.json: cannot read prices file*"),
    ],
)
def test_a_bad_tokenmeter_setting_is_a_usage_error_not_an_internal_error(
    project: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
    message: str,
) -> None:
    """It surfaced from the first test's instrument() as an INTERNALERROR traceback."""
    monkeypatch.setenv(variable, value)
    result = project.runpytest("--tokenmeter")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}"])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    assert project.runpytest().ret == pytest.ExitCode.OK  # turned off, it reads no setting


def test_a_projects_missing_prices_file_under_tokenmeter_prices_is_no_usage_error(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator's TOKENMETER_PRICES replaces the project's prices_file and table, whole:
    the project's file, missing here, is not read, and its $1/$2 price of m-test not used."""
    project.makepyprojecttoml(_PYPROJECT + 'prices_file = "missing.toml"\n')
    (project.path / "ops.toml").write_text("[m-test]\ninput_per_mtok = 2\noutput_per_mtok = 4\n")
    monkeypatch.setenv("TOKENMETER_PRICES", str(project.path / "ops.toml"))
    report = _json_report(project, "--tokenmeter")
    total = report["total"]
    assert isinstance(total, dict)
    assert (total["calls"], total["cost_usd"]) == (4, 0.016)


def test_a_bad_ini_budget_is_named_as_the_ini_option(project: pytest.Pytester) -> None:
    """It was reported as --tokenmeter-budget, an option nobody gave."""
    project.makepyprojecttoml(_INI + 'tokenmeter_budget = "lots"\n' + _TOKENMETER)
    result = project.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*tokenmeter_budget (ini) must be a non-negative number*"])


def test_an_ini_budget_passed_is_named_as_the_ini_option(project: pytest.Pytester) -> None:
    """The run's failure line named --tokenmeter-budget, an option nobody gave."""
    project.makepyprojecttoml(_INI + 'tokenmeter_budget = "0.001"\n' + _TOKENMETER)
    result = project.runpytest()
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "tokenmeter: FAILED: the tests spent $0.008, over the budget of $0.001 "
            "(tokenmeter_budget (ini))"
        ]
    )


@pytest.mark.parametrize("option", ["--tokenmeter-budget", "--tokenmeter-json"])
def test_an_empty_option_is_a_usage_error(project: pytest.Pytester, option: str) -> None:
    """``--tokenmeter-budget="$LLM_BUDGET"`` with the variable unset ran with no budget (and no
    JSON file, for ``--tokenmeter-json``) without a word."""
    result = project.runpytest(f"{option}=")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{option} must not be empty*"])


def test_marker_fails_the_one_test_that_spends_more(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml(_PYPROJECT)
    pytester.makepyfile(
        _TESTS
        + """

@pytest.mark.tokenmeter_budget(0.005)
def test_over_its_budget():
    call(3)


@pytest.mark.tokenmeter_budget(usd=0.006)
def test_at_its_budget():
    call(3)


@pytest.mark.tokenmeter_budget(0.001)
def test_one_call_over_its_budget():
    call(1)
"""
    )
    result = pytester.runpytest("--tokenmeter", "--strict-markers")
    result.assert_outcomes(passed=4, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*tokenmeter: this test's LLM calls cost $0.006, over its budget of $0.005 "
            "(@pytest.mark.tokenmeter_budget); 3 calls, 4500 tokens",
            # not "1 calls"
            "*tokenmeter: this test's LLM calls cost $0.002, over its budget of $0.001 "
            "(@pytest.mark.tokenmeter_budget); 1 call, 1500 tokens",
            "FAILED test_*.py::test_over_its_budget*",
            "FAILED test_*.py::test_one_call_over_its_budget*",
        ]
    )


def test_marker_is_checked_when_the_test_has_run_once_per_test(
    pytester: pytest.Pytester,
) -> None:
    """Checked after every phase: a fixture's calls over the budget made the test an ERROR at
    setup and its body never ran; a test that failed over its budget was also an ERROR at
    teardown ("1 failed, 2 errors" for 2 tests)."""
    pytester.makepyprojecttoml(_PYPROJECT)
    pytester.makepyfile(
        _TESTS
        + """

@pytest.fixture
def spends_in_setup():
    call(2)


@pytest.mark.tokenmeter_budget(0.003)
def test_setup_over(spends_in_setup):
    print("the body ran")


@pytest.mark.tokenmeter_budget(0.003)
def test_fails_over():
    call(2)
    assert False, "the test's own failure"


@pytest.fixture
def spends_in_teardown():
    yield
    call(2)


@pytest.mark.tokenmeter_budget(0.003)
def test_teardown_over(spends_in_teardown):
    pass
"""
    )
    result = pytester.runpytest("--tokenmeter", "-s", "-rfE")
    # test_teardown_over passed, then its teardown's calls took it over: an ERROR there.
    result.assert_outcomes(passed=4, failed=2, errors=1)
    result.stdout.fnmatch_lines(["*the body ran*"])
    result.stdout.fnmatch_lines(
        [
            "FAILED test_*.py::test_setup_over*",
            "FAILED test_*.py::test_fails_over*",
            "ERROR test_*.py::test_teardown_over*",
        ]
    )
    assert "ERROR at setup" not in result.stdout.str()


#: What pytest-rerunfailures (``--reruns 1``) does: the protocol of the same item run again
#: after a failed attempt, the last attempt's reports logged.
_RERUN_ONCE_CONFTEST = """
import pytest
from _pytest.runner import runtestprotocol


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    for _attempt in range(2):
        reports = runtestprotocol(item, nextitem=nextitem, log=False)
        if not any(report.failed for report in reports):
            break
    for report in reports:
        item.ihook.pytest_runtest_logreport(report=report)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True
"""


def test_marker_is_checked_again_when_a_failed_test_is_rerun(pytester: pytest.Pytester) -> None:
    """A flaky first attempt left the test "decided": its rerun spent $0.004 against a
    $0.003 budget and passed."""
    pytester.makepyprojecttoml(_PYPROJECT)
    pytester.makeconftest(_RERUN_ONCE_CONFTEST)
    pytester.makepyfile(
        _TESTS
        + """

ATTEMPTS = []


@pytest.mark.tokenmeter_budget(0.003)
def test_flaky_then_over():
    ATTEMPTS.append(1)
    assert len(ATTEMPTS) > 1, "flaky first attempt"
    call(2)
"""
    )
    result = pytester.runpytest("--tokenmeter", "-rfE", "-k", "flaky")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*tokenmeter: this test's LLM calls cost $0.004, over its budget of $0.003 "
            "(@pytest.mark.tokenmeter_budget); 2 calls, 3000 tokens",
            "FAILED test_*.py::test_flaky_then_over*",
        ]
    )


@pytest.mark.parametrize(
    ("argument", "shown"), [('"a lot"', "('a lot',)"), ("10**5000", "<tuple>")]
)
def test_bad_marker_argument_is_reported(
    pytester: pytest.Pytester, argument: str, shown: str
) -> None:
    """An int past Python's digit limit failed with that limit's error, naming no marker."""
    pytester.makepyprojecttoml(_INI)
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.tokenmeter_budget({argument})
        def test_x():
            pass
        """
    )
    result = pytester.runpytest("--tokenmeter")
    result.stdout.fnmatch_lines(
        [f"*tokenmeter_budget takes one non-negative number of USD*got {shown} {{}}*"]
    )
    assert result.ret != pytest.ExitCode.OK


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["alone", "xdist"])
def test_a_bad_marker_argument_errors_its_test_not_the_run(
    pytester: pytest.Pytester, xdist: list[str]
) -> None:
    # It was a UsageError raised from the report hook: under xdist the worker died of it and
    # the run ended in an INTERNALERROR traceback that never said why; alone, it stopped the
    # run at that test.
    pytester.makepyprojecttoml(_INI)
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.tokenmeter_budget("a lot")
        def test_x():
            pass

        def test_y():
            pass
        """
    )
    result = pytester.runpytest("--tokenmeter", *xdist)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*tokenmeter_budget takes one non-negative number of USD*"])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


def test_fixture_points_sdk_clients_at_the_fake(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml(_INI)
    pytester.makepyfile(
        """
        import anthropic
        import openai
        from google import genai

        def test_clients(tokenmeter_fake):
            tokenmeter_fake.set_usage(
                openai={"prompt_tokens": 7}, anthropic={"input_tokens": 8},
                gemini={"prompt": 9},
            )
            chat = openai.OpenAI().chat.completions.create(model="gpt-4o", messages=[])
            message = anthropic.Anthropic().messages.create(
                model="claude-sonnet-4-5", max_tokens=5, messages=[]
            )
            gemini = genai.Client()  # kept: a collected Client closes its connection
            content = gemini.models.generate_content(model="gemini-2.5-flash", contents="hi")
            assert chat.usage.prompt_tokens == 7
            assert message.usage.input_tokens == 8
            assert content.usage_metadata.prompt_token_count == 9
            assert len(tokenmeter_fake.requests) == 3
        """
    )
    pytester.runpytest().assert_outcomes(passed=1)  # no --tokenmeter needed for the fixture


def test_fixture_points_sdk_clients_at_the_fake_on_a_vertex_ai_users_machine(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With google-genai's documented Vertex AI set-up in the environment, genai.Client() built
    Vertex URLs on the fake's base URL: a 404 from the fake. And the developer's Anthropic
    bearer token went to the fake beside the fake key."""
    monkeypatch.setenv("GOOGLE_GENAI_USE_VERTEXAI", "true")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "my-project")
    monkeypatch.setenv("GOOGLE_CLOUD_LOCATION", "us-central1")
    monkeypatch.setenv("ANTHROPIC_AUTH_TOKEN", "real-token")
    pytester.makepyprojecttoml(_INI)
    pytester.makepyfile(
        """
        import os
        from google import genai

        def test_gemini(tokenmeter_fake):
            gemini = genai.Client()  # kept: a collected Client closes its connection
            gemini.models.generate_content(model="gemini-2.5-flash", contents="hi")
            assert "ANTHROPIC_AUTH_TOKEN" not in os.environ
            assert len(tokenmeter_fake.requests) == 1
        """
    )
    pytester.runpytest_subprocess().assert_outcomes(passed=1)


def test_no_calls_at_all(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml(_INI)
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest("--tokenmeter")
    result.stdout.fnmatch_lines(["no LLM calls in 1 tests"])


def test_entry_point_names_the_plugin() -> None:
    from importlib.metadata import entry_points

    (entry,) = [e for e in entry_points(group="pytest11") if e.name == "tokenmeter"]
    assert entry.value == "tokenmeter.pytest_plugin"


def test_calls_from_async_tests_and_threads_count_for_their_test(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyprojecttoml(_PYPROJECT)
    pytester.makepyfile(
        _TESTS
        + """

import asyncio
import threading


@pytest.mark.asyncio
async def test_async_calls(tokenmeter_fake):
    client = openai.AsyncOpenAI(max_retries=0)
    await asyncio.gather(
        *(client.chat.completions.create(model="m-test", messages=[]) for _ in range(4))
    )


def test_calls_on_a_thread():
    worker = threading.Thread(target=call, args=(2,))  # no session travels with it
    worker.start()
    worker.join()
"""
    )
    result = pytester.runpytest("--tokenmeter-json=usage.json")
    result.assert_outcomes(passed=5)
    report = json.loads((pytester.path / "usage.json").read_text())
    assert {t["nodeid"].split("::")[1]: t["calls"] for t in report["tests"]} == {
        "test_async_calls": 4,
        "test_calls_on_a_thread": 2,
        "test_three_calls": 3,
        "test_one_call": 1,
    }
    assert report["total"]["calls"] == 10


@pytest.mark.parametrize("name", ["usage.jsonl", "usage.db"])
def test_a_json_path_naming_tokenmeters_own_data_is_refused_before_any_test_runs(
    project: pytest.Pytester, name: str
) -> None:
    """``--tokenmeter-json=.tokenmeter/usage.jsonl`` replaced every record there with the
    run's summary (0 of 5 left, and pytest passed); ``usage.db`` became a JSON file SQLite
    refuses. A usage error, as the CLI's ``-o`` is, with the data untouched."""
    project.runpytest("--tokenmeter").assert_outcomes(passed=3)
    data = project.path / ".tokenmeter" / name  # usage.db: not made (sinks = ["jsonl"])
    before = data.read_bytes() if data.exists() else None
    result = project.runpytest(f"--tokenmeter-json={data}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--tokenmeter-json * tokenmeter data*"])
    assert (data.read_bytes() if data.exists() else None) == before


@pytest.mark.parametrize(
    "name",
    [".tokenmeter/usage.jsonl", ".tokenmeter/usage.db", ".tokenmeter/journal/token_usage.md"],
)
def test_a_json_path_naming_tokenmeters_own_data_is_refused_on_a_first_run(
    project: pytest.Pytester, name: str
) -> None:
    """On a fresh checkout (``.tokenmeter/`` not made yet) ``--tokenmeter-json=.tokenmeter/
    usage.jsonl`` was taken: the tests wrote their 4 records there, then the summary replaced
    them (0 of 4 left, pytest exit 0). Refused as when the folder exists, before any test."""
    assert not (project.path / ".tokenmeter").exists()
    result = project.runpytest(f"--tokenmeter-json={name}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--tokenmeter-json * names a file of tokenmeter data*"])
    assert not (project.path / name).exists()


def test_a_json_path_that_cannot_be_written_is_one_line_not_a_traceback(
    project: pytest.Pytester,
) -> None:
    """A directory is refused before any test runs; a path that fails when written (under a
    file, a full disk) is one line and a failed run, not an INTERNALERROR after every test."""
    (project.path / "out").mkdir()
    result = project.runpytest("--tokenmeter-json=out")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--tokenmeter-json: * is a directory*"])
    (project.path / "a-file").write_text("")
    result = project.runpytest("--tokenmeter-json=a-file/usage.json")
    result.assert_outcomes(passed=3)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["tokenmeter: FAILED: cannot write *a-file/usage.json: *"])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


def test_a_json_path_too_long_to_look_up_is_a_usage_error(project: pytest.Pytester) -> None:
    """It was an INTERNALERROR traceback (OSError: File name too long), and no test ran."""
    result = project.runpytest(f"--tokenmeter-json={'x' * 300}.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --tokenmeter-json: xxx*.json: File name too long"])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


def test_a_json_path_that_is_a_link_or_a_pipe_is_written_through(
    project: pytest.Pytester,
) -> None:
    """The file was renamed over the path: a link to the file CI keeps became a file of its
    own, and a FIFO (or /dev/stdout) was replaced by a file that nobody reads."""
    kept = project.path / "artifacts" / "usage.json"
    kept.parent.mkdir()
    (project.path / "link.json").symlink_to(kept)
    project.runpytest("--tokenmeter-json=link.json").assert_outcomes(passed=3)
    assert (project.path / "link.json").is_symlink()
    assert json.loads(kept.read_text())["total"]["calls"] == 4
    fifo = project.path / "fifo.json"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader, so opening it never blocks
    try:
        project.runpytest("--tokenmeter-json=fifo.json").assert_outcomes(passed=3)
        assert stat.S_ISFIFO(os.stat(fifo).st_mode)
        with os.fdopen(reader, "rb") as pipe:
            assert json.loads(pipe.read())["total"]["calls"] == 4
    finally:
        with contextlib.suppress(OSError):
            os.close(reader)


def test_a_hostile_test_id_never_forges_a_line_of_the_summary(project: pytest.Pytester) -> None:
    # A plugin's items (tests read from YAML files) are named by their data: a newline in a
    # name started a forged total row, and an escape sequence reached the terminal or the log.
    project.makeconftest(
        """
        import pytest
        from tokenmeter.testing import FakeProvider

        class Item(pytest.Item):
            def runtest(self):
                with FakeProvider() as fake:
                    fake.set_usage(openai={"prompt_tokens": 1000, "completion_tokens": 500})
                    fake.openai_client().chat.completions.create(model="m-test", messages=[])

        class File(pytest.File):
            def collect(self):
                yield Item.from_parent(self, name="x\\n\\x1b[31mtotal (forged)  9  $0.00\\x1b[0m")

        def pytest_collect_file(parent, file_path):
            if file_path.suffix == ".yaml":
                return File.from_parent(parent, path=file_path)
        """
    )
    (project.path / "test_cases.yaml").write_text("")
    result = project.runpytest("--tokenmeter")
    result.assert_outcomes(passed=4)
    out = result.stdout.str()
    assert "\x1b" not in out
    assert not any(line.startswith("total (forged)") for line in result.stdout.lines)
    result.stdout.re_match_lines([r"test_cases.yaml::x\ufffd\ufffd\[31mtotal \(forged\) .* 1 .*"])


def test_with_tokenmeter_disabled_the_summary_says_so(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # TOKENMETER_DISABLED=1 (a kill switch) leaves the tests unmetered: the summary said "no
    # LLM calls in 3 tests" and "within the budget of $0.001" after $0.008 of calls.
    monkeypatch.setenv("TOKENMETER_DISABLED", "1")
    result = project.runpytest("--tokenmeter-budget=0.001")
    result.assert_outcomes(passed=3)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        ["tokenmeter is disabled (TOKENMETER_DISABLED): nothing was metered"]
    )
    assert "no LLM calls" not in result.stdout.str()
    assert "within the budget" not in result.stdout.str()
